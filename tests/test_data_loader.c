/* data pipeline, part 2: the HDF5 token cache (hit without tokenizing, miss on any input change,
 * damaged files rebuilt, unwritable folder tolerated) and the loader (every row once per epoch,
 * a new permutation each epoch, labels, loss-token counts, exact resume, eval batches). */
#include "data_fixture.h"

#include <hdf5.h>

/* ------------------------------------------------------------------ cache */

static bool same_data(const qt_dataset *a, const qt_dataset *b) {
    const qt_data_split *x[2] = {&a->train, &a->eval}, *y[2] = {&b->train, &b->eval};
    for (int i = 0; i < 2; i++) {
        size_t cells = (size_t)(x[i]->n_rows * x[i]->seq_len);
        if (x[i]->n_rows != y[i]->n_rows || x[i]->n_examples != y[i]->n_examples || x[i]->n_tokens != y[i]->n_tokens ||
            x[i]->n_loss_tokens != y[i]->n_loss_tokens || memcmp(x[i]->ids, y[i]->ids, cells * 4) != 0 ||
            memcmp(x[i]->train, y[i]->train, cells) != 0)
            return false;
    }
    return a->eos_id == b->eos_id && a->vocab_size == b->vocab_size && a->stats.truncated == b->stats.truncated &&
           a->stats.lines == b->stats.lines && a->stats.dropped == b->stats.dropped &&
           strcmp(a->stats.template_used, b->stats.template_used) == 0;
}

static void test_cache(void) {
    char path[400], cdir[400];
    snprintf(path, sizeof path, "%s/chat.jsonl", g_dir);
    snprintf(cdir, sizeof cdir, "%s/cache/sub", g_dir);
    FILE *f = fopen(path, "wb");
    int n = 12 + (int)rnd(10);
    for (int k = 0; k < n; k++) {
        char u[512], a[512];
        rand_core(u, sizeof u);
        rand_core(a, sizeof a);
        char *ju = jstr(u), *ja = jstr(a);
        fprintf(f, "{\"messages\": [{\"role\": \"user\", \"content\": %s}, {\"role\": \"assistant\", \"content\": %s}]}\n",
                ju, ja);
        free(ju), free(ja);
    }
    fclose(f);
    qt_data_opts o;
    base_opts(&o, path, QT_FMT_CHAT);
    o.chat_template = QT_CHAT_CHATML;
    o.seq_len = 41;
    o.packing = true;
    o.eval_split = 0.2;
    o.cache_dir = cdir;
    qt_dataset ref, d;
    qt_err e;
    QT_CHECK(qt_data_load(&ref, &o, &e) == 0, "%s", e.msg);
    struct stat st;
    TU_EXPECT(!ref.stats.from_cache && ref.stats.tokenizer_loaded && ref.stats.encode_calls > 0 &&
                  stat(ref.stats.cache_path, &st) == 0,
              "first load: from_cache %d, %lld encode calls, file %s", ref.stats.from_cache,
              (long long)ref.stats.encode_calls, ref.stats.cache_path);
    QT_CHECK(qt_data_load(&d, &o, &e) == 0, "%s", e.msg);
    TU_EXPECT(d.stats.from_cache && !d.stats.tokenizer_loaded && d.stats.encode_calls == 0 && same_data(&ref, &d),
              "second load: from_cache %d, tokenizer loaded %d, %lld encode calls", d.stats.from_cache,
              d.stats.tokenizer_loaded, (long long)d.stats.encode_calls);
    qt_data_free(&d);
    /* any input change is a different key */
    o.seq_len = 40;
    QT_CHECK(qt_data_load(&d, &o, &e) == 0, "%s", e.msg);
    TU_EXPECT(!d.stats.from_cache && strcmp(d.stats.cache_path, ref.stats.cache_path) != 0, "seq_len change hit the cache");
    qt_data_free(&d);
    o.seq_len = 41;
    f = fopen(path, "ab");
    fputs("{\"messages\": [{\"role\": \"user\", \"content\": \"1\"}, {\"role\": \"assistant\", \"content\": \"2\"}]}\n", f);
    fclose(f);
    QT_CHECK(qt_data_load(&d, &o, &e) == 0, "%s", e.msg);
    TU_EXPECT(!d.stats.from_cache && d.stats.lines == ref.stats.lines + 1, "data change hit the cache");
    qt_data_free(&d);
    /* damage: truncated, a flipped byte inside the ids, garbage; each is rebuilt with a warning */
    char cpath[QT_DATA_PATH_MAX + 64];
    size_t len; /* back to the original data: drop the appended line */
    char *txt = read_text(path, &len);
    QT_CHECK(txt && len > 2, "cannot read %s", path);
    char *lastnl = txt + len - 2;
    while (*lastnl != '\n') lastnl--;
    write_text(path, txt, (size_t)(lastnl - txt + 1));
    free(txt);
    snprintf(cpath, sizeof cpath, "%s", ref.stats.cache_path);
    for (int damage = 0; damage < 4; damage++) {
        char *c = read_text(cpath, &len);
        QT_CHECK(c, "cache file %s missing", cpath);
        if (damage == 0) write_text(cpath, c, len / 2);
        if (damage == 1) {
            char *hit = memmem(c, len, ref.train.ids, (size_t)ref.train.seq_len * 4);
            TU_EXPECT(hit != NULL, "first row's ids not found in the cache file");
            if (hit) hit[4 * (1 + rnd((size_t)ref.train.seq_len - 1))] ^= 1;
            write_text(cpath, c, len);
        }
        if (damage == 2) {
            for (size_t i = 0; i < len; i++) c[i] = (char)rnd(256);
            write_text(cpath, c, len);
        }
        free(c);
        if (damage == 3) { /* found by review: train_ids claiming ~2^40 rows in a small file (nothing stored) */
            hid_t h = H5Fopen(cpath, H5F_ACC_RDWR, H5P_DEFAULT);
            QT_CHECK(h >= 0 && H5Ldelete(h, "train_ids", H5P_DEFAULT) >= 0, "cannot edit %s", cpath);
            hsize_t dims[2] = {((hsize_t)1 << 40) / (hsize_t)o.seq_len + 3, (hsize_t)o.seq_len}, chunk[2] = {1, dims[1]};
            hid_t sp = H5Screate_simple(2, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
            H5Pset_chunk(dcpl, 2, chunk);
            hid_t ds = H5Dcreate2(h, "train_ids", H5T_STD_I32LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
            QT_CHECK(ds >= 0, "cannot create the huge dataset");
            H5Dclose(ds), H5Pclose(dcpl), H5Sclose(sp), H5Fclose(h);
        }
        QT_CHECK(qt_data_load(&d, &o, &e) == 0, "%s", e.msg);
        TU_EXPECT(d.stats.cache_rebuilt && !d.stats.from_cache && same_data(&ref, &d), "damage %d: rebuilt %d, same %d",
                  damage, d.stats.cache_rebuilt, same_data(&ref, &d));
        qt_data_free(&d);
        QT_CHECK(qt_data_load(&d, &o, &e) == 0, "%s", e.msg);
        TU_EXPECT(d.stats.from_cache && same_data(&ref, &d), "damage %d: not served from the rebuilt cache", damage);
        qt_data_free(&d);
    }
    /* no eval rows: an empty split round-trips too */
    o.eval_split = 0;
    qt_dataset d0;
    QT_CHECK(qt_data_load(&d0, &o, &e) == 0 && qt_data_load(&d, &o, &e) == 0, "%s", e.msg);
    TU_EXPECT(d.stats.from_cache && d.eval.n_rows == 0 && same_data(&d0, &d), "cache without eval rows");
    qt_data_free(&d0), qt_data_free(&d);
    o.eval_split = 0.2;
    /* an unwritable cache folder is a warning, not an error */
    char fileasdir[500];
    snprintf(fileasdir, sizeof fileasdir, "%s/text.jsonl/cache", g_dir);
    o.cache_dir = fileasdir;
    TU_EXPECT(qt_data_load(&d, &o, &e) == 0 && same_data(&ref, &d), "unwritable cache folder: %s", e.msg);
    qt_data_free(&d);
    /* no temporary files are left */
    char cmd[600];
    snprintf(cmd, sizeof cmd, "ls %s | grep -c tmp >/dev/null", cdir);
    TU_EXPECT(system(cmd) != 0, "temporary files left in %s", cdir);
    qt_data_free(&ref);
}

/* ------------------------------------------------------------------ loader */

static void test_loader(void) {
    qt_data_split s = {0};
    s.n_rows = 7 + (int64_t)rnd(14);
    s.seq_len = 5 + (int64_t)rnd(9);
    int64_t R = s.n_rows, T = s.seq_len, cells = R * T;
    s.ids = malloc((size_t)cells * 4);
    s.train = malloc((size_t)cells);
    for (int64_t x = 0; x < cells; x++) {
        s.ids[x] = x % T == 0 ? (int32_t)(x / T) : (int32_t)rnd(1000); /* the row number first: identifies it */
        s.train[x] = rnd(3) != 0;
    }
    int64_t B = 1 + (int64_t)rnd(4);
    qt_loader l, l2;
    qt_err e;
    uint64_t seed = qt_rng_next(tu_rng());
    QT_CHECK(qt_loader_init(&l, &s, B, true, seed, &e) == 0, "%s", e.msg);
    int64_t served[200];
    int64_t ns = 0, batches = (3 * R + B - 1) / B;
    for (int64_t b = 0; b < batches; b++) {
        int64_t loss = qt_loader_next(&l), want = 0;
        for (int64_t r = 0; r < B; r++) {
            int32_t row = l.ids[r * T];
            if (ns < 200) served[ns++] = row;
            for (int64_t t = 0; t < T; t++) {
                int64_t x = row * T + t;
                TU_EXPECT(l.ids[r * T + t] == s.ids[x] && l.labels[r * T + t] == (s.train[x] ? s.ids[x] : -100),
                          "batch %lld row %lld pos %lld", (long long)b, (long long)r, (long long)t);
                want += t > 0 && s.train[x];
            }
        }
        TU_EXPECT(loss == want, "loss tokens %lld, expected %lld", (long long)loss, (long long)want);
    }
    bool differ = false;
    for (int ep = 0; ep < 3; ep++) {
        int cnt[64] = {0};
        for (int64_t i = ep * R; i < (ep + 1) * R; i++) cnt[served[i]]++;
        for (int64_t r = 0; r < R; r++) TU_EXPECT(cnt[r] == 1, "epoch %d served row %lld %d times", ep, (long long)r, cnt[r]);
        if (ep > 0) differ |= memcmp(served, served + ep * R, (size_t)R * 8) != 0;
    }
    TU_EXPECT(differ, "the permutation is the same every epoch");
    TU_EXPECT(l.pos.epoch == (batches * B - 1) / R && l.pos.index == (batches * B - 1) % R + 1, "position %lld/%lld",
              (long long)l.pos.epoch, (long long)l.pos.index);
    /* resume: a new loader seeked to a saved position serves the same batches */
    qt_loader_pos pos = l.pos;
    int32_t *after = malloc((size_t)(5 * B * T) * 4), *after_l = malloc((size_t)(5 * B * T) * 4);
    for (int b = 0; b < 5; b++) {
        qt_loader_next(&l);
        memcpy(after + b * B * T, l.ids, (size_t)(B * T) * 4);
        memcpy(after_l + b * B * T, l.labels, (size_t)(B * T) * 4);
    }
    QT_CHECK(qt_loader_init(&l2, &s, B, true, seed ^ 1, &e) == 0, "%s", e.msg);
    TU_EXPECT(qt_loader_seek(&l2, pos, &e) == 0, "%s", e.msg);
    for (int b = 0; b < 5; b++) {
        qt_loader_next(&l2);
        TU_EXPECT(memcmp(after + b * B * T, l2.ids, (size_t)(B * T) * 4) == 0 &&
                      memcmp(after_l + b * B * T, l2.labels, (size_t)(B * T) * 4) == 0,
                  "resumed batch %d differs", b);
    }
    double ep = qt_loader_epoch(&l2);
    TU_EXPECT(fabs(ep - (double)((batches + 5) * B) / (double)R) < 1e-9, "epoch fraction %g", ep);
    qt_loader_pos bad = {seed, 0, R + 1};
    TU_EXPECT(qt_loader_seek(&l2, bad, &e) == -1 && strstr(e.msg, "other data"), "bad position accepted");
    qt_loader_free(&l2);
    /* no shuffle: rows in order */
    QT_CHECK(qt_loader_init(&l2, &s, 1, false, seed, &e) == 0, "%s", e.msg);
    for (int64_t r = 0; r < R + 2; r++) {
        qt_loader_next(&l2);
        TU_EXPECT(l2.ids[0] == r % R, "unshuffled row %d, expected %lld", l2.ids[0], (long long)(r % R));
    }
    qt_loader_free(&l2);
    /* eval batches: in order, the tail padded with -100 labels */
    int64_t EB = 4;
    int32_t *ids = malloc((size_t)(EB * T) * 4), *lab = malloc((size_t)(EB * T) * 4);
    int64_t total = 0;
    for (int64_t i = 0;; i++) {
        int64_t real = qt_data_eval_batch(&s, i, EB, 77, ids, lab);
        if (real == 0) break;
        for (int64_t r = 0; r < EB; r++)
            for (int64_t t = 0; t < T; t++) {
                if (r < real) TU_EXPECT(ids[r * T + t] == s.ids[(i * EB + r) * T + t], "eval ids");
                else TU_EXPECT(ids[r * T + t] == 77 && lab[r * T + t] == -100, "eval padding");
            }
        total += real;
    }
    TU_EXPECT(total == R, "eval batches served %lld rows of %lld", (long long)total, (long long)R);
    qt_data_split empty = {0};
    TU_EXPECT(qt_loader_init(&l2, &empty, 2, true, 1, &e) == -1, "empty split accepted");
    free(ids), free(lab), free(after), free(after_l);
    qt_loader_free(&l);
    free(s.ids), free(s.train);
}
int qt_test_cpu(void) {
    fixture_setup();
    test_cache();
    printf("cache: hit, miss, damage checked\n");
    test_loader();
    printf("loader: epochs, labels, resume, eval batches checked\n");
    fixture_teardown();
    return 0;
}
