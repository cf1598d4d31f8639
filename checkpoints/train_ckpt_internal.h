/* Internal to checkpoints/: what train_ckpt.c (format, writing, the folder) and
 * train_ckpt_read.c (verifying, finding, reading) share. */
#ifndef QT_TRAIN_CKPT_INTERNAL_H
#define QT_TRAIN_CKPT_INTERNAL_H

#include <hdf5.h>

#include "checkpoints.h"

#define CK_FORMAT "qtrain-train-checkpoint"
#define CK_VERSION 1
#define CK_MAX_DEPTH 3          /* group levels: /adamw/m/NAME is the deepest we write */
#define CK_MAX_LINKS (1 << 20)  /* per group: far above 7 projections x 1024 layers x 2 */
#define CK_LINK_NAME 256
#define CK_PATH 512
#define CK_CHUNK ((size_t)1 << 20) /* bytes per read when verifying */


/* HDF5's automatic error printing, off while we work and restored after. */
typedef struct quiet { H5E_auto2_t fn; void *data; } quiet;
quiet ckt_hdf5_quiet(void);
void ckt_hdf5_loud(quiet q);
/* Why the last HDF5 call failed (an errno's text when HDF5 saw one): call it before any
 * other HDF5 call clears the error stack. */
void ckt_hdf5_why(char *buf, size_t n);
/* File access: strong close, no file locking (files are published by rename). */
hid_t ckt_make_fapl(void);

/* The element kinds a checkpoint holds: little-endian in the file, native in memory. */
typedef enum { K_U8, K_I64, K_U64, K_F32, K_F64, K_N } kind;
extern const size_t ckt_ksize[K_N];
extern const char *const ckt_kname[K_N];
hid_t ckt_ftype(kind k);
hid_t ckt_mtype(kind k);
int ckt_classify(hid_t file_type); /* its kind, or -1 */

/* Dataset digests and the file checksum over them (see train_ckpt.c). */
typedef struct digest { char *path; uint64_t h; } digest;
void ckt_digest_begin(ck_hash *s, kind k, int rank, const uint64_t *dims);
void ckt_digest_add(digest **d, int *n, int *cap, const char *path, uint64_t h);
uint64_t ckt_combine(digest *d, int n); /* sorts d by path */
void ckt_digests_free(digest *d, int n);

/* The checkpoint folder: "step-000123.h5" -> 123 (-1 for any other name), and its step
 * files newest first (0 when the folder cannot be read). */
typedef struct entry { int64_t step; char name[64]; } entry;
int64_t ckt_step_of(const char *name);
int ckt_list_steps(const char *dir, entry **out);

#endif
