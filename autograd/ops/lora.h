/* CUDA launchers of qt_lora (lora.cu), called from lora.c. Internal to autograd/ops. */
#ifndef QT_OPS_LORA_H
#define QT_OPS_LORA_H

#include "ops_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out += scale · t · Bᵀ with t = xin · Aᵀ written to t ([N, r], x's dtype). out holds y on
 * entry; xin is x or its dropout copy; A [r, in] and B [out, r] are F32 and are rounded to
 * x's dtype (copies in STEP memory released before return) so both GEMMs run on tensor cores. */
void qt_cuda_lora_fwd(qt_ctx *c, qt_tensor *out, const qt_tensor *xin, const qt_tensor *A,
                      const qt_tensor *B, qt_tensor *t, double scale);

/* From dY = dL/dout: dt = scale · dY · B; dA += dtᵀ · xin and dB += scale · dYᵀ · t (F32,
 * accumulated in F32 from x-dtype operands); dx += mask(dt · A) where mask is the inverted
 * dropout (p, seed) of the forward, or the identity when p = 0. dA, dB, dx may be NULL. */
void qt_cuda_lora_bwd(qt_ctx *c, const qt_tensor *dY, const qt_tensor *xin, const qt_tensor *A,
                      const qt_tensor *B, const qt_tensor *t, qt_tensor *dA, qt_tensor *dB,
                      qt_tensor *dx, double scale, double p, uint64_t seed);

#ifdef __cplusplus
}
#endif
#endif
