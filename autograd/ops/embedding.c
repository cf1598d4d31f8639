/* embedding: y[n,:] = table[ids[n],:], the token lookup at the bottom of a model.
 *
 * The forward is a row copy (exact, in the table's dtype). The backward scatter-adds
 * dY rows into the table's gradient; repeated ids sum their rows first, in double on
 * the CPU and in float on the GPU, and the sum is added to the gradient once. */
#include "embedding.h"

#include <string.h>

static void check_ids_arg(const qt_tensor *table, const qt_tensor *ids) {
    char x[128], z[128];
    qt_op_check_float("embedding", table);
    qt_op_check_2d("embedding", table);
    QT_CHECK(ids->dtype == QT_I32 && ids->ndim == 1 && qt_is_contiguous(ids),
             "embedding: ids %s must be a contiguous I32 vector [N]", qt_describe(ids, x, sizeof x));
    QT_CHECK(ids->dev == table->dev, "embedding: ids %s and table %s must be on the same device",
             qt_describe(ids, x, sizeof x), qt_describe(table, z, sizeof z));
}

/* ---- CPU reference */

static void cpu_forward(qt_tensor *y, const qt_tensor *table, const qt_tensor *ids) {
    const int32_t *id = ids->data;
    int64_t V = table->shape[0];
    size_t row = (size_t)table->shape[1] * qt_dtype_size(table->dtype);
    char b[128];
    for (int64_t n = 0; n < ids->numel; n++) {
        QT_CHECK(id[n] >= 0 && id[n] < V, "embedding: id %d at position %lld is outside the table %s "
                 "(ids must be in 0..%lld)", id[n], (long long)n, qt_describe(table, b, sizeof b),
                 (long long)V - 1);
        memcpy((char *)y->data + (size_t)n * row, (const char *)table->data + (size_t)id[n] * row, row);
    }
}

/* Sums the dY rows of each distinct id in double (scratch of N rows, not V: the table can
 * be a 128k vocabulary), then adds each sum to its gradient row once. */
static void cpu_backward(qt_ctx *c, qt_tensor *g, const qt_tensor *dy, const qt_tensor *ids) {
    const int32_t *id = ids->data;
    int64_t N = ids->numel, V = g->shape[0], H = g->shape[1];
    size_t m = qt_scratch_mark(c);
    int32_t *slot = qt_arena_alloc(&c->scratch, (size_t)(V ? V : 1) * sizeof *slot);
    int32_t *rows = qt_arena_alloc(&c->scratch, (size_t)(N ? N : 1) * sizeof *rows);
    for (int64_t v = 0; v < V; v++) slot[v] = -1;
    const double *d = qt_cpu_load(c, dy);
    double *acc = qt_cpu_scratch(c, N * H);
    int32_t U = 0;
    for (int64_t n = 0; n < N; n++) {
        if (slot[id[n]] < 0) {
            slot[id[n]] = U;
            rows[U++] = id[n];
        }
        double *a = acc + (int64_t)slot[id[n]] * H;
        for (int64_t h = 0; h < H; h++) a[h] += d[n * H + h];
    }
    for (int32_t u = 0; u < U; u++) {
        /* A one-row view of the gradient, so only touched rows are converted and written. */
        qt_tensor r = *g;
        r.ndim = 1;
        r.shape[0] = r.numel = H;
        r.stride[0] = 1;
        r.data = (char *)g->data + (size_t)rows[u] * (size_t)H * qt_dtype_size(g->dtype);
        qt_cpu_accum(&r, acc + (int64_t)u * H);
    }
    qt_scratch_reset(c, m);
}

/* ---- op */

static void embedding_backward(qt_ctx *c, qt_node *n) {
    qt_tensor *table = n->in[0], *ids = n->in[1];
    if (!table->requires_grad) return;
    qt_tensor *g = qt_grad(c, table);
    if (g->dev == QT_CUDA) QT_CUDA_CALL(qt_cuda_embedding_backward, c, g, n->out->grad, ids);
    else cpu_backward(c, g, n->out->grad, ids);
}

qt_tensor *qt_embedding(qt_ctx *c, qt_tensor *table, qt_tensor *ids) {
    check_ids_arg(table, ids);
    int64_t shape[2] = {ids->numel, table->shape[1]};
    qt_tensor *y = qt_empty(c, QT_STEP, table->dtype, 2, shape);
    if (table->dev == QT_CUDA) QT_CUDA_CALL(qt_cuda_embedding_forward, c, y, table, ids);
    else cpu_forward(y, table, ids);
    qt_tensor *in[2] = {table, ids};
    qt_record(c, "embedding", embedding_backward, y, 2, in);
    return y;
}
