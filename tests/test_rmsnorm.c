/* rmsnorm: forward against the formula, finite-difference gradients (x and w trainable, either
 * frozen), GPU parity in F32/BF16/F16, and the transformers rounding order in BF16 on the GPU. */
#include <math.h>
#include <stdlib.h>

#include "testutil.h"

#define QT_TEST_HAS_CUDA

static const double EPS = 1e-5;

static qt_tensor *f_rms(qt_ctx *c, qt_tensor **in, void *u) { return qt_rmsnorm(c, in[0], in[1], EPS); }

/* y = x / sqrt(mean(x^2) + eps) * w written out again, in double, for F64 CPU tensors. */
static double forward_err(qt_ctx *c, qt_tensor *x, qt_tensor *w) {
    int64_t N = x->shape[0], H = x->shape[1];
    const double *X = x->data, *W = w->data;
    qt_ctx_step_reset(c);
    qt_tensor *y = qt_rmsnorm(c, x, w, EPS);
    const double *Y = y->data;
    double num = 0, den = 0;
    for (int64_t r = 0; r < N; r++) {
        double ms = 0;
        for (int64_t i = 0; i < H; i++) ms += X[r * H + i] * X[r * H + i] / (double)H;
        for (int64_t i = 0; i < H; i++) {
            double ref = X[r * H + i] / sqrt(ms + EPS) * W[i];
            num += (Y[r * H + i] - ref) * (Y[r * H + i] - ref);
            den += ref * ref;
        }
    }
    qt_ctx_step_reset(c);
    return sqrt(num / den);
}

int qt_test_cpu(void) {
    qt_ctx *c = tu_ctx(QT_CPU);
    int64_t xs[2] = {7, 13}, ws[1] = {13};
    qt_tensor *in[2] = {tu_rand(c, QT_F64, 2, xs, -2, 2), tu_rand(c, QT_F64, 1, ws, 0.5, 1.5)};
    qt_set_name(in[0], "x");
    qt_set_name(in[1], "w");
    double e = forward_err(c, in[0], in[1]);
    TU_EXPECT(e < 1e-14, "forward differs from the formula: rel err %.3g", e);
    printf("  forward vs formula: rel err %.2e\n", e);

    in[0]->requires_grad = in[1]->requires_grad = true;
    tu_gradcheck(c, "rmsnorm x,w", f_rms, in, 2, NULL, 1e-6, 1e-6);
    /* frozen weight (the usual QLoRA case): x still gets its gradient, w none */
    in[1]->requires_grad = false;
    in[1]->grad = NULL;
    tu_gradcheck(c, "rmsnorm x (w frozen)", f_rms, in, 2, NULL, 1e-6, 1e-6);
    TU_EXPECT(in[1]->grad == NULL, "frozen weight got a gradient");
    /* frozen x, trainable w */
    in[0]->requires_grad = false;
    in[0]->grad = NULL;
    in[1]->requires_grad = true;
    tu_gradcheck(c, "rmsnorm w (x frozen)", f_rms, in, 2, NULL, 1e-6, 1e-6);
    TU_EXPECT(in[0]->grad == NULL, "frozen x got a gradient");

    /* Without grad nothing is recorded (and no rstd is kept). */
    qt_ctx_step_reset(c);
    c->grad_enabled = false;
    qt_tensor *y = qt_rmsnorm(c, in[0], in[1], EPS);
    TU_EXPECT(c->tape_len == 0 && !y->requires_grad, "rmsnorm recorded with grad disabled");
    c->grad_enabled = true;
    qt_ctx_step_reset(c);
    return 0;
}

/* transformers in bf16: hidden = x.float() * rsqrt(mean(x^2) + eps); y = w * hidden.to(bf16).
 * Emulated here on the host in float from the same bf16 inputs; the GPU must match bit for bit
 * except where its float rstd differs by an ulp from ours (rare). The single-rounding variant
 * bf16(w * x * rstd) must differ often, or this check could not tell the two orders apart. */
static void check_bf16_rounding_order(int64_t N, int64_t H) {
    qt_ctx *cc = tu_ctx(QT_CPU), *gc = tu_ctx(QT_CUDA);
    int64_t xs[2] = {N, H}, ws[1] = {H};
    qt_tensor *x = tu_rand(cc, QT_F32, 2, xs, -3, 3), *w = tu_rand(cc, QT_F32, 1, ws, 0.3, 2.5);
    qt_ctx_step_reset(gc);
    qt_tensor *gx = qt_empty(gc, QT_STEP, QT_BF16, 2, xs), *gw = qt_empty(gc, QT_STEP, QT_BF16, 1, ws);
    qt_copy(gx, x);
    qt_copy(gw, w);
    qt_tensor *gy = qt_rmsnorm(gc, gx, gw, EPS);
    uint16_t *xb = malloc(sizeof(uint16_t) * (size_t)(N * H)), *wb = malloc(sizeof(uint16_t) * (size_t)H);
    uint16_t *yb = malloc(sizeof(uint16_t) * (size_t)(N * H));
    qt_download(gx, xb, QT_BF16);
    qt_download(gw, wb, QT_BF16);
    qt_download(gy, yb, QT_BF16);
    int64_t miss = 0, single_diff = 0;
    for (int64_t r = 0; r < N; r++) {
        float ss = 0;
        for (int64_t i = 0; i < H; i++) {
            float v = qt_bf16_to_f32(xb[r * H + i]);
            ss += v * v;
        }
        float rs = 1.0f / sqrtf(ss / (float)H + (float)EPS);
        for (int64_t i = 0; i < H; i++) {
            float xv = qt_bf16_to_f32(xb[r * H + i]), wv = qt_bf16_to_f32(wb[i]);
            float hid = qt_bf16_to_f32(qt_f32_to_bf16(xv * rs));
            uint16_t hf = qt_f32_to_bf16(wv * hid), once = qt_f32_to_bf16(wv * (xv * rs));
            miss += hf != yb[r * H + i];
            single_diff += once != hf;
        }
    }
    double fm = (double)miss / (double)(N * H), fs = (double)single_diff / (double)(N * H);
    printf("  bf16 rounding order [%lld,%lld]: %.4f%% differ from transformers' order "
           "(single rounding would differ in %.1f%%)\n",
           (long long)N, (long long)H, 100 * fm, 100 * fs);
    TU_EXPECT(fm < 2e-3, "GPU bf16 rmsnorm differs from the HF rounding order in %.3f%% of elements", 100 * fm);
    TU_EXPECT(fs > 0.02, "test cannot tell the rounding orders apart (%.3f%%)", 100 * fs);
    free(xb);
    free(wb);
    free(yb);
    qt_ctx_step_reset(gc);
}

int qt_test_cuda(void) {
    qt_ctx *c = tu_ctx(QT_CPU);
    qt_dtype dts[3] = {QT_F32, QT_BF16, QT_F16};
    double tol[3] = {1e-5, 1e-2, 2e-3};
    int64_t Hs[2] = {1000, 4096};
    for (int k = 0; k < 2; k++) {
        int64_t xs[2] = {37, Hs[k]}, ws[1] = {Hs[k]};
        qt_tensor *in[2] = {tu_rand(c, QT_F32, 2, xs, -2, 2), tu_rand(c, QT_F32, 1, ws, 0.5, 1.5)};
        qt_set_name(in[0], "x");
        qt_set_name(in[1], "w");
        for (int d = 0; d < 3; d++) {
            in[0]->requires_grad = in[1]->requires_grad = true;
            tu_cuda_parity(Hs[k] == 1000 ? "rmsnorm H1000" : "rmsnorm H4096", f_rms, in, 2, NULL, dts[d], tol[d],
                           tol[d]);
            in[1]->requires_grad = false; /* frozen weight: dx kernel only */
            tu_cuda_parity("rmsnorm w-frozen", f_rms, in, 2, NULL, dts[d], tol[d], tol[d]);
        }
    }
    check_bf16_rounding_order(37, 1000);
    check_bf16_rounding_order(5, 8192);
    return 0;
}
