"""Hopper (sm_90a) limits of the GEMM config: shared memory, the register budget of a
consumer warpgroup, the values each field may take, validation reasons, the per-shape
defaults and the autotuner's search grid.  The neutral config type and the per-arch
dispatch are in `cute_kernels.config`; the numbers here cite the measurements behind them.
"""
from __future__ import annotations

import dataclasses

from ..activations import SRELU
from ..config import ConfigError, GemmConfig
from ..gemm_base.config_types import SmemBudget, choice_errors
from ..gemm_base.config_types import RASTERS, SWIZZLES  # noqa: F401 (the shared tile order's values, as before)

ARCH = "sm90"
# Hopper: 227 KiB of dynamic shared memory per CTA (232448 bytes).
SMEM_CAPACITY = 232448
# mbarriers, scheduler scratch and alignment slack.
SMEM_RESERVED = 1024
# Registers a consumer thread may spend on accumulators (of the 232 it owns after setmaxnreg):
# a 128x192 ping-pong tile (192) compiles spill-free with every epilogue; 128x256 (256) cannot.
MAX_ACC_REGS_PER_THREAD = 192
# Above this many accumulator registers only 32-column epilogue sub-tiles fit: at epi_n 64 a
# 128x192 ping-pong dgrad spills 44 bytes (260 with postact), and its FC1 ran at 0.63x of
# epi_n 32 on the H100 (2.66 vs 1.71 ms, 2026-11-25).
WIDE_EPI_MAX_ACC_REGS = 128

TILE_N_CHOICES = (64, 128, 192, 256)
TILE_K_CHOICES = (64, 128)
CLUSTER_CHOICES = (1, 2)
SCHEDULES = ("cooperative", "pingpong")
PINGPONG_TILE_M = (64, 128)
EPI_N_CHOICES = (32, 64)
EPI_STAGE_CHOICES = (2, 3, 4)
MAX_AB_STAGES = 8  # operand stages a launch takes when the config leaves it to the launch

# Epilogues that keep per-row values next to the accumulator need headroom: above this many
# accumulator registers per thread ptxas spills (sm_90a, checked by tests/test_compile_sm90.py).
# The dsrelu row sum (router gradient) keeps its partials and the aux input live; a row scale
# (router probability) its scales, which a 128x192 ping-pong tile (192 registers) cannot afford.
ROW_SUM_MAX_ACC_REGS = 96
ROW_SCALE_MAX_ACC_REGS = 128
# The K-grouped weight gradient adding into an fp32 main_grad loads a 64-column fp32 sub-tile of
# it next to the accumulator: above this many accumulator registers ptxas spills at epi_n 64
# (4 + 12 bytes for the 128x256 c2x1 tuned E=8 entry, sm_90a, 2026-12-01), never at epi_n 32.
FP32_ACCUMULATE_WIDE_EPI_MAX_ACC_REGS = 96


def acc_regs(cfg: GemmConfig) -> int:
    """Accumulator registers per consumer thread."""
    return warpgroup_tile_m(cfg) * cfg.tile_n // 128


def warpgroup_tile_m(cfg: GemmConfig) -> int:
    """Rows of the accumulator one consumer warpgroup holds: a cooperative tile splits its
    128 rows between two warpgroups of 64; a ping-pong warpgroup owns its whole tile (64 or
    128 rows: 128 take as many accumulator registers as a 128x(2 tile_n) cooperative tile)."""
    return cfg.tile_m // 2 if cfg.schedule == "cooperative" else cfg.tile_m


def epilogue_misfit(cfg: GemmConfig, epi, *, out_bytes: int = 2, grouped_k: bool = False) -> str | None:
    """Why `cfg`'s accumulator leaves `epi` too few registers, or None when it fits
    (`out_bytes` of the output, `grouped_k` for the K-grouped weight gradient)."""
    act_limit = getattr(epi.activation, "max_acc_regs", None) if epi.kind != "identity" else None
    for wanted, name, limit in ((epi.row_sum, "row-sum", ROW_SUM_MAX_ACC_REGS),
                                (epi.row_scale, "row-scale", ROW_SCALE_MAX_ACC_REGS),
                                (act_limit is not None, f"{epi.activation.key()}", act_limit)):
        if wanted and acc_regs(cfg) > limit:
            return (f"the {name} epilogue needs at most {limit} accumulator registers per thread "
                    f"(it spills above), {cfg} has {acc_regs(cfg)}")
    if (epi.accumulate and out_bytes == 4 and grouped_k and cfg.epi_n > 32
            and acc_regs(cfg) > FP32_ACCUMULATE_WIDE_EPI_MAX_ACC_REGS):
        return (f"the K-grouped fp32 accumulating epilogue takes epi_n 32 above {FP32_ACCUMULATE_WIDE_EPI_MAX_ACC_REGS} "
                f"accumulator registers per thread (it spills at epi_n {cfg.epi_n}), {cfg} has {acc_regs(cfg)}")
    return None


def narrowed_for_epilogue(cfg: GemmConfig, epi, **where) -> GemmConfig:
    """`cfg` narrowed until its accumulator fits `epi` (for looked-up configs, tuned without the
    per-row or accumulating epilogue; `where`: epilogue_misfit's keywords): first 32-column
    epilogue sub-tiles buffering as many columns, then the widest tile_n dividing its own (so
    the tuned tile grid is kept), a 128-row ping-pong tile first trying 64 rows at the same tile_n."""
    if epilogue_misfit(cfg, epi, **where) is None:
        return cfg
    if cfg.epi_n > 32:
        stages = min(max(EPI_STAGE_CHOICES), cfg.epi_stages * cfg.epi_n // 32)
        narrowed = dataclasses.replace(cfg, epi_n=32, epi_stages=stages)
        if epilogue_misfit(narrowed, epi, **where) is None:
            return narrowed
    rows = (cfg.tile_m, 64) if cfg.schedule == "pingpong" and cfg.tile_m == 128 else (cfg.tile_m,)
    for tile_n in sorted((t for t in TILE_N_CHOICES if cfg.tile_n % t == 0), reverse=True):
        for tile_m in rows:
            narrowed = dataclasses.replace(cfg, tile_m=tile_m, tile_n=tile_n, epi_n=min(cfg.epi_n, tile_n))
            if tile_n % narrowed.epi_n == 0 and epilogue_misfit(narrowed, epi, **where) is None:
                return narrowed
    raise ConfigError(epilogue_misfit(cfg, epi, **where))


def ab_stage_bytes(cfg: GemmConfig, elem_bytes: int = 2) -> int:
    """Shared memory of one operand stage (an A and a B tile of `elem_bytes` elements)."""
    return (cfg.tile_m + cfg.tile_n) * cfg.tile_k * elem_bytes


def epi_bytes(cfg: GemmConfig, *, num_outputs: int, out_bytes: int = 2) -> int:
    """Epilogue buffers: epi_stages sub-tiles per output (per warpgroup with ping-pong), each
    spanning the tile's (or warpgroup's) rows."""
    epi_buffers = num_outputs * cfg.epi_stages * (2 if cfg.schedule == "pingpong" else 1)
    return epi_buffers * cfg.tile_m * cfg.epi_n * out_bytes


# what a launch's stages and epilogue buffers take of shared memory (gemm_base/config_types.py)
SMEM = SmemBudget(ARCH, SMEM_CAPACITY, SMEM_RESERVED, MAX_AB_STAGES, ab_stage_bytes, epi_bytes)
smem_bytes = SMEM.smem_bytes
max_ab_stages = SMEM.max_ab_stages
resolved_ab_stages = SMEM.resolved_ab_stages


def validation_errors(cfg: GemmConfig, *, num_outputs: int = 1, grouped: bool = False, grouped_k: bool = False,
                      out_bytes: int = 2, cooperative_tile_m: tuple = (128,), check_smem: bool = True) -> list[str]:
    """Every reason `cfg` cannot run; empty when it can.

    `cooperative_tile_m` / `check_smem`: what the block-scaled FP8 kernel relaxes (its 256-row
    cooperative tiles, two 64-row waves per warpgroup; shared memory counted in one-byte
    operands by `block_scaled_errors`).

    `grouped` / `grouped_k` describe the launch (see `kernel_constraints`); today no config
    is invalid for either grouping alone (grouped tiles are rounded up to whole clusters,
    and a K-grouped ping-pong warpgroup skips by the other tile's own K extent), so they
    change nothing here."""
    errs = choice_errors(cfg, {"schedule": SCHEDULES, "tile_n": TILE_N_CHOICES, "tile_k": TILE_K_CHOICES,
                               "epi_n": EPI_N_CHOICES, "epi_stages": EPI_STAGE_CHOICES}, clusters=CLUSTER_CHOICES)
    # A consumer warpgroup holds whole 64-row WGMMA blocks: cooperative tiles split 128 rows
    # into two of them; a ping-pong warpgroup owns a whole tile of one or two blocks.
    if cfg.schedule == "cooperative" and cfg.tile_m not in cooperative_tile_m:
        allowed = f"== {cooperative_tile_m[0]}" if len(cooperative_tile_m) == 1 else f"in {cooperative_tile_m}"
        errs.append(f"cooperative schedule needs tile_m {allowed} (two warpgroups of 64-row WGMMA blocks), "
                    f"got {cfg.tile_m}")
    if cfg.schedule == "pingpong" and cfg.tile_m not in PINGPONG_TILE_M:
        errs.append(f"ping-pong schedule needs tile_m in {PINGPONG_TILE_M} (one warpgroup per tile), got {cfg.tile_m}")
    if errs:
        return errs
    if acc_regs(cfg) > MAX_ACC_REGS_PER_THREAD:
        errs.append(f"accumulator needs {acc_regs(cfg)} registers per thread (> {MAX_ACC_REGS_PER_THREAD}): tile too large for one warpgroup")
    elif acc_regs(cfg) > WIDE_EPI_MAX_ACC_REGS and cfg.epi_n > 32:
        errs.append(f"epi_n {cfg.epi_n} next to {acc_regs(cfg)} accumulator registers per thread spills (epi_n 32 only "
                    f"above {WIDE_EPI_MAX_ACC_REGS})")
    return errs + (SMEM.stage_errors(cfg, num_outputs=num_outputs, out_bytes=out_bytes) if check_smem else [])


def _tile_n_for(n: int) -> int:
    """The widest tile_n whose padding waste on N is within 1% of the least waste."""
    waste = {t: (-(-n // t) * t - n) / n for t in (256, 192, 128)}
    best = min(waste.values())
    return max(t for t, w in waste.items() if w <= best + 0.01)


def default_config(m: int, n: int, k: int, *, grouped: bool = False, num_experts: int = 1, num_outputs: int = 1) -> GemmConfig:
    """Heuristic config for a problem when no tuned entry exists (from the H100 sweep
    in benchmarks/results/2026-11-24-h100-sweep-run2.log).

    128-row cooperative tiles, tile_n as wide as the padding of N allows.  Dense:
    B multicast over a 2x1 cluster (best on the large FC1 shapes).  Grouped: A
    multicast over 1x2 (clusters along M could straddle experts).  Small N or few
    tiles: narrower tiles, no cluster.
    """
    if n <= 64:
        return GemmConfig(tile_m=128, tile_n=64, cluster_m=1, cluster_n=1)
    tile_n = _tile_n_for(n) if n > 128 else 128
    tiles = -(-m // 128) * -(-n // tile_n)
    if tiles < 132:
        return GemmConfig(tile_m=128, tile_n=tile_n if tiles >= 66 else 128, cluster_m=1, cluster_n=1)
    if grouped:
        return GemmConfig(tile_m=128, tile_n=tile_n, cluster_m=1, cluster_n=2)
    return GemmConfig(tile_m=128, tile_n=tile_n, cluster_m=2, cluster_n=1)


def wgrad_default_config(n: int, k: int, tokens: int, num_experts: int = 1) -> GemmConfig:
    """Default config of the weight-gradient GEMM (M=n, N=k output, K=tokens), from a
    six-config sweep on the H100 (2026-11-24, benchmarks/results/mlp/): cooperative
    128x256 tiles with B multicast over a 2x1 cluster (dense 8192x4096x16384: 1.40 and
    1.50 ms, 1.01-1.03x cuBLAS; grouped E=8 with 2048 tokens per expert: 0.253-0.258 ms),
    but 128x192 tiles on a 1x2 cluster when experts have few tokens (E=128, 256 tokens
    each: 0.77 ms vs 0.80 for 128x256); one 128x128 CTA per tile when tiles are scarce.
    With few tokens per expert the mainloop is short (four K blocks), so the epilogue
    buffers hold the whole 128x192 tile (3 x 64 columns): its stores drain during the
    next tile's mainloop (E=128: 0.688 -> 0.637 ms, H100 2026-11-25)."""
    short_k = num_experts > 1 and tokens < 1024 * num_experts  # few tokens per expert
    tile_n = 192 if short_k else 256
    tiles = -(-n // 128) * -(-k // tile_n) * num_experts
    if tiles < 132:
        return GemmConfig(tile_m=128, tile_n=128, cluster_m=1, cluster_n=1)
    if short_k:
        return GemmConfig(tile_m=128, tile_n=192, cluster_m=1, cluster_n=2, epi_n=64, epi_stages=3)
    return GemmConfig(tile_m=128, tile_n=256, cluster_m=2, cluster_n=1)



# ---------------------------------------------------------------- wave-aware lookup priors
# What `cute_kernels.wave_model` needs of Hopper (docs/config-rules.md, "Wave-aware lookup").
# H100 SXM and H200: 132 SMs; a cluster of two CTAs takes two of them.
SM_COUNT = 132
# Relative speed of a CTA tile per unit of area x K, wave quantization taken out (the model's
# waves of each config divided out of the measured times): cooperative 128-row tiles on the dense
# FC1 shapes 8192x16384x4096 and 16384x14848x2688, H100 2026-11-24 (benchmarks/results/
# 2026-11-24-h100-sweep-run2.log): tile_n 192 ran at 0.92 and 128 at 0.85-0.87 of tile_n 256.
TILE_N_EFFICIENCY = {256: 1.0, 192: 0.92, 128: 0.86, 64: 0.86}
# One CTA per cluster (no multicast) against two, same waves: 0.92-0.95 (the same two shapes, 1x1 vs 1x2).
SINGLE_CTA_EFFICIENCY = 0.93
# 64-row ping-pong tiles: 431 against 722 TFLOP/s at 1.6 % fewer waves (8192x16384x4096, same log).
TILE_M64_EFFICIENCY = 0.59


def tile_efficiency(cfg: GemmConfig) -> float:
    """The model's prior speed of `cfg`'s tile per unit of area x K (1.0: a 128x256 tile on a cluster
    of two); tuned entries replace it by their measured speedup (config_lookup)."""
    eff = TILE_N_EFFICIENCY.get(cfg.tile_n, min(TILE_N_EFFICIENCY.values()))
    if cfg.tile_m == 64:
        eff *= TILE_M64_EFFICIENCY
    if cfg.cluster_size == 1:
        eff *= SINGLE_CTA_EFFICIENCY
    return eff


def wave_default_candidates(default: GemmConfig) -> list[GemmConfig]:
    """The heuristic default first, then its variants the wave-aware lookup also weighs: the
    other 128-row tile widths (128, 192, 256), each on the default's cluster and on one CTA.
    A default of 64-wide tiles (N <= 64) has none."""
    out = [default]
    if default.tile_n not in (128, 192, 256) or default.tile_m != 128:
        return out
    for tile_n in (256, 192, 128):
        for cluster in ((default.cluster_m, default.cluster_n), (1, 1)):
            cfg = dataclasses.replace(default, tile_n=tile_n, cluster_m=cluster[0], cluster_n=cluster[1])
            if cfg not in out:
                out.append(cfg)
    return out




# ---------------------------------------------------------------- block-scaled FP8
# The FP8 recipe's block (cute_kernels.fp8.recipe): 1x128 scales of A, 128x128 of B.  The
# mainloop promotes once per K tile, so tile_k is one block; a tile_n of one block keeps one
# weight scale per K tile and the promoted accumulator plus two scratch ones (3 x 64
# registers per thread) inside the consumer's budget.
FP8_BLOCK = 128
FP8_DEFAULT_CONFIG = GemmConfig(tile_m=128, tile_n=128, tile_k=128, cluster_m=1, cluster_n=2, epi_n=32, epi_stages=2)
FP8_MAX_AB_STAGES = 8
# 256-row cooperative tiles (DeepGEMM's shape): each consumer warpgroup owns two 64-row waves
# (rows w * 128 + its 64), promoted one after the other through one scratch accumulator
# (sm90/mainloop_fp8.py `run_split_m`); B's shared-memory tile then serves 256 rows.
# Stage: (256 + 128) x 128 bytes = 48 KiB; 4 fit next to a plain bf16 output's 32-column
# buffers, 3 next to FC1's preact + FP8 postact (block_scaled_ab_stages).
FP8_WAVE_TILE_M = 256
# B's scales per row ("row" and "rows_staged": the 1D1D weight gradient).  "rows_staged" keeps a K
# tile's 128 column scales in a shared-memory ring per consumer warpgroup (sm90/scale_ring.py):
# 128 columns x 2 K tiles (a pair) x SCALE_RING_PAIRS pair slots x 2 warpgroups, fp32.
ROW_B_SCALES = ("row", "rows_staged")
SCALE_RING_PAIRS = 3
SCALE_RING_BYTES = FP8_BLOCK * 2 * SCALE_RING_PAIRS * 2 * 4
# KernelKey.scales_smem: per operand stage, A's scales of the K tile's 128 rows and B's block
# scales (up to 2, padded to 16 bytes), fp32 (sm90/scale_stage.py)
FP8_SCALE_SLOT_BYTES = (FP8_BLOCK + 4) * 4


def block_scaled_errors(cfg: GemmConfig, epi, *, grouped: bool, grouped_k: bool, majors: tuple,
                        out_bytes: int = 2, b_scale: str = "") -> list[str]:
    """Every reason `cfg` cannot run the block-scaled FP8 mainloop with `epi`; empty when it can.
    `b_scale`: "" (B's scales by 128x128 blocks), "row" (1x128 runs of each B row along K) or
    "rows_staged" (the same scales, the overlapped mainloop with B's column scales in shared memory)."""
    # the shared fields' rules; the operand stages are counted in one-byte elements below
    # (256-row tiles: the bf16 rule counts two-byte operand stages, so shared memory only here)
    waves = cfg.schedule == "cooperative" and cfg.tile_m == FP8_WAVE_TILE_M
    errs = validation_errors(dataclasses.replace(cfg, ab_stages=0), num_outputs=epi.num_outputs, grouped=grouped,
                             grouped_k=grouped_k, out_bytes=out_bytes, cooperative_tile_m=(128, FP8_WAVE_TILE_M),
                             check_smem=not waves)
    if cfg.ab_stages and not 2 <= cfg.ab_stages <= FP8_MAX_AB_STAGES:
        errs.append(f"ab_stages must be in 2..{FP8_MAX_AB_STAGES} (or 0 for automatic), got {cfg.ab_stages}")
    elif (cfg.ab_stages or waves) and block_scaled_smem_bytes(cfg, epi, ab_stages=cfg.ab_stages or 2,
                                                              out_bytes=out_bytes, b_scale=b_scale) > SMEM_CAPACITY:
        need = block_scaled_smem_bytes(cfg, epi, ab_stages=cfg.ab_stages or 2, out_bytes=out_bytes, b_scale=b_scale)
        errs.append(f"shared memory: {need} bytes needed, {SMEM_CAPACITY} available on {ARCH}")
    if not ((cfg.schedule == "cooperative" and cfg.tile_m in (128, FP8_WAVE_TILE_M))
            or (cfg.schedule == "pingpong" and cfg.tile_m == 64)):
        errs.append(f"the FP8 GEMM runs cooperative 128- or {FP8_WAVE_TILE_M}-row tiles or ping-pong 64-row ones")
    elif cfg.schedule == "pingpong" and (epi.quantized or b_scale):
        errs.append("the FP8 GEMM's ping-pong tiles take unquantized outputs and 128x128 weight scale blocks")
    elif waves:
        errs += _wave_tile_errors(cfg, epi, b_scale)
    if cfg.tile_n not in (FP8_BLOCK, 2 * FP8_BLOCK):
        errs.append(f"the FP8 GEMM's tile_n is {FP8_BLOCK} or {2 * FP8_BLOCK} (whole weight scale blocks; "
                    f"256: the split-N mainloop)")
    if cfg.tile_k != FP8_BLOCK:
        errs.append(f"the FP8 GEMM's tile_k is {FP8_BLOCK} (one promotion per scale block)")
    if cfg.cluster_size > 2:
        errs.append("the FP8 GEMM takes clusters of at most 2 CTAs")
    if tuple(majors) != ("k", "k"):
        errs.append(f"Hopper's FP8 WGMMA reads K-major A and B, got majorness {tuple(majors)}")
    if grouped_k and b_scale != "rows_staged":
        # grouped along K: the 1D1D weight gradient over per-expert token ranges padded to whole
        # 128-token scale blocks (fp8/grouped_tokens.py), B's scales per row, the overlapped mainloop
        # (the serial "row" one spills 220 bytes grouped: ptxas, 2026-12-03)
        errs.append("the FP8 GEMM grouped along K runs per-row B scales through the overlapped mainloop only "
                    f"(b_scale 'rows_staged': the grouped weight gradient), got {b_scale!r}")
    if epi.accumulate and (b_scale not in ROW_B_SCALES or out_bytes != 4):
        # the weight gradient added into an fp32 main_grad: its epilogue reads the output's previous
        # value after the mainloop (sm90/epilogue_aux.py), spill-free with per-row B scales (ptxas sm_90a,
        # 2026-12-03: "row", "rows_staged" and grouped "rows_staged", clusters 1x1, 1x2 and 2x1, 168
        # registers, no spills, no WGMMA serialization)
        errs.append("the FP8 GEMM accumulates into its output only as the weight gradient: per-row B scales "
                    f"(b_scale 'row' or 'rows_staged') and an fp32 output (main_grad), got b_scale {b_scale!r} "
                    f"and a {out_bytes}-byte output")
    elif epi.accumulate and b_scale == "rows_staged" and cfg.epi_n > 32:
        # next to the overlapped mainloop's state a 64-column fp32 sub-tile of main_grad spills (60 bytes
        # dense, 64 grouped: ptxas sm_90a, 2026-12-03; the serial "row" mainloop takes it spill-free)
        errs.append(f"the FP8 weight gradient accumulating into fp32 through the overlapped mainloop takes epi_n 32 "
                    f"(it spills at epi_n {cfg.epi_n})")
    elif epi.kind == "dact" and cfg.tile_n != FP8_BLOCK:
        errs.append(f"the FP8 GEMM's activation-derivative epilogue runs {FP8_BLOCK}-wide tiles (its preact input "
                    f"is read into registers before the mainloop)")
    if epi.kind == "dact" and epi.activation != SRELU:
        # the H200 run of 2026-12-03 measured wrong dpreact / router gradients with the tanh clamp here
        # (0.5 relative; relu^2 within 3e-3): refused until that is understood
        errs.append(f"the FP8 GEMM's activation-derivative epilogue runs relu^2 only so far, got "
                    f"{epi.activation.key()}")
    if b_scale not in ("", *ROW_B_SCALES):
        errs.append(f"b_scale is '' (128x128 blocks), 'row' or 'rows_staged' (1x128 along K), got {b_scale!r}")
    elif b_scale in ROW_B_SCALES:
        # a scale per output column: one 128-column N block per tile
        if cfg.tile_n != FP8_BLOCK:
            errs.append(f"the FP8 GEMM with per-row B scales runs {FP8_BLOCK}-wide tiles")
        if grouped:
            errs.append("the FP8 GEMM with per-row B scales is dense or grouped along K (weight gradients), "
                        "not grouped along M")
        if epi.kind != "identity" or epi.num_outputs != 1 or epi.quantized:
            errs.append("the FP8 GEMM with per-row B scales has the plain epilogue (one unquantized output)")
    misfit = epilogue_misfit(cfg, epi)
    if misfit:
        errs.append(misfit)
    return errs


def _wave_tile_errors(cfg: GemmConfig, epi, b_scale: str) -> list[str]:
    """What the 256-row FP8 tile (two 64-row waves per consumer warpgroup, sm90/mainloop_fp8.py
    `run_split_m`) cannot run: its 128 promoted + 64 scratch accumulator registers per thread
    leave no room for a second N block, for B's per-column scales, or for the activation
    derivative's preact read into registers next to them."""
    errs = []
    if cfg.tile_n != FP8_BLOCK:
        errs.append(f"the FP8 GEMM's {FP8_WAVE_TILE_M}-row tiles are {FP8_BLOCK} wide (two waves of one N block)")
    if b_scale:
        errs.append(f"the FP8 GEMM's {FP8_WAVE_TILE_M}-row tiles take 128x128 weight scale blocks (no per-row B scales)")
    if epi.quantized and (epi.num_outputs > 1 or cfg.epi_n > 32):
        # ptxas, sm_90a (2026-12-03): FC1 with preact + FP8 postact spills 16 bytes at epi_n 32, FP8
        # postact alone 64 bytes at epi_n 64 (the codec keeps the tile's values and 4 rows' amax)
        errs.append(f"the FP8 GEMM's {FP8_WAVE_TILE_M}-row tiles quantize a single output in 32-column sub-tiles "
                    f"(a second output or epi_n 64 next to the codec's values of the whole tile spills), "
                    f"got {epi.num_outputs} outputs at epi_n {cfg.epi_n}")
    if epi.kind == "dact":
        errs.append(f"the FP8 GEMM's activation-derivative epilogue runs 128-row tiles (its preact input is read "
                    f"into registers before the mainloop; a {FP8_WAVE_TILE_M}-row tile has no registers left for it)")
    return errs


def block_scaled_smem_bytes(cfg: GemmConfig, epi, *, ab_stages: int, out_bytes: int = 2, b_scale: str = "",
                            scales_smem: bool = False) -> int:
    """Shared memory of an FP8 launch: one-byte operand stages (with `scales_smem`, each with its
    scale slot), epilogue buffers per output (the quantized one in one byte), B's column-scale
    ring ("rows_staged"), reserve."""
    ab = ab_stages * _fp8_stage_bytes(cfg, scales_smem)
    epi_buffers = sum(cfg.tile_m * cfg.epi_n * cfg.epi_stages * (1 if o == epi.quantized else out_bytes)
                      for o in epi.outputs)
    ring = SCALE_RING_BYTES if b_scale == "rows_staged" else 0
    return ab + epi_buffers + ring + SMEM_RESERVED + 2048  # + alignment of the four smem arrays


def block_scaled_ab_stages(cfg: GemmConfig, epi, *, out_bytes: int = 2, b_scale: str = "",
                           scales_smem: bool = False) -> int:
    """Operand stages of an FP8 launch: cfg.ab_stages, or as many as fit (at most FP8_MAX_AB_STAGES)."""
    if cfg.ab_stages:
        return cfg.ab_stages
    fixed = block_scaled_smem_bytes(cfg, epi, ab_stages=0, out_bytes=out_bytes, b_scale=b_scale)
    return max(2, min(FP8_MAX_AB_STAGES, (SMEM_CAPACITY - fixed) // _fp8_stage_bytes(cfg, scales_smem)))


def _fp8_stage_bytes(cfg: GemmConfig, scales_smem: bool) -> int:
    """One FP8 operand stage: A's and B's one-byte blocks, and with `scales_smem` the stage's scale
    slot (the K tile's 128 row scales of A and B's block scales, 528 bytes: sm90/scale_stage.py)."""
    return (cfg.tile_m + cfg.tile_n) * cfg.tile_k + (FP8_SCALE_SLOT_BYTES if scales_smem else 0)
