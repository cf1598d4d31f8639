/* Internal to trainer/: where training and eval batches come from. Either the data
 * module's tokenized datasets, or, with no data.train (synthetic runs), patterned token
 * rows the project generates: arithmetic sequences t_j = (a + j*k) mod V with a random
 * start a and stride k per row, which a model can only predict by reading its context. */
#ifndef QT_BATCHES_H
#define QT_BATCHES_H

#include "trainer.h"

typedef struct qt_batch {
    const int32_t *ids, *labels; /* [B*T], labels unshifted (HF convention), -100 = no loss */
    int B, T;
} qt_batch;

typedef struct qt_batches qt_batches;

int qt_batches_open(const qt_config *cfg, const llm_model *m, qt_batches **train, qt_batches **eval, qt_err *e);
int64_t qt_batches_count(const qt_batches *s);
void qt_batches_get(qt_batches *s, int64_t i, qt_batch *b);
void qt_batches_free(qt_batches *s);

#endif
