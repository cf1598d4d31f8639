/* Text before the model: UTF-8 helpers, GPT-2's byte map, the added-token trie, regex
 * matching as HF iterates it, normalizers and pre-tokenizers.
 *
 * HF runs its regexes with Oniguruma; we run the same pattern strings with PCRE2 in
 * UTF + UCP mode, which agree on the classes tokenizers use (\p{L}, \p{N}, \s, (?i:...),
 * look-ahead). Match iteration copies Oniguruma's: an empty match right where the previous
 * match ended is skipped and the search moves on one character. */
#define _GNU_SOURCE /* memmem */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

/* ------------------------------------------------------------------ UTF-8 */

int tok_utf8_len(const unsigned char *s, size_t n) {
    if (n == 0) return 0;
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    int len;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;   /* no overlongs */
        if (c == 0xED) hi = 0x9F;   /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;   /* <= U+10FFFF */
    } else
        return 0;
    if (n < (size_t)len || s[1] < lo || s[1] > hi) return 0;
    for (int i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return len;
}

size_t tok_utf8_check(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if ((unsigned char)s[i] < 0x80) {
            i++;
            continue;
        }
        int l = tok_utf8_len((const unsigned char *)s + i, n - i);
        if (!l) return i;
        i += (size_t)l;
    }
    return n;
}

uint32_t tok_utf8_decode(const unsigned char *s, int len) {
    switch (len) {
    case 1: return s[0];
    case 2: return (uint32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F);
    case 3: return (uint32_t)(s[0] & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
    default:
        return (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 | (uint32_t)(s[2] & 0x3F) << 6 |
               (s[3] & 0x3F);
    }
}

int tok_utf8_encode(uint32_t cp, char *o) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12);
        o[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18);
    o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

bool tok_is_ws(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}

void tok_utf8_lossy(tok_buf *b, const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        int l = tok_utf8_len(s + i, n - i);
        if (l) {
            tok_buf_put(b, s + i, (size_t)l);
            i += (size_t)l;
            continue;
        }
        /* one U+FFFD per maximal prefix of a valid sequence (at least one byte) */
        size_t k = 1;
        unsigned char c = s[i];
        int want = (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 1;
        if (want > 1 && i + 1 < n) {
            unsigned char lo = 0x80, hi = 0xBF;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
            if (s[i + 1] >= lo && s[i + 1] <= hi) {
                k = 2;
                while ((int)k < want && i + k < n && (s[i + k] & 0xC0) == 0x80) k++;
            }
        }
        tok_buf_put(b, "\xEF\xBF\xBD", 3);
        i += k;
    }
}

/* ------------------------------------------------------------------ GPT-2 byte map */

static tok_bytemap g_bytemap;
static pthread_once_t g_bytemap_once = PTHREAD_ONCE_INIT;

static void bytemap_build(void) {
    tok_bytemap *m = &g_bytemap;
    for (int i = 0; i < 324; i++) m->dec[i] = -1;
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        uint32_t cp = printable ? (uint32_t)b : 256u + (uint32_t)extra++;
        m->enc_len[b] = (uint8_t)tok_utf8_encode(cp, m->enc[b]);
        m->dec[cp] = (int16_t)b;
    }
}

const tok_bytemap *tok_bytelevel_map(void) {
    pthread_once(&g_bytemap_once, bytemap_build);
    return &g_bytemap;
}

/* ------------------------------------------------------------------ added-token trie */

static int32_t trie_node(tok_trie *tr) {
    if (tr->n_nodes == tr->cap_nodes) {
        tr->cap_nodes = tr->cap_nodes ? tr->cap_nodes * 2 : 64;
        tr->term = tok_xrealloc(tr->term, tr->cap_nodes * sizeof *tr->term);
    }
    tr->term[tr->n_nodes] = -1;
    return (int32_t)tr->n_nodes++;
}

static size_t edge_slot(const tok_trie *tr, uint64_t key) {
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 17) & tr->mask;
    while (tr->keys[i] && tr->keys[i] != key) i = (i + 1) & tr->mask;
    return i;
}

static void edge_grow(tok_trie *tr) {
    size_t old = tr->keys ? tr->mask + 1 : 0, cap = old ? old * 2 : 256;
    uint64_t *ok = tr->keys;
    int32_t *oc = tr->child;
    tr->keys = calloc(cap, sizeof *tr->keys);
    tr->child = tok_xrealloc(NULL, cap * sizeof *tr->child);
    if (!tr->keys) qt_die("tokenizer: out of host memory");
    tr->mask = cap - 1;
    for (size_t i = 0; i < old; i++)
        if (ok[i]) {
            size_t j = edge_slot(tr, ok[i]);
            tr->keys[j] = ok[i];
            tr->child[j] = oc[i];
        }
    free(ok);
    free(oc);
}

/* The first value added for a string is kept (HF keeps the first added token). */
void tok_trie_add(tok_trie *tr, const char *s, size_t n, int32_t value) {
    if (!tr->n_nodes) trie_node(tr);
    if (n == 0) return;
    tr->first[(unsigned char)s[0]] = true;
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        if ((tr->count + 1) * 2 > (tr->keys ? tr->mask + 1 : 0)) edge_grow(tr);
        uint64_t key = ((uint64_t)node << 8 | (unsigned char)s[i]) + 1;
        size_t j = edge_slot(tr, key);
        if (!tr->keys[j]) {
            int32_t c = trie_node(tr);
            tr->keys[j] = key;
            tr->child[j] = c;
            tr->count++;
        }
        node = tr->child[j];
    }
    if (tr->term[node] < 0) tr->term[node] = value;
}

int32_t tok_trie_longest(const tok_trie *tr, const char *s, size_t n, size_t *len) {
    int32_t best = -1, node = 0;
    if (!tr->count || !n || !tr->first[(unsigned char)s[0]]) return -1;
    for (size_t i = 0; i < n; i++) {
        uint64_t key = ((uint64_t)node << 8 | (unsigned char)s[i]) + 1;
        size_t j = edge_slot(tr, key);
        if (!tr->keys[j]) break;
        node = tr->child[j];
        if (tr->term[node] >= 0) {
            best = tr->term[node];
            *len = i + 1;
        }
    }
    return best;
}

void tok_trie_free(tok_trie *tr) {
    free(tr->keys);
    free(tr->child);
    free(tr->term);
    memset(tr, 0, sizeof *tr);
}

/* ------------------------------------------------------------------ regex iteration */

pcre2_code *tok_compile(const tok_tokenizer *t, const char *where, const char *pat, size_t n, bool literal,
                        qt_err *e) {
    int err;
    PCRE2_SIZE at;
    uint32_t opt = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP); /* LITERAL refuses UCP */
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, n, opt, &err, &at, NULL);
    if (!re) {
        char msg[256];
        pcre2_get_error_message(err, (PCRE2_UCHAR *)msg, sizeof msg);
        qt_errf(e, "%s: %s: the regex does not compile at offset %zu: %s (qtrain runs HF's Oniguruma "
                   "patterns with PCRE2; rewrite the pattern in the common syntax)",
                t->name, where, (size_t)at, msg);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* best effort: the interpreter gives the same matches */
    return re;
}

_Thread_local int tok_regex_error;

void tok_regex_each(const pcre2_code *re, pcre2_match_data *md, const char *s, size_t n,
                    void (*fn)(void *user, size_t start, size_t end), void *user) {
    size_t pos = 0, last_end = SIZE_MAX;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    while (pos <= n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            tok_regex_error = rc;
            break;
        }
        size_t a = ov[0], b = ov[1];
        if (b < a) b = a; /* \K inside a look-around; no tokenizer pattern does this */
        if (a == b && last_end == b) {
            if (pos >= n) break;
            int l = tok_utf8_len((const unsigned char *)s + pos, n - pos);
            pos += l ? (size_t)l : 1;
            continue;
        }
        fn(user, a, b);
        pos = b;
        last_end = b;
    }
}

/* ------------------------------------------------------------------ pieces */

void tok_pieces_push(tok_pieces *l, size_t off, size_t len, int32_t id, bool at_start) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->v = tok_xrealloc(l->v, l->cap * sizeof *l->v);
    }
    l->v[l->n++] = (tok_piece){off, len, id, at_start};
}

/* ------------------------------------------------------------------ normalizers */

static void norm_step(const tok_tokenizer *t, tok_work *w, const tok_norm *s, const char *in, size_t n,
                      tok_buf *out);

typedef struct {
    const char *in;
    tok_buf *out;
    size_t prev;
    const char *with;
    size_t with_len;
} replace_ctx;

static void replace_cb(void *u, size_t a, size_t b) {
    replace_ctx *c = u;
    tok_buf_put(c->out, c->in + c->prev, a - c->prev);
    tok_buf_put(c->out, c->with, c->with_len);
    c->prev = b;
}

void tok_replace(tok_buf *out, const char *in, size_t n, const pcre2_code *re, pcre2_match_data *md,
                 const char *pat, size_t pat_len, const char *with, size_t with_len) {
    if (re) {
        replace_ctx c = {in, out, 0, with, with_len};
        tok_regex_each(re, md, in, n, replace_cb, &c);
        tok_buf_put(out, in + c.prev, n - c.prev);
        return;
    }
    size_t i = 0;
    while (i < n) {
        const char *hit = memmem(in + i, n - i, pat, pat_len);
        if (!hit) break;
        size_t at = (size_t)(hit - in);
        tok_buf_put(out, in + i, at - i);
        tok_buf_put(out, with, with_len);
        i = at + pat_len;
    }
    tok_buf_put(out, in + i, n - i);
}

static void norm_step(const tok_tokenizer *t, tok_work *w, const tok_norm *s, const char *in, size_t n,
                      tok_buf *out) {
    const char *pool = t->pool.p;
    out->n = 0;
    tok_buf_reserve(out, n);
    switch (s->kind) {
    case TN_PREPEND:
        if (n) tok_buf_put(out, pool + s->a_off, s->a_len);
        tok_buf_put(out, in, n);
        break;
    case TN_REPLACE:
        tok_replace(out, in, n, s->re, w->md, pool + s->a_off, s->a_len, pool + s->b_off, s->b_len);
        break;
    case TN_STRIP: {
        size_t a = 0, b = n;
        while (s->left && a < b) {
            int l = tok_utf8_len((const unsigned char *)in + a, b - a);
            if (!l || !tok_is_ws(tok_utf8_decode((const unsigned char *)in + a, l))) break;
            a += (size_t)l;
        }
        while (s->right && b > a) {
            size_t k = b - 1;
            while (k > a && ((unsigned char)in[k] & 0xC0) == 0x80) k--;
            int l = tok_utf8_len((const unsigned char *)in + k, b - k);
            if (!l || !tok_is_ws(tok_utf8_decode((const unsigned char *)in + k, l))) break;
            b = k;
        }
        tok_buf_put(out, in + a, b - a);
        break;
    }
    case TN_BYTELEVEL: {
        const tok_bytemap *m = tok_bytelevel_map();
        for (size_t i = 0; i < n; i++) tok_buf_put(out, m->enc[(unsigned char)in[i]], m->enc_len[(unsigned char)in[i]]);
        break;
    }
    default: /* TN_IDENTITY */
        tok_buf_put(out, in, n);
    }
}

void tok_normalize(const tok_tokenizer *t, tok_work *w, const char *s, size_t n, tok_buf *out) {
    out->n = 0;
    tok_buf_put(out, s, n);
    for (size_t i = 0; i < t->n_norm; i++) {
        norm_step(t, w, &t->norm[i], out->p, out->n, &w->tmp);
        tok_buf sw = *out; /* the result becomes `out`; the old buffer is the next scratch */
        *out = w->tmp;
        w->tmp = sw;
    }
}

/* ------------------------------------------------------------------ pre-tokenizers */

typedef struct {
    size_t a, b;
    bool match;
} span;
typedef struct {
    span *v;
    size_t n, cap;
    size_t prev;
} span_list;

static void span_push(span_list *l, size_t a, size_t b, bool m) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->v = tok_xrealloc(l->v, l->cap * sizeof *l->v);
    }
    l->v[l->n++] = (span){a, b, m};
}

static void span_cb(void *u, size_t a, size_t b) {
    span_list *l = u;
    if (l->prev != a) span_push(l, l->prev, a, false);
    span_push(l, a, b, true);
    l->prev = b;
}

/* HF's NormalizedString::split: matches and the text between them, then the behaviour. */
static void split_apply(const tok_pretok *p, tok_work *w, const char *s, size_t n, span_list *l) {
    l->n = 0;
    l->prev = 0;
    if (n == 0) return;
    if (p->kind == TP_METASPACE) { /* split on the replacement character */
        for (size_t i = 0; i + (size_t)p->repl_len <= n;) {
            if (memcmp(s + i, p->repl, (size_t)p->repl_len) == 0) {
                span_cb(l, i, i + (size_t)p->repl_len);
                i += (size_t)p->repl_len;
            } else
                i++;
        }
    } else
        tok_regex_each(p->re, w->md, s, n, span_cb, l);
    if (l->prev != n) span_push(l, l->prev, n, false);
    if (p->invert)
        for (size_t i = 0; i < l->n; i++) l->v[i].match = !l->v[i].match;
    size_t k = 0;
    bool prev_match = false;
    switch (p->behavior) {
    case TS_REMOVED:
        for (size_t i = 0; i < l->n; i++)
            if (!l->v[i].match) l->v[k++] = l->v[i];
        l->n = k;
        break;
    case TS_MERGED_PREV:
        for (size_t i = 0; i < l->n; i++) {
            span sp = l->v[i];
            if (sp.match && !prev_match && k) l->v[k - 1].b = sp.b;
            else l->v[k++] = sp;
            prev_match = sp.match;
        }
        l->n = k;
        break;
    case TS_MERGED_NEXT: /* the same from the right */
        k = l->n;
        for (size_t i = l->n; i-- > 0;) {
            span sp = l->v[i];
            if (sp.match && !prev_match && k < l->n) l->v[k].a = sp.a;
            else l->v[--k] = sp;
            prev_match = sp.match;
        }
        memmove(l->v, l->v + k, (l->n - k) * sizeof *l->v);
        l->n -= k;
        break;
    case TS_CONTIGUOUS:
        for (size_t i = 0; i < l->n; i++) {
            span sp = l->v[i];
            if (sp.match == prev_match && k) l->v[k - 1].b = sp.b;
            else l->v[k++] = sp;
            prev_match = sp.match;
        }
        l->n = k;
        break;
    default: /* TS_ISOLATED */
        break;
    }
}

/* One pre-tokenizer over one piece: results appended to (ob, ol). */
static void pretok_step(const tok_tokenizer *t, tok_work *w, const tok_pretok *p, const char *s, size_t n,
                        bool at_start, tok_buf *ob, tok_pieces *ol, span_list *sp) {
    if (p->kind == TP_SPLIT || (p->kind == TP_BYTELEVEL && !p->add_prefix_space && p->re == NULL)) {
        if (p->kind == TP_SPLIT) {
            split_apply(p, w, s, n, sp);
        } else {
            sp->n = 0;
            span_push(sp, 0, n, false);
        }
    } else {
        /* ByteLevel with a prefix space / regex, or Metaspace: rewrite, then split */
        tok_buf *tb = &w->tmp;
        tb->n = 0;
        if (p->kind == TP_BYTELEVEL) {
            if (p->add_prefix_space && !(n && s[0] == ' ')) tok_buf_put(tb, " ", 1);
            tok_buf_put(tb, s, n);
        } else { /* Metaspace */
            /* HF replaces spaces first, then asks whether the piece starts with the replacement */
            bool starts = (n && s[0] == ' ') ||
                          (n >= (size_t)p->repl_len && memcmp(s, p->repl, (size_t)p->repl_len) == 0);
            if (!starts && (p->scheme == TM_ALWAYS || (p->scheme == TM_FIRST && at_start)))
                tok_buf_put(tb, p->repl, (size_t)p->repl_len);
            tok_buf_reserve(tb, n);
            for (size_t i = 0; i < n; i++) {
                if (s[i] == ' ') tok_buf_put(tb, p->repl, (size_t)p->repl_len);
                else tok_buf_put(tb, s + i, 1);
            }
        }
        tok_buf_reserve(tb, 0);
        s = tb->p;
        n = tb->n;
        if (p->kind == TP_BYTELEVEL ? p->re != NULL : p->split) {
            split_apply(p, w, s, n, sp);
        } else {
            sp->n = 0;
            span_push(sp, 0, n, false);
        }
    }
    const tok_bytemap *bm = p->kind == TP_BYTELEVEL ? tok_bytelevel_map() : NULL;
    for (size_t i = 0; i < sp->n; i++) {
        size_t a = sp->v[i].a, len = sp->v[i].b - a;
        if (!len) continue;
        size_t off = ob->n;
        if (bm) {
            for (size_t k = a; k < a + len; k++)
                tok_buf_put(ob, bm->enc[(unsigned char)s[k]], bm->enc_len[(unsigned char)s[k]]);
        } else
            tok_buf_put(ob, s + a, len);
        tok_pieces_push(ol, off, ob->n - off, -1, at_start && a == 0);
    }
}

void tok_pretokenize(const tok_tokenizer *t, tok_work *w, const char *s, size_t n, bool at_start,
                     tok_buf *out_buf, tok_pieces *out_list) {
    if (n == 0) return;
    if (t->n_pre == 0) {
        size_t off = out_buf->n;
        tok_buf_put(out_buf, s, n);
        tok_pieces_push(out_list, off, n, -1, at_start);
        return;
    }
    span_list sp = {0};
    /* buf[0]/list[0] hold the current pieces, buf[1]/list[1] receive the next step's */
    tok_buf *cb = &w->buf[0], *nb = &w->buf[1];
    tok_pieces *cl = &w->list[0], *nl = &w->list[1];
    cb->n = 0;
    cl->n = 0;
    tok_buf_put(cb, s, n);
    tok_pieces_push(cl, 0, n, -1, at_start);
    for (size_t k = 0; k < t->n_pre; k++) {
        bool last = k + 1 == t->n_pre;
        tok_buf *ob = last ? out_buf : nb;
        tok_pieces *ol = last ? out_list : nl;
        if (!last) {
            nb->n = 0;
            nl->n = 0;
        }
        for (size_t i = 0; i < cl->n; i++)
            pretok_step(t, w, &t->pre[k], cb->p + cl->v[i].off, cl->v[i].len, cl->v[i].at_start, ob, ol, &sp);
        if (!last) {
            tok_buf tb = *cb;
            *cb = *nb;
            *nb = tb;
            tok_pieces tl = *cl;
            *cl = *nl;
            *nl = tl;
        }
    }
    free(sp.v);
}
