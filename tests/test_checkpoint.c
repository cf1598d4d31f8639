/* Gradient checkpointing (autograd/tape.c): a chain of checkpointed blocks gives the same
 * gradients as the plain tape, and its STEP memory grows by one saved input per block —
 * not by an input and its gradient (the chain reuses one gradient buffer). Gradients are
 * compared in float64 on the CPU and bit for bit between CPU runs; the GPU part runs the
 * same chain in float32 against the CPU. */
#include <math.h>
#include <string.h>

#include "testutil.h"

#define QT_TEST_HAS_CUDA

enum { N = 48, H = 96, KMAX = 8 };

typedef struct chain { qt_tensor *w[KMAX]; } chain;

static qt_tensor *block(qt_ctx *c, qt_tensor *x, void *user) {
    qt_tensor *w = user; /* x + silu(x·Wᵀ / 2) * x: a residual block with a nonlinearity */
    qt_tensor *h = qt_scale(c, qt_matmul(c, x, w, false, true), 0.5);
    return qt_add(c, x, qt_swiglu(c, h, x));
}

typedef struct run_out { size_t step_peak; } run_out;

/* Backward from y (seed R) through K blocks; gradients land in x0->grad and w[k]->grad. */
static run_out run(qt_ctx *c, chain *ch, qt_tensor *x0, const qt_tensor *R, int K, bool ckpt) {
    qt_ctx_step_reset(c);
    size_t base = c->data[QT_STEP].used;
    c->data[QT_STEP].peak = base;
    if (x0->grad) qt_fill_zero(x0->grad);
    for (int k = 0; k < K; k++)
        if (ch->w[k]->grad) qt_fill_zero(ch->w[k]->grad);
    qt_tensor *x = x0;
    for (int k = 0; k < K; k++) x = ckpt ? qt_checkpoint(c, block, x, ch->w[k]) : block(c, x, ch->w[k]);
    qt_backward(c, x, R);
    return (run_out){c->data[QT_STEP].peak - base};
}

static int check(qt_device dev, qt_dtype dt) {
    qt_ctx *c = tu_ctx(dev);
    chain ch;
    int64_t sw[2] = {H, H}, sx[2] = {N, H};
    for (int k = 0; k < KMAX; k++) {
        ch.w[k] = qt_param(c, "w", dt, 2, sw, true);
        qt_fill_uniform(ch.w[k], tu_rng(), -0.15, 0.15);
    }
    qt_tensor *x0 = qt_param(c, "x0", dt, 2, sx, true);
    qt_fill_uniform(x0, tu_rng(), -1, 1);
    qt_tensor *R = qt_empty(c, QT_PERSIST, dt, 2, sx);
    qt_fill_uniform(R, tu_rng(), -1, 1);

    /* the same gradients with and without checkpointing */
    run(c, &ch, x0, R, KMAX, false);
    qt_tensor *ref[KMAX + 1];
    for (int k = 0; k <= KMAX; k++) {
        qt_tensor *g = k < KMAX ? ch.w[k]->grad : x0->grad;
        ref[k] = qt_empty(c, QT_PERSIST, dt, 2, g->shape);
        qt_copy(ref[k], g);
    }
    run(c, &ch, x0, R, KMAX, true);
    double tol = dt == QT_F64 ? 1e-12 : 1e-5;
    for (int k = 0; k <= KMAX; k++) {
        qt_tensor *g = k < KMAX ? ch.w[k]->grad : x0->grad;
        double err = tu_rel_err(g, ref[k]);
        TU_EXPECT(err <= tol, "%s: gradient of %s%d with checkpointing off by %.3g (tol %.1g)", qt_device_name(dev),
                  k < KMAX ? "w" : "x", k, err, tol);
    }

    /* memory: each extra block keeps its saved input (N*H) but no extra gradient */
    size_t p2 = run(c, &ch, x0, R, 2, true).step_peak, pk = run(c, &ch, x0, R, KMAX, true).step_peak;
    size_t per = ((size_t)N * H * qt_dtype_size(dt) + 255) & ~(size_t)255;
    double growth = (double)(pk - p2) / (double)(KMAX - 2) / (double)per;
    printf("%s %s: STEP peak %zu bytes for 2 blocks, %zu for %d: %.2f buffers of [%d, %d] per extra block\n",
           qt_device_name(dev), qt_dtype_name(dt), p2, pk, KMAX, growth, N, H);
    TU_EXPECT(growth <= 1.01, "each checkpointed block costs %.2f activation-sized buffers (1 expected: its input)",
              growth);
    return 0;
}

/* qt_zero_grads clears back-to-back gradients in one call: every gradient must be zero
 * after it, and memory between or after them (another tensor) untouched. */
static void check_zero_grads(qt_device dev) {
    qt_ctx *c = tu_ctx(dev);
    enum { NP = 7 };
    qt_tensor *p[NP], *guard[3];
    int64_t sh[NP][2] = {{3, 5}, {64, 2}, {1, 1}, {17, 33}, {8, 8}, {2, 129}, {5, 3}};
    for (int i = 0; i < NP; i++) { /* gradients placed below, as llm_add_lora does */
        p[i] = qt_param(c, "p", QT_F32, 2, sh[i], false);
        p[i]->requires_grad = true;
    }
    for (int i = 0; i < 4; i++) qt_grad(c, p[i]); /* a run of four */
    guard[0] = qt_empty(c, QT_PERSIST, QT_F32, 2, sh[3]);
    qt_grad(c, p[4]);
    guard[1] = qt_empty(c, QT_PERSIST, QT_F32, 2, sh[4]);
    qt_grad(c, p[5]); /* p[6] gets none */
    guard[2] = qt_empty(c, QT_PERSIST, QT_F32, 2, sh[0]);
    for (int i = 0; i < 6; i++) qt_fill_uniform(p[i]->grad, tu_rng(), 0.5, 1.0);
    for (int i = 0; i < 3; i++) qt_fill_uniform(guard[i], tu_rng(), 0.5, 1.0);
    qt_zero_grads(c, p, NP);
    for (int i = 0; i < 6; i++)
        TU_EXPECT(tu_max_abs(p[i]->grad) == 0, "%s: gradient %d not zeroed (max %g)", qt_device_name(dev), i,
                  tu_max_abs(p[i]->grad));
    for (int i = 0; i < 3; i++) {
        float v[17 * 33];
        qt_download(guard[i], v, QT_F32);
        bool ok = true;
        for (int64_t k = 0; k < guard[i]->numel; k++) ok &= v[k] >= 0.5f;
        TU_EXPECT(ok, "%s: zeroing gradients touched the tensor after them (%d)", qt_device_name(dev), i);
    }
}

int qt_test_cpu(void) {
    check_zero_grads(QT_CPU);
    check(QT_CPU, QT_F64);
    check(QT_CPU, QT_F32);
    return tu_fail_count ? 1 : 0;
}

int qt_test_cuda(void) {
    if (!qt_cuda_available()) {
        printf("SKIP: no CUDA device\n");
        return TU_SKIP;
    }
    check_zero_grads(QT_CUDA);
    check(QT_CUDA, QT_F32);
    return tu_fail_count ? 1 : 0;
}
