/* AdamW as torch.optim.AdamW computes it (decoupled decay first, then the Adam update
 * with bias corrections), with global-norm clipping as torch.nn.utils.clip_grad_norm_. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "adamw_cuda.h"
#include "autograd/ops/ops_internal.h"

int qt_adamw_init(qt_adamw *o, qt_ctx *c, qt_tensor *const *params, int n, const qt_adamw_cfg *cfg,
                  qt_err *err) {
    memset(o, 0, sizeof *o);
    o->cfg = *cfg;
    o->ctx = c;
    o->n = n;
    o->params = calloc((size_t)n, sizeof *o->params);
    o->m = calloc((size_t)n, sizeof *o->m);
    o->v = calloc((size_t)n, sizeof *o->v);
    if (!o->params || !o->m || !o->v) return qt_errf(err, "out of host memory for %d optimizer slots", n);
    for (int i = 0; i < n; i++) {
        QT_CHECK(params[i]->requires_grad && params[i]->grad, "AdamW: '%s' is not a trainable parameter",
                 params[i]->name);
        QT_CHECK(params[i]->dev == c->dev, "AdamW: '%s' is on another device", params[i]->name);
        o->params[i] = params[i];
    }
    if (cfg->paged && c->dev != QT_CUDA)
        return qt_errf(err, "memory.paged_optimizer needs train.device: cuda (on the CPU the moments "
                            "already live in host memory)");
    if (c->dev == QT_CUDA) {
#ifdef QT_WITH_CUDA
        return qt_adamw_cuda_init(o, err);
#else
        return qt_errf(err, "this build has no CUDA");
#endif
    }
    for (int i = 0; i < n; i++) {
        size_t bytes = (size_t)params[i]->numel * sizeof(float);
        o->m[i] = qt_arena_alloc(&c->data[QT_PERSIST], bytes);
        o->v[i] = qt_arena_alloc(&c->data[QT_PERSIST], bytes);
        memset(o->m[i], 0, bytes);
        memset(o->v[i], 0, bytes);
    }
    return 0;
}

void qt_adamw_free(qt_adamw *o) {
#ifdef QT_WITH_CUDA
    if (o->ctx && o->ctx->dev == QT_CUDA) qt_adamw_cuda_free(o);
#endif
    free(o->params);
    free(o->m);
    free(o->v);
    memset(o, 0, sizeof *o);
}

size_t qt_adamw_state_bytes(const qt_adamw *o) {
    size_t b = 0;
    for (int i = 0; i < o->n; i++) b += 2 * (size_t)o->params[i]->numel * sizeof(float);
    return b;
}

double qt_adamw_grad_norm(qt_adamw *o) {
    double ss = 0;
    if (o->ctx->dev == QT_CUDA) {
#ifdef QT_WITH_CUDA
        ss = qt_adamw_cuda_sumsq(o);
#endif
    } else {
        for (int i = 0; i < o->n; i++) {
            size_t mk = qt_scratch_mark(o->ctx);
            double *g = qt_cpu_load(o->ctx, o->params[i]->grad);
            for (int64_t j = 0; j < o->params[i]->numel; j++) ss += g[j] * g[j];
            qt_scratch_reset(o->ctx, mk);
        }
    }
    return sqrt(ss);
}

void qt_adamw_step(qt_adamw *o, double lr, double grad_norm) {
    const qt_adamw_cfg *k = &o->cfg;
    o->step++;
    /* torch clip_grad_norm_: coef = max_norm / (total + 1e-6), applied only when < 1. */
    double scale = 1.0;
    if (k->max_grad_norm > 0) {
        double coef = k->max_grad_norm / (grad_norm + 1e-6);
        if (coef < 1.0) scale = coef;
    }
    double bc1 = 1.0 - pow(k->beta1, (double)o->step), bc2 = 1.0 - pow(k->beta2, (double)o->step);
    if (o->ctx->dev == QT_CUDA) {
#ifdef QT_WITH_CUDA
        qt_adamw_hyper h = {(float)lr, (float)k->beta1, (float)k->beta2, (float)k->eps, (float)k->weight_decay,
                            (float)bc1, (float)sqrt(bc2), (float)scale};
        qt_adamw_cuda_step(o, &h);
#endif
        return;
    }
    for (int i = 0; i < o->n; i++) {
        qt_tensor *p = o->params[i];
        size_t mk = qt_scratch_mark(o->ctx);
        double *w = qt_cpu_load(o->ctx, p), *g = qt_cpu_load(o->ctx, p->grad);
        float *m = o->m[i], *v = o->v[i];
        for (int64_t j = 0; j < p->numel; j++) {
            double gj = g[j] * scale;
            w[j] *= 1.0 - lr * k->weight_decay;
            m[j] = (float)(k->beta1 * m[j] + (1.0 - k->beta1) * gj);
            v[j] = (float)(k->beta2 * v[j] + (1.0 - k->beta2) * gj * gj);
            w[j] -= (lr / bc1) * m[j] / (sqrt(v[j]) / sqrt(bc2) + k->eps);
        }
        qt_cpu_store(p, w);
        qt_scratch_reset(o->ctx, mk);
    }
}
