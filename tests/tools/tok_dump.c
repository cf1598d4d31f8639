/* tok_dump — run the tokenizer over a file, for tests/py/tokenizer_parity.py and by hand.
 *
 *   tok_dump TOKENIZER.json FILE [--no-special] [--split-special] [--whole] [--time]
 *       encodes every line of FILE (split on '\n', the '\n' left out), or with --whole the
 *       whole file as one string, and prints the ids of each, space-separated, one line each.
 *       --no-special: add_special_tokens=False; --split-special: special-token strings in the
 *       text stay text (HF's encode_special_tokens=True); --time: encode time on stderr.
 *   tok_dump TOKENIZER.json IDS --decode [--skip-special]
 *       IDS has space-separated ids per line; prints each decoded string as hex bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "data/tokenizer.h"

static char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, len = 0;
    char *b = malloc(cap);
    for (size_t got; b && (got = fread(b + len, 1, cap - len, f)) > 0;) {
        len += got;
        if (len == cap) b = realloc(b, cap *= 2);
    }
    fclose(f);
    if (b) b[len] = 0;
    *n = len;
    return b;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int encode(const tok_tokenizer *t, const char *s, size_t n, bool add_special, tok_ids *ids) {
    qt_err e;
    ids->n = 0;
    if (tok_encode(t, s, n, add_special, ids, &e)) {
        fprintf(stderr, "tok_dump: %s\n", e.msg);
        return 1;
    }
    for (size_t i = 0; i < ids->n; i++) printf(i ? " %d" : "%d", ids->ids[i]);
    putchar('\n');
    return 0;
}

int main(int argc, char **argv) {
    bool add_special = true, whole = false, decode = false, skip_special = false, timing = false,
         split_special = false;
    const char *files[2] = {NULL, NULL};
    int nf = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--no-special")) add_special = false;
        else if (!strcmp(argv[i], "--split-special")) split_special = true;
        else if (!strcmp(argv[i], "--whole")) whole = true;
        else if (!strcmp(argv[i], "--decode")) decode = true;
        else if (!strcmp(argv[i], "--skip-special")) skip_special = true;
        else if (!strcmp(argv[i], "--time")) timing = true;
        else if (nf < 2 && argv[i][0] != '-') files[nf++] = argv[i];
        else {
            fprintf(stderr, "tok_dump: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (nf != 2) {
        fprintf(stderr, "usage: tok_dump TOKENIZER.json FILE [--no-special] [--split-special] [--whole] [--time]\n"
                        "       tok_dump TOKENIZER.json IDS --decode [--skip-special]\n");
        return 2;
    }
    qt_err e;
    tok_tokenizer *t;
    double t0 = now();
    if (tok_load(&t, files[0], &e)) {
        fprintf(stderr, "tok_dump: %s\n", e.msg);
        return 1;
    }
    if (timing) fprintf(stderr, "load: %.1f ms\n", (now() - t0) * 1e3);
    tok_set_split_special(t, split_special);
    size_t n;
    char *text = read_all(files[1], &n);
    if (!text) {
        fprintf(stderr, "tok_dump: cannot read %s\n", files[1]);
        return 1;
    }
    int rc = 0;
    tok_ids ids = {0};
    if (decode) {
        for (char *line = text, *end; line < text + n && !rc; line = end + 1) {
            end = memchr(line, '\n', (size_t)(text + n - line));
            if (!end) end = text + n;
            ids.n = 0;
            for (char *p = line, *q; p < end; p = q) {
                long v = strtol(p, &q, 10);
                if (q == p) break;
                /* ids outside int32 become -1: both are "not in the vocabulary" */
                int32_t id = (v < INT32_MIN || v > INT32_MAX) ? -1 : (int32_t)v;
                if (ids.n == ids.cap) {
                    ids.cap = ids.cap ? ids.cap * 2 : 64;
                    ids.ids = realloc(ids.ids, ids.cap * sizeof *ids.ids);
                }
                ids.ids[ids.n++] = id;
            }
            size_t len;
            char *s = tok_decode(t, ids.ids, ids.n, skip_special, &len);
            for (size_t i = 0; i < len; i++) printf("%02x", (unsigned char)s[i]);
            putchar('\n');
            free(s);
        }
    } else if (whole) {
        t0 = now();
        rc = encode(t, text, n, add_special, &ids);
        if (timing) fprintf(stderr, "encode %zu bytes: %.1f ms (%zu ids)\n", n, (now() - t0) * 1e3, ids.n);
    } else {
        t0 = now();
        for (char *line = text, *end; line <= text + n && !rc; line = end + 1) {
            end = memchr(line, '\n', (size_t)(text + n - line));
            if (!end) end = text + n;
            rc = encode(t, line, (size_t)(end - line), add_special, &ids);
        }
        if (timing) fprintf(stderr, "encode by line: %.1f ms\n", (now() - t0) * 1e3);
    }
    tok_ids_free(&ids);
    free(text);
    tok_free(t);
    return rc;
}
