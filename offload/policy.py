"""The selective-offload policy: a public API that both MLP paths respect.

`OffloadPolicy` says which roles may leave the GPU (`roles`), how many bytes a layer
may offload (`layer_budget_bytes`) and the smallest tensor worth a copy
(`min_tensor_bytes`).  With `auto=True` the scheduler profiles the step and the
planner (offload/planner.py) chooses, per saved tensor, keep / offload (whole or a
leading chunk of rows) / recompute, filling the link for the whole forward and
scheduling each reload to be back before its layer's backward; `roles` then limits
the candidates.  `auto=True, peak="measured"` (MeasuredOffloadScheduler) plans from the
profiled step's measured memory instead and may move any large saved tensor.  Every argument is checked at construction (`OffloadArgumentError`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import OffloadArgumentError
from .roles import ROLES, known_roles

PEAKS = ("assumed", "measured")


@dataclass
class OffloadPlan:
    """What a static (non-auto) policy chose for one layer."""

    roles: tuple[str, ...]
    reason: str
    bytes_by_role: dict = field(default_factory=dict)

    @property
    def offload_bytes(self) -> int:
        return sum(self.bytes_by_role.get(r, 0) for r in self.roles)


def _check_int(name, v, *, lo=0, none_ok=False):
    if v is None and none_ok:
        return v
    if isinstance(v, bool) or not isinstance(v, int):
        raise OffloadArgumentError(f"OffloadPolicy: {name} must be an int{' or None' if none_ok else ''}, got {v!r}")
    if v < lo:
        raise OffloadArgumentError(f"OffloadPolicy: {name} must be >= {lo}, got {v}")
    return v


def _check_float(name, v, *, lo=0.0, lo_open=True, hi=None, none_ok=False):
    if v is None and none_ok:
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise OffloadArgumentError(f"OffloadPolicy: {name} must be a number{' or None' if none_ok else ''}, got {v!r}")
    v = float(v)
    bad = not math.isfinite(v) or (v <= lo if lo_open else v < lo) or (hi is not None and v > hi)
    if bad:
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]" if hi is not None else f"{'>' if lo_open else '>='} {lo:g}"
        raise OffloadArgumentError(f"OffloadPolicy: {name} must be a finite number {rng}, got {v!r}")
    return v


def _check_bool(name, v):
    if not isinstance(v, bool):
        raise OffloadArgumentError(f"OffloadPolicy: {name} must be True or False, got {v!r}")
    return v


def _check_roles(v):
    """None, one role name (a bare string is one role), or an iterable of role names."""
    if v is None:
        return None
    if isinstance(v, str):
        v = (v,)
    try:
        roles = tuple(v)
    except TypeError:
        raise OffloadArgumentError(f"OffloadPolicy: roles must be a role name, a sequence of role names or None, "
                                   f"got {type(v).__name__}") from None
    known = known_roles()
    for r in roles:
        if not isinstance(r, str):
            raise OffloadArgumentError(f"OffloadPolicy: roles must hold role names (str), got {r!r}")
        if r not in known:
            raise OffloadArgumentError(f"OffloadPolicy: unknown role {r!r} in roles; known roles: {', '.join(known)} "
                                       "(offload.register_role adds one)")
    return tuple(dict.fromkeys(roles))


def _check_layer_ms(v):
    """None, one (forward ms, backward ms) pair for every layer, or a sequence of pairs."""
    if v is None:
        return None
    msg = "OffloadPolicy: layer_ms must be None, a (forward ms, backward ms) pair or a sequence of such pairs"
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
        raise OffloadArgumentError(f"{msg}, got {v!r}")
    pairs = (v,) if len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v) else tuple(v)
    if not pairs:
        raise OffloadArgumentError(f"{msg}, got an empty sequence")
    out = []
    for p in pairs:
        if isinstance(p, (str, bytes)) or not hasattr(p, "__len__") or len(p) != 2:
            raise OffloadArgumentError(f"{msg}, got {p!r} in it")
        out.append((_check_float("layer_ms forward", p[0]), _check_float("layer_ms backward", p[1])))
    return tuple(out)


@dataclass
class OffloadPolicy:
    roles: tuple[str, ...] | str | None = None  # None: every known role; a bare string is one role
    layer_budget_bytes: int | None = None
    min_tensor_bytes: int = 1 << 20
    auto: bool = False
    # auto: the fraction of the forward the copies to the CPU may fill (they must end
    # before the backward starts, when memory peaks)
    overlap_fraction: float = 0.97
    # auto: link bandwidths in GB/s; None = measure on first use (offload/bandwidth.py)
    d2h_gbps: float | None = None
    h2d_gbps: float | None = None
    offload_last_layer: bool = False  # the last layer's activations are needed first in backward
    # auto: the step time auto may add (recompute, the kept tail of a partial tensor
    # copied out and back), as a fraction of the measured step
    max_step_cost: float = 0.03
    recompute: bool = True  # auto may recompute roles the op can recompute (postact)
    partial: bool = True  # auto may offload a leading chunk of a tensor's rows
    # auto: device-memory throughput assumed for that added work, GB/s
    device_gbps: float = 1000.0
    # auto: per-layer time estimates (forward ms, backward ms), one pair for every layer
    # or one per layer in forward order, used instead of timing the calibration steps
    layer_ms: tuple | None = None
    # auto: steps profiled (no offload) before planning; the fastest counts.  peak="measured":
    # max(calibration_steps, 2) steps, the last timed without memory probes (offload/measured.py)
    calibration_steps: int = 2
    # auto: where the plan puts the peak.  "assumed": at the backward start, and only the
    # tagged roles of our layers move (offload/planner.py, OffloadScheduler).  "measured":
    # from the profiled step's allocated bytes, and any saved tensor of at least
    # `capture_min_elements` elements that is not a parameter may move
    # (offload/measured_planner.py, MeasuredOffloadScheduler)
    peak: str = "assumed"
    capture_min_elements: int = 256 * 1024

    def __post_init__(self):
        self.roles = _check_roles(self.roles)
        _check_bool("auto", self.auto)
        _check_int("layer_budget_bytes", self.layer_budget_bytes, none_ok=True)
        _check_int("min_tensor_bytes", self.min_tensor_bytes)
        self.overlap_fraction = _check_float("overlap_fraction", self.overlap_fraction, hi=1.0)
        self.d2h_gbps = _check_float("d2h_gbps", self.d2h_gbps, none_ok=True)
        self.h2d_gbps = _check_float("h2d_gbps", self.h2d_gbps, none_ok=True)
        _check_bool("offload_last_layer", self.offload_last_layer)
        self.max_step_cost = _check_float("max_step_cost", self.max_step_cost, lo_open=False, hi=1.0)
        _check_bool("recompute", self.recompute)
        _check_bool("partial", self.partial)
        self.device_gbps = _check_float("device_gbps", self.device_gbps)
        self.layer_ms = _check_layer_ms(self.layer_ms)
        _check_int("calibration_steps", self.calibration_steps, lo=1)
        if self.peak not in PEAKS:
            raise OffloadArgumentError(f"OffloadPolicy: peak must be one of {', '.join(map(repr, PEAKS))}, got {self.peak!r}")
        if self.peak == "measured" and not self.auto:
            raise OffloadArgumentError("OffloadPolicy: peak='measured' plans the step: it needs auto=True")
        _check_int("capture_min_elements", self.capture_min_elements, lo=1)

    # ------------------------------------------------------------------ choice
    def static_roles(self) -> tuple[str, ...] | None:
        """Roles a non-auto policy offloads (all known roles when `roles` is None)."""
        if self.auto:
            return None
        return self.roles if self.roles is not None else known_roles()

    def candidate_roles(self) -> tuple[str, ...]:
        """Roles auto may act on: `roles`, or every known role."""
        return self.roles if self.roles is not None else known_roles()

    def plan(self, bytes_by_role: dict) -> OffloadPlan:
        """A static policy's choice for a layer whose saved tensors total `bytes_by_role`
        (roles in policy order, skipping any that would pass `layer_budget_bytes`).  Auto
        plans the whole step instead: see offload.planner.plan_step."""
        if self.auto:
            raise OffloadArgumentError("OffloadPolicy.plan: an auto policy plans the whole step (offload.planner.plan_step)")
        cand = {r: b for r, b in bytes_by_role.items() if b > 0}
        chosen, total = [], 0
        for r in [r for r in self.static_roles() if r in cand]:
            if self.layer_budget_bytes is not None and total + cand[r] > self.layer_budget_bytes:
                continue
            chosen.append(r)
            total += cand[r]
        reason = "roles" + (f" within a {self.layer_budget_bytes}-byte budget" if self.layer_budget_bytes is not None else "")
        return OffloadPlan(tuple(chosen), reason, dict(bytes_by_role))


__all__ = ["OffloadPolicy", "OffloadPlan", "ROLES"]
