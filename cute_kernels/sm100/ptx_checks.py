"""What the PTX of an sm100 kernel must hold, as a list of what is wrong (empty: as designed).
Used by tests/test_compile_sm100.py and the autotuner's compile-only sweep."""
from __future__ import annotations

import re


def tma_load_lines(ptx: str) -> list[str]:
    return [ln for ln in ptx.splitlines() if "cp.async.bulk.tensor" in ln and "mbarrier::complete_tx" in ln]


def tma_store_lines(ptx: str) -> list[str]:
    return [ln for ln in ptx.splitlines() if "cp.async.bulk.tensor" in ln and ".global.shared::cta" in ln]


def structure_errors(ptx: str, key) -> list[str]:
    """Every way `ptx` differs from the design of the kernel `key` names."""
    cfg, epi = key.cfg, key.epi
    g = cfg.cta_group
    errs = []
    mmas = set(re.findall(r"tcgen05\.mma\.cta_group::(\d)", ptx))
    if mmas != {str(g)}:
        errs.append(f"tcgen05.mma cta_group {sorted(mmas)}, expected {g}")
    for what in (f"tcgen05.alloc.cta_group::{g}", f"tcgen05.dealloc.cta_group::{g}",
                 f"tcgen05.relinquish_alloc_permit.cta_group::{g}", "tcgen05.ld.sync.aligned", "tcgen05.commit"):
        if what not in ptx:
            errs.append(f"no {what}")
    loads = tma_load_lines(ptx)
    if len(loads) < 2:
        errs.append(f"{len(loads)} TMA loads completing on an mbarrier (A and B expected)")
    want_mcast = cfg.cluster_n > 1 or cfg.cluster_m // g > 1
    if any(".multicast::cluster" in ln for ln in loads) != want_mcast:
        errs.append(f"multicast TMA loads {'missing' if want_mcast else 'present'} for cluster "
                    f"{cfg.cluster_m}x{cfg.cluster_n}, cta_group {g}")
    stores = len(tma_store_lines(ptx))
    if stores != epi.num_outputs:  # in the run-time loop over a tile's epilogue sub-tiles
        errs.append(f"{stores} TMA stores, expected one per output ({epi.num_outputs}) in the sub-tile loop")
    if re.search(r"\.local\b|ld\.local|st\.local", ptx):
        errs.append("local memory in PTX")
    if key.grouped_k and "tensormap.replace.tile.global_dim" not in ptx:
        errs.append("K-grouped kernel writes no cut TMA descriptors")
    if epi.row_sum and "atom.global" in ptx:
        errs.append("row sum uses atomics (partials must be written once each)")
    return errs
