/* y = x · dequant(W)ᵀ for a frozen NF4 weight W [out, in]. The dequantized copy lives
 * only inside the op (in the context's work arena), once in forward and once more in
 * backward, so between uses a model's weights stay at ~4.13 bits per parameter. */
#include <stdio.h>

#include "quant.h"

static qt_tensor dequant_tmp(qt_ctx *c, const nf4_tensor *w, qt_dtype dt) {
    qt_tensor t = qt_tensor_over(NULL, dt, c->dev, 2, w->shape);
    t.data = qt_arena_alloc(&c->work, qt_nbytes(&t));
    nf4_dequantize(c, w, &t);
    qt_profile_mark(c, "nf4_dequant", QT_PROF_AUTO); /* apart from the GEMM that follows */
    return t;
}

static void nf4_linear_backward(qt_ctx *c, qt_node *n) {
    qt_tensor *x = n->in[0], *dy = n->out->grad;
    const nf4_tensor *w = n->ext;
    size_t mark = qt_arena_mark(&c->work);
    qt_tensor wt = dequant_tmp(c, w, x->dtype);
    qt_gemm(c, qt_grad(c, x), dy, &wt, false, false, true); /* dx += dY·W */
    qt_arena_reset(&c->work, mark);
}

qt_tensor *nf4_linear(qt_ctx *c, qt_tensor *x, const nf4_tensor *w) {
    char d[128];
    QT_CHECK(w->ndim == 2 && x->ndim == 2 && x->shape[1] == w->shape[1] && w->dev == x->dev,
             "nf4_linear: input %s does not match weight '%s' [%lld, %lld] on %s", qt_describe(x, d, sizeof d),
             w->name, (long long)w->shape[0], (long long)w->shape[1], qt_device_name(w->dev));
    int64_t shape[2] = {x->shape[0], w->shape[0]};
    qt_tensor *y = qt_empty(c, QT_STEP, x->dtype, 2, shape);
    size_t mark = qt_arena_mark(&c->work);
    qt_tensor wt = dequant_tmp(c, w, x->dtype);
    qt_gemm(c, y, x, &wt, false, true, false);
    qt_arena_reset(&c->work, mark);
    qt_node *n = qt_record(c, "nf4_linear", nf4_linear_backward, y, 1, &x);
    if (n) n->ext = (void *)w;
    return y;
}
