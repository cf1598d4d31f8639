#!/usr/bin/env bash
# Fuzz every parser of user files with libFuzzer (clang, ASan + UBSan, CPU only):
#
#   tests/fuzz.sh [SECONDS] [TARGET...]      # default 60 s per target, every tests/fuzz/fuzz_*.c
#   tests/fuzz.sh 600                        # 10 minutes each
#   tests/fuzz.sh 30 fuzz_gguf fuzz_config   # some targets only
#   tests/fuzz.sh report                     # the table of the last run of every target
#   tests/fuzz.sh 600 fuzz_train_ckpt        # HDF5 checkpoints: only when named (see below)
#
# Builds tests/fuzz/fuzz_*.c in build-fuzz/ (-DQTRAIN_FUZZ=ON), collects seeds from the
# project's own files (tests/fuzz/make_seeds.py), then runs FUZZ_JOBS targets at a time
# (default: the number of cores) with -rss_limit_mb=2048 (so one allocation over 2 GiB is
# a finding too) and a per-target -max_len. The corpus grows in build-fuzz/corpus/TARGET and
# is reused by the next run; crash, timeout, leak and OOM inputs go to
# build-fuzz/crashes/TARGET/; logs to build-fuzz/logs/TARGET.log. Prints a table of
# executions and crashes per target; exits 1 when any target found something.
# Reproduce a finding: build-fuzz/bin/TARGET build-fuzz/crashes/TARGET/crash-... ; see
# docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
B=${FUZZ_BUILD:-build-fuzz}
report_only=0
if [ "$secs" = report ]; then report_only=1; secs=0; fi
jobs=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 2)}
cc=${FUZZ_CC:-$(command -v clang || command -v clang-14 || true)}
[ -n "$cc" ] || { echo "fuzz.sh: clang not found (libFuzzer needs clang)" >&2; exit 2; }

# fuzz_train_ckpt is left out unless named: it reaches libhdf5 1.10's own parser, which
# crafted files crash in ways qtrain cannot prevent (docs/fuzzing.md).
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in tests/fuzz/fuzz_*.c; do
        t=$(basename "$f" .c)
        [ "$t" = fuzz_train_ckpt ] || targets+=("$t")
    done
fi

# Largest input per target: a little above the biggest sensible seed; small inputs fuzz faster.
max_len() {
    case $1 in
        fuzz_tokenizer_encode) echo 4096 ;;
        fuzz_hfconfig | fuzz_jsonl) echo 8192 ;;
        fuzz_st_index | fuzz_imatrix) echo 32768 ;;
        fuzz_config | fuzz_dataset | fuzz_tokconfig) echo 16384 ;;
        *) echo 65536 ;; # binary files: safetensors, gguf, HDF5, adapters, tokenizer.json
    esac
}

table() {
    local status=0 t log execs rate corpus n what
    printf '\n%-24s %14s %10s %8s %8s  %s\n' target executions exec/s corpus crashes result
    for t in "${targets[@]}"; do
        log="$B/logs/$t.log"
        [ -f "$log" ] || { printf '%-24s %14s\n' "$t" "never run"; status=1; continue; }
        execs=$(grep -o 'stat::number_of_executed_units:[[:space:]]*[0-9]*' "$log" | tail -1 | awk '{print $2}')
        rate=$(grep -o 'stat::average_exec_per_sec:[[:space:]]*[0-9]*' "$log" | tail -1 | awk '{print $2}')
        corpus=$(find "$B/corpus/$t" -type f 2>/dev/null | wc -l)
        n=$(find "$B/crashes/$t" -type f 2>/dev/null | wc -l)
        what=ok
        if [ "$n" -gt 0 ]; then
            status=1
            what="FOUND: $(ls "$B/crashes/$t" | head -3 | tr '\n' ' ')"
        elif ! grep -q 'Done [0-9]* runs' "$log"; then
            status=1
            what="did not finish: see $log"
        fi
        printf '%-24s %14s %10s %8s %8s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$corpus" "$n" "$what"
    done
    return $status
}
if [ $report_only = 1 ]; then table; exit $?; fi

echo "fuzz.sh: building ${targets[*]} in $B with $cc"
cmake -S . -B "$B" -DCMAKE_C_COMPILER="$cc" -DQTRAIN_CUDA=OFF -DQTRAIN_FUZZ=ON \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$B" -j"$jobs" --target "${targets[@]}" 2>&1 | grep -E "error|warning:" || true
for t in "${targets[@]}"; do
    [ -x "$B/bin/$t" ] || { echo "fuzz.sh: $B/bin/$t was not built" >&2; exit 2; }
done

B=$(cd "$B" && pwd)
rm -rf "$B/seeds"
python3 tests/fuzz/make_seeds.py "$B/seeds" >/dev/null
mkdir -p "$B/logs"

run_one() {
    local t=$1 malloc_limit=2048 asan=${ASAN_OPTIONS:-} lsan=${LSAN_OPTIONS:-}
    # HDF5 files are parsed by libhdf5, which sizes some buffers from the file before checking
    # them: there a huge malloc must fail (NULL, as glibc's does) and HDF5 report an error,
    # which is what a run would see; RSS stays limited to 2 GiB. libhdf5's own leaks on its
    # error paths are suppressed (tests/fuzz/lsan-hdf5.supp). See docs/fuzzing.md.
    if [ "$t" = fuzz_train_ckpt ]; then
        malloc_limit=1048576
        asan="allocator_may_return_null=1${asan:+:$asan}"
        lsan="suppressions=$PWD/tests/fuzz/lsan-hdf5.supp${lsan:+:$lsan}"
    fi
    mkdir -p "$B/corpus/$t" "$B/crashes/$t" "$B/seeds/$t" "$B/tmp/$t"
    # -timeout: one input running longer than 20 s is a hang. Leaks count (LeakSanitizer).
    TMPDIR="$B/tmp/$t" ASAN_OPTIONS="$asan" LSAN_OPTIONS="$lsan" "$B/bin/$t" "$B/corpus/$t" "$B/seeds/$t" \
        -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb="$malloc_limit" \
        -max_len="$(max_len "$t")" -timeout=20 -print_final_stats=1 \
        -artifact_prefix="$B/crashes/$t/" >"$B/logs/$t.log" 2>&1 || true
    rm -rf "$B/tmp/$t"
}

# At most $jobs targets at a time.
running=0
for t in "${targets[@]}"; do
    rm -f "$B/crashes/$t"/* 2>/dev/null || true
    echo "fuzz.sh: $t for ${secs}s"
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait

status=0
table || status=1
[ $status -eq 0 ] && echo "fuzz.sh: no crashes" || echo "fuzz.sh: FINDINGS above (inputs in $B/crashes/, logs in $B/logs/)"
exit $status
