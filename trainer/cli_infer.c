/* `qtrain generate` and `qtrain eval`: text generation with a KV cache, and perplexity
 * of a model on a text file, both straight from a Hugging Face folder. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data/data.h"
#include "trainer.h"

typedef struct infer_args {
    const char *model, *prompt, *data;
    qt_device dev;
    qt_dtype dtype;
    int max_new, seq_len;
    double temperature, top_p;
    int top_k;
    uint64_t seed;
    bool nf4;
} infer_args;

static int parse_args(int argc, char **argv, infer_args *a, const char *cmd) {
    *a = (infer_args){.dev = QT_CPU, .dtype = QT_F32, .max_new = 64, .seq_len = 512, .top_p = 1.0, .seed = 1};
    for (int i = 0; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool flag = !strcmp(k, "--nf4");
        if (flag) {
            a->nf4 = true;
            continue;
        }
        if (!v) {
            fprintf(stderr, "qtrain %s: %s needs a value\n", cmd, k);
            return 2;
        }
        i++;
        char *end = NULL;
        if (!strcmp(k, "--model")) a->model = v;
        else if (!strcmp(k, "--prompt")) a->prompt = v;
        else if (!strcmp(k, "--data")) a->data = v;
        else if (!strcmp(k, "--device")) {
            if (!strcmp(v, "cpu")) a->dev = QT_CPU;
            else if (!strcmp(v, "cuda")) a->dev = QT_CUDA;
            else return fprintf(stderr, "qtrain %s: --device must be cpu or cuda, got '%s'\n", cmd, v), 2;
        } else if (!strcmp(k, "--dtype")) {
            if (!strcmp(v, "f32")) a->dtype = QT_F32;
            else if (!strcmp(v, "bf16")) a->dtype = QT_BF16;
            else if (!strcmp(v, "f16")) a->dtype = QT_F16;
            else return fprintf(stderr, "qtrain %s: --dtype must be f32, bf16 or f16, got '%s'\n", cmd, v), 2;
        } else if (!strcmp(k, "--max-new")) a->max_new = (int)strtol(v, &end, 10);
        else if (!strcmp(k, "--seq-len")) a->seq_len = (int)strtol(v, &end, 10);
        else if (!strcmp(k, "--top-k")) a->top_k = (int)strtol(v, &end, 10);
        else if (!strcmp(k, "--seed")) a->seed = strtoull(v, &end, 10);
        else if (!strcmp(k, "--temperature")) a->temperature = strtod(v, &end);
        else if (!strcmp(k, "--top-p")) a->top_p = strtod(v, &end);
        else return fprintf(stderr, "qtrain %s: unknown option '%s'\n", cmd, k), 2;
        if (end && (*end || end == v))
            return fprintf(stderr, "qtrain %s: %s expects a number, got '%s'\n", cmd, k, v), 2;
    }
    if (!a->model) return fprintf(stderr, "qtrain %s: --model DIR is required\n", cmd), 2;
    if (a->max_new < 0 || a->seq_len < 2 || a->temperature < 0 || a->top_p <= 0 || a->top_p > 1 || a->top_k < 0)
        return fprintf(stderr, "qtrain %s: out-of-range option (max-new >= 0, seq-len >= 2, temperature >= 0, "
                               "0 < top-p <= 1, top-k >= 0)\n", cmd), 2;
    return 0;
}

/* Context sized for inference: weights + KV cache in PERSIST, activations in STEP. */
static int open_model(const infer_args *a, qt_ctx *c, llm_model *m, int max_len, qt_err *e) {
    hf_config h;
    if (hf_config_load(&h, a->model, e) != 0) return -1;
    size_t es = qt_dtype_size(a->dtype);
    size_t params = (size_t)h.vocab_size * h.hidden_size * 2 +
                    (size_t)h.num_hidden_layers * ((size_t)h.hidden_size * (h.hidden_size * 4 + h.intermediate_size * 3));
    size_t kv = 2 * (size_t)h.num_hidden_layers * max_len * h.num_key_value_heads * h.head_dim * es;
    qt_ctx_opts o = {.dev = a->dev,
                     .persist_budget = params * es + kv + ((size_t)64 << 20),
                     .step_budget = (size_t)max_len * h.vocab_size * 8 + (size_t)max_len * h.intermediate_size * 24 +
                                    (size_t)max_len * max_len * 8 + ((size_t)256 << 20),
                     .work_budget = (size_t)h.intermediate_size * h.hidden_size * es + ((size_t)1 << 20)};
    if (qt_ctx_init(c, &o) != 0) return qt_errf(e, "cannot set up the %s context", qt_device_name(a->dev));
    llm_load_opts lo = {.dtype = a->dtype, .nf4 = a->nf4, .double_quant = true};
    if (llm_load(m, c, a->model, &lo, e) != 0) {
        qt_ctx_free(c);
        return -1;
    }
    c->grad_enabled = false;
    return 0;
}

static tok_tokenizer *open_tokenizer(const char *model, qt_err *e) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", model);
    tok_tokenizer *t = NULL;
    if (tok_load(&t, path, e) != 0) return NULL;
    return t;
}

static bool is_eos(const hf_config *h, int32_t id) {
    for (int i = 0; i < h->n_eos; i++)
        if (h->eos_token_ids[i] == id) return true;
    return false;
}

int qt_cli_generate(int argc, char **argv) {
    infer_args a;
    int rc = parse_args(argc, argv, &a, "generate");
    if (rc) return rc;
    if (!a.prompt) return fprintf(stderr, "qtrain generate: --prompt TEXT is required\n"), 2;
    qt_err e;
    tok_tokenizer *t = open_tokenizer(a.model, &e);
    if (!t) return fprintf(stderr, "qtrain generate: %s\n", e.msg), 1;
    tok_ids prompt = {0};
    if (tok_encode(t, a.prompt, strlen(a.prompt), true, &prompt, &e) != 0 || prompt.n == 0) {
        fprintf(stderr, "qtrain generate: %s\n", prompt.n ? e.msg : "the prompt encodes to no tokens");
        tok_free(t);
        return 1;
    }
    int np = (int)prompt.n, total = np + a.max_new;
    qt_ctx c;
    llm_model m;
    if (open_model(&a, &c, &m, total, &e) != 0) {
        fprintf(stderr, "qtrain generate: %s\n", e.msg);
        tok_ids_free(&prompt);
        tok_free(t);
        return 1;
    }
    llm_kv kv;
    rc = llm_kv_init(&kv, &c, &m, 1, total, &e);
    int32_t *seq = malloc(sizeof(int32_t) * (size_t)total);
    float *row = malloc(sizeof(float) * (size_t)m.cfg.vocab_size);
    QT_CHECK(seq && row, "out of host memory");
    memcpy(seq, prompt.ids, sizeof(int32_t) * (size_t)np);
    llm_sampler s = {.temperature = a.temperature, .top_p = a.top_p, .top_k = a.top_k};
    qt_rng_seed(&s.rng, a.seed);
    if (rc != 0) fprintf(stderr, "qtrain generate: %s\n", e.msg);
    fputs(a.prompt, stdout);
    fflush(stdout);
    size_t shown = 0;
    char *base = tok_decode(t, seq, (size_t)np, true, &shown);
    int n = np;
    for (int i = 0; rc == 0 && i < a.max_new; i++) {
        qt_ctx_step_reset(&c);
        int first = i == 0 ? 0 : n - 1, len = i == 0 ? np : 1;
        int64_t sh[1] = {len};
        qt_tensor *ids = qt_empty(&c, QT_STEP, QT_I32, 1, sh);
        qt_upload(ids, seq + first, QT_I32);
        qt_tensor *logits = llm_forward_kv(&c, &m, &kv, ids, len);
        qt_tensor last = qt_tensor_over((char *)logits->data + (size_t)(len - 1) * m.cfg.vocab_size * qt_dtype_size(logits->dtype),
                                        logits->dtype, logits->dev, 1, &logits->shape[1]);
        qt_download(&last, row, QT_F32);
        int32_t tok = llm_sample(&s, row, m.cfg.vocab_size);
        if (is_eos(&m.cfg, tok)) break;
        seq[n++] = tok;
        /* Print the decoded text's new suffix: multi-byte characters appear once complete. */
        size_t len_all = 0;
        char *text = tok_decode(t, seq, (size_t)n, true, &len_all);
        if (text && len_all > shown) {
            fwrite(text + shown, 1, len_all - shown, stdout);
            fflush(stdout);
            shown = len_all;
        }
        free(text);
    }
    fputc('\n', stdout);
    free(base);
    free(seq);
    free(row);
    llm_kv_free(&kv);
    llm_free(&m);
    qt_ctx_free(&c);
    tok_ids_free(&prompt);
    tok_free(t);
    return rc == 0 ? 0 : 1;
}

/* Token ids of the evaluation data: a .ids file holds whitespace-separated ids (for models
 * without a tokenizer); anything else is text, tokenized with BOS as the model would. */
static int read_eval_ids(const char *path, const char *model, tok_ids *out, qt_err *e) {
    size_t len = 0;
    char *text = ck_read_file(path, (size_t)1 << 30, &len, e);
    if (!text) return -1;
    int rc = 0;
    size_t pl = strlen(path);
    if (pl > 4 && !strcmp(path + pl - 4, ".ids")) {
        char *p = text, *end;
        for (;;) {
            long v = strtol(p, &end, 10);
            if (end == p) break;
            if (v < 0 || v > INT32_MAX) {
                rc = qt_errf(e, "%s: token id %ld out of range", path, v);
                break;
            }
            if (out->n == out->cap) {
                out->cap = out->cap ? 2 * out->cap : 4096;
                out->ids = realloc(out->ids, sizeof(int32_t) * out->cap);
                QT_CHECK(out->ids, "out of host memory");
            }
            out->ids[out->n++] = (int32_t)v;
            p = end;
        }
        while (rc == 0 && *p) {
            if (*p != ' ' && *p != '\n' && *p != '\t' && *p != '\r') {
                rc = qt_errf(e, "%s: byte %zu: expected a token id, found '%c'", path, (size_t)(p - text), *p);
                break;
            }
            p++;
        }
    } else {
        tok_tokenizer *t = open_tokenizer(model, e);
        rc = t ? tok_encode(t, text, len, true, out, e) : -1;
        tok_free(t);
    }
    free(text);
    return rc;
}

int qt_cli_eval(int argc, char **argv) {
    infer_args a;
    int rc = parse_args(argc, argv, &a, "eval");
    if (rc) return rc;
    if (!a.data) return fprintf(stderr, "qtrain eval: --data FILE is required (text, or .ids token ids)\n"), 2;
    qt_err e;
    tok_ids ids = {0};
    if (read_eval_ids(a.data, a.model, &ids, &e) != 0) return fprintf(stderr, "qtrain eval: %s\n", e.msg), 1;
    if (ids.n < 2) return fprintf(stderr, "qtrain eval: %s holds fewer than 2 tokens\n", a.data), 1;
    qt_ctx c;
    llm_model m;
    if (open_model(&a, &c, &m, a.seq_len, &e) != 0) {
        fprintf(stderr, "qtrain eval: %s\n", e.msg);
        tok_ids_free(&ids);
        return 1;
    }
    /* Non-overlapping windows of seq_len tokens; each predicts its own tokens 2..T (HF's
     * loss on a window). NLL is summed over all predicted tokens. */
    double nll = 0;
    int64_t count = 0;
    int32_t *labels = malloc(sizeof(int32_t) * (size_t)a.seq_len);
    for (size_t off = 0; off + 1 < ids.n; off += (size_t)a.seq_len) {
        int T = (int)(ids.n - off < (size_t)a.seq_len ? ids.n - off : (size_t)a.seq_len);
        if (T < 2) break;
        for (int j = 0; j < T; j++) {
            labels[j] = ids.ids[off + j];
            if (labels[j] >= m.cfg.vocab_size) {
                fprintf(stderr, "qtrain eval: token id %d is outside the model's vocabulary of %d\n", labels[j],
                        m.cfg.vocab_size);
                rc = 1;
            }
        }
        if (rc) break;
        qt_ctx_step_reset(&c);
        int64_t sh[1] = {T};
        qt_tensor *x = qt_empty(&c, QT_STEP, QT_I32, 1, sh);
        qt_upload(x, ids.ids + off, QT_I32);
        float lv;
        qt_download(llm_loss(&c, &m, x, labels, 1, T), &lv, QT_F32);
        nll += (double)lv * (T - 1);
        count += T - 1;
    }
    if (rc == 0)
        printf("tokens %lld  mean NLL %.6f  perplexity %.4f  (windows of %d tokens, %s %s)\n", (long long)count,
               nll / (double)count, exp(nll / (double)count), a.seq_len, qt_device_name(a.dev), qt_dtype_name(a.dtype));
    free(labels);
    llm_free(&m);
    qt_ctx_free(&c);
    tok_ids_free(&ids);
    return rc;
}
