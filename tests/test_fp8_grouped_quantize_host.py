"""The host side of the per-expert padded column-wise FP8 quantization (fp8/quantize_ops.
quantize_cols_grouped) on CPU with its kernel stubbed (benchmarks.bench_host_path.stubbed_kernels):
with GPU-tensor splits (a CPU int tensor stands in) it reads no value of any tensor on the host
(no .item() / .tolist() / .cpu() / bool() / int(): no host sync, so the FP8 step can run ahead
of the GPU and be captured in a CUDA graph) and dispatches no torch op but its three outputs'
allocations: the kernel finds each 128-token block's expert itself from the experts' offsets
that host_args.splits_metadata keeps for the step's grouped GEMMs.  Before (2026-12-03 22:33,
H200) the block table took ~30 torch ops per quantization, ~0.25 ms of host time each, which
made the grouped FP8 weight gradient with its two quantizations 0.73 ms against 0.24 for its
GEMM alone.  The kernel's values are the GPU tests' (tests/test_fp8_grouped_quantize_gpu.py)."""
import contextlib
from unittest import mock

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.bench_host_path import stubbed_kernels
from cute_kernels import gemm_ops, host_args, selfcheck
from cute_kernels.fp8 import Fp8Recipe, quantize_ops
from cute_kernels.fp8.grouped_tokens import num_padded_blocks

SPLITS = [0, 130, 1, 141]  # an empty and a one-token expert; 272 tokens
# what reads a tensor's values on the host (a device-to-host copy and a wait on the GPU)
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")
SYNCING_OPS = ("aten._local_scalar_dense", "aten.equal", "aten.is_nonzero", "aten.nonzero", "aten.masked_select")


class _Ops(TorchDispatchMode):
    """The torch ops dispatched inside it, by name."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # (a dtype view of an FP8 tensor dispatches a detach of its result under a dispatch mode)
        if not (func is torch.ops.aten.detach.default and self.names[-1:] == ["aten.view.dtype"]):
            self.names.append(str(func))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _no_host_reads():
    """Any read of a tensor's values on the host raises."""
    def refuse(name):
        def read(*args, **kwargs):
            raise AssertionError(f"Tensor.{name} read a tensor's values on the host")
        return read

    with contextlib.ExitStack() as stack:
        for name in HOST_READS:
            stack.enter_context(mock.patch.object(torch.Tensor, name, refuse(name)))
        yield


@pytest.fixture
def launches():
    """The stubbed kernel path; yields the grouped quantization kernel's launches (their arguments)."""
    calls = []

    def cached(key, compile_fn):
        assert key[0] == "cols_grouped", key
        return lambda *args: calls.append(args)

    with stubbed_kernels(), mock.patch.object(selfcheck, "is_verified", lambda *a: True), \
            mock.patch.object(gemm_ops, "_selfchecked", set()), mock.patch.object(quantize_ops, "_cached", cached):
        yield calls


def _x(tokens, k):
    return torch.empty(tokens, k, dtype=torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_tensor_splits_no_host_read_and_no_torch_op_but_the_outputs(launches, dtype):
    splits = torch.tensor(SPLITS, dtype=dtype)
    x = _x(272, 144)
    with _no_host_reads():
        quantize_ops.quantize_cols_grouped(x, splits)  # the splits' offsets computed (on the device) and kept
        with _Ops() as ops:
            qt, st, cu_padded = quantize_ops.quantize_cols_grouped(x, splits, "e5m2", pow2=True)
    assert not set(SYNCING_OPS) & set(ops.names), ops.names
    # qt, its scales (column-major) and cu_padded allocated, qt viewed as bytes for the launch: nothing else
    assert sorted(ops.names) == sorted(["aten.empty.memory_format", "aten.empty_strided.default",
                                        "aten.empty.memory_format", "aten.view.dtype"]), ops.names
    # the grid: every 128-token block of the upper bound on the copy's blocks for a tensor's splits
    blocks = num_padded_blocks(splits, 272)
    assert blocks == (272 + 127 * 4) // 128 == 6
    assert qt.shape == (144, 128 * blocks) and st.shape == (144, blocks) and st.stride() == (1, 144)
    assert cu_padded.shape == (5,) and cu_padded.dtype == torch.int32
    # the launch: x, the experts' row and 128-token block offsets kept for the step's grouped GEMMs
    # (the same tensors), the outputs
    x_arg, cu_rows, cu_blocks, qt_arg, st_arg, cu_arg = launches[-1]
    kept_rows, kept_blocks = host_args.splits_metadata(splits, 128, x.device)
    assert x_arg is x and cu_rows is kept_rows and cu_blocks is kept_blocks
    assert cu_rows.tolist() == [0, 0, 130, 131, 272] and cu_blocks.tolist() == [0, 0, 2, 3, 5]
    assert qt_arg.dtype == torch.uint8 and qt_arg.data_ptr() == qt.data_ptr() and st_arg is st and cu_arg is cu_padded


def test_list_splits_use_the_kept_upload(launches):
    x = _x(272, 144)
    quantize_ops.quantize_cols_grouped(x, SPLITS)
    with _Ops() as ops:
        qt, st, _ = quantize_ops.quantize_cols_grouped(x, tuple(SPLITS))
    assert len(ops.names) == 4, ops.names
    assert qt.shape == (144, 128 * 5) and st.shape == (144, 5), "a list's exact block count"
    _, cu_rows, cu_blocks, *_ = launches[-1]
    assert (cu_rows, cu_blocks) == host_args.splits_metadata(SPLITS, 128, x.device)


def test_grouped_fp8_weight_gradient_dispatches_only_its_allocations(launches):
    """fp8_grouped_weight_grad_of with tensor splits: two quantizations and the K-grouped GEMM, whose
    cu_padded is the first quantization's; no host read, a handful of torch ops (allocations, views)."""
    from cute_kernels.fp8.wgrad_ops import fp8_grouped_weight_grad_of

    splits = torch.tensor(SPLITS, dtype=torch.int32)
    g, act = _x(272, 208), _x(272, 144)
    runs = []
    with mock.patch.object(gemm_ops, "_run", lambda key, args: runs.append(args)), _no_host_reads():
        fp8_grouped_weight_grad_of(g, act, splits, Fp8Recipe(wgrad="fp8"))
        with _Ops() as ops:
            dw = fp8_grouped_weight_grad_of(g, act, splits, Fp8Recipe(wgrad="fp8"))
    assert dw.shape == (4, 208, 144)
    assert not set(SYNCING_OPS) & set(ops.names), ops.names
    assert len(ops.names) <= 15, ops.names  # (each quantization's block table alone was ~30 before)
    assert len(launches) == 4 and runs[-1].cu_rows is launches[-2][5]


def test_the_dual_quantization_issues_no_torch_op_but_its_outputs(launches):
    """quantize_rows_and_cols_grouped: the row-wise copy and the padded column-wise copy from one
    launch (one read of x); five allocations and the two byte views, no host read."""
    splits = torch.tensor(SPLITS, dtype=torch.int64)
    x = _x(272, 144)
    with _no_host_reads():
        quantize_ops.quantize_rows_and_cols_grouped(x, splits)
        with _Ops() as ops:
            q, s, qt, st, cu_padded = quantize_ops.quantize_rows_and_cols_grouped(x, splits)
    assert sorted(ops.names) == sorted(["aten.empty.memory_format"] * 3 + ["aten.empty_strided.default"] * 2
                                       + ["aten.view.dtype"] * 2), ops.names
    assert q.shape == (272, 144) and s.shape == (272, 2) and s.stride() == (1, 272)
    assert qt.shape == (144, 128 * 6) and st.shape == (144, 6) and cu_padded.shape == (5,)
    x_arg, cu_rows, cu_blocks, q_arg, s_arg, qt_arg, st_arg, cu_arg = launches[-1]
    assert (cu_rows, cu_blocks) == host_args.splits_metadata(splits, 128, x.device)
    assert q_arg.data_ptr() == q.data_ptr() and s_arg is s and qt_arg.data_ptr() == qt.data_ptr() and st_arg is st


def test_the_requantization_issues_no_torch_op_but_its_outputs(launches):
    """requantize_cols_grouped (x's padded column-wise copy from its saved FP8 copy): three allocations
    and the two byte views, the FP8 copy and its scales handed to the kernel as they are."""
    splits = torch.tensor(SPLITS, dtype=torch.int32)
    xq = torch.empty(272, 144, dtype=torch.float8_e4m3fn)
    xs = torch.empty_strided((272, 2), (1, 272), dtype=torch.float32)  # column-major, as the step saves it
    with _no_host_reads():
        quantize_ops.requantize_cols_grouped(xq, xs, splits)
        with _Ops() as ops:
            qt, st, cu_padded = quantize_ops.requantize_cols_grouped(xq, xs, splits)
    assert sorted(ops.names) == sorted(["aten.empty.memory_format"] * 2 + ["aten.empty_strided.default"]
                                       + ["aten.view.dtype"] * 2), ops.names
    assert qt.shape == (144, 128 * 6) and st.shape == (144, 6) and cu_padded.shape == (5,)
    xq_arg, xs_arg, cu_rows, cu_blocks, qt_arg, st_arg, cu_arg = launches[-1]
    assert xq_arg.dtype == torch.uint8 and xq_arg.data_ptr() == xq.data_ptr() and xs_arg is xs
    assert (cu_rows, cu_blocks) == host_args.splits_metadata(splits, 128, xq.device)


def test_the_grouped_fp8_wgrad_step_reads_nothing_on_the_host(monkeypatch):
    """The FP8 step (fp8_srelu_mlp, kernel path stubbed) with CUTE_KERNELS_FP8_GROUPED_WGRAD=1 and GPU-tensor
    splits: no tensor value read on the host in forward and backward (no sync: the step runs ahead of
    the GPU), four grouped quantizations (dy and dpreact by the dual kernel, the postact from bf16, x
    from its saved FP8 copy), no dequantized x, and dW1/dW2 written in the weights' bf16 by the
    K-grouped kernel's epilogue (no fp32 dW cast by torch)."""
    from benchmarks.bench_host_path import step_inputs
    from cute_kernels.fp8.mlp import fp8_srelu_mlp

    monkeypatch.setenv("CUTE_KERNELS_FP8_GROUPED_WGRAD", "1")
    shape = {"name": "small grouped fp8", "m": 272, "h": 256, "f": 208, "e": 4, "splits": SPLITS}
    kernels = []

    def cached(key, compile_fn):
        return lambda *args: kernels.append(key[0] if key[0] != "cols_grouped" else key[3:])

    with stubbed_kernels() as launches, mock.patch.object(selfcheck, "is_verified", lambda *a: True), \
            mock.patch.object(gemm_ops, "_selfchecked", set()), mock.patch.object(quantize_ops, "_cached", cached):
        x, w1, w2, dy, _ = step_inputs(shape)
        splits = torch.tensor(SPLITS, dtype=torch.int32)
        for _ in range(2):
            kernels.clear()
            with _no_host_reads(), _Ops() as ops:
                fp8_srelu_mlp(x, w1, w2, m_splits=splits, recipe=Fp8Recipe(wgrad="fp8"), backend="cute").backward(dy)
            assert not set(SYNCING_OPS) & set(ops.names), ops.names
            assert "aten._to_copy.default" not in ops.names, "no dtype cast (of dW or anything else)"
            assert kernels == [(True, None), (False, None), (True, None), (False, "e4m3")], kernels
    grouped_k = [key for key, _ in launches if key.grouped_k]
    assert len(grouped_k) == 4 and {k.out_dtype for k in grouped_k} == {"bfloat16"}, grouped_k
