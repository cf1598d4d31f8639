/* CUDA side of qt_matmul (matmul.cu), called from matmul.c through QT_CUDA_CALL.
 * Other ops that need a plain GEMM on the GPU (attention, LoRA) reuse qt_cuda_gemm. */
#ifndef QT_OPS_MATMUL_H
#define QT_OPS_MATMUL_H

#include "ops_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* C = alpha * op(A) · op(B) + beta * C, all matrices ROW-major, on the context's stream.
 * C is [M,N] with row stride ldc; A is [M,K] (lda >= K), or [K,M] (lda >= M) if ta;
 * B is [K,N] (ldb >= N), or [N,K] (ldb >= K) if tb. A, B and C have the same dtype
 * (F32, BF16 or F16); products accumulate in float (TF32 for F32 when c->tf32).
 * beta == 0 never reads C. M, N, K >= 1. */
void qt_cuda_gemm(qt_ctx *c, bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha,
                  const void *A, int64_t lda, const void *B, int64_t ldb, double beta, void *C,
                  int64_t ldc, qt_dtype dtype);

#ifdef __cplusplus
}
#endif
#endif
