/* Bump arenas with a hard budget: one reservation up front, so the budget is the
 * most a pool can ever take and over-budget shows at allocation time, with a name. */
#include "autograd.h"
#include "backend.h"

#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#define QT_ALIGN 256

int qt_arena_init(qt_arena *a, const char *name, qt_device dev, size_t budget) {
    memset(a, 0, sizeof *a);
    snprintf(a->name, sizeof a->name, "%s", name);
    a->dev = dev;
    a->cap = budget;
    if (budget == 0) return 0;
    if (dev == QT_CPU) {
        /* NORESERVE: pages are committed when first touched, so a generous budget is free. */
        void *p = mmap(NULL, budget, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
        if (p == MAP_FAILED) {
            fprintf(stderr, "qtrain: cannot reserve %zu bytes of host memory for arena '%s'\n", budget, name);
            return -1;
        }
        a->base = p;
        return 0;
    }
    void *p = NULL;
    if (qt_be_malloc(&p, budget, 0) != 0) {
        fprintf(stderr, "qtrain: cannot reserve %zu bytes of GPU memory for arena '%s'\n", budget, name);
        return -1;
    }
    a->base = p;
    return 0;
}

int qt_arena_init_pinned(qt_arena *a, const char *name, size_t budget) {
    void *p = NULL;
    if (budget == 0 || !qt_cuda_available() || qt_be_host_alloc(&p, budget) != 0)
        return qt_arena_init(a, name, QT_CPU, budget);
    memset(a, 0, sizeof *a);
    snprintf(a->name, sizeof a->name, "%s", name);
    a->dev = QT_CPU;
    a->cap = budget;
    a->base = p;
    a->pinned = true;
    return 0;
}

void *qt_pinned_device_ptr(void *p) { return qt_be_host_device_ptr(p); }

void qt_arena_free(qt_arena *a) {
    if (a->base) {
        if (a->pinned) qt_be_host_free(a->base);
        else if (a->dev == QT_CPU) munmap(a->base, a->cap);
        else qt_be_free(a->base);
    }
    memset(a, 0, sizeof *a);
}

void *qt_arena_try_alloc(qt_arena *a, size_t bytes) {
    size_t start = (a->used + QT_ALIGN - 1) & ~(size_t)(QT_ALIGN - 1);
    if (bytes == 0) bytes = 1;
    if (start > a->cap || bytes > a->cap - start) return NULL;
    a->used = start + bytes;
    if (a->used > a->peak) a->peak = a->used;
    return a->base + start;
}

void *qt_arena_alloc(qt_arena *a, size_t bytes) {
    void *p = qt_arena_try_alloc(a, bytes);
    if (!p)
        qt_die("arena '%s' (%s) is over its budget: asked for %zu bytes with %zu of %zu in use "
               "(peak %zu); raise the budget or lower the batch/sequence size",
               a->name, qt_device_name(a->dev), bytes, a->used, a->cap, a->peak);
    return p;
}

void qt_arena_reset(qt_arena *a, size_t mark) {
    QT_CHECK(mark <= a->used, "arena '%s': reset to %zu beyond use %zu", a->name, mark, a->used);
    a->used = mark;
}

void qt_arena_poison(qt_arena *a) {
    if (!a->base || a->used >= a->cap) return;
    if (a->dev == QT_CPU) memset(a->base + a->used, 0xff, a->cap - a->used);
    else qt_be_memset(a->base + a->used, 0xff, a->cap - a->used);
}
