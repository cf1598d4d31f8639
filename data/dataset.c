/* JSONL datasets: records to examples (text / alpaca / chat), then truncation, the eval
 * split, shuffling, packing or padding, and the cache around all of it (qt_data_load). */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "data_internal.h"

const char *qt_dfmt_name(qt_dfmt f) {
    return f == QT_FMT_TEXT ? "text" : f == QT_FMT_ALPACA ? "alpaca" : f == QT_FMT_CHAT ? "chat"
         : f == QT_FMT_TOKENS ? "tokens" : "?";
}

char *qd_read_file(const char *path, size_t *len, qt_err *e) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        qt_errf(e, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        qt_errf(e, "%s: not a regular file", path);
        return NULL;
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        fclose(f);
        qt_errf(e, "%s: %zu bytes do not fit in host memory", path, n);
        return NULL;
    }
    size_t got = fread(buf, 1, n, f);
    int bad = ferror(f);
    fclose(f);
    if (got != n || bad) {
        free(buf);
        qt_errf(e, "%s: read error (%zu of %zu bytes)", path, got, n);
        return NULL;
    }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

/* ------------------------------------------------------------------ records -> examples */

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF): offset of the
 * first bad byte, or n. */
static size_t utf8_bad(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t k = c < 0x80 ? 1 : (c >= 0xc2 && c <= 0xdf) ? 2 : (c >= 0xe0 && c <= 0xef) ? 3
                 : (c >= 0xf0 && c <= 0xf4) ? 4 : 0;
        if (k == 0 || i + k > n) return i;
        for (size_t j = 1; j < k; j++)
            if ((s[i + j] & 0xc0) != 0x80) return i;
        if ((c == 0xe0 && s[i + 1] < 0xa0) || (c == 0xed && s[i + 1] > 0x9f) || (c == 0xf0 && s[i + 1] < 0x90) ||
            (c == 0xf4 && s[i + 1] > 0x8f))
            return i;
        i += k;
    }
    return n;
}

/* A string field of obj; NULL after filling e when it is missing (unless optional), not a
 * string, or not UTF-8. *absent tells an optional field that is missing or null. */
static const char *str_field(const cJSON *obj, const char *key, const char *name, bool optional, bool *absent,
                             qt_err *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (absent) *absent = false;
    if (!v || (optional && cJSON_IsNull(v))) {
        if (optional) {
            *absent = true;
            return "";
        }
        qt_errf(e, "field '%s' is missing", name);
        return NULL;
    }
    if (!cJSON_IsString(v)) {
        const char *got = cJSON_IsNull(v) ? "null" : cJSON_IsNumber(v) ? "a number" : cJSON_IsBool(v) ? "a boolean"
                        : cJSON_IsArray(v) ? "an array" : "an object";
        qt_errf(e, "field '%s' must be a string, got %s", name, got);
        return NULL;
    }
    size_t n = strlen(v->valuestring), bad = utf8_bad((const unsigned char *)v->valuestring, n);
    if (bad < n) {
        qt_errf(e, "field '%s' is not valid UTF-8 (byte %zu of the string)", name, bad);
        return NULL;
    }
    return v->valuestring;
}

int qt_encoder_init(qt_encoder *enc, const tok_tokenizer *t, qt_dfmt format, const qt_template *tp,
                    int32_t eos_id, qt_err *e) {
    memset(enc, 0, sizeof *enc);
    enc->tok = t;
    enc->format = format;
    enc->eos_id = eos_id;
    if (format == QT_FMT_CHAT) {
        QT_CHECK(tp && tp->style != QT_CHAT_AUTO, "qt_encoder_init: chat needs a resolved template");
        enc->tmpl = *tp;
    }
    if (format == QT_FMT_TOKENS) return 0; /* ids as given: no tokenizer, no BOS added */
    /* What the post-processor puts before a sequence (Llama: BOS): encode "a" with and
     * without special tokens and take what comes before the plain ids. */
    tok_ids plain = {0}, full = {0};
    if (tok_encode(t, "a", 1, false, &plain, e) != 0 || tok_encode(t, "a", 1, true, &full, e) != 0) {
        tok_ids_free(&plain);
        tok_ids_free(&full);
        return -1;
    }
    for (size_t k = 0; plain.n && k + plain.n <= full.n && k < 8; k++)
        if (memcmp(full.ids + k, plain.ids, plain.n * sizeof *plain.ids) == 0) {
            memcpy(enc->bos, full.ids, k * sizeof *full.ids);
            enc->n_bos = (int)k;
            break;
        }
    tok_ids_free(&plain);
    tok_ids_free(&full);
    return 0;
}

void qt_encoder_free(qt_encoder *enc) { qt_render_free(&enc->r); }

static const char *const ALPACA_INPUT =
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n";
static const char *const ALPACA_NO_INPUT =
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n";

/* {"input_ids": [int, ...]}: ids in [0, 2^31), at least 2 of them. */
static int render_ids(qt_render *r, const cJSON *j, qt_err *e) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "input_ids");
    if (!a) return qt_errf(e, "field 'input_ids' is missing (format tokens: {\"input_ids\": [ids]})");
    if (!cJSON_IsArray(a)) return qt_errf(e, "field 'input_ids' must be an array of token ids");
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, a) {
        double v = cJSON_IsNumber(it) ? it->valuedouble : -1;
        if (!(v >= 0 && v < 2147483648.0) || v != (double)(int64_t)v)
            return qt_errf(e, "field 'input_ids[%d]' must be a token id (an integer >= 0)", i);
        qt_render_id(r, (int32_t)v, true);
        i++;
    }
    if (i < 2) return qt_errf(e, "field 'input_ids' needs at least 2 ids (one to predict from, one to predict)");
    return 0;
}

static int render_record(qt_encoder *enc, const cJSON *j, qt_err *e) {
    qt_render *r = &enc->r;
    if (enc->format == QT_FMT_TOKENS) return render_ids(r, j, e);
    if (enc->format == QT_FMT_TEXT) {
        const char *text = str_field(j, "text", "text", false, NULL, e);
        if (!text) return -1;
        for (int i = 0; i < enc->n_bos; i++) qt_render_id(r, enc->bos[i], true);
        qt_render_text(r, text, strlen(text), true);
        qt_render_id(r, enc->eos_id, true);
        return 0;
    }
    if (enc->format == QT_FMT_ALPACA) {
        bool no_input;
        const char *ins = str_field(j, "instruction", "instruction", false, NULL, e);
        const char *inp = ins ? str_field(j, "input", "input", true, &no_input, e) : NULL;
        const char *out = inp ? str_field(j, "output", "output", false, NULL, e) : NULL;
        if (!out) return -1;
        no_input = no_input || inp[0] == 0; /* Stanford: an empty input uses the no-input prompt */
        for (int i = 0; i < enc->n_bos; i++) qt_render_id(r, enc->bos[i], false);
        const char *head = no_input ? ALPACA_NO_INPUT : ALPACA_INPUT;
        qt_render_text(r, head, strlen(head), false);
        qt_render_text(r, ins, strlen(ins), false);
        if (!no_input) {
            qt_render_text(r, "\n\n### Input:\n", 13, false);
            qt_render_text(r, inp, strlen(inp), false);
        }
        qt_render_text(r, "\n\n### Response:", 15, false);
        qt_render_text(r, out, strlen(out), true);
        qt_render_id(r, enc->eos_id, true);
        return 0;
    }
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(j, "messages");
    if (!msgs) return qt_errf(e, "field 'messages' is missing");
    if (!cJSON_IsArray(msgs)) return qt_errf(e, "field 'messages' must be an array of {\"role\", \"content\"}");
    int n = cJSON_GetArraySize(msgs);
    if (n == 0) return qt_errf(e, "field 'messages' is empty");
    qt_chat_msg *m = qd_xrealloc(NULL, (size_t)n * sizeof *m);
    bool any_assistant = false;
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, msgs) {
        char name[64];
        if (!cJSON_IsObject(it)) {
            free(m);
            return qt_errf(e, "field 'messages[%d]' must be an object {\"role\", \"content\"}", i);
        }
        snprintf(name, sizeof name, "messages[%d].role", i);
        const char *role = str_field(it, "role", name, false, NULL, e);
        snprintf(name, sizeof name, "messages[%d].content", i);
        const char *content = role ? str_field(it, "content", name, false, NULL, e) : NULL;
        if (!content) {
            free(m);
            return -1;
        }
        if (strcmp(role, "system") == 0) m[i].role = QT_ROLE_SYSTEM;
        else if (strcmp(role, "user") == 0) m[i].role = QT_ROLE_USER;
        else if (strcmp(role, "assistant") == 0) m[i].role = QT_ROLE_ASSISTANT;
        else {
            qt_errf(e, "field 'messages[%d].role': unknown role \"%.40s\" (expected system, user or assistant)", i,
                    role);
            free(m);
            return -1;
        }
        any_assistant |= m[i].role == QT_ROLE_ASSISTANT;
        m[i].content = content;
        m[i].len = strlen(content);
        i++;
    }
    int rc = any_assistant ? qt_chat_render(&enc->tmpl, m, (size_t)n, r, e)
                           : qt_errf(e, "field 'messages': no assistant message, so nothing to train on");
    free(m);
    return rc;
}

int qt_encode_record(qt_encoder *enc, const char *line, size_t len, qt_tokens *out, qt_err *e) {
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(line, len, &end, false);
    if (!j) {
        size_t col = end && end >= line ? (size_t)(end - line) + 1 : 1;
        return qt_errf(e, "invalid JSON at column %zu (each line must be one JSON object)", col);
    }
    while (end < line + len && (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n')) end++;
    if (end < line + len) {
        cJSON_Delete(j);
        return qt_errf(e, "invalid JSON: text after the object at column %zu (one object per line)",
                       (size_t)(end - line) + 1);
    }
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return qt_errf(e, "expected a JSON object, got %s", cJSON_IsArray(j) ? "an array" : "a scalar");
    }
    qt_render_clear(&enc->r);
    size_t start = out->n;
    int rc = render_record(enc, j, e);
    if (rc == 0) rc = qt_render_tokens(&enc->r, enc->tok, out, &enc->st, e);
    cJSON_Delete(j);
    if (rc != 0) {
        out->n = start;
        return -1;
    }
    if (out->n > start) out->train[start] = 0; /* nothing in the example comes before it */
    return 0;
}

int32_t qt_data_find_eos(const tok_tokenizer *t, const char *model_dir, const char *override, qt_err *e) {
    if (override && override[0]) {
        int32_t id = tok_token_to_id(t, override);
        if (id < 0) return qt_errf(e, "data: eos token \"%s\" is not in the tokenizer", override);
        return id;
    }
    if (model_dir && model_dir[0]) {
        char path[QT_DATA_PATH_MAX + 64];
        snprintf(path, sizeof path, "%s/tokenizer_config.json", model_dir);
        size_t n;
        char *txt = qd_read_file(path, &n, NULL);
        if (txt) {
            cJSON *j = cJSON_ParseWithLength(txt, n);
            free(txt);
            const cJSON *v = j ? cJSON_GetObjectItemCaseSensitive(j, "eos_token") : NULL;
            if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
            int32_t id = -1;
            char name[128] = "";
            if (cJSON_IsString(v)) {
                snprintf(name, sizeof name, "%s", v->valuestring);
                id = tok_token_to_id(t, name);
            }
            cJSON_Delete(j);
            if (id >= 0) return id;
            if (name[0])
                return qt_errf(e, "%s: eos_token \"%s\" is not a token of the tokenizer; fix eos_token there", path,
                               name);
        }
    }
    static const char *const known[] = {"<|end_of_text|>", "<|endoftext|>", "</s>", "<|im_end|>", "<|eot_id|>", "<eos>"};
    for (size_t i = 0; i < sizeof known / sizeof *known; i++) {
        int32_t id = tok_token_to_id(t, known[i]);
        if (id >= 0) return id;
    }
    return qt_errf(e, "data: cannot tell the end-of-sequence token (no tokenizer_config.json eos_token and none of "
                      "<|end_of_text|>, <|endoftext|>, </s>, <|im_end|>, <|eot_id|>, <eos> in the tokenizer); "
                      "add \"eos_token\" to the model folder's tokenizer_config.json");
}

/* ------------------------------------------------------------------ reading a file */

/* Every example of a run, back to back; example i is [off[i], off[i+1]). */
typedef struct examples {
    qt_tokens tok;
    int64_t *off;
    int64_t n, cap;
} examples;

static void examples_free(examples *x) {
    qt_tokens_free(&x->tok);
    free(x->off);
    memset(x, 0, sizeof *x);
}

static void examples_push(examples *x, int64_t end) {
    if (!x->off) {
        x->cap = 1024;
        x->off = qd_xrealloc(NULL, (size_t)x->cap * sizeof *x->off);
        x->off[0] = 0;
    }
    if (x->n + 2 > x->cap) {
        x->cap *= 2;
        x->off = qd_xrealloc(x->off, (size_t)x->cap * sizeof *x->off);
    }
    x->off[++x->n] = end;
}

/* A slice of the file's lines, encoded by one thread into its own examples. */
typedef struct chunk {
    const char *p, *end, *path;
    int64_t line;       /* number of the slice's first line */
    const qt_data_opts *o;
    qt_encoder enc;     /* a copy of the caller's, with its own scratch */
    examples x;
    qt_data_stats st;   /* lines, bad_lines, truncated, dropped, first_bad */
    qt_err err;
    int rc;
} chunk;

static void *chunk_run(void *arg) {
    chunk *c = arg;
    examples *x = &c->x;
    int64_t T = c->o->seq_len;
    for (int64_t line = c->line; c->p < c->end; line++) {
        const char *nl = memchr(c->p, '\n', (size_t)(c->end - c->p)), *le = nl ? nl : c->end, *q = c->p;
        while (q < le && (*q == ' ' || *q == '\t' || *q == '\r')) q++;
        if (q < le) {
            c->st.lines++;
            qt_err le_err;
            size_t before = x->tok.n;
            if (qt_encode_record(&c->enc, c->p, (size_t)(le - c->p), &x->tok, &le_err) != 0) {
                if (!c->o->skip_bad_lines) {
                    c->rc = qt_errf(&c->err, "%s:%lld: %.900s", c->path, (long long)line, le_err.msg);
                    break;
                }
                if (c->st.bad_lines++ == 0)
                    snprintf(c->st.first_bad, sizeof c->st.first_bad, "%.200s:%lld: %.280s", c->path, (long long)line,
                             le_err.msg);
            } else {
                if ((int64_t)(x->tok.n - before) > T) {
                    c->st.truncated++;
                    x->tok.n = before + (size_t)T;
                }
                bool any = false;
                for (size_t i = before; i < x->tok.n && !any; i++) any = x->tok.train[i];
                if (any) examples_push(x, (int64_t)x->tok.n);
                else {
                    c->st.dropped++;
                    x->tok.n = before;
                }
            }
        }
        c->p = nl ? nl + 1 : c->end;
    }
    return NULL;
}

/* Encode every line of a JSONL file, in parallel over slices of lines; the result (and the
 * first error, in file order) does not depend on the number of threads. */
static int read_jsonl(const char *path, const qt_encoder *proto, const qt_data_opts *o, examples *x,
                      qt_data_stats *st, qt_render_stats *rs, qt_err *e) {
    size_t len;
    char *buf = qd_read_file(path, &len, e);
    if (!buf) return -1;
    const char *p = buf, *end = buf + len;
    if (len >= 3 && memcmp(p, "\xef\xbb\xbf", 3) == 0) p += 3; /* UTF-8 byte order mark */
    /* one slice per MiB, at most one per core; QT_DATA_THREADS=n forces n (tests use it) */
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int n = (int)((size_t)(end - p) / (1u << 20)) + 1;
    n = n > ncpu ? (int)ncpu : n;
    const char *env = getenv("QT_DATA_THREADS");
    if (env && atoi(env) > 0) n = atoi(env);
    n = n < 1 ? 1 : n > 64 ? 64 : n;
    chunk *c = calloc((size_t)n, sizeof *c);
    QT_CHECK(c, "out of memory");
    int64_t line = 1;
    for (int i = 0; i < n; i++) { /* slices of about equal bytes, cut after a newline */
        const char *q = i + 1 < n ? p + (size_t)(end - p) / (size_t)(n - i) : end;
        const char *nl = q < end ? memchr(q, '\n', (size_t)(end - q)) : NULL;
        q = i + 1 < n ? (nl ? nl + 1 : end) : end;
        c[i] = (chunk){.p = p, .end = q, .path = path, .line = line, .o = o, .enc = *proto};
        memset(&c[i].enc.r, 0, sizeof c[i].enc.r);
        memset(&c[i].enc.st, 0, sizeof c[i].enc.st);
        for (const char *s = p; (s = memchr(s, '\n', (size_t)(q - s))) != NULL; s++) line++;
        p = q;
    }
    pthread_t th[64];
    bool started[64] = {false};
    for (int i = 1; i < n; i++) started[i] = pthread_create(&th[i], NULL, chunk_run, &c[i]) == 0;
    chunk_run(&c[0]);
    for (int i = 1; i < n; i++) {
        if (started[i]) pthread_join(th[i], NULL);
        else chunk_run(&c[i]);
    }
    int rc = 0;
    for (int i = 0; i < n; i++) {
        if (rc == 0 && c[i].rc != 0) {
            *e = c[i].err;
            rc = -1;
        }
        if (rc == 0) {
            int64_t base = (int64_t)x->tok.n;
            size_t m = c[i].x.tok.n;
            if (x->tok.n + m > x->tok.cap) {
                x->tok.cap = x->tok.n + m;
                x->tok.ids = qd_xrealloc(x->tok.ids, x->tok.cap * sizeof *x->tok.ids);
                x->tok.train = qd_xrealloc(x->tok.train, x->tok.cap);
            }
            if (m) {
                memcpy(x->tok.ids + x->tok.n, c[i].x.tok.ids, m * sizeof *x->tok.ids);
                memcpy(x->tok.train + x->tok.n, c[i].x.tok.train, m);
            }
            x->tok.n += m;
            for (int64_t k = 1; k <= c[i].x.n; k++) examples_push(x, base + c[i].x.off[k]);
            if (c[i].st.bad_lines && !st->bad_lines) memcpy(st->first_bad, c[i].st.first_bad, sizeof st->first_bad);
            st->lines += c[i].st.lines;
            st->bad_lines += c[i].st.bad_lines;
            st->truncated += c[i].st.truncated;
            st->dropped += c[i].st.dropped;
            rs->encode_calls += c[i].enc.st.encode_calls;
            rs->boundary_merges += c[i].enc.st.boundary_merges;
        }
        qt_encoder_free(&c[i].enc);
        examples_free(&c[i].x);
    }
    free(c);
    free(buf);
    return rc;
}

/* ------------------------------------------------------------------ split, shuffle, rows */

/* Uniform in [0, n) by rejection, so the permutation is unbiased. */
uint64_t qd_rng_below(qt_rng *r, uint64_t n) {
    uint64_t lim = UINT64_MAX - UINT64_MAX % n, v;
    do v = qt_rng_next(r);
    while (v >= lim);
    return v % n;
}

void qd_permutation(int64_t *perm, int64_t n, uint64_t seed) {
    qt_rng r;
    qt_rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    for (int64_t i = n - 1; i > 0; i--) { /* Fisher–Yates */
        int64_t j = (int64_t)qd_rng_below(&r, (uint64_t)i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

/* Rows of the examples order[0..n) of x: packed into one stream, or one padded row each. */
static void make_rows(const examples *x, const int64_t *order, int64_t n, const qt_data_opts *o, int32_t eos,
                      qt_data_split *s) {
    int64_t T = o->seq_len, total = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t a = x->off[order[i]], b = x->off[order[i] + 1];
        total += o->packing ? (b - a) + (x->tok.ids[b - 1] != eos) : T;
    }
    memset(s, 0, sizeof *s);
    s->seq_len = T;
    s->n_examples = n;
    s->n_rows = (total + T - 1) / T;
    size_t cells = (size_t)(s->n_rows * T);
    s->ids = qd_xrealloc(NULL, cells * sizeof *s->ids);
    s->train = qd_xrealloc(NULL, cells);
    for (size_t k = 0; k < cells; k++) { /* padding wherever no token lands */
        s->ids[k] = eos;
        s->train[k] = 0;
    }
    int64_t w = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t a = x->off[order[i]], b = x->off[order[i] + 1];
        if (!o->packing) w = i * T; /* each example starts its own row (b - a <= T) */
        memcpy(s->ids + w, x->tok.ids + a, (size_t)(b - a) * sizeof *s->ids);
        memcpy(s->train + w, x->tok.train + a, (size_t)(b - a));
        w += b - a;
        s->n_tokens += b - a;
        for (int64_t k = a; k < b; k++) s->n_loss_tokens += x->tok.train[k];
        if (o->packing && x->tok.ids[b - 1] != eos) { /* separator, not a target */
            w++;
            s->n_tokens++;
        }
    }
}

/* ------------------------------------------------------------------ loading */

static int mkdir_p(const char *dir, qt_err *e) {
    char p[QT_DATA_PATH_MAX];
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p) return qt_errf(e, "%s: path too long", dir);
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != 0) continue;
        char c = *s;
        *s = 0;
        if (mkdir(p, 0777) != 0 && errno != EEXIST) return qt_errf(e, "cannot create %s: %s", p, strerror(errno));
        *s = c;
        if (!c) break;
    }
    return 0;
}

static int check_opts(const qt_data_opts *o, qt_err *e) {
    if (!o->train_path || !o->train_path[0]) return qt_errf(e, "data: no train file (data.train)");
    if (o->seq_len < 2 || o->seq_len > (1 << 24))
        return qt_errf(e, "data: seq_len %lld out of range [2, 16777216]", (long long)o->seq_len);
    if (!(o->eval_split >= 0 && o->eval_split < 1))
        return qt_errf(e, "data: eval_split %g out of range [0, 1)", o->eval_split);
    if (o->format < QT_FMT_TEXT || o->format > QT_FMT_TOKENS) return qt_errf(e, "data: unknown format %d", (int)o->format);
    if (o->format == QT_FMT_TOKENS) {
        if (o->tokens_eos_id < 0) return qt_errf(e, "data: format tokens needs the model's EOS id");
        return 0;
    }
    if (o->chat_template < QT_CHAT_AUTO || o->chat_template > QT_CHAT_LLAMA2)
        return qt_errf(e, "data: unknown chat_template %d", (int)o->chat_template);
    if ((!o->tokenizer_path || !o->tokenizer_path[0]) && (!o->model_dir || !o->model_dir[0]))
        return qt_errf(e, "data: no tokenizer (needs model.path with a tokenizer.json)");
    return 0;
}

static void tokenizer_path(const qt_data_opts *o, char *buf, size_t n) {
    if (o->tokenizer_path && o->tokenizer_path[0]) snprintf(buf, n, "%s", o->tokenizer_path);
    else snprintf(buf, n, "%s/tokenizer.json", o->model_dir);
}

/* Tokenize both files and make the rows. */
static int build(qt_dataset *d, const qt_data_opts *o, qt_err *e) {
    char tpath[QT_DATA_PATH_MAX + 64];
    tokenizer_path(o, tpath, sizeof tpath);
    tok_tokenizer *t = NULL;
    bool ids_only = o->format == QT_FMT_TOKENS;
    if (!ids_only) {
        if (tok_load(&t, tpath, e) != 0) return -1;
        d->stats.tokenizer_loaded = true;
        tok_set_split_special(t, true); /* data is plain text: "<|eot_id|>" in a message stays characters */
    }
    qt_template tp = {0};
    qt_encoder enc = {0};
    qt_render_stats rs = {0};
    examples xt = {0}, xe = {0};
    int64_t *order = NULL;
    int rc = -1;
    int32_t eos = ids_only ? o->tokens_eos_id : qt_data_find_eos(t, o->model_dir, o->eos_token, e);
    if (eos < 0) goto out;
    if (o->format == QT_FMT_CHAT) {
        if (qt_template_resolve(&tp, o->chat_template, o->model_dir, t, e) != 0) goto out;
        snprintf(d->stats.template_used, sizeof d->stats.template_used, "%s", tp.source);
    }
    if (qt_encoder_init(&enc, t, o->format, &tp, eos, e) != 0) goto out;
    if (read_jsonl(o->train_path, &enc, o, &xt, &d->stats, &rs, e) != 0) goto out;
    bool eval_file = o->eval_path && o->eval_path[0];
    if (eval_file && read_jsonl(o->eval_path, &enc, o, &xe, &d->stats, &rs, e) != 0) goto out;
    if (xt.n == 0) {
        qt_errf(e, "%s: no usable %s examples (%lld lines, %lld skipped as bad, %lld with nothing to train on)",
                o->train_path, qt_dfmt_name(o->format), (long long)d->stats.lines, (long long)d->stats.bad_lines,
                (long long)d->stats.dropped);
        goto out;
    }
    if (eval_file && xe.n == 0) {
        qt_errf(e, "%s: no usable %s examples in the eval file", o->eval_path, qt_dfmt_name(o->format));
        goto out;
    }
    d->eos_id = d->pad_id = eos;
    if (ids_only) { /* the largest id (and EOS) must fit the model: the trainer checks vocab_size */
        int32_t mx = eos;
        for (size_t i = 0; i < xt.tok.n; i++) mx = xt.tok.ids[i] > mx ? xt.tok.ids[i] : mx;
        for (size_t i = 0; i < xe.tok.n; i++) mx = xe.tok.ids[i] > mx ? xe.tok.ids[i] : mx;
        d->vocab_size = mx + 1;
    } else {
        d->vocab_size = tok_vocab_size(t);
    }
    order = qd_xrealloc(NULL, (size_t)xt.n * sizeof *order);
    qd_permutation(order, xt.n, o->shuffle_seed);
    int64_t n_eval = 0;
    if (!eval_file && o->eval_split > 0) {
        if (xt.n < 2) {
            qt_errf(e, "%s: eval_split %g needs at least 2 examples, the file has %lld", o->train_path, o->eval_split,
                    (long long)xt.n);
            goto out;
        }
        n_eval = llround(o->eval_split * (double)xt.n);
        n_eval = n_eval < 1 ? 1 : n_eval > xt.n - 1 ? xt.n - 1 : n_eval;
    }
    if (eval_file) {
        int64_t *seq = qd_xrealloc(NULL, (size_t)(xe.n ? xe.n : 1) * sizeof *seq);
        for (int64_t i = 0; i < xe.n; i++) seq[i] = i;
        make_rows(&xe, seq, xe.n, o, eos, &d->eval);
        free(seq);
    } else {
        /* The held-out examples are the first n_eval of the shuffled order, kept in file order. */
        int64_t *ev = qd_xrealloc(NULL, (size_t)(n_eval ? n_eval : 1) * sizeof *ev);
        memcpy(ev, order, (size_t)n_eval * sizeof *ev);
        for (int64_t i = 1; i < n_eval; i++) /* insertion sort: eval sets are small */
            for (int64_t j = i; j > 0 && ev[j - 1] > ev[j]; j--) {
                int64_t tmp = ev[j];
                ev[j] = ev[j - 1];
                ev[j - 1] = tmp;
            }
        make_rows(&xt, ev, n_eval, o, eos, &d->eval);
        free(ev);
    }
    make_rows(&xt, order + n_eval, xt.n - n_eval, o, eos, &d->train);
    d->stats.encode_calls = rs.encode_calls;
    d->stats.boundary_merges = rs.boundary_merges;
    rc = 0;
out:
    free(order);
    examples_free(&xt);
    examples_free(&xe);
    qt_encoder_free(&enc);
    tok_free(t);
    return rc;
}

int qt_data_load(qt_dataset *d, const qt_data_opts *o, qt_err *e) {
    memset(d, 0, sizeof *d);
    if (check_opts(o, e) != 0) return -1;
    bool cache = o->cache_dir && o->cache_dir[0];
    char key[33];
    if (cache) {
        if (qt_data_cache_key(o, key, e) != 0) return -1;
        snprintf(d->stats.cache_path, sizeof d->stats.cache_path, "%s/%s.h5", o->cache_dir, key);
        qt_err ce;
        int r = qd_cache_read(d->stats.cache_path, key, o->seq_len, d, &ce);
        if (r == 0) {
            d->stats.from_cache = true;
            return 0;
        }
        if (r < 0) {
            fprintf(stderr, "qtrain: warning: data cache %s is unusable (%s); rebuilding it\n", d->stats.cache_path,
                    ce.msg);
            d->stats.cache_rebuilt = true;
        }
    }
    if (build(d, o, e) != 0) {
        qt_data_free(d);
        return -1;
    }
    if (cache) {
        qt_err ce;
        if (mkdir_p(o->cache_dir, &ce) != 0 || qd_cache_write(d->stats.cache_path, key, d, &ce) != 0)
            fprintf(stderr, "qtrain: warning: cannot write the data cache (%s); continuing without it\n", ce.msg);
    }
    return 0;
}

void qt_data_free(qt_dataset *d) {
    free(d->train.ids);
    free(d->train.train);
    free(d->eval.ids);
    free(d->eval.train);
    memset(&d->train, 0, sizeof d->train);
    memset(&d->eval, 0, sizeof d->eval);
}

void qt_data_labels(const qt_data_split *s, int64_t row, int64_t n, int32_t *out) {
    QT_CHECK(row >= 0 && n >= 0 && row + n <= s->n_rows, "rows [%lld, %lld) of %lld", (long long)row,
             (long long)(row + n), (long long)s->n_rows);
    size_t a = (size_t)(row * s->seq_len), m = (size_t)(n * s->seq_len);
    for (size_t k = 0; k < m; k++) out[k] = s->train[a + k] ? s->ids[a + k] : QT_IGNORE_INDEX;
}

void qt_data_describe(const qt_dataset *d, char *buf, size_t n) {
    const qt_data_stats *s = &d->stats;
    snprintf(buf, n,
             "data: train %lld examples in %lld rows of %lld (%lld tokens, %lld trained), eval %lld examples in "
             "%lld rows; %lld truncated, %lld dropped, %lld bad lines skipped; %s",
             (long long)d->train.n_examples, (long long)d->train.n_rows, (long long)d->train.seq_len,
             (long long)d->train.n_tokens, (long long)d->train.n_loss_tokens, (long long)d->eval.n_examples,
             (long long)d->eval.n_rows, (long long)s->truncated, (long long)s->dropped, (long long)s->bad_lines,
             s->from_cache ? "from the cache" : s->cache_path[0] ? "tokenized, cached" : "tokenized (no cache)");
}
