/* Which ggml type each tensor of a GGUF gets, for the file types qtrain writes: the part of
 * llama.cpp's llama_tensor_get_type (src/llama-quant.cpp) that applies to dense llama /
 * qwen2 models and the Q4_K_M, Q5_K_M, Q6_K and Q8_0 mixes (shared/specs/gguf.md section 6).
 * The rule is spelled out in quant.h. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

static const struct { kq_ftype f; const char *name; } ftypes[] = {
    {KQ_FTYPE_F32, "F32"},       {KQ_FTYPE_F16, "F16"},       {KQ_FTYPE_BF16, "BF16"}, {KQ_FTYPE_Q8_0, "Q8_0"},
    {KQ_FTYPE_Q6_K, "Q6_K"},     {KQ_FTYPE_Q5_K_M, "Q5_K_M"}, {KQ_FTYPE_Q4_K_M, "Q4_K_M"},
};
#define N_FTYPES (int)(sizeof ftypes / sizeof ftypes[0])

const char *kq_ftype_name(kq_ftype f) {
    for (int i = 0; i < N_FTYPES; i++)
        if (ftypes[i].f == f) return ftypes[i].name;
    return "?";
}

int kq_ftype_parse(const char *s, kq_ftype *out, qt_err *e) {
    for (int i = 0; i < N_FTYPES; i++)
        if (!strcasecmp(s, ftypes[i].name)) {
            *out = ftypes[i].f;
            return 0;
        }
    return qt_errf(e, "unknown GGUF type '%s': choose Q4_K_M, Q5_K_M, Q6_K, Q8_0, F16, BF16 or F32", s);
}

bool kq_use_more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !memcmp(s + a - b, suf, b);
}

/* "blk.12.attn_v.weight" -> 12 when the rest is `part`; else -1. */
static int layer_of(const char *name, const char *part) {
    if (strncmp(name, "blk.", 4) || !isdigit((unsigned char)name[4])) return -1;
    char *end;
    long i = strtol(name + 4, &end, 10);
    if (*end != '.' || strcmp(end + 1, part)) return -1;
    return (int)i;
}

kq_type kq_tensor_type(kq_ftype f, const char *name, int n_dims, const int64_t *ne, const kq_model_info *mi) {
    bool quantize = ends_with(name, "weight") && n_dims >= 2 && !strstr(name, "_norm.weight") &&
                    !strstr(name, "rope_freqs") && !strstr(name, "ffn_gate_inp");
    if (!quantize) return KQ_F32;
    kq_type t;
    switch (f) {
    case KQ_FTYPE_F32: return KQ_F32;
    case KQ_FTYPE_F16: return KQ_F16;
    case KQ_FTYPE_BF16: return KQ_BF16;
    case KQ_FTYPE_Q8_0: t = KQ_Q8_0; break;
    case KQ_FTYPE_Q6_K: t = KQ_Q6_K; break;
    case KQ_FTYPE_Q5_K_M: t = KQ_Q5_K; break;
    case KQ_FTYPE_Q4_K_M: t = KQ_Q4_K; break;
    default: QT_CHECK(0, "unknown file type %d", (int)f);
    }
    const bool k_mix = f == KQ_FTYPE_Q4_K_M || f == KQ_FTYPE_Q5_K_M;
    const bool is_output = !strcmp(name, "output.weight") || (!mi->has_output && !strcmp(name, "token_embd.weight"));
    int il;
    if (is_output) {
        /* the divisibility test uses the file type's default block, as llama.cpp does */
        if (ne[0] % kq_block_elems(t) != 0) t = KQ_Q8_0;
        else if (t != KQ_Q8_0) t = KQ_Q6_K;
    } else if (k_mix && (il = layer_of(name, "attn_v.weight")) >= 0) {
        if (kq_use_more_bits(il, mi->n_layer)) t = KQ_Q6_K;
        if (mi->is_70b && t == KQ_Q4_K) t = KQ_Q5_K;
    } else if (k_mix && (il = layer_of(name, "ffn_down.weight")) >= 0) {
        if (kq_use_more_bits(il, mi->n_layer)) t = KQ_Q6_K;
    }
    if (ne[0] % kq_block_elems(t) != 0) {
        if (t == KQ_Q4_K) t = KQ_Q5_0;
        else if (t == KQ_Q5_K) t = KQ_Q5_1;
        else if (t == KQ_Q6_K) t = KQ_Q8_0;
        if (ne[0] % kq_block_elems(t) != 0) t = KQ_F16;
    }
    return t;
}
