"""Flat tensor arguments on the GPU (CUTE_KERNELS_FLAT_ARGS=1, KernelKey.flat_args): the step with the
kernels taking the 2-D tensors as they are gives bitwise what the 3-D views gave (y and every
gradient; dense and E=8 with an empty expert, M not a tile multiple), and so do the launches that
take an operand through its transpose (an M-major A, a column-major dy in the weight gradient).
The CPU side (PTX byte-identical to the 3-D kernels, the tensors handed): tests/test_flat_args.py."""
import pytest
import torch

from cute_kernels import config_lookup, gemm_ops, launch_plan, selfcheck, srelu_mlp
from cute_kernels.selfcheck_table import flat_variant_keys

pytestmark = pytest.mark.gpu


def _with_switch(monkeypatch, on: bool, fn):
    """fn() with plans made afresh under the switch `on`; also returns whether every plan it made
    launched flat-argument kernels (or none did)."""
    if on:
        monkeypatch.setenv(gemm_ops.FLAT_ARGS_ENV, "1")
    else:
        monkeypatch.delenv(gemm_ops.FLAT_ARGS_ENV, raising=False)
    config_lookup.clear_cache()  # drops every plan: the next calls read the switch
    out = fn()
    torch.cuda.synchronize()
    flags = {plan.key.flat_args for plan in launch_plan._plans.values()}
    assert flags == {on}, flags
    return out


def _step(x, w1, w2, dy, splits, prob, **kw):
    leaves = [t.clone().requires_grad_() for t in (x, w1, w2)] + ([prob.clone().requires_grad_()] if prob is not None else [])
    y = srelu_mlp(leaves[0], leaves[1], leaves[2], m_splits=splits, prob=leaves[3] if prob is not None else None,
                  backend="cute", **kw)
    y.backward(dy)
    return [y.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("experts", [0, 8])
@pytest.mark.parametrize("variant", ["plain", "recompute", "dpreact_over_preact", "tensor_splits"])
def test_flat_step_is_bitwise_the_3d_step(experts, variant, monkeypatch):
    if variant == "tensor_splits" and not experts:
        pytest.skip("dense: no splits")
    g = torch.Generator(device="cuda").manual_seed(7)
    m, h, f = 3001, 704, 1856  # M no tile multiple
    grouped = experts > 0
    x = torch.randn(m, h, device="cuda", generator=g).bfloat16()
    w1 = (torch.randn(*((experts, f, h) if grouped else (f, h)), device="cuda", generator=g) / h ** 0.5).bfloat16()
    w2 = (torch.randn(*((experts, h, f) if grouped else (h, f)), device="cuda", generator=g) / f ** 0.5).bfloat16()
    dy = torch.randn(m, h, device="cuda", generator=g).bfloat16()
    splits = prob = None
    if grouped:
        splits = [501, 0, 333, 97, 1000, 1, 640, 429]  # an empty expert, odd sizes
        assert sum(splits) == m
        prob = torch.rand(m, device="cuda", generator=g)
        if variant == "tensor_splits":
            splits = torch.tensor(splits, device="cuda")
    kw = {"recompute_postact": variant == "recompute", "dpreact_over_preact": variant == "dpreact_over_preact"}
    off = _with_switch(monkeypatch, False, lambda: _step(x, w1, w2, dy, splits, prob, **kw))
    on = _with_switch(monkeypatch, True, lambda: _step(x, w1, w2, dy, splits, prob, **kw))
    names = ["y", "dx", "dw1", "dw2", "dprob"]
    for name, a, b in zip(names, on, off):
        assert torch.isfinite(b).all(), name
        assert torch.equal(a, b), (name, (a.float() - b.float()).abs().max().item())


def test_flat_launches_through_a_transpose_are_bitwise(monkeypatch):
    """The operands the flat kernels take as their transposes: an M-major A (h.t() of a column-major
    buffer), w2 read as its transpose, a column-major dy in the weight gradient, fp32 accumulation
    into an out."""
    g = torch.Generator(device="cuda").manual_seed(3)
    m, k, n = 1000, 456, 1088
    h_cm = torch.randn(k, m, device="cuda", generator=g).bfloat16().t()  # (M, K), contiguous along M
    w = (torch.randn(n, k, device="cuda", generator=g) / k ** 0.5).bfloat16()
    dy_cm = torch.randn(n, m, device="cuda", generator=g).bfloat16().t()  # (T, N) column-major
    acc = torch.randn(n, k, device="cuda", generator=g)

    def calls():
        main_grad = acc.clone()
        gemm_ops.weight_grad(dy_cm, h_cm, out=main_grad, accumulate=True)
        return [gemm_ops.fc2(h_cm, w), gemm_ops.fc2(h_cm, w.t().contiguous(), transpose_w=True),
                gemm_ops.weight_grad(dy_cm, h_cm), main_grad]

    off = _with_switch(monkeypatch, False, calls)
    on = _with_switch(monkeypatch, True, calls)
    for i, (a, b) in enumerate(zip(on, off)):
        assert torch.isfinite(b).all(), i
        assert torch.equal(a, b), (i, (a.float() - b.float()).abs().max().item())


def test_every_flat_variant_passes_the_self_check():
    """Each bf16 variant's flat kernel (every grouping and epilogue, one or two cluster shapes) against
    torch on the self-check's small problem (`python -m cute_kernels.selfcheck --quick --flat`)."""
    keys = flat_variant_keys("sm90", quick=True)
    assert keys
    failed = []
    for key in keys:
        gemm_ops._selfchecked.add(key)  # run it here, not through the first-launch gate
        res = selfcheck.run_variant(key, launch=gemm_ops._run)
        if not res.ok:
            failed.append((res.variant, res.errors, res.message))
    assert not failed, failed
