/* Device helpers shared by the attention kernels: training (attention.cu) and KV-cache
 * inference (attention_kv.cu).
 *
 * A warp works on one query row: lane l holds dims l, l+32, ... of the head vectors (NPL =
 * ceil(hd/32) per lane, in registers), a dot product is a warp-shuffle sum, and the softmax
 * over the keys is online (running max and sum), so any number of keys needs no state of
 * that size. attn_row_keys is that loop; callers differ only in where the keys are and
 * which of them a warp takes. */
#ifndef QT_OPS_ATTENTION_CUH
#define QT_OPS_ATTENTION_CUH

#include <math.h>

#include "../cuda_util.cuh"
#include "attention.h"

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Load lane's part of a head vector (dims lane + 32*j), times mul; zero past hd. */
template <typename T, int NPL>
__device__ __forceinline__ void load_vec(float (&r)[NPL], const T *p, int hd, int lane, float mul) {
#pragma unroll
    for (int j = 0; j < NPL; j++) {
        int d = lane + 32 * j;
        r[j] = d < hd ? qt_ld(p, d) * mul : 0.0f;
    }
}

template <int NPL>
__device__ __forceinline__ float part_dot(const float (&a)[NPL], const float (&b)[NPL]) {
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < NPL; j++) s += a[j] * b[j];
    return s;
}

/* Online-softmax state of one query row over the keys seen so far: m = max score, l = sum of
 * exp(score - m), acc = sum of exp(score - m) * v (the lane's dims). Output = acc / l,
 * log-sum-exp = m + log(l). No keys yet: m = -inf, l = 0, acc = 0. */
template <int NPL>
struct attn_row {
    float m, l, acc[NPL];
};

template <int NPL>
__device__ __forceinline__ void attn_row_init(attn_row<NPL> &r) {
    r.m = -INFINITY;
    r.l = 0.0f;
#pragma unroll
    for (int j = 0; j < NPL; j++) r.acc[j] = 0.0f;
}

/* Fold keys s = s0, s0 + step, ... < s1 into r. qv is the query already times the scale;
 * key/value s is at k0/v0 + s * kstride. Warp-uniform arguments (the shuffles need all 32
 * lanes). */
template <typename T, int NPL>
__device__ __forceinline__ void attn_row_keys(attn_row<NPL> &r, const float (&qv)[NPL], const T *k0,
                                              const T *v0, int64_t kstride, int s0, int s1, int step,
                                              int hd, int lane) {
    float kv[NPL];
    for (int s = s0; s < s1; s += step) {
        load_vec<T, NPL>(kv, k0 + s * kstride, hd, lane, 1.0f);
        float sc = warp_sum(part_dot<NPL>(qv, kv));
        float mn = fmaxf(r.m, sc);
        float corr = expf(r.m - mn), p = expf(sc - mn); /* corr = 0 on the first key (m = -inf) */
        r.l = r.l * corr + p;
        load_vec<T, NPL>(kv, v0 + s * kstride, hd, lane, 1.0f);
#pragma unroll
        for (int j = 0; j < NPL; j++) r.acc[j] = r.acc[j] * corr + p * kv[j];
        r.m = mn;
    }
}

/* Instantiate f<T, NPL> for the head dim: NPL = dims per lane. */
#define ATT_DISPATCH_HD(hd, ...)                                                           \
    do {                                                                                   \
        if ((hd) <= 32) { const int NPL = 1; __VA_ARGS__; }                                \
        else if ((hd) <= 64) { const int NPL = 2; __VA_ARGS__; }                           \
        else if ((hd) <= 128) { const int NPL = 4; __VA_ARGS__; }                          \
        else if ((hd) <= QT_ATTN_MAX_HD) { const int NPL = 8; __VA_ARGS__; }               \
        else qt_fail(__FILE__, __LINE__, "hd", "attention: head dim %d > %d", (hd),        \
                     QT_ATTN_MAX_HD);                                                      \
    } while (0)

#endif
