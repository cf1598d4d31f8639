/* CUDA side of qt_swiglu: elementwise, float arithmetic for every storage dtype. */
#include "../cuda_util.cuh"
#include "swiglu.h"

/* v rounded to T's precision and back: transformers rounds silu's output to the dtype. */
template <typename T>
static __device__ __forceinline__ float round_as(float v) {
    T t;
    qt_st(&t, 0, v);
    return qt_ld(&t, 0);
}

/* expf(-g) -> inf for very negative g gives s = 0, silu = -0: no NaN. */
static __device__ __forceinline__ float sigmoid_f(float g) { return 1.0f / (1.0f + expf(-g)); }

template <typename T>
__global__ void swiglu_fwd_kernel(T *y, const T *gate, const T *up, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float g = qt_ld(gate, i);
        qt_st(y, i, round_as<T>(g * sigmoid_f(g)) * qt_ld(up, i));
    }
}

/* dg and du may alias (swiglu(a, a)): each element's two updates come from one thread in order. */
template <typename T>
__global__ void swiglu_bwd_kernel(T *dg, T *du, const T *gy, const T *gate, const T *up, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float g = qt_ld(gate, i), u = qt_ld(up, i), dy = qt_ld(gy, i), s = sigmoid_f(g);
        if (dg) qt_st(dg, i, qt_ld(dg, i) + dy * u * s * (1.0f + g * (1.0f - s)));
        if (du) qt_st(du, i, qt_ld(du, i) + dy * g * s);
    }
}

static unsigned grid_for(int64_t n) {
    unsigned b = qt_blocks(n, 256);
    return b > 65535u * 8 ? 65535u * 8 : (b ? b : 1);
}

extern "C" void qt_cuda_swiglu_fwd(qt_ctx *c, qt_tensor *y, const qt_tensor *gate, const qt_tensor *up) {
    if (y->numel == 0) return;
    QT_DISPATCH_FLOAT(y->dtype, "swiglu", {
        swiglu_fwd_kernel<T><<<grid_for(y->numel), 256, 0, qt_stream(c)>>>(
            (T *)y->data, (const T *)gate->data, (const T *)up->data, y->numel);
        QT_LAUNCH_CHECK();
    });
}

extern "C" void qt_cuda_swiglu_bwd(qt_ctx *c, qt_tensor *g_gate, qt_tensor *g_up, const qt_tensor *gy,
                                   const qt_tensor *gate, const qt_tensor *up) {
    if (gate->numel == 0 || (!g_gate && !g_up)) return;
    QT_CHECK(gy->dtype == gate->dtype && (!g_gate || g_gate->dtype == gate->dtype) &&
                 (!g_up || g_up->dtype == gate->dtype),
             "swiglu backward: gradients must have the inputs' dtype");
    QT_DISPATCH_FLOAT(gate->dtype, "swiglu backward", {
        swiglu_bwd_kernel<T><<<grid_for(gate->numel), 256, 0, qt_stream(c)>>>(
            g_gate ? (T *)g_gate->data : NULL, g_up ? (T *)g_up->data : NULL, (const T *)gy->data,
            (const T *)gate->data, (const T *)up->data, gate->numel);
        QT_LAUNCH_CHECK();
    });
}
