"""Config comparison of the grouped (MoE) GEMMs of one MLP step, against torch._grouped_mm.

    python -m benchmarks.bench_grouped_configs [--out table.md] [--experts 8 128]

For each MoE shape (2688 -> 1856, tokens split evenly) and each of the step's five
grouped GEMM kinds (forward FC1+SReLU and FC2, FC2 dgrad+dSReLU, FC1 dgrad, the
per-expert weight gradient) it times the config the op would use (tuned or default)
and a few candidates: B multicast over 2x1 clusters for the M-grouped kernels (each
expert's tiles rounded up to whole clusters) and, for the K-grouped weight gradient,
tile shapes whose epilogue buffers hold a whole tile.  Every candidate's output is
checked against the op's own config first (relative error), so a wrong kernel cannot
post a time.  `--gemms wgrad` times only the GEMMs whose name holds that word.
CUDA events, L2 flushed, median (autotune.timing.time_ms).
"""
from __future__ import annotations

import argparse
import datetime
import sys

import torch

from autotune.timing import time_ms, tflops
from benchmarks.report import emit
from cute_kernels import GemmConfig, fc1_srelu, fc2, fc2_dgrad_dsrelu, weight_grad

H, F = 2688, 1856
TOKENS = {8: 16384, 128: 32768}

M_GROUPED_CANDIDATES = {
    "128x192 c2x1": GemmConfig(tile_n=192, cluster_m=2, cluster_n=1),
    "128x256 c2x1": GemmConfig(tile_n=256, cluster_m=2, cluster_n=1),
    "128x192 c2x2": GemmConfig(tile_n=192, cluster_m=2, cluster_n=2),
}
# The weight gradient's K (tokens per expert) is short, so its epilogue weighs: these
# vary how much of the tile the epilogue buffers hold (epi_n x epi_stages columns; a
# whole tile lets the stores drain during the next tile's mainloop).
WGRAD_CANDIDATES = {
    "128x192 c1x2 epi 32x4": GemmConfig(tile_n=192, cluster_m=1, cluster_n=2, epi_n=32, epi_stages=4),
    "128x192 c1x2 epi 64x3 (whole tile)": GemmConfig(tile_n=192, cluster_m=1, cluster_n=2, epi_n=64, epi_stages=3),
    "128x192 c2x1 epi 64x3 (whole tile)": GemmConfig(tile_n=192, cluster_m=2, cluster_n=1, epi_n=64, epi_stages=3),
    "128x192 c2x2 epi 64x3 (whole tile)": GemmConfig(tile_n=192, cluster_m=2, cluster_n=2, epi_n=64, epi_stages=3),
    "128x128 c1x2 epi 64x2 (whole tile)": GemmConfig(tile_n=128, cluster_m=1, cluster_n=2, epi_n=64, epi_stages=2),
    "128x128 c2x2 epi 64x2 (whole tile)": GemmConfig(tile_n=128, cluster_m=2, cluster_n=2, epi_n=64, epi_stages=2),
    "128x256 c1x2 epi 64x4 (whole tile)": GemmConfig(tile_n=256, cluster_m=1, cluster_n=2, epi_n=64, epi_stages=4),
    "128x256 c2x1 epi 64x4 (whole tile)": GemmConfig(tile_n=256, cluster_m=2, cluster_n=1, epi_n=64, epi_stages=4),
}


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def problems(e: int):
    """(name, flops, torch baseline, op(config) -> output, candidates) of the step's grouped GEMMs."""
    m = TOKENS[e]
    torch.manual_seed(e)
    splits = [m // e] * e
    offs = torch.tensor(splits, device="cuda").cumsum(0).to(torch.int32)
    x = torch.randn(m, H, device="cuda").bfloat16()
    w1 = (torch.randn(e, F, H, device="cuda") / H ** 0.5).bfloat16()
    w2 = (torch.randn(e, H, F, device="cuda") / F ** 0.5).bfloat16()
    pre = torch.randn(m, F, device="cuda").bfloat16()
    post = torch.relu(pre).square()
    dy = torch.randn(m, H, device="cuda").bfloat16()
    fl = 2.0 * m * H * F
    return [
        ("FC1+SReLU fwd", fl, lambda: torch.relu(torch._grouped_mm(x, w1.transpose(-2, -1), offs=offs)).square(),
         lambda c: fc1_srelu(x, w1, m_splits=splits, store_preact=False, config=c)[1], M_GROUPED_CANDIDATES),
        ("FC2 fwd", fl, lambda: torch._grouped_mm(post, w2.transpose(-2, -1), offs=offs),
         lambda c: fc2(post, w2, m_splits=splits, config=c), M_GROUPED_CANDIDATES),
        ("FC2 dgrad+dSReLU", fl, lambda: torch._grouped_mm(dy, w2, offs=offs),
         lambda c: fc2_dgrad_dsrelu(dy, w2, pre, m_splits=splits, config=c)[0], M_GROUPED_CANDIDATES),
        ("FC1 dgrad", fl, lambda: torch._grouped_mm(pre, w1, offs=offs),
         lambda c: fc2(pre, w1.transpose(-2, -1), m_splits=splits, config=c), M_GROUPED_CANDIDATES),
        ("wgrad dy^T post", fl, lambda: torch._grouped_mm(dy.t(), post, offs=offs),
         lambda c: weight_grad(dy, post, m_splits=splits, config=c), WGRAD_CANDIDATES),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--experts", type=int, nargs="+", default=[8, 128])
    ap.add_argument("--gemms", nargs="+", default=None,
                    help="only the GEMMs whose name contains one of these words (e.g. wgrad dgrad)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_grouped_configs needs a CUDA GPU", file=sys.stderr)
        return 2
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"Grouped GEMM configs, {torch.cuda.get_device_name()}, {now}, bf16, tokens split evenly, "
             "L2 flushed, median (ms; TFLOP/s in brackets; torch = torch._grouped_mm, the SReLU not included)", "",
             "| E | GEMM | torch | op's config | candidate | candidate ms | vs op's config | rel err vs op |",
             "|---|---|---|---|---|---|---|---|"]
    for e in args.experts:
        for name, fl, torch_fn, op, candidates in problems(e):
            if args.gemms and not any(g in name for g in args.gemms):
                continue
            t_torch = time_ms(torch_fn)
            ref = op(None)
            t_op = time_ms(lambda: op(None))
            head = f"| {e} | {name} | {t_torch:.3f} ({tflops(fl, t_torch):.0f}) | {t_op:.3f} ({tflops(fl, t_op):.0f})"
            for cname, cfg in candidates.items():
                try:
                    err = _rel_err(op(cfg), ref)
                except Exception as exc:  # a candidate the op rejects: say why, go on
                    lines.append(f"{head} | {cname} | rejected: {str(exc)[:80]} | - | - |")
                    print(lines[-1], flush=True)
                    continue
                t = time_ms(lambda: op(cfg)) if err < 1e-2 else float("nan")
                lines.append(f"{head} | {cname} | {t:.3f} ({tflops(fl, t):.0f}) | {t_op / t:.3f}x | {err:.1e} |")
                print(lines[-1], flush=True)
    emit("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
