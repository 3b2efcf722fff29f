"""The K-grouped kernels' per-expert K tiles (gemm_base/grouping.k_range, the producers' TMA
coordinates along K) on CPU, evaluated on host ints as the kernels trace them: every expert's
tiles cover its tokens from its first one, an empty expert's one tile lies wholly past its
descriptor's K extent (it reads zeros), and with K-major operands (the FP8 weight gradient's
per-expert padded column-wise copies: K is TMA's innermost dimension) every tile starts a
multiple of 16 bytes in, as TMA requires of the innermost coordinate.  An empty first expert
used to start at K = 1, one byte into an FP8 row: the grouped FP8 weight gradient's first
launch faulted with an illegal instruction on the H200 (2026-12-03, the self-check's splits
(0, 130, 1, 69)); the bf16 kernels' M-/N-major operands take any start along K."""
import itertools
import random

import pytest

from cute_kernels.gemm_base.descriptors import expert_k_blocks
from cute_kernels.gemm_base.grouping import k_range, whole_k_tiles

TMA_INNER_ALIGN = 16  # bytes


def _cu(splits):
    return [0, *itertools.accumulate(splits)]


def _padded(splits, block=128):
    return _cu([-(-s // block) * block for s in splits])


SPLITS = [
    [0, 130, 1, 69],  # the self-check's: an empty first expert
    [0, 0, 0, 300],  # several empty experts first
    [300, 0, 0, 5, 128, 129, 0],  # empty in the middle and last
    [1000],
    [0],
    [7] * 40,
]


def _tiles(cu, tile_k):
    """Per expert: (its tokens [lo, hi), its descriptor's K extent, its K tiles' start coordinates)."""
    for e in range(len(cu) - 1):
        k_start, k_extent, k_tiles = k_range(cu, e, tile_k)
        assert (k_start, k_tiles, whole_k_tiles(cu, e, tile_k)) == expert_k_blocks(cu, e, tile_k)
        yield cu[e], cu[e + 1], k_extent, [k_start + kt * tile_k for kt in range(k_tiles)]


@pytest.mark.parametrize("splits", SPLITS)
def test_fp8_k_major_tiles_start_16_byte_aligned(splits):
    tile_k, elem_bytes = 128, 1  # the grouped FP8 weight gradient: K-major FP8 copies padded per expert
    for lo, hi, extent, starts in _tiles(_padded(splits), tile_k):
        misaligned = [s for s in starts if (s * elem_bytes) % TMA_INNER_ALIGN]
        assert not misaligned, f"expert tokens [{lo}, {hi}): K tiles start at {starts} (TMA faults off 16 bytes)"


@pytest.mark.parametrize("tile_k", [64, 128])
@pytest.mark.parametrize("splits", SPLITS + [[random.Random(s).randrange(0, 300) for _ in range(9)] for s in range(4)])
@pytest.mark.parametrize("padded", [False, True])
def test_tiles_cover_each_expert_and_empty_ones_read_zeros(splits, tile_k, padded):
    cu = _padded(splits) if padded else _cu(splits)
    for lo, hi, extent, starts in _tiles(cu, tile_k):
        assert extent == max(hi, 1), "the extent ends at the expert's last token (TMA dims are >= 1)"
        if lo == hi:
            assert len(starts) == 1 and starts[0] >= extent, "an empty expert's one tile is all out of bounds"
        else:
            assert starts[0] == lo and starts[-1] < hi <= starts[-1] + tile_k, (lo, hi, starts)
