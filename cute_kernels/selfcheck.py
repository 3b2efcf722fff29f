"""Self-check of kernel variants on hardware without recorded evidence.

`hardware_verified.yaml` lists the (arch, kernel variant) pairs whose GPU tests passed on real
hardware (sm90: every variant; sm100: none, nothing has run on a Blackwell GPU).  The first
time a process launches a variant that is not listed, `before_first_launch` runs that very
kernel (same config, epilogue, grouping, dtypes and operand majorness) on a small problem with
odd sizes (M and N not tile multiples, K not a K-block multiple, an empty expert, a one-token
expert), outputs poisoned with NaN, against a float32 torch reference.

On disagreement it **raises** `SelfCheckError` (no fallback).  Why raise: a kernel that
disagrees with torch on the very first call would produce silently wrong activations or
gradients for a whole training run; falling back to the torch path would hide a bug that only
its user's hardware can show, and change speed and memory behind their back.  The error
names the variant and its errors and says what to do: run `python -m cute_kernels.selfcheck`
and report the table, use backend="torch", or set CUTE_KERNELS_SELFCHECK=0 to skip the check.
A variant that passes logs one warning (it runs unverified by the project) and is not checked
again in the process.  Inside a CUDA graph capture the check cannot run (it synchronises): the
launch goes ahead with a one-time warning.

`python -m cute_kernels.selfcheck [--quick] [--out DIR]` runs every variant of the current
GPU's arch against torch and prints a table of errors and timings (also written as JSON to
$OUT or ./gpu_out): what a user on a B200 sends back.
"""
from __future__ import annotations

import fnmatch
import functools
import logging
import os
from dataclasses import dataclass, field

import yaml

from .archs import variant_shape

log = logging.getLogger("cute_kernels.selfcheck")
VERIFIED_FILE = os.path.join(os.path.dirname(__file__), "hardware_verified.yaml")
ENV_SWITCH = "CUTE_KERNELS_SELFCHECK"  # "0": skip the check
# Normalised max error (max |out - ref| / max |ref|) allowed per output dtype.
TOLERANCE = {"bfloat16": 2e-2, "float16": 5e-3, "float32": 1e-3}
# A quantized FP8 output (compared dequantized with the fp32 reference of the unquantized one):
# half an FP8 step of a block's largest values (3 mantissa bits in e4m3, 2 in e5m2) on top of
# the bf16 allowance (the codec quantizes values computed from the bf16-rounded accumulator).
FP8_OUTPUT_TOLERANCE = {"e4m3": 2.0 ** -4 + TOLERANCE["bfloat16"], "e5m2": 2.0 ** -3 + TOLERANCE["bfloat16"]}
FP8_SMALL_K = 272  # two whole 128-K scale blocks and a partial one (FP8 rows: a multiple of 16)


class SelfCheckError(RuntimeError):
    """A kernel variant disagreed with torch on its first launch on unverified hardware."""


@dataclass
class CheckResult:
    arch: str
    variant: str
    errors: dict = field(default_factory=dict)  # output name -> normalised max error
    tolerance: float = 0.0
    time_ms: float | None = None  # the small problem's kernel time (median), when timed
    message: str = ""
    tolerances: dict = field(default_factory=dict)  # output name -> its own tolerance (an FP8 output)

    @property
    def ok(self) -> bool:
        return bool(self.errors) and all(e == e and e <= self.tolerances.get(k, self.tolerance)
                                         for k, e in self.errors.items()) and not self.message


def variant_name(key) -> str:
    """What identifies a kernel variant for the evidence table: grouping, epilogue and the
    config's structural knobs (tile sizes and rasters are not part of it)."""
    grouping = "grouped_k" if key.grouped_k else ("grouped" if key.grouped else "dense")
    shape = variant_shape(key.arch, key.cfg)  # the arch's structural knobs (cute_kernels.archs)
    out = key.out_dtype or key.dtype
    operands = key.dtype + (f"x{key.b_dtype}" if key.b_dtype and key.b_dtype != key.dtype else "")
    if key.gather_a:  # A's rows by index: its own evidence (a pattern for the plain
        operands += "+gather"  # variant, "*/bfloat16->*", does not match it)
    if key.b_scale:  # B's scales per row (the 1D1D weight gradient): its own evidence
        operands += f"+{key.b_scale}scaledB"
    if key.scales_smem:  # the FP8 scales staged in shared memory: its own evidence
        operands += "+smemscales"  # (the patterns "*/float8_e4m3fn->*" do not match it)
    if key.flat_args:  # 2-D arguments, the kernel's own 3-D views: its own evidence
        operands += "+flat"
    return f"{grouping}/{key.epi.key()}/{shape}/{operands}->{out}/a{key.a_major}b{key.b_major}"


@functools.lru_cache(maxsize=None)
def verified_table(path: str = VERIFIED_FILE) -> dict:
    """arch -> list of variant patterns (fnmatch) with hardware evidence."""
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    return {arch: [str(p) for p in (entry.get("variants") or [])] for arch, entry in raw.items()}


def is_verified(arch: str, variant: str, table: dict) -> bool:
    return any(fnmatch.fnmatchcase(variant, pat) for pat in table.get(arch, []))


results: dict = {}  # variant -> CheckResult of this process
_warned: set = set()


def _capturing() -> bool:
    try:
        import torch

        return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    except Exception:
        return False


_failed: dict = {}  # kernel key -> the message of its failed self-check (this process)


def before_first_launch(key, seen: set, *, launch=None, runner=None, table: dict | None = None, env=None,
                        capturing=_capturing) -> CheckResult | None:
    """Gate of a variant's first launch in this process (the caller keeps `seen`): returns None
    when no check is needed, the passing CheckResult otherwise; raises SelfCheckError on a
    disagreement.  `runner(key) -> CheckResult` runs the check (default: `run_variant` launching
    through the caller's `launch(key, args)`, e.g. gemm_ops._run: the caller hands its launch
    down, so this module imports nothing of the entry points above it)."""
    env = os.environ if env is None else env
    if env.get(ENV_SWITCH, "1") == "0":
        seen.add(key)
        return None
    if key in _failed:  # a variant that disagreed once keeps refusing (it is not in `seen`)
        raise SelfCheckError(_failed[key])
    seen.add(key)  # before the run: the check's own launch of this key passes straight through
    variant = variant_name(key)
    if is_verified(key.arch, variant, verified_table() if table is None else table):
        return None
    if capturing():
        if variant not in _warned:
            _warned.add(variant)
            log.warning("%s kernel %s has no hardware evidence and cannot be self-checked inside a CUDA graph "
                        "capture; it runs unchecked", key.arch, variant)
        return None
    res = runner(key) if runner is not None else run_variant(key, launch=launch)
    results[variant] = res
    if not res.ok:
        seen.discard(key)  # the next launch of this key meets the gate again (and the recorded failure)
        _failed[key] = (
            f"{key.arch} kernel {variant} disagrees with torch on a small problem "
            f"(errors {res.errors}, tolerance {res.tolerance}{'; ' + res.message if res.message else ''}). "
            f"This variant has no hardware evidence yet: please run `python -m cute_kernels.selfcheck` and report "
            f"its table; meanwhile use backend='torch', or set {ENV_SWITCH}=0 to skip this check.")
        raise SelfCheckError(_failed[key])
    log.warning("%s kernel %s has no recorded hardware evidence; its self-check passed (errors %s)", key.arch,
                variant, {k: f"{v:.1e}" for k, v in res.errors.items()})
    return res


# ---------------------------------------------------------------- running one variant on the GPU
SMALL_M, SMALL_K = 200, 136
SMALL_SPLITS = (0, 130, 1, 69)  # an empty expert, a one-token expert, sizes not tile multiples


def _operand(rows: int, cols: int, major_is_rows: bool, dtype, device, gen, batch: int = 0):
    """A (rows, cols) [or (batch, rows, cols)] operand, contiguous along rows when `major_is_rows`."""
    import torch

    shape = (cols, rows) if major_is_rows else (rows, cols)
    if batch:
        shape = (batch, *shape)
    t = torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(dtype)
    return t.transpose(-2, -1) if major_is_rows else t


def _reference(key, a, b, splits, aux, prob):
    """fp32 torch outputs of the variant (a: (M, K); b: (N, K) or (E, N, K)) by name."""
    import torch

    a32, b32 = a.float(), b.float()
    if key.grouped_k:  # a: (M, T), b: (N, T): per-expert token ranges
        outs, start = [], 0
        for s in splits:
            outs.append(a32[:, start:start + s] @ b32[:, start:start + s].t())
            start += s
        acc = torch.stack(outs)
    elif key.grouped:
        rows, start = [], 0
        for e, s in enumerate(splits):
            rows.append(a32[start:start + s] @ b32[e].t())
            start += s
        acc = torch.cat(rows)
    else:
        acc = a32 @ b32.t()
    epi = key.epi
    scale = prob.float()[:, None] if prob is not None else 1.0
    if not epi.aux_input and epi.num_outputs == 1 and epi.outputs[0] == "out":  # identity
        return {"out": acc}
    if epi.accumulate:
        return {"out": acc + aux.float()}
    f = epi.activation  # the activation's torch math (cute_kernels.activations)
    if not epi.aux_input:  # act: postact = p * f(acc) [, preact = acc]
        post = f.torch_forward(acc) * scale
        return {"preact": acc, "postact": post} if epi.store_preact else {"postact": post}
    x = aux.float()  # dact: dpreact = p * acc * f'(x) [, postact = p * f(x)] [, row_sum = rowsum(acc * f(x))]
    ref = {"dpreact": acc * f.torch_grad(x) * scale}
    if epi.store_postact:
        ref["postact"] = f.torch_forward(x) * scale
    if epi.row_sum:
        ref["row_sum"] = (acc * f.torch_forward(x)).sum(1)
    return ref


def run_variant(key, *, launch, device=None, seed: int = 0, time_it: bool = False) -> CheckResult:
    """Run `key`'s kernel on the small problem through `launch(key, args: GemmArgs)` (the entry
    points' launch, gemm_ops._run) and compare with torch."""
    import torch

    from .gemm_base.launch_args import GemmArgs
    from .host_args import as_mkl, as_nkl, flat_operand, splits_metadata

    device = torch.device(device or "cuda")
    gen = torch.Generator(device=device).manual_seed(seed)
    if key.block_scaled:
        return _run_block_scaled_variant(key, launch, device, gen, time_it)
    dt = getattr(torch, key.dtype)
    ot = getattr(torch, key.d_dtype)
    cfg, epi = key.cfg, key.epi
    n = cfg.tile_n + 72  # one whole N tile and a partial one
    splits = list(SMALL_SPLITS)
    e_count = len(splits)
    m = SMALL_M
    if key.grouped_k:  # A = dy^T (M, T) M-major, B = x^T (N, T) N-major: tokens split by expert
        a = _operand(m, sum(splits), True, dt, device, gen)
        b = _operand(n, sum(splits), True, dt, device, gen)
    else:
        a = _operand(m, SMALL_K, key.a_major == "m", dt, device, gen)
        b = _operand(n, SMALL_K, key.b_major == "n", dt, device, gen, batch=e_count if key.grouped else 0)
    a_rows = x = None
    if key.gather_a:  # A's rows gathered from x (more tokens than rows, some taken twice, some never)
        x = _operand(m + 37, SMALL_K, False, dt, device, gen)
        a_rows = torch.randint(0, x.size(0), (m,), generator=gen, device=device, dtype=torch.int32)
        a = x.index_select(0, a_rows)
    out_shape = (e_count, m, n) if key.grouped_k else (m, n)
    outs = [torch.full(out_shape, float("nan"), dtype=ot, device=device) for _ in epi.outputs]
    aux = None
    if epi.aux_input:
        if epi.accumulate:
            outs[0].copy_(torch.randn(out_shape, generator=gen, device=device))
            aux = outs[0].clone()
        else:
            aux = torch.randn(out_shape, generator=gen, device=device).to(dt)
    prob = torch.rand(m, generator=gen, device=device) if epi.row_scale else None
    partials = None
    if epi.row_sum:
        partials = torch.full((-(-n // cfg.tile_n), m), float("nan"), dtype=torch.float32, device=device)
    cu_rows = cu_tiles = None
    if key.grouped or key.grouped_k:
        cu_rows, cu_tiles = splits_metadata(splits, cfg.tile_m, device, cfg.cluster_m)
        if key.grouped_k:
            cu_tiles = None

    flat = key.flat_args  # 2-D arguments as stored (host_args.flat_operand)

    def d3(t):
        return t if flat else t.permute(1, 2, 0) if key.grouped_k else as_mkl(t)

    a_arg = a if x is None else x
    if flat:
        a_arg, b_arg = flat_operand(a_arg, key.a_major, False), flat_operand(b, key.b_major, False)
    else:
        a_arg, b_arg = as_mkl(a_arg), as_nkl(b)
    args = GemmArgs(a_arg, b_arg, d3(outs[0]), d3(outs[1]) if len(outs) > 1 else None,
                    prob, None if aux is None else (d3(outs[0]) if epi.accumulate else d3(aux)),
                    None if partials is None else partials.t(), cu_rows, cu_tiles, a_rows=a_rows)
    res = CheckResult(key.arch, variant_name(key), tolerance=TOLERANCE[key.d_dtype])
    if not _launched(key, args, launch, device, res):
        return res
    ref = _reference(key, a, b, splits, aux, prob)
    got = dict(zip(epi.outputs, outs))
    if epi.row_sum:
        got["row_sum"] = partials.sum(0)
    for name, r in ref.items():
        g = got[name].float()
        scale_ = r.abs().max().clamp_min(1e-6)
        res.errors[name] = float(((g - r).abs().max() / scale_).item()) if g.numel() else 0.0
    if time_it:
        res.time_ms = _median_ms(lambda: launch(key, args))
    return res


def _run_block_scaled_variant(key, launch, device, gen, time_it: bool) -> CheckResult:
    """run_variant of an FP8 kernel: bf16-drawn operands quantized by the recipe (A 1x128 with
    column-major scales, B 128x128 per expert), outputs poisoned (bf16 NaN, FP8 byte 0x7F: NaN in
    both formats, NaN scales), the reference the fp32 GEMM of the dequantized operands; a
    quantized output is compared dequantized, within FP8_OUTPUT_TOLERANCE."""
    import torch

    from .fp8.recipe import FORMATS, dequantize, quantize_1x128, quantize_128x128
    from .gemm_base.launch_args import GemmArgs
    from .host_args import as_mkl, splits_metadata

    if key.grouped_k:
        return _run_k_grouped_fp8_variant(key, launch, device, gen, time_it)
    fa, fb = key.operand_formats
    cfg, epi = key.cfg, key.epi
    m, k, n = SMALL_M, FP8_SMALL_K, cfg.tile_n + 144  # one whole N tile and a partial one
    splits = list(SMALL_SPLITS)
    experts = len(splits) if key.grouped else 1
    aq, sa = quantize_1x128(torch.randn(m, k, generator=gen, device=device), fa)
    sa = sa.t().contiguous().t()
    w = torch.randn(experts, n, k, generator=gen, device=device) * 0.1
    # B's scales by 128x128 blocks (a weight) or per row along K (b_scale "row" or "rows_staged": the 1D1D
    # weight gradient)
    quantize_b = quantize_1x128 if key.b_scale else quantize_128x128
    parts = [quantize_b(w[e], fb) for e in range(experts)]
    bq, sb = torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])
    prob = torch.rand(m, generator=gen, device=device) if epi.row_scale else None
    u8, nb = torch.uint8, -(-n // 128)
    outs = {name: torch.full((m, n), 0x7F, dtype=u8, device=device) if name == epi.quantized
            else torch.full((m, n), float("nan"), dtype=getattr(torch, key.d_dtype), device=device)
            for name in epi.outputs}
    qs = torch.full((nb, m), float("nan"), dtype=torch.float32, device=device).t() if epi.quantized else None
    # dact: the saved preact as the epilogue input (the plain outputs' dtype); its row-sum partials
    aux = torch.randn(m, n, generator=gen, device=device).to(getattr(torch, key.d_dtype)) if epi.aux_input else None
    partials = None
    if epi.row_sum:
        partials = torch.full((-(-n // cfg.tile_n), m), float("nan"), dtype=torch.float32, device=device)
    cu_rows = cu_tiles = None
    if key.grouped:
        cu_rows, cu_tiles = splits_metadata(splits, cfg.tile_m, device, cfg.cluster_m)
        b3, sb3 = bq.view(u8).permute(1, 2, 0), sb.permute(1, 2, 0)
    else:
        b3, sb3 = as_mkl(bq[0].view(u8)), sb[0].unsqueeze(-1)
    d = [as_mkl(outs[name]) for name in epi.outputs]
    if epi.accumulate:  # the weight gradient into main_grad: the output holds its previous value, read in place
        outs["out"].copy_(aux)
    args = GemmArgs(as_mkl(aq.view(u8)), b3, d[0], d[1] if len(d) > 1 else None, scale=prob,
                    aux=None if aux is None else (d[0] if epi.accumulate else as_mkl(aux)), rowsum=None if partials is None else partials.t(),
                    cu_rows=cu_rows, cu_tiles=cu_tiles, sa=sa, sb=sb3, qs=qs)
    res = CheckResult(key.arch, variant_name(key), tolerance=TOLERANCE[key.d_dtype])
    if epi.quantized:
        res.tolerances[epi.quantized] = FP8_OUTPUT_TOLERANCE[epi.q_format]
    if not _launched(key, args, launch, device, res):
        return res
    b32 = torch.stack([dequantize(bq[e], sb[e]) for e in range(experts)])
    ref = _reference(key, dequantize(aq, sa), b32 if key.grouped else b32[0], splits, aux, prob)
    if epi.row_sum:
        outs["row_sum"] = partials.sum(0)
    for name, r in ref.items():
        g = outs[name]
        g = dequantize(g.view(FORMATS[epi.q_format]), qs) if name == epi.quantized else g.float()
        res.errors[name] = float(((g - r).abs().max() / r.abs().max().clamp_min(1e-6)).item())
    if time_it:
        res.time_ms = _median_ms(lambda: launch(key, args))
    return res


def _run_k_grouped_fp8_variant(key, launch, device, gen, time_it: bool) -> CheckResult:
    """run_variant of the grouped FP8 weight gradient: dy (T, M) and x (T, N) drawn in fp32, their
    tokens split by SMALL_SPLITS (an empty and a one-token expert), quantized into the per-expert
    padded column-wise copies by the torch reference (fp8/grouped_tokens.py), the output poisoned
    (NaN); the reference per expert the fp32 GEMM of the dequantized copies."""
    import torch

    from .fp8.grouped_tokens import quantize_cols_grouped_reference
    from .fp8.recipe import dequantize
    from .gemm_base.launch_args import GemmArgs
    from .host_args import as_mkl

    fa, fb = key.operand_formats
    m, n = SMALL_M, key.cfg.tile_n + 144  # one whole N tile and a partial one
    splits = list(SMALL_SPLITS)
    dy = torch.randn(sum(splits), m, generator=gen, device=device)
    x = torch.randn(sum(splits), n, generator=gen, device=device)
    aq, sa, cu_padded = quantize_cols_grouped_reference(dy, splits, fa)
    bq, sb, _ = quantize_cols_grouped_reference(x, splits, fb)
    sa, sb = sa.t().contiguous().t(), sb.t().contiguous().t()  # column-major, as the quantizer writes them
    out = torch.full((len(splits), m, n), float("nan"), dtype=getattr(torch, key.d_dtype), device=device)
    before = None
    if key.epi.accumulate:  # the experts' main_grad: its previous values (an empty expert's kept), read in place
        out.copy_(torch.randn(out.shape, generator=gen, device=device))
        before = out.clone()
    u8 = torch.uint8
    args = GemmArgs(as_mkl(aq.view(u8)), as_mkl(bq.view(u8)), out.permute(1, 2, 0), None, cu_rows=cu_padded,
                    aux=out.permute(1, 2, 0) if before is not None else None, sa=sa, sb=sb.unsqueeze(-1))
    res = CheckResult(key.arch, variant_name(key), tolerance=TOLERANCE[key.d_dtype])
    if not _launched(key, args, launch, device, res):
        return res
    padded_splits = torch.diff(cu_padded).tolist()  # the padding tokens are zeros
    r = _reference(key, dequantize(aq, sa), dequantize(bq, sb), padded_splits, before, None)["out"]
    res.errors["out"] = float(((out.float() - r).abs().max() / r.abs().max().clamp_min(1e-6)).item())
    if time_it:
        res.time_ms = _median_ms(lambda: launch(key, args))
    return res


def _launched(key, args, launch, device, res) -> bool:
    """Launch the check's problem and wait for it; a launch failure is a failed check, reported with
    the rest (its message on `res`)."""
    import torch

    try:
        launch(key, args)
        torch.cuda.synchronize(device)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        res.message = f"{type(exc).__name__}: {exc}"[:300]
        return False
    return True


def _median_ms(fn, reps: int = 20) -> float:
    import torch

    fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


__all__ = ["SelfCheckError", "CheckResult", "before_first_launch", "run_variant", "variant_name", "verified_table",
           "is_verified"]


if __name__ == "__main__":
    import sys

    from cute_kernels.selfcheck_table import main  # the package's copy of this module, not __main__'s

    sys.exit(main())
