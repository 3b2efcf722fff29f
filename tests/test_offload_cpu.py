"""The scheduler end to end on the CPU (torch path, `offload_cpu_tensors=True`: the 'copies'
go to other CPU buffers through the same bookkeeping as on a GPU): bitwise-equal gradients
for every policy incl. auto with partial tensors and recompute, the plan's predicted bytes
equal the bytes moved, replanning on new shapes, and nothing left behind over many steps.
(tests/test_offload_gpu.py checks the same on CUDA, with delays on the copy streams.)"""
import gc

import pytest
import torch

from cute_kernels.mlp import srelu_mlp
from offload import ROLES, OffloadPolicy, OffloadScheduler
from offload.planner import PARTIAL, RECOMPUTE
from offload.scheduler import _Offloaded

L = 4


def _model(m=48, h=32, f=64, experts=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    s1, s2 = ((experts, f, h), (experts, h, f)) if experts else ((f, h), (h, f))
    ws = [(torch.nn.Parameter(torch.randn(*s1, generator=g) / h ** 0.5),
           torch.nn.Parameter(torch.randn(*s2, generator=g) / f ** 0.5)) for _ in range(L)]
    x0 = torch.randn(m, h, generator=g, requires_grad=True)
    prob = torch.rand(m, generator=g, requires_grad=True) if experts else None
    splits = [m // 2, 0, m - m // 2 - 5, 5][:experts] if experts else None
    dy = torch.randn(m, h, generator=g)
    return ws, x0, prob, splits, dy


def _step(model, sched):
    ws, x0, prob, splits, dy = model
    x = x0
    for i, (w1, w2) in enumerate(ws):
        if sched is None:
            x = srelu_mlp(x, w1, w2, m_splits=splits, prob=prob, backend="torch")
        else:
            with sched.layer(i):
                x = srelu_mlp(x, w1, w2, m_splits=splits, prob=prob, backend="torch")
    x.backward(dy)
    params = [x0] + ([prob] if prob is not None else []) + [w for pair in ws for w in pair]
    grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    if sched is not None:
        assert sched.end_step() == {}, "every offloaded tensor was reloaded"
    return grads


# dense layer, m=48 h=32 f=64 fp32: fc1_input 6 KiB, preact 12 KiB, postact 12 KiB (30 KiB a layer);
# at 0.01 GB/s a 1 ms layer copies 10 KB, so the window holds parts of the step's tensors
AUTO = dict(auto=True, min_tensor_bytes=0, d2h_gbps=0.01, h2d_gbps=0.01, layer_ms=(1.0, 2.0))
POLICIES = {
    "all": dict(min_tensor_bytes=0, offload_last_layer=True),
    "preact_postact": dict(roles=("preact", "postact"), min_tensor_bytes=0),
    "budget": dict(roles=ROLES, layer_budget_bytes=20_000, min_tensor_bytes=0),
    "auto_everything_fits": dict(AUTO, d2h_gbps=100.0, h2d_gbps=100.0),
    "auto_partial": dict(AUTO, recompute=False),
    "auto_partial_recompute": dict(AUTO, max_step_cost=0.5),
    "auto_whole_tensors": dict(AUTO, partial=False, recompute=False),
    "auto_measured_times": dict(auto=True, min_tensor_bytes=0, d2h_gbps=0.02, h2d_gbps=0.02, calibration_steps=2),
    "none": dict(roles=()),
}


@pytest.mark.parametrize("experts", [0, 4])
@pytest.mark.parametrize("policy", list(POLICIES))
def test_gradients_bitwise_equal_and_plan_matches_what_moved(policy, experts):
    model = _model(experts=experts, seed=experts)
    ref = _step(model, None)
    sched = OffloadScheduler(OffloadPolicy(**POLICIES[policy]), num_layers=L, offload_cpu_tensors=True)
    for k in range(4):
        got = _step(model, sched)
        assert all(torch.equal(a, b) for a, b in zip(ref, got)), f"step {k}"
        assert sched.reloaded_bytes() == sched.offloaded_bytes()
    pol = sched.policy
    if policy == "none":
        assert sched.offloaded_bytes() == 0
    elif not pol.auto:
        assert sched.offloaded_bytes() > 0
    else:
        plan = sched.step_plan
        assert plan is not None and sched.plans_made == 1
        # the plan's predicted bytes are the bytes moved, layer by layer and role by role
        assert sched.offloaded_bytes() == plan.offload_bytes
        for i, lp in plan.layers.items():
            want = {}
            for t in lp.tensors:
                if t.offload_bytes:
                    want[t.role] = want.get(t.role, 0) + t.offload_bytes
            assert sched.stats[i].offloaded_bytes == want, i
            assert sched.stats[i].recomputed_bytes == lp.recompute_bytes
            if lp.recompute_bytes:
                assert "postact" not in sched.stats[i].saved_bytes, "a recomputed postact is not saved"
        actions = {t.action for lp in plan.layers.values() for t in lp.tensors}
        if policy in ("auto_partial", "auto_partial_recompute"):
            assert PARTIAL in actions
        if policy == "auto_partial_recompute":
            assert RECOMPUTE in actions
        if policy == "auto_whole_tensors":
            assert PARTIAL not in actions and plan.offload_bytes > 0
        if policy == "auto_everything_fits":
            assert plan.offload_bytes > 0 and PARTIAL not in actions
        if policy != "auto_measured_times":
            assert plan.offload_bytes > 0
        assert "reload issued at layer" in plan.describe() or plan.offload_bytes == 0
    if policy == "budget":
        assert all(sum(st.offloaded_bytes.values()) <= 20_000 for st in sched.stats.values())


def test_auto_replans_when_shapes_change():
    pol = OffloadPolicy(**dict(AUTO, recompute=False))
    sched = OffloadScheduler(pol, num_layers=L, offload_cpu_tensors=True)
    model = _model(m=48)
    ref = _step(model, None)
    for _ in range(2):
        assert all(torch.equal(a, b) for a, b in zip(ref, _step(model, sched)))
    first = sched.step_plan
    assert sched.plans_made == 1 and first.offload_bytes == sched.offloaded_bytes() > 0
    model2 = _model(m=40, seed=3)
    ref2 = _step(model2, None)
    # the first step with new shapes keeps what no longer matches the plan, then one step profiles
    for _ in range(2):
        assert all(torch.equal(a, b) for a, b in zip(ref2, _step(model2, sched)))
    assert sched.plans_made == 2 and sched.step_plan is not first
    assert all(torch.equal(a, b) for a, b in zip(ref2, _step(model2, sched)))
    assert sched.offloaded_bytes() == sched.step_plan.offload_bytes > 0
    assert sched.step_plan.saved_bytes < first.saved_bytes


def test_nothing_left_behind_over_many_steps():
    model = _model(experts=4)
    sched = OffloadScheduler(OffloadPolicy(**dict(AUTO, max_step_cost=0.5)), num_layers=L, offload_cpu_tensors=True)
    for _ in range(3):
        _step(model, sched)
    pool_bytes = sched.pool.allocated_bytes
    for _ in range(20):
        _step(model, sched)
        assert not any(sched._handles.values()) and sched._step["order"] == []
    assert sched.pool.allocated_bytes == pool_bytes, "host buffers are reused, not allocated every step"
    gc.collect()
    assert not [o for o in gc.get_objects() if type(o) is _Offloaded], "no offloaded tensor outlives its step"


def test_partial_offload_reassembles_non_float_layouts():
    """A partial handle for a tensor saved by a plain op (role registered as a known role by
    tag): int64 rows, bitwise back, through the scheduler's own pack/unpack."""
    import offload

    sched = OffloadScheduler(OffloadPolicy(**AUTO), num_layers=2, offload_cpu_tensors=True)
    sched.step_plan = None
    t = torch.arange(64 * 5, dtype=torch.int64).reshape(64, 5)
    with sched.layer(0):
        sched._layer_plan = _fake_layer_plan(0, "preact", t.numel() * 8, 64, 24)
        offload.tag(t, "preact")
        h = sched._pack(t)
    assert isinstance(h, _Offloaded) and h.head_bytes == 24 * 5 * 8 and h.tail is not None
    out = sched._unpack(h)
    assert out.dtype == t.dtype and out.shape == t.shape and torch.equal(out, t)
    assert sched.stats[0].offloaded_bytes == {"preact": 24 * 5 * 8} and sched.stats[0].reloaded_bytes == 24 * 5 * 8


def _fake_layer_plan(index, role, nbytes, rows, keep_rows):
    from offload.planner import LayerPlan, TensorPlan

    lp = LayerPlan(index, 1.0)
    lp.tensors.append(TensorPlan(index, role, 0, nbytes, rows, PARTIAL, "test", nbytes // rows * keep_rows, keep_rows))
    return lp


@pytest.mark.parametrize("timings", ["fast", "slow", "random"])
@pytest.mark.parametrize("experts", [0, 4])
@pytest.mark.parametrize("policy", ["auto_partial", "auto_recompute"])
def test_gpu_tests_auto_policies_plan_the_same_whatever_the_measured_timings(policy, experts, timings, monkeypatch):
    """tests/test_offload_gpu.py asserts that its auto_partial / auto_recompute plans move bytes
    (partial tensors; recomputed postacts): those policies pin the layer times (`layer_ms`), so the
    plan for its shapes holds whatever the machine measures (an H200's fast layers made the measured
    plan recompute everything).  Here the measured durations are replaced by fast, slow or random ones."""
    import copy
    import random

    from offload.scheduler import OffloadScheduler as Sched
    from test_offload_gpu import POLICIES as GPU_POLICIES

    rng = random.Random(experts)
    fake = {"fast": lambda: 1e-4, "slow": lambda: 50.0, "random": lambda: rng.uniform(0.0, 20.0)}[timings]
    monkeypatch.setattr(Sched, "_ms", staticmethod(lambda a, b: fake()))
    g = torch.Generator().manual_seed(1)
    m, h, f, layers = 1024, 512, 1024, 3  # the GPU test's shapes, bf16
    s1, s2 = ((experts, f, h), (experts, h, f)) if experts else ((f, h), (h, f))
    ws = [(torch.nn.Parameter((torch.randn(*s1, generator=g) / h ** 0.5).bfloat16()),
           torch.nn.Parameter((torch.randn(*s2, generator=g) / f ** 0.5).bfloat16())) for _ in range(layers)]
    splits = [m // 2, 0, m // 4, m - m // 2 - m // 4] if experts else None
    prob = torch.rand(m, generator=g, requires_grad=True) if experts else None
    sched = Sched(copy.deepcopy(GPU_POLICIES[policy]), num_layers=layers, offload_cpu_tensors=True)
    for _ in range(2):
        x = torch.randn(m, h, generator=g).bfloat16().requires_grad_()
        for i, (w1, w2) in enumerate(ws):
            with sched.layer(i):
                x = srelu_mlp(x, w1, w2, m_splits=splits, prob=prob, backend="torch")
        x.float().sum().backward()
        assert sched.end_step() == {}
    plan = sched.step_plan
    actions = {t.action for lp in plan.layers.values() for t in lp.tensors}
    assert sched.offloaded_bytes() == plan.offload_bytes > 0
    assert PARTIAL in actions
    assert (RECOMPUTE in actions) == (policy == "auto_recompute")
