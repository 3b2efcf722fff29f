"""Host time of one srelu_mlp forward+backward step on the cute path.

    python -m benchmarks.bench_host_overhead [--profile N]

A long sleep kernel is queued first, so the host never waits for the GPU while it
enqueues 10 steps: the wall time per step is the host's own cost (Python, dispatch,
launches).  If it exceeds the step's kernel time, the step is host-bound.  Also reports
whether the GPU was still busy when the host finished (False means something made the
host wait, e.g. a copy from pageable memory).  Then the E=8 step run eagerly against
the same step captured once in a CUDA graph and replayed (no host work per step):
the difference is what host overhead costs that step.  `--profile N` instead prints
cProfile's N most expensive functions (own time) over 20 enqueued E=8 steps.
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


def cli(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--profile", type=int, default=0, help="print cProfile's top N functions instead")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_host_overhead needs a CUDA GPU", file=sys.stderr)
        return 2
    if args.profile:
        profile(args.profile)
    else:
        main()
        graph_vs_eager()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
