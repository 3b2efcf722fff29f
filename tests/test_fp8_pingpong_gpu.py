"""The block-scaled FP8 kernel on ping-pong 64-row tiles (tests/test_compile_fp8_pingpong.py) on the
GPU: dense against the float64 reference of the dequantized inputs and bitwise equal to the default
cooperative 128x128 tile (each output element's K tiles are promoted in the same order by the same
instructions), 128- and 256-wide, poisoned outputs, odd M; grouped (empty and one-row experts, GPU
tensor splits) bitwise equal to the dense default per expert; the fused FC2 data gradient bitwise
equal to its cooperative launch."""
import dataclasses

import pytest
import torch

from cute_kernels.fp8 import Fp8Recipe
from cute_kernels.fp8.ops import fp8_dgrad_dact, fp8_gemm, fp8_grouped
from cute_kernels.sm90.config import FP8_DEFAULT_CONFIG
from test_fp8_dgrad_gpu import _inputs
from test_fp8_gpu import SHAPES, check_config_against_reference_and_default, grouped_case

gpu = pytest.mark.gpu
PP = dataclasses.replace(FP8_DEFAULT_CONFIG, tile_m=64, schedule="pingpong")
CONFIGS = {"64x128-c1x2": PP, "64x128-c1x1": dataclasses.replace(PP, cluster_n=1),
           "64x256-c2x1": dataclasses.replace(PP, tile_n=256, cluster_m=2, cluster_n=1)}


@gpu
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_pingpong_fp8_gemm_against_reference_and_the_default_tile(m, n, k, cfg):
    check_config_against_reference_and_default(m, n, k, CONFIGS[cfg], 5 * m + n + k + 1, "ping-pong")


@gpu
@pytest.mark.parametrize("splits", [[256, 0, 129, 1, 383], [0, 0, 77], [128] * 8])
@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("cfg", ["64x128-c1x2", "64x256-c2x1"])
def test_pingpong_grouped_fp8_equals_dense_per_expert(splits, as_tensor, cfg):
    xq, xs, wq, ws, _, sp = grouped_case(splits, as_tensor, False, 7)
    y = fp8_grouped(xq, xs, wq, ws, sp, config=CONFIGS[cfg])
    start = 0
    for i, s in enumerate(splits):
        rows = slice(start, start + s)
        if s:
            assert torch.equal(y[rows], fp8_gemm(xq[rows], xs[rows], wq[i], ws[i], config=FP8_DEFAULT_CONFIG)), \
                f"expert {i} differs"
        start += s


@gpu
@pytest.mark.parametrize("m,n,k", [(77, 384, 272), (1000, 1856, 2688)])
@pytest.mark.parametrize("with_prob", [False, True])
def test_pingpong_fused_dgrad_equals_the_cooperative_one(m, n, k, with_prob):
    dq, ds, wq, ws, pre, prob = _inputs(m, n, k, seed=m + n + k + 3)
    p = prob if with_prob else None
    rec = Fp8Recipe(grad_format="e5m2")
    want = fp8_dgrad_dact(dq, ds, wq, ws, pre, prob=p, store_postact=True, recipe=rec)
    got = fp8_dgrad_dact(dq, ds, wq, ws, pre, prob=p, store_postact=True, recipe=rec, config=PP)
    for name, a, b in zip(("dpreact", "postact", "dprob"), got, want):
        if b is None:
            assert a is None, name
        else:
            assert torch.equal(a, b), f"{name}: ping-pong differs from the cooperative launch"
