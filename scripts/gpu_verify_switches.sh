#!/usr/bin/env bash
# The one GPU call that checks what landed since the last hardware run (updated 2026-12-03 20:20 UTC,
# for the next session's first call):
# - GPU tests: the grouped FP8 weight gradient and its per-expert padded quantizer
#   (CUTE_KERNELS_FP8_GROUPED_WGRAD), FP8 scales in shared memory (CUTE_KERNELS_FP8_SMEM_SCALES), the FP8 step
#   in a CUDA graph (GPU-tensor splits kept on the device), the FP8 tests refactored into shared helpers
#   (ping-pong, 256x128, family), the FP8 step tests (tanh GPU test no longer needs a self-check), the
#   FP8 self-check of every variant (the grouped FP8 wgrad's first evidence); the FP8 weight gradients
#   added into an fp32 main_grad by the epilogue (CUTE_KERNELS_FP8_WGRAD_ACCUMULATE, issue 26, 20:55 UTC)
# - bench_fp8: GEMM table (scales-in-smem row vs 128x128; 256x128 / ping-pong rows), grouped table (c2x1
#   rows: the grouped >= 1.5x bf16 target), wgrad table (grouped E=8 rows), step table (the grouped
#   FP8 wgrad switch row; tuned FP8 entries)
# - bench_host_overhead: the E=8 eager step against its CUDA-graph replay (issue 27)
# Logs to $OUT (default ./gpu_out), at most 8 files.  After the wheels are installed (docs/gpu-staging.md):
#   source .gpu/p2/setup.sh && bash scripts/gpu_verify_switches.sh
# SKIP_TESTS=1 / SKIP_GEMM=1 / SKIP_STEP=1 / SKIP_HOST=1 leave parts out.
source "$(dirname "${BASH_SOURCE[0]}")/gpu_preamble.sh"  # $out, PYTHONPATH, $out/device.txt
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout "${TEST_TIMEOUT:-210}" python3 -m pytest -q --tb=short -p no:cacheprovider -n "${PYTEST_WORKERS:-14}" \
    tests/test_fp8_grouped_quantize_gpu.py tests/test_fp8_grouped_wgrad_gpu.py tests/test_fp8_smem_scales_gpu.py \
    tests/test_fp8_graph_gpu.py tests/test_fp8_pingpong_gpu.py tests/test_fp8_tall_gpu.py tests/test_fp8_family_gpu.py \
    tests/test_fp8_gpu.py tests/test_fp8_mlp_gpu.py tests/test_fp8_host_gpu.py \
    tests/test_fp8_wgrad_gpu.py tests/test_fp8_wgrad_accumulate_gpu.py \
    2>&1 | tail -40 > "$out/gpu_tests.log"
  tail -3 "$out/gpu_tests.log"
fi
if [ "${SKIP_GEMM:-0}" != 1 ]; then
  timeout "${GEMM_TIMEOUT:-170}" python3 -m benchmarks.bench_fp8 --no-step > "$out/bench_fp8_tables.txt" 2>&1
  grep -E "^\||bitwise|failed|target" "$out/bench_fp8_tables.txt"
fi
if [ "${SKIP_STEP:-0}" != 1 ]; then
  timeout 100 python3 -m benchmarks.bench_fp8 --no-gemm --no-grouped --no-wgrad 2>&1 | grep -E "^\||target" \
    > "$out/bench_fp8_step.md"
  cat "$out/bench_fp8_step.md"
fi
if [ "${SKIP_HOST:-0}" != 1 ]; then
  timeout 50 python3 -m benchmarks.bench_host_overhead > "$out/host_overhead.txt" 2>&1
  tail -5 "$out/host_overhead.txt"
fi
rm -f "$out"/*.json "$out"/bench_fp8.md  # at most 8 files come back
