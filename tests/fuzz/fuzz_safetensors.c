/* checkpoints/safetensors.c: st_open on the input as a file (a memfd; st_open mmaps a
 * path), then everything a loader does with an open file: find every tensor by name, read
 * it converted to f32 and f64 (in two chunks), describe it, read the metadata. The reader
 * promises that no offset it hands out leaves the mapping: ASan would see it here. */
#include "fuzz_util.h" /* first: _GNU_SOURCE */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoints/checkpoints.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    int fd = fz_memfile(data, size, path, sizeof path);
    st_file f;
    qt_err e = {{0}};
    int rc = st_open(&f, path, &e);
    fz_check_err(rc, &e, "st_open");
    if (rc == 0) {
        fz_require(f.size == size, "size %zu != %zu", f.size, size);
        for (int i = 0; i < f.n_tensors; i++) {
            const st_tensor *t = &f.tensors[i];
            fz_require(st_find(&f, t->name) == t, "st_find('%s') does not find it", t->name);
            fz_require(t->data >= f.map + 8 + f.header_len && t->begin <= t->end &&
                           t->data + (t->end - t->begin) <= f.map + f.size,
                       "tensor '%s' lies outside the mapping", t->name);
            char buf[256];
            st_describe(t, buf, sizeof buf);
            if (!st_dtype_readable(t->dtype)) {
                qt_err e2 = {{0}};
                float x;
                fz_require(t->numel == 0 || st_read_f32(t, 0, 1, &x, &e2) == -1, "unreadable dtype was read");
                continue;
            }
            int64_t n = t->numel, h = n / 2;
            float *a = malloc(sizeof *a * (size_t)(n ? n : 1));
            double *b = malloc(sizeof *b * (size_t)(n ? n : 1));
            fz_require(a && b, "numel %lld", (long long)n);
            qt_err e2 = {{0}};
            fz_require(st_read_f32(t, 0, h, a, &e2) == 0 && st_read_f32(t, h, n - h, a + h, &e2) == 0,
                       "st_read_f32: %s", e2.msg);
            fz_require(st_read_f64(t, 0, n, b, &e2) == 0, "st_read_f64: %s", e2.msg);
            /* 64-bit integers round twice through double: compare the rest exactly */
            bool exact = t->dtype != ST_I64 && t->dtype != ST_U64;
            for (int64_t k = 0; exact && k < n; k++)
                fz_require(a[k] == (float)b[k] || (a[k] != a[k] && b[k] != b[k]),
                           "tensor '%s' element %lld: f32 %g vs f64 %g", t->name, (long long)k, a[k], b[k]);
            free(a);
            free(b);
        }
        for (int i = 0; i < f.n_meta; i++)
            fz_require(st_meta_get(&f, f.meta[i].key) != NULL, "metadata key '%s' not found", f.meta[i].key);
        st_close(&f);
    }
    close(fd);
    return 0;
}
