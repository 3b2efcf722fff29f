"""PNG of one study: time per trial with the best so far, and parameter importances."""
from __future__ import annotations

import os


def image_format_error(out: str) -> str | None:
    """Why matplotlib cannot write an image named `out` (None: it can; no extension means PNG)."""
    ext = os.path.splitext(out)[1].lower().lstrip(".")
    if not ext:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError:
        return None  # plot_study says matplotlib is missing
    known = FigureCanvasAgg.get_supported_filetypes()
    if ext not in known:
        return f"cannot write a .{ext} image; use one of {', '.join('.' + k for k in sorted(known))}"
    return None


def plot_study(study_name: str, storage: str, out: str) -> str:
    import optuna

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("plotting needs matplotlib: pip install 'cute-kernels[plot]'") from None
    from .storage import StorageError, open_store

    store = open_store(storage, create=False)  # a missing journal/SQLite file is an error, not created
    try:
        study = optuna.load_study(study_name=study_name, storage=store.storage)
    except KeyError:
        names = optuna.get_all_study_names(store.storage)
        near = [n for n in names if study_name.split("/")[0] in n][:5] or names[:5]
        raise StorageError(f"no study {study_name!r} in {store.describe()}"
                           + (f" (it has {len(names)}, e.g. {', '.join(near)})" if names else " (it has none)")) from None
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    xs = [t.number for t in done]
    ys = [t.value for t in done]
    best, run = [], float("inf")
    for y in ys:
        run = min(run, y)
        best.append(run)
    ax1.scatter(xs, ys, s=14, label="trial")
    ax1.step(xs, best, where="post", color="C3", label="best so far")
    pruned = [t.number for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    if pruned and ys:
        ax1.scatter(pruned, [max(ys)] * len(pruned), marker="x", color="grey", s=12, label="pruned")
    ax1.set_xlabel("trial")
    ax1.set_ylabel("time (ms)")
    ax1.set_title(study_name, fontsize=9)
    ax1.legend()
    try:
        imp = optuna.importance.get_param_importances(study) if len(done) >= 2 else {}
    except Exception:  # too few or constant trials
        imp = {}
    names = list(imp)[::-1]
    ax2.barh(names, [imp[n] for n in names])
    ax2.set_title("parameter importance (fANOVA)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
