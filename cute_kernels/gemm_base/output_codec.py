"""The quantizing output codec's arch-neutral device math (traced inside kernels): the
recipe's scale of a 1x128 block from its amax, and a thread's per-row amax over the lanes
that share the row.  An arch's epilogue keeps the quantized output's values of a tile in
registers, reduces each row's amax, then stores value / scale in FP8 and the scales
(`cute_kernels.epilogue.EpilogueSpec.quantized`; the torch recipe is
`cute_kernels.fp8.recipe`)."""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, const_expr


def update_amax(amax: list, row_of: list, values, size: int, base: int = 0):
    """amax[base + row_of[v]] = max(amax, |values[v]|) for each of the thread's elements.  max(a, |v|)
    rather than the xorsign form of fmax(abs=True), whose sign flips with negative values and
    then loses the signed max across the lane reduction."""
    for v in range(size):  # plain Python: unrolled at trace time
        amax[base + row_of[v]] = cute.arch.fmax(amax[base + row_of[v]], cute.math.abs(values[v]))


def reduce_amax_across_quad(amax: list):
    """Each row's amax over the four lanes of a quad that hold it (the WGMMA accumulator
    layout: lanes 4r .. 4r + 3 share rows)."""
    for r in range(len(amax)):
        for off in (1, 2):
            amax[r] = cute.arch.fmax(amax[r], cute.arch.shuffle_sync_bfly(amax[r], offset=off))


def block_scale(amax, fmax: float, pow2: bool):
    """The recipe's scale of a block: amax / fmax, rounded up to a power of two with `pow2`,
    1 for an all-zero block (fp32 scalar)."""
    s = amax * Float32(1.0 / fmax)
    if const_expr(pow2):
        box = cute.make_rmem_tensor((1,), Float32)
        box[0] = s
        bits = cute.make_tensor(cute.recast_ptr(box.iterator, dtype=Int32), cute.make_layout(1))
        b = bits[0]
        exp = b & Int32(0x7F800000)
        bits[0] = cutlass.select_((b & Int32(0x007FFFFF)) != 0, exp + Int32(0x00800000), exp)
        s = box[0]
    return cutlass.select_(amax > 0.0, s, Float32(1.0))


FP8_TYPES = {"e4m3": cutlass.Float8E4M3FN, "e5m2": cutlass.Float8E5M2}


def as_element_type(t, dtype):
    """`t` read as `dtype` (FP8 tensors arrive as uint8: DLPack and TVM-FFI carry bytes)."""
    if t.element_type == dtype:
        return t
    return cute.make_tensor(cute.recast_ptr(t.iterator, dtype=dtype), t.layout)
