"""Scaled tanh-clamped squared ReLU (ScaledTanhSReLU): with r = relu(x), t = tanh(r / s)
and u = s * t, f(x) = u^2 (a soft clamp of relu(x)^2 at s^2; s -> inf gives relu(x)^2)
and f'(x) = 2 u (1 - t^2) for x > 0, 0 otherwise (u = 0 there, so no branch is needed).

`s` is a compile-time constant of the kernel (part of its key): a model uses one or a few.
It must lie in [2^-62, 2^62] (`S_MIN`, `S_MAX`): the range where the fp32 math below stays finite.

Kernel math (fp32), chosen for registers and accuracy:
- forward: t = tanh.approx (one MUFU op, relative error about 2^-11, well under the bf16 or
  fp16 rounding of the stored postact);
- backward: q = 1 / (exp(2z) + 1) (ex2.approx, about 2^-22 relative error, and an approximate
  reciprocal), t = 1 - 2q and 1 - t^2 = 4 q (1 - q), which keeps its relative accuracy where the
  clamp saturates (t -> 1: 1 - t*t from an approximate t would be mostly error there).
  exp(2z) overflowing to inf gives q = 0, t = 1 and f' = 0, as it should.
The accurate libdevice tanh costs enough registers to spill next to a 128x256 accumulator;
these forms compile spill-free up to `max_acc_regs` accumulator registers per thread (a
128x192 ping-pong tile, 192 registers, spills 12-24 bytes; sm_90a, 2026-12-02), so wider
configs are narrowed for this activation (cute_kernels.sm90.config.epilogue_misfit)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .base import Activation, map_elements

_TWO_LOG2E = 2.0 / math.log(2.0)  # exp(2z) = 2^(2z / ln 2)

# The kernels compute in fp32 with s and 1/s as fp32 constants, and f reaches s^2: s^2 must be
# a normal fp32 number, which keeps s and 1/s finite, nonzero and normal too (so the tanh
# argument relu(x) / s of a finite x is a number or +inf, where tanh is 1).  2^+-62: s^2 = 2^+-124,
# inside fp32's normal range [2^-126, 2^128).
S_MIN, S_MAX = 2.0 ** -62, 2.0 ** 62


@dataclass(frozen=True)
class ScaledTanhSReLU(Activation):
    s: float = 1.0
    name = "tanh_srelu"
    max_acc_regs = 128

    def __post_init__(self):
        s = self.s
        if isinstance(s, bool) or not isinstance(s, (int, float)):
            raise ValueError(f"ScaledTanhSReLU scale s must be a number, got {type(s).__name__} {s!r}")
        try:
            s = float(s)
        except OverflowError:  # an int beyond float range
            s = math.inf
        if not (S_MIN <= s <= S_MAX):  # (a NaN fails this too)
            shown = repr(self.s) if len(repr(self.s)) <= 32 else repr(self.s)[:24] + "..."
            raise ValueError(f"ScaledTanhSReLU scale s must be in [2**-62, 2**62] (about 2.2e-19 to 4.6e18: "
                             f"s^2 and 1/s finite and nonzero in the kernels' fp32 math), got {shown}")
        object.__setattr__(self, "s", s)

    def key(self) -> str:
        return f"tanh_srelu(s={self.s!r})"

    def spec(self) -> str:
        return f"tanh_srelu:{self.s!r}"

    def _z(self, x):
        import cutlass
        from cutlass import Float32

        return cutlass.select_(x > Float32(0.0), x, Float32(0.0)) * Float32(1.0 / self.s)

    def _uq(self, x):
        """(u, q) of one Float32 for the backward: u = s * t, q = 1 / (exp(2z) + 1), t = 1 - 2q."""
        import cutlass.cute as cute
        from cutlass import Float32

        e = cute.math.exp2(self._z(x) * Float32(_TWO_LOG2E), approx=True, ftz=True)
        q = cute.arch.rcp_approx(e + Float32(1.0))
        return (Float32(1.0) - Float32(2.0) * q) * Float32(self.s), q

    def _value(self, v):
        """f of one Float32 as the forward computes it (tanh.approx)."""
        import cutlass.cute as cute
        from cutlass import Float32

        u = cute.math.tanh(self._z(v), approx=True) * Float32(self.s)
        return u * u

    def forward(self, x):
        return map_elements(self._value, x)

    def backward(self, d, x):
        from cutlass import Float32

        def grad(dv, v):
            u, q = self._uq(v)
            return dv * (u * Float32(8.0)) * (q * (Float32(1.0) - q))

        def value(v):
            u, _ = self._uq(v)
            return u * u
        # the forward's tanh.approx here as well spills (16-24 bytes at 96-128 accumulator
        # registers, sm_90a 2026-12-02): a recomputed postact agrees with FC1's to ~2^-11, not bitwise
        return map_elements(grad, d, x), map_elements(value, x)

    def row_term(self, d, x):
        u, _ = self._uq(x)
        return d * (u * u)

    def torch_forward(self, x):
        import torch

        u = self.s * torch.tanh(torch.relu(x) / self.s)
        return u * u

    def torch_grad(self, x):
        import torch

        t = torch.tanh(torch.relu(x) / self.s)
        return 2.0 * self.s * t * (1.0 - t * t) * (x > 0)
