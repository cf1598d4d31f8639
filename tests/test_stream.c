/* Layer streaming (trainer/stream.c): a model whose NF4 layers live in pinned host memory
 * and are uploaded per use must compute exactly what the all-resident model computes —
 * eval loss, training loss and every LoRA gradient, bit for bit — for any number of
 * streamed layers spread over the depth, with the embedding table on the host too, and
 * with resident layers keeping their activations instead of recomputing them; and
 * the prefetcher must upload each streamed layer the expected number of times (a layer
 * uploaded too often costs bandwidth, one never uploaded would be a wrong result). On the
 * GPU the uploads are real asynchronous copies on a second stream. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "trainer/trainer.h"

#define QT_TEST_HAS_CUDA

enum { B = 2, T = 24, PASSES = 3 };

typedef struct result {
    double eval[PASSES], train[PASSES];
    double uploads[PASSES]; /* layer uploads per training pass (forward + backward) */
    float *grads;           /* every LoRA gradient of the last pass, concatenated */
    int64_t n;
} result;

static int32_t g_ids[B * T], g_labels[B * T];
static uint64_t g_seed;

static double run_pass(qt_ctx *c, llm_model *m, bool train) {
    qt_ctx_step_reset(c);
    c->grad_enabled = train;
    int64_t n = B * T;
    qt_tensor *ids = qt_empty(c, QT_STEP, QT_I32, 1, &n);
    qt_upload(ids, g_ids, QT_I32);
    qt_tensor *loss = llm_loss(c, m, ids, g_labels, B, T);
    if (train) qt_backward(c, loss, NULL);
    float lv;
    qt_download(loss, &lv, QT_F32);
    c->grad_enabled = true;
    return lv;
}

static int run(qt_device dev, qt_dtype dt, int streamed, bool embed_host, int keep, result *r) {
    memset(r, 0, sizeof *r);
    qt_ctx c;
    qt_ctx_opts co = {.dev = dev, .persist_budget = (size_t)64 << 20, .step_budget = (size_t)256 << 20,
                      .work_budget = (size_t)8 << 20};
    if (qt_ctx_init(&c, &co) != 0) return -1;
    llm_load_opts lo = {.dtype = dt, .nf4 = true, .double_quant = true, .streamed_layers = streamed,
                        .embed_on_host = embed_host};
    llm_model m;
    qt_err e = {0};
    int rc = qt_synthetic_model(&m, &c, "tiny", &lo, g_seed, &e);
    llm_lora_cfg lc = {.r = 4, .alpha = 8, .targets = LLM_TARGETS_ALL, .seed = g_seed + 1};
    if (rc == 0) rc = llm_add_lora(&m, &c, &lc, &e);
    if (rc == 0) rc = llm_stream_init(&m, &c, &e);
    if (rc != 0) {
        fprintf(stderr, "set-up failed: %s\n", e.msg);
        qt_ctx_free(&c);
        return -1;
    }
    m.grad_checkpointing = true;
    int kept = llm_keep_activations(&m, keep), resident = 4 - streamed;
    if (kept != (keep < resident ? keep : resident)) {
        fprintf(stderr, "llm_keep_activations(%d) kept %d with %d resident layers\n", keep, kept, resident);
        tu_fail_count++;
    }
    qt_rng rng;
    qt_rng_seed(&rng, g_seed + 2);
    for (int i = 1; i < m.n_lora_params; i += 2) qt_fill_uniform(m.lora_params[i], &rng, -0.3, 0.3); /* B != 0 */
    size_t lb = llm_layer_nf4_bytes(&m.cfg, true);
    for (int p = 0; p < PASSES; p++) {
        double bytes, ms;
        if (p > 0) { /* an eval pass between training passes breaks the forward/backward rhythm */
            r->eval[p] = run_pass(&c, &m, false);
            llm_stream_stats(&m, &bytes, &ms);
        }
        qt_zero_grads(&c, m.lora_params, m.n_lora_params);
        r->train[p] = run_pass(&c, &m, true);
        llm_stream_stats(&m, &bytes, &ms);
        r->uploads[p] = bytes / (double)lb;
    }
    for (int i = 0; i < m.n_lora_params; i++) r->n += m.lora_params[i]->numel;
    r->grads = malloc(sizeof(float) * (size_t)r->n);
    int64_t off = 0;
    for (int i = 0; i < m.n_lora_params; i++) {
        qt_download(qt_grad(&c, m.lora_params[i]), r->grads + off, QT_F32);
        off += m.lora_params[i]->numel;
    }
    llm_free(&m);
    qt_ctx_free(&c);
    return 0;
}

static void expect_same(const result *a, const result *ref, const char *what) {
    for (int p = 0; p < PASSES; p++) {
        TU_EXPECT(a->train[p] == ref->train[p], "%s: pass %d training loss %.9g, resident %.9g", what, p,
                  a->train[p], ref->train[p]);
        TU_EXPECT(a->eval[p] == ref->eval[p], "%s: pass %d eval loss %.9g, resident %.9g", what, p, a->eval[p],
                  ref->eval[p]);
    }
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; i < ref->n; i++)
        if (memcmp(&a->grads[i], &ref->grads[i], sizeof(float)) != 0 && bad++ == 0) first = i;
    TU_EXPECT(a->n == ref->n && bad == 0, "%s: %lld of %lld LoRA gradient values differ (first at %lld: %g vs %g)",
              what, (long long)bad, (long long)ref->n, (long long)first, first >= 0 ? a->grads[first] : 0.0,
              first >= 0 ? ref->grads[first] : 0.0);
}

static int check_device(qt_device dev, qt_dtype dt) {
    g_seed = qt_rng_next(tu_rng());
    for (int i = 0; i < B * T; i++) {
        g_ids[i] = (int32_t)(qt_rng_next(tu_rng()) % 256);
        g_labels[i] = i % 7 == 3 ? -100 : g_ids[i];
    }
    result ref, r;
    if (run(dev, dt, 0, false, 0, &ref) != 0) return 1;
    TU_EXPECT(isfinite(ref.train[0]) && ref.train[0] > 1, "resident loss %g", ref.train[0]);
    TU_EXPECT(ref.train[PASSES - 1] == ref.train[0], "the loss of the same batch changed between passes");
    double gmax = 0;
    for (int64_t i = 0; i < ref.n; i++) gmax = fmax(gmax, fabs(ref.grads[i]));
    TU_EXPECT(gmax > 0, "%s", "all LoRA gradients are zero: the test would not see a wrong layer");
    const int L = 4; /* the "tiny" shape */
    for (int s = 1; s <= L; s++)
        for (int eh = 0; eh < 2; eh++) {
            char what[64];
            snprintf(what, sizeof what, "%s: %d of %d layers streamed%s", qt_device_name(dev), s, L,
                     eh ? ", embeddings on the host" : "");
            if (run(dev, dt, s, eh, 0, &r) != 0) {
                free(ref.grads);
                return 1;
            }
            expect_same(&r, &ref, what);
            /* first pass: s uploads forward, s-2 backward (the two at the turn are in the slots);
             * after an eval pass (s-2 more, not counted here) the next forward starts cold
             * from the far end: s + s-2 again (with 2 or fewer, both stay in the slots) */
            double first = s == 1 ? 1 : 2 * s - 2, later = s <= 2 ? 0 : 2 * s - 2;
            TU_EXPECT(r.uploads[0] == first, "%s: %g layer uploads in the first pass, expected %g", what,
                      r.uploads[0], first);
            TU_EXPECT(r.uploads[1] == later && r.uploads[2] == later,
                      "%s: %g and %g layer uploads in later passes, expected %g", what, r.uploads[1], r.uploads[2],
                      later);
            printf("%s: losses and %lld gradients identical; uploads per pass %g, %g, %g\n", what, (long long)r.n,
                   r.uploads[0], r.uploads[1], r.uploads[2]);
            free(r.grads);
        }
    /* layers that keep their activations instead of recomputing them: the same numbers */
    for (int s = 0; s <= 2; s += 2)
        for (int k = 1; k <= 4; k += 3) {
            char what[80];
            snprintf(what, sizeof what, "%s: %d layers streamed, %d keep their activations", qt_device_name(dev), s,
                     k < 4 - s ? k : 4 - s);
            if (run(dev, dt, s, false, k, &r) != 0) {
                free(ref.grads);
                return 1;
            }
            expect_same(&r, &ref, what);
            printf("%s: losses and gradients identical\n", what);
            free(r.grads);
        }
    free(ref.grads);
    return 0;
}

int qt_test_cpu(void) {
    if (check_device(QT_CPU, QT_F32)) return 1;
    return tu_fail_count ? 1 : 0;
}

int qt_test_cuda(void) {
    if (!qt_cuda_available()) {
        printf("SKIP: no CUDA device\n");
        return TU_SKIP;
    }
    if (check_device(QT_CUDA, QT_BF16)) return 1;
    return tu_fail_count ? 1 : 0;
}
