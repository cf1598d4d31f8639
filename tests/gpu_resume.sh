#!/usr/bin/env bash
# GPU resume check (issue: exact resume): on the GPU machine, after `bash tests/gpu.sh build`
# here and with .gpu carried: an uninterrupted CUDA run of the tiny config vs one stopped at
# step 15 and resumed, with the AdamW moments on the device and with the paged optimizer
# (moments in pinned host memory). Per-step losses must agree within 1e-6 relative; prints
# whether the adapters are also byte-identical.
set -uo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH="$PWD/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
q=.gpu/bin/qtrain
fail=0
for mode in device paged; do
  sets="--set train.device=cuda --set model.dtype=bf16 --set train.steps=30 --set output.checkpoint_every=5 --set train.log_every=100"
  [ $mode = paged ] && sets="$sets --set memory.paged_optimizer=true --set memory.optimizer_gpu_bytes=1MiB"
  a=/tmp/resume-$mode-a b=/tmp/resume-$mode-b
  rm -rf $a $b
  $q configs/tiny-cpu.yaml $sets --set output.dir=$a >/tmp/$mode-a.log 2>&1 || { echo "$mode: uninterrupted run failed"; tail -3 /tmp/$mode-a.log; fail=1; continue; }
  $q configs/tiny-cpu.yaml $sets --set output.dir=$b --stop-after 15 >/tmp/$mode-b1.log 2>&1
  $q configs/tiny-cpu.yaml $sets --set output.dir=$b >/tmp/$mode-b2.log 2>&1 || { echo "$mode: resumed run failed"; tail -3 /tmp/$mode-b2.log; fail=1; continue; }
  python3 - "$a/metrics.jsonl" "$b/metrics.jsonl" "$mode" <<'PY' || fail=1
import json, sys
def load(p):
    d = {}
    for line in open(p):
        r = json.loads(line)
        if "loss" in r:
            d[r["step"]] = r["loss"]
    return d
a, b, mode = load(sys.argv[1]), load(sys.argv[2]), sys.argv[3]
steps = sorted(a)
worst = max(abs(a[s] - b[s]) / abs(a[s]) for s in steps)
exact = all(a[s] == b[s] for s in steps)
print(f"{mode}: {len(steps)} steps, stopped at 15 and resumed: max rel loss diff {worst:.2e} "
      f"({'bit-identical' if exact else 'not bit-identical'}) -> {'OK' if worst <= 1e-6 else 'FAIL'}")
sys.exit(0 if worst <= 1e-6 and len(steps) == 30 and set(steps) == set(b) else 1)
PY
  cmp -s $a/adapter/adapter_model.safetensors $b/adapter/adapter_model.safetensors && echo "$mode: adapters byte-identical" || echo "$mode: adapters differ in bytes"
done
exit $fail
