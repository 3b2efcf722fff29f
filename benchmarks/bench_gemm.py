"""Benchmark of fc1_srelu and fc2 (dense and grouped) against torch in the same run.

    python -m benchmarks.bench_gemm [--out results.md] [--config '{"tile_n": 128}']

Prints a markdown table: time, TFLOP/s and speedups over the torch baselines:
FC1: torch `x @ w.T` alone and `relu(x @ w.T).square()`; grouped: `torch._grouped_mm`
with and without relu^2 after it.  In the same run, the shape's torch function (FC1:
matmul + relu^2, FC2: the matmul) compiled by torch.compile in each of `--compile-modes`
(default: "default" and "max-autotune-no-cudagraphs"; "none" skips them: max-autotune
compiles take minutes per shape).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys

import torch

from autotune.shapes import GEMM_SHAPES, even_splits, shape_label
from autotune.timing import host_us, time_ms, tflops
from benchmarks.compiled_baseline import COMPILE_MODES, compiled, parse_modes, short
from benchmarks.report import emit


def _grouped_mm(x, w_t, offs):
    return torch._grouped_mm(x, w_t, offs=offs)


def _mm(x, w):
    return x @ w.t()


def _mm_act(x, w):
    return torch.relu(x @ w.t()).square()


def _grouped_act(x, w_t, offs):
    return torch.relu(torch._grouped_mm(x, w_t, offs=offs)).square()


def compiled_baselines(fn, args: tuple, ref: torch.Tensor, modes) -> dict:
    """mode -> GPU ms of `fn(*args)` compiled in that mode, or an error string (a failed or
    wrong compile is reported in its column; the rest of the row stands)."""
    out = {}
    for mode in modes:
        try:
            cfn = compiled(fn, mode)
            got = cfn(*args).float()
            err = ((got - ref).norm() / ref.norm()).item()
            if not err < 2e-2:
                raise RuntimeError(f"compiled result off by {err:.1e}")
            out[mode] = time_ms(lambda: cfn(*args))
        except Exception as e:  # reported, not fatal
            out[mode] = f"{type(e).__name__}: {e}"[:120]
    return out


def bench_shape(s: dict, config=None, baselines: bool = True, compile_modes=COMPILE_MODES) -> dict:
    import cute_kernels as ck

    m, n, k, experts = s["m"], s["n"], s["k"], s.get("experts")
    dt = torch.bfloat16
    x = torch.randn(m, k, device="cuda", dtype=dt) / k ** 0.25
    w = torch.randn(*((experts, n, k) if experts else (n, k)), device="cuda", dtype=dt) / k ** 0.25
    flops = 2.0 * m * n * k
    row = {"shape": shape_label(s)}
    if experts:
        splits = even_splits(m, experts)
        offs = torch.tensor(splits, device="cuda").cumsum(0).to(torch.int32)
        w_t = w.transpose(-2, -1)
        mm = lambda: _grouped_mm(x, w_t, offs)
        if s["kernel"] == "fc1_srelu":
            ours = lambda: ck.fc1_srelu(x, w, m_splits=splits, config=config)
            ref_act = lambda: torch.relu(_grouped_mm(x, w_t, offs)).square()
        else:
            ours = lambda: ck.fc2(x, w, m_splits=splits, config=config)
            ref_act = None
    else:
        mm = lambda: x @ w.t()
        if s["kernel"] == "fc1_srelu":
            ours = lambda: ck.fc1_srelu(x, w, config=config)
            ref_act = lambda: torch.relu(x @ w.t()).square()
        else:
            ours = lambda: ck.fc2(x, w, config=config)
            ref_act = None
    # correctness spot check on the benchmark data itself
    got = ours()
    got = got[1] if isinstance(got, tuple) else got
    ref = mm().float()
    if s["kernel"] == "fc1_srelu":
        ref = torch.relu(ref).square()
    err = ((got.float() - ref).norm() / ref.norm()).item()
    row["rel_err"] = err
    row["ours_ms"] = time_ms(ours)
    row["host_us"] = host_us(ours)
    if not baselines:
        row["ours_tflops"] = tflops(flops, row["ours_ms"])
        return row
    row["torch_mm_ms"] = time_ms(mm)
    row["ours_tflops"] = tflops(flops, row["ours_ms"])
    row["torch_mm_tflops"] = tflops(flops, row["torch_mm_ms"])
    row["vs_torch_mm"] = row["torch_mm_ms"] / row["ours_ms"]
    if ref_act is not None:
        row["torch_act_ms"] = time_ms(ref_act)
        row["vs_torch_act"] = row["torch_act_ms"] / row["ours_ms"]
    if compile_modes:  # the shape's torch function compiled: FC1 matmul + relu^2, FC2 the matmul
        if experts:
            fn, args = (_grouped_act if s["kernel"] == "fc1_srelu" else _grouped_mm), (x, w_t, offs)
        else:
            fn, args = (_mm_act if s["kernel"] == "fc1_srelu" else _mm), (x, w)
        row["compile_ms"] = compiled_baselines(fn, args, ref, compile_modes)
    return row


def format_table(rows: list[dict]) -> str:
    """The markdown table; torch.compile columns (ms and our speedup) for every mode any row has."""
    modes = list(dict.fromkeys(m for r in rows for m in r.get("compile_ms", {})))
    compile_head = "".join(f" {short(m)} ms | vs {short(m)} |" for m in modes)
    lines = ["| shape | ours ms | TFLOP/s | torch mm ms | torch mm TFLOP/s | vs torch mm | torch mm+relu^2 ms | vs torch mm+relu^2 |"
             + compile_head + " rel err | host us/call |",
             "|---|---|---|---|---|---|---|---|" + "---|---|" * len(modes) + "---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | ERROR: {r['error']} |||||||")
            continue
        act = f"{r['torch_act_ms']:.3f}" if "torch_act_ms" in r else "-"
        vs_act = f"{r['vs_torch_act']:.2f}x" if "vs_torch_act" in r else "-"
        compile_cols = ""
        for m in modes:
            c = r.get("compile_ms", {}).get(m)
            if isinstance(c, float):
                compile_cols += f" {c:.3f} | {c / r['ours_ms']:.2f}x |"
            else:
                compile_cols += f" {'-' if c is None else 'ERROR: ' + c} | - |"
        lines.append(f"| {r['shape']} | {r['ours_ms']:.3f} | {r['ours_tflops']:.0f} | {r['torch_mm_ms']:.3f} | "
                     f"{r['torch_mm_tflops']:.0f} | {r['vs_torch_mm']:.2f}x | {act} | {vs_act} |{compile_cols} "
                     f"{r['rel_err']:.1e} | {r['host_us']:.0f} |")
    return "\n".join(lines)


SWEEP_CONFIGS = [
    {},
    {"swizzle": 1}, {"swizzle": 2}, {"swizzle": 4}, {"raster": "m"},
    {"cluster_m": 1, "cluster_n": 2}, {"cluster_m": 1, "cluster_n": 1},
    {"epi_n": 64}, {"epi_stages": 3}, {"epi_stages": 4},
    {"tile_n": 128}, {"tile_n": 192}, {"tile_n": 256},
    {"schedule": "pingpong", "tile_m": 64},
]


def sweep(args):
    """Time SWEEP_CONFIGS (fields over the shape's default config) on the selected shapes."""
    import dataclasses

    import cute_kernels as ck
    from cute_kernels.config import ConfigError

    for s in GEMM_SHAPES:
        if args.only and args.only not in shape_label(s):
            continue
        base = ck.default_config(s["m"], s["n"], s["k"], grouped=bool(s.get("experts")))
        print(f"## sweep {shape_label(s)} (default {base})", flush=True)
        for fields in SWEEP_CONFIGS:
            cfg = dataclasses.replace(base, **fields)
            try:
                ck.validate(cfg, num_outputs=2 if s["kernel"] == "fc1_srelu" else 1, grouped=bool(s.get("experts")))
                r = bench_shape(s, cfg, baselines=False)
                print(f"{json.dumps(fields):70s} {r['ours_ms']:.3f} ms {r['ours_tflops']:.0f} TFLOP/s err {r['rel_err']:.1e}", flush=True)
            except ConfigError as e:
                print(f"{json.dumps(fields):70s} invalid: {e}"[:160])
            except Exception as e:
                print(f"{json.dumps(fields):70s} ERROR {type(e).__name__}: {e}"[:300], flush=True)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write the markdown table here too")
    p.add_argument("--config", help="GemmConfig fields as JSON, applied to every shape")
    p.add_argument("--only", help="substring of the shape label to run")
    p.add_argument("--sweep", action="store_true", help="time a fixed list of configs on each selected shape")
    p.add_argument("--compile-modes", default=",".join(COMPILE_MODES),
                   help="torch.compile modes of the compiled baselines, comma-separated, or 'none'")
    args = p.parse_args(argv)
    try:
        compile_modes = parse_modes(args.compile_modes)
    except ValueError as e:
        p.error(str(e))
    if not torch.cuda.is_available():
        print("bench_gemm needs a CUDA GPU", file=sys.stderr)
        return 2
    from cute_kernels import GemmConfig

    config = GemmConfig(**json.loads(args.config)) if args.config else None
    if args.sweep:
        return sweep(args)
    rows = []
    for s in GEMM_SHAPES:
        if args.only and args.only not in shape_label(s):
            continue
        try:
            rows.append(bench_shape(s, config, compile_modes=compile_modes))
        except Exception as e:  # a failing shape is reported, the rest still run
            rows.append({"shape": shape_label(s), "error": f"{type(e).__name__}: {e}"[:300]})
        print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    head = f"GEMM benchmark, {torch.cuda.get_device_name()}, torch {torch.__version__}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, bf16, L2 flushed, median of 30" \
        + (f"; torch.compile modes: {', '.join(compile_modes)}" if compile_modes else "")
    emit(head + "\n\n" + format_table(rows), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
