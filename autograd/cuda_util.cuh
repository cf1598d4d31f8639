/* Internal helpers for the CUDA side of autograd ops: checked calls and launches,
 * the context's stream and library handles, and dtype load/store in kernels. */
#ifndef QT_CUDA_UTIL_CUH
#define QT_CUDA_UTIL_CUH

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "autograd.h"

/* Every CUDA runtime call goes through this: file:line, the call, the CUDA message. */
#define QT_CUDA_CHECK(call)                                                                \
    do {                                                                                   \
        cudaError_t qt_err_ = (call);                                                      \
        if (qt_err_ != cudaSuccess)                                                        \
            qt_fail(__FILE__, __LINE__, #call, "%s", cudaGetErrorString(qt_err_));          \
    } while (0)

/* After every kernel launch: launch-configuration errors show here, at the launch site. */
#define QT_LAUNCH_CHECK() QT_CUDA_CHECK(cudaGetLastError())

#define QT_CUBLAS_CHECK(call)                                                              \
    do {                                                                                   \
        cublasStatus_t qt_st_ = (call);                                                    \
        if (qt_st_ != CUBLAS_STATUS_SUCCESS)                                               \
            qt_fail(__FILE__, __LINE__, #call, "cuBLAS status %d (%s)", (int)qt_st_,        \
                    cublasGetStatusString(qt_st_));                                        \
    } while (0)

typedef struct qt_cuda_state {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    cublasLtHandle_t lt;
    void *workspace; /* cuBLASLt workspace */
    size_t workspace_bytes;
    void *cudnn_attn; /* cuDNN handle and attention plans (ops/attention_cudnn.cu); NULL until used */
} qt_cuda_state;

/* Frees what cudnn_attn holds (no-op for NULL); qt_be_ctx_free calls it. */
void qt_cudnn_attn_free(void *state);

static inline qt_cuda_state *qt_cuda(qt_ctx *c) { return (qt_cuda_state *)c->cuda; }
static inline cudaStream_t qt_stream(qt_ctx *c) { return qt_cuda(c)->stream; }

/* Element load/store for the float dtypes kernels are instantiated for. */
__device__ __forceinline__ float qt_ld(const float *p, int64_t i) { return p[i]; }
__device__ __forceinline__ float qt_ld(const __nv_bfloat16 *p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ float qt_ld(const __half *p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ void qt_st(float *p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void qt_st(__nv_bfloat16 *p, int64_t i, float v) { p[i] = __float2bfloat16(v); }
__device__ __forceinline__ void qt_st(__half *p, int64_t i, float v) { p[i] = __float2half(v); }

static inline unsigned qt_blocks(int64_t n, int threads) { return (unsigned)((n + threads - 1) / threads); }

/* Dispatch a templated launcher over the float dtypes of tensor t:
 *   QT_DISPATCH_FLOAT(t->dtype, "rmsnorm", launch_rmsnorm<T>(args...));
 * Inside the statement, T is the element type. */
#define QT_DISPATCH_FLOAT(dt, opname, ...)                                                 \
    do {                                                                                   \
        switch (dt) {                                                                      \
        case QT_F32: { typedef float T; __VA_ARGS__; break; }                              \
        case QT_BF16: { typedef __nv_bfloat16 T; __VA_ARGS__; break; }                     \
        case QT_F16: { typedef __half T; __VA_ARGS__; break; }                             \
        default: qt_fail(__FILE__, __LINE__, opname, "dtype %s not supported on CUDA",      \
                         qt_dtype_name(dt));                                               \
        }                                                                                  \
    } while (0)

#endif
