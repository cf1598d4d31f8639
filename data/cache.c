/* The token cache: the rows of a dataset in CACHE_DIR/<key>.h5, where the key hashes every
 * input of qt_data_load, so a second run with the same inputs skips tokenization.
 *
 * File layout (HDF5, readable with h5dump / h5py):
 *   /train_ids, /eval_ids     int32 [rows, seq_len]
 *   /train_mask, /eval_mask   uint8 [rows, seq_len], 1 = trained (label = id), deflated
 *   root attributes           format_version, key, seq_len, eos_id, pad_id, vocab_size,
 *                             the load's counters, and checksum: the hash of every array.
 * A file that fails any check (HDF5 error, wrong key or version, ids out of the vocabulary,
 * checksum) is reported to the caller, which warns and rebuilds it. Files are written to a
 * temporary name and renamed, so a reader never sees a half-written cache. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hdf5.h>

#include "data_internal.h"

#define CACHE_VERSION 1

/* ------------------------------------------------------------------ hashing */

static const uint64_t P1 = 0x9e3779b185ebca87ull, P2 = 0xc2b2ae3d27d4eb4full, P3 = 0x165667b19e3779f9ull,
                      P4 = 0x85ebca77c2b2ae63ull;
static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static uint64_t fmix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}
static uint64_t load64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static void block(qd_hash *h, const uint8_t *p) {
    uint64_t a = load64(p), b = load64(p + 8);
    h->h[0] = rotl(h->h[0] ^ (a * P1), 29) * P2 + b;
    h->h[1] = rotl(h->h[1] ^ (b * P3), 31) * P4 + a;
}

void qd_hash_init(qd_hash *h) {
    memset(h, 0, sizeof *h);
    h->h[0] = P4;
    h->h[1] = P1 ^ P3;
}

void qd_hash_bytes(qd_hash *h, const void *data, size_t n) {
    const uint8_t *p = data;
    h->total += n;
    if (h->nbuf) {
        size_t k = 16 - h->nbuf < n ? 16 - h->nbuf : n;
        memcpy(h->buf + h->nbuf, p, k);
        h->nbuf += k;
        p += k;
        n -= k;
        if (h->nbuf < 16) return;
        block(h, h->buf);
        h->nbuf = 0;
    }
    for (; n >= 16; p += 16, n -= 16) block(h, p);
    memcpy(h->buf, p, n);
    h->nbuf = n;
}

void qd_hash_final(const qd_hash *h, uint64_t out[2]) {
    qd_hash c = *h;
    uint8_t tail[16] = {0};
    memcpy(tail, c.buf, c.nbuf);
    tail[15] = (uint8_t)(0x80 | c.nbuf);
    block(&c, tail);
    c.h[0] ^= c.total * P3;
    c.h[1] ^= c.total * P1;
    out[0] = fmix(c.h[0] + rotl(c.h[1], 17));
    out[1] = fmix(c.h[1] ^ rotl(c.h[0], 41) ^ P2);
}

void qd_hash_field(qd_hash *h, const char *tag, const void *p, size_t n) {
    uint64_t tl = strlen(tag), len = n;
    qd_hash_bytes(h, &tl, sizeof tl);
    qd_hash_bytes(h, tag, tl);
    qd_hash_bytes(h, &len, sizeof len);
    qd_hash_bytes(h, p, n);
}

void qd_hash_u64(qd_hash *h, const char *tag, uint64_t v) { qd_hash_field(h, tag, &v, sizeof v); }

int qd_hash_file(qd_hash *h, const char *tag, const char *path, qt_err *e) {
    FILE *f = path && path[0] ? fopen(path, "rb") : NULL;
    if (!f) {
        if (path && path[0] && errno != ENOENT) return qt_errf(e, "%s: cannot open: %s", path, strerror(errno));
        qd_hash_field(h, tag, "absent", 6);
        return 0;
    }
    static _Thread_local uint8_t buf[1 << 16];
    qd_hash sub;
    qd_hash_init(&sub);
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, f)) > 0) qd_hash_bytes(&sub, buf, k);
    int bad = ferror(f);
    fclose(f);
    if (bad) return qt_errf(e, "%s: read error", path);
    uint64_t d[2];
    qd_hash_final(&sub, d);
    qd_hash_field(h, tag, d, sizeof d);
    return 0;
}

int qt_data_cache_key(const qt_data_opts *o, char key[33], qt_err *e) {
    char path[QT_DATA_PATH_MAX + 64];
    qd_hash h;
    qd_hash_init(&h);
    qd_hash_u64(&h, "qtrain-data", CACHE_VERSION);
    if (o->tokenizer_path && o->tokenizer_path[0]) snprintf(path, sizeof path, "%s", o->tokenizer_path);
    else snprintf(path, sizeof path, "%s/tokenizer.json", o->model_dir ? o->model_dir : ".");
    if (qd_hash_file(&h, "tokenizer.json", path, e) != 0) return -1;
    const char *dir = o->model_dir && o->model_dir[0] ? o->model_dir : NULL;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir ? dir : "");
    if (qd_hash_file(&h, "tokenizer_config.json", dir ? path : NULL, e) != 0) return -1;
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir ? dir : "");
    if (qd_hash_file(&h, "chat_template.jinja", dir ? path : NULL, e) != 0) return -1;
    if (qd_hash_file(&h, "train", o->train_path, e) != 0) return -1;
    if (qd_hash_file(&h, "eval", o->eval_path, e) != 0) return -1;
    const char *eos = o->eos_token ? o->eos_token : "";
    qd_hash_field(&h, "eos_token", eos, strlen(eos));
    qd_hash_u64(&h, "format", (uint64_t)o->format);
    if (o->format == QT_FMT_TOKENS) qd_hash_u64(&h, "tokens_eos_id", (uint64_t)o->tokens_eos_id);
    qd_hash_u64(&h, "chat_template", (uint64_t)o->chat_template);
    qd_hash_u64(&h, "seq_len", (uint64_t)o->seq_len);
    qd_hash_u64(&h, "packing", o->packing);
    double split = o->eval_path && o->eval_path[0] ? 0 : o->eval_split;
    qd_hash_field(&h, "eval_split", &split, sizeof split);
    qd_hash_u64(&h, "shuffle_seed", o->shuffle_seed);
    qd_hash_u64(&h, "skip_bad_lines", o->skip_bad_lines);
    uint64_t d[2];
    qd_hash_final(&h, d);
    snprintf(key, 33, "%016" PRIx64 "%016" PRIx64, d[0], d[1]);
    return 0;
}

static void checksum(const qt_dataset *d, char out[33]) {
    qd_hash h;
    qd_hash_init(&h);
    const qt_data_split *sp[2] = {&d->train, &d->eval};
    for (int i = 0; i < 2; i++) {
        size_t cells = (size_t)(sp[i]->n_rows * sp[i]->seq_len);
        qd_hash_field(&h, "ids", sp[i]->ids, cells * sizeof *sp[i]->ids);
        qd_hash_field(&h, "mask", sp[i]->train, cells);
    }
    uint64_t v[2];
    qd_hash_final(&h, v);
    snprintf(out, 33, "%016" PRIx64 "%016" PRIx64, v[0], v[1]);
}

/* ------------------------------------------------------------------ HDF5 helpers */

/* HDF5 prints its error stack by default; the cache reports its own errors instead. */
typedef struct quiet {
    H5E_auto2_t fn;
    void *data;
} quiet;
static quiet hdf5_quiet(void) {
    quiet q;
    H5Eget_auto2(H5E_DEFAULT, &q.fn, &q.data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    return q;
}
static void hdf5_loud(quiet q) { H5Eset_auto2(H5E_DEFAULT, q.fn, q.data); }

static int put_i64(hid_t f, const char *name, int64_t v) {
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, name, H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = a < 0 ? -1 : H5Awrite(a, H5T_NATIVE_INT64, &v);
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    return rc < 0 ? -1 : 0;
}

static int put_str(hid_t f, const char *name, const char *s) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, strlen(s) + 1);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = a < 0 ? -1 : H5Awrite(a, t, s);
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    H5Tclose(t);
    return rc < 0 ? -1 : 0;
}

static int get_i64(hid_t f, const char *name, int64_t *v) {
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    if (a < 0) return -1;
    hid_t sp = H5Aget_space(a);
    herr_t rc = H5Sget_simple_extent_npoints(sp) == 1 ? H5Aread(a, H5T_NATIVE_INT64, v) : -1;
    H5Sclose(sp);
    H5Aclose(a);
    return rc < 0 ? -1 : 0;
}

static int get_str(hid_t f, const char *name, char *buf, size_t n) {
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    if (a < 0) return -1;
    hid_t t = H5Aget_type(a);
    size_t sz = H5Tget_size(t);
    int rc = -1;
    if (H5Tget_class(t) == H5T_STRING && !H5Tis_variable_str(t) && sz > 0 && sz <= n) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, sz);
        rc = H5Aread(a, mt, buf) < 0 ? -1 : 0;
        buf[sz - 1] = 0;
        H5Tclose(mt);
    }
    H5Tclose(t);
    H5Aclose(a);
    return rc;
}

static int put_array(hid_t f, const char *name, hid_t ftype, hid_t mtype, const void *data, int64_t rows, int64_t T,
                     bool deflate) {
    hsize_t dims[2] = {(hsize_t)rows, (hsize_t)T};
    hid_t sp = H5Screate_simple(2, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (rows > 0) {
        hsize_t chunk[2] = {(hsize_t)(65536 / T > 0 ? 65536 / T : 1), (hsize_t)T};
        if (chunk[0] > (hsize_t)rows) chunk[0] = (hsize_t)rows;
        H5Pset_chunk(dcpl, 2, chunk);
        if (deflate && H5Zfilter_avail(H5Z_FILTER_DEFLATE) > 0) H5Pset_deflate(dcpl, 1);
    }
    hid_t ds = H5Dcreate2(f, name, ftype, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    herr_t rc = ds < 0 ? -1 : rows > 0 ? H5Dwrite(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) : 0;
    if (ds >= 0) H5Dclose(ds);
    H5Pclose(dcpl);
    H5Sclose(sp);
    return rc < 0 ? -1 : 0;
}

/* An array [rows, T] (rows read from the file) into a new buffer of elem bytes per cell.
 * The rows come from the file's header, so they are bounded by what a file of file_bytes
 * can hold (deflate compresses at most ~1032:1): a crafted header cannot make us allocate
 * terabytes. */
#define CACHE_MAX_RATIO 1100
static int get_array(hid_t f, const char *name, hid_t mtype, size_t elem, int64_t T, uint64_t file_bytes,
                     int64_t *rows, void **out, qt_err *e) {
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
    if (ds < 0) return qt_errf(e, "no dataset %s", name);
    hid_t sp = H5Dget_space(ds);
    hsize_t dims[2] = {0, 0};
    int rank = H5Sget_simple_extent_ndims(sp);
    int rc = 0;
    if (rank != 2 || H5Sget_simple_extent_dims(sp, dims, NULL) != 2 || dims[1] != (hsize_t)T ||
        dims[0] > (hsize_t)(INT64_MAX / T / 8))
        rc = qt_errf(e, "%s has the wrong shape", name);
    else if (dims[0] * dims[1] * elem > file_bytes * CACHE_MAX_RATIO + 65536)
        rc = qt_errf(e, "%s claims %llu rows, more than a %llu-byte file can hold", name,
                     (unsigned long long)dims[0], (unsigned long long)file_bytes);
    if (rc == 0) { /* libhdf5 1.10 reads a compact dataset holding fewer bytes than its shape through NULL */
        hid_t pl = H5Dget_create_plist(ds);
        if (H5Pget_layout(pl) == H5D_COMPACT && H5Dget_storage_size(ds) != dims[0] * dims[1] * elem)
            rc = qt_errf(e, "%s: its stored size does not match its shape", name);
        H5Pclose(pl);
    }
    if (rc == 0) {
        *rows = (int64_t)dims[0];
        *out = qd_xrealloc(NULL, (size_t)(dims[0] * dims[1]) * elem);
        if (dims[0] > 0 && H5Dread(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, *out) < 0)
            rc = qt_errf(e, "cannot read %s (file damaged or truncated)", name);
    }
    H5Sclose(sp);
    H5Dclose(ds);
    return rc;
}

static hid_t file_access(void) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
#if H5_VERSION_GE(1, 12, 1) || (H5_VERSION_GE(1, 10, 7) && !H5_VERSION_GE(1, 12, 0))
    H5Pset_file_locking(fapl, 0, 1); /* the cache is written by rename; locks fail on some network file systems */
#endif
    return fapl;
}

/* ------------------------------------------------------------------ read / write */

static const struct { const char *name; size_t off; } COUNTERS[] = {
    {"lines", offsetof(qt_data_stats, lines)},
    {"bad_lines", offsetof(qt_data_stats, bad_lines)},
    {"truncated", offsetof(qt_data_stats, truncated)},
    {"dropped", offsetof(qt_data_stats, dropped)},
    {"boundary_merges", offsetof(qt_data_stats, boundary_merges)},
};
#define N_COUNTERS (sizeof COUNTERS / sizeof *COUNTERS)

static int read_file(hid_t f, const char *key, int64_t T, uint64_t file_bytes, qt_dataset *d, qt_err *e) {
    int64_t v = 0;
    char s[512];
    if (get_i64(f, "format_version", &v) != 0 || v != CACHE_VERSION)
        return qt_errf(e, "format version %lld, expected %d", (long long)v, CACHE_VERSION);
    if (get_str(f, "key", s, sizeof s) != 0 || strcmp(s, key) != 0) return qt_errf(e, "the key does not match");
    if (get_i64(f, "seq_len", &v) != 0 || v != T) return qt_errf(e, "seq_len does not match");
    int64_t eos, pad, vocab;
    if (get_i64(f, "eos_id", &eos) != 0 || get_i64(f, "pad_id", &pad) != 0 || get_i64(f, "vocab_size", &vocab) != 0 ||
        vocab < 1 || vocab > TOK_MAX_IDS || eos < 0 || eos >= vocab || pad < 0 || pad >= vocab)
        return qt_errf(e, "missing or bad token attributes");
    d->eos_id = (int32_t)eos;
    d->pad_id = (int32_t)pad;
    d->vocab_size = (int32_t)vocab;
    for (size_t i = 0; i < N_COUNTERS; i++)
        if (get_i64(f, COUNTERS[i].name, (int64_t *)((char *)&d->stats + COUNTERS[i].off)) != 0)
            return qt_errf(e, "missing attribute %s", COUNTERS[i].name);
    get_str(f, "template_used", d->stats.template_used, sizeof d->stats.template_used);
    get_str(f, "first_bad", d->stats.first_bad, sizeof d->stats.first_bad);
    qt_data_split *sp[2] = {&d->train, &d->eval};
    const char *nm[2] = {"train", "eval"};
    for (int i = 0; i < 2; i++) {
        char a[32], b[32];
        int64_t r1 = 0, r2 = 0;
        snprintf(a, sizeof a, "%s_ids", nm[i]);
        snprintf(b, sizeof b, "%s_mask", nm[i]);
        if (get_array(f, a, H5T_NATIVE_INT32, 4, T, file_bytes, &r1, (void **)&sp[i]->ids, e) != 0 ||
            get_array(f, b, H5T_NATIVE_UINT8, 1, T, file_bytes, &r2, (void **)&sp[i]->train, e) != 0)
            return -1;
        if (r1 != r2) return qt_errf(e, "%s and %s differ in rows", a, b);
        sp[i]->n_rows = r1;
        sp[i]->seq_len = T;
        snprintf(a, sizeof a, "%s_examples", nm[i]);
        if (get_i64(f, a, &sp[i]->n_examples) != 0) return qt_errf(e, "missing attribute %s", a);
        snprintf(a, sizeof a, "%s_tokens", nm[i]);
        if (get_i64(f, a, &sp[i]->n_tokens) != 0) return qt_errf(e, "missing attribute %s", a);
        int64_t loss = 0;
        for (int64_t k = 0; k < r1 * T; k++) {
            if (sp[i]->ids[k] < 0 || sp[i]->ids[k] >= vocab || sp[i]->train[k] > 1)
                return qt_errf(e, "%s split: a token id or mask value is out of range", nm[i]);
            loss += sp[i]->train[k];
        }
        sp[i]->n_loss_tokens = loss;
    }
    if (d->train.n_rows < 1) return qt_errf(e, "no train rows");
    char want[33];
    checksum(d, want);
    if (get_str(f, "checksum", s, sizeof s) != 0 || strcmp(s, want) != 0)
        return qt_errf(e, "checksum mismatch: the file is damaged");
    return 0;
}

int qd_cache_read(const char *path, const char *key, int64_t seq_len, qt_dataset *d, qt_err *e) {
    struct stat st;
    if (stat(path, &st) != 0) return 1;
    quiet q = hdf5_quiet();
    hid_t fapl = file_access();
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    int rc;
    if (f < 0) rc = qt_errf(e, "not a readable HDF5 file (damaged or truncated)");
    else {
        rc = read_file(f, key, seq_len, (uint64_t)st.st_size, d, e);
        H5Fclose(f);
    }
    hdf5_loud(q);
    if (rc != 0) {
        qt_data_free(d);
        qt_data_stats keep = d->stats;
        memset(&d->stats, 0, sizeof d->stats);
        memcpy(d->stats.cache_path, keep.cache_path, sizeof keep.cache_path);
        return -1;
    }
    return 0;
}

static int write_file(hid_t f, const char *key, const qt_dataset *d) {
    char sum[33];
    checksum(d, sum);
    int bad = put_i64(f, "format_version", CACHE_VERSION) | put_str(f, "key", key) |
              put_i64(f, "seq_len", d->train.seq_len) | put_i64(f, "eos_id", d->eos_id) |
              put_i64(f, "pad_id", d->pad_id) | put_i64(f, "vocab_size", d->vocab_size) |
              put_str(f, "template_used", d->stats.template_used) | put_str(f, "first_bad", d->stats.first_bad) |
              put_str(f, "checksum", sum);
    for (size_t i = 0; i < N_COUNTERS; i++)
        bad |= put_i64(f, COUNTERS[i].name, *(const int64_t *)((const char *)&d->stats + COUNTERS[i].off));
    const qt_data_split *sp[2] = {&d->train, &d->eval};
    const char *nm[2] = {"train", "eval"};
    for (int i = 0; i < 2; i++) {
        char a[32];
        int64_t T = d->train.seq_len;
        snprintf(a, sizeof a, "%s_ids", nm[i]);
        bad |= put_array(f, a, H5T_STD_I32LE, H5T_NATIVE_INT32, sp[i]->ids, sp[i]->n_rows, T, false);
        snprintf(a, sizeof a, "%s_mask", nm[i]);
        bad |= put_array(f, a, H5T_STD_U8LE, H5T_NATIVE_UINT8, sp[i]->train, sp[i]->n_rows, T, true);
        snprintf(a, sizeof a, "%s_examples", nm[i]);
        bad |= put_i64(f, a, sp[i]->n_examples);
        snprintf(a, sizeof a, "%s_tokens", nm[i]);
        bad |= put_i64(f, a, sp[i]->n_tokens);
    }
    return bad ? -1 : 0;
}

int qd_cache_write(const char *path, const char *key, const qt_dataset *d, qt_err *e) {
    char tmp[QT_DATA_PATH_MAX + 128];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    quiet q = hdf5_quiet();
    hid_t fapl = file_access();
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    int rc = 0;
    if (f < 0) rc = qt_errf(e, "cannot create %s", tmp);
    else {
        if (write_file(f, key, d) != 0) rc = qt_errf(e, "HDF5 error writing %s (disk full?)", tmp);
        if (H5Fclose(f) < 0 && rc == 0) rc = qt_errf(e, "HDF5 error closing %s (disk full?)", tmp);
    }
    hdf5_loud(q);
    if (rc == 0) { /* on disk before the rename makes it visible */
        int fd = open(tmp, O_RDONLY);
        if (fd < 0 || fsync(fd) != 0) rc = qt_errf(e, "cannot sync %s: %s", tmp, strerror(errno));
        if (fd >= 0) close(fd);
    }
    if (rc == 0 && rename(tmp, path) != 0) rc = qt_errf(e, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    if (rc != 0) unlink(tmp);
    return rc;
}
