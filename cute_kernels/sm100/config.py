"""The SM100 (Blackwell, sm_100a) GEMM config space: knobs, validation with reasons, defaults.

`Sm100Config` is what the sm100 kernel takes: the fields every arch shares
(`cute_kernels.gemm_base.config_types.TileConfig`, as `cute_kernels.GemmConfig` has them:
tile_m = rows per CTA, tile_n, cluster_m, cluster_n, ...), so the host-side grouping metadata
(cu_tiles rounded to whole clusters) is the same as on sm90, plus cta_group and acc_stages.

Limits checked by `validation_errors` (every reason, before anything is compiled):
- tile_m is 128 rows per CTA: one TMEM lane per row, so each of the 4 epilogue warps reads
  32 rows and a thread holds one row (the per-row epilogue terms need no shuffles).  With
  cta_group 2 the MMA tile is 256 rows over a CTA pair; each CTA loads half of B.
- tile_n: a multiple of epi_n in TILE_N_CHOICES (UMMA N <= 256, a multiple of 16).
- Tensor memory: acc_stages x tile_n fp32 columns per CTA <= 512 (TMEM_COLUMNS).
- Shared memory: ab_stages x (A + B stage) + epilogue buffers + SMEM_RESERVED <= 227 KiB.
- Clusters: cluster_m, cluster_n in CLUSTER_CHOICES, at most MAX_CLUSTER_SIZE CTAs;
  cta_group 2 needs an even cluster_m (the two CTAs of a pair share one MMA).
Nothing here is tuned on hardware: `default_config` is a heuristic (see its docstring).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..gemm_base.config_types import SmemBudget, TileConfig, choice_errors, raise_if_invalid
from ..gemm_base.config_types import RASTERS, SWIZZLES  # noqa: F401 (the shared tile order's values, as before)

SMEM_CAPACITY = 232448  # 227 KiB of dynamic shared memory per CTA
SMEM_RESERVED = 1024  # mbarriers, TMEM pointer, alignment slack
TMEM_COLUMNS = 512  # 128 lanes x 512 columns of 32 bits per SM
TILE_M_CHOICES = (128,)
TILE_N_CHOICES = (64, 128, 192, 256)
TILE_K_CHOICES = (64, 128)
CTA_GROUPS = (1, 2)
CLUSTER_CHOICES = (1, 2, 4)
MAX_CLUSTER_SIZE = 8  # portable cluster size
ACC_STAGE_CHOICES = (1, 2)
EPI_N_CHOICES = (32, 64)
EPI_STAGE_CHOICES = (2, 3, 4)
MAX_AB_STAGES = 8


@dataclass(frozen=True)
class Sm100Config(TileConfig):
    """One SM100 GEMM configuration: the shared fields of `TileConfig`
    (gemm_base/config_types.py: tile, cluster, raster and swizzle, ab_stages, epi_n and
    epi_stages) plus the UMMA's CTA group and the TMEM accumulator stages.

    tile_m is the rows per CTA (128: one TMEM lane per row).
    cta_group: 1 (each CTA runs its own 128-row UMMA) or 2 (a CTA pair runs one 256-row
        UMMA, `tcgen05.mma.cta_group::2`, issued by the even CTA).
    acc_stages: accumulator buffers in TMEM (2: the epilogue of a tile overlaps the MMAs
        of the next).
    ab_stages: 0 takes as many as fit (at most MAX_AB_STAGES).
    """

    cta_group: int = 1
    acc_stages: int = 2

    @property
    def mma_tile_m(self) -> int:
        """Rows of one UMMA (over the CTA pair with cta_group 2)."""
        return self.tile_m * self.cta_group

    @property
    def tmem_columns(self) -> int:
        """fp32 accumulator columns of TMEM per CTA (all stages)."""
        return self.acc_stages * self.tile_n


def ab_stage_bytes(cfg: Sm100Config, elem_bytes: int = 2) -> int:
    """Shared memory of one operand stage per CTA (with cta_group 2 a CTA holds half of B)."""
    return (cfg.tile_m + cfg.tile_n // cfg.cta_group) * cfg.tile_k * elem_bytes


def epi_bytes(cfg: Sm100Config, *, num_outputs: int, out_bytes: int = 2) -> int:
    return num_outputs * cfg.epi_stages * cfg.tile_m * cfg.epi_n * out_bytes


# what a launch's stages and epilogue buffers take of shared memory (gemm_base/config_types.py)
SMEM = SmemBudget("sm100", SMEM_CAPACITY, SMEM_RESERVED, MAX_AB_STAGES, ab_stage_bytes, epi_bytes)
smem_bytes = SMEM.smem_bytes
max_ab_stages = SMEM.max_ab_stages
resolved_ab_stages = SMEM.resolved_ab_stages


def epilogue_misfit(cfg: Sm100Config, epi, *, out_bytes: int = 2, grouped_k: bool = False) -> str | None:
    """None: a thread holds one row of epi_n accumulator values, whatever the tile, so no
    epilogue runs out of registers (tests/test_compile_sm100.py checks 0 spills for each)."""
    return None


def narrowed_for_epilogue(cfg: Sm100Config, epi, **where) -> Sm100Config:
    return cfg


def validation_errors(cfg, *, num_outputs: int = 1, out_bytes: int = 2, grouped: bool = False,
                      grouped_k: bool = False) -> list[str]:
    """Every reason `cfg` cannot run on sm100; empty when it can.  `grouped` / `grouped_k`
    change nothing today (grouped tiles are rounded up to whole clusters on the host)."""
    if not isinstance(cfg, Sm100Config):
        return [f"sm100 kernels take an Sm100Config, got {type(cfg).__name__}"]
    errs = choice_errors(cfg, {"tile_m": TILE_M_CHOICES, "tile_n": TILE_N_CHOICES, "tile_k": TILE_K_CHOICES,
                               "cta_group": CTA_GROUPS, "acc_stages": ACC_STAGE_CHOICES, "epi_n": EPI_N_CHOICES,
                               "epi_stages": EPI_STAGE_CHOICES}, clusters=CLUSTER_CHOICES)
    if errs:
        return errs
    if cfg.cluster_size > MAX_CLUSTER_SIZE:
        errs.append(f"cluster of {cfg.cluster_size} CTAs exceeds the portable {MAX_CLUSTER_SIZE}")
    if cfg.cta_group == 2 and cfg.cluster_m % 2:
        errs.append(f"cta_group 2 needs an even cluster_m (a CTA pair shares one MMA), got {cfg.cluster_m}")
    if cfg.tmem_columns > TMEM_COLUMNS:
        errs.append(f"tensor memory: {cfg.acc_stages} accumulator stages x {cfg.tile_n} columns = "
                    f"{cfg.tmem_columns} > {TMEM_COLUMNS} columns")
    return errs + SMEM.stage_errors(cfg, num_outputs=num_outputs, out_bytes=out_bytes)


def validate(cfg, *, num_outputs: int = 1, out_bytes: int = 2, grouped: bool = False,
             grouped_k: bool = False) -> Sm100Config:
    """Return `cfg` if it can run on sm100, else raise ConfigError listing every reason."""
    errs = validation_errors(cfg, num_outputs=num_outputs, out_bytes=out_bytes, grouped=grouped, grouped_k=grouped_k)
    return raise_if_invalid(cfg, errs, "Sm100Config")


SM_COUNT = 148  # B200


def default_config(m: int, n: int, k: int, *, grouped: bool = False, num_experts: int = 0, num_outputs: int = 1,
                   grouped_k: bool = False) -> Sm100Config:
    """Untuned per-shape heuristic (no Blackwell measurement exists here; replace by tuned
    entries under tuned_configs/sm100/ once measured on hardware).

    Large problems: a 2-CTA 256x256 UMMA over a 2x1 cluster (the configuration CUTLASS's
    persistent example defaults to), tile_n narrowed to limit padding waste on N.  Problems
    with fewer 256x256 tiles than SMs: 1-CTA 128-row tiles, 1x1 clusters, so more CTAs run.
    Narrow N (<= 128): 128-wide tiles.  The last dimension of the table is the K block:
    64 (128-byte swizzle atoms, the deepest pipeline)."""
    tile_n = 256 if n > 192 else (192 if n > 128 else 128)
    if n > 192 and (-(-n // 256) * 256 - n) > (-(-n // 192) * 192 - n) + n // 100:
        tile_n = 192
    rows = m if not grouped_k else m * max(num_experts, 1)
    big_tiles = -(-rows // 256) * -(-n // tile_n)
    if big_tiles >= SM_COUNT // 2:
        cfg = Sm100Config(tile_n=tile_n, cta_group=2, cluster_m=2, cluster_n=1)
    else:
        cfg = Sm100Config(tile_n=min(tile_n, 128) if big_tiles < SM_COUNT // 4 else tile_n)
    if validation_errors(cfg, num_outputs=num_outputs):
        cfg = dataclasses.replace(cfg, epi_stages=2)
    return cfg


def wgrad_default_config(n: int, k: int, tokens: int, num_experts: int = 1) -> Sm100Config:
    """The untuned config of the weight-gradient GEMM (M = n, N = k, K = tokens) on sm100."""
    return default_config(n, k, tokens, num_experts=num_experts, grouped_k=num_experts > 1)
