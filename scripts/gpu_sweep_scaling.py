"""GPU check of the multi-GPU sweep: the benchmark shapes swept with 1 worker and with N workers
(N = visible GPUs, one worker per GPU, one journal file each run), the wall-time speedup
(target >= 0.8 N) and whether the two runs' winners agree within 1 % (re-measured times).

    OUT=gpu_out python scripts/gpu_sweep_scaling.py [--trials 24] [--only fc2]

Writes $OUT/sweep_scaling.log (everything), $OUT/sweep_scaling.md (the table, printed last) and
the two journals.  Nothing is written to tuned_configs/ (--no-write).  With one GPU the second
run is a second 1-worker run: the speedup is ~1 and the winners check still means something.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def sweep(n: int, gpus: list[str], journal: str, args, log) -> float:
    cmd = [sys.executable, "-m", "autotune", "sweep", "--benchmark-shapes", "--trials", str(args.trials),
           "--storage", journal, "--workers", str(n), "--gpus", ",".join(gpus[:n]), "--no-write", "--quiet",
           "--seed", "0"] + (["--only", args.only] if args.only else [])
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])))
    wall = time.perf_counter() - t0
    log.write(f"exit {r.returncode}, {wall:.1f} s\n")
    if r.returncode:
        raise SystemExit(f"sweep with {n} worker(s) failed (exit {r.returncode}); see the log")
    return wall


def results(journal: str, args, arch: str | None = None) -> dict:
    """{shape label: SweepResult or None} of the sweep recorded in `journal` (`arch`: this GPU's)."""
    from autotune.__main__ import build_parser, problems_from_args
    from autotune.storage import open_store
    from autotune.worker import SweepSpec, load_result

    if arch is None:
        import torch

        from cute_kernels.gemm_ops import device_arch

        arch = device_arch(torch.device("cuda"))
    ns = build_parser().parse_args(["sweep", "--benchmark-shapes"] + (["--only", args.only] if args.only else []))
    spec = SweepSpec(arch=arch, trials=args.trials)
    store = open_store(journal, create=False)
    return {p.label(): load_result(store, p, spec) for p in problems_from_args(ns)}


def scaling_table(r1: dict, rn: dict, w1: float, wn: float, n: int, trials: int, device: str) -> str:
    """The report: wall times of 1 and `n` workers, and each shape's winner from both sweeps
    (`r1`, `rn`: results() of each)."""
    rows, agree = [], 0
    for label in r1:
        a, b = r1[label], rn.get(label)
        if a is None or b is None or not a.best_ms or not b.best_ms:
            rows.append(f"| {label} | - | - | - | not finished |")
            continue
        diff = b.best_ms / a.best_ms - 1.0
        ok = abs(diff) <= 0.01
        agree += ok
        same = "same config" if a.best_params == b.best_params else "other config"
        rows.append(f"| {label} | {a.best_ms:.4f} | {b.best_ms:.4f} | {diff:+.2%} | {'yes' if ok else 'NO'} ({same}) |")
    speedup = w1 / wn
    return "\n".join([
        f"sweep scaling, {device} x{n}, {trials} trials/shape, {time.strftime('%Y-%m-%d')}",
        f"1 worker: {w1:.1f} s; {n} workers: {wn:.1f} s; speedup {speedup:.2f}x "
        f"(target >= {0.8 * n:.1f}x: {'met' if speedup >= 0.8 * n else 'NOT met'})",
        f"winners within 1%: {agree}/{len(r1)}", "",
        f"| shape | best ms, 1 worker | best ms, {n} workers | diff | within 1% |", "|---|---|---|---|---|", *rows])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--only", help="only kernels whose name contains this")
    args = ap.parse_args()
    out = os.environ.get("OUT", "gpu_out")
    os.makedirs(out, exist_ok=True)
    import torch

    if not torch.cuda.is_available():
        print("gpu_sweep_scaling needs CUDA GPUs", file=sys.stderr)
        return 2
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = [g.strip() for g in env.split(",") if g.strip()] if env else [str(i) for i in range(torch.cuda.device_count())]
    n = len(gpus)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    j1, jn = os.path.abspath(f"{out}/scaling_{stamp}_w1.journal"), os.path.abspath(f"{out}/scaling_{stamp}_w{n}.journal")
    with open(f"{out}/sweep_scaling.log", "a") as log:
        log.write(f"=== {stamp} {torch.cuda.get_device_name()} x{n}, trials {args.trials}\n")
        w1 = sweep(1, gpus, j1, args, log)
        wn = sweep(n, gpus, jn, args, log)
        r1, rn = results(j1, args), results(jn, args)
        table = scaling_table(r1, rn, w1, wn, n, args.trials, torch.cuda.get_device_name())
        log.write(table + "\n")
    with open(f"{out}/sweep_scaling.md", "w") as f:
        f.write(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
