/* st_dump — print a safetensors file or HF model folder as JSON, or write one from raw bytes.
 * Used by tests/py/safetensors_interop.py to check our reader and writer against the
 * independent `safetensors` package.
 *
 *   st_dump PATH                    PATH: model folder, .safetensors file or index .json.
 *       Prints {"files": N, "metadata": {...first file's...}, "tensors": {NAME: {"dtype",
 *       "shape", "file", "values": [...] (null for dtypes qtrain cannot convert)}}}.
 *   st_dump --write OUT SPEC RAW    SPEC: {"metadata": {k: v}, "tensors": [{"name",
 *       "dtype", "shape", "offset"}]} with each tensor's bytes at `offset` in the file RAW.
 *
 * Errors go to stderr with exit status 1. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"

static void json_str(const char *s) {
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') printf("\\%c", *p);
        else if (*p < 0x20) printf("\\u%04x", *p);
        else putchar(*p);
    }
    putchar('"');
}

static int dump(const char *path) {
    st_model m;
    qt_err e;
    if (st_model_open(&m, path, &e) != 0) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    printf("{\"files\": %d, \"metadata\": {", m.n_files);
    for (int i = 0; i < m.files[0].n_meta; i++) {
        printf(i ? ", " : "");
        json_str(m.files[0].meta[i].key);
        printf(": ");
        json_str(m.files[0].meta[i].value);
    }
    printf("}, \"tensors\": {");
    for (int i = 0; i < m.n_tensors; i++) {
        const st_tensor *t = m.tensors[i];
        printf(i ? ",\n" : "\n");
        json_str(t->name);
        printf(": {\"dtype\": \"%s\", \"shape\": [", st_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++) printf("%s%lld", d ? ", " : "", (long long)t->shape[d]);
        const char *slash = strrchr(t->file, '/');
        printf("], \"file\": ");
        json_str(slash ? slash + 1 : t->file);
        printf(", \"values\": ");
        if (!st_dtype_readable(t->dtype)) {
            printf("null}");
            continue;
        }
        double *v = malloc(sizeof *v * (size_t)(t->numel ? t->numel : 1));
        if (!v || st_read_f64(t, 0, t->numel, v, &e) != 0) {
            fprintf(stderr, "%s\n", v ? e.msg : "out of memory");
            return 1;
        }
        putchar('[');
        for (int64_t k = 0; k < t->numel; k++) {
            if (k) printf(", ");
            if (isnan(v[k])) printf("NaN");
            else if (isinf(v[k])) printf(v[k] > 0 ? "Infinity" : "-Infinity");
            else printf("%.17g", v[k]);
        }
        printf("]}");
        free(v);
    }
    printf("}}\n");
    st_model_close(&m);
    return 0;
}

static int write_from_spec(const char *out, const char *spec_path, const char *raw_path) {
    qt_err e;
    size_t raw_len;
    char *spec_txt = ck_read_file(spec_path, (size_t)1 << 26, NULL, &e);
    char *raw = spec_txt ? ck_read_file(raw_path, (size_t)1 << 30, &raw_len, &e) : NULL;
    if (!raw) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    cJSON *spec = cJSON_Parse(spec_txt);
    const cJSON *ts = cJSON_GetObjectItem(spec, "tensors"), *md = cJSON_GetObjectItem(spec, "metadata");
    int n = cJSON_GetArraySize(ts), n_meta = cJSON_GetArraySize(md), i = 0;
    st_wtensor *w = calloc((size_t)n + 1, sizeof *w);
    st_kv *kv = calloc((size_t)n_meta + 1, sizeof *kv);
    for (const cJSON *t = ts ? ts->child : NULL; t; t = t->next, i++) {
        w[i].name = cJSON_GetObjectItem(t, "name")->valuestring;
        int dt = st_dtype_from_name(cJSON_GetObjectItem(t, "dtype")->valuestring);
        QT_CHECK(dt >= 0, "spec: bad dtype");
        w[i].dtype = (st_dtype)dt;
        const cJSON *sh = cJSON_GetObjectItem(t, "shape");
        w[i].ndim = cJSON_GetArraySize(sh);
        int d = 0;
        for (const cJSON *x = sh->child; x; x = x->next) w[i].shape[d++] = (int64_t)x->valuedouble;
        size_t off = (size_t)cJSON_GetObjectItem(t, "offset")->valuedouble;
        QT_CHECK(off <= raw_len, "spec: offset past the raw file");
        w[i].data = raw + off;
    }
    i = 0;
    for (const cJSON *m = md ? md->child : NULL; m; m = m->next, i++) kv[i] = (st_kv){m->string, m->valuestring};
    int rc = st_write(out, w, n, kv, n_meta, &e);
    if (rc) fprintf(stderr, "%s\n", e.msg);
    free(w);
    free(kv);
    cJSON_Delete(spec);
    free(raw);
    free(spec_txt);
    return rc ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc == 2) return dump(argv[1]);
    if (argc == 5 && !strcmp(argv[1], "--write")) return write_from_spec(argv[2], argv[3], argv[4]);
    fprintf(stderr, "usage: st_dump PATH | st_dump --write OUT SPEC.json RAW.bin\n");
    return 2;
}
