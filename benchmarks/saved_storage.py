"""What one forward saves for its backward, in bytes of distinct storages (exact, any device).

    out, saved = saved_storages(lambda: module(x), exclude=module.parameters())
    saved.nbytes, saved.largest(5)

Every tensor autograd saves during `forward()` passes through a saved_tensors_hooks pack hook;
the bytes counted are those of the distinct storages behind them (a tensor saved twice, or two
views of one buffer, count once; a view of a larger buffer counts the whole buffer, which its
saving keeps alive).  Storages of `exclude` (the parameters: their memory is resident anyway, and
a transposed weight saved by an op is a view of it) are left out.  The saved tensors are held
until the forward returns, so no storage is freed and its address reused for another while
counting.  Not seen: tensors a custom autograd.Function keeps as plain ctx attributes instead of
through save_for_backward (none in our ops but small index tensors; see docs/fused-gather.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SavedStorages:
    """Distinct storages saved by one forward: key (device, address) -> [bytes, [(shape, dtype) saved on it]]."""

    storages: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(nb for nb, _ in self.storages.values())

    def largest(self, n: int = 8) -> list:
        """The n largest storages as (bytes, shapes and dtypes of the tensors saved on it), biggest first."""
        rows = sorted(self.storages.values(), key=lambda v: -v[0])[:n]
        return [(nb, [(list(shape), str(dtype).replace("torch.", "")) for shape, dtype in views]) for nb, views in rows]


def _key(t: torch.Tensor):
    return str(t.device), t.untyped_storage().data_ptr()


def saved_storages(forward, exclude=()) -> tuple:
    """Run `forward()` (grad enabled) and return (its output, SavedStorages of what it saved)."""
    skip = {_key(t) for t in exclude}
    saved = SavedStorages()
    held = []

    def pack(t):
        key = _key(t)
        if key not in skip:
            entry = saved.storages.setdefault(key, [t.untyped_storage().nbytes(), []])
            entry[1].append((tuple(t.shape), t.dtype))
            held.append(t)
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    held.clear()
    return out, saved
