"""GPU: the FP8 weight gradient with 1x128 scales along the tokens on both operands
(fp8/wgrad_ops.fp8_weight_grad: the family kernel with per-row B scales) against the float64
product of its dequantized operands, elementwise within the bound the FP8 tensor core's
accumulation implies (tests/test_fp8_gpu._check_elementwise): token counts that are not
multiples of 128 (the column-wise copies' zero padding), N_out and K_out not multiples of 128,
e5m2 gradients, fp32 and bf16 outputs, an output poisoned with NaN; both mainloops (b_scale
"row", the serial one, and "rows_staged", the overlapped one with B's column scales staged in
shared memory), which promote with the same fp32 operations in the same order and so agree bit
for bit; and the FP8 step with Fp8Recipe(wgrad="fp8") through it (CUTE_KERNELS_FP8_WGRAD_KERNEL=1,
and CUTE_KERNELS_FP8_WGRAD_STAGED=0 / 1) within the recipe's bound of float64 and close to the
torch emulation."""
import pytest
import torch

from cute_kernels.fp8 import Fp8Recipe
from cute_kernels.fp8.quantize_ops import quantize_rows_and_cols
from cute_kernels.fp8.recipe import dequantize
from cute_kernels.fp8.wgrad_ops import WGRAD_B_SCALES, as_operand, fp8_weight_grad
from cute_kernels.mlp import srelu_mlp
from test_fp8_gpu import ACC_BOUND, _check_elementwise

pytestmark = pytest.mark.gpu


def _column_copy(t, fmt):
    _, _, qt, st = quantize_rows_and_cols(t, fmt)
    return as_operand(qt), st


# token counts: 2 K tiles (no loop iteration of the overlapped form), 8 (three iterations: its ring
# of column scales wraps), 1, 32, 3 (one iteration and a single K tile left); 1856 x 2688: more
# tiles than SMs (a CTA's ring reused across its tiles)
SHAPES = [(256, 256, 256), (272, 400, 1000), (128, 128, 16), (1856, 2688, 4096), (144, 1856, 333)]


@pytest.mark.parametrize("n_out,k_out,tokens", SHAPES)
@pytest.mark.parametrize("gfmt,out", [("e4m3", torch.float32), ("e5m2", torch.bfloat16)])
@pytest.mark.parametrize("b_scale", WGRAD_B_SCALES)
def test_fp8_weight_grad_against_float64(n_out, k_out, tokens, gfmt, out, b_scale):
    torch.manual_seed(n_out + k_out + tokens)
    g = (torch.randn(tokens, n_out, device="cuda") * torch.logspace(-2, 2, tokens, device="cuda")[:, None]).bfloat16()
    x = torch.randn(tokens, k_out, device="cuda").bfloat16()
    gq, gs = _column_copy(g, gfmt)
    xq, xs = _column_copy(x, "e4m3")
    dw = fp8_weight_grad(gq, gs, xq, xs, out_dtype=out, b_scale=b_scale)
    assert dw.shape == (n_out, k_out) and dw.dtype == out
    a, b = dequantize(gq, gs).double(), dequantize(xq, xs).double()
    ref = a @ b.t()
    # the token (reduction) dimension spans four decades here: the tensor core aligns each group of
    # products to the group's largest before adding, so a group of terms can lose a few 2^-13 of its
    # largest product, beyond ACC_BOUND's 2^-13 of sum |ab| (H200 2026-12-03: one element at 2^-12.7
    # in e5m2); twice ACC_BOUND states that, the bf16 GEMMs' ACC_BOUND stays as it is
    _check_elementwise(dw.float(), ref, a.abs() @ b.abs().t(), acc_bound=2 * ACC_BOUND)


@pytest.mark.parametrize("n_out,k_out,tokens", SHAPES)
def test_the_two_mainloops_agree_bitwise(n_out, k_out, tokens):
    torch.manual_seed(n_out * k_out + tokens)
    g = (torch.randn(tokens, n_out, device="cuda") * torch.logspace(-3, 1, tokens, device="cuda")[:, None]).bfloat16()
    x = torch.randn(tokens, k_out, device="cuda").bfloat16()
    gq, gs = _column_copy(g, "e5m2")
    xq, xs = _column_copy(x, "e4m3")
    row, staged = (fp8_weight_grad(gq, gs, xq, xs, b_scale=b) for b in ("row", "rows_staged"))
    assert torch.equal(row, staged), (row - staged).abs().max().item()


@pytest.mark.parametrize("staged", ["0", "1"])
def test_fp8_step_with_the_wgrad_kernel(monkeypatch, staged):
    monkeypatch.setenv("CUTE_KERNELS_FP8_WGRAD_STAGED", staged)
    torch.manual_seed(7)
    m, h, f = 1000, 384, 528
    x = torch.randn(m, h, device="cuda").bfloat16()
    w1 = (torch.randn(f, h, device="cuda") / h ** 0.5).bfloat16()
    w2 = (torch.randn(h, f, device="cuda") / f ** 0.5).bfloat16()
    dy = torch.randn(m, h, device="cuda").bfloat16()
    grads = {}
    for flag in ("0", "1"):  # torch emulation, then the kernel
        monkeypatch.setenv("CUTE_KERNELS_FP8_WGRAD_KERNEL", flag)
        leaves = [t.clone().requires_grad_() for t in (x, w1, w2)]
        srelu_mlp(*leaves, fp8=Fp8Recipe(wgrad="fp8"), backend="cute").backward(dy)
        grads[flag] = [t.grad.float() for t in leaves]
    leaves = [t.double().requires_grad_() for t in (x, w1, w2)]
    pre = leaves[0] @ leaves[1].t()
    (torch.relu(pre).square() @ leaves[2].t()).backward(dy.double())
    for i, name in ((1, "dw1"), (2, "dw2")):
        ref = leaves[i].grad
        rel = lambda a: ((a.double() - ref).norm() / ref.norm()).item()  # noqa: E731
        assert rel(grads["1"][i]) < 0.08, (name, rel(grads["1"][i]))
        assert abs(rel(grads["1"][i]) - rel(grads["0"][i])) < 0.02, (name, rel(grads["1"][i]), rel(grads["0"][i]))
    assert torch.equal(grads["0"][0], grads["1"][0]), "dx does not depend on the weight-gradient path"
