/* Chat templates and rendering to token ids.
 *
 * A template renders a conversation to segments (qt_render): special tokens by name, and
 * text, each marked trained or not. qt_render_tokens turns segments into ids: every run of
 * text between two tokens is tokenized as one string, which is exactly how tokenizing the
 * whole rendered string splits it (added tokens are cut out first, then each piece is
 * normalized and pre-tokenized on its own), so the ids equal tokenizing the rendered string
 * while the trained flags come from the segments, not from searching strings. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "data_internal.h"

const char *qt_chat_style_name(qt_chat_style s) {
    switch (s) {
    case QT_CHAT_AUTO: return "auto";
    case QT_CHAT_LLAMA3: return "llama3";
    case QT_CHAT_CHATML: return "chatml";
    case QT_CHAT_LLAMA2: return "llama2";
    }
    return "?";
}

int qt_chat_style_parse(const char *name, qt_chat_style *out) {
    for (int s = QT_CHAT_AUTO; s <= QT_CHAT_LLAMA2; s++)
        if (strcmp(name, qt_chat_style_name((qt_chat_style)s)) == 0) {
            *out = (qt_chat_style)s;
            return 0;
        }
    return -1;
}

/* ------------------------------------------------------------------ growable buffers */

void *qd_xrealloc(void *p, size_t bytes) {
    void *q = realloc(p, bytes ? bytes : 1);
    if (!q) qt_die("out of host memory (data: %zu bytes)", bytes);
    return q;
}

void qt_tokens_push(qt_tokens *s, int32_t id, bool train) {
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 256;
        s->ids = qd_xrealloc(s->ids, s->cap * sizeof *s->ids);
        s->train = qd_xrealloc(s->train, s->cap);
    }
    s->ids[s->n] = id;
    s->train[s->n++] = train;
}

void qt_tokens_free(qt_tokens *s) {
    free(s->ids);
    free(s->train);
    memset(s, 0, sizeof *s);
}

void qt_render_clear(qt_render *r) { r->n = r->nseg = 0; }

void qt_render_free(qt_render *r) {
    free(r->text);
    free(r->seg);
    memset(r, 0, sizeof *r);
}

static size_t put_bytes(qt_render *r, const char *s, size_t n) {
    if (r->n + n + 1 > r->cap) {
        r->cap = (r->n + n + 1) * 2;
        r->text = qd_xrealloc(r->text, r->cap);
    }
    memcpy(r->text + r->n, s, n);
    r->n += n;
    r->text[r->n] = 0;
    return r->n - n;
}

static qt_seg *new_seg(qt_render *r) {
    if (r->nseg == r->segcap) {
        r->segcap = r->segcap ? r->segcap * 2 : 16;
        r->seg = qd_xrealloc(r->seg, r->segcap * sizeof *r->seg);
    }
    qt_seg *g = &r->seg[r->nseg++];
    memset(g, 0, sizeof *g);
    return g;
}

/* Text right after text with the same flag extends it: a run then has one segment per
 * flag change, and consecutive text segments are always adjacent bytes. */
void qt_render_text(qt_render *r, const char *s, size_t n, bool train) {
    if (n == 0) return;
    size_t off = put_bytes(r, s, n);
    qt_seg *last = r->nseg ? &r->seg[r->nseg - 1] : NULL;
    if (last && last->kind == QT_SEG_TEXT && last->train == train && last->off + last->len == off) {
        last->len += n;
        return;
    }
    qt_seg *g = new_seg(r);
    g->kind = QT_SEG_TEXT;
    g->train = train;
    g->off = off;
    g->len = n;
}

void qt_render_token(qt_render *r, const char *token, bool train) {
    size_t n = strlen(token), off = put_bytes(r, token, n);
    qt_seg *g = new_seg(r);
    g->kind = QT_SEG_TOKEN;
    g->train = train;
    g->off = off;
    g->len = n;
}

void qt_render_id(qt_render *r, int32_t id, bool train) {
    qt_seg *g = new_seg(r);
    g->kind = QT_SEG_ID;
    g->train = train;
    g->id = id;
}

char *qt_render_string(const qt_render *r, const tok_tokenizer *t, size_t *len) {
    size_t n = 0, cap = r->n + 64;
    char *out = qd_xrealloc(NULL, cap);
    for (size_t i = 0; i < r->nseg; i++) {
        const qt_seg *g = &r->seg[i];
        const char *s = r->text + g->off;
        size_t k = g->len;
        if (g->kind == QT_SEG_ID) {
            s = t ? tok_id_to_token(t, g->id) : NULL;
            if (!s) s = "";
            k = strlen(s);
        }
        if (n + k + 1 > cap) {
            cap = (n + k + 1) * 2;
            out = qd_xrealloc(out, cap);
        }
        memcpy(out + n, s, k);
        n += k;
    }
    out[n] = 0;
    if (len) *len = n;
    return out;
}

/* ------------------------------------------------------------------ segments -> ids */

static int encode(const tok_tokenizer *t, const char *s, size_t n, tok_ids *out, qt_render_stats *st, qt_err *e) {
    out->n = 0;
    if (n == 0) return 0;
    if (st) st->encode_calls++;
    return tok_encode(t, s, n, false, out, e);
}

int qt_render_tokens(const qt_render *r, const tok_tokenizer *t, qt_tokens *out, qt_render_stats *st,
                     qt_err *e) {
    tok_ids full = {0}, pre = {0};
    int rc = 0;
    for (size_t i = 0; i < r->nseg && rc == 0;) {
        const qt_seg *g = &r->seg[i];
        if (g->kind == QT_SEG_ID) {
            qt_tokens_push(out, g->id, g->train);
            i++;
            continue;
        }
        if (g->kind == QT_SEG_TOKEN) {
            char name[256];
            snprintf(name, sizeof name, "%.*s", (int)g->len, r->text + g->off);
            int32_t id = tok_token_to_id(t, name);
            if (id < 0) {
                rc = qt_errf(e, "the chat template needs the token %s, which the tokenizer does not have "
                                "(choose the chat_template that matches the model)", name);
                break;
            }
            qt_tokens_push(out, id, g->train);
            i++;
            continue;
        }
        size_t j = i + 1;
        while (j < r->nseg && r->seg[j].kind == QT_SEG_TEXT) j++;
        const char *run = r->text + g->off;
        size_t run_len = r->seg[j - 1].off + r->seg[j - 1].len - g->off;
        if ((rc = encode(t, run, run_len, &full, st, e)) != 0) break;
        /* Flags per token: a boundary inside the run sits after the longest common prefix
         * of tok(run[0, boundary)) and tok(run). */
        size_t from = 0;
        for (size_t k = i + 1; k < j && rc == 0; k++) {
            if ((rc = encode(t, run, r->seg[k].off - g->off, &pre, st, e)) != 0) break;
            size_t lcp = 0;
            while (lcp < pre.n && lcp < full.n && pre.ids[lcp] == full.ids[lcp]) lcp++;
            if (lcp < pre.n && st) st->boundary_merges++;
            if (lcp < from) lcp = from;
            for (size_t x = from; x < lcp; x++) qt_tokens_push(out, full.ids[x], r->seg[k - 1].train);
            from = lcp;
        }
        for (size_t x = from; x < full.n && rc == 0; x++) qt_tokens_push(out, full.ids[x], r->seg[j - 1].train);
        i = j;
    }
    tok_ids_free(&full);
    tok_ids_free(&pre);
    return rc;
}

/* ------------------------------------------------------------------ rendering */

/* Python's str.isspace(), which Jinja's trim filter and str.strip() use. */
static bool py_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f ||
           c == 0x3000;
}

/* UTF-8 of the code point starting at s (1..4 bytes); lone bytes decode as themselves. */
static uint32_t utf8_at(const unsigned char *s, size_t n, size_t *len) {
    int k = s[0] < 0x80 ? 1 : (s[0] >> 5) == 6 ? 2 : (s[0] >> 4) == 14 ? 3 : (s[0] >> 3) == 30 ? 4 : 1;
    if ((size_t)k > n) k = 1;
    uint32_t c = k == 1 ? s[0] : s[0] & (0x7f >> k);
    for (int i = 1; i < k; i++) c = (c << 6) | (s[i] & 0x3f);
    *len = (size_t)k;
    return c;
}

/* Python str.strip(): [*start, *start + *n) narrowed in place. */
void qd_strip(const char *s, size_t *start, size_t *n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t a = *start, b = *start + *n, k;
    while (a < b && py_space(utf8_at(p + a, b - a, &k))) a += k;
    while (b > a) {
        size_t c = b - 1; /* back to the lead byte of the last code point */
        while (c > a && (p[c] & 0xc0) == 0x80 && b - c < 4) c--;
        if (!py_space(utf8_at(p + c, b - c, &k)) || c + k != b) break;
        b = c;
    }
    *start = a;
    *n = b - a;
}

static const char *role_name(qt_role r) {
    return r == QT_ROLE_SYSTEM ? "system" : r == QT_ROLE_USER ? "user" : "assistant";
}

static void render_llama3(const qt_chat_msg *m, size_t n, qt_render *out) {
    qt_render_token(out, "<|begin_of_text|>", false);
    for (size_t i = 0; i < n; i++) {
        bool train = m[i].role == QT_ROLE_ASSISTANT;
        size_t a = 0, len = m[i].len;
        qd_strip(m[i].content, &a, &len);
        qt_render_token(out, "<|start_header_id|>", false);
        qt_render_text(out, role_name(m[i].role), strlen(role_name(m[i].role)), false);
        qt_render_token(out, "<|end_header_id|>", false);
        qt_render_text(out, "\n\n", 2, false);
        qt_render_text(out, m[i].content + a, len, train);
        qt_render_token(out, "<|eot_id|>", train);
    }
}

static void render_chatml(const qt_template *tp, const qt_chat_msg *m, size_t n, qt_render *out) {
    for (size_t i = 0; i < n; i++) {
        if (i == 0 && m[0].role != QT_ROLE_SYSTEM && tp->default_system[0]) {
            qt_render_token(out, "<|im_start|>", false);
            qt_render_text(out, "system\n", 7, false);
            qt_render_text(out, tp->default_system, strlen(tp->default_system), false);
            qt_render_token(out, "<|im_end|>", false);
            qt_render_text(out, "\n", 1, false);
        }
        bool train = m[i].role == QT_ROLE_ASSISTANT;
        qt_render_token(out, "<|im_start|>", false);
        qt_render_text(out, role_name(m[i].role), strlen(role_name(m[i].role)), false);
        qt_render_text(out, "\n", 1, false);
        qt_render_text(out, m[i].content, m[i].len, train);
        qt_render_token(out, "<|im_end|>", train);
        qt_render_text(out, "\n", 1, false);
    }
}

static int render_llama2(const qt_chat_msg *m, size_t n, qt_render *out, qt_err *e) {
    const qt_chat_msg *sys = NULL;
    if (m[0].role == QT_ROLE_SYSTEM) {
        sys = &m[0];
        m++;
        n--;
    }
    char *buf = NULL;
    for (size_t i = 0; i < n; i++) {
        qt_role want = i % 2 == 0 ? QT_ROLE_USER : QT_ROLE_ASSISTANT;
        if (m[i].role != want) {
            free(buf);
            return qt_errf(e, "messages[%zu]: the llama2 template needs an optional system message first, then "
                              "user and assistant messages alternating, starting with user (got %s)",
                           i + (sys ? 1 : 0), role_name(m[i].role));
        }
        /* The official template strips '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + content as one string. */
        const char *c = m[i].content;
        size_t a = 0, len = m[i].len;
        if (i == 0 && sys) {
            size_t cap = sys->len + m[i].len + 32;
            buf = qd_xrealloc(buf, cap);
            len = (size_t)snprintf(buf, cap, "<<SYS>>\n%.*s\n<</SYS>>\n\n", (int)sys->len, sys->content);
            memcpy(buf + len, m[i].content, m[i].len);
            len += m[i].len;
            c = buf;
        }
        qd_strip(c, &a, &len);
        if (want == QT_ROLE_USER) {
            qt_render_token(out, "<s>", false);
            qt_render_text(out, "[INST] ", 7, false);
            qt_render_text(out, c + a, len, false);
            qt_render_text(out, " [/INST]", 8, false);
        } else {
            qt_render_text(out, " ", 1, true);
            qt_render_text(out, c + a, len, true);
            qt_render_text(out, " ", 1, true);
            qt_render_token(out, "</s>", true);
        }
    }
    free(buf);
    return 0;
}

int qt_chat_render(const qt_template *tp, const qt_chat_msg *msgs, size_t n, qt_render *out, qt_err *e) {
    if (n == 0) return qt_errf(e, "messages: the conversation is empty");
    switch (tp->style) {
    case QT_CHAT_LLAMA3: render_llama3(msgs, n, out); return 0;
    case QT_CHAT_CHATML: render_chatml(tp, msgs, n, out); return 0;
    case QT_CHAT_LLAMA2:
        for (size_t i = 1; i < n; i++)
            if (msgs[i].role == QT_ROLE_SYSTEM)
                return qt_errf(e, "messages[%zu]: the llama2 template takes a system message only as the first "
                                  "message", i);
        if (n == 1 && msgs[0].role == QT_ROLE_SYSTEM)
            return qt_errf(e, "messages: only a system message; the llama2 template needs a user message");
        return render_llama2(msgs, n, out, e);
    case QT_CHAT_AUTO: break;
    }
    QT_CHECK(false, "qt_chat_render: unresolved template style %d", (int)tp->style);
}

/* ------------------------------------------------------------------ choosing a template */

void qt_template_init(qt_template *tp, qt_chat_style style) {
    memset(tp, 0, sizeof *tp);
    tp->style = style;
    snprintf(tp->source, sizeof tp->source, "%s (set in the config)", qt_chat_style_name(style));
}

static bool has(const char *s, size_t n, const char *what) {
    size_t k = strlen(what);
    for (size_t i = 0; i + k <= n; i++)
        if (memcmp(s + i, what, k) == 0) return true;
    return false;
}

/* ChatML templates that add a default system message (Qwen2, SmolLM2) write it as the
 * Jinja string literal '<|im_start|>system\n...<|im_end|>\n' (the newline as the escape
 * "\n" or as the character itself); take the first such literal whose text reaches
 * <|im_end|> before the quote closes, undoing Jinja's escapes. */
static void chatml_default_system(qt_template *tp, const char *s, size_t n) {
    static const char head[] = "<|im_start|>system";
    size_t k = sizeof head - 1;
    if (!has(s, n, "!= 'system'") && !has(s, n, "!= \"system\"") && !has(s, n, "== 'system'") &&
        !has(s, n, "== \"system\""))
        return;
    for (size_t i = 1; i + k + 2 <= n; i++) {
        if (memcmp(s + i, head, k) != 0) continue;
        char quote = s[i - 1];
        size_t p = i + k;
        if (s[p] == '\n') p += 1;
        else if (s[p] == '\\' && s[p + 1] == 'n') p += 2;
        else continue;
        if (quote != '\'' && quote != '"') continue;
        size_t o = 0;
        for (; p < n && s[p] != quote && o + 1 < sizeof tp->default_system; p++) {
            if (s[p] == '<' && n - p >= 10 && memcmp(s + p, "<|im_end|>", 10) == 0) {
                tp->default_system[o] = 0;
                if (o > 0) return;
                break;
            }
            char c = s[p];
            if (c == '\\' && p + 1 < n) {
                c = s[++p];
                c = c == 'n' ? '\n' : c == 't' ? '\t' : c;
            }
            tp->default_system[o++] = c;
        }
        tp->default_system[0] = 0;
    }
}

int qt_template_detect(qt_template *tp, const char *s, size_t n, const char *where, qt_err *e) {
    memset(tp, 0, sizeof *tp);
    if (has(s, n, "<|start_header_id|>") && has(s, n, "<|end_header_id|>") && has(s, n, "<|eot_id|>")) {
        tp->style = QT_CHAT_LLAMA3;
        snprintf(tp->source, sizeof tp->source, "llama3 (recognised in %s%s)", where,
                 has(s, n, "Cutting Knowledge Date") ? "; the Llama-3.1 date/tools system header is not rendered"
                                                     : "");
        return 0;
    }
    if (has(s, n, "<|im_start|>") && has(s, n, "<|im_end|>")) {
        tp->style = QT_CHAT_CHATML;
        chatml_default_system(tp, s, n);
        snprintf(tp->source, sizeof tp->source, "chatml (recognised in %s%s%.120s%s)", where,
                 tp->default_system[0] ? "; default system message \"" : "", tp->default_system,
                 tp->default_system[0] ? "\"" : "");
        return 0;
    }
    if (has(s, n, "[INST]") && has(s, n, "[/INST]") && has(s, n, "<<SYS>>")) {
        tp->style = QT_CHAT_LLAMA2;
        snprintf(tp->source, sizeof tp->source, "llama2 (recognised in %s)", where);
        return 0;
    }
    return qt_errf(e, "%s: the chat template is none that qtrain renders (looked for Llama-3 "
                      "<|start_header_id|>, ChatML <|im_start|>, Llama-2 [INST] with <<SYS>>); set "
                      "data.chat_template to llama3, chatml or llama2 if one of them is what the model expects",
                   where);
}

int qt_template_resolve(qt_template *tp, qt_chat_style style, const char *model_dir, const tok_tokenizer *t,
                        qt_err *e) {
    if (style != QT_CHAT_AUTO) {
        qt_template_init(tp, style);
        return 0;
    }
    char path[QT_DATA_PATH_MAX + 64];
    if (model_dir && model_dir[0]) {
        snprintf(path, sizeof path, "%s/tokenizer_config.json", model_dir);
        size_t n;
        char *txt = qd_read_file(path, &n, NULL);
        if (txt) {
            cJSON *j = cJSON_ParseWithLength(txt, n);
            free(txt);
            if (!j) return qt_errf(e, "%s: not valid JSON (needed for chat_template: auto)", path);
            const cJSON *ct = cJSON_GetObjectItemCaseSensitive(j, "chat_template");
            const char *src = cJSON_IsString(ct) ? ct->valuestring : NULL;
            if (cJSON_IsArray(ct)) { /* [{"name": "default", "template": "..."}, ...] */
                const cJSON *it;
                cJSON_ArrayForEach(it, ct) {
                    const cJSON *nm = cJSON_GetObjectItemCaseSensitive(it, "name");
                    const cJSON *tx = cJSON_GetObjectItemCaseSensitive(it, "template");
                    if (cJSON_IsString(nm) && strcmp(nm->valuestring, "default") == 0 && cJSON_IsString(tx))
                        src = tx->valuestring;
                }
            }
            if (src) {
                char where[QT_DATA_PATH_MAX + 96];
                snprintf(where, sizeof where, "%s chat_template", path);
                int rc = qt_template_detect(tp, src, strlen(src), where, e);
                cJSON_Delete(j);
                return rc;
            }
            cJSON_Delete(j);
        }
        snprintf(path, sizeof path, "%s/chat_template.jinja", model_dir);
        txt = qd_read_file(path, &n, NULL);
        if (txt) {
            int rc = qt_template_detect(tp, txt, n, path, e);
            free(txt);
            return rc;
        }
    }
    /* No template in the model folder: a base model. Its tokenizer may still tell. */
    memset(tp, 0, sizeof *tp);
    if (t && tok_token_to_id(t, "<|start_header_id|>") >= 0 && tok_token_to_id(t, "<|eot_id|>") >= 0) {
        tp->style = QT_CHAT_LLAMA3;
        snprintf(tp->source, sizeof tp->source, "llama3 (no chat_template; the tokenizer has Llama-3 header tokens)");
        return 0;
    }
    if (t && tok_token_to_id(t, "<|im_start|>") >= 0 && tok_token_to_id(t, "<|im_end|>") >= 0) {
        tp->style = QT_CHAT_CHATML;
        snprintf(tp->source, sizeof tp->source, "chatml (no chat_template; the tokenizer has <|im_start|>)");
        return 0;
    }
    return qt_errf(e, "chat_template: auto cannot tell the template: %s has no tokenizer_config.json "
                      "chat_template or chat_template.jinja, and the tokenizer has neither Llama-3 header "
                      "tokens nor ChatML tokens; set data.chat_template to llama3, chatml or llama2",
                   model_dir && model_dir[0] ? model_dir : "(no model folder)");
}
