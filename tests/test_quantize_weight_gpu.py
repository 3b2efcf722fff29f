"""The FP8 weight quantization kernel on the GPU (sm_90a): W's and W^T's copies equal the recipe's
`quantize_128x128(w)` and its `transposed_copy` bit for bit (values and scales), for single
weights and expert stacks whose N is not a multiple of 128 (blocks never span two experts), partial
K blocks, both formats, pow2 scales, all-zero blocks (scale 1) and blocks over eight decades."""
import pytest
import torch

from cute_kernels.fp8.quantize_ops import quantize_weight_copies
from cute_kernels.fp8.recipe import quantize_128x128
from cute_kernels.fp8.weight_cache import transposed_copy

pytestmark = pytest.mark.gpu
U8 = torch.uint8


def _check(w, fmt="e4m3", pow2=False):
    (q, s), (qt, st) = quantize_weight_copies(w, fmt, pow2=pow2)
    rq, rs = quantize_128x128(w, fmt, pow2=pow2)
    tq, ts = transposed_copy(rq, rs)
    for name, a, b in (("q", q.view(U8), rq.view(U8)), ("s", s, rs), ("qt", qt.view(U8), tq.view(U8)), ("st", st, ts)):
        assert a.shape == b.shape and a.is_contiguous(), (name, a.shape, b.shape)
        bad = (a != b).nonzero()
        assert bad.numel() == 0, f"{name}: {bad.shape[0]} of {a.numel()} differ, first at {bad[0].tolist()}"


@pytest.mark.parametrize("shape", [(128, 128), (16, 16), (1856, 2688), (2688, 1856), (144, 400), (4, 1856, 2688),
                                   (3, 80, 144), (1, 256, 384)])
def test_bitwise_equal_to_the_recipe(shape):
    torch.manual_seed(sum(shape))
    n, k = shape[-2:]
    w = torch.randn(*shape, device="cuda") * torch.logspace(-4, 4, k, device="cuda")
    w = w * torch.logspace(-2, 2, n, device="cuda")[:, None]
    _check(w.bfloat16())


@pytest.mark.parametrize("fmt,pow2", [("e4m3", True), ("e5m2", False), ("e5m2", True)])
def test_formats_and_pow2_scales(fmt, pow2):
    torch.manual_seed(1)
    _check((torch.randn(2, 336, 384, device="cuda") * 30).bfloat16(), fmt, pow2)


def test_zero_blocks_get_scale_one():
    w = torch.randn(2, 208, 384, device="cuda").bfloat16()  # N a multiple of 16, not of 128
    w[:, :, 128:256] = 0
    w[1, 128:, :] = 0
    _check(w)
    (_, s), (_, st) = quantize_weight_copies(w)
    assert (s[:, :, 1] == 1).all() and (s[1, 1] == 1).all() and (st[:, 1, :] == 1).all()


@pytest.mark.parametrize("experts", [0, 4])
def test_fp8_step_with_the_one_pass_weight_copies_is_bitwise_the_same(experts, monkeypatch):
    """srelu_mlp(fp8=...) on the kernel path: output and every gradient bitwise equal with
    CUTE_KERNELS_FP8_WEIGHT_KERNEL=1 (the kernel's W and W^T copies) and without (the recipe's)."""
    from cute_kernels.fp8 import Fp8Recipe
    from cute_kernels.mlp import srelu_mlp

    torch.manual_seed(3)
    m, h, f = 700, 384, 464
    x = torch.randn(m, h, device="cuda").bfloat16()
    shape1, shape2 = ((experts, f, h), (experts, h, f)) if experts else ((f, h), (h, f))
    w1 = (torch.randn(*shape1, device="cuda") / h ** 0.5).bfloat16()
    w2 = (torch.randn(*shape2, device="cuda") / f ** 0.5).bfloat16()
    dy = torch.randn(m, h, device="cuda").bfloat16()
    splits = [200, 0, 301, 199] if experts else None
    results = []
    for flag in ("0", "1"):  # the recipe's copies, then the one-pass kernel's
        monkeypatch.setenv("CUTE_KERNELS_FP8_WEIGHT_KERNEL", flag)
        leaves = [t.clone().requires_grad_() for t in (x, w1, w2)]
        y = srelu_mlp(*leaves, m_splits=splits, fp8=Fp8Recipe(wgrad="bf16"), backend="cute")
        y.backward(dy)
        results.append([y.detach()] + [t.grad for t in leaves])
    for name, a, b in zip(("y", "dx", "dw1", "dw2"), *results):
        assert torch.equal(a, b), f"{name} differs with the one-pass weight copies"
