/* CUDA side of add/scale/cast and gradient accumulation. */
#include "../cuda_util.cuh"
#include "ops_internal.h"

template <typename TY, typename TX>
__global__ void axpby_kernel(TY *y, const TX *x, float alpha, float beta, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float v = alpha * qt_ld(x, i);
        if (beta != 0.0f) v += beta * qt_ld(y, i);
        qt_st(y, i, v);
    }
}

template <typename T>
__global__ void add_kernel(T *y, const T *a, const T *b, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        qt_st(y, i, qt_ld(a, i) + qt_ld(b, i));
}

static unsigned grid_for(int64_t n) {
    unsigned b = qt_blocks(n, 256);
    return b > 65535u * 8 ? 65535u * 8 : (b ? b : 1);
}

extern "C" void qt_cuda_axpby(qt_ctx *c, qt_tensor *y, const qt_tensor *x, double alpha, double beta) {
    QT_DISPATCH_FLOAT(y->dtype, "axpby", {
        typedef T TY;
        QT_DISPATCH_FLOAT(x->dtype, "axpby", {
            axpby_kernel<TY, T><<<grid_for(y->numel), 256, 0, qt_stream(c)>>>(
                (TY *)y->data, (const T *)x->data, (float)alpha, (float)beta, y->numel);
            QT_LAUNCH_CHECK();
        });
    });
}

extern "C" void qt_cuda_add(qt_ctx *c, qt_tensor *y, const qt_tensor *a, const qt_tensor *b) {
    QT_DISPATCH_FLOAT(y->dtype, "add", {
        add_kernel<T><<<grid_for(y->numel), 256, 0, qt_stream(c)>>>((T *)y->data, (const T *)a->data,
                                                                   (const T *)b->data, y->numel);
        QT_LAUNCH_CHECK();
    });
}

template <typename T>
__global__ void add_bias_kernel(T *y, const T *x, const T *b, int64_t n, int64_t C) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        qt_st(y, i, qt_ld(x, i) + qt_ld(b, i % C));
}

/* One thread per column, looping over rows: bias gradients are small (C <= a few 10k). */
template <typename T>
__global__ void bias_grad_kernel(T *db, const T *dy, int64_t N, int64_t C) {
    int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (j >= C) return;
    float s = 0;
    for (int64_t r = 0; r < N; r++) s += qt_ld(dy, r * C + j);
    qt_st(db, j, qt_ld(db, j) + s);
}

extern "C" void qt_cuda_add_bias(qt_ctx *c, qt_tensor *y, const qt_tensor *x, const qt_tensor *b) {
    QT_DISPATCH_FLOAT(y->dtype, "add_bias", {
        add_bias_kernel<T><<<grid_for(y->numel), 256, 0, qt_stream(c)>>>((T *)y->data, (const T *)x->data,
                                                                        (const T *)b->data, y->numel, b->numel);
        QT_LAUNCH_CHECK();
    });
}

extern "C" void qt_cuda_bias_grad(qt_ctx *c, qt_tensor *db, const qt_tensor *dy) {
    int64_t C = db->numel, N = dy->numel / C;
    QT_DISPATCH_FLOAT(db->dtype, "bias_grad", {
        bias_grad_kernel<T><<<qt_blocks(C, 128), 128, 0, qt_stream(c)>>>((T *)db->data, (const T *)dy->data, N, C);
        QT_LAUNCH_CHECK();
    });
}
