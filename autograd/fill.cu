/* Random fills of GPU tensors without a host pass: a counter-based generator, so every
 * element is computed independently from (key, index) and an 8B-parameter model's random
 * weights take milliseconds instead of minutes of host Box–Muller and upload.
 *
 * The stream is SplitMix64 started at key: output k = mix(key + (k+1)·γ), exactly what
 * core.c's splitmix64 returns on its (k+1)-th call from state key. Uniform element i uses
 * output i; normal element i uses outputs 2i and 2i+1 (Box–Muller, cosine branch). The
 * arithmetic is in double with the final scale-and-shift left unfused (__dmul_rn/__dadd_rn,
 * as a host computes it), then rounded to the tensor's dtype as a host upload rounds
 * (double -> float -> bf16/f16, nearest even), so a plain C loop reproduces it: exactly for
 * uniform, to the last bits of log/cos for normal (tests/test_fill.c). */
#include "backend.h"
#include "cuda_util.cuh"

#define FILL_THREADS 256

__device__ __forceinline__ uint64_t sm64_out(uint64_t key, uint64_t k) {
    uint64_t z = key + (k + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ void fill_st(double *p, int64_t i, double v) { p[i] = v; }
template <typename T>
__device__ __forceinline__ void fill_st(T *p, int64_t i, double v) { qt_st(p, i, (float)v); }

template <typename T>
__global__ void fill_random_kernel(T *p, int64_t n, uint64_t key, double a, double b, bool normal) {
    const double inv53 = 1.0 / 9007199254740992.0; /* 2^-53 */
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        double v;
        if (normal) {
            double u1 = (double)((sm64_out(key, 2 * (uint64_t)i) >> 11) + 1) * inv53; /* (0, 1] */
            double u2 = (double)(sm64_out(key, 2 * (uint64_t)i + 1) >> 11) * inv53;   /* [0, 1) */
            v = __dadd_rn(a, __dmul_rn(b, sqrt(-2.0 * log(u1)) * cospi(2.0 * u2)));
        } else {
            v = __dadd_rn(a, __dmul_rn(b - a, (double)(sm64_out(key, (uint64_t)i) >> 11) * inv53));
        }
        fill_st(p, i, v);
    }
}

extern "C" void qt_be_fill_random(void *p, qt_dtype dt, int64_t n, uint64_t key, double a, double b, bool normal) {
    if (n <= 0) return;
    unsigned grid = qt_blocks(n, FILL_THREADS);
    if (grid > 8192) grid = 8192; /* grid-stride beyond: enough blocks to fill any GPU */
    cudaStream_t s = cudaStreamLegacy;
    switch (dt) {
    case QT_F64: fill_random_kernel<<<grid, FILL_THREADS, 0, s>>>((double *)p, n, key, a, b, normal); break;
    case QT_F32: fill_random_kernel<<<grid, FILL_THREADS, 0, s>>>((float *)p, n, key, a, b, normal); break;
    case QT_BF16: fill_random_kernel<<<grid, FILL_THREADS, 0, s>>>((__nv_bfloat16 *)p, n, key, a, b, normal); break;
    case QT_F16: fill_random_kernel<<<grid, FILL_THREADS, 0, s>>>((__half *)p, n, key, a, b, normal); break;
    default: qt_fail(__FILE__, __LINE__, "dt", "random fill of a %s tensor on the GPU", qt_dtype_name(dt));
    }
    QT_LAUNCH_CHECK();
}
