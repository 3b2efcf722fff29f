"""ScaledTanhSReLU on the GPU kernels: FC1's forward epilogue, the fused dgrad epilogue (with
postact recompute and router gradient) and the whole op, dense and grouped, against
float64 references; s small (clamp active) and large (close to SReLU); fresh random data
each run; poisoned outputs checked for every element written."""
import os

import pytest
import torch

import cute_kernels as ck
from cute_kernels.activations import ScaledTanhSReLU
from cute_kernels.reference import rel_err

pytestmark = pytest.mark.gpu
S_VALUES = [0.5, 3.0, 1e4]


def _gen():
    seed = int.from_bytes(os.urandom(4), "little")
    return seed, torch.Generator(device="cuda").manual_seed(seed)


def _act64(z, s):
    return (s * torch.tanh(torch.relu(z) / s)) ** 2


def _grad64(z, s):
    t = torch.tanh(torch.relu(z) / s)
    return 2 * s * t * (1 - t * t) * (z > 0)


def _per_expert(x, w, splits, fn):
    if splits is None:
        return fn(x, w)
    outs, start = [], 0
    for e, n in enumerate(splits):
        outs.append(fn(x[start:start + n], w[e]))
        start += n
    return torch.cat(outs)


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("s", S_VALUES)
def test_fc1_forward_epilogue(grouped, s):
    seed, g = _gen()
    m, k, n, e = 1001, 512, 1536, 5
    x = torch.randn(m, k, device="cuda", generator=g).bfloat16()
    w = (torch.randn(*((e, n, k) if grouped else (n, k)), device="cuda", generator=g) * (2 / k ** 0.5)).bfloat16()
    splits = [300, 0, 451, 1, 249] if grouped else None
    prob = torch.rand(m, device="cuda", generator=g) if grouped else None
    pre_out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    post_out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    pre, post = ck.fc1_srelu(x, w, m_splits=splits, prob=prob, out=(pre_out, post_out),
                             activation=ScaledTanhSReLU(s))
    assert torch.isfinite(pre).all() and torch.isfinite(post).all(), seed
    ref_pre = _per_expert(x.double(), w.double(), splits, lambda a, b: a @ b.t())
    ref_post = _act64(ref_pre, s) * (prob.double()[:, None] if grouped else 1)
    assert rel_err(pre, ref_pre) < 8e-3, (seed, rel_err(pre, ref_pre))
    assert rel_err(post, ref_post) < 1e-2, (seed, rel_err(post, ref_post))
    if s < 1:  # the clamp is active: far from plain relu^2
        assert rel_err(post, torch.relu(ref_pre) ** 2 * (prob.double()[:, None] if grouped else 1)) > 0.1


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("s", S_VALUES)
def test_fused_dgrad_epilogue(grouped, s):
    seed, g = _gen()
    m, h, f, e = 777, 512, 1024, 4
    dy = torch.randn(m, h, device="cuda", generator=g).bfloat16()
    w2 = (torch.randn(*((e, h, f) if grouped else (h, f)), device="cuda", generator=g) / h ** 0.5).bfloat16()
    pre = (torch.randn(m, f, device="cuda", generator=g) * s * 0.8 if s < 100 else
           torch.randn(m, f, device="cuda", generator=g) * 2).bfloat16()
    splits = [200, 377, 0, 200] if grouped else None
    prob = torch.rand(m, device="cuda", generator=g) if grouped else None
    dpre, post, dprob = ck.fc2_dgrad_dsrelu(dy, w2, pre, m_splits=splits, prob=prob, store_postact=True,
                                            activation=ScaledTanhSReLU(s))
    d = _per_expert(dy.double(), w2.double(), splits, lambda a, b: a @ b)
    p = prob.double()[:, None] if grouped else 1.0
    pre64 = pre.double()
    assert torch.isfinite(dpre).all() and torch.isfinite(post).all(), seed
    assert rel_err(dpre, d * _grad64(pre64, s) * p) < 1e-2, (seed, rel_err(dpre, d * _grad64(pre64, s) * p))
    assert rel_err(post, _act64(pre64, s) * p) < 1e-2, seed
    if grouped:
        ref = (d * _act64(pre64, s)).sum(1)
        assert rel_err(dprob, ref) < 1e-3, (seed, rel_err(dprob, ref))


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("s", [0.7, 1e4])
def test_whole_op_every_gradient_against_float64(grouped, recompute, s):
    seed, g = _gen()
    m, h, f, e = 1000, 512, 1536, 6
    x = torch.randn(m, h, device="cuda", generator=g).bfloat16()
    w1 = (torch.randn(*((e, f, h) if grouped else (f, h)), device="cuda", generator=g) * (2 / h ** 0.5)).bfloat16()
    w2 = (torch.randn(*((e, h, f) if grouped else (h, f)), device="cuda", generator=g) / f ** 0.5).bfloat16()
    prob = torch.rand(m, device="cuda", generator=g) if grouped else None
    splits = [400, 0, 123, 250, 27, 200] if grouped else None
    dy = torch.randn(m, h, device="cuda", generator=g).bfloat16()
    res = {}
    for name, dtype, backend in (("cute", None, "cute"), ("ref", torch.float64, "torch")):
        leaves = [t.to(dtype or t.dtype).clone().requires_grad_() for t in (x, w1, w2)]
        pl = prob.to(dtype or prob.dtype).clone().requires_grad_() if grouped else None
        y = ck.srelu_mlp(*leaves, m_splits=splits, prob=pl, recompute_postact=recompute, backend=backend,
                         activation=ScaledTanhSReLU(s))
        y.backward(dy.to(y.dtype))
        res[name] = [y] + [t.grad for t in leaves] + ([pl.grad] if grouped else [])
    for name, a, b in zip(["y", "dx", "dw1", "dw2", "dprob"], res["cute"], res["ref"]):
        assert torch.isfinite(a).all(), (name, seed)
        assert rel_err(a, b) < 2e-2, (name, rel_err(a, b), seed)
