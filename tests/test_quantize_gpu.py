"""The dual FP8 quantization kernel on the GPU (sm_90a): its four outputs equal the recipe's
`quantize_1x128(x)` and `quantize_1x128(x.t())` bit for bit (values and scales), for odd M
(one row, partial M tiles), several K (partial last K blocks: 144, 1856), both formats, pow2 scales, all-zero blocks (scale 1),
rows of very different magnitude, and a strided x whose rows past M hold huge values (the
kernel must not read them: the column amax covers the valid rows only).  qt's padding columns
hold zeros."""
import pytest
import torch

from cute_kernels.fp8.quantize_ops import quantize_rows_and_cols
from cute_kernels.fp8.recipe import quantize_1x128

pytestmark = pytest.mark.gpu
U8 = torch.uint8


def _check(x, fmt="e4m3", pow2=False):
    q, s, qt, st = quantize_rows_and_cols(x, fmt, pow2=pow2)
    rq, rs = quantize_1x128(x, fmt, pow2=pow2)
    tq, ts = quantize_1x128(x.t(), fmt, pow2=pow2)
    m, k = x.shape
    assert q.shape == (m, k) and s.shape == (m, -(-k // 128)) and qt.shape == (k, m) and st.shape == (k, -(-m // 128))
    assert s.stride(0) == 1 and st.stride(0) == 1, "scales column-major"
    assert qt.stride(0) % 128 == 0 and qt.data_ptr() % 16 == 0
    for name, a, b in (("q", q.view(U8), rq.view(U8)), ("s", s, rs), ("qt", qt.view(U8), tq.view(U8)), ("st", st, ts)):
        bad = (a != b).nonzero()
        assert bad.numel() == 0, f"{name}: {bad.shape[0]} of {a.numel()} differ, first at {bad[0].tolist()}"
    pad = qt.as_strided((k, qt.stride(0)), (qt.stride(0), 1))[:, m:]
    assert (pad.view(U8) == 0).all(), "qt's padding columns are zero"


@pytest.mark.parametrize("m", [1, 77, 128, 129, 1000])
@pytest.mark.parametrize("k", [128, 256, 2688, 144, 1856])
def test_bitwise_equal_to_the_recipe(m, k):
    torch.manual_seed(m * 7 + k)
    # per-column and per-row magnitudes over eight decades: blocks with very different scales
    x = torch.randn(m, k, device="cuda") * torch.logspace(-4, 4, k, device="cuda")
    x = x * torch.logspace(-2, 2, m, device="cuda")[:, None]
    _check(x.bfloat16())


@pytest.mark.parametrize("fmt,pow2", [("e4m3", True), ("e5m2", False), ("e5m2", True)])
def test_formats_and_pow2_scales(fmt, pow2):
    torch.manual_seed(1)
    _check((torch.randn(333, 384, device="cuda") * 30).bfloat16(), fmt, pow2)


def test_zero_blocks_get_scale_one():
    x = torch.randn(200, 384, device="cuda").bfloat16()
    x[:, 128:256] = 0  # whole row blocks and column blocks of zeros
    x[128:, :] = 0  # the second M tile's valid rows all zero: its column scales are 1
    _check(x)
    _, s, _, st = quantize_rows_and_cols(x)
    assert (s[:, 1] == 1).all() and (st[:, 1] == 1).all()


def test_strided_x_rows_past_m_are_not_read():
    big = torch.randn(1200, 640, device="cuda").bfloat16()
    big[1000:] = 3e4  # would dominate the last tile's column amax if read
    _check(big[:1000, 128:512])  # row stride 640, a column offset of 128 (16-byte aligned)


@pytest.mark.parametrize("m,k", [(1, 128), (333, 2688), (1000, 144)])
@pytest.mark.parametrize("fmt,pow2", [("e4m3", False), ("e5m2", True)])
def test_rows_only_form_is_bitwise_the_full_kernels_row_copy(m, k, fmt, pow2):
    from cute_kernels.fp8.quantize_ops import quantize_rows_only

    torch.manual_seed(m + k)
    x = (torch.randn(m, k, device="cuda") * torch.logspace(-4, 4, k, device="cuda")).bfloat16()
    q, s = quantize_rows_only(x, fmt, pow2=pow2)
    fq, fs, _, _ = quantize_rows_and_cols(x, fmt, pow2=pow2)
    assert torch.equal(q.view(U8), fq.view(U8)) and torch.equal(s, fs) and s.stride() == fs.stride()
