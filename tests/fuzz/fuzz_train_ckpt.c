/* checkpoints/train_ckpt.c: an HDF5 training checkpoint (qtrain resume). The input is
 * written as CKPT_DIR/step-000001.h5, then read as a resume does: ck_train_find (which
 * verifies the checksum), ck_train_read_state, ck_train_read_params for the two tensors the
 * seed holds. The seed, a valid checkpoint made with ck_train_save, is written into the
 * first corpus folder on the command line at start-up (HDF5 files cannot be made by
 * tests/fuzz/make_seeds.py without h5py).
 *
 * Note: a finding inside libhdf5 itself (its own parser) cannot be fixed in qtrain; see
 * docs/fuzzing.md. */
#include "fuzz_util.h" /* first: _GNU_SOURCE */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoints/checkpoints.h"

#define NAME_A "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
#define NAME_B "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
static float w[2][24], m[2][24], v[2][24];
static ck_param params[2] = {{NAME_A, {4, 6}, w[0], m[0], v[0]}, {NAME_B, {6, 4}, w[1], m[1], v[1]}};
static char ckdir[300];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    snprintf(ckdir, sizeof ckdir, "%s/checkpoints", fz_tmpdir());
    const char *corpus = NULL;
    for (int i = 1; i < *argc && !corpus; i++)
        if ((*argv)[i][0] != '-') corpus = (*argv)[i];
    struct stat sb;
    if (!corpus || stat(corpus, &sb) != 0 || !S_ISDIR(sb.st_mode)) return 0;
    for (int i = 0; i < 48; i++) w[i / 24][i % 24] = (float)i * 0.25f - 3, m[i / 24][i % 24] = 1e-3f * i, v[i / 24][i % 24] = 1e-6f * i;
    ck_train_state s;
    memset(&s, 0, sizeof s);
    s.step = 1, s.opt_step = 1, s.micro_batches = 4, s.tokens = 1000, s.first_loss = 2.5, s.first_eval = 2.6;
    s.n_rng = 2;
    snprintf(s.rng[0].name, CK_RNG_NAME, "dropout");
    snprintf(s.rng[1].name, CK_RNG_NAME, "data");
    for (int k = 0; k < 4; k++) s.rng[0].s[k] = 0x9E3779B97F4A7C15ull * (k + 1), s.rng[1].s[k] = 7 + k;
    uint8_t blob[5] = {1, 2, 3, 4, 5};
    s.data = (ck_data_pos){1, 2, 3, blob, sizeof blob};
    char config[] = "model:\n  synthetic: tiny\nlora:\n  r: 4\n";
    s.config = config;
    snprintf(s.id.base_model, CK_ID_MAX, "synthetic:tiny");
    snprintf(s.id.tokenizer, CK_ID_MAX, "none");
    snprintf(s.id.lora, CK_ID_MAX, "r4 q h64:0123");
    snprintf(s.id.data, CK_ID_MAX, "synthetic");
    char seeddir[512], name[32];
    snprintf(seeddir, sizeof seeddir, "%s/seedgen", fz_tmpdir());
    qt_err e;
    if (ck_train_save(seeddir, &s, params, 2, 0, name, &e) != 0) {
        fprintf(stderr, "fuzz_train_ckpt: cannot make the seed: %s\n", e.msg);
        return 0;
    }
    char from[600], to[600];
    snprintf(from, sizeof from, "%s/%s", seeddir, name);
    snprintf(to, sizeof to, "%s/seed-valid-checkpoint.h5", corpus);
    size_t n;
    qt_err e2;
    char *img = ck_read_file(from, 1 << 24, &n, &e2);
    if (img) {
        FILE *f = fopen(to, "wb");
        if (f) fwrite(img, 1, n, f), fclose(f);
        free(img);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mkdir(ckdir, 0777);
    fz_write(ckdir, "step-000001.h5", data, size);
    char path[600];
    qt_err e = {{0}};
    int found = ck_train_find(ckdir, path, sizeof path, &e);
    if (found < 0) fz_check_err(-1, &e, "ck_train_find");
    char file[600];
    snprintf(file, sizeof file, "%s/step-000001.h5", ckdir);
    /* read the state and tensors even when the checksum fails: the readers must be safe alone */
    ck_train_state s;
    e.msg[0] = 0;
    int rc = ck_train_read_state(file, &s, &e);
    fz_check_err(rc, &e, "ck_train_read_state");
    if (rc == 0) {
        fz_require(s.config && s.n_rng >= 0 && s.n_rng <= CK_MAX_RNG && s.data.blob_len <= CK_MAX_BLOB, "state");
        fz_require(memchr(s.id.base_model, 0, CK_ID_MAX) && memchr(s.id.data, 0, CK_ID_MAX), "identity strings");
        ck_train_state_free(&s);
    }
    e.msg[0] = 0;
    rc = ck_train_read_params(file, params, 2, &e);
    fz_check_err(rc, &e, "ck_train_read_params");
    return 0;
}
