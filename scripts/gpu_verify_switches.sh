#!/usr/bin/env bash
# The one GPU call that checks what landed since the last hardware run (updated 2026-12-03 23:20 UTC,
# for the next session's first call):
# - GPU tests, each file in its own process (gpu_triage_files.sh): the grouped FP8 column quantizer
#   without host-side block tables, the dual grouped quantizer and the requantization from the saved
#   FP8 copy (CUTE_KERNELS_FP8_GROUPED_WGRAD's step path), FP8 weight gradients written in bf16 by the
#   kernel, the FP8 step tests, the FP8 step as custom ops under torch.compile(fullgraph=True) and
#   reduce-overhead (CUTE_KERNELS_FP8_COMPILE_OPS=1, set by the test file)
# - bench_quantize --experts 8: the grouped quantizers' GB/s next to a device copy (bitwise checks)
# - bench_fp8 wgrad + step tables with the grouped FP8 wgrad row (BENCH_FP8_GROUPED_WGRAD=1)
# - bench_host_overhead: host time per step, the direct TVM-FFI call A/B, issue 27's verdicts
# Logs to $OUT (default ./gpu_out), at most 8 files.  After the wheels are installed (docs/gpu-staging.md):
#   source .gpu/p2/setup.sh && bash scripts/gpu_verify_switches.sh
# SKIP_TESTS=1 / SKIP_QUANT=1 / SKIP_STEP=1 / SKIP_HOST=1 leave parts out.
source "$(dirname "${BASH_SOURCE[0]}")/gpu_preamble.sh"  # $out, PYTHONPATH, $out/device.txt
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  TEST_TIMEOUT="${TEST_TIMEOUT:-200}" bash scripts/gpu_triage_files.sh tests/test_fp8_grouped_quantize_gpu.py \
    tests/test_fp8_grouped_wgrad_gpu.py tests/test_fp8_wgrad_gpu.py tests/test_dequantize_gpu.py \
    tests/test_quantize_gpu.py tests/test_fp8_mlp_gpu.py tests/test_fp8_graph_gpu.py tests/test_fp8_gpu.py \
    tests/test_fp8_wgrad_accumulate_gpu.py tests/test_fp8_host_gpu.py tests/test_fp8_compile_ops_gpu.py \
    tests/test_fp8_compile.py
fi
if [ "${SKIP_QUANT:-0}" != 1 ]; then
  timeout 60 python3 -m benchmarks.bench_quantize --shapes 16384x2688,16384x1856 --experts 8 \
    > "$out/bench_quantize.txt" 2>&1
  grep -E "^\||bitwise|rror" "$out/bench_quantize.txt" | head -30
fi
if [ "${SKIP_STEP:-0}" != 1 ]; then
  BENCH_FP8_GROUPED_WGRAD=1 timeout 160 python3 -m benchmarks.bench_fp8 --no-gemm --no-grouped \
    > "$out/bench_fp8_wgrad_step.txt" 2>&1
  grep -E "^\||target|rror" "$out/bench_fp8_wgrad_step.txt"
fi
if [ "${SKIP_HOST:-0}" != 1 ]; then
  timeout 90 python3 -m benchmarks.bench_host_overhead > "$out/host_overhead.txt" 2>&1
  tail -9 "$out/host_overhead.txt"
fi
rm -f "$out"/*.json "$out"/bench_fp8.md  # at most 8 files come back
