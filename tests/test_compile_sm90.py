"""Every SM90 GEMM variant compiles for sm_90a without a GPU, and the PTX holds what
the design says: WGMMA, TMA loads (multicast when clustered) and stores, setmaxnreg,
stmatrix, no local memory; ptxas (where installed) reports no spills."""
import itertools
import re

import pytest

from cute_kernels.compile import KernelKey, get_compiled
from cute_kernels.config import GemmConfig
from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.inspect_ptx import find_ptxas, kernel_ptx, ptxas_info

EPILOGUES = {
    "identity": EpilogueSpec("identity"),
    "srelu": EpilogueSpec("srelu"),
    "srelu_preact": EpilogueSpec("srelu", store_preact=True),
    "srelu_preact_scale": EpilogueSpec("srelu", store_preact=True, row_scale=True),
    "dsrelu": EpilogueSpec("dsrelu"),
    "dsrelu_postact": EpilogueSpec("dsrelu", store_postact=True),
}
SCHEDULES = {
    "coop128x256": dict(tile_m=128, tile_n=256, schedule="cooperative"),
    "pingpong64x256": dict(tile_m=64, tile_n=256, schedule="pingpong"),
}
CLUSTERS = {False: [(1, 2), (2, 1)], True: [(1, 1), (1, 2)]}

VARIANTS = [
    (grouped, epi, sched, cl)
    for grouped in (False, True)
    for epi, sched, cl in itertools.product(EPILOGUES, SCHEDULES, CLUSTERS[grouped])
]


def _key(grouped, epi, sched, cluster, dtype="bfloat16", a_major="k", b_major="k"):
    cfg = GemmConfig(**SCHEDULES[sched], cluster_m=cluster[0], cluster_n=cluster[1])
    return KernelKey("sm90", cfg, EPILOGUES[epi], grouped, dtype, a_major, b_major)


def _check_ptx(ptx: str, key: KernelKey):
    cfg, epi = key.cfg, key.epi
    dt = "bf16" if key.dtype == "bfloat16" else "f16"
    assert f"wgmma.mma_async.sync.aligned.m64n{cfg.tile_n}k16.f32.{dt}.{dt}" in ptx
    assert "cp.async.bulk.tensor" in ptx and "mbarrier" in ptx
    loads = [l for l in ptx.splitlines() if "cp.async.bulk.tensor" in l and "mbarrier::complete_tx" in l]
    assert len(loads) >= 2, "TMA loads of A and B completing on an mbarrier"
    stores = len([l for l in ptx.splitlines() if "cp.async.bulk.tensor" in l and ".global.shared::cta" in l])
    per_tile = epi.num_outputs * cfg.tile_n // cfg.epi_n
    assert stores == per_tile, f"one TMA store per output and epilogue sub-tile ({per_tile}), found {stores}"
    if cfg.cluster_size > 1:
        assert ".multicast::cluster" in ptx
    else:
        assert ".multicast::cluster" not in ptx
    assert re.search(r"setmaxnreg\.dec\.sync\.aligned\.u32\s+40;", ptx), "producer gives registers away"
    assert re.search(r"setmaxnreg\.inc\.sync\.aligned\.u32\s+232;", ptx), "consumers take registers"
    assert "stmatrix.sync.aligned" in ptx
    assert ".local" not in ptx, "local memory in PTX"


@pytest.mark.parametrize("grouped,epi,sched,cluster", VARIANTS,
                         ids=[f"{'grouped' if g else 'dense'}-{e}-{s}-c{c[0]}x{c[1]}" for g, e, s, c in VARIANTS])
def test_variant_compiles_and_ptx_is_as_designed(grouped, epi, sched, cluster):
    key = _key(grouped, epi, sched, cluster)
    ptx = kernel_ptx(key)
    _check_ptx(ptx, key)
    if find_ptxas() is not None:
        info = ptxas_info(ptx)
        assert info.spill_store_bytes == 0 and info.spill_load_bytes == 0, info.raw[-600:]
        assert info.stack_bytes == 0, info.raw[-600:]
        assert "C7519" not in info.raw, "ptxas injected warpgroup.arrive (accumulator touched between WGMMAs)"


@pytest.mark.parametrize("dtype,a_major,b_major", [("float16", "k", "k"), ("bfloat16", "k", "n"), ("bfloat16", "m", "k"),
                                                   ("bfloat16", "m", "n")])
def test_other_dtypes_and_operand_majorness_compile(dtype, a_major, b_major):
    key = _key(False, "srelu_preact", "coop128x256", (1, 2), dtype=dtype, a_major=a_major, b_major=b_major)
    _check_ptx(kernel_ptx(key), key)


def test_compiled_kernels_are_cached():
    key = _key(False, "identity", "coop128x256", (1, 2))
    assert get_compiled(key) is get_compiled(key)
