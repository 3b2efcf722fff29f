"""Command line of the autotuner.

    python -m autotune sweep --kernel fc1_srelu --m 8192 --n 16384 --k 4096
    python -m autotune sweep --kernel fp8_fc1_srelu --m 8192 --n 16384 --k 4096    # FP8 (float8_e4m3fn)
    python -m autotune sweep --kernel weight_grad --m 16384 --n 4096 --k 8192 [--experts 8]  # dW (M, N) over K tokens
    python -m autotune sweep --benchmark-shapes [--only fc2]
    python -m autotune sweep --preset moe-e8 | --hidden 2688 --ffn 1856 --experts 8 --tokens 16384,32768
    python -m autotune sweep --model 2688,1856,128 [--tokens 4096,8192]   # a model's MLP GEMMs at the M buckets
    python -m autotune sweep --preset dense-4096x16384,moe-e8 --fp8 --candidates 6 --timing sustained
                                                   # the FP8 step's GEMMs: the default and 6 fixed candidates each
    python -m autotune sweep ... --grid            # time the whole space (checks the sampler)
    python -m autotune sweep ... --try cluster=2x1 --trials 3   # the default, this override, one sampled
    python -m autotune sweep ... --workers 4 [--gpus 0,1,2,3]      # one process per GPU, one journal file
    python -m autotune sweep ... --storage postgresql://user@db-host/autotune --workers 8   # on every host
    python -m autotune sweep ... --simulate [--workers 2]          # no GPU: cost-model times, nothing stored
    python -m autotune compile-only --arch sm100 [--kernel fc1_srelu] [--experts 8]   # no GPU: what compiles
    python -m autotune show
    python -m autotune plot --study NAME [--storage autotune_studies.journal] --out study.png

--trials is each shape's total over all workers and reruns: a rerun resumes the studies and runs
only the trials they lack (docs/distributed-sweep.md: storages, workers, faults).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from . import space, tuner
from .problem import KERNELS, Problem
from .shapes import GEMM_SHAPES, MODEL_PRESETS, MODEL_TOKEN_BUCKETS, fp8_step_shapes, model_shapes
from .storage import DEFAULT_GRACE_S, DEFAULT_HEARTBEAT_S, DEFAULT_SIMULATED_STORAGE, DEFAULT_STORAGE



def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def nonnegative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {v}")
    return v


SEED_MAX = 2**31 - 1  # numpy's generators (under Optuna's samplers) take seeds below 2**32; workers add their index


def seed_int(text: str) -> int:
    """argparse type: a sampler seed, 0 .. SEED_MAX."""
    v = nonnegative_int(text)
    if v > SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be at most {SEED_MAX}, got {v}")
    return v


def storage_spec(text: str) -> str:
    """argparse type: a --storage value (a journal path or URL), never empty."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a journal file or a URL, got an empty string")
    return text


def out_path_error(path: str) -> str | None:
    """Why a file cannot be written at `path` (None: it can); checked before any work is done."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"folder {folder} does not exist"
    if os.path.isdir(path):
        return f"{path} is a folder"
    if not os.access(folder, os.W_OK):
        return f"folder {folder} is not writable"
    return None


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return v


def gpu_list(text: str) -> list[str]:
    """--gpus 0,1,3: the CUDA device indices (or UUIDs) the workers are pinned to."""
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus:
        raise argparse.ArgumentTypeError("expected a comma-separated list of GPU indices, e.g. 0,1")
    return gpus


# The operands' contiguous dimension must hold a multiple of 8 bf16/fp16 elements (16-byte rows:
# cute_kernels.checks.check_matrix refuses anything else).  fc1_srelu / fc2 / fc2_dgrad_dsrelu:
# x (M, K) and w (N, K) are contiguous along K, the output (M, N) along N; weight_grad: dy (K, M)
# and x (K, N) along M and N.
# The FP8 kernels (fp8_fc1_srelu, fp8_fc2): x (M, K) and w (N, K) FP8 contiguous along K, the
# outputs along N; 16-byte rows of one-byte elements (the FP8 postact too): multiples of 16.
ALIGNED_DIMS = {"fc1_srelu": ("n", "k"), "fc2": ("n", "k"), "fc2_dgrad_dsrelu": ("n", "k"), "weight_grad": ("m", "n"),
                "fp8_fc1_srelu": ("n", "k"), "fp8_fc2": ("n", "k"), "fp8_dgrad_dact": ("n", "k")}


def shape_error(s: dict) -> str | None:
    """Why the ops cannot run shape `s` (None: they can)."""
    from cute_kernels.registry import get_kernel

    fp8 = get_kernel(s["kernel"]).block_scaled
    multiple = 16 if fp8 else 8
    for dim in ALIGNED_DIMS[s["kernel"]]:
        if s[dim] % multiple:
            return (f"{s['kernel']}: {dim.upper()}={s[dim]} must be a multiple of {multiple} (16-byte aligned "
                    f"{'FP8' if fp8 else 'bf16/fp16'} rows of the operands)")
    return None


def model_spec(text: str) -> tuple[int, int, int]:
    """argparse type of --model: "hidden,ffn,experts" (experts 0 or 1: a dense MLP)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected hidden,ffn,experts (e.g. 2688,1856,128), got {text!r}")
    hidden, ffn = (positive_int(p) for p in parts[:2])
    return hidden, ffn, nonnegative_int(parts[2])


def token_list(text: str) -> list[int]:
    """--tokens 4096,8192: token counts (M), each at least 1."""
    try:
        return [positive_int(t) for t in text.split(",")]
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"argument --tokens: {e}") from None


def model_problem_shapes(model: tuple[int, int, int], tokens: list[int] | None, fp8: bool = False) -> list[dict]:
    """The GEMMs an MLP step of `model` (hidden, ffn, experts) launches (FC1, FC2, FC2's data
    gradient with dSReLU, both weight gradients; grouped when experts > 1) at each token count of
    `tokens`, by default the M buckets (`shapes.MODEL_TOKEN_BUCKETS`: 1k to 64k tokens); with
    `fp8`, the FP8 step's GEMM lookups instead (`shapes.fp8_step_shapes`)."""
    hidden, ffn, experts = model
    return (fp8_step_shapes if fp8 else model_shapes)(hidden, ffn, experts if experts > 1 else 0,
                                                      tokens or MODEL_TOKEN_BUCKETS)


def _usage_error(parser, msg: str):
    """Exit 2 with argparse's usage line and `msg` (no parser: exit with `msg`)."""
    if parser is not None:
        parser.error(msg)
    raise SystemExit(msg)


def problems_from_args(args, parser=None) -> list[Problem]:
    from cute_kernels.registry import get_kernel
    from cute_kernels.tuned_store import ShapeKey

    def error(msg):
        _usage_error(parser, msg)

    shapes = []
    if args.kernel:
        if args.m is None or args.n is None or args.k is None:
            error("--kernel needs --m, --n and --k")
        shapes.append({"kernel": args.kernel, "m": args.m, "n": args.n, "k": args.k, "experts": args.experts or 0})
    if args.benchmark_shapes:
        shapes += GEMM_SHAPES
    if args.model:
        if args.preset or args.hidden:
            error("--model takes the place of --preset and --hidden/--ffn: give one of them")
        try:
            tokens = token_list(args.tokens) if args.tokens else None
        except argparse.ArgumentTypeError as e:
            error(str(e))
        shapes += model_problem_shapes(args.model, tokens, args.fp8)
    elif args.preset or args.hidden:
        step_shapes = fp8_step_shapes if args.fp8 else model_shapes
        if args.preset:
            for name in args.preset.split(","):
                if name not in MODEL_PRESETS:
                    error(f"unknown preset {name!r}; known: {sorted(MODEL_PRESETS)}")
                shapes += step_shapes(**MODEL_PRESETS[name])
        else:
            if not (args.ffn and args.tokens):
                error("--hidden needs --ffn and --tokens")
            try:
                tokens = token_list(args.tokens)
            except argparse.ArgumentTypeError as e:
                error(str(e))
            shapes += step_shapes(hidden=args.hidden, ffn=args.ffn, experts=args.experts or 0, tokens=tokens)
    if args.fp8 and not (args.model or args.preset or args.hidden):
        error("--fp8 takes the FP8 step's GEMMs of --model, --preset or --hidden/--ffn/--tokens")
    if not shapes:
        error("no shapes: give --kernel/--m/--n/--k, --benchmark-shapes, --model, --preset or --hidden/--ffn/--tokens")
    out = []
    for s in shapes:
        if args.only and args.only not in s["kernel"]:
            continue
        why = shape_error(s)
        if why:
            error(why)
        dtype = args.dtype or get_kernel(s["kernel"]).default_dtype
        try:
            out.append(Problem(s["kernel"], ShapeKey(dtype, s["m"], s["n"], s["k"], s.get("experts") or 0)))
        except ValueError as e:
            error(f"argument --dtype: {e}")
    if not out:
        error(f"--only {args.only!r} leaves no shape")
    return out


def cmd_sweep(args, runner_factory=None, timer=None, arch=None, device="", dsl_version="", parser=None) -> int:
    from .storage import DEFAULT_SIMULATED_STORAGE, StorageError, open_store
    from .worker import SweepSpec, Worker

    problems = problems_from_args(args, parser)
    if args.worker:  # N workers' "new study" lines say nothing the launcher's table does not
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    spaces = list({tuple(p.space_kw.items()): p.space_kw for p in problems}.values())
    try:  # each override must hold in every search space of the problems (the FP8 kernels have their own)
        tries = [[space.parse_overrides(t, **kw) for kw in spaces][0] for t in args.tries]
    except ValueError as exc:
        _usage_error(parser, f"argument --try: {exc}")
    if args.candidates and spaces != [{"block_scaled": True}]:
        _usage_error(parser, "--candidates is the FP8 kernels' fixed list: every problem must be an fp8_* kernel")
    workers = args.workers or (len(args.gpus) if args.gpus else 1)
    simulated = args.simulate and runner_factory is None
    if simulated:
        from .simulate import SimulatedRunner, make_simulated_timer

        runner_factory, timer, arch, device = SimulatedRunner, make_simulated_timer(args.simulate_delay), "sm90", \
            "simulated"
    if workers == 1 and args.gpus and not args.worker:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpus[0]  # before CUDA starts: this process is the worker
    if runner_factory is None and not _cuda_available():  # before any storage file is created
        print("autotune sweep needs a CUDA GPU (the search, YAML and lookup run anywhere; timing does not).",
              file=sys.stderr)
        return 2
    storage = args.storage
    if storage is None:
        if simulated:  # never the real sweeps' storage; in memory when one process can hold it
            storage = DEFAULT_SIMULATED_STORAGE if (workers > 1 or args.worker) else None
        elif runner_factory is None or workers > 1:
            storage = DEFAULT_STORAGE
    try:
        store = open_store(storage, heartbeat_s=args.heartbeat, grace_s=args.grace)
    except StorageError as e:  # its message names --storage
        _usage_error(parser, str(e))
    if workers > 1 and not args.worker:
        if store.kind == "memory":
            raise SystemExit("--workers > 1 needs a storage the workers share (--storage FILE.journal or a URL)")
        return _launch_workers(args, workers, problems, store, arch=arch, simulated=simulated)
    if runner_factory is None:
        import cutlass
        import torch

        from cute_kernels.gemm_ops import device_arch

        from .problem import make_runner
        from .timing import make_timer

        runner_factory = make_runner
        timer = make_timer(args.timing)
        arch = device_arch(torch.device("cuda"))
        device = torch.cuda.get_device_name()
        dsl_version = getattr(cutlass, "__version__", "?")
    spec = SweepSpec(arch=arch, trials=args.trials, grid=args.grid, seed=args.seed, tries=tries, simulated=simulated,
                     write=not args.no_write, root=args.root, device=device, dsl_version=dsl_version,
                     compile_workers=args.compile_ahead, progress=not args.quiet and not args.worker,
                     constant_liar=args.workers_total > 1 or workers > 1, candidates=args.candidates)
    worker = Worker(store, spec, runner_factory, timer, index=max(0, args.worker - 1))
    tag = f"worker {args.worker} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}): " \
        if args.worker else ""

    def on_result(res, finished_here):
        if finished_here:
            print(tag + tuner.format_results([res]).splitlines()[-1], flush=True)

    results = worker.run(problems, on_result=on_result)
    if args.worker:
        print(f"{tag}timed {worker.told} trials", flush=True)
        return 0
    _report(args, [results.get(p) for p in problems], problems, store, simulated)
    return 0


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _report(args, results, problems, store, simulated: bool):
    from . import tuner

    done = [r for r in results if r is not None]
    table = tuner.format_results(done)
    missing = [p.label() for p, r in zip(problems, results) if r is None]
    if missing:
        table += "\n\nnot finished: " + "; ".join(missing)
    print(table)
    if done and all(r.problem.spec.block_scaled for r in done):
        table += "\n\n" + tuner.format_tflops(done)
        print("\n" + tuner.format_tflops(done))
    if simulated:
        n = sum(r.trials for r in done)
        print(f"simulated sweep (cost-model times, not hardware): {n} trials in studies named 'simulated/...' "
              f"in {store.describe()}; tuned_configs/ not written", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


def _launch_workers(args, workers: int, problems, store, *, arch, simulated: bool) -> int:
    """`workers` processes of this same command, worker i pinned to GPU gpus[i % len(gpus)]
    (CUDA_VISIBLE_DEVICES), all on `store`; then the table of what they recorded."""
    from .worker import SweepSpec, load_result

    gpus = args.gpus or _visible_gpus() or ([str(i) for i in range(workers)] if simulated else None)
    if not gpus:
        print("autotune sweep --workers needs CUDA GPUs (none visible; --gpus names them).", file=sys.stderr)
        return 2
    argv = _strip_worker_args(args.argv)
    procs = []
    for i in range(workers):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpus[i % len(gpus)])
        cmd = [sys.executable, "-m", "autotune", "sweep", *argv, "--storage", store.spec,
               "--worker", str(i + 1), "--workers-total", str(workers)]
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    spec = SweepSpec(arch=arch or _worker_arch(), trials=args.trials, grid=args.grid, simulated=simulated)
    _report(args, [load_result(store, p, spec) for p in problems], problems, store, simulated)
    if any(codes):
        print(f"autotune workers exited with codes {codes}", file=sys.stderr)
        return 1
    return 0


def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in (x.strip() for x in env.split(",")) if g and not g.startswith("-")]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def _worker_arch() -> str:
    import torch

    from cute_kernels.gemm_ops import device_arch

    return device_arch(torch.device("cuda"))


def _strip_worker_args(argv: list[str]) -> list[str]:
    """The sweep's own arguments, less those the launcher sets for each worker."""
    drop = {"--workers", "--gpus", "--storage", "--worker", "--workers-total", "--out"}
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "sweep":
            continue
        name = a.split("=", 1)[0]
        if name in drop:
            skip = "=" not in a
            continue
        out.append(a)
    return out


def cmd_show(args) -> int:
    """The tuned entries under --root; a file or entry the run-time lookup skips is reported with
    the lookup's own warning (and exit code 1)."""
    from cute_kernels.config_lookup import ENTRY_SKIPPED, FILE_SKIPPED
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
                entries = read_file(path, allow_empty=False)  # as the lookup reads it
            except TunedConfigError as e:
                print(f"WARNING {FILE_SKIPPED}: {e}")
                bad += 1
                continue
            for key, rec in entries.items():
                try:
                    parse_entry(path, key, rec, kernel=kernel)
                except Exception as e:  # TunedConfigError, or whatever parse_entry missed: the lookup skips both
                    why = e if isinstance(e, TunedConfigError) else f"{path}: entry {key!r}: {type(e).__name__}: {e}"
                    print(f"WARNING {ENTRY_SKIPPED}: {why}")
                    bad += 1
                    continue
                rows.append([arch, kernel, key, _num(rec.get("time_ms"), "{:.4f}"), _num(rec.get("speedup"), "{:.3f}x"),
                             str(rec.get("timing", "?")), str(rec.get("device", "?")), str(rec.get("date", "?"))])
    if not rows:
        print(f"no usable tuned configs under {root}" if bad else f"no tuned configs under {root}")
        return 1 if bad else 0
    header = ["arch", "kernel", "shape", "time ms", "vs default", "timing", "device", "date"]
    right = {3, 4}  # numbers right-aligned
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    print(line(header))
    print(line(["-" * w for w in widths]))
    for r in rows:
        print(line(r))
    return 1 if bad else 0


def _num(v, fmt: str) -> str:
    try:
        return fmt.format(float(v))
    except (TypeError, ValueError):
        return "?"


def cmd_plot(args) -> int:
    from .plot import plot_study
    from .storage import StorageError

    try:
        path = plot_study(args.study, args.storage, args.out)
    except StorageError as e:
        print(f"autotune plot: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m autotune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sweep", help="tune kernels for shapes and write tuned_configs/")
    s.add_argument("--kernel", choices=KERNELS)
    s.add_argument("--m", type=positive_int)
    s.add_argument("--n", type=positive_int, help="a multiple of 8 (weight_grad: M too)")
    s.add_argument("--k", type=positive_int, help="a multiple of 8 (not for weight_grad, where K is tokens)")
    s.add_argument("--experts", type=nonnegative_int, default=0)
    s.add_argument("--benchmark-shapes", action="store_true", help="the shapes of benchmarks/bench_gemm.py")
    s.add_argument("--preset", help=f"model preset(s), comma-separated: {', '.join(sorted(MODEL_PRESETS))}")
    s.add_argument("--hidden", type=positive_int)
    s.add_argument("--ffn", type=positive_int)
    s.add_argument("--model", type=model_spec, metavar="HIDDEN,FFN,EXPERTS",
                   help="every GEMM of the model's MLP step (FC1, FC2, dgrad, both weight gradients; grouped when "
                        f"EXPERTS > 1) at the M buckets {MODEL_TOKEN_BUCKETS[0]}..{MODEL_TOKEN_BUCKETS[-1]} "
                        "tokens (powers of two and midpoints), or at --tokens")
    s.add_argument("--tokens", help="comma-separated token counts (M) of --hidden, or of --model instead of its buckets")
    s.add_argument("--only", help="only kernels whose name contains this")
    s.add_argument("--fp8", action="store_true",
                   help="with --model, --preset or --hidden: the FP8 step's GEMMs (fp8_fc1_srelu, fp8_fc2, "
                        "fp8_dgrad_dact) instead of the bf16 ones")
    s.add_argument("--candidates", type=nonnegative_int, default=0, metavar="N",
                   help="FP8 kernels: time the default and the first N of the fixed candidate list "
                        "(cute_kernels/sm90/space_fp8.CANDIDATES) instead of sampling; --trials defaults to 1 + N")
    s.add_argument("--dtype", default=None,
                   choices=["bfloat16", "float16", "float8_e4m3fn", "float8_e5m2", "float8_e5m2+float8_e4m3fn"],
                   help="operand precision (default: bfloat16, for the fp8_* kernels float8_e4m3fn; "
                        "'A+B' when B's FP8 format differs)")
    s.add_argument("--trials", type=positive_int, default=None,
                   help="trials per shape, in total over all workers and reruns (default 24)")
    s.add_argument("--grid", action="store_true", help="time every config of the space")
    s.add_argument("--try", dest="tries", action="append", default=[], metavar="PARAMS",
                   help="also try this override of the default first, e.g. 'tile_n=256,cluster=2x1' (repeatable)")
    s.add_argument("--storage", type=storage_spec, default=None,
                   help=f"where the studies live (resumable): a journal file path (default {DEFAULT_STORAGE}; "
                        "several processes on one host), postgresql://user@host:port/db (several hosts) or "
                        "sqlite:///FILE (one process); see docs/distributed-sweep.md")
    s.add_argument("--workers", type=positive_int, default=None,
                   help="worker processes sharing --storage, each pinned to one GPU (default: one per --gpus, else 1)")
    s.add_argument("--gpus", type=gpu_list, default=None,
                   help="comma-separated GPUs the workers take round-robin (default: CUDA_VISIBLE_DEVICES, else all)")
    s.add_argument("--heartbeat", type=positive_float, default=DEFAULT_HEARTBEAT_S,
                   help="seconds between a worker's heartbeats for the trials it holds")
    s.add_argument("--grace", type=positive_float, default=DEFAULT_GRACE_S,
                   help="seconds without a heartbeat after which a trial's worker counts as dead (trial failed, "
                        "retried once)")
    s.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    s.add_argument("--workers-total", type=int, default=1, help=argparse.SUPPRESS)
    s.add_argument("--timing", choices=["burst", "sustained"], default="burst",
                   help="burst: short L2-flushed batches (boost clocks); sustained: 0.4 s back to back "
                        "at the power limit, as training runs (slower sweeps; the tuned entry records it)")
    s.add_argument("--seed", type=seed_int, default=0, help=f"sampler seed, 0 to {SEED_MAX}")
    s.add_argument("--compile-ahead", type=positive_int, default=1, help="configs compiled ahead on threads while timing")
    s.add_argument("--no-write", action="store_true", help="do not write tuned_configs/")
    s.add_argument("--root", help="tuned_configs folder to write (default: the package's)")
    s.add_argument("--out", help="also write the final table here")
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--simulate", action="store_true",
                   help="no GPU: synthetic times from a cost model; studies named 'simulated/...' in memory (or "
                        f"{DEFAULT_SIMULATED_STORAGE} with --workers), tuned_configs/ never written")
    s.add_argument("--simulate-delay", type=float, default=0.0, metavar="S",
                   help="with --simulate: each timed trial sleeps S seconds (to test workers and faults)")
    sh = sub.add_parser("show", help="list tuned configs")
    sh.add_argument("--root")
    from .compile_only import add_parser as add_compile_only

    add_compile_only(sub)
    pl = sub.add_parser("plot", help="PNG of a study: time per trial, best so far, parameter importances")
    pl.add_argument("--study", required=True)
    pl.add_argument("--storage", type=storage_spec, default=DEFAULT_STORAGE, help=f"journal path or URL (default {DEFAULT_STORAGE})")
    pl.add_argument("--out", required=True, help="the image file: .png (or another format matplotlib writes: .pdf, "
                                                 ".svg, ...)")
    for sp in (s, sh, pl):  # main() reports a bad argument with the subcommand's own usage line
        sp.set_defaults(subparser=sp)
    return p


def main(argv=None, **inject) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.cmd == "sweep":
        from cute_kernels.sm90.space_fp8 import CANDIDATES

        if args.candidates > len(CANDIDATES):
            args.subparser.error(f"argument --candidates: the list holds {len(CANDIDATES)}, got {args.candidates}")
        if args.trials is None:
            args.trials = 1 + args.candidates if args.candidates else tuner.DEFAULT_TRIALS
        if args.simulate_delay < 0:
            args.subparser.error(f"argument --simulate-delay: must be 0 or more, got {args.simulate_delay}")
        if not args.grace > args.heartbeat:
            args.subparser.error(f"--grace ({args.grace}) must be longer than --heartbeat ({args.heartbeat})")
        _check_out(args.subparser, args.out)
        return cmd_sweep(args, parser=args.subparser, **inject)
    if args.cmd == "show":
        return cmd_show(args)
    if args.cmd == "compile-only":
        from .compile_only import run

        return run(args)
    from .plot import image_format_error

    _check_out(args.subparser, args.out, image_format_error)
    return cmd_plot(args)


def _check_out(parser, path: str | None, *checks) -> None:
    """--out must be writable (and pass `checks`, each giving a reason or None) before any work is done;
    else exit 2 with argparse's one-line error."""
    if path is None:
        return
    for check in (out_path_error, *checks):
        why = check(path)
        if why:
            parser.error(f"argument --out: {why}")


if __name__ == "__main__":
    sys.exit(main())
