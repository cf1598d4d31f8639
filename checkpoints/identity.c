/* Hashes for checkpoints: the checksum that guards every training checkpoint, and the
 * identities (base model, tokenizer, data) a resumed run must share with the run that
 * wrote the checkpoint.
 *
 * The hash is FNV-1a applied to 64-bit little-endian words instead of bytes, then the
 * murmur3 finalizer. Words make it fast (one multiply per 8 bytes: checkpoints of a 70B
 * LoRA hold gigabytes); each step h -> (h ^ w) * P is a bijection of h for a fixed w, so
 * changing any single word always changes the result, and the byte length is mixed in so
 * truncation or zero padding is seen too. It guards against damage, not against forgery. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoints.h"

#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

static inline uint64_t load_le64(const uint8_t *p) {
    uint64_t w;
    memcpy(&w, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    return w;
}

void ck_hash_init(ck_hash *s) {
    memset(s, 0, sizeof *s);
    s->h = FNV_OFFSET;
}

void ck_hash_update(ck_hash *s, const void *data, size_t n) {
    const uint8_t *p = data;
    s->len += n;
    if (s->ntail) { /* complete the pending word first */
        while (n > 0 && s->ntail < 8) s->tail[s->ntail++] = *p++, n--;
        if (s->ntail < 8) return;
        s->h = (s->h ^ load_le64(s->tail)) * FNV_PRIME;
        s->ntail = 0;
    }
    uint64_t h = s->h;
    for (; n >= 8; p += 8, n -= 8) h = (h ^ load_le64(p)) * FNV_PRIME;
    s->h = h;
    while (n > 0) s->tail[s->ntail++] = *p++, n--;
}

uint64_t ck_hash_final(const ck_hash *s) {
    uint64_t h = s->h;
    if (s->ntail) {
        uint8_t w[8] = {0};
        memcpy(w, s->tail, (size_t)s->ntail);
        h = (h ^ load_le64(w)) * FNV_PRIME;
    }
    h = (h ^ s->len) * FNV_PRIME;
    h ^= h >> 33; /* murmur3 fmix64: every input bit reaches every output bit */
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

uint64_t ck_hash64(const void *data, size_t n) {
    ck_hash s;
    ck_hash_init(&s);
    ck_hash_update(&s, data, n);
    return ck_hash_final(&s);
}

int ck_hash_file(const char *path, ck_hash *s, uint64_t *size, qt_err *e) {
    uint64_t fsize;
    int fd = ck_open_file(path, &fsize, e);
    if (fd < 0) return -1;
    size_t cap = (size_t)1 << 20;
    uint8_t *buf = malloc(cap);
    QT_CHECK(buf, "out of host memory");
    uint64_t total = 0;
    int rc = 0;
    for (;;) {
        ssize_t r = read(fd, buf, cap);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = qt_errf(e, "%s: read failed: %s", path, strerror(errno));
            break;
        }
        if (r == 0) break;
        ck_hash_update(s, buf, (size_t)r);
        total += (uint64_t)r;
    }
    free(buf);
    close(fd);
    if (size) *size = total;
    return rc;
}

/* The model's identity: config.json and the safetensors headers (names, dtypes, shapes,
 * offsets and metadata of every tensor, and each shard's size) — what makes two folders the
 * same model without reading gigabytes of weights. */
int ck_model_identity(const char *dir, char *out, size_t n, qt_err *e) {
    size_t plen = strlen(dir) + 32;
    char *cfg = malloc(plen);
    QT_CHECK(cfg, "out of host memory");
    snprintf(cfg, plen, "%s/config.json", dir);
    ck_hash s;
    ck_hash_init(&s);
    int rc = ck_hash_file(cfg, &s, NULL, e);
    free(cfg);
    if (rc != 0) return -1;
    st_model m;
    if (st_model_open(&m, dir, e) != 0) return -1;
    for (int i = 0; i < m.n_files; i++) {
        const st_file *f = &m.files[i];
        uint64_t sz = f->size, hdr = 8 + f->header_len;
        ck_hash_update(&s, &sz, sizeof sz);
        ck_hash_update(&s, f->map, (size_t)(hdr < f->size ? hdr : f->size));
    }
    snprintf(out, n, "config.json + %d safetensors header%s h64:%016llx", m.n_files, m.n_files == 1 ? "" : "s",
             (unsigned long long)ck_hash_final(&s));
    st_model_close(&m);
    return 0;
}

const char *ck_identity_mismatch(const ck_identity *saved, const ck_identity *now, const char **was,
                                 const char **is) {
    const char *names[4] = {"base model", "tokenizer", "LoRA shape", "data"};
    const char *a[4] = {saved->base_model, saved->tokenizer, saved->lora, saved->data};
    const char *b[4] = {now->base_model, now->tokenizer, now->lora, now->data};
    for (int i = 0; i < 4; i++)
        if (strcmp(a[i], b[i])) {
            if (was) *was = a[i];
            if (is) *is = b[i];
            return names[i];
        }
    return NULL;
}
