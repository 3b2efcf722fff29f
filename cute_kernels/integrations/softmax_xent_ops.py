"""Torch entry point of the row softmax cross-entropy kernel (kernel: cute_kernels/sm90/softmax_xent.py).

`softmax_xent_(logits, targets, scale, loss_rows)`: for a chunk's logits (R, V) bf16/fp16 on a
GPU whose arch has the kernel, writes each row's loss term (logsumexp - logit[target], fp32; 0
where the target is outside [0, V), which marks an ignored row) into loss_rows (R,) and
overwrites the logits with g = (softmax - onehot(target)) * scale (0 on ignored rows), scale a
(1,) fp32 tensor.  integrations/chunked_ce.py uses it per chunk when
the kernel path on (`ce_kernel_enabled`, CUTE_KERNELS_CE_KERNEL=0 turns it off) and `kernel_takes_logits`; its torch form
stays the reference and the path for everything else.

Requirements (else InputError): V a multiple of 8 and rows 16-byte aligned (the 16-byte vector
loads and stores), unit column stride, at least one row, targets int64 (R,) contiguous.
Compiled once per (arch, dtype), R, V and the row stride symbolic; launched through TVM-FFI on
the current stream.
"""
from __future__ import annotations

import os
import tempfile

import torch

from .. import archs
from ..checks import InputError
from ..compile import arch_options, dsl_lock, launch_stream, use_tvm_ffi

_DTYPES = {torch.bfloat16: "bfloat16", torch.float16: "float16"}
_cache: dict = {}


def ce_kernel_enabled() -> bool:
    """Whether the chunked cross-entropy computes each chunk's loss and gradient with the kernel
    (where the device has it): on by default since the H200 run of 2026-12-03 19:06 UTC (its GPU
    tests passed; the dense Nemotron-H step with the chunked loss 21.26 -> 19.46 ms, 17:19 run);
    CUTE_KERNELS_CE_KERNEL=0 takes the torch form."""
    return os.environ.get("CUTE_KERNELS_CE_KERNEL", "1") != "0"


def kernel_arch(device) -> str | None:
    """The arch of `device` if it has the kernel (cute_kernels.archs: `Arch.softmax_xent`), else None."""
    arch = archs.device_arch(device)
    return arch if arch is not None and archs.softmax_xent_class(arch) is not None else None


def fake_arguments(dtype: str):
    """Stand-ins for (logits, targets, scale, loss_rows): R, V and the row stride symbolic."""
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_fake_tensor

    rows, vocab = cute.sym_int32(symbol="R"), cute.sym_int32(symbol="V")
    dt = {"bfloat16": cutlass.BFloat16, "float16": cutlass.Float16}[dtype]
    x = make_fake_tensor(dt, (rows, vocab), (cute.sym_int64(divisibility=8), 1), assumed_align=16)
    t = make_fake_tensor(cutlass.Int64, (rows,), (1,), assumed_align=8)
    scale = make_fake_tensor(cutlass.Float32, (1,), (1,), assumed_align=4)
    loss = make_fake_tensor(cutlass.Float32, (rows,), (1,), assumed_align=4)
    return x, t, scale, loss


def compile_softmax_xent(dtype: str = "bfloat16", arch: str = "sm90", *, options: str = "", tvm_ffi: bool = False):
    """Compile `arch`'s kernel for logits of `dtype` (uncached; no GPU needed)."""
    import cutlass
    import cutlass.cute as cute

    cls = archs.softmax_xent_class(arch)
    if cls is None:
        raise ValueError(f"arch {arch!r} has no softmax cross-entropy kernel")
    with dsl_lock:
        stream, options = launch_stream(options, tvm_ffi)
        kernel = cls({"bfloat16": cutlass.BFloat16, "float16": cutlass.Float16}[dtype])
        return cute.compile(kernel, *fake_arguments(dtype), stream, options=arch_options(arch, options))


def softmax_xent_ptx(dtype: str = "bfloat16", arch: str = "sm90") -> str:
    """The kernel's PTX (compiled into a private dump directory, as inspect_ptx.kernel_ptx)."""
    with tempfile.TemporaryDirectory(prefix="cute_kernels_ptx_") as d:
        return compile_softmax_xent(dtype, arch, options=f"--keep-ptx --dump-dir={d}").__ptx__


def _compiled(dtype: str, arch: str):
    key = (arch, dtype)
    fn = _cache.get(key)
    if fn is None:
        with dsl_lock:
            fn = _cache.get(key)
            if fn is None:
                fn = _cache[key] = compile_softmax_xent(dtype, arch, tvm_ffi=True)
    return fn


def layout_errors(logits) -> str | None:
    """Why the kernel cannot take `logits` as they are laid out (None: it can)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        return "logits must be a 2-D torch.Tensor (rows, vocab)"
    if logits.dtype not in _DTYPES:
        return f"logits must be bfloat16 or float16, got {logits.dtype}"
    rows, vocab = logits.shape
    if rows == 0 or vocab == 0:
        return f"logits are empty (shape {tuple(logits.shape)})"
    if vocab % 8:
        return f"logits have vocab = {vocab} columns; the kernel needs a multiple of 8 (16-byte vectors)"
    if logits.stride(1) != 1 or (rows > 1 and logits.stride(0) % 8) or logits.data_ptr() % 16:
        return f"logits must be row-major with 16-byte aligned rows (strides {logits.stride()})"
    if rows >= 2 ** 31:
        return f"logits have {rows} rows; the kernel's grid takes fewer than 2^31"
    return None


def kernel_takes_logits(dtype: torch.dtype, vocab: int, device) -> bool:
    """Whether `softmax_xent_` takes freshly made (contiguous) logits of `dtype` with `vocab`
    columns on `device`: bf16/fp16, vocab a multiple of 8, a GPU whose arch has the kernel, and
    the TVM-FFI launch path installed."""
    return (dtype in _DTYPES and vocab > 0 and vocab % 8 == 0 and torch.device(device).type == "cuda"
            and kernel_arch(device) is not None and use_tvm_ffi())


def softmax_xent_(logits: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor,
                  loss_rows: torch.Tensor) -> torch.Tensor:
    """Write the loss rows and overwrite `logits` with their gradient (see the module docstring);
    returns `logits`."""
    why = layout_errors(logits)
    if why is not None:
        raise InputError(why)
    rows = logits.size(0)
    for name, t, dtype, shape in (("targets", targets, torch.long, (rows,)), ("scale", scale, torch.float32, (1,)),
                                  ("loss_rows", loss_rows, torch.float32, (rows,))):
        if not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != shape or t.stride(0) != 1:
            raise InputError(f"{name} must be a contiguous {dtype} tensor of shape {shape}, got "
                             f"{getattr(t, 'dtype', type(t).__name__)} of shape {tuple(getattr(t, 'shape', ()))}")
        if t.device != logits.device:
            raise InputError(f"{name} is on {t.device}, logits on {logits.device}")
    if not logits.is_cuda:
        raise InputError(f"logits must be a CUDA tensor for the kernel, got {logits.device}")
    arch = kernel_arch(logits.device)
    if arch is None:
        major, minor = archs.device_capability(archs.cuda_index(logits.device))
        raise InputError(f"the softmax cross-entropy kernel has no build for compute capability {major}.{minor}")
    if not use_tvm_ffi():
        raise InputError("the softmax cross-entropy kernel launches through TVM-FFI: install apache-tvm-ffi and "
                         "leave CUTE_KERNELS_TVM_FFI unset")
    x = logits if rows > 1 or logits.stride(0) % 8 == 0 else logits.as_strided(logits.shape, (logits.size(1), 1))
    _compiled(_DTYPES[logits.dtype], arch)(x, targets, scale, loss_rows)
    return logits
