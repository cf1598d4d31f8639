/* data/dataset.c + loader.c: a whole JSONL file through qt_data_load (line splitting, blank
 * lines, CRLF, bad lines skipped or not, truncation, packing, the eval split), then a few
 * micro-batches. The first input byte picks the options; the rest is the file. No cache. */
#include "fuzz_util.h" /* first: _GNU_SOURCE */
#include <stdlib.h>
#include <string.h>

#include "data/data.h"

static char tok_path[300], train_path[300];

static void init(void) {
    const char *dir = fz_tmpdir();
    size_t n;
    char *txt = fz_read_fixture("tests/fixtures/tokenizers/bytelevel-llama3.json", &n);
    /* the chat templates' tokens that the fixture lacks */
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    cJSON *added = cJSON_GetObjectItem(j, "added_tokens");
    const char *sp[] = {"<|im_start|>", "<|im_end|>", "<s>", "</s>"};
    for (int i = 0; i < 4; i++) {
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", 5000 + i);
        cJSON_AddStringToObject(a, "content", sp[i]);
        cJSON_AddBoolToObject(a, "special", 1);
        cJSON_AddItemToArray(added, a);
    }
    char *s = cJSON_PrintUnformatted(j);
    fz_write(dir, "tokenizer.json", s, strlen(s));
    free(s);
    cJSON_Delete(j);
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", dir);
    snprintf(train_path, sizeof train_path, "%s/train.jsonl", dir);
    setenv("QT_DATA_THREADS", "1", 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tok_path[0]) init();
    if (size < 2) return 0;
    uint8_t a = data[0], b = data[1];
    fz_write(fz_tmpdir(), "train.jsonl", data + 2, size - 2);
    qt_data_opts o = {0};
    o.train_path = train_path;
    o.tokenizer_path = tok_path;
    o.format = (qt_dfmt)(a % 4);
    o.tokens_eos_id = 1; /* format tokens: the model's EOS */
    o.chat_template = (qt_chat_style)(1 + (a / 4) % 3);
    o.packing = (a >> 5) & 1;
    o.skip_bad_lines = (a >> 6) & 1;
    o.eval_split = (a >> 7) ? 0.25 : 0;
    o.seq_len = 2 + b % 63;
    o.shuffle_seed = b;
    qt_dataset d;
    memset(&d, 0, sizeof d);
    qt_err e = {{0}};
    int rc = qt_data_load(&d, &o, &e);
    fz_check_err(rc, &e, "qt_data_load");
    if (rc == 0) {
        char buf[512];
        qt_data_describe(&d, buf, sizeof buf);
        const qt_data_split *s = &d.train;
        fz_require(s->n_rows >= 1 && s->seq_len == o.seq_len, "train split %lld rows", (long long)s->n_rows);
        for (int64_t i = 0; i < s->n_rows * s->seq_len; i++)
            fz_require(s->ids[i] >= 0 && s->ids[i] < d.vocab_size && s->train[i] <= 1, "row cell %lld", (long long)i);
        qt_loader l;
        qt_err e2 = {{0}};
        fz_require(qt_loader_init(&l, s, 3, true, 1, &e2) == 0, "loader: %s", e2.msg);
        for (int k = 0; k < 3; k++) qt_loader_next(&l);
        qt_loader_free(&l);
        if (d.eval.n_rows > 0) {
            int32_t *ids = malloc(sizeof *ids * 2 * (size_t)s->seq_len), *lab = malloc(sizeof *lab * 2 * (size_t)s->seq_len);
            qt_data_eval_batch(&d.eval, 0, 2, d.pad_id, ids, lab);
            free(ids);
            free(lab);
        }
    }
    qt_data_free(&d);
    return 0;
}
