"""chunked_linear_cross_entropy against torch's F.cross_entropy(F.linear(hidden, weight, bias))
on CPU: float64 to 1e-12 of each result's largest entry (loss, d_hidden, d_weight, d_bias) over
odd token counts, chunks smaller than, equal to and larger than the tokens, ignored targets
(scattered, a whole chunk, all of them), both reductions and a custom ignore_index; gradcheck;
bf16 within twice torch's own bf16 error of the float64 truth; no tensor as large as the
logits is ever made; bad inputs refused by name."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from cute_kernels import InputError
from cute_kernels.integrations.chunked_ce import chunked_linear_cross_entropy, default_chunk_tokens


def _inputs(tokens, vocab, dim, *, dtype=torch.float64, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(tokens, dim, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    w = (torch.randn(vocab, dim, generator=g, dtype=torch.float64) / dim ** 0.5).to(dtype).requires_grad_()
    b = (torch.randn(vocab, generator=g, dtype=torch.float64) * 0.1).to(dtype).requires_grad_() if bias else None
    t = torch.randint(0, vocab, (tokens,), generator=g)
    return h, w, b, t


def _run(fn, h, w, b, t, **kw):
    params = [p for p in (h, w, b) if p is not None]
    for p in params:
        p.grad = None
    loss = fn(h, w, t, b, **kw)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in params]


def _torch(h, w, t, b, *, ignore_index=-100, reduction="mean", chunk_tokens=None):
    logits = F.linear(h, w, b)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # Hugging Face's .float(), fp64 kept
    return F.cross_entropy(logits, t, ignore_index=ignore_index, reduction=reduction)


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


IGNORES = {
    "none": lambda t: t,
    "scattered": lambda t: t.masked_fill(torch.arange(t.numel()) % 3 == 1, -100),
    "first chunk": lambda t: t.masked_fill(torch.arange(t.numel()) < 8, -100),  # chunk_tokens 8 below
}


@pytest.mark.parametrize("tokens,chunk", [(37, 8), (37, 37), (37, 100), (1, 1), (64, 16), (9, 2)])
@pytest.mark.parametrize("ignore", sorted(IGNORES))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("bias", [True, False])
def test_float64_matches_torch(tokens, chunk, ignore, reduction, bias):
    h, w, b, t = _inputs(tokens, 29, 16, bias=bias, seed=tokens + chunk)
    t = IGNORES[ignore](t)
    if (t == -100).all():
        t[-1] = 3  # the all-ignored case has its own test
    loss, grads = _run(chunked_linear_cross_entropy, h, w, b, t, chunk_tokens=chunk, reduction=reduction)
    ref_loss, ref_grads = _run(_torch, h, w, b, t, reduction=reduction)
    assert loss.dtype == torch.float64
    assert _rel(loss, ref_loss) <= 1e-12
    for name, got, ref in zip(("hidden", "weight", "bias"), grads, ref_grads):
        assert got.dtype == torch.float64
        assert _rel(got, ref) <= 1e-12, name


def test_custom_ignore_index_and_default_chunk():
    h, w, b, t = _inputs(50, 31, 8, seed=3)
    t[::4] = 7  # a real class id used as ignore_index: those rows drop out
    loss, grads = _run(chunked_linear_cross_entropy, h, w, b, t, ignore_index=7)
    ref_loss, ref_grads = _run(_torch, h, w, b, t, ignore_index=7)
    assert _rel(loss, ref_loss) <= 1e-12
    assert all(_rel(a, r) <= 1e-12 for a, r in zip(grads, ref_grads))
    assert default_chunk_tokens(16384) == 2048 and default_chunk_tokens(131072) == 256
    assert default_chunk_tokens(10 ** 9) == 16


def test_all_ignored_is_nan_mean_zero_sum_and_zero_gradients_as_torch():
    h, w, b, t = _inputs(10, 13, 4, seed=5)
    t[:] = -100
    for reduction in ("mean", "sum"):
        loss, grads = _run(chunked_linear_cross_entropy, h, w, b, t, chunk_tokens=3, reduction=reduction)
        ref_loss, ref_grads = _run(_torch, h, w, b, t, reduction=reduction)
        assert torch.isnan(ref_loss).item() == torch.isnan(loss).item() == (reduction == "mean")
        if reduction == "sum":
            assert loss.item() == ref_loss.item() == 0.0
        for got, ref in zip(grads, ref_grads):
            assert torch.equal(got, ref) and not got.any()


@pytest.mark.parametrize("chunk", [1, 3, 7, 50])
def test_gradcheck(chunk):
    h, w, b, t = _inputs(7, 6, 3, seed=chunk)
    t[0:3] = -100  # with chunk 3: one whole chunk ignored
    assert torch.autograd.gradcheck(lambda h, w, b: chunked_linear_cross_entropy(h, w, t, b, chunk_tokens=chunk),
                                    (h, w, b))
    assert torch.autograd.gradcheck(lambda h, w: chunked_linear_cross_entropy(h, w, t, chunk_tokens=chunk,
                                                                              reduction="sum"), (h, w))


@pytest.mark.parametrize("fp32_weight_grad", [False, True])
@pytest.mark.parametrize("seed", [11, 13])
def test_bf16_within_torch_bf16_error(seed, fp32_weight_grad):
    """bf16 inputs: logits in bf16, loss in fp32 as Hugging Face's head; against the float64
    truth on the same (bf16-rounded) inputs, ours is within twice torch's own bf16 error (the
    weight gradient accumulated over 4 chunks in bf16 or in fp32)."""
    h, w, b, t = _inputs(203, 517, 64, dtype=torch.bfloat16, bias=False, seed=seed)
    t[5:40] = -100
    loss, grads = _run(chunked_linear_cross_entropy, h, w, None, t, chunk_tokens=64,
                       fp32_weight_grad=fp32_weight_grad)
    ref_loss, ref_grads = _run(_torch, h, w, None, t)
    h64, w64 = (x.detach().double().requires_grad_() for x in (h, w))
    true_loss, true_grads = _run(_torch, h64, w64, None, t)
    assert loss.dtype == torch.float32 and grads[0].dtype == grads[1].dtype == torch.bfloat16
    assert _rel(loss, true_loss) <= 2 * _rel(ref_loss, true_loss) + 1e-6
    for name, got, ref, true in zip(("hidden", "weight"), grads, ref_grads, true_grads):
        assert _rel(got, true) <= 2 * _rel(ref, true) + 1e-3, name
        assert _rel(got, true) < 0.02, name


def test_only_the_wanted_gradients_and_no_grad():
    h, w, b, t = _inputs(20, 11, 5, seed=2)
    h.requires_grad_(False)
    loss = chunked_linear_cross_entropy(h, w, t, b, chunk_tokens=6)
    loss.backward()
    assert h.grad is None and w.grad is not None and b.grad is not None
    with torch.no_grad():
        nog = chunked_linear_cross_entropy(h, w, t, b, chunk_tokens=6)
    assert nog.grad_fn is None and torch.equal(nog, loss.detach())


def test_scaled_and_repeated_backward():
    """The saved gradients are scaled by the incoming one, not in place: a retained graph
    backpropagated twice accumulates twice the same gradient."""
    h, w, b, t = _inputs(15, 9, 4, seed=4)
    loss = chunked_linear_cross_entropy(h, w, t, b, chunk_tokens=4)
    (3 * loss).backward(retain_graph=True)
    once = [p.grad.clone() for p in (h, w, b)]
    (3 * loss).backward()
    twice = [p.grad.clone() for p in (h, w, b)]
    ref_loss, ref_grads = _run(_torch, h, w, b, t)
    for got, twice, ref in zip(once, twice, ref_grads):
        assert _rel(got, 3 * ref) <= 1e-12 and _rel(twice, 6 * ref) <= 1e-12


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor):
                self.largest = max(self.largest, o.numel())
        return out


def test_never_makes_a_logits_sized_tensor():
    tokens, vocab, dim, chunk = 512, 300, 8, 32
    h, w, b, t = _inputs(tokens, vocab, dim, dtype=torch.float32, seed=6)
    for fn, bound in ((_torch, tokens * vocab), (chunked_linear_cross_entropy, chunk * vocab)):
        with _LargestTensor() as seen:
            fn(h, w, t, b, chunk_tokens=chunk).backward()
        assert seen.largest == bound, (fn.__name__, seen.largest)  # torch's reference does make one: the check bites


@pytest.mark.parametrize("change,match", [
    (dict(t=torch.tensor([0, 1, 29, 2])), "outside \\[0, 29\\)"),
    (dict(t=torch.tensor([0, 1, -5, 2])), "outside"),
    (dict(t=torch.tensor([0, 1, 2])), "targets must be int64 of shape \\(4,\\)"),
    (dict(t=torch.tensor([0., 1., 2., 3.])), "targets must be int64"),
    (dict(w=torch.randn(29, 5, dtype=torch.float64)), "features"),
    (dict(w=torch.randn(29, 6, dtype=torch.float32)), "dtype"),
    (dict(b=torch.randn(28, dtype=torch.float64)), "bias"),
    (dict(h=torch.randn(2, 2, 6, dtype=torch.float64)), "hidden must be"),
    (dict(chunk_tokens=0), "chunk_tokens"),
    (dict(reduction="none"), "reduction"),
    (dict(ignore_index=None), "ignore_index"),
])
def test_bad_inputs_are_refused_by_name(change, match):
    kw = dict(h=torch.randn(4, 6, dtype=torch.float64), w=torch.randn(29, 6, dtype=torch.float64),
              t=torch.tensor([0, 1, -100, 28]), b=None, chunk_tokens=2, reduction="mean", ignore_index=-100)
    kw.update(change)
    with pytest.raises(InputError, match=match):
        chunked_linear_cross_entropy(kw["h"], kw["w"], kw["t"], kw["b"], chunk_tokens=kw["chunk_tokens"],
                                     reduction=kw["reduction"], ignore_index=kw["ignore_index"])
