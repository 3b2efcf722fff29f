"""The bf16 srelu_mlp step's host path (issue 27): its input checks that read only the tensors'
metadata run once per call signature (launch_plan.check_once) and a repeated call with a changed
argument still gets its InputError; the stubbed E=8 step (benchmarks.bench_host_path) makes no
more Python calls into cute_kernels than its bound (a count, exact on any machine, not a time)."""
import cProfile
import os
import pstats
from unittest import mock

import pytest
import torch

from benchmarks.bench_host_path import GROUPED, small, step_call, stubbed_kernels
from cute_kernels import InputError, config_lookup, mlp, srelu_mlp

M, H, F, E = 48, 16, 24, 3
SPLITS = [20, 0, 28]

# Python calls into cute_kernels/ per stubbed E=8 step (list splits): 171 before issue 27's host
# cuts of the bf16 step, 121 after, 118 with the weights' kept views and the step's splits tuple.
# Lower it when the step makes fewer.
MAX_PACKAGE_CALLS = 118


def _inputs(grouped=True, dtype=torch.float32):
    x = torch.randn(M, H, dtype=dtype)
    w1 = torch.randn(*((E, F, H) if grouped else (F, H)), dtype=dtype)
    w2 = torch.randn(*((E, H, F) if grouped else (H, F)), dtype=dtype)
    return x, w1, w2


@pytest.fixture(autouse=True)
def _fresh_signatures():
    config_lookup.clear_cache()
    yield
    config_lookup.clear_cache()


def test_metadata_checks_run_once_per_signature():
    x, w1, w2 = _inputs()
    with mock.patch.object(mlp, "check_mlp_tensors", wraps=mlp.check_mlp_tensors) as checked:
        y0 = srelu_mlp(x, w1, w2, m_splits=SPLITS, backend="torch")
        y1 = srelu_mlp(x, w1, w2, m_splits=SPLITS, backend="torch")
        assert checked.call_count == 1
        srelu_mlp(x, w1, w2, m_splits=SPLITS, prob=torch.rand(M), backend="torch")  # a new signature
        assert checked.call_count == 2
    assert torch.equal(y0, y1)


@pytest.mark.parametrize("bad", ["w1 dtype", "w2 shape", "w1 device", "prob size", "prob type", "splits sum",
                                 "splits entry", "x not a tensor", "main_grad"])
def test_a_repeated_call_with_a_changed_argument_still_gets_its_error(bad):
    x, w1, w2 = _inputs()
    prob = torch.rand(M)
    srelu_mlp(x, w1, w2, m_splits=SPLITS, prob=prob, backend="torch")  # the signature passes once
    kw = dict(m_splits=list(SPLITS), prob=prob, backend="torch")
    if bad == "w1 dtype":
        w1, match = w1.double(), "w1 dtype"
    elif bad == "w2 shape":
        w2, match = w2[:, :, :-1], "w2 must have shape"
    elif bad == "w1 device":
        w1, match = w1.to("meta"), "w1 is on meta"
    elif bad == "prob size":
        kw["prob"], match = torch.rand(M + 1), "prob must have shape"
    elif bad == "prob type":
        kw["prob"], match = [0.5] * M, "prob must be a torch.Tensor"
    elif bad == "splits sum":
        kw["m_splits"], match = [20, 1, 28], "sum to"
    elif bad == "splits entry":
        kw["m_splits"], match = [20, -1, 29], r"m_splits\[1\]"
    elif bad == "x not a tensor":
        x, match = x.tolist(), "x must be a torch.Tensor"
    else:
        kw["fuse_wgrad_accumulation"], match = True, "main_grad"
    with pytest.raises(InputError, match=match):
        srelu_mlp(x, w1, w2, **kw)


def test_dense_and_grouped_signatures_are_apart():
    x, w1, w2 = _inputs(grouped=False)
    srelu_mlp(x, w1, w2, backend="torch")
    with pytest.raises(InputError, match="m_splits"):  # the same tensors, now grouped: 2-D weights refused
        srelu_mlp(x, w1, w2, m_splits=SPLITS, backend="torch")


def test_srelu_mlp_compiles_fullgraph_with_dynamic_shapes():
    """Under torch.compile the checks are traced as before (no signature table in the graph), also
    with symbolic shapes (unhashable): fullgraph, and the same result as eager for two M."""
    torch._dynamo.reset()
    f = torch.compile(lambda a, b, c, s: srelu_mlp(a, b, c, m_splits=s, backend="torch"), fullgraph=True,
                      backend="eager", dynamic=True)
    for m in (12, 20):
        x, w1, w2 = torch.randn(m, H, dtype=torch.float64), *_inputs(dtype=torch.float64)[1:]
        splits = [5, 0, m - 5]
        assert torch.allclose(f(x, w1, w2, splits), srelu_mlp(x, w1, w2, m_splits=splits, backend="torch"))


def test_the_stubbed_grouped_step_stays_within_its_python_call_bound():
    """Counts the calls of functions defined under cute_kernels/ in one stubbed step (after
    warm-up: plans made), so a per-call cost that creeps back into the bf16 step's host path
    (a re-check, an import inside a hot function, a helper per launch) fails here."""
    package = os.path.join("cute_kernels", "")
    with stubbed_kernels():
        step = step_call(small(GROUPED))
        for _ in range(3):
            step()
        prof = cProfile.Profile()
        prof.enable()
        step()
        prof.disable()
    stats = pstats.Stats(prof).stats
    ours = {f: v[1] for f, v in stats.items() if package in f[0]}
    total = sum(ours.values())
    assert total <= MAX_PACKAGE_CALLS, sorted(ours.items(), key=lambda kv: -kv[1])[:15]


def test_the_step_hands_its_gemms_one_checked_tuple_of_splits():
    """A list m_splits becomes one tuple for the step's six GEMMs (after srelu_mlp checked the
    list): each GEMM's splits check and metadata lookup know it by identity."""
    from cute_kernels import gemm_ops

    seen = []
    real = gemm_ops._splits_metadata
    with stubbed_kernels(), mock.patch.object(gemm_ops, "_splits_metadata",
                                              lambda s, *a, **k: seen.append(s) or real(s, *a, **k)):
        step = step_call(small(GROUPED))
        step()
    assert len(seen) == 6 and type(seen[0]) is tuple and all(s is seen[0] for s in seen)


@pytest.mark.parametrize("bad", ["experts", "total", "bool entry"])
def test_a_tuple_that_passed_is_still_checked_against_another_problem(bad):
    from cute_kernels.checks import check_m_splits

    splits = (3, 0, 5)
    check_m_splits(splits, num_experts=3, m_total=8, device=None)
    check_m_splits(splits, num_experts=3, m_total=8, device=None)  # (known now)
    match = {"experts": "3 entries", "total": "sum to 8", "bool entry": r"m_splits\[1\]"}[bad]
    with pytest.raises(InputError, match=match):
        if bad == "experts":
            check_m_splits(splits, num_experts=4, m_total=8, device=None)
        elif bad == "total":
            check_m_splits(splits, num_experts=3, m_total=9, device=None)
        else:
            check_m_splits((3, False, 5), num_experts=3, m_total=8, device=None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_descriptor_workspace_stream_key_is_the_current_stream():
    """gemm_ops._current_stream_key reads torch._C's current stream without building a Stream:
    the same stream as torch.cuda.current_stream, another key on another stream."""
    from cute_kernels import gemm_ops

    dev = torch.device("cuda", torch.cuda.current_device())
    s = torch.cuda.current_stream(dev)
    assert gemm_ops._current_stream_key(dev) == (s.stream_id, s.device_index, s.device_type)
    side = torch.cuda.Stream(dev)
    with torch.cuda.stream(side):
        assert gemm_ops._current_stream_key(dev) == (side.stream_id, side.device_index, side.device_type)
    assert gemm_ops._current_stream_key(dev) != (side.stream_id, side.device_index, side.device_type)

