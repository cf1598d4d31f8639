/* data — training data: JSONL readers (text / alpaca / chat), chat templates, loss masks,
 * truncation and packing, shuffling and the eval split, the HDF5 token cache, and the
 * micro-batch loader. This header is the module's whole public API (the tokenizer's API is
 * included from data/tokenizer.h).
 *
 * Pipeline (qt_data_load):
 *   JSONL line --(format, template)--> one example: token ids + a per-token "train" flag
 *   examples --(seeded Fisher–Yates)--> eval split (fraction) | train, or a separate eval file
 *   examples --(truncate to seq_len; pack or pad)--> rows of exactly seq_len tokens
 *   rows <-> CACHE_DIR/<key>.h5 (the key hashes every input, so a hit skips tokenization)
 *   rows --(qt_loader: per-epoch permutation)--> micro-batches of ids + labels
 *
 * Labels follow Hugging Face: unshifted, labels[i] = ids[i] where the token is trained and
 * QT_IGNORE_INDEX (-100) elsewhere; the trainer predicts labels[i+1] from position i.
 *
 * What is trained (the loss mask):
 *   text    BOS + text + EOS: every token. BOS is what the tokenizer's post-processor puts
 *           before a sequence (Llama: <|begin_of_text|> or <s>; none for Qwen2/GPT-2); what
 *           it would append after one is not used (EOS ends every example).
 *   alpaca  the Stanford Alpaca prompt (with or without "### Input:") is not trained; the
 *           response tokens and the EOS after them are.
 *   chat    messages rendered with a chat template; only each assistant message's content
 *           and its end-of-turn token (<|eot_id|>, <|im_end|>, </s>) are trained.
 * The first token of every example is never trained: nothing before it belongs to the
 * example (unpacked, the shifted loss never predicts position 0 anyway).
 *
 * Token ids are rendered segment by segment, never recovered from strings: a template is a
 * list of special tokens and text segments; each run of text between two special tokens is
 * tokenized as one string (exactly as tokenizing the whole rendered string would split it at
 * the special tokens), and where the trained flag changes inside a run the boundary is the
 * longest common prefix of tok(run up to the boundary) and tok(run). When a BPE merge
 * crosses the boundary (rare: e.g. Alpaca's "### Response:" directly followed by a word),
 * the merged token and everything after it take the flag of the part after the boundary;
 * such examples are counted in qt_data_stats.boundary_merges.
 *
 * Text inside the data is always plain text: a string like "<|eot_id|>" in a message is
 * tokenized as characters, never as the special token (qt_data_load loads its tokenizer
 * with tok_set_split_special(true)), so data cannot forge turn boundaries.
 *
 * Truncation: an example longer than seq_len keeps its first seq_len tokens (counted in
 * stats.truncated); an example left with no trained token is dropped (stats.dropped).
 *
 * Packing (packing: true). Examples are concatenated, in shuffled order, into one stream
 * that is cut into rows of exactly seq_len tokens; an example may continue from one row into
 * the next. Examples are separated by EOS: text and alpaca examples end with it; an example
 * that does not (a chat template whose last token is not EOS, e.g. ChatML's "\n", or an
 * example cut by truncation) gets an EOS appended whose label is -100. The last row is
 * padded with EOS ids whose labels are -100.
 * Inside a row, attention is plain causal over the whole row: it DOES cross example
 * boundaries (an example's tokens see the previous examples in the row, and positions keep
 * counting across them), as in Hugging Face's group_texts packing; there is no block-diagonal
 * mask and no position reset. The loss does not cross them: with the trainer's shift,
 * position p is trained to predict labels[p + 1], so the label of an example's first token
 * is what the previous example's last token (its EOS) would be trained to predict; that label
 * is -100. Every other label is the example's own, so each example contributes exactly the
 * targets it has unpacked. One thing is lost where a row boundary falls inside an example:
 * the continuation's first token has nothing before it in its row, so it is not predicted,
 * and the continuation sees no context from the previous row.
 * Padding (packing: false). One example per row, padded to seq_len with EOS ids and -100
 * labels (right padding: causal attention never lets a real token see a pad).
 *
 * Errors: bad input gives one line "FILE:LINE: ..." naming the JSONL line and the field;
 * with skip_bad_lines such lines are counted and skipped instead. */
#ifndef QT_DATA_H
#define QT_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "autograd/autograd.h"
#include "data/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QT_IGNORE_INDEX (-100)
#define QT_DATA_PATH_MAX 4096

/* Same values as trainer/config.h's qt_data_format and qt_chat_template (data cannot see
 * the trainer): cast between them. */
/* QT_FMT_TOKENS: pre-tokenized lines {"input_ids": [ids]}, every token but the first
 * trained; no tokenizer is needed (qt_data_opts.tokens_eos_id separates and pads). */
typedef enum { QT_FMT_TEXT = 0, QT_FMT_ALPACA, QT_FMT_CHAT, QT_FMT_TOKENS } qt_dfmt;
typedef enum { QT_CHAT_AUTO = 0, QT_CHAT_LLAMA3, QT_CHAT_CHATML, QT_CHAT_LLAMA2 } qt_chat_style;

const char *qt_dfmt_name(qt_dfmt f);            /* "text", "alpaca", "chat", "tokens" */
const char *qt_chat_style_name(qt_chat_style s); /* "auto", "llama3", "chatml", "llama2" */
int qt_chat_style_parse(const char *name, qt_chat_style *out); /* 0, or -1 for an unknown name */

/* ------------------------------------------------------------------ token sequences */

/* Token ids with a parallel trained flag (1 = in the loss). Start zeroed. */
typedef struct qt_tokens {
    int32_t *ids;
    uint8_t *train;
    size_t n, cap;
} qt_tokens;
void qt_tokens_push(qt_tokens *s, int32_t id, bool train);
void qt_tokens_free(qt_tokens *s);

/* ------------------------------------------------------------------ rendering */

/* A rendered example before tokenization: text segments and tokens, each trained or not.
 * TOKEN segments name a special token by its string ("<|eot_id|>"), ID segments by id. */
typedef enum { QT_SEG_TEXT = 0, QT_SEG_TOKEN, QT_SEG_ID } qt_seg_kind;
typedef struct qt_seg {
    qt_seg_kind kind;
    bool train;
    size_t off, len; /* TEXT and TOKEN: bytes in qt_render.text */
    int32_t id;      /* ID */
} qt_seg;
typedef struct qt_render {
    char *text;
    size_t n, cap;
    qt_seg *seg;
    size_t nseg, segcap;
} qt_render;
void qt_render_clear(qt_render *r);
void qt_render_free(qt_render *r);
void qt_render_text(qt_render *r, const char *s, size_t n, bool train);
void qt_render_token(qt_render *r, const char *token, bool train);
void qt_render_id(qt_render *r, int32_t id, bool train);
/* The rendered string (ID segments as their token strings; t may be NULL when there are
 * none). malloc'd, NUL-terminated. */
char *qt_render_string(const qt_render *r, const tok_tokenizer *t, size_t *len);

typedef struct qt_render_stats {
    int64_t encode_calls;    /* tok_encode calls */
    int64_t boundary_merges; /* trained-flag boundaries that a BPE merge crossed */
} qt_render_stats;
/* Tokenize as described at the top: appends to out. -1 when a TOKEN segment names a token
 * the tokenizer lacks or the text is not valid UTF-8. st may be NULL. */
int qt_render_tokens(const qt_render *r, const tok_tokenizer *t, qt_tokens *out, qt_render_stats *st,
                     qt_err *e);

/* ------------------------------------------------------------------ chat templates */

typedef enum { QT_ROLE_SYSTEM = 0, QT_ROLE_USER, QT_ROLE_ASSISTANT } qt_role;
typedef struct qt_chat_msg {
    qt_role role;
    const char *content;
    size_t len;
} qt_chat_msg;

/* A resolved chat template: the exact output of these Hugging Face templates (with
 * add_generation_prompt false):
 *   llama3  Meta-Llama-3-*-Instruct: <|begin_of_text|> then per message
 *           <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT.strip()<|eot_id|>
 *           (Llama-3.1's extra date/tools system header is not rendered).
 *   chatml  Qwen2-*-Instruct: per message <|im_start|>ROLE\nCONTENT<|im_end|>\n, with a
 *           system message default_system first when the first message is not a system
 *           one and default_system is not empty (Qwen2: "You are a helpful assistant.").
 *   llama2  Llama-2-*-chat: <s>[INST] USER.strip() [/INST] ASSISTANT.strip() </s> per turn,
 *           the system message as <<SYS>>\nSYS\n<</SYS>>\n\n before the first user message;
 *           roles must alternate user/assistant after an optional first system message. */
typedef struct qt_template {
    qt_chat_style style; /* never QT_CHAT_AUTO once resolved */
    char default_system[2048];
    char source[256];    /* how it was chosen, for the log */
} qt_template;

/* A fixed style (not AUTO) with no default system message. */
void qt_template_init(qt_template *tp, qt_chat_style style);
/* Recognise a Jinja chat_template string. -1 (with what it looked for) when it is none of
 * the three. `where` names the source in messages. */
int qt_template_detect(qt_template *tp, const char *jinja, size_t len, const char *where, qt_err *e);
/* style AUTO: model_dir/tokenizer_config.json "chat_template" (or model_dir/chat_template.jinja),
 * else the tokenizer's special tokens (t may be NULL); -1 with a message saying how to choose
 * when it cannot tell. Another style: qt_template_init. */
int qt_template_resolve(qt_template *tp, qt_chat_style style, const char *model_dir, const tok_tokenizer *t,
                        qt_err *e);
/* Render a conversation (appends to out, which is not cleared). -1 for an empty conversation
 * or one the template cannot express (llama2: roles not alternating, system not first). */
int qt_chat_render(const qt_template *tp, const qt_chat_msg *msgs, size_t n, qt_render *out, qt_err *e);

/* ------------------------------------------------------------------ examples */

/* Turns JSONL records into examples for one format. Not thread-safe (has scratch). */
typedef struct qt_encoder {
    const tok_tokenizer *tok;
    qt_dfmt format;
    qt_template tmpl;      /* chat */
    int32_t eos_id;
    int32_t bos[8];        /* what the post-processor puts before a sequence (text, alpaca) */
    int n_bos;
    qt_render r;
    qt_render_stats st;
} qt_encoder;
/* tp is used for QT_FMT_CHAT only (may be NULL otherwise). */
int qt_encoder_init(qt_encoder *enc, const tok_tokenizer *t, qt_dfmt format, const qt_template *tp,
                    int32_t eos_id, qt_err *e);
void qt_encoder_free(qt_encoder *enc);
/* One JSONL record (the text of one line) to an example, appended to out (not cleared).
 * -1 with a message naming the field (no FILE:LINE: the caller adds it). */
int qt_encode_record(qt_encoder *enc, const char *line, size_t len, qt_tokens *out, qt_err *e);

/* The EOS id: override (a token string) if not NULL/empty, else tokenizer_config.json's
 * eos_token in model_dir (may be NULL), else the first of <|end_of_text|>, <|endoftext|>,
 * </s>, <|im_end|>, <|eot_id|>, <eos> that the tokenizer has. -1 with a message when none. */
int32_t qt_data_find_eos(const tok_tokenizer *t, const char *model_dir, const char *override, qt_err *e);

/* ------------------------------------------------------------------ datasets */

typedef struct qt_data_opts {
    const char *train_path;      /* JSONL, required */
    const char *eval_path;       /* JSONL or NULL: then eval_split holds out a fraction */
    const char *model_dir;       /* tokenizer_config.json (eos, chat template); may be NULL */
    const char *tokenizer_path;  /* NULL: model_dir/tokenizer.json */
    const char *eos_token;       /* NULL: see qt_data_find_eos */
    qt_dfmt format;
    qt_chat_style chat_template;
    int64_t seq_len;             /* >= 2 */
    bool packing;
    double eval_split;           /* [0, 1): fraction of train examples held out (no eval file) */
    uint64_t shuffle_seed;
    const char *cache_dir;       /* NULL or "": no cache */
    bool skip_bad_lines;         /* count and skip malformed lines instead of failing */
    int32_t tokens_eos_id;       /* format tokens: the model's EOS id (separators, padding) */
} qt_data_opts;

/* Rows of one split: ids [n_rows, seq_len] and the train flags; labels are derived. */
typedef struct qt_data_split {
    int64_t n_rows, seq_len;
    int32_t *ids;
    uint8_t *train;
    int64_t n_examples;
    int64_t n_tokens;      /* real (not padding) tokens */
    int64_t n_loss_tokens; /* trained tokens */
} qt_data_split;

typedef struct qt_data_stats {
    int64_t lines;            /* non-blank JSONL lines read, train and eval files */
    int64_t bad_lines;        /* skipped (skip_bad_lines) */
    int64_t truncated;        /* examples longer than seq_len, cut */
    int64_t dropped;          /* examples with no trained token after truncation */
    int64_t boundary_merges;  /* see the top of this file */
    int64_t encode_calls;     /* tok_encode calls by this load: 0 when served from the cache */
    bool tokenizer_loaded;    /* false when the cache made it unnecessary */
    bool from_cache;
    bool cache_rebuilt;       /* a cache file was there but unreadable: rebuilt (warned) */
    char cache_path[QT_DATA_PATH_MAX + 64];
    char first_bad[512];      /* the first skipped line's error */
    char template_used[300];  /* chat: "llama3 (tokenizer_config.json chat_template)" */
} qt_data_stats;

typedef struct qt_dataset {
    qt_data_split train, eval;
    int32_t eos_id, pad_id, vocab_size;
    qt_data_stats stats;
} qt_dataset;

/* Build (or read from the cache) both splits. 0, or -1 with one line in e. Files are
 * tokenized in parallel: one thread per MiB of JSONL, at most one per core (the environment
 * variable QT_DATA_THREADS=n forces n); the rows do not depend on the number of threads.
 * A cache that cannot be read is rebuilt and one that cannot be written is skipped, each
 * with a warning on stderr. */
int qt_data_load(qt_dataset *d, const qt_data_opts *o, qt_err *e);
void qt_data_free(qt_dataset *d);
/* Labels of rows [row, row + n) of a split into out[n * seq_len]. */
void qt_data_labels(const qt_data_split *s, int64_t row, int64_t n, int32_t *out);
/* One line for logs: examples, rows, tokens, loss tokens, truncated, cache. */
void qt_data_describe(const qt_dataset *d, char *buf, size_t n);

/* The cache key (32 hex chars + NUL) of a load: hashes the bytes of tokenizer.json, of
 * model_dir/tokenizer_config.json and chat_template.jinja (when there), of the train and eval
 * files, and every option that changes the rows. */
int qt_data_cache_key(const qt_data_opts *o, char key[33], qt_err *e);

/* ------------------------------------------------------------------ loader */

/* Where a loader is: enough to resume exactly (save it in a checkpoint). */
typedef struct qt_loader_pos {
    uint64_t seed;  /* permutation seed */
    int64_t epoch;  /* epochs completed */
    int64_t index;  /* rows of the current epoch already served */
} qt_loader_pos;

typedef struct qt_loader {
    const qt_data_split *split;
    int64_t batch;     /* rows per micro-batch (B) */
    bool shuffle;      /* false: rows in order every epoch */
    qt_loader_pos pos;
    int64_t *perm;     /* permutation of the current epoch */
    int64_t perm_epoch;
    int32_t *ids, *labels; /* the last batch: [B * seq_len] each */
} qt_loader;

/* Micro-batches of `batch` rows over a split, forever: a batch that runs past the end of an
 * epoch continues with the next epoch's permutation (every batch is full). Epoch e uses a
 * permutation drawn from (seed, e) alone. -1 when the split is empty or batch < 1. */
int qt_loader_init(qt_loader *l, const qt_data_split *s, int64_t batch, bool shuffle, uint64_t seed, qt_err *e);
void qt_loader_free(qt_loader *l);
/* Fill l->ids and l->labels with the next micro-batch; returns the number of trained
 * labels at positions >= 1 of each row (what the shifted loss averages over). */
int64_t qt_loader_next(qt_loader *l);
/* Resume: the next batch after qt_loader_seek(pos) equals the one that followed when
 * pos was read from l->pos. -1 when pos does not fit the split (different data). */
int qt_loader_seek(qt_loader *l, qt_loader_pos pos, qt_err *e);
/* Epochs served as a fraction (epoch + index / n_rows). */
double qt_loader_epoch(const qt_loader *l);

/* Eval: rows [i*B, i*B+B) of a split in order, the tail padded with rows of -100 labels.
 * Returns the number of real rows (0 past the end). */
int64_t qt_data_eval_batch(const qt_data_split *s, int64_t i, int64_t batch, int32_t pad_id, int32_t *ids,
                           int32_t *labels);

#ifdef __cplusplus
}
#endif

#endif
