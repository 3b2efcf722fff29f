"""The SM100 (Blackwell) GEMM family compiles for sm_100a without a GPU, and the PTX holds what
the design says: tcgen05.mma with the config's cta_group, tcgen05.ld, TMEM alloc / dealloc /
relinquish, TMA loads (multicast iff the cluster shares an operand) and one TMA store per output
in the run-time sub-tile loop, no local memory; ptxas reports no spills and no stack.

The variant matrix covers every axis (dense / grouped / K-grouped, each epilogue, 1-CTA and
2-CTA, four cluster shapes, fp16, the transposed operand views, the tanh-clamped activation) in 21 compiles (~2 minutes
on 2 cores); CUTE_KERNELS_SM100_FULL=1 compiles the full product instead.  Compiles are cached
per process (one PTX per key for every test that checks it)."""
import functools
import itertools
import os
import re

import pytest

from cute_kernels.compile import KernelKey, build_kernel
from cute_kernels.config import ConfigError, GemmConfig
from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.inspect_ptx import find_ptxas, kernel_ptx, ptxas_info
from cute_kernels.sm100 import config as c100
from cute_kernels.sm100.config import Sm100Config

EPILOGUES = {
    "identity": EpilogueSpec("identity"),
    "accumulate": EpilogueSpec("identity", accumulate=True),
    "srelu": EpilogueSpec("srelu"),
    "srelu_preact": EpilogueSpec("srelu", store_preact=True),
    "srelu_preact_scale": EpilogueSpec("srelu", store_preact=True, row_scale=True),
    "dsrelu": EpilogueSpec("dsrelu"),
    "dsrelu_postact": EpilogueSpec("dsrelu", store_postact=True),
    "dsrelu_scale_rowsum": EpilogueSpec("dsrelu", row_scale=True, row_sum=True),
    "dsrelu_postact_scale_rowsum": EpilogueSpec("dsrelu", store_postact=True, row_scale=True, row_sum=True),
    # the soft-clamped squared ReLU, through the same hooks
    "tanh_act_preact_scale": EpilogueSpec("act", store_preact=True, row_scale=True, activation="tanh_srelu:4.0"),
    "tanh_dact_postact_scale_rowsum": EpilogueSpec("dact", store_postact=True, row_scale=True, row_sum=True,
                                                   activation="tanh_srelu:4.0"),
}
MMA = {  # (cta_group, cluster_m, cluster_n)
    "1cta_c1x1": (1, 1, 1), "1cta_c1x2": (1, 1, 2), "1cta_c2x1": (1, 2, 1),
    "2cta_c2x1": (2, 2, 1), "2cta_c2x2": (2, 2, 2), "2cta_c4x1": (2, 4, 1),
}
# (grouping, epilogue, mma, dtype, a_major, b_major, out_dtype)
VARIANTS = [
    ("dense", "identity", "1cta_c1x1", "bfloat16", "k", "k", ""),
    ("dense", "identity", "2cta_c2x1", "bfloat16", "k", "k", ""),
    ("dense", "srelu_preact", "1cta_c1x2", "bfloat16", "k", "k", ""),
    ("dense", "srelu_preact_scale", "2cta_c2x2", "bfloat16", "k", "k", ""),
    ("dense", "srelu", "2cta_c4x1", "bfloat16", "k", "k", ""),
    ("dense", "dsrelu", "1cta_c2x1", "bfloat16", "k", "n", ""),
    ("dense", "dsrelu_postact_scale_rowsum", "2cta_c2x1", "bfloat16", "k", "n", ""),
    ("dense", "accumulate", "2cta_c2x1", "bfloat16", "m", "n", "float32"),
    ("dense", "srelu_preact", "1cta_c1x1", "float16", "m", "n", ""),
    ("grouped", "srelu_preact_scale", "1cta_c1x2", "bfloat16", "k", "k", ""),
    ("grouped", "srelu_preact", "2cta_c2x1", "bfloat16", "k", "k", ""),
    ("grouped", "identity", "1cta_c1x1", "bfloat16", "k", "k", ""),
    ("grouped", "identity", "2cta_c2x2", "bfloat16", "m", "k", ""),
    ("grouped", "dsrelu_scale_rowsum", "1cta_c2x1", "bfloat16", "k", "n", ""),
    ("grouped", "dsrelu_postact", "2cta_c2x1", "bfloat16", "k", "n", ""),
    ("dense", "tanh_act_preact_scale", "2cta_c2x1", "bfloat16", "k", "k", ""),
    ("grouped", "tanh_dact_postact_scale_rowsum", "1cta_c1x2", "bfloat16", "k", "n", ""),
    ("grouped_k", "identity", "1cta_c1x1", "bfloat16", "m", "n", "float32"),
    ("grouped_k", "accumulate", "2cta_c2x1", "bfloat16", "m", "n", "float32"),
    ("grouped_k", "accumulate", "1cta_c1x2", "bfloat16", "m", "n", ""),
    ("grouped_k", "identity", "2cta_c2x2", "float16", "m", "n", ""),
]
if os.environ.get("CUTE_KERNELS_SM100_FULL") == "1":
    VARIANTS = [
        (g, e, mma, "bfloat16", *(("m", "n") if g == "grouped_k" else ("k", "n" if EPILOGUES[e].kind == "dact" else "k")),
         "float32" if e == "accumulate" else "")
        for g, e, mma in itertools.product(("dense", "grouped", "grouped_k"), EPILOGUES, MMA)
        if g != "grouped_k" or e in ("identity", "accumulate")
        if not (g == "grouped" and e == "accumulate")
    ]


def _key(grouping, epi, mma, dtype="bfloat16", a_major="k", b_major="k", out_dtype="", **cfg_over):
    cta_group, cm, cn = MMA[mma]
    cfg = Sm100Config(cta_group=cta_group, cluster_m=cm, cluster_n=cn, **cfg_over)
    return KernelKey("sm100", cfg, EPILOGUES[epi], grouping == "grouped", dtype, a_major, b_major,
                     out_dtype=out_dtype, grouped_k=grouping == "grouped_k")


@functools.lru_cache(maxsize=None)
def _ptx(key: KernelKey) -> str:
    return kernel_ptx(key)


def _tma_loads(ptx):
    return [ln for ln in ptx.splitlines() if "cp.async.bulk.tensor" in ln and "mbarrier::complete_tx" in ln]


def check_sm100_ptx(ptx: str, key: KernelKey) -> None:
    """Raise AssertionError unless `ptx` has the structure the design says (shared with the
    autotuner's compile-only sweep through cute_kernels.sm100.ptx_checks)."""
    from cute_kernels.sm100.ptx_checks import structure_errors

    errs = structure_errors(ptx, key)
    assert not errs, errs


@pytest.mark.parametrize("variant", VARIANTS, ids=["-".join(filter(None, v)) for v in VARIANTS])
def test_variant_compiles_and_ptx_is_as_designed(variant):
    key = _key(*variant)
    ptx = _ptx(key)
    check_sm100_ptx(ptx, key)
    g = key.cfg.cta_group
    assert f"tcgen05.mma.cta_group::{g}.kind::f16" in ptx
    assert f"tcgen05.mma.cta_group::{3 - g}" not in ptx
    assert f"tcgen05.alloc.cta_group::{g}" in ptx and f"tcgen05.dealloc.cta_group::{g}" in ptx
    assert f"tcgen05.relinquish_alloc_permit.cta_group::{g}" in ptx
    assert "tcgen05.ld.sync.aligned.32x32b" in ptx
    multicast = key.cfg.cluster_n > 1 or key.cfg.cluster_m // g > 1
    assert any(".multicast::cluster" in ln for ln in _tma_loads(ptx)) == multicast
    if find_ptxas() is not None:
        info = ptxas_info(ptx, "sm_100a")
        assert info.spill_store_bytes == 0 and info.spill_load_bytes == 0, info.raw[-600:]
        assert info.stack_bytes == 0, info.raw[-600:]


def test_ptx_check_catches_a_wrong_structure():
    """The shared structure check is not vacuous: a 1-CTA kernel's PTX fails the 2-CTA key's check,
    and PTX with local memory fails."""
    from cute_kernels.sm100.ptx_checks import structure_errors

    one = _key("dense", "identity", "1cta_c1x1")
    ptx = _ptx(one)
    assert structure_errors(ptx, one) == []
    two = _key("dense", "identity", "2cta_c2x1")
    assert any("cta_group" in e for e in structure_errors(ptx, two))
    assert any("local" in e for e in structure_errors(ptx + "\n\tld.local.u32 %r1, [%rd1];", one))


# ---------------------------------------------------------------- config space (no compiles)
def test_config_space_reasons():
    errs = c100.validation_errors
    assert errs(Sm100Config()) == []
    assert any("even cluster_m" in e for e in errs(Sm100Config(cta_group=2, cluster_m=1)))
    assert errs(Sm100Config(tile_n=256, acc_stages=2, cta_group=2, cluster_m=2)) == []  # 2 x 256 columns = 512
    assert any("shared memory" in e for e in errs(Sm100Config(ab_stages=8, tile_k=128), num_outputs=2))
    assert any("tile_m" in e for e in errs(Sm100Config(tile_m=64)))
    assert any("tile_n" in e for e in errs(Sm100Config(tile_n=96)))
    assert errs(Sm100Config(tile_n=64, epi_n=64)) == []
    assert any("portable" in e for e in errs(Sm100Config(cluster_m=4, cluster_n=4)))
    assert any("Sm100Config" in e for e in errs(GemmConfig()))


def test_tmem_budget_is_checked():
    """512 TMEM columns per SM: 2 stages x 256 fit; the rule trips past it (a stage count the
    space does not offer is reported as such, and the column rule is reached through tmem_columns)."""
    cfg = Sm100Config(tile_n=256, acc_stages=2)
    assert cfg.tmem_columns == c100.TMEM_COLUMNS
    assert c100.validation_errors(cfg) == []
    import dataclasses

    over = dataclasses.replace(cfg, acc_stages=3)
    assert any("acc_stages" in e for e in c100.validation_errors(over))


def test_defaults_are_valid_for_the_benchmark_shapes():
    for m, n, k, e in ((8192, 16384, 4096, 0), (8192, 4096, 16384, 0), (16384, 1856, 2688, 8), (512, 1856, 2688, 0),
                       (128, 64, 64, 0), (32768, 2688, 1856, 128)):
        cfg = c100.default_config(m, n, k, num_experts=e)
        for outs in (1, 2):
            assert c100.validation_errors(cfg, num_outputs=outs) == [], (m, n, k, cfg)
    assert c100.default_config(8192, 16384, 4096).cta_group == 2
    assert c100.default_config(128, 64, 64).cta_group == 1


def test_build_kernel_rejects_hopper_configs_and_bad_sm100_configs():
    with pytest.raises(ConfigError, match="Sm100Config"):
        build_kernel(KernelKey("sm100", GemmConfig(), EPILOGUES["identity"], False, "bfloat16", "k", "k"))
    with pytest.raises(ConfigError, match="even cluster_m"):
        build_kernel(KernelKey("sm100", Sm100Config(cta_group=2), EPILOGUES["identity"], False, "bfloat16", "k", "k"))
    with pytest.raises(ValueError, match="M-major"):
        build_kernel(KernelKey("sm100", Sm100Config(), EPILOGUES["identity"], False, "bfloat16", "k", "k",
                               grouped_k=True))


def test_one_process_compiles_both_arches():
    """compile_kernel passes --gpu-arch per compile, so sm_90a and sm_100a kernels come out of one
    process whatever CUTE_DSL_ARCH says."""
    sm100 = _ptx(_key("dense", "identity", "1cta_c1x1"))
    sm90 = kernel_ptx(KernelKey("sm90", GemmConfig(tile_n=128, cluster_n=1), EPILOGUES["identity"], False,
                                "bfloat16", "k", "k"))
    assert re.search(r"^\.target sm_100a", sm100, re.M) and "tcgen05.mma" in sm100
    assert re.search(r"^\.target sm_90a", sm90, re.M) and "wgmma.mma_async" in sm90
