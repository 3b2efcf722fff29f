#!/usr/bin/env bash
# One GPU call for the FP8 family work (issue 24): the whole GPU suite (PYTEST_WORKERS
# processes), the family FP8 GPU tests, bench_fp8 (family vs fork vs torch._scaled_mm),
# bench_quantize.  Logs go to $OUT (default ./gpu_out).  Run after the wheels are installed
# (docs/gpu-staging.md): source .gpu/p2/setup.sh && bash scripts/gpu_fp8_family.sh
# SKIP_SUITE=1 leaves the suite out; BENCH_ONLY=1 runs only the benchmarks; NCU=1 adds ncu of the
# FP8 GEMMs (scripts/ncu_fp8.py); EXTRA="cmd; cmd" runs more commands at the end (their output to
# $out/extra.log).
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
timeout ${FP8_BENCH_S:-300} python3 -m benchmarks.bench_fp8 ${FP8_BENCH_ARGS:-} 2>&1 | tee "$out/bench_fp8.log" | tail -40
if [ "${SKIP_QUANT:-0}" != 1 ]; then
  timeout 60 python3 -m benchmarks.bench_quantize 2>&1 | tee "$out/bench_quantize.log" | tail -12
fi
if [ "${NCU:-0}" = 1 ]; then
  for c in 128x128 128x256 fc1; do
    timeout 60 ncu --clock-control none --kernel-name regex:Sm90Gemm --launch-skip 2 --launch-count 1 --section SpeedOfLight \
      --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
      python3 scripts/ncu_fp8.py $c > /tmp/ncu_$c.txt 2>&1
    grep -E "Duration|SM Frequency|Compute \(SM\) Throughput|Memory Throughput|Warp Cycles Per Issued|Issue Slots Busy|No Eligible|Stall|Max Bandwidth|Mem Busy|Mem Pipes Busy|L2 Hit Rate|L1/TEX Hit Rate|SM Busy|Executed Ipc" /tmp/ncu_$c.txt | sed "s/^/[$c] /" | tee -a "$out/ncu_fp8.txt"
  done
fi
if [ -n "${EXTRA:-}" ]; then
  bash -c "$EXTRA" > "$out/extra.log" 2>&1
  tail -40 "$out/extra.log"
fi
rm -f "$out"/*.json  # at most 8 files come back from a call: the tables and logs
