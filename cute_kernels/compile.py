"""Compiling GEMM kernels: fake-tensor signatures, the in-process cache, artifacts.

Kernels are compiled once per (arch, config, epilogue, grouping, dtypes, operand
majorness) with M, N, K, E and leading dimensions symbolic, so a new shape reuses the
compiled kernel.  Grouping: `grouped` (per-expert row ranges of A and D, one B per
expert: grouped FC1/FC2 and their data gradients) or `grouped_k` (per-expert ranges
of the reduction dimension, one D per expert: grouped weight gradients).  Compiling needs
no GPU: each compile passes its key's arch to the DSL (`--gpu-arch`), so one process can
compile for several arches; the kernel class comes from `cute_kernels.archs`.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import threading
from dataclasses import dataclass

from .archs import ARCHS, get_arch, kernel_class
from .config import ConfigError, GemmConfig, epilogue_misfit, resolved_ab_stages, validate
from .epilogue import EpilogueSpec
from .gemm_base.launch_args import GemmArgs

ARCH_TO_DSL = {name: a.dsl_target for name, a in ARCHS.items()}


@dataclass(frozen=True)
class KernelKey:
    arch: str
    cfg: GemmConfig
    epi: EpilogueSpec
    grouped: bool
    dtype: str  # "bfloat16" | "float16"
    a_major: str  # "k" | "m"
    b_major: str  # "k" | "n"
    out_dtype: str = ""  # "" (the operands' dtype) | "float32"
    grouped_k: bool = False

    @property
    def d_dtype(self) -> str:
        return self.out_dtype or self.dtype

    @property
    def out_bytes(self) -> int:
        return 4 if self.d_dtype == "float32" else 2


@functools.lru_cache(maxsize=256)
def desc_workspace_words(key: "KernelKey", max_clusters: int) -> int:
    """Int64 words of the grouped_k TMA-descriptor workspace for a launch of at most
    `max_clusters` clusters: per CTA, A and B descriptors (128 B each) in every slot."""
    from .gemm_base.descriptors import workspace_words

    stages = resolved_ab_stages(key.cfg, num_outputs=key.epi.num_outputs, arch=key.arch, out_bytes=key.out_bytes)
    return workspace_words(max_clusters * key.cfg.cluster_size, stages)


_cache: dict[KernelKey, object] = {}
# The DSL keeps the state of a compile (its options among them: TVM-FFI or not) in one
# process-wide object and resets it when a compile ends, so two compiles on two threads
# corrupt each other (the autotuner compiles ahead on threads while the main thread
# runs kernels; cutlass.utils.HardwareInfo compiles a probe kernel too).  Every DSL
# compile in this package holds this lock.
dsl_lock = threading.RLock()


@functools.lru_cache(maxsize=None)
def use_tvm_ffi() -> bool:
    """Launch through TVM-FFI (torch tensors passed straight in, a few microseconds of
    host time per call) when apache-tvm-ffi is installed; CUTE_KERNELS_TVM_FFI=0 turns
    it off and falls back to the DSL's DLPack path."""
    return os.environ.get("CUTE_KERNELS_TVM_FFI", "1") != "0" and importlib.util.find_spec("tvm_ffi") is not None


def _cutlass_dtype(name: str):
    import cutlass

    return {"bfloat16": cutlass.BFloat16, "float16": cutlass.Float16, "float32": cutlass.Float32}[name]


def fake_arguments(key: KernelKey) -> GemmArgs:
    """Symbolic-shape stand-ins for the kernel's tensors (what `cute.compile` needs)."""
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_fake_tensor

    dt = _cutlass_dtype(key.dtype)
    dd = _cutlass_dtype(key.d_dtype)
    # One SymInt per quantity, reused wherever it appears: the launcher then checks
    # that every tensor agrees on M, N and K.
    m, n, k = cute.sym_int32(symbol="M"), cute.sym_int32(symbol="N"), cute.sym_int32(symbol="K")
    lda, ldb, ldd = (cute.sym_int64(divisibility=8, symbol=s) for s in ("lda", "ldb", "ldd"))
    batch_a, batch_b = cute.sym_int64(divisibility=8), cute.sym_int64(divisibility=8)
    a_stride = (lda, 1, batch_a) if key.a_major == "k" else (1, lda, batch_a)
    a = make_fake_tensor(dt, (m, k, 1), a_stride, assumed_align=16)
    lb = cute.sym_int32(symbol="L") if key.grouped else 1
    b_stride = (ldb, 1, batch_b) if key.b_major == "k" else (1, ldb, batch_b)
    b = make_fake_tensor(dt, (n, k, lb), b_stride, assumed_align=16)
    ld_ = cute.sym_int32(symbol="E") if key.grouped_k else 1  # one output per expert

    def out_like(dtype):
        return make_fake_tensor(dtype, (m, n, ld_), (ldd, 1, cute.sym_int64(divisibility=8)), assumed_align=16)

    d0 = out_like(dd)
    d1 = out_like(dd) if key.epi.num_outputs == 2 else None
    scale = make_fake_tensor(cutlass.Float32, (m,), (1,), assumed_align=4) if key.epi.row_scale else None
    aux = None
    if key.epi.aux_input:  # accumulate: D's previous value; dsrelu: preact (operand dtype)
        aux = make_fake_tensor(dd if key.epi.accumulate else dt, (m, n, ld_),
                               (cute.sym_int64(divisibility=8), 1, cute.sym_int64(divisibility=8)), assumed_align=16)
    rowsum = None
    if key.epi.row_sum:  # (M, N tiles) partials, column per N tile
        rowsum = make_fake_tensor(cutlass.Float32, (m, cute.sym_int32(symbol="NT")), (1, cute.sym_int64()),
                                  assumed_align=4)
    cu_rows = cu_tiles = None
    if key.grouped or key.grouped_k:
        e1 = cute.sym_int32(symbol="E1")
        cu_rows = make_fake_tensor(cutlass.Int32, (e1,), (1,), assumed_align=4)
    if key.grouped:
        cu_tiles = make_fake_tensor(cutlass.Int32, (e1,), (1,), assumed_align=4)
    desc_ws = None
    if key.grouped_k:  # per-CTA TMA descriptors (desc_workspace_words)
        desc_ws = make_fake_tensor(cutlass.Int64, (cute.sym_int32(symbol="W"),), (1,), assumed_align=128)
    return GemmArgs(a, b, d0, d1, scale, aux, rowsum, cu_rows, cu_tiles, desc_ws)


def build_kernel(key: KernelKey):
    """The kernel object for `key` (config validated first)."""
    if key.grouped and key.grouped_k:
        raise ValueError("a kernel is grouped along M or along K, not both")
    if key.grouped_k and (key.a_major, key.b_major) != ("m", "n"):
        raise ValueError("the K-grouped GEMM takes tokens (K) as the strided dimension: A must be M-major and B N-major")
    misfit = epilogue_misfit(key.cfg, key.epi, arch=key.arch, out_bytes=key.out_bytes, grouped_k=key.grouped_k)
    if misfit:
        raise ConfigError(misfit)
    validate(key.cfg, arch=key.arch, num_outputs=key.epi.num_outputs, grouped=key.grouped, grouped_k=key.grouped_k,
             out_bytes=key.out_bytes)
    stages = resolved_ab_stages(key.cfg, num_outputs=key.epi.num_outputs, arch=key.arch, out_bytes=key.out_bytes)
    return kernel_class(key.arch)(key.cfg, key.epi, grouped=key.grouped, grouped_k=key.grouped_k, ab_stages=stages)


def arch_options(arch: str, options: str = "") -> str:
    """`options` with the DSL target of `arch` (`--gpu-arch`), unless it names one already."""
    if "--gpu-arch" in options:
        return options
    return (options + f" --gpu-arch {get_arch(arch).dsl_target}").strip()


def compile_kernel(key: KernelKey, *, options: str = "", tvm_ffi: bool = False):
    """Compile `key` (uncached).  Returns the DSL's compiled callable.

    With `tvm_ffi` the callable takes torch tensors and uses the current torch stream:
    fn(*GemmArgs(...), Int32(max_clusters)).  The target arch is the key's, passed to this
    compile alone (`--gpu-arch`), whatever CUTE_DSL_ARCH says.
    """
    import cutlass
    import cutlass.cute as cute

    with dsl_lock:
        kernel = build_kernel(key)
        args = fake_arguments(key)
        if tvm_ffi:
            stream = cute.runtime.make_fake_stream(use_tvm_ffi_env_stream=True)
            options = (options + " --enable-tvm-ffi").strip()
        else:
            stream = cute.runtime.make_fake_stream()
        return cute.compile(kernel, *args, cutlass.Int32(132), stream, options=arch_options(key.arch, options))


def get_compiled(key: KernelKey):
    """Compiled kernel for `key`, from the in-process cache when present."""
    fn = _cache.get(key)
    if fn is None:
        with dsl_lock:
            fn = _cache.get(key)
            if fn is None:
                fn = compile_kernel(key, tvm_ffi=use_tvm_ffi())
                _cache[key] = fn
    return fn


def cache_size() -> int:
    return len(_cache)
