"""Launch plans: what is fixed for one GEMM call signature, resolved on its first call.

A call signature is an entry point of `cute_kernels.gemm_ops` with its operands' metadata
(`tensor_meta`: shape, strides, dtype, device), its epilogue flags, the activation and
config arguments (the FP8 entry points add the tuned-configs directory; the bf16 ones leave it
out: `config_lookup.tuned_root` changes only in `clear_cache`, which drops every plan).  Its
`LaunchPlan` holds what follows from that alone: the operand majorness the checks found, the compiled-kernel key (config looked
up, narrowed and validated) and, once the first launch has passed the self-check gate, the
compiled kernel, the cluster-count argument and the descriptor workspace size.  A repeated
call is then one dict lookup instead of the operand checks, the key build, the config lookup,
the gate and the compile-cache lookup.  What may differ between calls of equal metadata is
still checked on every call (data pointer alignment, m_splits values, prob, out, config field
types).  A plan exists only for a signature whose checks passed.  `config_lookup.clear_cache`
drops every plan (a new tuned-configs directory may give other keys).
"""
from __future__ import annotations

import torch

from .config_lookup import on_clear

MAX_PLANS = 4096  # signatures kept; past it the table starts over (a new shape only re-resolves)


class LaunchPlan:
    """One call signature's resolved launch (gemm_ops fills `fn` on the first launch)."""

    __slots__ = ("key", "majors", "fn", "max_clusters", "n_clusters", "desc_words")

    def __init__(self, key, majors=None):
        self.key = key  # compile.KernelKey
        self.majors = majors  # (A, B) majorness of the operands as the caller passed them
        self.fn = None  # the launch callable: fn(*GemmArgs, max_clusters); None until the first launch
        self.max_clusters = None  # the kernel's max-clusters argument (device, cluster size)
        self.n_clusters = 0
        self.desc_words = 0  # int64 words of the grouped_k descriptor workspace


_plans: dict = {}


def tensor_meta(t):
    """What the metadata-only checks read of `t`: (shape, strides, dtype, is_cuda, device
    index); None for anything but a strided tensor (its call takes the checking path)."""
    if not isinstance(t, torch.Tensor) or t.layout is not torch.strided:
        return None
    return t.shape, t.stride(), t.dtype, t.is_cuda, t.get_device()


def get(signature) -> LaunchPlan | None:
    """The plan of `signature`, or None (also for an unhashable argument such as a config
    with a list field: the checking path names it)."""
    try:
        return _plans.get(signature)
    except TypeError:
        return None


def put(signature, plan: LaunchPlan) -> LaunchPlan:
    if len(_plans) >= MAX_PLANS:
        _plans.clear()
    _plans[signature] = plan
    return plan


_passed: set = set()  # signatures of calls whose metadata checks passed (check_once)


def check_once(signature, check) -> None:
    """check() on the first call of a `signature` (a hashable tuple of what the checks read: the
    arguments' tensor_meta and flags), remembered when it passes; nothing on a repeated one.  For
    entry points that have no GEMM plan to keep (the FP8 quantizers, the FP8 step's input checks):
    what the checks read of the call must be in the signature, what they do not (data pointers,
    values) checked by the caller on every call.  An unhashable signature is checked every call."""
    try:
        if signature in _passed:
            return
    except TypeError:
        check()
        return
    check()
    if len(_passed) >= MAX_PLANS:
        _passed.clear()
    _passed.add(signature)


def clear():
    _plans.clear()
    _passed.clear()


def size() -> int:
    return len(_plans)


on_clear(clear)
