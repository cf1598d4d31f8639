/* Dropout: gradient (mask fixed by the seed), keep fraction, scaling, GPU = CPU mask. */
#include <math.h>

#include "testutil.h"

#define QT_TEST_HAS_CUDA

static uint64_t g_seed;
static qt_tensor *f_drop(qt_ctx *c, qt_tensor **in, void *u) { return qt_dropout(c, in[0], 0.3, g_seed); }

int qt_test_cpu(void) {
    qt_ctx *c = tu_ctx(QT_CPU);
    g_seed = qt_rng_next(tu_rng());
    int64_t s[2] = {9, 23};
    qt_tensor *x = tu_rand(c, QT_F64, 2, s, 0.5, 2.0); /* never zero: a zero output means dropped */
    x->requires_grad = true;
    tu_gradcheck(c, "dropout", f_drop, &x, 1, NULL, 1e-6, 1e-7);
    /* keep fraction ~ 0.7 on a large tensor; kept values scaled by 1/0.7 */
    int64_t big[1] = {200003};
    qt_tensor *b = tu_rand(c, QT_F64, 1, big, 0.5, 2.0);
    qt_ctx_step_reset(c);
    qt_tensor *y = qt_dropout(c, b, 0.3, g_seed);
    const double *bv = b->data, *yv = y->data;
    int64_t kept = 0, badscale = 0;
    for (int64_t i = 0; i < b->numel; i++) {
        if (yv[i] != 0) {
            kept++;
            badscale += fabs(yv[i] - bv[i] / 0.7) > 1e-12;
        }
    }
    double frac = (double)kept / (double)b->numel;
    printf("  keep fraction %.4f (want 0.7 +- 0.005), mis-scaled %lld\n", frac, (long long)badscale);
    TU_EXPECT(fabs(frac - 0.7) < 0.005 && badscale == 0, "dropout mask statistics");
    /* a different seed gives a different mask; p = 0 is the identity */
    qt_tensor *y2 = qt_dropout(c, b, 0.3, g_seed + 1);
    TU_EXPECT(tu_rel_err(y2, y) > 0.1, "seed does not change the mask");
    TU_EXPECT(qt_dropout(c, b, 0.0, g_seed) == b, "p = 0 must return the input");
    return 0;
}

int qt_test_cuda(void) {
    qt_ctx *c = tu_ctx(QT_CPU);
    g_seed = qt_rng_next(tu_rng());
    int64_t s[2] = {37, 1029};
    qt_tensor *x = tu_rand(c, QT_F32, 2, s, 0.5, 2.0);
    x->requires_grad = true;
    tu_cuda_parity("dropout", f_drop, &x, 1, NULL, QT_F32, 1e-6, 1e-6);
    tu_cuda_parity("dropout", f_drop, &x, 1, NULL, QT_BF16, 1e-2, 1e-2);
    return 0;
}
