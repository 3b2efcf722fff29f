"""The FP8 weight gradient with 1x128 scales along the tokens on both operands (DeepGEMM's 1D1D):
dW (N_out, K_out) = dequant(G^T) @ dequant(X^T)^T, fp32 accumulation, promoted once per 128
tokens with the row scale of G^T and the per-column scale of X^T (sm90/mainloop_fp8.run_rows).

    fp8_weight_grad(gq_t, gs_t, xq_t, xs_t, out_dtype=torch.float32)
    fp8_weight_grad(gq_t, gs_t, xq_t, xs_t, out=main_grad, accumulate=True)   (main_grad += dW)

gq_t (N_out, T) and xq_t (K_out, T): the column-wise FP8 copies of the output gradient G (T, N_out)
and of the activation X (T, K_out) that the one-pass quantization kernel writes
(fp8/quantize_ops.quantize_rows_and_cols: qt, its rows padded to whole 128-token blocks with
zeros); gs_t (N_out, ceil(T/128)) and xs_t (K_out, ceil(T/128)) their fp32 scales.  T a multiple
of 16 (pass the padded buffer, whose extra tokens are zeros).

Grouped (MoE): `fp8_grouped_weight_grad(gq_t, gs_t, xq_t, xs_t, cu_padded)` -> (E, N_out, K_out),
every expert in one launch over the per-expert padded copies (quantize_ops.quantize_cols_grouped:
each expert's tokens start a 128-token scale block), the same kernel grouped along K
(KernelKey.grouped_k, b_scale "rows_staged"); `fp8_grouped_weight_grad_of(g, act, m_splits,
recipe)` quantizes and launches (the FP8 step with CUTE_KERNELS_FP8_GROUPED_WGRAD=1).

The kernel is the GEMM family's Hopper kernel with `KernelKey.b_scale = "rows_staged"` (the
overlapped mainloop with B's column scales staged in shared memory, `run_rows_staged`; ~830
TFLOP/s on the H200) or, with CUTE_KERNELS_FP8_WGRAD_STAGED=0, `b_scale = "row"` (the serial
mainloop, `run_rows`, ~430); each variant's first launch is self-checked against torch
(selfcheck.py: its own evidence name) and `Fp8Recipe(wgrad="fp8")` uses it by default
(CUTE_KERNELS_FP8_WGRAD_KERNEL=0: the torch emulation).

`out=` / `accumulate=True` (both host ops): dW added into an fp32 `main_grad` in the kernel's
epilogue (Megatron's fuse_wgrad_accumulation: out = out + dW, one read and one write of out, no
separate add pass).  The epilogue reads out's previous value right after the mainloop
(sm90/epilogue_aux.py; KernelKey.epi "identity+acc", its own self-check name); the FP8 step
takes it with CUTE_KERNELS_FP8_WGRAD_ACCUMULATE=1 (`wgrad_accumulate_enabled`, off until an
H200 run has checked it: the step then adds dW into main_grad in torch).
"""
from __future__ import annotations

import dataclasses
import os

import torch

from ..checks import InputError
from ..config import GemmConfig, block_scaled_errors
from ..epilogue import EpilogueSpec
from ..host_args import as_mkl
from .ops import FAMILY_ARCH, _cdiv, _check_fp8_operand, _check_scales, check_fp8_launch, family_key
from .epilogue import Fp8Epilogue

BLOCK = 128
WGRAD_OUT_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}
_OUT_BYTES = {torch.float32: 4, torch.bfloat16: 2}
# 128x128 tiles (one scale per output column and K tile), cooperative, a 2-CTA cluster along N
WGRAD_DEFAULT_CONFIG = GemmConfig(tile_m=128, tile_n=128, tile_k=128, cluster_m=1, cluster_n=2, epi_n=32, epi_stages=2)


def wgrad_kernel_enabled() -> bool:
    """Whether the FP8 step's weight gradients (Fp8Recipe(wgrad="fp8"), kernel path) use this
    kernel: on by default since the H200 run of 2026-12-03 (GPU tests within the accumulation bound;
    the dense FP8 step with wgrad="fp8" 19.86 -> 10.95 ms at the power limit,
    benchmarks/results/fp8/2026-12-03-h200-fp8-step-switches.md); CUTE_KERNELS_FP8_WGRAD_KERNEL=0
    takes the torch emulation."""
    return os.environ.get("CUTE_KERNELS_FP8_WGRAD_KERNEL", "1") != "0"


# KernelKey.b_scale of the two mainloops: serial ("row", the default) and overlapped with B's column
# scales staged in shared memory ("rows_staged")
WGRAD_B_SCALES = ("row", "rows_staged")


def wgrad_b_scale() -> str:
    """The mainloop the weight gradient runs unless the caller names one: "rows_staged" (the
    overlapped form, the default since the H200 A/B of 2026-12-03 19:06 UTC: 823-838 TFLOP/s on the
    dense step's dW1/dW2 against 431-435 for "row", bitwise equal,
    benchmarks/results/fp8/2026-12-03-h200-verify-switches-2.md), or "row" (the serial form) with
    CUTE_KERNELS_FP8_WGRAD_STAGED=0."""
    return "row" if os.environ.get("CUTE_KERNELS_FP8_WGRAD_STAGED", "1") == "0" else "rows_staged"


def wgrad_key(a_format: str, b_format: str, out_dtype: torch.dtype, config: GemmConfig = WGRAD_DEFAULT_CONFIG,
              b_scale: str | None = None, accumulate: bool = False):
    """The family's kernel key of the 1D1D weight gradient (`b_scale`: one of WGRAD_B_SCALES, None:
    wgrad_b_scale(); `accumulate`: out = out + dW, an fp32 out)."""
    epi = Fp8Epilogue(EpilogueSpec("identity", accumulate=accumulate))
    key = family_key(epi, config, a_format, b_format)
    return dataclasses.replace(key, b_scale=b_scale or wgrad_b_scale(), out_dtype=WGRAD_OUT_DTYPES[out_dtype])


def wgrad_config_errors(config: GemmConfig, b_scale: str = "row", *, accumulate: bool = False,
                        out_bytes: int = 4, grouped_k: bool = False) -> list[str]:
    """Why `config` cannot run the (grouped, `grouped_k`) weight gradient; empty when it can."""
    return block_scaled_errors(config, EpilogueSpec("identity", accumulate=accumulate), arch=FAMILY_ARCH,
                               majors=("k", "k"), grouped_k=grouped_k, out_bytes=out_bytes, b_scale=b_scale)


def _output(out, out_dtype, accumulate: bool, shape: tuple, device) -> tuple[torch.Tensor | None, torch.dtype]:
    """(out, the output's dtype) after the checks of `out=` / `out_dtype=` / `accumulate=` (None: a
    new output of out_dtype, float32 by default); InputError naming the argument."""
    if out is None:
        if accumulate:
            raise InputError("accumulate=True needs out= (the fp32 main_grad to add the gradient into)")
        return None, out_dtype or torch.float32
    if not isinstance(out, torch.Tensor):
        raise InputError(f"out must be a torch.Tensor or None, got {type(out).__name__}")
    if out_dtype is not None and out_dtype != out.dtype:
        raise InputError(f"out_dtype {out_dtype} disagrees with out's dtype {out.dtype} (give one of them)")
    if accumulate and out.dtype != torch.float32:
        raise InputError(f"accumulate=True adds into an fp32 out (main_grad), got out of dtype {out.dtype}")
    if tuple(out.shape) != shape:
        raise InputError(f"out must have shape {shape}, got {tuple(out.shape)}")
    if out.device != device:
        raise InputError(f"out is on {out.device}, expected {device}")
    if not out.is_contiguous() or out.data_ptr() % 16:
        raise InputError(f"out must be contiguous with a 16-byte aligned data pointer, got strides {out.stride()} "
                         f"at offset {out.data_ptr() % 16} bytes from 16")
    return out, out.dtype


def _check_problem(n_out: int, k_out: int, out_dtype, config, what: str, config_errors):
    """The output's and the config's checks of both host ops (`config_errors()`: the config's
    errors for this kernel, called only for a config given)."""
    if out_dtype not in WGRAD_OUT_DTYPES:
        raise InputError(f"out_dtype must be torch.float32 or torch.bfloat16, got {out_dtype}")
    if n_out == 0 or k_out == 0:
        raise InputError(f"empty problem (N_out = {n_out}, K_out = {k_out})")
    if k_out % 8:
        raise InputError(f"K_out = {k_out} must be a multiple of 8 (16-byte rows of the output)")
    if config is not None:
        if not isinstance(config, GemmConfig):
            raise InputError(f"config must be a GemmConfig or None, got {type(config).__name__}")
        errors = config_errors()
        if errors:
            raise InputError(f"config: {config} cannot run {what}: " + "; ".join(errors))


def fp8_weight_grad(gq_t, gs_t, xq_t, xs_t, *, out_dtype: torch.dtype | None = None,
                    config: GemmConfig | None = None, b_scale: str | None = None, out: torch.Tensor | None = None,
                    accumulate: bool = False) -> torch.Tensor:
    """dW = dequant(gq_t) @ dequant(xq_t)^T (see the module docstring), a new (N_out, K_out)
    tensor in `out_dtype` (float32, the default, or bfloat16), or written into `out` (contiguous,
    float32 or bfloat16, 16-byte aligned); with `accumulate`, added to out's values in the epilogue
    (out = out + dW, out float32: a parameter's main_grad).  Returns the output.  `b_scale` picks
    the mainloop (WGRAD_B_SCALES; None: wgrad_b_scale(), the environment's)."""
    fa = _check_fp8_operand("gq_t", gq_t)
    fb = _check_fp8_operand("xq_t", xq_t, gq_t.shape[1])
    n_out, t = gq_t.shape
    k_out = xq_t.shape[0]
    for name, x in (("gs_t", gs_t), ("xq_t", xq_t), ("xs_t", xs_t)):
        if isinstance(x, torch.Tensor) and x.device != gq_t.device:
            raise InputError(f"{name} is on {x.device}, expected {gq_t.device}")
    _check_scales("gs_t", gs_t, (n_out, _cdiv(t, BLOCK)))
    _check_scales("xs_t", xs_t, (k_out, _cdiv(t, BLOCK)))
    if b_scale is not None and b_scale not in WGRAD_B_SCALES:
        raise InputError(f"b_scale must be one of {WGRAD_B_SCALES} or None, got {b_scale!r}")
    b_scale = b_scale or wgrad_b_scale()
    if t == 0:
        raise InputError(f"empty problem (N_out = {n_out}, K_out = {k_out}, tokens = {t})")
    out, out_dtype = _output(out, out_dtype, accumulate, (n_out, k_out), gq_t.device)
    _check_problem(n_out, k_out, out_dtype, config, "the FP8 weight gradient",
                   lambda: wgrad_config_errors(config, b_scale, accumulate=accumulate,
                                               out_bytes=_OUT_BYTES[out_dtype]))
    check_fp8_launch("gq_t", gq_t)
    from ..gemm_base.launch_args import GemmArgs
    from ..gemm_ops import _run

    dw = torch.empty((n_out, k_out), dtype=out_dtype, device=gq_t.device) if out is None else out
    u8 = torch.uint8
    key = wgrad_key(fa, fb, out_dtype, config or WGRAD_DEFAULT_CONFIG, b_scale, accumulate)
    _run(key, GemmArgs(as_mkl(gq_t.view(u8)), as_mkl(xq_t.view(u8)), as_mkl(dw), None,
                       aux=as_mkl(dw) if accumulate else None, sa=gs_t, sb=xs_t.unsqueeze(-1)))
    return dw


def _bf16(t: torch.Tensor) -> torch.Tensor:
    """t as a contiguous bf16 tensor: t itself, without dispatching a torch op, when it is one."""
    t = t if t.dtype == torch.bfloat16 else t.to(torch.bfloat16)
    return t.contiguous()


def fp8_weight_grad_of(g: torch.Tensor, act: torch.Tensor, recipe, out: torch.Tensor | None = None,
                       out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """g^T @ act (fp32) of the FP8 step's weight gradient, Fp8Recipe(wgrad="fp8") on the kernel
    path: g (T, N_out) and act (T, K_out) quantized 1x128 along the tokens by the one-pass kernel
    (its column-wise copies; g in the recipe's grad format, act in its forward format), then this
    module's kernel.  N_out and K_out multiples of 16, T > 0.  `out`: an fp32 main_grad the
    gradient is added into by the kernel's epilogue (returned); `out_dtype`: a new output's dtype
    (float32, the default, or bfloat16: the accumulation rounded once by the epilogue)."""
    from .quantize_ops import quantize_rows_and_cols

    _, _, gq_t, gs_t = quantize_rows_and_cols(_bf16(g), recipe.grad_format,
                                              pow2=recipe.pow2_scales)
    _, _, xq_t, xs_t = quantize_rows_and_cols(_bf16(act), recipe.fwd_format,
                                              pow2=recipe.pow2_scales)
    return fp8_weight_grad(as_operand(gq_t), gs_t, as_operand(xq_t), xs_t, out=out, accumulate=out is not None,
                           out_dtype=out_dtype)


# the grouped form's mainloop: the overlapped one only ("row", the serial one, spills 220 bytes
# when grouped along K: ptxas, 2026-12-03)
GROUPED_WGRAD_B_SCALES = ("rows_staged",)


def grouped_wgrad_key(a_format: str, b_format: str, out_dtype: torch.dtype,
                      config: GemmConfig = WGRAD_DEFAULT_CONFIG, accumulate: bool = False):
    """The family's kernel key of the grouped 1D1D weight gradient (grouped along K, b_scale
    "rows_staged"; `accumulate`: out = out + dW, an fp32 out)."""
    return dataclasses.replace(wgrad_key(a_format, b_format, out_dtype, config, "rows_staged", accumulate),
                               grouped_k=True)


def fp8_grouped_weight_grad(gq_t, gs_t, xq_t, xs_t, cu_padded, *, out_dtype: torch.dtype | None = None,
                            config: GemmConfig | None = None, out: torch.Tensor | None = None,
                            accumulate: bool = False) -> torch.Tensor:
    """dW[e] = dequant(gq_t[:, experts e's tokens]) @ dequant(xq_t[:, its tokens])^T for every
    expert in one launch, a new (E, N_out, K_out) tensor in `out_dtype` (float32, the default, or
    bfloat16), zeros for an empty expert; or written into `out` (contiguous, 16-byte aligned), with
    `accumulate` added to its values (out[e] += dW[e], out float32: the experts' main_grad; an
    empty expert's left as it was).  gq_t (N_out, Tp), xq_t (K_out, Tp): the per-expert padded
    column-wise FP8 copies of G (T, N_out) and X (T, K_out) (quantize_ops.quantize_cols_grouped:
    every expert's tokens start a 128-token block, zeros after its last); gs_t (N_out, Tp/128) and
    xs_t (K_out, Tp/128) their fp32 scales; cu_padded (E+1,) int32 on the GPU, expert e's tokens
    start at cu_padded[e] (a multiple of 128; read by the kernel, never on the host).  The kernel:
    the family's Hopper kernel grouped along K (the bf16 grouped weight gradient's tile walk and
    descriptor ring) with the overlapped 1D1D mainloop, each expert's scales read from its own
    first block (gemm_base.grouping.expert_block_scales)."""
    fa = _check_fp8_operand("gq_t", _token_free_view(gq_t))
    fb = _check_fp8_operand("xq_t", _token_free_view(xq_t), gq_t.shape[1])
    n_out, tp = gq_t.shape
    k_out = xq_t.shape[0]
    for name, x in (("gs_t", gs_t), ("xq_t", xq_t), ("xs_t", xs_t), ("cu_padded", cu_padded)):
        if isinstance(x, torch.Tensor) and x.device != gq_t.device:
            raise InputError(f"{name} is on {x.device}, expected {gq_t.device}")
    if tp % BLOCK:
        raise InputError(f"gq_t has {tp} tokens; the padded copies hold whole 128-token blocks")
    _check_scales("gs_t", gs_t, (n_out, tp // BLOCK))
    _check_scales("xs_t", xs_t, (k_out, tp // BLOCK))
    if not isinstance(cu_padded, torch.Tensor) or cu_padded.dim() != 1 or cu_padded.numel() < 2 \
            or cu_padded.dtype != torch.int32:
        raise InputError("cu_padded must be a 1-D int32 tensor of E+1 >= 2 token offsets, got "
                         f"{getattr(cu_padded, 'dtype', type(cu_padded).__name__)} of shape "
                         f"{tuple(getattr(cu_padded, 'shape', ()))}")
    experts = cu_padded.numel() - 1
    out, out_dtype = _output(out, out_dtype, accumulate, (experts, n_out, k_out), gq_t.device)
    _check_problem(n_out, k_out, out_dtype, config, "the grouped FP8 weight gradient",
                   lambda: wgrad_config_errors(config, "rows_staged", accumulate=accumulate, grouped_k=True,
                                               out_bytes=_OUT_BYTES[out_dtype]))
    dw = torch.empty((experts, n_out, k_out), dtype=out_dtype, device=gq_t.device) if out is None else out
    if tp == 0:  # every expert empty (list splits): no launch
        return dw if accumulate else dw.zero_()
    check_fp8_launch("gq_t", gq_t)
    from ..gemm_base.launch_args import GemmArgs
    from ..gemm_ops import _run

    u8 = torch.uint8
    key = grouped_wgrad_key(fa, fb, out_dtype, config or WGRAD_DEFAULT_CONFIG, accumulate)
    d3 = dw.permute(1, 2, 0)
    _run(key, GemmArgs(as_mkl(gq_t.view(u8)), as_mkl(xq_t.view(u8)), d3, None, aux=d3 if accumulate else None,
                       cu_rows=cu_padded, sa=gs_t, sb=xs_t.unsqueeze(-1)))
    return dw


def _token_free_view(t):
    """A copy holding no token (every expert empty) as a row-major (rows, 0) view, for the operand
    checks (torch gives an empty tensor any strides); anything else as it is."""
    if isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape[1] == 0:
        return t.as_strided(t.shape, (BLOCK, 1))
    return t


def fp8_grouped_weight_grad_of(g: torch.Tensor, act: torch.Tensor, m_splits, recipe,
                               out: torch.Tensor | None = None, g_cols=None, act_cols=None,
                               out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """(E, N_out, K_out) fp32 (or `out_dtype`), dW[e] = g_e^T @ act_e of the FP8 step's grouped weight gradient
    (Fp8Recipe(wgrad="fp8"), kernel path, CUTE_KERNELS_FP8_GROUPED_WGRAD=1): g (T, N_out) and act
    (T, K_out), tokens sorted by expert (`m_splits`: a list of ints or a GPU int tensor, no host
    sync), each quantized 1x128 along its expert's tokens into the per-expert padded column-wise
    copy (one launch each), then one launch of fp8_grouped_weight_grad (`out`: the experts' fp32
    main_grad (E, N_out, K_out), the gradient added into it by the epilogue; returned).  `g_cols`:
    g's copy (qt, st, cu_padded) already made (the step's quantize_grad, with g's row-wise copy from
    one read of g), not made again; `act_cols` likewise act's (the step's x, requantized from its
    saved FP8 copy: quantize_ops.requantize_cols_grouped; act may then be None).  `out_dtype`: a new
    output's dtype (float32, the default, or bfloat16: the accumulation rounded once by the epilogue)."""
    from .quantize_ops import quantize_cols_grouped

    if g_cols is None:
        g_cols = quantize_cols_grouped(_bf16(g), m_splits, recipe.grad_format,
                                       pow2=recipe.pow2_scales)
    gq_t, gs_t, cu_padded = g_cols
    if act_cols is None:
        act_cols = quantize_cols_grouped(_bf16(act), m_splits, recipe.fwd_format,
                                         pow2=recipe.pow2_scales)
    xq_t, xs_t, _ = act_cols
    return fp8_grouped_weight_grad(gq_t, gs_t, xq_t, xs_t, cu_padded, out=out, accumulate=out is not None,
                                   out_dtype=out_dtype)


def grouped_wgrad_kernel_enabled() -> bool:
    """Whether the FP8 step's grouped weight gradients (Fp8Recipe(wgrad="fp8") with m_splits,
    kernel path) use fp8_grouped_weight_grad_of instead of the per-expert loop: off until an H200
    run has checked it (CUTE_KERNELS_FP8_GROUPED_WGRAD=1 turns it on)."""
    return os.environ.get("CUTE_KERNELS_FP8_GROUPED_WGRAD", "0") == "1"


def wgrad_accumulate_enabled() -> bool:
    """Whether the FP8 step with fuse_wgrad_accumulation adds its FP8 weight gradients into an fp32
    main_grad in the kernel's epilogue (`out=main_grad, accumulate=True`: no dW tensor, no torch add
    pass) where the kernel computes them (dense; grouped with CUTE_KERNELS_FP8_GROUPED_WGRAD=1):
    off until an H200 run has checked it (CUTE_KERNELS_FP8_WGRAD_ACCUMULATE=1 turns it on)."""
    return os.environ.get("CUTE_KERNELS_FP8_WGRAD_ACCUMULATE", "0") == "1"


def padded_tokens(t: int) -> int:
    """Tokens as the column-wise FP8 copies hold them: whole 128-token blocks."""
    return _cdiv(t, BLOCK) * BLOCK


def as_operand(qt: torch.Tensor) -> torch.Tensor:
    """The (rows, T) view of a column-wise copy widened to its padded buffer's whole 128-token
    blocks (zeros past T), a K the FP8 GEMM takes for any T."""
    rows, t = qt.shape
    width = padded_tokens(t)
    if rows > 1 and qt.stride(0) < width:
        raise InputError(f"a column-wise FP8 copy's rows must be padded to whole 128-token blocks, "
                         f"row stride {qt.stride(0)} < {width}")
    return qt.as_strided((rows, width), (qt.stride(0) if rows > 1 else width, 1))

