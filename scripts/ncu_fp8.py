"""The FP8 GEMMs ncu profiles (scripts/gpu_fp8_family.sh NCU=1): 8192x16384x4096, the plain GEMM
at 128x128 (overlapped promotion) and 128x256 (split-N), FC1 with FP8 postact at 128x128 and
torch._scaled_mm rowwise (cuBLAS, the speed to reach), each
called three times (profile the third: `ncu --launch-skip 2 --launch-count 1` per kernel name).

    ncu --clock-control none --section SpeedOfLight --section WarpStateStats --section SchedulerStats \\
        python3 scripts/ncu_fp8.py [128x128|128x256|fc1]
"""
import argparse
import sys

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="FP8 GEMMs for ncu to profile")
    p.add_argument("case", nargs="?", default="128x128", choices=("128x128", "128x256", "fc1", "scaled_mm"))
    which = p.parse_args(argv).case
    if not torch.cuda.is_available():
        print("ncu_fp8 needs a CUDA GPU", file=sys.stderr)
        return 2
    from cute_kernels.config import GemmConfig
    from cute_kernels.fp8.ops import fp8_fc1_srelu, fp8_gemm
    from cute_kernels.fp8.recipe import quantize_1x128, quantize_128x128

    m, n, k = 8192, 16384, 4096
    xq, xs = quantize_1x128(torch.randn(m, k, device="cuda").bfloat16())
    wq, ws = quantize_128x128((torch.randn(n, k, device="cuda") * 0.02).bfloat16())
    xs = xs.t().contiguous().t()
    wide = GemmConfig(tile_m=128, tile_n=256, tile_k=128, cluster_m=2, cluster_n=1)
    for _ in range(3):
        if which == "128x128":
            fp8_gemm(xq, xs, wq, ws)
        elif which == "128x256":
            fp8_gemm(xq, xs, wq, ws, config=wide)
        elif which == "scaled_mm":  # torch's rowwise FP8 GEMM (cuBLAS) on the same shape: the bar
            torch._scaled_mm(xq, wq.t(), scale_a=torch.ones(m, 1, device="cuda"),
                             scale_b=torch.ones(1, n, device="cuda"), out_dtype=torch.bfloat16)
        else:
            fp8_fc1_srelu(xq, xs, wq, ws, store_preact=False)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
