/* RMSNorm: y = round(x / sqrt(mean(x^2) + eps)) * w over the last dimension of x [N, H].
 *
 * Hugging Face (LlamaRMSNorm) normalises in float32 and casts back to the input dtype
 * *before* multiplying by w: y = w * (x.float() * rsqrt(var + eps)).to(dtype). For BF16/F16
 * tensors both backends reproduce that extra rounding ("round" above; a no-op for F32/F64),
 * so a bf16 model normalises bit-for-bit like transformers up to the last ulp of rstd.
 *
 * Backward (the rounding is treated as the identity), with n = x * rstd and dn = dy * w:
 *   dw = sum_rows dy * n
 *   dx = rstd * (dn - n * mean(dn * n))
 * The forward saves rstd per row (saved[0]: F32 [N] on the GPU, F64 [N] on the CPU where the
 * reference works in double) so backward does not redo the reduction over x^2. */
#include <math.h>

#include "rmsnorm.h"

/* v rounded to dt the way a cast to dt rounds it (through float32, like the GPU). */
static double round_as(qt_dtype dt, double v) {
    if (dt == QT_BF16) return qt_bf16_to_f32(qt_f32_to_bf16((float)v));
    if (dt == QT_F16) return qt_f16_to_f32(qt_f32_to_f16((float)v));
    return v;
}

static void rmsnorm_backward(qt_ctx *c, qt_node *n) {
    qt_tensor *x = n->in[0], *w = n->in[1], *rstd = n->saved[0], *gy = n->out->grad;
    if (x->dev == QT_CUDA) {
        QT_CUDA_CALL(qt_cuda_rmsnorm_bwd, c, x->requires_grad ? qt_grad(c, x) : NULL,
                     w->requires_grad ? qt_grad(c, w) : NULL, gy, x, w, rstd);
        return;
    }
    int64_t N = x->shape[0], H = x->shape[1];
    size_t m = qt_scratch_mark(c);
    double *X = qt_cpu_load(c, x), *W = qt_cpu_load(c, w), *G = qt_cpu_load(c, gy), *R = qt_cpu_load(c, rstd);
    double *gx = x->requires_grad ? qt_cpu_scratch(c, N * H) : NULL;
    double *gw = w->requires_grad ? qt_cpu_scratch(c, H) : NULL;
    for (int64_t row = 0; row < N; row++) {
        const double *xr = X + row * H, *gr = G + row * H;
        double r = R[row], dot = 0;
        for (int64_t i = 0; i < H; i++) {
            double nrm = xr[i] * r;
            dot += gr[i] * W[i] * nrm;
            if (gw) gw[i] += gr[i] * nrm;
        }
        dot /= (double)H;
        if (gx)
            for (int64_t i = 0; i < H; i++) gx[row * H + i] = r * (gr[i] * W[i] - xr[i] * r * dot);
    }
    if (gx) qt_cpu_accum(qt_grad(c, x), gx);
    if (gw) qt_cpu_accum(qt_grad(c, w), gw);
    qt_scratch_reset(c, m);
}

qt_tensor *qt_rmsnorm(qt_ctx *c, qt_tensor *x, qt_tensor *w, double eps) {
    char a[128], b[128];
    qt_op_check_float("rmsnorm", x);
    qt_op_check_2d("rmsnorm", x);
    qt_op_check_float("rmsnorm", w);
    QT_CHECK(w->ndim == 1 && w->shape[0] == x->shape[1] && w->dtype == x->dtype && w->dev == x->dev,
             "rmsnorm: weight %s must be [H] with x %s's H, dtype and device", qt_describe(w, a, sizeof a),
             qt_describe(x, b, sizeof b));
    QT_CHECK(eps >= 0 && isfinite(eps), "rmsnorm: eps %g must be finite and >= 0", eps);
    int64_t N = x->shape[0], H = x->shape[1];
    qt_tensor *y = qt_empty(c, QT_STEP, x->dtype, 2, x->shape);
    /* rstd is only worth keeping when the op will be recorded (same test as qt_record). */
    bool keep = c->grad_enabled && (x->requires_grad || w->requires_grad);
    qt_tensor *rstd = keep ? qt_empty(c, QT_STEP, x->dev == QT_CUDA ? QT_F32 : QT_F64, 1, &N) : NULL;
    if (rstd) qt_set_name(rstd, "rmsnorm.rstd");
    if (x->dev == QT_CUDA) {
        QT_CUDA_CALL(qt_cuda_rmsnorm_fwd, c, y, rstd, x, w, eps);
    } else {
        size_t m = qt_scratch_mark(c);
        double *X = qt_cpu_load(c, x), *W = qt_cpu_load(c, w), *Y = qt_cpu_scratch(c, N * H);
        double *R = qt_cpu_scratch(c, N);
        for (int64_t row = 0; row < N; row++) {
            const double *xr = X + row * H;
            double ss = 0;
            for (int64_t i = 0; i < H; i++) ss += xr[i] * xr[i];
            double r = 1.0 / sqrt(ss / (double)(H ? H : 1) + eps);
            R[row] = r;
            for (int64_t i = 0; i < H; i++) Y[row * H + i] = round_as(x->dtype, xr[i] * r) * W[i];
        }
        qt_cpu_store(y, Y);
        if (rstd) qt_cpu_store(rstd, R);
        qt_scratch_reset(c, m);
    }
    qt_tensor *in[2] = {x, w};
    qt_node *n = qt_record(c, "rmsnorm", rmsnorm_backward, y, 2, in);
    if (n) {
        QT_CHECK(rstd, "rmsnorm: recorded without saved statistics");
        n->saved[0] = rstd;
        n->f[0] = eps;
    }
    return y;
}
