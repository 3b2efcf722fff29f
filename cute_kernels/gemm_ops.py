"""Torch entry points of the GEMM family, dense and grouped: `fc1_srelu`, `fc2`,
`fc2_dgrad_dsrelu` and `weight_grad`.

They check inputs (cute_kernels.checks), pick a config (the `config=` argument, else
the tuned/default lookup), fetch the compiled kernel from the in-process cache and
launch it on the current CUDA stream.  What follows from a call's metadata alone (checks,
kernel key, self-check gate, compiled kernel) is resolved on its first call and kept as a
`cute_kernels.launch_plan.LaunchPlan`: a repeated call checks only what can differ
(pointers, m_splits values, prob, out) and launches.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os

import torch

from . import archs, checks, launch_plan
from .compile import (KernelKey, arch_options, build_kernel, desc_workspace_words, direct_launcher, dsl_lock,
                      get_compiled, use_tvm_ffi)
from .config import (ConfigError, GemmConfig, epilogue_misfit, narrowed_for_epilogue, validate, validation_errors,
                     wgrad_default_config)
from .config_lookup import lookup_config, on_clear, tuned_root
from .epilogue import EpilogueSpec
from .gemm_base.launch_args import GemmArgs
from .launch_plan import LaunchPlan, tensor_meta
from .host_args import (as_mkl as _as_mkl, as_mkl_t as _as_mkl_t, as_nkl as _as_nkl, as_nkl_t as _as_nkl_t,
                        flat_operand as _flat_operand, splits_metadata as _splits_metadata)
from .activations import resolve_activation
from .registry import kernel_key

log = logging.getLogger("cute_kernels")

_compiled: dict = {}


def device_arch(device: torch.device) -> str:
    """The arch whose kernels run on `device` (cute_kernels.archs.device_arch); InputError where none does."""
    arch = archs.device_arch(device)
    if arch is None:
        index = archs.cuda_index(device)
        if index is None:
            raise checks.InputError(f"the CuTe kernels run on CUDA devices, got {device}")
        major, minor = archs.device_capability(index)
        raise checks.InputError(f"no CuTe kernel for compute capability {major}.{minor} on cuda:{index} (kernels: "
                                f"{archs.describe_arches()}); use backend='torch'")
    return arch


def _checked_config(config: GemmConfig, arch: str, num_outputs: int, grouped: bool, grouped_k: bool = False,
                    out_bytes: int = 2) -> GemmConfig:
    """`config` validated for this launch (called from the cached key builders below)."""
    try:
        return validate(config, arch=arch, num_outputs=num_outputs, grouped=grouped, grouped_k=grouped_k,
                        out_bytes=out_bytes)
    except ConfigError as e:
        raise checks.InputError(f"config: {e}") from None


@functools.lru_cache(maxsize=None)
def _max_clusters_arg(device_index: int, cluster_size: int):
    """(count, the same as the kernel's Int32 argument), made once per device and cluster size."""
    import cutlass

    n = _max_clusters(device_index, cluster_size)
    return n, cutlass.Int32(n)


@functools.lru_cache(maxsize=None)
def _max_clusters(device_index: int, cluster_size: int) -> int:
    import cutlass.utils as cu

    with dsl_lock:  # the occupancy query compiles a probe kernel (see compile.dsl_lock)
        try:
            return max(1, cu.HardwareInfo(device_id=device_index).get_max_active_clusters(cluster_size))
        except TypeError:  # older signature without device_id
            return max(1, cu.HardwareInfo().get_max_active_clusters(cluster_size))


def _to_cute(t: torch.Tensor, leading_dim: int):
    from cutlass.cute.runtime import from_dlpack

    return from_dlpack(t, assumed_align=16).mark_layout_dynamic(leading_dim=leading_dim)


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}[dtype]


@functools.lru_cache(maxsize=4096)
def _kernel_key(kernel_name: str, arch: str, dtype, m: int, n: int, k: int, num_experts: int, epi: EpilogueSpec,
                grouped: bool, majors: tuple, config: GemmConfig | None, tuned_root: str | None,
                gather_a: bool = False) -> KernelKey:
    """The compiled-kernel key of one M-grouped or dense launch: the config (given, else
    looked up), narrowed for the row-sum epilogue and validated.  Cached: the hot path
    (config_lookup.clear_cache clears it too; tuned_root is the tuned-configs directory
    the lookup reads, part of the key).  gather_a: A's rows by index (the same config as
    the plain kernel's)."""
    if gather_a and not archs.get_arch(arch).gathers_a:
        raise checks.InputError(f"a_rows: the {arch} kernels cannot gather A's rows yet (use the gathered copy x[a_rows])")
    arch_launch_config = archs.launch_config_function(arch)
    if arch_launch_config is not None:  # an arch choosing its own configs (e.g. sm100: no tuned entries)
        config = arch_launch_config(m=m, n=n, k=k, num_experts=num_experts if grouped else 0, epi=epi, grouped=grouped,
                               config=config)
        return KernelKey(arch, config, epi, grouped, _dtype_name(dtype), *majors)
    explicit_config = config is not None
    if config is None:
        config = lookup_config(kernel_name, arch=arch, dtype=dtype, m=m, n=n, k=k,
                               num_experts=num_experts, num_outputs=epi.num_outputs, grouped=grouped)
    misfit = epilogue_misfit(config, epi, arch=arch)
    if misfit:
        if explicit_config:
            raise checks.InputError(f"config: {misfit}")
        config = narrowed_for_epilogue(config, epi, arch=arch)
    _checked_config(config, arch, epi.num_outputs, grouped)
    return kernel_key(kernel_name, arch, config, _dtype_name(dtype), num_experts if grouped else 0, epi=epi,
                      majors=majors, gather_a=gather_a)


on_clear(_kernel_key.cache_clear)


def _checked_operands(plan: LaunchPlan | None, a_name: str, a, w_name: str, w, grouped: bool) -> tuple:
    """The operands' (A, B) majorness: every operand check without a plan; with one (its
    signature fixed their metadata when they passed) only the data pointers' alignment."""
    if plan is None:
        return checks.check_gemm_operands(a_name, a, w_name, w, grouped=grouped)
    if (a.data_ptr() % 16 and a.numel()) or (w.data_ptr() % 16 and w.numel()):  # (inline: the usual call passes)
        checks.check_pointer(a_name, a)  # the error naming the misaligned one
        checks.check_pointer(w_name, w)
    return plan.majors


def _new_plan(signature, kernel_name: str, a, w, epi: EpilogueSpec, grouped: bool, majors: tuple,
              config, a_rows=None) -> LaunchPlan:
    """The plan of a checked M-grouped or dense call (its first call with this signature);
    `a_rows`: the gathered rows of A (the problem has their count of rows)."""
    m, k = a.shape
    if a_rows is not None:
        m = a_rows.numel()
    n = w.size(-2)
    arch = device_arch(a.device)
    checks.check_config(config)
    key = _kernel_key(kernel_name, arch, a.dtype, m, n, k, w.size(0) if grouped else 1, epi, grouped, majors, config,
                      tuned_root(), a_rows is not None)
    return launch_plan.put(signature, LaunchPlan(_planned_key(key), majors))


FLAT_ARGS_ENV = "CUTE_KERNELS_FLAT_ARGS"  # "1": plans made from then on take the flat-argument kernels


def _planned_key(key: KernelKey) -> KernelKey:
    """The key a new plan launches: `key`, or with CUTE_KERNELS_FLAT_ARGS=1 (read here, as each plan
    is made; default off) its flat-argument kernel (KernelKey.flat_args: the launch hands the 2-D
    tensors as they are) where its arch has one (archs.Arch.flat_args) and its operands are bf16/fp16."""
    if os.environ.get(FLAT_ARGS_ENV, "0") == "1" and archs.get_arch(key.arch).flat_args and not key.block_scaled:
        return dataclasses.replace(key, flat_args=True)
    return key


def _launch(plan: LaunchPlan, a, w, outs, *, m_splits, prob, aux=None, a_rows=None, transpose_w: bool = False):
    """Launch one M-grouped or dense GEMM of B = w ((N, K) / (E, N, K); `transpose_w`: w is B's
    transpose, (K, N) / (E, K, N)); returns the row sums (dsrelu row_sum) or None.
    a_rows: (M,) int32, row r of the problem is a[a_rows[r]] (a gathering kernel's plan).
    The kernel takes (M, K, 1) / (N, K, E) views (host_args), or with KernelKey.flat_args the
    tensors as stored (host_args.flat_operand)."""
    key = plan.key
    config = key.cfg
    rowsum = None
    if key.epi.row_sum:  # one fp32 partial per (row, N tile), summed here: no atomics, reproducible
        rows = a.size(0) if a_rows is None else a_rows.numel()
        partials = torch.empty((-(-w.size(-1 if transpose_w else -2) // config.tile_n), rows), dtype=torch.float32,
                               device=a.device)
        rowsum = partials.t()
    cu_rows = cu_tiles = None
    if m_splits is not None:
        cu_rows, cu_tiles = _splits_metadata(m_splits, config.tile_m, a.device, config.cluster_m)
    if key.flat_args:
        args = GemmArgs(_flat_operand(a, key.a_major, False), _flat_operand(w, key.b_major, transpose_w), outs[0],
                        outs[1] if len(outs) > 1 else None, prob, aux, rowsum, cu_rows, cu_tiles, a_rows=a_rows)
    else:
        d1 = _as_mkl(outs[1]) if len(outs) > 1 else None
        aux3 = _as_mkl(aux) if aux is not None else None
        args = GemmArgs(_as_mkl(a), _as_nkl_t(w) if transpose_w else _as_nkl(w), _as_mkl(outs[0]), d1, prob, aux3,
                        rowsum, cu_rows, cu_tiles, a_rows=a_rows)
    _launch_planned(plan, args)
    return rowsum.sum(1) if rowsum is not None else None


_desc_ws_cache: dict = {}
_selfchecked: set = set()  # kernel keys this process has passed through the self-check gate


def _desc_workspace(words: int, device: torch.device) -> torch.Tensor:
    """Scratch for the K-grouped kernel's per-CTA TMA descriptors (each launch writes its
    own before reading them).  One buffer per device and stream, grown as needed: the
    launches of one stream run in order, so they can share it.  Inside a CUDA graph
    capture a fresh one (from the graph's pool), so no replay shares it."""
    if torch.cuda.is_current_stream_capturing():
        return torch.empty(words, dtype=torch.int64, device=device)
    key = _current_stream_key(device)
    buf = _desc_ws_cache.get(key)
    if buf is None or buf.numel() < words:
        buf = torch.empty(words, dtype=torch.int64, device=device)
        _desc_ws_cache[key] = buf
    return buf


def _current_stream_key(device: torch.device) -> tuple:
    """The current stream of CUDA `device` (a tensor's: its index is set) as a hashable key: the
    (stream id, device index, device type) that torch.cuda.current_stream reads, without the
    Stream object it builds from them (a few Python calls a launch)."""
    return torch._C._cuda_getCurrentStream(device.index)


def _run(key: KernelKey, args: GemmArgs):
    """Launch `key` without a kept plan (the self-check's own launch, tests): the gate, the
    compiled-kernel lookup and the cluster count are resolved on this call."""
    _launch_planned(LaunchPlan(key), args)


_DESC_WS = GemmArgs._fields.index("desc_ws")


def _launch_planned(plan: LaunchPlan, args: GemmArgs):
    fn = plan.fn
    if fn is None:
        fn = _first_launch(plan, args.a.device)
    if plan.desc_words:  # grouped_k: scratch for the per-CTA TMA descriptors, written by the kernel
        # (spliced into the arguments: GemmArgs._replace costs a microsecond more per launch)
        fn(*args[:_DESC_WS], _desc_workspace(plan.desc_words, args.a.device), *args[_DESC_WS + 1:],
           plan.max_clusters)
    else:
        fn(*args, plan.max_clusters)


def _first_launch(plan: LaunchPlan, device):
    """What a plan resolves before its first launch: the self-check gate (once per key in the
    process), the cluster count of its device and the compiled kernel (compiled on first use)."""
    key = plan.key
    if key not in _selfchecked:  # first launch of a variant without hardware evidence: check it (selfcheck.py)
        from .selfcheck import before_first_launch

        before_first_launch(key, _selfchecked, launch=_run)
    plan.n_clusters, plan.max_clusters = _max_clusters_arg(device.index or 0, key.cfg.cluster_size)
    if key.grouped_k:
        plan.desc_words = desc_workspace_words(key, plan.n_clusters)
    if use_tvm_ffi():
        fn = direct_launcher(get_compiled(key))
    else:
        def fn(*args):
            _launch_dlpack(key, GemmArgs(*args[:-1]), args[-1])
    plan.fn = fn
    return fn


def _launch_dlpack(key, args: GemmArgs, max_clusters):
    """Fallback launch through the DSL's DLPack conversion (no apache-tvm-ffi)."""
    import cuda.bindings.driver as cuda
    import cutlass.cute as cute
    from cutlass.cute.runtime import from_dlpack

    def vec(t):
        return None if t is None else from_dlpack(t, assumed_align=4).mark_layout_dynamic()

    def mat(t):  # leading (contiguous) dimension: 1 for K-major / row-major, 0 for M- or N-major
        return None if t is None else _to_cute(t, 1 if t.stride(1) == 1 else 0)

    vectors = ("scale", "rowsum", "cu_rows", "cu_tiles", "a_rows")
    cute_args = args.map(lambda name, t: vec(t) if name in vectors
                         else from_dlpack(t, assumed_align=128).mark_layout_dynamic() if name == "desc_ws" else mat(t))
    stream = cuda.CUstream(torch.cuda.current_stream(args.a.device).cuda_stream)
    fn = _compiled.get(key)
    if fn is None:
        log.debug("compiling %s", key)
        with dsl_lock:
            fn = cute.compile(build_kernel(key), *cute_args, max_clusters, stream, options=arch_options(key.arch))
        _compiled[key] = fn
    fn(*cute_args, max_clusters, stream)


def compiled_count() -> int:
    """Kernels compiled in this process (both launch paths)."""
    from .compile import cache_size

    return cache_size() + len(_compiled)


def _activation(activation):
    """The Activation for an `activation=` argument (InputError naming it when bad)."""
    try:
        return resolve_activation(activation)
    except (TypeError, ValueError) as e:
        raise checks.InputError(f"activation: {e}") from None


def _check_config_type(config):
    if config is not None and not isinstance(config, archs.config_classes()):
        own = [f"{c.__module__}.{c.__qualname__}" for c in archs.config_classes() if c is not GemmConfig]
        raise checks.InputError(f"config must be a GemmConfig, got {type(config).__name__} "
                                f"(or an arch's own config type: {', '.join(own)})")


def _output(name: str, out, m: int, n: int, like: torch.Tensor) -> torch.Tensor:
    if out is None:
        return torch.empty((m, n), dtype=like.dtype, device=like.device)
    checks.check_matrix(name, out, ndim=2, dtype=like.dtype, device=like.device)
    if tuple(out.shape) != (m, n):
        raise checks.InputError(f"{name} must have shape {(m, n)}, got {tuple(out.shape)}")
    return out


def fc1_srelu(x, w1, *, m_splits=None, prob=None, store_preact: bool = True, config: GemmConfig | None = None,
              out: tuple | None = None, activation=None, a_rows=None):
    """FC1 with squared ReLU fused: preact = x @ w1^T, postact = prob * relu(preact)^2.

    activation: the activation f in postact = prob * f(preact) (default relu^2; an
    `cute_kernels.activations.Activation` or a name such as "tanh_srelu:4.0").

    x: (M, K) bf16/fp16 CUDA; w1: (N, K), or (E, N, K) with `m_splits` (per-expert row
    counts: list of ints or int tensor on the GPU; tokens sorted by expert).
    prob: optional (M,) per-row scale (router probability).
    out: optional preallocated (preact or None, postact) to write into.
    a_rows: the dispatch gather fused into the kernel's A loads (grouped only): an (M,) int32 or
    int64 tensor on x's device, row r of the grouped problem is x[a_rows[r]], so x (T, K) holds
    the tokens in their own order and no gathered (M, K) copy is made; m_splits, prob and the
    outputs then count M = len(a_rows) rows.  x must be K-major.  Indices are checked to lie in
    [0, T) (a device-side assert on the GPU, no host sync).
    Returns (preact or None, postact), both (M, N) in x's dtype.
    """
    grouped = m_splits is not None
    gather = a_rows is not None
    signature = ("fc1_srelu", tensor_meta(x), tensor_meta(w1), grouped, prob is not None, store_preact, activation,
                 config, gather)
    plan = launch_plan.get(signature)
    majors = _checked_operands(plan, "x", x, "w1", w1, grouped)
    m = x.size(0)
    if gather:
        a_rows = _checked_rows(a_rows, x, majors, grouped, m_splits)
        m = a_rows.numel()
    if grouped:
        checks.check_m_splits(m_splits, num_experts=w1.size(0), m_total=m, device=x.device)
    if prob is not None:
        checks.check_prob(prob, m_total=m, device=x.device)
        prob = prob.reshape(-1).to(torch.float32).contiguous()
    if config is not None:  # (the usual call: looked-up configs, nothing to check)
        _check_config_type(config)
    n = w1.size(-2)
    out_pre, out_post = out if out is not None else (None, None)
    postact = _output("out[1] (postact)", out_post, m, n, x)
    preact = _output("out[0] (preact)", out_pre, m, n, x) if store_preact else None
    if plan is None:
        checks.check_cuda("x", x)
        if m == 0 or n == 0:
            return preact, postact
        epi = EpilogueSpec("act", store_preact=store_preact, row_scale=prob is not None,
                           activation=_activation(activation))
        plan = _new_plan(signature, "fc1_srelu", x, w1, epi, grouped, majors, config, a_rows)
    elif config is not None:
        checks.check_config(config)
    outs = [preact, postact] if store_preact else [postact]
    _launch(plan, x, w1, outs, m_splits=m_splits, prob=prob, a_rows=a_rows)
    return preact, postact


def _checked_rows(a_rows, x, majors: tuple, grouped: bool, m_splits) -> torch.Tensor:
    """fc1_srelu's gather indices checked (InputError naming a_rows) and as the kernel takes them
    (int32, contiguous)."""
    if not grouped:
        raise checks.InputError("a_rows (the fused dispatch gather) needs m_splits: only the grouped kernel gathers")
    if majors[0] != "k":
        raise checks.InputError(f"x must be row-major (contiguous along K) for a_rows to gather its rows, got strides "
                                f"{x.stride()}")
    checks.check_row_index("a_rows", a_rows, num_rows=x.size(0), source="x", device=x.device)
    if isinstance(m_splits, (list, tuple)) and all(type(s) is int for s in m_splits) and sum(m_splits) != a_rows.numel():
        raise checks.InputError(f"a_rows has {a_rows.numel()} entries but m_splits sum to {sum(m_splits)}: one row "
                                f"index per row of the grouped problem")
    return a_rows.to(torch.int32).contiguous()


def fc2(h, w2, *, m_splits=None, config: GemmConfig | None = None, out: torch.Tensor | None = None,
        transpose_w: bool = False):
    """FC2: y = h @ w2^T.  h: (M, K); w2: (N, K) or (E, N, K) with `m_splits`.

    Operands may be transposed views (h contiguous along M, w2 along N): the kernel
    takes either majorness, so no copy is made.  The output is row-major.
    transpose_w: w2 is given as its transpose, (K, N) or (E, K, N), and y = h @ w2 (FC1's data
    gradient of w1 as it is: the same launch as fc2(h, w2.transpose(-2, -1)), its kernel view made
    in one op, without the transposed view first)."""
    grouped = m_splits is not None
    signature = ("fc2", tensor_meta(h), tensor_meta(w2), grouped, config, transpose_w)
    plan = launch_plan.get(signature)
    if transpose_w and plan is None and (not isinstance(w2, torch.Tensor) or w2.dim() not in (2, 3)):
        raise checks.InputError(f"w2 must be a 2-D or 3-D torch.Tensor, got {getattr(w2, 'shape', type(w2).__name__)}")
    # B (N, K) is w2 or, transpose_w, its transposed view (made for the checks of a new signature;
    # a plan's call checks w2's pointer, which is B's)
    b = w2.transpose(-2, -1) if transpose_w and plan is None else w2
    majors = _checked_operands(plan, "h", h, "w2 (as its transpose)" if transpose_w else "w2", b, grouped)
    m = h.size(0)
    if grouped:
        checks.check_m_splits(m_splits, num_experts=w2.size(0), m_total=m, device=h.device)
    if config is not None:  # (the usual call: looked-up configs, nothing to check)
        _check_config_type(config)
    n = w2.size(-1 if transpose_w else -2)
    y = _output("out", out, m, n, h)
    if plan is None:
        checks.check_cuda("h", h)
        if m == 0 or n == 0:
            return y
        plan = _new_plan(signature, "fc2", h, b, EpilogueSpec("identity"), grouped, majors, config)
    elif config is not None:
        checks.check_config(config)
    _launch(plan, h, w2, [y], m_splits=m_splits, prob=None, transpose_w=transpose_w)
    return y


def fc2_dgrad_dsrelu(dy, w2, preact, *, m_splits=None, prob=None, store_postact: bool = False,
                     prob_grad: bool | None = None, config: GemmConfig | None = None, activation=None,
                     out: torch.Tensor | None = None):
    """FC2 data gradient with the squared-ReLU derivative fused into its epilogue.

    With d = dy @ w2 (the gradient of postact) and p the router probability (1 when
    `prob` is None), one GEMM pass gives
      dpreact = 2 * p * d * relu(preact),
      postact = p * relu(preact)^2 (recomputed for FC2's weight gradient; `store_postact`),
      dprob   = rowsum(d * relu(preact)^2) (fp32, reduced in the kernel; `prob_grad`,
                on by default when `prob` is given).
    dy: (M, H); w2: (H, F) dense or (E, H, F) with `m_splits` (nn.Linear layout of FC2);
    preact: (M, F) as saved by `fc1_srelu`; prob: (M,) or (M, 1).
    activation: the activation f of the forward (default relu^2): then dpreact =
    p * d * f'(preact), postact = p * f(preact), dprob = rowsum(d * f(preact)).
    out: optional (M, F) buffer for dpreact; it may be `preact` itself (dpreact written over
    preact: each tile's epilogue reads its preact elements before it stores their dpreact and no
    two tiles share elements; the sm90 epilogue's loads clamped past N may read an earlier
    sub-tile's already written columns, but only next to a zero accumulator, whose outputs are
    not stored and whose row-sum terms are 0 * f(finite)), which saves an (M, F) allocation when
    preact is not needed afterwards.
    Returns (dpreact, postact or None, dprob (M,) fp32 or None).
    """
    grouped = m_splits is not None
    signature = ("fc2_dgrad_dsrelu", tensor_meta(dy), tensor_meta(w2), tensor_meta(preact), grouped, prob is not None,
                 store_postact, prob_grad, activation, config, out is None, out is not None and tensor_meta(out))
    plan = launch_plan.get(signature)
    if plan is None and (not isinstance(w2, torch.Tensor) or w2.dim() not in (2, 3)):
        raise checks.InputError(f"w2 must be a 2-D or 3-D torch.Tensor, got {getattr(w2, 'shape', type(w2).__name__)}")
    # the GEMM is dy (M, K=H) @ B^T with B = w2^T (N=F, K=H): a transposed (N-major) view, made
    # for the checks of a new signature (a plan's call checks w2's pointer, which is B's)
    b = w2.transpose(-2, -1) if plan is None else w2
    majors = _checked_operands(plan, "dy", dy, "w2 (as its transpose)", b, grouped)
    m, n = dy.size(0), w2.size(-1)
    if grouped:
        checks.check_m_splits(m_splits, num_experts=w2.size(0), m_total=m, device=dy.device)
    if plan is None:
        checks.check_matrix("preact", preact, ndim=2, dtype=dy.dtype, device=dy.device)
        if tuple(preact.shape) != (m, n):
            raise checks.InputError(f"preact must have shape {(m, n)}, got {tuple(preact.shape)}")
    else:
        checks.check_pointer("preact", preact)
    if prob is not None:
        checks.check_prob(prob, m_total=m, device=dy.device)
        prob = prob.reshape(-1).to(torch.float32).contiguous()
    if prob_grad is None:
        prob_grad = prob is not None
    if config is not None:  # (the usual call: looked-up configs, nothing to check)
        _check_config_type(config)
    dpre = _output("out (dpreact)", out, m, n, dy)
    if plan is None:
        checks.check_cuda("dy", dy)
    post = torch.empty((m, n), dtype=dy.dtype, device=dy.device) if store_postact else None
    if m == 0 or n == 0:  # (dprob: a row sum over no columns is 0)
        return dpre, post, (torch.zeros((m,), dtype=torch.float32, device=dy.device) if prob_grad else None)
    outs = [dpre, post] if store_postact else [dpre]
    if plan is None:
        epi = EpilogueSpec("dact", store_postact=store_postact, row_scale=prob is not None, row_sum=prob_grad,
                           activation=_activation(activation))
        plan = _new_plan(signature, "fc2_dgrad_dsrelu", dy, b, epi, grouped, majors, config)
    elif config is not None:
        checks.check_config(config)
    dprob = _launch(plan, dy, w2, outs, m_splits=m_splits, prob=prob, aux=preact, transpose_w=True)
    return dpre, post, dprob


@functools.lru_cache(maxsize=1024)
def _wgrad_key(arch: str, dtype, n_out: int, k_out: int, tokens: int, num_experts: int, grouped: bool, out_dtype,
               accumulate: bool, majors: tuple, config: GemmConfig | None, tuned_root: str | None) -> KernelKey:
    """weight_grad's compiled-kernel key (cached like _kernel_key)."""
    out_bytes = 4 if out_dtype == torch.float32 else 2
    arch_launch_config = archs.launch_config_function(arch)
    if arch_launch_config is not None:
        config = arch_launch_config(m=n_out, n=k_out, k=tokens, num_experts=num_experts if grouped else 0,
                               epi=EpilogueSpec("identity", accumulate=accumulate), grouped_k=grouped,
                               out_bytes=out_bytes, config=config)
        return KernelKey(arch, config, EpilogueSpec("identity", accumulate=accumulate), False, _dtype_name(dtype),
                         *majors, out_dtype="float32" if out_dtype == torch.float32 else "", grouped_k=grouped)
    explicit_config = config is not None
    if config is None:
        # tuned entry (M, N = the gradient's shape, K = tokens), else the default; a tuned
        # config (timed with a bf16 output) that cannot take an fp32 main_grad falls back too
        config = lookup_config("weight_grad", arch=arch, dtype=dtype, m=n_out, n=k_out, k=tokens,
                               num_experts=num_experts, grouped=grouped)
        if validation_errors(config, arch=arch, grouped_k=grouped, out_bytes=out_bytes):
            config = wgrad_default_config(n_out, k_out, tokens, num_experts, arch=arch)
    epi = EpilogueSpec("identity", accumulate=accumulate)
    misfit = epilogue_misfit(config, epi, arch=arch, out_bytes=out_bytes, grouped_k=grouped)
    if misfit:  # a tuned entry timed without main_grad accumulation: narrow its epilogue sub-tiles
        if explicit_config:
            raise checks.InputError(f"config: {misfit}")
        config = narrowed_for_epilogue(config, epi, arch=arch, out_bytes=out_bytes, grouped_k=grouped)
    _checked_config(config, arch, 1, False, grouped, out_bytes)
    return kernel_key("weight_grad", arch, config, _dtype_name(dtype), num_experts if grouped else 0, epi=epi,
                      majors=majors, out_dtype="float32" if out_dtype == torch.float32 else "")


on_clear(_wgrad_key.cache_clear)


def weight_grad(dy, x, *, m_splits=None, out: torch.Tensor | None = None, accumulate: bool = False,
                out_dtype: torch.dtype | None = None, config: GemmConfig | None = None):
    """Weight gradient of a linear layer y = x @ w^T: dw = dy^T @ x, fp32 accumulation.

    dy: (T, N), x: (T, K), tokens along dim 0 (either may be a transposed view of a
    column-major buffer).  Dense: dw (N, K).  Grouped (`m_splits`, tokens sorted by
    expert): dw (E, N, K) with dw[e] = dy_e^T @ x_e over expert e's tokens only, zeros
    for an empty expert.  `out`: write there (e.g. a parameter's fp32 `main_grad`);
    with `accumulate`, dw is added to out's values (out = out + dy^T x) in the same
    pass.  out_dtype: dtype of a new output (default dy's dtype; float32 allowed).
    Returns dw.
    """
    grouped = m_splits is not None
    experts = (m_splits.numel() if isinstance(m_splits, torch.Tensor)
               else len(m_splits) if isinstance(m_splits, (list, tuple)) else None)
    signature = ("weight_grad", tensor_meta(dy), tensor_meta(x), grouped, experts, out is None,
                 out is not None and tensor_meta(out), accumulate, out_dtype, config)
    plan = launch_plan.get(signature)
    if plan is None:
        for name, t in (("dy", dy), ("x", x)):
            if not isinstance(t, torch.Tensor) or t.dim() != 2:
                raise checks.InputError(f"{name} must be a 2-D torch.Tensor (tokens, features), "
                                        f"got {getattr(t, 'shape', type(t).__name__)}")
        if dy.size(0) != x.size(0):
            raise checks.InputError(f"dy has {dy.size(0)} tokens but x has {x.size(0)}")
    if grouped:
        # The K-grouped kernel takes tokens as the strided dimension of both operands
        # (A M-major, B N-major): column-major inputs are copied to row-major.
        dy = dy if dy.stride(-1) == 1 else dy.contiguous()
        x = x if x.stride(-1) == 1 else x.contiguous()
    # GEMM: A = dy^T (M=N_out, K=T), B = x^T (N=K_out, K=T); both contiguous along M / N
    if plan is not None:  # (a plan's problem is not empty; its call checks the pointers, the transposes' own)
        majors = _checked_operands(plan, "dy (as its transpose)", dy, "x (as its transpose)", x, False)
    elif dy.size(0) == 0 or dy.size(1) == 0 or x.size(1) == 0:
        # no tokens: dw = 0 (out unchanged with accumulate); no output rows or columns: an empty
        # dw.  The operand checks of an empty matrix would refuse it, so only what still matters is checked
        if x.dtype != dy.dtype or x.device != dy.device:
            raise checks.InputError(f"x must match dy's dtype and device, got {x.dtype} on {x.device} "
                                    f"and {dy.dtype} on {dy.device}")
        majors = ("m", "n")
    else:
        majors = _checked_operands(None, "dy (as its transpose)", dy.t(), "x (as its transpose)", x.t(), False)
    n_out, k_out, tokens = dy.size(1), x.size(1), dy.size(0)
    num_experts = 1
    if grouped:
        num_experts = len(m_splits) if not isinstance(m_splits, torch.Tensor) else m_splits.numel()
        checks.check_m_splits(m_splits, num_experts=num_experts, m_total=tokens, device=dy.device)
    if config is not None:  # (the usual call: looked-up configs, nothing to check)
        _check_config_type(config)
    shape = (num_experts, n_out, k_out) if grouped else (n_out, k_out)
    if out is None:
        dt = out_dtype or dy.dtype
        if plan is None:
            if accumulate:
                raise checks.InputError("accumulate=True needs out= (the tensor to add the gradient into)")
            if dt not in (torch.bfloat16, torch.float16, torch.float32):
                raise checks.InputError(f"out_dtype must be bfloat16, float16 or float32, got {dt}")
        out = torch.empty(shape, dtype=dt, device=dy.device)
    elif plan is not None:  # out's metadata passed the checks below when the plan was made
        if out.data_ptr() % 16:
            raise checks.InputError(f"out must be row-major with 16-byte aligned rows, got strides {out.stride()}")
    else:
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
            raise checks.InputError(f"out must have shape {shape}, got {tuple(getattr(out, 'shape', ()))}")
        if out.dtype not in (torch.float32, dy.dtype):
            raise checks.InputError(f"out dtype must be float32 or {dy.dtype}, got {out.dtype}")
        if out.device != dy.device:
            raise checks.InputError(f"out is on {out.device}, expected {dy.device}")
        if out.stride(-1) != 1 or (out.stride(-2) * out.element_size()) % 16 or out.data_ptr() % 16 or (
                grouped and (out.stride(0) * out.element_size()) % 16):
            raise checks.InputError(f"out must be row-major with 16-byte aligned rows, got strides {out.stride()}")
    if plan is None:
        checks.check_cuda("dy", dy)
        if out.numel() == 0:
            return out
        if tokens == 0:
            if not accumulate:
                out.zero_()
            return out
        checks.check_config(config)
        key = _wgrad_key(device_arch(dy.device), dy.dtype, n_out, k_out, tokens, num_experts, grouped, out.dtype,
                         accumulate, majors, config, tuned_root())
        plan = launch_plan.put(signature, LaunchPlan(_planned_key(key), majors))
    elif config is not None:
        checks.check_config(config)
    tile_m = plan.key.cfg.tile_m
    flat = plan.key.flat_args  # the kernel takes dy, x and out as stored (host_args.flat_operand)
    cu_rows = _splits_metadata(m_splits, tile_m, dy.device)[0] if grouped else None
    d3 = out if flat else out.permute(1, 2, 0) if grouped else _as_mkl(out)
    if flat:  # A = dy^T, B = x^T
        a3, b3 = _flat_operand(dy, plan.key.a_major, True), _flat_operand(x, plan.key.b_major, True)
    else:
        a3, b3 = _as_mkl_t(dy), _as_mkl_t(x)
    _launch_planned(plan, GemmArgs(a3, b3, d3, aux=d3 if accumulate else None, cu_rows=cu_rows))
    return out
