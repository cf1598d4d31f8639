/* swiglu: forward against the formula, finite-difference gradients (both trainable, either
 * frozen, the same tensor twice), GPU parity in F32/BF16/F16, and the BF16 rounding order. */
#include <math.h>
#include <stdlib.h>

#include "testutil.h"

#define QT_TEST_HAS_CUDA

static qt_tensor *f_swiglu(qt_ctx *c, qt_tensor **in, void *u) { return qt_swiglu(c, in[0], in[1]); }
static qt_tensor *f_same(qt_ctx *c, qt_tensor **in, void *u) { return qt_swiglu(c, in[0], in[0]); }

int qt_test_cpu(void) {
    qt_ctx *c = tu_ctx(QT_CPU);
    int64_t s[2] = {7, 13};
    /* gate over [-6, 6]: both the saturated and the curved parts of silu */
    qt_tensor *in[2] = {tu_rand(c, QT_F64, 2, s, -6, 6), tu_rand(c, QT_F64, 2, s, -2, 2)};
    qt_set_name(in[0], "gate");
    qt_set_name(in[1], "up");

    qt_ctx_step_reset(c);
    qt_tensor *y = qt_swiglu(c, in[0], in[1]);
    const double *g = in[0]->data, *u = in[1]->data, *Y = y->data;
    double worst = 0;
    for (int64_t i = 0; i < y->numel; i++) {
        double ref = g[i] / (1.0 + exp(-g[i])) * u[i];
        worst = fmax(worst, fabs(Y[i] - ref) / fmax(fabs(ref), 1e-300));
    }
    TU_EXPECT(worst < 1e-14, "forward differs from g*sigmoid(g)*u: worst rel err %.3g", worst);
    printf("  forward vs formula: worst rel err %.2e\n", worst);

    in[0]->requires_grad = in[1]->requires_grad = true;
    tu_gradcheck(c, "swiglu gate,up", f_swiglu, in, 2, NULL, 1e-6, 1e-6);
    tu_gradcheck(c, "swiglu(a, a)", f_same, in, 1, NULL, 1e-6, 1e-6);
    in[1]->requires_grad = false;
    in[1]->grad = NULL;
    tu_gradcheck(c, "swiglu gate only", f_swiglu, in, 2, NULL, 1e-6, 1e-6);
    TU_EXPECT(in[1]->grad == NULL, "frozen up got a gradient");
    in[0]->requires_grad = false;
    in[0]->grad = NULL;
    in[1]->requires_grad = true;
    tu_gradcheck(c, "swiglu up only", f_swiglu, in, 2, NULL, 1e-6, 1e-6);
    TU_EXPECT(in[0]->grad == NULL, "frozen gate got a gradient");
    return 0;
}

/* transformers in bf16: act_fn(gate) is a bf16 tensor, then * up rounds again. Host emulation
 * in float from the same bf16 inputs; expf may differ by an ulp between host and GPU, so a few
 * elements may differ. Single rounding must differ often for the check to mean something. */
static void check_bf16_rounding_order(int64_t N, int64_t H) {
    qt_ctx *cc = tu_ctx(QT_CPU), *gc = tu_ctx(QT_CUDA);
    int64_t s[2] = {N, H};
    qt_tensor *g = tu_rand(cc, QT_F32, 2, s, -6, 6), *u = tu_rand(cc, QT_F32, 2, s, -3, 3);
    qt_ctx_step_reset(gc);
    qt_tensor *gg = qt_empty(gc, QT_STEP, QT_BF16, 2, s), *gu = qt_empty(gc, QT_STEP, QT_BF16, 2, s);
    qt_copy(gg, g);
    qt_copy(gu, u);
    qt_tensor *gy = qt_swiglu(gc, gg, gu);
    size_t n = (size_t)(N * H);
    uint16_t *gb = malloc(2 * n), *ub = malloc(2 * n), *yb = malloc(2 * n);
    qt_download(gg, gb, QT_BF16);
    qt_download(gu, ub, QT_BF16);
    qt_download(gy, yb, QT_BF16);
    size_t miss = 0, single_diff = 0;
    for (size_t i = 0; i < n; i++) {
        float gv = qt_bf16_to_f32(gb[i]), uv = qt_bf16_to_f32(ub[i]);
        float act = gv / (1.0f + expf(-gv));
        uint16_t hf = qt_f32_to_bf16(qt_bf16_to_f32(qt_f32_to_bf16(act)) * uv), once = qt_f32_to_bf16(act * uv);
        miss += hf != yb[i];
        single_diff += hf != once;
    }
    double fm = (double)miss / (double)n, fs = (double)single_diff / (double)n;
    printf("  bf16 rounding order [%lld,%lld]: %.4f%% differ from transformers' order "
           "(single rounding would differ in %.1f%%)\n",
           (long long)N, (long long)H, 100 * fm, 100 * fs);
    TU_EXPECT(fm < 5e-3, "GPU bf16 swiglu differs from the HF rounding order in %.3f%% of elements", 100 * fm);
    TU_EXPECT(fs > 0.02, "test cannot tell the rounding orders apart (%.3f%%)", 100 * fs);
    free(gb);
    free(ub);
    free(yb);
    qt_ctx_step_reset(gc);
}

int qt_test_cuda(void) {
    qt_ctx *c = tu_ctx(QT_CPU);
    int64_t s[2] = {37, 1000};
    qt_tensor *in[2] = {tu_rand(c, QT_F32, 2, s, -6, 6), tu_rand(c, QT_F32, 2, s, -2, 2)};
    qt_set_name(in[0], "gate");
    qt_set_name(in[1], "up");
    qt_dtype dts[3] = {QT_F32, QT_BF16, QT_F16};
    double tol[3] = {1e-5, 1e-2, 2e-3};
    for (int d = 0; d < 3; d++) {
        in[0]->requires_grad = in[1]->requires_grad = true;
        tu_cuda_parity("swiglu", f_swiglu, in, 2, NULL, dts[d], tol[d], tol[d]);
        tu_cuda_parity("swiglu(a,a)", f_same, in, 1, NULL, dts[d], tol[d], tol[d]);
        in[1]->requires_grad = false;
        tu_cuda_parity("swiglu up-frozen", f_swiglu, in, 2, NULL, dts[d], tol[d], tol[d]);
    }
    check_bf16_rounding_order(37, 1000);
    return 0;
}
