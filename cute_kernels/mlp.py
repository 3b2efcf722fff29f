"""The squared-ReLU MLP as one autograd op: y = FC2(p * relu(FC1 x)^2), dense or grouped.

`srelu_mlp(x, w1, w2, *, m_splits=None, prob=None, recompute_postact=False,
           fuse_wgrad_accumulation=False, backend="auto")`
- backend "cute": every GEMM on the CuTe kernels.  Forward: fc1_srelu, fc2.
  Backward: FC2 dgrad with the SReLU derivative, the postact recompute and the router
  gradient fused in its epilogue (fc2_dgrad_dsrelu), FC1 dgrad (the FC2 kernel reading
  w1 transposed in place), and both weight gradients (weight_grad; grouped: the
  K-grouped kernel, one (N, K) gradient per expert).  CUTE_KERNELS_BACKWARD=torch keeps
  the CuTe forward and does the backward in torch math.
  "torch": plain torch; "auto": cute on a supported CUDA GPU, else torch.
- fuse_wgrad_accumulation: w1 and w2 carry an fp32 `main_grad` of their shape (as in
  Megatron-style training); the weight gradients are added into it (in the GEMM's
  epilogue on the cute path) and the op returns no .grad for w1 and w2.
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


def _op_splits(splits):
    """(list or None, GPU tensor or None): how the custom ops take the splits.  The cute
    path keeps a CUDA m_splits tensor as is (the kernels read it, no host sync)."""
    if isinstance(splits, torch.Tensor):
        return None, splits
    return splits, None


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


def cute_backward_enabled() -> bool:
    import os

    return os.environ.get("CUTE_KERNELS_BACKWARD", "cute") != "torch"


def _main_grad(w, name):
    mg = getattr(w, "main_grad", None)
    if not isinstance(mg, torch.Tensor) or mg.shape != w.shape or mg.device != w.device:
        raise ValueError(f"fuse_wgrad_accumulation=True needs {name}.main_grad: a tensor of {name}'s shape "
                         f"{tuple(w.shape)} on {w.device}, got {getattr(mg, 'shape', mg)}")
    return mg


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
    def forward(ctx, x, w1, w2, prob, splits, recompute_postact, use_cute, fuse_wgrad):
        grouped = splits is not None
        if use_cute:
            from .torch_ops import ops

            sl, st = _op_splits(splits)
            torch_ops = ops()
            preact, postact = torch_ops.fc1_srelu_fwd(x, w1, sl, prob, True, splits_t=st)
            y = torch_ops.fc2_fwd(postact, w2, sl, splits_t=st)
        else:
            preact = _per_expert_mm(x, w1, splits, transpose_w=True) if grouped else x @ w1.t()
            postact = srelu_torch(preact, prob, x.dtype)
            y = _per_expert_mm(postact, w2, splits, transpose_w=True) if grouped else postact @ w2.t()
        ctx.splits = splits
        ctx.use_cute = use_cute
        ctx.recompute_postact = recompute_postact
        ctx.has_prob = prob is not None
        ctx.fuse_wgrad = fuse_wgrad
        saved = [_tag(x, "fc1_input"), _tag(preact, "preact"), None if recompute_postact else _tag(postact, "postact"),
                 _tag(prob, "prob") if prob is not None else None, w1, w2]
        ctx.save_for_backward(*saved)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, preact, postact, prob, w1, w2 = ctx.saved_tensors
        splits = ctx.splits
        grouped = splits is not None
        if ctx.use_cute and cute_backward_enabled():
            return SReLUMLPFunction._backward_cute(ctx, dy.contiguous(), x, preact, postact, prob, w1, w2, splits)
        splits = _splits_list(splits)  # torch math takes a list (a GPU tensor costs one sync here)
        f = _elementwise_dtype(x)
        act = torch.relu(preact.to(f))
        p = prob.to(f).reshape(-1, 1) if prob is not None else None
        if postact is None:
            post = act * act
            postact = (post * p if p is not None else post).to(x.dtype)
        dy = dy.contiguous()
        dpost = _per_expert_mm(dy, w2, splits, transpose_w=False) if grouped else dy @ w2
        dw2 = _per_expert_wgrad(dy, postact, splits, w2.size(0)) if grouped else dy.t() @ postact
        dw2 = _accumulate_main_grad(ctx, w2, "w2", dw2)
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
        dw1 = _accumulate_main_grad(ctx, w1, "w1", dw1)
        return dx, dw1, dw2, dprob, None, None, None, None

    @staticmethod
    def _backward_cute(ctx, dy, x, preact, postact, prob, w1, w2, splits):
        """Four CuTe GEMMs: FC2 dgrad with the SReLU derivative, the postact recompute
        and the router gradient in its epilogue; FC2's weight gradient; FC1's dgrad
        (w1 read transposed in place); FC1's weight gradient."""
        from .torch_ops import ops

        sl, st = _op_splits(splits)
        torch_ops = ops()
        dpre, post_re, dprob = torch_ops.fc2_dgrad_dsrelu_op(dy, w2, preact, sl, prob, postact is None, splits_t=st)
        if postact is None:
            postact = post_re
        dw2 = _cute_wgrad(ctx, dy, postact, splits, w2, "w2")
        del postact, post_re
        dx = torch_ops.fc2_fwd(dpre, w1.transpose(-2, -1), sl, splits_t=st)
        dw1 = _cute_wgrad(ctx, dpre, x, splits, w1, "w1")
        dprob = dprob.to(prob.dtype).reshape(prob.shape) if prob is not None else None
        return dx, dw1, dw2, dprob, None, None, None, None


def _accumulate_main_grad(ctx, w, name, dw):
    """torch path: add dw into w.main_grad (fuse_wgrad_accumulation) and return no grad."""
    if not ctx.fuse_wgrad:
        return dw
    mg = _main_grad(w, name)
    mg.add_(dw.to(mg.dtype))
    return None


def _cute_wgrad(ctx, dy, x, splits, w, name):
    """cute path: dw = dy^T x (per expert when grouped: the K-grouped kernel), or added
    into w.main_grad in the GEMM's epilogue."""
    from .torch_ops import ops

    sl, st = _op_splits(splits)
    torch_ops = ops()
    if ctx.fuse_wgrad:
        torch_ops.weight_grad_accumulate_op(dy, x, sl, _main_grad(w, name), splits_t=st)
        return None
    return torch_ops.weight_grad_op(dy, x, sl, splits_t=st)


def srelu_mlp(x, w1, w2, *, m_splits=None, prob=None, recompute_postact: bool = False,
              fuse_wgrad_accumulation: bool = False, backend: str = "auto"):
    """y = (p * relu(x @ w1^T)^2) @ w2^T; grouped when `m_splits` is given (w1 (E, F, H), w2 (E, H, F)).

    m_splits: per-expert token counts (tokens sorted by expert), a list of ints or an
    integer tensor; on the cute path a CUDA tensor is read by the kernels on the GPU, so
    the step has no host sync (the torch path converts it to a list)."""
    if backend not in ("auto", "cute", "torch"):
        raise ValueError(f"backend must be 'auto', 'cute' or 'torch', got {backend!r}")
    use_cute = _use_cute(x, backend)
    if not torch.compiler.is_compiling():
        path = "cute" if use_cute else "torch"
        if path not in _announced:
            _announced.add(path)
            log.info("srelu_mlp: using the %s path", path)
    if fuse_wgrad_accumulation:
        for w, name in ((w1, "w1"), (w2, "w2")):
            _main_grad(w, name)
    if use_cute and isinstance(m_splits, torch.Tensor) and m_splits.is_cuda:
        splits = m_splits  # read on the GPU by the kernels: no host sync
    else:
        splits = _splits_list(m_splits)
    return SReLUMLPFunction.apply(x, w1, w2, prob, splits, recompute_postact, use_cute, fuse_wgrad_accumulation)
