"""The offload copy path on a fake CUDA (CPU only): the schedulers' streams, events, copies and
pinned pool are replaced by spies that log every call, so the tests can check what makes
copies overlap with compute, and fail on what serializes them:

- every offload copy (D2H) goes to a pinned buffer from the pool, non_blocking, on the copy
  stream, after that stream waited for the tensor's producer (an event on the compute stream);
  the tensor's memory is handed to the copy stream (record_stream), not waited for;
- the compute stream never waits on a D2H copy, and waits on a reload only when backward
  unpacks that tensor (its own H2D event), never earlier;
- reloads copy non_blocking from the pinned buffer on the H2D stream;
- nothing synchronizes the host (Event/Stream/device synchronize) in a step;
- pinned buffers are reused across steps (a fresh pinned allocation per step blocks the host).

The data still moves (the fake tensors are CPU tensors), so the round trip is checked too."""
import contextlib
import math
import types

import pytest
import torch

import offload.pool
import offload.scheduler
from offload import MeasuredOffloadScheduler, OffloadPolicy, OffloadScheduler, tag
from offload.measured_planner import KEEP, OFFLOAD, MeasuredPlan, TensorDecision

LOG: list = []


class FakeCudaTensor(torch.Tensor):
    """A CPU tensor that says it is on cuda:0; copies into it are logged."""

    @property
    def is_cuda(self):
        return True

    @property
    def device(self):
        return torch.device("cuda", 0)

    def copy_(self, src, non_blocking=False):
        LOG.append(("copy", _current(), type(self), type(src), non_blocking))
        with torch._C.DisableTorchFunctionSubclass():
            torch.Tensor.copy_(self, src)
        return self

    def record_stream(self, stream):
        LOG.append(("record_stream", stream))


class PinnedHost(torch.Tensor):
    def is_pinned(self, *args):
        return True

    def copy_(self, src, non_blocking=False):
        LOG.append(("copy", _current(), type(self), type(src), non_blocking))
        with torch._C.DisableTorchFunctionSubclass():
            torch.Tensor.copy_(self, src)
        return self


class PageableHost(PinnedHost):
    def is_pinned(self, *args):
        return False


class FakeStream:
    def __init__(self, device=None, name="side"):
        self.name = name

    def wait_event(self, ev):
        LOG.append(("wait", self, ev))

    def wait_stream(self, other):
        LOG.append(("wait_stream", self, other))

    def synchronize(self):
        LOG.append(("SYNC", "stream"))

    def __repr__(self):
        return f"<stream {self.name}>"


class FakeEvent:
    def __init__(self, enable_timing=False, **_):
        self.stream = None

    def record(self, stream=None):
        self.stream = stream or _current()
        LOG.append(("record", self.stream, self))

    def query(self):
        return True

    def synchronize(self):
        LOG.append(("SYNC", "event"))

    def elapsed_time(self, other):
        return 0.0


COMPUTE = FakeStream(name="compute")
_stack = [COMPUTE]


def _current(device=None):
    return _stack[-1]


@contextlib.contextmanager
def _stream_ctx(s):
    _stack.append(s)
    try:
        yield
    finally:
        _stack.pop()


def _sync(*_a, **_k):
    LOG.append(("SYNC", "device"))


fake_cuda = types.SimpleNamespace(Stream=FakeStream, Event=FakeEvent, current_stream=_current, stream=_stream_ctx,
                                  synchronize=_sync, is_available=lambda: False, _sleep=lambda n: None)


def _empty(*size, dtype=None, device=None, pin_memory=False, **kw):
    t = torch.empty(*size, dtype=dtype, **kw)
    if device is not None and torch.device(device).type == "cuda":
        return t.as_subclass(FakeCudaTensor)
    LOG.append(("host_alloc", pin_memory))
    return t.as_subclass(PinnedHost if pin_memory else PageableHost)


class _TorchProxy:
    """torch, with cuda and empty replaced (seen only by offload/scheduler.py and offload/pool.py)."""

    cuda = fake_cuda
    empty = staticmethod(_empty)

    def __getattr__(self, name):
        return getattr(torch, name)


@pytest.fixture
def fake(monkeypatch):
    LOG.clear()
    del _stack[1:]
    monkeypatch.setattr(offload.scheduler, "torch", _TorchProxy())
    monkeypatch.setattr(offload.pool, "torch", _TorchProxy())
    yield LOG


def _gpu(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).as_subclass(FakeCudaTensor)


def _check_log(log, d2h_count, h2d_count):
    """The checks every step must pass; returns (d2h stream, h2d stream)."""
    assert not [e for e in log if e[0] == "SYNC"], "nothing synchronizes the host in a step"
    copies = [e for e in log if e[0] == "copy"]
    d2h = [e for e in copies if e[2] in (PinnedHost, PageableHost)]
    h2d = [e for e in copies if e[2] is FakeCudaTensor and e[3] in (PinnedHost, PageableHost)]
    assert len(d2h) == d2h_count and len(h2d) == h2d_count, copies
    for _, stream, dst, src, non_blocking in d2h:
        assert dst is PinnedHost and src is FakeCudaTensor, "offload copies go to pinned memory"
        assert non_blocking and stream is not COMPUTE, "offload copies are async, on the copy stream"
    for _, stream, dst, src, non_blocking in h2d:
        assert src is PinnedHost and non_blocking and stream is not COMPUTE
    assert not [e for e in log if e[0] == "host_alloc" and not e[1]], "no pageable host buffers"
    d2h_stream = d2h[0][1] if d2h else None
    h2d_stream = h2d[0][1] if h2d else None
    assert d2h_stream is not h2d_stream or d2h_stream is None
    # the compute stream waits on reloads only, never on an offload copy
    for e in log:
        if e[0] == "wait" and e[1] is COMPUTE:
            assert e[2].stream is h2d_stream, "the compute stream waits on a reload, never on a D2H copy"
        assert e[0] != "wait_stream" or e[1] is not COMPUTE, "the compute stream never waits on a whole copy stream"
    return d2h_stream, h2d_stream


def _d2h_ordering(log, d2h_stream):
    """Before each D2H copy the copy stream waited on an event the compute stream recorded; after
    it the tensor was handed to the copy stream (record_stream)."""
    for i, e in enumerate(log):
        if e[0] == "copy" and e[1] is d2h_stream:
            waits = [w for w in log[:i] if w[0] == "wait" and w[1] is d2h_stream]
            assert waits and waits[-1][2].stream is COMPUTE
            assert ("record_stream", d2h_stream) in log[i:], "the allocator keeps the block until the copy is done"


def test_static_policy_copies_overlap_and_compute_waits_only_for_its_reload(fake):
    sched = OffloadScheduler(OffloadPolicy(roles=("preact",), min_tensor_bytes=0, offload_last_layer=True))
    a, b = _gpu(64, 48, seed=1), _gpu(32, 48, seed=2)
    ref_a, ref_b = a.clone(), b.clone()
    with sched.layer(0):
        ha = sched._pack(tag(a, "preact"))
    with sched.layer(1):
        hb = sched._pack(tag(b, "preact"))
    n_fwd = len(fake)
    d2h, _ = _check_log(fake, 2, 0)
    _d2h_ordering(fake, d2h)
    assert not [e for e in fake if e[0] == "wait" and e[1] is COMPUTE], "forward never waits on a copy"
    out_b = sched._unpack(hb)  # layer 1's backward: reloads layer 1, prefetches layer 0
    at_b = len(fake)
    out_a = sched._unpack(ha)
    _, h2d = _check_log(fake, 2, 2)
    compute_waits = [(i, e[2]) for i, e in enumerate(fake) if e[0] == "wait" and e[1] is COMPUTE]
    assert len(compute_waits) == 2 and n_fwd <= compute_waits[0][0] < at_b <= compute_waits[1][0], \
        "each wait comes with the unpack of its own tensor"
    # the H2D stream waited for each tensor's D2H copy before reloading it
    for i, e in enumerate(fake):
        if e[0] == "copy" and e[1] is h2d:
            assert any(w[0] == "wait" and w[1] is h2d and w[2].stream is d2h for w in fake[:i])
    assert torch.equal(out_a.as_subclass(torch.Tensor), ref_a) and torch.equal(out_b.as_subclass(torch.Tensor), ref_b)
    assert sched.end_step() == {}


def test_pinned_buffers_are_reused_across_steps(fake):
    sched = OffloadScheduler(OffloadPolicy(roles=("preact",), min_tensor_bytes=0, offload_last_layer=True))
    counts = []
    for step in range(3):
        hs = []
        for i, rows in enumerate((64, 40, 64)):
            with sched.layer(i):
                hs.append(sched._pack(tag(_gpu(rows, 48, seed=step * 3 + i), "preact")))
        for h in reversed(hs):
            sched._unpack(h)
        sched.end_step()
        counts.append(sum(1 for e in fake if e[0] == "host_alloc"))
    assert counts[0] == sched.pool.allocations > 0
    assert counts[2] == counts[0], "the second and third steps pin no new host memory"
    _check_log(fake, 9, 9)


def _plan(keys_events):
    """A measured plan that offloads the given keys, each reload issued at the given backward event."""
    decisions = {k: TensorDecision(k, k[1], 0, OFFLOAD if e is not None else KEEP, "test", k[0], reload_event=e)
                 for k, e in keys_events}
    return MeasuredPlan(decisions, 0, 0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0)


def test_measured_planned_step_copies_overlap_and_compute_waits_only_at_use(fake):
    """MeasuredOffloadScheduler's planned step: an untagged ('other') tensor and our op's role are
    copied out as they are saved; the first backward use issues the other's reload ahead of its
    use; the compute stream waits on each reload only when that tensor is unpacked."""
    pol = OffloadPolicy(auto=True, peak="measured", d2h_gbps=1.0, h2d_gbps=1.0, min_tensor_bytes=0,
                        capture_min_elements=16)
    sched = MeasuredOffloadScheduler(pol)
    sched._use_events = True  # the fake CUDA's events
    other, pre, kept = _gpu(64, 48, seed=3), _gpu(32, 48, seed=4), _gpu(16, 48, seed=5)
    refs = [t.clone() for t in (other, pre, kept)]
    k_other = ("before the first layer", "other", 0)
    k_pre = ("layer 0", "preact", 0)
    k_kept = ("after layer 0", "other", 0)
    plan = _plan([(k_other, 0), (k_pre, 0), (k_kept, None)])
    for k, t in ((k_other, other), (k_pre, pre), (k_kept, kept)):
        plan.decisions[k].nbytes = t.numel() * t.element_size()
    sched.plan, sched._reloads = plan, plan.reloads_at()
    sched._new_measured_step()
    with sched.step():
        h_other = sched._pack_any(other)
        with sched.layer(0):
            h_pre = sched._pack_any(tag(pre, "preact"))
        h_kept = sched._pack_any(kept)
    n_fwd = len(fake)
    d2h, _ = _check_log(fake, 2, 0)
    _d2h_ordering(fake, d2h)
    out_kept = sched._unpack_any(h_kept)  # backward event 0: issues both reloads, waits on none
    at_kept = len(fake)
    assert not [e for e in fake if e[0] == "wait" and e[1] is COMPUTE], "no wait before a moved tensor's use"
    out_pre = sched._unpack_any(h_pre)
    at_pre = len(fake)
    out_other = sched._unpack_any(h_other)
    _, h2d = _check_log(fake, 2, 2)
    waits = [i for i, e in enumerate(fake) if e[0] == "wait" and e[1] is COMPUTE]
    assert len(waits) == 2 and n_fwd < at_kept < waits[0] < at_pre < waits[1]
    h2d_copies = [i for i, e in enumerate(fake) if e[0] == "copy" and e[1] is h2d]
    assert all(n_fwd < i < at_kept for i in h2d_copies), "both reloads were issued at backward event 0"
    for out, ref in zip((out_other, out_pre, out_kept), refs):
        assert torch.equal(out.as_subclass(torch.Tensor), ref)
    assert sched.end_step() == {}
    assert sched.exposed_ms() == 0.0 and len(sched._waits_done) == 2, "the two reload waits are timed"
    assert math.isfinite(sched.exposed_ms())
