/* NF4 + double quantization against an independent re-implementation of
 * shared/specs/nf4.md written here in a different style (nearest value by distance with
 * the tie rules applied explicitly, linear scans instead of comparison counts and binary
 * search, the dynamic map rebuilt from its construction), the spec's worked examples,
 * error bounds, bits per parameter, bnb-checkpoint import, real llama2.c weights, and
 * GPU == CPU bit for bit. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "quant/quant.h"
#include "testutil.h"

#define QT_TEST_HAS_CUDA

/* ------------------------------------------------------------------ the spec, copied */

static const uint32_t spec_nf4_bits[16] = {
    0xBF800000, 0xBF3239B1, 0xBF066B30, 0xBECA32A0, 0xBE91A24D, 0xBE3D353F, 0xBDBA7871, 0x00000000,
    0x3DA2FAFF, 0x3E24CAE3, 0x3E7C04DD, 0x3EAD033A, 0x3EE1A4B8, 0x3F1007AB, 0x3F3913B3, 0x3F800000};
/* As printed in the spec: bnb writes these decimals as float literals (`x > 0.0397...f`),
 * so a threshold is the decimal parsed straight to float32, not (float)(double). */
static const char *spec_thresholds[15] = {
    "-0.8480964004993439", "-0.6106329262256622", "-0.4599952697753906", "-0.33967943489551544",
    "-0.23460740596055984", "-0.13791173323988914", "-0.045525018125772476", "0.03979014977812767",
    "0.1202552504837513", "0.2035212516784668", "0.2920137718319893", "0.3893125355243683",
    "0.5016634166240692", "0.6427869200706482", "0.8614784181118011"};
static const uint32_t spec_dmap_pos[127] = { /* D[128..254], torch 2.11 */
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
    0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
    0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
    0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333};

static float fbits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t bitsf(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static int64_t ulps(float a, float b) { return llabs((int64_t)(int32_t)bitsf(a) - (int64_t)(int32_t)bitsf(b)); }

static float R_nf4[16], R_mid[15], R_D[256];

/* a*b + c rounded twice (the spec's order), whatever the compiler's contraction default */
static float mul_add(float a, float b, float c) { volatile float p = a * b; return p + c; }

/* ------------------------------------------------------------------ reference rules */

/* Nearest NF4 value by distance, lower code on a distance tie; then the spec's threshold
 * rule made explicit: s exactly on a (float32) midpoint goes to the lower code. */
static int ref_code(float s) {
    if (isnan(s)) return 0; /* spec 2.4: NaN fails every comparison -> code 0 */
    if (isinf(s)) return s > 0 ? 15 : 0;
    int best = 0;
    for (int k = 1; k < 16; k++)
        if (fabs((double)s - R_nf4[k]) < fabs((double)s - R_nf4[best])) best = k;
    for (int k = 0; k < 15; k++)
        if (s == R_mid[k]) return k;
    return best;
}

/* Code into D: walk all 255 float32 midpoints; a tie goes to the even index of the pair
 * (where bnb's binary search always ends). */
static int ref_q8(float u) {
    if (isnan(u)) return 0;
    int code = 0;
    for (int k = 0; k < 255; k++) {
        float m = (R_D[k] + R_D[k + 1]) * 0.5f;
        if (u > m || (u == m && (k & 1))) code = k + 1;
    }
    return code;
}

typedef struct {
    int64_t n, nb, nb2;
    uint8_t *codes, *q8;
    float *absmax, *absmax2, *scale, offset;
    float *deq;
} ref_q;

static void ref_free(ref_q *r) {
    free(r->codes), free(r->q8), free(r->absmax), free(r->absmax2), free(r->scale), free(r->deq);
    memset(r, 0, sizeof *r);
}

/* The nested step, given an offset (the test's own, or the implementation's). */
static void ref_nested(ref_q *r, float offset) {
    r->offset = offset;
    for (int64_t g = 0; g < r->nb2; g++) {
        int64_t lo = g * 256, hi = lo + 256 < r->nb ? lo + 256 : r->nb;
        float m = 0;
        for (int64_t b = lo; b < hi; b++) {
            float cb = r->absmax[b] - offset;
            if (fabsf(cb) > m) m = fabsf(cb);
        }
        r->absmax2[g] = m;
        for (int64_t b = lo; b < hi; b++)
            r->q8[b] = m == 0 ? 127 : (uint8_t)ref_q8((r->absmax[b] - offset) * (1.0f / m));
    }
    for (int64_t b = 0; b < r->nb; b++) r->scale[b] = mul_add(R_D[r->q8[b]], r->absmax2[b / 256], offset);
}

static void ref_dequant(ref_q *r, bool dq) {
    for (int64_t e = 0; e < r->n; e++) {
        int code = e % 2 == 0 ? r->codes[e / 2] >> 4 : r->codes[e / 2] & 15;
        r->deq[e] = R_nf4[code] * (dq ? r->scale[e / 64] : r->absmax[e / 64]);
    }
}

static void ref_quantize(const float *x, int64_t n, bool dq, ref_q *r) {
    r->n = n;
    r->nb = (n + 63) / 64;
    r->nb2 = dq ? (r->nb + 255) / 256 : 0;
    r->codes = calloc((size_t)(n + 1) / 2, 1);
    r->absmax = calloc((size_t)r->nb, 4);
    r->q8 = calloc((size_t)r->nb + 1, 1);
    r->absmax2 = calloc((size_t)r->nb2 + 1, 4);
    r->scale = calloc((size_t)r->nb, 4);
    r->deq = calloc((size_t)n, 4);
    for (int64_t b = 0; b < r->nb; b++) {
        int64_t lo = b * 64, hi = lo + 64 < n ? lo + 64 : n;
        float m = 0;
        for (int64_t e = lo; e < hi; e++)
            if (fabsf(x[e]) > m) m = fabsf(x[e]);
        r->absmax[b] = m;
        float inv = m == 0 ? 0 : 1.0f / m;
        for (int64_t e = lo; e < hi + (hi == n && n % 2); e++) { /* + the pad nibble of odd n */
            float v = e < n ? x[e] : 0.0f;
            int code = m == 0 ? 7 : ref_code(v * inv);
            r->codes[e / 2] |= (uint8_t)(e % 2 == 0 ? code << 4 : code);
        }
    }
    if (dq) {
        long double s = 0;
        for (int64_t b = 0; b < r->nb; b++) s += r->absmax[b];
        ref_nested(r, (float)(s / r->nb));
    }
    ref_dequant(r, dq);
}

/* ------------------------------------------------------------------ setup checks */

static void torch_linspace(float start, float end, int steps, float *o) {
    volatile float step = (end - start) / (float)(steps - 1);
    for (int i = 0; i < steps; i++) {
        volatile float t = step * (float)(i < steps / 2 ? i : steps - i - 1);
        o[i] = i < steps / 2 ? start + t : end - t;
    }
}
static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static void check_tables(void) {
    int n_halfway = 0;
    for (int k = 0; k < 16; k++) R_nf4[k] = fbits(spec_nf4_bits[k]);
    for (int k = 0; k < 15; k++) {
        /* midpoint in double, written as its shortest round-trip decimal, read as float32 */
        double mid = ((double)R_nf4[k] + R_nf4[k + 1]) / 2.0;
        char lit[40];
        for (int p = 1; p <= 17; p++) {
            snprintf(lit, sizeof lit, "%.*g", p, mid);
            if (strtod(lit, NULL) == mid) break;
        }
        R_mid[k] = strtof(lit, NULL);
        TU_EXPECT(R_mid[k] == strtof(spec_thresholds[k], NULL), "threshold %d: %s vs spec %s", k, lit,
                  spec_thresholds[k]);
        TU_EXPECT(bitsf(nf4_thresholds[k]) == bitsf(R_mid[k]), "nf4_thresholds[%d]", k);
        n_halfway += (float)mid != R_mid[k];
    }
    printf("  NF4 thresholds: %d of 15 double midpoints lie exactly halfway between two floats "
           "(the literal's digits decide the side)\n", n_halfway);
    for (int k = 0; k < 16; k++) TU_EXPECT(bitsf(nf4_values[k]) == spec_nf4_bits[k], "nf4_values[%d]", k);
    /* D from the spec's bit patterns, checked against the implementation's table... */
    for (int i = 0; i < 127; i++) R_D[128 + i] = fbits(spec_dmap_pos[i]), R_D[126 - i] = -R_D[128 + i];
    R_D[127] = 0.0f, R_D[255] = 1.0f;
    float impl[256], built[256];
    nf4_default_dmap(impl);
    int diff = 0;
    for (int i = 0; i < 256; i++) diff += bitsf(impl[i]) != bitsf(R_D[i]);
    TU_EXPECT(diff == 0, "%d entries of nf4_default_dmap differ from the spec's table", diff);
    /* ...and rebuilt from its construction (section 5) in float32: equal up to the ulps
     * by which torch versions' linspace differ. */
    int m = 0;
    for (int i = 0; i < 7; i++) {
        float B[65];
        int steps = (1 << i) + 1;
        torch_linspace(0.1f, 1.0f, steps, B);
        float p = (float)pow(10.0, i - 6);
        for (int k = 0; k + 1 < steps; k++) {
            float mid = (B[k] + B[k + 1]) / 2.0f;
            built[m++] = p * mid;
            built[m++] = -p * mid;
        }
    }
    built[m++] = 0.0f;
    built[m++] = 1.0f;
    TU_EXPECT(m == 256, "construction gave %d values", m);
    qsort(built, 256, sizeof(float), cmp_float);
    int nd = 0;
    int64_t worst = 0;
    for (int i = 0; i < 256; i++) {
        nd += built[i] != R_D[i];
        if (ulps(built[i], R_D[i]) > worst) worst = ulps(built[i], R_D[i]);
    }
    printf("  dynamic map: rebuilt from section 5 in float32, %d of 256 entries differ from the torch-2.11 "
           "table, by at most %lld ulp\n", nd, (long long)worst);
    TU_EXPECT(worst <= 2 && nd <= 42, "rebuilt map differs by %lld ulp in %d entries", (long long)worst, nd);
    TU_EXPECT(R_D[127] == 0 && R_D[255] == 1 && R_D[0] == -0.99296875f && R_D[128] == 5.5000004e-7f &&
                  R_D[192] == 0.12109375f, "map landmarks");
}

/* ------------------------------------------------------------------ inputs */

typedef struct {
    const char *name;
    int64_t rows, cols; /* cols 0: 1-D of `rows` elements */
} shape_case;

/* kind: 0 normal, 1 uniform, 2 heavy-tailed, 3 zero blocks + single nonzero + thresholds
 * + a subnormal block, 4 nested block whose scales all equal the mean */
static float *make_weights(int kind, int64_t n) {
    float *x = malloc((size_t)n * 4);
    qt_rng *r = tu_rng();
    for (int64_t e = 0; e < n; e++) {
        double u = qt_rng_uniform(r), g = qt_rng_normal(r);
        x[e] = (float)(kind == 1 ? 2 * u - 1 : kind == 2 ? g * 0.01 / fmax(u, 1e-3) : g * 0.02);
    }
    if (kind == 3) {
        int64_t nb = (n + 63) / 64;
        for (int64_t b = 0; b < nb; b++) {
            int64_t lo = b * 64, len = n - lo < 64 ? n - lo : 64;
            int sel = (int)(b % 5);
            if (sel == 0) memset(x + lo, 0, (size_t)len * 4);            /* all zero */
            if (sel == 1) {                                               /* one nonzero */
                memset(x + lo, 0, (size_t)len * 4);
                x[lo + qt_rng_next(r) % (uint64_t)len] = (float)qt_rng_normal(r);
            }
            if (sel == 2 && len >= 2) { /* absmax 1: values exactly on and next to thresholds / codes */
                x[lo] = qt_rng_uniform(r) < 0.5 ? 1.0f : -1.0f;
                for (int64_t i = 1; i < len; i++) {
                    int k = (int)(qt_rng_next(r) % 15), how = (int)(qt_rng_next(r) % 4);
                    float t = R_mid[k];
                    x[lo + i] = how == 0 ? t : how == 1 ? nextafterf(t, 2) : how == 2 ? nextafterf(t, -2) : R_nf4[k];
                }
            }
            if (sel == 3 && b % 10 == 3) /* subnormal absmax: 1/absmax overflows to inf */
                for (int64_t i = 0; i < len; i++) x[lo + i] = (float)(i % 3) * 1e-40f * (i % 2 ? -1 : 1);
        }
    }
    if (kind == 4) { /* 256 blocks with absmax 0.5, then blocks alternating 0.25 / 0.75: mean 0.5 */
        for (int64_t e = 0; e < n; e++) {
            int64_t b = e / 64;
            float a = b < 256 ? 0.5f : (b % 2 ? 0.75f : 0.25f);
            x[e] = e % 64 == 5 ? -a : (float)(qt_rng_uniform(r) * 0.9 - 0.45) * a;
        }
    }
    return x;
}

static qt_tensor *tensor_of(qt_ctx *c, const float *x, const shape_case *s, qt_dtype dt) {
    int64_t shape[2] = {s->rows, s->cols};
    qt_tensor *t = qt_empty(c, QT_PERSIST, dt, s->cols ? 2 : 1, shape);
    qt_set_name(t, "%s", s->name);
    qt_upload(t, x, QT_F32);
    return t;
}

/* The values as the quantizer sees them: rounded to dt, read back as float32. */
static float *values_of(const qt_tensor *t) {
    float *v = malloc((size_t)t->numel * 4);
    qt_download(t, v, QT_F32);
    return v;
}

/* ------------------------------------------------------------------ comparisons */

static int cmp_bytes(const char *what, const uint8_t *a, const uint8_t *b, int64_t n, const char *name) {
    for (int64_t i = 0; i < n; i++)
        if (a[i] != b[i]) {
            TU_EXPECT(0, "%s: %s[%lld] = 0x%02x, reference 0x%02x", name, what, (long long)i, a[i], b[i]);
            return 1;
        }
    return 0;
}
static int cmp_floats(const char *what, const float *a, const float *b, int64_t n, const char *name) {
    for (int64_t i = 0; i < n; i++)
        if (bitsf(a[i]) != bitsf(b[i])) {
            TU_EXPECT(0, "%s: %s[%lld] = %.9g, reference %.9g", name, what, (long long)i, a[i], b[i]);
            return 1;
        }
    return 0;
}

/* Every array of q (CPU) against the reference; the offset may differ from the test's
 * long-double mean by one ulp (then the nested step is redone with q's offset). */
static int compare_with_ref(const nf4_tensor *q, ref_q *r, bool dq, const char *name) {
    int bad = cmp_bytes("codes", q->codes, r->codes, (r->n + 1) / 2, name);
    if (!dq) return bad + cmp_floats("absmax", q->absmax, r->absmax, r->nb, name);
    TU_EXPECT(ulps(q->offset, r->offset) <= 1, "%s: offset %.9g vs mean %.9g", name, q->offset, r->offset);
    if (q->offset != r->offset) {
        printf("  %s: offset %.9g is 1 ulp from the long-double mean; nested codes compared at it\n", name, q->offset);
        ref_nested(r, q->offset);
        ref_dequant(r, true);
    }
    bad += cmp_bytes("absmax_q", q->absmax_q, r->q8, r->nb, name);
    bad += cmp_floats("absmax2", q->absmax2, r->absmax2, r->nb2, name);
    return bad;
}

static float max_half_gap(const float *t, int n, float below, float above) {
    float g = fmaxf(t[0] - below, above - t[n - 1]);
    for (int k = 0; k + 1 < n; k++) g = fmaxf(g, (t[k + 1] - t[k]) / 2);
    return g;
}

/* |w - deq| <= half the largest NF4 gap * absmax + |absmax - scale|, and the DQ scale
 * error <= half the largest D gap * absmax2 (plus float32 rounding). */
static void check_bounds(const float *x, const ref_q *r, const float *deq, bool dq, const char *name) {
    float g4 = max_half_gap(R_nf4, 16, -1, 1), g8 = max_half_gap(R_D, 256, -1, 1);
    double worst = 0, worst_dq = 0;
    for (int64_t e = 0; e < r->n; e++) {
        float a = r->absmax[e / 64], s = dq ? r->scale[e / 64] : a;
        double bound = (g4 + 1e-6) * a + fabsf(a - s) + 1e-6 * fabsf(s) + 1e-30;
        double err = fabs((double)x[e] - deq[e]);
        if (err / bound > worst) worst = err / bound;
        TU_EXPECT(err <= bound, "%s: element %lld: |%.9g - %.9g| > %.3g", name, (long long)e, x[e], deq[e], bound);
        if (err > bound) break;
    }
    for (int64_t b = 0; dq && b < r->nb; b++) {
        double bound = (g8 + 1e-6) * r->absmax2[b / 256] + 1e-6 * r->absmax[b] + 1e-30;
        double err = fabs((double)r->absmax[b] - r->scale[b]);
        if (err / bound > worst_dq) worst_dq = err / bound;
        TU_EXPECT(err <= bound, "%s: scale %lld: |%.9g - %.9g| > %.3g", name, (long long)b, r->absmax[b], r->scale[b], bound);
    }
    printf("  %-24s %s n=%-8lld error / bound: weights %.3f%s", name, dq ? "dq  " : "nodq", (long long)r->n, worst,
           dq ? "" : "\n");
    if (dq) printf(", scales %.3f\n", worst_dq);
}

/* Quantize values x (shape s, dtype dt) on the CPU and check everything against the reference. */
static void run_cpu_case(qt_ctx *c, const float *x0, const shape_case *s, qt_dtype dt, bool dq, bool bounds) {
    size_t mark = qt_arena_mark(&c->data[QT_PERSIST]);
    qt_tensor *w = tensor_of(c, x0, s, dt);
    float *x = values_of(w);
    char name[64];
    snprintf(name, sizeof name, "%s/%s", s->name, qt_dtype_name(dt));
    nf4_tensor q;
    qt_err e;
    TU_EXPECT(nf4_quantize(c, QT_PERSIST, w, dq, &q, &e) == 0, "%s: %s", name, e.msg);
    ref_q r;
    ref_quantize(x, w->numel, dq, &r);
    compare_with_ref(&q, &r, dq, name);
    qt_dtype outs[3] = {QT_F32, QT_BF16, QT_F16};
    for (int k = 0; k < 3; k++) {
        qt_tensor *o = qt_empty(c, QT_PERSIST, outs[k], 1, &w->numel);
        nf4_dequantize(c, &q, o);
        if (outs[k] == QT_F32) {
            cmp_floats("dequant f32", o->data, r.deq, r.n, name);
            continue;
        }
        const uint16_t *h = o->data;
        for (int64_t i = 0; i < r.n; i++) {
            uint32_t u = bitsf(r.deq[i]); /* round to nearest even, by hand (values are finite) */
            uint16_t want = outs[k] == QT_BF16 ? (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16)
                                               : qt_f32_to_f16(r.deq[i]);
            if (h[i] != want) {
                TU_EXPECT(0, "%s: dequant %s[%lld] = 0x%04x, want 0x%04x", name, qt_dtype_name(outs[k]), (long long)i,
                          h[i], want);
                break;
            }
        }
    }
    if (bounds) check_bounds(x, &r, r.deq, dq, name);
    ref_free(&r);
    free(x);
    qt_arena_reset(&c->data[QT_PERSIST], mark);
}

static const shape_case cases[] = {
    {"normal 37x1001", 37, 1001},      {"uniform 100003", 100003, 0},  {"heavy-tailed 333x211", 333, 211},
    {"special 513x65", 513, 65},       {"equal-scales 512x64", 512, 64}, {"normal n=1", 1, 0},
    {"normal n=2", 2, 0},              {"normal n=63", 63, 0},        {"normal n=65", 65, 0},
    {"normal 4 nested blocks", 49603, 0},
};
static const int case_kind[] = {0, 1, 2, 3, 4, 0, 0, 0, 0, 0};
#define NCASES ((int)(sizeof cases / sizeof cases[0]))

static int64_t case_n(const shape_case *s) { return s->rows * (s->cols ? s->cols : 1); }

/* ------------------------------------------------------------------ worked examples (spec 7) */

static void worked_examples(qt_ctx *c) {
    size_t mark = qt_arena_mark(&c->data[QT_PERSIST]);
    /* 7.1: eight numbers at the start of a 64-block of zeros */
    float x[64] = {0.12f, -0.5f, 0.031f, 0.9f, -0.07f, 0.25f, -1.1f, 0.44f};
    shape_case s = {"spec 7.1", 64, 0};
    qt_tensor *w = tensor_of(c, x, &s, QT_F32);
    nf4_tensor q;
    qt_err e;
    TU_EXPECT(nf4_quantize(c, QT_PERSIST, w, false, &q, &e) == 0, "7.1: %s", e.msg);
    const uint8_t want[4] = {0x83, 0x7E, 0x6A, 0x0C};
    const float deq[8] = {0.087538f, -0.434409f, 0.0f, 0.795253f, -0.100155f, 0.270724f, -1.1f, 0.484781f};
    TU_EXPECT(q.absmax[0] == 1.1f, "7.1 absmax %.9g", q.absmax[0]);
    for (int k = 0; k < 4; k++) TU_EXPECT(q.codes[k] == want[k], "7.1 byte %d = 0x%02x, spec 0x%02x", k, q.codes[k], want[k]);
    for (int k = 4; k < 32; k++) TU_EXPECT(q.codes[k] == 0x77, "7.1 zero byte %d = 0x%02x", k, q.codes[k]);
    qt_tensor *o = qt_empty(c, QT_PERSIST, QT_F32, 1, &w->numel);
    nf4_dequantize(c, &q, o);
    for (int k = 0; k < 8; k++)
        TU_EXPECT(fabsf(((float *)o->data)[k] - deq[k]) <= 1e-6f, "7.1 dequant %d: %.7f, spec %.6f", k,
                  ((float *)o->data)[k], deq[k]);
    /* 7.2: four block scales, nested block of 4 — through the 8-bit quantizer directly... */
    const float am[4] = {0.031f, 0.052f, 0.018f, 0.044f}, rec[4] = {0.0309604f, 0.0520619f, 0.0181283f, 0.0441061f};
    const int code8[4] = {50, 245, 0, 214};
    const float dval[4] = {-0.28984374f, 0.86640626f, -0.99296874f, 0.43046874f};
    float offset = (am[0] + am[1] + am[2] + am[3]) / 4, cb[4], a2, d[256];
    TU_EXPECT(fabsf(offset - 0.03625f) <= 1e-8f, "7.2 offset %.9g", offset);
    for (int k = 0; k < 4; k++) cb[k] = am[k] - offset;
    uint8_t q8[4];
    nf4_default_dmap(d);
    nf4_q8_blockwise(cb, 4, 4, d, q8, &a2);
    TU_EXPECT(fabsf(a2 - 0.01825f) <= 1e-8f, "7.2 absmax2 %.9g", a2);
    for (int k = 0; k < 4; k++) {
        TU_EXPECT(q8[k] == code8[k], "7.2 code8[%d] = %d, spec %d", k, q8[k], code8[k]);
        TU_EXPECT(fabsf(d[code8[k]] - dval[k]) <= 1e-8f, "7.2 D[%d] = %.9g, spec %.8f", code8[k], d[code8[k]], dval[k]);
        TU_EXPECT(fabsf(mul_add(d[q8[k]], a2, offset) - rec[k]) <= 1e-7f, "7.2 scale %d", k);
    }
    /* ...and through the full quantizer: four 64-blocks whose absmaxes are those scales */
    float y[256];
    for (int i = 0; i < 256; i++) y[i] = am[i / 64] * (i % 64 == 7 ? -1.0f : (float)(i % 64) / 80.0f);
    s = (shape_case){"spec 7.2", 4, 64};
    w = tensor_of(c, y, &s, QT_F32);
    TU_EXPECT(nf4_quantize(c, QT_PERSIST, w, true, &q, &e) == 0, "7.2: %s", e.msg);
    TU_EXPECT(ulps(q.offset, 0.03625f) <= 1, "7.2 quantizer offset %.9g", q.offset);
    float sc[4];
    nf4_block_scales(&q, sc);
    for (int k = 0; k < 4; k++) {
        TU_EXPECT(q.absmax_q[k] == code8[k], "7.2 quantizer code8[%d] = %d, spec %d", k, q.absmax_q[k], code8[k]);
        TU_EXPECT(fabsf(sc[k] - rec[k]) <= 1e-7f, "7.2 quantizer scale %d = %.9g, spec %.7f", k, sc[k], rec[k]);
    }
    /* D ties: u exactly on a float32 midpoint goes to the even index of the pair */
    float u[256];
    uint8_t cu[256];
    u[0] = 1.0f; /* absmax 1: u = x exactly */
    for (int k = 0; k < 255; k++) u[k + 1] = (d[k] + d[k + 1]) * 0.5f;
    nf4_q8_blockwise(u, 256, 256, d, cu, &a2);
    for (int k = 0; k < 255; k++)
        TU_EXPECT(cu[k + 1] == (k % 2 ? k + 1 : k) && cu[k + 1] == ref_q8(u[k + 1]), "D tie %d -> %d", k, cu[k + 1]);
    qt_arena_reset(&c->data[QT_PERSIST], mark);
}

/* ------------------------------------------------------------------ bnb import, errors */

static void bnb_import(qt_ctx *c) {
    size_t mark = qt_arena_mark(&c->data[QT_PERSIST]);
    shape_case s = {"model.layers.0.q_proj.weight", 97, 333};
    float *x = make_weights(0, case_n(&s));
    qt_tensor *w = tensor_of(c, x, &s, QT_F32);
    nf4_tensor q, back;
    qt_err e;
    for (int dq = 0; dq < 2; dq++) {
        TU_EXPECT(nf4_quantize(c, QT_PERSIST, w, dq, &q, &e) == 0, "%s", e.msg);
        nf4_bnb_parts p = {.name = s.name, .quant_type = "nf4", .blocksize = 64, .ndim = 2, .shape = {97, 333},
                           .codes = q.codes, .codes_bytes = (q.n + 1) / 2, .quant_map = R_nf4, .nested = dq,
                           .nested_blocksize = 256, .nested_offset = q.offset, .absmax_q = q.absmax_q,
                           .absmax = q.absmax, .absmax_len = q.nblocks, .nested_absmax = q.absmax2,
                           .nested_absmax_len = q.nblocks2, .nested_quant_map = dq ? q.dmap : NULL};
        TU_EXPECT(nf4_from_bnb(&back, &c->data[QT_PERSIST], &p, &e) == 0, "import: %s", e.msg);
        qt_tensor *o1 = qt_empty(c, QT_PERSIST, QT_F32, 1, &w->numel), *o2 = qt_empty(c, QT_PERSIST, QT_F32, 1, &w->numel);
        nf4_dequantize(c, &q, o1);
        nf4_dequantize(c, &back, o2);
        cmp_floats("bnb import", o2->data, o1->data, q.n, s.name);
        /* each damaged field gives an error naming the tensor and the problem */
        struct { nf4_bnb_parts p; const char *needle; } bad[5];
        for (int k = 0; k < 5; k++) bad[k].p = p;
        bad[0].p.blocksize = 128, bad[0].needle = "blocksize 128";
        bad[1].p.quant_type = "fp4", bad[1].needle = "'fp4'";
        bad[2].p.codes_bytes -= 1, bad[2].needle = "bytes";
        float qm[16];
        memcpy(qm, R_nf4, sizeof qm);
        qm[3] = nextafterf(qm[3], 0);
        bad[3].p.quant_map = qm, bad[3].needle = "quant_map[3]";
        bad[4].p.absmax_len -= 1, bad[4].needle = "absmax";
        for (int k = 0; k < 5; k++) {
            e.msg[0] = 0;
            int rc = nf4_from_bnb(&back, &c->data[QT_PERSIST], &bad[k].p, &e);
            TU_EXPECT(rc == -1 && strstr(e.msg, bad[k].needle) && strstr(e.msg, s.name), "bad import %d: rc %d, '%s'", k, rc,
                      e.msg);
        }
    }
    free(x);
    qt_arena_reset(&c->data[QT_PERSIST], mark);
}

static void nonfinite_error(qt_ctx *c) {
    size_t mark = qt_arena_mark(&c->data[QT_PERSIST]);
    shape_case s = {"wq", 9, 70};
    float *x = make_weights(0, case_n(&s));
    x[3 * 70 + 5] = qt_rng_uniform(tu_rng()) < 0.5 ? NAN : -INFINITY;
    qt_tensor *w = tensor_of(c, x, &s, QT_BF16);
    nf4_tensor q;
    qt_err e = {{0}};
    size_t before = qt_arena_mark(&c->data[QT_PERSIST]);
    int rc = nf4_quantize(c, QT_PERSIST, w, true, &q, &e);
    TU_EXPECT(rc == -1 && strstr(e.msg, "row 3, column 5") && strstr(e.msg, "wq"), "non-finite weight: rc %d, '%s'", rc, e.msg);
    TU_EXPECT(qt_arena_mark(&c->data[QT_PERSIST]) == before, "failed quantize left memory allocated");
    printf("  non-finite weight (%s): %s\n", qt_device_name(c->dev), e.msg);
    free(x);
    qt_arena_reset(&c->data[QT_PERSIST], mark);
}

/* ------------------------------------------------------------------ real weights */

/* wq of stories260K (llama2.c layout: 7 int32, embedding, rms_att, wq...), or NULL. */
static float *stories_wq(int *layers, int *dim) {
    const char *path = QT_SHARED_DIR "/models/stories260K/stories260K.bin";
    FILE *f = fopen(path, "rb");
    if (!f) {
        printf("  SKIP real weights: %s is not present\n", path);
        return NULL;
    }
    int32_t h[7];
    float *wq = NULL;
    if (fread(h, 4, 7, f) == 7 && h[0] > 0 && h[0] <= 4096 && h[2] > 0 && h[2] <= 64) {
        long skip = ((long)abs(h[5]) * h[0] + (long)h[2] * h[0]) * 4;
        size_t n = (size_t)h[2] * h[0] * h[0];
        wq = malloc(n * 4);
        if (fseek(f, skip, SEEK_CUR) != 0 || fread(wq, 4, n, f) != n) free(wq), wq = NULL;
    }
    fclose(f);
    TU_EXPECT(wq, "%s: unexpected header or short file", path);
    *layers = h[2], *dim = h[0];
    return wq;
}

static void real_weights_cpu(qt_ctx *c) {
    int L, D;
    float *wq = stories_wq(&L, &D);
    if (!wq) return;
    for (int l = 0; l <= L; l++) { /* each layer's [dim, dim], then all layers stacked */
        char nm[48];
        snprintf(nm, sizeof nm, l < L ? "stories260K wq[%d]" : "stories260K wq[all]", l);
        shape_case s = {nm, l < L ? D : (int64_t)L * D, D};
        for (int dq = 0; dq < 2; dq++) run_cpu_case(c, wq + (l < L ? (size_t)l * D * D : 0), &s, QT_F32, dq, l == L);
    }
    free(wq);
}

/* ------------------------------------------------------------------ CPU test */

int qt_test_cpu(void) {
    qt_ctx *c = tu_ctx(QT_CPU);
    check_tables();
    worked_examples(c);
    for (int i = 0; i < NCASES; i++) {
        float *x = make_weights(case_kind[i], case_n(&cases[i]));
        for (int dq = 0; dq < 2; dq++) {
            run_cpu_case(c, x, &cases[i], QT_F32, dq, true);
            if (i < 4) { /* the other input dtypes see the same values rounded to them */
                run_cpu_case(c, x, &cases[i], QT_BF16, dq, false);
                run_cpu_case(c, x, &cases[i], QT_F16, dq, false);
                run_cpu_case(c, x, &cases[i], QT_F64, dq, false);
            }
        }
        if (case_kind[i] == 4) { /* the nested all-equal guard really fired */
            ref_q r;
            ref_quantize(x, case_n(&cases[i]), true, &r);
            TU_EXPECT(r.absmax2[0] == 0 && r.q8[0] == 127 && r.scale[0] == 0.5f && r.absmax2[1] == 0.25f,
                      "equal-scales case: absmax2 %g, code %d", r.absmax2[0], r.q8[0]);
            ref_free(&r);
        }
        free(x);
    }
    int64_t big = 4096 * 4096;
    double b1 = nf4_bits_per_param(big, true), b0 = nf4_bits_per_param(big, false);
    printf("  bits per parameter (4096x4096): %.5f with double quantization, %.5f without\n", b1, b0);
    TU_EXPECT(fabs(b1 - 4.127) < 5e-4 && b0 == 4.5, "bits per parameter %.5f / %.5f", b1, b0);
    int64_t n = case_n(&cases[9]), nb = (n + 63) / 64;
    TU_EXPECT(nf4_bytes(n, true) == (size_t)((n + 1) / 2 + nb + 4 * ((nb + 255) / 256)) &&
                  nf4_bytes(n, false) == (size_t)((n + 1) / 2 + 4 * nb), "nf4_bytes");
    bnb_import(c);
    nonfinite_error(c);
    real_weights_cpu(c);
    return 0;
}

/* ------------------------------------------------------------------ GPU test */

/* Quantize on both devices from the same dt values; codes, scales and every dequantized
 * output must be identical (bf16/f16: the rounding of the same float32). */
static void run_gpu_case(const float *x0, const shape_case *s, qt_dtype dt, bool dq) {
    qt_ctx *cc = tu_ctx(QT_CPU), *gc = tu_ctx(QT_CUDA);
    size_t cm = qt_arena_mark(&cc->data[QT_PERSIST]), gm = qt_arena_mark(&gc->data[QT_PERSIST]);
    char name[80];
    snprintf(name, sizeof name, "%s/%s/%s", s->name, qt_dtype_name(dt), dq ? "dq" : "nodq");
    qt_tensor *wc = tensor_of(cc, x0, s, dt), *wg = tensor_of(gc, x0, s, dt);
    nf4_tensor qc, qg, qd;
    qt_err e;
    TU_EXPECT(nf4_quantize(cc, QT_PERSIST, wc, dq, &qc, &e) == 0, "%s", e.msg);
    TU_EXPECT(nf4_quantize(gc, QT_PERSIST, wg, dq, &qg, &e) == 0, "%s", e.msg);
    nf4_alloc(&qd, &cc->data[QT_PERSIST], qg.ndim, qg.shape, dq);
    nf4_copy(&qd, &qg);
    int bad = cmp_bytes("gpu codes", qd.codes, qc.codes, (qc.n + 1) / 2, name);
    if (dq) {
        bad += cmp_bytes("gpu absmax_q", qd.absmax_q, qc.absmax_q, qc.nblocks, name);
        bad += cmp_floats("gpu absmax2", qd.absmax2, qc.absmax2, qc.nblocks2, name);
        bad += cmp_floats("gpu offset", &qd.offset, &qc.offset, 1, name);
    } else {
        bad += cmp_floats("gpu absmax", qd.absmax, qc.absmax, qc.nblocks, name);
    }
    /* dequantize on the GPU (both the GPU-made tensor and the CPU-made one uploaded) */
    nf4_tensor qu;
    nf4_alloc(&qu, &gc->data[QT_PERSIST], qc.ndim, qc.shape, dq);
    nf4_copy(&qu, &qc);
    qt_tensor *ref = qt_empty(cc, QT_PERSIST, QT_F32, 1, &wc->numel);
    nf4_dequantize(cc, &qc, ref);
    qt_dtype outs[3] = {QT_F32, QT_BF16, QT_F16};
    for (int k = 0; k < 3; k++) {
        qt_ctx_step_reset(gc);
        int64_t pad = wc->numel + 16;
        qt_tensor *big = qt_empty(gc, QT_STEP, outs[k], 1, &pad);
        qt_tensor *o = qt_empty(gc, QT_STEP, outs[k], 1, &wc->numel);
        qt_tensor skew = *o; /* an output that is not 16-byte aligned takes the byte-per-thread path */
        skew.data = (char *)big->data + qt_dtype_size(outs[k]);
        size_t es = qt_dtype_size(outs[k]);
        uint8_t *nan = malloc((size_t)wc->numel * es);
        memset(nan, 0xff, (size_t)wc->numel * es); /* NaN in every float dtype: unwritten shows */
        for (int v = 0; v < 3; v++) {
            qt_tensor *out = v == 2 ? &skew : o;
            qt_upload(out, nan, outs[k]);
            nf4_dequantize(gc, v == 1 ? &qu : &qg, out);
            uint8_t *got = malloc((size_t)wc->numel * es), *want = malloc((size_t)wc->numel * es);
            qt_download(out, got, outs[k]);
            qt_download(ref, want, outs[k]);
            if (memcmp(got, want, (size_t)wc->numel * es) != 0) {
                int64_t i = 0;
                while (memcmp(got + i * es, want + i * es, es) == 0) i++;
                TU_EXPECT(0, "%s: GPU dequant %s (%s) differs from the CPU at element %lld", name, qt_dtype_name(outs[k]),
                          v == 0 ? "gpu-quantized" : v == 1 ? "cpu-quantized" : "unaligned", (long long)i);
                bad++;
            }
            free(got), free(want);
        }
        free(nan);
    }
    printf("  cuda %-30s n=%-8lld codes, scales and f32/bf16/f16 dequant %s\n", name, (long long)qc.n,
           bad ? "DIFFER" : "identical to the CPU");
    qt_ctx_step_reset(gc);
    qt_arena_reset(&cc->data[QT_PERSIST], cm);
    qt_arena_reset(&gc->data[QT_PERSIST], gm);
}

int qt_test_cuda(void) {
    check_tables();
    qt_dtype dts[3] = {QT_F32, QT_BF16, QT_F16};
    for (int i = 0; i < NCASES; i++) {
        float *x = make_weights(case_kind[i], case_n(&cases[i]));
        for (int d = 0; d < 3; d++)
            for (int dq = 0; dq < 2; dq++) run_gpu_case(x, &cases[i], dts[d], dq);
        free(x);
    }
    shape_case big = {"normal 1031x1537", 1031, 1537}; /* many full 512-byte tiles and a tail */
    float *x = make_weights(0, case_n(&big));
    for (int dq = 0; dq < 2; dq++) run_gpu_case(x, &big, QT_BF16, dq);
    free(x);
    nonfinite_error(tu_ctx(QT_CUDA));
    int L, D;
    float *wq = stories_wq(&L, &D);
    if (wq) {
        shape_case s = {"stories260K wq[all]", (int64_t)L * D, D};
        for (int dq = 0; dq < 2; dq++) run_gpu_case(wq, &s, QT_F32, dq);
        free(wq);
    }
    return 0;
}
