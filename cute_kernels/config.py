"""GEMM kernel configuration: the knobs the kernels take and the autotuner searches.

`GemmConfig` is the family's config type (dense and grouped, every epilogue; the one sm90
takes): the fields every arch shares (`TileConfig`, cute_kernels/gemm_base/config_types.py:
tile shape, cluster, raster, pipelining, epilogue sub-tiles, their dict form) plus the MMA
threads' schedule.  An arch may take its own extension of `TileConfig` instead (sm100:
`Sm100Config`; its `cute_kernels.archs` entry names it).  What a field may be on an arch, why a
config cannot run there, the default for a shape and the search grid belong to the arch
(`cute_kernels/<arch>/config.py`, found through `cute_kernels.archs`); the functions below take
`arch=` and dispatch.
"""
from __future__ import annotations

from dataclasses import dataclass

# ConfigError is defined with the shared config fields (and stays importable from here)
from .gemm_base.config_types import ConfigError, TileConfig, field_type_errors, raise_if_invalid


@dataclass(frozen=True)
class GemmConfig(TileConfig):
    """Tile shape, cluster, schedule and pipelining of one GEMM launch: the shared fields of
    `TileConfig` (gemm_base/config_types.py) plus the MMA threads' schedule (the values each
    field may take, and what they mean for the hardware, are the arch's: e.g.
    cute_kernels/sm90/config.py).

    schedule: how the MMA threads share tiles: "cooperative" (they split one tile) or
        "pingpong" (two groups alternate tiles so one's epilogue overlaps the other's mainloop).
    cluster_n defaults to 2 (A multicast over a pair of CTAs).
    """

    cluster_n: int = 2
    schedule: str = "cooperative"


def _arch(arch: str):
    from .archs import arch_config

    return arch_config(arch)


def validation_errors(cfg: GemmConfig, *, arch: str = "sm90", num_outputs: int = 1, grouped: bool = False,
                      grouped_k: bool = False, out_bytes: int = 2) -> list[str]:
    """Every reason `cfg` cannot run on `arch`; empty when it can."""
    from .archs import ARCHS

    errs = type_errors(cfg, arch, num_outputs=num_outputs, out_bytes=out_bytes)
    if errs:
        return errs
    if arch not in ARCHS:
        return [f"unknown arch {arch!r} (known: {sorted(ARCHS)})"]
    return _arch(arch).validation_errors(cfg, num_outputs=num_outputs, grouped=grouped, grouped_k=grouped_k,
                                         out_bytes=out_bytes)


def type_errors(cfg, arch="sm90", **ints) -> list[str]:
    """What is not of its type: `cfg` must be a GemmConfig whose fields hold ints (not
    bools or floats) and strs as declared, `arch` a str, `ints` (name -> value) ints.  The
    value checks of validation_errors assume these types."""
    from .archs import config_classes

    # an arch may have its own config type (archs.Arch.config_class): a dataclass of ints and strs too
    if not isinstance(cfg, config_classes()):
        return [f"expected a GemmConfig, got {type(cfg).__name__}"]
    errs = [] if isinstance(arch, str) else [f"arch must be a str, got {type(arch).__name__} {arch!r}"]
    errs += field_type_errors(cfg)
    for name, v in ints.items():
        if type(v) is not int:
            errs.append(f"{name} must be an int, got {type(v).__name__} {v!r}")
    return errs


def validate(cfg: GemmConfig, *, arch: str = "sm90", num_outputs: int = 1, grouped: bool = False,
             grouped_k: bool = False, out_bytes: int = 2) -> GemmConfig:
    """Return `cfg` if it can run, else raise ConfigError listing every reason."""
    errs = validation_errors(cfg, arch=arch, num_outputs=num_outputs, grouped=grouped, grouped_k=grouped_k,
                             out_bytes=out_bytes)
    return raise_if_invalid(cfg, errs)


def epilogue_misfit(cfg: GemmConfig, epi, *, arch: str = "sm90", out_bytes: int = 2, grouped_k: bool = False):
    """Why `cfg` leaves epilogue `epi` too few registers on `arch`, or None when it fits."""
    return _arch(arch).epilogue_misfit(cfg, epi, out_bytes=out_bytes, grouped_k=grouped_k)


def narrowed_for_epilogue(cfg: GemmConfig, epi, *, arch: str = "sm90", **where) -> GemmConfig:
    """`cfg` narrowed until it fits `epi` on `arch` (for looked-up configs)."""
    return _arch(arch).narrowed_for_epilogue(cfg, epi, **where)


def resolved_ab_stages(cfg: GemmConfig, *, num_outputs: int, arch: str = "sm90", out_bytes: int = 2) -> int:
    """The operand pipeline depth a launch of `cfg` uses on `arch`."""
    return _arch(arch).resolved_ab_stages(cfg, num_outputs=num_outputs, out_bytes=out_bytes)


def max_ab_stages(cfg: GemmConfig, *, num_outputs: int, arch: str = "sm90", elem_bytes: int = 2,
                  out_bytes: int = 2) -> int:
    return _arch(arch).max_ab_stages(cfg, num_outputs=num_outputs, elem_bytes=elem_bytes, out_bytes=out_bytes)


def smem_bytes(cfg: GemmConfig, *, ab_stages: int, num_outputs: int, arch: str = "sm90", elem_bytes: int = 2,
               out_bytes: int = 2) -> int:
    return _arch(arch).smem_bytes(cfg, ab_stages=ab_stages, num_outputs=num_outputs, elem_bytes=elem_bytes,
                                  out_bytes=out_bytes)


def default_config(m: int, n: int, k: int, *, arch: str = "sm90", grouped: bool = False, num_experts: int = 1,
                   num_outputs: int = 1) -> GemmConfig:
    """The untuned config of an M-grouped or dense (M, N, K) problem on `arch`."""
    return _arch(arch).default_config(m, n, k, grouped=grouped, num_experts=num_experts, num_outputs=num_outputs)


def wgrad_default_config(n: int, k: int, tokens: int, num_experts: int = 1, *, arch: str = "sm90") -> GemmConfig:
    """The untuned config of the (K-grouped) weight-gradient GEMM on `arch`."""
    return _arch(arch).wgrad_default_config(n, k, tokens, num_experts)


def _block_scaled_rules(arch: str):
    """The config rules of `arch` for the block-scaled FP8 kernels; ConfigError where it has none."""
    from .archs import ARCHS, get_arch

    if arch not in ARCHS or not get_arch(arch).block_scaled_fp8:
        raise ConfigError(f"arch {arch!r} has no block-scaled FP8 GEMM (FP8 kernels: "
                          f"{sorted(a.name for a in ARCHS.values() if a.block_scaled_fp8)})")
    return _arch(arch)


def block_scaled_errors(cfg: GemmConfig, epi, *, arch: str = "sm90", grouped: bool = False, grouped_k: bool = False,
                        majors: tuple = ("k", "k"), out_bytes: int = 2, b_scale: str = "") -> list[str]:
    """Every reason `cfg` cannot run the block-scaled FP8 kernel with epilogue `epi` on `arch`."""
    errs = type_errors(cfg, arch)
    if errs:
        return errs
    try:
        rules = _block_scaled_rules(arch)
    except ConfigError as e:
        return [str(e)]
    return rules.block_scaled_errors(cfg, epi, grouped=grouped, grouped_k=grouped_k, majors=majors,
                                     out_bytes=out_bytes, b_scale=b_scale)


def block_scaled_default_config(m: int, n: int, k: int, *, arch: str = "sm90", grouped: bool = False,
                                num_experts: int = 1) -> GemmConfig:
    """The untuned config of a block-scaled FP8 (M, N, K) problem on `arch` (one for every shape
    until the H200 says otherwise: the arch's FP8_DEFAULT_CONFIG)."""
    return _block_scaled_rules(arch).FP8_DEFAULT_CONFIG
