/* Asynchronous uploads for layer streaming (autograd.h, "async uploads"): the CUDA copy
 * stream lives in the backend; on a CPU context a copy is a memcpy, done at once. */
#include <stdlib.h>
#include <string.h>

#include "backend.h"

struct qt_xfer {
    qt_ctx *c;
    int nslots;
    void *be;     /* NULL on a CPU context */
    double bytes; /* since the last qt_xfer_stats */
};

qt_xfer *qt_xfer_new(qt_ctx *c, int nslots) {
    QT_CHECK(nslots > 0, "qt_xfer_new: %d slots", nslots);
    qt_xfer *x = calloc(1, sizeof *x);
    QT_CHECK(x, "out of host memory");
    x->c = c;
    x->nslots = nslots;
    if (c->dev == QT_CUDA) x->be = qt_be_xfer_new(c, nslots);
    return x;
}

void qt_xfer_free(qt_xfer *x) {
    if (!x) return;
    if (x->be) qt_be_xfer_free(x->be);
    free(x);
}

void qt_xfer_copy(qt_xfer *x, int slot, void *dst, const void *src, size_t bytes) {
    QT_CHECK(slot >= 0 && slot < x->nslots, "qt_xfer_copy: slot %d of %d", slot, x->nslots);
    x->bytes += (double)bytes;
    if (x->be) qt_be_xfer_copy(x->c, x->be, slot, dst, src, bytes);
    else memcpy(dst, src, bytes);
}

void qt_xfer_wait(qt_xfer *x, int slot) {
    QT_CHECK(slot >= 0 && slot < x->nslots, "qt_xfer_wait: slot %d of %d", slot, x->nslots);
    if (x->be) qt_be_xfer_wait(x->c, x->be, slot);
}

void qt_xfer_stats(qt_xfer *x, double *bytes, double *ms) {
    *bytes = x->bytes;
    *ms = x->be ? qt_be_xfer_ms(x->be) : 0;
    x->bytes = 0;
}
