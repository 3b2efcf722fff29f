"""Torch entry point of the one-pass dual quantization (kernel: cute_kernels/sm90/quantize.py).

`quantize_weight_copies(w, fmt, pow2=)`: a weight (N, K) or a stack of expert weights (E, N, K),
bf16 on an sm_90a GPU -> ((q, s), (qt, st)), the recipe's 128x128-block copies of W and of W^T in
one pass (`quantize_128x128(w)` and its `transposed_copy`, bit for bit; kernel:
cute_kernels/sm90/quantize_weight.py).

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

import os
import tempfile

import torch

from ..checks import InputError
from ..compile import arch_options, dsl_lock, use_tvm_ffi
from ..host_args import splits_metadata
from ..launch_plan import check_once, tensor_meta
from . import ops
from .epilogue import FMAX
from .recipe import FORMATS

BLOCK = 128
_cache: dict = {}


def _check_aligned(name: str, t: torch.Tensor):
    if t.data_ptr() % 16:
        raise InputError(f"{name} data pointer is not 16-byte aligned (rows must be 16-byte aligned)")


def _cdiv(a, b):
    return -(-a // b)


def fake_weight_arguments():
    """Stand-ins for the weight kernel's (w, q, s, qt, st) in (rows, cols, expert) order: N, K, E
    and every stride symbolic but the unit ones; FP8 as uint8."""
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_fake_tensor

    n, k, e = cute.sym_int32(symbol="N"), cute.sym_int32(symbol="K"), cute.sym_int32(symbol="E")
    nb, kb = cute.sym_int32(symbol="NB"), cute.sym_int32(symbol="KB")

    def rows(dtype, shape, align):
        return make_fake_tensor(dtype, shape, (cute.sym_int64(divisibility=16), 1, cute.sym_int64(divisibility=16)),
                                assumed_align=align)

    w = rows(cutlass.BFloat16, (n, k, e), 16)
    q = rows(cutlass.Uint8, (n, k, e), 16)
    qt = rows(cutlass.Uint8, (k, n, e), 16)
    s = make_fake_tensor(cutlass.Float32, (nb, kb, e), (cute.sym_int64(), cute.sym_int64(), cute.sym_int64()),
                         assumed_align=4)
    st = make_fake_tensor(cutlass.Float32, (kb, nb, e), (cute.sym_int64(), cute.sym_int64(), cute.sym_int64()),
                          assumed_align=4)
    return w, q, s, qt, st


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


def compile_quantize(fmt: str = "e4m3", pow2: bool = False, *, options: str = "", tvm_ffi: bool = False,
                     weight: bool = False, cols: bool = True):
    """Compile the kernel for sm_90a (uncached): the activation kernel (without its column pass
    with `cols=False`), or with `weight` the 128x128-block weight kernel.  With `tvm_ffi` it takes
    torch tensors: fn(x, q_u8, s, qt_u8, st) on the current torch stream."""
    from ..sm90.quantize import Sm90QuantizeBoth
    from ..sm90.quantize_weight import Sm90QuantizeWeight

    return _compile_sm90(lambda: Sm90QuantizeWeight(fmt, pow2) if weight else Sm90QuantizeBoth(fmt, pow2, cols),
                         fake_weight_arguments if weight else fake_arguments, options, tvm_ffi)


def _cached(key, compile_fn):
    """The compiled kernel of `key` from this module's cache, compiled (once) by compile_fn()."""
    fn = _cache.get(key)
    if fn is None:
        with dsl_lock:
            fn = _cache.get(key)
            if fn is None:
                fn = _cache[key] = compile_fn()
    return fn


def get_compiled(fmt: str, pow2: bool, weight: bool = False, cols: bool = True):
    return _cached((fmt, bool(pow2), weight, cols),
                   lambda: compile_quantize(fmt, pow2, tvm_ffi=use_tvm_ffi(), weight=weight, cols=cols))


def _one_row_strides(x: torch.Tensor) -> torch.Tensor:
    """x itself, or a one-row x with its row stride set to K (never used, but the kernels' row
    strides are declared divisible by 8 or 16)."""
    m, k = x.shape
    return x.as_strided((1, k), (k, 1)) if m == 1 and x.stride(0) != k else x


def quantize_ptx(fmt: str = "e4m3", pow2: bool = False, weight: bool = False, cols: bool = True) -> str:
    """The kernel's PTX (compiled into a private dump directory, as inspect_ptx.kernel_ptx)."""
    with tempfile.TemporaryDirectory(prefix="cute_kernels_ptx_") as d:
        return compile_quantize(fmt, pow2, options=f"--keep-ptx --dump-dir={d}", weight=weight, cols=cols).__ptx__


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
    q, s, qt_buf, st = quantize_both_padded(x, fmt, pow2=pow2)
    return q, s, qt_buf[:, :x.shape[0]], st


def quantize_both_padded(x: torch.Tensor, fmt: str = "e4m3", *, pow2: bool = False):
    """quantize_rows_and_cols with qt's whole (K, 128 * ceil(M/128)) buffer (one view less, for a
    caller that does not read qt)."""
    _check_input(x, fmt)
    ops.check_fp8_launch("x", x)
    x = _one_row_strides(x)
    m, k = x.shape
    mb, kb = _cdiv(m, BLOCK), _cdiv(k, BLOCK)
    dt = FORMATS[fmt]
    q = torch.empty((m, k), dtype=dt, device=x.device)
    s = ops._new_scales(m, kb, x.device)
    qt_buf = torch.empty((k, mb * BLOCK), dtype=dt, device=x.device)
    st = ops._new_scales(k, mb, x.device)
    u8 = torch.uint8
    get_compiled(fmt, pow2)(x, q.view(u8), s, qt_buf.view(u8), st)
    return q, s, qt_buf, st


def one_pass_weight_kernel_enabled() -> bool:
    """Whether the FP8 step makes its weight copies with the one-pass kernel
    (sm90/quantize_weight.py): on unless CUTE_KERNELS_FP8_WEIGHT_KERNEL=0.  The H200 run of
    2026-12-03 showed it bitwise equal to the recipe's copies and the FP8 step faster with it
    (benchmarks/results/fp8/2026-12-03-h200-fp8-step-weight-kernel.md)."""
    return os.environ.get("CUTE_KERNELS_FP8_WEIGHT_KERNEL", "1") != "0"


def _on_gpu(t: torch.Tensor) -> bool:
    """Whether `t` is on a GPU (one place, so benchmarks.bench_host_path can run the kernel path on CPU)."""
    return t.is_cuda


def kernel_weight_copies(w: torch.Tensor, recipe):
    """(W's copy, W^T's copy) of a weight from the one-pass kernel for `recipe` (fp8.Fp8Recipe),
    or None where it does not apply (switched off, not on CUDA, a weight it does not take):
    `weight_cache.weight_copies(..., both=kernel_weight_copies)`."""
    if not (one_pass_weight_kernel_enabled() and isinstance(w, torch.Tensor) and _on_gpu(w)):
        return None
    if not _weight_taken(w):
        return None
    # (w.detach(): the kernel's view of the weight does not require grad; nothing else here is autograd's)
    return _weight_copies(w.detach(), recipe.fwd_format, recipe.pow2_scales)


def _weight_taken(w: torch.Tensor) -> bool:
    """weight_kernel_takes(w), its metadata part decided once per weight signature."""
    try:
        check_once(("weight", tensor_meta(w)), lambda: _check_weight_taken(w))
    except _NotTaken:
        return False
    return w.data_ptr() % 16 == 0


class _NotTaken(Exception):
    pass


def _check_weight_taken(w: torch.Tensor):
    if not weight_kernel_takes(w):
        raise _NotTaken
    ops.check_fp8_launch("w", w)


def fake_dequantize_arguments():
    """Stand-ins for the dequantization kernel's (q, s, out): M, K and every stride symbolic."""
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_fake_tensor

    m, k, kb = cute.sym_int32(symbol="M"), cute.sym_int32(symbol="K"), cute.sym_int32(symbol="KB")
    q = make_fake_tensor(cutlass.Uint8, (m, k), (cute.sym_int64(divisibility=16), 1), assumed_align=16)
    s = make_fake_tensor(cutlass.Float32, (m, kb), (cute.sym_int64(), cute.sym_int64()), assumed_align=4)
    out = make_fake_tensor(cutlass.BFloat16, (m, k), (cute.sym_int64(divisibility=8), 1), assumed_align=16)
    return q, s, out


def compile_dequantize(fmt: str = "e4m3", *, options: str = "", tvm_ffi: bool = False):
    """Compile the dequantization kernel (sm90/dequantize.py) for sm_90a (uncached)."""
    from ..sm90.dequantize import Sm90Dequantize

    return _compile_sm90(lambda: Sm90Dequantize(fmt), fake_dequantize_arguments, options, tvm_ffi)


def dequantize_ptx(fmt: str = "e4m3") -> str:
    with tempfile.TemporaryDirectory(prefix="cute_kernels_ptx_") as d:
        return compile_dequantize(fmt, options=f"--keep-ptx --dump-dir={d}").__ptx__


def dequantize_kernel_enabled() -> bool:
    """Whether the FP8 step dequantizes its saved x with the kernel (sm90/dequantize.py):
    on by default since the H200 run of 2026-12-03 showed it bitwise the torch form (with the
    rows-only quantizer: dense FP8 step 8.67 -> 8.36 ms, benchmarks/results/fp8/
    2026-12-03-h200-fp8-step-switches.md); CUTE_KERNELS_FP8_DEQUANT_KERNEL=0 takes the torch form."""
    return os.environ.get("CUTE_KERNELS_FP8_DEQUANT_KERNEL", "1") != "0"


def dequantize_to_bf16(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """bf16(fp32(q) * s) of a 1x128-scaled FP8 (M, K) tensor by the kernel: bitwise
    `recipe.dequantize(q, s, out_dtype=torch.bfloat16)`.  K a multiple of 16, M > 0."""
    check_once(("dequantize", tensor_meta(q), tensor_meta(s)), lambda: _check_dequantize(q, s))
    _check_aligned("q", q)
    fmt = ops._FORMAT_OF[q.dtype]
    fn = _cached(("dequantize", fmt), lambda: compile_dequantize(fmt, tvm_ffi=use_tvm_ffi()))
    out = torch.empty(q.shape, dtype=torch.bfloat16, device=q.device)
    q = _one_row_strides(q)
    fn(q.view(torch.uint8), s, out)
    return out


def _check_dequantize(q, s):
    ops._check_fp8_operand("q", q)
    m, k = q.shape
    if m == 0:
        raise InputError("q is empty (no rows)")
    ops._check_scales("s", s, (m, _cdiv(k, BLOCK)))
    ops.check_fp8_launch("q", q)


def weight_kernel_takes(w: torch.Tensor) -> bool:
    """Whether `quantize_weight_copies` takes this weight: bf16, (N, K) or (E, N, K) with N and K
    multiples of 16 and neither zero, row-major contiguous."""
    return (isinstance(w, torch.Tensor) and w.dtype == torch.bfloat16 and w.dim() in (2, 3) and w.numel() > 0
            and w.shape[-1] % 16 == 0 and w.shape[-2] % 16 == 0 and w.is_contiguous() and w.data_ptr() % 16 == 0
            and _cdiv(w.shape[-2], BLOCK) <= 65535 and (w.dim() == 2 or w.shape[0] <= 65535))


def quantize_weight_copies(w: torch.Tensor, fmt: str = "e4m3", *, pow2: bool = False):
    """((q, s), (qt, st)): see the module docstring.  Shapes as quantize_128x128 and
    weight_cache.transposed_copy give them."""
    if fmt not in FMAX:
        raise InputError(f"fmt must be one of {tuple(FMAX)}, got {fmt!r}")
    if not weight_kernel_takes(w):
        raise InputError("w must be a contiguous bf16 (N, K) or (E, N, K) tensor with N and K nonzero multiples "
                         f"of 16, got {getattr(w, 'dtype', type(w).__name__)} of shape {tuple(getattr(w, 'shape', ()))}")
    ops.check_fp8_launch("w", w)
    return _weight_copies(w, fmt, pow2)


def _weight_copies(w: torch.Tensor, fmt: str, pow2: bool):
    """quantize_weight_copies of a weight its checks took."""
    if w.dim() == 2:
        return _quantize_one_weight(w, fmt, pow2)
    e, n, k = w.shape
    nb, kb = _cdiv(n, BLOCK), _cdiv(k, BLOCK)
    dt = FORMATS[fmt]
    q = torch.empty((e, n, k), dtype=dt, device=w.device)
    qt = torch.empty((e, k, n), dtype=dt, device=w.device)
    s = torch.empty((e, nb, kb), dtype=torch.float32, device=w.device)
    st = torch.empty((e, kb, nb), dtype=torch.float32, device=w.device)
    u8 = torch.uint8
    order = (1, 2, 0)  # (rows, cols, expert), the kernel's mode order: a grouped FP8 launch's too
    q3, s3, qt3, st3 = q.view(u8).permute(order), s.permute(order), qt.view(u8).permute(order), st.permute(order)
    get_compiled(fmt, pow2, weight=True)(w.permute(order), q3, s3, qt3, st3)
    return (_WeightCopy(q, s, ops.LaunchViews(q3, s3, of=(q, s))),
            _WeightCopy(qt, st, ops.LaunchViews(qt3, st3, of=(qt, st))))


def _as_one_expert(t: torch.Tensor) -> torch.Tensor:
    """(R, C) -> (R, C, 1): the kernel's view of a one-expert stack, t.unsqueeze(0).permute(1, 2, 0)
    in one torch op (the same sizes, strides and offset)."""
    r, c = t.shape
    s0, s1 = t.stride()
    return t.as_strided((r, c, 1), (s0, s1, r * s0))


def _quantize_one_weight(w: torch.Tensor, fmt: str, pow2: bool):
    """quantize_weight_copies of an (N, K) weight: the copies allocated (N, K) and (K, N), each
    handed to the kernel as the one-expert stack's view."""
    n, k = w.shape
    nb, kb = _cdiv(n, BLOCK), _cdiv(k, BLOCK)
    dt, u8 = FORMATS[fmt], torch.uint8
    q = torch.empty((n, k), dtype=dt, device=w.device)
    qt = torch.empty((k, n), dtype=dt, device=w.device)
    s = torch.empty((nb, kb), dtype=torch.float32, device=w.device)
    st = torch.empty((kb, nb), dtype=torch.float32, device=w.device)
    get_compiled(fmt, pow2, weight=True)(_as_one_expert(w), _as_one_expert(q.view(u8)), _as_one_expert(s),
                                         _as_one_expert(qt.view(u8)), _as_one_expert(st))
    return (q, s), (qt, st)


class _WeightCopy(tuple):
    """(q, scales) of a stack of expert weights' FP8 copy, holding the grouped launch's (N, K, E)
    uint8 view of q and (NB, KB, E) view of the scales (`weight_views`), made once with the copy."""

    def __new__(cls, q, scales, views):
        copy = super().__new__(cls, (q, scales))
        copy.views = views
        return copy


def weight_views(copy):
    """The grouped launch's views of a weight copy made by `quantize_weight_copies` (fp8.ops's
    `w_views` / `wt_views`), or None for any other (q, scales) pair (the launch makes them)."""
    return copy.views if isinstance(copy, _WeightCopy) else None


def rows_only_kernel_enabled() -> bool:
    """Whether the FP8 step quantizes x, dy and dpreact without the column-wise copies it does not
    read (the activation kernel's `cols=False` form): on by default since the H200 run of 2026-12-03
    (bitwise the full kernel's row-wise copy); CUTE_KERNELS_FP8_ROWS_ONLY=0 writes both copies."""
    return os.environ.get("CUTE_KERNELS_FP8_ROWS_ONLY", "1") != "0"


def quantize_rows_only(x: torch.Tensor, fmt: str = "e4m3", *, pow2: bool = False):
    """(q, s): the row-wise 1x128 copy of x (M, K) bf16 and its column-major scales, bitwise the
    first two outputs of `quantize_rows_and_cols` (the same row pass; no column pass, no qt)."""
    check_once(("rows", tensor_meta(x), fmt), lambda: (_check_input(x, fmt), ops.check_fp8_launch("x", x)))
    _check_aligned("x", x)
    x = _one_row_strides(x)
    m, k = x.shape
    device = x.device
    q = torch.empty((m, k), dtype=FORMATS[fmt], device=device)
    s = ops._new_scales(m, _cdiv(k, BLOCK), device)
    qt_unused, st_unused = _unused_columns(k, device)
    get_compiled(fmt, pow2, cols=False)(x, q.view(torch.uint8), s, qt_unused, st_unused)
    return q, s


_unused: dict = {}


def _unused_columns(k: int, device) -> tuple:
    """The rows-only kernel's qt (K, 16) uint8 and st (K, 1) fp32 arguments (K rows as its
    symbols say), never read or written: made once per (K, device) and kept (a few bytes per row)."""
    key = (k, device)
    pair = _unused.get(key)
    if pair is None:
        pair = _unused[key] = (torch.empty((k, 16), dtype=torch.uint8, device=device),
                               torch.empty((k, 1), dtype=torch.float32, device=device))
    return pair


def compile_quantize_cols_grouped(fmt: str = "e4m3", pow2: bool = False, *, options: str = "",
                                  tvm_ffi: bool = False, rows: bool = False, in_fmt: str | None = None):
    """Compile the per-expert padded column-wise kernel (sm90/quantize_grouped.py) for sm_90a
    (uncached): fn(x, cu_rows, cu_blocks, qt_u8, st, cu_padded); with `rows` the dual form that also
    writes the row-wise copy, fn(x, cu_rows, cu_blocks, q_u8, s, qt_u8, st, cu_padded); with `in_fmt`
    the form reading x as an FP8 copy of that format, fn(xq_u8, xs, cu_rows, cu_blocks, qt_u8, st,
    cu_padded)."""
    from ..sm90 import quantize_grouped as kernel

    if in_fmt is not None:
        return _compile_sm90(lambda: kernel.Sm90RequantizeColsGrouped(fmt, pow2, in_fmt),
                             kernel.fake_requantize_arguments, options, tvm_ffi)
    if rows:
        return _compile_sm90(lambda: kernel.Sm90QuantizeRowsColsGrouped(fmt, pow2), kernel.fake_rows_arguments,
                             options, tvm_ffi)
    return _compile_sm90(lambda: kernel.Sm90QuantizeColsGrouped(fmt, pow2), kernel.fake_arguments, options, tvm_ffi)


def _compile_sm90(make_kernel, fake_args, options: str, tvm_ffi: bool):
    """cute.compile of make_kernel() on fake_args() for sm_90a under the DSL lock (with `tvm_ffi`:
    taking torch tensors on the current torch stream)."""
    import cutlass.cute as cute

    with dsl_lock:
        if tvm_ffi:
            stream = cute.runtime.make_fake_stream(use_tvm_ffi_env_stream=True)
            options = (options + " --enable-tvm-ffi").strip()
        else:
            stream = cute.runtime.make_fake_stream()
        return cute.compile(make_kernel(), *fake_args(), stream, options=arch_options("sm90", options))


def quantize_cols_grouped_ptx(fmt: str = "e4m3", pow2: bool = False, rows: bool = False,
                              in_fmt: str | None = None) -> str:
    with tempfile.TemporaryDirectory(prefix="cute_kernels_ptx_") as d:
        return compile_quantize_cols_grouped(fmt, pow2, options=f"--keep-ptx --dump-dir={d}", rows=rows,
                                             in_fmt=in_fmt).__ptx__


def quantize_cols_grouped(x: torch.Tensor, m_splits, fmt: str = "e4m3", *, pow2: bool = False):
    """(qt, st, cu_padded): the column-wise 1x128 copy of x (T, K) bf16 (tokens sorted by expert,
    `m_splits` tokens each: a list of ints or a GPU int tensor, read without a host sync) with
    every expert's tokens starting a 128-token block: qt (K, 128 * blocks) FP8, st (K, blocks) fp32
    column-major, cu_padded (E+1,) int32 the experts' token offsets in qt; bitwise
    grouped_tokens.quantize_cols_grouped_reference.  One launch for all experts, and no torch op
    but the three outputs' allocations: the kernel finds each block's expert from the experts' row
    and 128-token block offsets (host_args.splits_metadata, kept per splits for the step's grouped
    GEMMs) and writes cu_padded itself."""
    return _quantize_grouped(x, m_splits, fmt, pow2, rows=False)


def quantize_rows_and_cols_grouped(x: torch.Tensor, m_splits, fmt: str = "e4m3", *, pow2: bool = False):
    """(q, s, qt, st, cu_padded): quantize_rows_only(x) (the row-wise 1x128 copy, column-major
    scales) and quantize_cols_grouped(x, m_splits) from one read of x, one launch, bit for bit both
    (the FP8 step's output gradients: the row copy for the data gradient, the padded column copy
    for the grouped weight gradient)."""
    return _quantize_grouped(x, m_splits, fmt, pow2, rows=True)


def requantize_cols_grouped(xq: torch.Tensor, xs: torch.Tensor, m_splits, fmt: str = "e4m3", *,
                            pow2: bool = False):
    """(qt, st, cu_padded): quantize_cols_grouped(dequantize_to_bf16(xq, xs), m_splits, fmt) bit for
    bit, from x's 1x128-scaled FP8 copy xq (T, K) (row-major, K a multiple of 16) and its scales xs
    (T, ceil(K/128)) fp32 in one launch: the bf16 x is neither written nor read (the FP8 step's x,
    saved as its FP8 copy, for the grouped FP8 weight gradient of W1)."""
    from .grouped_tokens import check_splits

    check_once(("requantize_cols_grouped", tensor_meta(xq), tensor_meta(xs), fmt),
               lambda: _check_requantize(xq, xs, fmt))
    check_splits(m_splits, xq.shape[0], xq.device)
    _check_aligned("xq", xq)
    in_fmt = ops._FORMAT_OF[xq.dtype]
    xq = _one_row_strides(xq)
    qt, st, cu_padded, fn, cu_rows, cu_blocks = _grouped_outputs(xq, m_splits, fmt, pow2, False, in_fmt)
    fn(xq.view(torch.uint8), xs, cu_rows, cu_blocks, qt.view(torch.uint8), st, cu_padded)
    return qt, st, cu_padded


def _check_requantize(xq, xs, fmt):
    if fmt not in FMAX:
        raise InputError(f"fmt must be one of {tuple(FMAX)}, got {fmt!r}")
    ops._check_fp8_operand("xq", xq)
    t, k = xq.shape
    if t == 0:
        raise InputError("xq is empty (no rows)")
    if k % 16:
        raise InputError(f"xq has K = {k} columns; the kernel needs a multiple of 16")
    ops._check_scales("xs", xs, (t, _cdiv(k, BLOCK)))
    ops.check_fp8_launch("xq", xq)


def _grouped_outputs(x, m_splits, fmt: str, pow2: bool, rows: bool, in_fmt: str | None = None):
    """The grouped kernels' common host part: (qt, st, cu_padded, the compiled kernel, cu_rows,
    cu_blocks) for x (T, K) and m_splits (checked)."""
    from .grouped_tokens import num_padded_blocks

    t, k = x.shape
    device = x.device
    num_blocks = num_padded_blocks(m_splits, t)  # > 0: T > 0
    cu_rows, cu_blocks = splits_metadata(m_splits, BLOCK, device)
    qt = torch.empty((k, num_blocks * BLOCK), dtype=FORMATS[fmt], device=device)
    st = ops._new_scales(k, num_blocks, device)
    cu_padded = torch.empty(cu_rows.shape, dtype=torch.int32, device=device)
    fn = _cached(("cols_grouped", fmt, bool(pow2), rows, in_fmt),
                 lambda: compile_quantize_cols_grouped(fmt, pow2, tvm_ffi=use_tvm_ffi(), rows=rows, in_fmt=in_fmt))
    return qt, st, cu_padded, fn, cu_rows, cu_blocks


def _quantize_grouped(x, m_splits, fmt: str, pow2: bool, rows: bool):
    from .grouped_tokens import check_splits

    meta = tensor_meta(x)
    check_once(("cols_grouped", meta, fmt), lambda: _check_input(x, fmt))
    check_splits(m_splits, x.shape[0], x.device)
    check_once(("cols_grouped launch", meta), lambda: ops.check_fp8_launch("x", x))
    _check_aligned("x", x)
    x = _one_row_strides(x)
    t, k = x.shape
    device, dt, u8 = x.device, FORMATS[fmt], torch.uint8
    qt, st, cu_padded, fn, cu_rows, cu_blocks = _grouped_outputs(x, m_splits, fmt, pow2, rows)
    if not rows:
        fn(x, cu_rows, cu_blocks, qt.view(u8), st, cu_padded)
        return qt, st, cu_padded
    q = torch.empty((t, k), dtype=dt, device=device)
    s = ops._new_scales(t, _cdiv(k, BLOCK), device)
    fn(x, cu_rows, cu_blocks, q.view(u8), s, qt.view(u8), st, cu_padded)
    return q, s, qt, st, cu_padded
