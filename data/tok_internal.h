/* Internals shared by the tokenizer's files (tok_load.c, tok_bpe.c, tok_pretok.c,
 * tokenizer.c). Not part of the public API: include data/tokenizer.h instead.
 *
 * Every string the tokenizer owns lives in one pool (t->pool) and is named by its byte
 * offset, so the pool can grow while loading. Text being encoded moves through the
 * pipeline as lists of pieces, each a slice of a scratch buffer. */
#ifndef QT_TOK_INTERNAL_H
#define QT_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer.h"

/* ------------------------------------------------------------------ buffers */

typedef struct tok_buf {
    char *p;
    size_t n, cap;
} tok_buf;
void *tok_xrealloc(void *p, size_t bytes); /* exits with a message when memory runs out */
void tok_buf_reserve(tok_buf *b, size_t extra);
void tok_buf_put(tok_buf *b, const void *s, size_t n);
void tok_buf_free(tok_buf *b);

/* ------------------------------------------------------------------ hash maps */

uint64_t tok_hash(const char *s, size_t n);

/* string -> int32; keys are (offset, length) in an external pool passed to every call. */
typedef struct tok_slot {
    uint32_t off, len; /* len == UINT32_MAX: empty slot */
    int32_t val;
} tok_slot;
typedef struct tok_strmap {
    tok_slot *slots;
    size_t mask, count;
} tok_strmap;
void tok_map_init(tok_strmap *m, size_t expected);
void tok_map_free(tok_strmap *m);
int32_t tok_map_get(const tok_strmap *m, const char *pool, const char *s, size_t n); /* -1 */
/* Insert or overwrite the key at pool[off, off+len); returns the previous value or -1. */
int32_t tok_map_put(tok_strmap *m, const char *pool, uint32_t off, uint32_t len, int32_t val);

/* (left id, right id) -> (rank, merged id) */
typedef struct tok_mergemap {
    uint64_t *keys; /* UINT64_MAX: empty */
    uint32_t *rank;
    int32_t *new_id;
    size_t mask, count;
} tok_mergemap;
void tok_merges_init(tok_mergemap *m, size_t expected);
void tok_merges_free(tok_mergemap *m);
void tok_merges_put(tok_mergemap *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id);
bool tok_merges_get(const tok_mergemap *m, int32_t a, int32_t b, uint32_t *rank, int32_t *new_id);

/* ------------------------------------------------------------------ UTF-8 */

/* Length of the valid UTF-8 sequence at s[0..n) (1..4), or 0 when it is not valid. */
int tok_utf8_len(const unsigned char *s, size_t n);
/* Byte offset of the first invalid sequence, or n when the whole string is valid. */
size_t tok_utf8_check(const char *s, size_t n);
uint32_t tok_utf8_decode(const unsigned char *s, int len);
int tok_utf8_encode(uint32_t cp, char *out);
/* Rust's char::is_whitespace (Unicode White_Space). */
bool tok_is_ws(uint32_t cp);
/* Append s to b, replacing each maximal invalid subsequence with U+FFFD, exactly as Rust's
 * String::from_utf8_lossy does. */
void tok_utf8_lossy(tok_buf *b, const char *s, size_t n);

/* GPT-2's byte <-> printable character table used by byte-level BPE. */
typedef struct tok_bytemap {
    char enc[256][3]; /* UTF-8 of the character for each byte */
    uint8_t enc_len[256];
    int16_t dec[324]; /* character code point -> byte, -1 when none */
} tok_bytemap;
const tok_bytemap *tok_bytelevel_map(void);

/* ------------------------------------------------------------------ model */

typedef struct tok_bpe {
    tok_strmap vocab;         /* token string -> id, keys in t->pool */
    size_t vocab_count;       /* number of entries (HF's get_vocab_size) */
    tok_mergemap merges;
    int32_t unk_id;           /* -1: no unk token; -2: named but not in the vocab */
    bool fuse_unk, byte_fallback, ignore_merges;
    int32_t byte_ids[256];    /* id of "<0xNN>", -1 when absent */
    uint32_t prefix_off, prefix_len; /* continuing_subword_prefix (len 0: none) */
    uint32_t suffix_off, suffix_len; /* end_of_word_suffix */
    bool has_prefix, has_suffix;
} tok_bpe;

/* ------------------------------------------------------------------ pipeline steps */

enum { TN_PREPEND, TN_REPLACE, TN_IDENTITY, TN_STRIP, TN_BYTELEVEL };
typedef struct tok_norm {
    int kind;
    uint32_t a_off, a_len; /* prepend text, or the literal Replace pattern */
    uint32_t b_off, b_len; /* Replace content */
    pcre2_code *re;        /* Replace regex pattern (a_* unused then) */
    bool left, right;      /* Strip */
} tok_norm;

enum { TS_REMOVED, TS_ISOLATED, TS_MERGED_PREV, TS_MERGED_NEXT, TS_CONTIGUOUS };
enum { TP_SPLIT, TP_BYTELEVEL, TP_METASPACE };
enum { TM_ALWAYS, TM_FIRST, TM_NEVER };
typedef struct tok_pretok {
    int kind;
    pcre2_code *re; /* Split pattern; ByteLevel's GPT-2 regex when use_regex */
    int behavior;
    bool invert;
    bool add_prefix_space;  /* ByteLevel */
    char repl[8];           /* Metaspace replacement character (UTF-8) */
    int repl_len, scheme;
    bool split;
} tok_pretok;

enum { TD_BYTELEVEL, TD_REPLACE, TD_BYTEFALLBACK, TD_FUSE, TD_STRIP, TD_METASPACE };
typedef struct tok_dec {
    int kind;
    uint32_t a_off, a_len, b_off, b_len; /* Replace pattern/content; Strip/Metaspace char in a */
    pcre2_code *re;
    int start, stop;        /* Strip */
    bool prepend;           /* Metaspace: prepend_scheme != never */
} tok_dec;

typedef struct tok_added {
    uint32_t off, len;
    int32_t id;
    bool special, lstrip, rstrip, single_word, normalized;
} tok_added;

/* Byte trie over added-token contents for leftmost-longest matching. */
typedef struct tok_trie {
    uint64_t *keys; /* (node << 8 | byte) + 1, 0 = empty */
    int32_t *child;
    size_t mask, count;
    int32_t *term;  /* per node: index into t->added, or -1 */
    size_t n_nodes, cap_nodes;
    bool first[256];
} tok_trie;
void tok_trie_add(tok_trie *tr, const char *s, size_t n, int32_t value);
/* Longest entry that starts at s[0]; its value and length, or -1. */
int32_t tok_trie_longest(const tok_trie *tr, const char *s, size_t n, size_t *len);
void tok_trie_free(tok_trie *tr);

struct tok_tokenizer {
    char name[256];
    tok_buf pool;
    int32_t n_ids;            /* largest id + 1 */
    uint32_t *id_off, *id_len; /* id -> string in pool; id_len UINT32_MAX: no token */
    uint8_t *id_special;
    tok_bpe bpe;
    tok_added *added;
    size_t n_added;
    tok_strmap added_map;     /* content -> index in added */
    tok_trie trie_raw, trie_norm; /* non-normalized / normalized added tokens */
    tok_norm *norm;
    size_t n_norm;
    tok_pretok *pre;
    size_t n_pre;
    tok_dec *dec;
    size_t n_dec;
    bool has_decoder;
    /* post-processors applied in order, each a template: -1 = the sequence, else an id */
    int32_t **post;
    size_t *post_len, n_post;
    pcre2_code *re_word;      /* \w, for single_word added tokens */
    bool split_special;
};

/* ------------------------------------------------------------------ encoding */

/* A slice of a scratch buffer; id >= 0 when an added token already matched it. */
typedef struct tok_piece {
    size_t off, len;
    int32_t id;
    bool at_start; /* begins at offset 0 of the original text (Metaspace "first") */
} tok_piece;
typedef struct tok_pieces {
    tok_piece *v;
    size_t n, cap;
} tok_pieces;
void tok_pieces_push(tok_pieces *l, size_t off, size_t len, int32_t id, bool at_start);

typedef struct tok_sym tok_sym;
typedef struct tok_heap_item tok_heap_item;
typedef struct tok_work {
    pcre2_match_data *md;
    tok_buf buf[2];
    tok_pieces list[2];
    tok_buf tmp;
    tok_sym *sym;
    size_t sym_cap;
    tok_heap_item *heap;
    size_t heap_cap;
} tok_work;

/* Apply the normalizers to s, writing into out (cleared first). */
void tok_normalize(const tok_tokenizer *t, tok_work *w, const char *s, size_t n, tok_buf *out);
/* Pre-tokenize one piece (the text s) into words appended to (*out_buf, *out_list). */
void tok_pretokenize(const tok_tokenizer *t, tok_work *w, const char *s, size_t n, bool at_start,
                     tok_buf *out_buf, tok_pieces *out_list);
/* Set (per thread) when PCRE2 fails inside tok_regex_each, e.g. a hostile pattern hitting
 * the match limit; tok_encode clears it before and reports it after. */
extern _Thread_local int tok_regex_error;
/* Regex or literal find-all: calls fn(user, start, end) for every match, in order. */
/* out += in[0, n) with every match of re (or, when re is NULL, every occurrence of pat)
 * replaced by `with`: the Replace normalizer and the Replace decoder. */
void tok_replace(tok_buf *out, const char *in, size_t n, const pcre2_code *re, pcre2_match_data *md,
                 const char *pat, size_t pat_len, const char *with, size_t with_len);
void tok_regex_each(const pcre2_code *re, pcre2_match_data *md, const char *s, size_t n,
                    void (*fn)(void *user, size_t start, size_t end), void *user);
/* BPE one word; ids are appended. -1 with e when an unknown character needs an unk token
 * that is missing from the vocabulary. */
int tok_bpe_word(const tok_tokenizer *t, tok_work *w, const char *s, size_t n, tok_ids *out, qt_err *e);
void tok_ids_push(tok_ids *v, int32_t id);

/* ------------------------------------------------------------------ loading */

/* Parse the normalizer / pre_tokenizer / decoder / post_processor sections (tok_pretok.c
 * and tokenizer.c read their own parts; cJSON stays inside tok_load.c). */
int tok_parse_json(tok_tokenizer *t, const char *json, size_t len, qt_err *e);
/* Compile a pattern (UTF + UCP; literal when `literal`); NULL with e filled on error. */
pcre2_code *tok_compile(const tok_tokenizer *t, const char *where, const char *pat, size_t n, bool literal,
                        qt_err *e);
uint32_t tok_pool_add(tok_tokenizer *t, const char *s, size_t n); /* NUL-terminated copy */

#endif
