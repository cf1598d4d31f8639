/* Hugging Face config.json parsing and the tensor list a config implies.
 * Expected values come from the public config.json files of the models named below and
 * from the spec's tables (shared/specs/safetensors-peft.md sections 2-3). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoints/checkpoints.h"
#include "testutil.h"

static char g_dir[256];

static void cleanup(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
}

static const char *tmp(const char *name) {
    static char buf[4][512];
    static int k;
    char *b = buf[k++ % 4];
    snprintf(b, 512, "%s/%s", g_dir, name);
    return b;
}

static void write_text(const char *path, const char *s) {
    FILE *f = fopen(path, "w");
    QT_CHECK(f, "cannot create %s", path);
    fputs(s, f);
    fclose(f);
}

/* meta-llama/Llama-3.1-8B config.json (transformers 4.x form). */
static const char *LLAMA31_8B =
    "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"attention_bias\": false,\n  \"attention_dropout\": 0.0,\n"
    "  \"bos_token_id\": 128000,\n  \"eos_token_id\": 128001,\n  \"hidden_act\": \"silu\",\n  \"hidden_size\": 4096,\n"
    "  \"initializer_range\": 0.02,\n  \"intermediate_size\": 14336,\n  \"max_position_embeddings\": 131072,\n"
    "  \"mlp_bias\": false,\n  \"model_type\": \"llama\",\n  \"num_attention_heads\": 32,\n  \"num_hidden_layers\": 32,\n"
    "  \"num_key_value_heads\": 8,\n  \"pretraining_tp\": 1,\n  \"rms_norm_eps\": 1e-05,\n"
    "  \"rope_scaling\": {\"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,\n"
    "    \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"},\n  \"rope_theta\": 500000.0,\n"
    "  \"tie_word_embeddings\": false,\n  \"torch_dtype\": \"bfloat16\",\n  \"transformers_version\": \"4.43.0.dev0\",\n"
    "  \"use_cache\": true,\n  \"vocab_size\": 128256\n}\n";

/* The same model as transformers 5 save_pretrained writes it, Instruct eos list. */
static const char *LLAMA31_8B_V5 =
    "{\"architectures\":[\"LlamaForCausalLM\"],\"attention_bias\":false,\"bos_token_id\":128000,"
    "\"dtype\":\"bfloat16\",\"eos_token_id\":[128001,128008,128009],\"head_dim\":128,\"hidden_act\":\"silu\","
    "\"hidden_size\":4096,\"intermediate_size\":14336,\"max_position_embeddings\":131072,\"mlp_bias\":false,"
    "\"model_type\":\"llama\",\"num_attention_heads\":32,\"num_hidden_layers\":32,\"num_key_value_heads\":8,"
    "\"rms_norm_eps\":1e-05,\"rope_parameters\":{\"factor\":8.0,\"high_freq_factor\":4.0,\"low_freq_factor\":1.0,"
    "\"original_max_position_embeddings\":8192,\"rope_theta\":500000.0,\"rope_type\":\"llama3\"},"
    "\"tie_word_embeddings\":false,\"transformers_version\":\"5.17.0\",\"vocab_size\":128256}";

/* Qwen/Qwen2.5-0.5B. */
static const char *QWEN25_05B =
    "{\"architectures\":[\"Qwen2ForCausalLM\"],\"attention_dropout\":0.0,\"bos_token_id\":151643,"
    "\"eos_token_id\":151643,\"hidden_act\":\"silu\",\"hidden_size\":896,\"initializer_range\":0.02,"
    "\"intermediate_size\":4864,\"max_position_embeddings\":32768,\"max_window_layers\":24,\"model_type\":\"qwen2\","
    "\"num_attention_heads\":14,\"num_hidden_layers\":24,\"num_key_value_heads\":2,\"rms_norm_eps\":1e-06,"
    "\"rope_theta\":1000000.0,\"sliding_window\":32768,\"tie_word_embeddings\":true,\"torch_dtype\":\"bfloat16\","
    "\"transformers_version\":\"4.40.1\",\"use_cache\":true,\"use_sliding_window\":false,\"vocab_size\":151936}";

/* mistralai/Mistral-Nemo-Base-2407: head_dim 128 != 5120/32. */
static const char *MISTRAL_NEMO =
    "{\"architectures\":[\"MistralForCausalLM\"],\"attention_dropout\":0.0,\"bos_token_id\":1,\"eos_token_id\":2,"
    "\"head_dim\":128,\"hidden_act\":\"silu\",\"hidden_size\":5120,\"initializer_range\":0.02,"
    "\"intermediate_size\":14336,\"max_position_embeddings\":1024000,\"model_type\":\"mistral\","
    "\"num_attention_heads\":32,\"num_hidden_layers\":40,\"num_key_value_heads\":8,\"rms_norm_eps\":1e-05,"
    "\"rope_theta\":1000000.0,\"sliding_window\":null,\"tie_word_embeddings\":false,\"torch_dtype\":\"bfloat16\","
    "\"transformers_version\":\"4.43.0.dev0\",\"use_cache\":true,\"vocab_size\":131072}";

/* mistralai/Mistral-7B-v0.1: sliding window 4096, rope_theta 10000 (default, given). */
static const char *MISTRAL_7B =
    "{\"architectures\":[\"MistralForCausalLM\"],\"bos_token_id\":1,\"eos_token_id\":2,\"hidden_act\":\"silu\","
    "\"hidden_size\":4096,\"initializer_range\":0.02,\"intermediate_size\":14336,\"max_position_embeddings\":32768,"
    "\"model_type\":\"mistral\",\"num_attention_heads\":32,\"num_hidden_layers\":32,\"num_key_value_heads\":8,"
    "\"rms_norm_eps\":1e-05,\"rope_theta\":10000.0,\"sliding_window\":4096,\"tie_word_embeddings\":false,"
    "\"torch_dtype\":\"bfloat16\",\"transformers_version\":\"4.34.0.dev0\",\"use_cache\":true,\"vocab_size\":32000}";

/* TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T: no rope_theta (default), rope_scaling null. */
static const char *TINYLLAMA =
    "{\"_name_or_path\":\"meta-llama/Llama-2-7b-hf\",\"architectures\":[\"LlamaForCausalLM\"],\"bos_token_id\":1,"
    "\"eos_token_id\":2,\"hidden_act\":\"silu\",\"hidden_size\":2048,\"initializer_range\":0.02,"
    "\"intermediate_size\":5632,\"max_position_embeddings\":2048,\"model_type\":\"llama\",\"num_attention_heads\":32,"
    "\"num_hidden_layers\":22,\"num_key_value_heads\":4,\"pretraining_tp\":1,\"rms_norm_eps\":1e-05,"
    "\"rope_scaling\":null,\"tie_word_embeddings\":false,\"torch_dtype\":\"float32\","
    "\"transformers_version\":\"4.31.0.dev0\",\"use_cache\":true,\"vocab_size\":32000}";

/* Old-style linear scaling with "type" (e.g. lmsys/longchat-7b-16k). */
static const char *LINEAR_TYPE =
    "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":4096,\"intermediate_size\":11008,"
    "\"model_type\":\"llama\",\"num_attention_heads\":32,\"num_hidden_layers\":32,\"vocab_size\":32000,"
    "\"max_position_embeddings\":16384,\"rms_norm_eps\":1e-06,\"rope_scaling\":{\"factor\":8.0,\"type\":\"linear\"}}";

static hf_config parse_ok(const char *name, const char *json) {
    hf_config c;
    qt_err e = {{0}};
    int rc = hf_config_parse(&c, json, strlen(json), name, &e);
    TU_EXPECT(rc == 0, "%s: %s", name, e.msg);
    if (rc) memset(&c, 0, sizeof c);
    char d[256];
    if (!rc) printf("  %-14s %s\n", name, hf_config_describe(&c, d, sizeof d));
    return c;
}

static void good_configs(void) {
    /* Through a folder, like a user would give it. */
    mkdir(tmp("llama"), 0755);
    write_text(tmp("llama/config.json"), LLAMA31_8B);
    hf_config c;
    qt_err e = {{0}};
    TU_EXPECT(hf_config_load(&c, tmp("llama"), &e) == 0, "load folder: %s", e.msg);
    TU_EXPECT(c.arch == HF_LLAMA && !strcmp(c.model_type, "llama") && !strcmp(c.architecture, "LlamaForCausalLM"), "arch");
    TU_EXPECT(c.hidden_size == 4096 && c.intermediate_size == 14336 && c.num_hidden_layers == 32 &&
                  c.num_attention_heads == 32 && c.num_key_value_heads == 8 && c.head_dim == 128 && c.vocab_size == 128256,
              "Llama-3.1-8B sizes");
    TU_EXPECT(c.max_position_embeddings == 131072 && c.rms_norm_eps == 1e-5 && !c.tie_word_embeddings, "8B misc");
    TU_EXPECT(c.rope.theta == 500000.0 && c.rope.scaling == 2 && c.rope.factor == 8 && c.rope.low_freq_factor == 1 &&
                  c.rope.high_freq_factor == 4 && c.rope.original_max_pos == 8192 && c.rope.head_dim == 128,
              "llama3 rope");
    TU_EXPECT(c.bos_token_id == 128000 && c.n_eos == 1 && c.eos_token_ids[0] == 128001, "bos/eos");
    TU_EXPECT(!c.has_qkv_bias && !c.has_o_bias && !c.has_mlp_bias && !strcmp(c.dtype, "bfloat16"), "no biases, dtype");
    hf_config a = c;
    TU_EXPECT(hf_config_load(&c, tmp("llama/config.json"), &e) == 0 && !memcmp(&a, &c, sizeof c), "load file == folder");

    /* transformers 5 form parses to the same model. */
    c = parse_ok("llama31-v5", LLAMA31_8B_V5);
    TU_EXPECT(c.rope.theta == 500000.0 && c.rope.scaling == 2 && c.rope.factor == 8 && c.rope.original_max_pos == 8192 &&
                  c.rope.high_freq_factor == 4 && c.rope.low_freq_factor == 1,
              "rope_parameters form");
    TU_EXPECT(c.n_eos == 3 && c.eos_token_ids[0] == 128001 && c.eos_token_ids[1] == 128008 && c.eos_token_ids[2] == 128009,
              "eos list");
    TU_EXPECT(c.hidden_size == a.hidden_size && c.head_dim == a.head_dim && c.num_key_value_heads == 8 &&
                  !strcmp(c.dtype, "bfloat16"),
              "v5 sizes and dtype key");

    c = parse_ok("qwen2.5-0.5b", QWEN25_05B);
    TU_EXPECT(c.arch == HF_QWEN2 && c.has_qkv_bias && !c.has_o_bias && !c.has_mlp_bias && c.tie_word_embeddings, "qwen2 flags");
    TU_EXPECT(c.head_dim == 64 && c.num_key_value_heads == 2 && c.rope.theta == 1e6 && c.rope.scaling == 0 &&
                  c.rms_norm_eps == 1e-6 && c.sliding_window == 0 && c.vocab_size == 151936,
              "qwen2 values (use_sliding_window false -> no window)");

    c = parse_ok("mistral-nemo", MISTRAL_NEMO);
    TU_EXPECT(c.arch == HF_MISTRAL && c.head_dim == 128 && c.hidden_size == 5120 && c.num_attention_heads == 32 &&
                  c.rope.head_dim == 128 && c.sliding_window == 0 && c.max_position_embeddings == 1024000,
              "Mistral-Nemo head_dim 128 != 5120/32");
    c = parse_ok("mistral-7b", MISTRAL_7B);
    TU_EXPECT(c.sliding_window == 4096 && c.rope.theta == 10000 && c.head_dim == 128, "Mistral-7B window");

    c = parse_ok("tinyllama", TINYLLAMA);
    TU_EXPECT(c.hidden_size == 2048 && c.num_hidden_layers == 22 && c.num_key_value_heads == 4 && c.head_dim == 64 &&
                  c.rope.theta == 10000.0 && c.rope.scaling == 0 && !strcmp(c.dtype, "float32"),
              "TinyLlama defaults");

    c = parse_ok("linear-type", LINEAR_TYPE);
    TU_EXPECT(c.rope.scaling == 1 && c.rope.factor == 8 && c.num_key_value_heads == 32 && c.bos_token_id == -1 &&
                  c.n_eos == 0 && c.max_position_embeddings == 16384,
              "old 'type' key, nkv defaulting to heads");

    /* Optional keys at their defaults: a config with only the required ones. */
    c = parse_ok("minimal", "{\"model_type\":\"llama\",\"hidden_size\":96,\"intermediate_size\":160,"
                            "\"num_hidden_layers\":3,\"num_attention_heads\":6,\"num_key_value_heads\":null,"
                            "\"head_dim\":null,\"vocab_size\":301}");
    TU_EXPECT(c.num_key_value_heads == 6 && c.head_dim == 16 && c.rms_norm_eps == 1e-6 && c.rope.theta == 10000 &&
                  c.max_position_embeddings == 2048 && c.architecture[0] == 0,
              "defaults");
    /* Llama with attention_bias and mlp_bias. */
    c = parse_ok("llama-bias", "{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":96,"
                               "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
                               "\"vocab_size\":100,\"attention_bias\":true,\"mlp_bias\":true,\"rope_parameters\":"
                               "{\"rope_theta\":20000.0,\"rope_type\":\"default\"}}");
    TU_EXPECT(c.has_qkv_bias && c.has_o_bias && c.has_mlp_bias && c.rope.theta == 20000 && c.rope.scaling == 0, "biases");
}

typedef struct { const char *what, *json, *phrase; } bad_cfg;

/* Replace the first occurrence of `from` in LLAMA31_8B with `to`. */
static char *edit(const char *from, const char *to) {
    const char *s = LLAMA31_8B, *p = strstr(s, from);
    QT_CHECK(p, "test setup: '%s' not in the base config", from);
    char *out = malloc(strlen(s) + strlen(to) + 1);
    size_t k = (size_t)(p - s);
    memcpy(out, s, k);
    strcpy(out + k, to);
    strcat(out, p + strlen(from));
    return out;
}

static void bad_configs(void) {
    struct { const char *what, *from, *to, *phrase; } edits[] = {
        {"missing hidden_size", "\"hidden_size\": 4096,", "", "'hidden_size' is missing"},
        {"hidden_size as a string", "\"hidden_size\": 4096", "\"hidden_size\": \"4096\"", "'hidden_size' must be an integer, got a string"},
        {"hidden_size fraction", "\"hidden_size\": 4096", "\"hidden_size\": 4096.5", "'hidden_size' must be an integer, got a fraction"},
        {"hidden_act gelu", "\"silu\"", "\"gelu\"", "hidden_act 'gelu'"},
        {"rope_type yarn", "\"rope_type\": \"llama3\"", "\"rope_type\": \"yarn\"", "rope_type 'yarn' is not supported"},
        {"rope_type dynamic", "\"rope_type\": \"llama3\"", "\"type\": \"dynamic\"", "rope_type 'dynamic' is not supported"},
        {"llama3 without low_freq_factor", "\"low_freq_factor\": 1.0,", "", "'rope_scaling.low_freq_factor' is missing"},
        {"llama3 high <= low", "\"high_freq_factor\": 4.0", "\"high_freq_factor\": 0.5", "must be greater than low_freq_factor"},
        {"rope_scaling without type", ", \"rope_type\": \"llama3\"", "", "no 'rope_type'"},
        {"nh % nkv != 0", "\"num_key_value_heads\": 8", "\"num_key_value_heads\": 12", "not a multiple of num_key_value_heads"},
        {"nkv > nh", "\"num_key_value_heads\": 8", "\"num_key_value_heads\": 64", "not a multiple of num_key_value_heads"},
        {"hidden not divisible", "\"hidden_size\": 4096", "\"hidden_size\": 4100", "not divisible by num_attention_heads"},
        {"absurd hidden_size", "\"hidden_size\": 4096", "\"hidden_size\": 1e12", "'hidden_size' = 1000000000000 is outside"},
        {"absurd vocab", "\"vocab_size\": 128256", "\"vocab_size\": 2000000000", "'vocab_size' = 2000000000 is outside"},
        {"absurd layers", "\"num_hidden_layers\": 32", "\"num_hidden_layers\": 100000", "'num_hidden_layers' = 100000 is outside"},
        {"zero heads", "\"num_attention_heads\": 32", "\"num_attention_heads\": 0", "'num_attention_heads' = 0 is outside"},
        {"negative intermediate", "\"intermediate_size\": 14336", "\"intermediate_size\": -5", "'intermediate_size' = -5 is outside"},
        {"absurd total", "\"intermediate_size\": 14336", "\"intermediate_size\": 1048576, \"num_hidden_layers\": 1000", "parameters, more than"},
        {"odd head_dim", "\"hidden_size\": 4096,", "\"hidden_size\": 4096, \"head_dim\": 127,", "head_dim 127 is odd"},
        /* found by tests/fuzz: the default head_dim (hidden_size / heads) skipped the limit */
        {"default head_dim too large", "\"num_attention_heads\": 32,\n  \"num_hidden_layers\": 32,\n  \"num_key_value_heads\": 8",
         "\"num_attention_heads\": 2,\n  \"num_hidden_layers\": 32,\n  \"num_key_value_heads\": 2",
         "head_dim 2048 (hidden_size 4096 / num_attention_heads 2) is outside the supported range 2..1024"},
        {"eps zero", "\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": 0", "'rms_norm_eps' = 0 is outside"},
        {"theta as string", "\"rope_theta\": 500000.0", "\"rope_theta\": \"500000\"", "'rope_theta' must be a number, got a string"},
        {"model_type qwen3", "\"model_type\": \"llama\"", "\"model_type\": \"qwen3\"", "model_type 'qwen3' is not supported"},
        {"classification head", "\"LlamaForCausalLM\"", "\"LlamaForSequenceClassification\"", "architectures [\"LlamaForSequenceClassification\"] is not supported"},
        {"eos out of vocab", "\"eos_token_id\": 128001", "\"eos_token_id\": [128001, 999999]", "eos_token_id[1]"},
        {"eos a string", "\"eos_token_id\": 128001", "\"eos_token_id\": \"</s>\"", "'eos_token_id' must be an integer or a list"},
        {"bos out of vocab", "\"bos_token_id\": 128000", "\"bos_token_id\": 128256", "'bos_token_id' = 128256 is outside"},
        {"tie as string", "\"tie_word_embeddings\": false", "\"tie_word_embeddings\": \"no\"", "'tie_word_embeddings' must be true or false"},
        {"rope_scaling a list", "\"rope_scaling\": {", "\"rope_scaling\": [{", "'rope_scaling' must be null or an object"},
        {"not json", "\"vocab_size\": 128256\n}", "\"vocab_size\": 128256,\n}", "not valid JSON (error near line"},
    };
    qt_err e;
    hf_config c;
    for (size_t i = 0; i < sizeof edits / sizeof edits[0]; i++) {
        char *j = edit(edits[i].from, edits[i].to);
        if (!strcmp(edits[i].what, "rope_scaling a list")) { /* close the list too */
            char *q = strstr(j, "\"llama3\"}");
            memmove(q + 10, q + 9, strlen(q + 9) + 1);
            q[9] = ']';
        }
        memset(&e, 0, sizeof e);
        int rc = hf_config_parse(&c, j, strlen(j), "cfg.json", &e);
        TU_EXPECT(rc == -1 && strstr(e.msg, edits[i].phrase) && strstr(e.msg, "cfg.json"),
                  "%s: rc %d, '%s' should contain '%s'", edits[i].what, rc, e.msg, edits[i].phrase);
        if (getenv("QT_TEST_VERBOSE")) printf("  %-30s -> %s\n", edits[i].what, e.msg);
        free(j);
    }
    const char *whole[][2] = {
        {"[1,2]", "must hold a JSON object"},
        {"{}", "neither 'model_type' nor 'architectures'"},
        {"{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":96,\"num_hidden_layers\":2,"
         "\"num_attention_heads\":4,\"vocab_size\":100,\"rope_parameters\":{\"rope_type\":\"longrope\"}}",
         "rope_parameters.rope_type 'longrope' is not supported"},
    };
    for (size_t i = 0; i < sizeof whole / sizeof whole[0]; i++) {
        int rc = hf_config_parse(&c, whole[i][0], strlen(whole[i][0]), "w.json", &e);
        TU_EXPECT(rc == -1 && strstr(e.msg, whole[i][1]), "'%s': '%s' should contain '%s'", whole[i][0], e.msg, whole[i][1]);
    }
    TU_EXPECT(hf_config_load(&c, tmp("nope"), &e) == -1 && strstr(e.msg, "cannot open"), "missing file: %s", e.msg);

    /* Random damage never crashes; what parses stays inside the limits. */
    size_t n = strlen(LLAMA31_8B);
    char *m = malloc(n + 1);
    int parsed = 0;
    for (int it = 0; it < 3000; it++) {
        memcpy(m, LLAMA31_8B, n + 1);
        for (int k = 0; k < 3; k++) m[qt_rng_next(tu_rng()) % n] = "0123456789-.e{}[]\",: x"[qt_rng_next(tu_rng()) % 22];
        if (hf_config_parse(&c, m, n, "fuzz", &e) == 0) {
            parsed++;
            TU_EXPECT(c.hidden_size >= 1 && c.hidden_size <= HF_MAX_HIDDEN && c.vocab_size <= HF_MAX_VOCAB &&
                          c.num_attention_heads % c.num_key_value_heads == 0 && c.head_dim % 2 == 0,
                      "fuzz %d: out-of-range config accepted", it);
        }
    }
    free(m);
    printf("fuzz: %d of 3000 damaged configs still parsed, none crashed or escaped the limits\n", parsed);
}

/* Expected tensors (spec section 2 table) and the checkpoint check. */
static void tensors(void) {
    hf_config c = parse_ok("llama31-8b", LLAMA31_8B);
    hf_tensor_spec *s;
    int n = hf_expected_tensors(&c, &s);
    TU_EXPECT(n == 1 + 32 * 9 + 2, "8B: %d tensors, expected 291", n);
    struct { const char *name; int64_t d0, d1; } want[] = {
        {"model.embed_tokens.weight", 128256, 4096},
        {"model.layers.0.self_attn.q_proj.weight", 4096, 4096},
        {"model.layers.31.self_attn.k_proj.weight", 1024, 4096},
        {"model.layers.7.self_attn.v_proj.weight", 1024, 4096},
        {"model.layers.7.self_attn.o_proj.weight", 4096, 4096},
        {"model.layers.12.mlp.gate_proj.weight", 14336, 4096},
        {"model.layers.12.mlp.up_proj.weight", 14336, 4096},
        {"model.layers.12.mlp.down_proj.weight", 4096, 14336},
        {"model.layers.3.input_layernorm.weight", 4096, 0},
        {"model.layers.3.post_attention_layernorm.weight", 4096, 0},
        {"model.norm.weight", 4096, 0},
        {"lm_head.weight", 128256, 4096},
    };
    for (size_t w = 0; w < sizeof want / sizeof want[0]; w++) {
        int hit = -1;
        for (int i = 0; i < n; i++)
            if (!strcmp(s[i].name, want[w].name)) hit = i;
        TU_EXPECT(hit >= 0 && s[hit].shape[0] == want[w].d0 && s[hit].ndim == (want[w].d1 ? 2 : 1) &&
                      (!want[w].d1 || s[hit].shape[1] == want[w].d1),
                  "%s", want[w].name);
    }
    free(s);
    /* 70B: 723 tensors; Mistral-Nemo q_proj uses head_dim; Qwen2 biases, tied -> no lm_head. */
    char *j70 = edit("\"hidden_size\": 4096", "\"hidden_size\": 8192");
    char *t = j70;
    const char *fr[3] = {"\"intermediate_size\": 14336", "\"num_attention_heads\": 32", "\"num_hidden_layers\": 32"};
    const char *to[3] = {"\"intermediate_size\": 28672", "\"num_attention_heads\": 64", "\"num_hidden_layers\": 80"};
    for (int k = 0; k < 3; k++) {
        char *p = strstr(t, fr[k]);
        memcpy(p, to[k], strlen(to[k])); /* same lengths */
    }
    c = parse_ok("llama31-70b", t);
    n = hf_expected_tensors(&c, &s);
    TU_EXPECT(n == 723 && c.head_dim == 128, "70B: %d tensors, expected 723", n);
    free(s);
    free(j70);
    c = parse_ok("mistral-nemo", MISTRAL_NEMO);
    n = hf_expected_tensors(&c, &s);
    TU_EXPECT(!strcmp(s[2].name, "model.layers.0.self_attn.q_proj.weight") && s[2].shape[0] == 4096 && s[2].shape[1] == 5120 &&
                  !strcmp(s[5].name, "model.layers.0.self_attn.o_proj.weight") && s[5].shape[0] == 5120 && s[5].shape[1] == 4096,
              "Nemo q_proj [4096,5120], o_proj [5120,4096]");
    free(s);
    c = parse_ok("qwen2.5-0.5b", QWEN25_05B);
    n = hf_expected_tensors(&c, &s);
    TU_EXPECT(n == 1 + 24 * 12 + 1, "Qwen2.5-0.5B: %d tensors, expected 290 (3 biases per layer, tied)", n);
    bool lm = false, qb = false, ob = false;
    for (int i = 0; i < n; i++) {
        lm |= !strcmp(s[i].name, "lm_head.weight");
        if (!strcmp(s[i].name, "model.layers.23.self_attn.k_proj.bias")) qb = s[i].ndim == 1 && s[i].shape[0] == 128;
        ob |= strstr(s[i].name, "o_proj.bias") != NULL;
    }
    TU_EXPECT(!lm && qb && !ob, "Qwen2: no lm_head (tied), k_proj.bias [128], no o_proj bias");
    free(s);

    /* A tiny checkpoint written from the expected list, then broken one way at a time. */
    c = parse_ok("tiny", "{\"model_type\":\"llama\",\"hidden_size\":24,\"intermediate_size\":40,\"num_hidden_layers\":2,"
                         "\"num_attention_heads\":6,\"num_key_value_heads\":2,\"vocab_size\":37}");
    n = hf_expected_tensors(&c, &s);
    mkdir(tmp("tiny"), 0755);
    st_wtensor *w = calloc((size_t)n + 2, sizeof *w);
    uint16_t *buf = calloc(37 * 40, sizeof *buf);
    for (int i = 0; i < 37 * 40; i++) buf[i] = qt_f32_to_bf16((float)qt_rng_normal(tu_rng()));
    for (int i = 0; i < n; i++)
        w[i] = (st_wtensor){.name = s[i].name, .dtype = ST_BF16, .ndim = s[i].ndim, .shape = {s[i].shape[0], s[i].shape[1]}, .data = buf};
    qt_err e;
    st_model m;
    int rc;
#define CHECK_CKPT(NW, EXPECT_OK, PHRASE, WHAT)                                                                         \
    TU_EXPECT(st_write(tmp("tiny/model.safetensors"), w, NW, NULL, 0, &e) == 0, "%s", e.msg);                       \
    TU_EXPECT(st_model_open(&m, tmp("tiny"), &e) == 0, "%s", e.msg);                                                \
    rc = hf_check_tensors(&c, &m, &e);                                                                              \
    TU_EXPECT(EXPECT_OK ? rc == 0 : (rc == -1 && strstr(e.msg, PHRASE) != NULL), "%s: rc %d '%s'", WHAT, rc, e.msg); \
    st_model_close(&m);
    CHECK_CKPT(n, true, "", "complete checkpoint");
    w[n] = (st_wtensor){.name = "model.layers.1.self_attn.rotary_emb.inv_freq", .dtype = ST_F32, .ndim = 1, .shape = {2}, .data = buf};
    CHECK_CKPT(n + 1, true, "", "inv_freq is ignored");
    w[n] = (st_wtensor){.name = "model.layers.0.self_attn.q_norm.weight", .dtype = ST_BF16, .ndim = 1, .shape = {4}, .data = buf};
    CHECK_CKPT(n + 1, false, "unexpected tensor model.layers.0.self_attn.q_norm.weight", "extra tensor");
    st_wtensor keep = w[7];
    w[7] = w[n - 1];
    CHECK_CKPT(n - 1, false, keep.name, "missing tensor");
    w[7] = keep;
    w[5].shape[1] = 23;
    CHECK_CKPT(n, false, "model.layers.0.self_attn.o_proj.weight BF16[24,23]", "mis-shaped tensor");
    w[5].shape[1] = 24;
    w[3].dtype = ST_I8;
    CHECK_CKPT(n, false, "not a float tensor", "int8 weight");
    w[3].dtype = ST_BF16;
    /* Tied config: lm_head absent is fine, present with the embedding's shape too. */
    c.tie_word_embeddings = true;
    CHECK_CKPT(n, true, "", "tied with lm_head present");
    CHECK_CKPT(n - 1, true, "", "tied without lm_head");
#undef CHECK_CKPT
    free(w);
    free(buf);
    free(s);
}

int qt_test_cpu(void) {
    const char *base = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/qt_hf_XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(g_dir)) {
        fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    atexit(cleanup);
    good_configs();
    bad_configs();
    tensors();
    return 0;
}
