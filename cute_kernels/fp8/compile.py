"""Compiling the FP8 GEMM kernels: key, fake-tensor signature, in-process cache.

Like `cute_kernels.compile` (whose DSL lock and TVM-FFI switch it shares): one compile per
(config, epilogue, operand formats) with M, N, K and the scale tensors' strides symbolic.
Compiling needs no GPU (the arch comes from CUTE_DSL_ARCH, sm_90a).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..compile import dsl_lock, use_tvm_ffi
from ..config import GemmConfig
from .epilogue import Fp8Epilogue

MAINLOOPS = ("serial", "overlap")  # see cute_kernels/sm90/fp8_gemm.py
FP8_DEFAULT_CONFIG = GemmConfig(tile_m=128, tile_n=128, tile_k=128, cluster_m=1, cluster_n=2, epi_n=32, epi_stages=2)


@dataclass(frozen=True)
class Fp8KernelKey:
    cfg: GemmConfig
    epi: Fp8Epilogue
    a_format: str = "e4m3"  # "e4m3" | "e5m2"
    b_format: str = "e4m3"
    arch: str = "sm90"
    # "serial" (wait, then promote each K tile) or "overlap" (the next K tile's WGMMAs are
    # issued into a second scratch accumulator before the promotion); see sm90/fp8_gemm.py
    mainloop: str = "serial"


def fake_arguments(key: Fp8KernelKey):
    """Stand-ins for (a, b, sa, sb, d, q, qs).  The FP8 tensors are declared uint8 (the host
    passes `t.view(torch.uint8)`; the kernel reads them as the key's formats)."""
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_fake_tensor

    m, n, k = cute.sym_int32(symbol="M"), cute.sym_int32(symbol="N"), cute.sym_int32(symbol="K")
    kb, nb = cute.sym_int32(symbol="KB"), cute.sym_int32(symbol="NB")
    a = make_fake_tensor(cutlass.Uint8, (m, k, 1), (cute.sym_int64(divisibility=16), 1, cute.sym_int64()),
                         assumed_align=16)
    b = make_fake_tensor(cutlass.Uint8, (n, k, 1), (cute.sym_int64(divisibility=16), 1, cute.sym_int64()),
                         assumed_align=16)
    # scales: any strides (the host passes column-major SA, row-major SB)
    sa = make_fake_tensor(cutlass.Float32, (m, kb), (cute.sym_int64(), cute.sym_int64()), assumed_align=4)
    sb = make_fake_tensor(cutlass.Float32, (nb, kb), (cute.sym_int64(), cute.sym_int64()), assumed_align=4)
    d = q = qs = None
    if key.epi.plain_outputs:
        d = make_fake_tensor(cutlass.BFloat16, (m, n, 1), (cute.sym_int64(divisibility=8), 1, cute.sym_int64()),
                             assumed_align=16)
    if key.epi.quantized:
        q = make_fake_tensor(cutlass.Uint8, (m, n, 1), (cute.sym_int64(divisibility=16), 1,
                                                                 cute.sym_int64()), assumed_align=16)
        qs = make_fake_tensor(cutlass.Float32, (m, nb), (cute.sym_int64(), cute.sym_int64()), assumed_align=4)
    return a, b, sa, sb, d, q, qs


def build_kernel(key: Fp8KernelKey) -> Sm90Fp8Gemm:
    if key.arch != "sm90":
        raise NotImplementedError(f"no FP8 GEMM kernel for arch {key.arch!r}")
    from ..sm90.fp8_gemm import Sm90Fp8Gemm, check_fp8_config, fp8_ab_stages

    errors = check_fp8_config(key.cfg)
    if errors:
        from ..config import ConfigError

        raise ConfigError("; ".join(errors))
    return Sm90Fp8Gemm(key.cfg, key.epi, ab_stages=fp8_ab_stages(key.cfg, key.epi), a_format=key.a_format,
                       b_format=key.b_format, mainloop=key.mainloop)


def compile_kernel(key: Fp8KernelKey, *, options: str = "", tvm_ffi: bool = False):
    """Compile `key` (uncached); with `tvm_ffi` the callable takes torch tensors:
    fn(a, b, sa, sb, d, q, qs, Int32(max_clusters)) on the current torch stream."""
    os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")
    import cutlass
    import cutlass.cute as cute

    with dsl_lock:
        kernel = build_kernel(key)
        args = fake_arguments(key)
        if tvm_ffi:
            stream = cute.runtime.make_fake_stream(use_tvm_ffi_env_stream=True)
            options = (options + " --enable-tvm-ffi").strip()
        else:
            stream = cute.runtime.make_fake_stream()
        return cute.compile(kernel, *args, cutlass.Int32(132), stream, options=options)


_cache: dict = {}


def get_compiled(key: Fp8KernelKey):
    fn = _cache.get(key)
    if fn is None:
        with dsl_lock:
            fn = _cache.get(key)
            if fn is None:
                fn = compile_kernel(key, tvm_ffi=use_tvm_ffi())
                _cache[key] = fn
    return fn


def kernel_ptx(key: Fp8KernelKey) -> str:
    """The PTX of `key`, dumped into a private temporary directory (as inspect_ptx.kernel_ptx:
    the DSL names the file after the argument types, so a shared directory mixes compiles up)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cute_kernels_ptx_") as d:
        return compile_kernel(key, options=f"--keep-ptx --dump-dir={d}").__ptx__
