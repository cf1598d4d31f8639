/* qtrain command line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/autograd.h"
#include "trainer/trainer.h"

int qt_cli_generate(int argc, char **argv);
int qt_cli_eval(int argc, char **argv);

static void usage(FILE *f) {
    fprintf(f, "usage: qtrain CONFIG.yaml [--set KEY=VALUE ...] [--no-resume]\n"
               "                                    train LoRA adapters as the config says; continues from\n"
               "                                    OUTPUT_DIR/checkpoints unless --no-resume (docs/checkpoints.md)\n"
               "       qtrain resume RUN_DIR [--set KEY=VALUE ...]\n"
               "                                    continue a run with the config its checkpoint holds\n"
               "       qtrain --print-config CONFIG.yaml [--set KEY=VALUE ...]\n"
               "                                    print the resolved config (docs/config.md)\n"
               "       qtrain generate --model DIR --prompt TEXT [--max-new N] [--temperature T]\n"
               "                       [--top-p P] [--top-k K] [--seed S] [--device cpu|cuda] [--dtype f32|bf16|f16] [--nf4]\n"
               "       qtrain eval --model DIR --data FILE [--seq-len N] [--device ...] [--dtype ...] [--nf4]\n"
               "                                    perplexity on a text file (or a .ids file of token ids)\n"
               "       qtrain merge RUN_DIR --type Q4_K_M|Q5_K_M|Q6_K|Q8_0|F16 -o OUT.gguf [--base nf4] [--model DIR]\n"
               "                                    merge the run's LoRA adapter into its base model as a GGUF\n"
               "       qtrain export-adapter RUN_DIR OUT_DIR [--gguf]\n"
               "                                    the adapter as a PEFT folder (and a llama.cpp GGUF LoRA)\n"
               "       qtrain --version | --help\n"
               "       qtrain --devices             list what this build can run on\n");
}

typedef enum { CMD_PRINT, CMD_TRAIN, CMD_RESUME } cmd_kind;

/* An argument as the shell takes it back: bare when safe, else in single quotes. */
static void put_quoted(char *buf, size_t n, const char *a) {
    bool plain = a[0] != 0;
    for (const char *p = a; *p; p++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+=.,/:@%", *p)) plain = false;
    size_t k = strlen(buf);
    if (plain) {
        snprintf(buf + k, n - k, " %s", a);
        return;
    }
    snprintf(buf + k, n - k, " '");
    for (const char *p = a; *p; p++) {
        k = strlen(buf);
        snprintf(buf + k, n - k, *p == '\'' ? "'\\''" : "%c", *p);
    }
    k = strlen(buf);
    snprintf(buf + k, n - k, "'");
}

/* CONFIG.yaml (or, for resume, RUN_DIR) [--set KEY=VALUE | --set=KEY=VALUE ...] [--no-resume]
 * -> the resolved config, or the error and exit 2. Then print it, or train. */
static int config_command(int argc, char **argv, cmd_kind kind) {
    const char *path = NULL;
    const char **sets = calloc((size_t)argc + 1, sizeof *sets);
    int n_sets = 0;
    qt_train_opts opts = {0};
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
        } else if (kind == CMD_TRAIN && !strcmp(argv[i], "--no-resume")) {
            opts.no_resume = true;
        } else if (kind != CMD_PRINT && !strcmp(argv[i], "--stop-after") && i + 1 < argc) {
            /* tests and debugging: stop as SIGTERM would after step K */
            char *end;
            opts.stop_after = strtoll(argv[++i], &end, 10);
            if (*end || opts.stop_after < 1) {
                fprintf(stderr, "qtrain: --stop-after needs a positive step count, got '%s'\n", argv[i]);
                free(sets);
                return 2;
            }
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
        fprintf(stderr, kind == CMD_RESUME ? "qtrain: resume needs the run folder, e.g. qtrain resume runs/tiny-cpu\n"
                                           : "qtrain: a CONFIG.yaml is needed\n");
        free(sets);
        return 2;
    }
    qt_config *cfg = malloc(sizeof *cfg); /* ~20 KB of paths: keep it off the stack */
    qt_err err;
    int rc = kind == CMD_RESUME ? qt_config_from_run(cfg, path, sets, n_sets, &err)
                                : qt_config_load(cfg, path, sets, n_sets, &err);
    if (rc != 0) {
        fprintf(stderr, kind == CMD_RESUME ? "qtrain: error: %s\n" : "%s\n", err.msg);
        rc = 2;
    } else if (kind == CMD_PRINT) {
        qt_config_print(cfg, stdout);
    } else {
        qt_train_result res;
        if (qt_train(cfg, &opts, &res, &err) != 0) {
            fprintf(stderr, "qtrain: error: %s\n", err.msg);
            rc = 1;
        } else if (res.interrupted) {
            char hint[8192] = "qtrain";
            if (kind == CMD_RESUME) put_quoted(hint, sizeof hint, "resume");
            put_quoted(hint, sizeof hint, path);
            for (int i = 0; i < n_sets; i++) {
                put_quoted(hint, sizeof hint, "--set");
                put_quoted(hint, sizeof hint, sets[i]);
            }
            fprintf(stderr, "qtrain: resume with: %s\n", hint);
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
    if (!strcmp(argv[1], "--print-config")) return config_command(argc - 2, argv + 2, CMD_PRINT);
    if (!strcmp(argv[1], "resume")) return config_command(argc - 2, argv + 2, CMD_RESUME);
    if (!strcmp(argv[1], "generate")) return qt_cli_generate(argc - 2, argv + 2);
    if (!strcmp(argv[1], "eval")) return qt_cli_eval(argc - 2, argv + 2);
    if (!strcmp(argv[1], "merge")) return qt_cli_merge(argc - 2, argv + 2);
    if (!strcmp(argv[1], "export-adapter")) return qt_cli_export_adapter(argc - 2, argv + 2);
    if (argv[1][0] == '-') {
        fprintf(stderr, "qtrain: unknown option '%s'\n", argv[1]);
        usage(stderr);
        return 2;
    }
    return config_command(argc - 1, argv + 1, CMD_TRAIN);
}
