/* CUDA side of qt_rope_apply: one thread per (row, head, pair j); cos/sin on the fly with
 * sincosf (accurate full-range reduction: __sincosf's error grows with |angle| and would be
 * visible at positions in the thousands). inv_freq arrives by value as a kernel parameter. */
#include "../cuda_util.cuh"
#include "rope.h"

typedef struct rope_freqs {
    float inv[QT_ROPE_MAX_HALF];
} rope_freqs;

/* Consecutive threads take consecutive j: the loads of q[j] and of q[j + half] are coalesced.
 * sign -1 rotates by -angle (backward); accum adds to out instead of overwriting it. */
template <typename T>
__global__ void rope_kernel(T *out, const T *in, rope_freqs f, int64_t npairs, int seq, int nh, int half,
                            int pos0, float sign, bool accum) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < npairs; i += (int64_t)gridDim.x * blockDim.x) {
        int j = (int)(i % half);
        int64_t head = i / half;               /* row * nh + h */
        int t = (int)((head / nh) % seq);      /* row = b * seq + t */
        float a = __fmul_rn((float)(pos0 + t), f.inv[j]); /* the float32 angle, never fused */
        float s, c;
        sincosf(a, &s, &c);
        s *= sign;
        int64_t p = head * 2 * half + j;
        float x1 = qt_ld(in, p), x2 = qt_ld(in, p + half);
        float y1 = x1 * c - x2 * s, y2 = x2 * c + x1 * s;
        if (accum) {
            y1 += qt_ld(out, p);
            y2 += qt_ld(out, p + half);
        }
        qt_st(out, p, y1);
        qt_st(out, p + half, y2);
    }
}

static unsigned grid_for(int64_t n) {
    unsigned b = qt_blocks(n, 256);
    return b > 65535u * 8 ? 65535u * 8 : (b ? b : 1);
}

extern "C" void qt_cuda_rope(qt_ctx *c, qt_tensor *out, const qt_tensor *in, const float *inv_freq, int B, int T,
                             int nh, int hd, int pos0, bool backward) {
    int half = hd / 2;
    QT_CHECK(half >= 1 && half <= QT_ROPE_MAX_HALF && hd % 2 == 0, "rope: head_dim %d", hd);
    QT_CHECK(out->dtype == in->dtype && out->numel == in->numel && in->numel == (int64_t)B * T * nh * hd,
             "rope: out/in must both be [B*T, nh*hd] of one dtype");
    int64_t npairs = (int64_t)B * T * nh * half;
    if (npairs == 0) return;
    int seq = T; /* QT_DISPATCH_FLOAT's element type is named T: keep the length under another name */
    rope_freqs f;
    for (int j = 0; j < half; j++) f.inv[j] = inv_freq[j];
    for (int j = half; j < QT_ROPE_MAX_HALF; j++) f.inv[j] = 0.0f;
    QT_DISPATCH_FLOAT(in->dtype, "rope", {
        rope_kernel<T><<<grid_for(npairs), 256, 0, qt_stream(c)>>>((T *)out->data, (const T *)in->data, f, npairs,
                                                                   seq, nh, half, pos0,
                                                                   backward ? -1.0f : 1.0f, backward);
        QT_LAUNCH_CHECK();
    });
}
