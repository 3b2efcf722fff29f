"""GPU: the FP8 weight gradient added into an fp32 main_grad by its epilogue (issue 26's
fuse_wgrad_accumulation; fp8/wgrad_ops.fp8_weight_grad / fp8_grouped_weight_grad with
out=main_grad, accumulate=True).  main_grad ends as its previous values plus the float64 product
of the dequantized operands, elementwise within the bounds of tests/test_fp8_wgrad_gpu.py and
tests/test_fp8_grouped_wgrad_gpu.py (twice ACC_BOUND of sum |ab|, 8e-3 relative), and bitwise
the previous values plus the plain kernel's dW (one fp32 add per element: the same rounding as
torch's add); both dense mainloops ("row", "rows_staged"), odd token counts, N_out and K_out not
multiples of 128, e5m2 gradients, empty experts (their main_grad untouched), list and GPU-tensor
splits; a second accumulation adds again; and the FP8 step with fuse_wgrad_accumulation and
CUTE_KERNELS_FP8_WGRAD_ACCUMULATE=1 (dense; grouped with CUTE_KERNELS_FP8_GROUPED_WGRAD=1) leaves
main_grad bitwise where the torch add path (switch 0) leaves it, dx unchanged."""
import pytest
import torch

from cute_kernels.fp8 import Fp8Recipe
from cute_kernels.fp8.quantize_ops import quantize_rows_and_cols
from cute_kernels.fp8.recipe import dequantize
from cute_kernels.fp8.wgrad_ops import WGRAD_B_SCALES, as_operand, fp8_grouped_weight_grad, fp8_weight_grad
from cute_kernels.mlp import srelu_mlp
from test_fp8_gpu import ACC_BOUND, _check_elementwise
from test_fp8_grouped_wgrad_gpu import SPLITS, _operands

pytestmark = pytest.mark.gpu

SHAPES = [(256, 256, 256), (272, 400, 1000), (128, 128, 16), (1856, 2688, 4096), (144, 1856, 333)]


def _column_copy(t, fmt):
    _, _, qt, st = quantize_rows_and_cols(t, fmt)
    return as_operand(qt), st


@pytest.mark.parametrize("n_out,k_out,tokens", SHAPES)
@pytest.mark.parametrize("gfmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("b_scale", WGRAD_B_SCALES)
def test_dense_accumulate_into_main_grad(n_out, k_out, tokens, gfmt, b_scale):
    torch.manual_seed(n_out + k_out + tokens)
    g = (torch.randn(tokens, n_out, device="cuda") * torch.logspace(-2, 2, tokens, device="cuda")[:, None]).bfloat16()
    x = torch.randn(tokens, k_out, device="cuda").bfloat16()
    gq, gs = _column_copy(g, gfmt)
    xq, xs = _column_copy(x, "e4m3")
    main_grad = torch.randn(n_out, k_out, device="cuda") * 10
    before = main_grad.clone()
    got = fp8_weight_grad(gq, gs, xq, xs, b_scale=b_scale, out=main_grad, accumulate=True)
    assert got is main_grad
    a, b = dequantize(gq, gs).double(), dequantize(xq, xs).double()
    _check_elementwise(main_grad, before.double() + a @ b.t(), a.abs() @ b.abs().t(), acc_bound=2 * ACC_BOUND)
    dw = fp8_weight_grad(gq, gs, xq, xs, b_scale=b_scale)
    assert torch.equal(main_grad, before + dw), (main_grad - (before + dw)).abs().max().item()
    # a second accumulation adds again (micro-batches into one main_grad)
    fp8_weight_grad(gq, gs, xq, xs, b_scale=b_scale, out=main_grad, accumulate=True)
    assert torch.equal(main_grad, (before + dw) + dw)


@pytest.mark.parametrize("splits", SPLITS)
@pytest.mark.parametrize("n_out,k_out", [(256, 128), (208, 272)])
@pytest.mark.parametrize("gfmt,as_tensor", [("e4m3", None), ("e5m2", torch.int32), ("e4m3", torch.int64)])
def test_grouped_accumulate_into_main_grad(splits, n_out, k_out, gfmt, as_tensor):
    _, _, gq, gs, xq, xs, cu = _operands(splits, n_out, k_out, gfmt, as_tensor, len(splits) + n_out)
    main_grad = torch.randn(len(splits), n_out, k_out, device="cuda") * 10
    before = main_grad.clone()
    assert fp8_grouped_weight_grad(gq, gs, xq, xs, cu, out=main_grad, accumulate=True) is main_grad
    cu_h = cu.tolist()
    for e, s in enumerate(splits):
        if s == 0:
            assert torch.equal(main_grad[e], before[e]), f"empty expert {e}: main_grad untouched"
            continue
        lo, hi = cu_h[e], cu_h[e + 1]
        a = dequantize(gq[:, lo:hi].contiguous(), gs[:, lo // 128:hi // 128].contiguous()).double()
        b = dequantize(xq[:, lo:hi].contiguous(), xs[:, lo // 128:hi // 128].contiguous()).double()
        _check_elementwise(main_grad[e], before[e].double() + a @ b.t(), a.abs() @ b.abs().t(),
                           acc_bound=2 * ACC_BOUND)
    dw = fp8_grouped_weight_grad(gq, gs, xq, xs, cu)
    assert torch.equal(main_grad, before + dw), (main_grad - (before + dw)).abs().max().item()


@pytest.mark.parametrize("splits", [None, [0, 300, 1, 699]])
def test_fp8_step_main_grad_against_the_torch_add(monkeypatch, splits):
    """srelu_mlp(fp8=Fp8Recipe(wgrad="fp8"), fuse_wgrad_accumulation=True) twice (two micro-batches)
    into the same main_grad: CUTE_KERNELS_FP8_WGRAD_ACCUMULATE=1 (the kernel's epilogue adds) against 0
    (the kernel's dW, then torch's add): bitwise equal main_grad, the same dx, no .grad on the weights."""
    monkeypatch.setenv("CUTE_KERNELS_FP8_GROUPED_WGRAD", "1")
    torch.manual_seed(5)
    h, f = 384, 528
    m = 1000 if splits is None else sum(splits)
    e = 0 if splits is None else len(splits)
    x = torch.randn(m, h, device="cuda").bfloat16()
    lead = (e,) if e else ()
    w1 = (torch.randn(*lead, f, h, device="cuda") / h ** 0.5).bfloat16()
    w2 = (torch.randn(*lead, h, f, device="cuda") / f ** 0.5).bfloat16()
    dys = [torch.randn(m, h, device="cuda").bfloat16() for _ in range(2)]
    start = [torch.randn(w.shape, device="cuda") for w in (w1, w2)]
    result = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("CUTE_KERNELS_FP8_WGRAD_ACCUMULATE", flag)
        ws = [w.clone().requires_grad_() for w in (w1, w2)]
        for w, s in zip(ws, start):
            w.main_grad = s.clone()
        dxs = []
        for dy in dys:
            xl = x.clone().requires_grad_()
            srelu_mlp(xl, *ws, m_splits=splits, fp8=Fp8Recipe(wgrad="fp8"), backend="cute",
                      fuse_wgrad_accumulation=True).backward(dy)
            dxs.append(xl.grad)
        assert all(w.grad is None for w in ws)
        result[flag] = ([w.main_grad for w in ws], dxs)
    for name, a, b in zip(("w1", "w2"), result["0"][0], result["1"][0]):
        assert torch.equal(a, b), (name, (a - b).abs().max().item())
    assert all(torch.equal(a, b) for a, b in zip(result["0"][1], result["1"][1])), "dx does not depend on it"
    # and the fused main_grad moved: start + two micro-batches' gradients
    assert all(not torch.equal(mg, s) for mg, s in zip(result["1"][0], start))
