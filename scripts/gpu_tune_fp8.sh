#!/usr/bin/env bash
# The one GPU call that tunes every FP8 GEMM of the FP8 training step (srelu_mlp(..., fp8=Fp8Recipe()),
# kernel path), dense 8192 x 4096 -> 16384 and grouped E=8 (16384 tokens, 2688 -> 1856), under the names
# the step looks configs up by (cute_kernels/fp8/ops.family_kernel):
#   fp8_fc1_srelu   FC1 + activation               (M, N=ffn, K=hidden)
#   fp8_fc2         FC2 and the FC1 data gradient  (M, N=hidden, K=ffn; the same plain GEMM, one entry)
#   fp8_dgrad_dact  FC2 data gradient + dSReLU     (M, N=ffn, K=hidden; postact recompute, as the step runs it)
# Each launch times its default config and the first $FP8_TUNE_CANDIDATES of the fixed candidate list it can
# run (cute_kernels/sm90/space_fp8.CANDIDATES), back to back at the power limit (--timing sustained:
# autotune/timing.sustained_ms), re-measures the winner against the default and stores a winner that beats
# it by 1 % in tuned_configs/sm90/fp8_*.yaml (the files the step's lookup reads), copied to $OUT.
# After the wheels are installed (docs/gpu-staging.md):
#   source .gpu/p2/setup.sh && bash scripts/gpu_tune_fp8.sh
# Knobs: FP8_TUNE_CANDIDATES (default 8: 9 configs per launch, about 3 min for the 6 launches),
# FP8_TUNE_TIMING (sustained | burst), FP8_TUNE_PRESETS (default dense-4096x16384,moe-e8),
# FP8_TUNE_BUDGET_S (the sweep's wall-clock limit, default 330; launches finished by then keep their entries).
# Back in $OUT (at most 8 files): device.txt, fp8_tune.log, fp8_tune_table.md and the fp8_*.yaml written.
set -uo pipefail
out="${OUT:-gpu_out}"; mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.draw,power.limit --format=csv > "$out/device.txt"
date -u >> "$out/device.txt"; git log --oneline -1 >> "$out/device.txt" 2>/dev/null
journal="$(mktemp -d)/fp8_tune.journal"  # fresh studies: every launch starts from its default
timeout "${FP8_TUNE_BUDGET_S:-330}" python3 -m autotune sweep --preset "${FP8_TUNE_PRESETS:-dense-4096x16384,moe-e8}" \
  --fp8 --candidates "${FP8_TUNE_CANDIDATES:-8}" --timing "${FP8_TUNE_TIMING:-sustained}" --quiet \
  --root "$PWD/tuned_configs" --storage "$journal" --out "$out/fp8_tune_table.md" > "$out/fp8_tune.log" 2>&1
echo "autotune sweep exit code $? ($(date -u +%T))" >> "$out/fp8_tune.log"
grep -E "^\||exit code|Error|error" "$out/fp8_tune.log" | tail -30
cp tuned_configs/sm90/fp8_*.yaml "$out/" 2>/dev/null || echo "no FP8 entry written (no winner beat its default by 1 %)"
python3 -m autotune show 2>&1 | grep -E "fp8_|shape" | head -12
