/* CUDA AdamW: one fused kernel per parameter (decay, moments, update), a grad-norm
 * reduction with one host read per step, and the paged mode: moments in pinned host
 * memory streamed through two staging buffers on two copy/compute streams, so chunk i+1
 * is in flight while chunk i is updated. */
#include "adamw_cuda.h"
#include "autograd/cuda_util.cuh"

#include <string.h>

typedef struct adamw_dev {
    float *sumsq;            /* [n] per-parameter sums of squares */
    float *host_sumsq;       /* pinned mirror */
    float *stage[2];         /* paged: m and v chunks, 2 * chunk floats each */
    int64_t chunk;           /* elements per staged chunk */
    cudaStream_t side[2];
    cudaEvent_t ready, done[2];
    /* F32 gradients' addresses and sizes on the device, for one sum-of-squares launch over
     * every tensor; rebuilt when a gradient moves (host copy to compare) */
    const float **tab_ptr;
    int64_t *tab_n;
    const float **host_ptr;
    bool tab_ok;
} adamw_dev;

/* Block b = tensor b, summed exactly as sumsq_kernel<<<1, 1024>>> would: same order. */
__global__ void sumsq_multi_kernel(const float *const *g, const int64_t *n, float *out) {
    const float *p = g[blockIdx.x];
    float s = 0;
    for (int64_t i = threadIdx.x; i < n[blockIdx.x]; i += blockDim.x) s += p[i] * p[i];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    __shared__ float warp[32];
    if ((threadIdx.x & 31) == 0) warp[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
        s = threadIdx.x < (blockDim.x >> 5) ? warp[threadIdx.x] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (threadIdx.x == 0) out[blockIdx.x] = s;
    }
}

template <typename T>
__global__ void sumsq_kernel(const T *g, int64_t n, float *out) {
    float s = 0;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float x = qt_ld(g, i);
        s += x * x;
    }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    __shared__ float warp[32];
    if ((threadIdx.x & 31) == 0) warp[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
        s = threadIdx.x < (blockDim.x >> 5) ? warp[threadIdx.x] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (threadIdx.x == 0) *out = s;
    }
}

template <typename T>
__global__ void adamw_kernel(T *p, const T *g, float *m, float *v, int64_t n, qt_adamw_hyper h) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float gi = qt_ld(g, i) * h.grad_scale;
        float w = qt_ld(p, i) * (1.0f - h.lr * h.weight_decay);
        float mi = h.beta1 * m[i] + (1.0f - h.beta1) * gi;
        float vi = h.beta2 * v[i] + (1.0f - h.beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        w -= (h.lr / h.bc1) * mi / (sqrtf(vi) / h.bc2_sqrt + h.eps);
        qt_st(p, i, w);
    }
}

static unsigned grid(int64_t n) {
    unsigned b = qt_blocks(n, 256);
    return b < 1 ? 1 : (b > 4096 ? 4096 : b);
}

extern "C" int qt_adamw_cuda_init(qt_adamw *o, qt_err *err) {
    adamw_dev *d = (adamw_dev *)calloc(1, sizeof *d);
    if (!d) return qt_errf(err, "out of host memory");
    o->dev = d;
    QT_CUDA_CHECK(cudaMalloc(&d->sumsq, sizeof(float) * (size_t)(o->n ? o->n : 1)));
    QT_CUDA_CHECK(cudaMallocHost(&d->host_sumsq, sizeof(float) * (size_t)(o->n ? o->n : 1)));
    qt_ctx *c = o->ctx;
    if (!o->cfg.paged) {
        for (int i = 0; i < o->n; i++) {
            size_t bytes = (size_t)o->params[i]->numel * sizeof(float);
            o->m[i] = (float *)qt_arena_try_alloc(&c->data[QT_PERSIST], bytes);
            o->v[i] = (float *)qt_arena_try_alloc(&c->data[QT_PERSIST], bytes);
            if (!o->m[i] || !o->v[i])
                return qt_errf(err, "AdamW moments (%zu bytes) do not fit the GPU budget: enable "
                                    "memory.paged_optimizer or raise memory.gpu_budget",
                               qt_adamw_state_bytes(o));
            QT_CUDA_CHECK(cudaMemset(o->m[i], 0, bytes));
            QT_CUDA_CHECK(cudaMemset(o->v[i], 0, bytes));
        }
        return 0;
    }
    if (o->cfg.gpu_bytes < (64u << 10))
        return qt_errf(err, "memory.optimizer_gpu_bytes = %zu is too small for the paged optimizer "
                            "(at least 64KiB)", o->cfg.gpu_bytes);
    /* Two staging buffers, each holding m and v for one chunk. */
    d->chunk = (int64_t)(o->cfg.gpu_bytes / (2 * 2 * sizeof(float)));
    for (int b = 0; b < 2; b++) {
        d->stage[b] = (float *)qt_arena_try_alloc(&c->data[QT_PERSIST], 2 * (size_t)d->chunk * sizeof(float));
        if (!d->stage[b]) return qt_errf(err, "paged optimizer staging (%zu bytes) does not fit the GPU budget",
                                         o->cfg.gpu_bytes);
        QT_CUDA_CHECK(cudaStreamCreate(&d->side[b]));
        QT_CUDA_CHECK(cudaEventCreateWithFlags(&d->done[b], cudaEventDisableTiming));
    }
    QT_CUDA_CHECK(cudaEventCreateWithFlags(&d->ready, cudaEventDisableTiming));
    for (int i = 0; i < o->n; i++) {
        size_t bytes = (size_t)o->params[i]->numel * sizeof(float);
        if (cudaMallocHost(&o->m[i], bytes) != cudaSuccess || cudaMallocHost(&o->v[i], bytes) != cudaSuccess) {
            cudaGetLastError();
            return qt_errf(err, "cannot pin %zu bytes of host memory for the paged optimizer", 2 * bytes);
        }
        memset(o->m[i], 0, bytes);
        memset(o->v[i], 0, bytes);
    }
    return 0;
}

extern "C" void qt_adamw_cuda_free(qt_adamw *o) {
    adamw_dev *d = (adamw_dev *)o->dev;
    if (!d) return;
    QT_CUDA_CHECK(cudaDeviceSynchronize());
    if (o->cfg.paged) {
        for (int i = 0; i < o->n; i++) {
            if (o->m && o->m[i]) QT_CUDA_CHECK(cudaFreeHost(o->m[i]));
            if (o->v && o->v[i]) QT_CUDA_CHECK(cudaFreeHost(o->v[i]));
        }
        for (int b = 0; b < 2; b++) {
            if (d->side[b]) QT_CUDA_CHECK(cudaStreamDestroy(d->side[b]));
            if (d->done[b]) QT_CUDA_CHECK(cudaEventDestroy(d->done[b]));
        }
        if (d->ready) QT_CUDA_CHECK(cudaEventDestroy(d->ready));
    }
    QT_CUDA_CHECK(cudaFree(d->sumsq));
    if (d->tab_ptr) QT_CUDA_CHECK(cudaFree(d->tab_ptr));
    if (d->tab_n) QT_CUDA_CHECK(cudaFree(d->tab_n));
    free(d->host_ptr);
    QT_CUDA_CHECK(cudaFreeHost(d->host_sumsq));
    free(d);
    o->dev = NULL;
}

/* The gradient table for sumsq_multi_kernel: true when every gradient is F32 and the table
 * on the device matches the gradients' current addresses. */
static bool sumsq_table(qt_adamw *o, adamw_dev *d) {
    if (o->n == 0) return false;
    bool same = d->tab_ok;
    for (int i = 0; i < o->n; i++) {
        const qt_tensor *g = o->params[i]->grad;
        if (g->dtype != QT_F32) return false;
        same = same && d->host_ptr[i] == (const float *)g->data;
    }
    if (same) return true;
    if (!d->tab_ptr) {
        QT_CUDA_CHECK(cudaMalloc(&d->tab_ptr, sizeof(float *) * (size_t)o->n));
        QT_CUDA_CHECK(cudaMalloc(&d->tab_n, sizeof(int64_t) * (size_t)o->n));
        d->host_ptr = (const float **)calloc((size_t)o->n, sizeof(float *));
        QT_CHECK(d->host_ptr, "out of host memory");
    }
    int64_t *n = (int64_t *)malloc(sizeof(int64_t) * (size_t)o->n);
    QT_CHECK(n, "out of host memory");
    for (int i = 0; i < o->n; i++) {
        d->host_ptr[i] = (const float *)o->params[i]->grad->data;
        n[i] = o->params[i]->grad->numel;
    }
    QT_CUDA_CHECK(cudaMemcpy(d->tab_ptr, d->host_ptr, sizeof(float *) * (size_t)o->n, cudaMemcpyHostToDevice));
    QT_CUDA_CHECK(cudaMemcpy(d->tab_n, n, sizeof(int64_t) * (size_t)o->n, cudaMemcpyHostToDevice));
    free(n);
    d->tab_ok = true;
    return true;
}

extern "C" double qt_adamw_cuda_sumsq(qt_adamw *o) {
    adamw_dev *d = (adamw_dev *)o->dev;
    cudaStream_t s = qt_stream(o->ctx);
    if (sumsq_table(o, d)) { /* one launch: hundreds of LoRA tensors cost ~5 ms launched one by one */
        sumsq_multi_kernel<<<(unsigned)o->n, 1024, 0, s>>>(d->tab_ptr, d->tab_n, d->sumsq);
        QT_LAUNCH_CHECK();
    } else for (int i = 0; i < o->n; i++) {
        const qt_tensor *g = o->params[i]->grad;
        QT_DISPATCH_FLOAT(g->dtype, "adamw sumsq", {
            /* One block per tensor: a fixed reduction order, so the norm (and the clipping it
             * drives) is bit-reproducible; LoRA tensors are small enough for one block. */
            sumsq_kernel<T><<<1, 1024, 0, s>>>((const T *)g->data, g->numel, d->sumsq + i);
            QT_LAUNCH_CHECK();
        });
    }
    QT_CUDA_CHECK(cudaMemcpyAsync(d->host_sumsq, d->sumsq, sizeof(float) * (size_t)o->n, cudaMemcpyDeviceToHost, s));
    QT_CUDA_CHECK(cudaStreamSynchronize(s));
    double ss = 0;
    for (int i = 0; i < o->n; i++) ss += d->host_sumsq[i];
    return ss;
}

extern "C" void qt_adamw_cuda_step(qt_adamw *o, const qt_adamw_hyper *h) {
    adamw_dev *d = (adamw_dev *)o->dev;
    cudaStream_t s = qt_stream(o->ctx);
    if (!o->cfg.paged) {
        for (int i = 0; i < o->n; i++) {
            qt_tensor *p = o->params[i];
            QT_DISPATCH_FLOAT(p->dtype, "adamw", {
                adamw_kernel<T><<<grid(p->numel), 256, 0, s>>>((T *)p->data, (const T *)p->grad->data, o->m[i],
                                                               o->v[i], p->numel, *h);
                QT_LAUNCH_CHECK();
            });
        }
        return;
    }
    /* Paged: the side streams wait for the gradients, alternate staging buffers, and the
     * main stream waits for both before anything reads the parameters again. */
    QT_CUDA_CHECK(cudaEventRecord(d->ready, s));
    for (int b = 0; b < 2; b++) QT_CUDA_CHECK(cudaStreamWaitEvent(d->side[b], d->ready, 0));
    int b = 0;
    for (int i = 0; i < o->n; i++) {
        qt_tensor *p = o->params[i];
        for (int64_t off = 0; off < p->numel; off += d->chunk, b ^= 1) {
            int64_t len = p->numel - off < d->chunk ? p->numel - off : d->chunk;
            size_t bytes = (size_t)len * sizeof(float);
            float *sm = d->stage[b], *sv = d->stage[b] + d->chunk;
            cudaStream_t ss = d->side[b];
            QT_CUDA_CHECK(cudaMemcpyAsync(sm, o->m[i] + off, bytes, cudaMemcpyHostToDevice, ss));
            QT_CUDA_CHECK(cudaMemcpyAsync(sv, o->v[i] + off, bytes, cudaMemcpyHostToDevice, ss));
            QT_DISPATCH_FLOAT(p->dtype, "adamw paged", {
                adamw_kernel<T><<<grid(len), 256, 0, ss>>>((T *)p->data + off, (const T *)p->grad->data + off, sm,
                                                           sv, len, *h);
                QT_LAUNCH_CHECK();
            });
            QT_CUDA_CHECK(cudaMemcpyAsync(o->m[i] + off, sm, bytes, cudaMemcpyDeviceToHost, ss));
            QT_CUDA_CHECK(cudaMemcpyAsync(o->v[i] + off, sv, bytes, cudaMemcpyDeviceToHost, ss));
        }
    }
    for (int k = 0; k < 2; k++) {
        QT_CUDA_CHECK(cudaEventRecord(d->done[k], d->side[k]));
        QT_CUDA_CHECK(cudaStreamWaitEvent(s, d->done[k], 0));
    }
}
