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

typedef struct qt_train_opts {
    bool no_resume;     /* start over even when OUTPUT_DIR/checkpoints holds a checkpoint (it
                           and metrics.jsonl are moved aside, never deleted) */
    int64_t stop_after; /* tests: stop as SIGTERM would once this many steps are done (0 = off) */
} qt_train_opts;

typedef struct qt_train_result {
    int64_t steps;          /* loop steps done (the run's position, resumed ones included) */
    int64_t skipped_steps;  /* non-finite loss or gradients */
    int64_t resumed_from;   /* the checkpoint's step, or -1 when the run started fresh */
    double first_loss, last_loss;
    double first_eval, last_eval; /* NaN when no eval ran */
    double tokens_per_s;
    size_t peak_device_bytes;  /* the arenas' high-water marks */
    size_t dev_peak_bytes;     /* device memory in use (cudaMemGetInfo) after a step, max */
    int streamed_layers;       /* layers the memory plan streamed from host memory */
    bool interrupted;       /* SIGINT/SIGTERM or stop_after: stopped after a whole step, saved */
    char checkpoint[64];    /* the last checkpoint written or resumed from ("" if none) */
} qt_train_result;

/* Run the training described by cfg: load or build the model, resume from the newest intact
 * checkpoint in OUTPUT_DIR/checkpoints unless opts->no_resume (refusing when the base model,
 * tokenizer, LoRA shape or data differ), train LoRA, write metrics to
 * OUTPUT_DIR/metrics.jsonl, a checkpoint every output.checkpoint_every steps, at the end and
 * on SIGINT/SIGTERM, and the adapter to OUTPUT_DIR/adapter. opts may be NULL (resume, no
 * stop). Progress goes to stderr (a live line on a terminal, plain lines otherwise).
 * docs/checkpoints.md says what is saved and what is guaranteed. */
int qt_train(const qt_config *cfg, const qt_train_opts *opts, qt_train_result *res, qt_err *e);

/* `qtrain resume RUN_DIR`: the config stored in the newest intact checkpoint of
 * RUN_DIR/checkpoints, with the overrides applied and output.dir = RUN_DIR. */
int qt_config_from_run(qt_config *cfg, const char *run_dir, const char *const *overrides, int n_overrides,
                       qt_err *e);

/* ---- export (merge.c): `qtrain merge` and `qtrain export-adapter` */

typedef struct qt_merge_opts {
    const char *adapter_dir; /* PEFT folder: adapter_config.json + adapter_model.safetensors */
    const char *model_dir;   /* the Hugging Face base model it was trained on */
    const char *out;         /* .gguf path */
    kq_ftype ftype;          /* Q4_K_M, Q5_K_M, Q6_K, Q8_0, F16, BF16, F32 */
    bool nf4_base;           /* merge into dequant(nf4(W)) instead of W */
    bool double_quant;       /* NF4 with double quantization (the run's quant.double_quant) */
    qt_dtype model_dtype;    /* the run's model.dtype (an f16 run saw f16-rounded weights) */
    const char *tokenizer;   /* tokenizer.json; NULL = MODEL_DIR/tokenizer.json */
    bool no_vocab;           /* no tokenizer: write tokenizer.ggml.model "none" */
    const char *imatrix;     /* llama-imatrix file (GGUF or legacy .dat), or NULL */
    const char *name;        /* general.name */
} qt_merge_opts;

/* Stream base + adapter into a GGUF: one tensor in memory at a time, W' = W + s·B·A,
 * llama.cpp's Q/K row order, per-tensor types from kq_tensor_type, metadata and tokenizer.
 * Prints a one-line summary to stderr. */
int qt_merge_gguf(const qt_merge_opts *o, qt_err *e);
/* Rewrite the adapter as a PEFT folder in out_dir (F32, PEFT's layout) and, when
 * gguf_name is not NULL, also out_dir/<gguf_name>-LoRA.gguf in llama.cpp's LoRA adapter
 * format (needs model_dir for the architecture and head counts). */
int qt_export_adapter(const char *adapter_dir, const char *model_dir, const char *out_dir, const char *gguf_name,
                      qt_err *e);
/* The command lines (argv after the subcommand word); exit codes 0, 1 (error) or 2 (usage). */
int qt_cli_merge(int argc, char **argv);
int qt_cli_export_adapter(int argc, char **argv);

#ifdef __cplusplus
}
#endif
#endif
