"""The Hopper GEMM's epilogue steps after the epilogue's math (traced inside `Sm90Gemm.kernel`).

Per output tile the kernel visits each (tile_m, epi_n) sub-tile of the WGMMA accumulator
(`gemm_base.epilogue_io.visit_subtile`) and hands the fp32 results here:
- plain outputs (bf16/fp16/fp32) go registers -> shared memory (stmatrix) -> TMA store, one
  store group per sub-tile, through a ring of epi_stages buffers per consumer warpgroup;
- the quantizing output codec (`EpilogueSpec.quantized`) keeps the quantized output's values
  of the whole tile in registers with each row's amax per 128-column block, then stores
  value / scale in FP8 (plain st.shared in stmatrix's thread/value split, TMA store) and the
  scales (`gemm_base.output_codec` holds the scale rule);
- row sums (dSReLU's `row_sum`): each row's partial over the tile, reduced over the four lanes
  sharing the row and stored by one of them (one partial per (row, N tile), no atomics).

The fragment maps (which accumulator element feeds which sub-tile element, which of the
thread's rows an element is on) are computed at trace time from the layouts and fail at
compile time where a layout breaks the WGMMA accumulator's row pattern.
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
import cutlass.utils.hopper_helpers as sm90_utils
from cutlass import Float32, const_expr
from cutlass.cute.nvgpu import cpasync

from ..epilogue import FP8_FMAX
from ..gemm_base.output_codec import block_scale, reduce_amax_across_quad, update_amax
from ..gemm_base.traced import TracedRecord


def fragment_row_offsets(coords, size: int) -> list:
    """Static row offset of each epilogue fragment element from the thread's first row
    (trace time).  The row sum keeps one partial per distinct offset and expects the
    WGMMA accumulator layout: rows r0 and r0 + 8 of each 64-row MMA block a warpgroup
    holds (r0, r0 + 8, r0 + 64, r0 + 72 for a 128-row ping-pong tile)."""
    offsets = [int(coords.layout(v)[0]) for v in range(size)]
    blocks = sorted({o - o % 64 for o in offsets})
    if sorted(set(offsets)) != sorted(b + r for b in blocks for r in (0, 8)):
        raise NotImplementedError(f"row_sum expects rows r0 and r0 + 8 per 64-row block, got offsets {offsets}")
    return offsets


def permutation(coords_to, coords_from, size: int) -> list:
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
        raise NotImplementedError(f"FP8 store fragment is not a permutation of the stored one: {perm}")
    return perm


def fragment_order(tRS_cTile, tRS_cEpi, frag_size: int, num_epi: int, epi_n: int) -> list:
    """Which element of the retiled accumulator feeds element v of epilogue sub-tile e
    (trace time): order[e][v] is the index whose tile coordinate is that of element v of a
    sub-tile shifted by e * epi_n columns.  With one 64-row WGMMA block per warpgroup this is
    e * frag_size + v; a 128-row ping-pong tile interleaves its two blocks differently.  A
    coordinate the accumulator does not hold fails here, at compile time."""
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


class EpilogueStore(TracedRecord):
    """Trace-time helper of a consumer warpgroup's epilogue: its partitions of the accumulator
    and the output buffers, and the store steps (see the module docstring)."""

    _traced = ("tRS_sD0", "tRS_sD1", "tRS_acc", "tRS_sQ")

    def __init__(self, cfg, epi, *, d_layout, d_dtype, q_dtype, epi_tile, tiled_mma, acc, tCcTile, sD0, sD1, mma_tid):
        self.cfg, self.epi = cfg, epi
        self.d_dtype, self.q_dtype = d_dtype, q_dtype
        self.q_index = epi.quantized_index
        self.fmax = FP8_FMAX[epi.q_format]
        self.blocks_per_tile = cfg.tile_n // 128  # the quantized output's 1x128 scale blocks
        # registers -> smem (stmatrix) -> TMA store
        r2s_atom = sm90_utils.get_smem_store_op(d_layout, elem_ty_d=d_dtype, elem_ty_acc=Float32)
        stmatrix_atom = cute.make_copy_atom(cute.nvgpu.warp.StMatrix8x8x16bOp(False, 4), d_dtype)
        c_atom = cute.make_tiled_copy_C_atom(stmatrix_atom, tiled_mma)
        self.tiled_r2s = cute.make_tiled_copy_S(r2s_atom, c_atom)
        thr_r2s = self.tiled_r2s.get_slice(mma_tid)
        self.tRS_sD0 = thr_r2s.partition_D(sD0)
        self.tRS_sD1 = thr_r2s.partition_D(sD1)
        self.tRS_acc = self.tiled_r2s.retile(acc)
        self.frag_shape = cute.shape(thr_r2s.partition_S(sD0))[:3]
        self.frag_size = frag_size = cute.size(self.frag_shape)
        self.num_epi = num_epi = cfg.tile_n // cfg.epi_n
        # (row, col) inside the epilogue sub-tile of each register fragment element:
        # where to read the auxiliary input.  The *source* partition: stmatrix moves
        # values between threads, so the destination partition names other elements.
        self.tRS_cEpi = thr_r2s.partition_S(cute.make_identity_tensor(epi_tile))
        # The thread's distinct rows (offsets from its first), and which one each fragment
        # element is on: one row scale, row-sum partial and quantization amax per row (2 or 4 rows).
        self.quantizes = quantizes = self.q_index >= 0
        self.per_row = epi.row_sum or epi.row_scale or quantizes
        self.row_offsets = fragment_row_offsets(self.tRS_cEpi, frag_size) if const_expr(self.per_row) else []
        self.frag_rows = sorted(set(self.row_offsets))
        self.row_of = [self.frag_rows.index(o) for o in self.row_offsets]
        self.acc_order = fragment_order(self.tiled_r2s.retile(tCcTile), self.tRS_cEpi, frag_size, num_epi, cfg.epi_n)
        # Outputs stored as they are (all but a quantized last one), and the store groups of a tile.
        self.num_plain = epi.num_outputs - (1 if quantizes else 0)
        self.groups_per_tile = num_epi * ((1 if self.num_plain else 0) + (1 if quantizes else 0))
        self.tRS_sQ = None
        if const_expr(quantizes):
            # the FP8 output: the same thread/value split as stmatrix's (so the same fragment
            # order), stored by plain st.shared; q_perm[j]: its element j is stmatrix's q_perm[j]
            self.tiled_r2s_q = cute.make_tiled_copy_S(cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), q_dtype),
                                                      c_atom)
            thr_r2s_q = self.tiled_r2s_q.get_slice(mma_tid)
            sQ = sD1 if const_expr(self.q_index == 1) else sD0
            self.tRS_sQ = thr_r2s_q.partition_D(sQ)
            self.q_frag_shape = cute.shape(thr_r2s_q.partition_S(sQ))[:3]
            self.q_perm = permutation(thr_r2s_q.partition_S(cute.make_identity_tensor(epi_tile)), self.tRS_cEpi,
                                      frag_size)

    def first_row(self, row_start):
        """The thread's first row of the tile (epilogues with per-row values; else row_start)."""
        if const_expr(self.per_row):
            return row_start + self.tRS_cEpi[0][0] - self.row_offsets[0]
        return row_start

    def begin_quantized(self):
        """The quantized output's values of the whole tile (its rows' 1x128 blocks) and each
        row's amax per (block, row): it is stored once every sub-tile is known."""
        qvals = cute.make_rmem_tensor((self.frag_size * self.num_epi,), Float32)
        amax = [Float32(0.0) for _ in range(len(self.frag_rows) * self.blocks_per_tile)]
        return qvals, amax

    def fragment(self, e: int):
        """Epilogue sub-tile `e` of the accumulator, as a fp32 register fragment."""
        frag = cute.make_rmem_tensor(self.frag_shape, Float32)
        for v in range(self.frag_size):  # unrolled at trace time
            frag[v] = self.tRS_acc[self.acc_order[e][v]]
        return frag

    def collect_quantized(self, outs, e: int, qvals, amax):
        """Keep sub-tile `e`'s quantized output values and fold them into the rows' amax."""
        qf = cute.make_rmem_tensor(self.frag_shape, Float32)
        qf.store(outs[self.q_index])
        for v in range(self.frag_size):  # unrolled at trace time
            qvals[e * self.frag_size + v] = qf[v]
        update_amax(amax, self.row_of, qf, self.frag_size,
                    base=len(self.frag_rows) * (e * self.cfg.epi_n // 128))

    @staticmethod
    def partition_output(tma_d, sD, gD_tile, epi_tile):
        """(smem buffers, global sub-tiles) of one output's TMA stores for this tile."""
        return cpasync.tma_partition(tma_d, 0, cute.make_layout(1), cute.group_modes(sD, 0, 2),
                                     cute.zipped_divide(gD_tile, epi_tile))

    @cute.jit
    def store_subtile(self, tiled_r2s, frags, dtype, tRS_s, tmas, bSG_s, bSG_g, e, buf, store_pipeline, epi_barrier,
                      is_store_warp):
        """Registers -> smem buffer `buf` -> TMA store of epilogue sub-tile `e`, one store group
        for every output in `frags` (fp32 vectors converted to `dtype` here, or register
        fragments already in their dtype when `dtype` is None).  The buffer's previous store
        is waited for only now, just before it is rewritten (not right after each store is
        issued): when the buffers hold a whole tile, the stores drain during the next tile's
        mainloop and the epilogue never waits for them."""
        if is_store_warp:
            store_pipeline.producer_acquire()
        epi_barrier.arrive_and_wait()
        for i in cutlass.range_constexpr(len(frags)):
            frag = frags[i]
            if const_expr(dtype is not None):
                frag = cute.make_rmem_tensor(self.frag_shape, dtype)
                frag.store(frags[i].to(dtype))
            cute.copy(tiled_r2s, frag, tRS_s[i][(None, None, None, buf)])
        cute.arch.fence_proxy("async.shared", space="cta")
        epi_barrier.arrive_and_wait()
        if is_store_warp:
            for i in cutlass.range_constexpr(len(frags)):
                cute.copy(tmas[i], bSG_s[i][(None, buf)], bSG_g[i][(None, e)])
            store_pipeline.producer_commit()

    def store_plain(self, outs, e: int, buf, tmas, bSG_s, bSG_g, store_pipeline, epi_barrier, is_store_warp):
        """Sub-tile `e` of the plain outputs (the first num_plain of `outs`) in the output dtype."""
        self.store_subtile(self.tiled_r2s, outs[:self.num_plain], self.d_dtype, [self.tRS_sD0, self.tRS_sD1],
                           tmas, bSG_s, bSG_g, e, buf, store_pipeline, epi_barrier, is_store_warp)

    @cute.jit
    def quantize_and_store(self, qvals, amax, tma_q, bSG_sQ, bSG_gQ, local_tile_idx, first_row, row_end, n_tile, mQS,
                           store_pipeline, epi_barrier, warp_idx, store_warp):
        """The quantizing codec: each row's scale from its amax, then value / scale in FP8 per
        sub-tile (TMA stores), then the scales (one per row of each 128-column block)."""
        num_epi, frag_size, nrows = self.num_epi, self.frag_size, len(self.frag_rows)
        reduce_amax_across_quad(amax)
        q_scales = [block_scale(a, self.fmax, self.epi.pow2_scales) for a in amax]
        inv = [Float32(1.0) / sc_ for sc_ in q_scales]
        for e in cutlass.range_constexpr(num_epi):
            qf = cute.make_rmem_tensor(self.q_frag_shape, Float32)
            for j in cutlass.range_constexpr(frag_size):
                qf[j] = qvals[e * frag_size + self.q_perm[j]] * inv[nrows * (e * self.cfg.epi_n // 128)
                                                                     + self.row_of[self.q_perm[j]]]
            qout = cute.make_rmem_tensor(self.q_frag_shape, self.q_dtype)
            qout.store(qf.load().to(self.q_dtype))
            buf = (local_tile_idx * self.groups_per_tile + self.groups_per_tile - num_epi + e) % self.cfg.epi_stages
            self.store_subtile(self.tiled_r2s_q, [qout], None, [self.tRS_sQ], [tma_q], [bSG_sQ], [bSG_gQ], e, buf,
                               store_pipeline, epi_barrier, warp_idx == store_warp)
        # a block past N (a cluster's second CTA past the last N tile, or a wide tile's
        # second block): its TMA stores are clipped, its scale column does not exist
        if cute.arch.lane_idx() % 4 == 0:
            for b in cutlass.range_constexpr(self.blocks_per_tile):
                if n_tile * self.blocks_per_tile + b < cute.size(mQS, mode=[1]):
                    for r in cutlass.range_constexpr(nrows):
                        if first_row + self.frag_rows[r] < row_end:
                            mQS[(first_row + self.frag_rows[r], n_tile * self.blocks_per_tile + b)] = \
                                q_scales[b * nrows + r]

    @cute.jit
    def store_row_sums(self, row_sums, first_row, row_end, n_tile, mRowSum):
        """Sum each row's partials over the 4 lanes that share it; one lane stores the tile's
        partial of each of its rows (deterministic)."""
        for i in cutlass.range_constexpr(len(self.frag_rows)):
            for off in cutlass.range_constexpr(1, 3):
                row_sums[i] = row_sums[i] + cute.arch.shuffle_sync_bfly(row_sums[i], offset=off)
        # a cluster's CTA past the last N tile (odd tile counts) has no partial column
        if cute.arch.lane_idx() % 4 == 0:
            if n_tile < cute.size(mRowSum, mode=[1]):
                for i in cutlass.range_constexpr(len(self.frag_rows)):
                    if first_row + self.frag_rows[i] < row_end:
                        mRowSum[(first_row + self.frag_rows[i], n_tile)] = row_sums[i]
