"""The search space of the GEMM config for Optuna, per arch.

Each arch owns its grid and the mapping between parameters and `GemmConfig`
(`cute_kernels/<arch>/space.py`, found through `cute_kernels.archs`); this module samples
from it.  TPE samples from the grid's value lists and `--grid` times their full product.
"""
from __future__ import annotations

import itertools

from cute_kernels.archs import arch_space
from cute_kernels.config import GemmConfig


def grid_values(arch: str = "sm90") -> dict:
    """Parameter name -> the values searched on `arch`."""
    return arch_space(arch).GRID


def to_config(params: dict, arch: str = "sm90") -> GemmConfig:
    return arch_space(arch).to_config(params)


def to_params(cfg: GemmConfig, arch: str = "sm90") -> dict:
    return arch_space(arch).to_params(cfg)


def parse_overrides(text: str, arch: str = "sm90") -> dict:
    """'tile_n=256,cluster=2x1' -> parameters of the space (each name and value checked)."""
    values = grid_values(arch)
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


def in_space(cfg: GemmConfig, arch: str = "sm90") -> bool:
    values = grid_values(arch)
    p = to_params(cfg, arch)
    return all(p[k] in values[k] for k in values) and to_config(p, arch) == cfg


def suggest(trial, arch: str = "sm90") -> GemmConfig:
    return to_config({name: trial.suggest_categorical(name, v) for name, v in grid_values(arch).items()}, arch)


def grid(arch: str = "sm90") -> list[dict]:
    values = grid_values(arch)
    names = list(values)
    return [dict(zip(names, vals)) for vals in itertools.product(*(values[n] for n in names))]
