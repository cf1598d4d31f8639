/* trainer — the module's public API: the model (model.h), the run config (config.h),
 * synthetic models, and the training loop behind `qtrain CONFIG.yaml`. */
#ifndef QT_TRAINER_H
#define QT_TRAINER_H

#include "config.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- synthetic models (model.synthetic): random weights of a known shape */
int qt_synthetic_config(const char *name, hf_config *h, qt_err *e);
int qt_synthetic_model(llm_model *m, qt_ctx *c, const char *name, const llm_load_opts *o, uint64_t seed,
                       qt_err *e);

/* ---- training */

typedef struct qt_train_result {
    int64_t steps;          /* optimizer steps taken */
    int64_t skipped_steps;  /* non-finite loss or gradients */
    double first_loss, last_loss;
    double first_eval, last_eval; /* NaN when no eval ran */
    double tokens_per_s;
    size_t peak_device_bytes;
    bool interrupted;       /* SIGINT/SIGTERM: stopped after a whole step */
} qt_train_result;

/* Run the training described by cfg: load or build the model, train LoRA, write
 * metrics to OUTPUT_DIR/metrics.jsonl and the adapter to OUTPUT_DIR/adapter.
 * Progress goes to stderr (a live line on a terminal, plain lines otherwise). */
int qt_train(const qt_config *cfg, qt_train_result *res, qt_err *e);

#ifdef __cplusplus
}
#endif
#endif
