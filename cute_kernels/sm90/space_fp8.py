"""The Hopper search space of the block-scaled FP8 kernel (Sm90Gemm with sm90/mainloop_fp8.py):
what its config may vary today.  Fixed by the recipe and the mainloop: tile_k 128 (one promotion
per scale block), the cooperative schedule (ping-pong 64-row tiles run when a config names them,
measured slower: not searched); searched: the tile's rows (128, or 256: the split-M mainloop,
256x128 only), tile_n 128 or 256 (256: the split-N mainloop), the cluster (at most 2 CTAs), raster and swizzle, the epilogue sub-tile
width and buffers, and the operand pipeline depth (0: as many as fit).  A point the kernel
cannot run with the problem's epilogue is pruned by `config.block_scaled_errors`.
`autotune.space` samples from it (`block_scaled=True`)."""
from __future__ import annotations

import dataclasses

from ..config import GemmConfig
from .config import FP8_BLOCK, FP8_DEFAULT_CONFIG

GRID = {
    # rows in flight across the two consumer warpgroups: a cooperative tile of that height (256: two
    # 64-row waves per warpgroup, the split-M mainloop), or ping-pong tiles of half of it each.  256 runs
    # when a config names it but is not searched: 0.86x the 128-row tile on the H200 (2026-12-03 19:42,
    # 8192x16384x4096 plain 960 vs 1121 TFLOP/s burst, 905 vs 940 at the power limit), bitwise equal
    "tile_m": [128],
    "tile_n": [FP8_BLOCK, 2 * FP8_BLOCK],
    # cooperative 128-row tiles; ping-pong 64-row ones (one warpgroup per tile, unquantized outputs) run
    # when named but are not searched: 0.73x the cooperative 128x128 tile on the H200 (2026-12-03 19:27,
    # dense 8192x16384x4096 828 vs 1132 TFLOP/s burst; grouped E=8 624 vs 871), bitwise equal
    "schedule": ["cooperative"],
    "cluster": ["1x1", "1x2", "2x1"],
    "raster": ["n", "m"],
    "swizzle": [1, 4, 8],
    "epi_n": [32, 64],
    "epi_stages": [2, 3, 4],
    "ab_stages": [0, 3, 4, 5],
}

# A short fixed list to time instead of sampling (`autotune sweep --candidates N`: the default, then
# the first N of these that the problem's kernel can run, each an override of the default), most
# promising first: the 128x256 split-N tile on a 2x1 cluster beat the default 128x128 1x2 on the
# dense FC1 shape at the power limit (H200, 2026-12-03); then the other clusters of both tile
# widths, the wider epilogue sub-tile, the tile order, the operand pipeline depth.  The
# activation-derivative epilogue (fp8_dgrad_dact) runs 128-wide tiles only: it skips the 256 ones;
# the 256-row tiles run plain outputs only.  Every entry differs from the default; the first 12 run
# FC1 + activation and the plain GEMM, dense and grouped, and at least 8 run the dgrad
# (tests/test_autotune_fp8.py checks them against `config.block_scaled_errors`).
CANDIDATES = [
    {"tile_n": 2 * FP8_BLOCK, "cluster": "2x1"},
    {"cluster": "2x1"},
    {"tile_n": 2 * FP8_BLOCK, "cluster": "1x2"},
    {"cluster": "1x1"},
    {"tile_n": 2 * FP8_BLOCK, "cluster": "1x1"},
    {"epi_n": 64},
    {"cluster": "2x1", "epi_n": 64},
    {"raster": "m"},
    {"swizzle": 4},
    {"ab_stages": 4},
    {"epi_stages": 3},
    {"tile_n": 2 * FP8_BLOCK, "cluster": "2x1", "raster": "m"},
    # the 256x128 two-wave tile (plain outputs only: FC2 / FC1 dgrad), last until the H200 has run it
    {"tile_m": 256},
    {"tile_m": 256, "cluster": "2x1"},
]

# knobs that change no resource of the compiled kernel (autotune compile-only compiles one per class)
RUNTIME_ONLY = ("raster", "swizzle")


def selfcheck_configs(quick: bool = False) -> list[GemmConfig]:
    """The configs `python -m cute_kernels.selfcheck` runs the FP8 kernels with: the default
    (128x128, 1x2 cluster) and the split-N 128x256 tile on a 2x1 cluster (--quick: the first)."""
    cfgs = [FP8_DEFAULT_CONFIG, dataclasses.replace(FP8_DEFAULT_CONFIG, tile_n=2 * FP8_BLOCK, cluster_m=2, cluster_n=1)]
    return cfgs[:1] if quick else cfgs


def to_config(params: dict) -> GemmConfig:
    cm, cn = (int(v) for v in params["cluster"].split("x"))
    schedule = params.get("schedule", "cooperative")
    rows = int(params.get("tile_m", 128))
    return GemmConfig(tile_m=rows // 2 if schedule == "pingpong" else rows, tile_n=int(params["tile_n"]), tile_k=FP8_BLOCK,
                      cluster_m=cm, cluster_n=cn, schedule=schedule, raster=params["raster"], swizzle=int(params["swizzle"]),
                      epi_n=int(params["epi_n"]), epi_stages=int(params["epi_stages"]),
                      ab_stages=int(params["ab_stages"]))


def to_params(cfg: GemmConfig) -> dict:
    """The parameters of `cfg` (`to_config` of them gives `cfg` back only for configs of this space)."""
    rows = 2 * cfg.tile_m if cfg.schedule == "pingpong" else cfg.tile_m
    return {"tile_m": rows, "tile_n": cfg.tile_n, "schedule": cfg.schedule, "cluster": f"{cfg.cluster_m}x{cfg.cluster_n}", "raster": cfg.raster,
            "swizzle": cfg.swizzle, "epi_n": cfg.epi_n, "epi_stages": cfg.epi_stages, "ab_stages": cfg.ab_stages}
