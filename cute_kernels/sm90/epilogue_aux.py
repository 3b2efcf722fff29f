"""Where the Hopper GEMM's epilogue input (an aux tile of the output's shape: dSReLU's preact,
accumulate's previous D) is brought in, and when (trace-time policy of `Sm90Gemm`).

- Cooperative tiles up to AUX_PREFETCH_MAX_TILE_N wide load a tile's first epilogue-input
  sub-tile into registers before its mainloop, so its latency hides behind the whole K loop.
- Wider tiles (128 accumulator registers per thread) would spill holding it that long: they
  issue theirs while the last K tile's WGMMAs run, AUX_INFLIGHT_BYTES deciding how many
  sub-tiles stay in flight.
- Dense one-output epilogues whose input is not prefetched into registers have the producer
  TMA-prefetch it into L2 (AUX_L2_LEAD, `tma_producer.TmaProducer.prefetch_aux_l2`).

The loads themselves are `gemm_base.epilogue_io.load_aux_fragment`.
"""
from __future__ import annotations

from ..config import GemmConfig
from ..epilogue import EpilogueSpec

# Widest tile whose epilogue input is prefetched before the mainloop (register budget).
AUX_PREFETCH_MAX_TILE_N = 192
# Wider tiles keep two epilogue-input sub-tiles in flight when one takes at most this many
# bytes per thread (epi_n 32 in bf16), else one.
AUX_INFLIGHT_BYTES = 32
# Dense one-output epilogues whose input is not prefetched into registers before the
# mainloop (tiles wider than AUX_PREFETCH_MAX_TILE_N) prefetch it into L2 by TMA instead,
# AUX_L2_LEAD K blocks before the producer's last load of the tile (so, with the operand ring
# ahead of the consumers, about AUX_L2_LEAD + ab_stages K blocks before the epilogue reads
# it).  Measured on the H100 (A/B in one process, 2026-11-25): the dense 128x256 dgrad+dSReLU
# 1.037x faster; with it on where the inputs already are in registers, on grouped problems
# (E=128 fp32 main_grad wgrad 0.94x) or with two outputs, 0.94-0.98x, so it is off there.
AUX_L2_LEAD = 8
AUX_L2_PREFETCH = True  # read at trace time (off only to measure what the prefetch is worth)


def aux_in_registers_before_mainloop(cfg: GemmConfig, epi: EpilogueSpec) -> bool:
    """Whether a tile's first epilogue-input sub-tile is loaded into registers before its
    mainloop (cooperative tiles up to AUX_PREFETCH_MAX_TILE_N wide)."""
    return epi.aux_input and cfg.tile_n <= AUX_PREFETCH_MAX_TILE_N and cfg.schedule != "pingpong"


def aux_loaded_during_last_k_tile(cfg: GemmConfig, epi: EpilogueSpec) -> bool:
    """Whether a tile's first epilogue-input sub-tiles are issued while its last K tile's WGMMAs
    run (cooperative tiles wider than AUX_PREFETCH_MAX_TILE_N)."""
    return epi.aux_input and cfg.schedule != "pingpong" and not aux_in_registers_before_mainloop(cfg, epi)


def prefetches_aux_into_l2(cfg: GemmConfig, epi: EpilogueSpec, *, grouped: bool, grouped_k: bool) -> bool:
    """Whether the producer TMA-prefetches each tile's epilogue input into L2 (see AUX_L2_LEAD;
    the kernel also needs the input in the output's dtype)."""
    return (AUX_L2_PREFETCH and epi.aux_input and not grouped and not grouped_k and epi.num_outputs == 1
            and not aux_in_registers_before_mainloop(cfg, epi))
