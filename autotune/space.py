"""The search space of the GEMM config for Optuna, per arch and precision.

Each arch owns its grid and the mapping between parameters and `GemmConfig`
(`cute_kernels/<arch>/space.py`, found through `cute_kernels.archs`); an arch with
block-scaled FP8 kernels names their space in its `BLOCK_SCALED_SPACE` (sm90:
`cute_kernels/sm90/space_fp8.py`), taken with `block_scaled=True` (a problem's
`Problem.space_kw`).  This module samples from it.  TPE samples from the grid's value lists
and `--grid` times their full product.
"""
from __future__ import annotations

from cute_kernels.archs import arch_space
from cute_kernels.config import GemmConfig
from cute_kernels.gemm_base import config_space


def space_module(arch: str = "sm90", block_scaled: bool = False):
    """The space module (GRID, to_config, to_params) of `arch`'s bf16 or block-scaled FP8 kernels."""
    return arch_space(arch, block_scaled=block_scaled)


def grid_values(arch: str = "sm90", *, block_scaled: bool = False) -> dict:
    """Parameter name -> the values searched on `arch`."""
    return space_module(arch, block_scaled).GRID


def to_config(params: dict, arch: str = "sm90", *, block_scaled: bool = False) -> GemmConfig:
    return space_module(arch, block_scaled).to_config(params)


def to_params(cfg: GemmConfig, arch: str = "sm90", *, block_scaled: bool = False) -> dict:
    return space_module(arch, block_scaled).to_params(cfg)


def parse_overrides(text: str, arch: str = "sm90", *, block_scaled: bool = False) -> dict:
    """'tile_n=256,cluster=2x1' -> parameters of the space (each name and value checked)."""
    return config_space.parse_overrides(text, grid_values(arch, block_scaled=block_scaled))


def in_space(cfg: GemmConfig, arch: str = "sm90", *, block_scaled: bool = False) -> bool:
    space = space_module(arch, block_scaled)
    return config_space.in_space(cfg, space.GRID, space.to_params, space.to_config)


def suggest(trial, arch: str = "sm90", *, block_scaled: bool = False) -> GemmConfig:
    space = space_module(arch, block_scaled)
    return config_space.suggest(trial, space.GRID, space.to_config)


def grid(arch: str = "sm90", *, block_scaled: bool = False) -> list[dict]:
    return config_space.grid(grid_values(arch, block_scaled=block_scaled))
