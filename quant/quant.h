/* quant — weight quantization: NF4 with double quantization (QLoRA, bitsandbytes-exact)
 * and, later, GGUF k-quants. The whole public API of the module is in this header,
 * one section per format.
 *
 * Memory: a quantized tensor's arrays live in an arena (a qt_ctx pool or any qt_arena)
 * on that arena's device; the small struct describing them is the caller's (stack,
 * host arena, inside a model struct). Nothing here frees: reset or free the arena. */
#ifndef QT_QUANT_H
#define QT_QUANT_H

#include "autograd/autograd.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ================================================================== NF4
 * 4-bit NormalFloat exactly as bitsandbytes does it (shared/specs/nf4.md): blocks of
 * 64 consecutive flat (row-major) elements, one float32 absmax per block, each element
 * coded as the nearest of 16 fixed values of absmax-scaled input; two codes per byte,
 * the even element in the HIGH nibble. With double quantization (DQ) the absmax vector
 * is itself quantized: offset = mean(absmax), then 8-bit blockwise quantization of
 * (absmax - offset) over the signed dynamic map D in nested blocks of 256.
 * Codes are bit-identical to bnb's CUDA kernel; offset is the float32 mean computed in
 * double (bnb's torch mean may differ from it by an ulp: readers use the stored value). */

#define NF4_BLOCK 64     /* weights per absmax */
#define NF4_DQ_BLOCK 256 /* absmaxes per nested absmax */

/* The 16 code values (spec section 1, bit-exact) and the 15 decision thresholds
 * (section 2): code(s) = number of k with s > nf4_thresholds[k]. */
extern const float nf4_values[16];
extern const float nf4_thresholds[15];

/* The signed 8-bit dynamic map D (section 5) as torch 2.11 computes it: D[127] = 0,
 * D[255] = 1, D[i] = -D[254 - i]. This is what qtrain writes; readers use the map
 * stored in the file. */
void nf4_default_dmap(float d[256]);

typedef struct nf4_tensor {
    qt_device dev;       /* where the arrays below live */
    int ndim;            /* 1 or 2 */
    int64_t shape[2];    /* original weight shape, e.g. [out, in] of a Linear */
    int64_t n;           /* elements */
    int64_t nblocks;     /* ceil(n / 64) */
    int64_t nblocks2;    /* DQ: ceil(nblocks / 256); 0 without DQ */
    bool dq;
    uint8_t *codes;      /* [ceil(n/2)]: byte k = code[2k] << 4 | code[2k+1]; odd n pads 7 */
    float *absmax;       /* without DQ: [nblocks] float32 block scales; NULL with DQ */
    uint8_t *absmax_q;   /* DQ: [nblocks] 8-bit codes into dmap; NULL without */
    float *absmax2;      /* DQ: [nblocks2] nested scales; NULL without */
    float offset;        /* DQ: scale[b] = dmap[absmax_q[b]] * absmax2[b/256] + offset */
    float dmap[256];     /* DQ: D (host copy, passed to kernels by value) */
    char name[96];       /* for messages; copied from the source weight */
} nf4_tensor;

int64_t nf4_nblocks(int64_t n);
/* Bytes of the per-tensor arrays (codes + scales): ceil(n/2) + nb + 4*ceil(nb/256) with
 * DQ, ceil(n/2) + 4*nb without. The per-tensor constants (offset, maps) are not counted. */
size_t nf4_bytes(int64_t n, bool dq);
/* 8 * nf4_bytes / n: ≈ 4.127 with DQ, 4.5 without (n a multiple of 16384). */
double nf4_bits_per_param(int64_t n, bool dq);

/* Set up q's header and reserve its arrays in arena a (on a->dev). Contents undefined;
 * dmap is set to the default map. shape has ndim (1 or 2) entries. */
void nf4_alloc(nf4_tensor *q, qt_arena *a, int ndim, const int64_t *shape, bool dq);

/* Quantize w (F32/BF16/F16, or F64 on the CPU; contiguous; on c's device; values read
 * as float32 in flat row-major order) into arrays in c's pool. Tensors with more than
 * two dims keep [prod(leading), last] as shape. Returns 0, or -1 with e saying which
 * element is not finite (nothing is left allocated then). On CUDA this waits for the
 * device (the offset needs the whole absmax vector); it is a load-time operation. */
int nf4_quantize(qt_ctx *c, qt_pool pool, const qt_tensor *w, bool dq, nf4_tensor *q, qt_err *e);

/* out[e] = nf4_values[code[e]] * scale[e / 64] in float32, converted (round to nearest
 * even) to out's dtype: F32, BF16 or F16 (F64 also on the CPU). out: q->n elements, any
 * shape, contiguous, on q's device. Asynchronous on c's stream on CUDA. */
void nf4_dequantize(qt_ctx *c, const nf4_tensor *q, qt_tensor *out);

/* Block scales as float32 (DQ reconstructed: D[q] * absmax2 + offset, multiply then
 * add, no FMA). q on the CPU; scale has q->nblocks entries. */
void nf4_block_scales(const nf4_tensor *q, float *scale);

/* dst = src, arrays copied between any devices (dst set up by nf4_alloc with the same
 * shape and dq). Synchronous. */
void nf4_copy(nf4_tensor *dst, const nf4_tensor *src);

/* 8-bit blockwise quantization over a sorted 256-entry map (bnb quantize_blockwise,
 * as used for DQ): per block of `block` values, absmax[g] = max|x|, code = nearest
 * D entry to x * (1/absmax) with bnb's CUDA binary search and tie rule; a block of
 * zeros gets absmax 0 and code 127 (D[127] must be 0). CPU. */
void nf4_q8_blockwise(const float *x, int64_t n, int64_t block, const float d[256], uint8_t *code,
                      float *absmax);

/* ---- reading a pre-quantized bitsandbytes checkpoint (spec section 8)
 * The checkpoint reader parses safetensors and the quant_state JSON and fills this with
 * host pointers to the raw arrays; nf4_from_bnb validates them and copies them into
 * an nf4_tensor in arena a. Absent optional tensors are NULL. */
typedef struct nf4_bnb_parts {
    const char *name;             /* parameter name, for messages (e.g. "...q_proj.weight") */
    const char *quant_type;       /* JSON quant_type / key suffix: only "nf4" is accepted */
    int64_t blocksize;            /* JSON blocksize: qtrain needs 64 */
    int ndim;                     /* JSON shape (1 or 2 dims) */
    int64_t shape[2];
    const uint8_t *codes;         /* P.weight bytes, any storage dtype reinterpreted as bytes */
    int64_t codes_bytes;
    const float *quant_map;       /* P.weight.quant_map [16]: must be the NF4 table; NULL = absent */
    bool nested;                  /* JSON has nested_blocksize (DQ) */
    int64_t nested_blocksize;     /* must be 256 */
    float nested_offset;
    const uint8_t *absmax_q;      /* nested: P.weight.absmax U8 [nb] */
    const float *absmax;          /* not nested: P.weight.absmax F32 [nb] */
    int64_t absmax_len;
    const float *nested_absmax;   /* nested: [ceil(nb/256)] */
    int64_t nested_absmax_len;
    const float *nested_quant_map;/* nested: [256]; NULL = absent, the default map is used */
} nf4_bnb_parts;

int nf4_from_bnb(nf4_tensor *q, qt_arena *a, const nf4_bnb_parts *p, qt_err *e);

/* ================================================================== NF4 linear (autograd op)
 * y = x · dequant(W)ᵀ with W [out, in] frozen NF4 on x's device. The dequantized copy lives
 * only inside the op, in c->work (forward, and again in backward for dx), so c->work must
 * hold out*in elements of x's dtype. Records a backward for x when x needs a gradient. */
qt_tensor *nf4_linear(qt_ctx *c, qt_tensor *x, const nf4_tensor *w);

#ifdef __cplusplus
}
#endif
#endif
