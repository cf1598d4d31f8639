/* nf4_peft_dump MODEL_DIR LORA_INIT OUT_DIR [cpu|cuda]
 * For the NF4 parity check against PEFT (tests/py/nf4_peft_parity.py): loads an HF model
 * with its seven projections quantized to NF4 (double quant), adds LoRA r=4 alpha=8 on all
 * of them initialised from LORA_INIT (PEFT names), runs one forward + backward of the HF
 * loss on the model's reference batch (reference.safetensors), and writes
 *   OUT_DIR/model.safetensors + config.json   the model with each projection replaced by
 *                                             its NF4 dequantization (what qtrain computed with)
 *   OUT_DIR/qtrain_grads.safetensors          LoRA gradients (PEFT names) and `loss` [1]
 * PEFT, run on the dequantized model with the same adapter, must give the same numbers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/model.h"

static void die(const char *what, const qt_err *e) {
    fprintf(stderr, "nf4_peft_dump: %s: %s\n", what, e ? e->msg : "");
    exit(1);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: nf4_peft_dump MODEL_DIR LORA_INIT OUT_DIR [cpu|cuda]\n");
        return 2;
    }
    const char *dir = argv[1], *init = argv[2], *out = argv[3];
    qt_ctx_opts co = {.dev = argc > 4 && !strcmp(argv[4], "cuda") ? QT_CUDA : QT_CPU,
                      .persist_budget = (size_t)256 << 20, .step_budget = (size_t)256 << 20};
    qt_ctx c;
    qt_err e;
    if (qt_ctx_init(&c, &co) != 0) die("context", NULL);
    llm_model m;
    if (llm_load(&m, &c, dir, &(llm_load_opts){.dtype = QT_F32, .nf4 = true, .double_quant = true}, &e)) die("load", &e);
    llm_lora_cfg lc = {.r = 4, .alpha = 8, .targets = LLM_TARGETS_ALL, .seed = 1};
    if (llm_add_lora(&m, &c, &lc, &e)) die("lora", &e);
    st_file fi, fr;
    char path[4096];
    if (st_open(&fi, init, &e)) die("lora init", &e);
    for (int i = 0; i < m.n_lora_params; i++) {
        const st_tensor *t = st_find(&fi, m.lora_params[i]->name);
        if (!t) die(m.lora_params[i]->name, NULL);
        if (st_to_qt(t, m.lora_params[i], &e)) die("lora init", &e);
    }
    snprintf(path, sizeof path, "%s/reference.safetensors", dir);
    if (st_open(&fr, path, &e)) die("reference", &e);
    const st_tensor *ti = st_find(&fr, "input_ids"), *tl = st_find(&fr, "labels");
    int B = (int)ti->shape[0], T = (int)ti->shape[1];
    int64_t n[1] = {(int64_t)B * T};
    qt_tensor *ids = qt_empty(&c, QT_STEP, QT_I32, 1, n), *lab = qt_empty(&c, QT_PERSIST, QT_I32, 1, n);
    int32_t *labels = malloc(sizeof(int32_t) * (size_t)n[0]);
    if (st_to_qt(ti, ids, &e) || st_to_qt(tl, lab, &e)) die("reference", &e);
    qt_download(lab, labels, QT_I32);
    qt_tensor *loss = llm_loss(&c, &m, ids, labels, B, T);
    qt_backward(&c, loss, NULL);
    float lv;
    qt_download(loss, &lv, QT_F32);

    /* gradients + loss */
    int ng = m.n_lora_params + 1;
    st_wtensor *w = calloc((size_t)ng + 512, sizeof *w);
    float **bufs = calloc((size_t)ng + 512, sizeof *bufs);
    for (int i = 0; i < m.n_lora_params; i++) {
        qt_tensor *p = m.lora_params[i];
        bufs[i] = malloc(qt_nbytes(p->grad));
        qt_download(p->grad, bufs[i], QT_F32);
        w[i] = (st_wtensor){.name = p->name, .dtype = ST_F32, .ndim = 2, .shape = {p->shape[0], p->shape[1]}, .data = bufs[i]};
    }
    w[m.n_lora_params] = (st_wtensor){.name = "loss", .dtype = ST_F32, .ndim = 1, .shape = {1}, .data = &lv};
    if (ck_mkdirs(out, &e)) die("mkdir", &e);
    snprintf(path, sizeof path, "%s/qtrain_grads.safetensors", out);
    if (st_write(path, w, ng, NULL, 0, &e)) die("write grads", &e);

    /* the model as qtrain saw it: every original tensor, projections dequantized */
    st_model sm;
    if (st_model_open(&sm, dir, &e)) die("model", &e);
    int nw = 0;
    for (int i = 0; i < sm.n_tensors; i++) {
        const st_tensor *t = sm.tensors[i];
        float *v = malloc(sizeof(float) * (size_t)t->numel);
        bool done = false;
        for (int l = 0; l < m.cfg.num_hidden_layers && !done; l++)
            for (int k = 0; k < LIN_N && !done; k++) {
                const nf4_tensor *q = m.layers[l].lin[k].wq;
                if (q && !strcmp(q->name, t->name)) {
                    qt_tensor d = qt_tensor_over(NULL, QT_F32, c.dev, 2, q->shape);
                    d.data = qt_arena_alloc(&c.work, qt_nbytes(&d));
                    nf4_dequantize(&c, q, &d);
                    qt_download(&d, v, QT_F32);
                    qt_arena_reset(&c.work, 0);
                    done = true;
                }
            }
        if (!done && st_read_f32(t, 0, t->numel, v, &e)) die("read", &e);
        bufs[ng + nw] = v;
        w[nw] = (st_wtensor){.name = t->name, .dtype = ST_F32, .ndim = t->ndim, .data = v};
        for (int d = 0; d < t->ndim; d++) w[nw].shape[d] = t->shape[d];
        nw++;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    if (st_write(path, w, nw, NULL, 0, &e)) die("write model", &e);
    snprintf(path, sizeof path, "%s/config.json", dir);
    size_t len;
    char *cfg = ck_read_file(path, 1 << 20, &len, &e);
    if (!cfg) die("config", &e);
    snprintf(path, sizeof path, "%s/config.json", out);
    ck_chunk ch = {cfg, len};
    if (ck_write_atomic(path, &ch, 1, &e)) die("write config", &e);
    printf("nf4_peft_dump: loss %.6f, %d LoRA gradients, %d tensors (projections dequantized) -> %s\n", lv,
           m.n_lora_params, nw, out);
    return 0;
}
