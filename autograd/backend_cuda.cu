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

void qt_be_copy_on_stream(qt_ctx *c, void *dst, const void *src, size_t bytes) {
    if (c->dev == QT_CPU) {
        memmove(dst, src, bytes);
        return;
    }
    QT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, qt_stream(c)));
}

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
    qt_cudnn_attn_free(s->cudnn_attn);
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

/* ---- pinned host memory */

int qt_be_host_alloc(void **p, size_t bytes) {
    if (cudaHostAlloc(p, bytes, cudaHostAllocMapped | cudaHostAllocPortable) != cudaSuccess) {
        cudaGetLastError();
        *p = NULL;
        return -1;
    }
    return 0;
}

void qt_be_host_free(void *p) {
    cudaError_t e = cudaFreeHost(p);
    if (e == cudaErrorCudartUnloading) return;
    QT_CUDA_CHECK(e);
}

void *qt_be_host_device_ptr(void *p) {
    void *d = NULL;
    QT_CUDA_CHECK(cudaHostGetDevicePointer(&d, p, 0));
    return d;
}

/* ---- the copy stream of qt_xfer: per slot, an event the copies wait for (the compute
 * stream reached the point where the slot is free) and one the compute stream waits for
 * (the slot is loaded). Each copy is timed by a pair of events kept until qt_be_xfer_ms. */

#define XFER_TIMED 256

typedef struct be_xfer {
    cudaStream_t copy;
    int nslots;
    cudaEvent_t *free_ev, *ready_ev;
    cudaEvent_t t0[XFER_TIMED], t1[XFER_TIMED];
    int ntimed;
    double ms; /* copies already folded in */
} be_xfer;

static void xfer_fold(be_xfer *x) {
    for (int i = 0; i < x->ntimed; i++) {
        float ms = 0;
        QT_CUDA_CHECK(cudaEventSynchronize(x->t1[i]));
        QT_CUDA_CHECK(cudaEventElapsedTime(&ms, x->t0[i], x->t1[i]));
        x->ms += ms;
    }
    x->ntimed = 0;
}

void *qt_be_xfer_new(qt_ctx *c, int nslots) {
    (void)c;
    be_xfer *x = (be_xfer *)calloc(1, sizeof *x);
    x->free_ev = (cudaEvent_t *)calloc((size_t)nslots, sizeof(cudaEvent_t));
    x->ready_ev = (cudaEvent_t *)calloc((size_t)nslots, sizeof(cudaEvent_t));
    QT_CHECK(x && x->free_ev && x->ready_ev, "out of host memory");
    x->nslots = nslots;
    /* non-blocking: the copies must not wait for work on the legacy default stream */
    QT_CUDA_CHECK(cudaStreamCreateWithFlags(&x->copy, cudaStreamNonBlocking));
    for (int s = 0; s < nslots; s++) {
        QT_CUDA_CHECK(cudaEventCreateWithFlags(&x->free_ev[s], cudaEventDisableTiming));
        QT_CUDA_CHECK(cudaEventCreateWithFlags(&x->ready_ev[s], cudaEventDisableTiming));
    }
    for (int i = 0; i < XFER_TIMED; i++) {
        QT_CUDA_CHECK(cudaEventCreate(&x->t0[i]));
        QT_CUDA_CHECK(cudaEventCreate(&x->t1[i]));
    }
    return x;
}

void qt_be_xfer_free(void *p) {
    be_xfer *x = (be_xfer *)p;
    if (!x) return;
    QT_CUDA_CHECK(cudaStreamSynchronize(x->copy));
    for (int s = 0; s < x->nslots; s++) {
        QT_CUDA_CHECK(cudaEventDestroy(x->free_ev[s]));
        QT_CUDA_CHECK(cudaEventDestroy(x->ready_ev[s]));
    }
    for (int i = 0; i < XFER_TIMED; i++) {
        QT_CUDA_CHECK(cudaEventDestroy(x->t0[i]));
        QT_CUDA_CHECK(cudaEventDestroy(x->t1[i]));
    }
    QT_CUDA_CHECK(cudaStreamDestroy(x->copy));
    free(x->free_ev);
    free(x->ready_ev);
    free(x);
}

void qt_be_xfer_copy(qt_ctx *c, void *p, int slot, void *dst, const void *src, size_t bytes) {
    be_xfer *x = (be_xfer *)p;
    QT_CHECK(slot >= 0 && slot < x->nslots, "xfer slot %d of %d", slot, x->nslots);
    if (x->ntimed == XFER_TIMED) xfer_fold(x);
    QT_CUDA_CHECK(cudaEventRecord(x->free_ev[slot], qt_stream(c)));
    QT_CUDA_CHECK(cudaStreamWaitEvent(x->copy, x->free_ev[slot], 0));
    QT_CUDA_CHECK(cudaEventRecord(x->t0[x->ntimed], x->copy));
    QT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, x->copy));
    QT_CUDA_CHECK(cudaEventRecord(x->t1[x->ntimed++], x->copy));
    QT_CUDA_CHECK(cudaEventRecord(x->ready_ev[slot], x->copy));
}

void qt_be_xfer_wait(qt_ctx *c, void *p, int slot) {
    be_xfer *x = (be_xfer *)p;
    QT_CHECK(slot >= 0 && slot < x->nslots, "xfer slot %d of %d", slot, x->nslots);
    QT_CUDA_CHECK(cudaStreamWaitEvent(qt_stream(c), x->ready_ev[slot], 0));
}

double qt_be_xfer_ms(void *p) {
    be_xfer *x = (be_xfer *)p;
    xfer_fold(x);
    double ms = x->ms;
    x->ms = 0;
    return ms;
}

} /* extern "C" */
