"""The search space of the GEMM config for Optuna, per arch and precision.

Each arch owns its grid and the mapping between parameters and `GemmConfig`
(`cute_kernels/<arch>/space.py`, found through `cute_kernels.archs`); an arch with
block-scaled FP8 kernels names their space in its `BLOCK_SCALED_SPACE` (sm90:
`cute_kernels/sm90/space_fp8.py`), taken with `block_scaled=True` (a problem's
`Problem.space_kw`).  This module samples from it.  TPE samples from the grid's value lists
and `--grid` times their full product.
"""
from __future__ import annotations

import itertools

from cute_kernels.archs import arch_space
from cute_kernels.config import GemmConfig


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
    values = grid_values(arch, block_scaled=block_scaled)
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = item.partition("=")
        if name not in values:
            raise ValueError(f"unknown parameter {name!r} in {text!r}; known: {sorted(values)}")
        choices = values[name]
        typed = type(choices[0])(value)
        if typed not in choices:
            raise ValueError(f"{name}={value} is not in the space {choices}")
        out[name] = typed
    return out


def in_space(cfg: GemmConfig, arch: str = "sm90", *, block_scaled: bool = False) -> bool:
    values = grid_values(arch, block_scaled=block_scaled)
    p = to_params(cfg, arch, block_scaled=block_scaled)
    return all(p[k] in values[k] for k in values) and to_config(p, arch, block_scaled=block_scaled) == cfg


def suggest(trial, arch: str = "sm90", *, block_scaled: bool = False) -> GemmConfig:
    values = grid_values(arch, block_scaled=block_scaled)
    return to_config({name: trial.suggest_categorical(name, v) for name, v in values.items()}, arch,
                     block_scaled=block_scaled)


def grid(arch: str = "sm90", *, block_scaled: bool = False) -> list[dict]:
    values = grid_values(arch, block_scaled=block_scaled)
    names = list(values)
    return [dict(zip(names, vals)) for vals in itertools.product(*(values[n] for n in names))]
