"""The epilogue driver's arch-neutral pieces (traced inside kernels): loading the declared
epilogue input (an aux tile of the output's shape) for a thread's fragment, and visiting
one epilogue sub-tile through the epilogue's hooks (`cute_kernels.epilogue.EpilogueSpec`).

An arch's epilogue brings the accumulator sub-tile into registers (sm90: straight from
the WGMMA accumulator; sm100: from tensor memory), calls `visit_subtile`, converts the
fragments it returns to the output dtype and stores them.
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Float32, const_expr


def load_aux_fragment(mAux, coords, frag_shape, frag_size: int, row_start, row_end, col0, n_total, layer):
    """This thread's elements of the epilogue input for one sub-tile, in the input's own
    dtype (the loads are issued here; nothing waits for them until the values are used).
    `coords` gives each fragment element's (row, col) inside the sub-tile, `col0` the
    sub-tile's first column.  Rows past the tile's end and columns past N are clamped:
    they are never stored.  Where the fragment holds pairs of adjacent columns (the
    WGMMA accumulator layout does), each pair is one load twice the element's width
    (N is even: the host checks D's alignment)."""
    offs = [coords.layout(v) for v in range(frag_size)]
    paired = frag_size % 2 == 0 and mAux.element_type.width in (16, 32) and all(
        offs[v + 1][0] == offs[v][0] and offs[v + 1][1] == offs[v][1] + 1 for v in range(0, frag_size, 2))
    if const_expr(not paired):
        raw = cute.make_rmem_tensor(frag_shape, mAux.element_type)
        for v in range(frag_size):  # plain Python: unrolled while tracing (no DSL preprocessing here)
            coord = coords[v]
            arow = cutlass.min(row_start + coord[0], row_end - 1)
            acol = cutlass.min(col0 + coord[1], n_total - 1)
            raw[v] = mAux[(arow, acol, layer)]
        return raw
    wide = cutlass.Int32 if mAux.element_type.width == 16 else cutlass.Int64
    pairs = cute.make_rmem_tensor((frag_size // 2,), wide)
    for p in range(frag_size // 2):
        coord = coords[2 * p]
        arow = cutlass.min(row_start + coord[0], row_end - 1)
        acol = cutlass.min(col0 + coord[1], n_total - 2)
        ptr = mAux.iterator + cute.crd2idx((arow, acol, layer), mAux.layout)
        # the pair starts at an even column of an even-length row: aligned to its width
        pair_ptr = cute.make_ptr(wide, ptr.toint(), cute.AddressSpace.gmem, assumed_align=wide.width // 8)
        pairs[p] = cute.make_tensor(pair_ptr, cute.make_layout(1))[0]
    return cute.make_tensor(cute.recast_ptr(pairs.iterator, dtype=mAux.element_type), cute.make_layout(frag_shape))


def aux_depth(mAux, frag_size: int, inflight_bytes: int) -> int:
    """Epilogue-input sub-tiles to keep in flight: two while a fragment is at most
    `inflight_bytes` per thread, else one (register budget)."""
    frag_bytes = frag_size * mAux.element_type.width // 8
    return 2 if frag_bytes <= inflight_bytes else 1


def visit_subtile(epi, frag, frag_shape, frag_size: int, *, row_scales=None, row_of=None, aux=None, row_sums=None):
    """One epilogue sub-tile through the epilogue's hooks.

    frag: the fp32 accumulator fragment (registers); row_scales: the thread's per-row
    scales (epilogues reading `row_scale`), row_of[v] the row index of element v; aux: the
    epilogue input (`aux_input`), any dtype, or a zero-argument callable returning it (called
    where the input is first needed, so the caller's next loads issue in the same place); row_sums: the thread's per-row partials
    (`row_sum`), updated in place.  Returns the fp32 output fragments, in `epi.outputs` order."""
    scale_vec = None
    if const_expr(epi.row_scale):
        sfrag = cute.make_rmem_tensor(frag_shape, Float32)
        for v in range(frag_size):
            sfrag[v] = row_scales[row_of[v]]
        scale_vec = sfrag.load()
    aux_vec = None
    afrag = None
    if const_expr(epi.aux_input):
        afrag = cute.make_rmem_tensor(frag_shape, Float32)
        aux_cur = aux() if callable(aux) else aux
        afrag.store(aux_cur.load().to(Float32))
        aux_vec = afrag.load()
    if const_expr(epi.row_sum):
        for v in range(frag_size):
            row_sums[row_of[v]] = row_sums[row_of[v]] + epi.row_term(frag[v], afrag[v])
    return epi.apply(frag.load(), scale_vec, aux_vec)
