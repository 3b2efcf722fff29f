"""Every arch's kernel class derives the shared launch figures in gemm_base.kernel_base (CPU, no compile)."""
import pytest

from cute_kernels import archs
from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.gemm_base.descriptors import desc_slots
from cute_kernels.gemm_base.kernel_base import GemmKernelBase

EPILOGUES = {"identity": EpilogueSpec("identity"), "srelu_preact": EpilogueSpec("srelu", store_preact=True)}


@pytest.mark.parametrize("arch", sorted(archs.ARCHS))
@pytest.mark.parametrize("epi", ["identity", "srelu_preact"])
def test_kernel_classes_take_the_shared_figures(arch, epi):
    cls = archs.kernel_class(arch)
    assert issubclass(cls, GemmKernelBase)
    cfg = archs.config_class(arch)(tile_n=192, cluster_m=2, cluster_n=1, epi_n=64, tile_k=128)
    k = cls(cfg, EPILOGUES[epi], grouped=True, grouped_k=False, ab_stages=3)
    assert (k.cfg, k.epi, k.grouped, k.grouped_k, k.ab_stages) == (cfg, EPILOGUES[epi], True, False, 3)
    assert (k.tile_m, k.tile_n, k.tile_k) == (cfg.tile_m, 192, 128) and k.cluster_shape_mn == (2, 1)
    assert k.epi_tile == (cfg.tile_m, 64) and k.desc_slots == desc_slots(3)
    assert k.num_outputs == EPILOGUES[epi].num_outputs
