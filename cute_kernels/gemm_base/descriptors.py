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
load has landed.  The base address stays the operand's own (an earlier design moved it
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
