/* Encoding and decoding through a loaded tokenizer, in HF's order:
 *
 *   encode: split the raw text on added tokens that are not normalized -> normalize each
 *           remaining piece -> split it on normalized added tokens -> pre-tokenize into
 *           words -> BPE each word -> post-process (BOS etc.) when add_special.
 *   decode: ids -> token strings (added tokens first, unknown ids dropped, special ones
 *           dropped on request) -> the decoder chain -> one string.
 *
 * All scratch memory of a call lives in a tok_work on the stack, so a loaded tokenizer is
 * never written and calls may run on several threads. */
#define _GNU_SOURCE /* memmem */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

/* ------------------------------------------------------------------ added tokens */

static bool is_word_char(const tok_tokenizer *t, pcre2_match_data *md, const char *s, size_t n) {
    int l = tok_utf8_len((const unsigned char *)s, n);
    return l && pcre2_match(t->re_word, (PCRE2_SPTR)s, (size_t)l, 0, PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, md,
                            NULL) >= 0;
}

/* Start of the last character of s[0..n). */
static size_t last_char(const char *s, size_t n) {
    size_t k = n - 1;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
    return k;
}

/* HF's AddedVocabulary::find_matches: leftmost-longest matches of the added tokens,
 * filtered and widened by their flags; pieces (text or token) go to out. */
static void split_added(const tok_tokenizer *t, tok_work *w, const tok_trie *tr, const char *s, size_t n,
                        tok_pieces *out) {
    size_t done = 0, i = 0;
    while (i < n) {
        size_t mlen = 0;
        int32_t k = tr->first[(unsigned char)s[i]] ? tok_trie_longest(tr, s + i, n - i, &mlen) : -1;
        if (k < 0) {
            i++;
            continue;
        }
        const tok_added *a = &t->added[k];
        size_t ms = i, me = i + mlen;
        i = me; /* the matcher goes on after the match itself, whatever the flags add */
        if (t->split_special && a->special) continue;
        if (a->single_word) {
            bool left_ok = ms == 0 || !is_word_char(t, w->md, s + last_char(s, ms), ms - last_char(s, ms));
            bool right_ok = me == n || !is_word_char(t, w->md, s + me, n - me);
            if (!left_ok || !right_ok) continue;
        }
        if (a->lstrip) {
            size_t ns = ms;
            while (ns > 0) {
                size_t c = last_char(s, ns);
                int l = tok_utf8_len((const unsigned char *)s + c, ns - c);
                if (!l || !tok_is_ws(tok_utf8_decode((const unsigned char *)s + c, l))) break;
                ns = c;
            }
            ms = ns > done ? ns : done;
        }
        if (a->rstrip) {
            while (me < n) {
                int l = tok_utf8_len((const unsigned char *)s + me, n - me);
                if (!l || !tok_is_ws(tok_utf8_decode((const unsigned char *)s + me, l))) break;
                me += (size_t)l;
            }
        }
        if (done < ms) tok_pieces_push(out, done, ms - done, -1, done == 0);
        tok_pieces_push(out, ms, me - ms, a->id, ms == 0);
        done = me;
    }
    if (done < n) tok_pieces_push(out, done, n - done, -1, done == 0);
}

/* ------------------------------------------------------------------ encode */

void tok_set_split_special(tok_tokenizer *t, bool split_special) { t->split_special = split_special; }

static void work_free(tok_work *w) {
    pcre2_match_data_free(w->md);
    for (int i = 0; i < 2; i++) {
        tok_buf_free(&w->buf[i]);
        free(w->list[i].v);
    }
    tok_buf_free(&w->tmp);
    free(w->sym);
    free(w->heap);
}

/* Each post-processor template replaces the ids from `start` on: -1 entries stand for them. */
static void post_process(const tok_tokenizer *t, tok_ids *out, size_t start) {
    for (size_t p = 0; p < t->n_post; p++) {
        size_t n = out->n - start;
        int32_t *seq = tok_xrealloc(NULL, (n ? n : 1) * sizeof *seq);
        if (n) memcpy(seq, out->ids + start, n * sizeof *seq);
        out->n = start;
        for (size_t k = 0; k < t->post_len[p]; k++) {
            if (t->post[p][k] >= 0) {
                tok_ids_push(out, t->post[p][k]);
            } else
                for (size_t i = 0; i < n; i++) tok_ids_push(out, seq[i]);
        }
        free(seq);
    }
}

int tok_encode(const tok_tokenizer *t, const char *text, size_t len, bool add_special, tok_ids *out, qt_err *e) {
    qt_err local;
    if (!e) e = &local;
    if (!text && len) return qt_errf(e, "%s: tok_encode was given NULL text", t->name);
    size_t bad = tok_utf8_check(text, len);
    if (bad != len)
        return qt_errf(e, "%s: the text is not valid UTF-8 at byte %zu (0x%02X); convert it to UTF-8 first",
                       t->name, bad, (unsigned char)text[bad]);
    size_t start = out->n;
    tok_work w = {0};
    w.md = pcre2_match_data_create(16, NULL);
    if (!w.md) qt_die("tokenizer: out of host memory");
    tok_regex_error = 0;
    tok_pieces raw = {0}, sub = {0}, words = {0};
    tok_buf norm = {0}, wbuf = {0};
    int rc = 0;
    if (len) split_added(t, &w, &t->trie_raw, text, len, &raw);
    for (size_t i = 0; i < raw.n && !rc; i++) {
        const tok_piece *p = &raw.v[i];
        if (p->id >= 0) {
            tok_ids_push(out, p->id);
            continue;
        }
        tok_normalize(t, &w, text + p->off, p->len, &norm);
        sub.n = 0;
        split_added(t, &w, &t->trie_norm, norm.p, norm.n, &sub);
        for (size_t j = 0; j < sub.n && !rc; j++) {
            const tok_piece *q = &sub.v[j];
            if (q->id >= 0) {
                tok_ids_push(out, q->id);
                continue;
            }
            wbuf.n = 0;
            words.n = 0;
            tok_pretokenize(t, &w, norm.p + q->off, q->len, p->at_start && q->off == 0, &wbuf, &words);
            for (size_t k = 0; k < words.n && !rc; k++)
                rc = tok_bpe_word(t, &w, wbuf.p + words.v[k].off, words.v[k].len, out, e);
        }
    }
    if (!rc && tok_regex_error) {
        char msg[160];
        pcre2_get_error_message(tok_regex_error, (PCRE2_UCHAR *)msg, sizeof msg);
        rc = qt_errf(e, "%s: a pre-tokenizer regex failed on this text: %s", t->name, msg);
    }
    if (!rc && add_special) post_process(t, out, start);
    if (rc) out->n = start;
    free(raw.v);
    free(sub.v);
    free(words.v);
    tok_buf_free(&norm);
    tok_buf_free(&wbuf);
    work_free(&w);
    return rc;
}

/* ------------------------------------------------------------------ decode */

/* The decoder chain works on a list of strings: (off, len) slices of one buffer. */
typedef struct {
    tok_buf b;
    tok_pieces l;
} strlist;

static void sl_push(strlist *s, const char *p, size_t n) {
    size_t off = s->b.n;
    tok_buf_put(&s->b, p, n);
    tok_pieces_push(&s->l, off, n, -1, false);
}

/* "<0xNN>" -> NN (HF's from_str_radix also takes a '+' sign and lowercase digits) */
static int byte_token(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        if (i == 3 && c == '+') continue;
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static void dec_step(const tok_tokenizer *t, const tok_dec *d, pcre2_match_data *md, const strlist *in, strlist *out) {
    const char *pool = t->pool.p;
    out->b.n = 0;
    out->l.n = 0;
    tok_buf_reserve(&out->b, in->b.n);
    if (d->kind == TD_BYTELEVEL || d->kind == TD_FUSE) {
        tok_buf raw = {0};
        const tok_bytemap *m = tok_bytelevel_map();
        for (size_t i = 0; i < in->l.n; i++) {
            const char *s = in->b.p + in->l.v[i].off;
            size_t n = in->l.v[i].len, mark = raw.n;
            bool all = d->kind == TD_BYTELEVEL;
            for (size_t k = 0; all && k < n;) {
                int l = tok_utf8_len((const unsigned char *)s + k, n - k);
                uint32_t cp = l ? tok_utf8_decode((const unsigned char *)s + k, l) : 0xFFFFFFFF;
                if (!l || cp >= 324 || m->dec[cp] < 0) {
                    all = false;
                    break;
                }
                char byte = (char)m->dec[cp];
                tok_buf_put(&raw, &byte, 1);
                k += (size_t)l;
            }
            if (!all) { /* a token with a character outside the map keeps its own bytes */
                raw.n = mark;
                tok_buf_put(&raw, s, n);
            }
        }
        if (d->kind == TD_BYTELEVEL) {
            size_t off = out->b.n;
            tok_utf8_lossy(&out->b, raw.p ? raw.p : "", raw.n);
            tok_pieces_push(&out->l, off, out->b.n - off, -1, false);
        } else
            sl_push(out, raw.p ? raw.p : "", raw.n);
        tok_buf_free(&raw);
        return;
    }
    tok_buf bytes = {0};
    for (size_t i = 0; i <= in->l.n; i++) {
        const char *s = i < in->l.n ? in->b.p + in->l.v[i].off : NULL;
        size_t n = i < in->l.n ? in->l.v[i].len : 0;
        switch (d->kind) {
        case TD_BYTEFALLBACK: {
            int v = s ? byte_token(s, n) : -1;
            if (v >= 0) {
                char c = (char)v;
                tok_buf_put(&bytes, &c, 1);
                continue;
            }
            if (bytes.n) { /* pending bytes: one string if valid UTF-8, else one U+FFFD per byte */
                if (tok_utf8_check(bytes.p, bytes.n) == bytes.n) sl_push(out, bytes.p, bytes.n);
                else
                    for (size_t k = 0; k < bytes.n; k++) sl_push(out, "\xEF\xBF\xBD", 3);
                bytes.n = 0;
            }
            if (s) sl_push(out, s, n);
            break;
        }
        case TD_REPLACE: {
            if (!s) break;
            size_t off = out->b.n;
            tok_replace(&out->b, s, n, d->re, md, pool + d->a_off, d->a_len, pool + d->b_off, d->b_len);
            tok_pieces_push(&out->l, off, out->b.n - off, -1, false);
            break;
        }
        case TD_STRIP: {
            if (!s) break;
            const char *c = pool + d->a_off;
            size_t a = 0, b = n;
            for (int k = 0; k < d->start && a + d->a_len <= n && !memcmp(s + a, c, d->a_len); k++) a += d->a_len;
            for (int k = 0; k < d->stop && b >= a + d->a_len && !memcmp(s + b - d->a_len, c, d->a_len); k++)
                b -= d->a_len;
            sl_push(out, s + a, b - a);
            break;
        }
        case TD_METASPACE: {
            if (!s) break;
            size_t off = out->b.n;
            for (size_t k = 0; k < n;) {
                if (k + d->a_len <= n && !memcmp(s + k, pool + d->a_off, d->a_len)) {
                    if (!(i == 0 && d->prepend)) tok_buf_put(&out->b, " ", 1);
                    k += d->a_len;
                } else {
                    tok_buf_put(&out->b, s + k, 1);
                    k++;
                }
            }
            tok_pieces_push(&out->l, off, out->b.n - off, -1, false);
            break;
        }
        }
    }
    tok_buf_free(&bytes);
}

char *tok_decode(const tok_tokenizer *t, const int32_t *ids, size_t n, bool skip_special, size_t *out_len) {
    if (!ids && n) return NULL;
    strlist a = {0}, b = {0};
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_ids || t->id_len[id] == UINT32_MAX) continue;
        if (skip_special && t->id_special[id]) continue;
        sl_push(&a, t->pool.p + t->id_off[id], t->id_len[id]);
    }
    pcre2_match_data *md = pcre2_match_data_create(16, NULL);
    if (!md) qt_die("tokenizer: out of host memory");
    for (size_t k = 0; k < t->n_dec; k++) {
        dec_step(t, &t->dec[k], md, &a, &b);
        strlist s = a;
        a = b;
        b = s;
    }
    pcre2_match_data_free(md);
    tok_buf res = {0};
    tok_buf_put(&res, "", 0);
    for (size_t i = 0; i < a.l.n; i++) {
        if (i && !t->has_decoder) tok_buf_put(&res, " ", 1);
        tok_buf_put(&res, a.b.p + a.l.v[i].off, a.l.v[i].len);
    }
    tok_buf_free(&a.b);
    tok_buf_free(&b.b);
    free(a.l.v);
    free(b.l.v);
    if (out_len) *out_len = res.n;
    return res.p;
}

/* ------------------------------------------------------------------ lookups */

int32_t tok_vocab_size(const tok_tokenizer *t) { return t->n_ids; }

int32_t tok_token_to_id(const tok_tokenizer *t, const char *token) {
    size_t n = strlen(token);
    int32_t k = tok_map_get(&t->added_map, t->pool.p, token, n);
    if (k >= 0) return t->added[k].id;
    return tok_map_get(&t->bpe.vocab, t->pool.p, token, n);
}

const char *tok_id_to_token(const tok_tokenizer *t, int32_t id) {
    if (id < 0 || id >= t->n_ids || t->id_len[id] == UINT32_MAX) return NULL;
    return t->pool.p + t->id_off[id];
}

bool tok_is_special(const tok_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_ids && t->id_special && t->id_special[id];
}

void tok_free(tok_tokenizer *t) {
    if (!t) return;
    tok_buf_free(&t->pool);
    free(t->id_off);
    free(t->id_len);
    free(t->id_special);
    tok_map_free(&t->bpe.vocab);
    tok_merges_free(&t->bpe.merges);
    free(t->added);
    tok_map_free(&t->added_map);
    tok_trie_free(&t->trie_raw);
    tok_trie_free(&t->trie_norm);
    for (size_t i = 0; i < t->n_norm; i++) pcre2_code_free(t->norm[i].re);
    for (size_t i = 0; i < t->n_pre; i++) pcre2_code_free(t->pre[i].re);
    for (size_t i = 0; i < t->n_dec; i++) pcre2_code_free(t->dec[i].re);
    free(t->norm);
    free(t->pre);
    free(t->dec);
    for (size_t i = 0; i < t->n_post; i++) free(t->post[i]);
    free(t->post);
    free(t->post_len);
    pcre2_code_free(t->re_word);
    free(t);
}
