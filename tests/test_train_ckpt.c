/* HDF5 training checkpoints (checkpoints.h section 4): the streaming hash, a save/load round
 * trip with awkward shapes (and tensors larger than the verifier's read chunk), corruption
 * and truncation caught by the checksum with a fallback to the previous file, a hostile
 * `latest`, shapes checked before reading, a dataset whose declared size is not in the file,
 * and pruning. The end-to-end fault tests (kill -9, full disk, SIGTERM) drive qtrain itself:
 * tests/checkpoint_faults.py. */
#define _GNU_SOURCE /* memmem */
#include <hdf5.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoints/checkpoints.h"
#include "testutil.h"

static char g_dir[256];

static void fill(float *p, int64_t n) {
    for (int64_t i = 0; i < n; i++) p[i] = (float)(qt_rng_uniform(tu_rng()) * 2 - 1);
}

typedef struct fixture {
    int n;
    ck_param p[6];
    char names[6][96];
    ck_train_state st;
    char config[300];
    uint8_t blob[777];
} fixture;

/* Shapes: tiny, 1x1, odd, a row longer than the 1 MiB read chunk, many rows in blocks. */
static void make_fixture(fixture *f, int64_t step) {
    static const int64_t shapes[6][2] = {{3, 17}, {1, 1}, {7, 129}, {2, 300001}, {700, 1001}, {13, 5}};
    memset(f, 0, sizeof *f);
    f->n = 6;
    for (int i = 0; i < f->n; i++) {
        snprintf(f->names[i], sizeof f->names[i], "base_model.model.model.layers.%d.mlp.up_proj.lora_%c.weight", i / 2,
                 i % 2 ? 'B' : 'A');
        int64_t numel = shapes[i][0] * shapes[i][1];
        f->p[i] = (ck_param){.name = f->names[i], .shape = {shapes[i][0], shapes[i][1]}};
        f->p[i].w = malloc(sizeof(float) * (size_t)numel);
        f->p[i].m = malloc(sizeof(float) * (size_t)numel);
        f->p[i].v = malloc(sizeof(float) * (size_t)numel);
        fill(f->p[i].w, numel);
        fill(f->p[i].m, numel);
        fill(f->p[i].v, numel);
    }
    qt_rng *r = tu_rng();
    snprintf(f->config, sizeof f->config, "model:\n  synthetic: \"tiny\"\ntrain:\n  seed: %llu\n",
             (unsigned long long)(qt_rng_next(r) % 1000));
    for (size_t i = 0; i < sizeof f->blob; i++) f->blob[i] = (uint8_t)qt_rng_next(r);
    ck_train_state *s = &f->st;
    *s = (ck_train_state){.step = step, .opt_step = step - 1, .micro_batches = 3 * step, .tokens = 4096 * step,
                          .skipped_steps = 1, .nonfinite_run = 0, .first_loss = 6.25 + qt_rng_uniform(r),
                          .first_eval = NAN, .last_loss = 3.5 + qt_rng_uniform(r), .last_eval = -0.0,
                          .n_rng = 2, .config = f->config,
                          .data = {.epoch = 2, .index = 17, .seed = qt_rng_next(r), .blob = f->blob,
                                   .blob_len = sizeof f->blob}};
    for (int k = 0; k < 2; k++) {
        snprintf(s->rng[k].name, CK_RNG_NAME, k ? "dropout" : "train");
        for (int j = 0; j < 4; j++) s->rng[k].s[j] = qt_rng_next(r);
    }
    snprintf(s->id.base_model, CK_ID_MAX, "synthetic:tiny seed 42");
    snprintf(s->id.tokenizer, CK_ID_MAX, "none");
    snprintf(s->id.lora, CK_ID_MAX, "r 4, targets q_proj h64:0123456789abcdef");
    snprintf(s->id.data, CK_ID_MAX, "generated rows");
}

static void free_fixture(fixture *f) {
    for (int i = 0; i < f->n; i++) free(f->p[i].w), free(f->p[i].m), free(f->p[i].v);
}

static int64_t numel(const ck_param *p) { return p->shape[0] * p->shape[1]; }

static void check_roundtrip(const fixture *f, const char *path) {
    ck_train_state s;
    qt_err e;
    TU_EXPECT(ck_train_read_state(path, &s, &e) == 0, "%s", e.msg);
    const ck_train_state *w = &f->st;
    TU_EXPECT(s.step == w->step && s.opt_step == w->opt_step && s.micro_batches == w->micro_batches &&
                  s.tokens == w->tokens && s.skipped_steps == w->skipped_steps && s.nonfinite_run == w->nonfinite_run,
              "counters differ");
    TU_EXPECT(s.first_loss == w->first_loss && isnan(s.first_eval) && s.last_loss == w->last_loss &&
                  s.last_eval == 0 && signbit(s.last_eval), "losses differ");
    TU_EXPECT(s.n_rng == 2, "%d rng streams", s.n_rng);
    for (int k = 0; k < s.n_rng && k < 2; k++) { /* read back in name order */
        const ck_rng *want = !strcmp(s.rng[k].name, w->rng[0].name) ? &w->rng[0] : &w->rng[1];
        TU_EXPECT(!memcmp(&s.rng[k], want, sizeof *want), "rng stream %s differs", s.rng[k].name);
    }
    TU_EXPECT(s.data.epoch == 2 && s.data.index == 17 && s.data.seed == w->data.seed, "data position differs");
    TU_EXPECT(s.data.blob_len == sizeof f->blob && !memcmp(s.data.blob, f->blob, sizeof f->blob), "blob differs");
    TU_EXPECT(s.config && !strcmp(s.config, f->config), "config differs");
    TU_EXPECT(!ck_identity_mismatch(&s.id, &w->id, NULL, NULL), "identity differs");
    ck_identity other = w->id;
    other.lora[2] = '8';
    const char *was, *is;
    TU_EXPECT(ck_identity_mismatch(&s.id, &other, &was, &is) && !strcmp(ck_identity_mismatch(&s.id, &other, NULL, NULL),
                                                                     "LoRA shape") && was[2] == '4' && is[2] == '8',
              "identity mismatch not named");
    ck_train_state_free(&s);
    ck_param q[6];
    for (int i = 0; i < f->n; i++) {
        q[i] = f->p[i];
        q[i].w = calloc((size_t)numel(&q[i]), sizeof(float));
        q[i].m = calloc((size_t)numel(&q[i]), sizeof(float));
        q[i].v = calloc((size_t)numel(&q[i]), sizeof(float));
    }
    TU_EXPECT(ck_train_read_params(path, q, f->n, &e) == 0, "%s", e.msg);
    for (int i = 0; i < f->n; i++) {
        size_t b = sizeof(float) * (size_t)numel(&q[i]);
        TU_EXPECT(!memcmp(q[i].w, f->p[i].w, b) && !memcmp(q[i].m, f->p[i].m, b) && !memcmp(q[i].v, f->p[i].v, b),
                  "tensor %s differs after the round trip", q[i].name);
    }
    /* a shape that differs is refused before reading; so is a different tensor count */
    q[2].shape[1]++;
    TU_EXPECT(ck_train_read_params(path, q, f->n, &e) != 0 && strstr(e.msg, "shape"), "shape not checked: %s", e.msg);
    q[2].shape[1]--;
    TU_EXPECT(ck_train_read_params(path, q, f->n - 1, &e) != 0 && strstr(e.msg, "holds 6 tensors"), "count not "
              "checked: %s", e.msg);
    for (int i = 0; i < f->n; i++) free(q[i].w), free(q[i].m), free(q[i].v);
}

static void file_path(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", g_dir, name); }
static bool exists(const char *name) {
    char p[512];
    file_path(p, sizeof p, name);
    return access(p, F_OK) == 0;
}

/* Flip one byte of the first occurrence of `needle` (bytes of a tensor) in the file. */
static bool flip_in_file(const char *path, const void *needle, size_t nlen) {
    qt_err e;
    size_t len;
    char *data = ck_read_file(path, (size_t)64 << 20, &len, &e);
    if (!data) return false;
    char *hit = memmem(data, len, needle, nlen);
    bool ok = hit != NULL;
    if (ok) {
        hit[nlen / 2] ^= 0x10;
        FILE *f = fopen(path, "wb");
        ok = f && fwrite(data, 1, len, f) == len;
        if (f) fclose(f);
    }
    free(data);
    return ok;
}

/* A file with our attributes and a dataset declaring 4 TB that the file does not hold. */
static void write_hostile(const char *path) {
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t dims[2] = {1000000, 1000000};
    hid_t sp = H5Screate_simple(2, dims, NULL);
    hid_t ds = H5Dcreate2(f, "huge", H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(ds);
    H5Sclose(sp);
    hid_t st = H5Tcopy(H5T_C_S1);
    H5Tset_size(st, sizeof "qtrain-train-checkpoint");
    hid_t s1 = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, "format", st, s1, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, st, "qtrain-train-checkpoint");
    H5Aclose(a);
    int v = 1;
    a = H5Acreate2(f, "version", H5T_NATIVE_INT, s1, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_INT, &v);
    H5Aclose(a);
    uint64_t sum = 1;
    a = H5Acreate2(f, "checksum", H5T_NATIVE_UINT64, s1, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_UINT64, &sum);
    H5Aclose(a);
    H5Sclose(s1);
    H5Tclose(st);
    H5Fclose(f);
}

static void test_hash(void) {
    uint8_t buf[1000];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)qt_rng_next(tu_rng());
    uint64_t whole = ck_hash64(buf, sizeof buf);
    ck_hash s;
    ck_hash_init(&s);
    for (size_t at = 0; at < sizeof buf;) { /* random split points: same digest */
        size_t k = 1 + qt_rng_next(tu_rng()) % 23;
        if (k > sizeof buf - at) k = sizeof buf - at;
        ck_hash_update(&s, buf + at, k);
        at += k;
    }
    TU_EXPECT(ck_hash_final(&s) == whole, "streaming hash differs from one-shot");
    size_t bit = qt_rng_next(tu_rng()) % (8 * sizeof buf);
    buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    TU_EXPECT(ck_hash64(buf, sizeof buf) != whole, "a flipped bit (%zu) kept the hash", bit);
    buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    TU_EXPECT(ck_hash64(buf, sizeof buf - 1) != whole, "truncation kept the hash");
    uint8_t z[16] = {0};
    TU_EXPECT(ck_hash64(z, 8) != ck_hash64(z, 16), "zero padding kept the hash");
}

int qt_test_cpu(void) {
    test_hash();
    snprintf(g_dir, sizeof g_dir, "/tmp/qt_train_ckpt_XXXXXX");
    QT_CHECK(mkdtemp(g_dir), "mkdtemp");
    qt_err e;
    char path[512], found[512];
    TU_EXPECT(ck_train_find(g_dir, found, sizeof found, &e) == 0, "empty folder: no checkpoint expected");

    fixture f1, f2;
    make_fixture(&f1, 7);
    make_fixture(&f2, 9);
    char name[32];
    TU_EXPECT(ck_train_save(g_dir, &f1.st, f1.p, f1.n, 2, name, &e) == 0, "%s", e.msg);
    TU_EXPECT(!strcmp(name, "step-000007.h5"), "name %s", name);
    TU_EXPECT(ck_train_save(g_dir, &f2.st, f2.p, f2.n, 2, name, &e) == 0, "%s", e.msg);
    TU_EXPECT(ck_train_find(g_dir, found, sizeof found, &e) == 1 && strstr(found, "step-000009.h5"), "find: %s",
              found);
    check_roundtrip(&f2, found);
    file_path(path, sizeof path, "step-000007.h5");
    check_roundtrip(&f1, path);

    /* corrupt one byte of a tensor in the newest: detected, previous one used */
    file_path(path, sizeof path, "step-000009.h5");
    TU_EXPECT(flip_in_file(path, f2.p[4].v + 5000, 64), "tensor bytes not found in the file");
    TU_EXPECT(ck_train_verify(path, &e) != 0 && strstr(e.msg, "checksum"), "corruption not detected: %s", e.msg);
    fprintf(stderr, "(expected warnings follow)\n");
    TU_EXPECT(ck_train_find(g_dir, found, sizeof found, &e) == 1 && strstr(found, "step-000007.h5"),
              "no fallback after corruption: %s", found);

    /* truncated: same */
    TU_EXPECT(ck_train_save(g_dir, &f2.st, f2.p, f2.n, 2, name, &e) == 0, "%s", e.msg);
    TU_EXPECT(ck_train_verify(path, &e) == 0, "rewritten file: %s", e.msg);
    struct stat sb;
    stat(path, &sb);
    TU_EXPECT(truncate(path, sb.st_size / 2) == 0, "truncate");
    TU_EXPECT(ck_train_verify(path, &e) != 0, "truncation not detected");
    TU_EXPECT(ck_train_find(g_dir, found, sizeof found, &e) == 1 && strstr(found, "step-000007.h5"),
              "no fallback after truncation: %s", found);

    /* a hostile latest naming a file outside the folder is ignored */
    file_path(path, sizeof path, "latest");
    FILE *lf = fopen(path, "w");
    fputs("../../etc/passwd\n", lf);
    fclose(lf);
    TU_EXPECT(ck_train_find(g_dir, found, sizeof found, &e) == 1 && strstr(found, "step-000007.h5"),
              "hostile latest: %s", found);

    /* not HDF5 at all; and a dataset declaring 4 TB with no storage: refused, no hang */
    file_path(path, sizeof path, "step-000011.h5");
    lf = fopen(path, "w");
    fputs("this is not an HDF5 file", lf);
    fclose(lf);
    TU_EXPECT(ck_train_verify(path, &e) != 0 && strstr(e.msg, "HDF5"), "garbage accepted: %s", e.msg);
    file_path(path, sizeof path, "step-000012.h5");
    write_hostile(path);
    TU_EXPECT(ck_train_verify(path, &e) != 0 && strstr(e.msg, "stored size"), "hostile size accepted: %s", e.msg);
    TU_EXPECT(ck_train_find(g_dir, found, sizeof found, &e) == 1 && strstr(found, "step-000007.h5"),
              "fallback past garbage: %s", found);
    /* found by tests/fuzz: a compact dataset storing 0 bytes for its [4, 6] shape; libhdf5 would read it
     * through NULL, so the readers check the stored size even on a file nobody verified */
    {
        char hp[700];
        snprintf(hp, sizeof hp, "%s/tests/fuzz/seeds/fuzz_train_ckpt/regress-compact-empty.h5", QT_SOURCE_DIR);
        static float w[2][24], m[2][24], v[2][24];
        const char *pre = "base_model.model.model.layers.0.self_attn.q_proj.lora_";
        char na[100], nb[100];
        snprintf(na, sizeof na, "%sA.weight", pre);
        snprintf(nb, sizeof nb, "%sB.weight", pre);
        ck_param hp2[2] = {{na, {4, 6}, w[0], m[0], v[0]}, {nb, {6, 4}, w[1], m[1], v[1]}};
        TU_EXPECT(ck_train_read_params(hp, hp2, 2, &e) == -1 && strstr(e.msg, "stored size"),
                  "compact dataset without bytes: %s", e.msg);
    }

    /* pruning: files above the step just written go (an abandoned future), stale tmp files
     * go, and keep=2 leaves two */
    file_path(path, sizeof path, "step-000003.h5.tmp");
    fclose(fopen(path, "w"));
    file_path(path, sizeof path, "latest.tmp.4242");
    fclose(fopen(path, "w"));
    fixture f3;
    make_fixture(&f3, 8);
    TU_EXPECT(ck_train_save(g_dir, &f3.st, f3.p, f3.n, 2, name, &e) == 0, "%s", e.msg);
    TU_EXPECT(exists("step-000007.h5") && exists("step-000008.h5") && !exists("step-000009.h5") &&
                  !exists("step-000011.h5") && !exists("step-000012.h5") && !exists("step-000003.h5.tmp") &&
                  !exists("latest.tmp.4242"), "pruning left the wrong files");
    f3.st.step = 10;
    TU_EXPECT(ck_train_save(g_dir, &f3.st, f3.p, f3.n, 2, name, &e) == 0, "%s", e.msg);
    TU_EXPECT(!exists("step-000007.h5") && exists("step-000008.h5") && exists("step-000010.h5"), "keep=2 not kept");
    TU_EXPECT(ck_train_find(g_dir, found, sizeof found, &e) == 1 && strstr(found, "step-000010.h5"), "latest: %s",
              found);
    char *latest = ck_read_file(strcat(strcpy(path, g_dir), "/latest"), 100, NULL, &e);
    TU_EXPECT(latest && !strcmp(latest, "step-000010.h5\n"), "latest holds '%s'", latest ? latest : "(null)");
    free(latest);

    /* every file damaged: an error that names the newest */
    file_path(path, sizeof path, "step-000010.h5");
    truncate(path, 100);
    file_path(path, sizeof path, "step-000008.h5");
    truncate(path, 100);
    TU_EXPECT(ck_train_find(g_dir, found, sizeof found, &e) < 0 && strstr(e.msg, "step-000010.h5"),
              "all damaged: %s", e.msg);

    free_fixture(&f1);
    free_fixture(&f2);
    free_fixture(&f3);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (tu_fail_count == 0 && system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
    return tu_fail_count ? 1 : 0;
}
