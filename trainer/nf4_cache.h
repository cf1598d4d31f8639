/* nf4_cache — the quantized NF4 base on disk, so a restart does not re-read and
 * re-quantize the bf16 checkpoint (140 GB for a 70B model).
 *
 * Layout (docs/checkpoints.md, "NF4 cache"):
 *   CACHE_DIR/nf4-KEY/layer-000.safetensors ... layer-(L-1).safetensors
 *   CACHE_DIR/nf4-KEY/COMPLETE      text, written last: version, key, layers, file sizes
 * One safetensors file per decoder layer holds, for every projection NAME added:
 *   NAME.codes U8 [ceil(n/2)], NAME.shape I64 [ndim], and with DQ NAME.absmax_q U8 [nb],
 *   NAME.absmax2 F32 [nb2], NAME.offset F32 [1], NAME.dmap F32 [256]; without DQ
 *   NAME.absmax F32 [nb]. __metadata__ has the format version, the key, the layer and a
 *   64-bit checksum of each tensor's arrays and constants ("sum.NAME").
 * Only the quantized projections are cached; embeddings and norms are not quantized and
 * are read from the checkpoint as before.
 *
 * Use (one pass over the layers, host memory bounded by one layer):
 *   nf4c_key(key, model_dir, dq, "from=bf16", e);
 *   switch (nf4c_open(&r, cache_dir, key, e)) {
 *   case 1: for each layer l, each projection: nf4_alloc(dst, arena, ...);
 *           nf4c_read(&r, l, name, dst, e) -- on -1: warn with e, nf4c_close, and
 *           re-quantize (below); the cache is rewritten then.
 *   case -1: warn with e (the cache is damaged), then as 0.
 *   case 0: nf4c_writer_open(&w, cache_dir, key, L, e); per layer, per projection:
 *           quantize, nf4c_add(&w, l, name, q, e); at the end nf4c_writer_commit.
 *           A writer error is not fatal to training: warn, nf4c_writer_close (which
 *           removes what it wrote) and go on without a cache. }
 * A cache is only ever used whole: COMPLETE is written after every layer file is on disk
 * (each written to a temporary name, fsync'd and renamed), and a writer removes COMPLETE
 * before it writes anything, so a crash at any point leaves a folder that nf4c_open
 * reports as absent. */
#ifndef QT_NF4_CACHE_H
#define QT_NF4_CACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "checkpoints/checkpoints.h"
#include "quant/quant.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bump when the stored layout changes, or when quantization (quant/nf4.c) or the way the
 * loader prepares weights before quantizing changes what ends up in the cache. */
#define NF4C_VERSION 1
#define NF4C_KEY_LEN 17          /* 16 hex digits and the NUL */
#define NF4C_MAX_LAYERS 4096
#define NF4C_MAX_NAME 200        /* bytes of a tensor name given to nf4c_add / nf4c_read */

/* The cache key of a model folder: a hash (checkpoints' ck_hash) of NF4C_VERSION, the NF4
 * block sizes, dq, `variant` (whatever else the caller's quantization input depends on,
 * e.g. "from=bf16" for the dtype weights are converted to first; NULL = ""), the bytes of
 * config.json and model.safetensors.index.json (when present), and for every *.safetensors
 * file of the folder its name, size and mtime (and its target when it is a symlink, as in a
 * Hugging Face hub snapshot, where the target names the content's hash). Cheap: no weight
 * is read. Replacing a shard by one of the same size with its mtime kept (cp -p, rsync -t)
 * is not seen: delete the cache then. */
int nf4c_key(char out[NF4C_KEY_LEN], const char *model_dir, bool dq, const char *variant, qt_err *e);

/* ---- writer */
typedef struct nf4c_pending nf4c_pending;
typedef struct nf4c_writer {
    char *dir;          /* CACHE_DIR/nf4-KEY */
    char key[NF4C_KEY_LEN];
    int n_layers;
    int lock_fd;        /* flock on DIR/.lock while writing */
    uint8_t *done;      /* [n_layers]: layer file written */
    uint64_t *sizes;    /* [n_layers]: its size */
    int cur;            /* layer being collected, -1 = none */
    nf4c_pending *pend; /* its tensors, host copies */
    int n_pend, cap_pend;
    bool failed;        /* a write failed: only close is left */
    bool committed;
} nf4c_writer;

/* Create CACHE_DIR/nf4-KEY (mkdir -p), take its lock (a second writer of the same cache is
 * refused), remove COMPLETE and any layer or temporary file left by an earlier attempt.
 * n_layers: every layer 0..n_layers-1 must be added before commit. */
int nf4c_writer_open(nf4c_writer *w, const char *cache_dir, const char *key, int n_layers, qt_err *e);
/* Add projection `name` of `layer`. q's arrays may be on any device; they are copied to the
 * host now, so q may be reused at once. The tensors of a layer must be added together: the
 * first add of another layer writes the current layer's file, and a layer cannot be added
 * to after that. Host memory: one layer's arrays. */
int nf4c_add(nf4c_writer *w, int layer, const char *name, const nf4_tensor *q, qt_err *e);
/* Write the last layer's file, check every layer was written, then write COMPLETE. */
int nf4c_writer_commit(nf4c_writer *w, qt_err *e);
/* Release everything. Without a successful commit, the files this writer wrote are removed
 * (and the folder, when that leaves it empty). Safe on a zeroed or closed writer. */
void nf4c_writer_close(nf4c_writer *w);

/* ---- reader */
typedef struct nf4c_reader {
    char *dir;
    char key[NF4C_KEY_LEN];
    int n_layers;        /* from COMPLETE */
    uint64_t *sizes;     /* [n_layers] file sizes recorded in COMPLETE */
    int cur;             /* layer whose file is mapped, -1 = none */
    st_file f;           /* that file (at most one is mapped at a time) */
} nf4c_reader;

/* 1: CACHE_DIR/nf4-KEY holds a complete cache (COMPLETE parses, names this key and
 * version, and every layer file has the size it records); 0: no cache (no folder or no
 * COMPLETE: a normal miss, e untouched); -1: a cache is there but unusable (e says why,
 * naming the file): re-quantize, which rewrites it. */
int nf4c_open(nf4c_reader *r, const char *cache_dir, const char *key, qt_err *e);
/* Fill dst (set up by nf4_alloc in any arena, host or device, with the expected shape and
 * dq) with projection `name` of `layer`. Maps that layer's file (unmapping the previous
 * one); checks the file's version, key and layer, every tensor's dtype and shape against
 * dst, the checksum, and that the scales are finite. -1 with e naming the file and tensor
 * when anything differs: the caller re-quantizes. dst->name is set to `name` when empty. */
int nf4c_read(nf4c_reader *r, int layer, const char *name, nf4_tensor *dst, qt_err *e);
/* Unmap and free. Safe on a zeroed or closed reader. */
void nf4c_close(nf4c_reader *r);

#ifdef __cplusplus
}
#endif
#endif
