#!/usr/bin/env bash
# Session 19's third GPU call (2026-12-03 ~23:00 UTC): the bf16 step's host cuts (TVM-FFI kernels
# called directly, FC1 dgrad reading w1 in place: the bf16 GEMM/MLP GPU tests and the E=8 eager vs
# graph host table), the grouped FP8 weight gradient after its K-start fix (its GPU tests, the
# main_grad accumulation, every FP8 self-check variant incl. the staged-scales twins).  Each test file
# in its own process (gpu_triage_files.sh).  At most 8 files into $OUT.
#   source .gpu/p2/setup.sh && bash scripts/gpu_check_session19c.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu_preamble.sh"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  TEST_TIMEOUT="${TEST_TIMEOUT:-230}" bash scripts/gpu_triage_files.sh tests/test_gemm_gpu.py tests/test_mlp_gpu.py \
    tests/test_gather_gpu.py tests/test_dpreact_over_preact_gpu.py tests/test_weight_grad_grouped_gpu.py \
    tests/test_selfcheck_gpu.py tests/test_fp8_grouped_wgrad_gpu.py tests/test_fp8_wgrad_accumulate_gpu.py \
    tests/test_fp8_host_gpu.py tests/test_fp8_gpu.py tests/test_fp8_mlp_gpu.py tests/test_fp8_graph_gpu.py
fi
if [ "${SKIP_HOST:-0}" != 1 ]; then
  timeout 60 python3 -m benchmarks.bench_host_overhead > "$out/host_overhead.txt" 2>&1
  tail -5 "$out/host_overhead.txt"
fi
rm -f "$out"/*.json
