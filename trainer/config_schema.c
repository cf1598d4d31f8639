/* The config schema: one table row per key (type, default, range), typing a YAML value
 * by its row, "did you mean" suggestions, sizes, and printing a config back as YAML.
 * docs/config.md documents this table; tests/test_config.c checks that every key of it
 * appears there. */
#include <ctype.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config_internal.h"

/* ------------------------------------------------------------------ the table */

static const char *const dtype_names[] = {[QT_F32] = "f32", [QT_BF16] = "bf16", [QT_F16] = "f16"};
static const char *const device_names[] = {[QT_CPU] = "cpu", [QT_CUDA] = "cuda"};
static const char *const quant_names[] = {"none", "nf4"};
static const char *const format_names[] = {"text", "alpaca", "chat", "tokens"};
static const char *const template_names[] = {"auto", "llama3", "chatml", "llama2"};
static const char *const sched_names[] = {"constant", "linear", "cosine"};
static const char *const gguf_names[] = {"none", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m"};
static const char *const merge_names[] = {"original", "nf4"};
static const char *const target_names[] = {"q", "k", "v", "o", "gate", "up", "down"};
/* Shapes the model builder knows how to make with random weights (benchmarks, smoke runs). */
static const char *const synthetic_names[] = {"tiny", "llama-3-8b", "llama-3.1-8b", "llama-3.1-70b",
                                              "llama-2-7b"};

#define N(a) (int)(sizeof(a) / sizeof((a)[0]))
#define OFF(m) offsetof(qt_config, m), sizeof(((qt_config *)0)->m)
#define INF INFINITY
#define GiB (1024.0 * 1024 * 1024)

const qt_cfg_field qt_cfg_fields[] = {
    {"model.path", QT_CK_STR, OFF(model.path), QT_CF_NULL, 0, 0, NULL, 0, "null", "a path to a Hugging Face model folder, or null"},
    {"model.dtype", QT_CK_ENUM, OFF(model.dtype), 0, 0, 0, dtype_names, N(dtype_names), "bf16", NULL},
    {"model.synthetic", QT_CK_STR, OFF(model.synthetic), QT_CF_NULL, 0, 0, synthetic_names, N(synthetic_names), "null", NULL},

    {"quant.type", QT_CK_ENUM, OFF(quant.type), QT_CF_NULL, 0, 0, quant_names, N(quant_names), "nf4", NULL},
    {"quant.double_quant", QT_CK_BOOL, OFF(quant.double_quant), 0, 0, 0, NULL, 0, "true", NULL},
    {"quant.block_size", QT_CK_INT, OFF(quant.block_size), QT_CF_POW2, 32, 256, NULL, 0, "64", "a power of two in [32, 256]"},
    {"quant.cache", QT_CK_BOOL, OFF(quant.cache), 0, 0, 0, NULL, 0, "true", NULL},
    {"quant.cache_dir", QT_CK_STR, OFF(quant.cache_dir), QT_CF_NULL, 0, 0, NULL, 0, "null", "a folder path, or null"},

    {"lora.r", QT_CK_INT, OFF(lora.r), 0, 1, 4096, NULL, 0, "16", "a positive integer (at most 4096)"},
    {"lora.alpha", QT_CK_FLOAT, OFF(lora.alpha), QT_CF_LO_OPEN, 0, 1e6, NULL, 0, "16", "a positive number"},
    {"lora.dropout", QT_CK_FLOAT, OFF(lora.dropout), QT_CF_HI_OPEN, 0, 1, NULL, 0, "0.05", NULL},
    {"lora.rslora", QT_CK_BOOL, OFF(lora.rslora), 0, 0, 0, NULL, 0, "false", NULL},
    {"lora.targets", QT_CK_TARGETS, OFF(lora.targets), 0, 0, 0, target_names, N(target_names), "all", NULL},
    {"lora.init_seed", QT_CK_INT, OFF(lora.init_seed), 0, 0, INF, NULL, 0, "42", NULL},

    {"data.train", QT_CK_STR, OFF(data.train), QT_CF_NULL, 0, 0, NULL, 0, "null", "a path to a .jsonl file, or null"},
    {"data.eval", QT_CK_STR, OFF(data.eval), QT_CF_NULL, 0, 0, NULL, 0, "null", "a path to a .jsonl file, or null"},
    {"data.format", QT_CK_ENUM, OFF(data.format), 0, 0, 0, format_names, N(format_names), "text", NULL},
    {"data.chat_template", QT_CK_ENUM, OFF(data.chat_template), 0, 0, 0, template_names, N(template_names), "auto", NULL},
    {"data.seq_len", QT_CK_INT, OFF(data.seq_len), 0, 16, 131072, NULL, 0, "2048", NULL},
    {"data.packing", QT_CK_BOOL, OFF(data.packing), 0, 0, 0, NULL, 0, "true", NULL},
    {"data.eval_split", QT_CK_FLOAT, OFF(data.eval_split), 0, 0, 0.5, NULL, 0, "0", NULL},
    {"data.shuffle_seed", QT_CK_INT, OFF(data.shuffle_seed), 0, 0, INF, NULL, 0, "42", NULL},
    {"data.cache_dir", QT_CK_STR, OFF(data.cache_dir), QT_CF_NULL, 0, 0, NULL, 0, "null", "a folder path, or null"},

    {"train.device", QT_CK_ENUM, OFF(train.device), 0, 0, 0, device_names, N(device_names), "cuda", NULL},
    {"train.micro_batch", QT_CK_INT, OFF(train.micro_batch), 0, 1, 4096, NULL, 0, "1", NULL},
    {"train.grad_accum", QT_CK_INT, OFF(train.grad_accum), 0, 1, 65536, NULL, 0, "1", NULL},
    {"train.steps", QT_CK_INT, OFF(train.steps), QT_CF_NULL, 1, 1e12, NULL, 0, "null", "a positive integer, or null"},
    {"train.epochs", QT_CK_FLOAT, OFF(train.epochs), QT_CF_NULL | QT_CF_LO_OPEN, 0, 1e6, NULL, 0, "null", "a positive number, or null"},
    {"train.lr", QT_CK_FLOAT, OFF(train.lr), QT_CF_LO_OPEN, 0, 1, NULL, 0, "0.0002", "a positive number (at most 1)"},
    {"train.lr_schedule", QT_CK_ENUM, OFF(train.lr_schedule), 0, 0, 0, sched_names, N(sched_names), "cosine", NULL},
    {"train.warmup_steps", QT_CK_INT, OFF(train.warmup_steps), 0, 0, 1e12, NULL, 0, "0", NULL},
    {"train.min_lr_ratio", QT_CK_FLOAT, OFF(train.min_lr_ratio), 0, 0, 1, NULL, 0, "0", NULL},
    {"train.weight_decay", QT_CK_FLOAT, OFF(train.weight_decay), 0, 0, 1, NULL, 0, "0", NULL},
    {"train.adam_beta1", QT_CK_FLOAT, OFF(train.adam_beta1), QT_CF_HI_OPEN, 0, 1, NULL, 0, "0.9", NULL},
    {"train.adam_beta2", QT_CK_FLOAT, OFF(train.adam_beta2), QT_CF_HI_OPEN, 0, 1, NULL, 0, "0.999", NULL},
    {"train.adam_eps", QT_CK_FLOAT, OFF(train.adam_eps), QT_CF_LO_OPEN, 0, 1, NULL, 0, "1e-08", NULL},
    {"train.max_grad_norm", QT_CK_FLOAT, OFF(train.max_grad_norm), 0, 0, 1e6, NULL, 0, "0.3", NULL},
    {"train.grad_checkpointing", QT_CK_BOOL, OFF(train.grad_checkpointing), 0, 0, 0, NULL, 0, "true", NULL},
    {"train.seed", QT_CK_INT, OFF(train.seed), 0, 0, INF, NULL, 0, "42", NULL},
    {"train.eval_every", QT_CK_INT, OFF(train.eval_every), 0, 0, INF, NULL, 0, "0", NULL},
    {"train.log_every", QT_CK_INT, OFF(train.log_every), 0, 1, INF, NULL, 0, "10", NULL},
    {"train.max_nonfinite_steps", QT_CK_INT, OFF(train.max_nonfinite_steps), 0, 0, INF, NULL, 0, "5", NULL},

    {"memory.gpu_budget", QT_CK_SIZE, OFF(memory.gpu_budget), QT_CF_AUTO | QT_CF_NULL, 256.0 * 1024 * 1024, 1024 * 1024 * GiB, NULL, 0, "auto", NULL},
    {"memory.paged_optimizer", QT_CK_BOOL, OFF(memory.paged_optimizer), 0, 0, 0, NULL, 0, "false", NULL},
    {"memory.optimizer_gpu_bytes", QT_CK_SIZE, OFF(memory.optimizer_gpu_bytes), 0, 1024.0 * 1024, 1024 * 1024 * GiB, NULL, 0, "256MiB", NULL},
    {"memory.stream_layers", QT_CK_TRI, OFF(memory.stream_layers), 0, 0, 0, NULL, 0, "auto", NULL},
    {"memory.keep_activations", QT_CK_BOOL, OFF(memory.keep_activations), 0, 0, 0, NULL, 0, "true", NULL},

    {"output.dir", QT_CK_STR, OFF(output.dir), QT_CF_NULL, 0, 0, NULL, 0, "null", "a folder path, or null"},
    {"output.name", QT_CK_STR, OFF(output.name), QT_CF_NAME, 0, 0, NULL, 0, "run", NULL},
    {"output.checkpoint_every", QT_CK_INT, OFF(output.checkpoint_every), 0, 0, INF, NULL, 0, "500", NULL},
    {"output.keep_checkpoints", QT_CK_INT, OFF(output.keep_checkpoints), 0, 0, INF, NULL, 0, "2", NULL},

    {"export.adapter", QT_CK_BOOL, OFF(export_.adapter), 0, 0, 0, NULL, 0, "true", NULL},
    {"export.gguf_type", QT_CK_ENUM, OFF(export_.gguf_type), QT_CF_NULL, 0, 0, gguf_names, N(gguf_names), "none", NULL},
    {"export.merge_base", QT_CK_ENUM, OFF(export_.merge_base), 0, 0, 0, merge_names, N(merge_names), "original", NULL},
};
const int qt_cfg_nfields = N(qt_cfg_fields);
const char *const qt_cfg_sections[] = {"model", "quant", "lora", "data", "train", "memory", "output", "export"};
const int qt_cfg_nsections = N(qt_cfg_sections);

const char *qt_lora_target_name(int i) { return i >= 0 && i < QT_LORA_NTARGETS ? target_names[i] : NULL; }
#define NAME_FN(fn, type, arr) \
    const char *fn(type v) { return (int)v >= 0 && (int)v < N(arr) ? arr[v] : NULL; }
NAME_FN(qt_quant_type_name, qt_quant_type, quant_names)
NAME_FN(qt_data_format_name, qt_data_format, format_names)
NAME_FN(qt_chat_template_name, qt_chat_template, template_names)
NAME_FN(qt_lr_schedule_name, qt_lr_schedule, sched_names)
NAME_FN(qt_gguf_type_name, qt_gguf_type, gguf_names)
NAME_FN(qt_merge_base_name, qt_merge_base, merge_names)

int qt_cfg_find(const char *key) {
    for (int i = 0; i < qt_cfg_nfields; i++)
        if (!strcmp(qt_cfg_fields[i].key, key)) return i;
    return -1;
}

bool qt_cfg_is_section(const char *name) {
    for (int i = 0; i < qt_cfg_nsections; i++)
        if (!strcmp(qt_cfg_sections[i], name)) return true;
    return false;
}

void qt_config_defaults(qt_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    for (int i = 0; i < qt_cfg_nfields; i++) {
        const char *d = qt_cfg_fields[i].def;
        qt_ynode v = {.type = QT_YN_SCALAR, .text = (char *)d, .len = strlen(d)};
        const qt_ynode *where;
        char msg[256];
        int rc = qt_cfg_set(cfg, &qt_cfg_fields[i], &v, &where, msg, sizeof msg);
        QT_CHECK(rc == 0, "bad default in the schema table: %s", msg);
    }
}

/* ------------------------------------------------------------------ suggestions */

/* Optimal-string-alignment distance (a transposition costs 1: "alpah" -> "alpha"). */
static int edit_distance(const char *a, const char *b) {
    int n = (int)strlen(a), m = (int)strlen(b);
    if (n > 63 || m > 63) return 99;
    int d[64][64];
    for (int i = 0; i <= n; i++) d[i][0] = i;
    for (int j = 0; j <= m; j++) d[0][j] = j;
    for (int i = 1; i <= n; i++)
        for (int j = 1; j <= m; j++) {
            int c = tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]);
            int v = d[i - 1][j - 1] + c;
            if (d[i - 1][j] + 1 < v) v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v) v = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    return d[n][m];
}

static int close_enough(const char *s) {
    size_t n = strlen(s);
    return n <= 4 ? 1 : n <= 8 ? 2 : 3;
}

/* What other trainers (HF TrainingArguments, PEFT, bitsandbytes, axolotl) call our keys. */
static const struct { const char *other, *ours; } key_aliases[] = {
    {"lora_alpha", "lora.alpha"}, {"lora_r", "lora.r"}, {"rank", "lora.r"},
    {"lora_dropout", "lora.dropout"}, {"target_modules", "lora.targets"},
    {"lora_target_modules", "lora.targets"}, {"use_rslora", "lora.rslora"},
    {"learning_rate", "train.lr"}, {"lr_scheduler_type", "train.lr_schedule"},
    {"lr_scheduler", "train.lr_schedule"}, {"gradient_accumulation_steps", "train.grad_accum"},
    {"per_device_train_batch_size", "train.micro_batch"}, {"micro_batch_size", "train.micro_batch"},
    {"batch_size", "train.micro_batch"}, {"max_steps", "train.steps"},
    {"num_train_epochs", "train.epochs"}, {"num_epochs", "train.epochs"},
    {"gradient_checkpointing", "train.grad_checkpointing"}, {"logging_steps", "train.log_every"},
    {"eval_steps", "train.eval_every"}, {"warmup", "train.warmup_steps"},
    {"max_seq_length", "data.seq_len"}, {"sequence_len", "data.seq_len"},
    {"max_seq_len", "data.seq_len"}, {"sample_packing", "data.packing"},
    {"val_set_size", "data.eval_split"}, {"dataset", "data.train"},
    {"bnb_4bit_use_double_quant", "quant.double_quant"}, {"bnb_4bit_quant_type", "quant.type"},
    {"load_in_4bit", "quant.type"}, {"bnb_4bit_compute_dtype", "model.dtype"},
    {"torch_dtype", "model.dtype"}, {"base_model", "model.path"},
    {"model_name_or_path", "model.path"}, {"output_dir", "output.dir"},
    {"save_steps", "output.checkpoint_every"}, {"save_total_limit", "output.keep_checkpoints"},
    {"optim", "memory.paged_optimizer"}, {"device", "train.device"},
};

const char *qt_cfg_suggest(const char *typed) {
    const char *dot = strrchr(typed, '.');
    const char *leaf = dot ? dot + 1 : typed;
    size_t sec_len = dot ? (size_t)(dot - typed) : 0;
    for (int i = 0; i < N(key_aliases); i++)
        if (!strcmp(leaf, key_aliases[i].other)) return key_aliases[i].ours;
    const char *best = NULL;
    int best_d = 99;
    for (int i = 0; i < qt_cfg_nfields; i++) {
        const char *k = qt_cfg_fields[i].key, *kleaf = strchr(k, '.') + 1;
        /* in half edits: the right key under the wrong section costs half an edit, so
         * "lora.lr" suggests train.lr before lora.r */
        int d = 2 * edit_distance(typed, k);
        bool same_sec = dot && sec_len == (size_t)(kleaf - 1 - k) && !strncmp(typed, k, sec_len);
        int dl = 2 * edit_distance(leaf, kleaf) + (same_sec ? 0 : 1);
        if (dl < d) d = dl;
        if (d < best_d) best_d = d, best = k;
    }
    if (!dot)
        for (int i = 0; i < qt_cfg_nsections; i++) {
            int d = 2 * edit_distance(typed, qt_cfg_sections[i]);
            if (d < best_d) best_d = d, best = qt_cfg_sections[i];
        }
    return best && best_d <= 2 * close_enough(leaf) ? best : NULL;
}

static const struct { const char *other, *ours; } value_aliases[] = {
    {"fp16", "f16"}, {"float16", "f16"}, {"half", "f16"}, {"bfloat16", "bf16"},
    {"fp32", "f32"}, {"float32", "f32"}, {"float", "f32"}, {"gpu", "cuda"},
    {"q4_k", "q4_k_m"}, {"q5_k", "q5_k_m"}, {"q8", "q8_0"}, {"fp4", "nf4"},
};

static const char *suggest_name(const char *typed, const char *const *names, int n) {
    for (int i = 0; i < N(value_aliases); i++)
        if (!strcasecmp(typed, value_aliases[i].other))
            for (int j = 0; j < n; j++)
                if (!strcmp(names[j], value_aliases[i].ours)) return names[j];
    const char *best = NULL;
    int best_d = 99;
    for (int j = 0; j < n; j++) {
        int d = edit_distance(typed, names[j]);
        if (d < best_d) best_d = d, best = names[j];
    }
    return best && best_d <= close_enough(typed) ? best : NULL;
}

/* ------------------------------------------------------------------ sizes */

int qt_parse_size(const char *s, uint64_t *bytes, qt_err *err) {
    static const struct { const char *unit; uint64_t mul; } units[] = {
        {"", 1}, {"b", 1}, {"kib", 1ull << 10}, {"mib", 1ull << 20}, {"gib", 1ull << 30},
        {"tib", 1ull << 40}, {"kb", 1000}, {"mb", 1000000}, {"gb", 1000000000},
        {"tb", 1000000000000ull},
    };
    const char *p = s;
    if (*p == '-') return qt_errf(err, "a size cannot be negative");
    if (*p == '+') p++;
    unsigned __int128 ip = 0, frac = 0, fscale = 1;
    int nd = 0;
    for (; isdigit((unsigned char)*p) || (*p == '_' && nd); p++) {
        if (*p == '_') continue;
        ip = ip * 10 + (unsigned)(*p - '0');
        if (ip > ((unsigned __int128)1 << 64)) return qt_errf(err, "the number is too large");
        nd++;
    }
    if (*p == '.') {
        for (p++; isdigit((unsigned char)*p); p++, nd++) {
            if (fscale > (unsigned __int128)1e18) return qt_errf(err, "too many decimals");
            frac = frac * 10 + (unsigned)(*p - '0');
            fscale *= 10;
        }
    }
    if (!nd) return qt_errf(err, "no number");
    while (*p == ' ') p++;
    char unit[8];
    size_t ul = strlen(p);
    if (ul >= sizeof unit) return qt_errf(err, "unknown unit '%.20s'", p);
    for (size_t i = 0; i <= ul; i++) unit[i] = (char)tolower((unsigned char)p[i]);
    uint64_t mul = 0;
    for (int i = 0; i < N(units); i++)
        if (!strcmp(unit, units[i].unit)) mul = units[i].mul;
    if (!mul) {
        if (strchr("kmgt", unit[0]) && (!unit[1] || !strcmp(unit + 1, "i")))
            return qt_errf(err, "'%s' is ambiguous: write %ciB (1024-based) or %cB (1000-based)", p,
                           toupper(unit[0]), toupper(unit[0]));
        return qt_errf(err, "unknown unit '%s'; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB", p);
    }
    unsigned __int128 fb = frac * mul;
    if (fb % fscale) return qt_errf(err, "not a whole number of bytes");
    unsigned __int128 v = ip * mul + fb / fscale;
    if (v > (unsigned __int128)INT64_MAX) return qt_errf(err, "too large (the limit is 2^63 - 1 bytes)");
    *bytes = (uint64_t)v;
    return 0;
}

const char *qt_format_size(uint64_t bytes, char *buf, size_t n) {
    static const struct { const char *unit; uint64_t mul; } units[] = {
        {"TiB", 1ull << 40}, {"GiB", 1ull << 30}, {"MiB", 1ull << 20}, {"KiB", 1ull << 10},
        {"TB", 1000000000000ull}, {"GB", 1000000000}, {"MB", 1000000}, {"KB", 1000},
    };
    int best = -1;
    for (int i = 0; i < N(units); i++)
        if (bytes && bytes % units[i].mul == 0 && (best < 0 || units[i].mul > units[best].mul)) best = i;
    if (best < 0) snprintf(buf, n, "%llu", (unsigned long long)bytes);
    else snprintf(buf, n, "%llu%s", (unsigned long long)(bytes / units[best].mul), units[best].unit);
    return buf;
}

/* ------------------------------------------------------------------ typing one value */

static bool is_null(const qt_ynode *v) {
    if (v->type != QT_YN_SCALAR || v->quoted) return false;
    const char *t = v->text;
    return !v->len || !strcmp(t, "~") || !strcmp(t, "null") || !strcmp(t, "Null") || !strcmp(t, "NULL");
}

/* Plain YAML booleans: 1 true, 0 false, -1 neither. */
static int plain_bool(const qt_ynode *v) {
    static const char *const t[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"};
    static const char *const f[] = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"};
    if (v->type != QT_YN_SCALAR || v->quoted) return -1;
    for (int i = 0; i < N(t); i++) {
        if (!strcmp(v->text, t[i])) return 1;
        if (!strcmp(v->text, f[i])) return 0;
    }
    return -1;
}

static bool parse_int(const char *s, int64_t *out) {
    const char *p = s;
    bool neg = *p == '-';
    if (*p == '-' || *p == '+') p++;
    if (!isdigit((unsigned char)*p)) return false;
    uint64_t v = 0;
    for (; *p; p++) {
        if (*p == '_' && isdigit((unsigned char)p[-1]) && isdigit((unsigned char)p[1])) continue;
        if (!isdigit((unsigned char)*p)) return false;
        if (v > (UINT64_MAX - 9) / 10) return false;
        v = v * 10 + (unsigned)(*p - '0');
    }
    if (v > (uint64_t)INT64_MAX + neg) return false;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return true;
}

/* Decimal numbers only: no inf/nan/hex, which strtod would also take. */
static bool parse_float(const char *s, double *out) {
    if (!*s || strspn(s, "0123456789+-.eE") != strlen(s) || !strpbrk(s, "0123456789")) return false;
    char *end;
    double d = strtod(s, &end);
    if (*end || !isfinite(d)) return false;
    *out = d;
    return true;
}

static bool in_range(const qt_cfg_field *f, double v) {
    if ((f->flags & QT_CF_LO_OPEN) ? v <= f->lo : v < f->lo) return false;
    if ((f->flags & QT_CF_HI_OPEN) ? v >= f->hi : v > f->hi) return false;
    return true;
}

static void fmt_num(double v, char *b, size_t n) {
    if (v == INF) {
        snprintf(b, n, "inf");
        return;
    }
    for (int p = 1; p <= 17; p++) { /* shortest text that reads back as the same double */
        snprintf(b, n, "%.*g", p, v);
        if (strtod(b, NULL) == v) return;
    }
}

static bool name_chars_ok(const char *s) {
    if (s[0] == '.') return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("._-", *s)) return false;
    return true;
}

/* What the field asks for, in words. */
static void expected(const qt_cfg_field *f, char *b, size_t n) {
    if (f->expect) {
        snprintf(b, n, "%s", f->expect);
        return;
    }
    char lo[32], hi[32];
    fmt_num(f->lo, lo, sizeof lo);
    fmt_num(f->hi, hi, sizeof hi);
    size_t k = 0;
    switch (f->kind) {
    case QT_CK_BOOL: snprintf(b, n, "true or false"); break;
    case QT_CK_INT:
        if (f->hi == INF) snprintf(b, n, f->lo == 1 ? "a positive integer" : f->lo == 0 ? "a non-negative integer" : "an integer >= %s", lo);
        else snprintf(b, n, "an integer in [%s, %s]", lo, hi);
        break;
    case QT_CK_FLOAT:
        snprintf(b, n, "a number in %c%s, %s%c", f->flags & QT_CF_LO_OPEN ? '(' : '[', lo, hi,
                 f->flags & QT_CF_HI_OPEN ? ')' : ']');
        break;
    case QT_CK_SIZE:
        qt_format_size((uint64_t)f->lo, lo, sizeof lo);
        qt_format_size((uint64_t)f->hi, hi, sizeof hi);
        snprintf(b, n, "a size like 24GiB, 512MiB, 8GB or a byte count, from %s to %s%s", lo, hi,
                 f->flags & QT_CF_AUTO ? ", or auto" : "");
        break;
    case QT_CK_TRI: snprintf(b, n, "auto, true or false"); break;
    case QT_CK_TARGETS: snprintf(b, n, "\"all\" or a list of q, k, v, o, gate, up, down"); break;
    case QT_CK_STR:
        if (f->flags & QT_CF_NAME) {
            snprintf(b, n, "a name of letters, digits, '.', '_' and '-'");
            break;
        }
        __attribute__((fallthrough));
        /* fall through: a string with a fixed set of choices */
    case QT_CK_ENUM:
        k = (size_t)snprintf(b, n, "one of ");
        for (int i = 0; i < f->n_names && k < n; i++)
            k += (size_t)snprintf(b + k, n - k, "%s%s", i ? ", " : "", f->names[i]);
        if ((f->flags & QT_CF_NULL) && k < n) snprintf(b + k, n - k, "%s", f->kind == QT_CK_STR ? " or null" : "");
        break;
    }
}

/* How the user's value reads in a message. */
static void describe(const qt_ynode *v, char *b, size_t n) {
    if (v->type == QT_YN_SEQ) {
        snprintf(b, n, "a list");
        return;
    }
    if (v->type == QT_YN_MAP) {
        snprintf(b, n, "a mapping");
        return;
    }
    if (is_null(v)) {
        snprintf(b, n, v->len ? "null" : "an empty value");
        return;
    }
    char t[64];
    size_t k = 0;
    for (size_t i = 0; i < v->len && k + 5 < sizeof t - 4; i++) {
        unsigned char c = (unsigned char)v->text[i];
        if (c < 0x20 || c == 0x7f) k += (size_t)snprintf(t + k, sizeof t - k, "\\x%02x", c);
        else t[k++] = (char)c;
    }
    t[k] = 0;
    snprintf(b, n, "%s\"%s%s\"", v->quoted ? "the quoted string " : "", t, k < v->len ? "..." : "");
}

static int bad(const qt_cfg_field *f, const qt_ynode *v, const char *hint, char *msg, size_t n) {
    char exp[200], got[100];
    expected(f, exp, sizeof exp);
    describe(v, got, sizeof got);
    snprintf(msg, n, "key '%s': expected %s, got %s%s", f->key, exp, got, hint ? hint : "");
    return -1;
}

/* A quoted number where a number belongs is a common slip: say how to fix it. */
static const char *quote_hint(const qt_ynode *v) {
    return v->type == QT_YN_SCALAR && v->quoted ? " (remove the quotes)" : NULL;
}

static int find_name(const char *const *names, int n, const char *s) {
    for (int i = 0; i < n; i++)
        if (!strcasecmp(names[i], s)) return i;
    return -1;
}

static int unknown_name(const qt_cfg_field *f, const qt_ynode *v, const char *s, char *msg, size_t n) {
    const char *sug = suggest_name(s, f->names, f->n_names);
    char hint[96] = "";
    if (sug) snprintf(hint, sizeof hint, " (did you mean '%s'?)", sug);
    return bad(f, v, hint, msg, n);
}

/* lora.targets: "all", "q,v", [q, v], [q_proj, v_proj]. */
static int add_targets(const qt_cfg_field *f, const qt_ynode *v, uint32_t *mask, const qt_ynode **where,
                       char *msg, size_t n) {
    *where = v;
    if (v->type != QT_YN_SCALAR || is_null(v) || memchr(v->text, 0, v->len)) return bad(f, v, NULL, msg, n);
    const char *p = v->text;
    while (*p) {
        size_t len = strcspn(p, ",");
        const char *e = p + len, *next = e + (*e == ','); /* p moves past spaces: keep where the next one starts */
        while (p < e && isspace((unsigned char)*p)) p++;
        while (e > p && isspace((unsigned char)e[-1])) e--;
        char name[32];
        size_t l = (size_t)(e - p);
        if (l >= sizeof name) l = sizeof name - 1;
        memcpy(name, p, l);
        name[l] = 0;
        if (l > 5 && !strcmp(name + l - 5, "_proj")) name[l - 5] = 0;
        uint32_t bits;
        int i = find_name(f->names, f->n_names, name);
        if (!strcasecmp(name, "all")) bits = QT_LORA_ALL;
        else if (i >= 0) bits = 1u << i;
        else {
            char hint[128], got[64];
            const char *sug = suggest_name(name, f->names, f->n_names);
            snprintf(got, sizeof got, "%.*s", (int)(e - p) > 40 ? 40 : (int)(e - p), p);
            snprintf(hint, sizeof hint, " (unknown target \"%s\"%s%s%s)", got, sug ? "; did you mean '" : "",
                     sug ? sug : "", sug ? "'?" : "");
            return bad(f, v, hint, msg, n);
        }
        if (*mask & bits && bits != QT_LORA_ALL) {
            snprintf(msg, n, "key '%s': target '%s' is listed twice", f->key, name);
            return -1;
        }
        *mask |= bits;
        p = next;
        while (*p == ' ') p++;
    }
    return 0;
}

int qt_cfg_set(qt_config *cfg, const qt_cfg_field *f, const qt_ynode *v, const qt_ynode **where,
               char *msg, size_t n) {
    char *dst = (char *)cfg + f->off;
    *where = v;
    bool null = is_null(v);
    if (null && (f->flags & QT_CF_NULL) && f->kind != QT_CK_TARGETS) {
        memset(dst, 0, f->size);
        return 0;
    }
    if (f->kind != QT_CK_TARGETS && v->type != QT_YN_SCALAR) return bad(f, v, NULL, msg, n);
    const char *s = v->text;
    switch (f->kind) {
    case QT_CK_BOOL: {
        int b = plain_bool(v);
        if (b < 0) return bad(f, v, quote_hint(v), msg, n);
        *(bool *)dst = b;
        return 0;
    }
    case QT_CK_INT: {
        int64_t x;
        double d;
        if (v->quoted || !parse_int(s, &x)) {
            if (!v->quoted && parse_float(s, &d) && d == floor(d))
                return bad(f, v, strpbrk(s, ".eE") ? " (write it without a fraction or exponent)" : " (out of range)", msg, n);
            return bad(f, v, quote_hint(v), msg, n);
        }
        if (!in_range(f, (double)x) || ((f->flags & QT_CF_POW2) && (x & (x - 1)))) return bad(f, v, NULL, msg, n);
        *(int64_t *)dst = x;
        return 0;
    }
    case QT_CK_FLOAT: {
        double x;
        if (v->quoted || !parse_float(s, &x) || !in_range(f, x)) return bad(f, v, quote_hint(v), msg, n);
        *(double *)dst = x;
        return 0;
    }
    case QT_CK_SIZE: {
        uint64_t x;
        qt_err e = {"contains a NUL byte"};
        if ((f->flags & QT_CF_AUTO) && !strcmp(s, "auto")) {
            *(uint64_t *)dst = 0;
            return 0;
        }
        if (null || memchr(s, 0, v->len) || qt_parse_size(s, &x, &e) != 0) {
            char hint[160] = "";
            if (!null && v->len) snprintf(hint, sizeof hint, " (%.150s)", e.msg);
            return bad(f, v, null || !v->len ? NULL : hint, msg, n);
        }
        if (!in_range(f, (double)x)) return bad(f, v, NULL, msg, n);
        *(uint64_t *)dst = x;
        return 0;
    }
    case QT_CK_ENUM: {
        int i = find_name(f->names, f->n_names, s);
        if (null || i < 0) return unknown_name(f, v, s, msg, n);
        *(int *)dst = i;
        return 0;
    }
    case QT_CK_TRI: {
        int b = plain_bool(v);
        if (b < 0 && strcmp(s, "auto")) return bad(f, v, NULL, msg, n);
        *(int *)dst = b < 0 ? QT_TRI_AUTO : b;
        return 0;
    }
    case QT_CK_STR: {
        if (null) return bad(f, v, NULL, msg, n);
        if (!v->len) {
            snprintf(msg, n, "key '%s': is an empty string; write null for none", f->key);
            return -1;
        }
        if (memchr(s, 0, v->len)) {
            snprintf(msg, n, "key '%s': contains a NUL byte", f->key);
            return -1;
        }
        if (v->len >= f->size) {
            snprintf(msg, n, "key '%s': is %zu bytes long; the limit is %zu", f->key, v->len, f->size - 1);
            return -1;
        }
        if ((f->flags & QT_CF_NAME) && !name_chars_ok(s)) return bad(f, v, NULL, msg, n);
        if (f->names && find_name(f->names, f->n_names, s) < 0) return unknown_name(f, v, s, msg, n);
        memset(dst, 0, f->size);
        memcpy(dst, s, v->len);
        return 0;
    }
    case QT_CK_TARGETS: {
        uint32_t mask = 0;
        if (v->type == QT_YN_SEQ) {
            for (int i = 0; i < v->n; i++)
                if (add_targets(f, v->kids[i], &mask, where, msg, n)) return -1;
            *where = v;
        } else if (v->type == QT_YN_SCALAR && !null) {
            if (add_targets(f, v, &mask, where, msg, n)) return -1;
        }
        if (!mask) return bad(f, v, v->type == QT_YN_SEQ ? " (an empty list: name at least one target)" : NULL, msg, n);
        *(uint32_t *)dst = mask;
        return 0;
    }
    }
    QT_CHECK(0, "unknown kind %d", (int)f->kind);
    return -1;
}

/* ------------------------------------------------------------------ stored values */

static void fmt_value(const qt_config *cfg, const qt_cfg_field *f, char *b, size_t n) {
    const char *src = (const char *)cfg + f->off;
    size_t k = 0;
    switch (f->kind) {
    case QT_CK_BOOL: snprintf(b, n, "%s", *(const bool *)src ? "true" : "false"); break;
    case QT_CK_INT: {
        int64_t x = *(const int64_t *)src;
        if (!x && (f->flags & QT_CF_NULL)) snprintf(b, n, "null");
        else snprintf(b, n, "%lld", (long long)x);
        break;
    }
    case QT_CK_FLOAT: {
        double x = *(const double *)src;
        if (x == 0 && (f->flags & QT_CF_NULL)) snprintf(b, n, "null");
        else fmt_num(x, b, n);
        break;
    }
    case QT_CK_SIZE: {
        uint64_t x = *(const uint64_t *)src;
        if (!x && (f->flags & QT_CF_AUTO)) snprintf(b, n, "auto");
        else qt_format_size(x, b, n);
        break;
    }
    case QT_CK_ENUM: {
        int i = *(const int *)src;
        snprintf(b, n, "%s", i >= 0 && i < f->n_names ? f->names[i] : "?");
        break;
    }
    case QT_CK_TRI: {
        int i = *(const int *)src;
        snprintf(b, n, "%s", i == QT_TRI_AUTO ? "auto" : i == QT_TRI_ON ? "true" : "false");
        break;
    }
    case QT_CK_TARGETS: {
        uint32_t m = *(const uint32_t *)src;
        if (m == QT_LORA_ALL) {
            snprintf(b, n, "all");
            break;
        }
        k = (size_t)snprintf(b, n, "[");
        for (int i = 0, first = 1; i < QT_LORA_NTARGETS && k < n; i++)
            if (m & (1u << i)) k += (size_t)snprintf(b + k, n - k, "%s%s", first ? "" : ", ", target_names[i]), first = 0;
        if (k < n) snprintf(b + k, n - k, "]");
        break;
    }
    case QT_CK_STR: {
        if (!src[0]) {
            snprintf(b, n, "null");
            break;
        }
        /* double-quoted YAML: \ " and what YAML may not hold raw (C0/C1 controls, DEL,
         * U+FFFE/FFFF; a "\x80" escape in the file gives U+0080) are escaped; other UTF-8 passes */
        if (n < 8) {
            b[0] = 0;
            break;
        }
        b[k++] = '"';
        for (const unsigned char *p = (const unsigned char *)src; *p && k + 8 < n; p++) {
            unsigned char c = *p;
            if (c == '"' || c == '\\') b[k++] = '\\', b[k++] = (char)c;
            else if (c < 0x20 || c == 0x7f) k += (size_t)snprintf(b + k, n - k, "\\x%02x", c);
            else if (c == 0xC2 && p[1] >= 0x80 && p[1] <= 0x9F) k += (size_t)snprintf(b + k, n - k, "\\x%02x", *++p);
            else if (c == 0xEF && p[1] == 0xBF && (p[2] == 0xBE || p[2] == 0xBF))
                k += (size_t)snprintf(b + k, n - k, "\\u%04X", 0xFFFEu + (unsigned)(p[2] - 0xBE)), p += 2;
            else b[k++] = (char)c;
        }
        b[k++] = '"';
        b[k] = 0;
        break;
    }
    }
}

int qt_cfg_check(const qt_config *cfg, const qt_cfg_field *f, char *msg, size_t n) {
    const char *src = (const char *)cfg + f->off;
    bool ok = true;
    switch (f->kind) {
    case QT_CK_BOOL: break;
    case QT_CK_INT: {
        int64_t x = *(const int64_t *)src;
        ok = (!x && (f->flags & QT_CF_NULL)) ||
             (in_range(f, (double)x) && !((f->flags & QT_CF_POW2) && (x & (x - 1))));
        break;
    }
    case QT_CK_FLOAT: {
        double x = *(const double *)src;
        ok = (x == 0 && (f->flags & QT_CF_NULL)) || (isfinite(x) && in_range(f, x));
        break;
    }
    case QT_CK_SIZE: {
        uint64_t x = *(const uint64_t *)src;
        ok = (!x && (f->flags & QT_CF_AUTO)) || in_range(f, (double)x);
        break;
    }
    case QT_CK_ENUM: ok = *(const int *)src >= 0 && *(const int *)src < f->n_names; break;
    case QT_CK_TRI: ok = *(const int *)src >= -1 && *(const int *)src <= 1; break;
    case QT_CK_TARGETS: ok = *(const uint32_t *)src && !(*(const uint32_t *)src & ~QT_LORA_ALL); break;
    case QT_CK_STR:
        ok = memchr(src, 0, f->size) != NULL;
        if (ok && src[0] && (f->flags & QT_CF_NAME)) ok = name_chars_ok(src);
        if (ok && src[0] && f->names) ok = find_name(f->names, f->n_names, src) >= 0;
        if (ok && !src[0] && !(f->flags & QT_CF_NULL)) ok = false;
        break;
    }
    if (ok) return 0;
    char exp[200], got[128] = "an unterminated string";
    expected(f, exp, sizeof exp);
    if (f->kind != QT_CK_STR || memchr(src, 0, f->size)) fmt_value(cfg, f, got, sizeof got);
    snprintf(msg, n, "key '%s': expected %s, got %s", f->key, exp, got);
    return -1;
}

/* ------------------------------------------------------------------ printing */

void qt_config_print(const qt_config *cfg, FILE *f) {
    fprintf(f, "# qtrain run config, resolved (every default filled in); docs/config.md explains each key\n");
    char buf[QT_CFG_PATH_MAX * 4 + 8];
    size_t sec_len = 0;
    const char *sec = "";
    for (int i = 0; i < qt_cfg_nfields; i++) {
        const qt_cfg_field *fd = &qt_cfg_fields[i];
        const char *dot = strchr(fd->key, '.');
        if ((size_t)(dot - fd->key) != sec_len || strncmp(fd->key, sec, sec_len)) {
            sec = fd->key;
            sec_len = (size_t)(dot - fd->key);
            fprintf(f, "%s%.*s:\n", i ? "\n" : "", (int)sec_len, sec);
        }
        fmt_value(cfg, fd, buf, sizeof buf);
        fprintf(f, "  %s: %s", dot + 1, buf);
        if (fd->kind == QT_CK_SIZE && *(const uint64_t *)((const char *)cfg + fd->off)) {
            uint64_t x = *(const uint64_t *)((const char *)cfg + fd->off);
            fprintf(f, "  # %.2f GiB", (double)x / GiB);
        }
        fputc('\n', f);
    }
}
