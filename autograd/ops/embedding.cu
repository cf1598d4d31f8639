/* CUDA side of embedding: a gather kernel and an atomicAdd scatter kernel.
 *
 * Range check: ids live on the GPU, so the gather kernel itself flags the first
 * out-of-range id it meets (and writes zeros instead of reading out of bounds); the
 * host waits for the stream and reads the flag. That is one sync per lookup, i.e. per
 * step: acceptable for now. Checking ids where they are made (the data loader, on the
 * host) would remove it. */
#include <limits.h>

#include "../cuda_util.cuh"
#include "embedding.h"

static unsigned grid_for(int64_t n) {
    unsigned b = qt_blocks(n, 256);
    return b > 65535u * 8 ? 65535u * 8 : (b ? b : 1);
}

/* bad[0]: set to 1 by the first thread that sees a bad id; bad[1]: that id; bad[2]: its position. */
template <typename T>
__global__ void gather_kernel(T *y, const T *table, const int32_t *ids, int64_t N, int64_t H,
                              int64_t V, int32_t *bad) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < N * H; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t n = i / H, h = i - n * H;
        int32_t id = ids[n];
        if (id < 0 || id >= V) {
            if (h == 0 && atomicCAS(bad, 0, 1) == 0) {
                bad[1] = id;
                bad[2] = (int32_t)n;
            }
            qt_st(y, i, 0.0f);
            continue;
        }
        y[i] = table[(int64_t)id * H + h];
    }
}

template <typename T>
__global__ void scatter_add_kernel(float *acc, const T *dy, const int32_t *ids, int64_t N, int64_t H) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < N * H; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t n = i / H, h = i - n * H;
        atomicAdd(acc + (int64_t)ids[n] * H + h, qt_ld(dy, i));
    }
}

extern "C" void qt_cuda_embedding_forward(qt_ctx *c, qt_tensor *y, const qt_tensor *table,
                                          const qt_tensor *ids) {
    int64_t N = ids->numel, V = table->shape[0], H = table->shape[1];
    QT_CHECK(N <= INT_MAX, "embedding: %lld ids", (long long)N);
    if (N == 0 || H == 0) return;
    /* The flag lives in STEP memory only until the sync below. */
    qt_arena *step = &c->data[QT_STEP];
    size_t mark = qt_arena_mark(step);
    int32_t *bad = (int32_t *)qt_arena_alloc(step, 3 * sizeof(int32_t)), hbad[3];
    QT_CUDA_CHECK(cudaMemsetAsync(bad, 0, 3 * sizeof(int32_t), qt_stream(c)));
    QT_DISPATCH_FLOAT(table->dtype, "embedding", {
        gather_kernel<T><<<grid_for(N * H), 256, 0, qt_stream(c)>>>(
            (T *)y->data, (const T *)table->data, (const int32_t *)ids->data, N, H, V, bad);
        QT_LAUNCH_CHECK();
    });
    QT_CUDA_CHECK(cudaMemcpyAsync(hbad, bad, sizeof hbad, cudaMemcpyDeviceToHost, qt_stream(c)));
    QT_CUDA_CHECK(cudaStreamSynchronize(qt_stream(c)));
    qt_arena_reset(step, mark);
    char b[128];
    QT_CHECK(hbad[0] == 0, "embedding: id %d at position %d is outside the table %s (ids must be in 0..%lld)",
             hbad[1], hbad[2], qt_describe(table, b, sizeof b), (long long)V - 1);
}

/* F32 gradients take the atomics directly. BF16/F16 ones would round at every add of a
 * repeated id, so the rows are summed in a float [V,H] scratch first and added once. */
extern "C" void qt_cuda_embedding_backward(qt_ctx *c, qt_tensor *grad, const qt_tensor *dy,
                                           const qt_tensor *ids) {
    int64_t N = ids->numel, H = grad->shape[1];
    if (N == 0 || H == 0) return;
    const int32_t *id = (const int32_t *)ids->data;
    if (grad->dtype == QT_F32) {
        QT_CHECK(dy->dtype == QT_F32, "embedding backward: dY %s for an f32 table", qt_dtype_name(dy->dtype));
        scatter_add_kernel<float><<<grid_for(N * H), 256, 0, qt_stream(c)>>>(
            (float *)grad->data, (const float *)dy->data, id, N, H);
        QT_LAUNCH_CHECK();
        return;
    }
    /* The scratch goes back to the STEP arena right away: everything that reuses that
     * memory later is queued on the same stream, after the axpby below. */
    qt_arena *step = &c->data[QT_STEP];
    size_t mark = qt_arena_mark(step);
    qt_tensor *acc = qt_empty(c, QT_STEP, QT_F32, 2, grad->shape);
    QT_CUDA_CHECK(cudaMemsetAsync(acc->data, 0, qt_nbytes(acc), qt_stream(c)));
    QT_DISPATCH_FLOAT(dy->dtype, "embedding backward", {
        scatter_add_kernel<T><<<grid_for(N * H), 256, 0, qt_stream(c)>>>((float *)acc->data,
                                                                         (const T *)dy->data, id, N, H);
        QT_LAUNCH_CHECK();
    });
    qt_cuda_axpby(c, grad, acc, 1.0, 1.0);
    qt_arena_reset(step, mark);
}
