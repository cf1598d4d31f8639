/* Loading a Hugging Face folder with an NF4 base through the on-disk cache
 * (trainer/model.c + trainer/nf4_cache.c): the first load quantizes and writes the cache,
 * the second reads it, and both give the same logits, bit for bit, as a load without a
 * cache — with every layer resident and with layers streamed from host memory. A damaged
 * cache is a warning and the load quantizes from the checkpoint again (same logits). */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"
#include "trainer/trainer.h"

#define QT_TEST_HAS_CUDA

enum { B = 2, T = 9 };
static int32_t g_ids[B * T];

/* Logits of the fixture model loaded with the given cache folder (NULL = none). */
static float *logits(qt_device dev, const char *model, const char *cache, int streamed, int64_t *n) {
    qt_ctx c;
    qt_ctx_opts co = {.dev = dev, .persist_budget = (size_t)64 << 20, .step_budget = (size_t)64 << 20,
                      .work_budget = (size_t)8 << 20};
    if (qt_ctx_init(&c, &co) != 0) return NULL;
    llm_load_opts lo = {.dtype = QT_F32, .nf4 = true, .double_quant = true, .streamed_layers = streamed,
                        .nf4_cache_dir = cache};
    llm_model m;
    qt_err e = {0};
    float *out = NULL;
    if (llm_load(&m, &c, model, &lo, &e) != 0) {
        fprintf(stderr, "load: %s\n", e.msg);
        qt_ctx_free(&c);
        return NULL;
    }
    if (llm_stream_init(&m, &c, &e) == 0) {
        c.grad_enabled = false;
        int64_t ni = B * T;
        qt_tensor *ids = qt_empty(&c, QT_STEP, QT_I32, 1, &ni);
        qt_upload(ids, g_ids, QT_I32);
        qt_tensor *y = llm_forward(&c, &m, ids, B, T);
        *n = y->numel;
        out = malloc(sizeof(float) * (size_t)y->numel);
        qt_download(y, out, QT_F32);
    }
    llm_free(&m);
    qt_ctx_free(&c);
    return out;
}

static bool cache_complete(const char *cache) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "ls %s/nf4-*/COMPLETE >/dev/null 2>&1", cache);
    return system(cmd) == 0;
}

static int check(qt_device dev) {
    char model[512], cache[] = "/tmp/qt-nf4load-XXXXXX";
    snprintf(model, sizeof model, "%s/tests/fixtures/models/llama-gqa",
             getenv("QTRAIN_SOURCE") ? getenv("QTRAIN_SOURCE") : QT_SOURCE_DIR);
    QT_CHECK(mkdtemp(cache), "mkdtemp");
    for (int i = 0; i < B * T; i++) g_ids[i] = (int32_t)(qt_rng_next(tu_rng()) % 256);
    int64_t n = 0, n2 = 0;
    float *ref = logits(dev, model, NULL, 0, &n);
    if (!ref) return 1;
    const char *what[] = {"first load (writes the cache)", "second load (reads it)", "streamed, from the cache",
                          "after damage (re-quantized)"};
    for (int k = 0; k < 4; k++) {
        if (k == 3) { /* damage a layer file: the reader must refuse it, the loader fall back */
            char cmd[700];
            snprintf(cmd, sizeof cmd,
                     "f=$(ls %s/nf4-*/layer-001.safetensors) && printf 'XXXXXXXX' | dd of=\"$f\" bs=1 seek=4000 "
                     "conv=notrunc 2>/dev/null",
                     cache);
            TU_EXPECT(system(cmd) == 0, "%s", "could not damage the cache");
        }
        float *y = logits(dev, model, cache, k == 2 ? 2 : 0, &n2);
        TU_EXPECT(y && n2 == n && memcmp(y, ref, sizeof(float) * (size_t)n) == 0,
                  "%s %s: logits differ from a load without a cache", qt_device_name(dev), what[k]);
        if (k == 0) TU_EXPECT(cache_complete(cache), "%s: no complete cache after the first load", qt_device_name(dev));
        printf("%s: %s: logits identical to the uncached load\n", qt_device_name(dev), what[k]);
        free(y);
    }
    free(ref);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", cache);
    TU_EXPECT(system(cmd) == 0, "rm %s", cache);
    return 0;
}

int qt_test_cpu(void) {
    if (check(QT_CPU)) return 1;
    return tu_fail_count ? 1 : 0;
}

int qt_test_cuda(void) {
    if (!qt_cuda_available()) {
        printf("SKIP: no CUDA device\n");
        return TU_SKIP;
    }
    if (check(QT_CUDA)) return 1;
    return tu_fail_count ? 1 : 0;
}
