"""The dual FP8 quantization kernel (cute_kernels/sm90/quantize.py) compiles for sm_90a without a
GPU and its PTX holds what the design says: 16-byte global loads of x (no narrower ones), 8-byte
row-wise and 16-byte column-wise FP8 stores, 16-byte shared stores of the staged tile and 32-bit
shared loads of column pairs, saturating FP8 converts, a correctly rounded reciprocal (bitwise
agreement with the recipe), no xorsign max, no local memory; ptxas (where installed) reports no
spills.  And the host wrapper's input checks (CPU)."""
import re

import pytest
import torch

from cute_kernels import InputError
from cute_kernels.fp8.quantize_ops import quantize_ptx, quantize_rows_and_cols
from cute_kernels.inspect_ptx import find_ptxas, ptxas_info
from cute_kernels.sm90.quantize import Sm90QuantizeBoth
from cute_kernels.sm90.quantize_tile import ROW_SWEEPS


def _ops(ptx: str, prefix: str) -> list[str]:
    """The opcodes (up to the first operand) of the instructions starting with `prefix`."""
    return [m.group(1) for m in re.finditer(rf"^\s*(?:@%p\d+\s+)?({re.escape(prefix)}[\w.]*)\s", ptx, re.M)]


@pytest.mark.parametrize("fmt,pow2", [("e4m3", False), ("e5m2", True)])
def test_quantize_kernel_compiles_and_ptx_is_as_designed(fmt, pow2):
    ptx = quantize_ptx(fmt, pow2)
    loads = _ops(ptx, "ld.global")
    assert loads == ["ld.global.v4.b32"] * ROW_SWEEPS, f"x read as 16-byte vectors only, got {sorted(set(loads))}"
    stores = _ops(ptx, "st.global")
    # per thread: 8 rows x 8 FP8 bytes (row-wise), 2 columns x 32 bytes (column-wise), scales (b32)
    assert stores.count("st.global.v2.b32") == ROW_SWEEPS, sorted(set(stores))
    assert stores.count("st.global.v4.b32") == 4, sorted(set(stores))
    assert set(stores) <= {"st.global.v2.b32", "st.global.v4.b32", "st.global.b32"}, sorted(set(stores))
    assert _ops(ptx, "st.shared").count("st.shared.v4.b32") == ROW_SWEEPS, "the tile staged with 16-byte stores"
    col_loads = _ops(ptx, "ld.shared")
    assert col_loads.count("ld.shared.v2.b16") + col_loads.count("ld.shared.b32") >= 32, sorted(set(col_loads))
    assert not [op for op in col_loads if op in ("ld.shared.b16", "ld.shared.u16")], "column pairs read as 32 bits"
    assert f"cvt.rn.satfinite.{fmt}x2.f32" in ptx
    assert "rcp.rn.f32" in ptx and "rcp.approx" not in ptx and "div.approx" not in ptx and "div.full" not in ptx
    assert ".ftz" not in ptx, "flush-to-zero arithmetic would part from the recipe on tiny scales"
    assert "shfl.sync.bfly" in ptx and "bar.sync" in ptx
    assert "xorsign" not in ptx
    assert ".local" not in ptx
    if find_ptxas() is not None:
        info = ptxas_info(ptx)
        assert info.spill_store_bytes == 0 and info.spill_load_bytes == 0, info.raw[-600:]
        assert info.stack_bytes == 0, info.raw[-600:]


def test_quantize_kernel_rejects_unknown_format():
    with pytest.raises(ValueError, match="fmt"):
        Sm90QuantizeBoth("e3m4")


@pytest.mark.parametrize("x,fmt,match", [
    (torch.zeros(4, 128), "e4m3", "bfloat16"),
    (torch.zeros(4, 136, dtype=torch.bfloat16)[:, :100], "e4m3", "multiple of 16"),
    (torch.zeros(0, 128, dtype=torch.bfloat16), "e4m3", "empty"),
    (torch.zeros(128, dtype=torch.bfloat16), "e4m3", "2-D"),
    (torch.zeros(256, 4, dtype=torch.bfloat16).t(), "e4m3", "row-major"),
    (torch.zeros(4, 128, dtype=torch.bfloat16), "e2m1", "fmt"),
    (torch.zeros(4, 128, dtype=torch.bfloat16), "e4m3", "CUDA"),
])
def test_quantize_rows_and_cols_input_errors(x, fmt, match):
    with pytest.raises(InputError, match=match):
        quantize_rows_and_cols(x, fmt)


@pytest.mark.parametrize("fmt,pow2", [("e4m3", False), ("e5m2", True)])
def test_rows_only_form_has_no_column_pass(fmt, pow2):
    """`cols=False`: the same row pass (16-byte loads, 8-byte FP8 stores, one scale per row), no
    shared memory, no barrier, no column-wise stores."""
    ptx = quantize_ptx(fmt, pow2, cols=False)
    assert _ops(ptx, "ld.global") == ["ld.global.v4.b32"] * ROW_SWEEPS
    stores = _ops(ptx, "st.global")
    assert stores.count("st.global.v2.b32") == ROW_SWEEPS and "st.global.v4.b32" not in stores, sorted(set(stores))
    assert not _ops(ptx, "st.shared") and not _ops(ptx, "ld.shared") and "bar.sync" not in ptx
    assert f"cvt.rn.satfinite.{fmt}x2.f32" in ptx and "rcp.rn.f32" in ptx and ".ftz" not in ptx
    if find_ptxas() is not None:
        info = ptxas_info(ptx)
        assert info.spill_store_bytes == 0 and info.spill_load_bytes == 0


def test_rows_only_switch_is_on_by_default(monkeypatch):
    from cute_kernels.fp8.quantize_ops import rows_only_kernel_enabled

    monkeypatch.delenv("CUTE_KERNELS_FP8_ROWS_ONLY", raising=False)
    assert rows_only_kernel_enabled()
    monkeypatch.setenv("CUTE_KERNELS_FP8_ROWS_ONLY", "0")
    assert not rows_only_kernel_enabled()
