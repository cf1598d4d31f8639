/* Llama-family decoder from autograd ops. Layout and conventions follow transformers'
 * LlamaForCausalLM / Qwen2ForCausalLM (see shared/specs/safetensors-peft.md section 2). */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const llm_lin_names[LIN_N] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                          "gate_proj", "up_proj", "down_proj"};

const char *llm_lin_parent(llm_lin_kind k) { return k <= LIN_O ? "self_attn" : "mlp"; }

/* ---- loading */

static int load_tensor(qt_ctx *c, const st_model *sm, const char *name, qt_dtype dt, int ndim,
                       const int64_t *shape, qt_tensor **out, qt_err *e) {
    const st_tensor *t = st_model_find(sm, name);
    if (!t) return qt_errf(e, "%s: tensor '%s' is missing", sm->dir, name);
    qt_tensor *q = qt_param(c, name, dt, ndim, shape, false);
    if (st_to_qt(t, q, e) != 0) return -1;
    *out = q;
    return 0;
}

int llm_load(llm_model *m, qt_ctx *c, const char *dir, qt_dtype dt, qt_err *e) {
    memset(m, 0, sizeof *m);
    m->dtype = dt;
    if (dt != QT_F32 && dt != QT_BF16 && dt != QT_F16)
        return qt_errf(e, "model.dtype must be f32, bf16 or f16 (got %s)", qt_dtype_name(dt));
    if (hf_config_load(&m->cfg, dir, e) != 0) return -1;
    st_model sm;
    if (st_model_open(&sm, dir, e) != 0) return -1;
    int rc = hf_check_tensors(&m->cfg, &sm, e);
    const hf_config *h = &m->cfg;
    int64_t H = h->hidden_size, I = h->intermediate_size, hd = h->head_dim;
    int64_t qd = (int64_t)h->num_attention_heads * hd, kvd = (int64_t)h->num_key_value_heads * hd;
    m->layers = calloc((size_t)h->num_hidden_layers, sizeof *m->layers);
    if (!m->layers) rc = qt_errf(e, "out of host memory");
    char name[160];
    int64_t ev[2] = {h->vocab_size, H}, hv[1] = {H};
    if (rc == 0) rc = load_tensor(c, &sm, "model.embed_tokens.weight", dt, 2, ev, &m->embed, e);
    if (rc == 0) rc = load_tensor(c, &sm, "model.norm.weight", dt, 1, hv, &m->norm, e);
    if (rc == 0) {
        if (h->tie_word_embeddings) m->lm_head = m->embed;
        else rc = load_tensor(c, &sm, "lm_head.weight", dt, 2, ev, &m->lm_head, e);
    }
    const int64_t dims[LIN_N][2] = {{qd, H}, {kvd, H}, {kvd, H}, {H, qd}, {I, H}, {I, H}, {H, I}};
    for (int l = 0; rc == 0 && l < h->num_hidden_layers; l++) {
        llm_layer *L = &m->layers[l];
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        rc = load_tensor(c, &sm, name, dt, 1, hv, &L->attn_norm, e);
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        if (rc == 0) rc = load_tensor(c, &sm, name, dt, 1, hv, &L->mlp_norm, e);
        for (int k = 0; rc == 0 && k < LIN_N; k++) {
            llm_linear *lin = &L->lin[k];
            lin->out = (int)dims[k][0];
            lin->in = (int)dims[k][1];
            snprintf(name, sizeof name, "model.layers.%d.%s.%s.weight", l, llm_lin_parent(k), llm_lin_names[k]);
            rc = load_tensor(c, &sm, name, dt, 2, dims[k], &lin->w, e);
            bool bias = k <= LIN_V ? h->has_qkv_bias : k == LIN_O ? h->has_o_bias : h->has_mlp_bias;
            if (rc == 0 && bias) {
                snprintf(name, sizeof name, "model.layers.%d.%s.%s.bias", l, llm_lin_parent(k), llm_lin_names[k]);
                rc = load_tensor(c, &sm, name, dt, 1, dims[k], &lin->b, e);
            }
        }
    }
    st_model_close(&sm);
    if (rc != 0) llm_free(m);
    return rc;
}

void llm_free(llm_model *m) {
    free(m->layers);
    free(m->lora_params);
    memset(m, 0, sizeof *m);
}

/* ---- LoRA */

void llm_lora_name(char *buf, size_t n, int layer, llm_lin_kind k, bool is_b) {
    snprintf(buf, n, "base_model.model.model.layers.%d.%s.%s.lora_%c.weight", layer, llm_lin_parent(k),
             llm_lin_names[k], is_b ? 'B' : 'A');
}

int llm_add_lora(llm_model *m, qt_ctx *c, const llm_lora_cfg *lc, qt_err *e) {
    if (lc->r <= 0) return qt_errf(e, "lora.r must be positive (got %d)", lc->r);
    if (!(lc->targets & LLM_TARGETS_ALL)) return qt_errf(e, "lora.targets selects no projection");
    m->lora = *lc;
    int L = m->cfg.num_hidden_layers, per = __builtin_popcount(lc->targets & LLM_TARGETS_ALL);
    m->lora_params = calloc((size_t)(2 * L * per), sizeof *m->lora_params);
    if (!m->lora_params) return qt_errf(e, "out of host memory");
    double scale = lc->rslora ? lc->alpha / sqrt((double)lc->r) : lc->alpha / lc->r;
    qt_rng rng;
    qt_rng_seed(&rng, lc->seed);
    char name[160];
    for (int l = 0; l < L; l++)
        for (int k = 0; k < LIN_N; k++) {
            if (!(lc->targets & (1u << k))) continue;
            llm_linear *lin = &m->layers[l].lin[k];
            int64_t sa[2] = {lc->r, lin->in}, sb[2] = {lin->out, lc->r};
            llm_lora_name(name, sizeof name, l, k, false);
            lin->lora_a = qt_param(c, name, QT_F32, 2, sa, true);
            llm_lora_name(name, sizeof name, l, k, true);
            lin->lora_b = qt_param(c, name, QT_F32, 2, sb, true); /* zero: the adapter starts as a no-op */
            double bound = 1.0 / sqrt((double)lin->in);
            qt_fill_uniform(lin->lora_a, &rng, -bound, bound);
            lin->lora_scale = scale;
            m->lora_params[m->n_lora_params++] = lin->lora_a;
            m->lora_params[m->n_lora_params++] = lin->lora_b;
        }
    return 0;
}

/* ---- forward */

static qt_tensor *linear(qt_ctx *c, const llm_linear *lin, qt_tensor *x) {
    qt_tensor *y = qt_matmul(c, x, lin->w, false, true);
    if (lin->b) y = qt_add_bias(c, y, lin->b);
    if (!lin->lora_a) return y;
    /* The adapter runs in float32 (PEFT keeps A, B in fp32 and casts the result back). */
    qt_tensor *xf = x->dtype == QT_F32 ? x : qt_cast(c, x, QT_F32);
    qt_tensor *t = qt_matmul(c, xf, lin->lora_a, false, true);
    qt_tensor *u = qt_scale(c, qt_matmul(c, t, lin->lora_b, false, true), lin->lora_scale);
    if (y->dtype != QT_F32) u = qt_cast(c, u, y->dtype);
    return qt_add(c, y, u);
}

typedef struct layer_call {
    const llm_model *m;
    const llm_layer *L;
    int B, T;
} layer_call;

static qt_tensor *layer_forward(qt_ctx *c, qt_tensor *x, void *user) {
    const layer_call *lc = user;
    const hf_config *h = &lc->m->cfg;
    const llm_layer *L = lc->L;
    int nh = h->num_attention_heads, nkv = h->num_key_value_heads, hd = h->head_dim;
    qt_tensor *a = qt_rmsnorm(c, x, L->attn_norm, h->rms_norm_eps);
    qt_tensor *q = qt_rope_apply(c, linear(c, &L->lin[LIN_Q], a), &h->rope, lc->B, lc->T, nh, 0);
    qt_tensor *k = qt_rope_apply(c, linear(c, &L->lin[LIN_K], a), &h->rope, lc->B, lc->T, nkv, 0);
    qt_tensor *v = linear(c, &L->lin[LIN_V], a);
    qt_tensor *att = qt_attention(c, q, k, v, lc->B, lc->T, nh, nkv, hd);
    x = qt_add(c, x, linear(c, &L->lin[LIN_O], att));
    qt_tensor *f = qt_rmsnorm(c, x, L->mlp_norm, h->rms_norm_eps);
    qt_tensor *g = qt_swiglu(c, linear(c, &L->lin[LIN_GATE], f), linear(c, &L->lin[LIN_UP], f));
    return qt_add(c, x, linear(c, &L->lin[LIN_DOWN], g));
}

qt_tensor *llm_forward(qt_ctx *c, llm_model *m, qt_tensor *ids, int B, int T) {
    QT_CHECK(ids->numel == (int64_t)B * T, "forward: %lld ids for B=%d T=%d", (long long)ids->numel, B, T);
    qt_tensor *x = qt_embedding(c, m->embed, ids);
    for (int l = 0; l < m->cfg.num_hidden_layers; l++) {
        layer_call *lc = qt_step_host_alloc(c, sizeof *lc);
        *lc = (layer_call){m, &m->layers[l], B, T};
        x = m->grad_checkpointing ? qt_checkpoint(c, layer_forward, x, lc) : layer_forward(c, x, lc);
    }
    x = qt_rmsnorm(c, x, m->norm, m->cfg.rms_norm_eps);
    return qt_matmul(c, x, m->lm_head, false, true);
}

void llm_shift_labels(const int32_t *labels, int B, int T, int32_t *targets) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) targets[b * T + t] = t + 1 < T ? labels[b * T + t + 1] : -100;
}

qt_tensor *llm_loss(qt_ctx *c, llm_model *m, qt_tensor *ids, const int32_t *labels, int B, int T) {
    qt_tensor *logits = llm_forward(c, m, ids, B, T);
    int64_t n[1] = {(int64_t)B * T};
    qt_tensor *tg = qt_empty(c, QT_STEP, QT_I32, 1, n);
    int32_t *tv = malloc(sizeof(int32_t) * (size_t)n[0]);
    QT_CHECK(tv, "out of host memory");
    llm_shift_labels(labels, B, T, tv);
    qt_upload(tg, tv, QT_I32);
    free(tv);
    return qt_cross_entropy(c, logits, tg, -100);
}
