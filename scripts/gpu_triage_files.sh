#!/usr/bin/env bash
# Runs each GPU test file in its own pytest process (in parallel, -x), so one kernel's illegal
# instruction (which poisons its CUDA context) shows as that file's first failure instead of a
# cascade through an xdist worker. One summary line per file into $out/triage.log.
#   source .gpu/p2/setup.sh && bash scripts/gpu_triage_files.sh tests/test_fp8_wgrad_gpu.py tests/test_fp8_grouped_wgrad_gpu.py
source "$(dirname "${BASH_SOURCE[0]}")/gpu_preamble.sh"
mkdir -p "$out/triage"
for f in "$@"; do
  ( timeout "${TEST_TIMEOUT:-200}" python3 -m pytest -q -x --tb=line -p no:cacheprovider "$f" \
      > "$out/triage/$(basename "$f" .py).log" 2>&1 ) &
done
wait
for f in "$@"; do
  echo "== $f: $(grep -E "passed|failed|error" "$out/triage/$(basename "$f" .py).log" | tail -1)"
  grep -E "^E |Error|error:" "$out/triage/$(basename "$f" .py).log" | head -3
done | tee "$out/triage.log"
rm -rf "$out/triage"
