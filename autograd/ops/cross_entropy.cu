/* CUDA side of qt_cross_entropy: one block per row with an online max/sum over the
 * vocabulary (V up to 128256 and beyond: each thread strides over the row, then the
 * (max, sum) pairs are reduced across the block), a one-block finalize that averages the
 * counted rows in a fixed order (deterministic), and a backward that reads the upstream
 * gradient and 1/count from device memory: no host synchronisation anywhere. */
#include <math.h>

#include "../cuda_util.cuh"
#include "cross_entropy.h"

#define CE_THREADS 512
#define CE_FIN_THREADS 256

/* (m, s) represents s * exp(m): merge two such partial sums of exponentials. */
__device__ __forceinline__ void lse_merge(float &m, float &s, float m2, float s2) {
    float M = fmaxf(m, m2);
    if (M == -INFINITY) { /* both empty (or all -inf logits) */
        s = 0.0f;
        return;
    }
    s = s * expf(m - M) + s2 * expf(m2 - M);
    m = M;
}

template <typename T>
__global__ void __launch_bounds__(CE_THREADS)
ce_row_kernel(float *row_loss, float *lse, int *err, const T *x, const int32_t *tg, int64_t V,
              int ignore_index) {
    __shared__ float sm[CE_THREADS / 32], ss[CE_THREADS / 32];
    int64_t r = blockIdx.x;
    const T *xr = x + r * V;
    float m = -INFINITY, s = 0.0f;
    for (int64_t i = threadIdx.x; i < V; i += CE_THREADS) {
        float a = qt_ld(xr, i);
        if (a > m) {
            s = s * expf(m - a) + 1.0f;
            m = a;
        } else {
            s += a == -INFINITY ? 0.0f : expf(a - m); /* a NaN logit makes s NaN, as it should */
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, m2, s2);
    }
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) sm[warp] = m, ss[warp] = s;
    __syncthreads();
    if (warp != 0) return;
    m = lane < CE_THREADS / 32 ? sm[lane] : -INFINITY;
    s = lane < CE_THREADS / 32 ? ss[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, m2, s2);
    }
    if (lane != 0) return;
    float L = m + logf(s), loss = 0.0f;
    int t = tg[r];
    if (t != ignore_index) {
        if (t < 0 || (int64_t)t >= V) {
            if (atomicCAS(err, 0, 1) == 0) err[1] = (int)r, err[2] = t; /* first one reported */
            loss = NAN;
        } else {
            loss = L - qt_ld(xr, t);
        }
    }
    lse[r] = L;
    row_loss[r] = loss;
}

/* out = mean of the counted rows' losses, inv_count = 1/count (both 0 if none). */
__global__ void __launch_bounds__(CE_FIN_THREADS)
ce_finalize_kernel(float *out, float *inv_count, const float *row_loss, const int32_t *tg, int64_t N,
                   int ignore_index) {
    __shared__ double ssum[CE_FIN_THREADS / 32];
    __shared__ long long scnt[CE_FIN_THREADS / 32];
    double sum = 0.0;
    long long cnt = 0;
    for (int64_t r = threadIdx.x; r < N; r += CE_FIN_THREADS)
        if (tg[r] != ignore_index) sum += row_loss[r], cnt++;
    for (int o = 16; o > 0; o >>= 1) {
        sum += __shfl_xor_sync(0xffffffffu, sum, o);
        cnt += __shfl_xor_sync(0xffffffffu, cnt, o);
    }
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) ssum[warp] = sum, scnt[warp] = cnt;
    __syncthreads();
    if (threadIdx.x != 0) return;
    sum = 0.0;
    cnt = 0;
    for (int w = 0; w < CE_FIN_THREADS / 32; w++) sum += ssum[w], cnt += scnt[w];
    out[0] = cnt ? (float)(sum / (double)cnt) : 0.0f;
    inv_count[0] = cnt ? (float)(1.0 / (double)cnt) : 0.0f;
}

template <typename T>
__global__ void __launch_bounds__(CE_THREADS)
ce_bwd_kernel(T *dx, const float *dout, const T *x, const int32_t *tg, const float *lse,
              const float *inv_count, int64_t V, int ignore_index) {
    int64_t r = blockIdx.x;
    int t = tg[r];
    if (t == ignore_index || t < 0 || (int64_t)t >= V) return; /* bad targets: loss is NaN already */
    float coef = dout[0] * inv_count[0], L = lse[r];
    const T *xr = x + r * V;
    T *dr = dx + r * V;
    for (int64_t i = threadIdx.x; i < V; i += CE_THREADS) {
        float d = expf(qt_ld(xr, i) - L) - (i == t ? 1.0f : 0.0f);
        qt_st(dr, i, qt_ld(dr, i) + coef * d);
    }
}

extern "C" void qt_cuda_cross_entropy_fwd(qt_ctx *c, qt_tensor *out, qt_tensor *lse,
                                          qt_tensor *inv_count, qt_tensor *row_loss, qt_tensor *err,
                                          const qt_tensor *logits, const qt_tensor *targets,
                                          int ignore_index) {
    int64_t N = logits->shape[0], V = logits->shape[1];
    QT_CHECK(out->dtype == QT_F32 && lse->dtype == QT_F32 && inv_count->dtype == QT_F32 &&
                 row_loss->dtype == QT_F32 && err->dtype == QT_I32 && err->numel >= 3,
             "cross_entropy: bad scratch tensors");
    QT_CHECK(N >= 1 && N <= 0x7fffffff, "cross_entropy: %lld rows", (long long)N);
    QT_CUDA_CHECK(cudaMemsetAsync(err->data, 0, 3 * sizeof(int32_t), qt_stream(c)));
    QT_DISPATCH_FLOAT(logits->dtype, "cross_entropy", {
        ce_row_kernel<T><<<(unsigned)N, CE_THREADS, 0, qt_stream(c)>>>(
            (float *)row_loss->data, (float *)lse->data, (int *)err->data, (const T *)logits->data,
            (const int32_t *)targets->data, V, ignore_index);
        QT_LAUNCH_CHECK();
    });
    ce_finalize_kernel<<<1, CE_FIN_THREADS, 0, qt_stream(c)>>>(
        (float *)out->data, (float *)inv_count->data, (const float *)row_loss->data,
        (const int32_t *)targets->data, N, ignore_index);
    QT_LAUNCH_CHECK();
}

extern "C" void qt_cuda_cross_entropy_bwd(qt_ctx *c, qt_tensor *dlogits, const qt_tensor *dout,
                                          const qt_tensor *logits, const qt_tensor *targets,
                                          const qt_tensor *lse, const qt_tensor *inv_count,
                                          int ignore_index) {
    int64_t N = logits->shape[0], V = logits->shape[1];
    char x[128];
    QT_CHECK(dout->dtype == QT_F32 && dlogits->dtype == logits->dtype && dlogits->numel == logits->numel,
             "cross_entropy backward: upstream %s / gradient %s", qt_describe(dout, x, sizeof x),
             dlogits->name);
    QT_DISPATCH_FLOAT(logits->dtype, "cross_entropy backward", {
        ce_bwd_kernel<T><<<(unsigned)N, CE_THREADS, 0, qt_stream(c)>>>(
            (T *)dlogits->data, (const float *)dout->data, (const T *)logits->data,
            (const int32_t *)targets->data, (const float *)lse->data, (const float *)inv_count->data,
            V, ignore_index);
        QT_LAUNCH_CHECK();
    });
}
