/* Internal: what the host-side autograd code needs from the CUDA backend.
 * Implemented in backend_cuda.cu, or by backend_none.c in a CPU-only build
 * (where every entry reports that CUDA is absent). Not part of the public API. */
#ifndef QT_BACKEND_H
#define QT_BACKEND_H

#include "autograd.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 0 on success; -1 after printing why. */
int qt_be_malloc(void **p, size_t bytes, int ordinal);
void qt_be_free(void *p);
/* Synchronous copy between any two devices (host or CUDA). */
void qt_be_memcpy(void *dst, qt_device dd, const void *src, qt_device sd, size_t bytes);
void qt_be_memset(void *p, int byte, size_t bytes);
int qt_be_ctx_init(qt_ctx *c, const qt_ctx_opts *o);
void qt_be_ctx_free(qt_ctx *c);
void qt_be_sync(qt_ctx *c);

#ifdef __cplusplus
}
#endif
#endif
