/* matmul: forward against the defining sum, finite-difference gradients for every
 * transpose combination, and GPU parity (cuBLAS) in F32, BF16, F16 and TF32. */
#include <math.h>

#include "testutil.h"

#define QT_TEST_HAS_CUDA

typedef struct { bool ta, tb; } flags;

static qt_tensor *f_mm(qt_ctx *c, qt_tensor **in, void *u) {
    const flags *f = u;
    return qt_matmul(c, in[0], in[1], f->ta, f->tb);
}
/* x · xᵀ: the same tensor on both sides must receive both gradients */
static qt_tensor *f_gram(qt_ctx *c, qt_tensor **in, void *u) { return qt_matmul(c, in[0], in[0], false, true); }

/* Inputs for op(a) [M,K] and op(b) [K,N] stored as the flags say. */
static void make_inputs(qt_ctx *c, qt_dtype dt, flags f, int64_t M, int64_t N, int64_t K, qt_tensor **in) {
    int64_t sa[2] = {f.ta ? K : M, f.ta ? M : K}, sb[2] = {f.tb ? N : K, f.tb ? K : N};
    in[0] = tu_rand(c, dt, 2, sa, -1, 1);
    in[1] = tu_rand(c, dt, 2, sb, -1, 1);
    in[0]->requires_grad = in[1]->requires_grad = true;
    qt_set_name(in[0], "a");
    qt_set_name(in[1], "b");
}

/* y[i,j] = sum_k op(a)[i,k] op(b)[k,j], written straight from the definition. */
static void check_forward(qt_ctx *c, flags f, int64_t M, int64_t N, int64_t K) {
    qt_tensor *in[2];
    make_inputs(c, QT_F64, f, M, N, K, in);
    qt_ctx_step_reset(c);
    qt_tensor *y = qt_matmul(c, in[0], in[1], f.ta, f.tb);
    TU_EXPECT(y->ndim == 2 && y->shape[0] == M && y->shape[1] == N && y->dtype == QT_F64,
              "output shape [%lld,%lld]", (long long)y->shape[0], (long long)y->shape[1]);
    const double *a = in[0]->data, *b = in[1]->data, *yv = y->data;
    double worst = 0;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0;
            for (int64_t k = 0; k < K; k++)
                s += (f.ta ? a[k * M + i] : a[i * K + k]) * (f.tb ? b[j * K + k] : b[k * N + j]);
            worst = fmax(worst, fabs(yv[i * N + j] - s));
        }
    printf("  forward ta=%d tb=%d %lldx%lldx%lld: max abs err %.2e\n", f.ta, f.tb, (long long)M,
           (long long)K, (long long)N, worst);
    TU_EXPECT(worst < 1e-12, "forward ta=%d tb=%d differs from the definition by %g", f.ta, f.tb, worst);
    qt_ctx_step_reset(c);
}

int qt_test_cpu(void) {
    qt_ctx *c = tu_ctx(QT_CPU);
    int64_t sizes[][3] = {{7, 5, 13}, {1, 9, 3}, {11, 17, 1}, {4, 1, 6}}; /* M, N, K */
    for (int s = 0; s < 4; s++)
        for (int t = 0; t < 4; t++) {
            flags f = {t & 1, t >> 1};
            int64_t M = sizes[s][0], N = sizes[s][1], K = sizes[s][2];
            check_forward(c, f, M, N, K);
            qt_tensor *in[2];
            make_inputs(c, QT_F64, f, M, N, K, in);
            char name[32];
            snprintf(name, sizeof name, "mm%lldx%lldx%lld/%c%c", (long long)M, (long long)K,
                     (long long)N, f.ta ? 'T' : 'N', f.tb ? 'T' : 'N');
            /* bilinear: central differences are exact up to rounding */
            tu_gradcheck(c, name, f_mm, in, 2, &f, 1e-6, 1e-7);
        }
    /* F32 inputs give an F32 output close to the F64 product of the same values. */
    flags nt = {false, true};
    qt_tensor *in[2], *in64[2];
    make_inputs(c, QT_F32, nt, 9, 10, 21, in);
    int64_t sa[2] = {9, 21}, sb[2] = {10, 21};
    in64[0] = qt_empty(c, QT_PERSIST, QT_F64, 2, sa);
    in64[1] = qt_empty(c, QT_PERSIST, QT_F64, 2, sb);
    qt_copy(in64[0], in[0]);
    qt_copy(in64[1], in[1]);
    qt_ctx_step_reset(c);
    qt_tensor *y32 = qt_matmul(c, in[0], in[1], false, true), *y64 = qt_matmul(c, in64[0], in64[1], false, true);
    double e = tu_rel_err(y32, y64);
    TU_EXPECT(y32->dtype == QT_F32 && e < 1e-6, "f32 matmul: dtype %s, rel err %g", qt_dtype_name(y32->dtype), e);
    /* x · xᵀ */
    int64_t sx[2] = {6, 11};
    qt_tensor *x = tu_rand(c, QT_F64, 2, sx, -1, 1);
    x->requires_grad = true;
    qt_set_name(x, "x");
    tu_gradcheck(c, "gram x*xT", f_gram, &x, 1, NULL, 1e-6, 1e-7);
    /* A frozen operand gets no gradient; the trainable one still does, and accumulates. */
    make_inputs(c, QT_F64, nt, 5, 3, 8, in);
    in[1]->requires_grad = false;
    qt_ctx_step_reset(c);
    qt_tensor *y = qt_matmul(c, in[0], in[1], false, true);
    qt_backward(c, y, y);
    qt_tensor *g1 = qt_empty(c, QT_PERSIST, QT_F64, 2, in[0]->shape);
    qt_copy(g1, in[0]->grad);
    qt_ctx_step_reset(c);
    y = qt_matmul(c, in[0], in[1], false, true);
    qt_backward(c, y, y);
    qt_tensor *twice = qt_empty(c, QT_PERSIST, QT_F64, 2, in[0]->shape);
    qt_copy(twice, g1);
    double *tv = twice->data;
    for (int64_t i = 0; i < twice->numel; i++) tv[i] *= 2;
    TU_EXPECT(in[1]->grad == NULL, "frozen operand got a gradient");
    TU_EXPECT(tu_rel_err(in[0]->grad, twice) < 1e-14, "a second backward did not accumulate");
    qt_ctx_step_reset(c);
    return 0;
}

int qt_test_cuda(void) {
    qt_ctx *c = tu_ctx(QT_CPU);
    int64_t sizes[][3] = {{37, 67, 129}, {300, 263, 517}, {1, 45, 7}}; /* M, N, K */
    qt_dtype dts[3] = {QT_F32, QT_BF16, QT_F16};
    double tol[3] = {1e-5, 1e-2, 2e-3};
    for (int s = 0; s < 3; s++)
        for (int t = 0; t < 4; t++) {
            flags f = {t & 1, t >> 1};
            qt_tensor *in[2];
            make_inputs(c, QT_F32, f, sizes[s][0], sizes[s][1], sizes[s][2], in);
            char name[32];
            snprintf(name, sizeof name, "mm%lldx%lldx%lld/%c%c", (long long)sizes[s][0],
                     (long long)sizes[s][2], (long long)sizes[s][1], f.ta ? 'T' : 'N', f.tb ? 'T' : 'N');
            for (int d = 0; d < 3; d++) tu_cuda_parity(name, f_mm, in, 2, &f, dts[d], tol[d], tol[d]);
            if (s == 1) { /* TF32 tensor cores: 10-bit mantissa inputs, float accumulation */
                qt_ctx *g = tu_ctx(QT_CUDA);
                g->tf32 = true;
                tu_cuda_parity(name, f_mm, in, 2, &f, QT_F32, 3e-3, 3e-3);
                g->tf32 = false;
            }
        }
    int64_t sx[2] = {33, 70};
    qt_tensor *x = tu_rand(c, QT_F32, 2, sx, -1, 1);
    x->requires_grad = true;
    qt_set_name(x, "x");
    for (int d = 0; d < 3; d++) tu_cuda_parity("gram x*xT", f_gram, &x, 1, NULL, dts[d], tol[d], tol[d]);
    return 0;
}
