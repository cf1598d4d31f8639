/* CUDA qt_attention through cuDNN's fused flash attention (cuDNN 9, backend graph API).
 *
 * cuDNN has no attention call in its C API: it recognises scaled-dot-product attention as a
 * pattern in an operation graph and runs the whole graph as one fused flash-attention kernel,
 * so nothing of size T x T is ever in memory. The graphs below are the ones the cudnn-frontend
 * library's SDPA nodes emit (node/scaled_dot_product_flash_attention.h, the causal mask of its
 * score modifiers, softmax.h), written out with the C backend API: every tensor and operation
 * is a descriptor, the operation graph goes to the heuristics, the first engine configuration
 * that finalises into an execution plan is kept (deterministic engines first), and a variant
 * pack binds the tensors' unique ids to pointers at each run. The graphs and their tensors'
 * unique ids are spelled out above fwd_graph and bwd_graph.
 *
 * Layouts, no copies: q/out [B*T, nh*hd] row-major are the 4-D tensors [B, nh, T, hd] with
 * strides (T*nh*hd, hd, nh*hd, 1), k/v the same with nkv heads (cuDNN reads K^T: dims and
 * strides of the last two swapped). GQA is cuDNN's own: nh/nkv query heads per KV head. The
 * softmax stats cuDNN writes, [B, nh, T, 1] F32 natural-log log-sum-exp of the scaled masked
 * scores, is exactly our lse [B, nh, T]: the forward writes it in place, the backward reads it,
 * so this path pairs with the others' forward or backward. Backward's D = rowsum(dO * O) goes
 * into the caller's dsum scratch, which has the shape cuDNN wants for it.
 *
 * cuDNN overwrites dQ/dK/dV, our gradients accumulate: it writes them into transient buffers
 * that are then added to the gradients (k and v may be one tensor: two adds in stream order).
 * Transient memory (dQ's F32 accumulator, those buffers, the plan's workspace) comes from
 * c->work, else the STEP pool, and is given back before the launcher returns.
 *
 * Plans are built once per (direction, dtype, B, T, nh, nkv, hd) and kept in the context with
 * every descriptor they came from; a shape cuDNN refuses is remembered too. Under AUTO a
 * refusal (no engine for the graph, a plan it will not run, no cuDNN, workspace too large:
 * all found before anything is written) falls back to the other paths with one line on
 * stderr the first time; with the path forced to cuDNN it is an error saying why (file:line
 * of the failing call, cuDNN's status and its last error message). */
#include <float.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention.cuh"

#if QT_WITH_CUDNN
#include <cudnn.h>

/* ---- checked calls */

/* Runtime calls after a plan exists: failures are bugs or device errors, so they are fatal. */
#define QT_CUDNN_CHECK(call)                                                               \
    do {                                                                                   \
        cudnnStatus_t qt_st_ = (call);                                                     \
        if (qt_st_ != CUDNN_STATUS_SUCCESS) {                                              \
            char qt_msg_[512];                                                             \
            cudnnGetLastErrorString(qt_msg_, sizeof qt_msg_);                              \
            qt_fail(__FILE__, __LINE__, #call, "%s (%s)", cudnnGetErrorString(qt_st_),      \
                    qt_msg_[0] ? qt_msg_ : "no message from cuDNN");                       \
        }                                                                                  \
    } while (0)

/* While building a graph a failure is an answer (cuDNN does not support it): the first one is
 * kept as "file:line: call: status: cuDNN's message" and everything after it is skipped. */
typedef struct cdn_err {
    bool failed;
    char msg[640];
} cdn_err;

static bool cdn_ok(cdn_err *e, cudnnStatus_t st, const char *call, const char *file, int line) {
    if (st == CUDNN_STATUS_SUCCESS) return true;
    if (!e->failed) {
        char last[384];
        cudnnGetLastErrorString(last, sizeof last);
        for (char *p = last; *p; p++)
            if (*p == '\n' || *p == '\r') *p = ' '; /* the fallback note is one line */
        snprintf(e->msg, sizeof e->msg, "%s:%d: %s: %s%s%s", file, line, call, cudnnGetErrorString(st),
                 last[0] ? ": " : "", last);
    }
    e->failed = true;
    return false;
}
#define CDN_OK(e, call) cdn_ok((e), (call), #call, __FILE__, __LINE__)

/* ---- graph building: descriptors with their attributes */

#define CDN_MAX_DESC 256 /* tensors, ops, graph, heuristics, engine configs, plan */
#define CDN_MAX_OPS 48

typedef cudnnBackendDescriptor_t cdn_d;

typedef struct cdn_graph {
    cdn_err e;
    cdn_d all[CDN_MAX_DESC]; /* every descriptor made, destroyed in reverse with the plan */
    int nall;
    cdn_d ops[CDN_MAX_OPS];
    int nops;
} cdn_graph;

static cdn_d cdn_new(cdn_graph *g, cudnnBackendDescriptorType_t type) {
    if (g->e.failed) return NULL;
    QT_CHECK(g->nall < CDN_MAX_DESC, "cuDNN attention: more than %d descriptors", CDN_MAX_DESC);
    cdn_d d = NULL;
    if (!CDN_OK(&g->e, cudnnBackendCreateDescriptor(type, &d))) return NULL;
    g->all[g->nall++] = d;
    return d;
}

/* Attribute setters that name the attribute in the error (d NULL: an earlier step failed). */
#define CDN_SET(g, d, attr, type, n, v)                                                    \
    do {                                                                                   \
        if (!(g)->e.failed)                                                                \
            cdn_ok(&(g)->e, cudnnBackendSetAttribute((d), (attr), (type), (n), (v)),        \
                   "cudnnBackendSetAttribute(" #attr ")", __FILE__, __LINE__);             \
    } while (0)
#define CDN_SET_DESC(g, d, attr, x) CDN_SET(g, d, attr, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &(x))
#define CDN_FINALIZE(g, d, what)                                                           \
    do {                                                                                   \
        if (!(g)->e.failed)                                                                \
            cdn_ok(&(g)->e, cudnnBackendFinalize(d), "cudnnBackendFinalize(" what ")",     \
                   __FILE__, __LINE__);                                                    \
    } while (0)

typedef struct cdn_shape {
    int64_t dim[4], stride[4];
} cdn_shape;

static cdn_shape shp(int64_t d0, int64_t d1, int64_t d2, int64_t d3, int64_t s0, int64_t s1, int64_t s2,
                     int64_t s3) {
    cdn_shape s = {{d0, d1, d2, d3}, {s0, s1, s2, s3}};
    return s;
}

enum { CDN_REAL = 0, CDN_VIRT = 1, CDN_BY_VALUE = 2, CDN_F16X16 = 4 };

/* A tensor: data type, 4-D dims and strides in elements, unique id, 16-byte alignment.
 * Virtual ones live only inside the fused kernel; by-value ones are host scalars. */
static cdn_d cdn_tensor(cdn_graph *g, int64_t uid, cudnnDataType_t dt, cdn_shape s, int flags) {
    cdn_d t = cdn_new(g, CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    const int64_t align = 16;
    const bool virt = flags & CDN_VIRT, by_value = flags & CDN_BY_VALUE;
    CDN_SET(g, t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt);
    CDN_SET(g, t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, s.dim);
    CDN_SET(g, t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, s.stride);
    CDN_SET(g, t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    CDN_SET(g, t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
    CDN_SET(g, t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &virt);
    if (by_value) CDN_SET(g, t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value);
    if (flags & CDN_F16X16) {
        cudnnBackendTensorReordering_t r = CUDNN_TENSOR_REORDERING_F16x16;
        CDN_SET(g, t, CUDNN_ATTR_TENSOR_REORDERING_MODE, CUDNN_TYPE_TENSOR_REORDERING_MODE, 1, &r);
    }
    CDN_FINALIZE(g, t, "tensor");
    return t;
}

static void cdn_add_op(cdn_graph *g, cdn_d op) {
    if (g->e.failed) return;
    QT_CHECK(g->nops < CDN_MAX_OPS, "cuDNN attention: more than %d operations", CDN_MAX_OPS);
    g->ops[g->nops++] = op;
}

/* y = mode(x [, b] [, t]) computed in prec; axis is GEN_INDEX's dimension (else unused). For
 * BINARY_SELECT, y = t ? x : b. */
static void cdn_pointwise(cdn_graph *g, cudnnPointwiseMode_t mode, cudnnDataType_t prec, int64_t axis,
                          cdn_d x, cdn_d b, cdn_d t, cdn_d y) {
    cdn_d pw = cdn_new(g, CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    CDN_SET(g, pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    CDN_SET(g, pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec);
    if (mode == CUDNN_POINTWISE_GEN_INDEX) CDN_SET(g, pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
    CDN_FINALIZE(g, pw, "pointwise");
    cdn_d op = cdn_new(g, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    CDN_SET_DESC(g, op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw);
    CDN_SET_DESC(g, op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x);
    if (b) CDN_SET_DESC(g, op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b);
    if (t) CDN_SET_DESC(g, op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t);
    CDN_SET_DESC(g, op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y);
    CDN_FINALIZE(g, op, "pointwise operation");
    cdn_add_op(g, op);
}

/* The common two-input pointwise ops, computed in F32. */
static void cdn_pw2(cdn_graph *g, cudnnPointwiseMode_t mode, cdn_d x, cdn_d b, cdn_d y) {
    cdn_pointwise(g, mode, CUDNN_DATA_FLOAT, -1, x, b, NULL, y);
}

/* y = reduction of x over the dimensions where y has extent 1 (or, for GQA's heads, a
 * group of them), computed in F32. */
static void cdn_reduce(cdn_graph *g, cudnnReduceTensorOp_t how, cdn_d x, cdn_d y) {
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    cdn_d r = cdn_new(g, CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    CDN_SET(g, r, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &how);
    CDN_SET(g, r, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32);
    CDN_FINALIZE(g, r, "reduction");
    cdn_d op = cdn_new(g, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    CDN_SET_DESC(g, op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x);
    CDN_SET_DESC(g, op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y);
    CDN_SET_DESC(g, op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, r);
    CDN_FINALIZE(g, op, "reduction operation");
    cdn_add_op(g, op);
}

/* c = a b over the last two dimensions, batched over the first two, F32 accumulation. */
static void cdn_matmul(cdn_graph *g, cdn_d a, cdn_d b, cdn_d c) {
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    cdn_d m = cdn_new(g, CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    CDN_SET(g, m, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32);
    CDN_FINALIZE(g, m, "matmul");
    cdn_d op = cdn_new(g, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    CDN_SET_DESC(g, op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, a);
    CDN_SET_DESC(g, op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, b);
    CDN_SET_DESC(g, op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, c);
    CDN_SET_DESC(g, op, CUDNN_ATTR_OPERATION_MATMUL_DESC, m);
    CDN_FINALIZE(g, op, "matmul operation");
    cdn_add_op(g, op);
}

/* y: the same elements as x seen through other dims/strides (here: transposes). */
static void cdn_reshape(cdn_graph *g, cdn_d x, cdn_d y) {
    cdn_d op = cdn_new(g, CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
    CDN_SET_DESC(g, op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x);
    CDN_SET_DESC(g, op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y);
    CDN_FINALIZE(g, op, "reshape operation");
    cdn_add_op(g, op);
}

/* ---- the graphs */

/* Unique ids. The non-virtual tensors are bound at each run; the virtual ones (>= 100) name
 * the intermediate values in the comments below. */
enum {
    U_Q = 1, U_K, U_V, U_O, U_STATS, U_DO, U_DQ, U_DK, U_DV, U_DSUM, U_DQ_ACC,
    U_SCALE = 20, U_NEG, U_ONE,
    U_S = 100, U_SS, U_ROW, U_COL, U_KEEP, U_SM, U_MAX, U_SUB, U_EXP, U_SUM, U_LOGSUM, U_P,
    U_DOO = 120, U_DROW, U_Z, U_PT, U_DVF, U_DP, U_DPM, U_DPS, U_DS0, U_DS, U_DST, U_DKF, U_KR,
};

/* Two spellings of the same graphs, tried in this order: the one cudnn-frontend emits now
 * (causal mask after the stats are subtracted in backward, D in memory, mask indices computed
 * in F32) and the one of its first cuDNN 9 releases (mask before, D virtual, the F32 dQ
 * accumulator marked F16x16-reordered, indices in INT32). Both compute the same thing; which
 * of them a given cuDNN 9 release's pattern matcher takes could not be tried here (no GPU). */
enum { CDN_STYLE_NEW = 0, CDN_STYLE_OLD = 1, CDN_STYLES = 2 };

typedef struct cdn_dims {
    int64_t B, T, nh, nkv, hd;
    cudnnDataType_t io; /* q/k/v/out (and their gradients) */
} cdn_dims;

/* [B, heads, T, hd] over our token-major rows, and its transpose [B, heads, hd, T]. */
static cdn_shape rows_bhsd(const cdn_dims *d, int64_t heads) {
    return shp(d->B, heads, d->T, d->hd, d->T * heads * d->hd, d->hd, heads * d->hd, 1);
}
static cdn_shape rows_bhds(const cdn_dims *d, int64_t heads) {
    return shp(d->B, heads, d->hd, d->T, d->T * heads * d->hd, d->hd, 1, heads * d->hd);
}
/* Scores [B, nh, T, T] packed; per-row values [B, nh, T, 1] (the stats, D, max, sum). */
static cdn_shape scores(const cdn_dims *d) {
    return shp(d->B, d->nh, d->T, d->T, d->nh * d->T * d->T, d->T * d->T, d->T, 1);
}
static cdn_shape per_row(const cdn_dims *d) { return shp(d->B, d->nh, d->T, 1, d->nh * d->T, d->T, 1, 1); }
static cdn_shape scalar(void) { return shp(1, 1, 1, 1, 1, 1, 1, 1); }

/* Causal mask on scores x (virtual F32): y = row >= col ? x : neg, row/col from GEN_INDEX. */
static cdn_d causal_mask(cdn_graph *g, const cdn_dims *d, int style, cdn_d x, cdn_d neg, int64_t uid_out) {
    const cdn_shape sc = scores(d);
    const cudnnDataType_t idx_prec = style == CDN_STYLE_NEW ? CUDNN_DATA_FLOAT : CUDNN_DATA_INT32;
    cdn_d row = cdn_tensor(g, U_ROW, CUDNN_DATA_INT32, sc, CDN_VIRT);
    cdn_d col = cdn_tensor(g, U_COL, CUDNN_DATA_INT32, sc, CDN_VIRT);
    cdn_d keep = cdn_tensor(g, U_KEEP, CUDNN_DATA_BOOLEAN, sc, CDN_VIRT);
    cdn_d y = cdn_tensor(g, uid_out, CUDNN_DATA_FLOAT, sc, CDN_VIRT);
    cdn_pointwise(g, CUDNN_POINTWISE_GEN_INDEX, idx_prec, 2, x, NULL, NULL, row);
    cdn_pointwise(g, CUDNN_POINTWISE_GEN_INDEX, idx_prec, 3, x, NULL, NULL, col);
    cdn_pointwise(g, CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, -1, row, col, NULL, keep);
    cdn_pointwise(g, CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, -1, x, neg, keep, y);
    return y;
}

/* Forward (uids):
 *   S(100)      = Q(1) . K^T(2)                        matmul, F32
 *   SS(101)     = S * scale(20)                        scale = 1/sqrt(hd), by value
 *   SM(105)     = causal_mask(SS): ROW(102) >= COL(103) -> KEEP(104) ? SS : neg(21)
 *   MAX(106)    = max over keys of SM                  reduction
 *   SUB(107)    = SM - MAX;  EXP(108) = exp(SUB)
 *   SUM(109)    = sum over keys of EXP                 reduction
 *   STATS(5)    = MAX + LOGSUM(110), LOGSUM = log(SUM) our lse, F32 [B, nh, T, 1]
 *   P(111)      = EXP / SUM                            in the io dtype (the matmul's A)
 *   O(4)        = P . V(3) */
static void fwd_graph(cdn_graph *g, const cdn_dims *d, int style) {
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    const cdn_shape sc = scores(d), pr = per_row(d);
    cdn_d q = cdn_tensor(g, U_Q, d->io, rows_bhsd(d, d->nh), CDN_REAL);
    cdn_d kt = cdn_tensor(g, U_K, d->io, rows_bhds(d, d->nkv), CDN_REAL);
    cdn_d v = cdn_tensor(g, U_V, d->io, rows_bhsd(d, d->nkv), CDN_REAL);
    cdn_d o = cdn_tensor(g, U_O, d->io, rows_bhsd(d, d->nh), CDN_REAL);
    cdn_d stats = cdn_tensor(g, U_STATS, f32, pr, CDN_REAL);
    cdn_d scale = cdn_tensor(g, U_SCALE, f32, scalar(), CDN_BY_VALUE);
    cdn_d neg = cdn_tensor(g, U_NEG, f32, scalar(), CDN_BY_VALUE);

    cdn_d s = cdn_tensor(g, U_S, f32, sc, CDN_VIRT);
    cdn_matmul(g, q, kt, s);
    cdn_d ss = cdn_tensor(g, U_SS, f32, sc, CDN_VIRT);
    cdn_pw2(g, CUDNN_POINTWISE_MUL, s, scale, ss);
    cdn_d sm = causal_mask(g, d, style, ss, neg, U_SM);

    cdn_d mx = cdn_tensor(g, U_MAX, f32, pr, CDN_VIRT);
    cdn_reduce(g, CUDNN_REDUCE_TENSOR_MAX, sm, mx);
    cdn_d sub = cdn_tensor(g, U_SUB, f32, sc, CDN_VIRT);
    cdn_pw2(g, CUDNN_POINTWISE_SUB, sm, mx, sub);
    cdn_d ex = cdn_tensor(g, U_EXP, f32, sc, CDN_VIRT);
    cdn_pointwise(g, CUDNN_POINTWISE_EXP, f32, -1, sub, NULL, NULL, ex);
    cdn_d sum = cdn_tensor(g, U_SUM, f32, pr, CDN_VIRT);
    cdn_reduce(g, CUDNN_REDUCE_TENSOR_ADD, ex, sum);
    cdn_d lsum = cdn_tensor(g, U_LOGSUM, f32, pr, CDN_VIRT);
    cdn_pointwise(g, CUDNN_POINTWISE_LOG, f32, -1, sum, NULL, NULL, lsum);
    cdn_pw2(g, CUDNN_POINTWISE_ADD, mx, lsum, stats);
    cdn_d p = cdn_tensor(g, U_P, d->io, sc, CDN_VIRT);
    cdn_pw2(g, CUDNN_POINTWISE_DIV, ex, sum, p);
    cdn_matmul(g, p, v, o);
}

/* dK or dV = A . X: straight into out when nh == nkv; with GQA per query head into a
 * virtual [B, nh, T, hd] (io dtype) that a reduction sums over each KV head's group. */
static void grad_kv(cdn_graph *g, const cdn_dims *d, cdn_d a, cdn_d x, cdn_d out, int64_t uid_full) {
    if (d->nh == d->nkv) {
        cdn_matmul(g, a, x, out);
        return;
    }
    const int64_t T = d->T, hd = d->hd, nh = d->nh;
    cdn_d full = cdn_tensor(g, uid_full, d->io, shp(d->B, nh, T, hd, nh * T * hd, T * hd, hd, 1), CDN_VIRT);
    cdn_matmul(g, a, x, full);
    cdn_reduce(g, CUDNN_REDUCE_TENSOR_ADD, full, out);
}

/* Backward (uids; dK/dV as in forward, dQ through an F32 accumulator):
 *   DOO(120)    = dO(6) * O(4)                          [B, nh, T, hd] virtual
 *   DROW(121)   = sum over hd of DOO
 *   DSUM(10)    = DROW * one(22)                        D; our dsum (NEW) or virtual (OLD)
 *   S(100)      = Q(1) . K^T(2);  SS(101) = S * scale(20)
 *   NEW: SUB(107) = SS - STATS(5);  Z(122) = causal_mask(SUB)
 *   OLD: SM(105) = causal_mask(SS); Z(122) = SM - STATS(5)
 *   EXP(108)    = exp(Z)                                P, recomputed
 *   PT(123)     = EXP transposed [B, nh, T_kv, T_q], io dtype (reshape)
 *   dV(9)       = PT . dO                               (GQA: DVF(124), then summed)
 *   DP(125)     = dO . V^T(3);  DPM(126) = DP * one;  DPS(127) = DPM - DSUM
 *   DS0(128)    = DPS * EXP;  DS(129) = DS0 * scale     dS, the scores' gradient
 *   DST(130)    = DS transposed, io dtype (reshape)
 *   dK(8)       = DST . Q                               (GQA: DKF(131), then summed)
 *   KR(132)     = K^T seen as K (reshape)
 *   DQ_ACC(11)  = DS . KR                                F32 [B, nh, T, hd] packed, ours
 *   dQ(7)       = identity(DQ_ACC)                      converted to the io dtype */
static void bwd_graph(cdn_graph *g, const cdn_dims *d, int style) {
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    const int64_t B = d->B, T = d->T, nh = d->nh, nkv = d->nkv, hd = d->hd;
    const cdn_shape sc = scores(d), pr = per_row(d);
    cdn_d q = cdn_tensor(g, U_Q, d->io, rows_bhsd(d, nh), CDN_REAL);
    cdn_d kt = cdn_tensor(g, U_K, d->io, rows_bhds(d, nkv), CDN_REAL);
    cdn_d vt = cdn_tensor(g, U_V, d->io, rows_bhds(d, nkv), CDN_REAL);
    cdn_d o = cdn_tensor(g, U_O, d->io, rows_bhsd(d, nh), CDN_REAL);
    cdn_d dout = cdn_tensor(g, U_DO, d->io, rows_bhsd(d, nh), CDN_REAL);
    cdn_d stats = cdn_tensor(g, U_STATS, f32, pr, CDN_REAL);
    cdn_d dq = cdn_tensor(g, U_DQ, d->io, rows_bhsd(d, nh), CDN_REAL);
    cdn_d dk = cdn_tensor(g, U_DK, d->io, rows_bhsd(d, nkv), CDN_REAL);
    cdn_d dv = cdn_tensor(g, U_DV, d->io, rows_bhsd(d, nkv), CDN_REAL);
    cdn_d scale = cdn_tensor(g, U_SCALE, f32, scalar(), CDN_BY_VALUE);
    cdn_d neg = cdn_tensor(g, U_NEG, f32, scalar(), CDN_BY_VALUE);
    cdn_d one = cdn_tensor(g, U_ONE, f32, scalar(), CDN_BY_VALUE);

    /* D = rowsum(dO * O); the frontend's odd strides for the virtual product kept as they are */
    cdn_d doo = cdn_tensor(g, U_DOO, f32, shp(B, nh, T, hd, nh * T * hd, T * hd, nh * hd, 1), CDN_VIRT);
    cdn_pw2(g, CUDNN_POINTWISE_MUL, dout, o, doo);
    cdn_d drow = cdn_tensor(g, U_DROW, f32, pr, CDN_VIRT);
    cdn_reduce(g, CUDNN_REDUCE_TENSOR_ADD, doo, drow);
    cdn_d dsum = cdn_tensor(g, U_DSUM, f32, pr, style == CDN_STYLE_NEW ? CDN_REAL : CDN_VIRT);
    cdn_pw2(g, CUDNN_POINTWISE_MUL, drow, one, dsum);

    /* P = exp(scale S - lse), masked */
    cdn_d s = cdn_tensor(g, U_S, f32, sc, CDN_VIRT);
    cdn_matmul(g, q, kt, s);
    cdn_d ss = cdn_tensor(g, U_SS, f32, sc, CDN_VIRT);
    cdn_pw2(g, CUDNN_POINTWISE_MUL, s, scale, ss);
    cdn_d z;
    if (style == CDN_STYLE_NEW) {
        cdn_d sub = cdn_tensor(g, U_SUB, f32, sc, CDN_VIRT);
        cdn_pw2(g, CUDNN_POINTWISE_SUB, ss, stats, sub);
        z = causal_mask(g, d, style, sub, neg, U_Z);
    } else {
        cdn_d sm = causal_mask(g, d, style, ss, neg, U_SM);
        z = cdn_tensor(g, U_Z, f32, sc, CDN_VIRT);
        cdn_pw2(g, CUDNN_POINTWISE_SUB, sm, stats, z);
    }
    cdn_d p = cdn_tensor(g, U_EXP, f32, sc, CDN_VIRT);
    cdn_pointwise(g, CUDNN_POINTWISE_EXP, f32, -1, z, NULL, NULL, p);

    /* dV = P^T dO */
    cdn_d pt = cdn_tensor(g, U_PT, d->io, shp(B, nh, T, T, nh * T * T, T * T, 1, T), CDN_VIRT);
    cdn_reshape(g, p, pt);
    grad_kv(g, d, pt, dout, dv, U_DVF);

    /* dS = P * (dO V^T - D) * scale */
    cdn_d dp = cdn_tensor(g, U_DP, f32, sc, CDN_VIRT);
    cdn_matmul(g, dout, vt, dp);
    cdn_d dpm = cdn_tensor(g, U_DPM, f32, sc, CDN_VIRT);
    cdn_pw2(g, CUDNN_POINTWISE_MUL, dp, one, dpm);
    cdn_d dps = cdn_tensor(g, U_DPS, f32, sc, CDN_VIRT);
    cdn_pw2(g, CUDNN_POINTWISE_SUB, dpm, dsum, dps);
    cdn_d ds0 = cdn_tensor(g, U_DS0, f32, sc, CDN_VIRT);
    cdn_pw2(g, CUDNN_POINTWISE_MUL, dps, p, ds0);
    cdn_d ds = cdn_tensor(g, U_DS, f32, sc, CDN_VIRT);
    cdn_pw2(g, CUDNN_POINTWISE_MUL, ds0, scale, ds);

    /* dK = dS^T Q */
    cdn_d dst = cdn_tensor(g, U_DST, d->io, shp(B, nh, T, T, nh * T * T, T * T, 1, T), CDN_VIRT);
    cdn_reshape(g, ds, dst);
    grad_kv(g, d, dst, q, dk, U_DKF);

    /* dQ = dS K, accumulated in F32 by cuDNN in memory we give it */
    cdn_d kr = cdn_tensor(g, U_KR, f32, rows_bhsd(d, nkv), CDN_VIRT);
    cdn_reshape(g, kt, kr);
    cdn_d acc = cdn_tensor(g, U_DQ_ACC, f32, shp(B, nh, T, hd, nh * T * hd, T * hd, hd, 1),
                           style == CDN_STYLE_NEW ? CDN_REAL : CDN_REAL | CDN_F16X16);
    cdn_matmul(g, ds, kr, acc);
    cdn_pointwise(g, CUDNN_POINTWISE_IDENTITY, f32, -1, acc, NULL, NULL, dq);
}

/* ---- plans */

typedef struct cdn_key {
    int bwd, dtype, B, T, nh, nkv, hd;
} cdn_key;

typedef struct cdn_plan {
    cdn_key key;
    bool ok;        /* false: cuDNN refused this shape (why says how), not retried */
    int style;      /* the graph spelling that made the plan */
    bool nondet;    /* its engine is marked non-deterministic */
    cdn_d plan;     /* one of g.all */
    int64_t ws;     /* workspace bytes the plan needs */
    cdn_graph g;    /* descriptors of the graph, heuristics and plan, alive as long as it */
    char why[768];
} cdn_plan;

typedef struct cdn_state {
    cudnnHandle_t h; /* NULL when cudnnCreate failed: why says so */
    char why[640];
    cdn_plan **plans;
    int n, cap;
} cdn_state;

static void graph_free(cdn_graph *g) {
    for (int i = g->nall - 1; i >= 0; i--) cudnnBackendDestroyDescriptor(g->all[i]);
    g->nall = g->nops = 0;
}

/* Does cfg's engine carry the non-deterministic note (atomics)? Unknown counts as yes. */
static bool cfg_nondet(cdn_d cfg) {
    cdn_err e = {};
    cdn_d eng = NULL;
    bool nondet = true;
    if (!CDN_OK(&e, cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &eng))) return true;
    int64_t n = 0;
    cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
    if (CDN_OK(&e, cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                            1, &n, &eng)) &&
        CDN_OK(&e, cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                            CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &n, notes))) {
        nondet = false;
        for (int64_t i = 0; i < n; i++) nondet |= notes[i] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC;
    }
    cudnnBackendDestroyDescriptor(eng);
    return nondet;
}

/* Operation graph -> heuristics (mode A) -> the first engine configuration that finalises into
 * an execution plan, deterministic ones first. */
static void make_plan(cdn_graph *g, cudnnHandle_t h, cdn_plan *p) {
    cdn_d graph = cdn_new(g, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    CDN_SET(g, graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &h);
    CDN_SET(g, graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, g->nops, g->ops);
    CDN_FINALIZE(g, graph, "operation graph");
    cdn_d heur = cdn_new(g, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    CDN_SET_DESC(g, heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph);
    CDN_SET(g, heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    CDN_FINALIZE(g, heur, "engine heuristics");
    int64_t n = 0;
    if (!g->e.failed)
        CDN_OK(&g->e, cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                               CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &n, NULL));
    if (g->e.failed) return;
    if (n > 32) n = 32;
    if (n < 1) {
        snprintf(g->e.msg, sizeof g->e.msg, "the heuristics offer no engine for this graph");
        g->e.failed = true;
        return;
    }
    cdn_d cfgs[32];
    for (int64_t i = 0; i < n; i++) cfgs[i] = cdn_new(g, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
    int64_t got = 0;
    if (!g->e.failed)
        CDN_OK(&g->e, cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                               CUDNN_TYPE_BACKEND_DESCRIPTOR, n, &got, cfgs));
    if (g->e.failed) return;
    cdn_err last = {}; /* why the last configuration did not make a plan */
    for (int pass = 0; pass < 2 && !p->plan; pass++)
        for (int64_t i = 0; i < got && !p->plan; i++) {
            bool nondet = cfg_nondet(cfgs[i]);
            if (pass == 0 && nondet) continue;
            if (pass == 1 && !nondet) continue; /* tried in pass 0 */
            cdn_d plan = cdn_new(g, CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
            cdn_err e = {};
            int64_t one = 0;
            if (plan && CDN_OK(&e, cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE,
                                                            CUDNN_TYPE_HANDLE, 1, &h)) &&
                CDN_OK(&e, cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                                                    CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfgs[i])) &&
                CDN_OK(&e, cudnnBackendFinalize(plan)) &&
                CDN_OK(&e, cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                                    CUDNN_TYPE_INT64, 1, &one, &p->ws))) {
                p->plan = plan;
                p->nondet = nondet;
            } else {
                last = e;
            }
        }
    if (!p->plan) {
        g->e = last;
        if (!g->e.failed) snprintf(g->e.msg, sizeof g->e.msg, "no engine configuration made a plan");
        g->e.failed = true;
    }
}

static const char *dtype_unsupported(int dt, int hd) {
    if (dt != QT_BF16 && dt != QT_F16) return "cuDNN attention takes bf16 or f16";
    if (hd % 8 || hd > 256) return "cuDNN attention needs a head dim that is a multiple of 8, at most 256";
    return NULL;
}

/* The context's cuDNN state, made on first use (cudnnCreate loads the library's engines). */
static cdn_state *state_of(qt_ctx *c) {
    qt_cuda_state *cs = qt_cuda(c);
    if (cs->cudnn_attn) return (cdn_state *)cs->cudnn_attn;
    cdn_state *st = (cdn_state *)calloc(1, sizeof *st);
    QT_CHECK(st, "out of host memory");
    cdn_err e = {};
    if (cudnnGetVersion() < 90000)
        snprintf(st->why, sizeof st->why, "cuDNN %zu is older than 9.0", cudnnGetVersion());
    else if (CDN_OK(&e, cudnnCreate(&st->h)))
        QT_CUDNN_CHECK(cudnnSetStream(st->h, qt_stream(c)));
    else
        snprintf(st->why, sizeof st->why, "%s", e.msg);
    cs->cudnn_attn = st;
    return st;
}

/* The plan for key, built on first use and kept (refusals too); NULL with the reason in why. */
static cdn_plan *plan_for(qt_ctx *c, const cdn_key *k, char *why, size_t nwhy) {
    const char *bad = dtype_unsupported(k->dtype, k->hd);
    if (bad) {
        snprintf(why, nwhy, "%s", bad);
        return NULL;
    }
    cdn_state *st = state_of(c);
    if (!st->h) {
        snprintf(why, nwhy, "%s", st->why);
        return NULL;
    }
    for (int i = 0; i < st->n; i++)
        if (!memcmp(&st->plans[i]->key, k, sizeof *k)) {
            snprintf(why, nwhy, "%s", st->plans[i]->why);
            return st->plans[i]->ok ? st->plans[i] : NULL;
        }
    cdn_plan *p = (cdn_plan *)calloc(1, sizeof *p);
    QT_CHECK(p, "out of host memory");
    p->key = *k;
    cdn_dims d = {k->B, k->T, k->nh, k->nkv, k->hd, k->dtype == QT_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF};
    char errs[CDN_STYLES][sizeof p->g.e.msg];
    for (int style = 0; style < CDN_STYLES && !p->ok; style++) {
        graph_free(&p->g);
        memset(&p->g.e, 0, sizeof p->g.e);
        if (k->bwd) bwd_graph(&p->g, &d, style);
        else fwd_graph(&p->g, &d, style);
        make_plan(&p->g, st->h, p);
        p->ok = !p->g.e.failed && p->plan;
        p->style = style;
        snprintf(errs[style], sizeof errs[style], "%s", p->g.e.msg);
    }
    if (!p->ok) {
        graph_free(&p->g);
        snprintf(p->why, sizeof p->why, "%s graph: %s; older spelling: %s", k->bwd ? "backward" : "forward",
                 errs[CDN_STYLE_NEW], errs[CDN_STYLE_OLD]);
    }
    if (st->n == st->cap) {
        st->cap = st->cap ? 2 * st->cap : 8;
        st->plans = (cdn_plan **)realloc(st->plans, sizeof *st->plans * (size_t)st->cap);
        QT_CHECK(st->plans, "out of host memory");
    }
    st->plans[st->n++] = p;
    snprintf(why, nwhy, "%s", p->why);
    return p->ok ? p : NULL;
}

void qt_cudnn_attn_free(void *state) {
    cdn_state *st = (cdn_state *)state;
    if (!st) return;
    for (int i = 0; i < st->n; i++) {
        graph_free(&st->plans[i]->g);
        free(st->plans[i]);
    }
    free(st->plans);
    if (st->h) cudnnDestroy(st->h);
    free(st);
}

/* ---- running */

/* Under AUTO: decline (false), with one line on stderr the first time cuDNN refuses something
 * (not for dtypes or head dims it never takes: those are normal). Forced: an error. */
static bool decline(bool forced, bool note, const char *what, const cdn_key *k, const char *why) {
    static bool noted;
    if (forced)
        qt_fail(__FILE__, __LINE__, "cudnn attention", "QTRAIN_ATTN=cudnn (or qt_attn_cfg.path) asks for "
                "cuDNN attention, but it cannot run %s %s B=%d T=%d nh=%d nkv=%d hd=%d: %s", what,
                qt_dtype_name((qt_dtype)k->dtype), k->B, k->T, k->nh, k->nkv, k->hd, why);
    if (note && !noted) {
        noted = true;
        fprintf(stderr, "qtrain: cuDNN attention not used for %s %s B=%d T=%d nh=%d nkv=%d hd=%d (%s); "
                "falling back to the built-in kernels (this note is printed once)\n", what,
                qt_dtype_name((qt_dtype)k->dtype), k->B, k->T, k->nh, k->nkv, k->hd, why);
    }
    return false;
}

/* The plan for this call or NULL (declined); forced fails instead. */
static cdn_plan *plan_or_decline(qt_ctx *c, const cdn_key *k, const qt_tensor *const *ts, int nts,
                                 bool *forced) {
    qt_attn_path path = qt_attn_path_now();
    *forced = path == QT_ATTN_CUDNN;
    if (path != QT_ATTN_AUTO && !*forced) return NULL;
    const char *what = k->bwd ? "the backward of" : "attention";
    char why[1024];
    const char *bad = dtype_unsupported(k->dtype, k->hd);
    if (bad) return decline(*forced, false, what, k, bad), (cdn_plan *)NULL;
    for (int i = 0; i < nts; i++) /* the tensors' 16-byte alignment (arena memory always is) */
        if (ts[i] && ((uintptr_t)ts[i]->data & 15))
            return decline(*forced, true, what, k, "a tensor is not 16-byte aligned"), (cdn_plan *)NULL;
    cdn_plan *p = plan_for(c, k, why, sizeof why);
    if (!p) return decline(*forced, true, what, k, why), (cdn_plan *)NULL;
    return p;
}

/* Transient device memory: c->work when it has room, else the STEP pool; returned by reset. */
typedef struct cdn_mem {
    qt_arena *arena;
    size_t mark;
    char *base;
} cdn_mem;

static bool mem_get(qt_ctx *c, size_t bytes, cdn_mem *m) {
    m->arena = NULL;
    m->base = NULL;
    if (bytes == 0) return true;
    qt_arena *as[2] = {&c->work, &c->data[QT_STEP]};
    for (int i = 0; i < 2; i++) {
        m->mark = qt_arena_mark(as[i]);
        m->base = (char *)qt_arena_try_alloc(as[i], bytes);
        if (m->base) {
            m->arena = as[i];
            return true;
        }
    }
    return false;
}

static void mem_put(cdn_mem *m) {
    if (m->arena) qt_arena_reset(m->arena, m->mark);
}

static size_t up256(size_t x) { return (x + 255) / 256 * 256; }

/* Bind the tensors and run the plan on the context's stream. A refusal here (cuDNN checks the
 * variant pack against the plan) marks the plan refused and returns false: nothing was added
 * to any gradient yet, so the caller can still decline and let another path do the work. */
static bool execute(qt_ctx *c, cdn_plan *p, int n, const int64_t *uids, void *const *ptrs, void *ws) {
    cdn_state *st = state_of(c);
    cdn_err e = {};
    cdn_d pack = NULL;
    if (CDN_OK(&e, cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack)) &&
        CDN_OK(&e, cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids)) &&
        CDN_OK(&e, cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n,
                                            ptrs)) &&
        CDN_OK(&e, cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws)) &&
        CDN_OK(&e, cudnnBackendFinalize(pack)))
        CDN_OK(&e, cudnnBackendExecute(st->h, p->plan, pack));
    if (pack) QT_CUDNN_CHECK(cudnnBackendDestroyDescriptor(pack));
    if (e.failed) {
        p->ok = false;
        snprintf(p->why, sizeof p->why, "running the plan: %s", e.msg);
        return false;
    }
    qt_attn_cfg.cudnn_calls++;
    return true;
}

extern "C" bool qt_cuda_attention_cudnn_fwd(qt_ctx *c, qt_tensor *out, qt_tensor *lse, const qt_tensor *q,
                                            const qt_tensor *k, const qt_tensor *v, int B, int T, int nh,
                                            int nkv, int hd) {
    cdn_key key = {0, (int)q->dtype, B, T, nh, nkv, hd};
    const qt_tensor *ts[5] = {out, lse, q, k, v};
    bool forced;
    cdn_plan *p = plan_or_decline(c, &key, ts, 5, &forced);
    if (!p) return false;
    cdn_mem m;
    if (!mem_get(c, (size_t)p->ws, &m))
        return decline(forced, true, "attention", &key, "its workspace does not fit in the op-work arena");
    float scale = (float)(1.0 / sqrt((double)hd)), neg = -FLT_MAX; /* exp(neg - x) is 0 */
    const int64_t uids[7] = {U_Q, U_K, U_V, U_O, U_STATS, U_SCALE, U_NEG};
    void *const ptrs[7] = {q->data, k->data, v->data, out->data, lse->data, &scale, &neg};
    bool ran = execute(c, p, 7, uids, ptrs, m.base);
    mem_put(&m);
    return ran || decline(forced, true, "attention", &key, p->why);
}

extern "C" bool qt_cuda_attention_cudnn_bwd(qt_ctx *c, const qt_tensor *dout, const qt_tensor *out,
                                            const qt_tensor *lse, qt_tensor *dsum, const qt_tensor *q,
                                            const qt_tensor *k, const qt_tensor *v, qt_tensor *dq,
                                            qt_tensor *dk, qt_tensor *dv, int B, int T, int nh, int nkv,
                                            int hd) {
    cdn_key key = {1, (int)q->dtype, B, T, nh, nkv, hd};
    const qt_tensor *ts[10] = {dout, out, lse, dsum, q, k, v, dq, dk, dv};
    bool forced;
    cdn_plan *p = plan_or_decline(c, &key, ts, 10, &forced);
    if (!p) return false;
    /* cuDNN writes all three gradients (whatever is frozen) into these, then we add. */
    const size_t es = qt_dtype_size(q->dtype), nacc = (size_t)B * nh * T * hd * 4;
    const size_t nq = up256((size_t)q->numel * es), nk = up256((size_t)k->numel * es);
    const size_t total = up256(nacc) + nq + 2 * nk + up256((size_t)p->ws);
    cdn_mem m;
    if (!mem_get(c, total, &m))
        return decline(forced, true, "the backward of", &key, "its buffers do not fit in the op-work arena");
    char *acc = m.base, *gq = acc + up256(nacc), *gk = gq + nq, *gv = gk + nk, *ws = gv + nk;
    /* cuDNN before 9.6 expects the dQ accumulator zeroed; later ones ignore what is there. */
    QT_CUDA_CHECK(cudaMemsetAsync(acc, 0, nacc, qt_stream(c)));
    float scale = (float)(1.0 / sqrt((double)hd)), neg = -FLT_MAX, one = 1.0f;
    int64_t uids[14] = {U_Q, U_K, U_V, U_O, U_DO, U_STATS, U_DQ, U_DK, U_DV, U_DQ_ACC, U_SCALE, U_NEG, U_ONE,
                        U_DSUM};
    void *ptrs[14] = {q->data, k->data, v->data, out->data, dout->data, lse->data, gq, gk, gv, acc,
                      &scale, &neg, &one, dsum->data};
    /* the OLD spelling has D virtual: no U_DSUM */
    if (!execute(c, p, p->style == CDN_STYLE_NEW ? 14 : 13, uids, ptrs, p->ws ? ws : NULL)) {
        mem_put(&m);
        return decline(forced, true, "the backward of", &key, p->why);
    }
    qt_attn_cfg.cudnn_bwd_nondet = p->nondet;
    qt_tensor tq = qt_tensor_over(gq, q->dtype, QT_CUDA, 2, q->shape);
    qt_tensor tk = qt_tensor_over(gk, k->dtype, QT_CUDA, 2, k->shape);
    qt_tensor tv = qt_tensor_over(gv, v->dtype, QT_CUDA, 2, v->shape);
    if (dq) qt_cuda_axpby(c, dq, &tq, 1.0, 1.0);
    if (dk) qt_cuda_axpby(c, dk, &tk, 1.0, 1.0); /* dk == dv (k is v): one add after the other */
    if (dv) qt_cuda_axpby(c, dv, &tv, 1.0, 1.0);
    mem_put(&m);
    return true;
}

extern "C" bool qt_cuda_attention_cudnn_probe(qt_ctx *c, qt_dtype dt, int B, int T, int nh, int nkv, int hd,
                                              char *why, size_t n) {
    if (c->dev != QT_CUDA) {
        snprintf(why, n, "not a CUDA context");
        return false;
    }
    cdn_plan *p = NULL;
    for (int bwd = 0; bwd < 2; bwd++) {
        cdn_key key = {bwd, (int)dt, B, T, nh, nkv, hd};
        if (!(p = plan_for(c, &key, why, n))) return false;
    }
    qt_attn_cfg.cudnn_bwd_nondet = p->nondet;
    snprintf(why, n, "cuDNN %zu, graph spelling %s, backward engine %sdeterministic", cudnnGetVersion(),
             p->style == CDN_STYLE_NEW ? "new" : "old", p->nondet ? "non-" : "");
    return true;
}

extern "C" bool qt_cuda_attention_cudnn_graphs_check(int B, int T, int nh, int nkv, int hd, char *why, size_t n) {
    cdn_graph *g = (cdn_graph *)calloc(1, sizeof *g);
    QT_CHECK(g, "out of host memory");
    bool ok = true;
    for (int bwd = 0; bwd < 2 && ok; bwd++)
        for (int style = 0; style < CDN_STYLES && ok; style++)
            for (int dt = 0; dt < 2 && ok; dt++) {
                cdn_dims d = {B, T, nh, nkv, hd, dt ? CUDNN_DATA_HALF : CUDNN_DATA_BFLOAT16};
                memset(g, 0, sizeof *g);
                if (bwd) bwd_graph(g, &d, style);
                else fwd_graph(g, &d, style);
                cdn_d graph = cdn_new(g, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR); /* no handle: no GPU */
                CDN_SET(g, graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, g->nops, g->ops);
                CDN_FINALIZE(g, graph, "operation graph");
                if (g->e.failed)
                    snprintf(why, n, "%s graph, %s spelling, %s: %s", bwd ? "backward" : "forward",
                             style == CDN_STYLE_NEW ? "new" : "old", dt ? "f16" : "bf16", g->e.msg);
                ok = !g->e.failed;
                graph_free(g);
            }
    if (ok) snprintf(why, n, "cuDNN %zu: forward and backward graphs, both spellings, bf16 and f16", cudnnGetVersion());
    free(g);
    return ok;
}

#else /* built without cuDNN: the other paths only */

extern "C" bool qt_cuda_attention_cudnn_fwd(qt_ctx *c, qt_tensor *out, qt_tensor *lse, const qt_tensor *q,
                                            const qt_tensor *k, const qt_tensor *v, int B, int T, int nh,
                                            int nkv, int hd) {
    QT_CHECK(qt_attn_path_now() != QT_ATTN_CUDNN, "QTRAIN_ATTN=cudnn, but this build has no cuDNN");
    return false;
}

extern "C" bool qt_cuda_attention_cudnn_bwd(qt_ctx *c, const qt_tensor *dout, const qt_tensor *out,
                                            const qt_tensor *lse, qt_tensor *dsum, const qt_tensor *q,
                                            const qt_tensor *k, const qt_tensor *v, qt_tensor *dq,
                                            qt_tensor *dk, qt_tensor *dv, int B, int T, int nh, int nkv,
                                            int hd) {
    QT_CHECK(qt_attn_path_now() != QT_ATTN_CUDNN, "QTRAIN_ATTN=cudnn, but this build has no cuDNN");
    return false;
}

extern "C" bool qt_cuda_attention_cudnn_probe(qt_ctx *c, qt_dtype dt, int B, int T, int nh, int nkv, int hd,
                                              char *why, size_t n) {
    snprintf(why, n, "this build has no cuDNN (CMake did not find it)");
    return false;
}

extern "C" bool qt_cuda_attention_cudnn_graphs_check(int B, int T, int nh, int nkv, int hd, char *why, size_t n) {
    snprintf(why, n, "this build has no cuDNN (CMake did not find it)");
    return false;
}

void qt_cudnn_attn_free(void *state) { (void)state; }

#endif
