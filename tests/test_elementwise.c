/* add, scale, cast: finite-difference gradients and GPU parity. */
#include <math.h>

#include "testutil.h"

#define QT_TEST_HAS_CUDA

static qt_tensor *f_add(qt_ctx *c, qt_tensor **in, void *u) { return qt_add(c, in[0], in[1]); }
static qt_tensor *f_scale(qt_ctx *c, qt_tensor **in, void *u) { return qt_scale(c, in[0], -1.7); }
/* cast there and back, scaled, so the chain has a non-trivial gradient */
static qt_tensor *f_cast(qt_ctx *c, qt_tensor **in, void *u) {
    qt_tensor *y = qt_cast(c, in[0], QT_F32);
    return qt_scale(c, qt_cast(c, y, in[0]->dtype), 0.5);
}
static qt_tensor *f_bias(qt_ctx *c, qt_tensor **in, void *u) { return qt_add_bias(c, in[0], in[1]); }
static qt_tensor *f_rows(qt_ctx *c, qt_tensor **in, void *u) {
    return qt_add(c, qt_rows(c, in[0], 2, 5), qt_rows(c, in[0], 3, 6)); /* overlapping slices accumulate */
}
/* a + a: the same tensor twice must get both gradients */
static qt_tensor *f_twice(qt_ctx *c, qt_tensor **in, void *u) { return qt_add(c, in[0], in[0]); }

int qt_test_cpu(void) {
    qt_ctx *c = tu_ctx(QT_CPU);
    int64_t s[2] = {7, 13};
    qt_tensor *in[2] = {tu_rand(c, QT_F64, 2, s, -2, 2), tu_rand(c, QT_F64, 2, s, -2, 2)};
    in[0]->requires_grad = in[1]->requires_grad = true;
    tu_gradcheck(c, "add", f_add, in, 2, NULL, 1e-6, 1e-7);
    tu_gradcheck(c, "scale", f_scale, in, 1, NULL, 1e-6, 1e-7);
    /* f32 rounding inside the chain: a larger step keeps the difference quotient exact enough */
    tu_gradcheck(c, "cast", f_cast, in, 1, NULL, 1e-2, 1e-4);
    tu_gradcheck(c, "add-same", f_twice, in, 1, NULL, 1e-6, 1e-7);
    int64_t sb[1] = {13};
    qt_tensor *bin[2] = {in[0], tu_rand(c, QT_F64, 1, sb, -1, 1)};
    bin[1]->requires_grad = true;
    tu_gradcheck(c, "add_bias", f_bias, bin, 2, NULL, 1e-6, 1e-7);
    tu_gradcheck(c, "rows", f_rows, in, 1, NULL, 1e-6, 1e-7);
    /* A frozen input gets no gradient storage. */
    in[1]->requires_grad = false;
    in[1]->grad = NULL;
    qt_ctx_step_reset(c);
    qt_tensor *y = qt_add(c, in[0], in[1]);
    qt_backward(c, y, y);
    TU_EXPECT(in[1]->grad == NULL, "frozen tensor got a gradient");
    /* bf16/f16 round trips match the spec'd rounding on a few exact cases. */
    TU_EXPECT(qt_f32_to_bf16(1.0f) == 0x3f80, "bf16(1)");
    TU_EXPECT(qt_f32_to_bf16(1.00390625f) == 0x3f80, "ties to even (down)");
    TU_EXPECT(qt_f32_to_bf16(1.01171875f) == 0x3f82, "ties to even (up)");
    TU_EXPECT(qt_f32_to_f16(65504.0f) == 0x7bff && qt_f32_to_f16(1e6f) == 0x7c00, "f16 max/overflow");
    TU_EXPECT(qt_f16_to_f32(qt_f32_to_f16(5.9604645e-8f)) == 5.9604645e-8f, "f16 smallest subnormal");
    for (int i = 0; i < 1000; i++) {
        float v = (float)qt_rng_normal(tu_rng()) * 100.0f;
        float b = qt_bf16_to_f32(qt_f32_to_bf16(v)), h = qt_f16_to_f32(qt_f32_to_f16(v));
        TU_EXPECT(fabsf(b - v) <= fabsf(v) * (1.0f / 256), "bf16 round trip of %g gave %g", v, b);
        TU_EXPECT(fabsf(h - v) <= fabsf(v) * (1.0f / 2048) + 6e-8f, "f16 round trip of %g gave %g", v, h);
    }
    return 0;
}

int qt_test_cuda(void) {
    qt_ctx *c = tu_ctx(QT_CPU);
    int64_t s[2] = {37, 129};
    qt_tensor *in[2] = {tu_rand(c, QT_F32, 2, s, -2, 2), tu_rand(c, QT_F32, 2, s, -2, 2)};
    in[0]->requires_grad = in[1]->requires_grad = true;
    int64_t sb[1] = {129};
    qt_tensor *bin[2] = {in[0], tu_rand(c, QT_F32, 1, sb, -1, 1)};
    bin[1]->requires_grad = true;
    qt_dtype dts[3] = {QT_F32, QT_BF16, QT_F16};
    double tol[3] = {1e-6, 1e-2, 2e-3};
    for (int d = 0; d < 3; d++) {
        tu_cuda_parity("add", f_add, in, 2, NULL, dts[d], tol[d], tol[d]);
        tu_cuda_parity("scale", f_scale, in, 1, NULL, dts[d], tol[d], tol[d]);
        tu_cuda_parity("cast", f_cast, in, 1, NULL, dts[d], tol[d], tol[d]);
        tu_cuda_parity("add_bias", f_bias, bin, 2, NULL, dts[d], tol[d], tol[d]);
        tu_cuda_parity("rows", f_rows, in, 1, NULL, dts[d], tol[d], tol[d]);
    }
    return 0;
}
