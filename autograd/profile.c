/* Op profiler (QTRAIN_PROFILE=1): CUDA events at op boundaries, device time per op.
 *
 * One chain of events on the context's stream: each boundary records an event tagged with
 * the label and phase of the segment it closes, so the segments tile the stream's timeline
 * and the table adds up to the step time (an op's kernels plus any idle gap before them;
 * with the host running ahead of the GPU the gaps are small). Forward segments close at
 * qt_record, which every op calls after launching its kernels; backward segments are
 * bracketed (enter/leave) with a stack, so a checkpoint's backward shows its recomputed
 * forward and its inner nodes' backwards separately, not as one lump.
 *
 * Events are resolved at qt_ctx_step_reset into the current interval; qt_profile_step
 * closes an interval and adds it to the totals (or drops it: warm-up steps, eval). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "profile.h"

#define PROF_MAX_DEPTH 32
#define PROF_MAX_EVENTS 65536 /* resolve early past this: bounds memory without step resets */

typedef struct prof_stat {
    const char *label;
    double ms[QT_PROF_NPHASES];
    int64_t calls[QT_PROF_NPHASES];
} prof_stat;

typedef struct prof_table {
    prof_stat *s;
    int n, cap;
} prof_table;

struct qt_prof {
    void **ev;              /* ev[0] is the anchor: the boundary before ev[1] */
    const char **label;     /* label[i], phase[i]: the segment ev[i-1] -> ev[i] */
    signed char *phase;
    int n, cap;
    const char *stack[PROF_MAX_DEPTH]; /* backward nodes being run, innermost last */
    int depth;
    bool recompute;
    prof_table cur, tot;    /* the open interval; the kept steps */
    int skip, seen, steps;  /* warm-up steps to drop; intervals closed; steps kept */
};

static const char *const phase_names[QT_PROF_NPHASES] = {"fwd", "recomp", "bwd", "other"};

static void *xrealloc(void *p, size_t bytes) {
    void *q = realloc(p, bytes);
    QT_CHECK(q, "out of host memory (%zu bytes for the profiler)", bytes);
    return q;
}

static prof_stat *stat_of(prof_table *t, const char *label) {
    for (int i = 0; i < t->n; i++)
        if (t->s[i].label == label || !strcmp(t->s[i].label, label)) return &t->s[i];
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 32;
        t->s = xrealloc(t->s, (size_t)t->cap * sizeof *t->s);
    }
    prof_stat *s = &t->s[t->n++];
    memset(s, 0, sizeof *s);
    s->label = label;
    return s;
}

static void record(qt_ctx *c, const char *label, int phase) {
    struct qt_prof *p = c->prof;
    if (p->n == PROF_MAX_EVENTS) qt_prof_resolve(c);
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 1024;
        p->ev = xrealloc(p->ev, (size_t)cap * sizeof *p->ev);
        p->label = xrealloc(p->label, (size_t)cap * sizeof *p->label);
        p->phase = xrealloc(p->phase, (size_t)cap);
        for (int i = p->cap; i < cap; i++) p->ev[i] = qt_be_event_new(); /* created once, reused */
        p->cap = cap;
    }
    qt_be_event_record(c, p->ev[p->n]);
    p->label[p->n] = label;
    p->phase[p->n] = (signed char)phase;
    p->n++;
}

static int auto_phase(const struct qt_prof *p) {
    return p->recompute ? QT_PROF_RECOMPUTE : p->depth > 0 ? QT_PROF_BWD : QT_PROF_FWD;
}

void qt_prof_init(qt_ctx *c) {
    const char *v = getenv("QTRAIN_PROFILE");
    if (!v || !v[0] || !strcmp(v, "0")) return;
    if (c->dev != QT_CUDA) {
        fprintf(stderr, "qtrain: QTRAIN_PROFILE is set, but the op profiler times CUDA streams: off for this "
                        "%s context\n", qt_device_name(c->dev));
        return;
    }
    struct qt_prof *p = calloc(1, sizeof *p);
    QT_CHECK(p, "out of host memory");
    p->skip = 1;
    const char *s = getenv("QTRAIN_PROFILE_SKIP");
    if (s && s[0]) {
        char *end;
        long k = strtol(s, &end, 10);
        if (*end || k < 0 || k > 1000000)
            fprintf(stderr, "qtrain: QTRAIN_PROFILE_SKIP='%s' is not a step count (0, 1, 2, ...): using 1\n", s);
        else p->skip = (int)k;
    }
    c->prof = p;
    record(c, "(start)", QT_PROF_OTHER); /* the anchor */
}

void qt_prof_free(qt_ctx *c) {
    struct qt_prof *p = c->prof;
    if (!p) return;
    for (int i = 0; i < p->cap; i++) qt_be_event_free(p->ev[i]);
    free(p->ev);
    free(p->label);
    free(p->phase);
    free(p->cur.s);
    free(p->tot.s);
    free(p);
    c->prof = NULL;
}

void qt_prof_resolve(qt_ctx *c) {
    struct qt_prof *p = c->prof;
    if (p->n < 2) return;
    for (int i = 1; i < p->n; i++) {
        prof_stat *s = stat_of(&p->cur, p->label[i]);
        s->ms[p->phase[i]] += qt_be_event_ms(p->ev[i - 1], p->ev[i]);
        s->calls[p->phase[i]]++;
    }
    void *last = p->ev[p->n - 1]; /* the new anchor; the old one is recycled */
    p->ev[p->n - 1] = p->ev[0];
    p->ev[0] = last;
    p->n = 1;
}

void qt_prof_op(qt_ctx *c, const char *op) { record(c, op, auto_phase(c->prof)); }

void qt_prof_enter(qt_ctx *c, const char *op) {
    struct qt_prof *p = c->prof;
    QT_CHECK(p->depth < PROF_MAX_DEPTH, "profiler: backward nested deeper than %d", PROF_MAX_DEPTH);
    if (p->depth > 0) record(c, p->stack[p->depth - 1], QT_PROF_BWD); /* glue of the enclosing node */
    else record(c, "(unmarked)", QT_PROF_OTHER);
    p->stack[p->depth++] = op;
}

void qt_prof_leave(qt_ctx *c) {
    struct qt_prof *p = c->prof;
    QT_CHECK(p->depth > 0, "%s", "profiler: leave without enter");
    record(c, p->stack[p->depth - 1], QT_PROF_BWD);
    p->depth--;
}

bool qt_prof_recompute(qt_ctx *c, bool on) {
    bool was = c->prof->recompute;
    c->prof->recompute = on;
    return was;
}

/* ---- public */

bool qt_profile_enabled(const qt_ctx *c) { return c->prof != NULL; }

void qt_profile_mark(qt_ctx *c, const char *label, qt_prof_phase ph) {
    if (!c->prof) return;
    QT_CHECK(ph >= QT_PROF_AUTO && ph < QT_PROF_NPHASES, "profiler: bad phase %d", (int)ph);
    record(c, label, ph == QT_PROF_AUTO ? auto_phase(c->prof) : (int)ph);
}

void qt_profile_step(qt_ctx *c, bool keep) {
    struct qt_prof *p = c->prof;
    if (!p) return;
    record(c, "(unmarked)", QT_PROF_OTHER);
    qt_prof_resolve(c);
    if (keep && p->seen++ >= p->skip) {
        for (int i = 0; i < p->cur.n; i++) {
            prof_stat *d = stat_of(&p->tot, p->cur.s[i].label);
            for (int k = 0; k < QT_PROF_NPHASES; k++) {
                d->ms[k] += p->cur.s[i].ms[k];
                d->calls[k] += p->cur.s[i].calls[k];
            }
        }
        p->steps++;
    }
    p->cur.n = 0;
}

static double stat_total(const prof_stat *s) {
    double t = 0;
    for (int k = 0; k < QT_PROF_NPHASES; k++) t += s->ms[k];
    return t;
}

static int by_total_desc(const void *a, const void *b) {
    double x = stat_total(a), y = stat_total(b);
    return x < y ? 1 : x > y ? -1 : 0;
}

void qt_profile_print(qt_ctx *c, FILE *f) {
    struct qt_prof *p = c->prof;
    if (!p) return;
    qt_prof_resolve(c);
    /* Kept steps when there are any; else whatever ran (a caller without qt_profile_step). */
    prof_table *t = p->steps > 0 ? &p->tot : &p->cur;
    int steps = p->steps > 0 ? p->steps : 1;
    qsort(t->s, (size_t)t->n, sizeof *t->s, by_total_desc);
    double sum = 0, ph[QT_PROF_NPHASES] = {0};
    for (int i = 0; i < t->n; i++) {
        sum += stat_total(&t->s[i]);
        for (int k = 0; k < QT_PROF_NPHASES; k++) ph[k] += t->s[i].ms[k];
    }
    if (p->steps > 0)
        fprintf(f, "qtrain: op profile over %d steps (first %d left out): %.1f ms of device-stream time per step\n",
                p->steps, p->skip < p->seen ? p->skip : p->seen, sum / steps);
    else
        fprintf(f, "qtrain: op profile of everything recorded (no step marked): %.1f ms of device-stream time\n", sum);
    fprintf(f, "  %-22s", "op (ms per step)");
    for (int k = 0; k < QT_PROF_NPHASES; k++) fprintf(f, " %9s", phase_names[k]);
    fprintf(f, " %9s %6s %7s\n", "total", "share", "calls");
    for (int i = 0; i < t->n; i++) {
        const prof_stat *s = &t->s[i];
        double tt = stat_total(s);
        int64_t calls = 0;
        for (int k = 0; k < QT_PROF_NPHASES; k++) calls += s->calls[k];
        fprintf(f, "  %-22.22s", s->label);
        for (int k = 0; k < QT_PROF_NPHASES; k++) {
            if (s->calls[k]) fprintf(f, " %9.2f", s->ms[k] / steps);
            else fprintf(f, " %9s", "-");
        }
        fprintf(f, " %9.2f %5.1f%% %7.0f\n", tt / steps, sum > 0 ? 100.0 * tt / sum : 0.0, (double)calls / steps);
    }
    fprintf(f, "  %-22s", "total");
    for (int k = 0; k < QT_PROF_NPHASES; k++) fprintf(f, " %9.2f", ph[k] / steps);
    fprintf(f, " %9.2f %5.1f%%\n", sum / steps, 100.0);
}
