/* CUDA side of qt_cross_entropy (cross_entropy.cu), called from cross_entropy.c.
 *
 * Forward fills, all on the device: out F32 [1] (the mean loss), lse F32 [N] (per-row
 * log-sum-exp, for backward), inv_count F32 [1] (1 / number of counted rows, 0 if none),
 * row_loss F32 [N] scratch, and err I32 [3] = {flag, row, target} for the first target
 * outside [0, V) that is not ignore_index (the launcher zeroes it; the loss becomes NaN). */
#ifndef QT_OPS_CROSS_ENTROPY_H
#define QT_OPS_CROSS_ENTROPY_H

#include "ops_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

void qt_cuda_cross_entropy_fwd(qt_ctx *c, qt_tensor *out, qt_tensor *lse, qt_tensor *inv_count,
                               qt_tensor *row_loss, qt_tensor *err, const qt_tensor *logits,
                               const qt_tensor *targets, int ignore_index);
/* dlogits += (softmax - onehot) * dout[0] * inv_count for counted rows. dout F32 [1]. */
void qt_cuda_cross_entropy_bwd(qt_ctx *c, qt_tensor *dlogits, const qt_tensor *dout,
                               const qt_tensor *logits, const qt_tensor *targets,
                               const qt_tensor *lse, const qt_tensor *inv_count, int ignore_index);

#ifdef __cplusplus
}
#endif
#endif
