"""Offload policy logic, protection and role tagging of the MLP paths (CPU)."""
import pytest
import torch

import offload
from cute_kernels.mlp import srelu_mlp
from offload import OffloadPolicy, OffloadScheduler, protect, role_of

MB = 1 << 20
BYTES = {"fc1_input": 64 * MB, "preact": 256 * MB, "postact": 256 * MB, "prob": 32 * 1024}


def test_static_roles_and_budget():
    assert OffloadPolicy().plan(BYTES).roles == ("fc1_input", "preact", "postact", "prob")
    assert OffloadPolicy(roles=("preact",)).plan(BYTES).roles == ("preact",)
    p = OffloadPolicy(roles=("fc1_input", "preact", "postact"), layer_budget_bytes=330 * MB).plan(BYTES)
    assert p.roles == ("fc1_input", "preact") and p.offload_bytes == 320 * MB
    assert OffloadPolicy(roles=()).plan(BYTES).roles == ()


def test_auto_plans_the_whole_step_not_per_layer():
    with pytest.raises(offload.OffloadArgumentError, match="whole step"):
        OffloadPolicy(auto=True).plan(BYTES)
    # roles limit what auto may act on
    assert OffloadPolicy(auto=True, roles=("preact",)).candidate_roles() == ("preact",)


def test_protection():
    p = torch.nn.Parameter(torch.randn(4, 4))
    assert offload.is_protected(p) and offload.is_protected(p.t())
    t = torch.randn(4)
    assert not offload.is_protected(t)
    protect(t)
    assert offload.is_protected(t)
    offload.unprotect(t)
    assert not offload.is_protected(t)


def _saved_roles(fn):
    roles = []

    def pack(t):
        roles.append("PARAM" if offload.is_protected(t) else role_of(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return roles


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("recompute", [False, True])
def test_torch_path_tags_its_saved_tensors(grouped, recompute):
    x = torch.randn(20, 8, requires_grad=True)
    w1 = torch.nn.Parameter(torch.randn(3, 16, 8) if grouped else torch.randn(16, 8))
    w2 = torch.nn.Parameter(torch.randn(3, 8, 16) if grouped else torch.randn(8, 16))
    prob = torch.rand(20, requires_grad=True)
    splits = [5, 0, 15] if grouped else None
    roles = _saved_roles(lambda: srelu_mlp(x, w1, w2, m_splits=splits, prob=prob, recompute_postact=recompute, backend="torch"))
    expected = ["fc1_input", "preact"] + ([] if recompute else ["postact"]) + ["prob", "PARAM", "PARAM"]
    assert sorted(roles) == sorted(expected)


def test_scheduler_passes_cpu_tensors_through():
    torch.manual_seed(0)
    layers = [(torch.nn.Parameter(torch.randn(32, 16) / 4), torch.nn.Parameter(torch.randn(16, 32) / 4)) for _ in range(3)]
    x0 = torch.randn(10, 16, requires_grad=True)

    def run(sched):
        x = x0
        for i, (w1, w2) in enumerate(layers):
            if sched is None:
                x = srelu_mlp(x, w1, w2, backend="torch")
            else:
                with sched.layer(i):
                    x = srelu_mlp(x, w1, w2, backend="torch")
        x.sum().backward()
        grads = [x0.grad.clone()] + [w.grad.clone() for pair in layers for w in pair]
        x0.grad = None
        for pair in layers:
            for w in pair:
                w.grad = None
        return grads

    ref = run(None)
    sched = OffloadScheduler(OffloadPolicy(min_tensor_bytes=0), num_layers=3)
    got = run(sched)
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    assert sched.offloaded_bytes() == 0
    assert sched.stats[0].saved_bytes == {}  # nothing on CUDA to account for
