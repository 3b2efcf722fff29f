"""Every arch decision goes through cute_kernels/archs.py: the one device probe, and what
srelu_mlp, the modules and the GEMM entry points choose for each arch it can return (on CPU:
the probe is patched, the kernel launch is mocked, the self-check gate runs for real)."""
import os
import re

import pytest
import torch

from cute_kernels import archs, checks, gemm_ops, launch_plan, selfcheck, torch_ops
from cute_kernels.compile import KernelKey
from cute_kernels.mlp import srelu_mlp, uses_cute_path
from cute_kernels.modules import GroupedSReLUMLP, SReLUMLP

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def capability(monkeypatch):
    """Set what torch reports as the GPU's compute capability (the probe's caches emptied)."""
    queried = []

    def set_to(cap):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: (queried.append(i), cap)[1])
        archs.device_capability.cache_clear()
        archs._arch_of_index.cache_clear()
        return queried
    yield set_to
    archs.device_capability.cache_clear()
    archs._arch_of_index.cache_clear()


@pytest.mark.parametrize("cap,arch", [((9, 0), "sm90"), ((10, 0), "sm100"), ((10, 3), "sm100"), ((8, 0), None),
                                      ((12, 0), None)])
def test_the_probe_maps_compute_capability_to_an_arch_once_per_device(capability, cap, arch):
    queried = capability(cap)
    assert archs.device_arch(0) == arch
    assert archs.device_arch(torch.device("cuda", 0)) == arch and archs.device_arch("cuda:0") == arch
    assert queried == [0]  # cached per device index
    assert archs.device_arch(torch.device("cpu")) is None and archs.device_arch("cpu") is None


def test_a_gpu_without_kernels_is_an_input_error_naming_its_capability(capability):
    capability((12, 0))
    with pytest.raises(checks.InputError, match=r"compute capability 12\.0 on cuda:0.*sm100.*backend='torch'"):
        gemm_ops.device_arch(torch.device("cuda", 0))


def test_arch_entries_resolve():
    for name, arch in archs.ARCHS.items():
        assert archs.config_class(name) in archs.config_classes()
        cfg = archs.config_class(name)()
        assert archs.variant_shape(name, cfg).endswith(f"-c{cfg.cluster_m}x{cfg.cluster_n}")
        for c in archs.arch_space(name).selfcheck_configs(quick=True):
            assert isinstance(c, archs.config_class(name))
    assert archs.launch_config_function("sm90") is None and callable(archs.launch_config_function("sm100"))
    assert archs.block_scaled_fp8_arches() == ["sm90"]


ARCH_TEST = re.compile(r"\barch\s*[!=]=|get_device_capability|\bis_sm\d+|capability_major")


def test_no_arch_branch_or_capability_probe_outside_archs():
    """A new arch is a folder plus an archs.py entry: no other module compares arch names or asks a
    device for its capability."""
    exempt = {"archs.py"}
    arch_dirs = {a.config_module.split(".")[1] for a in archs.ARCHS.values()}
    found = []
    for dirpath, _, files in os.walk(os.path.join(ROOT, "cute_kernels")):
        rel_dir = os.path.relpath(dirpath, os.path.join(ROOT, "cute_kernels"))
        if rel_dir.split(os.sep)[0] in arch_dirs:
            continue
        for f in files:
            rel = os.path.normpath(os.path.join(rel_dir, f))
            if f.endswith(".py") and rel not in exempt:
                for i, line in enumerate(open(os.path.join(dirpath, f)), 1):
                    if ARCH_TEST.search(line):
                        found.append(f"{rel}:{i}: {line.strip()}")
    assert not found, "\n".join(found)


# ---------------------------------------------------------------- which path and arch the op takes
class KernelOps:
    """torch_ops' eager calls as they run on a GPU (the CuTe entry points), taken here by CPU tensors."""

    @staticmethod
    def fc1_srelu_fwd(x, w1, m_splits, prob, store_preact, splits_t=None, activation="srelu"):
        return gemm_ops.fc1_srelu(x, w1, m_splits=m_splits if splits_t is None else splits_t, prob=prob,
                                  store_preact=store_preact, activation=activation)

    @staticmethod
    def fc2_fwd(h, w2, m_splits, splits_t=None):
        return gemm_ops.fc2(h, w2, m_splits=m_splits if splits_t is None else splits_t)


@pytest.fixture
def gpu_as(monkeypatch):
    """Make the probe answer `arch` for every device and record, instead of launching, each kernel
    the op would launch; the self-check gate runs with a recorded check in place of the GPU run."""
    launched, checked, check_error = [], [], [1e-3]

    def run_variant(key, **_):
        checked.append(key)
        return selfcheck.CheckResult(key.arch, selfcheck.variant_name(key), {"out": check_error[0]}, tolerance=2e-2)

    def set_to(arch, error=1e-3):
        """`error`: what the self-check of an unverified variant measures."""
        check_error[0] = error
        monkeypatch.setattr(archs, "device_arch", lambda device=None: arch)
        return launched, checked
    monkeypatch.setattr(torch_ops, "ops", lambda: KernelOps)
    monkeypatch.setattr(checks, "check_cuda", lambda name, t: None)
    monkeypatch.setattr(gemm_ops, "_selfchecked", set())
    monkeypatch.setattr(launch_plan, "_plans", {})  # no plan kept from another test's mocks
    monkeypatch.setattr(selfcheck, "run_variant", run_variant)
    monkeypatch.setattr(selfcheck, "results", {})
    monkeypatch.setattr(selfcheck, "_failed", {})
    monkeypatch.setattr(gemm_ops, "_max_clusters_arg", lambda *a: (1, 1))
    monkeypatch.setattr(gemm_ops, "use_tvm_ffi", lambda: True)
    monkeypatch.setattr(gemm_ops, "get_compiled", lambda key: (lambda *a: launched.append(key)))
    monkeypatch.delenv(selfcheck.ENV_SWITCH, raising=False)
    return set_to


def _dense(dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(40, 64, generator=g).to(dtype), torch.randn(96, 64, generator=g).to(dtype) / 8,
            torch.randn(64, 96, generator=g).to(dtype) / 8)


@pytest.mark.parametrize("arch", ["sm90", "sm100"])
def test_auto_takes_each_arch_kernels_with_the_self_check_where_unverified(gpu_as, arch):
    launched, checked = gpu_as(arch)
    x, w1, w2 = _dense()
    assert uses_cute_path(x, "auto")
    srelu_mlp(x, w1, w2)  # backend="auto"
    assert [k.arch for k in launched] == [arch, arch] and [k.epi.kind for k in launched] == ["act", "identity"]
    assert all(isinstance(k.cfg, archs.config_class(arch)) for k in launched)
    # sm90's variants have hardware evidence (hardware_verified.yaml); sm100's are checked on first use
    assert checked == ([] if arch == "sm90" else launched)
    srelu_mlp(x, w1, w2)
    assert len(launched) == 4 and len(checked) == (0 if arch == "sm90" else 2)  # once per variant


def test_sm100_takes_its_own_launch_config(gpu_as):
    launched, _ = gpu_as("sm100")
    from cute_kernels.sm100.launch_config import launch_config

    x, w1, _ = _dense()
    gemm_ops.fc1_srelu(x, w1)
    (key,) = launched
    assert key.cfg == launch_config(m=40, n=96, k=64, num_experts=0, epi=key.epi)
    assert isinstance(key, KernelKey) and key.grouped is False


def test_an_sm100_disagreement_raises_instead_of_falling_back(gpu_as):
    launched, _ = gpu_as("sm100", error=0.5)
    x, w1, w2 = _dense()
    with pytest.raises(selfcheck.SelfCheckError, match="sm100 kernel dense/"):
        srelu_mlp(x, w1, w2)
    assert launched == []


def test_no_arch_takes_the_torch_path(gpu_as):
    launched, checked = gpu_as(None)
    x, w1, w2 = _dense()
    assert not uses_cute_path(x, "auto")
    y = srelu_mlp(x, w1, w2)
    ref = (torch.relu(x.double() @ w1.double().t()) ** 2) @ w2.double().t()
    assert launched == [] and checked == []
    assert ((y.double() - ref).abs().max() / ref.abs().max()).item() < 2e-2
    with pytest.raises(checks.InputError, match=r"backend='cute' needs .*sm90 \(sm_90a.*sm100 \(sm_100a"):
        srelu_mlp(x, w1, w2, backend="cute")


@pytest.mark.parametrize("arch", ["sm90", "sm100", None])
def test_modules_choose_like_srelu_mlp(gpu_as, arch):
    launched, _ = gpu_as(arch)
    dense = SReLUMLP(64, 96, dtype=torch.bfloat16)
    grouped = GroupedSReLUMLP(3, 64, 96, dtype=torch.bfloat16)
    x = torch.randn(40, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        dense(x)
        grouped(x, [10, 0, 30])
    if arch is None:
        assert launched == []
    else:
        assert [(k.arch, k.grouped) for k in launched] == [(arch, False)] * 2 + [(arch, True)] * 2
