"""What every arch's GEMM kernel class takes and derives from it at construction, written once.

An arch's kernel class (`sm90.gemm.Sm90Gemm`, `sm100.gemm.Sm100Gemm`) is built from a config, an
epilogue, the grouping and the operand pipeline depth (`compile.build_kernel`), and derives the
same trace-time figures from them: the CTA tile, the cluster shape, the epilogue sub-tile, the
number of outputs and the slots of the K-grouped descriptor ring.  It adds its own (schedule,
CTA group, thread counts) on top.  The construction is plain Python; `output_store_atoms` runs
while the kernel's host side is traced.
"""
from __future__ import annotations

from cutlass import const_expr
from cutlass.cute.nvgpu import cpasync

from .descriptors import desc_slots
from .grouping import ragged_store_view


class GemmKernelBase:
    """The launch description every arch's kernel class starts from (its __init__ calls this one)."""

    def __init__(self, cfg, epi, *, grouped: bool, grouped_k: bool, ab_stages: int):
        self.cfg = cfg
        self.epi = epi
        self.grouped = grouped
        self.grouped_k = grouped_k
        self.ab_stages = ab_stages
        self.desc_slots = desc_slots(ab_stages)
        self.tile_m, self.tile_n, self.tile_k = cfg.tile_m, cfg.tile_n, cfg.tile_k
        self.cluster_shape_mn = (cfg.cluster_m, cfg.cluster_n)
        self.epi_tile = (cfg.tile_m, cfg.epi_n)  # one epilogue sub-tile: the tile's rows, epi_n columns
        self.num_outputs = epi.num_outputs

    def output_store_atoms(self, mD0, mD1, d0_smem_one, d1_smem_one):
        """The TMA store atoms of the outputs and the views they store through (a grouped output's
        ragged view), one epilogue sub-tile (`d*_smem_one`: its shared-memory layout) per store;
        without a second output (mD1 None) the first's stand in for it."""
        tma_d0, tma_mD0 = cpasync.make_tiled_tma_atom(cpasync.CopyBulkTensorTileS2GOp(),
                                                      ragged_store_view(mD0, self.grouped), d0_smem_one, self.epi_tile)
        tma_d1, tma_mD1 = tma_d0, tma_mD0
        if const_expr(mD1 is not None):
            tma_d1, tma_mD1 = cpasync.make_tiled_tma_atom(cpasync.CopyBulkTensorTileS2GOp(),
                                                          ragged_store_view(mD1, self.grouped), d1_smem_one,
                                                          self.epi_tile)
        return tma_d0, tma_mD0, tma_d1, tma_mD1
