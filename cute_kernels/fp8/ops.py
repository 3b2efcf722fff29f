"""Torch entry points of the FP8 GEMMs: the GEMM family's kernel (`Sm90Gemm` with the block-scaled
mainloop of cute_kernels/sm90/mainloop_fp8.py and the quantizing output codec of `EpilogueSpec`;
sm_90a only, `archs.Arch.block_scaled_fp8`).

- `fp8_gemm(a, sa, b, sb)`: D = dequant(a) @ dequant(b)^T in bf16 (FC2 forward, plain GEMM);
  `quantize_out=True` returns D quantized 1x128 instead, (q, scales), computed in the epilogue.
- `fp8_fc1_srelu(x, sx, w, sw)`: FC1 + activation (squared ReLU by default, `activation=`) with postact written in FP8 with its 1x128
  scales by the epilogue (ready to be FC2's A operand), optionally preact in bf16.
- `fp8_grouped(x, sx, w, sw, m_splits)`: the grouped-along-M forms (one launch for every expert).
- `quantize_weight(w, recipe)`: the weight's FP8 copy and 128x128 scales (fp8/weight_cache.py).
- `config=`: a `GemmConfig` the FP8 mainloop runs (sm90/config.block_scaled_errors): 128x128
  tiles take the overlapped promotion, 128x256 tiles the split-N one; default: the tuned entry or
  the kernel's default (sm90/config.FP8_DEFAULT_CONFIG).
- Cooperative 128-row tiles take the kernel whose producer stages the K tiles' scales in shared
  memory (KernelKey.scales_smem; on by default since its H200 run, 2026-12-03 22:10 UTC: bitwise the
  other kernel, 1.05-1.08x at the power limit); `CUTE_KERNELS_FP8_SMEM_SCALES=0` / `smem_scales(False)`
  takes the kernel loading them from global memory in the consumers' K loop.

Operands: a (M, K) / x, b (N, K) / w FP8 (e4m3 or e5m2), K-major (row-major), K a multiple of 16
(16-byte TMA rows); activation scales (M, ceil(K/128)) fp32, weight scales (ceil(N/128),
ceil(K/128)) fp32, any strides (column-major activation scales read coalesced; the kernel
writes its own output scales column-major).  Bad inputs raise `cute_kernels.InputError`.
"""
from __future__ import annotations

import dataclasses
import contextlib
import functools
import logging
import os

import torch

from .. import archs, gemm_ops, launch_plan
from ..checks import InputError
from ..host_args import as_mkl, splits_metadata
from ..compile import use_tvm_ffi
from ..config import GemmConfig, block_scaled_errors
from ..config_lookup import lookup_config, on_clear, tuned_root
from ..activations import SRELU, resolve_activation
from ..epilogue import EpilogueSpec
from ..gemm_base.launch_args import GemmArgs
from ..launch_plan import LaunchPlan, tensor_meta
from ..registry import dtype_key, kernel_default_config, kernel_key
from .epilogue import Fp8Epilogue
from .recipe import FORMATS, Fp8Recipe
from .weight_cache import weight_copy

BLOCK = 128
_FORMAT_OF = {v: k for k, v in FORMATS.items()}


def check_fp8_launch(name: str, t: torch.Tensor):
    """What every FP8 kernel launch needs beside its arguments: `t` on a GPU with the FP8 kernels
    (check_fp8_device) and the TVM-FFI launch path (the FP8 kernels take torch tensors through it)."""
    check_fp8_device(name, t)
    if not use_tvm_ffi():
        raise InputError("the FP8 kernels launch through TVM-FFI: install apache-tvm-ffi (a dependency of "
                         "cute_kernels) and leave CUTE_KERNELS_TVM_FFI unset")


def check_fp8_device(name: str, t: torch.Tensor):
    """InputError unless `t` is on a GPU whose arch has the block-scaled FP8 kernels (cute_kernels.archs)."""
    if not t.is_cuda:
        raise InputError(f"{name} must be a CUDA tensor for the FP8 kernels, got {t.device}")
    arch = archs.device_arch(t.device)
    if arch is None or not archs.get_arch(arch).block_scaled_fp8:
        major, minor = archs.device_capability(archs.cuda_index(t.device))
        raise InputError(f"the FP8 kernels need a GPU of {archs.describe_arches(archs.block_scaled_fp8_arches())}; "
                         f"{t.device} has compute capability {major}.{minor} (use the bf16 kernels there)")


def _check_fp8_operand(name: str, t, k: int | None = None) -> str:
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        raise InputError(f"{name} must be a 2-D torch.Tensor")
    if t.dtype not in _FORMAT_OF:
        raise InputError(f"{name} must be float8_e4m3fn or float8_e5m2, got {t.dtype}")
    if t.stride(1) != 1 or (t.shape[0] > 1 and t.stride(0) % 16):
        raise InputError(f"{name} must be K-major (row-major) with a row stride that is a multiple of 16 "
                         f"elements, got strides {t.stride()} (Hopper's FP8 WGMMA reads K-major operands)")
    if t.shape[1] % 16:
        raise InputError(f"{name} K = {t.shape[1]} must be a multiple of 16 (16-byte TMA rows of FP8)")
    if k is not None and t.shape[1] != k:
        raise InputError(f"{name} has K = {t.shape[1]}, expected {k}")
    if t.data_ptr() % 16:
        raise InputError(f"{name} data pointer is not 16-byte aligned")
    return _FORMAT_OF[t.dtype]


def _check_scales(name: str, s, shape):
    if not isinstance(s, torch.Tensor) or s.dtype != torch.float32 or tuple(s.shape) != tuple(shape):
        got = (tuple(s.shape), s.dtype) if isinstance(s, torch.Tensor) else type(s).__name__
        raise InputError(f"{name} must be float32 of shape {tuple(shape)}, got {got}")


def _cdiv(a, b):
    return -(-a // b)


def _new_scales(m: int, nb: int, device) -> torch.Tensor:
    """(M, NB) fp32, column-major: the kernel's store and a consumer's reads are coalesced.  Strides
    (1, M), made in one torch op (torch.empty((NB, M)).t() gives the same view in two)."""
    return torch.empty_strided((m, nb), (1, m), dtype=torch.float32, device=device)


log = logging.getLogger("cute_kernels.fp8")
FAMILY_ARCH = "sm90"  # the arch of the family's FP8 launches (check_fp8_device admits only sm_90a)


def family_kernel(epi: Fp8Epilogue) -> str:
    """The registry kernel of a family FP8 launch, the name its tuned configs are looked up under:
    fp8_fc1_srelu (activation epilogue), fp8_dgrad_dact (activation derivative: the FC2 data
    gradient) or fp8_fc2 (plain: FC2 and the FC1 data gradient, which share FC2's shape)."""
    return {"act": "fp8_fc1_srelu", "dact": "fp8_dgrad_dact"}.get(epi.spec.kind, "fp8_fc2")


def _codec_spec(epi: Fp8Epilogue) -> EpilogueSpec:
    """The family's epilogue of `epi`: its math plus the quantizing output codec."""
    return dataclasses.replace(epi.spec, quantized=epi.quantized, q_format=epi.q_format, pow2_scales=epi.pow2_scales)


def _dtype_of(a_format: str, b_format: str) -> str:
    return dtype_key(str(FORMATS[a_format]).removeprefix("torch."), str(FORMATS[b_format]).removeprefix("torch."))


def family_key(epi: Fp8Epilogue, cfg: GemmConfig, a_format: str, b_format: str, *, grouped: bool = False):
    """The GEMM family's kernel key of an FP8 launch (K-major operands, bf16 plain outputs): the
    registry's key of `family_kernel(epi)`, the one the autotuner compiles and times."""
    return kernel_key(family_kernel(epi), FAMILY_ARCH, cfg, _dtype_of(a_format, b_format), int(grouped),
                      epi=_codec_spec(epi))


SMEM_SCALES_ENV = "CUTE_KERNELS_FP8_SMEM_SCALES"
# the switch of the kernel reading the scales from shared memory: [on], set from the environment at import
_smem_scales = [os.environ.get(SMEM_SCALES_ENV, "1") != "0"]


def smem_scales_switch() -> bool:
    """Whether the family's FP8 launches on cooperative 128-row tiles take the kernel with the
    scales staged in shared memory (KernelKey.scales_smem, sm90/scale_stage.py): on by default
    (H200 2026-12-03: bitwise the global-load kernel and faster); CUTE_KERNELS_FP8_SMEM_SCALES=0 at
    import, or `smem_scales(False)` around calls, turns it off.  Part of every FP8 entry point's
    call signature (its launch plan)."""
    return _smem_scales[0]


@contextlib.contextmanager
def smem_scales(on: bool):
    """Within: smem_scales_switch() is `on` (tests and benchmarks A/B the two kernels in one process)."""
    before = _smem_scales[0]
    _smem_scales[0] = bool(on)
    try:
        yield
    finally:
        _smem_scales[0] = before


def _family_launch_key(epi: Fp8Epilogue, m: int, n: int, k: int, num_experts: int, grouped: bool, a_format: str,
                       b_format: str, config: GemmConfig | None, root: str | None):
    """The key of one family launch (`_chosen_launch_key`) with the environment's smem_scales_switch()."""
    return _chosen_launch_key(epi, m, n, k, num_experts, grouped, a_format, b_format, config, root,
                              smem_scales_switch())


@functools.lru_cache(maxsize=1024)
def _chosen_launch_key(epi: Fp8Epilogue, m: int, n: int, k: int, num_experts: int, grouped: bool, a_format: str,
                       b_format: str, config: GemmConfig | None, root: str | None, smem_scales: bool):
    """The key of one family launch: `config` checked (InputError naming it), or the tuned entry
    for this (kernel, formats, shape), or the kernel's default when none is stored or the stored
    one cannot run this call's epilogue; with `smem_scales` the kernel reading the scales from
    shared memory where the config's tile has it (cooperative 128 rows).  Cached
    (config_lookup.clear_cache clears it; `root`: the tuned-configs directory the lookup reads)."""
    name = family_kernel(epi)
    where = dict(arch=FAMILY_ARCH, grouped=grouped, majors=("k", "k"))
    if config is not None:
        _check_config_arg(config, epi, grouped)
    else:
        config = lookup_config(name, arch=FAMILY_ARCH, dtype=_dtype_of(a_format, b_format), m=m, n=n, k=k,
                               num_experts=num_experts, grouped=grouped)
        errors = block_scaled_errors(config, _codec_spec(epi), **where)
        if errors:
            log.warning("tuned %s config %s cannot run epilogue %s (%s): the default config instead", name, config,
                        _codec_spec(epi).key(), "; ".join(errors))
            config = kernel_default_config(name, m, n, k, num_experts if grouped else 0, arch=FAMILY_ARCH)
    return with_staged_scales(family_key(epi, config, a_format, b_format, grouped=grouped), smem_scales)


def with_staged_scales(key, on: bool | None = None):
    """`key` (a registry key of an FP8 kernel) as the FP8 ops launch it: with its scales staged in
    shared memory where the config's tile has them (cooperative 128 rows) and the switch is `on`
    (default: smem_scales_switch()).  The autotuner compiles this key too (autotune/fp8_runner.py)."""
    on = smem_scales_switch() if on is None else on
    if on and key.cfg.schedule == "cooperative" and key.cfg.tile_m == BLOCK:
        return dataclasses.replace(key, scales_smem=True)
    return key


on_clear(_chosen_launch_key.cache_clear)


def _check_config_arg(config, epi: Fp8Epilogue | None = None, grouped: bool = False):
    """`config` is None or a GemmConfig the FP8 mainloop can run with `epi` (checked before the
    device, so a bad config is named on any machine)."""
    if config is not None and not isinstance(config, GemmConfig):
        raise InputError(f"config must be a GemmConfig or None, got {type(config).__name__}")
    if config is not None and epi is not None:
        errors = block_scaled_errors(config, _codec_spec(epi), arch=FAMILY_ARCH, grouped=grouped, majors=("k", "k"))
        if errors:
            raise InputError(f"config: {config} cannot run the FP8 kernel: " + "; ".join(errors))


class LaunchViews(tuple):
    """(b3, sb3), a grouped launch's views of a weight copy (q, scales) made with the copy by its maker
    (quantize_ops.quantize_weight_copies), holding `of` = (q, scales): a launch given the very q and
    scales takes them without comparing their layout again."""

    def __new__(cls, b3, sb3, *, of):
        views = super().__new__(cls, (b3, sb3))
        views.of = of
        return views


def _grouped_b_views(b, sb, views):
    """The grouped launch's (N, K, E) uint8 view of b and (NB, KB, E) view of sb: `views` when it holds
    exactly those (fp8.quantize_ops.weight_views of a one-pass weight copy: made once with the copy,
    no torch op here), else made now.  InputError for views that are not b's and sb's."""
    if views is None:
        return b.view(torch.uint8).permute(1, 2, 0), sb.permute(1, 2, 0)
    if type(views) is LaunchViews and views.of[0] is b and views.of[1] is sb:
        return views  # made with b and sb, as their maker made them
    b3, sb3 = views
    for name, t, v, dtype in (("w", b, b3, torch.uint8), ("sw", sb, sb3, sb.dtype)):
        e, r, c = t.shape
        se, sr, sc = t.stride()
        if not (isinstance(v, torch.Tensor) and v.dtype == dtype and v.data_ptr() == t.data_ptr()
                and v.shape == (r, c, e) and v.stride() == (sr, sc, se) and v.device == t.device):
            raise InputError(f"{name}_views: not the (rows, cols, experts) view of {name} a grouped launch takes")
    return b3, sb3


class Fp8Plan(LaunchPlan):
    """The plan of one FP8 entry point's call signature (cute_kernels.launch_plan: resolved on its
    first call, then one dict lookup): the family kernel's key and, after the first launch, its
    compiled kernel (gemm_ops._launch_planned), plus the outputs the entry point allocates per call."""

    __slots__ = ("plain", "q_dtype")

    def __init__(self, key, epi: Fp8Epilogue):
        super().__init__(key)  # (None for a call that launches nothing: not kept)
        if epi.quantized and epi.outputs[-1] != epi.quantized:
            raise ValueError(f"the quantized output of {epi.key()} is not its last")  # (_launch_family's order)
        self.plain = len(epi.plain_outputs)  # bf16 outputs
        self.q_dtype = FORMATS[epi.q_format] if epi.quantized else None  # the quantized output's, None without


def _planned(signature, plan: Fp8Plan) -> Fp8Plan:
    """`plan` kept for `signature` (not kept when the signature is unhashable: its calls check again)."""
    try:
        return launch_plan.put(signature, plan)
    except TypeError:
        return plan


def _aligned(name: str, t: torch.Tensor):
    """What a plan's call still checks of an FP8 operand its signature fixed: the data pointer."""
    if t.data_ptr() % 16:
        raise InputError(f"{name} data pointer is not 16-byte aligned")


def _launch_family(plan: Fp8Plan, a, sa, b3, sb3, d, q, qs, cu=(None, None), prob=None, d1=None, aux=None,
                   rowsum=None):
    """One launch of the family's kernel of `plan` (the first-use self-check gate and the compile
    on its first launch, gemm_ops._launch_planned): b3, sb3 the launch's views of B and its scales
    (`_dense_b_views` / `_grouped_b_views`); cu the grouped launch's (cu_rows, cu_tiles).  Outputs
    in the kernel's order: the plain ones (d, d1), then the quantized one (q), last (Fp8Plan)."""
    u8 = torch.uint8
    outs = [as_mkl(t) for t in (d, d1) if t is not None]
    if q is not None:
        outs.append(as_mkl(q.view(u8)))
    gemm_ops._launch_planned(plan, GemmArgs(as_mkl(a.view(u8)), b3, outs[0], outs[1] if len(outs) == 2 else None,
                                            scale=prob, aux=None if aux is None else as_mkl(aux), rowsum=rowsum,
                                            cu_rows=cu[0], cu_tiles=cu[1], sa=sa, sb=sb3, qs=qs))


def _dense_b_views(b, sb):
    """The dense launch's (N, K, 1) uint8 view of b and (NB, KB, 1) view of sb."""
    return as_mkl(b.view(torch.uint8)), sb.unsqueeze(-1)


def fp8_grouped(x, sx, w, sw, m_splits, *, epilogue: str = "identity", prob=None, store_preact: bool = False,
                recipe: Fp8Recipe = Fp8Recipe(), config: GemmConfig | None = None, w_views=None, activation=SRELU):
    """Grouped FP8 GEMM of the family's kernel, one launch for every expert (no host loop, no host
    sync with a GPU `m_splits`): x (M, K) FP8 with rows sorted by expert and 1x128 scales sx (M, KB);
    w (E, N, K) FP8 with 128x128 scales sw (E, NB, KB); m_splits (E,) rows per expert (empty experts
    allowed).  `epilogue` "identity" returns y (M, N) bf16; "act" returns (preact bf16 or None,
    postact FP8, postact scales (M, NB)) with postact = prob * f(preact) quantized 1x128 (prob: (M,)
    fp32 router probabilities or None), f the `activation` (an Activation or its name; default relu^2).
    `w_views`: the launch's views of w and sw when the caller has
    them (`quantize_ops.weight_views` of a one-pass weight copy), else None (made here).
    The checks and the kernel key of a call signature (the operands' metadata and the arguments) are
    resolved on its first call (an `Fp8Plan`); a repeated call checks x's data pointer and the
    splits' values, allocates and launches."""
    splits_meta = tensor_meta(m_splits)
    signature = ("fp8_grouped", tensor_meta(x), tensor_meta(sx), tensor_meta(w), tensor_meta(sw), splits_meta,
                 epilogue, prob is not None, tensor_meta(prob), store_preact, recipe, config, tuned_root(), activation,
                 _smem_scales[0])
    plan = launch_plan.get(signature)
    if plan is None:
        plan = _grouped_plan(signature, x, sx, w, sw, m_splits, epilogue, prob, store_preact, recipe, config,
                             activation)
    else:
        _aligned("x", x)
        if splits_meta is None:
            _check_list_splits(m_splits, w.shape[0], x.shape[0])
    m, n = x.shape[0], w.shape[1]
    d = torch.empty((m, n), dtype=torch.bfloat16, device=x.device) if plan.plain else None
    q = qs = None
    if plan.q_dtype is not None:
        q = torch.empty((m, n), dtype=plan.q_dtype, device=x.device)
        qs = _new_scales(m, _cdiv(n, BLOCK), x.device)
    if m:
        cfg = plan.key.cfg
        b3, sb3 = _grouped_b_views(w, sw, w_views)
        _launch_family(plan, x, sx, b3, sb3, d, q, qs, splits_metadata(m_splits, cfg.tile_m, x.device, cfg.cluster_m),
                       prob=prob)
    return d if epilogue == "identity" else (d, q, qs)


def _check_list_splits(m_splits, e: int, m: int):
    if len(m_splits) != e or sum(m_splits) != m or min(m_splits, default=0) < 0:
        raise InputError(f"m_splits must hold {e} non-negative counts summing to M = {m}, got {list(m_splits)}")


def _grouped_plan(signature, x, sx, w, sw, m_splits, epilogue, prob, store_preact, recipe, config,
                  activation) -> Fp8Plan:
    """fp8_grouped's checks of a new call signature (InputError naming the argument) and its plan
    (kept, except for M = 0: a call with no rows launches nothing)."""
    fa = _check_fp8_operand("x", x)
    if not isinstance(w, torch.Tensor) or w.dim() != 3 or w.dtype not in _FORMAT_OF:
        raise InputError("w must be an (E, N, K) float8 tensor")
    fb = _FORMAT_OF[w.dtype]
    e, n, k = w.shape
    m = x.shape[0]
    if x.shape[1] != k:
        raise InputError(f"x has K = {x.shape[1]}, w has K = {k}")
    if not w.is_contiguous():
        raise InputError("w must be contiguous (E, N, K): K-major per expert")
    _check_scales("sx", sx, (m, _cdiv(k, BLOCK)))
    _check_scales("sw", sw, (e, _cdiv(n, BLOCK), _cdiv(k, BLOCK)))
    if isinstance(m_splits, torch.Tensor):
        if m_splits.numel() != e:
            raise InputError(f"m_splits has {m_splits.numel()} entries for {e} experts")
    else:
        _check_list_splits(m_splits, e, m)
    if epilogue not in ("identity", "act"):
        raise InputError(f"epilogue must be 'identity' or 'act', got {epilogue!r}")
    if n % 16:
        raise InputError(f"N = {n} must be a multiple of 16")
    if prob is not None and (not isinstance(prob, torch.Tensor) or prob.shape != (m,) or prob.dtype != torch.float32):
        raise InputError("prob must be a float32 (M,) tensor")
    _check_config_arg(config)
    check_fp8_launch("x", x)
    activation = _checked_activation(activation)
    if epilogue == "identity":
        if prob is not None:
            raise InputError("prob belongs to the 'act' epilogue")
        if activation != SRELU:
            raise InputError("activation belongs to the 'act' epilogue")
        epi = Fp8Epilogue(EpilogueSpec("identity"))
    else:
        epi = Fp8Epilogue(EpilogueSpec("act", store_preact=store_preact, row_scale=prob is not None,
                                       activation=activation),
                          quantized="postact", q_format=recipe.fwd_format, pow2_scales=recipe.pow2_scales)
    if m == 0:
        return Fp8Plan(None, epi)
    return _planned(signature, Fp8Plan(_family_launch_key(epi, m, n, k, e, True, fa, fb, config, tuned_root()), epi))


def _checked_activation(activation):
    """`activation` resolved (an Activation, its name or None: relu^2), InputError naming it otherwise."""
    try:
        return resolve_activation(activation)
    except (TypeError, ValueError) as e:
        raise InputError(f"activation: {e}") from None


def fp8_dgrad_dact(dq, ds, wt, wts, preact, *, m_splits=None, prob=None, store_postact: bool = False,
                   activation=None, quantize_dpreact: bool = False, recipe: Fp8Recipe = Fp8Recipe(),
                   config: GemmConfig | None = None, wt_views=None):
    """The FC2 data gradient with the activation derivative in its epilogue (one launch; grouped along
    M with `m_splits`): dpost = dequant(dq) @ dequant(wt)^T in fp32, then dpreact = p * dpost * f'(preact),
    optionally the recomputed postact p * f(preact) (`store_postact`, FC2's weight-gradient operand) and,
    with `prob`, the router gradient dp = rowsum(dpost * f(preact)) (per-tile partials summed here: no
    atomics).  dq (M, K) FP8 (dy) with 1x128 scales ds; wt (N, K) or (E, N, K) FP8 (W2^T's copy) with
    128x128 scales wts; preact (M, N) bf16 as FC1 stored it; prob (M,) fp32 or None; activation an
    `Activation` (default relu^2).  `quantize_dpreact` writes dpreact in FP8 (recipe.grad_format) with
    its 1x128 scales instead (the FC1 data gradient's A operand; not with store_postact).
    `wt_views` (grouped): as fp8_grouped's `w_views`, of wt and wts.
    Returns (dpreact bf16 or (q, scales), postact or None, dprob or None).
    The checks and the kernel key of a call signature are resolved on its first call (an `Fp8Plan`);
    a repeated call checks dq's data pointer and list splits' values, allocates and launches."""
    grouped = m_splits is not None
    splits_meta = tensor_meta(m_splits)
    signature = ("fp8_dgrad_dact", tensor_meta(dq), tensor_meta(ds), tensor_meta(wt), tensor_meta(wts),
                 tensor_meta(preact), grouped, splits_meta, prob is not None, tensor_meta(prob), store_postact,
                 activation, quantize_dpreact, recipe, config, tuned_root(), _smem_scales[0])
    plan = launch_plan.get(signature)
    if plan is None:
        plan = _dgrad_dact_plan(signature, dq, ds, wt, wts, preact, m_splits, prob, store_postact, activation,
                                quantize_dpreact, recipe, config)
    else:
        _aligned("dq", dq)
    m, n = dq.shape[0], wt.shape[-2]
    if grouped and splits_meta is None:
        _check_list_splits(m_splits, wt.shape[0], m)
    device = dq.device
    dpre = q = qs = None
    if plan.q_dtype is not None:
        q = torch.empty((m, n), dtype=plan.q_dtype, device=device)
        qs = _new_scales(m, _cdiv(n, BLOCK), device)
    else:
        dpre = torch.empty((m, n), dtype=torch.bfloat16, device=device)
    post = torch.empty((m, n), dtype=torch.bfloat16, device=device) if store_postact else None
    out0 = (q, qs) if quantize_dpreact else dpre
    if m == 0:
        return out0, post, (torch.zeros(0, device=device) if prob is not None else None)
    cfg = plan.key.cfg
    partials = None
    if prob is not None:
        partials = _new_scales(m, _cdiv(n, cfg.tile_n), device)  # (M, N tiles), column-major
    if grouped:
        b3, sb3 = _grouped_b_views(wt, wts, wt_views)
        cu = splits_metadata(m_splits, cfg.tile_m, device, cfg.cluster_m)
    else:
        (b3, sb3), cu = _dense_b_views(wt, wts), (None, None)
    _launch_family(plan, dq, ds, b3, sb3, dpre, q, qs, cu, prob=prob, d1=post, aux=preact, rowsum=partials)
    return out0, post, (partials.sum(1) if prob is not None else None)


def _dgrad_dact_plan(signature, dq, ds, wt, wts, preact, m_splits, prob, store_postact, activation,
                     quantize_dpreact, recipe, config) -> Fp8Plan:
    """fp8_dgrad_dact's checks of a new call signature (InputError naming the argument) and its plan
    (kept, except for M = 0: a call with no rows launches nothing)."""
    fa = _check_fp8_operand("dq", dq)
    grouped = m_splits is not None
    if not isinstance(wt, torch.Tensor) or wt.dim() != (3 if grouped else 2) or wt.dtype not in _FORMAT_OF:
        raise InputError(f"wt must be an {'(E, N, K)' if grouped else '(N, K)'} float8 tensor")
    if not wt.is_contiguous():
        raise InputError("wt must be contiguous (K-major)")
    fb = _FORMAT_OF[wt.dtype]
    m, k = dq.shape
    n = wt.shape[-2]
    if wt.shape[-1] != k:
        raise InputError(f"wt has K = {wt.shape[-1]}, dq has K = {k}")
    _check_scales("ds", ds, (m, _cdiv(k, BLOCK)))
    _check_scales("wts", wts, ((wt.shape[0],) if grouped else ()) + (_cdiv(n, BLOCK), _cdiv(k, BLOCK)))
    if isinstance(m_splits, torch.Tensor) and m_splits.numel() != wt.shape[0]:
        raise InputError(f"m_splits has {m_splits.numel()} entries for {wt.shape[0]} experts")
    if not isinstance(preact, torch.Tensor) or tuple(preact.shape) != (m, n) or preact.dtype != torch.bfloat16 \
            or preact.stride(1) != 1:
        raise InputError(f"preact must be a row-major bf16 ({m}, {n}) tensor")
    if prob is not None and (not isinstance(prob, torch.Tensor) or prob.shape != (m,) or prob.dtype != torch.float32):
        raise InputError("prob must be a float32 (M,) tensor")
    if quantize_dpreact and store_postact:
        raise InputError("quantize_dpreact and store_postact are exclusive (the quantized output is the last one)")
    if n % 16:
        raise InputError(f"N = {n} must be a multiple of 16")
    spec = EpilogueSpec("dact", store_postact=store_postact, row_scale=prob is not None, row_sum=prob is not None,
                        activation=_checked_activation(activation))
    epi = Fp8Epilogue(spec, quantized="dpreact" if quantize_dpreact else "", q_format=recipe.grad_format,
                      pow2_scales=recipe.pow2_scales)
    num_experts = wt.shape[0] if grouped else 1
    # the kernel's rules (sm90/config.block_scaled_errors) on the config it will run, before the device
    _check_config_arg(config if config is not None else
                      kernel_default_config(family_kernel(epi), m, n, k, num_experts if grouped else 0,
                                            arch=FAMILY_ARCH), epi, grouped)
    check_fp8_launch("dq", dq)
    if m == 0:
        return Fp8Plan(None, epi)
    key = _family_launch_key(epi, m, n, k, num_experts, grouped, fa, fb, config, tuned_root())
    return _planned(signature, Fp8Plan(key, epi))


def _launch(a, sa, b, sb, epi: Fp8Epilogue, config: GemmConfig | None, outs=None):
    """Check, allocate (or take `outs` = (d, q, qs), for tests that poison them) and launch: the
    checks and the key resolved on a call signature's first call (an `Fp8Plan`), a repeated call
    checks the operands' data pointers."""
    signature = ("fp8_dense", tensor_meta(a), tensor_meta(sa), tensor_meta(b), tensor_meta(sb), epi, config,
                 tuned_root(), _smem_scales[0])
    plan = launch_plan.get(signature)
    if plan is None:
        plan = _dense_plan(signature, a, sa, b, sb, epi, config)
    else:
        _aligned("a", a)
        _aligned("b", b)
    m, n = a.shape[0], b.shape[0]
    d, q, qs = outs if outs is not None else (None, None, None)  # allocated here where not given
    if plan.plain and d is None:
        d = torch.empty((m, n), dtype=torch.bfloat16, device=a.device)
    if plan.q_dtype is not None and q is None:
        q = torch.empty((m, n), dtype=plan.q_dtype, device=a.device)
    if plan.q_dtype is not None and qs is None:
        qs = _new_scales(m, _cdiv(n, BLOCK), a.device)
    b3, sb3 = _dense_b_views(b, sb)
    _launch_family(plan, a, sa, b3, sb3, d, q, qs)
    return d, q, qs


def _dense_plan(signature, a, sa, b, sb, epi: Fp8Epilogue, config) -> Fp8Plan:
    """_launch's checks of a new call signature (InputError naming the argument) and its kept plan."""
    fa = _check_fp8_operand("a", a)
    fb = _check_fp8_operand("b", b, a.shape[1])
    m, k = a.shape
    n = b.shape[0]
    for name, t in (("b", b), ("sa", sa), ("sb", sb)):
        if t.device != a.device:
            raise InputError(f"{name} is on {t.device}, expected {a.device}")
    _check_scales("sa", sa, (m, _cdiv(k, BLOCK)))
    _check_scales("sb", sb, (_cdiv(n, BLOCK), _cdiv(k, BLOCK)))
    if m == 0 or n == 0 or k == 0:
        raise InputError(f"empty problem (M = {m}, N = {n}, K = {k})")
    if epi.quantized and n % 16:
        raise InputError(f"N = {n} must be a multiple of 16 for an FP8 output (16-byte TMA rows)")
    if n % 8:
        raise InputError(f"N = {n} must be a multiple of 8 (16-byte rows of the bf16 output)")
    _check_config_arg(config, epi)
    check_fp8_launch("a", a)
    return _planned(signature, Fp8Plan(_family_launch_key(epi, m, n, k, 0, False, fa, fb, config, tuned_root()), epi))


def fp8_gemm(a, sa, b, sb, *, quantize_out: bool = False, out_format: str = "e4m3", config: GemmConfig | None = None):
    """dequant(a) @ dequant(b)^T: bf16 (M, N), or with `quantize_out` (q (M, N) fp8, scales (M, ceil(N/128)))."""
    if quantize_out:
        _, q, qs = _launch(a, sa, b, sb, Fp8Epilogue(EpilogueSpec("identity"), quantized="out", q_format=out_format),
                           config)
        return q, qs
    d, _, _ = _launch(a, sa, b, sb, Fp8Epilogue(EpilogueSpec("identity")), config)
    return d


def fp8_fc1_srelu(x, sx, w, sw, *, store_preact: bool = True, recipe: Fp8Recipe = Fp8Recipe(),
                  config: GemmConfig | None = None, activation=SRELU):
    """(preact bf16 or None, postact q (M, N) fp8, postact scales (M, ceil(N/128)) fp32); postact =
    f(preact), f the `activation` (an Activation or its name; default relu^2)."""
    epi = Fp8Epilogue(EpilogueSpec("act", store_preact=store_preact, activation=_checked_activation(activation)),
                      quantized="postact", q_format=recipe.fwd_format, pow2_scales=recipe.pow2_scales)
    return _launch(x, sx, w, sw, epi, config)


def quantize_weight(w: torch.Tensor, recipe: Fp8Recipe = Fp8Recipe(), *, transposed: bool = False):
    """(q, scales) of a (N, K) weight by 128x128 blocks, from its current values (never a stale
    copy: fp8/weight_cache.py says what is reused, and only inside `reuse_weight_copies()`).
    With `transposed` the copy of W^T, (K, N) row-major (a square block's amax is that of its
    transpose), the K-major B operand of the dgrad.  A stack of expert weights (E, N, K) gives
    (E, N, K) and (E, NB, KB) (or (E, K, N), (E, KB, NB))."""
    return weight_copy(w, recipe, transposed=transposed)
