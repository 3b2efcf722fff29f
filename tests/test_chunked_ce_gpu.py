"""chunked_linear_cross_entropy and patch_nemotron_h(chunked_loss=...) on the GPU (bf16).

Bound (bf16 noise, as tests/test_nemotron_h_gpu.py): against a float64 (op) or float32
(model) reference, our relative error (Frobenius) of the loss and of every gradient is at
most 2x the unchunked bf16 computation's own error plus 2e-3.  Memory (allocator counts,
no timing): the unchunked head + loss holds three fp32 tokens x vocab tensors at once in
its backward; ours stays below its stated bound (chunk temporaries, the gradients it
keeps, the fp32 weight-gradient accumulator)."""
import copy

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers.models.nemotron_h")

from nemotron_h_models import small_config, small_model, to_dtype  # noqa: E402
from reference import rel_err  # noqa: E402

from cute_kernels.integrations.chunked_ce import chunked_linear_cross_entropy  # noqa: E402
from cute_kernels.integrations.transformers import patch_nemotron_h  # noqa: E402

pytestmark = pytest.mark.gpu
SLACK = 2e-3
MiB = 2 ** 20


def _unchunked(h, w, t):
    return F.cross_entropy(F.linear(h, w).float(), t)


def _grads(fn, h, w, t, **kw):
    h, w = (x.detach().requires_grad_() for x in (h, w))
    loss = fn(h, w, t, **kw)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("fp32_weight_grad", [False, True])
def test_op_bf16_within_bf16_noise(fp32_weight_grad):
    g = torch.Generator("cuda").manual_seed(0)
    n, v, d = 4097, 16384, 512
    h = torch.randn(n, d, device="cuda", generator=g).bfloat16()
    w = (torch.randn(v, d, device="cuda", generator=g) / d ** 0.5).bfloat16()
    t = torch.randint(0, v, (n,), device="cuda", generator=g)
    t[100:1200] = -100
    truth = _grads(_unchunked, h.double(), w.double(), t)
    hf = _grads(_unchunked, h, w, t)
    ours = _grads(chunked_linear_cross_entropy, h, w, t, chunk_tokens=1000, fp32_weight_grad=fp32_weight_grad)
    for name, a, b, r in zip(("loss", "d_hidden", "d_weight"), ours, hf, truth):
        assert rel_err(a, r) <= 2 * rel_err(b, r) + SLACK, name


def _peak_above_start(fn, h, w, t, **kw):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    _grads(fn, h, w, t, **kw)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - start


def test_op_peak_memory_is_chunk_sized():
    n, v, d, chunk = 8192, 16384, 256, 512
    h = torch.randn(n, d, device="cuda").bfloat16()
    w = torch.randn(v, d, device="cuda").bfloat16()
    t = torch.randint(0, v, (n,), device="cuda")
    hf = _peak_above_start(_unchunked, h, w, t)
    ours = _peak_above_start(chunked_linear_cross_entropy, h, w, t, chunk_tokens=chunk)
    assert hf >= 3 * n * v * 4  # log-softmax output and the two fp32 gradients of the loss's backward
    # chunk: bf16 logits, fp32 exponentials, bf16 gradient; kept: d_hidden, d_weight (+ their scaled copies);
    # generous: room for an fp32 accumulator and a partial product too
    bound = chunk * v * (2 + 4 + 2) + 2 * n * d * 2 * 2 + v * d * (4 + 2 + 2 + 2) + 8 * MiB
    assert ours <= bound, (ours / MiB, bound / MiB, hf / MiB)


def test_patched_dense_model_chunked_loss_within_bf16_noise():
    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = small_config(layers=("full_attention", "mlp", "mlp"), vocab_size=4096, hidden_size=256,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=64, intermediate_size=512,
                       max_position_embeddings=256)
    ref = small_model(cfg, device="cuda")
    hf = to_dtype(copy.deepcopy(ref), torch.bfloat16)
    ours = copy.deepcopy(hf)
    patch_nemotron_h(ours, backend="auto", chunked_loss=100)
    ids = torch.randint(0, 4096, (2, 128), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    results = []
    for model in (ref, hf, ours):
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        results.append({"loss": out.loss.detach(), **{n: p.grad for n, p in model.named_parameters()}})
    assert out.logits is None
    r, b, a = results
    for name in r:
        assert rel_err(a[name], r[name]) <= 2 * rel_err(b[name], r[name]) + SLACK, name
