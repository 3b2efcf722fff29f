"""One Optuna study per (kernel, arch, dtype, shape): search, prune, re-measure, store.

Trials: the default config is enqueued first; each sampled config is validated
(invalid -> pruned with the reason), compiled (failure -> pruned with the error),
checked against a torch reference on small random data (wrong -> pruned), then timed.
Pruned reasons land in the trial's user attribute "pruned".  Compiles run ahead on a
thread pool while the GPU times earlier candidates.  The winner is re-measured with
the default config (and with the entry already stored for the shape, if any) and
written to tuned_configs/ only when it beats both by MIN_GAIN.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime
import logging
import threading
import time
from dataclasses import dataclass, field

import optuna

from cute_kernels.tuned_store import TunedConfigError, file_path, make_record, merge_write, parse_entry, read_file

from . import space
from .problem import Problem

log = logging.getLogger("autotune")
DEFAULT_TRIALS = 24
# A tuned config is stored only when it beats the default by this fraction on re-measurement:
# smaller differences are run-to-run noise on an H100 (about 0.5 %).
MIN_GAIN = 0.01


@dataclass
class SweepResult:
    problem: Problem
    arch: str
    trials: int
    complete: int
    pruned: int
    best_params: dict | None
    best_ms: float | None
    default_ms: float | None
    accepted: bool
    wall_s: float
    pruned_reasons: dict = field(default_factory=dict)
    note: str = ""
    written: str | None = None  # the YAML file the winner went to (None: nothing written)
    failed: int = 0  # FAIL trials (a dead worker's, each retried; or a timing that raised)

    @property
    def speedup(self) -> float | None:
        if self.best_ms and self.default_ms:
            return self.default_ms / self.best_ms
        return None


def make_sampler(grid: bool, seed: int, constant_liar: bool = False):
    """`constant_liar`: TPE treats other workers' running trials as bad, so parallel workers
    do not all sample the same promising config."""
    if grid:  # the grid points are enqueued; the sampler only fills the (absent) rest
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True, constant_liar=constant_liar)


def make_storage(storage):
    """An Optuna storage: an autotune.storage.Store's, or what a URL / journal path opens."""
    if storage is None or not isinstance(storage, str):
        return getattr(storage, "storage", storage)
    from .storage import open_store

    return open_store(storage).storage


def study_name(problem: Problem, arch: str, *, grid: bool = False, simulated: bool = False) -> str:
    """Simulated sweeps get their own names ("simulated/..."), so a real sweep never resumes
    a study holding cost-model times, whatever storage both were pointed at."""
    return ("simulated/" if simulated else "") + problem.study_name(arch) + ("/grid" if grid else "")


def covers_space(n_trials: int, grid: bool = False, *, space_kw: dict | None = None) -> bool:
    """True when the study times every config of the space once (--grid, or a trial budget at
    least the space's size: sampling more would only re-time configs already timed).
    `space_kw`: the problem's space (`Problem.space_kw`; default the bf16 one)."""
    return grid or n_trials >= len(space.grid(**(space_kw or {})))


def _params_key(params: dict) -> tuple:
    return tuple(sorted(params.items()))


def distinct_configs(trials) -> int:
    """How many different configs the COMPLETE and PRUNED `trials` hold."""
    return len({_params_key(t.params) for t in trials
                if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)})


def budget_spent(trials, n_trials: int, grid: bool = False, *, space_kw: dict | None = None) -> bool:
    """Whether a study whose budget is `n_trials` (each shape's total) needs no further trial:
    its COMPLETE + PRUNED + RUNNING trials reach the budget, or, when the budget covers the whole
    space, its distinct timed configs + RUNNING trials reach the space's size (a huge --trials stops
    once the space is exhausted)."""
    running = sum(1 for t in trials if t.state == optuna.trial.TrialState.RUNNING)
    if covers_space(n_trials, grid, space_kw=space_kw):
        return distinct_configs(trials) + running >= len(space.grid(**(space_kw or {})))
    done = sum(1 for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    return done + running >= n_trials


def study_budget(n_trials: int, grid: bool = False, *, space_kw: dict | None = None) -> int:
    """The number of trials a finished study holds (the progress bars' total)."""
    size = len(space.grid(**(space_kw or {})))
    return size if covers_space(n_trials, grid, space_kw=space_kw) else n_trials


def candidate_tries(problem: Problem, n: int, arch: str = "sm90") -> list[dict]:
    """The overrides of the first `n` entries of the FP8 kernels' fixed candidate list
    (sm90/space_fp8.CANDIDATES) that `problem`'s kernel can run with its registered epilogue:
    `n` distinct configs other than the default when the list holds that many (fewer otherwise;
    the sampler then fills the budget)."""
    from cute_kernels.sm90.space_fp8 import CANDIDATES

    sk = problem.space_kw
    base = space.to_params(problem.default_config(), **sk)
    out, seen = [], {_params_key(base)}
    for overrides in CANDIDATES:
        params = {**base, **overrides}
        if len(out) == n:
            break
        if _params_key(params) in seen or problem.config_errors(space.to_config(params, **sk), arch=arch):
            continue
        seen.add(_params_key(params))
        out.append(dict(overrides))
    return out


def open_study(problem: Problem, arch: str, storage, *, grid: bool, seed: int, tries=(), simulated: bool = False,
               constant_liar: bool = False, n_trials: int = 0):
    """Create or load the problem's study.  A new one gets the default config as its
    first trial, then `tries` (parameter overrides of the default, e.g. {"cluster": "2x1"}).
    With `grid`, or a budget `n_trials` that covers the whole space, every config not yet timed
    is enqueued too (after those).
    `storage`: None (in memory), a URL or journal path, or an autotune.storage.Store (whose
    claim lock the caller holds when several workers may open the study at once)."""
    name = study_name(problem, arch, grid=grid, simulated=simulated)
    storage = make_storage(storage)
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize",
                                sampler=make_sampler(grid, seed, constant_liar), load_if_exists=True)
    sk = problem.space_kw
    if not grid and len(study.trials) == 0:
        dflt = problem.default_config()
        if space.in_space(dflt, **sk):
            study.enqueue_trial(space.to_params(dflt, **sk), user_attrs={"default": True})
        for overrides in tries:
            study.enqueue_trial({**space.to_params(dflt, **sk), **overrides}, skip_if_exists=True)
    if covers_space(n_trials, grid, space_kw=sk):
        seen = {_params_key(t.params) for t in study.trials if t.state.is_finished()}
        for params in space.grid(**sk):
            if _params_key(params) not in seen:
                study.enqueue_trial(params, skip_if_exists=True)
    return study


def _finished_elsewhere(study, trial) -> bool:
    """True when the storage already holds `trial` as finished (another worker told it)."""
    for t in study.get_trials(deepcopy=False):
        if t.number == trial.number:
            return t.state.is_finished()
    return False


def run_trials(study, problem: Problem, runner, timer, n_trials: int, *, arch: str, progress: bool = True,
               compile_workers: int = 1, check_tol: float = 1e-2, claim=None, release=None,
               budget: int | None = None) -> int:
    """Ask/tell loop: compile the next candidates on threads while timing the current one.

    `claim()` (default: `study.ask()` while fewer than `n_trials` were asked) gives the next
    trial or None when the study's budget is spent (autotune/worker.py claims under a lock
    shared by all workers); `release(trial)` runs once the trial is told.  A trial whose
    timing raises is told FAIL (the error in its "error" attribute) before the error goes on;
    trials asked ahead and not yet timed are told FAIL ("interrupted") then too.  The progress
    bar counts toward `budget` (the study's total, from the trials it already holds; default:
    `n_trials` from zero).

    Sustained timing paces its calls from the host, and a DSL compile holds the GIL for long
    stretches of C++ (H100, 2026-11-25: calls timed next to a compile read 17-240x slow), so
    under that timer no compile runs while a trial is timed (`quiet`); burst timing queues
    GPU sleep ahead of each batch and takes a median, and keeps the overlap.  Returns how many
    trials it told."""
    pool = cf.ThreadPoolExecutor(max_workers=max(1, compile_workers))
    quiet = threading.Lock() if getattr(timer, "mode", "burst") == "sustained" else contextlib.nullcontext()
    bar_start = 0
    if budget is None:
        budget = n_trials
    else:
        bar_start = sum(1 for t in study.get_trials(deepcopy=False)
                        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    if claim is None:
        claim = study.ask
    else:
        n_trials = 1 << 62  # claim() says when the budget is spent

    def prepare(cfg):
        with quiet:
            runner.prepare(cfg)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=budget, initial=min(bar_start, budget), desc=problem.label(), leave=True)
    default_ms = None
    pending: list = []  # (trial, cfg, future or reason)

    def ask_one():
        while True:
            trial = claim()
            if trial is None:
                return None
            try:
                cfg = space.suggest(trial, **problem.space_kw)
                break
            except optuna.exceptions.UpdateFinishedTrialError:
                # with shared storage two workers can pop the same enqueued trial; the
                # other one finished it already: take the next trial instead
                log.info("trial %d was taken by another worker", trial.number)
        errs = problem.config_errors(cfg, arch)
        if errs:
            return trial, cfg, "invalid: " + "; ".join(errs)
        return trial, cfg, pool.submit(prepare, cfg)

    def tell(trial, *args, **kwargs):
        try:
            study.tell(trial, *args, **kwargs)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            # another worker process claimed the same enqueued trial and finished it first, or
            # a reaper failed it while this worker was starved of heartbeats; optuna reports that
            # as UpdateFinishedTrialError or, when it sees the finished state before writing,
            # as ValueError("Cannot tell a COMPLETE trial.")
            if not _finished_elsewhere(study, trial):
                raise
            log.info("trial %d was finished by another worker", trial.number)
        finally:
            if release is not None:
                release(trial)

    asked = told = 0
    exhausted = False
    current = None
    try:
        while (asked < n_trials and not exhausted) or pending:
            # keep `compile_workers` candidates compiling while the oldest one is timed
            while asked < n_trials and not exhausted and len(pending) <= compile_workers:
                item = ask_one()
                if item is None:
                    exhausted = True
                    break
                pending.append(item)
                asked += 1
            if not pending:
                break
            current = pending.pop(0)
            trial, cfg, job = current
            reason = job if isinstance(job, str) else None
            if reason is None:
                try:
                    job.result()
                except Exception as e:  # compile failure: prune, keep the message
                    reason = f"compile failed: {type(e).__name__}: {str(e)[:300]}"
            if reason is None:
                try:
                    err = runner.check(cfg)
                    if not err < check_tol:
                        reason = f"wrong result: relative error {err:.3e}"
                except Exception as e:
                    reason = f"check failed: {type(e).__name__}: {str(e)[:300]}"
            if reason is not None:
                trial.set_user_attr("pruned", reason)
                tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                try:
                    with quiet:
                        ms = timer(runner.timed(cfg))
                except BaseException as e:
                    trial.set_user_attr("error", f"{type(e).__name__}: {str(e)[:300]}")
                    tell(trial, state=optuna.trial.TrialState.FAIL)
                    current = None
                    raise
                tell(trial, ms)
                if trial.user_attrs.get("default"):
                    default_ms = ms
            current = None
            told += 1
            if bar is not None:
                bar.update(1)
                try:
                    best = study.best_value
                    post = {"best_ms": f"{best:.4f}"}
                    if default_ms:
                        post["vs_default"] = f"{default_ms / best:.3f}x"
                    bar.set_postfix(post)
                except ValueError:
                    pass
    except BaseException:
        for trial, _, _ in ([current] if current is not None else []) + pending:
            with contextlib.suppress(Exception):
                trial.set_user_attr("error", "interrupted before it was timed")
                tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
    return told


def finish(study, problem: Problem, runner, timer, *, arch: str, write: bool, root: str | None,
           device: str, dsl_version: str, wall_s: float, skip_reason: str = "--no-write") -> SweepResult:
    res = _finish(study, problem, runner, timer, arch=arch, write=write, root=root, device=device,
                  dsl_version=dsl_version, wall_s=wall_s, skip_reason=skip_reason)
    if not write and f"not written ({skip_reason})" not in (res.note or ""):
        # every row of a sweep that writes nothing says so, whatever its outcome
        res.note = f"{res.note}; not written ({skip_reason})" if res.note else f"not written ({skip_reason})"
    return res


def _finish(study, problem: Problem, runner, timer, *, arch: str, write: bool, root: str | None,
            device: str, dsl_version: str, wall_s: float, skip_reason: str) -> SweepResult:
    """Re-measure the best trial, the default config and the stored entry (if any); store
    the winner only if it beats the default and the stored entry by MIN_GAIN (`write=False`:
    never; the note then says `skip_reason`)."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    reasons: dict = {}
    for t in pruned:
        r = t.user_attrs.get("pruned", "?").split(":")[0]
        reasons[r] = reasons.get(r, 0) + 1
    res = SweepResult(problem, arch, len(complete) + len(pruned), len(complete), len(pruned), None, None, None,
                      False, wall_s, reasons,
                      failed=sum(1 for t in trials if t.state == optuna.trial.TrialState.FAIL))
    if not complete:
        res.note = "no trial completed"
        return res
    best = min(complete, key=lambda t: t.value)
    res.best_params = dict(best.params)
    cfg = space.to_config(best.params, **problem.space_kw)
    dflt = problem.default_config()
    runner.prepare(dflt)
    # fresh re-measurement, interleaved so clock drift hits both alike
    best_ms = min(timer(runner.timed(cfg)), timer(runner.timed(cfg)))
    default_ms = min(timer(runner.timed(dflt)), timer(runner.timed(dflt)))
    res.best_ms, res.default_ms = best_ms, default_ms
    # a simulated sweep's costs are not comparable with a stored (measured) entry's
    stored = _stored_config(problem, arch, root) if skip_reason != "simulated" else None
    if stored is not None and stored not in (cfg, dflt):
        runner.prepare(stored)
        stored_ms = min(timer(runner.timed(stored)), timer(runner.timed(stored)))
        if not best_ms < stored_ms * (1.0 - MIN_GAIN):
            res.note = (f"the stored entry ({stored_ms:.4f} ms) is within {MIN_GAIN:.0%} of the winner or faster: "
                        "stored entry kept")
            return res
    if cfg == dflt:
        res.note = "default config is the best"
    elif best_ms < default_ms * (1.0 - MIN_GAIN):
        res.accepted = True
        if write:
            rec = make_record(problem.shape, cfg, time_ms=best_ms, default_time_ms=default_ms, device=device,
                              dsl_version=dsl_version, date=datetime.date.today().isoformat(), trials=res.trials,
                              timing=getattr(timer, "mode", "burst"))
            res.written = file_path(arch, problem.kernel, root)
            merge_write(res.written, {problem.shape.key(): rec})
        else:
            res.note = f"beats the default; not written ({skip_reason})"
    elif best_ms < default_ms:
        res.note = f"winner within {MIN_GAIN:.0%} of the default on re-measurement (noise): default kept"
    else:
        res.note = "winner not faster than the default on re-measurement"
    return res


def _stored_config(problem: Problem, arch: str, root: str | None):
    """The config tuned_configs/ already holds for this problem's shape, or None."""
    path = file_path(arch, problem.kernel, root)
    try:
        record = read_file(path).get(problem.shape.key())
        return None if record is None else parse_entry(path, problem.shape.key(), record, kernel=problem.kernel)[1]
    except TunedConfigError as exc:
        log.warning("ignoring the stored entry: %s", exc)
        return None


def sweep(problem: Problem, runner, timer, *, arch: str, storage: str | None, n_trials: int = DEFAULT_TRIALS,
          grid: bool = False, seed: int = 0, write: bool = True, root: str | None = None, device: str = "",
          dsl_version: str = "", progress: bool = True, compile_workers: int = 1, tries=()) -> SweepResult:
    t0 = time.time()
    study = open_study(problem, arch, storage, grid=grid, seed=seed, tries=tries, n_trials=n_trials)
    # a resumed study runs only the trials it still lacks: n_trials is the study's total
    if covers_space(n_trials, grid, space_kw=problem.space_kw):
        todo = len(space.grid(**problem.space_kw)) - distinct_configs(study.trials)
    else:
        todo = n_trials - sum(1 for t in study.trials
                              if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    run_trials(study, problem, runner, timer, max(0, todo), arch=arch, progress=progress,
               compile_workers=compile_workers)
    return finish(study, problem, runner, timer, arch=arch, write=write, root=root, device=device,
                  dsl_version=dsl_version, wall_s=time.time() - t0)


def stored_text(r: SweepResult) -> str:
    """The table's "stored" cell: "yes (FILE)" only when a YAML file was written."""
    if r.written:
        return "yes"
    if r.accepted:
        return f"no ({r.note or 'not written'})"
    return f"no ({r.note})" if r.note else "no"


def format_results(results: list[SweepResult]) -> str:
    lines = ["| problem | trials (done/pruned) | best ms | default ms | tuned/default | stored | wall s | best config |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        best = f"{r.best_ms:.4f}" if r.best_ms else "-"
        dflt = f"{r.default_ms:.4f}" if r.default_ms else "-"
        sp = f"{r.speedup:.3f}x" if r.speedup else "-"
        failed = f", {r.failed} failed" if r.failed else ""
        lines.append(f"| {r.problem.label()} | {r.trials} ({r.complete}/{r.pruned}{failed}) | {best} | {dflt} | {sp} | "
                     f"{stored_text(r)} | {r.wall_s:.1f} | {r.best_params} |")
    return "\n".join(lines)


# which launches of the FP8 training step read each FP8 kernel's entries (cute_kernels/fp8/ops.family_kernel)
FP8_STEP_LAUNCHES = {"fp8_fc1_srelu": "FC1 + activation", "fp8_fc2": "FC2 and the FC1 data gradient",
                     "fp8_dgrad_dact": "FC2 data gradient + activation derivative"}


def format_tflops(results: list[SweepResult]) -> str:
    """Per problem: the default config's and the winner's TFLOP/s (2 M N K per launch, the
    re-measured times of `finish`), what the step launches with it, and whether it was stored."""
    lines = ["| launch | problem | default TFLOP/s | winner TFLOP/s | winner/default | stored | winner |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        s = r.problem.shape
        flops = 2.0 * s.m * s.n * s.k

        def rate(ms):
            return f"{flops / (ms * 1e-3) / 1e12:.0f}" if ms else "-"

        what = FP8_STEP_LAUNCHES.get(r.problem.kernel, r.problem.kernel)
        sp = f"{r.speedup:.3f}x" if r.speedup else "-"
        lines.append(f"| {what} | {r.problem.label()} | {rate(r.default_ms)} | "
                     f"{rate(r.best_ms)} | {sp} | {stored_text(r)} | {r.best_params} |")
    return "\n".join(lines)


def result_to_dict(r: SweepResult) -> dict:
    """A JSON-able record of a result (kept as a study attribute by the worker that finished it)."""
    return {"trials": r.trials, "complete": r.complete, "pruned": r.pruned, "failed": r.failed,
            "best_params": r.best_params, "best_ms": r.best_ms, "default_ms": r.default_ms, "accepted": r.accepted,
            "wall_s": r.wall_s, "pruned_reasons": r.pruned_reasons, "note": r.note, "written": r.written}


def result_from_dict(problem: Problem, arch: str, d: dict) -> SweepResult:
    return SweepResult(problem, arch, d["trials"], d["complete"], d["pruned"], d["best_params"], d["best_ms"],
                       d["default_ms"], d["accepted"], d["wall_s"], d.get("pruned_reasons") or {}, d.get("note", ""),
                       d.get("written"), d.get("failed", 0))
