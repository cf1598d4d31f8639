/* Internal: the op profiler's hooks for the context and the tape (tape.c). The public side
 * (qt_profile_*) is in autograd.h. Every hook is called only when c->prof is set, so with
 * QTRAIN_PROFILE unset the cost is one pointer test per op. */
#ifndef QT_PROFILE_H
#define QT_PROFILE_H

#include "autograd.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Sets c->prof when QTRAIN_PROFILE asks for it and c is a CUDA context. */
void qt_prof_init(qt_ctx *c);
void qt_prof_free(qt_ctx *c);
/* Read back the recorded events into the current interval (one sync). */
void qt_prof_resolve(qt_ctx *c);
/* End of an op's forward: the segment since the last boundary is op's. */
void qt_prof_op(qt_ctx *c, const char *op);
/* Around one node's backward (nested for checkpoints). */
void qt_prof_enter(qt_ctx *c, const char *op);
void qt_prof_leave(qt_ctx *c);
/* Forward ops that run inside a checkpoint's backward count as recompute; returns the
 * previous setting, to restore. */
bool qt_prof_recompute(qt_ctx *c, bool on);

#ifdef __cplusplus
}
#endif
#endif
