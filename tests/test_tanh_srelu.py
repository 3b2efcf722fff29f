"""ScaledTanhSReLU, y = (s * tanh(relu(x) / s))^2 * p, through the seam: its torch math
against float64 autograd, the op's torch path (every gradient), the custom ops, argument
errors, and its kernels compiling spill-free (dense and grouped, forward and fused dgrad)."""
import os

import pytest
import torch

import cute_kernels as ck
from cute_kernels.activations import SRELU, ScaledTanhSReLU, resolve_activation
from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.reference import rel_err


def _seed():
    s = int.from_bytes(os.urandom(4), "little")
    return s, torch.Generator().manual_seed(s)


def _f64_mlp(x, w1, w2, prob, s, splits):
    """float64 reference of the whole MLP through autograd of the plain formula."""
    def act(z):
        r = torch.relu(z)
        return (s * torch.tanh(r / s)) ** 2 if s is not None else r * r
    if splits is None:
        h = act(x @ w1.t())
        h = h * prob.reshape(-1, 1) if prob is not None else h
        return h @ w2.t()
    outs, start = [], 0
    for e, n in enumerate(splits):
        h = act(x[start:start + n] @ w1[e].t())
        if prob is not None:
            h = h * prob[start:start + n].reshape(-1, 1)
        outs.append(h @ w2[e].t())
        start += n
    return torch.cat(outs)


@pytest.mark.parametrize("s", [0.3, 2.0, 1e4])
def test_torch_grad_is_the_derivative_of_torch_forward(s):
    seed, g = _seed()
    a = ScaledTanhSReLU(s)
    x = (torch.randn(4096, generator=g, dtype=torch.float64) * 3).requires_grad_()
    y = a.torch_forward(x)
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(a.torch_grad(x.detach()), gx, rtol=1e-12, atol=1e-12), seed
    if s > 100:  # far from the clamp it is relu^2
        assert rel_err(y.detach(), SRELU.torch_forward(x.detach())) < 1e-6


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("s", [0.5, 8.0])
def test_torch_path_forward_and_every_gradient_against_float64(grouped, s):
    seed, g = _seed()
    m, h, f, e = 97, 24, 40, 4
    x = torch.randn(m, h, generator=g, dtype=torch.float64)
    w1 = torch.randn(*((e, f, h) if grouped else (f, h)), generator=g, dtype=torch.float64) / h ** 0.5 * 2
    w2 = torch.randn(*((e, h, f) if grouped else (h, f)), generator=g, dtype=torch.float64) / f ** 0.5
    prob = torch.rand(m, generator=g, dtype=torch.float64) if grouped else None
    splits = [30, 0, 50, 17] if grouped else None
    dy = torch.randn(m, h, generator=g, dtype=torch.float64)
    results = []
    for path in ("op", "ref"):
        leaves = [t.clone().requires_grad_() for t in (x, w1, w2)] + ([prob.clone().requires_grad_()] if grouped else [])
        p = leaves[3] if grouped else None
        if path == "op":
            y = ck.srelu_mlp(leaves[0], leaves[1], leaves[2], m_splits=splits, prob=p, backend="torch",
                             activation=ScaledTanhSReLU(s))
        else:
            y = _f64_mlp(leaves[0], leaves[1], leaves[2], p, s, splits)
        y.backward(dy)
        results.append([y.detach()] + [t.grad for t in leaves])
    for name, a, b in zip(["y", "dx", "dw1", "dw2", "dprob"], *results):
        assert rel_err(a, b) < 1e-12, (name, rel_err(a, b), seed)
    # the clamp is active at small s: the result differs from plain SReLU
    if s < 1:
        y_srelu = ck.srelu_mlp(x, w1, w2, m_splits=splits, prob=prob, backend="torch")
        assert rel_err(results[0][0], y_srelu) > 1e-2


def test_recompute_postact_and_modules_take_the_activation():
    seed, g = _seed()
    mlp = ck.SReLUMLP(16, 32, activation="tanh_srelu:0.7", recompute_postact=True, backend="torch")
    assert mlp.activation == ScaledTanhSReLU(0.7)
    x = torch.randn(9, 16, generator=g, requires_grad=True)
    mlp(x).square().sum().backward()
    ref = ck.SReLUMLP(16, 32, activation=ScaledTanhSReLU(0.7), backend="torch")
    ref.load_state_dict(mlp.state_dict())
    x2 = x.detach().clone().requires_grad_()
    ref(x2).square().sum().backward()
    assert torch.equal(x.grad, x2.grad), seed
    moe = ck.GroupedSReLUMLP(3, 16, 8, activation="tanh_srelu:2", backend="torch")
    assert "tanh_srelu(s=2.0)" in repr(moe)


def test_custom_ops_take_the_activation_on_cpu():
    seed, g = _seed()
    from cute_kernels import torch_ops

    a = ScaledTanhSReLU(1.5)
    x, w1 = torch.randn(33, 16, generator=g), torch.randn(24, 16, generator=g) / 4
    pre, post = torch_ops.fc1_srelu_fwd(x, w1, None, None, True, activation=a.spec())
    assert rel_err(post, a.torch_forward(x @ w1.t())) < 1e-6
    dy, w2 = torch.randn(33, 8, generator=g), torch.randn(8, 24, generator=g)
    prob = torch.rand(33, generator=g)
    dpre, post2, dprob = torch_ops.fc2_dgrad_dsrelu_op(dy, w2, pre, None, prob, True, activation=a.spec())
    d = dy @ w2
    assert rel_err(dpre, d * a.torch_grad(pre) * prob[:, None]) < 1e-6
    assert rel_err(dprob, (d * a.torch_forward(pre)).sum(1)) < 1e-6
    assert rel_err(post2, a.torch_forward(pre) * prob[:, None]) < 1e-6


@pytest.mark.parametrize("bad", ["tanh_srelu", "tanh_srelu:x", "tanh_srelu:-1", "gelu", 3, "srelu:2",
                                 "tanh_srelu:inf", "tanh_srelu:0"])
def test_bad_activation_is_an_input_error_naming_it(bad):
    x, w1, w2 = torch.randn(4, 8), torch.randn(16, 8), torch.randn(8, 16)
    with pytest.raises(ck.InputError, match="activation"):
        ck.srelu_mlp(x, w1, w2, activation=bad, backend="torch")
    with pytest.raises(ck.InputError, match="activation"):
        ck.SReLUMLP(8, 16, activation=bad)


OUT_OF_RANGE_SCALES = [1e300, 1e-200, 1e-320, 5e-324, 2.0 ** 62 * 1.0000001, 2.0 ** -62 * 0.9999999, 1e20, 1e-20,
                       10 ** 400, float("nan"), float("inf"), -2.0, 0.0, -0.0]


@pytest.mark.parametrize("s", OUT_OF_RANGE_SCALES, ids=repr)
def test_scale_outside_the_fp32_range_is_rejected_in_every_form(s):
    """A scale whose s^2 or 1/s is not a normal fp32 number (inf or 0 in the kernels' math: all-NaN
    outputs from finite inputs) is refused by the constructor, by the string form, by srelu_mlp and
    by the modules, naming the scale."""
    with pytest.raises(ValueError, match="scale s must be in"):
        ScaledTanhSReLU(s)
    x, w1, w2 = torch.randn(4, 8), torch.randn(16, 8), torch.randn(8, 16)
    form = f"tanh_srelu:{s!r}"
    with pytest.raises(ck.InputError, match="activation: .*scale s"):
        ck.srelu_mlp(x, w1, w2, activation=form, backend="torch")
    with pytest.raises(ck.InputError, match="activation: .*scale s"):
        ck.GroupedSReLUMLP(2, 8, 16, activation=form)


@pytest.mark.parametrize("s", [True, "2.0", None, [2.0], 2j])
def test_scale_of_the_wrong_type_is_rejected(s):
    with pytest.raises(ValueError, match="scale s must be a number"):
        ScaledTanhSReLU(s)


def _kernel_math_fp32(s, x, d):
    """The kernels' fp32 formulas (activations/tanh_srelu.py) emulated in torch float32: the
    forward f = (tanh(z) * s)^2 and the backward's q = 1 / (2^(z * 2 / ln 2) + 1), u = (1 - 2q) s,
    d f' = d * 8u * q(1 - q), its recomputed u^2, with z = relu(x) * (1 / s) (fp32 constants)."""
    import math

    f32 = torch.float32
    s32, inv32 = torch.tensor(s, dtype=f32), torch.tensor(1.0 / s, dtype=f32)
    z = torch.relu(x) * inv32
    fwd = (torch.tanh(z) * s32).square()
    q = 1.0 / (torch.exp2(z * torch.tensor(2.0 / math.log(2.0), dtype=f32)) + 1.0)
    u = (1.0 - 2.0 * q) * s32
    return fwd, d * (u * 8.0) * (q * (1.0 - q)), u * u


@pytest.mark.parametrize("s", [2.0 ** -62, 3e-19, 1e-6, 1.0, 1e6, 1e18, 2.0 ** 62])
def test_accepted_scales_keep_the_fp32_math_finite(s):
    """Every accepted scale, at the range's ends too: finite inputs (up to the bf16 maximum)
    give finite forward values, gradients and recomputed postacts, in the emulated kernel math
    and on the torch path (fp32 math for half inputs)."""
    a = ScaledTanhSReLU(s)
    g = torch.Generator().manual_seed(7)
    mags = torch.tensor([0.0, 1e-30, 1e-10, 1e-3, 1.0, 1e3, 1e10, 1e30, 3.38e38])
    x = torch.cat([mags, -mags, torch.randn(256, generator=g) * 10]).float()
    d = torch.randn(x.shape, generator=g)
    for out in _kernel_math_fp32(a.s, x, d):
        assert torch.isfinite(out).all(), (s, x[~torch.isfinite(out)])
    assert torch.isfinite(a.torch_forward(x)).all() and torch.isfinite(a.torch_grad(x)).all()
    xs = torch.randn(4, 8, generator=g).to(torch.bfloat16)
    y = ck.srelu_mlp(xs, torch.randn(16, 8, generator=g).to(torch.bfloat16),
                     torch.randn(8, 16, generator=g).to(torch.bfloat16), activation=a, backend="torch")
    assert torch.isfinite(y).all()


def test_resolution_and_keys():
    assert resolve_activation(None) is SRELU and resolve_activation("srelu") is SRELU
    a = resolve_activation("tanh_srelu:4")
    assert a == ScaledTanhSReLU(4.0) and resolve_activation(a.spec()) == a and hash(a) == hash(ScaledTanhSReLU(4))
    from cute_kernels.epilogue import EpilogueSpec

    assert EpilogueSpec("srelu").key() == "srelu" and EpilogueSpec("dsrelu", row_sum=True).key() == "dsrelu+rowsum"
    assert EpilogueSpec("act", activation=a).key() == "act[tanh_srelu(s=4.0)]"
    assert EpilogueSpec("srelu") == EpilogueSpec("act")


# ---- kernels (compile on CPU)
TANH = ScaledTanhSReLU(4.0)
COMPILE_CASES = {
    # the tuned dense FC1 config (128x192 ping-pong) narrowed for the activation's register budget
    "dense-act-preact-pp128": (EpilogueSpec("act", store_preact=True, activation=TANH),
                               dict(tile_m=128, tile_n=192, schedule="pingpong", cluster_m=2, cluster_n=1), False),
    "dense-act-preact-coop256": (EpilogueSpec("act", store_preact=True, activation=TANH), dict(), False),
    "grouped-act-scale": (EpilogueSpec("act", row_scale=True, activation=TANH), dict(cluster_m=1, cluster_n=2), True),
    "dense-dact-postact": (EpilogueSpec("dact", store_postact=True, activation=TANH), dict(cluster_m=2, cluster_n=1),
                           False),
    "grouped-dact-postact-scale-rowsum": (EpilogueSpec("dact", store_postact=True, row_scale=True, row_sum=True,
                                                       activation=TANH), dict(tile_n=192), True),
}


@pytest.mark.parametrize("case", list(COMPILE_CASES))
def test_tanh_variants_compile_spill_free(case):
    from cute_kernels.compile import KernelKey
    from cute_kernels.config import GemmConfig, epilogue_misfit, narrowed_for_epilogue
    from cute_kernels.inspect_ptx import find_ptxas, kernel_ptx, ptxas_info

    epi, cfg_kw, grouped = COMPILE_CASES[case]
    cfg = narrowed_for_epilogue(GemmConfig(**cfg_kw), epi)
    assert epilogue_misfit(cfg, epi) is None
    majors = ("k", "n") if epi.kind == "dact" else ("k", "k")
    ptx = kernel_ptx(KernelKey("sm90", cfg, epi, grouped, "bfloat16", *majors))
    assert ".local" not in ptx
    assert ("tanh.approx.f32" in ptx) == (epi.kind == "act")  # forward: MUFU tanh
    if epi.kind == "dact":  # backward: ex2 + reciprocal, 1 - t^2 as 4 q (1 - q)
        assert "ex2.approx" in ptx and "rcp.approx" in ptx
    if find_ptxas() is not None:
        info = ptxas_info(ptx)
        assert info.spill_store_bytes == 0 and info.spill_load_bytes == 0 and info.stack_bytes == 0, info.raw[-600:]


def test_explicit_config_beyond_the_activation_budget_is_an_input_error():
    from cute_kernels.config import GemmConfig, epilogue_misfit

    wide = GemmConfig(tile_m=128, tile_n=192, schedule="pingpong")
    assert "tanh_srelu" in epilogue_misfit(wide, EpilogueSpec("act", activation=TANH))
    assert epilogue_misfit(wide, EpilogueSpec("act")) is None
