"""One registry of the GEMM kernels the op launches and the autotuner tunes.

For each kernel (fc1_srelu, fc2, fc2_dgrad_dsrelu, weight_grad): how it groups experts
("m": row ranges of A and D, one B per expert; "k": token ranges along the reduction,
one D per expert), the operand majorness the MLP step launches it with, the epilogue
it is tuned with (its outputs follow), its float32 torch reference, and its untuned
default config.  `kernel_key` builds the compiled-kernel key from these, so the op,
the autotuner and the tests resolve the same kernel for the same problem.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from . import reference
from .config import GemmConfig, default_config, wgrad_default_config
from .epilogue import EpilogueSpec


@dataclass(frozen=True)
class KernelSpec:
    name: str
    grouping: str  # "m" | "k"
    majors: tuple  # (A, B) majorness as the MLP step launches it
    epilogue: EpilogueSpec  # the form it is tuned and timed in
    reference: Callable  # float32 torch reference (see cute_kernels.reference)
    doc: str = ""

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
        if self.grouping == "k":
            return wgrad_default_config(m, n, k, max(num_experts, 1), arch=arch)
        return default_config(m, n, k, arch=arch, grouped=bool(num_experts), num_experts=max(num_experts, 1),
                              num_outputs=self.num_outputs)


KERNELS = {
    "fc1_srelu": KernelSpec("fc1_srelu", "m", ("k", "k"), EpilogueSpec("act", store_preact=True),
                            reference.fc1_act_ref, "preact = x @ w1^T, postact = p * f(preact)"),
    "fc2": KernelSpec("fc2", "m", ("k", "k"), EpilogueSpec("identity"), reference.fc2_ref, "y = h @ w2^T"),
    "fc2_dgrad_dsrelu": KernelSpec("fc2_dgrad_dsrelu", "m", ("k", "n"), EpilogueSpec("dact"), reference.dgrad_act_ref,
                                   "dpreact = p * (dy @ w2) * f'(preact), postact recompute, router gradient"),
    "weight_grad": KernelSpec("weight_grad", "k", ("m", "n"), EpilogueSpec("identity"), reference.weight_grad_ref,
                              "dw = dy^T x (per expert when grouped)"),
}


def get_kernel(name: str) -> KernelSpec:
    try:
        return KERNELS[name]
    except KeyError:
        raise ValueError(f"unknown kernel {name!r} (known: {sorted(KERNELS)})") from None


def kernel_constraints(kernel: str, num_experts: int) -> dict:
    return get_kernel(kernel).constraints(num_experts)


def kernel_default_config(kernel: str, m: int, n: int, k: int, num_experts: int = 0, *, arch: str = "sm90"):
    return get_kernel(kernel).default_config(m, n, k, num_experts, arch=arch)


def kernel_key(kernel: str, arch: str, cfg: GemmConfig, dtype: str, num_experts: int, *, epi: EpilogueSpec | None = None,
               majors: tuple | None = None, out_dtype: str = ""):
    """The compiled-kernel key of `kernel` with `cfg` (epilogue and majorness default to the
    registered ones: what the tuner times; the op passes the ones of its call)."""
    from .compile import KernelKey

    spec = get_kernel(kernel)
    grouped, grouped_k = spec.grouping_flags(num_experts)
    a_major, b_major = majors or spec.majors
    return KernelKey(arch, cfg, epi or spec.epilogue, grouped, dtype, a_major, b_major, out_dtype=out_dtype,
                     grouped_k=grouped_k)


def with_activation(epi: EpilogueSpec, activation) -> EpilogueSpec:
    """`epi` with another activation (identity epilogues have none)."""
    return epi if epi.kind == "identity" else replace(epi, activation=activation)
