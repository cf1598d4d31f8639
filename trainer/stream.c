/* Layer streaming: the NF4 projections of some layers live in pinned host memory and are
 * uploaded into one of two device slots each time the layer runs. Training visits layers
 * 0..L-1 (forward) then L-1..0 (recompute + backward), so after each upload the next
 * streamed layer in the direction of travel is prefetched on the copy stream while this
 * one computes; at either end the direction turns and the two layers there are already in
 * the slots. The base is frozen: nothing is ever copied back. */
#include <stdlib.h>
#include <string.h>

#include "model.h"

#define NSLOTS 2
#define ALIGN 256

struct llm_stream {
    qt_xfer *x;
    size_t bytes;                /* one layer's block */
    uint8_t *slot[NSLOTS];       /* device buffers */
    int held[NSLOTS];            /* layer in each slot, -1 = none */
    llm_layer view[NSLOTS];      /* the held layer with its arrays pointing into the slot */
    nf4_tensor wq[NSLOTS][LIN_N];
    int last, dir;               /* last streamed layer asked for, direction of travel */
};

static size_t al(size_t n) { return (n + ALIGN - 1) & ~(size_t)(ALIGN - 1); }

size_t llm_layer_nf4_bytes(const hf_config *h, bool dq) {
    int64_t H = h->hidden_size, I = h->intermediate_size, hd = h->head_dim;
    int64_t qd = (int64_t)h->num_attention_heads * hd, kvd = (int64_t)h->num_key_value_heads * hd;
    const int64_t n[LIN_N] = {qd * H, kvd * H, kvd * H, H * qd, I * H, I * H, H * I};
    size_t b = 0;
    for (int k = 0; k < LIN_N; k++) {
        int64_t nb = nf4_nblocks(n[k]);
        b += al((size_t)(n[k] + 1) / 2); /* as nf4_alloc lays them out */
        b += dq ? al((size_t)nb) + al(sizeof(float) * (size_t)((nb + NF4_DQ_BLOCK - 1) / NF4_DQ_BLOCK))
                : al(sizeof(float) * (size_t)nb);
    }
    return b;
}

bool llm_layer_is_streamed(int l, int s, int L) {
    return (int64_t)(l + 1) * s / L > (int64_t)l * s / L;
}

int llm_stream_init(llm_model *m, qt_ctx *c, qt_err *e) {
    int L = m->cfg.num_hidden_layers, first = -1;
    for (int l = 0; l < L; l++)
        if (m->layers[l].streamed && first < 0) first = l;
    if (first < 0) return 0;
    llm_stream *s = calloc(1, sizeof *s);
    if (!s) return qt_errf(e, "out of host memory");
    const llm_layer *F = &m->layers[first];
    s->bytes = llm_layer_nf4_bytes(&m->cfg, F->lin[0].wq->dq);
    for (int i = 0; i < NSLOTS; i++) {
        s->slot[i] = qt_arena_try_alloc(&c->data[QT_PERSIST], s->bytes);
        if (!s->slot[i]) {
            size_t b = s->bytes;
            free(s);
            return qt_errf(e, "no room for the layer-streaming buffers (2 x %zu bytes) in the device budget", b);
        }
        s->held[i] = -1;
    }
    s->x = qt_xfer_new(c, NSLOTS);
    s->last = -1;
    s->dir = 1;
    m->stream = s;
    return 0;
}

void llm_stream_free(llm_model *m) {
    if (!m->stream) return;
    qt_xfer_free(m->stream->x);
    free(m->stream);
    m->stream = NULL;
}

static void *rebase(const void *p, const llm_layer *L, uint8_t *slot) {
    return p ? slot + ((const uint8_t *)p - L->host_base) : NULL;
}

/* Queue the upload of streamed layer l into slot i (after the slot's current users). */
static void upload(qt_ctx *c, llm_model *m, int l, int i) {
    llm_stream *s = m->stream;
    const llm_layer *L = &m->layers[l];
    qt_xfer_copy(s->x, i, s->slot[i], L->host_base, s->bytes);
    s->held[i] = l;
    s->view[i] = *L;
    for (int k = 0; k < LIN_N; k++) {
        nf4_tensor *d = &s->wq[i][k];
        const nf4_tensor *h = L->lin[k].wq;
        *d = *h;
        d->dev = c->dev;
        d->codes = rebase(h->codes, L, s->slot[i]);
        d->absmax = rebase(h->absmax, L, s->slot[i]);
        d->absmax_q = rebase(h->absmax_q, L, s->slot[i]);
        d->absmax2 = rebase(h->absmax2, L, s->slot[i]);
        s->view[i].lin[k].wq = d;
    }
}

static int slot_of(const llm_stream *s, int l) {
    for (int i = 0; i < NSLOTS; i++)
        if (s->held[i] == l) return i;
    return -1;
}

/* The next streamed layer from l in direction d, or -1. */
static int next_streamed(const llm_model *m, int l, int d) {
    for (int j = l + d; j >= 0 && j < m->cfg.num_hidden_layers; j += d)
        if (m->layers[j].streamed) return j;
    return -1;
}

const llm_layer *llm_layer_get(qt_ctx *c, llm_model *m, int l) {
    llm_layer *L = &m->layers[l];
    if (!L->streamed) return L;
    llm_stream *s = m->stream;
    QT_CHECK(s, "layer %d is streamed but llm_stream_init was not called", l);
    int prev = s->last;
    if (prev >= 0 && l != prev) s->dir = l > prev ? 1 : -1;
    s->last = l;
    int i = slot_of(s, l);
    if (i < 0) { /* not prefetched (first use, or a pass that broke the pattern): upload now,
                    keeping the layer asked for before (its result must stay valid) */
        i = s->held[0] == prev ? 1 : 0;
        upload(c, m, l, i);
    }
    qt_xfer_wait(s->x, i);
    int n = next_streamed(m, l, s->dir);
    if (n < 0) { /* the end of a pass: the next one comes back the other way */
        s->dir = -s->dir;
        n = next_streamed(m, l, s->dir);
    }
    if (n >= 0 && slot_of(s, n) < 0) upload(c, m, n, 1 - i);
    return &s->view[i];
}

void llm_stream_stats(llm_model *m, double *bytes, double *ms) {
    *bytes = *ms = 0;
    if (m->stream) qt_xfer_stats(m->stream->x, bytes, ms);
}
