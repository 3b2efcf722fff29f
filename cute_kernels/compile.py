"""Compiling GEMM kernels: fake-tensor signatures, the in-process cache, artifacts.

Kernels are compiled once per (arch, config, epilogue, grouping, dtypes, operand
majorness) with M, N, K, E and leading dimensions symbolic, so a new shape reuses the
compiled kernel.  The operand dtype names the precision: bf16/fp16, or an FP8 format
(`float8_e4m3fn` / `float8_e5m2`, A and B each their own), which means the block-scaled
recipe (1x128 scales of A, 128x128 of B, `GemmArgs.sa` / `sb`) in the same kernel family.  Grouping: `grouped` (per-expert row ranges of A and D, one B per
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

from .archs import ARCHS, arch_config as arch_config_module, get_arch, kernel_class
from .config import ConfigError, GemmConfig, block_scaled_errors, epilogue_misfit, resolved_ab_stages, validate
from .epilogue import EpilogueSpec
from .gemm_base.launch_args import GemmArgs

ARCH_TO_DSL = {name: a.dsl_target for name, a in ARCHS.items()}
# FP8 operand dtypes (torch names) -> the recipe's format names
FP8_DTYPES = {"float8_e4m3fn": "e4m3", "float8_e5m2": "e5m2"}


@dataclass(frozen=True)
class KernelKey:
    arch: str
    cfg: GemmConfig
    epi: EpilogueSpec
    grouped: bool
    dtype: str  # "bfloat16" | "float16"
    a_major: str  # "k" | "m"
    b_major: str  # "k" | "n"
    out_dtype: str = ""  # "" (the operands' dtype; bfloat16 for FP8 operands) | "float32" | "bfloat16"
    grouped_k: bool = False
    b_dtype: str = ""  # "" (A's) | B's own FP8 format (an e4m3 x e5m2 product)
    # A's rows gathered by index (GemmArgs.a_rows): grouped along M, K-major bf16/fp16 A only
    gather_a: bool = False
    # block-scaled: B's scales by 128x128 blocks ("", a weight) or by 1x128 runs of each row along K
    # ("row": an activation's or gradient's transpose, the weight gradient's B; DeepGEMM's 1D1D;
    # "rows_staged": the same scales through the overlapped mainloop, B's column scales staged in
    # shared memory: sm90/mainloop_fp8.run_rows_staged)
    b_scale: str = ""
    # block-scaled with B's 128x128 blocks on cooperative 128-row tiles: the producer stages each K
    # tile's scales in shared memory with its operands and the consumers read them there instead of
    # loading them from global memory in the K loop (sm90/scale_stage.py; opt-in:
    # CUTE_KERNELS_FP8_SMEM_SCALES=1 in the FP8 launch path, fp8/ops.py)
    scales_smem: bool = False
    # the kernel takes the torch tensors of A, B, the outputs and the epilogue input as stored (2-D, or
    # (E, rows, cols) per expert) and makes their (rows, cols, L) views itself
    # (gemm_base/flat_args.py; bf16/fp16 on the arches with Arch.flat_args; opt-in:
    # CUTE_KERNELS_FLAT_ARGS=1, read by gemm_ops when a launch plan is made)
    flat_args: bool = False

    @property
    def block_scaled(self) -> bool:
        """FP8 operands with the block-scaled recipe (cute_kernels.fp8.recipe)."""
        return self.dtype in FP8_DTYPES

    @property
    def operand_formats(self) -> tuple[str, str] | None:
        """The FP8 formats of A and B ("e4m3" | "e5m2"), or None for bf16/fp16 operands."""
        if not self.block_scaled:
            return None
        return FP8_DTYPES[self.dtype], FP8_DTYPES[self.b_dtype or self.dtype]

    @property
    def d_dtype(self) -> str:
        return self.out_dtype or ("bfloat16" if self.block_scaled else self.dtype)

    @property
    def out_bytes(self) -> int:
        return 4 if self.d_dtype == "float32" else 2


@functools.lru_cache(maxsize=256)
def desc_workspace_words(key: "KernelKey", max_clusters: int) -> int:
    """Int64 words of the grouped_k TMA-descriptor workspace for a launch of at most
    `max_clusters` clusters: per CTA, A and B descriptors (128 B each) in every slot."""
    from .gemm_base.descriptors import workspace_words

    return workspace_words(max_clusters * key.cfg.cluster_size, kernel_ab_stages(key))


def kernel_ab_stages(key: "KernelKey") -> int:
    """The operand stages the kernel of `key` is built with (block-scaled FP8: one-byte stages)."""
    if key.block_scaled:
        return arch_config_module(key.arch).block_scaled_ab_stages(key.cfg, key.epi, out_bytes=key.out_bytes,
                                                                   b_scale=key.b_scale, scales_smem=key.scales_smem)
    return resolved_ab_stages(key.cfg, num_outputs=key.epi.num_outputs, arch=key.arch, out_bytes=key.out_bytes)


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

    if key.block_scaled:
        return _fake_block_scaled_arguments(key)
    dt = _cutlass_dtype(key.dtype)
    dd = _cutlass_dtype(key.d_dtype)
    # One SymInt per quantity, reused wherever it appears: the launcher then checks
    # that every tensor agrees on M, N and K.
    m, n, k = cute.sym_int32(symbol="M"), cute.sym_int32(symbol="N"), cute.sym_int32(symbol="K")
    lda, ldb, ldd = (cute.sym_int64(divisibility=8, symbol=s) for s in ("lda", "ldb", "ldd"))
    batch_a, batch_b = cute.sym_int64(divisibility=8), cute.sym_int64(divisibility=8)
    a_stride = (lda, 1, batch_a) if key.a_major == "k" else (1, lda, batch_a)
    # gathered A: its own row count T (the un-permuted tokens), the problem's M rows index into it
    a_rows_total = cute.sym_int32(symbol="T") if key.gather_a else m
    if key.flat_args:  # 2-D, row-major as stored (gemm_base/flat_args.py)
        a = make_fake_tensor(dt, (a_rows_total, k) if key.a_major == "k" else (k, a_rows_total), (lda, 1),
                             assumed_align=16)
    else:
        a = make_fake_tensor(dt, (a_rows_total, k, 1), a_stride, assumed_align=16)
    lb = cute.sym_int32(symbol="L") if key.grouped else 1
    b_stride = (ldb, 1, batch_b) if key.b_major == "k" else (1, ldb, batch_b)
    if key.flat_args:  # (L, rows, cols) when grouped along M
        rows_cols = (n, k) if key.b_major == "k" else (k, n)
        b = make_fake_tensor(dt, (lb, *rows_cols) if key.grouped else rows_cols,
                             (batch_b, ldb, 1) if key.grouped else (ldb, 1), assumed_align=16)
    else:
        b = make_fake_tensor(dt, (n, k, lb), b_stride, assumed_align=16)
    ld_ = cute.sym_int32(symbol="E") if key.grouped_k else 1  # one output per expert

    def out_like(dtype):
        if key.flat_args:  # (E, M, N) when grouped along K
            if key.grouped_k:
                return make_fake_tensor(dtype, (ld_, m, n), (cute.sym_int64(divisibility=8), ldd, 1), assumed_align=16)
            return make_fake_tensor(dtype, (m, n), (ldd, 1), assumed_align=16)
        return make_fake_tensor(dtype, (m, n, ld_), (ldd, 1, cute.sym_int64(divisibility=8)), assumed_align=16)

    d0 = out_like(dd)
    d1 = out_like(dd) if key.epi.num_outputs == 2 else None
    # accumulate: D's previous value; dsrelu: preact (operand dtype)
    scale, aux, rowsum = _fake_epilogue_inputs(key, m, n, ld_, dd if key.epi.accumulate else dt, flat=key.flat_args)
    cu_rows, cu_tiles = _fake_grouping(key)
    desc_ws = None
    if key.grouped_k:  # per-CTA TMA descriptors (desc_workspace_words)
        desc_ws = make_fake_tensor(cutlass.Int64, (cute.sym_int32(symbol="W"),), (1,), assumed_align=128)
    a_rows = make_fake_tensor(cutlass.Int32, (m,), (1,), assumed_align=4) if key.gather_a else None
    return GemmArgs(a, b, d0, d1, scale, aux, rowsum, cu_rows, cu_tiles, desc_ws, a_rows=a_rows)


def _fake_epilogue_inputs(key: KernelKey, m, n, layers, aux_dtype, flat: bool = False):
    """(scale, aux, rowsum) stand-ins of what the epilogue declares it reads (None where it does not):
    the (M,) row scale, the (M, N, layers) epilogue input in `aux_dtype` (`flat`: as stored, (M, N) or
    (layers, M, N)), the (M, N tiles) row-sum partials (a column per N tile)."""
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_fake_tensor

    epi = key.epi
    scale = make_fake_tensor(cutlass.Float32, (m,), (1,), assumed_align=4) if epi.row_scale else None
    aux = rowsum = None
    if epi.aux_input and flat:  # (E, M, N) when grouped along K
        ld = cute.sym_int64(divisibility=8)
        aux = (make_fake_tensor(aux_dtype, (layers, m, n), (cute.sym_int64(divisibility=8), ld, 1), assumed_align=16)
               if key.grouped_k else make_fake_tensor(aux_dtype, (m, n), (ld, 1), assumed_align=16))
    elif epi.aux_input:
        aux = make_fake_tensor(aux_dtype, (m, n, layers),
                               (cute.sym_int64(divisibility=8), 1, cute.sym_int64(divisibility=8)), assumed_align=16)
    if epi.row_sum:
        rowsum = make_fake_tensor(cutlass.Float32, (m, cute.sym_int32(symbol="NT")), (1, cute.sym_int64()),
                                  assumed_align=4)
    return scale, aux, rowsum


def _fake_grouping(key: KernelKey):
    """(cu_rows, cu_tiles) stand-ins: (E+1,) int32 row offsets when grouped along M or K, tile offsets
    when grouped along M."""
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_fake_tensor

    cu_rows = cu_tiles = None
    if key.grouped or key.grouped_k:
        e1 = cute.sym_int32(symbol="E1")
        cu_rows = make_fake_tensor(cutlass.Int32, (e1,), (1,), assumed_align=4)
        if key.grouped:
            cu_tiles = make_fake_tensor(cutlass.Int32, (e1,), (1,), assumed_align=4)
    return cu_rows, cu_tiles


def _fake_block_scaled_arguments(key: KernelKey) -> GemmArgs:
    """Stand-ins for a block-scaled FP8 launch: A (M, K, 1) and B (N, K, L) K-major and declared
    uint8 (FP8 tensors travel as bytes through DLPack / TVM-FFI; the kernel reads them in the
    key's formats), the scales in any strides, the plain outputs in `d_dtype`, the quantized
    output uint8 with its (M, NB) scales."""
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_fake_tensor

    m, n, k = cute.sym_int32(symbol="M"), cute.sym_int32(symbol="N"), cute.sym_int32(symbol="K")
    kb, nb = cute.sym_int32(symbol="KB"), cute.sym_int32(symbol="NB")
    lb = cute.sym_int32(symbol="L") if key.grouped else 1
    a = make_fake_tensor(cutlass.Uint8, (m, k, 1), (cute.sym_int64(divisibility=16), 1, cute.sym_int64()),
                         assumed_align=16)
    b = make_fake_tensor(cutlass.Uint8, (n, k, lb), (cute.sym_int64(divisibility=16), 1, cute.sym_int64()),
                         assumed_align=16)
    sa = make_fake_tensor(cutlass.Float32, (m, kb), (cute.sym_int64(), cute.sym_int64()), assumed_align=4)
    sb_rows = n if key.b_scale else nb  # B's scales per row ("row", "rows_staged"), or per 128-row block
    sb = make_fake_tensor(cutlass.Float32, (sb_rows, kb, lb), (cute.sym_int64(), cute.sym_int64(), cute.sym_int64()),
                          assumed_align=4)
    dd = _cutlass_dtype(key.d_dtype)
    ld_ = cute.sym_int32(symbol="E") if key.grouped_k else 1  # grouped along K: one output per expert
    outs = []
    for name in key.epi.outputs:
        q = name == key.epi.quantized
        outs.append(make_fake_tensor(cutlass.Uint8 if q else dd, (m, n, ld_),
                                     (cute.sym_int64(divisibility=16 if q else 8), 1,
                                      cute.sym_int64(divisibility=16 if q else 8) if key.grouped_k else cute.sym_int64()),
                                     assumed_align=16))
    scale, aux, rowsum = _fake_epilogue_inputs(key, m, n, ld_, dd)  # dact: the saved preact, plain outputs' dtype
    qs = None
    if key.epi.quantized:
        qs = make_fake_tensor(cutlass.Float32, (m, nb), (cute.sym_int64(), cute.sym_int64()), assumed_align=4)
    cu_rows, cu_tiles = _fake_grouping(key)
    desc_ws = None
    if key.grouped_k:  # per-CTA TMA descriptors (desc_workspace_words)
        desc_ws = make_fake_tensor(cutlass.Int64, (cute.sym_int32(symbol="W"),), (1,), assumed_align=128)
    return GemmArgs(a, b, outs[0], outs[1] if len(outs) == 2 else None, scale=scale, aux=aux, rowsum=rowsum,
                    cu_rows=cu_rows, cu_tiles=cu_tiles, desc_ws=desc_ws, sa=sa, sb=sb, qs=qs)


def build_kernel(key: KernelKey):
    """The kernel object for `key` (config validated first)."""
    if key.grouped and key.grouped_k:
        raise ValueError("a kernel is grouped along M or along K, not both")
    if key.grouped_k and not key.block_scaled and (key.a_major, key.b_major) != ("m", "n"):
        # (block-scaled FP8: K-major operands, the tokens of the padded column-wise copies; block_scaled_errors)
        raise ValueError("the K-grouped GEMM takes tokens (K) as the strided dimension: A must be M-major and B N-major")
    if key.gather_a:
        _check_gather(key)
    if key.flat_args:
        _check_flat_args(key)
    if key.block_scaled:
        return _build_block_scaled_kernel(key)
    if key.epi.quantized:
        raise ConfigError("the quantizing output codec runs in the block-scaled FP8 kernels only (so far)")
    misfit = epilogue_misfit(key.cfg, key.epi, arch=key.arch, out_bytes=key.out_bytes, grouped_k=key.grouped_k)
    if misfit:
        raise ConfigError(misfit)
    validate(key.cfg, arch=key.arch, num_outputs=key.epi.num_outputs, grouped=key.grouped, grouped_k=key.grouped_k,
             out_bytes=key.out_bytes)
    stages = resolved_ab_stages(key.cfg, num_outputs=key.epi.num_outputs, arch=key.arch, out_bytes=key.out_bytes)
    extra = {}
    if key.gather_a:
        extra["gather_a"] = True
    if key.flat_args:
        extra["flat_args"] = (key.a_major, key.b_major)
    if extra:
        return kernel_class(key.arch)(key.cfg, key.epi, grouped=key.grouped, grouped_k=key.grouped_k, ab_stages=stages,
                                      **extra)
    return kernel_class(key.arch)(key.cfg, key.epi, grouped=key.grouped, grouped_k=key.grouped_k, ab_stages=stages)


def _check_gather(key: KernelKey):
    """A gathered A (rows by index, loaded by cp.async) exists for grouped-along-M problems with a
    K-major bf16/fp16 A, on the arches that have the gathering producer."""
    if not get_arch(key.arch).gathers_a:
        raise ConfigError(f"{key.arch} has no gathered-A GEMM (gather_a runs on "
                          f"{', '.join(n for n, a in ARCHS.items() if a.gathers_a) or 'no arch'})")
    if not key.grouped or key.grouped_k:
        raise ConfigError("gather_a needs a problem grouped along M (the dispatch gather of routed experts)")
    if key.a_major != "k":
        raise ConfigError("gather_a needs a K-major A (whole rows are gathered)")
    if key.block_scaled:
        raise ConfigError("gather_a takes bf16/fp16 operands (no block-scaled FP8 gather yet)")


def _check_flat_args(key: KernelKey):
    """Flat tensor arguments exist for the bf16/fp16 kernels of the arches that build the views
    themselves (archs.Arch.flat_args)."""
    if not get_arch(key.arch).flat_args:
        raise ConfigError(f"{key.arch} kernels take 3-D tensors only (flat_args runs on "
                          f"{', '.join(n for n, a in ARCHS.items() if a.flat_args) or 'no arch'})")
    if key.block_scaled:
        raise ConfigError("flat_args: bf16/fp16 operands only (the block-scaled FP8 launch keeps its 3-D views)")


def _build_block_scaled_kernel(key: KernelKey):
    """The block-scaled FP8 kernel of `key`: the arch's GEMM class with its FP8 mainloop
    (archs.Arch.block_scaled_fp8 says which arches have one)."""
    errors = block_scaled_errors(key.cfg, key.epi, arch=key.arch, grouped=key.grouped, grouped_k=key.grouped_k,
                                 majors=(key.a_major, key.b_major), out_bytes=key.out_bytes, b_scale=key.b_scale)
    if key.scales_smem and (key.b_scale or key.grouped_k or key.cfg.schedule != "cooperative" or key.cfg.tile_m != 128):
        errors.append("scales_smem: the scales staged in shared memory serve cooperative 128-row tiles with "
                      "128x128 B scale blocks (not grouped along K)")
    if errors:
        raise ConfigError(f"invalid block-scaled FP8 GemmConfig {key.cfg}: " + "; ".join(errors))
    stages = kernel_ab_stages(key)
    if key.scales_smem:
        arch_cfg = arch_config_module(key.arch)
        need = arch_cfg.block_scaled_smem_bytes(key.cfg, key.epi, ab_stages=stages, out_bytes=key.out_bytes,
                                                scales_smem=True)
        if need > arch_cfg.SMEM_CAPACITY:
            raise ConfigError(f"scales_smem: {need} bytes of shared memory needed with {stages} operand stages and "
                              f"their scale slots, {arch_cfg.SMEM_CAPACITY} available")
    return kernel_class(key.arch)(key.cfg, key.epi, grouped=key.grouped, grouped_k=key.grouped_k, ab_stages=stages,
                                  formats=key.operand_formats, b_scale_rows=bool(key.b_scale),
                                  b_scale_staged=key.b_scale == "rows_staged", scales_smem=key.scales_smem)


def arch_options(arch: str, options: str = "") -> str:
    """`options` with the DSL target of `arch` (`--gpu-arch`), unless it names one already."""
    if "--gpu-arch" in options:
        return options
    return (options + f" --gpu-arch {get_arch(arch).dsl_target}").strip()


def launch_stream(options: str, tvm_ffi: bool):
    """(the fake stream a compile takes, its options): with `tvm_ffi` the stream is the one TVM-FFI
    hands the launch (the current torch stream) and the options ask for the TVM-FFI entry."""
    import cutlass.cute as cute

    if tvm_ffi:
        return cute.runtime.make_fake_stream(use_tvm_ffi_env_stream=True), (options + " --enable-tvm-ffi").strip()
    return cute.runtime.make_fake_stream(), options


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


DIRECT_LAUNCH_ENV = "CUTE_KERNELS_DIRECT_LAUNCH"  # "0": plans keep the DSL's own callable (A/B of the host path)


def direct_launcher(fn):
    """The callable a launch plan keeps for the compiled kernel `fn`: the DSL's TVM-FFI function is a
    tvm_ffi.Function whose Python __call__ re-checks, every call, what is fixed once it is compiled
    (its handle is set; it has no pointer-address arguments to convert) and then calls
    tvm_ffi.Function.__call__ with the same arguments.  Where those checks pass here, that base call
    is what the plan keeps (one Python frame, two attribute chains and an argument repack less per
    launch); anything else (the DLPack path, a kwargs wrapper, a test's stand-in) as it is.
    CUTE_KERNELS_DIRECT_LAUNCH=0 (read when a plan first launches) keeps the DSL's callable."""
    if os.environ.get(DIRECT_LAUNCH_ENV, "1") == "0":
        return fn
    try:
        import tvm_ffi
    except ImportError:
        return fn
    base_call = tvm_ffi.Function.__call__
    if not isinstance(fn, tvm_ffi.Function) or type(fn).__call__ is base_call:
        return fn
    execution_args = getattr(fn, "execution_args", None)
    if execution_args is None or getattr(execution_args, "has_pointer_address_arg_specs", True) is not False:
        return fn
    if fn.__chandle__() == 0:  # (its own call raises the DSL's error naming the cause)
        return fn
    return base_call.__get__(fn)


def cache_size() -> int:
    return len(_cache)
