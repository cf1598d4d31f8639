/* data/tokenizer.c + tok_bpe.c + tok_pretok.c: the input bytes as text for the fixture
 * tokenizers (byte-level BPE: GPT-2 layout with a prefix space, Llama-3 layout). Encode
 * then decode must not crash; invalid UTF-8 must be refused with a message; and for valid
 * UTF-8 with special-token strings kept as plain text, decode(encode(x)) gives x back
 * (Llama-3 layout exactly; GPT-2 layout up to the spaces that add_prefix_space puts before
 * the text and after each added token, as HF does). */
#include "fuzz_util.h" /* first: _GNU_SOURCE */
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer.h"

static tok_tokenizer *tk[2][2]; /* [layout][split_special] */

static void init(void) {
    const char *names[2] = {"bytelevel-gpt2.json", "bytelevel-llama3.json"};
    for (int l = 0; l < 2; l++)
        for (int s = 0; s < 2; s++) tk[l][s] = fz_tokenizer(names[l], false, s);
}

static size_t strip_spaces(const char *s, size_t n, char *out) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ') out[k++] = s[i];
    return k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tk[0][0]) init();
    const char *text = (const char *)data;
    for (int l = 0; l < 2; l++) {
        for (int s = 0; s < 2; s++) {
            tok_ids ids = {0};
            qt_err e = {{0}};
            int rc = tok_encode(tk[l][s], text, size, !s, &ids, &e);
            fz_check_err(rc, &e, "tok_encode");
            if (rc != 0) {
                fz_require(strstr(e.msg, "UTF-8") != NULL, "encode failed on something else: %s", e.msg);
                tok_ids_free(&ids);
                return 0; /* invalid UTF-8: the same for every tokenizer */
            }
            int32_t V = tok_vocab_size(tk[l][s]);
            for (size_t k = 0; k < ids.n; k++) fz_require(ids.ids[k] >= 0 && ids.ids[k] < V, "id %d", ids.ids[k]);
            size_t dl = 0;
            char *back = tok_decode(tk[l][s], ids.ids, ids.n, !s, &dl);
            fz_require(back && strlen(back) <= dl && back[dl] == 0, "decode length");
            if (s == 1) { /* no special tokens recognised, none added */
                if (l == 1) {
                    fz_require(dl == size && memcmp(back, text, size) == 0,
                               "llama3 layout: decode(encode(x)) != x (%zu -> %zu bytes, %zu ids)", size, dl, ids.n);
                } else {
                    char *a = malloc(size + 1), *b = malloc(dl + 1);
                    size_t na = strip_spaces(text, size, a), nb = strip_spaces(back, dl, b);
                    fz_require(na == nb && memcmp(a, b, na) == 0 && dl >= size,
                               "gpt2 layout: decode(encode(x)) differs from x beyond the prefix space (%zu -> %zu bytes)",
                               size, dl);
                    free(a);
                    free(b);
                }
            }
            free(back);
            tok_ids_free(&ids);
        }
    }
    return 0;
}
