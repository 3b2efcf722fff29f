"""The FP8 weight quantization kernel (cute_kernels/sm90/quantize_weight.py: 128x128 blocks, W and
W^T in one pass) compiles for sm_90a without a GPU and its PTX holds what the design says:
16-byte global loads of w only, 8-byte row-wise and 16-byte column-wise FP8 stores, the block's
amax over the warp (shuffles) and the warps (a barrier), saturating FP8 converts, a correctly
rounded reciprocal (bitwise agreement with the recipe), no flush-to-zero, no xorsign max, no local
memory; ptxas (where installed) reports no spills.  And the host wrapper's input checks (CPU)."""
import re

import pytest
import torch

from cute_kernels import InputError
from cute_kernels.fp8.quantize_ops import quantize_ptx, quantize_weight_copies, weight_kernel_takes
from cute_kernels.inspect_ptx import find_ptxas, ptxas_info
from cute_kernels.sm90.quantize_weight import ROW_SWEEPS, Sm90QuantizeWeight


def _ops(ptx: str, prefix: str) -> list[str]:
    return [m.group(1) for m in re.finditer(rf"^\s*(?:@%p\d+\s+)?({re.escape(prefix)}[\w.]*)\s", ptx, re.M)]


@pytest.mark.parametrize("fmt,pow2", [("e4m3", False), ("e5m2", True)])
def test_weight_quantize_kernel_compiles_and_ptx_is_as_designed(fmt, pow2):
    ptx = quantize_ptx(fmt, pow2, weight=True)
    loads = _ops(ptx, "ld.global")
    assert loads == ["ld.global.v4.b32"] * ROW_SWEEPS, f"w read as 16-byte vectors only, got {sorted(set(loads))}"
    stores = _ops(ptx, "st.global")
    # per thread: 8 rows x 8 FP8 bytes (q), 2 columns x 2 halves x 16 bytes (qt), the two scales (b32)
    assert stores.count("st.global.v2.b32") == ROW_SWEEPS, sorted(set(stores))
    assert stores.count("st.global.v4.b32") == 4, sorted(set(stores))
    assert stores.count("st.global.f32") + stores.count("st.global.b32") == 2, sorted(set(stores))
    assert _ops(ptx, "st.shared").count("st.shared.v4.b32") == ROW_SWEEPS, "the block staged with 16-byte stores"
    assert f"cvt.rn.satfinite.{fmt}x2.f32" in ptx
    assert "rcp.rn.f32" in ptx and "rcp.approx" not in ptx and "div.approx" not in ptx and "div.full" not in ptx
    assert ".ftz" not in ptx, "flush-to-zero arithmetic would part from the recipe on tiny scales"
    assert len(_ops(ptx, "shfl.sync.bfly")) == 5, "the block amax over a warp: five butterfly steps"
    assert "bar.sync" in ptx and "xorsign" not in ptx and ".local" not in ptx
    if find_ptxas() is not None:
        info = ptxas_info(ptx)
        assert info.spill_store_bytes == 0 and info.spill_load_bytes == 0, info.raw[-600:]
        assert info.stack_bytes == 0, info.raw[-600:]


def test_weight_quantize_kernel_rejects_unknown_format():
    with pytest.raises(ValueError, match="fmt"):
        Sm90QuantizeWeight("e3m4")


@pytest.mark.parametrize("w,ok", [
    (torch.zeros(256, 128, dtype=torch.bfloat16), True),
    (torch.zeros(8, 1856, 2688, dtype=torch.bfloat16), True),
    (torch.zeros(256, 128), False),  # fp32
    (torch.zeros(250, 128, dtype=torch.bfloat16), False),  # N not a multiple of 16
    (torch.zeros(256, 136, dtype=torch.bfloat16)[:, :128], False),  # not contiguous
    (torch.zeros(0, 128, dtype=torch.bfloat16), False),
    (torch.zeros(128, dtype=torch.bfloat16), False),
])
def test_which_weights_the_kernel_takes(w, ok):
    assert weight_kernel_takes(w) is ok


@pytest.mark.parametrize("w,fmt,match", [
    (torch.zeros(256, 128), "e4m3", "bf16"),
    (torch.zeros(250, 128, dtype=torch.bfloat16), "e4m3", "multiples of 16"),
    (torch.zeros(256, 128, dtype=torch.bfloat16), "e2m1", "fmt"),
    (torch.zeros(256, 128, dtype=torch.bfloat16), "e4m3", "CUDA"),
])
def test_quantize_weight_copies_input_errors(w, fmt, match):
    with pytest.raises(InputError, match=match):
        quantize_weight_copies(w, fmt)
