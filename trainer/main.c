/* qtrain command line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/autograd.h"
#include "trainer/config.h"

static void usage(FILE *f) {
    fprintf(f, "usage: qtrain CONFIG.yaml            train (resumes from the run folder)\n"
               "       qtrain --print-config CONFIG.yaml [--set KEY=VALUE ...]\n"
               "                                    print the resolved config (docs/config.md)\n"
               "       qtrain --version | --help\n"
               "       qtrain --devices             list what this build can run on\n");
}

/* CONFIG.yaml [--set KEY=VALUE | --set=KEY=VALUE ...] -> stdout, or the error and exit 2. */
static int print_config(int argc, char **argv) {
    const char *path = NULL;
    const char **sets = calloc((size_t)argc + 1, sizeof *sets);
    int n_sets = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--set")) {
            if (i + 1 == argc) {
                fprintf(stderr, "qtrain: --set needs KEY=VALUE, e.g. --set lora.r=32\n");
                free(sets);
                return 2;
            }
            sets[n_sets++] = argv[++i];
        } else if (!strncmp(argv[i], "--set=", 6)) {
            sets[n_sets++] = argv[i] + 6;
        } else if (!path && argv[i][0] != '-') {
            path = argv[i];
        } else {
            fprintf(stderr, "qtrain: --print-config: unexpected argument '%s'\n", argv[i]);
            usage(stderr);
            free(sets);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "qtrain: --print-config needs a CONFIG.yaml\n");
        free(sets);
        return 2;
    }
    qt_config *cfg = malloc(sizeof *cfg); /* ~20 KB of paths: keep it off the stack */
    qt_err err;
    int rc = qt_config_load(cfg, path, sets, n_sets, &err);
    if (rc == 0) qt_config_print(cfg, stdout);
    else fprintf(stderr, "%s\n", err.msg);
    free(cfg);
    free(sets);
    return rc == 0 ? 0 : 2;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("qtrain 0.1.0\n");
        return 0;
    }
    if (!strcmp(argv[1], "--devices")) {
        char b[256];
        qt_cuda_describe(b, sizeof b);
        printf("cpu\ncuda: %s\n", b);
        return 0;
    }
    if (!strcmp(argv[1], "--print-config")) return print_config(argc - 2, argv + 2);
    fprintf(stderr, "qtrain: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
