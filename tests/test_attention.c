/* qt_attention: forward against a naive masked-softmax formula, float64 finite differences
 * (GQA, plain multi-head, T = 1) and GPU parity for F32/BF16/F16 (incl. T = 1031), each
 * case on both built-in CUDA paths (row kernels and cuBLAS tensor cores, forced), plus the
 * cuBLAS path with small row blocks and a tight scratch, and the automatic choice. Then every
 * GPU path (rows, tc, cuDNN fused attention, and a forward of one with the backward of
 * another: they share the lse) on Llama-like shapes (T 128/1031/2048, hd 64/128, GQA 1/4/8,
 * B 1/2) in bf16 and f16 against one float64 reference per shape, and QTRAIN_ATTN. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

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
    /* QTRAIN_ATTN names the CUDA path while qt_attn_cfg.path is AUTO; a configured path wins */
    const char *envs[5] = {"rows", "tc", "cudnn", "auto", ""};
    const qt_attn_path want[5] = {QT_ATTN_ROWS, QT_ATTN_TC, QT_ATTN_CUDNN, QT_ATTN_AUTO, QT_ATTN_AUTO};
    for (int i = 0; i < 5; i++) {
        setenv("QTRAIN_ATTN", envs[i], 1);
        TU_EXPECT(qt_attn_path_now() == want[i], "QTRAIN_ATTN=%s gave path %d", envs[i], (int)qt_attn_path_now());
    }
    qt_attn_cfg.path = QT_ATTN_ROWS;
    setenv("QTRAIN_ATTN", "cudnn", 1);
    TU_EXPECT(qt_attn_path_now() == QT_ATTN_ROWS, "the configured path did not win over QTRAIN_ATTN");
    qt_attn_cfg.path = QT_ATTN_AUTO;
    unsetenv("QTRAIN_ATTN");
    TU_EXPECT(qt_attn_path_now() == QT_ATTN_AUTO, "QTRAIN_ATTN unset is not AUTO");
    /* cuDNN's own checks of the graphs the cuDNN path builds (descriptor attributes, operation
     * shapes); needs the library, not a GPU */
    {
        const dims g[3] = {{1, 2048, 32, 8, 128}, {2, 128, 4, 4, 64}, {1, 1031, 8, 1, 64}};
        for (int i = 0; i < 3; i++) {
            char why[1024];
            bool ok = qt_cuda_attention_cudnn_graphs_check(g[i].B, g[i].T, g[i].nh, g[i].nkv, g[i].hd, why, sizeof why);
            printf("  cuDNN graphs B=%d T=%d nh=%d/%d hd=%d: %s%s\n", g[i].B, g[i].T, g[i].nh, g[i].nkv, g[i].hd,
                   ok ? "" : "not built: ", why);
#ifdef QT_WITH_CUDNN
            TU_EXPECT(ok, "cuDNN refused a graph of the cuDNN attention path: %s", why);
#endif
        }
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
 * read-modify-write the gradient in its dtype; 2x is exact there). tol 0 asks for exactly 2x;
 * a path whose backward is not bitwise reproducible (cuDNN's atomics) gets a relative bound:
 * overwriting instead of adding would be off by 0.5. */
static void check_accumulates(dims d, qt_dtype dt, double tol) {
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
            double num = 0, den = 0;
            for (int64_t j = 0; j < in[i]->numel; j++) {
                bad += !(v[j] == 2 * once[i][j]);
                num += (v[j] - 2 * once[i][j]) * (v[j] - 2 * once[i][j]);
                den += 4 * once[i][j] * once[i][j];
            }
            double rel = sqrt(num / (den > 0 ? den : 1));
            printf("  cuda attention %s grad %d after two steps == 2 x one step: %lld mismatches, rel err %.1e\n",
                   qt_dtype_name(dt), i, (long long)bad, rel);
            if (tol == 0)
                TU_EXPECT(bad == 0, "attention gradient does not accumulate (%lld values)", (long long)bad);
            else
                TU_EXPECT(rel <= tol, "attention gradient does not accumulate (rel err %.2e)", rel);
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

/* ---- every GPU path on Llama-like shapes */

typedef struct gpu_path {
    qt_attn_path fwd, bwd; /* a forward on one path, the backward on another: they share lse */
    const char *name;
} gpu_path;

/* One shape in dtype dt: inputs and output gradient drawn on the GPU in dt, the float64 CPU
 * reference computed once on those values, then each path on the GPU against it, with the
 * GPU's step and op-work memory poisoned with NaN first. Each path must really have run:
 * the cuBLAS and cuDNN paths count their calls, the row kernels are neither. */
static void paths_parity(const dims *d, qt_dtype dt, const gpu_path *paths, int np, double tol) {
    qt_ctx *cc = tu_ctx(QT_CPU), *gc = tu_ctx(QT_CUDA);
    qt_ctx_step_reset(cc);
    qt_ctx_step_reset(gc);
    int64_t sq[2] = {(int64_t)d->B * d->T, (int64_t)d->nh * d->hd};
    int64_t skv[2] = {(int64_t)d->B * d->T, (int64_t)d->nkv * d->hd};
    qt_tensor *ci[4]; /* q, k, v, output gradient */
    for (int i = 0; i < 4; i++) {
        qt_tensor *g = qt_empty(gc, QT_STEP, dt, 2, i == 1 || i == 2 ? skv : sq);
        qt_fill_uniform(g, tu_rng(), i == 3 ? -1 : -2, i == 3 ? 1 : 2);
        ci[i] = qt_empty(cc, QT_STEP, QT_F64, 2, g->shape);
        qt_copy(ci[i], g);
        ci[i]->requires_grad = i < 3;
    }
    cc->grad_enabled = gc->grad_enabled = true;
    qt_tensor *co = f_attn(cc, ci, (void *)d);
    qt_backward(cc, co, ci[3]);
    /* A shape cuDNN refuses fails here with its reason, instead of stopping the whole test
     * (a forced cuDNN path that cannot run is a fatal error). */
    char why[1024];
    bool cudnn_ok = qt_cuda_attention_cudnn_probe(gc, dt, d->B, d->T, d->nh, d->nkv, d->hd, why, sizeof why);
    for (int p = 0; p < np; p++) {
        if (!cudnn_ok && (paths[p].fwd == QT_ATTN_CUDNN || paths[p].bwd == QT_ATTN_CUDNN)) {
            printf("  cuda %-18s %-4s B=%d T=%4d nh=%2d/%d hd=%3d: cuDNN cannot run it: %s  <-- FAIL\n",
                   paths[p].name, qt_dtype_name(dt), d->B, d->T, d->nh, d->nkv, d->hd, why);
            TU_EXPECT(cudnn_ok, "cuDNN attention refused %s T=%d hd=%d: %s", qt_dtype_name(dt), d->T, d->hd, why);
            continue;
        }
        qt_ctx_step_reset(gc);
        qt_arena_poison(&gc->data[QT_STEP]);
        qt_arena_poison(&gc->work);
        qt_tensor *gi[4];
        for (int i = 0; i < 4; i++) {
            gi[i] = qt_empty(gc, QT_STEP, dt, 2, ci[i]->shape);
            qt_copy(gi[i], ci[i]);
            gi[i]->requires_grad = i < 3;
        }
        long tc0 = qt_attn_cfg.tc_calls, cd0 = qt_attn_cfg.cudnn_calls;
        qt_attn_cfg.path = paths[p].fwd;
        qt_tensor *go = f_attn(gc, gi, (void *)d);
        long tc1 = qt_attn_cfg.tc_calls, cd1 = qt_attn_cfg.cudnn_calls;
        qt_attn_cfg.path = paths[p].bwd;
        qt_backward(gc, go, gi[3]);
        long tc2 = qt_attn_cfg.tc_calls, cd2 = qt_attn_cfg.cudnn_calls;
        qt_attn_cfg.path = QT_ATTN_AUTO;
        double e[4] = {tu_rel_err(go, co), tu_rel_err(gi[0]->grad, ci[0]->grad),
                       tu_rel_err(gi[1]->grad, ci[1]->grad), tu_rel_err(gi[2]->grad, ci[2]->grad)};
        bool ok = tu_all_finite(go);
        for (int i = 0; i < 4; i++) ok &= e[i] <= tol;
        bool ran = tc1 - tc0 == (paths[p].fwd == QT_ATTN_TC) && cd1 - cd0 == (paths[p].fwd == QT_ATTN_CUDNN) &&
                   tc2 - tc1 == (paths[p].bwd == QT_ATTN_TC) && cd2 - cd1 == (paths[p].bwd == QT_ATTN_CUDNN);
        printf("  cuda %-18s %-4s B=%d T=%4d nh=%2d/%d hd=%3d: out %.1e dq %.1e dk %.1e dv %.1e (tol %.0e)%s\n",
               paths[p].name, qt_dtype_name(dt), d->B, d->T, d->nh, d->nkv, d->hd, e[0], e[1], e[2], e[3], tol,
               ok && ran ? "" : ran ? "  <-- FAIL" : "  <-- FAIL: another path ran");
        TU_EXPECT(ok, "%s %s T=%d: rel errs %.2e %.2e %.2e %.2e above %.0e", paths[p].name, qt_dtype_name(dt),
                  d->T, e[0], e[1], e[2], e[3], tol);
        TU_EXPECT(ran, "%s: calls tc %ld+%ld cudnn %ld+%ld (forward+backward)", paths[p].name, tc1 - tc0,
                  tc2 - tc1, cd1 - cd0, cd2 - cd1);
    }
    qt_ctx_step_reset(cc);
    qt_ctx_step_reset(gc);
}

/* One bf16 forward+backward under AUTO with QTRAIN_ATTN=env: which path ran. */
static void check_env(const char *env, const dims *d, long want_tc, long want_cudnn) {
    qt_ctx *c = tu_ctx(QT_CPU);
    setenv("QTRAIN_ATTN", env, 1);
    qt_attn_cfg.path = QT_ATTN_AUTO;
    long tc0 = qt_attn_cfg.tc_calls, cd0 = qt_attn_cfg.cudnn_calls;
    qt_ctx_step_reset(c);
    qt_tensor *in[3];
    make_qkv(c, d, QT_F32, 2.0, in);
    char name[32];
    snprintf(name, sizeof name, "QTRAIN_ATTN=%s", env);
    tu_cuda_parity(name, f_attn, in, 3, (void *)d, QT_BF16, 1e-2, 1e-2);
    long tc = qt_attn_cfg.tc_calls - tc0, cd = qt_attn_cfg.cudnn_calls - cd0;
    printf("  %s: %ld cuBLAS-path and %ld cuDNN calls\n", name, tc, cd);
    TU_EXPECT(tc == want_tc && cd == want_cudnn, "%s ran tc %ld / cudnn %ld times, expected %ld / %ld", name, tc, cd,
              want_tc, want_cudnn);
    unsetenv("QTRAIN_ATTN");
}

int qt_test_cuda(void) {
    qt_ctx *c = tu_ctx(QT_CPU);
    unsetenv("QTRAIN_ATTN"); /* the paths below are chosen here, not by the caller's environment */
    char why[1024];
    bool cudnn = qt_cuda_attention_cudnn_probe(tu_ctx(QT_CUDA), QT_BF16, 2, 67, 8, 2, 64, why, sizeof why);
    printf("  cuDNN attention: %s%s\n", cudnn ? "" : "not available: ", why);
#ifdef QT_WITH_CUDNN
    TU_EXPECT(cudnn, "a build with cuDNN cannot run cuDNN attention: %s", why);
#endif
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
        check_accumulates(cases[p == 0 ? 0 : 1], QT_F32, 0);
        check_accumulates(cases[p == 0 ? 0 : 1], QT_BF16, 0);
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
    /* AUTO: cuDNN for bf16/f16 when it is there; else (and for f32) row kernels below
     * QT_ATTN_TC_MIN_T, cuBLAS from there on. */
    qt_attn_cfg.path = QT_ATTN_AUTO;
    for (int i = 0; i < 2; i++) {
        long before = qt_attn_cfg.tc_calls, cd0 = qt_attn_cfg.cudnn_calls;
        parity_cases("auto", &cases[i], 1);
        bool tc = qt_attn_cfg.tc_calls > before;
        long cd = qt_attn_cfg.cudnn_calls - cd0;
        printf("  auto T=%d: f32 on the %s path, %ld cuDNN calls\n", cases[i].T, tc ? "cuBLAS" : "row-kernel", cd);
        TU_EXPECT(tc == (cases[i].T >= QT_ATTN_TC_MIN_T), "auto took the wrong path at T=%d", cases[i].T);
        TU_EXPECT(cd == (cudnn ? 4 : 0), "auto ran cuDNN %ld times at T=%d (bf16 and f16, forward and backward: 4)",
                  cd, cases[i].T);
    }
    /* QTRAIN_ATTN chooses when the configured path is AUTO (T = 300: cuDNN or cuBLAS by default) */
    check_env("rows", &cases[1], 0, 0);
    check_env("tc", &cases[1], 2, 0);
    if (cudnn) check_env("cudnn", &cases[1], 0, 2);

    /* Every path, and cuDNN's forward or backward paired with another path's, on Llama-like
     * shapes; bf16 and f16 with the bounds above (out and each gradient). The float64 CPU
     * reference is the costly part (~1 min in all), so it is computed once per shape and dtype. */
    {
        const gpu_path all[] = {
            {QT_ATTN_ROWS, QT_ATTN_ROWS, "rows"},
            {QT_ATTN_TC, QT_ATTN_TC, "tc"},
            {QT_ATTN_CUDNN, QT_ATTN_CUDNN, "cudnn"},
            {QT_ATTN_CUDNN, QT_ATTN_ROWS, "cudnn fwd,rows bwd"},
            {QT_ATTN_TC, QT_ATTN_CUDNN, "tc fwd,cudnn bwd"},
        };
        const struct { dims d; int ndt; } llama[] = {
            {{2, 128, 4, 4, 64}, 2},   /* MHA */
            {{1, 128, 8, 2, 128}, 2},  /* GQA 4 */
            {{1, 1031, 8, 1, 64}, 2},  /* GQA 8, T not a multiple of 64 */
            {{2, 1031, 4, 1, 128}, 2}, /* GQA 4, two sequences */
            {{2, 2048, 2, 2, 64}, 2},  /* MHA, two sequences */
            {{1, 2048, 8, 1, 128}, 1}, /* Llama-3-8B's GQA ratio, head dim and length: bf16 only,
                                          its reference alone takes ~25 s of one core */
        };
        const qt_dtype dts[2] = {QT_BF16, QT_F16};
        const double tol[2] = {1e-2, 3e-3};
        for (int i = 0; i < (int)(sizeof llama / sizeof llama[0]); i++)
            for (int t = 0; t < llama[i].ndt; t++) paths_parity(&llama[i].d, dts[t], all, cudnn ? 5 : 2, tol[t]);
    }

    /* cuDNN path: frozen inputs (cuDNN still writes all three gradients: only the needed ones
     * are added), and gradient accumulation (exact when its backward engine is deterministic). */
    if (cudnn) {
        qt_attn_cfg.path = QT_ATTN_CUDNN;
        for (int f = 0; f < 2; f++) {
            qt_ctx_step_reset(c);
            qt_tensor *in[3];
            make_qkv(c, &cases[1], QT_F32, 2.0, in);
            if (f == 0) in[0]->requires_grad = false;
            else in[1]->requires_grad = in[2]->requires_grad = false;
            tu_cuda_parity(f == 0 ? "cudnn q frozen" : "cudnn kv frozen", f_attn, in, 3, &cases[1], QT_BF16, 1e-2,
                           1e-2);
        }
        qt_cuda_attention_cudnn_probe(tu_ctx(QT_CUDA), QT_BF16, cases[0].B, cases[0].T, cases[0].nh, cases[0].nkv,
                                      cases[0].hd, why, sizeof why);
        bool nondet = qt_attn_cfg.cudnn_bwd_nondet;
        printf("  cuDNN backward engine: %s\n", nondet ? "non-deterministic (atomics)" : "deterministic");
        check_accumulates(cases[0], QT_BF16, nondet ? 1e-2 : 0);
        qt_attn_cfg.path = QT_ATTN_AUTO;
    }
    return 0;
}
