"""The FP8 weight gradient added into an fp32 main_grad by its epilogue (issue 26's
fuse_wgrad_accumulation: `fp8_weight_grad(..., out=main_grad, accumulate=True)` and the grouped
form; KernelKey.epi "identity+acc") on CPU: each mainloop's accumulating kernel (dense "row" and
"rows_staged", grouped "rows_staged") compiles for sm_90a with the WGMMAs of its plain twin, reads
the output (a 64-bit load per pair of fp32 columns, every element once, issued after the mainloop:
held through it the input spilled), dense TMA-prefetches it into L2, no local memory, and under
ptxas no spills, no WGMMA serialization (C7514) or injected warpgroup.arrive (C7519); the config
rules allow it exactly there (fp32 out, per-row B scales, epi_n 32 with the overlapped mainloop);
its variant names have no hardware evidence (first launch self-checked); the self-check problem
through a torch emulation passes an accumulating kernel and fails one that overwrites; the host
ops' input checks name the argument and their launches (stubbed) pass out as the output and as
the epilogue input; the FP8 step routes to it with CUTE_KERNELS_FP8_WGRAD_ACCUMULATE=1 only."""
import dataclasses
import re
from unittest import mock

import pytest
import torch

from cute_kernels import InputError
from cute_kernels.compile import build_kernel
from cute_kernels.config import ConfigError
from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.fp8 import wgrad_ops
from cute_kernels.fp8.grouped_tokens import quantize_cols_grouped_reference
from cute_kernels.fp8.recipe import FORMATS, dequantize, quantize_1x128
from cute_kernels.fp8.wgrad_ops import (WGRAD_DEFAULT_CONFIG, fp8_grouped_weight_grad, fp8_weight_grad,
                                        grouped_wgrad_key, wgrad_accumulate_enabled, wgrad_key)
from cute_kernels.inspect_ptx import kernel_ptx
from cute_kernels.selfcheck import is_verified, run_variant, variant_name, verified_table
from test_compile_fp8_grouped_wgrad import Launched, assert_spill_free, stub_wgrad_launch

VARIANTS = {
    "row": lambda acc, fmt="e4m3", **kw: wgrad_key(fmt, "e4m3", torch.float32, b_scale="row", accumulate=acc, **kw),
    "rows_staged": lambda acc, fmt="e4m3", **kw: wgrad_key(fmt, "e4m3", torch.float32, b_scale="rows_staged",
                                                           accumulate=acc, **kw),
    "grouped": lambda acc, fmt="e4m3", **kw: grouped_wgrad_key(fmt, "e4m3", torch.float32, accumulate=acc, **kw),
}
# a 128x128 cooperative tile: 64 fp32 accumulator elements per consumer thread, read as 32 pairs
OUTPUT_PAIR_LOADS = 128 * 128 // 256 // 2


def _ops(ptx: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^\s*(?:@!?%p\d+\s+)?([a-z][\w.]*)", ptx, re.M)]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])  # the gradient's format (Fp8Recipe.grad_format)
def test_the_accumulating_kernel_compiles_reads_its_output_and_does_not_spill(variant, fmt):
    key, plain = VARIANTS[variant](True, fmt), VARIANTS[variant](False, fmt)
    assert key.epi.accumulate and key.d_dtype == "float32"
    ptx, plain_ptx = kernel_ptx(key), kernel_ptx(plain)
    ops, plain_ops = _ops(ptx), _ops(plain_ptx)
    wgmma = f"wgmma.mma_async.sync.aligned.m64n128k32.f32.{fmt}.e4m3"
    assert ops.count(wgmma) == plain_ops.count(wgmma) > 0, "the same mainloop"
    # the output's previous value: one 64-bit load per pair of fp32 columns, each element once; the
    # plain kernel reads no output
    assert ops.count("ld.global.b64") == OUTPUT_PAIR_LOADS and plain_ops.count("ld.global.b64") == 0
    lines = ptx.splitlines()
    first_read = next(i for i, ln in enumerate(lines) if "ld.global.b64" in ln)
    first_wgmma = next(i for i, ln in enumerate(lines) if wgmma in ln)
    assert first_read > first_wgmma, "main_grad is read after the mainloop, not held through it"
    # dense: the producer prefetches the tile's main_grad into L2; grouped: no prefetch
    assert ("cp.async.bulk.prefetch.tensor" in ptx) == (variant != "grouped")
    assert_spill_free(ptx)


WIDE_EPI = dataclasses.replace(WGRAD_DEFAULT_CONFIG, epi_n=64)


@pytest.mark.parametrize("variant,change,match", [
    ("rows_staged", dict(out_dtype="bfloat16"), "fp32 output"),
    ("grouped", dict(out_dtype="bfloat16"), "fp32 output"),
    ("rows_staged", dict(b_scale=""), "per-row B scales"),
    # next to the overlapped mainloop a 64-column fp32 sub-tile spills (60 bytes dense, 64 grouped)
    ("rows_staged", dict(cfg=WIDE_EPI), "epi_n 32"),
    ("grouped", dict(cfg=WIDE_EPI), "epi_n 32"),
])
def test_configs_the_accumulating_kernel_cannot_run_are_refused(variant, change, match):
    with pytest.raises(ConfigError, match=match):
        build_kernel(dataclasses.replace(VARIANTS[variant](True), **change))


def test_the_serial_mainloop_takes_wide_epilogue_sub_tiles():
    key = VARIANTS["row"](True, config=WIDE_EPI)
    assert_spill_free(kernel_ptx(key))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_accumulating_variant_has_its_own_evidence_name(variant):
    name, plain = variant_name(VARIANTS[variant](True)), variant_name(VARIANTS[variant](False))
    assert "/identity+acc/" in name and name.replace("+acc", "") == plain
    table = verified_table()
    # H200 2026-12-03: the dense ones' GPU tests passed at 22:10, the grouped one's at 22:53 UTC
    assert is_verified("sm90", name, table) and is_verified("sm90", plain, table)
    if variant != "grouped":  # the plain weight gradient's patterns do not vouch for the accumulating one
        plain_only = {"sm90": [p for p in table["sm90"] if "+acc" not in p]}
        assert not is_verified("sm90", name, plain_only) and is_verified("sm90", plain, plain_only)


def test_the_self_check_table_lists_the_accumulating_variants():
    from cute_kernels.selfcheck_table import fp8_variant_keys

    acc = [k for k in fp8_variant_keys("sm90", quick=True) if k.epi.accumulate]
    assert sorted((k.b_scale, k.grouped_k) for k in acc) == [("row", False), ("rows_staged", False),
                                                             ("rows_staged", True)]


def _emulated_launch(accumulate=True):
    """A torch stand-in for the kernel: D = dequant(A) @ dequant(B)^T (+ D's previous value, read
    through args.aux, when `accumulate`), per expert over cu_rows when grouped along K."""

    def launch(key, args):
        fa, fb = (FORMATS[f] for f in key.operand_formats)
        a, b = args.a[:, :, 0].view(fa), args.b[:, :, 0].view(fb)
        sa, sb = args.sa, args.sb[:, :, 0]
        cu = args.cu_rows.tolist() if args.cu_rows is not None else [0, a.shape[1]]
        for e in range(len(cu) - 1):
            lo, hi = cu[e], cu[e + 1]
            kb0, kb = lo // 128, -(-(hi - lo) // 128)
            ga = dequantize(a[:, lo:hi].contiguous(), sa[:, kb0:kb0 + kb].contiguous())
            gb = dequantize(b[:, lo:hi].contiguous(), sb[:, kb0:kb0 + kb].contiguous())
            prev = args.aux[:, :, e].clone() if accumulate else 0.0
            args.d0[:, :, e].copy_(ga @ gb.t() + prev)
    return launch


@pytest.mark.parametrize("variant", ["rows_staged", "grouped"])
def test_the_self_check_passes_an_accumulating_kernel_and_fails_one_that_overwrites(monkeypatch, variant):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    key = VARIANTS[variant](True)
    good = run_variant(key, launch=_emulated_launch(), device="cpu")
    assert good.ok and good.errors["out"] < 1e-6, good
    bad = run_variant(key, launch=_emulated_launch(accumulate=False), device="cpu")
    assert not bad.ok, bad


def _dense(n_out=256, k_out=128, tokens=256):
    gq, gs = quantize_1x128(torch.randn(n_out, tokens))
    xq, xs = quantize_1x128(torch.randn(k_out, tokens))
    return gq, gs, xq, xs


def _grouped(splits=(100, 0, 156), n_out=256, k_out=128):
    g = torch.Generator().manual_seed(0)
    t = sum(splits)
    gq, gs, cu = quantize_cols_grouped_reference(torch.randn(t, n_out, generator=g).bfloat16(), list(splits))
    xq, xs, _ = quantize_cols_grouped_reference(torch.randn(t, k_out, generator=g).bfloat16(), list(splits))
    return gq, gs, xq, xs, cu


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("kw,match", [
    (dict(accumulate=True), "accumulate=True needs out="),
    (dict(out="main_grad"), "out must be a torch.Tensor"),
    (dict(out=lambda s: torch.zeros(s, dtype=torch.bfloat16), accumulate=True), "fp32 out"),
    (dict(out=lambda s: torch.zeros(s, dtype=torch.float16)), "out_dtype must be"),
    (dict(out=lambda s: torch.zeros(s), out_dtype=torch.bfloat16), "out_dtype .* disagrees"),
    (dict(out=lambda s: torch.zeros(*s[:-1], s[-1] + 8), accumulate=True), "out must have shape"),
    (dict(out=lambda s: torch.zeros(s, device="meta"), accumulate=True), "out is on meta"),
    (dict(out=lambda s: torch.zeros(*s[:-2], s[-1], s[-2]).transpose(-1, -2), accumulate=True), "contiguous"),
    (dict(out=lambda s: torch.zeros(s[0] * s[1] * (s[2] if len(s) > 2 else 1) + 1)[1:].view(s), accumulate=True),
     "16-byte aligned"),
])
def test_out_and_accumulate_errors_name_the_argument(grouped, kw, match):
    args = _grouped() if grouped else _dense()
    shape = (3, 256, 128) if grouped else (256, 128)
    if callable(kw.get("out")):
        kw = {**kw, "out": kw["out"](shape)}
    with pytest.raises(InputError, match=match):
        (fp8_grouped_weight_grad if grouped else fp8_weight_grad)(*args, **kw)


@pytest.fixture
def launches(monkeypatch):
    return stub_wgrad_launch(monkeypatch)


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("accumulate", [False, True])
def test_the_host_ops_launch_out_as_output_and_epilogue_input(launches, grouped, accumulate):
    args = _grouped() if grouped else _dense()
    main_grad = torch.zeros((3, 256, 128) if grouped else (256, 128))
    with pytest.raises(Launched):
        (fp8_grouped_weight_grad if grouped else fp8_weight_grad)(*args, out=main_grad, accumulate=accumulate)
    (key, ga), = launches
    assert key.epi.accumulate == accumulate and key.d_dtype == "float32" and key.grouped_k == grouped
    assert ga.d0.data_ptr() == main_grad.data_ptr() and ga.d0.shape == (256, 128, 3 if grouped else 1)
    if accumulate:
        assert ga.aux.data_ptr() == main_grad.data_ptr() and ga.aux.shape == ga.d0.shape
        assert ga.aux.stride() == ga.d0.stride()
    else:
        assert ga.aux is None
    # without out=: the plain kernel into a new tensor, as before
    launches.clear()
    with pytest.raises(Launched):
        (fp8_grouped_weight_grad if grouped else fp8_weight_grad)(*args)
    assert not launches[0][0].epi.accumulate and launches[0][1].aux is None


def test_all_empty_experts_leave_main_grad_as_it_was():
    gq, gs, xq, xs, cu = _grouped((0, 0))
    main_grad = torch.randn(2, 256, 128)
    before = main_grad.clone()
    assert fp8_grouped_weight_grad(gq, gs, xq, xs, cu, out=main_grad, accumulate=True) is main_grad
    assert torch.equal(main_grad, before)
    assert (fp8_grouped_weight_grad(gq, gs, xq, xs, cu, out=main_grad) == 0).all(), "written (not added): zeros"


def test_the_switch_is_off_by_default(monkeypatch):
    monkeypatch.delenv("CUTE_KERNELS_FP8_WGRAD_ACCUMULATE", raising=False)
    assert not wgrad_accumulate_enabled()
    monkeypatch.setenv("CUTE_KERNELS_FP8_WGRAD_ACCUMULATE", "1")
    assert wgrad_accumulate_enabled()


# ---------------------------------------------------------------- the FP8 step (kernels stubbed)
DENSE_STEP = {"name": "small dense fp8", "m": 272, "h": 256, "f": 208, "e": 0}
GROUPED_STEP = {"name": "small grouped fp8", "m": 272, "h": 256, "f": 208, "e": 4, "splits": [0, 130, 1, 141]}


def _step_with_main_grad(shape, main_grad_dtype=torch.float32, transposed=False):
    """One stubbed srelu_mlp(fp8=Fp8Recipe(wgrad="fp8"), fuse_wgrad_accumulation=True) step: (w1, w2,
    [(kernel key, out, accumulate) of each FP8 weight-gradient host call], torch adds into main_grad)."""
    from benchmarks.bench_host_path import step_inputs, stubbed_kernels
    from cute_kernels import gemm_ops, selfcheck
    from cute_kernels.fp8 import Fp8Recipe, mlp as fp8_mlp
    from cute_kernels.mlp import srelu_mlp

    x, w1, w2, dy, splits = step_inputs(shape)
    for w in (w1, w2):
        mg = torch.zeros(w.shape[:-2] + w.shape[-2:][::-1], dtype=main_grad_dtype).transpose(-1, -2) if transposed \
            else torch.zeros(w.shape, dtype=main_grad_dtype)
        w.main_grad = mg
    calls, adds = [], []
    real_dense, real_grouped = wgrad_ops.fp8_weight_grad, wgrad_ops.fp8_grouped_weight_grad
    real_add = fp8_mlp._add_wgrad

    def dense(*a, out=None, accumulate=False, **k):
        calls.append(("dense", out, accumulate))
        return real_dense(*a, out=out, accumulate=accumulate, **k)

    def grouped(*a, out=None, accumulate=False, **k):
        calls.append(("grouped", out, accumulate))
        return real_grouped(*a, out=out, accumulate=accumulate, **k)

    with stubbed_kernels() as launched, mock.patch.object(selfcheck, "is_verified", lambda *a: True), \
            mock.patch.object(gemm_ops, "_selfchecked", set()), \
            mock.patch.object(wgrad_ops, "fp8_weight_grad", dense), \
            mock.patch.object(wgrad_ops, "fp8_grouped_weight_grad", grouped), \
            mock.patch.object(fp8_mlp, "_add_wgrad", lambda ctx, w, name, dw: adds.append(name) or real_add(ctx, w,
                                                                                                            name, dw)):
        srelu_mlp(x, w1, w2, m_splits=splits, fp8=Fp8Recipe(wgrad="fp8"), backend="cute",
                  fuse_wgrad_accumulation=True).backward(dy)
        wgrad_keys = [k for k, _ in launched if k.b_scale]
    return w1, w2, calls, adds, wgrad_keys


@pytest.mark.parametrize("shape,grouped_env", [(DENSE_STEP, "0"), (GROUPED_STEP, "1")])
@pytest.mark.parametrize("switch", [None, "0", "1"])
def test_the_switch_routes_the_fp8_step_to_the_fused_launch(monkeypatch, shape, grouped_env, switch):
    """fuse_wgrad_accumulation with Fp8Recipe(wgrad="fp8") on the kernel path: with
    CUTE_KERNELS_FP8_WGRAD_ACCUMULATE=1 both weight gradients launch the accumulating kernel with
    out=w.main_grad (no dW tensor, no torch add); unset or 0, the plain kernel and the torch add."""
    monkeypatch.setenv("CUTE_KERNELS_FP8_GROUPED_WGRAD", grouped_env)
    if switch is None:
        monkeypatch.delenv("CUTE_KERNELS_FP8_WGRAD_ACCUMULATE", raising=False)
    else:
        monkeypatch.setenv("CUTE_KERNELS_FP8_WGRAD_ACCUMULATE", switch)
    w1, w2, calls, adds, keys = _step_with_main_grad(shape)
    kind = "grouped" if shape["e"] else "dense"
    assert [c[0] for c in calls] == [kind, kind] and len(keys) == 2
    if switch == "1":
        # FC2's weight gradient first (w2), then FC1's (w1)
        assert calls[0][1] is w2.main_grad and calls[1][1] is w1.main_grad
        assert all(acc for _, _, acc in calls) and all(k.epi.accumulate for k in keys)
        assert not adds
    else:
        assert all(out is None and not acc for _, out, acc in calls)
        assert not any(k.epi.accumulate for k in keys)
        assert sorted(adds) == ["w1", "w2"]


@pytest.mark.parametrize("dtype,transposed", [(torch.bfloat16, False), (torch.float32, True)])
def test_a_main_grad_the_kernel_cannot_write_takes_the_torch_add(monkeypatch, dtype, transposed):
    monkeypatch.setenv("CUTE_KERNELS_FP8_WGRAD_ACCUMULATE", "1")
    _, _, calls, adds, keys = _step_with_main_grad(DENSE_STEP, dtype, transposed)
    assert all(out is None and not acc for _, out, acc in calls) and sorted(adds) == ["w1", "w2"]
    assert not any(k.epi.accumulate for k in keys)
