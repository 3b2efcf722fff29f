#!/usr/bin/env bash
# One GPU call for the FP8 256x128 two-wave tile (sm90/mainloop_fp8.py run_split_m, 2026-12-03):
# - GPU tests: tests/test_fp8_tall_gpu.py (dense vs the float64 reference and bitwise vs 128x128,
#   FC1 FP8 postact bitwise vs 128x128, grouped with empty experts bitwise vs dense per expert; the
#   first launch of each variant runs the first-use self-check) and the FP8 family tests (unchanged tiles)
# - bench_fp8 GEMM table: rows "[256x128 c1x2]" / "[256x128 c2x1]" next to 128x128 and 128x256, burst
#   and at the power limit, with the "[256x128 ..] == 128x128 (bitwise)" checks
# Logs to $OUT (default ./gpu_out).  After the wheels are installed (docs/gpu-staging.md):
#   source .gpu/p2/setup.sh && bash scripts/gpu_fp8_tall_check.sh
# SKIP_TESTS=1 / SKIP_GEMM=1 leave parts out.
source "$(dirname "${BASH_SOURCE[0]}")/gpu_preamble.sh"  # $out, PYTHONPATH, $out/device.txt
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout "${TEST_TIMEOUT:-200}" python3 -m pytest -q --tb=short -p no:cacheprovider -n "${PYTEST_WORKERS:-14}" \
    tests/test_fp8_tall_gpu.py tests/test_fp8_family_gpu.py 2>&1 | tail -40 > "$out/gpu_tests.log"
  tail -3 "$out/gpu_tests.log"
fi
if [ "${SKIP_GEMM:-0}" != 1 ]; then
  timeout "${GEMM_TIMEOUT:-200}" python3 -m benchmarks.bench_fp8 --no-grouped --no-step --no-wgrad \
    > "$out/bench_fp8_gemm.txt" 2>&1
  grep -E "^\||bitwise|failed|target" "$out/bench_fp8_gemm.txt"
fi
rm -f "$out"/*.json "$out"/bench_fp8.md
