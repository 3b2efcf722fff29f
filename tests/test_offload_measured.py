"""MeasuredOffloadScheduler on the CPU (`offload_cpu_tensors=True`: the 'copies' go to other CPU
buffers through the same bookkeeping as on a GPU; the memory is the bytes of the captured
tensors alive): the capture sees every large saved tensor of a plain torch attention block
(not only our ops' roles), once per tensor, never parameters; the plan moves the tensors live
at the measured peak; gradients stay bitwise equal; new shapes replan."""
import math
import types

import pytest
import torch
from torch import nn

import offload.scheduler
from cute_kernels.mlp import srelu_mlp
from offload import MeasuredOffloadScheduler, OffloadArgumentError, OffloadPolicy, OffloadScheduler
from offload.measured_planner import OFFLOAD

B, S, D, HEADS = 2, 64, 32, 4
MIN_ELEMS = B * S * D  # the hidden states and larger (the scores are 8x that)


class Attention(nn.Module):
    """Self-attention in plain torch ops: linear projections, softmax(q k^T) v, residual."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(D, D, bias=False) for _ in range(4))

    def forward(self, x):
        split = lambda t: t.view(B, S, HEADS, D // HEADS).transpose(1, 2)
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // HEADS), dim=-1)
        return x + self.o((probs @ v).transpose(1, 2).reshape(B, S, D))


class Block(nn.Module):
    """Attention, then our squared-ReLU MLP (a layer of the scheduler)."""

    def __init__(self, sched):
        super().__init__()
        self.attn = Attention()
        self.w1 = nn.Parameter(torch.randn(2 * D, D) / D ** 0.5)
        self.w2 = nn.Parameter(torch.randn(D, 2 * D) / (2 * D) ** 0.5)
        self.sched = sched

    def forward(self, x):
        x = self.attn(x)
        y = srelu_mlp(x.reshape(-1, D), self.w1, self.w2, backend="torch", offload=self.sched)
        return x + y.view(B, S, D)


def _policy(**over):
    kw = dict(auto=True, peak="measured", d2h_gbps=1e6, h2d_gbps=1e6, min_tensor_bytes=0,
              capture_min_elements=MIN_ELEMS, calibration_steps=1)
    kw.update(over)
    return OffloadPolicy(**kw)


def _run(blocks, x0, dy, sched):
    ctx = sched.step() if sched is not None else torch.enable_grad()
    with ctx:
        x = x0
        for b in blocks:
            x = b(x)
    x.backward(dy)
    params = [x0] + [p for b in blocks for p in b.parameters()]
    grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    if sched is not None:
        assert sched.end_step() == {}, "every offloaded tensor was used in backward"
    return grads


def _setup(sched, layers=3, seed=0):
    torch.manual_seed(seed)
    blocks = [Block(sched) for _ in range(layers)]
    x0 = torch.randn(B, S, D, requires_grad=True)
    dy = torch.randn(B, S, D)
    return blocks, x0, dy


def test_capture_sees_attention_tensors_once_and_no_parameters():
    sched = MeasuredOffloadScheduler(_policy(calibration_steps=5), offload_cpu_tensors=True)
    blocks, x0, dy = _setup(sched, layers=1)
    with sched.step():
        x = blocks[0](x0)
    recs = list(sched._captured)
    x.backward(dy)
    by_where = {}
    for r in recs:
        by_where.setdefault(r["where"], []).append((r["role"], r["nbytes"]))
    scores = B * HEADS * S * S * 4
    attn = by_where["before the first layer"]
    # the softmax output (saved by softmax and by probs @ v: one capture), the input (saved by
    # q, k and v: one capture, held by the caller), the views of q, k, v, the attention output
    assert attn.count(("other", scores)) == 1
    assert sum(1 for r in recs if r["nbytes"] == B * S * D * 4 and r["where"] == "before the first layer") == 5
    assert all(r["role"] != "other" or r["nbytes"] >= MIN_ELEMS * 4 for r in recs), "small tensors are not captured"
    roles = [r for r, _ in by_where["layer 0"]]
    assert "preact" in roles and "fc1_input" in roles  # our op's tagged roles, in its layer
    params = {p.data_ptr() for p in blocks[0].parameters()}
    assert not any(r["ref"]() is not None and r["ref"]().tensor.data_ptr() in params for r in recs)
    held = {r["key"]: r["held"] for r in recs}
    assert held[("before the first layer", "other", 0)], "the caller's input requires grad: offloading frees nothing"
    assert not held[("before the first layer", "other", [k for w, ro, k in held if w == "before the first layer"][-1])]
    assert len(sched._events) == len(recs), "every captured tensor's first use is a backward event"
    sched.end_step()


def test_plan_moves_tensors_live_at_the_peak_and_gradients_stay_bitwise():
    ref_blocks, x0, dy = _setup(None)
    ref = _run(ref_blocks, x0, dy, None)
    sched = MeasuredOffloadScheduler(_policy(), offload_cpu_tensors=True)
    blocks, x0, dy = _setup(sched)
    first = _run(blocks, x0, dy, sched)  # memory step
    assert sched.plan is None, "the plan's times come from a second step without memory probes"
    timed = _run(blocks, x0, dy, sched)  # timing step
    assert sched.plan is not None and sched.plans_made == 1
    plan, prof = sched.plan, sched.profile
    assert [torch.equal(a, b) for a, b in zip(first, ref)] == [True] * len(ref)
    assert [torch.equal(a, b) for a, b in zip(timed, ref)] == [True] * len(ref)
    pj, peak = prof.peak
    assert peak == max(b for _, b in prof.samples) and plan.peak_before == peak
    moved = [d for d in plan.decisions.values() if d.action == OFFLOAD]
    assert moved and plan.peak_after < plan.peak_before
    assert any(d.role == "other" for d in moved), "attention's tensors move, not only our roles"
    t_prev, t_peak = prof.samples[pj - 1][0], prof.samples[pj][0]
    for t in prof.tensors:
        if plan.decision(t.key).action == OFFLOAD:
            assert t.saved_ms <= t_prev and t.used_ms >= t_peak and not t.held
    for _ in range(3):  # planned steps: the same gradients, the planned bytes moved
        grads = _run(blocks, x0, dy, sched)
        assert [torch.equal(a, b) for a, b in zip(grads, ref)] == [True] * len(ref)
        assert sched.offloaded_bytes() == plan.offload_bytes
        assert sched.plans_made == 1, "a step like the profiled one keeps the plan"
    text = plan.describe()
    assert "measured-peak offload plan" in text and "| offload |" in text


class Tick(torch.autograd.Function):
    """Advances the fake clock: 1 ms in forward, 2 ms in backward (a layer's compute)."""

    clock = [0.0]

    @staticmethod
    def forward(ctx, x):
        Tick.clock[0] += 1e-3
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        Tick.clock[0] += 2e-3
        return g


def _run_ticking(blocks, x0, dy, sched):
    with sched.step():
        x = x0
        for b in blocks:
            x = Tick.apply(b(x))
    x.backward(dy)
    for p in [x0] + [p for b in blocks for p in b.parameters()]:
        p.grad = None
    assert sched.end_step() == {}


def test_plan_times_come_from_a_step_without_memory_probes(monkeypatch):
    """The memory probes cost host time, which stretches a host-bound step: the plan must not
    see copy windows that only the probes opened.  On a fake clock that advances only in the
    layers (1 ms forward, 2 ms backward each) and in the probe (10 ms a call), the profile's
    times are the layers' alone."""
    monkeypatch.setattr(offload.scheduler, "time", types.SimpleNamespace(perf_counter=lambda: Tick.clock[0]))
    probes = []

    def slow_probe():
        probes.append(sched._live_bytes)
        Tick.clock[0] += 10e-3
        return sched._live_bytes

    sched = MeasuredOffloadScheduler(_policy(), memory_probe=slow_probe, offload_cpu_tensors=True)
    blocks, x0, dy = _setup(sched)
    _run_ticking(blocks, x0, dy, sched)  # memory step
    n_probes = len(probes)
    assert n_probes > 10 and sched.plan is None
    _run_ticking(blocks, x0, dy, sched)  # timing step
    assert len(probes) == n_probes, "the timing step probes no memory"
    assert sched.plan is not None
    prof = sched.profile
    assert prof.step_ms == pytest.approx(3 * 1.0 + 3 * 2.0), "3 layers: 1 ms forward and 2 ms backward each"
    assert max(t for t, _ in prof.samples) <= prof.step_ms + 1e-9
    assert [b for _, b in prof.samples] == probes, "the memory is the memory step's"
    saved = sorted({round(t.saved_ms, 6) for t in prof.tensors})
    assert saved == [0.0, 1.0, 2.0], "tensors are saved in the three layers' forwards, 1 ms apart"
    used = [t.used_ms for t in prof.tensors if math.isfinite(t.used_ms)]
    assert used and all(5.0 - 1e-9 <= u <= 9.0 + 1e-9 for u in used) and list(prof.bwd_events) == sorted(prof.bwd_events)


def test_a_timing_step_that_differs_from_the_memory_step_profiles_again():
    sched = MeasuredOffloadScheduler(_policy(), offload_cpu_tensors=True)
    blocks, x0, dy = _setup(sched)
    _run(blocks, x0, dy, sched)  # memory step, three blocks
    _run(blocks[:2], x0, dy, sched)  # timing step with other tensors: no plan from the two
    assert sched.plan is None and not sched._timing_step, "the next step probes memory again"
    _run(blocks[:2], x0, dy, sched)
    _run(blocks[:2], x0, dy, sched)
    assert sched.plan is not None and sched.plans_made == 1
    assert {t.where for t in sched.profile.tensors} == {"before the first layer", "layer 0", "after layer 0", "layer 1"}


class _Done:
    """A finished CUDA event of a fake timeline: `elapsed_time` to another is the other's ms."""

    def __init__(self, ms=0.0, done=True):
        self.ms, self.done = ms, done

    def query(self):
        return self.done

    def elapsed_time(self, other):
        return other.ms - self.ms

    def synchronize(self):
        raise AssertionError("the wait check must not synchronize the host")


def _planned_step_waiting(blocks, x0, dy, sched, wait_ms, done=True):
    """A planned step whose compute stream waited `wait_ms` for its reloads (as its events say)."""
    with sched.step():
        x = x0
        for b in blocks:
            x = b(x)
    x.backward(dy)
    for p in [x0] + [p for b in blocks for p in b.parameters()]:
        p.grad = None
    sched._waits.append((_Done(0.0), _Done(wait_ms, done)))
    assert sched.end_step() == {}


def test_planned_steps_that_wait_for_reloads_replan_on_a_slower_link():
    sched = MeasuredOffloadScheduler(_policy(), offload_cpu_tensors=True)
    blocks, x0, dy = _setup(sched)
    _run(blocks, x0, dy, sched)
    _run(blocks, x0, dy, sched)
    first = sched.plan
    assert first is not None and sched.link_scale == 1.0
    allowance = first.cost_limit_ms - first.cost_ms
    _planned_step_waiting(blocks, x0, dy, sched, allowance * 0.5)  # within the limit
    _run(blocks, x0, dy, sched)  # reads the step before's waits: nothing to do
    assert sched.plan is first and sched.link_replans == 0
    _planned_step_waiting(blocks, x0, dy, sched, allowance + 5.0, done=False)  # not finished when read: not read
    _run(blocks, x0, dy, sched)
    assert sched.plan is first and sched.link_replans == 0
    _planned_step_waiting(blocks, x0, dy, sched, allowance + 5.0)
    assert sched.plan is first, "a step's waits are read one step later (its events are done by then)"
    _run(blocks, x0, dy, sched)
    assert sched.plan is not first and sched.link_replans == 1 and sched.plans_made == 1
    copy_ms = sum(d.d2h_end_ms - d.d2h_start_ms for d in first.decisions.values() if d.action == OFFLOAD)
    scale = max(copy_ms / (copy_ms + allowance + 5.0), 0.25)
    assert sched.link_scale == pytest.approx(scale)
    assert sched.plan.d2h_gbps == pytest.approx(first.d2h_gbps * scale) and "replanned with the link" in sched.plan.why
    for _ in range(6):  # at most MAX_LINK_REPLANS
        _planned_step_waiting(blocks, x0, dy, sched, 1e9)
    assert sched.link_replans == 3 and sched.link_scale == pytest.approx(scale * 0.25 ** 2)
    ref = _run(_setup(None)[0], x0, dy, None)
    assert [torch.equal(a, b) for a, b in zip(_run(blocks, x0, dy, sched), ref)] == [True] * len(ref)


def test_new_shapes_profile_again():
    sched = MeasuredOffloadScheduler(_policy(), offload_cpu_tensors=True)
    blocks, x0, dy = _setup(sched, layers=2)
    _run(blocks, x0, dy, sched)
    _run(blocks, x0, dy, sched)
    assert sched.plans_made == 1
    blocks2, x1, dy1 = _setup(sched, layers=3, seed=1)  # a third block: tensors the plan has not seen
    ref = _run(_setup(None, layers=3, seed=1)[0], x1, dy1, None)
    assert [torch.equal(a, b) for a, b in zip(_run(blocks2, x1, dy1, sched), ref)] == [True] * len(ref)
    assert sched.plan is None  # stale: the next two steps profile
    _run(blocks2, x1, dy1, sched)
    assert sched.plan is None
    _run(blocks2, x1, dy1, sched)
    assert sched.plans_made == 2 and sched.plan is not None


def test_without_step_only_layers_are_captured():
    sched = MeasuredOffloadScheduler(_policy(calibration_steps=3), offload_cpu_tensors=True)
    blocks, x0, dy = _setup(sched, layers=1)
    x = blocks[0](x0)  # no step(): the attention's tensors are not seen
    assert {r["where"] for r in sched._captured} == {"layer 0"}
    x.backward(dy)
    sched.end_step()


def test_arguments():
    with pytest.raises(OffloadArgumentError, match="peak must be one of"):
        OffloadPolicy(auto=True, peak="guessed")
    with pytest.raises(OffloadArgumentError, match="needs auto=True"):
        OffloadPolicy(peak="measured")
    with pytest.raises(OffloadArgumentError, match="MeasuredOffloadScheduler"):
        OffloadScheduler(_policy())
    with pytest.raises(OffloadArgumentError, match="peak='measured'"):
        MeasuredOffloadScheduler(OffloadPolicy(auto=True, d2h_gbps=1.0, h2d_gbps=1.0))
    with pytest.raises(OffloadArgumentError, match="capture_min_elements"):
        _policy(capture_min_elements=0)
    sched = MeasuredOffloadScheduler(_policy(), offload_cpu_tensors=True)
    with sched.step():
        with pytest.raises(RuntimeError, match="twice"):
            sched.start_forward()
    assert OffloadPolicy(auto=True).peak == "assumed"  # the default is unchanged


@pytest.mark.gpu
def test_measured_plan_lowers_the_cuda_peak():
    """On the GPU: the planned step's measured peak is below the profiled one, gradients equal."""
    dev = "cuda"
    torch.manual_seed(0)
    sched = MeasuredOffloadScheduler(OffloadPolicy(auto=True, peak="measured", calibration_steps=2))
    layers = [nn.Sequential(nn.Linear(2048, 8192), nn.GELU(), nn.Linear(8192, 2048)).to(dev) for _ in range(6)]
    x0 = torch.randn(8192, 2048, device=dev, requires_grad=True)

    def step():
        torch.cuda.reset_peak_memory_stats()
        with sched.step():
            x = x0
            for m in layers:
                x = m(x)
            loss = x.float().square().mean()
        loss.backward()
        grads = [p.grad.clone() for m in layers for p in m.parameters()]
        for m in layers:
            m.zero_grad(set_to_none=True)
        x0.grad = None
        peak = torch.cuda.max_memory_allocated()
        assert sched.end_step() == {}
        return grads, peak

    ref, _ = step()
    step()
    assert sched.plan is not None, sched
    grads, _ = step()
    grads, peak = step()
    _, base_peak = sched.profile.peak
    assert [torch.equal(a, b) for a, b in zip(grads, ref)] == [True] * len(ref)
    assert peak < base_peak, sched.plan.describe()
