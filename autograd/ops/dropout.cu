/* CUDA side of dropout: the same counter-based mask as the CPU (dropout.h). */
#include "../cuda_util.cuh"
#include "dropout.h"

template <typename T>
__global__ void dropout_kernel(T *y, const T *x, int64_t n, double p, float scale, uint64_t seed, bool acc) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float v = qt_dropout_keep(seed, i, p) ? qt_ld(x, i) * scale : 0.0f;
        qt_st(y, i, acc ? qt_ld(y, i) + v : v);
    }
}

extern "C" void qt_cuda_dropout(qt_ctx *c, qt_tensor *y, const qt_tensor *x, double p, uint64_t seed, bool accumulate) {
    QT_CHECK(y->dtype == x->dtype, "dropout: dtypes differ");
    unsigned blocks = qt_blocks(x->numel, 256);
    if (blocks > 65535u * 8) blocks = 65535u * 8;
    QT_DISPATCH_FLOAT(x->dtype, "dropout", {
        dropout_kernel<T><<<blocks ? blocks : 1, 256, 0, qt_stream(c)>>>((T *)y->data, (const T *)x->data, x->numel, p,
                                                                      (float)(1.0 / (1.0 - p)), seed, accumulate);
        QT_LAUNCH_CHECK();
    });
}
