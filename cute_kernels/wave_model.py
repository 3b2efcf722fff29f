"""Wave-quantization cost model of a persistent GEMM launch: pure functions, no GPU.

A launch runs G = sms // cluster_size persistent clusters (every cluster keeps
cluster_size SMs busy for its whole life).  The work is W cluster tiles (cluster_m x
cluster_n CTA tiles, `gemm_base.tile_walk`); cluster c takes work c, c + G, c + 2G, ...,
so the kernel runs ceil(W / G) *waves* and its time is that many tile times: a last wave
holding one cluster tile costs as much as a full one.  One CTA tile costs its area times
the K it reduces, divided by how efficiently that tile shape runs (`efficiency`: 1 for the
best shape; the arch's config module holds the measured priors, docs/config-rules.md).

    estimated_cost = ceil(W / G) * tile_m * tile_n * k_per_tile / efficiency

Grouped along M (MoE), each expert's M tiles are rounded up to whole clusters (cluster_m)
and the tiles of all experts form one walk; the lookup does not know the routing, so the
model splits M evenly over the experts (the total is what the walk sees; the split moves
at most one rounded-up tile per expert).  Grouped along K (the weight gradient), every
expert has the full (M, N) tile grid and reduces its own share of K.
The unit is arbitrary (tile area x K per SM): only ratios between configs of one problem mean
anything.
"""
from __future__ import annotations


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def m_tiles(m: int, tile_m: int, cluster_m: int = 1, experts: int = 0) -> int:
    """M tiles of a launch: ceil(m / tile_m) dense; grouped along M over `experts` (M split
    evenly), each expert's tiles rounded up to a multiple of `cluster_m`."""
    if not experts:
        return _ceil_div(m, tile_m)
    base, rem = divmod(m, experts)

    def per_expert(rows: int) -> int:
        return _ceil_div(_ceil_div(rows, tile_m), cluster_m) * cluster_m

    return rem * per_expert(base + 1) + (experts - rem) * per_expert(base)


def work_units(cfg, m: int, n: int, experts: int = 0, grouping: str = "m") -> int:
    """Cluster tiles a launch walks (`grouping`: "m" rows grouped by expert, "k" the reduction)."""
    grouped_m = experts if grouping == "m" else 0
    clusters_m = _ceil_div(m_tiles(m, cfg.tile_m, cfg.cluster_m, grouped_m), cfg.cluster_m)
    clusters_n = _ceil_div(_ceil_div(n, cfg.tile_n), cfg.cluster_n)
    per_expert = clusters_m * clusters_n
    return per_expert * experts if grouping == "k" and experts else per_expert


def resident_clusters(cfg, sms: int) -> int:
    """Persistent clusters that fit at once (at least one)."""
    return max(1, sms // (cfg.cluster_m * cfg.cluster_n))


def waves(cfg, m: int, n: int, *, sms: int, experts: int = 0, grouping: str = "m") -> int:
    """ceil(work units / resident clusters): tile times the busiest SM spends."""
    return _ceil_div(work_units(cfg, m, n, experts, grouping), resident_clusters(cfg, sms))


def wave_fill(cfg, m: int, n: int, *, sms: int, experts: int = 0, grouping: str = "m") -> float:
    """Fraction of the launched waves' cluster slots that hold work (1.0: no quantization loss)."""
    w = work_units(cfg, m, n, experts, grouping)
    g = resident_clusters(cfg, sms)
    return w / (_ceil_div(w, g) * g)


def estimated_cost(cfg, m: int, n: int, k: int, *, sms: int, experts: int = 0, grouping: str = "m",
                   efficiency: float = 1.0) -> float:
    """waves x one tile's time (area x K per tile / efficiency), in tile-area x K units."""
    if not efficiency > 0:
        raise ValueError(f"efficiency must be positive, got {efficiency}")
    k_per_tile = k / experts if grouping == "k" and experts else k
    return (waves(cfg, m, n, sms=sms, experts=experts, grouping=grouping) * cfg.tile_m * cfg.tile_n
            * k_per_tile / efficiency)


def cheapest(costs: list[float], *, margin: float = 0.01) -> int:
    """Index of the cheapest of `costs`, listed in order of preference: a later one replaces the
    best so far only when it is cheaper by more than `margin` (a model this coarse should not
    overturn a preferred candidate over a 1 % difference)."""
    if not costs:
        raise ValueError("no candidates")
    best = 0
    for i, c in enumerate(costs[1:], 1):
        if c < costs[best] * (1.0 - margin):
            best = i
    return best
