"""The selective-offload policy: a public API that both MLP paths respect.

`OffloadPolicy` says which roles may leave the GPU (`roles`), how many bytes a layer
may offload (`layer_budget_bytes`), the smallest tensor worth a copy
(`min_tensor_bytes`), and with `auto=True` lets the scheduler pick the roles whose
copies fit under the layer's compute time, from the measured link bandwidth and the
layer's measured forward/backward times.  `plan(...)` returns an `OffloadPlan`
saying what was chosen and why; the scheduler keeps the last one (`scheduler.plan`).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from .roles import ROLES


@dataclass
class OffloadPlan:
    """What a policy chose for one layer."""

    roles: tuple[str, ...]
    reason: str
    bytes_by_role: dict = field(default_factory=dict)
    copy_ms: float = 0.0
    budget_ms: float | None = None

    @property
    def offload_bytes(self) -> int:
        return sum(self.bytes_by_role.get(r, 0) for r in self.roles)


@dataclass
class OffloadPolicy:
    roles: tuple[str, ...] | None = None  # None: every role (when not auto)
    layer_budget_bytes: int | None = None
    min_tensor_bytes: int = 1 << 20
    auto: bool = False
    # auto: fraction of the layer's compute time the copies may take
    overlap_fraction: float = 0.9
    # auto: link bandwidths in GB/s; None = measure on first use
    d2h_gbps: float | None = None
    h2d_gbps: float | None = None
    offload_last_layer: bool = False  # the last layer's activations are needed first in backward

    def __post_init__(self):
        if self.roles is not None:
            self.roles = tuple(self.roles)
        if self.auto and self.roles is not None:
            raise ValueError("OffloadPolicy: give either roles or auto=True, not both")
        if self.layer_budget_bytes is not None and self.layer_budget_bytes < 0:
            raise ValueError("OffloadPolicy: layer_budget_bytes must be >= 0")
        if not 0 < self.overlap_fraction <= 1:
            raise ValueError("OffloadPolicy: overlap_fraction must be in (0, 1]")

    # ------------------------------------------------------------------ choice
    def static_roles(self) -> tuple[str, ...] | None:
        """Roles a non-auto policy offloads (all known roles when `roles` is None)."""
        if self.auto:
            return None
        return self.roles if self.roles is not None else ROLES

    def plan(self, bytes_by_role: dict, *, fwd_ms: float | None = None, bwd_ms: float | None = None) -> OffloadPlan:
        """Choose the roles to offload for a layer whose saved tensors (above the size
        floor) total `bytes_by_role`.  Auto needs the layer's forward (and optionally
        backward) compute time and the link bandwidths."""
        cand = {r: b for r, b in bytes_by_role.items() if b > 0}
        if not self.auto:
            allowed = [r for r in self.static_roles() if r in cand]
            chosen, total = [], 0
            for r in allowed:
                if self.layer_budget_bytes is not None and total + cand[r] > self.layer_budget_bytes:
                    continue
                chosen.append(r)
                total += cand[r]
            reason = "roles" + (f" within a {self.layer_budget_bytes}-byte budget" if self.layer_budget_bytes is not None else "")
            return OffloadPlan(tuple(chosen), reason, dict(bytes_by_role))
        if fwd_ms is None or not self.d2h_gbps or not self.h2d_gbps:
            return OffloadPlan((), "auto: no timing yet (calibration step)", dict(bytes_by_role))
        # copies to the CPU overlap the forward, copies back overlap the backward
        budget_fwd = fwd_ms * self.overlap_fraction
        budget_bwd = (bwd_ms if bwd_ms is not None else 2 * fwd_ms) * self.overlap_fraction
        best, best_bytes, best_ms = (), -1, 0.0
        names = sorted(cand)
        for n in range(len(names) + 1):
            for combo in itertools.combinations(names, n):
                b = sum(cand[r] for r in combo)
                if self.layer_budget_bytes is not None and b > self.layer_budget_bytes:
                    continue
                d2h_ms = b / (self.d2h_gbps * 1e6)
                h2d_ms = b / (self.h2d_gbps * 1e6)
                if d2h_ms <= budget_fwd and h2d_ms <= budget_bwd and b > best_bytes:
                    best, best_bytes, best_ms = combo, b, d2h_ms
        reason = (f"auto: largest set whose copies fit {self.overlap_fraction:.0%} of the layer's compute "
                  f"(fwd {fwd_ms:.3f} ms at {self.d2h_gbps:.0f} GB/s to CPU, bwd {budget_bwd / self.overlap_fraction:.3f} ms "
                  f"at {self.h2d_gbps:.0f} GB/s back)")
        return OffloadPlan(tuple(best), reason, dict(bytes_by_role), best_ms, budget_fwd)
