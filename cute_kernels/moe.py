"""A routed mixture-of-experts layer on the grouped squared-ReLU MLP.

    y = routed_srelu_experts(hidden, topk_idx, topk_weight, w1, w2)

hidden (T, H); topk_idx (T, k) expert ids in [0, E); topk_weight (T, k) router weights
(any float dtype: they reach the op as `prob`, so their gradient comes from the FC2
data-gradient epilogue on the cute path); w1 (E, F, H), w2 (E, H, F).  Returns (T, H)
in hidden's dtype: y[t] = sum_i topk_weight[t, i] * expert_{topk_idx[t, i]}(hidden[t]).

Steps, each a plain torch op for now (no fused gather/scatter in the GEMMs yet):
1. `route(topk_idx, E)`: one stable sort of the T*k (token, slot) pairs by expert id
   (ties keep token order, so the permutation and every sum below are deterministic)
   and the per-expert counts from a searchsorted on the sorted ids: a GPU tensor, no
   host sync (torch.bincount would read its maximum back to the host).
2. dispatch: x_perm = hidden[token of each sorted pair] (one gather); its backward
   gathers the k gradient rows of each token and sums them (no atomics).
3. `srelu_mlp(x_perm, w1, w2, m_splits=counts, prob=weights in sorted order)`.
4. combine: y = y_perm[inverse order].view(T, k, H).sum(1) (one gather, a sum over
   k accumulated in fp32 by torch); its backward is one gather.
Dispatch and combine are each other's adjoint, written as two small autograd nodes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import InputError
from .mlp import srelu_mlp


@dataclass
class Routing:
    """Where each (token, slot) pair goes: `order[j]` is the flat pair index (t*k + i) at
    sorted position j, `token[j] = order[j] // k` its token, `inverse[s]` the sorted
    position of pair s, `counts[e]` the pairs of expert e (int64 tensor on the device)."""

    order: torch.Tensor
    token: torch.Tensor
    inverse: torch.Tensor
    counts: torch.Tensor
    top_k: int


def route(topk_idx: torch.Tensor, num_experts: int) -> Routing:
    """Sort the (token, slot) pairs of `topk_idx` (T, k) by expert, stably."""
    k = topk_idx.size(1)
    flat = topk_idx.reshape(-1)
    sorted_ids, order = torch.sort(flat, stable=True)
    bounds = torch.searchsorted(sorted_ids, torch.arange(num_experts + 1, device=flat.device, dtype=sorted_ids.dtype))
    counts = bounds[1:] - bounds[:-1]
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return Routing(order, order // k, inverse, counts, k)


class _Dispatch(torch.autograd.Function):
    """hidden (T, H) -> rows in sorted pair order (T*k, H)."""

    @staticmethod
    def forward(ctx, hidden, token, inverse, top_k):
        ctx.save_for_backward(inverse)
        ctx.top_k = top_k
        return hidden.index_select(0, token)

    @staticmethod
    def backward(ctx, d_perm):
        (inverse,) = ctx.saved_tensors
        d = d_perm.index_select(0, inverse)
        return d.view(-1, ctx.top_k, d.size(-1)).sum(1), None, None, None


class _Combine(torch.autograd.Function):
    """rows in sorted pair order (T*k, H) -> per-token sums over the k slots (T, H)."""

    @staticmethod
    def forward(ctx, y_perm, token, inverse, top_k):
        ctx.save_for_backward(token)
        y = y_perm.index_select(0, inverse)
        return y.view(-1, top_k, y.size(-1)).sum(1)

    @staticmethod
    def backward(ctx, dy):
        (token,) = ctx.saved_tensors
        return dy.index_select(0, token), None, None, None


def _check(hidden, topk_idx, topk_weight, w1, w2):
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 2:
        raise InputError(f"hidden must be a 2-D (tokens, hidden) tensor, got {getattr(hidden, 'shape', hidden)}")
    t, h = hidden.shape
    if not isinstance(topk_idx, torch.Tensor) or topk_idx.dim() != 2 or topk_idx.size(0) != t:
        raise InputError(f"topk_idx must be ({t}, k), got {getattr(topk_idx, 'shape', topk_idx)}")
    if topk_idx.dtype not in (torch.int32, torch.int64):
        raise InputError(f"topk_idx must be int32 or int64, got {topk_idx.dtype}")
    if not isinstance(topk_weight, torch.Tensor) or topk_weight.shape != topk_idx.shape:
        raise InputError(f"topk_weight must have topk_idx's shape {tuple(topk_idx.shape)}, "
                         f"got {getattr(topk_weight, 'shape', topk_weight)}")
    if not topk_weight.is_floating_point():
        raise InputError(f"topk_weight must be a float tensor, got {topk_weight.dtype}")
    if w1.dim() != 3 or w2.dim() != 3 or w1.size(0) != w2.size(0):
        raise InputError(f"w1 (E, F, H) and w2 (E, H, F) must be 3-D with one E, got {tuple(w1.shape)}, {tuple(w2.shape)}")
    if w1.size(2) != h or w2.size(1) != h or w1.size(1) != w2.size(2):
        raise InputError(f"w1 {tuple(w1.shape)} and w2 {tuple(w2.shape)} do not fit hidden size {h}")
    for name, x in (("topk_idx", topk_idx), ("topk_weight", topk_weight), ("w1", w1), ("w2", w2)):
        if x.device != hidden.device:
            raise InputError(f"{name} is on {x.device}, hidden on {hidden.device}")


def routed_srelu_experts(hidden, topk_idx, topk_weight, w1, w2, *, recompute_postact: bool = False,
                         fuse_wgrad_accumulation: bool = False, backend: str = "auto", offload=None):
    """y (T, H) = sum over each token's k routed experts of weight * expert(hidden); see the module doc.

    Expert ids outside [0, E) are not checked on the device (that would be a host sync):
    they are dropped from the counts and their rows would be left out of the op.
    offload: an OffloadScheduler; the whole routed layer (dispatch, op, combine) is the
    step's next layer for it, or belongs to the enclosing `sched.layer(i)`."""
    _check(hidden, topk_idx, topk_weight, w1, w2)
    if offload is not None and offload.current_layer is None:
        with offload.layer():
            return routed_srelu_experts(hidden, topk_idx, topk_weight, w1, w2, recompute_postact=recompute_postact,
                                        fuse_wgrad_accumulation=fuse_wgrad_accumulation, backend=backend,
                                        offload=offload)
    if hidden.size(0) == 0:
        return hidden.new_zeros(hidden.shape)
    r = route(topk_idx, w1.size(0))
    x_perm = _Dispatch.apply(hidden, r.token, r.inverse, r.top_k)
    prob = topk_weight.reshape(-1).index_select(0, r.order)
    y_perm = srelu_mlp(x_perm, w1, w2, m_splits=r.counts, prob=prob, recompute_postact=recompute_postact,
                       fuse_wgrad_accumulation=fuse_wgrad_accumulation, backend=backend, offload=offload)
    return _Combine.apply(y_perm, r.token, r.inverse, r.top_k)
