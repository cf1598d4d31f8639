/* Failure reporting, dtypes and conversions, the random generator. */
#include "autograd.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void qt_fail(const char *file, int line, const char *expr, const char *fmt, ...) {
    fprintf(stderr, "%s:%d: check failed: %s: ", file, line, expr);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

void qt_die(const char *fmt, ...) {
    fputs("qtrain: error: ", stderr);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

int qt_errf(qt_err *e, const char *fmt, ...) {
    if (!e) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return -1;
}

static const struct { const char *name; size_t size; bool is_float; } dtypes[QT_NDTYPES] = {
    [QT_F32] = {"f32", 4, true},  [QT_BF16] = {"bf16", 2, true}, [QT_F16] = {"f16", 2, true},
    [QT_F64] = {"f64", 8, true},  [QT_I32] = {"i32", 4, false},  [QT_U8] = {"u8", 1, false},
};

size_t qt_dtype_size(qt_dtype dt) {
    QT_CHECK(dt >= 0 && dt < QT_NDTYPES, "bad dtype %d", (int)dt);
    return dtypes[dt].size;
}
const char *qt_dtype_name(qt_dtype dt) { return dt >= 0 && dt < QT_NDTYPES ? dtypes[dt].name : "?"; }
bool qt_dtype_is_float(qt_dtype dt) { return dt >= 0 && dt < QT_NDTYPES && dtypes[dt].is_float; }
const char *qt_device_name(qt_device d) { return d == QT_CUDA ? "cuda" : "cpu"; }

static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

uint16_t qt_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}
float qt_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

/* IEEE half: round to nearest even, with subnormals, overflow to inf. */
uint16_t qt_f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u;                 /* NaN */
    if (a >= 0x477ff000u) return sign | 0x7c00u;                /* overflow (incl. inf) */
    if (a < 0x38800000u) {                                      /* subnormal or zero */
        if (a < 0x33000000u) return sign;                       /* below half the smallest */
        uint32_t mant = (a & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(a >> 23);                       /* 14..24 */
        uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return sign | (uint16_t)q;
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - 0x38000000u;   /* rebias 127 -> 15 */
    return sign | (uint16_t)(r >> 13);
}

float qt_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        float v = ldexpf((float)m, -24);
        return sign ? -v : v;
    }
    if (e == 31) return bits_f32(sign | 0x7f800000u | (m << 13));
    return bits_f32(sign | ((e + 112) << 23) | (m << 13));
}

/* ---- xoshiro256** seeded by splitmix64 */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void qt_rng_seed(qt_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t qt_rng_next(qt_rng *r) {
    uint64_t *s = r->s, out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t; s[3] = rotl(s[3], 45);
    return out;
}

double qt_rng_uniform(qt_rng *r) { return (double)(qt_rng_next(r) >> 11) * 0x1.0p-53; }

double qt_rng_normal(qt_rng *r) {
    double u1 = qt_rng_uniform(r), u2 = qt_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
