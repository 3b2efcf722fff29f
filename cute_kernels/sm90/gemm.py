"""Hopper (sm_90a) GEMM kernel family in CuTe DSL: D_i = epilogue(A @ B^T).

One kernel class serves dense and grouped (per-expert) problems, every epilogue in
`cute_kernels.epilogue`, cooperative and ping-pong consumer schedules, and any operand
majorness (A: (M, K) with K or M contiguous; B: (N, K, L) with K or N contiguous).

Structure of a CTA (384 threads, one CTA per SM, persistent):
- warpgroup 0: warp 0 issues TMA loads of A and B tiles into a ring of shared-memory
  stages (multicast across the cluster: A along cluster N, B along cluster M; block-scaled FP8
  with `scales_smem`: the warp's lanes also copy the K tile's scales into the stage, scale_stage.py);
  the warpgroup gives its registers away (setmaxnreg 40).  K-grouped problems: warp 1
  writes per-expert TMA descriptors ahead of warp 0 (below).
- warpgroups 1-2: WGMMA consumers (setmaxnreg 232).  Cooperative: both split one
  128-row tile (block-scaled FP8 also 256 rows: each warpgroup two 64-row waves).  Ping-pong: each owns a 64-row tile, they alternate tiles, and an
  mbarrier pair orders their mainloops so one's epilogue overlaps the other's math.
- epilogue: accumulator -> epilogue op (fp32) -> dtype -> stmatrix to smem -> TMA store.

This module is the skeleton: the host-side setup (TMA atoms, shared-memory layouts, launch),
and the kernel's setup, warp roles and per-tile loop; each step is a hook in its own module:
- `tma_producer.TmaProducer` / `gather_producer.GatherProducer`: the producer warp(s) over the
  tile walk (K-grouped: through `gemm_base.descriptors.DescriptorRing`, written by warp 1);
- `pipelines`: the operand ring and the descriptor ring;
- `mainloop_wgmma.WgmmaMainloop` (bf16/fp16) / `mainloop_fp8.BlockScaledMainloop` (block-scaled
  FP8): one tile's K loop into the WGMMA accumulator;
- `epilogue_aux.AuxLoader`: where and when the epilogue input is loaded;
- `epilogue_store.EpilogueStore`: the accumulator's sub-tiles, and after the epilogue's math
  (`gemm_base.epilogue_io.visit_subtile`) the stores, the quantizing output codec and row sums.
Grouped addressing, the persistent tile walk, the launch arguments, the epilogue's input loads
and hooks and the codec's scale rule are arch-neutral and live in `cute_kernels.gemm_base`.

Preconditions (checked on the host by `cute_kernels.checks`): bf16/fp16 A and B of
the same dtype, 16-byte aligned base pointers and leading dimensions, D row-major
(bf16/fp16 or fp32), K >= 1; grouped: cu_tiles counts each expert's M tiles rounded
up to a multiple of cluster_m (the CTAs of a cluster share B, so they must be on one
expert; a rounded-up tile starts at or past its expert's end and stores nothing);
grouped_k: any schedule (a ping-pong warpgroup skips the other's tile by that tile's
own per-expert K tile count).
Row sums (dsrelu `row_sum`) are written as one partial per (row, N tile) into an
(M, ceil(N / tile_n)) fp32 tensor (every element written once, no atomics, so the
result is bitwise reproducible); the host sums the partials.
"""
from __future__ import annotations

import functools

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
from ..epilogue import EpilogueSpec
from ..gemm_base.descriptors import DescriptorRing
from ..gemm_base.epilogue_io import visit_subtile
from ..gemm_base.flat_args import flat_args_views
from ..gemm_base.grouping import expert_block_scales, k_range, output_tile
from ..gemm_base.kernel_base import GemmKernelBase
from ..gemm_base.output_codec import FP8_TYPES, as_element_type
from ..gemm_base.tile_walk import TileWalk, launch_geometry
from .epilogue_aux import AuxLoader, aux_loaded_during_last_k_tile, prefetches_aux_into_l2
from .epilogue_store import EpilogueStore
from .gather_producer import GatherProducer
from .mainloop_fp8 import BlockScaledMainloop
from .mainloop_wgmma import WgmmaMainloop
from .pipelines import descriptor_pipeline, operand_pipeline
from .scale_ring import RING_FLOATS, ColumnScaleRing, ring_layout
from .scale_stage import SLOT_FLOATS, StageScaleCopier, slot_layout
from .tma_producer import TmaProducer

THREADS_PER_WG = 128
PRODUCER_REGS = 40
CONSUMER_REGS = 232
EPI_BARRIER_ID = 1  # ping-pong uses ids 1 and 2, one per consumer warpgroup


class Sm90Gemm(GemmKernelBase):
    """A compiled-once GEMM: `cute.compile(Sm90Gemm(...), *GemmArgs(...), max_clusters, stream)`
    (the tensor arguments in the order of `cute_kernels.gemm_base.launch_args.GemmArgs`)."""

    def __init__(self, cfg: GemmConfig, epi: EpilogueSpec, *, grouped: bool, ab_stages: int, grouped_k: bool = False,
                 formats: tuple[str, str] | None = None, gather_a: bool = False, b_scale_rows: bool = False,
                 b_scale_staged: bool = False, scales_smem: bool = False, flat_args: tuple[str, str] | None = None):
        super().__init__(cfg, epi, grouped=grouped, grouped_k=grouped_k, ab_stages=ab_stages)
        # A's rows gathered by index (GemmArgs.a_rows) by the producer warpgroup (sm90/gather_producer.py)
        self.gather_a = gather_a
        if gather_a and (not grouped or grouped_k or formats is not None):
            raise ValueError("gather_a: grouped-along-M bf16/fp16 problems only")
        # (A, B) majorness: A, B, the outputs and the epilogue input arrive as stored (2-D, or (E, rows,
        # cols) per expert) and __call__ builds their 3-D views (KernelKey.flat_args, gemm_base/flat_args.py)
        self.flat_args = flat_args
        if flat_args is not None and formats is not None:
            raise ValueError("flat_args: bf16/fp16 operands only")
        # None: bf16/fp16 operands, the WGMMA mainloop.  (A, B) FP8 formats: block-scaled operands,
        # the promoting mainloop of sm90/mainloop_fp8.py (config rules: sm90/config.block_scaled_errors).
        self.formats = formats
        self.block_scaled = formats is not None
        # block-scaled with B's scales per row and K block (the weight gradient's 1D1D operands)
        # instead of per 128x128 block: the mainloop promotes with a scale per output column
        self.b_scale_rows = b_scale_rows
        if b_scale_rows and (not self.block_scaled or cfg.tile_n != 128):
            raise ValueError("b_scale_rows: block-scaled FP8 operands and 128-wide tiles only")
        # per-row B scales through the overlapped mainloop, B's column scales staged in a shared-memory
        # ring per consumer warpgroup (KernelKey.b_scale "rows_staged": sm90/scale_ring.py)
        self.b_scale_staged = b_scale_staged
        if b_scale_staged and (not b_scale_rows or cfg.schedule != "cooperative"):
            raise ValueError("b_scale_staged: per-row B scales (b_scale_rows) on cooperative tiles only")
        # block-scaled: the producer stages each K tile's scales with its operands, the consumers
        # read them from shared memory (KernelKey.scales_smem: sm90/scale_stage.py)
        self.scales_smem = scales_smem
        if scales_smem and (not self.block_scaled or b_scale_rows or cfg.schedule != "cooperative"
                            or cfg.tile_m != 128 or gather_a or grouped_k):
            raise ValueError("scales_smem: block-scaled FP8 with 128x128 B scale blocks on cooperative 128-row tiles only")
        # the output the quantizing codec stores in FP8 (always the last one), or -1
        self.q_index = epi.quantized_index
        if self.q_index not in (-1, epi.num_outputs - 1):
            raise ValueError(f"the quantized output must be the epilogue's last, got {epi.quantized!r} of {epi.outputs}")
        if self.q_index >= 0 and (self.pingpong_schedule(cfg) or cfg.tile_n % 128):
            raise ValueError("the quantizing codec needs cooperative tiles of whole 128-column scale blocks")
        # block-scaled: 128-column N blocks per tile (one weight scale each); more than one takes
        # the split-N mainloop (one scratch accumulator, promoted per block)
        self.n_blocks = cfg.tile_n // 128 if self.block_scaled else 1
        self.pingpong = cfg.schedule == "pingpong"
        self.atom_layout_mnk = (1, 1, 1) if self.pingpong else (2, 1, 1)
        self.mma_threads = THREADS_PER_WG * (1 if self.pingpong else 2)  # threads sharing one tile
        self.threads_per_cta = 3 * THREADS_PER_WG
        # Each smem stage is read by one (ping-pong) or two (cooperative) warpgroups.
        self.consumer_warps_per_stage = self.mma_threads // 32
        self.epi_slots = 2 if self.pingpong else 1
        # Set while tracing (__call__): the producer prefetches the epilogue input into L2.
        self.aux_l2 = False

    @staticmethod
    def pingpong_schedule(cfg: GemmConfig) -> bool:
        return cfg.schedule == "pingpong"

    # ------------------------------------------------------------------ host side
    @cute.jit
    def __call__(
        self,
        mA: cute.Tensor,  # (M, K, 1)
        mB: cute.Tensor,  # (N, K, L)
        mD0: cute.Tensor,  # (M, N, 1)
        mD1,  # (M, N, 1) or None
        mScale,  # (M,) fp32 or None
        mAux,  # (M, N, 1) epilogue input (dsrelu: preact; accumulate: D's previous value) or None
        mRowSum,  # (M, n_tiles) fp32: the dsrelu row sum's partial per N tile, or None
        mCuRows,  # (E+1,) int32 or None
        mCuTiles,  # (E+1,) int32 or None
        mDescWs,  # grouped_k: int64 workspace, per CTA 2 x desc_slots TMA descriptors (gemm_base.descriptors)
        mSA,  # block-scaled: (M, KB) fp32 scales of A, or None
        mSB,  # block-scaled: (NB, KB, L) fp32 scales of B (b_scale_rows: (N, KB, L)), or None
        mQS,  # the quantized output's (M, NB) fp32 scales, or None
        mARows,  # gather_a: (M,) int32, row r of the problem is mA's row mARows[r] (mA: (T, K, 1)); or None
        max_clusters: Int32,
        stream,
    ):
        if const_expr(self.flat_args is not None):  # 2-D arguments: their 3-D views, before anything reads them
            mA, mB, mD0, mD1, mAux = flat_args_views(mA, mB, mD0, mD1, mAux, a_major=self.flat_args[0],
                                                     b_major=self.flat_args[1])
        if const_expr(self.block_scaled):
            mA = as_element_type(mA, FP8_TYPES[self.formats[0]])
            mB = as_element_type(mB, FP8_TYPES[self.formats[1]])
        if const_expr(self.q_index == 0):
            mD0 = as_element_type(mD0, FP8_TYPES[self.epi.q_format])
        if const_expr(self.q_index == 1):
            mD1 = as_element_type(mD1, FP8_TYPES[self.epi.q_format])
        self.ab_dtype = mA.element_type
        self.b_dtype = mB.element_type
        # the plain (not quantized) outputs' dtype: the forward activation reads preact rounded to it
        self.d_dtype = mD0.element_type if const_expr(self.q_index != 0) else cutlass.BFloat16
        self.q_dtype = FP8_TYPES[self.epi.q_format]
        # per output: what its epilogue buffers hold
        self.out_dtypes = [self.q_dtype if i == self.q_index else self.d_dtype for i in range(2)]
        a_layout = LayoutEnum.from_tensor(mA)
        b_layout = LayoutEnum.from_tensor(mB)
        self.d_layout = LayoutEnum.from_tensor(mD0)

        tiled_mma = sm90_utils.make_trivial_tiled_mma(
            self.ab_dtype,
            mB.element_type,
            a_layout.sm90_mma_major_mode(),
            b_layout.sm90_mma_major_mode(),
            Float32,
            self.atom_layout_mnk,
            # block-scaled wide tiles: one WGMMA atom per 128-column N block
            tiler_mn=(64, 128 if const_expr(self.block_scaled) else self.tile_n),
        )
        k_total = cute.size(mA, mode=[1])
        a_smem_staged = self._operand_smem_layout(a_layout, (self.tile_m, self.tile_k), self.ab_dtype)
        b_smem_staged = self._operand_smem_layout(b_layout, (self.tile_n, self.tile_k), self.b_dtype)
        epi_smem_staged = self._epi_smem_layout(self.epi_slots * self.cfg.epi_stages, self.out_dtypes[0])
        epi_smem_staged1 = epi_smem_staged
        if const_expr(self.out_dtypes[1] != self.out_dtypes[0]):
            epi_smem_staged1 = self._epi_smem_layout(self.epi_slots * self.cfg.epi_stages, self.out_dtypes[1])

        a_op = cpasync.CopyBulkTensorTileG2SOp() if self.cfg.cluster_n == 1 else cpasync.CopyBulkTensorTileG2SMulticastOp()
        b_op = cpasync.CopyBulkTensorTileG2SOp() if self.cfg.cluster_m == 1 else cpasync.CopyBulkTensorTileG2SMulticastOp()
        tma_a, tma_mA = None, mA  # gather_a: A is read row by row (cp.async), the kernel gets A itself
        if const_expr(not self.gather_a):
            tma_a, tma_mA = cpasync.make_tiled_tma_atom(
                a_op, mA, cute.slice_(a_smem_staged, (None, None, 0)), (self.tile_m, self.tile_k),
                num_multicast=self.cfg.cluster_n
            )
        tma_b, tma_mB = cpasync.make_tiled_tma_atom(
            b_op, mB, cute.slice_(b_smem_staged, (None, None, 0)), (self.tile_n, self.tile_k), num_multicast=self.cfg.cluster_m
        )
        if const_expr(self.gather_a):
            tma_a = tma_b  # (stands in for A's atom, unused)
        epi_smem_one = cute.slice_(epi_smem_staged, (None, None, 0))
        tma_d0, tma_mD0, tma_d1, tma_mD1 = self.output_store_atoms(mD0, mD1, epi_smem_one,
                                                                   cute.slice_(epi_smem_staged1, (None, None, 0)))

        # TMA atom for the epilogue input, used only to prefetch it into L2 (never into smem):
        # its box is one epilogue sub-tile, so the output's sub-tile smem layout describes it.
        self.aux_l2 = (prefetches_aux_into_l2(self.cfg, self.epi, grouped=self.grouped, grouped_k=self.grouped_k,
                                              rows_scaled=self.b_scale_rows)
                       and mAux is not None and mAux.element_type == mD0.element_type)
        tma_aux, tma_mAux = tma_d0, tma_mD0
        if const_expr(self.aux_l2):
            tma_aux, tma_mAux = cpasync.make_tiled_tma_atom(
                cpasync.CopyBulkTensorTileG2SOp(), mAux, epi_smem_one, self.epi_tile
            )

        m_rows = mD0 if const_expr(self.gather_a) else mA  # gather_a: A has T rows, the problem M
        m_total = cute.size(m_rows, mode=[0])
        n_total = cute.size(mB, mode=[0])
        num_m_tiles, num_n_tiles, num_experts, num_clusters = launch_geometry(
            self.cfg, m_rows, mB, mCuRows, grouped=self.grouped, grouped_k=self.grouped_k, max_clusters=max_clusters)

        ab_bytes = self.ab_stages * 2
        epi_elems = cute.cosize(epi_smem_staged)
        epi_elems1 = cute.cosize(epi_smem_staged1) if const_expr(self.num_outputs == 2) else 8

        class SharedStorage:
            ab_bars: cute.struct.MemRange[cutlass.Int64, ab_bytes]
            order_bars: cute.struct.MemRange[cutlass.Int64, 2]
            desc_bars: cute.struct.MemRange[cutlass.Int64, 2 * self.desc_slots]
            sA: cute.struct.Align[cute.struct.MemRange[self.ab_dtype, cute.cosize(a_smem_staged)], 1024]
            sB: cute.struct.Align[cute.struct.MemRange[self.b_dtype, cute.cosize(b_smem_staged)], 1024]
            sD0: cute.struct.Align[cute.struct.MemRange[self.out_dtypes[0], epi_elems], 1024]
            sD1: cute.struct.Align[cute.struct.MemRange[self.out_dtypes[1], epi_elems1], 1024]

        self.shared_storage = self._shared_storage_struct(SharedStorage)

        self.kernel(
            tma_a, tma_mA, tma_b, tma_mB, tma_d0, tma_mD0, tma_d1, tma_mD1, tma_aux, tma_mAux,
            mScale, mAux, mRowSum, mCuRows, mCuTiles,
            mA if const_expr(self.grouped_k) else None, mB if const_expr(self.grouped_k) else None, mDescWs,
            mSA, mSB, mQS, mARows,
            tiled_mma,
            cute.make_layout((*self.cluster_shape_mn, 1)),
            a_smem_staged, b_smem_staged, epi_smem_staged, epi_smem_staged1,
            m_total, n_total, k_total, num_m_tiles, num_n_tiles, num_experts,
        ).launch(
            grid=(self.cfg.cluster_m, self.cfg.cluster_n, num_clusters),
            block=[self.threads_per_cta, 1, 1],
            cluster=(self.cfg.cluster_m, self.cfg.cluster_n, 1),
            min_blocks_per_mp=1,
            stream=stream,
        )

    def _shared_storage_struct(self, fields):
        """The kernel's shared-memory struct: the fields of class `fields`, and B's column-scale
        ring last when the mainloop stages it (b_scale "rows_staged"), or the operand stages'
        scale slots (scales_smem)."""
        extra = {}
        if self.b_scale_staged:
            extra["sSBRing"] = cute.struct.Align[cute.struct.MemRange[Float32, RING_FLOATS], 16]
        if self.scales_smem:
            extra["sScales"] = cute.struct.Align[cute.struct.MemRange[Float32, SLOT_FLOATS * self.ab_stages], 16]
        if extra:
            fields = type(fields.__name__, (), {"__annotations__": dict(fields.__annotations__, **extra)})
        return cute.struct(fields)

    def _operand_smem_layout(self, layout: LayoutEnum, shape_mn_k, dtype):
        k_major = layout.sm90_mma_major_mode() == cute.nvgpu.OperandMajorMode.K
        major_size = shape_mn_k[1] if k_major else shape_mn_k[0]
        atom = warpgroup.make_smem_layout_atom(sm90_utils.get_smem_layout_atom(layout, dtype, major_size), dtype)
        return cute.tile_to_shape(atom, (*shape_mn_k, self.ab_stages), order=(0, 1, 2) if k_major else (1, 0, 2))

    def _epi_smem_layout(self, stages: int, dtype):
        atom = warpgroup.make_smem_layout_atom(
            sm90_utils.get_smem_layout_atom(self.d_layout, dtype, self.cfg.epi_n), dtype
        )
        return cute.tile_to_shape(atom, (*self.epi_tile, stages), order=(0, 1, 2))

    @cute.kernel
    def kernel(
        self,
        tma_a: cute.CopyAtom, mA: cute.Tensor,
        tma_b: cute.CopyAtom, mB: cute.Tensor,
        tma_d0: cute.CopyAtom, mD0: cute.Tensor,
        tma_d1: cute.CopyAtom, mD1: cute.Tensor,
        tma_aux: cute.CopyAtom, mAuxTma: cute.Tensor,  # epilogue input, for its L2 prefetch
        mScale, mAux, mRowSum, mCuRows, mCuTiles,
        mA_gmem, mB_gmem, mDescWs,  # grouped_k: raw operands and the descriptor workspace
        mSA, mSB, mQS,  # block-scaled: operand scales; the quantized output's scales
        mARows,  # gather_a: the problem's rows in A, or None
        tiled_mma: cute.TiledMma,
        cta_layout_mnk: cute.Layout,
        a_smem_staged: cute.ComposedLayout,
        b_smem_staged: cute.ComposedLayout,
        epi_smem_staged: cute.ComposedLayout,
        epi_smem_staged1: cute.ComposedLayout,
        m_total: Int32, n_total: Int32, k_total: Int32, num_m_tiles: Int32, num_n_tiles: Int32, num_experts: Int32,
    ):
        cfg = self.cfg
        tidx, _, _ = cute.arch.thread_idx()
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        wg_idx = cute.arch.make_warp_uniform(tidx // THREADS_PER_WG)
        two_outputs = const_expr(self.num_outputs == 2)

        if warp_idx == 0:
            if const_expr(not self.gather_a):
                cpasync.prefetch_descriptor(tma_a)
            cpasync.prefetch_descriptor(tma_b)
            cpasync.prefetch_descriptor(tma_d0)
            if const_expr(two_outputs):
                cpasync.prefetch_descriptor(tma_d1)
            if const_expr(self.aux_l2):
                cpasync.prefetch_descriptor(tma_aux)

        cta_rank = cute.arch.make_warp_uniform(cute.arch.block_idx_in_cluster())
        cluster_coord = cta_layout_mnk.get_flat_coord(cta_rank)
        a_mcast_mask = cute.make_layout_image_mask(cta_layout_mnk, cluster_coord, mode=1)
        b_mcast_mask = cute.make_layout_image_mask(cta_layout_mnk, cluster_coord, mode=0)
        a_mcast_mask = a_mcast_mask if const_expr(cfg.cluster_n > 1) else 0
        b_mcast_mask = b_mcast_mask if const_expr(cfg.cluster_m > 1) else 0

        storage = SmemAllocator().allocate(self.shared_storage)
        ab_pipeline = operand_pipeline(storage, cfg, ab_stages=self.ab_stages, a_smem_staged=a_smem_staged,
                                       b_smem_staged=b_smem_staged, ab_dtype=self.ab_dtype, b_dtype=self.b_dtype,
                                       cta_layout_mnk=cta_layout_mnk,
                                       consumer_warps_per_stage=self.consumer_warps_per_stage, gathered=self.gather_a,
                                       staged_scales=self.scales_smem)
        desc_pipeline = descriptor_pipeline(storage, self.desc_slots) if const_expr(self.grouped_k) else None
        order_bars = storage.order_bars.data_ptr()
        if const_expr(self.pingpong):
            if warp_idx == 0:
                cute.arch.mbarrier_init(order_bars, THREADS_PER_WG)
                cute.arch.mbarrier_init(order_bars + 1, THREADS_PER_WG)
        pipeline_init_arrive(cluster_shape_mn=self.cluster_shape_mn, is_relaxed=True)

        sA = storage.sA.get_tensor(a_smem_staged.outer, swizzle=a_smem_staged.inner)
        sB = storage.sB.get_tensor(b_smem_staged.outer, swizzle=b_smem_staged.inner)
        sD0 = storage.sD0.get_tensor(epi_smem_staged.outer, swizzle=epi_smem_staged.inner)
        sD1 = storage.sD1.get_tensor(epi_smem_staged1.outer, swizzle=epi_smem_staged1.inner) if const_expr(two_outputs) else sD0
        sScales = storage.sScales.get_tensor(slot_layout(self.ab_stages)) if const_expr(self.scales_smem) else None

        k_tiles = (k_total + self.tile_k - 1) // self.tile_k
        walk = TileWalk(cfg, grouped=self.grouped, grouped_k=self.grouped_k, m_total=m_total, num_m_tiles=num_m_tiles,
                        num_n_tiles=num_n_tiles, num_experts=num_experts, mCuRows=mCuRows, mCuTiles=mCuTiles)
        num_work = walk.num_work
        cluster_id = cute.arch.block_idx()[2]
        num_launched = cute.arch.grid_dim()[2]

        pipeline_init_wait(cluster_shape_mn=self.cluster_shape_mn)

        if wg_idx == 0:
            # ------------------------------------------------------------ producer
            cute.arch.setmaxregister_decrease(PRODUCER_REGS)
            if const_expr(self.gather_a):
                # the whole warpgroup gathers A's rows (cp.async), warp 0 also loads B (TMA)
                GatherProducer(self.tile_m, self.tile_n, self.tile_k, self.ab_stages).run(
                    walk, ab_pipeline, mA, mARows, sA, tma_b, mB, sB,
                    cute.make_layout(cute.slice_(cta_layout_mnk, (None, 0, 0)).shape), cluster_coord, b_mcast_mask,
                    k_tiles, k_total, cluster_id, num_launched, tidx, warp_idx == 0)
            else:
                if warp_idx == 0:
                    TmaProducer(self.tile_m, self.tile_n, self.tile_k, self.ab_stages, self.desc_slots, self.epi_tile,
                                grouped_k=self.grouped_k, aux_l2=self.aux_l2,
                                scale_copier=StageScaleCopier(self.n_blocks) if self.scales_smem else None).run(
                        walk, ab_pipeline, desc_pipeline, tma_a, mA, sA, a_mcast_mask, tma_b, mB, sB, b_mcast_mask,
                        cta_layout_mnk, cluster_coord, cta_rank, mCuRows, mDescWs, k_tiles, cluster_id, num_launched,
                        tma_aux, mAuxTma, sD0, scales=(sScales, mSA, mSB, m_total) if const_expr(self.scales_smem) else None)
                if const_expr(self.grouped_k):
                    if warp_idx == 1:
                        # Writer warp: prepares the cut descriptors the producer loads partial
                        # K blocks through (gemm_base.descriptors).
                        DescriptorRing(mDescWs, self.desc_slots, cluster_id, cta_layout_mnk, cta_rank).run_writer(
                            desc_pipeline, walk, tma_a, tma_b, mA_gmem, mB_gmem, self.tile_k, cluster_id, num_launched)
        else:
            # ------------------------------------------------------------ consumers
            cute.arch.setmaxregister_increase(CONSUMER_REGS)
            consumer_wg = wg_idx - 1
            mma_tid = tidx - THREADS_PER_WG
            epi_slot = Int32(0)
            epi_barrier_id = EPI_BARRIER_ID
            store_warp = 4
            t = cluster_id
            t_step = num_launched
            if const_expr(self.pingpong):
                mma_tid = tidx % THREADS_PER_WG
                epi_slot = consumer_wg
                epi_barrier_id = EPI_BARRIER_ID + consumer_wg
                store_warp = 4 + 4 * consumer_wg
                t = cluster_id + consumer_wg * num_launched
                t_step = 2 * num_launched
            epi_barrier = pipeline.NamedBarrier(barrier_id=epi_barrier_id, num_threads=self.mma_threads)

            thr_mma = tiled_mma.get_slice(mma_tid)
            # the WGMMA operand fragments (shared-memory descriptors) are the warpgroup's; with scales_smem
            # they are partitioned by the warpgroup's first thread, a warp-uniform index, so ptxas builds
            # the descriptors in uniform registers (no R2UR per WGMMA in the K loop)
            thr_ops = thr_mma
            if const_expr(self.scales_smem):
                thr_ops = tiled_mma.get_slice(consumer_wg * THREADS_PER_WG)
            tCsA = thr_ops.partition_A(sA)
            tCsB = thr_ops.partition_B(sB)
            tCrA = tiled_mma.make_fragment_A(tCsA)
            tCrB = tiled_mma.make_fragment_B(tCsB)
            cTile = cute.make_identity_tensor((self.tile_m, self.tile_n))
            tCcTile = thr_mma.partition_C(cTile)
            acc = cute.make_rmem_tensor(tCcTile.shape, Float32)
            num_k_blocks = cute.size(tCrA, mode=[2])
            if const_expr(self.block_scaled):
                scale_ring = self._scale_ring(storage, consumer_wg, tidx)
                mainloop = BlockScaledMainloop.build(tiled_mma, thr_mma, tCrA, tCrB, tCcTile, acc, sB, mSB,
                                                     tile_m=self.tile_m, tile_k=self.tile_k, ab_stages=self.ab_stages,
                                                     n_blocks=self.n_blocks, b_scale_rows=self.b_scale_rows,
                                                     scale_ring=scale_ring, sA=sA, scale_stages=sScales,
                                                     thr_ops=thr_ops)
            else:
                mainloop = WgmmaMainloop(tCrA, tCrB, num_k_blocks, self.gather_a)

            # Epilogue partitioning: registers -> smem (stmatrix) -> TMA store.
            out = EpilogueStore(cfg, self.epi, d_layout=self.d_layout, d_dtype=self.d_dtype, q_dtype=self.q_dtype,
                                epi_tile=self.epi_tile, tiled_mma=tiled_mma, acc=acc, tCcTile=tCcTile, sD0=sD0, sD1=sD1,
                                mma_tid=mma_tid)
            aux = AuxLoader(cfg, self.epi, grouped_k=self.grouped_k, mAux=mAux, n_total=n_total, coords=out.tRS_cEpi,
                            frag_shape=out.frag_shape, frag_size=out.frag_size, rows_scaled=self.b_scale_rows)

            store_pipeline = pipeline.PipelineTmaStore.create(
                num_stages=cfg.epi_stages,
                producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, self.mma_threads),
            )
            read_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.ab_stages)
            release_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.ab_stages)
            local_tile_idx = Int32(0)
            order_phase = Int32(0)

            while t < num_work:
                row_start, row_end, n_tile, expert = walk.coords(t, cluster_coord)
                tile_k_tiles = k_tiles
                if const_expr(self.grouped_k):
                    _, _, tile_k_tiles = k_range(mCuRows, expert, self.tile_k)
                if const_expr(self.pingpong):
                    # Skip the stages of the other warpgroup's tile (work index t - num_launched,
                    # loaded just before ours), then wait for our turn.
                    if consumer_wg == 1 or local_tile_idx > 0:
                        skip = k_tiles
                        if const_expr(self.grouped_k):
                            _, _, skip = k_range(mCuRows, walk.expert_of(t - num_launched), self.tile_k)
                        for _ in range(skip):
                            read_state.advance()
                            release_state.advance()
                    if consumer_wg == 1 or local_tile_idx > 0:
                        cute.arch.mbarrier_wait(order_bars + consumer_wg, order_phase)
                        order_phase = order_phase ^ 1

                # Epilogue-input fragments in flight, next sub-tile first (epilogue_aux: before
                # the mainloop for narrow cooperative tiles, during the last K tile for wide ones).
                tile = (row_start, row_end, n_tile, expert)
                aux_q = aux.before_mainloop(tile)

                # ---- mainloop
                if const_expr(self.block_scaled):
                    sa, sb, scale_tile = mSA, mSB, tile
                    if const_expr(self.grouped_k):  # the expert's scale blocks; B's scales have one expert mode
                        sa, sb = expert_block_scales(mSA, mSB, mCuRows, expert, self.tile_k)
                        scale_tile = (row_start, row_end, n_tile, Int32(0))
                    tiled_mma, read_state, release_state = mainloop.run_tile(
                        tiled_mma, acc, ab_pipeline, read_state, release_state, tile_k_tiles, sa, sb, scale_tile,
                        m_total, num_n_tiles, n_total)
                    if const_expr(self.b_scale_rows):  # (the FP8 weight gradient into main_grad: epilogue_aux)
                        aux_q = aux.after_mainloop(tile)
                else:
                    tiled_mma, read_state, release_state = mainloop.run(
                        tiled_mma, acc, ab_pipeline, read_state, release_state, tile_k_tiles)
                    if const_expr(aux_loaded_during_last_k_tile(self.cfg, self.epi)):
                        aux_q = aux.during_last_k_tile(tile)
                    mainloop.drain(ab_pipeline, release_state)
                    release_state.advance()
                if const_expr(self.pingpong):
                    # Hand the tensor cores to the other warpgroup.
                    cute.arch.mbarrier_arrive(order_bars + (1 - consumer_wg))

                # ---- epilogue
                first_row = out.first_row(row_start)
                if const_expr(self.epi.row_scale):
                    row_scales = [Float32(mScale[cutlass.min(first_row + r, row_end - 1)]) for r in out.frag_rows]
                gD_tile0, gD_tile1 = self._output_tiles(mD0, mD1, row_start, row_end, n_tile, m_total, expert)
                row_sums = [Float32(0.0) for _ in out.frag_rows]
                if const_expr(out.quantizes):
                    qvals, amax = out.begin_quantized()
                bSG_sD0, bSG_gD0 = out.partition_output(tma_d0, sD0, gD_tile0, self.epi_tile)
                bSG_sD1, bSG_gD1 = bSG_sD0, bSG_gD0
                if const_expr(two_outputs):
                    bSG_sD1, bSG_gD1 = out.partition_output(tma_d1, sD1, gD_tile1, self.epi_tile)
                for e in cutlass.range_constexpr(out.num_epi):
                    outs = visit_subtile(self.epi, out.fragment(e), out.frag_shape, out.frag_size,
                                         row_scales=row_scales if const_expr(self.epi.row_scale) else None,
                                         row_of=out.row_of, row_sums=row_sums, out_dtype=self.d_dtype,
                                         aux=functools.partial(aux.next, aux_q, tile, e))
                    if const_expr(out.quantizes):
                        out.collect_quantized(outs, e, qvals, amax)
                    if const_expr(out.num_plain > 0):
                        buf = (local_tile_idx * out.groups_per_tile + e) % cfg.epi_stages + epi_slot * cfg.epi_stages
                        out.store_plain(outs, e, buf, [tma_d0, tma_d1], [bSG_sD0, bSG_sD1], [bSG_gD0, bSG_gD1],
                                        store_pipeline, epi_barrier, warp_idx == store_warp)
                if const_expr(out.quantizes):
                    tma_q, bSG_sQ, bSG_gQ = tma_d0, bSG_sD0, bSG_gD0
                    if const_expr(self.q_index == 1):
                        tma_q, bSG_sQ, bSG_gQ = tma_d1, bSG_sD1, bSG_gD1
                    out.quantize_and_store(qvals, amax, tma_q, bSG_sQ, bSG_gQ, local_tile_idx, first_row, row_end,
                                           n_tile, mQS, store_pipeline, epi_barrier, warp_idx, store_warp)
                if const_expr(self.epi.row_sum):
                    out.store_row_sums(row_sums, first_row, row_end, n_tile, mRowSum)
                local_tile_idx += 1
                t += t_step
            if warp_idx == store_warp:
                store_pipeline.producer_tail()

    def _scale_ring(self, storage, consumer_wg, tidx):
        """The consumer warpgroup's ring of B's column scales (b_scale "rows_staged"), else None."""
        if not self.b_scale_staged:
            return None
        return ColumnScaleRing.build(storage.sSBRing.get_tensor(ring_layout()), consumer_wg, tidx)

    def _output_tiles(self, mD0, mD1, row_start, row_end, n_tile, m_total, expert):
        """The (tile_m, tile_n) TMA-coordinate tiles of each output for this tile."""
        return tuple(output_tile(mD, row_start, row_end, n_tile, m_total, expert, (self.tile_m, self.tile_n),
                                 grouped=self.grouped, grouped_k=self.grouped_k) for mD in (mD0, mD1))
