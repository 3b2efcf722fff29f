"""Torch entry point of the one-pass dual quantization (kernel: cute_kernels/sm90/quantize.py).

`quantize_rows_and_cols(x, fmt, pow2=)`: x (M, K) bf16 on an sm_90a GPU ->
  (q (M, K), s (M, ceil(K/128)), qt (K, M), st (K, ceil(M/128))), the recipe's 1x128 copies of x
  and of x^T (`quantize_1x128(x)` and `quantize_1x128(x.t())`, bit for bit).  Scales are
  returned column-major (the FP8 GEMMs read a K block's scales coalesced); qt is a (K, M) view
  of a (K, 128 * ceil(M/128)) buffer whose padding columns hold zeros (16-byte aligned rows,
  whole blocks for a later GEMM's TMA).

Compiled once per (format, pow2) for sm_90a (`--gpu-arch`, no GPU needed to compile), M, K and
the strides symbolic; launched through TVM-FFI on the current stream.  The FP8 MLP step's kernel
path quantizes x, dy and dpreact with it (fp8/mlp.quantize_rows; the column-wise copies wait for
the FP8 weight-gradient kernel).
"""
from __future__ import annotations

import tempfile

import torch

from ..checks import InputError
from ..compile import arch_options, dsl_lock, use_tvm_ffi
from .epilogue import FMAX
from .recipe import FORMATS

BLOCK = 128
_cache: dict = {}


def _cdiv(a, b):
    return -(-a // b)


def fake_arguments():
    """Stand-ins for (x, q, s, qt, st): M, K, Mp and every stride symbolic; FP8 as uint8."""
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_fake_tensor

    m, k, mp = cute.sym_int32(symbol="M"), cute.sym_int32(symbol="K"), cute.sym_int32(symbol="Mp")
    kb, mb = cute.sym_int32(symbol="KB"), cute.sym_int32(symbol="MB")
    x = make_fake_tensor(cutlass.BFloat16, (m, k), (cute.sym_int64(divisibility=8), 1), assumed_align=16)
    q = make_fake_tensor(cutlass.Uint8, (m, k), (cute.sym_int64(divisibility=16), 1), assumed_align=16)
    s = make_fake_tensor(cutlass.Float32, (m, kb), (cute.sym_int64(), cute.sym_int64()), assumed_align=4)
    qt = make_fake_tensor(cutlass.Uint8, (k, mp), (cute.sym_int64(divisibility=16), 1), assumed_align=16)
    st = make_fake_tensor(cutlass.Float32, (k, mb), (cute.sym_int64(), cute.sym_int64()), assumed_align=4)
    return x, q, s, qt, st


def compile_quantize(fmt: str = "e4m3", pow2: bool = False, *, options: str = "", tvm_ffi: bool = False):
    """Compile the kernel for sm_90a (uncached); with `tvm_ffi` it takes torch tensors:
    fn(x, q_u8, s, qt_u8, st) on the current torch stream."""
    import cutlass.cute as cute

    from ..sm90.quantize import Sm90QuantizeBoth

    with dsl_lock:
        kernel = Sm90QuantizeBoth(fmt, pow2)
        if tvm_ffi:
            stream = cute.runtime.make_fake_stream(use_tvm_ffi_env_stream=True)
            options = (options + " --enable-tvm-ffi").strip()
        else:
            stream = cute.runtime.make_fake_stream()
        return cute.compile(kernel, *fake_arguments(), stream, options=arch_options("sm90", options))


def get_compiled(fmt: str, pow2: bool):
    key = (fmt, bool(pow2))
    fn = _cache.get(key)
    if fn is None:
        with dsl_lock:
            fn = _cache.get(key)
            if fn is None:
                fn = _cache[key] = compile_quantize(fmt, pow2, tvm_ffi=use_tvm_ffi())
    return fn


def quantize_ptx(fmt: str = "e4m3", pow2: bool = False) -> str:
    """The kernel's PTX (compiled into a private dump directory, as inspect_ptx.kernel_ptx)."""
    with tempfile.TemporaryDirectory(prefix="cute_kernels_ptx_") as d:
        return compile_quantize(fmt, pow2, options=f"--keep-ptx --dump-dir={d}").__ptx__


def _check_input(x, fmt):
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise InputError("x must be a 2-D torch.Tensor (rows, K)")
    if x.dtype != torch.bfloat16:
        raise InputError(f"x must be bfloat16, got {x.dtype}")
    if fmt not in FMAX:
        raise InputError(f"fmt must be one of {tuple(FMAX)}, got {fmt!r}")
    m, k = x.shape
    if m == 0 or k == 0:
        raise InputError(f"x is empty (shape {tuple(x.shape)})")
    if k % 16:
        raise InputError(f"x has K = {k} columns; the dual quantization kernel needs a multiple of 16 "
                         "(16-byte rows of the FP8 copy)")
    if x.stride(1) != 1 or (m > 1 and x.stride(0) % 8) or x.data_ptr() % 16:
        raise InputError(f"x must be row-major with 16-byte aligned rows (strides {x.stride()})")
    if _cdiv(m, BLOCK) > 65535:
        raise InputError(f"x has M = {m} rows; the kernel's grid takes at most {65535 * BLOCK}")


def quantize_rows_and_cols(x: torch.Tensor, fmt: str = "e4m3", *, pow2: bool = False):
    """(q, s, qt, st): see the module docstring."""
    _check_input(x, fmt)
    from .ops import check_fp8_device

    check_fp8_device("x", x)
    if not use_tvm_ffi():
        raise InputError("the FP8 kernels launch through TVM-FFI: install apache-tvm-ffi and leave "
                         "CUTE_KERNELS_TVM_FFI unset")
    m, k = x.shape
    if m == 1 and x.stride(0) != k:  # one row: its row stride is never used, the kernel's must divide by 8
        x = x.as_strided((1, k), (k, 1))
    mb, kb = _cdiv(m, BLOCK), _cdiv(k, BLOCK)
    dt = FORMATS[fmt]
    q = torch.empty((m, k), dtype=dt, device=x.device)
    s = torch.empty((kb, m), dtype=torch.float32, device=x.device).t()
    qt_buf = torch.empty((k, mb * BLOCK), dtype=dt, device=x.device)
    st = torch.empty((mb, k), dtype=torch.float32, device=x.device).t()
    u8 = torch.uint8
    get_compiled(fmt, pow2)(x, q.view(u8), s, qt_buf.view(u8), st)
    return q, s, qt_buf[:, :m], st
