#!/usr/bin/env bash
# Where the FP8 GEMM's warps stall (issue 24: 128x128 at ~1,050-1,160 TFLOP/s whatever K, so the gap
# to torch._scaled_mm is in the mainloop, not per tile): ncu's per-SASS-instruction stall samples of
# our 128x128 kernel, and cuBLAS's rowwise kernel (its name says its tile and cluster) with the same
# high-level metrics, tensor pipe utilisation included.  Writes $OUT/ncu_stalls.txt.
#   source /tmp/gpu-stage/env.sh && bash scripts/ncu_fp8_stalls.sh
set -uo pipefail
out="${OUT:-gpu_out}"; mkdir -p "$out"; f="$out/ncu_stalls.txt"
metrics=sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_tensor_op_gmma.sum,smsp__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,sm__throughput.avg.pct_of_peak_sustained_elapsed,gpu__time_duration.sum,launch__registers_per_thread,launch__grid_size,launch__block_size,launch__shared_mem_per_block_dynamic,launch__cluster_dim_x,launch__cluster_dim_y,sm__cycles_elapsed.avg.per_second
for c in 128x128 scaled_mm 128x256; do
  echo "## $c: kernels and metrics" >> "$f"
  timeout 90 ncu --clock-control none --kernel-name regex:gemm --launch-skip 2 --launch-count 1 --metrics "$metrics" \
    python3 scripts/ncu_fp8.py $c 2>&1 | grep -vE "^==PROF==|^\s*$" | tail -20 >> "$f"
done
echo "## 128x128: stall samples per SASS instruction (top 45 by samples)" >> "$f"
timeout 150 ncu --clock-control none --kernel-name regex:Sm90Gemm --launch-skip 2 --launch-count 1 \
  --section SourceCounters --section WarpStateStats --import-source yes -o /tmp/fp8_src -f python3 scripts/ncu_fp8.py 128x128 > /tmp/ncu_src.log 2>&1
tail -3 /tmp/ncu_src.log >> "$f"
ncu -i /tmp/fp8_src.ncu-rep --page details --section WarpStateStats 2>&1 | grep -E "Stall|Warp Cycles|Active" | head -30 >> "$f"
ncu -i /tmp/fp8_src.ncu-rep --page source --csv --print-source sass > /tmp/fp8_sass.csv 2>/tmp/ncu_page.err
head -c 600 /tmp/ncu_page.err >> "$f"
python3 - /tmp/fp8_sass.csv >> "$f" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1], newline="")))
start = next((i for i, r in enumerate(rows) if "Source" in [c.strip() for c in r]), None)
if start is None:
    print("no source page"); sys.exit()
rows = rows[start:]
hdr = rows[0]
print("columns:", hdr[:40])
def col(name):
    for i, h in enumerate(hdr):
        if h.strip().lower() == name.lower():
            return i
    for i, h in enumerate(hdr):
        if name.lower() in h.lower():
            return i
src = col("Source"); smp = col("Warp Stall Sampling (All Samples)")
if smp is None:
    smp = col("Sampling")
stall_cols = [i for i, h in enumerate(hdr) if h.startswith("stall_") or "Stall" in h][:30]
body = [r for r in rows[1:] if len(r) == len(hdr)]
def num(x):
    try:
        return float(x.replace(",", ""))
    except ValueError:
        return 0.0
tot = sum(num(r[smp]) for r in body) or 1
print(f"total samples {tot:.0f} over {len(body)} SASS lines")
for idx, r in sorted(enumerate(body), key=lambda t: -num(t[1][smp]))[:45]:  # idx: SASS line number
    reasons = sorted(((num(r[i]), hdr[i]) for i in stall_cols if i != smp), reverse=True)[:3]
    print(f"{idx:5d} {100 * num(r[smp]) / tot:5.1f}% {r[src][:70]:70s} " + " ".join(f"{n}={v:.0f}" for v, n in reasons if v))
PY
# the whole SASS with each line's share of the samples, in program order (the loop structure)
python3 - /tmp/fp8_sass.csv > "$out/sass_samples.txt" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1], newline="")))
start = next((i for i, r in enumerate(rows) if "Source" in [c.strip() for c in r]), 0)
hdr, body = rows[start], [r for r in rows[start + 1:] if len(r) == len(rows[start])]
src = [c.strip() for c in hdr].index("Source")
smp = next((i for i, h in enumerate(hdr) if "Sampling (All" in h), None)
num = lambda x: float(x.replace(",", "") or 0) if x.replace(",", "").replace(".", "").isdigit() else 0.0
tot = sum(num(r[smp]) for r in body) if smp is not None else 0
for n, r in enumerate(body):
    share = 100 * num(r[smp]) / tot if tot else 0
    print(f"{n:5d} {share:5.2f} {r[src][:100]}")
PY
