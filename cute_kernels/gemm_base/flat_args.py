"""Flat tensor arguments (KernelKey.flat_args): the kernel takes the torch tensors of its operands
and outputs as they are stored and builds the (rows, cols, L) views its code works on inside its
host-side `__call__` (compiled with the kernel), so the launch path makes no view per tensor per
launch (host_args.as_mkl / as_nkl: one torch op each).

Each flat tensor arrives as stored, row-major in its last two dimensions (unit stride along the last):
- 2-D (rows, cols): A, the outputs and the epilogue input, and a dense B; the view gets a size-1
  batch mode whose stride is the tensor's leading stride (a multiple of 8 elements, as the batch
  stride of host_args.as_mkl is; the batch coordinate is always 0);
- 3-D (E, rows, cols): B grouped along M (a weight (E, N, K)) and the outputs grouped along K (a
  weight gradient (E, M, N)); the view's batch mode is the expert mode, E moved last.
A K-major A / B and every output or epilogue input come as the kernel's own (rows, K) / (M, N); an
M-major A / N-major B as its transpose (K, rows), e.g. the weight gradient's dy and x, or FC2's w2
read as its transpose."""
from __future__ import annotations

import cutlass.cute as cute


def flat_view(t: cute.Tensor, transposed: bool) -> cute.Tensor:
    """The (rows, cols, L) view of `t` ((rows, cols) or (L, rows, cols), unit stride along cols);
    `transposed`: of its transpose's, (cols, rows, L)."""
    if len(t.shape) == 2:
        rows, cols = t.layout.shape
        ld, unit = t.layout.stride
        batch, batch_stride = 1, ld
    else:
        batch, rows, cols = t.layout.shape
        batch_stride, ld, unit = t.layout.stride
    if transposed:
        layout = cute.make_layout((cols, rows, batch), stride=(unit, ld, batch_stride))
    else:
        layout = cute.make_layout((rows, cols, batch), stride=(ld, unit, batch_stride))
    return cute.make_tensor(t.iterator, layout)


def flat_args_views(mA, mB, mD0, mD1, mAux, *, a_major: str, b_major: str):
    """(mA, mB, mD0, mD1, mAux) as the kernel's 3-D views, from the flat arguments (a None stays None)."""
    mA = flat_view(mA, a_major == "m")
    mB = flat_view(mB, b_major == "n")
    mD0 = flat_view(mD0, False)
    mD1 = None if mD1 is None else flat_view(mD1, False)
    mAux = None if mAux is None else flat_view(mAux, False)
    return mA, mB, mD0, mD1, mAux
