#!/usr/bin/env bash
# One device call that checks and measures what changed: every test's CUDA part, the
# attention paths (rows / tc / cuDNN), qtrain on the Llama-3-8B bench shape lean (every layer
# recomputes: the <= 8 GiB setting) and fast (the bench budget: layers keep activations), and
# the 70B "memorize" run under 24 GiB. Prepare here: `bash tests/gpu.sh build` (+ attn_bench:
# `bash bench/attn_bench.sh build-gpu --build-only && cp build-gpu/bin/attn_bench .gpu/bin/`),
# carry .gpu. Writes 7 files to $OUT: tests.txt gpu-tests.log attn.txt b1-lean.log b1-fast.log
# memorize.log summary.txt. SESSION_PARTS="tests attn lean fast memorize" picks parts.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/qtrain-session}
mkdir -p "$out"
parts=${SESSION_PARTS:-tests attn lean fast memorize}
export LD_LIBRARY_PATH="$PWD/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# cuDNN: the system's, else the one pip installed with torch
if ldd .gpu/bin/qtrain | grep -q 'libcudnn.*not found'; then
  d=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0] + "/lib")' 2>/dev/null)
  [ -n "$d" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
fi
sum=$out/summary.txt
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; ldd .gpu/bin/qtrain | grep -E 'cudnn|not found'; } >"$sum" 2>&1
has() { case " $parts " in *" $1 "*) return 0 ;; esac; return 1; }
if has tests; then
  OUT=$out bash tests/gpu.sh run >"$out/tests.txt" 2>&1
  tail -32 "$out/tests.txt" >>"$sum"
fi
if has attn; then
  { .gpu/bin/attn_bench; .gpu/bin/attn_bench 1 2048 32 8 128 10 f16; .gpu/bin/attn_bench 4 2048 32 8 128 5 bf16; } >"$out/attn.txt" 2>&1
  tail -20 "$out/attn.txt" >>"$sum"
fi
bench() { # NAME extra --set args
  local name=$1; shift
  rm -rf "/tmp/qs-$name"
  QTRAIN_PROFILE=1 QTRAIN_PROFILE_SKIP=3 timeout -k 5 150 .gpu/bin/qtrain bench/llama3-8b-qlora.yaml --set train.steps=8 \
    --set output.dir="/tmp/qs-$name" "$@" >"$out/$name.log" 2>&1
  echo "=== $name (exit $?)" >>"$sum"
  grep -E "keep their|peak GPU|peaked" "$out/$name.log" >>"$sum"
  python3 - "/tmp/qs-$name/metrics.jsonl" >>"$sum" <<'PY'
import json, sys
m = [json.loads(l) for l in open(sys.argv[1])]
st = m[3:] or m
s = sum(x["step_s"] for x in st) / len(st)
tok = st[0]["tokens"] - m[m.index(st[0]) - 1]["tokens"]
print(f"steady steps {st[0]['step']}..{st[-1]['step']}: {s:.4f} s/step, {tok / s:.0f} tok/s, arenas peak {m[-1]['peak_bytes'] / 2**30:.2f} GiB, device in use {max(x['dev_used_bytes'] for x in m) / 2**30:.2f} GiB; loss {m[0]['loss']:.4f} -> {m[-1]['loss']:.4f}")
PY
  grep -A14 "op profile" "$out/$name.log" | head -16 >>"$sum"
}
has lean && bench b1-lean --set memory.keep_activations=false
has fast && bench b1-fast
if has memorize; then
  python3 -c "
import json, random
random.seed(7)
row = [random.randrange(128000) for _ in range(2048)]
open('/tmp/repeat70b.jsonl', 'w').write(''.join(json.dumps({'input_ids': row}) + '\n' for _ in range(64)))
"
  rm -rf /tmp/qs-mem
  timeout -k 5 200 .gpu/bin/qtrain bench/llama70b-qlora.yaml --set data.train=/tmp/repeat70b.jsonl --set data.format=tokens \
    --set data.packing=false --set train.steps=8 --set output.dir=/tmp/qs-mem >"$out/memorize.log" 2>&1
  echo "=== 70B memorize under 24 GiB (exit $?)" >>"$sum"
  grep -E "^step|peaked|layers resident" "$out/memorize.log" >>"$sum"
fi
cat "$sum"
