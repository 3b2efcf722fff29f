"""Input checks of the squared-ReLU MLP (`srelu_mlp` and its modules), shared by the cute
and torch paths: run once before the backend is chosen, so a bad input gets the same
`InputError` naming the argument whichever path would have run it.

What is checked here is what both paths need: tensors, dimensions, a floating dtype
shared by x, w1 and w2, one device, the shapes agreeing (dense w1 (N, K), w2 (K, N);
grouped w1 (E, N, K), w2 (E, K, N)), m_splits (cute_kernels.checks.check_m_splits: a
list or tuple of E non-negative ints summing to M, or a 1-D int32/int64 tensor of E
entries), prob and the fp32 main_grad of fuse_wgrad_accumulation.  What only the CuTe
kernels need (bf16/fp16, 16-byte rows, a Hopper GPU) stays with the kernels' own checks.

A CUDA m_splits tensor is not read here (reading it would sync the host with the GPU):
its values are checked by `checked_host_splits` where the torch path reads them anyway;
the cute path's kernels read it on the GPU, unchecked.  A CPU tensor is read here.
"""
from __future__ import annotations

import torch

from .checks import (TORCH_PATH_DTYPES, InputError, check_float_dtype, check_m_splits, check_prob,
                     quantized_dtype_message)


def _tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _same_device(name: str, t: torch.Tensor, device: torch.device, x_name: str = "x"):
    if t.device != device:
        raise InputError(f"{name} is on {t.device}, expected {device} (all tensors on {x_name}'s device)")


def check_backend(backend):
    if backend not in ("auto", "cute", "torch"):
        raise InputError(f"backend must be 'auto', 'cute' or 'torch', got {backend!r}")


def check_offload(offload):
    """`offload=`: None or an offload.OffloadScheduler (a TypeError otherwise, as offload's own checks)."""
    if offload is None:
        return
    from offload import OffloadScheduler

    if not isinstance(offload, OffloadScheduler):
        raise TypeError(f"offload must be an offload.OffloadScheduler or None, got {type(offload).__name__}")


def check_mlp_operands(x, w1, w2, *, grouped: bool, x_name: str = "x"):
    """The tensors of the MLP: x (M, K) in a dtype the op computes in, w1 and w2 of x's dtype and
    device, dense (N, K) and (K, N) or grouped (E, N, K) and (E, K, N) with E > 0.  `x_name` is
    what the caller calls x (routed_srelu_experts: hidden)."""
    _tensor(x_name, x)
    if x.dim() != 2:
        raise InputError(f"{x_name} must have 2 dimensions (tokens, hidden), got shape {tuple(x.shape)}")
    check_float_dtype(x_name, x)
    ndim = 3 if grouped else 2
    for name, w in (("w1", w1), ("w2", w2)):
        _tensor(name, w)
        if w.dim() != ndim:
            layout = "(E, N, K)" if name == "w1" else "(E, K, N)"
            why = (f"{layout} with m_splits" if grouped else
                   ("(N, K)" if name == "w1" else "(K, N)") + " without m_splits"
                   + (" (3-D weights are grouped: give m_splits)" if w.dim() == 3 else ""))
            raise InputError(f"{name} must have {ndim} dimensions, {why}; got shape {tuple(w.shape)}")
        if w.dtype != x.dtype:
            check_float_dtype(name, w)  # an FP8 weight is named as such
            raise InputError(f"{name} dtype {w.dtype} does not match the input dtype {x.dtype}")
        _same_device(name, w, x.device, x_name)
    k = x.size(1)
    if k == 0:
        raise InputError(f"{x_name} has K=0: nothing to multiply")
    if w1.size(-1) != k:
        raise InputError(f"w1 has K={w1.size(-1)} but {x_name} has K={k} "
                         f"(shapes {tuple(w1.shape)} and {tuple(x.shape)})")
    n = w1.size(-2)
    want_w2 = (w1.size(0), k, n) if grouped else (k, n)
    if tuple(w2.shape) != want_w2:
        layout = "(E, K, N)" if grouped else "(K, N)"
        raise InputError(f"w2 must have shape {layout} = {want_w2} for {x_name} {tuple(x.shape)} and w1 "
                         f"{tuple(w1.shape)}, got {tuple(w2.shape)}")
    if grouped and w1.size(0) == 0:
        raise InputError("w1 has 0 experts")


def check_mlp_tensors(x, w1, w2, *, grouped: bool, prob=None):
    """What check_mlp_inputs checks that depends on the tensors' metadata alone (x, w1, w2 and
    prob: `mlp_inputs_signature` holds all of it)."""
    check_mlp_operands(x, w1, w2, grouped=grouped)
    if prob is not None:
        check_prob(prob, m_total=x.size(0), device=x.device)


def mlp_inputs_signature(x, w1, w2, grouped: bool, prob):
    """What check_mlp_tensors reads of its arguments (shapes, strides, dtypes, devices), as a
    hashable tuple; None when an argument is not a strided tensor (such a call is checked every
    time, so that its error names it).  Not launch_plan.tensor_meta: its (is_cuda, device index)
    does not tell the CPU from the meta device, and four calls of it cost the step's host path."""
    try:
        if not (isinstance(x, torch.Tensor) and isinstance(w1, torch.Tensor) and isinstance(w2, torch.Tensor)):
            return None
        p = None
        if prob is not None:
            if not isinstance(prob, torch.Tensor):
                return None
            p = (prob.shape, prob.dtype, prob.device)
        return ("srelu_mlp", x.shape, x.stride(), x.dtype, x.device, w1.shape, w1.stride(), w1.dtype, w1.device,
                w2.shape, w2.stride(), w2.dtype, w2.device, grouped, p)
    except (RuntimeError, NotImplementedError):  # no strides (a sparse or other non-strided layout)
        return None


def check_mlp_inputs(x, w1, w2, *, m_splits=None, prob=None, fuse_wgrad_accumulation: bool = False,
                     tensors_checked: bool = False):
    """Check the arguments of srelu_mlp; returns m_splits as the op takes it: None, a list
    (a list, tuple or CPU tensor, values checked) or the CUDA tensor itself (shape, dtype
    and device checked).  tensors_checked: the caller ran check_mlp_tensors for this call's
    signature already (srelu_mlp: once per signature); the splits and main_grad are checked anyway."""
    grouped = m_splits is not None
    if not tensors_checked:
        check_mlp_tensors(x, w1, w2, grouped=grouped, prob=prob)
    m = x.size(0)
    if fuse_wgrad_accumulation:
        for name, w in (("w1", w1), ("w2", w2)):
            check_main_grad(name, w)
    if not grouped:
        return None
    num_experts = w1.size(0)
    if isinstance(m_splits, torch.Tensor) and m_splits.is_cuda:
        check_m_splits(m_splits, num_experts=num_experts, m_total=m, device=x.device)
        return m_splits
    if isinstance(m_splits, torch.Tensor):  # on the host: reading it costs no sync
        if m_splits.dim() != 1 or m_splits.dtype not in (torch.int32, torch.int64):
            check_m_splits(m_splits, num_experts=num_experts, m_total=m, device=m_splits.device)  # raises
        m_splits = m_splits.tolist()
    check_m_splits(m_splits, num_experts=num_experts, m_total=m, device=x.device)
    return list(m_splits)


def checked_host_splits(m_splits: torch.Tensor, *, num_experts: int, m_total: int) -> list:
    """A CUDA m_splits tensor read to the host (one sync: the torch path does it anyway)
    and its values checked as a list's."""
    splits = m_splits.tolist()
    check_m_splits(splits, num_experts=num_experts, m_total=m_total, device=None)
    return splits


def check_main_grad(name: str, w: torch.Tensor):
    """fuse_wgrad_accumulation: `w.main_grad` is a floating tensor of w's shape on w's device."""
    mg = getattr(w, "main_grad", None)
    if not isinstance(mg, torch.Tensor) or mg.shape != w.shape or mg.device != w.device or not mg.is_floating_point():
        got = (f"a {mg.dtype} tensor of shape {tuple(mg.shape)} on {mg.device}" if isinstance(mg, torch.Tensor)
               else type(mg).__name__)
        raise InputError(f"fuse_wgrad_accumulation=True needs {name}.main_grad: a floating tensor of {name}'s shape "
                         f"{tuple(w.shape)} on {w.device}, got {got}")


def check_module_input(x, hidden: int):
    """The input of SReLUMLP.forward: a tensor whose last dimension is `hidden`."""
    _tensor("x", x)
    if x.dim() == 0 or x.size(-1) != hidden:
        raise InputError(f"x must have the module's hidden size {hidden} as its last dimension, "
                         f"got shape {tuple(x.shape)}")


def check_module_dtype(dtype):
    """`dtype=` of the modules' constructors: None or a dtype the op computes in."""
    if dtype is None:
        return
    if not isinstance(dtype, torch.dtype):
        raise InputError(f"dtype must be a torch.dtype or None, got {type(dtype).__name__} {dtype!r}")
    if dtype not in TORCH_PATH_DTYPES:
        raise InputError(quantized_dtype_message("dtype", dtype) or
                         f"dtype must be one of bfloat16, float16, float32, float64 or None, got {dtype}")
