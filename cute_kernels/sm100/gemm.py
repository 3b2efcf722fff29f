"""Blackwell (sm_100a) GEMM kernel family in CuTe DSL: D_i = epilogue(A @ B^T).

One kernel class serves dense, grouped-along-M and K-grouped (weight gradient) problems
with every epilogue of `cute_kernels.epilogue` (called only through its hooks: `apply`,
`row_term` and its declared inputs/outputs), 1-CTA and 2-CTA UMMA, any cluster shape of
the sm100 config space, and either majorness of A (M or K) and B (N or K).

A CTA (persistent, one per SM) is warp-specialised:
- warps 0-3 (epilogue): warp 0 allocates the accumulator in tensor memory (TMEM); each
  tile's accumulator stage is read TMEM -> registers (`tcgen05.ld`), released to the MMA
  warp right after the last sub-tile's load, passed through the epilogue hooks in fp32,
  converted, written to shared memory and TMA-stored (warp 0 issues the stores).
- warp 4 (MMA): issues `tcgen05.mma` (with cta_group 2 only the even CTA of a pair, for
  a 256-row tile over both CTAs' shared memory) into an accumulator stage, and commits
  it to the epilogue; `acc_stages` = 2 stages, so the epilogue of one tile overlaps the
  MMAs of the next.
- warp 5 (TMA): loads A and B stages into a shared-memory ring (A multicast along the
  cluster's N, B along its M; with cta_group 2 each CTA of a pair loads half of B).
- warp 6 (K-grouped only): writes per-CTA TMA descriptors cut at an expert's last token
  ahead of the TMA warp (gemm_base.descriptors, the scheme sm90 uses; a K block wholly
  inside an expert reads through the launch's own descriptors; the TMA warp's side of the
  protocol is gemm_base.descriptors.KGroupedLoads, shared with sm90).
Tiles are walked by the static persistent walk of gemm_base.tile_walk (cluster c of G takes
work c, c+G, ... in the banded order of cute_kernels.tile_scheduler), identically in every
warp; the epilogue hooks run through gemm_base.epilogue_io.visit_subtile.

Grouped along M: cu_rows / cu_tiles as on sm90 (tiles per expert rounded up to a multiple
of cluster_m, which is even with cta_group 2, so a CTA pair is always on one expert);
rows past an expert's end are computed and dropped by the ragged store view.

Row sums (dsrelu `row_sum`) are one fp32 partial per (row, N tile) in an
(M, ceil(N / tile_n)) tensor, written once each (no atomics); the host sums them.
Nothing of this kernel has run on hardware here: it is compile-verified (PTX and ptxas
checks in tests/test_compile_sm100.py); `cute_kernels.selfcheck` checks it on a B200.
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.utils.blackwell_helpers as sm100_utils
from cutlass import Float32, Int32, const_expr
from cutlass.cute.nvgpu import cpasync, tcgen05
from cutlass.memory import SmemAllocator, TmemAllocator, get_num_tmem_alloc_cols
from cutlass.pipeline import pipeline_init_arrive, pipeline_init_wait
from cutlass.tensor_utils import LayoutEnum

from ..epilogue import EpilogueSpec
from ..gemm_base import grouping
from ..gemm_base.descriptors import (DescriptorCursor, DescriptorRing, KGroupedLoads, expert_k_blocks,
                                     load_ab_stage)
from ..gemm_base.epilogue_io import visit_subtile
from ..gemm_base.kernel_base import GemmKernelBase
from ..gemm_base.tile_walk import TileWalk, launch_geometry
from .config import Sm100Config
from .epilogue_io import load_row_chunks, thread_row_layout

EPI_WARPS = (0, 1, 2, 3)
MMA_WARP = 4
TMA_WARP = 5
DESC_WARP = 6  # K-grouped only
EPI_BARRIER_ID = 1
TMEM_ALLOC_BARRIER_ID = 2


def _transform_acc_layout(t: cute.Tensor) -> cute.Tensor:
    """((ATOM_M, ATOM_N), MMA_M, MMA_N, ...) -> ((ATOM_M, MMA_M), (ATOM_N, MMA_N), ...): the
    accumulator as a (rows, columns, stage) tensor the epilogue tiles by (rows, epi_n)."""
    shape, stride = t.layout.shape, t.layout.stride
    layout = cute.make_layout(((shape[0][0], shape[1]), (shape[0][1], shape[2]), *shape[3:]),
                              stride=((stride[0][0], stride[1]), (stride[0][1], stride[2]), *stride[3:]))
    return cute.make_tensor(t.iterator, layout)


class Sm100Gemm(GemmKernelBase):
    """`cute.compile(Sm100Gemm(...), a, b, d0, d1, scale, aux, rowsum, cu_rows, cu_tiles, desc_ws, max_clusters, stream)`
    (the sm90 kernel's signature)."""

    def __init__(self, cfg: Sm100Config, epi: EpilogueSpec, *, grouped: bool, ab_stages: int, grouped_k: bool = False):
        super().__init__(cfg, epi, grouped=grouped, grouped_k=grouped_k, ab_stages=ab_stages)
        self.two_cta = cfg.cta_group == 2
        self.mma_tiler = (cfg.mma_tile_m, cfg.tile_n, cfg.tile_k)
        self.num_warps = 7 if grouped_k else 6
        self.threads_per_cta = 32 * self.num_warps

    # ------------------------------------------------------------------ host side
    @cute.jit
    def __call__(self, mA: cute.Tensor, mB: cute.Tensor, mD0: cute.Tensor, mD1, mScale, mAux, mRowSum,
                 mCuRows, mCuTiles, mDescWs, mSA, mSB, mQS, mARows, max_clusters: Int32, stream):
        # mSA, mSB, mQS (block-scaled FP8 operands' scales, a quantized output's scales) are None:
        # sm100 has no block-scaled kernel yet (archs.Arch.block_scaled_fp8); mARows (gathered A
        # rows) is None: no gathering producer yet (archs.Arch.gathers_a)
        cfg = self.cfg
        self.ab_dtype = mA.element_type
        self.d_dtype = mD0.element_type
        self.d_layout = LayoutEnum.from_tensor(mD0)
        a_major = LayoutEnum.from_tensor(mA).mma_major_mode()
        b_major = LayoutEnum.from_tensor(mB).mma_major_mode()
        cta_group = tcgen05.CtaGroup.TWO if const_expr(self.two_cta) else tcgen05.CtaGroup.ONE
        tiled_mma = sm100_utils.make_trivial_tiled_mma(self.ab_dtype, mB.element_type, a_major, b_major, Float32,
                                                       cta_group, self.mma_tiler[:2])
        cluster_layout_vmnk = cute.tiled_divide(cute.make_layout((*self.cluster_shape_mn, 1)),
                                                (tiled_mma.thr_id.shape,))
        a_smem_staged = sm100_utils.make_smem_layout_a(tiled_mma, self.mma_tiler, self.ab_dtype, self.ab_stages)
        b_smem_staged = sm100_utils.make_smem_layout_b(tiled_mma, self.mma_tiler, self.ab_dtype, self.ab_stages)
        epi_smem_staged = sm100_utils.make_smem_layout_epi(self.d_dtype, self.d_layout, self.epi_tile, cfg.epi_stages)

        a_smem_one = cute.slice_(a_smem_staged, (None, None, None, 0))
        b_smem_one = cute.slice_(b_smem_staged, (None, None, None, 0))
        tma_a, tma_mA = cute.nvgpu.make_tiled_tma_atom_A(
            sm100_utils.cluster_shape_to_tma_atom_A(self.cluster_shape_mn, tiled_mma.thr_id),
            mA, a_smem_one, self.mma_tiler, tiled_mma, cluster_layout_vmnk.shape)
        tma_b, tma_mB = cute.nvgpu.make_tiled_tma_atom_B(
            sm100_utils.cluster_shape_to_tma_atom_B(self.cluster_shape_mn, tiled_mma.thr_id),
            mB, b_smem_one, self.mma_tiler, tiled_mma, cluster_layout_vmnk.shape)
        # a stage's bytes arriving on the (leader CTA's) barrier: both CTAs' halves with cta_group 2
        self.tx_bytes = (cute.size_in_bytes(self.ab_dtype, a_smem_one)
                         + cute.size_in_bytes(self.ab_dtype, b_smem_one)) * cute.size(tiled_mma.thr_id.shape)

        epi_smem_one = cute.slice_(epi_smem_staged, (None, None, 0))
        tma_d0, tma_mD0, tma_d1, tma_mD1 = self.output_store_atoms(mD0, mD1, epi_smem_one, epi_smem_one)

        acc_shape = tiled_mma.partition_shape_C(self.mma_tiler[:2])
        acc_fake = tiled_mma.make_fragment_C(cute.append(acc_shape, cfg.acc_stages))
        self.tmem_cols = get_num_tmem_alloc_cols(acc_fake, arch="sm_100")

        m_total = cute.size(mA, mode=[0])
        n_total = cute.size(mB, mode=[0])
        k_total = cute.size(mA, mode=[1])
        num_m_tiles, num_n_tiles, num_experts, num_clusters = launch_geometry(
            cfg, mA, mB, mCuRows, grouped=self.grouped, grouped_k=self.grouped_k, max_clusters=max_clusters)

        epi_elems = cute.cosize(epi_smem_staged)

        @cute.struct
        class SharedStorage:
            ab_bars: cute.struct.MemRange[cutlass.Int64, self.ab_stages * 2]
            acc_bars: cute.struct.MemRange[cutlass.Int64, cfg.acc_stages * 2]
            desc_bars: cute.struct.MemRange[cutlass.Int64, 2 * self.desc_slots]
            tmem_dealloc_bar: cutlass.Int64
            tmem_ptr: cutlass.Int32
            sA: cute.struct.Align[cute.struct.MemRange[self.ab_dtype, cute.cosize(a_smem_staged)], 1024]
            sB: cute.struct.Align[cute.struct.MemRange[self.ab_dtype, cute.cosize(b_smem_staged)], 1024]
            sD0: cute.struct.Align[cute.struct.MemRange[self.d_dtype, epi_elems], 1024]
            sD1: cute.struct.Align[cute.struct.MemRange[self.d_dtype, epi_elems if self.num_outputs == 2 else 8], 1024]

        self.shared_storage = SharedStorage

        self.kernel(
            tiled_mma, tma_a, tma_mA, tma_b, tma_mB, tma_d0, tma_mD0, tma_d1, tma_mD1,
            mScale, mAux, mRowSum, mCuRows, mCuTiles,
            mA if const_expr(self.grouped_k) else None, mB if const_expr(self.grouped_k) else None, mDescWs,
            cluster_layout_vmnk, a_smem_staged, b_smem_staged, epi_smem_staged, acc_fake.layout,
            m_total, n_total, k_total, num_m_tiles, num_n_tiles, num_experts,
        ).launch(
            grid=(cfg.cluster_m, cfg.cluster_n, num_clusters),
            block=[self.threads_per_cta, 1, 1],
            cluster=(cfg.cluster_m, cfg.cluster_n, 1),
            min_blocks_per_mp=1,
            stream=stream,
        )

    # ---------------------------------------------------------------- device side
    def _k_tiles(self, walk, expert, k_tiles):
        if const_expr(self.grouped_k):
            _, _, kt = grouping.k_range(walk.mCuRows, expert, self.tile_k)
            return kt
        return k_tiles

    @cute.kernel
    def kernel(
        self,
        tiled_mma: cute.TiledMma,
        tma_a: cute.CopyAtom, mA: cute.Tensor,
        tma_b: cute.CopyAtom, mB: cute.Tensor,
        tma_d0: cute.CopyAtom, mD0: cute.Tensor,
        tma_d1: cute.CopyAtom, mD1: cute.Tensor,
        mScale, mAux, mRowSum, mCuRows, mCuTiles,
        mA_gmem, mB_gmem, mDescWs,
        cluster_layout_vmnk: cute.Layout,
        a_smem_staged: cute.ComposedLayout,
        b_smem_staged: cute.ComposedLayout,
        epi_smem_staged: cute.ComposedLayout,
        acc_layout: cute.Layout,
        m_total: Int32, n_total: Int32, k_total: Int32, num_m_tiles: Int32, num_n_tiles: Int32, num_experts: Int32,
    ):
        cfg = self.cfg
        tidx, _, _ = cute.arch.thread_idx()
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        if warp_idx == TMA_WARP:
            cpasync.prefetch_descriptor(tma_a)
            cpasync.prefetch_descriptor(tma_b)
        if warp_idx == EPI_WARPS[0]:
            cpasync.prefetch_descriptor(tma_d0)
            if const_expr(self.num_outputs == 2):
                cpasync.prefetch_descriptor(tma_d1)

        bidx, bidy, _ = cute.arch.block_idx()
        cta_mn = (bidx, bidy)  # the CTA's place in its cluster (the grid's first two dims are the cluster's)
        mma_v = bidx % cfg.cta_group  # 0: the CTA that issues a pair's MMA
        is_leader = mma_v == 0
        cta_rank = cute.arch.make_warp_uniform(cute.arch.block_idx_in_cluster())
        coord_vmnk = cluster_layout_vmnk.get_flat_coord(cta_rank)

        storage = SmemAllocator().allocate(self.shared_storage)
        num_mcast_a = cute.size(cluster_layout_vmnk.shape[2])
        num_mcast_b = cute.size(cluster_layout_vmnk.shape[1])
        ab_pipeline = pipeline.PipelineTmaUmma.create(
            barrier_storage=storage.ab_bars.data_ptr(),
            num_stages=self.ab_stages,
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread),
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, num_mcast_a + num_mcast_b - 1),
            tx_count=self.tx_bytes,
            cta_layout_vmnk=cluster_layout_vmnk,
            defer_sync=True,
        )
        acc_pipeline = pipeline.PipelineUmmaAsync.create(
            barrier_storage=storage.acc_bars.data_ptr(),
            num_stages=cfg.acc_stages,
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread),
            # one arrival per epilogue warp, of both CTAs of a pair
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, len(EPI_WARPS) * cfg.cta_group),
            cta_layout_vmnk=cluster_layout_vmnk,
            defer_sync=True,
        )
        desc_pipeline = None
        if const_expr(self.grouped_k):
            desc_pipeline = pipeline.PipelineAsync.create(
                barrier_storage=storage.desc_bars.data_ptr(),
                num_stages=self.desc_slots,
                producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 32),
                consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 32),
                defer_sync=True,
            )
        tmem = TmemAllocator(
            storage.tmem_ptr.ptr,
            barrier_for_retrieve=pipeline.NamedBarrier(barrier_id=TMEM_ALLOC_BARRIER_ID,
                                                       num_threads=32 * (len(EPI_WARPS) + 1)),
            allocator_warp_id=EPI_WARPS[0],
            is_two_cta=self.two_cta,
            two_cta_tmem_dealloc_mbar_ptr=storage.tmem_dealloc_bar.ptr,
        )
        pipeline_init_arrive(cluster_shape_mn=cluster_layout_vmnk, is_relaxed=True)

        sA = storage.sA.get_tensor(a_smem_staged.outer, swizzle=a_smem_staged.inner)
        sB = storage.sB.get_tensor(b_smem_staged.outer, swizzle=b_smem_staged.inner)
        sD0 = storage.sD0.get_tensor(epi_smem_staged.outer, swizzle=epi_smem_staged.inner)
        sD1 = sD0
        if const_expr(self.num_outputs == 2):
            sD1 = storage.sD1.get_tensor(epi_smem_staged.outer, swizzle=epi_smem_staged.inner)

        k_tiles = (k_total + self.tile_k - 1) // self.tile_k
        walk = TileWalk(cfg, grouped=self.grouped, grouped_k=self.grouped_k, m_total=m_total, num_m_tiles=num_m_tiles,
                        num_n_tiles=num_n_tiles, num_experts=num_experts, mCuRows=mCuRows, mCuTiles=mCuTiles)
        num_work = walk.num_work
        cluster_id = cute.arch.block_idx()[2]
        num_launched = cute.arch.grid_dim()[2]
        ring = None
        if const_expr(self.grouped_k):
            ring = DescriptorRing(mDescWs, self.desc_slots, cluster_id, cute.make_layout((*self.cluster_shape_mn, 1)),
                                  cta_rank)

        pipeline_init_wait(cluster_shape_mn=cluster_layout_vmnk)

        if warp_idx == TMA_WARP:
            self._tma_warp(tiled_mma, tma_a, mA, tma_b, mB, sA, sB, ab_pipeline, desc_pipeline, ring,
                           cluster_layout_vmnk, coord_vmnk, mma_v, walk, cta_mn, cluster_id, num_launched, num_work,
                           k_tiles)
        if warp_idx == MMA_WARP:
            self._mma_warp(tiled_mma, sA, sB, acc_layout, tmem, ab_pipeline, acc_pipeline, is_leader, walk, cta_mn,
                           cluster_id, num_launched, num_work, k_tiles)
        if const_expr(self.grouped_k):
            if warp_idx == DESC_WARP:
                ring.run_writer(desc_pipeline, walk, tma_a, tma_b, mA_gmem, mB_gmem, self.tile_k, cluster_id,
                                num_launched)
        if warp_idx < MMA_WARP:
            self._epilogue_warps(tidx, warp_idx, tiled_mma, acc_layout, tmem, acc_pipeline, tma_d0, mD0, tma_d1, mD1,
                                 sD0, sD1, mScale, mAux, mRowSum, walk, cta_mn, cluster_id, num_launched, num_work,
                                 n_total)

    # ---------------------------------------------------------------- TMA warp
    @cute.jit
    def _tma_warp(self, tiled_mma, tma_a, mA, tma_b, mB, sA, sB, ab_pipeline, desc_pipeline, ring,
                  cluster_layout_vmnk, coord_vmnk, mma_v, walk, cta_mn, cluster_id, num_launched, num_work, k_tiles):
        thr_mma = tiled_mma.get_slice(mma_v)
        a_cta_layout = cute.make_layout(cute.slice_(cluster_layout_vmnk, (0, 0, None, 0)).shape)
        b_cta_layout = cute.make_layout(cute.slice_(cluster_layout_vmnk, (0, None, 0, 0)).shape)
        a_mask = None
        b_mask = None
        if const_expr(self.cfg.cluster_size > 1):
            a_mask = cpasync.create_tma_multicast_mask(cluster_layout_vmnk, coord_vmnk, mcast_mode=2)
            b_mask = cpasync.create_tma_multicast_mask(cluster_layout_vmnk, coord_vmnk, mcast_mode=1)
        state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.ab_stages)
        kg, cursor = None, None  # grouped_k: this CTA's side of the descriptor ring, and its cursor
        if const_expr(self.grouped_k):
            kg, cursor = KGroupedLoads(ring, desc_pipeline, self.ab_stages), DescriptorCursor.start()
        t = cluster_id
        while t < num_work:
            row_start, _, n_tile, expert = walk.coords(t, cta_mn)
            mma_row_start = row_start - mma_v * self.tile_m  # the pair's first row (cta_group 2)
            tile_k_tiles = k_tiles
            full_k_tiles = k_tiles
            if const_expr(self.grouped_k):
                k_start, tile_k_tiles, full_k_tiles = expert_k_blocks(walk.mCuRows, expert, self.tile_k)
                gA = cute.local_tile(cute.domain_offset((mma_row_start, k_start), mA[None, None, 0]),
                                     (self.mma_tiler[0], self.tile_k), (0, None))
                gB = cute.local_tile(cute.domain_offset((0, k_start), mB[None, None, 0]),
                                     (self.tile_n, self.tile_k), (n_tile, None))
            else:
                gA = cute.local_tile(cute.domain_offset((mma_row_start, 0), mA[None, None, 0]),
                                     (self.mma_tiler[0], self.tile_k), (0, None))
                gB = cute.local_tile(mB[None, None, expert], (self.tile_n, self.tile_k), (n_tile, None))
            tAsA, tAgA = cpasync.tma_partition(tma_a, coord_vmnk[2], a_cta_layout, cute.group_modes(sA, 0, 3),
                                               cute.group_modes(thr_mma.partition_A(gA), 0, 3))
            tBsB, tBgB = cpasync.tma_partition(tma_b, coord_vmnk[1], b_cta_layout, cute.group_modes(sB, 0, 3),
                                               cute.group_modes(thr_mma.partition_B(gB), 0, 3))
            for kt in cutlass.range(tile_k_tiles, unroll=1):
                if const_expr(self.grouped_k):
                    cursor = kg.acquire_stage(cursor, ab_pipeline, state, kt, full_k_tiles, expert)
                else:
                    ab_pipeline.producer_acquire(state)
                bar = ab_pipeline.producer_get_barrier(state)
                if const_expr(self.grouped_k):
                    kg.load_stage(cursor, kt, full_k_tiles, tma_a, tAgA, tAsA, a_mask, tma_b, tBgB, tBsB, b_mask, bar,
                                  (kt, state.index))
                else:
                    load_ab_stage(tma_a, tAgA, tAsA, a_mask, tma_b, tBgB, tBsB, b_mask, bar, (kt, state.index))
                ab_pipeline.producer_commit(state)
                state.advance()
            t += num_launched
        ab_pipeline.producer_tail(state)

    # ---------------------------------------------------------------- MMA warp
    @cute.jit
    def _mma_warp(self, tiled_mma, sA, sB, acc_layout, tmem, ab_pipeline, acc_pipeline, is_leader, walk, cta_mn,
                  cluster_id, num_launched, num_work, k_tiles):
        tCrA = tiled_mma.make_fragment_A(sA)
        tCrB = tiled_mma.make_fragment_B(sB)
        num_k_blocks = cute.size(tCrA, mode=[2])
        tmem.wait_for_alloc()
        acc_base = cute.make_tensor(tmem.retrieve_ptr(Float32), acc_layout)
        acc_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.cfg.acc_stages)
        read_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.ab_stages)
        t = cluster_id
        while t < num_work:
            _, _, _, expert = walk.coords(t, cta_mn)
            tile_k_tiles = self._k_tiles(walk, expert, k_tiles)
            acc = acc_base[(None, None, None, acc_state.index)]
            if is_leader:
                acc_pipeline.producer_acquire(acc_state)
                tiled_mma.set(tcgen05.Field.ACCUMULATE, False)  # the tile's first k-block overwrites the stage
                for kt in cutlass.range(tile_k_tiles, unroll=1):
                    ab_pipeline.consumer_wait(read_state)
                    for kb in cutlass.range(num_k_blocks, unroll_full=True):
                        coord = (None, None, kb, read_state.index)
                        cute.gemm(tiled_mma, acc, tCrA[coord], tCrB[coord], acc)
                        tiled_mma.set(tcgen05.Field.ACCUMULATE, True)
                    ab_pipeline.consumer_release(read_state)  # tcgen05.commit: frees the stage when the MMAs are done
                    read_state.advance()
                acc_pipeline.producer_commit(acc_state)
            acc_state.advance()
            t += num_launched
        acc_pipeline.producer_tail(acc_state)

    # ---------------------------------------------------------------- epilogue warps
    @cute.jit
    def _epilogue_warps(self, tidx, warp_idx, tiled_mma, acc_layout, tmem, acc_pipeline, tma_d0, mD0, tma_d1, mD1,
                        sD0, sD1, mScale, mAux, mRowSum, walk, cta_mn, cluster_id, num_launched, num_work, n_total):
        cfg, epi = self.cfg, self.epi
        two_outputs = const_expr(self.num_outputs == 2)
        tmem.allocate(self.tmem_cols)
        tmem.wait_for_alloc()
        tmem_ptr = tmem.retrieve_ptr(Float32)
        acc_all = _transform_acc_layout(cute.make_tensor(tmem_ptr, acc_layout))  # (rows, cols, stage)
        acc_epi = cute.flat_divide(acc_all, self.epi_tile)  # (EPI_M, EPI_N, 1, num_epi, stage)
        t2r_atom = sm100_utils.get_tmem_load_op((self.tile_m, self.tile_n, self.tile_k), self.d_layout, self.d_dtype,
                                                Float32, self.epi_tile, self.two_cta)
        tiled_t2r = tcgen05.make_tmem_copy(t2r_atom, acc_epi[(None, None, 0, 0, 0)])
        thr_t2r = tiled_t2r.get_slice(tidx)
        tTR_tAcc = thr_t2r.partition_S(acc_epi)  # (T2R, T2R_M, T2R_N, 1, num_epi, stage)
        tTR_cEpi = thr_t2r.partition_D(cute.make_identity_tensor(self.epi_tile))
        frag_shape = tTR_cEpi.shape
        frag_size = cute.size(frag_shape)
        thread_row_layout(tTR_cEpi, frag_size)
        tTR_rAcc = cute.make_rmem_tensor(frag_shape, Float32)
        r2s_atom = sm100_utils.get_smem_store_op(self.d_layout, self.d_dtype, Float32, tiled_t2r)
        tiled_r2s = cute.make_tiled_copy_D(r2s_atom, tiled_t2r)
        thr_r2s = tiled_r2s.get_slice(tidx)
        tRS_sD0 = thr_r2s.partition_D(sD0)
        tRS_sD1 = thr_r2s.partition_D(sD1)
        num_epi = self.tile_n // cfg.epi_n
        row_in_tile = tTR_cEpi[0][0]
        layer = 0

        epi_barrier = pipeline.NamedBarrier(barrier_id=EPI_BARRIER_ID, num_threads=32 * len(EPI_WARPS))
        store_pipeline = pipeline.PipelineTmaStore.create(
            num_stages=cfg.epi_stages,
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 32 * len(EPI_WARPS)),
        )
        acc_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, cfg.acc_stages)
        local_tile = Int32(0)
        t = cluster_id
        while t < num_work:
            row_start, row_end, n_tile, expert = walk.coords(t, cta_mn)
            if const_expr(self.grouped_k):
                layer = expert
            row = row_start + row_in_tile
            safe_row = cutlass.max(cutlass.min(row, row_end - 1), 0)  # rows past the end are never stored
            scale = Float32(1.0)
            if const_expr(epi.row_scale):
                scale = Float32(mScale[safe_row])
            row_sum = Float32(0.0)  # one row per thread (epilogue_io.thread_row_layout)
            col_tile = n_tile * self.tile_n
            gD0 = grouping.output_tile(mD0, row_start, row_end, n_tile, walk.m_total, expert,
                                       (self.tile_m, self.tile_n), grouped=self.grouped, grouped_k=self.grouped_k)
            bSG_sD0, bSG_gD0 = cpasync.tma_partition(tma_d0, 0, cute.make_layout(1), cute.group_modes(sD0, 0, 2),
                                                     cute.zipped_divide(gD0, self.epi_tile))
            bSG_sD1, bSG_gD1 = bSG_sD0, bSG_gD0
            if const_expr(two_outputs):
                gD1 = grouping.output_tile(mD1, row_start, row_end, n_tile, walk.m_total, expert,
                                           (self.tile_m, self.tile_n), grouped=self.grouped, grouped_k=self.grouped_k)
                bSG_sD1, bSG_gD1 = cpasync.tma_partition(tma_d1, 0, cute.make_layout(1), cute.group_modes(sD1, 0, 2),
                                                         cute.zipped_divide(gD1, self.epi_tile))
            acc_pipeline.consumer_wait(acc_state)
            # a run-time loop (as CUTLASS's): unrolled, the compiler hoists every sub-tile's
            # epilogue-input loads to the top and a heavy epilogue spills
            for e in cutlass.range(num_epi, unroll=1):
                cute.copy(tiled_t2r, tTR_tAcc[(None, None, None, 0, e, acc_state.index)], tTR_rAcc)
                if e == num_epi - 1:
                    # the whole stage is in registers: hand it back so the next tile's MMAs start
                    cute.arch.fence_view_async_tmem_load()
                    with cute.arch.elect_one():
                        acc_pipeline.consumer_release(acc_state)
                aux = None
                if const_expr(epi.aux_input):
                    aux = cute.make_rmem_tensor(frag_shape, mAux.element_type)
                    load_row_chunks(mAux, aux, safe_row, col_tile + e * cfg.epi_n, n_total, layer, frag_size)
                # the epilogue's hooks, in fp32 (gemm_base.epilogue_io)
                part = [Float32(0.0)]
                outs = visit_subtile(epi, tTR_rAcc, frag_shape, frag_size, row_scales=[scale], row_of=[0] * frag_size,
                                     aux=aux, row_sums=part)
                row_sum = row_sum + part[0]
                buf = (local_tile * num_epi + e) % cfg.epi_stages
                # wait for this buffer's previous store to have left shared memory only now, just
                # before it is rewritten
                if warp_idx == EPI_WARPS[0]:
                    store_pipeline.producer_acquire()
                epi_barrier.arrive_and_wait()
                out0 = cute.make_rmem_tensor(frag_shape, self.d_dtype)
                out0.store(outs[0].to(self.d_dtype))
                cute.copy(tiled_r2s, tiled_r2s.retile(out0), tRS_sD0[(None, None, None, buf)])
                if const_expr(two_outputs):
                    out1 = cute.make_rmem_tensor(frag_shape, self.d_dtype)
                    out1.store(outs[1].to(self.d_dtype))
                    cute.copy(tiled_r2s, tiled_r2s.retile(out1), tRS_sD1[(None, None, None, buf)])
                cute.arch.fence_proxy("async.shared", space="cta")
                epi_barrier.arrive_and_wait()
                if warp_idx == EPI_WARPS[0]:
                    cute.copy(tma_d0, bSG_sD0[(None, buf)], bSG_gD0[(None, e)])
                    if const_expr(two_outputs):
                        cute.copy(tma_d1, bSG_sD1[(None, buf)], bSG_gD1[(None, e)])
                    store_pipeline.producer_commit()
            if const_expr(epi.row_sum):
                # a cluster's CTA past the last N tile (odd tile counts) has no partial column
                if row < row_end:
                    if n_tile < cute.size(mRowSum, mode=[1]):
                        mRowSum[(row, n_tile)] = row_sum
            acc_state.advance()
            local_tile += 1
            t += num_launched
        if warp_idx == EPI_WARPS[0]:
            store_pipeline.producer_tail()
        tmem.relinquish_alloc_permit()
        tmem.free(tmem_ptr)
