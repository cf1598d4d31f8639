#!/usr/bin/env bash
# Builds qtrain (CUDA too when nvcc is present) and runs the whole test suite with ctest.
# On a machine without a GPU the CUDA tests report "skipped" with the reason.
# Then the same suite again under AddressSanitizer + UBSan, CPU only, in build-asan/
# (QTRAIN_NO_SANITIZE=1 skips that pass).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && export PATH="$PWD/.venv/bin:$PATH"
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release ${QTRAIN_CMAKE_ARGS:-} >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs" "$@")
[ "${QTRAIN_NO_SANITIZE:-0}" = 1 ] && exit 0
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Release -DQTRAIN_SANITIZE=ON -DQTRAIN_CUDA=OFF >/dev/null
cmake --build build-asan -j"$jobs"
cd build-asan && ctest --output-on-failure -j"$jobs" -LE cuda "$@"
