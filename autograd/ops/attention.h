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
 * Three CUDA implementations: warp-per-row kernels (attention.cu; no tensor cores, no
 * scratch), a cuBLAS one (attention_tc.cu; tensor-core GEMMs over query-row blocks, T x T
 * scores in a bounded scratch) and cuDNN's fused flash attention (attention_cudnn.cu; bf16/f16
 * only, nothing of size T x T). AUTO takes cuDNN when it supports the shape and its
 * workspace fits, else cuBLAS for T >= QT_ATTN_TC_MIN_T, else the row kernels (also
 * whenever the scratch cannot be had). All save the same lse, so a forward of one path pairs
 * with a backward of another. qt_attn_cfg is process-wide, for tests and benchmarks; when
 * its path is AUTO the environment variable QTRAIN_ATTN picks one: unset or "auto" (AUTO),
 * "cudnn" (cuDNN or an error: no silent fallback), "tc", "rows". */
#define QT_ATTN_TC_MIN_T 128

typedef enum { QT_ATTN_AUTO = 0, QT_ATTN_ROWS, QT_ATTN_TC, QT_ATTN_CUDNN } qt_attn_path;

typedef struct qt_attn_config {
    qt_attn_path path;
    int qblk;       /* query rows per block of the cuBLAS path (0: default, 512) */
    size_t cap;     /* scratch bytes it may take per call (0: default, 256 MiB) */
    long tc_calls;  /* counts cuBLAS-path forwards and backwards (tests check it ran) */
    int last_tq, last_nb; /* the last call's rows per block and heads per batched GEMM */
    long cudnn_calls;     /* counts cuDNN-path forwards and backwards */
    bool cudnn_bwd_nondet; /* the cuDNN backward plan last run or probed uses an engine marked
                              non-deterministic (atomics: not bitwise reproducible); the plans
                              take a deterministic engine whenever cuDNN offers one */
} qt_attn_config;
extern qt_attn_config qt_attn_cfg; /* defined in attention.c */

/* The path in force: qt_attn_cfg.path unless that is AUTO, else QTRAIN_ATTN (read at each
 * call; a value other than those above is an error naming the choices). */
qt_attn_path qt_attn_path_now(void);

/* cuDNN path: false (nothing done) when it is not chosen, or, under AUTO, when cuDNN does
 * not support the shape (one line on stderr the first time) or its workspace does not fit;
 * with the path forced to cuDNN those are errors. The launchers call these first.
 * Backward adds into dq/dk/dv (NULL: not needed) like the other paths; dsum is its F32
 * [B, nh, T] scratch for D = rowsum(dO * O). */
bool qt_cuda_attention_cudnn_fwd(qt_ctx *c, qt_tensor *out, qt_tensor *lse, const qt_tensor *q,
                                 const qt_tensor *k, const qt_tensor *v, int B, int T, int nh,
                                 int nkv, int hd);
bool qt_cuda_attention_cudnn_bwd(qt_ctx *c, const qt_tensor *dout, const qt_tensor *out,
                                 const qt_tensor *lse, qt_tensor *dsum, const qt_tensor *q,
                                 const qt_tensor *k, const qt_tensor *v, qt_tensor *dq,
                                 qt_tensor *dk, qt_tensor *dv, int B, int T, int nh, int nkv,
                                 int hd);
/* Can cuDNN run attention of this shape and dtype on c's GPU? Builds (and caches) the
 * forward and backward plans; false with the reason in why otherwise (no CUDA, no cuDNN in
 * the build, unsupported dtype or head dim, no engine). Does not look at the workspace. On
 * success sets qt_attn_cfg.cudnn_bwd_nondet for this shape's backward plan. */
bool qt_cuda_attention_cudnn_probe(qt_ctx *c, qt_dtype dt, int B, int T, int nh, int nkv, int hd,
                                   char *why, size_t n);
/* No GPU needed: builds every graph the cuDNN path uses for this shape (forward and
 * backward, both spellings, bf16 and f16) and finalises each descriptor and operation graph,
 * so cuDNN itself checks every attribute's type and every operation's shapes. false with
 * the first error in why (also in a build without cuDNN). */
bool qt_cuda_attention_cudnn_graphs_check(int B, int T, int nh, int nkv, int hd, char *why, size_t n);

/* cuBLAS path: false (nothing done) when it is not chosen or gets no scratch; the launchers
 * call these after the cuDNN path declined. */
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
