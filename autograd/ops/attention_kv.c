/* Attention over a KV cache, for text generation: forward only, nothing recorded.
 *
 * The cache holds Tmax rows per batch item (row b*Tmax + t is position t); the caller writes
 * the keys/values of this step's positions past..past+Tq-1 into it first, then asks for the
 * queries of those positions. Query t (position past+t) reads cache positions 0..past+t:
 * with past = 0 and Tq = T this is exactly qt_attention's causal mask, and a prefill
 * followed by one-token decode steps gives the same rows as one qt_attention over the whole
 * sequence (the test checks that). Rows past past+Tq-1 are never read, so a cache need not
 * be cleared between sequences.
 *
 * The per-row arithmetic is qt_attention's: the CPU reference calls the same row function
 * (qt_attn_cpu_row, attention.c) and the kernel the same per-warp online softmax
 * (attention.cuh); only where the keys are and how many differ. */
#include "attention.h"

typedef struct kv_dims {
    int B, Tq, past, Tmax, nh, nkv, hd;
} kv_dims;

static void kv_cpu_fwd(qt_ctx *c, const kv_dims *d, qt_tensor *out, const qt_tensor *q,
                       const qt_tensor *kc, const qt_tensor *vc) {
    size_t m0 = qt_scratch_mark(c);
    const double *Q = qt_cpu_load(c, q), *K = qt_cpu_load(c, kc), *V = qt_cpu_load(c, vc);
    double *O = qt_cpu_scratch(c, out->numel), *p = qt_cpu_scratch(c, d->past + d->Tq);
    const int G = d->nh / d->nkv, hd = d->hd;
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < d->nh; h++)
            for (int t = 0; t < d->Tq; t++) {
                int64_t qo = (((int64_t)b * d->Tq + t) * d->nh + h) * hd;
                int64_t ko = ((int64_t)b * d->Tmax * d->nkv + h / G) * hd; /* position 0 */
                qt_attn_cpu_row(Q + qo, K + ko, V + ko, (int64_t)d->nkv * hd, d->past + t + 1, hd,
                                p, O + qo);
            }
    qt_cpu_store(out, O);
    qt_scratch_reset(c, m0);
}

qt_tensor *qt_attention_kv(qt_ctx *c, qt_tensor *q, qt_tensor *kc, qt_tensor *vc, int B, int Tq,
                           int past, int Tmax, int nh, int nkv, int hd) {
    char x[128], y[128];
    qt_tensor *in[3] = {q, kc, vc};
    const char *names[3] = {"q", "k cache", "v cache"};
    for (int i = 0; i < 3; i++) {
        qt_op_check_float("attention_kv", in[i]);
        qt_op_check_2d("attention_kv", in[i]);
        QT_CHECK(in[i]->dtype == q->dtype && in[i]->dev == q->dev,
                 "attention_kv: %s %s and q %s must have the same dtype and device", names[i],
                 qt_describe(in[i], y, sizeof y), qt_describe(q, x, sizeof x));
    }
    QT_CHECK(q->dev == c->dev, "attention_kv: q %s is not on the context's device (%s)",
             qt_describe(q, x, sizeof x), qt_device_name(c->dev));
    /* No backward exists: refuse rather than silently cut the gradient of a trained q/k/v. */
    QT_CHECK(!c->grad_enabled || !(q->requires_grad || kc->requires_grad || vc->requires_grad),
             "attention_kv: inputs require grad but this op has no backward; it is for "
             "inference: set c->grad_enabled = false around generation");
    QT_CHECK(B >= 1 && Tq >= 1 && past >= 0 && Tmax >= 1 && nh >= 1 && nkv >= 1 && hd >= 1 &&
                 nh % nkv == 0,
             "attention_kv: bad sizes B=%d Tq=%d past=%d Tmax=%d nh=%d nkv=%d hd=%d (past >= 0, "
             "the others >= 1, nh a multiple of nkv)",
             B, Tq, past, Tmax, nh, nkv, hd);
    QT_CHECK((int64_t)past + Tq <= Tmax,
             "attention_kv: past=%d + Tq=%d positions do not fit the cache's Tmax=%d rows per batch",
             past, Tq, Tmax);
    QT_CHECK(q->shape[0] == (int64_t)B * Tq && q->shape[1] == (int64_t)nh * hd,
             "attention_kv: q is %s, expected [B*Tq=%lld, nh*hd=%lld]", qt_describe(q, x, sizeof x),
             (long long)B * Tq, (long long)nh * hd);
    for (int i = 1; i < 3; i++)
        QT_CHECK(in[i]->shape[0] == (int64_t)B * Tmax && in[i]->shape[1] == (int64_t)nkv * hd,
                 "attention_kv: %s is %s, expected [B*Tmax=%lld, nkv*hd=%lld]", names[i],
                 qt_describe(in[i], x, sizeof x), (long long)B * Tmax, (long long)nkv * hd);

    qt_tensor *out = qt_empty(c, QT_STEP, q->dtype, 2, q->shape);
    if (q->dev == QT_CUDA) {
        QT_CHECK(hd <= QT_ATTN_MAX_HD, "attention_kv: head dim %d > %d is not supported on CUDA",
                 hd, QT_ATTN_MAX_HD);
        QT_CUDA_CALL(qt_cuda_attention_kv, c, out, q, kc, vc, B, Tq, past, Tmax, nh, nkv, hd);
    } else {
        kv_dims d = {B, Tq, past, Tmax, nh, nkv, hd};
        kv_cpu_fwd(c, &d, out, q, kc, vc);
    }
    return out;
}
