"""One-pass dual FP8 quantization (cute_kernels/sm90/quantize.py, sm_90a) against HBM bandwidth.

x (M, K) bf16 -> row-wise 1x128 FP8 copy + scales and column-wise (x^T along M) FP8 copy +
scales in one kernel.  Bytes moved: read 2MK, write 2MK plus 4 bytes per 128 values per copy.
Each shape is first checked bit for bit against `quantize_1x128(x)` and `quantize_1x128(x.t())`,
then timed with CUDA events (warm-up, L2 flushed before every call, median of 30), next to a
device-to-device copy of the same bytes (`dst.copy_(x)`: read 2MK, write 2MK) and the torch
implementation of the recipe (two `quantize_1x128` calls).  Target: >= 80% of HBM bandwidth
(H200: 4.8 TB/s nominal; the copy shows what is reachable).

    PYTHONPATH=$PWD python benchmarks/bench_quantize.py [--shapes 8192x4096,16384x2688] [--format e4m3]
        [--pow2] [--experts E] [--out DIR]

With --experts E (the grouped FP8 weight gradient's operands, sm90/quantize_grouped.py) also, per
shape, the per-expert padded column-wise copy (`quantize_cols_grouped`) and the dual form with the
row-wise copy (`quantize_rows_and_cols_grouped`), E experts of uneven sizes as a GPU int tensor,
each checked bit for bit against the reference (grouped_tokens, recipe) and timed the same way.

Prints a markdown table; with --out also writes DIR/bench_quantize.md and .json.  Exits 1 if a
check fails, 2 without a CUDA GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

DEFAULT_SHAPES = "8192x4096,8192x16384,16384x2688,16384x1856,1000x4096"
NOMINAL_TBPS = {"H200": 4.8, "H100": 3.35}


def _shapes(text: str):
    out = []
    for item in filter(None, text.split(",")):
        m, _, k = item.partition("x")
        out.append((int(m), int(k)))
    return out


def moved_bytes(m: int, k: int) -> int:
    mb, kb = -(-m // 128), -(-k // 128)
    return 2 * m * k + m * k + k * mb * 128 + 4 * (m * kb + k * mb)


def check(x, fmt: str, pow2: bool) -> str | None:
    """None when the kernel's four outputs equal the recipe's, else what differs."""
    from cute_kernels.fp8.quantize_ops import quantize_rows_and_cols
    from cute_kernels.fp8.recipe import quantize_1x128

    q, s, qt, st = quantize_rows_and_cols(x, fmt, pow2=pow2)
    rq, rs = quantize_1x128(x, fmt, pow2=pow2)
    tq, ts = quantize_1x128(x.t(), fmt, pow2=pow2)
    u8 = torch.uint8
    for name, a, b in (("q", q.view(u8), rq.view(u8)), ("s", s, rs), ("qt", qt.view(u8), tq.view(u8)), ("st", st, ts)):
        if not torch.equal(a, b):
            return f"{name} differs from the recipe in {(a != b).sum().item()} of {a.numel()} entries"
    return None


def measure(m: int, k: int, fmt: str, pow2: bool) -> dict:
    from autotune.timing import time_ms
    from cute_kernels.fp8.quantize_ops import quantize_rows_and_cols
    from cute_kernels.fp8.recipe import quantize_1x128

    torch.manual_seed(0)
    x = (torch.randn(m, k, device="cuda") * torch.logspace(-2, 2, k, device="cuda")).bfloat16()
    row = {"shape": f"{m}x{k}", "check": check(x, fmt, pow2) or "bitwise equal"}
    dst = torch.empty_like(x)
    kernel_ms = time_ms(lambda: quantize_rows_and_cols(x, fmt, pow2=pow2), batch=1, iters=30)
    copy_ms = time_ms(lambda: dst.copy_(x), batch=1, iters=30)
    torch_ms = time_ms(lambda: (quantize_1x128(x, fmt, pow2=pow2), quantize_1x128(x.t(), fmt, pow2=pow2)),
                       batch=1, iters=10)
    nbytes = moved_bytes(m, k)
    row.update(kernel_ms=kernel_ms, copy_ms=copy_ms, torch_ms=torch_ms, kernel_gbps=nbytes / kernel_ms / 1e6,
               copy_gbps=4 * m * k / copy_ms / 1e6)
    row["pct_of_copy"] = 100 * row["kernel_gbps"] / row["copy_gbps"]
    return row


def uneven_splits(m: int, experts: int) -> list[int]:
    """E uneven token counts summing to m (most experts end in a partial 128-token block); equal
    ones where m / E is too small to vary."""
    step = 37 if m // experts > 37 else 0
    base = [m // experts + (step * (e % 3) - step) for e in range(experts)]
    base[-1] += m - sum(base)
    return base


def grouped_moved_bytes(m: int, k: int, experts: int, rows: bool) -> int:
    """Read 2MK; write the padded copy (upper bound of blocks for tensor splits) and its scales, and
    with `rows` the row-wise copy and its scales."""
    blocks = (m + 127 * experts) // 128
    kb = -(-k // 128)
    return 2 * m * k + k * blocks * 128 + 4 * k * blocks + ((m * k + 4 * m * kb) if rows else 0)


def check_grouped(x, splits, fmt: str, pow2: bool) -> str | None:
    """None when both grouped kernels' outputs equal the reference's, else what differs."""
    from cute_kernels.fp8.grouped_tokens import quantize_cols_grouped_reference
    from cute_kernels.fp8.quantize_ops import quantize_cols_grouped, quantize_rows_and_cols_grouped
    from cute_kernels.fp8.recipe import quantize_1x128

    u8 = torch.uint8
    rqt, rst, rcu = quantize_cols_grouped_reference(x, splits, fmt, pow2=pow2)
    rq, rs = quantize_1x128(x, fmt, pow2=pow2)
    qt, st, cu = quantize_cols_grouped(x, splits, fmt, pow2=pow2)
    dq, ds, dqt, dst_, dcu = quantize_rows_and_cols_grouped(x, splits, fmt, pow2=pow2)
    pairs = (("qt", qt.view(u8), rqt.view(u8)), ("st", st, rst), ("cu_padded", cu, rcu),
             ("dual q", dq.view(u8), rq.view(u8)), ("dual s", ds, rs), ("dual qt", dqt.view(u8), rqt.view(u8)),
             ("dual st", dst_, rst), ("dual cu_padded", dcu, rcu))
    for name, a, b in pairs:
        if a.shape != b.shape or not torch.equal(a, b):
            return f"{name} differs from the reference"
    return None


def measure_grouped(m: int, k: int, experts: int, fmt: str, pow2: bool) -> list[dict]:
    from autotune.timing import time_ms
    from cute_kernels.fp8.quantize_ops import quantize_cols_grouped, quantize_rows_and_cols_grouped

    torch.manual_seed(0)
    x = (torch.randn(m, k, device="cuda") * torch.logspace(-2, 2, k, device="cuda")).bfloat16()
    splits = torch.tensor(uneven_splits(m, experts), dtype=torch.int32, device="cuda")
    verdict = check_grouped(x, splits, fmt, pow2) or "bitwise equal"
    dst = torch.empty_like(x)
    copy_ms = time_ms(lambda: dst.copy_(x), batch=1, iters=30)
    rows = []
    for name, fn, with_rows in (("grouped cols", quantize_cols_grouped, False),
                                ("grouped rows+cols", quantize_rows_and_cols_grouped, True)):
        kernel_ms = time_ms(lambda: fn(x, splits, fmt, pow2=pow2), batch=1, iters=30)
        row = {"shape": f"{m}x{k} E={experts} {name}", "check": verdict, "kernel_ms": kernel_ms, "copy_ms": copy_ms,
               "torch_ms": float("nan"), "copy_gbps": 4 * m * k / copy_ms / 1e6,
               "kernel_gbps": grouped_moved_bytes(m, k, experts, with_rows) / kernel_ms / 1e6}
        row["pct_of_copy"] = 100 * row["kernel_gbps"] / row["copy_gbps"]
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated MxK (K a multiple of 16)")
    ap.add_argument("--format", default="e4m3", choices=("e4m3", "e5m2"))
    ap.add_argument("--pow2", action="store_true", help="power-of-two scales")
    ap.add_argument("--experts", type=int, default=0,
                    help="also the grouped kernels with this many experts (GPU-tensor splits); 0: dense only")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args(argv)
    shapes = _shapes(args.shapes)
    if not torch.cuda.is_available():
        print("bench_quantize needs a CUDA GPU", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name()
    nominal = next((v for key, v in NOMINAL_TBPS.items() if key in name), None)
    if args.experts < 0:
        ap.error("--experts must be >= 0")
    rows = [measure(m, k, args.format, args.pow2) for m, k in shapes]
    if args.experts:
        rows += [r for m, k in shapes for r in measure_grouped(m, k, args.experts, args.format, args.pow2)]
    lines = [f"Dual FP8 quantization ({args.format}{', pow2' if args.pow2 else ''}), {name}, L2 flushed, median", "",
             "| shape | check | kernel ms | GB/s | % of d2d copy | % of nominal HBM | copy GB/s | torch ms |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pct_nom = f"{100 * r['kernel_gbps'] / (nominal * 1e3):.0f}" if nominal else "-"
        lines.append(f"| {r['shape']} | {r['check']} | {r['kernel_ms']:.4f} | {r['kernel_gbps']:.0f} | "
                     f"{r['pct_of_copy']:.0f} | {pct_nom} | {r['copy_gbps']:.0f} | {r['torch_ms']:.3f} |")
    text = "\n".join(lines)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_quantize.md"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(args.out, "bench_quantize.json"), "w") as f:
            json.dump({"device": name, "format": args.format, "pow2": args.pow2, "experts": args.experts, "rows": rows}, f, indent=1)
    print(text)
    return 1 if any(r["check"] != "bitwise equal" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
