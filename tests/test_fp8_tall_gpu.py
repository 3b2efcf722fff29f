"""The block-scaled FP8 kernel on 256x128 tiles (each consumer warpgroup two 64-row waves through one
scratch accumulator: sm90/mainloop_fp8.py `run_split_m`, compiled in tests/test_compile_fp8_family.py)
on the GPU.  Dense against the float64 reference of the dequantized inputs (M odd and not a multiple
of 128 or 256: 1, 77, 513, 1000) and bitwise equal to the default 128x128 tile (each output element's
K tiles are promoted in the same order by the same instructions); FC1 + relu^2 writing FP8 postact
+ 1x128 scales bitwise equal to the default tile's and its scales the recipe's; grouped (empty and
one-row experts, GPU-tensor splits, router probabilities) bitwise equal to the dense default per
expert.  Outputs are poisoned.  The variant is not in hardware_verified.yaml: its first launch runs
the first-use self-check (cute_kernels/selfcheck.py), which these tests pass through."""
import dataclasses

import pytest
import torch

from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.fp8.epilogue import Fp8Epilogue
from cute_kernels.fp8.ops import _launch, fp8_fc1_srelu, fp8_gemm, fp8_grouped
from cute_kernels.fp8.recipe import dequantize, quantize_1x128
from cute_kernels.sm90.config import FP8_DEFAULT_CONFIG
from test_fp8_gpu import (Q_SHAPES, SHAPES, _operands, _poisoned, check_config_against_reference_and_default,
                         check_postact_against_recipe, GROUPED_CASES, grouped_case)

gpu = pytest.mark.gpu
TALL = dataclasses.replace(FP8_DEFAULT_CONFIG, tile_m=256)
CONFIGS = {"256x128-c1x2": TALL, "256x128-c2x1": dataclasses.replace(TALL, cluster_m=2, cluster_n=1),
           "256x128-c1x1": dataclasses.replace(TALL, cluster_n=1)}


@gpu
@pytest.mark.parametrize("m,n,k", SHAPES + [(1000, 384, 4096)])
@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_256x128_fp8_gemm_against_reference_and_the_default_tile(m, n, k, cfg):
    check_config_against_reference_and_default(m, n, k, CONFIGS[cfg], 11 * m + n + k, "the 256x128 tile")


@gpu
@pytest.mark.parametrize("m,n,k", Q_SHAPES)
@pytest.mark.parametrize("cfg", ["256x128-c1x2", "256x128-c2x1"])
def test_256x128_fc1_quantized_postact(m, n, k, cfg):
    x, w, xq, xs, wq, ws = _operands(m, n, k, seed=m + 13 * n + k)
    epi = Fp8Epilogue(EpilogueSpec("srelu"), quantized="postact")
    _, q, qs = _launch(xq, xs, wq, ws, epi, CONFIGS[cfg], outs=_poisoned(m, n, True, False))
    assert not qs.isnan().any() and not q.float().isnan().any(), "unwritten postact or scales"
    _, q_ref, qs_ref = fp8_fc1_srelu(xq, xs, wq, ws, store_preact=False)
    assert torch.equal(qs, qs_ref) and torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8)), \
        "the 256x128 tile's FP8 postact differs from the 128x128 one's"
    # postact = relu(preact rounded to bf16)^2, quantized by the recipe: its scales
    post = torch.relu(fp8_gemm(xq, xs, wq, ws).float()) ** 2
    rq, rs = quantize_1x128(post)
    assert torch.equal(qs, rs), "postact scales differ from the recipe's"
    got, want = dequantize(q, qs.contiguous()).double(), dequantize(rq, rs).double()
    assert ((got - want).norm() / want.norm().clamp_min(1e-30)).item() < 1e-3


@gpu
@pytest.mark.parametrize("splits,as_tensor,with_prob", GROUPED_CASES)
def test_256x128_grouped_fp8_equals_dense_per_expert(splits, as_tensor, with_prob):
    xq, xs, wq, ws, prob, sp = grouped_case(splits, as_tensor, with_prob, 17)
    y = fp8_grouped(xq, xs, wq, ws, sp, config=TALL)
    _, q, qs = fp8_grouped(xq, xs, wq, ws, sp, epilogue="act", prob=prob, config=TALL)
    start = 0
    for i, s in enumerate(splits):
        rows = slice(start, start + s)
        start += s
        if s == 0:
            continue
        dense = fp8_gemm(xq[rows], xs[rows], wq[i], ws[i])
        assert torch.equal(y[rows], dense), f"expert {i}: grouped output differs from the dense kernel's"
        check_postact_against_recipe(dense, None if prob is None else prob[rows], q[rows], qs[rows], f"expert {i}")
