/* PEFT LoRA adapter folder: adapter_config.json + adapter_model.safetensors, with the
 * names, shapes and dtypes PEFT 0.x loads (shared/specs/safetensors-peft.md section 4). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints.h"

/* adapter_config.json as PEFT writes it: json.dumps(indent=2, sort_keys=True). cJSON
 * keeps insertion order, so keys are added in sorted order. */
static char *adapter_config_json(const peft_adapter_info *a) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "alpha_pattern", cJSON_CreateObject());
    cJSON_AddNullToObject(o, "auto_mapping");
    if (a->base_model) cJSON_AddStringToObject(o, "base_model_name_or_path", a->base_model);
    else cJSON_AddNullToObject(o, "base_model_name_or_path");
    cJSON_AddStringToObject(o, "bias", "none");
    cJSON_AddFalseToObject(o, "fan_in_fan_out");
    cJSON_AddTrueToObject(o, "inference_mode");
    cJSON_AddTrueToObject(o, "init_lora_weights");
    cJSON_AddNullToObject(o, "layers_pattern");
    cJSON_AddNullToObject(o, "layers_to_transform");
    cJSON_AddNumberToObject(o, "lora_alpha", a->alpha);
    cJSON_AddNumberToObject(o, "lora_dropout", a->dropout);
    cJSON_AddNullToObject(o, "modules_to_save");
    cJSON_AddStringToObject(o, "peft_type", "LORA");
    cJSON_AddNumberToObject(o, "r", a->r);
    cJSON_AddItemToObject(o, "rank_pattern", cJSON_CreateObject());
    cJSON_AddNullToObject(o, "revision");
    cJSON *t = cJSON_AddArrayToObject(o, "target_modules");
    for (int i = 0; i < a->n_targets; i++) cJSON_AddItemToArray(t, cJSON_CreateString(a->targets[i]));
    cJSON_AddStringToObject(o, "task_type", "CAUSAL_LM");
    cJSON_AddFalseToObject(o, "use_dora");
    cJSON_AddBoolToObject(o, "use_rslora", a->rslora);
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}

int peft_save(const char *dir, const peft_adapter_info *a, const st_wtensor *t, int n, qt_err *e) {
    if (ck_mkdirs(dir, e) != 0) return -1;
    size_t plen = strlen(dir) + 64;
    char *path = malloc(plen);
    QT_CHECK(path, "out of host memory");
    snprintf(path, plen, "%s/adapter_model.safetensors", dir);
    int rc = st_write(path, t, n, NULL, 0, e);
    if (rc == 0) {
        char *json = adapter_config_json(a);
        QT_CHECK(json, "out of host memory");
        snprintf(path, plen, "%s/adapter_config.json", dir);
        ck_chunk c[2] = {{json, strlen(json)}, {"\n", 1}};
        rc = ck_write_atomic(path, c, 2, e);
        free(json);
    }
    free(path);
    return rc;
}
