/* checkpoints/peft_load.c: a PEFT adapter folder (qtrain merge / export). The first input
 * byte picks which file of the fixture adapter (tests/fixtures/models/llama-gqa/peft_adapter)
 * the rest replaces: even, adapter_config.json; odd, adapter_model.safetensors. An adapter
 * that opens is checked against the fixture's base config. */
#include "fuzz_util.h" /* first: _GNU_SOURCE */
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"

#define FIX "tests/fixtures/models/llama-gqa"
static char *cfg_json, *model_st;
static size_t cfg_len, model_len;
static hf_config base;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *dir = fz_tmpdir();
    if (!cfg_json) {
        cfg_json = fz_read_fixture(FIX "/peft_adapter/adapter_config.json", &cfg_len);
        model_st = fz_read_fixture(FIX "/peft_adapter/adapter_model.safetensors", &model_len);
        size_t n;
        char *c = fz_read_fixture(FIX "/config.json", &n);
        qt_err e;
        if (hf_config_parse(&base, c, n, FIX "/config.json", &e)) abort();
        free(c);
    }
    if (size < 1) return 0;
    bool st = data[0] & 1;
    fz_write(dir, "adapter_config.json", st ? (const uint8_t *)cfg_json : data + 1, st ? cfg_len : size - 1);
    fz_write(dir, "adapter_model.safetensors", st ? data + 1 : (const uint8_t *)model_st, st ? size - 1 : model_len);
    peft_adapter a;
    qt_err e = {{0}};
    int rc = peft_open(&a, dir, &e);
    fz_check_err(rc, &e, "peft_open");
    if (rc == 0) {
        fz_require(a.r >= 1 && a.n_layers >= 1 && a.n_layers <= HF_MAX_LAYERS, "r %d layers %d", a.r, a.n_layers);
        e.msg[0] = 0;
        int rc2 = peft_check_model(&a, &base, &e);
        fz_check_err(rc2, &e, "peft_check_model");
        for (int i = 0; i < a.n_layers * PEFT_NPROJ; i++) {
            if (!a.A[i]) continue;
            fz_require(a.B[i] && a.A[i]->ndim == 2 && a.B[i]->ndim == 2 && a.A[i]->shape[0] == a.r &&
                           a.B[i]->shape[1] == a.r, "pair %d", i);
        }
        peft_close(&a);
    }
    return 0;
}
