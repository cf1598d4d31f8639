/* trainer/merge.c imatrix_load (qtrain merge --imatrix FILE): a llama-imatrix file, legacy
 * .dat or GGUF (tensors NAME.in_sum2 / NAME.counts), reached through qt_merge_gguf on the
 * fixture model tests/fixtures/models/llama-gqa and its PEFT adapter (Q4_K_M, no
 * vocabulary). The merged GGUF goes to a scratch folder. */
#include "fuzz_util.h" /* first: _GNU_SOURCE */
#include <stdlib.h>
#include <string.h>

#include "trainer/trainer.h"

#define FIX QT_SOURCE_DIR "/tests/fixtures/models/llama-gqa"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *dir = fz_tmpdir();
    fz_write(dir, "imatrix.dat", data, size);
    char im[512], out[512];
    snprintf(im, sizeof im, "%s/imatrix.dat", dir);
    snprintf(out, sizeof out, "%s/merged.gguf", dir);
    qt_merge_opts o = {0};
    o.adapter_dir = FIX "/peft_adapter";
    o.model_dir = FIX;
    o.out = out;
    o.ftype = KQ_FTYPE_Q4_K_M;
    o.model_dtype = QT_F32;
    o.no_vocab = true;
    o.imatrix = im;
    o.name = "fuzz";
    qt_err e = {{0}};
    int rc = qt_merge_gguf(&o, &e);
    fz_check_err(rc, &e, "qt_merge_gguf");
    return 0;
}
