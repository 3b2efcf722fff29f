"""The block-scaled FP8 kernel with its scales staged in shared memory (`KernelKey.scales_smem`,
cute_kernels/sm90/scale_stage.py) compiles for sm_90a without a GPU and its PTX holds what the
design says: the consumers read the K tile's scales with ld.shared (no global load of a scale
left: the default kernel's consumers load them with ld.global), the producer warp copies them with
4-byte cp.async and arrives on the stage's full barrier with cp.async.mbarrier.arrive.noinc.  The
variants' generic checks (WGMMA, TMA, promotion, ptxas: no spills, no C7514 / C7519) are in
tests/test_compile_fp8_family.py.  Tiles the staged scales do not serve are refused; the switch
(CUTE_KERNELS_FP8_SMEM_SCALES / fp8.ops.smem_scales) picks the kernel only where it can run; the
variant is its own unverified self-check variant; its slots fit shared memory."""
import dataclasses
import re

import pytest

from cute_kernels.compile import build_kernel
from cute_kernels.config import ConfigError
from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.inspect_ptx import kernel_ptx
from cute_kernels.sm90.config import (FP8_DEFAULT_CONFIG, FP8_SCALE_SLOT_BYTES, SMEM_CAPACITY, block_scaled_ab_stages,
                                      block_scaled_smem_bytes)
from test_compile_fp8_family import TALL, VARIANTS, WIDE, _key


def _count(pattern, ptx):
    return len(re.findall(pattern, ptx))


@pytest.mark.parametrize("name,default", [("smem-scales-identity-c1x2", "identity-c1x2"),
                                          ("smem-scales-wide-identity-c2x1", "wide-identity-c2x1")])
def test_scales_are_read_from_shared_memory_not_global(name, default):
    smem, base = kernel_ptx(VARIANTS[name]), kernel_ptx(VARIANTS[default])
    # the default kernel's consumers load SA and SB (fp32) from global memory in the K loop; the
    # plain epilogue loads nothing else, so with the staged scales no 32-bit global load is left
    assert _count(r"ld\.global[.a-z:0-9]*\.b32", base) > 0
    assert _count(r"ld\.global[.a-z:0-9]*\.b32", smem) == 0
    assert _count(r"cp\.async\.mbarrier\.arrive\.noinc", base) == 0
    # consumers: a K tile's two row scales and B's block scale(s) from the stage's slot
    assert _count(r"ld\.shared[.a-z:0-9]*\.b32", smem) >= 3
    # producer: 4-byte cp.async of the 128 row scales (4 per lane) and B's, then the lane's arrival
    copies = re.findall(r"cp\.async\.ca\.shared\.global[^;]*;", smem)
    assert copies and all(c.rstrip(";").replace(" ", "").endswith(",4") for c in copies), copies[:2]
    assert _count(r"cp\.async\.mbarrier\.arrive\.noinc\.shared(::cta)?\.b64", smem) >= 1


@pytest.mark.parametrize("change,reason", [
    (dict(cfg=TALL), "scales_smem"),
    (dict(cfg=dataclasses.replace(FP8_DEFAULT_CONFIG, tile_m=64, schedule="pingpong")), "scales_smem"),
    (dict(b_scale="row"), "scales_smem"),
])
def test_tiles_the_staged_scales_do_not_serve_are_refused(change, reason):
    kw = dict(epi=EpilogueSpec("identity"), scales_smem=True)
    kw.update(change)
    with pytest.raises(ConfigError, match=reason):
        build_kernel(_key(**kw))


@pytest.mark.parametrize("cfg", [FP8_DEFAULT_CONFIG, WIDE])
@pytest.mark.parametrize("epi", [EpilogueSpec("identity"), EpilogueSpec("act", store_preact=True, quantized="postact")])
def test_scale_slots_fit_shared_memory(cfg, epi):
    stages = block_scaled_ab_stages(cfg, epi, scales_smem=True)
    assert 2 <= stages <= block_scaled_ab_stages(cfg, epi)
    with_slots = block_scaled_smem_bytes(cfg, epi, ab_stages=stages, scales_smem=True)
    assert with_slots == block_scaled_smem_bytes(cfg, epi, ab_stages=stages) + stages * FP8_SCALE_SLOT_BYTES
    assert with_slots <= SMEM_CAPACITY


def test_switch_picks_the_staged_scales_where_the_tile_has_them():
    from cute_kernels.fp8.epilogue import Fp8Epilogue
    from cute_kernels.fp8.ops import _family_launch_key, smem_scales, smem_scales_switch

    epi = Fp8Epilogue(EpilogueSpec("identity"))

    def key(config=None):
        return _family_launch_key(epi, 1000, 384, 1040, 0, False, "e4m3", "e4m3", config, None)

    with smem_scales(False):
        assert not smem_scales_switch() and not key().scales_smem
        off = key(FP8_DEFAULT_CONFIG)
    with smem_scales(True):
        assert smem_scales_switch()
        on = key(FP8_DEFAULT_CONFIG)
        assert on.scales_smem and dataclasses.replace(on, scales_smem=False) == off
        assert key(WIDE).scales_smem
        assert not key(TALL).scales_smem, "256-row tiles have no staged scales: the switch leaves them be"


def test_staged_scales_are_their_own_unverified_variant():
    from cute_kernels.selfcheck import is_verified, variant_name, verified_table

    table = verified_table()
    for name, default in (("smem-scales-identity-c1x2", "identity-c1x2"),
                          ("grouped-smem-scales-act-scale-q", "grouped-act-scale-q")):
        staged = variant_name(VARIANTS[name])
        assert "+smemscales" in staged and not is_verified("sm90", staged, table)
        assert is_verified("sm90", variant_name(VARIANTS[default]), table)
