/* CUDA side of qt_rmsnorm: one block per row with a block-wide float reduction for the
 * forward and for dx; dw reduces over rows with one block per 32 columns (deterministic,
 * no atomics). Statistics and arithmetic are float for every storage dtype. */
#include "../cuda_util.cuh"
#include "rmsnorm.h"

/* v rounded to T's precision and back: the cast HF applies before multiplying by w. */
template <typename T>
static __device__ __forceinline__ float round_as(float v) {
    T t;
    qt_st(&t, 0, v);
    return qt_ld(&t, 0);
}

/* Sum over the block, returned to every thread. blockDim.x must be a multiple of 32 (<= 1024).
 * Uses one static shared buffer: call it at most once per kernel. */
static __device__ float block_sum(float v) {
    __shared__ float part[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Threads per row block: about 8 elements per thread, whole warps, at most 1024. */
static int row_threads(int64_t H) {
    int64_t t = (H + 7) / 8;
    t = (t + 31) / 32 * 32;
    return (int)(t < 32 ? 32 : t > 1024 ? 1024 : t);
}

template <typename T>
__global__ void rmsnorm_fwd_kernel(T *y, float *rstd, const T *x, const T *w, int64_t H, float eps) {
    const T *xr = x + (int64_t)blockIdx.x * H;
    T *yr = y + (int64_t)blockIdx.x * H;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x) {
        float v = qt_ld(xr, i);
        ss += v * v;
    }
    ss = block_sum(ss);
    float r = rsqrtf(ss / (float)H + eps);
    if (rstd && threadIdx.x == 0) rstd[blockIdx.x] = r;
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x)
        qt_st(yr, i, qt_ld(w, i) * round_as<T>(qt_ld(xr, i) * r));
}

/* gx += rstd * (dn - n * mean(dn * n)), n = x * rstd, dn = gy * w. */
template <typename T>
__global__ void rmsnorm_dx_kernel(T *gx, const T *gy, const T *x, const T *w, const float *rstd, int64_t H) {
    int64_t off = (int64_t)blockIdx.x * H;
    const T *xr = x + off, *gr = gy + off;
    T *gxr = gx + off;
    float r = rstd[blockIdx.x], dot = 0.0f;
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x)
        dot += qt_ld(gr, i) * qt_ld(w, i) * (qt_ld(xr, i) * r);
    dot = block_sum(dot) / (float)H;
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x) {
        float n = qt_ld(xr, i) * r;
        qt_st(gxr, i, qt_ld(gxr, i) + r * (qt_ld(gr, i) * qt_ld(w, i) - n * dot));
    }
}

/* gw[col] += sum_rows gy * x * rstd. Block (32, DW_ROWS): threadIdx.x picks the column of a
 * 32-wide tile (coalesced), threadIdx.y strides over rows; partial sums meet in shared memory. */
#define DW_ROWS 16
template <typename T>
__global__ void rmsnorm_dw_kernel(T *gw, const T *gy, const T *x, const float *rstd, int64_t N, int64_t H) {
    __shared__ float part[DW_ROWS][33];
    int64_t col = (int64_t)blockIdx.x * 32 + threadIdx.x;
    float acc = 0.0f;
    if (col < H)
        for (int64_t row = threadIdx.y; row < N; row += DW_ROWS)
            acc += qt_ld(gy, row * H + col) * (qt_ld(x, row * H + col) * rstd[row]);
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && col < H) {
        float s = 0.0f;
        for (int k = 0; k < DW_ROWS; k++) s += part[k][threadIdx.x];
        qt_st(gw, col, qt_ld(gw, col) + s);
    }
}

extern "C" void qt_cuda_rmsnorm_fwd(qt_ctx *c, qt_tensor *y, qt_tensor *rstd, const qt_tensor *x,
                                    const qt_tensor *w, double eps) {
    int64_t N = x->shape[0], H = x->shape[1];
    if (N == 0 || H == 0) return;
    QT_CHECK(N <= 0x7fffffff, "rmsnorm: %lld rows exceed the grid", (long long)N);
    QT_CHECK(!rstd || (rstd->dtype == QT_F32 && rstd->numel == N), "rmsnorm: rstd must be F32 [N]");
    QT_DISPATCH_FLOAT(x->dtype, "rmsnorm", {
        rmsnorm_fwd_kernel<T><<<(unsigned)N, row_threads(H), 0, qt_stream(c)>>>(
            (T *)y->data, rstd ? (float *)rstd->data : NULL, (const T *)x->data, (const T *)w->data, H,
            (float)eps);
        QT_LAUNCH_CHECK();
    });
}

extern "C" void qt_cuda_rmsnorm_bwd(qt_ctx *c, qt_tensor *gx, qt_tensor *gw, const qt_tensor *gy,
                                    const qt_tensor *x, const qt_tensor *w, const qt_tensor *rstd) {
    int64_t N = x->shape[0], H = x->shape[1];
    if (N == 0 || H == 0) return;
    QT_CHECK(rstd && rstd->dtype == QT_F32 && rstd->numel == N, "rmsnorm backward: rstd must be F32 [N]");
    QT_CHECK(gy->dtype == x->dtype && (!gx || gx->dtype == x->dtype) && (!gw || gw->dtype == x->dtype),
             "rmsnorm backward: gradients must have x's dtype");
    QT_DISPATCH_FLOAT(x->dtype, "rmsnorm backward", {
        if (gx) {
            rmsnorm_dx_kernel<T><<<(unsigned)N, row_threads(H), 0, qt_stream(c)>>>(
                (T *)gx->data, (const T *)gy->data, (const T *)x->data, (const T *)w->data,
                (const float *)rstd->data, H);
            QT_LAUNCH_CHECK();
        }
        if (gw) {
            rmsnorm_dw_kernel<T><<<qt_blocks(H, 32), dim3(32, DW_ROWS), 0, qt_stream(c)>>>(
                (T *)gw->data, (const T *)gy->data, (const T *)x->data, (const float *)rstd->data, N, H);
            QT_LAUNCH_CHECK();
        }
    });
}
