"""Launch plans (cute_kernels.launch_plan), on CPU with the kernels stubbed
(benchmarks.bench_host_path.stubbed_kernels): a repeated call with the same metadata does
no key build, config lookup, operand check, self-check gate or compile lookup, launches the
same kernel with the same arguments, and still checks what its metadata does not fix."""
import contextlib
import dataclasses
from unittest import mock

import pytest
import torch

from benchmarks.bench_host_path import stubbed_kernels
from cute_kernels import InputError, checks, config_lookup, default_config, gemm_ops, launch_plan, selfcheck
from cute_kernels.gemm_base.launch_args import GemmArgs

REAL_CHECK_CUDA = checks.check_cuda  # (the stubs replace it)

M, H, F, E = 272, 136, 200, 4  # not tile multiples
SPLITS = [0, 130, 1, 141]


def _operands(grouped: bool):
    x = torch.randn(M, H).bfloat16()
    w1 = torch.randn(*((E, F, H) if grouped else (F, H))).bfloat16()
    w2 = torch.randn(*((E, H, F) if grouped else (H, F))).bfloat16()
    return x, w1, w2, torch.randn(M, H).bfloat16(), torch.randn(M, F).bfloat16()


def _calls(grouped: bool, tensor_splits: bool = False):
    """Each entry point once, on fresh tensors of fixed metadata."""
    splits = (torch.tensor(SPLITS) if tensor_splits else list(SPLITS)) if grouped else None
    x, w1, w2, dy, pre = _operands(grouped)
    prob = torch.rand(M)
    gemm_ops.fc1_srelu(x, w1, m_splits=splits, prob=prob)
    gemm_ops.fc2(pre, w2, m_splits=splits)
    gemm_ops.fc2_dgrad_dsrelu(dy, w2, pre, m_splits=splits, prob=prob, store_postact=True)
    gemm_ops.fc2(pre, w1.transpose(-2, -1), m_splits=splits)
    gemm_ops.weight_grad(dy, pre, m_splits=splits)
    main_grad = torch.zeros(*((E, H, F) if grouped else (H, F)))
    gemm_ops.weight_grad(dy, pre, m_splits=splits, out=main_grad, accumulate=True)


class Counts:
    """Calls of the launch path's resolution steps (each wrapped, still run).  Patched with
    mock.patch (undone before the stubs are, in reverse order), not monkeypatch (undone after
    them: it would put the stubs back)."""

    STEPS = [(gemm_ops, "_kernel_key"), (gemm_ops, "_wgrad_key"), (gemm_ops, "lookup_config"),
             (gemm_ops, "device_arch"), (gemm_ops, "get_compiled"), (gemm_ops, "_max_clusters_arg"),
             (gemm_ops, "EpilogueSpec"), (gemm_ops, "_checked_config"), (checks, "check_gemm_operands"),
             (checks, "check_matrix"), (checks, "check_cuda"), (selfcheck, "before_first_launch")]

    def __init__(self, stack):
        self.mocks = {}
        for module, name in self.STEPS:
            m = mock.MagicMock(wraps=getattr(module, name))
            stack.enter_context(mock.patch.object(module, name, m))
            self.mocks[name] = m

    def snapshot(self) -> dict:
        return {name: m.call_count for name, m in self.mocks.items()}


@pytest.fixture
def stubbed():
    """The stubbed kernels' launches; every key meets the self-check gate once (and passes)."""
    with stubbed_kernels() as launches, mock.patch.object(gemm_ops, "_selfchecked", set()), \
            mock.patch.object(selfcheck, "is_verified", lambda arch, variant, table: True):
        yield launches


@pytest.fixture
def patches(stubbed):
    """A test's own patches, undone before the stubs are."""
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.mark.parametrize("grouped,tensor_splits", [(False, False), (True, False), (True, True)])
def test_a_repeated_call_resolves_nothing_again(stubbed, patches, grouped, tensor_splits):
    counts = Counts(patches)
    _calls(grouped, tensor_splits)
    first = counts.snapshot()
    first_launches = list(stubbed)
    assert len(first_launches) == 6
    # the first call of each signature resolved its key, ran the checks and met the gate once per key
    assert first["_kernel_key"] == 4 and first["_wgrad_key"] == 2 and first["check_gemm_operands"] == 6
    assert first["get_compiled"] == first["before_first_launch"] == len({k for k, _ in first_launches})
    stubbed.clear()
    _calls(grouped, tensor_splits)
    assert counts.snapshot() == first, "the second identical call did resolution work"
    assert stubbed == first_launches  # the same kernels, as many arguments each


def test_planned_and_unplanned_launches_pass_the_same_arguments(stubbed, patches):
    """The kept plan hands the kernel what a launch resolving everything on the call (`_run`,
    the self-check's path) does: here a grouped weight gradient, with its descriptor workspace."""
    seen = []
    patches.enter_context(mock.patch.object(gemm_ops, "get_compiled",
                                                    lambda key: (lambda *args: seen.append((key, args)))))
    x, w1, w2, dy, pre = _operands(True)
    for _ in range(2):
        gemm_ops.weight_grad(dy, pre, m_splits=list(SPLITS))
    key, planned = seen[-1]
    assert key.grouped_k and planned[-1] is not None
    seen.clear()
    gemm_ops._run(key, GemmArgs(*planned[:-1])._replace(desc_ws=None))
    ((key_run, unplanned),) = seen
    assert key_run == key and len(unplanned) == len(planned)
    assert all(p is q or p == q for p, q in zip(planned, unplanned))


def test_what_metadata_does_not_fix_is_checked_on_every_call(stubbed):
    x, w1, w2, dy, pre = _operands(True)
    gemm_ops.fc1_srelu(x, w1, m_splits=list(SPLITS))
    assert launch_plan.size() == 1
    buf = torch.empty(M * H + 8).bfloat16()
    shifted = buf[1:M * H + 1].view(M, H)  # same shape, strides and dtype; pointer 2 bytes off
    shifted.copy_(x)
    with pytest.raises(InputError, match="x data pointer is not 16-byte aligned"):
        gemm_ops.fc1_srelu(shifted, w1, m_splits=list(SPLITS))
    w1_shifted = torch.empty(w1.numel() + 8).bfloat16()[1:w1.numel() + 1].view(w1.shape)  # the second operand's
    with pytest.raises(InputError, match="w1 data pointer is not 16-byte aligned"):
        gemm_ops.fc1_srelu(x, w1_shifted, m_splits=list(SPLITS))
    with pytest.raises(InputError, match="m_splits sum to"):
        gemm_ops.fc1_srelu(x, w1, m_splits=[1, 2, 3, 4])
    with pytest.raises(InputError, match="prob must have shape"):
        gemm_ops.fc1_srelu(x, w1, m_splits=list(SPLITS), prob=torch.rand(M + 1))
    with pytest.raises(InputError, match=r"out\[1\] \(postact\) must have shape"):
        gemm_ops.fc1_srelu(x, w1, m_splits=list(SPLITS), out=(None, torch.empty(M, F + 8).bfloat16()))


def test_a_config_equal_to_a_planned_one_but_wrongly_typed_is_still_refused(stubbed):
    x, w1, *_ = _operands(False)
    cfg = default_config(M, F, H)
    gemm_ops.fc2(x, w1, config=cfg)
    bad = dataclasses.replace(cfg, tile_m=float(cfg.tile_m))  # == cfg and hashes like it
    assert bad == cfg and hash(bad) == hash(cfg)
    with pytest.raises(InputError, match="tile_m must be an int"):
        gemm_ops.fc2(x, w1, config=bad)


def test_clear_cache_drops_the_plans(stubbed):
    x, w1, *_ = _operands(False)
    gemm_ops.fc2(x, w1)
    assert launch_plan.size() == 1
    config_lookup.clear_cache()
    assert launch_plan.size() == 0


def test_a_failed_check_makes_no_plan(stubbed, patches):
    x, w1, *_ = _operands(False)
    with pytest.raises(InputError, match="w2 has K=128"):
        gemm_ops.fc2(x, w1[:, :128].contiguous())
    patches.enter_context(mock.patch.object(checks, "check_cuda", REAL_CHECK_CUDA))
    with pytest.raises(InputError, match="h is a CPU tensor"):
        gemm_ops.fc2(x, w1)
    assert launch_plan.size() == 0


def test_host_path_benchmark_runs_on_cpu(tmp_path, capsys):
    from benchmarks import bench_host_path

    out = tmp_path / "host.md"
    assert bench_host_path.main(["--reps", "1", "--out", str(out)]) == 0
    text = out.read_text()
    for what in ("fc1_srelu", "weight_grad", "srelu_mlp step", "tensor splits", "list splits", "dense 8192x4096"):
        assert what in text
    assert launch_plan.size() == 0  # the stubs' plans are dropped on exit


@pytest.mark.parametrize("offset", [0, 3])
def test_transposed_operand_views_are_the_views_of_the_transposes(offset):
    """host_args.as_mkl_t / as_nkl_t (one torch op each) give the kernel exactly the view that
    as_mkl / as_nkl of the transposed operand gave (two ops): sizes, strides, storage offset."""
    from cute_kernels.host_args import as_mkl, as_mkl_t, as_nkl, as_nkl_t

    def same(p, q):
        return (p.shape, p.stride(), p.storage_offset(), p.data_ptr()) == \
            (q.shape, q.stride(), q.storage_offset(), q.data_ptr()) and torch.equal(p, q)

    base = torch.randn(3 * 37 * 24 + offset)[offset:]
    row_major = base[:37 * 24].view(37, 24)[1:, :20]  # (36, 20), strides (24, 1), not at the storage start
    col_major = base[:37 * 24].view(24, 37).t()[:, 2:]  # (37, 22), strides (1, 37)
    grouped = base.view(3, 37, 24)[:, 1:, :16]  # (3, 36, 16)
    for t in (row_major, col_major):
        assert same(as_mkl_t(t), as_mkl(t.t()))
        assert same(as_nkl_t(t), as_nkl(t.transpose(-2, -1)))
    assert same(as_nkl_t(grouped), as_nkl(grouped.transpose(-2, -1)))
    assert same(as_nkl_t(grouped.transpose(1, 2)), as_nkl(grouped))


# The torch ops one srelu_mlp step (forward and backward, stubbed kernels) dispatches, pinned:
# 7 outputs (preact, postact, y, dpreact, dx, dw1, dw2), autograd's 3 detaches (the leaves' gradients)
# and the kernels' operand views: 14 (M, K, 1) views of the activations and 6 views of the weights and
# weight gradients (grouped: (N, K, E) permutes, dense: (N, K, 1) as_strided).  Issue 27: 33 ops per
# step before (also w1's transpose for the FC1 dgrad, the fused dgrad's 2 empty stand-ins), 30 after.
# Lower these when the step makes fewer.
# With CUTE_KERNELS_FLAT_ARGS=1 the kernels take the tensors as they are stored (KernelKey.flat_args):
# no (M, K, 1) view and no (N, K, E) / (M, N, E) permute, only the outputs and autograd's own.
STEP_OPS = {
    "grouped": {"aten::empty": 7, "aten::as_strided": 14, "aten::permute": 6, "aten::detach": 3},
    "dense": {"aten::empty": 7, "aten::as_strided": 20, "aten::detach": 3},
    "grouped-flat": {"aten::empty": 7, "aten::detach": 3},
    "dense-flat": {"aten::empty": 7, "aten::detach": 3},
}


@pytest.mark.parametrize("kind", sorted(STEP_OPS))
def test_the_step_issues_no_avoidable_torch_ops(kind, monkeypatch):
    """The torch ops of one srelu_mlp step, counted by torch.profiler (exact on any machine): the
    outputs, the activations' kernel views and autograd's own, nothing else (no per-launch
    indexing of the splits metadata, no transposes made only to view them again, no empty
    stand-ins).  "-flat": the flat-argument kernels (CUTE_KERNELS_FLAT_ARGS=1), no views."""
    from benchmarks.bench_host_path import step_call
    from benchmarks.op_profile import profile_step_ops

    if kind.endswith("-flat"):
        monkeypatch.setenv(gemm_ops.FLAT_ARGS_ENV, "1")
    else:
        monkeypatch.delenv(gemm_ops.FLAT_ARGS_ENV, raising=False)
    shape = {"name": f"small {kind}", "m": M, "h": H, "f": F, "e": E if kind.startswith("grouped") else 0}
    with stubbed_kernels(), mock.patch.object(selfcheck, "is_verified", lambda arch, variant, table: True), \
            mock.patch.object(gemm_ops, "_selfchecked", set()):
        summary = profile_step_ops(step_call(shape), steps=2, warmup=2, cuda=False)
    ops = {name: n for name, n, _, _ in summary["torch_ops"]}
    assert ops == STEP_OPS[kind]
    assert summary["counts"]["torch_ops"] == sum(STEP_OPS[kind].values())


def _tvm_ffi_compiled(calls, fn, pointer_args=False):
    """A stand-in of the DSL's TVM-FFI compiled kernel: a tvm_ffi.Function subclass whose Python
    __call__ checks per call what is fixed once compiled, then calls the base function."""
    tvm_ffi = pytest.importorskip("tvm_ffi")
    from types import SimpleNamespace

    class Compiled(tvm_ffi.Function):
        def __init__(self, inner):
            self.__move_handle_from__(inner)
            self.execution_args = SimpleNamespace(has_pointer_address_arg_specs=pointer_args)

        def __call__(self, *args):
            calls.append("wrapper")
            return tvm_ffi.Function.__call__(self, *args)

    return Compiled(tvm_ffi.convert(fn))


def test_direct_launcher_skips_only_the_python_wrapper():
    from cute_kernels.compile import direct_launcher

    calls = []
    compiled = _tvm_ffi_compiled(calls, lambda *a: sum(a))
    direct = direct_launcher(compiled)
    assert direct(1, 2, 3) == 6 and calls == []  # the same function, without its Python frame
    assert compiled(1, 2) == 3 and calls == ["wrapper"]
    converting = _tvm_ffi_compiled(calls, lambda *a: 0, pointer_args=True)  # its wrapper converts arguments
    assert direct_launcher(converting) is converting

    def plain(*args):
        return None

    assert direct_launcher(plain) is plain


def test_direct_launch_switch_keeps_the_dsl_callable(monkeypatch):
    """CUTE_KERNELS_DIRECT_LAUNCH=0 (bench_host_overhead's in-process A/B): the DSL's own callable."""
    from cute_kernels.compile import DIRECT_LAUNCH_ENV, direct_launcher

    calls = []
    compiled = _tvm_ffi_compiled(calls, lambda *a: sum(a))
    monkeypatch.setenv(DIRECT_LAUNCH_ENV, "0")
    kept = direct_launcher(compiled)
    assert kept is compiled and kept(1, 2) == 3 and calls == ["wrapper"]
    monkeypatch.setenv(DIRECT_LAUNCH_ENV, "1")
    assert direct_launcher(compiled) is not compiled


def test_a_plan_launches_a_tvm_ffi_kernel_through_the_base_call(stubbed, patches):
    calls, launched = [], []
    compiled = _tvm_ffi_compiled(calls, lambda *args: launched.append(len(args)))
    patches.enter_context(mock.patch.object(gemm_ops, "get_compiled", lambda key: compiled))
    x, w1, *_ = _operands(True)
    for _ in range(2):
        gemm_ops.fc1_srelu(x, w1, m_splits=list(SPLITS))
    assert calls == [] and launched == [len(GemmArgs._fields) + 1] * 2
