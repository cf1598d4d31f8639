/* safetensors reader/writer: round trips, layout rules, hostile files, sharded models.
 * (Interop with the independent `safetensors` package: tests/py/safetensors_interop.py.) */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoints/checkpoints.h"
#include "testutil.h"

static char g_dir[256];

static void rm_tree(const char *p) {
    struct stat sb;
    if (lstat(p, &sb) != 0) return;
    if (S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(p);
        struct dirent *de;
        while (d && (de = readdir(d))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
            char q[1024];
            snprintf(q, sizeof q, "%s/%s", p, de->d_name);
            rm_tree(q);
        }
        if (d) closedir(d);
        rmdir(p);
    } else {
        unlink(p);
    }
}
static void cleanup(void) { rm_tree(g_dir); }

static const char *tmp(const char *name) {
    static char buf[8][512];
    static int k;
    char *b = buf[k++ % 8];
    snprintf(b, 512, "%s/%s", g_dir, name);
    return b;
}

static uint8_t rbyte(void) { return (uint8_t)qt_rng_next(tu_rng()); }
static int rnd_int(int lo, int hi) { return lo + (int)(qt_rng_next(tu_rng()) % (uint64_t)(hi - lo + 1)); }

/* A file made by hand: 8-byte length N, then `hdr`, then data_len random bytes. */
static void write_raw(const char *path, uint64_t N, const char *hdr, size_t hdr_len, size_t data_len) {
    FILE *f = fopen(path, "wb");
    QT_CHECK(f, "cannot create %s", path);
    uint8_t le[8];
    for (int i = 0; i < 8; i++) le[i] = (uint8_t)(N >> (8 * i));
    fwrite(le, 1, 8, f);
    fwrite(hdr, 1, hdr_len, f);
    for (size_t i = 0; i < data_len; i++) fputc(rbyte(), f);
    fclose(f);
}
static void mk(const char *path, const char *json, size_t data_len) {
    write_raw(path, strlen(json), json, strlen(json), data_len);
}

/* ------------------------------------------------------------------ round trip */

typedef struct { st_wtensor w; uint8_t *bytes; size_t nbytes; char name[64]; } rt_tensor;

static void round_trip(void) {
    static const st_dtype dts[] = {ST_F32, ST_BF16, ST_F16, ST_F64, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8,
                                   ST_BOOL, ST_U16, ST_U32, ST_U64, ST_F8_E4M3};
    /* Names that need JSON escaping or sort byte-wise ("layers.10" < "layers.2"). */
    static const char *special[] = {"model.layers.10.w", "model.layers.2.w", "quote\"back\\slash", "tab\tnl\nctl\x01",
                                    "utf8 \xc3\xa9\xe2\x82\xac"};
    enum { NT = 23 };
    rt_tensor T[NT];
    st_wtensor W[NT];
    for (int i = 0; i < NT; i++) {
        rt_tensor *t = &T[i];
        memset(t, 0, sizeof *t);
        if (i < 5) snprintf(t->name, sizeof t->name, "%s", special[i]);
        else snprintf(t->name, sizeof t->name, "t.%d.%d", rnd_int(0, 99), i);
        t->w.name = t->name;
        t->w.dtype = dts[rnd_int(0, (int)(sizeof dts / sizeof dts[0]) - 1)];
        t->w.ndim = i == 7 ? 0 : rnd_int(1, 4); /* one scalar */
        int64_t numel = 1;
        for (int d = 0; d < t->w.ndim; d++) {
            t->w.shape[d] = (i == 8 && d == 0) ? 0 : rnd_int(1, 9); /* one empty tensor */
            numel *= t->w.shape[d];
        }
        t->nbytes = (size_t)numel * (size_t)st_dtype_bits(t->w.dtype) / 8;
        t->bytes = malloc(t->nbytes + 1);
        for (size_t b = 0; b < t->nbytes; b++) t->bytes[b] = rbyte(); /* any bit pattern, NaNs included */
        t->w.data = t->bytes;
        W[i] = t->w;
    }
    st_kv meta[2] = {{"purpose", "test \"round\" trip"}, {"seed", "\xc3\xa9"}};
    qt_err e = {{0}};
    const char *p = tmp("rt.safetensors");
    int rc = st_write(p, W, NT, meta, 2, &e);
    TU_EXPECT(rc == 0, "st_write: %s", e.msg);
    st_file f;
    rc = st_open(&f, p, &e);
    TU_EXPECT(rc == 0, "st_open of our own file: %s", e.msg);
    if (rc) return;
    TU_EXPECT(f.n_tensors == NT, "%d tensors read back, %d written", f.n_tensors, NT);
    TU_EXPECT(f.header_len % 8 == 0, "header length %llu is not a multiple of 8", (unsigned long long)f.header_len);
    TU_EXPECT(f.n_meta == 3 && st_meta_get(&f, "format") && !strcmp(st_meta_get(&f, "format"), "pt"),
              "metadata should hold format=pt plus ours (%d entries)", f.n_meta);
    TU_EXPECT(!strcmp(f.meta[0].key, "format"), "format should come first, got %s", f.meta[0].key);
    for (int i = 0; i < 2; i++) {
        const char *v = st_meta_get(&f, meta[i].key);
        TU_EXPECT(v && !strcmp(v, meta[i].value), "metadata %s", meta[i].key);
    }
    for (int i = 0; i < NT; i++) {
        const st_tensor *t = st_find(&f, T[i].name);
        TU_EXPECT(t, "tensor '%s' missing", T[i].name);
        if (!t) continue;
        TU_EXPECT(t->dtype == T[i].w.dtype && t->ndim == T[i].w.ndim, "%s: dtype/ndim", T[i].name);
        for (int d = 0; d < t->ndim; d++) TU_EXPECT(t->shape[d] == T[i].w.shape[d], "%s shape[%d]", T[i].name, d);
        TU_EXPECT(t->end - t->begin == T[i].nbytes && !memcmp(t->data, T[i].bytes, T[i].nbytes),
                  "%s: bytes differ", T[i].name);
        /* writer convention: every tensor starts at a multiple of its element size in the file */
        size_t es = (size_t)st_dtype_bits(t->dtype) / 8;
        TU_EXPECT((8 + f.header_len + t->begin) % es == 0, "%s misaligned", t->name);
    }
    /* Layout order: by dtype (enum order) descending, then name byte-wise. */
    const st_tensor *ord[NT];
    for (int i = 0; i < NT; i++) ord[i] = &f.tensors[i];
    for (int i = 0; i < NT; i++)
        for (int j = i + 1; j < NT; j++)
            if (ord[j]->begin < ord[i]->begin || (ord[j]->begin == ord[i]->begin && ord[j]->end < ord[i]->end)) {
                const st_tensor *x = ord[i];
                ord[i] = ord[j], ord[j] = x;
            }
    for (int i = 1; i < NT; i++)
        TU_EXPECT(ord[i - 1]->dtype > ord[i]->dtype ||
                      (ord[i - 1]->dtype == ord[i]->dtype && strcmp(ord[i - 1]->name, ord[i]->name) < 0),
                  "layout order: %s (%s) before %s (%s)", ord[i - 1]->name, st_dtype_name(ord[i - 1]->dtype),
                  ord[i]->name, st_dtype_name(ord[i]->dtype));
    /* Conversions, checked against bit-level decoding done here. */
    for (int i = 0; i < NT; i++) {
        const st_tensor *t = st_find(&f, T[i].name);
        if (!t || t->numel == 0) continue;
        double *v = malloc(sizeof *v * (size_t)t->numel);
        float *g = malloc(sizeof *g * (size_t)t->numel);
        int r64 = st_read_f64(t, 0, t->numel, v, &e), r32 = st_read_f32(t, 0, t->numel, g, &e);
        if (t->dtype == ST_F8_E4M3) {
            TU_EXPECT(r64 == -1 && r32 == -1 && strstr(e.msg, "F8_E4M3") && strstr(e.msg, "cannot convert"),
                      "F8 read should be refused by name: %s", e.msg);
        } else {
            TU_EXPECT(r64 == 0 && r32 == 0, "%s: read failed: %s", t->name, e.msg);
            for (int64_t k = 0; k < t->numel; k++) {
                const uint8_t *b = T[i].bytes + (size_t)k * (size_t)st_dtype_bits(t->dtype) / 8;
                double want;
                uint64_t u = 0;
                for (int q = st_dtype_bits(t->dtype) / 8 - 1; q >= 0; q--) u = u << 8 | b[q];
                switch (t->dtype) {
                case ST_F32: { uint32_t x = (uint32_t)u; float fl; memcpy(&fl, &x, 4); want = fl; break; }
                case ST_BF16: { uint32_t x = (uint32_t)u << 16; float fl; memcpy(&fl, &x, 4); want = fl; break; }
                case ST_F16: want = qt_f16_to_f32((uint16_t)u); break;
                case ST_F64: memcpy(&want, &u, 8); break;
                case ST_I64: want = (double)(int64_t)u; break;
                case ST_I32: want = (int32_t)(uint32_t)u; break;
                case ST_I16: want = (int16_t)(uint16_t)u; break;
                case ST_I8: want = (int8_t)(uint8_t)u; break;
                default: want = (double)u; break; /* unsigned and BOOL */
                }
                bool same = (isnan(want) && isnan(v[k])) || want == v[k];
                bool same32 = (isnan(want) && isnan(g[k])) || (float)want == g[k];
                if (!same || !same32) {
                    TU_EXPECT(0, "%s[%lld]: read %g / %g, expected %g", t->name, (long long)k, v[k], g[k], want);
                    break;
                }
            }
            /* A chunk from the middle. */
            if (t->numel > 3) {
                double c[2];
                st_read_f64(t, t->numel / 2, 2, c, &e);
                TU_EXPECT((isnan(c[0]) && isnan(v[t->numel / 2])) || c[0] == v[t->numel / 2], "%s: chunked read", t->name);
            }
        }
        free(v);
        free(g);
    }
    st_close(&f);
    /* No temp file left beside the result. */
    DIR *d = opendir(g_dir);
    struct dirent *de;
    while (d && (de = readdir(d))) TU_EXPECT(!strstr(de->d_name, ".tmp."), "leftover temp file %s", de->d_name);
    if (d) closedir(d);
    for (int i = 0; i < NT; i++) free(T[i].bytes);
}

/* st_to_qt: conversions into qt tensors, unaligned data, refusals. */
static void to_qt(void) {
    qt_ctx *c = tu_ctx(QT_CPU);
    qt_err e = {{0}};
    /* An F32 tensor at an odd address: header length chosen so 8 + N is odd. */
    char hdr[128];
    int n = 7;
    int k = snprintf(hdr, sizeof hdr, "{\"a\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[0,%d]}}", n, 4 * n);
    while ((8 + k) % 2 == 0) hdr[k++] = ' ';
    float vals[7];
    for (int i = 0; i < n; i++) vals[i] = (float)qt_rng_normal(tu_rng());
    FILE *fp = fopen(tmp("odd.safetensors"), "wb");
    uint8_t le[8] = {(uint8_t)k};
    fwrite(le, 1, 8, fp);
    fwrite(hdr, 1, (size_t)k, fp);
    fwrite(vals, 4, (size_t)n, fp);
    fclose(fp);
    st_file f;
    TU_EXPECT(st_open(&f, tmp("odd.safetensors"), &e) == 0, "unaligned file: %s", e.msg);
    if (f.n_tensors == 1) {
        TU_EXPECT((uintptr_t)f.tensors[0].data % 4 != 0, "test setup: data should be misaligned");
        int64_t s[1] = {n};
        qt_tensor *d32 = qt_empty(c, QT_PERSIST, QT_F32, 1, s), *d64 = qt_empty(c, QT_PERSIST, QT_F64, 1, s);
        TU_EXPECT(st_to_qt(&f.tensors[0], d32, &e) == 0 && st_to_qt(&f.tensors[0], d64, &e) == 0, "%s", e.msg);
        for (int i = 0; i < n; i++)
            TU_EXPECT(((float *)d32->data)[i] == vals[i] && ((double *)d64->data)[i] == vals[i], "value %d", i);
        qt_tensor *i32 = qt_empty(c, QT_PERSIST, QT_I32, 1, s);
        TU_EXPECT(st_to_qt(&f.tensors[0], i32, &e) == -1 && strstr(e.msg, "cannot be loaded"), "float->int: %s", e.msg);
        int64_t s8[1] = {n + 1};
        qt_tensor *big = qt_empty(c, QT_PERSIST, QT_F32, 1, s8);
        TU_EXPECT(st_to_qt(&f.tensors[0], big, &e) == -1 && strstr(e.msg, "elements"), "numel mismatch: %s", e.msg);
        st_close(&f);
    }
    /* Integers: I64 into I32 (range-checked) and into float; BF16 into F32 and BF16. */
    int64_t ints[5] = {-3, 0, 7, 2147483647, -2147483648LL};
    uint16_t bf[5];
    for (int i = 0; i < 5; i++) bf[i] = qt_f32_to_bf16((float)qt_rng_normal(tu_rng()));
    int64_t big[2] = {1, (int64_t)1 << 40};
    st_wtensor w[3] = {{.name = "ints", .dtype = ST_I64, .ndim = 1, .shape = {5}, .data = ints},
                       {.name = "bf", .dtype = ST_BF16, .ndim = 2, .shape = {1, 5}, .data = bf},
                       {.name = "big", .dtype = ST_I64, .ndim = 1, .shape = {2}, .data = big}};
    TU_EXPECT(st_write(tmp("ints.safetensors"), w, 3, NULL, 0, &e) == 0, "%s", e.msg);
    if (st_open(&f, tmp("ints.safetensors"), &e) == 0) {
        int64_t s[1] = {5}, s2[1] = {2};
        qt_tensor *i32 = qt_empty(c, QT_PERSIST, QT_I32, 1, s), *f64 = qt_empty(c, QT_PERSIST, QT_F64, 1, s);
        TU_EXPECT(st_to_qt(st_find(&f, "ints"), i32, &e) == 0 && st_to_qt(st_find(&f, "ints"), f64, &e) == 0, "%s", e.msg);
        for (int i = 0; i < 5; i++)
            TU_EXPECT(((int32_t *)i32->data)[i] == ints[i] && ((double *)f64->data)[i] == (double)ints[i], "int %d", i);
        qt_tensor *b32 = qt_empty(c, QT_PERSIST, QT_F32, 1, s), *b16 = qt_empty(c, QT_PERSIST, QT_BF16, 1, s);
        TU_EXPECT(st_to_qt(st_find(&f, "bf"), b32, &e) == 0 && st_to_qt(st_find(&f, "bf"), b16, &e) == 0, "%s", e.msg);
        for (int i = 0; i < 5; i++)
            TU_EXPECT(((float *)b32->data)[i] == qt_bf16_to_f32(bf[i]) && ((uint16_t *)b16->data)[i] == bf[i], "bf %d", i);
        qt_tensor *o32 = qt_empty(c, QT_PERSIST, QT_I32, 1, s2);
        TU_EXPECT(st_to_qt(st_find(&f, "big"), o32, &e) == -1 && strstr(e.msg, "does not fit") && strstr(e.msg, "big"),
                  "out-of-range int: %s", e.msg);
        st_close(&f);
    }
}

/* ------------------------------------------------------------------ hostile files */

typedef struct { const char *what, *json; size_t data; const char *phrase; } bad_case;

static void hostile(void) {
    static const bad_case cases[] = {
        {"header not JSON", "{not json}", 0, "not valid JSON"},
        {"trailing garbage", "{} x", 0, "unexpected bytes after"},
        {"not an object", " {}", 0, "must start with '{'"},
        {"dtype F7", "{\"a\":{\"dtype\":\"F7\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "unknown dtype 'F7'"},
        {"dtype not a string", "{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "dtype must be a string"},
        {"shape negative", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1,3],\"data_offsets\":[0,0]}}", 0, "shape[0] is not a non-negative integer"},
        {"shape fraction", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,1.5],\"data_offsets\":[0,12]}}", 12, "shape[1] is not a non-negative integer"},
        {"shape overflow", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4503599627370496,4503599627370496],\"data_offsets\":[0,4]}}", 4, "overflows"},
        {"too many dims", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1, "at most 8"},
        {"offsets overlap", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", 24, "overlap"},
        {"offsets out of range", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[100,116]}}", 16, "past the end of the data section"},
        {"end-begin mismatch", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", 16, "need 12"},
        {"begin > end", "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8, "begin > end"},
        {"gap", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}", 20, "belong to no tensor"},
        {"not starting at 0", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "belong to no tensor"},
        {"trailing data", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 13, "5 extra bytes"},
        {"missing offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "lacks 'data_offsets'"},
        {"offsets not a pair", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, "[begin, end]"},
        {"duplicate name", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2, "appears twice"},
        {"metadata a list", "{\"__metadata__\":[\"format\",\"pt\"]}", 0, "__metadata__ must be an object"},
        {"metadata twice", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, "__metadata__ appears twice"},
        {"metadata not strings", "{\"__metadata__\":{\"format\":1}}", 0, "non-string value"},
        {"entry not an object", "{\"a\":[1,2]}", 0, "not an object"},
        {"bad utf-8", "{\"\xff\":{}}", 0, "not valid UTF-8"},
    };
    qt_err e;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const bad_case *b = &cases[i];
        const char *p = tmp("bad.safetensors");
        mk(p, b->json, b->data);
        st_file f;
        memset(&e, 0, sizeof e);
        int rc = st_open(&f, p, &e);
        TU_EXPECT(rc == -1 && strstr(e.msg, b->phrase) && strstr(e.msg, p), "%s: rc %d, message '%s' should contain '%s'",
                  b->what, rc, e.msg, b->phrase);
        TU_EXPECT(f.map == NULL && f.tensors == NULL, "%s: st_file not cleared after failure", b->what);
        if (getenv("QT_TEST_VERBOSE")) printf("  %-22s -> %s\n", b->what, e.msg);
        if (rc == 0) st_close(&f);
    }
    /* Byte-level cases: lengths that lie, files cut short. */
    struct { const char *what; uint64_t N; size_t total; const char *phrase; } raw[] = {
        {"huge header length", (uint64_t)1 << 40, 64, "exceeds the 100,000,000-byte limit"},
        {"header length beyond file", 1000, 100, "runs past the end of the file"},
        {"shorter than 8 bytes", 0, 5, "too short"},
        {"empty file", 0, 0, "too short"},
        {"zero header length", 0, 8, "must start with '{'"},
    };
    for (size_t i = 0; i < sizeof raw / sizeof raw[0]; i++) {
        const char *p = tmp("raw.safetensors");
        FILE *fp = fopen(p, "wb");
        uint8_t buf[128] = {0};
        for (int k = 0; k < 8; k++) buf[k] = (uint8_t)(raw[i].N >> (8 * k));
        for (size_t k = 8; k < sizeof buf; k++) buf[k] = '{';
        fwrite(buf, 1, raw[i].total, fp);
        fclose(fp);
        st_file f;
        int rc = st_open(&f, p, &e);
        TU_EXPECT(rc == -1 && strstr(e.msg, raw[i].phrase), "%s: rc %d, '%s' should contain '%s'", raw[i].what, rc,
                  e.msg, raw[i].phrase);
        if (rc == 0) st_close(&f);
    }
    /* A good file cut short: the data is missing, not the header. */
    float x[6] = {1, 2, 3, 4, 5, 6};
    st_wtensor w[2] = {{.name = "a", .dtype = ST_F32, .ndim = 1, .shape = {4}, .data = x},
                       {.name = "b", .dtype = ST_F32, .ndim = 1, .shape = {2}, .data = x + 4}};
    const char *p = tmp("cut.safetensors");
    TU_EXPECT(st_write(p, w, 2, NULL, 0, &e) == 0, "%s", e.msg);
    struct stat sb;
    stat(p, &sb);
    TU_EXPECT(truncate(p, sb.st_size - 5) == 0, "truncate");
    st_file f;
    int rc = st_open(&f, p, &e);
    TU_EXPECT(rc == -1 && strstr(e.msg, "truncated") && strstr(e.msg, "'b'"), "truncated data: '%s'", e.msg);
    TU_EXPECT(st_open(&f, tmp("does-not-exist"), &e) == -1 && strstr(e.msg, "cannot open"), "missing file: %s", e.msg);
    TU_EXPECT(st_open(&f, g_dir, &e) == -1 && strstr(e.msg, "not a regular file"), "directory: %s", e.msg);

    /* Random damage to a valid file never crashes; whatever opens is in bounds. */
    uint8_t *good;
    size_t glen;
    {
        float y[33];
        for (int i = 0; i < 33; i++) y[i] = (float)i;
        st_wtensor v[3] = {{.name = "x", .dtype = ST_F32, .ndim = 2, .shape = {3, 5}, .data = y},
                           {.name = "y", .dtype = ST_BF16, .ndim = 1, .shape = {7}, .data = y},
                           {.name = "z", .dtype = ST_U8, .ndim = 1, .shape = {11}, .data = y}};
        TU_EXPECT(st_write(p, v, 3, NULL, 0, &e) == 0, "%s", e.msg);
        good = (uint8_t *)ck_read_file(p, 1 << 20, &glen, &e);
    }
    int opened = 0;
    for (int it = 0; it < 3000; it++) {
        uint8_t *m = malloc(glen + 16);
        memcpy(m, good, glen);
        size_t len = glen;
        int kind = rnd_int(0, 3);
        if (kind == 0) len = (size_t)rnd_int(0, (int)glen - 1);
        else if (kind == 1) m[rnd_int(0, (int)glen - 1)] = rbyte();
        else if (kind == 2) m[rnd_int(0, 7)] = rbyte();
        else m[8 + rnd_int(0, (int)(good[0] | good[1] << 8) - 1)] = (uint8_t)"{}[]\",:0123456789 -.e\\"[rnd_int(0, 21)];
        FILE *fp = fopen(p, "wb");
        fwrite(m, 1, len, fp);
        fclose(fp);
        free(m);
        if (st_open(&f, p, &e) == 0) {
            opened++;
            for (int i = 0; i < f.n_tensors; i++)
                TU_EXPECT(f.tensors[i].data + (f.tensors[i].end - f.tensors[i].begin) <= f.map + f.size,
                          "mutant %d: tensor out of the mapping", it);
            st_close(&f);
        }
    }
    printf("fuzz: %d of 3000 damaged files still opened (the damage kept the header valid), none crashed\n", opened);
    free(good);
}

/* ------------------------------------------------------------------ sharded models */

static void write_text(const char *path, const char *s) {
    FILE *f = fopen(path, "w");
    fputs(s, f);
    fclose(f);
}

static void sharded(void) {
    qt_err e;
    mkdir(tmp("m"), 0755);
    float a[12], b[5];
    uint16_t c[6];
    for (int i = 0; i < 12; i++) a[i] = (float)qt_rng_normal(tu_rng());
    for (int i = 0; i < 5; i++) b[i] = (float)qt_rng_normal(tu_rng());
    for (int i = 0; i < 6; i++) c[i] = qt_f32_to_bf16((float)qt_rng_normal(tu_rng()));
    st_wtensor s1[2] = {{.name = "model.a", .dtype = ST_F32, .ndim = 2, .shape = {3, 4}, .data = a},
                        {.name = "model.b", .dtype = ST_F32, .ndim = 1, .shape = {5}, .data = b}};
    st_wtensor s2[1] = {{.name = "lm_head.weight", .dtype = ST_BF16, .ndim = 2, .shape = {2, 3}, .data = c}};
    TU_EXPECT(st_write(tmp("m/model-00001-of-00002.safetensors"), s1, 2, NULL, 0, &e) == 0, "%s", e.msg);
    TU_EXPECT(st_write(tmp("m/model-00002-of-00002.safetensors"), s2, 1, NULL, 0, &e) == 0, "%s", e.msg);
    const char *idx = "{\"metadata\":{\"total_size\":80},\"weight_map\":{"
                      "\"lm_head.weight\":\"model-00002-of-00002.safetensors\","
                      "\"model.a\":\"model-00001-of-00002.safetensors\","
                      "\"model.b\":\"model-00001-of-00002.safetensors\"}}";
    write_text(tmp("m/model.safetensors.index.json"), idx);
    st_model m;
    int rc = st_model_open(&m, tmp("m"), &e);
    TU_EXPECT(rc == 0, "sharded open: %s", e.msg);
    if (rc == 0) {
        TU_EXPECT(m.n_files == 2 && m.n_tensors == 3, "%d files, %d tensors", m.n_files, m.n_tensors);
        const st_tensor *t = st_model_find(&m, "model.b");
        float got[5];
        TU_EXPECT(t && st_read_f32(t, 0, 5, got, &e) == 0 && !memcmp(got, b, sizeof b), "model.b values");
        t = st_model_find(&m, "lm_head.weight");
        TU_EXPECT(t && t->dtype == ST_BF16 && strstr(t->file, "00002"), "lm_head in shard 2");
        TU_EXPECT(!st_model_find(&m, "model.c") && !st_model_find(&m, ""), "absent names");
        st_model_close(&m);
    }
    /* The index file itself, and a shard file directly. */
    TU_EXPECT(st_model_open(&m, tmp("m/model.safetensors.index.json"), &e) == 0 && m.n_tensors == 3, "%s", e.msg);
    st_model_close(&m);
    TU_EXPECT(st_model_open(&m, tmp("m/model-00002-of-00002.safetensors"), &e) == 0 && m.n_tensors == 1, "%s", e.msg);
    st_model_close(&m);

    struct { const char *what, *index, *phrase; } bad[] = {
        {"wrong shard", "{\"weight_map\":{\"model.a\":\"model-00002-of-00002.safetensors\"}}", "has no such tensor"},
        {"missing shard", "{\"weight_map\":{\"model.a\":\"model-00003-of-00003.safetensors\"}}", "is missing"},
        {"path in shard name", "{\"weight_map\":{\"model.a\":\"../x.safetensors\"}}", "shard file name"},
        {"no weight_map", "{\"metadata\":{}}", "weight_map"},
        {"not json", "{\"weight_map\":", "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_text(tmp("m/model.safetensors.index.json"), bad[i].index);
        rc = st_model_open(&m, tmp("m"), &e);
        TU_EXPECT(rc == -1 && strstr(e.msg, bad[i].phrase), "%s: '%s' should contain '%s'", bad[i].what, e.msg,
                  bad[i].phrase);
        if (rc == 0) st_model_close(&m);
    }
    /* The same tensor in two shards. */
    st_wtensor s3[2] = {s2[0], s1[1]};
    TU_EXPECT(st_write(tmp("m/model-00002-of-00002.safetensors"), s3, 2, NULL, 0, &e) == 0, "%s", e.msg);
    write_text(tmp("m/model.safetensors.index.json"), idx);
    rc = st_model_open(&m, tmp("m"), &e);
    TU_EXPECT(rc == -1 && strstr(e.msg, "in two shards") && strstr(e.msg, "model.b"), "duplicate across shards: '%s'", e.msg);
    /* A single model.safetensors wins over an index (as in transformers). */
    TU_EXPECT(st_write(tmp("m/model.safetensors"), s2, 1, NULL, 0, &e) == 0, "%s", e.msg);
    TU_EXPECT(st_model_open(&m, tmp("m"), &e) == 0 && m.n_files == 1 && st_model_find(&m, "lm_head.weight"), "%s", e.msg);
    st_model_close(&m);
    /* Pickle-only and empty folders. */
    mkdir(tmp("pt"), 0755);
    write_text(tmp("pt/config.json"), "{}");
    write_text(tmp("pt/pytorch_model-00001-of-00002.bin"), "x");
    rc = st_model_open(&m, tmp("pt"), &e);
    TU_EXPECT(rc == -1 && strstr(e.msg, "pytorch_model-00001-of-00002.bin") && strstr(e.msg, "save_pretrained"),
              "pickle-only folder: '%s'", e.msg);
    mkdir(tmp("empty"), 0755);
    rc = st_model_open(&m, tmp("empty"), &e);
    TU_EXPECT(rc == -1 && strstr(e.msg, "no model.safetensors"), "empty folder: '%s'", e.msg);
}

/* Writer refusals and atomic replacement. */
static void writer_errors(void) {
    qt_err e;
    float x[2] = {1, 2};
    st_wtensor w[2] = {{.name = "a", .dtype = ST_F32, .ndim = 1, .shape = {2}, .data = x},
                       {.name = "a", .dtype = ST_F16, .ndim = 1, .shape = {1}, .data = x}};
    TU_EXPECT(st_write(tmp("dup.safetensors"), w, 2, NULL, 0, &e) == -1 && strstr(e.msg, "given twice"), "%s", e.msg);
    TU_EXPECT(st_write(tmp("no/such/dir/x.safetensors"), w, 1, NULL, 0, &e) == -1 && strstr(e.msg, "cannot create"),
              "%s", e.msg);
    st_kv md[1] = {{"format", "pt"}};
    w[1].name = "__metadata__";
    TU_EXPECT(st_write(tmp("r.safetensors"), w, 2, md, 1, &e) == -1 && strstr(e.msg, "reserved"), "%s", e.msg);
    /* Replacing a file: readers holding the old mapping keep their bytes. */
    const char *p = tmp("replace.safetensors");
    TU_EXPECT(st_write(p, w, 1, md, 1, &e) == 0, "%s", e.msg);
    st_file old;
    TU_EXPECT(st_open(&old, p, &e) == 0, "%s", e.msg);
    float y[2] = {3, 4};
    w[0].data = y;
    TU_EXPECT(st_write(p, w, 1, md, 1, &e) == 0, "%s", e.msg);
    st_file nw;
    TU_EXPECT(st_open(&nw, p, &e) == 0, "%s", e.msg);
    float a[2], b[2];
    st_read_f32(&old.tensors[0], 0, 2, a, &e);
    st_read_f32(&nw.tensors[0], 0, 2, b, &e);
    TU_EXPECT(a[0] == 1 && a[1] == 2 && b[0] == 3 && b[1] == 4, "old mapping %g %g, new %g %g", a[0], a[1], b[0], b[1]);
    TU_EXPECT(nw.n_meta == 1, "format given by the caller is not duplicated (%d entries)", nw.n_meta);
    st_close(&old);
    st_close(&nw);
    /* Empty file: header "{...}" only, still valid. */
    TU_EXPECT(st_write(tmp("none.safetensors"), NULL, 0, NULL, 0, &e) == 0 && st_open(&nw, tmp("none.safetensors"), &e) == 0 &&
                  nw.n_tensors == 0,
              "empty file: %s", e.msg);
    st_close(&nw);
}

int qt_test_cpu(void) {
    const char *base = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/qt_st_XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(g_dir)) {
        fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    atexit(cleanup);
    round_trip();
    to_qt();
    hostile();
    sharded();
    writer_errors();
    return 0;
}
