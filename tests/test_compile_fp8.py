"""The FP8 GEMM (cute_kernels/sm90/fp8_gemm.py) compiles for sm_90a without a GPU and its
PTX holds what the design says: e4m3 WGMMA, TMA loads and one TMA store per output and
epilogue sub-tile, the promotion (WGMMAs waited for every K tile), saturating FP8 converts
for a quantized output, no local memory; ptxas (where installed) reports no spills."""
import dataclasses
import re

import pytest

from cute_kernels.config import ConfigError
from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.fp8.compile import FP8_DEFAULT_CONFIG, Fp8KernelKey, build_kernel, kernel_ptx
from cute_kernels.fp8.epilogue import Fp8Epilogue
from cute_kernels.inspect_ptx import find_ptxas, ptxas_info

IDENTITY = Fp8Epilogue(EpilogueSpec("identity"))
SRELU_Q_PREACT = Fp8Epilogue(EpilogueSpec("srelu", store_preact=True), quantized="postact")
VARIANTS = {
    "identity-c1x2": Fp8KernelKey(FP8_DEFAULT_CONFIG, IDENTITY),
    "identity-c2x1-epi64": Fp8KernelKey(dataclasses.replace(FP8_DEFAULT_CONFIG, cluster_m=2, cluster_n=1, epi_n=64),
                                        IDENTITY),
    "srelu-q-preact-c1x2": Fp8KernelKey(FP8_DEFAULT_CONFIG, SRELU_Q_PREACT),
    "srelu-q-pow2-c1x1": Fp8KernelKey(dataclasses.replace(FP8_DEFAULT_CONFIG, cluster_n=1),
                                      Fp8Epilogue(EpilogueSpec("srelu"), quantized="postact", pow2_scales=True)),
    # gradients in e5m2 (grad_format) against e4m3 weights; an identity output quantized to e5m2
    "identity-q-e5m2-grad": Fp8KernelKey(FP8_DEFAULT_CONFIG, Fp8Epilogue(EpilogueSpec("identity"), quantized="out",
                                                                         q_format="e5m2"),
                                         a_format="e5m2"),
    # the overlapped mainloop (next K tile's WGMMAs into a second scratch accumulator)
    "identity-overlap-c1x2": Fp8KernelKey(FP8_DEFAULT_CONFIG, IDENTITY, mainloop="overlap"),
    "srelu-q-preact-overlap-c2x1": Fp8KernelKey(dataclasses.replace(FP8_DEFAULT_CONFIG, cluster_m=2, cluster_n=1),
                                                SRELU_Q_PREACT, mainloop="overlap"),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_fp8_variant_compiles_and_ptx_is_as_designed(name):
    key = VARIANTS[name]
    ptx = kernel_ptx(key)
    cfg, epi = key.cfg, key.epi
    assert f"wgmma.mma_async.sync.aligned.m64n{cfg.tile_n}k32.f32.{key.a_format}.{key.b_format}" in ptx
    loads = [ln for ln in ptx.splitlines() if "cp.async.bulk.tensor" in ln and "mbarrier::complete_tx" in ln]
    assert len(loads) >= 2
    stores = len([ln for ln in ptx.splitlines() if "cp.async.bulk.tensor" in ln and ".global.shared::cta" in ln])
    assert stores == len(epi.outputs) * cfg.tile_n // cfg.epi_n
    assert ("multicast::cluster" in ptx) == (cfg.cluster_m * cfg.cluster_n > 1)
    assert re.search(r"setmaxnreg\.dec\.sync\.aligned\.u32\s+40;", ptx)
    assert re.search(r"setmaxnreg\.inc\.sync\.aligned\.u32\s+232;", ptx)
    # promotion: serial waits for every K tile's WGMMAs (wait_group 0 only); overlap waits for
    # the older of two groups in flight (wait_group 1) and drains with wait_group 0
    assert re.search(r"wgmma\.wait_group\.sync\.aligned\s+0;", ptx)
    assert bool(re.search(r"wgmma\.wait_group\.sync\.aligned\s+1;", ptx)) == (key.mainloop == "overlap")
    if epi.quantized:
        assert f"cvt.rn.satfinite.{epi.q_format}x2.f32" in ptx, "saturating FP8 convert of the quantized output"
        assert "shfl.sync.bfly" in ptx, "row amax reduced over the lanes sharing a row"
        # the amax is max(amax, |v|): not max.xorsign.abs (sign(a ^ b) * max(|a|, |b|), whose
        # negative results lose the quad's signed max: too-small scales of signed outputs)
        assert "xorsign" not in ptx, "xorsign max in the quantized output's amax"
    if epi.plain_outputs:
        assert "stmatrix.sync.aligned" in ptx
    assert ".local" not in ptx
    if find_ptxas() is not None:
        info = ptxas_info(ptx)
        assert info.spill_store_bytes == 0 and info.spill_load_bytes == 0, info.raw[-600:]
        assert info.stack_bytes == 0, info.raw[-600:]
        assert "C7519" not in info.raw, "ptxas injected warpgroup.arrive (accumulator touched between WGMMAs)"
        assert "C7514" not in info.raw, "ptxas serialized the WGMMAs (accumulator read while its group is in flight)"


@pytest.mark.parametrize("change,reason", [(dict(tile_n=256), "tile_n"), (dict(tile_k=64), "tile_k"),
                                           (dict(schedule="pingpong", tile_m=64), "cooperative"),
                                           (dict(epi_n=128), "epi_n")])
def test_fp8_rejects_configs_it_cannot_run(change, reason):
    with pytest.raises(ConfigError, match=reason):
        build_kernel(Fp8KernelKey(dataclasses.replace(FP8_DEFAULT_CONFIG, **change), IDENTITY))


def test_fp8_epilogue_rejects_unsupported_forms():
    with pytest.raises(ValueError, match="dact"):
        Fp8Epilogue(EpilogueSpec("dsrelu"))
    with pytest.raises(ValueError, match="not one of"):
        Fp8Epilogue(EpilogueSpec("srelu"), quantized="preact")
