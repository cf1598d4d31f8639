/* CUDA backend: device memory, copies, the per-context stream and library handles. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cuda_util.cuh"

extern "C" {

bool qt_cuda_available(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no device" error */
        return false;
    }
    return n > 0;
}

void qt_cuda_describe(char *buf, size_t n) {
    cudaDeviceProp p;
    int dev = 0;
    size_t free_b = 0, total = 0;
    if (!qt_cuda_available() || cudaGetDevice(&dev) != cudaSuccess ||
        cudaGetDeviceProperties(&p, dev) != cudaSuccess || cudaMemGetInfo(&free_b, &total) != cudaSuccess) {
        snprintf(buf, n, "no CUDA device");
        return;
    }
    snprintf(buf, n, "%s (sm_%d%d, %d SMs, %.1f GiB, %.1f GiB free)", p.name, p.major, p.minor,
             p.multiProcessorCount, total / 1073741824.0, free_b / 1073741824.0);
}

size_t qt_cuda_mem_used(void) {
    size_t free_b = 0, total = 0;
    if (cudaMemGetInfo(&free_b, &total) != cudaSuccess) return 0;
    return total - free_b;
}

size_t qt_cuda_mem_free(void) {
    size_t free_b = 0, total = 0;
    if (cudaMemGetInfo(&free_b, &total) != cudaSuccess) return 0;
    return free_b;
}

int qt_be_malloc(void **p, size_t bytes, int ordinal) {
    (void)ordinal;
    cudaError_t e = cudaMalloc(p, bytes);
    if (e != cudaSuccess) {
        size_t free_b = 0, total = 0;
        cudaGetLastError();
        cudaMemGetInfo(&free_b, &total);
        fprintf(stderr, "qtrain: cudaMalloc(%zu bytes) failed: %s (%zu of %zu bytes free)\n", bytes,
                cudaGetErrorString(e), free_b, total);
        return -1;
    }
    return 0;
}

void qt_be_free(void *p) {
    cudaError_t e = cudaFree(p);
    if (e == cudaErrorCudartUnloading) return; /* at process exit the runtime frees everything */
    QT_CUDA_CHECK(e);
}

void qt_be_memcpy(void *dst, qt_device dd, const void *src, qt_device sd, size_t bytes) {
    if (dd == QT_CPU && sd == QT_CPU) { /* also works in a CUDA build on a machine with no GPU */
        memcpy(dst, src, bytes);
        return;
    }
    cudaMemcpyKind k = dd == QT_CPU ? (sd == QT_CPU ? cudaMemcpyHostToHost : cudaMemcpyDeviceToHost)
                                    : (sd == QT_CPU ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToDevice);
    /* Legacy default stream: it waits for the contexts' (blocking) streams, so host-visible
     * results are complete when this returns. */
    QT_CUDA_CHECK(cudaMemcpy(dst, src, bytes, k));
}

void qt_be_memset(void *p, int byte, size_t bytes) { QT_CUDA_CHECK(cudaMemset(p, byte, bytes)); }

int qt_be_ctx_init(qt_ctx *c, const qt_ctx_opts *o) {
    if (!qt_cuda_available()) {
        fprintf(stderr, "qtrain: device 'cuda' asked for, but no CUDA device is present\n");
        return -1;
    }
    qt_cuda_state *s = (qt_cuda_state *)calloc(1, sizeof *s);
    QT_CHECK(s, "out of host memory");
    s->device = o->cuda_device;
    QT_CUDA_CHECK(cudaSetDevice(s->device));
    QT_CUDA_CHECK(cudaStreamCreate(&s->stream));
    QT_CUBLAS_CHECK(cublasCreate(&s->blas));
    QT_CUBLAS_CHECK(cublasSetStream(s->blas, s->stream));
    QT_CUBLAS_CHECK(cublasLtCreate(&s->lt));
    s->workspace_bytes = (size_t)32 << 20;
    QT_CUDA_CHECK(cudaMalloc(&s->workspace, s->workspace_bytes));
    QT_CUBLAS_CHECK(cublasSetWorkspace(s->blas, s->workspace, s->workspace_bytes));
    QT_CUBLAS_CHECK(cublasSetMathMode(s->blas, o->tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    c->cuda = s;
    return 0;
}

void qt_be_ctx_free(qt_ctx *c) {
    qt_cuda_state *s = qt_cuda(c);
    QT_CUDA_CHECK(cudaStreamSynchronize(s->stream));
    cublasDestroy(s->blas);
    cublasLtDestroy(s->lt);
    QT_CUDA_CHECK(cudaFree(s->workspace));
    QT_CUDA_CHECK(cudaStreamDestroy(s->stream));
    free(s);
    c->cuda = NULL;
}

void qt_be_sync(qt_ctx *c) { QT_CUDA_CHECK(cudaStreamSynchronize(qt_stream(c))); }

void *qt_be_event_new(void) {
    cudaEvent_t e;
    QT_CUDA_CHECK(cudaEventCreate(&e));
    return (void *)e;
}

void qt_be_event_free(void *ev) {
    cudaError_t e = cudaEventDestroy((cudaEvent_t)ev);
    if (e == cudaErrorCudartUnloading) return;
    QT_CUDA_CHECK(e);
}

void qt_be_event_record(qt_ctx *c, void *ev) { QT_CUDA_CHECK(cudaEventRecord((cudaEvent_t)ev, qt_stream(c))); }

float qt_be_event_ms(void *from, void *to) {
    float ms = 0;
    QT_CUDA_CHECK(cudaEventSynchronize((cudaEvent_t)to));
    QT_CUDA_CHECK(cudaEventElapsedTime(&ms, (cudaEvent_t)from, (cudaEvent_t)to));
    return ms;
}

} /* extern "C" */
