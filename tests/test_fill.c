/* Random fills (the GPU's counter-based generator against a sequential C oracle) and the
 * op profiler (QTRAIN_PROFILE): off means no state at all, on gives a table whose call
 * counts match the ops that ran. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define QT_TEST_HAS_CUDA

/* ---- oracle: the documented stream, walked sequentially (SplitMix64 from state key) */

static uint64_t sm64_next(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The scale-and-shift is a rounded multiply then a rounded add (volatile: no FMA), as the
 * kernel does it. */
static double *oracle(uint64_t key, int64_t n, double a, double b, bool normal) {
    double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
    uint64_t x = key;
    for (int64_t i = 0; i < n; i++) {
        volatile double scaled;
        if (normal) {
            double u1 = (double)((sm64_next(&x) >> 11) + 1) * 0x1.0p-53;
            double u2 = (double)(sm64_next(&x) >> 11) * 0x1.0p-53;
            scaled = b * (sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
        } else {
            scaled = (b - a) * ((double)(sm64_next(&x) >> 11) * 0x1.0p-53);
        }
        v[i] = a + scaled;
    }
    return v;
}

static void moments(const double *v, int64_t n, double *mean, double *std) {
    double s = 0, ss = 0;
    for (int64_t i = 0; i < n; i++) s += v[i];
    *mean = s / (double)n;
    for (int64_t i = 0; i < n; i++) ss += (v[i] - *mean) * (v[i] - *mean);
    *std = sqrt(ss / (double)(n - 1));
}

/* Mean within 6 standard errors, std within 2%: loose enough never to flake, tight enough
 * to catch a wrong scale, offset or a broken transform. */
static void check_normal(const char *what, const double *v, int64_t n, double mean, double std) {
    double m, s;
    moments(v, n, &m, &s);
    TU_EXPECT(fabs(m - mean) <= 6 * std / sqrt((double)n), "%s: mean %g, want %g", what, m, mean);
    TU_EXPECT(fabs(s / std - 1) <= 0.02, "%s: std %g, want %g", what, s, std);
}

/* closed_hi: in a 16-bit float a draw just below hi may round to hi itself. */
static void check_uniform(const char *what, const double *v, int64_t n, double lo, double hi, bool closed_hi) {
    double m, s;
    moments(v, n, &m, &s);
    bool in = true;
    for (int64_t i = 0; i < n; i++) in &= v[i] >= lo && (v[i] < hi || (closed_hi && v[i] == hi));
    TU_EXPECT(in, "%s: a value outside [%g, %g%c", what, lo, hi, closed_hi ? ']' : ')');
    double w = hi - lo;
    TU_EXPECT(fabs(m - (lo + hi) / 2) <= 6 * w / sqrt(12.0 * (double)n), "%s: mean %g", what, m);
    TU_EXPECT(fabs(s / (w / sqrt(12.0)) - 1) <= 0.02, "%s: std %g", what, s);
}

static qt_ctx *new_ctx(qt_device dev) {
    qt_ctx *c = calloc(1, sizeof *c);
    qt_ctx_opts o = {.dev = dev, .persist_budget = (size_t)64 << 20, .step_budget = (size_t)64 << 20};
    if (qt_ctx_init(c, &o) != 0) {
        fprintf(stderr, "cannot create a %s context\n", qt_device_name(dev));
        exit(1);
    }
    return c;
}

static void free_ctx(qt_ctx *c) {
    qt_ctx_free(c);
    free(c);
}

int qt_test_cpu(void) {
    /* The oracle's own distribution (what the GPU is held to). */
    uint64_t key = qt_rng_next(tu_rng());
    int64_t n = 200003;
    double *v = oracle(key, n, 0.3, 1.7, true);
    check_normal("oracle normal", v, n, 0.3, 1.7);
    free(v);
    v = oracle(key, n, -2.5, 0.5, false);
    check_uniform("oracle uniform", v, n, -2.5, 0.5, false);
    free(v);

    /* CPU tensors keep the sequential path: element i is the i-th draw of r. */
    qt_ctx *c = tu_ctx(QT_CPU);
    int64_t s[1] = {1001};
    qt_tensor *t = qt_empty(c, QT_STEP, QT_F64, 1, s);
    qt_rng r = *tu_rng(), r2 = r;
    qt_fill_normal(t, &r, -1.0, 0.25);
    const double *x = t->data;
    int bad = 0;
    for (int64_t i = 0; i < s[0]; i++) bad += x[i] != -1.0 + 0.25 * qt_rng_normal(&r2);
    TU_EXPECT(bad == 0, "CPU fill_normal: %d of %lld values differ from the generator's draws", bad, (long long)s[0]);
    TU_EXPECT(!memcmp(&r, &r2, sizeof r), "CPU fill_normal advanced r differently");
    qt_ctx_step_reset(c);

    /* The profiler stays off on CPU contexts, even when asked for. */
    setenv("QTRAIN_PROFILE", "1", 1);
    qt_ctx *p = new_ctx(QT_CPU);
    TU_EXPECT(!qt_profile_enabled(p) && p->prof == NULL, "profiler on for a CPU context");
    qt_profile_mark(p, "x", QT_PROF_OTHER); /* no-ops */
    qt_profile_step(p, true);
    FILE *f = tmpfile();
    qt_profile_print(p, f);
    TU_EXPECT(ftell(f) == 0, "profile printed for a CPU context");
    fclose(f);
    free_ctx(p);
    unsetenv("QTRAIN_PROFILE");
    return 0;
}

/* ---- GPU */

static double ulp_of(qt_dtype dt) {
    return dt == QT_F64 ? 1e-13 : dt == QT_F32 ? 0x1.0p-23 : dt == QT_BF16 ? 0x1.0p-7 : 0x1.0p-10;
}

/* Fill a GPU tensor, check r moved by exactly one draw and every element against the
 * oracle rounded to dt the way an upload rounds. Slack: one ulp of dt (1e-13 for f64) plus
 * 1e-12 absolute, for CUDA's double log/cospi against libm's log/cos(2πu) differing in the
 * last bits; a wrong index, key, scale or offset is off by O(1). */
static void check_gpu_fill(qt_ctx *g, qt_ctx *h, qt_dtype dt, int64_t n, bool normal, double a, double b) {
    int64_t s[1] = {n};
    qt_tensor *t = qt_empty(g, QT_STEP, dt, 1, s), *ref = qt_empty(h, QT_STEP, dt, 1, s);
    qt_rng r = *tu_rng(), r2 = r;
    if (normal) qt_fill_normal(t, &r, a, b);
    else qt_fill_uniform(t, &r, a, b);
    uint64_t key = qt_rng_next(&r2);
    TU_EXPECT(!memcmp(&r, &r2, sizeof r), "%s fill on the GPU must advance r by one draw", qt_dtype_name(dt));
    *tu_rng() = r;
    double *o = oracle(key, n, a, b, normal), *got = malloc(sizeof(double) * (size_t)n), *want = malloc(sizeof(double) * (size_t)n);
    qt_upload(ref, o, QT_F64);
    qt_download(ref, want, QT_F64);
    qt_download(t, got, QT_F64);
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; i < n; i++) {
        bool ok = fabs(got[i] - want[i]) <= ulp_of(dt) * fabs(want[i]) + 1e-12;
        if (!ok && first < 0) first = i;
        bad += !ok;
    }
    printf("  cuda fill %-7s %-5s n=%-8lld mismatches %lld\n", normal ? "normal" : "uniform", qt_dtype_name(dt),
           (long long)n, (long long)bad);
    TU_EXPECT(bad == 0, "%s %s: %lld mismatches, first at %lld: gpu %.17g oracle %.17g", normal ? "normal" : "uniform",
              qt_dtype_name(dt), (long long)bad, (long long)first, got[first < 0 ? 0 : first], want[first < 0 ? 0 : first]);
    if (n > 100000) {
        if (normal) check_normal("gpu normal", got, n, a, b);
        else check_uniform("gpu uniform", got, n, a, b, dt != QT_F32);
    }
    free(o);
    free(got);
    free(want);
}

/* Parse the table row for `label`: phase cells (ms or "-") and calls. */
static bool profile_row(const char *text, const char *label, bool present[4], double *calls) {
    char key[64];
    snprintf(key, sizeof key, "\n  %s ", label);
    const char *p = strstr(text, key);
    if (!p) return false;
    p += strlen(key);
    char cell[8][32];
    int n = sscanf(p, "%31s %31s %31s %31s %31s %31s %31s", cell[0], cell[1], cell[2], cell[3], cell[4], cell[5], cell[6]);
    if (n != 7) return false;
    for (int k = 0; k < 4; k++) present[k] = strcmp(cell[k], "-") != 0;
    *calls = atof(cell[6]);
    return true;
}

static qt_tensor *two_matmuls(qt_ctx *c, qt_tensor *x, void *u) {
    qt_tensor **w = u;
    return qt_matmul(c, qt_matmul(c, x, w[0], false, true), w[1], false, true);
}

static void profile_step(qt_ctx *c, qt_tensor **w, bool train) {
    qt_ctx_step_reset(c);
    c->grad_enabled = train;
    int64_t sx[2] = {37, 29};
    qt_tensor *x = qt_empty(c, QT_STEP, QT_F32, 2, sx);
    qt_fill_uniform(x, tu_rng(), -1, 1);
    qt_tensor *y = qt_checkpoint(c, two_matmuls, x, w);
    qt_profile_mark(c, "custom", QT_PROF_OTHER);
    if (train) {
        qt_tensor *seed = qt_empty(c, QT_STEP, QT_F32, y->ndim, y->shape);
        qt_fill_uniform(seed, tu_rng(), -1, 1);
        qt_backward(c, y, seed);
    }
    c->grad_enabled = true;
    qt_profile_step(c, train);
}

static void check_profiler(void) {
    /* Off: unset or "0" leaves no profiler state (so no events can be recorded). */
    unsetenv("QTRAIN_PROFILE");
    qt_ctx *c = new_ctx(QT_CUDA);
    TU_EXPECT(c->prof == NULL, "profiler on with QTRAIN_PROFILE unset");
    free_ctx(c);
    setenv("QTRAIN_PROFILE", "0", 1);
    c = new_ctx(QT_CUDA);
    TU_EXPECT(c->prof == NULL, "profiler on with QTRAIN_PROFILE=0");
    free_ctx(c);

    setenv("QTRAIN_PROFILE", "1", 1);
    setenv("QTRAIN_PROFILE_SKIP", "1", 1);
    c = new_ctx(QT_CUDA);
    TU_EXPECT(qt_profile_enabled(c), "QTRAIN_PROFILE=1 did not enable the profiler");
    int64_t s0[2] = {23, 29}, s1[2] = {19, 23};
    qt_tensor *w[2] = {qt_param(c, "w0", QT_F32, 2, s0, true), qt_param(c, "w1", QT_F32, 2, s1, true)};
    qt_fill_uniform(w[0], tu_rng(), -1, 1);
    qt_fill_uniform(w[1], tu_rng(), -1, 1);
    profile_step(c, w, true);  /* warm-up: left out */
    profile_step(c, w, true);  /* kept */
    profile_step(c, w, false); /* an eval-like forward: dropped */
    FILE *f = tmpfile();
    qt_profile_print(c, f);
    long len = ftell(f);
    char *text = calloc(1, (size_t)len + 2);
    text[0] = '\n';
    rewind(f);
    TU_EXPECT(fread(text + 1, 1, (size_t)len, f) == (size_t)len, "reading the profile back");
    fclose(f);
    printf("%s", text + 1);
    TU_EXPECT(strstr(text, "over 1 steps (first 1 left out)") != NULL, "profile should count 1 kept step");
    bool ph[4];
    double calls = 0;
    /* matmul: 2 forward (not recorded on the tape inside the checkpoint, but timed), 2 recomputed, 2 backward */
    TU_EXPECT(profile_row(text, "matmul", ph, &calls), "no matmul row");
    TU_EXPECT(ph[QT_PROF_FWD] && ph[QT_PROF_RECOMPUTE] && ph[QT_PROF_BWD] && !ph[QT_PROF_OTHER],
              "matmul phases fwd %d recomp %d bwd %d other %d", ph[0], ph[1], ph[2], ph[3]);
    TU_EXPECT(calls == 6, "matmul calls %g per step, want 6", calls);
    TU_EXPECT(profile_row(text, "custom", ph, &calls) && ph[QT_PROF_OTHER] && calls == 1, "custom mark row");
    TU_EXPECT(profile_row(text, "checkpoint", ph, &calls) && ph[QT_PROF_BWD], "checkpoint backward row");
    double per_step = 0;
    const char *p = strstr(text, "left out): ");
    if (p) per_step = atof(p + strlen("left out): "));
    TU_EXPECT(per_step > 0, "device time per step %g ms", per_step);
    free(text);
    free_ctx(c);
    unsetenv("QTRAIN_PROFILE");
    unsetenv("QTRAIN_PROFILE_SKIP");
}

int qt_test_cuda(void) {
    qt_ctx *g = new_ctx(QT_CUDA), *h = new_ctx(QT_CPU);
    const qt_dtype dts[4] = {QT_F32, QT_BF16, QT_F16, QT_F64};
    const int64_t ns[3] = {1, 4099, 1000003};
    for (int d = 0; d < 4; d++)
        for (int i = 0; i < 3; i++) {
            if (dts[d] == QT_F16 && i == 2) continue; /* f16 of N(.,1.7): fine, but one big case per dtype is enough */
            check_gpu_fill(g, h, dts[d], ns[i], true, 0.3, 1.7);
            check_gpu_fill(g, h, dts[d], ns[i], false, -2.5, 0.5);
            qt_ctx_step_reset(g);
            qt_ctx_step_reset(h);
        }
    /* Two calls give different values (a new key each call). */
    int64_t s[1] = {257};
    qt_tensor *a = qt_empty(g, QT_STEP, QT_F32, 1, s), *b = qt_empty(g, QT_STEP, QT_F32, 1, s);
    qt_fill_normal(a, tu_rng(), 0, 1);
    qt_fill_normal(b, tu_rng(), 0, 1);
    TU_EXPECT(tu_rel_err(a, b) > 0.5, "successive fills look alike (rel diff %g)", tu_rel_err(a, b));
    free_ctx(g);
    free_ctx(h);
    check_profiler();
    return 0;
}
