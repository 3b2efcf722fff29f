"""Token counts between the tuned entries: our kernels at 20 untuned M values (a fixed list,
UNTUNED_M) against torch, with the config each lookup picks: the nearest-M rule (default) and
the wave-aware lookup ($CUTE_KERNELS_WAVE_LOOKUP=1, docs/config-rules.md), in one run.

    python -m benchmarks.bench_untuned_m [--kernels fc2_down,fc2_up,fc1_srelu] [--m 1000,12345]
                                         [--lookups nearest,wave] [--sustained-s 0.5] [--out FILE]

Problems (the dense model of issue 27, hidden 4096, ffn 16384): plain GEMMs (our fc2 kernel)
on (M, 4096, 16384) and (M, 16384, 4096) against cuBLAS (`x @ w.T`, target >= 0.98x), FC1+SReLU
(M, 16384, 4096) against torch unfused (`relu(x @ w.T).square()`, target >= 1.15x).  Each is timed
burst (L2 flushed before each batch, CUDA events, median of 20) and sustained (back to back at
the power limit, `autotune.timing.sustained_ms`); a lookup that picks the same config as the
nearest-M rule is not timed twice.  Prints a markdown table and a summary per kernel; writes
them to --out, else to $OUT/bench_untuned_m.md when $OUT is set.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch

# 20 token counts between 1,000 and 40,000, none of them a tuned entry's M (8192, 16384, 32768)
# nor an M bucket of `autotune sweep --model`: odd values on both sides of wave boundaries.
UNTUNED_M = [1000, 1337, 1777, 2345, 2900, 3500, 4321, 5000, 6007, 7000,
             8500, 9999, 12345, 14000, 17000, 20000, 23456, 27000, 33333, 40000]
HIDDEN, FFN = 4096, 16384
# name -> (our kernel, N, K, baseline, target speedup over the baseline)
PROBLEMS = {
    "fc2_down": ("fc2", HIDDEN, FFN, "cuBLAS", 0.98),
    "fc2_up": ("fc2", FFN, HIDDEN, "cuBLAS", 0.98),
    "fc1_srelu": ("fc1_srelu", FFN, HIDDEN, "torch unfused", 1.15),
}
LOOKUPS = ("nearest", "wave")
MODES = ("burst", "sustained")


def _csv(text: str, convert=str) -> list:
    return [convert(t.strip()) for t in text.split(",") if t.strip()]


def resolved_config(kernel: str, m: int, n: int, k: int, lookup: str, dtype: str = "bfloat16"):
    """(config, source) the lookup picks for this shape on sm90 (what the launch will use)."""
    from cute_kernels.config_lookup import resolve, tuned_root

    return resolve(kernel, arch="sm90", dtype=dtype, m=m, n=n, k=k, root=tuned_root(), wave=lookup == "wave")


def m_values(parser: argparse.ArgumentParser, text: str) -> list[int]:
    """--m's comma-separated M values (each at least 1), else the parser's error naming --m."""
    try:
        ms = _csv(text, int)
    except ValueError:
        parser.error(f"argument --m: expected comma-separated whole numbers, got {text!r}")
    if not ms or min(ms) < 1:
        parser.error("argument --m: give M values of at least 1")
    return ms


def _use_lookup(lookup: str):
    """Switch the process's lookup (the env var is read once; clear_cache drops plans and keys)."""
    from cute_kernels.config_lookup import WAVE_LOOKUP_ENV, clear_cache

    os.environ[WAVE_LOOKUP_ENV] = "1" if lookup == "wave" else "0"
    clear_cache()


def _times(fn, sustained_s: float) -> dict:
    from autotune.timing import sustained_ms, time_ms

    return {"burst": time_ms(fn), "sustained": sustained_ms(fn, seconds=sustained_s, warm_s=0.2)[0]}


def bench_problem(name: str, m: int, lookups, sustained_s: float) -> dict:
    import cute_kernels as ck

    kernel, n, k, baseline, target = PROBLEMS[name]
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) / k ** 0.25
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.25
    if kernel == "fc1_srelu":
        ours = lambda: ck.fc1_srelu(x, w)[1]
        base = lambda: torch.relu(x @ w.t()).square()
    else:
        ours = lambda: ck.fc2(x, w)
        base = lambda: x @ w.t()
    ref = base().float()
    row = {"problem": name, "kernel": kernel, "m": m, "n": n, "k": k, "baseline": baseline, "target": target,
           "baseline_ms": _times(base, sustained_s), "lookups": {}}
    timed = {}
    for lookup in lookups:
        cfg, source = resolved_config(kernel, m, n, k, lookup)
        entry = {"source": source, "config": cfg}
        if cfg in timed:  # the same kernel: its times again
            entry.update(same_as=timed[cfg], ms=row["lookups"][timed[cfg]]["ms"],
                         rel_err=row["lookups"][timed[cfg]]["rel_err"])
        else:
            _use_lookup(lookup)
            got = ours().float()
            entry["rel_err"] = ((got - ref).norm() / ref.norm()).item()
            entry["ms"] = _times(ours, sustained_s)
            timed[cfg] = lookup
        row["lookups"][lookup] = entry
    _use_lookup("nearest")
    return row


def sweep_rows(names, ms, bench, failed, format_table) -> list[dict]:
    """bench(name, m) for every problem name and M value; one that raises becomes failed(name, m,
    exception) and the rest still run; each row printed as it lands (its line of format_table)."""
    rows = []
    for name in names:
        for m in ms:
            try:
                rows.append(bench(name, m))
            except Exception as e:  # a failing shape is reported, the rest still run
                rows.append(failed(name, m, e))
            print(format_table(rows[-1:]).splitlines()[2], flush=True)
    return rows


def _short(cfg) -> str:
    return (f"{cfg.tile_m}x{cfg.tile_n} c{cfg.cluster_m}x{cfg.cluster_n} {cfg.schedule[:4]}"
            if cfg is not None else "-")


def format_table(rows: list[dict]) -> str:
    """One markdown row per (problem, M): the configs each lookup picked, then per timing mode the
    baseline's ms, ours per lookup and our speedup over the baseline (baseline ms / ours)."""
    lookups = list(dict.fromkeys(lk for r in rows for lk in r.get("lookups", {})))
    head = ["problem", "M", "N", "K", "baseline"] + [f"{lk} config" for lk in lookups]
    for mode in MODES:
        head += [f"{mode} base ms"] + [f"{mode} {lk} ms" for lk in lookups] + [f"{mode} {lk} x" for lk in lookups]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["problem"], str(r["m"]), str(r.get("n", "-")), str(r.get("k", "-")), r.get("baseline", "-")]
        if "error" in r:
            lines.append("| " + " | ".join(cells + [f"ERROR: {r['error']}"] + [""] * (len(head) - len(cells) - 1)) + " |")
            continue
        got = r["lookups"]
        cells += [f"{_short(got[lk]['config'])} ({got[lk]['source']})" if lk in got else "-" for lk in lookups]
        for mode in MODES:
            base = r["baseline_ms"][mode]
            cells.append(f"{base:.3f}")
            cells += [f"{got[lk]['ms'][mode]:.3f}" if lk in got else "-" for lk in lookups]
            cells += [f"{base / got[lk]['ms'][mode]:.3f}x" if lk in got else "-" for lk in lookups]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_lines(rows: list[dict]) -> list[str]:
    """Per problem, lookup and mode: the least speedup over the baseline (at which M) against
    the target, and how many of the M values meet it."""
    out = []
    for name in dict.fromkeys(r["problem"] for r in rows):
        mine = [r for r in rows if r["problem"] == name and "error" not in r]
        errors = sum(1 for r in rows if r["problem"] == name and "error" in r)
        if not mine:
            out.append(f"{name}: no result ({errors} errors)")
            continue
        target = mine[0]["target"]
        for lk in dict.fromkeys(lk for r in mine for lk in r["lookups"]):
            for mode in MODES:
                sp = [(r["baseline_ms"][mode] / r["lookups"][lk]["ms"][mode], r["m"]) for r in mine if lk in r["lookups"]]
                worst, at = min(sp)
                met = sum(1 for s, _ in sp if s >= target)
                out.append(f"{name} {lk} {mode}: least {worst:.3f}x at M={at}, {met}/{len(sp)} M values >= "
                           f"{target:.2f}x vs {mine[0]['baseline']}" + (f" ({errors} errors)" if errors else ""))
    return out


def positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def sweep_parser(doc: str, problems_flag: str, problems, default_m, m_help: str, sustained_s: float,
                 out_name: str) -> argparse.ArgumentParser:
    """The arguments of a sweep over problems and M values: `problems_flag` (comma-separated names of
    `problems`), --m, --sustained-s (positive) and --out (default $OUT/`out_name`)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(problems_flag, default=",".join(problems), help=f"comma-separated, of {', '.join(problems)}")
    p.add_argument("--m", default=",".join(map(str, default_m)), help=f"comma-separated M values (default: {m_help})")
    p.add_argument("--sustained-s", type=positive_seconds, default=sustained_s,
                   help="seconds of back-to-back calls per sustained time")
    p.add_argument("--out", help=f"markdown file (default: $OUT/{out_name} when $OUT is set)")
    return p


def out_path(args, out_name: str) -> str | None:
    """--out, else $OUT/`out_name` when $OUT is set, else None (printed only)."""
    return args.out or (os.path.join(os.environ["OUT"], out_name) if os.environ.get("OUT") else None)


def main(argv=None) -> int:
    p = sweep_parser(__doc__, "--kernels", PROBLEMS, UNTUNED_M, "UNTUNED_M", 0.5, "bench_untuned_m.md")
    p.add_argument("--lookups", default=",".join(LOOKUPS), help="nearest (the default rule), wave, or both")
    args = p.parse_args(argv)
    names, lookups, ms = _csv(args.kernels), _csv(args.lookups), m_values(p, args.m)
    if bad := [n for n in names if n not in PROBLEMS]:
        p.error(f"argument --kernels: unknown {bad}; known: {list(PROBLEMS)}")
    if bad := [lk for lk in lookups if lk not in LOOKUPS] or ([] if lookups else ["(none)"]):
        p.error(f"argument --lookups: unknown {bad}; known: {list(LOOKUPS)}")
    if not torch.cuda.is_available():
        print("bench_untuned_m needs a CUDA GPU", file=sys.stderr)
        return 2
    from benchmarks.report import emit

    def failed(name, m, e):
        kernel, n, k, baseline, target = PROBLEMS[name]
        return {"problem": name, "m": m, "n": n, "k": k, "baseline": baseline, "target": target,
                "error": f"{type(e).__name__}: {e}"[:300]}

    rows = sweep_rows(names, ms, lambda name, m: bench_problem(name, m, lookups, args.sustained_s), failed,
                      format_table)
    head = (f"Untuned M, {torch.cuda.get_device_name()}, torch {torch.__version__}, "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, bf16; burst: L2 flushed, median "
            f"of 20 batches; sustained: {args.sustained_s} s back to back; x = baseline ms / ours")
    emit(head + "\n\n" + format_table(rows) + "\n\n" + "\n".join(f"- {s}" for s in summary_lines(rows)),
         out_path(args, "bench_untuned_m.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
