/* Attention forward and backward time on the GPU: row-kernel path, the cuBLAS tensor-core
 * path at a few query-row block sizes, and cuDNN's fused flash attention (bf16/f16; a line
 * says why when cuDNN cannot run the shape). Build and run with bench/attn_bench.sh.
 *
 * usage: attn_bench [B=1 T=2048 nh=32 nkv=8 hd=128 iters=10 dtype=bf16 work_mib=300 cap_mib=0]
 * Defaults are one Llama-3-8B layer at seq 2048. work_mib is the context's op-work arena (the
 * trainer sizes it for one dequantized weight: 113 MiB for 8B); cap_mib the cuBLAS path's
 * scratch cap (0: its default). TFLOP/s count the full T x T products (forward 4 B nh T^2 hd,
 * backward 10 B nh T^2 hd: S, dP, dV, dQ, dK); the causal work is about half. Each cuBLAS
 * and cuDNN row also gives its output's and dq's relative difference from the row-kernel path. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "autograd/ops/attention.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static double rel_diff(const float *a, const float *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

int main(int argc, char **argv) {
    int B = 1, T = 2048, nh = 32, nkv = 8, hd = 128, iters = 10, work_mib = 300, cap_mib = 0;
    qt_dtype dt = QT_BF16;
    int *ints[6] = {&B, &T, &nh, &nkv, &hd, &iters};
    for (int i = 1; i < argc && i <= 6; i++) *ints[i - 1] = atoi(argv[i]);
    if (argc > 7) dt = !strcmp(argv[7], "f32") ? QT_F32 : !strcmp(argv[7], "f16") ? QT_F16 : QT_BF16;
    if (argc > 8) work_mib = atoi(argv[8]);
    if (argc > 9) cap_mib = atoi(argv[9]);
    if (B < 1 || T < 1 || nh < 1 || nkv < 1 || hd < 1 || nh % nkv || hd > QT_ATTN_MAX_HD || iters < 1) {
        fprintf(stderr, "attn_bench: bad sizes (B T nh nkv hd iters; nh a multiple of nkv, hd <= %d)\n",
                QT_ATTN_MAX_HD);
        return 2;
    }
    if (!qt_cuda_available()) {
        printf("attn_bench: no CUDA device\n");
        return 0;
    }
    int64_t sq[2] = {(int64_t)B * T, (int64_t)nh * hd}, skv[2] = {(int64_t)B * T, (int64_t)nkv * hd};
    size_t es = qt_dtype_size(dt), nq = (size_t)sq[0] * sq[1], nkvel = (size_t)skv[0] * skv[1];
    qt_ctx c;
    qt_ctx_opts o = {.dev = QT_CUDA,
                     .persist_budget = (nq + 2 * nkvel) * es * 2 + ((size_t)16 << 20),
                     .step_budget = nq * es * 4 + (size_t)B * nh * T * 16 + ((size_t)512 << 20),
                     .work_budget = (size_t)work_mib << 20};
    if (qt_ctx_init(&c, &o) != 0) return 1;
    char desc[160];
    qt_cuda_describe(desc, sizeof desc);
    printf("GPU: %s\nattention B=%d T=%d nh=%d nkv=%d hd=%d %s, %d iters, op-work %d MiB\n", desc, B, T,
           nh, nkv, hd, qt_dtype_name(dt), iters, work_mib);

    qt_rng r;
    qt_rng_seed(&r, 1234);
    qt_tensor *q = qt_empty(&c, QT_PERSIST, dt, 2, sq), *k = qt_empty(&c, QT_PERSIST, dt, 2, skv),
              *v = qt_empty(&c, QT_PERSIST, dt, 2, skv);
    qt_tensor *in[3] = {q, k, v};
    for (int i = 0; i < 3; i++) {
        qt_fill_normal(in[i], &r, 0.0, 1.0);
        in[i]->requires_grad = true;
    }
    double fl_f = 4.0 * B * nh * (double)T * T * hd, fl_b = 2.5 * fl_f;
    float *ref_o = malloc(nq * 4), *ref_dq = malloc(nq * 4), *got = malloc(nq * 4);

    struct { qt_attn_path path; int qblk; const char *name; } cfgs[] = {
        {QT_ATTN_ROWS, 0, "rows"},       {QT_ATTN_TC, 256, "tc qblk=256"},
        {QT_ATTN_TC, 512, "tc qblk=512"}, {QT_ATTN_TC, 1024, "tc qblk=1024"},
        {QT_ATTN_TC, 4096, "tc qblk=T"},  {QT_ATTN_CUDNN, 0, "cudnn"},
    };
    char why[1024];
    bool cudnn = qt_cuda_attention_cudnn_probe(&c, dt, B, T, nh, nkv, hd, why, sizeof why);
    printf("cuDNN: %s%s\n", cudnn ? "" : "not run: ", why);
    printf("%-14s %10s %10s %9s %9s %11s %11s %10s %10s\n", "path", "fwd ms", "bwd ms", "fwd TF/s",
           "bwd TF/s", "work peak", "step extra", "out diff", "dq diff");
    for (size_t ci = 0; ci < sizeof cfgs / sizeof cfgs[0]; ci++) {
        if (cfgs[ci].path == QT_ATTN_CUDNN && !cudnn) continue;
        qt_attn_cfg.path = cfgs[ci].path;
        qt_attn_cfg.qblk = cfgs[ci].qblk;
        qt_attn_cfg.cap = (size_t)cap_mib << 20;
        qt_tensor *y = NULL, *seed = NULL;
        double tf = 0, tb = 0;
        size_t step_base = 0;
        c.work.peak = c.work.used;
        for (int it = -2; it < iters; it++) { /* two warm-up rounds */
            qt_ctx_step_reset(&c);
            for (int i = 0; i < 3; i++)
                if (in[i]->grad) qt_fill_zero(in[i]->grad);
            step_base = c.data[QT_STEP].used;
            c.data[QT_STEP].peak = step_base;
            qt_ctx_sync(&c);
            double t0 = now();
            y = qt_attention(&c, q, k, v, B, T, nh, nkv, hd);
            qt_ctx_sync(&c);
            double t1 = now();
            seed = qt_empty(&c, QT_STEP, dt, 2, sq);
            qt_fill_uniform(seed, &r, -1, 1);
            qt_ctx_sync(&c);
            double t2 = now();
            qt_backward(&c, y, seed);
            qt_ctx_sync(&c);
            double t3 = now();
            if (it >= 0) tf += t1 - t0, tb += t3 - t2;
        }
        tf /= iters, tb /= iters;
        /* Same seed values for every path: the last seed drawn differs, so redo one step. */
        qt_ctx_step_reset(&c);
        for (int i = 0; i < 3; i++) qt_fill_zero(in[i]->grad);
        y = qt_attention(&c, q, k, v, B, T, nh, nkv, hd);
        seed = qt_empty(&c, QT_STEP, dt, 2, sq);
        qt_rng sr;
        qt_rng_seed(&sr, 99);
        qt_fill_uniform(seed, &sr, -1, 1);
        qt_backward(&c, y, seed);
        double dout = 0, ddq = 0;
        qt_download(y, got, QT_F32);
        if (ci == 0) memcpy(ref_o, got, nq * 4);
        else dout = rel_diff(got, ref_o, (int64_t)nq);
        qt_download(q->grad, got, QT_F32);
        if (ci == 0) memcpy(ref_dq, got, nq * 4);
        else ddq = rel_diff(got, ref_dq, (int64_t)nq);
        printf("%-14s %10.3f %10.3f %9.1f %9.1f %9.1fMi %9.1fMi %10.2e %10.2e\n", cfgs[ci].name,
               tf * 1e3, tb * 1e3, fl_f / tf * 1e-12, fl_b / tb * 1e-12, c.work.peak / 1048576.0,
               (c.data[QT_STEP].peak - step_base) / 1048576.0, dout, ddq);
    }
    printf("(work peak: the op-work arena's high-water mark; step extra: STEP bytes above the inputs'\n"
           " step state during a forward+backward, incl. out, lse, seed, D and any scratch fallback)\n");
    free(ref_o);
    free(ref_dq);
    free(got);
    qt_ctx_free(&c);
    return 0;
}
