/* CUDA launchers of qt_swiglu (swiglu.cu), called from swiglu.c. Internal to autograd/ops. */
#ifndef QT_OPS_SWIGLU_H
#define QT_OPS_SWIGLU_H

#include "ops_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* y = round_T(silu(gate)) * up */
void qt_cuda_swiglu_fwd(qt_ctx *c, qt_tensor *y, const qt_tensor *gate, const qt_tensor *up);
/* g_gate += dL/dgate, g_up += dL/dup from gy; either may be NULL (frozen). */
void qt_cuda_swiglu_bwd(qt_ctx *c, qt_tensor *g_gate, qt_tensor *g_up, const qt_tensor *gy,
                        const qt_tensor *gate, const qt_tensor *up);

#ifdef __cplusplus
}
#endif
#endif
