"""Which config a launch uses when the caller gives none.

For now: the heuristic `default_config`.  The tuned-config store (tuned_configs/) plugs
in here, so the ops never change when it lands.
"""
from __future__ import annotations

import functools

from .config import GemmConfig, default_config


@functools.lru_cache(maxsize=4096)
def _cached(kernel: str, arch: str, dtype: str, m: int, n: int, k: int, num_experts: int, num_outputs: int, grouped: bool) -> GemmConfig:
    return default_config(m, n, k, grouped=grouped, num_experts=num_experts, num_outputs=num_outputs)


def lookup_config(kernel: str, *, arch: str, dtype, m: int, n: int, k: int, num_experts: int = 1,
                  num_outputs: int = 1, grouped: bool = False) -> GemmConfig:
    return _cached(kernel, arch, str(dtype), m, n, k, num_experts, num_outputs, grouped)
