# Sourced by the GPU call scripts (scripts/gpu_*.sh) first thing: strict mode, $out (OUT, default
# ./gpu_out; at most 8 files come back from a device call), the checkout on PYTHONPATH and
# $out/device.txt (GPU, driver, clocks, power, time, commit).
set -uo pipefail
out="${OUT:-gpu_out}"; mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.draw --format=csv > "$out/device.txt"; date -u >> "$out/device.txt"
git log --oneline -1 >> "$out/device.txt" 2>/dev/null
