"""Per-expert padded column-wise FP8 quantization (sm_90a): the grouped FP8 weight gradient's
operand layout (docs/fp8.md, "grouped weight gradient").

x (T, K) bf16, tokens sorted by expert -> qt (K, Tp) FP8 and scales (K, Tp/128) fp32: the
1x128 blocks of x^T along the tokens, where every expert's tokens start a new 128-token block
(its range in qt starts at a multiple of 128; the columns past its last token up to the next
multiple hold zeros).  So a K-grouped GEMM over qt reads whole scale blocks per expert.

The experts' offsets cu_rows (E+1: first token of each expert in x) and cu_blocks (E+1: first
128-token block of each expert in qt), int32 on the device (host_args.splits_metadata with 128-row
tiles: made without a host sync and kept per splits for the step's grouped GEMMs), give each CTA
its block's source: thread e < E tests whether block b lies in [cu_blocks[e], cu_blocks[e+1])
(an empty expert's range is empty) and, if so, stages the first source row
cu_rows[e] + 128 (b - cu_blocks[e]) and the row count min(cu_rows[e+1] - that row, 128) in shared
memory (E / 256 loads per thread, none dependent on another).  A block at or past cu_blocks[E]
(the trailing blocks of the upper bound on the block count when the splits are a GPU tensor)
holds no row: written as zeros with scale 1.  The CTA (0, 0) also writes the GEMM's padded token
offsets cu_padded = 128 cu_blocks.  So the host issues no torch op for the layout (the block table
of fp8/grouped_tokens.py, ~30 torch ops per call, cost ~0.2 ms of host time per quantization on
the H200, 2026-12-03 22:33).

One CTA per (128 columns of x, token block), 256 threads: the rows of the block loaded
(16-byte loads, zeros past the block's rows and past K) and staged in shared memory as the
dual kernel's (sm90/quantize.py) row pass does, then its column pass (quantize_tile.column_pass):
values and scales bitwise `quantize_1x128` of the padded x^T.
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Int32, const_expr
from cutlass.memory import SmemAllocator

from ..gemm_base.output_codec import FP8_TYPES, as_element_type
from .quantize_tile import BLOCK, THREADS, QuantizeKernel, load_and_stage, register_tile


class Sm90QuantizeColsGrouped(QuantizeKernel):
    """x (T, K) bf16 and the experts' offsets -> (qt, scales_t, cu_padded) with every expert's tokens
    starting a 128-token block; see the module docstring.  K must be a multiple of 16."""

    rows = False  # also the row-wise copy (Sm90QuantizeRowsColsGrouped)
    in_type = None  # x given as a 1x128-scaled FP8 copy of this type (Sm90RequantizeColsGrouped)

    @cute.jit
    def __call__(self, mX: cute.Tensor, mCuRows: cute.Tensor, mCuBlocks: cute.Tensor, mQT: cute.Tensor,
                 mST: cute.Tensor, mCuPadded: cute.Tensor, stream):
        # (no row-wise copy, bf16 x: x and the column scales stand in for those arguments, never used)
        self.launch(mX, mST, mCuRows, mCuBlocks, mX, mST, mQT, mST, mCuPadded, stream)

    @cute.jit
    def launch(self, mX, mXS, mCuRows, mCuBlocks, mQ, mS, mQT, mST, mCuPadded, stream):
        (mQT,) = self.fp8_views(mQT)
        if const_expr(self.rows):
            (mQ,) = self.fp8_views(mQ)
        if const_expr(self.in_type is not None):
            mX = as_element_type(mX, self.in_type)
        k_total = cute.size(mX, mode=[1])
        k_tiles = (k_total + BLOCK - 1) // BLOCK
        t_blocks = cute.size(mST, mode=[1])
        self.kernel(mX, mXS, mCuRows, mCuBlocks, mQ, mS, mQT, mST, mCuPadded, k_total).launch(
            grid=(k_tiles, t_blocks, 1), block=[THREADS, 1, 1], stream=stream)

    @cute.kernel
    def kernel(self, mX: cute.Tensor, mXS: cute.Tensor, mCuRows: cute.Tensor, mCuBlocks: cute.Tensor,
               mQ: cute.Tensor, mS: cute.Tensor, mQT: cute.Tensor, mST: cute.Tensor, mCuPadded: cute.Tensor,
               k_total: Int32):
        tidx, _, _ = cute.arch.thread_idx()
        k_tile, t_block, _ = cute.arch.block_idx()
        smem = SmemAllocator()
        sX = self.staging_tile(smem)
        sAmax = self.column_amax_tile(smem)
        sSource = smem.allocate_tensor(Int32, cute.make_layout((2,)), byte_alignment=8)
        experts = cute.size(mCuRows) - 1
        if k_tile == 0:
            if t_block == 0:  # the GEMM's padded token offsets, written once
                for e in cutlass.range(tidx, experts + 1, THREADS, unroll=1):
                    mCuPadded[e] = mCuBlocks[e] * BLOCK
        # the expert holding block t_block: a thread per expert tests its block range (an empty
        # expert's is empty; a block past the last expert's is held by none and holds no rows)
        for e in cutlass.range(tidx, experts, THREADS, unroll=1):
            first_block = mCuBlocks[e]
            if first_block <= t_block:
                if t_block < mCuBlocks[e + 1]:
                    row0 = mCuRows[e] + (t_block - first_block) * BLOCK
                    sSource[0] = row0
                    sSource[1] = cutlass.min(mCuRows[e + 1] - row0, BLOCK)
        held = t_block < mCuBlocks[experts]
        cute.arch.sync_threads()
        src_row0 = Int32(0)
        rows = Int32(0)
        if held:
            src_row0 = sSource[0]
            rows = sSource[1]
        col0 = k_tile * BLOCK
        gX = cute.local_tile(cute.domain_offset((src_row0, 0), mX), (BLOCK, BLOCK), (0, k_tile))
        gQT = cute.local_tile(mQT, (BLOCK, BLOCK), (k_tile, t_block))
        xv = register_tile()
        # (an FP8 x: dequantized as loaded, its row scales at mXS[src_row0 + r, k_tile])
        vec, r_first, vec_in = load_and_stage(gX, sX, xv, tidx, Int32(0), col0, rows, k_total, True, mXS, src_row0,
                                              k_tile, self.in_type)
        if const_expr(self.rows):  # the block's rows of the row-wise copy (each token in one block)
            gQ = cute.local_tile(cute.domain_offset((src_row0, 0), mQ), (BLOCK, BLOCK), (0, k_tile))
            self.row_pass(xv, gQ, mS, vec, r_first, vec_in, src_row0, src_row0 + rows, k_tile)
        cute.arch.sync_threads()
        self.column_pass(sX, sAmax, gQT, mST, tidx, col0, k_total, t_block)


class Sm90QuantizeRowsColsGrouped(Sm90QuantizeColsGrouped):
    """Sm90QuantizeColsGrouped that also writes the row-wise copy from the same read of x: q (T, K)
    FP8 and scales (T, ceil(K/128)) fp32, bitwise the dense kernel's row pass (`quantize_1x128(x)`)."""

    rows = True

    @cute.jit
    def __call__(self, mX: cute.Tensor, mCuRows: cute.Tensor, mCuBlocks: cute.Tensor, mQ: cute.Tensor,
                 mS: cute.Tensor, mQT: cute.Tensor, mST: cute.Tensor, mCuPadded: cute.Tensor, stream):
        self.launch(mX, mST, mCuRows, mCuBlocks, mQ, mS, mQT, mST, mCuPadded, stream)


class Sm90RequantizeColsGrouped(Sm90QuantizeColsGrouped):
    """Sm90QuantizeColsGrouped of x given as its 1x128-scaled FP8 copy (xq (T, K) of format `in_fmt`,
    scales xs (T, ceil(K/128))): the padded column-wise copy of bf16(fp32(xq) * xs) (what the
    dequantization kernel writes) without writing or reading that bf16 tensor."""

    def __init__(self, fmt: str = "e4m3", pow2: bool = False, in_fmt: str = "e4m3"):
        super().__init__(fmt, pow2)
        self.in_type = FP8_TYPES[in_fmt]

    @cute.jit
    def __call__(self, mXQ: cute.Tensor, mXS: cute.Tensor, mCuRows: cute.Tensor, mCuBlocks: cute.Tensor,
                 mQT: cute.Tensor, mST: cute.Tensor, mCuPadded: cute.Tensor, stream):
        self.launch(mXQ, mXS, mCuRows, mCuBlocks, mXQ, mST, mQT, mST, mCuPadded, stream)


def fake_arguments(rows: bool = False):
    """Stand-ins for (x, cu_rows, cu_blocks, qt, st, cu_padded), with `rows` (x, cu_rows, cu_blocks,
    q, s, qt, st, cu_padded): T, K, Tp, E, the block counts and every stride symbolic but the unit
    ones; FP8 as uint8."""
    from cutlass.cute.runtime import make_fake_tensor

    t, k, tp = cute.sym_int32(symbol="T"), cute.sym_int32(symbol="K"), cute.sym_int32(symbol="Tp")
    nb, kb, e1 = cute.sym_int32(symbol="TB"), cute.sym_int32(symbol="KB"), cute.sym_int32(symbol="E1")
    x = make_fake_tensor(cutlass.BFloat16, (t, k), (cute.sym_int64(divisibility=8), 1), assumed_align=16)
    cu_rows = make_fake_tensor(cutlass.Int32, (e1,), (1,), assumed_align=4)
    cu_blocks = make_fake_tensor(cutlass.Int32, (e1,), (1,), assumed_align=4)
    qt = make_fake_tensor(cutlass.Uint8, (k, tp), (cute.sym_int64(divisibility=16), 1), assumed_align=16)
    st = make_fake_tensor(cutlass.Float32, (k, nb), (cute.sym_int64(), cute.sym_int64()), assumed_align=4)
    cu_padded = make_fake_tensor(cutlass.Int32, (e1,), (1,), assumed_align=4)
    if not rows:
        return x, cu_rows, cu_blocks, qt, st, cu_padded
    q = make_fake_tensor(cutlass.Uint8, (t, k), (cute.sym_int64(divisibility=16), 1), assumed_align=16)
    s = make_fake_tensor(cutlass.Float32, (t, kb), (cute.sym_int64(), cute.sym_int64()), assumed_align=4)
    return x, cu_rows, cu_blocks, q, s, qt, st, cu_padded


def fake_rows_arguments():
    """fake_arguments(rows=True): the dual kernel's stand-ins."""
    return fake_arguments(rows=True)


def fake_requantize_arguments():
    """Stand-ins for the requantizing kernel's (xq, xs, cu_rows, cu_blocks, qt, st, cu_padded): xq
    (T, K) uint8 and its scales (T, KB), the rest as fake_arguments."""
    from cutlass.cute.runtime import make_fake_tensor

    _, cu_rows, cu_blocks, qt, st, cu_padded = fake_arguments()
    t, k, kb = cute.sym_int32(symbol="T"), cute.sym_int32(symbol="K"), cute.sym_int32(symbol="KB")
    xq = make_fake_tensor(cutlass.Uint8, (t, k), (cute.sym_int64(divisibility=16), 1), assumed_align=16)
    xs = make_fake_tensor(cutlass.Float32, (t, kb), (cute.sym_int64(), cute.sym_int64()), assumed_align=4)
    return xq, xs, cu_rows, cu_blocks, qt, st, cu_padded
