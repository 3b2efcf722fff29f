"""Where the Hopper GEMM's epilogue input (an aux tile of the output's shape: dSReLU's preact,
accumulate's previous D) is brought in, and when (trace-time policy of `Sm90Gemm`).

- Cooperative tiles up to AUX_PREFETCH_MAX_TILE_N wide load a tile's first epilogue-input
  sub-tile into registers before its mainloop, so its latency hides behind the whole K loop.
- Wider tiles (128 accumulator registers per thread) would spill holding it that long: they
  issue theirs while the last K tile's WGMMAs run, AUX_INFLIGHT_BYTES deciding how many
  sub-tiles stay in flight.
- The FP8 weight gradient (block-scaled, B's scales per row: `rows_scaled`) adding into an fp32
  main_grad has no registers to hold an input through its mainloop (its column scales are live
  there: 76 bytes of spills with the first sub-tile prefetched, ptxas sm_90a 2026-12-03): it issues
  its first sub-tiles right after the mainloop, as many in flight as AUX_INFLIGHT_BYTES allows.
- Dense one-output epilogues whose input is not prefetched into registers have the producer
  TMA-prefetch it into L2 (AUX_L2_LEAD, `tma_producer.TmaProducer.prefetch_aux_l2`).

`AuxLoader` issues the loads (`gemm_base.epilogue_io.load_aux_fragment`) at those places.
"""
from __future__ import annotations

from cutlass import const_expr

from ..config import GemmConfig
from ..epilogue import EpilogueSpec
from ..gemm_base.epilogue_io import aux_depth, load_aux_fragment
from ..gemm_base.traced import TracedRecord

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


def aux_in_registers_before_mainloop(cfg: GemmConfig, epi: EpilogueSpec, *, rows_scaled: bool = False) -> bool:
    """Whether a tile's first epilogue-input sub-tile is loaded into registers before its
    mainloop (cooperative tiles up to AUX_PREFETCH_MAX_TILE_N wide, not the FP8 mainloop with
    B's scales per row: `rows_scaled`)."""
    return (epi.aux_input and cfg.tile_n <= AUX_PREFETCH_MAX_TILE_N and cfg.schedule != "pingpong"
            and not rows_scaled)


def aux_loaded_during_last_k_tile(cfg: GemmConfig, epi: EpilogueSpec) -> bool:
    """Whether a tile's first epilogue-input sub-tiles are issued while its last K tile's WGMMAs
    run (cooperative tiles wider than AUX_PREFETCH_MAX_TILE_N)."""
    return epi.aux_input and cfg.schedule != "pingpong" and not aux_in_registers_before_mainloop(cfg, epi)


def aux_loaded_after_mainloop(cfg: GemmConfig, epi: EpilogueSpec, *, rows_scaled: bool) -> bool:
    """Whether a tile's first epilogue-input sub-tiles are issued right after its mainloop (the FP8
    mainloop with B's scales per row, whose K loop drains inside it: the weight gradient into an
    fp32 main_grad)."""
    return epi.aux_input and rows_scaled and cfg.schedule != "pingpong"


def prefetches_aux_into_l2(cfg: GemmConfig, epi: EpilogueSpec, *, grouped: bool, grouped_k: bool,
                           rows_scaled: bool = False) -> bool:
    """Whether the producer TMA-prefetches each tile's epilogue input into L2 (see AUX_L2_LEAD;
    the kernel also needs the input in the output's dtype)."""
    return (AUX_L2_PREFETCH and epi.aux_input and not grouped and not grouped_k and epi.num_outputs == 1
            and not aux_in_registers_before_mainloop(cfg, epi, rows_scaled=rows_scaled))


class AuxLoader(TracedRecord):
    """Trace-time helper of a consumer warpgroup: its loads of the epilogue input, per tile
    `tile` = (row_start, row_end, n_tile, expert), as raw fragments in the input's dtype (a
    trace-time list of sub-tiles in flight, next first; converted at use)."""

    # Read-only inside the tile loop: the tensors and coordinates it holds are defined before the
    # loop and used there as they are, so no value is carried through it (declaring them carried
    # them as loop values, which renumbered registers in the PTX of ping-pong and K-grouped kernels).
    _traced = ()

    def __init__(self, cfg: GemmConfig, epi: EpilogueSpec, *, grouped_k: bool, mAux, n_total, coords, frag_shape,
                 frag_size: int, rows_scaled: bool = False):
        self.cfg, self.epi = cfg, epi
        self.rows_scaled = rows_scaled
        self.grouped_k = grouped_k
        self.pingpong = cfg.schedule == "pingpong"
        self.mAux, self.n_total = mAux, n_total
        self.coords, self.frag_shape, self.frag_size = coords, frag_shape, frag_size
        self.num_epi = cfg.tile_n // cfg.epi_n

    def load(self, tile, e: int):
        """This thread's elements of the epilogue input for sub-tile `e` (gemm_base.epilogue_io)."""
        row_start, row_end, n_tile, expert = tile
        layer = expert if const_expr(self.grouped_k) else 0
        col0 = n_tile * self.cfg.tile_n + e * self.cfg.epi_n
        return load_aux_fragment(self.mAux, self.coords, self.frag_shape, self.frag_size, row_start, row_end, col0,
                                 self.n_total, layer)

    def before_mainloop(self, tile) -> list:
        """The sub-tiles issued before the tile's mainloop (aux_in_registers_before_mainloop: the first)."""
        if const_expr(aux_in_registers_before_mainloop(self.cfg, self.epi, rows_scaled=self.rows_scaled)):
            return [self.load(tile, 0)]
        return []

    def after_mainloop(self, tile) -> list:
        """The sub-tiles issued right after the mainloop (aux_loaded_after_mainloop), else none."""
        if const_expr(aux_loaded_after_mainloop(self.cfg, self.epi, rows_scaled=self.rows_scaled)):
            return self.during_last_k_tile(tile)
        return []

    def during_last_k_tile(self, tile) -> list:
        """The sub-tiles issued while the last K tile's WGMMAs run (aux_loaded_during_last_k_tile:
        a 128x256x64 k-block is ~2K tensor-core cycles, enough to cover an L2 hit for the first
        sub-tiles, the producer having prefetched the input into L2)."""
        depth = aux_depth(self.mAux, self.frag_size, AUX_INFLIGHT_BYTES)
        return [self.load(tile, i) for i in range(min(depth, self.num_epi))]

    def next(self, aux_q: list, tile, e: int):
        """The epilogue input of sub-tile `e` (called by the epilogue driver where it is first
        needed).  Cooperative tiles keep as many sub-tiles in flight as were issued first
        (`aux_q`): the one `depth` ahead is issued here, and loads while this one is computed
        and stored.  Ping-pong loads it now: its epilogue overlaps the other warpgroup's
        mainloop, and inputs in flight make ptxas spill there."""
        if const_expr(self.pingpong):
            return self.load(tile, e)
        depth = len(aux_q)
        cur = aux_q.pop(0)
        if const_expr(e + depth < self.num_epi):
            aux_q.append(self.load(tile, e + depth))
        return cur
