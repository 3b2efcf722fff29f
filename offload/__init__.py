"""Activation offload: copy what a layer saves for backward to pinned CPU memory while
the kernels run, bring it back ahead of need in backward, never move what is protected.

- `OffloadPolicy` (public): which roles to offload, a per-layer byte budget, a size
  floor, or `auto`: the scheduler profiles the first steps and offload/planner.py plans
  the whole step (copies pooled over the forward, partial tensors, reloads timed to
  each layer's backward, recompute where it is cheap); `sched.step_plan.describe()`
  shows the plan.  See docs/offload-planner.md.
- `MeasuredOffloadScheduler` (`OffloadPolicy(auto=True, peak="measured")`): auto planned
  from the profiled step's measured memory; it may move any large saved tensor of the
  step (offload/measured.py, offload/measured_planner.py).
- `protect(t)`: keep a tensor on the GPU; parameters are always kept.
- `OffloadScheduler`: the streams, events, pinned pool and prefetch; `layer(i)` marks
  a layer's forward.  `offload_layers(layers, x, scheduler)` runs a stack.
- Roles ("fc1_input", "preact", "postact", "prob") are tagged by the ops that save
  them: `cute_kernels.srelu_mlp` on both its cute and torch paths.  `register_role`
  adds a role name for tensors other ops `tag`.

Errors: every argument of `OffloadPolicy`, `OffloadScheduler` and `scheduler.layer()`
is checked when given; a bad one raises `OffloadArgumentError` (a subclass of both
ValueError and TypeError) naming the argument.  An unknown role lists the known ones.
`roles="preact"` (a bare string) is one role, the same as `roles=("preact",)`.
Marking a layer inside another raises RuntimeError.
"""
from .errors import OffloadArgumentError
from .planner import StepPlan, StepProfile, TensorProfile, plan_step
from .policy import OffloadPlan, OffloadPolicy
from .roles import (FC1_INPUT, POSTACT, PREACT, PROB, ROLES, is_protected, known_roles, protect, register_role, role_of,
                    tag, unprotect)
from .scheduler import OffloadScheduler
from .measured import MeasuredOffloadScheduler  # noqa: E402  (after OffloadScheduler: it subclasses it)
from .measured_planner import MeasuredPlan, MemoryProfile, SavedTensor, plan_measured


def offload_layers(layers, x, scheduler: OffloadScheduler, **kwargs):
    """Run `layers` in order on `x` with each layer's forward marked for `scheduler`."""
    if not isinstance(scheduler, OffloadScheduler):
        raise OffloadArgumentError(f"offload_layers: scheduler must be an OffloadScheduler, got {type(scheduler).__name__}")
    layers = list(layers)
    if scheduler.num_layers is None and layers:
        scheduler.num_layers = len(layers)
    for i, layer in enumerate(layers):
        with scheduler.layer(i):
            x = layer(x, **kwargs)
    return x


__all__ = ["OffloadPolicy", "OffloadPlan", "OffloadScheduler", "OffloadArgumentError", "offload_layers", "protect",
           "unprotect", "is_protected", "tag", "role_of", "register_role", "known_roles", "ROLES", "FC1_INPUT", "PREACT",
           "POSTACT", "PROB", "StepPlan", "StepProfile", "TensorProfile", "plan_step", "MeasuredOffloadScheduler",
           "MeasuredPlan", "MemoryProfile", "SavedTensor", "plan_measured"]
