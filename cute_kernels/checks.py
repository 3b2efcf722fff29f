"""Host-side checks of the torch inputs: every precondition the kernels state, with
errors that name the argument.  Nothing here touches GPU data or syncs the host."""
from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16)
# what the torch path (srelu_mlp, the modules) computes in; the kernels take SUPPORTED_DTYPES
TORCH_PATH_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


class InputError(ValueError):
    """A torch input the kernels cannot take; the message names the argument."""


def _fail(msg: str):
    raise InputError(msg)


def quantized_dtype_message(name: str, dtype: torch.dtype) -> str | None:
    """The error for a tensor in an FP8 (or narrower: FP4, e8m0) dtype, else None.  Such a
    tensor is a floating-point tensor to torch, but no entry point takes one: the FP8 step
    quantizes its own bf16/fp16/fp32 inputs."""
    if not (dtype.is_floating_point and dtype.itemsize == 1):
        return None
    return (f"{name} has the quantized dtype {dtype}; pass bf16/fp16 tensors (fp32/fp64 too on the torch path): "
            f"the FP8 step, srelu_mlp(..., fp8=Fp8Recipe()) or the modules' fp8=, quantizes them itself "
            f"(cute_kernels.fp8)")


def check_float_dtype(name: str, t: torch.Tensor, allowed=TORCH_PATH_DTYPES):
    """t's dtype is one of `allowed` (floating point, not a quantized format)."""
    dtype = t.dtype
    if dtype in allowed:
        return
    if not dtype.is_floating_point:
        _fail(f"{name} dtype must be floating point, got {dtype}")
    names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
    _fail(quantized_dtype_message(name, dtype) or f"{name} dtype must be one of {names}, got {dtype}")


def check_matrix(name: str, t, *, ndim: int, dtype=None, device=None, allow_transposed: bool = False) -> str:
    """Checks a matrix (or stack of matrices) and returns its majorness: "row" when the
    last dimension is contiguous, "col" when the one before it is (operands only).
    (Runs on every launch: shape and strides are read once, the device as an index.)"""
    if not isinstance(t, torch.Tensor):
        _fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    shape = t.shape
    if len(shape) != ndim:
        _fail(f"{name} must have {ndim} dimensions, got shape {tuple(shape)}")
    t_dtype = t.dtype
    if t_dtype not in SUPPORTED_DTYPES:
        _fail(quantized_dtype_message(name, t_dtype) or f"{name} dtype must be bfloat16 or float16, got {t_dtype}")
    if dtype is not None and t_dtype != dtype:
        _fail(f"{name} dtype {t_dtype} does not match the input dtype {dtype}")
    if device is not None and (t.get_device(), t.is_cuda) != (
            device.index if device.type == "cuda" else -1, device.type == "cuda"):
        _fail(f"{name} is on {t.device}, expected {device} (all tensors on one CUDA device)")
    strides = t.stride()
    numel = t.numel()
    major = "row"
    if numel and strides[-1] != 1:
        if allow_transposed and strides[-2] == 1:
            major = "col"
        elif allow_transposed:
            _fail(f"{name} must be contiguous along one of its last two dimensions, got strides {strides}")
        else:
            _fail(f"{name} must have a contiguous last dimension (stride 1), got strides {strides}")
    elem = t.element_size()
    contiguous_dim = ndim - 1 if major == "row" else ndim - 2
    if (shape[contiguous_dim] * elem) % 16:
        which = "last dimension" if major == "row" else "contiguous dimension (dim -2)"
        _fail(f"{name} {which} {shape[contiguous_dim]} must be a multiple of {16 // elem} elements (16-byte rows)")
    for d in range(ndim):  # (an empty tensor is never read: its strides do not matter)
        if numel and d != contiguous_dim and shape[d] > 1 and (strides[d] * elem) % 16:
            _fail(f"{name} stride {strides[d]} of dim {d} is not a multiple of 16 bytes")
    if numel:
        check_pointer(name, t)
    return major


def check_pointer(name: str, t):
    """The one check of a matrix that depends on more than its metadata: a 16-byte aligned
    data pointer (a launch whose metadata passed check_matrix before runs only this)."""
    if t.data_ptr() % 16 and t.numel():
        _fail(f"{name} data pointer is not 16-byte aligned")


def check_cuda(name: str, t):
    if not t.is_cuda:
        _fail(f"{name} is a CPU tensor; the CuTe GEMM kernels need CUDA tensors (on CPU call srelu_mlp(..., "
              "backend='torch') or SReLUMLP / GroupedSReLUMLP(..., backend='torch'))")


def check_gemm_operands(a_name: str, a, w_name: str, w, *, grouped: bool) -> tuple[str, str]:
    """a: (M, K); w: (N, K) dense or (E, N, K) grouped, nn.Linear layout.  Either may be
    a transposed view (contiguous along M, resp. N).  Returns the GEMM majorness of A
    ("k" or "m") and of B ("k" or "n")."""
    if isinstance(a, torch.Tensor) and a.dim() == 2 and a.size(1) == 0:
        _fail(f"{a_name} has K=0: nothing to multiply")
    a_major = check_matrix(a_name, a, ndim=2, allow_transposed=True)
    b_major = check_matrix(w_name, w, ndim=3 if grouped else 2, dtype=a.dtype, device=a.device, allow_transposed=True)
    if w.size(-1) != a.size(1):
        _fail(f"{w_name} has K={w.size(-1)} but {a_name} has K={a.size(1)} (shapes {tuple(w.shape)} and {tuple(a.shape)})")
    if grouped and w.size(0) == 0:
        _fail(f"{w_name} has 0 experts")
    return ("k" if a_major == "row" else "m"), ("k" if b_major == "row" else "n")


def check_m_splits(m_splits, *, num_experts: int, m_total: int, device):
    """list/tuple of ints (checked fully) or a 1-D integer tensor on `device` (shape and
    dtype only: its sum would need a host sync)."""
    global _last_tuple
    last = _last_tuple
    if m_splits is last[0] and last[1] == num_experts and last[2] == m_total:
        return  # the tuple that passed last (srelu_mlp hands its GEMMs one): immutable, its ints too
    if isinstance(m_splits, torch.Tensor):
        if m_splits.dim() != 1 or m_splits.numel() != num_experts:
            _fail(f"m_splits must have one entry per expert ({num_experts}), got shape {tuple(m_splits.shape)}")
        if m_splits.dtype not in (torch.int32, torch.int64):
            _fail(f"m_splits dtype must be int32 or int64, got {m_splits.dtype}")
        if m_splits.device != device:
            _fail(f"m_splits is on {m_splits.device}, expected {device} (a GPU tensor is read without a host sync)")
        return
    if not isinstance(m_splits, (list, tuple)):
        _fail(f"m_splits must be a list of ints or an int tensor, got {type(m_splits).__name__}")
    # The same splits reach every GEMM of an MoE step (six per step): remember the ones
    # already checked instead of walking E entries in Python each time.
    key = m_splits if isinstance(m_splits, tuple) else tuple(m_splits)
    # (the type test first: equal tuples may hold bools or numpy ints, which the walk rejects, and
    # unhashable entries such as lists, which the walk names)
    if set(map(type, key)) != _INT_ONLY or _checked_splits.get(key) != (num_experts, m_total):
        if len(m_splits) != num_experts:
            _fail(f"m_splits has {len(m_splits)} entries but the weights have {num_experts} experts")
        for i, s in enumerate(m_splits):
            if not isinstance(s, int) or isinstance(s, bool) or s < 0:
                _fail(f"m_splits[{i}] must be a non-negative int, got {s!r}")
        if sum(m_splits) != m_total:
            _fail(f"m_splits sum to {sum(m_splits)} but the input has M={m_total} rows")
        if len(_checked_splits) >= _CHECKED_SPLITS_SIZE:
            _checked_splits.pop(next(iter(_checked_splits)))
        _checked_splits[key] = (num_experts, m_total)
    if type(m_splits) is tuple:  # known by identity next time (a tuple of ints cannot change)
        _last_tuple = (m_splits, num_experts, m_total)


_last_tuple = (object(), -1, -1)  # (splits tuple, num_experts, m_total) that passed last
_CHECKED_SPLITS_SIZE = 64
_INT_ONLY = {int}
_checked_splits: dict = {}  # splits tuple -> (num_experts, m_total) it passed with


def check_row_index(name: str, rows, *, num_rows: int, source: str, device):
    """(M,) int32/int64 row indices into `source` ((num_rows, K)), on `device`.  Their range is
    read on the host for a CPU tensor; on a CUDA tensor it is a device-side assert (no host sync:
    the next sync fails with "device-side assert triggered" and this message in the CUDA log)."""
    if not isinstance(rows, torch.Tensor):
        _fail(f"{name} must be a torch.Tensor of row indices, got {type(rows).__name__}")
    if rows.dim() != 1:
        _fail(f"{name} must be 1-D (one index per row), got shape {tuple(rows.shape)}")
    if rows.dtype not in (torch.int32, torch.int64):
        _fail(f"{name} dtype must be int32 or int64, got {rows.dtype}")
    if rows.device != device:
        _fail(f"{name} is on {rows.device}, expected {device} (the kernel reads it on the GPU)")
    if num_rows >= 2 ** 31:
        _fail(f"{name} indexes {source} of {num_rows} rows: at most 2**31 - 1 rows can be gathered")
    if rows.numel() == 0:
        return
    if rows.is_cuda:
        lo, hi = torch.aminmax(rows)
        torch._assert_async((lo >= 0) & (hi < num_rows), f"{name} holds a row index outside [0, {num_rows}) of {source}")
        return
    bad = (rows < 0) | (rows >= num_rows)
    if bad.any():
        i = int(bad.nonzero()[0])
        _fail(f"{name} holds row index {int(rows[i])} at [{i}], outside [0, {num_rows}) ({source} has {num_rows} "
              f"rows; {int(bad.sum())} indices out of range)")


def check_prob(prob, *, m_total: int, device):
    if not isinstance(prob, torch.Tensor):
        _fail(f"prob must be a torch.Tensor, got {type(prob).__name__}")
    if prob.numel() != m_total or not (prob.dim() == 1 or (prob.dim() == 2 and prob.size(1) == 1)):
        _fail(f"prob must have shape (M,) or (M, 1) with M={m_total}, got {tuple(prob.shape)}")
    if not prob.is_floating_point():
        _fail(f"prob must be floating point, got {prob.dtype}")
    check_float_dtype("prob", prob)
    if prob.device != device:
        _fail(f"prob is on {prob.device}, expected {device}")


def check_config(config):
    """`config=` of a GEMM entry point: None or a GemmConfig whose fields have their types
    (checked before the config becomes part of a cached kernel key: a list field is
    unhashable, a float one would reach the DSL)."""
    if config is None:
        return
    from .config import type_errors

    errs = type_errors(config)
    if errs:
        _fail(f"config: {'; '.join(errs)}")
