"""GPU: the grouped FP8 weight gradient (fp8/wgrad_ops.fp8_grouped_weight_grad: one launch for every
expert, the family kernel grouped along K over the per-expert padded column-wise copies of
quantize_ops.quantize_cols_grouped) against the float64 product of each expert's dequantized
operands, elementwise within the FP8 accumulation bound (tests/test_fp8_gpu._check_elementwise);
empty experts (first, middle, last) give zeros, one-token and odd-sized experts, more experts than
fit one wave, list and GPU-tensor splits (int32 and int64), e5m2 gradients, fp32 and bf16
outputs, an output of poisoned memory (every element written); each expert bitwise the dense FP8
weight gradient of its own tokens (same operands, scales, K tiles and promotions);
fp8_grouped_weight_grad_of on the E=8 step's shapes; and the grouped FP8 step with
CUTE_KERNELS_FP8_GROUPED_WGRAD=1 against the per-expert torch loop and float64."""
import pytest
import torch

from cute_kernels.fp8 import Fp8Recipe
from cute_kernels.fp8.quantize_ops import quantize_cols_grouped, quantize_rows_and_cols
from cute_kernels.fp8.recipe import dequantize
from cute_kernels.fp8.wgrad_ops import (as_operand, fp8_grouped_weight_grad, fp8_grouped_weight_grad_of,
                                        fp8_weight_grad)
from test_fp8_gpu import ACC_BOUND, _check_elementwise

pytestmark = pytest.mark.gpu

SPLITS = [
    [0, 130, 1, 69],  # the self-check's: an empty expert first, a one-token expert
    [300, 0, 0, 5, 128, 129, 0],  # empty experts in the middle and last, 128 / 129 tokens
    [1000],
    [7] * 40,  # many small experts: more tiles than SMs
]


def _operands(splits, n_out, k_out, gfmt, as_tensor, seed):
    torch.manual_seed(seed)
    t = sum(splits)
    g = (torch.randn(t, n_out, device="cuda") * torch.logspace(-2, 2, t, device="cuda")[:, None]).bfloat16()
    x = torch.randn(t, k_out, device="cuda").bfloat16()
    ms = torch.tensor(splits, dtype=as_tensor, device="cuda") if as_tensor else splits
    gq, gs, cu = quantize_cols_grouped(g, ms, gfmt)
    xq, xs, _ = quantize_cols_grouped(x, ms, "e4m3")
    return g, x, gq, gs, xq, xs, cu


def _poisoned_empty(monkeypatch):
    """torch.empty that returns NaN-filled memory, so an element the kernel does not write shows."""
    real = torch.empty

    def empty(*a, **k):
        t = real(*a, **k)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", empty)


@pytest.mark.parametrize("splits", SPLITS)
@pytest.mark.parametrize("n_out,k_out", [(256, 128), (208, 272)])
@pytest.mark.parametrize("gfmt,out,as_tensor", [("e4m3", torch.float32, None), ("e5m2", torch.bfloat16, torch.int32),
                                                ("e4m3", torch.float32, torch.int64)])
def test_grouped_fp8_weight_grad_against_float64(monkeypatch, splits, n_out, k_out, gfmt, out, as_tensor):
    _, _, gq, gs, xq, xs, cu = _operands(splits, n_out, k_out, gfmt, as_tensor, len(splits) + n_out)
    _poisoned_empty(monkeypatch)
    dw = fp8_grouped_weight_grad(gq, gs, xq, xs, cu, out_dtype=out)
    assert dw.shape == (len(splits), n_out, k_out) and dw.dtype == out
    cu_h = cu.tolist()
    for e, s in enumerate(splits):
        if s == 0:
            assert (dw[e] == 0).all(), f"empty expert {e} gives zeros"
            continue
        lo, hi = cu_h[e], cu_h[e + 1]
        a = dequantize(gq[:, lo:hi].contiguous(), gs[:, lo // 128:hi // 128].contiguous()).double()
        b = dequantize(xq[:, lo:hi].contiguous(), xs[:, lo // 128:hi // 128].contiguous()).double()
        _check_elementwise(dw[e].float(), a @ b.t(), a.abs() @ b.abs().t(), acc_bound=2 * ACC_BOUND)


@pytest.mark.parametrize("splits", SPLITS[:3])
def test_each_expert_bitwise_the_dense_kernel(splits):
    g, x, gq, gs, xq, xs, cu = _operands(splits, 256, 384, "e4m3", None, 7)
    dw = fp8_grouped_weight_grad(gq, gs, xq, xs, cu)
    row = 0
    for e, s in enumerate(splits):
        if s:
            _, _, gqe, gse = quantize_rows_and_cols(g[row:row + s].contiguous())
            _, _, xqe, xse = quantize_rows_and_cols(x[row:row + s].contiguous())
            dense = fp8_weight_grad(as_operand(gqe), gse, as_operand(xqe), xse, b_scale="rows_staged")
            assert torch.equal(dw[e], dense), f"expert {e}"
        row += s


def test_the_e8_step_shapes_through_the_step_helper():
    torch.manual_seed(3)
    splits = torch.tensor([2000, 2100, 1900, 2048, 2300, 1700, 2200, 2136], dtype=torch.int32, device="cuda")
    g = torch.randn(16384, 2688, device="cuda").bfloat16()
    h = torch.relu(torch.randn(16384, 1856, device="cuda")).square().bfloat16()
    dw = fp8_grouped_weight_grad_of(g, h, splits, Fp8Recipe(wgrad="fp8"))
    assert dw.shape == (8, 2688, 1856) and dw.dtype == torch.float32
    ref = torch.stack([a.double().t() @ b.double() for a, b in zip(g.split(splits.tolist()), h.split(splits.tolist()))])
    rel = ((dw.double() - ref).norm() / ref.norm()).item()
    assert rel < 0.06, rel  # the recipe's bound on a product of two e4m3-quantized operands


@pytest.mark.parametrize("as_tensor", [False, True])
def test_grouped_fp8_step_with_the_switch(monkeypatch, as_tensor):
    """srelu_mlp(m_splits=, fp8=Fp8Recipe(wgrad="fp8")): CUTE_KERNELS_FP8_GROUPED_WGRAD=1 (the grouped
    kernel) against 0 (the per-expert torch loop) and float64: dW1 and dW2 within the recipe's bound of
    float64 and within 0.02 of the loop's error, the empty expert's zeros, dx unchanged."""
    from cute_kernels.mlp import srelu_mlp

    torch.manual_seed(11)
    splits, h, f = [0, 300, 1, 699], 384, 528
    m, e = sum(splits), len(splits)
    x = torch.randn(m, h, device="cuda").bfloat16()
    w1 = (torch.randn(e, f, h, device="cuda") / h ** 0.5).bfloat16()
    w2 = (torch.randn(e, h, f, device="cuda") / f ** 0.5).bfloat16()
    dy = torch.randn(m, h, device="cuda").bfloat16()
    ms = torch.tensor(splits, device="cuda") if as_tensor else splits
    grads = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("CUTE_KERNELS_FP8_GROUPED_WGRAD", flag)
        leaves = [t.clone().requires_grad_() for t in (x, w1, w2)]
        srelu_mlp(*leaves, m_splits=ms, fp8=Fp8Recipe(wgrad="fp8"), backend="cute").backward(dy)
        grads[flag] = [t.grad.float() for t in leaves]
    assert torch.equal(grads["0"][0], grads["1"][0]), "dx does not depend on the weight-gradient path"
    row = 0
    for ex, s in enumerate(splits):
        if s == 0:
            assert (grads["1"][1][ex] == 0).all() and (grads["1"][2][ex] == 0).all()
            continue
        leaves = [t.double().requires_grad_() for t in (x[row:row + s], w1[ex], w2[ex])]
        (torch.relu(leaves[0] @ leaves[1].t()).square() @ leaves[2].t()).backward(dy[row:row + s].double())
        for i, name in ((1, "dw1"), (2, "dw2")):
            ref = leaves[i].grad
            rel = lambda a: ((a[ex].double() - ref).norm() / ref.norm()).item()  # noqa: E731
            # one-token experts: a single token's quantization error, no averaging over tokens
            bound = 0.08 if s > 1 else 0.15
            assert rel(grads["1"][i]) < bound, (ex, name, rel(grads["1"][i]))
            assert abs(rel(grads["1"][i]) - rel(grads["0"][i])) < 0.02, (ex, name, rel(grads["1"][i]),
                                                                          rel(grads["0"][i]))
        row += s


@pytest.mark.parametrize("grouped", [False, True])
def test_bf16_out_is_the_fp32_out_rounded_once(grouped):
    """The FP8 step writes its FP8 weight gradients in the weights' bf16 from the epilogue
    (fp8_weight_grad_of / fp8_grouped_weight_grad_of(out_dtype=torch.bfloat16)): bitwise the fp32
    output cast by torch, as the step did before."""
    from cute_kernels.fp8.wgrad_ops import fp8_weight_grad_of

    splits = [0, 300, 1, 211]
    torch.manual_seed(5)
    g = torch.randn(sum(splits), 208, device="cuda").bfloat16()
    x = torch.randn(sum(splits), 272, device="cuda").bfloat16()
    recipe = Fp8Recipe(wgrad="fp8")
    if grouped:
        ms = torch.tensor(splits, device="cuda")
        f32, b16 = (fp8_grouped_weight_grad_of(g, x, ms, recipe, out_dtype=dt) for dt in (None, torch.bfloat16))
    else:
        f32, b16 = (fp8_weight_grad_of(g, x, recipe, out_dtype=dt) for dt in (None, torch.bfloat16))
    assert f32.dtype == torch.float32 and b16.dtype == torch.bfloat16
    assert torch.equal(b16, f32.to(torch.bfloat16))
