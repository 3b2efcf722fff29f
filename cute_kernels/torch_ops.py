"""The CuTe GEMM kernels as torch custom ops (torch.library), with fake implementations,
so torch.compile traces through them without graph breaks.

    torch.ops.cute_kernels.fc1_srelu_fwd(x, w1, m_splits, prob, store_preact) -> (preact, postact)
    torch.ops.cute_kernels.fc2_fwd(h, w2, m_splits) -> y

`m_splits` is a list of ints or None.  With store_preact=False the preact output is an
empty tensor.  CUDA runs the CuTe kernels; CPU runs the same math in torch (so the ops
are usable, and checkable with torch.library.opcheck, anywhere).
"""
from __future__ import annotations

from typing import Optional

import torch


def _mm_rows(a, w, splits):
    from .mlp import _per_expert_mm

    return a @ w.t() if splits is None else _per_expert_mm(a, w, splits, transpose_w=True)


@torch.library.custom_op("cute_kernels::fc1_srelu_fwd", mutates_args=())
def fc1_srelu_fwd(x: torch.Tensor, w1: torch.Tensor, m_splits: Optional[list[int]], prob: Optional[torch.Tensor],
                  store_preact: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if x.is_cuda:
        from .gemm_ops import fc1_srelu

        pre, post = fc1_srelu(x, w1, m_splits=m_splits, prob=prob, store_preact=store_preact)
        return (pre if pre is not None else x.new_empty((0,))), post
    from .mlp import srelu_torch

    pre = _mm_rows(x, w1, m_splits)
    return (pre if store_preact else x.new_empty((0,))), srelu_torch(pre, prob, x.dtype)


@fc1_srelu_fwd.register_fake
def _(x, w1, m_splits, prob, store_preact):
    n = w1.size(-2)
    pre = x.new_empty((x.size(0), n)) if store_preact else x.new_empty((0,))
    return pre, x.new_empty((x.size(0), n))


@torch.library.custom_op("cute_kernels::fc2_fwd", mutates_args=())
def fc2_fwd(h: torch.Tensor, w2: torch.Tensor, m_splits: Optional[list[int]]) -> torch.Tensor:
    if h.is_cuda:
        from .gemm_ops import fc2

        return fc2(h, w2, m_splits=m_splits)
    return _mm_rows(h, w2, m_splits)


@fc2_fwd.register_fake
def _(h, w2, m_splits):
    return h.new_empty((h.size(0), w2.size(-2)))


@torch.library.custom_op("cute_kernels::fc2_dgrad_dsrelu", mutates_args=())
def fc2_dgrad_dsrelu_op(dy: torch.Tensor, w2: torch.Tensor, preact: torch.Tensor, m_splits: Optional[list[int]],
                        store_postact: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(dpreact, postact or empty): dpreact = 2 (dy @ w2) relu(preact); postact = relu(preact)^2."""
    if dy.is_cuda:
        from .gemm_ops import fc2_dgrad_dsrelu

        dpre, post = fc2_dgrad_dsrelu(dy, w2, preact, m_splits=m_splits, store_postact=store_postact)
        return dpre, (post if post is not None else dy.new_empty((0,)))
    from .mlp import _per_expert_mm

    dpost = dy @ w2 if m_splits is None else _per_expert_mm(dy, w2, m_splits, transpose_w=False)
    f = torch.promote_types(dy.dtype, torch.float32)
    act = torch.relu(preact.to(f))
    dpre = (dpost.to(f) * act * 2.0).to(dy.dtype)
    return dpre, ((act * act).to(dy.dtype) if store_postact else dy.new_empty((0,)))


@fc2_dgrad_dsrelu_op.register_fake
def _(dy, w2, preact, m_splits, store_postact):
    return preact.new_empty(preact.shape), (preact.new_empty(preact.shape) if store_postact else dy.new_empty((0,)))
