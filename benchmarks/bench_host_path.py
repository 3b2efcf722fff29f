"""Host (Python) time of the GEMM launch path, per GEMM call and per srelu_mlp step, on CPU.

    python -m benchmarks.bench_host_path [--reps N] [--out FILE] [--small] [--profile N] [--profile-ops N] [--fp8]

No GPU is needed: `stubbed_kernels()` replaces what only a GPU has (the compile and the
compiled kernel's call, the device's arch and cluster occupancy, the CUDA stream and
capture queries, the "is a CUDA tensor" checks) by stand-ins that do nothing, and runs the
rest of the launch path as it is: input checks, config lookup, kernel key, self-check gate
(every variant counted as verified: its run needs a GPU), splits metadata, output allocation, views and the launch record.  The tensors are CPU
tensors of the issue's shapes (dense 8192 x 4096 -> 16384; grouped E=8, 16384 tokens,
2688 -> 1856), allocated with torch.empty and never written, so what is timed is the host's
work per call.  What the stubs leave out on a GPU: the kernel launch itself (TVM-FFI, a few
microseconds), the CUDA caching allocator instead of the CPU one, and pinned uploads of new
list splits (cached per splits after the first call).  With tensor splits the CPU stand-in
also reads the splits in `check_mlp_inputs` (a CPU tensor is read there; a CUDA one is not).

Times are the calling thread's CPU time per call, the least over batches of calls (after
warm-up: the first call of each shape builds and caches), in microseconds; they vary run to
run on a shared CPU, so compare runs of one machine only.  `bench_host_overhead` measures the same on the GPU.
CUTE_KERNELS_FLAT_ARGS=1 times the flat-argument kernels' launch path (no kernel views).
`--small` divides M, H and F by 8 (E kept): the same launch path, with CPU allocations of ~1 MiB
instead of ~100 MiB, whose cost (page faults, returning memory to the OS) varies with the load of
a shared machine and otherwise dominates a step's figure.

`--fp8` adds the grouped FP8 step (`--fp8-only`: times it alone), `srelu_mlp(..., fp8=Fp8Recipe(wgrad="bf16"), backend="cute")`
(issue 26's E=8 step), with its FP8 GEMMs, its quantization kernels and its weight-gradient kernel
stubbed the same way (`--profile-ops N --fp8`: its torch ops).  Its H and F rounded down to
multiples of 16 (FP8 rows) under `--small`.  One part of that step is torch math that is
asynchronous on a GPU but computed on CPU: x's dequantization from its FP8 copy for the bf16 weight
gradient (6 torch ops; ~9 ms at the small shape, CPU FP8 conversion is slow).  The timed FP8 row
replaces it by an empty bf16 tensor of its shape (`_dequantize_allocated`, one torch op);
`--profile-ops` counts the step with the real one.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import platform
import sys
import time
from types import SimpleNamespace
from unittest import mock

import torch

DENSE = {"name": "dense 8192x4096->16384", "m": 8192, "h": 4096, "f": 16384, "e": 0}
GROUPED = {"name": "grouped E=8 16384x2688->1856", "m": 16384, "h": 2688, "f": 1856, "e": 8}


def small(shape: dict, by: int = 8) -> dict:
    """`shape` with M, H and F divided by `by` (E kept), named for it."""
    m, h, f, e = (shape[k] for k in "mhfe")
    m, h, f = m // by, h // by, f // by
    name = f"grouped E={e} {m}x{h}->{f}" if e else f"dense {m}x{h}->{f}"
    return {"name": name, "m": m, "h": h, "f": f, "e": e}


@contextlib.contextmanager
def stubbed_kernels():
    """The launch path on CPU tensors with every GPU-only step stubbed (see the module
    docstring).  Yields the list of (kernel key, number of arguments) of each stubbed
    kernel call, in order."""
    from cute_kernels import checks, compile as ck_compile, gemm_ops, mlp, selfcheck, torch_ops
    from cute_kernels.config_lookup import clear_cache

    launches = []

    def compiled(key):
        def kernel(*args):
            launches.append((key, len(args)))
        return kernel

    fake_stream = SimpleNamespace(cuda_stream=0)
    with contextlib.ExitStack() as stack:
        patch = stack.enter_context
        patch(mock.patch.object(gemm_ops, "device_arch", lambda device: "sm90"))
        patch(mock.patch.object(gemm_ops, "_max_clusters_arg", lambda index, size: (132 // size, 132 // size)))
        patch(mock.patch.object(gemm_ops, "use_tvm_ffi", lambda: True))
        patch(mock.patch.object(gemm_ops, "get_compiled", compiled))
        patch(mock.patch.object(ck_compile, "get_compiled", compiled))
        patch(mock.patch.object(checks, "check_cuda", lambda name, t: None))
        # every variant counts as hardware-verified (a variant without evidence, e.g. a flat-argument
        # kernel of CUTE_KERNELS_FLAT_ARGS=1, would be self-checked on a GPU before its first launch)
        patch(mock.patch.object(selfcheck, "is_verified", lambda arch, variant, table: True))
        patch(mock.patch.object(mlp, "uses_cute_path", lambda x, backend: True))
        patch(mock.patch.object(torch_ops, "_on_kernels", lambda t: True))
        patch(mock.patch.object(torch.cuda, "is_current_stream_capturing", lambda: False))
        patch(mock.patch.object(torch.cuda, "current_stream", lambda device=None: fake_stream))
        patch(mock.patch.object(gemm_ops, "_current_stream_key", lambda device: (0, 0, 1)))
        _stub_fp8(patch)
        clear_cache()  # cached launch state built outside the stubs (and, on exit, inside them)
        try:
            yield launches
        finally:
            clear_cache()


def _stub_fp8(patch):
    """The FP8 step's GPU-only parts (the stubbed_kernels of fp8_step_call): its kernel path chosen on
    CPU tensors, the FP8 device and TVM-FFI checks passed, and the quantization kernels (activation
    and one-pass weight copies, the FP8 -> bf16 dequantization) compiled as stand-ins that write nothing (the FP8 GEMMs launch
    through gemm_ops, stubbed above).  The quantize functions' outputs are still allocated by the
    real code (torch.empty), so what is counted and timed is their host work."""
    from cute_kernels.fp8 import mlp as fp8_mlp, ops as fp8_ops, quantize_ops

    def quantize_kernel(fmt, pow2, weight=False, **kw):
        return lambda *args: None

    patch(mock.patch.object(fp8_mlp, "_impl", lambda x, backend: "kernel"))
    patch(mock.patch.object(fp8_ops, "check_fp8_device", lambda name, t: None))
    patch(mock.patch.object(fp8_ops, "use_tvm_ffi", lambda: True))
    patch(mock.patch.object(quantize_ops, "use_tvm_ffi", lambda: True))
    patch(mock.patch.object(quantize_ops, "get_compiled", quantize_kernel))
    patch(mock.patch.object(quantize_ops, "_cached", lambda key, compile_fn: lambda *args: None))  # dequantize
    patch(mock.patch.object(quantize_ops, "_on_gpu", lambda t: True))


def step_inputs(shape: dict, *, tensor_splits: bool = False):
    """x, w1, w2 (requiring grad), dy and splits of one MLP step on CPU (bf16, never written)."""
    m, h, f, e = shape["m"], shape["h"], shape["f"], shape["e"]
    x = torch.empty(m, h, dtype=torch.bfloat16).requires_grad_()
    w1 = torch.empty(*((e, f, h) if e else (f, h)), dtype=torch.bfloat16).requires_grad_()
    w2 = torch.empty(*((e, h, f) if e else (h, f)), dtype=torch.bfloat16).requires_grad_()
    dy = torch.empty(m, h, dtype=torch.bfloat16)
    splits = (list(shape["splits"]) if "splits" in shape else [m // e] * e) if e else None
    if splits is not None and tensor_splits:
        splits = torch.tensor(splits, dtype=torch.int64)
    return x, w1, w2, dy, splits


def _keep_tensor_splits():
    """check_mlp_inputs hands a CUDA splits tensor to the kernels as it is; a CPU one it reads
    to a list.  Stand-in for the CUDA case: the real check, then the tensor itself."""
    from cute_kernels import mlp

    real = mlp.check_mlp_inputs

    def check(x, w1, w2, *, m_splits=None, **kw):
        out = real(x, w1, w2, m_splits=m_splits, **kw)
        return m_splits if isinstance(m_splits, torch.Tensor) else out

    return mock.patch.object(mlp, "check_mlp_inputs", check)


def gemm_calls(shape: dict) -> dict:
    """name -> a zero-argument call of one GEMM entry point, with the step's operands."""
    from cute_kernels import gemm_ops

    x, w1, w2, dy, splits = step_inputs(shape)
    m, f = shape["m"], shape["f"]
    pre = torch.empty(m, f, dtype=torch.bfloat16)
    post = torch.empty(m, f, dtype=torch.bfloat16)
    x, w1, w2 = x.detach(), w1.detach(), w2.detach()
    return {
        "fc1_srelu": lambda: gemm_ops.fc1_srelu(x, w1, m_splits=splits),
        "fc2": lambda: gemm_ops.fc2(post, w2, m_splits=splits),
        "fc2_dgrad_dsrelu": lambda: gemm_ops.fc2_dgrad_dsrelu(dy, w2, pre, m_splits=splits, store_postact=True),
        "fc1 dgrad (fc2 on w1^T)": lambda: gemm_ops.fc2(pre, w1.transpose(-2, -1), m_splits=splits),
        "weight_grad": lambda: gemm_ops.weight_grad(dy, post, m_splits=splits),
    }


def step_call(shape: dict, *, tensor_splits: bool = False):
    """One srelu_mlp forward+backward on the cute path (stubbed kernels)."""
    from cute_kernels.mlp import srelu_mlp

    x, w1, w2, dy, splits = step_inputs(shape, tensor_splits=tensor_splits)

    def step():
        srelu_mlp(x, w1, w2, m_splits=splits, backend="cute").backward(dy)
        x.grad = w1.grad = w2.grad = None

    return step


def fp8_step_call(shape: dict, recipe=None):
    """One srelu_mlp(fp8=recipe) forward+backward on the FP8 kernel path (stubbed FP8 GEMMs, quantization
    kernels and weight-gradient kernel); default recipe: Fp8Recipe(wgrad="bf16"), the step the H200
    profiles of issue 26 measure."""
    from cute_kernels.fp8 import Fp8Recipe
    from cute_kernels.mlp import srelu_mlp

    recipe = Fp8Recipe(wgrad="bf16") if recipe is None else recipe
    x, w1, w2, dy, splits = step_inputs(shape)

    def step():
        srelu_mlp(x, w1, w2, m_splits=splits, fp8=recipe, backend="cute").backward(dy)
        x.grad = w1.grad = w2.grad = None

    return step


def time_us(fn, *, reps: int, batches: int = 7, warmup: int = 3) -> float:
    """The least, over `batches`, of the mean CPU time of this thread per call of `reps`
    calls, in microseconds (time.thread_time: what other processes take of a shared CPU
    does not count; the least batch is the one they disturbed least)."""
    for _ in range(warmup):
        fn()
    means = []
    for _ in range(batches):
        t0 = time.thread_time()
        for _ in range(reps):
            fn()
        means.append((time.thread_time() - t0) / reps * 1e6)
    return min(means)


def fp8_shape(shape: dict) -> dict:
    """`shape` with H and F rounded down to multiples of 16 (what the FP8 step takes)."""
    h, f = shape["h"] // 16 * 16, shape["f"] // 16 * 16
    if (h, f) == (shape["h"], shape["f"]):
        return shape
    return {**shape, "h": h, "f": f, "name": shape["name"].rsplit(" ", 1)[0] + f" {shape['m']}x{h}->{f}"}


@contextlib.contextmanager
def _dequantize_allocated():
    """fp8.recipe.dequantize as an empty tensor of its result's shape and dtype (timing only: the
    FP8 step's one piece of torch math, asynchronous on a GPU, is the CPU's to compute here)."""
    from cute_kernels.fp8 import recipe

    def allocated(q, scales, *, block=128, out_dtype=torch.float32):
        return torch.empty(q.shape, dtype=out_dtype, device=q.device)

    with mock.patch.object(recipe, "dequantize", allocated):
        yield


def measure(reps: int, shrink: bool = False, fp8: bool = False, fp8_only: bool = False) -> list[tuple[str, str, float]]:
    """(what, shape, microseconds per call) rows (`shrink`: of the `small` shapes; `fp8`: the grouped
    FP8 step's row too; `fp8_only`: that row alone)."""
    dense, grouped = (small(DENSE), small(GROUPED)) if shrink else (DENSE, GROUPED)
    rows = []
    fp8 = fp8 or fp8_only
    with stubbed_kernels() as launches:
        for shape in () if fp8_only else (dense, grouped):
            for name, fn in gemm_calls(shape).items():
                rows.append((name, shape["name"], time_us(fn, reps=reps)))
                launches.clear()
        for shape, tensor_splits in () if fp8_only else ((dense, False), (grouped, False), (grouped, True)):
            label = shape["name"] + (", tensor splits" if tensor_splits else ", list splits" if shape["e"] else "")
            with _keep_tensor_splits() if tensor_splits else contextlib.nullcontext():
                rows.append(("srelu_mlp step (fwd+bwd, 6 GEMMs)", label,
                             time_us(step_call(shape, tensor_splits=tensor_splits), reps=max(1, reps // 4))))
                launches.clear()
        if fp8:
            shape = fp8_shape(grouped)
            with _dequantize_allocated():
                rows.append(('srelu_mlp(fp8=Fp8Recipe(wgrad="bf16")) step (fwd+bwd, 6 GEMMs, 5 quantizations; '
                             "x's dequantization allocated, not computed)", shape["name"] + ", list splits",
                             time_us(fp8_step_call(shape), reps=max(1, reps // 4))))
            launches.clear()
    return rows


def format_rows(rows) -> str:
    lines = ["| host work | shape | us per call |", "|---|---|---|"]
    lines += [f"| {what} | {shape} | {us:.1f} |" for what, shape, us in rows]
    return "\n".join(lines)


def profile(top: int, reps: int):
    import cProfile
    import pstats

    with stubbed_kernels():
        step = step_call(GROUPED)
        for _ in range(3):
            step()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(reps):
            step()
        prof.disable()
    stats = pstats.Stats(prof).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)


def profile_ops(top: int, steps: int = 5, fp8: bool = False) -> str:
    """benchmarks.op_profile's per-step summary of the E=8 step (list splits; `fp8`: the FP8 step)
    with stubbed kernels."""
    from benchmarks.op_profile import format_op_summary, profile_step_ops

    with stubbed_kernels():
        step = fp8_step_call(fp8_shape(GROUPED)) if fp8 else step_call(GROUPED)
        summary = profile_step_ops(step, steps=steps, cuda=False)
    return format_op_summary(summary, top)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=200, help="calls per timed batch (steps: a quarter of it)")
    ap.add_argument("--out", help="write the markdown table here too")
    ap.add_argument("--small", action="store_true", help="M, H and F divided by 8 (see the module docstring)")
    ap.add_argument("--profile", type=int, default=0, help="print cProfile's top N functions of the E=8 step instead")
    ap.add_argument("--profile-ops", type=int, default=0, metavar="N",
                    help="print the E=8 step's torch ops and top N host-time entries per step (torch.profiler) instead")
    ap.add_argument("--fp8", action="store_true",
                    help='the grouped srelu_mlp(fp8=Fp8Recipe(wgrad="bf16")) step too (--profile-ops: it alone)')
    ap.add_argument("--fp8-only", action="store_true", help="time the grouped FP8 step alone (no bf16 rows)")
    args = ap.parse_args(argv)
    if args.profile_ops:
        print(profile_ops(args.profile_ops, fp8=args.fp8))
        return 0
    if args.profile:
        profile(args.profile, args.reps)
        return 0
    from benchmarks.report import emit

    rows = measure(args.reps, args.small, args.fp8, args.fp8_only)
    head = (f"Host time of the launch path with stubbed kernels (benchmarks.bench_host_path), "
            f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch "
            f"{torch.__version__}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
            f"thread CPU time per call, least of 7 batches of {args.reps} calls ({max(1, args.reps // 4)} steps)")
    emit(head + "\n\n" + format_rows(rows), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
