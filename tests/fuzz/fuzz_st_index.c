/* checkpoints/safetensors.c st_model_open: a sharded model folder's
 * model.safetensors.index.json (weight_map: tensor name -> shard file). The folder holds
 * the fixture tests/fixtures/models/llama-gqa as two shard files and its config.json; the
 * input is the index. A model that opens is checked against the config (hf_check_tensors)
 * and its identity hashed (ck_model_identity), as qtrain does before training. */
#include "fuzz_util.h" /* first: _GNU_SOURCE */
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"

#define FIX "tests/fixtures/models/llama-gqa"
static hf_config cfg;

static void init(const char *dir) {
    size_t n;
    char *c = fz_read_fixture(FIX "/config.json", &n);
    fz_write(dir, "config.json", c, n);
    qt_err e;
    if (hf_config_parse(&cfg, c, n, "config.json", &e)) abort();
    free(c);
    /* two shards: the fixture's tensors split by name (first half, second half) */
    char p[512];
    snprintf(p, sizeof p, "%s/%s/model.safetensors", QT_SOURCE_DIR, FIX);
    st_file f;
    if (st_open(&f, p, &e)) abort();
    for (int s = 0; s < 2; s++) {
        int lo = s ? f.n_tensors / 2 : 0, hi = s ? f.n_tensors : f.n_tensors / 2;
        st_wtensor *w = calloc((size_t)(hi - lo), sizeof *w);
        for (int i = lo; i < hi; i++) {
            const st_tensor *t = &f.tensors[i];
            w[i - lo] = (st_wtensor){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
            memcpy(w[i - lo].shape, t->shape, sizeof t->shape);
        }
        snprintf(p, sizeof p, "%s/model-%05d-of-00002.safetensors", dir, s + 1);
        if (st_write(p, w, hi - lo, NULL, 0, &e)) {
            fprintf(stderr, "fuzz_st_index: %s\n", e.msg);
            abort();
        }
        free(w);
    }
    st_close(&f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *dir = fz_tmpdir();
    if (!cfg.hidden_size) init(dir);
    fz_write(dir, "model.safetensors.index.json", data, size);
    st_model m;
    qt_err e = {{0}};
    int rc = st_model_open(&m, dir, &e);
    fz_check_err(rc, &e, "st_model_open");
    if (rc == 0) {
        for (int i = 0; i < m.n_tensors; i++)
            fz_require(st_model_find(&m, m.tensors[i]->name) == m.tensors[i], "find %s", m.tensors[i]->name);
        e.msg[0] = 0;
        fz_check_err(hf_check_tensors(&cfg, &m, &e), &e, "hf_check_tensors");
        st_model_close(&m);
        char id[CK_ID_MAX];
        e.msg[0] = 0;
        fz_check_err(ck_model_identity(dir, id, sizeof id, &e), &e, "ck_model_identity");
    }
    return 0;
}
