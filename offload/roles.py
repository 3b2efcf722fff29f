"""Role names of saved activations, and protection.

An op tags each tensor it saves for backward with a role (`tag`) just before saving
it; the offload policy decides per role.  Tags and protection live in weak tables
keyed by the tensor object: nothing is written onto the tensor, and a tag disappears
with its tensor.  Parameters are always protected; `protect(t)` protects any tensor.
"""
from __future__ import annotations

import torch
from torch.utils.weak import WeakIdKeyDictionary

FC1_INPUT = "fc1_input"
PREACT = "preact"
POSTACT = "postact"
PROB = "prob"
ROLES = (FC1_INPUT, PREACT, POSTACT, PROB)
# roles an op can recompute in backward instead of saving (it asks
# offload.scheduler.recompute_requested first), with the estimated device-memory
# traffic of the recompute per byte of the tensor (read the input, write the result)
RECOMPUTABLE = {POSTACT: 2.0}

_extra_roles: list[str] = []


def register_role(name: str) -> str:
    """Make `name` a role policies may name (for tensors other ops `tag`); returns it."""
    if not isinstance(name, str) or not name:
        from .errors import OffloadArgumentError

        raise OffloadArgumentError(f"register_role: name must be a non-empty string, got {name!r}")
    if name not in ROLES and name not in _extra_roles:
        _extra_roles.append(name)
    return name


def known_roles() -> tuple[str, ...]:
    """ROLES and the roles added with register_role."""
    return ROLES + tuple(_extra_roles)

# keyed by tensor identity (a tensor's == is elementwise), entries die with the tensor
_roles = WeakIdKeyDictionary()
_protected = WeakIdKeyDictionary()


def tag(t: torch.Tensor, role: str) -> torch.Tensor:
    """Name what `t` is (one of ROLES, or any string for other ops); returns `t`."""
    if t is not None:
        _roles[t] = role
    return t


def role_of(t: torch.Tensor) -> str | None:
    return _roles.get(t)


def protect(t: torch.Tensor) -> torch.Tensor:
    """Keep `t` on the GPU whatever the policy says; returns `t`."""
    _protected[t] = True
    return t


def unprotect(t: torch.Tensor) -> None:
    _protected.pop(t, None)


def is_protected(t: torch.Tensor) -> bool:
    """Parameters (and views of them) and tensors passed to `protect`."""
    if isinstance(t, torch.nn.Parameter) or t in _protected:
        return True
    base = t._base
    return base is not None and (isinstance(base, torch.nn.Parameter) or base in _protected)
