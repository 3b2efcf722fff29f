"""FP8 copies of weights that are never stale, and hold nothing on the Parameter.

A weight's FP8 copy (128x128 blocks, `recipe.quantize_128x128`) is made from the weight's
current values **every time it is asked for** (`weight_copy`).  The FP8 MLP step asks once
per forward call per weight and keeps the copy on its autograd context; the backward derives
W^T's copy from it (`transposed_copy`: a 128x128 block's amax is that of its transpose, so
transposing the FP8 values and the scale grid is bitwise what quantizing W^T gives).  The
forward and the backward of one call thus use the same FP8 weights, and a call never sees a
copy made before it.

Why not a cache keyed on the weight (what this replaces): nothing observable from Python
changes on every write to a weight.  `w._version` is not bumped by fused optimizers
(`AdamW(fused=True)`, `SGD(fused=True)`: their kernels write the parameters outside
autograd) nor by writes through `w.data` (a `.data` alias has its own version counter), and
a tensor's data pointer survives in-place writes and can be reused by a new storage.  A
cache keyed on them trained on stale weights silently.  And a Python weakref on the
Parameter (how such a cache learned that a weight died) makes `torch.utils.swap_tensors`
refuse it, which breaks `load_state_dict(..., assign=True)` and module dtype/device
conversion with swapped parameters.  This module keeps no reference of any kind to a
weight outside an explicit reuse scope (below), and never a Python weakref.

Cost of quantizing per call: per weight and forward, one quantization pass (read the weight,
2 bytes per element in bf16; write 1 byte per element plus 4 bytes per 128x128 block); per
weight and backward, one FP8 transpose (read and write 1 byte per element).  For a 4096 x
16384 bf16 weight that is ~200 MB of traffic per forward, tens of microseconds at HBM speed
against milliseconds of GEMMs on the same weight (the torch implementation used today makes
several passes; a kernel makes one).  Memory: the FP8 copy (1 byte per element) lives from
the forward to the end of the graph, where the old cache held both orientations (2 bytes per
element) for the weight's whole life.

Opt-in reuse, `with reuse_weight_copies():` (gradient-accumulation micro-batches, activation
recompute: many forwards, one optimizer step).  Inside the scope a copy is reused while all
of these are unchanged, else made again:
- the weight's storage (a weak reference to its StorageImpl, `StorageWeakRef`, which keeps
  the address from being reused while the entry lives, and is not a weakref on the tensor),
  its storage offset, shape, strides, dtype and device: `w.data = ...`, `load_state_dict(...,
  assign=True)`, `.to()` all give a new storage;
- `w._version`: in-place ops autograd sees (non-fused optimizers, `copy_` under no_grad as
  `load_state_dict` does);
- the number of optimizer steps taken in this process (a global
  `register_optimizer_step_post_hook` counter): any `torch.optim.Optimizer.step()`, fused or
  not, refreshes every copy;
- the recipe's format and pow2 setting.
What the scope cannot see, and the caller promises does not happen inside it: writes through
`w.data` or other aliases outside autograd (`w.data.mul_()`, DLPack/numpy views, collectives
into `p.data`) without an optimizer step.  Leaving the outermost scope drops every entry.
"""
from __future__ import annotations

import contextlib
import threading

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..checks import InputError
from .recipe import Fp8Recipe, quantize_128x128

BLOCK = 128

_optimizer_steps = 0  # optimizer.step() calls finished in this process (any optimizer)


def _count_step(optimizer, args, kwargs):
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_step)


def optimizer_steps() -> int:
    """Optimizer steps taken in this process so far (what invalidates reused copies)."""
    return _optimizer_steps


class _Scope(threading.local):
    def __init__(self):
        self.depth = 0
        # id(w) -> (validation key, StorageWeakRef, {(format, pow2, transposed): (q, scales)})
        self.entries: dict = {}


_scope = _Scope()


@contextlib.contextmanager
def reuse_weight_copies():
    """Within this scope (per thread, nestable) a weight's FP8 copy is reused until the weight
    can have changed; see the module docstring for what refreshes it and what the caller
    promises.  Leaving the outermost scope frees every copy."""
    _scope.depth += 1
    try:
        yield
    finally:
        _scope.depth -= 1
        if _scope.depth == 0:
            _scope.entries.clear()


def _cdiv(a, b):
    return -(-a // b)


def transposed_copy(q: torch.Tensor, scales: torch.Tensor):
    """W^T's FP8 copy from W's: (K, N) values and (KB, NB) scales, row-major (an (E, N, K)
    stack gives (E, K, N), (E, KB, NB)).  Bitwise what quantizing W^T gives."""
    return q.transpose(-2, -1).contiguous(), scales.transpose(-2, -1).contiguous()


def _quantize(w: torch.Tensor, recipe: Fp8Recipe):
    with torch.no_grad():
        wd = w.detach()
        if wd.dim() == 2:
            return quantize_128x128(wd, recipe.fwd_format, pow2=recipe.pow2_scales)
        if wd.dim() == 3:
            if wd.shape[0] == 0:
                return (wd.to(recipe.fwd_dtype),
                        wd.new_empty((0, _cdiv(wd.shape[1], BLOCK), _cdiv(wd.shape[2], BLOCK)), dtype=torch.float32))
            return quantize_128x128(wd, recipe.fwd_format, pow2=recipe.pow2_scales)  # every expert in one pass
    raise InputError(f"a weight to quantize is (N, K) or (E, N, K), got shape {tuple(w.shape)}")


def _validation_key(w: torch.Tensor):
    return (w.untyped_storage().data_ptr(), w.storage_offset(), tuple(w.shape), w.stride(), w.dtype, w.device,
            w._version, _optimizer_steps)


def _cached_copies(w: torch.Tensor) -> dict:
    """The copies of `w` made in the current reuse scope, emptied if `w` can have changed."""
    storage_ref = StorageWeakRef(w.untyped_storage())
    key = _validation_key(w)
    entry = _scope.entries.get(id(w))
    if entry is None or entry[0] != key or entry[1] != storage_ref or entry[1].expired():
        entry = (key, storage_ref, {})
        _scope.entries[id(w)] = entry
    return entry[2]


def weight_copies(w: torch.Tensor, recipe: Fp8Recipe = Fp8Recipe(), *, both=None):
    """(W's copy, W^T's copy or None) for one forward.  `both(w, recipe)` makes the two copies in
    one pass or returns None where it does not apply (the FP8 step's kernel path passes
    fp8.quantize_ops.kernel_weight_copies); without it, or where it returns None: W's copy and
    None (the caller derives W^T's with `transposed_copy` when it needs it).  Bitwise the same
    copies either way; the same reuse rules as `weight_copy`."""
    copies = _cached_copies(w) if both is not None and _scope.depth else None
    fmt = (recipe.fwd_format, recipe.pow2_scales)
    if copies and copies.get(fmt + (False,)) is not None:  # reused in the scope
        return copies[fmt + (False,)], copies.get(fmt + (True,))
    made = both(w, recipe) if both is not None else None
    if made is None:
        return weight_copy(w, recipe), None
    if copies is not None:
        copies[fmt + (False,)], copies[fmt + (True,)] = made
    return made


def weight_copy(w: torch.Tensor, recipe: Fp8Recipe = Fp8Recipe(), *, transposed: bool = False):
    """(q, scales) of an (N, K) weight (or an (E, N, K) stack) by 128x128 blocks, from its
    current values; with `transposed`, W^T's copy (see `transposed_copy`).  Made fresh on
    every call, except inside `reuse_weight_copies()`."""
    if not isinstance(w, torch.Tensor):
        raise InputError(f"a weight to quantize must be a torch.Tensor, got {type(w).__name__}")
    if _scope.depth == 0:
        q, s = _quantize(w, recipe)
        return transposed_copy(q, s) if transposed else (q, s)
    copies = _cached_copies(w)
    fmt = (recipe.fwd_format, recipe.pow2_scales)
    hit = copies.get(fmt + (transposed,))
    if hit is None:
        plain = copies.get(fmt + (False,))
        if plain is None:
            copies[fmt + (False,)] = plain = _quantize(w, recipe)
        hit = plain if not transposed else transposed_copy(*plain)
        copies[fmt + (transposed,)] = hit
    return hit
