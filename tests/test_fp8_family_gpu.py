"""The GEMM family's block-scaled FP8 kernel (Sm90Gemm + sm90/mainloop_fp8.py + the quantizing
codec) on the GPU: dense against the float64 reference of the dequantized inputs (the bound of
tests/test_fp8_gpu.py), both tile widths against each other (the same promotion order, so the
bf16 outputs are bitwise equal; on 2026-12-03 both were also bitwise equal to the retired fork
kernel, benchmarks/results/fp8/2026-12-03-h200-bench-fp8-family.md), FC1's quantized postact
against the recipe applied to its stored preact, and grouped along M against the dense kernel
per expert (bitwise: a row's sums do not depend on the tile it falls in), with empty experts,
odd splits, GPU-tensor splits and router probabilities.  Outputs are poisoned."""
import pytest
import torch

from cute_kernels.config import GemmConfig
from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.fp8.epilogue import Fp8Epilogue
from cute_kernels.fp8.ops import _launch, fp8_gemm, fp8_grouped
from cute_kernels.fp8.recipe import dequantize, quantize_1x128
from test_fp8_gpu import SHAPES, _check_elementwise, _operands, _poisoned, check_postact_against_recipe, grouped_case

gpu = pytest.mark.gpu
WIDE = GemmConfig(tile_m=128, tile_n=256, tile_k=128, cluster_m=2, cluster_n=1)  # the split-N mainloop
CONFIGS = {"128x128": None, "128x256": WIDE}


@gpu
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_family_fp8_gemm_against_reference_and_fork(m, n, k, cfg):
    x, w, xq, xs, wq, ws = _operands(m, n, k, seed=3 * m + n + k)
    d, _, _ = _launch(xq, xs, wq, ws, Fp8Epilogue(EpilogueSpec("identity")), CONFIGS[cfg],
                      outs=_poisoned(m, n, False, True))
    ref = dequantize(xq, xs).double() @ dequantize(wq, ws).double().T
    abs_sum = dequantize(xq, xs).double().abs() @ dequantize(wq, ws).double().abs().T
    assert not d.isnan().any(), "unwritten output elements"
    _check_elementwise(d, ref, abs_sum)
    other = [c for c in CONFIGS if c != cfg][0]
    assert torch.equal(d, fp8_gemm(xq, xs, wq, ws, config=CONFIGS[other])), "the two tile widths differ"


@gpu
@pytest.mark.parametrize("m,n,k", [(256, 256, 256), (1, 128, 128), (77, 144, 272), (1000, 384, 1040),
                                   (513, 1024, 4096)])
@pytest.mark.parametrize("pow2", [False, True])
@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_family_fc1_quantized_postact(m, n, k, pow2, cfg):
    x, w, xq, xs, wq, ws = _operands(m, n, k, seed=m + 5 * n + k)
    epi = Fp8Epilogue(EpilogueSpec("srelu", store_preact=True), quantized="postact", pow2_scales=pow2)
    pre, q, qs = _launch(xq, xs, wq, ws, epi, CONFIGS[cfg], outs=_poisoned(m, n, True, True))
    assert not pre.isnan().any() and not qs.isnan().any()
    assert torch.equal(pre, fp8_gemm(xq, xs, wq, ws, config=CONFIGS[cfg])), "preact differs from the plain GEMM's"
    # postact = relu(preact as stored)^2, quantized by the recipe: the same values and scales
    post = torch.relu(pre.float()) ** 2
    rq, rs = quantize_1x128(post, pow2=pow2)
    assert torch.equal(qs, rs), "postact scales differ from the recipe's of the stored preact"
    got = dequantize(q, qs.contiguous()).double()
    want = dequantize(rq, rs).double()
    # the kernel multiplies by 1/s, the recipe divides by s: at most one e4m3 step apart
    assert ((got - want).abs() <= 2 ** -3 * want.abs() + 1e-30).all()
    assert ((got - want).norm() / want.norm().clamp_min(1e-30)).item() < 1e-3


def _splits_cases():
    return [[256, 0, 129, 1, 383], [0, 0, 77], [128] * 8, [1000, 0]]


@gpu
@pytest.mark.parametrize("splits", _splits_cases())
@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("with_prob", [False, True])
@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_family_grouped_fp8_equals_dense_per_expert(splits, as_tensor, with_prob, cfg):
    xq, xs, wq, ws, prob, sp = grouped_case(splits, as_tensor, with_prob, 1)
    config = CONFIGS[cfg] and GemmConfig(tile_m=128, tile_n=256, tile_k=128, cluster_m=1, cluster_n=2)
    y = fp8_grouped(xq, xs, wq, ws, sp, config=config)
    pre, q, qs = fp8_grouped(xq, xs, wq, ws, sp, epilogue="act", prob=prob, store_preact=True, config=config)
    start = 0
    for i, s in enumerate(splits):
        if s == 0:
            continue
        rows = slice(start, start + s)
        dense = fp8_gemm(xq[rows], xs[rows], wq[i], ws[i])
        assert torch.equal(y[rows], dense), f"expert {i}: grouped output differs from the dense kernel's"
        assert torch.equal(pre[rows], dense), f"expert {i}: grouped preact differs"
        check_postact_against_recipe(dense, None if prob is None else prob[rows], q[rows], qs[rows], f"expert {i}")
        start += s
