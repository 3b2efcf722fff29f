"""Host time of one srelu_mlp forward+backward step on the cute path.

    python -m benchmarks.bench_host_overhead [--no-ab | --flat-ab] [--profile N] [--profile-ops N]

A long sleep kernel is queued first, so the host never waits for the GPU while it
enqueues 10 steps: the wall time per step is the host's own cost (Python, dispatch,
launches); the median of 6 such windows, and (unless --no-ab) as many with the DSL's own
kernel callables (CUTE_KERNELS_DIRECT_LAUNCH=0) alternated with them in the same process (`--flat-ab`:
instead the kernels taking the tensors as stored, CUTE_KERNELS_FLAT_ARGS=1, alternated with the 3-D
views).  If it exceeds the step's kernel time, the step is host-bound.  Also reports
whether the GPU was still busy when the host finished (False means something made the
host wait, e.g. a copy from pageable memory).  Then the E=8 step run eagerly against
the same step captured once in a CUDA graph and replayed (no host work per step):
the difference is what host overhead costs that step.  `--profile N` instead prints
cProfile's N most expensive functions (own time) over 20 enqueued E=8 steps.
`--profile-ops N` instead runs 5 E=8 steps (list m_splits, then m_splits a CUDA tensor) under
torch.profiler (benchmarks.op_profile: CPU activities, CUDA launches and kernels, Python
stacks) and prints per step the torch ops dispatched, the CUDA launch calls, the kernels that
ran, the N entries (ops, Python functions, CUDA API calls) with the most own host time and
which of our functions issues each torch op.
"""
import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time

import torch

from autotune.timing import step_ms
from benchmarks.bench_mlp import mlp_inputs
from cute_kernels.mlp import srelu_mlp


CASES = [(16384, 2688, 1856, 8, False), (16384, 2688, 1856, 8, True), (8192, 4096, 16384, 0, False)]


def main(ab: bool = True, flat_ab: bool = False) -> dict:
    """Host time per step (median of 5 windows of 10 enqueued steps) of each case; with `ab` also
    with the DSL's own kernel callables (CUTE_KERNELS_DIRECT_LAUNCH=0), with `flat_ab` instead with
    the flat-argument kernels (CUTE_KERNELS_FLAT_ARGS=1, against 0), the two settings measured
    alternately in this process (fresh launch plans each time).  Returns {(e, as_tensor): ms} of the
    first setting (the direct launch; `flat_ab`: the 3-D views)."""
    from cute_kernels import launch_plan
    from cute_kernels.compile import DIRECT_LAUNCH_ENV
    from cute_kernels.gemm_ops import FLAT_ARGS_ENV

    env, base, other, what = DIRECT_LAUNCH_ENV, "1", "0", "DSL callables"
    if flat_ab:
        env, base, other, what = FLAT_ARGS_ENV, "0", "1", "flat tensor arguments"
    settings = [base, other, base, other] if ab or flat_ab else [base]
    host = {}
    for (m, h, f, e, as_tensor) in CASES:
        x, w1, w2, dy, splits = mlp_inputs(m, h, f, e)
        if as_tensor:
            splits = torch.tensor(splits, device="cuda")
        def step():
            y = srelu_mlp(x, w1, w2, m_splits=splits, backend="cute")
            y.backward(dy)
            x.grad = w1.grad = w2.grad = None
        per_setting = {}
        before = os.environ.get(env)
        for setting in settings:
            os.environ[env] = setting
            launch_plan.clear()
            for _ in range(3): step()
            per_setting.setdefault(setting, []).extend(enqueue_ms(step, windows=3))
        if before is None:
            os.environ.pop(env, None)
        else:
            os.environ[env] = before
        launch_plan.clear()
        torch.cuda.synchronize()
        torch.cuda._sleep(3_000_000_000)  # ~1.5 s of GPU work queued ahead
        for _ in range(10): step()
        busy = not torch.cuda.current_stream().query()
        torch.cuda.synchronize()
        label = f"E={e}{' (m_splits a CUDA tensor)' if as_tensor else ''}"
        host[(e, as_tensor)] = statistics.median(per_setting[base])
        line = f"{label}: host time per step {host[(e, as_tensor)]:.3f} ms (median of {len(per_setting[base])} windows"
        if other in per_setting:
            line += f"; {what}, {env}={other}: {statistics.median(per_setting[other]):.3f} ms"
        print(line + f"); GPU still busy after enqueue: {busy}", flush=True)
    return host


def graph_vs_eager(m=16384, h=2688, f=1856, e=8, iters=20):
    x, w1, w2, dy, splits = mlp_inputs(m, h, f, e)

    def step():
        srelu_mlp(x, w1, w2, m_splits=splits, backend="cute").backward(dy)

    def eager():
        step()
        x.grad = w1.grad = w2.grad = None

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            eager()
    torch.cuda.current_stream().wait_stream(side)
    eager_ms = step_ms(eager, iters=iters)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    graph_ms = step_ms(graph.replay, iters=iters)
    print(f"E={e} step, eager: {eager_ms:.3f} ms; the same step replayed from a CUDA graph: {graph_ms:.3f} ms", flush=True)
    return eager_ms, graph_ms


def verdicts(host: dict, eager_ms: float, graph_ms: float) -> list[str]:
    """Issue 27's targets from one run: the E=8 eager step within 1.1x of its graph replay, host time
    per step <= 0.5x of the step's GPU time (the replay's)."""
    lines = [f"- target E=8 eager <= 1.1x graph replay: {eager_ms / graph_ms:.2f}x "
             f"({'met' if eager_ms <= 1.1 * graph_ms else 'not met'})"]
    for (e, as_tensor), ms in host.items():
        if e == 8:
            lines.append(f"- target host <= 0.5x GPU, E=8 {'tensor' if as_tensor else 'list'} splits: "
                         f"{ms / graph_ms:.2f}x ({'met' if ms <= 0.5 * graph_ms else 'not met'})")
    return lines


def profile(top: int, m=16384, h=2688, f=1856, e=8):
    x, w1, w2, dy, splits = mlp_inputs(m, h, f, e)

    def steps(n):
        for _ in range(n):
            srelu_mlp(x, w1, w2, m_splits=splits, backend="cute").backward(dy)
            x.grad = w1.grad = w2.grad = None

    steps(3)
    torch.cuda.synchronize()
    torch.cuda._sleep(3_000_000_000)
    prof = cProfile.Profile()
    prof.enable()
    steps(20)
    prof.disable()
    torch.cuda.synchronize()
    stats = pstats.Stats(prof).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


def enqueue_ms(step, *, steps: int = 10, windows: int = 5) -> list[float]:
    """Host time per step (ms) of `windows` windows of `steps` enqueued steps, each behind a
    long sleep kernel (as main() measures one window), unprofiled."""
    times = []
    for _ in range(windows):
        torch.cuda.synchronize()
        torch.cuda._sleep(1_000_000_000)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        times.append(1e3 * (time.perf_counter() - t0) / steps)
    torch.cuda.synchronize()
    return times


def profile_ops(top: int, m=16384, h=2688, f=1856, e=8, steps=5):
    """benchmarks.op_profile's per-step summary of the E=8 step, list and CUDA-tensor m_splits
    (a sleep kernel queued first, as in main(): the host never waits for the GPU), after the
    unprofiled host time per step of 5 windows of 10 steps."""
    from benchmarks.op_profile import format_op_summary, profile_step_ops

    x, w1, w2, dy, splits = mlp_inputs(m, h, f, e)
    for label, m_splits in (("list", splits), ("a CUDA tensor", torch.tensor(splits, device="cuda"))):
        def step():
            srelu_mlp(x, w1, w2, m_splits=m_splits, backend="cute").backward(dy)
            x.grad = w1.grad = w2.grad = None

        for _ in range(3):
            step()
        windows = enqueue_ms(step)
        print(f"E={e} step, m_splits {label}: unprofiled host time per step, 5 windows of 10 steps: "
              + " / ".join(f"{ms:.3f}" for ms in windows) + " ms", flush=True)
        summary = profile_step_ops(step, steps=steps, warmup=1, cuda=True,
                                   before=lambda: torch.cuda._sleep(3_000_000_000))
        print(f"E={e} step ({m} tokens, {h} -> {f}), m_splits {label}:\n{format_op_summary(summary, top)}\n",
              flush=True)


def cli(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--profile", type=int, default=0, help="print cProfile's top N functions instead")
    ap.add_argument("--profile-ops", type=int, default=0, metavar="N",
                    help="print the E=8 step's torch ops, CUDA launches and top N host-time entries per step "
                         "(torch.profiler) instead")
    ap.add_argument("--no-ab", action="store_true",
                    help="measure only the default launch path (no CUTE_KERNELS_DIRECT_LAUNCH=0 windows)")
    ap.add_argument("--flat-ab", action="store_true",
                    help="alternate CUTE_KERNELS_FLAT_ARGS=0 and =1 windows instead (the verdicts judge the 0 ones)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_host_overhead needs a CUDA GPU", file=sys.stderr)
        return 2
    if args.profile_ops:
        profile_ops(args.profile_ops)
    elif args.profile:
        profile(args.profile)
    else:
        host = main(ab=not args.no_ab, flat_ab=args.flat_ab)
        eager_ms, graph_ms = graph_vs_eager()
        print("\n".join(verdicts(host, eager_ms, graph_ms)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
