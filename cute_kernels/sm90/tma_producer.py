"""The TMA producer warp of the Hopper GEMM (traced inside `Sm90Gemm.kernel`).

Warp 0 of the producer warpgroup walks this CTA's tiles (`gemm_base.tile_walk.TileWalk`,
work indices start, start + step, ...) and fills the operand ring: per K tile it acquires a
stage and issues the TMA loads of A's and B's blocks, both completing on the stage's full
barrier (multicast across the cluster: A along cluster N, B along cluster M).

Grouped along K, an expert's whole K blocks load through the launch's own descriptors; its
last partial block (or an empty expert's block) loads through the cut descriptors the writer
warp prepared in this CTA's `gemm_base.descriptors.DescriptorRing` (the protocol is that
module's docstring; its producer side, shared with sm100, is `KGroupedLoads`).  Dense problems whose epilogue input is not prefetched into registers
TMA-prefetch it into L2 AUX_L2_LEAD K blocks before the tile's last load (`epilogue_aux`).
Block-scaled FP8 with its scales in shared memory (`KernelKey.scales_smem`): the warp's lanes
also copy each K tile's scales into the stage's scale slot (`scale_stage.StageScaleCopier`).

The gathering producer (A's rows by index, cp.async) is `gather_producer.GatherProducer`.
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
from cutlass import const_expr
from cutlass.cute.nvgpu import cpasync

from ..gemm_base.descriptors import DescriptorCursor, DescriptorRing, KGroupedLoads, expert_k_blocks, load_ab_stage
from .epilogue_aux import AUX_L2_LEAD


class TmaProducer:
    """Trace-time helper of the TMA producer warp (see the module docstring)."""

    def __init__(self, tile_m: int, tile_n: int, tile_k: int, ab_stages: int, desc_slots: int, epi_tile, *,
                 grouped_k: bool, aux_l2: bool, scale_copier=None):
        self.tile_m, self.tile_n, self.tile_k = tile_m, tile_n, tile_k
        self.ab_stages = ab_stages
        self.desc_slots = desc_slots
        self.epi_tile = epi_tile
        self.grouped_k = grouped_k
        self.aux_l2 = aux_l2
        self.scale_copier = scale_copier  # a scale_stage.StageScaleCopier, or None

    @cute.jit
    def run(self, walk, ab_pipeline, desc_pipeline, tma_a, mA, sA, a_mcast_mask, tma_b, mB, sB, b_mcast_mask,
            cta_layout_mnk, cluster_coord, cta_rank, mCuRows, mDescWs, k_tiles, start, step, tma_aux, mAuxTma, sD0,
            scales=None):
        """Walk this CTA's tiles and load every K tile's A and B blocks into the operand ring;
        `scales` = (sScales, mSA, mSB, m_total) with a `scale_copier`: the K tile's scales too."""
        a_cta_layout = cute.make_layout(cute.slice_(cta_layout_mnk, (0, None, 0)).shape)
        b_cta_layout = cute.make_layout(cute.slice_(cta_layout_mnk, (None, 0, 0)).shape)
        state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.ab_stages)
        kg, cursor = None, None  # grouped_k: this CTA's side of the descriptor ring, and its cursor
        if const_expr(self.grouped_k):
            ring = DescriptorRing(mDescWs, self.desc_slots, start, cta_layout_mnk, cta_rank)
            kg, cursor = KGroupedLoads(ring, desc_pipeline, self.ab_stages), DescriptorCursor.start()
        t = start
        while t < walk.num_work:
            row_start, row_end, n_tile, expert = walk.coords(t, cluster_coord)
            tile_k_tiles = k_tiles
            full_k_tiles = k_tiles  # grouped_k: K blocks read through the launch's own descriptors
            if const_expr(self.grouped_k):
                k_start, tile_k_tiles, full_k_tiles = expert_k_blocks(mCuRows, expert, self.tile_k)
                gA = cute.local_tile(cute.domain_offset((row_start, k_start), mA[None, None, 0]),
                                     (self.tile_m, self.tile_k), (0, None))
                gB = cute.local_tile(cute.domain_offset((0, k_start), mB[None, None, 0]),
                                     (self.tile_n, self.tile_k), (n_tile, None))
            else:
                gA = cute.local_tile(
                    cute.domain_offset((row_start, 0), mA[None, None, 0]), (self.tile_m, self.tile_k), (0, None)
                )
                gB = cute.local_tile(mB[None, None, expert], (self.tile_n, self.tile_k), (n_tile, None))
            tAsA, tAgA = cpasync.tma_partition(
                tma_a, cluster_coord[1], a_cta_layout, cute.group_modes(sA, 0, 2), cute.group_modes(gA, 0, 2)
            )
            tBsB, tBgB = cpasync.tma_partition(
                tma_b, cluster_coord[0], b_cta_layout, cute.group_modes(sB, 0, 2), cute.group_modes(gB, 0, 2)
            )
            aux_l2_at = cutlass.max(tile_k_tiles - AUX_L2_LEAD, 0)
            for kt in range(tile_k_tiles):
                if const_expr(self.aux_l2):
                    if kt == aux_l2_at:
                        self.prefetch_aux_l2(tma_aux, mAuxTma, sD0, row_start, n_tile)
                if const_expr(self.grouped_k):
                    cursor = kg.acquire_stage(cursor, ab_pipeline, state, kt, full_k_tiles, expert)
                else:
                    ab_pipeline.producer_acquire(state)
                bar = ab_pipeline.producer_get_barrier(state)
                a_src, a_dst = tAgA[(None, kt)], tAsA[(None, state.index)]
                b_src, b_dst = tBgB[(None, kt)], tBsB[(None, state.index)]
                if const_expr(self.grouped_k):
                    kg.load_stage(cursor, kt, full_k_tiles, tma_a, a_src, a_dst, a_mcast_mask, tma_b, b_src, b_dst,
                                  b_mcast_mask, bar)
                else:
                    load_ab_stage(tma_a, a_src, a_dst, a_mcast_mask, tma_b, b_src, b_dst, b_mcast_mask, bar)
                if const_expr(self.scale_copier is not None):
                    sScales, mSA, mSB, m_total = scales
                    self.scale_copier.load(sScales, mSA, mSB, row_start, m_total, n_tile, expert, kt, state.index, bar)
                ab_pipeline.producer_commit(state)
                state.advance()
            t += step
        ab_pipeline.producer_tail(state)

    def prefetch_aux_l2(self, tma_aux, mAuxTma, sD0, row_start, n_tile):
        """TMA-prefetch this tile's (tile_m, tile_n) block of the epilogue input into L2, one
        sub-tile box at a time (dense problems only: epilogue_aux.prefetches_aux_into_l2; boxes
        past M or N are skipped by TMA).  The epilogue's loads of it then hit L2."""
        g_tile = cute.local_tile(cute.domain_offset((row_start, n_tile * self.tile_n), mAuxTma[None, None, 0]),
                                 (self.tile_m, self.tile_n), (0, 0))
        _, tAux_g = cpasync.tma_partition(
            tma_aux, 0, cute.make_layout(1), cute.group_modes(sD0, 0, 2), cute.zipped_divide(g_tile, self.epi_tile)
        )
        with cute.arch.elect_one():  # one lane issues them (TMA copies elect their lane themselves)
            cute.prefetch(tma_aux, tAux_g)
