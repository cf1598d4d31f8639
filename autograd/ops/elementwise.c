/* add, scale, cast: the simplest ops, and the pattern every other op follows. */
#include <stdio.h>

#include "ops_internal.h"

void qt_op_check_float(const char *op, const qt_tensor *t) {
    char b[128];
    QT_CHECK(qt_dtype_is_float(t->dtype), "%s: %s must be a float tensor", op, qt_describe(t, b, sizeof b));
    QT_CHECK(qt_is_contiguous(t), "%s: %s must be contiguous", op, qt_describe(t, b, sizeof b));
}

void qt_op_check_same(const char *op, const qt_tensor *a, const qt_tensor *b) {
    char x[128], y[128];
    QT_CHECK(qt_same_shape(a, b) && a->dtype == b->dtype && a->dev == b->dev,
             "%s: %s and %s must have the same shape, dtype and device", op,
             qt_describe(a, x, sizeof x), qt_describe(b, y, sizeof y));
}

void qt_op_check_2d(const char *op, const qt_tensor *t) {
    char b[128];
    QT_CHECK(t->ndim == 2, "%s: %s must be 2-D [rows, features]", op, qt_describe(t, b, sizeof b));
}

void qt_accum_grad(qt_ctx *c, qt_tensor *t, const qt_tensor *src, double alpha) {
    qt_tensor *g = qt_grad(c, t);
    QT_CHECK(g->numel == src->numel && g->dev == src->dev, "accumulating %lld values into %lld",
             (long long)src->numel, (long long)g->numel);
    if (g->dev == QT_CUDA) {
        QT_CUDA_CALL(qt_cuda_axpby, c, g, src, alpha, 1.0);
        return;
    }
    size_t m = qt_scratch_mark(c);
    double *s = qt_cpu_load(c, src), *v = qt_cpu_scratch(c, src->numel);
    for (int64_t i = 0; i < src->numel; i++) v[i] = alpha * s[i];
    qt_cpu_accum(g, v);
    qt_scratch_reset(c, m);
}

/* ---- add */

static void add_backward(qt_ctx *c, qt_node *n) {
    for (int i = 0; i < 2; i++)
        if (n->in[i]->requires_grad) qt_accum_grad(c, n->in[i], n->out->grad, 1.0);
}

qt_tensor *qt_add(qt_ctx *c, qt_tensor *a, qt_tensor *b) {
    qt_op_check_float("add", a);
    qt_op_check_same("add", a, b);
    qt_tensor *y = qt_empty(c, QT_STEP, a->dtype, a->ndim, a->shape);
    if (a->dev == QT_CUDA) {
        QT_CUDA_CALL(qt_cuda_add, c, y, a, b);
    } else {
        size_t m = qt_scratch_mark(c);
        double *x = qt_cpu_load(c, a), *z = qt_cpu_load(c, b), *o = qt_cpu_scratch(c, y->numel);
        for (int64_t i = 0; i < y->numel; i++) o[i] = x[i] + z[i];
        qt_cpu_store(y, o);
        qt_scratch_reset(c, m);
    }
    qt_tensor *in[2] = {a, b};
    qt_record(c, "add", add_backward, y, 2, in);
    return y;
}

/* ---- bias: broadcast over rows; its gradient is the column sum */

static void add_bias_backward(qt_ctx *c, qt_node *n) {
    qt_tensor *x = n->in[0], *b = n->in[1], *g = n->out->grad;
    if (x->requires_grad) qt_accum_grad(c, x, g, 1.0);
    if (!b->requires_grad) return;
    if (g->dev == QT_CUDA) {
        QT_CUDA_CALL(qt_cuda_bias_grad, c, qt_grad(c, b), g);
        return;
    }
    size_t m = qt_scratch_mark(c);
    int64_t C = b->numel, N = g->numel / C;
    double *gv = qt_cpu_load(c, g), *db = qt_cpu_scratch(c, C);
    for (int64_t r = 0; r < N; r++)
        for (int64_t j = 0; j < C; j++) db[j] += gv[r * C + j];
    qt_cpu_accum(qt_grad(c, b), db);
    qt_scratch_reset(c, m);
}

qt_tensor *qt_add_bias(qt_ctx *c, qt_tensor *x, qt_tensor *b) {
    char d1[128], d2[128];
    qt_op_check_float("add_bias", x);
    qt_op_check_2d("add_bias", x);
    QT_CHECK(b->ndim == 1 && b->shape[0] == x->shape[1] && b->dtype == x->dtype && b->dev == x->dev,
             "add_bias: bias %s does not match %s", qt_describe(b, d1, sizeof d1), qt_describe(x, d2, sizeof d2));
    qt_tensor *y = qt_empty(c, QT_STEP, x->dtype, 2, x->shape);
    if (x->dev == QT_CUDA) {
        QT_CUDA_CALL(qt_cuda_add_bias, c, y, x, b);
    } else {
        size_t m = qt_scratch_mark(c);
        int64_t C = b->numel;
        double *xv = qt_cpu_load(c, x), *bv = qt_cpu_load(c, b), *o = qt_cpu_scratch(c, y->numel);
        for (int64_t i = 0; i < y->numel; i++) o[i] = xv[i] + bv[i % C];
        qt_cpu_store(y, o);
        qt_scratch_reset(c, m);
    }
    qt_tensor *in[2] = {x, b};
    qt_record(c, "add_bias", add_bias_backward, y, 2, in);
    return y;
}

/* ---- rows: a slice of a 2-D tensor */

static qt_tensor rows_view(qt_tensor *t, int64_t r0, int64_t r1) {
    int64_t shape[2] = {r1 - r0, t->shape[1]};
    return qt_tensor_over((char *)t->data + (size_t)(r0 * t->shape[1]) * qt_dtype_size(t->dtype), t->dtype, t->dev,
                          2, shape);
}

static void rows_backward(qt_ctx *c, qt_node *n) {
    qt_tensor g = rows_view(qt_grad(c, n->in[0]), n->i[0], n->i[1]);
    if (g.dev == QT_CUDA) {
        QT_CUDA_CALL(qt_cuda_axpby, c, &g, n->out->grad, 1.0, 1.0);
        return;
    }
    size_t m = qt_scratch_mark(c);
    qt_cpu_accum(&g, qt_cpu_load(c, n->out->grad));
    qt_scratch_reset(c, m);
}

qt_tensor *qt_rows(qt_ctx *c, qt_tensor *x, int64_t r0, int64_t r1) {
    qt_op_check_float("rows", x);
    qt_op_check_2d("rows", x);
    QT_CHECK(0 <= r0 && r0 < r1 && r1 <= x->shape[0], "rows: [%lld, %lld) of %lld rows", (long long)r0,
             (long long)r1, (long long)x->shape[0]);
    qt_tensor v = rows_view(x, r0, r1);
    qt_tensor *y = qt_empty(c, QT_STEP, x->dtype, 2, v.shape);
    qt_copy(y, &v);
    qt_node *n = qt_record(c, "rows", rows_backward, y, 1, &x);
    if (n) {
        n->i[0] = r0;
        n->i[1] = r1;
    }
    return y;
}

/* ---- scale */

static void scale_backward(qt_ctx *c, qt_node *n) { qt_accum_grad(c, n->in[0], n->out->grad, n->f[0]); }

qt_tensor *qt_scale(qt_ctx *c, qt_tensor *a, double s) {
    qt_op_check_float("scale", a);
    qt_tensor *y = qt_empty(c, QT_STEP, a->dtype, a->ndim, a->shape);
    if (a->dev == QT_CUDA) {
        QT_CUDA_CALL(qt_cuda_axpby, c, y, a, s, 0.0);
    } else {
        size_t m = qt_scratch_mark(c);
        double *x = qt_cpu_load(c, a), *o = qt_cpu_scratch(c, y->numel);
        for (int64_t i = 0; i < y->numel; i++) o[i] = s * x[i];
        qt_cpu_store(y, o);
        qt_scratch_reset(c, m);
    }
    qt_node *n = qt_record(c, "scale", scale_backward, y, 1, &a);
    if (n) n->f[0] = s;
    return y;
}

/* ---- cast: the gradient flows back converted to the input's dtype */

static void cast_backward(qt_ctx *c, qt_node *n) { qt_accum_grad(c, n->in[0], n->out->grad, 1.0); }

qt_tensor *qt_cast(qt_ctx *c, qt_tensor *a, qt_dtype dt) {
    qt_op_check_float("cast", a);
    QT_CHECK(qt_dtype_is_float(dt), "cast: target dtype %s is not a float dtype", qt_dtype_name(dt));
    qt_tensor *y = qt_empty(c, QT_STEP, dt, a->ndim, a->shape);
    if (a->dev == QT_CUDA) {
        QT_CUDA_CALL(qt_cuda_axpby, c, y, a, 1.0, 0.0);
    } else {
        size_t m = qt_scratch_mark(c);
        qt_cpu_store(y, qt_cpu_load(c, a));
        qt_scratch_reset(c, m);
    }
    qt_record(c, "cast", cast_backward, y, 1, &a);
    return y;
}
