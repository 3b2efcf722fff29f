"""Torch math of the MLP's pieces, once: the torch path of the op, the custom ops' CPU
implementations, the autotuner's correctness check and the tests all use these.

Nothing kernel-side imports this module, and it imports nothing of the package but the
activations, so there is no import circle.

- `splits_list`, `per_expert_mm`, `per_expert_wgrad`: grouped (per-expert) matrix products
  (on CUDA in bf16 one `torch._grouped_mm`, elsewhere a loop).
- `act_forward`, `act_backward`: postact = p * f(preact) and the data gradient of it,
  with fp32 elementwise math for half inputs (the activation f from
  `cute_kernels.activations`).
- Float32 references of the four GEMM kernels (`fc1_act_ref`, `fc2_ref`, `dgrad_act_ref`,
  `weight_grad_ref`) and test helpers (`rel_err`, `random_splits`, `grouped_ref`).
- `softmax_xent_ref`: the row softmax cross-entropy kernel's (sm90/softmax_xent.py) loss terms and
  logits gradient in float64.
"""
from __future__ import annotations

import torch

from .activations import SRELU, resolve_activation


def splits_list(m_splits):
    """Per-expert counts as a list of ints (a tensor costs one host sync), or None."""
    if m_splits is None:
        return None
    if isinstance(m_splits, torch.Tensor):
        return [int(v) for v in m_splits.tolist()]
    return list(m_splits)


def _grouped_mm_ok(a, w) -> bool:
    return (a.is_cuda and hasattr(torch, "_grouped_mm") and a.dtype == torch.bfloat16 and w.dtype == torch.bfloat16
            and not torch.compiler.is_compiling())


def per_expert_mm(a, w, splits, *, transpose_w: bool):
    """Concatenated per-expert a_e @ w_e^T (transpose_w) or a_e @ w_e.

    On CUDA (bf16) one torch._grouped_mm call; elsewhere a loop over experts."""
    if _grouped_mm_ok(a, w):
        offs = torch.tensor(splits, dtype=torch.int32).cumsum(0, dtype=torch.int32).to(a.device, non_blocking=True)
        try:
            return torch._grouped_mm(a, w.transpose(-2, -1) if transpose_w else w, offs=offs)
        except (RuntimeError, ValueError):  # shapes or alignment _grouped_mm does not take
            pass
    outs, start = [], 0
    for e, n in enumerate(splits):
        we = w[e]
        outs.append(a[start:start + n] @ (we.t() if transpose_w else we))
        start += n
    return torch.cat(outs, 0) if outs else a.new_empty((0, w.size(-2) if transpose_w else w.size(-1)))


def per_expert_wgrad(dy, x, splits, num_experts):
    """Stack of dy_e^T @ x_e, zeros for empty experts.

    On CUDA (bf16) one torch._grouped_mm call grouped along the token dimension."""
    if _grouped_mm_ok(dy, x):
        offs = torch.tensor(splits, dtype=torch.int32).cumsum(0, dtype=torch.int32).to(dy.device, non_blocking=True)
        try:
            out = torch._grouped_mm(dy.t(), x, offs=offs)
            empty = [e for e, n in enumerate(splits) if n == 0]
            if empty:  # an empty group's gradient is zero whatever the library leaves there
                out[empty] = 0
            return out
        except (RuntimeError, ValueError):
            pass
    out = dy.new_zeros((num_experts, dy.size(1), x.size(1)))
    start = 0
    for e, n in enumerate(splits):
        if n:
            out[e] = dy[start:start + n].t() @ x[start:start + n]
        start += n
    return out


def rows_mm(a, w, splits, *, transpose_w: bool = True):
    """a @ w^T (or a @ w), per expert when `splits` is given."""
    if splits is None:
        return a @ (w.t() if transpose_w else w)
    return per_expert_mm(a, w, splits, transpose_w=transpose_w)


def wgrad(dy, x, splits, num_experts: int = 1):
    """dy^T x, per expert when `splits` is given."""
    return dy.t() @ x if splits is None else per_expert_wgrad(dy, x, splits, num_experts)


def elementwise_dtype(x):
    """Elementwise math in fp32 for half inputs, else in the input precision."""
    return torch.promote_types(x.dtype, torch.float32)


def act_forward(preact, prob, out_dtype, activation=None):
    """postact = prob * f(preact) (fp32 math for half inputs)."""
    act = resolve_activation(activation)
    post = act.torch_forward(preact.to(elementwise_dtype(preact)))
    if prob is not None:
        post = post * prob.to(post.dtype).reshape(-1, 1)
    return post.to(out_dtype)


def act_backward(dpost, preact, prob, activation=None, *, want_prob_grad: bool = True, out=None):
    """(dpreact, dprob): dpreact = p * dpost * f'(preact) in dpost's dtype and, when `prob`
    is given, dprob = rowsum(dpost * f(preact)) in prob's dtype and shape.  fp32 math for
    half inputs, at most two full-size fp32 temporaries alive at a time.  `out`: a tensor of
    dpost's shape and dtype to write dpreact into (it may be `preact`: written after the last read)."""
    act = resolve_activation(activation)
    f = elementwise_dtype(dpost)
    x = preact.to(f)
    dpre = dpost.to(f) if dpost.dtype != f else dpost.clone()
    dprob = None
    if prob is not None and want_prob_grad:
        dprob = torch.einsum("ij,ij->i", dpre, act.torch_forward(x)).to(prob.dtype).reshape(prob.shape)
    dpre.mul_(act.torch_grad(x))
    del x
    if prob is not None:
        dpre.mul_(prob.to(f).reshape(-1, 1))
    if out is not None:
        return out.copy_(dpre), dprob
    return dpre.to(dpost.dtype), dprob


# ---- float32 references of the GEMM kernels (autotuner check, tests)

def grouped_ref(x, w, splits, fn=None):
    """Per-expert fp32 reference of x @ w[e]^T (then `fn`)."""
    outs, start = [], 0
    for e, s in enumerate(splits):
        y = x[start:start + s].float() @ w[e].float().t()
        outs.append(fn(y) if fn else y)
        start += s
    return torch.cat(outs, 0)


def fc2_ref(h, w, splits=None):
    """fp32 h @ w^T (per expert with splits)."""
    return h.float() @ w.float().t() if splits is None else grouped_ref(h, w, splits)


def fc1_act_ref(x, w, splits=None, prob=None, activation=None):
    """fp32 postact = prob * f(x @ w^T) (per expert with splits)."""
    post = resolve_activation(activation).torch_forward(fc2_ref(x, w, splits))
    return post if prob is None else post * prob.float().reshape(-1, 1)


def dgrad_act_ref(dy, w2, preact, splits=None, prob=None, activation=None):
    """fp32 dpreact = p * (dy @ w2) * f'(preact) for w2 in nn.Linear layout ([E,] H, F)."""
    if splits is None:
        d = dy.float() @ w2.float()
    else:
        d = grouped_ref(dy, w2.transpose(-2, -1), splits)
    d = d * resolve_activation(activation).torch_grad(preact.float())
    return d if prob is None else d * prob.float().reshape(-1, 1)


def weight_grad_ref(dy, x, splits=None):
    """fp32 dy^T x, or per expert (zeros for an empty one)."""
    if splits is None:
        return dy.float().t() @ x.float()
    out, start = [], 0
    for n in splits:
        out.append(dy[start:start + n].float().t() @ x[start:start + n].float())
        start += n
    return torch.stack(out)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in fp32 (fp64 if either is)."""
    dt = torch.float64 if torch.float64 in (out.dtype, ref.dtype) else torch.float32
    out, ref = out.to(dt), ref.to(dt)
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def random_splits(m_total: int, num_experts: int, gen: torch.Generator, *, empty: int = 0,
                  skew: bool = False) -> list[int]:
    """Random per-expert counts summing to m_total, `empty` of them zero (any generator device)."""
    weights = torch.rand(num_experts, generator=gen, device=gen.device).cpu() + 0.05
    if skew:
        weights = weights ** 4
    if empty:
        weights[torch.randperm(num_experts, generator=gen, device=gen.device).cpu()[:empty]] = 0
    if weights.sum() == 0:
        weights[0] = 1
    raw = (weights / weights.sum() * m_total).floor().long()
    raw[int(torch.argmax(weights))] += m_total - int(raw.sum())
    return [int(v) for v in raw]


__all__ = ["SRELU", "splits_list", "per_expert_mm", "per_expert_wgrad", "rows_mm", "wgrad", "elementwise_dtype",
           "act_forward", "act_backward", "grouped_ref", "fc2_ref", "fc1_act_ref", "dgrad_act_ref", "weight_grad_ref",
           "rel_err", "random_splits"]


def softmax_xent_ref(logits: torch.Tensor, targets: torch.Tensor, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss rows, g) in float64 of what the row softmax cross-entropy kernel computes from `logits`
    (R, V): per row lse - logit[target] and (softmax - onehot(target)) * scale; a target outside
    [0, V) marks an ignored row (0 loss, 0 gradient, its logits never looked at)."""
    x = logits.double()
    rows, vocab = x.shape
    valid = (targets >= 0) & (targets < vocab)
    safe = torch.where(valid, targets, torch.zeros_like(targets))
    x = torch.where(valid[:, None], x, torch.zeros_like(x))
    loss = torch.where(valid, torch.logsumexp(x, 1) - x.gather(1, safe[:, None]).squeeze(1), torch.zeros_like(x[:, 0]))
    g = torch.softmax(x, 1)
    g[torch.arange(rows, device=x.device), safe] -= 1.0
    return loss, g * (scale * valid[:, None])
