"""CPU model of the FP8 GEMM kernel's arithmetic (cute_kernels/sm90/mainloop_fp8.py), to tell FP8
tensor-core rounding from a kernel bug when a GPU test's elementwise bound fails.

Model (Hopper FP8 WGMMA, as measured by SageAttention2 and DeepSeek-V3): per m64nNk32
instruction, the 32 exact products and the incoming accumulator are aligned to the largest
exponent and truncated toward zero to `--bits` bits below it, summed, and the sum is kept with
13 mantissa bits; the kernel then promotes each 128-K tile's sum into fp32 with
SA[row, kt] * SB[n block, kt] and rounds the output to bf16.  The operands are those of
tests/test_fp8_gpu.py (_operands, seed m + n + k).  With --bits 14 the model reproduced the
first H200 run's max error of (513, 1024, 4096) to 12 digits (0.2581202066626 vs ...627).

Prints, per shape: max error, max err / (8e-3 |ref| + 2e-3 mean|ref|) (the first run's bound),
max (err - 8e-3 |ref|) / sum_k |a_k b_k| (what tests/test_fp8_gpu.ACC_BOUND = 2^-13 covers).
Usage: PYTHONPATH=$PWD python scripts/fp8_accumulation_model.py [--rows 128] [--bits 14]
(about 10 s per shape on one core with --rows 128).
"""
from __future__ import annotations

import argparse

import torch

from cute_kernels.fp8.recipe import dequantize, quantize_128x128, quantize_1x128

SHAPES = [(256, 256, 256), (77, 136, 272), (1000, 384, 1040), (513, 1024, 4096), (512, 1024, 4096),
          (513, 1024, 2048), (256, 1024, 1040)]


def keep_bits(x: torch.Tensor, bits: int) -> torch.Tensor:
    """x with `bits` mantissa bits after the leading one, truncated toward zero."""
    m, e = torch.frexp(x)
    scale = 2.0 ** (bits + 1)
    return torch.ldexp(torch.trunc(m * scale) / scale, e)


def operands(m, n, k, seed):
    """tests/test_fp8_gpu._operands on the CPU."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    w = (torch.randn(n, k, generator=g) * 0.05).to(torch.bfloat16)
    x[::7] *= 8.0
    return quantize_1x128(x) + quantize_128x128(w)


def model_rows(xq, xs, wq, ws, rows, bits):
    """The kernel's bf16 output for `rows` under the model."""
    a, b = xq.float()[rows].double(), wq.float().double()
    n, k = b.shape
    acc = torch.zeros(len(rows), n)
    for kt in range(-(-k // 128)):
        blk = torch.zeros(len(rows), n, dtype=torch.float64)
        for c0 in range(kt * 128, min(k, kt * 128 + 128), 32):
            p = a[:, None, c0:c0 + 32] * b[None, :, c0:c0 + 32]  # exact
            c = keep_bits(blk, 13)
            top = torch.maximum(p.abs().amax(2), c.abs())
            _, e = torch.frexp(top)
            quantum = torch.ldexp(torch.ones_like(c), e - bits)[..., None]
            blk = keep_bits(keep_bits(c, 13) + (torch.trunc(p / quantum) * quantum).sum(2), 13)
        sc = xs[rows, kt:kt + 1] * ws[torch.arange(n) // 128, kt][None, :]
        acc = acc + blk.float() * sc
    return acc.to(torch.bfloat16)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=128, help="first rows of each problem to model")
    ap.add_argument("--bits", type=int, default=14)
    args = ap.parse_args()
    print(f"{'M,N,K':>16} {'max err':>10} {'old bound':>10} {'excess/sum|ab|':>15}")
    for m, n, k in SHAPES:
        xq, xs, wq, ws = operands(m, n, k, m + n + k)
        a, b = dequantize(xq, xs).double(), dequantize(wq, ws).double()
        ref = a @ b.T
        rows = torch.arange(min(m, args.rows))
        d = torch.cat([model_rows(xq, xs, wq, ws, rows[i:i + 64], args.bits) for i in range(0, len(rows), 64)])
        err = (d.double() - ref[rows]).abs()
        old = (err / (8e-3 * ref[rows].abs() + 2e-3 * ref.abs().mean())).max().item()
        excess = ((err - 8e-3 * ref[rows].abs()).clamp_min(0) / (a[rows].abs() @ b.abs().T)).max().item()
        print(f"{str((m, n, k)):>16} {err.max().item():10.4g} {old:10.3f} {excess:15.3g}", flush=True)


if __name__ == "__main__":
    main()
