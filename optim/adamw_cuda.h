/* Internal: CUDA side of AdamW (adamw.cu). */
#ifndef QT_ADAMW_CUDA_H
#define QT_ADAMW_CUDA_H

#include "optim.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qt_adamw_hyper {
    float lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt, grad_scale;
} qt_adamw_hyper;

int qt_adamw_cuda_init(qt_adamw *o, qt_err *err);
void qt_adamw_cuda_free(qt_adamw *o);
double qt_adamw_cuda_sumsq(qt_adamw *o);
void qt_adamw_cuda_step(qt_adamw *o, const qt_adamw_hyper *h);

#ifdef __cplusplus
}
#endif
#endif
