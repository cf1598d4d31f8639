/* checkpoints — everything on disk that holds model state.
 *
 * The whole public API of the module is in this header, by section:
 *   1. safetensors: strict mmap reader, sharded Hugging Face models, conversion, writer
 *   2. Hugging Face config.json (Llama / Mistral / Qwen2) and the tensor names and
 *      shapes a config implies
 *   (to come: HDF5 training checkpoints, PEFT adapter export, GGUF writer, merge)
 *
 * Formats: /work/shared/specs/safetensors-peft.md (sections 1-3).
 *
 * Errors: every function that reads a user's file or config returns 0 (or a count) on
 * success and -1 on failure, after filling a qt_err with one line that names the file,
 * the tensor or key, the byte offset where that helps, and how to fix it. Internal
 * invariants (a caller passing nonsense) use QT_CHECK. */
#ifndef QT_CHECKPOINTS_H
#define QT_CHECKPOINTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "autograd/autograd.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ================================================================== 0. common */

/* Read a whole (small) file into a NUL-terminated malloc'd buffer; refuses files larger
 * than max_bytes so a hostile path (a device, a huge file) cannot exhaust memory.
 * *len (optional) gets the size. NULL on error. */
char *ck_read_file(const char *path, size_t max_bytes, size_t *len, qt_err *e);

/* Durable write of the concatenated chunks to path: temporary file in the same folder,
 * fsync, rename, fsync of the folder. On error the old file (if any) is untouched. */
typedef struct ck_chunk { const void *data; uint64_t len; } ck_chunk;
int ck_write_atomic(const char *path, const ck_chunk *chunks, int n, qt_err *e);
/* mkdir -p */
int ck_mkdirs(const char *dir, qt_err *e);

/* ================================================================== 1. safetensors */

/* Every dtype of the format, in the reference implementation's enum order (increasing
 * alignment). The writer lays tensors out by this order descending, then by name, which
 * is what the `safetensors` package does (so our files are byte-identical to its own). */
typedef enum {
    ST_BOOL, ST_F4, ST_F6_E2M3, ST_F6_E3M2, ST_U8, ST_I8, ST_F8_E5M2, ST_F8_E4M3, ST_F8_E8M0,
    ST_F8_E4M3FNUZ, ST_F8_E5M2FNUZ, ST_I16, ST_U16, ST_F16, ST_BF16, ST_I32, ST_U32, ST_F32,
    ST_C64, ST_F64, ST_I64, ST_U64, ST_NDTYPES
} st_dtype;

const char *st_dtype_name(st_dtype dt); /* "BF16" */
int st_dtype_bits(st_dtype dt);         /* 4, 6, 8, 16, 32 or 64 */
int st_dtype_from_name(const char *s);  /* -1 when not a safetensors dtype */
/* Known to the format but not convertible by qtrain: the F8 family, F4, F6, C64. Files
 * holding them open fine; st_read_* / st_to_qt refuse those tensors by name. */
bool st_dtype_readable(st_dtype dt);
st_dtype st_dtype_of_qt(qt_dtype dt); /* F32->F32, BF16->BF16, F16, F64, I32, U8 */

#define ST_MAX_DIMS 8                       /* qtrain's limit, not the format's */
#define ST_MAX_HEADER 100000000ull          /* the format's limit on N */

/* One tensor of an open file. `data` points into the read-only mapping and is NOT
 * necessarily aligned (the format imposes no alignment): read it through st_read_* /
 * st_to_qt, or with memcpy. */
typedef struct st_tensor {
    const char *name;
    const char *file; /* path of the file it lives in (for messages) */
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    uint64_t begin, end; /* data_offsets: relative to the data buffer, end exclusive */
    const uint8_t *data;
} st_tensor;

typedef struct st_kv { const char *key, *value; } st_kv;

/* An open safetensors file: mmap'd read-only, header fully validated (spec section 1:
 * header size, UTF-8, JSON, dtypes, shapes, offsets contiguous from 0 and covering the
 * data buffer exactly, no duplicate names). Everything lives until st_close. */
typedef struct st_file {
    char *path;
    const uint8_t *map;
    size_t size;
    uint64_t header_len;       /* N */
    st_tensor *tensors;        /* sorted by name (strcmp): iterate, or st_find */
    int n_tensors;
    st_kv *meta;               /* __metadata__, in file order */
    int n_meta;
    char *strings;             /* storage of names, keys and values */
} st_file;

int st_open(st_file *f, const char *path, qt_err *e);
void st_close(st_file *f);
const st_tensor *st_find(const st_file *f, const char *name); /* NULL if absent */
const char *st_meta_get(const st_file *f, const char *key);   /* NULL if absent */

/* A Hugging Face model's weights: `path` is a folder holding model.safetensors (single
 * file, preferred like transformers does) or model.safetensors.index.json + its shards,
 * or directly a .safetensors file or an index .json. Every shard is opened once; every
 * weight_map entry must exist in the shard it names; a name in two shards is an error.
 * A folder with only pytorch_model*.bin is refused with the command that converts it. */
typedef struct st_model {
    char *dir;
    st_file *files;
    int n_files;
    const st_tensor **tensors; /* all shards, sorted by name */
    int n_tensors;
} st_model;

int st_model_open(st_model *m, const char *path, qt_err *e);
void st_model_close(st_model *m);
const st_tensor *st_model_find(const st_model *m, const char *name); /* bsearch; NULL if absent */

/* "model.norm.weight BF16[4096] (model-00004-of-00004.safetensors)" into buf; returns buf. */
const char *st_describe(const st_tensor *t, char *buf, size_t n);

/* Elements [first, first+n) of t in C order, converted: floats exactly (F64 rounds to
 * f32 in st_read_f32), integers and BOOL by value. Chunked reads let a loader quantize a
 * 2 GB embedding without a second full copy. */
int st_read_f32(const st_tensor *t, int64_t first, int64_t n, float *dst, qt_err *e);
int st_read_f64(const st_tensor *t, int64_t first, int64_t n, double *dst, qt_err *e);
/* Copy t into dst (any device; numel must match), converting:
 * float dtypes -> float dst (qt_upload's conversion), integers/BOOL -> float dst by value,
 * integers/BOOL -> I32 dst (range-checked), U8/BOOL -> U8 dst. Floats never go to ints. */
int st_to_qt(const st_tensor *t, qt_tensor *dst, qt_err *e);

/* Writer. Tensors are host memory, C order, little-endian, numel*bits/8 bytes each.
 * Layout as the reference implementation: sorted by dtype (enum order, descending) then
 * name; compact JSON with __metadata__ first, fields dtype/shape/data_offsets; header
 * padded with spaces to a multiple of 8. `format: pt` is added to the metadata when the
 * caller gave no "format" key (transformers requires it). Written to PATH.tmp.PID, fsync'd
 * and renamed over PATH, so a crash never leaves a half-written file under PATH. */
typedef struct st_wtensor {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
} st_wtensor;

int st_write(const char *path, const st_wtensor *t, int n, const st_kv *meta, int n_meta,
             qt_err *e);
/* Describe a CPU qt_tensor for st_write (data is borrowed, not copied). */
st_wtensor st_wtensor_of(const char *name, const qt_tensor *t);

/* ================================================================== 2. Hugging Face config */

typedef enum { HF_LLAMA = 0, HF_MISTRAL, HF_QWEN2 } hf_arch;

#define HF_MAX_EOS 8

/* Limits a config must respect (a hostile file cannot make us allocate terabytes or
 * overflow int arithmetic). The largest real models are far inside them
 * (Llama-3.1-405B: H 16384, I 53248, L 126, nh 128, V 128256). */
#define HF_MAX_HIDDEN 65536
#define HF_MAX_INTERMEDIATE 1048576
#define HF_MAX_LAYERS 1024
#define HF_MAX_HEADS 1024
#define HF_MAX_HEAD_DIM 1024
#define HF_MAX_VOCAB 4000000
#define HF_MAX_POSITIONS 16777216
#define HF_MAX_PARAMS 2e12 /* total parameter count implied by the config */

typedef struct hf_config {
    hf_arch arch;
    char model_type[32];     /* "llama", "mistral", "qwen2" */
    char architecture[64];   /* "LlamaForCausalLM" ... ("" if the file has none) */
    int hidden_size, intermediate_size, num_hidden_layers;
    int num_attention_heads, num_key_value_heads, head_dim;
    int vocab_size, max_position_embeddings;
    double rms_norm_eps;
    qt_rope rope;            /* theta, scaling (0 none, 1 linear, 2 llama3), head_dim */
    bool tie_word_embeddings;
    bool attention_bias, mlp_bias; /* the file's keys (Llama only) */
    /* What the weights hold: Llama attention_bias -> q/k/v/o biases; Qwen2 -> q/k/v
     * biases always (hard-wired in its model, no config key); mlp_bias -> gate/up/down. */
    bool has_qkv_bias, has_o_bias, has_mlp_bias;
    int bos_token_id;        /* -1 when absent/null */
    int eos_token_ids[HF_MAX_EOS]; /* a list in Llama 3.1 Instruct; the first 8 are kept */
    int n_eos;
    int sliding_window;      /* 0: full attention. Mistral's window (null = none), Qwen2's
                                only when use_sliding_window is true */
    char dtype[16];          /* torch_dtype (<= v4) / dtype (v5), "" if absent */
} hf_config;

/* `path` is a model folder (reads PATH/config.json) or the json file itself. */
int hf_config_load(hf_config *cfg, const char *path, qt_err *e);
/* Parse config.json text; `where` names it in messages. */
int hf_config_parse(hf_config *cfg, const char *json, size_t len, const char *where, qt_err *e);
/* "llama: H 4096, I 14336, L 32, heads 32/8 x 128, V 128256, rope 500000 llama3 x8" */
const char *hf_config_describe(const hf_config *cfg, char *buf, size_t n);

/* The tensors an HF checkpoint of this config holds (spec section 2 table): embedding,
 * per layer the norms, projections and biases the config implies, final norm, and
 * lm_head unless embeddings are tied. PyTorch Linear layout [out, in]. */
typedef struct hf_tensor_spec {
    char name[64];
    int ndim;
    int64_t shape[2];
} hf_tensor_spec;

/* malloc'd array in a stable order (layer by layer); returns the count. Free with free(). */
int hf_expected_tensors(const hf_config *cfg, hf_tensor_spec **out);
/* Check a checkpoint against the config: every expected tensor present with that shape
 * and a float dtype (F32/F16/BF16/F64); nothing unexpected besides what HF itself ignores
 * (rotary_emb.inv_freq, lm_head.weight when tied). The error names the first offender. */
int hf_check_tensors(const hf_config *cfg, const st_model *m, qt_err *e);

/* ================================================================== 3. PEFT adapter folder */

typedef struct peft_adapter_info {
    int r;
    double alpha, dropout;
    bool rslora;
    const char *const *targets; /* HF module names: "q_proj", ... */
    int n_targets;
    const char *base_model;     /* base_model_name_or_path, or NULL */
} peft_adapter_info;

/* DIR/adapter_config.json and DIR/adapter_model.safetensors (tensors named
 * base_model.model.model.layers.L.self_attn.q_proj.lora_A.weight, lora_A [r, in],
 * lora_B [out, r]). DIR is created if needed; both files are written durably. */
int peft_save(const char *dir, const peft_adapter_info *a, const st_wtensor *t, int n, qt_err *e);

#ifdef __cplusplus
}
#endif
#endif
