"""FP8 weight copies are never stale and hold nothing on the Parameter (CPU, torch path).

Issue 26's repro: fused optimizers (AdamW / SGD with fused=True) and writes through `w.data`
do not bump `w._version`; a copy cached on it trained on stale weights (the same loss at every
step).  Each step's loss must equal the loss of the same step run on fresh clones of the
weights (nothing cached can apply to them).  And with no weakref on the Parameter,
`load_state_dict(..., assign=True)` and module conversion with swapped parameters work after
an FP8 step."""
import weakref

import pytest
import torch

from cute_kernels.fp8 import Fp8Recipe
from cute_kernels.fp8.ops import quantize_weight
from cute_kernels.fp8.recipe import quantize_128x128
from cute_kernels.fp8.weight_cache import optimizer_steps, reuse_weight_copies, transposed_copy
from cute_kernels.mlp import srelu_mlp
from cute_kernels.modules import SReLUMLP

R = Fp8Recipe()
H, F, M = 128, 256, 64


def _setup(seed=0):
    torch.manual_seed(seed)
    model = SReLUMLP(H, F, fp8=R, backend="torch")
    with torch.no_grad():  # a scale at which one optimizer step moves the loss visibly
        model.fc1.weight.mul_(2.0)
        model.fc2.weight.mul_(2.0)
    x = torch.randn(M, H)
    target = torch.randn(M, H) * 0.1
    return model, x, target


def _loss(model, x, target):
    return (model(x) - target).square().mean()


def _fresh_loss(model, x, target):
    """The loss on clones of the current weights: new tensors, so no copy made before applies."""
    w1 = model.fc1.weight.detach().clone()
    w2 = model.fc2.weight.detach().clone()
    return (srelu_mlp(x, w1, w2, fp8=R, backend="torch") - target).square().mean()


def _check_steps(model, x, target, update, steps=4):
    losses = []
    for _ in range(steps):
        loss = _loss(model, x, target)
        assert torch.equal(loss.detach(), _fresh_loss(model, x, target)), "a step used a stale FP8 weight copy"
        losses.append(loss.item())
        loss.backward()
        update()
    assert len(set(losses)) == steps, f"the loss did not move: {losses}"
    return losses


@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.AdamW(ps, lr=3e-2, fused=True),
    lambda ps: torch.optim.SGD(ps, lr=0.5, fused=True),
], ids=["adamw_fused", "sgd_fused"])
@pytest.mark.parametrize("scoped", [False, True], ids=["per_call", "reuse_scope"])
def test_fused_optimizers_never_train_on_stale_copies(make_opt, scoped):
    model, x, target = _setup()
    opt = make_opt(list(model.parameters()))
    w = model.fc1.weight
    version = w._version

    def update():
        opt.step()
        opt.zero_grad()

    if scoped:  # the reuse scope sees every optimizer step (global step hook)
        with reuse_weight_copies():
            losses = _check_steps(model, x, target, update)
    else:
        losses = _check_steps(model, x, target, update)
    assert w._version == version, "the fused optimizer bumps the version now: this test no longer covers the bug"
    assert losses[-1] < 0.9 * losses[0], losses


def test_data_assignment_and_in_place_through_data_are_seen():
    model, x, target = _setup(1)
    w1, w2 = model.fc1.weight, model.fc2.weight
    steps = iter(range(4))

    def update():
        with torch.no_grad():
            if next(steps) % 2 == 0:
                w1.data = w1.data - 0.5 * w1.grad  # new storage, version unchanged
                w2.data.mul_(0.9)  # in place through a .data alias: version unchanged
            else:
                w1.data.sub_(0.5 * w1.grad)
                w2.data = w2.data * 0.9
        model.zero_grad()

    _check_steps(model, x, target, update)


def test_reuse_scope_refreshes_on_new_storage_and_version_and_frees_at_exit():
    w = torch.nn.Parameter(torch.randn(256, 384))
    with reuse_weight_copies():
        a = quantize_weight(w, R)
        with reuse_weight_copies():  # nested: the same entries
            assert quantize_weight(w, R) is a
        assert quantize_weight(w, R) is a, "leaving an inner scope keeps the outer scope's copies"
        w.data = w.data * 2  # new storage
        b = quantize_weight(w, R)
        assert b is not a and torch.equal(b[1], 2 * a[1])
        with torch.no_grad():
            w.add_(1.0)  # version bump
        c = quantize_weight(w, R)
        assert c is not b and torch.equal(c[0].view(torch.uint8), quantize_128x128(w.detach())[0].view(torch.uint8))
        assert quantize_weight(w, Fp8Recipe(pow2_scales=True)) is not c, "another recipe, another copy"
        steps = optimizer_steps()
        torch.optim.SGD([w], lr=0.0).step()  # an optimizer step refreshes even when nothing changed
        assert optimizer_steps() == steps + 1 and quantize_weight(w, R) is not c
    d = quantize_weight(w, R)
    with reuse_weight_copies():
        assert quantize_weight(w, R) is not d, "copies made outside a scope are not kept"


@pytest.mark.parametrize("shape", [(256, 384), (200, 144), (3, 130, 272)])
@pytest.mark.parametrize("pow2", [False, True])
def test_transposed_copy_is_bitwise_the_quantized_transpose(shape, pow2):
    w = torch.randn(*shape) * torch.logspace(-3, 3, shape[-1])
    r = Fp8Recipe(pow2_scales=pow2)
    q, s = quantize_weight(w, r)
    tq, ts = quantize_weight(w, r, transposed=True)
    assert torch.equal(tq.view(torch.uint8), transposed_copy(q, s)[0].view(torch.uint8))
    for i, wi in enumerate(w if w.dim() == 3 else [w]):
        rq, rs = quantize_128x128(wi.t(), pow2=pow2)
        got_q, got_s = (tq[i], ts[i]) if w.dim() == 3 else (tq, ts)
        assert torch.equal(got_q.view(torch.uint8), rq.view(torch.uint8)) and torch.equal(got_s, rs)


def test_backward_uses_the_copy_its_forward_made():
    model, x, target = _setup(2)
    w1 = model.fc1.weight
    _loss(model, x, target).backward()
    xg = x.clone().requires_grad_()
    loss = _loss(model, xg, target)
    loss.backward(retain_graph=True)
    dx_ref = xg.grad.clone()
    xg.grad = None
    loss = _loss(model, xg, target)
    w1.data.mul_(3.0)  # between this forward and its backward
    loss.backward()
    assert torch.equal(xg.grad, dx_ref), "the dgrad read a copy made after its forward"


def test_no_weakref_on_parameters_and_swapping_works_after_an_fp8_step():
    model, x, target = _setup(3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    _loss(model, x, target).backward()
    opt.step()
    for p in model.parameters():
        assert weakref.getweakrefcount(p) == 0
    w_before = model.fc1.weight
    new = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    old = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)  # load_state_dict and .to() swap tensors
    try:
        model.load_state_dict(new, assign=True)  # swap_tensors: raised with a weakref on the Parameter
        assert model.fc1.weight is w_before and torch.equal(model.fc1.weight.detach(), new["fc1.weight"])
        assert torch.equal(_loss(model, x, target), _fresh_loss(model, x, target))
        model.to(torch.bfloat16)
        assert model.fc1.weight is w_before and model.fc1.weight.dtype == torch.bfloat16
        xb = x.bfloat16()
        assert torch.equal(_loss(model, xb, target), _fresh_loss(model, xb, target))
        model.load_state_dict({k: -v for k, v in model.state_dict().items()})
        assert torch.equal(_loss(model, xb, target), _fresh_loss(model, xb, target))
    finally:
        torch.__future__.set_swap_module_params_on_conversion(old)
    _loss(model, xb, target).backward()
    assert model.fc1.weight.grad is not None and model.fc1.weight.grad.dtype == torch.bfloat16


def _stand_in_kernel(calls):
    """quantize_weight_copies as the torch recipe computes it (the GPU test proves the kernel
    bitwise equal to this), counting calls."""
    def copies(w, recipe):
        calls.append(w)
        q, s = quantize_128x128(w.detach(), recipe.fwd_format, pow2=recipe.pow2_scales)
        return (q, s), transposed_copy(q, s)
    return copies


def test_weight_copies_one_pass_scope_and_fallback():
    from cute_kernels.fp8 import weight_cache

    calls = []
    kernel = _stand_in_kernel(calls)
    w = torch.nn.Parameter(torch.randn(3, 256, 384))
    plain, trans = weight_cache.weight_copies(w, R)  # not the kernel path: W's copy only
    assert trans is None and calls == []
    plain, trans = weight_cache.weight_copies(w, R, both=kernel)
    assert len(calls) == 1 and trans is not None
    want = quantize_weight(w, R, transposed=True)
    assert torch.equal(trans[0].view(torch.uint8), want[0].view(torch.uint8)) and torch.equal(trans[1], want[1])
    with reuse_weight_copies():
        a = weight_cache.weight_copies(w, R, both=kernel)
        again = weight_cache.weight_copies(w, R, both=kernel)
        assert again[0] is a[0] and again[1] is a[1] and len(calls) == 2, "reused in the scope"
        assert quantize_weight(w, R, transposed=True) is a[1], "both orientations cached from one pass"
        with torch.no_grad():
            w.mul_(2.0)
        b = weight_cache.weight_copies(w, R, both=kernel)
        assert b[0] is not a[0] and len(calls) == 3 and torch.equal(b[0][1], 2 * a[0][1])
    plain, trans = weight_cache.weight_copies(w, R, both=lambda w, recipe: None)  # not applicable: recipe path
    assert trans is None and torch.equal(plain[1], quantize_128x128(w.detach())[1])


def test_kernel_switch_is_on_unless_switched_off(monkeypatch):
    from cute_kernels.fp8 import quantize_ops

    monkeypatch.delenv("CUTE_KERNELS_FP8_WEIGHT_KERNEL", raising=False)
    assert quantize_ops.one_pass_weight_kernel_enabled()
    assert quantize_ops.kernel_weight_copies(torch.randn(256, 256).bfloat16(), R) is None, "a CPU weight: recipe path"
    monkeypatch.setenv("CUTE_KERNELS_FP8_WEIGHT_KERNEL", "0")
    assert not quantize_ops.one_pass_weight_kernel_enabled()


def test_dequantize_broadcast_equals_the_expanded_product():
    from cute_kernels.fp8.recipe import dequantize, expand_scales, quantize_1x128

    x = torch.randn(77, 384) * torch.logspace(-3, 3, 384)
    q, s = quantize_1x128(x)
    want = q.float() * expand_scales(s, q.shape, rows_per_scale=1, cols_per_scale=128)
    assert torch.equal(dequantize(q, s), want)
    assert torch.equal(dequantize(q, s.t().contiguous().t()), want), "column-major scales"
    got = dequantize(q, s, out_dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want.bfloat16()), "rounded once into bf16"
    q2, s2 = quantize_1x128(x[:, :200])  # a partial last block: the expanded product
    assert torch.equal(dequantize(q2, s2, out_dtype=torch.bfloat16),
                       (q2.float() * expand_scales(s2, q2.shape, rows_per_scale=1, cols_per_scale=128)).bfloat16())
