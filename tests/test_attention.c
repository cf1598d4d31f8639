/* qt_attention: forward against a naive masked-softmax formula, float64 finite differences
 * (GQA, plain multi-head, T = 1) and GPU parity for F32/BF16/F16 (incl. T = 1031), each
 * case on both CUDA paths (row kernels and cuBLAS tensor cores, forced), plus the cuBLAS
 * path with small row blocks and a tight scratch, and the automatic choice. */
#include <math.h>
#include <stdlib.h>

#include "autograd/ops/attention.h"
#include "testutil.h"

#define QT_TEST_HAS_CUDA

typedef struct dims {
    int B, T, nh, nkv, hd;
} dims;

static qt_tensor *f_attn(qt_ctx *c, qt_tensor **in, void *u) {
    dims *d = u;
    return qt_attention(c, in[0], in[1], in[2], d->B, d->T, d->nh, d->nkv, d->hd);
}

/* q, k, v for d on context c in dtype dt, requiring grad, values in [-r, r]. */
static void make_qkv(qt_ctx *c, const dims *d, qt_dtype dt, double r, qt_tensor **in) {
    int64_t sq[2] = {(int64_t)d->B * d->T, (int64_t)d->nh * d->hd};
    int64_t skv[2] = {(int64_t)d->B * d->T, (int64_t)d->nkv * d->hd};
    const char *names[3] = {"q", "k", "v"};
    for (int i = 0; i < 3; i++) {
        in[i] = tu_rand(c, dt, 2, i == 0 ? sq : skv, -r, r);
        in[i]->requires_grad = true;
        qt_set_name(in[i], "%s", names[i]);
    }
}

/* Written separately from the op: the full T x T score matrix with -inf above the diagonal,
 * a row softmax, then P V. */
static void naive_attention(const dims *d, const double *q, const double *k, const double *v,
                            double *out) {
    int T = d->T, hd = d->hd;
    double *S = malloc(sizeof(double) * (size_t)T * (size_t)T);
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < d->nh; h++) {
            int kh = h / (d->nh / d->nkv);
            for (int t = 0; t < T; t++)
                for (int s = 0; s < T; s++) {
                    double acc = 0;
                    for (int i = 0; i < hd; i++)
                        acc += q[((int64_t)(b * T + t) * d->nh + h) * hd + i] *
                               k[((int64_t)(b * T + s) * d->nkv + kh) * hd + i];
                    S[t * T + s] = s <= t ? acc / sqrt((double)hd) : -INFINITY;
                }
            for (int t = 0; t < T; t++) {
                double mx = -INFINITY, den = 0;
                for (int s = 0; s < T; s++) mx = fmax(mx, S[t * T + s]);
                for (int s = 0; s < T; s++) den += exp(S[t * T + s] - mx);
                for (int i = 0; i < hd; i++) {
                    double o = 0;
                    for (int s = 0; s < T; s++)
                        o += exp(S[t * T + s] - mx) / den * v[((int64_t)(b * T + s) * d->nkv + kh) * hd + i];
                    out[((int64_t)(b * T + t) * d->nh + h) * hd + i] = o;
                }
            }
        }
    free(S);
}

static void check_forward(qt_ctx *c, dims d) {
    qt_tensor *in[3];
    make_qkv(c, &d, QT_F64, 2.0, in);
    qt_ctx_step_reset(c);
    qt_tensor *y = f_attn(c, in, &d);
    qt_tensor *ref = qt_empty(c, QT_STEP, QT_F64, 2, y->shape);
    naive_attention(&d, in[0]->data, in[1]->data, in[2]->data, ref->data);
    double e = tu_rel_err(y, ref);
    printf("  forward B=%d T=%d nh=%d nkv=%d hd=%d vs naive: rel err %.2e\n", d.B, d.T, d.nh, d.nkv,
           d.hd, e);
    TU_EXPECT(e < 1e-12, "attention forward differs from the naive formula: %.3e", e);
    qt_ctx_step_reset(c);
}

int qt_test_cpu(void) {
    qt_ctx *c = tu_ctx(QT_CPU);
    dims cases[] = {
        {2, 7, 6, 2, 5},  /* GQA, 3 query heads per KV head */
        {2, 6, 3, 3, 4},  /* plain multi-head: nh == nkv */
        {3, 1, 4, 2, 6},  /* T = 1: out = v, q and k get exactly zero gradient */
        {1, 11, 4, 1, 3}, /* multi-query: one KV head for all */
    };
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++) check_forward(c, cases[i]);
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++) {
        qt_tensor *in[3];
        make_qkv(c, &cases[i], QT_F64, 1.5, in);
        char name[32];
        snprintf(name, sizeof name, "attn T=%d nh=%d/%d", cases[i].T, cases[i].nh, cases[i].nkv);
        tu_gradcheck(c, name, f_attn, in, 3, &cases[i], 1e-6, 1e-7);
    }
    /* frozen inputs get no gradient; the others are still right */
    for (int frozen = 0; frozen < 3; frozen++) {
        qt_tensor *in[3];
        make_qkv(c, &cases[0], QT_F64, 1.5, in);
        in[frozen]->requires_grad = false;
        tu_gradcheck(c, "attn one frozen", f_attn, in, 3, &cases[0], 1e-6, 1e-7);
        TU_EXPECT(in[frozen]->grad == NULL, "frozen input %d got a gradient", frozen);
    }
    return 0;
}

/* Gradients add into existing ones: a second step's backward doubles them (the kernels
 * read-modify-write the gradient in its dtype; 2x is exact there). */
static void check_accumulates(dims d, qt_dtype dt) {
    qt_ctx *cc = tu_ctx(QT_CPU), *g = tu_ctx(QT_CUDA);
    qt_tensor *h[3], *in[3];
    make_qkv(cc, &d, QT_F32, 1.0, h);
    for (int i = 0; i < 3; i++) {
        in[i] = qt_empty(g, QT_PERSIST, dt, 2, h[i]->shape);
        qt_copy(in[i], h[i]);
        in[i]->requires_grad = true;
    }
    int64_t n_out = (int64_t)d.B * d.T * d.nh * d.hd;
    double *seed = malloc(sizeof(double) * (size_t)n_out), *once[3];
    for (int64_t j = 0; j < n_out; j++) seed[j] = qt_rng_uniform(tu_rng()) * 2 - 1;
    for (int pass = 0; pass < 2; pass++) {
        qt_ctx_step_reset(g);
        qt_tensor *y = f_attn(g, in, &d);
        qt_tensor *sd = qt_empty(g, QT_STEP, dt, 2, y->shape);
        qt_upload(sd, seed, QT_F64);
        qt_backward(g, y, sd);
        for (int i = 0; i < 3; i++) {
            double *v = malloc(sizeof(double) * (size_t)in[i]->numel);
            qt_download(in[i]->grad, v, QT_F64);
            if (pass == 0) {
                once[i] = v;
                continue;
            }
            int64_t bad = 0;
            for (int64_t j = 0; j < in[i]->numel; j++) bad += !(v[j] == 2 * once[i][j]);
            printf("  cuda attention %s grad %d after two steps == 2 x one step: %lld mismatches\n",
                   qt_dtype_name(dt), i, (long long)bad);
            TU_EXPECT(bad == 0, "attention gradient does not accumulate (%lld values)", (long long)bad);
            free(v);
            free(once[i]);
        }
    }
    free(seed);
    qt_ctx_step_reset(g);
}

/* Every case in F32/BF16/F16 against the CPU reference on the current path. */
static void parity_cases(const char *path, const dims *cases, int n) {
    qt_ctx *c = tu_ctx(QT_CPU);
    /* Tolerances: a float emulation of the row kernels' arithmetic (online softmax, tree warp
     * sums, D from the rounded O as fused kernels do, gradients rounded to the dtype) against
     * the float64 reference gave, at T = 1031 hd = 128: f32 out 4e-7, grads <= 1.3e-6; bf16
     * ~2e-3 (output and gradients are stored in bf16: half an ulp is 2e-3); f16 ~2.3e-4.
     * The bounds leave 5-10x margin. The cuBLAS path rounds P and dS to the dtype before
     * their GEMMs (as flash attention does): errors of the same order, same bounds. */
    qt_dtype dts[3] = {QT_F32, QT_BF16, QT_F16};
    double tol_out[3] = {1e-5, 1e-2, 3e-3}, tol_grad[3] = {1e-5, 1e-2, 3e-3};
    for (int i = 0; i < n; i++) {
        qt_ctx_step_reset(c);
        qt_tensor *in[3];
        make_qkv(c, &cases[i], QT_F32, 2.0, in);
        char name[32];
        snprintf(name, sizeof name, "%s T=%d hd=%d", path, cases[i].T, cases[i].hd);
        for (int d = 0; d < 3; d++)
            tu_cuda_parity(name, f_attn, in, 3, (void *)&cases[i], dts[d], tol_out[d], tol_grad[d]);
    }
}

int qt_test_cuda(void) {
    qt_ctx *c = tu_ctx(QT_CPU);
    dims cases[] = {
        {2, 67, 8, 2, 64},    /* GQA 4:1 */
        {2, 300, 8, 2, 64},   /* GQA, long enough for the cuBLAS path by default */
        {1, 1031, 4, 1, 128}, /* long, multi-query */
        {2, 45, 6, 6, 40},    /* nh == nkv, hd not a multiple of 32 */
        {1, 19, 2, 1, 256},   /* largest head dim */
        {3, 1, 4, 2, 96},     /* T = 1 */
    };
    const int ncases = (int)(sizeof cases / sizeof cases[0]);
    qt_attn_path paths[2] = {QT_ATTN_ROWS, QT_ATTN_TC};
    const char *pname[2] = {"rows", "tc"};
    for (int p = 0; p < 2; p++) {
        qt_attn_cfg.path = paths[p];
        long before = qt_attn_cfg.tc_calls;
        parity_cases(pname[p], cases, ncases);
        /* frozen q (no dq), then frozen k and v (no dk/dv) */
        for (int f = 0; f < 2; f++) {
            qt_ctx_step_reset(c);
            qt_tensor *in[3];
            make_qkv(c, &cases[1], QT_F32, 2.0, in);
            if (f == 0) in[0]->requires_grad = false;
            else in[1]->requires_grad = in[2]->requires_grad = false;
            tu_cuda_parity(f == 0 ? "q frozen" : "kv frozen", f_attn, in, 3, &cases[1], QT_F32, 1e-5, 1e-5);
        }
        check_accumulates(cases[p == 0 ? 0 : 1], QT_F32);
        check_accumulates(cases[p == 0 ? 0 : 1], QT_BF16);
        long ran = qt_attn_cfg.tc_calls - before;
        printf("  path %s: %ld cuBLAS-path calls\n", pname[p], ran);
        TU_EXPECT(p == 0 ? ran == 0 : ran >= 2 * 3 * ncases, "path %s ran the cuBLAS path %ld times",
                  pname[p], ran);
    }
    /* cuBLAS path with blocks of 48 query rows (the last one 11) and a scratch that holds only
     * two of the three KV heads in backward: row blocks, a part-filled head batch, GQA 2:1. */
    {
        dims d = {2, 203, 6, 3, 32};
        qt_attn_cfg.path = QT_ATTN_TC;
        qt_attn_cfg.qblk = 48;
        qt_attn_cfg.cap = 320000;
        parity_cases("tc blocks", &d, 1);
        printf("  tc blocks: last call %d rows per block, %d heads per GEMM\n", qt_attn_cfg.last_tq,
               qt_attn_cfg.last_nb);
        TU_EXPECT(qt_attn_cfg.last_tq == 48 && qt_attn_cfg.last_nb == 2,
                  "expected 48 rows x 2 heads, got %d x %d", qt_attn_cfg.last_tq, qt_attn_cfg.last_nb);
        qt_attn_cfg.qblk = 0;
        qt_attn_cfg.cap = 0;
    }
    /* AUTO: row kernels below QT_ATTN_TC_MIN_T, cuBLAS from there on. */
    qt_attn_cfg.path = QT_ATTN_AUTO;
    for (int i = 0; i < 2; i++) {
        long before = qt_attn_cfg.tc_calls;
        parity_cases("auto", &cases[i], 1);
        bool tc = qt_attn_cfg.tc_calls > before;
        printf("  auto T=%d: %s path\n", cases[i].T, tc ? "cuBLAS" : "row-kernel");
        TU_EXPECT(tc == (cases[i].T >= QT_ATTN_TC_MIN_T), "auto took the wrong path at T=%d", cases[i].T);
    }
    return 0;
}
