/* `qtrain merge` and `qtrain export-adapter`: a trained run's LoRA adapter into the base
 * model, written as a (re)quantized GGUF that llama.cpp / Ollama load, or the adapter alone
 * as a PEFT folder and a GGUF LoRA adapter (shared/specs/gguf.md sections 6-10).
 *
 * Merging streams: one base tensor is read (bf16/f32 from the Hugging Face checkpoint the
 * run was trained on), merged W' = W + s·B·A in float32 (products summed in double),
 * permuted for llama.cpp's rope where needed, quantized to the type the mix gives it and
 * written, before the next one is read. `--base nf4` merges into the NF4 round trip of W
 * (what the adapter was trained against) instead of W itself. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "checkpoints/checkpoints.h"
#include "quant/quant.h"
#include "trainer.h"

static bool is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}
static bool is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}
static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ------------------------------------------------------------------ the run folder */

/* adapter folder, base model folder and (optional) run config of RUN_DIR */
static int resolve_run(const char *run, const char *config, const char *model, char *adapter_dir, char *model_dir,
                       size_t n, qt_config **cfg_out, qt_err *e) {
    char p[QT_CFG_PATH_MAX + 64];
    *cfg_out = NULL;
    snprintf(p, sizeof p, "%s/adapter/adapter_config.json", run);
    if (is_file(p)) snprintf(adapter_dir, n, "%s/adapter", run);
    else {
        snprintf(p, sizeof p, "%s/adapter_config.json", run);
        if (!is_file(p))
            return qt_errf(e, "%s: no adapter/adapter_config.json (nor adapter_config.json) in it; give a qtrain run "
                              "folder (training writes OUTPUT_DIR/adapter at the end) or a PEFT adapter folder", run);
        snprintf(adapter_dir, n, "%s", run);
    }
    if (!config) {
        snprintf(p, sizeof p, "%s/config.yaml", run);
        if (is_file(p)) config = p;
    }
    char ck[QT_CFG_PATH_MAX + 64];
    snprintf(ck, sizeof ck, "%s/checkpoints", run);
    bool ckpt = !config && is_dir(ck);
    if (config || ckpt) { /* the run config: --config, RUN_DIR/config.yaml, or the newest checkpoint's */
        qt_config *c = malloc(sizeof *c);
        QT_CHECK(c, "out of host memory");
        qt_err ce;
        if ((ckpt ? qt_config_from_run(c, run, NULL, 0, &ce) : qt_config_load(c, config, NULL, 0, &ce)) != 0) {
            free(c);
            if (!ckpt) return qt_errf(e, "%s", ce.msg);
            /* no usable checkpoint: the adapter's base_model_name_or_path or --model may still do */
            fprintf(stderr, "qtrain: note: no run config from %s (%s)\n", ck, ce.msg);
            c = NULL;
        }
        *cfg_out = c;
        if (c && !model && c->model.synthetic[0])
            return qt_errf(e, "%s: a model.synthetic run has no checkpoint to merge into; pass --model DIR", run);
        if (c && !model) model = c->model.path;
    }
    if (!model) { /* last resort: the adapter's base_model_name_or_path, when it is a local folder */
        peft_adapter a;
        if (peft_open(&a, adapter_dir, e) != 0) return -1;
        snprintf(p, sizeof p, "%s", a.base_model ? a.base_model : "");
        peft_close(&a);
        if (!p[0] || !is_dir(p))
            return qt_errf(e, "%s: cannot tell which base model the adapter belongs to (no config.yaml, and "
                              "base_model_name_or_path is not a local folder); pass --model HF_FOLDER", run);
        model = p;
    }
    if (!is_dir(model)) return qt_errf(e, "base model folder %s does not exist; pass --model HF_FOLDER", model);
    if (strlen(model) >= n) return qt_errf(e, "base model path too long: %.200s...", model);
    memcpy(model_dir, model, strlen(model) + 1);
    return 0;
}

/* ------------------------------------------------------------------ importance matrix */

typedef struct imatrix {
    int n;
    char **names;
    float **values;
    int64_t *len;
} imatrix;

static void imatrix_free(imatrix *m) {
    for (int i = 0; i < m->n; i++) free(m->names[i]), free(m->values[i]);
    free(m->names), free(m->values), free(m->len);
    memset(m, 0, sizeof *m);
}

static void imatrix_add(imatrix *m, const char *name, int64_t len) {
    m->names = realloc(m->names, (size_t)(m->n + 1) * sizeof *m->names);
    m->values = realloc(m->values, (size_t)(m->n + 1) * sizeof *m->values);
    m->len = realloc(m->len, (size_t)(m->n + 1) * sizeof *m->len);
    QT_CHECK(m->names && m->values && m->len, "out of host memory");
    m->names[m->n] = strdup(name);
    m->values[m->n] = malloc((size_t)len * sizeof(float));
    QT_CHECK(m->names[m->n] && m->values[m->n], "out of host memory");
    m->len[m->n++] = len;
}

/* llama-imatrix output: GGUF (<name>.in_sum2 / <name>.counts) or the legacy .dat
 * (int32 n; per entry: int32 name length, name, int32 ncall, int32 nval, float[nval] =
 * mean·ncall). Importance = mean squared activation per column. */
static int imatrix_load(imatrix *m, const char *path, qt_err *e) {
    memset(m, 0, sizeof *m);
    size_t size;
    char *buf = ck_read_file(path, (size_t)8 << 30, &size, e);
    if (!buf) return -1;
    int rc = 0;
    if (size >= 4 && !memcmp(buf, "GGUF", 4)) {
        free(buf);
        gguf_file f;
        if (gguf_open(&f, path, e) != 0) return -1;
        for (int64_t i = 0; rc == 0 && i < f.n_tensors; i++) {
            const gguf_tensor_info *s = &f.tensors[i];
            size_t l = strlen(s->name);
            if (l < 8 || strcmp(s->name + l - 8, ".in_sum2")) continue;
            char base[GGUF_MAX_NAME + 16];
            snprintf(base, sizeof base, "%.*s.counts", (int)(l - 8), s->name);
            const gguf_tensor_info *c = gguf_find_tensor(&f, base);
            /* 2-D, so that ne[0] x ne[1] is every value the file holds (a 3-D one with ne[2] = 0 holds none) */
            if (s->n_dims > 2 || s->ne[0] < 1) {
                rc = qt_errf(e, "%s: %s must be a 2-D F32 tensor [values per row, matrices]", path, s->name);
                break;
            }
            if (!c || s->type != 0 || c->type != 0 || c->n_dims > 2 || c->ne[0] != 1 || c->ne[1] != s->ne[1]) {
                rc = qt_errf(e, "%s: %s has no matching F32 %s", path, s->name, base);
                break;
            }
            base[l - 8] = 0;
            imatrix_add(m, base, s->ne[0] * s->ne[1]);
            for (int64_t k = 0; k < s->ne[0] * s->ne[1]; k++) {
                float v, cnt;
                memcpy(&v, s->data + 4 * k, 4);
                memcpy(&cnt, c->data + 4 * (k / s->ne[0]), 4);
                m->values[m->n - 1][k] = cnt > 0 ? v / cnt : 0;
            }
        }
        gguf_close(&f);
        return rc;
    }
    size_t pos = 0;
#define TAKE(dst, bytes)                                                                                     \
    do {                                                                                                     \
        if ((bytes) > size - pos) {                                                                          \
            rc = qt_errf(e, "%s: truncated at byte %zu; not an imatrix file (legacy .dat or GGUF)", path, pos); \
            goto out;                                                                                        \
        }                                                                                                    \
        memcpy(dst, buf + pos, bytes);                                                                       \
        pos += (bytes);                                                                                      \
    } while (0)
    int32_t n_entries;
    TAKE(&n_entries, 4);
    if (n_entries < 0 || n_entries > 1000000) {
        rc = qt_errf(e, "%s: %d entries; not an imatrix file (legacy .dat or GGUF)", path, n_entries);
        goto out;
    }
    for (int i = 0; i < n_entries; i++) {
        int32_t len, ncall, nval;
        char name[512];
        TAKE(&len, 4);
        if (len <= 0 || len >= (int32_t)sizeof name) {
            rc = qt_errf(e, "%s: entry %d has a name of %d bytes", path, i, len);
            goto out;
        }
        TAKE(name, (size_t)len);
        name[len] = 0;
        TAKE(&ncall, 4);
        TAKE(&nval, 4);
        if (nval <= 0 || (size_t)nval > (size - pos) / 4) {
            rc = qt_errf(e, "%s: entry %s has %d values", path, name, nval);
            goto out;
        }
        imatrix_add(m, name, nval);
        TAKE(m->values[m->n - 1], (size_t)nval * 4);
        for (int k = 0; k < nval; k++) m->values[m->n - 1][k] /= ncall > 0 ? (float)ncall : 1.0f;
    }
#undef TAKE
out:
    free(buf);
    if (rc) imatrix_free(m);
    return rc;
}

static const float *imatrix_find(const imatrix *m, const char *name, int64_t n_per_row, qt_err *e, int *rc) {
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->names[i], name)) {
            if (m->len[i] != n_per_row)
                *rc = qt_errf(e, "imatrix entry %s has %lld values but the tensor's rows have %lld; was it computed for "
                                 "this model?", name, (long long)m->len[i], (long long)n_per_row);
            return m->values[i];
        }
    return NULL;
}

/* ------------------------------------------------------------------ merging one tensor */

/* "model.layers.7.mlp.up_proj.weight" -> layer 7, projection 5; false for anything else */
static bool proj_of(const char *hf, int *layer, int *proj, bool *bias) {
    int off = 0;
    if (sscanf(hf, "model.layers.%d.%n", layer, &off) != 1 || off == 0) return false;
    for (int p = 0; p < PEFT_NPROJ; p++) {
        char w[64], b[64];
        snprintf(w, sizeof w, "%s.%s.weight", p <= 3 ? "self_attn" : "mlp", peft_proj_names[p]);
        snprintf(b, sizeof b, "%s.%s.bias", p <= 3 ? "self_attn" : "mlp", peft_proj_names[p]);
        if (!strcmp(hf + off, w) || !strcmp(hf + off, b)) {
            *proj = p;
            *bias = !strcmp(hf + off, b);
            return true;
        }
    }
    return false;
}

static int read_f32(const st_tensor *t, float **out, qt_err *e) {
    *out = malloc((size_t)t->numel * sizeof **out);
    QT_CHECK(*out, "out of host memory (%lld floats for %s)", (long long)t->numel, t->name);
    return st_read_f32(t, 0, t->numel, *out, e);
}

/* w [out, in] += s · B [out, r] · A [r, in], each sum over r in double */
static int add_lora(float *w, const st_tensor *A, const st_tensor *B, double s, qt_err *e) {
    float *a, *b;
    int rc = read_f32(A, &a, e);
    if (rc == 0) rc = read_f32(B, &b, e);
    else b = NULL;
    if (rc == 0) {
        const int64_t r = A->shape[0], in = A->shape[1], out = B->shape[0];
#pragma omp parallel for schedule(static)
        for (int64_t o = 0; o < out; o++)
            for (int64_t i = 0; i < in; i++) {
                double acc = 0;
                for (int64_t k = 0; k < r; k++) acc += (double)b[o * r + k] * (double)a[k * in + i];
                w[o * in + i] = (float)((double)w[o * in + i] + s * acc);
            }
    }
    free(a);
    free(b);
    return rc;
}

/* W <- dequant(nf4(W)) as training saw it (the checkpoint's values, F16-rounded first when
 * the model dtype is f16 and the checkpoint is not float32: llm_load does the same) */
static int nf4_round_trip(float *w, const st_tensor *t, bool dq, qt_dtype model_dtype, qt_err *e) {
    const int64_t shape[2] = {t->shape[0], t->shape[1]}, n = t->numel;
    if (model_dtype == QT_F16 && t->dtype != ST_F32 && t->dtype != ST_F64)
        for (int64_t i = 0; i < n; i++) w[i] = qt_f16_to_f32(qt_f32_to_f16(w[i]));
    qt_ctx_opts o = {.dev = QT_CPU, .persist_budget = nf4_bytes(n, dq) + (4u << 20),
                     .step_budget = (size_t)n * 8 + (4u << 20), .scratch_budget = 1u << 20, .work_budget = 1u << 20};
    qt_ctx c;
    if (qt_ctx_init(&c, &o) != 0) return qt_errf(e, "%s: cannot set up a CPU context for NF4 (see above)", t->name);
    qt_tensor *dense = qt_empty(&c, QT_STEP, QT_F32, 2, shape);
    qt_upload(dense, w, QT_F32);
    nf4_tensor q;
    int rc = nf4_quantize(&c, QT_PERSIST, dense, dq, &q, e);
    if (rc == 0) {
        qt_tensor *out = qt_empty(&c, QT_STEP, QT_F32, 2, shape);
        nf4_dequantize(&c, &q, out);
        qt_download(out, w, QT_F32);
    }
    qt_ctx_free(&c);
    return rc;
}

/* ------------------------------------------------------------------ qtrain merge */

typedef struct out_tensor {
    char hf[96], gg[GGUF_MAX_NAME + 1];
    int n_dims;
    int64_t ne[2];
    kq_type type;
} out_tensor;

static void general_keys(gguf_writer *w, const hf_config *h, const char *name, const char *desc) {
    gguf_set_str(w, "general.architecture", gguf_arch_name(h));
    gguf_set_str(w, "general.name", name);
    if (desc) gguf_set_str(w, "general.description", desc);
}

int qt_merge_gguf(const qt_merge_opts *o, qt_err *e) {
    double t0 = now_s();
    hf_config h;
    st_model sm;
    peft_adapter ad = {0};
    imatrix im = {0};
    if (hf_config_load(&h, o->model_dir, e) != 0) return -1;
    if (st_model_open(&sm, o->model_dir, e) != 0) return -1;
    int rc = hf_check_tensors(&h, &sm, e);
    bool have_ad = false;
    if (rc == 0 && (rc = peft_open(&ad, o->adapter_dir, e)) == 0) have_ad = true;
    if (rc == 0) rc = peft_check_model(&ad, &h, e);
    if (rc == 0 && o->imatrix) rc = imatrix_load(&im, o->imatrix, e);
    if (rc == 0 && h.sliding_window)
        fprintf(stderr, "qtrain: warning: the model's sliding_window %d is not stored in GGUF: llama.cpp attends over "
                        "the whole context\n", h.sliding_window);
    hf_tensor_spec *spec = NULL;
    int n_spec = rc == 0 ? hf_expected_tensors(&h, &spec) : 0;
    out_tensor *ot = calloc((size_t)n_spec + 2, sizeof *ot);
    QT_CHECK(ot, "out of host memory");
    int n_out = 0;
    bool has_output = false, any_quant = false;
    for (int i = 0; i < n_spec; i++) has_output |= !strcmp(spec[i].name, "lm_head.weight");
    kq_model_info mi = {.n_layer = h.num_hidden_layers, .has_output = has_output,
                        .is_70b = h.num_hidden_layers == 80 && (h.arch == HF_QWEN2 || h.num_attention_heads != h.num_key_value_heads)};
    float rope_freqs[HF_MAX_HEAD_DIM / 2];
    bool llama3 = gguf_rope_freqs(&h, rope_freqs);
    for (int i = 0; rc == 0 && i < n_spec; i++) {
        out_tensor *t = &ot[n_out++];
        snprintf(t->hf, sizeof t->hf, "%s", spec[i].name);
        QT_CHECK(gguf_hf_name(t->hf, t->gg, sizeof t->gg) == 0, "no GGUF name for %s", t->hf);
        t->n_dims = spec[i].ndim;
        t->ne[0] = spec[i].ndim == 2 ? spec[i].shape[1] : spec[i].shape[0];
        t->ne[1] = spec[i].ndim == 2 ? spec[i].shape[0] : 1;
        t->type = kq_tensor_type(o->ftype, t->gg, t->n_dims, t->ne, &mi);
        any_quant |= t->type != KQ_F32 && t->type != KQ_F16 && t->type != KQ_BF16;
        if (llama3 && !strcmp(t->hf, "model.embed_tokens.weight")) { /* rope_freqs next, as the converter does */
            out_tensor *r = &ot[n_out++];
            snprintf(r->gg, sizeof r->gg, "rope_freqs.weight");
            r->n_dims = 1, r->ne[0] = h.head_dim / 2, r->ne[1] = 1, r->type = KQ_F32;
        }
    }

    gguf_writer *w = gguf_writer_new();
    char desc[256];
    snprintf(desc, sizeof desc, "merged by qtrain: W + %g*B*A (LoRA r=%d, alpha=%g%s) into the %s base weights", ad.scale,
             ad.r, ad.alpha, ad.rslora ? ", rsLoRA" : "", o->nf4_base ? "NF4-dequantized" : "original");
    if (rc == 0) {
        general_keys(w, &h, o->name, desc);
        gguf_set_str(w, "general.type", "model");
        gguf_set_u32(w, "general.file_type", (uint32_t)o->ftype);
        if (any_quant) gguf_set_u32(w, "general.quantization_version", 2);
        gguf_set_str(w, "qtrain.merge_base", o->nf4_base ? (o->double_quant ? "nf4-dq" : "nf4") : "original");
        gguf_set_f32(w, "qtrain.lora_scale", (float)ad.scale);
        gguf_set_model_meta(w, &h);
        char tok[QT_CFG_PATH_MAX + 32];
        if (o->tokenizer) snprintf(tok, sizeof tok, "%s", o->tokenizer);
        else snprintf(tok, sizeof tok, "%s/tokenizer.json", o->model_dir);
        if (is_file(tok)) rc = gguf_set_tokenizer(w, tok, o->model_dir, &h, e);
        else if (o->no_vocab) gguf_set_str(w, "tokenizer.ggml.model", "none");
        else
            rc = qt_errf(e, "%s does not exist; llama.cpp needs the vocabulary in the GGUF. Give --tokenizer FILE, or "
                            "--no-vocab for a file that llama.cpp loads but cannot tokenize text with", tok);
    }
    for (int i = 0; rc == 0 && i < n_out; i++)
        rc = gguf_add_tensor(w, ot[i].gg, ot[i].n_dims, ot[i].ne, (uint32_t)ot[i].type, e);
    if (rc == 0) rc = gguf_write_begin(w, o->out, e);

    int counts[64] = {0};
    bool tty = isatty(2);
    for (int i = 0; rc == 0 && i < n_out; i++) {
        out_tensor *t = &ot[i];
        const int64_t n = t->ne[0] * t->ne[1];
        float *x = NULL;
        if (!t->hf[0]) { /* rope_freqs */
            x = malloc((size_t)n * sizeof *x);
            QT_CHECK(x, "out of host memory");
            memcpy(x, rope_freqs, (size_t)n * sizeof *x);
        } else {
            const st_tensor *st = st_model_find(&sm, t->hf);
            rc = read_f32(st, &x, e);
            int layer, p;
            bool bias;
            if (rc == 0 && proj_of(t->hf, &layer, &p, &bias)) {
                const st_tensor *A = layer < ad.n_layers ? ad.A[layer * PEFT_NPROJ + p] : NULL;
                if (!bias && o->nf4_base) rc = nf4_round_trip(x, st, o->double_quant, o->model_dtype, e);
                if (rc == 0 && !bias && A) rc = add_lora(x, A, ad.B[layer * PEFT_NPROJ + p], ad.scale, e);
                if (rc == 0 && p <= 1 && gguf_arch_permutes_qk(&h)) /* rows of a weight; a bias is one column */
                    gguf_permute_qk(x, bias ? t->ne[0] : t->ne[1], bias ? 1 : t->ne[0],
                                    p == 0 ? h.num_attention_heads : h.num_key_value_heads, false);
            }
        }
        const float *qw = NULL;
        if (rc == 0 && im.n) qw = imatrix_find(&im, t->gg, t->ne[0], e, &rc);
        void *q = NULL;
        size_t bytes = rc == 0 ? kq_row_bytes(t->type, t->ne[0]) * (size_t)t->ne[1] : 0;
        if (rc == 0) {
            q = malloc(bytes + 1);
            QT_CHECK(q, "out of host memory (%zu bytes for %s)", bytes, t->gg);
            rc = kq_quantize(t->type, x, t->ne[1], t->ne[0], qw, q, t->gg, e);
        }
        if (rc == 0) rc = gguf_write_tensor(w, q, bytes, e);
        if (rc == 0) counts[t->type]++;
        if (rc == 0 && tty)
            fprintf(stderr, "\rqtrain: [%d/%d] %-28s %-5s%s", i + 1, n_out, t->gg, kq_type_name(t->type),
                    i + 1 == n_out ? "\n" : "");
        free(x);
        free(q);
    }
    if (rc == 0) rc = gguf_write_end(w, e);
    if (rc == 0) {
        uint64_t size = gguf_writer_size(w), params = 0;
        for (int i = 0; i < n_out; i++) params += (uint64_t)(ot[i].ne[0] * ot[i].ne[1]);
        char mix[256] = "";
        for (int t = 0; t < 64; t++)
            if (counts[t]) snprintf(mix + strlen(mix), sizeof mix - strlen(mix), "%s%d %s", mix[0] ? ", " : "",
                                    counts[t], kq_type_name((kq_type)t));
        fprintf(stderr, "qtrain: wrote %s: %s, %.2f MiB, %.2f bits/weight (%s)%s, merge base %s, %.1f s\n", o->out,
                kq_ftype_name(o->ftype), (double)size / 1048576.0, 8.0 * (double)size / (double)params, mix,
                im.n ? ", imatrix" : "", o->nf4_base ? "nf4" : "original", now_s() - t0);
    }
    gguf_writer_free(w);
    free(ot);
    free(spec);
    imatrix_free(&im);
    if (have_ad) peft_close(&ad);
    st_model_close(&sm);
    return rc;
}

/* ------------------------------------------------------------------ qtrain export-adapter */

static const char *const gg_proj[PEFT_NPROJ] = {"attn_q", "attn_k", "attn_v", "attn_output",
                                                "ffn_gate", "ffn_up", "ffn_down"};

int qt_export_adapter(const char *adapter_dir, const char *model_dir, const char *out_dir, const char *gguf_name,
                      qt_err *e) {
    peft_adapter a;
    if (peft_open(&a, adapter_dir, e) != 0) return -1;
    hf_config h;
    bool have_h = model_dir && hf_config_load(&h, model_dir, e) == 0;
    int rc = model_dir && !have_h ? -1 : 0;
    if (rc == 0 && have_h) rc = peft_check_model(&a, &h, e);
    if (rc == 0 && gguf_name && !have_h)
        rc = qt_errf(e, "a GGUF adapter needs the base model's config.json (architecture, heads): pass --model DIR");
    int n = a.n_layers * PEFT_NPROJ, nt = 0;
    st_wtensor *wt = calloc((size_t)(2 * n), sizeof *wt);
    float **data = calloc((size_t)(2 * n), sizeof *data);
    char **names = calloc((size_t)(2 * n), sizeof *names);
    QT_CHECK(wt && data && names, "out of host memory");
    for (int i = 0; rc == 0 && i < n; i++)
        for (int b = 0; rc == 0 && b < 2 && a.A[i]; b++) {
            const st_tensor *t = b ? a.B[i] : a.A[i];
            rc = read_f32(t, &data[nt], e);
            names[nt] = strdup(t->name);
            QT_CHECK(names[nt], "out of host memory");
            wt[nt] = (st_wtensor){.name = names[nt], .dtype = ST_F32, .ndim = 2, .shape = {t->shape[0], t->shape[1]},
                                  .data = data[nt]};
            nt++;
        }
    const char *targets[PEFT_NPROJ];
    int n_targets = 0;
    for (int p = 0; p < PEFT_NPROJ; p++)
        if (a.targets & (1u << p)) targets[n_targets++] = peft_proj_names[p];
    peft_adapter_info info = {.r = a.r, .alpha = a.alpha, .dropout = a.dropout, .rslora = a.rslora, .targets = targets,
                              .n_targets = n_targets, .base_model = model_dir ? model_dir : a.base_model};
    if (rc == 0) rc = peft_save(out_dir, &info, wt, nt, e);
    if (rc == 0) fprintf(stderr, "qtrain: PEFT adapter (r=%d, %d tensors) written to %s\n", a.r, nt, out_dir);

    if (rc == 0 && gguf_name) {
        /* llama.cpp has no rsLoRA flag: its scale is alpha / r, so fold sqrt(r) into alpha */
        float alpha = (float)(a.rslora ? a.alpha * sqrt((double)a.r) : a.alpha);
        gguf_writer *w = gguf_writer_new();
        general_keys(w, &h, gguf_name, "LoRA adapter exported by qtrain");
        gguf_set_str(w, "general.type", "adapter");
        gguf_set_str(w, "adapter.type", "lora");
        gguf_set_f32(w, "adapter.lora.alpha", alpha);
        for (int k = 0; rc == 0 && k < nt; k++) {
            int layer = 0, p = 0;
            bool is_b = strstr(wt[k].name, ".lora_B.") != NULL, bias;
            char hf[160], gg[GGUF_MAX_NAME + 8];
            snprintf(hf, sizeof hf, "%s", wt[k].name + strlen("base_model.model."));
            *strstr(hf, is_b ? ".lora_B." : ".lora_A.") = 0;
            strcat(hf, ".weight");
            QT_CHECK(proj_of(hf, &layer, &p, &bias), "unparsed adapter tensor %s", wt[k].name);
            snprintf(gg, sizeof gg, "blk.%d.%s.weight.lora_%c", layer, gg_proj[p], is_b ? 'b' : 'a');
            int64_t ne[2] = {wt[k].shape[1], wt[k].shape[0]};
            if (is_b && p <= 1 && gguf_arch_permutes_qk(&h))
                gguf_permute_qk(data[k], wt[k].shape[0], wt[k].shape[1],
                                p == 0 ? h.num_attention_heads : h.num_key_value_heads, false);
            rc = gguf_add_tensor(w, gg, 2, ne, 0 /* F32 */, e);
        }
        char path[QT_CFG_PATH_MAX + 160];
        snprintf(path, sizeof path, "%s/%s-LoRA.gguf", out_dir, gguf_name);
        if (rc == 0) rc = gguf_write_begin(w, path, e);
        for (int k = 0; rc == 0 && k < nt; k++)
            rc = gguf_write_tensor(w, data[k], (uint64_t)(wt[k].shape[0] * wt[k].shape[1]) * 4, e);
        if (rc == 0) rc = gguf_write_end(w, e);
        if (rc == 0) fprintf(stderr, "qtrain: GGUF LoRA adapter (alpha %g) written to %s\n", (double)alpha, path);
        gguf_writer_free(w);
    }
    for (int k = 0; k < nt; k++) free(data[k]), free(names[k]);
    free(data);
    free(names);
    free(wt);
    peft_close(&a);
    return rc;
}

/* ------------------------------------------------------------------ command lines */

static const char *base_name(const char *path, char *buf, size_t n) {
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/') len--;
    const char *b = path + len;
    while (b > path && b[-1] != '/') b--;
    snprintf(buf, n, "%.*s", (int)(path + len - b), b);
    for (char *c = buf; *c; c++)
        if (*c == ' ' || *c == '/') *c = '-';
    return buf[0] && strcmp(buf, ".") && strcmp(buf, "..") ? buf : "model";
}

static int usage_error(const char *cmd, const char *msg, const char *arg) {
    fprintf(stderr, "qtrain %s: %s%s%s\n", cmd, msg, arg ? " " : "", arg ? arg : "");
    if (!strcmp(cmd, "merge"))
        fprintf(stderr, "usage: qtrain merge RUN_DIR --type Q4_K_M|Q5_K_M|Q6_K|Q8_0|F16|BF16|F32 -o OUT.gguf\n"
                        "                    [--base original|nf4] [--model HF_DIR] [--config RUN.yaml]\n"
                        "                    [--tokenizer tokenizer.json] [--no-vocab] [--imatrix FILE] [--name NAME]\n");
    else
        fprintf(stderr, "usage: qtrain export-adapter RUN_DIR OUT_DIR [--gguf] [--model HF_DIR] [--config RUN.yaml]\n"
                        "                    [--name NAME]\n");
    return 2;
}

int qt_cli_merge(int argc, char **argv) {
    const char *run = NULL, *out = NULL, *type = NULL, *base = NULL, *model = NULL, *config = NULL;
    qt_merge_opts o = {.double_quant = true, .model_dtype = QT_BF16};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char **dst = !strcmp(a, "-o") || !strcmp(a, "--out") ? &out : !strcmp(a, "--type") ? &type
                         : !strcmp(a, "--base") ? &base : !strcmp(a, "--model") ? &model
                         : !strcmp(a, "--config") ? &config : !strcmp(a, "--tokenizer") ? &o.tokenizer
                         : !strcmp(a, "--imatrix") ? &o.imatrix : !strcmp(a, "--name") ? &o.name : NULL;
        if (dst) {
            if (i + 1 == argc) return usage_error("merge", "missing value after", a);
            *dst = argv[++i];
        } else if (!strcmp(a, "--no-vocab")) o.no_vocab = true;
        else if (a[0] != '-' && !run) run = a;
        else return usage_error("merge", "unexpected argument", a);
    }
    if (!run) return usage_error("merge", "a RUN_DIR is needed", NULL);
    char adapter_dir[QT_CFG_PATH_MAX], model_dir[QT_CFG_PATH_MAX], name[256], outbuf[QT_CFG_PATH_MAX + 300];
    qt_config *cfg;
    qt_err err;
    if (resolve_run(run, config, model, adapter_dir, model_dir, sizeof adapter_dir, &cfg, &err) != 0) {
        fprintf(stderr, "qtrain merge: %s\n", err.msg);
        free(cfg);
        return 1;
    }
    if (!type && cfg && cfg->export_.gguf_type != QT_GGUF_NONE) type = qt_gguf_type_name(cfg->export_.gguf_type);
    int rc = 0;
    if (!type) rc = usage_error("merge", "--type is needed (the run config's export.gguf_type is none)", NULL);
    else if (kq_ftype_parse(type, &o.ftype, &err) != 0) rc = usage_error("merge", err.msg, NULL);
    if (rc == 0 && !base && cfg) base = qt_merge_base_name(cfg->export_.merge_base);
    if (rc == 0 && base && strcmp(base, "original") && strcmp(base, "nf4"))
        rc = usage_error("merge", "--base takes original or nf4, not", base);
    if (rc == 0) {
        o.nf4_base = base && !strcmp(base, "nf4");
        if (cfg) {
            o.double_quant = cfg->quant.double_quant;
            o.model_dtype = cfg->model.dtype;
            if (o.nf4_base && cfg->quant.block_size != NF4_BLOCK)
                rc = usage_error("merge", "--base nf4 needs quant.block_size 64 (the run config has another)", NULL);
        }
        if (!o.name) o.name = cfg && cfg->output.name[0] ? cfg->output.name : base_name(model_dir, name, sizeof name);
        if (!out) {
            char tl[16];
            snprintf(tl, sizeof tl, "%s", kq_ftype_name(o.ftype));
            snprintf(outbuf, sizeof outbuf, "%s/%s-%s.gguf", run, o.name, tl);
            out = outbuf;
        }
        o.out = out, o.adapter_dir = adapter_dir, o.model_dir = model_dir;
    }
    if (rc == 0 && qt_merge_gguf(&o, &err) != 0) {
        fprintf(stderr, "qtrain merge: %s\n", err.msg);
        rc = 1;
    }
    free(cfg);
    return rc;
}

int qt_cli_export_adapter(int argc, char **argv) {
    const char *run = NULL, *out = NULL, *model = NULL, *config = NULL, *name = NULL;
    bool gguf = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char **dst = !strcmp(a, "--model") ? &model : !strcmp(a, "--config") ? &config
                         : !strcmp(a, "--name") ? &name : NULL;
        if (dst) {
            if (i + 1 == argc) return usage_error("export-adapter", "missing value after", a);
            *dst = argv[++i];
        } else if (!strcmp(a, "--gguf")) gguf = true;
        else if (a[0] != '-' && !run) run = a;
        else if (a[0] != '-' && !out) out = a;
        else return usage_error("export-adapter", "unexpected argument", a);
    }
    if (!run || !out) return usage_error("export-adapter", "RUN_DIR and OUT_DIR are needed", NULL);
    char adapter_dir[QT_CFG_PATH_MAX], model_dir[QT_CFG_PATH_MAX], nb[256];
    qt_config *cfg;
    qt_err err;
    int rc = resolve_run(run, config, model, adapter_dir, model_dir, sizeof adapter_dir, &cfg, &err);
    if (rc != 0 && !gguf && !model && !config) { /* the PEFT copy does not need the base model */
        rc = 0;
        model_dir[0] = 0;
        char p[QT_CFG_PATH_MAX + 32];
        snprintf(p, sizeof p, "%s/adapter/adapter_config.json", run);
        snprintf(adapter_dir, sizeof adapter_dir, is_file(p) ? "%s/adapter" : "%s", run);
    }
    if (rc == 0) {
        if (!name) name = cfg && cfg->output.name[0] ? cfg->output.name : base_name(run, nb, sizeof nb);
        rc = qt_export_adapter(adapter_dir, model_dir[0] ? model_dir : NULL, out, gguf ? name : NULL, &err);
    }
    if (rc != 0) fprintf(stderr, "qtrain export-adapter: %s\n", err.msg);
    free(cfg);
    return rc ? 1 : 0;
}
