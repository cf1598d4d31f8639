/* CUDA side of qt_embedding (embedding.cu), called from embedding.c through QT_CUDA_CALL. */
#ifndef QT_OPS_EMBEDDING_H
#define QT_OPS_EMBEDDING_H

#include "ops_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* y[n,:] = table[ids[n],:]; y has table's dtype. Aborts (QT_CHECK) naming the first
 * out-of-range id it saw; this waits for the stream (see embedding.cu). */
void qt_cuda_embedding_forward(qt_ctx *c, qt_tensor *y, const qt_tensor *table, const qt_tensor *ids);
/* grad[ids[n],:] += dy[n,:]; ids already checked by the forward. */
void qt_cuda_embedding_backward(qt_ctx *c, qt_tensor *grad, const qt_tensor *dy, const qt_tensor *ids);

#ifdef __cplusplus
}
#endif
#endif
