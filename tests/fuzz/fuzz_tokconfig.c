/* data/template.c + dataset.c: a model folder's tokenizer_config.json (chat_template as a
 * string or a list, eos_token as a string or an object) through qt_template_resolve and
 * qt_data_find_eos, and the input as a Jinja chat_template through qt_template_detect. */
#include "fuzz_util.h" /* first: _GNU_SOURCE */
#include <stdlib.h>
#include <string.h>

#include "data/data.h"

static tok_tokenizer *tk;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tk) tk = fz_tokenizer("bytelevel-llama3.json", true, true);
    const char *dir = fz_tmpdir();
    fz_write(dir, "tokenizer_config.json", data, size);
    qt_template tp;
    qt_err e = {{0}};
    int rc = qt_template_resolve(&tp, QT_CHAT_AUTO, dir, tk, &e);
    fz_check_err(rc, &e, "qt_template_resolve");
    if (rc == 0) fz_require(tp.style != QT_CHAT_AUTO && memchr(tp.source, 0, sizeof tp.source), "unresolved");
    e.msg[0] = 0;
    int32_t eos = qt_data_find_eos(tk, dir, NULL, &e);
    if (eos < 0) fz_check_err(-1, &e, "qt_data_find_eos");
    else fz_require(eos < tok_vocab_size(tk), "eos %d", eos);
    e.msg[0] = 0;
    rc = qt_template_detect(&tp, (const char *)data, size, "chat_template.jinja", &e);
    fz_check_err(rc, &e, "qt_template_detect");
    return 0;
}
