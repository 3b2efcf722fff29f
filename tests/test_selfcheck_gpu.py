"""The self-check on a GPU, with the sm90 kernels standing in for unverified ones (the logic is
arch-neutral): run_variant agrees with torch on real kernels of every grouping, the first-launch
gate runs it once for a variant the table does not list, and a kernel that writes nothing (its
launch skipped, outputs left NaN-poisoned) makes the gate raise."""
import pytest
import torch

from cute_kernels import gemm_ops, selfcheck
from cute_kernels.compile import KernelKey
from cute_kernels.config import GemmConfig
from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.selfcheck_table import variant_keys

pytestmark = pytest.mark.gpu

KEYS = {
    "dense_srelu_scale": KernelKey("sm90", GemmConfig(tile_n=128, cluster_m=1, cluster_n=2),
                                   EpilogueSpec("srelu", store_preact=True, row_scale=True), False, "bfloat16", "k", "k"),
    "grouped_dsrelu_rowsum": KernelKey("sm90", GemmConfig(tile_n=128, cluster_m=1, cluster_n=2),
                                       EpilogueSpec("dsrelu", store_postact=True, row_scale=True, row_sum=True), True,
                                       "bfloat16", "k", "n"),
    "grouped_k_fp32_accumulate": KernelKey("sm90", GemmConfig(tile_n=128, cluster_m=2, cluster_n=1),
                                           EpilogueSpec("identity", accumulate=True), False, "bfloat16", "m", "n",
                                           out_dtype="float32", grouped_k=True),
}


def _sm90():
    major, _ = torch.cuda.get_device_capability()
    if major != 9:
        pytest.skip("these stand-ins are sm90 kernels")


@pytest.mark.parametrize("name", list(KEYS))
def test_run_variant_agrees_with_torch(name):
    _sm90()
    res = selfcheck.run_variant(KEYS[name], launch=gemm_ops._run, time_it=True)
    assert res.ok, (res.errors, res.message)
    assert res.time_ms is not None and res.time_ms > 0


def test_gate_checks_an_unlisted_variant_once():
    _sm90()
    calls = []

    def runner(key):
        calls.append(key)
        return selfcheck.run_variant(key, launch=gemm_ops._run)

    seen = set()
    res = selfcheck.before_first_launch(KEYS["dense_srelu_scale"], seen, runner=runner, table={}, env={})
    assert res is not None and res.ok and len(calls) == 1 and KEYS["dense_srelu_scale"] in seen


def test_gate_raises_when_the_kernel_writes_nothing(monkeypatch):
    _sm90()
    with pytest.raises(selfcheck.SelfCheckError, match="disagrees with torch"):  # outputs stay NaN
        selfcheck.before_first_launch(KEYS["grouped_dsrelu_rowsum"], set(), launch=lambda key, args: None, table={},
                                      env={})


def test_every_cli_variant_passes_quick():
    """What `python -m cute_kernels.selfcheck --quick` runs, on this arch."""
    _sm90()
    results = [selfcheck.run_variant(key, launch=gemm_ops._run) for key in variant_keys("sm90", quick=True)]
    bad = [(r.variant, r.errors, r.message) for r in results if not r.ok]
    assert not bad
