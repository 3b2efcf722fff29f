#!/usr/bin/env bash
# One GPU call for the FP8 family work (issue 24): the whole GPU suite (PYTEST_WORKERS
# processes), the family FP8 GPU tests, bench_fp8 (family vs fork vs torch._scaled_mm),
# bench_quantize.  Logs go to $OUT (default ./gpu_out).  Run after the wheels are installed
# (docs/gpu-staging.md): source .gpu/p2/setup.sh && bash scripts/gpu_fp8_family.sh
# SKIP_SUITE=1 leaves the suite out; BENCH_ONLY=1 runs only the benchmarks.
set -uo pipefail
out="${OUT:-gpu_out}"; mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.draw,temperature.gpu --format=csv | tee "$out/device.txt"
date -u | tee -a "$out/device.txt"
if [ "${BENCH_ONLY:-0}" != 1 ]; then
  if [ "${SKIP_SUITE:-0}" != 1 ]; then
    timeout 330 python3 -m pytest -m gpu tests -q --tb=short -p no:cacheprovider -n "${PYTEST_WORKERS:-12}" \
      2>&1 | tail -60 > "$out/gpu_tests.log"
    tail -25 "$out/gpu_tests.log"
  else
    timeout 200 python3 -m pytest -q --tb=short -p no:cacheprovider -n 8 tests/test_fp8_family_gpu.py \
      tests/test_fp8_gpu.py 2>&1 | tail -40 > "$out/gpu_tests.log"
    tail -25 "$out/gpu_tests.log"
  fi
fi
timeout 150 python3 -m benchmarks.bench_fp8 --no-step 2>&1 | tee "$out/bench_fp8.log" | tail -40
timeout 60 python3 -m benchmarks.bench_quantize 2>&1 | tee "$out/bench_quantize.log" | tail -12
