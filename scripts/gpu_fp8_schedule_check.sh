#!/usr/bin/env bash
# One GPU call (2026-12-03 19:25): FP8 ping-pong tiles and what landed after the 19:06 verification.
# - GPU tests: FP8 ping-pong (dense, grouped, fused dgrad: bitwise the cooperative tile's), the FP8 step
#   (the wgrad="fp8" kernel-vs-recipe fix, the staged weight gradient now the default)
# - bench_fp8 GEMM + grouped tables (ping-pong rows next to 128x128 / 128x256, burst and sustained)
# - bench_fp8 step table (the FP8 step with the staged weight gradient by default)
# - bench_host_overhead (the E=8 eager step against its CUDA-graph replay, issue 27)
# Logs to $OUT (default ./gpu_out), at most 8 files.  After the wheels are installed (docs/gpu-staging.md):
#   source .gpu/p2/setup.sh && bash scripts/gpu_fp8_schedule_check.sh
# SKIP_TESTS=1 / SKIP_GEMM=1 / SKIP_STEP=1 / SKIP_HOST=1 leave parts out.
source "$(dirname "${BASH_SOURCE[0]}")/gpu_preamble.sh"  # $out, PYTHONPATH, $out/device.txt
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -q --tb=short -p no:cacheprovider -n "${PYTEST_WORKERS:-14}" \
    tests/test_fp8_pingpong_gpu.py tests/test_fp8_mlp_gpu.py tests/test_fp8_wgrad_gpu.py \
    2>&1 | tail -40 > "$out/gpu_tests.log"
  tail -3 "$out/gpu_tests.log"
fi
if [ "${SKIP_GEMM:-0}" != 1 ]; then
  timeout "${GEMM_TIMEOUT:-200}" python3 -m benchmarks.bench_fp8 --no-step --no-wgrad > "$out/bench_fp8_gemm.txt" 2>&1
  grep -E "^\||bitwise|failed|target" "$out/bench_fp8_gemm.txt"
fi
if [ "${SKIP_STEP:-0}" != 1 ]; then
  timeout 90 python3 -m benchmarks.bench_fp8 --no-gemm --no-grouped --no-wgrad 2>&1 | grep -E "^\||target" > "$out/bench_fp8_step.md"
  cat "$out/bench_fp8_step.md"
fi
if [ "${SKIP_HOST:-0}" != 1 ]; then
  timeout 60 python3 -m benchmarks.bench_host_overhead > "$out/host_overhead.txt" 2>&1
  tail -6 "$out/host_overhead.txt"
fi
rm -f "$out"/*.json "$out"/bench_fp8.md  # at most 8 files come back
