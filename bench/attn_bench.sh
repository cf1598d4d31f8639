#!/bin/sh
# Attention forward/backward time: row kernels, the cuBLAS tensor-core path, cuDNN (GPU only).
# usage: bench/attn_bench.sh [BUILD_DIR=build] [--build-only | B T nh nkv hd iters dtype work_mib cap_mib]
# Links bench/attn_bench.c against BUILD_DIR's libqt_autograd.a (build it first:
# cmake --build BUILD_DIR --target qt_autograd; a CUDA build) into BUILD_DIR/bin/attn_bench,
# then runs it. For the GPU machine: --build-only here, then run BUILD_DIR/bin/attn_bench there
# (tests/gpu.sh bundles everything in BUILD_DIR/bin). Defaults: one Llama-3-8B layer at
# seq 2048 in bf16 (1 2048 32 8 128 10 bf16 300 0).
set -e
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
shift 2>/dev/null || true
lib="$build/lib/libqt_autograd.a"
if ! nm "$lib" 2>/dev/null | grep -q cudaMalloc; then
  echo "attn_bench: $lib is missing or has no CUDA backend; build qt_autograd in a CUDA build dir" >&2
  exit 1
fi
cuda=${CUDA_HOME:-/usr/local/cuda}
out="$build/bin/attn_bench"
# cuDNN when the library was built with it (autograd/ops/attention_cudnn.cu)
cudnn=; nm "$lib" 2>/dev/null | grep -q ' U cudnnBackendExecute' && cudnn=-lcudnn
cc -O2 -std=gnu11 -DQT_WITH_CUDA=1 -I"$root" "$root/bench/attn_bench.c" "$lib" \
  -L"$cuda/lib64" $cudnn -lcudart -lcublasLt -lcublas -lstdc++ -lm -ldl -lpthread -lrt -fopenmp -o "$out"
[ "${1:-}" = "--build-only" ] && { echo "built $out"; exit 0; }
"$out" "$@"
