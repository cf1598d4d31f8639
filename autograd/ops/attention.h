/* Internals of qt_attention (attention.c/.cu) and qt_attention_kv (attention_kv.c/.cu): the
 * CUDA launchers, called through QT_CUDA_CALL, and the CPU row both CPU references use.
 *
 * Layout everywhere: q/out [B*T, nh*hd], k/v [B*T, nkv*hd], rows (b, t), columns (head, dim);
 * a KV cache is k/v with Tmax rows per batch instead of T. lse and dsum are F32 [B, nh, T]:
 * the per-row log-sum-exp of the scaled scores, and D = rowsum(dO * O) for backward.
 * Kernels need hd <= QT_ATTN_MAX_HD. */
#ifndef QT_OPS_ATTENTION_H
#define QT_OPS_ATTENTION_H

#include "ops_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QT_ATTN_MAX_HD 256

/* CPU, in double: orow += softmax(q k_s / sqrt(hd)) v_s over keys s < nkeys, key and value s
 * at k0/v0 + s * kstride; p is scratch for nkeys scores. Returns the row's log-sum-exp. */
double qt_attn_cpu_row(const double *qr, const double *k0, const double *v0, int64_t kstride,
                       int nkeys, int hd, double *p, double *orow);

/* out, lse = causal softmax(q k^T * scale) v; out has q's dtype. */
void qt_cuda_attention_fwd(qt_ctx *c, qt_tensor *out, qt_tensor *lse, const qt_tensor *q,
                           const qt_tensor *k, const qt_tensor *v, int B, int T, int nh, int nkv,
                           int hd);
/* dq/dk/dv += gradients (each may be NULL: not needed). dout is out's gradient; dsum is
 * F32 [B, nh, T] scratch the launcher fills with D before the gradient kernels read it. */
void qt_cuda_attention_bwd(qt_ctx *c, const qt_tensor *dout, const qt_tensor *out,
                           const qt_tensor *lse, qt_tensor *dsum, const qt_tensor *q,
                           const qt_tensor *k, const qt_tensor *v, qt_tensor *dq, qt_tensor *dk,
                           qt_tensor *dv, int B, int T, int nh, int nkv, int hd);

/* ---- CUDA path choice
 * Two CUDA implementations: warp-per-row kernels (attention.cu; no tensor cores, no scratch)
 * and a cuBLAS one (attention_tc.cu; tensor-core GEMMs over query-row blocks, T x T scores
 * in a bounded scratch). AUTO takes cuBLAS for T >= QT_ATTN_TC_MIN_T; the row kernels stay
 * for short sequences and whenever the scratch cannot be had. Both save the same lse, so a
 * forward of one path pairs with a backward of the other. Process-wide, for tests and
 * benchmarks; the trainer leaves it at AUTO. */
#define QT_ATTN_TC_MIN_T 128

typedef enum { QT_ATTN_AUTO = 0, QT_ATTN_ROWS, QT_ATTN_TC } qt_attn_path;

typedef struct qt_attn_config {
    qt_attn_path path;
    int qblk;       /* query rows per block of the cuBLAS path (0: default, 512) */
    size_t cap;     /* scratch bytes it may take per call (0: default, 256 MiB) */
    long tc_calls;  /* counts cuBLAS-path forwards and backwards (tests check it ran) */
    int last_tq, last_nb; /* the last call's rows per block and heads per batched GEMM */
} qt_attn_config;
extern qt_attn_config qt_attn_cfg; /* defined in attention.c */

/* cuBLAS path: false (nothing done) when it is not chosen or gets no scratch; the launchers
 * above call these first. */
bool qt_cuda_attention_tc_fwd(qt_ctx *c, qt_tensor *out, qt_tensor *lse, const qt_tensor *q,
                              const qt_tensor *k, const qt_tensor *v, int B, int T, int nh, int nkv,
                              int hd);
bool qt_cuda_attention_tc_bwd(qt_ctx *c, const qt_tensor *dout, const qt_tensor *out,
                              const qt_tensor *lse, qt_tensor *dsum, const qt_tensor *q,
                              const qt_tensor *k, const qt_tensor *v, qt_tensor *dq, qt_tensor *dk,
                              qt_tensor *dv, int B, int T, int nh, int nkv, int hd);

/* out = attention of q's Tq rows (positions past..past+Tq-1) over the caches' rows
 * b*Tmax + 0..past+t; out has q's dtype. */
void qt_cuda_attention_kv(qt_ctx *c, qt_tensor *out, const qt_tensor *q, const qt_tensor *kc,
                          const qt_tensor *vc, int B, int Tq, int past, int Tmax, int nh, int nkv,
                          int hd);

#ifdef __cplusplus
}
#endif
#endif
