/* CUDA qt_attention on tensor cores: cuBLAS GEMMs for the products, small row kernels for
 * the softmax, flash-style backward (P recomputed from the saved lse, never stored).
 *
 * Work goes in blocks: batch b, a block of query rows [t0, t1), one member g of the GQA
 * group, and up to nb KV heads at once. Query head h = kh * G + g reads KV head kh, so for
 * fixed (b, g) the heads kh0 .. kh0+nb-1 are one strided batch: q/out advance by G*hd per
 * head (row stride nh*hd), k/v by hd (row stride nkv*hd). Causality cuts the keys of a row
 * block to [0, t1): smaller blocks skip more of the masked upper triangle (at qblk = T/4,
 * 5/8 of the full T x T work) but make smaller GEMMs.
 *
 * Scores S are F32: the softmax and the lse the backward relies on see the GEMM's float
 * accumulators, not scores rounded to bf16 (half an ulp of a score of 10 is 0.02, a 2%
 * error in its probability). P goes back into S's own memory in the input dtype (row r of
 * P in the first bytes of row r of S), so the tensor cores read bf16/f16 P and the scratch
 * is 4 bytes per score, not 6. Forward: 4 * nb * rows * T bytes; backward twice that (S and
 * dP, turned in place into P and dS) plus F32 dK and dV accumulators of one batch element,
 * [T, nkv*hd] each. Accumulating a KV head's G query heads and all row blocks in F32 and
 * adding to the gradient once keeps dk/dv accurate and makes a second backward add exactly
 * the same values (gradients accumulate across steps). The scratch comes from c->work when
 * it has room (the trainer sizes it for a dequantized weight, idle during attention), else
 * from the STEP pool, and is given back before the launcher returns; at most
 * qt_attn_cfg.cap (256 MiB) unless one head of 64 rows needs more.
 *
 * Per block, forward: S = scale Q K^T (GEMM, F32 out), softmax rows -> P, lse (kernel),
 * O = P V (GEMM). Backward: S again, dP = dO V^T (GEMMs), P = exp(S - lse) and
 * dS = P * (dP - D) (kernel, D = rowsum(dO * O) computed first), dV += P^T dO,
 * dQ += scale dS K, dK += scale dS^T Q (GEMMs; dQ straight into the gradient, each row of it
 * written by one GEMM). */
#include "attention.cuh"

#define TC_THREADS 256     /* softmax row kernels */
#define TC_QBLK 512        /* default query rows per block */
#define TC_MIN_ROWS 64     /* fewest rows per block when the scratch is tight */
#define TC_CAP ((size_t)256 << 20)

/* ---- kernels */

/* Block-wide (max, sum of exp(x - max)) of the threads' partial pairs. */
__device__ __forceinline__ void lse_merge(float &m, float &l, float m2, float l2) {
    float mn = fmaxf(m, m2);
    if (mn == -INFINITY) return; /* both empty */
    l = l * expf(m - mn) + l2 * expf(m2 - mn);
    m = mn;
}

__device__ void block_lse(float &m, float &l) {
    __shared__ float sm[TC_THREADS / 32], sl[TC_THREADS / 32];
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), l2 = __shfl_xor_sync(0xffffffffu, l, o);
        lse_merge(m, l, m2, l2);
    }
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) sm[w] = m, sl[w] = l;
    __syncthreads();
    m = -INFINITY, l = 0.0f;
    for (int i = 0; i < TC_THREADS / 32; i++) lse_merge(m, l, sm[i], sl[i]);
}

/* Where a block's scores are: head j of the batch, row i (query t0 + i); rows of ld floats.
 * Query head (kh0 + j) * G + g, batch b: its lse/dsum entry. */
struct tc_rows {
    float *S;
    int ld, nk, rows, t0;
    int b, T, nh, G, g, kh0;
    __device__ int64_t stat(int j, int t) const { return ((int64_t)b * nh + (int64_t)(kh0 + j) * G + g) * T + t; }
};

/* Row (i, j) of S: scores of query t = t0 + i against keys 0..nk-1; keys > t are masked.
 * Writes P = softmax in place in T (row-major, row stride ld * 4 / sizeof(T)) and the lse.
 * In place: element s of P lies inside float s * sizeof(T) / 4 <= s, so each chunk of the
 * row is read into registers before the barrier and written after it; every earlier
 * element was read in an earlier chunk. */
template <typename T>
__global__ void __launch_bounds__(TC_THREADS) tc_softmax_kernel(tc_rows r, float *lse) {
    int i = blockIdx.x, j = blockIdx.y, t = r.t0 + i, nvalid = t + 1;
    float *srow = r.S + ((int64_t)j * r.rows + i) * r.ld;
    float m = -INFINITY, l = 0.0f;
    for (int s = threadIdx.x; s < nvalid; s += TC_THREADS) {
        float x = srow[s];
        if (x > m) l = l * expf(m - x) + 1.0f, m = x;
        else l += expf(x - m);
    }
    block_lse(m, l);
    if (threadIdx.x == 0) lse[r.stat(j, t)] = m + logf(l);
    float inv = 1.0f / l;
    T *prow = (T *)srow;
    for (int base = 0; base < r.nk; base += TC_THREADS) {
        int s = base + threadIdx.x;
        float p = s < nvalid ? expf(srow[s] - m) * inv : 0.0f;
        __syncthreads();
        if (s < r.nk) qt_st(prow, s, p);
    }
}

/* Backward rows: P = exp(S - lse) into S's memory, dS = P * (dP - D) into dP's (both in T,
 * in place as above). dP NULL: only P is needed (dv alone). */
template <typename T>
__global__ void __launch_bounds__(TC_THREADS)
tc_dsoftmax_kernel(tc_rows r, float *dP, const float *lse, const float *dsum) {
    int i = blockIdx.x, j = blockIdx.y, t = r.t0 + i, nvalid = t + 1;
    int64_t ro = ((int64_t)j * r.rows + i) * r.ld;
    float *srow = r.S + ro, *dprow = dP ? dP + ro : NULL;
    float L = lse[r.stat(j, t)], D = dsum[r.stat(j, t)];
    T *prow = (T *)srow, *dsrow = (T *)dprow;
    for (int base = 0; base < r.nk; base += TC_THREADS) {
        int s = base + threadIdx.x;
        float p = 0.0f, ds = 0.0f;
        if (s < nvalid) {
            p = expf(srow[s] - L);
            if (dprow) ds = p * (dprow[s] - D);
        }
        __syncthreads();
        if (s < r.nk) {
            qt_st(prow, s, p);
            if (dsrow) qt_st(dsrow, s, ds);
        }
    }
}

/* D = rowsum(dO * O) per (b, t, h), one warp per row of nh*hd-wide rows; dsum [B, nh, T]. */
#define TC_DSUM_WARPS 8
template <typename T>
__global__ void __launch_bounds__(TC_DSUM_WARPS * 32)
tc_dsum_kernel(float *dsum, const T *dout, const T *out, int64_t nrows, int T_, int nh, int hd) {
    int64_t r = (int64_t)blockIdx.x * TC_DSUM_WARPS + (threadIdx.x >> 5);
    if (r >= nrows) return;
    int lane = threadIdx.x & 31;
    float s = 0.0f;
    for (int d = lane; d < hd; d += 32) s += qt_ld(dout + r * hd, d) * qt_ld(out + r * hd, d);
    s = warp_sum(s);
    int64_t h = r % nh, bt = r / nh, b = bt / T_, t = bt % T_;
    if (lane == 0) dsum[(b * nh + h) * T_ + t] = s;
}

/* dk += ak, dv += av over n elements (either may be NULL). When k and v are one tensor,
 * dk == dv: the same thread adds both. */
template <typename T>
__global__ void tc_add_kernel(T *dk, const float *ak, T *dv, const float *av, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        if (dk) qt_st(dk, i, qt_ld(dk, i) + ak[i]);
        if (dv) qt_st(dv, i, qt_ld(dv, i) + av[i]);
    }
}

/* ---- batched GEMM, row-major */

/* A row-major operand: data, row stride, stride between the matrices of the batch, type. */
struct tc_mat {
    const void *p;
    int64_t ld, stride;
    cudaDataType_t t;
};

static cudaDataType_t tc_type(qt_dtype dt) {
    return dt == QT_F32 ? CUDA_R_32F : dt == QT_BF16 ? CUDA_R_16BF : CUDA_R_16F;
}

/* C = alpha op(A) op(B) + beta C for each of n matrices, row-major, float accumulation (TF32
 * only for F32 with c->tf32, as qt_cuda_gemm). Column-major cuBLAS sees the transposes, so
 * the operands swap and M with N (see matmul.cu). */
static void tc_gemm(qt_ctx *c, bool ta, bool tb, int M, int N, int K, float alpha, tc_mat A,
                    tc_mat B, float beta, tc_mat C, int n, qt_dtype in_dt) {
    cublasComputeType_t ct = (in_dt == QT_F32 && c->tf32) ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    QT_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        qt_cuda(c)->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K,
        &alpha, B.p, B.t, (int)B.ld, (long long)B.stride, A.p, A.t, (int)A.ld, (long long)A.stride,
        &beta, (void *)C.p, C.t, (int)C.ld, (long long)C.stride, n, ct, CUBLAS_GEMM_DEFAULT));
}

/* ---- plan: scratch and block sizes */

typedef struct tc_plan {
    qt_arena *arena; /* where the scratch came from; reset to mark when done */
    size_t mark;
    float *acc_k, *acc_v; /* backward: F32 [T, nkv*hd] of one batch element */
    float *S, *dP;        /* nb heads x tq rows x ldmax floats each (dP: backward) */
    int tq, nb, ldmax;
} tc_plan;

static size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

/* Bytes of a that are still free after the alignment of the next allocation. */
static size_t arena_room(const qt_arena *a) {
    size_t start = round_up(a->used, 256);
    return a->base && start < a->cap ? a->cap - start : 0;
}

/* Forced, or AUTO for long sequences (a forced cuDNN path never gets here: it fails loudly). */
static bool tc_chosen(int T) {
    qt_attn_path p = qt_attn_path_now();
    return p == QT_ATTN_TC || (p == QT_ATTN_AUTO && T >= QT_ATTN_TC_MIN_T);
}

static bool plan_make(qt_ctx *c, int T, int nkv, int hd, bool bwd, tc_plan *p) {
    int qblk = qt_attn_cfg.qblk > 0 ? qt_attn_cfg.qblk : TC_QBLK;
    size_t cap = qt_attn_cfg.cap ? qt_attn_cfg.cap : TC_CAP;
    int f = bwd ? 2 : 1;
    p->ldmax = (int)round_up((size_t)T, 8); /* 32-byte rows: aligned operands for the GEMMs */
    size_t row = (size_t)p->ldmax * 4 * f;   /* S (and dP) bytes per query row and head */
    size_t acc = bwd ? round_up((size_t)T * nkv * hd * 4, 256) : 0;
    int tq = T < qblk ? T : qblk, tmin = tq < TC_MIN_ROWS ? tq : TC_MIN_ROWS;
    size_t minb = 2 * acc + (size_t)tmin * row, want = 2 * acc + (size_t)tq * row * nkv;
    if (want > cap) want = cap > minb ? cap : minb;
    qt_arena *as[2] = {&c->work, &c->data[QT_STEP]};
    void *base = NULL;
    size_t got = 0;
    for (int i = 0; i < 2 && !base; i++) {
        size_t room = arena_room(as[i]);
        if (room < minb) continue;
        got = room < want ? room : want;
        p->arena = as[i];
        p->mark = qt_arena_mark(as[i]);
        base = qt_arena_try_alloc(as[i], got);
    }
    if (!base) return false;
    size_t heads_bytes = got - 2 * acc;
    while (tq > tmin && heads_bytes / ((size_t)tq * row) == 0) tq = tq / 2 > tmin ? tq / 2 : tmin;
    size_t nb = heads_bytes / ((size_t)tq * row);
    QT_CHECK(nb >= 1, "attention: scratch of %zu bytes holds no block", got);
    p->tq = tq;
    p->nb = (int)(nb < (size_t)nkv ? nb : (size_t)nkv);
    if (p->nb > 65535) p->nb = 65535; /* gridDim.y of the row kernels */
    p->acc_k = bwd ? (float *)base : NULL;
    p->acc_v = bwd ? (float *)((char *)base + acc) : NULL;
    p->S = (float *)((char *)base + 2 * acc);
    p->dP = bwd ? p->S + (size_t)p->nb * tq * p->ldmax : NULL;
    qt_attn_cfg.last_tq = p->tq;
    qt_attn_cfg.last_nb = p->nb;
    return true;
}

static void plan_release(qt_ctx *c, tc_plan *p) {
    (void)c;
    qt_arena_reset(p->arena, p->mark);
    qt_attn_cfg.tc_calls++;
}

/* Element i of t, as a pointer (t's dtype). */
static void *elem(const qt_tensor *t, int64_t i) { return (char *)t->data + i * (int64_t)qt_dtype_size(t->dtype); }

/* ---- launchers */

extern "C" bool qt_cuda_attention_tc_fwd(qt_ctx *c, qt_tensor *out, qt_tensor *lse, const qt_tensor *q,
                                         const qt_tensor *k, const qt_tensor *v, int B, int seqT,
                                         int nh, int nkv, int hd) {
    if (!tc_chosen(seqT)) return false;
    tc_plan pl;
    if (!plan_make(c, seqT, nkv, hd, false, &pl)) return false;
    const int G = nh / nkv, R = 4 / (int)qt_dtype_size(q->dtype); /* dtype elements per float */
    const float scale = (float)(1.0 / sqrt((double)hd));
    const cudaDataType_t dt = tc_type(q->dtype);
    const int64_t qs = (int64_t)nh * hd, ks = (int64_t)nkv * hd;
    for (int b = 0; b < B; b++)
        for (int t0 = 0; t0 < seqT; t0 += pl.tq) {
            int t1 = t0 + pl.tq < seqT ? t0 + pl.tq : seqT, rows = t1 - t0, nk = t1;
            int ld = (int)round_up((size_t)nk, 8);
            for (int g = 0; g < G; g++)
                for (int kh0 = 0; kh0 < nkv; kh0 += pl.nb) {
                    int n = nkv - kh0 < pl.nb ? nkv - kh0 : pl.nb;
                    int64_t qo = ((int64_t)b * seqT + t0) * qs + ((int64_t)kh0 * G + g) * hd;
                    int64_t ko = (int64_t)b * seqT * ks + (int64_t)kh0 * hd;
                    tc_mat Q = {elem(q, qo), qs, (int64_t)G * hd, dt}, K = {elem(k, ko), ks, hd, dt};
                    tc_mat V = {elem(v, ko), ks, hd, dt}, O = {elem(out, qo), qs, (int64_t)G * hd, dt};
                    tc_mat S = {pl.S, ld, (int64_t)rows * ld, CUDA_R_32F};
                    tc_mat P = {pl.S, (int64_t)ld * R, (int64_t)rows * ld * R, dt};
                    tc_gemm(c, false, true, rows, nk, hd, scale, Q, K, 0.0f, S, n, q->dtype);
                    tc_rows r = {pl.S, ld, nk, rows, t0, b, seqT, nh, G, g, kh0};
                    QT_DISPATCH_FLOAT(q->dtype, "attention", {
                        tc_softmax_kernel<T><<<dim3(rows, n), TC_THREADS, 0, qt_stream(c)>>>(
                            r, (float *)lse->data);
                        QT_LAUNCH_CHECK();
                    });
                    tc_gemm(c, false, false, rows, hd, nk, 1.0f, P, V, 0.0f, O, n, q->dtype);
                }
        }
    plan_release(c, &pl);
    return true;
}

extern "C" bool qt_cuda_attention_tc_bwd(qt_ctx *c, const qt_tensor *dout, const qt_tensor *out,
                                         const qt_tensor *lse, qt_tensor *dsum, const qt_tensor *q,
                                         const qt_tensor *k, const qt_tensor *v, qt_tensor *dq,
                                         qt_tensor *dk, qt_tensor *dv, int B, int seqT, int nh,
                                         int nkv, int hd) {
    if (!tc_chosen(seqT)) return false;
    tc_plan pl;
    if (!plan_make(c, seqT, nkv, hd, true, &pl)) return false;
    const int G = nh / nkv, R = 4 / (int)qt_dtype_size(q->dtype);
    const float scale = (float)(1.0 / sqrt((double)hd));
    const cudaDataType_t dt = tc_type(q->dtype);
    const int64_t qs = (int64_t)nh * hd, ks = (int64_t)nkv * hd, nkvel = (int64_t)seqT * ks;
    const bool need_ds = dq || dk;
    int64_t nrows = (int64_t)B * seqT * nh;
    QT_CHECK(nrows / TC_DSUM_WARPS < 0x7fffffff, "attention: %lld rows is too many", (long long)nrows);
    QT_DISPATCH_FLOAT(q->dtype, "attention backward", {
        tc_dsum_kernel<T><<<(unsigned)((nrows + TC_DSUM_WARPS - 1) / TC_DSUM_WARPS), TC_DSUM_WARPS * 32, 0,
                            qt_stream(c)>>>((float *)dsum->data, (const T *)dout->data,
                                            (const T *)out->data, nrows, seqT, nh, hd);
        QT_LAUNCH_CHECK();
    });
    for (int b = 0; b < B; b++) {
        if (dk) QT_CUDA_CHECK(cudaMemsetAsync(pl.acc_k, 0, (size_t)nkvel * 4, qt_stream(c)));
        if (dv) QT_CUDA_CHECK(cudaMemsetAsync(pl.acc_v, 0, (size_t)nkvel * 4, qt_stream(c)));
        for (int t0 = 0; t0 < seqT; t0 += pl.tq) {
            int t1 = t0 + pl.tq < seqT ? t0 + pl.tq : seqT, rows = t1 - t0, nk = t1;
            int ld = (int)round_up((size_t)nk, 8);
            for (int g = 0; g < G; g++)
                for (int kh0 = 0; kh0 < nkv; kh0 += pl.nb) {
                    int n = nkv - kh0 < pl.nb ? nkv - kh0 : pl.nb;
                    int64_t qo = ((int64_t)b * seqT + t0) * qs + ((int64_t)kh0 * G + g) * hd;
                    int64_t ko = (int64_t)b * seqT * ks + (int64_t)kh0 * hd;
                    int64_t hs = (int64_t)G * hd;
                    tc_mat Q = {elem(q, qo), qs, hs, dt}, dO = {elem(dout, qo), qs, hs, dt};
                    tc_mat K = {elem(k, ko), ks, hd, dt}, V = {elem(v, ko), ks, hd, dt};
                    tc_mat S = {pl.S, ld, (int64_t)rows * ld, CUDA_R_32F};
                    tc_mat dP = {pl.dP, ld, (int64_t)rows * ld, CUDA_R_32F};
                    tc_mat P = {pl.S, (int64_t)ld * R, (int64_t)rows * ld * R, dt};
                    tc_mat dS = {pl.dP, (int64_t)ld * R, (int64_t)rows * ld * R, dt};
                    tc_gemm(c, false, true, rows, nk, hd, scale, Q, K, 0.0f, S, n, q->dtype);
                    if (need_ds) tc_gemm(c, false, true, rows, nk, hd, 1.0f, dO, V, 0.0f, dP, n, q->dtype);
                    tc_rows r = {pl.S, ld, nk, rows, t0, b, seqT, nh, G, g, kh0};
                    QT_DISPATCH_FLOAT(q->dtype, "attention backward", {
                        tc_dsoftmax_kernel<T><<<dim3(rows, n), TC_THREADS, 0, qt_stream(c)>>>(
                            r, need_ds ? pl.dP : (float *)NULL, (const float *)lse->data,
                            (const float *)dsum->data);
                        QT_LAUNCH_CHECK();
                    });
                    tc_mat aK = {pl.acc_k + kh0 * hd, ks, hd, CUDA_R_32F};
                    tc_mat aV = {pl.acc_v + kh0 * hd, ks, hd, CUDA_R_32F};
                    if (dv) tc_gemm(c, true, false, nk, hd, rows, 1.0f, P, dO, 1.0f, aV, n, q->dtype);
                    if (dk) tc_gemm(c, true, false, nk, hd, rows, scale, dS, Q, 1.0f, aK, n, q->dtype);
                    if (dq) {
                        tc_mat dQ = {elem(dq, qo), qs, hs, dt};
                        tc_gemm(c, false, false, rows, hd, nk, scale, dS, K, 1.0f, dQ, n, q->dtype);
                    }
                }
        }
        if (dk || dv) {
            int64_t o = (int64_t)b * nkvel;
            unsigned grid = (unsigned)((nkvel + 255) / 256 < 4096 ? (nkvel + 255) / 256 : 4096);
            QT_DISPATCH_FLOAT(q->dtype, "attention backward", {
                tc_add_kernel<T><<<grid, 256, 0, qt_stream(c)>>>(
                    dk ? (T *)elem(dk, o) : (T *)NULL, pl.acc_k, dv ? (T *)elem(dv, o) : (T *)NULL,
                    pl.acc_v, nkvel);
                QT_LAUNCH_CHECK();
            });
        }
    }
    plan_release(c, &pl);
    return true;
}
