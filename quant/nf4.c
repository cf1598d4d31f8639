/* NF4 + double quantization, CPU reference and the device-independent driver.
 *
 * Every value that ends up in a code or a scale is computed in float32 exactly as the
 * spec (shared/specs/nf4.md) and bitsandbytes' CUDA kernels do it: absmax = max|x|,
 * s = x * (1.0f / absmax), code = thresholds exceeded; DQ: c = absmax - offset,
 * u = c * (1.0f / absmax2), nearest D entry; scale = D[q] * absmax2 + offset. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "nf4.h"

/* ------------------------------------------------------------------ tables */

const float nf4_values[16] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

/* Midpoints of neighbouring values, computed in double and written as float literals
 * (bnb's dQuantizeNF4 comparison tree uses exactly these). */
const float nf4_thresholds[15] = {
    -0.8480964004993439f,  -0.6106329262256622f,  -0.4599952697753906f, -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f,   0.2035212516784668f,   0.2920137718319893f,  0.3893125355243683f,
    0.5016634166240692f,   0.6427869200706482f,   0.8614784181118011f,
};

/* D[128..254] as float32 bits, torch 2.11 (spec section 5). Older torch versions give
 * up to 2 ulp different low bits in 42 entries: a writer must store the map it used. */
static const uint32_t dmap_pos_bits[127] = {
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
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333,
};

void nf4_default_dmap(float d[256]) {
    for (int i = 0; i < 127; i++) memcpy(&d[128 + i], &dmap_pos_bits[i], sizeof(float));
    for (int i = 0; i <= 126; i++) d[i] = -d[254 - i];
    d[127] = 0.0f;
    d[255] = 1.0f;
}

/* ------------------------------------------------------------------ sizes */

int64_t nf4_nblocks(int64_t n) { return (n + NF4_BLOCK - 1) / NF4_BLOCK; }
static int64_t nblocks2(int64_t nb) { return (nb + NF4_DQ_BLOCK - 1) / NF4_DQ_BLOCK; }

size_t nf4_bytes(int64_t n, bool dq) {
    int64_t nb = nf4_nblocks(n);
    size_t codes = (size_t)(n + 1) / 2;
    return dq ? codes + (size_t)nb + 4 * (size_t)nblocks2(nb) : codes + 4 * (size_t)nb;
}

double nf4_bits_per_param(int64_t n, bool dq) { return n > 0 ? 8.0 * (double)nf4_bytes(n, dq) / (double)n : 0.0; }

void nf4_alloc(nf4_tensor *q, qt_arena *a, int ndim, const int64_t *shape, bool dq) {
    QT_CHECK(ndim == 1 || ndim == 2, "nf4 tensors are 1-D or 2-D, not %d-D", ndim);
    memset(q, 0, sizeof *q);
    q->dev = a->dev;
    q->ndim = ndim;
    q->shape[0] = shape[0];
    q->shape[1] = ndim == 2 ? shape[1] : 1;
    q->n = q->shape[0] * q->shape[1];
    QT_CHECK(shape[0] > 0 && q->shape[1] > 0, "nf4 tensor with an empty dimension");
    q->nblocks = nf4_nblocks(q->n);
    q->dq = dq;
    q->codes = qt_arena_alloc(a, (size_t)(q->n + 1) / 2);
    if (dq) {
        q->nblocks2 = nblocks2(q->nblocks);
        q->absmax_q = qt_arena_alloc(a, (size_t)q->nblocks);
        q->absmax2 = qt_arena_alloc(a, sizeof(float) * (size_t)q->nblocks2);
    } else {
        q->absmax = qt_arena_alloc(a, sizeof(float) * (size_t)q->nblocks);
    }
    nf4_default_dmap(q->dmap);
}

/* ------------------------------------------------------------------ float32 in and out */

static void load_f32(const qt_tensor *w, int64_t start, int len, float *x) {
    switch (w->dtype) {
    case QT_F32: memcpy(x, (const float *)w->data + start, sizeof(float) * (size_t)len); break;
    case QT_F64:
        for (int i = 0; i < len; i++) x[i] = (float)((const double *)w->data)[start + i];
        break;
    case QT_BF16:
        for (int i = 0; i < len; i++) x[i] = qt_bf16_to_f32(((const uint16_t *)w->data)[start + i]);
        break;
    case QT_F16:
        for (int i = 0; i < len; i++) x[i] = qt_f16_to_f32(((const uint16_t *)w->data)[start + i]);
        break;
    default: QT_CHECK(0, "nf4: dtype %s is not a float dtype", qt_dtype_name(w->dtype));
    }
}

static void store_f32(qt_tensor *out, int64_t start, int len, const float *v) {
    switch (out->dtype) {
    case QT_F32: memcpy((float *)out->data + start, v, sizeof(float) * (size_t)len); break;
    case QT_F64:
        for (int i = 0; i < len; i++) ((double *)out->data)[start + i] = v[i];
        break;
    case QT_BF16:
        for (int i = 0; i < len; i++) ((uint16_t *)out->data)[start + i] = qt_f32_to_bf16(v[i]);
        break;
    case QT_F16:
        for (int i = 0; i < len; i++) ((uint16_t *)out->data)[start + i] = qt_f32_to_f16(v[i]);
        break;
    default: QT_CHECK(0, "nf4: cannot dequantize to %s", qt_dtype_name(out->dtype));
    }
}

/* a * b + c with two roundings, as bnb computes the DQ scale (two separate kernels).
 * gnu11 lets the compiler contract a*b+c into an FMA (one rounding) where the target
 * has one; the volatile product forbids that. */
static float mul_then_add(float a, float b, float c) {
    volatile float p = a * b;
    return p + c;
}

/* ------------------------------------------------------------------ quantize (CPU) */

/* One block of len <= 64 values: absmax and (len+1)/2 packed bytes. False if a value
 * is not finite (absmax is meaningless then). */
static bool quantize_block(const float *x, int len, uint8_t *out, float *absmax) {
    float amax = 0.0f;
    bool finite = true;
    for (int i = 0; i < len; i++) {
        float a = fabsf(x[i]);
        finite &= a <= FLT_MAX;      /* false for inf and NaN */
        amax = a > amax ? a : amax;  /* not fmaxf: that is a libm call, NaN is caught above */
    }
    *absmax = amax;
    if (!finite) return false;
    uint8_t code[NF4_BLOCK + 1];
    if (amax == 0.0f) {
        memset(code, 7, sizeof code); /* spec 2.4: zero block -> code 7, never divide by 0 */
    } else {
        float inv = 1.0f / amax;
        for (int i = 0; i < len; i++) code[i] = (uint8_t)nf4_code_of(x[i] * inv, nf4_thresholds);
        code[len] = (uint8_t)nf4_code_of(0.0f * inv, nf4_thresholds); /* odd n: padded 0.0 */
    }
    for (int k = 0; k < (len + 1) / 2; k++) out[k] = (uint8_t)(code[2 * k] << 4 | code[2 * k + 1]);
    return true;
}

/* The offset: float32 mean of all block absmaxes, summed in double (deterministic, and
 * for absmaxes within a factor ~4000 of each other the sum is exact). */
static float mean_f32(const float *a, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += a[i];
    return (float)(s / (double)n);
}

void nf4_q8_blockwise(const float *x, int64_t n, int64_t block, const float d[256], uint8_t *code,
                      float *absmax) {
    QT_CHECK(d[127] == 0.0f, "the 8-bit map must hold 0.0 at index 127");
    for (int64_t g = 0; g * block < n; g++) {
        int64_t lo = g * block, hi = lo + block < n ? lo + block : n;
        float amax = 0.0f;
        for (int64_t i = lo; i < hi; i++) amax = fmaxf(amax, fabsf(x[i]));
        absmax[g] = amax;
        if (amax == 0.0f) { /* spec 4: all equal to the mean -> the code of 0.0 */
            memset(code + lo, 127, (size_t)(hi - lo));
            continue;
        }
        float inv = 1.0f / amax;
        for (int64_t i = lo; i < hi; i++) code[i] = (uint8_t)nf4_q8_nearest(d, x[i] * inv);
    }
}

/* DQ of the float absmax vector (host) into q's absmax_q / absmax2 / offset (CPU q). */
static void double_quant_cpu(const float *absmax, nf4_tensor *q) {
    q->offset = mean_f32(absmax, q->nblocks);
    float c[NF4_DQ_BLOCK];
    for (int64_t g = 0; g < q->nblocks2; g++) {
        int64_t lo = g * NF4_DQ_BLOCK;
        int len = (int)(q->nblocks - lo < NF4_DQ_BLOCK ? q->nblocks - lo : NF4_DQ_BLOCK);
        for (int i = 0; i < len; i++) c[i] = absmax[lo + i] - q->offset;
        nf4_q8_blockwise(c, len, NF4_DQ_BLOCK, q->dmap, q->absmax_q + lo, q->absmax2 + g);
    }
}

/* "row r, columns a..b" of a flat element range, for messages. */
static void describe_elem(const nf4_tensor *q, int64_t e, char *buf, size_t n) {
    if (q->ndim == 2) snprintf(buf, n, "element %lld = [row %lld, column %lld]", (long long)e,
                               (long long)(e / q->shape[1]), (long long)(e % q->shape[1]));
    else snprintf(buf, n, "element %lld", (long long)e);
}

static int bad_value_error(const nf4_tensor *q, const qt_tensor *w, int64_t block, const float *x, int len,
                           qt_err *e) {
    int i = 0;
    while (i < len - 1 && isfinite(x[i])) i++;
    char where[96], desc[128];
    describe_elem(q, block * NF4_BLOCK + i, where, sizeof where);
    return qt_errf(e,
                   "nf4_quantize: weight %s holds %g at %s: NF4 needs finite weights; the checkpoint "
                   "is damaged or was saved from a diverged run (re-download or re-export it)",
                   qt_describe(w, desc, sizeof desc), (double)x[i], where);
}

static void copy_bytes(void *dst, qt_device dd, const void *src, qt_device sd, size_t bytes) {
    if (dd == QT_CPU && sd == QT_CPU) memcpy(dst, src, bytes);
    else NF4_CUDA_CALL(nf4_cuda_memcpy, dst, dd, src, sd, bytes);
}

/* GPU path: codes + absmax on the device, the offset (a mean over the whole tensor) on
 * the host from a copy of absmax, then the nested quantization on the device. */
static int quantize_cuda(qt_ctx *c, const qt_tensor *w, nf4_tensor *q, qt_err *e) {
    size_t dmark = qt_arena_mark(&c->data[QT_STEP]), smark = qt_scratch_mark(c);
    size_t fb = sizeof(float) * (size_t)q->nblocks;
    float *amax_dev = q->dq ? qt_arena_alloc(&c->data[QT_STEP], fb) : q->absmax;
    NF4_CUDA_CALL(nf4_cuda_quantize, c, w, q, amax_dev);
    float *amax = qt_arena_alloc(&c->scratch, fb);
    copy_bytes(amax, QT_CPU, amax_dev, QT_CUDA, fb);
    int rc = 0;
    for (int64_t b = 0; b < q->nblocks && rc == 0; b++) {
        if (isfinite(amax[b])) continue;
        float x[NF4_BLOCK];
        int len = (int)(q->n - b * NF4_BLOCK < NF4_BLOCK ? q->n - b * NF4_BLOCK : NF4_BLOCK);
        size_t es = qt_dtype_size(w->dtype);
        double raw[NF4_BLOCK]; /* room for 64 elements of any float dtype */
        copy_bytes(raw, QT_CPU, (const char *)w->data + (size_t)b * NF4_BLOCK * es, QT_CUDA, (size_t)len * es);
        qt_tensor view = *w;
        view.dev = QT_CPU;
        view.data = raw;
        load_f32(&view, 0, len, x);
        rc = bad_value_error(q, w, b, x, len, e);
    }
    if (rc == 0 && q->dq) {
        q->offset = mean_f32(amax, q->nblocks);
        NF4_CUDA_CALL(nf4_cuda_double_quant, c, amax_dev, q);
    }
    qt_ctx_sync(c); /* the temporary absmax is released below */
    qt_scratch_reset(c, smark);
    qt_arena_reset(&c->data[QT_STEP], dmark);
    return rc;
}

int nf4_quantize(qt_ctx *c, qt_pool pool, const qt_tensor *w, bool dq, nf4_tensor *q, qt_err *e) {
    char desc[128];
    QT_CHECK(qt_dtype_is_float(w->dtype) && qt_is_contiguous(w), "nf4_quantize: %s must be a contiguous float tensor",
             qt_describe(w, desc, sizeof desc));
    QT_CHECK(w->dev == c->dev, "nf4_quantize: %s is not on the context's device", qt_describe(w, desc, sizeof desc));
    QT_CHECK(w->numel > 0, "nf4_quantize: %s is empty", qt_describe(w, desc, sizeof desc));
    int64_t shape[2] = {w->numel / w->shape[w->ndim - 1], w->shape[w->ndim - 1]};
    if (w->ndim == 1) shape[0] = w->numel;
    qt_arena *a = &c->data[pool];
    size_t mark = qt_arena_mark(a);
    nf4_alloc(q, a, w->ndim == 1 ? 1 : 2, shape, dq);
    snprintf(q->name, sizeof q->name, "%s", w->name);
    int rc;
    if (c->dev == QT_CUDA) {
        rc = quantize_cuda(c, w, q, e);
    } else {
        size_t smark = qt_scratch_mark(c);
        float *amax = dq ? qt_arena_alloc(&c->scratch, sizeof(float) * (size_t)q->nblocks) : q->absmax;
        float x[NF4_BLOCK];
        rc = 0;
        for (int64_t b = 0; b < q->nblocks && rc == 0; b++) {
            int len = (int)(q->n - b * NF4_BLOCK < NF4_BLOCK ? q->n - b * NF4_BLOCK : NF4_BLOCK);
            load_f32(w, b * NF4_BLOCK, len, x);
            if (!quantize_block(x, len, q->codes + b * (NF4_BLOCK / 2), &amax[b]))
                rc = bad_value_error(q, w, b, x, len, e);
        }
        if (rc == 0 && dq) double_quant_cpu(amax, q);
        qt_scratch_reset(c, smark);
    }
    if (rc != 0) {
        qt_arena_reset(a, mark);
        memset(q, 0, sizeof *q);
    }
    return rc;
}

/* ------------------------------------------------------------------ dequantize (CPU) */

static float block_scale(const nf4_tensor *q, int64_t b) {
    if (!q->dq) return q->absmax[b];
    return mul_then_add(q->dmap[q->absmax_q[b]], q->absmax2[b / NF4_DQ_BLOCK], q->offset);
}

void nf4_block_scales(const nf4_tensor *q, float *scale) {
    QT_CHECK(q->dev == QT_CPU, "nf4_block_scales: tensor '%s' is on the GPU", q->name);
    for (int64_t b = 0; b < q->nblocks; b++) scale[b] = block_scale(q, b);
}

void nf4_dequantize(qt_ctx *c, const nf4_tensor *q, qt_tensor *out) {
    char desc[128];
    QT_CHECK(out->numel == q->n && out->dev == q->dev && qt_is_contiguous(out) && qt_dtype_is_float(out->dtype),
             "nf4_dequantize: output %s must be a contiguous float tensor of %lld elements on %s",
             qt_describe(out, desc, sizeof desc), (long long)q->n, qt_device_name(q->dev));
    if (q->dev == QT_CUDA) {
        NF4_CUDA_CALL(nf4_cuda_dequantize, c, q, out);
        return;
    }
    float v[NF4_BLOCK];
    for (int64_t b = 0; b < q->nblocks; b++) {
        float scale = block_scale(q, b);
        int len = (int)(q->n - b * NF4_BLOCK < NF4_BLOCK ? q->n - b * NF4_BLOCK : NF4_BLOCK);
        const uint8_t *p = q->codes + b * (NF4_BLOCK / 2);
        for (int i = 0; i < len; i++) {
            int code = i & 1 ? p[i >> 1] & 15 : p[i >> 1] >> 4; /* even element: high nibble */
            v[i] = nf4_values[code] * scale;
        }
        store_f32(out, b * NF4_BLOCK, len, v);
    }
}

void nf4_copy(nf4_tensor *dst, const nf4_tensor *src) {
    QT_CHECK(dst->n == src->n && dst->dq == src->dq && dst->codes, "nf4_copy: '%s' (%lld, dq %d) into a tensor of %lld, dq %d",
             src->name, (long long)src->n, src->dq, (long long)dst->n, dst->dq);
    copy_bytes(dst->codes, dst->dev, src->codes, src->dev, (size_t)(src->n + 1) / 2);
    if (src->dq) {
        copy_bytes(dst->absmax_q, dst->dev, src->absmax_q, src->dev, (size_t)src->nblocks);
        copy_bytes(dst->absmax2, dst->dev, src->absmax2, src->dev, sizeof(float) * (size_t)src->nblocks2);
    } else {
        copy_bytes(dst->absmax, dst->dev, src->absmax, src->dev, sizeof(float) * (size_t)src->nblocks);
    }
    dst->offset = src->offset;
    memcpy(dst->dmap, src->dmap, sizeof dst->dmap);
    memcpy(dst->name, src->name, sizeof dst->name);
}

/* ------------------------------------------------------------------ bnb checkpoints */

static int all_finite(const float *v, int64_t n, int64_t *bad) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i])) {
            *bad = i;
            return 0;
        }
    return 1;
}

int nf4_from_bnb(nf4_tensor *q, qt_arena *a, const nf4_bnb_parts *p, qt_err *e) {
    const char *nm = p->name ? p->name : "?";
    if (!p->quant_type || strcmp(p->quant_type, "nf4") != 0)
        return qt_errf(e, "%s: bitsandbytes quant_type '%s' is not supported: qtrain reads NF4 only "
                          "(re-quantize with bnb_4bit_quant_type=\"nf4\", or load the unquantized model)",
                       nm, p->quant_type ? p->quant_type : "(missing)");
    if (p->blocksize != NF4_BLOCK)
        return qt_errf(e, "%s: bitsandbytes blocksize %lld is not supported: qtrain needs 64 (the bnb "
                          "default; re-quantize with blocksize 64 or load the unquantized model)",
                       nm, (long long)p->blocksize);
    if (p->ndim < 1 || p->ndim > 2 || p->shape[0] <= 0 || (p->ndim == 2 && p->shape[1] <= 0))
        return qt_errf(e, "%s: quant_state shape must have 1 or 2 positive dims (got %d dims)", nm, p->ndim);
    int64_t n = p->shape[0] * (p->ndim == 2 ? p->shape[1] : 1), nb = nf4_nblocks(n), nb2 = nblocks2(nb);
    if (!p->codes || p->codes_bytes != (n + 1) / 2)
        return qt_errf(e, "%s: packed weight has %lld bytes but shape %lld x %lld needs %lld (the file "
                          "is truncated or its quant_state shape is wrong)",
                       nm, (long long)p->codes_bytes, (long long)p->shape[0],
                       (long long)(p->ndim == 2 ? p->shape[1] : 1), (long long)((n + 1) / 2));
    if (p->quant_map)
        for (int k = 0; k < 16; k++)
            if (memcmp(&p->quant_map[k], &nf4_values[k], sizeof(float)) != 0)
                return qt_errf(e, "%s.quant_map[%d] = %.9g, but NF4 has %.9g there: this is not an NF4 "
                                  "tensor (FP4 and custom maps are not supported)",
                               nm, k, (double)p->quant_map[k], (double)nf4_values[k]);
    int64_t bad;
    if (p->nested) {
        if (p->nested_blocksize != NF4_DQ_BLOCK)
            return qt_errf(e, "%s: nested_blocksize %lld is not supported: qtrain needs 256 (the bnb default)",
                           nm, (long long)p->nested_blocksize);
        if (!p->absmax_q || p->absmax_len != nb)
            return qt_errf(e, "%s.absmax: expected %lld uint8 block codes (double-quantized), found %lld",
                           nm, (long long)nb, p->absmax_q ? (long long)p->absmax_len : 0LL);
        if (!p->nested_absmax || p->nested_absmax_len != nb2)
            return qt_errf(e, "%s.nested_absmax: expected %lld float32 values, found %lld", nm, (long long)nb2,
                           p->nested_absmax ? (long long)p->nested_absmax_len : 0LL);
        if (!isfinite(p->nested_offset) || !all_finite(p->nested_absmax, nb2, &bad))
            return qt_errf(e, "%s: nested_offset or nested_absmax holds a non-finite value: the file is damaged", nm);
        if (p->nested_quant_map && !all_finite(p->nested_quant_map, 256, &bad))
            return qt_errf(e, "%s.nested_quant_map[%lld] is not finite: the file is damaged", nm, (long long)bad);
    } else if (!p->absmax || p->absmax_len != nb || !all_finite(p->absmax, nb, &bad)) {
        return qt_errf(e, "%s.absmax: expected %lld finite float32 block scales, found %lld%s", nm,
                       (long long)nb, p->absmax ? (long long)p->absmax_len : 0LL,
                       p->absmax && p->absmax_len == nb ? " with a non-finite one" : "");
    }
    int64_t shape[2] = {p->shape[0], p->ndim == 2 ? p->shape[1] : 1};
    nf4_alloc(q, a, p->ndim, shape, p->nested);
    snprintf(q->name, sizeof q->name, "%s", nm);
    copy_bytes(q->codes, q->dev, p->codes, QT_CPU, (size_t)p->codes_bytes);
    if (p->nested) {
        copy_bytes(q->absmax_q, q->dev, p->absmax_q, QT_CPU, (size_t)nb);
        copy_bytes(q->absmax2, q->dev, p->nested_absmax, QT_CPU, sizeof(float) * (size_t)nb2);
        q->offset = p->nested_offset;
        if (p->nested_quant_map) memcpy(q->dmap, p->nested_quant_map, sizeof q->dmap);
    } else {
        copy_bytes(q->absmax, q->dev, p->absmax, QT_CPU, sizeof(float) * (size_t)nb);
    }
    return 0;
}
