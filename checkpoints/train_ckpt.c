/* HDF5 training checkpoints (checkpoints.h section 4; the layout is in docs/checkpoints.md):
 * the format and writing. Verifying, finding and reading are in train_ckpt_read.c.
 *
 * Integrity: every dataset gets a digest, ck_hash over (kind, rank, dims, bytes in C
 * order), computed from the caller's buffers when writing and from the file, re-read in
 * bounded chunks, when verifying. The root attribute `checksum` hashes the digests in
 * path order (strcmp), so a changed byte, a truncated dataset, a missing or an added one
 * all fail verification. Everything the trainer needs is a dataset (even scalars), so the
 * checksum covers it all; only the three root attributes (format, version, checksum) are
 * outside it.
 *
 * Durability: HDF5 builds the file in memory (core driver); we write that image as
 * STEP.h5.tmp, fsync, close, rename, and fsync the folder; only then is `latest` rewritten
 * (ck_write_atomic) and old files removed. A crash at any moment therefore leaves the
 * previous checkpoint and a `latest` naming an intact file (or, between the rename and
 * `latest`, a newer intact file `latest` does not name yet — still a valid checkpoint).
 *
 * HDF5's automatic error stacks are switched off while we work (restored after); the
 * innermost HDF5 error (an errno when it has one) becomes part of our one-line message. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "train_ckpt_internal.h"

/* ---- HDF5 plumbing */

quiet ckt_hdf5_quiet(void) {
    quiet q;
    H5Eget_auto2(H5E_DEFAULT, &q.fn, &q.data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    return q;
}
void ckt_hdf5_loud(quiet q) { H5Eset_auto2(H5E_DEFAULT, q.fn, q.data); }

typedef struct h5why { int err; char desc[160]; } h5why;
static herr_t why_cb(unsigned n, const H5E_error2_t *d, void *u) {
    h5why *w = u;
    if (n == 0 && d->desc) snprintf(w->desc, sizeof w->desc, "%s", d->desc);
    const char *p = d->desc ? strstr(d->desc, "errno = ") : NULL;
    if (p && !w->err) w->err = atoi(p + 8);
    return 0;
}
/* Why the last HDF5 call failed: call it before any other HDF5 call clears the stack. */
void ckt_hdf5_why(char *buf, size_t n) {
    h5why w = {0};
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, why_cb, &w);
    if (w.err > 0) snprintf(buf, n, "%s", strerror(w.err));
    else if (w.desc[0]) snprintf(buf, n, "HDF5: %s", w.desc);
    else snprintf(buf, n, "HDF5 error");
}

hid_t ckt_make_fapl(void) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG); /* H5Fclose really closes the file */
#if H5_VERSION_GE(1, 12, 1) || (H5_VERSION_GE(1, 10, 7) && !H5_VERSION_GE(1, 12, 0))
    H5Pset_file_locking(fapl, 0, 1); /* files are published by rename; locks fail on some network file systems */
#endif
    return fapl;
}

/* The element kinds a checkpoint holds: little-endian in the file, native in memory. */
const size_t ckt_ksize[K_N] = {1, 8, 8, 4, 8};
const char *const ckt_kname[K_N] = {"u8", "i64", "u64", "f32", "f64"};
hid_t ckt_ftype(kind k) {
    switch (k) {
    case K_U8: return H5T_STD_U8LE;
    case K_I64: return H5T_STD_I64LE;
    case K_U64: return H5T_STD_U64LE;
    case K_F32: return H5T_IEEE_F32LE;
    default: return H5T_IEEE_F64LE;
    }
}
hid_t ckt_mtype(kind k) {
    switch (k) {
    case K_U8: return H5T_NATIVE_UINT8;
    case K_I64: return H5T_NATIVE_INT64;
    case K_U64: return H5T_NATIVE_UINT64;
    case K_F32: return H5T_NATIVE_FLOAT;
    default: return H5T_NATIVE_DOUBLE;
    }
}
int ckt_classify(hid_t t) {
    for (int k = 0; k < K_N; k++)
        if (H5Tequal(t, ckt_ftype((kind)k)) > 0) return k;
    return -1;
}

void ckt_digest_begin(ck_hash *s, kind k, int rank, const uint64_t *dims) {
    ck_hash_init(s);
    uint8_t head[2] = {(uint8_t)k, (uint8_t)rank};
    ck_hash_update(s, head, 2);
    ck_hash_update(s, dims, sizeof(uint64_t) * (size_t)rank);
}

static int cmp_digest(const void *a, const void *b) {
    return strcmp(((const digest *)a)->path, ((const digest *)b)->path);
}
uint64_t ckt_combine(digest *d, int n) {
    qsort(d, (size_t)n, sizeof *d, cmp_digest);
    ck_hash s;
    ck_hash_init(&s);
    for (int i = 0; i < n; i++) {
        ck_hash_update(&s, d[i].path, strlen(d[i].path) + 1);
        ck_hash_update(&s, &d[i].h, sizeof d[i].h);
    }
    return ck_hash_final(&s);
}
void ckt_digests_free(digest *d, int n) {
    for (int i = 0; i < n; i++) free(d[i].path);
    free(d);
}
void ckt_digest_add(digest **d, int *n, int *cap, const char *path, uint64_t h) {
    if (*n == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        *d = realloc(*d, sizeof **d * (size_t)*cap);
        QT_CHECK(*d, "out of host memory");
    }
    (*d)[*n].path = strdup(path);
    QT_CHECK((*d)[*n].path, "out of host memory");
    (*d)[(*n)++].h = h;
}

/* ---- the checkpoint folder */

/* "step-000123.h5" -> 123; -1 for any other name (latest, tmp files, a hostile ../x). */
int64_t ckt_step_of(const char *name) {
    if (strncmp(name, "step-", 5)) return -1;
    const char *p = name + 5, *q = p;
    while (*q >= '0' && *q <= '9') q++;
    if (q == p || q - p > 18 || strcmp(q, ".h5")) return -1;
    return strtoll(p, NULL, 10);
}

static int cmp_entry_desc(const void *a, const void *b) {
    int64_t x = ((const entry *)a)->step, y = ((const entry *)b)->step;
    return x < y ? 1 : x > y ? -1 : 0;
}
/* The step files of dir, newest first; 0 entries when dir cannot be read. */
int ckt_list_steps(const char *dir, entry **out) {
    *out = NULL;
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        int64_t s = ckt_step_of(de->d_name);
        if (s < 0 || strlen(de->d_name) >= sizeof((entry *)0)->name) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            *out = realloc(*out, sizeof **out * (size_t)cap);
            QT_CHECK(*out, "out of host memory");
        }
        (*out)[n].step = s;
        snprintf((*out)[n++].name, sizeof(*out)->name, "%s", de->d_name);
    }
    closedir(d);
    if (n) qsort(*out, (size_t)n, sizeof **out, cmp_entry_desc);
    return n;
}

/* ---- writing */

typedef struct wctx {
    hid_t f, lcpl;
    digest *d;
    int n, cap;
    bool failed;
    char why[256], where[CK_PATH];
} wctx;

static void put(wctx *w, const char *path, kind k, int rank, const uint64_t *dims, const void *data) {
    if (w->failed) return;
    hsize_t hd[2] = {0, 0};
    uint64_t numel = 1;
    for (int i = 0; i < rank; i++) hd[i] = dims[i], numel *= dims[i];
    hid_t sp = H5Screate_simple(rank, hd, NULL);
    hid_t ds = H5Dcreate2(w->f, path, ckt_ftype(k), sp, w->lcpl, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = ds < 0 ? -1 : numel ? H5Dwrite(ds, ckt_mtype(k), H5S_ALL, H5S_ALL, H5P_DEFAULT, data) : 0;
    if (rc < 0) {
        ckt_hdf5_why(w->why, sizeof w->why);
        snprintf(w->where, sizeof w->where, "%s", path);
        w->failed = true;
    }
    if (ds >= 0) H5Dclose(ds);
    H5Sclose(sp);
    ck_hash s;
    ckt_digest_begin(&s, k, rank, dims);
    ck_hash_update(&s, data, (size_t)(numel * ckt_ksize[k]));
    ckt_digest_add(&w->d, &w->n, &w->cap, path, ck_hash_final(&s));
}
static void put_i64(wctx *w, const char *path, int64_t v) { put(w, path, K_I64, 1, (uint64_t[]){1}, &v); }
static void put_u64(wctx *w, const char *path, uint64_t v) { put(w, path, K_U64, 1, (uint64_t[]){1}, &v); }
static void put_f64(wctx *w, const char *path, double v) { put(w, path, K_F64, 1, (uint64_t[]){1}, &v); }
static void put_bytes(wctx *w, const char *path, const void *p, size_t n) {
    put(w, path, K_U8, 1, (uint64_t[]){n}, n ? p : "");
}

static void put_attr(wctx *w, const char *name, hid_t type, const void *v) {
    if (w->failed) return;
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(w->f, name, type, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0 || H5Awrite(a, type, v) < 0) {
        ckt_hdf5_why(w->why, sizeof w->why);
        snprintf(w->where, sizeof w->where, "attribute %s", name);
        w->failed = true;
    }
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
}

static void write_contents(wctx *w, const ck_train_state *s, const ck_param *p, int n) {
    put_i64(w, "/state/step", s->step);
    put_i64(w, "/state/micro_batches", s->micro_batches);
    put_i64(w, "/state/tokens", s->tokens);
    put_i64(w, "/state/skipped_steps", s->skipped_steps);
    put_i64(w, "/state/nonfinite_run", s->nonfinite_run);
    put_f64(w, "/state/first_loss", s->first_loss);
    put_f64(w, "/state/first_eval", s->first_eval);
    put_f64(w, "/state/last_loss", s->last_loss);
    put_f64(w, "/state/last_eval", s->last_eval);
    put_i64(w, "/adamw/step", s->opt_step);
    char path[CK_PATH];
    for (int i = 0; i < s->n_rng; i++) {
        snprintf(path, sizeof path, "/rng/%s", s->rng[i].name);
        put(w, path, K_U64, 1, (uint64_t[]){4}, s->rng[i].s);
    }
    put_i64(w, "/data/epoch", s->data.epoch);
    put_i64(w, "/data/index", s->data.index);
    put_u64(w, "/data/seed", s->data.seed);
    if (s->data.blob_len) put_bytes(w, "/data/loader", s->data.blob, s->data.blob_len);
    put_bytes(w, "/config", s->config, strlen(s->config));
    put_bytes(w, "/identity/base_model", s->id.base_model, strlen(s->id.base_model));
    put_bytes(w, "/identity/tokenizer", s->id.tokenizer, strlen(s->id.tokenizer));
    put_bytes(w, "/identity/lora", s->id.lora, strlen(s->id.lora));
    put_bytes(w, "/identity/data", s->id.data, strlen(s->id.data));
    for (int i = 0; i < n; i++) {
        uint64_t dims[2] = {(uint64_t)p[i].shape[0], (uint64_t)p[i].shape[1]};
        snprintf(path, sizeof path, "/lora/%s", p[i].name);
        put(w, path, K_F32, 2, dims, p[i].w);
        snprintf(path, sizeof path, "/adamw/m/%s", p[i].name);
        put(w, path, K_F32, 2, dims, p[i].m);
        snprintf(path, sizeof path, "/adamw/v/%s", p[i].name);
        put(w, path, K_F32, 2, dims, p[i].v);
    }
}

static void fsync_dir(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* Fault tests: QTRAIN_TEST_SLOW_SAVE=SECONDS widens the window around the rename. */
static void test_pause(void) {
    const char *v = getenv("QTRAIN_TEST_SLOW_SAVE");
    double s = v ? strtod(v, NULL) : 0;
    if (!(s > 0)) return;
    struct timespec t = {(time_t)s, (long)((s - floor(s)) * 1e9)};
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {}
}

/* ---- the checkpoint folder */

static void unlink_in(const char *dir, const char *name) {
    char path[CK_PATH + 256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unlink(path);
}

/* After `latest` names step `cur`: drop files of a higher step (an abandoned future: the run
 * went back to an older checkpoint), all but the `keep` newest others, and stale tmp files
 * left by a process killed mid-save. */
static void prune(const char *dir, int64_t cur, int64_t keep) {
    entry *es;
    int n = ckt_list_steps(dir, &es);
    int64_t kept = 0;
    for (int i = 0; i < n; i++) {
        if (es[i].step > cur || (keep > 0 && es[i].step != cur && kept >= keep)) unlink_in(dir, es[i].name);
        else kept++;
    }
    free(es);
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        bool tmp = (!strncmp(de->d_name, "step-", 5) && len > 8 && !strcmp(de->d_name + len - 7, ".h5.tmp")) ||
                   !strncmp(de->d_name, "latest.tmp.", 11);
        if (tmp) unlink_in(dir, de->d_name);
    }
    closedir(d);
}

/* The whole file image to tmp: write, fsync, close. errno-style message on failure. */
static int write_image(const char *tmp, const void *buf, size_t n, char *why, size_t wn) {
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return snprintf(why, wn, "%s", strerror(errno)), -1;
    const uint8_t *p = buf;
    int err = 0;
    while (n > 0 && !err) {
        ssize_t k = write(fd, p, n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) err = k < 0 ? errno : ENOSPC;
        else p += k, n -= (size_t)k;
    }
    if (!err && fsync(fd) != 0) err = errno;
    if (close(fd) != 0 && !err) err = errno;
    if (err) snprintf(why, wn, "%s", strerror(err));
    return err ? -1 : 0;
}

/* The file is built in memory (HDF5's core driver) and written by write_image: a full disk
 * or a write error then never reaches HDF5 (whose state after a failed write to a real file
 * is not recoverable: HDF5 1.10 crashes at exit), and the message carries the errno. The
 * price is a transient copy of the checkpoint in host memory. */
static int build_image(const ck_train_state *s, const ck_param *p, int n, void **image, size_t *len, char *why,
                       size_t wn) {
    size_t est = 1 << 20;
    for (int i = 0; i < n; i++) est += 3 * sizeof(float) * (size_t)(p[i].shape[0] * p[i].shape[1]) + 4096;
    est += strlen(s->config) + s->data.blob_len;
    hid_t fapl = ckt_make_fapl();
    H5Pset_fapl_core(fapl, est, 0); /* one allocation of about the final size; no backing file */
    char mem_name[64];
    snprintf(mem_name, sizeof mem_name, "qtrain-checkpoint-%lld", (long long)s->step);
    wctx w = {.f = H5Fcreate(mem_name, H5F_ACC_TRUNC, H5P_DEFAULT, fapl)};
    if (w.f < 0) ckt_hdf5_why(w.why, sizeof w.why); /* before any other call clears the error stack */
    H5Pclose(fapl);
    if (w.f < 0) return snprintf(why, wn, "%s", w.why), -1;
    w.lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(w.lcpl, 1);
    write_contents(&w, s, p, n);
    uint64_t sum = ckt_combine(w.d, w.n);
    int version = CK_VERSION;
    hid_t st = H5Tcopy(H5T_C_S1);
    H5Tset_size(st, sizeof CK_FORMAT);
    put_attr(&w, "format", st, CK_FORMAT);
    H5Tclose(st);
    put_attr(&w, "version", H5T_NATIVE_INT, &version);
    put_attr(&w, "checksum", H5T_NATIVE_UINT64, &sum);
    ssize_t size = -1;
    if (!w.failed && (H5Fflush(w.f, H5F_SCOPE_LOCAL) < 0 || (size = H5Fget_file_image(w.f, NULL, 0)) <= 0)) {
        ckt_hdf5_why(w.why, sizeof w.why);
        snprintf(w.where, sizeof w.where, "file image");
        w.failed = true;
    }
    if (!w.failed) {
        *image = malloc((size_t)size);
        QT_CHECK(*image, "out of host memory for a %zd-byte checkpoint", size);
        *len = (size_t)size;
        if (H5Fget_file_image(w.f, *image, (size_t)size) != size) {
            ckt_hdf5_why(w.why, sizeof w.why);
            snprintf(w.where, sizeof w.where, "file image");
            w.failed = true;
            free(*image);
            *image = NULL;
        }
    }
    H5Fclose(w.f);
    H5Pclose(w.lcpl);
    ckt_digests_free(w.d, w.n);
    if (w.failed) snprintf(why, wn, "%.120s: %.250s", w.where, w.why);
    return w.failed ? -1 : 0;
}

int ck_train_save(const char *dir, const ck_train_state *s, const ck_param *p, int n, int64_t keep,
                  char *name_out, qt_err *e) {
    QT_CHECK(s->step >= 0 && s->n_rng >= 0 && s->n_rng <= CK_MAX_RNG && s->config, "bad checkpoint state");
    QT_CHECK(s->data.blob_len <= CK_MAX_BLOB && strlen(s->config) < CK_MAX_CONFIG, "checkpoint state too large");
    if (ck_mkdirs(dir, e) != 0) return -1;
    char name[32], path[CK_PATH + 64], tmp[CK_PATH + 72], why[400];
    snprintf(name, sizeof name, "step-%06lld.h5", (long long)s->step);
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >= CK_PATH)
        return qt_errf(e, "checkpoint folder path too long: %s", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);

    quiet q = ckt_hdf5_quiet();
    void *image = NULL;
    size_t len = 0;
    int rc = build_image(s, p, n, &image, &len, why, sizeof why);
    ckt_hdf5_loud(q);
    if (rc != 0) return qt_errf(e, "cannot build checkpoint %s: %s", path, why);
    rc = write_image(tmp, image, len, why, sizeof why);
    free(image);
    if (rc != 0) {
        unlink(tmp);
        return qt_errf(e, "cannot write checkpoint %s: %s; the previous checkpoint is intact; free disk space "
                          "or fix the folder, then resume", path, why);
    }
    test_pause();
    if (rename(tmp, path) != 0) {
        int err = errno;
        unlink(tmp);
        return qt_errf(e, "cannot rename %s to %s: %s; the previous checkpoint is intact", tmp, path, strerror(err));
    }
    fsync_dir(dir);
    test_pause();
    char latest[CK_PATH + 16], line[80];
    snprintf(latest, sizeof latest, "%s/latest", dir);
    snprintf(line, sizeof line, "%s\n", name);
    ck_chunk c = {line, strlen(line)};
    if (ck_write_atomic(latest, &c, 1, e) != 0) return -1; /* latest still names the previous file */
    prune(dir, s->step, keep);
    if (name_out) snprintf(name_out, 32, "%s", name);
    return 0;
}

