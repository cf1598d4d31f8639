/* optim — AdamW with decoupled weight decay (PyTorch semantics), global-norm gradient
 * clipping, learning-rate schedules, and a paged mode for the GPU in which the moments
 * live in pinned host memory and visit the GPU in chunks of at most `gpu_bytes`.
 *
 * Parameters and gradients are the trainable tensors themselves (any float dtype; the
 * update is computed in float, moments are always float32). */
#ifndef QT_OPTIM_H
#define QT_OPTIM_H

#include "autograd/autograd.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- learning-rate schedules (Hugging Face transformers' get_*_schedule_with_warmup:
 * step counts optimizer steps from 0, and warmup starts at lr 0). */
typedef enum { QT_LR_CONSTANT = 0, QT_LR_LINEAR, QT_LR_COSINE } qt_lr_kind;
typedef struct qt_lr_sched {
    qt_lr_kind kind;
    double lr;            /* peak learning rate */
    int64_t warmup_steps; /* linear ramp from 0 */
    int64_t total_steps;  /* decay reaches min_ratio * lr here (linear, cosine) */
    double min_ratio;     /* floor of the decay as a fraction of lr (0 = transformers) */
} qt_lr_sched;
double qt_lr_at(const qt_lr_sched *s, int64_t step);

/* ---- AdamW */
typedef struct qt_adamw_cfg {
    double beta1, beta2, eps, weight_decay;
    double max_grad_norm; /* <= 0: no clipping */
    bool paged;           /* GPU only: moments in pinned host memory */
    size_t gpu_bytes;     /* paged: most device bytes the step may use (>= 64 KiB) */
} qt_adamw_cfg;

typedef struct qt_adamw {
    qt_adamw_cfg cfg;
    qt_ctx *ctx;
    int n;
    qt_tensor **params;
    float **m, **v;   /* per parameter: device (PERSIST) or host (CPU, or pinned when paged) */
    int64_t step;     /* optimizer steps taken */
    void *dev;        /* backend scratch (grad-norm accumulator, paged staging) */
} qt_adamw;

/* Moments start at zero. Returns -1 with a message when the memory cannot be had. */
int qt_adamw_init(qt_adamw *o, qt_ctx *c, qt_tensor *const *params, int n, const qt_adamw_cfg *cfg,
                  qt_err *err);
void qt_adamw_free(qt_adamw *o);
/* Global L2 norm of all gradients (one host sync on the GPU). */
double qt_adamw_grad_norm(qt_adamw *o);
/* One step at learning rate lr: clips to max_grad_norm using grad_norm (pass the value
 * qt_adamw_grad_norm returned), then updates every parameter. */
void qt_adamw_step(qt_adamw *o, double lr, double grad_norm);
/* Bytes of moment memory (host and device) for the given parameters. */
size_t qt_adamw_state_bytes(const qt_adamw *o);

#ifdef __cplusplus
}
#endif
#endif
