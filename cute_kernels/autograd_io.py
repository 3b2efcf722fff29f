"""What the MLP's autograd nodes (the bf16 step in mlp.py, the FP8 step in fp8/mlp.py) share at
their edges: the offload role a saved tensor is tagged with, and the fp32 `main_grad` a weight
gradient is added into under fuse_wgrad_accumulation.  Below both steps, so neither imports
the other for these."""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch

from .mlp_checks import check_main_grad


def tag_role(t, role):
    """Name a saved tensor for the offload policy (offload.roles; eager only: under
    torch.compile the compiled graph owns its saved tensors and nothing is tagged)."""
    if torch.compiler.is_compiling():
        return t
    return offload_hooks().tag(t, role)


class OffloadHooks(NamedTuple):
    tag: Callable  # offload.roles.tag
    recompute_requested: Callable  # offload.scheduler.recompute_requested


@functools.cache
def offload_hooks() -> OffloadHooks:
    """What the MLP ops call of offload, imported on first use (importing cute_kernels does not
    import offload) and kept: an import statement per call cost ~0.5 us, three or four a step."""
    from offload.roles import tag
    from offload.scheduler import recompute_requested

    return OffloadHooks(tag, recompute_requested)


def main_grad(w, name: str) -> torch.Tensor:
    """`w.main_grad`, checked (InputError naming `name` unless it is a floating tensor of w's
    shape on w's device)."""
    check_main_grad(name, w)
    return w.main_grad
