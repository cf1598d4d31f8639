/* Test harness: main(), random inputs, error norms, finite differences, GPU parity. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int tu_fail_count = 0;
static qt_rng g_rng;
static qt_ctx *g_ctx[2];

__attribute__((weak)) int qt_test_cuda(void);

qt_rng *tu_rng(void) { return &g_rng; }

static void free_ctxs(void) {
    for (int i = 0; i < 2; i++)
        if (g_ctx[i]) {
            qt_ctx_free(g_ctx[i]);
            free(g_ctx[i]);
            g_ctx[i] = NULL;
        }
}

qt_ctx *tu_ctx(qt_device dev) {
    if (g_ctx[dev]) return g_ctx[dev];
    qt_ctx *c = calloc(1, sizeof *c);
    qt_ctx_opts o = {.dev = dev, .persist_budget = (size_t)256 << 20, .step_budget = (size_t)256 << 20};
    if (qt_ctx_init(c, &o) != 0) {
        fprintf(stderr, "cannot create a %s context\n", qt_device_name(dev));
        exit(1);
    }
    g_ctx[dev] = c;
    /* Registered after the CUDA runtime initialised: handlers run in reverse order, so the
     * contexts are freed before CUDA tears itself down at exit. */
    atexit(free_ctxs);
    return c;
}

int main(int argc, char **argv) {
    const char *env = getenv("QT_TEST_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);
    printf("seed %llu (QT_TEST_SEED=%llu to replay)\n", (unsigned long long)seed, (unsigned long long)seed);
    qt_rng_seed(&g_rng, seed);
    setvbuf(stdout, NULL, _IOLBF, 0); /* a crash must not swallow the lines before it */
    int rc;
    if (argc > 1 && strcmp(argv[1], "--cuda") == 0) {
        if (!qt_test_cuda) {
            printf("SKIP: this test has no GPU part\n");
            return TU_SKIP;
        }
        if (!qt_cuda_available()) {
            char b[128];
            qt_cuda_describe(b, sizeof b);
            printf("SKIP: no CUDA device (%s); GPU checks run on the lent GPU machine (tests/gpu.sh)\n", b);
            return TU_SKIP;
        }
        rc = qt_test_cuda();
    } else {
        rc = qt_test_cpu();
    }
    if (rc == 0 && tu_fail_count) rc = 1;
    printf("%s\n", rc == 0 ? "PASS" : rc == TU_SKIP ? "SKIPPED" : "FAIL");
    return rc;
}

qt_tensor *tu_rand(qt_ctx *c, qt_dtype dt, int ndim, const int64_t *shape, double lo, double hi) {
    qt_tensor *t = qt_empty(c, QT_PERSIST, dt, ndim, shape);
    qt_fill_uniform(t, &g_rng, lo, hi);
    return t;
}

qt_tensor *tu_randint(qt_ctx *c, int n, int lo, int hi) {
    int64_t shape[1] = {n};
    qt_tensor *t = qt_empty(c, QT_PERSIST, QT_I32, 1, shape);
    int32_t *v = malloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++) v[i] = lo + (int32_t)(qt_rng_next(&g_rng) % (uint64_t)(hi - lo));
    qt_upload(t, v, QT_I32);
    free(v);
    return t;
}

static double *host_f64(const qt_tensor *t) {
    double *v = malloc(sizeof(double) * (size_t)(t->numel ? t->numel : 1));
    qt_download(t, v, QT_F64);
    return v;
}

double tu_rel_err(const qt_tensor *a, const qt_tensor *b) {
    if (a->numel != b->numel) return INFINITY;
    double *x = host_f64(a), *y = host_f64(b), num = 0, den = 0;
    for (int64_t i = 0; i < a->numel; i++) {
        if (!isfinite(x[i])) num = INFINITY;
        num += (x[i] - y[i]) * (x[i] - y[i]);
        den += y[i] * y[i];
    }
    free(x);
    free(y);
    if (den == 0) return sqrt(num);
    return sqrt(num / den);
}

double tu_max_abs(const qt_tensor *t) {
    double *x = host_f64(t), m = 0;
    for (int64_t i = 0; i < t->numel; i++) m = fmax(m, fabs(x[i]));
    free(x);
    return m;
}

bool tu_all_finite(const qt_tensor *t) {
    double *x = host_f64(t);
    bool ok = true;
    for (int64_t i = 0; i < t->numel; i++) ok &= isfinite(x[i]) != 0;
    free(x);
    return ok;
}

bool tu_have_file(const char *path) {
    struct stat st;
    if (stat(path, &st) == 0) return true;
    printf("SKIP: %s is not present (shared test data lives in ../shared; set QTRAIN_SHARED)\n", path);
    return false;
}

/* ---- finite differences */

static double objective(const qt_tensor *out, const double *r) {
    double *o = host_f64(out), s = 0;
    for (int64_t i = 0; i < out->numel; i++) s += o[i] * r[i];
    free(o);
    return s;
}

int tu_gradcheck(qt_ctx *c, const char *name, tu_fn f, qt_tensor **in, int n_in, void *user,
                 double h, double tol) {
    int fails = 0;
    for (int i = 0; i < n_in; i++) {
        QT_CHECK(in[i]->dev == QT_CPU, "gradcheck inputs live on the CPU");
        if (in[i]->requires_grad) {
            QT_CHECK(in[i]->dtype == QT_F64, "gradcheck inputs must be F64");
            qt_fill_zero(qt_grad(c, in[i]));
        }
    }
    qt_ctx_step_reset(c);
    c->grad_enabled = true;
    qt_tensor *out = f(c, in, user);
    double *r = malloc(sizeof(double) * (size_t)out->numel);
    for (int64_t i = 0; i < out->numel; i++) r[i] = qt_rng_uniform(&g_rng) * 2 - 1;
    qt_tensor *seed = qt_empty(c, QT_STEP, out->dtype, out->ndim, out->shape);
    qt_upload(seed, r, QT_F64);
    qt_backward(c, out, seed);
    for (int i = 0; i < n_in; i++) {
        if (!in[i]->requires_grad) continue;
        qt_tensor *x = in[i];
        double *an = host_f64(x->grad), *num = malloc(sizeof(double) * (size_t)x->numel);
        double *xv = x->data;
        c->grad_enabled = false;
        for (int64_t j = 0; j < x->numel; j++) {
            double keep = xv[j];
            xv[j] = keep + h;
            qt_ctx_step_reset(c);
            double fp = objective(f(c, in, user), r);
            xv[j] = keep - h;
            qt_ctx_step_reset(c);
            double fm = objective(f(c, in, user), r);
            xv[j] = keep;
            num[j] = (fp - fm) / (2 * h);
        }
        c->grad_enabled = true;
        double dn = 0, nn = 0, worst = 0;
        int64_t wj = 0;
        for (int64_t j = 0; j < x->numel; j++) {
            double d = an[j] - num[j];
            dn += d * d;
            nn += num[j] * num[j];
            if (fabs(d) > worst) worst = fabs(d), wj = j;
        }
        double rel = sqrt(dn) / fmax(sqrt(nn), 1e-12);
        bool ok = rel <= tol && isfinite(rel);
        printf("  gradcheck %-18s input %d (%s, %lld values): rel err %.2e (tol %.0e)%s\n", name, i,
               x->name[0] ? x->name : "-", (long long)x->numel, rel, tol, ok ? "" : "  <-- FAIL");
        if (!ok) {
            printf("    worst element %lld: analytic %.10g numeric %.10g\n", (long long)wj, an[wj], num[wj]);
            fails++;
        }
        free(an);
        free(num);
    }
    free(r);
    qt_ctx_step_reset(c);
    tu_fail_count += fails;
    return fails;
}

/* ---- GPU vs CPU */

int tu_cuda_parity(const char *name, tu_fn f, qt_tensor **in, int n_in, void *user, qt_dtype dt,
                   double tol_out, double tol_grad) {
    qt_ctx *cc = tu_ctx(QT_CPU), *gc = tu_ctx(QT_CUDA);
    qt_tensor *ci[QT_MAX_IN * 2], *gi[QT_MAX_IN * 2];
    QT_CHECK(n_in <= QT_MAX_IN * 2, "too many inputs");
    qt_ctx_step_reset(cc);
    qt_ctx_step_reset(gc);
    for (int i = 0; i < n_in; i++) {
        bool fl = qt_dtype_is_float(in[i]->dtype);
        /* The CPU reference sees exactly the values the GPU sees: rounded to dt, held in f64. */
        gi[i] = qt_empty(gc, QT_STEP, fl ? dt : in[i]->dtype, in[i]->ndim, in[i]->shape);
        qt_copy(gi[i], in[i]);
        ci[i] = qt_empty(cc, QT_STEP, fl ? QT_F64 : in[i]->dtype, in[i]->ndim, in[i]->shape);
        qt_copy(ci[i], gi[i]);
        gi[i]->requires_grad = ci[i]->requires_grad = in[i]->requires_grad;
        qt_set_name(gi[i], "%s", in[i]->name);
        qt_set_name(ci[i], "%s", in[i]->name);
    }
    cc->grad_enabled = gc->grad_enabled = true;
    qt_arena_poison(&gc->data[QT_STEP]);
    qt_tensor *go = f(gc, gi, user);
    qt_tensor *co = f(cc, ci, user);
    int fails = 0;
    double e = tu_rel_err(go, co);
    bool ok = e <= tol_out && tu_all_finite(go);
    printf("  cuda %-14s %-5s output %-22s rel err %.2e (tol %.0e)%s\n", name, qt_dtype_name(dt), "",
           e, tol_out, ok ? "" : "  <-- FAIL");
    fails += !ok;
    if (go->requires_grad) {
        qt_tensor *gseed = qt_empty(gc, QT_STEP, go->dtype, go->ndim, go->shape);
        qt_fill_uniform(gseed, &g_rng, -1, 1);
        qt_tensor *cseed = qt_empty(cc, QT_STEP, co->dtype, co->ndim, co->shape);
        qt_copy(cseed, gseed);
        qt_backward(gc, go, go->numel == 1 ? NULL : gseed);
        qt_backward(cc, co, co->numel == 1 ? NULL : cseed);
        for (int i = 0; i < n_in; i++) {
            if (!gi[i]->requires_grad) continue;
            if (!gi[i]->grad || !ci[i]->grad) {
                printf("  cuda %-14s %-5s grad of input %d: missing on the %s  <-- FAIL\n", name, qt_dtype_name(dt), i,
                       gi[i]->grad ? "CPU" : "GPU");
                fails++;
                continue;
            }
            double eg = tu_rel_err(gi[i]->grad, ci[i]->grad);
            bool okg = eg <= tol_grad && tu_all_finite(gi[i]->grad);
            printf("  cuda %-14s %-5s grad of input %d %-12s rel err %.2e (tol %.0e)%s\n", name,
                   qt_dtype_name(dt), i, gi[i]->name, eg, tol_grad, okg ? "" : "  <-- FAIL");
            fails += !okg;
        }
    }
    qt_ctx_step_reset(cc);
    qt_ctx_step_reset(gc);
    tu_fail_count += fails;
    return fails;
}
