#!/usr/bin/env bash
# The one GPU run: GPU tests, then the benchmark table (and, with SWEEP=1, a config
# sweep on the benchmark shapes; MLP_BENCH=1 adds the MLP step benchmark,
# SKIP_GEMM_BENCH=1 / SKIP_TESTS=1 leave parts out; PYTEST_WORKERS=N runs the tests in N
# processes through pytest-xdist, which the GPU image has: the suite is bound by kernel
# compiles on the CPU, not by the GPU).  QuACK wheels in .gpu/quack (docs/gpu-staging.md) are
# installed first, for bench_mlp's QuACK tables.  On the device machine, from the repo root,
# after the wheels are installed (docs/gpu-staging.md):
#   bash scripts/gpu_check.sh [extra pytest args]
# Logs and tables go to $OUT (or ./gpu_out).
set -uo pipefail
out="${OUT:-gpu_out}"; mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$out/device.txt"
if ls .gpu/quack/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/quack .gpu/quack/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/quack"
fi
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  workers=()
  [ "${PYTEST_WORKERS:-0}" -gt 1 ] && workers=(-n "$PYTEST_WORKERS")
  python3 -m pytest -m gpu tests -q -x --tb=short -p no:cacheprovider "${workers[@]}" "$@" 2>&1 | tee "$out/gpu_tests.log"
fi
if [ "${SKIP_GEMM_BENCH:-0}" != 1 ]; then
  python3 -m benchmarks.bench_gemm --out "$out/bench_gemm.md" 2>&1 | tee "$out/bench_gemm.log"
fi
if [ "${MLP_BENCH:-0}" = 1 ]; then
  python3 -m benchmarks.bench_mlp --only "${MLP_ONLY:-}" --out "$out/bench_mlp.md" 2>&1 | tee "$out/bench_mlp.log"
fi
if [ "${SWEEP:-0}" = 1 ]; then
  python3 -m benchmarks.bench_gemm --sweep --only "${SWEEP_ONLY:-}" 2>&1 | tee "$out/sweep.log"
fi
if [ -f .ref/compare.py ]; then python3 .ref/compare.py 2>&1 | grep -v Warn | tee "$out/compare.log"; fi
if [ "${OFFLOAD_BENCH:-0}" = 1 ]; then
  python3 -m benchmarks.bench_offload --out "$out/bench_offload.md" --timeline "$out/offload_timeline.png" 2>&1 | tee "$out/bench_offload.log"
fi
