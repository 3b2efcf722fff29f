"""Epilogues of the GEMM family: what is computed from the fp32 accumulator and stored.

An epilogue is a compile-time object that declares what it reads, what it writes and its
per-element math in fp32; every arch's epilogue driver (`cute_kernels.gemm_base.
epilogue_driver`) loads what it declares and calls `apply` once per epilogue sub-tile,
then converts and stores the fragments it returns, in the order of `outputs`.

Declared inputs: `row_scale` (one fp32 value per row: the router probability p) and
`aux_input` (a tile of the output's shape: the saved pre-activation, or the output's
previous value).  Declared outputs: `outputs` (names, in order) and `row_sum` (one fp32
reduction per row, `row_term` per element).

Kinds (the activation f is an `cute_kernels.activations.Activation`, default relu^2):
- `identity`: D = acc (FC2, plain GEMM); with `accumulate`, D = acc + C where C is the
  output's previous value read as the auxiliary input (weight gradients summed into an
  fp32 `main_grad`).
- `act` (alias `srelu`): postact = p * f(acc) and optionally preact = acc (FC1 forward).
- `dact` (alias `dsrelu`): the FC2 dgrad epilogue.  acc = dy @ W2 = d(postact); with the
  saved pre-activation x as auxiliary input: dpreact = p * acc * f'(x), optionally the
  recomputed postact = p * f(x) for FC2's weight gradient, and optionally (`row_sum`) the
  router gradient dp = rowsum(acc * f(x)), reduced in the kernel to one fp32 partial per
  (row, N tile) that the host sums (no atomics: reproducible).

Output codec: by default every output is stored in the output dtype.  `quantized` names one
output stored as FP8 (`q_format`) with the recipe's 1x128 scales computed in the epilogue:
per row and 128 columns, s = amax / fmax (rounded up to a power of two with `pow2_scales`; 1
for an all-zero block), q = value / s, and s written to an (M, ceil(N / 128)) fp32 tensor
(`GemmArgs.qs`).  The output is then ready to be the next FP8 GEMM's A operand.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .activations import SRELU, Activation, resolve_activation

KINDS = ("identity", "act", "dact")
# The largest finite value of each FP8 format (the quantizing codec's fmax).
FP8_FMAX = {"e4m3": 448.0, "e5m2": 57344.0}
_ALIASES = {"srelu": "act", "dsrelu": "dact"}


@dataclass(frozen=True)
class EpilogueSpec:
    kind: str = "identity"
    store_preact: bool = False  # act: also store acc
    row_scale: bool = False  # act / dact: multiply by a per-row scale
    store_postact: bool = False  # dact: also store the recomputed postact
    row_sum: bool = False  # dact: reduce dp = rowsum(acc * f(preact))
    accumulate: bool = False  # identity: D = acc + D's previous value
    activation: Activation = field(default=SRELU)
    quantized: str = ""  # output codec: the output stored as FP8 with 1x128 scales ("" none)
    q_format: str = "e4m3"  # its FP8 format
    pow2_scales: bool = False  # its scales rounded up to powers of two

    def __post_init__(self):
        object.__setattr__(self, "kind", _ALIASES.get(self.kind, self.kind))
        object.__setattr__(self, "activation", resolve_activation(self.activation))
        if self.kind not in KINDS:
            raise ValueError(f"epilogue kind must be one of {KINDS} (or {sorted(_ALIASES)}), got {self.kind!r}")
        if self.kind != "act" and self.store_preact:
            raise ValueError(f"the {self.kind} epilogue has no preact output")
        if self.kind == "identity" and self.row_scale:
            raise ValueError("the identity epilogue has no row scale")
        if self.kind != "dact" and (self.store_postact or self.row_sum):
            raise ValueError("store_postact and row_sum belong to the dact epilogue")
        if self.kind != "identity" and self.accumulate:
            raise ValueError("accumulate belongs to the identity epilogue")
        if self.kind == "identity" and self.activation != SRELU:
            raise ValueError("the identity epilogue applies no activation")
        if self.quantized and self.quantized not in self.outputs:
            raise ValueError(f"quantized output {self.quantized!r} is not one of {self.outputs}")
        if self.q_format not in FP8_FMAX:
            raise ValueError(f"q_format must be one of {tuple(FP8_FMAX)}, got {self.q_format!r}")
        if type(self.pow2_scales) is not bool:
            raise ValueError(f"pow2_scales must be a bool, got {self.pow2_scales!r}")

    # ---- what it reads and writes
    @property
    def aux_input(self) -> bool:
        """Whether the epilogue reads a tensor of the output's shape (dact: preact;
        accumulate: the output's previous value)."""
        return self.kind == "dact" or self.accumulate

    @property
    def outputs(self) -> tuple[str, ...]:
        if self.kind == "identity":
            return ("out",)
        if self.kind == "dact":
            return ("dpreact", "postact") if self.store_postact else ("dpreact",)
        return ("preact", "postact") if self.store_preact else ("postact",)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    @property
    def quantized_index(self) -> int:
        """Position of the quantized output in `outputs`, or -1."""
        return self.outputs.index(self.quantized) if self.quantized else -1

    @property
    def plain_outputs(self) -> tuple[str, ...]:
        """Outputs stored in the output dtype (not quantized), in order."""
        return tuple(o for o in self.outputs if o != self.quantized)

    def key(self) -> str:
        flags = "".join(f"+{n}" for n, on in (("preact", self.store_preact), ("scale", self.row_scale),
                                              ("postact", self.store_postact), ("rowsum", self.row_sum),
                                              ("acc", self.accumulate)) if on)
        if self.quantized:
            flags += f"+q:{self.quantized}:{self.q_format}{'p2' if self.pow2_scales else ''}"
        if self.kind == "identity":
            return "identity" + flags
        if self.activation == SRELU:  # the names these epilogues always had
            return ("srelu" if self.kind == "act" else "dsrelu") + flags
        return f"{self.kind}[{self.activation.key()}]" + flags

    # ---- device side (traced inside the kernel)
    def apply(self, acc, scale=None, aux=None):
        """acc: fp32 TensorSSA of one sub-tile; scale, aux: fp32 TensorSSA of the same shape or None.
        Returns one fp32 TensorSSA per output, in the order of `outputs`."""
        if self.kind == "identity":
            return [acc + aux] if self.accumulate else [acc]
        if self.kind == "dact":
            dpre, post = self.activation.backward(acc, aux)
            if self.row_scale:
                dpre = dpre * scale
                post = post * scale
            return [dpre, post] if self.store_postact else [dpre]
        post = self.activation.forward(acc)
        if self.row_scale:
            post = post * scale
        return [acc, post] if self.store_preact else [post]

    def row_term(self, acc, aux):
        """dact with row_sum: one element's term of dp, acc * f(preact) (fp32 scalars)."""
        return self.activation.row_term(acc, aux)
