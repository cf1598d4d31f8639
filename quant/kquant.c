/* GGUF quant types: ggml's block formats and its reference quantizers, written from
 * shared/specs/gguf.md sections 2-4 (block layouts, nearest_int, make_qx_quants,
 * make_qkx2/qkx3_quants, make_qp_quants) and checked against ggml-quants.c. Bytes are
 * those llama-quantize writes for the same float32 input: the search loops below keep
 * ggml's float32 operation order (sequential sums, no reassociation), so no FMA
 * contraction may happen here (baseline x86-64 has none; see the note in quant.h).
 *
 * Two quantizers per type, as ggml has: the reference one (no importance) and the
 * importance-weighted `impl` one, which llama-quantize runs only when an imatrix entry
 * exists for the tensor. Q8_0 ignores the importance, as ggml does. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "quant.h"

#define QK_K 256
#define QK 32 /* Q8_0, Q5_0, Q5_1 */
#define GROUP_MAX_EPS 1e-15f
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* ------------------------------------------------------------------ block structs */

typedef struct { uint16_t d; int8_t qs[QK]; } blk_q8_0;
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[QK / 2]; } blk_q5_0;
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[QK / 2]; } blk_q5_1;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[QK_K / 2]; } blk_q4_K;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; } blk_q5_K;
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; uint16_t d; } blk_q6_K;

_Static_assert(sizeof(blk_q8_0) == 34, "Q8_0 block");
_Static_assert(sizeof(blk_q5_0) == 22, "Q5_0 block");
_Static_assert(sizeof(blk_q5_1) == 24, "Q5_1 block");
_Static_assert(sizeof(blk_q4_K) == 144, "Q4_K block");
_Static_assert(sizeof(blk_q5_K) == 176, "Q5_K block");
_Static_assert(sizeof(blk_q6_K) == 210, "Q6_K block");

static float h2f(uint16_t h) { return qt_f16_to_f32(h); }
static uint16_t f2h(float f) { return qt_f32_to_f16(f); }

/* ------------------------------------------------------------------ type table */

typedef struct { const char *name; int blck; size_t bytes; bool impl; } type_row;

static type_row type_info(kq_type t) {
    switch (t) {
    case KQ_F32: return (type_row){"F32", 1, 4, true};
    case KQ_F16: return (type_row){"F16", 1, 2, true};
    case KQ_Q4_0: return (type_row){"Q4_0", 32, 18, false};
    case KQ_Q4_1: return (type_row){"Q4_1", 32, 20, false};
    case KQ_Q5_0: return (type_row){"Q5_0", 32, 22, true};
    case KQ_Q5_1: return (type_row){"Q5_1", 32, 24, true};
    case KQ_Q8_0: return (type_row){"Q8_0", 32, 34, true};
    case KQ_Q2_K: return (type_row){"Q2_K", 256, 84, false};
    case KQ_Q3_K: return (type_row){"Q3_K", 256, 110, false};
    case KQ_Q4_K: return (type_row){"Q4_K", 256, 144, true};
    case KQ_Q5_K: return (type_row){"Q5_K", 256, 176, true};
    case KQ_Q6_K: return (type_row){"Q6_K", 256, 210, true};
    case KQ_Q8_K: return (type_row){"Q8_K", 256, 292, false};
    case KQ_BF16: return (type_row){"BF16", 1, 2, true};
    }
    return (type_row){NULL, 0, 0, false};
}

const char *kq_type_name(kq_type t) {
    const char *n = type_info(t).name;
    return n ? n : "?";
}
bool kq_supported(kq_type t) { return type_info(t).impl; }
int kq_block_elems(kq_type t) { return type_info(t).blck; }
size_t kq_block_bytes(kq_type t) { return type_info(t).bytes; }

size_t kq_row_bytes(kq_type t, int64_t n_per_row) {
    type_row r = type_info(t);
    QT_CHECK(r.blck > 0 && n_per_row % r.blck == 0, "row of %lld is not whole %s blocks", (long long)n_per_row,
             kq_type_name(t));
    return (size_t)(n_per_row / r.blck) * r.bytes;
}

int kq_check_row(kq_type t, int64_t n_per_row, const char *what, qt_err *e) {
    type_row r = type_info(t);
    if (!r.impl) return qt_errf(e, "%s: quant type %s is not implemented by qtrain", what, kq_type_name(t));
    if (n_per_row <= 0 || n_per_row % r.blck != 0)
        return qt_errf(e, "%s: rows of %lld values cannot be stored as %s, whose blocks hold %d values; "
                          "pick a type whose block size divides the row (kq_tensor_type falls back for you)",
                       what, (long long)n_per_row, r.name, r.blck);
    return 0;
}

/* ------------------------------------------------------------------ ggml's helpers */

/* Round to nearest, ties to even, through the float32 adder (valid for |f| <= 4194303). */
static inline int nearest_int(float f) {
    float v = f + 12582912.f;
    int i;
    memcpy(&i, &v, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

/* Symmetric levels L in [0, 2 nmax) with x ≈ scale (L - nmax), scale searched over 19
 * candidates maximizing (Σ w x l)² / Σ w l² (rmse_type 1: w = qw, or x² without). */
static float make_qx_quants(int n, int nmax, const float *x, int8_t *L, const float *qw) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < GROUP_MAX_EPS) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * x[i]);
        l = MAX(-nmax, MIN(nmax - 1, l));
        L[i] = (int8_t)(l + nmax);
        float w = qw ? qw[i] : x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * x[i]);
            l = MAX(-nmax, MIN(nmax - 1, l));
            float w = qw ? qw[i] : x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; ++i) {
                int l = nearest_int(iscale * x[i]);
                L[i] = (int8_t)(nmax + MAX(-nmax, MIN(nmax - 1, l)));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Level of v = iscale (x - min) in [0, nmax]; ggml's guard against an inf/nan/huge v. */
static inline int level(float v, int nmax) { return v > 0 ? nearest_int(MIN(v, (float)nmax)) : 0; }

/* Asymmetric levels L in [0, nmax] with x ≈ scale L - the_min: a scan over nstep+1 trial
 * inverse scales, each followed by a weighted least-squares fit of scale and min (min <= 0).
 * qkx2 (reference path) needs weights; qkx3 (imatrix path) defaults them to x². Note that
 * `min` moves when a trial wins, and later trials use the moved value: ggml does that. */
static float make_qkx(int n, int nmax, const float *x, const float *weights, uint8_t *L, float *the_min,
                      uint8_t *Laux, float rmin, float rdelta, int nstep, bool qkx3) {
    float min = x[0], max = x[0];
    float sum_w = weights ? weights[0] : x[0] * x[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float w = weights ? weights[i] : x[i] * x[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (qkx3 ? max <= min : max == min) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best = 0;
    for (int i = 0; i < n; ++i) {
        L[i] = (uint8_t)level(iscale * (x[i] - min), nmax);
        float diff = scale * L[i] + min - x[i];
        float w = weights ? weights[i] : x[i] * x[i];
        best += w * (diff * diff);
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = level(iscale * (x[i] - min), nmax);
            Laux[i] = (uint8_t)l;
            float w = weights ? weights[i] : x[i] * x[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float err = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                float w = weights ? weights[i] : x[i] * x[i];
                err += w * (diff * diff);
            }
            if (err < best) {
                memcpy(L, Laux, (size_t)n);
                best = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* Non-negative x (the 8 sub-block scales or mins) to levels in [0, nmax], weights w:
 * a scale scan, then up to 5 passes moving single levels while the fit improves. */
static float make_qp_quants(int n, int nmax, const float *x, uint8_t *L, const float *w) {
    float max = 0;
    for (int i = 0; i < n; ++i) max = MAX(max, x[i]);
    if (max < GROUP_MAX_EPS) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = nmax / max;
    for (int i = 0; i < n; ++i) L[i] = (uint8_t)nearest_int(iscale * x[i]);
    float scale = 1 / iscale;
    float best_mse = 0;
    for (int i = 0; i < n; ++i) {
        float diff = x[i] - scale * L[i];
        best_mse += w[i] * diff * diff;
    }
    for (int is = -4; is <= 4; ++is) {
        if (is == 0) continue;
        float iscale_is = (0.1f * is + nmax) / max;
        float scale_is = 1 / iscale_is;
        float mse = 0;
        for (int i = 0; i < n; ++i) {
            int l = MIN(nmax, nearest_int(iscale_is * x[i]));
            float diff = x[i] - scale_is * l;
            mse += w[i] * diff * diff;
        }
        if (mse < best_mse) {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = MIN(nmax, nearest_int(iscale * x[i]));
        L[i] = (uint8_t)l;
        sumlx += w[i] * x[i] * l;
        suml2 += w[i] * l * l;
    }
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; ++i) {
            float slx = sumlx - w[i] * x[i] * L[i];
            float sl2 = suml2 - w[i] * L[i] * L[i];
            if (slx > 0 && sl2 > 0) {
                int new_l = MIN(nmax, nearest_int(x[i] * sl2 / slx));
                if (new_l != L[i]) {
                    slx += w[i] * x[i] * new_l;
                    sl2 += w[i] * new_l * new_l;
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (uint8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        ++n_changed;
                    }
                }
            }
        }
        if (!n_changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* ------------------------------------------------------------------ Q8_0, Q5_0, Q5_1 */

static void quant_q8_0(const float *x, blk_q8_0 *y, int64_t n) {
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        float amax = 0;
        for (int j = 0; j < QK; j++) amax = MAX(amax, fabsf(x[j]));
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f2h(d);
        for (int j = 0; j < QK; ++j) y[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

/* 5-bit codes q[0..31] into qs (element j low nibble, j+16 high) and the qh bit mask. */
static void pack_q5(const uint8_t *q, uint8_t *qs, uint8_t *qh4) {
    uint32_t qh = 0;
    for (int j = 0; j < QK / 2; ++j) {
        qs[j] = (uint8_t)((q[j] & 0x0F) | ((q[j + QK / 2] & 0x0F) << 4));
        qh |= ((q[j] & 0x10u) >> 4) << j;
        qh |= ((q[j + QK / 2] & 0x10u) >> 4) << (j + QK / 2);
    }
    memcpy(qh4, &qh, 4);
}

static float row_sigma2(const float *x, int64_t n) {
    float s = 0;
    for (int64_t j = 0; j < n; ++j) s += x[j] * x[j];
    return s / n;
}

static void quant_q5_0_row(const float *x, blk_q5_0 *y, int64_t n, const float *qw) {
    uint8_t q[QK];
    float sigma2 = qw ? row_sigma2(x, n) : 0;
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        if (!qw) {
            float amax = 0, max = 0;
            for (int j = 0; j < QK; j++)
                if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
            const float d = max / -16;
            const float id = d ? 1.0f / d : 0.0f;
            y[i].d = f2h(d);
            for (int j = 0; j < QK; ++j) q[j] = (uint8_t)MIN(31, (int8_t)(x[j] * id + 16.5f));
        } else {
            float w[QK];
            const float *qb = qw + i * QK;
            for (int j = 0; j < QK; ++j) w[j] = qb[j] * sqrtf(sigma2 + x[j] * x[j]);
            int8_t L[QK];
            y[i].d = f2h(make_qx_quants(QK, 16, x, L, w));
            for (int j = 0; j < QK; ++j) q[j] = (uint8_t)L[j];
        }
        pack_q5(q, y[i].qs, y[i].qh);
    }
}

static void quant_q5_1_row(const float *x, blk_q5_1 *y, int64_t n, const float *qw) {
    uint8_t q[QK], Laux[QK];
    float sigma2 = qw ? row_sigma2(x, n) : 0;
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        if (!qw) {
            float min = FLT_MAX, max = -FLT_MAX;
            for (int j = 0; j < QK; j++) {
                if (x[j] < min) min = x[j];
                if (x[j] > max) max = x[j];
            }
            const float d = (max - min) / 31;
            const float id = d ? 1.0f / d : 0.0f;
            y[i].d = f2h(d);
            y[i].m = f2h(min);
            for (int j = 0; j < QK; ++j) q[j] = (uint8_t)((x[j] - min) * id + 0.5f);
        } else {
            float w[QK], min;
            const float *qb = qw + i * QK;
            for (int j = 0; j < QK; ++j) w[j] = qb[j] * sqrtf(sigma2 + x[j] * x[j]);
            float d = make_qkx(QK, 31, x, w, q, &min, Laux, -0.9f, 0.05f, 36, true);
            y[i].d = f2h(d);
            y[i].m = f2h(-min);
        }
        pack_q5(q, y[i].qs, y[i].qh);
    }
}

/* ------------------------------------------------------------------ Q4_K and Q5_K */

/* 6-bit sub-block scale/min j of a 12-byte K-quant scales array (spec section 3). */
static inline void get_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
    }
}

static void put_scale_min_k4(const uint8_t *ls, const uint8_t *lm, uint8_t *s) {
    memset(s, 0, 12);
    for (int j = 0; j < 8; ++j) {
        if (j < 4) {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (uint8_t)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
            s[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
            s[j - 0] |= (uint8_t)((lm[j] >> 4) << 6);
        }
    }
}

/* One 256-value super-block of Q4_K (nmax 15) or Q5_K (nmax 31): sub-block scales/mins,
 * their 6-bit codes in scales[12], d/dmin, and the final levels L[256] recomputed from the
 * stored (rounded) scales. qw: importance of these 256 columns, or NULL. */
static void kquant_superblock(const float *x, int nmax, const float *qw, uint16_t *d_out, uint16_t *dmin_out,
                              uint8_t *scales12, uint8_t *L) {
    uint8_t Laux[32], Ls[8], Lm[8];
    float weights[32], mins[8], scales[8], sw[8];
    if (!qw) {
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < 8; ++j) {
            float sum_x2 = 0;
            for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
            float av_x = sqrtf(sum_x2 / 32);
            for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(x[32 * j + l]);
            scales[j] = nmax == 15 ? make_qkx(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -1.f, 0.1f, 20, false)
                                   : make_qkx(32, 31, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.5f, 0.1f, 15, false);
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
        float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
        for (int j = 0; j < 8; ++j) {
            uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
            uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
            Ls[j] = MIN(63, ls);
            Lm[j] = MIN(63, lm);
        }
        *d_out = f2h(max_scale / 63.f);
        *dmin_out = f2h(max_min / 63.f);
    } else {
        float sum_x2 = 0;
        for (int l = 0; l < QK_K; ++l) sum_x2 += x[l] * x[l];
        float sigma2 = 2 * sum_x2 / QK_K;
        for (int j = 0; j < 8; ++j) {
            for (int l = 0; l < 32; ++l) weights[l] = qw[32 * j + l] * sqrtf(sigma2 + x[32 * j + l] * x[32 * j + l]);
            float sumw = 0;
            for (int l = 0; l < 32; ++l) sumw += weights[l];
            sw[j] = sumw;
            scales[j] = make_qkx(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.9f, 0.05f, 36, true);
        }
        float d_block = make_qp_quants(8, 63, scales, Ls, sw);
        float m_block = make_qp_quants(8, 63, mins, Lm, sw);
        for (int j = 0; j < 8; ++j) {
            Ls[j] = MIN(63, Ls[j]);
            Lm[j] = MIN(63, Lm[j]);
        }
        *d_out = f2h(d_block);
        *dmin_out = f2h(m_block);
    }
    put_scale_min_k4(Ls, Lm, scales12);
    for (int j = 0; j < 8; ++j) {
        uint8_t sc, m;
        get_scale_min_k4(j, scales12, &sc, &m);
        const float d = h2f(*d_out) * sc;
        if (!d) continue;
        const float dm = h2f(*dmin_out) * m;
        for (int ii = 0; ii < 32; ++ii) {
            int l = nearest_int((x[32 * j + ii] + dm) / d);
            L[32 * j + ii] = (uint8_t)MAX(0, MIN(nmax, l));
        }
    }
}

static void quant_q4_K_row(const float *x, blk_q4_K *y, int64_t n, const float *qw) {
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        kquant_superblock(x, 15, qw ? qw + i * QK_K : NULL, &y[i].d, &y[i].dmin, y[i].scales, L);
        uint8_t *q = y[i].qs;
        for (int j = 0; j < QK_K; j += 64, q += 32)
            for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
    }
}

static void quant_q5_K_row(const float *x, blk_q5_K *y, int64_t n, const float *qw) {
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        kquant_superblock(x, 31, qw ? qw + i * QK_K : NULL, &y[i].d, &y[i].dmin, y[i].scales, L);
        uint8_t *qh = y[i].qh, *ql = y[i].qs;
        memset(qh, 0, QK_K / 8);
        uint8_t m1 = 1, m2 = 2;
        for (int n0 = 0; n0 < QK_K; n0 += 64, ql += 32) {
            for (int j = 0; j < 32; ++j) {
                int l1 = L[n0 + j], l2 = L[n0 + j + 32];
                if (l1 > 15) { l1 -= 16; qh[j] |= m1; }
                if (l2 > 15) { l2 -= 16; qh[j] |= m2; }
                ql[j] = (uint8_t)(l1 | (l2 << 4));
            }
            m1 <<= 2;
            m2 <<= 2;
        }
    }
}

/* ------------------------------------------------------------------ Q6_K */

static void quant_q6_K_row(const float *x, blk_q6_K *y, int64_t n, const float *qw) {
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        float max_scale = 0, max_abs_scale = 0;
        for (int ib = 0; ib < QK_K / 16; ++ib) {
            const float scale = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib, qw ? qw + i * QK_K + 16 * ib : NULL);
            scales[ib] = scale;
            if (fabsf(scale) > max_abs_scale) {
                max_abs_scale = fabsf(scale);
                max_scale = scale;
            }
        }
        if (max_abs_scale < GROUP_MAX_EPS) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        float iscale = -128.f / max_scale;
        y[i].d = f2h(1 / iscale);
        for (int ib = 0; ib < QK_K / 16; ++ib) y[i].scales[ib] = (int8_t)MIN(127, nearest_int(iscale * scales[ib]));
        for (int j = 0; j < QK_K / 16; ++j) {
            float d = h2f(y[i].d) * y[i].scales[j];
            if (!d) continue;
            for (int ii = 0; ii < 16; ++ii) {
                int l = nearest_int(x[16 * j + ii] / d);
                L[16 * j + ii] = (int8_t)(MAX(-32, MIN(31, l)) + 32);
            }
        }
        uint8_t *ql = y[i].ql, *qh = y[i].qh;
        for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
            for (int l = 0; l < 32; ++l) {
                const uint8_t q1 = L[j + l + 0] & 0xF, q2 = L[j + l + 32] & 0xF;
                const uint8_t q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
                ql[l + 0] = (uint8_t)(q1 | (q3 << 4));
                ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
                qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                                  ((L[j + l + 96] >> 4) << 6));
            }
        }
    }
}

/* ------------------------------------------------------------------ dequantization */

static void dequant_row(kq_type t, const void *src, float *y, int64_t n) {
    switch (t) {
    case KQ_F32: memcpy(y, src, (size_t)n * 4); break;
    case KQ_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, (const uint8_t *)src + 2 * i, 2);
            y[i] = h2f(h);
        }
        break;
    case KQ_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, (const uint8_t *)src + 2 * i, 2);
            y[i] = qt_bf16_to_f32(h);
        }
        break;
    case KQ_Q8_0: {
        const blk_q8_0 *b = src;
        for (int64_t i = 0; i < n / QK; i++)
            for (int j = 0; j < QK; j++) y[i * QK + j] = b[i].qs[j] * h2f(b[i].d);
        break;
    }
    case KQ_Q5_0:
    case KQ_Q5_1: {
        for (int64_t i = 0; i < n / QK; i++) {
            const uint8_t *qs, *qh4;
            float d, m = 0;
            int off = 0;
            if (t == KQ_Q5_0) {
                const blk_q5_0 *b = (const blk_q5_0 *)src + i;
                qs = b->qs, qh4 = b->qh, d = h2f(b->d), off = 16;
            } else {
                const blk_q5_1 *b = (const blk_q5_1 *)src + i;
                qs = b->qs, qh4 = b->qh, d = h2f(b->d), m = h2f(b->m);
            }
            uint32_t qh;
            memcpy(&qh, qh4, 4);
            for (int j = 0; j < QK / 2; ++j) {
                int x0 = ((qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10)) - off;
                int x1 = ((qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) - off;
                y[i * QK + j] = x0 * d + m;
                y[i * QK + j + QK / 2] = x1 * d + m;
            }
        }
        break;
    }
    case KQ_Q4_K:
    case KQ_Q5_K: {
        for (int64_t i = 0; i < n / QK_K; i++) {
            const uint8_t *scales, *ql, *qh = NULL;
            float d, dmin;
            if (t == KQ_Q4_K) {
                const blk_q4_K *b = (const blk_q4_K *)src + i;
                scales = b->scales, ql = b->qs, d = h2f(b->d), dmin = h2f(b->dmin);
            } else {
                const blk_q5_K *b = (const blk_q5_K *)src + i;
                scales = b->scales, ql = b->qs, qh = b->qh, d = h2f(b->d), dmin = h2f(b->dmin);
            }
            float *yb = y + i * QK_K;
            for (int c = 0; c < 4; c++, ql += 32) {
                uint8_t sc, m;
                get_scale_min_k4(2 * c, scales, &sc, &m);
                const float d1 = d * sc, m1 = dmin * m;
                get_scale_min_k4(2 * c + 1, scales, &sc, &m);
                const float d2 = d * sc, m2 = dmin * m;
                for (int l = 0; l < 32; ++l) {
                    int hi1 = qh ? ((qh[l] >> (2 * c)) & 1) << 4 : 0;
                    int hi2 = qh ? ((qh[l] >> (2 * c + 1)) & 1) << 4 : 0;
                    yb[64 * c + l] = d1 * ((ql[l] & 0xF) + hi1) - m1;
                    yb[64 * c + 32 + l] = d2 * ((ql[l] >> 4) + hi2) - m2;
                }
            }
        }
        break;
    }
    case KQ_Q6_K: {
        const blk_q6_K *b = src;
        for (int64_t i = 0; i < n / QK_K; i++) {
            const float d = h2f(b[i].d);
            const uint8_t *ql = b[i].ql, *qh = b[i].qh;
            const int8_t *sc = b[i].scales;
            float *yb = y + i * QK_K;
            for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, yb += 128) {
                for (int l = 0; l < 32; ++l) {
                    int is = l / 16;
                    const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                    const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    yb[l + 0] = d * sc[is + 0] * q1;
                    yb[l + 32] = d * sc[is + 2] * q2;
                    yb[l + 64] = d * sc[is + 4] * q3;
                    yb[l + 96] = d * sc[is + 6] * q4;
                }
            }
        }
        break;
    }
    default: QT_CHECK(0, "dequantize: %s is not implemented", kq_type_name(t));
    }
}

/* ------------------------------------------------------------------ public entry points */

static void quant_row(kq_type t, const float *x, void *dst, int64_t n, const float *qw) {
    switch (t) {
    case KQ_F32: memcpy(dst, x, (size_t)n * 4); break;
    case KQ_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = f2h(x[i]);
            memcpy((uint8_t *)dst + 2 * i, &h, 2);
        }
        break;
    case KQ_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = qt_f32_to_bf16(x[i]);
            memcpy((uint8_t *)dst + 2 * i, &h, 2);
        }
        break;
    case KQ_Q8_0: quant_q8_0(x, dst, n); break;
    case KQ_Q5_0: quant_q5_0_row(x, dst, n, qw); break;
    case KQ_Q5_1: quant_q5_1_row(x, dst, n, qw); break;
    case KQ_Q4_K: quant_q4_K_row(x, dst, n, qw); break;
    case KQ_Q5_K: quant_q5_K_row(x, dst, n, qw); break;
    case KQ_Q6_K: quant_q6_K_row(x, dst, n, qw); break;
    default: QT_CHECK(0, "quantize: %s is not implemented", kq_type_name(t));
    }
}

int kq_quantize(kq_type t, const float *x, int64_t nrows, int64_t n_per_row, const float *imatrix, void *dst,
                const char *what, qt_err *e) {
    if (!what) what = "tensor";
    if (kq_check_row(t, n_per_row, what, e) != 0) return -1;
    QT_CHECK(nrows >= 0 && ((uintptr_t)dst & 1) == 0, "bad rows %lld or odd destination pointer", (long long)nrows);
    /* ggml quietly turns a NaN into garbage codes; a merge that produced one is a bug upstream */
    for (int64_t i = 0; i < nrows * n_per_row; i++)
        if (!isfinite(x[i]))
            return qt_errf(e, "%s: value [%lld, %lld] is %g; nothing non-finite can be quantized (check the "
                              "checkpoint and the adapter)", what, (long long)(i / n_per_row),
                           (long long)(i % n_per_row), (double)x[i]);
    if (imatrix) {
        for (int64_t j = 0; j < n_per_row; j++)
            if (!(imatrix[j] >= 0) || !isfinite(imatrix[j]))
                return qt_errf(e, "%s: importance of column %lld is %g; an imatrix holds mean squared "
                                  "activations (finite, >= 0)", what, (long long)j, (double)imatrix[j]);
        if (t == KQ_F32 || t == KQ_F16 || t == KQ_BF16 || t == KQ_Q8_0) imatrix = NULL; /* unused, as in ggml */
    }
    const size_t rb = kq_row_bytes(t, n_per_row);
#pragma omp parallel for schedule(dynamic, 16) if (nrows * n_per_row > (1 << 16))
    for (int64_t r = 0; r < nrows; r++) quant_row(t, x + r * n_per_row, (uint8_t *)dst + (size_t)r * rb, n_per_row, imatrix);
    return 0;
}

int kq_dequantize(kq_type t, const void *src, int64_t nrows, int64_t n_per_row, float *y, const char *what, qt_err *e) {
    if (kq_check_row(t, n_per_row, what ? what : "tensor", e) != 0) return -1;
    QT_CHECK(nrows >= 0 && ((uintptr_t)src & 1) == 0, "bad rows %lld or odd source pointer", (long long)nrows);
    const size_t rb = kq_row_bytes(t, n_per_row);
#pragma omp parallel for schedule(static) if (nrows * n_per_row > (1 << 16))
    for (int64_t r = 0; r < nrows; r++) dequant_row(t, (const uint8_t *)src + (size_t)r * rb, y + r * n_per_row, n_per_row);
    return 0;
}
