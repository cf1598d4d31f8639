#!/usr/bin/env bash
# Builds qtrain (CUDA too when nvcc is present) and runs the whole test suite with ctest.
# On a machine without a GPU the CUDA tests report "skipped" with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && export PATH="$PWD/.venv/bin:$PATH"
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release ${QTRAIN_CMAKE_ARGS:-} >/dev/null
cmake --build build -j"$jobs"
cd build && ctest --output-on-failure -j"$jobs" "$@"
