/* The Llama-family decoder (Llama 2/3/3.1, Mistral, Qwen2, TinyLlama, SmolLM) built from
 * autograd ops, with LoRA adapters on any of the seven projections. Part of trainer/. */
#ifndef QT_MODEL_H
#define QT_MODEL_H

#include "autograd/autograd.h"
#include "checkpoints/checkpoints.h"
#include "quant/quant.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { LIN_Q, LIN_K, LIN_V, LIN_O, LIN_GATE, LIN_UP, LIN_DOWN, LIN_N } llm_lin_kind;
/* "q_proj", ..., as in HF module names; llm_lin_parent gives "self_attn" or "mlp". */
extern const char *const llm_lin_names[LIN_N];
const char *llm_lin_parent(llm_lin_kind k);
#define LLM_TARGETS_ALL ((1u << LIN_N) - 1)

typedef struct llm_lora_cfg {
    int r;
    double alpha;
    double dropout;     /* on the LoRA input, training only */
    bool rslora;        /* scale alpha/sqrt(r) instead of alpha/r */
    unsigned targets;   /* bit (1 << llm_lin_kind) per adapted projection */
    uint64_t seed;      /* A ~ kaiming-uniform(a=sqrt 5) = U(-1/sqrt(in), 1/sqrt(in)); B = 0 */
} llm_lora_cfg;

/* y = x·Wᵀ (+ b) + s·(dropout(x)·Aᵀ)·Bᵀ; W frozen, either dense in the model dtype (w)
 * or NF4 (wq, dequantized inside the op); A, B trainable F32. */
typedef struct llm_linear {
    int in, out;
    qt_tensor *w, *b;
    nf4_tensor *wq;
    qt_tensor *lora_a, *lora_b; /* [r, in], [out, r]; NULL when not adapted */
    double lora_scale;
    uint32_t id;                /* layer * LIN_N + kind: decorrelates dropout masks */
} llm_linear;

typedef struct llm_layer {
    qt_tensor *attn_norm, *mlp_norm;
    llm_linear lin[LIN_N];
    bool streamed;      /* NF4 projections in the model's pinned host arena, uploaded per use */
    bool keep;          /* with grad_checkpointing: this layer keeps its activations (no recompute) */
    uint8_t *host_base; /* streamed: where its arrays start (one contiguous block per layer) */
} llm_layer;

typedef struct llm_stream llm_stream; /* trainer/stream.c */

typedef struct llm_model {
    hf_config cfg;
    qt_dtype dtype;
    qt_tensor *embed, *norm, *lm_head; /* lm_head == embed when tied */
    llm_layer *layers;
    bool grad_checkpointing;
    int ce_chunk_rows;      /* loss: lm_head + cross-entropy over chunks of this many tokens, each
                               recomputed in backward, so the [tokens, vocab] logits never exist
                               whole (0 = auto: chunks of about 64 MiB of logits) */
    bool training;          /* LoRA dropout on (set per micro-batch by the trainer) */
    uint64_t dropout_seed;  /* new for every micro-batch; replayed by checkpoint recomputes */
    llm_lora_cfg lora;
    qt_tensor **lora_params; /* A then B, layer by layer, projection order */
    int n_lora_params;
    qt_arena host;           /* pinned host memory: streamed layers, a host-side embedding table */
    llm_stream *stream;      /* NULL when every layer is resident */
    bool embed_on_host;      /* embed lives in `host` (the GPU reads it in place) */
} llm_model;

typedef struct llm_load_opts {
    qt_dtype dtype;     /* F32, BF16 or F16: compute dtype and dtype of unquantized weights */
    bool nf4;           /* quantize the seven projections of every layer to NF4 */
    bool double_quant;  /* NF4 with double quantization of the block scales */
    /* Layer streaming (CUDA, NF4): this many layers, spread evenly over the depth, keep
     * their projections in pinned host memory and are uploaded to one of two device slots
     * each time they run; the others are resident. 0 = all resident. */
    int streamed_layers;
    /* The (untied) embedding table stays in pinned host memory; the GPU reads its rows in
     * place (a lookup touches B*T rows), sparing vocab x hidden bytes of device memory. */
    bool embed_on_host;
    /* Folder of the on-disk NF4 cache (nf4_cache.h): projections are read from it when a
     * complete cache of this checkpoint exists, else quantized and cached. NULL = none. */
    const char *nf4_cache_dir;
} llm_load_opts;

/* Load a Hugging Face folder (config.json + safetensors) into PERSIST tensors on the
 * context's device. Every weight is frozen. With nf4, each projection passes through
 * STEP memory once on its way to 4 bits, so the dense model never sits in memory. */
int llm_load(llm_model *m, qt_ctx *c, const char *dir, const llm_load_opts *o, qt_err *e);
/* Bytes the loaded weights take in PERSIST memory (dense, NF4 and norms), streamed layers
 * and a host-side embedding table not included. */
size_t llm_weight_bytes(const llm_model *m);

/* ---- placement, shared by the checkpoint and synthetic loaders: call llm_place_init
 * once m->cfg and m->layers exist (it marks the streamed layers and reserves the pinned
 * arena); llm_embed_alloc gives the table the model uses and, in *fill, the tensor to
 * write its values into (the host side of a host-resident table); llm_nf4_place
 * quantizes `dense` (STEP or anywhere) for layer l into PERSIST or, when l is streamed,
 * the pinned arena (the seven projections of a layer must be placed in order). */
int llm_place_init(llm_model *m, qt_ctx *c, const llm_load_opts *o, qt_err *e);
qt_tensor *llm_embed_alloc(llm_model *m, qt_ctx *c, qt_dtype dt, const int64_t *shape, bool on_host,
                           qt_tensor **fill);
int llm_nf4_place(llm_model *m, qt_ctx *c, int l, qt_tensor *dense, bool dq, nf4_tensor **out, qt_err *e);
/* The two halves of llm_nf4_place: reserve layer l's projection where it lives, then fill
 * it by quantizing `dense` (through STEP). */
nf4_tensor *llm_nf4_alloc(llm_model *m, qt_ctx *c, int l, const int64_t *shape, bool dq);
int llm_nf4_fill(qt_ctx *c, nf4_tensor *q, qt_tensor *dense, qt_err *e);

/* With gradient checkpointing on, let the last n resident layers keep their activations for
 * backward instead of recomputing them (same results, bit for bit; more STEP memory).
 * Streamed layers always recompute. Returns how many layers keep theirs. */
int llm_keep_activations(llm_model *m, int n);

/* ---- layer streaming (stream.c) */

/* Bytes of one layer's seven NF4 projections laid out in an arena (256-byte aligned arrays):
 * the size of a streaming slot and of a streamed layer's pinned block. */
size_t llm_layer_nf4_bytes(const hf_config *h, bool dq);
/* Whether layer l is streamed when s of L layers are (spread evenly). */
bool llm_layer_is_streamed(int l, int s, int L);
/* Set up the two device slots (PERSIST) and the copy stream; call after loading. */
int llm_stream_init(llm_model *m, qt_ctx *c, qt_err *e);
void llm_stream_free(llm_model *m);
/* Layer l ready for use on the context's stream: resident layers as they are; a streamed
 * one through its slot (uploaded now unless prefetched), with the next streamed layer in
 * the direction of travel (forward, then backward) prefetched into the other slot. The
 * result stays valid until the second-next streamed layer is asked for. */
const llm_layer *llm_layer_get(qt_ctx *c, llm_model *m, int l);
/* Bytes uploaded and device ms the uploads took since the last call. */
void llm_stream_stats(llm_model *m, double *bytes, double *ms);
void llm_free(llm_model *m);
/* Add LoRA adapters (A random, B zero, as PEFT initialises them). */
int llm_add_lora(llm_model *m, qt_ctx *c, const llm_lora_cfg *lc, qt_err *e);
/* PEFT's tensor name of an adapter matrix: base_model.model.model.layers.L.self_attn.q_proj.lora_A.weight */
void llm_lora_name(char *buf, size_t n, int layer, llm_lin_kind k, bool is_b);

/* Logits [B*T, V] for token ids I32 [B*T] (row b*T + t), positions pos0.. */
qt_tensor *llm_forward(qt_ctx *c, llm_model *m, qt_tensor *ids, int B, int T);
/* HF causal-LM loss: mean cross-entropy of logits[:, t] against labels[:, t+1] over
 * positions whose label is not -100. labels I32 [B*T] (unshifted, as passed to HF). */
qt_tensor *llm_loss(qt_ctx *c, llm_model *m, qt_tensor *ids, const int32_t *labels, int B, int T);
/* targets[b*T + t] = labels[b*T + t + 1] (t < T-1), else -100. */
void llm_shift_labels(const int32_t *labels, int B, int T, int32_t *targets);

/* ---- inference with a KV cache (no tape) */

typedef struct llm_kv {
    int B, Tmax, past;  /* positions 0..past-1 are filled */
    qt_tensor **k, **v; /* per layer [B*Tmax, nkv*hd], PERSIST */
} llm_kv;

/* Cache for B sequences of up to Tmax positions, in the context's PERSIST pool. */
int llm_kv_init(llm_kv *kv, qt_ctx *c, const llm_model *m, int B, int Tmax, qt_err *e);
void llm_kv_free(llm_kv *kv);
/* Logits [B*Tq, V] of the next Tq tokens of each sequence (ids I32 [B*Tq]); their keys and
 * values are appended to the cache. Call with grad disabled. */
qt_tensor *llm_forward_kv(qt_ctx *c, llm_model *m, llm_kv *kv, qt_tensor *ids, int Tq);

typedef struct llm_sampler {
    double temperature; /* 0: greedy */
    double top_p;       /* nucleus mass in (0, 1]; 1 = off */
    int top_k;          /* 0 = off */
    qt_rng rng;
} llm_sampler;
/* Next token from one row of logits. */
int32_t llm_sample(llm_sampler *s, const float *logits, int V);

#ifdef __cplusplus
}
#endif
#endif
