/* Shared by the data pipeline's tests (test_dataset.c, test_data_loader.c): a temporary folder,
 * the fixture tokenizers, random text, small file helpers.
 *
 * Tokenizers (BPEs trained by HF tokenizers, in tests/fixtures/tokenizers/), each with the chat
 * special tokens added that it lacks (ids after every existing one):
 *   0 "l3"  bytelevel-gpt2.json re-laid like Llama-3's post-processing: no prefix space, the
 *           GPT-2 regex, post-processor "<|begin_of_text|> $A"
 *   1 "g2"  bytelevel-gpt2.json as it is: prefix space, post-processor "$A <|endoftext|>"
 *   2 "ll3" bytelevel-llama3.json: the Llama-3 regex and post-processor (when present) */
#ifndef QT_TEST_DATA_FIXTURE_H
#define QT_TEST_DATA_FIXTURE_H

#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "data/data.h"
#include "testutil.h"

static char g_dir[256];
#define N_TOK 3
static int g_ntok;                     /* layouts available (2 without bytelevel-llama3.json) */
static tok_tokenizer *g_tok[N_TOK];    /* data text stays plain text (as qt_data_load sets) */
static tok_tokenizer *g_tok_sp[N_TOK]; /* the same, special-token strings recognised */
static char g_tok_path[N_TOK][300];
/* The EOS of each layout: what its pipeline (qt_data_find_eos without a model folder) picks. */
static const char *const g_eos[N_TOK] = {"<|end_of_text|>", "<|end_of_text|>", "<|end_of_text|>"};

/* ------------------------------------------------------------------ helpers */

static inline void write_text(const char *path, const char *s, size_t n) {
    FILE *f = fopen(path, "wb");
    QT_CHECK(f, "cannot write %s", path);
    fwrite(s, 1, n, f);
    fclose(f);
}

static inline char *read_text(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)sz + 1);
    size_t got = fread(b, 1, (size_t)sz, f);
    fclose(f);
    b[got] = 0;
    if (n) *n = got;
    return b;
}

static inline uint64_t rnd(uint64_t n) { return qt_rng_next(tu_rng()) % n; }

/* Layout `layout` written to out; false when its fixture file is not there. */
static inline bool make_tokenizer(int layout, const char *out) {
    char src[512];
    snprintf(src, sizeof src, "%s/tests/fixtures/tokenizers/%s", QT_SOURCE_DIR,
             layout == 2 ? "bytelevel-llama3.json" : "bytelevel-gpt2.json");
    size_t n;
    char *txt = read_text(src, &n);
    if (!txt && layout == 2) return false;
    QT_CHECK(txt, "fixture %s is missing", src);
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    cJSON *added = cJSON_GetObjectItem(j, "added_tokens");
    int next = 0;
    cJSON *it;
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
    if (layout == 0) {
        cJSON_ReplaceItemInObject(cJSON_GetObjectItem(j, "pre_tokenizer"), "add_prefix_space", cJSON_CreateFalse());
        char pp[600];
        snprintf(pp, sizeof pp,
                 "{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<|begin_of_text|>\","
                 "\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"pair\":[{\"SpecialToken\":{\"id\":"
                 "\"<|begin_of_text|>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},{\"Sequence\":"
                 "{\"id\":\"B\",\"type_id\":1}}],\"special_tokens\":{\"<|begin_of_text|>\":{\"id\":\"<|begin_of_text|>"
                 "\",\"ids\":[%d],\"tokens\":[\"<|begin_of_text|>\"]}}}",
                 next - 9);
        cJSON_ReplaceItemInObject(j, "post_processor", cJSON_Parse(pp));
    }
    char *s = cJSON_PrintUnformatted(j);
    write_text(out, s, strlen(s));
    free(s);
    cJSON_Delete(j);
    return true;
}

/* Random text from pieces that exercise the tokenizer: words, digits, punctuation, spaces,
 * newlines, tabs, non-ASCII. Never starts or ends with whitespace (callers add that). */
static const char *const WORDS[] = {"the", "model", "Hello", "world", "tokens", "BPE", "training", "It's",
                                    "we're", "42", "3.14", "2048", "Grüße", "naïve", "中文", "日本語", "😀",
                                    "🇫🇷", "Fuchs", "über", "(x)", "a+b", "—", "QLoRA", "NF4", "don't", "x"};
static const char *const GLUE[] = {" ", " ", " ", "  ", "\n", "\n\n", "\t", ", ", ". ", "! ", ": ", "? ", " - "};
static inline void rand_core(char *buf, size_t cap) {
    size_t n = 0;
    int words = 1 + (int)rnd(12);
    for (int i = 0; i < words; i++) {
        const char *w = WORDS[rnd(sizeof WORDS / sizeof *WORDS)];
        const char *g = i + 1 < words ? GLUE[rnd(sizeof GLUE / sizeof *GLUE)] : "";
        n += (size_t)snprintf(buf + n, cap - n, "%s%s", w, g);
        if (n >= cap - 64) break;
    }
}

static inline char *jstr(const char *s) { /* a JSON string literal, malloc'd */
    cJSON *v = cJSON_CreateString(s);
    char *o = cJSON_PrintUnformatted(v);
    cJSON_Delete(v);
    return o;
}

static inline void base_opts(qt_data_opts *o, const char *train, qt_dfmt f) {
    memset(o, 0, sizeof *o);
    o->train_path = train;
    o->tokenizer_path = g_tok_path[0];
    o->format = f;
    o->chat_template = QT_CHAT_LLAMA3;
    o->seq_len = 64;
    o->shuffle_seed = qt_rng_next(tu_rng());
}

/* The temporary folder and both tokenizers (each loaded twice: data text as plain text, as
 * qt_data_load does, and with special-token strings recognised). */
static inline void fixture_setup(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/qt_test_data_XXXXXX");
    QT_CHECK(mkdtemp(g_dir), "mkdtemp: %s", strerror(errno));
    qt_err e;
    for (int L = 0; L < N_TOK; L++) {
        snprintf(g_tok_path[L], sizeof g_tok_path[L], "%s/tok%d.json", g_dir, L);
        if (!make_tokenizer(L, g_tok_path[L])) {
            printf("note: tests/fixtures/tokenizers/bytelevel-llama3.json is missing; layout %d not tested\n", L);
            break;
        }
        g_ntok = L + 1;
        QT_CHECK(tok_load(&g_tok[L], g_tok_path[L], &e) == 0 && tok_load(&g_tok_sp[L], g_tok_path[L], &e) == 0, "%s",
                 e.msg);
        tok_set_split_special(g_tok[L], true);
    }
}

static inline void fixture_teardown(void) {
    for (int L = 0; L < g_ntok; L++) tok_free(g_tok[L]), tok_free(g_tok_sp[L]);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (tu_fail_count == 0 && system(cmd) != 0) printf("could not remove %s\n", g_dir);
}

#endif
