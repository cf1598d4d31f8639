/* Internals shared by the data pipeline's files (dataset.c, template.c, cache.c, loader.c).
 * Not part of the public API: include data/data.h instead. */
#ifndef QT_DATA_INTERNAL_H
#define QT_DATA_INTERNAL_H

#include "data.h"

/* Exits with a message when memory runs out. */
void *qd_xrealloc(void *p, size_t bytes);
/* Whole file, NUL-terminated; NULL (e filled when not NULL) when it cannot be read. */
char *qd_read_file(const char *path, size_t *len, qt_err *e);
/* Python str.strip() on s[*start, *start + *n). */
void qd_strip(const char *s, size_t *start, size_t *n);

/* Uniform in [0, n) from r (rejection sampling: unbiased). */
uint64_t qd_rng_below(qt_rng *r, uint64_t n);
/* perm = a uniformly random permutation of 0..n-1 drawn from seed (Fisher–Yates over qt_rng). */
void qd_permutation(int64_t *perm, int64_t n, uint64_t seed);

/* 128-bit non-cryptographic hash (two 64-bit lanes), streaming. */
typedef struct qd_hash {
    uint64_t h[2], total;
    uint8_t buf[16];
    size_t nbuf;
} qd_hash;
void qd_hash_init(qd_hash *h);
void qd_hash_bytes(qd_hash *h, const void *p, size_t n);
/* A tagged field: tag, length and bytes, so fields cannot run into each other. */
void qd_hash_field(qd_hash *h, const char *tag, const void *p, size_t n);
void qd_hash_u64(qd_hash *h, const char *tag, uint64_t v);
/* Hash a file's bytes as a field ("absent" when it does not exist). -1 when it exists but
 * cannot be read. */
int qd_hash_file(qd_hash *h, const char *tag, const char *path, qt_err *e);
void qd_hash_final(const qd_hash *h, uint64_t out[2]);

/* The cache file of a dataset. Read: 0 on a hit (d filled), 1 when there is no file, -1
 * when the file is there but unusable (why in e; the caller warns and rebuilds). */
int qd_cache_read(const char *path, const char *key, int64_t seq_len, qt_dataset *d, qt_err *e);
/* Write atomically (tmp file + rename). -1 with why in e. */
int qd_cache_write(const char *path, const char *key, const qt_dataset *d, qt_err *e);

#endif
