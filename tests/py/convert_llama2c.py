#!/usr/bin/env python3
"""Convert a llama2.c legacy checkpoint (e.g. stories260K.bin) into a Hugging Face Llama folder
(config.json + model.safetensors, float32) with numpy + safetensors only, then verify it.

The converted model is derived from shared data: write it outside the repository or into an
ignored folder, never commit it.

  python3 tests/py/convert_llama2c.py --out /tmp/stories260K-hf
  python3 tests/py/convert_llama2c.py --out DIR --check-transformers   # where torch exists

Layout facts (shared/models/README.md): 7 little-endian int32 (dim, hidden_dim, n_layers,
n_heads, n_kv_heads, vocab_size (negative = classifier not shared), seq_len), then float32
token_embedding [V,dim], rms_att [L,dim], wq [L,dim,dim], wk [L,kv,dim], wv [L,kv,dim],
wo [L,dim,dim], rms_ffn [L,dim], w1 [L,hid,dim], w2 [L,dim,hid], w3 [L,hid,dim], rms_final [dim],
two legacy RoPE tables [seq_len, head_size/2] (skipped), then wcls [V,dim] when not shared.

RoPE: llama2.c (run.c) rotates interleaved pairs (x[2j], x[2j+1]) of each head by
pos / 10000^(2j/hd); HF rotates (x[j], x[j+hd/2]) by the same angle. Since attention only
uses q.k within a head, permuting the rows of wq and wk the same way inside every head turns
one into the other (specs/gguf.md section 7, direction GGUF -> HF):
  hf_row[h*hd + t*hd/2 + j] = l2c_row[h*hd + 2j + t]   (t in {0,1}, j < hd/2)
wv, wo and the MLP are not permuted.

Verification (always run): (a) a numpy port of llama2.c run.c's forward (per position, KV
cache, interleaved RoPE) on the original arrays against (b) np_llama.forward (HF convention)
on the files just written, on random token sequences; plus a negative control (no
permutation) that must disagree. --check-transformers additionally loads the folder with
transformers' LlamaForCausalLM and compares its logits with (a).
"""
import argparse
import json
import math
import os
import sys

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import np_llama  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_BIN = os.path.join(os.path.dirname(REPO), "shared", "models", "stories260K", "stories260K.bin")
HEADER = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
RMS_EPS = 1e-5  # run.c rmsnorm: ss/size + 1e-5f
ROPE_THETA = 10000.0  # run.c: powf(10000.0f, head_dim / (float)head_size)


class FormatError(ValueError):
    pass


def read_llama2c(path):
    """-> (header dict, weights dict of float32 arrays). Raises FormatError naming the problem."""
    try:
        raw = open(path, "rb").read()
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e})") from e
    if len(raw) < 28:
        raise FormatError(f"{path}: {len(raw)} bytes, shorter than the 28-byte llama2.c header")
    hv = np.frombuffer(raw, dtype="<i4", count=7)
    p = dict(zip(HEADER, (int(v) for v in hv)))
    shared = p["vocab_size"] > 0
    V = abs(p["vocab_size"])
    dim, hid, L, nh, nkv, seq = (p[k] for k in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "seq_len"))
    if min(dim, hid, L, nh, nkv, seq, V) <= 0 or dim % nh or nh % nkv or (dim // nh) % 2:
        raise FormatError(f"{path}: implausible llama2.c header {p} (is this a legacy llama2.c .bin?)")
    hs = dim // nh
    kv = nkv * hs
    shapes = [
        ("token_embedding", (V, dim)), ("rms_att", (L, dim)), ("wq", (L, dim, dim)),
        ("wk", (L, kv, dim)), ("wv", (L, kv, dim)), ("wo", (L, dim, dim)), ("rms_ffn", (L, dim)),
        ("w1", (L, hid, dim)), ("w2", (L, dim, hid)), ("w3", (L, hid, dim)), ("rms_final", (dim,)),
        ("freq_cis_real", (seq, hs // 2)), ("freq_cis_imag", (seq, hs // 2)),
    ]
    if not shared:
        shapes.append(("wcls", (V, dim)))
    need = 28 + 4 * sum(int(np.prod(s)) for _, s in shapes)
    if len(raw) != need:
        raise FormatError(
            f"{path}: {len(raw)} bytes but header {p} implies {need} "
            "(wrong file, truncated, or a llama2.c v1/v2 export with a magic header instead of legacy)")
    w, off = {}, 28
    for name, shape in shapes:
        n = int(np.prod(shape))
        w[name] = np.frombuffer(raw, dtype="<f4", count=n, offset=off).reshape(shape).copy()
        off += 4 * n
    if shared:
        w["wcls"] = w["token_embedding"]
    p.update(shared=shared, vocab=V, head_size=hs, kv_dim=kv)
    return p, w


def permute_l2c_to_hf(wrows, n_heads):
    """Rows [n*hd, in] from interleaved-pair order to HF half-split order (see module doc)."""
    rows, cols = wrows.shape
    hd = rows // n_heads
    # view as [n, hd/2, 2, in] (l2c row = 2j + t), swap to [n, 2, hd/2, in] (hf row = t*hd/2 + j)
    return wrows.reshape(n_heads, hd // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols).copy()


def hf_config(p):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p["dim"],
        "intermediate_size": p["hidden_dim"],
        "num_hidden_layers": p["n_layers"],
        "num_attention_heads": p["n_heads"],
        "num_key_value_heads": p["n_kv_heads"],
        "head_dim": p["head_size"],
        "vocab_size": p["vocab"],
        "max_position_embeddings": p["seq_len"],
        "rms_norm_eps": RMS_EPS,
        "rope_theta": ROPE_THETA,
        "rope_scaling": None,
        "hidden_act": "silu",
        "tie_word_embeddings": p["shared"],
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def hf_tensors(p, w, permute=True):
    perm = permute_l2c_to_hf if permute else (lambda a, n: a.copy())
    t = {"model.embed_tokens.weight": w["token_embedding"], "model.norm.weight": w["rms_final"]}
    for l in range(p["n_layers"]):
        q = f"model.layers.{l}."
        t[q + "input_layernorm.weight"] = w["rms_att"][l]
        t[q + "self_attn.q_proj.weight"] = perm(w["wq"][l], p["n_heads"])
        t[q + "self_attn.k_proj.weight"] = perm(w["wk"][l], p["n_kv_heads"])
        t[q + "self_attn.v_proj.weight"] = w["wv"][l]
        t[q + "self_attn.o_proj.weight"] = w["wo"][l]
        t[q + "post_attention_layernorm.weight"] = w["rms_ffn"][l]
        t[q + "mlp.gate_proj.weight"] = w["w1"][l]
        t[q + "mlp.down_proj.weight"] = w["w2"][l]
        t[q + "mlp.up_proj.weight"] = w["w3"][l]
    if not p["shared"]:
        t["lm_head.weight"] = w["wcls"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in t.items()}


def write_folder(out, p, w):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf_config(p), f, indent=2)
        f.write("\n")
    save_file(hf_tensors(p, w), os.path.join(out, "model.safetensors"), metadata={"format": "pt"})


def llama2c_forward(p, w, tokens):
    """numpy float64 port of llama2.c run.c forward(), one position at a time -> [T, V]."""
    dim, L, nh = p["dim"], p["n_layers"], p["n_heads"]
    hs, kv_dim = p["head_size"], p["kv_dim"]
    kv_mul = nh // p["n_kv_heads"]
    f = {k: v.astype(np.float64) for k, v in w.items()}
    T = len(tokens)
    kc = np.zeros((L, T, kv_dim))
    vc = np.zeros((L, T, kv_dim))

    def rmsnorm(x, wt):
        return wt * (x / math.sqrt(np.dot(x, x) / x.size + RMS_EPS))

    out = np.zeros((T, p["vocab"]))
    for pos, tok in enumerate(tokens):
        x = f["token_embedding"][tok].copy()
        for l in range(L):
            xb = rmsnorm(x, f["rms_att"][l])
            q, k, v = f["wq"][l] @ xb, f["wk"][l] @ xb, f["wv"][l] @ xb
            for i in range(0, dim, 2):
                # float32 like run.c: 1.0f / powf(10000.0f, head_dim / (float)head_size)
                freq = np.float32(1) / np.float32(ROPE_THETA) ** (np.float32(i % hs) / np.float32(hs))
                c, s = math.cos(pos * float(freq)), math.sin(pos * float(freq))
                for vec in ((q, k) if i < kv_dim else (q,)):
                    v0, v1 = vec[i], vec[i + 1]
                    vec[i], vec[i + 1] = v0 * c - v1 * s, v0 * s + v1 * c
            kc[l, pos], vc[l, pos] = k, v
            xb = np.zeros(dim)
            for h in range(nh):
                qh = q[h * hs:(h + 1) * hs]
                o = (h // kv_mul) * hs
                att = kc[l, :pos + 1, o:o + hs] @ qh / math.sqrt(hs)
                att = np.exp(att - att.max())
                att /= att.sum()
                xb[h * hs:(h + 1) * hs] = att @ vc[l, :pos + 1, o:o + hs]
            x = x + f["wo"][l] @ xb
            xb = rmsnorm(x, f["rms_ffn"][l])
            hb, hb2 = f["w1"][l] @ xb, f["w3"][l] @ xb
            x = x + f["w2"][l] @ (hb / (1.0 + np.exp(-hb)) * hb2)
        out[pos] = f["wcls"] @ rmsnorm(x, f["rms_final"])
    return out


def token_batches(p, seed):
    rng = np.random.default_rng(seed)
    V = p["vocab"]
    return [rng.integers(0, V, size=(2, 23)), rng.integers(0, V, size=(1, 37)),
            rng.integers(0, V, size=(3, 7))]


def verify_numpy(out, p, w, seed):
    cfg = np_llama.load_config(out)
    W = np_llama.load_weights(out)
    worst = 0.0
    for ids in token_batches(p, seed):
        ref = np.stack([llama2c_forward(p, w, row) for row in ids])
        got = np_llama.forward(cfg, W, ids)
        d = float(np.abs(ref - got).max())
        worst = max(worst, d)
        print(f"  numpy llama2.c vs numpy HF  ids {tuple(ids.shape)}: max|dlogit| = {d:.3e}"
              f"  (logit range {ref.min():.2f}..{ref.max():.2f})")
    # negative control: without the Q/K permutation the HF-convention forward must disagree
    Wbad = hf_tensors(p, w, permute=False)
    ids = token_batches(p, seed)[0]
    bad = float(np.abs(np.stack([llama2c_forward(p, w, r) for r in ids]) - np_llama.forward(cfg, Wbad, ids)).max())
    print(f"  negative control (no permutation): max|dlogit| = {bad:.3e} (must be large)")
    return worst, bad


def check_transformers(out, p, w, seed, tol):
    import torch
    import transformers
    from transformers import LlamaForCausalLM

    print(f"  torch {torch.__version__}, transformers {transformers.__version__}")
    torch.manual_seed(0)
    kw = dict(attn_implementation="eager")
    try:
        model = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32, **kw)
    except TypeError:
        model = LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float32, **kw)
    model.eval()
    worst = 0.0
    for ids in token_batches(p, seed):
        ref = np.stack([llama2c_forward(p, w, row) for row in ids])
        with torch.no_grad():
            got = model(input_ids=torch.tensor(ids, dtype=torch.long)).logits.double().numpy()
        d = float(np.abs(ref - got).max())
        worst = max(worst, d)
        print(f"  numpy llama2.c vs transformers LlamaForCausalLM ids {tuple(ids.shape)}: max|dlogit| = {d:.3e}")
    ok = worst <= tol
    print(f"  transformers check: max {worst:.3e} vs tol {tol:.0e}: {'OK' if ok else 'FAIL'}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=DEFAULT_BIN, help="llama2.c legacy checkpoint (default: %(default)s)")
    ap.add_argument("--out", required=True, help="output folder (not inside the committed tree)")
    ap.add_argument("--seed", type=int, default=1234, help="seed of the random token sequences")
    ap.add_argument("--check-transformers", action="store_true",
                    help="also compare transformers' LlamaForCausalLM on the folder (needs torch)")
    ap.add_argument("--tol", type=float, default=1e-5, help="numpy check tolerance on logits")
    ap.add_argument("--tf-tol", type=float, default=5e-4, help="transformers (float32) tolerance on logits")
    a = ap.parse_args()
    try:
        p, w = read_llama2c(a.bin)
    except FormatError as e:
        sys.exit(f"convert_llama2c: {e}")
    print(f"read {a.bin}: " + ", ".join(f"{k}={p[k]}" for k in HEADER) + f", shared classifier={p['shared']}")
    write_folder(a.out, p, w)
    print(f"wrote {a.out}/config.json and model.safetensors")
    worst, bad = verify_numpy(a.out, p, w, a.seed)
    ok = worst <= a.tol and bad > 1e-2
    print(f"numpy check: max {worst:.3e} vs tol {a.tol:.0e}, control {bad:.3e}: {'OK' if ok else 'FAIL'}")
    if a.check_transformers:
        ok = check_transformers(a.out, p, w, a.seed, a.tf_tol) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
