#!/usr/bin/env python3
"""`qtrain merge` / `qtrain export-adapter` against the independent `gguf` package (llama.cpp's
gguf-py) and numpy.

For three base models -- the committed fixtures llama-gqa (Llama, GQA, PEFT's own adapter
folder) and qwen2-bias (q/k/v biases, tied embeddings, no Q/K permutation), and a numpy-made
Llama with K-quant-sized rows (H 256, I 512, bf16 weights, tied embeddings, llama3 RoPE
scaling, an rsLoRA adapter) -- this builds a run folder in a temp dir (adapter/ +
config.yaml pointing model.path at the model, with a small byte-level tokenizer.json whose
token count equals the model's vocab), merges it into GGUF files of several types, and reads
them back with gguf.GGUFReader:
  * metadata keys, types and values against config.json / the tokenizer files;
  * tensor names, shapes (ggml order) and types against the llama-quantize rule written
    out here (shared/specs/gguf.md section 6);
  * values: gguf.quants.dequantize of every tensor against W + s*B*A computed here from the
    safetensors files in float64 (with the Q/K row permutation of section 7), within each
    type's error; F32 within rounding, F16/BF16 exactly the rounded value;
  * bytes: Q8_0 / Q5_0 / Q5_1 equal gguf.quants.quantize (gguf-py's port of ggml's
    reference quantizers) of our own F32 merge, and Q4_K / Q5_K / Q6_K equal the numpy port
    of ggml's reference quantizers in kquant_ref.py;
  * an importance matrix (legacy .dat) lowers the importance-weighted error;
  * --base nf4 changes exactly the projections, by an NF4-sized amount;
  * export-adapter: the PEFT copy and the GGUF LoRA adapter keys/tensors (lora_b permuted).
Prints RMSE and sizes per type. Exit 77 (skip) when numpy / gguf / safetensors are missing.

    python3 tests/py/gguf_interop.py --qtrain build/bin/qtrain [--keep DIR]
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import gguf
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy for safetensors)
    from gguf import GGMLQuantizationType as QT
    from safetensors.numpy import load_file, save_file
except ImportError as ex:  # pragma: no cover
    print(f"SKIP: {ex.name} is not installed (pip install -r tests/requirements.txt)")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_emulate  # noqa: E402
import kquant_ref  # noqa: E402
import np_llama  # noqa: E402

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAILS = []
BYTES_CHECKED = {}  # type name -> [tensors, rows] compared byte for byte with a reference quantizer


def check(cond, msg):
    if not cond:
        FAILS.append(msg)
        print("  FAILED:", msg)


# ---------------------------------------------------------------- fixtures built here

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|pad|>"]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eot_id|>"
                 "{% endfor %}")
CORPUS = ("the quick brown fox jumps over the lazy dog. then the other fox sat there and thought "
          "about the weather, the water and the world. ") * 4


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tokenizer(folder, n_vocab):
    """Byte-level BPE in the Llama-3 layout with exactly n_vocab ids: 256 byte tokens, merges
    learnt greedily from CORPUS, 4 special added tokens at the top."""
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    words = [[b2u[b] for b in (" " + w).encode()] for w in CORPUS.split()]
    merges = []
    while len(vocab) < n_vocab - len(SPECIALS):
        counts = {}
        for w in words:
            for a, b in zip(w, w[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + 1
        (a, b), _ = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append([a, b])
        vocab[a + b] = len(vocab)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if w[i] == a and w[i + 1] == b:
                    w[i:i + 2] = [a + b]
                i += 1
    added = [{"id": n_vocab - len(SPECIALS) + i, "content": s, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True} for i, s in enumerate(SPECIALS)]
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_RE}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": SPECIALS[0], "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [], "special_tokens": {}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": merges},
    }
    with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)
    cfg = {"bos_token": SPECIALS[0], "eos_token": SPECIALS[2], "pad_token": SPECIALS[3],
           "add_bos_token": True, "chat_template": CHAT_TEMPLATE, "model_max_length": 131072}
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f)
    return {"tokens": [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])] + SPECIALS,
            "merges": [" ".join(m) for m in merges]}


def write_bf16_safetensors(path, tensors):
    """safetensors with BF16 data (round to nearest even), written by hand: the format is a
    length, a JSON header and the bytes (shared/specs/safetensors-peft.md section 1)."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype=np.float32)
        u = a.view(np.uint32).astype(np.uint64)
        h = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
        blobs.append(h.tobytes())
        header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [off, off + len(blobs[-1])]}
        off += len(blobs[-1])
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(len(hb).to_bytes(8, "little") + hb + b"".join(blobs))


def bf16_round(a):
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)


PROJ = [("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
        ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj")]


def make_kq_model(folder, rng):
    """Llama with K-quant-sized rows: H 256, I 512, 4 heads of 64 (2 KV heads), 2 layers,
    vocab 320, tied embeddings, llama3 RoPE, attention biases (permuted like q/k rows); bf16
    weights. Returns the adapter tensors."""
    H, I, L, V, nh, nkv, hd, r = 256, 512, 2, 320, 4, 2, 64, 8
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H,
           "intermediate_size": I, "num_hidden_layers": L, "num_attention_heads": nh, "num_key_value_heads": nkv,
           "head_dim": hd, "vocab_size": V, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
           "hidden_act": "silu", "tie_word_embeddings": True, "bos_token_id": V - 4, "eos_token_id": V - 2,
           "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
           "attention_bias": True, "torch_dtype": "bfloat16"}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    dims = {"q_proj": (nh * hd, H), "k_proj": (nkv * hd, H), "v_proj": (nkv * hd, H), "o_proj": (H, nh * hd),
            "gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I)}
    w = {"model.embed_tokens.weight": rng.normal(0, 0.05, (V, H)), "model.norm.weight": rng.uniform(0.5, 1.5, H)}
    ad = {}
    for l in range(L):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = rng.uniform(0.5, 1.5, H)
        w[p + "post_attention_layernorm.weight"] = rng.uniform(0.5, 1.5, H)
        for parent, proj in PROJ:
            out, inp = dims[proj]
            # heavy-ish tails: a few outlier columns like real checkpoints have
            m = rng.normal(0, 1 / math.sqrt(inp), (out, inp))
            m[:, rng.choice(inp, 3, replace=False)] *= 8
            w[f"{p}{parent}.{proj}.weight"] = m
            if parent == "self_attn":
                w[f"{p}{parent}.{proj}.bias"] = rng.normal(0, 0.2, out)
            ad[f"base_model.model.{p}{parent}.{proj}.lora_A.weight"] = rng.uniform(-1, 1, (r, inp)) / math.sqrt(inp)
            ad[f"base_model.model.{p}{parent}.{proj}.lora_B.weight"] = rng.normal(0, 0.02, (out, r))
    write_bf16_safetensors(os.path.join(folder, "model.safetensors"), w)
    return {k: v.astype(np.float32) for k, v in ad.items()}, {"r": r, "lora_alpha": 16, "use_rslora": True}


def adapter_config(r, alpha, rslora):
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
            "use_rslora": rslora, "use_dora": False, "bias": "none", "fan_in_fan_out": False,
            "target_modules": [p for _, p in PROJ], "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
            "base_model_name_or_path": None, "inference_mode": True}


def make_run(tmp, name, model_src, adapter_tensors=None, adapter_cfg=None, peft_dir=None, kq=None, rng=None,
             tokenizer=True):
    """tmp/NAME-model (the base: fixture files linked + tokenizer), tmp/NAME-run (adapter/, config.yaml)"""
    model = os.path.join(tmp, name + "-model")
    run = os.path.join(tmp, name + "-run")
    os.makedirs(model)
    os.makedirs(os.path.join(run, "adapter"))
    if kq:
        adapter_tensors, kqcfg = make_kq_model(model, rng)
        adapter_cfg = adapter_config(kqcfg["r"], kqcfg["lora_alpha"], kqcfg["use_rslora"])
    else:
        for f in ("config.json", "model.safetensors"):
            os.symlink(os.path.join(model_src, f), os.path.join(model, f))
    with open(os.path.join(model, "config.json")) as f:
        cfg = json.load(f)
    tok = write_tokenizer(model, cfg["vocab_size"]) if tokenizer else None
    if peft_dir:
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy(os.path.join(peft_dir, f), os.path.join(run, "adapter", f))
    else:
        save_file(adapter_tensors, os.path.join(run, "adapter", "adapter_model.safetensors"), {"format": "pt"})
        with open(os.path.join(run, "adapter", "adapter_config.json"), "w") as f:
            json.dump(adapter_cfg, f, indent=2)
    with open(os.path.join(run, "config.yaml"), "w") as f:
        f.write(f"model:\n  path: {model}\n  dtype: bf16\nquant:\n  type: nf4\n  double_quant: true\n"
                f"data:\n  train: {tmp}/unused.jsonl\ntrain:\n  eval_every: 0\noutput:\n  name: {name}\n")
    return {"name": name, "model": model, "run": run, "cfg": cfg, "tok": tok}


# ---------------------------------------------------------------- what the GGUF must hold

def np_config(folder):
    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f)


def hd_of(cfg):
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def permute(w, n_head):
    """llama.cpp's row order (section 7): HF row h*hd + t*hd/2 + j -> h*hd + 2j + t"""
    shp = w.shape
    return w.reshape(n_head, 2, shp[0] // n_head // 2, *shp[1:]).swapaxes(1, 2).reshape(shp)


def expected_tensors(m, nf4=None):
    """GGUF name -> float32 values in HF layout ([out, in] / [n]), merged and permuted"""
    cfg = m["cfg"]
    base = load_file(os.path.join(m["model"], "model.safetensors"))
    base = {k: (v.astype(np.float32) if v.dtype != np.uint16 else v) for k, v in base.items()}
    ad = load_file(os.path.join(m["run"], "adapter", "adapter_model.safetensors"))
    with open(os.path.join(m["run"], "adapter", "adapter_config.json")) as f:
        ac = json.load(f)
    r = ac["r"]
    s = ac["lora_alpha"] / (math.sqrt(r) if ac.get("use_rslora") else r)
    llama = cfg["model_type"] != "qwen2"
    gg = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight"}
    for parent, proj in PROJ:
        short = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
                 "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}[proj]
        gg[f"{parent}.{proj}.weight"] = short + ".weight"
        gg[f"{parent}.{proj}.bias"] = short + ".bias"
    out = {}
    for k, v in base.items():
        v = v.astype(np.float64)
        if k == "model.embed_tokens.weight":
            out["token_embd.weight"] = v
        elif k == "model.norm.weight":
            out["output_norm.weight"] = v
        elif k == "lm_head.weight":
            if not cfg.get("tie_word_embeddings"):
                out["output.weight"] = v
        else:
            l = int(k.split(".")[2])
            rest = ".".join(k.split(".")[3:])
            name = f"blk.{l}.{gg[rest]}"
            proj = rest.split(".")[1] if rest.count(".") == 2 else None
            if proj and rest.endswith("weight"):
                if nf4 is not None:
                    v = nf4[name].astype(np.float64)
                a = ad.get(f"base_model.model.{k[:-len('.weight')]}.lora_A.weight")
                if a is not None:
                    b = ad[f"base_model.model.{k[:-len('.weight')]}.lora_B.weight"]
                    v = v + s * (b.astype(np.float64) @ a.astype(np.float64))
            if llama and proj in ("q_proj", "k_proj"):
                v = permute(v, cfg["num_attention_heads"] if proj == "q_proj" else cfg.get("num_key_value_heads"))
            out[name] = v
    return {k: v.astype(np.float32) for k, v in out.items()}, s


def use_more_bits(i, n):
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


BLOCK = {QT.F32: 1, QT.F16: 1, QT.BF16: 1, QT.Q8_0: 32, QT.Q5_0: 32, QT.Q5_1: 32, QT.Q4_K: 256, QT.Q5_K: 256,
         QT.Q6_K: 256}


def expected_type(ftype, name, shape, n_layer, has_output):
    """llama-quantize's llama_tensor_get_type for dense llama/qwen2 (spec section 6)"""
    if not name.endswith("weight") or len(shape) < 2 or "_norm.weight" in name or "rope_freqs" in name:
        return QT.F32
    pure = {"F32": QT.F32, "F16": QT.F16, "BF16": QT.BF16}
    if ftype in pure:
        return pure[ftype]
    t = {"Q8_0": QT.Q8_0, "Q6_K": QT.Q6_K, "Q5_K_M": QT.Q5_K, "Q4_K_M": QT.Q4_K}[ftype]
    ne0 = shape[-1]
    if name == "output.weight" or (not has_output and name == "token_embd.weight"):
        t = QT.Q8_0 if ne0 % BLOCK[t] else (t if t == QT.Q8_0 else QT.Q6_K)
    elif ftype in ("Q4_K_M", "Q5_K_M") and name.startswith("blk.") and name.split(".", 2)[2] in (
            "attn_v.weight", "ffn_down.weight"):
        if use_more_bits(int(name.split(".")[1]), n_layer):
            t = QT.Q6_K
    if ne0 % BLOCK[t]:
        t = {QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q5_1, QT.Q6_K: QT.Q8_0}.get(t, t)
        if ne0 % BLOCK[t]:
            t = QT.F16
    return t


# relative-RMSE ceilings per type: test_kquant measures ~0.072 / 0.036 / 0.018 / 0.005 (Q4_K / Q5_K / Q6_K /
# Q8_0) on Gaussian rows; the kq model's outlier columns raise that to ~0.090 / 0.045 / 0.026 / 0.009
RMSE_MAX = {QT.Q4_K: 0.11, QT.Q5_K: 0.055, QT.Q6_K: 0.032, QT.Q8_0: 0.012, QT.Q5_0: 0.055, QT.Q5_1: 0.05,
            QT.F16: 4e-4, QT.BF16: 3e-3, QT.F32: 1e-6}


def field(rd, key):
    f = rd.fields.get(key)
    return None if f is None else f.contents()


def vtype(rd, key):
    return rd.fields[key].types[0] if key in rd.fields else None


# ---------------------------------------------------------------- checks

def check_metadata(rd, m, ftype_id, path):
    cfg, tok = m["cfg"], m["tok"]
    arch = "qwen2" if cfg["model_type"] == "qwen2" else "llama"
    V = gguf.GGUFValueType
    want = {
        "general.architecture": (V.STRING, arch), "general.file_type": (V.UINT32, ftype_id),
        f"{arch}.context_length": (V.UINT32, cfg["max_position_embeddings"]),
        f"{arch}.embedding_length": (V.UINT32, cfg["hidden_size"]),
        f"{arch}.block_count": (V.UINT32, cfg["num_hidden_layers"]),
        f"{arch}.feed_forward_length": (V.UINT32, cfg["intermediate_size"]),
        f"{arch}.attention.head_count": (V.UINT32, cfg["num_attention_heads"]),
        f"{arch}.attention.head_count_kv": (V.UINT32, cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
        f"{arch}.rope.dimension_count": (V.UINT32, hd_of(cfg)),
        f"{arch}.vocab_size": (V.UINT32, cfg["vocab_size"]),
        "tokenizer.ggml.model": (V.STRING, "gpt2"), "tokenizer.ggml.pre": (V.STRING, "llama-bpe"),
        "tokenizer.ggml.bos_token_id": (V.UINT32, cfg["vocab_size"] - 4),
        "tokenizer.ggml.eos_token_id": (V.UINT32, cfg["vocab_size"] - 2),
        "tokenizer.ggml.padding_token_id": (V.UINT32, cfg["vocab_size"] - 1),
        "tokenizer.ggml.add_bos_token": (V.BOOL, True), "tokenizer.chat_template": (V.STRING, CHAT_TEMPLATE),
    }
    for k, (t, v) in want.items():
        check(vtype(rd, k) == t and field(rd, k) == v, f"{path}: {k} = {field(rd, k)!r} ({vtype(rd, k)}), want {v!r} ({t})")
    rp = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta", rp.get("rope_theta", 10000.0))
    for k, v in ((f"{arch}.rope.freq_base", theta), (f"{arch}.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"])):
        check(vtype(rd, k) == V.FLOAT32 and abs(field(rd, k) - v) <= 1e-7 * abs(v), f"{path}: {k} = {field(rd, k)}")
    toks = field(rd, "tokenizer.ggml.tokens")
    check(toks == tok["tokens"], f"{path}: tokenizer.ggml.tokens differ ({len(toks or [])} tokens)")
    check(field(rd, "tokenizer.ggml.merges") == tok["merges"], f"{path}: merges differ")
    types = field(rd, "tokenizer.ggml.token_type")
    want_types = [1] * (cfg["vocab_size"] - 4) + [3] * 4
    check(list(types or []) == want_types and rd.fields["tokenizer.ggml.token_type"].types[-1] == V.INT32,
          f"{path}: token types")
    quantized = ftype_id not in (0, 1, 32)
    check((field(rd, "general.quantization_version") == 2) == quantized, f"{path}: general.quantization_version")
    head_dim_keys = hd_of(cfg) * cfg["num_attention_heads"] != cfg["hidden_size"]
    check((f"{arch}.attention.key_length" in rd.fields) == head_dim_keys, f"{path}: key_length presence")


def check_tensors(rd, m, exp, ftype, path, ours_f32=None):
    """names, shapes, types; values vs exp; bytes vs reference quantizers (on ours_f32)"""
    cfg = m["cfg"]
    has_output = "output.weight" in exp
    names = {t.name for t in rd.tensors}
    rope = "rope_freqs.weight" in names
    check(names == set(exp) | ({"rope_freqs.weight"} if rope else set()),
          f"{path}: tensor names differ: {sorted(names ^ set(exp))}")
    stats = {}
    for t in rd.tensors:
        if t.name == "rope_freqs.weight":
            continue
        e = exp.get(t.name)
        if e is None:
            continue
        shape = list(e.shape[::-1])
        check(list(map(int, t.shape)) == shape, f"{path}: {t.name} ne {list(t.shape)}, want {shape}")
        want_t = expected_type(ftype, t.name, e.shape, cfg["num_hidden_layers"], has_output)
        check(t.tensor_type == want_t, f"{path}: {t.name} is {t.tensor_type.name}, want {want_t.name}")
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(e.shape).astype(np.float64)
        err = got - e
        rel = math.sqrt((err ** 2).sum() / max((e.astype(np.float64) ** 2).sum(), 1e-30))
        st = stats.setdefault(t.tensor_type, [0.0, 0.0, 0])
        st[0] += (err ** 2).sum()
        st[1] += (e.astype(np.float64) ** 2).sum()
        st[2] += 1
        if t.tensor_type == QT.F16:
            check(np.array_equal(got, e.astype(np.float16).astype(np.float64)), f"{path}: {t.name} F16 not RNE of W'")
        elif t.tensor_type == QT.BF16:
            check(np.array_equal(got, bf16_round(e).astype(np.float64)), f"{path}: {t.name} BF16 not RNE of W'")
        else:
            check(rel <= RMSE_MAX[t.tensor_type], f"{path}: {t.name} {t.tensor_type.name} rel RMSE {rel:.3g}")
        if ours_f32 is not None and t.tensor_type not in (QT.F32, QT.F16, QT.BF16):
            x = ours_f32[t.name].reshape(e.shape)
            raw = np.asarray(t.data).view(np.uint8).reshape(e.shape[0] if e.ndim == 2 else 1, -1)
            if t.tensor_type in (QT.Q8_0, QT.Q5_0, QT.Q5_1):
                ref = gguf.quants.quantize(x, t.tensor_type)
            elif t.tensor_type in (QT.Q4_K, QT.Q5_K):
                ref = kquant_ref.quantize_qk(x, 15 if t.tensor_type == QT.Q4_K else 31)
            else:
                ref = kquant_ref.quantize_q6_k(x)
            ref = np.asarray(ref).view(np.uint8).reshape(raw.shape)
            nbad = int((ref != raw).any(axis=1).sum())
            bc = BYTES_CHECKED.setdefault(t.tensor_type.name, [0, 0])
            bc[0] += 1
            bc[1] += raw.shape[0]
            check(nbad == 0, f"{path}: {t.name} {t.tensor_type.name}: {nbad} of {raw.shape[0]} rows differ from "
                             f"the reference quantizer")
    if rope:
        t = next(t for t in rd.tensors if t.name == "rope_freqs.weight")
        rs = cfg.get("rope_scaling") or cfg.get("rope_parameters")
        theta = cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta"))
        d, f, lf, hf, C = hd_of(cfg), rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], \
            rs["original_max_position_embeddings"]
        want = []
        for j in range(d // 2):
            wl = 2 * math.pi * theta ** (2 * j / d)
            if wl < C / hf:
                want.append(1.0)
            elif wl > C / lf:
                want.append(f)
            else:
                sm = (C / wl - lf) / (hf - lf)
                want.append(1 / ((1 - sm) / f + sm))
        got = np.asarray(t.data, dtype=np.float64)
        check(t.tensor_type == QT.F32 and np.allclose(got, want, rtol=1e-5),
              f"{path}: rope_freqs {got[:4]}..., want {want[:4]}...")
    return stats


def qtrain(args, *a, expect=0):
    p = subprocess.run([args.qtrain, *a], capture_output=True, text=True)
    if p.returncode != expect:
        FAILS.append(f"qtrain {' '.join(a)} exited {p.returncode} (want {expect}): {p.stderr.strip()[-600:]}")
        print("  FAILED:", FAILS[-1])
    return p


def read_gguf(path):
    return gguf.GGUFReader(path)


def f32_values(rd):
    return {t.name: np.asarray(t.data, dtype=np.float32) for t in rd.tensors}


FTYPE_IDS = {"F32": 0, "F16": 1, "Q8_0": 7, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18, "BF16": 32}


def run_model(args, tmp, m, ftypes, table):
    exp, s = expected_tensors(m)
    print(f"{m['name']}: merge scale {s:g}")
    f32_path = os.path.join(tmp, f"{m['name']}-F32.gguf")
    qtrain(args, "merge", m["run"], "--type", "F32", "-o", f32_path)
    ours = f32_values(read_gguf(f32_path))
    ref_logits = None
    for ft in ["F32"] + ftypes:
        path = os.path.join(tmp, f"{m['name']}-{ft}.gguf")
        if ft != "F32":
            qtrain(args, "merge", m["run"], "--type", ft, "-o", path)
        rd = read_gguf(path)
        check_metadata(rd, m, FTYPE_IDS[ft], os.path.basename(path))
        if ft in ("F32", "F16"):
            # semantics: llama.cpp's graph (adjacent-pair RoPE, rope_freqs, NEOX for qwen2) on the
            # file must give transformers' logits of the merged HF weights
            ids = np.random.default_rng(5).integers(0, m["cfg"]["vocab_size"], (2, 19))
            if ref_logits is None:
                ref_logits = np_llama.forward(m["cfg"], gguf_emulate.hf_merged(m), ids)
            c = gguf_emulate.compare(gguf_emulate.gguf_forward(path, ids), ref_logits)
            print(f"  {os.path.basename(path)}: llama.cpp-graph emulation vs transformers-convention logits: "
                  f"rel RMSE {c[0]:.2e}, top-1 {c[2]:.3f}")
            check(c[0] <= (1e-5 if ft == "F32" else 3e-3), f"{path}: emulated llama.cpp logits rel RMSE {c[0]:.3g}")
        stats = check_tensors(rd, m, exp, ft, os.path.basename(path), ours)
        n_params = sum(v.size for v in exp.values())
        size = os.path.getsize(path)
        rm = ", ".join(f"{q.name} {math.sqrt(a / b):.4f} ({n})" for q, (a, b, n) in sorted(stats.items(), key=lambda kv: kv[0].value))
        table.append(f"  {m['name']:<10} {ft:<7} {size / 1024:8.1f} KiB {8 * size / n_params:6.2f} bits/w   rel RMSE: {rm}")
    return exp, ours


def check_imatrix(args, tmp, m, exp, table):
    """legacy .dat imatrix: int32 n; per entry int32 len, name, int32 ncall, int32 nval, float[nval]"""
    rng = np.random.default_rng(7)
    imp = {}
    blob = bytearray()
    names = [k for k, v in exp.items() if v.ndim == 2 and k.startswith("blk.")]
    blob += len(names).to_bytes(4, "little")
    for k in names:
        v = np.exp(rng.uniform(math.log(1e-2), math.log(1e2), exp[k].shape[1])).astype(np.float32)
        imp[k] = v
        ncall = 3
        blob += len(k).to_bytes(4, "little") + k.encode() + ncall.to_bytes(4, "little")
        blob += len(v).to_bytes(4, "little") + (v * ncall).astype(np.float32).tobytes()
    blob += (0).to_bytes(4, "little") + (0).to_bytes(4, "little")
    dat = os.path.join(tmp, "imatrix.dat")
    with open(dat, "wb") as f:
        f.write(blob)
    plain = read_gguf(os.path.join(tmp, f"{m['name']}-Q4_K_M.gguf"))
    path = os.path.join(tmp, f"{m['name']}-Q4_K_M-imatrix.gguf")
    qtrain(args, "merge", m["run"], "--type", "Q4_K_M", "--imatrix", dat, "-o", path)
    withim = read_gguf(path)
    tot = [0.0, 0.0]
    for t0 in plain.tensors:
        if t0.name not in imp:
            continue
        t1 = next(t for t in withim.tensors if t.name == t0.name)
        e = exp[t0.name]
        for i, t in enumerate((t0, t1)):
            d = gguf.quants.dequantize(t.data, t.tensor_type).reshape(e.shape) - e
            tot[i] += float((imp[t0.name][None, :] * d.astype(np.float64) ** 2).sum())
    print(f"  imatrix: importance-weighted squared error {tot[0]:.4g} -> {tot[1]:.4g} (x{tot[1] / tot[0]:.3f})")
    table.append(f"  {m['name']:<10} Q4_K_M + imatrix: weighted error x{tot[1] / tot[0]:.3f}")
    check(tot[1] < 0.9 * tot[0], f"imatrix did not lower the weighted error ({tot[0]:.4g} -> {tot[1]:.4g})")
    bad = os.path.join(tmp, "bad.dat")
    with open(bad, "wb") as f:
        f.write(blob[:100])
    p = qtrain(args, "merge", m["run"], "--type", "Q4_K_M", "--imatrix", bad, "-o", path + ".x", expect=1)
    check("truncated" in p.stderr or "entr" in p.stderr, f"truncated imatrix message: {p.stderr.strip()}")


def check_nf4(args, tmp, m, exp):
    path = os.path.join(tmp, f"{m['name']}-nf4-F32.gguf")
    qtrain(args, "merge", m["run"], "--type", "F32", "--base", "nf4", "-o", path)
    rd = read_gguf(path)
    check(field(rd, "qtrain.merge_base") == "nf4-dq", "qtrain.merge_base for --base nf4")
    got = f32_values(rd)
    for k, e in exp.items():
        g = got[k].reshape(e.shape)
        rel = float(np.sqrt(((g - e) ** 2).sum() / (e ** 2).sum()))
        proj = any(p in k for p in ("attn_q.", "attn_k.", "attn_v.", "attn_output.", "ffn_gate.", "ffn_up.",
                                    "ffn_down.")) and k.endswith("weight")
        if proj:
            check(0.03 < rel < 0.2, f"nf4 base: {k} differs from the original merge by {rel:.3g} (NF4-sized?)")
        else:
            check(rel == 0, f"nf4 base: {k} (not a projection) changed by {rel:.3g}")


def check_export(args, tmp, m, exp_scale):
    out = os.path.join(tmp, m["name"] + "-export")
    qtrain(args, "export-adapter", m["run"], out, "--gguf")
    src = load_file(os.path.join(m["run"], "adapter", "adapter_model.safetensors"))
    dst = load_file(os.path.join(out, "adapter_model.safetensors"))
    check(set(src) == set(dst) and all(np.array_equal(src[k].astype(np.float32), dst[k]) for k in src),
          "export-adapter: PEFT copy differs")
    with open(os.path.join(out, "adapter_config.json")) as f:
        ac = json.load(f)
    with open(os.path.join(m["run"], "adapter", "adapter_config.json")) as f:
        ac0 = json.load(f)
    check(ac["r"] == ac0["r"] and ac["lora_alpha"] == ac0["lora_alpha"] and ac["peft_type"] == "LORA" and
          bool(ac["use_rslora"]) == bool(ac0.get("use_rslora")), "export-adapter: adapter_config.json")
    path = os.path.join(out, f"{m['name']}-LoRA.gguf")
    rd = read_gguf(path)
    r = ac0["r"]
    alpha = ac0["lora_alpha"] * (math.sqrt(r) if ac0.get("use_rslora") else 1)
    arch = "qwen2" if m["cfg"]["model_type"] == "qwen2" else "llama"
    check(field(rd, "general.type") == "adapter" and field(rd, "adapter.type") == "lora" and
          field(rd, "general.architecture") == arch, "GGUF LoRA: general.type / adapter.type / architecture")
    check(vtype(rd, "adapter.lora.alpha") == gguf.GGUFValueType.FLOAT32 and
          abs(field(rd, "adapter.lora.alpha") - alpha) < 1e-4 * alpha, f"GGUF LoRA alpha {field(rd, 'adapter.lora.alpha')}")
    check(abs(alpha / r - exp_scale) < 1e-6 * exp_scale, "GGUF LoRA scale alpha/r equals the merge scale")
    cfg = m["cfg"]
    short = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    n = 0
    for k, v in src.items():
        parts = k.split(".")
        layer, proj, ab = int(parts[4]), parts[6], parts[7]
        name = f"blk.{layer}.{short[proj]}.weight.lora_{'a' if ab == 'lora_A' else 'b'}"
        t = next((t for t in rd.tensors if t.name == name), None)
        check(t is not None, f"GGUF LoRA: {name} missing")
        if t is None:
            continue
        n += 1
        want = v.astype(np.float32)
        if ab == "lora_B" and arch == "llama" and proj in ("q_proj", "k_proj"):
            want = permute(want, cfg["num_attention_heads"] if proj == "q_proj" else cfg["num_key_value_heads"])
        check(t.tensor_type == QT.F32 and list(map(int, t.shape)) == list(v.shape[::-1]) and
              np.array_equal(np.asarray(t.data).reshape(v.shape), want), f"GGUF LoRA: {name} shape/values")
    check(n == len(rd.tensors), "GGUF LoRA: extra tensors")


def check_spm_vocab(args, tmp):
    """sentencepiece-style BPE (Llama 2's 32k tokenizer.model, converted to tokenizer.json by
    transformers' LlamaConverter as tokenizer_parity.py does) -> tokenizer.ggml.model "llama":
    tokens, types and the score order against sentencepiece itself."""
    try:
        import sentencepiece as spm
        import tokenizer_parity
        shared = os.environ.get("QTRAIN_SHARED") or os.path.join(SRC, "..", "shared")
        paths = dict(tokenizer_parity.llama2_fixtures(shared, tmp))
    except (ImportError, SystemExit) as ex:
        print(f"  (sentencepiece vocabulary not checked: {ex})")
        return
    sp = spm.SentencePieceProcessor(
        model_file=os.path.join(shared, "tokenizers", "llama2-sentencepiece", "tokenizer.model"))
    V, H = sp.get_piece_size(), 64
    src = os.path.join(tmp, "spm-src")
    os.makedirs(src)
    rng = np.random.default_rng(3)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H, "intermediate_size": 64,
           "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": V,
           "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "hidden_act": "silu", "bos_token_id": 1,
           "eos_token_id": 2}
    with open(os.path.join(src, "config.json"), "w") as f:
        json.dump(cfg, f)
    w = {"model.embed_tokens.weight": rng.normal(0, 0.02, (V, H)), "lm_head.weight": rng.normal(0, 0.02, (V, H)),
         "model.norm.weight": np.ones(H)}
    for n, shp in (("input_layernorm", (H,)), ("post_attention_layernorm", (H,)), ("self_attn.q_proj", (H, H)),
                   ("self_attn.k_proj", (32, H)), ("self_attn.v_proj", (32, H)), ("self_attn.o_proj", (H, H)),
                   ("mlp.gate_proj", (64, H)), ("mlp.up_proj", (64, H)), ("mlp.down_proj", (H, 64))):
        w[f"model.layers.0.{n}.weight"] = rng.normal(0, 0.1, shp)
    save_file({k: v.astype(np.float32) for k, v in w.items()}, os.path.join(src, "model.safetensors"), {"format": "pt"})
    ad = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": rng.normal(0, 0.1, (2, H)).astype(np.float32),
          "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": rng.normal(0, 0.1, (H, 2)).astype(np.float32)}
    m = make_run(tmp, "spm", src, adapter_tensors=ad, adapter_cfg=adapter_config(2, 4, False), tokenizer=False)
    shutil.copy(paths["llama2-legacy"], os.path.join(m["model"], "tokenizer.json"))
    with open(os.path.join(m["model"], "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
                   "add_eos_token": False}, f)
    path = os.path.join(tmp, "spm-Q8_0.gguf")
    qtrain(args, "merge", m["run"], "--type", "Q8_0", "-o", path)
    rd = read_gguf(path)
    check(field(rd, "tokenizer.ggml.model") == "llama", "spm: tokenizer.ggml.model")
    check(field(rd, "tokenizer.ggml.tokens") == [sp.id_to_piece(i) for i in range(V)], "spm: tokens differ from sentencepiece")
    want_t = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i) else 6 if sp.is_byte(i) else 1
              for i in range(V)]
    check(list(field(rd, "tokenizer.ggml.token_type")) == want_t, "spm: token types differ from the converter's rule")
    for k, v in (("bos_token_id", 1), ("eos_token_id", 2), ("unknown_token_id", 0)):
        check(field(rd, "tokenizer.ggml." + k) == v, f"spm: {k} = {field(rd, 'tokenizer.ggml.' + k)}")
    check(field(rd, "tokenizer.ggml.add_space_prefix") is True and field(rd, "tokenizer.ggml.add_bos_token") is True,
          "spm: add_space_prefix / add_bos_token")
    check("tokenizer.ggml.merges" not in rd.fields, "spm: no merges for the llama tokenizer model")
    # llama.cpp merges the adjacent pair whose result scores highest: our scores must order the
    # normal pieces that can be such a result (2+ characters; its initial symbols are single
    # characters) as sentencepiece's scores do (ties in sentencepiece allow anything)
    ours = np.asarray(field(rd, "tokenizer.ggml.scores"), np.float64)
    normal = [i for i in range(V) if want_t[i] == 1 and len(sp.id_to_piece(i)) >= 2]
    order = sorted(normal, key=lambda i: (-sp.get_score(i), i))
    inv = sum(1 for a, b in zip(order, order[1:]) if sp.get_score(a) > sp.get_score(b) and not ours[a] > ours[b])
    print(f"  sentencepiece vocab: {V} tokens, {len(normal)} mergeable; score-order inversions vs sentencepiece: {inv}")
    check(inv == 0, f"spm: {inv} adjacent pairs ordered differently from sentencepiece's scores")


def check_errors(args, tmp, models):
    p = qtrain(args, "merge", models[0]["run"], "--type", "Q3_K", "-o", os.path.join(tmp, "x.gguf"), expect=2)
    check("Q4_K_M" in p.stderr, f"bad --type message: {p.stderr.strip()}")
    p = qtrain(args, "merge", tmp, "--type", "Q8_0", "-o", os.path.join(tmp, "x.gguf"), expect=1)
    check("adapter_config.json" in p.stderr, f"no adapter message: {p.stderr.strip()}")
    # the kq adapter on the llama-gqa model: wrong base
    p = qtrain(args, "merge", models[2]["run"], "--model", models[0]["model"], "--type", "Q8_0",
               "-o", os.path.join(tmp, "x.gguf"), expect=1)
    check("right base" in p.stderr, f"wrong base message: {p.stderr.strip()}")
    check(not os.path.exists(os.path.join(tmp, "x.gguf")), "a failed merge left a file behind")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qtrain", required=True)
    ap.add_argument("--keep", help="write the files here and keep them")
    args = ap.parse_args()
    tmp = args.keep or tempfile.mkdtemp(prefix="qt_gguf_")
    os.makedirs(tmp, exist_ok=True)
    fx = os.path.join(SRC, "tests", "fixtures", "models")
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    try:
        models = [
            make_run(tmp, "llama-gqa", os.path.join(fx, "llama-gqa"), peft_dir=os.path.join(fx, "llama-gqa", "peft_adapter")),
            make_run(tmp, "qwen2-bias", os.path.join(fx, "qwen2-bias"),
                     adapter_tensors=load_file(os.path.join(fx, "qwen2-bias", "lora_after5.safetensors")),
                     adapter_cfg=adapter_config(4, 8, False)),
            make_run(tmp, "kq", None, kq=True, rng=rng),
        ]
        table = []
        exp0, _ = run_model(args, tmp, models[0], ["F16", "Q8_0", "Q4_K_M", "Q5_K_M", "Q6_K"], table)
        run_model(args, tmp, models[1], ["BF16", "Q8_0", "Q4_K_M"], table)
        exp2, _ = run_model(args, tmp, models[2], ["F16", "Q8_0", "Q4_K_M", "Q5_K_M", "Q6_K"], table)
        check_imatrix(args, tmp, models[2], exp2, table)
        check_nf4(args, tmp, models[0], exp0)
        for m in models:
            check_export(args, tmp, m, expected_tensors(m)[1])
        check_errors(args, tmp, models)
        check_spm_vocab(args, tmp)
        print("byte-identical to the reference quantizers (gguf-py for Q8_0/Q5_0/Q5_1, kquant_ref.py for K-quants): " +
              ", ".join(f"{k} {v[0]} tensors / {v[1]} rows" for k, v in sorted(BYTES_CHECKED.items())))
        print("sizes and errors (rel RMSE over all tensors of a type, tensor count):")
        print("\n".join(table))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    if FAILS:
        print(f"FAIL: {len(FAILS)} checks failed")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
