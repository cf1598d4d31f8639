/* checkpoints — everything on disk that holds model state.
 *
 * The whole public API of the module is in this header, by section:
 *   1. safetensors: strict mmap reader, sharded Hugging Face models, conversion, writer
 *   2. Hugging Face config.json (Llama / Mistral / Qwen2) and the tensor names and
 *      shapes a config implies
 *   3. PEFT adapter folder
 *   4. training checkpoints (HDF5): everything a run needs to continue exactly, with a
 *      checksum, written atomically, and the identities a resumed run must share
 *   5. GGUF (llama.cpp): container writer/reader, Llama-family names and metadata
 *
 * Formats: /work/shared/specs/safetensors-peft.md (sections 1-3); training checkpoints:
 * docs/checkpoints.md.
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
/* open(path) read-only, refusing what is not a regular file; the fd (>= 0) and its size,
 * or -1 with the reason in e. */
int ck_open_file(const char *path, uint64_t *size, qt_err *e);
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

/* Reading a PEFT LoRA folder back (qtrain merge / export-adapter): adapter_config.json is
 * checked for what a plain-LoRA merge can honour (peft_type LORA, no DoRA, no
 * fan_in_fan_out, bias "none", no modules_to_save, no rank/alpha patterns) and
 * adapter_model.safetensors must hold, for each adapted (layer, projection), both
 * base_model.model.model.layers.L.<self_attn|mlp>.<proj>.lora_A.weight [r, in] and lora_B
 * [out, r] in a float dtype, and nothing else. The safetensors file stays open (tensors
 * point into it) until peft_close. */
#define PEFT_NPROJ 7
extern const char *const peft_proj_names[PEFT_NPROJ]; /* q_proj k_proj v_proj o_proj gate_proj up_proj down_proj */

typedef struct peft_adapter {
    char *dir;
    int r;
    double alpha;
    bool rslora;
    double scale;          /* alpha / r, or alpha / sqrt(r) with rslora */
    double dropout;
    char *base_model;      /* base_model_name_or_path, or NULL */
    unsigned targets;      /* bit p: projection p is adapted in at least one layer */
    int n_layers;          /* 1 + the highest layer index seen */
    const st_tensor **A, **B; /* [n_layers * PEFT_NPROJ]; NULL where (layer, proj) has none */
    st_file st;
} peft_adapter;

int peft_open(peft_adapter *a, const char *dir, qt_err *e);
void peft_close(peft_adapter *a);
/* Every adapted projection fits the base model's config: layer < L, A [r, in], B [out, r]. */
int peft_check_model(const peft_adapter *a, const hf_config *cfg, qt_err *e);
/* [in, out] of projection p in cfg */
void peft_proj_dims(const hf_config *cfg, int p, int64_t *in, int64_t *out);

/* ================================================================== 4. training checkpoints
 *
 * CKPT_DIR/step-000123.h5 (HDF5; layout, guarantees and limits in docs/checkpoints.md) holds
 * the LoRA tensors by PEFT name, the AdamW moments and step count, the loop position (which
 * is the LR-schedule position), the RNG states, the data position, the resolved config and
 * the identities below, plus a checksum over every dataset. CKPT_DIR/latest names the newest
 * one. Saving writes STEP.h5.tmp, fsyncs, renames, fsyncs the folder, then rewrites latest
 * atomically and removes old files: a crash or a full disk at any moment leaves the previous
 * checkpoint and `latest` intact. */

/* Streaming 64-bit hash (FNV-1a over 64-bit words + murmur3 finalizer): the checkpoint
 * checksum and the identity hashes. Not cryptographic. */
typedef struct ck_hash { uint64_t h, len; uint8_t tail[8]; int ntail; } ck_hash;
void ck_hash_init(ck_hash *s);
void ck_hash_update(ck_hash *s, const void *data, size_t n);
uint64_t ck_hash_final(const ck_hash *s);
uint64_t ck_hash64(const void *data, size_t n);
/* Feed a whole file (streamed in 1 MiB reads); *size (optional) gets its length. */
int ck_hash_file(const char *path, ck_hash *s, uint64_t *size, qt_err *e);

#define CK_ID_MAX 512 /* bytes of one identity string, with its NUL */

/* What a run is made of. A resumed run must match all four (ck_identity_mismatch); each is
 * a short readable string that ends in a hash where a hash is needed, e.g.
 * "synthetic:tiny" or "config.json + 4 safetensors headers h64:1f2e3d4c5b6a7988". */
typedef struct ck_identity {
    char base_model[CK_ID_MAX]; /* ck_model_identity, or the synthetic shape's name */
    char tokenizer[CK_ID_MAX];  /* hash of tokenizer.json, or "none" */
    char lora[CK_ID_MAX];       /* r, targets, and a hash of every tensor's name and shape */
    char data[CK_ID_MAX];       /* hash of the data files and the options that shape rows */
} ck_identity;

/* Hash of DIR/config.json and the header of every safetensors shard of DIR. */
int ck_model_identity(const char *dir, char *out, size_t n, qt_err *e);
/* The first of "base model", "tokenizer", "LoRA shape", "data" that differs (the two values
 * in *was and *is, either may be NULL), or NULL when the runs agree. */
const char *ck_identity_mismatch(const ck_identity *saved, const ck_identity *now, const char **was,
                                 const char **is);

/* One trainable tensor: weights and both AdamW moments as host float32 [shape[0], shape[1]].
 * Saving reads w, m, v; loading fills them (the caller allocates numel floats each). */
typedef struct ck_param {
    const char *name; /* PEFT name: base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight */
    int64_t shape[2];
    float *w, *m, *v;
} ck_param;

#define CK_MAX_RNG 8             /* named RNG streams per checkpoint */
#define CK_RNG_NAME 32
#define CK_MAX_CONFIG (1u << 20) /* the config text, as QT_CFG_FILE_MAX */
#define CK_MAX_BLOB (64u << 20)  /* the data loader's opaque state */

typedef struct ck_rng { char name[CK_RNG_NAME]; uint64_t s[4]; } ck_rng; /* a qt_rng's words */

/* Where the data stream is. epoch/index/seed are qt_loader_pos (data.h) or the trainer's own
 * batch cursor; `blob` is a slot the data loader may fill with any further state it needs to
 * resume exactly (stored as /data/loader, bytes, checksummed like the rest; NULL/0 = none). */
typedef struct ck_data_pos {
    int64_t epoch, index;
    uint64_t seed;
    uint8_t *blob;
    size_t blob_len;
} ck_data_pos;

/* Everything but the tensors. */
typedef struct ck_train_state {
    int64_t step;          /* loop steps done, skipped ones included: the LR-schedule position */
    int64_t opt_step;      /* AdamW updates taken (bias corrections) */
    int64_t micro_batches; /* micro-batches served so far (the trainer's dropout-seed counter) */
    int64_t tokens;        /* tokens trained on so far */
    int64_t skipped_steps; /* non-finite steps skipped so far */
    int64_t nonfinite_run; /* of which at the end, in a row */
    double first_loss, first_eval; /* of the whole run, for the summary (NaN when none yet) */
    double last_loss, last_eval;   /* of the last step / eval before the checkpoint (NaN: none) */
    ck_rng rng[CK_MAX_RNG];
    int n_rng;
    ck_data_pos data;
    char *config;          /* the resolved config (qt_config_print), NUL-terminated */
    ck_identity id;
} ck_train_state;

/* Write CKPT_DIR/step-<s->step>.h5 as described above (CKPT_DIR is created), point latest
 * at it, then keep only the `keep` newest step files (0 = all; files of a higher step, left
 * by a run that was resumed from an older checkpoint, and stale .tmp files go too). The
 * file name written goes to name_out (optional, >= 32 bytes). On error: -1, the tmp file
 * removed, every earlier checkpoint and latest as they were. QTRAIN_TEST_SLOW_SAVE=SECONDS
 * sleeps before and after the rename (fault tests kill the process there). */
int ck_train_save(const char *dir, const ck_train_state *s, const ck_param *p, int n, int64_t keep,
                  char *name_out, qt_err *e);

/* The newest intact checkpoint of CKPT_DIR: the one `latest` names, else (missing, corrupt,
 * truncated, unreadable) the newest step file whose checksum verifies; each one passed over
 * is reported on stderr as a warning. Returns 1 with its path in path[n], 0 when the folder
 * holds no checkpoint (or does not exist), -1 when there are checkpoints but none is intact
 * (e says why for the newest). */
int ck_train_find(const char *dir, char *path, size_t n, qt_err *e);
/* Check the format and the checksum of every dataset (read back in bounded chunks). */
int ck_train_verify(const char *path, qt_err *e);
/* Read the state of a checkpoint file (sizes bounded by the CK_MAX_* above). s->config and
 * s->data.blob are malloc'd: ck_train_state_free. */
int ck_train_read_state(const char *path, ck_train_state *s, qt_err *e);
void ck_train_state_free(ck_train_state *s);
/* Read the tensors into p[0..n): the file must hold exactly these names, each with exactly
 * p[i].shape (checked before anything is read). */
int ck_train_read_params(const char *path, const ck_param *p, int n, qt_err *e);

/* ================================================================== 5. GGUF (llama.cpp)
 * GGUF v3 (shared/specs/gguf.md): a writer that streams tensor data one tensor at a time
 * (every name, shape and type is declared first: the header holds each tensor's offset),
 * a strict mmap reader that enforces ggml's loader rules, and the Llama-family pieces:
 * tensor names, the Q/K row permutation, hyperparameter keys, llama3 rope_freqs and the
 * tokenizer vocabulary. Merging and quantizing are in trainer/ (qtrain merge). */

#define GGUF_VERSION 3
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_NAME 63 /* bytes of a tensor name (ggml: GGML_MAX_NAME 64 with the NUL) */
#define GGUF_MAX_DIMS 4

typedef enum {
    GGUF_U8 = 0, GGUF_I8, GGUF_U16, GGUF_I16, GGUF_U32, GGUF_I32, GGUF_F32, GGUF_BOOL, GGUF_STR,
    GGUF_ARR, GGUF_U64, GGUF_I64, GGUF_F64, GGUF_NTYPES
} gguf_vtype;
const char *gguf_vtype_name(gguf_vtype t); /* "UINT32" */

/* ggml tensor type id -> values and bytes per block (false: retired or unknown id), name. */
bool gguf_type_size(uint32_t ggml_type, int64_t *blck, uint64_t *bytes);
const char *gguf_type_name(uint32_t ggml_type);

/* ---- writer */
typedef struct gguf_writer gguf_writer;
gguf_writer *gguf_writer_new(void);
void gguf_writer_free(gguf_writer *w); /* removes the temporary file of an unfinished write */
/* Metadata in call order; setting a key twice is an internal error. */
void gguf_set_str(gguf_writer *w, const char *key, const char *v);
void gguf_set_u32(gguf_writer *w, const char *key, uint32_t v);
void gguf_set_i32(gguf_writer *w, const char *key, int32_t v);
void gguf_set_u64(gguf_writer *w, const char *key, uint64_t v);
void gguf_set_f32(gguf_writer *w, const char *key, float v);
void gguf_set_bool(gguf_writer *w, const char *key, bool v);
/* numeric / bool elements (host little-endian), n of them */
void gguf_set_arr(gguf_writer *w, const char *key, gguf_vtype elem, const void *v, uint64_t n);
void gguf_set_arr_str(gguf_writer *w, const char *key, const char *const *v, uint64_t n);
/* Declare the next tensor: ne[0] is the row length (ggml order: an HF [out, in] weight has
 * ne = {in, out}). -1 with e for a bad or duplicate name, bad dims, or rows that are not
 * whole blocks of the type. */
int gguf_add_tensor(gguf_writer *w, const char *name, int n_dims, const int64_t *ne, uint32_t ggml_type, qt_err *e);
uint64_t gguf_writer_size(const gguf_writer *w); /* file bytes for what is declared so far */
/* begin writes the header to PATH.tmp.PID; then each declared tensor's bytes in order
 * (exactly its size; padding is added here); end fsyncs and renames over PATH. */
int gguf_write_begin(gguf_writer *w, const char *path, qt_err *e);
int gguf_write_tensor(gguf_writer *w, const void *data, uint64_t nbytes, qt_err *e);
int gguf_write_end(gguf_writer *w, qt_err *e);

/* ---- reader */
typedef struct gguf_kv {
    const char *key;
    gguf_vtype type;
    gguf_vtype arr_type;   /* ARR: element type */
    uint64_t n;            /* ARR: element count; else 1 */
    const uint8_t *data;   /* the value (or first element) in the mapping, unaligned */
    const char *str;       /* STR: NUL-terminated copy */
    const char **strs;     /* ARR of STR: n copies */
} gguf_kv;

typedef struct gguf_tensor_info {
    const char *name;
    int n_dims;
    int64_t ne[GGUF_MAX_DIMS]; /* padded with 1s */
    uint32_t type;
    uint64_t offset, nbytes;
    const uint8_t *data;   /* in the mapping, at the file's alignment */
} gguf_tensor_info;

typedef struct gguf_file {
    char *path;
    const uint8_t *map;
    size_t size;
    uint32_t version, alignment;
    uint64_t data_start;
    gguf_kv *kv;
    int64_t n_kv;
    gguf_tensor_info *tensors;
    int64_t n_tensors;
} gguf_file;

/* Checks: magic, version 2-3, counts, strings, key uniqueness, value types, no nested
 * arrays, general.alignment UINT32 power of two, names < 64 bytes and unique, 1-4 dims,
 * known types, ne[0] whole blocks, offsets = running padded sum, data inside the file. */
int gguf_open(gguf_file *f, const char *path, qt_err *e);
void gguf_close(gguf_file *f);
const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key);
const gguf_tensor_info *gguf_find_tensor(const gguf_file *f, const char *name);
double gguf_kv_num(const gguf_kv *kv, uint64_t i); /* element i of a numeric value or array */
/* strict: -1 with e when absent or of another type (llama.cpp's rule) */
int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *v, qt_err *e);
int gguf_get_f32(const gguf_file *f, const char *key, float *v, qt_err *e);
int gguf_get_str(const gguf_file *f, const char *key, const char **v, qt_err *e);

/* ---- Llama / Mistral (arch "llama") and Qwen2 (arch "qwen2") */
const char *gguf_arch_name(const hf_config *cfg);
bool gguf_arch_permutes_qk(const hf_config *cfg); /* llama: yes; qwen2 (NEOX rope): no */
/* "model.layers.3.self_attn.q_proj.weight" -> "blk.3.attn_q.weight", embed -> token_embd,
 * model.norm -> output_norm, lm_head -> output; -1 when the name has no GGUF counterpart. */
int gguf_hf_name(const char *hf, char *out, size_t n);
/* llama.cpp's row order for q_proj / k_proj weights, biases and LoRA B (n_head = heads of
 * that projection): HF row h hd + t hd/2 + j becomes row h hd + 2j + t. inverse undoes it. */
void gguf_permute_qk(float *w, int64_t rows, int64_t cols, int n_head, bool inverse);
/* llama3 RoPE scaling as per-frequency divisors (rope_freqs.weight, head_dim/2 values);
 * false when the model has none. */
bool gguf_rope_freqs(const hf_config *cfg, float *out);
/* {arch}.context_length, embedding_length, block_count, ... (spec section 7), typed as
 * llama.cpp reads them. The general.* keys are the caller's. */
void gguf_set_model_meta(gguf_writer *w, const hf_config *cfg);
/* tokenizer.* keys from a tokenizer.json (+ MODEL_DIR/tokenizer_config.json and
 * chat_template.jinja when present; model_dir may be NULL); the token list has exactly
 * cfg->vocab_size entries. Nothing is written when it fails. */
int gguf_set_tokenizer(gguf_writer *w, const char *tokenizer_json, const char *model_dir, const hf_config *cfg,
                       qt_err *e);

#ifdef __cplusplus
}
#endif
#endif
