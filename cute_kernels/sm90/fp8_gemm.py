"""Hopper (sm_90a) FP8 GEMM with fine-grained block scaling: D_i = epilogue(dequant(A) @ dequant(B)^T).

Operands (both K-major, as Hopper's FP8 WGMMA requires):
- A (M, K) e4m3/e5m2 with scales SA (M, ceil(K / 128)) fp32: one per row and 128-K block;
- B (N, K) e4m3/e5m2 with scales SB (ceil(N / 128), ceil(K / 128)) fp32: one per 128x128 block.
Scale tensors may have any strides (column-major SA reads coalesced: a warp's rows are adjacent).

Mainloop, promotion every K tile (tile_k = 128 = the scale block): each K tile's WGMMAs run
into a scratch fp32 accumulator that starts from zero, and once they are done the consumer adds
scratch * SA[row, kt] * SB[n_block, kt] into the fp32 main accumulator (DeepSeek-V3's
promotion: the tensor core's reduced-precision FP8 accumulation never spans more than 128 of
K, and the per-block scales are applied in full fp32).  The accumulators live in registers,
so a warpgroup tile is 64 x 128; tile_n = 128 is one N block.  Two mainloops (`mainloop`):
- "serial": issue a K tile, wait_group 0, promote (64 + 64 registers per thread).  As in
  DeepGEMM's sm90 1d2d kernel, only the other consumer warpgroup's WGMMAs can fill the tensor
  core while one warpgroup promotes.
- "overlap": two scratch accumulators; K tile kt+1's WGMMAs are issued into the other one
  before tile kt is promoted (wait_group 1), so each warpgroup keeps the tensor core fed
  through its own promotions (64 x 3 registers per thread).

Epilogue (`Fp8Epilogue`): the fp32 math of `cute_kernels.epilogue.EpilogueSpec` (identity or
srelu), then per output either a bf16 store (stmatrix -> smem -> TMA) or the quantizing
stage of the recipe: per row of the tile (128 columns = one 1x128 block along the next
GEMM's K) amax over the four lanes holding the row, s = amax / fmax (optionally rounded up
to a power of two; 1 for an all-zero block), q = cast(value / s) stored by TMA, s stored
into an (M, ceil(N / 128)) fp32 scale tensor.  The quantized output is thus ready to be the
next GEMM's A operand (FC1's postact -> FC2) with no separate pass.

CTA: 384 threads, persistent, cooperative: warpgroup 0 is the TMA producer (warp 0, A
multicast along cluster N, B along cluster M), warpgroups 1-2 split each 128-row tile.
Dense problems only (grouped forms: see docs/fp8.md).
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.utils.hopper_helpers as sm90_utils
from cutlass import Float32, Int32, const_expr
from cutlass.cute.nvgpu import cpasync, warpgroup
from cutlass.memory import SmemAllocator
from cutlass.pipeline import pipeline_init_arrive, pipeline_init_wait
from cutlass.tensor_utils import LayoutEnum

from ..config import GemmConfig
from ..fp8.compile import MAINLOOPS
from ..fp8.epilogue import FMAX, Fp8Epilogue
from ..tile_scheduler import banded_coord_device

THREADS_PER_WG = 128
PRODUCER_REGS = 40
CONSUMER_REGS = 232
EPI_BARRIER_ID = 1
SCALE_BLOCK = 128  # the recipe's block: K tile of the mainloop, N tile of the quantizing epilogue
SMEM_CAPACITY = 232448
SMEM_RESERVED = 1024
MAX_AB_STAGES = 8


def check_fp8_config(cfg: GemmConfig) -> list[str]:
    """Reasons `cfg` is not a config of this kernel (empty when it is)."""
    errors = []
    if cfg.schedule != "cooperative" or cfg.tile_m != 128:
        errors.append("the FP8 GEMM runs cooperative 128-row tiles")
    if cfg.tile_n != SCALE_BLOCK:
        errors.append(f"the FP8 GEMM's tile_n is {SCALE_BLOCK} (one weight scale block; two fp32 accumulators)")
    if cfg.tile_k != SCALE_BLOCK:
        errors.append(f"the FP8 GEMM's tile_k is {SCALE_BLOCK} (promotion once per scale block)")
    if cfg.tile_n % cfg.epi_n or cfg.epi_n not in (32, 64):
        errors.append(f"epi_n must be 32 or 64 and divide tile_n, got {cfg.epi_n}")
    if cfg.cluster_m * cfg.cluster_n > 2:
        errors.append("clusters of at most 2 CTAs")
    return errors


def fp8_ab_stages(cfg: GemmConfig, epi: Fp8Epilogue) -> int:
    """Operand stages that fit next to the epilogue buffers (or cfg.ab_stages when set)."""
    if cfg.ab_stages:
        return cfg.ab_stages
    stage = (cfg.tile_m + cfg.tile_n) * cfg.tile_k  # one byte per element
    epi_bytes = cfg.tile_m * cfg.epi_n * cfg.epi_stages * (2 * len(epi.plain_outputs) + (1 if epi.quantized else 0))
    return max(2, min(MAX_AB_STAGES, (SMEM_CAPACITY - SMEM_RESERVED - epi_bytes - 2048) // stage))


def _row_offsets(coords, size: int) -> list:
    """Static row offset of each fragment element from the thread's first row (trace time):
    with one 64-row WGMMA block per warpgroup, rows r0 and r0 + 8."""
    offsets = [int(coords.layout(v)[0]) for v in range(size)]
    if sorted(set(offsets)) != [0, 8]:
        raise NotImplementedError(f"expected accumulator rows r0 and r0 + 8, got offsets {sorted(set(offsets))}")
    return offsets


def _permutation(coords_to, coords_from, size: int) -> list:
    """perm[j]: the element of `coords_from` at the coordinate of element j of `coords_to`
    (two partitions of one thread's epilogue sub-tile; trace time, fails if they differ)."""
    where = {}
    for v in range(size):
        c = coords_from.layout(v)
        where[(c[0], c[1])] = v
    perm = []
    for j in range(size):
        c = coords_to.layout(j)
        if (c[0], c[1]) not in where:
            raise NotImplementedError(f"FP8 store fragment element {j} at {c} is not in the thread's sub-tile")
        perm.append(where[(c[0], c[1])])
    if sorted(perm) != list(range(size)):
        raise NotImplementedError(f"FP8 store fragment is not a permutation of the bf16 one: {perm}")
    return perm


class Sm90Fp8Gemm:
    """`cute.compile(Sm90Fp8Gemm(cfg, epi, ab_stages=..), a, b, sa, sb, d_plain, d_q, d_qs, max_clusters, stream)`:
    a (M, K, 1), b (N, K, 1) fp8; sa (M, KB), sb (NB, KB) fp32; d_plain (M, N, 1) bf16 or None;
    d_q (M, N, 1) fp8 and d_qs (M, NB) fp32 (the quantized output and its scales) or None."""

    def __init__(self, cfg: GemmConfig, epi: Fp8Epilogue, *, ab_stages: int, a_format: str = "e4m3",
                 b_format: str = "e4m3", mainloop: str = "serial"):
        errors = check_fp8_config(cfg)
        if errors:
            raise ValueError("; ".join(errors))
        if len(epi.plain_outputs) > 1:
            raise ValueError("at most one bf16 output next to the quantized one")
        if mainloop not in MAINLOOPS:
            raise ValueError(f"mainloop must be one of {MAINLOOPS}, got {mainloop!r}")
        self.cfg = cfg
        self.epi = epi
        self.overlap = mainloop == "overlap"
        self.ab_stages = ab_stages
        self.tile_m, self.tile_n, self.tile_k = cfg.tile_m, cfg.tile_n, cfg.tile_k
        self.cluster_shape_mn = (cfg.cluster_m, cfg.cluster_n)
        self.atom_layout_mnk = (2, 1, 1)
        self.mma_threads = 2 * THREADS_PER_WG
        self.threads_per_cta = 3 * THREADS_PER_WG
        self.epi_tile = (cfg.tile_m, cfg.epi_n)
        self.has_plain = len(epi.plain_outputs) == 1
        self.has_q = bool(epi.quantized)
        self.fmax = FMAX[epi.q_format]
        fp8 = {"e4m3": cutlass.Float8E4M3FN, "e5m2": cutlass.Float8E5M2}
        self.a_type, self.b_type, self.q_type = fp8[a_format], fp8[b_format], fp8[epi.q_format]

    # ------------------------------------------------------------------ host side
    @cute.jit
    def __call__(self, mA: cute.Tensor, mB: cute.Tensor, mSA: cute.Tensor, mSB: cute.Tensor,
                 mD, mQ, mQS, max_clusters: Int32, stream):
        # FP8 tensors may arrive as uint8 (the host passes byte views: every DLPack / TVM-FFI
        # version carries uint8); they are read as the key's formats
        mA = self._as_fp8(mA, self.a_type)
        mB = self._as_fp8(mB, self.b_type)
        if const_expr(mQ is not None):
            mQ = self._as_fp8(mQ, self.q_type)
        self.ab_dtype = self.a_type
        self.b_dtype = self.b_type
        self.d_dtype = cutlass.BFloat16
        self.q_dtype = self.q_type
        tiled_mma = sm90_utils.make_trivial_tiled_mma(
            self.ab_dtype, self.b_dtype, cute.nvgpu.OperandMajorMode.K, cute.nvgpu.OperandMajorMode.K,
            Float32, self.atom_layout_mnk, tiler_mn=(64, self.tile_n),
        )
        a_smem = self._operand_smem_layout(self.ab_dtype, (self.tile_m, self.tile_k))
        b_smem = self._operand_smem_layout(self.b_dtype, (self.tile_n, self.tile_k))
        d_smem = self._epi_smem_layout(self.d_dtype)
        q_smem = self._epi_smem_layout(self.q_dtype)

        a_op = cpasync.CopyBulkTensorTileG2SOp() if self.cfg.cluster_n == 1 else cpasync.CopyBulkTensorTileG2SMulticastOp()
        b_op = cpasync.CopyBulkTensorTileG2SOp() if self.cfg.cluster_m == 1 else cpasync.CopyBulkTensorTileG2SMulticastOp()
        tma_a, tma_mA = cpasync.make_tiled_tma_atom(a_op, mA, cute.slice_(a_smem, (None, None, 0)),
                                                    (self.tile_m, self.tile_k), num_multicast=self.cfg.cluster_n)
        tma_b, tma_mB = cpasync.make_tiled_tma_atom(b_op, mB, cute.slice_(b_smem, (None, None, 0)),
                                                    (self.tile_n, self.tile_k), num_multicast=self.cfg.cluster_m)
        tma_d, tma_mD = tma_a, tma_mA
        if const_expr(self.has_plain):
            tma_d, tma_mD = cpasync.make_tiled_tma_atom(cpasync.CopyBulkTensorTileS2GOp(), mD,
                                                        cute.slice_(d_smem, (None, None, 0)), self.epi_tile)
        tma_q, tma_mQ = tma_a, tma_mA
        if const_expr(self.has_q):
            tma_q, tma_mQ = cpasync.make_tiled_tma_atom(cpasync.CopyBulkTensorTileS2GOp(), mQ,
                                                        cute.slice_(q_smem, (None, None, 0)), self.epi_tile)

        m_total = cute.size(mA, mode=[0])
        n_total = cute.size(mB, mode=[0])
        k_total = cute.size(mA, mode=[1])
        num_m_tiles = (m_total + self.tile_m - 1) // self.tile_m
        num_n_tiles = (n_total + self.tile_n - 1) // self.tile_n
        clusters_m = (num_m_tiles + self.cfg.cluster_m - 1) // self.cfg.cluster_m
        clusters_n = (num_n_tiles + self.cfg.cluster_n - 1) // self.cfg.cluster_n
        num_clusters = cutlass.min(clusters_m * clusters_n, max_clusters)

        d_elems = cute.cosize(d_smem) if self.has_plain else 8
        q_elems = cute.cosize(q_smem) if self.has_q else 8

        @cute.struct
        class SharedStorage:
            ab_bars: cute.struct.MemRange[cutlass.Int64, self.ab_stages * 2]
            sA: cute.struct.Align[cute.struct.MemRange[self.ab_dtype, cute.cosize(a_smem)], 1024]
            sB: cute.struct.Align[cute.struct.MemRange[self.b_dtype, cute.cosize(b_smem)], 1024]
            sD: cute.struct.Align[cute.struct.MemRange[self.d_dtype, d_elems], 1024]
            sQ: cute.struct.Align[cute.struct.MemRange[self.q_dtype, q_elems], 1024]

        self.shared_storage = SharedStorage
        self.kernel(
            tma_a, tma_mA, tma_b, tma_mB, tma_d, tma_mD, tma_q, tma_mQ, mSA, mSB, mQS,
            tiled_mma, cute.make_layout((*self.cluster_shape_mn, 1)), a_smem, b_smem, d_smem, q_smem,
            m_total, n_total, k_total, num_m_tiles, num_n_tiles,
        ).launch(
            grid=(self.cfg.cluster_m, self.cfg.cluster_n, num_clusters),
            block=[self.threads_per_cta, 1, 1],
            cluster=(self.cfg.cluster_m, self.cfg.cluster_n, 1),
            min_blocks_per_mp=1,
            stream=stream,
        )

    @staticmethod
    def _as_fp8(t, dtype):
        if t.element_type == dtype:
            return t
        return cute.make_tensor(cute.recast_ptr(t.iterator, dtype=dtype), t.layout)

    def _operand_smem_layout(self, dtype, shape_mn_k):
        atom = warpgroup.make_smem_layout_atom(
            sm90_utils.get_smem_layout_atom(LayoutEnum.ROW_MAJOR, dtype, shape_mn_k[1]), dtype)
        return cute.tile_to_shape(atom, (*shape_mn_k, self.ab_stages), order=(0, 1, 2))

    def _epi_smem_layout(self, dtype):
        atom = warpgroup.make_smem_layout_atom(
            sm90_utils.get_smem_layout_atom(LayoutEnum.ROW_MAJOR, dtype, self.cfg.epi_n), dtype)
        return cute.tile_to_shape(atom, (*self.epi_tile, self.cfg.epi_stages), order=(0, 1, 2))

    def _tile_coords(self, t, cluster_coord, num_m_clusters, num_n_tiles):
        clusters_n = (num_n_tiles + self.cfg.cluster_n - 1) // self.cfg.cluster_n
        cm, cn = banded_coord_device(t, num_m_clusters, clusters_n, self.cfg.swizzle, self.cfg.raster == "n")
        return cm * self.cfg.cluster_m + cluster_coord[0], cn * self.cfg.cluster_n + cluster_coord[1]

    # ---------------------------------------------------------------- device side
    @cute.kernel
    def kernel(
        self,
        tma_a: cute.CopyAtom, mA: cute.Tensor, tma_b: cute.CopyAtom, mB: cute.Tensor,
        tma_d: cute.CopyAtom, mD: cute.Tensor, tma_q: cute.CopyAtom, mQ: cute.Tensor,
        mSA: cute.Tensor, mSB: cute.Tensor, mQS,
        tiled_mma: cute.TiledMma, cta_layout_mnk: cute.Layout,
        a_smem: cute.ComposedLayout, b_smem: cute.ComposedLayout,
        d_smem: cute.ComposedLayout, q_smem: cute.ComposedLayout,
        m_total: Int32, n_total: Int32, k_total: Int32, num_m_tiles: Int32, num_n_tiles: Int32,
    ):
        cfg = self.cfg
        tidx, _, _ = cute.arch.thread_idx()
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        wg_idx = cute.arch.make_warp_uniform(tidx // THREADS_PER_WG)

        if warp_idx == 0:
            cpasync.prefetch_descriptor(tma_a)
            cpasync.prefetch_descriptor(tma_b)
            if const_expr(self.has_plain):
                cpasync.prefetch_descriptor(tma_d)
            if const_expr(self.has_q):
                cpasync.prefetch_descriptor(tma_q)

        cta_rank = cute.arch.make_warp_uniform(cute.arch.block_idx_in_cluster())
        cluster_coord = cta_layout_mnk.get_flat_coord(cta_rank)
        a_mcast_mask = cute.make_layout_image_mask(cta_layout_mnk, cluster_coord, mode=1)
        b_mcast_mask = cute.make_layout_image_mask(cta_layout_mnk, cluster_coord, mode=0)
        a_mcast_mask = a_mcast_mask if const_expr(cfg.cluster_n > 1) else 0
        b_mcast_mask = b_mcast_mask if const_expr(cfg.cluster_m > 1) else 0

        storage = SmemAllocator().allocate(self.shared_storage)
        a_one = cute.slice_(a_smem, (None, None, 0))
        b_one = cute.slice_(b_smem, (None, None, 0))
        tx_bytes = cute.size_in_bytes(self.ab_dtype, a_one) + cute.size_in_bytes(self.b_dtype, b_one)
        ab_pipeline = pipeline.PipelineTmaAsync.create(
            barrier_storage=storage.ab_bars.data_ptr(),
            num_stages=self.ab_stages,
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread),
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread,
                                                     (cfg.cluster_m + cfg.cluster_n - 1) * (self.mma_threads // 32)),
            tx_count=tx_bytes,
            cta_layout_vmnk=cute.make_layout((1, *cta_layout_mnk.shape)),
            defer_sync=True,
        )
        pipeline_init_arrive(cluster_shape_mn=self.cluster_shape_mn, is_relaxed=True)

        sA = storage.sA.get_tensor(a_smem.outer, swizzle=a_smem.inner)
        sB = storage.sB.get_tensor(b_smem.outer, swizzle=b_smem.inner)
        sD = storage.sD.get_tensor(d_smem.outer, swizzle=d_smem.inner)
        sQ = storage.sQ.get_tensor(q_smem.outer, swizzle=q_smem.inner)

        k_tiles = (k_total + self.tile_k - 1) // self.tile_k
        num_m_clusters = (num_m_tiles + cfg.cluster_m - 1) // cfg.cluster_m
        num_work = num_m_clusters * ((num_n_tiles + cfg.cluster_n - 1) // cfg.cluster_n)
        cluster_id = cute.arch.block_idx()[2]
        num_launched = cute.arch.grid_dim()[2]

        pipeline_init_wait(cluster_shape_mn=self.cluster_shape_mn)

        if wg_idx == 0:
            # ------------------------------------------------------------ producer
            cute.arch.setmaxregister_decrease(PRODUCER_REGS)
            if warp_idx == 0:
                a_cta_layout = cute.make_layout(cute.slice_(cta_layout_mnk, (0, None, 0)).shape)
                b_cta_layout = cute.make_layout(cute.slice_(cta_layout_mnk, (None, 0, 0)).shape)
                state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.ab_stages)
                t = cluster_id
                while t < num_work:
                    m_tile, n_tile = self._tile_coords(t, cluster_coord, num_m_clusters, num_n_tiles)
                    gA = cute.local_tile(mA[None, None, 0], (self.tile_m, self.tile_k), (m_tile, None))
                    gB = cute.local_tile(mB[None, None, 0], (self.tile_n, self.tile_k), (n_tile, None))
                    tAsA, tAgA = cpasync.tma_partition(tma_a, cluster_coord[1], a_cta_layout,
                                                       cute.group_modes(sA, 0, 2), cute.group_modes(gA, 0, 2))
                    tBsB, tBgB = cpasync.tma_partition(tma_b, cluster_coord[0], b_cta_layout,
                                                       cute.group_modes(sB, 0, 2), cute.group_modes(gB, 0, 2))
                    for kt in range(k_tiles):
                        ab_pipeline.producer_acquire(state)
                        bar = ab_pipeline.producer_get_barrier(state)
                        cute.copy(tma_a, tAgA[(None, kt)], tAsA[(None, state.index)], tma_bar_ptr=bar,
                                  mcast_mask=a_mcast_mask)
                        cute.copy(tma_b, tBgB[(None, kt)], tBsB[(None, state.index)], tma_bar_ptr=bar,
                                  mcast_mask=b_mcast_mask)
                        ab_pipeline.producer_commit(state)
                        state.advance()
                    t += num_launched
                ab_pipeline.producer_tail(state)
        else:
            # ------------------------------------------------------------ consumers
            cute.arch.setmaxregister_increase(CONSUMER_REGS)
            mma_tid = tidx - THREADS_PER_WG
            store_warp = 4
            epi_barrier = pipeline.NamedBarrier(barrier_id=EPI_BARRIER_ID, num_threads=self.mma_threads)

            thr_mma = tiled_mma.get_slice(mma_tid)
            tCrA = tiled_mma.make_fragment_A(thr_mma.partition_A(sA))
            tCrB = tiled_mma.make_fragment_B(thr_mma.partition_B(sB))
            tCcTile = thr_mma.partition_C(cute.make_identity_tensor((self.tile_m, self.tile_n)))
            acc = cute.make_rmem_tensor(tCcTile.shape, Float32)  # promoted fp32 accumulator
            blk = cute.make_rmem_tensor(tCcTile.shape, Float32)  # one K tile's WGMMA result
            # overlap: a second scratch accumulator (the next K tile's WGMMAs run into it)
            blk2 = cute.make_rmem_tensor(tCcTile.shape if self.overlap else (1,), Float32)
            sc = cute.make_rmem_tensor((4,), Float32)  # (row a, row b) scales of blk [0:2] and blk2 [2:4]
            acc_size = cute.size(acc)
            num_k_blocks = cute.size(tCrA, mode=[2])
            # rows of the accumulator elements: r0 and r0 + 8 of the warpgroup's 64-row block
            acc_rows = _row_offsets(tCcTile, acc_size)
            acc_row_of = [0 if o == 0 else 1 for o in acc_rows]
            thread_row0 = tCcTile[0][0] - acc_rows[0]  # tile-relative

            # Epilogue partitioning (registers -> smem -> TMA), as the bf16 kernel.
            stmatrix_atom = cute.make_copy_atom(cute.nvgpu.warp.StMatrix8x8x16bOp(False, 4), self.d_dtype)
            c_atom = cute.make_tiled_copy_C_atom(stmatrix_atom, tiled_mma)
            tiled_r2s = cute.make_tiled_copy_S(
                sm90_utils.get_smem_store_op(LayoutEnum.ROW_MAJOR, elem_ty_d=self.d_dtype, elem_ty_acc=Float32),
                c_atom)
            thr_r2s = tiled_r2s.get_slice(mma_tid)
            tRS_sD = thr_r2s.partition_D(sD)
            # the FP8 output: same thread/value split (so the same fragment order), plain st.shared
            tiled_r2s_q = cute.make_tiled_copy_S(cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), self.q_dtype),
                                                 c_atom)
            thr_r2s_q = tiled_r2s_q.get_slice(mma_tid)
            tRS_sQ = thr_r2s_q.partition_D(sQ)
            q_frag_shape = cute.shape(thr_r2s_q.partition_S(sQ))[:3]
            tRS_acc = tiled_r2s.retile(acc)
            frag_shape = cute.shape(thr_r2s.partition_S(sD))[:3]
            frag_size = cute.size(frag_shape)
            num_epi = self.tile_n // cfg.epi_n
            tRS_cEpi = thr_r2s.partition_S(cute.make_identity_tensor(self.epi_tile))
            tRS_cTile = tiled_r2s.retile(tCcTile)
            acc_order = self._fragment_order(tRS_cTile, tRS_cEpi, frag_size, num_epi, cfg.epi_n)
            # row (0 or 1: r0 or r0 + 8) of each retiled element, for the per-row amax
            frag_rows = _row_offsets(tRS_cEpi, frag_size)
            # element j of the FP8 copy's fragment is element q_perm[j] of the bf16 copy's
            q_perm = _permutation(thr_r2s_q.partition_S(cute.make_identity_tensor(self.epi_tile)), tRS_cEpi, frag_size)
            frag_row_of = [0 if o == 0 else 1 for o in frag_rows]

            store_pipeline = pipeline.PipelineTmaStore.create(
                num_stages=cfg.epi_stages,
                producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, self.mma_threads),
            )
            read_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.ab_stages)
            groups_per_tile = num_epi * ((1 if self.has_plain else 0) + (1 if self.has_q else 0))
            local_tile_idx = Int32(0)
            sa_kb = cute.size(mSA, mode=[1])

            t = cluster_id
            while t < num_work:
                m_tile, n_tile = self._tile_coords(t, cluster_coord, num_m_clusters, num_n_tiles)
                row_start = m_tile * self.tile_m
                # the thread's two rows, clamped into A (rows past M are computed, never stored)
                row_a = cutlass.min(row_start + thread_row0, m_total - 1)
                row_b = cutlass.min(row_start + thread_row0 + 8, m_total - 1)
                # the weight-scale row, clamped into SB like the rows (an N tile past N, see below)
                sb_tile = cutlass.min(n_tile, num_n_tiles - 1)

                # ---- mainloop: K tiles' WGMMAs into a scratch accumulator, promoted into `acc`
                acc.fill(0.0)
                if const_expr(not self.overlap):
                    # serial: issue, wait for this tile's WGMMAs, promote (the tensor core idles
                    # for this warpgroup during the promotion; the other warpgroup's may run)
                    for kt in range(k_tiles):
                        self._load_scales(sc, 0, mSA, mSB, row_a, row_b, sb_tile, kt)
                        tiled_mma = self._issue_k_tile(tiled_mma, blk, tCrA, tCrB, ab_pipeline, read_state, num_k_blocks)
                        warpgroup.wait_group(0)
                        ab_pipeline.consumer_release(read_state)
                        read_state.advance()
                        self._promote(acc, blk, sc, 0, acc_row_of, acc_size)
                else:
                    # overlap: tile kt+1's WGMMAs are issued into the other scratch accumulator
                    # before tile kt is promoted (wait_group 1: only the older group is done)
                    release_state = read_state.clone()
                    self._load_scales(sc, 0, mSA, mSB, row_a, row_b, sb_tile, 0)
                    tiled_mma = self._issue_k_tile(tiled_mma, blk, tCrA, tCrB, ab_pipeline, read_state, num_k_blocks)
                    read_state.advance()
                    # whole pairs only, so that every iteration starts and ends with `blk` in
                    # flight (a branch inside would leave ptxas unsure which accumulator is in
                    # flight, and it serializes the WGMMAs: C7514)
                    for kp in range(1, k_tiles - 1, 2):
                        self._load_scales(sc, 2, mSA, mSB, row_a, row_b, sb_tile, kp)
                        tiled_mma = self._issue_k_tile(tiled_mma, blk2, tCrA, tCrB, ab_pipeline, read_state,
                                                       num_k_blocks)
                        read_state.advance()
                        warpgroup.wait_group(1)
                        ab_pipeline.consumer_release(release_state)
                        release_state.advance()
                        self._promote(acc, blk, sc, 0, acc_row_of, acc_size)
                        self._load_scales(sc, 0, mSA, mSB, row_a, row_b, sb_tile, kp + 1)
                        tiled_mma = self._issue_k_tile(tiled_mma, blk, tCrA, tCrB, ab_pipeline, read_state,
                                                       num_k_blocks)
                        read_state.advance()
                        warpgroup.wait_group(1)
                        ab_pipeline.consumer_release(release_state)
                        release_state.advance()
                        self._promote(acc, blk2, sc, 2, acc_row_of, acc_size)
                    if k_tiles % 2 == 0:
                        # one K tile left to issue: into blk2 while blk is promoted
                        self._load_scales(sc, 2, mSA, mSB, row_a, row_b, sb_tile, k_tiles - 1)
                        tiled_mma = self._issue_k_tile(tiled_mma, blk2, tCrA, tCrB, ab_pipeline, read_state,
                                                       num_k_blocks)
                        read_state.advance()
                        warpgroup.wait_group(1)
                        ab_pipeline.consumer_release(release_state)
                        release_state.advance()
                        self._promote(acc, blk, sc, 0, acc_row_of, acc_size)
                        warpgroup.wait_group(0)
                        ab_pipeline.consumer_release(release_state)
                        release_state.advance()
                        self._promote(acc, blk2, sc, 2, acc_row_of, acc_size)
                    else:
                        warpgroup.wait_group(0)
                        ab_pipeline.consumer_release(release_state)
                        release_state.advance()
                        self._promote(acc, blk, sc, 0, acc_row_of, acc_size)

                # ---- epilogue
                bSG_sD, bSG_gD = self._store_partitions(self.has_plain, tma_d, mD, sD, m_tile, n_tile)
                bSG_sQ, bSG_gQ = self._store_partitions(self.has_q, tma_q, mQ, sQ, m_tile, n_tile)
                q_idx = self.epi.outputs.index(self.epi.quantized) if const_expr(self.has_q) else -1
                qvals = cute.make_rmem_tensor((frag_size * num_epi,), Float32)
                amax = [Float32(0.0), Float32(0.0)]
                group = 0
                for e in cutlass.range_constexpr(num_epi):
                    frag = cute.make_rmem_tensor(frag_shape, Float32)
                    for v in cutlass.range_constexpr(frag_size):
                        frag[v] = tRS_acc[acc_order[e][v]]
                    outs = self.epi.spec.apply(frag.load())
                    if const_expr(self.has_q):
                        qf = cute.make_rmem_tensor(frag_shape, Float32)
                        qf.store(outs[q_idx])
                        for v in cutlass.range_constexpr(frag_size):
                            qvals[e * frag_size + v] = qf[v]
                            # max(amax, |q|): fmax(abs=True) would be the xorsign form, sign(a ^ b) *
                            # max(|a|, |b|), whose sign flips with negative values and then loses the
                            # signed max across the quad below (the e5m2 test's signed outputs)
                            amax[frag_row_of[v]] = cute.arch.fmax(amax[frag_row_of[v]], cute.math.abs(qf[v]))
                    if const_expr(self.has_plain):
                        p_idx = self.epi.outputs.index(self.epi.plain_outputs[0])
                        out = cute.make_rmem_tensor(frag_shape, self.d_dtype)
                        out.store(outs[p_idx].to(self.d_dtype))
                        self._store_subtile(tiled_r2s, out, tRS_sD, tma_d, bSG_sD, bSG_gD, e,
                                            (local_tile_idx * groups_per_tile + group) % cfg.epi_stages,
                                            store_pipeline, epi_barrier, warp_idx == store_warp)
                        group += 1
                if const_expr(self.has_q):
                    # the row's amax over the four lanes that hold it, then s and 1 / s per row
                    for r in cutlass.range_constexpr(2):
                        for off in cutlass.range_constexpr(1, 3):
                            amax[r] = cute.arch.fmax(amax[r], cute.arch.shuffle_sync_bfly(amax[r], offset=off))
                    scales = [self._scale_of(amax[r]) for r in range(2)]
                    inv = [Float32(1.0) / scales[r] for r in range(2)]
                    for e in cutlass.range_constexpr(num_epi):
                        qf = cute.make_rmem_tensor(q_frag_shape, Float32)
                        for j in cutlass.range_constexpr(frag_size):
                            v = q_perm[j]
                            qf[j] = qvals[e * frag_size + v] * inv[frag_row_of[v]]
                        out = cute.make_rmem_tensor(q_frag_shape, self.q_dtype)
                        out.store(qf.load().to(self.q_dtype))
                        self._store_subtile(tiled_r2s_q, out, tRS_sQ, tma_q, bSG_sQ, bSG_gQ, e,
                                            (local_tile_idx * groups_per_tile + group) % cfg.epi_stages,
                                            store_pipeline, epi_barrier, warp_idx == store_warp)
                        group += 1
                    # a cluster's second CTA may hold an N tile past the last one (odd tile
                    # counts): its TMA stores are clipped, its scale column does not exist
                    if cute.arch.lane_idx() % 4 == 0 and n_tile < num_n_tiles:
                        for r in cutlass.range_constexpr(2):
                            row = row_start + thread_row0 + 8 * r
                            if row < m_total:
                                mQS[(row, n_tile)] = scales[r]
                local_tile_idx += 1
                t += num_launched
            if warp_idx == store_warp:
                store_pipeline.producer_tail()

    def _load_scales(self, sc, at: int, mSA, mSB, row_a, row_b, sb_tile, kt):
        """SA[row, kt] * SB[sb_tile, kt] for the thread's two rows into sc[at], sc[at + 1]
        (issued before the K tile's WGMMAs, so the loads' latency hides behind them)."""
        sb = Float32(mSB[(sb_tile, kt)])
        sc[at] = Float32(mSA[(row_a, kt)]) * sb
        sc[at + 1] = Float32(mSA[(row_b, kt)]) * sb

    @staticmethod
    def _issue_k_tile(tiled_mma, blk, tCrA, tCrB, ab_pipeline, read_state, num_k_blocks: int):
        """Wait for the K tile's operands and issue its WGMMAs (one commit group) into `blk`,
        the first k block overwriting it; returns `tiled_mma`."""
        ab_pipeline.consumer_wait(read_state)
        warpgroup.fence()
        for kb in range(num_k_blocks):  # plain Python: unrolled at trace time
            tiled_mma.set(warpgroup.Field.ACCUMULATE, kb != 0)
            cute.gemm(tiled_mma, blk, tCrA[(None, None, kb, read_state.index)],
                      tCrB[(None, None, kb, read_state.index)], blk)
        warpgroup.commit_group()
        return tiled_mma  # rebound by the caller: the tracer carries its ACCUMULATE field through loops

    @staticmethod
    def _promote(acc, blk, sc, at: int, acc_row_of, acc_size: int):
        """acc += blk * (row scale): the fp32 promotion of one K tile."""
        for v in range(acc_size):  # unrolled at trace time
            acc[v] = acc[v] + blk[v] * sc[at + acc_row_of[v]]

    def _scale_of(self, amax):
        """The recipe's scale of a block from its amax (Fp8Recipe: amax / fmax, a power of two
        at or above it with pow2_scales, 1 for an all-zero block)."""
        s = amax * Float32(1.0 / self.fmax)
        if const_expr(self.epi.pow2_scales):
            box = cute.make_rmem_tensor((1,), Float32)
            box[0] = s
            bits = cute.make_tensor(cute.recast_ptr(box.iterator, dtype=Int32), cute.make_layout(1))
            b = bits[0]
            exp = b & Int32(0x7F800000)
            bits[0] = cutlass.select_((b & Int32(0x007FFFFF)) != 0, exp + Int32(0x00800000), exp)
            s = box[0]
        return cutlass.select_(amax > 0.0, s, Float32(1.0))

    @cute.jit
    def _store_subtile(self, tiled_r2s, frag, tRS_s, tma, bSG_s, bSG_g, e, buf, store_pipeline, epi_barrier,
                       is_store_warp):
        """Registers -> smem buffer `buf` -> TMA store of epilogue sub-tile `e` (one store group)."""
        if is_store_warp:
            store_pipeline.producer_acquire()
        epi_barrier.arrive_and_wait()
        cute.copy(tiled_r2s, frag, tRS_s[(None, None, None, buf)])
        cute.arch.fence_proxy("async.shared", space="cta")
        epi_barrier.arrive_and_wait()
        if is_store_warp:
            cute.copy(tma, bSG_s[(None, buf)], bSG_g[(None, e)])
            store_pipeline.producer_commit()

    @staticmethod
    def _fragment_order(tRS_cTile, tRS_cEpi, frag_size: int, num_epi: int, epi_n: int) -> list:
        """order[e][v]: the retiled accumulator element feeding element v of sub-tile e (trace
        time; the accumulator element whose tile coordinate is that of v shifted e * epi_n columns)."""
        where = {}
        for i in range(frag_size * num_epi):
            c = tRS_cTile.layout(i)
            where[(c[0], c[1])] = i
        order = []
        for e in range(num_epi):
            row = []
            for v in range(frag_size):
                c = tRS_cEpi.layout(v)
                key = (c[0], c[1] + e * epi_n)
                if key not in where:
                    raise NotImplementedError(f"epilogue sub-tile {e} element {v} at {key} is not in the accumulator")
                row.append(where[key])
            order.append(row)
        return order

    def _store_partitions(self, present: bool, tma, mX, sX, m_tile, n_tile):
        """TMA-store partitions (smem buffers, global sub-tiles) of one output's tile, or
        (None, None) for an output the epilogue does not have (plain Python, trace time)."""
        if not present:
            return None, None
        g_tile = cute.local_tile(mX[None, None, 0], (self.tile_m, self.tile_n), (m_tile, n_tile))
        return cpasync.tma_partition(tma, 0, cute.make_layout(1), cute.group_modes(sX, 0, 2),
                                     cute.zipped_divide(g_tile, self.epi_tile))
