"""Command line of the autotuner.

    python -m autotune sweep --kernel fc1_srelu --m 8192 --n 16384 --k 4096
    python -m autotune sweep --kernel weight_grad --m 16384 --n 4096 --k 8192 [--experts 8]  # dW (M, N) over K tokens
    python -m autotune sweep --benchmark-shapes [--only fc2]
    python -m autotune sweep --preset moe-e8 | --hidden 2688 --ffn 1856 --experts 8 --tokens 16384,32768
    python -m autotune sweep ... --grid            # time the whole space (checks the sampler)
    python -m autotune sweep ... --try cluster=2x1 --trials 3   # the default, this override, one sampled
    python -m autotune sweep ... --storage sqlite:///studies.db --workers 4   # one process per GPU
    python -m autotune show
    python -m autotune plot --study NAME --storage sqlite:///studies.db --out study.png
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from . import space
from .problem import KERNELS, Problem
from .shapes import GEMM_SHAPES, MODEL_PRESETS, model_shapes

DEFAULT_STORAGE = "sqlite:///autotune_studies.db"


def problems_from_args(args) -> list[Problem]:
    from cute_kernels.tuned_store import ShapeKey

    shapes = []
    if args.kernel:
        if args.m is None or args.n is None or args.k is None:
            raise SystemExit("--kernel needs --m, --n and --k")
        shapes.append({"kernel": args.kernel, "m": args.m, "n": args.n, "k": args.k, "experts": args.experts or 0})
    if args.benchmark_shapes:
        shapes += GEMM_SHAPES
    if args.preset or args.hidden:
        if args.preset:
            if args.preset not in MODEL_PRESETS:
                raise SystemExit(f"unknown preset {args.preset!r}; known: {sorted(MODEL_PRESETS)}")
            p = MODEL_PRESETS[args.preset]
        else:
            if not (args.ffn and args.tokens):
                raise SystemExit("--hidden needs --ffn and --tokens")
            p = {"hidden": args.hidden, "ffn": args.ffn, "experts": args.experts or 0,
                 "tokens": [int(t) for t in args.tokens.split(",")]}
        shapes += model_shapes(**p)
    if not shapes:
        raise SystemExit("no shapes: give --kernel/--m/--n/--k, --benchmark-shapes, --preset or --hidden/--ffn/--tokens")
    out = []
    for s in shapes:
        if args.only and args.only not in s["kernel"]:
            continue
        out.append(Problem(s["kernel"], ShapeKey(args.dtype, s["m"], s["n"], s["k"], s.get("experts") or 0)))
    return out


def cmd_sweep(args, runner_factory=None, timer=None, arch=None, device="", dsl_version="") -> int:
    from . import tuner

    problems = problems_from_args(args)
    try:
        tries = [space.parse_overrides(t) for t in args.tries]
    except ValueError as exc:
        raise SystemExit(f"--try: {exc}")
    if args.simulate and runner_factory is None:
        from .simulate import SimulatedRunner, simulated_timer

        runner_factory, timer, arch, device = SimulatedRunner, simulated_timer, arch or "sm90", "simulated"
        args.no_write = True
    if runner_factory is None:
        try:
            import torch
        except ImportError:
            torch = None
        if torch is None or not torch.cuda.is_available():
            print("autotune sweep needs a CUDA GPU (the search, YAML and lookup run anywhere; timing does not).",
                  file=sys.stderr)
            return 2
        import cutlass

        from cute_kernels.gemm_ops import device_arch

        from .problem import GpuRunner
        from .timing import make_timer

        runner_factory = GpuRunner
        timer = make_timer(args.timing)
        arch = device_arch(torch.device("cuda"))
        device = torch.cuda.get_device_name()
        dsl_version = getattr(cutlass, "__version__", "?")
    storage = args.storage
    if args.workers > 1 and storage is None:
        storage = DEFAULT_STORAGE
    results = []
    for prob in problems:
        runner = runner_factory(prob)
        if args.workers > 1 and not args.worker:
            # create the study (schema, enqueued default/grid points) before the workers attach
            study = tuner.open_study(prob, arch, storage, grid=args.grid, seed=args.seed)
            _run_workers(args, prob, storage)
            res = tuner.finish(study, prob, runner, timer, arch=arch, write=not args.no_write, root=args.root,
                               device=device, dsl_version=dsl_version, wall_s=0.0)
        elif args.worker:
            study = tuner.open_study(prob, arch, storage, grid=args.grid, seed=args.seed + args.worker)
            if args.grid:  # the grid is shared: each worker takes enqueued points until none are left
                left = len(space.grid()) - sum(1 for t in study.trials if t.state.is_finished())
                args.trials = max(0, -(-left // max(1, args.workers_total)))
            tuner.run_trials(study, prob, runner, timer, args.trials, arch=arch, progress=False)
            continue
        else:
            res = tuner.sweep(prob, runner, timer, arch=arch, storage=storage, n_trials=args.trials, grid=args.grid,
                              seed=args.seed, write=not args.no_write, root=args.root, device=device,
                              dsl_version=dsl_version, progress=not args.quiet, compile_workers=args.compile_ahead,
                              tries=tries)
        results.append(res)
        print(tuner.format_results([res]).splitlines()[-1], flush=True)
    if results:
        table = tuner.format_results(results)
        print(table)
        if args.out:
            with open(args.out, "w") as f:
                f.write(table + "\n")
    return 0


def _run_workers(args, prob: Problem, storage: str):
    """N worker processes, one per GPU, sharing the study through `storage`."""
    procs = []
    per = max(1, -(-args.trials // args.workers))
    for i in range(args.workers):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(i))
        cmd = [sys.executable, "-m", "autotune", "sweep", "--kernel", prob.kernel, "--m", str(prob.shape.m),
               "--n", str(prob.shape.n), "--k", str(prob.shape.k), "--experts", str(prob.shape.experts),
               "--dtype", prob.shape.dtype, "--trials", str(per), "--storage", storage, "--seed", str(args.seed),
               "--workers-total", str(args.workers),
               "--worker", str(i + 1)] + (["--grid"] if args.grid else []) + (["--simulate"] if args.simulate else [])
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"autotune workers failed with exit codes {codes}")


def cmd_show(args) -> int:
    from cute_kernels.tuned_store import TunedConfigError, default_root, parse_entry, read_file

    root = args.root or default_root()
    rows, bad = [], 0
    for arch in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        d = os.path.join(root, arch)
        if not os.path.isdir(d):
            continue
        for fn in sorted(os.listdir(d)):
            if not fn.endswith(".yaml"):
                continue
            path = os.path.join(d, fn)
            kernel = fn[:-5]
            try:
                entries = read_file(path)
            except TunedConfigError as e:
                print(f"ERROR {e}")
                bad += 1
                continue
            for key, rec in entries.items():
                try:
                    parse_entry(path, key, rec, kernel=kernel)
                    rows.append(f"{arch:6s} {kernel:10s} {key:45s} {rec.get('time_ms', '?'):>9} ms  "
                                f"x{rec.get('speedup', '?')} vs default  {rec.get('device', '?')}  {rec.get('date', '?')}")
                except TunedConfigError as e:
                    print(f"ERROR {e}")
                    bad += 1
    print("\n".join(rows) if rows else f"no tuned configs under {root}")
    return 1 if bad else 0


def cmd_plot(args) -> int:
    from .plot import plot_study

    path = plot_study(args.study, args.storage, args.out)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m autotune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sweep", help="tune kernels for shapes and write tuned_configs/")
    s.add_argument("--kernel", choices=KERNELS)
    s.add_argument("--m", type=int)
    s.add_argument("--n", type=int)
    s.add_argument("--k", type=int)
    s.add_argument("--experts", type=int, default=0)
    s.add_argument("--benchmark-shapes", action="store_true", help="the shapes of benchmarks/bench_gemm.py")
    s.add_argument("--preset", help=f"model preset: {', '.join(sorted(MODEL_PRESETS))}")
    s.add_argument("--hidden", type=int)
    s.add_argument("--ffn", type=int)
    s.add_argument("--tokens", help="comma-separated token counts (M)")
    s.add_argument("--only", help="only kernels whose name contains this")
    s.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    s.add_argument("--trials", type=int, default=None, help="trials per shape (default 24)")
    s.add_argument("--grid", action="store_true", help="time every config of the space")
    s.add_argument("--try", dest="tries", action="append", default=[], metavar="PARAMS",
                   help="also try this override of the default first, e.g. 'tile_n=256,cluster=2x1' (repeatable)")
    s.add_argument("--storage", default=None, help=f"Optuna storage URL (default {DEFAULT_STORAGE}); resumable")
    s.add_argument("--workers", type=int, default=1, help="worker processes, one per GPU, sharing --storage")
    s.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    s.add_argument("--workers-total", type=int, default=1, help=argparse.SUPPRESS)
    s.add_argument("--timing", choices=["burst", "sustained"], default="burst",
                   help="burst: short L2-flushed batches (boost clocks); sustained: 0.4 s back to back "
                        "at the power limit, as training runs (slower sweeps; the tuned entry records it)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--compile-ahead", type=int, default=1, help="configs compiled ahead on threads while timing")
    s.add_argument("--no-write", action="store_true", help="do not write tuned_configs/")
    s.add_argument("--root", help="tuned_configs folder to write (default: the package's)")
    s.add_argument("--out", help="also write the final table here")
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--simulate", action="store_true", help="no GPU: synthetic times from a cost model; writes nothing")
    sh = sub.add_parser("show", help="list tuned configs")
    sh.add_argument("--root")
    pl = sub.add_parser("plot", help="PNG of a study: time per trial, best so far, parameter importances")
    pl.add_argument("--study", required=True)
    pl.add_argument("--storage", default=DEFAULT_STORAGE)
    pl.add_argument("--out", required=True)
    return p


def main(argv=None, **inject) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "sweep":
        if args.trials is None:
            from .tuner import DEFAULT_TRIALS

            args.trials = DEFAULT_TRIALS
        if args.storage is None and not inject:
            args.storage = DEFAULT_STORAGE
        return cmd_sweep(args, **inject)
    if args.cmd == "show":
        return cmd_show(args)
    return cmd_plot(args)


if __name__ == "__main__":
    sys.exit(main())
