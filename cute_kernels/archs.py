"""The GPU architectures the GEMM family targets, in one table: the DSL's target name, the
compute capability that selects it at run time, and where its config rules and its kernel
class live.  A new arch is a folder (`cute_kernels/<arch>/`) plus an entry here."""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    name: str
    dsl_target: str  # what `--gpu-arch` takes
    major: int  # compute capability major version that runs it
    config_module: str  # limits, validation reasons, defaults
    space_module: str  # the autotuner's search grid
    kernel: str  # "module:Class" of the GEMM kernel
    block_scaled_fp8: bool = False  # the kernel class takes FP8 operands with 1x128 / 128x128 block scales


ARCHS = {
    "sm90": Arch("sm90", "sm_90a", 9, "cute_kernels.sm90.config", "cute_kernels.sm90.space",
                 "cute_kernels.sm90.gemm:Sm90Gemm", block_scaled_fp8=True),
    "sm100": Arch("sm100", "sm_100a", 10, "cute_kernels.sm100.config", "cute_kernels.sm100.space",
                  "cute_kernels.sm100.gemm:Sm100Gemm"),
}


def get_arch(arch: str) -> Arch:
    try:
        return ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown arch {arch!r} (known: {sorted(ARCHS)})") from None


def arch_config(arch: str):
    """The config-rules module of `arch`."""
    return importlib.import_module(get_arch(arch).config_module)


def arch_space(arch: str):
    """The search-space module of `arch` (GRID, to_config, to_params)."""
    return importlib.import_module(get_arch(arch).space_module)


def kernel_class(arch: str):
    module, _, cls = get_arch(arch).kernel.partition(":")
    return getattr(importlib.import_module(module), cls)


def arch_of_capability(major: int) -> str | None:
    """The arch whose kernels run on compute capability `major`.x, or None."""
    return next((a.name for a in ARCHS.values() if a.major == major), None)
