"""Torch implementations of the recipe's GEMMs (NOT fused kernels): the FP8 MLP step uses them
where no FP8 kernel exists yet, and everywhere on the torch path (CPU, `backend="torch"`).

Each takes the recipe's quantized operands (FP8 values + fp32 block scales, exactly what a
kernel would read) and multiplies their dequantized values: in fp32 on the CPU; on CUDA in
bf16 with fp32 accumulation (cuBLAS), i.e. the dequantized values are rounded to bf16 first
(2^-9 relative, far below e4m3's 2^-4; exact with power-of-two scales).  So the numbers are
those of the recipe, the speed is that of a bf16 GEMM plus the dequantize passes.

- `mm_dequant(aq, sa, bq, sb)`: dequant(a) @ dequant(b)^T, either operand 1x128 or 128x128.
- `wgrad(g, act, recipe)`: g^T @ act with both operands quantized 1x128 along the token
  dimension (the reduction dimension of a weight gradient; DeepSeek-V3's 128x1 tiles of the
  backward), g in the recipe's gradient format, act in its forward format.
"""
from __future__ import annotations

import torch

from .recipe import Fp8Recipe, dequantize, quantize_1x128


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.bfloat16 if t.is_cuda else torch.float32


def mm_dequant(aq, sa, bq, sb, out_dtype=torch.float32):
    """dequant(aq, sa) @ dequant(bq, sb)^T (see the module docstring for the precision)."""
    dt = _compute_dtype(aq)
    a = dequantize(aq, sa.contiguous()).to(dt)
    b = dequantize(bq, sb.contiguous()).to(dt)
    return (a @ b.t()).to(out_dtype)


def wgrad(g: torch.Tensor, act: torch.Tensor, recipe: Fp8Recipe, out_dtype=torch.float32) -> torch.Tensor:
    """(N, K) = g^T (N, M) @ act (M, K), both quantized 1x128 along M: torch implementation."""
    gq, gs = quantize_1x128(g.t(), recipe.grad_format, pow2=recipe.pow2_scales)
    aq, as_ = quantize_1x128(act.t(), recipe.fwd_format, pow2=recipe.pow2_scales)
    return mm_dequant(gq, gs, aq, as_, out_dtype)
