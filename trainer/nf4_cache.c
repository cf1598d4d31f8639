/* The NF4 base cached on disk (nf4_cache.h has the layout and the protocol).
 *
 * Everything read back is treated as hostile (the folder is user-writable): the
 * safetensors reader validates the header, then every tensor's dtype and shape must equal
 * what the caller allocated, the scales must be finite and a checksum over the arrays and
 * constants must match, before a byte reaches the caller's tensor. Any failure is an error
 * naming the file; the caller re-quantizes, which rewrites the cache. */
#include "nf4_cache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAGIC "qtrain-nf4-cache"
#define COMPLETE "COMPLETE"
#define COMPLETE_MAX ((size_t)1 << 20)
#define FIX "delete the folder (it is rebuilt on the next load)"

/* ------------------------------------------------------------------ small helpers */

static char *path_join(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    QT_CHECK(p, "out of host memory");
    snprintf(p, n, "%s/%s", a, b);
    return p;
}

static char *cache_folder(const char *cache_dir, const char *key) {
    char sub[8 + NF4C_KEY_LEN];
    snprintf(sub, sizeof sub, "nf4-%s", key);
    return path_join(cache_dir, sub);
}

static void layer_file(char *buf, size_t n, int layer) { snprintf(buf, n, "layer-%03d.safetensors", layer); }

static bool key_ok(const char *key) {
    if (!key || strlen(key) != NF4C_KEY_LEN - 1) return false;
    for (const char *p = key; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) return false;
    return true;
}

static int name_check(const char *name, qt_err *e) {
    if (!name || !name[0] || strlen(name) > NF4C_MAX_NAME)
        return qt_errf(e, "nf4 cache: tensor name '%.40s' is empty or longer than %d bytes", name ? name : "",
                       NF4C_MAX_NAME);
    return 0;
}

/* Length-prefixed, so that no two different field sequences hash the same bytes. */
static void hash_bytes(ck_hash *s, const void *p, size_t n) {
    uint64_t len = n;
    ck_hash_update(s, &len, sizeof len);
    ck_hash_update(s, p, n);
}
static void hash_str(ck_hash *s, const char *str) { hash_bytes(s, str, strlen(str)); }
static void hash_u64(ck_hash *s, uint64_t v) { ck_hash_update(s, &v, sizeof v); }

static int64_t codes_bytes(int64_t n) { return (n + 1) / 2; }

/* Checksum of one cached tensor: its name, shape, dq, arrays and constants. h's arrays are
 * host memory (possibly unaligned inside a mapping: hashing reads bytes). */
static uint64_t tensor_sum(const char *name, const nf4_tensor *h) {
    ck_hash s;
    ck_hash_init(&s);
    hash_str(&s, name);
    hash_u64(&s, (uint64_t)h->ndim);
    hash_u64(&s, (uint64_t)h->shape[0]);
    hash_u64(&s, (uint64_t)h->shape[1]);
    hash_u64(&s, h->dq);
    hash_bytes(&s, h->codes, (size_t)codes_bytes(h->n));
    if (h->dq) {
        hash_bytes(&s, h->absmax_q, (size_t)h->nblocks);
        hash_bytes(&s, h->absmax2, sizeof(float) * (size_t)h->nblocks2);
        hash_bytes(&s, &h->offset, sizeof h->offset);
        hash_bytes(&s, h->dmap, sizeof h->dmap);
    } else {
        hash_bytes(&s, h->absmax, sizeof(float) * (size_t)h->nblocks);
    }
    return ck_hash_final(&s);
}

/* ------------------------------------------------------------------ key */

static int cmp_cstr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static bool ends_with(const char *s, const char *suf) {
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && strcmp(s + n - k, suf) == 0;
}

int nf4c_key(char out[NF4C_KEY_LEN], const char *model_dir, bool dq, const char *variant, qt_err *e) {
    ck_hash s;
    ck_hash_init(&s);
    hash_str(&s, MAGIC);
    hash_u64(&s, NF4C_VERSION);
    hash_u64(&s, NF4_BLOCK);
    hash_u64(&s, NF4_DQ_BLOCK);
    hash_u64(&s, dq);
    hash_str(&s, variant ? variant : "");

    char *p = path_join(model_dir, "config.json");
    hash_str(&s, "config.json");
    int rc = ck_hash_file(p, &s, NULL, e);
    free(p);
    if (rc) return -1;
    p = path_join(model_dir, "model.safetensors.index.json");
    struct stat sb;
    bool has_index = stat(p, &sb) == 0;
    hash_str(&s, has_index ? "index" : "no index");
    rc = has_index ? ck_hash_file(p, &s, NULL, e) : 0;
    free(p);
    if (rc) return -1;

    DIR *d = opendir(model_dir);
    if (!d) return qt_errf(e, "%s: cannot list the model folder: %s", model_dir, strerror(errno));
    char **names = NULL;
    int n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!ends_with(de->d_name, ".safetensors")) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            names = realloc(names, sizeof *names * (size_t)cap);
            QT_CHECK(names, "out of host memory");
        }
        names[n] = strdup(de->d_name);
        QT_CHECK(names[n], "out of host memory");
        n++;
    }
    closedir(d);
    if (n) qsort(names, (size_t)n, sizeof *names, cmp_cstr);
    rc = n ? 0 : qt_errf(e, "%s: no *.safetensors files: not a model folder qtrain can load", model_dir);
    for (int i = 0; i < n && rc == 0; i++) {
        p = path_join(model_dir, names[i]);
        struct stat ls;
        if (stat(p, &sb) != 0 || lstat(p, &ls) != 0) {
            rc = qt_errf(e, "%s: cannot stat: %s", p, strerror(errno));
        } else {
            hash_str(&s, names[i]);
            hash_u64(&s, (uint64_t)sb.st_size);
            hash_u64(&s, (uint64_t)sb.st_mtim.tv_sec);
            hash_u64(&s, (uint64_t)sb.st_mtim.tv_nsec);
            char target[4096] = "";
            if (S_ISLNK(ls.st_mode)) {
                ssize_t k = readlink(p, target, sizeof target - 1);
                if (k > 0) target[k] = 0;
            }
            hash_str(&s, target);
        }
        free(p);
    }
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    if (rc) return -1;
    snprintf(out, NF4C_KEY_LEN, "%016" PRIx64, ck_hash_final(&s));
    return 0;
}

/* ------------------------------------------------------------------ writer */

struct nf4c_pending {
    char name[NF4C_MAX_NAME + 1];
    nf4_tensor h; /* host copy, malloc'd arrays */
};

static void pending_free(nf4c_writer *w) {
    for (int i = 0; i < w->n_pend; i++) {
        nf4_tensor *h = &w->pend[i].h;
        free(h->codes), free(h->absmax), free(h->absmax_q), free(h->absmax2);
    }
    w->n_pend = 0;
    w->cur = -1;
}

static bool stale_name(const char *nm) {
    return strncmp(nm, "layer-", 6) == 0 || strncmp(nm, COMPLETE, strlen(COMPLETE)) == 0;
}

int nf4c_writer_open(nf4c_writer *w, const char *cache_dir, const char *key, int n_layers, qt_err *e) {
    memset(w, 0, sizeof *w);
    w->lock_fd = -1;
    w->cur = -1;
    if (!key_ok(key)) return qt_errf(e, "nf4 cache: '%s' is not a cache key (use nf4c_key)", key ? key : "");
    if (n_layers < 1 || n_layers > NF4C_MAX_LAYERS)
        return qt_errf(e, "nf4 cache: %d layers is outside 1..%d", n_layers, NF4C_MAX_LAYERS);
    w->dir = cache_folder(cache_dir, key);
    snprintf(w->key, sizeof w->key, "%s", key);
    w->n_layers = n_layers;
    if (ck_mkdirs(w->dir, e) != 0) goto fail;
    char *lock = path_join(w->dir, ".lock");
    w->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    int err = errno;
    free(lock);
    if (w->lock_fd < 0) {
        qt_errf(e, "%s: cannot create the lock file: %s; check permissions", w->dir, strerror(err));
        goto fail;
    }
    if (flock(w->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        qt_errf(e, "%s: another qtrain process is writing this NF4 cache; this run goes on without writing it",
                w->dir);
        goto fail;
    }
    /* COMPLETE goes first (and durably), so from here on the folder reads as "no cache". */
    char *cpath = path_join(w->dir, COMPLETE);
    int r = unlink(cpath);
    err = errno;
    free(cpath);
    if (r != 0 && err != ENOENT) {
        qt_errf(e, "%s: cannot remove %s: %s", w->dir, COMPLETE, strerror(err));
        goto fail;
    }
    DIR *d = opendir(w->dir);
    if (!d) {
        qt_errf(e, "%s: cannot list: %s", w->dir, strerror(errno));
        goto fail;
    }
    fsync(dirfd(d));
    struct dirent *de;
    while ((de = readdir(d))) /* what an interrupted writer left; we hold the lock */
        if (stale_name(de->d_name)) unlinkat(dirfd(d), de->d_name, 0);
    closedir(d);
    w->done = calloc((size_t)n_layers, 1);
    w->sizes = calloc((size_t)n_layers, sizeof *w->sizes);
    QT_CHECK(w->done && w->sizes, "out of host memory");
    return 0;
fail:
    nf4c_writer_close(w);
    w->failed = true;
    return -1;
}

/* Write the collected layer as one safetensors file (tmp + fsync + rename). */
static int flush_layer(nf4c_writer *w, qt_err *e) {
    if (w->cur < 0) return 0;
    int np = w->n_pend, nt = 0;
    st_wtensor *t = calloc((size_t)np * 6, sizeof *t);
    st_kv *meta = calloc((size_t)np + 3, sizeof *meta);
    char *names = malloc((size_t)np * 6 * (NF4C_MAX_NAME + 16));
    char *sums = malloc((size_t)np * (NF4C_MAX_NAME + 8 + 17));
    int64_t *shapes = calloc((size_t)np * 2, sizeof *shapes);
    QT_CHECK(t && meta && names && sums && shapes, "out of host memory");
    char ver[16], layer[16];
    snprintf(ver, sizeof ver, "%d", NF4C_VERSION);
    snprintf(layer, sizeof layer, "%d", w->cur);
    meta[0] = (st_kv){"qtrain.nf4_cache", ver};
    meta[1] = (st_kv){"key", w->key};
    meta[2] = (st_kv){"layer", layer};
    char *nm = names;
    for (int i = 0; i < np; i++) {
        const nf4_tensor *h = &w->pend[i].h;
        const char *base = w->pend[i].name;
        char *sk = sums + (size_t)i * (NF4C_MAX_NAME + 8 + 17), *sv = sk + NF4C_MAX_NAME + 8;
        snprintf(sk, NF4C_MAX_NAME + 8, "sum.%s", base);
        snprintf(sv, 17, "%016" PRIx64, tensor_sum(base, h));
        meta[3 + i] = (st_kv){sk, sv};
        shapes[2 * i] = h->shape[0], shapes[2 * i + 1] = h->shape[1];
        struct { const char *suf; st_dtype dt; int64_t len; const void *data; } parts[6] = {
            {"codes", ST_U8, codes_bytes(h->n), h->codes},
            {"shape", ST_I64, h->ndim, &shapes[2 * i]},
            {"absmax", ST_F32, h->nblocks, h->absmax},
            {"absmax_q", ST_U8, h->nblocks, h->absmax_q},
            {"absmax2", ST_F32, h->nblocks2, h->absmax2},
            {"offset", ST_F32, 1, &h->offset},
        };
        for (int k = 0; k < 6; k++) {
            bool dq_part = k >= 3;
            if (k == 2 && h->dq) continue;
            if (dq_part && !h->dq) continue;
            snprintf(nm, NF4C_MAX_NAME + 16, "%s.%s", base, parts[k].suf);
            t[nt++] = (st_wtensor){.name = nm, .dtype = parts[k].dt, .ndim = 1, .shape = {parts[k].len},
                                   .data = parts[k].data};
            nm += strlen(nm) + 1;
        }
        if (h->dq) {
            snprintf(nm, NF4C_MAX_NAME + 16, "%s.dmap", base);
            t[nt++] = (st_wtensor){.name = nm, .dtype = ST_F32, .ndim = 1, .shape = {256}, .data = h->dmap};
            nm += strlen(nm) + 1;
        }
    }
    char fname[64];
    layer_file(fname, sizeof fname, w->cur);
    char *path = path_join(w->dir, fname);
    int rc = st_write(path, t, nt, meta, np + 3, e);
    struct stat sb;
    if (rc == 0 && stat(path, &sb) != 0) rc = qt_errf(e, "%s: cannot stat after writing: %s", path, strerror(errno));
    if (rc == 0) {
        w->done[w->cur] = 1;
        w->sizes[w->cur] = (uint64_t)sb.st_size;
    } else {
        w->failed = true;
    }
    free(path), free(t), free(meta), free(names), free(sums), free(shapes);
    pending_free(w);
    return rc;
}

int nf4c_add(nf4c_writer *w, int layer, const char *name, const nf4_tensor *q, qt_err *e) {
    if (w->failed || !w->dir || w->committed)
        return qt_errf(e, "nf4 cache %s: the writer is closed or an earlier write failed", w->dir ? w->dir : "");
    if (name_check(name, e)) return -1;
    if (layer < 0 || layer >= w->n_layers)
        return qt_errf(e, "nf4 cache: layer %d of '%s' is outside 0..%d", layer, name, w->n_layers - 1);
    QT_CHECK((q->ndim == 1 || q->ndim == 2) && q->shape[0] > 0 && q->shape[1] > 0 &&
                 q->n == q->shape[0] * q->shape[1] && q->nblocks == nf4_nblocks(q->n) && q->codes,
             "nf4c_add(%s): not a tensor made by nf4_alloc / nf4_quantize", name);
    if (layer != w->cur) {
        if (w->done[layer])
            return qt_errf(e, "nf4 cache: layer %d was already written; add a layer's tensors together", layer);
        if (flush_layer(w, e) != 0) return -1;
        w->cur = layer;
    }
    for (int i = 0; i < w->n_pend; i++)
        if (strcmp(w->pend[i].name, name) == 0)
            return qt_errf(e, "nf4 cache: '%s' added twice to layer %d", name, layer);
    if (w->n_pend == w->cap_pend) {
        w->cap_pend = w->cap_pend ? 2 * w->cap_pend : 8;
        w->pend = realloc(w->pend, sizeof *w->pend * (size_t)w->cap_pend);
        QT_CHECK(w->pend, "out of host memory");
    }
    nf4c_pending *p = &w->pend[w->n_pend];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    nf4_tensor *h = &p->h;
    h->dev = QT_CPU;
    h->ndim = q->ndim;
    h->shape[0] = q->shape[0], h->shape[1] = q->shape[1];
    h->n = q->n, h->nblocks = q->nblocks, h->nblocks2 = q->nblocks2, h->dq = q->dq;
    h->codes = malloc((size_t)codes_bytes(q->n));
    bool ok = h->codes != NULL;
    if (q->dq) {
        h->absmax_q = malloc((size_t)q->nblocks);
        h->absmax2 = malloc(sizeof(float) * (size_t)q->nblocks2);
        ok = ok && h->absmax_q && h->absmax2;
    } else {
        h->absmax = malloc(sizeof(float) * (size_t)q->nblocks);
        ok = ok && h->absmax;
    }
    w->n_pend++; /* from here pending_free releases it */
    if (!ok) {
        w->failed = true;
        return qt_errf(e, "nf4 cache: out of host memory for a copy of '%s' (%zu bytes)", name, nf4_bytes(q->n, q->dq));
    }
    nf4_copy(h, q);
    return 0;
}

int nf4c_writer_commit(nf4c_writer *w, qt_err *e) {
    if (w->failed || !w->dir || w->committed)
        return qt_errf(e, "nf4 cache %s: the writer is closed or an earlier write failed", w->dir ? w->dir : "");
    if (flush_layer(w, e) != 0) return -1;
    for (int l = 0; l < w->n_layers; l++)
        if (!w->done[l]) {
            w->failed = true;
            return qt_errf(e, "nf4 cache %s: layer %d was never added; the cache is not marked complete", w->dir, l);
        }
    size_t cap = 128 + (size_t)w->n_layers * 64, n = 0;
    char *txt = malloc(cap);
    QT_CHECK(txt, "out of host memory");
    n += (size_t)snprintf(txt + n, cap - n, "%s %d\nkey %s\nlayers %d\n", MAGIC, NF4C_VERSION, w->key, w->n_layers);
    for (int l = 0; l < w->n_layers; l++) {
        char fname[64];
        layer_file(fname, sizeof fname, l);
        n += (size_t)snprintf(txt + n, cap - n, "%s %" PRIu64 "\n", fname, w->sizes[l]);
    }
    char *path = path_join(w->dir, COMPLETE);
    ck_chunk ch = {txt, n};
    int rc = ck_write_atomic(path, &ch, 1, e);
    free(path), free(txt);
    if (rc == 0) w->committed = true;
    else w->failed = true;
    return rc;
}

void nf4c_writer_close(nf4c_writer *w) {
    pending_free(w);
    free(w->pend);
    if (w->dir && !w->committed && w->done) { /* not a cache: take back what we wrote */
        for (int l = 0; l < w->n_layers; l++)
            if (w->done[l]) {
                char fname[64];
                layer_file(fname, sizeof fname, l);
                char *p = path_join(w->dir, fname);
                unlink(p);
                free(p);
            }
        char *lock = path_join(w->dir, ".lock");
        unlink(lock);
        free(lock);
        rmdir(w->dir); /* only when empty */
    }
    if (w->dir && w->lock_fd >= 0) close(w->lock_fd); /* a zeroed writer has fd 0: not ours */
    free(w->dir), free(w->done), free(w->sizes);
    memset(w, 0, sizeof *w);
    w->lock_fd = -1;
    w->cur = -1;
}

/* ------------------------------------------------------------------ reader */

/* "WORD N" with N decimal digits only, <= max (no sign, no overflow, nothing after). */
static bool word_num(const char *line, const char *word, uint64_t max, uint64_t *out) {
    size_t k = strlen(word);
    if (!line || strncmp(line, word, k) != 0 || line[k] != ' ' || !line[k + 1]) return false;
    uint64_t v = 0;
    for (const char *p = line + k + 1; *p; p++) {
        if (*p < '0' || *p > '9' || v > (max - (uint64_t)(*p - '0')) / 10) return false;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    *out = v;
    return true;
}

/* COMPLETE: "MAGIC VERSION\nkey KEY\nlayers L\n" then "layer-NNN.safetensors SIZE\n" x L. */
static int parse_complete(nf4c_reader *r, const char *path, char *txt, qt_err *e) {
    char *save = NULL, *line = strtok_r(txt, "\n", &save);
    uint64_t ver, L;
    if (!word_num(line, MAGIC, 1u << 30, &ver))
        return qt_errf(e, "%s: not an NF4 cache marker (first line); " FIX, path);
    if (ver != NF4C_VERSION)
        return qt_errf(e, "%s: NF4 cache format %llu, this qtrain writes %d; " FIX, path, (unsigned long long)ver,
                       NF4C_VERSION);
    line = strtok_r(NULL, "\n", &save);
    if (!line || strncmp(line, "key ", 4) != 0 || strcmp(line + 4, r->key) != 0)
        return qt_errf(e, "%s: the marker names key '%.20s', the folder is for '%s'; " FIX, path,
                       line && strlen(line) > 4 ? line + 4 : "", r->key);
    line = strtok_r(NULL, "\n", &save);
    if (!word_num(line, "layers", NF4C_MAX_LAYERS, &L) || L < 1)
        return qt_errf(e, "%s: bad 'layers' line (1..%d layers); " FIX, path, NF4C_MAX_LAYERS);
    r->sizes = calloc((size_t)L, sizeof *r->sizes);
    QT_CHECK(r->sizes, "out of host memory");
    r->n_layers = (int)L;
    for (int l = 0; l < r->n_layers; l++) {
        char want[64];
        layer_file(want, sizeof want, l);
        line = strtok_r(NULL, "\n", &save);
        if (!word_num(line, want, UINT64_MAX, &r->sizes[l]))
            return qt_errf(e, "%s: the line for %s is missing or malformed; " FIX, path, want);
    }
    if (strtok_r(NULL, "\n", &save)) return qt_errf(e, "%s: text after the last layer line; " FIX, path);
    return 0;
}

int nf4c_open(nf4c_reader *r, const char *cache_dir, const char *key, qt_err *e) {
    memset(r, 0, sizeof *r);
    r->cur = -1;
    if (!key_ok(key)) return qt_errf(e, "nf4 cache: '%s' is not a cache key (use nf4c_key)", key ? key : "");
    r->dir = cache_folder(cache_dir, key);
    snprintf(r->key, sizeof r->key, "%s", key);
    char *path = path_join(r->dir, COMPLETE);
    struct stat sb;
    if (stat(path, &sb) != 0 && (errno == ENOENT || errno == ENOTDIR)) {
        free(path);
        nf4c_close(r);
        return 0;
    }
    char *txt = ck_read_file(path, COMPLETE_MAX, NULL, e);
    int rc = txt ? parse_complete(r, path, txt, e) : -1;
    free(txt), free(path);
    for (int l = 0; l < r->n_layers && rc == 0; l++) {
        char fname[64];
        layer_file(fname, sizeof fname, l);
        char *p = path_join(r->dir, fname);
        if (stat(p, &sb) != 0)
            rc = qt_errf(e, "%s: %s; the NF4 cache is incomplete: " FIX, p, strerror(errno));
        else if ((uint64_t)sb.st_size != r->sizes[l])
            rc = qt_errf(e, "%s: %lld bytes, the cache marker says %llu (truncated or replaced); " FIX, p,
                         (long long)sb.st_size, (unsigned long long)r->sizes[l]);
        free(p);
    }
    if (rc) {
        nf4c_close(r);
        return -1;
    }
    return 1;
}

static int map_layer(nf4c_reader *r, int layer, qt_err *e) {
    if (r->cur == layer) return 0;
    if (r->cur >= 0) st_close(&r->f);
    r->cur = -1;
    char fname[64];
    layer_file(fname, sizeof fname, layer);
    char *path = path_join(r->dir, fname);
    int rc = st_open(&r->f, path, e);
    free(path);
    if (rc) {
        char why[sizeof e->msg];
        snprintf(why, sizeof why, "%s", e ? e->msg : "");
        return qt_errf(e, "%.900s (an NF4 cache file: %s)", why, FIX);
    }
    const st_file *f = &r->f;
    /* Start reading the whole layer ahead of the copies (a 70B layer is ~0.45 GB). */
    if (f->map && f->size) madvise((void *)f->map, f->size, MADV_WILLNEED);
    const char *ver = st_meta_get(f, "qtrain.nf4_cache"), *key = st_meta_get(f, "key"), *ls = st_meta_get(f, "layer");
    char want_ver[16], want_layer[16];
    snprintf(want_ver, sizeof want_ver, "%d", NF4C_VERSION);
    snprintf(want_layer, sizeof want_layer, "%d", layer);
    if (f->size != r->sizes[layer])
        rc = qt_errf(e, "%s: %zu bytes, the cache marker says %llu; " FIX, f->path, f->size,
                     (unsigned long long)r->sizes[layer]);
    else if (!ver || strcmp(ver, want_ver) != 0)
        rc = qt_errf(e, "%s: not an NF4 cache file of format %s; " FIX, f->path, want_ver);
    else if (!key || strcmp(key, r->key) != 0)
        rc = qt_errf(e, "%s: belongs to cache key '%s', not '%s'; " FIX, f->path, key ? key : "", r->key);
    else if (!ls || strcmp(ls, want_layer) != 0)
        rc = qt_errf(e, "%s: holds layer '%s', not %d; " FIX, f->path, ls ? ls : "", layer);
    if (rc) {
        st_close(&r->f);
        return -1;
    }
    r->cur = layer;
    return 0;
}

/* The tensor NAME.suf, which must be dtype[len]. */
static const st_tensor *part(const st_file *f, const char *name, const char *suf, st_dtype dt, int64_t len,
                             qt_err *e) {
    char full[NF4C_MAX_NAME + 16];
    snprintf(full, sizeof full, "%s.%s", name, suf);
    const st_tensor *t = st_find(f, full);
    if (!t) {
        qt_errf(e, "%s: tensor '%s' is missing; " FIX, f->path, full);
        return NULL;
    }
    if (t->dtype != dt || t->ndim != 1 || t->shape[0] != len) {
        char d[160];
        qt_errf(e, "%s: %s, expected %s[%lld] for the model's shape; " FIX, f->path, st_describe(t, d, sizeof d),
                st_dtype_name(dt), (long long)len);
        return NULL;
    }
    return t;
}

/* Every float of t (unaligned data) is finite (and >= 0 for scales); else its index. */
static int64_t bad_float(const st_tensor *t, bool nonneg) {
    for (int64_t i = 0; i < t->numel; i++) {
        float v;
        memcpy(&v, t->data + 4 * i, 4);
        if (!isfinite(v) || (nonneg && v < 0)) return i;
    }
    return -1;
}

int nf4c_read(nf4c_reader *r, int layer, const char *name, nf4_tensor *dst, qt_err *e) {
    QT_CHECK(r->dir, "nf4c_read on a reader that is not open");
    QT_CHECK(dst->codes && dst->n == dst->shape[0] * dst->shape[1], "nf4c_read(%s): dst not set up by nf4_alloc",
             name ? name : "");
    if (name_check(name, e)) return -1;
    if (layer < 0 || layer >= r->n_layers)
        return qt_errf(e, "%s: the cache has %d layers; layer %d asked for", r->dir, r->n_layers, layer);
    if (map_layer(r, layer, e)) return -1;
    const st_file *f = &r->f;
    nf4_tensor v = *dst; /* the view: dst's header, arrays in the mapping */
    v.dev = QT_CPU;
    const st_tensor *codes = part(f, name, "codes", ST_U8, codes_bytes(dst->n), e);
    const st_tensor *shape = codes ? part(f, name, "shape", ST_I64, dst->ndim, e) : NULL;
    if (!shape) return -1;
    int64_t sh[2] = {0, 1};
    memcpy(sh, shape->data, sizeof(int64_t) * (size_t)dst->ndim);
    if (sh[0] != dst->shape[0] || sh[1] != dst->shape[1])
        return qt_errf(e, "%s: '%s' has shape [%lld, %lld], the model expects [%lld, %lld]; " FIX, f->path, name,
                       (long long)sh[0], (long long)sh[1], (long long)dst->shape[0], (long long)dst->shape[1]);
    v.codes = (uint8_t *)codes->data;
    char other[NF4C_MAX_NAME + 16];
    snprintf(other, sizeof other, "%s.%s", name, dst->dq ? "absmax" : "absmax_q");
    if (st_find(f, other))
        return qt_errf(e, "%s: '%s' is stored %s double quantization, the model asks %s; " FIX, f->path, name,
                       dst->dq ? "without" : "with", dst->dq ? "with" : "without");
    const st_tensor *bad = NULL;
    int64_t at = -1;
    if (dst->dq) {
        const st_tensor *aq = part(f, name, "absmax_q", ST_U8, dst->nblocks, e);
        const st_tensor *a2 = aq ? part(f, name, "absmax2", ST_F32, dst->nblocks2, e) : NULL;
        const st_tensor *off = a2 ? part(f, name, "offset", ST_F32, 1, e) : NULL;
        const st_tensor *dm = off ? part(f, name, "dmap", ST_F32, 256, e) : NULL;
        if (!dm) return -1;
        v.absmax_q = (uint8_t *)aq->data;
        v.absmax2 = (float *)a2->data; /* only ever memcpy'd: may be unaligned */
        memcpy(&v.offset, off->data, sizeof v.offset);
        memcpy(v.dmap, dm->data, sizeof v.dmap);
        if ((at = bad_float(a2, true)) >= 0) bad = a2;
        else if ((at = bad_float(off, false)) >= 0) bad = off;
        else if ((at = bad_float(dm, false)) >= 0) bad = dm;
    } else {
        const st_tensor *am = part(f, name, "absmax", ST_F32, dst->nblocks, e);
        if (!am) return -1;
        v.absmax = (float *)am->data;
        if ((at = bad_float(am, true)) >= 0) bad = am;
    }
    if (bad)
        return qt_errf(e, "%s: '%s' element %lld is not a finite scale; " FIX, f->path, bad->name, (long long)at);
    char sk[NF4C_MAX_NAME + 8];
    snprintf(sk, sizeof sk, "sum.%s", name);
    const char *sv = st_meta_get(f, sk);
    char want[17];
    snprintf(want, sizeof want, "%016" PRIx64, tensor_sum(name, &v));
    if (!sv || strcmp(sv, want) != 0)
        return qt_errf(e, "%s: checksum of '%s' is %s, the file records %s (the file is damaged); " FIX, f->path,
                       name, want, sv ? sv : "none");
    if (!v.name[0]) snprintf(v.name, sizeof v.name, "%.95s", name);
    nf4_copy(dst, &v);
    return 0;
}

void nf4c_close(nf4c_reader *r) {
    if (r->dir && r->cur >= 0) st_close(&r->f);
    free(r->dir), free(r->sizes);
    memset(r, 0, sizeof *r);
    r->cur = -1;
}
