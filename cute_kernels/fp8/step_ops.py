"""The FP8 MLP step as torch custom ops with their autograd, so torch.compile(fullgraph=True) traces it.

`fp8_step(...)` is what `srelu_mlp(..., fp8=recipe)` calls.  Eager, it is `fp8.mlp.fp8_srelu_mlp`
as before (two autograd Functions; this module changes nothing there).  While torch.compile traces,
it is two custom ops, each with a backward op, the same two autograd nodes as the eager step:

    cute_kernels::fp8_mlp_fc1(x, w1, m_splits, splits_t, <recipe>, activation, impl)
        -> (preact bf16, postact FP8, postact scales, x FP8, x scales, W1^T FP8, W1^T scales)
    cute_kernels::fp8_mlp_fc2(preact, postact, postact_scales, prob, w2, m_splits, splits_t, <recipe>,
                              activation, impl) -> (y bf16, W2^T FP8, W2^T scales)
    cute_kernels::fp8_mlp_fc2_bwd(dy, preact, prob, w2, w2t, w2t_scales, ..., need_dw2)
        -> (dpreact, dprob or empty, dw2 or empty)
    cute_kernels::fp8_mlp_fc1_bwd(dpreact, xq, xs, w1, w1t, w1t_scales, ..., x_dtype, need_dx, need_dw1)
        -> (dx or empty, dw1 or empty)

<recipe> is the recipe's fields as op arguments (fwd_format, grad_format, pow2_scales, wgrad; the
block is always 128).  The FP8 postact and its scales go from FC1 to FC2 as real op outputs and
inputs (marked non-differentiable), not through Python; x's FP8 copy and its scales are op outputs
the FC1 node saves.  Each op's body runs the eager step's own code (fp8.mlp's Fp8FC1SReLU /
Fp8FC2 forward and backward, on a plain context object), so a compiled step computes bitwise what
the eager step computes on the same inputs (tests/test_fp8_compile_ops.py, CPU).

Weights: each forward op quantizes its weight inside its body from the weight's current values
(`weight_cache.weight_copies`, at run time, every call: the compiled graph holds the op, never a
copy, so nothing stale is baked in; `reuse_weight_copies()` scopes apply at run time as in eager).
The W^T copy the backward reads is a forward output the node saves: the one-pass kernel's W^T copy
where it made one, else W's copy transposed in the forward (bitwise the same; eager transposes it in
the backward, so the transpose moves, its cost does not change).  One orientation is held from
forward to backward, as in eager.

Not on this route (the step then runs eagerly, one graph break, as before):
fuse_wgrad_accumulation (its main_grad is an attribute the graph cannot see), and the kernel path
unless CUTE_KERNELS_FP8_COMPILE_OPS=1 (on by default for the torch implementation, which the CPU
tests check; the kernel path waits for tests/test_fp8_compile_ops_gpu.py on an H200).
CUTE_KERNELS_FP8_COMPILE_OPS=0 takes no route here at all.  Splits: a list is checked in each op
body (the eager step's _step_splits); a tensor is an op input (splits_t), kept on the GPU where
the eager step keeps it, else read to the host in each op body that needs it (one sync per op).
"""
from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Optional

import torch

from ..activations import SRELU, resolve_activation
from .mlp import Fp8FC1SReLU, Fp8FC2, _as_dtype, _Handoff, _checked_step, _step_splits, fp8_srelu_mlp, implementation
from .ops import _checked_activation, _new_scales, check_fp8_device
from .recipe import FORMATS, Fp8Recipe
from .weight_cache import transposed_copy

BLOCK = 128


def _cdiv(a, b):
    return -(-a // b)


def compile_ops_setting() -> str:
    """CUTE_KERNELS_FP8_COMPILE_OPS: "1" (every implementation), "0" (none: the eager step with a
    graph break), anything else / unset: the torch implementation only (the default)."""
    return os.environ.get("CUTE_KERNELS_FP8_COMPILE_OPS", "")


def _recipe(fwd_format: str, grad_format: str, pow2_scales: bool, wgrad: str) -> Fp8Recipe:
    return Fp8Recipe(fwd_format=fwd_format, grad_format=grad_format, pow2_scales=pow2_scales, wgrad=wgrad)


def _recipe_args(recipe: Fp8Recipe) -> tuple:
    return recipe.fwd_format, recipe.grad_format, recipe.pow2_scales, recipe.wgrad


class _Ctx(SimpleNamespace):
    """What fp8.mlp's autograd Functions read and write on their context, outside autograd."""

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors


def _splits(m_splits, splits_t, num_experts: int, x: torch.Tensor, impl: str, recipe: Fp8Recipe):
    """The splits the eager step's launches take (its _step_splits), or None when dense."""
    given = splits_t if splits_t is not None else m_splits
    return None if given is None else _step_splits(given, num_experts, x, impl, recipe)


def _col_major(s: torch.Tensor) -> torch.Tensor:
    """s itself when its strides are (1, M), as the fake implementations declare; else a copy that
    has them (the torch path's scales of zero rows are row-major)."""
    if s.stride() == (1, s.shape[0]):
        return s
    return _new_scales(s.shape[0], s.shape[1], s.device).copy_(s)


def _empty(like: torch.Tensor, dtype=None) -> torch.Tensor:
    return like.new_empty((0,), dtype=dtype)


# ---------------------------------------------------------------- FC1 + activation
def _fc1(x: torch.Tensor, w1: torch.Tensor, m_splits: Optional[list[int]], splits_t: Optional[torch.Tensor],
         fwd_format: str, grad_format: str, pow2_scales: bool, wgrad: str, activation: str, impl: str
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if impl == "kernel":
        check_fp8_device("x", x)  # (fp8.mlp._impl's check, at run time: the trace does not query devices)
    recipe = _recipe(fwd_format, grad_format, pow2_scales, wgrad)
    splits = _splits(m_splits, splits_t, w1.shape[0], x, impl, recipe)
    ctx = _Ctx()
    pre = Fp8FC1SReLU.forward(ctx, x, w1, splits, recipe, impl, False, handoff := _Handoff(),
                              resolve_activation(activation))
    pq, ps = handoff.postact
    xq, xs, _ = ctx.saved_tensors
    w1t = ctx.w1t_copy if ctx.w1t_copy is not None else transposed_copy(*ctx.w1_copy)
    return pre, pq, _col_major(ps), xq, _col_major(xs), w1t[0], w1t[1]


fp8_mlp_fc1 = torch.library.custom_op("cute_kernels::fp8_mlp_fc1", _fc1, mutates_args=())


def _fake_w_t(w: torch.Tensor, fwd_format: str):
    """W^T's FP8 copy and its 128x128 scales, row-major: (..., K, N), (..., KB, NB)."""
    lead, (n, k) = tuple(w.shape[:-2]), tuple(w.shape[-2:])
    return (w.new_empty(lead + (k, n), dtype=FORMATS[fwd_format]),
            w.new_empty(lead + (_cdiv(k, BLOCK), _cdiv(n, BLOCK)), dtype=torch.float32))


def _fake_rows_scales(like: torch.Tensor, m, k) -> torch.Tensor:
    return like.new_empty((_cdiv(k, BLOCK), m), dtype=torch.float32).t()


@fp8_mlp_fc1.register_fake
def _(x, w1, m_splits, splits_t, fwd_format, grad_format, pow2_scales, wgrad, activation, impl):
    m, h = x.shape
    f = w1.shape[-2]
    fp8 = FORMATS[fwd_format]
    return (x.new_empty((m, f), dtype=torch.bfloat16), x.new_empty((m, f), dtype=fp8), _fake_rows_scales(x, m, f),
            x.new_empty((m, h), dtype=fp8), _fake_rows_scales(x, m, h), *_fake_w_t(w1, fwd_format))


def _fc1_setup(ctx, inputs, output):
    x, w1, m_splits, splits_t, *recipe_args, activation, impl = inputs
    _, pq, ps, xq, xs, w1tq, w1ts = output
    ctx.mark_non_differentiable(pq, ps, xq, xs, w1tq, w1ts)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(xq, xs, w1, w1tq, w1ts, splits_t)
    ctx.args = (m_splits, *recipe_args, activation, impl, x.dtype)


def _fc1_backward(ctx, dpre, *_unused):
    xq, xs, w1, w1tq, w1ts, splits_t = ctx.saved_tensors
    if dpre is None:
        return (None,) * 10
    m_splits, *rest, x_dtype = ctx.args
    dx, dw1 = fp8_mlp_fc1_bwd(dpre, xq, xs, w1, w1tq, w1ts, m_splits, splits_t, *rest, x_dtype,
                              ctx.needs_input_grad[0], ctx.needs_input_grad[1])
    return ((dx if ctx.needs_input_grad[0] else None), (dw1 if ctx.needs_input_grad[1] else None)) + (None,) * 8


fp8_mlp_fc1.register_autograd(_fc1_backward, setup_context=_fc1_setup)


def _fc1_bwd(dpre: torch.Tensor, xq: torch.Tensor, xs: torch.Tensor, w1: torch.Tensor, w1tq: torch.Tensor,
             w1ts: torch.Tensor, m_splits: Optional[list[int]], splits_t: Optional[torch.Tensor], fwd_format: str,
             grad_format: str, pow2_scales: bool, wgrad: str, activation: str, impl: str, x_dtype: torch.dtype,
             need_dx: bool, need_dw1: bool) -> tuple[torch.Tensor, torch.Tensor]:
    recipe = _recipe(fwd_format, grad_format, pow2_scales, wgrad)
    ctx = _Ctx(saved_tensors=(xq, xs, w1), needs_input_grad=(need_dx, need_dw1), recipe=recipe, impl=impl,
               splits=_splits(m_splits, splits_t, w1.shape[0], xq, impl, recipe), fuse_wgrad=False,
               x_dtype=x_dtype, w1t_copy=(w1tq, w1ts), w1_copy=None)
    dx, dw1, *_ = Fp8FC1SReLU.backward.__wrapped__(ctx, dpre)
    return (dx if dx is not None else _empty(dpre, x_dtype)), (dw1 if dw1 is not None else _empty(w1))


fp8_mlp_fc1_bwd = torch.library.custom_op("cute_kernels::fp8_mlp_fc1_bwd", _fc1_bwd, mutates_args=())


@fp8_mlp_fc1_bwd.register_fake
def _(dpre, xq, xs, w1, w1tq, w1ts, m_splits, splits_t, fwd_format, grad_format, pow2_scales, wgrad, activation,
      impl, x_dtype, need_dx, need_dw1):
    dx = xq.new_empty(xq.shape, dtype=x_dtype) if need_dx else _empty(dpre, x_dtype)
    return dx, (w1.new_empty(w1.shape) if need_dw1 else _empty(w1))


# ---------------------------------------------------------------- FC2
def _fc2(pre: torch.Tensor, pq: torch.Tensor, ps: torch.Tensor, prob: Optional[torch.Tensor], w2: torch.Tensor,
         m_splits: Optional[list[int]], splits_t: Optional[torch.Tensor], fwd_format: str, grad_format: str,
         pow2_scales: bool, wgrad: str, activation: str, impl: str
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    recipe = _recipe(fwd_format, grad_format, pow2_scales, wgrad)
    splits = _splits(m_splits, splits_t, w2.shape[0], pre, impl, recipe)
    ctx, handoff = _Ctx(), _Handoff()
    handoff.postact = (pq, ps)
    y = Fp8FC2.forward(ctx, pre, prob, w2, splits, recipe, impl, False, handoff, resolve_activation(activation))
    w2t = ctx.w2t_copy if ctx.w2t_copy is not None else transposed_copy(*ctx.w2_copy)
    return y, w2t[0], w2t[1]


fp8_mlp_fc2 = torch.library.custom_op("cute_kernels::fp8_mlp_fc2", _fc2, mutates_args=())


@fp8_mlp_fc2.register_fake
def _(pre, pq, ps, prob, w2, m_splits, splits_t, fwd_format, grad_format, pow2_scales, wgrad, activation, impl):
    return (pre.new_empty((pre.shape[0], w2.shape[-2]), dtype=torch.bfloat16), *_fake_w_t(w2, fwd_format))


def _fc2_setup(ctx, inputs, output):
    pre, pq, ps, prob, w2, m_splits, splits_t, *recipe_args, activation, impl = inputs
    _, w2tq, w2ts = output
    ctx.mark_non_differentiable(w2tq, w2ts)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(pre, prob, w2, w2tq, w2ts, splits_t)
    ctx.args = (m_splits, *recipe_args, activation, impl)


def _fc2_backward(ctx, dy, *_unused):
    pre, prob, w2, w2tq, w2ts, splits_t = ctx.saved_tensors
    if dy is None:
        return (None,) * 13
    m_splits, *rest = ctx.args
    need_dw2 = ctx.needs_input_grad[4]
    dpre, dprob, dw2 = fp8_mlp_fc2_bwd(dy, pre, prob, w2, w2tq, w2ts, m_splits, splits_t, *rest, need_dw2)
    return (dpre, None, None, (dprob if prob is not None else None), (dw2 if need_dw2 else None)) + (None,) * 8


fp8_mlp_fc2.register_autograd(_fc2_backward, setup_context=_fc2_setup)


def _fc2_bwd(dy: torch.Tensor, pre: torch.Tensor, prob: Optional[torch.Tensor], w2: torch.Tensor, w2tq: torch.Tensor,
             w2ts: torch.Tensor, m_splits: Optional[list[int]], splits_t: Optional[torch.Tensor], fwd_format: str,
             grad_format: str, pow2_scales: bool, wgrad: str, activation: str, impl: str, need_dw2: bool
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    recipe = _recipe(fwd_format, grad_format, pow2_scales, wgrad)
    ctx = _Ctx(saved_tensors=(pre, prob, w2), needs_input_grad=(True, prob is not None, need_dw2), recipe=recipe,
               impl=impl, splits=_splits(m_splits, splits_t, w2.shape[0], pre, impl, recipe), fuse_wgrad=False,
               activation=resolve_activation(activation), w2t_copy=(w2tq, w2ts), w2_copy=None)
    dpre, dprob, dw2, *_ = Fp8FC2.backward.__wrapped__(ctx, dy)
    return (dpre, (dprob if dprob is not None else _empty(pre, torch.float32)),
            (dw2 if dw2 is not None else _empty(w2)))


fp8_mlp_fc2_bwd = torch.library.custom_op("cute_kernels::fp8_mlp_fc2_bwd", _fc2_bwd, mutates_args=())


@fp8_mlp_fc2_bwd.register_fake
def _(dy, pre, prob, w2, w2tq, w2ts, m_splits, splits_t, fwd_format, grad_format, pow2_scales, wgrad, activation,
      impl, need_dw2):
    dprob = prob.new_empty(prob.shape) if prob is not None else _empty(pre, torch.float32)
    return pre.new_empty(pre.shape), dprob, (w2.new_empty(w2.shape) if need_dw2 else _empty(w2))


# ---------------------------------------------------------------- the step
def _takes_route(x: torch.Tensor, backend: str, fuse_wgrad_accumulation: bool) -> bool:
    setting = compile_ops_setting()
    if setting == "0" or fuse_wgrad_accumulation:
        return False
    return setting == "1" or implementation(x, backend) == "torch"


def fp8_step(x, w1, w2, *, recipe: Fp8Recipe, m_splits=None, prob=None, fuse_wgrad_accumulation: bool = False,
             backend: str = "auto", activation=SRELU):
    """The FP8 step (fp8.mlp.fp8_srelu_mlp's arguments): the eager step, or under torch.compile the
    custom ops above (see the module docstring for when)."""
    if not (torch.compiler.is_compiling() and _takes_route(x, backend, fuse_wgrad_accumulation)):
        return fp8_srelu_mlp(x, w1, w2, recipe=recipe, m_splits=m_splits, prob=prob,
                             fuse_wgrad_accumulation=fuse_wgrad_accumulation, backend=backend, activation=activation)
    if activation is not SRELU:
        activation = _checked_activation(activation)
    grouped = m_splits is not None
    # the eager step's checks, without its device query (fp8_mlp_fc1's body makes it at run time)
    impl = _checked_step(x, w1, w2, recipe, grouped, prob, backend, query_device=False)
    if isinstance(m_splits, torch.Tensor):
        splits_list, splits_t = None, m_splits
    else:
        splits_list, splits_t = (list(m_splits) if grouped else None), None
    spec = activation.spec()
    recipe_args = _recipe_args(recipe)
    pre, pq, ps, _, _, _, _ = fp8_mlp_fc1(x, w1, splits_list, splits_t, *recipe_args, spec, impl)
    y, _, _ = fp8_mlp_fc2(pre, pq, ps, prob, w2, splits_list, splits_t, *recipe_args, spec, impl)
    return _as_dtype(y, x.dtype)
