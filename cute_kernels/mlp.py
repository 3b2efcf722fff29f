"""The squared-ReLU MLP as one autograd op: y = FC2(p * relu(FC1 x)^2), dense or grouped.

`srelu_mlp(x, w1, w2, *, m_splits=None, prob=None, recompute_postact=False, backend="auto")`
- backend "cute": forward through the CuTe kernels (fc1_srelu, fc2); backward in
  torch math.  CUTE_KERNELS_FUSED_DGRAD=1 switches the backward (without a router
  probability) to the fused FC2-dgrad + dSReLU kernel and the CuTe GEMM for FC1's
  dgrad: experimental until its GPU tests pass (see notes/issue-3-progress.md).
  "torch": plain torch; "auto": cute on a supported CUDA GPU, else torch.
- What the op saves for backward is explicit and tagged by role for the offload
  policy (offload.roles): the FC1 input ("fc1_input"), the pre-activation
  ("preact"), the post-activation ("postact", not saved when `recompute_postact`)
  and the router probability ("prob").  Both backends save the same roles.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger("cute_kernels")
_announced: set = set()


def _tag(t, role):
    """Name a saved tensor for the offload policy (eager only: under torch.compile the
    compiled graph owns its saved tensors and nothing is tagged)."""
    if torch.compiler.is_compiling():
        return t
    from offload.roles import tag

    return tag(t, role)


def _splits_list(m_splits):
    if m_splits is None:
        return None
    if isinstance(m_splits, torch.Tensor):
        return [int(v) for v in m_splits.tolist()]
    return list(m_splits)


def _grouped_mm_ok(a, w) -> bool:
    return (a.is_cuda and hasattr(torch, "_grouped_mm") and a.dtype == torch.bfloat16 and w.dtype == torch.bfloat16
            and not torch.compiler.is_compiling())


def _per_expert_mm(a, w, splits, *, transpose_w: bool):
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


def _per_expert_wgrad(dy, x, splits, num_experts):
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


@torch.compiler.assume_constant_result
def _is_sm90(device_index) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] == 9


def fused_dgrad_enabled() -> bool:
    import os

    return os.environ.get("CUTE_KERNELS_FUSED_DGRAD", "0") == "1"


def _elementwise_dtype(x):
    """Elementwise math in fp32 for half inputs, else in the input precision."""
    return torch.promote_types(x.dtype, torch.float32)


def _use_cute(x, backend: str) -> bool:
    if backend == "torch":
        return False
    ok = x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and _is_sm90(x.device.index)
    if backend == "cute" and not ok:
        raise ValueError("backend='cute' needs bf16/fp16 CUDA tensors on a Hopper (sm90) GPU")
    return ok


def srelu_torch(preact, prob, out_dtype):
    """postact = prob * relu(preact)^2 in torch (fp32 math for half inputs)."""
    f = _elementwise_dtype(preact)
    act = torch.relu(preact.to(f))
    post = act * act
    if prob is not None:
        post = post * prob.to(f).reshape(-1, 1)
    return post.to(out_dtype)


class SReLUMLPFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, w2, prob, splits, recompute_postact, use_cute):
        grouped = splits is not None
        if use_cute:
            from . import torch_ops

            preact, postact = torch_ops.fc1_srelu_fwd(x, w1, splits, prob, True)
            y = torch_ops.fc2_fwd(postact, w2, splits)
        else:
            preact = _per_expert_mm(x, w1, splits, transpose_w=True) if grouped else x @ w1.t()
            postact = srelu_torch(preact, prob, x.dtype)
            y = _per_expert_mm(postact, w2, splits, transpose_w=True) if grouped else postact @ w2.t()
        ctx.splits = splits
        ctx.use_cute = use_cute
        ctx.recompute_postact = recompute_postact
        ctx.has_prob = prob is not None
        saved = [_tag(x, "fc1_input"), _tag(preact, "preact"), None if recompute_postact else _tag(postact, "postact"),
                 _tag(prob, "prob") if prob is not None else None, w1, w2]
        ctx.save_for_backward(*saved)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, preact, postact, prob, w1, w2 = ctx.saved_tensors
        splits = ctx.splits
        grouped = splits is not None
        if ctx.use_cute and prob is None and fused_dgrad_enabled():
            return SReLUMLPFunction._backward_cute(ctx, dy.contiguous(), x, preact, postact, w1, w2, splits)
        f = _elementwise_dtype(x)
        act = torch.relu(preact.to(f))
        p = prob.to(f).reshape(-1, 1) if prob is not None else None
        if postact is None:
            post = act * act
            postact = (post * p if p is not None else post).to(x.dtype)
        dy = dy.contiguous()
        dpost = _per_expert_mm(dy, w2, splits, transpose_w=False) if grouped else dy @ w2
        dw2 = _per_expert_wgrad(dy, postact, splits, w2.size(0)) if grouped else dy.t() @ postact
        # fp32 elementwise math with two full-size temporaries (act, dpre), updated in place
        dpre = dpost.to(f) if dpost.dtype != f else dpost.clone()
        dpre.mul_(act)
        dprob = None
        if p is not None:
            # rowsum(dpost * act^2) without another full-size temporary
            dprob = torch.einsum("ij,ij->i", dpre, act).to(prob.dtype).reshape(prob.shape)
            dpre.mul_(p)
        dpre = dpre.mul_(2.0).to(x.dtype)
        dx = _per_expert_mm(dpre, w1, splits, transpose_w=False) if grouped else dpre @ w1
        dw1 = _per_expert_wgrad(dpre, x, splits, w1.size(0)) if grouped else dpre.t() @ x
        return dx, dw1, dw2, dprob, None, None, None

    @staticmethod
    def _backward_cute(ctx, dy, x, preact, postact, w1, w2, splits):
        """FC2 dgrad with the SReLU derivative (and the postact recompute) fused in one
        CuTe GEMM; FC1 dgrad on the CuTe GEMM with w1 read transposed; weight
        gradients in torch for now."""
        from . import torch_ops

        grouped = splits is not None
        dpre, post_re = torch_ops.fc2_dgrad_dsrelu_op(dy, w2, preact, splits, postact is None)
        if postact is None:
            postact = post_re
        dw2 = _per_expert_wgrad(dy, postact, splits, w2.size(0)) if grouped else dy.t() @ postact
        dx = torch_ops.fc2_fwd(dpre, w1.transpose(-2, -1), splits)
        dw1 = _per_expert_wgrad(dpre, x, splits, w1.size(0)) if grouped else dpre.t() @ x
        return dx, dw1, dw2, None, None, None, None


def srelu_mlp(x, w1, w2, *, m_splits=None, prob=None, recompute_postact: bool = False, backend: str = "auto"):
    """y = (p * relu(x @ w1^T)^2) @ w2^T; grouped when `m_splits` is given (w1 (E, F, H), w2 (E, H, F))."""
    if backend not in ("auto", "cute", "torch"):
        raise ValueError(f"backend must be 'auto', 'cute' or 'torch', got {backend!r}")
    use_cute = _use_cute(x, backend)
    if not torch.compiler.is_compiling():
        path = "cute" if use_cute else "torch"
        if path not in _announced:
            _announced.add(path)
            log.info("srelu_mlp: using the %s path", path)
    return SReLUMLPFunction.apply(x, w1, w2, prob, _splits_list(m_splits), recompute_postact, use_cute)
