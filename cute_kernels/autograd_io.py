"""What the MLP's autograd nodes (the bf16 step in mlp.py, the FP8 step in fp8/mlp.py) share at
their edges: the offload role a saved tensor is tagged with, and the fp32 `main_grad` a weight
gradient is added into under fuse_wgrad_accumulation.  Below both steps, so neither imports
the other for these."""
from __future__ import annotations

import torch

from .mlp_checks import check_main_grad


def tag_role(t, role):
    """Name a saved tensor for the offload policy (offload.roles; eager only: under
    torch.compile the compiled graph owns its saved tensors and nothing is tagged)."""
    if torch.compiler.is_compiling():
        return t
    from offload.roles import tag

    return tag(t, role)


def main_grad(w, name: str) -> torch.Tensor:
    """`w.main_grad`, checked (InputError naming `name` unless it is a floating tensor of w's
    shape on w's device)."""
    check_main_grad(name, w)
    return w.main_grad
