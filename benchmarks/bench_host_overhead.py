"""Host time of one srelu_mlp forward+backward step on the cute path.

    python -m benchmarks.bench_host_overhead [--profile N] [--profile-ops N]

A long sleep kernel is queued first, so the host never waits for the GPU while it
enqueues 10 steps: the wall time per step is the host's own cost (Python, dispatch,
launches).  If it exceeds the step's kernel time, the step is host-bound.  Also reports
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
import pstats
import sys
import time

import torch

from autotune.timing import step_ms
from benchmarks.bench_mlp import mlp_inputs
from cute_kernels.mlp import srelu_mlp


def main():
    for (m, h, f, e, as_tensor) in [(16384, 2688, 1856, 8, False), (16384, 2688, 1856, 8, True),
                                    (8192, 4096, 16384, 0, False)]:
        x, w1, w2, dy, splits = mlp_inputs(m, h, f, e)
        if as_tensor:
            splits = torch.tensor(splits, device="cuda")
        def step():
            y = srelu_mlp(x, w1, w2, m_splits=splits, backend="cute")
            y.backward(dy)
            x.grad = w1.grad = w2.grad = None
        for _ in range(3): step()
        torch.cuda.synchronize()
        torch.cuda._sleep(3_000_000_000)  # ~1.5 s of GPU work queued ahead
        t0 = time.perf_counter()
        for _ in range(10): step()
        t1 = time.perf_counter()
        busy = not torch.cuda.current_stream().query()
        torch.cuda.synchronize()
        print(f"E={e}{' (m_splits a CUDA tensor)' if as_tensor else ''}: host time per step {1e3 * (t1 - t0) / 10:.3f} ms; GPU still busy after enqueue: {busy}", flush=True)


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
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_host_overhead needs a CUDA GPU", file=sys.stderr)
        return 2
    if args.profile_ops:
        profile_ops(args.profile_ops)
    elif args.profile:
        profile(args.profile)
    else:
        main()
        graph_vs_eager()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
