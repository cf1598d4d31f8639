/* The memory planner (trainer/plan.c), on the CPU: it needs no GPU to plan against a set
 * budget. Plans must fit the budget, stream exactly the layers that do not fit, refuse
 * with the key to change when nothing fits, and its per-layer size must be what loading
 * really takes (measured on a synthetic model whose layers all stream). */
#include <string.h>

#include "testutil.h"
#include "trainer/plan.h"

static int plan(const char *budget, const char *const *extra, int n_extra, qt_mem_plan *p, llm_load_opts *lo,
                qt_ctx_opts *co, qt_err *e) {
    const char *sets[16];
    char b[64];
    snprintf(b, sizeof b, "memory.gpu_budget=%s", budget);
    int n = 0;
    sets[n++] = b;
    for (int i = 0; i < n_extra; i++) sets[n++] = extra[i];
    qt_config cfg;
    char path[512];
    snprintf(path, sizeof path, "%s/bench/llama70b-qlora.yaml", QT_SOURCE_DIR);
    if (qt_config_load(&cfg, path, sets, n, e) != 0) {
        fprintf(stderr, "config: %s\n", e->msg);
        return -2;
    }
    hf_config h;
    if (qt_synthetic_config(cfg.model.synthetic, &h, e) != 0) return -2;
    *lo = (llm_load_opts){.dtype = cfg.model.dtype, .nf4 = cfg.quant.type == QT_QUANT_NF4,
                          .double_quant = cfg.quant.double_quant};
    *co = (qt_ctx_opts){.dev = QT_CUDA};
    return qt_plan_memory(&cfg, &h, lo, co, p, e);
}

static size_t total(const qt_mem_plan *p, const qt_ctx_opts *co) {
    return p->overhead + co->persist_budget + co->step_budget + co->work_budget;
}

int qt_test_cpu(void) {
    qt_mem_plan p, q;
    llm_load_opts lo;
    qt_ctx_opts co;
    qt_err e = {0};
    const double G = 1073741824.0;

    /* 70B under 24 GiB: some layers resident, the rest streamed, the total within budget */
    TU_EXPECT(plan("24GiB", NULL, 0, &p, &lo, &co, &e) == 0, "70B at 24 GiB refused: %s", e.msg);
    printf("70B at 24 GiB: %d of %d layers resident, %d streamed (%.2f GiB pinned); device total %.2f GiB\n",
           p.resident, p.layers, p.streamed, (double)p.host_bytes / G, (double)total(&p, &co) / G);
    TU_EXPECT(p.resident > 0 && p.resident < p.layers && p.streamed == p.layers - p.resident, "resident %d of %d",
              p.resident, p.layers);
    TU_EXPECT(lo.streamed_layers == p.streamed && lo.embed_on_host, "load options not set from the plan");
    TU_EXPECT(total(&p, &co) <= p.budget, "plan total %.3f GiB over the budget %.3f GiB", (double)total(&p, &co) / G,
              (double)p.budget / G);
    TU_EXPECT(p.budget - total(&p, &co) < p.layer_bytes, "%.3f GiB left unplanned: one more layer would fit",
              (double)(p.budget - total(&p, &co)) / G);
    TU_EXPECT(p.host_bytes == (size_t)p.streamed * p.layer_bytes + p.embed_bytes, "pinned host bytes %zu", p.host_bytes);

    /* a larger budget keeps more layers resident; 80 GiB holds them all */
    TU_EXPECT(plan("40GiB", NULL, 0, &q, &lo, &co, &e) == 0 && q.resident > p.resident, "40 GiB: %d resident (24: %d)",
              q.resident, p.resident);
    TU_EXPECT(plan("80GiB", NULL, 0, &q, &lo, &co, &e) == 0 && q.streamed == 0 && !q.embed_on_host && q.slot_bytes == 0,
              "80 GiB: %d streamed", q.streamed);
    TU_EXPECT(total(&q, &co) == q.budget, "resident plan: STEP takes the rest (%zu of %zu)", total(&q, &co), q.budget);

    /* stream_layers: true streams every layer; false refuses what does not fit */
    const char *on[] = {"memory.stream_layers=true"};
    TU_EXPECT(plan("24GiB", on, 1, &q, &lo, &co, &e) == 0 && q.resident == 0 && q.streamed == 80, "true: %d resident",
              q.resident);
    const char *off[] = {"memory.stream_layers=false"};
    TU_EXPECT(plan("24GiB", off, 1, &q, &lo, &co, &e) == -1 && strstr(e.msg, "memory.stream_layers"),
              "false at 24 GiB: %s", e.msg);
    /* too small for anything, no checkpointing, no NF4: refused, naming what to change */
    TU_EXPECT(plan("6GiB", NULL, 0, &q, &lo, &co, &e) == -1 && strstr(e.msg, "too small") &&
                  strstr(e.msg, "micro_batch"), "6 GiB: %s", e.msg);
    const char *nock[] = {"train.grad_checkpointing=false"};
    TU_EXPECT(plan("24GiB", nock, 1, &q, &lo, &co, &e) == -1 && strstr(e.msg, "grad_checkpointing"),
              "no checkpointing: %s", e.msg);
    const char *bf16[] = {"quant.type=none"};
    TU_EXPECT(plan("24GiB", bf16, 1, &q, &lo, &co, &e) == -1 && strstr(e.msg, "nf4"), "bf16 base: %s", e.msg);
    /* longer sequences need more activations, hence fewer resident layers */
    const char *longer[] = {"data.seq_len=8192"};
    TU_EXPECT(plan("24GiB", longer, 1, &q, &lo, &co, &e) == 0 && q.resident < p.resident &&
                  q.step_bytes > p.step_bytes, "seq 8192: %d resident (2048: %d)", q.resident, p.resident);

    /* the per-layer size is what placing a layer in an arena really takes */
    qt_ctx c;
    qt_ctx_opts cc = {.dev = QT_CPU, .persist_budget = (size_t)64 << 20, .step_budget = (size_t)64 << 20};
    if (qt_ctx_init(&c, &cc) != 0) return 1;
    for (int dq = 0; dq < 2; dq++) {
        llm_model m;
        llm_load_opts o = {.dtype = QT_F32, .nf4 = true, .double_quant = dq, .streamed_layers = 4};
        TU_EXPECT(qt_synthetic_model(&m, &c, "tiny", &o, qt_rng_next(tu_rng()), &e) == 0, "tiny: %s", e.msg);
        size_t lb = llm_layer_nf4_bytes(&m.cfg, dq);
        /* (the last array is not padded to the 256-byte alignment) */
        TU_EXPECT(m.host.used <= 4 * lb && m.host.used + 256 > 4 * lb,
                  "dq %d: 4 streamed layers took %zu bytes of pinned memory, planned %zu", dq, m.host.used, 4 * lb);
        for (int l = 1; l < 4; l++)
            TU_EXPECT(m.layers[l].host_base == m.layers[l - 1].host_base + lb, "layer %d's block is not contiguous", l);
        llm_free(&m);
    }
    qt_ctx_free(&c);
    return tu_fail_count ? 1 : 0;
}
