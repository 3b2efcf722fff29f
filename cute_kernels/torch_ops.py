"""The CuTe GEMM kernels as torch custom ops (torch.library), with fake implementations,
so torch.compile traces through them without graph breaks.

    torch.ops.cute_kernels.fc1_srelu_fwd(x, w1, m_splits, prob, store_preact) -> (preact, postact)
    torch.ops.cute_kernels.fc2_fwd(h, w2, m_splits) -> y
    torch.ops.cute_kernels.fc2_dgrad_dsrelu(dy, w2, preact, m_splits, prob, store_postact) -> (dpreact, postact, dprob)
    torch.ops.cute_kernels.weight_grad(dy, x, m_splits) -> dw
    torch.ops.cute_kernels.weight_grad_accumulate(dy, x, m_splits, main_grad)  (main_grad += dw, in place)
    torch.ops.cute_kernels.fp8_fc1_srelu_fwd(x, sx, w1, sw1, m_splits, store_preact, q_format, pow2_scales)
        -> (preact, postact FP8, postact scales)
    torch.ops.cute_kernels.fp8_fc2_fwd(h, sh, w2, sw2, m_splits) -> y (bf16)

The FP8 ops take the block-scaled operands of the recipe (cute_kernels.fp8.recipe): x / h FP8
(M, K) with 1x128 scales (M, ceil(K/128)), weights FP8 (N, K) / (E, N, K) with 128x128 scales
(ceil(N/128), ceil(K/128)) / (E, ...); the postact comes back in FP8 with its 1x128 scales
(column-major (M, ceil(N/128)) fp32, as the kernel writes them), ready to be fp8_fc2_fwd's A.

`m_splits` is a list of ints or None; `splits_t` (keyword, default None) gives the
per-expert counts as an int tensor on the GPU instead, read by the kernels without a host
sync (the CPU implementations convert it to a list); `activation` (keyword, default "srelu")
names the activation of the forward and of the fused dgrad (`cute_kernels.activations`).  Outputs a call does not produce (preact with
store_preact=False, postact without store_postact, dprob without prob) are empty tensors.  CUDA runs the CuTe kernels; CPU runs the same math in torch (so the ops
are usable, and checkable with torch.library.opcheck, anywhere).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import gemm_ops, reference
from .activations import resolve_activation


def activation_arg(activation) -> str:
    """How the custom ops take an activation: its spec string."""
    return resolve_activation(activation).spec()


def _on_kernels(t: torch.Tensor) -> bool:
    """Whether an op runs the CuTe kernels (CUDA tensors) or its torch math (CPU); one
    place, so benchmarks.bench_host_path can time the kernel path's host work on CPU."""
    return t.is_cuda


def _kernel_splits(m_splits, splits_t):
    """What the CUDA kernels take: the GPU tensor when given, else the list (or None).  (The bf16
    ops spell this out inline: a call less per launch on the eager step's host path.)"""
    return splits_t if splits_t is not None else m_splits


def _host_splits(m_splits, splits_t):
    """A list for the CPU implementations."""
    return reference.splits_list(splits_t) if splits_t is not None else m_splits


def _fc1_srelu_fwd(x: torch.Tensor, w1: torch.Tensor, m_splits: Optional[list[int]], prob: Optional[torch.Tensor],
                  store_preact: bool, splits_t: Optional[torch.Tensor] = None,
                  activation: str = "srelu") -> tuple[torch.Tensor, torch.Tensor]:
    if _on_kernels(x):
        pre, post = gemm_ops.fc1_srelu(x, w1, m_splits=splits_t if splits_t is not None else m_splits, prob=prob,
                                       store_preact=store_preact, activation=activation)
        return (pre if pre is not None else x.new_empty((0,))), post
    pre = reference.rows_mm(x, w1, _host_splits(m_splits, splits_t))
    return (pre if store_preact else x.new_empty((0,))), reference.act_forward(pre, prob, x.dtype, activation)


fc1_srelu_fwd = torch.library.custom_op("cute_kernels::fc1_srelu_fwd", _fc1_srelu_fwd, mutates_args=())


@fc1_srelu_fwd.register_fake
def _(x, w1, m_splits, prob, store_preact, splits_t=None, activation="srelu"):
    n = w1.size(-2)
    pre = x.new_empty((x.size(0), n)) if store_preact else x.new_empty((0,))
    return pre, x.new_empty((x.size(0), n))


def _fc2_fwd(h: torch.Tensor, w2: torch.Tensor, m_splits: Optional[list[int]],
            splits_t: Optional[torch.Tensor] = None) -> torch.Tensor:
    if _on_kernels(h):
        return gemm_ops.fc2(h, w2, m_splits=splits_t if splits_t is not None else m_splits)
    return reference.rows_mm(h, w2, _host_splits(m_splits, splits_t))


fc2_fwd = torch.library.custom_op("cute_kernels::fc2_fwd", _fc2_fwd, mutates_args=())


def fc1_dgrad(dpre: torch.Tensor, w1: torch.Tensor, m_splits: Optional[list[int]],
              splits_t: Optional[torch.Tensor] = None) -> torch.Tensor:
    """FC1's data gradient dx = dpre @ w1 (per expert): fc2_fwd of w1's transpose (what the graph
    holds under torch.compile; the eager step's `_fc1_dgrad` makes no transposed view)."""
    return fc2_fwd(dpre, w1.transpose(-2, -1), m_splits, splits_t=splits_t)


def _fc1_dgrad(dpre: torch.Tensor, w1: torch.Tensor, m_splits: Optional[list[int]],
               splits_t: Optional[torch.Tensor] = None) -> torch.Tensor:
    """fc1_dgrad for eager callers: the kernel reads w1 as its transpose in place (gemm_ops.fc2's
    transpose_w), the same launch without the transposed view."""
    if _on_kernels(dpre):
        return gemm_ops.fc2(dpre, w1, m_splits=splits_t if splits_t is not None else m_splits, transpose_w=True)
    return reference.rows_mm(dpre, w1, _host_splits(m_splits, splits_t), transpose_w=False)


@fc2_fwd.register_fake
def _(h, w2, m_splits, splits_t=None):
    return h.new_empty((h.size(0), w2.size(-2)))


def _empty(like, dtype=None):
    """The empty stand-in of an output a call does not produce (one torch op: no cast of it)."""
    return like.new_empty((0,), dtype=dtype)


def _dgrad_outputs(dy, preact, dpre, post, dprob):
    """The fused dgrad's (dpreact, postact, dprob) as the op returns them: an empty tensor for
    an output the call did not produce (postact in dy's dtype, dprob fp32)."""
    return (dpre, post if post is not None else _empty(dy),
            dprob if dprob is not None else _empty(preact, torch.float32))


def _fc2_dgrad_dsrelu(dy: torch.Tensor, w2: torch.Tensor, preact: torch.Tensor, m_splits: Optional[list[int]],
                        prob: Optional[torch.Tensor], store_postact: bool,
                        splits_t: Optional[torch.Tensor] = None,
                        activation: str = "srelu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dpreact, postact or empty, dprob or empty) with d = dy @ w2 and p = prob (or 1):
    dpreact = p d f'(preact); postact = p f(preact); dprob = rowsum(d f(preact)) (fp32)."""
    if _on_kernels(dy):
        return _dgrad_outputs(dy, preact, *gemm_ops.fc2_dgrad_dsrelu(
            dy, w2, preact, m_splits=splits_t if splits_t is not None else m_splits, prob=prob, store_postact=store_postact,
            activation=activation))
    m_splits = _host_splits(m_splits, splits_t)
    dpost = reference.rows_mm(dy, w2, m_splits, transpose_w=False)
    prob32 = prob.float() if prob is not None else None
    dpre, dprob = reference.act_backward(dpost, preact, prob32, activation)
    post = reference.act_forward(preact, prob, dy.dtype, activation) if store_postact else _empty(dy)
    return dpre, post, (dprob.reshape(-1) if dprob is not None else _empty(preact, torch.float32))


fc2_dgrad_dsrelu_op = torch.library.custom_op("cute_kernels::fc2_dgrad_dsrelu", _fc2_dgrad_dsrelu, mutates_args=())


def _fc2_dgrad_dsrelu_eager(dy, w2, preact, m_splits, prob, store_postact, splits_t=None, activation="srelu"):
    """fc2_dgrad_dsrelu for eager callers: on the kernels, None (no empty stand-in: two torch ops
    less per step) for postact without store_postact and for dprob without prob; the caller reads
    only the outputs it asked for."""
    if _on_kernels(dy):
        return gemm_ops.fc2_dgrad_dsrelu(dy, w2, preact, m_splits=splits_t if splits_t is not None else m_splits,
                                         prob=prob, store_postact=store_postact, activation=activation)
    return _fc2_dgrad_dsrelu(dy, w2, preact, m_splits, prob, store_postact, splits_t, activation)


@fc2_dgrad_dsrelu_op.register_fake
def _(dy, w2, preact, m_splits, prob, store_postact, splits_t=None, activation="srelu"):
    dprob = preact.new_empty((preact.size(0),), dtype=torch.float32) if prob is not None else preact.new_empty((0,), dtype=torch.float32)
    return (preact.new_empty(preact.shape), (preact.new_empty(preact.shape) if store_postact else dy.new_empty((0,))),
            dprob)


def _weight_grad(dy: torch.Tensor, x: torch.Tensor, m_splits: Optional[list[int]],
                   splits_t: Optional[torch.Tensor] = None) -> torch.Tensor:
    """dw = dy^T x (dense (N, K)) or per expert (E, N, K), in dy's dtype."""
    if _on_kernels(dy):
        return gemm_ops.weight_grad(dy, x, m_splits=splits_t if splits_t is not None else m_splits)
    m_splits = _host_splits(m_splits, splits_t)
    return reference.wgrad(dy, x, m_splits, len(m_splits) if m_splits is not None else 1)


weight_grad_op = torch.library.custom_op("cute_kernels::weight_grad", _weight_grad, mutates_args=())


@weight_grad_op.register_fake
def _(dy, x, m_splits, splits_t=None):
    if m_splits is None and splits_t is None:
        return dy.new_empty((dy.size(1), x.size(1)))
    experts = splits_t.numel() if splits_t is not None else len(m_splits)
    return dy.new_empty((experts, dy.size(1), x.size(1)))


def _weight_grad_accumulate(dy: torch.Tensor, x: torch.Tensor, m_splits: Optional[list[int]],
                              main_grad: torch.Tensor, splits_t: Optional[torch.Tensor] = None) -> None:
    """main_grad += dy^T x (per expert when grouped), in main_grad's precision (fp32)."""
    if _on_kernels(dy):
        gemm_ops.weight_grad(dy, x, m_splits=splits_t if splits_t is not None else m_splits, out=main_grad,
                             accumulate=True)
        return
    m_splits = _host_splits(m_splits, splits_t)
    main_grad.add_(reference.wgrad(dy.to(main_grad.dtype), x.to(main_grad.dtype), m_splits, main_grad.size(0)))


weight_grad_accumulate_op = torch.library.custom_op("cute_kernels::weight_grad_accumulate", _weight_grad_accumulate,
                                                    mutates_args=("main_grad",))


@weight_grad_accumulate_op.register_fake
def _(dy, x, m_splits, main_grad, splits_t=None):
    return None


def _fp8_fc1_srelu_fwd(x: torch.Tensor, sx: torch.Tensor, w1: torch.Tensor, sw1: torch.Tensor,
                       m_splits: Optional[list[int]], store_preact: bool, q_format: str = "e4m3",
                       pow2_scales: bool = False, splits_t: Optional[torch.Tensor] = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(preact bf16 or empty, postact FP8 (M, N), its scales (M, ceil(N/128)) column-major) with
    preact = dequant(x) @ dequant(w1)^T and postact = relu(preact as stored)^2 quantized 1x128."""
    splits = _kernel_splits(m_splits, splits_t)
    if _on_kernels(x):
        from .fp8.ops import fp8_fc1_srelu, fp8_grouped
        from .fp8.recipe import Fp8Recipe

        recipe = Fp8Recipe(fwd_format=q_format, pow2_scales=pow2_scales)
        if splits is None:
            pre, q, qs = fp8_fc1_srelu(x, sx, w1, sw1, store_preact=store_preact, recipe=recipe)
        else:
            pre, q, qs = fp8_grouped(x, sx, w1, sw1, splits, epilogue="act", store_preact=store_preact, recipe=recipe)
        return (pre if pre is not None else x.new_empty((0,), dtype=torch.bfloat16)), q, qs
    from .fp8.recipe import FORMATS, quantize_1x128
    from .fp8.reference import fp8_fc2_ref

    pre = fp8_fc2_ref(x, sx, w1, sw1, _host_splits(m_splits, splits_t)).to(torch.bfloat16)
    m, n = pre.shape
    if m == 0:
        q, qs = pre.new_empty((0, n), dtype=FORMATS[q_format]), _fp8_scales(pre, 0, n)
    else:
        q, s = quantize_1x128(torch.relu(pre.float()).square(), q_format, pow2=pow2_scales)
        qs = _fp8_scales(pre, m, n).copy_(s)
    return (pre if store_preact else x.new_empty((0,), dtype=torch.bfloat16)), q, qs


def _fp8_scales(like: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """An (M, ceil(N/128)) fp32 scale tensor, column-major as the FP8 kernels write theirs."""
    return like.new_empty((-(-n // 128), m), dtype=torch.float32).t()


fp8_fc1_srelu_fwd = torch.library.custom_op("cute_kernels::fp8_fc1_srelu_fwd", _fp8_fc1_srelu_fwd, mutates_args=())


@fp8_fc1_srelu_fwd.register_fake
def _(x, sx, w1, sw1, m_splits, store_preact, q_format="e4m3", pow2_scales=False, splits_t=None):
    from .fp8.recipe import FORMATS

    m, n = x.size(0), w1.size(-2)
    pre = x.new_empty((m, n) if store_preact else (0,), dtype=torch.bfloat16)
    return pre, x.new_empty((m, n), dtype=FORMATS[q_format]), _fp8_scales(x, m, n)


def _fp8_fc2_fwd(h: torch.Tensor, sh: torch.Tensor, w2: torch.Tensor, sw2: torch.Tensor,
                 m_splits: Optional[list[int]], splits_t: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = dequant(h) @ dequant(w2)^T in bf16 (per expert with splits)."""
    splits = _kernel_splits(m_splits, splits_t)
    if _on_kernels(h):
        from .fp8.ops import fp8_gemm, fp8_grouped

        return fp8_gemm(h, sh, w2, sw2) if splits is None else fp8_grouped(h, sh, w2, sw2, splits)
    from .fp8.reference import fp8_fc2_ref

    return fp8_fc2_ref(h, sh, w2, sw2, _host_splits(m_splits, splits_t)).to(torch.bfloat16)


fp8_fc2_fwd = torch.library.custom_op("cute_kernels::fp8_fc2_fwd", _fp8_fc2_fwd, mutates_args=())


@fp8_fc2_fwd.register_fake
def _(h, sh, w2, sw2, m_splits, splits_t=None):
    return h.new_empty((h.size(0), w2.size(-2)), dtype=torch.bfloat16)


def fc2_dgrad_dsrelu_over_preact(dy: torch.Tensor, w2: torch.Tensor, preact: torch.Tensor,
                                 m_splits: Optional[list[int]], prob: Optional[torch.Tensor], store_postact: bool,
                                 splits_t: Optional[torch.Tensor] = None, activation: str = "srelu"):
    """fc2_dgrad_dsrelu with dpreact written over `preact` (returned as dpreact): one (M, F)
    allocation less.  Eager only, not a custom op (torch.compile plans its own memory; the
    custom op declares no mutation): srelu_mlp's `dpreact_over_preact`.  On the kernels, None
    for an output the call does not produce (as `_fc2_dgrad_dsrelu_eager`)."""
    if _on_kernels(dy):
        return gemm_ops.fc2_dgrad_dsrelu(dy, w2, preact, m_splits=splits_t if splits_t is not None else m_splits,
                                         prob=prob, store_postact=store_postact, activation=activation, out=preact)
    dpre, post, dprob = _fc2_dgrad_dsrelu(dy, w2, preact, m_splits, prob, store_postact, splits_t, activation)
    return preact.copy_(dpre), post, dprob


class _Eager:
    """The same ops as plain Python calls, for eager mode: a custom op's dispatch
    costs more host time than the kernel launch itself (~60 us a call on the H100 host),
    which made small grouped steps host-bound.  Same signatures, same code (the fused dgrad returns
None for an output not asked for, where the op returns an empty tensor; fc1_dgrad makes no
transposed view of w1)."""
    fc1_srelu_fwd = staticmethod(_fc1_srelu_fwd)
    fc2_fwd = staticmethod(_fc2_fwd)
    fc1_dgrad = staticmethod(_fc1_dgrad)
    fc2_dgrad_dsrelu_op = staticmethod(_fc2_dgrad_dsrelu_eager)
    weight_grad_op = staticmethod(_weight_grad)
    weight_grad_accumulate_op = staticmethod(_weight_grad_accumulate)
    fp8_fc1_srelu_fwd = staticmethod(_fp8_fc1_srelu_fwd)
    fp8_fc2_fwd = staticmethod(_fp8_fc2_fwd)


eager = _Eager()


def ops():
    """The custom ops while torch.compile traces (so the graph holds them, no breaks),
    else the plain calls."""
    import sys

    return sys.modules[__name__] if torch.compiler.is_compiling() else eager
