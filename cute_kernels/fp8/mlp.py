"""The FP8 squared-ReLU MLP step: `srelu_mlp(..., fp8=Fp8Recipe())` lands here.

y = (p * f(x @ w1^T)) @ w2^T, f the activation (default relu^2; any of cute_kernels.activations,
e.g. the tanh clamp "tanh_srelu:<s>"), with every GEMM operand quantized by the recipe
(`Fp8Recipe`: 1x128 activation / gradient blocks along each GEMM's K, 128x128 weight blocks).

What runs where (kernel = the GEMM family's block-scaled FP8 kernel, cute_kernels/sm90/mainloop_fp8.py,
on an sm_90a GPU; "torch" = the torch implementation of the same recipe in fp8/torch_gemm.py, NOT a fused kernel):

| piece | operands | implementation |
|---|---|---|
| quantize x, dy, dpreact 1x128 | bf16 -> FP8 + scales | kernel (sm90/quantize.py, bitwise the recipe's) |
| FC1 + activation | x FP8, w1 FP8 | kernel: preact bf16 + postact FP8 with its 1x128 scales from the epilogue |
| router prob p | folded into the postact scales (s * p: the FP8 values of p * v are those of v) | torch, (M, F/128) scales only |
| FC2 | postact FP8, w2 FP8 | kernel |
| FC2 dgrad | dy FP8 (grad_format, 1x128 along H), w2^T FP8 copy | kernel, bf16 dpost |
| dSReLU, router gradient, postact recompute | dpost, preact, p | kernel: in the FC2 dgrad's epilogue (`fp8_dgrad_dact`; torch elementwise on the torch path and for every activation but relu^2, see `_fused_dact`) |
| FC2 wgrad | dy^T, postact^T (the dgrad's recomputed postact), 1x128 along tokens | wgrad="fp8": kernel (wgrad_ops; grouped only with CUTE_KERNELS_FP8_GROUPED_WGRAD=1, else a torch loop over experts); fuse_wgrad_accumulation: added into an fp32 main_grad by the kernel's epilogue with CUTE_KERNELS_FP8_WGRAD_ACCUMULATE=1, else by a torch add |
| FC1 dgrad | dpreact FP8 (grad_format, 1x128 along F), w1^T FP8 copy | kernel |
| FC1 wgrad | dpreact^T, x^T (requantized from the bf16 dequantization of the saved FP8 x) along tokens | as FC2's |

Grouped (m_splits): on the kernel path every FP8 GEMM is one grouped launch for all experts
(`fp8_grouped` / `fp8_dgrad_dact`: the family's tile walk, empty experts included); the torch
implementation and wgrad="fp8"'s weight gradients without CUTE_KERNELS_FP8_GROUPED_WGRAD=1 still
loop over experts in Python (empty experts give a zero weight gradient).

Weights: master weights stay as given (bf16/fp32); each forward quantizes each weight once
from its current values (`quantize_weight`, fp8/weight_cache.py: never a stale copy; reused
across calls only inside `reuse_weight_copies()`) and keeps the copy on its autograd context
(not a saved tensor: the offload hooks leave it alone); the backward's W^T copy is that copy
transposed (bitwise the quantized W^T), so forward and backward use the same FP8 weights.

Saved for backward: x in FP8 (1 byte per element) + its fp32 scales, preact bf16, p; the
postact is recomputed from preact in the backward (always: `recompute_postact` has no effect).
Per token of a dense 4096 -> 16384 layer: 4096 + 2 * 16384 bytes (+ 128 of scales), 0.50x of
the bf16 step that saves postact (2 * (4096 + 2 * 16384)) and 0.90x of the bf16 step with
recompute_postact=True (2 * (4096 + 16384)).

Devices: kernels on sm_90a; the torch implementation on the CPU or with backend="torch"; a
CUDA GPU that is not sm_90a raises InputError (use backend="torch" or the bf16 step there).
Eager: a Python hand-off passes the FP8 postact from the FC1 node to the FC2 node.  Under
torch.compile the same code runs inside custom ops instead (fp8/step_ops.py, docs/fp8.md "Under
torch.compile"), which pass it as an op output.
"""
from __future__ import annotations

import torch

from .. import gemm_ops
from ..activations import SRELU, Activation
from ..autograd_io import main_grad, tag_role
from ..checks import InputError, check_m_splits
from ..config_lookup import on_clear
from ..epilogue import EpilogueSpec
from ..first_order import first_order_only
from ..launch_plan import MAX_PLANS, tensor_meta
from .epilogue import Fp8Epilogue
from .ops import _checked_activation, _launch, _new_scales, check_fp8_device, fp8_dgrad_dact, fp8_grouped
from .recipe import FORMATS, Fp8Recipe, quantize_1x128
from .torch_gemm import mm_dequant, wgrad
from . import quantize_ops, recipe as recipe_math, wgrad_ops
from .quantize_ops import weight_views
from .weight_cache import transposed_copy, weight_copies

BLOCK = 128


def _cdiv(a, b):
    return -(-a // b)


def _col_major(s: torch.Tensor) -> torch.Tensor:
    """The same scales, column-major (the kernel's reads of one K block are then coalesced)."""
    return s.t().contiguous().t()


def quantize_rows(t: torch.Tensor, fmt: str, recipe: Fp8Recipe, impl: str = "torch"):
    """quantize_1x128 that also takes zero rows; scales column-major.  On the kernel path a bf16
    tensor goes through the one-pass quantization kernel (sm90/quantize.py: the recipe's values and
    scales bit for bit, H200 2026-12-03; 25x the torch passes' speed on 8192x4096)."""
    if impl == "kernel" and t.dtype == torch.bfloat16 and t.shape[0] and t.shape[1] % 16 == 0:
        if quantize_ops.rows_only_kernel_enabled():  # no column-wise copy: the step does not read it
            return quantize_ops.quantize_rows_only(t.contiguous(), fmt, pow2=recipe.pow2_scales)
        q, s, _, _ = quantize_ops.quantize_both_padded(t.contiguous(), fmt, pow2=recipe.pow2_scales)
        return q, s
    if t.shape[0] == 0:
        return (torch.empty(t.shape, dtype=FORMATS[fmt], device=t.device),
                torch.empty((t.shape[0], _cdiv(t.shape[1], BLOCK)), dtype=torch.float32, device=t.device))
    q, s = quantize_1x128(t, fmt, pow2=recipe.pow2_scales)
    return q, _col_major(s)


def _one_pass(impl):
    """The kernel path's maker of both weight copies in one pass (None on the torch path)."""
    if impl != "kernel":
        return None
    return quantize_ops.kernel_weight_copies


def _segments(splits, m):
    if splits is None:
        return [(None, 0, m)]
    out, start = [], 0
    for e, n in enumerate(splits):
        out.append((e, start, n))
        start += n
    return out


def _of(t, e):
    return t if e is None else t[e]


def _rows(t, start, n, splits):
    """Rows start..start+n of `t`; `t` itself when ungrouped (the one segment is all of it: the same
    view, without a torch op)."""
    return t if splits is None else t[start:start + n]


# ---------------------------------------------------------------- the GEMMs of the step
def _fc1_step(xq, xs, w1_copy, splits, impl, recipe, activation: Activation):
    """FC1 + activation of the whole step: (preact bf16, postact FP8, its column-major 1x128 scales),
    one grouped launch on the kernel path, else per segment."""
    w1q, w1s = w1_copy
    if impl == "kernel" and splits is not None and xq.shape[0]:
        return fp8_grouped(xq, xs, w1q, w1s, splits, epilogue="act", store_preact=True, recipe=recipe,
                           w_views=weight_views(w1_copy), activation=activation)
    m, f = xq.shape[0], w1q.shape[-2]
    pre = torch.empty((m, f), dtype=torch.bfloat16, device=xq.device)  # the kernel's preact is bf16
    pq = torch.empty((m, f), dtype=recipe.fwd_dtype, device=xq.device)
    ps = _new_scales(m, _cdiv(f, BLOCK), xq.device)
    for e, start, n in _segments(splits, m):
        if n:
            pre_e, pq_e, ps_e = (_rows(t, start, n, splits) for t in (pre, pq, ps))
            _fc1(_rows(xq, start, n, splits), _rows(xs, start, n, splits), _of(w1q, e), _of(w1s, e), impl, recipe,
                 activation, pre_e, pq_e, ps_e)
    return pre, pq, ps


def _mm_step(aq, sa, b_copy, splits, impl, shape):
    """dequant(a) @ dequant(b)^T of the whole step (per expert when grouped), bf16 of `shape`: one
    grouped launch on the kernel path (which allocates it), else per segment into a new tensor."""
    bq, sb = b_copy
    if impl == "kernel" and splits is not None and aq.shape[0]:
        return fp8_grouped(aq, sa, bq.contiguous(), sb.contiguous(), splits, w_views=weight_views(b_copy))
    out = torch.empty(shape, dtype=torch.bfloat16, device=aq.device)
    for e, start, n in _segments(splits, aq.shape[0]):
        if n:
            _mm(_rows(aq, start, n, splits), _rows(sa, start, n, splits), _of(bq, e), _of(sb, e), impl,
                _rows(out, start, n, splits))
    return out


def _fc1(xq, xs, w1q, w1s, impl, recipe, activation, pre, pq, ps):
    """FC1 + activation of one segment into pre (bf16), pq (FP8), ps (scales)."""
    if impl == "kernel":
        epi = Fp8Epilogue(EpilogueSpec("act", store_preact=True, activation=activation), quantized="postact",
                          q_format=recipe.fwd_format, pow2_scales=recipe.pow2_scales)
        _launch(xq, xs, w1q, w1s, epi, None, outs=(pre, pq, ps))
        return
    acc = mm_dequant(xq, xs, w1q, w1s)  # torch implementation
    pre.copy_(acc)
    # relu^2 as it always was (bitwise); any other activation by its torch form
    post = torch.relu(acc).square_() if activation == SRELU else activation.torch_forward(acc)
    q, s = quantize_1x128(post, recipe.fwd_format, pow2=recipe.pow2_scales)
    pq.copy_(q)
    ps.copy_(s)


def _mm(aq, sa, bq, sb, impl, out):
    """out (bf16) = dequant(a) @ dequant(b)^T for one segment."""
    if impl == "kernel":
        _launch(aq, sa, bq, sb, Fp8Epilogue(EpilogueSpec("identity")), None, outs=(out, None, None))
    else:
        out.copy_(mm_dequant(aq, sa, bq, sb))


def _grouped_fp8_wgrad(ctx, impl: str) -> bool:
    """Whether the step's weight gradients take the grouped FP8 kernel (fp8_grouped_weight_grad_of:
    wgrad="fp8" with m_splits on the kernel path, CUTE_KERNELS_FP8_GROUPED_WGRAD=1)."""
    return (ctx.recipe.wgrad == "fp8" and impl == "kernel" and ctx.splits is not None
            and wgrad_ops.grouped_wgrad_kernel_enabled())


def quantize_grad(ctx, g: torch.Tensor, impl: str, wgrad_reads_it: bool):
    """((q, s), cols): an output gradient g's row-wise copy (quantize_rows, the data gradient's
    operand) and, where the grouped FP8 weight gradient will read g (`wgrad_reads_it`), its per-expert
    padded column-wise copy (qt, st, cu_padded) from the same read of g (the dual grouped kernel,
    quantize_rows_and_cols_grouped: both bitwise the separate quantizers'); else cols is None."""
    recipe = ctx.recipe
    if (wgrad_reads_it and _grouped_fp8_wgrad(ctx, impl) and g.dtype == torch.bfloat16 and g.shape[0]
            and g.shape[1] % 16 == 0):
        q, s, qt, st, cu_padded = quantize_ops.quantize_rows_and_cols_grouped(
            g.contiguous(), ctx.splits, recipe.grad_format, pow2=recipe.pow2_scales)
        return (q, s), (qt, st, cu_padded)
    return quantize_rows(g, recipe.grad_format, recipe, impl), None


def _weight_grad(ctx, w, name, g, act, impl, g_cols=None, act_cols=None):
    """w's gradient g^T @ act (per expert when grouped) by the recipe's `wgrad`: "fp8" quantizes
    both operands 1x128 along the tokens (the 1D1D kernel on the kernel path, dense; grouped with
    CUTE_KERNELS_FP8_GROUPED_WGRAD=1; else the torch implementation); "bf16" multiplies the bf16
    operands, through the family's weight-gradient kernel on the kernel path (one launch for every
    expert, written or added straight into main_grad with fuse_wgrad_accumulation).  `g_cols`: g's
    padded column-wise copy where quantize_grad made it (the grouped FP8 kernel then reads it);
    `act_cols`: act's (act None: only where the grouped FP8 kernel is taken, _grouped_fp8_wgrad)."""
    recipe, splits = ctx.recipe, ctx.splits
    if recipe.wgrad == "bf16" and impl == "kernel":
        g, act = _as_dtype(g, torch.bfloat16).contiguous(), _as_dtype(act, torch.bfloat16).contiguous()
        if ctx.fuse_wgrad:
            gemm_ops.weight_grad(g, act, m_splits=splits, out=main_grad(w, name), accumulate=True)
            return None
        # fp32 accumulation rounded once into the weight's dtype by the epilogue (as .to(w.dtype) would)
        return _as_dtype(gemm_ops.weight_grad(g, act, m_splits=splits,
                                              out_dtype=w.dtype if w.dtype in _WGRAD_OUT else torch.float32), w.dtype)
    if recipe.wgrad == "fp8" and impl == "kernel" and g.shape[0]:
        # with fuse_wgrad_accumulation, added into main_grad by the kernel's epilogue where it can
        # (CUTE_KERNELS_FP8_WGRAD_ACCUMULATE=1, an fp32 contiguous main_grad), else by _add_wgrad
        into = _fused_main_grad(ctx, w, name)
        # the 1D1D kernel (CUTE_KERNELS_FP8_WGRAD_KERNEL=0: torch)
        # without main_grad, dW in w's dtype from the epilogue (fp32 accumulation rounded once, as
        # .to(w.dtype) would: no fp32 dW written, read back and cast)
        direct = into is None and not ctx.fuse_wgrad and w.dtype in _WGRAD_OUT
        out_dtype = w.dtype if direct else None
        if splits is None and wgrad_ops.wgrad_kernel_enabled():
            dw = wgrad_ops.fp8_weight_grad_of(g, act, recipe, out=into, out_dtype=out_dtype)
            return dw if direct else None if into is not None else _add_wgrad(ctx, w, name, dw)
        if splits is not None and wgrad_ops.grouped_wgrad_kernel_enabled():
            # every expert in one launch over per-expert padded copies (CUTE_KERNELS_FP8_GROUPED_WGRAD=1;
            # off until an H200 run has checked it: the per-expert torch loop below)
            dw = wgrad_ops.fp8_grouped_weight_grad_of(g, act, splits, recipe, out=into, g_cols=g_cols,
                                                      act_cols=act_cols, out_dtype=out_dtype)
            return dw if direct else None if into is not None else _add_wgrad(ctx, w, name, dw)
    dw = torch.zeros(w.shape, dtype=torch.float32, device=g.device)
    for e, start, n in _segments(splits, g.shape[0]):
        if n:
            rows = slice(start, start + n)
            if recipe.wgrad == "bf16":
                _of(dw, e).copy_(g[rows].float().t() @ act[rows].float())
            else:
                _of(dw, e).copy_(wgrad(g[rows], act[rows], recipe))
    return _add_wgrad(ctx, w, name, dw)


_WGRAD_OUT = (torch.bfloat16, torch.float32)  # dtypes the weight-gradient kernel writes (else fp32, cast)


def _as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t.to(dtype) without dispatching a torch op when t already has it (t itself either way)."""
    return t if t.dtype == dtype else t.to(dtype)


def _dequantize_saved_x(xq, xs, recipe, impl):
    """x from its saved FP8 copy for FC1's weight gradient: in bf16 for the bf16 weight-gradient
    kernel and for wgrad="fp8" on either path (requantized along the tokens from that bf16 tensor,
    which is what the FP8 weight-gradient kernel's quantizer reads: the torch implementation takes
    the same rounding, so the two paths agree to the accumulation order; from fp32 they differed
    by ~2% relative in dW1, H200 2026-12-03), fp32 for the torch path's wgrad="bf16".  On the kernel
    path by the dequantization kernel unless CUTE_KERNELS_FP8_DEQUANT_KERNEL=0 (bitwise the torch
    form)."""
    to_bf16 = recipe.wgrad == "fp8" or impl == "kernel"
    if (to_bf16 and impl == "kernel" and xq.shape[0] and xq.shape[1] % 16 == 0
            and quantize_ops.dequantize_kernel_enabled()):
        return quantize_ops.dequantize_to_bf16(xq, xs)
    return recipe_math.dequantize(xq, xs, out_dtype=torch.bfloat16 if to_bf16 else torch.float32)


def _fused_main_grad(ctx, w, name):
    """w.main_grad when the FP8 weight-gradient kernel adds into it in its epilogue: with
    fuse_wgrad_accumulation and CUTE_KERNELS_FP8_WGRAD_ACCUMULATE=1, a float32 main_grad that is
    contiguous and 16-byte aligned (the kernel's output); else None (the torch add of _add_wgrad)."""
    if not ctx.fuse_wgrad or not wgrad_ops.wgrad_accumulate_enabled():
        return None
    mg = main_grad(w, name)
    if mg.dtype != torch.float32 or not mg.is_contiguous() or mg.data_ptr() % 16:
        return None
    return mg


def _add_wgrad(ctx, w, name, dw):
    """dw (fp32) as w's gradient, or added into w.main_grad (fuse_wgrad_accumulation)."""
    if not ctx.fuse_wgrad:
        return dw.to(w.dtype)
    main_grad(w, name).add_(dw)
    return None


class _Handoff:
    """The FP8 postact (q, scales) from the FC1 node's forward to the FC2 node's forward
    (autograd would cast a gradient to an FP8 output's dtype; this keeps it off the graph)."""

    def __init__(self):
        self.postact = None


class Fp8FC1SReLU(torch.autograd.Function):
    """x -> preact (bf16); the FP8 postact goes to the FC2 node through `handoff`.
    Backward receives dpreact (from the FC2 node) and returns dx, dw1."""

    @staticmethod
    def forward(ctx, x, w1, splits, recipe, impl, fuse_wgrad, handoff, activation):
        m, f = x.shape[0], w1.shape[-2]
        xq, xs = quantize_rows(x, recipe.fwd_format, recipe, impl)
        w1c, w1t = weight_copies(w1, recipe, both=_one_pass(impl))
        pre, pq, ps = _fc1_step(xq, xs, w1c, splits, impl, recipe, activation)
        handoff.postact = (pq, ps)
        # the backward's W1^T copy: made with W1's by the one-pass kernel, else this one transposed then
        ctx.w1_copy, ctx.w1t_copy = (w1c if w1t is None else None), w1t
        ctx.splits, ctx.recipe, ctx.impl, ctx.fuse_wgrad = splits, recipe, impl, fuse_wgrad
        ctx.x_dtype = x.dtype
        ctx.save_for_backward(tag_role(xq, "fc1_input"), xs, w1)
        return pre

    @staticmethod
    @first_order_only("srelu_mlp(fp8=...)")
    def backward(ctx, dpre):
        xq, xs, w1 = ctx.saved_tensors
        none = (None,) * 6
        if dpre is None:
            return (None, None) + none
        recipe, impl = ctx.recipe, ctx.impl
        m, h = xq.shape
        dpre = dpre.contiguous()
        dx = dw1 = None
        dpre_cols = None
        if ctx.needs_input_grad[0]:
            (dq, ds), dpre_cols = quantize_grad(ctx, dpre, impl, ctx.needs_input_grad[1])
            w1tc = ctx.w1t_copy or transposed_copy(*ctx.w1_copy)
            dx = _as_dtype(_mm_step(dq, ds, w1tc, ctx.splits, impl, (m, h)), ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            if _grouped_fp8_wgrad(ctx, impl) and dpre.shape[0] and h % 16 == 0:
                # the grouped FP8 kernel: x's padded column-wise copy straight from its saved FP8 copy
                # (bitwise the copy of its bf16 dequantization, which is neither written nor read)
                x_cols = quantize_ops.requantize_cols_grouped(xq, xs, ctx.splits, recipe.fwd_format,
                                                              pow2=recipe.pow2_scales)
                dw1 = _weight_grad(ctx, w1, "w1", dpre, None, impl, dpre_cols, x_cols)
            else:
                # x from its saved FP8 copy (the column-major scales as they are)
                x_deq = _dequantize_saved_x(xq, xs, recipe, impl)
                dw1 = _weight_grad(ctx, w1, "w1", dpre, x_deq, impl, dpre_cols)
        return (dx, dw1) + none


class Fp8FC2(torch.autograd.Function):
    """(preact, p, w2) -> y from the FP8 postact; backward returns dpreact as preact's
    gradient (the activation's derivative applied), dp and dw2."""

    @staticmethod
    def forward(ctx, preact, prob, w2, splits, recipe, impl, fuse_wgrad, handoff, activation):
        pq, ps = handoff.postact
        handoff.postact = None
        if prob is not None:
            ps = ps * _as_dtype(prob.reshape(-1, 1), torch.float32)  # p folded into the postact scales
        w2c, w2t = weight_copies(w2, recipe, both=_one_pass(impl))
        y = _mm_step(pq, ps, w2c, splits, impl, (preact.shape[0], w2.shape[-2]))
        ctx.splits, ctx.recipe, ctx.impl, ctx.fuse_wgrad = splits, recipe, impl, fuse_wgrad
        ctx.activation = activation
        ctx.w2_copy, ctx.w2t_copy = (w2c if w2t is None else None), w2t
        ctx.save_for_backward(tag_role(preact, "preact"), tag_role(prob, "prob") if prob is not None else None, w2)
        return y

    @staticmethod
    @first_order_only("srelu_mlp(fp8=...)")
    def backward(ctx, dy):
        preact, prob, w2 = ctx.saved_tensors
        recipe, impl = ctx.recipe, ctx.impl
        m, f = preact.shape
        dy = dy.contiguous()
        (dyq, dys), dy_cols = quantize_grad(ctx, dy, impl, ctx.needs_input_grad[2])
        w2tc = ctx.w2t_copy or transposed_copy(*ctx.w2_copy)
        if impl == "kernel" and _fused_dact(ctx.activation):
            return self_fused_backward(ctx, dy, dyq, dys, w2tc, preact, prob, w2, dy_cols)
        # the FC2 data gradient alone (one grouped launch on the kernel path), then the activation's
        # derivative and the router gradient in torch, fp32 (not fused into the dgrad)
        dpost = _mm_step(dyq, dys, w2tc, ctx.splits, impl, (m, f))
        del dyq, dys
        if ctx.activation != SRELU:
            return _torch_dact(ctx, dy, dpost, preact, prob, w2, impl, dy_cols)
        act = torch.relu(preact.float())
        p = prob.float().reshape(-1, 1) if prob is not None else None
        dw2 = None
        if ctx.needs_input_grad[2]:
            post = act.square()  # postact recomputed from preact
            if p is not None:
                post.mul_(p)
            dw2 = _weight_grad(ctx, w2, "w2", dy, post, impl, dy_cols)
            del post
        dpre = dpost.float()
        del dpost
        dprob = None
        if p is not None:
            dprob = torch.einsum("ij,ij,ij->i", dpre, act, act).to(prob.dtype).reshape(prob.shape)
            dpre.mul_(p)
        dpre.mul_(act).mul_(2.0)
        return dpre.to(preact.dtype), dprob, dw2, None, None, None, None, None, None


def _fused_dact(activation: Activation) -> bool:
    """Whether the kernel path's FC2 backward runs the activation's derivative in the dgrad's epilogue
    (`fp8_dgrad_dact`): relu^2 only.  The kernel's config rules refuse that epilogue with any other
    activation (sm90/config.block_scaled_errors: the tanh clamp measured wrong there on the H200,
    2026-12-03), so those take the plain FP8 dgrad and the torch elementwise derivative."""
    return activation == SRELU


def _torch_dact(ctx, dy, dpost, preact, prob, w2, impl, dy_cols=None):
    """Fp8FC2's backward after the FC2 data gradient dpost (bf16), for an activation f other than
    relu^2, in fp32 torch: dpreact = p * dpost * f'(preact), dp = rowsum(dpost * f(preact)), and FC2's
    weight gradient from the recomputed postact p * f(preact) (`dy_cols`: dy's padded column-wise copy,
    quantize_grad's)."""
    activation = ctx.activation
    x = preact.float()
    p = prob.float().reshape(-1, 1) if prob is not None else None
    fx = activation.torch_forward(x) if (ctx.needs_input_grad[2] or p is not None) else None
    dw2 = None
    if ctx.needs_input_grad[2]:
        dw2 = _weight_grad(ctx, w2, "w2", dy, fx * p if p is not None else fx, impl, dy_cols)
    dpre = dpost.float()
    del dpost
    dprob = None
    if p is not None:
        dprob = torch.einsum("ij,ij->i", dpre, fx).to(prob.dtype).reshape(prob.shape)
        dpre.mul_(p)
    dpre.mul_(activation.torch_grad(x))
    return dpre.to(preact.dtype), dprob, dw2, None, None, None, None, None, None


def self_fused_backward(ctx, dy, dyq, dys, w2t_copy, preact, prob, w2, dy_cols=None):
    """Fp8FC2's backward on the kernel path: the FC2 data gradient with dSReLU, the router gradient
    and the postact recompute in its epilogue (`fp8_dgrad_dact`, one launch for every expert), then
    FC2's weight gradient from that postact (`dy_cols`: dy's padded column-wise copy, quantize_grad's)."""
    recipe, splits = ctx.recipe, ctx.splits
    p32 = None
    if prob is not None:  # (no torch op for an fp32 (M,) prob)
        p32 = _as_dtype(prob, torch.float32)
        p32 = p32 if p32.dim() == 1 else p32.reshape(-1)
    want_dw2 = ctx.needs_input_grad[2]
    w2tq, w2ts = w2t_copy
    dpre, post, dprob = fp8_dgrad_dact(dyq, dys, w2tq.contiguous(), w2ts.contiguous(), preact.contiguous(),
                                       m_splits=splits, prob=p32, store_postact=want_dw2, recipe=recipe,
                                       wt_views=weight_views(w2t_copy))
    del dyq, dys
    dw2 = None
    if want_dw2:
        dw2 = _weight_grad(ctx, w2, "w2", dy, post, "kernel", dy_cols)
        del post
    if dprob is not None:
        dprob = _as_dtype(dprob, prob.dtype)
        dprob = dprob if dprob.shape == prob.shape else dprob.reshape(prob.shape)
    return _as_dtype(dpre, preact.dtype), dprob, dw2, None, None, None, None, None, None


def implementation(x: torch.Tensor, backend: str) -> str:
    """The step's implementation for x and `backend` ("kernel" or "torch"), without querying the
    device (the custom ops of fp8/step_ops.py query it at run time, where _impl does it here)."""
    if backend == "torch":
        return "torch"
    if not x.is_cuda:
        if backend == "cute":
            raise InputError(f"fp8 with backend='cute' needs CUDA tensors on an sm_90a GPU, x is on {x.device}")
        return "torch"
    return "kernel"


def _impl(x: torch.Tensor, backend: str) -> str:
    impl = implementation(x, backend)
    if impl == "kernel":
        check_fp8_device("x", x)  # InputError on a GPU without the FP8 kernels
    return impl


# Where torch.compile does not take the step's custom ops (fp8/step_ops.py: fuse_wgrad_accumulation,
# the kernel path without CUTE_KERNELS_FP8_COMPILE_OPS=1, or =0) this eager step runs between compiled
# regions (one graph break per call): its two autograd nodes hand the FP8 postact from one forward to
# the other outside the graph, which Dynamo cannot trace (it failed with "an intermediate tensor ...
# aliases an input or output"); fullgraph=True is then refused by torch with the graph-break error.
@torch.compiler.disable(reason="the FP8 MLP step runs eagerly under torch.compile (docs/fp8.md)")
def fp8_srelu_mlp(x, w1, w2, *, recipe: Fp8Recipe, m_splits=None, prob=None, fuse_wgrad_accumulation: bool = False,
                  backend: str = "auto", activation=SRELU):
    """The FP8 step (see the module docstring); `srelu_mlp(..., fp8=recipe)` calls this.  `activation`:
    an Activation or its name (cute_kernels.activations; default relu^2).  Its argument
    checks and its implementation (kernel or torch) are resolved once per call signature (the
    arguments' metadata, recipe, backend); a repeated call checks the splits' values (and main_grad
    with fuse_wgrad_accumulation)."""
    if activation is not SRELU:
        activation = _checked_activation(activation)
    grouped = m_splits is not None
    signature = ("fp8_srelu_mlp", tensor_meta(x), tensor_meta(w1), tensor_meta(w2), grouped, tensor_meta(m_splits),
                 prob is not None, tensor_meta(prob), recipe, backend)
    try:
        impl = _impls.get(signature)
    except TypeError:  # an unhashable argument: checked (and named) by the checks
        impl = signature = None
    if impl is None:
        impl = _checked_step(x, w1, w2, recipe, grouped, prob, backend)
        if signature is not None:
            if len(_impls) >= MAX_PLANS:
                _impls.clear()
            _impls[signature] = impl
    splits = _step_splits(m_splits, w1.shape[0], x, impl, recipe) if grouped else None
    if fuse_wgrad_accumulation:
        for w, name in ((w1, "w1"), (w2, "w2")):
            main_grad(w, name)
    handoff = _Handoff()
    pre = Fp8FC1SReLU.apply(x, w1, splits, recipe, impl, fuse_wgrad_accumulation, handoff, activation)
    return _as_dtype(Fp8FC2.apply(pre, prob, w2, splits, recipe, impl, fuse_wgrad_accumulation, handoff, activation),
                     x.dtype)


_impls: dict = {}  # fp8_srelu_mlp's call signatures whose checks passed -> the implementation ("kernel"/"torch")
on_clear(_impls.clear)


def _step_splits(m_splits, num_experts: int, x: torch.Tensor, impl: str, recipe: Fp8Recipe):
    """The splits every launch of the step takes.  An integer tensor stays on the device, its shape,
    dtype and device checked and its values not (reading them is a host sync; like the bf16 step,
    checks.check_m_splits), where every launch takes it: the kernel path with wgrad="bf16", or
    wgrad="fp8" with the grouped FP8 weight-gradient kernel (CUTE_KERNELS_FP8_GROUPED_WGRAD=1).
    Otherwise (a list, the torch implementation, the torch loop over experts of wgrad="fp8") a
    tuple of ints, read and checked by `_checked_splits`."""
    if isinstance(m_splits, torch.Tensor) and impl == "kernel":
        if recipe.wgrad == "bf16" or wgrad_ops.grouped_wgrad_kernel_enabled():
            check_m_splits(m_splits, num_experts=num_experts, m_total=x.shape[0], device=x.device)
            return m_splits
    return _checked_splits(m_splits, num_experts, x.shape[0])


def _checked_splits(m_splits, num_experts: int, m: int) -> tuple:
    """m_splits as a tuple of ints (a tensor read to the host), checked: one non-negative count per
    expert, summing to M.  The same tuple reaches every launch of the step (their metadata caches
    take it as it is)."""
    raw = tuple(m_splits.tolist() if isinstance(m_splits, torch.Tensor) else m_splits)
    splits = raw if all(type(n) is int for n in raw) else tuple(int(v) for v in raw)
    if len(splits) != num_experts or min(splits, default=0) < 0 or sum(splits) != m:
        raise InputError(f"m_splits must be {num_experts} non-negative counts summing to {m}, got {list(splits)}")
    return splits


def _checked_step(x, w1, w2, recipe, grouped: bool, prob, backend: str, query_device: bool = True) -> str:
    """fp8_srelu_mlp's checks of a new call signature (InputError naming the argument); returns the
    implementation that runs it (`query_device=False`: without checking the GPU has the FP8 kernels,
    `implementation`)."""
    if not isinstance(recipe, Fp8Recipe):
        raise InputError(f"fp8 must be a cute_kernels.fp8.Fp8Recipe or None, got {type(recipe).__name__}")
    if backend not in ("auto", "cute", "torch"):
        raise InputError(f"backend must be 'auto', 'cute' or 'torch', got {backend!r}")
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise InputError("x must be a 2-D torch.Tensor (tokens, hidden)")
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise InputError(f"x must be bf16, fp16 or fp32, got {x.dtype}")
    wdim = 3 if grouped else 2
    for name, w in (("w1", w1), ("w2", w2)):
        if not isinstance(w, torch.Tensor) or w.dim() != wdim:
            raise InputError(f"{name} must be a {wdim}-D tensor ({'(E, N, K)' if grouped else '(N, K)'})")
        if w.device != x.device:
            raise InputError(f"{name} is on {w.device}, x on {x.device}")
    m, h = x.shape
    f = w1.shape[-2]
    if w1.shape[-1] != h or tuple(w2.shape[-2:]) != (h, f) or (grouped and w2.shape[0] != w1.shape[0]):
        raise InputError(f"shapes do not chain: x {tuple(x.shape)}, w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)}")
    for name, d in (("hidden", h), ("ffn", f)):
        if d % 16:
            raise InputError(f"{name} = {d} must be a multiple of 16 for FP8 (16-byte rows of FP8 operands)")
        if d == 0:
            raise InputError(f"{name} = 0: the FP8 step needs {name} > 0")
    if prob is not None and (not isinstance(prob, torch.Tensor) or prob.numel() != m):
        raise InputError(f"prob must have one value per token ({m}), got {getattr(prob, 'shape', prob)}")
    return _impl(x, backend) if query_device else implementation(x, backend)
