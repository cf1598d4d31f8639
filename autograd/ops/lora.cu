/* CUDA side of qt_lora: five cuBLAS GEMMs around a rank-r bottleneck, no elementwise pass
 * over the [N, out] tensors except the one the output GEMM itself does (beta = 1).
 *
 * Operands run in x's dtype: A and B (F32 parameters) are rounded to it per call (r·(in+out)
 * values, tiny), t = xin·Aᵀ is stored in it. Every product accumulates in F32, and the
 * parameter gradients are written in F32 straight from x-dtype operands (cublasGemmEx with
 * an F32 C), so no F32 copy of an [N, ·] activation is ever made.
 *
 * Transient buffers (the rounded A and B, dt, the unmasked dx) come from the STEP arena and
 * are given back before return: the unmasked dx is [N, in], more than c->work is sized for
 * (the largest dequantized weight) at long sequences. Nothing else allocates in between,
 * and later kernels reuse the memory only in stream order. */
#include <limits.h>

#include "../cuda_util.cuh"
#include "dropout.h"
#include "lora.h"
#include "matmul.h"

static void *tmp_alloc(qt_ctx *c, qt_dtype dt, int64_t n) {
    return qt_arena_alloc(&c->data[QT_STEP], (size_t)n * qt_dtype_size(dt));
}

/* w's values in dtype dt: w itself when it already is, else a rounded STEP copy. */
static const void *as_dtype(qt_ctx *c, const qt_tensor *w, qt_dtype dt) {
    if (w->dtype == dt) return w->data;
    qt_tensor o = qt_tensor_over(tmp_alloc(c, dt, w->numel), dt, QT_CUDA, w->ndim, w->shape);
    qt_cuda_axpby(c, &o, w, 1.0, 0.0);
    return o.data;
}

static cudaDataType_t blas_type(qt_dtype dt) {
    switch (dt) {
    case QT_F32: return CUDA_R_32F;
    case QT_BF16: return CUDA_R_16BF;
    case QT_F16: return CUDA_R_16F;
    default: qt_fail(__FILE__, __LINE__, "lora", "dtype %s not supported on CUDA", qt_dtype_name(dt));
    }
}

/* Row-major C[M,N] (F32) = alpha·op(A)·op(B) + beta·C with A and B in dtype ab: the same
 * operand swap as qt_cuda_gemm (matmul.cu), only C's type differs from A's and B's. */
static void gemm_f32_out(qt_ctx *c, bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha,
                         const void *A, int64_t lda, const void *B, int64_t ldb, double beta, float *C,
                         int64_t ldc, qt_dtype ab) {
    QT_CHECK(M >= 1 && N >= 1 && K >= 1 && M <= INT_MAX && N <= INT_MAX && K <= INT_MAX && lda <= INT_MAX &&
                 ldb <= INT_MAX && ldc <= INT_MAX,
             "lora gemm dims M=%lld N=%lld K=%lld out of 1..INT_MAX", (long long)M, (long long)N, (long long)K);
    cudaDataType_t t = blas_type(ab);
    cublasComputeType_t ct = (ab == QT_F32 && c->tf32) ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    float al = (float)alpha, be = (float)beta;
    QT_CUBLAS_CHECK(cublasGemmEx(qt_cuda(c)->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                 (int)N, (int)M, (int)K, &al, B, t, (int)ldb, A, t, (int)lda, &be, C,
                                 CUDA_R_32F, (int)ldc, ct, CUBLAS_GEMM_DEFAULT));
}

extern "C" void qt_cuda_lora_fwd(qt_ctx *c, qt_tensor *out, const qt_tensor *xin, const qt_tensor *A,
                                 const qt_tensor *B, qt_tensor *t, double scale) {
    int64_t N = xin->shape[0], in = xin->shape[1], r = A->shape[0], O = B->shape[0];
    qt_dtype dt = xin->dtype;
    size_t mark = qt_arena_mark(&c->data[QT_STEP]);
    const void *a = as_dtype(c, A, dt), *b = as_dtype(c, B, dt);
    qt_cuda_gemm(c, false, true, N, r, in, 1.0, xin->data, in, a, in, 0.0, t->data, r, dt);     /* t = xin·Aᵀ */
    qt_cuda_gemm(c, false, true, N, O, r, scale, t->data, r, b, r, 1.0, out->data, O, dt);      /* out += s·t·Bᵀ */
    qt_arena_reset(&c->data[QT_STEP], mark);
}

extern "C" void qt_cuda_lora_bwd(qt_ctx *c, const qt_tensor *dY, const qt_tensor *xin, const qt_tensor *A,
                                 const qt_tensor *B, const qt_tensor *t, qt_tensor *dA, qt_tensor *dB,
                                 qt_tensor *dx, double scale, double p, uint64_t seed) {
    int64_t N = xin->shape[0], in = xin->shape[1], r = A->shape[0], O = B->shape[0];
    qt_dtype dt = xin->dtype;
    QT_CHECK((!dA || dA->dtype == QT_F32) && (!dB || dB->dtype == QT_F32) && (!dx || dx->dtype == dt),
             "lora backward: gradient dtypes");
    size_t mark = qt_arena_mark(&c->data[QT_STEP]);
    void *dtv = NULL;
    if (dA || dx) { /* dt = s·dY·B  [N, r] */
        dtv = tmp_alloc(c, dt, N * r);
        qt_cuda_gemm(c, false, false, N, r, O, scale, dY->data, O, as_dtype(c, B, dt), r, 0.0, dtv, r, dt);
    }
    if (dA) gemm_f32_out(c, true, false, r, in, N, 1.0, dtv, r, xin->data, in, 1.0, (float *)dA->data, in, dt);
    if (dB) gemm_f32_out(c, true, false, O, r, N, scale, dY->data, O, t->data, r, 1.0, (float *)dB->data, r, dt);
    if (dx) {
        const void *a = as_dtype(c, A, dt);
        if (p == 0) {
            qt_cuda_gemm(c, false, false, N, in, r, 1.0, dtv, r, a, in, 1.0, dx->data, in, dt); /* dx += dt·A */
        } else { /* the mask has no GEMM epilogue: unmasked product, then dropout's masked accumulate */
            qt_tensor u = qt_tensor_over(tmp_alloc(c, dt, N * in), dt, QT_CUDA, 2, xin->shape);
            qt_cuda_gemm(c, false, false, N, in, r, 1.0, dtv, r, a, in, 0.0, u.data, in, dt);
            qt_cuda_dropout(c, dx, &u, p, seed, true);
        }
    }
    qt_arena_reset(&c->data[QT_STEP], mark);
}
