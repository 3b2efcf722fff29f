"""The dispatch gather fused into the grouped FC1's A loads (KernelKey.gather_a, issue 28), on CPU:
the gathering variants compile for sm_90a and their PTX loads A by cp.async (no TMA load of A)
without spills; the kernel key refuses what has no gathering kernel; fc1_srelu's a_rows checks
name the argument.  The GPU comparisons are in tests/test_gather_gpu.py."""
import contextlib
import re

import pytest
import torch

from cute_kernels import InputError
from cute_kernels.compile import KernelKey, build_kernel, fake_arguments
from cute_kernels.config import ConfigError, GemmConfig
from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.gemm_ops import fc1_srelu
from cute_kernels.inspect_ptx import find_ptxas, kernel_ptx, ptxas_info
from cute_kernels.selfcheck import is_verified, variant_name, verified_table

EPILOGUES = {
    "act": EpilogueSpec("act"),
    "act_preact": EpilogueSpec("act", store_preact=True),
    "act_preact_prob": EpilogueSpec("act", store_preact=True, row_scale=True),
}
CONFIGS = {
    "coop128x256-c1x1": GemmConfig(tile_m=128, tile_n=256, cluster_m=1, cluster_n=1),
    "coop128x256-c2x1": GemmConfig(tile_m=128, tile_n=256, cluster_m=2, cluster_n=1),  # B multicast
    "coop128x128-c1x2-k128": GemmConfig(tile_m=128, tile_n=128, tile_k=128, cluster_m=1, cluster_n=2),
    "pingpong64x256-c1x2": GemmConfig(tile_m=64, tile_n=256, schedule="pingpong", cluster_m=1, cluster_n=2),
}
VARIANTS = [("act_preact_prob", c) for c in CONFIGS] + [("act", "coop128x256-c1x1"),
                                                         ("act_preact", "pingpong64x256-c1x2")]


def _key(epi="act_preact", cfg="coop128x256-c1x1", **kw):
    args = dict(arch="sm90", cfg=CONFIGS[cfg], epi=EPILOGUES[epi], grouped=True, dtype="bfloat16", a_major="k",
                b_major="k", gather_a=True)
    args.update(kw)
    return KernelKey(**args)


@pytest.mark.parametrize("epi,cfg", VARIANTS, ids=[f"{e}-{c}" for e, c in VARIANTS])
def test_gathering_variant_loads_a_by_cp_async(epi, cfg):
    key = _key(epi, cfg)
    ptx = kernel_ptx(key)
    lines = ptx.splitlines()
    copies = [l for l in lines if re.search(r"\bcp\.async\.cg\.shared\.global\b", l)]
    arrives = [l for l in lines if "cp.async.mbarrier.arrive.noinc" in l]
    tma_loads = [l for l in lines if "cp.async.bulk.tensor" in l and "mbarrier::complete_tx" in l]
    assert copies and arrives, "A's rows by 16-byte cp.async, completing on the stage barrier"
    assert all(", 16, %r" in l for l in copies), "every A copy has a source size (zero fill past K)"
    cfg_ = key.cfg
    chunks = cfg_.tile_m * cfg_.tile_k * 2 // 16 // 128  # 16-byte chunks per thread and stage
    assert len(copies) == chunks * len(arrives), (len(copies), chunks, len(arrives))
    # per stage fill (one arrive of the gathering threads) only B's TMA boxes (one per 128 bytes
    # of K, the swizzle width): none of A
    b_boxes = cfg_.tile_k * 2 // 128
    assert len(tma_loads) == b_boxes * len(arrives), (len(tma_loads), b_boxes, len(arrives))
    assert "fence.proxy.async.shared::cta" in ptx, "consumers order cp.async's writes before WGMMA reads them"
    assert re.search(r"setmaxnreg\.dec\.sync\.aligned\.u32\s+40;", ptx)
    assert re.search(r"setmaxnreg\.inc\.sync\.aligned\.u32\s+232;", ptx)
    assert f"wgmma.mma_async.sync.aligned.m64n{cfg_.tile_n}k16.f32.bf16.bf16" in ptx
    assert ".local" not in ptx
    if find_ptxas() is not None:
        info = ptxas_info(ptx)
        assert info.spill_store_bytes == 0 and info.spill_load_bytes == 0, info.raw[-600:]
        assert info.stack_bytes == 0, info.raw[-600:]


def test_plain_variant_has_no_cp_async():
    ptx = kernel_ptx(_key(gather_a=False))
    assert "cp.async.cg" not in ptx and "cp.async.mbarrier" not in ptx


@pytest.mark.parametrize("kw,match", [
    (dict(grouped=False), "grouped along M"),
    (dict(a_major="m"), "K-major A"),
    (dict(arch="sm100"), "no gathered-A GEMM"),
])
def test_key_refuses_what_has_no_gathering_kernel(kw, match):
    key = _key(**kw)
    if kw.get("arch") == "sm100":
        from cute_kernels.sm100.config import Sm100Config

        key = KernelKey("sm100", Sm100Config(), EPILOGUES["act"], True, "bfloat16", "k", "k", gather_a=True)
    with pytest.raises(ConfigError, match=match):
        build_kernel(key)


def test_key_refuses_k_grouped_and_fp8():
    with pytest.raises((ConfigError, ValueError), match="grouped"):
        build_kernel(KernelKey("sm90", GemmConfig(), EpilogueSpec("identity"), False, "bfloat16", "m", "n",
                               grouped_k=True, gather_a=True))
    with pytest.raises(ConfigError, match="bf16/fp16"):
        build_kernel(KernelKey("sm90", GemmConfig(tile_k=128), EPILOGUES["act_preact"], True, "float8_e4m3fn", "k",
                               "k", out_dtype="bfloat16", gather_a=True))


def test_fake_arguments_give_a_its_own_row_count():
    args = fake_arguments(_key())
    assert args.a_rows is not None
    assert str(args.a.shape[0]) != str(args.d0.shape[0])  # T tokens vs M rows of the problem
    assert str(args.a_rows.shape[0]) == str(args.d0.shape[0])
    assert fake_arguments(_key(gather_a=False)).a_rows is None


def test_gathering_variant_needs_its_own_hardware_evidence():
    """The variant name says gather, so the plain sm90 evidence does not cover it; the H200 run of
    tests/test_gather_gpu.py (2026-12-03) is its own entry in hardware_verified.yaml."""
    gather, plain = variant_name(_key()), variant_name(_key(gather_a=False))
    assert gather != plain and "gather" in gather
    assert not is_verified("sm90", gather, {"sm90": ["*/bfloat16->*", "*/float16->*"]})
    table = verified_table()
    assert is_verified("sm90", plain, table) and is_verified("sm90", gather, table)


# ------------------------------------------------------------------ fc1_srelu(a_rows=...) checks (CPU tensors:
# the checks run before the device is needed)
def _operands(t=10, k=32, n=24, e=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(t, k, generator=g).to(torch.bfloat16)
    w1 = torch.randn(e, n, k, generator=g).to(torch.bfloat16)
    return x, w1


@pytest.mark.parametrize("rows,splits,match", [
    (torch.tensor([0, 1, 2.0]), [1, 1, 1], "a_rows dtype must be int32 or int64"),
    (torch.zeros(2, 2, dtype=torch.int32), [1, 2, 1], "a_rows must be 1-D"),
    ([0, 1, 2], [1, 1, 1], "a_rows must be a torch.Tensor"),
    (torch.tensor([0, 10, 3], dtype=torch.int32), [1, 1, 1], r"a_rows holds row index 10 at \[1\], outside \[0, 10\)"),
    (torch.tensor([0, -1, 3]), [1, 1, 1], r"a_rows holds row index -1"),
    (torch.tensor([0, 1, 3, 4], dtype=torch.int32), [1, 1, 1], "a_rows has 4 entries but m_splits sum to 3"),
])
def test_a_rows_errors_name_the_argument(rows, splits, match):
    x, w1 = _operands()
    with pytest.raises(InputError, match=match):
        fc1_srelu(x, w1, m_splits=splits, a_rows=rows)


def test_a_rows_needs_m_splits_and_a_k_major_x():
    x, w1 = _operands()
    rows = torch.tensor([0, 1, 2], dtype=torch.int32)
    with pytest.raises(InputError, match="a_rows .* needs m_splits"):
        fc1_srelu(x, w1[0], a_rows=rows)
    xt = torch.randn(32, 16).to(torch.bfloat16).t()  # (16, 32) contiguous along M
    with pytest.raises(InputError, match="x must be row-major"):
        fc1_srelu(xt, w1, m_splits=[1, 1, 1], a_rows=rows)


def test_a_rows_device_must_match():
    x, w1 = _operands()
    rows = torch.tensor([0, 1, 2], dtype=torch.int32, device="meta")
    with pytest.raises(InputError, match="a_rows is on meta"):
        fc1_srelu(x, w1, m_splits=[1, 1, 1], a_rows=rows)


def test_valid_a_rows_reach_the_device_check():
    """Checked indices (int64 too; rows taken twice, some never) pass; the CPU tensors then fail
    where every kernel call does."""
    x, w1 = _operands()
    with pytest.raises(InputError, match="x is a CPU tensor"):
        fc1_srelu(x, w1, m_splits=[2, 0, 3], a_rows=torch.tensor([9, 9, 0, 4, 1]))



def test_moe_fused_gather_option_is_checked():
    from cute_kernels.moe import routed_srelu_experts

    x, w1 = _operands(k=16, n=8)
    w2 = torch.randn(3, 16, 8).to(torch.bfloat16)
    idx = torch.zeros(10, 2, dtype=torch.int64)
    with pytest.raises(InputError, match="fused_gather must be a bool"):
        routed_srelu_experts(x, idx, torch.rand(10, 2), w1, w2, backend="torch", fused_gather="yes")


def _routed_operands(t, e, k, h, f):
    """hidden (t, h) bf16, top-k expert ids (expert e-1 stays empty), fp32 router weights, w1, w2."""
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(t, h, generator=g).to(torch.bfloat16)
    idx = torch.stack([torch.randperm(e - 1, generator=g)[:k] for _ in range(t)])
    weight = torch.rand(t, k, generator=g)
    w1 = (torch.randn(e, f, h, generator=g) / h ** 0.5).to(torch.bfloat16)
    w2 = (torch.randn(e, h, f, generator=g) / f ** 0.5).to(torch.bfloat16)
    return hidden, idx, weight, w1, w2


@contextlib.contextmanager
def _cute_plumbing_on_cpu():
    """routed_srelu_experts(backend="cute") on CPU: the custom ops run their torch math and the
    gathered FC1 is stood in for by the same math on x[a_rows]; yields the a_rows lengths it was called with."""
    from unittest import mock

    from cute_kernels import gemm_ops, mlp, moe, torch_ops
    from cute_kernels.torch_ops import activation_arg

    calls = []

    def gathered_fc1(x, w1, *, m_splits, prob, store_preact, activation, a_rows):
        assert a_rows.dtype == torch.int32 and a_rows.numel() == int(m_splits.sum())
        calls.append(a_rows.numel())
        return torch_ops._fc1_srelu_fwd(x.index_select(0, a_rows.long()), w1, None, prob, store_preact,
                                        splits_t=m_splits, activation=activation_arg(activation))

    with mock.patch.object(moe, "uses_cute_path", lambda x, backend: True), \
            mock.patch.object(mlp, "uses_cute_path", lambda x, backend: True), \
            mock.patch.object(moe, "_check_expert_ids", lambda *a, **kw: None), \
            mock.patch.object(gemm_ops, "fc1_srelu", gathered_fc1):
        yield calls


@pytest.mark.parametrize("fuse_wgrad", [False, True])
def test_moe_fused_gather_plumbing_gives_the_same_bits(fuse_wgrad):
    """routed_srelu_experts(fused_gather=True) through the cute path's plumbing on CPU (the custom
    ops run their torch math; the gathered FC1 stood in for by the same math on x[a_rows]): y and
    every gradient bitwise those of the x_perm path."""
    from cute_kernels import moe

    t, k, h = 37, 3, 16
    hidden, idx, weight, w1, w2 = _routed_operands(t, e=6, k=k, h=h, f=24)
    dy = torch.randn(t, h, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)

    def run(fused):
        leaves = [v.clone().requires_grad_() for v in (hidden, weight, w1, w2)]
        if fuse_wgrad:
            for w in leaves[2:]:
                w.main_grad = torch.zeros(w.shape, dtype=torch.float32)
        y = moe.routed_srelu_experts(leaves[0], idx, leaves[1], leaves[2], leaves[3], backend="cute",
                                     fused_gather=fused, fuse_wgrad_accumulation=fuse_wgrad)
        y.backward(dy)
        grads = [v.grad for v in leaves[:2]]
        grads += [w.main_grad if fuse_wgrad else w.grad for w in leaves[2:]]
        return [y] + grads

    with _cute_plumbing_on_cpu() as calls:
        base = run(False)
        assert calls == []
        fused = run(True)
    assert calls == [t * k]
    for a, b in zip(fused, base):
        assert a is not None and torch.equal(a, b)


@pytest.mark.parametrize("recompute_postact", [False, True])
def test_moe_fused_gather_saves_no_gathered_copy(recompute_postact):
    """What one forward of routed_srelu_experts saves for backward (distinct storages, weights
    excluded; benchmarks/saved_storage.py), on the cute path's plumbing: with fused_gather exactly
    hidden (T, H), preact and postact (M = T*k rows of F; postact not with recompute_postact),
    prob (M,) and three index vectors of M (the FC1 rows, the combine's token ids, the sorted
    order for prob's gradient); never an (M, H) tensor.  The x_perm path saves x_perm (M, H) and
    not hidden."""
    from benchmarks.saved_storage import saved_storages
    from cute_kernels import moe

    t, e, k, h, f = 29, 5, 3, 40, 24
    m = t * k
    hidden, idx, weight, w1, w2 = _routed_operands(t, e, k, h, f)
    for leaf in (hidden, weight, w1, w2):
        leaf.requires_grad_()

    def saved(fused):
        with _cute_plumbing_on_cpu() as calls:
            _, s = saved_storages(lambda: moe.routed_srelu_experts(hidden, idx, weight, w1, w2, backend="cute",
                                                                   fused_gather=fused,
                                                                   recompute_postact=recompute_postact),
                                  exclude=(w1, w2))
        assert calls == ([m] if fused else [])
        return sorted((tuple(shape), dtype) for nb, views in s.largest(100) for shape, dtype in views[:1]), s.nbytes

    postact = [((m, f), "bfloat16")] * (not recompute_postact)
    fused, fused_bytes = saved(True)
    want = sorted([((t, h), "bfloat16"), ((m, f), "bfloat16"), *postact, ((m,), "float32"), ((m,), "int32"),
                   ((m,), "int64"), ((m,), "int64")])
    assert fused == want
    assert fused_bytes == t * h * 2 + m * f * 2 * (2 - recompute_postact) + m * (4 + 4 + 8 + 8)
    xperm, xperm_bytes = saved(False)
    assert ((m, h), "bfloat16") in xperm and ((t, h), "bfloat16") not in xperm
    assert xperm_bytes - fused_bytes == m * h * 2 - t * h * 2 + m * (8 - 4)  # x_perm for hidden, int64 inverse for int32 rows
