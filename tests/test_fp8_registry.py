"""FP8 in the family's host machinery (issue 24), on CPU: the registry's FP8 kernels (keys,
defaults, config rules, references of the dequantized operands) and the tuned-config lookup
keyed by the operand formats, so FP8 entries never meet bf16 ones and an e5m2 x e4m3 entry
never meets an e4m3 one; the FP8 op takes the tuned entry when `config=None`."""
import dataclasses
import logging

import pytest
import torch

from cute_kernels.activations import SRELU
from cute_kernels import config_lookup as cl
from cute_kernels import registry
from cute_kernels.checks import InputError
from cute_kernels.config import GemmConfig
from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.fp8.epilogue import Fp8Epilogue
from cute_kernels.gemm_base.launch_args import GemmArgs
from cute_kernels.fp8.ops import _family_launch_key
from cute_kernels.fp8.recipe import dequantize, quantize_1x128, quantize_128x128
from cute_kernels.reference import rel_err
from cute_kernels.sm90.config import FP8_DEFAULT_CONFIG
from cute_kernels.tuned_store import ShapeKey, TunedConfigError, file_path, make_record, merge_write, parse_entry

E4M3, E5M2 = "float8_e4m3fn", "float8_e5m2"
TUNED = dataclasses.replace(FP8_DEFAULT_CONFIG, cluster_m=2, cluster_n=1, raster="m", swizzle=4, epi_n=64)
TUNED_MIXED = dataclasses.replace(FP8_DEFAULT_CONFIG, cluster_n=1, epi_stages=3)
FC2 = Fp8Epilogue(EpilogueSpec("identity"))
FC1 = Fp8Epilogue(EpilogueSpec("act", store_preact=True), quantized="postact")




def _write(root, kernel, sk, cfg):
    rec = make_record(sk, cfg, time_ms=1.0, default_time_ms=1.2, device="H200", dsl_version="4.8.1",
                      date="2026-12-04", trials=24)
    merge_write(file_path("sm90", kernel, root), {sk.key(): rec})


def test_fp8_kernels_are_registered_with_their_rules():
    for name in ("fp8_fc1_srelu", "fp8_fc2"):
        spec = registry.get_kernel(name)
        assert spec.block_scaled and spec.grouping == "m" and spec.majors == ("k", "k")
        assert spec.default_dtype == E4M3
        assert spec.default_config(8192, 16384, 4096) == FP8_DEFAULT_CONFIG
        assert spec.config_errors(FP8_DEFAULT_CONFIG, 8) == []
        assert any("tile_k" in e for e in spec.config_errors(GemmConfig(), 0))  # the bf16 default cannot run
        assert any("no block-scaled FP8" in e for e in spec.config_errors(FP8_DEFAULT_CONFIG, arch="sm100"))
        spec.check_dtype(E4M3)
        spec.check_dtype(f"{E5M2}+{E4M3}")
        with pytest.raises(ValueError, match="FP8"):
            spec.check_dtype("bfloat16")
    assert registry.get_kernel("fp8_fc1_srelu").epilogue.quantized == "postact"
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        registry.get_kernel("fc2").check_dtype(E4M3)


def test_kernel_key_of_an_fp8_kernel():
    key = registry.kernel_key("fp8_fc2", "sm90", FP8_DEFAULT_CONFIG, f"{E5M2}+{E4M3}", 8)
    assert key.block_scaled and key.grouped and key.operand_formats == ("e5m2", "e4m3")
    assert key.d_dtype == "bfloat16" and key.b_dtype == E4M3
    same = registry.kernel_key("fp8_fc2", "sm90", FP8_DEFAULT_CONFIG, f"{E4M3}+{E4M3}", 0)
    assert same == registry.kernel_key("fp8_fc2", "sm90", FP8_DEFAULT_CONFIG, E4M3, 0) and same.b_dtype == ""
    assert registry.operand_dtypes(registry.dtype_key(E5M2, E4M3)) == (E5M2, E4M3)


def test_fp8_references_are_the_bf16_ones_of_the_dequantized_operands():
    g = torch.Generator().manual_seed(0)
    splits = [70, 0, 130]
    x = torch.randn(200, 272, generator=g)
    w = torch.randn(3, 144, 272, generator=g) * 0.1
    xq, xs = quantize_1x128(x)
    parts = [quantize_128x128(w[e]) for e in range(3)]
    wq, ws = torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])
    xd = dequantize(xq, xs)
    rows = []
    for e, (start, n) in enumerate(zip((0, 70, 70), splits)):
        rows.append(xd[start:start + n] @ dequantize(wq[e], ws[e]).t())
    want = torch.cat(rows)
    fc2 = registry.get_kernel("fp8_fc2").reference(xq, xs, wq, ws, splits)
    fc1 = registry.get_kernel("fp8_fc1_srelu").reference(xq, xs, wq, ws, splits)
    assert rel_err(fc2, want) < 1e-6 and rel_err(fc1, torch.relu(want) ** 2) < 1e-6
    assert rel_err(fc2, registry.get_kernel("fc2").reference(x, w, splits)) > 1e-3  # the quantization is in it
    dense = registry.get_kernel("fp8_fc2").reference(xq, xs, wq[0], ws[0])
    assert rel_err(dense, xd @ dequantize(wq[0], ws[0]).t()) < 1e-6
    # the dgrad with the activation derivative: w the (N, K) copy of W2^T, preact (M, N)
    pre = torch.randn(200, 144, generator=g)
    dgrad = registry.get_kernel("fp8_dgrad_dact").reference(xq, xs, wq, ws, pre, splits)
    assert rel_err(dgrad, want * 2 * torch.relu(pre)) < 1e-6
    dense = registry.get_kernel("fp8_dgrad_dact").reference(xq, xs, wq[0], ws[0], pre)
    assert rel_err(dense, (xd @ dequantize(wq[0], ws[0]).t()) * 2 * torch.relu(pre)) < 1e-6


def test_tuned_fp8_entries_are_keyed_by_formats(root):
    shape = dict(m=8192, n=16384, k=4096)
    _write(root, "fp8_fc2", ShapeKey(E4M3, **shape), TUNED)
    _write(root, "fp8_fc2", ShapeKey(f"{E5M2}+{E4M3}", **shape), TUNED_MIXED)
    _write(root, "fc2", ShapeKey("bfloat16", **shape), GemmConfig(tile_n=192))
    look = lambda kernel, dtype: cl.lookup_config(kernel, arch="sm90", dtype=dtype, **shape)  # noqa: E731
    assert look("fp8_fc2", E4M3) == TUNED
    assert look("fp8_fc2", f"{E5M2}+{E4M3}") == TUNED_MIXED
    assert look("fp8_fc2", E5M2) == FP8_DEFAULT_CONFIG  # e5m2 x e5m2: no entry
    assert look("fp8_fc1_srelu", E4M3) == FP8_DEFAULT_CONFIG  # another kernel's file
    assert look("fc2", "bfloat16") == GemmConfig(tile_n=192)  # bf16 untouched
    # the op resolves the same: e4m3 x e4m3 and e5m2 x e4m3 launches
    assert _family_launch_key(FC2, 8192, 16384, 4096, 0, False, "e4m3", "e4m3", None, cl.tuned_root()).cfg == TUNED
    assert _family_launch_key(FC2, 8000, 16384, 4096, 0, False, "e5m2", "e4m3", None,
                              cl.tuned_root()).cfg == TUNED_MIXED  # nearest M
    assert _family_launch_key(FC1, 8192, 16384, 4096, 0, False, "e4m3", "e4m3", None,
                              cl.tuned_root()).cfg == FP8_DEFAULT_CONFIG


def test_bad_fp8_entries_are_skipped(root, caplog):
    path = file_path("sm90", "fp8_fc2", root)
    sk = ShapeKey(E4M3, 8192, 16384, 4096)
    with pytest.raises(TunedConfigError, match="cannot run"):
        parse_entry(path, sk.key(), make_record(sk, GemmConfig(), time_ms=1, default_time_ms=1, device="", dsl_version="",
                                                date="", trials=1), kernel="fp8_fc2")
    bf = ShapeKey("bfloat16", 8192, 16384, 4096)
    with pytest.raises(TunedConfigError, match="FP8"):
        parse_entry(path, bf.key(), make_record(bf, TUNED, time_ms=1, default_time_ms=1, device="", dsl_version="",
                                                date="", trials=1), kernel="fp8_fc2")
    _write(root, "fp8_fc2", sk, GemmConfig())  # merge_write does not validate: the reader must
    with caplog.at_level(logging.WARNING, logger="cute_kernels.config"):
        assert cl.lookup_config("fp8_fc2", arch="sm90", dtype=E4M3, m=8192, n=16384, k=4096) == FP8_DEFAULT_CONFIG
    assert "cannot run" in caplog.text


def test_explicit_fp8_config_is_checked_naming_the_argument(root):
    with pytest.raises(InputError, match="config: .*tile_k"):
        _family_launch_key(FC2, 256, 256, 256, 0, False, "e4m3", "e4m3", GemmConfig(), None)
    key = _family_launch_key(FC1, 256, 256, 256, 8, True, "e4m3", "e4m3", TUNED, None)
    assert key.cfg == TUNED and key.grouped and key.epi.quantized == "postact"


# ---------------------------------------------------------------- the first-use self-check gate
def test_fp8_variants_have_their_h200_evidence_and_bf16_keep_theirs():
    from cute_kernels import selfcheck
    from cute_kernels.selfcheck_table import fp8_variant_keys, variant_keys

    table = selfcheck.verified_table()
    fp8 = fp8_variant_keys("sm90")
    assert fp8 and all(k.block_scaled for k in fp8) and fp8_variant_keys("sm100") == []
    # the H200 runs of 2026-12-03 (hardware_verified.yaml) cover every sm90 FP8 variant the table builds,
    # the weight gradient with per-row B scales (both mainloops) and FC1 with the tanh clamp by entries of
    # their own (19:06 UTC run)
    rows = [k for k in fp8 if k.b_scale]
    assert sorted({k.b_scale for k in rows}) == ["row", "rows_staged"]
    assert all(k.cfg.tile_n == 128 and k.out_dtype == "float32" for k in rows)
    # the grouped weight gradient (grouped along K, "rows_staged"): its own evidence (H200 22:53 UTC,
    # after the empty first expert's K-start fix); the dense patterns do not cover it
    grouped_k = [k for k in rows if k.grouped_k]
    assert grouped_k and all(k.b_scale == "rows_staged" for k in grouped_k)
    assert all(selfcheck.is_verified("sm90", selfcheck.variant_name(k), table) for k in grouped_k)
    dense_rows = {"sm90": [p for p in table["sm90"] if not p.startswith("grouped_k/")]}
    assert not any(selfcheck.is_verified("sm90", selfcheck.variant_name(k), dense_rows) for k in grouped_k)
    # the weight gradients adding into main_grad (epilogue "identity+acc", dense and grouped): evidence of
    # their own (dense 22:10, grouped 22:53 UTC); the plain weight gradient's patterns do not cover them
    accumulate = [k for k in rows if k.epi.accumulate]
    assert sorted({(k.b_scale, k.grouped_k) for k in accumulate}) == [("row", False), ("rows_staged", False),
                                                                       ("rows_staged", True)]
    assert all(selfcheck.is_verified("sm90", selfcheck.variant_name(k), table) for k in accumulate)
    plain_rows = {"sm90": [p for p in table["sm90"] if "+acc" not in p and not p.startswith("grouped_k/")]}
    assert not any(selfcheck.is_verified("sm90", selfcheck.variant_name(k), plain_rows) for k in accumulate)
    # the scales staged in shared memory (the default on cooperative 128-row tiles): every epilogue kind
    # of the table has H200 evidence of its own (22:53 UTC); the global-load patterns do not cover them
    staged = [k for k in fp8 if k.scales_smem]
    assert staged and all(k.cfg.tile_m == 128 and k.cfg.schedule == "cooperative" and not k.b_scale for k in staged)
    assert {k.epi.kind for k in staged} == {"identity", "act", "dact"}
    assert all(selfcheck.is_verified("sm90", selfcheck.variant_name(k), table) for k in staged)
    global_loads = {"sm90": [p for p in table["sm90"] if "smemscales" not in p]}
    assert not any(selfcheck.is_verified("sm90", selfcheck.variant_name(k), global_loads) for k in staged)
    fp8 = [k for k in fp8 if not k.grouped_k and not k.epi.accumulate and not k.scales_smem]
    rows = [k for k in rows if not k.grouped_k and not k.epi.accumulate]
    # and the FP8 FC1 with the tanh clamp
    tanh = [k for k in fp8 if k.epi.activation != SRELU]
    assert {k.grouped for k in tanh} == {False, True} and all(k.epi.kind == "act" for k in tanh)
    assert all(selfcheck.is_verified("sm90", selfcheck.variant_name(k), table) for k in fp8)
    relu2_blocks = {"sm90": [p for p in table["sm90"] if "tanh" not in p and "scaledB" not in p]}
    assert not any(selfcheck.is_verified("sm90", selfcheck.variant_name(k), relu2_blocks) for k in rows + tanh), \
        "the relu^2 block-scaled patterns alone do not cover them"
    # a pattern of one operand format does not cover another's
    assert not selfcheck.is_verified("sm90", "dense/identity/cooperative-c1x2/float8_e5m2->bfloat16/akbk", table)
    bf16 = [k for k in variant_keys("sm90") if not k.block_scaled]
    assert all(selfcheck.is_verified("sm90", selfcheck.variant_name(k), table) for k in bf16)
    mixed = registry.kernel_key("fp8_fc2", "sm90", FP8_DEFAULT_CONFIG, f"{E5M2}+{E4M3}", 0)
    assert "/float8_e5m2xfloat8_e4m3fn->bfloat16/" in selfcheck.variant_name(mixed)


def test_quantized_output_has_its_own_tolerance():
    from cute_kernels.selfcheck import FP8_OUTPUT_TOLERANCE, CheckResult

    res = CheckResult("sm90", "v", {"preact": 1e-3, "postact": 0.07}, tolerance=2e-2,
                      tolerances={"postact": FP8_OUTPUT_TOLERANCE["e4m3"]})
    assert res.ok
    assert not CheckResult("sm90", "v", {"preact": 0.07}, tolerance=2e-2, tolerances={"postact": 0.1}).ok
    assert not CheckResult("sm90", "v", {"postact": 0.2}, tolerance=2e-2, tolerances={"postact": 0.1}).ok


@pytest.mark.parametrize("grouped", [False, True])
def test_family_launch_passes_the_self_check_gate_with_the_registry_key(grouped, monkeypatch):
    """fp8/ops._launch_family launches its plan through gemm_ops._launch_planned (whose first launch
    of a plan runs the self-check gate for its key, once), with the registry's key and the launch
    record the kernel takes (CPU tensors, the launch recorded instead of run)."""
    from cute_kernels import gemm_ops, selfcheck
    from cute_kernels.fp8.ops import Fp8Plan, _dense_b_views, _grouped_b_views, _launch_family, _new_scales
    from cute_kernels.host_args import splits_metadata

    gated, seen = [], []
    monkeypatch.setattr(gemm_ops, "_selfchecked", set())
    monkeypatch.setattr(selfcheck, "before_first_launch", lambda key, checked, launch: gated.append(key))
    monkeypatch.setattr(gemm_ops, "_max_clusters_arg", lambda index, size: (132, 132))
    monkeypatch.setattr(gemm_ops, "use_tvm_ffi", lambda: True)
    monkeypatch.setattr(gemm_ops, "get_compiled", lambda key: lambda *args: seen.append((key, GemmArgs(*args[:-1]))))
    g = torch.Generator().manual_seed(1)
    m, n, k, e = 200, 272, 272, 3
    xq, sx = quantize_1x128(torch.randn(m, k, generator=g))
    w = torch.randn(e, n, k, generator=g)
    parts = [quantize_128x128(w[i]) for i in range(e)]
    wq, ws = torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])
    if not grouped:
        wq, ws = wq[0], ws[0]
    key = _family_launch_key(FC1, m, n, k, e if grouped else 0, grouped, "e4m3", "e4m3", None, None)
    plan = Fp8Plan(key, FC1)
    pre = torch.empty(m, n, dtype=torch.bfloat16)
    q = torch.empty(m, n, dtype=torch.float8_e4m3fn)
    qs = _new_scales(m, 3, "cpu")
    b3, sb3 = _grouped_b_views(wq, ws, None) if grouped else _dense_b_views(wq, ws)
    cu = splits_metadata([70, 0, 130], key.cfg.tile_m, xq.device, key.cfg.cluster_m) if grouped else (None, None)
    for _ in range(2):
        _launch_family(plan, xq, sx, b3, sb3, pre, q, qs, cu)
    assert gated == [key]  # the gate once, before the plan's first launch
    (run_key, args), _ = seen
    registry_key = registry.kernel_key("fp8_fc1_srelu", "sm90", key.cfg, E4M3, e if grouped else 0)
    # the registry's key, with the scales staged in shared memory on cooperative 128-row tiles (the default)
    staged = key.cfg.schedule == "cooperative" and key.cfg.tile_m == 128
    assert run_key == key == dataclasses.replace(registry_key, scales_smem=staged)
    assert args.sa is sx and args.qs is qs and args.a.dtype == torch.uint8 and args.d1.dtype == torch.uint8
    assert args.d0.dtype == torch.bfloat16 and tuple(args.b.shape) == (n, k, e if grouped else 1)
    assert (args.cu_rows is not None) == grouped


def test_every_fp8_selfcheck_variant_is_one_its_config_can_run():
    """The self-check table builds only kernels their configs can run (H200 2026-12-03 22:33: the
    table's dsrelu dgrad on 128x256 tiles raised ConfigError inside `python -m cute_kernels.selfcheck`)."""
    from cute_kernels.compile import build_kernel
    from cute_kernels.selfcheck_table import fp8_variant_keys

    keys = fp8_variant_keys("sm90")
    assert any(k.cfg.tile_n == 256 for k in keys) and any(k.epi.kind == "dact" for k in keys)
    assert not any(k.epi.kind == "dact" and k.cfg.tile_n == 256 for k in keys)
    for key in keys:
        build_kernel(key)  # raises ConfigError for a config that cannot run the key's epilogue
