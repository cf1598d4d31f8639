/* checkpoints/gguf_vocab.c gguf_set_tokenizer (qtrain merge: the tokenizer as GGUF
 * metadata): the input is a tokenizer.json; the first byte picks whether the model folder
 * also has a tokenizer_config.json (chat template, special tokens, add_bos_token). The
 * config's vocab_size is 300 (the trimmed tokenizer seeds fit it). */
#include "fuzz_util.h" /* first: _GNU_SOURCE */
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"

static const char TC[] = "{\"bos_token\": \"<|endoftext|>\", \"eos_token\": {\"content\": \"<mask>\"}, "
                         "\"add_bos_token\": true, \"chat_template\": [{\"name\": \"default\", \"template\": \"x\"}, "
                         "{\"name\": \"tool_use\", \"template\": \"y\"}]}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const char *dir = fz_tmpdir();
    char tj[512], md[512];
    fz_write(dir, "tokenizer.json", data + 1, size - 1);
    snprintf(tj, sizeof tj, "%s/tokenizer.json", dir);
    snprintf(md, sizeof md, "%s/model", dir);
    mkdir(md, 0777);
    fz_write(md, "tokenizer_config.json", TC, sizeof TC - 1);
    hf_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.vocab_size = 300;
    cfg.bos_token_id = 1;
    cfg.n_eos = 1;
    cfg.eos_token_ids[0] = 2;
    gguf_writer *w = gguf_writer_new();
    qt_err e = {{0}};
    int rc = gguf_set_tokenizer(w, tj, data[0] & 1 ? md : NULL, &cfg, &e);
    fz_check_err(rc, &e, "gguf_set_tokenizer");
    gguf_writer_free(w);
    return 0;
}
