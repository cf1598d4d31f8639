/* rope: inv_freq (none / linear / llama3) against the spec's formula re-derived here in double,
 * the rotation against the formula, finite-difference gradients, GPU parity in F32/BF16/F16
 * (also at position 8000). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define QT_TEST_HAS_CUDA

enum { HIGH, MEDIUM, LOW };

/* shared/specs/safetensors-peft.md section 3, "llama3 RoPE frequency scaling", in double. */
static void ref_inv_freq(const qt_rope *r, double *inv, int *regime) {
    int d = r->head_dim;
    for (int j = 0; j < d / 2; j++) {
        double base = 1.0 / pow(r->theta, 2.0 * j / d);
        inv[j] = base;
        regime[j] = HIGH;
        if (r->scaling == 1) inv[j] = base / r->factor;
        if (r->scaling != 2) continue;
        double wavelen = 2 * M_PI / base, C = r->original_max_pos;
        double low_wl = C / r->low_freq_factor, high_wl = C / r->high_freq_factor;
        if (wavelen > low_wl) {
            inv[j] = base / r->factor, regime[j] = LOW;
        } else if (wavelen < high_wl) {
            inv[j] = base, regime[j] = HIGH;
        } else {
            double s = (C / wavelen - r->low_freq_factor) / (r->high_freq_factor - r->low_freq_factor);
            inv[j] = (1 - s) * base / r->factor + s * base, regime[j] = MEDIUM;
        }
    }
}

/* qt_rope_inv_freq vs the double derivation; returns the regime counts. */
static void check_inv_freq(const char *what, const qt_rope *r, int counts[3]) {
    int half = r->head_dim / 2, regime[256];
    float got[256];
    double ref[256], worst = 0;
    qt_rope_inv_freq(r, got);
    ref_inv_freq(r, ref, regime);
    counts[0] = counts[1] = counts[2] = 0;
    for (int j = 0; j < half; j++) {
        worst = fmax(worst, fabs(got[j] - ref[j]) / ref[j]);
        counts[regime[j]]++;
    }
    printf("  inv_freq %-28s hd %3d: worst rel err vs double %.2e", what, r->head_dim, worst);
    if (r->scaling == 2) printf("; regimes high %d medium %d low %d", counts[HIGH], counts[MEDIUM], counts[LOW]);
    printf("\n");
    /* float32 steps: a few ulps (2^-24 each), amplified by ln(theta) through the exponent */
    TU_EXPECT(worst < 2e-6, "%s: inv_freq off the formula by %.3g", what, worst);
}

typedef struct rope_case {
    qt_rope r;
    int B, T, nh, pos0;
} rope_case;

static qt_tensor *f_rope(qt_ctx *c, qt_tensor **in, void *u) {
    rope_case *k = u;
    return qt_rope_apply(c, in[0], &k->r, k->B, k->T, k->nh, k->pos0);
}

/* The rotation written out from the spec (q' = q cos + rotate_half(q) sin, float32 angle),
 * on an F64 CPU tensor. */
static double forward_err(qt_ctx *c, qt_tensor *x, rope_case *k) {
    int hd = k->r.head_dim, half = hd / 2;
    float inv[256];
    qt_rope_inv_freq(&k->r, inv);
    qt_ctx_step_reset(c);
    qt_tensor *y = qt_rope_apply(c, x, &k->r, k->B, k->T, k->nh, k->pos0);
    const double *X = x->data, *Y = y->data;
    double num = 0, den = 0;
    for (int b = 0; b < k->B; b++)
        for (int t = 0; t < k->T; t++)
            for (int h = 0; h < k->nh; h++) {
                const double *q = X + (((int64_t)b * k->T + t) * k->nh + h) * hd;
                const double *o = Y + (((int64_t)b * k->T + t) * k->nh + h) * hd;
                for (int i = 0; i < hd; i++) {
                    float ang = (float)(k->pos0 + t) * inv[i % half];
                    double rot = i < half ? -q[i + half] : q[i - half];
                    double ref = q[i] * cos(ang) + rot * sin(ang);
                    num += (o[i] - ref) * (o[i] - ref);
                    den += ref * ref;
                }
            }
    qt_ctx_step_reset(c);
    return sqrt(num / den);
}

int qt_test_cpu(void) {
    int cnt[3];
    /* Llama 3.1: theta 500000, hd 128, factor 8, low 1, high 4, original context 8192. */
    qt_rope l31 = {.head_dim = 128, .theta = 500000, .scaling = 2, .factor = 8, .low_freq_factor = 1,
                   .high_freq_factor = 4, .original_max_pos = 8192};
    check_inv_freq("llama3 (Llama-3.1)", &l31, cnt);
    TU_EXPECT(cnt[HIGH] > 0 && cnt[MEDIUM] > 0 && cnt[LOW] > 0, "Llama-3.1 should show all three regimes");
    /* high: untouched (bit-equal to no scaling); low: exactly the unscaled value / 8 */
    qt_rope none = l31;
    none.scaling = 0;
    float a[64], b[64];
    int regime[64];
    double ref[64];
    qt_rope_inv_freq(&l31, a);
    qt_rope_inv_freq(&none, b);
    ref_inv_freq(&l31, ref, regime);
    for (int j = 0; j < 64; j++) {
        if (regime[j] == HIGH) TU_EXPECT(a[j] == b[j], "high-frequency j=%d was changed", j);
        if (regime[j] == LOW) TU_EXPECT(a[j] == b[j] / 8.0f, "low-frequency j=%d is not inv/8", j);
        if (regime[j] == MEDIUM) TU_EXPECT(a[j] < b[j] && a[j] > b[j] / 8.0f, "medium j=%d not between", j);
    }
    qt_rope l32 = l31;
    l32.factor = 32; /* Llama 3.2 1B/3B */
    check_inv_freq("llama3 (Llama-3.2, f=32)", &l32, cnt);
    check_inv_freq("none (Llama-3.1 theta)", &none, cnt);

    /* Small head: theta 10000, hd 6 gives wavelengths 6.3, 135, 2916; C = 512 with lf 1, hf 4
     * puts them in the high (< 128), medium and low (> 512) regimes, one each. */
    rope_case k = {.r = {.head_dim = 6, .theta = 10000, .scaling = 2, .factor = 8, .low_freq_factor = 1,
                         .high_freq_factor = 4, .original_max_pos = 512},
                   .B = 2, .T = 5, .nh = 3, .pos0 = 3};
    check_inv_freq("llama3 (small, C=512)", &k.r, cnt);
    TU_EXPECT(cnt[HIGH] == 1 && cnt[MEDIUM] == 1 && cnt[LOW] == 1, "small llama3 case must hit all regimes");

    qt_ctx *c = tu_ctx(QT_CPU);
    int64_t s[2] = {(int64_t)k.B * k.T, (int64_t)k.nh * k.r.head_dim};
    qt_tensor *x = tu_rand(c, QT_F64, 2, s, -2, 2);
    qt_set_name(x, "x");
    const char *names[3] = {"none", "linear", "llama3"};
    for (int sc = 0; sc < 3; sc++) {
        rope_case kk = k;
        kk.r.scaling = sc;
        kk.r.factor = sc == 1 ? 2.5 : 8;
        if (sc == 1) check_inv_freq("linear (f=2.5)", &kk.r, cnt);
        x->requires_grad = false;
        double e = forward_err(c, x, &kk);
        printf("  rope %-6s forward vs formula: rel err %.2e\n", names[sc], e);
        /* the op rounds cos/sin to float32 (transformers' precision); the formula here doesn't */
        TU_EXPECT(e < 1e-6, "rope %s forward off the formula: %.3g", names[sc], e);
        x->requires_grad = true;
        char nm[32];
        snprintf(nm, sizeof nm, "rope %s", names[sc]);
        tu_gradcheck(c, nm, f_rope, &x, 1, &kk, 1e-6, 1e-7);
    }
    /* position 0 is the identity */
    rope_case z = k;
    z.pos0 = 0;
    z.T = 1;
    z.B = 1;
    int64_t zs[2] = {1, (int64_t)z.nh * z.r.head_dim};
    qt_tensor *x0 = tu_rand(c, QT_F64, 2, zs, -2, 2);
    qt_ctx_step_reset(c);
    TU_EXPECT(tu_rel_err(qt_rope_apply(c, x0, &z.r, 1, 1, z.nh, 0), x0) == 0, "position 0 must not rotate");
    qt_ctx_step_reset(c);
    return 0;
}

int qt_test_cuda(void) {
    qt_ctx *c = tu_ctx(QT_CPU);
    rope_case k[3] = {
        {.r = {.head_dim = 64, .theta = 500000, .scaling = 2, .factor = 8, .low_freq_factor = 1,
               .high_freq_factor = 4, .original_max_pos = 8192},
         .B = 2, .T = 33, .nh = 5, .pos0 = 1000},
        {.r = {.head_dim = 64, .theta = 10000}, .B = 2, .T = 33, .nh = 5, .pos0 = 1000},
        /* large positions: angles up to ~8000 rad in the fastest pair */
        {.r = {.head_dim = 64, .theta = 10000}, .B = 1, .T = 17, .nh = 3, .pos0 = 8000},
    };
    const char *names[3] = {"rope llama3", "rope none", "rope pos8000"};
    qt_dtype dts[3] = {QT_F32, QT_BF16, QT_F16};
    double tol[3] = {1e-5, 1e-2, 2e-3};
    for (int i = 0; i < 3; i++) {
        int64_t s[2] = {(int64_t)k[i].B * k[i].T, (int64_t)k[i].nh * k[i].r.head_dim};
        qt_tensor *x = tu_rand(c, QT_F32, 2, s, -2, 2);
        qt_set_name(x, "x");
        x->requires_grad = true;
        for (int d = 0; d < 3; d++) tu_cuda_parity(names[i], f_rope, &x, 1, &k[i], dts[d], tol[d], tol[d]);
    }
    return 0;
}
