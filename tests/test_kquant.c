/* GGUF quant types (quant/kquant.c): block layouts against decoders written here from the
 * spec's byte tables (shared/specs/gguf.md section 3, incl. its Q4_K scale-packing example),
 * quantize -> dequantize error bounds (per-element bounds where the reference quantizer
 * has one, RMSE against an ideal uniform quantizer for the searched K-quants) on Gaussian
 * and heavy-tailed rows with awkward row counts, row-length rejection, the importance
 * matrix lowering the importance-weighted error, and llama-quantize's type mix against
 * the layer lists the spec spells out. (Byte equality with ggml / the gguf package is
 * checked by tests/py/gguf_interop.py.) */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"
#include "quant/quant.h"
#include "testutil.h"

static float h2f(uint16_t h) { return qt_f16_to_f32(h); }
static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint8_t rbyte(void) { return (uint8_t)(qt_rng_next(tu_rng()) >> 24); }
/* a random finite fp16 of moderate size, either sign */
static uint16_t rand_h(double lo, double hi) {
    double v = lo + (hi - lo) * qt_rng_uniform(tu_rng());
    return qt_f32_to_f16((float)(qt_rng_uniform(tu_rng()) < 0.5 ? -v : v));
}

/* ------------------------------------------------------------------ independent decoders */

/* spec section 3: 6-bit sc_j / m_j from the 12 scale bytes */
static void spec_scale_min(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63, *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

static void spec_q4_K(const uint8_t *b, float *w) {
    float d = h2f(rd16(b)), dmin = h2f(rd16(b + 2));
    const uint8_t *sc = b + 4, *qs = b + 16;
    for (int i = 0; i < 256; i++) {
        int c = i / 64, l = i % 32, hi = (i % 64) >= 32, s, m;
        int q = hi ? qs[32 * c + l] >> 4 : qs[32 * c + l] & 15;
        spec_scale_min(sc, i / 32, &s, &m);
        w[i] = d * (float)s * (float)q - dmin * (float)m;
    }
}

static void spec_q5_K(const uint8_t *b, float *w) {
    float d = h2f(rd16(b)), dmin = h2f(rd16(b + 2));
    const uint8_t *sc = b + 4, *qh = b + 16, *qs = b + 48;
    for (int i = 0; i < 256; i++) {
        int c = i / 64, l = i % 32, hi = (i % 64) >= 32, s, m;
        int q = hi ? qs[32 * c + l] >> 4 : qs[32 * c + l] & 15;
        q |= ((qh[l] >> (2 * c + hi)) & 1) << 4;
        spec_scale_min(sc, i / 32, &s, &m);
        w[i] = d * (float)s * (float)q - dmin * (float)m;
    }
}

static void spec_q6_K(const uint8_t *b, float *w) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *scales = (const int8_t *)(b + 192);
    float d = h2f(rd16(b + 208));
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            const uint8_t *L = ql + 64 * h, *H = qh + 32 * h;
            int q[4] = {(L[l] & 15) | ((H[l] >> 0 & 3) << 4), (L[l + 32] & 15) | ((H[l] >> 2 & 3) << 4),
                        (L[l] >> 4) | ((H[l] >> 4 & 3) << 4), (L[l + 32] >> 4) | ((H[l] >> 6 & 3) << 4)};
            for (int k = 0; k < 4; k++) {
                int i = 128 * h + 32 * k + l;
                w[i] = d * (float)scales[i / 16] * (float)(q[k] - 32);
            }
        }
}

static void spec_q8_0(const uint8_t *b, float *w) {
    for (int j = 0; j < 32; j++) w[j] = (float)(int8_t)b[2 + j] * h2f(rd16(b));
}

/* ggml block_q5_0 / q5_1: d (, m), uint32 qh (bit j = 5th bit of weight j), qs like Q4_0 */
static void spec_q5(const uint8_t *b, float *w, bool has_min) {
    float d = h2f(rd16(b)), m = has_min ? h2f(rd16(b + 2)) : 0;
    const uint8_t *qh = b + (has_min ? 4 : 2), *qs = qh + 4;
    uint32_t h = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
    for (int j = 0; j < 32; j++) {
        int q = (j < 16 ? qs[j] & 15 : qs[j - 16] >> 4) | (int)((h >> j) & 1) << 4;
        w[j] = has_min ? (float)q * d + m : (float)(q - 16) * d;
    }
}

typedef void (*decoder)(const uint8_t *, float *);
static void spec_q5_0(const uint8_t *b, float *w) { spec_q5(b, w, false); }
static void spec_q5_1(const uint8_t *b, float *w) { spec_q5(b, w, true); }

static void test_tables(void) {
    static const struct { kq_type t; int blck, bytes; } spec[] = {
        {KQ_F32, 1, 4},     {KQ_F16, 1, 2},      {KQ_BF16, 1, 2},     {KQ_Q8_0, 32, 34},  {KQ_Q5_0, 32, 22},
        {KQ_Q5_1, 32, 24},  {KQ_Q4_K, 256, 144}, {KQ_Q5_K, 256, 176}, {KQ_Q6_K, 256, 210}};
    for (size_t i = 0; i < sizeof spec / sizeof spec[0]; i++) {
        int64_t blck;
        uint64_t bytes;
        TU_EXPECT(kq_supported(spec[i].t), "%s", kq_type_name(spec[i].t));
        TU_EXPECT(kq_block_elems(spec[i].t) == spec[i].blck && kq_block_bytes(spec[i].t) == (size_t)spec[i].bytes,
                  "%s sizes", kq_type_name(spec[i].t));
        TU_EXPECT(gguf_type_size((uint32_t)spec[i].t, &blck, &bytes) && blck == spec[i].blck &&
                      bytes == (uint64_t)spec[i].bytes && !strcmp(gguf_type_name((uint32_t)spec[i].t), kq_type_name(spec[i].t)),
                  "GGUF table disagrees on %s", kq_type_name(spec[i].t));
    }
    TU_EXPECT(!kq_supported(KQ_Q4_0) && !kq_supported(KQ_Q8_K), "unimplemented types must say so");
}

/* spec section 3's example: sc = [10,20,30,40,50,60,63,5], m = [1,2,3,4,33,44,55,62] */
static void test_q4k_example(void) {
    static const uint8_t bytes[12] = {0xCA, 0xD4, 0xDE, 0x28, 0x81, 0x82, 0xC3, 0xC4, 0x12, 0xCC, 0x7F, 0xE5};
    static const int sc[8] = {10, 20, 30, 40, 50, 60, 63, 5}, mn[8] = {1, 2, 3, 4, 33, 44, 55, 62};
    uint8_t b[144];
    for (int i = 0; i < 144; i++) b[i] = rbyte();
    uint16_t d = rand_h(0.01, 1), dmin = rand_h(0.01, 1);
    memcpy(b, &d, 2), memcpy(b + 2, &dmin, 2), memcpy(b + 4, bytes, 12);
    float got[256];
    qt_err e;
    TU_EXPECT(kq_dequantize(KQ_Q4_K, b, 1, 256, got, "ex", &e) == 0, "%s", e.msg);
    int bad = 0;
    for (int i = 0; i < 256; i++) {
        int q = (i % 64) >= 32 ? b[16 + 32 * (i / 64) + i % 32] >> 4 : b[16 + 32 * (i / 64) + i % 32] & 15;
        float want = h2f(d) * (float)sc[i / 32] * (float)q - h2f(dmin) * (float)mn[i / 32];
        bad += got[i] != want;
    }
    TU_EXPECT(bad == 0, "Q4_K spec example: %d of 256 values differ", bad);
}

/* random blocks (finite fp16 scales) decoded by kq_dequantize and by the spec decoder */
static void test_layout(kq_type t, decoder dec) {
    const int nb = 5, bs = (int)kq_block_bytes(t), be = kq_block_elems(t);
    uint8_t *b = malloc((size_t)(nb * bs));
    float *got = malloc(sizeof(float) * (size_t)(nb * be)), want[256];
    for (int i = 0; i < nb * bs; i++) b[i] = rbyte();
    for (int k = 0; k < nb; k++) {
        uint8_t *blk = b + k * bs;
        uint16_t h1 = rand_h(1e-3, 2), h2 = rand_h(1e-3, 2);
        if (t == KQ_Q6_K) memcpy(blk + 208, &h1, 2);
        else memcpy(blk, &h1, 2);
        if (t == KQ_Q4_K || t == KQ_Q5_K || t == KQ_Q5_1) memcpy(blk + 2, &h2, 2);
    }
    qt_err e;
    TU_EXPECT(kq_dequantize(t, b, 1, nb * be, got, "layout", &e) == 0, "%s", e.msg);
    int bad = 0;
    for (int k = 0; k < nb; k++) {
        dec(b + k * bs, want);
        for (int i = 0; i < be; i++) bad += !(got[k * be + i] == want[i]);
    }
    printf("  layout %-5s %d blocks: %d mismatches\n", kq_type_name(t), nb, bad);
    TU_EXPECT(bad == 0, "%s layout differs from the spec decoder in %d values", kq_type_name(t), bad);
    free(b);
    free(got);
}

/* ------------------------------------------------------------------ error bounds */

/* rows x n: Gaussian, or heavy-tailed like LLM weights with outlier features (2% of the
 * values from a 10x wider Gaussian; kurtosis ~ 40) */
static float *make_rows(int64_t rows, int64_t n, bool heavy) {
    float *x = malloc(sizeof(float) * (size_t)(rows * n));
    for (int64_t i = 0; i < rows * n; i++) {
        double g = qt_rng_normal(tu_rng());
        if (heavy && qt_rng_uniform(tu_rng()) < 0.02) g *= 10;
        x[i] = (float)(0.02 * g);
    }
    return x;
}

/* relative RMSE of an ideal uniform quantizer with `levels` levels and an exact float scale
 * per group of `g`: asymmetric over [min, max] (Q4_K / Q5_K's form), or symmetric, levels
 * -levels/2 .. levels/2 - 1 of step max|x| / (levels/2) (Q6_K's form). The K-quant searches
 * try to beat it while paying for quantized scales. */
static double ideal_rmse(const float *x, int64_t n, int g, int levels, bool symmetric) {
    double se = 0, ss = 0;
    for (int64_t s = 0; s < n; s += g) {
        float lo = x[s], hi = x[s], amax = 0;
        for (int i = 0; i < g; i++) lo = fminf(lo, x[s + i]), hi = fmaxf(hi, x[s + i]), amax = fmaxf(amax, fabsf(x[s + i]));
        double step = symmetric ? amax / (levels / 2) : (hi - lo) / (levels - 1), base = symmetric ? 0 : lo;
        for (int i = 0; i < g; i++) {
            double l = step > 0 ? round((x[s + i] - base) / step) : 0;
            if (symmetric) l = fmin(fmax(l, -levels / 2), levels / 2 - 1);
            double q = l * step + base;
            se += (q - x[s + i]) * (q - x[s + i]);
            ss += (double)x[s + i] * x[s + i];
        }
    }
    return sqrt(se / ss);
}

static double rel_rmse(const float *a, const float *b, int64_t n) {
    double se = 0, ss = 0;
    for (int64_t i = 0; i < n; i++) se += ((double)a[i] - b[i]) * ((double)a[i] - b[i]), ss += (double)b[i] * b[i];
    return sqrt(se / ss);
}

/* per-element bounds of the non-searching quantizers, block by block */
static int elem_bound_failures(kq_type t, const float *x, const float *y, int64_t n) {
    int bad = 0;
    for (int64_t s = 0; s < n; s += 32) {
        float amax = 0, lo = x[s], hi = x[s];
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[s + i])), lo = fminf(lo, x[s + i]), hi = fmaxf(hi, x[s + i]);
        double lim;
        if (t == KQ_Q8_0) lim = amax / 127.0 * (0.5 + 127.0 / 2048) * 1.0001;           /* half a step + fp16(d) */
        else if (t == KQ_Q5_0) lim = amax / 16.0 * (1.0 + 16.0 / 2048) * 1.0001;        /* the +max end clips a step */
        else lim = (hi - lo) / 31.0 * (0.5 + 31.0 / 2048) * 1.0001 + fabsf(lo) / 2048;  /* Q5_1: half a step + fp16 */
        for (int i = 0; i < 32; i++) bad += fabs((double)x[s + i] - y[s + i]) > lim;
    }
    return bad;
}

/* K-quants: whatever scales the search picked, each final code must be the nearest level of
 * its sub-block's grid (read back from the bytes with the spec decoder's rules). */
static int nearest_level_failures(kq_type t, const uint8_t *q, const float *x, const float *y, int64_t n) {
    int bad = 0;
    const size_t bs = kq_block_bytes(t);
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *b = q + (size_t)(i / 256) * bs;
        int j = (int)(i % 256), nmax, sc = 0, m = 0;
        double a, off;
        if (t == KQ_Q6_K) {
            a = (double)h2f(rd16(b + 208)) * (double)(int8_t)b[192 + j / 16], off = 32 * a, nmax = 63;
        } else {
            spec_scale_min(b + 4, j / 32, &sc, &m);
            a = (double)h2f(rd16(b)) * sc, off = (double)h2f(rd16(b + 2)) * m, nmax = t == KQ_Q4_K ? 15 : 31;
        }
        if (a == 0) continue; /* ggml keeps the search's codes there */
        double l = round((x[i] + off) / a);
        l = l < 0 ? 0 : l > nmax ? nmax : l;
        double best = fabs(a * l - off - x[i]);
        bad += fabs((double)y[i] - x[i]) > best + 1e-6 * fabs(a) + 1e-7 * fabs(x[i]);
    }
    return bad;
}

static void test_errors(void) {
    /* K-quant RMSE may exceed the ideal float-scale quantizer by this factor (6-bit scales) */
    static const struct { kq_type t; int group, levels; bool sym; } K[] = {
        {KQ_Q4_K, 32, 16, false}, {KQ_Q5_K, 32, 32, false}, {KQ_Q6_K, 16, 64, true}};
    const int64_t rows = 13;
    for (int heavy = 0; heavy < 2; heavy++) {
        const int64_t nk = 256 * 3, n32 = 32 * 7;
        float *xk = make_rows(rows, nk, heavy), *x32 = make_rows(rows, n32, heavy);
        /* a zero row and a row with one non-zero value: the degenerate branches */
        memset(xk, 0, sizeof(float) * (size_t)nk), memset(x32, 0, sizeof(float) * (size_t)n32);
        memset(xk + nk, 0, sizeof(float) * (size_t)nk), xk[nk + 77] = 0.5f;
        float *y = malloc(sizeof(float) * (size_t)(rows * nk));
        uint8_t *q = malloc(kq_row_bytes(KQ_Q8_0, nk) * (size_t)rows * 2);
        qt_err e;
        for (int k = 0; k < 3; k++) {
            int rc = kq_quantize(K[k].t, xk, rows, nk, NULL, q, "x", &e);
            rc |= kq_dequantize(K[k].t, q, rows, nk, y, "x", &e);
            TU_EXPECT(rc == 0, "%s", e.msg);
            bool zero_ok = true;
            for (int64_t i = 0; i < nk; i++) zero_ok &= y[i] == 0;
            double r = rel_rmse(y + 2 * nk, xk + 2 * nk, (rows - 2) * nk);
            double ideal = ideal_rmse(xk + 2 * nk, (rows - 2) * nk, K[k].group, K[k].levels, K[k].sym);
            double one = fabs((double)y[nk + 77] - 0.5);
            printf("  %-5s %-6s rel RMSE %.5f (ideal float-scale %.5f, ratio %.3f); lone value off by %.2g\n",
                   kq_type_name(K[k].t), heavy ? "heavy" : "normal", r, ideal, r / ideal, one);
            TU_EXPECT(r < 1.05 * ideal, "%s RMSE %.5f vs ideal %.5f", kq_type_name(K[k].t), r, ideal);
            int far = nearest_level_failures(K[k].t, q, xk, y, rows * nk);
            TU_EXPECT(far == 0, "%s: %d values are not the nearest level of their sub-block", kq_type_name(K[k].t), far);
            TU_EXPECT(zero_ok, "%s: a zero row must come back as zeros", kq_type_name(K[k].t));
            TU_EXPECT(one < 0.5 * 0.01, "%s: a lone 0.5 came back as %g", kq_type_name(K[k].t), (double)y[nk + 77]);
        }
        static const kq_type T32[] = {KQ_Q8_0, KQ_Q5_0, KQ_Q5_1};
        for (int k = 0; k < 3; k++) {
            int rc = kq_quantize(T32[k], x32, rows, n32, NULL, q, "x", &e);
            rc |= kq_dequantize(T32[k], q, rows, n32, y, "x", &e);
            TU_EXPECT(rc == 0, "%s", e.msg);
            int bad = elem_bound_failures(T32[k], x32, y, rows * n32);
            printf("  %-5s %-6s rel RMSE %.5f, %d elements beyond the per-element bound\n", kq_type_name(T32[k]),
                   heavy ? "heavy" : "normal", rel_rmse(y + n32, x32 + n32, (rows - 1) * n32), bad);
            TU_EXPECT(bad == 0, "%s: %d elements beyond the bound", kq_type_name(T32[k]), bad);
        }
        /* Q8_0 is idempotent: quantizing its own output gives the same bytes */
        size_t qb = kq_row_bytes(KQ_Q8_0, n32) * (size_t)rows;
        kq_quantize(KQ_Q8_0, x32, rows, n32, NULL, q, "x", &e);
        kq_dequantize(KQ_Q8_0, q, rows, n32, y, "x", &e);
        kq_quantize(KQ_Q8_0, y, rows, n32, NULL, q + qb, "x", &e);
        TU_EXPECT(!memcmp(q, q + qb, qb), "Q8_0 of Q8_0-dequantized values must be the same bytes");
        /* F16 / BF16 pass-through round to nearest even */
        int bad = 0;
        for (int k = 0; k < 2; k++) {
            kq_type t = k ? KQ_BF16 : KQ_F16;
            kq_quantize(t, x32, rows, n32, NULL, q, "x", &e);
            kq_dequantize(t, q, rows, n32, y, "x", &e);
            for (int64_t i = 0; i < rows * n32; i++)
                bad += y[i] != (k ? qt_bf16_to_f32(qt_f32_to_bf16(x32[i])) : h2f(qt_f32_to_f16(x32[i])));
        }
        TU_EXPECT(bad == 0, "F16/BF16 pass-through: %d values differ from round-to-nearest-even", bad);
        free(xk), free(x32), free(y), free(q);
    }
}

static void test_rejects(void) {
    qt_err e;
    float x[512] = {1};
    uint8_t q[1024];
    TU_EXPECT(kq_quantize(KQ_Q4_K, x, 2, 250, NULL, q, "blk.0.ffn_down.weight", &e) == -1 && strstr(e.msg, "256") &&
                  strstr(e.msg, "blk.0.ffn_down.weight"), "Q4_K row of 250: %s", e.msg);
    TU_EXPECT(kq_quantize(KQ_Q6_K, x, 1, 288, NULL, q, "t", &e) == -1, "Q6_K row of 288 accepted");
    TU_EXPECT(kq_quantize(KQ_Q8_0, x, 1, 48, NULL, q, "t", &e) == -1 && strstr(e.msg, "32"), "Q8_0 row of 48: %s", e.msg);
    TU_EXPECT(kq_quantize(KQ_Q5_0, x, 1, 0, NULL, q, "t", &e) == -1, "empty rows accepted");
    TU_EXPECT(kq_dequantize(KQ_Q5_K, q, 1, 100, x, "t", &e) == -1, "Q5_K dequantize of a 100 row accepted");
    TU_EXPECT(kq_quantize(KQ_Q4_0, x, 1, 32, NULL, q, "t", &e) == -1, "unimplemented Q4_0 accepted");
    float y[256];
    for (int i = 0; i < 256; i++) y[i] = (float)i / 256;
    y[131] = NAN;
    TU_EXPECT(kq_quantize(KQ_Q4_K, y, 1, 256, NULL, q, "t", &e) == -1 && strstr(e.msg, "131"), "NaN: %s", e.msg);
    y[131] = 0;
    float im[256];
    for (int i = 0; i < 256; i++) im[i] = 1;
    im[7] = -1;
    TU_EXPECT(kq_quantize(KQ_Q4_K, y, 1, 256, im, q, "t", &e) == -1 && strstr(e.msg, "column 7"), "imatrix: %s", e.msg);
}

/* ------------------------------------------------------------------ importance matrix */

static double weighted_err(kq_type t, const float *x, int64_t rows, int64_t n, const float *imp, const float *use) {
    uint8_t *q = malloc(kq_row_bytes(t, n) * (size_t)rows);
    float *y = malloc(sizeof(float) * (size_t)(rows * n));
    qt_err e;
    TU_EXPECT(kq_quantize(t, x, rows, n, use, q, "imp", &e) == 0 && kq_dequantize(t, q, rows, n, y, "imp", &e) == 0,
              "%s", e.msg);
    double s = 0;
    for (int64_t i = 0; i < rows * n; i++) s += imp[i % n] * ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
    free(q), free(y);
    return s;
}

static void test_imatrix(void) {
    const int64_t rows = 24, n = 512;
    float *x = make_rows(rows, n, false), imp[512];
    for (int64_t j = 0; j < n; j++) imp[j] = (float)exp(log(1e-3) + qt_rng_uniform(tu_rng()) * log(1e6)); /* 1e-3..1e3 */
    static const kq_type T[] = {KQ_Q4_K, KQ_Q5_K, KQ_Q6_K, KQ_Q5_0, KQ_Q5_1};
    for (int k = 0; k < 5; k++) {
        double plain = weighted_err(T[k], x, rows, n, imp, NULL), with = weighted_err(T[k], x, rows, n, imp, imp);
        printf("  imatrix %-5s weighted error %.4g -> %.4g (x%.3f)\n", kq_type_name(T[k]), plain, with, with / plain);
        TU_EXPECT(with < 0.9 * plain, "%s: importance did not lower the weighted error (%.4g vs %.4g)",
                  kq_type_name(T[k]), with, plain);
    }
    /* Q8_0 ignores it, as ggml does */
    uint8_t a[34 * 16], b[34 * 16];
    qt_err e;
    kq_quantize(KQ_Q8_0, x, 1, n, NULL, a, "q8", &e);
    kq_quantize(KQ_Q8_0, x, 1, n, imp, b, "q8", &e);
    TU_EXPECT(!memcmp(a, b, sizeof a), "Q8_0 must not depend on the importance");
    free(x);
}

/* ------------------------------------------------------------------ type mix */

static void test_mix(void) {
    /* spec section 6: layers whose attn_v / ffn_down get Q6_K in Q4_K_M */
    static const int l32[] = {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31};
    static const int l16[] = {0, 1, 4, 7, 10, 13, 14, 15};
    static const int l28[] = {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27};
    static const struct { int n; const int *l; int count; } cases[] = {{32, l32, 16}, {16, l16, 8}, {28, l28, 14}};
    int64_t ne[2] = {4096, 4096};
    char name[64];
    for (int c = 0; c < 3; c++) {
        kq_model_info mi = {.n_layer = cases[c].n, .has_output = true};
        int bad = 0;
        for (int i = 0; i < cases[c].n; i++) {
            bool want = false;
            for (int k = 0; k < cases[c].count; k++) want |= cases[c].l[k] == i;
            snprintf(name, sizeof name, "blk.%d.attn_v.weight", i);
            bad += kq_tensor_type(KQ_FTYPE_Q4_K_M, name, 2, ne, &mi) != (want ? KQ_Q6_K : KQ_Q4_K);
            snprintf(name, sizeof name, "blk.%d.ffn_down.weight", i);
            bad += kq_tensor_type(KQ_FTYPE_Q5_K_M, name, 2, ne, &mi) != (want ? KQ_Q6_K : KQ_Q5_K);
            snprintf(name, sizeof name, "blk.%d.ffn_up.weight", i);
            bad += kq_tensor_type(KQ_FTYPE_Q4_K_M, name, 2, ne, &mi) != KQ_Q4_K;
        }
        TU_EXPECT(bad == 0, "n_layer %d: %d tensors of the wrong type", cases[c].n, bad);
    }
    /* 70B: 40 of 80 attn_v at Q6_K, the other 40 bumped to Q5_K; ffn_down unaffected */
    kq_model_info m70 = {.n_layer = 80, .has_output = true, .is_70b = true};
    int n6 = 0, n5 = 0, nd4 = 0;
    for (int i = 0; i < 80; i++) {
        snprintf(name, sizeof name, "blk.%d.attn_v.weight", i);
        kq_type t = kq_tensor_type(KQ_FTYPE_Q4_K_M, name, 2, ne, &m70);
        n6 += t == KQ_Q6_K, n5 += t == KQ_Q5_K;
        snprintf(name, sizeof name, "blk.%d.ffn_down.weight", i);
        nd4 += kq_tensor_type(KQ_FTYPE_Q4_K_M, name, 2, ne, &m70) == KQ_Q4_K;
    }
    TU_EXPECT(n6 == 40 && n5 == 40 && nd4 == 40, "70B: attn_v %d Q6_K + %d Q5_K, ffn_down %d Q4_K", n6, n5, nd4);
    kq_model_info mi = {.n_layer = 32, .has_output = true}, tied = {.n_layer = 32, .has_output = false};
    int64_t v[2] = {4096, 128256}, h64[2] = {64, 320}, h48[2] = {48, 48}, one[2] = {4096, 1};
    TU_EXPECT(kq_tensor_type(KQ_FTYPE_Q4_K_M, "output.weight", 2, v, &mi) == KQ_Q6_K, "output");
    TU_EXPECT(kq_tensor_type(KQ_FTYPE_Q4_K_M, "token_embd.weight", 2, v, &mi) == KQ_Q4_K, "token_embd");
    TU_EXPECT(kq_tensor_type(KQ_FTYPE_Q4_K_M, "token_embd.weight", 2, v, &tied) == KQ_Q6_K, "tied token_embd");
    TU_EXPECT(kq_tensor_type(KQ_FTYPE_Q8_0, "output.weight", 2, v, &mi) == KQ_Q8_0, "Q8_0 output");
    TU_EXPECT(kq_tensor_type(KQ_FTYPE_Q6_K, "blk.3.attn_q.weight", 2, v, &mi) == KQ_Q6_K, "Q6_K file");
    TU_EXPECT(kq_tensor_type(KQ_FTYPE_Q4_K_M, "blk.3.attn_q.weight", 2, h64, &mi) == KQ_Q5_0, "fallback Q5_0");
    TU_EXPECT(kq_tensor_type(KQ_FTYPE_Q5_K_M, "blk.3.attn_q.weight", 2, h64, &mi) == KQ_Q5_1, "fallback Q5_1");
    TU_EXPECT(kq_tensor_type(KQ_FTYPE_Q4_K_M, "output.weight", 2, h64, &mi) == KQ_Q8_0, "output fallback Q8_0");
    TU_EXPECT(kq_tensor_type(KQ_FTYPE_Q4_K_M, "blk.0.ffn_down.weight", 2, h64, &mi) == KQ_Q8_0, "Q6_K -> Q8_0");
    TU_EXPECT(kq_tensor_type(KQ_FTYPE_Q4_K_M, "blk.3.attn_q.weight", 2, h48, &mi) == KQ_F16, "fallback F16");
    TU_EXPECT(kq_tensor_type(KQ_FTYPE_Q8_0, "blk.3.attn_q.weight", 2, h48, &mi) == KQ_F16, "Q8_0 fallback F16");
    TU_EXPECT(kq_tensor_type(KQ_FTYPE_Q4_K_M, "blk.3.attn_norm.weight", 1, one, &mi) == KQ_F32, "norm");
    TU_EXPECT(kq_tensor_type(KQ_FTYPE_Q4_K_M, "blk.3.attn_q.bias", 1, one, &mi) == KQ_F32, "bias");
    TU_EXPECT(kq_tensor_type(KQ_FTYPE_Q4_K_M, "rope_freqs.weight", 1, one, &mi) == KQ_F32, "rope_freqs");
    TU_EXPECT(kq_tensor_type(KQ_FTYPE_F16, "blk.3.attn_q.weight", 2, v, &mi) == KQ_F16, "F16 file");
    TU_EXPECT(kq_tensor_type(KQ_FTYPE_F16, "output_norm.weight", 1, one, &mi) == KQ_F32, "F16 file norm");
    TU_EXPECT(kq_tensor_type(KQ_FTYPE_BF16, "output.weight", 2, v, &mi) == KQ_BF16, "BF16 file");
    kq_ftype f;
    qt_err e;
    TU_EXPECT(kq_ftype_parse("q4_k_m", &f, &e) == 0 && f == KQ_FTYPE_Q4_K_M && f == 15, "parse q4_k_m");
    TU_EXPECT(kq_ftype_parse("Q5_K_M", &f, &e) == 0 && f == 17, "parse Q5_K_M");
    TU_EXPECT(kq_ftype_parse("q3_k", &f, &e) == -1 && strstr(e.msg, "Q4_K_M"), "parse q3_k: %s", e.msg);
}

int qt_test_cpu(void) {
    test_tables();
    test_q4k_example();
    test_layout(KQ_Q4_K, spec_q4_K);
    test_layout(KQ_Q5_K, spec_q5_K);
    test_layout(KQ_Q6_K, spec_q6_K);
    test_layout(KQ_Q8_0, spec_q8_0);
    test_layout(KQ_Q5_0, spec_q5_0);
    test_layout(KQ_Q5_1, spec_q5_1);
    test_errors();
    test_rejects();
    test_imatrix();
    test_mix();
    return 0;
}
