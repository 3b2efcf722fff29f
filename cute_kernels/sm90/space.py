"""The Hopper search space of the GEMM config: the values of each searched parameter and
the mapping between a parameter set and a `GemmConfig`.  `tile_m` follows from the
schedule value (cooperative 128; "pingpong" 64-row and "pingpong128" 128-row ping-pong
tiles), so it is not searched on its own.  Dense and grouped problems search one space (a
grouped 2x1 cluster keeps both CTAs on one expert).  `autotune.space` samples from it."""
from __future__ import annotations

from ..config import GemmConfig

GRID = {
    "tile_n": [128, 192, 256],
    "cluster": ["1x1", "1x2", "2x1"],
    "schedule": ["cooperative", "pingpong", "pingpong128"],
    "raster": ["n", "m"],
    "swizzle": [1, 4, 8],
    "epi_n": [32, 64],
    "epi_stages": [2, 3, 4],
}

# schedule value -> (GemmConfig.schedule, tile_m)
SCHEDULE_VALUES = {"cooperative": ("cooperative", 128), "pingpong": ("pingpong", 64), "pingpong128": ("pingpong", 128)}


def to_config(params: dict) -> GemmConfig:
    cm, cn = (int(v) for v in params["cluster"].split("x"))
    schedule, tile_m = SCHEDULE_VALUES[params["schedule"]]
    return GemmConfig(tile_m=tile_m, tile_n=int(params["tile_n"]), cluster_m=cm, cluster_n=cn, schedule=schedule,
                      raster=params["raster"], swizzle=int(params["swizzle"]), epi_n=int(params["epi_n"]),
                      epi_stages=int(params["epi_stages"]))


def to_params(cfg: GemmConfig) -> dict:
    """The parameters of `cfg` (for enqueuing the default config as the first trial)."""
    return {
        "tile_n": cfg.tile_n,
        "cluster": f"{cfg.cluster_m}x{cfg.cluster_n}",
        "schedule": next((v for v, st in SCHEDULE_VALUES.items() if st == (cfg.schedule, cfg.tile_m)), cfg.schedule),
        "raster": cfg.raster,
        "swizzle": cfg.swizzle,
        "epi_n": cfg.epi_n,
        "epi_stages": cfg.epi_stages,
    }


def selfcheck_configs(quick: bool = False) -> list[GemmConfig]:
    """The configs `python -m cute_kernels.selfcheck` runs every epilogue and grouping with: a
    cooperative 2-CTA cluster and a 64-row ping-pong one (--quick: the first)."""
    cfgs = [GemmConfig(tile_n=128, cluster_m=1, cluster_n=2),
            GemmConfig(tile_m=64, tile_n=128, schedule="pingpong", cluster_m=2, cluster_n=1)]
    return cfgs[:1] if quick else cfgs


# The block-scaled FP8 kernel's own space (autotune.space with block_scaled=True)
BLOCK_SCALED_SPACE = "cute_kernels.sm90.space_fp8"
