"""GPU: the FP8 -> bf16 dequantization kernel is bitwise `recipe.dequantize(q, s,
out_dtype=torch.bfloat16)` (values over eight decades, both formats, column-major scales as the
step saves them, odd M, a partial last K block, one row); and the FP8 step's gradients are
bitwise the same with it (CUTE_KERNELS_FP8_DEQUANT_KERNEL=1) and without."""
import pytest
import torch

from cute_kernels.fp8 import Fp8Recipe
from cute_kernels.fp8.quantize_ops import dequantize_to_bf16
from cute_kernels.fp8.recipe import dequantize, quantize_1x128
from cute_kernels.mlp import srelu_mlp

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("m,k", [(1, 128), (77, 2688), (1000, 144), (4096, 4096)])
@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_bitwise_the_torch_form(m, k, fmt):
    torch.manual_seed(m + k)
    x = torch.randn(m, k, device="cuda") * torch.logspace(-4, 4, k, device="cuda")
    q, s = quantize_1x128(x, fmt)
    s = s.t().contiguous().t()
    got = dequantize_to_bf16(q, s)
    want = dequantize(q, s, out_dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(got.view(torch.int16), want.view(torch.int16))


@pytest.mark.parametrize("experts", [0, 4])
def test_fp8_step_bitwise_the_same_with_the_kernel(experts, monkeypatch):
    torch.manual_seed(11)
    m, h, f = 600, 256, 384
    x = torch.randn(m, h, device="cuda").bfloat16()
    w1 = (torch.randn(*((experts, f, h) if experts else (f, h)), device="cuda") / 16).bfloat16()
    w2 = (torch.randn(*((experts, h, f) if experts else (h, f)), device="cuda") / 20).bfloat16()
    dy = torch.randn(m, h, device="cuda").bfloat16()
    splits = [100, 0, 300, 200] if experts else None
    grads = []
    for flag in ("0", "1"):
        monkeypatch.setenv("CUTE_KERNELS_FP8_DEQUANT_KERNEL", flag)
        leaves = [t.clone().requires_grad_() for t in (x, w1, w2)]
        srelu_mlp(*leaves, m_splits=splits, fp8=Fp8Recipe(), backend="cute").backward(dy)
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        assert torch.equal(a, b)
