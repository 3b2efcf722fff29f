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


def test_staged_scales_are_their_own_variant_with_their_own_evidence():
    """The staged variants are named apart (`+smemscales`): the global-load kernel's patterns do not
    vouch for them; their own patterns name the epilogue kinds their H200 runs passed (2026-12-03:
    plain GEMM, FC1 with FP8 postact, the dsrelu dgrad), so an epilogue kind of its own added later
    (here a made-up "newkind" key) is self-checked on first use."""
    from cute_kernels.selfcheck import is_verified, variant_name, verified_table

    table = verified_table()
    without_own = {"sm90": [p for p in table["sm90"] if "smemscales" not in p]}
    for name, default in (("smem-scales-identity-c1x2", "identity-c1x2"),
                          ("smem-scales-wide-identity-c2x1", "wide-identity-c2x1"),
                          ("grouped-smem-scales-act-scale-q", "grouped-act-scale-q")):
        staged = variant_name(VARIANTS[name])
        assert "+smemscales" in staged and not is_verified("sm90", staged, without_own)
        assert is_verified("sm90", staged, table)
        assert is_verified("sm90", variant_name(VARIANTS[default]), table)
    dgrad = variant_name(dataclasses.replace(VARIANTS["grouped-dact-scale-rowsum"], scales_smem=True))
    assert is_verified("sm90", dgrad, table) and not is_verified("sm90", dgrad, without_own)
    assert not is_verified("sm90", dgrad.replace("/dsrelu", "/newkind"), table)


def _fake_sass(body: list[str]) -> str:
    lines = ["        /*0000*/                   MOV R1, c[0x0][0x28] ;", ".L_x_7:"]
    lines += [f"        /*{16 * (i + 1):04x}*/                   {ins} ;" for i, ins in enumerate(body)]
    lines.append(f"        /*{16 * (len(body) + 1):04x}*/               @P0 BRA `(.L_x_7) ;")
    lines.append(f"        /*{16 * (len(body) + 2):04x}*/                   EXIT ;")
    return "\n".join(lines)


def test_sass_k_loop_counter_counts_per_k_tile():
    """scripts/sass_fp8_kloop.py (the SASS figures of docs/fp8.md): a loop of two K tiles' QGMMAs,
    promotions and scale loads counted per K tile; a loop without them is not the K loop."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "sass_fp8_kloop.py")
    spec = importlib.util.spec_from_file_location("sass_fp8_kloop", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    body = (["QGMMA.64x128x32.F32.E4M3.E4M3 R88, gdesc[UR16], R88"] * 8 + ["FFMA R1, R2, R3, R1"] * 128
            + ["LDG.E R4, desc[UR4][R6.64]"] * 6 + ["@!P0 SYNCS.ARRIVE.TRANS64.RED.A1T0 RZ, [R7+URZ], RZ"] * 2)
    c = mod.k_loop_counts(_fake_sass(body))
    assert c["k_tiles"] == 2 and c["ffma"] == 64 and c["ops"] == {"LDG": 6, "SYNCS": 2, "BRA": 1}
    assert c["other"] == 4.5 and c["total"] == (len(body) + 1) / 2
    wide = mod.k_loop_counts(_fake_sass(body), n_blocks=2)
    assert wide["k_tiles"] == 1 and wide["ffma"] == 128
    with pytest.raises(ValueError, match="no loop"):
        mod.k_loop_counts(_fake_sass(["QGMMA.64x128x32.F32.E4M3.E4M3 R88, gdesc[UR16], R88"] * 4))
