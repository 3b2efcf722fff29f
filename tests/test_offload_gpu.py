"""Offload on the GPU: gradients bitwise equal to no offload for every policy (dense
and grouped, both MLP paths), under random copy-stream delays too; memory back to its
baseline after every step; peak memory lowered by what was offloaded."""
import copy

import pytest
import torch

from cute_kernels.mlp import srelu_mlp
from offload import ROLES, OffloadPolicy, OffloadScheduler

pytestmark = pytest.mark.gpu
DT = torch.bfloat16


def _model(layers, m, h, f, experts, seed):
    g = torch.Generator(device="cuda")
    g.manual_seed(seed)
    ws = []
    for _ in range(layers):
        s1 = (experts, f, h) if experts else (f, h)
        s2 = (experts, h, f) if experts else (h, f)
        w1 = torch.nn.Parameter((torch.randn(*s1, device="cuda", generator=g) / h ** 0.5).to(DT))
        w2 = torch.nn.Parameter((torch.randn(*s2, device="cuda", generator=g) / f ** 0.5).to(DT))
        ws.append((w1, w2))
    x0 = torch.randn(m, h, device="cuda", generator=g).to(DT).requires_grad_()
    prob = torch.rand(m, device="cuda", generator=g).requires_grad_() if experts else None
    splits = None
    if experts:
        cuts = sorted(torch.randint(0, m + 1, (experts - 1,), generator=g, device="cuda").tolist())
        b = [0] + cuts + [m]
        splits = [b[i + 1] - b[i] for i in range(experts)]
    dy = torch.randn(m, h, device="cuda", generator=g).to(DT)
    return ws, x0, prob, splits, dy


def _step(model, sched, backend, recompute=False):
    ws, x0, prob, splits, dy = model
    x = x0
    for i, (w1, w2) in enumerate(ws):
        if sched is None:
            x = srelu_mlp(x, w1, w2, m_splits=splits, prob=prob, recompute_postact=recompute, backend=backend)
        else:
            with sched.layer(i):
                x = srelu_mlp(x, w1, w2, m_splits=splits, prob=prob, recompute_postact=recompute, backend=backend)
    x.backward(dy)
    params = [x0] + ([prob] if prob is not None else []) + [w for pair in ws for w in pair]
    grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    if sched is not None:
        assert sched.end_step() == {}, "every offloaded tensor was reloaded"
    return grads


POLICIES = {
    "all": OffloadPolicy(min_tensor_bytes=0, offload_last_layer=True),
    "preact_postact": OffloadPolicy(roles=("preact", "postact"), min_tensor_bytes=0),
    "budget": OffloadPolicy(roles=ROLES, layer_budget_bytes=3 << 20, min_tensor_bytes=0),
    # measured layer times and link: what it plans depends on the machine (it may move nothing)
    "auto": OffloadPolicy(auto=True, min_tensor_bytes=0),
    # a slow link and the layer times on paper (fwd 1 ms, bwd 2 ms a layer: `layer_ms`), so the plan is
    # the same on every GPU: the window holds only part of the step, hence partial tensors and, with
    # recompute allowed, recomputed postacts (measured times made it recompute everything on an H200)
    "auto_partial": OffloadPolicy(auto=True, min_tensor_bytes=0, d2h_gbps=2.0, h2d_gbps=2.0, recompute=False,
                                  layer_ms=(1.0, 2.0)),
    "auto_recompute": OffloadPolicy(auto=True, min_tensor_bytes=0, d2h_gbps=2.0, h2d_gbps=2.0, max_step_cost=0.5,
                                    layer_ms=(1.0, 2.0)),
    "none": OffloadPolicy(roles=()),
}
AUTO_STEPS = 4  # two calibration steps, then the plan


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("experts", [0, 4])
@pytest.mark.parametrize("backend", ["torch", "cute"])
def test_gradients_bitwise_equal(policy, experts, backend):
    model = _model(3, 1024, 512, 1024, experts, seed=1)
    ref = _step(model, None, backend)
    sched = OffloadScheduler(copy.deepcopy(POLICIES[policy]), num_layers=3)
    for _ in range(AUTO_STEPS):  # auto profiles the first steps
        got = _step(model, sched, backend)
        assert all(torch.equal(a, b) for a, b in zip(ref, got))
    if policy not in ("none", "auto"):  # every plan but the measured one moves bytes, on any GPU
        assert sched.offloaded_bytes() > 0
    if policy.startswith("auto"):
        _check_plan_matches(sched)
    if policy == "budget":
        assert all(sum(st.offloaded_bytes.values()) <= 3 << 20 for st in sched.stats.values())


def _check_plan_matches(sched):
    """The plan's predicted bytes are the bytes moved (out and back), role by role."""
    plan = sched.step_plan
    assert plan is not None, "auto planned after its calibration steps"
    assert sched.offloaded_bytes() == plan.offload_bytes == sched.reloaded_bytes()
    for i, lp in plan.layers.items():
        want = {}
        for t in lp.tensors:
            if t.offload_bytes:
                want[t.role] = want.get(t.role, 0) + t.offload_bytes
        assert sched.stats[i].offloaded_bytes == want
        assert sched.stats[i].recomputed_bytes == lp.recompute_bytes


@pytest.mark.parametrize("experts", [0, 4])
@pytest.mark.parametrize("backend", ["torch", "cute"])
@pytest.mark.parametrize("policy", ["auto_partial", "auto_recompute"])
def test_auto_partial_and_recompute_under_random_copy_delays(policy, experts, backend):
    model = _model(4, 1024, 512, 1024, experts, seed=9)
    ref = _step(model, None, backend)
    sched = OffloadScheduler(copy.deepcopy(POLICIES[policy]), num_layers=4, debug_delay_cycles=3_000_000, seed=3)
    for _ in range(AUTO_STEPS + 2):
        got = _step(model, sched, backend)
        assert all(torch.equal(a, b) for a, b in zip(ref, got))
    _check_plan_matches(sched)
    actions = {t.action for lp in sched.step_plan.layers.values() for t in lp.tensors}
    assert "partial" in actions, sched.step_plan.describe()
    if policy == "auto_recompute":
        assert "recompute" in actions, sched.step_plan.describe()


def test_auto_memory_back_to_baseline_over_100_steps():
    model = _model(3, 1024, 512, 1024, 4, seed=10)
    sched = OffloadScheduler(copy.deepcopy(POLICIES["auto_recompute"]), num_layers=3, debug_delay_cycles=200_000)
    for _ in range(AUTO_STEPS):
        _step(model, sched, "cute")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    pool = sched.pool.allocated_bytes
    for _ in range(100):
        _step(model, sched, "cute")
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() == base
    assert sched.pool.allocated_bytes == pool, "pinned buffers are reused"
    _check_plan_matches(sched)


@pytest.mark.parametrize("experts", [0, 4])
def test_both_paths_tag_the_same_roles(experts):
    model = _model(2, 512, 256, 512, experts, seed=2)
    seen = {}
    for backend in ("torch", "cute"):
        sched = OffloadScheduler(OffloadPolicy(roles=("preact",), min_tensor_bytes=0), num_layers=2)
        _step(model, sched, backend)
        seen[backend] = sorted(sched.stats[0].saved_bytes)
        assert sorted(sched.stats[0].offloaded_bytes) == ["preact"]
    assert seen["torch"] == seen["cute"]
    assert set(seen["cute"]) == ({"fc1_input", "preact", "postact", "prob"} if experts else {"fc1_input", "preact", "postact"})


def test_recompute_has_no_postact_to_offload():
    model = _model(2, 512, 256, 512, 0, seed=3)
    sched = OffloadScheduler(OffloadPolicy(min_tensor_bytes=0, offload_last_layer=True), num_layers=2)
    ref = _step(model, None, "cute", recompute=True)
    got = _step(model, sched, "cute", recompute=True)
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    assert "postact" not in sched.stats[0].saved_bytes


@pytest.mark.parametrize("experts", [0, 4])
def test_stress_random_copy_delays(experts):
    model = _model(4, 1024, 512, 1024, experts, seed=4)
    ref = _step(model, None, "cute")
    sched = OffloadScheduler(OffloadPolicy(min_tensor_bytes=0, offload_last_layer=True), num_layers=4,
                             debug_delay_cycles=3_000_000, prefetch_layers=2, seed=7)
    for _ in range(3):
        got = _step(model, sched, "cute")
        assert all(torch.equal(a, b) for a, b in zip(ref, got))


def test_memory_back_to_baseline_every_step():
    model = _model(3, 512, 256, 512, 0, seed=5)
    sched = OffloadScheduler(OffloadPolicy(min_tensor_bytes=0, offload_last_layer=True), num_layers=3)
    _step(model, sched, "cute")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    for _ in range(100):
        _step(model, sched, "cute")
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() == base
    assert sched.pool.allocations <= 3 * 4 * 2, "pinned buffers are reused, not allocated every step"


def test_peak_memory_lowered_by_offloaded_bytes():
    model = _model(4, 4096, 1024, 4096, 0, seed=6)
    _step(model, None, "cute")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    _step(model, None, "cute")
    peak_plain = torch.cuda.max_memory_allocated() - base
    sched = OffloadScheduler(OffloadPolicy(roles=("preact", "postact"), min_tensor_bytes=0), num_layers=4, prefetch_layers=1)
    _step(model, sched, "cute")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    _step(model, sched, "cute")
    peak_off = torch.cuda.max_memory_allocated() - base
    off = sched.offloaded_bytes()
    per_layer = max(sum(st.offloaded_bytes.values()) for st in sched.stats.values())
    # everything offloaded leaves the GPU; while a layer's backward runs, it and the
    # `prefetch_layers` layers after it are back
    assert off > 0
    assert peak_plain - peak_off >= off - (sched.prefetch_layers + 1) * per_layer, (peak_plain, peak_off, off, per_layer)


@pytest.mark.parametrize("backend", ["torch", "cute"])
def test_offload_argument_marks_each_call_as_the_next_layer(backend):
    """srelu_mlp(..., offload=sched): the same offload, layer numbers and gradients as marking
    the layers with `with sched.layer(i)`, step after step."""
    model = _model(3, 1024, 512, 1024, 4, seed=8)
    ws, x0, prob, splits, dy = model
    ref = _step(model, None, backend)
    policy = OffloadPolicy(roles=("preact", "postact"), min_tensor_bytes=0)
    marked = OffloadScheduler(policy, num_layers=3)
    _step(model, marked, backend)
    sched = OffloadScheduler(policy, num_layers=3)
    for _ in range(2):
        x = x0
        for w1, w2 in ws:
            x = srelu_mlp(x, w1, w2, m_splits=splits, prob=prob, backend=backend, offload=sched)
        x.backward(dy)
        params = [x0, prob] + [w for pair in ws for w in pair]
        got = [p.grad.clone() for p in params]
        for p in params:
            p.grad = None
        assert sched.end_step() == {}, "every offloaded tensor was reloaded"
        assert all(torch.equal(a, b) for a, b in zip(ref, got))
    assert sorted(sched.stats) == [0, 1, 2]
    assert sched.offloaded_bytes() == marked.offloaded_bytes() > 0
    assert {i: st.offloaded_bytes for i, st in sched.stats.items()} == {
        i: st.offloaded_bytes for i, st in marked.stats.items()}
