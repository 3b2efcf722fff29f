"""A language-model head and its cross-entropy in token chunks: the loss of
`F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, ignore_index=...)` and its
gradients for hidden, weight and bias, without ever holding a (tokens x vocab) logits tensor.

    loss = chunked_linear_cross_entropy(hidden, lm_head.weight, targets)   # hidden (N, H), targets (N,)

Why: in a training step the head's logits and their fp32 copies are the largest tensors
(Nemotron-H on the H200, 8192 tokens x 16384 vocabulary: the log-softmax output and the
two fp32 gradients of the loss's backward are 512 MiB each, live together at the step's
peak; docs/chunked_loss.md).  Here each chunk of `chunk_tokens` rows computes
logits = hidden_chunk @ weight.T (+ bias) in the model's dtype, the loss in fp32
(logsumexp minus the target's logit; fp64 inputs stay fp64) and, when a gradient is wanted,
that chunk's gradients right away: g = (softmax - one-hot target) x scale, cast to the
model's dtype (where the unchunked head's backward casts it too), then
d_hidden_chunk = g @ weight and d_weight += g.T @ hidden_chunk (in place, in the weight's
dtype, one rounding per chunk; `fp32_weight_grad=True` accumulates in fp32).  The forward
keeps d_hidden (N x H) and d_weight (V x H) for the backward, which only scales them by the
incoming gradient: no second head GEMM.  Extra memory: those two and about 8 bytes x chunk x
vocabulary of chunk temporaries (bf16 logits, their fp32 exponentials, the bf16 gradient);
per chunk the elementwise work reads and writes about 28 bytes per logit (row max, exp,
sum, one scaled cast), a little less than the unchunked log-softmax + NLL and their
backward.  With CUTE_KERNELS_CE_KERNEL=1 a chunk's loss terms and gradient come instead from the
sm90 row kernel (softmax_xent_ops; bf16/fp16 on the GPU, a gradient wanted, vocabulary a multiple
of 8): 6 bytes per logit in two passes, the gradient written over the logits (no fp32 temporaries).

Semantics are torch's: targets equal to `ignore_index` contribute nothing; "mean" divides
by the number of the other targets (all ignored: NaN loss and zero gradients, as torch);
"sum" does not divide.  A target outside [0, vocab) that is not `ignore_index` is refused
(one host sync per call to check it).  Not twice differentiable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import InputError
from . import softmax_xent_ops

CHUNK_ELEMENTS = 1 << 25  # default chunk: about this many logits (bf16 + fp32 temporaries: 192 MiB)


def default_chunk_tokens(vocab_size: int) -> int:
    """Tokens per chunk when none is given: a chunk's logits hold about CHUNK_ELEMENTS
    values (16384 vocabulary: 2048 tokens; 131072: 256), and at least 16 rows."""
    return max(16, CHUNK_ELEMENTS // max(int(vocab_size), 1))


def _check(hidden, weight, targets, bias, ignore_index, chunk_tokens, reduction):
    for name, t in (("hidden", hidden), ("weight", weight), ("targets", targets)):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if hidden.dim() != 2 or weight.dim() != 2:
        raise InputError(f"hidden must be (tokens, H) and weight (vocab, H), got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if hidden.size(1) != weight.size(1):
        raise InputError(f"hidden has {hidden.size(1)} features but weight has {weight.size(1)} (weight is (vocab, H))")
    if not hidden.dtype.is_floating_point or hidden.dtype != weight.dtype:
        raise InputError(f"hidden and weight must share one floating-point dtype, got {hidden.dtype} and {weight.dtype}")
    if targets.shape != (hidden.size(0),) or targets.dtype != torch.long:
        raise InputError(f"targets must be int64 of shape ({hidden.size(0)},) (one per hidden row), got "
                         f"{targets.dtype} of shape {tuple(targets.shape)}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (weight.size(0),)
                             or bias.dtype != weight.dtype):
        raise InputError(f"bias must be None or a {weight.dtype} tensor of shape ({weight.size(0)},)")
    devices = {t.device for t in (hidden, weight, targets) + ((bias,) if bias is not None else ())}
    if len(devices) != 1:
        raise InputError(f"hidden, weight, targets and bias must be on one device, got {sorted(map(str, devices))}")
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise InputError(f"chunk_tokens must be a positive int or None, got {chunk_tokens!r}")
    if reduction not in ("mean", "sum"):
        raise InputError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise InputError(f"ignore_index must be an int, got {ignore_index!r}")
    vocab = weight.size(0)
    bad = ((targets < 0) | (targets >= vocab)) & (targets != ignore_index)
    if targets.numel() and bool(bad.any()):
        first = targets[bad][0].item()
        raise InputError(f"targets hold {first}, outside [0, {vocab}) and not ignore_index={ignore_index}")


def _chunk_torch(h, weight, bias, rows_t, rows_valid, scale, cdt, want_grad, d_bias):
    """The torch form of one chunk of rows `h`: (the sum of its rows' loss terms in cdt, the
    gradient for its logits in the model's dtype, or None without `want_grad`); adds the chunk's
    bias gradient to d_bias when that is not None."""
    logits = F.linear(h, weight, bias)  # the model dtype's logits, as the unchunked head
    picked = logits.gather(1, rows_t).squeeze(1).to(cdt)
    row_max = logits.amax(dim=1).to(cdt)
    x = torch.sub(logits, row_max[:, None])  # in cdt (the row max is a cdt tensor): exact differences
    del logits
    x.exp_()
    sum_exp = x.sum(dim=1)
    lse = row_max + sum_exp.log()
    part = torch.where(rows_valid > 0, lse - picked, torch.zeros_like(lse)).sum()
    if not want_grad:
        return part, None
    # gradient of the loss for the logits: (softmax - one_hot) * scale on valid rows, 0 on ignored ones;
    # x holds exp(logit - max): subtract sum_exp at the target, then one multiply by scale / sum_exp
    x.scatter_add_(1, rows_t, -(sum_exp * rows_valid)[:, None])
    coef = rows_valid * scale / sum_exp
    if d_bias is not None:
        d_bias += torch.mv(x.t(), coef)
    g = torch.empty(x.shape, dtype=weight.dtype, device=x.device)
    torch.mul(x, coef[:, None], out=g)  # cast to the model dtype, where the unchunked backward casts it too
    return part, g


def _bias_grad_of_kernel_chunk(g, kernel_targets, loss_rows, scale32):
    """The bias gradient of a chunk the row kernel did, in fp32: the column sums of its bf16 g with
    each target's element taken in fp32 instead, (p_t - 1) x scale = expm1(-loss_row) x scale (the
    kernel's loss term is -log p_t).  Without that, every row's target element, about -scale for a
    large vocabulary, rounds to bf16 the same way: a bias of up to 2^-9 relative in each column
    that holds targets (the torch form takes d_bias from its fp32 exponentials before the cast)."""
    valid = kernel_targets >= 0
    t = kernel_targets.clamp_min(0)
    rounded = g.gather(1, t[:, None]).squeeze(1).float()
    exact = torch.expm1(-loss_rows) * scale32
    col = g.sum(dim=0, dtype=torch.float32)
    return col.index_add_(0, t, torch.where(valid, exact - rounded, torch.zeros_like(exact)))


def _loss_and_grads(hidden, weight, bias, targets, *, ignore_index, chunk_tokens, reduction,
                    need_hidden, need_weight, need_bias, fp32_weight_grad=False):
    """(loss, d_hidden, d_weight, d_bias) for a loss gradient of 1; a gradient not needed is None.
    With CUTE_KERNELS_CE_KERNEL=1 and a gradient wanted, each chunk's loss terms and logits
    gradient come from the row kernel (softmax_xent_ops) where it takes the logits (bf16/fp16 on
    a GPU with the kernel, vocab a multiple of 8); else from the torch form (_chunk_torch)."""
    tokens, dim = hidden.shape
    vocab = weight.size(0)
    cdt = torch.promote_types(hidden.dtype, torch.float32)  # the loss's dtype: fp32, or fp64 for fp64 inputs
    valid = targets != ignore_index
    count = valid.sum().to(cdt)
    safe_targets = torch.where(valid, targets, torch.zeros_like(targets))
    # the gradient's scale: 1/count for "mean" (count 0: every row is ignored, so no gradient at all)
    scale = 1.0 / count.clamp_min(1) if reduction == "mean" else torch.ones((), dtype=cdt, device=hidden.device)
    total = torch.zeros((), dtype=cdt, device=hidden.device)
    any_grad = need_hidden or need_weight or need_bias
    d_hidden = torch.empty_like(hidden) if need_hidden else None
    acc_dtype = cdt if fp32_weight_grad else weight.dtype
    # d_weight: the first chunk's GEMM writes it (no zero fill to add to), the others add to it
    d_weight = (torch.empty if tokens else torch.zeros)(vocab, dim, dtype=acc_dtype, device=weight.device) \
        if need_weight else None
    d_bias = torch.zeros(vocab, dtype=cdt, device=weight.device) if need_bias else None
    kernel = None  # the row kernel's inputs: an ignored row's target is -1, the loss terms land in loss_rows
    if any_grad and softmax_xent_ops.ce_kernel_enabled() and softmax_xent_ops.kernel_takes_logits(
            weight.dtype, vocab, hidden.device):
        kernel = (torch.where(valid, targets, -1), scale.reshape(1).to(torch.float32),
                  torch.empty(tokens, dtype=torch.float32, device=hidden.device))
    for start in range(0, tokens, chunk_tokens):
        stop = min(start + chunk_tokens, tokens)
        h = hidden[start:stop]
        if kernel is not None:
            kernel_targets, scale32, loss_rows = kernel
            g = softmax_xent_ops.softmax_xent_(F.linear(h, weight, bias), kernel_targets[start:stop], scale32,
                                               loss_rows[start:stop])
            if need_bias:
                d_bias += _bias_grad_of_kernel_chunk(g, kernel_targets[start:stop], loss_rows[start:stop], scale32)
        else:
            part, g = _chunk_torch(h, weight, bias, safe_targets[start:stop, None], valid[start:stop].to(cdt),
                                   scale, cdt, any_grad, d_bias)
            total += part
            if g is None:
                continue
        if need_hidden:
            torch.mm(g, weight, out=d_hidden[start:stop])
        if need_weight:
            if acc_dtype == weight.dtype:
                if start == 0:
                    torch.mm(g.t(), h, out=d_weight)
                else:
                    d_weight.addmm_(g.t(), h)  # in place: the GEMM adds to what the earlier chunks left
            elif start == 0:
                d_weight.copy_(torch.mm(g.t(), h))
            else:
                d_weight += torch.mm(g.t(), h)
        del g
    if kernel is not None:
        total = kernel[2].sum(dtype=cdt)  # the kernel's per-row loss terms (0 on ignored rows)
    loss = total / count if reduction == "mean" else total  # all ignored: 0/0 = NaN, as torch's mean
    if d_weight is not None:
        d_weight = d_weight.to(weight.dtype)
    if d_bias is not None:
        d_bias = d_bias.to(weight.dtype)
    return loss, d_hidden, d_weight, d_bias


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """The autograd node: the forward computes the loss and the gradients chunk by chunk and
    saves only the gradients; the backward scales them by the loss's incoming gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index, chunk_tokens, reduction, fp32_weight_grad):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        loss, dh, dw, db = _loss_and_grads(hidden, weight, bias, targets, ignore_index=ignore_index,
                                           chunk_tokens=chunk_tokens, reduction=reduction, need_hidden=need_h,
                                           need_weight=need_w, need_bias=need_b and bias is not None,
                                           fp32_weight_grad=fp32_weight_grad)
        ctx.has = (dh is not None, dw is not None, db is not None)
        ctx.save_for_backward(*(t for t in (dh, dw, db) if t is not None))
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        saved = iter(ctx.saved_tensors)
        grads = [next(saved) * grad_loss if has else None for has in ctx.has]  # 0-dim: keeps their dtype
        return grads[0], grads[1], grads[2], None, None, None, None, None


def chunked_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                 bias: torch.Tensor | None = None, *, ignore_index: int = -100,
                                 chunk_tokens: int | None = None, reduction: str = "mean",
                                 fp32_weight_grad: bool = False) -> torch.Tensor:
    """`F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, ignore_index=ignore_index,
    reduction=reduction)` in chunks of `chunk_tokens` rows (default: `default_chunk_tokens(vocab)`),
    never holding the whole logits.  hidden (N, H), weight (V, H), bias (V,) or None, all one
    dtype; targets (N,) int64.  Returns the fp32 (fp64 for fp64 inputs) scalar loss; the
    gradients for hidden, weight and bias are computed in this call when autograd wants them.
    fp32_weight_grad: accumulate the weight's gradient over the chunks in fp32 (one more V x H
    fp32 buffer and an add per chunk) instead of in place in the weight's dtype (one rounding
    per chunk, as Liger-Kernel's default)."""
    if chunk_tokens is None and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        chunk_tokens = default_chunk_tokens(weight.size(0))
    _check(hidden, weight, targets, bias, ignore_index, chunk_tokens, reduction)
    wants_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias))
    if not wants_grad:
        return _loss_and_grads(hidden, weight, bias, targets, ignore_index=ignore_index, chunk_tokens=chunk_tokens,
                               reduction=reduction, need_hidden=False, need_weight=False, need_bias=False)[0]
    return ChunkedLinearCrossEntropy.apply(hidden, weight, bias, targets, ignore_index, chunk_tokens, reduction,
                                           bool(fp32_weight_grad))
