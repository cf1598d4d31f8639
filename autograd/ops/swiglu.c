/* SwiGLU gating of the Llama MLP: y = silu(gate) * up, silu(g) = g * sigmoid(g).
 *
 * Like transformers (act_fn(gate_proj(x)) * up_proj(x)), silu's result is rounded to the
 * tensors' dtype before the product; for BF16/F16 both backends do the same (a no-op for
 * F32/F64).
 *
 * Backward, with s = sigmoid(g):
 *   d gate = dy * up * s * (1 + g * (1 - s))     (d silu/dg)
 *   d up   = dy * silu(g) */
#include <math.h>

#include "swiglu.h"

/* v rounded to dt the way a cast to dt rounds it (through float32, like the GPU). */
static double round_as(qt_dtype dt, double v) {
    if (dt == QT_BF16) return qt_bf16_to_f32(qt_f32_to_bf16((float)v));
    if (dt == QT_F16) return qt_f16_to_f32(qt_f32_to_f16((float)v));
    return v;
}

/* 1 / (1 + e^-g) without overflow warnings for very negative g (exp(+inf) -> result 0). */
static double sigmoid(double g) { return 1.0 / (1.0 + exp(-g)); }

static void swiglu_backward(qt_ctx *c, qt_node *n) {
    qt_tensor *gate = n->in[0], *up = n->in[1], *gy = n->out->grad;
    if (gate->dev == QT_CUDA) {
        QT_CUDA_CALL(qt_cuda_swiglu_bwd, c, gate->requires_grad ? qt_grad(c, gate) : NULL,
                     up->requires_grad ? qt_grad(c, up) : NULL, gy, gate, up);
        return;
    }
    int64_t n_el = gate->numel;
    size_t m = qt_scratch_mark(c);
    double *g = qt_cpu_load(c, gate), *u = qt_cpu_load(c, up), *dy = qt_cpu_load(c, gy);
    double *dg = gate->requires_grad ? qt_cpu_scratch(c, n_el) : NULL;
    double *du = up->requires_grad ? qt_cpu_scratch(c, n_el) : NULL;
    for (int64_t i = 0; i < n_el; i++) {
        double s = sigmoid(g[i]);
        if (dg) dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
        if (du) du[i] = dy[i] * g[i] * s;
    }
    /* gate and up may be the same tensor: both contributions land in its one gradient. */
    if (dg) qt_cpu_accum(qt_grad(c, gate), dg);
    if (du) qt_cpu_accum(qt_grad(c, up), du);
    qt_scratch_reset(c, m);
}

qt_tensor *qt_swiglu(qt_ctx *c, qt_tensor *gate, qt_tensor *up) {
    qt_op_check_float("swiglu", gate);
    qt_op_check_same("swiglu", gate, up);
    qt_op_check_float("swiglu", up);
    qt_tensor *y = qt_empty(c, QT_STEP, gate->dtype, gate->ndim, gate->shape);
    if (gate->dev == QT_CUDA) {
        QT_CUDA_CALL(qt_cuda_swiglu_fwd, c, y, gate, up);
    } else {
        size_t m = qt_scratch_mark(c);
        double *g = qt_cpu_load(c, gate), *u = qt_cpu_load(c, up), *o = qt_cpu_scratch(c, y->numel);
        for (int64_t i = 0; i < y->numel; i++) o[i] = round_as(y->dtype, g[i] * sigmoid(g[i])) * u[i];
        qt_cpu_store(y, o);
        qt_scratch_reset(c, m);
    }
    qt_tensor *in[2] = {gate, up};
    qt_record(c, "swiglu", swiglu_backward, y, 2, in);
    return y;
}
