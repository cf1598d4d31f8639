/* render_chat — render conversations with qtrain's chat templates, for
 * tests/py/chat_template_parity.py and by hand.
 *
 *   render_chat --template llama3|chatml|llama2|auto [--model-dir DIR] [--default-system TEXT]
 *               [--tokenizer TOKENIZER.json] < CONVERSATIONS.jsonl
 *
 * Reads one {"messages": [{"role", "content"}, ...]} per line and prints one JSON object per
 * line: {"text": the rendered string} plus, with --tokenizer, "ids" and "train" (the trained
 * flags), or {"error": message}. auto resolves the template from DIR as qt_data_load does. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "data/data.h"

static int usage(void) {
    fprintf(stderr, "usage: render_chat --template llama3|chatml|llama2|auto [--model-dir DIR] "
                    "[--default-system TEXT] [--tokenizer TOKENIZER.json] < conversations.jsonl\n");
    return 2;
}

static cJSON *render_line(const qt_template *tp, const tok_tokenizer *t, const char *line, qt_render *r) {
    cJSON *out = cJSON_CreateObject();
    cJSON *j = cJSON_Parse(line);
    const cJSON *msgs = j ? cJSON_GetObjectItem(j, "messages") : NULL;
    int n = cJSON_GetArraySize(msgs);
    qt_chat_msg *m = calloc((size_t)n + 1, sizeof *m);
    qt_err e;
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, msgs) {
        const char *role = cJSON_GetStringValue(cJSON_GetObjectItem(it, "role"));
        const char *c = cJSON_GetStringValue(cJSON_GetObjectItem(it, "content"));
        if (!role || !c) break;
        m[i].role = !strcmp(role, "system") ? QT_ROLE_SYSTEM : !strcmp(role, "user") ? QT_ROLE_USER : QT_ROLE_ASSISTANT;
        m[i].content = c;
        m[i++].len = strlen(c);
    }
    qt_render_clear(r);
    qt_tokens s = {0};
    if (!msgs || i != n) cJSON_AddStringToObject(out, "error", "bad input line");
    else if (qt_chat_render(tp, m, (size_t)n, r, &e) != 0) cJSON_AddStringToObject(out, "error", e.msg);
    else {
        char *text = qt_render_string(r, NULL, NULL);
        cJSON_AddStringToObject(out, "text", text);
        free(text);
        if (t && qt_render_tokens(r, t, &s, NULL, &e) != 0) cJSON_AddStringToObject(out, "error", e.msg);
        else if (t) {
            cJSON *ids = cJSON_AddArrayToObject(out, "ids"), *tr = cJSON_AddArrayToObject(out, "train");
            for (size_t k = 0; k < s.n; k++) {
                cJSON_AddItemToArray(ids, cJSON_CreateNumber(s.ids[k]));
                cJSON_AddItemToArray(tr, cJSON_CreateNumber(s.train[k]));
            }
        }
    }
    qt_tokens_free(&s);
    free(m);
    cJSON_Delete(j);
    return out;
}

int main(int argc, char **argv) {
    const char *tmpl = NULL, *dir = NULL, *sys = NULL, *tokp = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--template")) tmpl = argv[i + 1];
        else if (!strcmp(argv[i], "--model-dir")) dir = argv[i + 1];
        else if (!strcmp(argv[i], "--default-system")) sys = argv[i + 1];
        else if (!strcmp(argv[i], "--tokenizer")) tokp = argv[i + 1];
        else return usage();
    }
    qt_chat_style style;
    if (!tmpl || qt_chat_style_parse(tmpl, &style) != 0 || (argc - 1) % 2) return usage();
    qt_err e;
    tok_tokenizer *t = NULL;
    if (tokp && tok_load(&t, tokp, &e) != 0) {
        fprintf(stderr, "render_chat: %s\n", e.msg);
        return 1;
    }
    if (t) tok_set_split_special(t, true); /* as qt_data_load: text in messages stays text */
    qt_template tp;
    if (qt_template_resolve(&tp, style, dir, t, &e) != 0) {
        fprintf(stderr, "render_chat: %s\n", e.msg);
        return 1;
    }
    if (sys) snprintf(tp.default_system, sizeof tp.default_system, "%s", sys);
    fprintf(stderr, "render_chat: template %s\n", tp.source);
    qt_render r = {0};
    size_t cap = 0;
    char *line = NULL;
    ssize_t len;
    while ((len = getline(&line, &cap, stdin)) > 0) {
        if (len <= 1) continue;
        cJSON *o = render_line(&tp, t, line, &r);
        char *s = cJSON_PrintUnformatted(o);
        puts(s);
        free(s);
        cJSON_Delete(o);
    }
    free(line);
    qt_render_free(&r);
    tok_free(t);
    return 0;
}
