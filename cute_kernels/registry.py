"""One registry of the GEMM kernels the op launches and the autotuner tunes.

For each kernel (fc1_srelu, fc2, fc2_dgrad_dsrelu, weight_grad; the block-scaled FP8
fp8_fc1_srelu, fp8_fc2 and fp8_dgrad_dact): how it groups experts ("m": row ranges of A and D, one B per
expert; "k": token ranges along the reduction, one D per expert), the operand majorness the
MLP step launches it with, the epilogue it is tuned with (its outputs follow), its float32
torch reference (FP8: of the dequantized operands), its untuned default config and which
configs it can run (`config_errors`).  `kernel_key` builds the compiled-kernel key from
these, so the op, the autotuner and the tests resolve the same kernel for the same problem.

Operand dtypes by name: "bfloat16" / "float16", or for FP8 kernels A's format
("float8_e4m3fn" / "float8_e5m2") with B's appended after a "+" when it differs
(`dtype_key`): the tuned-config key of an e5m2 x e4m3 gradient GEMM is then its own.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from . import reference
from .config import (GemmConfig, block_scaled_default_config, block_scaled_errors, default_config, validation_errors,
                     wgrad_default_config)
from .epilogue import EpilogueSpec
from .fp8 import reference as fp8_reference

FP8_DTYPES = ("float8_e4m3fn", "float8_e5m2")


@dataclass(frozen=True)
class KernelSpec:
    name: str
    grouping: str  # "m" | "k"
    majors: tuple  # (A, B) majorness as the MLP step launches it
    epilogue: EpilogueSpec  # the form it is tuned and timed in
    reference: Callable  # float32 torch reference (see cute_kernels.reference, cute_kernels.fp8.reference)
    doc: str = ""
    block_scaled: bool = False  # FP8 operands with the 1x128 / 128x128 block scales
    out_dtype: str = ""  # the plain outputs' dtype ("": the operands')

    @property
    def default_dtype(self) -> str:
        """The operand dtype a tuning problem of this kernel takes unless told otherwise."""
        return FP8_DTYPES[0] if self.block_scaled else "bfloat16"

    def check_dtype(self, dtype: str):
        """ValueError unless `dtype` (a `dtype_key`) is an operand precision of this kernel."""
        a, b = operand_dtypes(dtype)
        ok = {a, b} <= set(FP8_DTYPES) if self.block_scaled else (a == b and a in ("bfloat16", "float16"))
        if not ok:
            want = f"FP8 ({' / '.join(FP8_DTYPES)}, B's after a '+')" if self.block_scaled else "bfloat16 or float16"
            raise ValueError(f"kernel {self.name!r} takes {want} operands, got dtype {dtype!r}")

    @property
    def num_outputs(self) -> int:
        return self.epilogue.num_outputs

    def grouping_flags(self, num_experts: int) -> tuple[bool, bool]:
        """(grouped, grouped_k) of a launch on a problem with `num_experts` (0: dense)."""
        return bool(num_experts) and self.grouping == "m", bool(num_experts) and self.grouping == "k"

    def constraints(self, num_experts: int) -> dict:
        """validation_errors keywords for a problem with `num_experts` (0: dense)."""
        grouped, grouped_k = self.grouping_flags(num_experts)
        return {"num_outputs": self.num_outputs, "grouped": grouped, "grouped_k": grouped_k}

    def default_config(self, m: int, n: int, k: int, num_experts: int = 0, *, arch: str = "sm90") -> GemmConfig:
        """The untuned config on an (M, N, K[, E]) problem (weight_grad: M, N = the gradient, K = tokens)."""
        if self.block_scaled:
            return block_scaled_default_config(m, n, k, arch=arch, grouped=bool(num_experts),
                                               num_experts=max(num_experts, 1))
        if self.grouping == "k":
            return wgrad_default_config(m, n, k, max(num_experts, 1), arch=arch)
        return default_config(m, n, k, arch=arch, grouped=bool(num_experts), num_experts=max(num_experts, 1),
                              num_outputs=self.num_outputs)


    def config_errors(self, cfg, num_experts: int = 0, *, arch: str = "sm90", epi: EpilogueSpec | None = None) -> list:
        """Every reason `cfg` cannot run this kernel on a problem with `num_experts` (0: dense),
        with its registered epilogue or `epi`; empty when it can."""
        if self.block_scaled:
            grouped, grouped_k = self.grouping_flags(num_experts)
            return block_scaled_errors(cfg, epi or self.epilogue, arch=arch, grouped=grouped, grouped_k=grouped_k,
                                       majors=self.majors)
        return validation_errors(cfg, arch=arch, **self.constraints(num_experts))


KERNELS = {
    "fc1_srelu": KernelSpec("fc1_srelu", "m", ("k", "k"), EpilogueSpec("act", store_preact=True),
                            reference.fc1_act_ref, "preact = x @ w1^T, postact = p * f(preact)"),
    "fc2": KernelSpec("fc2", "m", ("k", "k"), EpilogueSpec("identity"), reference.fc2_ref, "y = h @ w2^T"),
    "fc2_dgrad_dsrelu": KernelSpec("fc2_dgrad_dsrelu", "m", ("k", "n"), EpilogueSpec("dact"), reference.dgrad_act_ref,
                                   "dpreact = p * (dy @ w2) * f'(preact), postact recompute, router gradient"),
    "weight_grad": KernelSpec("weight_grad", "k", ("m", "n"), EpilogueSpec("identity"), reference.weight_grad_ref,
                              "dw = dy^T x (per expert when grouped)"),
    # Block-scaled FP8 (Sm90Gemm with sm90/mainloop_fp8.py): what the FP8 step launches
    "fp8_fc1_srelu": KernelSpec("fp8_fc1_srelu", "m", ("k", "k"),
                                EpilogueSpec("act", store_preact=True, quantized="postact"),
                                fp8_reference.fp8_fc1_act_ref,
                                "preact = dequant(x) @ dequant(w1)^T (bf16), postact = f(preact) in FP8 + 1x128 scales",
                                block_scaled=True, out_dtype="bfloat16"),
    "fp8_fc2": KernelSpec("fp8_fc2", "m", ("k", "k"), EpilogueSpec("identity"), fp8_reference.fp8_fc2_ref,
                          "y = dequant(h) @ dequant(w2)^T in bf16 (FC2, and the FP8 step's data gradients)",
                          block_scaled=True, out_dtype="bfloat16"),
    # the FC2 data gradient with the activation derivative (fp8_dgrad_dact): its own tuned entries,
    # timed with the epilogue the training step runs (postact recompute for FC2's weight gradient)
    "fp8_dgrad_dact": KernelSpec("fp8_dgrad_dact", "m", ("k", "k"), EpilogueSpec("dact", store_postact=True),
                                 fp8_reference.fp8_dgrad_dact_ref,
                                 "dpreact = (dequant(dy) @ dequant(w2^T)^T) * f'(preact) in bf16, postact recompute",
                                 block_scaled=True, out_dtype="bfloat16"),
}


def dtype_key(a_dtype: str, b_dtype: str = "") -> str:
    """The operand-precision name of a launch: A's dtype, with B's after a "+" when it differs."""
    return a_dtype if b_dtype in ("", a_dtype) else f"{a_dtype}+{b_dtype}"


def operand_dtypes(dtype: str) -> tuple[str, str]:
    """(A's dtype, B's dtype) of a `dtype_key`."""
    a, _, b = dtype.partition("+")
    return a, b or a


def get_kernel(name: str) -> KernelSpec:
    try:
        return KERNELS[name]
    except KeyError:
        raise ValueError(f"unknown kernel {name!r} (known: {sorted(KERNELS)})") from None


def kernel_constraints(kernel: str, num_experts: int) -> dict:
    return get_kernel(kernel).constraints(num_experts)


def kernel_default_config(kernel: str, m: int, n: int, k: int, num_experts: int = 0, *, arch: str = "sm90"):
    return get_kernel(kernel).default_config(m, n, k, num_experts, arch=arch)


def kernel_config_errors(kernel: str, cfg, num_experts: int = 0, *, arch: str = "sm90") -> list:
    return get_kernel(kernel).config_errors(cfg, num_experts, arch=arch)


def kernel_key(kernel: str, arch: str, cfg: GemmConfig, dtype: str, num_experts: int, *, epi: EpilogueSpec | None = None,
               majors: tuple | None = None, out_dtype: str = "", gather_a: bool = False):
    """The compiled-kernel key of `kernel` with `cfg` (epilogue and majorness default to the
    registered ones: what the tuner times; the op passes the ones of its call).  `dtype`: a
    `dtype_key` (FP8 kernels: A's format, "+B's" when it differs).  gather_a: A's rows by index
    (the fused dispatch gather; grouped bf16/fp16 kernels with a K-major A)."""
    from .compile import KernelKey

    spec = get_kernel(kernel)
    grouped, grouped_k = spec.grouping_flags(num_experts)
    a_major, b_major = majors or spec.majors
    a_dtype, b_dtype = operand_dtypes(dtype)
    return KernelKey(arch, cfg, epi or spec.epilogue, grouped, a_dtype, a_major, b_major,
                     out_dtype=out_dtype or spec.out_dtype, grouped_k=grouped_k,
                     b_dtype="" if b_dtype == a_dtype else b_dtype, gather_a=gather_a)


def with_activation(epi: EpilogueSpec, activation) -> EpilogueSpec:
    """`epi` with another activation (identity epilogues have none)."""
    return epi if epi.kind == "identity" else replace(epi, activation=activation)
