"""The per-expert padded column-wise FP8 quantization (fp8/grouped_tokens.py, the torch reference;
sm90/quantize_grouped.py, the kernel) on CPU: the reference equals the per-expert dense recipe
(`quantize_1x128(x_e.t())` placed at each expert's padded offset, zeros and scale 1 elsewhere) for
list and tensor splits (empty, one-token, 128 and 129-token experts, odd sizes); the block table
and padded offsets; the kernel compiles for sm_90a with the PTX the design says (16-byte loads of
x, 16-byte FP8 stores, the recipe's rounding, no local memory, no spills under ptxas); the host
wrapper's input checks name the argument."""
import pytest
import torch

from cute_kernels import InputError
from cute_kernels.fp8.grouped_tokens import (num_padded_blocks, padded_layout, quantize_cols_grouped_reference)
from cute_kernels.fp8.quantize_ops import quantize_cols_grouped, quantize_cols_grouped_ptx
from cute_kernels.fp8.recipe import quantize_1x128
from cute_kernels.inspect_ptx import find_ptxas, ptxas_info
from cute_kernels.sm90.quantize_tile import ROW_SWEEPS
from test_compile_quantize import _ops

U8 = torch.uint8
SPLITS = [[0, 1, 127, 128, 129, 0, 300], [5], [0, 0, 256], [1, 1, 1], [200, 0]]


def _x(tokens, k, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, k, generator=g) * torch.logspace(-3, 3, k)
    return (x * torch.logspace(-1, 1, tokens)[:, None]).bfloat16() if tokens else x.bfloat16()


def _check_against_dense_recipe(x, splits, qt, st, cu_padded, fmt, pow2):
    k = x.shape[1]
    cu = cu_padded.tolist()
    assert cu[0] == 0 and len(cu) == len(splits) + 1
    row = 0
    covered = torch.zeros(qt.shape[1], dtype=torch.bool)
    for e, s in enumerate(splits):
        assert cu[e + 1] - cu[e] == 128 * -(-s // 128), (e, cu)
        if s:
            rq, rs = quantize_1x128(x[row:row + s].t(), fmt, pow2=pow2)
            assert torch.equal(qt[:, cu[e]:cu[e] + s].view(U8), rq.view(U8)), f"expert {e}: values"
            assert torch.equal(st[:, cu[e] // 128:cu[e] // 128 + rs.shape[1]], rs), f"expert {e}: scales"
            covered[cu[e]:cu[e] + s] = True
        row += s
    assert (qt.view(U8)[:, ~covered] == 0).all(), "padding columns are zeros"
    held = torch.zeros(st.shape[1], dtype=torch.bool)
    held[[c // 128 for c in covered.nonzero().flatten().tolist()]] = True
    assert (st[:, ~held] == 1).all(), "blocks holding no token have scale 1"
    assert qt.shape[0] == k


@pytest.mark.parametrize("splits", SPLITS)
@pytest.mark.parametrize("as_tensor", [False, True])
def test_reference_equals_per_expert_dense_recipe(splits, as_tensor):
    tokens, k = sum(splits), 144
    x = _x(tokens, k, len(splits) + tokens)
    ms = torch.tensor(splits, dtype=torch.int32) if as_tensor else splits
    qt, st, cu = quantize_cols_grouped_reference(x, ms)
    blocks = num_padded_blocks(ms, tokens)
    assert qt.shape == (k, 128 * blocks) and st.shape == (k, blocks)
    _check_against_dense_recipe(x, splits, qt, st, cu, "e4m3", False)


@pytest.mark.parametrize("fmt,pow2", [("e5m2", False), ("e4m3", True)])
def test_reference_formats_and_pow2(fmt, pow2):
    splits = [77, 0, 131]
    x = _x(sum(splits), 256, 3)
    qt, st, cu = quantize_cols_grouped_reference(x, splits, fmt, pow2=pow2)
    _check_against_dense_recipe(x, splits, qt, st, cu, fmt, pow2)


def test_block_table():
    lay = padded_layout([0, 1, 300, 0, 128], 429, "cpu")
    # blocks: expert 1 (1 token), expert 2 (128, 128, 44 tokens), expert 4 (128 tokens)
    assert lay.num_blocks == 5
    assert lay.blocks.view(-1, 2).tolist() == [[0, 1], [1, 128], [129, 128], [257, 44], [301, 128]]
    assert lay.cu_padded.tolist() == [0, 0, 128, 512, 512, 640]
    assert lay.blocks.dtype == torch.int32 and lay.cu_padded.dtype == torch.int32
    # a tensor's splits: the upper bound of blocks, the trailing ones holding no tokens
    lt = padded_layout(torch.tensor([0, 1, 300, 0, 128]), 429, "cpu")
    assert lt.num_blocks == (429 + 127 * 5) // 128 == 8
    assert lt.blocks.view(-1, 2)[:5].tolist() == lay.blocks.view(-1, 2).tolist()
    assert (lt.blocks.view(-1, 2)[5:] == 0).all() and torch.equal(lt.cu_padded, lay.cu_padded)


def test_upper_bound_holds_for_any_splits():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        e = int(torch.randint(1, 20, (1,), generator=g))
        splits = torch.randint(0, 400, (e,), generator=g).tolist()
        assert num_padded_blocks(torch.tensor(splits), sum(splits)) >= num_padded_blocks(splits, sum(splits))


@pytest.mark.parametrize("fmt,pow2", [("e4m3", False), ("e5m2", True)])
def test_kernel_compiles_and_ptx_is_as_designed(fmt, pow2):
    ptx = quantize_cols_grouped_ptx(fmt, pow2)
    loads = _ops(ptx, "ld.global")
    # x as 16-byte vectors; six 32-bit loads of the experts' offsets (cu_rows, cu_blocks: the block's
    # expert found in the kernel, cu_padded written from cu_blocks), no block table
    assert loads.count("ld.global.v4.b32") == ROW_SWEEPS, sorted(loads)
    assert set(loads) <= {"ld.global.v4.b32", "ld.global.b32", "ld.global.s32", "ld.global.u32"}, sorted(set(loads))
    assert len(loads) == ROW_SWEEPS + 6, sorted(loads)
    stores = _ops(ptx, "st.global")
    # per thread: 2 columns x 32 FP8 bytes (column-wise), 2 scales, a cu_padded entry; no row-wise copy
    assert stores.count("st.global.v4.b32") == 4 and "st.global.v2.b32" not in stores, sorted(set(stores))
    assert len(stores) == 4 + 3, sorted(stores)
    assert _ops(ptx, "st.shared").count("st.shared.v4.b32") == ROW_SWEEPS
    assert f"cvt.rn.satfinite.{fmt}x2.f32" in ptx
    assert "rcp.rn.f32" in ptx and "rcp.approx" not in ptx and ".ftz" not in ptx and "xorsign" not in ptx
    assert "bar.sync" in ptx and ".local" not in ptx
    if find_ptxas() is not None:
        info = ptxas_info(ptx)
        assert info.spill_store_bytes == 0 and info.spill_load_bytes == 0 and info.stack_bytes == 0, info.raw[-600:]


@pytest.mark.parametrize("x,splits,match", [
    (torch.zeros(4, 128), [4], "bfloat16"),
    (torch.zeros(4, 100, dtype=torch.bfloat16), [4], "multiple of 16"),
    (torch.zeros(4, 128, dtype=torch.bfloat16), [3], "m_splits sum to 3"),
    (torch.zeros(4, 128, dtype=torch.bfloat16), [], "m_splits"),
    (torch.zeros(4, 128, dtype=torch.bfloat16), [2, -1, 3], r"m_splits\[1\]"),
    (torch.zeros(4, 128, dtype=torch.bfloat16), torch.tensor([4.0]), "m_splits dtype"),
    (torch.zeros(4, 128, dtype=torch.bfloat16), torch.tensor([[4]]), "m_splits must be"),
    (torch.zeros(4, 128, dtype=torch.bfloat16), [4], "CUDA"),
])
def test_input_errors_name_the_argument(x, splits, match):
    with pytest.raises(InputError, match=match):
        quantize_cols_grouped(x, splits)


def test_a_lists_layout_is_kept_and_a_tensors_is_not():
    a = padded_layout([3, 0, 200], 203, "cpu")
    assert padded_layout((3, 0, 200), 203, "cpu") is a, "one layout per splits values"
    assert padded_layout([3, 1, 199], 203, "cpu") is not a
    t = torch.tensor([3, 0, 200])
    assert padded_layout(t, 203, "cpu") is not padded_layout(t, 203, "cpu"), "a tensor's values may change"


@pytest.mark.parametrize("fmt,pow2", [("e4m3", False), ("e5m2", True)])
def test_dual_kernel_ptx_adds_the_row_pass_only(fmt, pow2):
    """The dual form (quantize_rows_and_cols_grouped): the same loads as the column-only kernel (x read
    once), plus the dense kernel's row pass: 8 FP8 bytes and a scale per row of the thread's 8, the
    row amax over its half-warp by shuffles."""
    ptx = quantize_cols_grouped_ptx(fmt, pow2, rows=True)
    loads = _ops(ptx, "ld.global")
    assert loads.count("ld.global.v4.b32") == ROW_SWEEPS and len(loads) == ROW_SWEEPS + 6, sorted(loads)
    stores = _ops(ptx, "st.global")
    assert stores.count("st.global.v4.b32") == 4 and stores.count("st.global.v2.b32") == ROW_SWEEPS, sorted(stores)
    assert len(stores) == 4 + ROW_SWEEPS + ROW_SWEEPS + 3, sorted(stores)
    assert ptx.count("shfl.sync.bfly") == 4 * ROW_SWEEPS
    assert f"cvt.rn.satfinite.{fmt}x2.f32" in ptx and ".local" not in ptx and "rcp.approx" not in ptx
    if find_ptxas() is not None:
        info = ptxas_info(ptx)
        assert info.spill_store_bytes == 0 and info.spill_load_bytes == 0 and info.stack_bytes == 0, info.raw[-600:]


@pytest.mark.parametrize("in_fmt", ["e4m3", "e5m2"])
def test_requantizing_kernel_ptx_reads_the_fp8_copy(in_fmt):
    """requantize_cols_grouped: x read as its FP8 copy (8-byte loads, one row scale per row of the
    thread's 8) and dequantized by the dequantization kernel's arithmetic (FP8 -> f16 -> f32, an fp32
    multiply, a round to bf16), then the column pass as the bf16 kernel's."""
    ptx = quantize_cols_grouped_ptx("e4m3", False, in_fmt=in_fmt)
    loads = _ops(ptx, "ld.global")
    assert loads.count("ld.global.v2.b32") == ROW_SWEEPS and "ld.global.v4.b32" not in loads, sorted(loads)
    assert len(loads) == ROW_SWEEPS + ROW_SWEEPS + 6, sorted(loads)
    stores = _ops(ptx, "st.global")
    assert stores.count("st.global.v4.b32") == 4 and len(stores) == 4 + 3, sorted(stores)
    for op in (f"cvt.rn.f16x2.{in_fmt}x2", "cvt.f32.f16", "cvt.rn.bf16x2.f32", "cvt.rn.satfinite.e4m3x2.f32"):
        assert op in ptx, op
    assert ".local" not in ptx and ".ftz" not in ptx and "fma.rn.f32" not in ptx
    if find_ptxas() is not None:
        info = ptxas_info(ptx)
        assert info.spill_store_bytes == 0 and info.spill_load_bytes == 0 and info.stack_bytes == 0, info.raw[-600:]


@pytest.mark.parametrize("args,match", [
    ((torch.zeros(4, 128, dtype=torch.bfloat16), torch.ones(4, 1), [4]), "xq"),
    ((torch.zeros(4, 100, dtype=torch.float8_e4m3fn), torch.ones(4, 1), [4]), "multiple of 16"),
    ((torch.zeros(4, 128, dtype=torch.float8_e4m3fn), torch.ones(4, 2), [4]), "xs"),
    ((torch.zeros(0, 128, dtype=torch.float8_e4m3fn), torch.ones(0, 1), [0]), "empty"),
    ((torch.zeros(4, 128, dtype=torch.float8_e4m3fn), torch.ones(4, 1), [4]), "CUDA"),
])
def test_requantize_input_errors_name_the_argument(args, match):
    from cute_kernels.fp8.quantize_ops import requantize_cols_grouped

    with pytest.raises(InputError, match=match):
        requantize_cols_grouped(*args)
