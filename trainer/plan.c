/* The memory planner: before anything is allocated, every device byte a run will take is
 * planned against memory.gpu_budget — weights (resident or streamed), LoRA parameters and
 * gradients, optimizer state, activations, op workspace, library overhead — and a run that
 * cannot fit is refused with the numbers, never left to die of out-of-memory mid-way. */
#include <stdio.h>
#include <string.h>

#include "plan.h"

#define MiB ((size_t)1 << 20)
#define GiB ((size_t)1 << 30)

/* CUDA context, cuBLAS/cuBLASLt handles and workspace, streams, events and the GPU's
 * mapping of pinned host memory: measured 0.62 GiB (everything resident) and 0.68 GiB
 * (70B with 21.7 GiB of pinned host memory) on the H100, driver 580. */
#define CUDA_OVERHEAD (768 * MiB)

static size_t lora_bytes(const hf_config *h, const qt_config *cfg) {
    int64_t H = h->hidden_size, I = h->intermediate_size, hd = h->head_dim, r = cfg->lora.r;
    int64_t qd = (int64_t)h->num_attention_heads * hd, kvd = (int64_t)h->num_key_value_heads * hd;
    const int64_t in[LIN_N] = {H, H, H, qd, H, H, I}, out[LIN_N] = {qd, kvd, kvd, H, I, I, H};
    int64_t n = 0;
    for (int k = 0; k < LIN_N; k++)
        if (cfg->lora.targets & (1u << k)) n += r * (in[k] + out[k]);
    return (size_t)n * (size_t)h->num_hidden_layers * 4; /* F32 */
}

/* STEP bytes of one micro-batch's forward + backward. With checkpointing: each layer's
 * input stays for the step (L·N·H) and the chain of input gradients reuses two buffers
 * (autograd/tape.c); one layer's recomputed activations (normed inputs, q/k/v before and
 * after RoPE, attention output, the three MLP intermediates, residual sums, LoRA's rank-r
 * products) and the gradients alive while it runs backward; the loss chunks (64 MiB of
 * logits, their gradient, the f32 softmax state). Bench run 3 measured 1.77 GiB for
 * step + work on the Llama-3-8B shape at B=1 T=2048 before input gradients were reused
 * (0.5 GiB of it); this gives 1.6 GiB there. */
size_t qt_plan_layer_bytes(const hf_config *h, int64_t B, int64_t T, qt_dtype dt) {
    size_t es = qt_dtype_size(dt), N = (size_t)(B * T);
    size_t H = (size_t)h->hidden_size, I = (size_t)h->intermediate_size, hd = (size_t)h->head_dim;
    size_t qd = (size_t)h->num_attention_heads * hd, kvd = (size_t)h->num_key_value_heads * hd;
    return N * es * (10 * H + 4 * qd + 3 * kvd + 6 * I) + N * 4 * (size_t)h->num_attention_heads;
}

size_t qt_plan_step_bytes(const hf_config *h, int64_t B, int64_t T, qt_dtype dt, bool checkpointing) {
    size_t es = qt_dtype_size(dt), N = (size_t)(B * T), H = (size_t)h->hidden_size;
    size_t L = (size_t)h->num_hidden_layers;
    size_t layer = qt_plan_layer_bytes(h, B, T, dt);
    size_t kept = checkpointing ? (L + 2) * N * H * es + layer : L * layer;
    size_t loss = 4 * 64 * MiB + N * (H * es + 8);
    return (kept + loss) / 20 * 23 + 64 * MiB; /* +15% and a little */
}

static const char *gib(size_t b, char *buf) {
    snprintf(buf, 24, "%.2f GiB", (double)b / (double)GiB);
    return buf;
}

int qt_plan_memory(const qt_config *cfg, const hf_config *h, llm_load_opts *lo, qt_ctx_opts *co, qt_mem_plan *p,
                   qt_err *e) {
    memset(p, 0, sizeof *p);
    size_t es = qt_dtype_size(lo->dtype);
    int L = h->num_hidden_layers;
    p->layers = L;
    p->layer_bytes = lo->nf4 ? llm_layer_nf4_bytes(h, lo->double_quant)
                             : (size_t)(h->hidden_size * ((int64_t)h->num_attention_heads * h->head_dim * 2 +
                                                          (int64_t)h->num_key_value_heads * h->head_dim * 2 +
                                                          3 * h->intermediate_size)) * es;
    size_t norms = (size_t)(2 * L + 1) * (size_t)h->hidden_size * es + (size_t)(2 * L + 1) * 256;
    if (h->has_qkv_bias || h->has_o_bias || h->has_mlp_bias) norms += p->layer_bytes / 64; /* biases: small */
    p->embed_bytes = (size_t)h->vocab_size * (size_t)h->hidden_size * es;
    p->head_bytes = (h->tie_word_embeddings ? 0 : p->embed_bytes) + norms;
    p->lora_bytes = 2 * lora_bytes(h, cfg); /* params + grads */
    p->opt_bytes = cfg->memory.paged_optimizer ? 2 * (size_t)cfg->memory.optimizer_gpu_bytes : p->lora_bytes;
    p->work_bytes = (size_t)(h->intermediate_size * h->hidden_size) * es + MiB;
    p->step_bytes = qt_plan_step_bytes(h, cfg->train.micro_batch, cfg->data.seq_len, lo->dtype,
                                       cfg->train.grad_checkpointing);
    size_t slack = 64 * MiB;
    co->work_budget = p->work_bytes;
    if (co->dev == QT_CPU) { /* no budget to plan against: everything resident, STEP reserved lazily */
        p->resident = L;
        co->persist_budget = (size_t)L * p->layer_bytes + p->embed_bytes + p->head_bytes + p->lora_bytes +
                             p->opt_bytes + slack;
        co->step_budget = (size_t)16 << 30; /* reserved, not committed (MAP_NORESERVE) */
        return 0;
    }
    p->budget = cfg->memory.gpu_budget;
    p->overhead = CUDA_OVERHEAD;
    if (p->budget == 0) { /* auto: what the device has free, less 1 GiB for others */
        size_t freeb = qt_cuda_mem_free();
        p->budget = freeb > GiB ? freeb - GiB : freeb;
        p->budget_auto = true;
    }
    char b1[24], b2[24], b3[24];
    size_t fixed = p->overhead + p->head_bytes + p->lora_bytes + p->opt_bytes + p->work_bytes + p->step_bytes + slack;
    size_t all = fixed + p->embed_bytes + (size_t)L * p->layer_bytes;
    qt_tristate st = cfg->memory.stream_layers;
    if (st != QT_TRI_ON && all <= p->budget) { /* everything resident; STEP gets what is left */
        p->resident = L;
        p->step_bytes += p->budget - all;
    } else {
        if (st == QT_TRI_OFF)
            return qt_errf(e, "the model does not fit memory.gpu_budget %s: it needs %s with every layer resident "
                              "(memory.stream_layers is false); set memory.stream_layers: auto to stream the layers "
                              "that do not fit from host memory, or raise the budget",
                           gib(p->budget, b1), gib(all, b2));
        if (!lo->nf4)
            return qt_errf(e, "the model does not fit memory.gpu_budget %s (it needs %s); layer streaming needs "
                              "quant.type: nf4", gib(p->budget, b1), gib(all, b2));
        if (!cfg->train.grad_checkpointing)
            return qt_errf(e, "the model does not fit memory.gpu_budget %s with every layer resident (it needs %s); "
                              "streaming layers needs train.grad_checkpointing: true (backward re-runs each layer "
                              "right after uploading it)", gib(p->budget, b1), gib(all, b2));
        p->embed_on_host = !h->tie_word_embeddings;
        size_t need = fixed + (p->embed_on_host ? 0 : p->embed_bytes);
        size_t room = need < p->budget ? p->budget - need : 0;
        if (st != QT_TRI_ON && (size_t)L * p->layer_bytes <= room) {
            p->resident = L; /* moving the embedding table to the host was enough */
        } else if (room < 2 * p->layer_bytes) {
            return qt_errf(e, "memory.gpu_budget %s is too small even with every layer streamed from host memory: "
                              "the rest needs %s (activations %s at micro_batch %lld x seq_len %lld); lower "
                              "train.micro_batch or data.seq_len, use memory.paged_optimizer: true, or raise the budget",
                           gib(p->budget, b1), gib(need + 2 * p->layer_bytes, b2), gib(p->step_bytes, b3),
                           (long long)cfg->train.micro_batch, (long long)cfg->data.seq_len);
        } else {
            p->slot_bytes = 2 * p->layer_bytes;
            room -= p->slot_bytes;
            size_t fit = room / p->layer_bytes;
            p->resident = st == QT_TRI_ON ? 0 : (int)(fit < (size_t)L - 1 ? fit : (size_t)L - 1);
        }
        p->step_bytes += room - (size_t)p->resident * p->layer_bytes; /* the remainder: activation slack */
    }
    p->streamed = L - p->resident;
    p->host_bytes = (size_t)p->streamed * p->layer_bytes + (p->embed_on_host ? p->embed_bytes : 0);
    lo->streamed_layers = p->streamed;
    lo->embed_on_host = p->embed_on_host;
    co->persist_budget = (size_t)p->resident * p->layer_bytes + (p->embed_on_host ? 0 : p->embed_bytes) +
                         p->head_bytes + p->lora_bytes + p->opt_bytes + p->slot_bytes + slack;
    co->step_budget = p->step_bytes;
    return 0;
}

void qt_plan_print(const qt_mem_plan *p, FILE *f) {
    if (p->budget == 0) return; /* CPU */
    char b[24];
    double G = (double)GiB;
    fprintf(f, "qtrain: GPU memory plan for a budget of %s%s:\n", gib(p->budget, b), p->budget_auto ? " (auto)" : "");
    fprintf(f, "  %-38s %8.2f GiB\n", "CUDA context, cuBLAS (estimate)", (double)p->overhead / G);
    if (p->embed_on_host)
        fprintf(f, "  %-38s %8s     (%.2f GiB of pinned host memory, read in place)\n", "embedding table", "host",
                (double)p->embed_bytes / G);
    else
        fprintf(f, "  %-38s %8.2f GiB\n", "embedding table", (double)p->embed_bytes / G);
    fprintf(f, "  %-38s %8.2f GiB\n", "lm_head and norms", (double)p->head_bytes / G);
    char what[64];
    snprintf(what, sizeof what, "layers resident: %d of %d", p->resident, p->layers);
    fprintf(f, "  %-38s %8.2f GiB\n", what, (double)p->resident * (double)p->layer_bytes / G);
    if (p->streamed)
        fprintf(f, "  %-38s %8.2f GiB  (%d layers stream from %.2f GiB of pinned host memory)\n",
                "streaming slots (2 layers)", (double)p->slot_bytes / G, p->streamed,
                (double)p->streamed * (double)p->layer_bytes / G);
    fprintf(f, "  %-38s %8.2f GiB\n", "LoRA parameters and gradients", (double)p->lora_bytes / G);
    fprintf(f, "  %-38s %8.2f GiB\n", "AdamW state on the GPU", (double)p->opt_bytes / G);
    fprintf(f, "  %-38s %8.2f GiB\n", "activations (step pool)", (double)p->step_bytes / G);
    fprintf(f, "  %-38s %8.2f GiB\n", "dequantized weight (op work)", (double)p->work_bytes / G);
}

void qt_keep_ctl_step(qt_keep_ctl *k, llm_model *m, const qt_ctx *c) {
    if (!k->enabled || !m->grad_checkpointing || k->phase == 2) return;
    const qt_arena *a = &c->data[QT_STEP];
    size_t margin = a->cap / 20;
    if (k->phase == 0) { /* try one layer only where even twice the estimate fits */
        k->p1 = a->peak;
        k->phase = a->cap > k->p1 + margin + 2 * k->layer_est && llm_keep_activations(m, 1) == 1 ? 1 : 2;
        k->kept = k->phase == 1;
        return;
    }
    k->phase = 2;
    k->per_layer = a->peak > k->p1 ? a->peak - k->p1 : 1;
    size_t room = a->cap > k->p1 + margin + k->per_layer ? a->cap - k->p1 - margin - k->per_layer : 0;
    size_t n = room / k->per_layer;
    k->kept = llm_keep_activations(m, n > (size_t)m->cfg.num_hidden_layers ? m->cfg.num_hidden_layers : (int)n);
    fprintf(stderr, "qtrain: %d of %d layers keep their activations for backward (%.2f GiB each, measured); the rest "
                    "recompute them\n", k->kept, m->cfg.num_hidden_layers, (double)k->per_layer / (double)GiB);
}
