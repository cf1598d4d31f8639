/* data/tok_load.c: a tokenizer.json. A tokenizer that loads must then encode and decode
 * without crashing (a hostile file may carry any regex, vocabulary, merges, added tokens,
 * normalizers, pre-tokenizers, decoders and post-processor). */
#include "fuzz_util.h" /* first: _GNU_SOURCE */
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer.h"

static const char *const texts[] = {
    "Hello world! It's 2024, isn't it?  \n\n  ",
    " leading space, <|endoftext|> and </s> and <s>[INST] x [/INST]",
    "caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80 \t\r\n",
    "",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    tok_tokenizer *t = NULL;
    qt_err e = {{0}};
    int rc = tok_load_json(&t, (const char *)data, size, "tokenizer.json", &e);
    fz_check_err(rc, &e, "tok_load_json");
    if (rc != 0) return 0;
    int32_t V = tok_vocab_size(t);
    fz_require(V >= 0 && V <= TOK_MAX_IDS, "vocab size %d", (int)V);
    for (int split = 0; split < 2; split++) {
        tok_set_split_special(t, split);
        for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
            tok_ids ids = {0};
            qt_err e2 = {{0}};
            int r = tok_encode(t, texts[i], strlen(texts[i]), split == 0, &ids, &e2);
            fz_check_err(r, &e2, "tok_encode");
            for (size_t k = 0; k < ids.n; k++)
                fz_require(ids.ids[k] >= 0 && ids.ids[k] < V, "encode gave id %d (vocab %d)", ids.ids[k], V);
            size_t dl;
            free(tok_decode(t, ids.ids, ids.n, split, &dl));
            tok_ids_free(&ids);
        }
    }
    /* Every id (bounded), decoded alone and in runs, with and without special tokens. */
    int32_t lim = V < 600 ? V : 600;
    int32_t *run = malloc(sizeof *run * (size_t)(lim + 2));
    for (int32_t id = 0; id < lim; id++) {
        run[id] = id;
        const char *s = tok_id_to_token(t, id);
        if (s) { /* not always back to id: HF shows a normalized added token by its normalized form */
            int32_t back = tok_token_to_id(t, s);
            fz_require(back >= -1 && back < V, "token '%s' (id %d) maps back to %d", s, id, back);
        }
        tok_is_special(t, id);
    }
    run[lim] = -1;
    run[lim + 1] = V + 5; /* unknown ids are skipped */
    for (int skip = 0; skip < 2; skip++) free(tok_decode(t, run, (size_t)lim + 2, skip, NULL));
    free(run);
    tok_free(t);
    return 0;
}
