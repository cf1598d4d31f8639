/* trainer/config — the YAML run configuration (`qtrain CONFIG.yaml`).
 *
 * One qt_config holds every setting of a run, with a default for everything
 * optional. It is a plain value (no pointers, no heap): copy it, compare it with
 * memcmp after qt_config_defaults/qt_config_load (unused string bytes are zero).
 *
 * Loading is strict: unknown keys (with a "did you mean" suggestion), wrong types,
 * out-of-range values, duplicate keys, YAML syntax errors and contradicting settings
 * all fail with ONE line in err, of the form
 *     FILE:LINE:COL: key 'lora.r': expected a positive integer, got "sixteen"
 * (1-based line and column of the offending token; overrides are named as
 * `--set KEY=VALUE` instead of FILE:LINE:COL). The schema, every key with its type,
 * default and range, is documented in docs/config.md.
 *
 * Hostile input is bounded: the file is at most QT_CFG_FILE_MAX bytes, nesting at most
 * QT_CFG_DEPTH_MAX levels, a scalar at most QT_CFG_PATH_MAX - 1 bytes, and anchors /
 * aliases are refused, so no input causes unbounded recursion or allocation. */
#ifndef QT_TRAINER_CONFIG_H
#define QT_TRAINER_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "autograd/autograd.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QT_CFG_PATH_MAX 4096        /* bytes of a path value, with its NUL */
#define QT_CFG_NAME_MAX 128         /* bytes of output.name / model.synthetic, with NUL */
#define QT_CFG_FILE_MAX (1u << 20)  /* a config file larger than 1 MiB is refused */
#define QT_CFG_DEPTH_MAX 16         /* YAML nesting levels accepted before refusing */

typedef enum { QT_QUANT_NONE = 0, QT_QUANT_NF4 } qt_quant_type;
typedef enum { QT_DATA_TEXT = 0, QT_DATA_ALPACA, QT_DATA_CHAT, QT_DATA_TOKENS } qt_data_format;
typedef enum { QT_TMPL_AUTO = 0, QT_TMPL_LLAMA3, QT_TMPL_CHATML, QT_TMPL_LLAMA2 } qt_chat_template;
typedef enum { QT_SCHED_CONSTANT = 0, QT_SCHED_LINEAR, QT_SCHED_COSINE } qt_lr_schedule;
typedef enum {
    QT_GGUF_NONE = 0, QT_GGUF_F16, QT_GGUF_Q8_0, QT_GGUF_Q6_K, QT_GGUF_Q5_K_M, QT_GGUF_Q4_K_M
} qt_gguf_type;
typedef enum { QT_MERGE_ORIGINAL = 0, QT_MERGE_NF4 } qt_merge_base;
/* memory.stream_layers: auto lets the memory planner decide from gpu_budget. */
typedef enum { QT_TRI_AUTO = -1, QT_TRI_OFF = 0, QT_TRI_ON = 1 } qt_tristate;

/* LoRA target projections, a bitmask in lora.targets (bit i = QT_LORA_*). */
enum { QT_LORA_Q = 0, QT_LORA_K, QT_LORA_V, QT_LORA_O, QT_LORA_GATE, QT_LORA_UP, QT_LORA_DOWN,
       QT_LORA_NTARGETS };
#define QT_LORA_ALL ((1u << QT_LORA_NTARGETS) - 1)
/* "q", "k", ..., "down"; the Hugging Face module name is this + "_proj". */
const char *qt_lora_target_name(int i);

typedef struct qt_config {
    struct {
        char path[QT_CFG_PATH_MAX];      /* Hugging Face folder; "" = null */
        qt_dtype dtype;                  /* compute dtype: QT_BF16, QT_F16 or QT_F32 */
        char synthetic[QT_CFG_NAME_MAX]; /* random weights of a known shape; "" = null */
    } model;
    struct {
        qt_quant_type type;
        bool double_quant;
        int64_t block_size;
        bool cache;                      /* keep the quantized base on disk (nf4_cache.h) */
        char cache_dir[QT_CFG_PATH_MAX]; /* "" = the default, see qt_nf4_cache_dir */
    } quant;
    struct {
        int64_t r;
        double alpha, dropout;
        bool rslora;       /* scale alpha/sqrt(r) instead of alpha/r */
        uint32_t targets;  /* QT_LORA_* bitmask, never 0 after loading */
        int64_t init_seed;
    } lora;
    struct {
        char train[QT_CFG_PATH_MAX]; /* jsonl; "" = null (only with model.synthetic) */
        char eval[QT_CFG_PATH_MAX];  /* jsonl; "" = null */
        qt_data_format format;
        qt_chat_template chat_template;
        int64_t seq_len;
        bool packing;
        double eval_split;           /* fraction of train held out when eval is null */
        int64_t shuffle_seed;
        char cache_dir[QT_CFG_PATH_MAX]; /* resolved: default <output.dir>/cache */
    } data;
    struct {
        qt_device device;
        int64_t micro_batch, grad_accum;
        int64_t steps;   /* optimizer steps; 0 = run by epochs */
        double epochs;   /* 0 = run by steps; loading sets exactly one of the two */
        double lr;
        qt_lr_schedule lr_schedule;
        int64_t warmup_steps;
        double min_lr_ratio;
        double weight_decay, adam_beta1, adam_beta2, adam_eps, max_grad_norm; /* norm 0 = off */
        bool grad_checkpointing;
        int64_t seed;
        int64_t eval_every, log_every; /* eval_every 0 = only at the end */
        int64_t max_nonfinite_steps;
    } train;
    struct {
        uint64_t gpu_budget;          /* bytes; 0 = auto (free device memory) */
        bool paged_optimizer;
        uint64_t optimizer_gpu_bytes; /* GPU window for paged optimizer state */
        qt_tristate stream_layers;
        bool keep_activations;        /* checkpointing: layers that fit keep activations (plan.h) */
    } memory;
    struct {
        char dir[QT_CFG_PATH_MAX];   /* resolved: default runs/<name> */
        char name[QT_CFG_NAME_MAX];  /* resolved: default the config file's base name */
        int64_t checkpoint_every;    /* 0 = only at the end */
        int64_t keep_checkpoints;    /* 0 = keep all */
    } output;
    struct {
        bool adapter;
        qt_gguf_type gguf_type;
        qt_merge_base merge_base;
    } export_; /* `export` is a C++ keyword and this header may reach nvcc */
} qt_config;

/* Every field to its default; output.name "run". Cross-field defaults (output.dir,
 * data.cache_dir, train.epochs) are resolved by qt_config_validate. */
void qt_config_defaults(qt_config *cfg);

/* Defaults, then the YAML file at path, then the overrides in order: each is
 * "key.path=value" (as after `--set`), the value read as a YAML value and typed by the
 * schema (lora.targets also takes "q,v"), then qt_config_validate. Returns 0, or -1 with
 * one line in err; cfg is then unspecified. */
int qt_config_load(qt_config *cfg, const char *path, const char *const *overrides,
                   int n_overrides, qt_err *err);
/* The same from text in memory; name stands for the file in messages and gives the
 * default output.name (its base name without .yaml/.yml). */
int qt_config_load_string(qt_config *cfg, const char *text, size_t len, const char *name,
                          const char *const *overrides, int n_overrides, qt_err *err);

/* Range and cross-field checks, and resolution of the derived defaults. Loading calls
 * it; call it yourself on a config built in code. Idempotent. */
int qt_config_validate(qt_config *cfg, qt_err *err);

/* The resolved config as YAML (`qtrain --print-config`); loading it again gives the
 * same qt_config. */
void qt_config_print(const qt_config *cfg, FILE *f);

/* "24GiB", "512 MiB", "1.5GiB", "8GB", "4096" (bytes). KiB/MiB/GiB/TiB are 1024-based,
 * KB/MB/GB/TB 1000-based, B is bytes; units are case-insensitive. The result must be
 * a whole number of bytes below 2^63. Returns 0, or -1 with why in err. */
int qt_parse_size(const char *s, uint64_t *bytes, qt_err *err);
/* Shortest exact form: "24GiB", "1500MB", else the byte count. buf >= 32 bytes. */
const char *qt_format_size(uint64_t bytes, char *buf, size_t n);

/* The folder of the NF4 base cache: quant.cache_dir, else $XDG_CACHE_HOME/qtrain, else
 * $HOME/.cache/qtrain; NULL when quant.cache is false, the base is not NF4, or no home is
 * known. */
const char *qt_nf4_cache_dir(const qt_config *cfg, char *buf, size_t n);

/* Names used in the YAML for the enums (NULL when out of range). */
const char *qt_quant_type_name(qt_quant_type t);
const char *qt_data_format_name(qt_data_format f);
const char *qt_chat_template_name(qt_chat_template t);
const char *qt_lr_schedule_name(qt_lr_schedule s);
const char *qt_gguf_type_name(qt_gguf_type t);
const char *qt_merge_base_name(qt_merge_base m);

#ifdef __cplusplus
}
#endif
#endif
