#!/bin/sh
# NF4 quantize/dequantize throughput (CPU, and GPU when present).
# usage: bench/nf4_bench.sh [BUILD_DIR=build] [--build-only | rows=4096 cols=4096 gpu_iters=200]
# Links bench/nf4_bench.c against BUILD_DIR's libqt_quant.a / libqt_autograd.a (build them
# first: cmake --build BUILD_DIR --target qt_quant) into BUILD_DIR/bin/nf4_bench, then runs it.
# For the GPU machine: build here with --build-only into the CUDA build dir, then run
# BUILD_DIR/bin/nf4_bench there (tests/gpu.sh bundles everything in BUILD_DIR/bin).
set -e
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
shift 2>/dev/null || true
libs="$build/lib/libqt_quant.a $build/lib/libqt_autograd.a"
extra="-lm -fopenmp"
cflags=""
if nm "$build/lib/libqt_autograd.a" 2>/dev/null | grep -q cudaMalloc; then
  cuda=${CUDA_HOME:-/usr/local/cuda}
  extra="-L$cuda/lib64 -lcudart -lcublasLt -lcublas -lstdc++ -lm -ldl -lpthread -lrt -fopenmp"
  cflags="-DQT_WITH_CUDA=1"
fi
out="$build/bin/nf4_bench"
cc -O2 -std=gnu11 $cflags -I"$root" "$root/bench/nf4_bench.c" $libs $extra -o "$out"
[ "${1:-}" = "--build-only" ] && { echo "built $out"; exit 0; }
"$out" "$@"
