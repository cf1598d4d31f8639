/* Mean softmax cross-entropy over the rows whose target is not ignore_index:
 *   loss = (1/count) * sum_r [logsumexp(x_r) - x_r[target_r]],  0 when count == 0.
 * Gradient: dx_r = (softmax(x_r) - onehot(target_r)) * g / count, 0 on ignored rows.
 *
 * The loss is F32 [1] for F32/BF16/F16 logits. F64 logits (the CPU reference used by the
 * float64 finite-difference checks) give an F64 loss, so those checks are not limited by
 * float32 rounding of the objective.
 *
 * Targets outside [0, V) that are not ignore_index: on the CPU a check names the row and
 * value. On the GPU the count, the mean and the gradient stay on the device (no host sync
 * per step), so the kernel instead records {row, value} of the first bad target in a device
 * flag and makes the loss NaN; with QTRAIN_DEBUG_SYNC=1 in the environment the forward
 * synchronises, reads the flag and fails with the same message as the CPU. (The data
 * loader is where targets are validated against the vocabulary for users; this is the
 * backstop.) */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cross_entropy.h"

/* QTRAIN_DEBUG_SYNC=1: synchronise after forward to check device-side error flags. */
static bool debug_sync(void) {
    const char *e = getenv("QTRAIN_DEBUG_SYNC");
    return e && *e && strcmp(e, "0") != 0;
}

static void bad_target(int64_t row, int64_t target, int64_t V, int ignore_index) {
    qt_fail(__FILE__, __LINE__, "0 <= target < V",
            "cross_entropy: row %lld has target %lld, outside the vocabulary [0, %lld) and not "
            "ignore_index (%d); the targets and the model's vocabulary do not match",
            (long long)row, (long long)target, (long long)V, ignore_index);
}

/* logsumexp of one row, max-shifted. */
static double row_lse(const double *x, int64_t V) {
    double m = -INFINITY, s = 0;
    for (int64_t j = 0; j < V; j++) m = fmax(m, x[j]);
    if (m == -INFINITY) return m;
    for (int64_t j = 0; j < V; j++) s += exp(x[j] - m);
    return m + log(s);
}

/* Counted rows; checks every target. */
static int64_t count_rows(const int32_t *tg, int64_t N, int64_t V, int ignore_index) {
    int64_t n = 0;
    for (int64_t r = 0; r < N; r++) {
        if (tg[r] == ignore_index) continue;
        if (tg[r] < 0 || tg[r] >= V) bad_target(r, tg[r], V, ignore_index);
        n++;
    }
    return n;
}

static void ce_cpu_fwd(qt_ctx *c, qt_tensor *out, const qt_tensor *logits, const qt_tensor *targets,
                       int ignore_index) {
    int64_t N = logits->shape[0], V = logits->shape[1];
    const int32_t *tg = targets->data;
    int64_t count = count_rows(tg, N, V, ignore_index);
    size_t m0 = qt_scratch_mark(c);
    const double *X = qt_cpu_load(c, logits);
    double sum = 0;
    for (int64_t r = 0; r < N; r++)
        if (tg[r] != ignore_index) sum += row_lse(X + r * V, V) - X[r * V + tg[r]];
    double loss = count ? sum / (double)count : 0.0;
    qt_cpu_store(out, &loss);
    qt_scratch_reset(c, m0);
}

static void ce_cpu_bwd(qt_ctx *c, qt_node *n) {
    qt_tensor *logits = n->in[0], *targets = n->in[1];
    int ignore_index = (int)n->i[0];
    int64_t N = logits->shape[0], V = logits->shape[1];
    const int32_t *tg = targets->data;
    int64_t count = count_rows(tg, N, V, ignore_index);
    qt_tensor *grad = qt_grad(c, logits); /* exists (zero) even when every row is ignored, as on the GPU */
    if (count == 0) return;
    size_t m0 = qt_scratch_mark(c);
    const double *X = qt_cpu_load(c, logits);
    double g = qt_cpu_load(c, n->out->grad)[0];
    double *dX = qt_cpu_scratch(c, logits->numel);
    for (int64_t r = 0; r < N; r++) {
        if (tg[r] == ignore_index) continue;
        const double *x = X + r * V;
        double L = row_lse(x, V), coef = g / (double)count;
        for (int64_t j = 0; j < V; j++) dX[r * V + j] = coef * (exp(x[j] - L) - (j == tg[r]));
    }
    qt_cpu_accum(grad, dX);
    qt_scratch_reset(c, m0);
}

static void cross_entropy_backward(qt_ctx *c, qt_node *n) {
    if (!n->in[0]->requires_grad) return;
    if (n->out->dev == QT_CPU) {
        ce_cpu_bwd(c, n);
        return;
    }
    QT_CUDA_CALL(qt_cuda_cross_entropy_bwd, c, qt_grad(c, n->in[0]), n->out->grad, n->in[0],
                 n->in[1], n->saved[0], n->saved[1], (int)n->i[0]);
}

qt_tensor *qt_cross_entropy(qt_ctx *c, qt_tensor *logits, qt_tensor *targets, int ignore_index) {
    char x[128], y[128];
    qt_op_check_float("cross_entropy", logits);
    qt_op_check_2d("cross_entropy", logits);
    QT_CHECK(targets->dtype == QT_I32 && targets->ndim == 1 && targets->shape[0] == logits->shape[0] &&
                 targets->dev == logits->dev && qt_is_contiguous(targets),
             "cross_entropy: targets %s must be i32 [N] on the device of logits %s",
             qt_describe(targets, x, sizeof x), qt_describe(logits, y, sizeof y));
    int64_t N = logits->shape[0], V = logits->shape[1];
    QT_CHECK(N >= 1 && V >= 1 && V <= INT32_MAX, "cross_entropy: logits %s must have 1 <= rows and "
             "1 <= V <= 2^31-1", qt_describe(logits, x, sizeof x));

    int64_t one = 1;
    qt_tensor *out = qt_empty(c, QT_STEP, logits->dtype == QT_F64 ? QT_F64 : QT_F32, 1, &one);
    qt_tensor *lse = NULL, *inv_count = NULL;
    if (logits->dev == QT_CUDA) {
        QT_CHECK(logits->dtype != QT_F64, "cross_entropy: %s: f64 is CPU-only",
                 qt_describe(logits, x, sizeof x));
        lse = qt_empty(c, QT_STEP, QT_F32, 1, &N);
        inv_count = qt_empty(c, QT_STEP, QT_F32, 1, &one);
        int64_t three = 3;
        qt_tensor *err = qt_empty(c, QT_STEP, QT_I32, 1, &three);
        QT_CUDA_CALL(qt_cuda_cross_entropy_fwd, c, out, lse, inv_count,
                     qt_empty(c, QT_STEP, QT_F32, 1, &N) /* per-row losses */, err, logits, targets,
                     ignore_index);
        if (debug_sync()) {
            int32_t e[3];
            qt_download(err, e, QT_I32);
            if (e[0]) bad_target(e[1], e[2], V, ignore_index);
        }
    } else {
        ce_cpu_fwd(c, out, logits, targets, ignore_index);
    }
    qt_tensor *in[2] = {logits, targets};
    qt_node *n = qt_record(c, "cross_entropy", cross_entropy_backward, out, 2, in);
    if (n) {
        n->saved[0] = lse;
        n->saved[1] = inv_count;
        n->i[0] = ignore_index;
    }
    return out;
}
