/* Shared by the libFuzzer targets in tests/fuzz/ (built with -DQTRAIN_FUZZ=ON, run by
 * tests/fuzz.sh): inputs as files without touching the disk (memfd), a scratch folder per
 * process, and the fixture tokenizers.
 *
 * What counts as a finding: any sanitizer report, an abort (QT_CHECK on user input is a
 * bug: bad files must give an error, not an internal-invariant failure), an exit (qt_die),
 * a timeout, a single allocation over -malloc_limit_mb, and the explicit property checks
 * of a target (fz_require). A parser returning -1 is the expected outcome for most inputs;
 * the targets then check that the message is not empty. */
#ifndef QT_FUZZ_UTIL_H
#define QT_FUZZ_UTIL_H

#define _GNU_SOURCE /* memfd_create */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "data/tokenizer.h"

/* A property a target checks: print why and abort, which libFuzzer reports as a crash and
 * saves the input. */
__attribute__((noreturn, format(printf, 1, 2))) static inline void fz_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fuzz property failed: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}
#define fz_require(cond, ...) \
    do {                      \
        if (!(cond)) fz_fail(__VA_ARGS__); \
    } while (0)

/* A parser that fails must say why. */
static inline void fz_check_err(int rc, const qt_err *e, const char *what) {
    if (rc != 0) fz_require(e->msg[0] != 0, "%s failed with an empty error message", what);
}

/* The bytes as a file: a memfd reachable as /proc/self/fd/N (the parsers open paths).
 * Returns the fd (close it when done) and the path in path[n]. */
static inline int fz_memfile(const uint8_t *data, size_t size, char *path, size_t n) {
    int fd = memfd_create("fuzz", MFD_CLOEXEC);
    if (fd < 0) {
        perror("memfd_create");
        abort();
    }
    size_t off = 0;
    while (off < size) {
        ssize_t w = write(fd, data + off, size - off);
        if (w <= 0) {
            perror("write memfd");
            abort();
        }
        off += (size_t)w;
    }
    snprintf(path, n, "/proc/self/fd/%d", fd);
    return fd;
}

/* A scratch folder for this process (targets that read a model or adapter folder). */
static inline const char *fz_tmpdir(void) {
    static char dir[256];
    if (!dir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/qtrain-fuzz-XXXXXX", base && base[0] ? base : "/tmp");
        if (!mkdtemp(dir)) {
            perror("mkdtemp");
            abort();
        }
    }
    return dir;
}

/* Write bytes to DIR/name (replacing it). */
static inline void fz_write(const char *dir, const char *name, const void *data, size_t size) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        perror(p);
        abort();
    }
}

static inline char *fz_read_fixture(const char *rel, size_t *len) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", QT_SOURCE_DIR, rel);
    FILE *f = fopen(p, "rb");
    if (!f) {
        fprintf(stderr, "fuzz: fixture %s is missing\n", p);
        abort();
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (!b || fread(b, 1, (size_t)n, f) != (size_t)n) abort();
    fclose(f);
    b[n] = 0;
    if (len) *len = (size_t)n;
    return b;
}

/* A fixture tokenizer (tests/fixtures/tokenizers/NAME), with the chat templates' special
 * tokens added after its last id when `chat` (as tests/data_fixture.h does). */
static inline tok_tokenizer *fz_tokenizer(const char *name, bool chat, bool split_special) {
    char rel[256];
    snprintf(rel, sizeof rel, "tests/fixtures/tokenizers/%s", name);
    size_t n;
    char *txt = fz_read_fixture(rel, &n);
    if (chat) {
        cJSON *j = cJSON_Parse(txt);
        cJSON *added = cJSON_GetObjectItem(j, "added_tokens"), *it;
        int next = 0;
        cJSON_ArrayForEach(it, cJSON_GetObjectItem(cJSON_GetObjectItem(j, "model"), "vocab"))
            if (it->valueint >= next) next = it->valueint + 1;
        cJSON_ArrayForEach(it, added) if (cJSON_GetObjectItem(it, "id")->valueint >= next) next =
            cJSON_GetObjectItem(it, "id")->valueint + 1;
        const char *sp[] = {"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                            "<|eot_id|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>"};
        for (size_t i = 0; i < sizeof sp / sizeof *sp; i++) {
            bool have = false;
            cJSON_ArrayForEach(it, added) have |= strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(it, "content")), sp[i]) == 0;
            if (have) continue;
            cJSON *a = cJSON_CreateObject();
            cJSON_AddNumberToObject(a, "id", next++);
            cJSON_AddStringToObject(a, "content", sp[i]);
            cJSON_AddBoolToObject(a, "single_word", 0);
            cJSON_AddBoolToObject(a, "lstrip", 0);
            cJSON_AddBoolToObject(a, "rstrip", 0);
            cJSON_AddBoolToObject(a, "normalized", 0);
            cJSON_AddBoolToObject(a, "special", 1);
            cJSON_AddItemToArray(added, a);
        }
        free(txt);
        txt = cJSON_PrintUnformatted(j);
        n = strlen(txt);
        cJSON_Delete(j);
    }
    tok_tokenizer *t = NULL;
    qt_err e = {{0}};
    if (tok_load_json(&t, txt, n, name, &e) != 0) {
        fprintf(stderr, "fuzz: fixture tokenizer %s: %s\n", name, e.msg);
        abort();
    }
    free(txt);
    tok_set_split_special(t, split_special);
    return t;
}

#endif
