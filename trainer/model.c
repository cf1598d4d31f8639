/* Llama-family decoder from autograd ops. Layout and conventions follow transformers'
 * LlamaForCausalLM / Qwen2ForCausalLM (see shared/specs/safetensors-peft.md section 2). */
#include "model.h"
#include "nf4_cache.h"

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

/* ---- where weights go: resident (PERSIST) or, for streamed layers and a host-side
 * embedding table, the model's pinned host arena */

int llm_place_init(llm_model *m, qt_ctx *c, const llm_load_opts *o, qt_err *e) {
    const hf_config *h = &m->cfg;
    int L = h->num_hidden_layers, S = o->streamed_layers;
    if (S < 0 || S > L) return qt_errf(e, "streamed_layers %d is not in 0..%d", S, L);
    if (S > 0 && !o->nf4) return qt_errf(e, "layer streaming needs NF4 projections (quant.type: nf4)");
    bool host_embed = o->embed_on_host && !h->tie_word_embeddings;
    size_t bytes = (size_t)S * llm_layer_nf4_bytes(h, o->double_quant);
    if (host_embed) bytes += (size_t)h->vocab_size * h->hidden_size * qt_dtype_size(o->dtype) + 256;
    for (int l = 0; l < L; l++) m->layers[l].streamed = llm_layer_is_streamed(l, S, L);
    if (bytes && qt_arena_init_pinned(&m->host, "pinned-weights", bytes) != 0)
        return qt_errf(e, "cannot reserve %zu bytes of pinned host memory for the streamed layers", bytes);
    (void)c;
    return 0;
}

qt_tensor *llm_embed_alloc(llm_model *m, qt_ctx *c, qt_dtype dt, const int64_t *shape, bool on_host,
                           qt_tensor **fill) {
    if (!on_host || m->cfg.tie_word_embeddings || c->dev == QT_CPU) {
        *fill = qt_empty(c, QT_PERSIST, dt, 2, shape);
        return *fill;
    }
    qt_tensor *h = qt_arena_alloc(&c->meta[QT_PERSIST], sizeof *h), *d = qt_arena_alloc(&c->meta[QT_PERSIST], sizeof *d);
    void *data = qt_arena_alloc(&m->host, (size_t)(shape[0] * shape[1]) * qt_dtype_size(dt));
    *h = qt_tensor_over(data, dt, QT_CPU, 2, shape);
    void *dp = m->host.pinned ? qt_pinned_device_ptr(data) : NULL;
    QT_CHECK(dp, "%s", "the embedding table on the host needs pinned (mapped) memory");
    *d = qt_tensor_over(dp, dt, c->dev, 2, shape); /* the GPU gathers rows from host memory */
    *fill = h;
    m->embed_on_host = true;
    return d;
}

nf4_tensor *llm_nf4_alloc(llm_model *m, qt_ctx *c, int l, const int64_t *shape, bool dq) {
    llm_layer *L = &m->layers[l];
    nf4_tensor *q = qt_arena_alloc(&c->meta[QT_PERSIST], sizeof *q);
    nf4_alloc(q, L->streamed ? &m->host : &c->data[QT_PERSIST], 2, shape, dq);
    if (L->streamed && !L->host_base) L->host_base = q->codes;
    return q;
}

int llm_nf4_fill(qt_ctx *c, nf4_tensor *q, qt_tensor *dense, qt_err *e) {
    size_t mark = qt_arena_mark(&c->data[QT_STEP]);
    nf4_tensor tmp;
    int rc = nf4_quantize(c, QT_STEP, dense, q->dq, &tmp, e);
    if (rc == 0) nf4_copy(q, &tmp);
    qt_arena_reset(&c->data[QT_STEP], mark);
    if (rc == 0) snprintf(q->name, sizeof q->name, "%.95s", dense->name);
    return rc;
}

int llm_nf4_place(llm_model *m, qt_ctx *c, int l, qt_tensor *dense, bool dq, nf4_tensor **out, qt_err *e) {
    *out = llm_nf4_alloc(m, c, l, dense->shape, dq);
    return llm_nf4_fill(c, *out, dense, e);
}

/* ---- the NF4 cache (nf4_cache.h): read the quantized projections when a complete cache
 * of this checkpoint exists, else quantize and write one; any cache trouble is a warning
 * and the loader quantizes from the checkpoint as without a cache. */

typedef struct load_cache {
    nf4c_reader r;
    nf4c_writer w;
    bool reading, writing;
} load_cache;

static void cache_begin(load_cache *lc, const char *dir, const llm_load_opts *o, int L) {
    memset(lc, 0, sizeof *lc);
    if (!o->nf4 || !o->nf4_cache_dir || !o->nf4_cache_dir[0]) return;
    char key[NF4C_KEY_LEN];
    qt_err e = {0};
    if (nf4c_key(key, dir, o->double_quant, o->dtype == QT_F16 ? "from=f16" : "from=bf16", &e) != 0) {
        fprintf(stderr, "qtrain: warning: no NF4 cache: %s\n", e.msg);
        return;
    }
    int rc = nf4c_open(&lc->r, o->nf4_cache_dir, key, &e);
    if (rc == 1) {
        lc->reading = true;
        fprintf(stderr, "qtrain: NF4 base read from the cache in %s/nf4-%s\n", o->nf4_cache_dir, key);
        return;
    }
    if (rc < 0) fprintf(stderr, "qtrain: warning: the NF4 cache is unusable (%s); quantizing again\n", e.msg);
    if (nf4c_writer_open(&lc->w, o->nf4_cache_dir, key, L, &e) != 0) {
        fprintf(stderr, "qtrain: warning: cannot write an NF4 cache (%s); going on without one\n", e.msg);
        return;
    }
    lc->writing = true;
    fprintf(stderr, "qtrain: quantizing the base to NF4 and caching it in %s/nf4-%s (later loads read it)\n",
            o->nf4_cache_dir, key);
}

/* 1 when q was read from the cache. */
static int cache_read(load_cache *lc, int l, const char *name, nf4_tensor *q) {
    if (!lc->reading) return 0;
    qt_err e = {0};
    if (nf4c_read(&lc->r, l, name, q, &e) == 0) {
        snprintf(q->name, sizeof q->name, "%.95s", name);
        return 1;
    }
    fprintf(stderr, "qtrain: warning: the NF4 cache is unusable (%s); quantizing from the checkpoint\n", e.msg);
    nf4c_close(&lc->r);
    lc->reading = false; /* a partial re-quantization is not written back: the next load re-caches */
    return 0;
}

static void cache_add(load_cache *lc, int l, const char *name, const nf4_tensor *q) {
    qt_err e = {0};
    if (lc->writing && nf4c_add(&lc->w, l, name, q, &e) != 0) {
        fprintf(stderr, "qtrain: warning: writing the NF4 cache failed (%s); going on without one\n", e.msg);
        nf4c_writer_close(&lc->w);
        lc->writing = false;
    }
}

static void cache_end(load_cache *lc, bool ok) {
    qt_err e = {0};
    if (lc->writing && ok && nf4c_writer_commit(&lc->w, &e) != 0)
        fprintf(stderr, "qtrain: warning: writing the NF4 cache failed (%s); going on without one\n", e.msg);
    if (lc->writing) nf4c_writer_close(&lc->w);
    if (lc->reading) nf4c_close(&lc->r);
    memset(lc, 0, sizeof *lc);
}

/* A projection weight: dense in PERSIST, or NF4 (resident or streamed) read from the cache
 * or quantized from the checkpoint through STEP. */
static int load_linear(qt_ctx *c, llm_model *m, int l, const st_model *sm, const char *name,
                       const llm_load_opts *o, const int64_t *shape, llm_linear *lin, load_cache *lc, qt_err *e) {
    if (!o->nf4) return load_tensor(c, sm, name, o->dtype, 2, shape, &lin->w, e);
    lin->wq = llm_nf4_alloc(m, c, l, shape, o->double_quant);
    if (cache_read(lc, l, name, lin->wq)) return 0;
    const st_tensor *t = st_model_find(sm, name);
    if (!t) return qt_errf(e, "%s: tensor '%s' is missing", sm->dir, name);
    size_t mark = qt_arena_mark(&c->data[QT_STEP]), hmark = qt_arena_mark(&c->meta[QT_STEP]);
    qt_tensor *dense = qt_empty(c, QT_STEP, o->dtype == QT_F16 ? QT_F16 : QT_BF16, 2, shape);
    /* NF4 is computed from the checkpoint's values: bf16 keeps a bf16 checkpoint exact. */
    if (t->dtype == ST_F32 || t->dtype == ST_F64) dense = qt_empty(c, QT_STEP, QT_F32, 2, shape);
    qt_set_name(dense, "%.95s", name);
    int rc = st_to_qt(t, dense, e);
    if (rc == 0) rc = llm_nf4_fill(c, lin->wq, dense, e);
    qt_arena_reset(&c->data[QT_STEP], mark);
    qt_arena_reset(&c->meta[QT_STEP], hmark);
    if (rc == 0) cache_add(lc, l, name, lin->wq);
    return rc;
}

int llm_load(llm_model *m, qt_ctx *c, const char *dir, const llm_load_opts *o, qt_err *e) {
    memset(m, 0, sizeof *m);
    qt_dtype dt = o->dtype;
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
    if (rc == 0) rc = llm_place_init(m, c, o, e);
    if (rc == 0) {
        const st_tensor *t = st_model_find(&sm, "model.embed_tokens.weight");
        qt_tensor *fill;
        m->embed = llm_embed_alloc(m, c, dt, ev, o->embed_on_host, &fill);
        rc = t ? st_to_qt(t, fill, e) : qt_errf(e, "%s: tensor 'model.embed_tokens.weight' is missing", dir);
        qt_set_name(m->embed, "model.embed_tokens.weight");
    }
    if (rc == 0) rc = load_tensor(c, &sm, "model.norm.weight", dt, 1, hv, &m->norm, e);
    if (rc == 0) {
        if (h->tie_word_embeddings) m->lm_head = m->embed;
        else rc = load_tensor(c, &sm, "lm_head.weight", dt, 2, ev, &m->lm_head, e);
    }
    const int64_t dims[LIN_N][2] = {{qd, H}, {kvd, H}, {kvd, H}, {H, qd}, {I, H}, {I, H}, {H, I}};
    load_cache lc;
    cache_begin(&lc, dir, o, h->num_hidden_layers);
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
            lin->id = (uint32_t)(l * LIN_N + k);
            snprintf(name, sizeof name, "model.layers.%d.%s.%s.weight", l, llm_lin_parent(k), llm_lin_names[k]);
            rc = load_linear(c, m, l, &sm, name, o, dims[k], lin, &lc, e);
            bool bias = k <= LIN_V ? h->has_qkv_bias : k == LIN_O ? h->has_o_bias : h->has_mlp_bias;
            if (rc == 0 && bias) {
                snprintf(name, sizeof name, "model.layers.%d.%s.%s.bias", l, llm_lin_parent(k), llm_lin_names[k]);
                rc = load_tensor(c, &sm, name, dt, 1, dims[k], &lin->b, e);
            }
        }
    }
    cache_end(&lc, rc == 0);
    st_model_close(&sm);
    if (rc != 0) llm_free(m);
    return rc;
}

size_t llm_weight_bytes(const llm_model *m) {
    size_t b = (m->embed_on_host ? 0 : qt_nbytes(m->embed)) + qt_nbytes(m->norm) +
               (m->lm_head != m->embed ? qt_nbytes(m->lm_head) : 0);
    for (int l = 0; l < m->cfg.num_hidden_layers; l++) {
        const llm_layer *L = &m->layers[l];
        b += qt_nbytes(L->attn_norm) + qt_nbytes(L->mlp_norm);
        for (int k = 0; k < LIN_N; k++) {
            const llm_linear *lin = &L->lin[k];
            if (L->streamed) continue;
            b += lin->wq ? nf4_bytes(lin->wq->n, lin->wq->dq) : qt_nbytes(lin->w);
            if (lin->b) b += qt_nbytes(lin->b);
        }
    }
    return b;
}

void llm_free(llm_model *m) {
    llm_stream_free(m);
    qt_arena_free(&m->host);
    free(m->layers);
    free(m->lora_params);
    memset(m, 0, sizeof *m);
}

int llm_keep_activations(llm_model *m, int n) {
    int kept = 0;
    for (int l = m->cfg.num_hidden_layers - 1; l >= 0; l--) {
        llm_layer *L = &m->layers[l];
        L->keep = !L->streamed && kept < n;
        kept += L->keep;
    }
    return kept;
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
            lin->lora_a = qt_param(c, name, QT_F32, 2, sa, false);
            llm_lora_name(name, sizeof name, l, k, true);
            lin->lora_b = qt_param(c, name, QT_F32, 2, sb, false); /* zero: the adapter starts as a no-op */
            double bound = 1.0 / sqrt((double)lin->in);
            qt_fill_uniform(lin->lora_a, &rng, -bound, bound);
            lin->lora_scale = scale;
            m->lora_params[m->n_lora_params++] = lin->lora_a;
            m->lora_params[m->n_lora_params++] = lin->lora_b;
        }
    /* gradients now, back to back: zeroing them (and reducing them across GPUs) is then one
     * pass over one block instead of hundreds of small ones */
    for (int i = 0; i < m->n_lora_params; i++) {
        m->lora_params[i]->requires_grad = true;
        qt_grad(c, m->lora_params[i]);
    }
    return 0;
}

/* ---- forward */

static qt_tensor *linear(qt_ctx *c, const llm_model *m, const llm_linear *lin, qt_tensor *x) {
    qt_tensor *y = lin->wq ? nf4_linear(c, x, lin->wq) : qt_matmul(c, x, lin->w, false, true);
    if (lin->b) y = qt_add_bias(c, y, lin->b);
    if (!lin->lora_a) return y;
    /* One fused op adds s·(dropout(x)·Aᵀ)·Bᵀ into y's fresh buffer. PEFT runs the adapter in
     * float32 and casts back; for an F32 model this is the same math, for BF16/F16 the GEMMs
     * run in the model dtype with float accumulation and F32 gradients of A and B (see
     * autograd/ops/lora.cu), which spares the F32 [tokens, out] passes. */
    double p = m->training ? m->lora.dropout : 0.0;
    return qt_lora(c, y, x, lin->lora_a, lin->lora_b, lin->lora_scale, p,
                   m->dropout_seed ^ (0x9e3779b97f4a7c15ull * (lin->id + 1)));
}

typedef struct layer_call {
    llm_model *m;
    int l, B, T;
} layer_call;

static qt_tensor *layer_forward(qt_ctx *c, qt_tensor *x, void *user) {
    const layer_call *lc = user;
    const hf_config *h = &lc->m->cfg;
    const llm_layer *L = llm_layer_get(c, lc->m, lc->l); /* again in the recompute: streamed layers */
    int nh = h->num_attention_heads, nkv = h->num_key_value_heads, hd = h->head_dim;
    qt_tensor *a = qt_rmsnorm(c, x, L->attn_norm, h->rms_norm_eps);
    qt_tensor *q = qt_rope_apply(c, linear(c, lc->m, &L->lin[LIN_Q], a), &h->rope, lc->B, lc->T, nh, 0);
    qt_tensor *k = qt_rope_apply(c, linear(c, lc->m, &L->lin[LIN_K], a), &h->rope, lc->B, lc->T, nkv, 0);
    qt_tensor *v = linear(c, lc->m, &L->lin[LIN_V], a);
    qt_tensor *att = qt_attention(c, q, k, v, lc->B, lc->T, nh, nkv, hd);
    x = qt_add(c, x, linear(c, lc->m, &L->lin[LIN_O], att));
    qt_tensor *f = qt_rmsnorm(c, x, L->mlp_norm, h->rms_norm_eps);
    qt_tensor *g = qt_swiglu(c, linear(c, lc->m, &L->lin[LIN_GATE], f), linear(c, lc->m, &L->lin[LIN_UP], f));
    return qt_add(c, x, linear(c, lc->m, &L->lin[LIN_DOWN], g));
}

/* The final normed hidden states [B*T, H]. */
static qt_tensor *hidden(qt_ctx *c, llm_model *m, qt_tensor *ids, int B, int T) {
    QT_CHECK(ids->numel == (int64_t)B * T, "forward: %lld ids for B=%d T=%d", (long long)ids->numel, B, T);
    qt_tensor *x = qt_embedding(c, m->embed, ids);
    for (int l = 0; l < m->cfg.num_hidden_layers; l++) {
        layer_call *lc = qt_step_host_alloc(c, sizeof *lc);
        *lc = (layer_call){m, l, B, T};
        bool ck = m->grad_checkpointing && !m->layers[l].keep;
        x = ck ? qt_checkpoint(c, layer_forward, x, lc) : layer_forward(c, x, lc);
    }
    return qt_rmsnorm(c, x, m->norm, m->cfg.rms_norm_eps);
}

qt_tensor *llm_forward(qt_ctx *c, llm_model *m, qt_tensor *ids, int B, int T) {
    return qt_matmul(c, hidden(c, m, ids, B, T), m->lm_head, false, true);
}

void llm_shift_labels(const int32_t *labels, int B, int T, int32_t *targets) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) targets[b * T + t] = t + 1 < T ? labels[b * T + t + 1] : -100;
}

/* One chunk of the loss: rows [r0, r1) of the hidden states through lm_head and CE. */
typedef struct ce_chunk {
    const llm_model *m;
    qt_tensor targets; /* a view of rows [r0, r1) of the targets */
    int64_t r0, r1;
} ce_chunk;

static qt_tensor *ce_chunk_fn(qt_ctx *c, qt_tensor *x, void *user) {
    ce_chunk *k = user;
    qt_tensor *logits = qt_matmul(c, qt_rows(c, x, k->r0, k->r1), k->m->lm_head, false, true);
    return qt_cross_entropy(c, logits, &k->targets, -100);
}

qt_tensor *llm_loss(qt_ctx *c, llm_model *m, qt_tensor *ids, const int32_t *labels, int B, int T) {
    qt_tensor *x = hidden(c, m, ids, B, T);
    int64_t N = (int64_t)B * T, V = m->cfg.vocab_size;
    qt_tensor *tg = qt_empty(c, QT_STEP, QT_I32, 1, &N);
    int32_t *tv = malloc(sizeof(int32_t) * (size_t)N);
    QT_CHECK(tv, "out of host memory");
    llm_shift_labels(labels, B, T, tv);
    qt_upload(tg, tv, QT_I32);
    int64_t total = 0;
    for (int64_t i = 0; i < N; i++) total += tv[i] != -100;
    int64_t chunk = m->ce_chunk_rows > 0 ? m->ce_chunk_rows
                                         : ((int64_t)64 << 20) / (V * (int64_t)qt_dtype_size(x->dtype));
    if (chunk < 1) chunk = 1;
    qt_tensor *loss = NULL;
    if (chunk >= N || total == 0) {
        loss = qt_cross_entropy(c, qt_matmul(c, x, m->lm_head, false, true), tg, -100);
    } else {
        /* mean over all targets = sum over chunks of (chunk mean) * (chunk count / total) */
        for (int64_t r0 = 0; r0 < N; r0 += chunk) {
            int64_t r1 = r0 + chunk < N ? r0 + chunk : N, n_c = 0;
            for (int64_t i = r0; i < r1; i++) n_c += tv[i] != -100;
            if (n_c == 0) continue;
            ce_chunk *k = qt_step_host_alloc(c, sizeof *k);
            int64_t len = r1 - r0;
            *k = (ce_chunk){m, qt_tensor_over((int32_t *)tg->data + r0, QT_I32, tg->dev, 1, &len), r0, r1};
            qt_tensor *l = qt_scale(c, qt_checkpoint(c, ce_chunk_fn, x, k), (double)n_c / (double)total);
            loss = loss ? qt_add(c, loss, l) : l;
        }
    }
    free(tv);
    return loss;
}

/* ---- inference with a KV cache */

int llm_kv_init(llm_kv *kv, qt_ctx *c, const llm_model *m, int B, int Tmax, qt_err *e) {
    const hf_config *h = &m->cfg;
    memset(kv, 0, sizeof *kv);
    if (B < 1 || Tmax < 1) return qt_errf(e, "KV cache: batch %d and length %d must be positive", B, Tmax);
    if (Tmax > h->max_position_embeddings)
        return qt_errf(e, "prompt + new tokens = %d exceeds the model's max_position_embeddings %d", Tmax,
                       h->max_position_embeddings);
    kv->B = B;
    kv->Tmax = Tmax;
    int L = h->num_hidden_layers;
    kv->k = calloc((size_t)L, sizeof *kv->k);
    kv->v = calloc((size_t)L, sizeof *kv->v);
    if (!kv->k || !kv->v) return qt_errf(e, "out of host memory");
    int64_t shape[2] = {(int64_t)B * Tmax, (int64_t)h->num_key_value_heads * h->head_dim};
    size_t need = 2 * (size_t)L * (size_t)(shape[0] * shape[1]) * qt_dtype_size(m->dtype);
    if (c->data[QT_PERSIST].cap - c->data[QT_PERSIST].used < need + (size_t)L * 512)
        return qt_errf(e, "KV cache of %zu bytes does not fit the memory budget: shorten the prompt or "
                          "max new tokens", need);
    for (int l = 0; l < L; l++) {
        kv->k[l] = qt_empty(c, QT_PERSIST, m->dtype, 2, shape);
        kv->v[l] = qt_empty(c, QT_PERSIST, m->dtype, 2, shape);
    }
    return 0;
}

void llm_kv_free(llm_kv *kv) {
    free(kv->k);
    free(kv->v);
    memset(kv, 0, sizeof *kv);
}

/* Rows b*Tq.. of src go to rows b*Tmax + past.. of the cache. */
static void kv_append(qt_tensor *cache, const qt_tensor *src, int B, int Tq, int past, int Tmax) {
    size_t row = (size_t)src->shape[1] * qt_dtype_size(src->dtype);
    int64_t shape[2] = {Tq, src->shape[1]};
    for (int b = 0; b < B; b++) {
        qt_tensor d = qt_tensor_over((char *)cache->data + ((size_t)b * Tmax + past) * row, src->dtype, src->dev, 2, shape);
        qt_tensor s = qt_tensor_over((char *)src->data + (size_t)b * Tq * row, src->dtype, src->dev, 2, shape);
        qt_copy(&d, &s);
    }
}

qt_tensor *llm_forward_kv(qt_ctx *c, llm_model *m, llm_kv *kv, qt_tensor *ids, int Tq) {
    const hf_config *h = &m->cfg;
    int B = kv->B, nh = h->num_attention_heads, nkv = h->num_key_value_heads, hd = h->head_dim;
    QT_CHECK(!c->grad_enabled, "llm_forward_kv records no tape: disable grad first");
    QT_CHECK(kv->past + Tq <= kv->Tmax, "KV cache full: %d + %d > %d", kv->past, Tq, kv->Tmax);
    QT_CHECK(ids->numel == (int64_t)B * Tq, "forward_kv: %lld ids for B=%d Tq=%d", (long long)ids->numel, B, Tq);
    qt_tensor *x = qt_embedding(c, m->embed, ids);
    for (int l = 0; l < h->num_hidden_layers; l++) {
        const llm_layer *L = llm_layer_get(c, m, l);
        qt_tensor *a = qt_rmsnorm(c, x, L->attn_norm, h->rms_norm_eps);
        qt_tensor *q = qt_rope_apply(c, linear(c, m, &L->lin[LIN_Q], a), &h->rope, B, Tq, nh, kv->past);
        qt_tensor *k = qt_rope_apply(c, linear(c, m, &L->lin[LIN_K], a), &h->rope, B, Tq, nkv, kv->past);
        qt_tensor *v = linear(c, m, &L->lin[LIN_V], a);
        kv_append(kv->k[l], k, B, Tq, kv->past, kv->Tmax);
        kv_append(kv->v[l], v, B, Tq, kv->past, kv->Tmax);
        qt_tensor *att = qt_attention_kv(c, q, kv->k[l], kv->v[l], B, Tq, kv->past, kv->Tmax, nh, nkv, hd);
        x = qt_add(c, x, linear(c, m, &L->lin[LIN_O], att));
        qt_tensor *f = qt_rmsnorm(c, x, L->mlp_norm, h->rms_norm_eps);
        qt_tensor *g = qt_swiglu(c, linear(c, m, &L->lin[LIN_GATE], f), linear(c, m, &L->lin[LIN_UP], f));
        x = qt_add(c, x, linear(c, m, &L->lin[LIN_DOWN], g));
    }
    kv->past += Tq;
    x = qt_rmsnorm(c, x, m->norm, h->rms_norm_eps);
    return qt_matmul(c, x, m->lm_head, false, true);
}

/* ---- sampling */

typedef struct idx_val { float v; int32_t i; } idx_val;

static int by_value_desc(const void *a, const void *b) {
    float x = ((const idx_val *)a)->v, y = ((const idx_val *)b)->v;
    return x < y ? 1 : x > y ? -1 : ((const idx_val *)a)->i - ((const idx_val *)b)->i;
}

int32_t llm_sample(llm_sampler *s, const float *logits, int V) {
    int32_t best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (s->temperature <= 0) return best;
    idx_val *p = malloc(sizeof *p * (size_t)V);
    QT_CHECK(p, "out of host memory");
    double sum = 0;
    for (int i = 0; i < V; i++) {
        p[i].i = i;
        p[i].v = (float)exp((logits[i] - logits[best]) / s->temperature);
        sum += p[i].v;
    }
    qsort(p, (size_t)V, sizeof *p, by_value_desc);
    /* keep the top_k, then the smallest prefix whose mass reaches top_p */
    int keep = s->top_k > 0 && s->top_k < V ? s->top_k : V;
    double mass = 0, kept = 0;
    int n = 0;
    for (; n < keep; n++) {
        mass += p[n].v / sum;
        kept += p[n].v;
        if (s->top_p < 1 && mass >= s->top_p) {
            n++;
            break;
        }
    }
    double u = qt_rng_uniform(&s->rng) * kept, acc = 0;
    int32_t tok = p[n - 1].i;
    for (int i = 0; i < n; i++) {
        acc += p[i].v;
        if (u < acc) {
            tok = p[i].i;
            break;
        }
    }
    free(p);
    return tok;
}
