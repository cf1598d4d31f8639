#!/usr/bin/env bash
# GPU checks in one device call.
#   bash tests/gpu.sh build   here: CUDA build in build-gpu/, binaries + the libraries the GPU
#                             machine lacks bundled into .gpu/ (ignored; pass it in `carry`)
#   bash tests/gpu.sh run     on the GPU machine: every test's CUDA part (`--cuda`), then any
#                             extra GPU scripts given as arguments; full log in $OUT/gpu-tests.log,
#                             a summary table last.
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
build)
  set -e
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DQTRAIN_CUDA=ON >/dev/null
  cmake --build build-gpu -j"$(nproc)" 2>&1 | grep -E 'error|warning: ' | head -40 || true
  rm -rf .gpu
  # One binary per call: the bundler exits non-zero (pipefail) for a binary that needs no
  # library beyond CUDA and libc, after copying it. Only binaries with a GPU part, stripped:
  # `carry` takes 64 MiB in all. GPU_BINS="qtrain test_x ..." bundles just those.
  for b in build-gpu/bin/*; do
    n=$(basename "$b")
    if [ -n "${GPU_BINS:-}" ]; then
      case " $GPU_BINS " in *" $n "*) ;; *) continue ;; esac
    else
      case $n in
        test_*) grep -q QT_TEST_HAS_CUDA "tests/$n.c" 2>/dev/null || continue ;;
        st_dump | tok_dump | render_chat) continue ;;
      esac
    fi
    bash ../shared/tools/gpu-bundle.sh .gpu "$b" >/dev/null || true
  done
  strip .gpu/bin/* 2>/dev/null || true
  du -sh .gpu
  [ "$(du -sm .gpu | cut -f1)" -le 64 ] || echo "gpu.sh: .gpu is over the 64 MiB carry limit: set GPU_BINS" >&2
  ;;
run)
  shift
  out=${OUT:-/tmp/qtrain-gpu}
  mkdir -p "$out"
  log=$out/gpu-tests.log
  export LD_LIBRARY_PATH="$PWD/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export QTRAIN_SOURCE="$PWD"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$log"
  summary=""
  pass=0; fail=0; skip=0
  for t in .gpu/bin/test_*; do
    name=$(basename "$t")
    echo "=== $name --cuda" >>"$log"
    start=$(date +%s%N)
    timeout 300 "$t" --cuda >>"$log" 2>&1
    rc=$?
    secs=$(awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
    case $rc in 0) st=PASS; pass=$((pass+1));; 77) st=SKIP; skip=$((skip+1));; *) st="FAIL($rc)"; fail=$((fail+1));; esac
    summary+=$(printf '%-28s %-9s %6ss' "$name" "$st" "$secs")$'\n'
  done
  for script in "$@"; do
    echo "=== $script" >>"$log"
    bash -c "$script" >>"$log" 2>&1; rc=$?
    [ $rc = 0 ] && { st=PASS; pass=$((pass+1)); } || { st="FAIL($rc)"; fail=$((fail+1)); }
    summary+=$(printf '%-28s %-9s' "${script:0:28}" "$st")$'\n'
  done
  grep -E 'FAIL|rel err|error' "$log" | grep -v 'rel err .*(tol' | head -40
  grep -E '<-- FAIL' "$log" | head -40
  printf '%s' "$summary"
  echo "passed $pass, failed $fail, skipped $skip"
  [ $fail = 0 ]
  ;;
*)
  echo "usage: bash tests/gpu.sh build | run [extra commands...]" >&2
  exit 2
  ;;
esac
