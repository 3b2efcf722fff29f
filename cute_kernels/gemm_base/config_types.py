"""The part of a GEMM config every arch shares: its fields, their dict form and the arch-neutral rules.

`TileConfig` holds the fields every arch's kernel takes (the CTA tile, the cluster, the
persistent tile order, the operand pipeline depth, the epilogue sub-tiles).  An arch's config
type extends it with its own fields only: `cute_kernels.config.GemmConfig` (sm90) a schedule,
`cute_kernels.sm100.config.Sm100Config` a CTA group and TMEM accumulator stages (which type an
arch takes is its `cute_kernels.archs` entry).  The dict form is the `config:` mapping of a
tuned_configs/ entry.

The rules here hold on every arch; the values each field may take and the shared-memory
figures are the arch's (its config module passes them in), but for the tile order's:
- each field among the values the arch allows (raster and swizzle: those of the shared tile
  walk), the two cluster extents together;
- the epilogue sub-tile dividing the tile (tile_n a multiple of epi_n);
- ab_stages 0 (as many as fit) or at least 2, and the stages plus epilogue buffers within the
  arch's shared memory (`SmemBudget`).

Plain Python (no DSL): the config layer and the tuned-config store load it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable


# The persistent tile order's values (cute_kernels.tile_scheduler, walked by gemm_base.tile_walk on
# every arch): "n" or "m" bands of 1, 2, 4 or 8 tiles.
RASTERS = ("n", "m")
SWIZZLES = (1, 2, 4, 8)


class ConfigError(ValueError):
    """A config that cannot run on the given problem or architecture."""


@dataclass(frozen=True)
class TileConfig:
    """The fields every arch's GEMM config has.

    tile_m, tile_n: rows and columns of C per CTA tile; tile_k: depth of one pipeline stage.
    cluster_m, cluster_n: CTAs per cluster; A is multicast along cluster_n, B along
        cluster_m.  Grouped problems round each expert's M tiles up to a multiple of
        cluster_m, so the CTAs sharing B always work on one expert.
    raster: "n" walks a band of `swizzle` M tiles along N; "m" walks a band of
        `swizzle` N tiles along M (cute_kernels.tile_scheduler).
    ab_stages: operand pipeline depth; 0 takes as many as fit in shared memory.
    epi_n: columns per epilogue sub-tile; epi_stages: epilogue smem buffers.
    """

    tile_m: int = 128
    tile_n: int = 256
    tile_k: int = 64
    cluster_m: int = 1
    cluster_n: int = 1
    raster: str = "n"
    swizzle: int = 8
    ab_stages: int = 0
    epi_n: int = 32
    epi_stages: int = 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        """The config of a mapping of its fields (a tuned entry's `config:`); ConfigError naming
        the unknown fields, or when `d` is not a mapping."""
        if not isinstance(d, dict):
            raise ConfigError(f"a {cls.__name__} is read from a mapping of its fields, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**d)

    @property
    def cluster_size(self) -> int:
        return self.cluster_m * self.cluster_n


def field_type_errors(cfg: TileConfig) -> list[str]:
    """The fields of `cfg` that do not hold their declared type: ints (not bools or floats) and strs."""
    errs = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        want = str if f.type in (str, "str") else int
        if type(v) is not want:  # bool is an int subclass; 256.0 is not an int
            errs.append(f"{f.name} must be {'a str' if want is str else 'an int'}, got {type(v).__name__} {v!r}")
    return errs


def choice_errors(cfg: TileConfig, choices: dict[str, tuple], *, clusters: tuple) -> list[str]:
    """Each field named in `choices` (field -> the values the arch allows) holding another value,
    then the tile order (raster in RASTERS, swizzle in SWIZZLES: the same on every arch), then the
    cluster extents (both in `clusters`), then whether epi_n divides tile_n (when epi_n is an
    allowed value, or not checked here)."""
    errs = [f"{name} must be one of {values}, got {getattr(cfg, name)!r}"
            for name, values in {**choices, "raster": RASTERS, "swizzle": SWIZZLES}.items()
            if getattr(cfg, name) not in values]
    if cfg.cluster_m not in clusters or cfg.cluster_n not in clusters:
        errs.append(f"cluster_m and cluster_n must be in {clusters}, got ({cfg.cluster_m}, {cfg.cluster_n})")
    if cfg.epi_n in choices.get("epi_n", (cfg.epi_n,)) and cfg.tile_n % cfg.epi_n:
        errs.append(f"tile_n {cfg.tile_n} is not a multiple of epi_n {cfg.epi_n}")
    return errs


@dataclass(frozen=True)
class SmemBudget:
    """An arch's dynamic shared memory per CTA and how a launch fills it: `reserved` bytes
    (mbarriers, scheduler scratch, alignment), the epilogue buffers, and as many operand stages
    as fit of what remains (at most `most_ab_stages` when the config leaves it to the launch).
    What one operand stage and the epilogue buffers take is the arch's: `stage_bytes(cfg,
    elem_bytes)` and `epi_bytes(cfg, num_outputs=, out_bytes=)`.  An arch's config module
    publishes the methods as its smem_bytes, max_ab_stages and resolved_ab_stages."""

    arch: str
    capacity: int
    reserved: int
    most_ab_stages: int
    stage_bytes: Callable[..., int]
    epi_bytes: Callable[..., int]

    def smem_bytes(self, cfg, *, ab_stages: int, num_outputs: int, elem_bytes: int = 2, out_bytes: int = 2) -> int:
        """Shared memory a launch needs: operand stages plus epilogue buffers plus reserve
        (`elem_bytes`: operand element size; `out_bytes`: output element size)."""
        return (ab_stages * self.stage_bytes(cfg, elem_bytes)
                + self.epi_bytes(cfg, num_outputs=num_outputs, out_bytes=out_bytes) + self.reserved)

    def max_ab_stages(self, cfg, *, num_outputs: int, elem_bytes: int = 2, out_bytes: int = 2) -> int:
        """The most operand stages that fit next to the epilogue buffers."""
        fixed = self.smem_bytes(cfg, ab_stages=0, num_outputs=num_outputs, elem_bytes=elem_bytes, out_bytes=out_bytes)
        return (self.capacity - fixed) // self.stage_bytes(cfg, elem_bytes)

    def resolved_ab_stages(self, cfg, *, num_outputs: int, out_bytes: int = 2) -> int:
        """The pipeline depth a launch uses: cfg.ab_stages, or as many as fit (at most most_ab_stages)."""
        if cfg.ab_stages:
            return cfg.ab_stages
        return min(self.most_ab_stages, self.max_ab_stages(cfg, num_outputs=num_outputs, out_bytes=out_bytes))

    def stage_errors(self, cfg, *, num_outputs: int, out_bytes: int = 2) -> list[str]:
        """Why cfg.ab_stages cannot run: fewer than 2 (0 is automatic), or the stages (at least
        2) and the epilogue buffers do not fit."""
        errs = []
        if cfg.ab_stages and cfg.ab_stages < 2:
            errs.append(f"ab_stages must be >= 2 (or 0 for automatic), got {cfg.ab_stages}")
        fit = self.max_ab_stages(cfg, num_outputs=num_outputs, out_bytes=out_bytes)
        if cfg.ab_stages > fit or fit < 2:
            need = self.smem_bytes(cfg, ab_stages=max(cfg.ab_stages, 2), num_outputs=num_outputs, out_bytes=out_bytes)
            errs.append(f"shared memory: {need} bytes needed, {self.capacity} available on {self.arch}")
        return errs


def raise_if_invalid(cfg: TileConfig, errs: list[str], what: str = "") -> TileConfig:
    """`cfg` when `errs` is empty, else ConfigError "invalid <what> <cfg>: <every reason>" (`what`:
    by default the name of `cfg`'s config type)."""
    if errs:
        what = what or (type(cfg).__name__ if isinstance(cfg, TileConfig) else "config")
        raise ConfigError(f"invalid {what} {cfg}: " + "; ".join(errs))
    return cfg
