#!/usr/bin/env bash
# One GPU call that decides the switches landed without a hardware run (2026-12-03): the new GPU
# tests, then each switch's benchmark with it off and on, in the same run.  Logs to $OUT (default
# ./gpu_out), at most 8 files.  Run after the wheels are installed (docs/gpu-staging.md):
#   source .gpu/p2/setup.sh && bash scripts/gpu_verify_switches.sh
# - CUTE_KERNELS_FP8_WGRAD_KERNEL=1: the dense FP8 weight-gradient kernel (fp8/wgrad_ops.py)
# - CUTE_KERNELS_FP8_DEQUANT_KERNEL=1: x back to bf16 for the bf16 weight gradient (sm90/dequantize.py)
# - CUTE_KERNELS_FP8_ROWS_ONLY=1: x, dy, dpreact quantized without the unread column-wise copies
# - routed_srelu_experts(fused_gather=True) and patch_nemotron_h(chunked_loss=True): bench_nemotron rows
# SKIP_TESTS=1 / SKIP_BENCH=1 leave parts out.
set -uo pipefail
out="${OUT:-gpu_out}"; mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.draw --format=csv > "$out/device.txt"; date -u >> "$out/device.txt"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout 240 python3 -m pytest -q --tb=short -p no:cacheprovider -n "${PYTEST_WORKERS:-14}" \
    tests/test_fp8_wgrad_gpu.py tests/test_dequantize_gpu.py tests/test_quantize_weight_gpu.py tests/test_quantize_gpu.py \
    tests/test_fp8_mlp_gpu.py tests/test_fp8_host_gpu.py tests/test_gather_gpu.py tests/test_chunked_ce_gpu.py \
    2>&1 | tail -40 > "$out/gpu_tests.log"
  tail -5 "$out/gpu_tests.log"
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  for sw in "" "CUTE_KERNELS_FP8_DEQUANT_KERNEL=1 CUTE_KERNELS_FP8_ROWS_ONLY=1" \
            "CUTE_KERNELS_FP8_DEQUANT_KERNEL=1 CUTE_KERNELS_FP8_ROWS_ONLY=1 CUTE_KERNELS_FP8_WGRAD_KERNEL=1"; do
    echo "## switches: ${sw:-none}" >> "$out/bench_fp8_step.log"
    env $sw timeout 90 python3 -m benchmarks.bench_fp8 --no-gemm --no-grouped --no-wgrad 2>&1 | grep -E "^\|" >> "$out/bench_fp8_step.log"
  done
  cat "$out/bench_fp8_step.log"
  # the E=8 FP8 step's host ops and GPU busy time with every switch on (2026-12-03: 2.58 ms wall, 1.89 GPU, 195 aten ops)
  CUTE_KERNELS_FP8_DEQUANT_KERNEL=1 CUTE_KERNELS_FP8_ROWS_ONLY=1 timeout 60 python3 scripts/profile_fp8_step.py \
    --shape e8 --steps 4 > "$out/profile_fp8_e8.txt" 2>&1
  grep "^## " "$out/profile_fp8_e8.txt"
  # is the FP8 GEMM's gap to torch._scaled_mm per tile (epilogue, tile changes: shrinks as K grows) or
  # in the mainloop (stays)?  ncu (2026-12-03): not memory-bound (max bandwidth 65%, L2 hit 84%), SM busy 67%
  for shape in 8192,16384,4096 8192,16384,8192 8192,16384,16384; do
    timeout 60 python3 -m benchmarks.bench_fp8 --no-step --no-grouped --no-wgrad --no-sustained --shape $shape 2>&1 \
      | grep -E "^\|" | sed "s/^/[$shape] /" >> "$out/bench_fp8_k_sweep.log"
  done
  cat "$out/bench_fp8_k_sweep.log"
  timeout 200 python3 -m benchmarks.bench_nemotron --auto-measured --budget-s 190 > "$out/nemotron.log" 2>&1
  grep -E "^\| |target" "$out/bench_nemotron.md" 2>/dev/null | head -40
fi
rm -f "$out"/*.json "$out"/*.png
