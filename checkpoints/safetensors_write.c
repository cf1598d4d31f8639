/* safetensors writer: the reference implementation's exact layout, written atomically.
 *
 * Layout (spec section 1, and safetensors/src/tensor.rs `prepare`): tensors sorted by
 * dtype in the format's enum order, descending (so 8-byte types come first and every
 * tensor starts at a multiple of its element size), ties by name (byte-wise); compact
 * JSON, __metadata__ first; header padded with spaces to a multiple of 8. Escaping
 * follows serde_json, so for the same tensors and a one-key metadata our bytes equal the
 * `safetensors` package's (the interop test checks that). */
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoints.h"

/* A growable byte buffer for the header. */
typedef struct { char *p; size_t n, cap; } sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        QT_CHECK(b->p, "out of host memory");
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }
static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    QT_CHECK(k >= 0 && (size_t)k < sizeof tmp, "sb_printf overflow");
    sb_put(b, tmp, (size_t)k);
}

/* serde_json's escaping: \" \\ \b \f \n \r \t, other controls as \u00xx, the rest raw. */
static void sb_json_string(sbuf *b, const char *s) {
    sb_puts(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': sb_puts(b, "\\\""); break;
        case '\\': sb_puts(b, "\\\\"); break;
        case '\b': sb_puts(b, "\\b"); break;
        case '\f': sb_puts(b, "\\f"); break;
        case '\n': sb_puts(b, "\\n"); break;
        case '\r': sb_puts(b, "\\r"); break;
        case '\t': sb_puts(b, "\\t"); break;
        default:
            if (*p < 0x20) sb_printf(b, "\\u%04x", *p);
            else sb_put(b, (const char *)p, 1);
        }
    }
    sb_puts(b, "\"");
}

static bool valid_utf8(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p, n, cp, min;
        if (c < 0x80) { p++; continue; }
        if ((c & 0xE0) == 0xC0) n = 1, cp = c & 0x1F, min = 0x80;
        else if ((c & 0xF0) == 0xE0) n = 2, cp = c & 0x0F, min = 0x800;
        else if ((c & 0xF8) == 0xF0) n = 3, cp = c & 0x07, min = 0x10000;
        else return false;
        for (unsigned k = 1; k <= n; k++) {
            if ((p[k] & 0xC0) != 0x80) return false; /* also stops at the NUL */
            cp = cp << 6 | (p[k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        p += n + 1;
    }
    return true;
}

static int cmp_layout(const void *a, const void *b) {
    const st_wtensor *x = *(const st_wtensor *const *)a, *y = *(const st_wtensor *const *)b;
    if (x->dtype != y->dtype) return x->dtype > y->dtype ? -1 : 1;
    return strcmp(x->name, y->name);
}
static int cmp_name(const void *a, const void *b) {
    return strcmp((*(const st_wtensor *const *)a)->name, (*(const st_wtensor *const *)b)->name);
}

static uint64_t wt_bytes(const st_wtensor *t) {
    uint64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= (uint64_t)t->shape[d];
    return n * (uint64_t)st_dtype_bits(t->dtype) / 8;
}

/* Check what the caller gave before writing a byte. */
static int validate(const char *path, const st_wtensor *t, int n, const st_kv *meta, int n_meta, qt_err *e) {
    for (int i = 0; i < n; i++) {
        const char *nm = t[i].name;
        if (!nm || !nm[0] || strcmp(nm, "__metadata__") == 0 || !valid_utf8(nm))
            return qt_errf(e, "%s: tensor %d has an empty, reserved or non-UTF-8 name", path, i);
        if (t[i].dtype < 0 || t[i].dtype >= ST_NDTYPES || t[i].ndim < 0 || t[i].ndim > ST_MAX_DIMS)
            return qt_errf(e, "%s: tensor '%s': bad dtype %d or ndim %d", path, nm, (int)t[i].dtype, t[i].ndim);
        uint64_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++) {
            if (t[i].shape[d] < 0 || __builtin_mul_overflow(numel, (uint64_t)t[i].shape[d], &numel) ||
                numel > ((uint64_t)1 << 56))
                return qt_errf(e, "%s: tensor '%s': shape[%d] = %lld is negative or too large", path, nm, d,
                               (long long)t[i].shape[d]);
        }
        if (numel * (uint64_t)st_dtype_bits(t[i].dtype) % 8)
            return qt_errf(e, "%s: tensor '%s': %llu elements of %s are not a whole number of bytes", path, nm,
                           (unsigned long long)numel, st_dtype_name(t[i].dtype));
        if (numel && !t[i].data) return qt_errf(e, "%s: tensor '%s' has no data", path, nm);
    }
    for (int i = 0; i < n_meta; i++) {
        if (!meta[i].key || !meta[i].value || !valid_utf8(meta[i].key) || !valid_utf8(meta[i].value))
            return qt_errf(e, "%s: metadata entry %d has a missing or non-UTF-8 key or value", path, i);
        for (int j = 0; j < i; j++)
            if (strcmp(meta[i].key, meta[j].key) == 0)
                return qt_errf(e, "%s: metadata key '%s' given twice", path, meta[i].key);
    }
    return 0;
}

int st_write(const char *path, const st_wtensor *t, int n, const st_kv *meta, int n_meta, qt_err *e) {
    QT_CHECK(n >= 0 && n_meta >= 0 && (n == 0 || t) && (n_meta == 0 || meta), "bad st_write arguments");
    if (validate(path, t, n, meta, n_meta, e)) return -1;
    const st_wtensor **ord = malloc(sizeof *ord * (size_t)(n ? n : 1));
    QT_CHECK(ord, "out of host memory");
    for (int i = 0; i < n; i++) ord[i] = &t[i];
    qsort(ord, (size_t)n, sizeof *ord, cmp_name);
    int rc = 0;
    for (int i = 1; i < n && rc == 0; i++)
        if (strcmp(ord[i]->name, ord[i - 1]->name) == 0)
            rc = qt_errf(e, "%s: tensor name '%s' given twice", path, ord[i]->name);
    if (rc) {
        free(ord);
        return rc;
    }
    qsort(ord, (size_t)n, sizeof *ord, cmp_layout);

    /* The header. */
    sbuf h = {0};
    sb_puts(&h, "{\"__metadata__\":{");
    bool has_format = false;
    for (int i = 0; i < n_meta; i++) has_format |= strcmp(meta[i].key, "format") == 0;
    if (!has_format) sb_puts(&h, "\"format\":\"pt\"");
    for (int i = 0; i < n_meta; i++) {
        if (i || !has_format) sb_puts(&h, ",");
        sb_json_string(&h, meta[i].key);
        sb_puts(&h, ":");
        sb_json_string(&h, meta[i].value);
    }
    sb_puts(&h, "}");
    uint64_t off = 0;
    for (int k = 0; k < n; k++) {
        const st_wtensor *w = ord[k];
        sb_puts(&h, ",");
        sb_json_string(&h, w->name);
        sb_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype_name(w->dtype));
        for (int d = 0; d < w->ndim; d++) sb_printf(&h, "%s%lld", d ? "," : "", (long long)w->shape[d]);
        uint64_t nb = wt_bytes(w);
        sb_printf(&h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off, (unsigned long long)(off + nb));
        off += nb;
    }
    sb_puts(&h, "}");
    while (h.n % 8) sb_puts(&h, " ");
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)h.n >> (8 * i));

    /* Header and tensors go through one durable write: PATH is the old file or the new one. */
    ck_chunk *ch = malloc(sizeof *ch * (size_t)(n + 2));
    QT_CHECK(ch, "out of host memory");
    ch[0] = (ck_chunk){len8, 8};
    ch[1] = (ck_chunk){h.p, h.n};
    for (int k = 0; k < n; k++) ch[k + 2] = (ck_chunk){ord[k]->data, wt_bytes(ord[k])};
    rc = ck_write_atomic(path, ch, n + 2, e);
    free(ch);
    free(h.p);
    free(ord);
    return rc;
}

st_wtensor st_wtensor_of(const char *name, const qt_tensor *t) {
    QT_CHECK(t->dev == QT_CPU, "st_wtensor_of(%s): download the tensor to the host first", name);
    QT_CHECK(qt_is_contiguous(t), "st_wtensor_of(%s): tensor is not contiguous", name);
    st_wtensor w = {.name = name, .dtype = st_dtype_of_qt(t->dtype), .ndim = t->ndim, .data = t->data};
    for (int d = 0; d < t->ndim; d++) w.shape[d] = t->shape[d];
    return w;
}
