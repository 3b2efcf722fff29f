"""Dequantization of a 1x128-scaled FP8 tensor straight to bf16 (sm_90a): out = bf16(fp32(q) * s).

q (M, K) FP8 with scales (M, ceil(K/128)) fp32 (any strides) -> out (M, K) bf16: each value's
fp32 product with its row's scale of its 128-column block, rounded once to bf16: bitwise what
`fp8.recipe.dequantize(q, s, out_dtype=torch.bfloat16)` gives.  The FP8 step's bf16 weight
gradient reads x this way from its saved FP8 copy (the torch form, an fp32 copy then a broadcast
multiply, cost 0.33 ms of an E=8 step's 1.89 ms of GPU time on the H200, 2026-12-03).

One CTA per 128 x 128 tile, 256 threads: a thread converts 8 rows x 8 values (8-byte FP8 loads,
16-byte bf16 stores), reading its 8 rows' scales of the tile's K block.  K a multiple of 16; rows
past M and columns past K are not read or written.  Traffic: 3 bytes per element.
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32

from ..gemm_base.output_codec import FP8_TYPES, as_element_type
from .quantize_tile import BLOCK, ROW_LANES, ROW_SWEEPS, ROWS_PER_PASS, THREADS, VEC, dequantized_vector


class Sm90Dequantize:
    """q (M, K) FP8 (as uint8) and scales (M, KB) -> out (M, K) bf16; see the module docstring."""

    def __init__(self, fmt: str = "e4m3"):
        if fmt not in FP8_TYPES:
            raise ValueError(f"fmt must be one of {tuple(FP8_TYPES)}, got {fmt!r}")
        self.fmt, self.q_type = fmt, FP8_TYPES[fmt]

    @cute.jit
    def __call__(self, mQ: cute.Tensor, mS: cute.Tensor, mOut: cute.Tensor, stream):
        mQ = as_element_type(mQ, self.q_type)
        m_total = cute.size(mQ, mode=[0])
        k_total = cute.size(mQ, mode=[1])
        m_tiles = (m_total + BLOCK - 1) // BLOCK
        k_tiles = (k_total + BLOCK - 1) // BLOCK
        self.kernel(mQ, mS, mOut, m_total, k_total).launch(grid=(k_tiles, m_tiles, 1), block=[THREADS, 1, 1],
                                                          stream=stream)

    @cute.kernel
    def kernel(self, mQ: cute.Tensor, mS: cute.Tensor, mOut: cute.Tensor, m_total: Int32, k_total: Int32):
        tidx, _, _ = cute.arch.thread_idx()
        k_tile, m_tile, _ = cute.arch.block_idx()
        gQ = cute.local_tile(mQ, (BLOCK, BLOCK), (m_tile, k_tile))
        gOut = cute.local_tile(mOut, (BLOCK, BLOCK), (m_tile, k_tile))
        row0 = m_tile * BLOCK
        vec = tidx % ROW_LANES
        r_first = tidx // ROW_LANES
        vec_in = k_tile * BLOCK + VEC * vec < k_total  # K a multiple of 8: a vector is all in or all out
        for i in cutlass.range_constexpr(ROW_SWEEPS):
            r = r_first + ROWS_PER_PASS * i
            if vec_in:
                if row0 + r < m_total:
                    s = Float32(mS[(row0 + r, k_tile)])
                    ov = cute.make_rmem_tensor((1, VEC), cutlass.BFloat16)
                    ov.store(dequantized_vector(gQ, r, vec, s, self.q_type))
                    cute.autovec_copy(ov, cute.local_tile(gOut, (1, VEC), (r, vec)))
