"""The FP8 GEMM's epilogue: an `EpilogueSpec` (the fp32 math, shared with the bf16 kernels)
plus how each output is stored: bf16, or quantized by the recipe's 1x128 stage (FP8 values
and one fp32 scale per row and 128 columns, computed in the epilogue)."""
from __future__ import annotations

from dataclasses import dataclass

from ..epilogue import EpilogueSpec

FMAX = {"e4m3": 448.0, "e5m2": 57344.0}


@dataclass(frozen=True)
class Fp8Epilogue:
    """An `EpilogueSpec` plus, per output, how it is stored: `quantized` names the one output
    (if any) written as FP8 of `q_format` with 1x128 scales; the others are stored bf16."""

    spec: EpilogueSpec = EpilogueSpec()
    quantized: str = ""
    q_format: str = "e4m3"
    pow2_scales: bool = False

    def __post_init__(self):
        if self.quantized and self.quantized not in self.spec.outputs:
            raise ValueError(f"quantized output {self.quantized!r} is not one of {self.spec.outputs}")
        if self.q_format not in FMAX:
            raise ValueError(f"q_format must be one of {tuple(FMAX)}, got {self.q_format!r}")

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.spec.outputs

    @property
    def plain_outputs(self) -> tuple[str, ...]:
        """Outputs stored in bf16, in order."""
        return tuple(o for o in self.outputs if o != self.quantized)

    def key(self) -> str:
        q = f"+q:{self.quantized}:{self.q_format}{'p2' if self.pow2_scales else ''}" if self.quantized else ""
        return self.spec.key() + q
