"""The GEMM kernel's tensor arguments as one typed record, in the order every kernel's
`__call__` takes them (checked by tests/test_seam.py).  Built once per launch by
`cute_kernels.gemm_ops`, symbolically by `cute_kernels.compile.fake_arguments`."""
from __future__ import annotations

from typing import Any, NamedTuple


class GemmArgs(NamedTuple):
    a: Any  # (M, K, 1) operand A
    b: Any  # (N, K, L) operand B (L experts when grouped along M)
    d0: Any  # (M, N, 1) first output ((M, N, E) when grouped along K)
    d1: Any = None  # second output (epilogues with two) or None
    scale: Any = None  # (M,) fp32 row scale (router probability) or None
    aux: Any = None  # epilogue input of the output's shape (dact: preact; accumulate: D's previous value) or None
    rowsum: Any = None  # (M, N tiles) fp32 row-sum partials (dact row_sum) or None
    cu_rows: Any = None  # (E+1,) int32 row (or token) offsets per expert, grouped only
    cu_tiles: Any = None  # (E+1,) int32 M-tile offsets per expert, grouped along M only
    desc_ws: Any = None  # int64 workspace of per-CTA TMA descriptors, grouped along K only
    sa: Any = None  # block-scaled FP8: (M, ceil(K / 128)) fp32 scales of A (1x128 blocks), or None
    sb: Any = None  # block-scaled FP8: (ceil(N / 128), ceil(K / 128), L) fp32 scales of B (128x128 blocks), or None
    qs: Any = None  # the quantized output's (M, ceil(N / 128)) fp32 scales (EpilogueSpec.quantized), or None
    a_rows: Any = None  # gathered A (KernelKey.gather_a): (M,) int32, row r of the problem is a[a_rows[r]] (a: (T, K, 1))

    def map(self, fn) -> "GemmArgs":
        """The record with `fn` applied to every argument that is not None."""
        return GemmArgs(*(None if v is None else fn(name, v) for name, v in zip(self._fields, self)))
