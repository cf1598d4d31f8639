/* CPU-only build: the CUDA backend entry points report that CUDA is absent. */
#include <stdio.h>
#include <string.h>

#include "backend.h"

bool qt_cuda_available(void) { return false; }
void qt_cuda_describe(char *buf, size_t n) { snprintf(buf, n, "built without CUDA"); }
size_t qt_cuda_mem_used(void) { return 0; }
size_t qt_cuda_mem_free(void) { return 0; }

int qt_be_malloc(void **p, size_t bytes, int ordinal) {
    (void)ordinal;
    *p = NULL;
    fprintf(stderr, "qtrain: cannot allocate %zu bytes on the GPU: this build has no CUDA "
                    "(rebuild with -DQTRAIN_CUDA=ON)\n", bytes);
    return -1;
}
void qt_be_free(void *p) { (void)p; }
void qt_be_memcpy(void *dst, qt_device dd, const void *src, qt_device sd, size_t bytes) {
    QT_CHECK(dd == QT_CPU && sd == QT_CPU, "GPU copy in a build without CUDA");
    memcpy(dst, src, bytes);
}
void qt_be_copy_on_stream(qt_ctx *c, void *dst, const void *src, size_t bytes) {
    QT_CHECK(c->dev == QT_CPU, "%s", "GPU copy in a build without CUDA");
    memmove(dst, src, bytes);
}
void qt_be_memset(void *p, int byte, size_t bytes) {
    (void)p; (void)byte; (void)bytes;
    QT_CHECK(0, "%s", "GPU memset in a build without CUDA");
}
int qt_be_ctx_init(qt_ctx *c, const qt_ctx_opts *o) {
    (void)c; (void)o;
    fprintf(stderr, "qtrain: device 'cuda' asked for, but this build has no CUDA (rebuild with -DQTRAIN_CUDA=ON)\n");
    return -1;
}
void qt_be_ctx_free(qt_ctx *c) { (void)c; }
void qt_be_sync(qt_ctx *c) { (void)c; }
void qt_be_fill_random(void *p, qt_dtype dt, int64_t n, uint64_t key, double a, double b, bool normal) {
    (void)p; (void)dt; (void)n; (void)key; (void)a; (void)b; (void)normal;
    QT_CHECK(0, "%s", "GPU random fill in a build without CUDA");
}
void *qt_be_event_new(void) { QT_CHECK(0, "%s", "CUDA event in a build without CUDA"); }
void qt_be_event_free(void *ev) { (void)ev; }
void qt_be_event_record(qt_ctx *c, void *ev) { (void)c; (void)ev; }
float qt_be_event_ms(void *from, void *to) { (void)from; (void)to; return 0; }
int qt_be_host_alloc(void **p, size_t bytes) { (void)bytes; *p = NULL; return -1; }
void qt_be_host_free(void *p) { (void)p; }
void *qt_be_host_device_ptr(void *p) { (void)p; return NULL; }
void *qt_be_xfer_new(qt_ctx *c, int nslots) { (void)c; (void)nslots; QT_CHECK(0, "%s", "CUDA copy stream in a build without CUDA"); }
void qt_be_xfer_free(void *x) { (void)x; }
void qt_be_xfer_copy(qt_ctx *c, void *x, int slot, void *dst, const void *src, size_t bytes) {
    (void)c; (void)x; (void)slot; (void)dst; (void)src; (void)bytes;
}
void qt_be_xfer_wait(qt_ctx *c, void *x, int slot) { (void)c; (void)x; (void)slot; }
double qt_be_xfer_ms(void *x) { (void)x; return 0; }
