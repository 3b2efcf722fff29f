"""Host-side checks of the torch inputs: every precondition the kernels state, with
errors that name the argument.  Nothing here touches GPU data or syncs the host."""
from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16)


class InputError(ValueError):
    """A torch input the kernels cannot take; the message names the argument."""


def _fail(msg: str):
    raise InputError(msg)


def check_matrix(name: str, t, *, ndim: int, dtype=None, device=None, allow_transposed: bool = False) -> str:
    """Checks a matrix (or stack of matrices) and returns its majorness: "row" when the
    last dimension is contiguous, "col" when the one before it is (operands only)."""
    if not isinstance(t, torch.Tensor):
        _fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        _fail(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.dtype not in SUPPORTED_DTYPES:
        _fail(f"{name} dtype must be bfloat16 or float16, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        _fail(f"{name} dtype {t.dtype} does not match the input dtype {dtype}")
    if device is not None and t.device != device:
        _fail(f"{name} is on {t.device}, expected {device} (all tensors on one CUDA device)")
    major = "row"
    if t.numel() and t.stride(-1) != 1:
        if allow_transposed and t.stride(-2) == 1:
            major = "col"
        elif allow_transposed:
            _fail(f"{name} must be contiguous along one of its last two dimensions, got strides {t.stride()}")
        else:
            _fail(f"{name} must have a contiguous last dimension (stride 1), got strides {t.stride()}")
    elem = t.element_size()
    contiguous_dim = t.dim() - 1 if major == "row" else t.dim() - 2
    if (t.size(contiguous_dim) * elem) % 16:
        which = "last dimension" if major == "row" else "contiguous dimension (dim -2)"
        _fail(f"{name} {which} {t.size(contiguous_dim)} must be a multiple of {16 // elem} elements (16-byte rows)")
    for d in range(t.dim()):
        if d != contiguous_dim and t.size(d) > 1 and (t.stride(d) * elem) % 16:
            _fail(f"{name} stride {t.stride(d)} of dim {d} is not a multiple of 16 bytes")
    if t.numel() and t.data_ptr() % 16:
        _fail(f"{name} data pointer is not 16-byte aligned")
    return major


def check_cuda(name: str, t):
    if not t.is_cuda:
        _fail(f"{name} is a CPU tensor; the CuTe kernels need CUDA tensors (use backend='torch' on CPU)")


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
    if len(m_splits) != num_experts:
        _fail(f"m_splits has {len(m_splits)} entries but the weights have {num_experts} experts")
    for i, s in enumerate(m_splits):
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            _fail(f"m_splits[{i}] must be a non-negative int, got {s!r}")
    if sum(m_splits) != m_total:
        _fail(f"m_splits sum to {sum(m_splits)} but the input has M={m_total} rows")


def check_prob(prob, *, m_total: int, device):
    if not isinstance(prob, torch.Tensor):
        _fail(f"prob must be a torch.Tensor, got {type(prob).__name__}")
    if prob.numel() != m_total or not (prob.dim() == 1 or (prob.dim() == 2 and prob.size(1) == 1)):
        _fail(f"prob must have shape (M,) or (M, 1) with M={m_total}, got {tuple(prob.shape)}")
    if not prob.is_floating_point():
        _fail(f"prob must be floating point, got {prob.dtype}")
    if prob.device != device:
        _fail(f"prob is on {prob.device}, expected {device}")
