/* The training loop behind `qtrain CONFIG.yaml`: set up the context and model, train the
 * LoRA adapters with AdamW over micro-batches and gradient accumulation, report progress
 * and metrics, and write the adapter. Data comes from a batch source (batches.c). */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "batches.h"
#include "plan.h"
#include "resume.h"
#include "optim/optim.h"

static volatile sig_atomic_t g_stop;
/* First SIGINT/SIGTERM: finish the step, save a checkpoint, exit 0. A second one quits at
 * once (safe: checkpoints are published atomically, the previous one stays intact). */
static void on_signal(int sig) {
    if (g_stop) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    g_stop = sig;
    static const char msg[] = "\nqtrain: stopping after this step to save a checkpoint (signal again to quit now)\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- progress */

typedef struct progress {
    bool tty;
    FILE *metrics;
    double t0;
    int64_t start, total; /* the step this session started at (resumed runs), the last one */
    double step_s;    /* wall time of the last optimizer step (eval not included) */
    size_t dev_peak;  /* device memory in use (cudaMemGetInfo), max over the steps so far */
    double up_bytes, up_ms; /* layer streaming: uploaded in the last step, and the copies' device time */
} progress;

static void fmt_eta(double s, char *buf, size_t n) {
    if (!isfinite(s) || s < 0) s = 0;
    int64_t t = (int64_t)(s + 0.5);
    snprintf(buf, n, "%lld:%02lld:%02lld", (long long)(t / 3600), (long long)(t / 60 % 60), (long long)(t % 60));
}

static void report(progress *p, int64_t step, double loss, double lr, double gnorm, double tok_s,
                   int64_t tokens, const qt_ctx *c, double eval_loss, bool log_line) {
    double el = now_s() - p->t0;
    double eta = step > p->start ? el / (double)(step - p->start) * (double)(p->total - step) : 0;
    char eta_s[32], mem[48] = "";
    fmt_eta(eta, eta_s, sizeof eta_s);
    double gib = (double)(c->data[QT_PERSIST].peak + c->data[QT_STEP].peak + c->work.peak) / 1073741824.0;
    if (c->dev == QT_CUDA) snprintf(mem, sizeof mem, " | GPU %.2f GiB", gib);
    char ev[48] = "";
    if (!isnan(eval_loss)) snprintf(ev, sizeof ev, " | eval %.4f", eval_loss);
    if (p->tty) {
        fprintf(stderr, "\r\033[Kstep %lld/%lld | loss %.4f | lr %.2e | %.0f tok/s | ETA %s%s%s", (long long)step,
                (long long)p->total, loss, lr, tok_s, eta_s, mem, ev);
        if (log_line || step == p->total) fputc('\n', stderr);
    } else if (log_line || step == p->total) {
        fprintf(stderr, "step %lld/%lld loss %.4f lr %.3e grad_norm %.3f tok/s %.0f eta %s%s%s\n", (long long)step,
                (long long)p->total, loss, lr, gnorm, tok_s, eta_s, mem, ev);
    }
    if (p->metrics) {
        fprintf(p->metrics,
                "{\"step\": %lld, \"loss\": %.17g, \"lr\": %.6e, \"grad_norm\": %.6f, \"tokens\": %lld, "
                "\"tok_per_s\": %.1f, \"elapsed_s\": %.3f, \"step_s\": %.4f, \"peak_bytes\": %zu, "
                "\"dev_used_bytes\": %zu",
                (long long)step, loss, lr, gnorm, (long long)tokens, tok_s, el, p->step_s,
                c->data[QT_PERSIST].peak + c->data[QT_STEP].peak + c->work.peak, p->dev_peak);
        if (p->up_bytes > 0)
            fprintf(p->metrics, ", \"upload_bytes\": %.0f, \"upload_ms\": %.3f", p->up_bytes, p->up_ms);
        if (!isnan(eval_loss)) fprintf(p->metrics, ", \"eval_loss\": %.17g", eval_loss);
        fprintf(p->metrics, "}\n");
        fflush(p->metrics);
    }
}

/* ---- steps */

/* Loss of one micro-batch; backward when train is set (scaled for accumulation). */
static double micro_step(qt_ctx *c, llm_model *m, const qt_batch *b, bool train, double scale) {
    qt_ctx_step_reset(c);
    c->grad_enabled = train;
    m->training = train;
    int64_t n[1] = {(int64_t)b->B * b->T};
    qt_tensor *ids = qt_empty(c, QT_STEP, QT_I32, 1, n);
    qt_upload(ids, b->ids, QT_I32);
    qt_profile_mark(c, "upload", QT_PROF_OTHER);
    qt_tensor *loss = llm_loss(c, m, ids, b->labels, b->B, b->T);
    if (train) qt_backward(c, scale == 1.0 ? loss : qt_scale(c, loss, scale), NULL);
    float lv;
    qt_download(loss, &lv, QT_F32);
    c->grad_enabled = true;
    return lv;
}

/* Mean loss over the eval split (each batch's mean, averaged; the padded tail batch has
 * -100 labels on its padding rows, so they do not count). */
static double eval_loss(qt_ctx *c, llm_model *m, qt_batches *src) {
    int64_t n = qt_batches_eval_count(src);
    if (n == 0) return NAN;
    double sum = 0;
    qt_batch b;
    for (int64_t i = 0; i < n; i++) {
        qt_batches_eval(src, i, &b);
        sum += micro_step(c, m, &b, false, 1.0);
    }
    return sum / (double)n;
}

static int save_adapter(const qt_config *cfg, llm_model *m, qt_ctx *c, qt_err *e) {
    const char *targets[LIN_N];
    int nt = 0;
    for (int k = 0; k < LIN_N; k++)
        if (m->lora.targets & (1u << k)) targets[nt++] = llm_lin_names[k];
    peft_adapter_info info = {.r = m->lora.r, .alpha = m->lora.alpha, .dropout = m->lora.dropout,
                              .rslora = m->lora.rslora, .targets = targets, .n_targets = nt,
                              .base_model = cfg->model.path[0] ? cfg->model.path : NULL};
    st_wtensor *t = calloc((size_t)m->n_lora_params, sizeof *t);
    float **host = calloc((size_t)m->n_lora_params, sizeof *host);
    QT_CHECK(t && host, "out of host memory");
    for (int i = 0; i < m->n_lora_params; i++) {
        qt_tensor *p = m->lora_params[i];
        host[i] = malloc(qt_nbytes(p));
        QT_CHECK(host[i], "out of host memory");
        qt_download(p, host[i], QT_F32);
        t[i] = (st_wtensor){.name = p->name, .dtype = ST_F32, .ndim = 2, .shape = {p->shape[0], p->shape[1]},
                            .data = host[i]};
    }
    char dir[QT_CFG_PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%s/adapter", cfg->output.dir);
    int rc = peft_save(dir, &info, t, m->n_lora_params, e);
    for (int i = 0; i < m->n_lora_params; i++) free(host[i]);
    free(host);
    free(t);
    (void)c;
    return rc;
}

int qt_train(const qt_config *cfg, const qt_train_opts *opts, qt_train_result *res, qt_err *e) {
    static const qt_train_opts defaults = {0};
    if (!opts) opts = &defaults;
    memset(res, 0, sizeof *res);
    res->first_eval = res->last_eval = NAN;
    res->resumed_from = -1;
    llm_load_opts lo = {.dtype = cfg->model.dtype, .nf4 = cfg->quant.type == QT_QUANT_NF4,
                        .double_quant = cfg->quant.double_quant};
    hf_config h;
    if (cfg->model.synthetic[0] ? qt_synthetic_config(cfg->model.synthetic, &h, e)
                                : hf_config_load(&h, cfg->model.path, e))
        return -1;
    /* Resume or not is settled before anything big is built: a refusal comes at once. */
    ck_identity id;
    ck_train_state ck = {0};
    char ck_path[QT_CFG_PATH_MAX + 96] = "";
    int found = 0;
    if (qt_run_identity(cfg, &h, &id, e) != 0) return -1;
    if (opts->no_resume ? qt_run_set_aside(cfg, e) != 0
                        : (found = qt_resume_find(cfg, &id, &ck, ck_path, sizeof ck_path, e)) < 0)
        return -1;
    qt_ctx_opts co = {.dev = cfg->train.device};
    qt_ctx c;
    qt_mem_plan plan;
    int rc = qt_plan_memory(cfg, &h, &lo, &co, &plan, e);
    if (rc == 0) qt_plan_print(&plan, stderr);
    if (rc == 0 && qt_ctx_init(&c, &co) != 0)
        rc = qt_errf(e, "cannot set up the %s context (see above)", qt_device_name(co.dev));
    if (rc != 0) {
        ck_train_state_free(&ck);
        return -1;
    }
    llm_model m;
    char cache_dir[QT_CFG_PATH_MAX + 16];
    lo.nf4_cache_dir = qt_nf4_cache_dir(cfg, cache_dir, sizeof cache_dir);
    rc = cfg->model.synthetic[0] ? qt_synthetic_model(&m, &c, cfg->model.synthetic, &lo, (uint64_t)cfg->train.seed, e)
                                 : llm_load(&m, &c, cfg->model.path, &lo, e);
    if (rc != 0) {
        ck_train_state_free(&ck);
        qt_ctx_free(&c);
        return -1;
    }
    m.grad_checkpointing = cfg->train.grad_checkpointing;
    qt_keep_ctl keep = {.enabled = cfg->memory.keep_activations && c.dev == QT_CUDA,
                        .layer_est = qt_plan_layer_bytes(&h, cfg->train.micro_batch, cfg->data.seq_len, lo.dtype)};
    if (llm_stream_init(&m, &c, e) != 0) {
        ck_train_state_free(&ck);
        llm_free(&m);
        qt_ctx_free(&c);
        return -1;
    }
    llm_lora_cfg lc = {.r = (int)cfg->lora.r, .alpha = cfg->lora.alpha, .dropout = cfg->lora.dropout,
                       .rslora = cfg->lora.rslora, .targets = cfg->lora.targets,
                       .seed = (uint64_t)cfg->lora.init_seed};
    qt_batches data = {0};
    qt_adamw opt = {0};
    progress pr = {.tty = isatty(2) != 0, .t0 = now_s()};
    qt_loop lp = {.first_loss = NAN, .first_eval = NAN, .last_loss = NAN, .last_eval = NAN};
    rc = llm_add_lora(&m, &c, &lc, e);
    if (rc == 0) rc = qt_batches_open(&data, cfg, &m, e);
    qt_adamw_cfg oc = {.beta1 = cfg->train.adam_beta1, .beta2 = cfg->train.adam_beta2, .eps = cfg->train.adam_eps,
                       .weight_decay = cfg->train.weight_decay, .max_grad_norm = cfg->train.max_grad_norm,
                       .paged = cfg->memory.paged_optimizer, .gpu_bytes = cfg->memory.optimizer_gpu_bytes};
    if (rc == 0) rc = qt_adamw_init(&opt, &c, m.lora_params, m.n_lora_params, &oc, e);
    if (rc == 0) rc = ck_mkdirs(cfg->output.dir, e);
    if (rc == 0 && found) rc = qt_resume_apply(ck_path, &ck, &m, &opt, &data, &lp, e);
    ck_train_state_free(&ck);
    if (rc == 0) {
        char path[QT_CFG_PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/metrics.jsonl", cfg->output.dir);
        rc = qt_metrics_rewind(path, lp.step, e); /* steps after the checkpoint are done again */
        pr.metrics = rc == 0 ? fopen(path, "a") : NULL;
        if (rc == 0 && !pr.metrics) rc = qt_errf(e, "cannot open %s for appending", path);
    }
    if (rc != 0) goto done;

    int64_t ga = cfg->train.grad_accum, per_epoch = qt_batches_per_epoch(&data) / ga;
    int64_t total = cfg->train.steps > 0 ? cfg->train.steps : (int64_t)ceil(cfg->train.epochs * (double)per_epoch);
    if (total < 1) total = 1;
    pr.total = total;
    pr.start = lp.step;
    qt_lr_sched sch = {.kind = (qt_lr_kind)cfg->train.lr_schedule, .lr = cfg->train.lr,
                       .warmup_steps = cfg->train.warmup_steps, .total_steps = total,
                       .min_ratio = cfg->train.min_lr_ratio};
    char desc[256];
    hf_config_describe(&m.cfg, desc, sizeof desc);
    fprintf(stderr, "qtrain: %s on %s, %s weights %.1f MiB, LoRA r=%d (%d tensors), %lld steps x %lld x %d x %d tokens\n",
            desc, qt_device_name(c.dev), lo.nf4 ? "nf4" : qt_dtype_name(lo.dtype),
            (double)llm_weight_bytes(&m) / 1048576.0, lc.r, m.n_lora_params, (long long)total, (long long)ga,
            (int)cfg->train.micro_batch, (int)cfg->data.seq_len);
    if (found) {
        const char *base = strrchr(ck_path, '/');
        snprintf(res->checkpoint, sizeof res->checkpoint, "%s", base ? base + 1 : ck_path);
        res->resumed_from = lp.step;
        if (lp.step >= total)
            fprintf(stderr, "qtrain: %s is at step %lld of %lld: the run is complete; writing the adapter again\n",
                    ck_path, (long long)lp.step, (long long)total);
        else
            fprintf(stderr, "qtrain: resuming from %s (step %lld of %lld)\n", ck_path, (long long)lp.step,
                    (long long)total);
    }
    void (*old_int)(int) = signal(SIGINT, on_signal), (*old_term)(int) = signal(SIGTERM, on_signal);
    g_stop = 0;
    int64_t tokens = 0, saved_at = lp.step; /* tokens of this session (for tok/s) */
    int64_t end = opts->stop_after > 0 && opts->stop_after < total ? opts->stop_after : total;
    double t_train = 0;
    qt_batch b;
    /* Tests of the non-finite path: QTRAIN_TEST_NONFINITE=A-B makes the loss of steps A..B NaN. */
    long long nan_from = 0, nan_to = -1;
    const char *nf = getenv("QTRAIN_TEST_NONFINITE");
    if (nf && sscanf(nf, "%lld-%lld", &nan_from, &nan_to) != 2) nan_from = 0, nan_to = -1;
    qt_profile_step(&c, false); /* the set-up (model build) is not a step */
    for (int64_t step = lp.step; step < end && !g_stop; step++) {
        double t0 = now_s(), loss = 0;
        lp.step = step + 1;
        qt_zero_grads(&c, m.lora_params, m.n_lora_params);
        qt_profile_mark(&c, "zero_grads", QT_PROF_OTHER);
        for (int64_t k = 0; k < ga; k++) {
            /* the dropout masks of micro-batch lp.micro depend only on the seed and that count */
            m.dropout_seed = (uint64_t)cfg->train.seed * 0x9e3779b97f4a7c15ull + (uint64_t)lp.micro;
            lp.micro++;
            qt_batches_next(&data, &b);
            loss += micro_step(&c, &m, &b, true, 1.0 / (double)ga) / (double)ga;
            tokens += (int64_t)b.B * b.T;
            lp.tokens += (int64_t)b.B * b.T;
        }
        double gn = qt_adamw_grad_norm(&opt), lr = qt_lr_at(&sch, step);
        qt_profile_mark(&c, "grad_norm", QT_PROF_OTHER);
        if (step + 1 >= nan_from && step + 1 <= nan_to) loss = NAN; /* fault test: a poisoned batch */
        if (!isfinite(loss) || !isfinite(gn)) {
            lp.skipped++;
            fprintf(stderr, "\nqtrain: step %lld: non-finite %s; step skipped (%lld in a row)\n", (long long)step + 1,
                    isfinite(loss) ? "gradients" : "loss", (long long)lp.bad_run + 1);
            if (++lp.bad_run > cfg->train.max_nonfinite_steps) {
                rc = qt_errf(e, "%lld non-finite steps in a row (train.max_nonfinite_steps = %lld): stopping; the "
                                "last checkpoint (%s) is intact; lower train.lr or check the data",
                             (long long)lp.bad_run, (long long)cfg->train.max_nonfinite_steps,
                             res->checkpoint[0] ? res->checkpoint : "none written yet");
                break;
            }
            continue;
        }
        lp.bad_run = 0;
        qt_adamw_step(&opt, lr, gn);
        qt_profile_mark(&c, "adamw", QT_PROF_OTHER);
        qt_ctx_sync(&c);
        pr.step_s = now_s() - t0;
        llm_stream_stats(&m, &pr.up_bytes, &pr.up_ms);
        qt_keep_ctl_step(&keep, &m, &c);
        t_train += pr.step_s;
        qt_profile_step(&c, true);
        if (c.dev == QT_CUDA && qt_cuda_mem_used() > pr.dev_peak) pr.dev_peak = qt_cuda_mem_used();
        if (isnan(lp.first_loss)) lp.first_loss = loss;
        lp.last_loss = loss;
        double ev = NAN;
        bool do_eval = qt_batches_eval_count(&data) > 0 && ((cfg->train.eval_every > 0 && (step + 1) % cfg->train.eval_every == 0) ||
                                 step + 1 == total || step == 0);
        if (do_eval) {
            ev = eval_loss(&c, &m, &data);
            if (isnan(lp.first_eval)) lp.first_eval = ev;
            lp.last_eval = ev;
            qt_profile_step(&c, false); /* eval is not part of the step's profile */
        }
        bool line = cfg->train.log_every > 0 && ((step + 1) % cfg->train.log_every == 0 || step == 0);
        report(&pr, step + 1, loss, lr, gn, (double)tokens / t_train, lp.tokens, &c, ev, line || do_eval);
        if (!g_stop && lp.step < end && cfg->output.checkpoint_every > 0 &&
            lp.step % cfg->output.checkpoint_every == 0) {
            if ((rc = qt_checkpoint_save(cfg, &id, &m, &opt, &data, &lp, res->checkpoint, e)) != 0) break;
            saved_at = lp.step;
        }
    }
    /* the end, a signal or --stop-after: one more checkpoint (not after an error: the last
     * one written stays the one to resume from) */
    if (rc == 0 && lp.step > saved_at) rc = qt_checkpoint_save(cfg, &id, &m, &opt, &data, &lp, res->checkpoint, e);
    res->steps = lp.step;
    res->skipped_steps = lp.skipped;
    res->first_loss = lp.first_loss;
    res->first_eval = lp.first_eval;
    res->last_loss = lp.last_loss;
    res->last_eval = lp.last_eval;
    signal(SIGINT, old_int);
    signal(SIGTERM, old_term);
    res->interrupted = rc == 0 && lp.step < total; /* a signal or --stop-after */
    res->tokens_per_s = t_train > 0 ? (double)tokens / t_train : 0;
    res->peak_device_bytes = c.data[QT_PERSIST].peak + c.data[QT_STEP].peak + c.work.peak;
    if (c.dev == QT_CUDA && res->steps > 0)
        fprintf(stderr, "qtrain: peak GPU memory: arenas %.2f GiB (persist %.2f + step %.2f + work %.2f); device in use "
                        "%.2f GiB (cudaMemGetInfo after each step: the reserved budgets + CUDA context)\n",
                (double)res->peak_device_bytes / 1073741824.0, (double)c.data[QT_PERSIST].peak / 1073741824.0,
                (double)c.data[QT_STEP].peak / 1073741824.0, (double)c.work.peak / 1073741824.0,
                (double)pr.dev_peak / 1073741824.0);
    if (c.dev == QT_CUDA && res->steps > 0 && plan.budget)
        fprintf(stderr, "qtrain: device memory in use peaked at %.2f GiB of the %.2f GiB budget%s\n",
                (double)pr.dev_peak / 1073741824.0, (double)plan.budget / 1073741824.0,
                pr.dev_peak > plan.budget ? ": OVER (the context estimate in trainer/plan.c is too low)" : "");
    res->dev_peak_bytes = pr.dev_peak;
    res->streamed_layers = plan.streamed;
    qt_profile_print(&c, stderr);
    if (rc == 0 && res->steps > 0) {
        rc = save_adapter(cfg, &m, &c, e);
        if (rc == 0) fprintf(stderr, "qtrain: adapter written to %s/adapter (PEFT format)\n", cfg->output.dir);
    }
    if (res->interrupted) {
        char why[32] = "(--stop-after)";
        if (g_stop) snprintf(why, sizeof why, "by signal %d", (int)g_stop);
        fprintf(stderr, "qtrain: stopped %s after step %lld of %lld; checkpoint %s written\n", why,
                (long long)res->steps, (long long)total, res->checkpoint);
    }
done:
    if (pr.metrics) fclose(pr.metrics);
    qt_adamw_free(&opt);
    qt_batches_close(&data);
    llm_free(&m);
    qt_ctx_free(&c);
    return rc;
}
