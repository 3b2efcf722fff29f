"""What every arch's config search space does with its grid, written once.

An arch's space module (`cute_kernels/<arch>/space.py`, found through `cute_kernels.archs`) is a
`GRID` (parameter -> the values searched) and the mapping between a parameter set and the arch's
config type (`to_config`, `to_params`).  The operations below act on those three: the
autotuner (`autotune.space`) and an arch's own space module call them.  Plain Python.
"""
from __future__ import annotations

import itertools
from typing import Callable


def parse_overrides(text: str, values: dict) -> dict:
    """'tile_n=256,cluster=2x1' -> parameters of the space `values` (each name and value checked;
    ValueError naming the parameter otherwise)."""
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


def in_space(cfg, values: dict, to_params: Callable, to_config: Callable) -> bool:
    """Whether `cfg` is a point of the space: each of its parameters among the searched values,
    and the parameters map back to `cfg` itself (no field the space does not set)."""
    p = to_params(cfg)
    return all(p[k] in values[k] for k in values) and to_config(p) == cfg


def suggest(trial, values: dict, to_config: Callable):
    """The config of the parameters an Optuna `trial` picks from the space."""
    return to_config({name: trial.suggest_categorical(name, v) for name, v in values.items()})


def grid(values: dict) -> list[dict]:
    """Every parameter set of the space (the full product of its value lists)."""
    names = list(values)
    return [dict(zip(names, vals)) for vals in itertools.product(*(values[n] for n in names))]
