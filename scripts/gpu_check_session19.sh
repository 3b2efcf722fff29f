#!/usr/bin/env bash
# Session 19's second GPU call (2026-12-03): the grouped FP8 weight gradient's fault (the bisect of
# scripts/gpu_bisect_grouped_wgrad.sh with the empty-first-expert K start fixed), every FP8 GPU test
# file in its own process with the scales in shared memory on by default (gpu_triage_files.sh; the
# self-check of every FP8 variant, the staged twins among them, is tests/test_fp8_host_gpu.py), and
# the FP8 step table with the grouped FP8 weight-gradient row.  At most 8 files into $OUT.
#   source .gpu/p2/setup.sh && bash scripts/gpu_check_session19.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu_preamble.sh"
[ "${SKIP_BISECT:-0}" = 1 ] || bash scripts/gpu_bisect_grouped_wgrad.sh
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  TEST_TIMEOUT="${TEST_TIMEOUT:-220}" bash scripts/gpu_triage_files.sh tests/test_fp8_grouped_wgrad_gpu.py \
    tests/test_fp8_wgrad_accumulate_gpu.py tests/test_fp8_host_gpu.py tests/test_fp8_smem_scales_gpu.py \
    tests/test_fp8_graph_gpu.py tests/test_fp8_gpu.py tests/test_fp8_mlp_gpu.py tests/test_fp8_wgrad_gpu.py \
    tests/test_fp8_family_gpu.py tests/test_fp8_tall_gpu.py tests/test_fp8_grouped_quantize_gpu.py
fi
if [ "${SKIP_STEP:-0}" != 1 ]; then
  BENCH_FP8_GROUPED_WGRAD=1 timeout "${STEP_TIMEOUT:-150}" python3 -m benchmarks.bench_fp8 --no-gemm --no-grouped \
    > "$out/bench_fp8_wgrad_step.txt" 2>&1
  grep -E "^\||target|rror" "$out/bench_fp8_wgrad_step.txt"
fi
rm -f "$out"/*.json "$out"/bench_fp8.md
