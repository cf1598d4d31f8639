#!/usr/bin/env python3
"""Perplexity parity of `qtrain eval` with transformers on a real pretrained model.

On a machine with torch + transformers (the lent GPU machine):
  python3 tests/py/convert_llama2c.py --bin stories260K.bin --out /tmp/s260
  python3 tests/py/eval_parity.py --model /tmp/s260 --ids /tmp/s260.ids --qtrain .gpu/bin/qtrain

stories260K ships without its tokenizer, so the "text" is a token sequence: 1,025 tokens
sampled from the model itself with transformers (temperature 1, fixed seed), starting from
BOS (id 1), written as a .ids file. transformers then scores it in non-overlapping windows of
--seq-len tokens, each window's loss being HF's causal-LM loss (predicting tokens 2..T of
the window), and the NLL summed over all predicted tokens -- exactly what `qtrain eval`
does. Both perplexities are printed; the script fails when they differ by more than --tol
(relative) for any qtrain run (CPU f32, CUDA f32, CUDA bf16 with a looser tolerance).
"""
import argparse
import math
import re
import subprocess
import sys


def sample_ids(model, n, seed):
    import torch
    g = torch.Generator().manual_seed(seed)
    ids = [1]
    # A full forward per token (no KV cache): slow but with no cache-API subtleties; windows
    # of at most 256 tokens keep positions inside the model's trained range (512).
    with torch.no_grad():
        for _ in range(n - 1):
            ctx = ids[-256:]
            logits = model(input_ids=torch.tensor([ctx])).logits
            p = torch.softmax(logits[0, -1].double(), -1)
            ids.append(int(torch.multinomial(p, 1, generator=g)))
    return ids


def hf_ppl(model, ids, seq_len):
    import torch
    nll, count = 0.0, 0
    with torch.no_grad():
        for off in range(0, len(ids) - 1, seq_len):
            w = ids[off:off + seq_len]
            if len(w) < 2:
                break
            t = torch.tensor([w])
            loss = model(input_ids=t, labels=t).loss.double().item()
            nll += loss * (len(w) - 1)
            count += len(w) - 1
    return math.exp(nll / count), count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True, help="where to write the sampled token ids")
    ap.add_argument("--qtrain", required=True)
    ap.add_argument("--n", type=int, default=1025)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    import torch
    from transformers import LlamaForCausalLM
    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    ids = sample_ids(model, a.n, a.seed)
    with open(a.ids, "w") as f:
        f.write(" ".join(map(str, ids)) + "\n")
    ref, count = hf_ppl(model, ids, a.seq_len)
    print(f"transformers {torch.__version__} f32: perplexity {ref:.6f} over {count} tokens")
    ok = True
    runs = [("cpu", "f32", a.tol), ("cuda", "f32", a.tol), ("cuda", "bf16", 2e-2)]
    for dev, dt, tol in runs:
        cmd = [a.qtrain, "eval", "--model", a.model, "--data", a.ids, "--seq-len", str(a.seq_len),
               "--device", dev, "--dtype", dt]
        r = subprocess.run(cmd, capture_output=True, text=True)
        m = re.search(r"perplexity ([0-9.]+)", r.stdout)
        if r.returncode != 0 or not m:
            print(f"qtrain {dev} {dt}: FAILED rc={r.returncode}\n{r.stdout}{r.stderr}")
            ok = False
            continue
        got = float(m.group(1))
        rel = abs(got - ref) / ref
        print(f"qtrain {dev} {dt}: perplexity {got:.6f} (rel diff {rel:.2e}, tol {tol:.0e}) "
              f"{'OK' if rel <= tol else 'FAIL'}   [{r.stdout.strip()}]")
        ok &= rel <= tol
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
