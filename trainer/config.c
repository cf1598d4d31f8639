/* Loading a run config: read the file (bounded), turn libyaml's events into a small
 * bounded tree, walk it against the schema table (config_schema.c), apply the --set
 * overrides, then check the settings against each other and resolve derived defaults.
 *
 * Every failure is one line naming where (FILE:LINE:COL, or the --set argument), which
 * key, and what would be accepted. */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <yaml.h>

#include "config_internal.h"

#define MAX_NODES 10000

/* Where a field got its value: file position, a --set argument, or the default. */
typedef struct {
    const char *where; /* file name or the override text; NULL for a config built in code */
    bool is_override;
    int line, col; /* 0 when the value is the default */
} origin;

typedef struct {
    qt_config *cfg;
    const char *file; /* name used in messages */
    origin org[64];
    qt_err *err;
} loader;

/* ------------------------------------------------------------------ YAML -> tree */

static void node_free(qt_ynode *n) {
    if (!n) return;
    for (int i = 0; i < n->n; i++) node_free(n->kids[i]);
    free(n->kids);
    free(n->text);
    free(n);
}

static qt_ynode *node_new(qt_yn_type type, yaml_mark_t m) {
    qt_ynode *n = calloc(1, sizeof *n);
    QT_CHECK(n, "out of host memory");
    n->type = type;
    n->line = (int)m.line + 1;
    n->col = (int)m.column + 1;
    return n;
}

static void node_add(qt_ynode *parent, qt_ynode *kid) {
    if (parent->n == parent->cap) {
        parent->cap = parent->cap ? parent->cap * 2 : 8;
        parent->kids = realloc(parent->kids, sizeof *parent->kids * (size_t)parent->cap);
        QT_CHECK(parent->kids, "out of host memory");
    }
    parent->kids[parent->n++] = kid;
}

/* The byte at 0-based line/column (columns count UTF-8 characters, as libyaml's do). */
static const char *at_mark(const char *text, size_t len, size_t line, size_t col) {
    const char *p = text, *end = text + len;
    for (size_t l = 0; l < line && p < end; p++)
        if (*p == '\n') l++;
    for (size_t c = 0; p < end && *p != '\n'; p++) {
        if (((unsigned char)*p & 0xC0) == 0x80) continue;
        if (c++ == col) return p;
    }
    return p < end ? p : NULL;
}

static int syntax_error(const char *name, bool pos, const char *text, size_t len, const yaml_parser_t *p,
                        qt_err *err) {
    if (p->error == YAML_MEMORY_ERROR) return qt_errf(err, "%s: out of memory while reading YAML", name);
    size_t line = p->problem_mark.line, col = p->problem_mark.column;
    if (p->error == YAML_READER_ERROR) { /* only a byte offset: count lines ourselves */
        line = col = 0;
        for (size_t i = 0; i < p->problem_offset && i < len; i++) {
            if (text[i] == '\n') line++, col = 0;
            else if (((unsigned char)text[i] & 0xC0) != 0x80) col++;
        }
    }
    char where[64] = "", ctx[160] = "";
    if (pos) snprintf(where, sizeof where, ":%zu:%zu", line + 1, col + 1);
    if (p->context)
        snprintf(ctx, sizeof ctx, " (%s started at %zu:%zu)", p->context, (size_t)p->context_mark.line + 1,
                 (size_t)p->context_mark.column + 1);
    const char *c = at_mark(text, len, line, col);
    const char *hint = c && *c == '\t' ? "; tabs cannot indent YAML, use spaces" : "";
    if (p->error == YAML_READER_ERROR)
        return qt_errf(err, "%s%s: not valid UTF-8 YAML text: %s (byte 0x%02x)", name, where,
                       p->problem ? p->problem : "?", p->problem_value & 0xff);
    return qt_errf(err, "%s%s: YAML syntax error: %s%s%s", name, where, p->problem ? p->problem : "?", ctx, hint);
}

/* Core-schema tags only; !!str makes a scalar a string even when it looks like a number. */
static int check_tag(const char *name, bool pos, const yaml_char_t *tag, qt_ynode *n, qt_err *err) {
    if (!tag) return 0;
    const char *t = (const char *)tag;
    if (!strcmp(t, "tag:yaml.org,2002:str")) n->quoted = true;
    else if (!strcmp(t, "tag:yaml.org,2002:int") || !strcmp(t, "tag:yaml.org,2002:float") ||
             !strcmp(t, "tag:yaml.org,2002:bool") || !strcmp(t, "tag:yaml.org,2002:null") ||
             !strcmp(t, "tag:yaml.org,2002:seq") || !strcmp(t, "tag:yaml.org,2002:map"))
        n->quoted = false;
    else if (pos)
        return qt_errf(err, "%s:%d:%d: the YAML tag '%.60s' is not supported in a config", name, n->line, n->col, t);
    else
        return qt_errf(err, "%s: the YAML tag '%.60s' is not supported in a config", name, t);
    return 0;
}

/* text -> *root (NULL for a stream without a document). pos: put LINE:COL in messages. */
static int yaml_to_tree(const char *name, bool pos, const char *text, size_t len, qt_ynode **root, qt_err *err) {
    yaml_parser_t p;
    QT_CHECK(yaml_parser_initialize(&p), "libyaml: cannot initialize a parser");
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    qt_ynode *stack[QT_CFG_DEPTH_MAX];
    int depth = 0, docs = 0, nodes = 0, rc = 0;
    bool done = false;
    *root = NULL;
    while (!done && rc == 0) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) {
            rc = syntax_error(name, pos, text, len, &p, err);
            break;
        }
        qt_ynode *n = NULL;
        yaml_mark_t m = ev.start_mark;
        switch (ev.type) {
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1)
                rc = qt_errf(err, "%s:%zu:%zu: a second YAML document ('---'); a config is one document", name,
                             (size_t)m.line + 1, (size_t)m.column + 1);
            break;
        case YAML_ALIAS_EVENT:
            rc = qt_errf(err, "%s:%zu:%zu: YAML aliases (*%.40s) are not supported in a config; write the value out",
                         name, (size_t)m.line + 1, (size_t)m.column + 1, (const char *)ev.data.alias.anchor);
            break;
        case YAML_SCALAR_EVENT:
            n = node_new(QT_YN_SCALAR, m);
            n->quoted = ev.data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
            n->len = ev.data.scalar.length;
            n->text = malloc(n->len + 1);
            QT_CHECK(n->text, "out of host memory");
            memcpy(n->text, ev.data.scalar.value, n->len);
            n->text[n->len] = 0;
            rc = check_tag(name, pos, ev.data.scalar.tag, n, err);
            break;
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT:
            n = node_new(ev.type == YAML_SEQUENCE_START_EVENT ? QT_YN_SEQ : QT_YN_MAP, m);
            rc = check_tag(name, pos, ev.type == YAML_SEQUENCE_START_EVENT ? ev.data.sequence_start.tag
                                                                          : ev.data.mapping_start.tag, n, err);
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            QT_ASSERT(depth > 0);
            depth--;
            break;
        case YAML_STREAM_END_EVENT:
        case YAML_NO_EVENT: done = true; break;
        default: break;
        }
        yaml_event_delete(&ev);
        if (!n) continue;
        if (rc == 0 && ++nodes > MAX_NODES)
            rc = qt_errf(err, "%s:%d:%d: more than %d YAML values; this is not a qtrain config", name, n->line,
                         n->col, MAX_NODES);
        if (rc == 0 && n->type != QT_YN_SCALAR && depth == QT_CFG_DEPTH_MAX)
            rc = qt_errf(err, "%s:%d:%d: YAML nested deeper than %d levels; a config has 2", name, n->line,
                         n->col, QT_CFG_DEPTH_MAX);
        if (rc) {
            node_free(n);
            break;
        }
        if (depth) node_add(stack[depth - 1], n);
        else *root = n;
        if (n->type != QT_YN_SCALAR) stack[depth++] = n;
    }
    yaml_parser_delete(&p);
    if (rc) {
        node_free(*root);
        *root = NULL;
    }
    return rc;
}

/* ------------------------------------------------------------------ walking the tree */

static bool is_null_node(const qt_ynode *v) {
    return v->type == QT_YN_SCALAR && !v->quoted &&
           (!v->len || !strcmp(v->text, "~") || !strcmp(v->text, "null") || !strcmp(v->text, "Null") ||
            !strcmp(v->text, "NULL"));
}

/* How a wrong-shaped value reads in a message: a list, a mapping, or its text. */
static const char *kind_word(const qt_ynode *v, char *b, size_t n) {
    if (v->type != QT_YN_SCALAR) return v->type == QT_YN_SEQ ? "a list" : "a mapping";
    snprintf(b, n, "\"%.40s%s\"", v->text, v->len > 40 ? "..." : "");
    for (char *p = b; *p; p++)
        if ((unsigned char)*p < 0x20) *p = '?';
    return b;
}

static int errat(loader *L, const qt_ynode *n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int errat(loader *L, const qt_ynode *n, const char *fmt, ...) {
    char body[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    return qt_errf(L->err, "%s:%d:%d: %s", L->file, n->line, n->col, body);
}

/* "unknown key 'lora.alpah' (did you mean 'lora.alpha'?)", or the keys that exist. */
static void unknown_key(char *b, size_t n, const char *typed, const char *section) {
    const char *sug = qt_cfg_suggest(typed);
    if (sug) {
        snprintf(b, n, "unknown key '%.80s' (did you mean '%s'?)", typed, sug);
        return;
    }
    size_t k = 0;
    if (section) {
        size_t sl = strlen(section);
        k = (size_t)snprintf(b, n, "unknown key '%.80s'; the keys of %s: are", typed, section);
        for (int i = 0, first = 1; i < qt_cfg_nfields && k < n; i++)
            if (!strncmp(qt_cfg_fields[i].key, section, sl) && qt_cfg_fields[i].key[sl] == '.')
                k += (size_t)snprintf(b + k, n - k, "%s %s", first ? "" : ",", qt_cfg_fields[i].key + sl + 1), first = 0;
    } else {
        k = (size_t)snprintf(b, n, "unknown section '%.80s'; the sections are", typed);
        for (int i = 0; i < qt_cfg_nsections && k < n; i++)
            k += (size_t)snprintf(b + k, n - k, "%s %s", i ? "," : "", qt_cfg_sections[i]);
    }
}

/* Keys must be plain names, and each at most once per mapping. */
static int check_key(loader *L, const qt_ynode *map, int i, const char *path) {
    char kb[64];
    const qt_ynode *k = map->kids[i];
    if (k->type != QT_YN_SCALAR || is_null_node(k) || memchr(k->text, 0, k->len))
        return errat(L, k, "%s%skeys must be names, got %s", path, path[0] ? ": " : "", kind_word(k, kb, sizeof kb));
    for (int j = 0; j < i; j += 2) {
        const qt_ynode *o = map->kids[j];
        if (o->type == QT_YN_SCALAR && !strcmp(o->text, k->text))
            return errat(L, k, "duplicate key '%s%s%.80s' (first at %d:%d); keep one", path, path[0] ? "." : "",
                         k->text, o->line, o->col);
    }
    return 0;
}

static int walk(loader *L, const qt_ynode *root) {
    char msg[900], kb[64];
    if (!root || is_null_node(root)) return 0; /* an empty file: all defaults */
    if (root->type != QT_YN_MAP)
        return errat(L, root, "a config is a mapping of sections (model:, quant:, lora:, data:, train:, memory:, "
                              "output:, export:), got %s", kind_word(root, kb, sizeof kb));
    for (int i = 0; i < root->n; i += 2) {
        const qt_ynode *k = root->kids[i], *v = root->kids[i + 1];
        if (check_key(L, root, i, "")) return -1;
        if (!qt_cfg_is_section(k->text)) {
            if (qt_cfg_find(k->text) >= 0) {
                const char *dot = strchr(k->text, '.');
                return errat(L, k, "key '%s': write it nested, '%.*s:' and under it '  %s: ...'", k->text,
                             (int)(dot - k->text), k->text, dot + 1);
            }
            unknown_key(msg, sizeof msg, k->text, NULL);
            return errat(L, k, "%s", msg);
        }
        if (is_null_node(v)) continue;
        if (v->type != QT_YN_MAP)
            return errat(L, v, "key '%s': expected a mapping of %s settings (indented 'key: value' lines), got %s",
                         k->text, k->text, kind_word(v, kb, sizeof kb));
        for (int j = 0; j < v->n; j += 2) {
            const qt_ynode *k2 = v->kids[j], *v2 = v->kids[j + 1];
            if (check_key(L, v, j, k->text)) return -1;
            char full[160];
            snprintf(full, sizeof full, "%s.%.100s", k->text, k2->text);
            int fi = qt_cfg_find(full);
            if (fi < 0) {
                unknown_key(msg, sizeof msg, full, k->text);
                return errat(L, k2, "%s", msg);
            }
            const qt_ynode *where;
            if (qt_cfg_set(L->cfg, &qt_cfg_fields[fi], v2, &where, msg, sizeof msg)) return errat(L, where, "%s", msg);
            L->org[fi] = (origin){L->file, false, v2->line, v2->col};
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ overrides */

/* Strict UTF-8: what a literal value must be to print as YAML and load back. */
static bool utf8_ok(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        size_t k = c < 0x80 ? 1 : (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
        if (!k || i + k > n) return false;
        for (size_t j = 1; j < k; j++)
            if ((u[i + j] & 0xC0) != 0x80) return false;
        if ((c == 0xE0 && u[i + 1] < 0xA0) || (c == 0xED && u[i + 1] > 0x9F) || (c == 0xF0 && u[i + 1] < 0x90) ||
            (c == 0xF4 && u[i + 1] > 0x8F))
            return false; /* overlong, surrogate, past U+10FFFF */
        i += k;
    }
    return true;
}

static int apply_override(loader *L, const char *ov) {
    char msg[900];
    const char *eq = strchr(ov, '=');
    if (!eq || eq == ov) return qt_errf(L->err, "--set %.200s: expected KEY=VALUE, e.g. --set lora.r=32", ov);
    char key[128];
    size_t kl = (size_t)(eq - ov);
    if (kl >= sizeof key) return qt_errf(L->err, "--set %.200s: the key is too long", ov);
    memcpy(key, ov, kl);
    key[kl] = 0;
    int fi = qt_cfg_find(key);
    if (fi < 0) {
        if (qt_cfg_is_section(key))
            return qt_errf(L->err, "--set %.200s: '%s' is a section; set one of its keys, e.g. --set %s.KEY=VALUE",
                           ov, key, key);
        const char *dot = strchr(key, '.');
        char sec[128] = "";
        if (dot) snprintf(sec, sizeof sec, "%.*s", (int)(dot - key), key);
        unknown_key(msg, sizeof msg, key, dot && qt_cfg_is_section(sec) ? sec : NULL);
        return qt_errf(L->err, "--set %.200s: %s", ov, msg);
    }
    const qt_cfg_field *f = &qt_cfg_fields[fi];
    const char *val = eq + 1;
    size_t vl = strlen(val);
    if (vl > 4 * QT_CFG_PATH_MAX) return qt_errf(L->err, "--set %.200s...: the value is too long", ov);
    char name[256];
    snprintf(name, sizeof name, "--set %.200s", ov);
    qt_ynode *root = NULL, literal = {.type = QT_YN_SCALAR, .quoted = true, .text = (char *)val, .len = vl};
    qt_ynode null_node = {.type = QT_YN_SCALAR, .text = (char *)"", .len = 0};
    const qt_ynode *v;
    if (yaml_to_tree(name, false, val, vl, &root, L->err) == 0) {
        v = root ? root : &null_node;
    } else if (f->kind == QT_CK_STR && vl && utf8_ok(val, vl)) {
        v = &literal; /* a path like "@data/x.jsonl" is not YAML, but is what was meant */
    } else {
        return -1;
    }
    const qt_ynode *where;
    int rc = qt_cfg_set(L->cfg, f, v, &where, msg, sizeof msg);
    node_free(root);
    if (rc) return qt_errf(L->err, "--set %.200s: %s", ov, msg);
    L->org[fi] = (origin){ov, true, 0, 0};
    return 0;
}

/* ------------------------------------------------------------------ cross-field checks */

static const origin *org_of(const loader *L, const char *key) {
    int i = qt_cfg_find(key);
    QT_CHECK(i >= 0, "no key %s", key);
    return &L->org[i];
}

/* "FILE:L:C: key 'K': <fmt>" with K's origin; `other` adds where that key was set. */
static int verr(loader *L, const char *key, const char *other, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int verr(loader *L, const char *key, const char *other, const char *fmt, ...) {
    char body[700], pre[300], oth[300] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    const origin *o = org_of(L, key);
    if (o->is_override) snprintf(pre, sizeof pre, "--set %.200s: ", o->where);
    else if (o->line) snprintf(pre, sizeof pre, "%s:%d:%d: ", o->where, o->line, o->col);
    else snprintf(pre, sizeof pre, "%s: ", L->file);
    if (other) {
        const origin *p = org_of(L, other);
        if (p->is_override) snprintf(oth, sizeof oth, " (%s set by --set %.200s)", other, p->where);
        else if (p->line) snprintf(oth, sizeof oth, " (%s set at %d:%d)", other, p->line, p->col);
        else snprintf(oth, sizeof oth, " (%s is the default)", other);
    }
    return qt_errf(L->err, "%skey '%s': %s%s", pre, key, body, oth);
}

static int validate(loader *L) {
    qt_config *c = L->cfg;
    char msg[700], b1[32], b2[32];
    for (int i = 0; i < qt_cfg_nfields; i++)
        if (qt_cfg_check(c, &qt_cfg_fields[i], msg, sizeof msg))
            return verr(L, qt_cfg_fields[i].key, NULL, "%s", strchr(msg, ':') + 2);

    /* model: one source of weights */
    if (c->model.path[0] && c->model.synthetic[0])
        return verr(L, "model.synthetic", "model.path", "set model.path or model.synthetic, not both");
    if (!c->model.path[0] && !c->model.synthetic[0])
        return verr(L, "model.path", NULL, "is required: a Hugging Face model folder (config.json, *.safetensors, "
                                           "tokenizer.json), or set model.synthetic for random weights");
    /* data */
    bool cuda = c->train.device == QT_CUDA;
    if (!c->data.train[0] && !c->model.synthetic[0])
        return verr(L, "data.train", NULL, "is required: a .jsonl file (only a model.synthetic run can train on "
                                           "random tokens without one)");
    if (c->data.eval[0] && !c->data.train[0])
        return verr(L, "data.eval", "data.train", "needs data.train too");
    if (c->data.eval_split > 0 && !c->data.train[0])
        return verr(L, "data.eval_split", "data.train", "holds out part of data.train, which is null");
    if (c->data.eval_split > 0 && c->data.eval[0])
        return verr(L, "data.eval_split", "data.eval", "set data.eval or data.eval_split, not both");
    if (c->train.eval_every > 0 && c->data.train[0] && !c->data.eval[0] && c->data.eval_split == 0)
        return verr(L, "train.eval_every", NULL, "there is no eval data: set data.eval or data.eval_split, or "
                                                 "train.eval_every: 0");
    if (c->data.chat_template != QT_TMPL_AUTO && c->data.format != QT_DATA_CHAT)
        return verr(L, "data.chat_template", "data.format", "only applies to data.format: chat (it is %s)",
                    qt_data_format_name(c->data.format));
    if (c->train.micro_batch * c->data.seq_len > (1 << 24))
        return verr(L, "train.micro_batch", "data.seq_len", "micro_batch x seq_len = %lld tokens per micro-batch; "
                    "the limit is %d (use train.grad_accum for larger batches)",
                    (long long)(c->train.micro_batch * c->data.seq_len), 1 << 24);
    /* train: run length */
    if (c->train.steps && c->train.epochs > 0)
        return verr(L, "train.epochs", "train.steps", "set train.steps or train.epochs, not both");
    if (c->train.steps && c->train.warmup_steps >= c->train.steps)
        return verr(L, "train.warmup_steps", "train.steps", "%lld warmup steps leave no training in %lld steps",
                    (long long)c->train.warmup_steps, (long long)c->train.steps);
    /* memory: GPU-only settings */
    if (c->memory.paged_optimizer && !cuda)
        return verr(L, "memory.paged_optimizer", "train.device",
                    "true pages optimizer state between host and GPU; it needs train.device: cuda");
    if (c->memory.stream_layers == QT_TRI_ON && !cuda)
        return verr(L, "memory.stream_layers", "train.device", "true streams layers to the GPU; it needs "
                    "train.device: cuda (use auto or false)");
    if (c->memory.paged_optimizer && c->memory.gpu_budget && c->memory.optimizer_gpu_bytes >= c->memory.gpu_budget)
        return verr(L, "memory.optimizer_gpu_bytes", "memory.gpu_budget", "%s must be well below the GPU budget %s",
                    qt_format_size(c->memory.optimizer_gpu_bytes, b1, sizeof b1),
                    qt_format_size(c->memory.gpu_budget, b2, sizeof b2));
    /* export */
    if (c->export_.gguf_type != QT_GGUF_NONE && c->export_.merge_base == QT_MERGE_NF4 && c->quant.type != QT_QUANT_NF4)
        return verr(L, "export.merge_base", "quant.type", "nf4 merges into the NF4 base, but quant.type is none");

    /* derived defaults, written out so that printing and re-loading gives the same config */
    if (!c->train.steps && c->train.epochs == 0) c->train.epochs = 1;
    if (!c->output.dir[0] && (size_t)snprintf(c->output.dir, sizeof c->output.dir, "runs/%s", c->output.name) >=
                                 sizeof c->output.dir)
        return verr(L, "output.name", NULL, "is too long");
    if (!c->data.cache_dir[0]) {
        char tmp[sizeof c->data.cache_dir + 8];
        size_t n = (size_t)snprintf(tmp, sizeof tmp, "%s/cache", c->output.dir);
        if (n >= sizeof c->data.cache_dir) return verr(L, "output.dir", NULL, "is too long to hold cache/ under it");
        memcpy(c->data.cache_dir, tmp, n + 1);
    }
    return 0;
}

int qt_config_validate(qt_config *cfg, qt_err *err) {
    loader L = {.cfg = cfg, .file = "config", .err = err};
    return validate(&L);
}

/* ------------------------------------------------------------------ loading */

/* "configs/llama70b-lora.yaml" -> "llama70b-lora", in the name charset. */
static void default_name(const char *path, char *out, size_t n) {
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    size_t len = strlen(b);
    if (len > 5 && !strcmp(b + len - 5, ".yaml")) len -= 5;
    else if (len > 4 && !strcmp(b + len - 4, ".yml")) len -= 4;
    if (len >= n) len = n - 1;
    for (size_t i = 0; i < len; i++) out[i] = isalnum((unsigned char)b[i]) || strchr("._-", b[i]) ? b[i] : '-';
    out[len] = 0;
    if (!len || out[0] == '.') snprintf(out, n, "run");
}

int qt_config_load_string(qt_config *cfg, const char *text, size_t len, const char *name,
                          const char *const *overrides, int n_overrides, qt_err *err) {
    QT_CHECK(qt_cfg_nfields <= 64, "origin table too small");
    loader L = {.cfg = cfg, .file = name, .err = err};
    for (int i = 0; i < qt_cfg_nfields; i++) L.org[i] = (origin){name, false, 0, 0};
    qt_config_defaults(cfg);
    default_name(name, cfg->output.name, sizeof cfg->output.name);
    if (len > QT_CFG_FILE_MAX)
        return qt_errf(err, "%s: %zu bytes; a config is at most %u bytes", name, len, QT_CFG_FILE_MAX);
    qt_ynode *root;
    if (yaml_to_tree(name, true, text, len, &root, err)) return -1;
    int rc = walk(&L, root);
    node_free(root);
    for (int i = 0; rc == 0 && i < n_overrides; i++) rc = apply_override(&L, overrides[i]);
    return rc ? rc : validate(&L);
}

int qt_config_load(qt_config *cfg, const char *path, const char *const *overrides, int n_overrides, qt_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return qt_errf(err, "%s: cannot open the config: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f);
        return qt_errf(err, "%s: is a folder; give the config's .yaml file", path);
    }
    /* read at most one byte past the limit, so pipes work and huge files are refused */
    char *buf = malloc(QT_CFG_FILE_MAX + 1);
    QT_CHECK(buf, "out of host memory");
    size_t n = fread(buf, 1, QT_CFG_FILE_MAX + 1, f);
    bool failed = ferror(f);
    fclose(f);
    int rc;
    if (failed) rc = qt_errf(err, "%s: cannot read the config", path);
    else if (n > QT_CFG_FILE_MAX) rc = qt_errf(err, "%s: larger than %u bytes; this is not a qtrain config", path, QT_CFG_FILE_MAX);
    else rc = qt_config_load_string(cfg, buf, n, path, overrides, n_overrides, err);
    free(buf);
    return rc;
}

const char *qt_nf4_cache_dir(const qt_config *cfg, char *buf, size_t n) {
    if (!cfg->quant.cache || cfg->quant.type != QT_QUANT_NF4 || !cfg->model.path[0]) return NULL;
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    int k;
    if (cfg->quant.cache_dir[0]) k = snprintf(buf, n, "%s", cfg->quant.cache_dir);
    else if (xdg && xdg[0] == '/') k = snprintf(buf, n, "%s/qtrain", xdg);
    else if (home && home[0]) k = snprintf(buf, n, "%s/.cache/qtrain", home);
    else return NULL;
    return k > 0 && (size_t)k < n ? buf : NULL;
}
