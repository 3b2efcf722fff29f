"""Epilogues of the GEMM family: what is computed from the fp32 accumulator and stored.

An epilogue is a compile-time piece the kernel calls once per epilogue sub-tile with
the accumulator values (plus the per-row scale and the auxiliary input when it has
them); it returns one fp32 fragment per output, in the order of `outputs`.  The
kernel converts and stores them.

- `identity`: D = acc (FC2, plain GEMM); with `accumulate`, D = acc + C where C is
  the output's previous value read as the auxiliary input (weight gradients summed
  into an fp32 `main_grad`).
- `srelu`: postact = scale * relu(acc)^2 and optionally preact = acc (FC1 forward).
- `dsrelu`: the FC2 dgrad epilogue.  acc = dy @ W2 = d(postact); with the saved
  pre-activation as auxiliary input and the router probability p as the optional
  row scale: dpreact = 2 * p * acc * relu(preact), optionally the recomputed
  postact = p * relu(preact)^2 for FC2's weight gradient, and optionally (`row_sum`)
  the router gradient dp = rowsum(acc * relu(preact)^2), reduced in the kernel to one
  fp32 partial per (row, N tile) that the host sums (no atomics: reproducible).
"""
from __future__ import annotations

from dataclasses import dataclass

KINDS = ("identity", "srelu", "dsrelu")


@dataclass(frozen=True)
class EpilogueSpec:
    kind: str = "identity"
    store_preact: bool = False  # srelu: also store acc
    row_scale: bool = False  # srelu: multiply postact by a per-row scale
    store_postact: bool = False  # dsrelu: also store the recomputed postact
    row_sum: bool = False  # dsrelu: reduce dp = rowsum(acc * relu(preact)^2)
    accumulate: bool = False  # identity: D = acc + D's previous value

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"epilogue kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind != "srelu" and self.store_preact:
            raise ValueError(f"the {self.kind} epilogue has no preact output")
        if self.kind == "identity" and self.row_scale:
            raise ValueError("the identity epilogue has no row scale")
        if self.kind != "dsrelu" and (self.store_postact or self.row_sum):
            raise ValueError("store_postact and row_sum belong to the dsrelu epilogue")
        if self.kind != "identity" and self.accumulate:
            raise ValueError("accumulate belongs to the identity epilogue")

    @property
    def aux_input(self) -> bool:
        """Whether the epilogue reads a tensor of the output's shape (dsrelu: preact;
        accumulate: the output's previous value)."""
        return self.kind == "dsrelu" or self.accumulate

    @property
    def outputs(self) -> tuple[str, ...]:
        if self.kind == "identity":
            return ("out",)
        if self.kind == "dsrelu":
            return ("dpreact", "postact") if self.store_postact else ("dpreact",)
        return ("preact", "postact") if self.store_preact else ("postact",)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def key(self) -> str:
        flags = "".join(f"+{n}" for n, on in (("preact", self.store_preact), ("scale", self.row_scale),
                                              ("postact", self.store_postact), ("rowsum", self.row_sum),
                                              ("acc", self.accumulate)) if on)
        return self.kind + flags

    # ---- device side (traced inside the kernel) ----
    def apply(self, acc, scale=None, aux=None):
        """acc: fp32 TensorSSA of one sub-tile; scale, aux: fp32 TensorSSA of the same shape or None."""
        if self.kind == "identity":
            return [acc + aux] if self.accumulate else [acc]
        import cutlass.cute as cute

        if self.kind == "dsrelu":
            act = cute.where(aux > 0.0, aux, 0.0)
            dpre = acc * act * 2.0
            post = act * act
            if self.row_scale:
                dpre = dpre * scale
                post = post * scale
            return [dpre, post] if self.store_postact else [dpre]
        pos = cute.where(acc > 0.0, acc, 0.0)
        post = pos * pos
        if self.row_scale:
            post = post * scale
        return [acc, post] if self.store_preact else [post]

    def row_term(self, acc, aux):
        """dsrelu with row_sum: one element's term of dp, acc * relu(preact)^2 (fp32 scalars)."""
        import cutlass
        from cutlass import Float32

        act = cutlass.select_(aux > 0.0, aux, Float32(0.0))
        return acc * act * act
