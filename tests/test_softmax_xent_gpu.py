"""GPU: the row softmax cross-entropy kernel (sm90/softmax_xent.py through
integrations/softmax_xent_ops.py) against float64, and the chunked loss with it
(CUTE_KERNELS_CE_KERNEL=1) against its torch form and the float64 truth.

Kernel, per row of bf16/fp16 logits (one row, vocab 8, 1000, 8200 (a partial sweep), 16384,
131072; rows shifted by +-60 so the max matters; ignored rows whose logits are NaN, the loss
buffer NaN beforehand): the loss terms within 1e-5 (relative, Frobenius) of float64's on the same
logits, ignored rows exactly 0 in the loss and in g; g = (softmax - onehot) * scale within 1.05x
the error of float64's g rounded once to the logits' dtype (+1e-6), over all elements and over
the non-target elements alone (the softmax part; the target's element dominates the whole).
Chunked loss (bias, ignored targets, ignore_index inside the vocabulary, both reductions, a
chunk size not dividing the tokens, one token): loss and every gradient within 1.25x the torch
form's own error of the float64 truth (+1e-4); vocab 1001 (not a multiple of 8) takes the torch
form (bitwise the switch off); all targets ignored: NaN loss and zero gradients; the peak memory
(allocator counts) at least 3 bytes per chunk logit below the torch form's (its fp32 copy)."""
import pytest
import torch

from reference import rel_err

from cute_kernels import InputError
from cute_kernels.integrations.chunked_ce import chunked_linear_cross_entropy
from cute_kernels.integrations.softmax_xent_ops import softmax_xent_
from cute_kernels.reference import softmax_xent_ref

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("rows,vocab", [(1, 16384), (64, 8), (77, 1000), (33, 8200), (300, 16384), (3, 131072)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_matches_float64(rows, vocab, dtype):
    g = torch.Generator("cuda").manual_seed(rows * 7 + vocab)
    logits = (torch.randn(rows, vocab, device="cuda", generator=g) * 3
              + torch.randn(rows, 1, device="cuda", generator=g) * 60).to(dtype)
    targets = torch.randint(0, vocab, (rows,), device="cuda", generator=g)
    targets[0] = vocab - 1
    if rows > 2:
        targets[1] = 0
        targets[2::7] = -1  # ignored rows: their logits are never read
        logits[2::7] = float("nan")
    scale = torch.tensor([1.0 / rows], device="cuda")
    want_loss, want_g = softmax_xent_ref(logits, targets, scale.double())
    loss_rows = torch.full((rows,), float("nan"), device="cuda")
    x = logits.clone()
    assert softmax_xent_(x, targets, scale, loss_rows) is x
    ignored = targets < 0
    assert torch.equal(loss_rows[ignored], torch.zeros_like(loss_rows[ignored]))
    assert not x[ignored].any() and not x[ignored].isnan().any()
    assert rel_err(loss_rows, want_loss) <= 1e-5
    best = rel_err(want_g.to(dtype), want_g)  # the error of rounding the exact g once
    assert rel_err(x, want_g) <= 1.05 * best + 1e-6
    off_target = torch.ones_like(want_g, dtype=torch.bool)
    off_target[torch.arange(rows, device="cuda"), targets.clamp_min(0)] = False
    assert rel_err(x[off_target], want_g[off_target]) <= 1.05 * rel_err(want_g[off_target].to(dtype),
                                                                          want_g[off_target]) + 1e-6


def test_kernel_refuses_a_vocab_not_a_multiple_of_8():
    x = torch.zeros(4, 1001, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(InputError, match="multiple of 8"):
        softmax_xent_(x, torch.zeros(4, dtype=torch.long, device="cuda"), torch.ones(1, device="cuda"),
                      torch.zeros(4, device="cuda"))


def _inputs(tokens, vocab, dim, *, bias, seed):
    g = torch.Generator("cuda").manual_seed(seed)
    h = torch.randn(tokens, dim, device="cuda", generator=g).bfloat16()
    w = (torch.randn(vocab, dim, device="cuda", generator=g) / dim ** 0.5).bfloat16()
    b = (torch.randn(vocab, device="cuda", generator=g) * 0.1).bfloat16() if bias else None
    t = torch.randint(0, vocab, (tokens,), device="cuda", generator=g)
    return h, w, b, t


def _run(h, w, b, t, flag, monkeypatch, **kw):
    monkeypatch.setenv("CUTE_KERNELS_CE_KERNEL", flag)
    leaves = [x.clone().requires_grad_() for x in (h, w) + ((b,) if b is not None else ())]
    loss = chunked_linear_cross_entropy(leaves[0], leaves[1], t, leaves[2] if b is not None else None, **kw)
    loss.backward()
    return [loss.detach()] + [x.grad for x in leaves]


@pytest.mark.parametrize("tokens,vocab,chunk,bias,reduction,ignore_index", [
    (1000, 16384, 384, False, "mean", -100),
    (777, 4104, 100, True, "sum", -100),
    (513, 2048, 512, True, "mean", 0),
    (1, 16384, 8, False, "mean", -100),
])
def test_chunked_loss_with_the_kernel_within_the_torch_form_error(tokens, vocab, chunk, bias, reduction, ignore_index,
                                                                   monkeypatch):
    h, w, b, t = _inputs(tokens, vocab, 256, bias=bias, seed=tokens)
    if tokens > 1:
        t[::3] = ignore_index
    kw = dict(chunk_tokens=chunk, reduction=reduction, ignore_index=ignore_index)
    truth = _run(h.double(), w.double(), b.double() if b is not None else None, t, "0", monkeypatch, **kw)
    torch_form = _run(h, w, b, t, "0", monkeypatch, **kw)
    kernel = _run(h, w, b, t, "1", monkeypatch, **kw)
    for name, a, ref, want in zip(("loss", "d_hidden", "d_weight", "d_bias"), kernel, torch_form, truth):
        assert rel_err(a, want) <= 1.25 * rel_err(ref, want) + 1e-4, name


def test_chunked_loss_odd_vocab_takes_the_torch_form(monkeypatch):
    h, w, b, t = _inputs(300, 1001, 64, bias=True, seed=5)
    off = _run(h, w, b, t, "0", monkeypatch, chunk_tokens=128)
    on = _run(h, w, b, t, "1", monkeypatch, chunk_tokens=128)
    for a, ref in zip(on, off):
        assert torch.equal(a, ref)


def test_chunked_loss_all_ignored(monkeypatch):
    h, w, b, t = _inputs(100, 1024, 64, bias=False, seed=6)
    loss, dh, dw = _run(h, w, b, torch.full_like(t, -100), "1", monkeypatch, chunk_tokens=64)
    assert loss.isnan() and not dh.any() and not dw.any()


def _peak_above_start(h, w, t, flag, monkeypatch):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    _run(h, w, None, t, flag, monkeypatch, chunk_tokens=512)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - start


def test_kernel_path_peak_below_the_torch_form(monkeypatch):
    h, w, _, t = _inputs(4096, 16384, 256, bias=False, seed=7)
    _run(h, w, None, t, "1", monkeypatch, chunk_tokens=512)  # compile outside the measurement
    torch_form = _peak_above_start(h, w, t, "0", monkeypatch)
    kernel = _peak_above_start(h, w, t, "1", monkeypatch)
    assert kernel <= torch_form - 3 * 512 * 16384, (kernel / 2**20, torch_form / 2**20)
