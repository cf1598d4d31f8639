/* The BPE model: buffers and hash maps it stands on, then one word's encoding.
 *
 * The merge loop is the one HF's `Word::merge_all` runs: a min-heap of candidate merges
 * keyed by (rank, position) over a doubly linked list of symbols, so a long word costs
 * O(n log n) rather than a rescan of every pair per merge. Stale heap entries are detected
 * and dropped exactly as HF does, which keeps the result identical to theirs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

/* ------------------------------------------------------------------ buffers */

void *tok_xrealloc(void *p, size_t bytes) {
    void *q = realloc(p, bytes ? bytes : 1);
    if (!q) qt_die("tokenizer: out of host memory (asked for %zu bytes)", bytes);
    return q;
}

void tok_buf_reserve(tok_buf *b, size_t extra) {
    if (b->n + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + extra + 1) cap *= 2;
    b->p = tok_xrealloc(b->p, cap);
    b->cap = cap;
}

void tok_buf_put(tok_buf *b, const void *s, size_t n) {
    tok_buf_reserve(b, n);
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0; /* always NUL-terminated, so a finished buffer is a C string */
}

void tok_buf_free(tok_buf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

void tok_ids_push(tok_ids *v, int32_t id) {
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 64;
        v->ids = tok_xrealloc(v->ids, v->cap * sizeof *v->ids);
    }
    v->ids[v->n++] = id;
}

void tok_ids_free(tok_ids *v) {
    free(v->ids);
    memset(v, 0, sizeof *v);
}

/* ------------------------------------------------------------------ hashing */

uint64_t tok_hash(const char *s, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xD6E8FEB86659FD93ull);
    while (n >= 8) {
        uint64_t k;
        memcpy(&k, s, 8);
        h = (h ^ k) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 32;
        s += 8;
        n -= 8;
    }
    uint64_t k = 0;
    memcpy(&k, s, n);
    h = (h ^ k) * 0xC4CEB9FE1A85EC53ull;
    return h ^ (h >> 29);
}

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDull;
    x ^= x >> 33;
    x *= 0xC4CEB9FE1A85EC53ull;
    return x ^ (x >> 33);
}

static size_t table_size(size_t expected) {
    size_t s = 16;
    while (s < expected * 2) s *= 2;
    return s;
}

void tok_map_init(tok_strmap *m, size_t expected) {
    size_t s = table_size(expected);
    m->slots = tok_xrealloc(NULL, s * sizeof *m->slots);
    for (size_t i = 0; i < s; i++) m->slots[i].len = UINT32_MAX;
    m->mask = s - 1;
    m->count = 0;
}

void tok_map_free(tok_strmap *m) {
    free(m->slots);
    memset(m, 0, sizeof *m);
}

int32_t tok_map_get(const tok_strmap *m, const char *pool, const char *s, size_t n) {
    if (!m->slots) return -1;
    for (size_t i = tok_hash(s, n) & m->mask;; i = (i + 1) & m->mask) {
        const tok_slot *sl = &m->slots[i];
        if (sl->len == UINT32_MAX) return -1;
        if (sl->len == n && memcmp(pool + sl->off, s, n) == 0) return sl->val;
    }
}

static void map_insert(tok_strmap *m, const char *pool, tok_slot sl) {
    for (size_t i = tok_hash(pool + sl.off, sl.len) & m->mask;; i = (i + 1) & m->mask)
        if (m->slots[i].len == UINT32_MAX) {
            m->slots[i] = sl;
            m->count++;
            return;
        }
}

int32_t tok_map_put(tok_strmap *m, const char *pool, uint32_t off, uint32_t len, int32_t val) {
    for (size_t i = tok_hash(pool + off, len) & m->mask;; i = (i + 1) & m->mask) {
        tok_slot *sl = &m->slots[i];
        if (sl->len == UINT32_MAX) break;
        if (sl->len == len && memcmp(pool + sl->off, pool + off, len) == 0) {
            int32_t old = sl->val;
            sl->val = val;
            return old;
        }
    }
    if ((m->count + 1) * 2 > m->mask + 1) { /* keep the load under 1/2 */
        tok_strmap g;
        tok_map_init(&g, m->count + 1);
        for (size_t i = 0; i <= m->mask; i++)
            if (m->slots[i].len != UINT32_MAX) map_insert(&g, pool, m->slots[i]);
        free(m->slots);
        *m = g;
    }
    map_insert(m, pool, (tok_slot){off, len, val});
    return -1;
}

void tok_merges_init(tok_mergemap *m, size_t expected) {
    size_t s = table_size(expected);
    m->keys = tok_xrealloc(NULL, s * sizeof *m->keys);
    m->rank = tok_xrealloc(NULL, s * sizeof *m->rank);
    m->new_id = tok_xrealloc(NULL, s * sizeof *m->new_id);
    memset(m->keys, 0xFF, s * sizeof *m->keys);
    m->mask = s - 1;
    m->count = 0;
}

void tok_merges_free(tok_mergemap *m) {
    free(m->keys);
    free(m->rank);
    free(m->new_id);
    memset(m, 0, sizeof *m);
}

/* Later duplicates overwrite earlier ones, as collecting HF's merge list into a map does. */
void tok_merges_put(tok_mergemap *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id) {
    QT_CHECK(m->count * 2 < m->mask + 1, "merge map sized for %zu entries is full", m->count);
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = mix64(key) & m->mask;
    while (m->keys[i] != UINT64_MAX && m->keys[i] != key) i = (i + 1) & m->mask;
    if (m->keys[i] == UINT64_MAX) m->count++;
    m->keys[i] = key;
    m->rank[i] = rank;
    m->new_id[i] = new_id;
}

bool tok_merges_get(const tok_mergemap *m, int32_t a, int32_t b, uint32_t *rank, int32_t *new_id) {
    if (!m->keys || !m->count) return false;
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (size_t i = mix64(key) & m->mask;; i = (i + 1) & m->mask) {
        if (m->keys[i] == UINT64_MAX) return false;
        if (m->keys[i] == key) {
            *rank = m->rank[i];
            *new_id = m->new_id[i];
            return true;
        }
    }
}

/* ------------------------------------------------------------------ one word */

struct tok_sym {
    int32_t id;
    int32_t prev, next; /* -1 at the ends */
    uint32_t len;       /* bytes covered; 0 = merged into its left neighbour */
};
struct tok_heap_item {
    uint32_t rank, pos;
    int32_t new_id;
};

static bool item_less(const tok_heap_item *a, const tok_heap_item *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(tok_work *w, size_t *n, tok_heap_item it) {
    if (*n == w->heap_cap) {
        w->heap_cap = w->heap_cap ? w->heap_cap * 2 : 64;
        w->heap = tok_xrealloc(w->heap, w->heap_cap * sizeof *w->heap);
    }
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!item_less(&it, &w->heap[p])) break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = it;
}

static tok_heap_item heap_pop(tok_work *w, size_t *n) {
    tok_heap_item top = w->heap[0], last = w->heap[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && item_less(&w->heap[c + 1], &w->heap[c])) c++;
        if (!item_less(&w->heap[c], &last)) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (*n) w->heap[i] = last;
    return top;
}

static void sym_add(tok_work *w, size_t *n, int32_t id, uint32_t len) {
    if (*n == w->sym_cap) {
        w->sym_cap = w->sym_cap ? w->sym_cap * 2 : 64;
        w->sym = tok_xrealloc(w->sym, w->sym_cap * sizeof *w->sym);
    }
    tok_sym *s = &w->sym[*n];
    s->id = id;
    s->len = len;
    s->prev = *n ? (int32_t)*n - 1 : -1;
    s->next = -1;
    if (*n) w->sym[*n - 1].next = (int32_t)*n;
    (*n)++;
}

/* HF's merge_word: one symbol per character (with the subword prefix / word suffix where
 * configured), byte fallback or unk for characters outside the vocabulary. */
static int initial_symbols(const tok_tokenizer *t, tok_work *w, const char *s, size_t n, size_t *nsym,
                           qt_err *e) {
    const tok_bpe *m = &t->bpe;
    int32_t unk = -1;
    uint32_t unk_len = 0;
    for (size_t i = 0; i < n;) {
        int cl = tok_utf8_len((const unsigned char *)s + i, n - i);
        QT_CHECK(cl > 0, "BPE word is not valid UTF-8 at byte %zu", i);
        const char *key = s + i;
        size_t klen = (size_t)cl;
        bool pre = i > 0 && m->has_prefix, suf = i + cl == n && m->has_suffix;
        if (pre || suf) {
            w->tmp.n = 0;
            if (pre) tok_buf_put(&w->tmp, t->pool.p + m->prefix_off, m->prefix_len);
            tok_buf_put(&w->tmp, s + i, cl);
            if (suf) tok_buf_put(&w->tmp, t->pool.p + m->suffix_off, m->suffix_len);
            key = w->tmp.p;
            klen = w->tmp.n;
        }
        int32_t id = tok_map_get(&m->vocab, t->pool.p, key, klen);
        if (id >= 0) {
            if (unk >= 0) sym_add(w, nsym, unk, unk_len);
            unk = -1;
            sym_add(w, nsym, id, (uint32_t)cl);
        } else {
            bool done = false;
            if (m->byte_fallback) {
                done = true;
                for (size_t k = 0; k < klen; k++) done = done && m->byte_ids[(unsigned char)key[k]] >= 0;
                /* (HF pushes byte tokens without first flushing a pending unk; so do we) */
                if (done)
                    for (size_t k = 0; k < klen; k++) sym_add(w, nsym, m->byte_ids[(unsigned char)key[k]], 1);
            }
            if (!done && m->unk_id != -1) {
                if (m->unk_id == -2)
                    return qt_errf(e, "%s: model.unk_token is not in model.vocab, and the text has a character "
                                      "outside the vocabulary (add the unk token to the vocab)",
                                   t->name);
                if (unk >= 0 && m->fuse_unk) {
                    unk_len += (uint32_t)cl;
                } else {
                    if (unk >= 0) sym_add(w, nsym, unk, unk_len);
                    unk = m->unk_id;
                    unk_len = (uint32_t)cl;
                }
            }
        }
        i += (size_t)cl;
    }
    if (unk >= 0) sym_add(w, nsym, unk, unk_len);
    return 0;
}

int tok_bpe_word(const tok_tokenizer *t, tok_work *w, const char *s, size_t n, tok_ids *out, qt_err *e) {
    const tok_bpe *m = &t->bpe;
    if (n == 0) return 0;
    if (m->ignore_merges) {
        int32_t id = tok_map_get(&m->vocab, t->pool.p, s, n);
        if (id >= 0) {
            tok_ids_push(out, id);
            return 0;
        }
    }
    size_t nsym = 0, nheap = 0;
    if (initial_symbols(t, w, s, n, &nsym, e)) return -1;

    uint32_t rank;
    int32_t nid;
    for (size_t i = 0; i + 1 < nsym; i++)
        if (tok_merges_get(&m->merges, w->sym[i].id, w->sym[i + 1].id, &rank, &nid))
            heap_push(w, &nheap, (tok_heap_item){rank, (uint32_t)i, nid});
    while (nheap) {
        tok_heap_item top = heap_pop(w, &nheap);
        tok_sym *cur = &w->sym[top.pos];
        if (cur->len == 0 || cur->next < 0) continue;
        tok_sym right = w->sym[cur->next];
        /* stale entry: the pair at this position changed since it was pushed */
        if (!tok_merges_get(&m->merges, cur->id, right.id, &rank, &nid) || nid != top.new_id) continue;
        w->sym[cur->next].len = 0;
        cur->id = top.new_id;
        cur->len += right.len;
        cur->next = right.next;
        if (right.next >= 0) w->sym[right.next].prev = (int32_t)top.pos;
        if (cur->prev >= 0 && tok_merges_get(&m->merges, w->sym[cur->prev].id, cur->id, &rank, &nid))
            heap_push(w, &nheap, (tok_heap_item){rank, (uint32_t)cur->prev, nid});
        if (cur->next >= 0 && tok_merges_get(&m->merges, cur->id, w->sym[cur->next].id, &rank, &nid))
            heap_push(w, &nheap, (tok_heap_item){rank, top.pos, nid});
    }
    for (size_t i = 0; i < nsym; i++)
        if (w->sym[i].len) tok_ids_push(out, w->sym[i].id);
    return 0;
}
