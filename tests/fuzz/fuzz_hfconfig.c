/* checkpoints/hfconfig.c: a Hugging Face config.json. A config that parses must describe
 * itself and list its expected tensors with shapes inside the HF_MAX_* limits. */
#include "fuzz_util.h" /* first: _GNU_SOURCE */
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    hf_config cfg;
    qt_err e = {{0}};
    int rc = hf_config_parse(&cfg, (const char *)data, size, "config.json", &e);
    fz_check_err(rc, &e, "hf_config_parse");
    if (rc != 0) return 0;
    char buf[512];
    hf_config_describe(&cfg, buf, sizeof buf);
    fz_require(cfg.hidden_size >= 1 && cfg.hidden_size <= HF_MAX_HIDDEN && cfg.num_hidden_layers >= 1 &&
                   cfg.num_hidden_layers <= HF_MAX_LAYERS && cfg.vocab_size >= 1 && cfg.vocab_size <= HF_MAX_VOCAB &&
                   cfg.head_dim >= 2 && cfg.head_dim <= HF_MAX_HEAD_DIM && cfg.n_eos >= 0 && cfg.n_eos <= HF_MAX_EOS,
               "a parsed config is outside the limits: %s", buf);
    hf_tensor_spec *ts = NULL;
    int n = hf_expected_tensors(&cfg, &ts);
    fz_require(n > 0 && ts, "no expected tensors for %s", buf);
    for (int i = 0; i < n; i++) {
        fz_require(ts[i].ndim >= 1 && ts[i].ndim <= 2 && memchr(ts[i].name, 0, sizeof ts[i].name), "bad spec %d", i);
        for (int d = 0; d < ts[i].ndim; d++)
            fz_require(ts[i].shape[d] >= 1 && ts[i].shape[d] <= (int64_t)HF_MAX_INTERMEDIATE * 4,
                       "tensor %s has dim %lld", ts[i].name, (long long)ts[i].shape[d]);
    }
    free(ts);
    for (int p = 0; p < PEFT_NPROJ; p++) {
        int64_t in, out;
        peft_proj_dims(&cfg, p, &in, &out);
        fz_require(in >= 1 && out >= 1, "projection %d has dims %lld x %lld", p, (long long)in, (long long)out);
    }
    return 0;
}
