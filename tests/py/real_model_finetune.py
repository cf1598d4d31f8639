#!/usr/bin/env python3
"""A short QLoRA run on a real pretrained model lowers its held-out loss (ctest real_model_finetune).

The real model is ../shared/models/stories260K (llama2.c TinyStories, 260K parameters),
converted to a Hugging Face folder by tests/py/convert_llama2c.py. Its tokenizer is not in
../shared, so the data is pre-tokenized (`data.format: tokens`): rows that repeat a random
pattern of 3..8 token ids, a skill (copying from the context) the model does not have yet.
qtrain trains LoRA r=8 on all projections over an NF4 double-quant base for 40 steps on the
CPU; the held-out loss (eval split) at the end must be well below the one at step 1.

Skips (exit 77) when the shared model, numpy or safetensors is missing.
"""
import json
import os
import random
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))


def main():
    qtrain, shared = sys.argv[1], sys.argv[2]
    src = os.path.join(shared, "models", "stories260K", "stories260K.bin")
    if not os.path.exists(src):
        print(f"SKIP: {src} is not present (shared test data)")
        return 77
    try:
        import numpy  # noqa: F401
        import safetensors  # noqa: F401
    except ImportError as e:
        print(f"SKIP: {e}")
        return 77
    tmp = tempfile.mkdtemp(prefix="qt-real-")
    model = os.path.join(tmp, "stories260K")
    r = subprocess.run([sys.executable, os.path.join(here, "convert_llama2c.py"), "--bin", src, "--out", model],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stdout + r.stderr)
        return 1
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    data = os.path.join(tmp, "patterns.jsonl")
    with open(data, "w") as f:
        for _ in range(400):
            pat = [rng.randrange(3, 512) for _ in range(rng.randrange(3, 9))]
            row = (pat * 64)[: rng.randrange(48, 129)]
            f.write(json.dumps({"input_ids": [1] + row}) + "\n")
    cfg = os.path.join(tmp, "run.yaml")
    with open(cfg, "w") as f:
        f.write(f"""model: {{path: {model}, dtype: f32}}
quant: {{type: nf4, double_quant: true}}
lora: {{r: 8, alpha: 16, targets: all}}
data: {{train: {data}, format: tokens, seq_len: 128, packing: true, eval_split: 0.1}}
train: {{device: cpu, micro_batch: 8, grad_accum: 1, steps: 40, lr: 3e-3, warmup_steps: 4, eval_every: 20, log_every: 10}}
output: {{dir: {tmp}/run}}
""")
    r = subprocess.run([qtrain, cfg], capture_output=True, text=True)
    sys.stdout.write(r.stderr[-3000:])
    if r.returncode != 0:
        return 1
    evals = []
    with open(os.path.join(tmp, "run", "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            if "eval_loss" in m:
                evals.append((m["step"], m["eval_loss"]))
    first, last = evals[0][1], evals[-1][1]
    print(f"held-out loss of the real model: step {evals[0][0]} {first:.4f} -> step {evals[-1][0]} {last:.4f}")
    ok = last < 0.8 * first
    print("OK" if ok else "FAIL: the held-out loss did not fall by 20%")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
