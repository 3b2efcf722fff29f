"""The FP8 recipe's torch quantization: scales by hand (amax / 448 per block), partial
blocks, power-of-two scales, all-zero blocks, round trip error bounds."""
import math

import pytest
import torch

from cute_kernels.fp8.recipe import Fp8Recipe, dequantize, quantize_1x128, quantize_128x128


def test_1x128_scales_by_hand_with_a_partial_block():
    torch.manual_seed(0)
    x = torch.randn(3, 300)
    x[1, 5] = 100.0  # amax of row 1, block 0
    x[2, 290] = -7.0  # amax of row 2's partial block (columns 256..299)
    q, s = quantize_1x128(x)
    assert q.dtype == torch.float8_e4m3fn and q.shape == (3, 300) and s.shape == (3, 3) and s.dtype == torch.float32
    for r in range(3):
        for b in range(3):
            amax = x[r, b * 128:(b + 1) * 128].abs().max().item()
            assert s[r, b].item() == pytest.approx(amax / 448.0, rel=1e-7)
    assert s[1, 0].item() == pytest.approx(100.0 / 448.0, rel=1e-7)
    assert s[2, 2].item() == pytest.approx(7.0 / 448.0, rel=1e-7)
    # the block's amax element maps to +-448 exactly
    assert q[1, 5].float().item() == 448.0 and q[2, 290].float().item() == -448.0
    # e4m3 has 3 mantissa bits: relative error of a normal value at most 2^-4
    err = (dequantize(q, s) - x).abs()
    assert (err <= x.abs() * 2 ** -4 + s.repeat_interleave(128, 1)[:, :300] * 2 ** -9).all()


def test_128x128_scales_by_hand_with_partial_blocks():
    torch.manual_seed(1)
    w = torch.randn(200, 130)
    w[150, 129] = 33.0  # block (1, 1) is 72 x 2
    q, s = quantize_128x128(w)
    assert s.shape == (2, 2)
    for i in range(2):
        for j in range(2):
            amax = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128].abs().max().item()
            assert s[i, j].item() == pytest.approx(amax / 448.0, rel=1e-7)
    assert s[1, 1].item() == pytest.approx(33.0 / 448.0, rel=1e-7)
    rel = (dequantize(q, s) - w).norm() / w.norm()
    assert rel < 0.05  # e4m3: about 2-3% per element relative RMS
    assert rel > 1e-3  # quantization happened


def test_zero_blocks_get_scale_one_and_e5m2_range():
    x = torch.zeros(2, 256)
    x[1, 200] = 1e4
    q, s = quantize_1x128(x, "e5m2")
    assert q.dtype == torch.float8_e5m2
    assert s[0].tolist() == [1.0, 1.0] and s[1, 0].item() == 1.0
    assert s[1, 1].item() == pytest.approx(1e4 / 57344.0, rel=1e-7)
    assert (dequantize(q, s)[0] == 0).all()


def test_pow2_scales_round_up_to_powers_of_two():
    torch.manual_seed(2)
    x = torch.randn(4, 256) * torch.tensor([1e-3, 1.0, 30.0, 1e5])[:, None]
    q, s = quantize_1x128(x, pow2=True)
    for r in range(4):
        for b in range(2):
            amax = x[r, b * 128:(b + 1) * 128].abs().max().item()
            want = 2.0 ** math.ceil(math.log2(amax / 448.0))
            assert s[r, b].item() == want
    assert dequantize(q, s).abs().max() <= x.abs().max()  # no overflow: s >= amax / 448
    # exact power of two stays
    y = torch.full((1, 128), 448.0 * 0.25)
    assert quantize_1x128(y, pow2=True)[1].item() == 0.25


def test_recipe_object():
    r = Fp8Recipe()
    assert r.fwd_dtype == torch.float8_e4m3fn and r.grad_dtype == torch.float8_e4m3fn and r.block == 128
    assert Fp8Recipe(grad_format="e5m2").grad_dtype == torch.float8_e5m2
    assert r.key() != Fp8Recipe(pow2_scales=True).key()
    with pytest.raises(ValueError, match="grad_format"):
        Fp8Recipe(grad_format="e3m4")
    with pytest.raises(ValueError, match="block"):
        Fp8Recipe(block=64)


def test_dequantize_rejects_mismatched_scales():
    q, s = quantize_1x128(torch.randn(300, 256))
    with pytest.raises(ValueError, match="scales"):
        dequantize(q, s[:, :1])


def test_quantize_1x128_of_a_transposed_view():
    """The weight gradients quantize g^T (a view) along the tokens; widths a multiple of 128 too."""
    g = torch.randn(256, 96)
    for t in (g.t(), g[:200].t()):
        q, s = quantize_1x128(t)
        q2, s2 = quantize_1x128(t.contiguous())
        assert torch.equal(q.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s, s2)


def _bad_fields():
    """(field, value) pairs Fp8Recipe must refuse: wrong types that compare or test like good ones."""
    import numpy as np

    for v in ("no", "yes", "", 1, 0, 1.0, None, np.bool_(True), [True]):
        yield "pow2_scales", v
    for v in (128.0, "128", True, 64, 256, 0, -128, np.int64(128), None, [128]):
        yield "block", v
    for name in ("fwd_format", "grad_format"):
        for v in ("E4M3", "e4m3fn", "fp8", "", None, 8, ["e4m3"], torch.float8_e4m3fn, b"e4m3"):
            yield name, v


BAD_FIELDS = list(_bad_fields())


@pytest.mark.parametrize("field,value", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_fields_are_type_checked(field, value):
    """Issue 25: pow2_scales="no" was truthy and used, block=128.0 accepted, block="128" said
    "must be 128 ... got 128".  Each bad field is an InputError naming it and showing its repr."""
    from cute_kernels import InputError

    with pytest.raises(InputError) as exc:
        Fp8Recipe(**{field: value})
    msg = str(exc.value)
    assert msg.startswith(field) and msg.endswith(f"got {value!r}"), msg


@pytest.mark.parametrize("kw", [dict(), dict(pow2_scales=True), dict(fwd_format="e5m2", grad_format="e5m2"),
                                dict(block=128, grad_format="e5m2", pow2_scales=False)])
def test_good_fields_are_kept(kw):
    r = Fp8Recipe(**kw)
    for k, v in kw.items():
        assert getattr(r, k) == v and type(getattr(r, k)) is type(v)


def test_a_stack_of_weights_is_quantized_as_each_weight():
    """quantize_128x128 of (E, N, K) in one pass equals each expert's own quantization, bitwise
    (N, K not block multiples: blocks never span two experts)."""
    from cute_kernels.fp8.recipe import quantize_128x128

    g = torch.Generator().manual_seed(3)
    w = torch.randn(3, 200, 136, generator=g)
    w[1] = 0.0  # an all-zero expert: scale 1
    for pow2 in (False, True):
        q, s = quantize_128x128(w, pow2=pow2)
        assert q.shape == (3, 200, 136) and s.shape == (3, 2, 2)
        for e in range(3):
            qe, se = quantize_128x128(w[e], pow2=pow2)
            assert torch.equal(q[e].view(torch.uint8), qe.view(torch.uint8)) and torch.equal(s[e], se)
