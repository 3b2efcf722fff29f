#!/usr/bin/env bash
# The one GPU call that checks what landed since the last hardware run (updated 2026-12-03 17:30):
# - the CE row kernel (CUTE_KERNELS_CE_KERNEL) and the chunked loss: GPU tests
# - the staged FP8 weight-gradient mainloop (CUTE_KERNELS_FP8_WGRAD_STAGED): GPU tests, bench_fp8's wgrad table (row vs staged)
# - the FP8 step's host-path cuts (fp8host): the E=8 FP8 step profile (host vs GPU busy), bench_fp8's step table
# - the FP8 training check, 300 steps, AdamW and AdamW(fused=True) (issue 26's curves)
# - bench_host_overhead --profile-ops 30 (the bf16 E=8 step's host ops and launches, issue 27)
# Logs to $OUT (default ./gpu_out), at most 8 files.  After the wheels are installed (docs/gpu-staging.md):
#   source .gpu/p2/setup.sh && bash scripts/gpu_verify_switches.sh
# SKIP_TESTS=1 / SKIP_STEP=1 / SKIP_TRAIN=1 leave parts out.
source "$(dirname "${BASH_SOURCE[0]}")/gpu_preamble.sh"  # $out, PYTHONPATH, $out/device.txt
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout "${TEST_TIMEOUT:-120}" python3 -m pytest -q --tb=short -p no:cacheprovider -n "${PYTEST_WORKERS:-14}" \
    tests/test_softmax_xent_gpu.py tests/test_chunked_ce_gpu.py tests/test_fp8_host_gpu.py tests/test_fp8_mlp_gpu.py \
    tests/test_fp8_wgrad_gpu.py tests/test_mlp_gpu.py tests/test_launch_plan.py tests/test_mlp_host_path.py \
    2>&1 | tail -30 > "$out/gpu_tests.log"
  tail -3 "$out/gpu_tests.log"
fi
timeout 70 python3 -m benchmarks.bench_fp8 --no-gemm --no-grouped --no-step --no-sustained 2>&1 | grep -E "^\||target" > "$out/bench_fp8_tables.md"
cat "$out/bench_fp8_tables.md"
timeout 60 python3 scripts/profile_fp8_step.py --shape e8 --steps 4 > "$out/profile_fp8_e8.txt" 2>&1
grep "^## " "$out/profile_fp8_e8.txt"
if [ "${SKIP_STEP:-0}" != 1 ]; then
  timeout 70 python3 -m benchmarks.bench_fp8 --no-gemm --no-grouped --no-wgrad 2>&1 | grep -E "^\|" >> "$out/bench_fp8_tables.md"
  cat "$out/bench_fp8_tables.md"
fi
timeout 40 python3 -m benchmarks.bench_host_overhead --profile-ops 30 > "$out/host_ops.txt" 2>&1
grep -E "^#|per step|ms" "$out/host_ops.txt" | head -12
if [ "${SKIP_TRAIN:-0}" != 1 ]; then
  OUT="$out" timeout 150 python3 scripts/fp8_training_check.py --steps 300 > "$out/train.log" 2>&1
  tail -12 "$out/train.log"
fi
rm -f "$out"/*.json "$out"/bench_fp8.md  # at most 8 files come back
