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

Unless $CUTE_KERNELS_WAVE_LOOKUP=0 (read like the directory; on by default since the H200 run of
benchmarks/bench_untuned_m.py on 2026-12-03: better or equal at 15 of 16 untuned (M, timing-mode)
cells, up to 0.77x -> 0.93x of cuBLAS, one cell 0.847x -> 0.825x) a shape without an exact entry
takes instead of the nearest M's the
cheapest, by `wave_model`, of: the tuned entries whose token count (M; weight_grad: K) lies in
this bucket or an adjacent one, the heuristic default, and the default's variants the arch
lists (`resolve_wave`; docs/config-rules.md, "Wave-aware lookup").
"""
from __future__ import annotations

import functools
import logging
import math
import os

from . import wave_model
from .archs import arch_config
from .config import GemmConfig
from .registry import get_kernel, kernel_default_config
from .tuned_store import ShapeKey, TunedConfigError, file_path, parse_entry, read_file

log = logging.getLogger("cute_kernels.config")
TUNED_ROOT_ENV = "CUTE_KERNELS_TUNED_CONFIGS"
WAVE_LOOKUP_ENV = "CUTE_KERNELS_WAVE_LOOKUP"
_on_clear: list = []
_root_cache: list = []  # [value of $CUTE_KERNELS_TUNED_CONFIGS] once read
_wave_cache: list = []  # [whether the wave-aware lookup is on: $CUTE_KERNELS_WAVE_LOOKUP not "0"] once read


def tuned_root() -> str | None:
    """The tuned-configs directory override, from the environment (read once: reading
    os.environ costs microseconds on every launch; clear_cache() reads it again)."""
    if not _root_cache:
        _root_cache.append(os.environ.get(TUNED_ROOT_ENV))
    return _root_cache[0]


def wave_lookup_enabled() -> bool:
    """Whether the wave-aware lookup is on: unless $CUTE_KERNELS_WAVE_LOOKUP is "0" (read once;
    clear_cache() reads it again)."""
    if not _wave_cache:
        _wave_cache.append(os.environ.get(WAVE_LOOKUP_ENV, "1").strip() != "0")
    return _wave_cache[0]


def m_bucket(m: int) -> int:
    """log2 of the power-of-two bucket holding m (1 -> 0, 2 -> 1, 3..4 -> 2, 5..8 -> 3, ...)."""
    return max(0, math.ceil(math.log2(max(m, 1))))


# what the lookup logs when it skips a file or an entry (`python -m autotune show` says the same)
FILE_SKIPPED = "ignoring tuned configs, falling back to the defaults"
ENTRY_SKIPPED = "ignoring tuned config"


@functools.lru_cache(maxsize=64)
def tuned_records(arch: str, kernel: str, root: str | None = None) -> tuple:
    """((ShapeKey, config, measured speedup over the default), ...) of one YAML file; bad entries
    skipped with a warning (a missing or unusable speedup, an informational field, reads 1.0)."""
    path = file_path(arch, kernel, root)
    out = []
    try:
        raw = read_file(path, allow_empty=False)
    except TunedConfigError as e:
        log.warning("%s: %s", FILE_SKIPPED, e)
        return ()
    for key, record in raw.items():
        try:
            sk, cfg = parse_entry(path, key, record, kernel=kernel)
        except TunedConfigError as e:
            log.warning("%s: %s", ENTRY_SKIPPED, e)
            continue
        except Exception as e:  # a file must never fail a launch: whatever parse_entry missed
            log.warning("%s: %s: entry %r: %s: %s", ENTRY_SKIPPED, path, key, type(e).__name__, e)
            continue
        out.append((sk, cfg, _speedup(record.get("speedup"))))
    return tuple(out)


def _speedup(value) -> float:
    """A record's measured speedup over the default, clamped to 0.5..2 (1.0 when absent or not a number)."""
    if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
        return 1.0
    return min(2.0, max(0.5, float(value)))


@functools.lru_cache(maxsize=64)
def tuned_entries(arch: str, kernel: str, root: str | None = None) -> dict:
    """(dtype, n, k, experts) -> sorted [(m, config)] from one YAML file; bad entries skipped with a warning."""
    table: dict = {}
    for sk, cfg, _ in tuned_records(arch, kernel, root):
        table.setdefault((sk.dtype, sk.n, sk.k, sk.experts), []).append((sk.m, cfg))
    for v in table.values():
        v.sort(key=lambda t: t[0])
    return table


def resolve(kernel: str, *, arch: str, dtype: str, m: int, n: int, k: int, num_experts: int = 0,
            num_outputs: int = 1, grouped: bool = False, root: str | None = None,
            wave: bool = False) -> tuple[GemmConfig, str]:
    """(config, source) where source is "tuned", "tuned-nearest m=<M>" or "default"; with `wave`,
    `resolve_wave`'s choice when no entry matches exactly."""
    experts = num_experts if grouped else 0
    # the efficiency priors are bf16 measurements: the block-scaled FP8 kernels keep the nearest-M rule
    if wave and not get_kernel(kernel).block_scaled and hasattr(arch_config(arch), "wave_default_candidates"):
        return resolve_wave(kernel, arch=arch, dtype=dtype, m=m, n=n, k=k, experts=experts, root=root)
    cands = tuned_entries(arch, kernel, root).get((dtype, n, k, experts), [])
    for tm, cfg in cands:
        if tm == m:
            return cfg, "tuned"
    b = m_bucket(m)
    near = [(abs(math.log2(tm) - math.log2(max(m, 1))), tm, cfg) for tm, cfg in cands if abs(m_bucket(tm) - b) <= 1]
    if near:
        _, tm, cfg = min(near, key=lambda t: (t[0], t[1]))
        return cfg, f"tuned-nearest m={tm}"
    return kernel_default_config(kernel, m, n, k, experts, arch=arch), "default"


def wave_candidates(kernel: str, *, arch: str, dtype: str, m: int, n: int, k: int, experts: int = 0,
                    root: str | None = None) -> list[tuple[GemmConfig, str, float]]:
    """[(config, source, estimated cost)] the wave-aware lookup weighs, in order of preference:
    the exact tuned entry alone if there is one; else the tuned entries of this token bucket and
    the adjacent ones (nearest first), the heuristic default, the default's variants.

    The token count is M (weight_grad: K, the tokens it sums over); the other dimensions, the
    dtype and the experts must match.  A tuned entry's tile speed is calibrated at its own token
    count: there it costs the heuristic default's estimate divided by its measured speedup, and
    no more than any of the default's variants (the sweep had those in its space and beat them;
    their costs are priors, the default's is measured)."""
    spec = get_kernel(kernel)
    rules = arch_config(arch)
    sms = rules.SM_COUNT
    tokens_axis = "k" if spec.grouping == "k" else "m"
    shape = {"m": m, "n": n, "k": k}
    tokens = shape[tokens_axis]
    fixed = {d: v for d, v in shape.items() if d != tokens_axis}

    def raw(cfg, **at):
        s = dict(shape, **at)
        return wave_model.estimated_cost(cfg, s["m"], s["n"], s["k"], sms=sms, experts=experts, grouping=spec.grouping)

    def defaults(at: dict) -> list[tuple[GemmConfig, float]]:
        s = dict(shape, **at)
        base = kernel_default_config(kernel, s["m"], s["n"], s["k"], experts, arch=arch)
        return [(c, raw(c, **at) / rules.tile_efficiency(c)) for c in rules.wave_default_candidates(base)
                if c == base or not spec.config_errors(c, experts, arch=arch)]

    same = [(sk, cfg, speedup) for sk, cfg, speedup in tuned_records(arch, kernel, root)
            if sk.dtype == dtype and sk.experts == experts and all(getattr(sk, d) == v for d, v in fixed.items())]
    for sk, cfg, _ in same:
        if getattr(sk, tokens_axis) == tokens:
            return [(cfg, "tuned", raw(cfg))]
    b = m_bucket(tokens)
    near = sorted((abs(math.log2(getattr(sk, tokens_axis)) - math.log2(max(tokens, 1))), getattr(sk, tokens_axis),
                   cfg, speedup) for sk, cfg, speedup in same if abs(m_bucket(getattr(sk, tokens_axis)) - b) <= 1)
    out = []
    for _, t, cfg, speedup in near:
        at = {tokens_axis: t}
        there = defaults(at)
        calibrated = min([there[0][1] / speedup] + [c for _, c in there[1:]])
        out.append((cfg, f"wave tuned {tokens_axis}={t}", raw(cfg) * calibrated / raw(cfg, **at)))
    here = defaults({})
    out.append((here[0][0], "wave default", here[0][1]))
    out += [(c, f"wave default {c.tile_m}x{c.tile_n} c{c.cluster_m}x{c.cluster_n}", cost) for c, cost in here[1:]]
    return out


def resolve_wave(kernel: str, *, arch: str, dtype: str, m: int, n: int, k: int, experts: int = 0,
                 root: str | None = None) -> tuple[GemmConfig, str]:
    """(config, source): the cheapest of `wave_candidates` by the wave model (`wave_model.cheapest`:
    a later candidate must be more than 1 % cheaper to win)."""
    cands = wave_candidates(kernel, arch=arch, dtype=dtype, m=m, n=n, k=k, experts=experts, root=root)
    cfg, source, _ = cands[wave_model.cheapest([c for _, _, c in cands])]
    return cfg, source


@functools.lru_cache(maxsize=4096)
def _cached(kernel, arch, dtype, m, n, k, num_experts, num_outputs, grouped, root, wave=False):
    cfg, source = resolve(kernel, arch=arch, dtype=dtype, m=m, n=n, k=k, num_experts=num_experts,
                          num_outputs=num_outputs, grouped=grouped, root=root, wave=wave)
    log.debug("%s %s %s m=%d n=%d k=%d e=%d: %s config %s", kernel, arch, dtype, m, n, k, num_experts, source, cfg)
    return cfg


def lookup_config(kernel: str, *, arch: str, dtype, m: int, n: int, k: int, num_experts: int = 1,
                  num_outputs: int = 1, grouped: bool = False) -> GemmConfig:
    dtype_name = str(dtype).replace("torch.", "")
    root = tuned_root()
    return _cached(kernel, arch, dtype_name, m, n, k, num_experts if grouped else 0, num_outputs, grouped, root,
                   wave_lookup_enabled())


def on_clear(fn):
    """Register `fn` to run on clear_cache (caches built on top of the lookup)."""
    _on_clear.append(fn)


def clear_cache():
    _root_cache.clear()
    _wave_cache.clear()
    tuned_records.cache_clear()
    tuned_entries.cache_clear()
    _cached.cache_clear()
    for fn in _on_clear:
        fn()
