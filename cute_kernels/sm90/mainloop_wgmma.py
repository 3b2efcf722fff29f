"""The bf16/fp16 WGMMA mainloop of the Hopper GEMM (traced inside `Sm90Gemm.kernel`).

One tile's K loop: per K tile, wait for its operand stage, issue its WGMMAs (one commit
group) into the fp32 accumulator, and free the stage of the K tile before (wait_group 1),
so one K tile's WGMMAs are always in flight while the next is issued.  The first k-block
runs with accumulate off (no zero fill, so ptxas injects no extra warpgroup.arrive); a
wgmma.fence per K tile as in CUTLASS's mainloops.

The loop ends with the last K tile's WGMMAs still in flight: `run` returns there and `drain`
waits for them and frees the last stage, so the kernel can issue work that overlaps the
last K tile (the epilogue input's first loads) in between.

The block-scaled FP8 mainloop is `mainloop_fp8.BlockScaledMainloop`; the producer, the tile
walk, the pipelines and the epilogue are the GEMM family's.
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import const_expr
from cutlass.cute.nvgpu import warpgroup

from ..gemm_base.traced import TracedRecord


class WgmmaMainloop(TracedRecord):
    """Trace-time helper: one tile's bf16/fp16 K loop (see the module docstring).

    `gathered`: A's stages were written by cp.async (sm90/gather_producer.py), so each stage
    is fenced into the async proxy before WGMMA reads it."""

    _traced = ("tCrA", "tCrB")

    def __init__(self, tCrA, tCrB, num_k_blocks: int, gathered: bool):
        self.tCrA, self.tCrB = tCrA, tCrB
        self.num_k_blocks = num_k_blocks
        self.gathered = gathered

    def _stage_fence(self):
        """gather_a: A's stage was written by cp.async (generic proxy) and WGMMA reads it through
        the async proxy; after the full barrier, order the two (nothing for TMA-loaded stages)."""
        if const_expr(self.gathered):
            cute.arch.fence_proxy("async.shared", space="cta")

    @cute.jit
    def run(self, tiled_mma, acc, ab_pipeline, read_state, release_state, k_tiles):
        """Issue every K tile's WGMMAs into `acc`; the last tile's stay in flight (`drain`).
        Returns (tiled_mma, read_state, release_state) for the caller to rebind (traced values
        its own loop carries)."""
        ab_pipeline.consumer_wait(read_state)
        self._stage_fence()
        warpgroup.fence()
        for kb in cutlass.range_constexpr(self.num_k_blocks):
            tiled_mma.set(warpgroup.Field.ACCUMULATE, kb != 0)
            cute.gemm(tiled_mma, acc, self.tCrA[(None, None, kb, read_state.index)],
                      self.tCrB[(None, None, kb, read_state.index)], acc)
        warpgroup.commit_group()
        read_state.advance()
        tiled_mma.set(warpgroup.Field.ACCUMULATE, True)
        for kt in range(1, k_tiles):
            ab_pipeline.consumer_wait(read_state)
            self._stage_fence()
            warpgroup.fence()
            for kb in cutlass.range_constexpr(self.num_k_blocks):
                cute.gemm(tiled_mma, acc, self.tCrA[(None, None, kb, read_state.index)],
                          self.tCrB[(None, None, kb, read_state.index)], acc)
            warpgroup.commit_group()
            warpgroup.wait_group(1)
            ab_pipeline.consumer_release(release_state)
            release_state.advance()
            read_state.advance()
        return tiled_mma, read_state, release_state

    @staticmethod
    def drain(ab_pipeline, release_state):
        """Wait for the last K tile's WGMMAs and free its stage (the caller advances
        `release_state` in its own body: the tracer carries through a loop only the states whose
        methods the loop body itself calls)."""
        warpgroup.wait_group(0)
        ab_pipeline.consumer_release(release_state)
