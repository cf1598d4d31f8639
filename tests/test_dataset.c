/* data pipeline, part 1: loss masks (alpaca, chat templates) checked by decoding the trained
 * spans, rendered ids == tokenizing the whole rendered string, special-token strings in data,
 * hostile JSONL lines (FILE:LINE errors), packing and padding invariants, shuffling and the eval
 * split, template auto-detection and EOS resolution. Part 2 (cache, loader): test_data_loader.c. */
#include "data_fixture.h"

static const char *const PAD_WS[] = {"", "", "", " ", "  ", "\n", " \n", "\t"};

/* Contiguous trained spans of s, decoded (special tokens as text). */
static int trained_spans(const tok_tokenizer *t, const qt_tokens *s, char **out, int max) {
    int k = 0;
    for (size_t i = 0; i < s->n && k < max;) {
        if (!s->train[i]) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < s->n && s->train[j]) j++;
        out[k++] = tok_decode(t, s->ids + i, j - i, false, NULL);
        i = j;
    }
    return k;
}

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && memcmp(s + a - b, suf, b) == 0;
}

/* The trained spans must be the expected strings; when a BPE merge crossed a boundary the
 * span may start earlier (it then holds the expected string as its tail). */
static void expect_spans(const char *what, const tok_tokenizer *t, const qt_tokens *s, char **want, int n_want,
                         bool merged) {
    char *got[64];
    int n = trained_spans(t, s, got, 64);
    TU_EXPECT(n == n_want, "%s: %d trained spans, expected %d", what, n, n_want);
    for (int i = 0; i < n && i < n_want; i++) {
        bool ok = merged ? ends_with(got[i], want[i]) : strcmp(got[i], want[i]) == 0;
        TU_EXPECT(ok, "%s: trained span %d is \"%s\", expected \"%s\"%s", what, i, got[i], want[i],
                  merged ? " (as its tail)" : "");
    }
    for (int i = 0; i < n; i++) free(got[i]);
}

/* Rendered ids == HF-style tokenization of the whole rendered string (specials recognised). */
static void expect_whole_string(const char *what, int L, const qt_render *r, const qt_tokens *s, int n_bos) {
    size_t len;
    char *str = qt_render_string(r, g_tok_sp[L], &len);
    tok_ids whole = {0};
    qt_err e;
    TU_EXPECT(tok_encode(g_tok_sp[L], str, len, false, &whole, &e) == 0, "%s: %s", what, e.msg);
    bool same = whole.n + (size_t)n_bos == s->n && memcmp(whole.ids, s->ids + n_bos, whole.n * 4) == 0;
    TU_EXPECT(same, "%s: rendered ids (%zu) differ from tokenizing the rendered string (%zu): %s", what, s->n,
              whole.n, str);
    tok_ids_free(&whole);
    free(str);
}

/* ------------------------------------------------------------------ chat and alpaca masks */

static void test_chat(int L, qt_chat_style style, int trials) {
    qt_template tp;
    qt_template_init(&tp, style);
    if (style == QT_CHAT_CHATML) snprintf(tp.default_system, sizeof tp.default_system, "You are a helpful assistant.");
    qt_encoder enc;
    qt_err e;
    QT_CHECK(qt_encoder_init(&enc, g_tok[L], QT_FMT_CHAT, &tp, 0, &e) == 0, "%s", e.msg);
    for (int trial = 0; trial < trials; trial++) {
        char core[8][512], content[8][600];
        char *want[8];
        int nmsg = 0, nwant = 0;
        bool sys = rnd(2) && style != QT_CHAT_AUTO;
        int turns = 1 + (int)rnd(3);
        cJSON *j = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(j, "messages");
        for (int i = 0; i < (sys ? 1 : 0) + 2 * turns; i++) {
            rand_core(core[nmsg], sizeof core[nmsg]);
            const char *lead = PAD_WS[rnd(8)], *trail = PAD_WS[rnd(8)];
            if (style == QT_CHAT_CHATML) lead = ""; /* not stripped: a leading newline may merge with the header */
            snprintf(content[nmsg], sizeof content[nmsg], "%s%s%s", lead, core[nmsg], trail);
            const char *role = sys && i == 0 ? "system" : (i - (sys ? 1 : 0)) % 2 == 0 ? "user" : "assistant";
            if (strcmp(role, "assistant") == 0) {
                char *w = malloc(8192);
                if (style == QT_CHAT_LLAMA3) snprintf(w, 8192, "%s<|eot_id|>", core[nmsg]);
                else if (style == QT_CHAT_CHATML) snprintf(w, 8192, "%s<|im_end|>", content[nmsg]);
                else snprintf(w, 8192, " %s </s>", core[nmsg]);
                want[nwant++] = w;
            }
            cJSON *m = cJSON_CreateObject();
            cJSON_AddStringToObject(m, "role", role);
            cJSON_AddStringToObject(m, "content", content[nmsg]);
            cJSON_AddItemToArray(arr, m);
            nmsg++;
        }
        char *line = cJSON_PrintUnformatted(j);
        qt_tokens s = {0};
        int64_t merges = enc.st.boundary_merges;
        int rc = qt_encode_record(&enc, line, strlen(line), &s, &e);
        TU_EXPECT(rc == 0, "chat %s: %s", qt_chat_style_name(style), e.msg);
        if (rc == 0) {
            char what[64];
            snprintf(what, sizeof what, "chat %s layout %d trial %d", qt_chat_style_name(style), L, trial);
            expect_spans(what, g_tok[L], &s, want, nwant, enc.st.boundary_merges != merges);
            expect_whole_string(what, L, &enc.r, &s, 0);
            TU_EXPECT(s.train[0] == 0, "%s: first token trained", what);
        }
        for (int i = 0; i < nwant; i++) free(want[i]);
        qt_tokens_free(&s);
        free(line);
        cJSON_Delete(j);
    }
    qt_encoder_free(&enc);
}

static void test_alpaca_text(int L, int trials) {
    qt_encoder ea, et;
    qt_err e;
    int32_t eos = tok_token_to_id(g_tok[L], g_eos[L]);
    QT_CHECK(qt_encoder_init(&ea, g_tok[L], QT_FMT_ALPACA, NULL, eos, &e) == 0, "%s", e.msg);
    QT_CHECK(qt_encoder_init(&et, g_tok[L], QT_FMT_TEXT, NULL, eos, &e) == 0, "%s", e.msg);
    tok_ids bos = {0}; /* what the tokenizer's post-processor adds, from HF-style encode */
    tok_encode(g_tok[L], "", 0, true, &bos, &e);
    int n_bos = L == 1 ? 0 : 1; /* g2's post-processor adds <|endoftext|> after, not before */
    for (int trial = 0; trial < trials; trial++) {
        char ins[512], inp[512], out[512];
        rand_core(ins, sizeof ins);
        rand_core(inp, sizeof inp);
        rand_core(out, sizeof out);
        int variant = (int)rnd(3); /* input absent, empty, present */
        char *a = jstr(ins), *b = jstr(inp), *c = jstr(out);
        char line[2048];
        snprintf(line, sizeof line, "{\"instruction\": %s%s%s, \"output\": %s, \"id\": 7}", a,
                 variant == 0 ? "" : ", \"input\": ", variant == 0 ? "" : variant == 1 ? "\"\"" : b, c);
        qt_tokens s = {0};
        int64_t merges = ea.st.boundary_merges;
        int rc = qt_encode_record(&ea, line, strlen(line), &s, &e);
        TU_EXPECT(rc == 0, "alpaca: %s", e.msg);
        if (rc == 0) {
            char want[600], *w = want, what[64];
            snprintf(want, sizeof want, "%s%s", out, g_eos[L]);
            snprintf(what, sizeof what, "alpaca layout %d trial %d", L, trial);
            expect_spans(what, g_tok[L], &s, &w, 1, ea.st.boundary_merges != merges);
            expect_whole_string(what, L, &ea.r, &s, 0);
            /* the prompt is Stanford Alpaca's: check the untrained text independently */
            char *prompt = tok_decode(g_tok[L], s.ids + n_bos, s.n - n_bos, false, NULL);
            const char *head = variant == 2 ? "Below is an instruction that describes a task, paired with an input that "
                                              "provides further context. Write a response that appropriately completes "
                                              "the request.\n\n### Instruction:\n"
                                            : "Below is an instruction that describes a task. Write a response that "
                                              "appropriately completes the request.\n\n### Instruction:\n";
            char full[4096];
            if (variant == 2)
                snprintf(full, sizeof full, "%s%s\n\n### Input:\n%s\n\n### Response:%s%s", head, ins, inp, out, g_eos[L]);
            else snprintf(full, sizeof full, "%s%s\n\n### Response:%s%s", head, ins, out, g_eos[L]);
            TU_EXPECT(strcmp(prompt + (L == 1 && prompt[0] == ' '), full) == 0, "%s: rendered \"%s\"", what, prompt);
            free(prompt);
        }
        free(a), free(b), free(c);
        /* text: what the post-processor puts before the text (BOS), the text, EOS */
        char *tx = jstr(out);
        snprintf(line, sizeof line, "{\"text\": %s}", tx);
        free(tx);
        qt_tokens st = {0};
        TU_EXPECT(qt_encode_record(&et, line, strlen(line), &st, &e) == 0, "text: %s", e.msg);
        tok_ids ref = {0};
        tok_encode(g_tok[L], out, strlen(out), L != 1, &ref, &e);
        ref.ids = realloc(ref.ids, (ref.n + 1) * 4);
        ref.ids[ref.n++] = eos;
        TU_EXPECT(st.n == ref.n && memcmp(st.ids, ref.ids, ref.n * 4) == 0, "text example != BOS + encode(text) + EOS");
        for (size_t i = 0; i < st.n; i++) TU_EXPECT(st.train[i] == (i > 0), "text: token %zu trained=%d", i, st.train[i]);
        tok_ids_free(&ref);
        qt_tokens_free(&st);
        qt_tokens_free(&s);
    }
    TU_EXPECT(bos.n == 1, "the post-processor adds one token (BOS before or EOS after)");
    TU_EXPECT(ea.n_bos == n_bos, "encoder found %d BOS tokens, expected %d", ea.n_bos, n_bos);
    tok_ids_free(&bos);
    qt_encoder_free(&ea);
    qt_encoder_free(&et);
}

/* Special-token strings inside data stay text; a crossing merge is counted and trained. */
static void test_special_strings_and_merges(void) {
    qt_template tp;
    qt_template_init(&tp, QT_CHAT_LLAMA3);
    qt_encoder enc;
    qt_err e;
    QT_CHECK(qt_encoder_init(&enc, g_tok[0], QT_FMT_CHAT, &tp, 0, &e) == 0, "%s", e.msg);
    const char *line = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi<|eot_id|><|start_header_id|>\"},"
                       "{\"role\":\"assistant\",\"content\":\"ok <|eot_id|> done\"}]}";
    qt_tokens s = {0};
    TU_EXPECT(qt_encode_record(&enc, line, strlen(line), &s, &e) == 0, "%s", e.msg);
    int32_t eot = tok_token_to_id(g_tok[0], "<|eot_id|>"), hdr = tok_token_to_id(g_tok[0], "<|start_header_id|>");
    int n_eot = 0, n_hdr = 0;
    for (size_t i = 0; i < s.n; i++) n_eot += s.ids[i] == eot, n_hdr += s.ids[i] == hdr;
    TU_EXPECT(n_eot == 2 && n_hdr == 2, "special strings in data became tokens (%d eot, %d headers)", n_eot, n_hdr);
    char *w = "ok <|eot_id|> done<|eot_id|>";
    expect_spans("special strings", g_tok[0], &s, &w, 1, false);
    qt_tokens_free(&s);
    qt_encoder_free(&enc);
    /* A flag change inside a pre-token that BPE merges: "(*)" is one token of the fixture. */
    qt_render r = {0};
    qt_render_text(&r, "call f(", 7, false);
    qt_render_text(&r, "*)", 2, true);
    qt_render_stats st = {0};
    qt_tokens t2 = {0};
    TU_EXPECT(qt_render_tokens(&r, g_tok[0], &t2, &st, &e) == 0, "%s", e.msg);
    TU_EXPECT(st.boundary_merges == 1, "crossing merge counted %lld times", (long long)st.boundary_merges);
    char *sp[4];
    int n = trained_spans(g_tok[0], &t2, sp, 4);
    TU_EXPECT(n == 1 && strcmp(sp[0], "(*)") == 0, "crossing token trained: \"%s\"", n ? sp[0] : "");
    for (int i = 0; i < n; i++) free(sp[i]);
    qt_tokens_free(&t2);
    qt_render_free(&r);
}

/* ------------------------------------------------------------------ hostile lines */

static void test_bad_lines(void) {
    static const struct { qt_dfmt f; qt_chat_style cs; const char *line, *expect; } C[] = {
        {QT_FMT_TEXT, 0, "{\"text\": \"abc\"", "invalid JSON at column"},
        {QT_FMT_TEXT, 0, "{\"txt\": \"a\"}", "field 'text' is missing"},
        {QT_FMT_TEXT, 0, "{\"text\": 5}", "field 'text' must be a string, got a number"},
        {QT_FMT_TEXT, 0, "{\"text\": \"a\"} x", "text after the object"},
        {QT_FMT_TEXT, 0, "[1, 2]", "expected a JSON object, got an array"},
        {QT_FMT_TEXT, 0, "{\"text\": \"ok \xff\xfe\"}", "field 'text' is not valid UTF-8 (byte 3"},
        {QT_FMT_TEXT, 0, "{\"text\": \"\xed\xa0\x80\"}", "not valid UTF-8"},
        {QT_FMT_ALPACA, 0, "{\"instruction\": \"a\"}", "field 'output' is missing"},
        {QT_FMT_ALPACA, 0, "{\"instruction\": \"a\", \"input\": 3, \"output\": \"b\"}", "field 'input' must be a string"},
        {QT_FMT_ALPACA, 0, "{\"instruction\": [\"a\"], \"output\": \"b\"}", "field 'instruction' must be a string, got an array"},
        {QT_FMT_CHAT, QT_CHAT_LLAMA3, "{\"messages\": []}", "field 'messages' is empty"},
        {QT_FMT_CHAT, QT_CHAT_LLAMA3, "{\"messages\": {}}", "field 'messages' must be an array"},
        {QT_FMT_CHAT, QT_CHAT_LLAMA3, "{\"msgs\": []}", "field 'messages' is missing"},
        {QT_FMT_CHAT, QT_CHAT_CHATML, "{\"messages\": [{\"role\": \"tool\", \"content\": \"x\"}]}",
         "field 'messages[0].role': unknown role \"tool\""},
        {QT_FMT_CHAT, QT_CHAT_LLAMA3, "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": "
                                      "\"assistant\", \"content\": null}]}",
         "field 'messages[1].content' must be a string, got null"},
        {QT_FMT_CHAT, QT_CHAT_LLAMA3, "{\"messages\": [{\"role\": \"user\"}]}", "field 'messages[0].content' is missing"},
        {QT_FMT_CHAT, QT_CHAT_LLAMA3, "{\"messages\": [\"hi\"]}", "field 'messages[0]' must be an object"},
        {QT_FMT_CHAT, QT_CHAT_LLAMA3, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}", "no assistant message"},
        {QT_FMT_CHAT, QT_CHAT_LLAMA2, "{\"messages\": [{\"role\": \"assistant\", \"content\": \"x\"}]}",
         "alternating, starting with user"},
        {QT_FMT_CHAT, QT_CHAT_LLAMA2, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"system\", "
                                      "\"content\": \"s\"}, {\"role\": \"assistant\", \"content\": \"x\"}]}",
         "system message only as the first"},
    };
    static const char *good[3] = {"{\"text\": \"fine\"}", "{\"instruction\": \"i\", \"output\": \"o\"}",
                                  "{\"messages\": [{\"role\": \"user\", \"content\": \"u\"}, "
                                  "{\"role\": \"assistant\", \"content\": \"a\"}]}"};
    char path[400], buf[2048];
    snprintf(path, sizeof path, "%s/bad.jsonl", g_dir);
    for (size_t i = 0; i < sizeof C / sizeof *C; i++) {
        const char *g = good[C[i].f];
        int n = snprintf(buf, sizeof buf, "%s\n\n%s\n%s\n%s\n", g, g, C[i].line, g); /* the bad line is line 4 */
        write_text(path, buf, (size_t)n);
        qt_data_opts o;
        base_opts(&o, path, C[i].f);
        o.chat_template = C[i].cs;
        o.seq_len = 512; /* the Alpaca prompt alone is ~100 tokens of this small vocabulary */
        qt_dataset d;
        qt_err e = {{0}};
        char want[512], th[16];
        snprintf(th, sizeof th, "%d", 1 + (int)rnd(4)); /* line numbers must not depend on the slicing */
        setenv("QT_DATA_THREADS", th, 1);
        snprintf(want, sizeof want, "%s:4: ", path);
        int rc = qt_data_load(&d, &o, &e);
        TU_EXPECT(rc == -1 && strncmp(e.msg, want, strlen(want)) == 0 && strstr(e.msg, C[i].expect),
                  "case %zu: got \"%s\", expected \"%s...%s\"", i, rc ? e.msg : "success", want, C[i].expect);
        o.skip_bad_lines = true;
        rc = qt_data_load(&d, &o, &e);
        TU_EXPECT(rc == 0 && d.stats.bad_lines == 1 && d.stats.lines == 4 && d.train.n_examples == 3 &&
                      strstr(d.stats.first_bad, ":4: "),
                  "case %zu skipped: rc %d (%s), bad %lld, first \"%s\"", i, rc, rc ? e.msg : "", (long long)d.stats.bad_lines,
                  d.stats.first_bad);
        if (rc == 0) qt_data_free(&d);
    }
    unsetenv("QT_DATA_THREADS");
    /* a missing file, a file with nothing usable */
    qt_data_opts o;
    qt_dataset d;
    qt_err e;
    snprintf(path, sizeof path, "%s/none.jsonl", g_dir);
    base_opts(&o, path, QT_FMT_TEXT);
    TU_EXPECT(qt_data_load(&d, &o, &e) == -1 && strstr(e.msg, "none.jsonl: cannot open"), "missing: %s", e.msg);
    write_text(path, "\n  \n", 4);
    TU_EXPECT(qt_data_load(&d, &o, &e) == -1 && strstr(e.msg, "no usable text examples"), "empty: %s", e.msg);
}

/* ------------------------------------------------------------------ packing, shuffling, split */

/* n text examples "ex K: ..." (some longer than T); refs[k] = BOS + text + EOS, tokenized here. */
static void make_text_file(const char *path, int n, int64_t T, tok_ids *refs) {
    FILE *f = fopen(path, "wb");
    for (int k = 0; k < n; k++) {
        char core[512], text[2200];
        int m = snprintf(text, sizeof text, "ex %d:", k);
        int reps = rnd(5) == 0 ? 4 + (int)rnd(4) : 1;
        for (int r = 0; r < reps; r++) {
            rand_core(core, sizeof core);
            m += snprintf(text + m, sizeof text - (size_t)m, " %s", core);
        }
        char *js = jstr(text);
        fprintf(f, "{\"text\": %s}\n", js);
        free(js);
        qt_err e;
        memset(&refs[k], 0, sizeof refs[k]);
        tok_encode(g_tok[0], text, (size_t)m, true, &refs[k], &e);
        refs[k].ids = realloc(refs[k].ids, (refs[k].n + 1) * 4);
        refs[k].ids[refs[k].n++] = tok_token_to_id(g_tok[0], "<|end_of_text|>");
    }
    fclose(f);
    (void)T;
}

/* Which reference an unpacked row holds (-1: none). */
static int row_example(const qt_data_split *s, int64_t row, const tok_ids *refs, int n) {
    int64_t T = s->seq_len;
    for (int k = 0; k < n; k++) {
        size_t len = refs[k].n < (size_t)T ? refs[k].n : (size_t)T;
        if (memcmp(s->ids + row * T, refs[k].ids, len * 4) == 0) return k;
    }
    return -1;
}

static void test_packing(bool packing) {
    char path[400];
    snprintf(path, sizeof path, "%s/text.jsonl", g_dir);
    int n = 15 + (int)rnd(25);
    int64_t T = 29 + (int64_t)rnd(24);
    tok_ids refs[64];
    make_text_file(path, n, T, refs);
    qt_data_opts o;
    base_opts(&o, path, QT_FMT_TEXT);
    o.seq_len = T;
    o.packing = packing;
    qt_dataset d;
    qt_err e;
    if (qt_data_load(&d, &o, &e) != 0) {
        TU_EXPECT(false, "%s", e.msg);
        return;
    }
    const qt_data_split *s = &d.train;
    int32_t eos = tok_token_to_id(g_tok[0], "<|end_of_text|>"), bos = tok_token_to_id(g_tok[0], "<|begin_of_text|>");
    int64_t truncated = 0, loss = 0, stream = 0;
    for (int k = 0; k < n; k++) {
        int64_t len = (int64_t)refs[k].n;
        truncated += len > T;
        loss += (len < T ? len : T) - 1;
        stream += (len < T ? len : T) + (len > T); /* a cut example gets an EOS separator */
    }
    TU_EXPECT(d.eos_id == eos && d.stats.truncated == truncated, "truncated %lld, expected %lld",
              (long long)d.stats.truncated, (long long)truncated);
    TU_EXPECT(s->n_examples == n && s->n_loss_tokens == loss, "loss tokens %lld, expected %lld",
              (long long)s->n_loss_tokens, (long long)loss);
    TU_EXPECT(d.eval.n_rows == 0, "eval rows without a split");
    if (packing) {
        TU_EXPECT(s->n_rows == (stream + T - 1) / T && s->n_tokens == stream, "rows %lld for %lld stream tokens of T=%lld",
                  (long long)s->n_rows, (long long)stream, (long long)T);
        /* Walk the stream: each example starts with BOS (label -100) and matches a reference. */
        int64_t total = s->n_rows * T, i = 0;
        int seen[64] = {0};
        while (i < stream) {
            TU_EXPECT(s->ids[i] == bos && !s->train[i], "position %lld: example start %d/%d", (long long)i, s->ids[i],
                      s->train[i]);
            int64_t j = i + 1;
            while (j < stream && s->ids[j] != bos) j++;
            int match = -1;
            for (int k = 0; k < n && match < 0; k++) {
                int64_t len = (int64_t)refs[k].n < T ? (int64_t)refs[k].n : T;
                bool cut = (int64_t)refs[k].n > T;
                if (j - i == len + cut && memcmp(s->ids + i, refs[k].ids, (size_t)len * 4) == 0 &&
                    (!cut || s->ids[j - 1] == eos))
                    match = k;
            }
            TU_EXPECT(match >= 0, "stream [%lld, %lld) is no example", (long long)i, (long long)j);
            if (match >= 0) {
                seen[match]++;
                bool cut = (int64_t)refs[match].n > T;
                for (int64_t x = i + 1; x < j; x++)
                    TU_EXPECT(s->train[x] == !(cut && x == j - 1), "trained flag at %lld", (long long)x);
                TU_EXPECT(s->ids[j - 1] == eos, "example not followed by EOS");
            }
            i = j;
        }
        for (int k = 0; k < n; k++) TU_EXPECT(seen[k] == 1, "example %d packed %d times", k, seen[k]);
        for (int64_t x = stream; x < total; x++)
            TU_EXPECT(s->ids[x] == eos && !s->train[x], "padding at %lld", (long long)x);
    } else {
        TU_EXPECT(s->n_rows == n, "unpacked: %lld rows for %d examples", (long long)s->n_rows, n);
        int seen[64] = {0};
        for (int64_t r = 0; r < s->n_rows; r++) {
            int k = row_example(s, r, refs, n);
            TU_EXPECT(k >= 0, "row %lld is no example", (long long)r);
            if (k < 0) continue;
            seen[k]++;
            int64_t len = (int64_t)refs[k].n < T ? (int64_t)refs[k].n : T;
            for (int64_t t = 0; t < T; t++) {
                bool tr = s->train[r * T + t];
                TU_EXPECT(tr == (t > 0 && t < len), "row %lld pos %lld trained %d", (long long)r, (long long)t, tr);
                if (t >= len) TU_EXPECT(s->ids[r * T + t] == eos, "pad id");
            }
        }
        for (int k = 0; k < n; k++) TU_EXPECT(seen[k] == 1, "example %d in %d rows", k, seen[k]);
    }
    /* the same rows when the file is encoded by several threads */
    qt_dataset d2;
    setenv("QT_DATA_THREADS", "5", 1);
    QT_CHECK(qt_data_load(&d2, &o, &e) == 0, "%s", e.msg);
    unsetenv("QT_DATA_THREADS");
    TU_EXPECT(d2.train.n_rows == s->n_rows && memcmp(d2.train.ids, s->ids, (size_t)(s->n_rows * T) * 4) == 0 &&
                  memcmp(d2.train.train, s->train, (size_t)(s->n_rows * T)) == 0 &&
                  d2.stats.truncated == d.stats.truncated && d2.stats.encode_calls == d.stats.encode_calls,
              "5 threads gave other rows");
    qt_data_free(&d2);
    /* labels: ids where trained, -100 elsewhere */
    int32_t *lab = malloc((size_t)(s->n_rows * T) * 4);
    qt_data_labels(s, 0, s->n_rows, lab);
    for (int64_t x = 0; x < s->n_rows * T; x++)
        TU_EXPECT(lab[x] == (s->train[x] ? s->ids[x] : QT_IGNORE_INDEX), "label %lld", (long long)x);
    free(lab);
    qt_data_free(&d);
    for (int k = 0; k < n; k++) tok_ids_free(&refs[k]);
}

static void test_shuffle_split(void) {
    char path[400], epath[400];
    snprintf(path, sizeof path, "%s/split.jsonl", g_dir);
    snprintf(epath, sizeof epath, "%s/split_eval.jsonl", g_dir);
    int n = 20;
    tok_ids refs[20], erefs[20];
    make_text_file(path, n, 512, refs);
    qt_data_opts o;
    base_opts(&o, path, QT_FMT_TEXT);
    o.seq_len = 512;
    qt_dataset a, b, c;
    qt_err e;
    QT_CHECK(qt_data_load(&a, &o, &e) == 0 && qt_data_load(&b, &o, &e) == 0, "%s", e.msg);
    size_t bytes = (size_t)(a.train.n_rows * 512);
    TU_EXPECT(a.train.n_rows == n && memcmp(a.train.ids, b.train.ids, bytes * 4) == 0, "same seed, different rows");
    o.shuffle_seed ^= 0x5eed;
    QT_CHECK(qt_data_load(&c, &o, &e) == 0, "%s", e.msg);
    TU_EXPECT(memcmp(a.train.ids, c.train.ids, bytes * 4) != 0, "another seed, same order");
    qt_data_free(&a), qt_data_free(&b), qt_data_free(&c);
    /* eval split: a quarter held out, disjoint, covering, in file order, deterministic per seed */
    o.eval_split = 0.25;
    int prev_eval[5] = {0};
    for (int run = 0; run < 3; run++) {
        if (run == 2) o.shuffle_seed ^= 0xabcdef;
        QT_CHECK(qt_data_load(&a, &o, &e) == 0, "%s", e.msg);
        TU_EXPECT(a.eval.n_rows == 5 && a.train.n_rows == 15 && a.eval.n_examples == 5, "split %lld + %lld",
                  (long long)a.eval.n_rows, (long long)a.train.n_rows);
        int count[20] = {0}, ev[5], last = -1;
        for (int64_t r = 0; r < a.eval.n_rows && r < 5; r++) {
            ev[r] = row_example(&a.eval, r, refs, n);
            TU_EXPECT(ev[r] > last, "eval rows not in file order");
            last = ev[r];
            if (ev[r] >= 0) count[ev[r]]++;
        }
        for (int64_t r = 0; r < a.train.n_rows; r++) {
            int k = row_example(&a.train, r, refs, n);
            if (k >= 0) count[k]++;
        }
        for (int k = 0; k < n; k++) TU_EXPECT(count[k] == 1, "example %d appears %d times in train+eval", k, count[k]);
        if (run == 1) TU_EXPECT(memcmp(ev, prev_eval, sizeof ev) == 0, "same seed, different eval set");
        if (run == 2) TU_EXPECT(memcmp(ev, prev_eval, sizeof ev) != 0, "another seed, same eval set");
        if (run == 0) memcpy(prev_eval, ev, sizeof ev);
        qt_data_free(&a);
    }
    /* a separate eval file: all of it, in order; the train file is not split */
    make_text_file(epath, 7, 512, erefs);
    o.eval_path = epath;
    QT_CHECK(qt_data_load(&a, &o, &e) == 0, "%s", e.msg);
    TU_EXPECT(a.train.n_rows == n && a.eval.n_rows == 7, "eval file: %lld + %lld", (long long)a.train.n_rows,
              (long long)a.eval.n_rows);
    for (int64_t r = 0; r < a.eval.n_rows; r++)
        TU_EXPECT(row_example(&a.eval, r, erefs, 7) == r, "eval file row %lld out of order", (long long)r);
    qt_data_free(&a);
    /* one example cannot be split */
    write_text(path, "{\"text\": \"only\"}\n", 17);
    o.eval_path = NULL;
    TU_EXPECT(qt_data_load(&a, &o, &e) == -1 && strstr(e.msg, "needs at least 2 examples"), "%s", e.msg);
    for (int k = 0; k < n; k++) tok_ids_free(&refs[k]);
    for (int k = 0; k < 7; k++) tok_ids_free(&erefs[k]);
}

/* ------------------------------------------------------------------ template detection, EOS */

/* The chat_template strings of the official tokenizer_config.json files. */
static const char LLAMA3_JINJA[] =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 "
    "%}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";
static const char QWEN2_JINJA[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou "
    "are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|im_start|>assistant\\n' }}{% endif %}";
static const char LLAMA2_JINJA[] =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif "
    "%}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
    "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
    "loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if "
    "message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] "
    "== 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";
static const char GEMMA_JINJA[] =
    "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\\n' + "
    "message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}";

static void test_detect(void) {
    char dir[400], cfg[500], jin[500];
    snprintf(dir, sizeof dir, "%s/model", g_dir);
    mkdir(dir, 0777);
    snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", dir);
    snprintf(jin, sizeof jin, "%s/chat_template.jinja", dir);
    static const struct { const char *jinja, *eos; qt_chat_style want; const char *sys; } C[] = {
        {LLAMA3_JINJA, "\"<|eot_id|>\"", QT_CHAT_LLAMA3, ""},
        {QWEN2_JINJA, "\"<|im_end|>\"", QT_CHAT_CHATML, "You are a helpful assistant."},
        {LLAMA2_JINJA, "{\"content\": \"</s>\", \"lstrip\": false}", QT_CHAT_LLAMA2, ""},
    };
    qt_err e;
    qt_template tp;
    for (size_t i = 0; i < 3; i++) {
        char *js = jstr(C[i].jinja), buf[4096];
        int n = snprintf(buf, sizeof buf, "{\"chat_template\": %s, \"eos_token\": %s}", js, C[i].eos);
        write_text(cfg, buf, (size_t)n);
        free(js);
        int rc = qt_template_resolve(&tp, QT_CHAT_AUTO, dir, g_tok[0], &e);
        TU_EXPECT(rc == 0 && tp.style == C[i].want && strcmp(tp.default_system, C[i].sys) == 0,
                  "detect %zu: rc %d style %s system \"%s\" (%s)", i, rc, qt_chat_style_name(tp.style),
                  tp.default_system, rc ? e.msg : tp.source);
        const char *eos_name = i == 0 ? "<|eot_id|>" : i == 1 ? "<|im_end|>" : "</s>";
        TU_EXPECT(qt_data_find_eos(g_tok[0], dir, NULL, &e) == tok_token_to_id(g_tok[0], eos_name), "eos %zu", i);
    }
    TU_EXPECT(qt_data_find_eos(g_tok[0], dir, "<|im_end|>", &e) == tok_token_to_id(g_tok[0], "<|im_end|>"), "override");
    TU_EXPECT(qt_data_find_eos(g_tok[0], dir, "<nope>", &e) == -1 && strstr(e.msg, "<nope>"), "bad override");
    write_text(cfg, "{\"eos_token\": \"<|nope|>\"}", 25);
    TU_EXPECT(qt_data_find_eos(g_tok[0], dir, NULL, &e) == -1 && strstr(e.msg, "<|nope|>"), "unknown eos_token");
    /* an unknown template is an error that says what to set */
    char *js = jstr(GEMMA_JINJA), buf[4096];
    int n = snprintf(buf, sizeof buf, "{\"chat_template\": %s}", js);
    free(js);
    write_text(cfg, buf, (size_t)n);
    TU_EXPECT(qt_template_resolve(&tp, QT_CHAT_AUTO, dir, g_tok[0], &e) == -1 && strstr(e.msg, "data.chat_template"),
              "unknown template: %s", e.msg);
    /* the list form and chat_template.jinja */
    js = jstr(QWEN2_JINJA);
    n = snprintf(buf, sizeof buf, "{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"x\"}, "
                                  "{\"name\": \"default\", \"template\": %s}]}", js);
    free(js);
    write_text(cfg, buf, (size_t)n);
    TU_EXPECT(qt_template_resolve(&tp, QT_CHAT_AUTO, dir, NULL, &e) == 0 && tp.style == QT_CHAT_CHATML, "list form");
    write_text(cfg, "{}", 2);
    write_text(jin, LLAMA2_JINJA, strlen(LLAMA2_JINJA));
    TU_EXPECT(qt_template_resolve(&tp, QT_CHAT_AUTO, dir, NULL, &e) == 0 && tp.style == QT_CHAT_LLAMA2, "jinja file");
    unlink(jin);
    /* no template: the tokenizer's tokens decide, or a clear error */
    TU_EXPECT(qt_template_resolve(&tp, QT_CHAT_AUTO, dir, g_tok[0], &e) == 0 && tp.style == QT_CHAT_LLAMA3,
              "from tokens: %s", e.msg);
    TU_EXPECT(qt_template_resolve(&tp, QT_CHAT_AUTO, dir, NULL, &e) == -1 && strstr(e.msg, "cannot tell"),
              "no template, no tokens: %s", e.msg);
    write_text(cfg, "{not json", 9);
    TU_EXPECT(qt_template_resolve(&tp, QT_CHAT_AUTO, dir, NULL, &e) == -1 && strstr(e.msg, "not valid JSON"),
              "broken config: %s", e.msg);
}

int qt_test_cpu(void) {
    fixture_setup();
    for (int L = 0; L < g_ntok; L++) {
        test_chat(L, QT_CHAT_LLAMA3, 40);
        test_chat(L, QT_CHAT_CHATML, 40);
        test_chat(L, QT_CHAT_LLAMA2, 40);
        test_alpaca_text(L, 40);
    }
    printf("chat templates, alpaca, text: masks and whole-string parity checked\n");
    test_special_strings_and_merges();
    test_bad_lines();
    printf("hostile lines: FILE:LINE errors checked\n");
    test_packing(true);
    test_packing(false);
    test_shuffle_split();
    printf("packing, padding, shuffle, eval split checked\n");
    test_detect();
    printf("template detection, EOS checked\n");
    fixture_teardown();
    return 0;
}
