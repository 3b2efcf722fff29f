"""The FP8 step's host path on CPU with its kernels stubbed (benchmarks.bench_host_path.stubbed_kernels):
how many torch ops one grouped srelu_mlp(fp8=...) step dispatches, and the views its launches take.

The FP8 GEMMs, the quantization kernels and the weight-gradient kernel are stand-ins that write
nothing; the rest of the kernel path (checks, allocations, views, launch keys) runs as on the GPU."""
import dataclasses
from unittest import mock

import pytest
import torch

from benchmarks.bench_host_path import fp8_step_call, stubbed_kernels
from cute_kernels import gemm_ops, selfcheck
from cute_kernels.fp8 import quantize_ops
from cute_kernels.gemm_base.launch_args import GemmArgs

# E=4 with an empty and a one-token expert; H a multiple of 128 as the 2688 (x's dequantization
# for the bf16 weight gradient then broadcasts its scales), F only of 16
SHAPE = {"name": "small grouped fp8", "m": 272, "h": 256, "f": 208, "e": 4, "splits": [0, 130, 1, 141]}
DENSE = {"name": "small dense fp8", "m": 272, "h": 256, "f": 208, "e": 0}
# top-level torch ops of one FP8 step (wgrad="bf16") before / after issue 26's host cuts:
# grouped (E=8-style) 117 -> 82, dense 142 -> 94; with the dequantization kernel and the rows-only
# quantizer on by default (2026-12-03): 75 and 87; the rows-only kernel's unused arguments kept: 69 and 81
MAX_TORCH_OPS = {"grouped": 69, "dense": 81}
IS_VERIFIED = selfcheck.is_verified  # the real evidence lookup (the `stubbed` fixture replaces it)


@pytest.fixture
def stubbed():
    with stubbed_kernels() as launches, mock.patch.object(selfcheck, "is_verified", lambda *a: True), \
            mock.patch.object(gemm_ops, "_selfchecked", set()):
        yield launches


@pytest.mark.parametrize("kind", ["grouped", "dense"])
def test_the_fp8_step_dispatches_at_most_its_counted_torch_ops(stubbed, kind):
    """Regression guard: a new per-launch view, cast or copy on the FP8 kernel path shows up here."""
    from benchmarks.op_profile import profile_step_ops

    summary = profile_step_ops(fp8_step_call(SHAPE if kind == "grouped" else DENSE), steps=2, warmup=2, cuda=False)
    ops = {name: n for name, n, _, _ in summary["torch_ops"]}
    # no same-dtype casts, no transposes made to be viewed again, no copies of scales, no unread slices
    assert not {"aten::t", "aten::transpose", "aten::contiguous", "aten::clone", "aten::copy_", "aten::slice",
                "aten::select", "aten::_to_copy"} & set(ops), ops
    # x's dequantization for the bf16 weight gradient: the kernel (default), or the torch form's FP8 -> fp32 copy
    assert ops.get("aten::to", 0) == (0 if quantize_ops.dequantize_kernel_enabled() else 1), ops
    assert summary["counts"]["torch_ops"] <= MAX_TORCH_OPS[kind], ops


def test_the_stubbed_fp8_step_runs_every_kernel(stubbed):
    """One step: 3 activation quantizations (x, dy, dpreact), 2 one-pass weight quantizations, 4 FP8
    GEMMs (FC1, FC2, the fused FC2 dgrad, the FC1 dgrad) and 2 bf16 weight gradients."""
    calls = []
    with mock.patch.object(quantize_ops, "get_compiled",
                           lambda fmt, pow2, weight=False, **kw: lambda *args: calls.append(weight)):
        fp8_step_call(SHAPE)()
    assert sorted(calls) == [False, False, False, True, True]
    fp8_gemms = [key for key, _ in stubbed if key.dtype.startswith("float8")]
    assert len(fp8_gemms) == 4 and len(stubbed) == 6, stubbed


def test_grouped_launches_take_the_weight_copies_own_views(stubbed):
    """The one-pass weight kernel's (N, K, E) uint8 views of each copy and (NB, KB, E) views of its
    scales are the very tensors the grouped FP8 GEMMs get as B (made once per step, not per launch)."""
    weight_args, gemm_args = [], []
    with mock.patch.object(quantize_ops, "get_compiled", lambda fmt, pow2, weight=False, **kw:
                           (lambda *args: weight_args.append(args)) if weight else (lambda *args: None)), \
            mock.patch.object(gemm_ops, "get_compiled", lambda key: lambda *args: gemm_args.append((key, args))):
        fp8_step_call(SHAPE)()
    made = {id(t) for args in weight_args for t in args[1:]}  # q, s, qt, st of W1 and W2
    fp8 = [args for key, args in gemm_args if key.dtype.startswith("float8")]
    assert len(made) == 8 and len(fp8) == 4
    for args in fp8:  # GemmArgs in order, then the max-clusters argument
        b, sb = args[GemmArgs._fields.index("b")], args[GemmArgs._fields.index("sb")]
        assert id(b) in made and id(sb) in made and b.dtype == torch.uint8


def test_views_that_are_not_the_weights_are_refused():
    from cute_kernels import InputError
    from cute_kernels.fp8.ops import _grouped_b_views

    w = torch.empty(3, 32, 48, dtype=torch.float8_e4m3fn)
    sw = torch.empty(3, 2, 3)
    b3, sb3 = _grouped_b_views(w, sw, None)
    assert _grouped_b_views(w, sw, (b3, sb3)) == (b3, sb3)
    other = torch.empty(3, 32, 48, dtype=torch.float8_e4m3fn)
    with pytest.raises(InputError, match="w_views"):
        _grouped_b_views(w, sw, _grouped_b_views(other, sw, None))
    with pytest.raises(InputError, match="sw_views"):
        _grouped_b_views(w, sw, (b3, sw.clone().permute(1, 2, 0)))  # another storage
    with pytest.raises(InputError, match="sw_views"):
        _grouped_b_views(w, sw, (b3, sw.transpose(1, 2)))  # sw's storage, another view


def test_a_weight_copys_own_views_are_taken_as_made_and_others_checked():
    """LaunchViews made with (q, scales) are taken for that q and scales without the layout
    comparison; given with any other pair they are checked as any views (and refused)."""
    from cute_kernels import InputError
    from cute_kernels.fp8.ops import LaunchViews, _grouped_b_views

    w, other = (torch.empty(3, 32, 48, dtype=torch.float8_e4m3fn) for _ in range(2))
    sw = torch.empty(3, 2, 3)
    own = LaunchViews(*_grouped_b_views(w, sw, None), of=(w, sw))
    assert _grouped_b_views(w, sw, own) is own
    with pytest.raises(InputError, match="w_views"):
        _grouped_b_views(other, sw, own)
    with pytest.raises(InputError, match="w_views"):  # made for another weight, labelled as w's: still checked
        _grouped_b_views(w, sw, LaunchViews(*_grouped_b_views(other, sw, None), of=(other, sw)))


@pytest.mark.parametrize("shape", [(16, 16), (16, 48), (272, 400), (1, 1)])
def test_one_expert_view_is_the_stacks_view(shape):
    """quantize_ops._as_one_expert (one torch op) gives the weight kernel the view of a one-expert stack
    that t.unsqueeze(0).permute(1, 2, 0) gave (two)."""
    from cute_kernels.fp8.quantize_ops import _as_one_expert

    t = torch.empty(shape)
    made, before = _as_one_expert(t), t.unsqueeze(0).permute(1, 2, 0)
    assert (made.shape, made.stride(), made.storage_offset()) == \
        (before.shape, before.stride(), before.storage_offset())


@pytest.mark.parametrize("m,nb", [(1, 1), (1, 5), (7, 1), (300, 3)])
def test_new_scales_are_the_column_major_view_of_the_transpose(m, nb):
    """fp8.ops._new_scales (one torch op) gives the kernels the view torch.empty((nb, m)).t() gave."""
    from cute_kernels.fp8.ops import _new_scales

    made, before = _new_scales(m, nb, "cpu"), torch.empty((nb, m), dtype=torch.float32).t()
    assert (made.shape, made.stride(), made.storage_offset(), made.dtype) == \
        (before.shape, before.stride(), before.storage_offset(), before.dtype)
    assert made.untyped_storage().nbytes() == before.untyped_storage().nbytes()


def test_host_path_benchmark_times_and_profiles_the_fp8_step(monkeypatch, tmp_path):
    from benchmarks import bench_host_path
    from cute_kernels import selfcheck

    # launches are stubbed on CPU: no first-use self-check of a variant without hardware evidence
    monkeypatch.setenv(selfcheck.ENV_SWITCH, "0")
    for key, value in (("m", 272), ("h", 256), ("f", 200)):  # F not a multiple of 16: rounded down for FP8
        monkeypatch.setitem(bench_host_path.GROUPED, key, value)
    rows = bench_host_path.measure(1, fp8=True)
    assert rows[-1][0].startswith("srelu_mlp(fp8=") and rows[-1][1] == "grouped E=8 272x256->192, list splits"
    only, = bench_host_path.measure(1, fp8_only=True)  # the FP8 step's row alone
    assert only[:2] == rows[-1][:2] and only[2] > 0
    text = bench_host_path.profile_ops(5, steps=1, fp8=True)
    assert "torch ops dispatched:" in text and "quantize" in text


def test_a_planned_fp8_launch_still_checks_what_its_metadata_does_not_fix(stubbed):
    """fp8_grouped / fp8_dgrad_dact keep one plan per call signature (operand metadata, flags); a
    repeated call still refuses what that signature does not fix: the splits' values, a data pointer
    that is not 16-byte aligned, a prob that is not a tensor where the plan's call had none."""
    from cute_kernels import InputError, launch_plan
    from cute_kernels.fp8.ops import _new_scales, fp8_dgrad_dact, fp8_grouped

    m, k, n, splits = 272, 256, 208, [0, 130, 1, 141]
    x = torch.empty(m, k, dtype=torch.float8_e4m3fn)
    sx = _new_scales(m, 2, "cpu")
    w = torch.empty(4, n, k, dtype=torch.float8_e4m3fn)
    sw = torch.empty(4, 2, 2)
    before = launch_plan.size()
    fp8_grouped(x, sx, w, sw, splits)
    fp8_grouped(x, sx, w, sw, list(splits))
    assert launch_plan.size() == before + 1  # one plan for both calls
    with pytest.raises(InputError, match="m_splits"):
        fp8_grouped(x, sx, w, sw, [0, 130, 1, 140])
    shifted = torch.empty(m * k + 16, dtype=torch.float8_e4m3fn)[1:1 + m * k].view(m, k)  # x's metadata, offset 1
    with pytest.raises(InputError, match="aligned"):
        fp8_grouped(shifted, sx, w, sw, splits)
    fp8_grouped(x, sx, w, sw, splits, epilogue="act")
    with pytest.raises(InputError, match="prob"):
        fp8_grouped(x, sx, w, sw, splits, epilogue="act", prob=[1.0] * m)
    wt = torch.empty(4, n, k, dtype=torch.float8_e4m3fn)
    preact = torch.empty(m, n, dtype=torch.bfloat16)
    fp8_dgrad_dact(x, sx, wt, sw, preact, m_splits=splits)
    with pytest.raises(InputError, match="m_splits"):
        fp8_dgrad_dact(x, sx, wt, sw, preact, m_splits=[0, 130, 1, 142])


@pytest.mark.parametrize("shape", [SHAPE, DENSE], ids=["grouped", "dense"])
def test_the_stubbed_fp8_step_with_the_tanh_clamp_launches_its_own_fc1_and_the_plain_dgrad(stubbed, shape):
    """activation="tanh_srelu:2.0" on the kernel path: FC1 with the clamp in its epilogue (a variant of
    its own, not covered by the FP8 hardware evidence: self-checked on first launch), FC2, the plain FC2
    dgrad (the fused one refuses the clamp; the derivative is torch) and the FC1 dgrad; relu^2 keeps its
    keys (srelu FC1, fused dsrelu dgrad), which the evidence covers."""
    from benchmarks.bench_host_path import step_inputs
    from cute_kernels.activations import SRELU, ScaledTanhSReLU
    from cute_kernels.fp8 import Fp8Recipe
    from cute_kernels.mlp import srelu_mlp

    x, w1, w2, dy, splits = step_inputs(shape)
    table = selfcheck.verified_table()
    for act, fc1_name, dgrad_kind in (("tanh_srelu:2.0", "act[tanh_srelu(s=2.0)]", "identity"),
                                      (None, "srelu", "dact")):
        del stubbed[:]
        srelu_mlp(x, w1, w2, m_splits=splits, fp8=Fp8Recipe(), backend="cute", activation=act).backward(dy)
        fp8 = [key for key, _ in stubbed if key.dtype.startswith("float8")]
        assert [k.epi.kind for k in fp8] == ["act", "identity", dgrad_kind, "identity"], fp8
        fc1 = fp8[0]
        assert fc1.epi.activation == (ScaledTanhSReLU(2.0) if act else SRELU)
        assert fc1.epi.key().startswith(fc1_name + "+preact") and fc1.grouped == (splits is not None)
        # every FP8 variant of the step has H200 evidence: the step launches them with the scales staged
        # in shared memory (the default since 2026-12-03 22:10; their evidence 22:53), and so do the
        # twins loading them from global memory (the tanh FC1: 19:06); the tanh clamp's evidence entry is
        # its own (the relu^2 patterns do not cover it)
        assert all(k.scales_smem for k in fp8)
        for k in fp8:
            assert IS_VERIFIED("sm90", selfcheck.variant_name(dataclasses.replace(k, scales_smem=False)), table)
        assert IS_VERIFIED("sm90", selfcheck.variant_name(fc1), table)
        relu2_only = {"sm90": [p for p in table["sm90"] if "tanh" not in p]}
        assert IS_VERIFIED("sm90", selfcheck.variant_name(fc1), relu2_only) == (act is None)
        assert all(IS_VERIFIED("sm90", selfcheck.variant_name(k), table) for k in fp8[1:])


@pytest.mark.parametrize("switch", [None, "0", "1"])
def test_the_grouped_fp8_wgrad_switch_routes_to_the_grouped_kernel(stubbed, monkeypatch, switch):
    """Fp8Recipe(wgrad="fp8") with m_splits: CUTE_KERNELS_FP8_GROUPED_WGRAD=1 takes the grouped FP8
    weight gradient (per weight: two per-expert padded column-wise quantizations and one K-grouped
    FP8 launch, b_scale "rows_staged"); unset or 0, the per-expert torch loop (no such launch)."""
    from cute_kernels.fp8 import Fp8Recipe, wgrad_ops

    if switch is None:
        monkeypatch.delenv("CUTE_KERNELS_FP8_GROUPED_WGRAD", raising=False)
    else:
        monkeypatch.setenv("CUTE_KERNELS_FP8_GROUPED_WGRAD", switch)
    grouped_quantize = []
    real_cached = quantize_ops._cached

    def cached(key, compile_fn):
        if key[0] == "cols_grouped":
            return lambda *args: grouped_quantize.append((key[3:], args))  # (rows, in_fmt)
        return real_cached(key, compile_fn)

    loop = []
    real_wgrad = wgrad_ops.fp8_weight_grad_of
    with mock.patch.object(quantize_ops, "_cached", cached), \
            mock.patch("cute_kernels.fp8.mlp.wgrad", lambda g, a, r: loop.append(1) or g.float().t() @ a.float()), \
            mock.patch.object(wgrad_ops, "fp8_weight_grad_of", real_wgrad):
        fp8_step_call(SHAPE, Fp8Recipe(wgrad="fp8"))()
    grouped_k = [key for key, _ in stubbed if key.grouped_k]
    if switch == "1":
        assert len(grouped_k) == 2 and all(k.block_scaled and k.b_scale == "rows_staged" for k in grouped_k)
        # per weight: the output gradient (dy, dpreact) by the dual kernel (its row-wise copy for the data
        # gradient from the same read), the activation by the column-only one: the postact from its bf16,
        # x from its saved FP8 copy (requantized: no bf16 x made)
        assert [kind for kind, _ in grouped_quantize] == [(True, None), (False, None), (True, None),
                                                          (False, "e4m3")] and not loop
        xq, xs = grouped_quantize[3][1][:2]
        assert xq.dtype == torch.uint8 and xq.shape == (272, 256) and xs.shape == (272, 2)
        # the experts' row and 128-token block offsets the quantizer reads (its kernel finds each
        # block's expert), and the padded token offsets it writes for the GEMM
        x, cu_rows, cu_blocks, q, s, qt, st, cu_padded = grouped_quantize[0][1]
        assert x.shape == q.shape == (272, 256) and s.shape == (272, 2)  # dy (M, H)
        # splits 0, 130, 1, 141: blocks of 128 + 2, 1, 128 + 13 tokens, each expert starting its own
        assert st.shape[1] * 128 == qt.shape[1] == 128 * 5
        assert cu_rows.tolist() == [0, 0, 130, 131, 272] and cu_blocks.tolist() == [0, 0, 2, 3, 5]
        assert cu_padded.shape == (5,) and cu_padded.dtype == torch.int32
    else:
        assert not grouped_k and not grouped_quantize
        assert len(loop) == 2 * 3, "dW1 and dW2 of the three non-empty experts by the torch loop"


@pytest.mark.parametrize("wgrad,switch,on_device", [("bf16", None, True), ("fp8", "1", True), ("fp8", "0", False)])
def test_tensor_splits_stay_on_the_device_where_every_launch_takes_them(stubbed, monkeypatch, wgrad, switch,
                                                                         on_device):
    """An integer m_splits tensor reaches the FP8 step's launches as it is (no host read, no sync: the
    step can be captured in a CUDA graph) on the kernel path with wgrad="bf16", or "fp8" with the
    grouped FP8 weight-gradient kernel; with the torch loop over experts (wgrad="fp8", switch off)
    it is read to a tuple of ints once per step.  Bad shapes and dtypes are still named."""
    from cute_kernels import InputError
    from cute_kernels.fp8 import Fp8Recipe, mlp as fp8_mlp
    from cute_kernels.mlp import srelu_mlp
    from benchmarks.bench_host_path import _keep_tensor_splits, step_inputs

    if switch is None:
        monkeypatch.delenv("CUTE_KERNELS_FP8_GROUPED_WGRAD", raising=False)
    else:
        monkeypatch.setenv("CUTE_KERNELS_FP8_GROUPED_WGRAD", switch)
    x, w1, w2, dy, _ = step_inputs(SHAPE)
    splits = torch.tensor(SHAPE["splits"], dtype=torch.int32)
    reads = []
    real = fp8_mlp._checked_splits
    # (_keep_tensor_splits: srelu_mlp's checks hand a CUDA tensor on as it is, the stand-in does so for this CPU one)
    with mock.patch.object(fp8_mlp, "_checked_splits", lambda *a: reads.append(a) or real(*a)), \
            mock.patch("cute_kernels.fp8.mlp.wgrad", lambda g, a, r: g.float().t() @ a.float()), _keep_tensor_splits():
        srelu_mlp(x, w1, w2, m_splits=splits, fp8=Fp8Recipe(wgrad=wgrad), backend="cute").backward(dy)
        assert (not reads) == on_device, reads
        for bad, match in ((splits.float(), "m_splits"), (splits[:3], "m_splits")):
            with pytest.raises(InputError, match=match):
                srelu_mlp(x, w1, w2, m_splits=bad, fp8=Fp8Recipe(wgrad=wgrad), backend="cute")
    grouped = [key for key, _ in stubbed if key.grouped and key.block_scaled]
    assert len(grouped) == 4, stubbed  # FC1, FC2, the fused dgrad, the FC1 dgrad: grouped launches


@pytest.mark.parametrize("kind", ["dense", "grouped"])
def test_fp8_wgrads_are_written_in_the_weights_dtype(stubbed, monkeypatch, kind):
    """Fp8Recipe(wgrad="fp8") on the kernel path without fuse_wgrad_accumulation: the FP8 weight-gradient
    kernels (dense; grouped with CUTE_KERNELS_FP8_GROUPED_WGRAD=1) write dW in the weights' bf16 from
    their epilogue; no fp32 dW is cast by torch (aten._to_copy)."""
    from benchmarks.op_profile import profile_step_ops
    from cute_kernels.fp8 import Fp8Recipe

    monkeypatch.setenv("CUTE_KERNELS_FP8_GROUPED_WGRAD", "1")
    summary = profile_step_ops(fp8_step_call(SHAPE if kind == "grouped" else DENSE, Fp8Recipe(wgrad="fp8")),
                               steps=1, warmup=1, cuda=False)
    ops = {name: n for name, n, _, _ in summary["torch_ops"]}
    assert "aten::_to_copy" not in ops and "aten::to" not in ops, ops
    wgrads = [key for key, _ in stubbed if key.block_scaled and key.b_scale in ("row", "rows_staged")]
    assert len(wgrads) == 2 * 2 and {k.out_dtype for k in wgrads} == {"bfloat16"}, wgrads
