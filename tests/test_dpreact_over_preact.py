"""srelu_mlp(dpreact_over_preact=True): the backward writes preact's gradient into preact's
storage; on CPU (the torch path, and the cute path's plumbing with the ops' CPU math) the
gradients are bitwise those of the default, the fused dgrad's result is preact's storage, and
a second backward through the same graph fails loudly instead of reading the overwritten preact."""
from unittest import mock

import pytest
import torch

from cute_kernels import InputError, gemm_ops, mlp, srelu_mlp, torch_ops


def _problem(grouped: bool, dtype, with_prob: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    m, h, f, e = 77, 24, 40, 5
    x = torch.randn(m, h, generator=g).to(dtype)
    w1 = (torch.randn(*((e, f, h) if grouped else (f, h)), generator=g) / h ** 0.5).to(dtype)
    w2 = (torch.randn(*((e, h, f) if grouped else (h, f)), generator=g) / f ** 0.5).to(dtype)
    prob = torch.rand(m, generator=g) if with_prob else None
    splits = [30, 0, 1, 40, 6] if grouped else None
    dy = torch.randn(m, h, generator=g).to(dtype)
    return x, w1, w2, prob, splits, dy


def _grads(problem, **kw):
    x, w1, w2, prob, splits, dy = problem
    leaves = [t.clone().requires_grad_() for t in (x, w1, w2)]
    p = prob.clone().requires_grad_() if prob is not None else None
    y = srelu_mlp(*leaves, m_splits=splits, prob=p, **kw)
    y.backward(dy)
    return [y] + [t.grad for t in leaves] + ([p.grad] if p is not None else [])


CASES = [(grouped, dtype, with_prob, recompute, activation)
         for grouped in (False, True) for dtype in (torch.float32, torch.bfloat16)
         for with_prob, recompute, activation in ((False, False, None), (True, True, None),
                                                  (True, False, "tanh_srelu:3.0"))]


@pytest.mark.parametrize("grouped,dtype,with_prob,recompute,activation", CASES)
def test_torch_path_gradients_unchanged(grouped, dtype, with_prob, recompute, activation):
    problem = _problem(grouped, dtype, with_prob)
    kw = dict(backend="torch", recompute_postact=recompute, activation=activation)
    base = _grads(problem, **kw)
    over = _grads(problem, dpreact_over_preact=True, **kw)
    for a, b in zip(over, base):
        assert torch.equal(a, b)


@pytest.mark.parametrize("grouped", [False, True])
def test_cute_path_plumbing_gradients_unchanged(grouped):
    """The cute path's backward (ops on CPU run their torch math) with and without the option."""
    problem = _problem(grouped, torch.bfloat16, with_prob=grouped)
    calls = []
    real = torch_ops.fc2_dgrad_dsrelu_over_preact

    def spy(dy, w2, preact, *a, **k):
        out = real(dy, w2, preact, *a, **k)
        calls.append(out[0].data_ptr() == preact.data_ptr())
        return out

    with mock.patch.object(mlp, "uses_cute_path", lambda x, backend: True), \
            mock.patch.object(torch_ops, "fc2_dgrad_dsrelu_over_preact", spy):
        base = _grads(problem, backend="cute")
        assert calls == []
        over = _grads(problem, backend="cute", dpreact_over_preact=True)
    assert calls == [True]  # dpreact is preact's storage
    for a, b in zip(over, base):
        assert torch.equal(a, b)


def test_over_preact_op_matches_the_custom_op():
    x, w1, w2, prob, splits, dy = _problem(True, torch.bfloat16, with_prob=True)
    preact = x @ w1[0].t()
    kept = preact.clone()
    ref = torch_ops.fc2_dgrad_dsrelu_op(dy, w2, kept, splits, prob, True)
    got = torch_ops.fc2_dgrad_dsrelu_over_preact(dy, w2, preact, splits, prob, True)
    assert got[0] is preact
    for a, b in zip(got, ref):
        assert torch.equal(a, b)


def test_a_second_backward_fails_instead_of_reading_the_overwritten_preact():
    x, w1, w2, prob, splits, dy = _problem(False, torch.float32, with_prob=False)
    w1 = w1.clone().requires_grad_()
    y = srelu_mlp(x, w1, w2, backend="torch", dpreact_over_preact=True)
    y.backward(dy, retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward(dy)


def test_dgrad_out_argument_is_checked():
    dy = torch.randn(64, 32).bfloat16()
    w2 = torch.randn(32, 48).bfloat16()
    pre = torch.randn(64, 48).bfloat16()
    with pytest.raises(InputError, match=r"out \(dpreact\) must have shape \(64, 48\)"):
        gemm_ops.fc2_dgrad_dsrelu(dy, w2, pre, out=torch.empty(64, 40).bfloat16())
    with pytest.raises(InputError, match=r"out \(dpreact\) dtype torch.float16 does not match"):
        gemm_ops.fc2_dgrad_dsrelu(dy, w2, pre, out=torch.empty(64, 48).half())


def test_torch_path_writes_into_preact():
    problem = _problem(True, torch.bfloat16, with_prob=True)
    seen = []
    real = mlp.act_backward

    def spy(dpost, preact, prob, activation=None, **kw):
        out = kw.get("out")
        seen.append(out is preact)
        return real(dpost, preact, prob, activation, **kw)

    with mock.patch.object(mlp, "act_backward", spy):
        _grads(problem, backend="torch")
        _grads(problem, backend="torch", dpreact_over_preact=True)
    assert seen == [False, True]
