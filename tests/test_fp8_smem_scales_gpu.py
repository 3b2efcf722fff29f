"""The block-scaled FP8 kernel with its scales staged in shared memory (`KernelKey.scales_smem`:
the producer warp copies each K tile's scales into the operand stage, the consumers read them with
ld.shared; cute_kernels/sm90/scale_stage.py, compiled in tests/test_compile_fp8_smem_scales.py) on
the GPU (on by default since 2026-12-03; `fp8.ops.smem_scales(on)` picks either kernel).  The
promotion is the same arithmetic on the same scale values, so every output is bitwise the default
kernel's: dense (M odd, not a multiple of 128, one row; K with a partial last block and 1, 2, 3, 9,
32 K tiles: both loop tails; row- and column-major activation scales; 128x128 and 128x256 tiles on
both cluster shapes), FC1 + relu^2 writing FP8 postact + scales, grouped (empty and one-row experts,
GPU-tensor splits, router probabilities); and the dense output against the float64 reference of
the dequantized inputs.  Outputs are poisoned.  These tests are the variant's hardware evidence
(hardware_verified.yaml `+smemscales`: H200, 2026-12-03)."""
import dataclasses

import pytest
import torch

from cute_kernels.config import GemmConfig
from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.fp8.epilogue import Fp8Epilogue
from cute_kernels.fp8.ops import _launch, fp8_fc1_srelu, fp8_gemm, fp8_grouped, smem_scales
from cute_kernels.fp8.recipe import dequantize
from cute_kernels.sm90.config import FP8_DEFAULT_CONFIG
from test_fp8_gpu import GROUPED_CASES, Q_SHAPES, SHAPES, _check_elementwise, _operands, _poisoned, grouped_case

gpu = pytest.mark.gpu
WIDE = GemmConfig(tile_m=128, tile_n=256, tile_k=128, cluster_m=2, cluster_n=1)
CONFIGS = {"128x128-c1x2": FP8_DEFAULT_CONFIG, "128x128-c2x1": dataclasses.replace(FP8_DEFAULT_CONFIG, cluster_m=2,
                                                                                      cluster_n=1),
           "128x128-c1x1": dataclasses.replace(FP8_DEFAULT_CONFIG, cluster_n=1),
           "128x256-c2x1": WIDE, "128x256-c1x2": dataclasses.replace(WIDE, cluster_m=1, cluster_n=2)}


def _staged_kernel_compiled(epi, m, n, k, config):
    """The launch took the staged-scales kernel: its key (scales_smem) is the one the switch picks for
    this call and is in the process's compile cache."""
    from cute_kernels import compile as cc
    from cute_kernels.fp8.ops import _family_launch_key

    key = _family_launch_key(epi, m, n, k, 0, False, "e4m3", "e4m3", config, None)
    return key.scales_smem and key in cc._cache


@gpu
@pytest.mark.parametrize("m,n,k", SHAPES + [(1000, 384, 4096), (200, 256, 128), (333, 384, 384)])
@pytest.mark.parametrize("cfg", list(CONFIGS))
@pytest.mark.parametrize("scales_major", ["row", "col"])
def test_staged_scales_gemm_bitwise_the_default_and_the_reference(m, n, k, cfg, scales_major):
    x, w, xq, xs, wq, ws = _operands(m, n, k, seed=3 * m + n + k)
    if scales_major == "col":
        xs = xs.t().contiguous().t()
    config = CONFIGS[cfg]
    epi = Fp8Epilogue(EpilogueSpec("identity"))
    with smem_scales(True):
        d, _, _ = _launch(xq, xs, wq, ws, epi, config, outs=_poisoned(m, n, False, True))
        assert _staged_kernel_compiled(epi, m, n, k, config)
    with smem_scales(False):
        d_default = fp8_gemm(xq, xs, wq, ws, config=config)
    assert not d.isnan().any(), "unwritten output elements"
    assert torch.equal(d, d_default), "the staged scales' output differs from the default kernel's"
    ref = dequantize(xq, xs).double() @ dequantize(wq, ws).double().T
    abs_sum = dequantize(xq, xs).double().abs() @ dequantize(wq, ws).double().abs().T
    _check_elementwise(d, ref, abs_sum)


@gpu
@pytest.mark.parametrize("m,n,k", Q_SHAPES)
@pytest.mark.parametrize("cfg", ["128x128-c1x2", "128x256-c2x1"])
def test_staged_scales_fc1_quantized_postact_bitwise_the_default(m, n, k, cfg):
    x, w, xq, xs, wq, ws = _operands(m, n, k, seed=m + 13 * n + k)
    with smem_scales(True):
        pre, q, qs = fp8_fc1_srelu(xq, xs, wq, ws, config=CONFIGS[cfg])
    with smem_scales(False):
        pre0, q0, qs0 = fp8_fc1_srelu(xq, xs, wq, ws, config=CONFIGS[cfg])
    assert torch.equal(pre, pre0), "preact differs from the default kernel's"
    assert torch.equal(qs, qs0) and torch.equal(q.view(torch.uint8), q0.view(torch.uint8)), \
        "FP8 postact or its scales differ from the default kernel's"


@gpu
@pytest.mark.parametrize("splits,as_tensor,with_prob", GROUPED_CASES)
def test_staged_scales_grouped_bitwise_the_default(splits, as_tensor, with_prob):
    xq, xs, wq, ws, prob, sp = grouped_case(splits, as_tensor, with_prob, 17)
    outs = {}
    for on in (True, False):
        with smem_scales(on):
            y = fp8_grouped(xq, xs, wq, ws, sp)
            _, q, qs = fp8_grouped(xq, xs, wq, ws, sp, epilogue="act", prob=prob)
        outs[on] = (y, q.view(torch.uint8), qs)
    for got, want, what in zip(outs[True], outs[False], ("output", "FP8 postact", "postact scales")):
        assert torch.equal(got, want), f"grouped {what} with the staged scales differs from the default kernel's"
