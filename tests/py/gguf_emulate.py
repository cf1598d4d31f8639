"""A float64 numpy emulation of llama.cpp's llama / qwen2 graph on a GGUF's tensors (for
tests/py/gguf_interop.py and llamacpp_check.py), and the Hugging Face reference it must match.

gguf_forward reads the file with gguf-py (dequantizing every tensor) and computes logits the
way llama.cpp's graph does: token_embd rows, RMSNorm, q/k/v (+ biases), RoPE on *adjacent*
pairs (2i, 2i+1) with theta_i divided by rope_freqs[i] for arch llama (NEOX halves for qwen2),
causal GQA softmax attention, SwiGLU FFN, output (or token_embd when tied). With the rows of
attn_q / attn_k permuted as llama.cpp expects, this equals transformers' rotate-half forward
(np_llama.forward) on the unpermuted HF weights, which is what the callers check.
"""
import json
import math
import os

import numpy as np
import gguf
from safetensors.numpy import load_file

def compare(a, b):
    """rel RMSE, max abs diff, top-1 agreement of logits a vs b [B, T, V]"""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    rel = math.sqrt(((a - b) ** 2).sum() / (b ** 2).sum())
    return rel, float(np.abs(a - b).max()), float((a.argmax(-1) == b.argmax(-1)).mean())


def hf_merged(m, zero_adapter=False):
    """HF-named float64 weights W + s*B*A (biases and norms as they are)"""
    W = {k: v.astype(np.float64) for k, v in load_file(os.path.join(m["model"], "model.safetensors")).items()}
    if zero_adapter:
        return W
    ad = load_file(os.path.join(m["run"], "adapter", "adapter_model.safetensors"))
    with open(os.path.join(m["run"], "adapter", "adapter_config.json")) as f:
        ac = json.load(f)
    s = ac["lora_alpha"] / (math.sqrt(ac["r"]) if ac.get("use_rslora") else ac["r"])
    for k, a in ad.items():
        if ".lora_A." not in k:
            continue
        base = k[len("base_model.model."):].replace(".lora_A.weight", ".weight")
        b = ad[k.replace(".lora_A.", ".lora_B.")]
        W[base] = W[base] + s * (b.astype(np.float64) @ a.astype(np.float64))
    return W


def gguf_forward(path, ids, lora=None):
    """llama.cpp's graph for llama / qwen2 in float64 numpy, on the GGUF's (dequantized) tensors"""
    rd = gguf.GGUFReader(path)
    f = {k: v.contents() for k, v in rd.fields.items() if not k.startswith("tokenizer.")}
    arch = f["general.architecture"]
    T = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64).reshape(
        [int(x) for x in t.shape[::-1]]) for t in rd.tensors}
    if lora:
        lr = gguf.GGUFReader(lora)
        la = {t.name: np.asarray(t.data, np.float64).reshape([int(x) for x in t.shape[::-1]]) for t in lr.tensors}
        alpha = lr.fields["adapter.lora.alpha"].contents()
        for name in [n[:-len(".lora_a")] for n in la if n.endswith(".lora_a")]:
            A, B = la[name + ".lora_a"], la[name + ".lora_b"]  # [r, in], [out, r]
            T[name] = T[name] + alpha / A.shape[0] * (B @ A)
    nh, nkv = f[f"{arch}.attention.head_count"], f[f"{arch}.attention.head_count_kv"]
    L, eps = f[f"{arch}.block_count"], f[f"{arch}.attention.layer_norm_rms_epsilon"]
    hd, base = f[f"{arch}.rope.dimension_count"], f[f"{arch}.rope.freq_base"]
    ids = np.asarray(ids)
    Bn, Tn = ids.shape
    ff = T.get("rope_freqs.weight", np.ones(hd // 2))
    theta = np.arange(Tn)[:, None] * (base ** (-np.arange(0, hd, 2) / hd))[None, :] / ff[None, :]
    cos, sin = np.cos(theta), np.sin(theta)

    def rope(x):  # x [B, T, heads, hd]
        if arch == "qwen2":  # NEOX: pairs (i, i + hd/2)
            x0, x1 = x[..., :hd // 2], x[..., hd // 2:]
        else:  # NORM: adjacent pairs (2i, 2i+1)
            x0, x1 = x[..., 0::2], x[..., 1::2]
        c, s = cos[None, :, None, :], sin[None, :, None, :]
        y0, y1 = x0 * c - x1 * s, x0 * s + x1 * c
        out = np.empty_like(x)
        if arch == "qwen2":
            out[..., :hd // 2], out[..., hd // 2:] = y0, y1
        else:
            out[..., 0::2], out[..., 1::2] = y0, y1
        return out

    def norm(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def lin(x, name):
        y = x @ T[name + ".weight"].T
        return y + T[name + ".bias"] if name + ".bias" in T else y

    x = T["token_embd.weight"][ids]
    mask = np.triu(np.full((Tn, Tn), -np.inf), 1)
    for l in range(L):
        p = f"blk.{l}."
        h = norm(x, T[p + "attn_norm.weight"])
        q = rope(lin(h, p + "attn_q").reshape(Bn, Tn, nh, hd)).transpose(0, 2, 1, 3)
        k = rope(lin(h, p + "attn_k").reshape(Bn, Tn, nkv, hd)).transpose(0, 2, 1, 3)
        v = lin(h, p + "attn_v").reshape(Bn, Tn, nkv, hd).transpose(0, 2, 1, 3)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        x = x + lin((s @ v).transpose(0, 2, 1, 3).reshape(Bn, Tn, nh * hd), p + "attn_output")
        h = norm(x, T[p + "ffn_norm.weight"])
        g = lin(h, p + "ffn_gate")
        x = x + lin(g / (1 + np.exp(-g)) * lin(h, p + "ffn_up"), p + "ffn_down")
    x = norm(x, T["output_norm.weight"])
    return x @ T.get("output.weight", T["token_embd.weight"]).T


