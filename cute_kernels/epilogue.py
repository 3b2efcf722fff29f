"""Epilogues of the GEMM family: what is computed from the fp32 accumulator and stored.

An epilogue is a compile-time piece the kernel calls once per epilogue sub-tile with
the accumulator values (and the per-row scale when it has one); it returns one fp32
fragment per output, in the order of `outputs`.  The kernel converts and stores them.

- `identity`: D = acc (FC2, plain GEMM).
- `srelu`: postact = scale * relu(acc)^2 and optionally preact = acc (FC1).
"""
from __future__ import annotations

from dataclasses import dataclass

KINDS = ("identity", "srelu")


@dataclass(frozen=True)
class EpilogueSpec:
    kind: str = "identity"
    store_preact: bool = False
    row_scale: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"epilogue kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "identity" and (self.store_preact or self.row_scale):
            raise ValueError("the identity epilogue has no preact output and no row scale")

    @property
    def outputs(self) -> tuple[str, ...]:
        if self.kind == "identity":
            return ("out",)
        return ("preact", "postact") if self.store_preact else ("postact",)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def key(self) -> str:
        return f"{self.kind}{'+preact' if self.store_preact else ''}{'+scale' if self.row_scale else ''}"

    # ---- device side (traced inside the kernel) ----
    def apply(self, acc, scale=None):
        """acc: fp32 TensorSSA of one sub-tile; scale: fp32 TensorSSA of the same shape or None."""
        if self.kind == "identity":
            return [acc]
        import cutlass.cute as cute

        pos = cute.where(acc > 0.0, acc, 0.0)
        post = pos * pos
        if self.row_scale:
            post = post * scale
        return [acc, post] if self.store_preact else [post]
