"""FP8 GEMM benchmark (H200/H100, sm_90a): our block-scaled FP8 kernels against torch._scaled_mm
(tensorwise, rowwise and, where this torch has it, 1x128/128x128 blockwise) and against our
bf16 kernels and cuBLAS bf16, all in one run, burst (L2 flushed, median) and sustained (back to
back at the power limit).  Outputs are checked against a float32 reference of the dequantized
inputs before anything is timed.

A second table times the whole MLP step fwd+bwd (`srelu_mlp(..., fp8=Fp8Recipe())` against our
bf16 step `srelu_mlp(...)`, both on the cute path) at the power limit (sustained) on the dense
8192 x 4096 -> 16384 and grouped E=8 (16384 tokens, 2688 -> 1856, even splits) shapes, with the
bytes each step saves for backward (saved_tensors_hooks, weights excluded).  The FP8 step's
weight gradients, dSReLU and grouped loop are torch (fp8/mlp.py).  The FP8 GEMM rows time the
forms of the FP8 mainloop (128x128 overlapped promotion, 128x256 split-N, 256x128 split-M) on both
clusters, and ping-pong 64-row tiles.

The step table adds, for the grouped shape, the FP8 step with wgrad="fp8" through the grouped FP8
weight-gradient kernel (CUTE_KERNELS_FP8_GROUPED_WGRAD=1, off by default until an H200 run checks it).

The weight-gradient table (`--no-wgrad` skips it) times the dense step's two weight gradients,
dW1 (16384, 4096) and dW2 (4096, 16384) from 8192 tokens: our FP8 1D1D kernel
(fp8/wgrad_ops.fp8_weight_grad, 1x128 scales along the tokens on both operands, fp32 and bf16
out; both mainloops: the serial "row" and the overlapped "staged", b_scale "rows_staged"; and dW
added into an fp32 main_grad, by the kernel's epilogue (`out=, accumulate=True`) against the fp32 dW
then torch's add_), our bf16 `weight_grad` and torch's bf16 mm on the bf16 operands, and torch._scaled_mm
rowwise of the same M, N, K (the FP8 reference speed); TFLOP/s = 2*M*N*K / time, each output
checked against its float32 reference first, and the issue-26 target (>= 900 TFLOP/s burst) stated;
then the grouped E=8 step's dW1 (8, 1856, 2688) and dW2 (8, 2688, 1856) from 16384 tokens: our grouped
FP8 kernel (fp8/wgrad_ops.fp8_grouped_weight_grad, one launch for every expert), the same with its
two per-expert padded quantizations, and our bf16 grouped weight_grad.

    PYTHONPATH=$PWD OUT=gpu_out python benchmarks/bench_fp8.py [--shape 8192,16384,4096] [--no-sustained]
        [--no-step] [--no-grouped] [--no-gemm] [--no-wgrad]
    PYTHONPATH=$PWD OUT=gpu_out python -m benchmarks.bench_fp8 --no-gemm --no-grouped --no-step  # wgrad only

Writes $OUT/bench_fp8.md and $OUT/bench_fp8.json; prints the tables last.  About 3 minutes.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import traceback
from unittest import mock

import torch

from autotune.timing import sustained_ms, tflops, time_ms
from cute_kernels.sm90.config import FP8_DEFAULT_CONFIG


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _error(ex: Exception) -> str:
    return f"{type(ex).__name__}: {str(ex).splitlines()[0][:160]}"


def measure(row: dict, fn, sustained: bool, seconds: float = 1.0, warm_s: float = 0.3) -> dict:
    """row with fn's burst time (L2 flushed, median; batches of 4) and, with `sustained`, its time,
    board power and SM clock at the power limit (`seconds` back to back after `warm_s` of the same);
    an exception becomes row["error"] (one failing case must not lose the table)."""
    try:
        fn()
        torch.cuda.synchronize()
        row["burst_ms"] = time_ms(fn, warmup=5, iters=20, batch=4)
        if sustained:
            row["sustained_ms"], row["power_w"], row["sm_mhz"] = sustained_ms(fn, seconds=seconds, warm_s=warm_s)
    except Exception as ex:  # noqa: BLE001 - reported in the table
        row["error"] = _error(ex)
        traceback.print_exc(file=sys.stderr)
    return row


def _global_scales(fn):
    """`fn` run with the FP8 kernel loading its scales from global memory in the consumers' K loop
    (fp8.ops.smem_scales(False); the default stages them in shared memory since 2026-12-03)."""
    from cute_kernels.fp8.ops import smem_scales

    def run():
        with smem_scales(False):
            return fn()
    return run


def fp8_operands(m: int, n: int, k: int, seed: int = 0):
    """(x, w, xq, xs, wq, ws) on the GPU: x (M, K) ~ N(0, 1) and w (N, K) ~ N(0, 0.02^2) in bf16, and
    their FP8 forms with the recipe's scales (x 1x128 runs, w 128x128 blocks; scales row-major)."""
    from cute_kernels.fp8.recipe import quantize_1x128, quantize_128x128

    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16)
    w = (torch.randn(n, k, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    xq, xs = quantize_1x128(x)
    wq, ws = quantize_128x128(w)
    return x, w, xq, xs, wq, ws


def scaled_mm_rowwise(xq, xs, wq, ws):
    """A call of torch._scaled_mm rowwise on the same FP8 bytes (the FP8 reference speed): x's rows
    scaled by the largest of their 1x128 scales, w's rows by their 128x128 blocks' largest."""
    n = wq.shape[0]
    wq_t = wq.t()  # (K, N) column-major, as _scaled_mm wants its second operand
    sa_row = xs.amax(1, keepdim=True).contiguous()
    sb_row = ws.amax(1).repeat_interleave(128)[:n].view(1, n).contiguous()
    return lambda: torch._scaled_mm(xq, wq_t, sa_row, sb_row, out_dtype=torch.bfloat16)


def cases(m, n, k):
    import cute_kernels as ck
    from cute_kernels.fp8.ops import fp8_fc1_srelu, fp8_gemm, smem_scales
    from cute_kernels.fp8.recipe import dequantize

    x, w, xq, xs, wq, ws = fp8_operands(m, n, k)
    xs_col = xs.t().contiguous().t()  # column-major activation scales (coalesced reads)

    base = FP8_DEFAULT_CONFIG  # named: the rows say their config (a shape's tuned entry would be another)
    # correctness first (float32 reference of the dequantized inputs)
    ref = dequantize(xq, xs) @ dequantize(wq, ws).T
    checks = {"fp8_gemm rel err vs dequantized fp32": _rel(fp8_gemm(xq, xs_col, wq, ws, config=base), ref)}
    pre, q, qs = fp8_fc1_srelu(xq, xs_col, wq, ws)
    checks["fp8_fc1_srelu preact rel err"] = _rel(pre, ref)
    checks["fp8_fc1_srelu postact rel err (incl. e4m3 rounding)"] = _rel(dequantize(q, qs.contiguous()),
                                                                          torch.relu(ref) ** 2)
    del ref, pre, q

    # the FP8 mainloop's two forms: 128x128 tiles (overlapped promotion) and 128x256 (split-N), on
    # both cluster shapes; they promote the same K tiles in the same order (bitwise equal outputs)
    from cute_kernels.config import GemmConfig

    wide = GemmConfig(tile_m=128, tile_n=256, tile_k=128, cluster_m=2, cluster_n=1)
    checks["128x256 == 128x128 (fp8_gemm bf16 out, bitwise)"] = float(torch.equal(
        fp8_gemm(xq, xs_col, wq, ws, config=wide), fp8_gemm(xq, xs_col, wq, ws, config=base)))
    out = {}
    out["ours fp8 GEMM (bf16 out) [128x128 c1x2]"] = lambda: fp8_gemm(xq, xs_col, wq, ws, config=base)
    out["ours fp8 FC1+SReLU (postact fp8+scales) [128x128 c1x2]"] = (
        lambda: fp8_fc1_srelu(xq, xs_col, wq, ws, store_preact=False, config=base))
    out["ours fp8 FC1+SReLU (+preact bf16) [128x128 c1x2]"] = lambda: fp8_fc1_srelu(xq, xs_col, wq, ws, config=base)
    # the same tile loading the K tiles' scales from global memory in the consumers' K loop (the kernel
    # before the scales were staged in shared memory by the producer, KernelKey.scales_smem: the default
    # since 2026-12-03; CUTE_KERNELS_FP8_SMEM_SCALES=0 takes it); bitwise equal
    try:
        with smem_scales(False):
            loaded = fp8_gemm(xq, xs_col, wq, ws, config=base)
        checks["128x128 global scales == 128x128 (fp8_gemm bf16 out, bitwise)"] = float(torch.equal(
            loaded, fp8_gemm(xq, xs_col, wq, ws, config=base)))
        del loaded
        out["ours fp8 GEMM (bf16 out) [128x128 c1x2 global scales]"] = _global_scales(
            lambda: fp8_gemm(xq, xs_col, wq, ws, config=base))
        out["ours fp8 FC1+SReLU (postact fp8+scales) [128x128 c1x2 global scales]"] = _global_scales(
            lambda: fp8_fc1_srelu(xq, xs_col, wq, ws, store_preact=False, config=base))
    except Exception as e:  # noqa: BLE001 - report and go on
        checks["[128x128 global scales] failed"] = _error(e)
    for cm, cn in ((2, 1), (1, 2)):
        cfg = GemmConfig(tile_m=128, tile_n=256, tile_k=128, cluster_m=cm, cluster_n=cn)
        tag = f"[128x256 c{cm}x{cn}]"
        out[f"ours fp8 GEMM (bf16 out) {tag}"] = lambda cfg=cfg: fp8_gemm(xq, xs_col, wq, ws, config=cfg)
        out[f"ours fp8 FC1+SReLU (postact fp8+scales) {tag}"] = (
            lambda cfg=cfg: fp8_fc1_srelu(xq, xs_col, wq, ws, store_preact=False, config=cfg))
        out[f"ours fp8 FC1+SReLU (+preact bf16) {tag}"] = lambda cfg=cfg: fp8_fc1_srelu(xq, xs_col, wq, ws, config=cfg)
        if (cm, cn) == (2, 1):  # the split-N tile (the fastest at the power limit) loading its scales globally
            out["ours fp8 GEMM (bf16 out) [128x256 c2x1 global scales]"] = _global_scales(
                lambda cfg=cfg: fp8_gemm(xq, xs_col, wq, ws, config=cfg))
    # 256x128 tiles (DeepGEMM's shape): each warpgroup two 64-row waves through one scratch accumulator
    # (the split-M mainloop); FC1 writes the FP8 postact alone there (preact too spills: refused)
    for cm, cn in ((1, 2), (2, 1)):
        cfg = GemmConfig(tile_m=256, tile_n=128, tile_k=128, cluster_m=cm, cluster_n=cn)
        tag = f"[256x128 c{cm}x{cn}]"
        try:
            checks[f"{tag} == 128x128 (fp8_gemm bf16 out, bitwise)"] = float(torch.equal(
                fp8_gemm(xq, xs_col, wq, ws, config=cfg), fp8_gemm(xq, xs_col, wq, ws, config=base)))
            out[f"ours fp8 GEMM (bf16 out) {tag}"] = lambda cfg=cfg: fp8_gemm(xq, xs_col, wq, ws, config=cfg)
            out[f"ours fp8 FC1+SReLU (postact fp8+scales) {tag}"] = (
                lambda cfg=cfg: fp8_fc1_srelu(xq, xs_col, wq, ws, store_preact=False, config=cfg))
        except Exception as e:  # noqa: BLE001 - report and go on
            checks[f"{tag} failed"] = _error(e)
    # ping-pong 64-row tiles: one warpgroup's epilogue under the other's mainloop (plain outputs only)
    for tn, cm, cn in ((128, 1, 2), (256, 2, 1)):
        cfg = GemmConfig(tile_m=64, tile_n=tn, tile_k=128, cluster_m=cm, cluster_n=cn, schedule="pingpong")
        tag = f"[64x{tn} pingpong c{cm}x{cn}]"
        try:
            checks[f"{tag} == 128x128 (fp8_gemm bf16 out, bitwise)"] = float(torch.equal(
                fp8_gemm(xq, xs_col, wq, ws, config=cfg), fp8_gemm(xq, xs_col, wq, ws, config=base)))
            out[f"ours fp8 GEMM (bf16 out) {tag}"] = lambda cfg=cfg: fp8_gemm(xq, xs_col, wq, ws, config=cfg)
        except Exception as e:  # noqa: BLE001 - report and go on
            checks[f"{tag} failed"] = _error(e)
    one = torch.ones((), device="cuda")
    wq_t = wq.t()  # (K, N) column-major, as _scaled_mm wants its second operand
    out["torch._scaled_mm tensorwise"] = lambda: torch._scaled_mm(xq, wq_t, one, one, out_dtype=torch.bfloat16)
    out["torch._scaled_mm rowwise"] = scaled_mm_rowwise(xq, xs, wq, ws)
    # blockwise (1x128 x 128x128): torch >= 2.9 with CUDA >= 12.9 on sm_90; try the layouts it may want
    for name, sa, sb in (("blockwise", xs_col, ws.t().contiguous()), ("blockwise", xs_col, ws)):
        try:
            torch._scaled_mm(xq, wq_t, sa, sb, out_dtype=torch.bfloat16)
            out["torch._scaled_mm blockwise 1x128/128x128"] = (
                lambda sa=sa, sb=sb: torch._scaled_mm(xq, wq_t, sa, sb, out_dtype=torch.bfloat16))
            break
        except Exception as e:  # noqa: BLE001 - report and go on
            checks[f"_scaled_mm {name} unavailable"] = str(e).splitlines()[0][:120]
    out["ours bf16 FC1+SReLU (postact+preact)"] = lambda: ck.fc1_srelu(x, w)
    out["ours bf16 FC2 (plain GEMM)"] = lambda: ck.fc2(x, w)
    out["torch bf16 mm"] = lambda: x @ w.t()
    return out, checks


GROUPED_SHAPES = [("E=8 16384x2688->1856", 16384, 2688, 1856, 8), ("E=128 32768x2688->1856", 32768, 2688, 1856, 128)]


def grouped_rows(sustained: bool):
    """Grouped FC1+SReLU with the router probability (MoE forward): FP8 (`fp8_grouped`, postact
    written FP8 + 1x128 scales, 128x128 and 128x256 tiles) against our bf16 grouped kernel
    (`fc1_srelu(..., store_preact=False)`), even splits, same run; outputs checked first."""
    import cute_kernels as ck
    from cute_kernels.config import GemmConfig
    from cute_kernels.fp8.ops import fp8_grouped
    from cute_kernels.fp8.recipe import dequantize, quantize_1x128, quantize_128x128

    rows = []
    for name, m, k, n, e in GROUPED_SHAPES:
        g = torch.Generator(device="cuda").manual_seed(1)
        x = torch.randn(m, k, device="cuda", generator=g).bfloat16()
        w = (torch.randn(e, n, k, device="cuda", generator=g) / k ** 0.5).bfloat16()
        prob = torch.rand(m, device="cuda", generator=g)
        splits = [m // e] * e
        xq, xs = quantize_1x128(x)
        parts = [quantize_128x128(w[i]) for i in range(e)]
        wq, ws = torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])
        del parts
        _, ref = ck.fc1_srelu(x, w, m_splits=splits, prob=prob, store_preact=False)
        variants = {"bf16 (ours)": lambda: ck.fc1_srelu(x, w, m_splits=splits, prob=prob, store_preact=False)}
        wide = functools.partial(GemmConfig, tile_m=128, tile_n=256, tile_k=128)
        for tag, cfg in (("fp8 128x128 c1x2", FP8_DEFAULT_CONFIG),
                         ("fp8 128x128 c2x1", GemmConfig(tile_m=128, tile_n=128, tile_k=128, cluster_m=2, cluster_n=1)),
                         ("fp8 128x256 c1x2", wide(cluster_m=1, cluster_n=2)),
                         ("fp8 128x256 c2x1", wide(cluster_m=2, cluster_n=1))):
            _, q, qs = fp8_grouped(xq, xs, wq, ws, splits, epilogue="act", prob=prob, config=cfg)
            err = _rel(dequantize(q, qs.contiguous()), ref)
            variants[f"{tag} (rel err vs bf16 {err:.3f})"] = (
                lambda cfg=cfg: fp8_grouped(xq, xs, wq, ws, splits, epilogue="act", prob=prob, config=cfg))
        # the plain grouped GEMM (the step's FC2 / FC1 data gradient form) on cooperative 128x128 tiles
        # and ping-pong 64-row ones (one warpgroup's epilogue under the other's mainloop)
        pp = GemmConfig(tile_m=64, tile_n=128, tile_k=128, cluster_m=1, cluster_n=2, schedule="pingpong")
        for tag, cfg in (("fp8 plain bf16 out 128x128 c1x2", FP8_DEFAULT_CONFIG), ("fp8 plain bf16 out 64x128 pingpong c1x2", pp)):
            try:
                same = torch.equal(fp8_grouped(xq, xs, wq, ws, splits, config=cfg), fp8_grouped(xq, xs, wq, ws, splits, config=FP8_DEFAULT_CONFIG))
                variants[f"{tag} (bitwise = 128x128: {same})"] = (
                    lambda cfg=cfg: fp8_grouped(xq, xs, wq, ws, splits, config=cfg))
            except Exception as e:  # noqa: BLE001 - report and go on
                rows.append({"shape": name, "case": tag, "error": _error(e)})
        base = None
        for label, fn in variants.items():
            row = measure({"shape": name, "case": label}, fn, sustained)
            if label.startswith("bf16") and "error" not in row:
                base = row
            rows.append((row, base, 2.0 * m * n * k))
        del x, w, xq, wq, ref
        torch.cuda.empty_cache()
    lines = ["", "## Grouped FC1+SReLU with router probability (ratios against our bf16 grouped kernel, same run)", "",
             "| shape | case | burst ms | burst TFLOP/s | sustained ms | sustained TFLOP/s | x bf16 (sustained) | W |",
             "|---|---|---|---|---|---|---|---|"]
    for r, b, fl in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['case']} | error: {r['error']} ||||||")
            continue
        sus = r.get("sustained_ms")
        ratio = f"{b['sustained_ms'] / sus:.2f}" if sus and b and b.get("sustained_ms") else "-"
        lines.append(f"| {r['shape']} | {r['case']} | {r['burst_ms']:.3f} | {tflops(fl, r['burst_ms']):.0f} | "
                     f"{sus:.3f} | {tflops(fl, sus):.0f} | {ratio} | {r.get('power_w', 0):.0f} |" if sus else
                     f"| {r['shape']} | {r['case']} | {r['burst_ms']:.3f} | {tflops(fl, r['burst_ms']):.0f} | - | - | - | - |")
    return [r for r, _, _ in rows], lines


# the dense step 8192 x 4096 -> 16384's two weight gradients: dW1 = dpreact^T @ x, dW2 = dy^T @ postact
# (name, tokens T, N_out, K_out)
WGRAD_SHAPES = [("dW1 (16384, 4096) from 8192 tokens", 8192, 16384, 4096),
                ("dW2 (4096, 16384) from 8192 tokens", 8192, 4096, 16384)]
DENSE_WGRAD_NAMES = {name for name, *_ in WGRAD_SHAPES}  # the shapes the target is stated for
WGRAD_TARGET_TFLOPS = 900.0  # issue 26: burst, the dense step's wgrad shapes (DeepGEMM: 920-1,092 on the H800)
ROWWISE_CASE = "torch._scaled_mm rowwise (same M,N,K)"
# the FP8 weight gradient's mainloops side by side (fp8/wgrad_ops.WGRAD_B_SCALES): the serial "row"
# (the default) and the overlapped "rows_staged" (CUTE_KERNELS_FP8_WGRAD_STAGED=1), so one run A/Bs them
WGRAD_MAINLOOPS = (("row", "row"), ("staged", "rows_staged"))
# dW added into an fp32 main_grad (issue 26): by the kernel's epilogue, and written then added by torch
MAIN_GRAD_CASES = ("ours fp8 wgrad 1D1D += main_grad (epilogue add, fp32)",
                   "ours fp8 wgrad 1D1D, then torch main_grad.add_ (fp32)")


def wgrad_cases(t: int, n_out: int, k_out: int):
    """{case: fn} of one weight-gradient shape dW (n_out, k_out) = G^T X over t tokens, and
    {case: rel err}: our FP8 1D1D kernel (fp8/wgrad_ops, both operands the column-wise FP8 copies
    with 1x128 scales along the tokens, made by quantize_rows_and_cols as the step makes them;
    fp32 and bf16 out) against a float32 product of its dequantized operands; our bf16 weight_grad
    and torch's bf16 mm on the bf16 operands against their float32 product; torch._scaled_mm
    rowwise on the same FP8 bytes (per-row/per-column scales: the FP8 reference speed) against
    the float32 product of those operands with its scales."""
    import cute_kernels as ck
    from cute_kernels.fp8 import Fp8Recipe
    from cute_kernels.fp8.quantize_ops import quantize_rows_and_cols
    from cute_kernels.fp8.recipe import dequantize
    from cute_kernels.fp8.wgrad_ops import as_operand, fp8_weight_grad

    recipe = Fp8Recipe(wgrad="fp8")
    gen = torch.Generator(device="cuda").manual_seed(2)
    g = (torch.randn(t, n_out, device="cuda", generator=gen) * 1e-3).bfloat16()
    x = torch.randn(t, k_out, device="cuda", generator=gen).bfloat16()
    _, _, gq, gs = quantize_rows_and_cols(g, recipe.grad_format, pow2=recipe.pow2_scales)
    _, _, xq, xs = quantize_rows_and_cols(x, recipe.fwd_format, pow2=recipe.pow2_scales)
    gq, xq = as_operand(gq), as_operand(xq)  # (rows, T padded to 128), zeros past T
    sa = gs.amax(1, keepdim=True).contiguous()  # (N_out, 1)
    sb = xs.amax(1).view(1, k_out).contiguous()  # (1, K_out)

    fns = {}
    for label, b_scale in WGRAD_MAINLOOPS:
        for out, out_name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            fns[f"ours fp8 wgrad 1D1D {label} ({out_name} out)"] = functools.partial(
                fp8_weight_grad, gq, gs, xq, xs, out_dtype=out, b_scale=b_scale)
    # into an fp32 main_grad (fuse_wgrad_accumulation): the epilogue's add against dW + torch's add
    main_grads = [torch.zeros(n_out, k_out, device="cuda") for _ in MAIN_GRAD_CASES]
    fused = functools.partial(fp8_weight_grad, gq, gs, xq, xs, out=main_grads[0], accumulate=True)
    fns[MAIN_GRAD_CASES[0]] = fused
    fns[MAIN_GRAD_CASES[1]] = lambda: main_grads[1].add_(fp8_weight_grad(gq, gs, xq, xs))
    ours = len(fns)
    fns |= {"ours bf16 weight_grad (bf16 out)": lambda: ck.weight_grad(g, x),
            "torch bf16 mm (g^T @ x)": lambda: g.t() @ x,
            # (N_out, T) row-major times (T, K_out) column-major, as _scaled_mm wants them
            ROWWISE_CASE: lambda: torch._scaled_mm(gq, xq.t(), sa, sb, out_dtype=torch.bfloat16)}
    errs = {}
    ref = dequantize(gq, gs) @ dequantize(xq, xs).t()
    for case in list(fns)[:ours]:  # (a main_grad from zeros: its first call leaves dW there)
        try:
            errs[case] = _rel(fns[case](), ref)
        except Exception as ex:  # noqa: BLE001 - the accumulating kernel has not run on a GPU: its row says so
            if case not in MAIN_GRAD_CASES:
                raise
            errs[case] = _error(ex)
    ref = g.float().t() @ x.float()
    for case in list(fns)[ours:ours + 2]:
        errs[case] = _rel(fns[case](), ref)
    del ref
    try:
        errs[ROWWISE_CASE] = _rel(fns[ROWWISE_CASE](), (gq.float() * sa) @ (xq.float() * sb.t()).t())
    except Exception as ex:  # noqa: BLE001 - this torch/GPU may lack rowwise scaling: its row says so
        errs[ROWWISE_CASE] = _error(ex)
    return fns, errs


# the grouped E=8 step's two weight gradients (16384 tokens, 2688 -> 1856, even splits): one launch for
# every expert (name, tokens T, experts E, N_out, K_out)
GROUPED_WGRAD_SHAPES = [("E=8 dW1 (8, 1856, 2688) from 16384 tokens", 16384, 8, 1856, 2688),
                        ("E=8 dW2 (8, 2688, 1856) from 16384 tokens", 16384, 8, 2688, 1856)]


def grouped_wgrad_cases(t: int, e: int, n_out: int, k_out: int):
    """{case: fn}, {case: rel err} of one grouped weight-gradient shape: our grouped FP8 kernel
    (fp8/wgrad_ops.fp8_grouped_weight_grad over the per-expert padded column-wise copies of
    quantize_cols_grouped, GPU-tensor splits) against the float32 per-expert product of its
    dequantized operands, and the same with its two quantizations (fp8_grouped_weight_grad_of, what
    the step runs with CUTE_KERNELS_FP8_GROUPED_WGRAD=1); our bf16 grouped weight_grad against the
    float32 product of the bf16 operands."""
    import cute_kernels as ck
    from cute_kernels.fp8 import Fp8Recipe
    from cute_kernels.fp8.quantize_ops import quantize_cols_grouped
    from cute_kernels.fp8.recipe import dequantize
    from cute_kernels.fp8.wgrad_ops import fp8_grouped_weight_grad, fp8_grouped_weight_grad_of

    recipe = Fp8Recipe(wgrad="fp8")
    gen = torch.Generator(device="cuda").manual_seed(3)
    g = (torch.randn(t, n_out, device="cuda", generator=gen) * 1e-3).bfloat16()
    x = torch.randn(t, k_out, device="cuda", generator=gen).bfloat16()
    splits = torch.full((e,), t // e, dtype=torch.int32, device="cuda")
    gq, gs, cu = quantize_cols_grouped(g, splits, recipe.grad_format, pow2=recipe.pow2_scales)
    xq, xs, _ = quantize_cols_grouped(x, splits, recipe.fwd_format, pow2=recipe.pow2_scales)
    fns = {"ours fp8 grouped wgrad 1D1D staged (fp32 out)": functools.partial(fp8_grouped_weight_grad, gq, gs, xq,
                                                                                xs, cu),
           "ours fp8 grouped wgrad + its two quantizations (fp32 out)": functools.partial(
               fp8_grouped_weight_grad_of, g, x, splits, recipe),
           "ours bf16 grouped weight_grad (fp32 out)": lambda: ck.weight_grad(g, x, m_splits=splits,
                                                                                out_dtype=torch.float32)}
    errs = {}
    cu_h = cu.tolist()
    ref = torch.stack([dequantize(gq[:, a:b].contiguous(), gs[:, a // 128:b // 128].contiguous())
                       @ dequantize(xq[:, a:b].contiguous(), xs[:, a // 128:b // 128].contiguous()).t()
                       for a, b in zip(cu_h, cu_h[1:])])
    for case in list(fns)[:2]:
        try:
            errs[case] = _rel(fns[case](), ref)
        except Exception as ex:  # noqa: BLE001 - not yet run on a GPU: its row says what failed
            errs[case] = _error(ex)
    ref = torch.stack([a.float().t() @ b.float() for a, b in zip(g.split(t // e), x.split(t // e))])
    errs["ours bf16 grouped weight_grad (fp32 out)"] = _rel(fns["ours bf16 grouped weight_grad (fp32 out)"](), ref)
    return fns, errs


def wgrad_rows(sustained: bool, grouped: bool = True):
    """The weight-gradient table's rows (format_wgrad_table), outputs checked before timing: the
    dense step's shapes, and with `grouped` the grouped E=8 step's."""
    rows = []
    shapes = [(name, t, n_out, k_out, functools.partial(wgrad_cases, t, n_out, k_out))
              for name, t, n_out, k_out in WGRAD_SHAPES]
    if grouped:
        shapes += [(name, t, n_out, k_out, functools.partial(grouped_wgrad_cases, t, e, n_out, k_out))
                   for name, t, e, n_out, k_out in GROUPED_WGRAD_SHAPES]
    for name, t, n_out, k_out, make_cases in shapes:
        fns, errs = make_cases()
        for case, fn in fns.items():
            row = {"shape": name, "case": case, "flops": 2.0 * n_out * k_out * t}
            if isinstance(errs[case], str):
                row["error"] = errs[case]
            else:
                row["rel_err"] = errs[case]
                measure(row, fn, sustained)
            rows.append(row)
        del fns
        torch.cuda.empty_cache()
    return rows


def format_wgrad_table(rows) -> list[str]:
    """Markdown lines of the weight-gradient table: TFLOP/s = 2*M*N*K / time, ratios against
    torch._scaled_mm rowwise of the same shape, and whether our FP8 kernel's best burst rate per
    shape reaches the issue's target."""
    lines = ["", "## Weight gradients of the dense step 8192 x 4096 -> 16384 and the grouped E=8 step "
             "(TFLOP/s = 2*M*N*K/time, all experts; ratios against torch._scaled_mm rowwise, same run)", "",
             "| shape | case | rel err | burst ms | burst TFLOP/s | x rowwise | sustained ms | sustained TFLOP/s "
             "| x rowwise | W |", "|---|---|---|---|---|---|---|---|---|---|"]
    ref = {r["shape"]: r for r in rows if r["case"] == ROWWISE_CASE and "error" not in r}
    best = {}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['case']} | error: {r['error']} ||||||||")
            continue
        b = ref.get(r["shape"], {})
        cells = [r["shape"], r["case"], f"{r['rel_err']:.2e}", f"{r['burst_ms']:.3f}",
                 f"{tflops(r['flops'], r['burst_ms']):.0f}",
                 f"{b['burst_ms'] / r['burst_ms']:.2f}" if "burst_ms" in b else "-"]
        if "sustained_ms" in r:
            cells += [f"{r['sustained_ms']:.3f}", f"{tflops(r['flops'], r['sustained_ms']):.0f}",
                      f"{b['sustained_ms'] / r['sustained_ms']:.2f}" if "sustained_ms" in b else "-",
                      f"{r['power_w']:.0f}"]
        else:
            cells += ["-"] * 4
        lines.append("| " + " | ".join(cells) + " |")
        if r["case"].startswith("ours fp8"):
            best[r["shape"]] = max(best.get(r["shape"], 0.0), tflops(r["flops"], r["burst_ms"]))
    lines.append("")
    for shape in dict.fromkeys(r["shape"] for r in rows if r["shape"] in DENSE_WGRAD_NAMES):
        got = best.get(shape)
        lines.append(f"- target >= {WGRAD_TARGET_TFLOPS:.0f} TFLOP/s burst, {shape}: " +
                     ("no FP8 kernel time" if got is None else
                      f"{got:.0f} ({'met' if got >= WGRAD_TARGET_TFLOPS else 'not met'})"))
    return lines


STEP_SHAPES = [("dense 8192x4096->16384", 8192, 4096, 16384, 0), ("grouped E=8 16384x2688->1856", 16384, 2688, 1856, 8)]


def step_inputs(m: int, h: int, f: int, e: int, seed: int = 0):
    """(x, w1, w2, dy, m_splits) of an MLP step shape: x and the weights leaves requiring grad,
    bf16 on the GPU, weights scaled by 1/sqrt(fan-in); equal splits over e experts (None: dense)."""
    torch.manual_seed(seed)
    x = torch.randn(m, h, device="cuda").bfloat16().requires_grad_()
    w1 = (torch.randn(*((e, f, h) if e else (f, h)), device="cuda") / h ** 0.5).bfloat16().requires_grad_()
    w2 = (torch.randn(*((e, h, f) if e else (h, f)), device="cuda") / f ** 0.5).bfloat16().requires_grad_()
    dy = torch.randn(m, h, device="cuda").bfloat16()
    return x, w1, w2, dy, ([m // e] * e if e else None)


def saved_bytes(fn, exclude) -> int:
    """Bytes of the tensors autograd saves during fn() (tensors in `exclude`, the weights, left out)."""
    total = [0]

    def pack(t):
        if not any(t is e for e in exclude):
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return total[0]


def step_rows(sustained: bool):
    """fwd+bwd of the MLP step, FP8 against our bf16 step, and saved bytes."""
    from cute_kernels.fp8 import Fp8Recipe
    from cute_kernels.mlp import srelu_mlp

    rows = []
    for name, m, h, f, e in STEP_SHAPES:
        x, w1, w2, dy, splits = step_inputs(m, h, f, e)
        flops = 3 * 2 * 2.0 * m * h * f  # two GEMMs, forward + two backward GEMMs each
        variants = [("bf16 (ours)", None, {}), ("fp8, fp8 wgrads (torch)", Fp8Recipe(wgrad="fp8"), {}),
                    ("fp8, bf16 wgrad kernels (default)", Fp8Recipe(wgrad="bf16"), {})]
        # the grouped FP8 weight-gradient kernel (default off: its first H200 run, 2026-12-03 22:10, hit an
        # illegal instruction, which poisons the process's CUDA context; BENCH_FP8_GROUPED_WGRAD=1 adds the row)
        if e and os.environ.get("BENCH_FP8_GROUPED_WGRAD", "0") == "1":
            variants.insert(2, ("fp8, fp8 wgrads, grouped wgrad kernel (CUTE_KERNELS_FP8_GROUPED_WGRAD=1)",
                                Fp8Recipe(wgrad="fp8"), {"CUTE_KERNELS_FP8_GROUPED_WGRAD": "1"}))
        base = None
        for label, recipe, env in variants:
            row = {"shape": name, "case": label}
            switches = mock.patch.dict(os.environ, env)
            switches.start()

            def fwd(recipe=recipe):
                return srelu_mlp(x, w1, w2, m_splits=splits, fp8=recipe, backend="cute")

            def step(fwd=fwd):
                x.grad = w1.grad = w2.grad = None
                fwd().backward(dy)

            try:
                step()
                torch.cuda.synchronize()
                row["saved_MiB"] = saved_bytes(fwd, (w1, w2)) / 2 ** 20
                row["burst_ms"] = time_ms(step, warmup=2, iters=8, batch=1)
                if sustained:
                    row["sustained_ms"], row["power_w"], row["sm_mhz"] = sustained_ms(step, seconds=1.0, warm_s=0.3)
                row["tflops"] = flops / (row.get("sustained_ms", row["burst_ms"]) * 1e9)
            except Exception as ex:  # noqa: BLE001 - one failing case must not lose the table
                row["error"] = _error(ex)
                traceback.print_exc(file=sys.stderr)
            finally:
                switches.stop()
            if label.startswith("bf16") and "error" not in row:
                base = row
            rows.append((row, base))
        del x, w1, w2, dy
        torch.cuda.empty_cache()
    lines = ["", "## MLP step fwd+bwd (sustained = at the power limit; ratios against our bf16 step, same run)", "",
             "| shape | case | burst ms | sustained ms | TFLOP/s | x bf16 (sustained) | saved MiB | x bf16 saved | W |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r, b in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['case']} | error: {r['error']} |||||||")
            continue
        key = "sustained_ms" if "sustained_ms" in r else "burst_ms"
        ratio = f"{b[key] / r[key]:.2f}" if b and key in b else "-"
        mem = f"{r['saved_MiB'] / b['saved_MiB']:.2f}" if b else "-"
        lines.append(f"| {r['shape']} | {r['case']} | {r['burst_ms']:.2f} | {r.get('sustained_ms', float('nan')):.2f} | "
                     f"{r['tflops']:.0f} | {ratio} | {r['saved_MiB']:.0f} | {mem} | {r.get('power_w', float('nan')):.0f} |")
    return [r for r, _ in rows], lines


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="8192,16384,4096", help="M,N,K")
    p.add_argument("--no-sustained", action="store_true")
    p.add_argument("--no-step", action="store_true", help="skip the MLP step table")
    p.add_argument("--no-grouped", action="store_true", help="skip the grouped FC1+SReLU table")
    p.add_argument("--no-gemm", action="store_true", help="skip the dense GEMM table")
    p.add_argument("--no-wgrad", action="store_true", help="skip the weight-gradient table (dense step's dW1, dW2)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_fp8 needs a CUDA GPU", file=sys.stderr)
        return 2
    m, n, k = (int(v) for v in args.shape.split(","))
    out_dir = os.environ.get("OUT", "gpu_out")
    os.makedirs(out_dir, exist_ok=True)
    flops = 2.0 * m * n * k
    fns, checks = cases(m, n, k) if not args.no_gemm else ({}, {})
    rows = []
    for name, fn in fns.items():
        rows.append(measure({"case": name}, fn, not args.no_sustained))
    base = {r["case"]: r for r in rows}
    ref_row = base.get("torch._scaled_mm rowwise", {})
    lines = [f"# FP8 GEMM {m}x{n}x{k} on {torch.cuda.get_device_name()} (torch {torch.__version__})", ""]
    lines += [f"- {c}: {v if isinstance(v, str) else f'{v:.2e}'}" for c, v in checks.items()]
    lines += ["", "| case | burst ms | burst TFLOP/s | x rowwise | sustained ms | sustained TFLOP/s | x rowwise | W | MHz |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | error: {r['error']} |||||||| ")
            continue
        cells = [r["case"], f"{r['burst_ms']:.3f}", f"{tflops(flops, r['burst_ms']):.0f}",
                 f"{ref_row['burst_ms'] / r['burst_ms']:.2f}" if "burst_ms" in ref_row else "-"]
        if "sustained_ms" in r:
            cells += [f"{r['sustained_ms']:.3f}", f"{tflops(flops, r['sustained_ms']):.0f}",
                      f"{ref_row['sustained_ms'] / r['sustained_ms']:.2f}" if "sustained_ms" in ref_row else "-",
                      f"{r['power_w']:.0f}", f"{r['sm_mhz']:.0f}"]
        else:
            cells += ["-"] * 5
        lines.append("| " + " | ".join(cells) + " |")
    if args.no_gemm:
        lines = lines[:2]  # the title only
    del fns
    torch.cuda.empty_cache()
    wgrad = []
    if not args.no_wgrad:
        wgrad = wgrad_rows(not args.no_sustained)
        lines += format_wgrad_table(wgrad)
    grouped = []
    if not args.no_grouped:
        grouped, grouped_lines = grouped_rows(not args.no_sustained)
        lines += grouped_lines
    step = []
    if not args.no_step:
        step, step_lines = step_rows(not args.no_sustained)
        lines += step_lines
    table = "\n".join(lines)
    with open(os.path.join(out_dir, "bench_fp8.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(out_dir, "bench_fp8.json"), "w") as f:
        json.dump({"shape": [m, n, k], "checks": checks, "rows": rows, "wgrad": wgrad, "grouped": grouped,
                   "step": step}, f, indent=1)
    print(table)


if __name__ == "__main__":
    sys.exit(main())
