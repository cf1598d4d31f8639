/* Causal grouped-query attention: out = softmax(q k^T / sqrt(hd) + causal mask) v per (batch,
 * query head), query head h reading KV head h / (nh / nkv).
 *
 * Three CUDA paths (attention.h says which runs when): plain warp-per-row kernels
 * (attention.cu, no tensor cores), cuBLAS tensor-core GEMMs over blocks of query rows
 * (attention_tc.cu) and cuDNN's fused flash attention (attention_cudnn.cu). This file's CPU
 * reference and the tests are the oracle for all three.
 *
 * Memory: forward saves only the per-row log-sum-exp of the scaled scores (lse, [B, nh, T]);
 * backward recomputes the probabilities from q, k and lse, flash-attention style, so nothing
 * of size T x T is ever stored. On the GPU lse is F32; the CPU reference keeps it in F64 so
 * finite-difference checks in float64 stay exact. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention.h"

qt_attn_config qt_attn_cfg; /* AUTO, defaults */

qt_attn_path qt_attn_path_now(void) {
    if (qt_attn_cfg.path != QT_ATTN_AUTO) return qt_attn_cfg.path;
    const char *e = getenv("QTRAIN_ATTN");
    if (!e || !*e || !strcmp(e, "auto")) return QT_ATTN_AUTO;
    if (!strcmp(e, "cudnn")) return QT_ATTN_CUDNN;
    if (!strcmp(e, "tc")) return QT_ATTN_TC;
    if (!strcmp(e, "rows")) return QT_ATTN_ROWS;
    qt_fail(__FILE__, __LINE__, "QTRAIN_ATTN", "QTRAIN_ATTN=%s is not an attention path: use cudnn, tc, "
            "rows or auto (or unset it)", e);
}

#ifndef QT_WITH_CUDA
bool qt_cuda_attention_cudnn_probe(qt_ctx *c, qt_dtype dt, int B, int T, int nh, int nkv, int hd,
                                   char *why, size_t n) {
    (void)c, (void)dt, (void)B, (void)T, (void)nh, (void)nkv, (void)hd;
    snprintf(why, n, "this build has no CUDA");
    return false;
}

bool qt_cuda_attention_cudnn_graphs_check(int B, int T, int nh, int nkv, int hd, char *why, size_t n) {
    (void)B, (void)T, (void)nh, (void)nkv, (void)hd;
    snprintf(why, n, "this build has no CUDA");
    return false;
}
#endif

typedef struct attn_dims {
    int B, T, nh, nkv, hd;
} attn_dims;

/* Row-major offsets of head vectors: q/out rows have nh heads, k/v rows nkv heads. */
static inline int64_t head_off(const attn_dims *d, int b, int t, int heads, int h) {
    return (((int64_t)b * d->T + t) * heads + h) * d->hd;
}

static double dot(const double *a, const double *b, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* ---- CPU reference */

/* One query row: orow += softmax(scale * q k_s) v_s over keys s < nkeys, key/value s at
 * k0/v0 + s * kstride; p is scratch for nkeys scores. Returns the log-sum-exp of the scaled
 * scores. Shared with the KV-cache op (attention_kv.c). */
double qt_attn_cpu_row(const double *qr, const double *k0, const double *v0, int64_t kstride,
                       int nkeys, int hd, double *p, double *orow) {
    const double scale = 1.0 / sqrt((double)hd);
    double m = -INFINITY, sum = 0;
    for (int s = 0; s < nkeys; s++) {
        p[s] = scale * dot(qr, k0 + s * kstride, hd);
        m = fmax(m, p[s]);
    }
    for (int s = 0; s < nkeys; s++) sum += (p[s] = exp(p[s] - m));
    for (int s = 0; s < nkeys; s++) {
        const double *vr = v0 + s * kstride;
        for (int i = 0; i < hd; i++) orow[i] += p[s] / sum * vr[i];
    }
    return m + log(sum);
}

static void attn_cpu_fwd(qt_ctx *c, const attn_dims *d, qt_tensor *out, qt_tensor *lse,
                         const qt_tensor *q, const qt_tensor *k, const qt_tensor *v) {
    size_t m0 = qt_scratch_mark(c);
    const double *Q = qt_cpu_load(c, q), *K = qt_cpu_load(c, k), *V = qt_cpu_load(c, v);
    double *O = qt_cpu_scratch(c, out->numel), *L = qt_cpu_scratch(c, lse->numel);
    double *p = qt_cpu_scratch(c, d->T);
    const int G = d->nh / d->nkv;
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < d->nh; h++)
            for (int t = 0; t < d->T; t++) {
                int64_t qo = head_off(d, b, t, d->nh, h), ko = head_off(d, b, 0, d->nkv, h / G);
                L[((int64_t)b * d->nh + h) * d->T + t] = qt_attn_cpu_row(
                    Q + qo, K + ko, V + ko, (int64_t)d->nkv * d->hd, t + 1, d->hd, p, O + qo);
            }
    qt_cpu_store(out, O);
    qt_cpu_store(lse, L);
    qt_scratch_reset(c, m0);
}

/* dS = P * (dP - D) with D_t = rowsum(dO_t * O_t) = sum_s P_ts dP_ts (the softmax Jacobian),
 * dq_t = scale * sum_s dS_ts k_s, dk_s = scale * sum_t dS_ts q_t, dv_s = sum_t P_ts dO_t.
 * The k/v sums run over every query head of the group, which is how GQA shares a KV head. */
static void attn_cpu_bwd(qt_ctx *c, const attn_dims *d, qt_node *n) {
    qt_tensor *q = n->in[0], *k = n->in[1], *v = n->in[2], *lse = n->saved[0];
    size_t m0 = qt_scratch_mark(c);
    const double *Q = qt_cpu_load(c, q), *K = qt_cpu_load(c, k), *V = qt_cpu_load(c, v);
    const double *O = qt_cpu_load(c, n->out), *dO = qt_cpu_load(c, n->out->grad);
    const double *L = qt_cpu_load(c, lse);
    double *dQ = qt_cpu_scratch(c, q->numel), *dK = qt_cpu_scratch(c, k->numel),
           *dV = qt_cpu_scratch(c, v->numel);
    const int G = d->nh / d->nkv, hd = d->hd;
    const double scale = 1.0 / sqrt((double)hd);
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < d->nh; h++)
            for (int t = 0; t < d->T; t++) {
                int64_t qo = head_off(d, b, t, d->nh, h);
                double D = dot(dO + qo, O + qo, hd), lt = L[((int64_t)b * d->nh + h) * d->T + t];
                for (int s = 0; s <= t; s++) {
                    int64_t ko = head_off(d, b, s, d->nkv, h / G);
                    double p = exp(scale * dot(Q + qo, K + ko, hd) - lt);
                    double ds = p * (dot(dO + qo, V + ko, hd) - D);
                    for (int i = 0; i < hd; i++) {
                        dQ[qo + i] += scale * ds * K[ko + i];
                        dK[ko + i] += scale * ds * Q[qo + i];
                        dV[ko + i] += p * dO[qo + i];
                    }
                }
            }
    const qt_tensor *in[3] = {q, k, v};
    const double *g[3] = {dQ, dK, dV};
    for (int i = 0; i < 3; i++)
        if (in[i]->requires_grad) qt_cpu_accum(qt_grad(c, (qt_tensor *)in[i]), g[i]);
    qt_scratch_reset(c, m0);
}

/* ---- op */

static inline qt_tensor *grad_or_null(qt_ctx *c, qt_tensor *t) { return t->requires_grad ? qt_grad(c, t) : NULL; }

static void attention_backward(qt_ctx *c, qt_node *n) {
    attn_dims d = {(int)n->i[0], (int)n->i[1], (int)n->i[2], (int)n->i[3], (int)n->i[4]};
    if (n->out->dev == QT_CPU) {
        attn_cpu_bwd(c, &d, n);
        return;
    }
    /* D scratch and the gradients that are needed (NULL: input is frozen), made inline so a
     * build without CUDA has no unused variables. */
    QT_CUDA_CALL(qt_cuda_attention_bwd, c, n->out->grad, n->out, n->saved[0],
                 qt_empty(c, QT_STEP, QT_F32, 3, n->saved[0]->shape), n->in[0], n->in[1], n->in[2],
                 grad_or_null(c, n->in[0]), grad_or_null(c, n->in[1]), grad_or_null(c, n->in[2]), d.B,
                 d.T, d.nh, d.nkv, d.hd);
}

qt_tensor *qt_attention(qt_ctx *c, qt_tensor *q, qt_tensor *k, qt_tensor *v, int B, int T, int nh,
                        int nkv, int hd) {
    char x[128], y[128];
    qt_tensor *in[3] = {q, k, v};
    for (int i = 0; i < 3; i++) {
        qt_op_check_float("attention", in[i]);
        qt_op_check_2d("attention", in[i]);
        QT_CHECK(in[i]->dtype == q->dtype && in[i]->dev == q->dev,
                 "attention: %s and %s must have the same dtype and device",
                 qt_describe(q, x, sizeof x), qt_describe(in[i], y, sizeof y));
    }
    QT_CHECK(B >= 1 && T >= 1 && nh >= 1 && nkv >= 1 && hd >= 1 && nh % nkv == 0,
             "attention: bad sizes B=%d T=%d nh=%d nkv=%d hd=%d (all >= 1, nh a multiple of nkv)",
             B, T, nh, nkv, hd);
    QT_CHECK(q->shape[0] == (int64_t)B * T && q->shape[1] == (int64_t)nh * hd,
             "attention: q is %s, expected [B*T=%lld, nh*hd=%lld]", qt_describe(q, x, sizeof x),
             (long long)B * T, (long long)nh * hd);
    for (int i = 1; i < 3; i++)
        QT_CHECK(in[i]->shape[0] == (int64_t)B * T && in[i]->shape[1] == (int64_t)nkv * hd,
                 "attention: %s is %s, expected [B*T=%lld, nkv*hd=%lld]", i == 1 ? "k" : "v",
                 qt_describe(in[i], x, sizeof x), (long long)B * T, (long long)nkv * hd);

    attn_dims d = {B, T, nh, nkv, hd};
    qt_tensor *out = qt_empty(c, QT_STEP, q->dtype, 2, q->shape);
    int64_t ls[3] = {B, nh, T};
    qt_tensor *lse = qt_empty(c, QT_STEP, q->dev == QT_CPU ? QT_F64 : QT_F32, 3, ls);
    qt_set_name(lse, "attention.lse");
    if (q->dev == QT_CUDA) {
        QT_CHECK(hd <= QT_ATTN_MAX_HD, "attention: head dim %d > %d is not supported on CUDA", hd,
                 QT_ATTN_MAX_HD);
        QT_CUDA_CALL(qt_cuda_attention_fwd, c, out, lse, q, k, v, B, T, nh, nkv, hd);
    } else {
        attn_cpu_fwd(c, &d, out, lse, q, k, v);
    }
    qt_node *n = qt_record(c, "attention", attention_backward, out, 3, in);
    if (n) {
        n->saved[0] = lse;
        n->i[0] = B, n->i[1] = T, n->i[2] = nh, n->i[3] = nkv, n->i[4] = hd;
    }
    return out;
}
