"""Per-expert padded column-wise FP8 quantization (sm_90a): the grouped FP8 weight gradient's
operand layout (docs/fp8.md, "grouped weight gradient").

x (T, K) bf16, tokens sorted by expert -> qt (K, Tp) FP8 and scales (K, Tp/128) fp32: the
1x128 blocks of x^T along the tokens, where every expert's tokens start a new 128-token block
(its range in qt starts at a multiple of 128; the columns past its last token up to the next
multiple hold zeros).  So a K-grouped GEMM over qt reads whole scale blocks per expert.

The block table (fp8/grouped_tokens.py, made on the device by torch ops) gives, for each
128-token block b of qt, the first source row of x and how many rows (0..128) of x it holds:
blocks[2 b], blocks[2 b + 1].  A block with 0 rows (an upper bound of the block count, when
the splits are a GPU tensor) is written as zeros with scale 1.

One CTA per (128 columns of x, token block), 256 threads: the rows of the block loaded
(16-byte loads, zeros past the block's rows and past K) and staged in shared memory as the
dual kernel's (sm90/quantize.py) row pass does, then its column pass (quantize_tile.column_pass):
values and scales bitwise `quantize_1x128` of the padded x^T.
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Int32
from cutlass.memory import SmemAllocator

from .quantize_tile import BLOCK, THREADS, QuantizeKernel, load_and_stage, register_tile


class Sm90QuantizeColsGrouped(QuantizeKernel):
    """x (T, K) bf16 and the block table -> (qt, scales_t) with every expert's tokens starting a
    128-token block; see the module docstring.  K must be a multiple of 16."""

    @cute.jit
    def __call__(self, mX: cute.Tensor, mBlocks: cute.Tensor, mQT: cute.Tensor, mST: cute.Tensor, stream):
        (mQT,) = self.fp8_views(mQT)
        k_total = cute.size(mX, mode=[1])
        k_tiles = (k_total + BLOCK - 1) // BLOCK
        t_blocks = cute.size(mST, mode=[1])
        self.kernel(mX, mBlocks, mQT, mST, k_total).launch(grid=(k_tiles, t_blocks, 1), block=[THREADS, 1, 1],
                                                           stream=stream)

    @cute.kernel
    def kernel(self, mX: cute.Tensor, mBlocks: cute.Tensor, mQT: cute.Tensor, mST: cute.Tensor, k_total: Int32):
        tidx, _, _ = cute.arch.thread_idx()
        k_tile, t_block, _ = cute.arch.block_idx()
        smem = SmemAllocator()
        sX = self.staging_tile(smem)
        sAmax = self.column_amax_tile(smem)
        src_row0 = mBlocks[2 * t_block]
        rows = mBlocks[2 * t_block + 1]
        col0 = k_tile * BLOCK
        gX = cute.local_tile(cute.domain_offset((src_row0, 0), mX), (BLOCK, BLOCK), (0, k_tile))
        gQT = cute.local_tile(mQT, (BLOCK, BLOCK), (k_tile, t_block))
        xv = register_tile()
        load_and_stage(gX, sX, xv, tidx, Int32(0), col0, rows, k_total, True)
        cute.arch.sync_threads()
        self.column_pass(sX, sAmax, gQT, mST, tidx, col0, k_total, t_block)


def fake_arguments():
    """Stand-ins for (x, blocks, qt, st): T, K, Tp, the block count and every stride symbolic but
    the unit ones; FP8 as uint8."""
    from cutlass.cute.runtime import make_fake_tensor

    t, k, tp = cute.sym_int32(symbol="T"), cute.sym_int32(symbol="K"), cute.sym_int32(symbol="Tp")
    nb, nb2 = cute.sym_int32(symbol="TB"), cute.sym_int32(symbol="TB2")
    x = make_fake_tensor(cutlass.BFloat16, (t, k), (cute.sym_int64(divisibility=8), 1), assumed_align=16)
    blocks = make_fake_tensor(cutlass.Int32, (nb2,), (1,), assumed_align=4)
    qt = make_fake_tensor(cutlass.Uint8, (k, tp), (cute.sym_int64(divisibility=16), 1), assumed_align=16)
    st = make_fake_tensor(cutlass.Float32, (k, nb), (cute.sym_int64(), cute.sym_int64()), assumed_align=4)
    return x, blocks, qt, st
