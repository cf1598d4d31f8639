/* Internal to trainer/: where training and eval batches come from. Either the data
 * module's tokenized JSONL datasets (data.train), or, with no data.train (synthetic runs),
 * patterned token rows the project generates: arithmetic sequences t_j = (a + j*k) mod V
 * with a random start a and stride k per row, which a model can only predict by reading
 * its context. Both go through the data module's loader (shuffled epochs, exact resume). */
#ifndef QT_BATCHES_H
#define QT_BATCHES_H

#include "data/data.h"
#include "trainer.h"

typedef struct qt_batch {
    const int32_t *ids, *labels; /* [B*T], labels unshifted (HF convention), -100 = no loss */
    int B, T;
} qt_batch;

typedef struct qt_batches {
    qt_dataset data;   /* train and eval splits */
    qt_loader loader;  /* over data.train */
    int B, T;
    int32_t *eval_ids, *eval_labels;
} qt_batches;

int qt_batches_open(qt_batches *s, const qt_config *cfg, const llm_model *m, qt_err *e);
/* The data module's options for cfg's JSONL data (model h gives the EOS id of format tokens). */
qt_data_opts qt_batches_data_opts(const qt_config *cfg, const hf_config *h);
void qt_batches_close(qt_batches *s);
/* Next training micro-batch (valid until the next call). */
void qt_batches_next(qt_batches *s, qt_batch *b);
int64_t qt_batches_per_epoch(const qt_batches *s); /* micro-batches in one pass over train */
int64_t qt_batches_eval_count(const qt_batches *s);
void qt_batches_eval(qt_batches *s, int64_t i, qt_batch *b);

#endif
