"""The Blackwell search space of the GEMM config (`cute_kernels.sm100.config.Sm100Config`), with the
interface of `autotune.space` (GRID, to_config, to_params, in_space, suggest, grid,
parse_overrides).  `mma` joins the UMMA shape and the cluster: "<1|2>cta_c<M>x<N>" (2-CTA
needs an even cluster_m); everything else is a field of the config."""
from __future__ import annotations

from ..gemm_base import config_space
from .config import Sm100Config

GRID = {
    "tile_n": [128, 192, 256],
    "mma": ["1cta_c1x1", "1cta_c1x2", "1cta_c2x1", "2cta_c2x1", "2cta_c2x2", "2cta_c4x1"],
    "tile_k": [64, 128],
    "acc_stages": [1, 2],
    "raster": ["n", "m"],
    "swizzle": [1, 4, 8],
    "epi_n": [32, 64],
    "epi_stages": [2, 4],
}
# Knobs that change only integer constants of the tile walk, not the kernel's resources or
# instruction mix: configs differing only in them compile alike (compile-only sweeps one of each).
RUNTIME_ONLY = ("raster", "swizzle")


def _mma(value: str) -> tuple[int, int, int]:
    cta, cluster = value.split("_c")
    cm, cn = (int(v) for v in cluster.split("x"))
    return int(cta[0]), cm, cn


def to_config(params: dict) -> Sm100Config:
    g, cm, cn = _mma(params["mma"])
    return Sm100Config(tile_n=int(params["tile_n"]), tile_k=int(params["tile_k"]), cta_group=g, cluster_m=cm,
                       cluster_n=cn, acc_stages=int(params["acc_stages"]), raster=params["raster"],
                       swizzle=int(params["swizzle"]), epi_n=int(params["epi_n"]),
                       epi_stages=int(params["epi_stages"]))


def to_params(cfg: Sm100Config) -> dict:
    return {"tile_n": cfg.tile_n, "mma": f"{cfg.cta_group}cta_c{cfg.cluster_m}x{cfg.cluster_n}",
            "tile_k": cfg.tile_k, "acc_stages": cfg.acc_stages, "raster": cfg.raster, "swizzle": cfg.swizzle,
            "epi_n": cfg.epi_n, "epi_stages": cfg.epi_stages}


def in_space(cfg: Sm100Config) -> bool:
    return config_space.in_space(cfg, GRID, to_params, to_config)


def parse_overrides(text: str) -> dict:
    """'tile_n=256,mma=2cta_c2x1' -> parameters of the space (each name and value checked)."""
    return config_space.parse_overrides(text, GRID)


def suggest(trial) -> Sm100Config:
    return config_space.suggest(trial, GRID, to_config)


def grid() -> list[dict]:
    return config_space.grid(GRID)


def selfcheck_configs(quick: bool = False) -> list[Sm100Config]:
    """The configs `python -m cute_kernels.selfcheck` runs every epilogue and grouping with: each
    (cta_group, cluster) shape (--quick: one CTA alone and a 2-CTA pair in a 2x2 cluster)."""
    shapes = [(1, 1, 1), (2, 2, 1)] if quick else [(1, 1, 1), (1, 1, 2), (1, 2, 1), (2, 2, 1), (2, 2, 2), (2, 4, 1)]
    return [Sm100Config(tile_n=128, cta_group=g, cluster_m=cm, cluster_n=cn) for g, cm, cn in shapes]
