"""The FP8 MLP step's torch implementation (CPU): forward and gradients against float64
references (unquantized: the FP8 error; and the recipe composed by hand: the plumbing),
grouped with empty experts against per-expert dense steps, fused wgrad accumulation,
saved-activation bytes against the bf16 step, the weight copies' reuse scope, and bad inputs."""
import pytest
import torch

from cute_kernels import InputError
from cute_kernels.mlp import srelu_mlp
from cute_kernels.modules import GroupedSReLUMLP, SReLUMLP
from cute_kernels.fp8 import Fp8Recipe
from cute_kernels.fp8.ops import quantize_weight
from cute_kernels.fp8.weight_cache import reuse_weight_copies
from cute_kernels.fp8.recipe import dequantize, quantize_1x128, quantize_128x128
from cute_kernels.activations import SRELU, ScaledTanhSReLU
from cute_kernels.epilogue import EpilogueSpec

R = Fp8Recipe()
# FP8 (e4m3) error of the whole step against float64 on random normal data (measured on these
# shapes: y 5.5%, dx 6.3%, dw1 5-7%, dw2 5-5.6%, dp 5.7% (11% for one token)); the tests allow up to 12% and require more than 0.5%
# (so an unquantized step would fail them)
FP8_TOL = 0.12


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _inputs(m, h, f, e=0, seed=0, prob=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, h, generator=g)
    w1 = torch.randn(*((e, f, h) if e else (f, h)), generator=g) / h ** 0.5
    w2 = torch.randn(*((e, h, f) if e else (h, f)), generator=g) / f ** 0.5
    dy = torch.randn(m, h, generator=g)
    p = torch.rand(m, generator=g) if prob else None
    return x, w1, w2, dy, p


def _ref(x, w1, w2, p, splits=None, act=None):
    """float64 autograd reference, unquantized (act: an Activation, by its torch form; None: relu^2)."""
    if splits is None:
        pre = x @ w1.t()
        post = torch.relu(pre) ** 2 if act is None else act.torch_forward(pre)
        if p is not None:
            post = post * p[:, None]
        return post @ w2.t()
    outs, s = [], 0
    for e, n in enumerate(splits):
        sl = slice(s, s + n)
        outs.append(_ref(x[sl], w1[e], w2[e], None if p is None else p[sl], act=act))
        s += n
    return torch.cat(outs)


def _run(fn, x, w1, w2, dy, p):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w1, w2)]
    pl = p.detach().clone().requires_grad_() if p is not None else None
    y = fn(*leaves, pl)
    y.backward(dy.to(y.dtype))
    grads = [t.grad for t in leaves] + ([pl.grad] if pl is not None else [])
    return y.detach(), grads


@pytest.mark.parametrize("m,h,f,prob", [(77, 144, 272, False), (130, 256, 128, True), (1, 128, 256, True),
                                        (256, 128, 256, False)])  # M a multiple of 128: wgrad operands are views
def test_dense_step_close_to_float64_and_quantized(m, h, f, prob):
    x, w1, w2, dy, p = _inputs(m, h, f, seed=m, prob=prob)
    y, grads = _run(lambda x, w1, w2, p: srelu_mlp(x, w1, w2, prob=p, fp8=R), x, w1, w2, dy, p)
    yr, gr = _run(lambda x, w1, w2, p: _ref(x, w1, w2, p), *(t.double() for t in (x, w1, w2, dy)),
                  p.double() if p is not None else None)
    errs = [_rel(y, yr)] + [_rel(a, b) for a, b in zip(grads, gr)]
    assert all(5e-3 < e < FP8_TOL for e in errs[:4]), errs
    if prob:  # dp: one signed sum per token (cancellation); 11% measured for the single token
        assert 5e-3 < errs[4] < 0.25, errs


def test_forward_is_the_recipe_composed_by_hand():
    """y = dequant(q(relu(dq(x) dq(w1)^T)^2) * p) @ dq(w2)^T with the recipe's quantizers."""
    m, h, f = 200, 256, 384
    x, w1, w2, dy, p = _inputs(m, h, f, seed=3, prob=True)
    y = srelu_mlp(x, w1, w2, prob=p, fp8=R)
    xq, xs = quantize_1x128(x)
    w1q, w1s = quantize_128x128(w1)
    w2q, w2s = quantize_128x128(w2)
    acc = dequantize(xq, xs) @ dequantize(w1q, w1s).t()
    pq, ps = quantize_1x128(torch.relu(acc) ** 2)
    want = dequantize(pq, ps * p[:, None]) @ dequantize(w2q, w2s).t()
    assert torch.allclose(y, want.bfloat16().float(), rtol=1e-2, atol=1e-5)
    assert _rel(y, want) < 4e-3  # y is stored in bf16


@pytest.mark.parametrize("splits", [[0, 129, 1, 140], [50, 0, 0, 7]])
def test_grouped_step_is_the_dense_step_per_expert(splits):
    m, h, f, e = sum(splits), 128, 256, len(splits)
    x, w1, w2, dy, p = _inputs(m, h, f, e=e, seed=sum(splits), prob=True)
    y, grads = _run(lambda x, w1, w2, p: srelu_mlp(x, w1, w2, m_splits=splits, prob=p, fp8=R), x, w1, w2, dy, p)
    dw1, dw2 = grads[1], grads[2]
    s = 0
    for i, n in enumerate(splits):
        sl = slice(s, s + n)
        s += n
        if n == 0:
            assert (dw1[i] == 0).all() and (dw2[i] == 0).all(), "empty expert: zero weight gradient"
            continue
        ye, ge = _run(lambda x, w1, w2, p: srelu_mlp(x, w1, w2, prob=p, fp8=R), x[sl], w1[i], w2[i], dy[sl], p[sl])
        assert torch.allclose(y[sl], ye, rtol=1e-5, atol=1e-6)
        assert torch.allclose(grads[0][sl], ge[0], rtol=1e-5, atol=1e-6)
        assert torch.allclose(dw1[i], ge[1], rtol=1e-5, atol=1e-6)
        assert torch.allclose(dw2[i], ge[2], rtol=1e-5, atol=1e-6)
        assert torch.allclose(grads[3][sl], ge[3], rtol=1e-5, atol=1e-6)
    yr, gr = _run(lambda x, w1, w2, p: _ref(x, w1, w2, p, splits), *(t.double() for t in (x, w1, w2, dy)), p.double())
    assert _rel(y, yr) < FP8_TOL and all(_rel(a, b) < FP8_TOL for a, b in zip(grads, gr))


def test_fuse_wgrad_accumulation_adds_into_main_grad():
    x, w1, w2, dy, _ = _inputs(64, 128, 256, seed=9)
    _, (_, g1, g2) = _run(lambda x, w1, w2, p: srelu_mlp(x, w1, w2, fp8=R), x, w1, w2, dy, None)
    a, b = w1.clone().requires_grad_(), w2.clone().requires_grad_()
    a.main_grad, b.main_grad = torch.ones_like(a), torch.ones_like(b)
    srelu_mlp(x, a, b, fp8=R, fuse_wgrad_accumulation=True).backward(dy)
    assert a.grad is None and b.grad is None
    assert torch.allclose(a.main_grad, 1 + g1, rtol=1e-5, atol=1e-6)
    assert torch.allclose(b.main_grad, 1 + g2, rtol=1e-5, atol=1e-6)


def _saved_bytes(fn):
    params = []
    total = [0]

    def pack(t):
        if not any(t is p for p in params) and not isinstance(t, torch.nn.Parameter):
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(params)
    return total[0]


def test_saved_activation_memory_against_the_bf16_step():
    m, h, f = 256, 512, 2048
    x = torch.randn(m, h, dtype=torch.bfloat16, requires_grad=True)
    w1 = torch.nn.Parameter(torch.randn(f, h, dtype=torch.bfloat16) / h ** 0.5)
    w2 = torch.nn.Parameter(torch.randn(h, f, dtype=torch.bfloat16) / f ** 0.5)
    fp8 = _saved_bytes(lambda ps: srelu_mlp(x, w1, w2, fp8=R, backend="torch"))
    bf16 = _saved_bytes(lambda ps: srelu_mlp(x, w1, w2, backend="torch"))
    bf16_re = _saved_bytes(lambda ps: srelu_mlp(x, w1, w2, backend="torch", recompute_postact=True))
    assert bf16 == 2 * m * (h + 2 * f)
    # x FP8 + scales, preact bf16
    assert fp8 == m * h + 4 * m * (h // 128) + 2 * m * f
    assert fp8 / bf16 <= 0.6 and fp8 / bf16_re < 0.95


def test_weight_copies_reused_in_a_scope_until_an_update_and_transposed():
    w = torch.nn.Parameter(torch.randn(3, 256, 144))
    assert quantize_weight(w, R) is not quantize_weight(w, R), "outside a reuse scope every call quantizes"
    with reuse_weight_copies():
        a = quantize_weight(w, R)
        t = quantize_weight(w, R, transposed=True)
        assert quantize_weight(w, R) is a and quantize_weight(w, R, transposed=True) is t
        with torch.no_grad():
            w.mul_(2)
        b = quantize_weight(w, R)
    assert torch.equal(t[0].view(torch.uint8), a[0].transpose(1, 2).contiguous().view(torch.uint8))
    assert torch.equal(t[1], a[1].transpose(1, 2))
    q0, s0 = quantize_128x128(w[1].detach() / 2)
    assert torch.equal(a[0][1].view(torch.uint8), q0.view(torch.uint8)) and torch.equal(a[1][1], s0)
    assert b is not a and torch.allclose(b[1], 2 * a[1])


def test_modules_pass_the_recipe_through():
    torch.manual_seed(0)
    mod = SReLUMLP(128, 256, fp8=R)
    x = torch.randn(2, 5, 128)
    assert torch.equal(mod(x), srelu_mlp(x.reshape(-1, 128), mod.fc1.weight, mod.fc2.weight, fp8=R).reshape(x.shape))
    g = GroupedSReLUMLP(3, 128, 256, fp8=R)
    xs = torch.randn(10, 128)
    assert torch.equal(g(xs, [4, 0, 6]), srelu_mlp(xs, g.fc1_weight, g.fc2_weight, m_splits=[4, 0, 6], fp8=R))


def test_bad_inputs():
    x, w1, w2, _, _ = _inputs(8, 128, 256)
    with pytest.raises(InputError, match="Fp8Recipe"):
        srelu_mlp(x, w1, w2, fp8="e4m3")
    with pytest.raises(InputError, match="hidden = 120 must be a multiple of 16"):
        srelu_mlp(x[:, :120], w1[:, :120], w2[:120], fp8=R)
    with pytest.raises(InputError, match="ffn = 200"):
        srelu_mlp(x, w1[:200], w2[:, :200], fp8=R)
    with pytest.raises(InputError, match="w2 must have shape"):  # srelu_mlp's shared checks, before the FP8 step
        srelu_mlp(x, w1, w2[:, :128], fp8=R)
    with pytest.raises(InputError, match="m_splits"):
        srelu_mlp(x, w1[None], w2[None], m_splits=[3], fp8=R)
    with pytest.raises(InputError, match="backend='cute'"):
        srelu_mlp(x, w1, w2, fp8=R, backend="cute")


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() == (9, 0),
                    reason="needs a GPU other than sm_90")
def test_fp8_step_on_a_gpu_without_the_kernels():
    x, w1, w2, _, _ = (t.cuda() if t is not None else None for t in _inputs(8, 128, 256))
    with pytest.raises(InputError, match="sm_90a"):
        srelu_mlp(x, w1, w2, fp8=R)


@pytest.mark.parametrize("splits", [None, [40, 0, 37]])
def test_bf16_weight_gradients_are_those_of_the_bf16_operands(splits):
    """Fp8Recipe(wgrad="bf16"): dw1 = dpre^T x_deq and dw2 = dy^T postact from the step's own
    (unquantized) operands; everything else is the "fp8" recipe's, bitwise."""
    m, h, f = 77, 144, 272
    e = len(splits) if splits else 0
    x, w1, w2, dy, p = _inputs(m, h, f, e=e, seed=5, prob=True)
    r8, r16 = Fp8Recipe(wgrad="fp8"), Fp8Recipe(wgrad="bf16")
    y8, g8 = _run(lambda x, w1, w2, p: srelu_mlp(x, w1, w2, m_splits=splits, prob=p, fp8=r8), x, w1, w2, dy, p)
    y16, g16 = _run(lambda x, w1, w2, p: srelu_mlp(x, w1, w2, m_splits=splits, prob=p, fp8=r16), x, w1, w2, dy, p)
    assert torch.equal(y8, y16) and torch.equal(g8[0], g16[0]) and torch.equal(g8[3], g16[3])
    yr, gr = _run(lambda x, w1, w2, p: _ref(x, w1, w2, p, splits), *(t.double() for t in (x, w1, w2, dy)), p.double())
    for i in (1, 2):  # the weight gradients: closer to float64 without the extra quantization
        assert _rel(g16[i], gr[i]) < _rel(g8[i], gr[i]), (i, _rel(g16[i], gr[i]), _rel(g8[i], gr[i]))
        assert _rel(g16[i], gr[i]) < FP8_TOL


def test_recipe_wgrad_is_checked():
    with pytest.raises(InputError, match="wgrad"):
        Fp8Recipe(wgrad="fp16")
    assert Fp8Recipe(wgrad="fp8").key().endswith("-wgrad-fp8") and Fp8Recipe().key() == "fp8-e4m3-e4m3-b128-wgrad-bf16"
    assert Fp8Recipe().wgrad == "bf16", "the fast and more accurate weight gradients by default"


def test_fp8_dgrad_refuses_the_tanh_clamp():
    from cute_kernels.activations import ScaledTanhSReLU
    from cute_kernels.fp8.ops import fp8_dgrad_dact

    dq, ds = quantize_1x128(torch.randn(8, 128))
    wq, ws = quantize_128x128(torch.randn(128, 128))
    with pytest.raises(InputError, match="activation"):
        fp8_dgrad_dact(dq, ds, wq, ws, torch.zeros(8, 128, dtype=torch.bfloat16), activation=ScaledTanhSReLU(4.0))


# ---------------------------------------------------------------- other activations: the tanh clamp
TANH = ScaledTanhSReLU(1.0)  # s = 1: preacts of about N(0, 1) land where the clamp bends (f far from relu^2)


@pytest.mark.parametrize("m,h,f,splits", [(77, 144, 272, None), (130, 256, 128, None), (1, 128, 256, None),
                                          (279, 128, 256, [0, 129, 140, 10]), (57, 128, 144, [50, 0, 0, 7])])
def test_tanh_clamp_step_close_to_float64_of_the_tanh_clamp(m, h, f, splits):
    """Forward and every gradient (dx, dw1, dw2, dp) of the FP8 step with the tanh clamp, dense and grouped
    with prob and empty experts, against float64 of the tanh clamp (unquantized) within the FP8 bound, and
    further from float64 of relu^2 than that bound (the step applies the clamp, not relu^2)."""
    e = len(splits) if splits else 0
    x, w1, w2, dy, p = _inputs(m, h, f, e=e, seed=m + h, prob=True)
    for act in (TANH, "tanh_srelu:1.0"):  # the Activation and its name give the same step
        y, grads = _run(lambda x, w1, w2, p: srelu_mlp(x, w1, w2, m_splits=splits, prob=p, fp8=R, activation=act),
                        x, w1, w2, dy, p)
        if act is TANH:
            first = [y] + grads
        else:
            assert all(torch.equal(a, b) for a, b in zip(first, [y] + grads))
    as64 = [t.double() for t in (x, w1, w2, dy)]
    yr, gr = _run(lambda x, w1, w2, p: _ref(x, w1, w2, p, splits, act=TANH), *as64, p.double())
    ys, gs = _run(lambda x, w1, w2, p: _ref(x, w1, w2, p, splits), *as64, p.double())
    errs = [_rel(y, yr)] + [_rel(a, b) for a, b in zip(grads, gr)]
    assert all(5e-3 < err < FP8_TOL for err in errs[:4]), errs
    assert 5e-3 < errs[4] < (0.25 if m == 1 else FP8_TOL), errs  # dp: one signed sum per token
    assert all(_rel(a, b) > 2 * FP8_TOL for a, b in zip([y] + grads, [ys] + gs)), "relu^2, not the clamp"
    if splits:
        for i, n in enumerate(splits):
            if n == 0:
                assert (grads[1][i] == 0).all() and (grads[2][i] == 0).all(), "empty expert: zero weight gradient"


@pytest.mark.parametrize("wgrad", ["fp8", "bf16"])
def test_tanh_clamp_step_is_the_recipe_composed_by_hand(wgrad):
    """y = dequant(q(f(dq(x) dq(w1)^T)) * p) @ dq(w2)^T and the backward's dpreact = p * dpost * f'(preact),
    dp = rowsum(dpost * f(preact)), dpost = dq(dy) dq(w2^T)^T, with f the tanh clamp and the recipe's
    quantizers (the plumbing: the activation reaches every piece of the step)."""
    m, h, f = 200, 256, 384
    rec = Fp8Recipe(wgrad=wgrad)
    x, w1, w2, dy, p = _inputs(m, h, f, seed=4, prob=True)
    pre_seen = []
    a, b, c = (t.clone().requires_grad_() for t in (x, w1, w2))
    pl = p.clone().requires_grad_()
    from cute_kernels.fp8 import mlp as fp8_mlp

    real_fc2 = fp8_mlp.Fp8FC2.apply

    def spy(pre, *args):  # the preact (bf16) the FC1 node hands to the FC2 node, and its gradient
        pre.register_hook(lambda g: pre_seen.append(g))
        pre_seen.append(pre.detach())
        return real_fc2(pre, *args)

    fp8_mlp.Fp8FC2.apply = spy
    try:
        y = srelu_mlp(a, b, c, prob=pl, fp8=rec, activation=TANH)
        y.backward(dy)
    finally:
        fp8_mlp.Fp8FC2.apply = real_fc2
    pre, dpre = pre_seen
    xq, xs = quantize_1x128(x)
    w1q, w1s = quantize_128x128(w1)
    w2q, w2s = quantize_128x128(w2)
    acc = dequantize(xq, xs) @ dequantize(w1q, w1s).t()
    assert torch.equal(pre, acc.bfloat16())
    pq, ps = quantize_1x128(TANH.torch_forward(acc))
    want = dequantize(pq, ps * p[:, None]) @ dequantize(w2q, w2s).t()
    assert _rel(y, want) < 4e-3  # y is stored in bf16
    dy16 = dy.bfloat16().float()  # y leaves the FC2 node in bf16: its gradient arrives in bf16
    dyq, dys = quantize_1x128(dy16)
    w2tq, w2ts = quantize_128x128(w2.t().contiguous())
    dpost = (dequantize(dyq, dys) @ dequantize(w2tq, w2ts).t()).bfloat16().float()
    pre32 = pre.float()
    assert _rel(dpre, p[:, None] * dpost * TANH.torch_grad(pre32)) < 4e-3  # dpreact stored in bf16
    assert _rel(pl.grad, (dpost * TANH.torch_forward(pre32)).sum(1)) < 1e-5
    post = p[:, None] * TANH.torch_forward(pre32)
    want_dw2 = wgrad_ref(dy16, post, rec)
    assert _rel(c.grad, want_dw2) < 1e-5


def wgrad_ref(g, act, rec):
    """The recipe's weight gradient g^T act of fp32 operands."""
    from cute_kernels.fp8.torch_gemm import wgrad

    return g.t() @ act if rec.wgrad == "bf16" else wgrad(g, act, rec)


def test_tanh_clamp_fc1_epilogue_key_and_srelu_keys_unchanged():
    """The FC1 epilogue the step builds: relu^2's is the EpilogueSpec it always was (same kernel key,
    the same compiled kernel); the tanh clamp's names its activation (its own variant, self-checked)."""
    srelu = EpilogueSpec("act", store_preact=True, activation=SRELU)
    assert srelu == EpilogueSpec("srelu", store_preact=True) and srelu.key() == "srelu+preact"
    assert EpilogueSpec("act", store_preact=True, activation=TANH).key() == "act[tanh_srelu(s=1.0)]+preact"


def test_bad_activation_with_fp8():
    x, w1, w2, _, _ = _inputs(8, 128, 256)
    with pytest.raises(InputError, match="activation"):
        srelu_mlp(x, w1, w2, fp8=R, activation="gelu")
    from cute_kernels.fp8.mlp import fp8_srelu_mlp

    with pytest.raises(InputError, match="activation"):
        fp8_srelu_mlp(x, w1, w2, recipe=R, activation=3)
