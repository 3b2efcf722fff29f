"""One-pass FP8 quantization of an activation into both GEMM orientations (sm_90a).

x (M, K) bf16 -> the recipe's (fp8/recipe.py) 1x128 copies along both dimensions:
- row-wise: q (M, K) FP8 and scales (M, ceil(K/128)) fp32, one per row and 128 columns (x as the
  A operand of a GEMM reducing over K: FC1, the dgrads);
- column-wise: qt (K, Mp) FP8 and scales (K, ceil(M/128)) fp32, the 1x128 blocks of x^T along M
  (128x1 blocks of x; x^T as the operand of a weight gradient, which reduces over the tokens).
  Mp = 128 * ceil(M/128): qt's rows are padded to whole blocks, the padding holds zeros.

Scale rule as the recipe: s = amax * (1/fmax) in fp32 (optionally rounded up to a power of
two), 1 for an all-zero block, q = satfinite(x * (1/s)) with a correctly rounded reciprocal,
so the values and scales agree bit for bit with `quantize_1x128(x)` and `quantize_1x128(x.t())`.
Rows past M (the last M tile) and columns past K (the last K tile, K a multiple of 16) are
read as zeros: they leave the amax of their blocks alone and are not written, except as the
zero padding of qt's rows.

One CTA per 128 x 128 tile, 256 threads:
1. row pass: each thread loads 8 rows x 16 bytes (ld.global.v4, a half-warp reads a 256-byte
   row), reduces each row's amax over the 16 lanes of its half-warp (shuffles), stores 8 FP8
   bytes per row to q and stages the bf16 tile in shared memory (16-byte stores);
2. column pass: each thread reads a pair of columns over 32 rows (32-bit shared loads, a warp
   reads 128 contiguous bytes of one row: no bank conflicts), the column amax is combined over
   the 4 row quarters through shared memory, and each thread writes its two columns' 32 FP8
   values as 16-byte stores into qt's rows.
Traffic: read 2MK bytes, write 2MK bytes plus 4 bytes per 128 values of scales; the 32 KiB
tile in shared memory allows several CTAs per SM to keep loads in flight.
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Int32, const_expr
from cutlass.memory import SmemAllocator

from .quantize_tile import QuantizeKernel, BLOCK, THREADS, load_and_stage, register_tile


class Sm90QuantizeBoth(QuantizeKernel):
    """x (M, K) bf16 -> (q, scales) row-wise and (qt, scales_t) column-wise; see the module
    docstring.  K must be a multiple of 16; `fmt` "e4m3" or "e5m2"."""

    @cute.jit
    def __call__(self, mX: cute.Tensor, mQ: cute.Tensor, mS: cute.Tensor, mQT: cute.Tensor, mST: cute.Tensor,
                 stream):
        mQ, mQT = self.fp8_views(mQ, mQT)
        m_total = cute.size(mX, mode=[0])
        k_total = cute.size(mX, mode=[1])
        m_tiles = (m_total + BLOCK - 1) // BLOCK
        k_tiles = (k_total + BLOCK - 1) // BLOCK
        self.kernel(mX, mQ, mS, mQT, mST, m_total, k_total).launch(grid=(k_tiles, m_tiles, 1), block=[THREADS, 1, 1],
                                                          stream=stream)

    @cute.kernel
    def kernel(self, mX: cute.Tensor, mQ: cute.Tensor, mS: cute.Tensor, mQT: cute.Tensor, mST: cute.Tensor,
               m_total: Int32, k_total: Int32):
        tidx, _, _ = cute.arch.thread_idx()
        k_tile, m_tile, _ = cute.arch.block_idx()
        smem = SmemAllocator()
        sX = self.staging_tile(smem)
        sAmax = self.column_amax_tile(smem)
        gX = cute.local_tile(mX, (BLOCK, BLOCK), (m_tile, k_tile))
        gQ = cute.local_tile(mQ, (BLOCK, BLOCK), (m_tile, k_tile))
        gQT = cute.local_tile(mQT, (BLOCK, BLOCK), (k_tile, m_tile))
        row0 = m_tile * BLOCK
        col0 = k_tile * BLOCK

        # ---- row pass: 1x128 blocks along K
        xv = register_tile()
        vec, r_first, vec_in = load_and_stage(gX, sX, xv, tidx, row0, col0, m_total, k_total, self.cols)
        self.row_pass(xv, gQ, mS, vec, r_first, vec_in, row0, m_total, k_tile)
        if const_expr(self.cols):
            cute.arch.sync_threads()

            # ---- column pass: 1x128 blocks of x^T along M
            self.column_pass(sX, sAmax, gQT, mST, tidx, col0, k_total, m_tile)
