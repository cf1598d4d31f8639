/* data/dataset.c qt_encode_record: one JSONL line in each format (text, alpaca, chat with
 * each template, pre-tokenized ids) with a fixture tokenizer. The first input byte picks the
 * format; the rest is the line. Every id must be in the vocabulary (tokens: below 2^31) and
 * every flag 0/1. */
#include "fuzz_util.h" /* first: _GNU_SOURCE */
#include <stdlib.h>
#include <string.h>

#include "data/data.h"

static tok_tokenizer *tk;
static qt_encoder enc[6]; /* text, alpaca, chat llama3, chat chatml, chat llama2, tokens */

static void init(void) {
    tk = fz_tokenizer("bytelevel-llama3.json", true, true);
    int32_t eos = tok_token_to_id(tk, "<|end_of_text|>");
    qt_err e = {{0}};
    const qt_chat_style st[3] = {QT_CHAT_LLAMA3, QT_CHAT_CHATML, QT_CHAT_LLAMA2};
    for (int i = 0; i < 6; i++) {
        qt_template tp;
        qt_template_init(&tp, st[i < 2 || i > 4 ? 0 : i - 2]);
        if (i == 3) snprintf(tp.default_system, sizeof tp.default_system, "You are a helpful assistant.");
        qt_dfmt f = i == 0 ? QT_FMT_TEXT : i == 1 ? QT_FMT_ALPACA : i == 5 ? QT_FMT_TOKENS : QT_FMT_CHAT;
        if (qt_encoder_init(&enc[i], tk, f, &tp, eos, &e)) {
            fprintf(stderr, "fuzz_jsonl: encoder %d: %s\n", i, e.msg);
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tk) init();
    if (size < 1) return 0;
    qt_encoder *en = &enc[data[0] % 6];
    qt_tokens out = {0};
    qt_tokens_push(&out, 7, true); /* appends: what is there stays */
    qt_err e = {{0}};
    int rc = qt_encode_record(en, (const char *)data + 1, size - 1, &out, &e);
    fz_check_err(rc, &e, "qt_encode_record");
    fz_require(out.n >= 1 && out.ids[0] == 7 && out.train[0] == 1, "the record overwrote what was before it");
    if (rc != 0) fz_require(out.n == 1, "a failed record left %zu tokens", out.n - 1);
    int32_t V = en->format == QT_FMT_TOKENS ? INT32_MAX : tok_vocab_size(tk);
    for (size_t i = 1; i < out.n; i++)
        fz_require(out.ids[i] >= 0 && out.ids[i] < V && out.train[i] <= 1, "token %zu: id %d flag %d", i, out.ids[i],
                   out.train[i]);
    if (out.n > 1) fz_require(out.train[1] == 0, "an example's first token is trained");
    qt_tokens_free(&out);
    return 0;
}
