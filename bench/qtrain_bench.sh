#!/usr/bin/env bash
# qtrain on the synthetic Llama-3-8B shape (bench/llama3-8b-qlora.yaml: NF4 + double quant,
# LoRA r=16 alpha 32 on all projections, seq 2048, checkpointing, bf16, cuda), one run per
# batch size, with the op profiler on (QTRAIN_PROFILE=1). Steady state = the steps after the
# first SKIP (from metrics.jsonl's per-step "step_s"); peak = the arenas' high-water mark.
#
# usage: bench/qtrain_bench.sh [--batch "1 4"] [--steps 7] [--skip 2] [--out DIR]
#                              [--config YAML] [--set KEY=VALUE ...]
#   QTRAIN_BIN   the binary (default: .gpu/bin/qtrain with .gpu/lib, else build-gpu/bin, build/bin)
#   QTRAIN_TIMEOUT  seconds per qtrain run (killed past it; the steps done still count)
#   OUT          where logs and qtrain.json go (default /tmp/qtrain-bench); the runs' own folders
#                (metrics, adapter) go to $RUN_DIR (default /tmp/qtrain-bench-runs)
# Writes OUT/qtrain-bB.log per batch and OUT/qtrain.json (a list, one entry per batch).
# A CPU smoke test of the mechanics (seconds):
#   QTRAIN_BIN=build/bin/qtrain bench/qtrain_bench.sh --batch "1 2" --steps 4 \
#     --set model.synthetic=tiny --set train.device=cpu --set data.seq_len=64 --set model.dtype=f32
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-/tmp/qtrain-bench}
runs=${RUN_DIR:-/tmp/qtrain-bench-runs}
batches="1 4"; steps=7; skip=2; config=$root/bench/llama3-8b-qlora.yaml
sets=()
while [ $# -gt 0 ]; do
  case $1 in
  --batch) batches=$2; shift 2 ;;
  --steps) steps=$2; shift 2 ;;
  --skip) skip=$2; shift 2 ;;
  --out) out=$2; shift 2 ;;
  --config) config=$2; shift 2 ;;
  --set) sets+=(--set "$2"); shift 2 ;;
  *) echo "qtrain_bench.sh: unknown argument '$1' (see the usage at the top of the script)" >&2; exit 2 ;;
  esac
done
bin=${QTRAIN_BIN:-}
if [ -z "$bin" ]; then
  for b in "$root/.gpu/bin/qtrain" "$root/build-gpu/bin/qtrain" "$root/build/bin/qtrain"; do
    [ -x "$b" ] && { bin=$b; break; }
  done
fi
[ -n "$bin" ] && [ -x "$bin" ] || { echo "qtrain_bench.sh: no qtrain binary (build it, or set QTRAIN_BIN)" >&2; exit 2; }
[ -d "$root/.gpu/lib" ] && export LD_LIBRARY_PATH="$root/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
mkdir -p "$out" "$runs"
seq_len=$("$bin" --print-config "$config" "${sets[@]}" | awk '$1 == "seq_len:" { print $2; exit }')
[ -n "$seq_len" ] || { echo "qtrain_bench.sh: cannot read data.seq_len from $config" >&2; exit 2; }
status=0
for B in $batches; do
  dir=$runs/b$B
  rm -rf "$dir"   # a fresh run: never resume a previous one
  log=$out/qtrain-b$B.log
  echo "=== qtrain batch $B: $bin $config (steps $steps, first $skip left out)" | tee "$log"
  start=$(date +%s.%N)
  QTRAIN_PROFILE=${QTRAIN_PROFILE-1} QTRAIN_PROFILE_SKIP=$skip ${QTRAIN_TIMEOUT:+timeout -k 10 "$QTRAIN_TIMEOUT"} \
    "$bin" "$config" --set train.micro_batch="$B" \
    --set train.steps="$steps" --set output.dir="$dir" "${sets[@]}" >>"$log" 2>&1
  rc=$?
  echo "=== exit status $rc, wall $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s" >>"$log"
  python3 "$root/bench/compare.py" qtrain --metrics "$dir/metrics.jsonl" --log "$log" --batch "$B" \
    --seq "$seq_len" --skip "$skip" --rc "$rc" --merge "$out/qtrain.json" || status=1
  [ $rc = 0 ] || { status=1; tail -5 "$log"; }
done
exit $status
