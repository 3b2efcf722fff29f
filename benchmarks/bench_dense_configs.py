"""Candidate configs of the dense step's six GEMMs at the GPU's power limit, against cuBLAS.

    python -m benchmarks.bench_dense_configs [--out table.md] [--try PARAMS ...] [--gemms FC1 dgrad]

For each GEMM of the dense MLP step (M=8192, 4096 -> 16384; the list bench_mlp times)
it runs cuBLAS's matmul of the same shape, the config the op would use (tuned entry,
else the default) and each candidate.  Candidates are given in the autotuner's syntax
(`--try schedule=pingpong128,tile_n=192,cluster=2x1`, over the default config; without
`--try`, the 128-row ping-pong tiles).  Every candidate's output is checked against the
op's own config first (relative error), so a wrong kernel cannot post a time; a config
the op rejects is listed with the reason.  Timing: `autotune.timing.sustained_ms`, calls
back to back at the power limit as a training step runs them, in `--rounds` rounds that
alternate between the configs; the best round is shown with the mean board power and SM
clock while it ran.  Each config and round takes about 2.5 s on an H200 at the defaults
(the warm-up drains a full launch queue), besides the compiles; progress goes to stderr.
Short bursts after an idle GPU run at boost clocks and rank configs differently
(benchmarks/results/2026-11-25-h100-dense-power-limit-and-quack.md).
"""
from __future__ import annotations

import argparse
import datetime
import sys

import torch

from autotune import space
from autotune.timing import sustained_ms
from benchmarks.bench_mlp import dense_operands, dense_step_gemms
from benchmarks.report import emit
from cute_kernels import GemmConfig

OP = "op's config"
DEFAULT_TRIES = ["schedule=pingpong128,tile_n=128,cluster=2x1",
                 "schedule=pingpong128,tile_n=192,cluster=2x1",
                 "schedule=pingpong128,tile_n=192,cluster=1x2"]


def candidate(text: str) -> GemmConfig:
    """A GemmConfig from autotuner overrides applied to the default config."""
    params = space.to_params(GemmConfig())
    params.update(space.parse_overrides(text))
    return space.to_config(params)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--try", dest="tries", action="append", default=None, metavar="PARAMS")
    ap.add_argument("--gemms", nargs="+", default=None,
                    help="only the GEMMs whose name contains one of these words (e.g. FC1 dgrad)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=0.6, help="timed seconds per config and round")
    args = ap.parse_args(argv)
    try:
        cands = {t: candidate(t) for t in (args.tries or DEFAULT_TRIES)}
    except ValueError as exc:
        ap.error(f"--try: {exc}")
    if not torch.cuda.is_available():
        print("bench_dense_configs needs a CUDA GPU", file=sys.stderr)
        return 2
    gemms = [g for g in dense_step_gemms(dense_operands())
             if not args.gemms or any(w in g[0] for w in args.gemms)]

    rows = {}  # GEMM name -> {column: fn}
    notes = []
    for name, cublas, ours in gemms:
        ref = ours()
        fns = {"cuBLAS": cublas, OP: ours}
        for label, cfg in cands.items():
            try:
                err = _rel_err(ours(cfg), ref)  # compiles it too, before anything is timed
            except Exception as exc:  # a config the op rejects: say why, go on
                notes.append(f"- {name}, {label}: rejected ({str(exc)[:160]})")
                continue
            if err > 1e-2:
                notes.append(f"- {name}, {label}: output differs from the op's config (rel err {err:.1e}); not timed")
                continue
            fns[label] = lambda cfg=cfg, ours=ours: ours(cfg)
        rows[name] = fns
    torch.cuda.synchronize()

    best = {}
    for rnd in range(args.rounds):
        for name, fns in rows.items():
            for col, fn in fns.items():
                r = sustained_ms(fn, seconds=args.seconds, warm_s=0.2)
                print(f"round {rnd + 1}: {name} | {col}: {r[0]:.3f} ms ({r[1]:.0f} W, {r[2]:.0f} MHz)",
                      file=sys.stderr, flush=True)
                if (name, col) not in best or r[0] < best[(name, col)][0]:
                    best[(name, col)] = r

    cols = ["cuBLAS", OP, *cands]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"Dense-step GEMM configs at the power limit, {torch.cuda.get_device_name()}, {now}, bf16: "
             f"ms per call, best of {args.rounds} rounds of {args.seconds} s back to back (mean W, MHz)", "",
             "| GEMM | " + " | ".join(cols) + f" | best candidate vs {OP} |",
             "|---" * (len(cols) + 2) + "|"]
    for name, fns in rows.items():
        cells = [f"{best[(name, c)][0]:.3f} ({best[(name, c)][1]:.0f} W, {best[(name, c)][2]:.0f})"
                 if c in fns else "-" for c in cols]
        timed = [best[(name, c)][0] for c in cands if c in fns]
        gain = f"{best[(name, OP)][0] / min(timed):.3f}x" if timed else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {gain} |")
    lines += ["", *notes] if notes else []
    emit("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
