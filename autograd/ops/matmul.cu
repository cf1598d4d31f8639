/* CUDA side of matmul: one cuBLAS GEMM per product, forward and backward.
 *
 * Plain cublasGemmEx for now. cuBLASLt (heuristic algorithm choice, the workspace,
 * fused bias/activation epilogues) comes with the performance work, behind the
 * same qt_cuda_gemm interface. */
#include <limits.h>

#include "../cuda_util.cuh"
#include "matmul.h"

static cudaDataType_t blas_type(qt_dtype dt) {
    switch (dt) {
    case QT_F32: return CUDA_R_32F;
    case QT_BF16: return CUDA_R_16BF;
    case QT_F16: return CUDA_R_16F;
    default: qt_fail(__FILE__, __LINE__, "gemm", "dtype %s not supported on CUDA", qt_dtype_name(dt));
    }
}

/* cuBLAS is column-major. A row-major matrix X [r, c] with row stride ld is, read as
 * column-major, Xᵀ [c, r] with the same ld. So the row-major C = op(A)·op(B) is the
 * column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: swap the operands and M with N. B's buffer read
 * column-major is already op(B)ᵀ when tb is false ([N,K] column-major), and needs a
 * transpose when tb is true; likewise for A. K and the leading dimensions carry over. */
extern "C" void qt_cuda_gemm(qt_ctx *c, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                             double alpha, const void *A, int64_t lda, const void *B, int64_t ldb,
                             double beta, void *C, int64_t ldc, qt_dtype dtype) {
    QT_CHECK(M >= 1 && N >= 1 && K >= 1 && M <= INT_MAX && N <= INT_MAX && K <= INT_MAX,
             "gemm dims M=%lld N=%lld K=%lld out of 1..INT_MAX", (long long)M, (long long)N,
             (long long)K);
    QT_CHECK(lda >= (ta ? M : K) && ldb >= (tb ? K : N) && ldc >= N && lda <= INT_MAX &&
                 ldb <= INT_MAX && ldc <= INT_MAX,
             "gemm leading dims lda=%lld ldb=%lld ldc=%lld too small for M=%lld N=%lld K=%lld "
             "ta=%d tb=%d", (long long)lda, (long long)ldb, (long long)ldc, (long long)M,
             (long long)N, (long long)K, ta, tb);
    cudaDataType_t t = blas_type(dtype);
    /* bf16/f16 always accumulate in float; F32 may use TF32 tensor cores when asked. */
    cublasComputeType_t ct = (dtype == QT_F32 && c->tf32) ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    float al = (float)alpha, be = (float)beta;
    QT_CUBLAS_CHECK(cublasGemmEx(qt_cuda(c)->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                 ta ? CUBLAS_OP_T : CUBLAS_OP_N, (int)N, (int)M, (int)K, &al, B, t,
                                 (int)ldb, A, t, (int)lda, &be, C, t, (int)ldc, ct,
                                 CUBLAS_GEMM_DEFAULT));
}
