"""What the two FP8 quantization kernels (sm90/quantize.py: activations, 1x128 blocks both ways;
sm90/quantize_weight.py: weights, 128x128 blocks) share, traced inside their kernels: the CTA's
read of a 128 x 128 bf16 tile into registers and shared memory, a register row's values in fp32,
and the scaled FP8 conversion.

Thread layout (256 threads): 16 threads share a row, each loading 16 bytes (8 bf16) per row for
8 rows (rows r_first + 16 i); the staged tile is (128, 128) row-major in shared memory."""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Float32, const_expr

from ..epilogue import FP8_FMAX as FMAX
from ..gemm_base.output_codec import FP8_TYPES, as_element_type, block_scale

BLOCK = 128
THREADS = 256
VEC = 8  # bf16 per 16-byte load
ROW_LANES = BLOCK // VEC  # 16 threads share a row
ROWS_PER_PASS = THREADS // ROW_LANES  # 16 rows per sweep of the CTA
ROW_SWEEPS = BLOCK // ROWS_PER_PASS  # 8 rows per thread
COL_PAIRS = BLOCK // 2  # 64 column pairs
ROW_QUARTERS = THREADS // COL_PAIRS  # 4 groups of 32 rows in the column pass
QUARTER = BLOCK // ROW_QUARTERS


def register_tile():
    """The thread's 8 rows x 8 bf16 of the tile."""
    return cute.make_rmem_tensor(cute.make_layout((ROW_SWEEPS, VEC), stride=(VEC, 1)), cutlass.BFloat16)


@cute.jit
def load_and_stage(gX, sX, xv, tidx, row0, col0, rows_total, cols_total, stage: cutlass.Constexpr = True,
                   mXS=None, scale_row0=0, k_tile=0, in_type: cutlass.Constexpr = None):
    """Load the thread's rows of tile gX (origin (row0, col0) of a rows_total x cols_total
    tensor) into `xv` with 16-byte loads, zeros past the edges (cols_total a multiple of 8: a
    vector is all in or all out), and (with `stage`) stage them in sX with 16-byte stores.  Returns
    (vec, r_first, vec_in): the thread's vector column, first row, and whether its vector is in.
    With `in_type`, gX is a 1x128-scaled FP8 copy of that type: 8-byte loads, each row's values
    dequantized (dequantized_vector) with its scale mXS[scale_row0 + r, k_tile]."""
    vec = tidx % ROW_LANES
    r_first = tidx // ROW_LANES
    vec_in = col0 + VEC * vec < cols_total
    xv.fill(0.0)
    for i in cutlass.range_constexpr(ROW_SWEEPS):
        r = r_first + ROWS_PER_PASS * i
        if vec_in:
            if row0 + r < rows_total:
                if const_expr(in_type is None):
                    cute.autovec_copy(cute.local_tile(gX, (1, VEC), (r, vec)), cute.local_tile(xv, (1, VEC), (i, 0)))
                else:
                    s = Float32(mXS[(scale_row0 + r, k_tile)])
                    cute.local_tile(xv, (1, VEC), (i, 0)).store(dequantized_vector(gX, r, vec, s, in_type))
    if const_expr(stage):
        stage_rows(sX, xv, vec, r_first)
    return vec, r_first, vec_in


@cute.jit
def stage_rows(sX, xv, vec, r_first):
    """The thread's register rows `xv` into the staged tile sX (16-byte shared stores)."""
    for i in cutlass.range_constexpr(ROW_SWEEPS):
        r = r_first + ROWS_PER_PASS * i
        cute.autovec_copy(cute.local_tile(xv, (1, VEC), (i, 0)), cute.local_tile(sX, (1, VEC), (r, vec)))


@cute.jit
def dequantized_vector(gQ, r, vec, s, q_type: cutlass.Constexpr):
    """bf16(fp32(q) * s) of the 8 FP8 values at (r, vec) of tile gQ (an 8-byte load): the recipe's
    dequantization (fp8/recipe.dequantize to bf16), as a (1, 8) bf16 value."""
    qv = cute.make_rmem_tensor((1, VEC), q_type)
    cute.autovec_copy(cute.local_tile(gQ, (1, VEC), (r, vec)), qv)
    vals = cute.make_rmem_tensor((1, VEC), Float32)
    vals.store(qv.load().to(Float32))
    for j in cutlass.range_constexpr(VEC):
        vals[(0, j)] = vals[(0, j)] * s
    return vals.load().to(cutlass.BFloat16)


def column_pairs(sX, tidx):
    """The column pass's read of the staged tile: the thread's pair of columns (2 * pair,
    2 * pair + 1) over its quarter of the rows (32 rows), as (pair, quarter, bf16 values (32, 2)):
    32-bit shared loads, a warp reading 128 contiguous bytes of one row (no bank conflicts)."""
    pair = tidx % COL_PAIRS
    quarter = tidx // COL_PAIRS
    cv = cute.make_rmem_tensor(cute.make_layout((QUARTER, 2), stride=(2, 1)), cutlass.BFloat16)
    cute.autovec_copy(cute.local_tile(sX, (QUARTER, 2), (quarter, pair)), cv)
    return pair, quarter, cv


def pair_values(cv):
    """A column_pairs read in fp32 (32 x 2)."""
    cf = cute.make_rmem_tensor(cute.make_layout((QUARTER, 2), stride=(2, 1)), Float32)
    cf.store(cv.load().to(Float32))
    return cf


def row_values(xv, i: int):
    """Row i of the thread's register tile as VEC fp32 values."""
    vals = cute.make_rmem_tensor((VEC,), Float32)
    vals.store(cute.local_tile(xv, (1, VEC), (i, 0)).load().reshape((VEC,)).to(Float32))
    return vals


def abs_max(amax, vals, count: int):
    """max(amax, |v|) over `count` values: max with |v|, not fmax(abs=True) (the xorsign form; see
    gemm_base/output_codec.update_amax)."""
    for j in range(count):  # plain Python: unrolled at trace time
        amax = cute.arch.fmax(amax, cute.math.abs(vals[j]))
    return amax


def scaled_fp8(value_at, count: int, inv, q_type):
    """(1, count) FP8 values value_at(j) * inv (satfinite, round to nearest even)."""
    qf = cute.make_rmem_tensor((1, count), Float32)
    for j in range(count):  # plain Python: unrolled at trace time
        qf[(0, j)] = value_at(j) * inv
    qv = cute.make_rmem_tensor((1, count), q_type)
    qv.store(qf.load().to(q_type))
    return qv


class QuantizeKernel:
    """The recipe parameters both quantization kernels hold: the FP8 format (its largest finite
    value and DSL type) and whether scales are rounded up to powers of two."""

    def __init__(self, fmt: str = "e4m3", pow2: bool = False, cols: bool = True):
        if fmt not in FMAX:
            raise ValueError(f"fmt must be one of {tuple(FMAX)}, got {fmt!r}")
        self.fmt, self.pow2, self.fmax = fmt, pow2, FMAX[fmt]
        self.q_type = FP8_TYPES[fmt]
        # the activation kernel without its column pass (`cols=False`): the row-wise copy only
        self.cols = cols

    def fp8_views(self, *tensors):
        """The FP8 outputs, which arrive as uint8 (byte views on the host), as the recipe's format."""
        return tuple(as_element_type(t, self.q_type) for t in tensors)

    @staticmethod
    def staging_tile(smem):
        """The (128, 128) bf16 tile in shared memory, row-major, 16-byte aligned."""
        return smem.allocate_tensor(cutlass.BFloat16, cute.make_layout((BLOCK, BLOCK), stride=(BLOCK, 1)),
                                    byte_alignment=16)

    @staticmethod
    def column_amax_tile(smem):
        """The column pass's (4, 128) fp32 partial column amaxes (one row per quarter of the rows)."""
        return smem.allocate_tensor(Float32, cute.make_layout((ROW_QUARTERS, BLOCK), stride=(BLOCK, 1)),
                                    byte_alignment=16)

    @cute.jit
    def row_pass(self, xv, gQ, mS, vec, r_first, vec_in, row0, rows_end, k_tile):
        """The 1x128 blocks of the thread's register rows along K (load_and_stage's `xv`, `vec`,
        `r_first`, `vec_in`): each row's amax over the 16 lanes of its half-warp (shuffles), its
        8 FP8 bytes written to tile gQ (whose row r is row row0 + r of q) and, by the row's first
        lane, its scale at mS[row0 + r, k_tile]; rows at or past rows_end are not written."""
        for i in cutlass.range_constexpr(ROW_SWEEPS):
            r = r_first + ROWS_PER_PASS * i
            vals = row_values(xv, i)
            amax = abs_max(Float32(0.0), vals, VEC)
            for off in cutlass.range_constexpr(4):
                amax = cute.arch.fmax(amax, cute.arch.shuffle_sync_bfly(amax, offset=1 << off))
            s = block_scale(amax, self.fmax, self.pow2)
            inv = Float32(1.0) / s
            qv = scaled_fp8(lambda j: vals[j], VEC, inv, self.q_type)
            if row0 + r < rows_end:
                if vec_in:
                    cute.autovec_copy(qv, cute.local_tile(gQ, (1, VEC), (r, vec)))
                if vec == 0:
                    mS[(row0 + r, k_tile)] = s

    @cute.jit
    def column_pass(self, sX, sAmax, gQT, mST, tidx, col0, cols_total, t_block):
        """The 1x128 blocks of the staged tile's transpose along its rows (the tokens): each
        thread's pair of columns over a quarter of the rows (column_pairs), the column amax
        combined over the quarters through sAmax, and the FP8 values written to the
        (128, 128) tile gQT of the transposed copy (16-byte stores) with their scales at
        mST[col, t_block]; columns at or past cols_total (qt's rows) are not written.  The
        caller has staged sX and passed a barrier."""
        pair, quarter, cv = column_pairs(sX, tidx)
        # the values stay bf16 across the barrier (32 registers, not 64); converted where used
        cf = pair_values(cv)
        for c in cutlass.range_constexpr(2):
            amax = Float32(0.0)
            for j in cutlass.range_constexpr(QUARTER):
                amax = cute.arch.fmax(amax, cute.math.abs(cf[(j, c)]))
            sAmax[(quarter, 2 * pair + c)] = amax
        cute.arch.sync_threads()
        cf = pair_values(cv)
        for c in cutlass.range_constexpr(2):
            col = 2 * pair + c
            amax = sAmax[(0, col)]
            for qi in cutlass.range_constexpr(1, ROW_QUARTERS):
                amax = cute.arch.fmax(amax, sAmax[(qi, col)])
            s = block_scale(amax, self.fmax, self.pow2)
            inv = Float32(1.0) / s
            qv = scaled_fp8(lambda j: cf[(j, c)], QUARTER, inv, self.q_type)
            if col0 + col < cols_total:  # qt has cols_total rows
                cute.autovec_copy(qv, cute.local_tile(gQT, (1, QUARTER), (col, quarter)))
                if quarter == 0:
                    mST[(col0 + col, t_block)] = s
