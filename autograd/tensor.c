/* Tensor headers, creation in pools, host transfers with dtype conversion,
 * and the double-precision load/store helpers used by every CPU reference kernel. */
#include "autograd.h"
#include "backend.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double get_elem(const void *p, qt_dtype dt, int64_t i) {
    switch (dt) {
    case QT_F32: return ((const float *)p)[i];
    case QT_F64: return ((const double *)p)[i];
    case QT_BF16: return qt_bf16_to_f32(((const uint16_t *)p)[i]);
    case QT_F16: return qt_f16_to_f32(((const uint16_t *)p)[i]);
    case QT_I32: return ((const int32_t *)p)[i];
    case QT_U8: return ((const uint8_t *)p)[i];
    default: QT_CHECK(0, "bad dtype %d", (int)dt);
    }
}

static void set_elem(void *p, qt_dtype dt, int64_t i, double v) {
    switch (dt) {
    case QT_F32: ((float *)p)[i] = (float)v; break;
    case QT_F64: ((double *)p)[i] = v; break;
    case QT_BF16: ((uint16_t *)p)[i] = qt_f32_to_bf16((float)v); break;
    case QT_F16: ((uint16_t *)p)[i] = qt_f32_to_f16((float)v); break;
    case QT_I32: ((int32_t *)p)[i] = (int32_t)v; break;
    case QT_U8: ((uint8_t *)p)[i] = (uint8_t)v; break;
    default: QT_CHECK(0, "bad dtype %d", (int)dt);
    }
}

/* Host-to-host conversion. Float to bf16/f16 goes through float32, as a GPU cast does. */
static void convert(void *dst, qt_dtype dd, const void *src, qt_dtype sd, int64_t n) {
    if (dd == sd) {
        memcpy(dst, src, (size_t)n * qt_dtype_size(dd));
        return;
    }
    QT_CHECK(qt_dtype_is_float(dd) == qt_dtype_is_float(sd), "cannot convert %s to %s",
             qt_dtype_name(sd), qt_dtype_name(dd));
    for (int64_t i = 0; i < n; i++) set_elem(dst, dd, i, get_elem(src, sd, i));
}

static void set_contiguous_strides(qt_tensor *t) {
    int64_t s = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        t->stride[d] = s;
        s *= t->shape[d];
    }
    t->numel = s;
}

static qt_tensor *new_header(qt_ctx *c, qt_pool pool, qt_dtype dt, int ndim, const int64_t *shape) {
    QT_CHECK(ndim >= 1 && ndim <= QT_MAX_DIMS, "ndim %d out of 1..%d", ndim, QT_MAX_DIMS);
    qt_tensor *t = qt_arena_alloc(&c->meta[pool], sizeof *t);
    memset(t, 0, sizeof *t);
    t->dtype = dt;
    t->dev = c->dev;
    t->pool = pool;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++) {
        QT_CHECK(shape[d] >= 0, "negative dimension %lld", (long long)shape[d]);
        t->shape[d] = shape[d];
    }
    set_contiguous_strides(t);
    return t;
}

qt_tensor qt_tensor_over(void *data, qt_dtype dt, qt_device dev, int ndim, const int64_t *shape) {
    qt_tensor t;
    memset(&t, 0, sizeof t);
    QT_CHECK(ndim >= 1 && ndim <= QT_MAX_DIMS, "ndim %d out of 1..%d", ndim, QT_MAX_DIMS);
    t.dtype = dt;
    t.dev = dev;
    t.pool = QT_STEP;
    t.ndim = ndim;
    for (int d = 0; d < ndim; d++) t.shape[d] = shape[d];
    set_contiguous_strides(&t);
    t.data = data;
    return t;
}

qt_tensor *qt_empty(qt_ctx *c, qt_pool pool, qt_dtype dt, int ndim, const int64_t *shape) {
    qt_tensor *t = new_header(c, pool, dt, ndim, shape);
    t->data = qt_arena_alloc(&c->data[pool], qt_nbytes(t));
    return t;
}

qt_tensor *qt_zeros(qt_ctx *c, qt_pool pool, qt_dtype dt, int ndim, const int64_t *shape) {
    qt_tensor *t = qt_empty(c, pool, dt, ndim, shape);
    qt_fill_zero(t);
    return t;
}

qt_tensor *qt_param(qt_ctx *c, const char *name, qt_dtype dt, int ndim, const int64_t *shape,
                    bool trainable) {
    qt_tensor *t = qt_zeros(c, QT_PERSIST, dt, ndim, shape);
    qt_set_name(t, "%s", name);
    t->requires_grad = trainable;
    if (trainable) qt_grad(c, t);
    return t;
}

qt_tensor *qt_reshape_nograd(qt_ctx *c, qt_tensor *t, int ndim, const int64_t *shape) {
    QT_CHECK(qt_is_contiguous(t), "reshape of a strided tensor");
    qt_tensor *v = new_header(c, QT_STEP, t->dtype, ndim, shape);
    QT_CHECK(v->numel == t->numel, "reshape changes numel %lld -> %lld", (long long)t->numel,
             (long long)v->numel);
    v->data = t->data;
    v->dev = t->dev;
    snprintf(v->name, sizeof v->name, "%s", t->name);
    return v;
}

bool qt_is_contiguous(const qt_tensor *t) {
    int64_t s = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->stride[d] != s) return false;
        s *= t->shape[d];
    }
    return true;
}

bool qt_same_shape(const qt_tensor *a, const qt_tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return false;
    return true;
}

void qt_set_name(qt_tensor *t, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
}

size_t qt_nbytes(const qt_tensor *t) { return (size_t)t->numel * qt_dtype_size(t->dtype); }

const char *qt_describe(const qt_tensor *t, char *buf, size_t n) {
    int k = snprintf(buf, n, "%s%s%s[", t->name, t->name[0] ? " " : "", qt_dtype_name(t->dtype));
    for (int d = 0; d < t->ndim && k > 0 && (size_t)k < n; d++)
        k += snprintf(buf + k, n - (size_t)k, "%s%lld", d ? "," : "", (long long)t->shape[d]);
    if (k > 0 && (size_t)k < n) snprintf(buf + k, n - (size_t)k, "] %s", qt_device_name(t->dev));
    return buf;
}

/* ---- transfers */

void qt_upload(qt_tensor *t, const void *src, qt_dtype sd) {
    if (t->dev == QT_CPU) {
        convert(t->data, t->dtype, src, sd, t->numel);
        return;
    }
    const void *p = src;
    void *tmp = NULL;
    if (sd != t->dtype) {
        tmp = malloc(qt_nbytes(t));
        QT_CHECK(tmp, "out of host memory (%zu bytes)", qt_nbytes(t));
        convert(tmp, t->dtype, src, sd, t->numel);
        p = tmp;
    }
    qt_be_memcpy(t->data, QT_CUDA, p, QT_CPU, qt_nbytes(t));
    free(tmp);
}

void qt_download(const qt_tensor *t, void *dst, qt_dtype dd) {
    if (t->dev == QT_CPU) {
        convert(dst, dd, t->data, t->dtype, t->numel);
        return;
    }
    if (dd == t->dtype) {
        qt_be_memcpy(dst, QT_CPU, t->data, QT_CUDA, qt_nbytes(t));
        return;
    }
    void *tmp = malloc(qt_nbytes(t));
    QT_CHECK(tmp, "out of host memory (%zu bytes)", qt_nbytes(t));
    qt_be_memcpy(tmp, QT_CPU, t->data, QT_CUDA, qt_nbytes(t));
    convert(dst, dd, tmp, t->dtype, t->numel);
    free(tmp);
}

void qt_copy(qt_tensor *dst, const qt_tensor *src) {
    QT_CHECK(dst->numel == src->numel, "copy numel %lld -> %lld", (long long)src->numel,
             (long long)dst->numel);
    if (dst->dtype == src->dtype) {
        qt_be_memcpy(dst->data, dst->dev, src->data, src->dev, qt_nbytes(src));
        return;
    }
    void *tmp = malloc(qt_nbytes(src));
    QT_CHECK(tmp, "out of host memory (%zu bytes)", qt_nbytes(src));
    qt_download(src, tmp, src->dtype);
    qt_upload(dst, tmp, src->dtype);
    free(tmp);
}

void qt_fill_zero(qt_tensor *t) {
    if (t->dev == QT_CPU) memset(t->data, 0, qt_nbytes(t));
    else qt_be_memset(t->data, 0, qt_nbytes(t));
}

static void fill_random(qt_tensor *t, qt_rng *r, double a, double b, bool normal) {
    if (t->dev == QT_CUDA && qt_dtype_is_float(t->dtype)) { /* counter-based, on the device */
        qt_be_fill_random(t->data, t->dtype, t->numel, qt_rng_next(r), a, b, normal);
        return;
    }
    double *v = malloc((size_t)t->numel * sizeof *v);
    QT_CHECK(v, "out of host memory");
    for (int64_t i = 0; i < t->numel; i++)
        v[i] = normal ? a + b * qt_rng_normal(r) : a + (b - a) * qt_rng_uniform(r);
    qt_upload(t, v, QT_F64);
    free(v);
}
void qt_fill_uniform(qt_tensor *t, qt_rng *r, double lo, double hi) { fill_random(t, r, lo, hi, false); }
void qt_fill_normal(qt_tensor *t, qt_rng *r, double mean, double std) { fill_random(t, r, mean, std, true); }

/* ---- CPU reference helpers */

double *qt_cpu_scratch(qt_ctx *c, int64_t n) {
    double *p = qt_arena_alloc(&c->scratch, (size_t)(n > 0 ? n : 1) * sizeof(double));
    memset(p, 0, (size_t)(n > 0 ? n : 1) * sizeof(double));
    return p;
}

double *qt_cpu_load(qt_ctx *c, const qt_tensor *t) {
    QT_CHECK(t->dev == QT_CPU, "CPU kernel given a %s tensor", qt_device_name(t->dev));
    if (t->dtype == QT_F64) return t->data;
    double *p = qt_arena_alloc(&c->scratch, (size_t)(t->numel > 0 ? t->numel : 1) * sizeof(double));
    for (int64_t i = 0; i < t->numel; i++) p[i] = get_elem(t->data, t->dtype, i);
    return p;
}

void qt_cpu_store(const qt_tensor *t, const double *v) {
    if (v == t->data) return;
    for (int64_t i = 0; i < t->numel; i++) set_elem(t->data, t->dtype, i, v[i]);
}

void qt_cpu_accum(const qt_tensor *t, const double *v) {
    QT_CHECK(v != t->data, "accumulating a tensor into itself");
    for (int64_t i = 0; i < t->numel; i++) set_elem(t->data, t->dtype, i, get_elem(t->data, t->dtype, i) + v[i]);
}
