/* qt_lora: a LoRA adapter added onto a base projection in one op,
 *   out = y + s · (dropout(x) · Aᵀ) · Bᵀ,    x [N, in], A [r, in], B [out, r], y [N, out].
 *
 * Why one op: composed from cast/dropout/matmul/scale/cast/add, every step of the adapter
 * streams an [N, out] or [N, in] tensor in F32, forward and backward, while the real work
 * is two thin GEMMs through rank r. Here the output GEMM adds into y's buffer (beta = 1)
 * and y's gradient is dout itself, so the only [N, out] traffic left is that GEMM's own
 * read and write (see lora.cu for the GPU side and its precision).
 *
 * Backward, with xd = dropout(x) (mask m, kept values scaled by 1/(1-p)) and t = xd·Aᵀ:
 *   dt = s · dY · B            [N, r]
 *   dA = dtᵀ · xd              [r, in]
 *   dB = s · dYᵀ · t           [out, r]
 *   dx = m/(1-p) ⊙ (dt · A)    [N, in]
 *   dy = dY
 * The mask is dropout.h's counter-based one over x's elements, so it equals qt_dropout(x)'s
 * and a checkpointed recomputation replays it. The CPU reference recomputes xd and t in
 * double; the GPU keeps t (and xd when p > 0) from the forward. */
#include "dropout.h"
#include "lora.h"

/* ---- CPU reference (double) */

/* dropout(x) as doubles: x's own values when p = 0. */
static double *cpu_dropped(qt_ctx *c, const qt_tensor *x, double p, uint64_t seed) {
    double *xv = qt_cpu_load(c, x);
    if (p == 0) return xv;
    double *o = qt_cpu_scratch(c, x->numel), s = 1.0 / (1.0 - p);
    for (int64_t i = 0; i < x->numel; i++) o[i] = qt_dropout_keep(seed, i, p) ? xv[i] * s : 0.0;
    return o;
}

/* t[n, k] = Σ_j xd[n, j] · a[k, j] */
static double *cpu_t(qt_ctx *c, const double *xd, const double *a, int64_t N, int64_t in, int64_t r) {
    double *t = qt_cpu_scratch(c, N * r);
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < r; k++) {
            double s = 0;
            for (int64_t j = 0; j < in; j++) s += xd[n * in + j] * a[k * in + j];
            t[n * r + k] = s;
        }
    return t;
}

static void cpu_fwd(qt_ctx *c, qt_tensor *out, const qt_tensor *x, const qt_tensor *A, const qt_tensor *B,
                    double scale, double p, uint64_t seed) {
    int64_t N = x->shape[0], in = x->shape[1], r = A->shape[0], O = B->shape[0];
    size_t m = qt_scratch_mark(c);
    double *t = cpu_t(c, cpu_dropped(c, x, p, seed), qt_cpu_load(c, A), N, in, r);
    double *b = qt_cpu_load(c, B), *u = qt_cpu_scratch(c, N * O);
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < O; o++) {
            double s = 0;
            for (int64_t k = 0; k < r; k++) s += t[n * r + k] * b[o * r + k];
            u[n * O + o] = scale * s;
        }
    qt_cpu_accum(out, u); /* out holds y */
    qt_scratch_reset(c, m);
}

static void cpu_bwd(qt_ctx *c, const qt_tensor *gy, const qt_tensor *x, const qt_tensor *A, const qt_tensor *B,
                    qt_tensor *dA, qt_tensor *dB, qt_tensor *dx, double scale, double p, uint64_t seed) {
    int64_t N = x->shape[0], in = x->shape[1], r = A->shape[0], O = B->shape[0];
    size_t m = qt_scratch_mark(c);
    double *dy = qt_cpu_load(c, gy), *a = qt_cpu_load(c, A), *b = qt_cpu_load(c, B);
    double *xd = cpu_dropped(c, x, p, seed);
    double *dt = qt_cpu_scratch(c, N * r);
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < O; o++) {
            double g = scale * dy[n * O + o];
            for (int64_t k = 0; k < r; k++) dt[n * r + k] += g * b[o * r + k];
        }
    if (dA) {
        double *ga = qt_cpu_scratch(c, r * in);
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < r; k++)
                for (int64_t j = 0; j < in; j++) ga[k * in + j] += dt[n * r + k] * xd[n * in + j];
        qt_cpu_accum(dA, ga);
    }
    if (dB) {
        double *t = cpu_t(c, xd, a, N, in, r), *gb = qt_cpu_scratch(c, O * r);
        for (int64_t n = 0; n < N; n++)
            for (int64_t o = 0; o < O; o++) {
                double g = scale * dy[n * O + o];
                for (int64_t k = 0; k < r; k++) gb[o * r + k] += g * t[n * r + k];
            }
        qt_cpu_accum(dB, gb);
    }
    if (dx) {
        double *gx = qt_cpu_scratch(c, N * in), s = 1.0 / (1.0 - p);
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < r; k++)
                for (int64_t j = 0; j < in; j++) gx[n * in + j] += dt[n * r + k] * a[k * in + j];
        if (p > 0)
            for (int64_t i = 0; i < N * in; i++) gx[i] = qt_dropout_keep(seed, i, p) ? gx[i] * s : 0.0;
        qt_cpu_accum(dx, gx);
    }
    qt_scratch_reset(c, m);
}

/* ---- op */

/* in = {y, x, A, B}; saved = {t, xd} on the GPU (xd NULL when p = 0); f = {scale, p}; i[0] = seed */
static void lora_backward(qt_ctx *c, qt_node *n) {
    qt_tensor *y = n->in[0], *x = n->in[1], *A = n->in[2], *B = n->in[3], *g = n->out->grad;
    double scale = n->f[0], p = n->f[1];
    uint64_t seed = (uint64_t)n->i[0];
    /* dy = dout: y's gradient is dout's buffer itself when y has none yet (y's memory became
     * out's, so nothing read y after this op and nothing else has accumulated into it). */
    if (y->requires_grad) {
        if (!y->grad) y->grad = qt_reshape_nograd(c, g, g->ndim, g->shape);
        else qt_accum_grad(c, y, g, 1.0);
    }
    qt_tensor *dA = A->requires_grad ? qt_grad(c, A) : NULL, *dB = B->requires_grad ? qt_grad(c, B) : NULL;
    qt_tensor *dx = x->requires_grad ? qt_grad(c, x) : NULL;
    if (!dA && !dB && !dx) return;
    if (x->dev == QT_CUDA) {
        if (x->shape[0] == 0) return;
        /* the GEMMs read dropout(x) as the forward stored it, or x itself when p = 0 */
        QT_CUDA_CALL(qt_cuda_lora_bwd, c, g, n->saved[1] ? n->saved[1] : x, A, B, n->saved[0], dA, dB, dx,
                     scale, p, seed);
    } else {
        cpu_bwd(c, g, x, A, B, dA, dB, dx, scale, p, seed);
    }
}

qt_tensor *qt_lora(qt_ctx *c, qt_tensor *y, qt_tensor *x, qt_tensor *A, qt_tensor *B, double scale,
                   double dropout, uint64_t seed) {
    char d1[128], d2[128], d3[128], d4[128];
    qt_op_check_float("lora", x);
    qt_op_check_float("lora", y);
    qt_op_check_float("lora", A);
    qt_op_check_float("lora", B);
    qt_op_check_2d("lora", x);
    qt_op_check_2d("lora", y);
    qt_op_check_2d("lora", A);
    qt_op_check_2d("lora", B);
    int64_t N = x->shape[0], in = x->shape[1], r = A->shape[0], O = B->shape[0];
    QT_CHECK(A->shape[1] == in && B->shape[1] == r && y->shape[0] == N && y->shape[1] == O,
             "lora: shapes do not chain: x %s, A %s, B %s, y %s (want x [N,in], A [r,in], B [out,r], y [N,out])",
             qt_describe(x, d1, sizeof d1), qt_describe(A, d2, sizeof d2), qt_describe(B, d3, sizeof d3),
             qt_describe(y, d4, sizeof d4));
    QT_CHECK(y->dtype == x->dtype && y->dev == x->dev && A->dev == x->dev && B->dev == x->dev,
             "lora: y %s must have x %s's dtype and all must share a device", qt_describe(y, d1, sizeof d1),
             qt_describe(x, d2, sizeof d2));
    QT_CHECK(A->dtype == B->dtype && (A->dtype == QT_F32 || (A->dtype == QT_F64 && A->dev == QT_CPU)),
             "lora: A %s and B %s must both be F32 (F64 only on the CPU)", qt_describe(A, d1, sizeof d1),
             qt_describe(B, d2, sizeof d2));
    QT_CHECK(y->pool == QT_STEP && y->data != x->data,
             "lora: y %s is consumed (its buffer becomes the output): it must be a STEP tensor other than x",
             qt_describe(y, d1, sizeof d1));
    QT_CHECK(dropout >= 0 && dropout < 1, "lora: dropout p = %g must be in [0, 1)", dropout);
    qt_tensor *out = qt_reshape_nograd(c, y, 2, y->shape);
    qt_tensor *t = NULL, *xd = NULL;
    if (x->dev == QT_CUDA) {
        int64_t ts[2] = {N, r};
        t = qt_empty(c, QT_STEP, x->dtype, 2, ts);
        if (dropout > 0) xd = qt_empty(c, QT_STEP, x->dtype, 2, x->shape);
        if (N > 0) {
            if (xd) QT_CUDA_CALL(qt_cuda_dropout, c, xd, x, dropout, seed, false);
            QT_CUDA_CALL(qt_cuda_lora_fwd, c, out, xd ? xd : x, A, B, t, scale);
        }
    } else {
        cpu_fwd(c, out, x, A, B, scale, dropout, seed);
    }
    qt_tensor *ins[4] = {y, x, A, B};
    qt_node *n = qt_record(c, "lora", lora_backward, out, 4, ins);
    if (n) {
        n->saved[0] = t;
        n->saved[1] = xd;
        n->f[0] = scale;
        n->f[1] = dropout;
        n->i[0] = (int64_t)seed;
    }
    return out;
}
