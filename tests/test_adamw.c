/* AdamW against an independent transcription of the algorithm in PyTorch's AdamW docs
 * (θ ← θ − γλθ; m̂ = m/(1−β1ᵗ); v̂ = v/(1−β2ᵗ); θ ← θ − γ m̂/(√v̂ + ε)), clipping as
 * torch.nn.utils.clip_grad_norm_, LR schedules, and GPU (plain and paged) vs CPU. */
#include <math.h>
#include <stdlib.h>

#include "optim/optim.h"
#include "testutil.h"

#define QT_TEST_HAS_CUDA

enum { NP = 3, STEPS = 6 };
static const int64_t sizes[NP][2] = {{7, 13}, {1, 1031}, {33, 5}};

typedef struct ref_state { double *w, *m, *v; } ref_state;

static qt_adamw_cfg cfg_default(void) {
    return (qt_adamw_cfg){.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1, .max_grad_norm = 1.0};
}

/* Make params on ctx c from host values w0, and STEPS sets of random gradients. */
static void make_params(qt_ctx *c, qt_tensor **p, double **w0, qt_dtype dt) {
    for (int i = 0; i < NP; i++) {
        p[i] = qt_param(c, "p", dt, 2, sizes[i], true);
        qt_upload(p[i], w0[i], QT_F64);
    }
}

static int run_compare(qt_ctx *c, qt_dtype dt, bool paged, double tol) {
    qt_rng *r = tu_rng();
    double *w0[NP], *grads[STEPS][NP];
    ref_state ref[NP];
    for (int i = 0; i < NP; i++) {
        int64_t n = sizes[i][0] * sizes[i][1];
        w0[i] = malloc(sizeof(double) * (size_t)n);
        ref[i].w = malloc(sizeof(double) * (size_t)n);
        ref[i].m = calloc((size_t)n, sizeof(double));
        ref[i].v = calloc((size_t)n, sizeof(double));
        for (int64_t j = 0; j < n; j++) ref[i].w[j] = w0[i][j] = qt_rng_normal(r);
        for (int s = 0; s < STEPS; s++) {
            grads[s][i] = malloc(sizeof(double) * (size_t)n);
            /* big early gradients so clipping is active on some steps and not on others */
            double amp = s < 2 ? 0.5 : 0.002;
            for (int64_t j = 0; j < n; j++) grads[s][i][j] = amp * qt_rng_normal(r);
        }
    }
    qt_tensor *p[NP];
    make_params(c, p, w0, dt);
    qt_adamw_cfg cfg = cfg_default();
    cfg.paged = paged;
    cfg.gpu_bytes = 64 << 10; /* 4096-element chunks: many chunks per parameter */
    qt_adamw o;
    qt_err err;
    TU_EXPECT(qt_adamw_init(&o, c, p, NP, &cfg, &err) == 0, "init: %s", err.msg);
    qt_lr_sched sch = {.kind = QT_LR_COSINE, .lr = 3e-2, .warmup_steps = 2, .total_steps = STEPS};
    int clipped = 0;
    for (int s = 0; s < STEPS; s++) {
        /* the reference sees the gradients as the parameter dtype holds them */
        for (int i = 0; i < NP; i++) {
            qt_upload(p[i]->grad, grads[s][i], QT_F64);
            qt_download(p[i]->grad, grads[s][i], QT_F64);
        }
        /* reference, in double, from the docs' formulas */
        double ss = 0;
        for (int i = 0; i < NP; i++)
            for (int64_t j = 0; j < p[i]->numel; j++) ss += grads[s][i][j] * grads[s][i][j];
        double total = sqrt(ss), coef = cfg.max_grad_norm / (total + 1e-6);
        double clip = coef < 1 ? coef : 1;
        clipped += coef < 1;
        double lr = qt_lr_at(&sch, s), t = s + 1;
        for (int i = 0; i < NP; i++)
            for (int64_t j = 0; j < p[i]->numel; j++) {
                double g = grads[s][i][j] * clip, *w = &ref[i].w[j], *m = &ref[i].m[j], *v = &ref[i].v[j];
                *w -= lr * cfg.weight_decay * *w;
                *m = cfg.beta1 * *m + (1 - cfg.beta1) * g;
                *v = cfg.beta2 * *v + (1 - cfg.beta2) * g * g;
                double mh = *m / (1 - pow(cfg.beta1, t)), vh = *v / (1 - pow(cfg.beta2, t));
                *w -= lr * mh / (sqrt(vh) + cfg.eps);
            }
        double norm = qt_adamw_grad_norm(&o);
        TU_EXPECT(fabs(norm - total) <= 1e-5 * total, "grad norm %.9g vs %.9g", norm, total);
        qt_adamw_step(&o, lr, norm);
    }
    TU_EXPECT(clipped > 0 && clipped < STEPS, "clipping active on %d of %d steps (want some, not all)",
              clipped, STEPS);
    for (int i = 0; i < NP; i++) {
        qt_tensor *want = qt_empty(tu_ctx(QT_CPU), QT_STEP, QT_F64, 2, sizes[i]);
        qt_upload(want, ref[i].w, QT_F64);
        double e = tu_rel_err(p[i], want);
        printf("  adamw %-5s %-5s %-6s param %d: rel err %.2e (tol %.0e)\n", qt_device_name(c->dev),
               qt_dtype_name(dt), paged ? "paged" : "", i, e, tol);
        TU_EXPECT(e <= tol, "parameter %d off by %.3g", i, e);
        free(w0[i]);
        free(ref[i].w);
        free(ref[i].m);
        free(ref[i].v);
        for (int s = 0; s < STEPS; s++) free(grads[s][i]);
    }
    qt_adamw_free(&o);
    qt_ctx_step_reset(tu_ctx(QT_CPU));
    return 0;
}

int qt_test_cpu(void) {
    qt_lr_sched s = {.kind = QT_LR_COSINE, .lr = 1.0, .warmup_steps = 10, .total_steps = 110};
    TU_EXPECT(qt_lr_at(&s, 0) == 0.0 && fabs(qt_lr_at(&s, 5) - 0.5) < 1e-12, "warmup ramps from 0");
    TU_EXPECT(fabs(qt_lr_at(&s, 10) - 1.0) < 1e-12 && fabs(qt_lr_at(&s, 60) - 0.5) < 1e-12 &&
                  fabs(qt_lr_at(&s, 110)) < 1e-12, "cosine: peak, half at mid, zero at end");
    s.kind = QT_LR_LINEAR;
    TU_EXPECT(fabs(qt_lr_at(&s, 35) - 0.75) < 1e-12 && qt_lr_at(&s, 200) == 0.0, "linear decay");
    s.min_ratio = 0.1; /* decays to 10% of lr instead of 0 */
    TU_EXPECT(fabs(qt_lr_at(&s, 110) - 0.1) < 1e-12 && fabs(qt_lr_at(&s, 60) - 0.55) < 1e-12, "min_lr_ratio floor");
    s.min_ratio = 0;
    s.kind = QT_LR_CONSTANT;
    TU_EXPECT(qt_lr_at(&s, 1000) == 1.0, "constant");
    run_compare(tu_ctx(QT_CPU), QT_F32, false, 2e-6);
    run_compare(tu_ctx(QT_CPU), QT_F64, false, 2e-6);
    qt_err err;
    qt_adamw o;
    qt_adamw_cfg cfg = cfg_default();
    cfg.paged = true;
    TU_EXPECT(qt_adamw_init(&o, tu_ctx(QT_CPU), NULL, 0, &cfg, &err) == -1, "paged on CPU must be refused");
    qt_adamw_free(&o);
    return 0;
}

int qt_test_cuda(void) {
    run_compare(tu_ctx(QT_CUDA), QT_F32, false, 2e-6);
    run_compare(tu_ctx(QT_CUDA), QT_F32, true, 2e-6);
    run_compare(tu_ctx(QT_CUDA), QT_BF16, true, 1e-2);
    return 0;
}
