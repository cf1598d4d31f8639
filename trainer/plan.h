/* The memory planner (plan.c): every device byte of a run planned against
 * memory.gpu_budget before anything is allocated. Part of trainer/. */
#ifndef QT_PLAN_H
#define QT_PLAN_H

#include <stdio.h>

#include "trainer.h"

typedef struct qt_mem_plan {
    size_t budget;        /* device bytes planned against (0 on the CPU) */
    bool budget_auto;     /* memory.gpu_budget: auto (the device's free memory less 1 GiB) */
    size_t overhead;      /* CUDA context and libraries (an estimate) */
    size_t embed_bytes;   /* the embedding table */
    bool embed_on_host;   /* ... kept in pinned host memory (when layers stream) */
    size_t head_bytes;    /* lm_head (untied) and the norms */
    size_t layer_bytes;   /* one layer's projections */
    int layers, resident, streamed;
    size_t slot_bytes;    /* the two streaming slots */
    size_t lora_bytes;    /* LoRA parameters and their gradients */
    size_t opt_bytes;     /* AdamW moments, or the paged window */
    size_t step_bytes;    /* activations: the STEP pool */
    size_t work_bytes;    /* op workspace: one dequantized projection */
    size_t host_bytes;    /* pinned host memory for streamed layers and the embedding table */
} qt_mem_plan;

/* Fill p and the budgets in co (co->dev set by the caller), and lo's streaming fields.
 * Returns -1 with e saying what does not fit and what to change. */
int qt_plan_memory(const qt_config *cfg, const hf_config *h, llm_load_opts *lo, qt_ctx_opts *co, qt_mem_plan *p,
                   qt_err *e);
/* The plan as a table (nothing on the CPU). */
void qt_plan_print(const qt_mem_plan *p, FILE *f);
/* The activation estimate (STEP bytes) of one micro-batch of B x T tokens. */
size_t qt_plan_step_bytes(const hf_config *h, int64_t B, int64_t T, qt_dtype dt, bool checkpointing);

/* One layer's activations and their gradients while it runs backward (an estimate). */
size_t qt_plan_layer_bytes(const hf_config *h, int64_t B, int64_t T, qt_dtype dt);

/* memory.keep_activations: with gradient checkpointing, layers keep their activations
 * instead of recomputing them while the STEP pool has room. Measured, not estimated: step 1
 * runs with every layer recomputed (STEP peak P1), step 2 keeps one layer's activations
 * (its cost d = P2 - P1), and from step 3 on as many layers keep theirs as fit in the pool
 * less a margin (5% and one more layer). Call after every optimizer step. */
typedef struct qt_keep_ctl {
    bool enabled;
    int phase;     /* 0: before step 1, 1: measuring one layer, 2: settled */
    size_t layer_est;  /* qt_plan_layer_bytes: set by the caller */
    size_t p1, per_layer;
    int kept;
} qt_keep_ctl;
void qt_keep_ctl_step(qt_keep_ctl *k, llm_model *m, const qt_ctx *c);

#endif
