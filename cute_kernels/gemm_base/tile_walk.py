"""The persistent walk over cluster tiles, shared by every warp role of every arch's GEMM.

Work unit: a cluster tile (cluster_m x cluster_n CTA tiles).  Cluster `c` of `G`
launched clusters takes work indices c, c + G, c + 2G, ... (a role that alternates tiles
between two warpgroups starts at c + w G and steps by 2 G).  A work index maps to cluster
coordinates by the banded raster of `cute_kernels.tile_scheduler`; grouped along M, M
tiles are numbered across experts (`cu_tiles`); grouped along K, work is expert-major
(every tile of expert 0, then of expert 1, ...).
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Int32, const_expr

from ..tile_scheduler import banded_coord_device, expert_of_tile
from .grouping import m_tiles_upper_bound
from .traced import TracedRecord


def launch_geometry(cfg, mA, mB, mCuRows, *, grouped: bool, grouped_k: bool, max_clusters):
    """Host-side (traced in `__call__`): (num_m_tiles, num_n_tiles, num_experts, clusters to
    launch).  Grouped along M the M tile count is an upper bound (the kernel reads the
    exact one from cu_tiles); the launch is at most `max_clusters` persistent clusters."""
    m_total = cute.size(mA, mode=[0])
    n_total = cute.size(mB, mode=[0])
    num_m_tiles = (m_total + cfg.tile_m - 1) // cfg.tile_m
    num_n_tiles = (n_total + cfg.tile_n - 1) // cfg.tile_n
    num_experts = Int32(1)
    if const_expr(grouped):
        num_experts = cute.size(mCuRows, mode=[0]) - 1
        num_m_tiles = m_tiles_upper_bound(num_m_tiles, num_experts, cfg.cluster_m)
    if const_expr(grouped_k):
        num_experts = cute.size(mCuRows, mode=[0]) - 1
    clusters_m = (num_m_tiles + cfg.cluster_m - 1) // cfg.cluster_m
    clusters_n = (num_n_tiles + cfg.cluster_n - 1) // cfg.cluster_n
    num_clusters = cutlass.min(clusters_m * clusters_n * (num_experts if const_expr(grouped_k) else 1), max_clusters)
    return num_m_tiles, num_n_tiles, num_experts, num_clusters


class TileWalk(TracedRecord):
    """Device-side (a trace-time object inside the kernel): the work count and the tile of
    each work index for this launch's problem."""

    _traced = ("m_total", "num_n_tiles", "num_experts", "mCuRows", "mCuTiles", "num_m_clusters", "num_work")

    def __init__(self, cfg, *, grouped: bool, grouped_k: bool, m_total, num_m_tiles, num_n_tiles, num_experts,
                 mCuRows, mCuTiles):
        self.cfg = cfg
        self.grouped, self.grouped_k = grouped, grouped_k
        self.m_total, self.num_n_tiles, self.num_experts = m_total, num_n_tiles, num_experts
        self.mCuRows, self.mCuTiles = mCuRows, mCuTiles
        total_m_tiles = num_m_tiles
        if const_expr(grouped):
            total_m_tiles = mCuTiles[num_experts]
        self.num_m_clusters = (total_m_tiles + cfg.cluster_m - 1) // cfg.cluster_m
        num_work = self.num_m_clusters * ((num_n_tiles + cfg.cluster_n - 1) // cfg.cluster_n)
        if const_expr(grouped_k):
            num_work = num_work * num_experts
        self.num_work = num_work

    def _clusters_n(self):
        return (self.num_n_tiles + self.cfg.cluster_n - 1) // self.cfg.cluster_n

    def expert_of(self, t):
        """Grouped along K: the expert of cluster work index t (work is expert-major)."""
        return t // (self.num_m_clusters * self._clusters_n())

    def coords(self, t, cluster_coord):
        """Cluster work index -> (row_start, row_end, n_tile, expert) of this CTA's tile."""
        cfg = self.cfg
        clusters_n = self._clusters_n()
        if const_expr(self.grouped_k):
            per_expert = self.num_m_clusters * clusters_n
            e = self.expert_of(t)
            cm, cn = banded_coord_device(t - e * per_expert, self.num_m_clusters, clusters_n, cfg.swizzle,
                                         cfg.raster == "n")
            m_tile = cm * cfg.cluster_m + cluster_coord[0]
            n_tile = cn * cfg.cluster_n + cluster_coord[1]
            return m_tile * cfg.tile_m, self.m_total, n_tile, e
        cm, cn = banded_coord_device(t, self.num_m_clusters, clusters_n, cfg.swizzle, cfg.raster == "n")
        m_tile = cm * cfg.cluster_m + cluster_coord[0]
        n_tile = cn * cfg.cluster_n + cluster_coord[1]
        if const_expr(self.grouped):
            e = expert_of_tile(self.mCuTiles, m_tile, self.num_experts)
            row_start = self.mCuRows[e] + (m_tile - self.mCuTiles[e]) * cfg.tile_m
            row_end = self.mCuRows[e + 1]
            return row_start, row_end, n_tile, e
        return m_tile * cfg.tile_m, self.m_total, n_tile, Int32(0)
