#!/usr/bin/env bash
# The README's first command: install dependencies, build, run the example.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release ${QTRAIN_CMAKE_ARGS:-} >/dev/null
cmake --build build -j"$(nproc 2>/dev/null || echo 2)"
./build/bin/qtrain --devices
# The example: a tiny random-weight Llama with an NF4 base learns arithmetic token sequences
# through LoRA alone, on the CPU in well under a minute; watch the loss fall.
rm -rf runs/tiny-cpu
./build/bin/qtrain configs/tiny-cpu.yaml
