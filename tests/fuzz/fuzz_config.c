/* trainer/config: the YAML run configuration with --set overrides.
 * Input: YAML text, then optionally NUL-separated overrides "key=value" (at most 8).
 * A config that loads must print (qt_config_print) and load again to the same value. */
#include "fuzz_util.h" /* first: _GNU_SOURCE */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *text = (const char *)data;
    size_t tlen = strnlen(text, size);
    /* Overrides must be NUL-terminated strings: copy them out. */
    char *rest = NULL;
    const char *ov[8];
    int n_ov = 0;
    if (tlen < size) {
        size_t rn = size - tlen - 1;
        rest = malloc(rn + 1);
        memcpy(rest, text + tlen + 1, rn);
        rest[rn] = 0;
        for (char *p = rest; p <= rest + rn && n_ov < 8; p += strlen(p) + 1) ov[n_ov++] = p;
    }
    static qt_config cfg, again; /* large (paths): keep them off the stack */
    qt_err e = {{0}};
    int rc = qt_config_load_string(&cfg, text, tlen, "fuzz.yaml", ov, n_ov, &e);
    fz_check_err(rc, &e, "qt_config_load_string");
    if (rc == 0) {
        char *buf = NULL;
        size_t blen = 0;
        FILE *f = open_memstream(&buf, &blen);
        qt_config_print(&cfg, f);
        fclose(f);
        qt_err e2 = {{0}};
        int rc2 = qt_config_load_string(&again, buf, blen, "fuzz.yaml", NULL, 0, &e2);
        fz_require(rc2 == 0, "the printed config does not load again: %s\n--- printed:\n%s", e2.msg, buf);
        fz_require(memcmp(&cfg, &again, sizeof cfg) == 0, "print/load round trip changed the config\n%s", buf);
        free(buf);
    }
    free(rest);
    return 0;
}
