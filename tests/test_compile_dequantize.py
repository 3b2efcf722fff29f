"""The FP8 -> bf16 dequantization kernel (cute_kernels/sm90/dequantize.py) compiles for sm_90a
without a GPU and its PTX holds what the design says: 8-byte FP8 loads and 16-byte bf16 stores,
exact FP8 -> f16 -> f32 converts, an fp32 multiply by the row's scale (not fused, no flush to
zero) and one round-to-nearest bf16 convert (bitwise the torch form), no local memory, no spills.
The FP8 step takes it only when switched on (CUTE_KERNELS_FP8_DEQUANT_KERNEL=1); input errors."""
import re

import pytest
import torch

from cute_kernels import InputError
from cute_kernels.fp8.quantize_ops import dequantize_kernel_enabled, dequantize_ptx, dequantize_to_bf16
from cute_kernels.fp8.recipe import quantize_1x128
from cute_kernels.inspect_ptx import find_ptxas, ptxas_info
from cute_kernels.sm90.quantize_tile import ROW_SWEEPS


def _ops(ptx: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^\s*(?:@!?%p\d+\s+)?([a-z][\w.]*)", ptx, re.M)]


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_dequantize_kernel_ptx_is_as_designed(fmt):
    ptx = dequantize_ptx(fmt)
    ops = _ops(ptx)
    assert ops.count("ld.global.v2.b32") == ROW_SWEEPS, "8 FP8 values per row as one 8-byte load"
    assert ops.count("st.global.v4.b32") == ROW_SWEEPS, "8 bf16 values per row as one 16-byte store"
    assert ops.count("ld.global.b32") == ROW_SWEEPS, "one scale per row"
    assert ops.count(f"cvt.rn.f16x2.{fmt}x2") == 4 * ROW_SWEEPS and ops.count("cvt.f32.f16") == 8 * ROW_SWEEPS
    assert ops.count("mul.f32") == 8 * ROW_SWEEPS and "fma" not in " ".join(ops)
    assert ops.count("cvt.rn.bf16x2.f32") == 4 * ROW_SWEEPS
    assert ".ftz" not in ptx and ".local" not in ptx
    if find_ptxas() is not None:
        info = ptxas_info(ptx)
        assert info.spill_store_bytes == 0 and info.spill_load_bytes == 0 and info.stack_bytes == 0


def test_switched_on_by_default(monkeypatch):
    monkeypatch.delenv("CUTE_KERNELS_FP8_DEQUANT_KERNEL", raising=False)
    assert dequantize_kernel_enabled()
    monkeypatch.setenv("CUTE_KERNELS_FP8_DEQUANT_KERNEL", "0")
    assert not dequantize_kernel_enabled()


@pytest.mark.parametrize("change,match", [
    (dict(q=torch.zeros(4, 128)), "float8"),
    (dict(s=torch.zeros(4, 2)), "s must be float32 of shape"),
    (dict(q=torch.zeros(4, 136).to(torch.float8_e4m3fn)[:, :120]), "multiple of 16"),
    ({}, "CUDA"),
])
def test_input_errors(change, match):
    q, s = quantize_1x128(torch.randn(4, 128))
    args = dict(q=q, s=s)
    args.update(change)
    with pytest.raises(InputError, match=match):
        dequantize_to_bf16(args["q"], args["s"])
