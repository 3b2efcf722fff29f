"""Per-thread epilogue inputs of the SM100 kernel (traced at kernel build time).

After `tcgen05.ld` (32x32b atoms, 4 epilogue warps over a 128-lane accumulator) a thread
holds one row of an epilogue sub-tile: `epi_n` consecutive columns.  `thread_row_layout`
checks that at trace time (a layout it does not expect fails the compile, never the
numbers).  So the row scale is one load per thread and sub-tile, the row sum needs no
shuffles, and the epilogue input (dsrelu's preact, the accumulated output's previous value)
is read in 16-byte vectors straight from global memory.
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute


def thread_row_layout(tTR_cEpi, frag_size: int) -> None:
    """Raise NotImplementedError unless every fragment element lies on the thread's first row
    and element v is column v of its run (static offsets from the thread's first element)."""
    offs = [tTR_cEpi.layout(v) for v in range(frag_size)]
    rows = {int(o[0]) for o in offs}
    cols = [int(o[1]) for o in offs]
    if rows != {0} or cols != list(range(frag_size)):
        raise NotImplementedError(f"sm100 epilogue expects one row of consecutive columns per thread, "
                                  f"got rows {sorted(rows)} columns {cols[:8]}...")


def load_row_chunks(mAux: cute.Tensor, frag, row, col0, n_total, layer, frag_size: int):
    """frag[v] = mAux[row, col0 + v, layer] for the thread's run of `frag_size` columns, read
    16 bytes at a time.  A chunk starting past N is clamped to the row's last whole chunk
    (N is a multiple of 16 bytes of the input: the host checks the output's rows), so every
    read is in bounds and aligned; the values of such columns are never stored, and their
    row-sum term is 0 (the accumulator is 0 past N: TMA zero-fills B there)."""
    dt = mAux.element_type
    chunk = 128 // dt.width
    for c in range(frag_size // chunk):  # plain Python: unrolled at trace time
        col = cutlass.min(col0 + c * chunk, n_total - chunk)
        ptr = mAux.iterator + cute.crd2idx((row, col, layer), mAux.layout)
        src = cute.make_tensor(cute.make_ptr(dt, ptr.toint(), cute.AddressSpace.gmem, assumed_align=16),
                               cute.make_layout(chunk))
        dst = cute.make_tensor(frag.iterator + c * chunk, cute.make_layout(chunk))
        cute.autovec_copy(src, dst)
