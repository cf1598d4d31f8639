/* qtrain command line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/autograd.h"
#include "trainer/trainer.h"

int qt_cli_generate(int argc, char **argv);
int qt_cli_eval(int argc, char **argv);

static void usage(FILE *f) {
    fprintf(f, "usage: qtrain CONFIG.yaml [--set KEY=VALUE ...]\n"
               "                                    train LoRA adapters as the config says\n"
               "       qtrain --print-config CONFIG.yaml [--set KEY=VALUE ...]\n"
               "                                    print the resolved config (docs/config.md)\n"
               "       qtrain generate --model DIR --prompt TEXT [--max-new N] [--temperature T]\n"
               "                       [--top-p P] [--top-k K] [--seed S] [--device cpu|cuda] [--dtype f32|bf16|f16] [--nf4]\n"
               "       qtrain eval --model DIR --data FILE [--seq-len N] [--device ...] [--dtype ...] [--nf4]\n"
               "                                    perplexity on a text file (or a .ids file of token ids)\n"
               "       qtrain --version | --help\n"
               "       qtrain --devices             list what this build can run on\n");
}

/* CONFIG.yaml [--set KEY=VALUE | --set=KEY=VALUE ...] -> the resolved config, or the error
 * and exit 2. Then print it (--print-config) or train. */
static int config_command(int argc, char **argv, bool train) {
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
            fprintf(stderr, "qtrain: unexpected argument '%s'\n", argv[i]);
            usage(stderr);
            free(sets);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "qtrain: a CONFIG.yaml is needed\n");
        free(sets);
        return 2;
    }
    qt_config *cfg = malloc(sizeof *cfg); /* ~20 KB of paths: keep it off the stack */
    qt_err err;
    int rc = qt_config_load(cfg, path, sets, n_sets, &err);
    if (rc != 0) {
        fprintf(stderr, "%s\n", err.msg);
        rc = 2;
    } else if (!train) {
        qt_config_print(cfg, stdout);
    } else {
        qt_train_result res;
        if (qt_train(cfg, &res, &err) != 0) {
            fprintf(stderr, "qtrain: error: %s\n", err.msg);
            rc = 1;
        } else {
            fprintf(stderr, "qtrain: %lld steps, loss %.4f -> %.4f", (long long)res.steps, res.first_loss, res.last_loss);
            if (res.first_eval == res.first_eval)
                fprintf(stderr, ", eval loss %.4f -> %.4f", res.first_eval, res.last_eval);
            fprintf(stderr, ", %.0f tok/s\n", res.tokens_per_s);
        }
    }
    free(cfg);
    free(sets);
    return rc;
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
    if (!strcmp(argv[1], "--print-config")) return config_command(argc - 2, argv + 2, false);
    if (!strcmp(argv[1], "generate")) return qt_cli_generate(argc - 2, argv + 2);
    if (!strcmp(argv[1], "eval")) return qt_cli_eval(argc - 2, argv + 2);
    if (argv[1][0] == '-') {
        fprintf(stderr, "qtrain: unknown option '%s'\n", argv[1]);
        usage(stderr);
        return 2;
    }
    return config_command(argc - 1, argv + 1, true);
}
