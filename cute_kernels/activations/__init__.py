"""Activations of the MLP: the per-element math the FC1 epilogue applies and the fused
dgrad epilogue differentiates, once for the kernels (fp32, traced inside the epilogue)
and once in torch (the reference and the torch path).

A new activation is one module here plus an entry in `ACTIVATIONS`; the epilogues, the
kernels of every arch, the op and the modules take it through `resolve_activation`.

- `srelu`: relu(x)^2 (the default everywhere).
- `tanh_srelu`: (s * tanh(relu(x) / s))^2, the soft-clamped squared ReLU (ScaledTanhSReLU);
  s -> inf gives srelu.  Made with a scale: `ScaledTanhSReLU(s)` or `"tanh_srelu:<s>"`.
"""
from __future__ import annotations

from .base import Activation
from .srelu import SReLU
from .tanh_srelu import ScaledTanhSReLU

SRELU = SReLU()

# name -> constructor taking the text after "name:" (or nothing)
ACTIVATIONS = {
    "srelu": lambda arg=None: SRELU if arg is None else _no_argument("srelu", arg),
    "tanh_srelu": lambda arg=None: ScaledTanhSReLU(_scale(arg)),
}


def _no_argument(name, arg):
    raise ValueError(f"activation {name!r} takes no argument, got {arg!r}")


def _scale(arg):
    if arg is None:
        raise ValueError("activation 'tanh_srelu' needs its scale: 'tanh_srelu:<s>' or ScaledTanhSReLU(s)")
    try:
        return float(arg)
    except ValueError:
        raise ValueError(f"activation 'tanh_srelu' scale must be a number, got {arg!r}") from None


def resolve_activation(activation) -> Activation:
    """An Activation from an Activation, None (srelu) or a name ('srelu', 'tanh_srelu:4.0')."""
    if activation is None:
        return SRELU
    if isinstance(activation, Activation):
        return activation
    if not isinstance(activation, str):
        raise TypeError(f"activation must be an Activation, a name or None, got {type(activation).__name__}")
    name, sep, arg = activation.partition(":")
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name](arg if sep else None)


__all__ = ["Activation", "SReLU", "ScaledTanhSReLU", "SRELU", "ACTIVATIONS", "resolve_activation"]
