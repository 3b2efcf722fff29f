"""Flat tensor arguments (KernelKey.flat_args): the kernel takes the 2-D torch tensors of its
batch-free operands and outputs as they are and builds the (rows, cols, 1) views its code
works on inside its host-side `__call__` (compiled with the kernel), so the launch path makes no
(M, K, 1) view per tensor per launch (host_args.as_mkl: one torch op each).

Each flat tensor arrives row-major as stored, (rows, cols) with unit stride along cols:
- a K-major A / B and every output or epilogue input: the kernel's own (M, K) / (N, K) / (M, N);
- an M-major A / N-major B: its transpose (K, M) / (K, N) (the storage the kernel's view reads,
  e.g. the weight gradient's dy and x, or FC2's w2 read as its transpose).
The view appended here has the kernel's orientation and a size-1 batch mode whose stride is the
tensor's leading stride (a multiple of 8 elements, as the batch stride of host_args.as_mkl is;
the batch coordinate is always 0).  What stays 3-D: B grouped along M (N, K, E) and the outputs
grouped along K (M, N, E)."""
from __future__ import annotations

import cutlass.cute as cute


def flat_view(t: cute.Tensor, transposed: bool) -> cute.Tensor:
    """The (rows, cols, 1) view of the 2-D row-major `t`; `transposed`: of its transpose."""
    rows, cols = t.layout.shape
    ld, unit = t.layout.stride
    if transposed:
        layout = cute.make_layout((cols, rows, 1), stride=(unit, ld, ld))
    else:
        layout = cute.make_layout((rows, cols, 1), stride=(ld, unit, ld))
    return cute.make_tensor(t.iterator, layout)


def flat_args_views(mA, mB, mD0, mD1, mAux, *, a_major: str, b_major: str, b_flat: bool, d_flat: bool):
    """(mA, mB, mD0, mD1, mAux) as the kernel's 3-D views, from the flat arguments: A always,
    B where `b_flat` (not grouped along M), the outputs and the epilogue input where `d_flat`
    (not grouped along K); a None stays None."""
    mA = flat_view(mA, a_major == "m")
    if b_flat:
        mB = flat_view(mB, b_major == "n")
    if d_flat:
        mD0 = flat_view(mD0, False)
        mD1 = None if mD1 is None else flat_view(mD1, False)
        mAux = None if mAux is None else flat_view(mAux, False)
    return mA, mB, mD0, mD1, mAux
