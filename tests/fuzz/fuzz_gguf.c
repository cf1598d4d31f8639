/* checkpoints/gguf.c reader: gguf_open on the input (a memfd), then every key read the way
 * llama.cpp's loader would (numbers element by element, strings, typed getters) and every
 * tensor's data checked to lie inside the mapping with nbytes = numel / block * type size. */
#include "fuzz_util.h" /* first: _GNU_SOURCE */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoints/checkpoints.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    int fd = fz_memfile(data, size, path, sizeof path);
    gguf_file f;
    qt_err e = {{0}};
    int rc = gguf_open(&f, path, &e);
    fz_check_err(rc, &e, "gguf_open");
    if (rc == 0) {
        fz_require(f.alignment && !(f.alignment & (f.alignment - 1)), "alignment %u", f.alignment);
        for (int64_t i = 0; i < f.n_kv; i++) {
            const gguf_kv *kv = &f.kv[i];
            fz_require(gguf_find_kv(&f, kv->key) == kv, "key %s", kv->key);
            gguf_vtype t = kv->type == GGUF_ARR ? kv->arr_type : kv->type;
            if (t == GGUF_STR) {
                if (kv->type == GGUF_ARR)
                    for (uint64_t j = 0; j < kv->n; j++) fz_require(kv->strs[j] != NULL, "strs[%llu]", (unsigned long long)j);
                else
                    fz_require(kv->str != NULL, "str");
                continue;
            }
            uint64_t lim = kv->n < 4096 ? kv->n : 4096;
            for (uint64_t j = 0; j < lim; j++) (void)gguf_kv_num(kv, j);
            if (kv->n) (void)gguf_kv_num(kv, kv->n - 1);
        }
        uint32_t u;
        float x;
        const char *s;
        qt_err e2;
        gguf_get_u32(&f, "general.alignment", &u, &e2);
        gguf_get_str(&f, "general.architecture", &s, &e2);
        gguf_get_f32(&f, "llama.rope.freq_base", &x, &e2);
        for (int64_t i = 0; i < f.n_tensors; i++) {
            const gguf_tensor_info *t = &f.tensors[i];
            fz_require(gguf_find_tensor(&f, t->name) == t, "tensor %s", t->name);
            int64_t blck;
            uint64_t bytes;
            fz_require(gguf_type_size(t->type, &blck, &bytes) && blck > 0, "type %u", t->type);
            unsigned __int128 numel = 1;
            for (int d = 0; d < GGUF_MAX_DIMS; d++) {
                fz_require(t->ne[d] >= 0, "ne[%d] < 0", d);
                numel *= (unsigned __int128)t->ne[d];
            }
            unsigned __int128 nb = numel / (uint64_t)blck * bytes;
            fz_require(nb == t->nbytes, "tensor %s: nbytes %llu but its %s shape needs more (overflow)", t->name,
                       (unsigned long long)t->nbytes, gguf_type_name(t->type));
            fz_require(t->data >= f.map && t->data + t->nbytes <= f.map + f.size && t->data <= f.map + f.size,
                       "tensor %s outside the mapping", t->name);
            if (t->nbytes) {
                volatile uint8_t sink = t->data[0] ^ t->data[t->nbytes - 1];
                (void)sink;
            }
        }
        gguf_close(&f);
    }
    close(fd);
    return 0;
}
