"""Where the FP8 MLP step's time goes: torch.profiler over a few steps, host and GPU side.

    python scripts/profile_fp8_step.py [--shape dense|e8|both] [--wgrad bf16|fp8] [--steps N] [--top K]

For each shape (bench_fp8's step shapes: dense 8192 x 4096 -> 16384, grouped E=8 with 16384
tokens 2688 -> 1856) it runs `srelu_mlp(..., fp8=Fp8Recipe(wgrad=...), backend="cute")` fwd+bwd
after warm-up, then profiles `--steps` steps and prints, per step: the wall time, the GPU busy
time (sum of the kernels' and copies' durations), the number of GPU kernels and of aten ops,
and the top ops by host (self CPU) time and by GPU time.  Our bf16 step of the same shape is
profiled the same way beside it.  A step whose wall time is far above its GPU busy time is
host-bound; the host table says by what.  Needs a CUDA GPU with the FP8 kernels (sm_90a).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/ (its step inputs)

SHAPES = {"dense": (8192, 4096, 16384, 0), "e8": (16384, 2688, 1856, 8)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=("dense", "e8", "both"), default="both")
    p.add_argument("--wgrad", choices=("bf16", "fp8"), default="bf16", help="Fp8Recipe.wgrad of the FP8 step")
    p.add_argument("--steps", type=int, default=5, help="profiled steps (after 3 warm-up steps)")
    p.add_argument("--top", type=int, default=25, help="rows of each op table")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be at least 1")
    if args.top < 1:
        p.error("--top must be at least 1")
    return args


def _make_step(shape: str, recipe):
    from benchmarks.bench_fp8 import step_inputs
    from cute_kernels.mlp import srelu_mlp

    x, w1, w2, dy, splits = step_inputs(*SHAPES[shape])

    def step():
        x.grad = w1.grad = w2.grad = None
        srelu_mlp(x, w1, w2, m_splits=splits, fp8=recipe, backend="cute").backward(dy)

    return step


def _on_gpu(ev) -> bool:
    return str(getattr(ev, "device_type", "")).endswith("CUDA")


def gpu_busy_us(events) -> float:
    """Sum of the GPU kernels' and copies' durations (microseconds) among profiler events."""
    return sum(ev.device_time_total for ev in events if _on_gpu(ev) and ev.device_time_total)


def profile(label: str, step, steps: int, top: int) -> None:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t0) * 1e3 / steps
    with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    events = prof.events()
    kernels = [ev for ev in events if _on_gpu(ev)]
    aten = [ev for ev in events if not _on_gpu(ev) and ev.name.startswith("aten::")]
    print(f"\n## {label}: {wall_ms:.3f} ms per step unprofiled; per profiled step: GPU busy "
          f"{gpu_busy_us(events) / steps / 1e3:.3f} ms, {len(kernels) / steps:.0f} GPU kernels/copies, "
          f"{len(aten) / steps:.0f} aten ops (nested ones included)", flush=True)
    print(f"\n### {label}: top by host self time\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=70))
    print(f"\n### {label}: top by GPU time\n")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=top, max_name_column_width=70),
          flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("profile_fp8_step needs a CUDA GPU", file=sys.stderr)
        return 2
    from cute_kernels.fp8 import Fp8Recipe

    for shape in (("dense", "e8") if args.shape == "both" else (args.shape,)):
        profile(f"{shape} bf16 step", _make_step(shape, None), args.steps, args.top)
        profile(f"{shape} fp8 step (wgrad={args.wgrad})", _make_step(shape, Fp8Recipe(wgrad=args.wgrad)),
                args.steps, args.top)
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
