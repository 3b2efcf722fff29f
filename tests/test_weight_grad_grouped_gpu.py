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
