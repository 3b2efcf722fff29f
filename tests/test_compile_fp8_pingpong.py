"""The block-scaled FP8 kernel on ping-pong 64-row tiles (each consumer warpgroup its own 64 x N tile,
the two warpgroups' mainloops in turn so that one's epilogue runs under the other's WGMMAs: the
cooperative kernel's tensor pipe idles through each tile's epilogue) compiles for sm_90a without a
GPU, dense and grouped, 128- and 256-wide, plain and the fused FC2 data gradient; PTX as designed
(one warpgroup per tile: m64 WGMMAs, the overlapped promotion for 128-wide tiles, the split-N one for
256-wide), ptxas without spills or serialized WGMMAs.  Unquantized outputs only (the quantizing
codec's amax reduction spans the cooperative tile's two warpgroups' rows).  On the H200 (2026-12-03
19:27) they are bitwise equal to the cooperative tile and slower (dense 828 vs 1132 TFLOP/s, grouped
E=8 624 vs 871): not searched, not the default."""
import dataclasses
import re

import pytest

from cute_kernels.compile import build_kernel
from cute_kernels.config import ConfigError
from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.inspect_ptx import find_ptxas, kernel_ptx, ptxas_info
from cute_kernels.sm90.config import FP8_DEFAULT_CONFIG
from test_compile_fp8_family import E4M3, E5M2, _key

PP = dataclasses.replace(FP8_DEFAULT_CONFIG, tile_m=64, schedule="pingpong")
PP_WIDE = dataclasses.replace(PP, tile_n=256, cluster_m=2, cluster_n=1)

VARIANTS = {
    "pp-identity-c1x2": _key(EpilogueSpec("identity"), cfg=PP),
    "pp-wide-identity-c2x1": _key(EpilogueSpec("identity"), cfg=PP_WIDE),
    "pp-grouped-identity": _key(EpilogueSpec("identity"), grouped=True, cfg=PP),
    "pp-dact-postact-scale-rowsum-e5m2": _key(EpilogueSpec("dact", store_postact=True, row_scale=True, row_sum=True),
                                              a=E5M2, b=E4M3, cfg=PP),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_pingpong_fp8_variant_compiles_and_ptx_is_as_designed(name):
    key = VARIANTS[name]
    fa, fb = key.operand_formats
    ptx = kernel_ptx(key)
    cfg = key.cfg
    n_blocks = cfg.tile_n // 128
    wgmma = re.findall(rf"wgmma\.mma_async\.sync\.aligned\.m64n128k32\.f32\.{fa}\.{fb}", ptx)
    # 4 k32 steps per 128-K tile; the overlapped loop traces its pair body, the odd tail and the drain
    assert len(wgmma) % 4 == 0 and len(wgmma) >= 4 * n_blocks
    assert bool(re.search(r"wgmma\.wait_group\.sync\.aligned\s+1;", ptx)) == (n_blocks == 1)
    assert re.search(r"setmaxnreg\.inc\.sync\.aligned\.u32\s+232;", ptx)
    assert "mbarrier.arrive" in ptx  # the order barrier handing the tensor pipe over
    assert ".local" not in ptx
    if find_ptxas() is not None:
        info = ptxas_info(ptx)
        assert info.spill_store_bytes == 0 and info.spill_load_bytes == 0, info.raw[-600:]
        assert "C7519" not in info.raw, "ptxas injected warpgroup.arrive (accumulator touched between WGMMAs)"
        assert "C7514" not in info.raw, "ptxas serialized the WGMMAs (accumulator read while its group is in flight)"


@pytest.mark.parametrize("epi,match", [
    (EpilogueSpec("act", store_preact=True, quantized="postact"), "unquantized outputs"),
    (EpilogueSpec("dact", quantized="dpreact"), "unquantized outputs"),
])
def test_pingpong_refuses_the_quantizing_codec(epi, match):
    with pytest.raises(ConfigError, match=match):
        build_kernel(_key(epi, cfg=PP))


def test_pingpong_tiles_run_when_named_but_are_not_searched():
    """H200 2026-12-03: 0.73x the cooperative tile (dense and grouped), so the tuner does not spend
    trials on them; a config naming them round-trips through the space's parameters."""
    from cute_kernels.sm90 import space_fp8

    assert space_fp8.GRID["schedule"] == ["cooperative"]
    cfg = space_fp8.to_config({**{k: v[0] for k, v in space_fp8.GRID.items()}, "schedule": "pingpong"})
    assert cfg.schedule == "pingpong" and cfg.tile_m == 64
    assert space_fp8.to_params(cfg)["schedule"] == "pingpong"


def test_pingpong_variants_are_self_checked_until_a_hardware_run():
    """No hardware run had FP8 ping-pong tiles: the evidence table's FP8 patterns name the
    cooperative schedule, so these variants take the first-use self-check."""
    from cute_kernels.selfcheck import is_verified, variant_name, verified_table

    table = verified_table()
    for key in VARIANTS.values():
        assert "/pingpong-" in variant_name(key) and not is_verified("sm90", variant_name(key), table)
        coop = dataclasses.replace(key, cfg=dataclasses.replace(key.cfg, tile_m=128, schedule="cooperative"))
        assert is_verified("sm90", variant_name(coop), table)
