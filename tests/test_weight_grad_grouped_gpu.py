"""The K-grouped weight-gradient kernel (weight_grad with m_splits) on the GPU.

Its first design cut each expert's token range with a 3-D TMA view whose base address
lay below the operand's allocation; TMA loads through it faulted with an illegal
address whenever that address was unmapped (every time when the operand was the
process's first GPU allocation).  The fresh-process tests below reproduce exactly
that situation.  Kept in its own file, which pytest runs last, because a fault
poisons the CUDA context for every test after it.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from test_gemm_gpu import WGRAD_CONFIGS, _check, _gen, _wgrad_ref, check_weight_grad, check_weight_grad_accumulate
from reference import random_splits

pytestmark = pytest.mark.gpu
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("variant", ["list", "tensor", "accum"])
def test_weight_grad_grouped_fresh_process_moe_shape(variant):
    """E=16 MoE weight gradient as the first GPU work of a new process (operands at the
    start of the GPU heap), checked per expert against fp32 inside that process."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "stress_grouped_wgrad.py"), "--worker",
                           "--variant", variant, "--shape", "e16", "--seed", "7"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"worker printed no result (rc {proc.returncode}): {proc.stdout[-800:]} {proc.stderr[-800:]}"
    res = json.loads(lines[-1][len("RESULT "):])
    assert res["ok"], res


@pytest.mark.parametrize("cfg_name", list(WGRAD_CONFIGS))
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("tnk", [(1, 264, 136), (1111, 264, 1000), (4096, 1024, 2048)])
def test_weight_grad_grouped(cfg_name, out_dtype, tnk):
    check_weight_grad(cfg_name, True, out_dtype, tnk)


def test_weight_grad_grouped_accumulates_into_main_grad():
    check_weight_grad_accumulate(True)


def test_weight_grad_grouped_tensor_splits_and_transposed_inputs():
    from cute_kernels import weight_grad

    gen = _gen()
    t, n, k, e = 2000, 256, 384, 4
    dy = torch.randn(n, t, generator=gen).bfloat16().cuda().t()  # column-major views: copied to row-major
    x = torch.randn(k, t, generator=gen).bfloat16().cuda().t()
    splits = random_splits(t, e, gen, empty=1)
    dw = weight_grad(dy, x, m_splits=torch.tensor(splits, device="cuda"))
    _check(dw, _wgrad_ref(dy, x, splits, e), torch.bfloat16, "dw from transposed inputs and tensor splits")


# Experts whose token counts are whole K blocks (read through the launch's descriptors,
# at starts that are not block-aligned after the 37) next to ones with a partial last
# block (rewritten descriptors), tiny and empty experts: every CTA alternates between
# the two paths and cycles through its descriptor slots many times.
MIXED_SPLITS = [64, 128, 37, 0, 192, 1, 64, 300, 0, 128, 256, 63, 65, 0, 640, 127, 128, 5, 64, 192] * 3


@pytest.mark.parametrize("cfg_name", list(WGRAD_CONFIGS))
@pytest.mark.parametrize("tile_k", [64, 128])
def test_weight_grad_grouped_whole_and_partial_blocks(cfg_name, tile_k):
    import dataclasses

    from cute_kernels import GemmConfig, weight_grad

    cfg = WGRAD_CONFIGS[cfg_name]
    cfg = dataclasses.replace(cfg or GemmConfig(tile_n=128, cluster_m=1, cluster_n=1), tile_k=tile_k)
    gen = _gen()
    splits = MIXED_SPLITS
    t, n, k, e = sum(splits), 384, 264, len(splits)
    dy = torch.randn(t, n, generator=gen).bfloat16().cuda()
    x = torch.randn(t, k, generator=gen).bfloat16().cuda()
    out = torch.full((e, n, k), float("nan"), dtype=torch.bfloat16, device="cuda")
    weight_grad(dy, x, m_splits=splits, out=out, config=cfg)
    ref = _wgrad_ref(dy, x, splits, e)
    _check(out, ref, torch.bfloat16, f"dw ({cfg_name}, tile_k {tile_k})")
    for i, cnt in enumerate(splits):
        if cnt == 0:
            assert (out[i] == 0).all(), f"expert {i} is empty: its gradient must be zeros"
        else:
            err = ((out[i].float() - ref[i]).norm() / ref[i].norm()).item()
            assert err < 2e-2, f"expert {i} ({cnt} tokens): relative error {err:.3e}"
