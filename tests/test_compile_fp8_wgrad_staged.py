"""The FP8 weight gradient's overlapped mainloop (KernelKey.b_scale = "rows_staged":
sm90/mainloop_fp8.run_rows_staged, B's column scales staged in shared memory by
sm90/scale_ring.py) compiles for sm_90a without a GPU and its PTX holds what the design says:
4 x e4m3/e5m2 WGMMA m64n128k32 per K tile issued in `run`'s pairs (prologue, two in the loop, the
drain's), wait_group 1 with a drain at wait_group 0, B's column scales copied by 4-byte cp.async
(one per K tile and thread) and read back from shared memory behind cp.async.wait_group and a
128-thread named barrier, A's row scales as the only global scale loads, 64 multiplies and 64
FMAs per promotion, no local memory; ptxas (where installed) reports no spills and no WGMMA
serialization.  Its shared memory (one operand stage fewer) and config rules; its own evidence
name; CUTE_KERNELS_FP8_WGRAD_STAGED picks it in the host op (CPU, the launch stubbed)."""
import dataclasses
import re

import pytest
import torch

from cute_kernels import InputError
from cute_kernels.compile import build_kernel
from cute_kernels.config import ConfigError
from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.fp8 import wgrad_ops
from cute_kernels.fp8.recipe import quantize_1x128
from cute_kernels.fp8.wgrad_ops import WGRAD_DEFAULT_CONFIG, fp8_weight_grad, wgrad_b_scale, wgrad_key
from cute_kernels.inspect_ptx import find_ptxas, kernel_ptx, ptxas_info
from cute_kernels.selfcheck import is_verified, variant_name, verified_table
from cute_kernels.sm90.config import block_scaled_ab_stages

PROMOTIONS = 5  # two in the loop, two in the even drain, one in the odd drain
ISSUES = 4  # the prologue's K tile, two in the loop, the even drain's last


def _ops(ptx: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^\s*(?:@!?%p\d+\s+)?([a-z][\w.]*)", ptx, re.M)]


def _staged(fmt="e4m3", out=torch.float32, **kw):
    return wgrad_key(fmt, "e4m3", out, b_scale="rows_staged", **kw)


@pytest.mark.parametrize("fmt,out", [("e4m3", torch.float32), ("e5m2", torch.bfloat16)])
def test_staged_kernel_compiles_and_ptx_is_as_designed(fmt, out):
    ptx = kernel_ptx(_staged(fmt, out))
    ops = _ops(ptx)
    assert ops.count(f"wgmma.mma_async.sync.aligned.m64n128k32.f32.{fmt}.e4m3") == 4 * ISSUES, "4 x k32 per K tile"
    waits = re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+);", ptx)
    assert "1" in waits and "0" in waits and set(waits) == {"0", "1"}, "overlapped: wait_group 1, drained with 0"
    copies = re.findall(r"cp\.async\.ca\.shared\.global\s+\[[^]]+\],\s*\[[^]]+\],\s*(\d+)", ptx)
    assert copies == ["4"] * 4, "one 4-byte column-scale copy per K tile of a pair: the prologue's and the loop's"
    assert re.findall(r"cp\.async\.wait_group\s+(\d+);", ptx) == ["1", "0"], "the loop's slot, then the drain's"
    assert ops.count("cp.async.commit_group") == 2
    assert len(re.findall(r"bar\.sync\s+%r\d+,\s*128;", ptx)) == 3, "per warpgroup: tile start, loop, drain"
    # the global scale loads are A's row scales only (2 rows x 2 K tiles, before the loop and in it)
    assert ops.count("ld.global.b32") == 8
    # each promotion reads the thread's 32 column scales from shared memory (as 16 adjacent pairs or singly)
    shared_words = sum(2 if ".v2." in op else 1 for op in ops if op.startswith("ld.shared") and op.endswith("32"))
    assert shared_words == 32 * PROMOTIONS, "column scales read from shared memory"
    assert ops.count("mul.f32") == 64 * PROMOTIONS and ops.count("fma.rn.f32") == 64 * PROMOTIONS
    assert ".local" not in ptx
    if find_ptxas() is not None:
        info = ptxas_info(ptx)
        assert info.spill_store_bytes == 0 and info.spill_load_bytes == 0, info.raw[-600:]
        assert info.registers <= 232, info.raw[-600:]
        assert "C7519" not in info.raw, "ptxas injected warpgroup.arrive (accumulator touched between WGMMAs)"
        assert "C7514" not in info.raw, "ptxas serialized the WGMMAs (accumulator read while its group is in flight)"


def test_the_staged_variant_has_its_own_evidence_name():
    key = _staged()
    name = variant_name(key)
    assert "+rows_stagedscaledB" in name and is_verified("sm90", name, verified_table())  # H200 2026-12-03 19:06
    assert not is_verified("sm90", name, {"sm90": ["*/float8_e4m3fn->*"]}), "the plain FP8 pattern does not cover it"
    assert name != variant_name(wgrad_key("e4m3", "e4m3", torch.float32, b_scale="row"))


def test_the_ring_takes_one_operand_stage():
    epi = EpilogueSpec("identity")
    assert block_scaled_ab_stages(WGRAD_DEFAULT_CONFIG, epi, out_bytes=4) == 6
    assert block_scaled_ab_stages(WGRAD_DEFAULT_CONFIG, epi, out_bytes=4, b_scale="rows_staged") == 5
    six = dataclasses.replace(WGRAD_DEFAULT_CONFIG, ab_stages=6)
    build_kernel(wgrad_key("e4m3", "e4m3", torch.float32, six, b_scale="row"))
    with pytest.raises(ConfigError, match="shared memory"):
        build_kernel(_staged(config=six))


@pytest.mark.parametrize("change,match", [
    (dict(cfg=dataclasses.replace(WGRAD_DEFAULT_CONFIG, tile_n=256, cluster_m=2, cluster_n=1)), "128-wide"),
    (dict(grouped=True), "not grouped along M"),
    (dict(epi=EpilogueSpec("act", store_preact=True)), "plain epilogue"),
])
def test_configs_the_staged_variant_cannot_run_are_refused(change, match):
    with pytest.raises(ConfigError, match=match):
        build_kernel(dataclasses.replace(_staged(), **change))


def test_the_switch_picks_the_mainloop(monkeypatch):
    # the overlapped mainloop by default (H200 2026-12-03 19:06: ~830 vs ~430 TFLOP/s, bitwise equal)
    monkeypatch.delenv("CUTE_KERNELS_FP8_WGRAD_STAGED", raising=False)
    assert wgrad_b_scale() == "rows_staged" and wgrad_key("e4m3", "e4m3", torch.float32).b_scale == "rows_staged"
    monkeypatch.setenv("CUTE_KERNELS_FP8_WGRAD_STAGED", "0")
    assert wgrad_b_scale() == "row" and wgrad_key("e4m3", "e4m3", torch.float32).b_scale == "row"
    monkeypatch.setenv("CUTE_KERNELS_FP8_WGRAD_STAGED", "1")
    assert wgrad_b_scale() == "rows_staged"
    # named explicitly, the environment does not matter
    assert wgrad_key("e4m3", "e4m3", torch.float32, b_scale="row").b_scale == "row"


class _Launched(Exception):
    pass


@pytest.mark.parametrize("env,b_scale,expected", [(None, None, "rows_staged"), ("0", None, "row"), ("1", None, "rows_staged"),
                                                  ("1", "row", "row"), ("0", "rows_staged", "rows_staged")])
def test_the_host_op_launches_the_chosen_variant(monkeypatch, env, b_scale, expected):
    import cute_kernels.gemm_ops as gemm_ops

    if env is None:
        monkeypatch.delenv("CUTE_KERNELS_FP8_WGRAD_STAGED", raising=False)
    else:
        monkeypatch.setenv("CUTE_KERNELS_FP8_WGRAD_STAGED", env)
    launched = []

    def fake_run(key, args):
        launched.append(key)
        raise _Launched

    monkeypatch.setattr(wgrad_ops, "check_fp8_launch", lambda *a, **k: None)
    monkeypatch.setattr(gemm_ops, "_run", fake_run)
    gq, gs = quantize_1x128(torch.randn(256, 256))
    xq, xs = quantize_1x128(torch.randn(128, 256))
    with pytest.raises(_Launched):
        fp8_weight_grad(gq, gs, xq, xs, b_scale=b_scale)
    assert [k.b_scale for k in launched] == [expected]


def test_an_unknown_mainloop_is_refused():
    gq, gs = quantize_1x128(torch.randn(256, 256))
    with pytest.raises(InputError, match="b_scale"):
        fp8_weight_grad(gq, gs, gq, gs, b_scale="col")


def test_the_benchmark_times_both_mainloops():
    from benchmarks.bench_fp8 import WGRAD_MAINLOOPS

    assert sorted(b for _, b in WGRAD_MAINLOOPS) == sorted(wgrad_ops.WGRAD_B_SCALES)
