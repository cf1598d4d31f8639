/* matmul: y[M,N] = op(a) · op(b) on row-major 2-D tensors.
 *
 * Forward and both gradients are the same primitive, C (+)= op(A)·op(B), with other
 * operands and transpose flags; gemm() runs it on the CPU (double) or the GPU (cuBLAS). */
#include "matmul.h"

/* ---- CPU reference */

/* Row-major op(X) as a contiguous [rows, cols] double matrix: X itself when not transposed
 * (x is then [rows, cols]), else a transposed scratch copy (x is [cols, rows]). */
static const double *cpu_op(qt_ctx *c, const double *x, bool t, int64_t rows, int64_t cols) {
    if (!t) return x;
    double *o = qt_cpu_scratch(c, rows * cols);
    for (int64_t j = 0; j < cols; j++)
        for (int64_t i = 0; i < rows; i++) o[i * cols + j] = x[j * rows + i];
    return o;
}

/* C[M,N] += op(A)·op(B) in double. Both operands are first made contiguous [M,K] and
 * [K,N] (an O(MK + KN) copy, small next to the O(MNK) product), then the i-k-j loop
 * order streams rows of B and C so the inner loop is contiguous and vectorisable. */
static void cpu_gemm(qt_ctx *c, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                     const double *a, const double *b, double *y) {
    const double *A = cpu_op(c, a, ta, M, K), *B = cpu_op(c, b, tb, K, N);
    /* Rows are independent and each is summed in the same order by whichever thread owns
     * it: results are bit-identical for any thread count. */
#pragma omp parallel for schedule(static) if (M * N * K > (1 << 20))
    for (int64_t i = 0; i < M; i++) {
        double *yi = y + i * N;
        for (int64_t k = 0; k < K; k++) {
            double aik = A[i * K + k];
            const double *bk = B + k * N;
            for (int64_t j = 0; j < N; j++) yi[j] += aik * bk[j];
        }
    }
}

/* y = op(A)·op(B) (accumulate false) or y += op(A)·op(B), on the tensors' device.
 * y is [M,N]; A and B are stored as described in matmul.h. */
static void gemm(qt_ctx *c, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const qt_tensor *A,
                 const qt_tensor *B, qt_tensor *y, bool accumulate) {
    if (M == 0 || N == 0) return;
    if (y->dev == QT_CUDA) {
        if (K == 0) { /* empty sum: cuBLAS wants K >= 1 */
            if (!accumulate) qt_fill_zero(y);
            return;
        }
        QT_CUDA_CALL(qt_cuda_gemm, c, ta, tb, M, N, K, 1.0, A->data, ta ? M : K, B->data,
                     tb ? K : N, accumulate ? 1.0 : 0.0, y->data, N, y->dtype);
        return;
    }
    size_t m = qt_scratch_mark(c);
    double *o = qt_cpu_scratch(c, M * N);
    cpu_gemm(c, ta, tb, M, N, K, qt_cpu_load(c, A), qt_cpu_load(c, B), o);
    if (accumulate) qt_cpu_accum(y, o);
    else qt_cpu_store(y, o);
    qt_scratch_reset(c, m);
}

void qt_gemm(qt_ctx *c, qt_tensor *y, const qt_tensor *a, const qt_tensor *b, bool ta, bool tb,
             bool accumulate) {
    int64_t M = ta ? a->shape[1] : a->shape[0], K = ta ? a->shape[0] : a->shape[1];
    int64_t Kb = tb ? b->shape[1] : b->shape[0], N = tb ? b->shape[0] : b->shape[1];
    QT_CHECK(a->ndim == 2 && b->ndim == 2 && y->ndim == 2 && K == Kb && y->shape[0] == M && y->shape[1] == N,
             "gemm: shapes do not chain");
    QT_CHECK(a->dtype == b->dtype && a->dtype == y->dtype && a->dev == b->dev && a->dev == y->dev,
             "gemm: operands differ in dtype or device");
    gemm(c, ta, tb, M, N, K, a, b, y, accumulate);
}

/* ---- op */

/* With y = op(A)·op(B) and dY = dL/dy:
 *   dop(A) = dY·op(B)ᵀ   -> a not transposed: dA = dY·op(B)ᵀ,  transposed: dA = op(B)·dYᵀ
 *   dop(B) = op(A)ᵀ·dY   -> b not transposed: dB = op(A)ᵀ·dY,  transposed: dB = dYᵀ·op(A)
 * op(B)ᵀ is b itself when tb (and bᵀ when not), so each case is one gemm on the stored
 * buffers with flipped flags. Gradients accumulate into what is there. */
static void matmul_backward(qt_ctx *c, qt_node *n) {
    qt_tensor *a = n->in[0], *b = n->in[1], *dy = n->out->grad;
    bool ta = n->i[0], tb = n->i[1];
    int64_t M = n->i[2], N = n->i[3], K = n->i[4];
    if (a->requires_grad) {
        qt_tensor *da = qt_grad(c, a);
        if (!ta) gemm(c, false, !tb, M, K, N, dy, b, da, true); /* [M,K] = dY[M,N]·op(B)ᵀ */
        else gemm(c, tb, true, K, M, N, b, dy, da, true);       /* [K,M] = op(B)[K,N]·dYᵀ */
    }
    if (b->requires_grad) {
        qt_tensor *db = qt_grad(c, b);
        if (!tb) gemm(c, !ta, false, K, N, M, a, dy, db, true); /* [K,N] = op(A)ᵀ·dY[M,N] */
        else gemm(c, true, ta, N, K, M, dy, a, db, true);       /* [N,K] = dYᵀ·op(A)[M,K] */
    }
}

qt_tensor *qt_matmul(qt_ctx *c, qt_tensor *a, qt_tensor *b, bool ta, bool tb) {
    char x[128], z[128];
    qt_op_check_float("matmul", a);
    qt_op_check_float("matmul", b);
    qt_op_check_2d("matmul", a);
    qt_op_check_2d("matmul", b);
    int64_t M = ta ? a->shape[1] : a->shape[0], K = ta ? a->shape[0] : a->shape[1];
    int64_t Kb = tb ? b->shape[1] : b->shape[0], N = tb ? b->shape[0] : b->shape[1];
    QT_CHECK(a->dtype == b->dtype && a->dev == b->dev,
             "matmul: %s and %s must have the same dtype and device", qt_describe(a, x, sizeof x),
             qt_describe(b, z, sizeof z));
    QT_CHECK(K == Kb, "matmul: inner dimensions differ: op(a) of %s%s is [%lld,%lld], op(b) of %s%s is [%lld,%lld]",
             qt_describe(a, x, sizeof x), ta ? " (transposed)" : "", (long long)M, (long long)K,
             qt_describe(b, z, sizeof z), tb ? " (transposed)" : "", (long long)Kb, (long long)N);
    int64_t shape[2] = {M, N};
    qt_tensor *y = qt_empty(c, QT_STEP, a->dtype, 2, shape);
    gemm(c, ta, tb, M, N, K, a, b, y, false);
    qt_tensor *in[2] = {a, b};
    qt_node *n = qt_record(c, "matmul", matmul_backward, y, 2, in);
    if (n) {
        n->i[0] = ta;
        n->i[1] = tb;
        n->i[2] = M;
        n->i[3] = N;
        n->i[4] = K;
    }
    return y;
}
