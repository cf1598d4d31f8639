/* CUDA launcher of qt_rope_apply (rope.cu), called from rope.c. Internal to autograd/ops. */
#ifndef QT_OPS_ROPE_H
#define QT_OPS_ROPE_H

#include "ops_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest head_dim / 2: inv_freq travels to the kernel by value as a kernel parameter. */
#define QT_ROPE_MAX_HALF 256

/* out = rotate(in, angle) for forward, or out += rotate(in, -angle) when `backward` (the
 * transpose of a rotation is the rotation by minus the angle). x is [B*T, nh*hd] laid out
 * [B, T, nh, hd]; angle of row (b, t), pair j is float32(pos0 + t) * inv_freq[j] in float32. */
void qt_cuda_rope(qt_ctx *c, qt_tensor *out, const qt_tensor *in, const float *inv_freq, int B, int T,
                  int nh, int hd, int pos0, bool backward);

#ifdef __cplusplus
}
#endif
#endif
