/* The Llama-family side of GGUF (shared/specs/gguf.md section 7): how Hugging Face tensors
 * are named and laid out for llama.cpp's `llama` (Llama, Mistral) and `qwen2` architectures,
 * the hyperparameter keys, and llama3 RoPE scaling expressed as the rope_freqs tensor. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints.h"

const char *gguf_arch_name(const hf_config *c) { return c->arch == HF_QWEN2 ? "qwen2" : "llama"; }

/* llama.cpp's `llama` rope rotates adjacent pairs; HF rotates halves. qwen2 uses the NEOX
 * (halves) rope in llama.cpp, so its weights stay as they are. */
bool gguf_arch_permutes_qk(const hf_config *c) { return c->arch != HF_QWEN2; }

static const struct { const char *hf, *gg; } layer_names[] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},   {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.weight", "attn_k.weight"},   {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.weight", "attn_v.weight"},   {"self_attn.v_proj.bias", "attn_v.bias"},
    {"self_attn.o_proj.weight", "attn_output.weight"}, {"self_attn.o_proj.bias", "attn_output.bias"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},    {"mlp.gate_proj.bias", "ffn_gate.bias"},
    {"mlp.up_proj.weight", "ffn_up.weight"},        {"mlp.up_proj.bias", "ffn_up.bias"},
    {"mlp.down_proj.weight", "ffn_down.weight"},    {"mlp.down_proj.bias", "ffn_down.bias"},
};

int gguf_hf_name(const char *hf, char *out, size_t n) {
    if (!strcmp(hf, "model.embed_tokens.weight")) return snprintf(out, n, "token_embd.weight"), 0;
    if (!strcmp(hf, "model.norm.weight")) return snprintf(out, n, "output_norm.weight"), 0;
    if (!strcmp(hf, "lm_head.weight")) return snprintf(out, n, "output.weight"), 0;
    const char *p = "model.layers.";
    if (strncmp(hf, p, strlen(p)) || !isdigit((unsigned char)hf[strlen(p)])) return -1;
    char *end;
    long l = strtol(hf + strlen(p), &end, 10);
    if (*end != '.') return -1;
    for (size_t i = 0; i < sizeof layer_names / sizeof layer_names[0]; i++)
        if (!strcmp(end + 1, layer_names[i].hf)) {
            snprintf(out, n, "blk.%ld.%s", l, layer_names[i].gg);
            return 0;
        }
    return -1;
}

/* Rows of a [n_head * hd, cols] matrix (a bias: cols = 1): head h's rows (h hd + t hd/2 + j)
 * move to (h hd + 2j + t), or back when inverse. */
void gguf_permute_qk(float *w, int64_t rows, int64_t cols, int n_head, bool inverse) {
    QT_CHECK(n_head > 0 && rows % n_head == 0 && (rows / n_head) % 2 == 0, "permute: %lld rows, %d heads",
             (long long)rows, n_head);
    const int64_t hd = rows / n_head, half = hd / 2;
    float *tmp = malloc((size_t)(hd * cols) * sizeof *tmp);
    QT_CHECK(tmp, "out of host memory");
    for (int h = 0; h < n_head; h++) {
        float *head = w + h * hd * cols;
        memcpy(tmp, head, (size_t)(hd * cols) * sizeof *tmp);
        for (int64_t j = 0; j < half; j++)
            for (int t = 0; t < 2; t++) {
                int64_t hf_row = t * half + j, gg_row = 2 * j + t;
                int64_t dst = inverse ? hf_row : gg_row, src = inverse ? gg_row : hf_row;
                memcpy(head + dst * cols, tmp + src * cols, (size_t)cols * sizeof *tmp);
            }
    }
    free(tmp);
}

bool gguf_rope_freqs(const hf_config *c, float *out) {
    const qt_rope *r = &c->rope;
    if (c->arch == HF_QWEN2 || r->scaling != 2) return false;
    /* convert_hf_to_gguf.py: float32 frequencies, wavelengths and smoothing (torch scalars) */
    const int d = c->head_dim;
    const float C = (float)r->original_max_pos, f = (float)r->factor;
    const float lf = (float)r->low_freq_factor, hf = (float)r->high_freq_factor;
    const float low_wl = C / lf, high_wl = C / hf;
    for (int j = 0; j < d / 2; j++) {
        float freq = 1.0f / powf((float)r->theta, (float)(2 * j) / (float)d);
        float wavelen = (float)(2 * M_PI) / freq;
        if (wavelen < high_wl) out[j] = 1.0f;
        else if (wavelen > low_wl) out[j] = f;
        else {
            float smooth = (C / wavelen - lf) / (hf - lf);
            out[j] = 1.0f / ((1 - smooth) / f + smooth);
        }
    }
    return true;
}

void gguf_set_model_meta(gguf_writer *w, const hf_config *c) {
    const char *a = gguf_arch_name(c);
    char k[128];
#define KEY(s) (snprintf(k, sizeof k, "%s.%s", a, s), k)
    gguf_set_u32(w, KEY("vocab_size"), (uint32_t)c->vocab_size);
    gguf_set_u32(w, KEY("context_length"), (uint32_t)c->max_position_embeddings);
    gguf_set_u32(w, KEY("embedding_length"), (uint32_t)c->hidden_size);
    gguf_set_u32(w, KEY("block_count"), (uint32_t)c->num_hidden_layers);
    gguf_set_u32(w, KEY("feed_forward_length"), (uint32_t)c->intermediate_size);
    gguf_set_u32(w, KEY("attention.head_count"), (uint32_t)c->num_attention_heads);
    gguf_set_u32(w, KEY("attention.head_count_kv"), (uint32_t)c->num_key_value_heads);
    gguf_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), (float)c->rms_norm_eps);
    gguf_set_f32(w, KEY("rope.freq_base"), (float)c->rope.theta);
    gguf_set_u32(w, KEY("rope.dimension_count"), (uint32_t)c->head_dim);
    if (c->head_dim * c->num_attention_heads != c->hidden_size) {
        gguf_set_u32(w, KEY("attention.key_length"), (uint32_t)c->head_dim);
        gguf_set_u32(w, KEY("attention.value_length"), (uint32_t)c->head_dim);
    }
    if (c->rope.scaling == 1) {
        gguf_set_str(w, KEY("rope.scaling.type"), "linear");
        gguf_set_f32(w, KEY("rope.scaling.factor"), (float)c->rope.factor);
    }
#undef KEY
}
