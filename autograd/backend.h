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
/* Copy within the context's device, queued on its stream (no host synchronisation). */
void qt_be_copy_on_stream(qt_ctx *c, void *dst, const void *src, size_t bytes);
/* Page-locked, mapped host memory: 0, or -1 (nothing printed: callers fall back). */
int qt_be_host_alloc(void **p, size_t bytes);
void qt_be_host_free(void *p);
void *qt_be_host_device_ptr(void *p);
/* The copy stream of qt_xfer (see autograd.h). */
void *qt_be_xfer_new(qt_ctx *c, int nslots);
void qt_be_xfer_free(void *x);
void qt_be_xfer_copy(qt_ctx *c, void *x, int slot, void *dst, const void *src, size_t bytes);
void qt_be_xfer_wait(qt_ctx *c, void *x, int slot);
double qt_be_xfer_ms(void *x);
int qt_be_ctx_init(qt_ctx *c, const qt_ctx_opts *o);
void qt_be_ctx_free(qt_ctx *c);
void qt_be_sync(qt_ctx *c);

/* n elements of float dtype dt at p (device memory): SplitMix64 stream from key; uniform in
 * [a, b) or normal (mean a, std b). On the legacy default stream, so it is ordered with
 * every context's (blocking) stream without one being named. */
void qt_be_fill_random(void *p, qt_dtype dt, int64_t n, uint64_t key, double a, double b, bool normal);

/* Timing events on the context's stream (the profiler). elapsed waits for both events. */
void *qt_be_event_new(void);
void qt_be_event_free(void *ev);
void qt_be_event_record(qt_ctx *c, void *ev);
float qt_be_event_ms(void *from, void *to);

#ifdef __cplusplus
}
#endif
#endif
