#!/usr/bin/env bash
# GPU autotuning run: sweep the benchmark shapes (TPE), optionally a grid for one dense
# and one grouped shape; tuned YAML, study database and logs go to $OUT.
#   MODE=sweep|grid-dense|grid-grouped bash scripts/gpu_tune.sh
set -uo pipefail
out="${OUT:-gpu_out}"; mkdir -p "$out"
export PYTHONUNBUFFERED=1
db="sqlite:///$out/studies.db"
case "${MODE:-sweep}" in
  sweep)
    python3 -m autotune sweep --benchmark-shapes --storage "$db" --out "$out/sweep_table.md" 2>&1 | tee "$out/sweep.log" ;;
  grid-dense)
    python3 -m autotune sweep --kernel fc1_srelu --m 8192 --n 16384 --k 4096 --grid --no-write --storage "$db" \
      --out "$out/grid_dense.md" 2>&1 | tee "$out/grid_dense.log" ;;
  grid-grouped)
    python3 -m autotune sweep --kernel fc1_srelu --m 16384 --n 1856 --k 2688 --experts 8 --grid --no-write \
      --storage "$db" --out "$out/grid_grouped.md" 2>&1 | tee "$out/grid_grouped.log" ;;
esac
mkdir -p "$out/tuned"
cp tuned_configs/sm90/*.yaml "$out/tuned/" 2>/dev/null || true
python3 -m autotune show 2>&1 | tail -20
