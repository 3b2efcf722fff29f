"""srelu_mlp's and the modules' `offload=` argument (CPU, torch path): each call is marked
as the step's next layer for the scheduler, its saved tensors go through the scheduler's
hooks with their roles, numbering restarts at end_step, an enclosing `sched.layer(i)` wins,
and gradients are those of the plain op.  (On the GPU, tests/test_offload_gpu.py checks
the copies themselves.)"""
import pytest
import torch

import cute_kernels as ck
from cute_kernels.mlp import srelu_mlp
from offload import OffloadPolicy, OffloadScheduler, is_protected, role_of


class RecordingScheduler(OffloadScheduler):
    """Records (layer, role) of every tensor autograd saves while a layer is marked."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.seen = []

    def _pack(self, t):
        if self.current_layer is not None and isinstance(t, torch.Tensor):
            self.seen.append((self.current_layer, "PARAM" if is_protected(t) else role_of(t)))
        return super()._pack(t)


def _layers(n, grouped, seed=0):
    g = torch.Generator().manual_seed(seed)
    e = 3
    w = [(torch.nn.Parameter(torch.randn(*((e, 16, 8) if grouped else (16, 8)), generator=g) / 3),
          torch.nn.Parameter(torch.randn(*((e, 8, 16) if grouped else (8, 16)), generator=g) / 4)) for _ in range(n)]
    x = torch.randn(20, 8, generator=g, requires_grad=True)
    prob = torch.rand(20, generator=g, requires_grad=True) if grouped else None
    return w, x, prob, ([5, 0, 15] if grouped else None)


def _grads(x, prob, layers):
    return [t.grad.clone() for t in [x] + ([prob] if prob is not None else []) + [w for pair in layers for w in pair]]


@pytest.mark.parametrize("grouped", [False, True])
def test_each_call_is_the_next_layer_and_gradients_match(grouped):
    layers, x0, prob, splits = _layers(3, grouped)

    def run(offload):
        x = x0
        for w1, w2 in layers:
            x = srelu_mlp(x, w1, w2, m_splits=splits, prob=prob, backend="torch", offload=offload)
        x.square().sum().backward()
        g = _grads(x0, prob, layers)
        for t in [x0, prob] + [w for pair in layers for w in pair]:
            if t is not None:
                t.grad = None
        return g

    ref = run(None)
    sched = RecordingScheduler(OffloadPolicy(min_tensor_bytes=0), num_layers=3)
    for step in range(2):
        sched.seen.clear()
        got = run(sched)
        assert all(torch.equal(a, b) for a, b in zip(ref, got))
        assert sched.end_step() == {}
        assert sched.current_layer is None
        assert sorted({layer for layer, _ in sched.seen}) == [0, 1, 2], f"step {step}: numbering restarts"
        roles = sorted(r for layer, r in sched.seen if layer == 1)
        expected = ["PARAM", "PARAM", "fc1_input", "postact", "preact"] + (["prob"] if grouped else [])
        assert roles == sorted(expected)


def test_an_enclosing_layer_wins_and_layers_do_not_nest():
    (w1, w2), = _layers(1, False)[0]
    x = torch.randn(4, 8)
    sched = RecordingScheduler()
    with sched.layer(7):
        srelu_mlp(x, w1, w2, backend="torch", offload=sched)
        with pytest.raises(RuntimeError, match="do not nest"):
            with sched.layer(8):
                pass
    assert {layer for layer, _ in sched.seen} == {7}
    with sched.layer():  # unnumbered: one past the last layer marked
        assert sched.current_layer == 8


def test_modules_take_the_scheduler():
    sched = RecordingScheduler()
    dense = ck.SReLUMLP(8, 16, backend="torch", offload=sched)
    moe = ck.GroupedSReLUMLP(3, 8, 16, backend="torch", offload=sched)
    x = torch.randn(20, 8, requires_grad=True)
    moe(dense(x), [5, 0, 15]).sum().backward()
    assert sorted({layer for layer, _ in sched.seen}) == [0, 1]
    assert "offload" not in dense.state_dict() and set(dense.state_dict()) == {"fc1.weight", "fc2.weight"}


def test_offload_must_be_a_scheduler():
    w1, w2 = torch.randn(16, 8), torch.randn(8, 16)
    with pytest.raises(TypeError, match="offload must be an offload.OffloadScheduler"):
        srelu_mlp(torch.randn(4, 8), w1, w2, backend="torch", offload=OffloadPolicy())
