/* The context (pools, backend) and the reverse-mode tape. */
#include "autograd.h"
#include "backend.h"
#include "profile.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define META_BUDGET ((size_t)256 << 20) /* tensor headers and op structs, per pool */

int qt_ctx_init(qt_ctx *c, const qt_ctx_opts *o) {
    memset(c, 0, sizeof *c);
    c->dev = o->dev;
    c->grad_enabled = true;
    c->tf32 = o->tf32;
    if (o->dev == QT_CUDA && qt_be_ctx_init(c, o) != 0) return -1;
    size_t scratch = o->scratch_budget ? o->scratch_budget : ((size_t)256 << 20);
    size_t work = o->work_budget ? o->work_budget : ((size_t)64 << 20);
    if (qt_arena_init(&c->data[QT_PERSIST], "persist", o->dev, o->persist_budget) ||
        qt_arena_init(&c->data[QT_STEP], "step", o->dev, o->step_budget) ||
        qt_arena_init(&c->meta[QT_PERSIST], "persist-headers", QT_CPU, META_BUDGET) ||
        qt_arena_init(&c->meta[QT_STEP], "step-headers", QT_CPU, META_BUDGET) ||
        qt_arena_init(&c->scratch, "cpu-scratch", QT_CPU, scratch) ||
        qt_arena_init(&c->work, "op-work", o->dev, work)) {
        qt_ctx_free(c);
        return -1;
    }
    qt_prof_init(c);
    return 0;
}

void qt_ctx_free(qt_ctx *c) {
    if (c->prof) qt_prof_free(c);
    for (int p = 0; p < 2; p++) {
        qt_arena_free(&c->data[p]);
        qt_arena_free(&c->meta[p]);
    }
    qt_arena_free(&c->scratch);
    qt_arena_free(&c->work);
    free(c->tape);
    if (c->cuda) qt_be_ctx_free(c);
    memset(c, 0, sizeof *c);
}

void qt_ctx_step_reset(qt_ctx *c) {
    if (c->prof) qt_prof_resolve(c);
    c->tape_len = 0;
    qt_arena_reset(&c->data[QT_STEP], 0);
    qt_arena_reset(&c->meta[QT_STEP], 0);
    qt_arena_reset(&c->scratch, 0);
}

void qt_ctx_sync(qt_ctx *c) {
    if (c->dev == QT_CUDA) qt_be_sync(c);
}

void *qt_step_host_alloc(qt_ctx *c, size_t bytes) { return qt_arena_alloc(&c->meta[QT_STEP], bytes); }

static qt_node *push_node(qt_ctx *c, const char *op, qt_backward_fn bw, qt_tensor *out, int n_in,
                          qt_tensor *const *in) {
    if (c->tape_len == c->tape_cap) {
        int cap = c->tape_cap ? 2 * c->tape_cap : 256;
        qt_node *t = realloc(c->tape, (size_t)cap * sizeof *t);
        QT_CHECK(t, "out of host memory growing the tape to %d nodes", cap);
        c->tape = t;
        c->tape_cap = cap;
    }
    qt_node *n = &c->tape[c->tape_len++];
    memset(n, 0, sizeof *n);
    n->op = op;
    n->backward = bw;
    n->out = out;
    n->n_in = n_in;
    for (int i = 0; i < n_in; i++) n->in[i] = in[i];
    out->requires_grad = true;
    return n;
}

qt_node *qt_record(qt_ctx *c, const char *op, qt_backward_fn bw, qt_tensor *out, int n_in,
                   qt_tensor *const *in) {
    QT_CHECK(n_in >= 1 && n_in <= QT_MAX_IN, "op %s: %d inputs", op, n_in);
    if (c->prof) qt_prof_op(c, op); /* every op calls this after launching its forward */
    bool any = false;
    for (int i = 0; i < n_in; i++) any |= in[i] && in[i]->requires_grad;
    if (!c->grad_enabled || !any) return NULL;
    return push_node(c, op, bw, out, n_in, in);
}

qt_tensor *qt_grad(qt_ctx *c, qt_tensor *t) {
    if (!t->grad) {
        QT_CHECK(t->requires_grad, "gradient asked of frozen tensor '%s'", t->name);
        t->grad = qt_zeros(c, t->pool, t->dtype, t->ndim, t->shape);
        qt_set_name(t->grad, "%.88s.grad", t->name);
    }
    return t->grad;
}

/* Nodes [start, tape_len) in reverse. A node's backward may append nodes (a checkpoint's
 * recomputation) and so move the tape: nodes are re-read by index, never by pointer. */
static void backward_range(qt_ctx *c, int start) {
    bool was = c->grad_enabled;
    c->grad_enabled = false; /* backward kernels must not record */
    for (int i = c->tape_len - 1; i >= start; i--) {
        qt_node n = c->tape[i];
        if (!n.out->grad) continue;
        if (c->prof) qt_prof_enter(c, n.op);
        n.backward(c, &n);
        if (c->prof) qt_prof_leave(c);
    }
    c->grad_enabled = was;
}

void qt_backward(qt_ctx *c, qt_tensor *out, const qt_tensor *seed) {
    QT_CHECK(out->requires_grad, "backward from '%s', which does not depend on any trainable tensor",
             out->name);
    qt_tensor *g = qt_grad(c, out);
    if (seed) {
        QT_CHECK(qt_same_shape(seed, out), "seed shape differs from output");
        qt_copy(g, seed);
    } else {
        QT_CHECK(out->numel == 1, "backward without a seed needs a scalar, got %lld elements",
                 (long long)out->numel);
        double one = 1.0;
        qt_upload(g, &one, QT_F64);
    }
    backward_range(c, 0);
}

void qt_zero_grads(qt_ctx *c, qt_tensor *const *params, int n) {
    (void)c;
    /* Gradients laid out back to back (as llm_add_lora allocates them) clear in one call:
     * hundreds of small memsets cost milliseconds of launch time on a GPU. */
    uint8_t *start = NULL, *end = NULL;
    qt_device dev = QT_CPU;
    for (int i = 0; i <= n; i++) {
        qt_tensor *g = i < n ? params[i]->grad : NULL;
        if (i < n && !g) continue;
        uint8_t *p = g ? (uint8_t *)g->data : NULL;
        if (g && start && g->dev == dev && p == (uint8_t *)(((uintptr_t)end + 255) & ~(uintptr_t)255)) {
            end = p + qt_nbytes(g);
            continue;
        }
        if (start) {
            if (dev == QT_CPU) memset(start, 0, (size_t)(end - start));
            else qt_be_memset(start, 0, (size_t)(end - start));
        }
        start = p;
        end = g ? p + qt_nbytes(g) : NULL;
        dev = g ? g->dev : QT_CPU;
    }
}

/* ---- gradient checkpointing */

typedef struct ckpt_ext { qt_checkpoint_fn fn; void *user; } ckpt_ext;

static void checkpoint_backward(qt_ctx *c, qt_node *n) {
    ckpt_ext *e = n->ext;
    qt_tensor *x = n->in[0], *gout = n->out->grad;
    bool fresh = x->requires_grad && !x->grad;
    if (x->requires_grad) qt_grad(c, x); /* allocated before the mark: it must survive */
    size_t data_mark = qt_arena_mark(&c->data[QT_STEP]), meta_mark = qt_arena_mark(&c->meta[QT_STEP]);
    int tape_mark = c->tape_len;
    /* Recompute from a stand-in for x whose gradient buffer is x's own. */
    qt_tensor *xs = qt_reshape_nograd(c, x, x->ndim, x->shape);
    xs->requires_grad = x->requires_grad;
    xs->grad = x->grad;
    c->grad_enabled = true;
    bool was = c->prof ? qt_prof_recompute(c, true) : false;
    qt_tensor *y = e->fn(c, xs, e->user);
    if (c->prof) qt_prof_recompute(c, was);
    c->grad_enabled = false;
    QT_CHECK(qt_same_shape(y, n->out), "checkpointed function changed its output shape");
    if (y->requires_grad) {
        y->grad = qt_reshape_nograd(c, gout, gout->ndim, gout->shape);
        backward_range(c, tape_mark);
    }
    c->tape_len = tape_mark;
    qt_arena_reset(&c->data[QT_STEP], data_mark);
    qt_arena_reset(&c->meta[QT_STEP], meta_mark);
    /* A chain of checkpoints (a stack of layers) would otherwise keep every layer's input
     * gradient for the rest of the step. The output's gradient is dead now (only the node
     * that made a tensor reads its gradient), and when x's fresh gradient sits right after
     * it at the top of STEP, x's gradient moves into its place: one buffer for the chain. */
    qt_arena *d = &c->data[QT_STEP];
    size_t gb = gout ? qt_nbytes(gout) : 0, xb = fresh ? qt_nbytes(x->grad) : 0;
    uint8_t *gend = gout ? (uint8_t *)gout->data + ((gb + 255) & ~(size_t)255) : NULL;
    if (fresh && gout && gout->pool == QT_STEP && gb == xb && (uint8_t *)x->grad->data == gend &&
        gend + xb == d->base + d->used) {
        qt_be_copy_on_stream(c, gout->data, x->grad->data, xb);
        qt_arena_reset(d, (size_t)((uint8_t *)x->grad->data - d->base));
        x->grad->data = gout->data;
    }
}

/* fn ran without a tape, so nothing refers to its intermediates: give their STEP memory
 * back by moving y down to where they began (through c->work). Without room in c->work
 * the intermediates simply stay until the step ends. */
static qt_tensor *keep_only_output(qt_ctx *c, qt_tensor *y, size_t data_mark, size_t meta_mark) {
    qt_arena *d = &c->data[QT_STEP];
    if ((uint8_t *)y->data < d->base + data_mark) return y; /* fn returned memory from before */
    size_t wmark = qt_arena_mark(&c->work);
    void *tmp = qt_arena_try_alloc(&c->work, qt_nbytes(y));
    if (!tmp) return y;
    qt_tensor t = qt_tensor_over(tmp, y->dtype, y->dev, y->ndim, y->shape);
    qt_copy(&t, y);
    qt_tensor keep = *y;
    qt_arena_reset(d, data_mark);
    qt_arena_reset(&c->meta[QT_STEP], meta_mark);
    qt_tensor *out = qt_empty(c, QT_STEP, keep.dtype, keep.ndim, keep.shape);
    qt_set_name(out, "%s", keep.name);
    qt_copy(out, &t);
    qt_arena_reset(&c->work, wmark);
    return out;
}

qt_tensor *qt_checkpoint(qt_ctx *c, qt_checkpoint_fn fn, qt_tensor *x, void *user) {
    size_t data_mark = qt_arena_mark(&c->data[QT_STEP]), meta_mark = qt_arena_mark(&c->meta[QT_STEP]);
    bool grad = c->grad_enabled;
    c->grad_enabled = false;
    qt_tensor *y = keep_only_output(c, fn(c, x, user), data_mark, meta_mark);
    c->grad_enabled = grad;
    if (!grad) return y;
    /* Recorded even when x needs no gradient: parameters inside fn may. */
    qt_node *n = push_node(c, "checkpoint", checkpoint_backward, y, 1, &x);
    ckpt_ext *e = qt_step_host_alloc(c, sizeof *e);
    e->fn = fn;
    e->user = user;
    n->ext = e;
    return y;
}
