#!/usr/bin/env bash
# GPU bisect of the grouped FP8 weight gradient's illegal instruction (H200 2026-12-03 22:10 UTC, commit
# dcde7da: grouped_k/identity[+acc]/cooperative-c1x2/float8_e4m3fn+rows_stagedscaledB->float32/akbk).
# Each variant of scripts/bisect_grouped_wgrad_case.py runs in a python process of its own (an illegal
# instruction poisons the process's CUDA context): those expected to pass in parallel, then the
# `old-start` ones (the empty first expert's old K start of 1 put back: the suspected cause) one
# after the other. One line per variant (ok / ERROR ...) into $out/bisect.log; < 150 s on the H200.
#   source .gpu/p2/setup.sh && bash scripts/gpu_bisect_grouped_wgrad.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu_preamble.sh"
case_py=scripts/bisect_grouped_wgrad_case.py
logs="$out/bisect"; mkdir -p "$logs"

run_case() {  # variant, time limit (s): its output into $logs/<variant>.log
  timeout "$2" python3 "$case_py" "$1" > "$logs/$1.log" 2>&1
  [ $? -eq 124 ] && echo "$1: ERROR timed out after $2 s (a hang)" >> "$logs/$1.log"
}

case_line() {  # the variant's result line (its own before a timeout's), or its last output when it died without one
  local line
  line=$(grep -E "^$1: " "$logs/$1.log" | head -1)
  echo "${line:-$1: ERROR no result line; last output: $(tail -1 "$logs/$1.log")}"
}

batch=$(python3 "$case_py" --list batch)
alone=$(python3 "$case_py" --list alone)
for v in $batch; do run_case "$v" "${BISECT_TIMEOUT:-75}" & done
wait
for v in $alone; do run_case "$v" "${BISECT_ALONE_TIMEOUT:-35}"; done
for v in $batch $alone; do case_line "$v"; done | tee "$out/bisect.log"
rm -rf "$logs"
