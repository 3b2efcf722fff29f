"""The FP8 weight gradient with per-row B scales (KernelKey.b_scale = "row", DeepGEMM's 1D1D:
sm90/mainloop_fp8.run_rows; host op fp8/wgrad_ops.py) compiles for sm_90a without a GPU, and its
PTX holds what the design says: e4m3 WGMMA m64n128k32, one wait_group 0 per K tile (the serial
promotion), the K tile's 2 row scales and 32 column scales read as 34 fp32 loads, each element
promoted with its row's times its column's scale (64 multiplies, 64 FMAs), fp32 or bf16 output,
no local memory; ptxas (where installed) reports no spills.  Configs and epilogues it cannot run
are refused with the reason; the variant is self-checked until a hardware run (its own name);
the host op's input errors (CPU)."""
import dataclasses
import re

import pytest
import torch

from cute_kernels import InputError
from cute_kernels.compile import KernelKey, build_kernel
from cute_kernels.config import ConfigError, block_scaled_errors
from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.fp8.recipe import quantize_1x128
from cute_kernels.fp8.wgrad_ops import WGRAD_DEFAULT_CONFIG, as_operand, fp8_weight_grad, wgrad_key
from cute_kernels.inspect_ptx import find_ptxas, kernel_ptx, ptxas_info
from cute_kernels.selfcheck import is_verified, variant_name, verified_table


def _ops(ptx: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^\s*(?:@!?%p\d+\s+)?([a-z][\w.]*)", ptx, re.M)]


@pytest.mark.parametrize("fmt,out", [("e4m3", torch.float32), ("e5m2", torch.bfloat16)])
def test_wgrad_kernel_compiles_and_ptx_is_as_designed(fmt, out):
    key = wgrad_key(fmt, "e4m3", out, b_scale="row")  # this module: the serial mainloop ("row")
    ptx = kernel_ptx(key)
    ops = _ops(ptx)
    assert ops.count(f"wgmma.mma_async.sync.aligned.m64n128k32.f32.{fmt}.e4m3") == 4, "4 x k32 per 128-K tile"
    assert re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+);", ptx) == ["0"], "one wait for all, per K tile"
    # 2 row scales of A and 32 column scales of B per K tile: the first tile's before the K loop,
    # the next one's inside it (a tile ahead of their use)
    assert ops.count("ld.global.b32") == 2 * 34, "2 row scales of A and 32 column scales of B per K tile"
    assert ops.count("mul.f32") == 64 and ops.count("fma.rn.f32") == 64, "row x column scale, then the FMA"
    assert ".local" not in ptx
    if find_ptxas() is not None:
        info = ptxas_info(ptx)
        assert info.spill_store_bytes == 0 and info.spill_load_bytes == 0, info.raw[-600:]
        assert info.registers <= 232, info.raw[-600:]


def test_the_variant_has_its_own_evidence_name():
    key = wgrad_key("e4m3", "e4m3", torch.float32, b_scale="row")
    name = variant_name(key)
    # its own evidence entry (hardware_verified.yaml: the H200 run of 2026-12-03 19:06)
    assert "+rowscaledB" in name and is_verified("sm90", name, verified_table())
    assert not is_verified("sm90", name, {"sm90": ["*/float8_e4m3fn->*"]}), "the plain FP8 pattern does not cover it"
    assert variant_name(dataclasses.replace(key, b_scale="")) != name


@pytest.mark.parametrize("change,match", [
    (dict(cfg=dataclasses.replace(WGRAD_DEFAULT_CONFIG, tile_n=256, cluster_m=2, cluster_n=1)), "128-wide"),
    (dict(grouped=True), "not grouped along M"),
    (dict(grouped_k=True), "overlapped mainloop only"),  # "row" spills grouped along K
    (dict(epi=EpilogueSpec("act", store_preact=True)), "plain epilogue"),
    (dict(b_scale="col"), "b_scale"),
])
def test_configs_and_epilogues_it_cannot_run_are_refused(change, match):
    key = dataclasses.replace(wgrad_key("e4m3", "e4m3", torch.float32, b_scale="row"), **change)
    with pytest.raises(ConfigError, match=match):
        build_kernel(key)


def test_block_scaled_errors_without_row_scales_are_unchanged():
    epi = EpilogueSpec("act", store_preact=True)
    assert block_scaled_errors(WGRAD_DEFAULT_CONFIG, epi) == []
    assert block_scaled_errors(WGRAD_DEFAULT_CONFIG, epi, b_scale="row")


def _operands(n_out=256, k_out=128, t=256):
    g = torch.randn(t, n_out)
    x = torch.randn(t, k_out)
    gq, gs = quantize_1x128(g.t().contiguous())
    xq, xs = quantize_1x128(x.t().contiguous())
    return gq, gs, xq, xs


@pytest.mark.parametrize("change,match", [
    (dict(gs_t=torch.zeros(256, 3)), "gs_t must be float32 of shape"),
    (dict(xq_t=torch.zeros(128, 128).to(torch.float8_e4m3fn)), "xq_t has K"),
    (dict(gq_t=torch.zeros(256, 256)), "gq_t must be float8"),
    (dict(out_dtype=torch.float16), "out_dtype"),
    (dict(config="128x128"), "config must be a GemmConfig"),
    (dict(config=dataclasses.replace(WGRAD_DEFAULT_CONFIG, tile_n=256)), "config: "),
    ({}, "CUDA"),
])
def test_fp8_weight_grad_input_errors(change, match):
    gq, gs, xq, xs = _operands()
    args = dict(gq_t=gq, gs_t=gs, xq_t=xq, xs_t=xs)
    kw = {k: change.pop(k) for k in ("out_dtype", "config") if k in change}
    args.update(change)
    with pytest.raises(InputError, match=match):
        fp8_weight_grad(args["gq_t"], args["gs_t"], args["xq_t"], args["xs_t"], **kw)


def test_as_operand_widens_to_whole_token_blocks():
    buf = torch.zeros(3, 256, dtype=torch.uint8)
    view = buf[:, :200]
    wide = as_operand(view)
    assert wide.shape == (3, 256) and wide.stride() == (256, 1) and wide.data_ptr() == buf.data_ptr()
    with pytest.raises(InputError, match="padded"):
        as_operand(torch.zeros(3, 200, dtype=torch.uint8))
