/* quant — weight quantization: NF4 with double quantization (QLoRA, bitsandbytes-exact)
 * and the GGUF quant types (ggml blocks, k-quants, llama-quantize's type mixes). The whole
 * public API of the module is in this header, one section per format.
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

/* ================================================================== GGUF quant types
 * ggml's tensor types as llama.cpp stores them in GGUF files (shared/specs/gguf.md sections
 * 2-4), CPU only: export runs once. The quantizers are ggml's reference ones, so for the
 * same float32 input the bytes equal llama-quantize's (operation order kept; this file must
 * not be built with FMA contraction, which baseline x86-64 / -O3 without -march never does).
 *
 * Layouts: a row of n values is n/blck blocks; Q8_0 (32 values: fp16 d + 32 int8),
 * Q5_0 / Q5_1 (32 values, 5 bits, with a min for Q5_1), and the 256-value K-quant
 * super-blocks Q4_K / Q5_K (8 sub-blocks of 32, 6-bit scales and mins) and Q6_K (16
 * sub-blocks of 16, int8 scales). F16 / BF16 round to nearest even; F32 is a copy.
 *
 * Importance (imatrix): an optional vector of n_per_row values, the mean squared input
 * activation of each column, weighting the error in the scale search exactly as ggml's
 * quantize_row_*_impl(quant_weights) do. NULL runs the reference search. Q8_0 and the
 * float types ignore it (ggml does). */

typedef enum {
    KQ_F32 = 0, KQ_F16 = 1, KQ_Q4_0 = 2, KQ_Q4_1 = 3, KQ_Q5_0 = 6, KQ_Q5_1 = 7, KQ_Q8_0 = 8,
    KQ_Q2_K = 10, KQ_Q3_K = 11, KQ_Q4_K = 12, KQ_Q5_K = 13, KQ_Q6_K = 14, KQ_Q8_K = 15,
    KQ_BF16 = 30
} kq_type; /* the values are ggml_type ids */

const char *kq_type_name(kq_type t);   /* "Q4_K" ("?" when unknown) */
/* Implemented here: F32, F16, BF16, Q8_0, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K. (The other ids are
 * known for their sizes only.) */
bool kq_supported(kq_type t);
int kq_block_elems(kq_type t);         /* values per block: 1, 32 or 256 (0 unknown) */
size_t kq_block_bytes(kq_type t);      /* bytes per block */
size_t kq_row_bytes(kq_type t, int64_t n_per_row); /* n_per_row must be whole blocks */
/* 0 when t is implemented and n_per_row is a positive multiple of its block; else -1 and
 * e names `what` (a tensor name), the row length and the block size. */
int kq_check_row(kq_type t, int64_t n_per_row, const char *what, qt_err *e);

/* nrows rows of n_per_row float32 values -> nrows * kq_row_bytes bytes at dst (2-byte
 * aligned). Rows are independent (split over OpenMP threads; the result does not depend on
 * the thread count). -1 with e naming `what` for a bad row length, a non-finite value or a
 * negative / non-finite importance. */
int kq_quantize(kq_type t, const float *x, int64_t nrows, int64_t n_per_row, const float *imatrix, void *dst,
                const char *what, qt_err *e);
int kq_dequantize(kq_type t, const void *src, int64_t nrows, int64_t n_per_row, float *y, const char *what,
                  qt_err *e);

/* ---- per-tensor type mixes (llama-quantize's llama_tensor_get_type for llama / qwen2)
 * The rule implemented, for a GGUF tensor name and shape (ne[0] = row length):
 *  - not quantized at all (stays F32): names not ending in "weight", 1-D tensors, names
 *    containing "_norm.weight", rope_freqs.
 *  - F32 / F16 / BF16 files: every other tensor in that type ("pure", as llama-quantize
 *    does for non-quantized targets).
 *  - Q8_0 / Q6_K files: every other tensor in that type; output.weight (or token_embd when
 *    there is no output.weight) is Q6_K in a Q6_K file and Q8_0 in a Q8_0 file.
 *  - Q4_K_M / Q5_K_M: default Q4_K / Q5_K; output.weight, or token_embd.weight when the
 *    embeddings are tied (no output.weight), -> Q6_K (Q8_0 when ne[0] % 256 != 0);
 *    blk.i.attn_v.weight and blk.i.ffn_down.weight -> Q6_K when use_more_bits(i, n_layer)
 *    = i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2; for a "70B" model (80 layers and, for
 *    llama, n_head != n_head_kv) an attn_v still at Q4_K becomes Q5_K.
 *  - then the shape fallback: a K-quant whose block does not divide ne[0] becomes
 *    Q4_K->Q5_0, Q5_K->Q5_1, Q6_K->Q8_0, and anything whose block still does not divide
 *    ne[0] becomes F16 (llama-quantize aborts for a Q8_0 row that is not whole blocks;
 *    qtrain writes F16 there instead). */
typedef enum {
    KQ_FTYPE_F32 = 0, KQ_FTYPE_F16 = 1, KQ_FTYPE_Q8_0 = 7, KQ_FTYPE_Q4_K_M = 15, KQ_FTYPE_Q5_K_M = 17,
    KQ_FTYPE_Q6_K = 18, KQ_FTYPE_BF16 = 32
} kq_ftype; /* the values are llama_ftype ids, written as general.file_type */

const char *kq_ftype_name(kq_ftype f);          /* "Q4_K_M" */
/* "Q4_K_M", "q4_k_m", "F16", ... -> 0 and *out; -1 when unknown (e lists the choices). */
int kq_ftype_parse(const char *s, kq_ftype *out, qt_err *e);

typedef struct kq_model_info {
    int n_layer;
    bool has_output; /* the file has output.weight (embeddings not tied) */
    bool is_70b;     /* llama.cpp's LLM_TYPE_70B: 80 layers (+ n_head != n_head_kv for llama) */
} kq_model_info;

kq_type kq_tensor_type(kq_ftype f, const char *name, int n_dims, const int64_t *ne, const kq_model_info *mi);
/* use_more_bits(i, n) of the rule above */
bool kq_use_more_bits(int i, int n);

#ifdef __cplusplus
}
#endif
#endif
