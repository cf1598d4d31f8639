/* CUDA launchers of qt_rmsnorm (rmsnorm.cu), called from rmsnorm.c. Internal to autograd/ops. */
#ifndef QT_OPS_RMSNORM_H
#define QT_OPS_RMSNORM_H

#include "ops_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* y = round_T(x * rstd) * w per row; rstd (F32 [N], may be NULL) receives 1/sqrt(mean(x^2)+eps). */
void qt_cuda_rmsnorm_fwd(qt_ctx *c, qt_tensor *y, qt_tensor *rstd, const qt_tensor *x,
                         const qt_tensor *w, double eps);
/* gx += dL/dx and gw += dL/dw from gy = dL/dy; either of gx, gw may be NULL (frozen). */
void qt_cuda_rmsnorm_bwd(qt_ctx *c, qt_tensor *gx, qt_tensor *gw, const qt_tensor *gy,
                         const qt_tensor *x, const qt_tensor *w, const qt_tensor *rstd);

#ifdef __cplusplus
}
#endif
#endif
