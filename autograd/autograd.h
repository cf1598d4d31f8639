/* autograd — tensors, arenas, the reverse-mode tape and the ops built on them.
 *
 * The whole public API of the module is in this header.
 *
 * Memory: every tensor lives in a pool with a clear lifetime. A context owns two
 * pools: PERSIST (weights, trainable parameters and their gradients; freed with the
 * context) and STEP (activations, their gradients, the tape; reset by
 * qt_ctx_step_reset once per step). Each pool is an arena with a hard byte budget
 * on the context's device plus a host arena for tensor headers.
 *
 * Backends: every op has a plain-C CPU reference that computes in double
 * (readable; F64 tensors make finite-difference checks exact enough) and a CUDA
 * implementation for F32/BF16 (F16 where noted) that accumulates in float. */
#ifndef QT_AUTOGRAD_H
#define QT_AUTOGRAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ checks */

/* Internal invariants: print file:line, the failing expression and a message, then abort.
 * User-facing input errors are reported by the parsers themselves, never through this. */
#define QT_CHECK(cond, ...)                                                    \
    do {                                                                       \
        if (!(cond)) qt_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);          \
    } while (0)
#define QT_ASSERT(cond) QT_CHECK(cond, "%s", "assertion failed")

__attribute__((noreturn)) void qt_fail(const char *file, int line, const char *expr, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Fatal resource error (out of budget, no device): message and exit(1), no core dump. */
__attribute__((noreturn)) void qt_die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* User-facing errors (bad files, configs, arguments): functions return -1 and fill a
 * qt_err with one line saying what is wrong, where (file, key, offset, line) and how to
 * fix it. qt_errf formats into it and returns -1, so `return qt_errf(e, ...);` works. */
typedef struct qt_err { char msg[1024]; } qt_err;
int qt_errf(qt_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ------------------------------------------------------------------ dtypes */

typedef enum { QT_F32 = 0, QT_BF16, QT_F16, QT_F64, QT_I32, QT_U8, QT_NDTYPES } qt_dtype;
typedef enum { QT_CPU = 0, QT_CUDA } qt_device;

size_t qt_dtype_size(qt_dtype dt);
const char *qt_dtype_name(qt_dtype dt);
const char *qt_device_name(qt_device dev);
bool qt_dtype_is_float(qt_dtype dt);

uint16_t qt_f32_to_bf16(float f); /* round to nearest even; NaN stays NaN */
float qt_bf16_to_f32(uint16_t h);
uint16_t qt_f32_to_f16(float f);
float qt_f16_to_f32(uint16_t h);

/* ------------------------------------------------------------------ arenas */

/* A bump allocator over one reservation of `budget` bytes (mmap on the host,
 * one cudaMalloc on the device). Allocations are 256-byte aligned; freeing is by
 * resetting to a mark. `peak` is the high-water mark of `used`. */
typedef struct qt_arena {
    char name[32];
    qt_device dev;
    uint8_t *base;
    size_t cap, used, peak;
    bool pinned;  /* host memory page-locked by CUDA (qt_arena_init_pinned) */
} qt_arena;

/* Returns 0, or -1 after printing why (e.g. the device has less free memory). */
int qt_arena_init(qt_arena *a, const char *name, qt_device dev, size_t budget);
void qt_arena_free(qt_arena *a);
/* NULL when the budget would be exceeded (nothing is allocated then). */
void *qt_arena_try_alloc(qt_arena *a, size_t bytes);
/* Like try_alloc, but exits with a message naming the arena, request and budget. */
void *qt_arena_alloc(qt_arena *a, size_t bytes);
static inline size_t qt_arena_mark(const qt_arena *a) { return a->used; }
void qt_arena_reset(qt_arena *a, size_t mark);
/* Fill the unused part with 0xFF bytes (NaN for every float dtype): tests use it to
 * catch kernels that leave output elements unwritten. */
void qt_arena_poison(qt_arena *a);
/* A host arena for data that streams to the GPU: page-locked and mapped (cudaHostAlloc)
 * when a CUDA device is present, so copies from it run asynchronously at full PCIe speed
 * and kernels can read it in place; plain reserved host memory otherwise. The whole budget
 * is committed up front when pinned (page-locking cannot be lazy). */
int qt_arena_init_pinned(qt_arena *a, const char *name, size_t budget);
/* The address kernels use for p inside a pinned arena (p itself with unified addressing). */
void *qt_pinned_device_ptr(void *p);

/* ------------------------------------------------------------------ random */

/* xoshiro256** — small, fast, and its whole state can be saved in a checkpoint. */
typedef struct qt_rng { uint64_t s[4]; } qt_rng;
void qt_rng_seed(qt_rng *r, uint64_t seed);
uint64_t qt_rng_next(qt_rng *r);
double qt_rng_uniform(qt_rng *r); /* [0, 1) */
double qt_rng_normal(qt_rng *r);  /* standard normal (Box–Muller) */

/* ------------------------------------------------------------------ tensors */

#define QT_MAX_DIMS 4

typedef enum { QT_PERSIST = 0, QT_STEP = 1 } qt_pool;

typedef struct qt_tensor {
    qt_dtype dtype;
    qt_device dev;
    qt_pool pool;
    int ndim;
    int64_t shape[QT_MAX_DIMS];
    int64_t stride[QT_MAX_DIMS]; /* in elements; ops require contiguous tensors */
    int64_t numel;
    void *data;
    struct qt_tensor *grad;  /* same shape, dtype and device; NULL until needed */
    bool requires_grad;      /* false for frozen tensors: they never get a grad */
    char name[96];           /* long enough for PEFT names (base_model.model.model.layers...) */
} qt_tensor;

typedef struct qt_ctx qt_ctx;

/* Uninitialised tensor of the context's device. */
qt_tensor *qt_empty(qt_ctx *c, qt_pool pool, qt_dtype dt, int ndim, const int64_t *shape);
qt_tensor *qt_zeros(qt_ctx *c, qt_pool pool, qt_dtype dt, int ndim, const int64_t *shape);
/* Trainable parameter (requires_grad, gradient in PERSIST, zeroed) or frozen weight. */
qt_tensor *qt_param(qt_ctx *c, const char *name, qt_dtype dt, int ndim, const int64_t *shape,
                    bool trainable);
/* A new tensor header sharing t's data with another shape of the same numel. No grad link:
 * use only on tensors that do not need gradients, or before they enter the tape. */
qt_tensor *qt_reshape_nograd(qt_ctx *c, qt_tensor *t, int ndim, const int64_t *shape);

/* A tensor header by value over memory the caller owns (e.g. a block of c->work): for
 * transient operands of qt_gemm and kernels, never for tensors that enter the tape. */
qt_tensor qt_tensor_over(void *data, qt_dtype dt, qt_device dev, int ndim, const int64_t *shape);

bool qt_is_contiguous(const qt_tensor *t);
bool qt_same_shape(const qt_tensor *a, const qt_tensor *b);
void qt_set_name(qt_tensor *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
size_t qt_nbytes(const qt_tensor *t);
/* "name f32[2,3] cuda" into buf; returns buf. */
const char *qt_describe(const qt_tensor *t, char *buf, size_t n);

/* Host <-> tensor copies with dtype conversion (float dtypes convert among themselves;
 * integer dtypes must match). Work for either device. */
void qt_upload(qt_tensor *t, const void *src, qt_dtype src_dtype);
void qt_download(const qt_tensor *t, void *dst, qt_dtype dst_dtype);
void qt_copy(qt_tensor *dst, const qt_tensor *src); /* same numel; any devices; float dtypes convert */
void qt_fill_zero(qt_tensor *t);
/* Random fills. CPU tensors draw every element from r in order. Float tensors on the GPU
 * are filled there by a counter-based generator: r advances once per call (one 64-bit key)
 * and element i is a function of (key, i) alone — SplitMix64 outputs i (uniform) or 2i, 2i+1
 * (normal, Box–Muller) of a stream started at key — so results are reproducible and need
 * no host pass, but differ from a CPU fill of the same r. */
void qt_fill_uniform(qt_tensor *t, qt_rng *r, double lo, double hi);
void qt_fill_normal(qt_tensor *t, qt_rng *r, double mean, double std);

/* ------------------------------------------------------------------ context & tape */

typedef struct qt_node qt_node;
typedef void (*qt_backward_fn)(qt_ctx *c, qt_node *n);

#define QT_MAX_IN 4
#define QT_MAX_SAVED 3

/* One recorded op. Backward reads out->grad and accumulates into in[i]->grad for
 * every input with requires_grad (use qt_grad to get or create that buffer). */
struct qt_node {
    const char *op;
    qt_backward_fn backward;
    qt_tensor *out;
    qt_tensor *in[QT_MAX_IN];
    int n_in;
    qt_tensor *saved[QT_MAX_SAVED]; /* STEP tensors the forward kept for backward */
    int64_t i[8];                   /* op parameters */
    double f[4];
    void *ext;                      /* op-specific struct, allocated with qt_step_host_alloc */
};

typedef struct qt_ctx_opts {
    qt_device dev;
    size_t persist_budget; /* device bytes for PERSIST tensors */
    size_t step_budget;    /* device bytes for STEP tensors */
    size_t scratch_budget; /* host bytes for CPU-reference scratch (0 = 256 MiB) */
    size_t work_budget;    /* device bytes for transient buffers inside one op, e.g. a
                              dequantized weight (0 = 64 MiB) */
    int cuda_device;       /* ordinal when dev == QT_CUDA */
    bool tf32;             /* allow TF32 in F32 matmuls on the GPU (off: exact F32) */
} qt_ctx_opts;

struct qt_ctx {
    qt_device dev;
    qt_arena data[2];     /* tensor data per pool, on dev */
    qt_arena meta[2];     /* tensor headers and op structs per pool, host */
    qt_arena scratch;     /* host scratch for CPU kernels */
    qt_arena work;        /* on dev: transient buffers, released by the op that took them */
    qt_node *tape;
    int tape_len, tape_cap;
    bool grad_enabled;    /* false: ops record nothing (inference, finite differences) */
    bool tf32;
    void *cuda;           /* backend state (stream, cuBLAS handles); NULL on CPU */
    struct qt_prof *prof; /* op profiler (QTRAIN_PROFILE=1 on CUDA); NULL when off */
};

/* Returns 0, or -1 after printing why. */
int qt_ctx_init(qt_ctx *c, const qt_ctx_opts *o);
void qt_ctx_free(qt_ctx *c);
/* Drop the tape and every STEP tensor. */
void qt_ctx_step_reset(qt_ctx *c);
/* Wait for queued device work (no-op on CPU). */
void qt_ctx_sync(qt_ctx *c);
void *qt_step_host_alloc(qt_ctx *c, size_t bytes);

/* Record an op if grad is enabled and any input requires grad; then out->requires_grad
 * is set. Returns the node (to fill saved/i/f/ext) or NULL when nothing was recorded. */
qt_node *qt_record(qt_ctx *c, const char *op, qt_backward_fn bw, qt_tensor *out, int n_in,
                   qt_tensor *const *in);
/* Gradient buffer of t, created zeroed (in t's pool) on first use. */
qt_tensor *qt_grad(qt_ctx *c, qt_tensor *t);
/* Walk the tape backwards from `out`. seed: d(objective)/d(out), same shape as out;
 * NULL means out is a scalar and the seed is 1. Gradients accumulate. */
void qt_backward(qt_ctx *c, qt_tensor *out, const qt_tensor *seed);
/* Gradient checkpointing: y = fn(x) is computed without recording its inner ops; only x is
 * kept. In backward, fn is run again with recording on, its own nodes are walked
 * backwards at once, and the STEP memory of that recomputation is released. fn must be
 * deterministic (replay any randomness from `user`) and must not keep pointers to the
 * STEP tensors it creates. Parameters fn reads through `user` get their gradients. */
typedef qt_tensor *(*qt_checkpoint_fn)(qt_ctx *c, qt_tensor *x, void *user);
qt_tensor *qt_checkpoint(qt_ctx *c, qt_checkpoint_fn fn, qt_tensor *x, void *user);

/* Zero the gradients of the given parameters (before a new accumulation window). */
void qt_zero_grads(qt_ctx *c, qt_tensor *const *params, int n);

/* ------------------------------------------------------------------ CPU reference helpers */

/* CPU kernels compute in double. load returns t's values as doubles (t->data itself for
 * F64, else a scratch copy); store/accum write doubles back converting to t's dtype.
 * Scratch is released with qt_scratch_reset(c, mark). */
double *qt_cpu_load(qt_ctx *c, const qt_tensor *t);
double *qt_cpu_scratch(qt_ctx *c, int64_t n); /* zeroed */
void qt_cpu_store(const qt_tensor *t, const double *v);
void qt_cpu_accum(const qt_tensor *t, const double *v); /* t += v */
static inline size_t qt_scratch_mark(qt_ctx *c) { return qt_arena_mark(&c->scratch); }
static inline void qt_scratch_reset(qt_ctx *c, size_t m) { qt_arena_reset(&c->scratch, m); }

/* ------------------------------------------------------------------ CUDA */

/* True when built with CUDA and a device is present. */
bool qt_cuda_available(void);
/* Device name and memory in one line, for logs. */
void qt_cuda_describe(char *buf, size_t n);
/* Current and peak bytes of device memory in use, as cudaMemGetInfo sees the whole device. */
size_t qt_cuda_mem_used(void);
/* Bytes of device memory free now (0 without CUDA). */
size_t qt_cuda_mem_free(void);

/* ------------------------------------------------------------------ async uploads
 * A copy stream beside the context's stream, for layer streaming: host-to-device copies
 * into reused device buffers ("slots") run while the context's stream computes. A copy
 * into a slot starts only once the context's stream has finished everything queued before
 * the call (the slot's previous contents are no longer read); qt_xfer_wait makes the
 * context's stream wait for a slot's copies on the device, with no host synchronisation.
 * On a CPU context copies are memcpy, done at once. src must be pinned (see above). */
typedef struct qt_xfer qt_xfer;
qt_xfer *qt_xfer_new(qt_ctx *c, int nslots);
void qt_xfer_free(qt_xfer *x);
void qt_xfer_copy(qt_xfer *x, int slot, void *dst, const void *src, size_t bytes);
void qt_xfer_wait(qt_xfer *x, int slot);
/* Bytes copied and device milliseconds the copies took since the last call (waits for
 * copies still in flight). */
void qt_xfer_stats(qt_xfer *x, double *bytes, double *ms);

/* ------------------------------------------------------------------ profiler
 * With QTRAIN_PROFILE=1 in the environment when a CUDA context is created, a CUDA event is
 * recorded on the context's stream at every op boundary: the end of each op's forward (in
 * qt_record), the start and end of each node's backward, and the marks below. The device
 * time between two consecutive events goes to the op (or mark) that closed the segment, in
 * its phase, so the table adds up to the stream's whole timeline (idle gaps, e.g. host
 * syncs, land in the segment where they happen). Events are read back (one sync) at
 * qt_ctx_step_reset and at print. Unset, nothing is recorded and every hook is one
 * pointer test. The first QTRAIN_PROFILE_SKIP steps (default 1: one-time set-up costs)
 * are left out of the totals. */
typedef enum {
    QT_PROF_AUTO = -1,  /* forward, recompute or backward, from where the tape is */
    QT_PROF_FWD = 0,
    QT_PROF_RECOMPUTE,  /* forward run again inside a checkpoint's backward */
    QT_PROF_BWD,
    QT_PROF_OTHER,      /* outside forward/backward: optimizer, data, glue */
    QT_PROF_NPHASES
} qt_prof_phase;
bool qt_profile_enabled(const qt_ctx *c);
/* The device time since the previous boundary belongs to `label` (a string that outlives
 * the context, e.g. a literal). No-op when profiling is off. */
void qt_profile_mark(qt_ctx *c, const char *label, qt_prof_phase ph);
/* Close the interval since the last call: keep = a training step (added to the totals
 * unless it is one of the first QTRAIN_PROFILE_SKIP), false = drop it (eval, saving). */
void qt_profile_step(qt_ctx *c, bool keep);
/* Table of ms per kept step, share and calls per op, forward / recompute / backward /
 * other separately, largest first. Prints nothing when profiling is off. */
void qt_profile_print(qt_ctx *c, FILE *f);

/* ------------------------------------------------------------------ ops
 * Every op returns a new STEP tensor on the inputs' device and records itself.
 * Shapes use the "flattened rows" convention: activations are [rows, features]. */

/* y = a + b (same shape) */
qt_tensor *qt_add(qt_ctx *c, qt_tensor *a, qt_tensor *b);
/* y[n, :] = x[n, :] + b; x [N, C], b [C], same dtype (linear-layer bias) */
qt_tensor *qt_add_bias(qt_ctx *c, qt_tensor *x, qt_tensor *b);
/* Inverted dropout: y = x * keep / (1 - p), keep drawn from a hash of (seed, element), so
 * the same seed gives the same mask on CPU and GPU and in a checkpointed recomputation.
 * p = 0 returns x itself. */
qt_tensor *qt_dropout(qt_ctx *c, qt_tensor *x, double p, uint64_t seed);
/* y = rows [r0, r1) of a 2-D x (a copy); the gradient goes back into those rows of x. */
qt_tensor *qt_rows(qt_ctx *c, qt_tensor *x, int64_t r0, int64_t r1);
/* y = s * a */
qt_tensor *qt_scale(qt_ctx *c, qt_tensor *a, double s);
/* y = a converted to dtype dt (gradient converts back) */
qt_tensor *qt_cast(qt_ctx *c, qt_tensor *a, qt_dtype dt);

/* y[M,N] = op(a) · op(b); a is [M,K] (or [K,M] if ta), b is [K,N] (or [N,K] if tb).
 * Linear layers: qt_matmul(c, x, W, false, true) with W [out, in].
 * BF16/F16 inputs accumulate in F32 and write the input dtype. */
qt_tensor *qt_matmul(qt_ctx *c, qt_tensor *a, qt_tensor *b, bool ta, bool tb);

/* No tape: y = op(a)·op(b) (accumulate false) or y += op(a)·op(b). Shapes as qt_matmul;
 * y [M,N] preallocated with a's dtype and device. For ops built on matmul (quant's NF4
 * linear) that manage their own backward. */
void qt_gemm(qt_ctx *c, qt_tensor *y, const qt_tensor *a, const qt_tensor *b, bool ta, bool tb,
             bool accumulate);

/* LoRA adapter on a base projection: out = y + scale · (dropout(x) · Aᵀ) · Bᵀ.
 * x [N, in] and y [N, out] share a float dtype; A [r, in] and B [out, r] are F32 (F64 on the
 * CPU). Dropout is qt_dropout's mask (same p, seed: same mask); p = 0 turns it off.
 * y is CONSUMED: out is written into y's buffer, so y must be a STEP tensor that nothing
 * reads before or after (e.g. the fresh output of the base matmul); its gradient is out's.
 * On the GPU the GEMMs run in x's dtype (A, B, and the [N, r] bottleneck rounded to it)
 * with F32 accumulation; A's and B's gradients are accumulated in F32. */
qt_tensor *qt_lora(qt_ctx *c, qt_tensor *y, qt_tensor *x, qt_tensor *A, qt_tensor *B, double scale,
                   double dropout, uint64_t seed);

/* y[n,:] = table[ids[n], :]; ids I32 [N], table [V, H]. Out-of-range ids abort. */
qt_tensor *qt_embedding(qt_ctx *c, qt_tensor *table, qt_tensor *ids);

/* y = x / sqrt(mean(x^2) + eps) * w; x [N, H], w [H]. Statistics in float (HF computes the
 * norm in float32 and casts back before multiplying by w: we do the same). */
qt_tensor *qt_rmsnorm(qt_ctx *c, qt_tensor *x, qt_tensor *w, double eps);

/* RoPE, HF rotate-half convention, on x [B*T, nh*hd] laid out [B, T, nh, hd].
 * Position of row (b, t) is pos0 + t. inv_freq has hd/2 entries (qt_rope_inv_freq). */
typedef struct qt_rope {
    int head_dim;
    double theta;
    /* scaling: 0 none, 1 linear, 2 llama3 */
    int scaling;
    double factor, low_freq_factor, high_freq_factor;
    int original_max_pos;
} qt_rope;
void qt_rope_inv_freq(const qt_rope *r, float *inv_freq /* [hd/2] */);
qt_tensor *qt_rope_apply(qt_ctx *c, qt_tensor *x, const qt_rope *r, int B, int T, int nh,
                         int pos0);

/* y = silu(gate) * up; same shapes */
qt_tensor *qt_swiglu(qt_ctx *c, qt_tensor *gate, qt_tensor *up);

/* Causal grouped-query attention. q [B*T, nh*hd], k and v [B*T, nkv*hd] (rows are
 * (b, t), columns (head, dim)); nh % nkv == 0; query head h reads KV head h/(nh/nkv).
 * Scale 1/sqrt(hd). Out [B*T, nh*hd]. */
qt_tensor *qt_attention(qt_ctx *c, qt_tensor *q, qt_tensor *k, qt_tensor *v, int B, int T,
                        int nh, int nkv, int hd);
/* Inference attention over a KV cache (no gradient, not recorded). q [B*Tq, nh*hd] holds
 * the queries of positions past..past+Tq-1; kc, vc [B*Tmax, nkv*hd] hold keys/values of
 * positions 0..past+Tq-1 in rows b*Tmax + t (the caller has already written this step's
 * rows). Query t attends to cache positions 0..past+t. Out [B*Tq, nh*hd]. */
qt_tensor *qt_attention_kv(qt_ctx *c, qt_tensor *q, qt_tensor *kc, qt_tensor *vc, int B, int Tq,
                           int past, int Tmax, int nh, int nkv, int hd);

/* Mean softmax cross-entropy over rows whose target != ignore_index. logits [N, V] float,
 * targets I32 [N]. Returns an F32 scalar [1]; 0 when every row is ignored. */
qt_tensor *qt_cross_entropy(qt_ctx *c, qt_tensor *logits, qt_tensor *targets, int ignore_index);

#ifdef __cplusplus
}
#endif
#endif
