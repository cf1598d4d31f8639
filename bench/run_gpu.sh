#!/usr/bin/env bash
# The whole qtrain vs HF+PEFT benchmark in one device call (bench/RESULTS.md), ~4 minutes:
#   1. .gpu/bin/test_fill --cuda: the GPU random fill and the op profiler work here
#   2. qtrain, batch 1 then 4 (bench/qtrain_bench.sh), QTRAIN_PROFILE=1
#   3. the HF transformers + PEFT peer, batch 1 and 4 (bench/peft_peer.py)
#   4. the table (bench/compare.py) -> $OUT/results.md, also printed last
# nvidia-smi samples device memory in the background during 2 and 3 (max per run in env.txt).
# Prepare here: `bash tests/gpu.sh build` (bundles build-gpu/bin/* and their libraries into
# .gpu/); then run `bash bench/run_gpu.sh` on the GPU machine with .gpu carried.
# Files in $OUT (7): env.txt qtrain-b1.log qtrain-b4.log qtrain.json peft.log peft.json results.md
# Smaller runs: BENCH_SETS="--set KEY=VALUE ..." goes to qtrain, PEER_ARGS="..." to the peer
# (e.g. a CPU smoke test of this script: see bench/RESULTS.md).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/qtrain-bench}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH="$PWD/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
env_txt=$out/env.txt
t_start=$(date +%s)
elapsed() { echo $(( $(date +%s) - t_start ))s; }

{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  python3 -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)' 2>&1 | tail -1
  echo "git: $(git rev-parse --short HEAD 2>/dev/null) $(git status --short 2>/dev/null | wc -l) files changed"
} >"$env_txt" 2>&1
cat "$env_txt"
[ -x .gpu/bin/qtrain ] || { echo "run_gpu.sh: .gpu/bin/qtrain is missing: run 'bash tests/gpu.sh build' here first and carry .gpu" | tee -a "$env_txt"; exit 2; }

# Background nvidia-smi sampling: smi_start NAME ... smi_stop appends "NAME MAX_MIB" to env.txt.
smi_pid=""
smi_start() {
  smi_name=$1
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 >"/tmp/smi-$smi_name.csv" 2>/dev/null &
  smi_pid=$!
}
smi_stop() {
  [ -n "$smi_pid" ] && kill "$smi_pid" 2>/dev/null && wait "$smi_pid" 2>/dev/null
  smi_pid=""
  echo "$smi_name $(sort -n "/tmp/smi-$smi_name.csv" 2>/dev/null | tail -1)" >>"$env_txt"
}

echo "=== [$(elapsed)] test_fill --cuda" | tee -a "$env_txt"
timeout -k 5 60 .gpu/bin/test_fill --cuda >>"$env_txt" 2>&1
echo "test_fill --cuda: exit status $?" | tee -a "$env_txt"

rm -f "$out/qtrain.json"
for B in 1 4; do
  echo "=== [$(elapsed)] qtrain batch $B"
  smi_start "qtrain-b$B"
  OUT=$out QTRAIN_BIN=.gpu/bin/qtrain QTRAIN_TIMEOUT=135 timeout -k 10 150 bash bench/qtrain_bench.sh --batch "$B" --steps 7 --skip 2 ${BENCH_SETS:-} \
    || echo "qtrain batch $B: failed or timed out (see qtrain-b$B.log)"
  smi_stop
  grep -E "built in|peak GPU memory|op profile" "$out/qtrain-b$B.log" | head -3
done

echo "=== [$(elapsed)] HF+PEFT peer, batch 1 and 4"
smi_start peft
timeout -k 10 180 python3 bench/peft_peer.py --batch 1 4 --steps 5 --warmup 2 --seq 2048 ${PEER_ARGS:-} --json "$out/peft.json" >"$out/peft.log" 2>&1 \
  || echo "peer: failed or timed out (see peft.log)"
smi_stop
grep -E "^peer: (model|batch [0-9]+:)" "$out/peft.log"

echo "=== [$(elapsed)] results"
python3 bench/compare.py table --qtrain "$out/qtrain.json" --peft "$out/peft.json" --smi "$env_txt" | tee "$out/results.md"
echo "=== done in $(elapsed)"
