/* qtrain command line. */
#include <stdio.h>
#include <string.h>

#include "autograd/autograd.h"

static void usage(FILE *f) {
    fprintf(f, "usage: qtrain CONFIG.yaml            train (resumes from the run folder)\n"
               "       qtrain --version | --help\n"
               "       qtrain --devices             list what this build can run on\n");
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
    fprintf(stderr, "qtrain: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
