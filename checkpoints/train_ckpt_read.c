/* HDF5 training checkpoints: verifying (every dataset re-read in bounded chunks against the
 * checksum), finding the newest intact one, and reading with every size bounded before
 * anything is allocated or read (checkpoints.h section 4, docs/checkpoints.md). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "train_ckpt_internal.h"

/* ---- verifying */

typedef struct walk {
    digest *d;
    int n, cap;
    uint64_t bytes, limit; /* data bytes seen so far; the file's size */
    uint8_t *buf;
    char why[CK_PATH + 128];
} walk;

static int walk_fail(walk *w, const char *fmt, const char *arg) {
    snprintf(w->why, sizeof w->why, fmt, arg);
    return -1;
}

/* Digest of one dataset, read back in chunks of at most CK_CHUNK bytes. */
static int digest_dataset(walk *w, hid_t ds, const char *path) {
    hid_t ft = H5Dget_type(ds);
    int k = ft < 0 ? -1 : ckt_classify(ft);
    if (ft >= 0) H5Tclose(ft);
    if (k < 0) return walk_fail(w, "dataset %s has an unexpected element type", path);
    hid_t sp = H5Dget_space(ds);
    int rank = sp < 0 ? -1 : H5Sget_simple_extent_ndims(sp);
    hsize_t hd[2] = {0, 0};
    if (rank < 1 || rank > 2 || H5Sget_simple_extent_dims(sp, hd, NULL) != rank) {
        if (sp >= 0) H5Sclose(sp);
        return walk_fail(w, "dataset %s does not have 1 or 2 dimensions", path);
    }
    uint64_t dims[2] = {hd[0], rank == 2 ? hd[1] : 0}, rows = rank == 2 ? hd[0] : 1, cols = rank == 2 ? hd[1] : hd[0];
    /* Bytes must be physically there: a hostile header cannot make us hash a petabyte. */
    uint64_t bytes = 0;
    bool ok = cols == 0 || rows <= w->limit / cols;
    if (ok) bytes = rows * cols * ckt_ksize[k], ok = bytes <= w->limit && w->bytes + bytes <= w->limit;
    if (ok) ok = H5Dget_storage_size(ds) == bytes;
    if (!ok) {
        H5Sclose(sp);
        return walk_fail(w, "dataset %s: its stored size does not match its shape (truncated or damaged)", path);
    }
    w->bytes += bytes;
    ck_hash s;
    ckt_digest_begin(&s, (kind)k, rank, dims);
    size_t es = ckt_ksize[k], per = CK_CHUNK / es; /* elements per read */
    int rc = 0;
    for (uint64_t r = 0; r < rows && rc == 0 && cols > 0;) {
        /* whole rows when they fit, else pieces of one row */
        uint64_t nr = cols <= per ? (per / cols < rows - r ? per / cols : rows - r) : 1;
        for (uint64_t c = 0; c < cols && rc == 0;) {
            uint64_t nc = cols <= per ? cols : (per < cols - c ? per : cols - c);
            hsize_t start[2], count[2];
            if (rank == 2) start[0] = r, start[1] = c, count[0] = nr, count[1] = nc;
            else start[0] = c, count[0] = nc;
            hsize_t total = nr * nc;
            hid_t ms = H5Screate_simple(1, &total, NULL);
            if (H5Sselect_hyperslab(sp, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
                H5Dread(ds, ckt_mtype((kind)k), ms, sp, H5P_DEFAULT, w->buf) < 0) {
                char why[200];
                ckt_hdf5_why(why, sizeof why);
                snprintf(w->why, sizeof w->why, "dataset %s cannot be read: %s", path, why);
                rc = -1;
            }
            H5Sclose(ms);
            if (rc == 0) ck_hash_update(&s, w->buf, (size_t)(total * es));
            c += nc;
        }
        r += nr;
    }
    H5Sclose(sp);
    if (rc == 0) ckt_digest_add(&w->d, &w->n, &w->cap, path, ck_hash_final(&s));
    return rc;
}

static int walk_group(walk *w, hid_t g, const char *prefix, int depth) {
    H5G_info_t gi;
    if (H5Gget_info(g, &gi) < 0) return walk_fail(w, "group %s cannot be read", prefix[0] ? prefix : "/");
    if (gi.nlinks > CK_MAX_LINKS) return walk_fail(w, "group %s has too many entries", prefix);
    for (hsize_t i = 0; i < gi.nlinks; i++) {
        char name[CK_LINK_NAME], path[CK_PATH];
        ssize_t len = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, NULL, 0, H5P_DEFAULT);
        if (len < 1 || len >= (ssize_t)sizeof name ||
            H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof name, H5P_DEFAULT) != len)
            return walk_fail(w, "group %s has an unreadable or over-long entry name", prefix);
        if ((size_t)snprintf(path, sizeof path, "%s/%s", prefix, name) >= sizeof path)
            return walk_fail(w, "path %s/... is too long", prefix);
        H5L_info_t li;
        if (H5Lget_info(g, name, &li, H5P_DEFAULT) < 0 || li.type != H5L_TYPE_HARD)
            return walk_fail(w, "%s is not a plain (hard) link", path);
        hid_t o = H5Oopen(g, name, H5P_DEFAULT);
        if (o < 0) return walk_fail(w, "%s cannot be opened", path);
        H5I_type_t t = H5Iget_type(o);
        int rc;
        if (t == H5I_GROUP) rc = depth < CK_MAX_DEPTH ? walk_group(w, o, path, depth + 1)
                                                      : walk_fail(w, "%s is nested too deep", path);
        else if (t == H5I_DATASET) rc = digest_dataset(w, o, path);
        else rc = walk_fail(w, "%s is neither a group nor a dataset", path);
        H5Oclose(o);
        if (rc != 0) return -1;
    }
    return 0;
}

static bool read_attr(hid_t f, const char *name, hid_t mt, void *v) {
    if (H5Aexists(f, name) <= 0) return false;
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    if (a < 0) return false;
    hid_t sp = H5Aget_space(a), t = H5Aget_type(a);
    bool ok = H5Sget_simple_extent_npoints(sp) == 1;
    if (ok && H5Tget_class(mt) == H5T_STRING) /* fixed-size string of exactly mt's size */
        ok = H5Tget_class(t) == H5T_STRING && !H5Tis_variable_str(t) && H5Tget_size(t) == H5Tget_size(mt);
    else if (ok) ok = H5Tget_class(t) == H5T_INTEGER && H5Tget_size(t) <= 8;
    ok = ok && H5Aread(a, mt, v) >= 0;
    H5Tclose(t);
    H5Sclose(sp);
    H5Aclose(a);
    return ok;
}

/* Open a checkpoint for reading after checking its format attributes. */
static hid_t open_ckpt(const char *path, qt_err *e) {
    struct stat st;
    if (stat(path, &st) != 0) return qt_errf(e, "%s: cannot open: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return qt_errf(e, "%s: not a regular file", path);
    hid_t fapl = ckt_make_fapl();
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    char why[200] = "";
    if (f < 0) ckt_hdf5_why(why, sizeof why); /* before any other call clears the error stack */
    H5Pclose(fapl);
    if (f < 0) {
        return qt_errf(e, "%s: not a readable HDF5 file (truncated or damaged?): %s", path, why);
    }
    char fmt[sizeof CK_FORMAT] = "";
    int version = 0;
    hid_t st_t = H5Tcopy(H5T_C_S1);
    H5Tset_size(st_t, sizeof CK_FORMAT);
    bool is_ours = read_attr(f, "format", st_t, fmt) && !memcmp(fmt, CK_FORMAT, sizeof CK_FORMAT);
    H5Tclose(st_t);
    if (!is_ours) {
        H5Fclose(f);
        return qt_errf(e, "%s: not a qtrain training checkpoint (no format attribute '%s')", path, CK_FORMAT);
    }
    if (!read_attr(f, "version", H5T_NATIVE_INT, &version) || version != CK_VERSION) {
        H5Fclose(f);
        return qt_errf(e, "%s: checkpoint format version %d; this qtrain reads version %d", path, version,
                       CK_VERSION);
    }
    return f;
}

int ck_train_verify(const char *path, qt_err *e) {
    quiet q = ckt_hdf5_quiet();
    hid_t f = open_ckpt(path, e);
    if (f < 0) {
        ckt_hdf5_loud(q);
        return -1;
    }
    uint64_t want = 0;
    bool has = read_attr(f, "checksum", H5T_NATIVE_UINT64, &want);
    struct stat st;
    walk w = {.limit = stat(path, &st) == 0 ? (uint64_t)st.st_size : 0, .buf = malloc(CK_CHUNK)};
    QT_CHECK(w.buf, "out of host memory");
    int rc = has ? walk_group(&w, f, "", 1) : -1;
    if (!has) snprintf(w.why, sizeof w.why, "no checksum attribute");
    if (rc == 0 && ckt_combine(w.d, w.n) != want) {
        snprintf(w.why, sizeof w.why, "checksum mismatch (the contents changed after writing)");
        rc = -1;
    }
    free(w.buf);
    ckt_digests_free(w.d, w.n);
    H5Fclose(f);
    ckt_hdf5_loud(q);
    return rc == 0 ? 0 : qt_errf(e, "%s: corrupt checkpoint: %s", path, w.why);
}

int ck_train_find(const char *dir, char *path, size_t n, qt_err *e) {
    entry *es;
    int ne = ckt_list_steps(dir, &es);
    char lpath[CK_PATH + 16], first_err[sizeof e->msg] = "";
    snprintf(lpath, sizeof lpath, "%s/latest", dir);
    char *latest = NULL;
    if (access(lpath, F_OK) == 0) {
        qt_err le;
        latest = ck_read_file(lpath, 4096, NULL, &le);
        if (latest) latest[strcspn(latest, "\r\n")] = 0;
        if (!latest || ckt_step_of(latest) < 0) {
            fprintf(stderr, "qtrain: warning: %s does not name a checkpoint file; using the newest intact one\n",
                    lpath);
            free(latest);
            latest = NULL;
        }
    }
    int found = 0, tried = 0;
    /* latest first, then every step file newest first */
    for (int i = latest ? -1 : 0; i < ne && !found; i++) {
        const char *name = i < 0 ? latest : es[i].name;
        if (i >= 0 && latest && !strcmp(name, latest)) continue;
        if ((size_t)snprintf(path, n, "%s/%s", dir, name) >= n) continue;
        qt_err ve;
        if (ck_train_verify(path, &ve) == 0) {
            found = 1;
            if (tried) fprintf(stderr, "qtrain: warning: falling back to %s\n", path);
            break;
        }
        fprintf(stderr, "qtrain: warning: %s\n", ve.msg);
        if (!tried++) snprintf(first_err, sizeof first_err, "%s", ve.msg);
    }
    free(latest);
    free(es);
    if (found) return 1;
    if (!tried) return 0;
    return qt_errf(e, "no intact checkpoint in %s (newest: %s)", dir, first_err);
}

/* ---- reading */

/* A 1-D dataset of kind k with between lo and hi elements into a malloc'd buffer (one spare
 * zero byte for strings). -1 with why when it is missing or does not fit. */
static int get_vec(hid_t f, const char *path, kind k, uint64_t lo, uint64_t hi, void **out, uint64_t *count,
                   char *why, size_t wn) {
    *out = NULL;
    hid_t ds = H5Lexists(f, path, H5P_DEFAULT) > 0 ? H5Dopen2(f, path, H5P_DEFAULT) : -1;
    if (ds < 0) return snprintf(why, wn, "%s is missing", path), -1;
    hid_t t = H5Dget_type(ds), sp = H5Dget_space(ds);
    hsize_t d = 0;
    bool ok = t >= 0 && ckt_classify(t) == (int)k && H5Sget_simple_extent_ndims(sp) == 1 &&
              H5Sget_simple_extent_dims(sp, &d, NULL) == 1 && d >= lo && d <= hi;
    if (!ok) snprintf(why, wn, "%s is not %s[%llu..%llu]", path, ckt_kname[k], (unsigned long long)lo,
                      (unsigned long long)hi);
    /* as when verifying: libhdf5 reads a compact dataset that stores fewer bytes than its shape through NULL */
    else if (H5Dget_storage_size(ds) != d * ckt_ksize[k])
        ok = false, snprintf(why, wn, "%s: its stored size does not match its shape (truncated or damaged)", path);
    if (ok) {
        *out = calloc((size_t)d * ckt_ksize[k] + 1, 1);
        QT_CHECK(*out, "out of host memory");
        if (d && H5Dread(ds, ckt_mtype(k), H5S_ALL, H5S_ALL, H5P_DEFAULT, *out) < 0) {
            ok = false;
            snprintf(why, wn, "%s cannot be read", path);
        }
        *count = d;
    }
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    H5Dclose(ds);
    if (!ok) free(*out), *out = NULL;
    return ok ? 0 : -1;
}
static int get_scalar(hid_t f, const char *path, kind k, void *v, char *why, size_t wn) {
    void *p;
    uint64_t n;
    if (get_vec(f, path, k, 1, 1, &p, &n, why, wn) != 0) return -1;
    memcpy(v, p, ckt_ksize[k]);
    free(p);
    return 0;
}
static int get_str(hid_t f, const char *path, char *out, size_t cap, char *why, size_t wn) {
    void *p;
    uint64_t n;
    if (get_vec(f, path, K_U8, 0, cap - 1, &p, &n, why, wn) != 0) return -1;
    memcpy(out, p, (size_t)n + 1);
    free(p);
    return 0;
}

int ck_train_read_state(const char *path, ck_train_state *s, qt_err *e) {
    memset(s, 0, sizeof *s);
    quiet q = ckt_hdf5_quiet();
    hid_t f = open_ckpt(path, e);
    if (f < 0) {
        ckt_hdf5_loud(q);
        return -1;
    }
    char why[CK_PATH + 64] = "";
    size_t wn = sizeof why;
    int rc = get_scalar(f, "/state/step", K_I64, &s->step, why, wn);
    if (!rc) rc = get_scalar(f, "/state/micro_batches", K_I64, &s->micro_batches, why, wn);
    if (!rc) rc = get_scalar(f, "/state/tokens", K_I64, &s->tokens, why, wn);
    if (!rc) rc = get_scalar(f, "/state/skipped_steps", K_I64, &s->skipped_steps, why, wn);
    if (!rc) rc = get_scalar(f, "/state/nonfinite_run", K_I64, &s->nonfinite_run, why, wn);
    if (!rc) rc = get_scalar(f, "/state/first_loss", K_F64, &s->first_loss, why, wn);
    if (!rc) rc = get_scalar(f, "/state/first_eval", K_F64, &s->first_eval, why, wn);
    if (!rc) rc = get_scalar(f, "/state/last_loss", K_F64, &s->last_loss, why, wn);
    if (!rc) rc = get_scalar(f, "/state/last_eval", K_F64, &s->last_eval, why, wn);
    if (!rc) rc = get_scalar(f, "/adamw/step", K_I64, &s->opt_step, why, wn);
    if (!rc) rc = get_scalar(f, "/data/epoch", K_I64, &s->data.epoch, why, wn);
    if (!rc) rc = get_scalar(f, "/data/index", K_I64, &s->data.index, why, wn);
    if (!rc) rc = get_scalar(f, "/data/seed", K_U64, &s->data.seed, why, wn);
    if (!rc && (s->step < 0 || s->opt_step < 0 || s->opt_step > s->step || s->micro_batches < 0 || s->data.epoch < 0 || s->data.index < 0))
        rc = -1, snprintf(why, wn, "negative or inconsistent step counters");
    uint64_t cnt;
    if (!rc && H5Lexists(f, "/data/loader", H5P_DEFAULT) > 0) {
        rc = get_vec(f, "/data/loader", K_U8, 1, CK_MAX_BLOB, (void **)&s->data.blob, &cnt, why, wn);
        s->data.blob_len = rc == 0 ? (size_t)cnt : 0;
    }
    if (!rc) rc = get_vec(f, "/config", K_U8, 1, CK_MAX_CONFIG - 1, (void **)&s->config, &cnt, why, wn);
    if (!rc) rc = get_str(f, "/identity/base_model", s->id.base_model, CK_ID_MAX, why, wn);
    if (!rc) rc = get_str(f, "/identity/tokenizer", s->id.tokenizer, CK_ID_MAX, why, wn);
    if (!rc) rc = get_str(f, "/identity/lora", s->id.lora, CK_ID_MAX, why, wn);
    if (!rc) rc = get_str(f, "/identity/data", s->id.data, CK_ID_MAX, why, wn);
    H5G_info_t gi;
    hid_t g = !rc && H5Lexists(f, "/rng", H5P_DEFAULT) > 0 ? H5Gopen2(f, "/rng", H5P_DEFAULT) : -1;
    if (g >= 0) {
        if (H5Gget_info(g, &gi) < 0 || gi.nlinks > CK_MAX_RNG) rc = -1, snprintf(why, wn, "/rng: too many streams");
        for (hsize_t i = 0; !rc && i < gi.nlinks; i++) {
            ck_rng *r = &s->rng[s->n_rng++];
            char p[CK_RNG_NAME + 8];
            ssize_t len = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, r->name, sizeof r->name,
                                             H5P_DEFAULT);
            if (len < 1 || len >= (ssize_t)sizeof r->name) {
                rc = -1, snprintf(why, wn, "/rng: a stream name is missing or too long");
                break;
            }
            snprintf(p, sizeof p, "/rng/%s", r->name);
            void *v;
            rc = get_vec(f, p, K_U64, 4, 4, &v, &cnt, why, wn);
            if (!rc) memcpy(r->s, v, sizeof r->s), free(v);
        }
        H5Gclose(g);
    }
    H5Fclose(f);
    ckt_hdf5_loud(q);
    if (rc != 0) {
        ck_train_state_free(s);
        return qt_errf(e, "%s: %s", path, why);
    }
    return 0;
}

void ck_train_state_free(ck_train_state *s) {
    free(s->config);
    free(s->data.blob);
    s->config = NULL;
    s->data.blob = NULL;
    s->data.blob_len = 0;
}

/* One [a, b] float32 dataset into dst, its shape checked first. */
static int get_tensor(hid_t f, const char *path, const int64_t *shape, float *dst, char *why, size_t wn) {
    hid_t ds = H5Lexists(f, path, H5P_DEFAULT) > 0 ? H5Dopen2(f, path, H5P_DEFAULT) : -1;
    if (ds < 0) return snprintf(why, wn, "%s is missing", path), -1;
    hid_t t = H5Dget_type(ds), sp = H5Dget_space(ds);
    hsize_t d[2] = {0, 0};
    bool ok = t >= 0 && ckt_classify(t) == K_F32 && H5Sget_simple_extent_ndims(sp) == 2 &&
              H5Sget_simple_extent_dims(sp, d, NULL) == 2;
    if (!ok) snprintf(why, wn, "%s is not a 2-D float32 tensor", path);
    else if (d[0] != (hsize_t)shape[0] || d[1] != (hsize_t)shape[1])
        ok = false, snprintf(why, wn, "%s has shape [%llu, %llu], the model's is [%lld, %lld]", path,
                             (unsigned long long)d[0], (unsigned long long)d[1], (long long)shape[0],
                             (long long)shape[1]);
    else if (H5Dget_storage_size(ds) != d[0] * d[1] * sizeof(float)) /* see get_vec */
        ok = false, snprintf(why, wn, "%s: its stored size does not match its shape (truncated or damaged)", path);
    if (ok && H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst) < 0)
        ok = false, snprintf(why, wn, "%s cannot be read", path);
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    H5Dclose(ds);
    return ok ? 0 : -1;
}

static int count_links(hid_t f, const char *group) {
    if (H5Lexists(f, group, H5P_DEFAULT) <= 0) return 0;
    hid_t g = H5Gopen2(f, group, H5P_DEFAULT);
    H5G_info_t gi;
    int n = g >= 0 && H5Gget_info(g, &gi) >= 0 && gi.nlinks <= CK_MAX_LINKS ? (int)gi.nlinks : -1;
    if (g >= 0) H5Gclose(g);
    return n;
}

int ck_train_read_params(const char *path, const ck_param *p, int n, qt_err *e) {
    quiet q = ckt_hdf5_quiet();
    hid_t f = open_ckpt(path, e);
    if (f < 0) {
        ckt_hdf5_loud(q);
        return -1;
    }
    char why[CK_PATH + 128] = "", dp[CK_PATH];
    int rc = 0;
    const char *groups[3] = {"/lora", "/adamw/m", "/adamw/v"};
    for (int g = 0; g < 3 && rc == 0; g++) {
        int have = count_links(f, groups[g]);
        if (have != n)
            rc = -1, snprintf(why, sizeof why, "%s holds %d tensors, the model has %d", groups[g], have, n);
    }
    for (int i = 0; i < n && rc == 0; i++) {
        float *dst[3] = {p[i].w, p[i].m, p[i].v};
        for (int g = 0; g < 3 && rc == 0; g++) {
            snprintf(dp, sizeof dp, "%s/%s", groups[g], p[i].name);
            rc = get_tensor(f, dp, p[i].shape, dst[g], why, sizeof why);
        }
    }
    H5Fclose(f);
    ckt_hdf5_loud(q);
    return rc == 0 ? 0 : qt_errf(e, "%s: %s", path, why);
}
