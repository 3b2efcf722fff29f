"""First-order-only backward for the package's autograd Functions.

The MLP's autograd nodes (cute_kernels.mlp, cute_kernels.fp8.mlp) compute their gradients
with fused kernels, or with torch math that hands the pre-activation gradient from one node
to the other outside autograd's view: differentiating that backward again would give a wrong
number, not an error.  So their backward is wrapped by `first_order_only(op)`:

- without create_graph (the usual backward) it runs as written;
- under create_graph=True (grad mode on inside backward) it runs without recording, and
  every gradient it returns is routed through a node that raises a RuntimeError naming `op`
  and "double backward" when autograd differentiates through it (a gradient penalty, a
  Hessian-vector product, gradgradcheck).  Unlike torch's `once_differentiable`, this
  happens even when the incoming gradient does not require grad, and the node is linked to
  the saved inputs, so `torch.autograd.grad(penalty, w1)` reaches it too: otherwise the
  gradient would look like a constant and the second-order term would be silently dropped.

Nothing changes under torch.compile (AOT autograd refuses double backward itself).
"""
from __future__ import annotations

import functools

import torch


def double_backward_message(op: str) -> str:
    return (f"{op} does not support double backward (second-order gradients through it, e.g. backward through "
            f"a gradient taken with create_graph=True, or gradgradcheck); compute second-order terms with plain "
            f"torch ops")


def first_order_only(op: str):
    """Decorator of an autograd.Function's `backward` (see the module docstring)."""

    def wrap(backward):
        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            if torch.compiler.is_compiling() or not torch.is_grad_enabled():
                return backward(ctx, *grads)
            with torch.no_grad():
                outs = backward(ctx, *grads)
            # the node that raises hangs off everything the gradients depend on (the incoming
            # gradients, the saved inputs), so autograd.grad with respect to any of them reaches it
            links = [t for t in (*grads, *ctx.saved_tensors) if isinstance(t, torch.Tensor) and t.requires_grad]
            return _guarded(outs, op, links)

        return wrapper

    return wrap


def _guarded(outs, op: str, links: list):
    """`outs` with each floating tensor replaced by an alias whose grad_fn raises; that
    node's inputs are the aliases' sources and `links`."""
    single = not isinstance(outs, tuple)
    items = (outs,) if single else outs
    idx = [i for i, o in enumerate(items) if isinstance(o, torch.Tensor) and (o.is_floating_point() or o.is_complex())]
    if not idx:
        return outs
    err = torch._C._functions.DelayedError(double_backward_message(op).encode(), len(idx) + len(links))
    guarded = err(*[items[i].detach().requires_grad_() for i in idx], *links)[:len(idx)]
    if not isinstance(guarded, tuple):
        guarded = (guarded,)
    result = list(items)
    for i, g in zip(idx, guarded):
        result[i] = g
    return result[0] if single else tuple(result)
