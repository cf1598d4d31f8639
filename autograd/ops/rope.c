/* Rotary position embedding, Hugging Face "rotate-half" convention, and its frequencies.
 *
 * For each head vector q of length hd, half = hd/2, pair j pairs q[j] with q[j + half]:
 *   q'[j]        = q[j] cos a_j - q[j + half] sin a_j
 *   q'[j + half] = q[j + half] cos a_j + q[j] sin a_j,     a_j = pos * inv_freq[j]
 *
 * Precision, chosen to match transformers (LlamaRotaryEmbedding): inv_freq is float32; the
 * angle is the float32 product float(pos) * inv_freq[j]; cos and sin are float32 values of that
 * float32 angle. The CPU reference takes cos/sin in double of the float32 angle and rounds them
 * to float32 (correctly rounded); the GPU uses sincosf (full-range reduction, <= 2 ulp), so both
 * backends agree to float rounding even at large positions. Note that the float32 angle itself
 * is off the exact pos * inv_freq by up to half an ulp of the angle (2.4e-4 rad at pos 8000,
 * inv_freq 1): that is transformers' behaviour and we keep it on purpose. The rotation is
 * then applied in float (GPU) / double (CPU) and rounded once to the tensor's dtype;
 * transformers in bf16 instead rounds cos/sin and each product to bf16, a difference at bf16
 * noise level.
 *
 * Backward: the map is a rotation per pair, so dx = rotation of dy by -a. */
#include <math.h>
#include <string.h>

#include "rope.h"

/* ---- frequencies */

/* transformers' default: 1.0 / (base ** (torch.arange(0, dim, 2, dtype=int64).float() / dim)),
 * all in float32 (1.0 / t is torch's reciprocal(t) * 1.0, i.e. a float32 reciprocal). Then:
 *  linear: inv_freq / factor.
 *  llama3 (_compute_llama3_parameters), float32 throughout:
 *    wavelen = 2*pi / inv  (reciprocal(inv) * float(2*pi));  low_wl = C / lf;  high_wl = C / hf
 *    wavelen > low_wl  -> inv / f           (low frequency: fully interpolated)
 *    wavelen < high_wl -> inv               (high frequency: untouched)
 *    otherwise          -> (1 - s) * inv / f + s * inv,  s = (C / wavelen - lf) / (hf - lf)
 * The float32 steps may differ from torch's vectorised pow by an ulp; x86-64 builds have no
 * FMA contraction here (baseline ISA), so each step rounds like torch's separate kernels. */
void qt_rope_inv_freq(const qt_rope *r, float *inv_freq) {
    int d = r->head_dim;
    QT_CHECK(d > 0 && d % 2 == 0 && d / 2 <= QT_ROPE_MAX_HALF, "rope: head_dim %d must be even and <= %d",
             d, 2 * QT_ROPE_MAX_HALF);
    QT_CHECK(r->theta > 0 && isfinite(r->theta), "rope: theta %g must be > 0", r->theta);
    QT_CHECK(r->scaling >= 0 && r->scaling <= 2, "rope: scaling %d is not 0 (none), 1 (linear) or 2 (llama3)",
             r->scaling);
    if (r->scaling != 0) QT_CHECK(r->factor > 0, "rope: scaling factor %g must be > 0", r->factor);
    if (r->scaling == 2)
        QT_CHECK(r->original_max_pos > 0 && r->low_freq_factor > 0 && r->high_freq_factor > r->low_freq_factor,
                 "rope llama3: need original_max_position_embeddings > 0 and high_freq_factor (%g) > "
                 "low_freq_factor (%g) > 0",
                 r->high_freq_factor, r->low_freq_factor);
    float base = (float)r->theta, f = (float)r->factor;
    float lf = (float)r->low_freq_factor, C = (float)r->original_max_pos;
    float low_wl = (float)(r->original_max_pos / r->low_freq_factor);
    float high_wl = (float)(r->original_max_pos / r->high_freq_factor);
    float hf_minus_lf = (float)(r->high_freq_factor - r->low_freq_factor);
    for (int j = 0; j < d / 2; j++) {
        float e = (float)(2 * j) / (float)d;
        float inv = 1.0f / powf(base, e);
        if (r->scaling == 1) {
            inv = inv / f;
        } else if (r->scaling == 2) {
            float wl = (1.0f / inv) * (float)(2.0 * M_PI);
            if (wl > low_wl) {
                inv = inv / f;
            } else if (!(wl < high_wl)) {
                float s = ((1.0f / wl) * C - lf) / hf_minus_lf;
                float a = (1.0f - s) * inv / f, b = s * inv;
                inv = a + b;
            }
        }
        inv_freq[j] = inv;
    }
}

/* ---- apply */

typedef struct rope_ext {
    int B, T, nh, hd, pos0;
    float inv[QT_ROPE_MAX_HALF];
} rope_ext;

/* out = rotate(in, sign * angle), stored (forward) or accumulated (backward, sign -1). */
static void rope_cpu(qt_ctx *c, const qt_tensor *out, const qt_tensor *in, const rope_ext *e, int sign) {
    int half = e->hd / 2;
    size_t m = qt_scratch_mark(c);
    double *X = qt_cpu_load(c, in), *Y = qt_cpu_scratch(c, in->numel);
    double *cs = qt_cpu_scratch(c, (int64_t)e->T * half), *sn = qt_cpu_scratch(c, (int64_t)e->T * half);
    for (int t = 0; t < e->T; t++)
        for (int j = 0; j < half; j++) {
            float a = (float)(e->pos0 + t) * e->inv[j];
            cs[t * half + j] = (float)cos((double)a);
            sn[t * half + j] = sign * (double)(float)sin((double)a);
        }
    for (int64_t row = 0; row < (int64_t)e->B * e->T; row++) {
        const double *ct = cs + (row % e->T) * half, *st = sn + (row % e->T) * half;
        for (int h = 0; h < e->nh; h++) {
            int64_t base = (row * e->nh + h) * e->hd;
            for (int j = 0; j < half; j++) {
                double x1 = X[base + j], x2 = X[base + j + half];
                Y[base + j] = x1 * ct[j] - x2 * st[j];
                Y[base + j + half] = x2 * ct[j] + x1 * st[j];
            }
        }
    }
    if (sign > 0) qt_cpu_store(out, Y);
    else qt_cpu_accum(out, Y);
    qt_scratch_reset(c, m);
}

static void rope_backward(qt_ctx *c, qt_node *n) {
    qt_tensor *x = n->in[0], *gx = qt_grad(c, x), *gy = n->out->grad;
    const rope_ext *e = n->ext;
    if (x->dev == QT_CUDA) QT_CUDA_CALL(qt_cuda_rope, c, gx, gy, e->inv, e->B, e->T, e->nh, e->hd, e->pos0, true);
    else rope_cpu(c, gx, gy, e, -1);
}

qt_tensor *qt_rope_apply(qt_ctx *c, qt_tensor *x, const qt_rope *r, int B, int T, int nh, int pos0) {
    char b[128];
    qt_op_check_float("rope", x);
    qt_op_check_2d("rope", x);
    int hd = r->head_dim;
    QT_CHECK(B >= 0 && T >= 0 && nh > 0 && pos0 >= 0, "rope: bad B=%d T=%d nh=%d pos0=%d", B, T, nh, pos0);
    QT_CHECK(x->shape[0] == (int64_t)B * T && x->shape[1] == (int64_t)nh * hd,
             "rope: %s must be [B*T, nh*hd] = [%lld, %lld] (B=%d T=%d nh=%d hd=%d)", qt_describe(x, b, sizeof b),
             (long long)B * T, (long long)nh * hd, B, T, nh, hd);
    QT_CHECK((int64_t)pos0 + T <= INT32_MAX, "rope: positions up to %lld overflow", (long long)pos0 + T);
    /* The tape keeps the frequencies (host memory of the step) for backward. */
    rope_ext local, *e = c->grad_enabled && x->requires_grad ? qt_step_host_alloc(c, sizeof *e) : &local;
    memset(e, 0, sizeof *e);
    *e = (rope_ext){.B = B, .T = T, .nh = nh, .hd = hd, .pos0 = pos0};
    qt_rope_inv_freq(r, e->inv);
    qt_tensor *y = qt_empty(c, QT_STEP, x->dtype, 2, x->shape);
    if (x->dev == QT_CUDA) QT_CUDA_CALL(qt_cuda_rope, c, y, x, e->inv, B, T, nh, hd, pos0, false);
    else rope_cpu(c, y, x, e, 1);
    qt_node *n = qt_record(c, "rope", rope_backward, y, 1, &x);
    if (n) {
        QT_CHECK(e != &local, "rope: recorded without saved frequencies");
        n->ext = e;
    }
    return y;
}
