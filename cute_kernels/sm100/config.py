"""The SM100 (Blackwell, sm_100a) GEMM config space: knobs, validation with reasons, defaults.

`Sm100Config` is what the sm100 kernel takes; it shares the grouping-relevant names of
`cute_kernels.GemmConfig` (tile_m = rows per CTA, tile_n, cluster_m, cluster_n), so the
host-side grouping metadata (cu_tiles rounded to whole clusters) is the same as on sm90.

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

from ..config import ConfigError

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
RASTERS = ("n", "m")
SWIZZLES = (1, 2, 4, 8)
EPI_N_CHOICES = (32, 64)
EPI_STAGE_CHOICES = (2, 3, 4)
MAX_AB_STAGES = 8


@dataclass(frozen=True)
class Sm100Config:
    """One SM100 GEMM configuration.

    tile_m, tile_n, tile_k: the CTA tile (rows per CTA, columns, K block).
    cta_group: 1 (each CTA runs its own 128-row UMMA) or 2 (a CTA pair runs one 256-row
        UMMA, `tcgen05.mma.cta_group::2`, issued by the even CTA).
    cluster_m, cluster_n: CTAs per cluster; A is multicast along N, B along M.
    acc_stages: accumulator buffers in TMEM (2: the epilogue of a tile overlaps the MMAs
        of the next).
    raster, swizzle: the banded persistent tile order (cute_kernels.tile_scheduler).
    ab_stages: operand pipeline depth; 0 takes as many as fit (at most MAX_AB_STAGES).
    epi_n: columns per epilogue sub-tile; epi_stages: epilogue smem buffers.
    """

    tile_m: int = 128
    tile_n: int = 256
    tile_k: int = 64
    cta_group: int = 1
    cluster_m: int = 1
    cluster_n: int = 1
    acc_stages: int = 2
    raster: str = "n"
    swizzle: int = 8
    ab_stages: int = 0
    epi_n: int = 32
    epi_stages: int = 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Sm100Config":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown Sm100Config fields: {sorted(unknown)}")
        return cls(**d)

    @property
    def cluster_size(self) -> int:
        return self.cluster_m * self.cluster_n

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


def max_ab_stages(cfg: Sm100Config, *, num_outputs: int, elem_bytes: int = 2, out_bytes: int = 2) -> int:
    free = SMEM_CAPACITY - SMEM_RESERVED - epi_bytes(cfg, num_outputs=num_outputs, out_bytes=out_bytes)
    return free // ab_stage_bytes(cfg, elem_bytes)


def resolved_ab_stages(cfg: Sm100Config, *, num_outputs: int, out_bytes: int = 2) -> int:
    """The pipeline depth a launch uses: cfg.ab_stages, or as many as fit (at most MAX_AB_STAGES)."""
    if cfg.ab_stages:
        return cfg.ab_stages
    return min(MAX_AB_STAGES, max_ab_stages(cfg, num_outputs=num_outputs, out_bytes=out_bytes))


def smem_bytes(cfg: Sm100Config, *, ab_stages: int, num_outputs: int, elem_bytes: int = 2, out_bytes: int = 2) -> int:
    return (ab_stages * ab_stage_bytes(cfg, elem_bytes) + epi_bytes(cfg, num_outputs=num_outputs, out_bytes=out_bytes)
            + SMEM_RESERVED)


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
    errs: list[str] = []
    for name, value, choices in (("tile_m", cfg.tile_m, TILE_M_CHOICES), ("tile_n", cfg.tile_n, TILE_N_CHOICES),
                                 ("tile_k", cfg.tile_k, TILE_K_CHOICES), ("cta_group", cfg.cta_group, CTA_GROUPS),
                                 ("cluster_m", cfg.cluster_m, CLUSTER_CHOICES),
                                 ("cluster_n", cfg.cluster_n, CLUSTER_CHOICES),
                                 ("acc_stages", cfg.acc_stages, ACC_STAGE_CHOICES), ("raster", cfg.raster, RASTERS),
                                 ("swizzle", cfg.swizzle, SWIZZLES), ("epi_n", cfg.epi_n, EPI_N_CHOICES),
                                 ("epi_stages", cfg.epi_stages, EPI_STAGE_CHOICES)):
        if value not in choices:
            errs.append(f"{name} must be one of {choices}, got {value!r}")
    if errs:
        return errs
    if cfg.tile_n % cfg.epi_n:
        errs.append(f"tile_n {cfg.tile_n} is not a multiple of epi_n {cfg.epi_n}")
    if cfg.cluster_size > MAX_CLUSTER_SIZE:
        errs.append(f"cluster of {cfg.cluster_size} CTAs exceeds the portable {MAX_CLUSTER_SIZE}")
    if cfg.cta_group == 2 and cfg.cluster_m % 2:
        errs.append(f"cta_group 2 needs an even cluster_m (a CTA pair shares one MMA), got {cfg.cluster_m}")
    if cfg.tmem_columns > TMEM_COLUMNS:
        errs.append(f"tensor memory: {cfg.acc_stages} accumulator stages x {cfg.tile_n} columns = "
                    f"{cfg.tmem_columns} > {TMEM_COLUMNS} columns")
    if cfg.ab_stages and cfg.ab_stages < 2:
        errs.append(f"ab_stages must be >= 2 (or 0 for automatic), got {cfg.ab_stages}")
    fit = max_ab_stages(cfg, num_outputs=num_outputs, out_bytes=out_bytes)
    if cfg.ab_stages > fit or fit < 2:
        need = smem_bytes(cfg, ab_stages=max(cfg.ab_stages, 2), num_outputs=num_outputs, out_bytes=out_bytes)
        errs.append(f"shared memory: {need} bytes needed, {SMEM_CAPACITY} available on sm100")
    return errs


def validate(cfg, *, num_outputs: int = 1, out_bytes: int = 2, grouped: bool = False,
             grouped_k: bool = False) -> Sm100Config:
    """Return `cfg` if it can run on sm100, else raise ConfigError listing every reason."""
    errs = validation_errors(cfg, num_outputs=num_outputs, out_bytes=out_bytes, grouped=grouped, grouped_k=grouped_k)
    if errs:
        raise ConfigError(f"invalid Sm100Config {cfg}: " + "; ".join(errs))
    return cfg


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
