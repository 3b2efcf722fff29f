"""Which config a launch uses when the caller gives none.

Order: (1) the tuned entry for exactly this (kernel, arch, dtype, M, N, K, E; for
weight_grad M, N are the gradient's shape and K the token count);
(2) else the tuned entry with the same dtype, N, K and E whose M is nearest, when its
M lies in the same power-of-two bucket as this M or an adjacent one (token counts
vary every step; N, K and E must match exactly); (3) else the kernel's default
(`registry.kernel_default_config`).
Results are cached per shape, so the hot path is one dict lookup.  A corrupt or
invalid YAML entry is logged (file and entry named) and skipped, so a bad file falls
back to the default instead of failing a training run.  Logger "cute_kernels.config"
at DEBUG says which source each new shape used.  $CUTE_KERNELS_TUNED_CONFIGS (another
tuned-configs directory) is read on first use and again after `clear_cache()`.
"""
from __future__ import annotations

import functools
import logging
import math
import os

from .config import GemmConfig
from .registry import kernel_default_config
from .tuned_store import ShapeKey, TunedConfigError, file_path, parse_entry, read_file

log = logging.getLogger("cute_kernels.config")
TUNED_ROOT_ENV = "CUTE_KERNELS_TUNED_CONFIGS"
_on_clear: list = []
_root_cache: list = []  # [value of $CUTE_KERNELS_TUNED_CONFIGS] once read


def tuned_root() -> str | None:
    """The tuned-configs directory override, from the environment (read once: reading
    os.environ costs microseconds on every launch; clear_cache() reads it again)."""
    if not _root_cache:
        _root_cache.append(os.environ.get(TUNED_ROOT_ENV))
    return _root_cache[0]


def m_bucket(m: int) -> int:
    """log2 of the power-of-two bucket holding m (1 -> 0, 2 -> 1, 3..4 -> 2, 5..8 -> 3, ...)."""
    return max(0, math.ceil(math.log2(max(m, 1))))


# what the lookup logs when it skips a file or an entry (`python -m autotune show` says the same)
FILE_SKIPPED = "ignoring tuned configs, falling back to the defaults"
ENTRY_SKIPPED = "ignoring tuned config"


@functools.lru_cache(maxsize=64)
def tuned_entries(arch: str, kernel: str, root: str | None = None) -> dict:
    """(dtype, n, k, experts) -> sorted [(m, config)] from one YAML file; bad entries skipped with a warning."""
    path = file_path(arch, kernel, root)
    table: dict = {}
    try:
        raw = read_file(path, allow_empty=False)
    except TunedConfigError as e:
        log.warning("%s: %s", FILE_SKIPPED, e)
        return table
    for key, record in raw.items():
        try:
            sk, cfg = parse_entry(path, key, record, kernel=kernel)
        except TunedConfigError as e:
            log.warning("%s: %s", ENTRY_SKIPPED, e)
            continue
        except Exception as e:  # a file must never fail a launch: whatever parse_entry missed
            log.warning("%s: %s: entry %r: %s: %s", ENTRY_SKIPPED, path, key, type(e).__name__, e)
            continue
        table.setdefault((sk.dtype, sk.n, sk.k, sk.experts), []).append((sk.m, cfg))
    for v in table.values():
        v.sort(key=lambda t: t[0])
    return table


def resolve(kernel: str, *, arch: str, dtype: str, m: int, n: int, k: int, num_experts: int = 0,
            num_outputs: int = 1, grouped: bool = False, root: str | None = None) -> tuple[GemmConfig, str]:
    """(config, source) where source is "tuned", "tuned-nearest m=<M>" or "default"."""
    experts = num_experts if grouped else 0
    cands = tuned_entries(arch, kernel, root).get((dtype, n, k, experts), [])
    for tm, cfg in cands:
        if tm == m:
            return cfg, "tuned"
    b = m_bucket(m)
    near = [(abs(math.log2(tm) - math.log2(max(m, 1))), tm, cfg) for tm, cfg in cands if abs(m_bucket(tm) - b) <= 1]
    if near:
        _, tm, cfg = min(near, key=lambda t: (t[0], t[1]))
        return cfg, f"tuned-nearest m={tm}"
    return kernel_default_config(kernel, m, n, k, num_experts if grouped else 0, arch=arch), "default"


@functools.lru_cache(maxsize=4096)
def _cached(kernel, arch, dtype, m, n, k, num_experts, num_outputs, grouped, root):
    cfg, source = resolve(kernel, arch=arch, dtype=dtype, m=m, n=n, k=k, num_experts=num_experts,
                          num_outputs=num_outputs, grouped=grouped, root=root)
    log.debug("%s %s %s m=%d n=%d k=%d e=%d: %s config %s", kernel, arch, dtype, m, n, k, num_experts, source, cfg)
    return cfg


def lookup_config(kernel: str, *, arch: str, dtype, m: int, n: int, k: int, num_experts: int = 1,
                  num_outputs: int = 1, grouped: bool = False) -> GemmConfig:
    dtype_name = str(dtype).replace("torch.", "")
    root = tuned_root()
    return _cached(kernel, arch, dtype_name, m, n, k, num_experts if grouped else 0, num_outputs, grouped, root)


def on_clear(fn):
    """Register `fn` to run on clear_cache (caches built on top of the lookup)."""
    _on_clear.append(fn)


def clear_cache():
    _root_cache.clear()
    tuned_entries.cache_clear()
    _cached.cache_clear()
    for fn in _on_clear:
        fn()
