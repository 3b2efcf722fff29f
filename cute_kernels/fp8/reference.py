"""Float32 references of the FP8 GEMM kernels: the bf16 references (cute_kernels.reference)
applied to the dequantized operands, so what remains between a kernel and its reference is
the kernel's accumulation and output rounding, not the input quantization.

Operands as the kernels take them: A (M, K) FP8 with 1x128 scales (M, ceil(K/128)); B (N, K)
FP8 with 128x128 scales (ceil(N/128), ceil(K/128)), or a stack of experts (E, N, K) with
(E, NB, KB) scales and `splits` the rows of A per expert.
"""
from __future__ import annotations

import torch

from .. import reference
from .recipe import dequantize


def dequantize_weights(bq: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
    """fp32 B of one weight (N, K) or of a stack of experts (E, N, K)."""
    if bq.dim() == 2:
        return dequantize(bq, sb)
    return torch.stack([dequantize(bq[e], sb[e]) for e in range(bq.shape[0])]) if bq.shape[0] else \
        bq.new_empty(bq.shape, dtype=torch.float32)


def fp8_fc2_ref(aq, sa, bq, sb, splits=None):
    """fp32 dequant(A) @ dequant(B)^T (per expert with splits)."""
    return reference.fc2_ref(dequantize(aq, sa), dequantize_weights(bq, sb), splits)


def fp8_dgrad_dact_ref(dq, ds, wtq, wts, preact, splits=None, prob=None, activation=None):
    """fp32 dpreact = p * (dequant(dq) @ dequant(wt)^T) * f'(preact), wt (N, K) or (E, N, K) the copy of
    W2^T the FP8 data gradient takes (before the output's own quantization, if any)."""
    w2 = dequantize_weights(wtq, wts).transpose(-2, -1)  # nn.Linear layout ([E,] K, N)
    return reference.dgrad_act_ref(dequantize(dq, ds), w2, preact, splits, prob, activation)


def fp8_fc1_act_ref(xq, sx, wq, sw, splits=None, prob=None, activation=None):
    """fp32 postact = prob * f(dequant(x) @ dequant(w)^T) (before the output's own quantization)."""
    return reference.fc1_act_ref(dequantize(xq, sx), dequantize_weights(wq, sw), splits, prob, activation)
