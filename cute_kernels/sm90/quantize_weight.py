"""One-pass FP8 quantization of a weight (or a stack of expert weights) by 128x128 blocks into
both GEMM orientations (sm_90a).

w (E, N, K) bf16 -> the recipe's (fp8/recipe.quantize_128x128) copies:
- q (E, N, K) FP8 and scales (E, ceil(N/128), ceil(K/128)) fp32: W as the B operand of the
  forward GEMM (reduces over K);
- qt (E, K, N) FP8 and scales (E, ceil(K/128), ceil(N/128)): W^T, the K-major B operand of the
  data gradient (reduces over N).  A square block's amax is that of its transpose, so the two
  copies share their scales and qt is bitwise `q.transpose(-2, -1)`.
Scale rule as the recipe: s = amax * (1/fmax) in fp32 (optionally rounded up to a power of two),
1 for an all-zero block, q = satfinite(w * (1/s)) with a correctly rounded reciprocal: bit for
bit what quantize_128x128 and its transposed copy give.  Blocks never span two experts; rows
past N and columns past K (N and K multiples of 16) read as zeros and are not written.

It replaces the torch passes of the FP8 step's weight copies (fp32 cast, pad, |.|, amax,
scale, clamp, FP8 cast, slice copy, and the backward's strided FP8 transpose: 41% of the E=8
FP8 step's GPU time in copies on the H200, 2026-12-03) by one read of the bf16 weight and one
write of each FP8 copy.

One CTA per 128 x 128 block, 256 threads (Sm90QuantizeBoth's access pattern):
1. each thread loads 8 rows x 16 bytes, stages the bf16 block in shared memory and reduces the
   amax of its 64 values; the block's amax is reduced over each warp (shuffles) and the 8 warps
   (shared memory);
2. row pass: the thread's values times 1/s, stored as 8 FP8 bytes per row into q;
3. column pass: each thread reads a pair of columns over 32 rows from shared memory and stores
   their FP8 values into qt's rows as two 16-byte halves (predicated on N).
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32
from cutlass.memory import SmemAllocator

from ..gemm_base.output_codec import block_scale
from .quantize_tile import (QuantizeKernel, BLOCK, QUARTER, ROW_SWEEPS, ROWS_PER_PASS, THREADS, VEC, abs_max,
                            load_and_stage, register_tile, row_values, scaled_fp8,
                            column_pairs, pair_values)

WARPS = THREADS // 32
HALF = QUARTER // 2  # 16 FP8 bytes: one store, all in or all out of N (N a multiple of 16)


class Sm90QuantizeWeight(QuantizeKernel):
    """w (N, K, E) bf16 -> q (N, K, E), s (NB, KB, E), qt (K, N, E), st (KB, NB, E); see the
    module docstring.  N and K multiples of 16; `fmt` "e4m3" or "e5m2"."""

    @cute.jit
    def __call__(self, mW: cute.Tensor, mQ: cute.Tensor, mS: cute.Tensor, mQT: cute.Tensor, mST: cute.Tensor,
                 stream):
        mQ, mQT = self.fp8_views(mQ, mQT)
        n_total = cute.size(mW, mode=[0])
        k_total = cute.size(mW, mode=[1])
        experts = cute.size(mW, mode=[2])
        n_tiles = (n_total + BLOCK - 1) // BLOCK
        k_tiles = (k_total + BLOCK - 1) // BLOCK
        self.kernel(mW, mQ, mS, mQT, mST, n_total, k_total).launch(grid=(k_tiles, n_tiles, experts),
                                                                   block=[THREADS, 1, 1], stream=stream)

    @cute.kernel
    def kernel(self, mW: cute.Tensor, mQ: cute.Tensor, mS: cute.Tensor, mQT: cute.Tensor, mST: cute.Tensor,
               n_total: Int32, k_total: Int32):
        tidx, _, _ = cute.arch.thread_idx()
        k_tile, n_tile, e = cute.arch.block_idx()
        smem = SmemAllocator()
        sX = self.staging_tile(smem)
        sWarp = smem.allocate_tensor(Float32, cute.make_layout((WARPS,)), byte_alignment=16)
        gX = cute.local_tile(mW[None, None, e], (BLOCK, BLOCK), (n_tile, k_tile))
        gQ = cute.local_tile(mQ[None, None, e], (BLOCK, BLOCK), (n_tile, k_tile))
        gQT = cute.local_tile(mQT[None, None, e], (BLOCK, BLOCK), (k_tile, n_tile))
        row0 = n_tile * BLOCK
        col0 = k_tile * BLOCK

        # ---- load, stage, the block's amax
        xv = register_tile()
        vec, r_first, vec_in = load_and_stage(gX, sX, xv, tidx, row0, col0, n_total, k_total)
        # the values stay bf16 in registers (32, not 64), converted row by row where used
        amax = Float32(0.0)
        for i in cutlass.range_constexpr(ROW_SWEEPS):
            amax = abs_max(amax, row_values(xv, i), VEC)
        for off in cutlass.range_constexpr(5):
            amax = cute.arch.fmax(amax, cute.arch.shuffle_sync_bfly(amax, offset=1 << off))
        warp = tidx // 32
        if tidx % 32 == 0:
            sWarp[warp] = amax
        cute.arch.sync_threads()
        amax = sWarp[0]
        for w in cutlass.range_constexpr(1, WARPS):
            amax = cute.arch.fmax(amax, sWarp[w])
        s = block_scale(amax, self.fmax, self.pow2)
        inv = Float32(1.0) / s
        if tidx == 0:
            mS[(n_tile, k_tile, e)] = s
            mST[(k_tile, n_tile, e)] = s

        # ---- row pass: q
        for i in cutlass.range_constexpr(ROW_SWEEPS):
            r = r_first + ROWS_PER_PASS * i
            vals = row_values(xv, i)
            qv = scaled_fp8(lambda j: vals[j], VEC, inv, self.q_type)
            if row0 + r < n_total:
                if vec_in:
                    cute.autovec_copy(qv, cute.local_tile(gQ, (1, VEC), (r, vec)))

        # ---- column pass: qt (the block transposed, same scale)
        pair, quarter, cv = column_pairs(sX, tidx)
        cf = pair_values(cv)
        for c in cutlass.range_constexpr(2):
            col = 2 * pair + c
            for h in cutlass.range_constexpr(2):
                qv = scaled_fp8(lambda j: cf[(HALF * h + j, c)], HALF, inv, self.q_type)
                if col0 + col < k_total:  # qt has K rows
                    if row0 + QUARTER * quarter + HALF * h < n_total:  # and N columns
                        cute.autovec_copy(qv, cute.local_tile(gQT, (1, HALF), (col, 2 * quarter + h)))
