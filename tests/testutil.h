/* Test harness shared by tests/test_*.c.
 *
 * A test file defines `int qt_test_cpu(void)` and, if it has GPU checks, also
 * `#define QT_TEST_HAS_CUDA` and `int qt_test_cuda(void)`. CMake registers NAME
 * (CPU) and NAME_cuda (`--cuda`, exits 77 = skipped when no GPU is present).
 * Return 0 on success, 1 on failure, 77 to skip (print why).
 *
 * Inputs are random, drawn from a seed printed at the start (QT_TEST_SEED=n to replay). */
#ifndef QT_TESTUTIL_H
#define QT_TESTUTIL_H

#include <stdio.h>

#include "autograd/autograd.h"

#define TU_SKIP 77

int qt_test_cpu(void);
int qt_test_cuda(void);

/* Record a failed expectation (does not stop the test); tu_failures() counts them. */
#define TU_EXPECT(cond, ...)                                                                   \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "%s:%d: FAILED: %s: ", __FILE__, __LINE__, #cond);                  \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fputc('\n', stderr);                                                               \
            tu_fail_count++;                                                                   \
        }                                                                                      \
    } while (0)
extern int tu_fail_count;

qt_rng *tu_rng(void);                 /* the test's generator */
qt_ctx *tu_ctx(qt_device dev);        /* context with test-sized budgets; freed at exit */
qt_tensor *tu_rand(qt_ctx *c, qt_dtype dt, int ndim, const int64_t *shape, double lo, double hi);
qt_tensor *tu_randint(qt_ctx *c, int n, int lo, int hi); /* I32 [n] in [lo, hi) */
/* ||a - b|| / ||b|| over all elements (any devices and dtypes). */
double tu_rel_err(const qt_tensor *a, const qt_tensor *b);
double tu_max_abs(const qt_tensor *t);
bool tu_all_finite(const qt_tensor *t);
/* Is an env-selected shared-data file there? Prints a SKIP line naming it when not. */
bool tu_have_file(const char *path);

/* An op (or chain of ops) under test: build the output from the inputs. */
typedef qt_tensor *(*tu_fn)(qt_ctx *c, qt_tensor **in, void *user);

/* Finite differences in float64 on the CPU: in[] are F64 CPU tensors of context c (PERSIST);
 * those with requires_grad are checked. Objective: sum(out * R) for a random R.
 * Central differences with step h; passes when, for each input, ||analytic - numeric|| /
 * max(||numeric||, 1e-12) <= tol. Prints one line per input. Returns failures. */
int tu_gradcheck(qt_ctx *c, const char *name, tu_fn f, qt_tensor **in, int n_in, void *user,
                 double h, double tol);

/* Same function on the GPU in dtype dt vs the CPU reference in float64 on the same
 * (dt-rounded) inputs: compares the output and every input gradient by relative error.
 * in[] are CPU tensors (any dtype); float ones are converted to dt on the GPU, integer
 * ones copied as they are. Step memory is poisoned with NaN before the GPU run.
 * Returns failures. */
int tu_cuda_parity(const char *name, tu_fn f, qt_tensor **in, int n_in, void *user, qt_dtype dt,
                   double tol_out, double tol_grad);

#endif
