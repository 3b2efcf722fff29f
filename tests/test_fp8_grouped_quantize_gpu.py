"""The per-expert padded column-wise FP8 quantization kernel (sm90/quantize_grouped.py) on the GPU:
qt, st and cu_padded equal the torch reference (fp8/grouped_tokens.quantize_cols_grouped_reference)
bit for bit, for list and GPU-tensor splits (empty, one-token, 128/129-token experts, all empty),
odd K (partial last K block), both formats and pow2 scales, and a strided x whose rows past T
hold huge values (not read)."""
import pytest
import torch

from cute_kernels.fp8.grouped_tokens import quantize_cols_grouped_reference
from cute_kernels.fp8.quantize_ops import quantize_cols_grouped

pytestmark = pytest.mark.gpu
U8 = torch.uint8


def _check(x, splits, fmt="e4m3", pow2=False):
    qt, st, cu = quantize_cols_grouped(x, splits, fmt, pow2=pow2)
    rqt, rst, rcu = quantize_cols_grouped_reference(x, splits, fmt, pow2=pow2)
    assert qt.shape == rqt.shape and st.shape == rst.shape and st.stride(0) == 1
    assert torch.equal(cu, rcu)
    for name, a, b in (("qt", qt.view(U8), rqt.view(U8)), ("st", st, rst)):
        bad = (a != b).nonzero()
        assert bad.numel() == 0, f"{name}: {bad.shape[0]} of {a.numel()} differ, first at {bad[0].tolist()}"


@pytest.mark.parametrize("splits", [[0, 1, 127, 128, 129, 0, 300], [1000], [3, 0, 0, 5], [0, 0, 256], [1]])
@pytest.mark.parametrize("k", [128, 144, 1856, 2688])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_bitwise_equal_to_the_reference(splits, k, as_tensor):
    torch.manual_seed(len(splits) * 31 + k)
    t = sum(splits)
    x = (torch.randn(t, k, device="cuda") * torch.logspace(-4, 4, k, device="cuda")
         * torch.logspace(-2, 2, t, device="cuda")[:, None]).bfloat16()
    ms = torch.tensor(splits, dtype=torch.int32, device="cuda") if as_tensor else splits
    _check(x, ms)


@pytest.mark.parametrize("fmt,pow2", [("e4m3", True), ("e5m2", False), ("e5m2", True)])
def test_formats_and_pow2_scales(fmt, pow2):
    torch.manual_seed(1)
    _check((torch.randn(333, 384, device="cuda") * 30).bfloat16(), [100, 0, 233], fmt, pow2)


def test_e8_step_shape_with_int64_gpu_splits():
    torch.manual_seed(2)
    splits = torch.tensor([2000, 2100, 1900, 2048, 2300, 1700, 2200, 2136], dtype=torch.int64, device="cuda")
    _check(torch.randn(16384, 2688, device="cuda").bfloat16(), splits)


def test_strided_x_rows_past_t_are_not_read():
    big = torch.randn(1200, 640, device="cuda").bfloat16()
    big[1000:] = 3e4
    _check(big[:1000, 128:512], [500, 1, 499])


@pytest.mark.parametrize("splits", [[0, 1, 127, 128, 129, 0, 300], [3, 0, 0, 5], [1000]])
@pytest.mark.parametrize("k,fmt,pow2", [(144, "e4m3", False), (1856, "e5m2", False), (2688, "e4m3", True)])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_dual_kernel_equals_the_row_and_column_quantizers(splits, k, fmt, pow2, as_tensor):
    """quantize_rows_and_cols_grouped: (q, s) bitwise quantize_rows_only's (and the recipe's), (qt, st,
    cu_padded) bitwise quantize_cols_grouped's reference."""
    from cute_kernels.fp8.quantize_ops import quantize_rows_and_cols_grouped, quantize_rows_only
    from cute_kernels.fp8.recipe import quantize_1x128

    torch.manual_seed(len(splits) + k)
    t = sum(splits)
    x = (torch.randn(t, k, device="cuda") * torch.logspace(-4, 4, k, device="cuda")
         * torch.logspace(-2, 2, t, device="cuda")[:, None]).bfloat16()
    ms = torch.tensor(splits, dtype=torch.int64, device="cuda") if as_tensor else splits
    q, s, qt, st, cu = quantize_rows_and_cols_grouped(x, ms, fmt, pow2=pow2)
    rq, rs = quantize_rows_only(x, fmt, pow2=pow2)
    tq, ts = quantize_1x128(x, fmt, pow2=pow2)
    assert s.stride() == rs.stride() and torch.equal(q.view(U8), rq.view(U8)) and torch.equal(s, rs)
    assert torch.equal(q.view(U8), tq.view(U8)) and torch.equal(s, ts)
    rqt, rst, rcu = quantize_cols_grouped_reference(x, ms, fmt, pow2=pow2)
    assert qt.shape == rqt.shape and torch.equal(cu, rcu)
    assert torch.equal(qt.view(U8), rqt.view(U8)) and torch.equal(st, rst)


@pytest.mark.parametrize("splits", [[0, 1, 127, 128, 129, 0, 300], [3, 0, 0, 5], [1000]])
@pytest.mark.parametrize("k,in_fmt,fmt,pow2", [(144, "e4m3", "e4m3", False), (1856, "e4m3", "e4m3", True),
                                               (2688, "e5m2", "e4m3", False)])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_requantize_equals_quantizing_the_dequantized_copy(splits, k, in_fmt, fmt, pow2, as_tensor):
    """requantize_cols_grouped(xq, xs): bitwise quantize_cols_grouped of dequantize_to_bf16(xq, xs) (the
    FP8 step's x, saved as its row-wise FP8 copy with column-major scales) and of the recipe's
    dequantization."""
    from cute_kernels.fp8.quantize_ops import dequantize_to_bf16, quantize_rows_only, requantize_cols_grouped
    from cute_kernels.fp8.recipe import dequantize

    torch.manual_seed(len(splits) + k)
    t = sum(splits)
    x = (torch.randn(t, k, device="cuda") * torch.logspace(-4, 4, k, device="cuda")
         * torch.logspace(-2, 2, t, device="cuda")[:, None]).bfloat16()
    xq, xs = quantize_rows_only(x, in_fmt)
    ms = torch.tensor(splits, dtype=torch.int32, device="cuda") if as_tensor else splits
    qt, st, cu = requantize_cols_grouped(xq, xs, ms, fmt, pow2=pow2)
    x_deq = dequantize_to_bf16(xq, xs)
    assert torch.equal(x_deq, dequantize(xq, xs, out_dtype=torch.bfloat16))
    rqt, rst, rcu = quantize_cols_grouped(x_deq, ms, fmt, pow2=pow2)
    assert qt.shape == rqt.shape and torch.equal(cu, rcu)
    assert torch.equal(qt.view(U8), rqt.view(U8)) and torch.equal(st, rst)
    tqt, tst, _ = quantize_cols_grouped_reference(x_deq, ms, fmt, pow2=pow2)
    assert torch.equal(qt.view(U8), tqt.view(U8)) and torch.equal(st, tst)
