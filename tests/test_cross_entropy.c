/* qt_cross_entropy: a direct formula, float64 finite differences with ignored rows, the
 * all-ignored case, bad targets (CPU check; GPU NaN loss and the QTRAIN_DEBUG_SYNC check),
 * and GPU parity for F32/BF16/F16 up to Llama-3's vocabulary size. */
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#define QT_TEST_HAS_CUDA

#define IGNORE (-100)

static qt_tensor *f_ce(qt_ctx *c, qt_tensor **in, void *u) { return qt_cross_entropy(c, in[0], in[1], IGNORE); }

/* I32 [n] targets in [0, V), about `frac_ignored` of them IGNORE (at least one of each kind
 * when n >= 2, so both paths are exercised). */
static qt_tensor *make_targets(qt_ctx *c, int n, int V, double frac_ignored) {
    int32_t *v = malloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++)
        v[i] = qt_rng_uniform(tu_rng()) < frac_ignored ? IGNORE : (int32_t)(qt_rng_next(tu_rng()) % (uint64_t)V);
    if (n >= 2 && frac_ignored > 0 && frac_ignored < 1) {
        v[1 + (int)(qt_rng_next(tu_rng()) % (uint64_t)(n - 1))] = IGNORE;
        v[0] = (int32_t)(qt_rng_next(tu_rng()) % (uint64_t)V);
    }
    int64_t s = n;
    qt_tensor *t = qt_empty(c, QT_PERSIST, QT_I32, 1, &s);
    qt_upload(t, v, QT_I32);
    free(v);
    return t;
}

/* mean over kept rows of -log(exp(x_t) / sum_j exp(x_j)), no max shift (inputs are small). */
static double direct_loss(const qt_tensor *logits, const qt_tensor *targets) {
    int64_t N = logits->shape[0], V = logits->shape[1];
    const double *x = logits->data;
    const int32_t *t = targets->data;
    double sum = 0;
    int kept = 0;
    for (int64_t r = 0; r < N; r++) {
        if (t[r] == IGNORE) continue;
        double den = 0;
        for (int64_t j = 0; j < V; j++) den += exp(x[r * V + j]);
        sum += -log(exp(x[r * V + t[r]]) / den);
        kept++;
    }
    return kept ? sum / kept : 0;
}

/* Run fn in a child process; true when it dies (not exit 0) and its stderr has `needle`. */
static bool dies_saying(void (*fn)(void *), void *arg, const char *needle) {
    int p[2];
    if (pipe(p) != 0) return false;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        struct rlimit no_core = {0, 0};
        setrlimit(RLIMIT_CORE, &no_core);
        dup2(p[1], 2);
        close(p[0]);
        fn(arg);
        _exit(0);
    }
    close(p[1]);
    char buf[4096];
    size_t n = 0;
    ssize_t k;
    while (n < sizeof buf - 1 && (k = read(p[0], buf + n, sizeof buf - 1 - n)) > 0) n += (size_t)k;
    buf[n] = 0;
    close(p[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    bool died = !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    printf("  child %s; its stderr: %s", died ? "failed as expected" : "did NOT fail", n ? buf : "(empty)\n");
    return died && strstr(buf, needle);
}

static void bad_target_cpu(void *u) {
    qt_tensor **in = u;
    qt_ctx *c = tu_ctx(QT_CPU);
    qt_ctx_step_reset(c);
    qt_cross_entropy(c, in[0], in[1], IGNORE);
}

int qt_test_cpu(void) {
    qt_ctx *c = tu_ctx(QT_CPU);
    int64_t s[2] = {9, 13};
    qt_tensor *in[2] = {tu_rand(c, QT_F64, 2, s, -3, 3), make_targets(c, 9, 13, 0.3)};
    in[0]->requires_grad = true;
    qt_set_name(in[0], "logits");

    /* forward against the direct formula */
    qt_ctx_step_reset(c);
    qt_tensor *y = f_ce(c, in, NULL);
    double got, want = direct_loss(in[0], in[1]);
    qt_download(y, &got, QT_F64);
    printf("  forward %.15f vs direct %.15f\n", got, want);
    TU_EXPECT(y->numel == 1 && y->dtype == QT_F64, "F64 logits give an F64 scalar");
    TU_EXPECT(fabs(got - want) <= 1e-12 * fabs(want), "cross-entropy %.15g, direct formula %.15g", got, want);

    tu_gradcheck(c, "cross_entropy", f_ce, in, 2, NULL, 1e-6, 1e-7);

    /* F32 logits on the CPU give an F32 scalar with the same value (to f32 rounding). */
    qt_ctx_step_reset(c);
    qt_tensor *x32 = qt_empty(c, QT_STEP, QT_F32, 2, s);
    qt_copy(x32, in[0]);
    qt_tensor *y32 = qt_cross_entropy(c, x32, in[1], IGNORE);
    double v32;
    qt_download(y32, &v32, QT_F64);
    TU_EXPECT(y32->dtype == QT_F32 && fabs(v32 - want) < 1e-5 * fabs(want), "f32 loss %.9g vs %.9g", v32, want);

    /* every row ignored: loss 0 and a zero gradient */
    qt_tensor *all_ign[2] = {in[0], make_targets(c, 9, 13, 1.0)};
    qt_ctx_step_reset(c);
    qt_fill_zero(qt_grad(c, in[0]));
    y = f_ce(c, all_ign, NULL);
    qt_download(y, &got, QT_F64);
    qt_backward(c, y, NULL);
    TU_EXPECT(got == 0 && tu_max_abs(in[0]->grad) == 0, "all ignored: loss %g, max |grad| %g", got,
              tu_max_abs(in[0]->grad));

    /* a target outside [0, V): the check names the row and the value */
    qt_tensor *bad[2] = {in[0], make_targets(c, 9, 13, 0.0)};
    ((int32_t *)bad[1]->data)[4] = 13;
    TU_EXPECT(dies_saying(bad_target_cpu, bad, "row 4 has target 13"), "target 13 of V=13 not reported");
    ((int32_t *)bad[1]->data)[4] = -7;
    TU_EXPECT(dies_saying(bad_target_cpu, bad, "row 4 has target -7"), "target -7 not reported");
    return 0;
}

/* GPU, bad target: without the debug flag the loss is NaN (no sync); with QTRAIN_DEBUG_SYNC=1
 * the forward fails naming the row. The second part runs in a fresh process (this binary
 * again, with QT_TEST_CE_BAD_TARGET=1): a forked child cannot use the parent's CUDA. */
static int bad_target_cuda(bool child) {
    qt_ctx *c = tu_ctx(QT_CUDA);
    int64_t s[2] = {6, 1000};
    qt_tensor *x = qt_empty(c, QT_STEP, QT_F32, 2, s);
    qt_fill_uniform(x, tu_rng(), -1, 1);
    int32_t tv[6] = {3, IGNORE, 999, 1000, 0, -5};
    int64_t n = 6;
    qt_tensor *t = qt_empty(c, QT_STEP, QT_I32, 1, &n);
    qt_upload(t, tv, QT_I32);
    qt_tensor *y = qt_cross_entropy(c, x, t, IGNORE);
    float v;
    qt_download(y, &v, QT_F32);
    if (child) return 0; /* should not get here: the debug check fails first */
    printf("  cuda bad target without QTRAIN_DEBUG_SYNC: loss %g\n", v);
    TU_EXPECT(isnan(v), "a bad target must make the loss NaN, got %g", v);
    qt_ctx_step_reset(c);

    char self[4096], cmd[4200];
    ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
    if (k <= 0) {
        printf("  (cannot find this binary: the debug-sync child check is skipped)\n");
        return 0;
    }
    self[k] = 0;
    snprintf(cmd, sizeof cmd, "QT_TEST_CE_BAD_TARGET=1 QTRAIN_DEBUG_SYNC=1 '%s' --cuda 2>&1", self);
    fflush(stdout);
    FILE *p = popen(cmd, "r");
    char buf[8192];
    size_t got = p ? fread(buf, 1, sizeof buf - 1, p) : 0;
    buf[got] = 0;
    int st = p ? pclose(p) : 0;
    bool died = !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    /* the first bad row the GPU reaches is reported; rows 3 and 5 are both bad */
    bool named = strstr(buf, "row 3 has target 1000") || strstr(buf, "row 5 has target -5");
    printf("  cuda bad target with QTRAIN_DEBUG_SYNC=1: child %s, output:\n%s", died ? "failed" : "did NOT fail", buf);
    TU_EXPECT(died && named, "the debug check did not report the bad target");
    return 0;
}

int qt_test_cuda(void) {
    if (getenv("QT_TEST_CE_BAD_TARGET")) { /* the child of bad_target_cuda: must fail before returning */
        bad_target_cuda(true);
        return 1;
    }
    unsetenv("QTRAIN_DEBUG_SYNC");
    qt_ctx *c = tu_ctx(QT_CPU);
    struct { int N, V; double ign; } cases[] = {
        {77, 32000, 0.2},  /* ~20% ignored */
        {5, 128256, 0.2},  /* Llama-3 vocabulary */
        {33, 1000, 1.0},   /* every row ignored: loss 0, gradient 0 */
        {3, 7, 0.0},       /* V smaller than a block */
    };
    qt_dtype dts[3] = {QT_F32, QT_BF16, QT_F16};
    double tol_out[3] = {1e-5, 1e-2, 3e-3}, tol_grad[3] = {1e-5, 1e-2, 3e-3};
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++) {
        qt_ctx_step_reset(c);
        int64_t s[2] = {cases[i].N, cases[i].V};
        qt_tensor *in[2] = {tu_rand(c, QT_F32, 2, s, -6, 6), make_targets(c, cases[i].N, cases[i].V, cases[i].ign)};
        in[0]->requires_grad = true;
        qt_set_name(in[0], "logits");
        char name[32];
        snprintf(name, sizeof name, "ce N=%d V=%d", cases[i].N, cases[i].V);
        for (int d = 0; d < 3; d++) tu_cuda_parity(name, f_ce, in, 2, NULL, dts[d], tol_out[d], tol_grad[d]);
    }
    return bad_target_cuda(false);
}
