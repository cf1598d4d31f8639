/* Tokenizer metadata for GGUF (shared/specs/gguf.md section 8) from a Hugging Face
 * tokenizer.json (+ tokenizer_config.json, chat_template.jinja), the way
 * convert_hf_to_gguf.py exports it:
 *   byte-level BPE (Llama 3, Qwen2, GPT-2 style)  -> tokenizer.ggml.model "gpt2": tokens,
 *       token_type, merges, and the pre-tokenizer id recognised from the Split regex;
 *   sentencepiece-style BPE (Llama 2, Mistral 7B)  -> "llama": tokens, token_type, scores.
 * llama.cpp's SPM tokenizer merges the adjacent pair whose result has the highest score, so
 * score(t) = -(rank of the first merge producing t) reproduces the BPE merge order.
 * The token array always has config vocab_size entries (llama.cpp requires it to equal the
 * embedding rows): ids the tokenizer does not define become "[PAD<id>]", type unused. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints.h"

enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

static const char LLAMA3_RE[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}"
                                "\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char QWEN2_RE[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}"
                               "\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

typedef struct vocab {
    const char *path;
    int n;              /* = config vocab_size */
    char **tok;         /* [n], NULL where undefined */
    int32_t *type;      /* [n] */
    float *score;       /* [n] */
    int32_t *sorted;    /* ids by token text (find_id) */
    bool spm;
    qt_err *e;
} vocab;

/* Depth-first search of a pre-tokenizer / normalizer tree for an object of `type`. */
static const cJSON *find_type(const cJSON *node, const char *type) {
    if (!node || cJSON_IsNull(node)) return NULL;
    if (cJSON_IsObject(node)) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(node, "type");
        if (cJSON_IsString(t) && !strcmp(t->valuestring, type)) return node;
    }
    const cJSON *c;
    cJSON_ArrayForEach(c, node) {
        const cJSON *r = find_type(c, type);
        if (r) return r;
    }
    return NULL;
}

static int set_token(vocab *v, long id, const char *s, const char *where) {
    if (id < 0 || id >= v->n)
        return qt_errf(v->e, "%s: %s token '%.60s' has id %ld, outside the model's vocab_size %d (config.json); the "
                             "tokenizer does not belong to this model", v->path, where, s, id, v->n);
    free(v->tok[id]);
    v->tok[id] = strdup(s);
    QT_CHECK(v->tok[id], "out of host memory");
    return 0;
}

static const vocab *g_sort_vocab; /* qsort has no context argument */
static int cmp_id(const void *a, const void *b) {
    return strcmp(g_sort_vocab->tok[*(const int32_t *)a], g_sort_vocab->tok[*(const int32_t *)b]);
}

/* ids sorted by token text, for find_id; call once every token is set */
static void build_index(vocab *v) {
    v->sorted = malloc((size_t)v->n * sizeof *v->sorted);
    QT_CHECK(v->sorted, "out of host memory");
    for (int i = 0; i < v->n; i++) v->sorted[i] = i;
    g_sort_vocab = v;
    qsort(v->sorted, (size_t)v->n, sizeof *v->sorted, cmp_id);
}

/* the id of a token text (the lowest id when the text appears twice), or -1 */
static int32_t find_id(const vocab *v, const char *s) {
    int lo = 0, hi = v->n;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (strcmp(v->tok[v->sorted[mid]], s) < 0) lo = mid + 1;
        else hi = mid;
    }
    int32_t best = -1;
    for (int i = lo; i < v->n && !strcmp(v->tok[v->sorted[i]], s); i++)
        if (best < 0 || v->sorted[i] < best) best = v->sorted[i];
    return best;
}

/* tokenizer_config.json's "bos_token": "..." or {"content": "..."} (AddedToken form) */
static const char *special_content(const cJSON *tc, const char *key) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(tc, key);
    if (cJSON_IsObject(x)) x = cJSON_GetObjectItemCaseSensitive(x, "content");
    return cJSON_IsString(x) ? x->valuestring : NULL;
}

/* a into m at *o, a literal space written as U+0120 (what the converter does for [a, b] pairs) */
static void append_part(char *m, size_t *o, const char *a) {
    for (; *a; a++) {
        if (*a == ' ') m[(*o)++] = (char)0xC4, m[(*o)++] = (char)0xA0;
        else m[(*o)++] = *a;
    }
}

/* merges: "a b" strings, or [a, b] pairs */
static char **read_merges(vocab *v, const cJSON *merges, int *count) {
    int n = cJSON_GetArraySize(merges);
    char **m = calloc((size_t)n + 1, sizeof *m);
    QT_CHECK(m, "out of host memory");
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, merges) {
        const cJSON *a = cJSON_GetArrayItem(it, 0), *b = cJSON_GetArrayItem(it, 1);
        if (cJSON_IsString(it)) {
            m[i] = strdup(it->valuestring);
            QT_CHECK(m[i], "out of host memory");
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 && cJSON_IsString(a) && cJSON_IsString(b)) {
            size_t o = 0;
            m[i] = malloc(2 * (strlen(a->valuestring) + strlen(b->valuestring)) + 2);
            QT_CHECK(m[i], "out of host memory");
            append_part(m[i], &o, a->valuestring);
            m[i][o++] = ' ';
            append_part(m[i], &o, b->valuestring);
            m[i][o] = 0;
        } else {
            *count = i;
            qt_errf(v->e, "%s: model.merges[%d] is neither \"a b\" nor [\"a\", \"b\"]", v->path, i);
            return m;
        }
        i++;
    }
    *count = n;
    return m;
}

static void free_strs(char **s, int n) {
    if (!s) return;
    for (int i = 0; i < n; i++) free(s[i]);
    free(s);
}

/* SPM scores from the merge ranks: the merged token of rank r gets -r (its first merge wins);
 * normal tokens no merge produces rank below every merge (sentencepiece gives pieces the
 * same order: single characters and unreachable pieces score lowest); special, byte and
 * unknown tokens 0, added ones -1000, padding -10000 (they never win a bigram in llama.cpp). */
static void spm_scores(vocab *v, char **merges, int n_merges) {
    for (int i = 0; i < v->n; i++) {
        int32_t t = v->type[i];
        v->score[i] = t == TT_NORMAL ? -(float)n_merges - (float)i : t == TT_USER ? -1000.0f : t == TT_UNUSED ? -10000.0f : 0.0f;
    }
    for (int r = n_merges - 1; r >= 0; r--) {
        char *sp = strchr(merges[r], ' ');
        if (!sp) continue;
        size_t la = (size_t)(sp - merges[r]);
        char *joined = malloc(strlen(merges[r]));
        QT_CHECK(joined, "out of host memory");
        memcpy(joined, merges[r], la);
        strcpy(joined + la, sp + 1);
        int32_t id = find_id(v, joined);
        if (id >= 0 && v->type[id] == TT_NORMAL) v->score[id] = -(float)r;
        free(joined);
    }
}

static char *read_text(const char *path, size_t max, qt_err *e) {
    return ck_read_file(path, max, NULL, e);
}

static void set_templates(gguf_writer *w, const cJSON *tc, const char *model_dir) {
    const cJSON *ct = tc ? cJSON_GetObjectItemCaseSensitive(tc, "chat_template") : NULL;
    if (cJSON_IsString(ct)) {
        gguf_set_str(w, "tokenizer.chat_template", ct->valuestring);
        return;
    }
    if (cJSON_IsArray(ct)) { /* [{"name": "default", "template": "..."}, {"name": "tool_use", ...}] */
        const cJSON *it;
        cJSON_ArrayForEach(it, ct) {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(it, "name");
            const cJSON *tmpl = cJSON_GetObjectItemCaseSensitive(it, "template");
            if (!cJSON_IsString(name) || !cJSON_IsString(tmpl)) continue;
            char k[256];
            if (!strcmp(name->valuestring, "default")) snprintf(k, sizeof k, "tokenizer.chat_template");
            else snprintf(k, sizeof k, "tokenizer.chat_template.%.200s", name->valuestring);
            gguf_set_str(w, k, tmpl->valuestring);
        }
        return;
    }
    /* transformers >= 4.43 may keep it in its own file */
    if (model_dir) {
        char p[4200];
        qt_err ignore;
        snprintf(p, sizeof p, "%s/chat_template.jinja", model_dir);
        char *s = read_text(p, 1u << 24, &ignore);
        if (s) gguf_set_str(w, "tokenizer.chat_template", s);
        free(s);
    }
}

static const char *pre_name(const cJSON *root, bool *known) {
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    const cJSON *split = find_type(pre, "Split");
    *known = true;
    if (split) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(split, "pattern");
        const cJSON *re = pat ? cJSON_GetObjectItemCaseSensitive(pat, "Regex") : NULL;
        if (cJSON_IsString(re) && !strcmp(re->valuestring, LLAMA3_RE)) return "llama-bpe";
        if (cJSON_IsString(re) && !strcmp(re->valuestring, QWEN2_RE)) return "qwen2";
        *known = false;
        return NULL;
    }
    const cJSON *bl = find_type(pre, "ByteLevel");
    const cJSON *ur = bl ? cJSON_GetObjectItemCaseSensitive(bl, "use_regex") : NULL;
    if (bl && !cJSON_IsFalse(ur)) return "gpt-2";
    *known = false;
    return NULL;
}

/* HF's TemplateProcessing post-processor ("single": [{"SpecialToken": ...}, {"Sequence": ...}, ...])
 * says whether encoding adds BOS / EOS; converters use it when tokenizer_config.json has no
 * add_bos_token (Llama 3). -1 unknown, else 0/1 for the first (bos) or last (eos) item. */
static int template_adds(const cJSON *root, bool last) {
    const cJSON *tp = find_type(cJSON_GetObjectItemCaseSensitive(root, "post_processor"), "TemplateProcessing");
    const cJSON *single = tp ? cJSON_GetObjectItemCaseSensitive(tp, "single") : NULL;
    int n = cJSON_GetArraySize(single);
    if (!cJSON_IsArray(single) || n == 0) return -1;
    return cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(single, last ? n - 1 : 0), "SpecialToken") != NULL;
}

static cJSON *read_json(const char *path, bool optional, qt_err *e) {
    qt_err ignore;
    char *s = read_text(path, 256u << 20, optional ? &ignore : e);
    if (!s) return NULL;
    cJSON *j = cJSON_Parse(s);
    free(s);
    if (!j) qt_errf(e, "%s: not valid JSON; fix or remove the file", path);
    return j;
}

int gguf_set_tokenizer(gguf_writer *w, const char *tokenizer_json, const char *model_dir, const hf_config *cfg,
                       qt_err *e) {
    e->msg[0] = 0;
    cJSON *root = read_json(tokenizer_json, false, e), *tc = NULL;
    if (!root) return -1;
    if (model_dir) {
        char p[4200];
        snprintf(p, sizeof p, "%s/tokenizer_config.json", model_dir);
        tc = read_json(p, true, e);
        if (!tc && e->msg[0]) {
            cJSON_Delete(root);
            return -1;
        }
    }
    vocab v = {.path = tokenizer_json, .n = cfg->vocab_size, .e = e};
    v.tok = calloc((size_t)v.n, sizeof *v.tok);
    v.type = calloc((size_t)v.n, sizeof *v.type);
    v.score = calloc((size_t)v.n, sizeof *v.score);
    QT_CHECK(v.tok && v.type && v.score, "out of host memory");
    char **merges = NULL;
    int n_merges = 0, rc = 0;

    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *mtype = model ? cJSON_GetObjectItemCaseSensitive(model, "type") : NULL;
    const cJSON *vmap = model ? cJSON_GetObjectItemCaseSensitive(model, "vocab") : NULL;
    const cJSON *mm = model ? cJSON_GetObjectItemCaseSensitive(model, "merges") : NULL;
    if (mtype && !(cJSON_IsString(mtype) && !strcmp(mtype->valuestring, "BPE"))) {
        rc = qt_errf(e, "%s: tokenizer model type '%s' is not supported for GGUF export (BPE tokenizers only: "
                        "Llama 2/3, Mistral, Qwen2)", tokenizer_json,
                     cJSON_IsString(mtype) ? mtype->valuestring : "?");
        goto done;
    }
    if (!cJSON_IsObject(vmap) || !cJSON_IsArray(mm)) {
        rc = qt_errf(e, "%s: needs model.vocab (an object) and model.merges (a list) of a BPE tokenizer",
                     tokenizer_json);
        goto done;
    }
    /* byte-level BPE has a ByteLevel pre-tokenizer or decoder; SPM-style BPE has byte
     * fallback and/or the ▁ space marker (Metaspace, or a Prepend normalizer) */
    const cJSON *bf = cJSON_GetObjectItemCaseSensitive(model, "byte_fallback");
    bool bytelevel = find_type(cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), "ByteLevel") ||
                     find_type(cJSON_GetObjectItemCaseSensitive(root, "decoder"), "ByteLevel");
    v.spm = !bytelevel && (cJSON_IsTrue(bf) || find_type(root, "Metaspace") ||
                           find_type(cJSON_GetObjectItemCaseSensitive(root, "normalizer"), "Prepend"));
    if (!bytelevel && !v.spm) {
        rc = qt_errf(e, "%s: neither byte-level BPE (ByteLevel pre-tokenizer) nor sentencepiece-style BPE "
                        "(byte_fallback / Metaspace); qtrain cannot describe it to llama.cpp", tokenizer_json);
        goto done;
    }

    /* texts and types: vocab, then added tokens over it, then padding for undefined ids */
    const cJSON *it;
    cJSON_ArrayForEach(it, vmap) {
        /* magnitude first: converting a double outside long's range is undefined */
        if (!cJSON_IsNumber(it) || !(fabs(it->valuedouble) < 1e18) || it->valuedouble != (double)(long)it->valuedouble) {
            rc = qt_errf(e, "%s: model.vocab['%.60s'] is not an integer id", tokenizer_json, it->string);
            goto done;
        }
        long id = (long)it->valuedouble;
        if ((rc = set_token(&v, id, it->string, "vocab"))) goto done;
        const char *t = it->string;
        v.type[id] = v.spm && strlen(t) == 6 && !strncmp(t, "<0x", 3) && t[5] == '>' ? TT_BYTE : TT_NORMAL;
    }
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(root, "added_tokens")) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        const cJSON *special = cJSON_GetObjectItemCaseSensitive(it, "special");
        if (!cJSON_IsNumber(id) || !(fabs(id->valuedouble) < 1e18) || !cJSON_IsString(content)) {
            rc = qt_errf(e, "%s: an added_tokens entry lacks an integer 'id' or a string 'content'", tokenizer_json);
            goto done;
        }
        if ((rc = set_token(&v, (long)id->valuedouble, content->valuestring, "added"))) goto done;
        const char *s = content->valuestring;
        size_t len = strlen(s);
        bool looks = len >= 4 && !strncmp(s, "<|", 2) && !strcmp(s + len - 2, "|>");
        v.type[(long)id->valuedouble] = cJSON_IsTrue(special) || looks ? TT_CONTROL : TT_USER;
    }
    for (int i = 0; i < v.n; i++)
        if (!v.tok[i]) {
            char pad[32];
            snprintf(pad, sizeof pad, "[PAD%d]", i);
            v.tok[i] = strdup(pad);
            QT_CHECK(v.tok[i], "out of host memory");
            v.type[i] = TT_UNUSED;
        }
    build_index(&v);
    if (v.spm) {
        const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
        int32_t id = cJSON_IsString(unk) ? find_id(&v, unk->valuestring) : -1;
        if (id >= 0) v.type[id] = TT_UNKNOWN;
    }
    merges = read_merges(&v, mm, &n_merges);
    if (n_merges != cJSON_GetArraySize(mm)) {
        rc = -1;
        goto done;
    }

    /* special ids: tokenizer_config.json's token texts first, then config.json's single ids */
    static const struct { const char *cfg_key, *gguf_key; } specials[] = {
        {"bos_token", "tokenizer.ggml.bos_token_id"},
        {"eos_token", "tokenizer.ggml.eos_token_id"},
        {"unk_token", "tokenizer.ggml.unknown_token_id"},
        {"pad_token", "tokenizer.ggml.padding_token_id"},
    };
    int32_t ids[4];
    for (int k = 0; k < 4; k++) {
        const char *content = tc ? special_content(tc, specials[k].cfg_key) : NULL;
        ids[k] = content ? find_id(&v, content) : -1;
    }
    if (ids[0] < 0) ids[0] = cfg->bos_token_id;
    if (ids[1] < 0 && cfg->n_eos == 1) ids[1] = cfg->eos_token_ids[0];
    const cJSON *ab = tc ? cJSON_GetObjectItemCaseSensitive(tc, "add_bos_token") : NULL;
    const cJSON *ae = tc ? cJSON_GetObjectItemCaseSensitive(tc, "add_eos_token") : NULL;
    int add_bos = cJSON_IsBool(ab) ? cJSON_IsTrue(ab) : template_adds(root, false);
    int add_eos = cJSON_IsBool(ae) ? cJSON_IsTrue(ae) : template_adds(root, true);

    /* everything checked: write */
    gguf_set_str(w, "tokenizer.ggml.model", v.spm ? "llama" : "gpt2");
    if (v.spm) {
        gguf_set_str(w, "tokenizer.ggml.pre", "default");
    } else {
        bool known;
        const char *pre = pre_name(root, &known);
        if (pre) gguf_set_str(w, "tokenizer.ggml.pre", pre);
        else
            fprintf(stderr, "qtrain: warning: %s: pre-tokenizer not recognised (qtrain names the Llama 3, Qwen2 and "
                            "GPT-2 ones); tokenizer.ggml.pre is left out and llama.cpp will split text with its "
                            "default rules\n", tokenizer_json);
    }
    gguf_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v.tok, (uint64_t)v.n);
    if (v.spm) {
        spm_scores(&v, merges, n_merges);
        gguf_set_arr(w, "tokenizer.ggml.scores", GGUF_F32, v.score, (uint64_t)v.n);
    }
    gguf_set_arr(w, "tokenizer.ggml.token_type", GGUF_I32, v.type, (uint64_t)v.n);
    if (!v.spm) gguf_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)merges, (uint64_t)n_merges);
    for (int k = 0; k < 4; k++)
        if (ids[k] >= 0 && ids[k] < v.n) gguf_set_u32(w, specials[k].gguf_key, (uint32_t)ids[k]);
    if (add_bos >= 0) gguf_set_bool(w, "tokenizer.ggml.add_bos_token", add_bos);
    if (add_eos >= 0) gguf_set_bool(w, "tokenizer.ggml.add_eos_token", add_eos);
    if (v.spm) {
        const cJSON *ms = find_type(root, "Metaspace");
        const cJSON *scheme = ms ? cJSON_GetObjectItemCaseSensitive(ms, "prepend_scheme") : NULL;
        bool prefix = find_type(cJSON_GetObjectItemCaseSensitive(root, "normalizer"), "Prepend") ||
                      (ms && !(cJSON_IsString(scheme) && !strcmp(scheme->valuestring, "never")));
        gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", prefix);
    }
    set_templates(w, tc, model_dir);
done:
    cJSON_Delete(tc);
    cJSON_Delete(root);
    free_strs(v.tok, v.n);
    free(v.type);
    free(v.score);
    free(v.sorted);
    free_strs(merges, n_merges);
    return rc;
}
