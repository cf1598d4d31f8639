/* CUDA side of qt_attention: straightforward kernels, one warp per output row.
 *
 * Every kernel gives one warp one row of work and walks the other sequence dimension with
 * no T-sized state: lane l holds dims l, l+32, ... of the head vectors (NPL = ceil(hd/32)
 * per lane, in registers), each dot product is a warp-shuffle sum, and the softmax is
 * online (running max and sum), so any T works and hd is bounded only by the registers
 * (QT_ATTN_MAX_HD); those per-warp pieces live in attention.cuh, shared with the KV-cache
 * kernel (attention_kv.cu). The four warps of a block take four neighbouring rows of the
 * same (batch, head), so they stream the same k/v (or q/dO) rows nearly in lockstep and
 * share them through L1. Blocks go heaviest rows first, so the long rows do not trail at
 * the end.
 *
 * Backward recomputes P = exp(s - lse) from the saved lse (flash-attention style):
 *   1. dsum: D_t = rowsum(dO_t * O_t), one warp per query row;
 *   2. dq:   one warp per query row t, looping over keys s <= t;
 *   3. dk/dv: one warp per key row s of a KV head, looping over every query head of its
 *      group and every query t >= s.
 * Each gradient row is owned by exactly one warp, so there are no atomics: results are
 * deterministic, and the warp adds into the gradient tensor in its own dtype (grads
 * accumulate across ops). The cost is recomputing P in both kernels 2 and 3.
 *
 * These are the path for short sequences (T < QT_ATTN_TC_MIN_T) and the fallback; the
 * launchers first offer the call to cuDNN's fused attention (attention_cudnn.cu), then to
 * the cuBLAS tensor-core path (attention_tc.cu) for longer sequences. */
#include "attention.cuh"

#define ATT_WARPS 4

/* g[d] += r[j] for the lane's dims: the warp owns this gradient row, no other writer. */
template <typename T, int NPL>
__device__ __forceinline__ void accum_vec(T *g, const float (&r)[NPL], int hd, int lane, float mul) {
#pragma unroll
    for (int j = 0; j < NPL; j++) {
        int d = lane + 32 * j;
        if (d < hd) qt_st(g, d, qt_ld(g, d) + mul * r[j]);
    }
}

/* Query-row kernels (forward, dsum, dq): block -> (tile, b, h), warp -> t, longest rows
 * (largest t) first. Returns false for a warp past the start of the sequence. */
__device__ __forceinline__ bool query_row(int B, int T, int nh, int *b, int *h, int *t) {
    int nbh = B * nh, tile = (int)(blockIdx.x / nbh), bh = (int)(blockIdx.x % nbh);
    *b = bh / nh;
    *h = bh % nh;
    *t = T - 1 - (tile * ATT_WARPS + (int)(threadIdx.x >> 5));
    return *t >= 0;
}

template <typename T, int NPL>
__global__ void __launch_bounds__(ATT_WARPS * 32)
attn_fwd_kernel(T *out, float *lse, const T *q, const T *k, const T *v, int B, int T_, int nh, int nkv,
                int hd, float scale) {
    int b, h, t, lane = threadIdx.x & 31;
    if (!query_row(B, T_, nh, &b, &h, &t)) return;
    int kvh = h / (nh / nkv);
    int64_t qo = (((int64_t)b * T_ + t) * nh + h) * hd, kstride = (int64_t)nkv * hd;
    const T *k0 = k + ((int64_t)b * T_ * nkv + kvh) * hd, *v0 = v + ((int64_t)b * T_ * nkv + kvh) * hd;
    float qv[NPL];
    load_vec<T, NPL>(qv, q + qo, hd, lane, scale);
    attn_row<NPL> r;
    attn_row_init<NPL>(r);
    attn_row_keys<T, NPL>(r, qv, k0, v0, kstride, 0, t + 1, 1, hd, lane);
    T *orow = out + qo;
    float inv = 1.0f / r.l;
#pragma unroll
    for (int j = 0; j < NPL; j++) {
        int d = lane + 32 * j;
        if (d < hd) qt_st(orow, d, r.acc[j] * inv);
    }
    if (lane == 0) lse[((int64_t)b * nh + h) * T_ + t] = r.m + logf(r.l);
}

template <typename T, int NPL>
__global__ void __launch_bounds__(ATT_WARPS * 32)
attn_dsum_kernel(float *dsum, const T *dout, const T *out, int B, int T_, int nh, int hd) {
    int b, h, t, lane = threadIdx.x & 31;
    if (!query_row(B, T_, nh, &b, &h, &t)) return;
    int64_t qo = (((int64_t)b * T_ + t) * nh + h) * hd;
    float a[NPL], o[NPL];
    load_vec<T, NPL>(a, dout + qo, hd, lane, 1.0f);
    load_vec<T, NPL>(o, out + qo, hd, lane, 1.0f);
    float D = warp_sum(part_dot<NPL>(a, o));
    if (lane == 0) dsum[((int64_t)b * nh + h) * T_ + t] = D;
}

template <typename T, int NPL>
__global__ void __launch_bounds__(ATT_WARPS * 32)
attn_dq_kernel(T *dq, const float *lse, const float *dsum, const T *dout, const T *q, const T *k,
               const T *v, int B, int T_, int nh, int nkv, int hd, float scale) {
    int b, h, t, lane = threadIdx.x & 31;
    if (!query_row(B, T_, nh, &b, &h, &t)) return;
    int kvh = h / (nh / nkv);
    int64_t qo = (((int64_t)b * T_ + t) * nh + h) * hd, kstride = (int64_t)nkv * hd;
    const T *k0 = k + ((int64_t)b * T_ * nkv + kvh) * hd, *v0 = v + ((int64_t)b * T_ * nkv + kvh) * hd;
    float qv[NPL], dov[NPL], kv[NPL], vv[NPL], acc[NPL];
    load_vec<T, NPL>(qv, q + qo, hd, lane, scale);
    load_vec<T, NPL>(dov, dout + qo, hd, lane, 1.0f);
#pragma unroll
    for (int j = 0; j < NPL; j++) acc[j] = 0.0f;
    int64_t li = ((int64_t)b * nh + h) * T_ + t;
    float L = lse[li], D = dsum[li];
    for (int s = 0; s <= t; s++) {
        load_vec<T, NPL>(kv, k0 + s * kstride, hd, lane, 1.0f);
        load_vec<T, NPL>(vv, v0 + s * kstride, hd, lane, 1.0f);
        float sc = warp_sum(part_dot<NPL>(qv, kv)), dp = warp_sum(part_dot<NPL>(dov, vv));
        float ds = expf(sc - L) * (dp - D);
#pragma unroll
        for (int j = 0; j < NPL; j++) acc[j] += ds * kv[j];
    }
    accum_vec<T, NPL>(dq + qo, acc, hd, lane, scale);
}

/* Key-row kernel: block -> (tile, b, kvh), warp -> s, smallest s (most queries) first. */
template <typename T, int NPL>
__global__ void __launch_bounds__(ATT_WARPS * 32)
attn_dkv_kernel(T *dk, T *dv, const float *lse, const float *dsum, const T *dout, const T *q,
                const T *k, const T *v, int B, int T_, int nh, int nkv, int hd, float scale) {
    int lane = threadIdx.x & 31;
    int nbk = B * nkv, tile = (int)(blockIdx.x / nbk), bk = (int)(blockIdx.x % nbk);
    int b = bk / nkv, kvh = bk % nkv, s = tile * ATT_WARPS + (int)(threadIdx.x >> 5);
    if (s >= T_) return;
    int G = nh / nkv;
    int64_t ko = (((int64_t)b * T_ + s) * nkv + kvh) * hd, qstride = (int64_t)nh * hd;
    float kv[NPL], vv[NPL], qv[NPL], dov[NPL], dka[NPL], dva[NPL];
    load_vec<T, NPL>(kv, k + ko, hd, lane, scale);
    load_vec<T, NPL>(vv, v + ko, hd, lane, 1.0f);
#pragma unroll
    for (int j = 0; j < NPL; j++) dka[j] = dva[j] = 0.0f;
    for (int h = kvh * G; h < (kvh + 1) * G; h++) {
        const T *q0 = q + ((int64_t)b * T_ * nh + h) * hd, *do0 = dout + ((int64_t)b * T_ * nh + h) * hd;
        const float *L = lse + ((int64_t)b * nh + h) * T_, *D = dsum + ((int64_t)b * nh + h) * T_;
        for (int t = s; t < T_; t++) {
            load_vec<T, NPL>(qv, q0 + t * qstride, hd, lane, 1.0f);
            load_vec<T, NPL>(dov, do0 + t * qstride, hd, lane, 1.0f);
            float sc = warp_sum(part_dot<NPL>(qv, kv)), dp = warp_sum(part_dot<NPL>(dov, vv));
            float p = expf(sc - L[t]), ds = p * (dp - D[t]);
#pragma unroll
            for (int j = 0; j < NPL; j++) {
                dva[j] += p * dov[j];
                dka[j] += ds * qv[j];
            }
        }
    }
    /* k and v may be the same tensor: this lane adds both into its own elements in turn. */
    if (dk) accum_vec<T, NPL>(dk + ko, dka, hd, lane, scale);
    if (dv) accum_vec<T, NPL>(dv + ko, dva, hd, lane, 1.0f);
}

static unsigned rows_grid(int T, int64_t heads_total) {
    int64_t n = (int64_t)((T + ATT_WARPS - 1) / ATT_WARPS) * heads_total;
    QT_CHECK(n >= 1 && n <= 0x7fffffff, "attention: %lld blocks is too many", (long long)n);
    return (unsigned)n;
}

/* The launchers' sequence length is seqT: inside the dispatch macros T is the element type. */
extern "C" void qt_cuda_attention_fwd(qt_ctx *c, qt_tensor *out, qt_tensor *lse, const qt_tensor *q,
                                      const qt_tensor *k, const qt_tensor *v, int B, int seqT, int nh,
                                      int nkv, int hd) {
    if (qt_cuda_attention_cudnn_fwd(c, out, lse, q, k, v, B, seqT, nh, nkv, hd)) return;
    if (qt_cuda_attention_tc_fwd(c, out, lse, q, k, v, B, seqT, nh, nkv, hd)) return;
    float scale = (float)(1.0 / sqrt((double)hd));
    unsigned grid = rows_grid(seqT, (int64_t)B * nh);
    QT_DISPATCH_FLOAT(q->dtype, "attention", ATT_DISPATCH_HD(hd, {
        attn_fwd_kernel<T, NPL><<<grid, ATT_WARPS * 32, 0, qt_stream(c)>>>(
            (T *)out->data, (float *)lse->data, (const T *)q->data, (const T *)k->data,
            (const T *)v->data, B, seqT, nh, nkv, hd, scale);
        QT_LAUNCH_CHECK();
    }));
}

extern "C" void qt_cuda_attention_bwd(qt_ctx *c, const qt_tensor *dout, const qt_tensor *out,
                                      const qt_tensor *lse, qt_tensor *dsum, const qt_tensor *q,
                                      const qt_tensor *k, const qt_tensor *v, qt_tensor *dq,
                                      qt_tensor *dk, qt_tensor *dv, int B, int seqT, int nh, int nkv,
                                      int hd) {
    char x[128];
    const qt_tensor *same[3] = {dout, dq, dk ? dk : dv};
    for (int i = 0; i < 3; i++)
        QT_CHECK(!same[i] || same[i]->dtype == q->dtype, "attention backward: %s has not q's dtype",
                 qt_describe(same[i], x, sizeof x));
    QT_CHECK(!dk || !dv || dk->dtype == dv->dtype, "attention backward: dk and dv dtypes differ");
    if (!dq && !dk && !dv) return;
    if (qt_cuda_attention_cudnn_bwd(c, dout, out, lse, dsum, q, k, v, dq, dk, dv, B, seqT, nh, nkv, hd))
        return;
    if (qt_cuda_attention_tc_bwd(c, dout, out, lse, dsum, q, k, v, dq, dk, dv, B, seqT, nh, nkv, hd))
        return;
    float scale = (float)(1.0 / sqrt((double)hd));
    unsigned qgrid = rows_grid(seqT, (int64_t)B * nh), kgrid = rows_grid(seqT, (int64_t)B * nkv);
    QT_DISPATCH_FLOAT(q->dtype, "attention backward", ATT_DISPATCH_HD(hd, {
        attn_dsum_kernel<T, NPL><<<qgrid, ATT_WARPS * 32, 0, qt_stream(c)>>>(
            (float *)dsum->data, (const T *)dout->data, (const T *)out->data, B, seqT, nh, hd);
        QT_LAUNCH_CHECK();
        if (dq) {
            attn_dq_kernel<T, NPL><<<qgrid, ATT_WARPS * 32, 0, qt_stream(c)>>>(
                (T *)dq->data, (const float *)lse->data, (const float *)dsum->data,
                (const T *)dout->data, (const T *)q->data, (const T *)k->data, (const T *)v->data,
                B, seqT, nh, nkv, hd, scale);
            QT_LAUNCH_CHECK();
        }
        if (dk || dv) {
            attn_dkv_kernel<T, NPL><<<kgrid, ATT_WARPS * 32, 0, qt_stream(c)>>>(
                dk ? (T *)dk->data : (T *)NULL, dv ? (T *)dv->data : (T *)NULL,
                (const float *)lse->data, (const float *)dsum->data, (const T *)dout->data,
                (const T *)q->data, (const T *)k->data, (const T *)v->data, B, seqT, nh, nkv, hd,
                scale);
            QT_LAUNCH_CHECK();
        }
    }));
}
