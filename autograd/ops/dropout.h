/* Internal: dropout's CUDA launcher and the keep-mask hash shared with the CPU side. */
#ifndef QT_OPS_DROPOUT_H
#define QT_OPS_DROPOUT_H

#include "ops_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* y = x * keep(seed, i) / (1 - p) (accumulate: y += ...). Also the backward, on dy. */
void qt_cuda_dropout(qt_ctx *c, qt_tensor *y, const qt_tensor *x, double p, uint64_t seed, bool accumulate);

#ifdef __cplusplus
}
#endif

/* Element i is kept when a 64-bit hash of (seed, i), read as a uniform in [0, 1), is >= p.
 * Counter-based, so the mask is never stored: backward and a checkpointed recomputation
 * regenerate it, and the CPU and the GPU draw the same mask. */
#ifdef __CUDACC__
__host__ __device__
#endif
static inline bool qt_dropout_keep(uint64_t seed, int64_t i, double p) {
    uint64_t z = seed + 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53 >= p;
}

#endif
