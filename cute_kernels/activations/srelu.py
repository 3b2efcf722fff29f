"""Squared ReLU: f(x) = relu(x)^2, f'(x) = 2 relu(x)."""
from __future__ import annotations

from dataclasses import dataclass

from .base import Activation


@dataclass(frozen=True)
class SReLU(Activation):
    name = "srelu"

    def forward(self, x):
        import cutlass.cute as cute

        pos = cute.where(x > 0.0, x, 0.0)
        return pos * pos

    def backward(self, d, x):
        import cutlass.cute as cute

        act = cute.where(x > 0.0, x, 0.0)
        return d * act * 2.0, act * act

    def row_term(self, d, x):
        import cutlass
        from cutlass import Float32

        act = cutlass.select_(x > 0.0, x, Float32(0.0))
        return d * act * act

    def torch_forward(self, x):
        import torch

        act = torch.relu(x)
        return act * act

    def torch_grad(self, x):
        import torch

        return 2.0 * torch.relu(x)
