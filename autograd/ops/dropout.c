/* Inverted dropout with a counter-based mask (see dropout.h): y = x * keep / (1 - p). */
#include "dropout.h"

static void dropout_cpu(qt_ctx *c, qt_tensor *y, const qt_tensor *x, double p, uint64_t seed, bool accumulate) {
    size_t m = qt_scratch_mark(c);
    double *xv = qt_cpu_load(c, x), *o = qt_cpu_scratch(c, x->numel), s = 1.0 / (1.0 - p);
    for (int64_t i = 0; i < x->numel; i++) o[i] = qt_dropout_keep(seed, i, p) ? xv[i] * s : 0.0;
    if (accumulate) qt_cpu_accum(y, o);
    else qt_cpu_store(y, o);
    qt_scratch_reset(c, m);
}

static void run(qt_ctx *c, qt_tensor *y, const qt_tensor *x, double p, uint64_t seed, bool accumulate) {
    if (x->dev == QT_CUDA) QT_CUDA_CALL(qt_cuda_dropout, c, y, x, p, seed, accumulate);
    else dropout_cpu(c, y, x, p, seed, accumulate);
}

static void dropout_backward(qt_ctx *c, qt_node *n) {
    run(c, qt_grad(c, n->in[0]), n->out->grad, n->f[0], (uint64_t)n->i[0], true);
}

qt_tensor *qt_dropout(qt_ctx *c, qt_tensor *x, double p, uint64_t seed) {
    qt_op_check_float("dropout", x);
    QT_CHECK(p >= 0 && p < 1, "dropout: p = %g must be in [0, 1)", p);
    if (p == 0) return x;
    qt_tensor *y = qt_empty(c, QT_STEP, x->dtype, x->ndim, x->shape);
    run(c, y, x, p, seed, false);
    qt_node *n = qt_record(c, "dropout", dropout_backward, y, 1, &x);
    if (n) {
        n->f[0] = p;
        n->i[0] = (int64_t)seed;
    }
    return y;
}
