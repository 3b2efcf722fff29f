"""Activation offload: copy what a layer saves for backward to pinned CPU memory while
the kernels run, bring it back ahead of need in backward, never move what is protected.

- `OffloadPolicy` (public): which roles to offload, a per-layer byte budget, a size
  floor, or `auto` (roles whose copies fit under the layer's compute time).
- `protect(t)`: keep a tensor on the GPU; parameters are always kept.
- `OffloadScheduler`: the streams, events, pinned pool and prefetch; `layer(i)` marks
  a layer's forward.  `offload_layers(layers, x, scheduler)` runs a stack.
- Roles ("fc1_input", "preact", "postact", "prob") are tagged by the ops that save
  them: `cute_kernels.srelu_mlp` on both its cute and torch paths.
"""
from .policy import OffloadPlan, OffloadPolicy
from .roles import FC1_INPUT, POSTACT, PREACT, PROB, ROLES, is_protected, protect, role_of, tag, unprotect
from .scheduler import OffloadScheduler


def offload_layers(layers, x, scheduler: OffloadScheduler, **kwargs):
    """Run `layers` in order on `x` with each layer's forward marked for `scheduler`."""
    if scheduler.num_layers is None:
        scheduler.num_layers = len(layers)
    for i, layer in enumerate(layers):
        with scheduler.layer(i):
            x = layer(x, **kwargs)
    return x


__all__ = ["OffloadPolicy", "OffloadPlan", "OffloadScheduler", "offload_layers", "protect", "unprotect",
           "is_protected", "tag", "role_of", "ROLES", "FC1_INPUT", "PREACT", "POSTACT", "PROB"]
