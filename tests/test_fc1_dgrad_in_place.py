"""The FC1 data gradient read from w1 as it is (gemm_ops.fc2's transpose_w, torch_ops' eager
fc1_dgrad), on CPU with the kernels stubbed: the same launch as fc2 of w1's transposed view, and
the step keeps no reference of any kind to its weights after it (a weakref would make
torch.utils.swap_tensors refuse them, as cute_kernels/fp8/weight_cache.py explains)."""
import weakref
from unittest import mock

import pytest
import torch

from benchmarks.bench_host_path import stubbed_kernels
from cute_kernels import InputError, gemm_ops, selfcheck, torch_ops

M, H, F, E = 40, 24, 56, 3
SPLITS = [13, 0, 27]


@pytest.fixture
def stubbed():
    with stubbed_kernels() as launches, mock.patch.object(gemm_ops, "_selfchecked", set()), \
            mock.patch.object(selfcheck, "is_verified", lambda arch, variant, table: True):
        yield launches


@pytest.mark.parametrize("grouped", [False, True])
def test_fc2_of_w_transposed_in_place_launches_what_fc2_of_the_transpose_does(stubbed, grouped):
    seen = []
    h = torch.randn(M, F).bfloat16()
    w1 = torch.randn(*((E, F, H) if grouped else (F, H))).bfloat16()
    splits = list(SPLITS) if grouped else None
    with mock.patch.object(gemm_ops, "get_compiled", lambda key: (lambda *args: seen.append((key, args)))):
        for _ in range(2):  # the first call makes the plan, the second launches from it
            y_view = gemm_ops.fc2(h, w1.transpose(-2, -1), m_splits=splits)
            y_in_place = gemm_ops.fc2(h, w1, m_splits=splits, transpose_w=True)
    assert y_view.shape == y_in_place.shape == (M, H)
    (k1, a1), (k2, a2) = seen[-2:]
    assert k1 == k2
    for p, q in zip(a1, a2):
        if isinstance(p, torch.Tensor) and p.data_ptr() != y_view.data_ptr():  # (the outputs differ)
            assert (p.shape, p.stride(), p.data_ptr()) == (q.shape, q.stride(), q.data_ptr())
        elif not isinstance(p, torch.Tensor):
            assert p is q or p == q


def test_fc2_transpose_w_names_the_operand_in_its_errors(stubbed):
    h = torch.randn(M, F).bfloat16()
    with pytest.raises(InputError, match=r"w2 \(as its transpose\)"):
        gemm_ops.fc2(h, torch.randn(F + 8, H).bfloat16(), transpose_w=True)
    with pytest.raises(InputError, match="w2 must be a 2-D or 3-D"):
        gemm_ops.fc2(h, [[1.0]], transpose_w=True)


@pytest.mark.parametrize("grouped", [False, True])
def test_the_eager_fc1_dgrad_is_the_ops_fc1_dgrad(grouped):
    """torch_ops' eager fc1_dgrad (w1 as it is) and the op's (fc2_fwd of w1's transpose), CPU math."""
    dpre = torch.randn(M, F, dtype=torch.float64)
    w1 = torch.randn(*((E, F, H) if grouped else (F, H)), dtype=torch.float64)
    splits = list(SPLITS) if grouped else None
    assert torch.equal(torch_ops.eager.fc1_dgrad(dpre, w1, splits), torch_ops.fc1_dgrad(dpre, w1, splits))
    ref = dpre @ w1 if not grouped else torch.cat([d @ w for d, w in zip(dpre.split(SPLITS), w1)])
    assert torch.allclose(torch_ops.fc1_dgrad(dpre, w1, splits), ref)


def test_the_step_leaves_its_weights_swappable():
    """After stubbed grouped steps no weakref points at w1 or w2 (torch.utils.swap_tensors, used by
    load_state_dict(assign=True) and module conversions with swapped parameters, refuses such a
    tensor), and the weights swap."""
    from benchmarks.bench_host_path import step_inputs

    x, w1, w2, dy, splits = step_inputs({"name": "small grouped", "m": M, "h": H, "f": F, "e": E, "splits": SPLITS})
    with stubbed_kernels(), mock.patch.object(gemm_ops, "_selfchecked", set()), \
            mock.patch.object(selfcheck, "is_verified", lambda arch, variant, table: True):
        from cute_kernels import srelu_mlp

        for _ in range(2):
            srelu_mlp(x, w1, w2, m_splits=splits, backend="cute").backward(dy)
    assert weakref.getweakrefcount(w1) == 0 and weakref.getweakrefcount(w2) == 0
    w1_new = torch.nn.Parameter(torch.zeros_like(w1))
    torch.utils.swap_tensors(w1, w1_new)
    assert torch.equal(w1, torch.zeros_like(w1))
