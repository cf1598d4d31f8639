/* The NF4 disk cache (trainer/nf4_cache.h): fresh random weights quantized by nf4_quantize,
 * written through the cache and read back into newly allocated tensors must equal the
 * originals in every byte and constant; the key must follow config.json, the shards' size,
 * mtime and symlink target, dq and the variant; a damaged cache (missing marker, truncated
 * or reshaped or corrupted layer file, foreign file, unfinished writer) must read as "not
 * usable" with a message naming the file, never crash and never hand back wrong data. The
 * GPU part reads into device and pinned arenas and writes from device-quantized tensors. */
#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "quant/quant.h"
#include "testutil.h"
#include "trainer/nf4_cache.h"

#define QT_TEST_HAS_CUDA

static char g_dir[] = "/tmp/qt_nf4c_XXXXXX";

static void cleanup(void) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
}

static char *pjoin(const char *a, const char *b) {
    static char buf[4][512];
    static int k;
    char *p = buf[k++ & 3];
    int n = snprintf(p, 512, "%s/%s", a, b);
    QT_CHECK(n > 0 && n < 512, "path too long");
    return p;
}

static void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    QT_CHECK(f && fwrite(data, 1, n, f) == n && fclose(f) == 0, "cannot write %s", path);
}

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    QT_CHECK(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(*n + 1);
    QT_CHECK(p && fread(p, 1, *n, f) == *n, "cannot read %s", path);
    fclose(f);
    return p;
}

/* ------------------------------------------------------------------ the model under test */

#define NL 3  /* layers */
#define NT 4  /* tensors per layer */

typedef struct { int ndim; int64_t shape[2]; } shp;
/* odd n, n % 64 != 0, 1-D, more than 256 blocks (two nested scales), exactly 64 */
static const shp shapes[NL][NT] = {
    {{2, {7, 129}}, {1, {63}}, {2, {64, 1}}, {2, {129, 259}}},
    {{2, {3, 5}}, {2, {33, 1000}}, {1, {1}}, {2, {1, 16385}}},
    {{2, {130, 257}}, {1, {16384}}, {2, {2, 32}}, {2, {11, 13}}},
};
static const char *tnames[NT] = {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "mlp.up_proj.weight",
                                 "mlp.down_proj.weight"};

typedef struct { nf4_tensor q[NL][NT]; } model_q;

/* Quantize fresh random weights: per tensor a random range and dtype, and a few blocks of
 * exact zeros (absmax 0). */
static void make_model(qt_ctx *c, bool dq, model_q *m) {
    qt_dtype dts[2] = {QT_F32, QT_BF16};
    for (int l = 0; l < NL; l++)
        for (int k = 0; k < NT; k++) {
            const shp *s = &shapes[l][k];
            double hi = 0.01 + (double)(qt_rng_next(tu_rng()) % 1000) / 100.0;
            qt_tensor *w = tu_rand(c, dts[(l + k) % 2], s->ndim, s->shape, -hi, hi * 0.5);
            if (w->numel > 200) { /* a zero block */
                float *v = malloc(sizeof(float) * (size_t)w->numel);
                qt_download(w, v, QT_F32);
                memset(v + 64, 0, 64 * sizeof(float));
                qt_upload(w, v, QT_F32);
                free(v);
            }
            qt_err e;
            QT_CHECK(nf4_quantize(c, QT_PERSIST, w, dq, &m->q[l][k], &e) == 0, "%s", e.msg);
            snprintf(m->q[l][k].name, sizeof m->q[l][k].name, "model.layers.%d.%s", l, tnames[k]);
        }
}

/* Byte equality of every array and constant; 0 when equal. Both on the host. */
static int nf4_diff(const nf4_tensor *a, const nf4_tensor *b, const char *what) {
    char why[128] = "";
    if (a->ndim != b->ndim || a->shape[0] != b->shape[0] || a->shape[1] != b->shape[1] || a->n != b->n ||
        a->nblocks != b->nblocks || a->nblocks2 != b->nblocks2 || a->dq != b->dq)
        snprintf(why, sizeof why, "header");
    else if (memcmp(a->codes, b->codes, (size_t)(a->n + 1) / 2))
        snprintf(why, sizeof why, "codes");
    else if (a->dq && memcmp(a->absmax_q, b->absmax_q, (size_t)a->nblocks))
        snprintf(why, sizeof why, "absmax_q");
    else if (a->dq && memcmp(a->absmax2, b->absmax2, 4 * (size_t)a->nblocks2))
        snprintf(why, sizeof why, "absmax2");
    else if (a->dq && memcmp(&a->offset, &b->offset, 4))
        snprintf(why, sizeof why, "offset %.9g vs %.9g", (double)a->offset, (double)b->offset);
    else if (a->dq && memcmp(a->dmap, b->dmap, sizeof a->dmap))
        snprintf(why, sizeof why, "dmap");
    else if (!a->dq && memcmp(a->absmax, b->absmax, 4 * (size_t)a->nblocks))
        snprintf(why, sizeof why, "absmax");
    if (why[0]) fprintf(stderr, "  %s: %s differs\n", what, why);
    return why[0] != 0;
}

/* A fresh tensor of q's shape in arena a, filled with 0xA5 so unwritten bytes show. */
static void alloc_like(nf4_tensor *d, qt_arena *a, const nf4_tensor *q) {
    nf4_alloc(d, a, q->ndim, q->shape, q->dq);
    if (a->dev == QT_CPU) {
        memset(d->codes, 0xA5, (size_t)(d->n + 1) / 2);
        if (d->dq) memset(d->absmax_q, 0xA5, (size_t)d->nblocks), memset(d->absmax2, 0xA5, 4 * (size_t)d->nblocks2);
        else memset(d->absmax, 0xA5, 4 * (size_t)d->nblocks);
        d->offset = -1;
    }
}

static int write_cache(const char *cache, const char *key, const model_q *m) {
    nf4c_writer w;
    qt_err e;
    int rc = nf4c_writer_open(&w, cache, key, NL, &e);
    for (int l = 0; l < NL && rc == 0; l++)
        for (int k = 0; k < NT && rc == 0; k++) rc = nf4c_add(&w, l, tnames[k], &m->q[l][k], &e);
    if (rc == 0) rc = nf4c_writer_commit(&w, &e);
    if (rc) fprintf(stderr, "  write: %s\n", e.msg);
    nf4c_writer_close(&w);
    return rc;
}

/* Read every tensor back (layers in the order given) into arena a and compare. Returns the
 * number of tensors that failed to read (err gets the first message) and counts byte
 * differences among those read in *wrong. */
static int read_all(const char *cache, const char *key, const model_q *m, qt_arena *a, int *wrong, qt_err *err) {
    nf4c_reader r;
    qt_err e;
    int o = nf4c_open(&r, cache, key, &e), fails = 0;
    *wrong = 0;
    if (o != 1) {
        if (err) *err = e;
        if (o == 0 && err) snprintf(err->msg, sizeof err->msg, "(no cache)");
        return NL * NT;
    }
    static const int order[NL] = {1, 0, 2};
    for (int i = 0; i < NL; i++) {
        int l = order[i];
        for (int k = NT - 1; k >= 0; k--) {
            size_t mark = qt_arena_mark(a);
            nf4_tensor d;
            alloc_like(&d, a, &m->q[l][k]);
            if (nf4c_read(&r, l, tnames[k], &d, &e) != 0) {
                if (!fails++ && err) *err = e;
            } else {
                TU_EXPECT(r.cur == l, "the mapped layer is %d, not %d", r.cur, l);
                TU_EXPECT(strcmp(d.name, tnames[k]) == 0, "name '%s'", d.name);
                nf4_tensor h = d;
                if (a->dev != QT_CPU) { /* back to the host to compare */
                    qt_ctx *cc = tu_ctx(QT_CPU);
                    alloc_like(&h, &cc->data[QT_STEP], &d);
                    nf4_copy(&h, &d);
                }
                char what[96];
                snprintf(what, sizeof what, "layer %d %s", l, tnames[k]);
                *wrong += nf4_diff(&h, &m->q[l][k], what);
                if (a->dev != QT_CPU) qt_ctx_step_reset(tu_ctx(QT_CPU));
            }
            qt_arena_reset(a, mark);
        }
    }
    nf4c_close(&r);
    return fails;
}

/* ------------------------------------------------------------------ key */

static void touch_mtime(const char *path, long sec, long nsec) {
    struct timespec ts[2] = {{sec, nsec}, {sec, nsec}};
    QT_CHECK(utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW) == 0, "utimensat %s", path);
}

static void key_of(const char *dir, bool dq, const char *variant, char *out) {
    qt_err e;
    QT_CHECK(nf4c_key(out, dir, dq, variant, &e) == 0, "%s", e.msg);
}

static void key_tests(void) {
    char md[512];
    snprintf(md, sizeof md, "%s/model", g_dir);
    QT_CHECK(mkdir(md, 0755) == 0, "mkdir");
    char cfg[256];
    snprintf(cfg, sizeof cfg, "{\"hidden_size\": %llu}", (unsigned long long)(qt_rng_next(tu_rng()) % 100000));
    write_file(pjoin(md, "config.json"), cfg, strlen(cfg));
    uint8_t junk[400];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)qt_rng_next(tu_rng());
    write_file(pjoin(md, "model-00001-of-00002.safetensors"), junk, 200);
    write_file(pjoin(md, "model-00002-of-00002.safetensors"), junk + 100, 200);
    write_file(pjoin(md, "model.safetensors.index.json"), "{}", 2);
    touch_mtime(pjoin(md, "model-00001-of-00002.safetensors"), 1700000000, 5);
    touch_mtime(pjoin(md, "model-00002-of-00002.safetensors"), 1700000000, 5);

    char k0[NF4C_KEY_LEN], k[NF4C_KEY_LEN];
    key_of(md, true, "from=bf16", k0);
    key_of(md, true, "from=bf16", k);
    TU_EXPECT(strcmp(k, k0) == 0 && strlen(k0) == 16, "the key is not stable: %s vs %s", k, k0);
    int changes = 0;
#define CHANGED(what)                                                                     \
    do {                                                                                  \
        key_of(md, true, "from=bf16", k);                                                 \
        TU_EXPECT(strcmp(k, k0) != 0, "key unchanged after %s", what);                    \
        changes++;                                                                        \
    } while (0)
#define SAME(what)                                                                        \
    do {                                                                                  \
        key_of(md, true, "from=bf16", k);                                                 \
        TU_EXPECT(strcmp(k, k0) == 0, "key changed after %s (%s vs %s)", what, k, k0);    \
    } while (0)
    key_of(md, false, "from=bf16", k);
    TU_EXPECT(strcmp(k, k0) != 0, "key unchanged with dq off");
    key_of(md, true, "from=f16", k);
    TU_EXPECT(strcmp(k, k0) != 0, "key unchanged with another variant");
    key_of(md, true, NULL, k);
    TU_EXPECT(strcmp(k, k0) != 0, "key unchanged without a variant");

    /* config.json: one byte changed, then restored */
    char cfg2[256];
    snprintf(cfg2, sizeof cfg2, "%s", cfg);
    cfg2[strlen(cfg2) - 2] ^= 1;
    write_file(pjoin(md, "config.json"), cfg2, strlen(cfg2));
    CHANGED("a config.json byte");
    write_file(pjoin(md, "config.json"), cfg, strlen(cfg));
    SAME("restoring config.json");
    /* the index json */
    write_file(pjoin(md, "model.safetensors.index.json"), "{ }", 3);
    CHANGED("the index json");
    write_file(pjoin(md, "model.safetensors.index.json"), "{}", 2);
    SAME("restoring the index");
    /* a shard's mtime (nanoseconds only), then its size at the same mtime */
    char s2[512];
    snprintf(s2, sizeof s2, "%s", pjoin(md, "model-00002-of-00002.safetensors"));
    touch_mtime(s2, 1700000000, 6);
    CHANGED("a shard's mtime");
    write_file(s2, junk + 100, 201);
    touch_mtime(s2, 1700000000, 5);
    CHANGED("a shard's size");
    write_file(s2, junk + 100, 200);
    touch_mtime(s2, 1700000000, 5);
    SAME("restoring the shard");
    /* a new shard; a shard renamed */
    write_file(pjoin(md, "extra.safetensors"), junk, 10);
    CHANGED("a new shard");
    unlink(pjoin(md, "extra.safetensors"));
    SAME("removing it");
    /* a hub-style symlink to a blob: same size and mtime, another target */
    char b1[512], b2[512];
    snprintf(b1, sizeof b1, "%s/blob1", g_dir);
    snprintf(b2, sizeof b2, "%s/blob2", g_dir);
    write_file(b1, junk, 50), write_file(b2, junk + 1, 50);
    touch_mtime(b1, 1600000000, 0), touch_mtime(b2, 1600000000, 0);
    QT_CHECK(symlink(b1, pjoin(md, "link.safetensors")) == 0, "symlink");
    key_of(md, true, "from=bf16", k0);
    unlink(pjoin(md, "link.safetensors"));
    QT_CHECK(symlink(b2, pjoin(md, "link.safetensors")) == 0, "symlink");
    CHANGED("a symlinked shard's target (same size and mtime)");
    unlink(pjoin(md, "link.safetensors"));

    /* errors: no config.json, no shards */
    qt_err e;
    unlink(pjoin(md, "config.json"));
    TU_EXPECT(nf4c_key(k, md, true, NULL, &e) == -1 && strstr(e.msg, "config.json"), "no config.json: %s", e.msg);
    write_file(pjoin(md, "config.json"), cfg, strlen(cfg));
    unlink(pjoin(md, "model-00001-of-00002.safetensors"));
    unlink(s2);
    TU_EXPECT(nf4c_key(k, md, true, NULL, &e) == -1 && strstr(e.msg, "safetensors"), "no shards: %s", e.msg);
    printf("  key: stable, changes with dq, variant and %d edits (config, index, mtime, size, shard set, "
           "symlink target)\n", changes);
#undef CHANGED
#undef SAME
}

/* ------------------------------------------------------------------ damage */

/* Expect the cache to be unusable: nf4c_open -1, or a read error; the message must name
 * `file`; no tensor read may differ from the original. */
static void expect_unusable(const char *cache, const char *key, const model_q *m, const char *what,
                            const char *file, int want_open) {
    qt_ctx *c = tu_ctx(QT_CPU);
    nf4c_reader r;
    qt_err e = {{0}};
    int o = nf4c_open(&r, cache, key, &e);
    if (o == 1) nf4c_close(&r);
    TU_EXPECT(o == want_open, "%s: nf4c_open gave %d, expected %d (%s)", what, o, want_open, e.msg);
    int wrong = 0, fails = o == 1 ? read_all(cache, key, m, &c->data[QT_STEP], &wrong, &e) : 1;
    TU_EXPECT(fails > 0, "%s: everything read", what);
    TU_EXPECT(wrong == 0, "%s: %d tensors read back wrong", what, wrong);
    TU_EXPECT(o == 0 || (file && strstr(e.msg, file)), "%s: the message does not name %s: %s", what, file, e.msg);
    printf("  %-34s -> %s%s\n", what, o == 0 ? "no cache" : "", o == 0 ? "" : e.msg);
}

/* Write st tensors of `src` again with one change, fixing the marker's size. */
static void rewrite_layer(const char *cache_dir, const char *key, int layer, const char *victim, int64_t new_len,
                          const char *new_key) {
    char fn[64], dir[512];
    snprintf(dir, sizeof dir, "%s/nf4-%s", cache_dir, key);
    snprintf(fn, sizeof fn, "layer-%03d.safetensors", layer);
    char path[640];
    snprintf(path, sizeof path, "%s/%s", dir, fn);
    st_file f;
    qt_err e;
    QT_CHECK(st_open(&f, path, &e) == 0, "%s", e.msg);
    st_wtensor *t = calloc((size_t)f.n_tensors, sizeof *t);
    uint8_t *pad = calloc(1 << 20, 1);
    for (int i = 0; i < f.n_tensors; i++) {
        const st_tensor *s = &f.tensors[i];
        t[i] = (st_wtensor){.name = s->name, .dtype = s->dtype, .ndim = s->ndim, .data = s->data};
        memcpy(t[i].shape, s->shape, sizeof t[i].shape);
        if (strcmp(s->name, victim) == 0) t[i].shape[0] = new_len, t[i].data = pad;
    }
    st_kv *meta = calloc((size_t)f.n_meta, sizeof *meta);
    for (int i = 0; i < f.n_meta; i++) {
        meta[i] = f.meta[i];
        if (new_key && strcmp(meta[i].key, "key") == 0) meta[i].value = new_key;
    }
    char tmp[700];
    snprintf(tmp, sizeof tmp, "%s.new", path);
    QT_CHECK(st_write(tmp, t, f.n_tensors, meta, f.n_meta, &e) == 0, "%s", e.msg);
    st_close(&f);
    free(t), free(pad), free(meta);
    QT_CHECK(rename(tmp, path) == 0, "rename");
    /* the marker with the new size, so the damage reaches nf4c_read */
    struct stat sb;
    stat(path, &sb);
    size_t n;
    char *txt = (char *)slurp(pjoin(dir, "COMPLETE"), &n);
    txt[n] = 0;
    char *line = strstr(txt, fn);
    QT_CHECK(line, "marker");
    char out[8192];
    int k = snprintf(out, sizeof out, "%.*s%s %lld\n", (int)(line - txt), txt, fn, (long long)sb.st_size);
    snprintf(out + k, sizeof out - (size_t)k, "%s", strchr(line, '\n') + 1);
    write_file(pjoin(dir, "COMPLETE"), out, strlen(out));
    free(txt);
}

static void damage_tests(const char *cache, const char *key, const model_q *m, const char *other_cache,
                         const char *other_key) {
    char dir[640];
    snprintf(dir, sizeof dir, "%s/nf4-%s", cache, key);
    const char *l1 = pjoin(dir, "layer-001.safetensors");
    char l1p[512], cp[700];
    snprintf(l1p, sizeof l1p, "%s", l1);
    snprintf(cp, sizeof cp, "%s/COMPLETE", dir);
    size_t n1, nc;
    uint8_t *good = slurp(l1p, &n1), *good_c = slurp(cp, &nc);
#define RESTORE() (write_file(l1p, good, n1), write_file(cp, good_c, nc))

    /* missing marker */
    QT_CHECK(rename(cp, pjoin(dir, "COMPLETE.gone")) == 0, "rename");
    expect_unusable(cache, key, m, "missing COMPLETE", NULL, 0);
    QT_CHECK(rename(pjoin(dir, "COMPLETE.gone"), cp) == 0, "rename");
    /* truncated layer file: the marker's size, then with the marker fixed, the safetensors reader */
    QT_CHECK(truncate(l1p, (off_t)(n1 / 2)) == 0, "truncate");
    expect_unusable(cache, key, m, "truncated layer file", "layer-001.safetensors", -1);
    char *t = (char *)good_c, fixed[8192];
    t[nc - 1] = 0;
    char *line = strstr(t, "layer-001.safetensors");
    int k = snprintf(fixed, sizeof fixed, "%.*slayer-001.safetensors %zu\n", (int)(line - t), t, n1 / 2);
    snprintf(fixed + k, sizeof fixed - (size_t)k, "%s\n", strchr(line, '\n') + 1);
    t[nc - 1] = '\n';
    write_file(cp, fixed, strlen(fixed));
    expect_unusable(cache, key, m, "truncated, marker agreeing", "layer-001.safetensors", 1);
    RESTORE();
    /* a layer file missing */
    QT_CHECK(unlink(l1p) == 0, "unlink");
    expect_unusable(cache, key, m, "missing layer file", "layer-001.safetensors", -1);
    RESTORE();
    /* the marker damaged */
    const char *mk = "qtrain-nf4-cache 1\nkey 0000000000000000\nlayers 3\n";
    write_file(cp, mk, strlen(mk));
    expect_unusable(cache, key, m, "marker naming another key", "COMPLETE", -1);
    write_file(cp, "qtrain-nf4-cache 99\n", 20);
    expect_unusable(cache, key, m, "marker of another version", "COMPLETE", -1);
    write_file(cp, good_c, nc - 10);
    expect_unusable(cache, key, m, "marker cut short", "COMPLETE", -1);
    mk = "qtrain-nf4-cache 1\nkey %s\nlayers 99999999999999999999999\n";
    char big[256];
    snprintf(big, sizeof big, mk, key);
    write_file(cp, big, strlen(big));
    expect_unusable(cache, key, m, "marker with a huge layer count", "COMPLETE", -1);
    /* random bytes of the marker: unusable, or (a harmless change) everything exact */
    int mrej = 0;
    for (int i = 0; i < 100; i++) {
        uint8_t *bad = malloc(nc);
        memcpy(bad, good_c, nc);
        bad[qt_rng_next(tu_rng()) % nc] ^= (uint8_t)(1 + qt_rng_next(tu_rng()) % 255);
        write_file(cp, bad, nc);
        free(bad);
        int wrong = 0;
        qt_err e = {{0}};
        int fails = read_all(cache, key, m, &tu_ctx(QT_CPU)->data[QT_STEP], &wrong, &e);
        TU_EXPECT(wrong == 0, "marker corruption trial %d: %d wrong", i, wrong);
        if (fails) {
            mrej++;
            TU_EXPECT(strstr(e.msg, "COMPLETE") || strstr(e.msg, "layer-"), "marker trial %d: %s", i, e.msg);
        }
    }
    printf("  %-34s -> %d of 100 rejected, the rest read back exact; none wrong\n", "random marker bytes", mrej);
    RESTORE();
    /* valid files of the wrong shape: codes one byte short; a shape entry changed */
    char victim[128];
    snprintf(victim, sizeof victim, "%s.codes", tnames[1]);
    rewrite_layer(cache, key, 1, victim, (m->q[1][1].n + 1) / 2 - 1, NULL);
    expect_unusable(cache, key, m, "codes of a wrong length", "layer-001.safetensors", 1);
    RESTORE();
    const nf4_tensor *q3 = &m->q[1][3];
    snprintf(victim, sizeof victim, "%s.%s", tnames[3], q3->dq ? "absmax2" : "absmax");
    rewrite_layer(cache, key, 1, victim, (q3->dq ? q3->nblocks2 : q3->nblocks) + 1, NULL);
    expect_unusable(cache, key, m, "scales of a wrong length", "layer-001.safetensors", 1);
    RESTORE();
    /* a file of another cache (same layer) */
    rewrite_layer(cache, key, 1, "-", 0, other_key);
    expect_unusable(cache, key, m, "layer file of another key", "layer-001.safetensors", 1);
    RESTORE();
    (void)other_cache;
    /* dst asks for another shape with the same element count, another n, or no DQ */
    {
        qt_ctx *c = tu_ctx(QT_CPU);
        nf4c_reader r;
        qt_err e;
        QT_CHECK(nf4c_open(&r, cache, key, &e) == 1, "%s", e.msg);
        const nf4_tensor *q = &m->q[0][0];
        nf4_tensor d;
        int64_t sw[2] = {q->shape[1], q->shape[0]}, sn[2] = {q->shape[0], q->shape[1] + 1};
        size_t mk = qt_arena_mark(&c->data[QT_STEP]);
        nf4_alloc(&d, &c->data[QT_STEP], 2, sw, q->dq);
        TU_EXPECT(nf4c_read(&r, 0, tnames[0], &d, &e) == -1 && strstr(e.msg, "shape") && strstr(e.msg, "layer-000"),
                  "transposed shape read: %s", e.msg);
        printf("  %-34s -> %s\n", "model expects the transpose", e.msg);
        nf4_alloc(&d, &c->data[QT_STEP], 2, sn, q->dq);
        TU_EXPECT(nf4c_read(&r, 0, tnames[0], &d, &e) == -1, "bigger tensor read");
        printf("  %-34s -> %s\n", "model expects one more column", e.msg);
        nf4_alloc(&d, &c->data[QT_STEP], q->ndim, q->shape, !q->dq);
        TU_EXPECT(nf4c_read(&r, 0, tnames[0], &d, &e) == -1 && strstr(e.msg, "double quantization"), "dq mismatch: %s",
                  e.msg);
        printf("  %-34s -> %s\n", "model expects the other dq", e.msg);
        TU_EXPECT(nf4c_read(&r, 0, "no.such.weight", &d, &e) == -1 && strstr(e.msg, "missing"), "absent name: %s", e.msg);
        TU_EXPECT(nf4c_read(&r, NL, tnames[0], &d, &e) == -1, "layer out of range");
        qt_arena_reset(&c->data[QT_STEP], mk);
        nf4c_close(&r);
    }
    /* random header corruption: 1-4 random bytes of the length prefix + JSON header */
    uint64_t hlen;
    memcpy(&hlen, good, 8);
    int rejected = 0, trials = 300;
    for (int i = 0; i < trials; i++) {
        uint8_t *bad = malloc(n1);
        memcpy(bad, good, n1);
        int nb = 1 + (int)(qt_rng_next(tu_rng()) % 4);
        for (int j = 0; j < nb; j++) {
            uint64_t at = qt_rng_next(tu_rng()) % (8 + hlen);
            uint8_t x = (uint8_t)(1 + qt_rng_next(tu_rng()) % 255);
            bad[at] ^= x;
        }
        write_file(l1p, bad, n1);
        free(bad);
        int wrong = 0;
        qt_err e = {{0}};
        int fails = read_all(cache, key, m, &tu_ctx(QT_CPU)->data[QT_STEP], &wrong, &e);
        TU_EXPECT(wrong == 0, "header corruption trial %d: %d tensors read back wrong", i, wrong);
        if (fails) {
            rejected++;
            TU_EXPECT(strstr(e.msg, "layer-001"), "trial %d: message does not name the file: %s", i, e.msg);
        }
    }
    RESTORE();
    printf("  %-34s -> %d of %d rejected with the file named, the rest read back exact; none wrong\n",
           "random header bytes", rejected, trials);
    TU_EXPECT(rejected > trials * 3 / 4, "only %d of %d header corruptions were noticed", rejected, trials);
    /* random data corruption: the checksum */
    rejected = 0;
    for (int i = 0; i < 100; i++) {
        uint8_t *bad = malloc(n1);
        memcpy(bad, good, n1);
        uint64_t at = 8 + hlen + qt_rng_next(tu_rng()) % (n1 - 8 - hlen);
        bad[at] ^= (uint8_t)(1 + qt_rng_next(tu_rng()) % 255);
        write_file(l1p, bad, n1);
        free(bad);
        int wrong = 0;
        qt_err e = {{0}};
        int fails = read_all(cache, key, m, &tu_ctx(QT_CPU)->data[QT_STEP], &wrong, &e);
        TU_EXPECT(wrong == 0 && fails >= 1, "data corruption trial %d: %d failed reads, %d wrong", i, fails, wrong);
        rejected += fails >= 1;
        if (i == 0) printf("  %-34s -> %s\n", "one data byte flipped", e.msg);
    }
    RESTORE();
    printf("  %-34s -> %d of 100 caught by the checksum\n", "random data byte", rejected);
    int wrong = 0;
    TU_EXPECT(read_all(cache, key, m, &tu_ctx(QT_CPU)->data[QT_STEP], &wrong, NULL) == 0 && wrong == 0,
              "the restored cache does not read");
    free(good), free(good_c);
#undef RESTORE
}

/* ------------------------------------------------------------------ writer protocol */

static bool exists(const char *p) { struct stat sb; return stat(p, &sb) == 0; }

static void writer_tests(const char *cache, const char *key, const model_q *m) {
    char dir[640];
    snprintf(dir, sizeof dir, "%s/nf4-%s", cache, key);
    nf4c_writer w, w2;
    nf4c_reader r;
    qt_err e;
    /* a crash after layer 0 is on disk: a child writes and dies without committing */
    pid_t pid = fork();
    if (pid == 0) {
        nf4c_writer wc;
        if (nf4c_writer_open(&wc, cache, key, NL, &e) != 0) _exit(2);
        for (int k = 0; k < NT; k++) nf4c_add(&wc, 0, tnames[k], &m->q[0][k], &e);
        nf4c_add(&wc, 1, tnames[0], &m->q[1][0], &e); /* writes layer 0 */
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    TU_EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the crashing writer failed early");
    TU_EXPECT(exists(pjoin(dir, "layer-000.safetensors")) && !exists(pjoin(dir, "COMPLETE")), "crash state");
    TU_EXPECT(nf4c_open(&r, cache, key, &e) == 0, "a crashed write reads as a cache");
    /* the next writer clears it; a second writer at the same time is refused */
    TU_EXPECT(nf4c_writer_open(&w, cache, key, NL, &e) == 0, "%s", e.msg);
    TU_EXPECT(!exists(pjoin(dir, "layer-000.safetensors")), "stale layer file left");
    TU_EXPECT(nf4c_writer_open(&w2, cache, key, NL, &e) == -1 && strstr(e.msg, "another"), "second writer: %s",
              e.msg);
    nf4c_writer_close(&w2);
    /* protocol errors */
    TU_EXPECT(nf4c_add(&w, NL, tnames[0], &m->q[0][0], &e) == -1, "layer out of range accepted");
    for (int k = 0; k < NT; k++) TU_EXPECT(nf4c_add(&w, 0, tnames[k], &m->q[0][k], &e) == 0, "%s", e.msg);
    TU_EXPECT(nf4c_add(&w, 0, tnames[0], &m->q[0][0], &e) == -1 && strstr(e.msg, "twice"), "dup: %s", e.msg);
    TU_EXPECT(nf4c_add(&w, 2, tnames[0], &m->q[2][0], &e) == 0, "%s", e.msg);
    TU_EXPECT(nf4c_add(&w, 0, tnames[1], &m->q[0][1], &e) == -1 && strstr(e.msg, "already written"), "re-add: %s",
              e.msg);
    TU_EXPECT(nf4c_writer_commit(&w, &e) == -1 && strstr(e.msg, "layer 1"), "commit with a missing layer: %s", e.msg);
    TU_EXPECT(!exists(pjoin(dir, "COMPLETE")), "COMPLETE written for an incomplete cache");
    nf4c_writer_close(&w);
    TU_EXPECT(!exists(dir), "an abandoned writer left its folder");
    TU_EXPECT(nf4c_open(&r, cache, key, &e) == 0, "abandoned write reads as a cache");
    /* a rewrite over a complete cache: no cache while it runs, one after */
    TU_EXPECT(write_cache(cache, key, m) == 0, "write");
    TU_EXPECT(nf4c_writer_open(&w, cache, key, NL, &e) == 0, "%s", e.msg);
    TU_EXPECT(nf4c_open(&r, cache, key, &e) == 0, "cache visible while being rewritten");
    nf4c_writer_close(&w);
    TU_EXPECT(write_cache(cache, key, m) == 0, "write");
    TU_EXPECT(nf4c_open(&r, cache, key, &e) == 1, "%s", e.msg);
    nf4c_close(&r);
    printf("  writer: crash leaves no cache; stale files cleared; second writer refused; protocol errors; "
           "incomplete commit refused\n");
}

/* A file whose checksum is right but whose scales are not finite (a forged or buggy
 * writer): written through the API itself, refused by the reader. */
static void nonfinite_test(const char *cache, const model_q *m) {
    qt_ctx *c = tu_ctx(QT_CPU);
    static model_q bad;
    bad = *m;
    const nf4_tensor *q = &m->q[0][3];
    nf4_tensor *b = &bad.q[0][3];
    alloc_like(b, &c->data[QT_PERSIST], q);
    nf4_copy(b, q);
    float nan = NAN;
    const char *what = q->dq ? "absmax2" : "absmax";
    if (q->dq) memcpy(&b->absmax2[q->nblocks2 - 1], &nan, 4);
    else memcpy(&b->absmax[q->nblocks / 2], &nan, 4);
    const char *key = "00000000000000ff";
    TU_EXPECT(write_cache(cache, key, &bad) == 0, "write");
    int wrong = 0;
    qt_err e = {{0}};
    int fails = read_all(cache, key, m, &c->data[QT_STEP], &wrong, &e);
    TU_EXPECT(fails == 1 && wrong == 0 && strstr(e.msg, "finite") && strstr(e.msg, what),
              "NaN %s: %d fails, %d wrong: %s", what, fails, wrong, e.msg);
    printf("  %-34s -> %s\n", q->dq ? "NaN nested scale, right checksum" : "NaN scale, right checksum", e.msg);
}

/* ------------------------------------------------------------------ CPU test */

int qt_test_cpu(void) {
    QT_CHECK(mkdtemp(g_dir), "mkdtemp");
    atexit(cleanup);
    qt_ctx *c = tu_ctx(QT_CPU);
    key_tests();
    char cache[512];
    snprintf(cache, sizeof cache, "%s/cache", g_dir);
    const char *keys[2] = {"0123456789abcdef", "fedcba9876543210"};
    static model_q mq[2];
    for (int dq = 1; dq >= 0; dq--) {
        make_model(c, dq, &mq[dq]);
        TU_EXPECT(write_cache(cache, keys[dq], &mq[dq]) == 0, "write dq=%d", dq);
        int wrong = 0;
        qt_err e = {{0}};
        int fails = read_all(cache, keys[dq], &mq[dq], &c->data[QT_STEP], &wrong, &e);
        TU_EXPECT(fails == 0 && wrong == 0, "dq=%d: %d reads failed (%s), %d differ", dq, fails, e.msg, wrong);
        printf("  round trip dq=%d: %d layers x %d tensors, every byte and constant equal\n", dq, NL, NT);
    }
    nf4c_reader r;
    qt_err e;
    TU_EXPECT(nf4c_open(&r, cache, "00000000000000aa", &e) == 0, "an absent key reads as a cache");
    TU_EXPECT(nf4c_open(&r, cache, "../etc", &e) == -1, "a bad key accepted");
    nf4c_writer zw;
    memset(&zw, 0, sizeof zw);
    bool fd0 = fcntl(0, F_GETFD) != -1;
    nf4c_writer_close(&zw); /* zeroed: must not close fd 0 */
    memset(&r, 0, sizeof r);
    nf4c_close(&r);
    TU_EXPECT(fd0 == (fcntl(0, F_GETFD) != -1), "closing a zeroed writer closed fd 0");
    damage_tests(cache, keys[1], &mq[1], cache, keys[0]);
    damage_tests(cache, keys[0], &mq[0], cache, keys[1]);
    nonfinite_test(cache, &mq[1]);
    nonfinite_test(cache, &mq[0]);
    writer_tests(cache, keys[1], &mq[1]);
    return 0;
}

/* ------------------------------------------------------------------ GPU test */

int qt_test_cuda(void) {
    QT_CHECK(mkdtemp(g_dir), "mkdtemp");
    atexit(cleanup);
    qt_ctx *gc = tu_ctx(QT_CUDA);
    char cache[512];
    snprintf(cache, sizeof cache, "%s/cache", g_dir);
    const char *keys[2] = {"0123456789abcdef", "fedcba9876543210"};
    qt_arena pinned;
    QT_CHECK(qt_arena_init_pinned(&pinned, "nf4c pinned", (size_t)64 << 20) == 0, "pinned arena");
    for (int dq = 1; dq >= 0; dq--) {
        /* quantized on the GPU: nf4c_add copies from the device */
        model_q m;
        make_model(gc, dq, &m);
        TU_EXPECT(write_cache(cache, keys[dq], &m) == 0, "write");
        model_q h; /* host copies to compare against */
        qt_ctx *cc = tu_ctx(QT_CPU);
        for (int l = 0; l < NL; l++)
            for (int k = 0; k < NT; k++) {
                alloc_like(&h.q[l][k], &cc->data[QT_PERSIST], &m.q[l][k]);
                nf4_copy(&h.q[l][k], &m.q[l][k]);
            }
        int wrong = 0;
        qt_err e = {{0}};
        int fails = read_all(cache, keys[dq], &h, &gc->data[QT_STEP], &wrong, &e);
        TU_EXPECT(fails == 0 && wrong == 0, "device read dq=%d: %d failed (%s), %d differ", dq, fails, e.msg, wrong);
        fails = read_all(cache, keys[dq], &h, &pinned, &wrong, &e);
        TU_EXPECT(fails == 0 && wrong == 0, "pinned read dq=%d: %d failed (%s), %d differ", dq, fails, e.msg, wrong);
        printf("  cuda dq=%d: GPU-quantized -> cache -> device and pinned tensors, every byte equal\n", dq);
    }
    qt_arena_free(&pinned);
    return 0;
}
