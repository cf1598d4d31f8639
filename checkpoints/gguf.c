/* GGUF v3 container: a streaming writer and a strict mmap reader (shared/specs/gguf.md
 * section 1). The writer needs every tensor's name, shape and type before the first data
 * byte (the header holds each tensor's offset), then takes the data one tensor at a time,
 * so a merge never holds more than one tensor. The reader enforces what ggml's gguf.cpp
 * enforces, so a file it accepts is one llama.cpp accepts at the container level. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoints.h"

#define GGUF_MAGIC "GGUF"
#define GGUF_MAX_STRING (1ull << 30) /* ggml refuses longer strings */

/* ------------------------------------------------------------------ ggml types */

static const struct { const char *name; int64_t blck; uint64_t bytes; } ggml_types[] = {
    [0] = {"F32", 1, 4},       [1] = {"F16", 1, 2},        [2] = {"Q4_0", 32, 18},    [3] = {"Q4_1", 32, 20},
    [6] = {"Q5_0", 32, 22},    [7] = {"Q5_1", 32, 24},     [8] = {"Q8_0", 32, 34},    [9] = {"Q8_1", 32, 36},
    [10] = {"Q2_K", 256, 84},  [11] = {"Q3_K", 256, 110},  [12] = {"Q4_K", 256, 144}, [13] = {"Q5_K", 256, 176},
    [14] = {"Q6_K", 256, 210}, [15] = {"Q8_K", 256, 292},  [16] = {"IQ2_XXS", 256, 66}, [17] = {"IQ2_XS", 256, 74},
    [18] = {"IQ3_XXS", 256, 98}, [19] = {"IQ1_S", 256, 50}, [20] = {"IQ4_NL", 32, 18}, [21] = {"IQ3_S", 256, 110},
    [22] = {"IQ2_S", 256, 82}, [23] = {"IQ4_XS", 256, 136}, [24] = {"I8", 1, 1},       [25] = {"I16", 1, 2},
    [26] = {"I32", 1, 4},      [27] = {"I64", 1, 8},       [28] = {"F64", 1, 8},      [29] = {"IQ1_M", 256, 56},
    [30] = {"BF16", 1, 2},     [34] = {"TQ1_0", 256, 54},  [35] = {"TQ2_0", 256, 66}, [39] = {"MXFP4", 32, 17},
};
#define N_GGML_TYPES (uint32_t)(sizeof ggml_types / sizeof ggml_types[0])

bool gguf_type_size(uint32_t type, int64_t *blck, uint64_t *bytes) {
    if (type >= N_GGML_TYPES || !ggml_types[type].name) return false;
    if (blck) *blck = ggml_types[type].blck;
    if (bytes) *bytes = ggml_types[type].bytes;
    return true;
}

const char *gguf_type_name(uint32_t type) {
    return type < N_GGML_TYPES && ggml_types[type].name ? ggml_types[type].name : "?";
}

static const int vtype_bytes[GGUF_NTYPES] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
static const char *const vtype_names[GGUF_NTYPES] = {"UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32",
                                                     "BOOL", "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64"};
const char *gguf_vtype_name(gguf_vtype t) { return (unsigned)t < GGUF_NTYPES ? vtype_names[t] : "?"; }

static uint64_t pad_to(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

/* ------------------------------------------------------------------ writer */

typedef struct wtensor {
    char name[GGUF_MAX_NAME + 1];
    int n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    uint32_t type;
    uint64_t offset, nbytes;
} wtensor;

struct gguf_writer {
    uint8_t *kv; /* serialized KV pairs */
    size_t kv_len, kv_cap;
    int64_t n_kv;
    char **keys;
    wtensor *t;
    int64_t n_t, cap_t;
    uint64_t data_len; /* data section so far (padded) */
    uint32_t alignment;
    /* while writing */
    FILE *f;
    char *path, *tmp;
    int64_t next;      /* index of the next tensor whose data is due */
};

gguf_writer *gguf_writer_new(void) {
    gguf_writer *w = calloc(1, sizeof *w);
    QT_CHECK(w, "out of host memory");
    w->alignment = GGUF_DEFAULT_ALIGNMENT;
    return w;
}

void gguf_writer_free(gguf_writer *w) {
    if (!w) return;
    if (w->f) {
        fclose(w->f);
        unlink(w->tmp);
    }
    for (int64_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
    free(w->keys);
    free(w->kv);
    free(w->t);
    free(w->path);
    free(w->tmp);
    free(w);
}

static void put(gguf_writer *w, const void *p, size_t n) {
    if (n == 0) return;
    if (w->kv_len + n > w->kv_cap) {
        w->kv_cap = (w->kv_len + n) * 2 + 4096;
        w->kv = realloc(w->kv, w->kv_cap);
        QT_CHECK(w->kv, "out of host memory");
    }
    memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
}
static void put_u32(gguf_writer *w, uint32_t v) { put(w, &v, 4); }
static void put_u64(gguf_writer *w, uint64_t v) { put(w, &v, 8); }
static void put_str(gguf_writer *w, const char *s) {
    size_t n = strlen(s);
    QT_CHECK(n < GGUF_MAX_STRING, "GGUF string of %zu bytes", n);
    put_u64(w, n);
    put(w, s, n);
}

static void key(gguf_writer *w, const char *k, gguf_vtype t) {
    QT_CHECK(k[0] && strlen(k) <= 65535, "bad GGUF key '%s'", k);
    for (int64_t i = 0; i < w->n_kv; i++) QT_CHECK(strcmp(w->keys[i], k), "GGUF key %s set twice", k);
    QT_CHECK(!w->f, "GGUF key %s set after writing began", k);
    w->keys = realloc(w->keys, (size_t)(w->n_kv + 1) * sizeof *w->keys);
    QT_CHECK(w->keys, "out of host memory");
    w->keys[w->n_kv] = strdup(k);
    QT_CHECK(w->keys[w->n_kv], "out of host memory");
    w->n_kv++;
    put_str(w, k);
    put_u32(w, (uint32_t)t);
}

void gguf_set_str(gguf_writer *w, const char *k, const char *v) { key(w, k, GGUF_STR), put_str(w, v); }
void gguf_set_u32(gguf_writer *w, const char *k, uint32_t v) { key(w, k, GGUF_U32), put_u32(w, v); }
void gguf_set_i32(gguf_writer *w, const char *k, int32_t v) { key(w, k, GGUF_I32), put(w, &v, 4); }
void gguf_set_u64(gguf_writer *w, const char *k, uint64_t v) { key(w, k, GGUF_U64), put_u64(w, v); }
void gguf_set_f32(gguf_writer *w, const char *k, float v) { key(w, k, GGUF_F32), put(w, &v, 4); }
void gguf_set_bool(gguf_writer *w, const char *k, bool v) {
    uint8_t b = v ? 1 : 0;
    key(w, k, GGUF_BOOL), put(w, &b, 1);
}

void gguf_set_arr(gguf_writer *w, const char *k, gguf_vtype elem, const void *v, uint64_t n) {
    QT_CHECK(elem < GGUF_NTYPES && vtype_bytes[elem] > 0, "GGUF array of %s: use gguf_set_arr_str", gguf_vtype_name(elem));
    key(w, k, GGUF_ARR);
    put_u32(w, (uint32_t)elem);
    put_u64(w, n);
    put(w, v, (size_t)n * (size_t)vtype_bytes[elem]);
}

void gguf_set_arr_str(gguf_writer *w, const char *k, const char *const *v, uint64_t n) {
    key(w, k, GGUF_ARR);
    put_u32(w, GGUF_STR);
    put_u64(w, n);
    for (uint64_t i = 0; i < n; i++) put_str(w, v[i]);
}

int gguf_add_tensor(gguf_writer *w, const char *name, int n_dims, const int64_t *ne, uint32_t type, qt_err *e) {
    QT_CHECK(!w->f, "tensor %s added after writing began", name);
    int64_t blck;
    uint64_t bytes;
    if (!gguf_type_size(type, &blck, &bytes)) return qt_errf(e, "GGUF tensor %s: unknown ggml type %u", name, type);
    if (strlen(name) > GGUF_MAX_NAME || !name[0])
        return qt_errf(e, "GGUF tensor name '%s' is %zu bytes; llama.cpp allows 1 to %d", name, strlen(name),
                       GGUF_MAX_NAME);
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS) return qt_errf(e, "GGUF tensor %s: %d dims (1 to 4)", name, n_dims);
    for (int64_t i = 0; i < w->n_t; i++)
        if (!strcmp(w->t[i].name, name)) return qt_errf(e, "GGUF tensor %s added twice", name);
    uint64_t n = 1;
    for (int d = 0; d < n_dims; d++) {
        if (ne[d] < 0 || (ne[d] > 0 && n > UINT64_MAX / 2 / (uint64_t)ne[d]))
            return qt_errf(e, "GGUF tensor %s: bad dimension %lld", name, (long long)ne[d]);
        n *= (uint64_t)ne[d];
    }
    if (ne[0] % blck != 0)
        return qt_errf(e, "GGUF tensor %s: rows of %lld values are not whole %s blocks of %lld", name,
                       (long long)ne[0], gguf_type_name(type), (long long)blck);
    if (w->n_t == w->cap_t) {
        w->cap_t = w->cap_t * 2 + 64;
        w->t = realloc(w->t, (size_t)w->cap_t * sizeof *w->t);
        QT_CHECK(w->t, "out of host memory");
    }
    wtensor *t = &w->t[w->n_t++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    /* ggml writes n_dims without trailing 1s (at least 1); readers pad back to 4 */
    t->n_dims = n_dims;
    while (t->n_dims > 1 && ne[t->n_dims - 1] == 1) t->n_dims--;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = d < n_dims ? ne[d] : 1;
    t->type = type;
    t->nbytes = n / (uint64_t)blck * bytes;
    t->offset = w->data_len;
    w->data_len += pad_to(t->nbytes, w->alignment);
    return 0;
}

/* header + KV + tensor infos, before alignment padding */
static void header(gguf_writer *w, uint8_t **out, size_t *len) {
    gguf_writer h = {0};
    put(&h, GGUF_MAGIC, 4);
    put_u32(&h, GGUF_VERSION);
    put_u64(&h, (uint64_t)w->n_t);
    put_u64(&h, (uint64_t)w->n_kv);
    put(&h, w->kv, w->kv_len);
    for (int64_t i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        put_str(&h, t->name);
        put_u32(&h, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++) put_u64(&h, (uint64_t)t->ne[d]);
        put_u32(&h, t->type);
        put_u64(&h, t->offset);
    }
    *out = h.kv;
    *len = h.kv_len;
}

uint64_t gguf_writer_size(const gguf_writer *w) {
    uint8_t *h;
    size_t n;
    header((gguf_writer *)w, &h, &n);
    free(h);
    return pad_to(n, w->alignment) + w->data_len;
}

static const uint8_t zeros[256];

static int wr(gguf_writer *w, const void *p, size_t n, qt_err *e) {
    if (fwrite(p, 1, n, w->f) == n) return 0;
    return qt_errf(e, "%s: write failed: %s; check free disk space", w->path, strerror(errno));
}

static int wr_pad(gguf_writer *w, uint64_t n, qt_err *e) {
    while (n > 0) {
        size_t k = n > sizeof zeros ? sizeof zeros : (size_t)n;
        if (wr(w, zeros, k, e)) return -1;
        n -= k;
    }
    return 0;
}

int gguf_write_begin(gguf_writer *w, const char *path, qt_err *e) {
    QT_CHECK(!w->f && !w->path, "gguf_write_begin called twice");
    size_t plen = strlen(path) + 32;
    w->path = strdup(path);
    w->tmp = malloc(plen);
    QT_CHECK(w->path && w->tmp, "out of host memory");
    snprintf(w->tmp, plen, "%s.tmp.%d", path, (int)getpid());
    w->f = fopen(w->tmp, "wb");
    if (!w->f)
        return qt_errf(e, "%s: cannot create %s: %s; check that the folder exists and is writable", path, w->tmp,
                       strerror(errno));
    uint8_t *h;
    size_t n;
    header(w, &h, &n);
    int rc = wr(w, h, n, e);
    free(h);
    if (rc == 0) rc = wr_pad(w, pad_to(n, w->alignment) - n, e);
    return rc;
}

int gguf_write_tensor(gguf_writer *w, const void *data, uint64_t nbytes, qt_err *e) {
    QT_CHECK(w->f && w->next < w->n_t, "gguf_write_tensor: no tensor is due");
    const wtensor *t = &w->t[w->next];
    QT_CHECK(nbytes == t->nbytes, "tensor %s: %llu bytes given, %llu due", t->name, (unsigned long long)nbytes,
             (unsigned long long)t->nbytes);
    if (wr(w, data, (size_t)nbytes, e) || wr_pad(w, pad_to(nbytes, w->alignment) - nbytes, e)) return -1;
    w->next++;
    return 0;
}

int gguf_write_end(gguf_writer *w, qt_err *e) {
    QT_CHECK(w->f && w->next == w->n_t, "gguf_write_end: %lld of %lld tensors written", (long long)w->next,
             (long long)w->n_t);
    int err = 0;
    if (fflush(w->f) != 0 || fsync(fileno(w->f)) != 0) err = errno;
    if (fclose(w->f) != 0 && !err) err = errno;
    w->f = NULL;
    if (!err && rename(w->tmp, w->path) != 0) err = errno;
    if (err) {
        unlink(w->tmp);
        return qt_errf(e, "%s: writing failed: %s; check free disk space and permissions", w->path, strerror(err));
    }
    /* make the rename durable */
    char *dir = strdup(w->path);
    QT_CHECK(dir, "out of host memory");
    char *slash = strrchr(dir, '/');
    const char *d = slash == dir ? "/" : slash ? (*slash = 0, dir) : ".";
    int dfd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(dir);
    return 0;
}

/* ------------------------------------------------------------------ reader */

typedef struct rd {
    const uint8_t *p;
    uint64_t pos, size;
    const char *path;
    qt_err *e;
} rd;

static int need(rd *r, uint64_t n, const char *what) {
    if (n > r->size - r->pos)
        return qt_errf(r->e, "%s: truncated at byte %llu reading %s (file is %llu bytes); the file is incomplete",
                       r->path, (unsigned long long)r->pos, what, (unsigned long long)r->size);
    return 0;
}
static int rd_u32(rd *r, uint32_t *v, const char *what) {
    if (need(r, 4, what)) return -1;
    memcpy(v, r->p + r->pos, 4);
    r->pos += 4;
    return 0;
}
static int rd_u64(rd *r, uint64_t *v, const char *what) {
    if (need(r, 8, what)) return -1;
    memcpy(v, r->p + r->pos, 8);
    r->pos += 8;
    return 0;
}
/* a string: its bytes stay in the mapping; *len set */
static int rd_str(rd *r, const uint8_t **s, uint64_t *len, const char *what) {
    if (rd_u64(r, len, what)) return -1;
    if (*len >= GGUF_MAX_STRING)
        return qt_errf(r->e, "%s: %s at byte %llu claims %llu bytes (ggml's limit is 1 GiB)", r->path, what,
                       (unsigned long long)r->pos - 8, (unsigned long long)*len);
    if (need(r, *len, what)) return -1;
    *s = r->p + r->pos;
    r->pos += *len;
    return 0;
}

static char *dup_n(const uint8_t *s, uint64_t n) {
    char *c = malloc((size_t)n + 1);
    QT_CHECK(c, "out of host memory");
    memcpy(c, s, (size_t)n);
    c[n] = 0;
    return c;
}

static int read_value(rd *r, gguf_kv *kv, const char *k) {
    char what[160];
    snprintf(what, sizeof what, "the value of %.100s", k);
    if (kv->type == GGUF_STR) {
        const uint8_t *s;
        uint64_t n;
        if (rd_str(r, &s, &n, what)) return -1;
        kv->data = s;
        kv->str = dup_n(s, n);
        kv->n = 1;
        return 0;
    }
    if (kv->type != GGUF_ARR) {
        if (need(r, (uint64_t)vtype_bytes[kv->type], what)) return -1;
        kv->data = r->p + r->pos;
        kv->n = 1;
        r->pos += (uint64_t)vtype_bytes[kv->type];
        return 0;
    }
    uint32_t et;
    if (rd_u32(r, &et, what) || rd_u64(r, &kv->n, what)) return -1;
    if (et >= GGUF_NTYPES || et == GGUF_ARR)
        return qt_errf(r->e, "%s: key %s: array of %s; ggml reads no nested arrays or unknown types", r->path, k,
                       et == GGUF_ARR ? "arrays" : "type ids above 12");
    kv->arr_type = (gguf_vtype)et;
    kv->data = r->p + r->pos;
    if (et != GGUF_STR) {
        if (kv->n > (r->size - r->pos) / (uint64_t)vtype_bytes[et]) return need(r, UINT64_MAX / 2, what);
        r->pos += kv->n * (uint64_t)vtype_bytes[et];
        return 0;
    }
    if (kv->n > (r->size - r->pos) / 8) return need(r, UINT64_MAX / 2, what); /* each string takes >= 8 bytes */
    kv->strs = calloc((size_t)kv->n + 1, sizeof *kv->strs);
    QT_CHECK(kv->strs, "out of host memory");
    for (uint64_t i = 0; i < kv->n; i++) {
        const uint8_t *s;
        uint64_t n;
        if (rd_str(r, &s, &n, what)) return -1;
        kv->strs[i] = dup_n(s, n);
    }
    return 0;
}

static int parse(gguf_file *f, rd *r) {
    uint32_t version;
    uint64_t n_t, n_kv;
    if (need(r, 4, "the magic") || memcmp(r->p, GGUF_MAGIC, 4))
        return qt_errf(r->e, "%s: not a GGUF file (no 'GGUF' magic at byte 0)", r->path);
    r->pos = 4;
    if (rd_u32(r, &version, "the version") || rd_u64(r, &n_t, "the tensor count") || rd_u64(r, &n_kv, "the KV count"))
        return -1;
    if ((version & 0xffff) == 0) return qt_errf(r->e, "%s: version 0x%x: a big-endian GGUF; only little-endian is read", r->path, version);
    if (version < 2 || version > 3) return qt_errf(r->e, "%s: GGUF version %u; versions 2 and 3 are read", r->path, version);
    f->version = version;
    if (n_kv > r->size / 12 || n_t > r->size / 24) return qt_errf(r->e, "%s: %llu KV pairs and %llu tensors cannot fit in %llu bytes", r->path,
                       (unsigned long long)n_kv, (unsigned long long)n_t, (unsigned long long)r->size);
    f->kv = calloc((size_t)n_kv + 1, sizeof *f->kv);
    f->tensors = calloc((size_t)n_t + 1, sizeof *f->tensors);
    QT_CHECK(f->kv && f->tensors, "out of host memory");
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < n_kv; i++) {
        gguf_kv *kv = &f->kv[i];
        const uint8_t *s;
        uint64_t n;
        uint32_t t;
        if (rd_str(r, &s, &n, "a key")) return -1;
        kv->key = dup_n(s, n);
        f->n_kv = (int64_t)i + 1;
        if (n == 0 || strlen(kv->key) != n) return qt_errf(r->e, "%s: KV %llu has an empty key or a NUL inside it", r->path, (unsigned long long)i);
        for (uint64_t j = 0; j < i; j++)
            if (!strcmp(f->kv[j].key, kv->key)) return qt_errf(r->e, "%s: key %s appears twice (ggml rejects that)", r->path, kv->key);
        if (rd_u32(r, &t, kv->key)) return -1;
        if (t >= GGUF_NTYPES) return qt_errf(r->e, "%s: key %s has value type %u (0..12 exist)", r->path, kv->key, t);
        kv->type = (gguf_vtype)t;
        if (read_value(r, kv, kv->key)) return -1;
        if (!strcmp(kv->key, "general.alignment")) {
            if (kv->type != GGUF_U32) return qt_errf(r->e, "%s: general.alignment is %s; it must be UINT32", r->path, gguf_vtype_name(kv->type));
            uint32_t a;
            memcpy(&a, kv->data, 4);
            if (a == 0 || (a & (a - 1))) return qt_errf(r->e, "%s: general.alignment %u is not a power of two", r->path, a);
            f->alignment = a;
        }
    }
    uint64_t expect = 0;
    for (uint64_t i = 0; i < n_t; i++) {
        gguf_tensor_info *t = &f->tensors[i];
        const uint8_t *s;
        uint64_t n;
        uint32_t nd;
        if (rd_str(r, &s, &n, "a tensor name")) return -1;
        t->name = dup_n(s, n);
        f->n_tensors = (int64_t)i + 1;
        if (n == 0 || n > GGUF_MAX_NAME || strlen(t->name) != n)
            return qt_errf(r->e, "%s: tensor name '%s' (%llu bytes) is empty, has a NUL or is longer than %d bytes",
                           r->path, t->name, (unsigned long long)n, GGUF_MAX_NAME);
        for (uint64_t j = 0; j < i; j++)
            if (!strcmp(f->tensors[j].name, t->name)) return qt_errf(r->e, "%s: tensor %s appears twice", r->path, t->name);
        if (rd_u32(r, &nd, t->name)) return -1;
        if (nd < 1 || nd > GGUF_MAX_DIMS) return qt_errf(r->e, "%s: tensor %s has %u dims (1 to 4)", r->path, t->name, nd);
        t->n_dims = (int)nd;
        uint64_t numel = 1;
        for (int d = 0; d < GGUF_MAX_DIMS; d++) {
            uint64_t v = 1;
            if (d < t->n_dims && rd_u64(r, &v, t->name)) return -1;
            if (v > (uint64_t)INT64_MAX || (v && numel > (uint64_t)INT64_MAX / v))
                return qt_errf(r->e, "%s: tensor %s: dimension %llu overflows", r->path, t->name, (unsigned long long)v);
            t->ne[d] = (int64_t)v;
            numel *= v;
        }
        if (rd_u32(r, &t->type, t->name) || rd_u64(r, &t->offset, t->name)) return -1;
        int64_t blck;
        uint64_t bytes;
        if (!gguf_type_size(t->type, &blck, &bytes)) return qt_errf(r->e, "%s: tensor %s has unknown ggml type %u", r->path, t->name, t->type);
        if (t->ne[0] % blck) return qt_errf(r->e, "%s: tensor %s: ne[0] = %lld is not whole %s blocks of %lld", r->path, t->name,
                           (long long)t->ne[0], gguf_type_name(t->type), (long long)blck);
        /* bounded by the file before anything adds to it: a huge shape must not wrap to a small size */
        if (numel / (uint64_t)blck > r->size / bytes)
            return qt_errf(r->e, "%s: tensor %s: %llu values of %s need more bytes than the whole file has (%llu)",
                           r->path, t->name, (unsigned long long)numel, gguf_type_name(t->type),
                           (unsigned long long)r->size);
        t->nbytes = numel / (uint64_t)blck * bytes;
        if (t->offset != expect)
            return qt_errf(r->e, "%s: tensor %s: data offset %llu is not %llu, the running sum of the previous "
                                 "sizes (ggml requires it)", r->path, t->name, (unsigned long long)t->offset,
                           (unsigned long long)expect);
        if (t->offset > r->size)
            return qt_errf(r->e, "%s: tensor %s: data offset %llu is past the end of the file (%llu bytes); the file "
                                 "is incomplete", r->path, t->name, (unsigned long long)t->offset,
                           (unsigned long long)r->size);
        expect += pad_to(t->nbytes, f->alignment); /* <= 2 file sizes + alignment: no overflow */
    }
    f->data_start = pad_to(r->pos, f->alignment);
    for (int64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor_info *t = &f->tensors[i];
        if (f->data_start > r->size || t->offset + t->nbytes > r->size - f->data_start)
            return qt_errf(r->e, "%s: tensor %s: data runs past the end of the file (%llu bytes); the file is "
                                 "incomplete", r->path, t->name, (unsigned long long)r->size);
        t->data = r->p + f->data_start + t->offset;
    }
    return 0;
}

int gguf_open(gguf_file *f, const char *path, qt_err *e) {
    memset(f, 0, sizeof *f);
    uint64_t fsize;
    int fd = ck_open_file(path, &fsize, e);
    if (fd < 0) return -1;
    f->path = strdup(path);
    QT_CHECK(f->path, "out of host memory");
    f->size = (size_t)fsize;
    if (f->size > 0) {
        void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            close(fd);
            int rc = qt_errf(e, "%s: cannot map: %s", path, strerror(errno));
            gguf_close(f);
            return rc;
        }
        f->map = m;
    }
    close(fd);
    rd r = {.p = f->map, .size = f->size, .path = path, .e = e};
    if (parse(f, &r) != 0) {
        gguf_close(f);
        return -1;
    }
    return 0;
}

void gguf_close(gguf_file *f) {
    for (int64_t i = 0; i < f->n_kv; i++) {
        free((char *)f->kv[i].key);
        free((char *)f->kv[i].str);
        if (f->kv[i].strs) {
            for (uint64_t j = 0; j < f->kv[i].n; j++) free((char *)f->kv[i].strs[j]);
            free(f->kv[i].strs);
        }
    }
    for (int64_t i = 0; i < f->n_tensors; i++) free((char *)f->tensors[i].name);
    free(f->kv);
    free(f->tensors);
    if (f->map) munmap((void *)f->map, f->size);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const gguf_kv *gguf_find_kv(const gguf_file *f, const char *k) {
    for (int64_t i = 0; i < f->n_kv; i++)
        if (!strcmp(f->kv[i].key, k)) return &f->kv[i];
    return NULL;
}

const gguf_tensor_info *gguf_find_tensor(const gguf_file *f, const char *name) {
    for (int64_t i = 0; i < f->n_tensors; i++)
        if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

double gguf_kv_num(const gguf_kv *kv, uint64_t i) {
    gguf_vtype t = kv->type == GGUF_ARR ? kv->arr_type : kv->type;
    QT_CHECK(i < kv->n && t != GGUF_STR && t != GGUF_ARR, "gguf_kv_num(%s, %llu)", kv->key, (unsigned long long)i);
    const uint8_t *p = kv->data + i * (uint64_t)vtype_bytes[t];
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; float f; uint64_t u64;
            int64_t i64; double d; } v;
    memcpy(&v, p, (size_t)vtype_bytes[t]);
    switch (t) {
    case GGUF_U8: case GGUF_BOOL: return v.u8;
    case GGUF_I8: return v.i8;
    case GGUF_U16: return v.u16;
    case GGUF_I16: return v.i16;
    case GGUF_U32: return v.u32;
    case GGUF_I32: return v.i32;
    case GGUF_F32: return v.f;
    case GGUF_U64: return (double)v.u64;
    case GGUF_I64: return (double)v.i64;
    case GGUF_F64: return v.d;
    default: return 0;
    }
}

/* strict getters: the key must exist with exactly this type (llama.cpp's loader rule) */
static const gguf_kv *typed(const gguf_file *f, const char *k, gguf_vtype t, qt_err *e) {
    const gguf_kv *kv = gguf_find_kv(f, k);
    if (!kv) return qt_errf(e, "%s: key %s is missing", f->path, k), NULL;
    if (kv->type != t)
        return qt_errf(e, "%s: key %s is %s, expected %s", f->path, k, gguf_vtype_name(kv->type), gguf_vtype_name(t)), NULL;
    return kv;
}
int gguf_get_u32(const gguf_file *f, const char *k, uint32_t *v, qt_err *e) {
    const gguf_kv *kv = typed(f, k, GGUF_U32, e);
    return kv ? (memcpy(v, kv->data, 4), 0) : -1;
}
int gguf_get_f32(const gguf_file *f, const char *k, float *v, qt_err *e) {
    const gguf_kv *kv = typed(f, k, GGUF_F32, e);
    return kv ? (memcpy(v, kv->data, 4), 0) : -1;
}
int gguf_get_str(const gguf_file *f, const char *k, const char **v, qt_err *e) {
    const gguf_kv *kv = typed(f, k, GGUF_STR, e);
    return kv ? (*v = kv->str, 0) : -1;
}
