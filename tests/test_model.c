/* The Llama decoder against transformers: logits and loss of tiny random models saved
 * by tests/py/gen_fixtures.py (torch + transformers, run once on a machine with torch;
 * outputs committed under tests/fixtures/models). Also: gradient checkpointing gives
 * the same LoRA gradients as plain backward, and on the GPU the same within bf16 noise. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"
#include "testutil.h"
#include "optim/optim.h"
#include "trainer/model.h"

#define QT_TEST_HAS_CUDA

static const char *const models[] = {"llama-gqa", "llama31-tied", "qwen2-bias", "mistral"};
enum { NMODELS = 4 };

typedef struct ref {
    st_file f;
    int B, T, V;
    int32_t *ids, *labels;
    qt_tensor *logits; /* CPU F32 [B*T, V] */
    double hf_bf16_err; /* ||HF bf16 logits - HF f32 logits|| / ||HF f32 logits|| */
    float loss;
} ref;

static int load_ref(ref *r, const char *dir, const char *suffix) {
    char path[512];
    qt_err e;
    snprintf(path, sizeof path, "%s/reference.safetensors", dir);
    if (st_open(&r->f, path, &e) != 0) {
        printf("cannot read %s: %s\n", path, e.msg);
        return -1;
    }
    char key[64];
    snprintf(key, sizeof key, "input_ids%s", suffix);
    const st_tensor *ids = st_find(&r->f, key);
    snprintf(key, sizeof key, "labels%s", suffix);
    const st_tensor *lab = st_find(&r->f, key);
    snprintf(key, sizeof key, "logits%s", suffix);
    const st_tensor *lg = st_find(&r->f, key);
    snprintf(key, sizeof key, "loss%s", suffix);
    const st_tensor *ls = st_find(&r->f, key);
    QT_CHECK(ids && lab && lg && ls, "%s lacks *%s tensors", path, suffix);
    r->B = (int)ids->shape[0];
    r->T = (int)ids->shape[1];
    r->V = (int)lg->shape[2];
    int n = r->B * r->T;
    r->ids = malloc(sizeof(int32_t) * (size_t)n);
    r->labels = malloc(sizeof(int32_t) * (size_t)n);
    double *tmp = malloc(sizeof(double) * (size_t)n);
    st_read_f64(ids, 0, n, tmp, &e);
    for (int i = 0; i < n; i++) r->ids[i] = (int32_t)tmp[i];
    st_read_f64(lab, 0, n, tmp, &e);
    for (int i = 0; i < n; i++) r->labels[i] = (int32_t)tmp[i];
    free(tmp);
    int64_t s[2] = {n, r->V};
    r->logits = qt_empty(tu_ctx(QT_CPU), QT_PERSIST, QT_F32, 2, s);
    QT_CHECK(st_to_qt(lg, r->logits, &e) == 0, "%s", e.msg);
    st_read_f32(ls, 0, 1, &r->loss, &e);
    snprintf(key, sizeof key, "logits_bf16%s", suffix);
    const st_tensor *lb = st_find(&r->f, key);
    r->hf_bf16_err = 0;
    if (lb) {
        qt_tensor *t = qt_empty(tu_ctx(QT_CPU), QT_STEP, QT_F32, 2, s);
        QT_CHECK(st_to_qt(lb, t, &e) == 0, "%s", e.msg);
        r->hf_bf16_err = tu_rel_err(t, r->logits);
    }
    return 0;
}

static void free_ref(ref *r) {
    free(r->ids);
    free(r->labels);
    st_close(&r->f);
}

static qt_tensor *ids_tensor(qt_ctx *c, const ref *r) {
    int64_t n[1] = {(int64_t)r->B * r->T};
    qt_tensor *t = qt_empty(c, QT_STEP, QT_I32, 1, n);
    qt_upload(t, r->ids, QT_I32);
    return t;
}

/* Forward parity for one model on device dev in dtype dt. */
static void check_model(qt_device dev, const char *name, qt_dtype dt, double tol_logits, double tol_loss) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models/%s", getenv("QTRAIN_SOURCE") ? getenv("QTRAIN_SOURCE") : QT_SOURCE_DIR, name);
    qt_ctx *c = tu_ctx(dev);
    size_t mark = qt_arena_mark(&c->data[QT_PERSIST]), hmark = qt_arena_mark(&c->meta[QT_PERSIST]);
    llm_model m;
    qt_err e;
    if (llm_load(&m, c, dir, &(llm_load_opts){.dtype = dt}, &e) != 0) {
        TU_EXPECT(0, "load %s: %s", name, e.msg);
        return;
    }
    const char *suffixes[2] = {"", "_b1"};
    for (int p = 0; p < 2; p++) {
        ref r;
        if (load_ref(&r, dir, suffixes[p]) != 0) {
            TU_EXPECT(0, "reference for %s missing", name);
            break;
        }
        qt_ctx_step_reset(c);
        c->grad_enabled = false;
        qt_tensor *logits = llm_forward(c, &m, ids_tensor(c, &r), r.B, r.T);
        double el = tu_rel_err(logits, r.logits);
        qt_tensor *loss = llm_loss(c, &m, ids_tensor(c, &r), r.labels, r.B, r.T);
        float lv;
        qt_download(loss, &lv, QT_F32);
        double eloss = fabs(lv - r.loss) / fabs(r.loss);
        c->grad_enabled = true;
        /* bf16: our error against HF's f32 logits may be at most 1.5x what transformers'
         * own bf16 run shows on the same model (random tiny models amplify rounding). */
        if (dt == QT_BF16) {
            tol_logits = fmax(1.5 * r.hf_bf16_err, 1e-2);
            tol_loss = fmax(1.5 * r.hf_bf16_err, 1e-2);
            printf("  (transformers' own bf16 logits are off its f32 ones by %.2e)\n", r.hf_bf16_err);
        }
        printf("  %-4s %-4s %-13s B=%d T=%-3d logits rel err %.2e (tol %.0e)  loss %.6f vs HF %.6f (rel %.1e)\n",
               qt_device_name(dev), qt_dtype_name(dt), name, r.B, r.T, el, tol_logits, lv, r.loss, eloss);
        TU_EXPECT(el <= tol_logits, "%s logits", name);
        TU_EXPECT(eloss <= tol_loss, "%s loss", name);
        free_ref(&r);
    }
    qt_ctx_step_reset(c);
    llm_free(&m);
    qt_arena_reset(&c->data[QT_PERSIST], mark);
    qt_arena_reset(&c->meta[QT_PERSIST], hmark);
}

/* Copy every adapter tensor of a PEFT-named safetensors file into the model's LoRA params. */
/* mode 0: load into the params; 1: compare the grads; 2: compare the params */
static int load_adapter(llm_model *m, const char *path, int grads_instead, double *max_rel) {
    st_file f;
    qt_err e;
    if (st_open(&f, path, &e) != 0) {
        TU_EXPECT(0, "%s", e.msg);
        return -1;
    }
    qt_ctx *c = tu_ctx(QT_CPU);
    *max_rel = 0;
    char name[160];
    int found = 0;
    for (int l = 0; l < m->cfg.num_hidden_layers; l++)
        for (int k = 0; k < LIN_N; k++)
            for (int ab = 0; ab < 2; ab++) {
                llm_lora_name(name, sizeof name, l, k, ab);
                qt_tensor *p = ab ? m->layers[l].lin[k].lora_b : m->layers[l].lin[k].lora_a;
                const st_tensor *t = st_find(&f, name);
                if (!p || !t) {
                    TU_EXPECT(!p && !t, "adapter tensor %s: in model %d, in file %d", name, p != NULL, t != NULL);
                    continue;
                }
                found++;
                if (!grads_instead) {
                    TU_EXPECT(st_to_qt(t, p, &e) == 0, "%s", e.msg);
                    continue;
                }
                qt_tensor *want = qt_empty(c, QT_STEP, QT_F32, p->ndim, p->shape);
                TU_EXPECT(st_to_qt(t, want, &e) == 0, "%s", e.msg);
                double r = tu_rel_err(grads_instead == 1 ? p->grad : p, want);
                if (r > *max_rel) *max_rel = r;
            }
    st_close(&f);
    return found;
}

/* LoRA gradients after one backward, and the adapter after 5 AdamW steps, vs PEFT +
 * torch.optim.AdamW (fp32, dropout 0), with and without gradient checkpointing. */
static void check_lora(const char *name, bool ckpt) {
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models/%s", getenv("QTRAIN_SOURCE") ? getenv("QTRAIN_SOURCE") : QT_SOURCE_DIR, name);
    snprintf(path, sizeof path, "%s/lora_init.safetensors", dir);
    if (!tu_have_file(path)) return;
    qt_ctx *c = tu_ctx(QT_CPU);
    size_t mark = qt_arena_mark(&c->data[QT_PERSIST]), hmark = qt_arena_mark(&c->meta[QT_PERSIST]);
    llm_model m;
    qt_err e;
    TU_EXPECT(llm_load(&m, c, dir, &(llm_load_opts){.dtype = QT_F32}, &e) == 0, "%s", e.msg);
    llm_lora_cfg lc = {.r = 4, .alpha = 8, .targets = LLM_TARGETS_ALL, .seed = 1};
    TU_EXPECT(llm_add_lora(&m, c, &lc, &e) == 0, "%s", e.msg);
    m.grad_checkpointing = ckpt;
    if (ckpt) m.ce_chunk_rows = 5; /* also the chunked lm_head + cross-entropy (34 tokens: 7 chunks) */
    double rel;
    int n = load_adapter(&m, path, 0, &rel);
    TU_EXPECT(n == m.n_lora_params, "adapter file has %d of %d tensors", n, m.n_lora_params);
    ref r;
    load_ref(&r, dir, "");
    qt_ctx_step_reset(c);
    qt_tensor *loss = llm_loss(c, &m, ids_tensor(c, &r), r.labels, r.B, r.T);
    qt_backward(c, loss, NULL);
    snprintf(path, sizeof path, "%s/lora_grads.safetensors", dir);
    load_adapter(&m, path, 1, &rel);
    printf("  lora %-11s ckpt=%d grads after one backward: max rel err vs PEFT %.2e\n", name, ckpt, rel);
    TU_EXPECT(rel <= 1e-4, "LoRA gradients differ from PEFT's");
    /* 5 AdamW steps from the same init */
    snprintf(path, sizeof path, "%s/lora_init.safetensors", dir);
    load_adapter(&m, path, 0, &rel);
    qt_adamw o;
    qt_adamw_cfg oc = {.beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.01};
    TU_EXPECT(qt_adamw_init(&o, c, m.lora_params, m.n_lora_params, &oc, &e) == 0, "%s", e.msg);
    float losses[5];
    for (int s = 0; s < 5; s++) {
        qt_zero_grads(c, m.lora_params, m.n_lora_params);
        qt_ctx_step_reset(c);
        loss = llm_loss(c, &m, ids_tensor(c, &r), r.labels, r.B, r.T);
        qt_download(loss, &losses[s], QT_F32);
        qt_backward(c, loss, NULL);
        qt_adamw_step(&o, 1e-2, qt_adamw_grad_norm(&o));
    }
    qt_adamw_free(&o);
    snprintf(path, sizeof path, "%s/lora_after5.safetensors", dir);
    load_adapter(&m, path, 2, &rel);
    st_file lf;
    snprintf(path, sizeof path, "%s/reference_lora.safetensors", dir);
    float want[5] = {0};
    if (st_open(&lf, path, &e) == 0) {
        const st_tensor *t = st_find(&lf, "losses");
        if (t) st_read_f32(t, 0, 5, want, &e);
        st_close(&lf);
    }
    printf("  lora %-11s ckpt=%d adapter after 5 AdamW steps: max rel err vs PEFT %.2e; losses", name, ckpt, rel);
    double lerr = 0;
    for (int s = 0; s < 5; s++) {
        printf(" %.5f/%.5f", losses[s], want[s]);
        lerr = fmax(lerr, fabs(losses[s] - want[s]) / fabs(want[s]));
    }
    printf("\n");
    TU_EXPECT(rel <= 1e-4, "adapter after 5 steps differs from PEFT's");
    TU_EXPECT(lerr <= 1e-4, "losses differ from PEFT's (max rel %.2e)", lerr);
    TU_EXPECT(losses[4] < losses[0], "loss did not fall");
    free_ref(&r);
    qt_ctx_step_reset(c);
    llm_free(&m);
    qt_arena_reset(&c->data[QT_PERSIST], mark);
    qt_arena_reset(&c->meta[QT_PERSIST], hmark);
}

/* Greedy decoding through the KV cache must reproduce transformers' greedy tokens, and
 * the cached logits must equal a full forward over the same sequence. */
static void check_generate(qt_device dev, const char *name, qt_dtype dt) {
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models/%s", getenv("QTRAIN_SOURCE") ? getenv("QTRAIN_SOURCE") : QT_SOURCE_DIR, name);
    snprintf(path, sizeof path, "%s/reference.safetensors", dir);
    qt_ctx *c = tu_ctx(dev);
    size_t mark = qt_arena_mark(&c->data[QT_PERSIST]), hmark = qt_arena_mark(&c->meta[QT_PERSIST]);
    st_file f;
    qt_err e;
    llm_model m;
    if (st_open(&f, path, &e) != 0 || llm_load(&m, c, dir, &(llm_load_opts){.dtype = dt}, &e) != 0) {
        TU_EXPECT(0, "%s", e.msg);
        return;
    }
    const st_tensor *tp = st_find(&f, "generate_prompt"), *tg = st_find(&f, "generate_greedy");
    int np = (int)tp->numel, ng = (int)tg->numel;
    double buf[64];
    int32_t seq[64];
    st_read_f64(tp, 0, np, buf, &e);
    for (int i = 0; i < np; i++) seq[i] = (int32_t)buf[i];
    st_read_f64(tg, 0, ng, buf, &e);
    llm_kv kv;
    TU_EXPECT(llm_kv_init(&kv, c, &m, 1, np + ng, &e) == 0, "%s", e.msg);
    llm_sampler greedy = {0};
    c->grad_enabled = false;
    int V = m.cfg.vocab_size, agree = 0;
    float *row = malloc(sizeof(float) * (size_t)V * (np + ng));
    qt_tensor *last = NULL;
    for (int i = 0; i < ng; i++) {
        qt_ctx_step_reset(c);
        int first = i == 0 ? 0 : np + i - 1, n = i == 0 ? np : 1;
        int64_t sh[1] = {n};
        qt_tensor *ids = qt_empty(c, QT_STEP, QT_I32, 1, sh);
        qt_upload(ids, seq + first, QT_I32);
        last = llm_forward_kv(c, &m, &kv, ids, n);
        qt_download(last, row + (size_t)first * V, QT_F32);
        seq[np + i] = llm_sample(&greedy, row + (size_t)(first + n - 1) * V, V);
        agree += seq[np + i] == (int32_t)buf[i];
    }
    /* the same sequence in one full forward */
    qt_ctx_step_reset(c);
    int64_t sh[1] = {np + ng - 1}, s2[2] = {np + ng - 1, V};
    qt_tensor *ids = qt_empty(c, QT_STEP, QT_I32, 1, sh);
    qt_upload(ids, seq, QT_I32);
    qt_tensor *full = llm_forward(c, &m, ids, 1, np + ng - 1);
    qt_tensor *cached = qt_empty(tu_ctx(QT_CPU), QT_STEP, QT_F32, 2, s2);
    qt_upload(cached, row, QT_F32);
    double err = tu_rel_err(cached, full);
    printf("  %-4s %-4s %-13s greedy through the KV cache: %d/%d tokens equal transformers'; cached vs full logits rel err %.2e\n",
           qt_device_name(dev), qt_dtype_name(dt), name, agree, ng, err);
    TU_EXPECT(agree == ng || dt != QT_F32, "greedy tokens differ from transformers'");
    TU_EXPECT(err <= (dt == QT_F32 ? 1e-5 : 2e-2), "KV-cache logits differ from a full forward");
    c->grad_enabled = true;
    free(row);
    llm_kv_free(&kv);
    st_close(&f);
    qt_ctx_step_reset(c);
    llm_free(&m);
    qt_arena_reset(&c->data[QT_PERSIST], mark);
    qt_arena_reset(&c->meta[QT_PERSIST], hmark);
}

/* With LoRA dropout, a checkpointed layer must replay the same masks when recomputed:
 * gradients with and without gradient checkpointing are bit-identical on the CPU, and
 * differ from the no-dropout gradients (the masks really apply). */
static void check_dropout_ckpt(void) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models/llama-gqa", getenv("QTRAIN_SOURCE") ? getenv("QTRAIN_SOURCE") : QT_SOURCE_DIR);
    qt_ctx *c = tu_ctx(QT_CPU);
    size_t mark = qt_arena_mark(&c->data[QT_PERSIST]), hmark = qt_arena_mark(&c->meta[QT_PERSIST]);
    llm_model m;
    qt_err e;
    TU_EXPECT(llm_load(&m, c, dir, &(llm_load_opts){.dtype = QT_F32}, &e) == 0, "%s", e.msg);
    llm_lora_cfg lc = {.r = 4, .alpha = 8, .dropout = 0.2, .targets = LLM_TARGETS_ALL, .seed = 3};
    TU_EXPECT(llm_add_lora(&m, c, &lc, &e) == 0, "%s", e.msg);
    for (int i = 1; i < m.n_lora_params; i += 2) qt_fill_uniform(m.lora_params[i], tu_rng(), -0.1, 0.1); /* B != 0 */
    ref r;
    load_ref(&r, dir, "");
    m.training = true;
    m.dropout_seed = qt_rng_next(tu_rng());
    float *g[3];
    size_t peak[3];
    for (int run = 0; run < 3; run++) {
        m.grad_checkpointing = run == 1;
        m.lora.dropout = run == 2 ? 0.0 : 0.2;
        qt_zero_grads(c, m.lora_params, m.n_lora_params);
        qt_ctx_step_reset(c);
        c->data[QT_STEP].peak = 0;
        qt_backward(c, llm_loss(c, &m, ids_tensor(c, &r), r.labels, r.B, r.T), NULL);
        peak[run] = c->data[QT_STEP].peak;
        size_t n = 0;
        for (int i = 0; i < m.n_lora_params; i++) n += (size_t)m.lora_params[i]->numel;
        g[run] = malloc(n * sizeof(float));
        for (int i = 0, off = 0; i < m.n_lora_params; off += (int)m.lora_params[i]->numel, i++)
            qt_download(m.lora_params[i]->grad, g[run] + off, QT_F32);
        if (run == 2) {
            size_t same01 = 0, diff02 = 0;
            for (size_t j = 0; j < n; j++) {
                same01 += g[0][j] == g[1][j];
                diff02 += g[0][j] != g[2][j];
            }
            printf("  dropout 0.2: %zu/%zu gradient values identical with and without checkpointing; %zu differ from p=0\n",
                   same01, n, diff02);
            TU_EXPECT(same01 == n, "checkpoint recomputation did not replay the dropout masks");
            TU_EXPECT(diff02 > n / 2, "dropout had no effect on the gradients");
            printf("  peak STEP memory: %zu bytes without checkpointing, %zu with\n", peak[0], peak[1]);
            TU_EXPECT(peak[1] < peak[0] * 3 / 4, "gradient checkpointing does not save activation memory");
        }
    }
    for (int run = 0; run < 3; run++) free(g[run]);
    free_ref(&r);
    qt_ctx_step_reset(c);
    llm_free(&m);
    qt_arena_reset(&c->data[QT_PERSIST], mark);
    qt_arena_reset(&c->meta[QT_PERSIST], hmark);
}

static bool have_fixtures(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/tests/fixtures/models/%s/reference.safetensors",
             getenv("QTRAIN_SOURCE") ? getenv("QTRAIN_SOURCE") : QT_SOURCE_DIR, models[0]);
    return tu_have_file(path);
}

int qt_test_cpu(void) {
    if (!have_fixtures()) return TU_SKIP;
    for (int i = 0; i < NMODELS; i++) check_model(QT_CPU, models[i], QT_F32, 1e-4, 1e-4);
    check_lora("llama-gqa", false);
    check_lora("llama-gqa", true);
    check_lora("qwen2-bias", false);
    for (int i = 0; i < NMODELS; i++) check_generate(QT_CPU, models[i], QT_F32);
    check_dropout_ckpt();
    return 0;
}

int qt_test_cuda(void) {
    if (!have_fixtures()) return TU_SKIP;
    for (int i = 0; i < NMODELS; i++) {
        check_model(QT_CUDA, models[i], QT_F32, 1e-4, 1e-4);
        check_model(QT_CUDA, models[i], QT_BF16, 3e-2, 1e-2);
        check_generate(QT_CUDA, models[i], QT_F32);
        check_generate(QT_CUDA, models[i], QT_BF16);
    }
    return 0;
}
