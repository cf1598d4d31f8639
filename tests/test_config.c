/* trainer/config: random valid configs load to the values written and survive
 * print -> load; bad snippets fail with the right key at the right LINE:COL (computed
 * here from the snippet text); overrides; sizes; hostile input; shipped configs; docs. */
#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "trainer/config.h"
#include "trainer/config_internal.h" /* the key list, to check the docs cover every key */

/* ------------------------------------------------------------------ helpers */

static uint64_t rnd(uint64_t n) { return qt_rng_next(tu_rng()) % n; }
static double unif(double lo, double hi) { return lo + (hi - lo) * qt_rng_uniform(tu_rng()); }
static int coin(void) { return (int)rnd(2); }

/* Write text to a fresh temp file; returns its path (static buffer, one at a time). */
static const char *tmp_write(const char *text, size_t len) {
    static char path[256];
    const char *dir = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/qt_cfg_XXXXXX.yaml", dir && *dir ? dir : "/tmp");
    int fd = mkstemps(path, 5);
    QT_CHECK(fd >= 0, "mkstemps %s", path);
    FILE *f = fdopen(fd, "wb");
    QT_CHECK(f && fwrite(text, 1, len, f) == len, "write %s", path);
    fclose(f);
    return path;
}

static int load_text(qt_config *c, const char *text, size_t len, const char *const *sets, int n, qt_err *e,
                     char *path_out) {
    const char *p = tmp_write(text, len);
    if (path_out) strcpy(path_out, p);
    int rc = qt_config_load(c, p, sets, n, e);
    unlink(p);
    return rc;
}

/* Print, load the printed text, print again: same struct, same text. */
static void check_round_trip(const qt_config *c, const char *what) {
    char *t1 = NULL, *t2 = NULL;
    size_t n1 = 0, n2 = 0;
    FILE *f = open_memstream(&t1, &n1);
    qt_config_print(c, f);
    fclose(f);
    qt_config *d = malloc(sizeof *d);
    qt_err e;
    int rc = load_text(d, t1, n1, NULL, 0, &e, NULL);
    TU_EXPECT(rc == 0, "%s: the printed config does not load: %s\n%s", what, e.msg, t1);
    if (rc == 0) {
        TU_EXPECT(memcmp(c, d, sizeof *c) == 0, "%s: printed and re-loaded config differs", what);
        f = open_memstream(&t2, &n2);
        qt_config_print(d, f);
        fclose(f);
        TU_EXPECT(n1 == n2 && !memcmp(t1, t2, n1), "%s: second print differs", what);
    }
    free(d);
    free(t1);
    free(t2);
}

/* A growing text buffer. */
typedef struct { char *s; size_t n, cap; } sbuf;
static void put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sbuf *b, const char *fmt, ...) {
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int k = vsnprintf(b->s + b->n, b->cap - b->n, fmt, ap);
        va_end(ap);
        if (b->s && (size_t)k < b->cap - b->n) {
            b->n += (size_t)k;
            return;
        }
        b->cap = b->cap * 2 + (size_t)k + 64;
        b->s = realloc(b->s, b->cap);
    }
}

/* YAML double-quoted form of any byte string without NUL (the test's own escaper). */
static void put_quoted(sbuf *b, const char *s) {
    put(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') put(b, "\\%c", c);
        else if (c < 0x20) put(b, "\\x%02x", c);
        else put(b, "%c", c);
    }
    put(b, "\"");
}

static void rand_path(char *out, int maxlen) {
    static const char *parts[] = {"data", "my models", "llåma", "q\"uote", "back\\slash", "a:b", "x #y",
                                  "tab\there", "-dash", "ünï", "v2", "[br]"};
    int n = 1 + (int)rnd(4);
    out[0] = 0;
    if (coin()) strcat(out, "/");
    for (int i = 0; i < n && (int)strlen(out) + 20 < maxlen; i++) {
        strcat(out, parts[rnd(sizeof parts / sizeof *parts)]);
        if (i + 1 < n) strcat(out, "/");
    }
    strcat(out, ".jsonl");
}

/* ------------------------------------------------------------------ random valid configs */

/* One section's "key: value" pairs, emitted in random order, block or flow style. */
typedef struct { char key[32]; char val[600]; } kv;
static void put_section(sbuf *b, const char *name, kv *items, int n) {
    for (int i = n - 1; i > 0; i--) { /* shuffle */
        int j = (int)rnd((uint64_t)i + 1);
        kv t = items[i];
        items[i] = items[j];
        items[j] = t;
    }
    if (coin()) {
        put(b, "%s: {", name);
        for (int i = 0; i < n; i++) put(b, "%s%s: %s", i ? ", " : "", items[i].key, items[i].val);
        put(b, "}\n");
    } else {
        put(b, "%s:   # section\n", name);
        for (int i = 0; i < n; i++) put(b, "  %s: %s\n", items[i].key, items[i].val);
    }
}

#define KV(fmt, ...) (snprintf(it[n].key, sizeof it[n].key, "%s", k), snprintf(it[n].val, sizeof it[n].val, fmt, __VA_ARGS__), n++)

static const char *bool_word(bool v) {
    static const char *t[] = {"true", "True", "yes", "on"}, *f[] = {"false", "FALSE", "no", "off"};
    return v ? t[rnd(4)] : f[rnd(4)];
}

static void quoted_into(char *dst, size_t cap, const char *s) {
    sbuf q = {0};
    put_quoted(&q, s);
    snprintf(dst, cap, "%s", q.s);
    free(q.s);
}

static void random_config(int iter) {
    static const char *tnames[] = {"q", "k", "v", "o", "gate", "up", "down"};
    static const char *dtypes[] = {"f32", "bf16", "f16"}; /* index = qt_dtype, from the docs */
    static const char *formats[] = {"text", "alpaca", "chat"}, *tmpls[] = {"auto", "llama3", "chatml", "llama2"};
    static const char *scheds[] = {"constant", "linear", "cosine"};
    static const char *ggufs[] = {"none", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m"};
    static const struct { const char *u; uint64_t mul; } units[] = {
        {"GiB", 1ull << 30}, {"MiB", 1ull << 20}, {"GB", 1000000000}, {"mb", 1000000}, {"", 1}};
    qt_config *w = calloc(1, sizeof *w), *c = malloc(sizeof *c); /* w: what we wrote */
    sbuf b = {0};
    kv it[24];
    int n;
    const char *k;
    put(&b, "# random config %d\n", iter);

    n = 0;
    rand_path(w->model.path, 200);
    k = "path", KV("%s", ""), quoted_into(it[n - 1].val, sizeof it[0].val, w->model.path);
    int dt = (int)rnd(3);
    w->model.dtype = (qt_dtype)dt;
    k = "dtype", KV("%s", coin() ? dtypes[dt] : dt == 1 ? "BF16" : dt == 2 ? "F16" : "F32");
    k = "synthetic", KV("%s", "null");
    put_section(&b, "model", it, n);

    n = 0;
    w->quant.type = (qt_quant_type)rnd(2);
    w->quant.double_quant = coin();
    w->quant.block_size = 32 << rnd(4);
    k = "type", KV("%s", w->quant.type ? "nf4" : coin() ? "none" : "null");
    k = "double_quant", KV("%s", bool_word(w->quant.double_quant));
    k = "block_size", KV("%lld", (long long)w->quant.block_size);
    w->quant.cache = coin();
    k = "cache", KV("%s", bool_word(w->quant.cache));
    if (coin()) {
        rand_path(w->quant.cache_dir, 200);
        k = "cache_dir", KV("%s", ""), quoted_into(it[n - 1].val, sizeof it[0].val, w->quant.cache_dir);
    } else {
        k = "cache_dir", KV("%s", "null");
    }
    put_section(&b, "quant", it, n);

    n = 0;
    w->lora.r = 1 + (int64_t)rnd(4096);
    k = "r", KV("%lld", (long long)w->lora.r);
    k = "alpha", KV("%.17g", unif(0.001, 1000)), w->lora.alpha = strtod(it[n - 1].val, NULL);
    k = "dropout", KV("%.17g", unif(0, 0.999)), w->lora.dropout = strtod(it[n - 1].val, NULL);
    w->lora.rslora = coin();
    k = "rslora", KV("%s", bool_word(w->lora.rslora));
    w->lora.targets = 1 + (uint32_t)rnd(QT_LORA_ALL);
    {
        int style = w->lora.targets == QT_LORA_ALL && coin() ? 3 : (int)rnd(3); /* [q, v] "q,v" [q_proj] all */
        sbuf t = {0};
        put(&t, "%s", style == 1 ? "\"" : style == 3 ? "all" : "[");
        for (int i = 0, first = 1; i < 7 && style != 3; i++)
            if (w->lora.targets & (1u << i))
                put(&t, "%s%s%s", first ? "" : style == 1 ? "," : ", ", tnames[i], style == 2 ? "_proj" : ""),
                    first = 0;
        put(&t, "%s", style == 1 ? "\"" : style == 3 ? "" : "]");
        k = "targets", KV("%s", t.s);
        free(t.s);
    }
    w->lora.init_seed = (int64_t)(qt_rng_next(tu_rng()) >> 2);
    k = "init_seed", KV("%lld", (long long)w->lora.init_seed);
    put_section(&b, "lora", it, n);

    n = 0;
    rand_path(w->data.train, 300);
    k = "train", KV("%s", ""), quoted_into(it[n - 1].val, sizeof it[0].val, w->data.train);
    bool has_eval_file = coin();
    if (has_eval_file) {
        rand_path(w->data.eval, 300);
        k = "eval", KV("%s", ""), quoted_into(it[n - 1].val, sizeof it[0].val, w->data.eval);
    } else {
        k = "eval_split", KV("%.17g", coin() ? 0.0 : unif(0, 0.5)), w->data.eval_split = strtod(it[n - 1].val, NULL);
    }
    w->data.format = (qt_data_format)rnd(3);
    w->data.chat_template = w->data.format == QT_DATA_CHAT ? (qt_chat_template)rnd(4) : QT_TMPL_AUTO;
    k = "format", KV("%s", formats[w->data.format]);
    k = "chat_template", KV("%s", tmpls[w->data.chat_template]);
    w->data.seq_len = 16 + (int64_t)rnd(131072 - 15);
    k = "seq_len", KV("%lld", (long long)w->data.seq_len);
    w->data.packing = coin();
    k = "packing", KV("%s", bool_word(w->data.packing));
    w->data.shuffle_seed = (int64_t)rnd(1000000000);
    k = "shuffle_seed", KV("%lld", (long long)w->data.shuffle_seed);
    if (coin()) {
        rand_path(w->data.cache_dir, 200);
        k = "cache_dir", KV("%s", ""), quoted_into(it[n - 1].val, sizeof it[0].val, w->data.cache_dir);
    }
    put_section(&b, "data", it, n);

    n = 0;
    w->train.device = coin() ? QT_CUDA : QT_CPU;
    k = "device", KV("%s", w->train.device == QT_CUDA ? "cuda" : "cpu");
    w->train.micro_batch = 1 + (int64_t)rnd((uint64_t)((1 << 24) / w->data.seq_len < 4096 ? (1 << 24) / w->data.seq_len : 4096));
    k = "micro_batch", KV("%lld", (long long)w->train.micro_batch);
    w->train.grad_accum = 1 + (int64_t)rnd(65536);
    k = "grad_accum", KV("%lld", (long long)w->train.grad_accum);
    if (coin()) {
        w->train.steps = 2 + (int64_t)rnd(1000000);
        w->train.warmup_steps = (int64_t)rnd((uint64_t)w->train.steps);
        k = "steps", KV("%lld", (long long)w->train.steps);
    } else {
        k = "epochs", KV("%.17g", unif(0.01, 20)), w->train.epochs = strtod(it[n - 1].val, NULL);
        w->train.warmup_steps = (int64_t)rnd(5000);
    }
    k = "warmup_steps", KV("%lld", (long long)w->train.warmup_steps);
    k = "lr", KV("%.6e", pow(10, unif(-7, -0.01))), w->train.lr = strtod(it[n - 1].val, NULL);
    w->train.lr_schedule = (qt_lr_schedule)rnd(3);
    k = "lr_schedule", KV("%s", scheds[w->train.lr_schedule]);
    k = "min_lr_ratio", KV("%.17g", unif(0, 1)), w->train.min_lr_ratio = strtod(it[n - 1].val, NULL);
    k = "weight_decay", KV("%.17g", unif(0, 1)), w->train.weight_decay = strtod(it[n - 1].val, NULL);
    k = "adam_beta1", KV("%.17g", unif(0, 0.999)), w->train.adam_beta1 = strtod(it[n - 1].val, NULL);
    k = "adam_beta2", KV("%.17g", unif(0, 0.9999)), w->train.adam_beta2 = strtod(it[n - 1].val, NULL);
    k = "adam_eps", KV("%.17g", pow(10, unif(-12, -3))), w->train.adam_eps = strtod(it[n - 1].val, NULL);
    k = "max_grad_norm", KV("%.17g", coin() ? 0.0 : unif(0, 10)), w->train.max_grad_norm = strtod(it[n - 1].val, NULL);
    w->train.grad_checkpointing = coin();
    k = "grad_checkpointing", KV("%s", bool_word(w->train.grad_checkpointing));
    w->train.seed = (int64_t)rnd(1u << 31);
    k = "seed", KV("%lld", (long long)w->train.seed);
    bool has_eval = has_eval_file || w->data.eval_split > 0;
    w->train.eval_every = has_eval ? (int64_t)rnd(1000) : 0;
    k = "eval_every", KV("%lld", (long long)w->train.eval_every);
    w->train.log_every = 1 + (int64_t)rnd(1000);
    k = "log_every", KV("%lld", (long long)w->train.log_every);
    w->train.max_nonfinite_steps = (int64_t)rnd(100);
    k = "max_nonfinite_steps", KV("%lld", (long long)w->train.max_nonfinite_steps);
    put_section(&b, "train", it, n);

    n = 0;
    bool cuda = w->train.device == QT_CUDA;
    if (coin()) {
        int u = (int)rnd(4); /* a budget from 1 to ~100 GiB in a random unit */
        uint64_t cnt = ((1ull << 30) + units[u].mul - 1) / units[u].mul + rnd((100ull << 30) / units[u].mul);
        w->memory.gpu_budget = cnt * units[u].mul;
        k = "gpu_budget", KV("%llu%s%s", (unsigned long long)cnt, coin() ? " " : "", units[u].u);
    } else {
        k = "gpu_budget", KV("%s", coin() ? "auto" : "null");
    }
    w->memory.paged_optimizer = cuda && coin();
    k = "paged_optimizer", KV("%s", bool_word(w->memory.paged_optimizer));
    w->memory.optimizer_gpu_bytes = (1 + rnd(1000)) << 20; /* < 1 GiB <= budget */
    k = "optimizer_gpu_bytes", KV("%lluMiB", (unsigned long long)(w->memory.optimizer_gpu_bytes >> 20));
    w->memory.stream_layers = cuda ? (qt_tristate)((int)rnd(3) - 1) : (qt_tristate)((int)rnd(2) - 1);
    k = "stream_layers", KV("%s", w->memory.stream_layers == QT_TRI_AUTO ? "auto" : bool_word(w->memory.stream_layers));
    w->memory.keep_activations = coin();
    k = "keep_activations", KV("%s", bool_word(w->memory.keep_activations));
    put_section(&b, "memory", it, n);

    n = 0;
    snprintf(w->output.name, sizeof w->output.name, "run-%d_%llu.v%d", iter, (unsigned long long)rnd(100000), (int)rnd(9));
    k = "name", KV("%s", w->output.name);
    if (coin()) {
        rand_path(w->output.dir, 200);
        k = "dir", KV("%s", ""), quoted_into(it[n - 1].val, sizeof it[0].val, w->output.dir);
    } else {
        snprintf(w->output.dir, sizeof w->output.dir, "runs/%s", w->output.name);
    }
    if (!w->data.cache_dir[0]) snprintf(w->data.cache_dir, sizeof w->data.cache_dir, "%.4000s/cache", w->output.dir);
    w->output.checkpoint_every = (int64_t)rnd(10000);
    k = "checkpoint_every", KV("%lld", (long long)w->output.checkpoint_every);
    w->output.keep_checkpoints = (int64_t)rnd(10);
    k = "keep_checkpoints", KV("%lld", (long long)w->output.keep_checkpoints);
    put_section(&b, "output", it, n);

    n = 0;
    w->export_.adapter = coin();
    w->export_.gguf_type = (qt_gguf_type)rnd(6);
    w->export_.merge_base = w->quant.type == QT_QUANT_NF4 || w->export_.gguf_type == QT_GGUF_NONE ? (qt_merge_base)rnd(2) : QT_MERGE_ORIGINAL;
    k = "adapter", KV("%s", bool_word(w->export_.adapter));
    k = "gguf_type", KV("%s", ggufs[w->export_.gguf_type]);
    k = "merge_base", KV("%s", w->export_.merge_base ? "nf4" : "original");
    put_section(&b, "export", it, n);

    if (!w->train.steps && w->train.epochs == 0) w->train.epochs = 1;
    qt_err e;
    char what[64];
    snprintf(what, sizeof what, "random config %d", iter);
    if (load_text(c, b.s, b.n, NULL, 0, &e, NULL) != 0) {
        TU_EXPECT(0, "%s does not load: %s\n%s", what, e.msg, b.s);
    } else {
        /* every field as written (w) */
        TU_EXPECT(memcmp(c, w, sizeof *c) == 0, "%s: loaded values differ from the written ones\n%s", what, b.s);
#define SAME(m, fmt) TU_EXPECT(c->m == w->m, "%s: " #m " = " fmt ", wrote " fmt, what, c->m, w->m)
#define SAMES(m) TU_EXPECT(!strcmp(c->m, w->m), "%s: " #m " = '%s', wrote '%s'", what, c->m, w->m)
        SAMES(model.path); SAMES(data.train); SAMES(data.eval); SAMES(data.cache_dir); SAMES(output.dir);
        SAMES(output.name); SAME(lora.alpha, "%.17g"); SAME(train.lr, "%.17g"); SAME(lora.targets, "%u");
        SAME(model.dtype, "%d"); SAME(memory.stream_layers, "%d"); SAME(train.epochs, "%g");
        check_round_trip(c, what);
    }
    free(b.s);
    free(w);
    free(c);
}

/* ------------------------------------------------------------------ bad snippets */

/* The 1-based line:column of the occ-th (1-based) occurrence of tok in text. */
static void pos_of(const char *text, const char *tok, int occ, int *line, int *col) {
    const char *p = text - 1;
    for (int i = 0; i < occ; i++) {
        p = strstr(p + 1, tok);
        QT_CHECK(p, "token '%s' not in the snippet", tok);
    }
    *line = 1;
    const char *bol = text;
    for (const char *q = text; q < p; q++)
        if (*q == '\n') (*line)++, bol = q + 1;
    *col = 1 + (int)(p - bol);
}

typedef struct {
    const char *yaml, *tok; /* tok: the offending token, NULL when the error has no position */
    int occ;
    const char *must1, *must2;
} bad_case;

static const bad_case bad_cases[] = {
    {"lora:\n  r: sixteen\n", "sixteen", 1, "key 'lora.r'", "expected a positive integer"},
    {"lora:\n  r: 0\n", "0", 1, "key 'lora.r'", "got \"0\""},
    {"lora:\n  alpha: 8\n  r: -3\n", "-3", 1, "key 'lora.r'", NULL},
    {"lora:\n  r: \"16\"\n", "\"16\"", 1, "key 'lora.r'", "remove the quotes"},
    {"lora:\n  r: [16]\n", "[16]", 1, "key 'lora.r'", "got a list"},
    {"lora:\n  r: {a: 1}\n", "{a", 1, "key 'lora.r'", "got a mapping"},
    {"lora:\n  r: 8\n  alpah: 32\n", "alpah", 1, "'lora.alpah'", "did you mean 'lora.alpha'?"},
    {"lora: {r: 8, dropout: 1.0}\n", "1.0", 1, "key 'lora.dropout'", NULL},
    {"train:\n  lr: 0\n", "0", 1, "key 'train.lr'", "positive"},
    {"train:\n  lr: -1e-4\n", "-1e-4", 1, "key 'train.lr'", NULL},
    {"train:\n  lr: '1e-4'\n", "'1e-4'", 1, "key 'train.lr'", "remove the quotes"},
    {"train:\n  lr: [1, 2]\n", "[1", 1, "key 'train.lr'", "got a list"},
    {"train:\n  learning_rate: 1e-4\n", "learning_rate", 1, "'train.learning_rate'", "did you mean 'train.lr'?"},
    {"train:\n  steps: 1e3\n", "1e3", 1, "key 'train.steps'", "without a fraction"},
    {"train:\n  seed: 99999999999999999999\n", "999", 1, "key 'train.seed'", NULL},
    {"data:\n  seq_len: 1000000\n", "1000000", 1, "key 'data.seq_len'", "131072"},
    {"data:\n  packing: maybe\n", "maybe", 1, "key 'data.packing'", "true or false"},
    {"data:\n  eval_split: 0.7\n", "0.7", 1, "key 'data.eval_split'", NULL},
    {"data:\n  train: \"\"\n", "\"\"", 1, "key 'data.train'", "null"},
    {"memory:\n  gpu_budget: 24 gigs\n", "24 gigs", 1, "key 'memory.gpu_budget'", "unknown unit"},
    {"memory:\n  gpu_budget: 24G\n", "24G", 1, "key 'memory.gpu_budget'", "ambiguous"},
    {"memory:\n  gpu_budget: 1.5.3GiB\n", "1.5.3", 1, "key 'memory.gpu_budget'", NULL},
    {"memory:\n  gpu_budget: -1GiB\n", "-1GiB", 1, "key 'memory.gpu_budget'", "negative"},
    {"memory:\n  gpu_budget: 1MiB\n", "1MiB", 1, "key 'memory.gpu_budget'", "256MiB"},
    {"memory:\n  stream_layers: sometimes\n", "sometimes", 1, "key 'memory.stream_layers'", NULL},
    {"model:\n  dtype: fp16\n", "fp16", 1, "key 'model.dtype'", "did you mean 'f16'?"},
    {"model:\n  synthetic: llama-3.1-7b\n", "llama-3.1-7b", 1, "key 'model.synthetic'", "did you mean 'llama-3.1-8b'?"},
    {"output:\n  name: my run\n", "my run", 1, "key 'output.name'", NULL},
    {"export:\n  gguf_type: q4_k\n", "q4_k", 1, "key 'export.gguf_type'", "did you mean 'q4_k_m'?"},
    {"lora:\n  targets: [q, qq]\n", "qq", 1, "key 'lora.targets'", "unknown target"},
    {"lora:\n  targets: [q, v, q]\n", "q]", 1, "key 'lora.targets'", "listed twice"},
    {"lora:\n  targets: []\n", "[]", 1, "key 'lora.targets'", "empty list"},
    {"lora:\n  targets: [[q]]\n", "[q]", 1, "key 'lora.targets'", "got a list"},
    {"lora:\n  r: 8\n  alpha: 16\n  r: 16\n", "r:", 2, "duplicate key 'lora.r'", "first at 2:3"},
    {"lora:\n  r: 8\nlora:\n  r: 9\n", "lora", 2, "duplicate key 'lora'", NULL},
    {"lorra:\n  r: 8\n", "lorra", 1, "'lorra'", "did you mean 'lora'?"},
    {"lr: 0.1\n", "lr", 1, "'lr'", "did you mean 'train.lr'?"},
    {"lora.r: 8\n", "lora.r", 1, "key 'lora.r'", "nested"},
    {"lora: 16\n", "16", 1, "key 'lora'", "mapping"},
    {"[1, 2]\n", "[", 1, "a config is a mapping", NULL},
    {"lora:\n  r: a: b\n", ": b", 1, "YAML syntax error", "mapping values"},
    {"lora:\n\tr: 8\n", "\t", 1, "YAML syntax error", "tabs"},
    {"lora:\n  r: &x 8\n  alpha: *x\n", "*x", 1, "aliases", NULL},
    {"lora:\n  r: 8\n---\nlora:\n  r: 9\n", "---", 1, "second YAML document", NULL},
    {"lora:\n  r: !!str 16\n", "!!str", 1, "key 'lora.r'", "quoted"},
    {"lora:\n  r: !custom 16\n", "!custom", 1, "tag '!custom'", NULL},
    {"lora:\n  r: \xff\n", "\xff", 1, "UTF-8", NULL},
    /* across keys: reported at the value of the first key named */
    {"model:\n  synthetic: tiny\ntrain:\n  device: cpu\nmemory:\n  paged_optimizer: true\n", "true", 1,
     "key 'memory.paged_optimizer'", "train.device set at 4:11"},
    {"model:\n  synthetic: tiny\nmemory:\n  stream_layers: on\ntrain: {device: cpu}\n", "on", 1,
     "key 'memory.stream_layers'", "cuda"},
    {"model:\n  path: m\n  synthetic: tiny\n", "tiny", 1, "key 'model.synthetic'", "not both"},
    {"model: {synthetic: tiny}\ntrain:\n  steps: 10\n  epochs: 2.5\n", "2.5", 1, "key 'train.epochs'", "not both"},
    {"model: {synthetic: tiny}\ntrain:\n  steps: 10\n  warmup_steps: 10\n", "10", 2, "key 'train.warmup_steps'", NULL},
    {"model: {synthetic: tiny}\ndata:\n  chat_template: chatml\n", "chatml", 1, "key 'data.chat_template'", "chat"},
    {"model: {path: m}\ndata:\n  train: t.jsonl\ntrain:\n  eval_every: 50\n", "50", 1, "key 'train.eval_every'", "eval"},
    {"model: {path: m}\ndata:\n  train: t.jsonl\n  eval: e.jsonl\n  eval_split: 0.1\n", "0.1", 1, "key 'data.eval_split'", NULL},
    {"model: {synthetic: tiny}\nmemory:\n  gpu_budget: 1GiB\n  paged_optimizer: true\n  optimizer_gpu_bytes: 2GiB\n",
     "2GiB", 1, "key 'memory.optimizer_gpu_bytes'", "1GiB"},
    {"model: {synthetic: tiny}\ntrain:\n  micro_batch: 4096\ndata:\n  seq_len: 131072\n", "4096", 1, "key 'train.micro_batch'", NULL},
    {"model: {synthetic: tiny}\nquant: {type: none}\nexport: {gguf_type: q8_0, merge_base: nf4}\n", "nf4", 1, "key 'export.merge_base'", NULL},
    /* no position: the offending setting is a default */
    {"lora:\n  r: 8\n", NULL, 0, "key 'model.path'", "required"},
    {"model: {path: m}\n", NULL, 0, "key 'data.train'", "required"},
    {"", NULL, 0, "key 'model.path'", NULL},
};

static void check_error(const char *what, const char *msg, const char *prefix, const char *must1, const char *must2) {
    TU_EXPECT(!strncmp(msg, prefix, strlen(prefix)), "%s: message should start with '%s': %s", what, prefix, msg);
    TU_EXPECT(strstr(msg, must1), "%s: message lacks \"%s\": %s", what, must1, msg);
    TU_EXPECT(!must2 || strstr(msg, must2), "%s: message lacks \"%s\": %s", what, must2, msg);
    TU_EXPECT(!strchr(msg, '\n'), "%s: message is more than one line: %s", what, msg);
}

static void test_bad_snippets(qt_config *c) {
    int n = (int)(sizeof bad_cases / sizeof *bad_cases);
    for (int i = 0; i < n; i++) {
        const bad_case *b = &bad_cases[i];
        char path[256], prefix[300], what[64];
        qt_err e = {{0}};
        int rc = load_text(c, b->yaml, strlen(b->yaml), NULL, 0, &e, path);
        snprintf(what, sizeof what, "bad snippet %d", i);
        TU_EXPECT(rc == -1, "%s loaded:\n%s", what, b->yaml);
        if (rc != -1) continue;
        if (b->tok) {
            int line, col;
            pos_of(b->yaml, b->tok, b->occ, &line, &col);
            snprintf(prefix, sizeof prefix, "%s:%d:%d: ", path, line, col);
        } else {
            snprintf(prefix, sizeof prefix, "%s: ", path);
        }
        check_error(what, e.msg, prefix, b->must1, b->must2);
    }
    printf("bad snippets: %d checked\n", n);
}

/* ------------------------------------------------------------------ hostile input */

static void test_hostile(qt_config *c) {
    qt_err e;
    char path[256], prefix[300];
    int line, col;
    /* deep nesting: refused at level 16 (root map 1, lora 2, then the 15th '[') */
    size_t depth = 200000;
    char *t = malloc(2 * depth + 64);
    int k = sprintf(t, "lora:\n  r: ");
    memset(t + k, '[', depth);
    memset(t + k + depth, ']', depth);
    strcpy(t + k + 2 * depth, "\n");
    TU_EXPECT(load_text(c, t, strlen(t), NULL, 0, &e, path) == -1, "deep nesting loaded");
    pos_of(t, "[", 1, &line, &col);
    snprintf(prefix, sizeof prefix, "%s:%d:%d: ", path, line, col + QT_CFG_DEPTH_MAX - 2);
    check_error("deep nesting", e.msg, prefix, "nested deeper", NULL);
    /* a string past the limit */
    k = sprintf(t, "data:\n  train: ");
    memset(t + k, 'a', 5000);
    strcpy(t + k + 5000, ".jsonl\n");
    TU_EXPECT(load_text(c, t, strlen(t), NULL, 0, &e, path) == -1, "a 5006-byte path loaded");
    pos_of(t, "aaa", 1, &line, &col);
    snprintf(prefix, sizeof prefix, "%s:%d:%d: ", path, line, col);
    check_error("long path", e.msg, prefix, "key 'data.train'", "limit");
    /* a long unknown key: the message stays one bounded line */
    k = sprintf(t, "lora:\n  ");
    memset(t + k, 'z', 1000); /* YAML caps implicit keys at 1024 characters */
    strcpy(t + k + 1000, ": 1\n");
    TU_EXPECT(load_text(c, t, strlen(t), NULL, 0, &e, path) == -1, "a long key loaded");
    snprintf(prefix, sizeof prefix, "%s:2:3: ", path);
    check_error("long key", e.msg, prefix, "unknown key", NULL);
    free(t);
    /* too many values */
    sbuf b = {0};
    put(&b, "lora:\n  targets: [");
    for (int i = 0; i < 20000; i++) put(&b, "q, ");
    put(&b, "q]\n");
    TU_EXPECT(load_text(c, b.s, b.n, NULL, 0, &e, path) == -1, "20001 values loaded");
    TU_EXPECT(strstr(e.msg, "more than"), "too many values: %s", e.msg);
    /* too large */
    b.n = 0;
    put(&b, "model: {synthetic: tiny}\n");
    while (b.n <= QT_CFG_FILE_MAX) put(&b, "# padding padding padding padding padding padding padding padding\n");
    TU_EXPECT(load_text(c, b.s, b.n, NULL, 0, &e, path) == -1, "a %zu-byte file loaded", b.n);
    TU_EXPECT(strstr(e.msg, "larger than"), "too large: %s", e.msg);
    free(b.s);
    /* not a file */
    TU_EXPECT(qt_config_load(c, "/nonexistent/x.yaml", NULL, 0, &e) == -1 && strstr(e.msg, "/nonexistent/x.yaml"),
              "missing file: %s", e.msg);
    TU_EXPECT(qt_config_load(c, "/tmp", NULL, 0, &e) == -1 && strstr(e.msg, "folder"), "folder: %s", e.msg);
    /* random mutations of a valid config: never a crash; what loads must round-trip */
    const char *base = "model: {synthetic: tiny}\nlora:\n  r: 8\n  targets: [q, v]\ntrain:\n  device: cpu\n"
                       "  lr: 1e-3\nmemory:\n  gpu_budget: 2GiB\n";
    size_t bl = strlen(base);
    int loaded = 0;
    for (int i = 0; i < 2000; i++) {
        char m[256];
        memcpy(m, base, bl);
        static const char set[] = "[]{}:,-#&*!|>'\"\t\n 0aZ\x80";
        for (int j = 1 + (int)rnd(3); j > 0; j--) m[rnd(bl)] = set[rnd(sizeof set - 1)];
        if (load_text(c, m, bl, NULL, 0, &e, NULL) == 0) {
            loaded++;
            if (loaded <= 50) check_round_trip(c, "mutated config");
        } else {
            TU_EXPECT(e.msg[0] && !strchr(e.msg, '\n'), "mutation %d: bad message: %s", i, e.msg);
        }
    }
    /* found by tests/fuzz: a tab after a comma in lora.targets made the parser skip past the string's end */
    const char *tabs = "model: {synthetic: tiny}\nlora:\n  targets: \"q,\\tv , \\t down\"\n";
    TU_EXPECT(load_text(c, tabs, strlen(tabs), NULL, 0, &e, NULL) == 0 &&
                  c->lora.targets == ((1u << QT_LORA_Q) | (1u << QT_LORA_V) | (1u << QT_LORA_DOWN)),
              "targets with tabs: %s", e.msg);
    /* found by tests/fuzz: strings that YAML cannot hold raw must still print and load back */
    const char *esc = "model: {synthetic: tiny}\ndata:\n  train: \"a\\x80b\\x9f\\u0085c\\uFFFEd\\uFFFF\\x7f\\te\"\n";
    TU_EXPECT(load_text(c, esc, strlen(esc), NULL, 0, &e, NULL) == 0, "escaped controls: %s", e.msg);
    check_round_trip(c, "C1 controls and U+FFFE in a path");
    /* ... and an override that is not UTF-8 is refused, not taken as a literal */
    const char *bad_utf8[] = {"data.train=/tmp/x\x94y.jsonl"};
    TU_EXPECT(load_text(c, esc, strlen(esc), bad_utf8, 1, &e, NULL) == -1 && strstr(e.msg, "UTF-8"),
              "non-UTF-8 override: %s", e.msg);
    printf("hostile input: ok (%d of 2000 mutated configs still valid)\n", loaded);
}

/* ------------------------------------------------------------------ overrides */

static void test_overrides(qt_config *c) {
    const char *base = "model: {synthetic: tiny}\ntrain:\n  device: cuda\n  lr: 1e-3\nlora: {r: 8}\n";
    qt_err e;
    char path[256], prefix[300];
    uint64_t gib = 1 + rnd(64);
    int r = 1 + (int)rnd(4096);
    char s1[64], s2[64], s3[64];
    snprintf(s1, sizeof s1, "lora.r=%d", r);
    snprintf(s2, sizeof s2, "memory.gpu_budget=%lluGiB", (unsigned long long)gib);
    snprintf(s3, sizeof s3, "train.lr=%.6e", unif(1e-6, 1e-2));
    const char *sets[] = {"lora.r=3", s1, s2, s3, "lora.targets=q,v_proj", "data.train=@odd path.jsonl",
                          "output.name=abc", "memory.paged_optimizer=yes", "train.steps=100", "lora.dropout=0"};
    int rc = load_text(c, base, strlen(base), sets, 10, &e, NULL);
    TU_EXPECT(rc == 0, "overrides: %s", e.msg);
    if (rc == 0) {
        TU_EXPECT(c->lora.r == r, "later --set wins: r=%lld want %d", (long long)c->lora.r, r);
        TU_EXPECT(c->memory.gpu_budget == gib << 30, "gpu_budget %llu", (unsigned long long)c->memory.gpu_budget);
        TU_EXPECT(c->train.lr == strtod(s3 + 9, NULL), "lr %.17g from %s", c->train.lr, s3);
        TU_EXPECT(c->lora.targets == ((1u << QT_LORA_Q) | (1u << QT_LORA_V)), "targets %u", c->lora.targets);
        TU_EXPECT(!strcmp(c->data.train, "@odd path.jsonl"), "literal path: '%s'", c->data.train);
        TU_EXPECT(!strcmp(c->output.dir, "runs/abc"), "dir follows name: '%s'", c->output.dir);
        TU_EXPECT(c->memory.paged_optimizer && c->train.steps == 100 && c->lora.dropout == 0, "bool/int/float");
        check_round_trip(c, "overridden config");
    }
    static const struct { const char *set, *must1, *must2; } bad[] = {
        {"lora.r=0", "key 'lora.r'", "got \"0\""},
        {"lora.r=sixteen", "key 'lora.r'", "sixteen"},
        {"lora.r=\"16\"", "key 'lora.r'", "quotes"},
        {"lora.alpah=3", "'lora.alpah'", "did you mean 'lora.alpha'?"},
        {"lora_alpha=3", "'lora_alpha'", "did you mean 'lora.alpha'?"},
        {"lora.lr=3", "'lora.lr'", "did you mean 'train.lr'?"},
        {"lora=3", "'lora' is a section", NULL},
        {"no-equals-sign", "KEY=VALUE", NULL},
        {"lora.targets=[q, v", "YAML", NULL},
        {"lora.targets=", "key 'lora.targets'", NULL},
        {"memory.gpu_budget=lots", "key 'memory.gpu_budget'", "\"lots\""},
        {"train.device=cpu", "key 'memory.paged_optimizer'", "train.device set by --set train.device=cpu"},
    };
    const char *paged = "memory.paged_optimizer=true";
    for (int i = 0; i < (int)(sizeof bad / sizeof *bad); i++) {
        const char *two[2] = {paged, bad[i].set};
        qt_err e2 = {{0}};
        TU_EXPECT(load_text(c, base, strlen(base), two, 2, &e2, path) == -1, "--set %s accepted", bad[i].set);
        snprintf(prefix, sizeof prefix, "--set %s: ", i == 11 ? paged : bad[i].set);
        check_error(bad[i].set, e2.msg, prefix, bad[i].must1, bad[i].must2);
    }
}

/* ------------------------------------------------------------------ sizes */

static void test_sizes(void) {
    static const struct { const char *u; uint64_t mul; } units[] = {
        {"", 1}, {"B", 1}, {"KiB", 1024}, {"MiB", 1048576}, {"GiB", 1073741824}, {"TiB", 1099511627776ull},
        {"KB", 1000}, {"MB", 1000000}, {"GB", 1000000000}, {"TB", 1000000000000ull}};
    qt_err e;
    char s[64];
    for (int i = 0; i < 2000; i++) {
        int u = (int)rnd(10);
        uint64_t n = rnd(1000001), want = n * units[u].mul, got = 0;
        int eighths = units[u].mul >= 1000 && coin() ? (int)rnd(8) : -1;
        char unit[8];
        strcpy(unit, units[u].u);
        if (coin()) for (char *p = unit; *p; p++) *p = (char)(coin() ? *p ^ 0x20 : *p); /* case-insensitive */
        if (eighths >= 0) {
            snprintf(s, sizeof s, "%llu.%03d%s%s", (unsigned long long)n, eighths * 125, coin() ? " " : "", unit);
            want += (uint64_t)eighths * units[u].mul / 8;
        } else {
            snprintf(s, sizeof s, "%llu%s%s", (unsigned long long)n, coin() && *unit ? " " : "", unit);
        }
        TU_EXPECT(qt_parse_size(s, &got, &e) == 0 && got == want, "size '%s' -> %llu (%s), want %llu", s,
                  (unsigned long long)got, e.msg, (unsigned long long)want);
        char f[32];
        uint64_t back = 0;
        qt_format_size(want, f, sizeof f);
        TU_EXPECT(qt_parse_size(f, &back, &e) == 0 && back == want, "format %llu -> '%s' -> %llu",
                  (unsigned long long)want, f, (unsigned long long)back);
    }
    /* the shortest form */
    uint64_t n = 1 + 2 * rnd(500); /* odd, < 1000: no larger unit divides it */
    char f[32], w[32];
    snprintf(w, sizeof w, "%lluGiB", (unsigned long long)n);
    TU_EXPECT(!strcmp(qt_format_size(n << 30, f, sizeof f), w), "%s, want %s", f, w);
    snprintf(w, sizeof w, "%lluGB", (unsigned long long)n);
    TU_EXPECT(!strcmp(qt_format_size(n * 1000000000ull, f, sizeof f), w), "%s, want %s", f, w);
    TU_EXPECT(!strcmp(qt_format_size(1000001, f, sizeof f), "1000001"), "%s", f);
    static const char *bad[] = {"", "GiB", "-1GiB", "1.5.2GiB", "24 gigs", "24G", "1k", "0.1B", "1.0000001KiB",
                                "9999999TiB", "1e9", "0x10", "1,5GiB", "inf", "nan", " 1GiB"};
    for (int i = 0; i < (int)(sizeof bad / sizeof *bad); i++) {
        uint64_t x;
        TU_EXPECT(qt_parse_size(bad[i], &x, &e) == -1, "size '%s' accepted as %llu", bad[i], (unsigned long long)x);
    }
}

/* ------------------------------------------------------------------ shipped configs, docs */

static void test_shipped(qt_config *c) {
    char dirpath[1024];
    snprintf(dirpath, sizeof dirpath, "%s/configs", QT_SOURCE_DIR);
    DIR *d = opendir(dirpath);
    TU_EXPECT(d, "cannot open %s", dirpath);
    if (!d) return;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l < 6 || strcmp(de->d_name + l - 5, ".yaml")) continue;
        char p[2048];
        snprintf(p, sizeof p, "%s/%s", dirpath, de->d_name);
        qt_err e;
        int rc = qt_config_load(c, p, NULL, 0, &e);
        TU_EXPECT(rc == 0, "%s: %s", de->d_name, e.msg);
        if (rc) continue;
        n++;
        check_round_trip(c, de->d_name);
        if (!strcmp(de->d_name, "llama70b-lora.yaml")) {
            TU_EXPECT(c->quant.type == QT_QUANT_NF4 && c->quant.double_quant, "70B: NF4 + double quant");
            TU_EXPECT(c->lora.r == 16 && c->lora.targets == QT_LORA_ALL, "70B: r=16 on all 7 projections");
            TU_EXPECT(c->data.seq_len == 2048, "70B: seq 2048");
            TU_EXPECT(c->memory.gpu_budget == 24ull << 30 && c->memory.paged_optimizer, "70B: 24GiB, paged AdamW");
            TU_EXPECT(c->train.device == QT_CUDA && c->model.path[0], "70B: cuda, a model path");
        }
        if (!strcmp(de->d_name, "tiny-cpu.yaml"))
            TU_EXPECT(c->train.device == QT_CPU && c->model.synthetic[0], "tiny-cpu: cpu, synthetic");
    }
    closedir(d);
    TU_EXPECT(n >= 3, "only %d configs in %s", n, dirpath);
    printf("shipped configs: %d load and round-trip\n", n);
}

static void test_docs(void) {
    char p[1024];
    snprintf(p, sizeof p, "%s/docs/config.md", QT_SOURCE_DIR);
    FILE *f = fopen(p, "rb");
    TU_EXPECT(f, "cannot open %s", p);
    if (!f) return;
    static char doc[1 << 17];
    size_t n = fread(doc, 1, sizeof doc - 1, f);
    doc[n] = 0;
    fclose(f);
    for (int i = 0; i < qt_cfg_nfields; i++) {
        char k[96];
        snprintf(k, sizeof k, "| `%s` |", qt_cfg_fields[i].key);
        TU_EXPECT(strstr(doc, k), "docs/config.md has no table row for %s", qt_cfg_fields[i].key);
    }
}

int qt_test_cpu(void) {
    qt_config *c = malloc(sizeof *c);
    /* defaults as docs/config.md states them */
    qt_config_defaults(c);
    TU_EXPECT(c->lora.r == 16 && c->lora.alpha == 16 && c->lora.dropout == 0.05 && c->lora.targets == QT_LORA_ALL,
              "lora defaults");
    TU_EXPECT(c->quant.type == QT_QUANT_NF4 && c->quant.double_quant && c->quant.block_size == 64 && c->quant.cache &&
                  !c->quant.cache_dir[0], "quant defaults");
    TU_EXPECT(c->train.lr == 2e-4 && c->train.device == QT_CUDA && c->data.seq_len == 2048, "train defaults");
    TU_EXPECT(c->memory.gpu_budget == 0 && c->memory.optimizer_gpu_bytes == 256u << 20 &&
              c->memory.stream_layers == QT_TRI_AUTO, "memory defaults");
    /* a config built in code */
    qt_err e;
    snprintf(c->model.synthetic, sizeof c->model.synthetic, "tiny");
    TU_EXPECT(qt_config_validate(c, &e) == 0, "validate: %s", e.msg);
    TU_EXPECT(!strcmp(c->output.dir, "runs/run") && c->train.epochs == 1, "resolved defaults");
    TU_EXPECT(qt_config_validate(c, &e) == 0, "validate twice: %s", e.msg);
    c->lora.r = 0;
    TU_EXPECT(qt_config_validate(c, &e) == -1 && strstr(e.msg, "key 'lora.r'"), "validate r=0: %s", e.msg);
    c->lora.r = 8;
    c->lora.targets = 0;
    TU_EXPECT(qt_config_validate(c, &e) == -1 && strstr(e.msg, "key 'lora.targets'"), "empty targets: %s", e.msg);

    for (int i = 0; i < 60; i++) random_config(i);
    printf("random configs: 60 loaded as written and round-tripped\n");
    test_bad_snippets(c);
    test_overrides(c);
    test_sizes();
    test_hostile(c);
    test_shipped(c);
    test_docs();
    free(c);
    return 0;
}
