/* GGUF container (checkpoints/gguf.c) and Llama-family pieces (gguf_llama.c, gguf_vocab.c):
 * write -> read round trip of every value type, tensor data and alignment padding, byte
 * offsets checked against the layout rules of shared/specs/gguf.md section 1 computed here;
 * every truncation of a small file and a set of corruptions refused with an error (never a
 * crash); the Q/K permutation against the spec's worked example; rope_freqs against the
 * spec's formula evaluated here in double; tokenizer metadata from the committed byte-level
 * tokenizer fixture. (Interop with the `gguf` package: tests/py/gguf_interop.py.) */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoints/checkpoints.h"
#include "testutil.h"

static char tmpdir[256];

static void path_in(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", tmpdir, name); }

static uint8_t *slurp(const char *path, size_t *len) {
    qt_err e;
    char *s = ck_read_file(path, 1u << 28, len, &e);
    TU_EXPECT(s != NULL, "%s", e.msg);
    return (uint8_t *)s;
}

static void spit(const char *path, const uint8_t *d, size_t n) {
    FILE *f = fopen(path, "wb");
    fwrite(d, 1, n, f);
    fclose(f);
}

static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* ------------------------------------------------------------------ round trip */

static void test_round_trip(void) {
    char path[512];
    path_in(path, sizeof path, "rt.gguf");
    qt_err e;
    gguf_writer *w = gguf_writer_new();
    const int32_t ia[5] = {-3, 0, 7, 2147483647, -2147483647 - 1};
    const float fa[3] = {1.5f, -0.0f, 3e-39f};
    const char *sa[4] = {"a", "", "ünï code", "x y"};
    uint8_t u8 = 200;
    gguf_set_str(w, "general.architecture", "llama");
    gguf_set_u32(w, "t.u32", 4000000000u);
    gguf_set_i32(w, "t.i32", -5);
    gguf_set_u64(w, "t.u64", 1ull << 40);
    gguf_set_f32(w, "t.f32", 0.1f);
    gguf_set_bool(w, "t.bool", true);
    gguf_set_arr(w, "t.ai32", GGUF_I32, ia, 5);
    gguf_set_arr(w, "t.af32", GGUF_F32, fa, 3);
    gguf_set_arr(w, "t.au8", GGUF_U8, &u8, 1);
    gguf_set_arr_str(w, "t.astr", sa, 4);
    gguf_set_arr(w, "t.empty", GGUF_I32, NULL, 0);
    /* sizes that need padding: 5 floats (20 B), a Q8_0 row (34 B), F16 3x7 (42 B) */
    const int64_t ne_a[1] = {5}, ne_b[2] = {32, 1}, ne_c[2] = {7, 3}, ne_d[3] = {256, 2, 1};
    TU_EXPECT(gguf_add_tensor(w, "a", 1, ne_a, 0, &e) == 0, "%s", e.msg);
    TU_EXPECT(gguf_add_tensor(w, "b.weight", 2, ne_b, 8, &e) == 0, "%s", e.msg);
    TU_EXPECT(gguf_add_tensor(w, "c", 2, ne_c, 1, &e) == 0, "%s", e.msg);
    TU_EXPECT(gguf_add_tensor(w, "d", 3, ne_d, 14, &e) == 0, "%s", e.msg);
    /* refused declarations */
    const int64_t bad_ne[2] = {100, 2};
    TU_EXPECT(gguf_add_tensor(w, "x", 2, bad_ne, 12, &e) == -1 && strstr(e.msg, "256"), "Q4_K row of 100: %s", e.msg);
    TU_EXPECT(gguf_add_tensor(w, "a", 1, ne_a, 0, &e) == -1, "duplicate tensor accepted");
    TU_EXPECT(gguf_add_tensor(w, "0123456789012345678901234567890123456789012345678901234567890123", 1, ne_a, 0, &e) == -1,
              "64-byte name accepted");
    TU_EXPECT(gguf_add_tensor(w, "y", 5, ne_d, 0, &e) == -1, "5 dims accepted");
    uint8_t da[20], db[34], dc[42], dd[420];
    for (size_t i = 0; i < sizeof da; i++) da[i] = (uint8_t)(i * 7 + 1);
    for (size_t i = 0; i < sizeof db; i++) db[i] = (uint8_t)(i * 5 + 2);
    for (size_t i = 0; i < sizeof dc; i++) dc[i] = (uint8_t)(i * 3 + 3);
    for (size_t i = 0; i < sizeof dd; i++) dd[i] = (uint8_t)(qt_rng_next(tu_rng()) >> 40);
    uint64_t want_size = gguf_writer_size(w);
    int rc = gguf_write_begin(w, path, &e);
    rc |= gguf_write_tensor(w, da, sizeof da, &e) | gguf_write_tensor(w, db, sizeof db, &e);
    rc |= gguf_write_tensor(w, dc, sizeof dc, &e) | gguf_write_tensor(w, dd, sizeof dd, &e);
    rc |= gguf_write_end(w, &e);
    TU_EXPECT(rc == 0, "%s", e.msg);
    gguf_writer_free(w);

    size_t len;
    uint8_t *raw = slurp(path, &len);
    TU_EXPECT(len == want_size, "file is %zu bytes, writer said %llu", len, (unsigned long long)want_size);
    TU_EXPECT(!memcmp(raw, "GGUF", 4) && raw[4] == 3 && rd64(raw + 8) == 4 && rd64(raw + 16) == 11, "header");
    /* data section: offsets 0, 32, 96 (34 -> 64), 160 (42 -> 64); file ends at data + 160 + 420 -> 448 */
    gguf_file f;
    TU_EXPECT(gguf_open(&f, path, &e) == 0, "%s", e.msg);
    if (f.map) {
        TU_EXPECT(f.alignment == 32 && f.data_start % 32 == 0 && f.data_start + 160 + 448 == len, "layout: data at %llu",
                  (unsigned long long)f.data_start);
        const uint64_t offs[4] = {0, 32, 96, 160};
        const uint8_t *datas[4] = {da, db, dc, dd};
        const size_t sizes[4] = {20, 34, 42, 420};
        for (int i = 0; i < 4; i++) {
            const gguf_tensor_info *t = &f.tensors[i];
            TU_EXPECT(t->offset == offs[i] && t->nbytes == sizes[i] && !memcmp(t->data, datas[i], sizes[i]),
                      "tensor %s: offset %llu, %llu bytes", t->name, (unsigned long long)t->offset,
                      (unsigned long long)t->nbytes);
            /* padding is zeros */
            for (uint64_t k = t->offset + t->nbytes; k < (i < 3 ? offs[i + 1] : 448); k++)
                TU_EXPECT(raw[f.data_start + k] == 0, "padding byte %llu", (unsigned long long)k);
        }
        TU_EXPECT(f.tensors[3].n_dims == 2 && f.tensors[3].ne[2] == 1, "trailing 1 dims dropped (ggml writes 2)");
        uint32_t u;
        float fl;
        const char *s;
        TU_EXPECT(gguf_get_u32(&f, "t.u32", &u, &e) == 0 && u == 4000000000u, "u32");
        TU_EXPECT(gguf_get_f32(&f, "t.f32", &fl, &e) == 0 && fl == 0.1f, "f32");
        TU_EXPECT(gguf_get_str(&f, "general.architecture", &s, &e) == 0 && !strcmp(s, "llama"), "str");
        TU_EXPECT(gguf_get_u32(&f, "t.i32", &u, &e) == -1 && strstr(e.msg, "INT32"), "type confusion: %s", e.msg);
        const gguf_kv *kv = gguf_find_kv(&f, "t.i32");
        TU_EXPECT(kv && gguf_kv_num(kv, 0) == -5, "i32");
        kv = gguf_find_kv(&f, "t.u64");
        TU_EXPECT(kv && gguf_kv_num(kv, 0) == (double)(1ull << 40), "u64");
        kv = gguf_find_kv(&f, "t.bool");
        TU_EXPECT(kv && kv->type == GGUF_BOOL && gguf_kv_num(kv, 0) == 1, "bool");
        kv = gguf_find_kv(&f, "t.ai32");
        for (int i = 0; kv && i < 5; i++) TU_EXPECT(gguf_kv_num(kv, (uint64_t)i) == ia[i], "ai32[%d]", i);
        kv = gguf_find_kv(&f, "t.af32");
        TU_EXPECT(kv && kv->n == 3 && gguf_kv_num(kv, 2) == (double)fa[2] && signbit(gguf_kv_num(kv, 1)), "af32");
        kv = gguf_find_kv(&f, "t.astr");
        for (int i = 0; kv && i < 4; i++) TU_EXPECT(!strcmp(kv->strs[i], sa[i]), "astr[%d]", i);
        kv = gguf_find_kv(&f, "t.empty");
        TU_EXPECT(kv && kv->n == 0 && kv->arr_type == GGUF_I32, "empty array");
        gguf_close(&f);
    }

    /* every truncation fails cleanly */
    char cut[512];
    path_in(cut, sizeof cut, "cut.gguf");
    int accepted = 0;
    const size_t data_end = len - (448 - 420); /* the last tensor's padding is optional (ggml) */
    for (size_t n = 0; n < len; n++) {
        spit(cut, raw, n);
        if (gguf_open(&f, cut, &e) == 0) accepted += n < data_end, gguf_close(&f);
    }
    TU_EXPECT(accepted == 0, "%d truncated files accepted", accepted);
    /* corruptions */
    /* (version 0x00030000 is a big-endian file's 3: low 16 bits zero) */
    struct { size_t at; uint8_t v; const char *what; } bad[] = {
        {0, 'X', "magic"}, {4, 4, "version 4"}, {4, 1, "version 1"}, {6, 3, "big-endian version"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        uint8_t *c = malloc(len);
        memcpy(c, raw, len);
        if (bad[k].at == 6) c[4] = 0;
        c[bad[k].at] = bad[k].v;
        spit(cut, c, len);
        TU_EXPECT(gguf_open(&f, cut, &e) == -1, "%s accepted", bad[k].what);
        free(c);
    }
    /* a tensor offset that is not the running padded sum: tensor "b" offset 32 -> 64 */
    uint8_t *c = malloc(len);
    memcpy(c, raw, len);
    size_t pos = 0;
    for (size_t i = 0; i + 8 < len; i++)
        if (!memcmp(c + i, "b.weight", 8)) {
            uint32_t nd;
            memcpy(&nd, c + i + 8, 4);
            pos = i + 8 + 4 + 8 * nd + 4; /* name, n_dims, ne[n_dims], type */
        }
    TU_EXPECT(pos && rd64(c + pos) == 32, "offset field of b.weight not found");
    c[pos] = 64;
    spit(cut, c, len);
    TU_EXPECT(gguf_open(&f, cut, &e) == -1 && strstr(e.msg, "running sum"), "moved offset: %s", e.msg);
    /* a duplicate key: rename t.i32 to t.u32 */
    memcpy(c, raw, len);
    for (size_t i = 0; i + 5 < len; i++)
        if (!memcmp(c + i, "t.i32", 5)) memcpy(c + i, "t.u32", 5);
    spit(cut, c, len);
    TU_EXPECT(gguf_open(&f, cut, &e) == -1 && strstr(e.msg, "twice"), "duplicate key: %s", e.msg);
    free(c);
    free(raw);
    unlink(cut);
    unlink(path);
}

/* ------------------------------------------------------------------ Llama-family pieces */

static void test_llama(void) {
    /* spec section 7: hd = 8 -> new rows = old 0,4,1,5,2,6,3,7 (per head) */
    float w[2 * 8 * 3], orig[2 * 8 * 3];
    for (int i = 0; i < 48; i++) w[i] = orig[i] = (float)i;
    gguf_permute_qk(w, 16, 3, 2, false);
    static const int order[8] = {0, 4, 1, 5, 2, 6, 3, 7};
    int bad = 0;
    for (int h = 0; h < 2; h++)
        for (int r = 0; r < 8; r++)
            for (int c = 0; c < 3; c++) bad += w[(h * 8 + r) * 3 + c] != orig[(h * 8 + order[r]) * 3 + c];
    gguf_permute_qk(w, 16, 3, 2, true);
    TU_EXPECT(bad == 0 && !memcmp(w, orig, sizeof w), "Q/K permutation (%d wrong) or its inverse", bad);

    static const char *names[][2] = {
        {"model.embed_tokens.weight", "token_embd.weight"}, {"lm_head.weight", "output.weight"},
        {"model.norm.weight", "output_norm.weight"}, {"model.layers.17.self_attn.o_proj.weight", "blk.17.attn_output.weight"},
        {"model.layers.0.self_attn.k_proj.bias", "blk.0.attn_k.bias"}, {"model.layers.3.mlp.down_proj.weight", "blk.3.ffn_down.weight"},
        {"model.layers.3.post_attention_layernorm.weight", "blk.3.ffn_norm.weight"},
        {"model.layers.2.input_layernorm.weight", "blk.2.attn_norm.weight"}};
    char out[64];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        TU_EXPECT(gguf_hf_name(names[i][0], out, sizeof out) == 0 && !strcmp(out, names[i][1]), "%s -> %s", names[i][0], out);
    TU_EXPECT(gguf_hf_name("model.layers.1.self_attn.rotary_emb.inv_freq", out, sizeof out) == -1, "inv_freq mapped");

    /* llama3 rope_freqs: the spec's formula in double (theta 5e5, f 8, lf 1, hf 4, C 64, hd 16) */
    hf_config c = {.arch = HF_LLAMA, .head_dim = 16};
    c.rope = (qt_rope){.head_dim = 16, .theta = 500000, .scaling = 2, .factor = 8, .low_freq_factor = 1,
                       .high_freq_factor = 4, .original_max_pos = 64};
    float rf[8];
    TU_EXPECT(gguf_rope_freqs(&c, rf), "llama3 config gives rope_freqs");
    int regimes[3] = {0};
    for (int j = 0; j < 8; j++) {
        double inv = 1.0 / pow(500000.0, 2.0 * j / 16), wl = 2 * M_PI / inv, want;
        if (wl < 64.0 / 4) want = 1, regimes[0]++;
        else if (wl > 64.0 / 1) want = 8, regimes[2]++;
        else {
            double s = (64.0 / wl - 1) / (4 - 1);
            want = 1 / ((1 - s) / 8 + s), regimes[1]++;
        }
        TU_EXPECT(fabs(rf[j] - want) <= 1e-5 * want, "rope_freqs[%d] = %g, want %g", j, (double)rf[j], want);
    }
    TU_EXPECT(regimes[0] && regimes[1] && regimes[2], "the case must hit all three regimes");
    c.rope.scaling = 0;
    TU_EXPECT(!gguf_rope_freqs(&c, rf), "no rope_freqs without llama3 scaling");
}

/* the committed byte-level (Llama-3 layout) tokenizer fixture, vocab padded to 3100 ids */
static void test_vocab(void) {
    char tok[512], path[512];
    snprintf(tok, sizeof tok, "%s/tests/fixtures/tokenizers/bytelevel-llama3.json", QT_SOURCE_DIR);
    if (access(tok, R_OK) != 0) {
        printf("  (no %s: tokenizer metadata not checked)\n", tok);
        return;
    }
    path_in(path, sizeof path, "vocab.gguf");
    hf_config c = {.arch = HF_LLAMA, .vocab_size = 3100, .bos_token_id = -1};
    qt_err e;
    gguf_writer *w = gguf_writer_new();
    int rc = gguf_set_tokenizer(w, tok, NULL, &c, &e);
    TU_EXPECT(rc == 0, "%s", e.msg);
    rc |= gguf_write_begin(w, path, &e) | gguf_write_end(w, &e);
    gguf_writer_free(w);
    gguf_file f;
    if (rc || gguf_open(&f, path, &e) != 0) {
        TU_EXPECT(0, "%s", e.msg);
        return;
    }
    const gguf_kv *toks = gguf_find_kv(&f, "tokenizer.ggml.tokens"), *types = gguf_find_kv(&f, "tokenizer.ggml.token_type");
    const gguf_kv *merges = gguf_find_kv(&f, "tokenizer.ggml.merges");
    const char *model = NULL, *pre = NULL;
    gguf_get_str(&f, "tokenizer.ggml.model", &model, &e);
    gguf_get_str(&f, "tokenizer.ggml.pre", &pre, &e);
    TU_EXPECT(model && !strcmp(model, "gpt2") && pre && !strcmp(pre, "llama-bpe"), "model %s pre %s", model, pre);
    TU_EXPECT(toks && toks->n == 3100 && types && types->n == 3100 && types->arr_type == GGUF_I32, "3100 tokens and types");
    TU_EXPECT(merges && merges->n == 2666, "2666 merges (%llu)", merges ? (unsigned long long)merges->n : 0ull);
    if (toks && types && merges) {
        TU_EXPECT(!strcmp(toks->strs[0], "<|begin_of_text|>") && gguf_kv_num(types, 0) == 3, "id 0 is a control token");
        TU_EXPECT(!strcmp(toks->strs[3099], "[PAD3099]") && gguf_kv_num(types, 3099) == 5, "padding ids");
        int normal = 0;
        for (int i = 0; i < 3100; i++) normal += gguf_kv_num(types, (uint64_t)i) == 1;
        TU_EXPECT(normal > 2500, "%d normal tokens", normal);
        TU_EXPECT(strchr(merges->strs[0], ' ') != NULL, "merge 0 '%s' is 'a b'", merges->strs[0]);
    }
    const gguf_kv *ab = gguf_find_kv(&f, "tokenizer.ggml.add_bos_token");
    TU_EXPECT(ab && ab->type == GGUF_BOOL && gguf_kv_num(ab, 0) == 1, "add_bos from the TemplateProcessing");
    gguf_close(&f);
    /* a model smaller than the tokenizer is refused */
    c.vocab_size = 1000;
    w = gguf_writer_new();
    TU_EXPECT(gguf_set_tokenizer(w, tok, NULL, &c, &e) == -1 && strstr(e.msg, "vocab_size"), "small vocab: %s", e.msg);
    gguf_writer_free(w);
    unlink(path);
}

int qt_test_cpu(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/qt_test_gguf.%d", (int)getpid());
    qt_err e;
    if (ck_mkdirs(tmpdir, &e) != 0) {
        printf("%s\n", e.msg);
        return 1;
    }
    test_round_trip();
    test_llama();
    test_vocab();
    rmdir(tmpdir);
    return 0;
}
