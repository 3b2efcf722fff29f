"""The K-grouped kernels' per-CTA ring of TMA descriptors (traced inside kernels;
arch-neutral: TMA and tensormap updates are the same on sm90 and sm100).

An expert's whole K blocks are read through the launch's own descriptors (TMA
coordinates need no block alignment).  Only an expert whose last K block is partial (or
that is empty) needs more: a writer warp writes this CTA's own copy of the A and B TMA
descriptors with the K extent ending at the expert's last token, into a ring of
ab_stages + DESC_LEAD slots in a global-memory workspace, up to DESC_LEAD slots ahead of
the TMA warp, which loads that block through them: TMA then zero-fills it past the
expert's end instead of reading the next expert's tokens.  The two warps hand slots over
through mbarriers; the TMA warp frees a slot ab_stages loads after its use, when that
load has landed.  The writer is `DescriptorRing.run_writer`; the TMA warp's side is
`KGroupedLoads`, which every arch's producer calls around its own partitioning.  The base address stays the operand's own (an earlier design moved it
below the allocation to cut K with a 3-D view; TMA loads through such a descriptor fault
when that address is unmapped).
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
from cutlass import Int32
from cutlass.cute.nvgpu import cpasync
from cutlass.tensor_utils import TensorMapManager, TensorMapUpdateMode

from .grouping import expert_k_view, k_range, whole_k_tiles
from .traced import TracedRecord

DESC_BYTES = 128  # one TMA descriptor
DESC_WORDS = DESC_BYTES // 8
# How many cut descriptors the writer warp may prepare ahead of the producer.
DESC_LEAD = 2
_DESC_MANAGER = TensorMapManager(TensorMapUpdateMode.GMEM, DESC_BYTES)


def desc_slots(ab_stages: int) -> int:
    """Descriptor slots per operand and CTA: a slot is free again once ab_stages later
    loads were issued, plus DESC_LEAD slots of lead."""
    return ab_stages + DESC_LEAD


def workspace_words(max_ctas: int, ab_stages: int) -> int:
    """Int64 words of the descriptor workspace for a launch of at most `max_ctas` CTAs:
    per CTA, A and B descriptors (128 B each) in every slot."""
    return max_ctas * 2 * desc_slots(ab_stages) * DESC_WORDS


class DescriptorRing(TracedRecord):
    """This CTA's slots in the workspace, laid out [slot 0: A, B | slot 1: A, B | ...]."""

    _traced = ("ws", "base")

    def __init__(self, mDescWs, slots: int, cluster_id, cta_layout_mnk, cta_rank):
        self.ws = mDescWs
        self.slots = slots
        cta_linear = cluster_id * cute.size(cta_layout_mnk) + cta_rank
        self.base = cta_linear * (2 * slots * DESC_WORDS)

    def ptr(self, slot, operand: int, generic: bool = False):
        """Pointer to the descriptor of `operand` (0: A, 1: B) in `slot` (global address
        space to write it; generic to hand it to a TMA copy)."""
        space = cute.AddressSpace.generic if generic else cute.AddressSpace.gmem
        return _DESC_MANAGER.get_tensormap_ptr(self.ws.iterator + (self.base + (2 * slot + operand) * DESC_WORDS), space)

    @cute.jit
    def run_writer(self, desc_pipeline, walk, tma_a, tma_b, mA, mB, tile_k: int, start, step):
        """The writer warp: walk this CTA's tiles as the producer does and, for each expert
        whose last K block is partial (or that is empty) and differs from the previous such
        expert, write A and B descriptors whose K extent ends at the expert's last token into
        the next free slot.  It runs up to DESC_LEAD slots ahead, so the writes and their
        release fence stay off the producer's path."""
        for slot in cutlass.range_constexpr(self.slots):  # templates for update_tma_descriptor
            with cute.arch.elect_one():
                cpasync.copy_tensormap(tma_a, self.ptr(slot, 0))
                cpasync.copy_tensormap(tma_b, self.ptr(slot, 1))
        cute.arch.sync_warp()
        cute.arch.fence_acq_rel_cta()
        write_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.slots)
        prev_expert = Int32(-1)
        t = start
        while t < walk.num_work:
            expert = walk.expert_of(t)
            _, k_extent, expert_k_tiles = k_range(walk.mCuRows, expert, tile_k)
            # the producer's rule: a K block past the expert's whole ones, from a new expert
            if expert_k_tiles != whole_k_tiles(walk.mCuRows, expert, tile_k) and expert != prev_expert:
                desc_pipeline.producer_acquire(write_state)
                pa = self.ptr(write_state.index, 0)
                pb = self.ptr(write_state.index, 1)
                cpasync.update_tma_descriptor(tma_a, expert_k_view(mA, k_extent), pa)
                cpasync.update_tma_descriptor(tma_b, expert_k_view(mB, k_extent), pb)
                cute.arch.sync_warp()
                cpasync.fence_tma_desc_release()
                desc_pipeline.producer_commit(write_state)
                write_state.advance()
                prev_expert = expert
            t += step


def _stage_block(src, dst, slice_at):
    """One operand's K block in global memory and its stage in shared memory: `src` and
    `dst` as given, or with `slice_at` = (K block, stage) sliced from the TMA-partitioned
    (copy, K block) and (copy, stage) tensors."""
    if cutlass.const_expr(slice_at is None):
        return src, dst
    return src[(None, slice_at[0])], dst[(None, slice_at[1])]


def load_ab_stage(tma_a, a_src, a_dst, a_mask, tma_b, b_src, b_dst, b_mask, bar, slice_at=None, ring=None, slot=None):
    """TMA loads of one stage's A and B blocks, both completing on the stage barrier `bar`:
    through the launch's own descriptors, or with a ring, through `slot`'s cut ones.
    `slice_at` (see `_stage_block`) slices each operand next to its copy (sm100's order;
    sm90 passes the blocks sliced; either way each producer's PTX is what it was)."""
    a_src, a_dst = _stage_block(a_src, a_dst, slice_at)
    if cutlass.const_expr(ring is None):
        cute.copy(tma_a, a_src, a_dst, tma_bar_ptr=bar, mcast_mask=a_mask)
    else:
        cute.copy(tma_a, a_src, a_dst, tma_bar_ptr=bar, mcast_mask=a_mask, tma_desc_ptr=ring.ptr(slot, 0, generic=True))
    b_src, b_dst = _stage_block(b_src, b_dst, slice_at)
    if cutlass.const_expr(ring is None):
        cute.copy(tma_b, b_src, b_dst, tma_bar_ptr=bar, mcast_mask=b_mask)
    else:
        cute.copy(tma_b, b_src, b_dst, tma_bar_ptr=bar, mcast_mask=b_mask, tma_desc_ptr=ring.ptr(slot, 1, generic=True))


def expert_k_blocks(mCuRows, expert, tile_k: int):
    """(first K index, K blocks, K blocks read through the launch's own descriptors) of
    `expert`: only a last block that would run into the next expert's tokens (or the
    all-out-of-bounds block of an empty expert) needs a descriptor whose K extent ends at
    this expert."""
    k_start, _, k_tiles = k_range(mCuRows, expert, tile_k)
    return k_start, k_tiles, whole_k_tiles(mCuRows, expert, tile_k)


class DescriptorCursor(TracedRecord):
    """The producer's cut descriptors in use: their slot, the expert they were cut for, and
    how many experts' cut descriptors it has used.  Each `KGroupedLoads.acquire_stage`
    returns the next; the producer rebinds it (it crosses the tile and K loops)."""

    _traced = ("slot", "prev_expert", "uses")

    def __init__(self, slot, prev_expert, uses):
        self.slot, self.prev_expert, self.uses = slot, prev_expert, uses

    @staticmethod
    def start():
        """The cursor before the producer's first tile."""
        return DescriptorCursor(Int32(0), Int32(-1), Int32(0))


class KGroupedLoads(TracedRecord):
    """The producer warp's side of the protocol (the module docstring), for every arch: when
    to wait for the writer warp's cut descriptors, when to hand a slot back, and the loads
    through them (which K blocks need them: `expert_k_blocks`).  The arch's producer keeps
    its partitioning, multicast masks and loops.

    It holds the ring and the producer's two consumer states of the descriptor pipeline (the
    next slot to wait for, the next to hand back), which its methods advance in place: the
    producer calls a method of it in every iteration of its loops, so the DSL carries these
    declared values through them (as it carries a pipeline state whose `advance` it calls).
    The cursor is returned instead: the order of loop-carried values follows the producer's
    source (first the names it assigns, then the objects whose methods it calls), and this
    split keeps that order, hence the PTX, of the producers written before this class."""

    _traced = ("ring", "read", "free")

    def __init__(self, ring: DescriptorRing, desc_pipeline, ab_stages: int):
        self.ring = ring
        self.desc_pipeline = desc_pipeline
        self.ab_stages = ab_stages
        self.read = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, ring.slots)
        self.free = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, ring.slots)

    @cute.jit
    def acquire_stage(self, cursor: DescriptorCursor, ab_pipeline, state, kt, full_k_tiles, expert):
        """Acquire the operand stage `state` for K block `kt`; the first block past the
        expert's whole ones (of an expert other than the last such) first waits for the cut
        descriptors the writer warp prepared (same tile walk, same rule).  Returns the cursor."""
        desc_pipeline, ring, read, free = self.desc_pipeline, self.ring, self.read, self.free
        slot, prev_expert, uses = cursor.slot, cursor.prev_expert, cursor.uses
        new_desc = cutlass.Boolean(False)
        if kt == full_k_tiles and expert != prev_expert:
            desc_pipeline.consumer_wait(read)
            slot = read.index
            cpasync.fence_tma_desc_acquire(ring.ptr(slot, 0))
            cpasync.fence_tma_desc_acquire(ring.ptr(slot, 1))
            read.advance()
            prev_expert = expert
            uses += 1
            new_desc = cutlass.Boolean(True)
        ab_pipeline.producer_acquire(state)
        if new_desc:
            if uses > self.ab_stages:
                # Each use issues one load; with this stage acquired, every load ab_stages
                # back has landed, so the slot of the use ab_stages back is no longer read:
                # hand it back to the writer.
                desc_pipeline.consumer_release(free)
                free.advance()
        # the ifs above rebound these locals to their results: the record holds those from here on
        self.ring, self.read, self.free = ring, read, free
        return DescriptorCursor(slot, prev_expert, uses)

    @cute.jit
    def load_stage(self, cursor: DescriptorCursor, kt, full_k_tiles, tma_a, a_src, a_dst, a_mask, tma_b, b_src, b_dst,
                   b_mask, bar, slice_at=None):
        """`load_ab_stage` of K block `kt`: through the launch's descriptors for a whole block,
        through the cursor's cut ones for the expert's last partial block."""
        ring = self.ring
        if kt < full_k_tiles:
            load_ab_stage(tma_a, a_src, a_dst, a_mask, tma_b, b_src, b_dst, b_mask, bar, slice_at)
        else:
            load_ab_stage(tma_a, a_src, a_dst, a_mask, tma_b, b_src, b_dst, b_mask, bar, slice_at, ring, cursor.slot)
