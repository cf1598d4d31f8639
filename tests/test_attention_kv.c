/* qt_attention_kv against its oracle, qt_attention over the whole sequence (itself tested
 * against a naive formula in test_attention.c): a random sequence goes through a KV cache
 * in several schedules (all at once, prefill then one-token decode steps, chunks of 5, pure
 * decode) and every chunk's output must equal the same rows of the oracle. Cache rows not
 * yet written are NaN, so reading past the causal limit shows; reading a later row that is
 * already written (within a prefill chunk) gives wrong numbers. CPU in float64; GPU in
 * F32/BF16/F16 against the CPU oracle on the same rounded inputs. Bad arguments abort with
 * a message naming them. */
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#define QT_TEST_HAS_CUDA

typedef struct dims {
    int B, T, nh, nkv, hd, Tmax;
} dims;

/* A sequence: host values in double, already rounded to the dtype under test, and the
 * oracle's output on them. */
typedef struct seq {
    dims d;
    double *q, *k, *v; /* [B*T, nh*hd], [B*T, nkv*hd], [B*T, nkv*hd] */
    double *ref;       /* qt_attention(q, k, v) [B*T, nh*hd] */
} seq;

static double *host_copy(const qt_tensor *t) {
    double *h = malloc(sizeof(double) * (size_t)t->numel);
    qt_download(t, h, QT_F64);
    return h;
}

static seq make_seq(dims d, qt_dtype dt) {
    qt_ctx *c = tu_ctx(QT_CPU);
    qt_ctx_step_reset(c);
    seq s = {.d = d};
    int64_t sq[2] = {(int64_t)d.B * d.T, (int64_t)d.nh * d.hd};
    int64_t skv[2] = {(int64_t)d.B * d.T, (int64_t)d.nkv * d.hd};
    /* Drawn in dt (rounded there), held in f64 for the oracle. */
    qt_tensor *r[3];
    for (int i = 0; i < 3; i++) {
        r[i] = qt_empty(c, QT_STEP, dt, 2, i == 0 ? sq : skv);
        qt_fill_uniform(r[i], tu_rng(), -2.0, 2.0);
    }
    s.q = host_copy(r[0]), s.k = host_copy(r[1]), s.v = host_copy(r[2]);
    qt_tensor *in[3];
    for (int i = 0; i < 3; i++) {
        in[i] = qt_empty(c, QT_STEP, QT_F64, 2, r[i]->shape);
        qt_copy(in[i], r[i]);
    }
    s.ref = host_copy(qt_attention(c, in[0], in[1], in[2], d.B, d.T, d.nh, d.nkv, d.hd));
    qt_ctx_step_reset(c);
    return s;
}

static void free_seq(seq *s) {
    free(s->q), free(s->k), free(s->v), free(s->ref);
}

/* Rows [b*T + p0, +n) of a [B*T, w] host matrix into rows [b*n, +n) of dst, for every b. */
static void gather_rows(double *dst, const double *src, int B, int T, int p0, int n, int64_t w) {
    for (int b = 0; b < B; b++)
        memcpy(dst + (int64_t)b * n * w, src + ((int64_t)b * T + p0) * w, sizeof(double) * (size_t)(n * w));
}

/* Feed s through a cache on context c in dtype dt: the first chunk has `first` positions,
 * the others `step` each. Returns the worst relative error of a chunk's output against the
 * oracle's rows (inf when an output is not finite); *chunks counts the calls. */
static double run_chunks(qt_ctx *c, qt_dtype dt, const seq *s, int first, int step, int *chunks) {
    const dims d = s->d;
    const int64_t qw = (int64_t)d.nh * d.hd, kw = (int64_t)d.nkv * d.hd;
    const size_t esz = qt_dtype_size(dt);
    qt_ctx_step_reset(c);
    int64_t cs[2] = {(int64_t)d.B * d.Tmax, kw};
    qt_tensor *cache[2] = {qt_empty(c, QT_STEP, dt, 2, cs), qt_empty(c, QT_STEP, dt, 2, cs)};
    const double *seqkv[2] = {s->k, s->v};
    double *nan = malloc(sizeof(double) * (size_t)(cs[0] * kw));
    for (int64_t i = 0; i < cs[0] * kw; i++) nan[i] = NAN;
    for (int i = 0; i < 2; i++) qt_upload(cache[i], nan, QT_F64);
    free(nan);

    double *qh = malloc(sizeof(double) * (size_t)(d.B * d.T * qw));
    double *oh = malloc(sizeof(double) * (size_t)(d.B * d.T * qw));
    double *rh = malloc(sizeof(double) * (size_t)(d.B * d.T * qw));
    double worst = 0;
    *chunks = 0;
    for (int past = 0, n; past < d.T; past += n) {
        n = past == 0 ? first : step;
        if (n > d.T - past) n = d.T - past;
        /* The caller's part: this step's keys/values into cache rows b*Tmax + past.. */
        for (int i = 0; i < 2; i++)
            for (int b = 0; b < d.B; b++) {
                int64_t rs[2] = {n, kw};
                qt_tensor rows = qt_tensor_over((char *)cache[i]->data + ((int64_t)b * d.Tmax + past) * kw * (int64_t)esz,
                                                dt, c->dev, 2, rs);
                qt_upload(&rows, seqkv[i] + ((int64_t)b * d.T + past) * kw, QT_F64);
            }
        int64_t qs[2] = {(int64_t)d.B * n, qw};
        qt_tensor *q = qt_empty(c, QT_STEP, dt, 2, qs);
        gather_rows(qh, s->q, d.B, d.T, past, n, qw);
        qt_upload(q, qh, QT_F64);
        /* Unwritten output elements read as NaN (a memset of the free device step memory). */
        if (c->dev == QT_CUDA) qt_arena_poison(&c->data[QT_STEP]);
        qt_tensor *o = qt_attention_kv(c, q, cache[0], cache[1], d.B, n, past, d.Tmax, d.nh, d.nkv, d.hd);
        TU_EXPECT(o->shape[0] == qs[0] && o->shape[1] == qw && o->dtype == dt && !o->requires_grad,
                  "attention_kv output has the wrong shape/dtype or requires grad");
        qt_download(o, oh, QT_F64);
        gather_rows(rh, s->ref, d.B, d.T, past, n, qw);
        double num = 0, den = 0;
        for (int64_t i = 0; i < qs[0] * qw; i++) {
            if (!isfinite(oh[i])) num = INFINITY;
            num += (oh[i] - rh[i]) * (oh[i] - rh[i]);
            den += rh[i] * rh[i];
        }
        double e = sqrt(num / den);
        if (!(e <= worst)) worst = e; /* NaN-safe */
        ++*chunks;
    }
    free(qh), free(oh), free(rh);
    qt_ctx_step_reset(c);
    return worst;
}

/* Every schedule on sequence s: (first chunk, later chunks). */
static void check_schedules(qt_ctx *c, qt_dtype dt, const seq *s, double tol) {
    const dims d = s->d;
    int sched[4][2] = {
        {d.T, d.T}, /* whole prompt at once, past = 0 */
        {9, 1},     /* prefill 9, then decode one token at a time */
        {5, 5},     /* chunks of 5 */
        {1, 1},     /* decode from the first token on */
    };
    for (int i = 0; i < 4; i++) {
        int chunks;
        double e = run_chunks(c, dt, s, sched[i][0], sched[i][1], &chunks);
        bool ok = e <= tol;
        printf("  %-4s %-5s B=%d T=%-3d nh=%d nkv=%d hd=%-3d Tmax=%-3d first %-3d then %d (%3d calls): "
               "worst chunk rel err %.2e (tol %.0e)%s\n",
               qt_device_name(c->dev), qt_dtype_name(dt), d.B, d.T, d.nh, d.nkv, d.hd, d.Tmax,
               sched[i][0] < d.T ? sched[i][0] : d.T, sched[i][1], chunks, e, tol, ok ? "" : "  <-- FAIL");
        TU_EXPECT(ok, "attention_kv differs from qt_attention's rows: %.3e", e);
    }
}

/* ---- argument checks: each bad call must abort (in a child) with a message naming the
 * argument; the message is echoed here. */

typedef struct bad_call {
    const char *what, *expect; /* expect: a substring of the message */
    int B, Tq, past, Tmax;
    qt_dtype kdt;
    int64_t krows_extra;
} bad_call;

static void expect_abort(const bad_call *bc) {
    int fd[2];
    if (pipe(fd) != 0) {
        TU_EXPECT(0, "pipe failed");
        return;
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd[1], 2);
        close(fd[0]);
        qt_ctx *c = tu_ctx(QT_CPU);
        const int nh = 4, nkv = 2, hd = 3;
        int64_t sq[2] = {(int64_t)bc->B * bc->Tq, nh * hd};
        int64_t sk[2] = {(int64_t)bc->B * bc->Tmax + bc->krows_extra, nkv * hd};
        qt_tensor *q = qt_zeros(c, QT_STEP, QT_F64, 2, sq);
        qt_tensor *k = qt_zeros(c, QT_STEP, bc->kdt, 2, sk), *v = qt_zeros(c, QT_STEP, bc->kdt, 2, sk);
        qt_attention_kv(c, q, k, v, bc->B, bc->Tq, bc->past, bc->Tmax, nh, nkv, hd);
        _exit(0); /* not rejected */
    }
    close(fd[1]);
    char msg[2048] = {0};
    size_t len = 0;
    ssize_t r;
    while (len < sizeof msg - 1 && (r = read(fd[0], msg + len, sizeof msg - 1 - len)) > 0) len += (size_t)r;
    close(fd[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    bool aborted = WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT;
    bool named = strstr(msg, bc->expect) != NULL;
    char *nl = strchr(msg, '\n');
    if (nl) *nl = 0;
    printf("  rejects %-22s -> %s\n", bc->what, msg[0] ? msg : "(no message)");
    TU_EXPECT(aborted && named, "attention_kv with %s: aborted %d, message names '%s': %d", bc->what,
              aborted, bc->expect, named);
}

static void check_bad_args(void) {
    bad_call calls[] = {
        {"past + Tq > Tmax", "Tmax=8", 2, 3, 6, 8, QT_F64, 0},
        {"cache rows != B*Tmax", "expected [B*Tmax=16", 2, 1, 3, 8, QT_F64, 1},
        {"cache dtype != q dtype", "same dtype", 2, 1, 3, 8, QT_F32, 0},
        {"negative past", "past=-1", 2, 1, -1, 8, QT_F64, 0},
    };
    for (int i = 0; i < (int)(sizeof calls / sizeof calls[0]); i++) expect_abort(&calls[i]);
}

int qt_test_cpu(void) {
    dims cases[] = {
        {2, 23, 6, 2, 10, 31}, /* GQA 3:1, cache longer than the sequence */
        {3, 1, 4, 2, 6, 4},    /* T = 1 */
        {2, 17, 3, 3, 7, 20},  /* nh == nkv */
        {1, 12, 4, 1, 8, 12},  /* multi-query, the cache exactly full at the end */
    };
    qt_ctx *c = tu_ctx(QT_CPU);
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++) {
        seq s = make_seq(cases[i], QT_F64);
        check_schedules(c, QT_F64, &s, 1e-12);
        free_seq(&s);
    }
    /* The CPU op in narrower dtypes (output rounded to it): the GPU test's harness paths. */
    qt_dtype narrow[2] = {QT_F32, QT_BF16};
    double narrow_tol[2] = {1e-6, 1e-2};
    for (int j = 0; j < 2; j++) {
        seq s = make_seq(cases[0], narrow[j]);
        check_schedules(c, narrow[j], &s, narrow_tol[j]);
        free_seq(&s);
    }
    check_bad_args();
    return 0;
}

int qt_test_cuda(void) {
    dims cases[] = {
        {2, 23, 6, 2, 10, 31},   /* the CPU cases: one warp per row (few keys), hd < 32 */
        {3, 1, 4, 2, 6, 4},
        {2, 17, 3, 3, 7, 20},
        {1, 12, 4, 1, 8, 12},
        {2, 70, 4, 2, 40, 75},   /* 1-3 warps per row, hd 40 (two dims per lane, partly) */
        {1, 300, 8, 2, 128, 333}, /* decode rows past 256 keys: all 8 warps, merged */
        {1, 50, 2, 1, 256, 50},  /* largest head dim */
    };
    /* The kernel does test_attention's forward arithmetic, split over warps; same bounds. */
    qt_dtype dts[3] = {QT_F32, QT_BF16, QT_F16};
    double tol[3] = {1e-5, 1e-2, 3e-3};
    qt_ctx *g = tu_ctx(QT_CUDA);
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++)
        for (int j = 0; j < 3; j++) {
            seq s = make_seq(cases[i], dts[j]);
            check_schedules(g, dts[j], &s, tol[j]);
            free_seq(&s);
        }
    return 0;
}
