"""One variant of the grouped FP8 weight gradient's GPU bisect, run in a process of its own by
scripts/gpu_bisect_grouped_wgrad.sh (an illegal instruction poisons the process's CUDA context,
so each variant must start fresh).

The H200 run of 2026-12-03 22:10 UTC (commit dcde7da) faulted with an illegal instruction on the
first launch of the grouped FP8 weight gradient (fp8/wgrad_ops.fp8_grouped_weight_grad, the
family kernel grouped along K with b_scale "rows_staged"), in its self-check, whose splits
(0, 130, 1, 69) start with an empty expert.  The suspected cause (found on CPU): an empty first
expert's one all-out-of-bounds K tile started at K = 1 (gemm_base/grouping.k_range), one byte
into the K-major FP8 rows, and TMA requires the innermost box coordinate to be a multiple of 16
bytes; it now starts at tile_k.  The variants tell that apart from other suspects: the failing
self-check problems themselves, one expert, all experts non-empty, an empty expert first or in
the middle, e5m2 gradients, main_grad accumulation, the dense rows_staged kernel and the bf16
grouped weight gradient (empty first expert) as controls, and `old-start` variants that put the
old K start back (k_range patched in this process): with the cause found, `old-start-first-empty`
faults and `old-start-all-nonempty` passes.

Each variant draws fresh operands, quantizes them with the torch reference (no quantizer kernel
to compile), launches once with the self-check gate off (the variant checks itself), and compares
with the float64 product of the dequantized operands (relative to the largest reference element).
It prints one line, `<variant>: ok (max rel err ..., ... s)` or `<variant>: ERROR <what>`, and
exits 0 / 1.

  python scripts/bisect_grouped_wgrad_case.py first-empty
  python scripts/bisect_grouped_wgrad_case.py --list batch     (the variants run in parallel)
  python scripts/bisect_grouped_wgrad_case.py --list alone     (those run alone: they may fault)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

N_OUT, K_OUT = 200, 272  # partial output tiles in both directions
TOLERANCE = 1e-3  # the self-check's for an fp32 output

# variant -> (kind, splits, gradient format, accumulate, runs alone)
VARIANTS = {
    "selfcheck": ("selfcheck", None, "e4m3", False, False),  # the failing key's own self-check problem
    "selfcheck-acc": ("selfcheck", None, "e4m3", True, False),
    "first-empty": ("grouped", (0, 130, 1, 69), "e4m3", False, False),
    "one-expert": ("grouped", (300,), "e4m3", False, False),
    "all-nonempty": ("grouped", (130, 1, 69), "e4m3", False, False),
    "middle-empty": ("grouped", (130, 0, 69, 0), "e4m3", False, False),
    "e5m2": ("grouped", (130, 1, 69), "e5m2", False, False),
    "acc": ("grouped", (130, 1, 69), "e4m3", True, False),
    "acc-first-empty": ("grouped", (0, 130, 1, 69), "e4m3", True, False),
    "dense": ("dense", (300,), "e4m3", False, False),  # control: hardware-verified
    "bf16-first-empty": ("bf16", (0, 130, 1, 69), "", False, False),  # control: the bf16 kernel's K start changed too
    "old-start-all-nonempty": ("old-start", (130, 1, 69), "e4m3", False, True),
    "old-start-first-empty": ("old-start", (0, 130, 1, 69), "e4m3", False, True),
}


def old_k_range(mCuRows, expert, tile_k: int):
    """gemm_base/grouping.k_range before the fix: an empty first expert starts at K = 1."""
    import cutlass

    k_lo = mCuRows[expert]
    k_hi = mCuRows[expert + 1]
    k_extent = cutlass.max(k_hi, 1)
    k_start = k_lo + cutlass.max(1 - k_hi, 0)
    k_tiles = cutlass.max((k_hi - k_lo + tile_k - 1) // tile_k, 1)
    return k_start, k_extent, k_tiles


def put_back_old_k_start():
    """k_range as it was, in every module that imported it (before any kernel is compiled)."""
    import importlib

    for name in ("cute_kernels.gemm_base.grouping", "cute_kernels.gemm_base.descriptors", "cute_kernels.sm90.gemm"):
        setattr(importlib.import_module(name), "k_range", old_k_range)


def rel_err(got, ref) -> float:
    return float(((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item())


def grouped_fp8(splits, gfmt, accumulate, device):
    """fp8_grouped_weight_grad on fresh operands -> its max relative error against float64."""
    import torch

    from cute_kernels.fp8.grouped_tokens import quantize_cols_grouped_reference
    from cute_kernels.fp8.recipe import dequantize
    from cute_kernels.fp8.wgrad_ops import fp8_grouped_weight_grad

    t = sum(splits)
    g = torch.randn(t, N_OUT, device=device)
    x = torch.randn(t, K_OUT, device=device)
    gq, gs, cu = quantize_cols_grouped_reference(g, list(splits), gfmt)
    xq, xs, _ = quantize_cols_grouped_reference(x, list(splits), "e4m3")
    gs, xs = gs.t().contiguous().t(), xs.t().contiguous().t()  # column-major, as the quantizer writes them
    out = torch.full((len(splits), N_OUT, K_OUT), float("nan"), device=device)
    before = None
    if accumulate:
        out.copy_(torch.randn(out.shape, device=device))
        before = out.double()
    dw = fp8_grouped_weight_grad(gq, gs, xq, xs, cu, out=out, accumulate=accumulate)
    torch.cuda.synchronize()
    ref = torch.zeros(out.shape, dtype=torch.float64, device=device) if before is None else before.clone()
    cu_h = cu.tolist()
    for e in range(len(splits)):
        lo, hi = cu_h[e], cu_h[e + 1]
        if hi > lo:
            a = dequantize(gq[:, lo:hi].contiguous(), gs[:, lo // 128:hi // 128].contiguous()).double()
            b = dequantize(xq[:, lo:hi].contiguous(), xs[:, lo // 128:hi // 128].contiguous()).double()
            ref[e] += a @ b.t()
    return rel_err(dw, ref)


def dense_fp8(tokens, gfmt, device):
    """The dense rows_staged FP8 weight gradient (the control) -> its max relative error."""
    import torch

    from cute_kernels.fp8.recipe import dequantize, quantize_1x128
    from cute_kernels.fp8.wgrad_ops import as_operand, fp8_weight_grad

    g = torch.randn(tokens, N_OUT, device=device)
    x = torch.randn(tokens, K_OUT, device=device)
    width = -(-tokens // 128) * 128
    pad = torch.nn.functional.pad
    gq, gs = quantize_1x128(pad(g.t(), (0, width - tokens)), gfmt)
    xq, xs = quantize_1x128(pad(x.t(), (0, width - tokens)), "e4m3")
    dw = fp8_weight_grad(as_operand(gq), gs, as_operand(xq), xs, b_scale="rows_staged")
    torch.cuda.synchronize()
    return rel_err(dw, dequantize(gq, gs).double() @ dequantize(xq, xs).double().t())


def grouped_bf16(splits, device):
    """The bf16 grouped weight gradient (fp32 output) -> its max relative error."""
    import torch

    from cute_kernels import weight_grad

    t = sum(splits)
    dy = torch.randn(t, N_OUT, device=device).bfloat16()
    x = torch.randn(t, K_OUT, device=device).bfloat16()
    dw = weight_grad(dy, x, m_splits=list(splits), out_dtype=torch.float32)
    torch.cuda.synchronize()
    ref = torch.zeros(dw.shape, dtype=torch.float64, device=device)
    row = 0
    for e, s in enumerate(splits):
        ref[e] = dy[row:row + s].double().t() @ x[row:row + s].double()
        row += s
    return rel_err(dw, ref)


def selfcheck(gfmt, accumulate):
    """The failing key's self-check problem (selfcheck.run_variant, launched through gemm_ops._run)."""
    import torch

    from cute_kernels.fp8.wgrad_ops import grouped_wgrad_key
    from cute_kernels.gemm_ops import _run
    from cute_kernels.selfcheck import run_variant

    res = run_variant(grouped_wgrad_key(gfmt, "e4m3", torch.float32, accumulate=accumulate), launch=_run)
    torch.cuda.synchronize()
    if not res.ok:
        raise RuntimeError(f"self-check failed: errors {res.errors}; {res.message}")
    return max(res.errors.values())


def run_case(name: str, device: str = "cuda") -> float:
    """Run variant `name`; returns its max relative error (raises on a launch error)."""
    kind, splits, gfmt, accumulate, _ = VARIANTS[name]
    if kind == "old-start":
        put_back_old_k_start()
        kind = "grouped"
    if kind == "selfcheck":
        return selfcheck(gfmt, accumulate)
    if kind == "grouped":
        return grouped_fp8(splits, gfmt, accumulate, device)
    if kind == "dense":
        return dense_fp8(splits[0], gfmt, device)
    return grouped_bf16(splits, device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variant", nargs="?", default="selfcheck", choices=sorted(VARIANTS))
    p.add_argument("--list", choices=("batch", "alone"), default=None,
                   help="print the variants run in parallel (batch) or alone, one a line, and exit")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(n for n, v in VARIANTS.items() if v[4] == (args.list == "alone")))
        return 0
    os.environ["CUTE_KERNELS_SELFCHECK"] = "0"  # the variant checks itself (selfcheck: run_variant directly)
    start = time.time()
    try:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device")
        torch.manual_seed(sorted(VARIANTS).index(args.variant))
        err = run_case(args.variant)
    except Exception as e:  # one line: the error's type and its first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"{args.variant}: ERROR {type(e).__name__}: {first} ({time.time() - start:.0f} s)", flush=True)
        return 1
    verdict = "ok" if err <= TOLERANCE else "ERROR wrong result"
    print(f"{args.variant}: {verdict} (max rel err {err:.1e}, {time.time() - start:.0f} s)", flush=True)
    return 0 if err <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
