"""The experimental K-grouped weight-gradient kernel (weight_grad with m_splits) on the GPU.

Kept in its own file, which pytest runs last: the kernel intermittently faults with an
illegal address on a first launch (notes/issue-3-progress.md), and a fault poisons the
CUDA context for every test after it.
"""
import pytest
import torch

from test_gemm_gpu import WGRAD_CONFIGS, _check, _gen, _wgrad_ref, check_weight_grad, check_weight_grad_accumulate
from reference import random_splits

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _enable(monkeypatch):
    monkeypatch.setenv("CUTE_KERNELS_EXPERIMENTAL_GROUPED_WGRAD", "1")


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
