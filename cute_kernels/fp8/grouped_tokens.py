"""The grouped FP8 weight gradient's token layout, and its torch reference quantization.

The weight gradient dW_e = G_e^T @ X_e reduces over expert e's tokens, quantized 1x128 along
them (the recipe's 1D1D operands).  For one K-grouped launch over all experts each expert's
tokens must start a scale block, so the column-wise copies hold every expert's tokens padded
to whole 128-token blocks (zeros after its last token):

    expert e's tokens in the copy: [cu_padded[e], cu_padded[e] + m_splits[e]),
    cu_padded[e + 1] = cu_padded[e] + 128 * ceil(m_splits[e] / 128).

`padded_layout(m_splits, tokens, device)` computes, with torch ops on the device (no host sync
for a GPU-tensor m_splits), the block table of the copy's 128-token blocks (per block: the first
source row and the number of source rows, 0..128) and cu_padded (E+1, int32: the GEMM's
K-grouped token offsets).  The copy's block count: the exact sum of ceil(m_splits[e] / 128) for
a list; for a tensor an upper bound computed on the host, floor((T + 127 E) / 128), whose
trailing blocks hold no tokens (zeros, scale 1, never read by the GEMM).  The reference's layout,
~30 torch ops: the kernel finds each block's source itself from the experts' offsets
(sm90/quantize_grouped.py), with no torch op on the host.

`quantize_cols_grouped_reference(x, m_splits, fmt, pow2=)`: (qt (K, 128 * blocks), st (K,
blocks)), the padded copy by the recipe (`quantize_1x128` of the padded x^T): what the kernel
(sm90/quantize_grouped.py through fp8/quantize_ops.quantize_cols_grouped) writes, bit for bit.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch

from ..checks import InputError
from .recipe import quantize_1x128

BLOCK = 128


class PaddedLayout(NamedTuple):
    blocks: torch.Tensor  # (2 * num_blocks,) int32: [first source row, source rows] per 128-token block
    cu_padded: torch.Tensor  # (E + 1,) int32: expert e's tokens start at cu_padded[e] in the padded copy
    num_blocks: int  # the copy's 128-token blocks (host int)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def check_splits(m_splits, tokens: int, device) -> int:
    """The number of experts of `m_splits` (a list/tuple of non-negative ints summing to `tokens`,
    or a 1-D int32/int64 tensor on `device`: its values are not read on the host)."""
    if isinstance(m_splits, torch.Tensor):
        if m_splits.dim() != 1 or m_splits.numel() == 0:
            raise InputError(f"m_splits must be a non-empty 1-D tensor (one entry per expert), "
                             f"got shape {tuple(m_splits.shape)}")
        if m_splits.dtype not in (torch.int32, torch.int64):
            raise InputError(f"m_splits dtype must be int32 or int64, got {m_splits.dtype}")
        if m_splits.device != torch.device(device):
            raise InputError(f"m_splits is on {m_splits.device}, expected {device}")
        return m_splits.numel()
    if not isinstance(m_splits, (list, tuple)) or not m_splits:
        raise InputError(f"m_splits must be a non-empty list of ints or an int tensor, got {m_splits!r}")
    for i, s in enumerate(m_splits):
        if type(s) is not int or s < 0:
            raise InputError(f"m_splits[{i}] must be a non-negative int, got {s!r}")
    if sum(m_splits) != tokens:
        raise InputError(f"m_splits sum to {sum(m_splits)} but there are {tokens} tokens")
    return len(m_splits)


def num_padded_blocks(m_splits, tokens: int) -> int:
    """The padded copy's 128-token blocks: exact for a list, an upper bound for a tensor."""
    if isinstance(m_splits, torch.Tensor):
        return (tokens + (BLOCK - 1) * m_splits.numel()) // BLOCK
    return sum(_cdiv(s, BLOCK) for s in m_splits)


_LAYOUT_CACHE_SIZE = 64
_layouts: OrderedDict = OrderedDict()  # (splits tuple, tokens, device) -> PaddedLayout of a list's splits


def padded_layout(m_splits, tokens: int, device) -> PaddedLayout:
    """The block table and padded offsets of `m_splits` (see the module docstring), computed by
    torch ops on `device`.  A list's is kept per (values, tokens, device) (LRU: repeated
    reference quantizations share one), except inside a CUDA graph capture
    (computed in the graph: a kept tensor could be evicted and its memory reused under the graph)."""
    device = torch.device(device)
    if isinstance(m_splits, torch.Tensor) or (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        return _padded_layout(m_splits, tokens, device)
    key = (tuple(m_splits), tokens, device)
    layout = _layouts.get(key)
    if layout is None:
        layout = _layouts[key] = _padded_layout(m_splits, tokens, device)
        if len(_layouts) > _LAYOUT_CACHE_SIZE:
            _layouts.popitem(last=False)
    else:
        _layouts.move_to_end(key)
    return layout


def _padded_layout(m_splits, tokens: int, device) -> PaddedLayout:
    num_blocks = num_padded_blocks(m_splits, tokens)
    splits = (m_splits.to(device=device, dtype=torch.int64) if isinstance(m_splits, torch.Tensor)
              else torch.tensor(list(m_splits), dtype=torch.int64, device=device))
    zero = torch.zeros(1, dtype=torch.int64, device=device)
    cu_rows = torch.cat([zero, torch.cumsum(splits, 0)])
    cu_blocks = torch.cat([zero, torch.cumsum((splits + BLOCK - 1) // BLOCK, 0)])
    b = torch.arange(num_blocks, dtype=torch.int64, device=device)
    # the expert of block b: the first whose block range ends past b (empty experts own no block)
    expert = torch.searchsorted(cu_blocks[1:], b, right=True)
    held = expert < splits.numel()
    e = expert.clamp(max=splits.numel() - 1)
    src_row0 = cu_rows[e] + (b - cu_blocks[e]) * BLOCK
    rows = (cu_rows[e + 1] - src_row0).clamp(0, BLOCK)
    src_row0 = torch.where(held, src_row0, torch.zeros_like(src_row0))
    rows = torch.where(held, rows, torch.zeros_like(rows))
    blocks = torch.stack([src_row0, rows], 1).reshape(-1).to(torch.int32)
    return PaddedLayout(blocks, (cu_blocks * BLOCK).to(torch.int32), num_blocks)


def padded_tokens_copy(x: torch.Tensor, layout: PaddedLayout) -> torch.Tensor:
    """x (T, K) with its rows placed as the padded copy holds them: (128 * num_blocks, K), zero
    rows where a block holds fewer than 128 tokens."""
    table = layout.blocks.to(torch.int64).view(-1, 2)
    i = torch.arange(BLOCK, dtype=torch.int64, device=x.device)
    src = table[:, :1] + i  # (blocks, 128)
    valid = i < table[:, 1:]
    rows = x[torch.where(valid, src, torch.zeros_like(src)).reshape(-1)] if x.shape[0] else \
        x.new_zeros((src.numel(), x.shape[1]))
    return torch.where(valid.reshape(-1, 1), rows, torch.zeros_like(rows))


def quantize_cols_grouped_reference(x: torch.Tensor, m_splits, fmt: str = "e4m3", *, pow2: bool = False):
    """(qt, st, cu_padded): the padded column-wise copy of x (T, K) by the recipe, see the
    module docstring."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise InputError("x must be a 2-D torch.Tensor (tokens, K)")
    check_splits(m_splits, x.shape[0], x.device)
    layout = padded_layout(m_splits, x.shape[0], x.device)
    qt, st = quantize_1x128(padded_tokens_copy(x, layout).t(), fmt, pow2=pow2)
    return qt, st, layout.cu_padded
