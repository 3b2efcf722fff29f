"""Flat tensor arguments (KernelKey.flat_args, CUTE_KERNELS_FLAT_ARGS=1), on CPU: the sm90 kernels that
take the 2-D tensors as stored compile for sm_90a to exactly the PTX of the 3-D kernels (the views are
built in the compiled host code, gemm_base/flat_args.py), the switch is read when a launch plan is made
and hands the kernels the caller's tensors themselves, and what has no flat kernel refuses it.  The
step's op counts with the switch on: tests/test_launch_plan.py; on the GPU: tests/test_flat_args_gpu.py."""
import contextlib
import dataclasses
from unittest import mock

import pytest
import torch

from cute_kernels import config_lookup, gemm_ops, launch_plan, selfcheck
from cute_kernels.compile import KernelKey, build_kernel, fake_arguments
from cute_kernels.config import ConfigError, GemmConfig
from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.inspect_ptx import find_ptxas, kernel_ptx, ptxas_info

# the bf16 step's kernels (dense and grouped; FC1 + srelu with preact, FC2 plain and reading the
# weight as its transpose, the fused dgrad, the weight gradients) and a gathering FC1
STEP_VARIANTS = {
    "fc1_dense": KernelKey("sm90", GemmConfig(tile_n=256, cluster_m=2, cluster_n=1),
                           EpilogueSpec("srelu", store_preact=True), False, "bfloat16", "k", "k"),
    "fc1_grouped_prob": KernelKey("sm90", GemmConfig(tile_n=256),
                                  EpilogueSpec("srelu", store_preact=True, row_scale=True), True, "bfloat16", "k", "k"),
    "fc2_dense": KernelKey("sm90", GemmConfig(tile_m=64, tile_n=256, schedule="pingpong", cluster_m=1, cluster_n=2),
                           EpilogueSpec("identity"), False, "bfloat16", "k", "k"),
    "fc2_grouped": KernelKey("sm90", GemmConfig(tile_m=64, tile_n=256, schedule="pingpong"),
                             EpilogueSpec("identity"), True, "bfloat16", "k", "k"),
    "fc1_dgrad_dense_w_transposed": KernelKey("sm90", GemmConfig(tile_n=256, cluster_m=2, cluster_n=1),
                                              EpilogueSpec("identity"), False, "bfloat16", "k", "n"),
    "dgrad_dense_postact": KernelKey("sm90", GemmConfig(tile_n=256, cluster_m=2, cluster_n=1),
                                     EpilogueSpec("dsrelu", store_postact=True), False, "bfloat16", "k", "n"),
    "dgrad_grouped_prob_rowsum": KernelKey("sm90", GemmConfig(tile_n=128, cluster_n=2),
                                           EpilogueSpec("dsrelu", store_postact=True, row_scale=True, row_sum=True),
                                           True, "bfloat16", "k", "n"),
    "wgrad_dense": KernelKey("sm90", GemmConfig(), EpilogueSpec("identity"), False, "bfloat16", "m", "n"),
    "wgrad_dense_fp32_accumulate": KernelKey("sm90", GemmConfig(), EpilogueSpec("identity", accumulate=True),
                                             False, "bfloat16", "m", "n", out_dtype="float32"),
    "wgrad_grouped_k": KernelKey("sm90", GemmConfig(cluster_m=2, cluster_n=1), EpilogueSpec("identity"), False,
                                 "bfloat16", "m", "n", out_dtype="float32", grouped_k=True),
    "wgrad_grouped_k_fp16_accumulate": KernelKey("sm90", GemmConfig(tile_n=128, cluster_n=1),
                                                 EpilogueSpec("identity", accumulate=True), False, "float16", "m", "n",
                                                 grouped_k=True),
    "fc1_grouped_gather": KernelKey("sm90", GemmConfig(tile_n=256), EpilogueSpec("srelu", store_preact=True), True,
                                    "bfloat16", "k", "k", gather_a=True),
    "fp16_a_m_major": KernelKey("sm90", GemmConfig(tile_n=256, cluster_m=1, cluster_n=2),
                                EpilogueSpec("srelu", store_preact=True), False, "float16", "m", "k"),
}


def _flat(key: KernelKey) -> KernelKey:
    return dataclasses.replace(key, flat_args=True)


@pytest.mark.parametrize("name", list(STEP_VARIANTS))
def test_flat_kernel_compiles_to_the_3d_kernels_ptx(name):
    """The device code cannot tell: the views built in __call__ have the layouts (and the same
    symbolic strides) the 3-D arguments had, so the PTX is byte-for-byte the 3-D kernel's (same
    instructions, registers, no spills)."""
    key = STEP_VARIANTS[name]
    flat_ptx = kernel_ptx(_flat(key))
    assert flat_ptx == kernel_ptx(key)
    assert "wgmma.mma_async" in flat_ptx and ".local" not in flat_ptx
    if find_ptxas() is not None:
        info = ptxas_info(flat_ptx)
        assert info.spill_store_bytes == 0 and info.spill_load_bytes == 0 and info.stack_bytes == 0, info.raw[-600:]


def test_a_wrong_view_changes_the_ptx(monkeypatch):
    """(What makes the identity above mean something: the flat kernel's views are traced, e.g. an
    M-major A viewed as K-major compiles to other code.)"""
    from cute_kernels.gemm_base import flat_args

    key = STEP_VARIANTS["wgrad_dense"]
    right = kernel_ptx(_flat(key))
    view = flat_args.flat_view
    monkeypatch.setattr(flat_args, "flat_view", lambda t, transposed: view(t, False))
    assert kernel_ptx(_flat(key)) != right


@pytest.mark.parametrize("name", ["fc1_dense", "fc2_grouped", "dgrad_grouped_prob_rowsum", "wgrad_dense",
                                  "wgrad_dense_fp32_accumulate", "wgrad_grouped_k", "wgrad_grouped_k_fp16_accumulate",
                                  "fc1_grouped_gather"])
def test_flat_fakes_are_the_tensors_as_stored(name):
    """Row-major stand-ins as stored: 2-D for A, the outputs, the epilogue input and a dense B, (E, rows,
    cols) for B grouped along M and the outputs grouped along K; an M-/N-major operand as its
    (K, rows) storage.  The vectors keep their stand-ins."""
    key = STEP_VARIANTS[name]
    flat, full = fake_arguments(_flat(key)), fake_arguments(key)
    for field in ("a", "b", "d0", "d1", "aux"):
        f, t = getattr(flat, field), getattr(full, field)
        assert (f is None) == (t is None), field
        if f is None:
            continue
        per_expert = (field == "b" and key.grouped) or (field in ("d0", "d1", "aux") and key.grouped_k)
        assert len(t.shape) == 3 and len(f.shape) == (3 if per_expert else 2), field
        assert f.stride[-1] == 1, f"{field}: row-major as stored"
        major = {"a": key.a_major, "b": key.b_major}.get(field, "k")
        rows, cols = (t.shape[0], t.shape[1]) if major == "k" else (t.shape[1], t.shape[0])
        assert [str(d) for d in f.shape[-2:]] == [str(rows), str(cols)], field
        if per_expert:
            assert str(f.shape[0]) == str(t.shape[2]), field
    for field in ("scale", "rowsum", "cu_rows", "cu_tiles", "desc_ws", "a_rows"):
        assert (getattr(flat, field) is None) == (getattr(full, field) is None), field


def test_only_the_sm90_bf16_kernels_take_flat_arguments():
    sm100 = KernelKey("sm100", GemmConfig(), EpilogueSpec("identity"), False, "bfloat16", "k", "k", flat_args=True)
    with pytest.raises(ConfigError, match="flat_args"):
        build_kernel(sm100)
    fp8 = KernelKey("sm90", GemmConfig(tile_n=128), EpilogueSpec("identity"), False, "float8_e4m3fn", "k", "k",
                    flat_args=True)
    with pytest.raises(ConfigError, match="flat_args"):
        build_kernel(fp8)


def test_the_switch_is_read_when_a_plan_is_made(monkeypatch):
    key = STEP_VARIANTS["fc1_dense"]
    monkeypatch.delenv(gemm_ops.FLAT_ARGS_ENV, raising=False)
    assert gemm_ops._planned_key(key) is key  # off by default
    monkeypatch.setenv(gemm_ops.FLAT_ARGS_ENV, "1")
    assert gemm_ops._planned_key(key) == _flat(key)
    sm100 = dataclasses.replace(key, arch="sm100")
    assert gemm_ops._planned_key(sm100) is sm100  # no flat kernel there: the 3-D one
    fp8 = dataclasses.replace(key, dtype="float8_e4m3fn")
    assert gemm_ops._planned_key(fp8) is fp8


def test_flat_variants_have_their_own_self_check_evidence():
    """A flat kernel is not covered by its 3-D twin's hardware evidence: its first launch is
    self-checked (selfcheck.run_variant hands it the 2-D tensors)."""
    key = STEP_VARIANTS["fc1_dense"]
    assert selfcheck.variant_name(_flat(key)) == selfcheck.variant_name(key).replace("bfloat16->", "bfloat16+flat->")
    assert not selfcheck.is_verified("sm90", selfcheck.variant_name(_flat(key)), selfcheck.verified_table())


@pytest.mark.parametrize("name", ["fc1_grouped_prob", "dgrad_dense_postact", "wgrad_dense_fp32_accumulate",
                                  "wgrad_grouped_k_fp16_accumulate", "fc1_grouped_gather", "fp16_a_m_major"])
def test_the_self_check_hands_a_flat_kernel_the_tensors_as_stored(name, monkeypatch):
    """selfcheck.run_variant (a flat variant's first launch on a GPU) launches it with the tensors as
    stored, as the entry points do (on CPU: the launch recorded, not run)."""
    key = _flat(STEP_VARIANTS[name])
    handed = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    selfcheck.run_variant(key, launch=lambda k, args: handed.append(args), device="cpu")
    (args,) = handed
    per_expert = 3 if key.grouped_k else 2
    assert args.a.dim() == 2 and args.a.stride(-1) == 1
    assert args.b.dim() == (3 if key.grouped else 2) and args.b.stride(-1) == 1
    for t in (args.d0, args.d1, args.aux):
        assert t is None or (t.dim() == per_expert and t.stride(-1) == 1)
    if key.epi.accumulate:
        assert args.aux is args.d0
    if key.gather_a:
        assert args.a.size(0) > args.a_rows.numel()  # the un-gathered rows


def test_the_self_check_table_lists_the_flat_variants():
    """`python -m cute_kernels.selfcheck --flat`: every bf16 variant's flat kernel on sm90, none on sm100."""
    from cute_kernels.selfcheck_table import flat_variant_keys, variant_keys

    bf16 = [k for k in variant_keys("sm90", quick=True) if not k.block_scaled]
    flat = flat_variant_keys("sm90", quick=True)
    assert flat == [_flat(k) for k in bf16] and len({selfcheck.variant_name(k) for k in flat}) == len(flat)
    assert all("+flat->" in selfcheck.variant_name(k) for k in flat)
    assert flat_variant_keys("sm100") == []


M, H, F, E = 272, 136, 200, 4  # not tile multiples
SPLITS = [0, 130, 1, 141]


@contextlib.contextmanager
def _recorded_launches():
    """The stubbed launch path (benchmarks.bench_host_path.stubbed_kernels) recording each launch's
    (key, arguments)."""
    from benchmarks.bench_host_path import stubbed_kernels

    launches = []

    def compiled(key):
        return lambda *args: launches.append((key, args))

    with stubbed_kernels(), mock.patch.object(gemm_ops, "get_compiled", compiled), \
            mock.patch.object(selfcheck, "is_verified", lambda arch, variant, table: True), \
            mock.patch.object(gemm_ops, "_selfchecked", set()):
        yield launches


def _same(t, given):
    return (isinstance(t, torch.Tensor) and t.data_ptr() == given.data_ptr() and t.shape == given.shape
            and t.stride() == given.stride())


@pytest.mark.parametrize("grouped", [False, True])
def test_flat_plans_hand_the_kernels_the_tensors_as_they_are(grouped, monkeypatch):
    monkeypatch.setenv(gemm_ops.FLAT_ARGS_ENV, "1")
    splits = list(SPLITS) if grouped else None
    x = torch.randn(M, H).bfloat16()
    w1 = torch.randn(*((E, F, H) if grouped else (F, H))).bfloat16()
    w2 = torch.randn(*((E, H, F) if grouped else (H, F))).bfloat16()
    dy = torch.randn(M, H).bfloat16()
    prob = torch.rand(M)
    with _recorded_launches() as launches:
        for _ in range(2):  # the plan's first call and a repeated one
            launches.clear()
            pre, post = gemm_ops.fc1_srelu(x, w1, m_splits=splits, prob=prob)
            y = gemm_ops.fc2(post, w2, m_splits=splits)
            dpre, post2, _ = gemm_ops.fc2_dgrad_dsrelu(dy, w2, pre, m_splits=splits, prob=prob, store_postact=True)
            dx = gemm_ops.fc2(dpre, w1, m_splits=splits, transpose_w=True)
            dw2 = gemm_ops.weight_grad(dy, post2, m_splits=splits)
            dw1 = gemm_ops.weight_grad(dpre, x, m_splits=splits)
            assert len(launches) == 6 and all(key.flat_args for key, _ in launches)
            (_, fc1), (_, fc2), (_, dgrad), (_, fc1_dgrad), (_, wgrad2), (_, wgrad1) = launches
            assert _same(fc1[0], x) and _same(fc1[2], pre) and _same(fc1[3], post)
            assert _same(fc2[0], post) and _same(fc2[2], y)
            assert _same(dgrad[0], dy) and _same(dgrad[2], dpre) and _same(dgrad[3], post2) and _same(dgrad[5], pre)
            assert _same(fc1_dgrad[0], dpre) and _same(fc1_dgrad[2], dx)
            # the weight gradients: A = dy^T and B = x^T as dy and x themselves
            assert _same(wgrad2[0], dy) and _same(wgrad2[1], post2) and _same(wgrad1[0], dpre) and _same(wgrad1[1], x)
            # the weights (FC2's dgrad and FC1's: w2 and w1 as stored, read as their transposes) and the
            # weight gradients ((E, N, K) per expert) as they are too
            assert _same(fc1[1], w1) and _same(fc2[1], w2) and _same(dgrad[1], w2) and _same(fc1_dgrad[1], w1)
            assert _same(wgrad2[2], dw2) and _same(wgrad1[2], dw1)


def test_plans_made_before_the_switch_keep_their_kernels(monkeypatch):
    """The switch is read as a plan is made: flipping it changes new plans only (config_lookup.
    clear_cache drops the old ones)."""
    monkeypatch.delenv(gemm_ops.FLAT_ARGS_ENV, raising=False)
    x, w = torch.randn(M, H).bfloat16(), torch.randn(F, H).bfloat16()
    with _recorded_launches() as launches:
        gemm_ops.fc2(x, w)
        monkeypatch.setenv(gemm_ops.FLAT_ARGS_ENV, "1")
        gemm_ops.fc2(x, w)
        assert [key.flat_args for key, _ in launches] == [False, False]
        assert launches[0][1][0].dim() == 3
        config_lookup.clear_cache()
        assert launch_plan.size() == 0
        gemm_ops.fc2(x, w)
        assert launches[-1][0].flat_args and _same(launches[-1][1][0], x)
