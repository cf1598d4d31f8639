/* Tokenizer checks that need no Python (HF parity lives in tests/py/tokenizer_parity.py):
 * hostile tokenizer.json files fail with a clear message and never crash, random
 * corruptions of a real file load or fail cleanly, BPE merging matches a naive O(n^2)
 * reference on random vocabularies, byte-level encode/decode round-trips random text,
 * invalid UTF-8 is reported at the right byte, long words stay fast, and concurrent
 * encodes agree. */
#include <ctype.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "data/tokenizer.h"
#include "testutil.h"

#define FIXTURES QT_SOURCE_DIR "/tests/fixtures/tokenizers/"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static size_t rnd(size_t n) { return (size_t)(qt_rng_next(tu_rng()) % n); }

static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)len + 1);
    *n = fread(b, 1, (size_t)len, f);
    b[*n] = 0;
    fclose(f);
    return b;
}

/* ------------------------------------------------------------------ hostile files */

static const char *MODEL_OK = "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]}";

static void expect_error(const char *json, const char *phrase) {
    tok_tokenizer *t = NULL;
    qt_err e = {{0}};
    int rc = tok_load_json(&t, json, strlen(json), "hostile.json", &e);
    TU_EXPECT(rc == -1 && t == NULL, "loading %.80s should fail", json);
    TU_EXPECT(strstr(e.msg, phrase) != NULL, "error for %.60s should mention \"%s\", got: %s", json, phrase, e.msg);
    TU_EXPECT(strstr(e.msg, "hostile.json") != NULL, "error should name the file: %s", e.msg);
    tok_free(t);
}

static void hostile_files(void) {
    char buf[4096];
    expect_error("{\"model\": {", "not valid JSON");
    expect_error("[1, 2, 3]", "top level");
    expect_error("{}", "\"model\" is missing");
    expect_error("{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", "BPE tokenizers only");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":[1,2]}}", "model.vocab must be an object");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-1}}}", "must be an integer in");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":1e12}}}", "must be an integer in");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0.5}}}", "must be an integer in");
    /* found by tests/fuzz: an id far outside long's range (undefined conversion before the check) */
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":2.8e93}}}", "must be an integer in");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-1e300}}}", "must be an integer in");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":\"0\"}}}", "must be an integer in");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":3,\"b\":3}}}", "given to two tokens");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a b\"]}}",
                 "the merged token is not in model.vocab");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a c\"]}}", "the right part");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[7]}}", "must be \"left right\"");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"ab\"]}}", "must be \"left right\"");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":{}}}", "merges must be an array");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"dropout\":0.1}}", "dropout");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"\xff\":0}}}", "not valid UTF-8");
    snprintf(buf, sizeof buf, "{%s,\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(a\"},"
                              "\"behavior\":\"Isolated\"}}", MODEL_OK);
    expect_error(buf, "does not compile");
    snprintf(buf, sizeof buf, "{%s,\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},"
                              "\"behavior\":\"Sideways\"}}", MODEL_OK);
    expect_error(buf, "is not one of");
    snprintf(buf, sizeof buf, "{%s,\"pre_tokenizer\":{\"type\":\"Whitespace\"}}", MODEL_OK);
    expect_error(buf, "\"Whitespace\" is not supported");
    snprintf(buf, sizeof buf, "{%s,\"normalizer\":{\"type\":\"Lowercase\"}}", MODEL_OK);
    expect_error(buf, "\"Lowercase\" is not supported");
    snprintf(buf, sizeof buf, "{%s,\"decoder\":{\"type\":\"WordPiece\"}}", MODEL_OK);
    expect_error(buf, "\"WordPiece\" is not supported");
    snprintf(buf, sizeof buf, "{%s,\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"ab\"}}", MODEL_OK);
    expect_error(buf, "exactly one character");
    snprintf(buf, sizeof buf, "{%s,\"normalizer\":{\"type\":\"Replace\",\"pattern\":{\"String\":\"\"},\"content\":\"x\"}}",
             MODEL_OK);
    expect_error(buf, "pattern is empty");
    snprintf(buf, sizeof buf, "{%s,\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":"
                              "[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}}],\"special_tokens\":{}}}", MODEL_OK);
    expect_error(buf, "has no entry \"<s>\"");
    /* found by tests/fuzz: a post-processor id that is no token reached encode's output */
    snprintf(buf, sizeof buf, "{%s,\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":"
                              "[{\"SpecialToken\":{\"id\":\"<s>\"}},{\"Sequence\":{\"id\":\"A\"}}],"
                              "\"special_tokens\":{\"<s>\":{\"ids\":[469]}}}}", MODEL_OK);
    expect_error(buf, "adds token id 469");
    snprintf(buf, sizeof buf, "{%s,\"post_processor\":{\"type\":\"BertProcessing\",\"cls\":[\"x\",1],"
                              "\"sep\":[\"y\",3]}}", MODEL_OK);
    expect_error(buf, "adds token id 3");
    snprintf(buf, sizeof buf, "{%s,\"added_tokens\":[{\"id\":5}]}", MODEL_OK);
    expect_error(buf, "added_tokens[0].content is missing");
    snprintf(buf, sizeof buf, "{%s,\"added_tokens\":[{\"content\":\"x\",\"special\":\"yes\"}]}", MODEL_OK);
    expect_error(buf, "must be true or false");
    /* Sequences nested past the depth limit */
    char *deep = buf;
    size_t o = (size_t)snprintf(deep, sizeof buf, "{%s,\"normalizer\":", MODEL_OK);
    for (int i = 0; i < 12; i++) o += (size_t)snprintf(deep + o, sizeof buf - o, "{\"type\":\"Sequence\",\"normalizers\":[");
    o += (size_t)snprintf(deep + o, sizeof buf - o, "{\"type\":\"NFC\"}");
    for (int i = 0; i < 12; i++) o += (size_t)snprintf(deep + o, sizeof buf - o, "]}");
    snprintf(deep + o, sizeof buf - o, "}");
    expect_error(deep, "nested deeper");
    /* a token past the length limit */
    size_t big = TOK_MAX_TOKEN_BYTES + 10;
    char *js = malloc(big + 100);
    o = (size_t)sprintf(js, "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"");
    memset(js + o, 'x', big);
    sprintf(js + o + big, "\":0}}}");
    expect_error(js, "longer than");
    free(js);

    tok_tokenizer *t;
    qt_err e = {{0}};
    TU_EXPECT(tok_load(&t, "/nonexistent/dir/tokenizer.json", &e) == -1 && strstr(e.msg, "cannot open"),
              "missing file: %s", e.msg);
    TU_EXPECT(tok_load_json(&t, "{}", (size_t)TOK_MAX_FILE_BYTES + 1, "huge.json", &e) == -1 &&
                  strstr(e.msg, "larger than"),
              "oversized file: %s", e.msg);
}

/* Random byte flips and truncations of a real file: load succeeds or fails with a message,
 * and whatever loads can encode and decode. */
static void corrupted_files(void) {
    size_t n;
    char *orig = slurp(FIXTURES "bytelevel-gpt2.json", &n);
    TU_EXPECT(orig != NULL, "cannot read the fixture");
    if (!orig) return;
    char *buf = malloc(n + 1);
    int loaded = 0, failed = 0;
    for (int it = 0; it < 60; it++) {
        memcpy(buf, orig, n + 1);
        size_t len = n;
        if (it % 3 == 0) len = rnd(n); /* truncated */
        else if (it % 3 == 1) /* any bytes anywhere */
            for (int k = 0, m = 1 + (int)rnd(8); k < m; k++) buf[rnd(n)] = (char)rnd(256);
        else /* letters and digits changed in the head (added tokens, pipeline sections): often still JSON */
            for (int k = 0, m = 1 + (int)rnd(2); k < m;) {
                size_t at = rnd(n < 2500 ? n : 2500);
                if (!isalnum((unsigned char)buf[at])) continue;
                buf[at] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[rnd(62)];
                k++;
            }
        tok_tokenizer *t = NULL;
        qt_err e = {{0}};
        if (tok_load_json(&t, buf, len, "corrupt.json", &e) == 0) {
            loaded++;
            tok_ids ids = {0};
            const char *s = "Hello <mask> world 123 \xe4\xb8\xad";
            if (tok_encode(t, s, strlen(s), true, &ids, &e) == 0) free(tok_decode(t, ids.ids, ids.n, false, NULL));
            tok_ids_free(&ids);
            tok_free(t);
        } else {
            failed++;
            TU_EXPECT(e.msg[0] != 0 && t == NULL, "a failed load must say why");
        }
    }
    printf("corrupted files: %d loaded, %d refused with a message\n", loaded, failed);
    free(buf);
    free(orig);
}

/* ------------------------------------------------------------------ BPE vs a naive reference */

/* Random vocabulary over a few characters (1 to 4 UTF-8 bytes each), random merges. The
 * reference merges the lowest-ranked adjacent pair, leftmost first, until none is left. */
static void bpe_reference(void) {
    static const char *alpha[] = {"a", "b", "c", "\xc3\xbc", "\xe8\xaf\xad", "\xf0\x9f\x98\x80"};
    const int na = 6;
    for (int round = 0; round < 20; round++) {
        int cap = 400, nv = 0, nm = 0;
        char **vocab = calloc((size_t)cap, sizeof *vocab);
        int (*merges)[2] = calloc((size_t)cap, sizeof *merges);
        int known = na - (int)rnd(2); /* sometimes the last characters are not in the vocabulary */
        for (int i = 0; i < known; i++) vocab[nv++] = strdup(alpha[i]);
        int want = 20 + (int)rnd(150);
        for (int tries = 0; nm < want && tries < 5000 && nv < cap - 2; tries++) {
            int x = (int)rnd((size_t)nv), y = (int)rnd((size_t)nv);
            if (strlen(vocab[x]) + strlen(vocab[y]) > 24) continue;
            char cat[64];
            snprintf(cat, sizeof cat, "%s%s", vocab[x], vocab[y]);
            int dup = 0;
            for (int i = 0; i < nv; i++) dup |= !strcmp(vocab[i], cat);
            for (int i = 0; i < nm; i++) dup |= merges[i][0] == x && merges[i][1] == y;
            if (dup) continue;
            vocab[nv++] = strdup(cat);
            merges[nm][0] = x;
            merges[nm++][1] = y;
        }
        bool fuse = rnd(2);
        int unk = nv;
        vocab[nv++] = strdup("<unk>");
        /* the JSON */
        size_t jcap = 1 << 16, o = 0;
        char *js = malloc(jcap);
        o += (size_t)snprintf(js + o, jcap - o, "{\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":%s,"
                                                "\"vocab\":{", fuse ? "true" : "false");
        for (int i = 0; i < nv; i++) o += (size_t)snprintf(js + o, jcap - o, "%s\"%s\":%d", i ? "," : "", vocab[i], i);
        o += (size_t)snprintf(js + o, jcap - o, "},\"merges\":[");
        for (int i = 0; i < nm; i++) /* both merge forms */
            o += (size_t)snprintf(js + o, jcap - o, i % 2 ? "%s[\"%s\",\"%s\"]" : "%s\"%s %s\"", i ? "," : "",
                                  vocab[merges[i][0]], vocab[merges[i][1]]);
        snprintf(js + o, jcap - o, "]}}");
        tok_tokenizer *t;
        qt_err e;
        if (tok_load_json(&t, js, strlen(js), "random-bpe.json", &e)) {
            TU_EXPECT(0, "random vocabulary did not load: %s", e.msg);
            break;
        }
        for (int w = 0; w < 30; w++) {
            /* a word, and the reference's symbols for it */
            int len = 1 + (int)rnd(w < 25 ? 40 : 400);
            char *text = malloc((size_t)len * 4 + 1);
            int *sym = malloc(sizeof(int) * (size_t)len);
            size_t tl = 0;
            int ns = 0;
            for (int i = 0; i < len; i++) {
                int c = (int)rnd((size_t)na);
                strcpy(text + tl, alpha[c]);
                tl += strlen(alpha[c]);
                if (c < known) sym[ns++] = c;
                else if (!(fuse && ns && sym[ns - 1] == unk)) sym[ns++] = unk;
            }
            for (;;) {
                int best = -1, bpos = -1;
                for (int i = 0; i + 1 < ns; i++)
                    for (int m = 0; m < nm; m++)
                        if (merges[m][0] == sym[i] && merges[m][1] == sym[i + 1] && (best < 0 || m < best)) {
                            best = m;
                            bpos = i;
                        }
                if (best < 0) break;
                char cat[64];
                snprintf(cat, sizeof cat, "%s%s", vocab[sym[bpos]], vocab[sym[bpos + 1]]);
                int id = -1;
                for (int i = 0; i < nv; i++)
                    if (!strcmp(vocab[i], cat)) id = i;
                sym[bpos] = id;
                memmove(sym + bpos + 1, sym + bpos + 2, sizeof(int) * (size_t)(ns - bpos - 2));
                ns--;
            }
            tok_ids ids = {0};
            TU_EXPECT(tok_encode(t, text, tl, false, &ids, &e) == 0, "encode: %s", e.msg);
            bool same = ids.n == (size_t)ns;
            for (int i = 0; same && i < ns; i++) same = ids.ids[i] == sym[i];
            TU_EXPECT(same, "round %d word %d (%d chars, fuse_unk %d): %zu ids vs the reference's %d", round, w,
                      len, fuse, ids.n, ns);
            tok_ids_free(&ids);
            free(text);
            free(sym);
        }
        tok_free(t);
        free(js);
        for (int i = 0; i < nv; i++) free(vocab[i]);
        free(vocab);
        free(merges);
    }
}

/* ------------------------------------------------------------------ byte-level round trips */

static size_t random_text(char *out, const char **specials, int nspecial) {
    size_t o = 0;
    int parts = (int)rnd(30);
    for (int p = 0; p < parts; p++) {
        size_t r = rnd(10);
        if (r < 1 && nspecial) {
            const char *s = specials[rnd((size_t)nspecial)];
            strcpy(out + o, s);
            o += strlen(s);
        } else if (r < 3) {
            static const char *ws[] = {" ", "  ", "\t", "\n", "\r\n", "   \n ", "\xc2\xa0", "\xe3\x80\x80"};
            const char *s = ws[rnd(8)];
            strcpy(out + o, s);
            o += strlen(s);
        } else {
            for (int k = 0, m = 1 + (int)rnd(8); k < m; k++) {
                uint32_t cp;
                size_t c = rnd(4);
                if (c == 0) cp = 0x20 + (uint32_t)rnd(0x5f);
                else if (c == 1) cp = 0x80 + (uint32_t)rnd(0x780);
                else if (c == 2) cp = 0x4e00 + (uint32_t)rnd(0x500);
                else cp = 0x1f300 + (uint32_t)rnd(0x300);
                if (cp < 0x80) out[o++] = (char)cp;
                else if (cp < 0x800) {
                    out[o++] = (char)(0xC0 | cp >> 6);
                    out[o++] = (char)(0x80 | (cp & 0x3F));
                } else if (cp < 0x10000) {
                    out[o++] = (char)(0xE0 | cp >> 12);
                    out[o++] = (char)(0x80 | (cp >> 6 & 0x3F));
                    out[o++] = (char)(0x80 | (cp & 0x3F));
                } else {
                    out[o++] = (char)(0xF0 | cp >> 18);
                    out[o++] = (char)(0x80 | (cp >> 12 & 0x3F));
                    out[o++] = (char)(0x80 | (cp >> 6 & 0x3F));
                    out[o++] = (char)(0x80 | (cp & 0x3F));
                }
            }
        }
    }
    out[o] = 0;
    return o;
}

typedef struct {
    const tok_tokenizer *t;
    const char *text;
    size_t len;
    tok_ids ids;
} job;

static void *encode_job(void *u) {
    job *j = u;
    qt_err e;
    for (int r = 0; r < 3; r++) {
        j->ids.n = 0;
        if (tok_encode(j->t, j->text, j->len, true, &j->ids, &e)) j->ids.n = 0;
    }
    return NULL;
}

static void bytelevel_checks(void) {
    tok_tokenizer *t;
    qt_err e;
    if (tok_load(&t, FIXTURES "bytelevel-llama3.json", &e)) {
        TU_EXPECT(0, "%s", e.msg);
        return;
    }
    const char *specials[] = {"<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"};
    int32_t bos = tok_token_to_id(t, "<|begin_of_text|>"), eot = tok_token_to_id(t, "<|eot_id|>");
    TU_EXPECT(bos >= 0 && eot >= 0 && tok_is_special(t, bos) && tok_is_special(t, eot), "special ids %d %d", bos, eot);
    TU_EXPECT(!tok_is_special(t, tok_token_to_id(t, "a")), "a plain token is not special");
    for (int32_t id = 0; id < tok_vocab_size(t); id++) {
        const char *s = tok_id_to_token(t, id);
        TU_EXPECT(s && tok_token_to_id(t, s) == id, "id %d -> \"%s\" -> %d", id, s ? s : "(null)",
                  s ? tok_token_to_id(t, s) : -2);
    }
    TU_EXPECT(tok_id_to_token(t, -1) == NULL && tok_id_to_token(t, tok_vocab_size(t)) == NULL, "ids out of range");

    /* empty text: nothing, or just BOS */
    tok_ids ids = {0};
    TU_EXPECT(tok_encode(t, "", 0, false, &ids, &e) == 0 && ids.n == 0, "empty text gave %zu ids", ids.n);
    TU_EXPECT(tok_encode(t, "", 0, true, &ids, &e) == 0 && ids.n == 1 && ids.ids[0] == bos, "empty text + BOS");
    size_t dl;
    char *d = tok_decode(t, NULL, 0, false, &dl);
    TU_EXPECT(d && dl == 0 && d[0] == 0, "decode of no ids");
    free(d);
    int32_t bad_ids[] = {-5, tok_vocab_size(t), 1 << 30};
    d = tok_decode(t, bad_ids, 3, false, &dl);
    TU_EXPECT(d && dl == 0, "unknown ids decode to nothing (HF skips them), got %zu bytes", dl);
    free(d);

    /* round trips: byte-level BPE loses nothing; special tokens come back unless skipped */
    char *text = malloc(1 << 16), *plain = malloc(1 << 16);
    for (int it = 0; it < 300; it++) {
        size_t n = random_text(text, specials, 4);
        ids.n = 0;
        TU_EXPECT(tok_encode(t, text, n, it % 2, &ids, &e) == 0, "encode: %s", e.msg);
        if (it % 2) TU_EXPECT(ids.n >= 1 && ids.ids[0] == bos, "add_special puts BOS first");
        d = tok_decode(t, ids.ids, ids.n, false, &dl);
        size_t off = it % 2 ? strlen("<|begin_of_text|>") : 0;
        TU_EXPECT(dl == n + off && memcmp(d + off, text, n) == 0, "round trip of %zu bytes: got %zu bytes", n, dl - off);
        free(d);
        /* skip_special drops exactly the special-token strings */
        size_t pn = 0;
        for (size_t i = 0; i < n;) {
            size_t k, hit = 0;
            for (k = 0; k < 4; k++)
                if (!strncmp(text + i, specials[k], strlen(specials[k]))) hit = strlen(specials[k]);
            if (hit) i += hit;
            else plain[pn++] = text[i++];
        }
        d = tok_decode(t, ids.ids, ids.n, true, &dl);
        TU_EXPECT(dl == pn && memcmp(d, plain, pn) == 0, "skip_special round trip");
        free(d);
    }

    /* invalid UTF-8 is refused at the right byte */
    static const char *bad[] = {"\xff", "\x80", "\xe4\xb8", "\xc0\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80"};
    for (int it = 0; it < 60; it++) {
        size_t n = random_text(text, specials, 4), at = rnd(n + 1);
        while (at < n && ((unsigned char)text[at] & 0xC0) == 0x80) at++; /* on a character boundary */
        const char *b = bad[rnd(6)];
        char *s = malloc(n + 8);
        memcpy(s, text, at);
        strcpy(s + at, b);
        memcpy(s + at + strlen(b), text + at, n - at);
        ids.n = 0;
        char want[64];
        snprintf(want, sizeof want, "not valid UTF-8 at byte %zu", at);
        int rc = tok_encode(t, s, n + strlen(b), true, &ids, &e);
        TU_EXPECT(rc == -1 && strstr(e.msg, want) && ids.n == 0, "bad byte at %zu: rc %d, %s", at, rc, e.msg);
        free(s);
    }

    /* speed: 1 MB of text, and one 300k-character word (CJK has no spaces to split on) */
    size_t big = 1 << 20, o = 0;
    char *mb = malloc(big + (1 << 16));
    while (o < big) o += random_text(mb + o, specials, 4);
    ids.n = 0;
    double t0 = now();
    TU_EXPECT(tok_encode(t, mb, o, true, &ids, &e) == 0, "1 MB: %s", e.msg);
    double dt = now() - t0;
    printf("encode %zu bytes: %.0f ms, %zu ids\n", o, dt * 1e3, ids.n);
    TU_EXPECT(dt < 5.0, "1 MB took %.1f s", dt);
    /* the same from two threads at once: same ids */
    job jobs[2] = {{t, mb, o, {0}}, {t, mb, o, {0}}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, encode_job, &jobs[i]);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 2; i++) {
        TU_EXPECT(jobs[i].ids.n == ids.n && !memcmp(jobs[i].ids.ids, ids.ids, ids.n * sizeof *ids.ids),
                  "thread %d disagrees", i);
        tok_ids_free(&jobs[i].ids);
    }
    o = 0;
    for (int i = 0; i < 300000; i++) { /* U+4E00.. */
        uint32_t cp = 0x4e00 + (uint32_t)rnd(0x400);
        mb[o++] = (char)(0xE0 | cp >> 12);
        mb[o++] = (char)(0x80 | (cp >> 6 & 0x3F));
        mb[o++] = (char)(0x80 | (cp & 0x3F));
    }
    ids.n = 0;
    t0 = now();
    TU_EXPECT(tok_encode(t, mb, o, false, &ids, &e) == 0, "long word: %s", e.msg);
    dt = now() - t0;
    printf("encode one %zu-byte word: %.0f ms, %zu ids\n", o, dt * 1e3, ids.n);
    TU_EXPECT(dt < 5.0, "a 300k-character word took %.1f s (quadratic merging?)", dt);
    d = tok_decode(t, ids.ids, ids.n, false, &dl);
    TU_EXPECT(dl == o && !memcmp(d, mb, o), "long word round trip");
    free(d);

    free(mb);
    free(text);
    free(plain);
    tok_ids_free(&ids);
    tok_free(t);
}

int qt_test_cpu(void) {
    hostile_files();
    corrupted_files();
    bpe_reference();
    bytelevel_checks();
    return 0;
}
