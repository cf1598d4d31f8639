#!/usr/bin/env python3
"""NF4 QLoRA parity with PEFT: qtrain's LoRA gradients with an NF4 base must equal PEFT's on
the same base dequantized (nf4_peft_dump writes that model and qtrain's gradients).

  nf4_peft_dump tests/fixtures/models/llama-gqa tests/fixtures/models/llama-gqa/lora_init.safetensors /tmp/nf4 [cpu|cuda]
  python3 tests/py/nf4_peft_parity.py --fixture tests/fixtures/models/llama-gqa --dump /tmp/nf4

Needs torch, transformers and peft (the lent GPU machine). CPU float32, deterministic.
"""
import argparse
import sys

import numpy as np
from safetensors.numpy import load_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--dump", required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM
    torch.use_deterministic_algorithms(True)
    model = AutoModelForCausalLM.from_pretrained(a.dump, dtype=torch.float32, attn_implementation="eager")
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, cfg)
    init = {k: torch.from_numpy(v) for k, v in load_file(f"{a.fixture}/lora_init.safetensors").items()}
    res = set_peft_model_state_dict(model, init)
    assert not res.unexpected_keys, res.unexpected_keys
    ref = load_file(f"{a.fixture}/reference.safetensors")
    ids = torch.from_numpy(ref["input_ids"].astype(np.int64))
    labels = torch.from_numpy(ref["labels"].astype(np.int64))
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    ours = load_file(f"{a.dump}/qtrain_grads.safetensors")
    worst = 0.0
    n = 0
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        key = name.replace(".default", "")
        g = p.grad.detach().numpy()
        q = ours[key]
        rel = float(np.linalg.norm(q - g) / max(np.linalg.norm(g), 1e-30))
        worst = max(worst, rel)
        n += 1
    lrel = abs(float(ours["loss"][0]) - out.loss.item()) / abs(out.loss.item())
    ok = n == len(ours) - 1 and worst <= a.tol and lrel <= a.tol
    print(f"NF4 base: loss qtrain {float(ours['loss'][0]):.6f} vs PEFT {out.loss.item():.6f} (rel {lrel:.1e}); "
          f"{n} LoRA gradients, max rel err {worst:.2e} (tol {a.tol:.0e}): {'OK' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
