/* Hugging Face config.json for Llama-family models (Llama 1-3.x, TinyLlama, SmolLM,
 * Mistral, Qwen2/2.5) and the tensor names/shapes it implies (spec sections 2 and 3).
 *
 * Parsing is strict on what shapes the model (sizes, RoPE, biases, activation) and
 * lenient on everything else (unknown keys are ignored like transformers does). Every
 * number is range-checked against the HF_MAX_* limits in checkpoints.h before anything
 * is sized from it. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoints.h"

#define FIX_CFG "fix config.json (compare with the model's original on the Hugging Face Hub)"

/* Parsing context: where we are, for messages. */
typedef struct { const char *where; qt_err *e; } jctx;

/* A key's value, or NULL when absent or JSON null (HF treats both as "use the default"). */
static const cJSON *jget(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static const char *jtype(const cJSON *v) {
    return cJSON_IsString(v) ? "a string" : cJSON_IsBool(v) ? "a boolean" : cJSON_IsArray(v) ? "a list"
         : cJSON_IsObject(v) ? "an object" : cJSON_IsNumber(v) ? "a number" : "null";
}

/* Integer key in [lo, hi]; `pfx` names the enclosing object ("" at top level). */
static int jint(jctx *J, const cJSON *o, const char *pfx, const char *key, bool required, long long dflt,
                long long lo, long long hi, int *out) {
    const cJSON *v = jget(o, key);
    if (!v) {
        if (required)
            return qt_errf(J->e, "%s: required key '%s%s' is missing; " FIX_CFG, J->where, pfx, key);
        *out = (int)dflt;
        return 0;
    }
    double d = v->valuedouble;
    if (!cJSON_IsNumber(v) || d != floor(d) || !isfinite(d))
        return qt_errf(J->e, "%s: key '%s%s' must be an integer, got %s; " FIX_CFG, J->where, pfx, key,
                       cJSON_IsNumber(v) ? "a fraction" : jtype(v));
    if (d < (double)lo || d > (double)hi)
        return qt_errf(J->e, "%s: key '%s%s' = %.17g is outside the supported range %lld..%lld; " FIX_CFG, J->where,
                       pfx, key, d, lo, hi);
    *out = (int)d;
    return 0;
}

/* Float key with lo < value <= hi (finite). */
static int jnum(jctx *J, const cJSON *o, const char *pfx, const char *key, bool required, double dflt, double lo,
                double hi, double *out) {
    const cJSON *v = jget(o, key);
    if (!v) {
        if (required)
            return qt_errf(J->e, "%s: required key '%s%s' is missing; " FIX_CFG, J->where, pfx, key);
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsNumber(v)) return qt_errf(J->e, "%s: key '%s%s' must be a number, got %s; " FIX_CFG, J->where, pfx, key, jtype(v));
    double d = v->valuedouble;
    if (!isfinite(d) || d <= lo || d > hi)
        return qt_errf(J->e, "%s: key '%s%s' = %g is outside the supported range (%g, %g]; " FIX_CFG, J->where, pfx,
                       key, d, lo, hi);
    *out = d;
    return 0;
}

static int jbool(jctx *J, const cJSON *o, const char *key, bool dflt, bool *out) {
    const cJSON *v = jget(o, key);
    if (!v) {
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsBool(v)) return qt_errf(J->e, "%s: key '%s' must be true or false, got %s; " FIX_CFG, J->where, key, jtype(v));
    *out = cJSON_IsTrue(v);
    return 0;
}

/* String key (NULL when absent); a non-string is an error. */
static int jstr(jctx *J, const cJSON *o, const char *pfx, const char *key, const char **out) {
    const cJSON *v = jget(o, key);
    *out = NULL;
    if (!v) return 0;
    if (!cJSON_IsString(v)) return qt_errf(J->e, "%s: key '%s%s' must be a string, got %s; " FIX_CFG, J->where, pfx, key, jtype(v));
    *out = v->valuestring;
    return 0;
}

/* ------------------------------------------------------------------ architecture */

static const struct { const char *model_type, *cls; hf_arch arch; int max_pos_default; } archs[] = {
    {"llama", "LlamaForCausalLM", HF_LLAMA, 2048},
    {"mistral", "MistralForCausalLM", HF_MISTRAL, 4096 * 32},
    {"qwen2", "Qwen2ForCausalLM", HF_QWEN2, 32768},
};
#define N_ARCHS (int)(sizeof archs / sizeof archs[0])
#define SUPPORTED "supported: llama (Llama 1-3.x, TinyLlama, SmolLM), mistral, qwen2 (Qwen2/2.5), each as *ForCausalLM"

static int parse_arch(jctx *J, const cJSON *root, hf_config *c, int *ai) {
    const char *mt;
    if (jstr(J, root, "", "model_type", &mt)) return -1;
    const cJSON *ar = jget(root, "architectures");
    if (ar && !cJSON_IsArray(ar))
        return qt_errf(J->e, "%s: key 'architectures' must be a list of class names; " FIX_CFG, J->where);
    *ai = -1;
    if (mt) {
        for (int i = 0; i < N_ARCHS; i++)
            if (strcmp(mt, archs[i].model_type) == 0) *ai = i;
        if (*ai < 0)
            return qt_errf(J->e, "%s: model_type '%.40s' is not supported (%s)", J->where, mt, SUPPORTED);
    }
    if (ar && cJSON_GetArraySize(ar) > 0) {
        int found = -1;
        for (const cJSON *v = ar->child; v; v = v->next)
            for (int i = 0; i < N_ARCHS; i++)
                if (cJSON_IsString(v) && strcmp(v->valuestring, archs[i].cls) == 0 && (found < 0 || i == *ai)) found = i;
        if (found < 0) {
            const cJSON *a0 = ar->child;
            return qt_errf(J->e, "%s: architectures [\"%.60s\"%s] is not supported (%s)", J->where,
                           cJSON_IsString(a0) ? a0->valuestring : "?", a0->next ? ", ..." : "", SUPPORTED);
        }
        if (*ai < 0) *ai = found;
        snprintf(c->architecture, sizeof c->architecture, "%s", archs[found].cls);
    }
    if (*ai < 0)
        return qt_errf(J->e, "%s: neither 'model_type' nor 'architectures' is given, so the model family is "
                       "unknown; " FIX_CFG, J->where);
    c->arch = archs[*ai].arch;
    snprintf(c->model_type, sizeof c->model_type, "%s", archs[*ai].model_type);
    return 0;
}

/* ------------------------------------------------------------------ RoPE */

/* Two on-disk forms: transformers <= 4 (top-level rope_theta + rope_scaling) and
 * transformers 5 (rope_parameters holding rope_theta, rope_type and the scaling keys).
 * "type" is the old spelling of "rope_type". */
static int parse_rope(jctx *J, const cJSON *root, hf_config *c) {
    qt_rope *r = &c->rope;
    memset(r, 0, sizeof *r);
    r->head_dim = c->head_dim;
    if (jnum(J, root, "", "rope_theta", false, 10000.0, 0, 1e12, &r->theta)) return -1;
    const cJSON *sc = jget(root, "rope_parameters");
    const char *pfx = "rope_parameters.";
    if (sc) {
        if (!cJSON_IsObject(sc)) return qt_errf(J->e, "%s: key 'rope_parameters' must be an object; " FIX_CFG, J->where);
        if (jnum(J, sc, pfx, "rope_theta", false, r->theta, 0, 1e12, &r->theta)) return -1;
    } else {
        sc = jget(root, "rope_scaling");
        pfx = "rope_scaling.";
        if (sc && !cJSON_IsObject(sc))
            return qt_errf(J->e, "%s: key 'rope_scaling' must be null or an object; " FIX_CFG, J->where);
    }
    if (!sc) return 0; /* unscaled */
    const char *type, *old;
    if (jstr(J, sc, pfx, "rope_type", &type) || jstr(J, sc, pfx, "type", &old)) return -1;
    if (!type) type = old;
    if (!type) {
        if (strcmp(pfx, "rope_parameters.") == 0) type = "default";
        else return qt_errf(J->e, "%s: 'rope_scaling' has no 'rope_type' (or 'type'); " FIX_CFG, J->where);
    }
    if (strcmp(type, "default") == 0) return 0;
    if (strcmp(type, "linear") == 0) {
        r->scaling = 1;
        return jnum(J, sc, pfx, "factor", true, 0, 0, 1e6, &r->factor);
    }
    if (strcmp(type, "llama3") == 0) {
        r->scaling = 2;
        if (jnum(J, sc, pfx, "factor", true, 0, 0, 1e6, &r->factor) ||
            jnum(J, sc, pfx, "low_freq_factor", true, 0, 0, 1e6, &r->low_freq_factor) ||
            jnum(J, sc, pfx, "high_freq_factor", true, 0, 0, 1e6, &r->high_freq_factor) ||
            jint(J, sc, pfx, "original_max_position_embeddings", true, 0, 1, HF_MAX_POSITIONS, &r->original_max_pos))
            return -1;
        if (!(r->high_freq_factor > r->low_freq_factor))
            return qt_errf(J->e, "%s: %shigh_freq_factor (%g) must be greater than low_freq_factor (%g); " FIX_CFG,
                           J->where, pfx, r->high_freq_factor, r->low_freq_factor);
        return 0;
    }
    return qt_errf(J->e, "%s: %srope_type '%.32s' is not supported (qtrain implements default, linear and llama3 "
                   "RoPE; dynamic, yarn and longrope change positions in ways it does not reproduce); use a "
                   "model without that scaling or train at its original context length with rope_scaling "
                   "removed", J->where, pfx, type);
}

/* ------------------------------------------------------------------ config */

static int parse_tokens(jctx *J, const cJSON *root, hf_config *c) {
    if (jint(J, root, "", "bos_token_id", false, -1, 0, c->vocab_size - 1, &c->bos_token_id)) return -1;
    const cJSON *eos = jget(root, "eos_token_id");
    c->n_eos = 0;
    if (!eos) return 0;
    if (cJSON_IsNumber(eos)) {
        c->n_eos = 1;
        return jint(J, root, "", "eos_token_id", true, 0, 0, c->vocab_size - 1, &c->eos_token_ids[0]);
    }
    if (!cJSON_IsArray(eos))
        return qt_errf(J->e, "%s: key 'eos_token_id' must be an integer or a list of integers, got %s; " FIX_CFG,
                       J->where, jtype(eos));
    int i = 0;
    for (const cJSON *v = eos->child; v; v = v->next, i++) {
        double d = v->valuedouble;
        if (!cJSON_IsNumber(v) || d != floor(d) || d < 0 || d >= c->vocab_size)
            return qt_errf(J->e, "%s: eos_token_id[%d] must be a token id in 0..%d; " FIX_CFG, J->where, i,
                           c->vocab_size - 1);
        if (c->n_eos < HF_MAX_EOS) c->eos_token_ids[c->n_eos++] = (int)d; /* ids past 8 only matter to generation */
    }
    return 0;
}

static int parse_config(jctx *J, const cJSON *root, hf_config *c) {
    memset(c, 0, sizeof *c);
    if (!cJSON_IsObject(root)) return qt_errf(J->e, "%s: config.json must hold a JSON object; " FIX_CFG, J->where);
    int ai = 0;
    if (parse_arch(J, root, c, &ai)) return -1;
    const char *act;
    if (jstr(J, root, "", "hidden_act", &act)) return -1;
    if (act && strcmp(act, "silu") != 0)
        return qt_errf(J->e, "%s: hidden_act '%.32s' is not supported: Llama-family MLPs use 'silu' (SwiGLU); this "
                       "is a different model", J->where, act);
    if (jint(J, root, "", "hidden_size", true, 0, 1, HF_MAX_HIDDEN, &c->hidden_size) ||
        jint(J, root, "", "intermediate_size", true, 0, 1, HF_MAX_INTERMEDIATE, &c->intermediate_size) ||
        jint(J, root, "", "num_hidden_layers", true, 0, 1, HF_MAX_LAYERS, &c->num_hidden_layers) ||
        jint(J, root, "", "num_attention_heads", true, 0, 1, HF_MAX_HEADS, &c->num_attention_heads) ||
        jint(J, root, "", "num_key_value_heads", false, c->num_attention_heads, 1, HF_MAX_HEADS,
             &c->num_key_value_heads) ||
        jint(J, root, "", "vocab_size", true, 0, 1, HF_MAX_VOCAB, &c->vocab_size) ||
        jint(J, root, "", "max_position_embeddings", false, archs[ai].max_pos_default, 1, HF_MAX_POSITIONS,
             &c->max_position_embeddings) ||
        jnum(J, root, "", "rms_norm_eps", false, 1e-6, 0, 1, &c->rms_norm_eps))
        return -1;
    int H = c->hidden_size, nh = c->num_attention_heads, nkv = c->num_key_value_heads;
    if (!jget(root, "head_dim") && H % nh != 0)
        return qt_errf(J->e, "%s: hidden_size %d is not divisible by num_attention_heads %d and no head_dim is "
                       "given; " FIX_CFG, J->where, H, nh);
    if (jint(J, root, "", "head_dim", false, H / nh, 2, HF_MAX_HEAD_DIM, &c->head_dim)) return -1;
    if (c->head_dim < 2 || c->head_dim > HF_MAX_HEAD_DIM) /* the default H / nh is not range-checked by jint */
        return qt_errf(J->e, "%s: head_dim %d (hidden_size %d / num_attention_heads %d) is outside the supported "
                       "range 2..%d; " FIX_CFG, J->where, c->head_dim, H, nh, HF_MAX_HEAD_DIM);
    if (c->head_dim % 2)
        return qt_errf(J->e, "%s: head_dim %d is odd; RoPE rotates pairs, so it must be even; " FIX_CFG, J->where,
                       c->head_dim);
    if (nkv > nh || nh % nkv != 0)
        return qt_errf(J->e, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d (grouped-query "
                       "attention shares each KV head among nh/nkv query heads); " FIX_CFG, J->where, nh, nkv);
    if (jbool(J, root, "tie_word_embeddings", false, &c->tie_word_embeddings) ||
        jbool(J, root, "attention_bias", false, &c->attention_bias) ||
        jbool(J, root, "mlp_bias", false, &c->mlp_bias))
        return -1;
    /* What each model class actually builds (transformers' modeling code, not the keys). */
    if (c->arch == HF_LLAMA) {
        c->has_qkv_bias = c->has_o_bias = c->attention_bias;
        c->has_mlp_bias = c->mlp_bias;
    } else if (c->arch == HF_QWEN2) {
        c->has_qkv_bias = true;
    }
    if (parse_rope(J, root, c) || parse_tokens(J, root, c)) return -1;
    if (c->arch == HF_MISTRAL) {
        if (jint(J, root, "", "sliding_window", false, 0, 1, HF_MAX_POSITIONS, &c->sliding_window)) return -1;
    } else if (c->arch == HF_QWEN2) {
        bool use_sw;
        if (jbool(J, root, "use_sliding_window", false, &use_sw)) return -1;
        if (use_sw && jint(J, root, "", "sliding_window", true, 0, 1, HF_MAX_POSITIONS, &c->sliding_window)) return -1;
    }
    const char *dt;
    if (jstr(J, root, "", "dtype", &dt) || (!dt && jstr(J, root, "", "torch_dtype", &dt))) return -1;
    if (dt) snprintf(c->dtype, sizeof c->dtype, "%s", dt);
    /* Sizes one by one are bounded; their product must be too. */
    double hd = c->head_dim, L = c->num_hidden_layers, I = c->intermediate_size, V = c->vocab_size;
    double per_layer = (double)H * hd * (2.0 * nh + 2.0 * nkv) + 3.0 * H * I + 2.0 * H;
    double params = V * H * (c->tie_word_embeddings ? 1 : 2) + L * per_layer + H;
    if (params > HF_MAX_PARAMS)
        return qt_errf(J->e, "%s: these sizes imply %.3g parameters, more than the %.0e qtrain accepts; " FIX_CFG,
                       J->where, params, HF_MAX_PARAMS);
    return 0;
}

int hf_config_parse(hf_config *cfg, const char *json, size_t len, const char *where, qt_err *e) {
    jctx J = {where, e};
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        size_t at = end && end >= json && end <= json + len ? (size_t)(end - json) : 0;
        int line = 1;
        for (size_t i = 0; i < at; i++) line += json[i] == '\n';
        return qt_errf(e, "%s: not valid JSON (error near line %d, byte offset %zu)", where, line, at);
    }
    int rc = parse_config(&J, root, cfg);
    cJSON_Delete(root);
    return rc;
}

int hf_config_load(hf_config *cfg, const char *path, qt_err *e) {
    char p[4096];
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) snprintf(p, sizeof p, "%s/config.json", path);
    else snprintf(p, sizeof p, "%s", path);
    size_t len;
    char *txt = ck_read_file(p, (size_t)16 << 20, &len, e);
    if (!txt) return -1;
    int rc = hf_config_parse(cfg, txt, len, p, e);
    free(txt);
    return rc;
}

const char *hf_config_describe(const hf_config *c, char *buf, size_t n) {
    char rope[64];
    if (c->rope.scaling == 0) snprintf(rope, sizeof rope, "%g", c->rope.theta);
    else snprintf(rope, sizeof rope, "%g %s x%g", c->rope.theta, c->rope.scaling == 1 ? "linear" : "llama3", c->rope.factor);
    snprintf(buf, n, "%s: H %d, I %d, L %d, heads %d/%d x %d, V %d, rope %s%s%s%s", c->model_type, c->hidden_size,
             c->intermediate_size, c->num_hidden_layers, c->num_attention_heads, c->num_key_value_heads, c->head_dim,
             c->vocab_size, rope, c->has_qkv_bias ? ", qkv bias" : "", c->has_mlp_bias ? ", mlp bias" : "",
             c->tie_word_embeddings ? ", tied embeddings" : "");
    return buf;
}

/* ------------------------------------------------------------------ tensor names */

static void add(hf_tensor_spec *s, int *k, int64_t d0, int64_t d1, const char *fmt, int layer) {
    hf_tensor_spec *t = &s[(*k)++];
    snprintf(t->name, sizeof t->name, fmt, layer);
    t->ndim = d1 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1;
}

int hf_expected_tensors(const hf_config *c, hf_tensor_spec **out) {
    int64_t H = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    int64_t q = (int64_t)c->num_attention_heads * c->head_dim, kv = (int64_t)c->num_key_value_heads * c->head_dim;
    int cap = 3 + c->num_hidden_layers * 16;
    hf_tensor_spec *s = calloc((size_t)cap, sizeof *s);
    QT_CHECK(s, "out of host memory");
    int k = 0;
    add(s, &k, V, H, "model.embed_tokens.weight", 0);
    for (int i = 0; i < c->num_hidden_layers; i++) {
        add(s, &k, H, 0, "model.layers.%d.input_layernorm.weight", i);
        add(s, &k, q, H, "model.layers.%d.self_attn.q_proj.weight", i);
        add(s, &k, kv, H, "model.layers.%d.self_attn.k_proj.weight", i);
        add(s, &k, kv, H, "model.layers.%d.self_attn.v_proj.weight", i);
        add(s, &k, H, q, "model.layers.%d.self_attn.o_proj.weight", i);
        if (c->has_qkv_bias) {
            add(s, &k, q, 0, "model.layers.%d.self_attn.q_proj.bias", i);
            add(s, &k, kv, 0, "model.layers.%d.self_attn.k_proj.bias", i);
            add(s, &k, kv, 0, "model.layers.%d.self_attn.v_proj.bias", i);
        }
        if (c->has_o_bias) add(s, &k, H, 0, "model.layers.%d.self_attn.o_proj.bias", i);
        add(s, &k, H, 0, "model.layers.%d.post_attention_layernorm.weight", i);
        add(s, &k, I, H, "model.layers.%d.mlp.gate_proj.weight", i);
        add(s, &k, I, H, "model.layers.%d.mlp.up_proj.weight", i);
        add(s, &k, H, I, "model.layers.%d.mlp.down_proj.weight", i);
        if (c->has_mlp_bias) {
            add(s, &k, I, 0, "model.layers.%d.mlp.gate_proj.bias", i);
            add(s, &k, I, 0, "model.layers.%d.mlp.up_proj.bias", i);
            add(s, &k, H, 0, "model.layers.%d.mlp.down_proj.bias", i);
        }
    }
    add(s, &k, H, 0, "model.norm.weight", 0);
    if (!c->tie_word_embeddings) add(s, &k, V, H, "lm_head.weight", 0);
    QT_ASSERT(k <= cap);
    *out = s;
    return k;
}

static const char *spec_shape(const hf_tensor_spec *s, char *buf, size_t n) {
    if (s->ndim == 1) snprintf(buf, n, "[%lld]", (long long)s->shape[0]);
    else snprintf(buf, n, "[%lld,%lld]", (long long)s->shape[0], (long long)s->shape[1]);
    return buf;
}

static int cmp_spec(const void *a, const void *b) {
    return strcmp(((const hf_tensor_spec *)a)->name, ((const hf_tensor_spec *)b)->name);
}

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

int hf_check_tensors(const hf_config *c, const st_model *m, qt_err *e) {
    hf_tensor_spec *s;
    int n = hf_expected_tensors(c, &s), rc = 0;
    char tb[256], sb[64];
    for (int i = 0; i < n && rc == 0; i++) {
        const st_tensor *t = st_model_find(m, s[i].name);
        if (!t) {
            rc = qt_errf(e, "%s: the checkpoint has no tensor '%s' (shape %s), which config.json implies; the "
                         "weights and config.json do not belong together or a shard is missing", m->dir, s[i].name,
                         spec_shape(&s[i], sb, sizeof sb));
            break;
        }
        bool same = t->ndim == s[i].ndim;
        for (int d = 0; same && d < t->ndim; d++) same = t->shape[d] == s[i].shape[d];
        if (!same)
            rc = qt_errf(e, "%s: tensor %s but config.json implies shape %s; the weights and config.json do not "
                         "belong together", m->dir, st_describe(t, tb, sizeof tb), spec_shape(&s[i], sb, sizeof sb));
        else if (t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16 && t->dtype != ST_F64)
            rc = qt_errf(e, "%s: tensor %s is not a float tensor: pre-quantized checkpoints (GPTQ, AWQ, bnb, FP8) are "
                         "not supported; use the original bf16/f16 weights", m->dir, st_describe(t, tb, sizeof tb));
    }
    /* Anything else means the checkpoint has parts this config does not describe. */
    qsort(s, (size_t)n, sizeof *s, cmp_spec);
    for (int i = 0; i < m->n_tensors && rc == 0; i++) {
        const st_tensor *t = m->tensors[i];
        hf_tensor_spec key;
        snprintf(key.name, sizeof key.name, "%s", t->name);
        if (strlen(t->name) < sizeof key.name && bsearch(&key, s, (size_t)n, sizeof *s, cmp_spec)) continue;
        if (ends_with(t->name, ".rotary_emb.inv_freq")) continue;
        if (c->tie_word_embeddings && strcmp(t->name, "lm_head.weight") == 0 && t->ndim == 2 &&
            t->shape[0] == c->vocab_size && t->shape[1] == c->hidden_size)
            continue;
        rc = qt_errf(e, "%s: unexpected tensor %s that config.json does not explain (model_type %s%s%s%s); the "
                     "checkpoint is a different architecture or variant", m->dir, st_describe(t, tb, sizeof tb),
                     c->model_type, c->has_qkv_bias ? ", q/k/v bias" : "", c->has_mlp_bias ? ", mlp bias" : "",
                     c->tie_word_embeddings ? ", tied embeddings" : "");
    }
    free(s);
    return rc;
}
