/* Internal to quant/: the two bit-exact scalar rules that the CPU reference (nf4.c) and
 * the CUDA kernels (nf4.cu) must share, and the CUDA launchers. Not public API. */
#ifndef QT_NF4_INTERNAL_H
#define QT_NF4_INTERNAL_H

#include "quant.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__CUDACC__)
#define NF4_INLINE static __host__ __device__ __forceinline__
#else
#define NF4_INLINE static inline
#endif

/* NF4 code of a scaled value: how many thresholds s is strictly above. A value exactly on
 * a threshold takes the lower code; NaN (0 * inf from a subnormal absmax) takes code 0,
 * as in bnb's comparison tree. The thresholds are sorted, so four probes find the count
 * (branch-free: 8, 4, 2, 1 more thresholds below s or not). */
NF4_INLINE int nf4_code_of(float s, const float *thr) {
    int c = 0;
    c += (s > thr[c + 7]) << 3;
    c += (s > thr[c + 3]) << 2;
    c += (s > thr[c + 1]) << 1;
    c += s > thr[c];
    return c;
}

/* Nearest entry of the sorted map d to x, exactly as bnb's dQuantize<0>: a 7-step binary
 * search that ends on an even pivot p with d[p-1] < x <= d[p+1], then one comparison with
 * the float32 midpoint (neighbour + d[p]) * 0.5f towards the side x lies on; a tie stays
 * on p. Out-of-range x clamps to d[0] / d[255]. */
NF4_INLINE int nf4_q8_nearest(const float *d, float x) {
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = -1.0f, upper = 1.0f;
    float val = d[pivot];
    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = d[pivot];
    }
    /* The ends were never probed: their placeholders (-1, 1) become the real entries. */
    if (upper_pivot == 255) upper = d[255];
    if (lower_pivot == 0) lower = d[0];
    if (x > val) return x > (upper + val) * 0.5f ? upper_pivot : pivot;
    return x < (lower + val) * 0.5f ? lower_pivot : pivot;
}

/* Call a CUDA launcher, or fail clearly in a build without CUDA. */
#ifdef QT_WITH_CUDA
#define NF4_CUDA_CALL(fn, ...) fn(__VA_ARGS__)
#else
#define NF4_CUDA_CALL(fn, ...) qt_fail(__FILE__, __LINE__, #fn, "%s", "this build has no CUDA")
#endif

/* codes and absmax (float32, NaN for a block holding a non-finite value) of w. */
void nf4_cuda_quantize(qt_ctx *c, const qt_tensor *w, nf4_tensor *q, float *absmax);
/* absmax_q and absmax2 from the device absmax vector, with q->offset and q->dmap set. */
void nf4_cuda_double_quant(qt_ctx *c, const float *absmax, nf4_tensor *q);
void nf4_cuda_dequantize(qt_ctx *c, const nf4_tensor *q, qt_tensor *out);
/* Synchronous copy where at least one side is on the GPU. */
void nf4_cuda_memcpy(void *dst, qt_device dd, const void *src, qt_device sd, size_t bytes);

#ifdef __cplusplus
}
#endif
#endif
