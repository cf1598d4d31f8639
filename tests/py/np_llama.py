"""Plain numpy (float64) forward of a Hugging Face Llama-family causal LM folder.

Used by gen_fixtures.py (cross-check of the transformers outputs it records) and by
convert_llama2c.py (the "HF convention" side of the conversion check). Needs only numpy and
safetensors. It follows transformers' modeling_llama / modeling_qwen2 / modeling_mistral:

  x = embed[ids]
  per layer: h = rmsnorm(x) * w_in; q,k,v = h W^T (+ b); rotate-half RoPE on q,k;
             causal softmax(q k^T / sqrt(hd)) v with GQA (query head h uses kv head
             h // (nh/nkv)); x += o_proj; h = rmsnorm(x) * w_post;
             x += down(silu(gate h) * up h)
  logits = rmsnorm(x) * w_norm @ lm_head^T   (lm_head = embed when tied)

RoPE inv_freq is computed in float32 like transformers does (default / linear / llama3), the
rest in float64, so a float32 framework should agree to ~1e-5 relative.
"""
import json
import math
import os

import numpy as np
from safetensors.numpy import load_file


class ConfigError(ValueError):
    pass


def load_config(folder):
    path = os.path.join(folder, "config.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config.json ({e})") from e


def load_weights(folder):
    """All tensors of model.safetensors (or the shards of model.safetensors.index.json)."""
    single = os.path.join(folder, "model.safetensors")
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(single):
        return dict(load_file(single))
    if os.path.exists(index):
        with open(index) as f:
            wmap = json.load(f)["weight_map"]
        out = {}
        for shard in sorted(set(wmap.values())):
            out.update(load_file(os.path.join(folder, shard)))
        return out
    raise ConfigError(f"{folder}: neither model.safetensors nor model.safetensors.index.json")


def dims(cfg):
    """The sizes the forward needs, with transformers' defaults for absent keys."""
    try:
        H = int(cfg["hidden_size"])
        nh = int(cfg["num_attention_heads"])
        d = dict(
            H=H,
            I=int(cfg["intermediate_size"]),
            L=int(cfg["num_hidden_layers"]),
            nh=nh,
            V=int(cfg["vocab_size"]),
        )
    except KeyError as e:
        raise ConfigError(f"config.json lacks {e}") from e
    d["nkv"] = int(cfg.get("num_key_value_heads") or nh)
    d["hd"] = int(cfg.get("head_dim") or H // nh)
    d["eps"] = float(cfg.get("rms_norm_eps", 1e-6))
    d["tied"] = bool(cfg.get("tie_word_embeddings", False))
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"hidden_act {act!r} not supported (only silu)")
    if nh % d["nkv"]:
        raise ConfigError(f"num_attention_heads {nh} not a multiple of num_key_value_heads {d['nkv']}")
    return d


def rope_params(cfg):
    """(rope_type, params) from either the v5 'rope_parameters' or the legacy
    'rope_theta' + 'rope_scaling' form."""
    rp = cfg.get("rope_parameters")
    if rp:
        params = dict(rp)
    else:
        params = dict(cfg.get("rope_scaling") or {})
        params.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    params.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    rtype = params.get("rope_type") or params.get("type") or "default"
    return rtype, params


def rope_inv_freq(cfg):
    """inv_freq [hd/2] as float32, transformers' _compute_{default,linear,llama3}_parameters."""
    hd = dims(cfg)["hd"]
    rtype, p = rope_params(cfg)
    theta = np.float32(p["rope_theta"])
    expo = np.arange(0, hd, 2, dtype=np.int64).astype(np.float32) / np.float32(hd)
    inv = (np.float32(1.0) / (theta ** expo)).astype(np.float32)
    if rtype == "default":
        return inv
    if rtype == "linear":
        return (inv / np.float32(p["factor"])).astype(np.float32)
    if rtype == "llama3":
        f = float(p["factor"])
        lf = float(p["low_freq_factor"])
        hf = float(p["high_freq_factor"])
        C = float(p["original_max_position_embeddings"])
        wavelen = (2 * math.pi / inv).astype(np.float32)
        low_wl, high_wl = C / lf, C / hf
        scaled = np.where(wavelen > low_wl, inv / np.float32(f), inv).astype(np.float32)
        smooth = ((C / wavelen - lf) / (hf - lf)).astype(np.float32)
        smoothed = ((1 - smooth) * scaled / np.float32(f) + smooth * scaled).astype(np.float32)
        medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise ConfigError(f"rope_type {rtype!r} not supported by np_llama")


def rmsnorm(x, w, eps):
    return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def rope_rotate_half(x, cos, sin):
    """x [..., T, hd]; cos/sin [T, hd/2]. HF: x*cos + rotate_half(x)*sin."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _lin(W, x, name):
    y = x @ W[name + ".weight"].astype(np.float64).T
    b = W.get(name + ".bias")
    return y if b is None else y + b.astype(np.float64)


def forward(cfg, W, ids):
    """ids int [B, T] -> logits float64 [B, T, V]; positions 0..T-1, no padding."""
    d = dims(cfg)
    ids = np.asarray(ids)
    B, T = ids.shape
    nh, nkv, hd, eps = d["nh"], d["nkv"], d["hd"], d["eps"]
    g = nh // nkv
    inv = rope_inv_freq(cfg).astype(np.float64)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    x = W["model.embed_tokens.weight"].astype(np.float64)[ids]
    for l in range(d["L"]):
        p = f"model.layers.{l}."
        h = rmsnorm(x, W[p + "input_layernorm.weight"].astype(np.float64), eps)
        q = _lin(W, h, p + "self_attn.q_proj").reshape(B, T, nh, hd).transpose(0, 2, 1, 3)
        k = _lin(W, h, p + "self_attn.k_proj").reshape(B, T, nkv, hd).transpose(0, 2, 1, 3)
        v = _lin(W, h, p + "self_attn.v_proj").reshape(B, T, nkv, hd).transpose(0, 2, 1, 3)
        q = rope_rotate_half(q, cos, sin)
        k = rope_rotate_half(k, cos, sin)
        k = np.repeat(k, g, axis=1)  # query head h -> kv head h // g
        v = np.repeat(v, g, axis=1)
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = (s @ v).transpose(0, 2, 1, 3).reshape(B, T, nh * hd)
        x = x + _lin(W, a, p + "self_attn.o_proj")
        h = rmsnorm(x, W[p + "post_attention_layernorm.weight"].astype(np.float64), eps)
        gt = _lin(W, h, p + "mlp.gate_proj")
        up = _lin(W, h, p + "mlp.up_proj")
        x = x + _lin(W, gt / (1 + np.exp(-gt)) * up, p + "mlp.down_proj")
    x = rmsnorm(x, W["model.norm.weight"].astype(np.float64), eps)
    head = W.get("lm_head.weight")
    if head is None or d["tied"]:
        head = W["model.embed_tokens.weight"]
    return x @ head.astype(np.float64).T


def causal_lm_loss(logits, labels, ignore_index=-100):
    """transformers' ForCausalLMLoss with num_items_in_batch=None: mean cross-entropy of
    logits[:, t] against labels[:, t+1] over positions whose shifted label != ignore_index."""
    lg = np.asarray(logits, dtype=np.float64)[:, :-1]
    tg = np.asarray(labels)[:, 1:]
    keep = tg != ignore_index
    if not keep.any():
        raise ValueError("every label is ignore_index")
    m = lg.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(lg - m).sum(-1, keepdims=True)))[..., 0]
    picked = np.take_along_axis(lg, np.where(keep, tg, 0)[..., None], -1)[..., 0]
    return float(((lse - picked) * keep).sum() / keep.sum())
