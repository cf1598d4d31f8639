/* tokenizer — Hugging Face tokenizer.json (BPE models), encoding and decoding exactly as
 * the `tokenizers` library does.
 *
 * Covered: byte-level BPE (GPT-2, Llama-3, Qwen2, SmolLM: ByteLevel and/or regex Split
 * pre-tokenizers, ByteLevel decoder) and sentencepiece-style BPE (Llama-2, TinyLlama,
 * Mistral: Prepend/Replace normalizers or the Metaspace pre-tokenizer, byte_fallback
 * <0xNN> tokens, unk fusing, Replace/ByteFallback/Fuse/Strip decoders), added tokens
 * (split out of the text before anything else; lstrip/rstrip/single_word/normalized as
 * HF applies them), and TemplateProcessing / Bert / Roberta post-processors for a single
 * sequence. Unicode NFC/NFKC normalizers are accepted but applied as the identity, so text
 * that is not already normalized may encode differently from HF (web text almost always is);
 * `truncation` and `padding` in the file are ignored (the data pipeline cuts sequences).
 * Regex classes (\p{L}, \s, ...) come from PCRE2's Unicode tables (Unicode 14 in PCRE2
 * 10.42) where HF uses Oniguruma's: characters assigned after that may split differently.
 *
 * A loaded tokenizer is read-only: tok_encode and tok_decode may run on several threads. */
#ifndef QT_TOKENIZER_H
#define QT_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "autograd/autograd.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Sizes accepted from a file; beyond them loading fails with a message. */
#define TOK_MAX_FILE_BYTES  (64u << 20)  /* tokenizer.json size (Gemma-3: 33 MB) */
#define TOK_MAX_IDS         4000000      /* every token id is below this */
#define TOK_MAX_TOKEN_BYTES 16384        /* one vocab / added token / merge part */
#define TOK_MAX_REGEX_BYTES 65536        /* one Split / Replace pattern */

typedef struct tok_tokenizer tok_tokenizer;

/* A growable list of ids; start zeroed, free with tok_ids_free. */
typedef struct tok_ids {
    int32_t *ids;
    size_t n, cap;
} tok_ids;
void tok_ids_free(tok_ids *v);

/* Load a tokenizer.json. 0 on success; -1 with e naming the file, the key and the fix. */
int tok_load(tok_tokenizer **out, const char *path, qt_err *e);
/* Same from memory; `name` is used in messages. */
int tok_load_json(tok_tokenizer **out, const char *json, size_t len, const char *name, qt_err *e);
void tok_free(tok_tokenizer *t);

/* HF `encode(text, add_special_tokens=add_special)`: the ids are appended to out.
 * Special-token strings in the text (e.g. "<|eot_id|>", "</s>") become their ids unless
 * tok_set_split_special(t, true) was called (HF's encode_special_tokens), which makes them
 * plain text — what a data pipeline wants for untrusted user text. add_special adds what the
 * post-processor adds (Llama: BOS). -1 when the text is not valid UTF-8 (e names the offset). */
int tok_encode(const tok_tokenizer *t, const char *text, size_t len, bool add_special, tok_ids *out,
               qt_err *e);
void tok_set_split_special(tok_tokenizer *t, bool split_special);

/* HF `decode(ids, skip_special_tokens=skip_special)`: a malloc'd NUL-terminated UTF-8 string
 * (length in *out_len when not NULL). Ids that are not in the vocabulary are skipped, as HF
 * does. Returns NULL only when ids is NULL with n > 0. */
char *tok_decode(const tok_tokenizer *t, const int32_t *ids, size_t n, bool skip_special, size_t *out_len);

/* Largest id + 1 (model vocabulary and added tokens). */
int32_t tok_vocab_size(const tok_tokenizer *t);
/* The id of a token string (added tokens first, then the model's vocabulary), or -1. */
int32_t tok_token_to_id(const tok_tokenizer *t, const char *token);
/* The token string of an id (NUL-terminated, owned by t), or NULL when there is none. */
const char *tok_id_to_token(const tok_tokenizer *t, int32_t id);
/* Is the id one of the added tokens marked "special" (skipped by skip_special decoding)? */
bool tok_is_special(const tok_tokenizer *t, int32_t id);

#ifdef __cplusplus
}
#endif

#endif
