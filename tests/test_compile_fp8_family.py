"""Block-scaled FP8 inside the GEMM family (Sm90Gemm with the mainloop of
cute_kernels/sm90/mainloop_fp8.py and the quantizing output codec of EpilogueSpec) compiles for
sm_90a without a GPU, dense and grouped, and its PTX holds what the design says: e4m3/e5m2
WGMMA, TMA loads and one TMA store per output and epilogue sub-tile, the overlapped
promotion (wait_group 1 and a drain with wait_group 0), saturating FP8 converts and the lane
reduction of the amax for a quantized output, no local memory; ptxas (where installed)
reports no spills (the FC1 with the tanh clamp as well; the fused dgrad refuses that activation).  Configs the FP8 mainloop cannot run are refused with every reason."""
import dataclasses
import re

import pytest

from cute_kernels.compile import KernelKey, build_kernel
from cute_kernels.config import ConfigError
from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.inspect_ptx import find_ptxas, kernel_ptx, ptxas_info
from cute_kernels.sm90.config import FP8_DEFAULT_CONFIG

E4M3, E5M2 = "float8_e4m3fn", "float8_e5m2"
WIDE = dataclasses.replace(FP8_DEFAULT_CONFIG, tile_n=256, cluster_m=2, cluster_n=1)
# 256x128 tiles: each warpgroup two 64-row waves, promoted one after the other (split-M mainloop)
TALL = dataclasses.replace(FP8_DEFAULT_CONFIG, tile_m=256)
TANH = "tanh_srelu:4.0"


def _key(epi, *, grouped=False, cfg=FP8_DEFAULT_CONFIG, a=E4M3, b="", majors=("k", "k"), arch="sm90", **kw):
    return KernelKey(arch, cfg, epi, grouped, a, *majors, out_dtype="bfloat16", b_dtype=b, **kw)


VARIANTS = {
    "identity-c1x2": _key(EpilogueSpec("identity")),
    "identity-c2x1-epi64": _key(EpilogueSpec("identity"),
                                cfg=dataclasses.replace(FP8_DEFAULT_CONFIG, cluster_m=2, cluster_n=1, epi_n=64)),
    "act-preact-q-c1x2": _key(EpilogueSpec("act", store_preact=True, quantized="postact")),
    "act-q-pow2-c1x1": _key(EpilogueSpec("act", quantized="postact", pow2_scales=True),
                            cfg=dataclasses.replace(FP8_DEFAULT_CONFIG, cluster_n=1)),
    # gradients in e5m2 against e4m3 weights; the output quantized to e5m2
    "identity-q-e5m2-grad": _key(EpilogueSpec("identity", quantized="out", q_format="e5m2"), a=E5M2, b=E4M3),
    # grouped along M (one weight and one 128x128 scale grid per expert), router probability
    "grouped-act-scale-q": _key(EpilogueSpec("act", row_scale=True, quantized="postact"), grouped=True),
    "grouped-identity-c1x1": _key(EpilogueSpec("identity"), grouped=True,
                                  cfg=dataclasses.replace(FP8_DEFAULT_CONFIG, cluster_n=1)),
    # 128x256 tiles: the split-N mainloop (one scratch accumulator promoted per 128-column block)
    "wide-identity-c2x1": _key(EpilogueSpec("identity"), cfg=WIDE),
    "wide-act-preact-q": _key(EpilogueSpec("act", store_preact=True, quantized="postact"), cfg=WIDE),
    "grouped-wide-act-scale-q": _key(EpilogueSpec("act", row_scale=True, quantized="postact"), grouped=True,
                                     cfg=dataclasses.replace(WIDE, cluster_m=1, cluster_n=2)),
    # 256x128 tiles: the split-M mainloop (each warpgroup's two 64-row waves through one scratch accumulator)
    "tall-identity-c1x2": _key(EpilogueSpec("identity"), cfg=TALL),
    "tall-act-q-c2x1": _key(EpilogueSpec("act", quantized="postact"),
                            cfg=dataclasses.replace(TALL, cluster_m=2, cluster_n=1)),
    "grouped-tall-identity": _key(EpilogueSpec("identity"), grouped=True, cfg=TALL),
    "grouped-tall-act-scale-q": _key(EpilogueSpec("act", row_scale=True, quantized="postact"), grouped=True, cfg=TALL),
    "tall-act-preact-epi64": _key(EpilogueSpec("act", store_preact=True), cfg=dataclasses.replace(TALL, epi_n=64)),
    # FC1 with the tanh clamp (the FP8 step's other activation; tanh.approx in the epilogue, 128
    # accumulator registers per thread at most: the 128x256 tile is its widest)
    "act-tanh-preact-q-c1x2": _key(EpilogueSpec("act", store_preact=True, quantized="postact", activation=TANH)),
    "grouped-act-tanh-scale-q": _key(EpilogueSpec("act", row_scale=True, quantized="postact", activation=TANH),
                                     grouped=True),
    "wide-act-tanh-preact-q-pow2": _key(EpilogueSpec("act", store_preact=True, quantized="postact", pow2_scales=True,
                                                     activation=TANH), cfg=WIDE),
    # the FC2 data gradient with dSReLU, router gradient and postact recompute (preact read as input)
    "dact-postact-scale-rowsum-e5m2": _key(EpilogueSpec("dact", store_postact=True, row_scale=True, row_sum=True),
                                           a=E5M2, b=E4M3),
    "grouped-dact-scale-rowsum": _key(EpilogueSpec("dact", row_scale=True, row_sum=True), grouped=True),
    "dact-q-dpreact": _key(EpilogueSpec("dact", quantized="dpreact")),
    # the K tiles' scales staged in shared memory with the operands (KernelKey.scales_smem: sm90/scale_stage.py)
    "smem-scales-identity-c1x2": _key(EpilogueSpec("identity"), scales_smem=True),
    "smem-scales-wide-identity-c2x1": _key(EpilogueSpec("identity"), cfg=WIDE, scales_smem=True),
    "grouped-smem-scales-act-scale-q": _key(EpilogueSpec("act", row_scale=True, quantized="postact"), grouped=True,
                                            scales_smem=True),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_family_fp8_variant_compiles_and_ptx_is_as_designed(name):
    key = VARIANTS[name]
    fa, fb = key.operand_formats
    ptx = kernel_ptx(key)
    cfg, epi = key.cfg, key.epi
    # one WGMMA atom per 128-column N block
    assert f"wgmma.mma_async.sync.aligned.m64n128k32.f32.{fa}.{fb}" in ptx
    loads = [ln for ln in ptx.splitlines() if "cp.async.bulk.tensor" in ln and "mbarrier::complete_tx" in ln]
    assert len(loads) >= 2
    stores = len([ln for ln in ptx.splitlines() if "cp.async.bulk.tensor" in ln and ".global.shared::cta" in ln])
    assert stores == len(epi.outputs) * cfg.tile_n // cfg.epi_n, "one TMA store per output and sub-tile"
    assert ("multicast::cluster" in ptx) == (cfg.cluster_size > 1)
    assert re.search(r"setmaxnreg\.dec\.sync\.aligned\.u32\s+40;", ptx)
    assert re.search(r"setmaxnreg\.inc\.sync\.aligned\.u32\s+232;", ptx)
    # 128x128: overlapped promotion (the older of two K tiles' groups waited for, a drain at the
    # end); 128x256: split-N, each block's group waited for before its promotion; 256x128: split-M,
    # each wave's group waited for before its promotion (a K tile: 2 waves x 4 k blocks of WGMMAs)
    assert bool(re.search(r"wgmma\.wait_group\.sync\.aligned\s+1;", ptx)) == (cfg.tile_n == 128 and cfg.tile_m == 128)
    if cfg.tile_m == 256:
        assert len(re.findall(r"wgmma\.mma_async\.", ptx)) == 8, "one K tile's WGMMAs: two waves of four k blocks"
    assert re.search(r"wgmma\.wait_group\.sync\.aligned\s+0;", ptx)
    if epi.quantized:
        assert f"cvt.rn.satfinite.{epi.q_format}x2.f32" in ptx, "saturating FP8 convert of the quantized output"
        assert "shfl.sync.bfly" in ptx, "row amax reduced over the lanes sharing a row"
        assert "xorsign" not in ptx, "xorsign max in the quantized output's amax (loses signed maxima)"
    if epi.plain_outputs:
        assert "stmatrix.sync.aligned" in ptx
    if epi.kind == "act":  # the activation's own math: tanh.approx for the clamp, none for relu^2
        assert ("tanh.approx.f32" in ptx) == (epi.activation.name == "tanh_srelu")
    assert ".local" not in ptx
    if find_ptxas() is not None:
        info = ptxas_info(ptx)
        assert info.spill_store_bytes == 0 and info.spill_load_bytes == 0, info.raw[-600:]
        assert info.stack_bytes == 0, info.raw[-600:]
        assert "C7519" not in info.raw, "ptxas injected warpgroup.arrive (accumulator touched between WGMMAs)"
        assert "C7514" not in info.raw, "ptxas serialized the WGMMAs (accumulator read while its group is in flight)"


@pytest.mark.parametrize("change,reason", [
    (dict(cfg=dataclasses.replace(FP8_DEFAULT_CONFIG, tile_n=192)), "tile_n"),
    (dict(cfg=dataclasses.replace(FP8_DEFAULT_CONFIG, tile_k=64)), "tile_k"),
    (dict(cfg=dataclasses.replace(FP8_DEFAULT_CONFIG, tile_m=64)), "cooperative 128- or 256-row"),
    (dict(cfg=dataclasses.replace(TALL, tile_n=256)), "256-row tiles are 128 wide"),
    (dict(cfg=TALL, epi=EpilogueSpec("dact")), "activation-derivative epilogue runs 128-row"),
    (dict(cfg=TALL, epi=EpilogueSpec("act", store_preact=True, quantized="postact")), "quantize a single output"),
    (dict(cfg=dataclasses.replace(TALL, epi_n=64), epi=EpilogueSpec("act", quantized="postact")),
     "32-column sub-tiles"),
    (dict(cfg=dataclasses.replace(FP8_DEFAULT_CONFIG, tile_m=128, schedule="pingpong")), "ping-pong 64-row"),
    (dict(cfg=dataclasses.replace(FP8_DEFAULT_CONFIG, tile_m=64, schedule="pingpong"),
          epi=EpilogueSpec("act", quantized="postact")), "unquantized outputs"),
    (dict(cfg=dataclasses.replace(FP8_DEFAULT_CONFIG, cluster_m=2, cluster_n=2)), "clusters"),
    (dict(majors=("m", "k")), "K-major"),
    (dict(epi=EpilogueSpec("identity", accumulate=True)), "accumulate"),
    (dict(epi=EpilogueSpec("dact"), cfg=WIDE), "activation-derivative"),
    (dict(epi=EpilogueSpec("dact", activation="tanh_srelu:4.0")), "relu\\^2 only"),
    (dict(arch="sm100"), "no block-scaled FP8"),
])
def test_configs_the_fp8_mainloop_cannot_run_are_refused(change, reason):
    kw = dict(epi=EpilogueSpec("identity"))
    kw.update(change)
    with pytest.raises(ConfigError, match=reason):
        build_kernel(_key(**kw))


def test_fp8_key_carries_precision_and_codec():
    key = VARIANTS["identity-q-e5m2-grad"]
    assert key.block_scaled and key.operand_formats == ("e5m2", "e4m3") and key.d_dtype == "bfloat16"
    assert "+q:out:e5m2" in key.epi.key()
    bf16 = KernelKey("sm90", FP8_DEFAULT_CONFIG, EpilogueSpec("identity"), False, "bfloat16", "k", "k")
    assert not bf16.block_scaled and bf16.operand_formats is None and bf16 != VARIANTS["identity-c1x2"]


def test_quantized_output_must_be_an_output_of_the_epilogue():
    with pytest.raises(ValueError, match="quantized output"):
        EpilogueSpec("act", quantized="preact")
    with pytest.raises(ValueError, match="q_format"):
        EpilogueSpec("identity", quantized="out", q_format="e3m4")


def test_256_row_tiles_are_their_own_unverified_variant():
    """The 256x128 tile runs its own mainloop (split-M): no hardware evidence of the 128-row tiles
    covers it, so its first launch is self-checked (cute_kernels/selfcheck.py)."""
    from cute_kernels.selfcheck import is_verified, variant_name, verified_table

    table = verified_table()
    for name in ("tall-identity-c1x2", "tall-act-q-c2x1", "grouped-tall-identity"):
        tall = VARIANTS[name]
        assert "/cooperative256-" in variant_name(tall) and not is_verified("sm90", variant_name(tall), table)
        short = dataclasses.replace(tall, cfg=dataclasses.replace(tall.cfg, tile_m=128))
        assert "/cooperative-" in variant_name(short) and is_verified("sm90", variant_name(short), table)
