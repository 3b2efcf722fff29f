"""Grouped addressing of the GEMM family (traced inside kernels; arch-neutral).

Grouped along M (`grouped`): tokens sorted by expert; `cu_rows` (E+1) holds row offsets
and `cu_tiles` (E+1) the prefix of M tiles per expert (each rounded up to a multiple of
cluster_m), both int32 on the GPU.  A tile reads A rows [row_start, row_start + tile_m)
(rows past the expert's end are computed and thrown away), B from expert e, and stores
through a ragged view of D whose row extent ends at the expert's last row, so TMA clips
the store there.

Grouped along K (`grouped_k`, per-expert weight gradients dW_e = dY_e^T X_e): A (M,
K_total) and B (N, K_total) hold every expert's tokens along K, `cu_rows` (E+1) the token
offsets, and D is (M, N, E).  `k_range` gives an expert's K tiles; an empty expert runs
one all-out-of-bounds (zero) K block, so its D is 0 (or, accumulating, its previous
value) without a branch around the mainloop.
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import const_expr


def m_tiles_upper_bound(num_m_tiles, num_experts, cluster_m: int):
    """Grouped along M: at most one partial tile per expert plus cluster_m - 1 tiles of
    rounding each expert's tiles up to whole clusters."""
    return num_m_tiles + num_experts * cluster_m


def ragged_store_view(mD: cute.Tensor, grouped: bool):
    """Dense: D itself.  Grouped: a ragged (R, N, R+1) view; slicing mode 2 at an
    expert's end row e gives a tensor whose row r maps to D row r + e - R, so rows at
    or past e are out of bounds and TMA drops them."""
    if const_expr(not grouped):
        return mD
    rows = cute.size(mD, mode=[0])
    ld = mD.stride[0]
    base = mD.iterator + (-(cutlass.Int64(rows) * ld))
    layout = cute.make_layout((rows, cute.size(mD, mode=[1]), rows + 1), stride=(ld, 1, ld))
    return cute.make_tensor(base, layout)


def output_tile(mD, row_start, row_end, n_tile, m_total, expert, tile_mn, *, grouped: bool, grouped_k: bool):
    """The (tile_m, tile_n) TMA-coordinate tile of output `mD` (as made by
    ragged_store_view for grouped problems) for one tile."""
    tile_m, tile_n = tile_mn
    if const_expr(grouped_k):
        view = mD[None, None, expert]
        origin = (row_start, n_tile * tile_n)
    elif const_expr(grouped):
        # Ragged view: slice at the expert's end row; local row r = row - row_end + R.
        view = mD[None, None, row_end]
        origin = (row_start - row_end + m_total, n_tile * tile_n)
    else:
        view = mD[None, None, 0]
        origin = (row_start, n_tile * tile_n)
    return cute.local_tile(cute.domain_offset(origin, view), (tile_m, tile_n), (0, 0))


def k_range(mCuRows, expert, tile_k: int):
    """Grouped along K: (first K coordinate, K extent of the expert's descriptor, number
    of K tiles).  The extent ends at the expert's last token (at least 1: TMA dims are
    >= 1); an empty expert starts at or past the extent, so its single K tile is all out
    of bounds and reads as zeros.

    Every start is the expert's first token or a whole K tile, never 1: TMA requires the
    innermost box coordinate to be a multiple of 16 bytes, and with K-major operands (the
    FP8 weight gradient's padded column-wise copies) K is the innermost dimension.  An
    empty first expert started at K = 1 (one byte in) and faulted with an illegal
    instruction on the H200 (2026-12-03); M-/N-major operands (bf16) take any start."""
    k_lo = mCuRows[expert]
    k_hi = mCuRows[expert + 1]
    k_extent = cutlass.max(k_hi, 1)
    # empty experts: k_lo == k_hi == k_extent, except k_hi == 0 (extent 1), which starts at tile_k
    k_start = k_lo + cutlass.max(1 - k_hi, 0) * tile_k
    k_tiles = cutlass.max((k_hi - k_lo + tile_k - 1) // tile_k, 1)
    return k_start, k_extent, k_tiles


def whole_k_tiles(mCuRows, expert, tile_k: int):
    """The expert's K blocks that lie wholly inside its tokens (read through the launch's
    own descriptors); one more block, if k_range counts one, needs a cut descriptor."""
    return (mCuRows[expert + 1] - mCuRows[expert]) // tile_k


def expert_k_view(mX: cute.Tensor, k_extent):
    """(R, K, 1) operand with its K extent cut to `k_extent` (same base address)."""
    layout = cute.make_layout((cute.size(mX, mode=[0]), k_extent, 1), stride=mX.stride)
    return cute.make_tensor(mX.iterator, layout)


def expert_block_scales(mSA: cute.Tensor, mSB: cute.Tensor, mCuRows, expert, tile_k: int):
    """Grouped along K with block-scaled operands (the FP8 weight gradient over per-expert token
    ranges padded to whole 128-token scale blocks, fp8/grouped_tokens.py): A's (M, KB) and B's
    (N, KB, 1) scales offset to the expert's first K block, so the mainloop's K tile kt of this
    expert reads scale block kb0 + kt (and B's expert mode 0).  An empty expert's one all-zero K
    tile reads block min(kb0, KB - 1): any finite scale gives its zeros."""
    kb0 = cutlass.min(mCuRows[expert] // tile_k, cute.size(mSA, mode=[1]) - 1)
    return cute.domain_offset((0, kb0), mSA), cute.domain_offset((0, kb0, 0), mSB)
