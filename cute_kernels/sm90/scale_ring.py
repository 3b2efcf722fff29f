"""B's per-column scales of the FP8 weight gradient staged in shared memory (KernelKey.b_scale
"rows_staged", traced inside `Sm90Gemm.kernel` by sm90/mainloop_fp8.run_rows_staged).

A promotion with per-row B scales multiplies each accumulator element by its column's scale: a
thread of an m64n128 WGMMA holds 32 columns, so holding two K tiles' column scales in registers
(64) beside the promoted and two scratch accumulators (3 x 64) does not fit a consumer thread's
232 registers.  Instead each consumer warpgroup keeps a ring in shared memory:
(128 columns, 2 K tiles of a pair, SCALE_RING_PAIRS pair slots) fp32.  Thread c of the warpgroup
copies column c's scale of each K tile of a pair with one 4-byte cp.async per K tile (one commit
group per pair), a pair of K tiles ahead of the promotions that read it; before reading a slot
the warpgroup waits for its own copies (cp.async.wait_group) and meets at a named barrier (one id
per consumer warpgroup).  At promotion each thread reads its 32 columns' scales from the slot.

Slots: pair slot i % 3 is read in loop iteration i while i + 1's copies land in (i + 1) % 3; a
thread may still read slot i - 1's (a barrier is passed before the reads, none after), so the
slot written in iteration i + 1, (i + 2) % 3, is not one any thread may still be reading."""
from __future__ import annotations

import cutlass.cute as cute
from cutlass import Float32, Int32
from cutlass.cute.nvgpu import cpasync

from ..gemm_base.traced import TracedRecord
from .config import FP8_BLOCK, SCALE_RING_BYTES, SCALE_RING_PAIRS

WARPGROUP_THREADS = 128
CONSUMER_WARPGROUPS = 2
# named barriers 3 and 4, one per consumer warpgroup (0: the CTA's; 1: the epilogue's; 1, 2: ping-pong's)
RING_BARRIER_ID = 3
RING_FLOATS = SCALE_RING_BYTES // 4


def ring_layout():
    """(column, K tile of the pair, pair slot, consumer warpgroup)."""
    return cute.make_layout((FP8_BLOCK, 2, SCALE_RING_PAIRS, CONSUMER_WARPGROUPS))


class ColumnScaleRing(TracedRecord):
    """One consumer warpgroup's ring of B's column scales and the thread's column in it."""

    _traced = ("ring", "col", "barrier_id")

    def __init__(self, ring, col, barrier_id):
        self.ring = ring  # (FP8_BLOCK, 2, SCALE_RING_PAIRS) fp32 in shared memory, this warpgroup's
        self.col = col  # the column this thread copies (its index in the warpgroup)
        self.barrier_id = barrier_id

    @classmethod
    def build(cls, sRing, consumer_wg, tidx):
        """The ring of consumer warpgroup `consumer_wg` (0 or 1) within `sRing` (ring_layout())."""
        return cls(sRing[(None, None, None, consumer_wg)], Int32(tidx % WARPGROUP_THREADS),
                   Int32(RING_BARRIER_ID + consumer_wg))

    def load_pair(self, mSB, col_src, kt0, kt1, expert, pair_slot):
        """Copy B's scale of column `col_src` for K tiles kt0 and kt1 into `pair_slot` (one cp.async
        each, one commit group)."""
        atom = cute.make_copy_atom(cpasync.CopyG2SOp(), Float32, num_bits_per_copy=32)
        for j, kt in enumerate((kt0, kt1)):  # plain Python: unrolled at trace time
            src = cute.make_tensor(mSB.iterator + cute.crd2idx((col_src, kt, expert), mSB.layout),
                                   cute.make_layout((1,)))
            dst = cute.make_tensor(self.ring.iterator + cute.crd2idx((self.col, j, pair_slot), self.ring.layout),
                                   cute.make_layout((1,)))
            cute.copy(atom, src, dst)
        cute.arch.cp_async_commit_group()

    def sync(self, pending: int):
        """Wait until at most `pending` of this thread's pairs are in flight, then meet the
        warpgroup's other threads (their copies landed too; their reads of older slots are done)."""
        cute.arch.cp_async_wait_group(pending)
        self.barrier()

    def barrier(self):
        cute.arch.barrier(barrier_id=self.barrier_id, number_of_threads=WARPGROUP_THREADS)

    def scales(self, col0, col_offsets: list, j: int, pair_slot) -> list:
        """The scales of columns col0 + col_offsets of the pair's K tile j, read from `pair_slot`."""
        return [Float32(self.ring[(col0 + off, j, pair_slot)]) for off in col_offsets]


def pair_slot(iteration) -> Int32:
    """The pair slot of a K loop iteration (its pair of K tiles)."""
    return iteration % SCALE_RING_PAIRS

