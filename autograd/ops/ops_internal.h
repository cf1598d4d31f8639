/* Internal to autograd/ops: shared by the op files, not part of the public API.
 *
 * Pattern of an op (see elementwise.c): the public function checks shapes and
 * dtypes, allocates the STEP output, runs the CPU reference or the CUDA launcher,
 * then qt_record()s a backward function. Each op's CUDA launchers are declared
 * in its own header ops/NAME.h (extern "C", included by NAME.c and NAME.cu). */
#ifndef QT_OPS_INTERNAL_H
#define QT_OPS_INTERNAL_H

#include "../autograd.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Call a CUDA launcher, or fail clearly in a build without CUDA. */
#ifdef QT_WITH_CUDA
#define QT_CUDA_CALL(fn, ...) fn(__VA_ARGS__)
#else
#define QT_CUDA_CALL(fn, ...) qt_fail(__FILE__, __LINE__, #fn, "%s", "this build has no CUDA")
#endif

/* Argument checks that name the op and the tensors. */
void qt_op_check_float(const char *op, const qt_tensor *t);
void qt_op_check_same(const char *op, const qt_tensor *a, const qt_tensor *b); /* shape+dtype+device */
void qt_op_check_2d(const char *op, const qt_tensor *t);

/* t->grad += alpha * src (src same numel; any float dtype; same device). Creates the grad. */
void qt_accum_grad(qt_ctx *c, qt_tensor *t, const qt_tensor *src, double alpha);

/* y = alpha * x + beta * y on the GPU, any float dtypes (beta 0 never reads y). */
void qt_cuda_axpby(qt_ctx *c, qt_tensor *y, const qt_tensor *x, double alpha, double beta);
/* y = a + b on the GPU, same dtype. */
void qt_cuda_add(qt_ctx *c, qt_tensor *y, const qt_tensor *a, const qt_tensor *b);

/* y[n, :] = x[n, :] + b on the GPU; and db += column sums of dy. */
void qt_cuda_add_bias(qt_ctx *c, qt_tensor *y, const qt_tensor *x, const qt_tensor *b);
void qt_cuda_bias_grad(qt_ctx *c, qt_tensor *db, const qt_tensor *dy);

#ifdef __cplusplus
}
#endif
#endif
