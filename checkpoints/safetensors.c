/* safetensors: strict mmap reader, sharded HF models, conversion to f32/f64/qt tensors.
 * The writer is in safetensors_write.c.
 *
 * The reader validates everything the reference implementation validates (spec section 1)
 * before handing out a single pointer, so code above never sees an offset that is out
 * of the mapping. Messages say which file, which tensor, which byte, and what to do. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoints.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; qtrain assumes a little-endian host"
#endif

#define FIX_FILE "re-download or re-export the file"

/* ------------------------------------------------------------------ dtypes */

static const struct { const char *name; int bits; bool readable; } st_dtypes[ST_NDTYPES] = {
    [ST_BOOL] = {"BOOL", 8, true},       [ST_F4] = {"F4", 4, false},
    [ST_F6_E2M3] = {"F6_E2M3", 6, false}, [ST_F6_E3M2] = {"F6_E3M2", 6, false},
    [ST_U8] = {"U8", 8, true},           [ST_I8] = {"I8", 8, true},
    [ST_F8_E5M2] = {"F8_E5M2", 8, false}, [ST_F8_E4M3] = {"F8_E4M3", 8, false},
    [ST_F8_E8M0] = {"F8_E8M0", 8, false}, [ST_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 8, false},
    [ST_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 8, false},
    [ST_I16] = {"I16", 16, true},        [ST_U16] = {"U16", 16, true},
    [ST_F16] = {"F16", 16, true},        [ST_BF16] = {"BF16", 16, true},
    [ST_I32] = {"I32", 32, true},        [ST_U32] = {"U32", 32, true},
    [ST_F32] = {"F32", 32, true},        [ST_C64] = {"C64", 64, false},
    [ST_F64] = {"F64", 64, true},        [ST_I64] = {"I64", 64, true},
    [ST_U64] = {"U64", 64, true},
};

const char *st_dtype_name(st_dtype dt) { return dt >= 0 && dt < ST_NDTYPES ? st_dtypes[dt].name : "?"; }
int st_dtype_bits(st_dtype dt) {
    QT_CHECK(dt >= 0 && dt < ST_NDTYPES, "bad st_dtype %d", (int)dt);
    return st_dtypes[dt].bits;
}
bool st_dtype_readable(st_dtype dt) { return dt >= 0 && dt < ST_NDTYPES && st_dtypes[dt].readable; }

int st_dtype_from_name(const char *s) {
    for (int i = 0; i < ST_NDTYPES; i++)
        if (strcmp(s, st_dtypes[i].name) == 0) return i;
    return -1;
}

st_dtype st_dtype_of_qt(qt_dtype dt) {
    switch (dt) {
    case QT_F32: return ST_F32;
    case QT_BF16: return ST_BF16;
    case QT_F16: return ST_F16;
    case QT_F64: return ST_F64;
    case QT_I32: return ST_I32;
    case QT_U8: return ST_U8;
    default: QT_CHECK(0, "no safetensors dtype for %s", qt_dtype_name(dt));
    }
}

/* ------------------------------------------------------------------ small helpers */

char *ck_read_file(const char *path, size_t max_bytes, size_t *len, qt_err *e) {
    uint64_t fsize;
    int fd = ck_open_file(path, &fsize, e);
    if (fd < 0) return NULL;
    if (fsize > max_bytes) {
        qt_errf(e, "%s: %llu bytes is larger than the %zu this file may have; is it the right file?",
                path, (unsigned long long)fsize, max_bytes);
        close(fd);
        return NULL;
    }
    size_t n = (size_t)fsize, got = 0;
    char *buf = malloc(n + 1);
    QT_CHECK(buf, "out of host memory (%zu bytes)", n + 1);
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            qt_errf(e, "%s: read failed at byte %zu: %s", path, got, r < 0 ? strerror(errno) : "unexpected end of file");
            free(buf);
            close(fd);
            return NULL;
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

static uint64_t le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF). Returns the offset of the
 * first bad byte, or len when all is well. */
static size_t utf8_check(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        if (c < 0x80) { i++; continue; }
        int n;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) n = 1, cp = c & 0x1F, min = 0x80;
        else if ((c & 0xF0) == 0xE0) n = 2, cp = c & 0x0F, min = 0x800;
        else if ((c & 0xF8) == 0xF0) n = 3, cp = c & 0x07, min = 0x10000;
        else return i;
        if (i + (size_t)n >= len) return i; /* sequence cut off by the end */
        for (int k = 1; k <= n; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return i;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
        i += (size_t)n + 1;
    }
    return len;
}

/* A JSON number that is a non-negative integer exactly representable in a double. */
static bool json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0) || d >= 9007199254740992.0 || d != floor(d)) return false;
    *out = (uint64_t)d;
    return true;
}

const char *st_describe(const st_tensor *t, char *buf, size_t n) {
    int k = snprintf(buf, n, "%s %s[", t->name, st_dtype_name(t->dtype));
    for (int d = 0; d < t->ndim && k > 0 && (size_t)k < n; d++)
        k += snprintf(buf + k, n - (size_t)k, "%s%lld", d ? "," : "", (long long)t->shape[d]);
    if (k > 0 && (size_t)k < n) snprintf(buf + k, n - (size_t)k, "] (%s)", t->file);
    return buf;
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}
static int cmp_tensor_offsets(const void *a, const void *b) {
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* ------------------------------------------------------------------ one file */

/* One tensor entry of the header: dtype, shape and offsets, all checked against each
 * other and against the size of the data buffer. */
static int parse_entry(st_file *f, const cJSON *item, st_tensor *t, uint64_t data_size, qt_err *e) {
    const char *P = f->path, *nm = t->name;
    if (!cJSON_IsObject(item))
        return qt_errf(e, "%s: tensor '%s': header entry is not an object {dtype, shape, data_offsets}; " FIX_FILE, P, nm);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!dt || !sh || !off)
        return qt_errf(e, "%s: tensor '%s': header entry lacks '%s'; " FIX_FILE, P, nm,
                       !dt ? "dtype" : !sh ? "shape" : "data_offsets");
    if (!cJSON_IsString(dt))
        return qt_errf(e, "%s: tensor '%s': dtype must be a string like \"BF16\"; " FIX_FILE, P, nm);
    int d = st_dtype_from_name(dt->valuestring);
    if (d < 0)
        return qt_errf(e, "%s: tensor '%s': unknown dtype '%.32s' (safetensors knows BOOL, U8, I8, I16, U16, "
                       "I32, U32, I64, U64, F16, BF16, F32, F64, C64, F8_*, F6_*, F4); " FIX_FILE, P, nm, dt->valuestring);
    t->dtype = (st_dtype)d;
    if (!cJSON_IsArray(sh))
        return qt_errf(e, "%s: tensor '%s': shape must be an array of non-negative integers; " FIX_FILE, P, nm);
    int nd = cJSON_GetArraySize(sh);
    if (nd > ST_MAX_DIMS)
        return qt_errf(e, "%s: tensor '%s': %d dimensions; qtrain reads at most %d", P, nm, nd, ST_MAX_DIMS);
    t->ndim = nd;
    uint64_t numel = 1;
    bool overflow = false;
    int i = 0;
    for (const cJSON *v = sh->child; v; v = v->next, i++) {
        uint64_t x;
        if (!json_uint(v, &x))
            return qt_errf(e, "%s: tensor '%s': shape[%d] is not a non-negative integer; " FIX_FILE, P, nm, i);
        t->shape[i] = (int64_t)x;
        overflow |= __builtin_mul_overflow(numel, x, &numel);
    }
    uint64_t bits = (uint64_t)st_dtype_bits(t->dtype), nbits = 0;
    if (overflow || numel > (uint64_t)INT64_MAX || __builtin_mul_overflow(numel, bits, &nbits))
        return qt_errf(e, "%s: tensor '%s': shape has so many elements that its size overflows; " FIX_FILE, P, nm);
    if (nbits % 8)
        return qt_errf(e, "%s: tensor '%s': %llu elements of %s (%d bits) is not a whole number of bytes; " FIX_FILE,
                       P, nm, (unsigned long long)numel, st_dtype_name(t->dtype), (int)bits);
    t->numel = (int64_t)numel;
    uint64_t b, en;
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || !json_uint(off->child, &b) ||
        !json_uint(off->child->next, &en))
        return qt_errf(e, "%s: tensor '%s': data_offsets must be [begin, end], two non-negative integers; " FIX_FILE, P, nm);
    if (en < b)
        return qt_errf(e, "%s: tensor '%s': data_offsets [%llu,%llu] have begin > end; " FIX_FILE, P, nm,
                       (unsigned long long)b, (unsigned long long)en);
    if (en - b != nbits / 8) {
        char sbuf[160];
        int k = 0;
        for (int j = 0; j < nd && k < 140; j++) k += snprintf(sbuf + k, sizeof sbuf - (size_t)k, "%s%lld", j ? "," : "", (long long)t->shape[j]);
        sbuf[k < 0 ? 0 : k] = 0;
        return qt_errf(e, "%s: tensor '%s': data_offsets [%llu,%llu] hold %llu bytes but dtype %s and shape [%s] need %llu; " FIX_FILE,
                       P, nm, (unsigned long long)b, (unsigned long long)en, (unsigned long long)(en - b),
                       st_dtype_name(t->dtype), sbuf, (unsigned long long)(nbits / 8));
    }
    if (en > data_size)
        return qt_errf(e, "%s: tensor '%s': data_offsets [%llu,%llu] go past the end of the data section (%llu bytes "
                       "starting at byte %llu): the file is truncated or its header is corrupt; " FIX_FILE,
                       P, nm, (unsigned long long)b, (unsigned long long)en, (unsigned long long)data_size,
                       (unsigned long long)(8 + f->header_len));
    t->begin = b;
    t->end = en;
    return 0;
}

static int parse_metadata(st_file *f, const cJSON *md, char **sp, qt_err *e) {
    if (cJSON_IsNull(md)) return 0;
    if (!cJSON_IsObject(md))
        return qt_errf(e, "%s: __metadata__ must be an object of string -> string; " FIX_FILE, f->path);
    for (const cJSON *v = md->child; v; v = v->next) {
        if (!cJSON_IsString(v))
            return qt_errf(e, "%s: __metadata__ key '%s' has a non-string value (the format allows strings only); " FIX_FILE,
                           f->path, v->string);
        for (int i = 0; i < f->n_meta; i++)
            if (strcmp(f->meta[i].key, v->string) == 0)
                return qt_errf(e, "%s: __metadata__ key '%s' appears twice; " FIX_FILE, f->path, v->string);
        st_kv *kv = &f->meta[f->n_meta++];
        kv->key = strcpy(*sp, v->string), *sp += strlen(v->string) + 1;
        kv->value = strcpy(*sp, v->valuestring), *sp += strlen(v->valuestring) + 1;
    }
    return 0;
}

/* Offsets sorted by (begin, end) must tile [0, data_size) exactly: no gap, no overlap,
 * nothing after the last tensor. */
static int check_layout(st_file *f, uint64_t data_size, qt_err *e) {
    int n = f->n_tensors;
    const st_tensor **ord = malloc(sizeof *ord * (size_t)(n ? n : 1));
    QT_CHECK(ord, "out of host memory");
    for (int i = 0; i < n; i++) ord[i] = &f->tensors[i];
    qsort(ord, (size_t)n, sizeof *ord, cmp_tensor_offsets);
    uint64_t pos = 0;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const st_tensor *t = ord[i];
        if (t->begin < pos)
            rc = qt_errf(e, "%s: tensor '%s' data_offsets [%llu,%llu] overlap tensor '%s' (which ends at %llu); " FIX_FILE,
                         f->path, t->name, (unsigned long long)t->begin, (unsigned long long)t->end, ord[i - 1]->name,
                         (unsigned long long)pos);
        else if (t->begin > pos)
            rc = qt_errf(e, "%s: bytes %llu..%llu of the data section belong to no tensor (gap before '%s'); " FIX_FILE,
                         f->path, (unsigned long long)pos, (unsigned long long)t->begin, t->name);
        pos = t->end;
    }
    free(ord);
    if (rc) return rc;
    if (pos != data_size)
        return qt_errf(e, "%s: %llu extra bytes after the last tensor (data section %llu bytes, tensors end at %llu); " FIX_FILE,
                       f->path, (unsigned long long)(data_size - pos), (unsigned long long)data_size,
                       (unsigned long long)pos);
    return 0;
}

static int parse_header(st_file *f, qt_err *e) {
    const char *P = f->path;
    if (f->size < 8)
        return qt_errf(e, "%s: %zu bytes is too short for a safetensors file (it starts with an 8-byte header "
                       "length): the file is truncated or not safetensors; " FIX_FILE, P, f->size);
    uint64_t N = le64(f->map);
    f->header_len = N;
    if (N > ST_MAX_HEADER)
        return qt_errf(e, "%s: header length %llu (bytes 0..7) exceeds the 100,000,000-byte limit of the format: "
                       "the file is corrupt or not safetensors; " FIX_FILE, P, (unsigned long long)N);
    if (N > f->size - 8)
        return qt_errf(e, "%s: header length %llu (bytes 0..7) runs past the end of the file (%zu bytes): the file is "
                       "truncated or not safetensors; " FIX_FILE, P, (unsigned long long)N, f->size);
    const char *h = (const char *)f->map + 8;
    size_t bad = utf8_check((const uint8_t *)h, (size_t)N);
    if (bad != N)
        return qt_errf(e, "%s: header is not valid UTF-8 (byte offset %zu); " FIX_FILE, P, 8 + bad);
    if (N == 0 || h[0] != '{')
        return qt_errf(e, "%s: header is not valid JSON: it must start with '{' at byte offset 8; " FIX_FILE, P);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(h, (size_t)N, &end, 0);
    if (!root) {
        size_t at = end && end >= h && end <= h + N ? (size_t)(end - h) : 0;
        return qt_errf(e, "%s: header is not valid JSON (error near byte offset %zu); " FIX_FILE, P, 8 + at);
    }
    for (const char *p = end; p < h + N; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(root);
            return qt_errf(e, "%s: header is not valid JSON: unexpected bytes after the object at byte offset %zu; " FIX_FILE,
                           P, (size_t)(8 + (p - h)));
        }
    int rc = 0;
    if (!cJSON_IsObject(root)) {
        rc = qt_errf(e, "%s: header is valid JSON but not an object {name: {...}}; " FIX_FILE, P);
        goto out;
    }
    /* Count entries and the bytes of every string we keep, then copy them into one block. */
    int n_entries = 0, n_md = 0;
    size_t str_bytes = 1;
    const cJSON *md = NULL;
    for (const cJSON *v = root->child; v; v = v->next) {
        str_bytes += strlen(v->string) + 1;
        if (strcmp(v->string, "__metadata__") == 0) {
            if (md) {
                rc = qt_errf(e, "%s: __metadata__ appears twice in the header; " FIX_FILE, P);
                goto out;
            }
            md = v;
            if (cJSON_IsObject(v)) /* anything else is refused by parse_metadata */
                for (const cJSON *m = v->child; m; m = m->next, n_md++)
                    str_bytes += strlen(m->string) + 1 + (cJSON_IsString(m) ? strlen(m->valuestring) + 1 : 0);
        } else {
            n_entries++;
        }
    }
    f->tensors = calloc((size_t)(n_entries ? n_entries : 1), sizeof *f->tensors);
    f->meta = calloc((size_t)(n_md ? n_md : 1), sizeof *f->meta);
    f->strings = malloc(str_bytes);
    QT_CHECK(f->tensors && f->meta && f->strings, "out of host memory");
    char *sp = f->strings;
    uint64_t data_size = f->size - 8 - N;
    if (md && (rc = parse_metadata(f, md, &sp, e))) goto out;
    for (const cJSON *v = root->child; v; v = v->next) {
        if (v == md) continue;
        st_tensor *t = &f->tensors[f->n_tensors++];
        t->name = strcpy(sp, v->string);
        sp += strlen(v->string) + 1;
        t->file = f->path;
        if ((rc = parse_entry(f, v, t, data_size, e))) goto out;
        t->data = f->map + 8 + N + t->begin;
    }
    qsort(f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_tensor_name);
    for (int i = 1; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0) {
            rc = qt_errf(e, "%s: tensor '%s' appears twice in the header; " FIX_FILE, P, f->tensors[i].name);
            goto out;
        }
    rc = check_layout(f, data_size, e);
out:
    cJSON_Delete(root);
    return rc;
}

int st_open(st_file *f, const char *path, qt_err *e) {
    memset(f, 0, sizeof *f);
    f->path = strdup(path);
    QT_CHECK(f->path, "out of host memory");
    uint64_t fsize;
    int fd = ck_open_file(path, &fsize, e);
    if (fd < 0) {
        st_close(f);
        return -1;
    }
    f->size = (size_t)fsize;
    if (f->size > 0) {
        void *p = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            qt_errf(e, "%s: cannot mmap %zu bytes: %s", path, f->size, strerror(errno));
            close(fd);
            f->size = 0;
            st_close(f);
            return -1;
        }
        f->map = p;
    }
    close(fd); /* the mapping keeps the file alive */
    if (parse_header(f, e) != 0) {
        st_close(f);
        return -1;
    }
    return 0;
}

void st_close(st_file *f) {
    if (f->map) munmap((void *)f->map, f->size);
    free(f->tensors);
    free(f->meta);
    free(f->strings);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const st_tensor *st_find(const st_file *f, const char *name) {
    st_tensor key = {.name = name};
    return bsearch(&key, f->tensors, (size_t)f->n_tensors, sizeof key, cmp_tensor_name);
}

const char *st_meta_get(const st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta[i].key, key) == 0) return f->meta[i].value;
    return NULL;
}

/* ------------------------------------------------------------------ sharded models */

static int cmp_tensor_ptr_name(const void *a, const void *b) {
    return strcmp((*(const st_tensor *const *)a)->name, (*(const st_tensor *const *)b)->name);
}
static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static bool file_exists(const char *dir, const char *name) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Why a folder has no safetensors weights, as helpfully as we can say it. */
static int no_weights_error(const char *dir, qt_err *e) {
    DIR *d = opendir(dir);
    if (!d) return qt_errf(e, "%s: cannot open the model folder: %s", dir, strerror(errno));
    char bin[256] = "";
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t L = strlen(de->d_name);
        if ((strncmp(de->d_name, "pytorch_model", 13) == 0 && L > 4 && strcmp(de->d_name + L - 4, ".bin") == 0) ||
            (L > 4 && strcmp(de->d_name + L - 4, ".pth") == 0)) {
            snprintf(bin, sizeof bin, "%s", de->d_name);
            break;
        }
    }
    closedir(d);
    if (bin[0])
        return qt_errf(e, "%s: the weights are PyTorch pickle files (%s), which qtrain does not read (pickle can run "
                       "code); convert them once to safetensors: python -c \"from transformers import "
                       "AutoModelForCausalLM as M; M.from_pretrained('%s').save_pretrained('OUT_DIR')\"",
                       dir, bin, dir);
    return qt_errf(e, "%s: no model.safetensors or model.safetensors.index.json in this folder; point to a Hugging "
                   "Face model folder (the one with config.json)", dir);
}

static int open_index(st_model *m, const char *index_path, qt_err *e) {
    char *txt = ck_read_file(index_path, (size_t)64 << 20, NULL, e);
    if (!txt) return -1;
    cJSON *root = cJSON_Parse(txt);
    free(txt);
    int rc = 0;
    char **names = NULL;
    const cJSON *wm = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!root) {
        rc = qt_errf(e, "%s: not valid JSON; " FIX_FILE, index_path);
        goto out;
    }
    if (!cJSON_IsObject(wm) || !wm->child) {
        rc = qt_errf(e, "%s: missing or empty \"weight_map\" object (tensor name -> shard file); " FIX_FILE, index_path);
        goto out;
    }
    int n = cJSON_GetArraySize(wm);
    names = malloc(sizeof *names * (size_t)n);
    QT_CHECK(names, "out of host memory");
    int i = 0;
    for (const cJSON *v = wm->child; v; v = v->next, i++) {
        const char *s = cJSON_IsString(v) ? v->valuestring : NULL;
        if (!s || !s[0] || strchr(s, '/') || strcmp(s, "..") == 0 || strcmp(s, ".") == 0) {
            rc = qt_errf(e, "%s: weight_map['%s'] must be a shard file name in the same folder; " FIX_FILE,
                         index_path, v->string);
            goto out;
        }
        names[i] = (char *)s;
    }
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    int n_files = 0;
    for (i = 0; i < n; i++)
        if (i == 0 || strcmp(names[i], names[i - 1]) != 0) names[n_files++] = names[i];
    m->files = calloc((size_t)n_files, sizeof *m->files);
    QT_CHECK(m->files, "out of host memory");
    for (i = 0; i < n_files; i++) {
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", m->dir, names[i]);
        if ((rc = st_open(&m->files[i], p, e))) {
            if (!file_exists(m->dir, names[i]))
                qt_errf(e, "%s: shard '%s' named in %s is missing; download every shard of the model", m->dir,
                        names[i], index_path);
            goto out;
        }
        m->n_files++;
    }
    /* Every entry must be where the index says. */
    for (const cJSON *v = wm->child; v; v = v->next) {
        const char **hit = bsearch(&v->valuestring, names, (size_t)n_files, sizeof *names, cmp_str);
        QT_ASSERT(hit);
        const st_file *sf = &m->files[(char **)hit - names];
        if (!st_find(sf, v->string)) {
            rc = qt_errf(e, "%s: weight_map says '%s' is in %s, but that shard has no such tensor; " FIX_FILE,
                         index_path, v->string, sf->path);
            goto out;
        }
    }
out:
    free(names);
    cJSON_Delete(root);
    return rc;
}

int st_model_open(st_model *m, const char *path, qt_err *e) {
    memset(m, 0, sizeof *m);
    struct stat sb;
    if (stat(path, &sb) != 0) return qt_errf(e, "%s: cannot open: %s", path, strerror(errno));
    const char *single = NULL, *index = NULL;
    char buf[4096];
    if (S_ISDIR(sb.st_mode)) {
        m->dir = strdup(path);
        if (file_exists(path, "model.safetensors")) single = "model.safetensors";
        else if (file_exists(path, "model.safetensors.index.json")) index = "model.safetensors.index.json";
        else {
            int rc = no_weights_error(path, e);
            st_model_close(m);
            return rc;
        }
    } else {
        snprintf(buf, sizeof buf, "%s", path);
        char *slash = strrchr(buf, '/');
        const char *base = slash ? slash + 1 : buf;
        size_t L = strlen(base);
        bool is_json = L > 5 && strcmp(base + L - 5, ".json") == 0;
        if (slash) *slash = 0;
        m->dir = strdup(slash ? (buf[0] ? buf : "/") : ".");
        if (is_json) index = path + (base - buf);
        else single = path + (base - buf);
    }
    QT_CHECK(m->dir, "out of host memory");
    int rc;
    if (single) {
        m->files = calloc(1, sizeof *m->files);
        QT_CHECK(m->files, "out of host memory");
        snprintf(buf, sizeof buf, "%s/%s", m->dir, single);
        rc = st_open(&m->files[0], buf, e);
        if (rc == 0) m->n_files = 1;
    } else {
        snprintf(buf, sizeof buf, "%s/%s", m->dir, index);
        rc = open_index(m, buf, e);
    }
    if (rc) {
        st_model_close(m);
        return -1;
    }
    for (int i = 0; i < m->n_files; i++) m->n_tensors += m->files[i].n_tensors;
    m->tensors = malloc(sizeof *m->tensors * (size_t)(m->n_tensors ? m->n_tensors : 1));
    QT_CHECK(m->tensors, "out of host memory");
    int k = 0;
    for (int i = 0; i < m->n_files; i++)
        for (int j = 0; j < m->files[i].n_tensors; j++) m->tensors[k++] = &m->files[i].tensors[j];
    qsort(m->tensors, (size_t)k, sizeof *m->tensors, cmp_tensor_ptr_name);
    for (int i = 1; i < k; i++)
        if (strcmp(m->tensors[i - 1]->name, m->tensors[i]->name) == 0) {
            qt_errf(e, "%s: tensor '%s' is in two shards (%s and %s); " FIX_FILE, m->dir, m->tensors[i]->name,
                    m->tensors[i - 1]->file, m->tensors[i]->file);
            st_model_close(m);
            return -1;
        }
    return 0;
}

void st_model_close(st_model *m) {
    for (int i = 0; i < m->n_files; i++) st_close(&m->files[i]);
    free(m->files);
    free(m->tensors);
    free(m->dir);
    memset(m, 0, sizeof *m);
}

const st_tensor *st_model_find(const st_model *m, const char *name) {
    st_tensor key = {.name = name};
    const st_tensor *kp = &key;
    const st_tensor **hit = bsearch(&kp, m->tensors, (size_t)m->n_tensors, sizeof *m->tensors, cmp_tensor_ptr_name);
    return hit ? *hit : NULL;
}

/* ------------------------------------------------------------------ conversion */

static int check_read(const st_tensor *t, int64_t first, int64_t n, qt_err *e) {
    QT_CHECK(first >= 0 && n >= 0 && first <= t->numel && n <= t->numel - first,
             "read [%lld, +%lld) out of tensor %s with %lld elements", (long long)first, (long long)n, t->name,
             (long long)t->numel);
    if (!st_dtype_readable(t->dtype))
        return qt_errf(e, "%s: tensor '%s' has dtype %s, which qtrain cannot convert; re-save the checkpoint in "
                       "bf16, f16 or f32 (e.g. with transformers: from_pretrained(..., dtype=torch.bfloat16)"
                       ".save_pretrained(OUT))", t->file, t->name, st_dtype_name(t->dtype));
    return 0;
}

/* Element loads go through memcpy: the data may sit at any address. */
#define ST_CONVERT(DST)                                                                        \
    switch (t->dtype) {                                                                        \
    case ST_BOOL: case ST_U8: for (int64_t i = 0; i < n; i++) DST[i] = p[i]; break;            \
    case ST_I8: for (int64_t i = 0; i < n; i++) DST[i] = (int8_t)p[i]; break;                  \
    case ST_I16: LOOP(int16_t, DST, v); break;                                                 \
    case ST_U16: LOOP(uint16_t, DST, v); break;                                                \
    case ST_F16: LOOP(uint16_t, DST, qt_f16_to_f32(v)); break;                                 \
    case ST_BF16: LOOP(uint16_t, DST, qt_bf16_to_f32(v)); break;                               \
    case ST_I32: LOOP(int32_t, DST, v); break;                                                 \
    case ST_U32: LOOP(uint32_t, DST, v); break;                                                \
    case ST_F32: LOOP(float, DST, v); break;                                                   \
    case ST_F64: LOOP(double, DST, v); break;                                                  \
    case ST_I64: LOOP(int64_t, DST, v); break;                                                 \
    case ST_U64: LOOP(uint64_t, DST, v); break;                                                \
    default: QT_CHECK(0, "unreadable dtype %s", st_dtype_name(t->dtype));                     \
    }
#define LOOP(T, DST, EXPR)                                                                     \
    for (int64_t i = 0; i < n; i++) {                                                          \
        T v;                                                                                   \
        memcpy(&v, p + (size_t)i * sizeof(T), sizeof(T));                                      \
        DST[i] = EXPR;                                                                         \
    }

int st_read_f32(const st_tensor *t, int64_t first, int64_t n, float *dst, qt_err *e) {
    if (check_read(t, first, n, e)) return -1;
    const uint8_t *p = t->data + (size_t)first * (size_t)(st_dtype_bits(t->dtype) / 8);
    if (t->dtype == ST_F32) {
        memcpy(dst, p, (size_t)n * 4);
        return 0;
    }
    ST_CONVERT(dst)
    return 0;
}

int st_read_f64(const st_tensor *t, int64_t first, int64_t n, double *dst, qt_err *e) {
    if (check_read(t, first, n, e)) return -1;
    const uint8_t *p = t->data + (size_t)first * (size_t)(st_dtype_bits(t->dtype) / 8);
    ST_CONVERT(dst)
    return 0;
}
#undef LOOP
#undef ST_CONVERT

static bool qt_dtype_of_st(st_dtype s, qt_dtype *q) {
    switch (s) {
    case ST_F32: *q = QT_F32; return true;
    case ST_BF16: *q = QT_BF16; return true;
    case ST_F16: *q = QT_F16; return true;
    case ST_F64: *q = QT_F64; return true;
    case ST_I32: *q = QT_I32; return true;
    case ST_U8: case ST_BOOL: *q = QT_U8; return true;
    default: return false;
    }
}

static bool is_float_st(st_dtype s) { return s == ST_F32 || s == ST_BF16 || s == ST_F16 || s == ST_F64; }

int st_to_qt(const st_tensor *t, qt_tensor *dst, qt_err *e) {
    char db[160];
    if (dst->numel != t->numel)
        return qt_errf(e, "%s: tensor '%s' has %lld elements but it is loaded into %s (%lld elements); the "
                       "checkpoint does not match the model config", t->file, t->name, (long long)t->numel,
                       qt_describe(dst, db, sizeof db), (long long)dst->numel);
    if (check_read(t, 0, t->numel, e)) return -1;
    qt_dtype sq;
    bool direct = qt_dtype_of_st(t->dtype, &sq) &&
                  (qt_dtype_is_float(dst->dtype) ? is_float_st(t->dtype) : sq == dst->dtype);
    if (direct) {
        /* qt_upload reads typed elements: give it an aligned copy when the file's isn't. */
        size_t es = (size_t)st_dtype_bits(t->dtype) / 8, nb = (size_t)t->numel * es;
        if ((uintptr_t)t->data % es == 0) {
            qt_upload(dst, t->data, sq);
        } else {
            void *tmp = malloc(nb ? nb : 1);
            QT_CHECK(tmp, "out of host memory (%zu bytes)", nb);
            memcpy(tmp, t->data, nb);
            qt_upload(dst, tmp, sq);
            free(tmp);
        }
        return 0;
    }
    if (is_float_st(t->dtype) || (!qt_dtype_is_float(dst->dtype) && dst->dtype != QT_I32))
        return qt_errf(e, "%s: tensor '%s' is %s, which cannot be loaded into %s; the checkpoint does not match "
                       "what the model expects here", t->file, t->name, st_dtype_name(t->dtype),
                       qt_describe(dst, db, sizeof db));
    /* Integers by value: into a float tensor, or range-checked into I32. */
    double *v = malloc(sizeof *v * (size_t)(t->numel ? t->numel : 1));
    QT_CHECK(v, "out of host memory");
    st_read_f64(t, 0, t->numel, v, NULL);
    int rc = 0;
    if (qt_dtype_is_float(dst->dtype)) {
        qt_upload(dst, v, QT_F64);
    } else {
        int32_t *w = malloc(sizeof *w * (size_t)(t->numel ? t->numel : 1));
        QT_CHECK(w, "out of host memory");
        for (int64_t i = 0; i < t->numel && rc == 0; i++) {
            if (v[i] < INT32_MIN || v[i] > INT32_MAX)
                rc = qt_errf(e, "%s: tensor '%s' element %lld = %.0f does not fit the int32 it is loaded into",
                             t->file, t->name, (long long)i, v[i]);
            else w[i] = (int32_t)v[i]; /* only in range: converting any other double is undefined */
        }
        if (rc == 0) qt_upload(dst, w, QT_I32);
        free(w);
    }
    free(v);
    return rc;
}
