"""The block-scaled FP8 mainloop of the Hopper GEMM (traced inside `Sm90Gemm.kernel`).

Operands: A (M, K) and B (N, K, L) FP8, K-major; scales SA (M, ceil(K / 128)) per row and
128-K block, SB (ceil(N / 128), ceil(K / 128), L) per 128x128 block (L: one per expert).
A K tile is one scale block (tile_k = 128) and an N tile one block (tile_n = 128).

Promotion: each K tile's WGMMAs run into a scratch fp32 accumulator that starts from zero;
once they are done the consumer adds scratch * SA[row, kt] * SB[n block, kt] into the
promoted fp32 accumulator.  The tensor core's reduced-precision FP8 accumulation thus never
spans more than one block of K, and the scales are applied in full fp32 (DeepSeek-V3's
recipe).  Two scratch accumulators alternate: K tile kt + 1's WGMMAs are issued before tile
kt is promoted (wait_group 1), so a warpgroup keeps the tensor core fed through its own
promotions (3 x 64 registers per thread with a 128x128 cooperative tile).

Wide tiles (tile_n = 256: two N blocks, 128 accumulator registers per thread) cannot hold
two scratch accumulators next to the promoted one; `run_split_n` issues each N block's
WGMMAs (m64n128) into one scratch accumulator and promotes it with that block's weight
scale before the next block's, so a warpgroup's promotions leave the tensor core to the
other warpgroup (DeepGEMM's scheme).  The tile then halves the L2 -> SM traffic per FLOP
of A and the epilogues per FLOP.

Tall tiles (tile_m = 256, DeepGEMM's shape): each consumer warpgroup owns two 64-row waves
(the tiled MMA's two 64-row atoms repeat down the tile: warpgroup g's waves are rows g * 64 +
[0, 64) and 128 + g * 64 + [0, 64)).  `run_split_m` issues each wave's WGMMAs (m64n128, A's
fragments per wave) into one scratch accumulator and promotes it with the wave's two row
scales before the next wave's, so a warpgroup holds 128 promoted + 64 scratch registers and
B's shared-memory tile serves 256 rows (half the B traffic per FLOP of a 128-row tile).

Per-row B scales (`b_scale_rows`, the weight gradient's operands quantized 1x128 along the
tokens on both sides: DeepGEMM's 1D1D): B's scale is per output column and K tile, so a
promotion multiplies each element by its row's and its column's scale.  A thread of an m64n128
WGMMA holds 2 rows x 32 columns: `run_rows` loads the K tile's 2 row scales and 32 column
scales an iteration ahead, issues its WGMMAs into one scratch accumulator, waits, and promotes (the serial
form: the other warpgroup keeps the tensor core busy meanwhile; two scratch accumulators and
two K tiles' column scales would not fit the register budget).  `run_rows_staged` (b_scale
"rows_staged") is `run`'s overlapped loop with the column scales staged in shared memory instead
(sm90/scale_ring.py: cp.async a pair of K tiles ahead, read at promotion).

Scales are read from global memory by the consumer threads, a K tile (or, in `run`, a pair
of K tiles) ahead of their promotion: ptxas schedules a load's first use as early as the loop
body allows, and with the use in the same iteration the warp waited for the load before its
next WGMMAs (the 128x128 kernel's largest stall by ncu's samples, H200 2026-12-03).  With
`KernelKey.scales_smem` (128-row tiles, 128x128 B blocks) the producer stages each K tile's scales
in shared memory with its operands instead and `run` / `run_split_n` read them from the stage
after its wait (sm90/scale_stage.py).

The producer, the tile walk, the pipelines and the epilogue are the GEMM family's; this
module is only what differs from the bf16 WGMMA mainloop.
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Float32, const_expr
from cutlass.cute.nvgpu import warpgroup

from ..gemm_base.traced import TracedRecord
from .scale_ring import pair_slot
from .scale_stage import read_stage_scales


def accumulator_rows(tCcTile, size: int) -> tuple[list, int]:
    """(row_of, delta) at trace time: row_of[v] is 0 or 1 as accumulator element v of a 64-row
    WGMMA block is on the thread's row r0 or r0 + 8; delta is element 0's row minus r0."""
    offsets = [int(tCcTile.layout(v)[0]) for v in range(size)]
    r0 = min(offsets)
    if sorted(set(offsets)) != [r0, r0 + 8]:
        raise NotImplementedError(f"expected accumulator rows r0 and r0 + 8, got offsets {sorted(set(offsets))}")
    return [0 if o == r0 else 1 for o in offsets], offsets[0] - r0


def accumulator_cols(tCcTile, size: int) -> tuple[list, list]:
    """(col_offsets, col_of) at trace time: the thread's distinct accumulator columns relative to
    its element 0's column, and col_of[v] the index in col_offsets of element v's column."""
    offsets = [int(tCcTile.layout(v)[1]) for v in range(size)]
    c0 = offsets[0]
    distinct = sorted(set(o - c0 for o in offsets))
    return distinct, [distinct.index(o - c0) for o in offsets]


def wave_elements(tCcTile, tCcWave, size: int, waves: int) -> list:
    """At trace time: index[w][v] is the accumulator element of wave w at the coordinate of
    element v of one wave's partition `tCcWave` (a 128-row slice of the tile, the same for
    every wave) shifted down by 128 w rows; fails where the tile's partition lacks one."""
    where = {}
    for i in range(cute.size(tCcTile)):
        c = tCcTile.layout(i)
        where[(int(c[0]), int(c[1]))] = i
    index = []
    for w in range(waves):
        row = []
        for v in range(size):
            c = tCcWave.layout(v)
            key = (int(c[0]) + 128 * w, int(c[1]))
            if key not in where:
                raise NotImplementedError(f"wave {w} element {v} at {key} is not in the thread's accumulator")
            row.append(where[key])
        index.append(row)
    return index


class BlockScaledMainloop(TracedRecord):
    """Trace-time helper: one tile's FP8 K loop with promotion (see the module docstring).

    `row_of[v]`: which of the thread's two rows accumulator element v is on."""

    _traced = ("tCrA", "tCrB", "tCrB_blocks", "tCrA_waves", "blk", "blk2", "sc", "sbc", "thread_row0", "thread_col0",
               "num_sb_blocks", "scale_ring", "scale_stages")

    def __init__(self, tCrA, tCrB, num_k_blocks: int, row_of: list, acc_size: int, tCrB_blocks=None):
        self.tCrA, self.tCrB = tCrA, tCrB
        # split-N: B's fragments per 128-column N block (each partitioned from that block's rows)
        self.tCrB_blocks = tCrB_blocks or []
        # split-M: A's fragments per 128-row wave pair (each warpgroup's 64 rows of it), and
        # wave_index[w][v]: the accumulator element of wave w's scratch element v
        self.tCrA_waves = []
        self.m_waves = 1
        self.wave_index = []
        self.num_k_blocks = num_k_blocks
        self.row_of = row_of
        self.acc_size = acc_size
        # set by `build`: the registers of a consumer warpgroup's mainloop
        self.n_blocks = 1
        self.blk = self.blk2 = self.sc = self.thread_row0 = self.num_sb_blocks = None
        # per-row B scales: the thread's column scales of a K tile and its columns
        self.b_scale_rows = False
        self.sbc = self.thread_col0 = None
        self.col_offsets, self.col_of = [], []
        # "rows_staged": the warpgroup's ring of B's column scales in shared memory (sm90/scale_ring.py)
        self.scale_ring = None
        # KernelKey.scales_smem: the operand stages' scale slots (sm90/scale_stage.py), else None
        self.scale_stages = None

    @classmethod
    def build(cls, tiled_mma, thr_mma, tCrA, tCrB, tCcTile, acc, sB, mSB, *, tile_m: int, tile_k: int, ab_stages: int,
              n_blocks: int, b_scale_rows: bool = False, scale_ring=None, sA=None, scale_stages=None, thr_ops=None):
        """The mainloop of a consumer warpgroup with its registers: the scratch accumulators, the
        scale products, the thread's first accumulator row; `n_blocks` 128-column N blocks per
        tile (more than one: the split-N loop, B's fragments per block).  `scale_ring` (per-row B
        scales only): B's column scales staged in shared memory, the overlapped loop.  A 256-row
        tile (cooperative) takes the split-M loop: A's fragments per wave from `sA`.  `scale_stages`
        (128-row tiles with 128x128 B scale blocks): the K tiles' scales are read from the operand
        stages' scale slots (sm90/scale_stage.py) instead of loaded from global memory.  `thr_ops`:
        the slice that partitions the shared-memory operands (default `thr_mma`)."""
        thr_ops = thr_mma if thr_ops is None else thr_ops
        if tile_m == 256:
            return cls._build_split_m(tiled_mma, thr_mma, tCrA, tCrB, tCcTile, acc, sA, mSB, tile_k=tile_k,
                                      ab_stages=ab_stages)
        tCrB_blocks = None
        if b_scale_rows and scale_ring is None:
            # one scratch accumulator (the serial form; see the module docstring)
            blk = cute.make_rmem_tensor(tCcTile.shape, Float32)
            blk2 = blk
        elif n_blocks == 1:
            # two scratch accumulators the K tiles' WGMMAs alternate into, promoted into acc
            blk = cute.make_rmem_tensor(tCcTile.shape, Float32)
            blk2 = cute.make_rmem_tensor(tCcTile.shape, Float32)
        else:
            # one N block's scratch accumulator (split-N mainloop), and B per N block
            blk = cute.make_rmem_tensor(thr_mma.partition_C(cute.make_identity_tensor((tile_m, 128))).shape, Float32)
            blk2 = blk
            tCrB_blocks = [tiled_mma.make_fragment_B(thr_ops.partition_B(
                cute.local_tile(sB, (128, tile_k, ab_stages), (h, 0, 0)))) for h in range(n_blocks)]
        # per K tile (or N block): two rows' scales and B's; `run` holds two pairs of K tiles' (12),
        # `run_split_n` this and the next K tile's
        sc = cute.make_rmem_tensor((6 * max(2, n_blocks),), Float32)
        acc_row_of, acc_first_row = accumulator_rows(tCcTile, cute.size(acc))
        mainloop = cls(tCrA, tCrB, cute.size(tCrA, mode=[2]), acc_row_of, cute.size(acc), tCrB_blocks)
        mainloop.n_blocks = n_blocks
        mainloop.blk, mainloop.blk2, mainloop.sc = blk, blk2, sc
        mainloop.thread_row0 = tCcTile[0][0] - acc_first_row  # the thread's first accumulator row in the tile
        mainloop.num_sb_blocks = cute.size(mSB, mode=[0])
        mainloop.scale_stages = scale_stages
        if b_scale_rows:
            mainloop.b_scale_rows = True
            mainloop.col_offsets, mainloop.col_of = accumulator_cols(tCcTile, cute.size(acc))
            if scale_ring is None:  # this K tile's column scales and the next one's, in registers
                mainloop.sbc = cute.make_rmem_tensor((2 * len(mainloop.col_offsets),), Float32)
            mainloop.scale_ring = scale_ring
            mainloop.thread_col0 = tCcTile[0][1]  # element 0's column in the tile (col_offsets are from it)
        return mainloop

    @classmethod
    def _build_split_m(cls, tiled_mma, thr_mma, tCrA, tCrB, tCcTile, acc, sA, mSB, *, tile_k: int, ab_stages: int):
        """`build` of a 256-row tile: one wave's scratch accumulator (64 registers), A's fragments
        per wave (the 128-row slice both warpgroups' waves w are in), each thread's rows."""
        m_waves = 2
        tCcWave = thr_mma.partition_C(cute.make_identity_tensor((128, 128)))
        wave_size = cute.size(tCcWave)
        blk = cute.make_rmem_tensor(tCcWave.shape, Float32)
        tCrA_waves = [tiled_mma.make_fragment_A(thr_mma.partition_A(
            cute.local_tile(sA, (128, tile_k, ab_stages), (w, 0, 0)))) for w in range(m_waves)]
        row_of, first_row = accumulator_rows(tCcWave, wave_size)
        mainloop = cls(tCrA, tCrB, cute.size(tCrA, mode=[2]), row_of, cute.size(acc))
        mainloop.m_waves = m_waves
        mainloop.tCrA_waves = tCrA_waves
        mainloop.wave_index = wave_elements(tCcTile, tCcWave, wave_size, m_waves)
        mainloop.blk = mainloop.blk2 = blk
        # per K tile: each wave's two row scales and B's block scale (5), this K tile's and the next one's
        mainloop.sc = cute.make_rmem_tensor((2 * (2 * m_waves + 1),), Float32)
        mainloop.thread_row0 = tCcWave[0][0] - first_row  # the thread's first row of wave 0 (wave w: + 128 w)
        mainloop.num_sb_blocks = cute.size(mSB, mode=[0])
        return mainloop

    def run_tile(self, tiled_mma, acc, ab_pipeline, read_state, release_state, k_tiles, mSA, mSB, tile, m_total,
                 num_n_tiles, n_total):
        """One tile's K loop (`run`, `run_split_n` for a tile of several N blocks, `run_split_m` for
        a 256-row tile), `tile` = (row_start, row_end, n_tile, expert).  Returns (tiled_mma, read_state, release_state)."""
        row_start, _, n_tile, expert = tile
        # the thread's two rows, clamped into A (rows past M are computed, never
        # stored), and the weight-scale block (an N tile past N: clamped, never stored)
        rows = (cutlass.min(row_start + self.thread_row0, m_total - 1),
                cutlass.min(row_start + self.thread_row0 + 8, m_total - 1))
        if const_expr(self.m_waves > 1):
            wave_rows = [cutlass.min(row_start + self.thread_row0 + 128 * w + r, m_total - 1)
                         for w in range(self.m_waves) for r in (0, 8)]
            return self.run_split_m(tiled_mma, acc, self.blk, self.sc, ab_pipeline, read_state, release_state, k_tiles,
                                    mSA, mSB, wave_rows, cutlass.min(n_tile, num_n_tiles - 1), expert)
        if const_expr(self.scale_ring is not None):
            # the column this thread copies into the ring (past N: the last one's, never stored)
            col_src = cutlass.min(n_tile * 128 + self.scale_ring.col, n_total - 1)
            return self.run_rows_staged(tiled_mma, acc, self.blk, self.blk2, self.sc, self.scale_ring, ab_pipeline,
                                        read_state, release_state, k_tiles, mSA, mSB, rows, col_src, expert)
        if const_expr(self.b_scale_rows):
            return self.run_rows(tiled_mma, acc, self.blk, self.sc, self.sbc, ab_pipeline, read_state, release_state,
                                 k_tiles, mSA, mSB, rows, n_tile * 128 + self.thread_col0, n_total, expert)
        if const_expr(self.n_blocks == 1):
            sb_block = cutlass.min(n_tile, num_n_tiles - 1)
            return self.run(tiled_mma, acc, self.blk, self.blk2, self.sc, ab_pipeline, read_state, release_state,
                            k_tiles, mSA, mSB, rows, sb_block, expert)
        return self.run_split_n(tiled_mma, acc, self.blk, self.sc, ab_pipeline, read_state, release_state, k_tiles,
                                mSA, mSB, rows, n_tile * self.n_blocks, self.num_sb_blocks, expert, self.n_blocks)

    def load_scales(self, sc, at: int, mSA, mSB, rows, sb_block, kt, expert):
        """SA[row, kt] of the thread's two rows into sc[at], sc[at + 1] and SB[sb_block, kt, expert]
        into sc[at + 2], as loaded: issued before the K tile's WGMMAs, multiplied only in its
        promotion (a product here made the warp wait for the loads before its next WGMMAs:
        ncu on the H200, 2026-12-03, the largest stall of the 128x128 mainloop)."""
        sc[at] = Float32(mSA[(rows[0], kt)])
        sc[at + 1] = Float32(mSA[(rows[1], kt)])
        # rows[0] >> 31 is 0 (rows are clamped into A), but not warp-uniform to ptxas: B's scale stays
        # in a vector register, where ptxas would otherwise move it to a uniform one right after its
        # load (R2UR) and the warp would wait for the load there, before its next WGMMAs
        sc[at + 2] = Float32(mSB[(sb_block + (rows[0] >> 31), kt, expert)])

    def issue(self, tiled_mma, blk, ab_pipeline, read_state, sc=None, at: int = 0):
        """Wait for the K tile's operands and issue its WGMMAs (one commit group) into `blk`, the
        first k block overwriting it; with scales in shared memory (`scale_stages`) then read the
        K tile's scales from its stage's slot into sc[at:at + 3] (before the stage is released).
        Returns `tiled_mma`, which the caller rebinds: its ACCUMULATE field is a traced value that
        loops must carry."""
        ab_pipeline.consumer_wait(read_state)
        warpgroup.fence()
        for kb in range(self.num_k_blocks):  # plain Python: unrolled at trace time
            tiled_mma.set(warpgroup.Field.ACCUMULATE, kb != 0)
            cute.gemm(tiled_mma, blk, self.tCrA[(None, None, kb, read_state.index)],
                      self.tCrB[(None, None, kb, read_state.index)], blk)
        warpgroup.commit_group()
        if self.scale_stages is not None and sc is not None:
            read_stage_scales(sc, at, self.scale_stages, read_state.index, self.thread_row0, 1)
        return tiled_mma

    def promote(self, acc, blk, sc, at: int):
        """acc += blk * (the row's scale product): one K tile's promotion (scales as load_scales
        left them at sc[at:at + 3])."""
        row_scale = (sc[at] * sc[at + 2], sc[at + 1] * sc[at + 2])
        for v in range(self.acc_size):  # unrolled at trace time
            acc[v] = acc[v] + blk[v] * row_scale[self.row_of[v]]

    @staticmethod
    def retire(ab_pipeline, release_state, depth: int):
        """Wait until at most `depth` K tiles' WGMMAs are in flight and free the oldest stage (the
        caller advances `release_state` in its own body: the tracer carries through a loop only
        the states whose methods the loop body itself calls)."""
        warpgroup.wait_group(depth)
        ab_pipeline.consumer_release(release_state)

    @cute.jit
    def run(self, tiled_mma, acc, blk, blk2, sc, ab_pipeline, read_state, release_state, k_tiles, mSA, mSB, rows,
            sb_block, expert):
        """The tile's K loop: acc = sum over K tiles of promote(WGMMA(tile)).  The loop runs
        whole pairs of K tiles so that each iteration starts and ends with `blk` in flight (a
        branch inside would leave ptxas unsure which accumulator is in flight, and it
        serializes the WGMMAs: C7514).

        Scales: an iteration promotes K tiles kp - 1 and kp with the scales in sc[0:6] (even
        tile at 0, odd at 3) and, first thing, loads those of the next iteration's two into
        sc[6:12], moved down at its end.  ptxas places a load's first use as early as the
        load allows within the loop body, so only a loop iteration between load and use
        keeps the warp from waiting for it before its next WGMMAs (ncu, H200 2026-12-03: a
        use right after the load was the mainloop's largest stall).  With scales in shared
        memory (`scale_stages`, sm90/scale_stage.py) each `issue` reads its K tile's scales from
        the stage's slot instead (the even tile's into sc[0:3], the odd one's into sc[3:6]), no
        global loads in the loop.  Returns (tiled_mma, read_state, release_state) for the
        caller to rebind (traced values its own loop carries)."""
        acc.fill(0.0)
        global_scales = self.scale_stages is None
        if const_expr(global_scales):
            self.load_scales(sc, 0, mSA, mSB, rows, sb_block, 0, expert)
            self.load_scales(sc, 3, mSA, mSB, rows, sb_block, cutlass.min(1, k_tiles - 1), expert)
        tiled_mma = self.issue(tiled_mma, blk, ab_pipeline, read_state, sc, 0)
        read_state.advance()
        for kp in range(1, k_tiles - 1, 2):
            if const_expr(global_scales):
                # the next iteration's K tiles kp + 1 and kp + 2 (past the last: the last one's, never promoted)
                self.load_scales(sc, 6, mSA, mSB, rows, sb_block, kp + 1, expert)
                self.load_scales(sc, 9, mSA, mSB, rows, sb_block, cutlass.min(kp + 2, k_tiles - 1), expert)
            tiled_mma = self.issue(tiled_mma, blk2, ab_pipeline, read_state, sc, 3)
            read_state.advance()
            self.retire(ab_pipeline, release_state, 1)
            release_state.advance()
            self.promote(acc, blk, sc, 0)
            tiled_mma = self.issue(tiled_mma, blk, ab_pipeline, read_state, sc, 0)
            read_state.advance()
            self.retire(ab_pipeline, release_state, 1)
            release_state.advance()
            self.promote(acc, blk2, sc, 3)
            if const_expr(global_scales):
                for v in range(6):  # plain Python: unrolled at trace time
                    sc[v] = sc[v + 6]
        if k_tiles % 2 == 0:
            # one K tile left to issue: into blk2 while blk is promoted
            tiled_mma = self.issue(tiled_mma, blk2, ab_pipeline, read_state, sc, 3)
            read_state.advance()
            self.retire(ab_pipeline, release_state, 1)
            release_state.advance()
            self.promote(acc, blk, sc, 0)
            self.retire(ab_pipeline, release_state, 0)
            release_state.advance()
            self.promote(acc, blk2, sc, 3)
        else:
            self.retire(ab_pipeline, release_state, 0)
            release_state.advance()
            self.promote(acc, blk, sc, 0)
        return tiled_mma, read_state, release_state

    def issue_block(self, tiled_mma, blk, read_state, n_block: int):
        """Issue one N block's WGMMAs of the current K tile (one commit group) into the scratch
        `blk` (the operands' stage must have landed).  Returns `tiled_mma` (rebound)."""
        warpgroup.fence()
        for kb in range(self.num_k_blocks):  # plain Python: unrolled at trace time
            tiled_mma.set(warpgroup.Field.ACCUMULATE, kb != 0)
            cute.gemm(tiled_mma, blk, self.tCrA[(None, None, kb, read_state.index)],
                      self.tCrB_blocks[n_block][(None, None, kb, read_state.index)], blk)
        warpgroup.commit_group()
        return tiled_mma

    def promote_block(self, acc, n_block: int, blk, sc, at: int):
        """acc[N block] += blk * (the row's scale product; scales as load_scales left them)."""
        acc_b = acc[(None, 0, n_block)]
        row_scale = (sc[at] * sc[at + 2], sc[at + 1] * sc[at + 2])
        for v in range(cute.size(blk)):  # unrolled at trace time
            acc_b[v] = acc_b[v] + blk[v] * row_scale[self.row_of[v]]

    @cute.jit
    def run_split_n(self, tiled_mma, acc, blk, sc, ab_pipeline, read_state, release_state, k_tiles, mSA, mSB,
                    rows, sb_block0, num_sb_blocks, expert, n_blocks: cutlass.Constexpr):
        """The K loop of an `n_blocks`-block-wide tile: per K tile and N block, WGMMAs into `blk`,
        wait, promote with the block's scale.  A K tile's scales are loaded at the top of the
        iteration before (into sc[3 n_blocks:], moved down at its end; see `run` for why).
        With scales in shared memory (`scale_stages`) they are read from the K tile's stage slot
        after its wait instead.  Returns (tiled_mma, read_state, release_state)."""
        acc.fill(0.0)
        nxt = 3 * n_blocks
        global_scales = self.scale_stages is None
        if const_expr(global_scales):
            for nb in cutlass.range_constexpr(n_blocks):
                # a block past N reads the last block's scale: computed, never stored
                self.load_scales(sc, 3 * nb, mSA, mSB, rows, cutlass.min(sb_block0 + nb, num_sb_blocks - 1), 0,
                                 expert)
        for kt in range(k_tiles):
            if const_expr(global_scales):
                for nb in cutlass.range_constexpr(n_blocks):  # the next K tile's (past the last: the last one's)
                    self.load_scales(sc, nxt + 3 * nb, mSA, mSB, rows,
                                     cutlass.min(sb_block0 + nb, num_sb_blocks - 1), cutlass.min(kt + 1, k_tiles - 1),
                                     expert)
            ab_pipeline.consumer_wait(read_state)
            if const_expr(not global_scales):
                read_stage_scales(sc, 0, self.scale_stages, read_state.index, self.thread_row0, n_blocks)
            for nb in cutlass.range_constexpr(n_blocks):
                tiled_mma = self.issue_block(tiled_mma, blk, read_state, nb)
                warpgroup.wait_group(0)
                self.promote_block(acc, nb, blk, sc, 3 * nb)
            ab_pipeline.consumer_release(release_state)
            release_state.advance()
            read_state.advance()
            if const_expr(global_scales):
                for v in range(nxt):  # plain Python: unrolled at trace time
                    sc[v] = sc[v + nxt]
        return tiled_mma, read_state, release_state

    def load_wave_scales(self, sc, at: int, mSA, mSB, wave_rows, sb_block, kt, expert):
        """K tile kt's scales of a split-M tile: SA of each wave's two rows into sc[at + 2 w],
        sc[at + 2 w + 1] and B's block scale into sc[at + 2 m_waves] (as `load_scales`)."""
        for i in range(len(wave_rows)):  # plain Python: unrolled at trace time
            sc[at + i] = Float32(mSA[(wave_rows[i], kt)])
        # not warp-uniform to ptxas (see load_scales)
        sc[at + len(wave_rows)] = Float32(mSB[(sb_block + (wave_rows[0] >> 31), kt, expert)])

    def issue_wave(self, tiled_mma, blk, read_state, wave: int):
        """Issue one wave's WGMMAs of the current K tile (one commit group) into the scratch
        `blk` (the operands' stage must have landed).  Returns `tiled_mma` (rebound)."""
        warpgroup.fence()
        for kb in range(self.num_k_blocks):  # plain Python: unrolled at trace time
            tiled_mma.set(warpgroup.Field.ACCUMULATE, kb != 0)
            cute.gemm(tiled_mma, blk, self.tCrA_waves[wave][(None, None, kb, read_state.index)],
                      self.tCrB[(None, None, kb, read_state.index)], blk)
        warpgroup.commit_group()
        return tiled_mma

    def promote_wave(self, acc, wave: int, blk, sc, at: int):
        """acc[wave] += blk * (the row's scale product), the wave's scales at sc[at + 2 wave:]."""
        sb = sc[at + 2 * self.m_waves]
        row_scale = (sc[at + 2 * wave] * sb, sc[at + 2 * wave + 1] * sb)
        index = self.wave_index[wave]
        for v in range(cute.size(blk)):  # unrolled at trace time
            acc[index[v]] = acc[index[v]] + blk[v] * row_scale[self.row_of[v]]

    @cute.jit
    def run_split_m(self, tiled_mma, acc, blk, sc, ab_pipeline, read_state, release_state, k_tiles, mSA, mSB,
                    wave_rows, sb_block, expert):
        """The K loop of a 256-row tile: per K tile and wave, WGMMAs into `blk`, wait, promote with
        the wave's row scales; the stage is released once the last wave's WGMMAs are done.  A K
        tile's scales are loaded at the top of the iteration before (into sc[nxt:], moved down at
        its end; see `run` for why).  Returns (tiled_mma, read_state, release_state)."""
        acc.fill(0.0)
        nxt = 2 * self.m_waves + 1
        self.load_wave_scales(sc, 0, mSA, mSB, wave_rows, sb_block, 0, expert)
        for kt in range(k_tiles):
            # the next K tile's (past the last: the last one's, never promoted)
            self.load_wave_scales(sc, nxt, mSA, mSB, wave_rows, sb_block, cutlass.min(kt + 1, k_tiles - 1), expert)
            ab_pipeline.consumer_wait(read_state)
            for w in cutlass.range_constexpr(self.m_waves):
                tiled_mma = self.issue_wave(tiled_mma, blk, read_state, w)
                warpgroup.wait_group(0)
                if const_expr(w == self.m_waves - 1):
                    ab_pipeline.consumer_release(release_state)
                self.promote_wave(acc, w, blk, sc, 0)
            release_state.advance()
            read_state.advance()
            for v in range(nxt):  # plain Python: unrolled at trace time
                sc[v] = sc[v + nxt]
        return tiled_mma, read_state, release_state

    def load_row_scales(self, sc, sbc, at: int, mSA, mSB, rows, col0, n_total, kt, expert):
        """K tile kt's scales: SA of the thread's two rows into sc[at], sc[at + 1], and B's per-row
        scale of each of the thread's columns into sbc[at * ncols / 2 ...] (a column past N reads
        the last one: computed, never stored)."""
        ncols = len(self.col_offsets)
        sc[at] = Float32(mSA[(rows[0], kt)])
        sc[at + 1] = Float32(mSA[(rows[1], kt)])
        for j in range(ncols):  # plain Python: unrolled at trace time
            sbc[at // 2 * ncols + j] = Float32(mSB[(cutlass.min(col0 + self.col_offsets[j], n_total - 1), kt, expert)])

    def promote_rows(self, acc, blk, sc, sbc):
        """acc += blk * (its row's scale * its column's scale): one K tile's promotion."""
        for v in range(self.acc_size):  # unrolled at trace time
            acc[v] = acc[v] + blk[v] * (sc[self.row_of[v]] * sbc[self.col_of[v]])

    @cute.jit
    def run_rows(self, tiled_mma, acc, blk, sc, sbc, ab_pipeline, read_state, release_state, k_tiles, mSA, mSB, rows,
                 col0, n_total, expert):
        """The K loop with per-row B scales: per K tile, the WGMMAs into `blk`, wait, promote.  A K
        tile's scales are loaded at the top of the iteration before (sc[2:4] and the second half of
        sbc, moved down at its end; see `run` for why).  Returns (tiled_mma, read_state,
        release_state)."""
        acc.fill(0.0)
        ncols = len(self.col_offsets)
        self.load_row_scales(sc, sbc, 0, mSA, mSB, rows, col0, n_total, 0, expert)
        for kt in range(k_tiles):
            # the next K tile's (past the last: the last one's, never promoted)
            self.load_row_scales(sc, sbc, 2, mSA, mSB, rows, col0, n_total, cutlass.min(kt + 1, k_tiles - 1), expert)
            tiled_mma = self.issue(tiled_mma, blk, ab_pipeline, read_state)
            warpgroup.wait_group(0)
            self.promote_rows(acc, blk, sc, sbc)
            ab_pipeline.consumer_release(release_state)
            release_state.advance()
            read_state.advance()
            sc[0], sc[1] = sc[2], sc[3]
            for j in range(ncols):  # plain Python: unrolled at trace time
                sbc[j] = sbc[ncols + j]
        return tiled_mma, read_state, release_state

    @staticmethod
    def load_row_pair(sc, at: int, mSA, rows, kt0, kt1):
        """SA of the thread's two rows for K tiles kt0 (into sc[at], sc[at + 1]) and kt1 (sc[at + 2],
        sc[at + 3])."""
        for j, kt in enumerate((kt0, kt1)):  # plain Python: unrolled at trace time
            sc[at + 2 * j] = Float32(mSA[(rows[0], kt)])
            sc[at + 2 * j + 1] = Float32(mSA[(rows[1], kt)])

    def promote_staged(self, acc, blk, sc, at: int, ring, j: int, slot):
        """acc += blk * (its row's scale * its column's scale): the promotion of the pair's K tile j,
        row scales at sc[at:at + 2], column scales read from the ring's `slot`."""
        col_scale = ring.scales(self.thread_col0, self.col_offsets, j, slot)
        for v in range(self.acc_size):  # unrolled at trace time
            acc[v] = acc[v] + blk[v] * (sc[at + self.row_of[v]] * col_scale[self.col_of[v]])

    @cute.jit
    def run_rows_staged(self, tiled_mma, acc, blk, blk2, sc, ring, ab_pipeline, read_state, release_state, k_tiles,
                        mSA, mSB, rows, col_src, expert):
        """`run`'s overlapped K loop with per-row B scales: whole pairs of K tiles per iteration, K
        tile kt + 1's WGMMAs issued before tile kt is promoted (wait_group 1), `blk` and `blk2`
        alternating.  Iteration i (K tiles kp - 1 and kp, kp = 2 i + 1) first loads the next
        pair's row scales of A into sc[4:8] (registers, a loop iteration ahead: see `run`) and
        copies its column scales of B into the ring's pair slot i + 1 (cp.async), and promotes
        with sc[0:4] and slot i once the warpgroup's copies of slot i have landed
        (sm90/scale_ring.py).  Returns (tiled_mma, read_state, release_state)."""
        acc.fill(0.0)
        ring.barrier()  # the previous tile's reads of the ring are done before slot 0 is rewritten
        kt1 = cutlass.min(1, k_tiles - 1)
        self.load_row_pair(sc, 0, mSA, rows, 0, kt1)
        ring.load_pair(mSB, col_src, 0, kt1, expert, 0)
        tiled_mma = self.issue(tiled_mma, blk, ab_pipeline, read_state)
        read_state.advance()
        for kp in range(1, k_tiles - 1, 2):
            slot = pair_slot(kp // 2)
            # the next iteration's K tiles kp + 1 and kp + 2 (past the last: the last one's, never promoted)
            kt_next = cutlass.min(kp + 2, k_tiles - 1)
            self.load_row_pair(sc, 4, mSA, rows, kp + 1, kt_next)
            ring.load_pair(mSB, col_src, kp + 1, kt_next, expert, pair_slot(kp // 2 + 1))
            tiled_mma = self.issue(tiled_mma, blk2, ab_pipeline, read_state)
            read_state.advance()
            self.retire(ab_pipeline, release_state, 1)
            release_state.advance()
            ring.sync(1)
            self.promote_staged(acc, blk, sc, 0, ring, 0, slot)
            tiled_mma = self.issue(tiled_mma, blk, ab_pipeline, read_state)
            read_state.advance()
            self.retire(ab_pipeline, release_state, 1)
            release_state.advance()
            self.promote_staged(acc, blk2, sc, 2, ring, 1, slot)
            for v in range(4):  # plain Python: unrolled at trace time
                sc[v] = sc[v + 4]
        # the last one or two K tiles: their scales are in the slot of the loop's iteration count
        last_slot = pair_slot((k_tiles - 1) // 2)
        ring.sync(0)
        if k_tiles % 2 == 0:
            # one K tile left to issue: into blk2 while blk is promoted
            tiled_mma = self.issue(tiled_mma, blk2, ab_pipeline, read_state)
            read_state.advance()
            self.retire(ab_pipeline, release_state, 1)
            release_state.advance()
            self.promote_staged(acc, blk, sc, 0, ring, 0, last_slot)
            self.retire(ab_pipeline, release_state, 0)
            release_state.advance()
            self.promote_staged(acc, blk2, sc, 2, ring, 1, last_slot)
        else:
            self.retire(ab_pipeline, release_state, 0)
            release_state.advance()
            self.promote_staged(acc, blk, sc, 0, ring, 0, last_slot)
        return tiled_mma, read_state, release_state
