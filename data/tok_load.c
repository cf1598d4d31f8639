/* Reading tokenizer.json into a tok_tokenizer.
 *
 * Every value read from the file is checked for type and size before it is used: a bad
 * file gives one line naming the file, the key path and what was expected. Sections are
 * read in dependency order: the model (vocab, merges), then the normalizer (added tokens
 * marked "normalized" are matched in normalized text, so their patterns go through it),
 * pre-tokenizer, post-processor and decoder, and last the added tokens, whose ids HF
 * assigns from the model vocabulary. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "tok_internal.h"

#define MAX_DEPTH 8   /* nested Sequence normalizers / pre-tokenizers / decoders */
#define MAX_STEPS 64  /* steps after flattening sequences */
#define MAX_TEMPLATE 256

uint32_t tok_pool_add(tok_tokenizer *t, const char *s, size_t n) {
    QT_CHECK(t->pool.n + n + 1 < UINT32_MAX, "tokenizer string pool over 4 GiB");
    uint32_t off = (uint32_t)t->pool.n;
    tok_buf_put(&t->pool, s, n);
    t->pool.n++; /* keep the NUL: pool strings are C strings too */
    return off;
}

/* ------------------------------------------------------------------ JSON access */

static const cJSON *get(const cJSON *o, const char *key) {
    return cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
}

static bool is_null(const cJSON *v) { return !v || cJSON_IsNull(v); }

/* A string member; NULL with e set when required and missing or not a short valid string. */
static const char *get_str(const tok_tokenizer *t, const cJSON *o, const char *key, const char *where,
                           bool required, qt_err *e) {
    const cJSON *v = get(o, key);
    if (is_null(v)) {
        if (required) qt_errf(e, "%s: %s.%s is missing (expected a string)", t->name, where, key);
        return NULL;
    }
    if (!cJSON_IsString(v)) {
        qt_errf(e, "%s: %s.%s must be a string", t->name, where, key);
        return NULL;
    }
    size_t n = strlen(v->valuestring);
    if (n > TOK_MAX_REGEX_BYTES || tok_utf8_check(v->valuestring, n) != n) {
        qt_errf(e, "%s: %s.%s is longer than %d bytes or not valid UTF-8", t->name, where, key,
                TOK_MAX_REGEX_BYTES);
        return NULL;
    }
    return v->valuestring;
}

static int get_bool(const tok_tokenizer *t, const cJSON *o, const char *key, const char *where, bool def,
                    bool *out, qt_err *e) {
    const cJSON *v = get(o, key);
    *out = def;
    if (is_null(v)) return 0;
    if (!cJSON_IsBool(v)) return qt_errf(e, "%s: %s.%s must be true or false", t->name, where, key);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* An integer in [lo, hi]. */
static int get_int(const tok_tokenizer *t, const cJSON *v, const char *where, long lo, long hi, long *out,
                   qt_err *e) {
    *out = 0;
    /* range first: converting a double outside long's range is undefined */
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi) ||
        v->valuedouble != (double)(long)v->valuedouble)
        return qt_errf(e, "%s: %s must be an integer in [%ld, %ld]", t->name, where, lo, hi);
    *out = (long)v->valuedouble;
    return 0;
}

/* {"String": "..."} or {"Regex": "..."}: the literal in *lit (or the compiled regex in *re). */
static int get_pattern(tok_tokenizer *t, const cJSON *o, const char *where, bool want_regex, pcre2_code **re,
                       uint32_t *lit_off, uint32_t *lit_len, qt_err *e) {
    const cJSON *p = get(o, "pattern");
    const char *s = get_str(t, p, "String", where, false, e);
    bool literal = s != NULL;
    if (!s) s = get_str(t, p, "Regex", where, false, e);
    if (!s)
        return qt_errf(e, "%s: %s.pattern must be {\"String\": ...} or {\"Regex\": ...}", t->name, where);
    size_t n = strlen(s);
    if (n == 0) return qt_errf(e, "%s: %s.pattern is empty", t->name, where);
    *re = NULL;
    if (!literal || want_regex) {
        *re = tok_compile(t, where, s, n, literal, e);
        if (!*re) return -1;
    } else {
        *lit_off = tok_pool_add(t, s, n);
        *lit_len = (uint32_t)n;
    }
    return 0;
}

/* A one-character string (Metaspace replacement, Strip content) into buf. */
static int get_char(const tok_tokenizer *t, const cJSON *o, const char *key, const char *where, char *buf,
                    int *len, qt_err *e) {
    const char *s = get_str(t, o, key, where, true, e);
    if (!s) return -1;
    int l = tok_utf8_len((const unsigned char *)s, strlen(s));
    if (!l || s[l] != 0) return qt_errf(e, "%s: %s.%s must be exactly one character", t->name, where, key);
    memcpy(buf, s, (size_t)l);
    *len = l;
    return 0;
}

/* ------------------------------------------------------------------ model */

static int add_vocab(tok_tokenizer *t, const char *s, int32_t id, const char *where, qt_err *e) {
    size_t n = strlen(s);
    if (n > TOK_MAX_TOKEN_BYTES) return qt_errf(e, "%s: %s: a token is longer than %d bytes", t->name, where, TOK_MAX_TOKEN_BYTES);
    if (tok_utf8_check(s, n) != n) return qt_errf(e, "%s: %s: token with id %d is not valid UTF-8", t->name, where, id);
    if (t->id_len[id] != UINT32_MAX)
        return qt_errf(e, "%s: %s: id %d is given to two tokens (\"%.40s\" and \"%.40s\"); ids must be unique",
                       t->name, where, id, t->pool.p + t->id_off[id], s);
    uint32_t off = tok_pool_add(t, s, n);
    t->id_off[id] = off;
    t->id_len[id] = (uint32_t)n;
    tok_map_put(&t->bpe.vocab, t->pool.p, off, (uint32_t)n, id);
    return 0;
}

static int parse_merges(tok_tokenizer *t, const cJSON *merges, qt_err *e) {
    tok_bpe *m = &t->bpe;
    int n = cJSON_GetArraySize(merges);
    if (n > TOK_MAX_IDS) return qt_errf(e, "%s: model.merges has %d entries (at most %d)", t->name, n, TOK_MAX_IDS);
    tok_merges_init(&m->merges, (size_t)n);
    tok_buf cat = {0};
    int i = 0, rc = 0;
    for (const cJSON *it = merges->child; it; it = it->next, i++) {
        const char *a = NULL, *b = NULL;
        size_t la = 0, lb = 0;
        if (cJSON_IsString(it)) { /* "a b": split at the first space, as HF does */
            a = it->valuestring;
            const char *sp = strchr(a, ' ');
            if (sp) {
                la = (size_t)(sp - a);
                b = sp + 1;
                lb = strlen(b);
            }
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 && cJSON_IsString(it->child) &&
                   cJSON_IsString(it->child->next)) {
            a = it->child->valuestring;
            la = strlen(a);
            b = it->child->next->valuestring;
            lb = strlen(b);
        }
        if (!b) {
            rc = qt_errf(e, "%s: model.merges[%d] must be \"left right\" or [\"left\", \"right\"]", t->name, i);
            break;
        }
        if (la > TOK_MAX_TOKEN_BYTES || lb > TOK_MAX_TOKEN_BYTES) {
            rc = qt_errf(e, "%s: model.merges[%d] has a part longer than %d bytes", t->name, i, TOK_MAX_TOKEN_BYTES);
            break;
        }
        int32_t ia = tok_map_get(&m->vocab, t->pool.p, a, la), ib = tok_map_get(&m->vocab, t->pool.p, b, lb);
        size_t skip = m->has_prefix && lb >= m->prefix_len ? m->prefix_len : 0;
        cat.n = 0;
        tok_buf_put(&cat, a, la);
        tok_buf_put(&cat, b + skip, lb - skip);
        int32_t inew = tok_map_get(&m->vocab, t->pool.p, cat.p, cat.n);
        if (ia < 0 || ib < 0 || inew < 0) {
            rc = qt_errf(e, "%s: model.merges[%d] (\"%.*s\" + \"%.*s\"): %s is not in model.vocab", t->name, i,
                         (int)(la > 60 ? 60 : la), a, (int)(lb > 60 ? 60 : lb), b,
                         ia < 0 ? "the left part" : ib < 0 ? "the right part" : "the merged token");
            break;
        }
        tok_merges_put(&m->merges, ia, ib, (uint32_t)i, inew);
    }
    tok_buf_free(&cat);
    return rc;
}

static int parse_model(tok_tokenizer *t, const cJSON *model, qt_err *e) {
    tok_bpe *m = &t->bpe;
    if (!cJSON_IsObject(model)) return qt_errf(e, "%s: \"model\" is missing or not an object", t->name);
    const char *type = get_str(t, model, "type", "model", false, e);
    if (type && strcmp(type, "BPE") != 0)
        return qt_errf(e, "%s: model.type is \"%s\"; qtrain reads BPE tokenizers only (Llama, Mistral, Qwen, "
                          "GPT-2 families)",
                       t->name, type);
    const cJSON *vocab = get(model, "vocab"), *merges = get(model, "merges");
    if (!type && !cJSON_IsArray(merges))
        return qt_errf(e, "%s: model has no \"type\" and no \"merges\"; expected a BPE model", t->name);
    if (!cJSON_IsObject(vocab)) return qt_errf(e, "%s: model.vocab must be an object {token: id}", t->name);
    if (!is_null(merges) && !cJSON_IsArray(merges)) return qt_errf(e, "%s: model.merges must be an array", t->name);
    const cJSON *drop = get(model, "dropout");
    if (!is_null(drop) && !(cJSON_IsNumber(drop) && drop->valuedouble == 0))
        return qt_errf(e, "%s: model.dropout is set; BPE dropout is a training-time augmentation qtrain does "
                          "not apply (set it to null)",
                       t->name);
    if (get_bool(t, model, "fuse_unk", "model", false, &m->fuse_unk, e) ||
        get_bool(t, model, "byte_fallback", "model", false, &m->byte_fallback, e) ||
        get_bool(t, model, "ignore_merges", "model", false, &m->ignore_merges, e))
        return -1;
    const char *pre = get_str(t, model, "continuing_subword_prefix", "model", false, e);
    const char *suf = get_str(t, model, "end_of_word_suffix", "model", false, e);
    const char *unk = get_str(t, model, "unk_token", "model", false, e);
    if (e->msg[0]) return -1;
    if (pre) {
        m->has_prefix = true;
        m->prefix_len = (uint32_t)strlen(pre);
        m->prefix_off = tok_pool_add(t, pre, m->prefix_len);
    }
    if (suf) {
        m->has_suffix = true;
        m->suffix_len = (uint32_t)strlen(suf);
        m->suffix_off = tok_pool_add(t, suf, m->suffix_len);
    }

    int n = cJSON_GetArraySize(vocab);
    if (n > TOK_MAX_IDS) return qt_errf(e, "%s: model.vocab has %d entries (at most %d)", t->name, n, TOK_MAX_IDS);
    long max_id = -1;
    for (const cJSON *it = vocab->child; it; it = it->next) {
        long id;
        char where[64];
        snprintf(where, sizeof where, "model.vocab[\"%.24s\"]", it->string);
        if (get_int(t, it, where, 0, TOK_MAX_IDS - 1, &id, e)) return -1;
        if (id > max_id) max_id = id;
    }
    /* room for added tokens past the model's ids; grown when they come */
    t->n_ids = (int32_t)(max_id + 1);
    t->id_off = tok_xrealloc(NULL, ((size_t)t->n_ids + 1) * sizeof *t->id_off);
    t->id_len = tok_xrealloc(NULL, ((size_t)t->n_ids + 1) * sizeof *t->id_len);
    memset(t->id_len, 0xFF, ((size_t)t->n_ids + 1) * sizeof *t->id_len);
    tok_map_init(&m->vocab, (size_t)n);
    for (const cJSON *it = vocab->child; it; it = it->next)
        if (add_vocab(t, it->string, (int32_t)it->valuedouble, "model.vocab", e)) return -1;
    m->vocab_count = m->vocab.count;

    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        m->byte_ids[b] = tok_map_get(&m->vocab, t->pool.p, name, 6);
    }
    m->unk_id = unk ? tok_map_get(&m->vocab, t->pool.p, unk, strlen(unk)) : -1;
    if (unk && m->unk_id < 0) m->unk_id = -2; /* HF fails only when the unk token is needed */
    return is_null(merges) ? 0 : parse_merges(t, merges, e);
}

/* ------------------------------------------------------------------ pipeline sections */

#define PUSH_STEP(arr, n, T)                                                                              \
    ((n) >= MAX_STEPS ? NULL                                                                               \
                      : ((arr) = tok_xrealloc((arr), ((n) + 1) * sizeof(T)), memset(&(arr)[n], 0, sizeof(T)), \
                         &(arr)[(n)++]))

static int parse_normalizer(tok_tokenizer *t, const cJSON *j, const char *where, int depth, qt_err *e) {
    if (is_null(j)) return 0;
    const char *type = get_str(t, j, "type", where, true, e);
    if (!type) return -1;
    if (depth > MAX_DEPTH) return qt_errf(e, "%s: %s: Sequences nested deeper than %d", t->name, where, MAX_DEPTH);
    if (!strcmp(type, "Sequence")) {
        const cJSON *a = get(j, "normalizers");
        if (!cJSON_IsArray(a)) return qt_errf(e, "%s: %s.normalizers must be an array", t->name, where);
        int i = 0;
        for (const cJSON *it = a->child; it; it = it->next, i++) {
            char w[160];
            snprintf(w, sizeof w, "%.120s.normalizers[%d]", where, i);
            if (parse_normalizer(t, it, w, depth + 1, e)) return -1;
        }
        return 0;
    }
    tok_norm *s = PUSH_STEP(t->norm, t->n_norm, tok_norm);
    if (!s) return qt_errf(e, "%s: %s: more than %d normalizers", t->name, where, MAX_STEPS);
    if (!strcmp(type, "Prepend")) {
        s->kind = TN_PREPEND;
        const char *p = get_str(t, j, "prepend", where, true, e);
        if (!p) return -1;
        s->a_len = (uint32_t)strlen(p);
        s->a_off = tok_pool_add(t, p, s->a_len);
    } else if (!strcmp(type, "Replace")) {
        s->kind = TN_REPLACE;
        const char *c = get_str(t, j, "content", where, true, e);
        if (!c || get_pattern(t, j, where, false, &s->re, &s->a_off, &s->a_len, e)) return -1;
        s->b_len = (uint32_t)strlen(c);
        s->b_off = tok_pool_add(t, c, s->b_len);
    } else if (!strcmp(type, "NFC") || !strcmp(type, "NFKC")) {
        s->kind = TN_IDENTITY; /* see tokenizer.h: text is taken to be normalized already */
    } else if (!strcmp(type, "Strip")) {
        s->kind = TN_STRIP;
        if (get_bool(t, j, "strip_left", where, true, &s->left, e) ||
            get_bool(t, j, "strip_right", where, true, &s->right, e))
            return -1;
    } else if (!strcmp(type, "ByteLevel")) {
        s->kind = TN_BYTELEVEL;
    } else {
        return qt_errf(e, "%s: %s.type \"%s\" is not supported (qtrain supports Sequence, Prepend, Replace, Strip, "
                          "ByteLevel, NFC, NFKC)",
                       t->name, where, type);
    }
    return 0;
}

static const char *GPT2_RE =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int parse_metaspace_scheme(const tok_tokenizer *t, const cJSON *j, const char *where, int *scheme, qt_err *e) {
    const char *ps = get_str(t, j, "prepend_scheme", where, false, e);
    if (ps) {
        if (!strcmp(ps, "always")) *scheme = TM_ALWAYS;
        else if (!strcmp(ps, "first")) *scheme = TM_FIRST;
        else if (!strcmp(ps, "never")) *scheme = TM_NEVER;
        else return qt_errf(e, "%s: %s.prepend_scheme \"%s\" is not always/first/never", t->name, where, ps);
        return 0;
    }
    bool aps;
    if (get_bool(t, j, "add_prefix_space", where, true, &aps, e)) return -1;
    *scheme = aps ? TM_ALWAYS : TM_NEVER;
    return 0;
}

static int parse_pretok(tok_tokenizer *t, const cJSON *j, const char *where, int depth, qt_err *e) {
    if (is_null(j)) return 0;
    const char *type = get_str(t, j, "type", where, true, e);
    if (!type) return -1;
    if (depth > MAX_DEPTH) return qt_errf(e, "%s: %s: Sequences nested deeper than %d", t->name, where, MAX_DEPTH);
    if (!strcmp(type, "Sequence")) {
        const cJSON *a = get(j, "pretokenizers");
        if (!cJSON_IsArray(a)) return qt_errf(e, "%s: %s.pretokenizers must be an array", t->name, where);
        int i = 0;
        for (const cJSON *it = a->child; it; it = it->next, i++) {
            char w[160];
            snprintf(w, sizeof w, "%.120s.pretokenizers[%d]", where, i);
            if (parse_pretok(t, it, w, depth + 1, e)) return -1;
        }
        return 0;
    }
    tok_pretok *p = PUSH_STEP(t->pre, t->n_pre, tok_pretok);
    if (!p) return qt_errf(e, "%s: %s: more than %d pre-tokenizers", t->name, where, MAX_STEPS);
    p->behavior = TS_ISOLATED;
    if (!strcmp(type, "ByteLevel")) {
        p->kind = TP_BYTELEVEL;
        bool use_regex;
        if (get_bool(t, j, "add_prefix_space", where, true, &p->add_prefix_space, e) ||
            get_bool(t, j, "use_regex", where, true, &use_regex, e))
            return -1;
        if (use_regex && !(p->re = tok_compile(t, where, GPT2_RE, strlen(GPT2_RE), false, e))) return -1;
    } else if (!strcmp(type, "Split")) {
        p->kind = TP_SPLIT;
        uint32_t o, l;
        if (get_pattern(t, j, where, true, &p->re, &o, &l, e)) return -1;
        const char *b = get_str(t, j, "behavior", where, true, e);
        if (!b || get_bool(t, j, "invert", where, false, &p->invert, e)) return -1;
        static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
        p->behavior = -1;
        for (int i = 0; i < 5; i++)
            if (!strcmp(b, names[i])) p->behavior = i;
        if (p->behavior < 0)
            return qt_errf(e, "%s: %s.behavior \"%s\" is not one of Removed, Isolated, MergedWithPrevious, "
                              "MergedWithNext, Contiguous",
                           t->name, where, b);
    } else if (!strcmp(type, "Digits")) {
        bool individual;
        if (get_bool(t, j, "individual_digits", where, false, &individual, e)) return -1;
        p->kind = TP_SPLIT; /* HF: split on char::is_numeric, Isolated or Contiguous */
        p->behavior = individual ? TS_ISOLATED : TS_CONTIGUOUS;
        if (!(p->re = tok_compile(t, where, "\\p{N}", 5, false, e))) return -1;
    } else if (!strcmp(type, "Metaspace")) {
        p->kind = TP_METASPACE;
        p->behavior = TS_MERGED_NEXT;
        if (get_char(t, j, "replacement", where, p->repl, &p->repl_len, e) ||
            parse_metaspace_scheme(t, j, where, &p->scheme, e) || get_bool(t, j, "split", where, true, &p->split, e))
            return -1;
    } else {
        return qt_errf(e, "%s: %s.type \"%s\" is not supported (qtrain supports Sequence, ByteLevel, Split, "
                          "Metaspace, Digits)",
                       t->name, where, type);
    }
    return 0;
}

static int parse_decoder(tok_tokenizer *t, const cJSON *j, const char *where, int depth, qt_err *e) {
    if (is_null(j)) return 0;
    t->has_decoder = true;
    const char *type = get_str(t, j, "type", where, true, e);
    if (!type) return -1;
    if (depth > MAX_DEPTH) return qt_errf(e, "%s: %s: Sequences nested deeper than %d", t->name, where, MAX_DEPTH);
    if (!strcmp(type, "Sequence")) {
        const cJSON *a = get(j, "decoders");
        if (!cJSON_IsArray(a)) return qt_errf(e, "%s: %s.decoders must be an array", t->name, where);
        int i = 0;
        for (const cJSON *it = a->child; it; it = it->next, i++) {
            char w[160];
            snprintf(w, sizeof w, "%.120s.decoders[%d]", where, i);
            if (parse_decoder(t, it, w, depth + 1, e)) return -1;
        }
        return 0;
    }
    tok_dec *d = PUSH_STEP(t->dec, t->n_dec, tok_dec);
    if (!d) return qt_errf(e, "%s: %s: more than %d decoders", t->name, where, MAX_STEPS);
    char ch[8];
    int chl;
    if (!strcmp(type, "ByteLevel")) d->kind = TD_BYTELEVEL;
    else if (!strcmp(type, "ByteFallback")) d->kind = TD_BYTEFALLBACK;
    else if (!strcmp(type, "Fuse")) d->kind = TD_FUSE;
    else if (!strcmp(type, "Replace")) {
        d->kind = TD_REPLACE;
        const char *c = get_str(t, j, "content", where, true, e);
        if (!c || get_pattern(t, j, where, false, &d->re, &d->a_off, &d->a_len, e)) return -1;
        d->b_len = (uint32_t)strlen(c);
        d->b_off = tok_pool_add(t, c, d->b_len);
    } else if (!strcmp(type, "Strip")) {
        d->kind = TD_STRIP;
        long a, b;
        if (get_char(t, j, "content", where, ch, &chl, e) ||
            get_int(t, get(j, "start"), "decoder Strip.start", 0, 1 << 20, &a, e) ||
            get_int(t, get(j, "stop"), "decoder Strip.stop", 0, 1 << 20, &b, e))
            return -1;
        d->start = (int)a;
        d->stop = (int)b;
        d->a_off = tok_pool_add(t, ch, (size_t)chl);
        d->a_len = (uint32_t)chl;
    } else if (!strcmp(type, "Metaspace")) {
        d->kind = TD_METASPACE;
        int scheme;
        if (get_char(t, j, "replacement", where, ch, &chl, e) || parse_metaspace_scheme(t, j, where, &scheme, e))
            return -1;
        d->prepend = scheme != TM_NEVER;
        d->a_off = tok_pool_add(t, ch, (size_t)chl);
        d->a_len = (uint32_t)chl;
    } else {
        return qt_errf(e, "%s: %s.type \"%s\" is not supported (qtrain supports Sequence, ByteLevel, Replace, "
                          "ByteFallback, Fuse, Strip, Metaspace)",
                       t->name, where, type);
    }
    return 0;
}

static void post_add(tok_tokenizer *t, const int32_t *tmpl, size_t n) {
    t->post = tok_xrealloc(t->post, (t->n_post + 1) * sizeof *t->post);
    t->post_len = tok_xrealloc(t->post_len, (t->n_post + 1) * sizeof *t->post_len);
    t->post[t->n_post] = tok_xrealloc(NULL, n * sizeof **t->post);
    memcpy(t->post[t->n_post], tmpl, n * sizeof *tmpl);
    t->post_len[t->n_post++] = n;
}

/* ["[CLS]", 101] */
static int pair_id(const tok_tokenizer *t, const cJSON *j, const char *key, const char *where, int32_t *id, qt_err *e) {
    const cJSON *p = get(j, key);
    long v;
    if (!cJSON_IsArray(p) || cJSON_GetArraySize(p) != 2)
        return qt_errf(e, "%s: %s.%s must be [token, id]", t->name, where, key);
    if (get_int(t, p->child->next, where, 0, TOK_MAX_IDS - 1, &v, e)) return -1;
    *id = (int32_t)v;
    return 0;
}

static int parse_post(tok_tokenizer *t, const cJSON *j, const char *where, int depth, qt_err *e) {
    if (is_null(j)) return 0;
    const char *type = get_str(t, j, "type", where, true, e);
    if (!type) return -1;
    if (depth > MAX_DEPTH || t->n_post >= MAX_STEPS)
        return qt_errf(e, "%s: %s: too many or too deeply nested processors", t->name, where);
    int32_t tmpl[MAX_TEMPLATE];
    size_t n = 0;
    if (!strcmp(type, "Sequence")) {
        const cJSON *a = get(j, "processors");
        if (!cJSON_IsArray(a)) return qt_errf(e, "%s: %s.processors must be an array", t->name, where);
        int i = 0;
        for (const cJSON *it = a->child; it; it = it->next, i++) {
            char w[160];
            snprintf(w, sizeof w, "%.120s.processors[%d]", where, i);
            if (parse_post(t, it, w, depth + 1, e)) return -1;
        }
        return 0;
    }
    if (!strcmp(type, "ByteLevel")) return 0; /* offsets only */
    if (!strcmp(type, "BertProcessing") || !strcmp(type, "RobertaProcessing")) {
        if (pair_id(t, j, "cls", where, &tmpl[0], e) || pair_id(t, j, "sep", where, &tmpl[2], e)) return -1;
        tmpl[1] = -1;
        post_add(t, tmpl, 3);
        return 0;
    }
    if (strcmp(type, "TemplateProcessing") != 0)
        return qt_errf(e, "%s: %s.type \"%s\" is not supported (qtrain supports TemplateProcessing, Sequence, "
                          "ByteLevel, BertProcessing, RobertaProcessing)",
                       t->name, where, type);
    const cJSON *single = get(j, "single"), *specials = get(j, "special_tokens");
    if (!cJSON_IsArray(single)) return qt_errf(e, "%s: %s.single must be an array", t->name, where);
    int i = 0;
    for (const cJSON *it = single->child; it; it = it->next, i++) {
        const cJSON *sp = get(it, "SpecialToken"), *seq = get(it, "Sequence");
        if (cJSON_IsObject(seq)) {
            const char *id = get_str(t, seq, "id", where, true, e);
            if (!id) return -1;
            if (strcmp(id, "A") != 0)
                return qt_errf(e, "%s: %s.single[%d] uses sequence \"%s\"; a single template has only A", t->name,
                               where, i, id);
            if (n >= MAX_TEMPLATE) return qt_errf(e, "%s: %s.single is too long", t->name, where);
            tmpl[n++] = -1;
            continue;
        }
        const char *name = cJSON_IsObject(sp) ? get_str(t, sp, "id", where, true, e) : NULL;
        if (!name) return qt_errf(e, "%s: %s.single[%d] must be {\"SpecialToken\": {\"id\": ...}} or {\"Sequence\": ...}",
                                  t->name, where, i);
        const cJSON *st = get(specials, name), *ids = get(st, "ids");
        if (!cJSON_IsArray(ids))
            return qt_errf(e, "%s: %s.special_tokens has no entry \"%.60s\" with an \"ids\" array", t->name, where,
                           name);
        for (const cJSON *x = ids->child; x; x = x->next) {
            long v;
            if (n >= MAX_TEMPLATE) return qt_errf(e, "%s: %s.single is too long", t->name, where);
            if (get_int(t, x, "post_processor special token id", 0, TOK_MAX_IDS - 1, &v, e)) return -1;
            tmpl[n++] = (int32_t)v;
        }
    }
    post_add(t, tmpl, n);
    return 0;
}

/* ------------------------------------------------------------------ added tokens */

static void grow_ids(tok_tokenizer *t, int32_t id) {
    if (id < t->n_ids) return;
    size_t old = (size_t)t->n_ids, n = (size_t)id + 1;
    t->id_off = tok_xrealloc(t->id_off, n * sizeof *t->id_off);
    t->id_len = tok_xrealloc(t->id_len, n * sizeof *t->id_len);
    memset(t->id_len + old, 0xFF, (n - old) * sizeof *t->id_len);
    t->n_ids = (int32_t)n;
}

static int parse_added(tok_tokenizer *t, const cJSON *arr, qt_err *e) {
    if (is_null(arr)) return 0;
    if (!cJSON_IsArray(arr)) return qt_errf(e, "%s: added_tokens must be an array", t->name);
    int n = cJSON_GetArraySize(arr);
    if (n > TOK_MAX_IDS) return qt_errf(e, "%s: added_tokens has %d entries (at most %d)", t->name, n, TOK_MAX_IDS);
    t->added = tok_xrealloc(NULL, (size_t)(n ? n : 1) * sizeof *t->added);
    tok_map_init(&t->added_map, (size_t)n);
    int i = 0;
    int32_t max_added = -1;
    for (const cJSON *it = arr->child; it; it = it->next, i++) {
        char where[48];
        snprintf(where, sizeof where, "added_tokens[%d]", i);
        const char *c = get_str(t, it, "content", where, true, e);
        if (!c) return -1;
        size_t len = strlen(c);
        if (len > TOK_MAX_TOKEN_BYTES)
            return qt_errf(e, "%s: %s.content is longer than %d bytes", t->name, where, TOK_MAX_TOKEN_BYTES);
        tok_added a = {0};
        if (get_bool(t, it, "special", where, false, &a.special, e) ||
            get_bool(t, it, "lstrip", where, false, &a.lstrip, e) ||
            get_bool(t, it, "rstrip", where, false, &a.rstrip, e) ||
            get_bool(t, it, "single_word", where, false, &a.single_word, e) ||
            get_bool(t, it, "normalized", where, !a.special, &a.normalized, e))
            return -1;
        if (len == 0 || tok_map_get(&t->added_map, t->pool.p, c, len) >= 0) continue; /* HF skips these */
        /* HF ignores the file's id: a token of the model keeps its id, a new one gets the next
         * free id past the model (AddedVocabulary::add_tokens) */
        int32_t id = tok_map_get(&t->bpe.vocab, t->pool.p, c, len);
        if (id < 0) {
            size_t vs = t->bpe.vocab_count;
            id = max_added < 0 ? (int32_t)vs : ((size_t)max_added >= vs || vs == 0) ? max_added + 1 : (int32_t)vs;
            if (id >= TOK_MAX_IDS) return qt_errf(e, "%s: %s: ids past %d", t->name, where, TOK_MAX_IDS);
        }
        if (id > max_added) max_added = id;
        a.off = tok_pool_add(t, c, len);
        a.len = (uint32_t)len;
        a.id = id;
        tok_map_put(&t->added_map, t->pool.p, a.off, a.len, (int32_t)t->n_added);
        t->added[t->n_added++] = a;
        grow_ids(t, id);
        t->id_off[id] = a.off; /* HF's decode looks at added tokens before the model */
        t->id_len[id] = a.len;
    }
    return 0;
}

/* The tries that split text on added tokens; normalized ones are matched after the
 * normalizer, so their patterns are normalized too, and HF then also decodes their ids to
 * the normalized string. An id counts as special when its string is the content of a
 * special added token (HF's decode tests the string, not the id). */
static int build_tries(tok_tokenizer *t, qt_err *e) {
    tok_work w = {0};
    w.md = pcre2_match_data_create(16, NULL);
    tok_buf nb = {0};
    bool need_word = false;
    for (size_t i = 0; i < t->n_added; i++) {
        tok_added *a = &t->added[i];
        need_word |= a->single_word;
        if (!a->normalized) {
            tok_trie_add(&t->trie_raw, t->pool.p + a->off, a->len, (int32_t)i);
        } else {
            tok_normalize(t, &w, t->pool.p + a->off, a->len, &nb);
            tok_trie_add(&t->trie_norm, nb.p, nb.n, (int32_t)i);
            t->id_off[a->id] = tok_pool_add(t, nb.p, nb.n);
            t->id_len[a->id] = (uint32_t)nb.n;
        }
    }
    tok_buf_free(&nb);
    tok_buf_free(&w.tmp);
    pcre2_match_data_free(w.md);
    t->id_special = calloc((size_t)t->n_ids + 1, 1);
    if (!t->id_special) qt_die("tokenizer: out of host memory");
    for (int32_t id = 0; id < t->n_ids && t->n_added; id++) {
        if (t->id_len[id] == UINT32_MAX) continue;
        int32_t k = tok_map_get(&t->added_map, t->pool.p, t->pool.p + t->id_off[id], t->id_len[id]);
        t->id_special[id] = k >= 0 && t->added[k].special;
    }
    /* Rust regex's Unicode \w, which HF uses for single_word; PCRE2's \w is narrower */
    static const char *word = "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]";
    if (need_word && !(t->re_word = tok_compile(t, "single_word", word, strlen(word), false, e))) return -1;
    return 0;
}

/* The post-processor's ids come from its own table, not the vocabulary: each must be a
 * token, or encoding would hand the model an id past its embedding. */
static int check_post(const tok_tokenizer *t, qt_err *e) {
    for (size_t i = 0; i < t->n_post; i++)
        for (size_t k = 0; k < t->post_len[i]; k++) {
            int32_t id = t->post[i][k];
            if (id >= 0 && (id >= t->n_ids || t->id_len[id] == UINT32_MAX))
                return qt_errf(e, "%s: post_processor adds token id %d, which is neither in model.vocab nor in "
                                  "added_tokens; fix the id in post_processor", t->name, (int)id);
        }
    return 0;
}

/* ------------------------------------------------------------------ entry points */

int tok_parse_json(tok_tokenizer *t, const char *json, size_t len, qt_err *e) {
    if (len > TOK_MAX_FILE_BYTES)
        return qt_errf(e, "%s: %zu bytes is larger than the %u MiB a tokenizer.json may have", t->name, len,
                       TOK_MAX_FILE_BYTES >> 20);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        size_t off = at && at >= json && at <= json + len ? (size_t)(at - json) : 0, line = 1;
        for (size_t i = 0; i < off; i++) line += json[i] == '\n';
        return qt_errf(e, "%s: not valid JSON (near byte %zu, line %zu); is it a Hugging Face tokenizer.json?",
                       t->name, off, line);
    }
    int rc = -1;
    if (!cJSON_IsObject(root)) {
        qt_errf(e, "%s: the top level is not a JSON object; is it a Hugging Face tokenizer.json?", t->name);
        goto done;
    }
    if (parse_model(t, get(root, "model"), e) || parse_normalizer(t, get(root, "normalizer"), "normalizer", 0, e) ||
        parse_pretok(t, get(root, "pre_tokenizer"), "pre_tokenizer", 0, e) ||
        parse_post(t, get(root, "post_processor"), "post_processor", 0, e) ||
        parse_decoder(t, get(root, "decoder"), "decoder", 0, e) || parse_added(t, get(root, "added_tokens"), e) ||
        check_post(t, e) || build_tries(t, e))
        goto done;
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

int tok_load_json(tok_tokenizer **out, const char *json, size_t len, const char *name, qt_err *e) {
    qt_err local;
    if (!e) e = &local;
    *out = NULL;
    e->msg[0] = 0;
    tok_tokenizer *t = calloc(1, sizeof *t);
    if (!t) qt_die("tokenizer: out of host memory");
    snprintf(t->name, sizeof t->name, "%s", name ? name : "tokenizer.json");
    if (tok_parse_json(t, json, len, e)) {
        tok_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

int tok_load(tok_tokenizer **out, const char *path, qt_err *e) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return qt_errf(e, "%s: cannot open: %s (give the path of the model's tokenizer.json)", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return qt_errf(e, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > TOK_MAX_FILE_BYTES) {
        fclose(f);
        return qt_errf(e, "%s: %lld bytes is larger than the %u MiB a tokenizer.json may have", path,
                       (long long)st.st_size, TOK_MAX_FILE_BYTES >> 20);
    }
    size_t n = (size_t)st.st_size;
    char *buf = tok_xrealloc(NULL, n + 1);
    size_t got = fread(buf, 1, n, f);
    fclose(f);
    if (got != n) {
        free(buf);
        return qt_errf(e, "%s: short read (%zu of %zu bytes)", path, got, n);
    }
    buf[n] = 0;
    int rc = tok_load_json(out, buf, n, path, e);
    free(buf);
    return rc;
}
