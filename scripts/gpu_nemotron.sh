#!/usr/bin/env bash
# Nemotron-H on the GPU machine in one call (< 4 min): the patch's GPU tests, the 200-step
# training check (loss curves) and the step benchmark, each under a hard time limit.
# Worst case 60 + 70 + 125 s (training check + benchmark: at most 195 s).
# From the repo root, after the wheels are installed (README: source .gpu/pN/setup.sh):
#   bash scripts/gpu_nemotron.sh            (SKIP_TESTS=1 leaves the tests out)
# Tables, JSON, PNGs and logs go to $OUT (or ./gpu_out).
set -uo pipefail
out="${OUT:-gpu_out}"; mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))" | tee "$out/nemotron_env.txt"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout 60 python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_nemotron_h_gpu.py 2>&1 | tee "$out/nemotron_gpu_tests.log"
fi
timeout 70 python3 -m benchmarks.train_nemotron --out "$out" --budget-s 40 2>&1 | tee "$out/train_nemotron.log"
timeout 125 python3 -m benchmarks.bench_nemotron --out "$out" --budget-s 105 2>&1 | tee "$out/bench_nemotron.log"
echo "--- training check"; cat "$out/nemotron_train_check.md" 2>/dev/null
echo "--- benchmark"; cat "$out/bench_nemotron.md" 2>/dev/null
