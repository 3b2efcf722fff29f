"""The weights' kernel views kept from step to step (host_args.kept_nkl) and the FC1 data gradient
read from w1 as it is (gemm_ops.fc2's transpose_w, torch_ops' eager fc1_dgrad), on CPU: the kept
view is the view the launch made before (sizes, strides, offset, pointer), it follows a weight whose
data is replaced, and it goes (with the storage it holds) when the weight does."""
import gc
from unittest import mock

import pytest
import torch

from benchmarks.bench_host_path import stubbed_kernels
from cute_kernels import InputError, gemm_ops, host_args, selfcheck, torch_ops
from cute_kernels.host_args import as_nkl, as_nkl_t, kept_count, kept_nkl
from cute_kernels.launch_plan import tensor_meta

M, H, F, E = 40, 24, 56, 3
SPLITS = [13, 0, 27]


def _same_view(p, q):
    return (p.shape, p.stride(), p.storage_offset(), p.data_ptr(), p.dtype) == \
        (q.shape, q.stride(), q.storage_offset(), q.data_ptr(), q.dtype) and torch.equal(p, q)


@pytest.mark.parametrize("shape", [(F, H), (E, F, H)])
@pytest.mark.parametrize("transposed", [False, True])
def test_a_kept_view_is_the_view_the_launch_made(shape, transposed):
    w = torch.randn(E * F * H + 16)[5:5 + torch.Size(shape).numel()].view(shape)  # not at its storage's start
    made = as_nkl_t(w) if transposed else as_nkl(w)
    kept = kept_nkl(w, tensor_meta(w), transposed)
    assert _same_view(kept, made)
    assert kept_nkl(w, tensor_meta(w), transposed) is kept  # no torch op the second time
    w.mul_(2)  # an in-place update (an optimizer step) is seen: the view shares w's storage
    assert torch.equal(kept, as_nkl_t(w) if transposed else as_nkl(w))


def test_replaced_data_gets_a_new_view():
    w = torch.nn.Parameter(torch.randn(E, F, H))
    first = kept_nkl(w, tensor_meta(w))
    w.data = torch.randn(E, F, H)  # same metadata, another pointer
    again = kept_nkl(w, tensor_meta(w))
    assert again is not first and _same_view(again, as_nkl(w))
    w.data = torch.randn(E, H, F)  # another shape
    assert _same_view(kept_nkl(w, tensor_meta(w)), as_nkl(w))


def test_the_kept_view_goes_with_its_tensor():
    gc.collect()
    before = kept_count()
    w = torch.nn.Parameter(torch.randn(E, F, H))
    view = kept_nkl(w, tensor_meta(w))
    kept_nkl(w, tensor_meta(w), True)
    assert kept_count() == before + 1
    assert view._base is not w  # the view holds w's storage, not w (whose death drops the entry)
    x = torch.randn(M, H)
    loss = (x @ w[1].t()).sum()  # the graph saves w: it lives on after `del w`
    del w, view
    assert kept_count() == before + 1
    del loss
    assert kept_count() == before


def test_a_tensor_without_metadata_is_not_kept():
    w = torch.randn(F, H)
    before = kept_count()
    assert _same_view(kept_nkl(w, None), as_nkl(w))
    assert kept_count() == before


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


def test_the_step_keeps_its_weights_views_only():
    """One stubbed grouped step keeps the views of w1 and w2 (x, a leaf too, is not a B operand)."""
    from benchmarks.bench_host_path import step_call

    gc.collect()
    before = kept_count()
    with stubbed_kernels(), mock.patch.object(gemm_ops, "_selfchecked", set()), \
            mock.patch.object(selfcheck, "is_verified", lambda arch, variant, table: True):
        step = step_call({"name": "small grouped", "m": M, "h": H, "f": F, "e": E, "splits": SPLITS})
        step()
        assert kept_count() == before + 2
        views = {id(e.nkl) for e in host_args._kept.values()} | {id(e.nkl_t) for e in host_args._kept.values()}
        step()  # the second step makes no views of them again
        assert kept_count() == before + 2
        assert views == {id(e.nkl) for e in host_args._kept.values()} | {id(e.nkl_t) for e in host_args._kept.values()}
        del step
    gc.collect()
    assert kept_count() == before
