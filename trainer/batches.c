/* Batch sources for the training loop (see batches.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batches.h"

/* n_rows generated rows of T tokens, all trained. */
static void synthetic_split(qt_data_split *s, int64_t n_rows, int T, int V, qt_rng *r) {
    memset(s, 0, sizeof *s);
    s->n_rows = n_rows;
    s->seq_len = T;
    s->ids = malloc(sizeof(int32_t) * (size_t)(n_rows * T));
    s->train = malloc((size_t)(n_rows * T));
    QT_CHECK(s->ids && s->train, "out of host memory");
    for (int64_t i = 0; i < n_rows; i++) {
        int64_t a = (int64_t)(qt_rng_next(r) % (uint64_t)V), k = 1 + (int64_t)(qt_rng_next(r) % 5);
        for (int j = 0; j < T; j++) {
            s->ids[i * T + j] = (int32_t)((a + j * k) % V);
            s->train[i * T + j] = j > 0;
        }
    }
    s->n_examples = n_rows;
    s->n_tokens = n_rows * T;
    s->n_loss_tokens = n_rows * (T - 1);
}

qt_data_opts qt_batches_data_opts(const qt_config *cfg, const hf_config *h) {
    return (qt_data_opts){.train_path = cfg->data.train, .eval_path = cfg->data.eval[0] ? cfg->data.eval : NULL,
                          .model_dir = cfg->model.path[0] ? cfg->model.path : NULL,
                          .format = (qt_dfmt)cfg->data.format, .chat_template = (qt_chat_style)cfg->data.chat_template,
                          .seq_len = cfg->data.seq_len, .packing = cfg->data.packing, .eval_split = cfg->data.eval_split,
                          .shuffle_seed = (uint64_t)cfg->data.shuffle_seed, .cache_dir = cfg->data.cache_dir,
                          .tokens_eos_id = h->n_eos > 0 ? h->eos_token_ids[0] : -1};
}

int qt_batches_open(qt_batches *s, const qt_config *cfg, const llm_model *m, qt_err *e) {
    memset(s, 0, sizeof *s);
    int B = (int)cfg->train.micro_batch, T = (int)cfg->data.seq_len, V = m->cfg.vocab_size;
    s->B = B;
    s->T = T;
    if (T > m->cfg.max_position_embeddings)
        return qt_errf(e, "data.seq_len %d exceeds the model's max_position_embeddings %d", T,
                       m->cfg.max_position_embeddings);
    if (cfg->data.train[0]) {
        qt_data_opts o = qt_batches_data_opts(cfg, &m->cfg);
        if (qt_data_load(&s->data, &o, e) != 0) return -1;
        if (s->data.vocab_size > V) {
            qt_data_free(&s->data);
            return qt_errf(e, "the tokenizer has %d tokens but the model's vocabulary has %d: they do not belong "
                              "together (model.path)", s->data.vocab_size, V);
        }
        char d[512];
        qt_data_describe(&s->data, d, sizeof d);
        fprintf(stderr, "qtrain: data: %s\n", d);
    } else {
        qt_rng r;
        qt_rng_seed(&r, (uint64_t)cfg->data.shuffle_seed);
        synthetic_split(&s->data.train, 64 * (int64_t)B, T, V, &r);
        synthetic_split(&s->data.eval, 4 * (int64_t)B, T, V, &r);
        s->data.pad_id = 0;
    }
    if (s->data.train.n_rows < B) {
        qt_batches_close(s);
        return qt_errf(e, "data.train yields %lld rows of %d tokens, fewer than train.micro_batch = %d",
                       (long long)s->data.train.n_rows, T, B);
    }
    if (qt_loader_init(&s->loader, &s->data.train, B, true, (uint64_t)cfg->data.shuffle_seed, e) != 0) {
        qt_batches_close(s);
        return -1;
    }
    s->eval_ids = malloc(sizeof(int32_t) * (size_t)B * T);
    s->eval_labels = malloc(sizeof(int32_t) * (size_t)B * T);
    QT_CHECK(s->eval_ids && s->eval_labels, "out of host memory");
    return 0;
}

void qt_batches_close(qt_batches *s) {
    qt_loader_free(&s->loader);
    qt_data_free(&s->data);
    free(s->eval_ids);
    free(s->eval_labels);
    memset(s, 0, sizeof *s);
}

void qt_batches_next(qt_batches *s, qt_batch *b) {
    qt_loader_next(&s->loader);
    *b = (qt_batch){s->loader.ids, s->loader.labels, s->B, s->T};
}

int64_t qt_batches_per_epoch(const qt_batches *s) { return s->data.train.n_rows / s->B; }

int64_t qt_batches_eval_count(const qt_batches *s) { return (s->data.eval.n_rows + s->B - 1) / s->B; }

void qt_batches_eval(qt_batches *s, int64_t i, qt_batch *b) {
    qt_data_eval_batch(&s->data.eval, i, s->B, s->data.pad_id, s->eval_ids, s->eval_labels);
    *b = (qt_batch){s->eval_ids, s->eval_labels, s->B, s->T};
}
