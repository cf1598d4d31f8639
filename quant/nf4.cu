/* NF4 + double quantization on the GPU: quantize (one warp per 64-block), nested 8-bit
 * quantization of the block scales (one CTA per 256 scales) and the dequantize kernel
 * the training step runs for every frozen layer, so that one is tuned for bandwidth.
 *
 * Bit-exactness with the CPU reference: the same scalar rules (nf4.h), IEEE reciprocal
 * (__frcp_rn) and explicit __fmul_rn / __fadd_rn wherever nvcc could otherwise contract
 * a multiply and an add into one FMA. */
#include <math_constants.h>

#include "autograd/cuda_util.cuh"
#include "nf4.h"

__constant__ float c_nf4_values[16];
__constant__ float c_nf4_thresholds[15];

/* The tables are copied to constant memory once per process. */
static void upload_tables(void) {
    static bool done = false;
    if (done) return;
    QT_CUDA_CHECK(cudaMemcpyToSymbol(c_nf4_values, nf4_values, sizeof(float) * 16));
    QT_CUDA_CHECK(cudaMemcpyToSymbol(c_nf4_thresholds, nf4_thresholds, sizeof(float) * 15));
    done = true;
}

/* D by value as a kernel parameter (1 KiB): no device allocation for a per-tensor map. */
struct dmap256 {
    float v[256];
};

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* ------------------------------------------------------------------ quantize */

#define QUANT_WARPS 8

/* Warp per 64-block; lane l codes elements 2l and 2l+1 into byte l of the block. */
template <typename T>
__global__ void __launch_bounds__(QUANT_WARPS * 32)
nf4_quantize_kernel(const T *__restrict__ x, int64_t n, int64_t nb, uint8_t *__restrict__ codes,
                    float *__restrict__ absmax) {
    __shared__ float s_thr[15];
    if (threadIdx.x < 15) s_thr[threadIdx.x] = c_nf4_thresholds[threadIdx.x];
    __syncthreads();
    int lane = threadIdx.x & 31;
    int64_t b = (int64_t)blockIdx.x * QUANT_WARPS + (threadIdx.x >> 5);
    if (b >= nb) return; /* whole warps leave together: b is uniform in a warp */
    int64_t e = b * NF4_BLOCK + 2 * lane;
    float x0 = e < n ? qt_ld(x, e) : 0.0f, x1 = e + 1 < n ? qt_ld(x, e + 1) : 0.0f;
    bool bad = __any_sync(0xffffffffu, !isfinite(x0) || !isfinite(x1));
    float amax = warp_max(fmaxf(fabsf(x0), fabsf(x1)));
    uint8_t byte = 0x77; /* zero block: code 7 twice, no division */
    if (amax != 0.0f) {
        float inv = __frcp_rn(amax);
        byte = (uint8_t)(nf4_code_of(__fmul_rn(x0, inv), s_thr) << 4 | nf4_code_of(__fmul_rn(x1, inv), s_thr));
    }
    if (e < n) codes[e >> 1] = byte;
    if (lane == 0) absmax[b] = bad ? CUDART_NAN_F : amax;
}

extern "C" void nf4_cuda_quantize(qt_ctx *c, const qt_tensor *w, nf4_tensor *q, float *absmax) {
    upload_tables();
    unsigned grid = (unsigned)((q->nblocks + QUANT_WARPS - 1) / QUANT_WARPS);
    QT_DISPATCH_FLOAT(w->dtype, "nf4_quantize", {
        nf4_quantize_kernel<T><<<grid, QUANT_WARPS * 32, 0, qt_stream(c)>>>((const T *)w->data, q->n, q->nblocks,
                                                                            q->codes, absmax);
        QT_LAUNCH_CHECK();
    });
}

/* ------------------------------------------------------------------ double quantization */

/* CTA per nested block of 256 scales; thread i handles scale 256g + i. */
__global__ void __launch_bounds__(NF4_DQ_BLOCK)
nf4_double_quant_kernel(const float *__restrict__ absmax, int64_t nb, float offset, dmap256 dmap,
                        uint8_t *__restrict__ absmax_q, float *__restrict__ absmax2) {
    __shared__ float s_d[256];
    __shared__ float s_max[NF4_DQ_BLOCK / 32];
    int i = threadIdx.x;
    s_d[i] = dmap.v[i];
    int64_t b = (int64_t)blockIdx.x * NF4_DQ_BLOCK + i;
    float cv = b < nb ? __fsub_rn(absmax[b], offset) : 0.0f;
    float m = warp_max(fabsf(cv));
    if ((i & 31) == 0) s_max[i >> 5] = m;
    __syncthreads();
    m = s_max[0];
    for (int k = 1; k < NF4_DQ_BLOCK / 32; k++) m = fmaxf(m, s_max[k]);
    if (b < nb) absmax_q[b] = (uint8_t)(m == 0.0f ? 127 : nf4_q8_nearest(s_d, __fmul_rn(cv, __frcp_rn(m))));
    if (i == 0) absmax2[blockIdx.x] = m;
}

extern "C" void nf4_cuda_double_quant(qt_ctx *c, const float *absmax, nf4_tensor *q) {
    dmap256 d;
    memcpy(d.v, q->dmap, sizeof d.v);
    nf4_double_quant_kernel<<<(unsigned)q->nblocks2, NF4_DQ_BLOCK, 0, qt_stream(c)>>>(
        absmax, q->nblocks, q->offset, d, q->absmax_q, q->absmax2);
    QT_LAUNCH_CHECK();
}

/* ------------------------------------------------------------------ dequantize
 *
 * Main kernel: a warp takes a tile of 512 code bytes (1024 weights, 16 blocks) with one
 * 16-byte load per lane, then re-reads it through shared memory as 4-byte words so that
 * in each of 4 rounds lane l decodes word 32r + l: 8 consecutive weights, stored as one
 * 16-byte store (bf16/f16) or two (f32) — consecutive lanes write consecutive addresses.
 * Needs 16-byte aligned codes and output; the tail (and any unaligned case) goes through
 * a byte-per-thread kernel. Bytes moved: n/2 codes + n/64 scale codes + out. */

#define DEQ_WARPS 8
#define TILE_BYTES 512

struct scales {
    const float *absmax;     /* no DQ */
    const uint8_t *absmax_q; /* DQ */
    const float *absmax2;
    float offset;
};

template <bool DQ>
__device__ __forceinline__ float block_scale(const scales &s, const float *s_d, int64_t b) {
    if (!DQ) return __ldg(s.absmax + b);
    /* multiply, round, then add: bnb does these in two separate kernels */
    return __fadd_rn(__fmul_rn(s_d[__ldg(s.absmax_q + b)], __ldg(s.absmax2 + (b >> 8))), s.offset);
}

__device__ __forceinline__ void store8(float *out, int64_t e, const float *v) {
    float4 *p = reinterpret_cast<float4 *>(out + e);
    p[0] = make_float4(v[0], v[1], v[2], v[3]);
    p[1] = make_float4(v[4], v[5], v[6], v[7]);
}
/* two values rounded to nearest even, the first at the lower address */
__device__ __forceinline__ uint32_t pack2(__nv_bfloat16 *, float lo, float hi) {
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(lo)) |
           (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(hi)) << 16;
}
__device__ __forceinline__ uint32_t pack2(__half *, float lo, float hi) {
    return (uint32_t)__half_as_ushort(__float2half_rn(lo)) | (uint32_t)__half_as_ushort(__float2half_rn(hi)) << 16;
}
template <typename T>
__device__ __forceinline__ void store8(T *out, int64_t e, const float *v) {
    *reinterpret_cast<uint4 *>(out + e) = make_uint4(pack2(out, v[0], v[1]), pack2(out, v[2], v[3]),
                                                     pack2(out, v[4], v[5]), pack2(out, v[6], v[7]));
}

template <typename T, bool DQ>
__global__ void __launch_bounds__(DEQ_WARPS * 32)
nf4_dequant_kernel(T *__restrict__ out, const uint4 *__restrict__ codes, int64_t ntiles, scales s, dmap256 dmap) {
    __shared__ float s_nf4[16];
    __shared__ float s_d[DQ ? 256 : 1];
    __shared__ uint4 s_tile[DEQ_WARPS][32];
    if (threadIdx.x < 16) s_nf4[threadIdx.x] = c_nf4_values[threadIdx.x];
    if constexpr (DQ) s_d[threadIdx.x] = dmap.v[threadIdx.x]; /* blockDim == 256 */
    __syncthreads();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const uint32_t *words = reinterpret_cast<const uint32_t *>(s_tile[warp]);
    for (int64_t t = (int64_t)blockIdx.x * DEQ_WARPS + warp; t < ntiles; t += (int64_t)gridDim.x * DEQ_WARPS) {
        s_tile[warp][lane] = __ldg(codes + t * 32 + lane);
        __syncwarp();
#pragma unroll
        for (int r = 0; r < 4; r++) {
            int wi = r * 32 + lane;
            uint32_t wv = words[wi];
            int64_t g = t * (TILE_BYTES / 4) + wi; /* global word: weights 8g .. 8g+7 */
            float scale = block_scale<DQ>(s, s_d, g >> 3);
            float v[8];
#pragma unroll
            for (int k = 0; k < 4; k++) { /* little endian: byte k of the word is code byte 4g+k */
                uint32_t byte = (wv >> (8 * k)) & 0xffu;
                v[2 * k] = __fmul_rn(s_nf4[byte >> 4], scale);
                v[2 * k + 1] = __fmul_rn(s_nf4[byte & 15u], scale);
            }
            store8(out, g * 8, v);
        }
        __syncwarp(); /* the tile is overwritten next iteration */
    }
}

/* Bytes [byte0, ceil(n/2)), one per thread; handles odd n (no low-nibble weight). */
template <typename T, bool DQ>
__global__ void __launch_bounds__(256)
nf4_dequant_tail_kernel(T *__restrict__ out, const uint8_t *__restrict__ codes, int64_t byte0, int64_t n, scales s,
                        dmap256 dmap) {
    __shared__ float s_nf4[16];
    __shared__ float s_d[DQ ? 256 : 1];
    if (threadIdx.x < 16) s_nf4[threadIdx.x] = c_nf4_values[threadIdx.x];
    if constexpr (DQ) s_d[threadIdx.x] = dmap.v[threadIdx.x];
    __syncthreads();
    int64_t nbytes = (n + 1) / 2;
    for (int64_t k = byte0 + (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < nbytes;
         k += (int64_t)gridDim.x * blockDim.x) {
        uint32_t byte = codes[k];
        float scale = block_scale<DQ>(s, s_d, k >> 5);
        qt_st(out, 2 * k, __fmul_rn(s_nf4[byte >> 4], scale));
        if (2 * k + 1 < n) qt_st(out, 2 * k + 1, __fmul_rn(s_nf4[byte & 15u], scale));
    }
}

static unsigned capped_grid(int64_t units, int per_cta) {
    int64_t g = (units + per_cta - 1) / per_cta;
    if (g > (int64_t)1 << 20) g = (int64_t)1 << 20; /* grid-stride loops take the rest */
    return (unsigned)(g > 0 ? g : 1);
}

template <typename T, bool DQ>
static void launch_dequant(qt_ctx *c, const nf4_tensor *q, T *out) {
    scales s = {q->absmax, q->absmax_q, q->absmax2, q->offset};
    dmap256 d;
    memcpy(d.v, q->dmap, sizeof d.v);
    bool aligned = ((uintptr_t)q->codes % 16) == 0 && ((uintptr_t)out % 16) == 0;
    /* full tiles hold only complete bytes (both nibbles are weights) */
    int64_t ntiles = aligned ? (q->n / 2) / TILE_BYTES : 0;
    if (ntiles > 0) {
        nf4_dequant_kernel<T, DQ><<<capped_grid(ntiles, DEQ_WARPS), DEQ_WARPS * 32, 0, qt_stream(c)>>>(
            out, reinterpret_cast<const uint4 *>(q->codes), ntiles, s, d);
        QT_LAUNCH_CHECK();
    }
    int64_t byte0 = ntiles * TILE_BYTES, rest = (q->n + 1) / 2 - byte0;
    if (rest > 0) {
        nf4_dequant_tail_kernel<T, DQ><<<capped_grid(rest, 256), 256, 0, qt_stream(c)>>>(out, q->codes, byte0, q->n, s, d);
        QT_LAUNCH_CHECK();
    }
}

extern "C" void nf4_cuda_dequantize(qt_ctx *c, const nf4_tensor *q, qt_tensor *out) {
    upload_tables();
    QT_DISPATCH_FLOAT(out->dtype, "nf4_dequantize", {
        if (q->dq) launch_dequant<T, true>(c, q, (T *)out->data);
        else launch_dequant<T, false>(c, q, (T *)out->data);
    });
}

extern "C" void nf4_cuda_memcpy(void *dst, qt_device dd, const void *src, qt_device sd, size_t bytes) {
    cudaMemcpyKind k = dd == QT_CPU ? (sd == QT_CPU ? cudaMemcpyHostToHost : cudaMemcpyDeviceToHost)
                                    : (sd == QT_CPU ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToDevice);
    /* legacy default stream: ordered after the contexts' blocking streams */
    QT_CUDA_CHECK(cudaMemcpy(dst, src, bytes, k));
}
