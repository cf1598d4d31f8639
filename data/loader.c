/* The micro-batch loader: rows of a split in a fresh permutation every epoch, in batches
 * that are always full (a batch crossing the end of an epoch continues into the next
 * epoch's permutation). Its whole state is (seed, epoch, index), so a checkpoint that saves
 * qt_loader_pos resumes with exactly the batches that would have come next. */
#include <stdlib.h>
#include <string.h>

#include "data_internal.h"

/* Epoch e's permutation depends on (seed, e) only: splitmix-style mixing of the pair. */
static uint64_t epoch_seed(uint64_t seed, int64_t epoch) {
    uint64_t z = seed + 0x9e3779b97f4a7c15ull * (uint64_t)(epoch + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void make_perm(qt_loader *l) {
    int64_t n = l->split->n_rows;
    if (l->shuffle) qd_permutation(l->perm, n, epoch_seed(l->pos.seed, l->pos.epoch));
    else
        for (int64_t i = 0; i < n; i++) l->perm[i] = i;
    l->perm_epoch = l->pos.epoch;
}

int qt_loader_init(qt_loader *l, const qt_data_split *s, int64_t batch, bool shuffle, uint64_t seed, qt_err *e) {
    memset(l, 0, sizeof *l);
    if (s->n_rows < 1) return qt_errf(e, "data: the split has no rows to load");
    if (batch < 1) return qt_errf(e, "data: micro_batch %lld must be >= 1", (long long)batch);
    l->split = s;
    l->batch = batch;
    l->shuffle = shuffle;
    l->pos.seed = seed;
    l->perm = qd_xrealloc(NULL, (size_t)s->n_rows * sizeof *l->perm);
    size_t cells = (size_t)(batch * s->seq_len);
    l->ids = qd_xrealloc(NULL, cells * sizeof *l->ids);
    l->labels = qd_xrealloc(NULL, cells * sizeof *l->labels);
    make_perm(l);
    return 0;
}

void qt_loader_free(qt_loader *l) {
    free(l->perm);
    free(l->ids);
    free(l->labels);
    memset(l, 0, sizeof *l);
}

int64_t qt_loader_next(qt_loader *l) {
    const qt_data_split *s = l->split;
    int64_t T = s->seq_len, loss = 0;
    for (int64_t b = 0; b < l->batch; b++) {
        if (l->pos.index == s->n_rows) {
            l->pos.epoch++;
            l->pos.index = 0;
        }
        if (l->perm_epoch != l->pos.epoch) make_perm(l);
        int64_t row = l->perm[l->pos.index++];
        memcpy(l->ids + b * T, s->ids + row * T, (size_t)T * sizeof *l->ids);
        qt_data_labels(s, row, 1, l->labels + b * T);
        for (int64_t t = 1; t < T; t++) loss += l->labels[b * T + t] != QT_IGNORE_INDEX;
    }
    return loss;
}

int qt_loader_seek(qt_loader *l, qt_loader_pos pos, qt_err *e) {
    if (pos.epoch < 0 || pos.index < 0 || pos.index > l->split->n_rows)
        return qt_errf(e, "data: loader position (epoch %lld, row %lld) does not fit a split of %lld rows: "
                          "the checkpoint was made with other data",
                       (long long)pos.epoch, (long long)pos.index, (long long)l->split->n_rows);
    l->pos = pos;
    make_perm(l);
    return 0;
}

double qt_loader_epoch(const qt_loader *l) {
    return (double)l->pos.epoch + (double)l->pos.index / (double)l->split->n_rows;
}

int64_t qt_data_eval_batch(const qt_data_split *s, int64_t i, int64_t batch, int32_t pad_id, int32_t *ids,
                           int32_t *labels) {
    int64_t T = s->seq_len, first = i * batch;
    int64_t real = first >= s->n_rows ? 0 : s->n_rows - first < batch ? s->n_rows - first : batch;
    if (real > 0) {
        memcpy(ids, s->ids + first * T, (size_t)(real * T) * sizeof *ids);
        qt_data_labels(s, first, real, labels);
    }
    for (int64_t k = real * T; k < batch * T; k++) {
        ids[k] = pad_id;
        labels[k] = QT_IGNORE_INDEX;
    }
    return real;
}
