"""A routed mixture-of-experts layer on the grouped squared-ReLU MLP.

    y = routed_srelu_experts(hidden, topk_idx, topk_weight, w1, w2)

hidden (T, H); topk_idx (T, k) expert ids in [0, E) (checked: see routed_srelu_experts);
topk_weight (T, k) router weights (any float dtype: they reach the op as `prob`, so their gradient comes from the FC2
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

`fused_gather=True` (cute path; off by default until an H200 run): step 2 is fused into FC1's A
loads (`fc1_srelu(..., a_rows=token)`, the sm90 gathering producer), so x_perm is never made: FC1
reads hidden's rows by index and saves hidden itself; its backward sums each token's k row
gradients as the dispatch's backward does and gathers the rows again, transiently, for the FC1
weight gradient.  Same bits as the x_perm path.  Eager only (the gathered FC1 is called
directly, not through the custom ops torch.compile traces).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .checks import InputError, check_float_dtype
from .mlp import gathered_srelu_mlp, uses_cute_path, srelu_mlp
from .mlp_checks import check_backend, check_main_grad, check_mlp_operands, check_offload


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
        return _token_sums(d_perm, inverse, ctx.top_k), None, None, None


def _token_sums(d_perm, inverse, top_k: int):
    """The dispatch's adjoint: each token's k row gradients (sorted pair order) summed, no atomics."""
    d = d_perm.index_select(0, inverse)
    return d.view(-1, top_k, d.size(-1)).sum(1)


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


class _NoPairs(torch.autograd.Function):
    """No (token, expert) pair to compute (no tokens, or k = 0): y = 0 (T, H), still a node of
    the graph, so y.sum().backward() works and hidden, topk_weight, w1 and w2 get zero gradients,
    not None (w1 and w2 none with fuse_wgrad_accumulation: their main_grad gets nothing to add)."""

    @staticmethod
    def forward(ctx, hidden, topk_weight, w1, w2, fuse_wgrad):
        ctx.like = [(t.shape, t.dtype, t.device) for t in (hidden, topk_weight, w1, w2)]
        ctx.fuse_wgrad = fuse_wgrad
        return hidden.new_zeros(hidden.shape)

    @staticmethod
    def backward(ctx, dy):
        grads = [torch.zeros(shape, dtype=dtype, device=device) if needed else None
                 for (shape, dtype, device), needed in zip(ctx.like, ctx.needs_input_grad)]
        if ctx.fuse_wgrad:
            grads[2] = grads[3] = None
        return (*grads, None)


def _shape(t):
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def _check(hidden, topk_idx, topk_weight, w1, w2, *, backend, offload, fuse_wgrad_accumulation) -> None:
    """Every argument, before anything runs (also when there is nothing to compute)."""
    check_backend(backend)
    check_offload(offload)
    check_mlp_operands(hidden, w1, w2, grouped=True, x_name="hidden")
    t = hidden.size(0)
    if not isinstance(topk_idx, torch.Tensor) or topk_idx.dim() != 2 or topk_idx.size(0) != t:
        raise InputError(f"topk_idx must be a ({t}, k) tensor, got {_shape(topk_idx)}")
    if topk_idx.dtype not in (torch.int32, torch.int64):
        raise InputError(f"topk_idx must be int32 or int64, got {topk_idx.dtype}")
    if not isinstance(topk_weight, torch.Tensor) or topk_weight.shape != topk_idx.shape:
        raise InputError(f"topk_weight must have topk_idx's shape {tuple(topk_idx.shape)}, got {_shape(topk_weight)}")
    check_float_dtype("topk_weight", topk_weight)
    for name, x in (("topk_idx", topk_idx), ("topk_weight", topk_weight)):
        if x.device != hidden.device:
            raise InputError(f"{name} is on {x.device}, hidden on {hidden.device}")
    if fuse_wgrad_accumulation:
        for name, w in (("w1", w1), ("w2", w2)):
            check_main_grad(name, w)
    # backend="cute" where the kernels cannot run is refused here too; the torch path reads the
    # expert counts to the host anyway, so there the ids are checked on the host
    _check_expert_ids(topk_idx, w1.size(0), on_device=uses_cute_path(hidden, backend))


def _check_expert_ids(topk_idx, num_experts: int, *, on_device: bool):
    """Expert ids in [0, E): an InputError naming topk_idx and the first bad id, read on the host
    for a CPU tensor or on the torch path; on the cute path (CUDA, no host sync in the step) a
    device-side assert, as torch's own indexing with a bad index on CUDA: the step's next sync
    fails with "device-side assert triggered" and this message in the CUDA log."""
    if topk_idx.numel() == 0:
        return
    if on_device and topk_idx.is_cuda:
        torch._assert_async(((topk_idx >= 0) & (topk_idx < num_experts)).all(),
                            f"routed_srelu_experts: topk_idx holds an expert id outside [0, {num_experts})")
        return
    bad = (topk_idx < 0) | (topk_idx >= num_experts)
    if bad.any():
        row, col = bad.nonzero()[0].tolist()
        raise InputError(f"topk_idx holds expert id {int(topk_idx[row, col])} at [{row}, {col}], outside "
                         f"[0, {num_experts}) (w1 has {num_experts} experts; {int(bad.sum())} ids out of range)")


def routed_srelu_experts(hidden, topk_idx, topk_weight, w1, w2, *, recompute_postact: bool = False,
                         fuse_wgrad_accumulation: bool = False, backend: str = "auto", offload=None,
                         fused_gather: bool = False, fp8=None):
    """y (T, H) = sum over each token's k routed experts of weight * expert(hidden); see the module doc.

    Every argument is checked first, also when there is nothing to compute (no tokens, or k = 0:
    y is zeros and every input gets a zero gradient).  Expert ids outside [0, E) raise an
    InputError naming topk_idx on a CPU tensor and on the torch path; on the cute path they are
    checked on the GPU without a host sync (a device-side assert, see `_check_expert_ids`).
    offload: an OffloadScheduler; the whole routed layer (dispatch, op, combine) is the
    step's next layer for it, or belongs to the enclosing `sched.layer(i)`.
    fused_gather: on the cute path, the dispatch gather runs inside FC1's operand loads (no x_perm
    copy; see the module doc); ignored on the torch path.
    fp8: an `Fp8Recipe` runs the experts' MLP step in FP8 (`srelu_mlp(..., fp8=)`, cute_kernels/fp8/mlp.py;
    not with fused_gather, whose gathered FC1 is bf16)."""
    if not isinstance(fused_gather, bool):
        raise InputError(f"fused_gather must be a bool, got {fused_gather!r}")
    if fp8 is not None and fused_gather:
        raise InputError("fp8 and fused_gather=True together are not supported yet (the gathered FC1 is bf16)")
    _check(hidden, topk_idx, topk_weight, w1, w2, backend=backend, offload=offload,
           fuse_wgrad_accumulation=fuse_wgrad_accumulation)
    if offload is not None and offload.current_layer is None:
        with offload.layer():
            return routed_srelu_experts(hidden, topk_idx, topk_weight, w1, w2, recompute_postact=recompute_postact,
                                        fuse_wgrad_accumulation=fuse_wgrad_accumulation, backend=backend,
                                        offload=offload, fused_gather=fused_gather, fp8=fp8)
    if topk_idx.numel() == 0:
        return _NoPairs.apply(hidden, topk_weight, w1, w2, fuse_wgrad_accumulation)
    r = route(topk_idx, w1.size(0))
    prob = topk_weight.reshape(-1).index_select(0, r.order)
    if fused_gather and uses_cute_path(hidden, backend) and w1.size(-2) > 0:
        y_perm = gathered_srelu_mlp(hidden, w1, w2, rows=r.token.to(torch.int32),
                                    rows_adjoint=functools.partial(_token_sums, inverse=r.inverse, top_k=r.top_k),
                                    m_splits=r.counts, prob=prob, recompute_postact=recompute_postact,
                                    fuse_wgrad_accumulation=fuse_wgrad_accumulation)
        return _Combine.apply(y_perm, r.token, r.inverse, r.top_k)
    x_perm = _Dispatch.apply(hidden, r.token, r.inverse, r.top_k)
    y_perm = srelu_mlp(x_perm, w1, w2, m_splits=r.counts, prob=prob, recompute_postact=recompute_postact,
                       fuse_wgrad_accumulation=fuse_wgrad_accumulation, backend=backend, offload=offload, fp8=fp8)
    return _Combine.apply(y_perm, r.token, r.inverse, r.top_k)
