/* Batch sources for the training loop (see batches.h). */
#include <stdlib.h>
#include <string.h>

#include "batches.h"

struct qt_batches {
    int B, T;
    int64_t n_rows;
    int32_t *ids, *labels; /* [n_rows, T] */
};

static qt_batches *synthetic_rows(int64_t n_rows, int B, int T, int V, uint64_t seed) {
    qt_batches *s = calloc(1, sizeof *s);
    QT_CHECK(s, "out of host memory");
    s->B = B;
    s->T = T;
    s->n_rows = n_rows;
    s->ids = malloc(sizeof(int32_t) * (size_t)(n_rows * T));
    s->labels = malloc(sizeof(int32_t) * (size_t)(n_rows * T));
    QT_CHECK(s->ids && s->labels, "out of host memory");
    qt_rng r;
    qt_rng_seed(&r, seed);
    for (int64_t i = 0; i < n_rows; i++) {
        int64_t a = (int64_t)(qt_rng_next(&r) % (uint64_t)V), k = 1 + (int64_t)(qt_rng_next(&r) % 5);
        for (int j = 0; j < T; j++) s->ids[i * T + j] = s->labels[i * T + j] = (int32_t)((a + j * k) % V);
    }
    return s;
}

int qt_batches_open(const qt_config *cfg, const llm_model *m, qt_batches **train, qt_batches **eval, qt_err *e) {
    int B = (int)cfg->train.micro_batch, T = (int)cfg->data.seq_len, V = m->cfg.vocab_size;
    if (T > m->cfg.max_position_embeddings)
        return qt_errf(e, "data.seq_len %d exceeds the model's max_position_embeddings %d", T,
                       m->cfg.max_position_embeddings);
    if (cfg->data.train[0])
        return qt_errf(e, "data.train: dataset files are not wired into training yet; use model.synthetic "
                          "with data.train: null for now");
    uint64_t seed = (uint64_t)cfg->data.shuffle_seed;
    *train = synthetic_rows(64 * (int64_t)B, B, T, V, seed);
    *eval = synthetic_rows(4 * (int64_t)B, B, T, V, seed ^ 0x5eedull);
    return 0;
}

int64_t qt_batches_count(const qt_batches *s) { return s ? s->n_rows / s->B : 0; }

void qt_batches_get(qt_batches *s, int64_t i, qt_batch *b) {
    QT_CHECK(i >= 0 && i < qt_batches_count(s), "batch %lld of %lld", (long long)i, (long long)qt_batches_count(s));
    size_t off = (size_t)(i * s->B * s->T);
    *b = (qt_batch){s->ids + off, s->labels + off, s->B, s->T};
}

void qt_batches_free(qt_batches *s) {
    if (!s) return;
    free(s->ids);
    free(s->labels);
    free(s);
}
