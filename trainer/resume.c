/* Training checkpoints of the loop in train.c (see resume.h and docs/checkpoints.md): the
 * run's identity, saving and resuming its state, and keeping metrics.jsonl in step with
 * the checkpoint a run resumes from. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "resume.h"

void qt_ckpt_dir(const qt_config *cfg, char *buf, size_t n) { snprintf(buf, n, "%s/checkpoints", cfg->output.dir); }

/* The resolved config as text (qt_config_print). malloc'd. */
static char *config_text(const qt_config *cfg) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    QT_CHECK(f, "out of host memory");
    qt_config_print(cfg, f);
    fclose(f);
    QT_CHECK(buf, "out of host memory");
    return buf;
}

/* ---- identity */

static bool is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* LoRA: r, the targets, and every adapter tensor's name and shape as llm_add_lora makes them. */
static void lora_identity(const qt_config *cfg, const hf_config *h, char *out, size_t n) {
    int64_t H = h->hidden_size, I = h->intermediate_size, hd = h->head_dim, r = cfg->lora.r;
    int64_t qd = (int64_t)h->num_attention_heads * hd, kvd = (int64_t)h->num_key_value_heads * hd;
    const int64_t in[LIN_N] = {H, H, H, qd, H, H, I}, outd[LIN_N] = {qd, kvd, kvd, H, I, I, H};
    ck_hash s;
    ck_hash_init(&s);
    char name[160], targets[128] = "";
    int count = 0;
    for (int k = 0; k < LIN_N; k++)
        if (cfg->lora.targets & (1u << k))
            snprintf(targets + strlen(targets), sizeof targets - strlen(targets), "%s%s", count++ ? "," : "",
                     llm_lin_names[k]);
    int tensors = 0;
    for (int l = 0; l < h->num_hidden_layers; l++)
        for (int k = 0; k < LIN_N; k++) {
            if (!(cfg->lora.targets & (1u << k))) continue;
            int64_t shapes[2][2] = {{r, in[k]}, {outd[k], r}};
            for (int b = 0; b < 2; b++, tensors++) {
                llm_lora_name(name, sizeof name, l, (llm_lin_kind)k, b == 1);
                ck_hash_update(&s, name, strlen(name) + 1);
                ck_hash_update(&s, shapes[b], sizeof shapes[b]);
            }
        }
    snprintf(out, n, "r %lld, targets %s, %d tensors h64:%016llx", (long long)r, targets, tensors,
             (unsigned long long)ck_hash_final(&s));
}

int qt_run_identity(const qt_config *cfg, const hf_config *h, ck_identity *id, qt_err *e) {
    memset(id, 0, sizeof *id);
    const char *dir = cfg->model.path;
    /* synthetic weights are drawn from train.seed: another seed is another model */
    if (cfg->model.synthetic[0])
        snprintf(id->base_model, CK_ID_MAX, "synthetic:%s seed %lld", cfg->model.synthetic,
                 (long long)cfg->train.seed);
    else if (ck_model_identity(dir, id->base_model, CK_ID_MAX, e) != 0)
        return -1;
    snprintf(id->tokenizer, CK_ID_MAX, "none");
    if (!cfg->model.synthetic[0]) {
        char p[QT_CFG_PATH_MAX + 32];
        const char *files[2] = {"tokenizer.json", "tokenizer_config.json"};
        ck_hash s;
        ck_hash_init(&s);
        int found = 0;
        for (int i = 0; i < 2; i++) {
            snprintf(p, sizeof p, "%s/%s", dir, files[i]);
            if (!is_file(p)) continue;
            ck_hash_update(&s, files[i], strlen(files[i]) + 1);
            if (ck_hash_file(p, &s, NULL, e) != 0) return -1;
            found |= 1 << i;
        }
        if (found)
            snprintf(id->tokenizer, CK_ID_MAX, "%s h64:%016llx",
                     found == 3 ? "tokenizer.json + tokenizer_config.json" : files[found == 1 ? 0 : 1],
                     (unsigned long long)ck_hash_final(&s));
    }
    lora_identity(cfg, h, id->lora, CK_ID_MAX);
    if (!cfg->data.train[0]) { /* generated rows (batches.c): their count depends on micro_batch */
        snprintf(id->data, CK_ID_MAX, "generated rows: seed %lld, seq_len %lld, micro_batch %lld",
                 (long long)cfg->data.shuffle_seed, (long long)cfg->data.seq_len, (long long)cfg->train.micro_batch);
        return 0;
    }
    /* JSONL: the data module's cache key hashes the files, the tokenizer and every option that
     * changes the rows (as batches.c passes them). */
    qt_data_opts o = qt_batches_data_opts(cfg, h);
    char key[33];
    qt_err ke;
    if (qt_data_cache_key(&o, key, &ke) != 0) /* loading the data will say what is wrong */
        snprintf(id->data, CK_ID_MAX, "unhashed: %.400s", ke.msg);
    else
        snprintf(id->data, CK_ID_MAX, "jsonl rows, data key %s", key);
    return 0;
}

/* ---- config changes since the checkpoint, as notes */

/* "section.key" -> value lines of qt_config_print's output. */
static const char *config_value(const char *text, const char *key, size_t *len) {
    char section[64] = "";
    for (const char *p = text; *p;) {
        const char *eol = strchr(p, '\n');
        size_t n = eol ? (size_t)(eol - p) : strlen(p);
        if (n > 0 && p[0] != ' ' && p[0] != '#' && p[n - 1] == ':' && n < sizeof section) {
            memcpy(section, p, n - 1);
            section[n - 1] = 0;
        } else if (n > 2 && p[0] == ' ' && p[1] == ' ') {
            const char *k = p + 2, *colon = memchr(k, ':', n - 2);
            size_t sl = strlen(section), kl = colon ? (size_t)(colon - k) : 0;
            if (colon && !strncmp(key, section, sl) && key[sl] == '.' && strlen(key + sl + 1) == kl &&
                !strncmp(key + sl + 1, k, kl)) {
                const char *v = colon + 1 + (colon[1] == ' ');
                *len = (size_t)(p + n - v);
                return v;
            }
        }
        p += n + (eol != NULL);
    }
    return NULL;
}

static void note_config_changes(const char *saved, const char *now) {
    char section[64] = "", key[160];
    int shown = 0;
    for (const char *p = now; *p;) {
        const char *eol = strchr(p, '\n');
        size_t n = eol ? (size_t)(eol - p) : strlen(p);
        if (n > 0 && p[0] != ' ' && p[0] != '#' && p[n - 1] == ':' && n < sizeof section) {
            memcpy(section, p, n - 1);
            section[n - 1] = 0;
        } else if (n > 2 && p[0] == ' ' && p[1] == ' ' && memchr(p, ':', n)) {
            size_t kl = (size_t)((const char *)memchr(p, ':', n) - p - 2);
            snprintf(key, sizeof key, "%s.%.*s", section, (int)kl, p + 2);
            size_t la = 0, lb = 0;
            const char *a = config_value(saved, key, &la), *b = config_value(now, key, &lb);
            bool moved = !strcmp(key, "output.dir") || !strcmp(key, "data.cache_dir");
            if (b && !moved && (!a || la != lb || memcmp(a, b, la))) {
                if (!shown++) fprintf(stderr, "qtrain: note: the config changed since the checkpoint:\n");
                fprintf(stderr, "qtrain:   %s: %.*s -> %.*s\n", key, (int)la, a ? a : "", (int)lb, b);
            }
        }
        p += n + (eol != NULL);
    }
}

/* ---- resume */

int qt_resume_find(const qt_config *cfg, const ck_identity *id, ck_train_state *st, char *path, size_t n,
                   qt_err *e) {
    char dir[QT_CFG_PATH_MAX + 16];
    qt_ckpt_dir(cfg, dir, sizeof dir);
    qt_err fe;
    int found = ck_train_find(dir, path, n, &fe);
    if (found < 0)
        return qt_errf(e, "cannot resume: %s. Start over with --no-resume (the damaged checkpoints are moved "
                          "aside), or set a new output.dir", fe.msg);
    if (found == 0) return 0;
    if (ck_train_read_state(path, st, e) != 0) return -1;
    const char *was, *is, *what = ck_identity_mismatch(&st->id, id, &was, &is);
    if (what) {
        qt_errf(e, "cannot resume from %s: the %s differs (checkpoint: %s; this run: %s). To start over, run "
                   "with --no-resume (the old checkpoints are moved aside), or set a new output.dir",
                path, what, was, is);
        ck_train_state_free(st);
        return -1;
    }
    char *now = config_text(cfg);
    note_config_changes(st->config, now);
    free(now);
    return 1;
}

/* A moment buffer as a tensor header: device memory, or pinned host memory when paged. */
static qt_tensor moment(const qt_adamw *opt, float *data, const qt_tensor *p) {
    qt_device dev = opt->cfg.paged ? QT_CPU : opt->ctx->dev;
    return qt_tensor_over(data, QT_F32, dev, 1, &p->numel);
}

/* Host float32 copies of every LoRA tensor and its moments (one allocation). */
static ck_param *host_params(const llm_model *m, float **block) {
    int n = m->n_lora_params;
    size_t total = 0;
    for (int i = 0; i < n; i++) total += 3 * (size_t)m->lora_params[i]->numel;
    ck_param *p = calloc(n > 0 ? (size_t)n : 1, sizeof *p);
    *block = malloc((total ? total : 1) * sizeof(float));
    QT_CHECK(p && *block, "out of host memory for %zu checkpoint floats", total);
    float *f = *block;
    for (int i = 0; i < n; i++) {
        const qt_tensor *t = m->lora_params[i];
        QT_CHECK(t->ndim == 2, "LoRA tensor %s is not 2-D", t->name);
        p[i] = (ck_param){.name = t->name, .shape = {t->shape[0], t->shape[1]}};
        p[i].w = f, f += t->numel;
        p[i].m = f, f += t->numel;
        p[i].v = f, f += t->numel;
    }
    return p;
}

int qt_resume_apply(const char *path, const ck_train_state *st, llm_model *m, qt_adamw *opt, qt_batches *data,
                    qt_loop *lp, qt_err *e) {
    float *block;
    ck_param *p = host_params(m, &block);
    int rc = ck_train_read_params(path, p, m->n_lora_params, e);
    qt_loader_pos pos = {.seed = st->data.seed, .epoch = st->data.epoch, .index = st->data.index};
    if (rc == 0) rc = qt_loader_seek(&data->loader, pos, e);
    if (rc == 0) {
        QT_CHECK(opt->n == m->n_lora_params, "optimizer and model disagree");
        for (int i = 0; i < m->n_lora_params; i++) {
            qt_tensor *t = m->lora_params[i];
            qt_upload(t, p[i].w, QT_F32);
            qt_tensor mm = moment(opt, opt->m[i], t), vv = moment(opt, opt->v[i], t);
            qt_upload(&mm, p[i].m, QT_F32);
            qt_upload(&vv, p[i].v, QT_F32);
        }
        qt_ctx_sync(opt->ctx);
        opt->step = st->opt_step;
        *lp = (qt_loop){.step = st->step, .micro = st->micro_batches, .tokens = st->tokens,
                        .skipped = st->skipped_steps, .bad_run = st->nonfinite_run,
                        .first_loss = st->first_loss, .first_eval = st->first_eval,
                        .last_loss = st->last_loss, .last_eval = st->last_eval};
    }
    free(p);
    free(block);
    return rc;
}

int qt_checkpoint_save(const qt_config *cfg, const ck_identity *id, llm_model *m, qt_adamw *opt,
                       const qt_batches *data, const qt_loop *lp, char *name, qt_err *e) {
    qt_ctx_sync(opt->ctx); /* the paged optimizer's copies run on side streams */
    float *block;
    ck_param *p = host_params(m, &block);
    for (int i = 0; i < m->n_lora_params; i++) {
        qt_tensor *t = m->lora_params[i];
        qt_download(t, p[i].w, QT_F32);
        qt_tensor mm = moment(opt, opt->m[i], t), vv = moment(opt, opt->v[i], t);
        qt_download(&mm, p[i].m, QT_F32);
        qt_download(&vv, p[i].v, QT_F32);
    }
    ck_train_state st = {.step = lp->step, .opt_step = opt->step, .micro_batches = lp->micro, .tokens = lp->tokens,
                         .skipped_steps = lp->skipped, .nonfinite_run = lp->bad_run,
                         .first_loss = lp->first_loss, .first_eval = lp->first_eval,
                         .last_loss = lp->last_loss, .last_eval = lp->last_eval, .id = *id,
                         .data = {.epoch = data->loader.pos.epoch, .index = data->loader.pos.index,
                                  .seed = data->loader.pos.seed}};
    /* .data.blob: the loader keeps no state beyond its position today; a loader that does
     * (a streaming reader's file offsets, say) serializes it here. */
    st.config = config_text(cfg);
    char dir[QT_CFG_PATH_MAX + 16];
    qt_ckpt_dir(cfg, dir, sizeof dir);
    int rc = ck_train_save(dir, &st, p, m->n_lora_params, cfg->output.keep_checkpoints, name, e);
    free(st.config);
    free(p);
    free(block);
    return rc;
}

/* ---- run folder */

int qt_metrics_rewind(const char *path, int64_t step, qt_err *e) {
    FILE *f = fopen(path, "r");
    if (!f) return errno == ENOENT ? 0 : qt_errf(e, "cannot read %s: %s", path, strerror(errno));
    char *out = NULL, *line = NULL;
    size_t out_len = 0, cap = 0;
    FILE *o = open_memstream(&out, &out_len);
    QT_CHECK(o, "out of host memory");
    bool dropped = false;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        /* ours look like {"step": N, ...}\n; a line cut by a crash has no closing brace */
        long long s = -1;
        bool keep = n >= 2 && line[n - 1] == '\n' && line[n - 2] == '}' && sscanf(line, "{\"step\": %lld,", &s) == 1 &&
                    s <= step;
        if (keep) fwrite(line, 1, (size_t)n, o);
        else dropped = true;
    }
    free(line);
    fclose(f);
    fclose(o);
    int rc = 0;
    if (dropped) {
        ck_chunk c = {out, out_len};
        rc = ck_write_atomic(path, &c, 1, e);
    }
    free(out);
    return rc;
}

static int set_aside(const char *path, const char *stamp, qt_err *e) {
    struct stat st;
    if (lstat(path, &st) != 0) return 0;
    char to[QT_CFG_PATH_MAX + 96];
    for (int k = 0; k < 100; k++) {
        snprintf(to, sizeof to, k ? "%s.replaced-%s-%d" : "%s.replaced-%s", path, stamp, k);
        if (lstat(to, &st) != 0) break;
    }
    if (rename(path, to) != 0) return qt_errf(e, "cannot move %s aside to %s: %s", path, to, strerror(errno));
    fprintf(stderr, "qtrain: --no-resume: moved %s to %s\n", path, to);
    return 0;
}

int qt_run_set_aside(const qt_config *cfg, qt_err *e) {
    char stamp[32], path[QT_CFG_PATH_MAX + 32];
    time_t t = time(NULL);
    struct tm tm;
    strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", localtime_r(&t, &tm));
    qt_ckpt_dir(cfg, path, sizeof path);
    if (set_aside(path, stamp, e) != 0) return -1;
    snprintf(path, sizeof path, "%s/metrics.jsonl", cfg->output.dir);
    return set_aside(path, stamp, e);
}

/* ---- qtrain resume RUN_DIR */

int qt_config_from_run(qt_config *cfg, const char *run_dir, const char *const *overrides, int n_overrides,
                       qt_err *e) {
    char dir[QT_CFG_PATH_MAX + 16], path[QT_CFG_PATH_MAX + 64];
    if (strlen(run_dir) >= QT_CFG_PATH_MAX) return qt_errf(e, "run folder path too long: %s", run_dir);
    snprintf(dir, sizeof dir, "%s/checkpoints", run_dir);
    qt_err fe;
    int found = ck_train_find(dir, path, sizeof path, &fe);
    if (found < 0) return qt_errf(e, "cannot resume %s: %s", run_dir, fe.msg);
    if (found == 0)
        return qt_errf(e, "%s holds no checkpoint (looked in %s); start the run with: qtrain CONFIG.yaml", run_dir,
                       dir);
    ck_train_state st;
    if (ck_train_read_state(path, &st, e) != 0) return -1;
    char where[QT_CFG_PATH_MAX + 96];
    snprintf(where, sizeof where, "%s:/config", path);
    int rc = qt_config_load_string(cfg, st.config, strlen(st.config), where, overrides, n_overrides, e);
    ck_train_state_free(&st);
    if (rc != 0) return -1;
    /* The run folder may have moved since: it is where the user says it is now. */
    char old_cache[QT_CFG_PATH_MAX + 16];
    snprintf(old_cache, sizeof old_cache, "%s/cache", cfg->output.dir);
    bool default_cache = !strcmp(cfg->data.cache_dir, old_cache);
    snprintf(cfg->output.dir, sizeof cfg->output.dir, "%s", run_dir);
    if (default_cache) snprintf(cfg->data.cache_dir, sizeof cfg->data.cache_dir, "%s/cache", run_dir);
    return qt_config_validate(cfg, e);
}
