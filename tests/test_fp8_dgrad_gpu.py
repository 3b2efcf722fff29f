"""The FP8 FC2 data gradient with the activation derivative in its epilogue (`fp8_dgrad_dact`:
the family's kernel with the dact epilogue on block-scaled operands) on the GPU against a float64
reference of its dequantized inputs: dpreact = p * dpost * f'(preact), the recomputed postact
p * f(preact), the router gradient rowsum(dpost * f(preact)); dense and grouped (bitwise equal to
the dense launch per expert), odd M, empty experts, dpreact quantized by the codec."""
import pytest
import torch

from cute_kernels.activations import ScaledTanhSReLU
from cute_kernels.fp8.ops import fp8_dgrad_dact
from cute_kernels.fp8.recipe import Fp8Recipe, dequantize, quantize_1x128, quantize_128x128

gpu = pytest.mark.gpu


def _inputs(m, n, k, seed, experts=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    dy = torch.randn(m, k, generator=g).bfloat16().cuda()
    w = (torch.randn(*((experts,) if experts else ()), n, k, generator=g) * 0.05).bfloat16().cuda()
    pre = torch.randn(m, n, generator=g).bfloat16().cuda()
    prob = torch.rand(m, generator=g).cuda()
    dq, ds = quantize_1x128(dy, "e5m2")
    if experts:
        parts = [quantize_128x128(w[i]) for i in range(experts)]
        wq, ws = torch.stack([p[0] for p in parts]).contiguous(), torch.stack([p[1] for p in parts]).contiguous()
    else:
        wq, ws = quantize_128x128(w)
    return dq, ds, wq, ws, pre, prob


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@gpu
@pytest.mark.parametrize("m,n,k", [(256, 256, 256), (77, 384, 272), (1, 128, 128), (1000, 1856, 2688)])
@pytest.mark.parametrize("with_prob", [False, True])
@pytest.mark.parametrize("tanh", [False])  # the tanh clamp is refused on this path (fp8_dgrad_dact)
def test_fp8_dgrad_dact_against_float64(m, n, k, with_prob, tanh):
    dq, ds, wq, ws, pre, prob = _inputs(m, n, k, seed=m + n + k)
    act = ScaledTanhSReLU(4.0) if tanh else None
    p = prob if with_prob else None
    dpre, post, dprob = fp8_dgrad_dact(dq, ds, wq, ws, pre, prob=p, store_postact=True, activation=act,
                                       recipe=Fp8Recipe(grad_format="e5m2"))
    dpost = dequantize(dq, ds).double() @ dequantize(wq, ws).double().T
    x = pre.double()
    if tanh:
        s = 4.0
        f = (s * torch.tanh(torch.relu(x) / s)) ** 2
        t = torch.tanh(torch.relu(x) / s)
        df = torch.where(x > 0, 2 * s * t * (1 - t * t), torch.zeros_like(x))
    else:
        f = torch.relu(x) ** 2
        df = 2 * torch.relu(x)
    pp = prob.double().reshape(-1, 1) if with_prob else 1.0
    assert not dpre.isnan().any() and not post.isnan().any()
    assert _rel(dpre, pp * dpost * df) < 1e-2
    assert _rel(post, pp * f) < 1e-2
    if with_prob:
        assert _rel(dprob, (dpost * f).sum(1)) < 1e-2
    else:
        assert dprob is None


@gpu
@pytest.mark.parametrize("splits", [[256, 0, 129, 1, 383], [0, 0, 77], [128] * 4])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_fp8_dgrad_dact_grouped_equals_dense_per_expert(splits, as_tensor):
    e, n, k = len(splits), 384, 1040
    m = sum(splits)
    dq, ds, wq, ws, pre, prob = _inputs(m, n, k, seed=m + e, experts=e)
    sp = torch.tensor(splits, dtype=torch.int32, device="cuda") if as_tensor else splits
    dpre, post, dprob = fp8_dgrad_dact(dq, ds, wq, ws, pre, m_splits=sp, prob=prob, store_postact=True)
    start = 0
    for i, s in enumerate(splits):
        rows = slice(start, start + s)
        if s:
            d_e, p_e, r_e = fp8_dgrad_dact(dq[rows], ds[rows], wq[i], ws[i], pre[rows], prob=prob[rows],
                                           store_postact=True)
            assert torch.equal(dpre[rows], d_e) and torch.equal(post[rows], p_e), f"expert {i}"
            assert torch.allclose(dprob[rows], r_e, rtol=1e-6, atol=1e-6), f"expert {i} router gradient"
        start += s


@gpu
def test_fp8_dgrad_dact_quantized_dpreact_is_the_recipe_of_the_bf16_one():
    m, n, k = 513, 1024, 512
    dq, ds, wq, ws, pre, prob = _inputs(m, n, k, seed=7)
    dpre, _, _ = fp8_dgrad_dact(dq, ds, wq, ws, pre, prob=prob)
    (q, qs), post, _ = fp8_dgrad_dact(dq, ds, wq, ws, pre, prob=prob, quantize_dpreact=True)
    assert post is None
    got = dequantize(q, qs.contiguous()).double()
    assert _rel(got, dpre) < 0.05  # e5m2-free: grad_format e4m3 by default, one FP8 rounding
