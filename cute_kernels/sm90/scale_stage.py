"""The FP8 operand scales of a K tile staged in shared memory with the tile's operand stage
(`KernelKey.scales_smem`, traced inside `Sm90Gemm.kernel`; DeepGEMM's placement of the scales).

Without it each consumer thread loads its two rows' A scales and the tile's B block scale from
global memory a K tile ahead of their promotion (sm90/mainloop_fp8.py `load_scales`): address
arithmetic, global loads and the registers of a K tile's scales in the K loop.  With it the
producer warp copies, per operand stage, the K tile's A scales of the tile's 128 rows and B's
block scale of each of the tile's 128-column N blocks into that stage's scale slot; the stage's
full barrier covers them, and a consumer thread reads its rows' and B's scales from the slot
with ld.shared after the stage's wait.

Slot of a stage: SLOT_FLOATS fp32, A's scale of tile row r at [r], B's of N block b at
[FP8_BLOCK + b].  Copies: each lane of the producer warp copies rows lane + 32 j (j < 4; one
coalesced 128-byte line per instruction when SA is column-major) and lane b < n_blocks B's
scale of N block b, each by a 4-byte `cp.async` (any SA strides, any row start: grouped tiles
start at their expert's first row, so neither a TMA box of SA, which needs 16-byte strides,
nor a bulk copy, which needs 16-byte aligned addresses, serves every launch), then
`cp.async.mbarrier.arrive.noinc` on the stage's full barrier: the barrier counts the lane's
arrival once its copies have landed, so a stage completes on 1 + 32 arrivals and the TMA
bytes.  Rows past M read row M - 1 and N blocks past N the last block (computed, never stored),
as the consumer's own loads did, so the promotion is the same arithmetic on the same values.
The copies and the consumers' reads both go through the generic proxy: no proxy fence.
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Float32
from cutlass.cute.nvgpu import cpasync

from .config import FP8_BLOCK, FP8_SCALE_SLOT_BYTES

COPY_LANES = 32  # the producer warp
ROWS_PER_LANE = FP8_BLOCK // COPY_LANES
MAX_N_BLOCKS = 2  # 128x256 tiles: two B block scales per K tile
SLOT_FLOATS = FP8_SCALE_SLOT_BYTES // 4  # A's 128 row scales, B's block scales, padded to 16 bytes


def stage_scale_arrivals() -> int:
    """Producer arrivals per stage added by the scale copies: one per lane of the producer warp."""
    return COPY_LANES


def slot_layout(ab_stages: int):
    """(slot float, stage) fp32, a stage's slot contiguous."""
    return cute.make_layout((SLOT_FLOATS, ab_stages))


def _one_float(ptr):
    return cute.make_tensor(ptr, cute.make_layout((1,)))


class StageScaleCopier:
    """Producer side: copy a K tile's scales into its stage's slot (see the module docstring)."""

    def __init__(self, n_blocks: int):
        if not 1 <= n_blocks <= MAX_N_BLOCKS:
            raise ValueError(f"scales in shared memory: 1..{MAX_N_BLOCKS} N blocks per tile, got {n_blocks}")
        self.n_blocks = n_blocks

    @cute.jit
    def load(self, sScales, mSA, mSB, row_start, m_total, n_tile, expert, kt, stage, bar):
        """K tile kt's scales of the tile at (row_start, n_tile, expert) into `stage`'s slot; the
        lane's arrival on the stage's full barrier `bar` once they have landed."""
        atom = cute.make_copy_atom(cpasync.CopyG2SOp(), Float32, num_bits_per_copy=32)
        lane = cute.arch.lane_idx()
        for j in cutlass.range_constexpr(ROWS_PER_LANE):
            r = lane + COPY_LANES * j
            row = cutlass.min(row_start + r, m_total - 1)
            cute.copy(atom, _one_float(mSA.iterator + cute.crd2idx((row, kt), mSA.layout)),
                      _one_float(sScales.iterator + cute.crd2idx((r, stage), sScales.layout)))
        if lane < self.n_blocks:
            block = cutlass.min(n_tile * self.n_blocks + lane, cute.size(mSB, mode=[0]) - 1)
            cute.copy(atom, _one_float(mSB.iterator + cute.crd2idx((block, kt, expert), mSB.layout)),
                      _one_float(sScales.iterator + cute.crd2idx((FP8_BLOCK + lane, stage), sScales.layout)))
        cute.arch.cp_async_mbarrier_arrive_noinc(bar)


def read_stage_scales(sc, at: int, sScales, stage, thread_row0, n_blocks: int):
    """Consumer side: the thread's two rows' A scales and each N block b's B scale of the K tile
    in `stage`, in load_scales' layout: sc[at + 3 b] and sc[at + 3 b + 1] the rows', sc[at + 3 b + 2]
    block b's (the rows' repeated per block, as `promote_block` reads them)."""
    row_scales = (Float32(sScales[(thread_row0, stage)]), Float32(sScales[(thread_row0 + 8, stage)]))
    for b in range(n_blocks):  # plain Python: unrolled at trace time
        sc[at + 3 * b] = row_scales[0]
        sc[at + 3 * b + 1] = row_scales[1]
        sc[at + 3 * b + 2] = Float32(sScales[(FP8_BLOCK + b, stage)])
