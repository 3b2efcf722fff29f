"""The squared-ReLU MLP as an autograd op: y = FC2(p * relu(FC1 x)^2), dense or grouped.

Two autograd nodes (FC1+SReLU, FC2 with the SReLU derivative in its backward), so that
the activations FC2's backward reads are freed before FC1's gradients are computed.

`srelu_mlp(x, w1, w2, *, m_splits=None, prob=None, recompute_postact=False,
           fuse_wgrad_accumulation=False, backend="auto", offload=None)`
- backend "cute": every GEMM on the CuTe kernels.  Forward: fc1_srelu, fc2.
  Backward: FC2 dgrad with the SReLU derivative, the postact recompute and the router
  gradient fused in its epilogue (fc2_dgrad_dsrelu), FC1 dgrad (the FC2 kernel reading
  w1 transposed in place), and both weight gradients (weight_grad; grouped: the
  K-grouped kernel, one (N, K) gradient per expert).  CUTE_KERNELS_BACKWARD=torch keeps
  the CuTe forward and does the backward in torch math.
  "torch": plain torch; "auto": cute on a GPU whose arch has kernels (cute_kernels.archs:
  sm90 on compute capability 9.x, sm100 on 10.x, with its first-use self-check), else torch.
- fuse_wgrad_accumulation: w1 and w2 carry an fp32 `main_grad` of their shape (as in
  Megatron-style training); the weight gradients are added into it (in the GEMM's
  epilogue on the cute path) and the op returns no .grad for w1 and w2.
- What the op saves for backward is explicit and tagged by role for the offload
  policy (offload.roles): the FC1 input ("fc1_input"), the pre-activation
  ("preact"), the post-activation ("postact", not saved when `recompute_postact`)
  and the router probability ("prob").  Both backends save the same roles.
- offload: an OffloadScheduler; the call is marked as the step's next layer for it.
"""
from __future__ import annotations

import logging

import torch

from . import archs, launch_plan, torch_ops
from .activations import SRELU, resolve_activation
from .autograd_io import main_grad, offload_hooks, tag_role
from .checks import InputError
from .first_order import first_order_only
from .mlp_checks import (check_backend, check_mlp_inputs, check_mlp_tensors, check_offload, checked_host_splits,
                         mlp_inputs_signature)
from .reference import act_backward, act_forward, per_expert_mm, per_expert_wgrad, splits_list

log = logging.getLogger("cute_kernels")
_announced: set = set()


def _op_splits(splits):
    """(list or None, GPU tensor or None): how the custom ops take the splits.  The cute
    path keeps a CUDA m_splits tensor as is (the kernels read it, no host sync)."""
    if isinstance(splits, torch.Tensor):
        return None, splits
    return splits, None


def cute_backward_enabled() -> bool:
    import os

    return os.environ.get("CUTE_KERNELS_BACKWARD", "cute") != "torch"


def kernel_arch(x) -> str | None:
    """The arch whose kernels run on x's device (cute_kernels.archs: sm90 on compute capability
    9.x, sm100 on 10.x), or None: a CPU tensor or a GPU without kernels here."""
    return archs.device_arch(x.device)


def uses_cute_path(x, backend: str) -> bool:
    """backend "auto": the CuTe kernels wherever an arch has them (bf16/fp16 CUDA tensors),
    else torch; "cute": the kernels or an InputError; "torch": torch."""
    if backend == "torch":
        return False
    ok = x.dtype in (torch.bfloat16, torch.float16) and kernel_arch(x) is not None
    if backend == "cute" and not ok:
        raise InputError(f"backend='cute' needs bf16/fp16 CUDA tensors on a GPU with CuTe kernels "
                         f"({archs.describe_arches()}); got {x.dtype} on {x.device}")
    return ok


def srelu_torch(preact, prob, out_dtype, activation=None):
    """postact = prob * f(preact) in torch (fp32 math for half inputs; f defaults to relu^2)."""
    return act_forward(preact, prob, out_dtype, activation)


# The op is two autograd nodes, FC1+SReLU and FC2, so that autograd frees what FC2's
# backward needs (preact, postact, prob) as soon as that backward is done, before FC1's
# data and weight gradients are computed (one node would hold them to the end of the
# whole backward).  FC2's backward runs the fused dgrad, whose output is already the
# gradient of preact: it hands that to the FC1 node as the gradient of postact (an
# internal tensor nothing else reads), and the FC1 node treats it as such.


class FC1SReLUFunction(torch.autograd.Function):
    """(x, w1, prob) -> (postact, preact); backward receives dpreact (see above)."""

    @staticmethod
    def forward(ctx, x, w1, prob, splits, use_cute, fuse_wgrad, activation=SRELU):
        if use_cute:
            ctx.op_splits = sl, st = _op_splits(splits)  # (the backward's launches take them too)
            preact, postact = torch_ops.ops().fc1_srelu_fwd(x, w1, sl, prob, True, splits_t=st,
                                                            activation=torch_ops.activation_arg(activation))
        else:
            preact = per_expert_mm(x, w1, splits, transpose_w=True) if splits is not None else x @ w1.t()
            postact = srelu_torch(preact, prob, x.dtype, activation)
        ctx.splits = splits
        ctx.use_cute = use_cute
        ctx.fuse_wgrad = fuse_wgrad
        # preact stays a (formally) differentiable output: ctx keeps a reference to outputs
        # marked non-differentiable until the node dies (end of backward), which would hold
        # preact through FC1's gradients.  FC2's node returns no gradient for it, and
        # without materialized grads none is allocated.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(tag_role(x, "fc1_input"), w1)
        return postact, preact

    @staticmethod
    @first_order_only("srelu_mlp")
    def backward(ctx, dpre, _no_grad_preact):
        x, w1 = ctx.saved_tensors
        if dpre is None:  # y was not part of what is differentiated
            return None, None, None, None, None, None, None
        splits = ctx.splits
        dpre = dpre.contiguous()
        if ctx.use_cute and cute_backward_enabled():
            ops = torch_ops.ops()
            sl, st = ctx.op_splits
            dx = ops.fc1_dgrad(dpre, w1, sl, splits_t=st) if ctx.needs_input_grad[0] else None
            dw1 = _cute_wgrad(ctx, ops, dpre, x, w1, "w1") if ctx.needs_input_grad[1] else None
            return dx, dw1, None, None, None, None, None
        splits = splits_list(splits)
        grouped = splits is not None
        dx = None
        if ctx.needs_input_grad[0]:
            dx = per_expert_mm(dpre, w1, splits, transpose_w=False) if grouped else dpre @ w1
        if not ctx.needs_input_grad[1]:  # frozen w1
            return dx, None, None, None, None, None, None
        dw1 = per_expert_wgrad(dpre, x, splits, w1.size(0)) if grouped else dpre.t() @ x
        return dx, _accumulate_main_grad(ctx, w1, "w1", dw1), None, None, None, None, None


class GatheredFC1SReLUFunction(torch.autograd.Function):
    """FC1SReLUFunction of the rows x[rows] (the dispatch gather fused into FC1's A loads, cute
    path only): (x (T, H), w1, prob) -> (postact, preact) of M = len(rows) rows, without the (M, H)
    gathered copy; it saves x itself.  Backward: the rows' data gradient goes back to x through
    `rows_adjoint` (the caller's deterministic sum over each token's rows), dw1 from the rows
    gathered again for the weight-gradient kernel (a transient copy: the gathered weight gradient
    is not built yet)."""

    @staticmethod
    def forward(ctx, x, w1, prob, splits, rows, rows_adjoint, fuse_wgrad, activation=SRELU):
        from .gemm_ops import fc1_srelu

        preact, postact = fc1_srelu(x, w1, m_splits=splits, prob=prob, store_preact=True, activation=activation,
                                    a_rows=rows)
        ctx.splits = splits
        ctx.op_splits = _op_splits(splits)
        ctx.rows_adjoint = rows_adjoint
        ctx.fuse_wgrad = fuse_wgrad
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(tag_role(x, "fc1_input"), w1, rows)
        return postact, preact

    @staticmethod
    @first_order_only("routed_srelu_experts")
    def backward(ctx, dpre, _no_grad_preact):
        x, w1, rows = ctx.saved_tensors
        if dpre is None:
            return (None,) * 8
        splits = ctx.splits
        dpre = dpre.contiguous()
        dx = dw1 = None
        if cute_backward_enabled():
            ops = torch_ops.ops()
            sl, st = ctx.op_splits
            if ctx.needs_input_grad[0]:
                dx = ctx.rows_adjoint(ops.fc1_dgrad(dpre, w1, sl, splits_t=st))
            if ctx.needs_input_grad[1]:
                dw1 = _cute_wgrad(ctx, ops, dpre, x.index_select(0, rows), w1, "w1")
            return dx, dw1, None, None, None, None, None, None
        splits = splits_list(splits)
        if ctx.needs_input_grad[0]:
            dx = ctx.rows_adjoint(per_expert_mm(dpre, w1, splits, transpose_w=False))
        if ctx.needs_input_grad[1]:
            dw1 = _accumulate_main_grad(ctx, w1, "w1", per_expert_wgrad(dpre, x.index_select(0, rows), splits,
                                                                        w1.size(0)))
        return dx, dw1, None, None, None, None, None, None


def gathered_srelu_mlp(x, w1, w2, *, rows, rows_adjoint, m_splits, prob, recompute_postact: bool = False,
                       fuse_wgrad_accumulation: bool = False):
    """srelu_mlp of x[rows] on the cute path with the gather fused into FC1 (grouped, relu^2; the
    caller checked the operands: routed_srelu_experts(fused_gather=True)).  rows: (M,) int32 on
    x's device; rows_adjoint: (M, H) row gradients -> (T, H), the gather's adjoint."""
    if not recompute_postact and not torch.compiler.is_compiling():  # an offload plan may choose to recompute
        recompute_postact = offload_hooks().recompute_requested("postact")  # postact rather than save it
    postact, preact = GatheredFC1SReLUFunction.apply(x, w1, prob, m_splits, rows, rows_adjoint,
                                                     fuse_wgrad_accumulation, SRELU)
    return FC2DSReLUFunction.apply(postact, preact, prob, w2, m_splits, recompute_postact, True,
                                   fuse_wgrad_accumulation, SRELU, False)


class FC2DSReLUFunction(torch.autograd.Function):
    """(postact, preact, prob, w2) -> y; backward returns dpreact as postact's gradient,
    the router gradient and dw2."""

    @staticmethod
    def forward(ctx, postact, preact, prob, w2, splits, recompute_postact, use_cute, fuse_wgrad, activation=SRELU,
                dpreact_over_preact=False):
        if use_cute:
            ctx.op_splits = sl, st = _op_splits(splits)
            y = torch_ops.ops().fc2_fwd(postact, w2, sl, splits_t=st)
        else:
            y = per_expert_mm(postact, w2, splits, transpose_w=True) if splits is not None else postact @ w2.t()
        ctx.splits = splits
        ctx.use_cute = use_cute
        ctx.fuse_wgrad = fuse_wgrad
        ctx.activation = activation
        ctx.dpreact_over_preact = dpreact_over_preact
        ctx.save_for_backward(tag_role(preact, "preact"), None if recompute_postact else tag_role(postact, "postact"),
                              tag_role(prob, "prob") if prob is not None else None, w2)
        return y

    @staticmethod
    @first_order_only("srelu_mlp")
    def backward(ctx, dy):
        preact, postact, prob, w2 = ctx.saved_tensors
        splits = ctx.splits
        dy = dy.contiguous()
        # dpreact written over preact (read for the last time here): eager only, torch.compile plans its own memory
        over_preact = ctx.dpreact_over_preact and not torch.compiler.is_compiling()
        if ctx.use_cute and cute_backward_enabled():
            ops = torch_ops.ops()
            sl, st = ctx.op_splits
            dgrad = torch_ops.fc2_dgrad_dsrelu_over_preact if over_preact else ops.fc2_dgrad_dsrelu_op
            dpre, post_re, dprob = dgrad(dy, w2, preact, sl, prob, postact is None, splits_t=st,
                                         activation=torch_ops.activation_arg(ctx.activation))
            dw2 = None
            if ctx.needs_input_grad[3]:
                dw2 = _cute_wgrad(ctx, ops, dy, postact if postact is not None else post_re, w2, "w2")
            dprob = dprob.to(prob.dtype).reshape(prob.shape) if prob is not None else None
            return dpre, None, dprob, dw2, None, None, None, None, None, None
        splits = splits_list(splits)  # torch math takes a list (a GPU tensor costs one sync here)
        grouped = splits is not None
        dpost = per_expert_mm(dy, w2, splits, transpose_w=False) if grouped else dy @ w2
        dw2 = None
        if ctx.needs_input_grad[3]:  # else w2 is frozen
            if postact is None:
                postact = srelu_torch(preact, prob, dy.dtype, ctx.activation)
            dw2 = per_expert_wgrad(dy, postact, splits, w2.size(0)) if grouped else dy.t() @ postact
            dw2 = _accumulate_main_grad(ctx, w2, "w2", dw2)
        del postact
        dpre, dprob = act_backward(dpost, preact, prob, ctx.activation, out=preact if over_preact else None)
        del dpost
        return dpre, None, dprob, dw2, None, None, None, None, None, None


def _accumulate_main_grad(ctx, w, name, dw):
    """torch path: add dw into w.main_grad (fuse_wgrad_accumulation) and return no grad."""
    if not ctx.fuse_wgrad:
        return dw
    mg = main_grad(w, name)
    mg.add_(dw)  # mixed-dtype in-place add: no full-size fp32 copy of dw
    return None


def _cute_wgrad(ctx, ops, dy, x, w, name):
    """cute path: dw = dy^T x (per expert when grouped: the K-grouped kernel), or added
    into w.main_grad in the GEMM's epilogue.  ops: torch_ops.ops() of the calling backward;
    the splits are the forward's (ctx.op_splits)."""
    sl, st = ctx.op_splits
    if ctx.fuse_wgrad:
        ops.weight_grad_accumulate_op(dy, x, sl, main_grad(w, name), splits_t=st)
        return None
    return ops.weight_grad_op(dy, x, sl, splits_t=st)


def srelu_mlp(x, w1, w2, *, m_splits=None, prob=None, recompute_postact: bool = False,
              fuse_wgrad_accumulation: bool = False, backend: str = "auto", offload=None, activation=None,
              fp8=None, dpreact_over_preact: bool = False):
    """y = (p * f(x @ w1^T)) @ w2^T; grouped when `m_splits` is given (w1 (E, F, H), w2 (E, H, F)).

    dpreact_over_preact: the backward writes preact's gradient into preact's own storage (the
    fused dgrad reads each preact element before it stores its gradient; the torch path copies
    into it), one (M, ffn) allocation less at the step's peak (with recompute_postact too).  The
    gradients are the same.  Off by default; eager only (under torch.compile it is ignored), and
    the step's graph can then be run backward once only (retain_graph=True and a second backward
    fail with autograd's in-place error).  The FP8 step ignores it.

    activation: f, default relu^2 (SReLU); `cute_kernels.activations.ScaledTanhSReLU(s)` or
    "tanh_srelu:<s>" for the soft-clamped (s * tanh(relu(x) / s))^2.  Both backends and the FP8 step take it.

    m_splits: per-expert token counts (tokens sorted by expert), a list of ints or an
    integer tensor; on the cute path a CUDA tensor is read by the kernels on the GPU, so
    the step has no host sync (the torch path converts it to a list).
    offload: an `offload.OffloadScheduler`: this call is the next layer of the step's
    forward (`sched.layer()`), so what it saves is offloaded as the scheduler's policy
    says, by role; inside a `with sched.layer(i)` the call belongs to layer i.  Under
    torch.compile the op tags no roles (see `autograd_io.tag_role`), so a role policy offloads nothing there.
    fp8: an `Fp8Recipe` runs the FP8 step (cute_kernels/fp8/mlp.py, which says what is a kernel there)."""
    check_backend(backend)
    # the same errors on both paths, before the call counts as a layer for `offload`; the tensors'
    # metadata checks once per call signature (launch_plan.check_once), the splits every call
    grouped = m_splits is not None
    # (under torch.compile every check is traced as before: no signature table in the graph)
    signature = None if torch.compiler.is_compiling() else mlp_inputs_signature(x, w1, w2, grouped, prob)
    if signature is None:
        check_mlp_tensors(x, w1, w2, grouped=grouped, prob=prob)
    else:
        launch_plan.check_once(signature, lambda: check_mlp_tensors(x, w1, w2, grouped=grouped, prob=prob))
    m_splits = check_mlp_inputs(x, w1, w2, m_splits=m_splits, prob=prob,
                                fuse_wgrad_accumulation=fuse_wgrad_accumulation, tensors_checked=True)
    try:
        activation = resolve_activation(activation)
    except (TypeError, ValueError) as e:
        raise InputError(f"activation: {e}") from None
    check_offload(offload)
    if offload is not None:
        if offload.current_layer is None:
            with offload.layer():
                return srelu_mlp(x, w1, w2, m_splits=m_splits, prob=prob, recompute_postact=recompute_postact,
                                 fuse_wgrad_accumulation=fuse_wgrad_accumulation, backend=backend,
                                 activation=activation, fp8=fp8, dpreact_over_preact=dpreact_over_preact)
    if not recompute_postact and not torch.compiler.is_compiling():  # an offload plan may choose to recompute
        recompute_postact = offload_hooks().recompute_requested("postact")  # postact rather than save it
    if fp8 is not None:
        from .fp8.step_ops import fp8_step

        return fp8_step(x, w1, w2, recipe=fp8, m_splits=m_splits, prob=prob,
                        fuse_wgrad_accumulation=fuse_wgrad_accumulation, backend=backend, activation=activation)
    # ffn = 0: nothing for a kernel to do (and fc2 refuses K = 0): the torch path gives y = 0
    use_cute = uses_cute_path(x, backend) and w1.size(-2) > 0
    if not torch.compiler.is_compiling():
        path = "cute" if use_cute else "torch"
        if path not in _announced:
            _announced.add(path)
            log.info("srelu_mlp: using the %s path", path)
    if use_cute and type(m_splits) is list and not torch.compiler.is_compiling():
        # (checked above, a copy of the caller's): one tuple for the step's GEMMs, whose splits
        # checks and metadata lookups then know it by identity (checks.check_m_splits) or hash it as is
        splits = tuple(m_splits)
    elif use_cute or not isinstance(m_splits, torch.Tensor):
        splits = m_splits  # a CUDA tensor is read on the GPU by the kernels: no host sync
    else:  # the torch path reads a CUDA tensor on the host: one sync, so its values are checked
        splits = checked_host_splits(m_splits, num_experts=w1.size(0), m_total=x.size(0))
    postact, preact = FC1SReLUFunction.apply(x, w1, prob, splits, use_cute, fuse_wgrad_accumulation, activation)
    return FC2DSReLUFunction.apply(postact, preact, prob, w2, splits, recompute_postact, use_cute,
                                   fuse_wgrad_accumulation, activation, bool(dpreact_over_preact))
