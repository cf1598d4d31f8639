/* qt_lora: finite-difference gradients for every trainable/frozen mix of y, x, A, B with and
 * without dropout; equality with the composed ops it replaces (same dropout mask); GPU vs
 * the double-precision CPU reference in F32, BF16 and F16, gradients accumulating into
 * gradients that are already there. */
#include <math.h>
#include <stdlib.h>

#include "testutil.h"

#define QT_TEST_HAS_CUDA

typedef struct args { double scale, p; uint64_t seed; } args;

/* in = {y, x, A, B}. y goes through a same-dtype cast first: qt_lora consumes y's buffer,
 * and the cast gives it a fresh STEP tensor per call while the gradient still reaches in[0]. */
static qt_tensor *f_lora(qt_ctx *c, qt_tensor **in, void *u) {
    const args *a = u;
    qt_tensor *y = qt_cast(c, in[0], in[0]->dtype);
    return qt_lora(c, y, in[1], in[2], in[3], a->scale, a->p, a->seed);
}

/* The composition trainer/model.c used before: y + scale · (dropout(x)·Aᵀ)·Bᵀ. */
static qt_tensor *f_composed(qt_ctx *c, qt_tensor **in, void *u) {
    const args *a = u;
    qt_tensor *xd = qt_dropout(c, in[1], a->p, a->seed);
    qt_tensor *t = qt_matmul(c, xd, in[2], false, true);
    return qt_add(c, in[0], qt_scale(c, qt_matmul(c, t, in[3], false, true), a->scale));
}

static const char *const names[4] = {"y", "x", "A", "B"};

static void make_inputs(qt_ctx *c, qt_dtype dt, int64_t N, int64_t in, int64_t r, int64_t O, qt_tensor **t) {
    int64_t sy[2] = {N, O}, sx[2] = {N, in}, sa[2] = {r, in}, sb[2] = {O, r};
    const int64_t *sh[4] = {sy, sx, sa, sb};
    for (int i = 0; i < 4; i++) {
        t[i] = tu_rand(c, dt, 2, sh[i], -1, 1);
        qt_set_name(t[i], "%s", names[i]);
    }
}

static double host_rel(const double *a, const double *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) num += (a[i] - b[i]) * (a[i] - b[i]), den += b[i] * b[i];
    return sqrt(num / fmax(den, 1e-300));
}

/* Analytic gradients of sum(out ⊙ R) for the given function, into host arrays g[i]; the
 * output into o. A step of its own: backward walks the whole tape. */
static void run_grads(qt_ctx *c, tu_fn f, qt_tensor **in, args *a, const double *R, double **g, double *o) {
    qt_ctx_step_reset(c);
    for (int i = 0; i < 4; i++) qt_fill_zero(qt_grad(c, in[i]));
    qt_tensor *out = f(c, in, a);
    qt_tensor *seed = qt_empty(c, QT_STEP, QT_F64, out->ndim, out->shape);
    qt_upload(seed, R, QT_F64);
    qt_backward(c, out, seed);
    qt_download(out, o, QT_F64);
    for (int i = 0; i < 4; i++) {
        g[i] = malloc(sizeof(double) * (size_t)in[i]->numel);
        qt_download(in[i]->grad, g[i], QT_F64);
    }
    qt_ctx_step_reset(c);
}

int qt_test_cpu(void) {
    qt_ctx *c = tu_ctx(QT_CPU);
    qt_tensor *in[4];
    make_inputs(c, QT_F64, 7, 11, 3, 13, in);
    args a = {.scale = 1.7, .seed = qt_rng_next(tu_rng())};
    /* trainable sets, as bit masks over {y, x, A, B} */
    const unsigned sets[] = {0xF, 0xC, 0x1, 0x2, 0xA, 0x5, 0x8};
    for (int pi = 0; pi < 2; pi++) {
        a.p = pi ? 0.3 : 0.0;
        for (size_t s = 0; s < sizeof sets / sizeof *sets; s++) {
            for (int i = 0; i < 4; i++) in[i]->requires_grad = (sets[s] >> i) & 1;
            char name[32];
            snprintf(name, sizeof name, "lora p=%.1f set=%x", a.p, sets[s]);
            tu_gradcheck(c, name, f_lora, in, 4, &a, 1e-6, 1e-7);
        }
    }
    /* Same values and gradients as the ops it replaces, with the same dropout mask. */
    for (int i = 0; i < 4; i++) in[i]->requires_grad = true;
    for (int pi = 0; pi < 2; pi++) {
        a.p = pi ? 0.25 : 0.0;
        int64_t no = in[0]->numel;
        double *R = malloc(sizeof(double) * (size_t)no), *of = malloc(sizeof(double) * (size_t)no);
        double *oc = malloc(sizeof(double) * (size_t)no), *gf[4], *gc[4];
        for (int64_t i = 0; i < no; i++) R[i] = 2 * qt_rng_uniform(tu_rng()) - 1;
        run_grads(c, f_lora, in, &a, R, gf, of);
        run_grads(c, f_composed, in, &a, R, gc, oc);
        double e = host_rel(of, oc, no);
        printf("  vs composed ops p=%.2f: output rel err %.2e", a.p, e);
        TU_EXPECT(e < 1e-12, "fused output differs from the composed ops (p=%g)", a.p);
        for (int i = 0; i < 4; i++) {
            double eg = host_rel(gf[i], gc[i], in[i]->numel);
            printf(", d%s %.2e", names[i], eg);
            TU_EXPECT(eg < 1e-12, "gradient of %s differs from the composed ops (p=%g)", names[i], a.p);
            free(gf[i]);
            free(gc[i]);
        }
        printf("\n");
        free(R);
        free(of);
        free(oc);
    }
    qt_ctx_step_reset(c);
    return 0;
}

/* GPU in dtype dt (A, B stay F32) vs the CPU reference in double on the same values: x and y
 * rounded to dt, A and B exact. Gradients start from random values (accumulation). */
static void parity(qt_dtype dt, double p, unsigned trainable, double tol_out, double tol_grad) {
    qt_ctx *cc = tu_ctx(QT_CPU), *gc = tu_ctx(QT_CUDA);
    qt_ctx_step_reset(cc);
    qt_ctx_step_reset(gc);
    int64_t N = 67, in = 93, r = 6, O = 129;
    qt_tensor *h[4], *gi[4], *ci[4];
    make_inputs(cc, QT_F32, N, in, r, O, h);
    for (int i = 0; i < 4; i++) {
        qt_dtype gd = i < 2 ? dt : QT_F32;
        gi[i] = qt_empty(gc, QT_STEP, gd, 2, h[i]->shape);
        qt_copy(gi[i], h[i]);
        ci[i] = qt_empty(cc, QT_STEP, QT_F64, 2, h[i]->shape);
        qt_copy(ci[i], gi[i]);
        gi[i]->requires_grad = ci[i]->requires_grad = (trainable >> i) & 1;
        if (gi[i]->requires_grad) { /* pre-existing gradients: the op must add to them */
            qt_fill_uniform(qt_grad(gc, gi[i]), tu_rng(), -1, 1);
            qt_copy(qt_grad(cc, ci[i]), gi[i]->grad);
        }
        qt_set_name(gi[i], "%s", names[i]);
        qt_set_name(ci[i], "%s", names[i]);
    }
    args a = {.scale = 0.5, .p = p, .seed = qt_rng_next(tu_rng())};
    qt_arena_poison(&gc->data[QT_STEP]);
    qt_tensor *go = f_lora(gc, gi, &a), *co = f_lora(cc, ci, &a);
    double e = tu_rel_err(go, co);
    bool ok = e <= tol_out && tu_all_finite(go);
    printf("  cuda lora %-4s p=%.1f set=%x output       rel err %.2e (tol %.0e)%s\n", qt_dtype_name(dt), p,
           trainable, e, tol_out, ok ? "" : "  <-- FAIL");
    tu_fail_count += !ok;
    qt_tensor *gs = qt_empty(gc, QT_STEP, go->dtype, 2, go->shape), *cs = qt_empty(cc, QT_STEP, QT_F64, 2, co->shape);
    qt_fill_uniform(gs, tu_rng(), -1, 1);
    qt_copy(cs, gs);
    qt_backward(gc, go, gs);
    qt_backward(cc, co, cs);
    for (int i = 0; i < 4; i++) {
        if (!gi[i]->requires_grad) continue;
        double eg = tu_rel_err(gi[i]->grad, ci[i]->grad);
        bool okg = eg <= tol_grad && tu_all_finite(gi[i]->grad);
        printf("  cuda lora %-4s p=%.1f set=%x grad of %-3s rel err %.2e (tol %.0e)%s\n", qt_dtype_name(dt), p,
               trainable, names[i], eg, tol_grad, okg ? "" : "  <-- FAIL");
        tu_fail_count += !okg;
    }
    qt_ctx_step_reset(cc);
    qt_ctx_step_reset(gc);
}

int qt_test_cuda(void) {
    /* F32 with TF32 off (tu_ctx's default): only summation order differs from double.
     * BF16: on top of the reference's rounding of x and y, the GPU rounds A, B, dropout(x),
     * t = x·Aᵀ, dt and the outputs to bf16 (relative 2^-9 each, independent): ~6 roundings
     * bound the norm-wise error near 1e-2; 2e-2 leaves headroom while any wrong term (a
     * missing gradient part, a different mask) is O(1). F16 has 3 more mantissa bits. */
    const qt_dtype dts[3] = {QT_F32, QT_BF16, QT_F16};
    const double tol[3] = {1e-5, 2e-2, 3e-3};
    const unsigned sets[] = {0xF, 0xC, 0x3, 0x6};
    for (int d = 0; d < 3; d++)
        for (int pi = 0; pi < 2; pi++)
            for (size_t s = 0; s < sizeof sets / sizeof *sets; s++)
                parity(dts[d], pi ? 0.3 : 0.0, sets[s], tol[d], tol[d]);
    return 0;
}
