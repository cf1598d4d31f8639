/* Models with random weights of a known shape, for benchmarks and the CPU example:
 * no download, the exact shapes of the real model. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "trainer.h"

typedef struct preset {
    const char *name;
    int H, I, L, nh, nkv, V, max_pos;
    double theta, eps;
    bool llama3_rope, tied;
} preset;

static const preset presets[] = {
    {"tiny", 64, 172, 4, 4, 2, 256, 1024, 10000.0, 1e-5, false, false},
    {"llama-2-7b", 4096, 11008, 32, 32, 32, 32000, 4096, 10000.0, 1e-5, false, false},
    {"llama-3-8b", 4096, 14336, 32, 32, 8, 128256, 8192, 500000.0, 1e-5, false, false},
    {"llama-3.1-8b", 4096, 14336, 32, 32, 8, 128256, 131072, 500000.0, 1e-5, true, false},
    {"llama-3.1-70b", 8192, 28672, 80, 64, 8, 128256, 131072, 500000.0, 1e-5, true, false},
};

int qt_synthetic_config(const char *name, hf_config *h, qt_err *e) {
    const preset *p = NULL;
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        if (!strcmp(presets[i].name, name)) p = &presets[i];
    if (!p) return qt_errf(e, "model.synthetic: unknown shape '%s' (known: tiny, llama-2-7b, llama-3-8b, "
                              "llama-3.1-8b, llama-3.1-70b)", name);
    memset(h, 0, sizeof *h);
    h->arch = HF_LLAMA;
    snprintf(h->model_type, sizeof h->model_type, "llama");
    snprintf(h->architecture, sizeof h->architecture, "LlamaForCausalLM");
    h->hidden_size = p->H;
    h->intermediate_size = p->I;
    h->num_hidden_layers = p->L;
    h->num_attention_heads = p->nh;
    h->num_key_value_heads = p->nkv;
    h->head_dim = p->H / p->nh;
    h->vocab_size = p->V;
    h->max_position_embeddings = p->max_pos;
    h->rms_norm_eps = p->eps;
    h->rope = (qt_rope){.head_dim = h->head_dim, .theta = p->theta};
    if (p->llama3_rope)
        h->rope = (qt_rope){.head_dim = h->head_dim, .theta = p->theta, .scaling = 2, .factor = 8,
                            .low_freq_factor = 1, .high_freq_factor = 4, .original_max_pos = 8192};
    h->tie_word_embeddings = p->tied;
    h->bos_token_id = -1;
    /* the real models' end-of-text ids (Llama 2: </s> = 2; Llama 3: <|end_of_text|>), so
     * pre-tokenized data (data.format: tokens) can be packed */
    h->eos_token_ids[0] = p->V == 32000 ? 2 : p->V == 128256 ? 128001 : p->V - 1;
    h->n_eos = 1;
    return 0;
}

/* Weights ~ N(0, 1/sqrt(fan_in)) so activations keep their scale through the layers;
 * norms ~ U(0.8, 1.2). Projections pass through STEP memory when quantized. On a GPU
 * context the fills run on the device (qt_fill_*'s counter-based generator) and NF4 is
 * quantized there too, so an 8B model takes seconds; the values differ from a CPU build
 * with the same seed. */
static void fill_weight(qt_tensor *t, qt_rng *r) {
    if (t->ndim == 1) qt_fill_uniform(t, r, 0.8, 1.2);
    else qt_fill_normal(t, r, 0.0, 1.0 / sqrt((double)t->shape[1]));
}

static qt_tensor *rand_weight(qt_ctx *c, qt_rng *r, const char *name, qt_dtype dt, int ndim,
                              const int64_t *shape, qt_pool pool) {
    qt_tensor *t = qt_empty(c, pool, dt, ndim, shape);
    qt_set_name(t, "%s", name);
    fill_weight(t, r);
    return t;
}

int qt_synthetic_model(llm_model *m, qt_ctx *c, const char *name, const llm_load_opts *o, uint64_t seed,
                       qt_err *e) {
    memset(m, 0, sizeof *m);
    if (qt_synthetic_config(name, &m->cfg, e) != 0) return -1;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    const hf_config *h = &m->cfg;
    qt_dtype dt = o->dtype;
    m->dtype = dt;
    qt_rng r;
    qt_rng_seed(&r, seed);
    int64_t H = h->hidden_size, I = h->intermediate_size, hd = h->head_dim;
    int64_t qd = (int64_t)h->num_attention_heads * hd, kvd = (int64_t)h->num_key_value_heads * hd;
    int64_t ev[2] = {h->vocab_size, H}, hv[1] = {H};
    m->layers = calloc((size_t)h->num_hidden_layers, sizeof *m->layers);
    if (!m->layers) return qt_errf(e, "out of host memory");
    if (llm_place_init(m, c, o, e) != 0) return -1;
    qt_tensor *fill;
    m->embed = llm_embed_alloc(m, c, dt, ev, o->embed_on_host, &fill);
    qt_set_name(m->embed, "model.embed_tokens.weight");
    if (fill == m->embed) {
        fill_weight(fill, &r);
    } else { /* a host-side table: drawn on the device in chunks of rows, copied down */
        int64_t rows = ((int64_t)64 << 20) / (H * (int64_t)qt_dtype_size(dt)) + 1;
        for (int64_t r0 = 0; r0 < ev[0]; r0 += rows) {
            int64_t n[2] = {r0 + rows < ev[0] ? rows : ev[0] - r0, H};
            size_t mark = qt_arena_mark(&c->data[QT_STEP]), hmark = qt_arena_mark(&c->meta[QT_STEP]);
            qt_tensor *t = qt_empty(c, QT_STEP, dt, 2, n);
            qt_fill_normal(t, &r, 0.0, 1.0 / sqrt((double)H));
            qt_tensor dst = qt_tensor_over((char *)fill->data + (size_t)(r0 * H) * qt_dtype_size(dt), dt, QT_CPU, 2, n);
            qt_copy(&dst, t);
            qt_arena_reset(&c->data[QT_STEP], mark);
            qt_arena_reset(&c->meta[QT_STEP], hmark);
        }
    }
    m->norm = rand_weight(c, &r, "model.norm.weight", dt, 1, hv, QT_PERSIST);
    m->lm_head = h->tie_word_embeddings ? m->embed : rand_weight(c, &r, "lm_head.weight", dt, 2, ev, QT_PERSIST);
    const int64_t dims[LIN_N][2] = {{qd, H}, {kvd, H}, {kvd, H}, {H, qd}, {I, H}, {I, H}, {H, I}};
    char nm[160];
    for (int l = 0; l < h->num_hidden_layers; l++) {
        llm_layer *L = &m->layers[l];
        snprintf(nm, sizeof nm, "model.layers.%d.input_layernorm.weight", l);
        L->attn_norm = rand_weight(c, &r, nm, dt, 1, hv, QT_PERSIST);
        snprintf(nm, sizeof nm, "model.layers.%d.post_attention_layernorm.weight", l);
        L->mlp_norm = rand_weight(c, &r, nm, dt, 1, hv, QT_PERSIST);
        for (int k = 0; k < LIN_N; k++) {
            llm_linear *lin = &L->lin[k];
            lin->out = (int)dims[k][0];
            lin->in = (int)dims[k][1];
            lin->id = (uint32_t)(l * LIN_N + k);
            snprintf(nm, sizeof nm, "model.layers.%d.%s.%s.weight", l, llm_lin_parent(k), llm_lin_names[k]);
            if (!o->nf4) {
                lin->w = rand_weight(c, &r, nm, dt, 2, dims[k], QT_PERSIST);
                continue;
            }
            size_t mark = qt_arena_mark(&c->data[QT_STEP]), hmark = qt_arena_mark(&c->meta[QT_STEP]);
            qt_tensor *dense = rand_weight(c, &r, nm, QT_F32, 2, dims[k], QT_STEP);
            int rc = llm_nf4_place(m, c, l, dense, o->double_quant, &lin->wq, e);
            qt_arena_reset(&c->data[QT_STEP], mark);
            qt_arena_reset(&c->meta[QT_STEP], hmark);
            if (rc != 0) return -1;
        }
    }
    qt_ctx_sync(c);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (h->num_hidden_layers >= 8) /* the big shapes: say what the wait was */
        fprintf(stderr, "qtrain: synthetic %s built in %.1f s (%s)\n", name,
                (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec), qt_device_name(c->dev));
    return 0;
}
