/* CUDA side of qt_attention_kv: one block per query row (b, t, h), its warps splitting the
 * row's keys.
 *
 * Decoding has one query row per (batch, head), so the training kernel's layout (one warp
 * per row, one row after another through the keys) would leave a long row to a single warp.
 * Here warp w of a block folds keys w, w+nw, w+2nw, ... into its own online-softmax state
 * (attn_row_keys from attention.cuh, the training kernel's loop), then the block merges the
 * nw states through shared memory: with M the largest warp max, out = sum_w e^(m_w - M)
 * acc_w / sum_w e^(m_w - M) l_w. Neighbouring warps read neighbouring cache rows, and the
 * query heads of a GQA group read the same rows, so they meet in L1/L2.
 *
 * nw grows with the longest row, one warp per KV_KEYS_PER_WARP keys up to KV_MAX_WARPS:
 * short rows do not pay for idle warps, long decode rows get 8-way parallelism. Prefill
 * (Tq > 1) uses the same kernel, longest rows (largest t) first. */
#include "attention.cuh"

#define KV_MAX_WARPS 8
#define KV_KEYS_PER_WARP 32

template <typename T, int NPL>
__global__ void __launch_bounds__(KV_MAX_WARPS * 32)
attn_kv_kernel(T *out, const T *q, const T *kc, const T *vc, int B, int Tq, int past, int Tmax,
               int nh, int nkv, int hd, float scale) {
    __shared__ float s_m[KV_MAX_WARPS], s_l[KV_MAX_WARPS], s_acc[KV_MAX_WARPS][NPL * 32];
    int nbh = B * nh, bh = (int)(blockIdx.x % nbh), t = Tq - 1 - (int)(blockIdx.x / nbh);
    int b = bh / nh, h = bh % nh, kvh = h / (nh / nkv);
    int nw = (int)(blockDim.x >> 5), w = (int)(threadIdx.x >> 5), lane = (int)(threadIdx.x & 31);
    int64_t qo = (((int64_t)b * Tq + t) * nh + h) * hd, kstride = (int64_t)nkv * hd;
    int64_t c0 = ((int64_t)b * Tmax * nkv + kvh) * hd; /* cache row b*Tmax (position 0), head kvh */

    float qv[NPL];
    load_vec<T, NPL>(qv, q + qo, hd, lane, scale);
    attn_row<NPL> r;
    attn_row_init<NPL>(r);
    attn_row_keys<T, NPL>(r, qv, kc + c0, vc + c0, kstride, w, past + t + 1, nw, hd, lane);

    if (lane == 0) s_m[w] = r.m, s_l[w] = r.l;
#pragma unroll
    for (int j = 0; j < NPL; j++) s_acc[w][lane + 32 * j] = r.acc[j];
    __syncthreads();

    /* Warp 0 always has key 0, so M is finite; a warp that got no key has m = -inf and
     * l = acc = 0, so its weight is exp(-inf) = 0. */
    float M = s_m[0], wgt[KV_MAX_WARPS], L = 0.0f;
    for (int i = 1; i < nw; i++) M = fmaxf(M, s_m[i]);
#pragma unroll
    for (int i = 0; i < KV_MAX_WARPS; i++) {
        wgt[i] = i < nw ? expf(s_m[i] - M) : 0.0f;
        if (i < nw) L += wgt[i] * s_l[i];
    }
    float inv = 1.0f / L;
    for (int d = (int)threadIdx.x; d < hd; d += (int)blockDim.x) {
        float a = 0.0f;
#pragma unroll
        for (int i = 0; i < KV_MAX_WARPS; i++)
            if (i < nw) a += wgt[i] * s_acc[i][d];
        qt_st(out + qo, d, a * inv);
    }
}

/* The sequence lengths are Tq/Tmax: inside the dispatch macros T is the element type. */
extern "C" void qt_cuda_attention_kv(qt_ctx *c, qt_tensor *out, const qt_tensor *q,
                                     const qt_tensor *kc, const qt_tensor *vc, int B, int Tq,
                                     int past, int Tmax, int nh, int nkv, int hd) {
    float scale = (float)(1.0 / sqrt((double)hd));
    int64_t blocks = (int64_t)B * nh * Tq;
    QT_CHECK(blocks >= 1 && blocks <= 0x7fffffff, "attention_kv: %lld blocks is too many",
             (long long)blocks);
    int keys = past + Tq; /* the longest row's */
    int nw = (keys + KV_KEYS_PER_WARP - 1) / KV_KEYS_PER_WARP;
    nw = nw < 1 ? 1 : nw > KV_MAX_WARPS ? KV_MAX_WARPS : nw;
    QT_DISPATCH_FLOAT(q->dtype, "attention_kv", ATT_DISPATCH_HD(hd, {
        attn_kv_kernel<T, NPL><<<(unsigned)blocks, nw * 32, 0, qt_stream(c)>>>(
            (T *)out->data, (const T *)q->data, (const T *)kc->data, (const T *)vc->data, B, Tq,
            past, Tmax, nh, nkv, hd, scale);
        QT_LAUNCH_CHECK();
    }));
}
