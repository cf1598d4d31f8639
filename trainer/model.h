/* The Llama-family decoder (Llama 2/3/3.1, Mistral, Qwen2, TinyLlama, SmolLM) built from
 * autograd ops, with LoRA adapters on any of the seven projections. Part of trainer/. */
#ifndef QT_MODEL_H
#define QT_MODEL_H

#include "autograd/autograd.h"
#include "checkpoints/checkpoints.h"

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

/* y = x·Wᵀ (+ b) + s·(dropout(x)·Aᵀ)·Bᵀ; W frozen in the model dtype; A, B trainable F32. */
typedef struct llm_linear {
    int in, out;
    qt_tensor *w, *b;
    qt_tensor *lora_a, *lora_b; /* [r, in], [out, r]; NULL when not adapted */
    double lora_scale;
} llm_linear;

typedef struct llm_layer {
    qt_tensor *attn_norm, *mlp_norm;
    llm_linear lin[LIN_N];
} llm_layer;

typedef struct llm_model {
    hf_config cfg;
    qt_dtype dtype;
    qt_tensor *embed, *norm, *lm_head; /* lm_head == embed when tied */
    llm_layer *layers;
    bool grad_checkpointing;
    llm_lora_cfg lora;
    qt_tensor **lora_params; /* A then B, layer by layer, projection order */
    int n_lora_params;
} llm_model;

/* Load a Hugging Face folder (config.json + safetensors) into PERSIST tensors of dtype dt
 * (F32, BF16 or F16) on the context's device. Every weight is frozen. */
int llm_load(llm_model *m, qt_ctx *c, const char *dir, qt_dtype dt, qt_err *e);
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

#ifdef __cplusplus
}
#endif
#endif
