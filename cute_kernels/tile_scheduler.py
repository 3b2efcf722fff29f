"""Persistent tile scheduling shared by the GEMM kernels (device side and its host twin).

Work unit: a cluster tile (cluster_m x cluster_n CTA tiles).  Cluster `c` of `G`
launched clusters takes linear work indices c, c + G, c + 2G, ...  A linear index is
turned into (m, n) cluster-tile coordinates by a banded raster: raster "n" cuts the M
tiles into bands of `swizzle` tiles and walks each band along N (M fastest inside the
band), raster "m" does the transpose.  Bands keep the concurrently running tiles on a
few rows of A and a few columns of B, so both stay in L2.

Grouped problems: M tiles are numbered across experts (expert e owns tiles
cu_tiles[e] .. cu_tiles[e+1]-1); `expert_of_tile` finds the owner by binary search.
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Int32


def ceil_div(a, b):
    return (a + b - 1) // b


def banded_coord(t, num_m, num_n, swizzle: int, raster_n: bool):
    """Linear index -> (m, n).  Works on Python ints and on DSL Int32 alike."""
    if raster_n:
        band_len = swizzle * num_n
        band = t // band_len
        inner = t - band * band_len
        rows_left = num_m - band * swizzle
        width = rows_left if rows_left < swizzle else swizzle
        m = band * swizzle + inner % width
        n = inner // width
        return m, n
    band_len = swizzle * num_m
    band = t // band_len
    inner = t - band * band_len
    cols_left = num_n - band * swizzle
    width = cols_left if cols_left < swizzle else swizzle
    n = band * swizzle + inner % width
    m = inner // width
    return m, n


def banded_coord_device(t, num_m, num_n, swizzle: int, raster_n: bool):
    """DSL version of `banded_coord` (the `min` must be a select, not a Python branch)."""
    if raster_n:
        band_len = num_n * swizzle
        band = t // band_len
        inner = t - band * band_len
        width = cutlass.min(num_m - band * swizzle, swizzle)
        return band * swizzle + inner % width, inner // width
    band_len = num_m * swizzle
    band = t // band_len
    inner = t - band * band_len
    width = cutlass.min(num_n - band * swizzle, swizzle)
    return inner // width, band * swizzle + inner % width


@cute.jit
def expert_of_tile(cu_tiles, mt, num_experts):
    """Largest e in [0, E) with cu_tiles[e] <= mt (the expert owning global M tile mt)."""
    lo = Int32(0)
    hi = num_experts - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cu_tiles[mid] <= mt:
            lo = mid
        else:
            hi = mid - 1
    return lo
