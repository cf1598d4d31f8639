/* Internal to trainer/: the training loop's checkpoints — what makes a run the same run
 * (identity), and moving the loop's state to and from checkpoints/ (section 4). The format,
 * what is saved and the guarantees are in docs/checkpoints.md. */
#ifndef QT_RESUME_H
#define QT_RESUME_H

#include "batches.h"
#include "optim/optim.h"
#include "trainer.h"

/* The loop's own counters. With the LoRA weights, the AdamW moments and step, and the
 * loader position, this is everything the next step depends on: the LR comes from `step`,
 * the dropout masks from train.seed and `micro`, the batches from the loader position. */
typedef struct qt_loop {
    int64_t step;    /* loop steps done, skipped ones included (the LR-schedule position) */
    int64_t micro;   /* micro-batches served */
    int64_t tokens;  /* tokens trained on */
    int64_t skipped; /* non-finite steps skipped in all */
    int64_t bad_run; /* of which the last ones, in a row */
    double first_loss, first_eval, last_loss, last_eval; /* NaN until there is one */
} qt_loop;

/* OUTPUT_DIR/checkpoints into buf (>= QT_CFG_PATH_MAX + 16 bytes). */
void qt_ckpt_dir(const qt_config *cfg, char *buf, size_t n);

/* The identity of the run cfg describes (h: the model's config), before anything is built. */
int qt_run_identity(const qt_config *cfg, const hf_config *h, ck_identity *id, qt_err *e);

/* The newest intact checkpoint of OUTPUT_DIR/checkpoints, checked against this run: 1 with
 * its state in st (ck_train_state_free) and its path in path[n]; 0 when there is none; -1
 * when none is intact or it belongs to another run (e names what differs and how to go on).
 * Config changes since the checkpoint are listed on stderr as notes. */
int qt_resume_find(const qt_config *cfg, const ck_identity *id, ck_train_state *st, char *path, size_t n,
                   qt_err *e);
/* Put the checkpoint's weights, moments, AdamW step and loader position into the run, and
 * its counters into lp. */
int qt_resume_apply(const char *path, const ck_train_state *st, llm_model *m, qt_adamw *opt, qt_batches *data,
                    qt_loop *lp, qt_err *e);
/* Write a checkpoint of the current state; its file name goes to name (>= 32 bytes). */
int qt_checkpoint_save(const qt_config *cfg, const ck_identity *id, llm_model *m, qt_adamw *opt,
                       const qt_batches *data, const qt_loop *lp, char *name, qt_err *e);

/* Keep the metrics lines of steps <= step (a resumed run rewrites the ones after). */
int qt_metrics_rewind(const char *path, int64_t step, qt_err *e);
/* --no-resume: move OUTPUT_DIR/checkpoints and metrics.jsonl aside (name.replaced-TIME). */
int qt_run_set_aside(const qt_config *cfg, qt_err *e);

#endif
