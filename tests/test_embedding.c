/* embedding: exact row copies, scatter-add gradients with repeated ids (finite
 * differences and GPU parity), one rounding for a repeated id in a bf16 gradient,
 * and the abort on an out-of-range id (in a child process). */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#define QT_TEST_HAS_CUDA

static qt_tensor *f_emb(qt_ctx *c, qt_tensor **in, void *u) { return qt_embedding(c, in[0], in[1]); }

/* table [V,H] (trainable) and N ids; N > V makes repeated ids certain. */
static void make_inputs(qt_ctx *c, qt_dtype dt, int V, int H, int N, qt_tensor **in) {
    int64_t s[2] = {V, H};
    in[0] = tu_rand(c, dt, 2, s, -1, 1);
    in[0]->requires_grad = true;
    qt_set_name(in[0], "table");
    in[1] = tu_randint(c, N, 0, V);
    qt_set_name(in[1], "ids");
}

/* Every output row is bit-identical to its table row (CPU, any dtype). */
static void check_forward(qt_ctx *c, qt_dtype dt) {
    qt_tensor *in[2];
    make_inputs(c, dt, 13, 9, 31, in);
    qt_ctx_step_reset(c);
    qt_tensor *y = qt_embedding(c, in[0], in[1]);
    TU_EXPECT(y->dtype == dt && y->shape[0] == 31 && y->shape[1] == 9, "output %s [%lld,%lld]",
              qt_dtype_name(y->dtype), (long long)y->shape[0], (long long)y->shape[1]);
    size_t row = 9 * qt_dtype_size(dt);
    const int32_t *id = in[1]->data;
    int bad = 0;
    for (int n = 0; n < 31; n++)
        bad += memcmp((char *)y->data + n * row, (char *)in[0]->data + (size_t)id[n] * row, row) != 0;
    TU_EXPECT(bad == 0, "%s: %d rows differ from table[ids[n]]", qt_dtype_name(dt), bad);
    qt_ctx_step_reset(c);
}

/* 300 copies of one id with dY = 1 in a bf16 table: the gradient must be exactly 300. Adding
 * 1 to a bf16 value one copy at a time would stall at 256 (257 rounds back to 256). */
static void check_bf16_sum(qt_ctx *c) {
    int64_t s[2] = {5, 3};
    qt_tensor *t = qt_zeros(c, QT_PERSIST, QT_BF16, 2, s);
    t->requires_grad = true;
    int64_t sn[1] = {300};
    qt_tensor *ids = qt_empty(c, QT_PERSIST, QT_I32, 1, sn);
    int32_t v[300];
    for (int i = 0; i < 300; i++) v[i] = 2;
    qt_upload(ids, v, QT_I32);
    qt_ctx_step_reset(c);
    qt_tensor *y = qt_embedding(c, t, ids);
    qt_tensor *ones = qt_empty(c, QT_STEP, QT_F64, 2, y->shape);
    double *o = malloc(sizeof(double) * 900);
    for (int i = 0; i < 900; i++) o[i] = 1;
    qt_upload(ones, o, QT_F64);
    qt_backward(c, y, ones);
    double g[15];
    qt_download(t->grad, g, QT_F64);
    int bad = 0;
    for (int i = 0; i < 15; i++) bad += g[i] != (i / 3 == 2 ? 300.0 : 0.0);
    printf("  bf16 grad of 300 repeats (%s): %g (want 300), %d wrong values\n",
           qt_device_name(c->dev), g[6], bad);
    TU_EXPECT(bad == 0, "bf16 repeated-id gradient on %s: row 2 is %g, %d wrong values",
              qt_device_name(c->dev), g[6], bad);
    free(o);
    qt_ctx_step_reset(c);
}

/* Child side: QT_EMBEDDING_BAD_ID is set, look it up; the op must abort. */
static int run_bad_id(qt_device dev) {
    int bad = atoi(getenv("QT_EMBEDDING_BAD_ID"));
    qt_ctx *c = tu_ctx(dev);
    int64_t s[2] = {11, 7}, sn[1] = {20};
    qt_tensor *t = qt_empty(c, QT_PERSIST, QT_F32, 2, s), *ids = qt_empty(c, QT_PERSIST, QT_I32, 1, sn);
    qt_fill_uniform(t, tu_rng(), -1, 1);
    qt_set_name(t, "tok_embeddings");
    int32_t v[20];
    for (int i = 0; i < 20; i++) v[i] = i % 11;
    v[13] = bad;
    qt_upload(ids, v, QT_I32);
    qt_embedding(c, t, ids);
    qt_ctx_sync(c);
    fprintf(stderr, "embedding accepted id %d in a table of 11 rows\n", bad);
    return 1;
}

/* Runs this binary again with QT_EMBEDDING_BAD_ID; the child must die of SIGABRT. */
static void expect_abort(int bad_id, bool cuda) {
    printf("  out-of-range id %d on %s: the child below must abort with a message\n", bad_id,
           cuda ? "cuda" : "cpu");
    fflush(stdout);
    fflush(stderr);
    pid_t p = fork();
    if (p == 0) {
        char v[16];
        snprintf(v, sizeof v, "%d", bad_id);
        setenv("QT_EMBEDDING_BAD_ID", v, 1);
        struct rlimit no_core = {0, 0};
        setrlimit(RLIMIT_CORE, &no_core);
        execl("/proc/self/exe", "test_embedding", cuda ? "--cuda" : (char *)NULL, (char *)NULL);
        _exit(3);
    }
    int st = 0;
    TU_EXPECT(p > 0 && waitpid(p, &st, 0) == p, "fork/wait failed");
    bool ok = WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT;
    printf("  out-of-range id %d on %s: %s\n", bad_id, cuda ? "cuda" : "cpu",
           ok ? "aborted, as it should" : "did NOT abort  <-- FAIL");
    TU_EXPECT(ok, "id %d: child status %#x", bad_id, st);
}

int qt_test_cpu(void) {
    if (getenv("QT_EMBEDDING_BAD_ID")) return run_bad_id(QT_CPU);
    qt_ctx *c = tu_ctx(QT_CPU);
    check_forward(c, QT_F64);
    check_forward(c, QT_BF16);
    check_forward(c, QT_F16);
    int sizes[][3] = {{11, 7, 23}, {5, 13, 40}, {1, 3, 4}, {29, 1, 9}}; /* V, H, N */
    for (int s = 0; s < 4; s++) {
        qt_tensor *in[2];
        make_inputs(c, QT_F64, sizes[s][0], sizes[s][1], sizes[s][2], in);
        char name[32];
        snprintf(name, sizeof name, "emb V%d H%d N%d", sizes[s][0], sizes[s][1], sizes[s][2]);
        tu_gradcheck(c, name, f_emb, in, 2, NULL, 1e-6, 1e-7);
    }
    check_bf16_sum(c);
    expect_abort(11, false);
    expect_abort(-1, false);
    return 0;
}

int qt_test_cuda(void) {
    if (getenv("QT_EMBEDDING_BAD_ID")) return run_bad_id(QT_CUDA);
    qt_ctx *c = tu_ctx(QT_CPU);
    int sizes[][3] = {{97, 133, 301}, {1000, 257, 4099}, {50000, 64, 37}}; /* V, H, N */
    qt_dtype dts[3] = {QT_F32, QT_BF16, QT_F16};
    double tol[3] = {1e-6, 1e-2, 2e-3};
    for (int s = 0; s < 3; s++) {
        qt_tensor *in[2];
        make_inputs(c, QT_F32, sizes[s][0], sizes[s][1], sizes[s][2], in);
        char name[32];
        snprintf(name, sizeof name, "emb V%d H%d N%d", sizes[s][0], sizes[s][1], sizes[s][2]);
        for (int d = 0; d < 3; d++) tu_cuda_parity(name, f_emb, in, 2, NULL, dts[d], tol[d], tol[d]);
        if (s == 0) { /* frozen table: forward only */
            in[0]->requires_grad = false;
            for (int d = 0; d < 3; d++) tu_cuda_parity("emb frozen", f_emb, in, 2, NULL, dts[d], 0, 0);
        }
    }
    check_bf16_sum(tu_ctx(QT_CUDA));
    expect_abort(11, true);
    expect_abort(-1, true);
    return 0;
}
