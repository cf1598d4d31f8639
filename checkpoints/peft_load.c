/* Reading a PEFT LoRA adapter folder back (shared/specs/safetensors-peft.md section 4):
 * adapter_config.json for rank, alpha and scaling, adapter_model.safetensors for A and B. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints.h"

const char *const peft_proj_names[PEFT_NPROJ] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                 "gate_proj", "up_proj", "down_proj"};

void peft_proj_dims(const hf_config *c, int p, int64_t *in, int64_t *out) {
    const int64_t H = c->hidden_size, I = c->intermediate_size, hd = c->head_dim;
    const int64_t q = (int64_t)c->num_attention_heads * hd, kv = (int64_t)c->num_key_value_heads * hd;
    const int64_t ins[PEFT_NPROJ] = {H, H, H, q, H, H, I}, outs[PEFT_NPROJ] = {q, kv, kv, H, I, I, H};
    *in = ins[p];
    *out = outs[p];
}

/* "base_model.model.model.layers.12.mlp.down_proj.lora_B.weight" -> layer 12, proj 6, B */
static bool parse_name(const char *n, int *layer, int *proj, bool *is_b) {
    const char *pre = "base_model.model.model.layers.";
    if (strncmp(n, pre, strlen(pre))) return false;
    n += strlen(pre);
    char *end;
    long l = strtol(n, &end, 10);
    if (end == n || *end != '.' || l < 0 || l >= HF_MAX_LAYERS) return false;
    for (int p = 0; p < PEFT_NPROJ; p++) {
        char want[96];
        for (int b = 0; b < 2; b++) {
            snprintf(want, sizeof want, ".%s.%s.lora_%c.weight", p <= 3 ? "self_attn" : "mlp", peft_proj_names[p],
                     b ? 'B' : 'A');
            if (!strcmp(end, want)) {
                *layer = (int)l, *proj = p, *is_b = b;
                return true;
            }
        }
    }
    return false;
}

static int read_config(peft_adapter *a, const char *path, qt_err *e) {
    char *text = ck_read_file(path, 16u << 20, NULL, e);
    if (!text) return -1;
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!j) return qt_errf(e, "%s: not valid JSON", path);
    int rc = 0;
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(j, "peft_type");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "r");
    const cJSON *al = cJSON_GetObjectItemCaseSensitive(j, "lora_alpha");
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(j, "use_rslora");
    const cJSON *dr = cJSON_GetObjectItemCaseSensitive(j, "lora_dropout");
    const cJSON *bm = cJSON_GetObjectItemCaseSensitive(j, "base_model_name_or_path");
    const cJSON *bias = cJSON_GetObjectItemCaseSensitive(j, "bias");
    const cJSON *mts = cJSON_GetObjectItemCaseSensitive(j, "modules_to_save");
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(j, "rank_pattern");
    const cJSON *ap = cJSON_GetObjectItemCaseSensitive(j, "alpha_pattern");
    if (!cJSON_IsString(pt) || strcmp(pt->valuestring, "LORA"))
        rc = qt_errf(e, "%s: peft_type must be \"LORA\" (got %s)", path, cJSON_IsString(pt) ? pt->valuestring : "none");
    else if (!cJSON_IsNumber(r) || r->valuedouble < 1 || r->valuedouble > 65536 || r->valuedouble != (int)r->valuedouble)
        rc = qt_errf(e, "%s: 'r' must be a positive integer rank", path);
    else if (!cJSON_IsNumber(al) || !isfinite(al->valuedouble))
        rc = qt_errf(e, "%s: 'lora_alpha' must be a number", path);
    else if (rs && !cJSON_IsBool(rs) && !cJSON_IsNull(rs))
        rc = qt_errf(e, "%s: 'use_rslora' must be true or false", path);
    else if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "use_dora")))
        rc = qt_errf(e, "%s: a DoRA adapter (use_dora: true) cannot be merged as plain LoRA", path);
    else if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "fan_in_fan_out")))
        rc = qt_errf(e, "%s: fan_in_fan_out: true is for GPT-2 Conv1D layers; Llama-family adapters have false", path);
    else if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "lora_bias")) ||
             (cJSON_IsString(bias) && strcmp(bias->valuestring, "none")))
        rc = qt_errf(e, "%s: trained biases (bias \"%s\" / lora_bias) are not supported; only bias \"none\"", path,
                     cJSON_IsString(bias) ? bias->valuestring : "lora_only");
    else if (mts && !cJSON_IsNull(mts) && cJSON_GetArraySize(mts) > 0)
        rc = qt_errf(e, "%s: modules_to_save (fully trained modules) is not supported by qtrain's merge", path);
    else if ((rp && cJSON_GetArraySize(rp) > 0) || (ap && cJSON_GetArraySize(ap) > 0))
        rc = qt_errf(e, "%s: per-module rank_pattern / alpha_pattern is not supported; one r and lora_alpha for "
                        "all modules", path);
    if (rc == 0) {
        a->r = (int)r->valuedouble;
        a->alpha = al->valuedouble;
        a->rslora = cJSON_IsTrue(rs);
        a->scale = a->rslora ? a->alpha / sqrt((double)a->r) : a->alpha / a->r;
        a->dropout = cJSON_IsNumber(dr) ? dr->valuedouble : 0;
        if (cJSON_IsString(bm) && bm->valuestring[0]) {
            a->base_model = strdup(bm->valuestring);
            QT_CHECK(a->base_model, "out of host memory");
        }
    }
    cJSON_Delete(j);
    return rc;
}

int peft_open(peft_adapter *a, const char *dir, qt_err *e) {
    memset(a, 0, sizeof *a);
    a->dir = strdup(dir);
    QT_CHECK(a->dir, "out of host memory");
    size_t plen = strlen(dir) + 64;
    char *path = malloc(plen);
    QT_CHECK(path, "out of host memory");
    snprintf(path, plen, "%s/adapter_config.json", dir);
    int rc = read_config(a, path, e);
    if (rc == 0) {
        snprintf(path, plen, "%s/adapter_model.safetensors", dir);
        rc = st_open(&a->st, path, e);
    }
    for (int i = 0; rc == 0 && i < a->st.n_tensors; i++) {
        int l, p;
        bool b;
        const st_tensor *t = &a->st.tensors[i];
        if (!parse_name(t->name, &l, &p, &b))
            rc = qt_errf(e, "%s: tensor %s is not a LoRA matrix of a Llama-family projection "
                            "(base_model.model.model.layers.L.self_attn.q_proj.lora_A.weight, ...)", path, t->name);
        else if (l + 1 > a->n_layers) a->n_layers = l + 1;
    }
    if (rc == 0 && a->n_layers == 0) rc = qt_errf(e, "%s: holds no LoRA tensors", path);
    if (rc == 0) {
        a->A = calloc((size_t)a->n_layers * PEFT_NPROJ, sizeof *a->A);
        a->B = calloc((size_t)a->n_layers * PEFT_NPROJ, sizeof *a->B);
        QT_CHECK(a->A && a->B, "out of host memory");
    }
    for (int i = 0; rc == 0 && i < a->st.n_tensors; i++) {
        int l, p;
        bool b;
        const st_tensor *t = &a->st.tensors[i];
        char d[256];
        parse_name(t->name, &l, &p, &b);
        if (t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16 && t->dtype != ST_F64)
            rc = qt_errf(e, "%s: %s is not a float tensor", path, st_describe(t, d, sizeof d));
        else if (t->ndim != 2 || t->shape[b ? 1 : 0] != a->r)
            rc = qt_errf(e, "%s: %s must be 2-D with %s = r = %d (adapter_config.json)", path, st_describe(t, d, sizeof d),
                         b ? "columns" : "rows", a->r);
        else (b ? a->B : a->A)[l * PEFT_NPROJ + p] = t;
    }
    for (int i = 0; rc == 0 && i < a->n_layers * PEFT_NPROJ; i++) {
        if (!a->A[i] != !a->B[i])
            rc = qt_errf(e, "%s: layer %d %s has lora_%c but no lora_%c", path, i / PEFT_NPROJ,
                         peft_proj_names[i % PEFT_NPROJ], a->A[i] ? 'A' : 'B', a->A[i] ? 'B' : 'A');
        else if (a->A[i]) a->targets |= 1u << (i % PEFT_NPROJ);
    }
    free(path);
    if (rc != 0) peft_close(a);
    return rc;
}

void peft_close(peft_adapter *a) {
    if (a->st.path) st_close(&a->st);
    free(a->A);
    free(a->B);
    free(a->base_model);
    free(a->dir);
    memset(a, 0, sizeof *a);
}

int peft_check_model(const peft_adapter *a, const hf_config *c, qt_err *e) {
    if (a->n_layers > c->num_hidden_layers)
        return qt_errf(e, "%s: the adapter has layer %d but the base model has %d layers; is it the right base?",
                       a->dir, a->n_layers - 1, c->num_hidden_layers);
    for (int i = 0; i < a->n_layers * PEFT_NPROJ; i++) {
        if (!a->A[i]) continue;
        int64_t in, out;
        peft_proj_dims(c, i % PEFT_NPROJ, &in, &out);
        char d[256];
        if (a->A[i]->shape[1] != in)
            return qt_errf(e, "%s: %s: the base model's %s takes %lld inputs; is it the right base?", a->dir,
                           st_describe(a->A[i], d, sizeof d), peft_proj_names[i % PEFT_NPROJ], (long long)in);
        if (a->B[i]->shape[0] != out)
            return qt_errf(e, "%s: %s: the base model's %s has %lld outputs; is it the right base?", a->dir,
                           st_describe(a->B[i], d, sizeof d), peft_proj_names[i % PEFT_NPROJ], (long long)out);
    }
    return 0;
}
