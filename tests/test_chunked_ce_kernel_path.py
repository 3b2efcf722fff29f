"""The chunked loss's kernel path (CUTE_KERNELS_CE_KERNEL=1) on CPU, with a float64 torch stand-in
for the row kernel that keeps its contract (softmax_xent_ops.softmax_xent_: loss terms into
loss_rows, g rounded once to the logits' dtype over the logits, an ignored row's target -1):
what the host side adds around the kernel, checked without a GPU.  Against the float64 truth,
in bf16, the loss and every gradient within 1.25x the torch form's own error (+1e-4) over
ignored targets (ignore_index -100 and 0), both reductions, a bias, chunks not dividing the
tokens, one token; d_bias in particular (its targets' elements taken in fp32: without that the
bf16 rounding of the rows' nearly equal target elements biases every column holding targets,
1.6x the torch form's error here); all targets ignored: NaN loss, zero gradients.  The GPU
test (tests/test_softmax_xent_gpu.py) runs the same comparison with the kernel itself."""
import pytest
import torch

from cute_kernels.integrations import chunked_ce, softmax_xent_ops
from cute_kernels.reference import rel_err, softmax_xent_ref


def _stand_in(logits, targets, scale, loss_rows):
    loss, g = softmax_xent_ref(logits, targets, scale.double())
    loss_rows.copy_(loss)
    return logits.copy_(g)


@pytest.fixture
def kernel_path(monkeypatch):
    """Switch the kernel path on for CPU tensors, the stand-in doing the kernel's work; returns
    a function to switch it (True: stand-in, False: the torch form)."""
    calls = []

    def stand_in(*args):
        calls.append(args[0].shape)
        return _stand_in(*args)

    monkeypatch.setattr(softmax_xent_ops, "softmax_xent_", stand_in)

    def switch(on: bool):
        monkeypatch.setenv("CUTE_KERNELS_CE_KERNEL", "1" if on else "0")
        monkeypatch.setattr(softmax_xent_ops, "kernel_takes_logits", lambda *a: on)
        return calls
    return switch


def _run(h, w, b, t, **kw):
    leaves = [x.clone().requires_grad_() for x in (h, w) + ((b,) if b is not None else ())]
    loss = chunked_ce.chunked_linear_cross_entropy(leaves[0], leaves[1], t, leaves[2] if b is not None else None,
                                                   **kw)
    loss.backward()
    return [loss.detach()] + [x.grad for x in leaves]


@pytest.mark.parametrize("tokens,vocab,chunk,bias,reduction,ignore_index", [
    (513, 2048, 512, True, "mean", 0),
    (300, 1000, 128, True, "sum", -100),
    (257, 512, 64, False, "mean", -100),
    (1, 512, 8, True, "mean", -100),
])
def test_kernel_path_within_the_torch_form_error(tokens, vocab, chunk, bias, reduction, ignore_index, kernel_path):
    g = torch.Generator().manual_seed(tokens)
    h = torch.randn(tokens, 256, generator=g).bfloat16()
    w = (torch.randn(vocab, 256, generator=g) / 16).bfloat16()
    b = (torch.randn(vocab, generator=g) * 0.1).bfloat16() if bias else None
    t = torch.randint(0, vocab, (tokens,), generator=g)
    if tokens > 1:
        t[::3] = ignore_index
    kw = dict(chunk_tokens=chunk, reduction=reduction, ignore_index=ignore_index)
    kernel_path(False)
    truth = _run(h.double(), w.double(), b.double() if bias else None, t, **kw)
    torch_form = _run(h, w, b, t, **kw)
    calls = kernel_path(True)
    kernel = _run(h, w, b, t, **kw)
    assert len(calls) == -(-tokens // chunk)
    for name, a, ref, want in zip(("loss", "d_hidden", "d_weight", "d_bias"), kernel, torch_form, truth):
        assert rel_err(a, want) <= 1.25 * rel_err(ref, want) + 1e-4, name


def test_kernel_path_all_ignored(kernel_path):
    kernel_path(True)
    h, w = torch.randn(40, 32).bfloat16(), torch.randn(64, 32).bfloat16()
    loss, dh, dw, db = _run(h, w, torch.zeros(64).bfloat16(), torch.full((40,), -100), chunk_tokens=16)
    assert loss.isnan() and not dh.any() and not dw.any() and not db.any()
