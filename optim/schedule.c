/* Learning-rate schedules, as transformers' get_{constant,linear,cosine}_schedule_with_warmup. */
#include <math.h>

#include "optim.h"

double qt_lr_at(const qt_lr_sched *s, int64_t step) {
    if (step < s->warmup_steps) return s->lr * (double)step / (double)(s->warmup_steps > 1 ? s->warmup_steps : 1);
    if (s->kind == QT_LR_CONSTANT) return s->lr;
    double span = (double)(s->total_steps - s->warmup_steps);
    double done = span > 0 ? (double)(step - s->warmup_steps) / span : 1.0;
    if (done > 1) done = 1;
    double f = s->kind == QT_LR_LINEAR ? 1.0 - done : 0.5 * (1.0 + cos(M_PI * done));
    return s->lr * (s->min_ratio + (1.0 - s->min_ratio) * f);
}
