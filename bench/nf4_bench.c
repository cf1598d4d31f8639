/* NF4 throughput: quantize and dequantize a rows x cols matrix (default 4096 x 4096) on
 * the CPU and, when a GPU is present, on the GPU. Build and run with bench/nf4_bench.sh.
 * Dequantize bandwidth counts the bytes a dequant must move: n/2 codes + n/64 scale
 * codes (DQ) + the output. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "quant/quant.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static double deq_bytes(int64_t n, qt_dtype out) {
    return (double)n / 2 + (double)n / 64 + (double)n * (double)qt_dtype_size(out);
}

static void run(qt_device dev, int64_t rows, int64_t cols, int iters) {
    qt_ctx c;
    int64_t n = rows * cols, shape[2] = {rows, cols};
    size_t need = (size_t)n * 4 * 3 + ((size_t)64 << 20);
    qt_ctx_opts o = {.dev = dev, .persist_budget = need, .step_budget = (size_t)n * 4 + ((size_t)64 << 20)};
    if (qt_ctx_init(&c, &o) != 0) return;
    qt_rng r;
    qt_rng_seed(&r, 1234);
    const char *devn = qt_device_name(dev);
    if (dev == QT_CUDA) {
        char b[160];
        qt_cuda_describe(b, sizeof b);
        printf("GPU: %s\n", b);
    }
    qt_dtype ins[2] = {QT_F32, QT_BF16};
    for (int i = 0; i < 2; i++) {
        qt_tensor *w = qt_empty(&c, QT_PERSIST, ins[i], 2, shape);
        qt_fill_normal(w, &r, 0.0, 0.02);
        size_t mark = qt_arena_mark(&c.data[QT_PERSIST]);
        nf4_tensor q;
        qt_err e;
        double t0 = now();
        int reps = dev == QT_CUDA ? iters : 1;
        for (int k = 0; k < reps; k++) {
            qt_arena_reset(&c.data[QT_PERSIST], mark);
            if (nf4_quantize(&c, QT_PERSIST, w, true, &q, &e) != 0) {
                fprintf(stderr, "%s\n", e.msg);
                exit(1);
            }
        }
        double dt = (now() - t0) / reps;
        printf("%-4s quantize   %-4s -> nf4+dq %lldx%lld: %8.3f ms  %7.1f Melem/s\n", devn, qt_dtype_name(ins[i]),
               (long long)rows, (long long)cols, dt * 1e3, n / dt * 1e-6);
    }
    nf4_tensor q;
    qt_err e;
    qt_tensor *w = qt_empty(&c, QT_PERSIST, QT_F32, 2, shape);
    qt_fill_normal(w, &r, 0.0, 0.02);
    if (nf4_quantize(&c, QT_PERSIST, w, true, &q, &e) != 0) exit(1);
    qt_dtype outs[3] = {QT_BF16, QT_F32, QT_F16};
    for (int k = 0; k < 3; k++) {
        qt_tensor *out = qt_empty(&c, QT_STEP, outs[k], 2, shape);
        nf4_dequantize(&c, &q, out); /* warm-up */
        qt_ctx_sync(&c);
        int reps = dev == QT_CUDA ? iters : 2;
        double t0 = now();
        for (int it = 0; it < reps; it++) nf4_dequantize(&c, &q, out);
        qt_ctx_sync(&c);
        double dt = (now() - t0) / reps;
        printf("%-4s dequantize nf4+dq -> %-4s %lldx%lld: %8.3f ms  %7.1f Melem/s  %7.1f GB/s (%.1f MB moved)\n", devn,
               qt_dtype_name(outs[k]), (long long)rows, (long long)cols, dt * 1e3, n / dt * 1e-6,
               deq_bytes(n, outs[k]) / dt * 1e-9, deq_bytes(n, outs[k]) * 1e-6);
        qt_ctx_step_reset(&c);
    }
    qt_ctx_free(&c);
}

int main(int argc, char **argv) {
    int64_t rows = argc > 1 ? atoll(argv[1]) : 4096, cols = argc > 2 ? atoll(argv[2]) : 4096;
    int iters = argc > 3 ? atoi(argv[3]) : 200;
    printf("nf4: %.5f bits/param with DQ, %.5f without\n", nf4_bits_per_param(rows * cols, true),
           nf4_bits_per_param(rows * cols, false));
    run(QT_CPU, rows, cols, iters);
    if (qt_cuda_available()) run(QT_CUDA, rows, cols, iters);
    else printf("no CUDA device: GPU numbers skipped\n");
    return 0;
}
