#!/usr/bin/env python3
"""Generate the Hugging Face transformers + PEFT oracle fixtures under tests/fixtures/models/.

Anyone with torch + transformers + peft can re-run it (CPU only, float32, fixed seeds; well
under 2 minutes):

  python3 tests/py/gen_fixtures.py [--out DIR] [--only NAME ...]
  python3 tests/py/gen_fixtures.py --dry-run      # numpy-only self-test, no torch needed

Every file it writes, and what each tensor means, is described in tests/fixtures/models/README.md.
Besides recording transformers' outputs it checks itself (hard failures): the saved files
reload to the same weights, the parameter names/shapes are the intended ones, HF's loss is
the documented shifted mean cross-entropy, the adapter tensor names equal PEFT's own
adapter_model.safetensors names, PEFT reloads the saved adapter to the same logits, and the
first AdamW step matches torch's documented formula. Soft checks (recorded in manifest.json,
printed as WARN): an independent numpy forward (np_llama.py) of every model and of the
merged LoRA model agrees with transformers, and HF's inv_freq equals the documented RoPE
formula.
"""
import os
import sys

# PEFT writes target_modules from a Python set: fix string hashing so adapter_config.json is
# byte-identical between runs (re-exec once with PYTHONHASHSEED=0).
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

# Before torch/transformers are imported: CPU only, never touch the network.
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import copy  # noqa: E402
import datetime  # noqa: E402
import hashlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import numpy as np  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import np_llama  # noqa: E402

DEFAULT_OUT = os.path.join(os.path.dirname(HERE), "fixtures", "models")
MIN_VERSIONS = {"torch": (2, 4), "transformers": (5, 0), "peft": (0, 17)}
EXPECTED = {"torch": "2.11", "transformers": "5.17", "peft": "0.21"}  # what the fixtures were made with
MAX_MODEL_BYTES = 500_000
SEEDS = {"torch_init": 1000, "perturb": 2000, "tokens": 3000, "lora_A_torch": 4000, "lora_B": 5000}
B, T, T_SHORT, N_NEW = 2, 17, 5, 8
LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_B_STD = 0.05
ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
STEPS = 5
NP_TOL = 1e-4  # numpy float64 vs transformers float32, absolute on logits

# initializer_range ~ 1/sqrt(hidden): attention scores and logits of order 1, so RoPE, masking
# and softmax errors show up clearly (the 0.02 default gives near-uniform attention).
MODELS = [
    dict(name="llama-gqa", cfg="LlamaConfig", cls="LlamaForCausalLM", lora=True, rslora=True,
         kw=dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                 max_position_embeddings=128, tie_word_embeddings=False, initializer_range=0.125),
         rope=dict(rope_type="default", rope_theta=10000.0)),
    dict(name="llama31-tied", cfg="LlamaConfig", cls="LlamaForCausalLM", lora=False, rslora=False,
         kw=dict(vocab_size=300, hidden_size=48, intermediate_size=132, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-5,
                 max_position_embeddings=256, tie_word_embeddings=True, initializer_range=0.14),
         rope=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                   high_freq_factor=4.0, original_max_position_embeddings=64)),
    dict(name="qwen2-bias", cfg="Qwen2Config", cls="Qwen2ForCausalLM", lora=True, rslora=False,
         kw=dict(vocab_size=272, hidden_size=64, intermediate_size=88, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                 max_position_embeddings=256, tie_word_embeddings=True, use_sliding_window=False,
                 initializer_range=0.125),
         rope=dict(rope_type="default", rope_theta=1000000.0)),
    dict(name="mistral", cfg="MistralConfig", cls="MistralForCausalLM", lora=False, rslora=False,
         kw=dict(vocab_size=256, hidden_size=64, intermediate_size=120, num_hidden_layers=2,
                 num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-5,
                 max_position_embeddings=256, tie_word_embeddings=False, sliding_window=None,
                 initializer_range=0.125),
         rope=dict(rope_type="default", rope_theta=1000000.0)),
]


class FixtureError(RuntimeError):
    pass


def need(cond, msg):
    if not cond:
        raise FixtureError(msg)


def ver_tuple(s):
    return tuple(int(x) for x in re.findall(r"\d+", s)[:3])


# ---------------------------------------------------------------- torch-free pieces

def spec_config(spec):
    """The config.json fields np_llama needs, as the spec intends them (v5 rope_parameters form)."""
    kw = spec["kw"]
    c = {k: kw[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads", "num_key_value_heads", "rms_norm_eps",
                           "tie_word_embeddings")}
    if "head_dim" in kw:
        c["head_dim"] = kw["head_dim"]
    c["hidden_act"] = "silu"
    c["rope_parameters"] = dict(spec["rope"])
    return c


def expected_shapes(spec):
    """HF parameter name -> shape as stored in model.safetensors."""
    d = np_llama.dims(spec_config(spec))
    H, I, V, hd = d["H"], d["I"], d["V"], d["hd"]
    q, kv = d["nh"] * hd, d["nkv"] * hd
    s = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    if not d["tied"]:
        s["lm_head.weight"] = (V, H)
    for l in range(d["L"]):
        p = f"model.layers.{l}."
        s.update({p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
                  p + "self_attn.q_proj.weight": (q, H), p + "self_attn.k_proj.weight": (kv, H),
                  p + "self_attn.v_proj.weight": (kv, H), p + "self_attn.o_proj.weight": (H, q),
                  p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H),
                  p + "mlp.down_proj.weight": (H, I)})
        if spec["cfg"] == "Qwen2Config":
            s.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                      p + "self_attn.v_proj.bias": (kv,)})
    return s


def token_batches(spec, idx):
    """Fixed batches from numpy's generator (independent of torch's RNG)."""
    V = spec["kw"]["vocab_size"]
    rng = np.random.default_rng(SEEDS["tokens"] + idx)
    ids = rng.integers(0, V, size=(B, T)).astype(np.int32)
    labels = ids.copy()
    labels[0, :4] = -100   # masked prompt (labels[:, 0] is never used: HF shifts)
    labels[1, 7] = -100    # a hole
    labels[1, 15:] = -100  # masked tail
    ids_b1 = rng.integers(0, V, size=(1, T_SHORT)).astype(np.int32)
    return ids, labels, ids_b1, ids_b1.copy()


def lora_weight_names(spec):
    """PEFT adapter_model.safetensors names and shapes (safetensors-peft.md 4.2), r=LORA['r']."""
    r, out = LORA["r"], {}
    for name, shape in expected_shapes(spec).items():
        m = re.match(r"(model\.layers\.\d+\.(self_attn|mlp)\.(\w+))\.weight$", name)
        if m and m.group(3) in TARGETS:
            o, i = shape
            out[f"base_model.model.{m.group(1)}.lora_A.weight"] = (r, i)
            out[f"base_model.model.{m.group(1)}.lora_B.weight"] = (o, r)
    return out


def merge_lora(W, adapter, scaling):
    """Base weights + s * B @ A per adapted Linear (numpy float64), for the LoRA cross-check."""
    M = {k: v.astype(np.float64) for k, v in W.items()}
    for k, A in adapter.items():
        if k.endswith(".lora_A.weight"):
            base = k[len("base_model.model."):-len(".lora_A.weight")] + ".weight"
            Bm = adapter[k.replace(".lora_A.", ".lora_B.")]
            M[base] = M[base] + scaling * (Bm.astype(np.float64) @ A.astype(np.float64))
    return M


def adamw_step1(p0, g):
    """torch.optim.AdamW first step: decay then Adam with bias correction (m_hat=g, v_hat=g^2)."""
    lr, eps, wd = ADAMW["lr"], ADAMW["eps"], ADAMW["weight_decay"]
    p0, g = p0.astype(np.float64), g.astype(np.float64)
    return p0 * (1 - lr * wd) - lr * g / (np.abs(g) + eps)


def header_of(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), os.path.getsize(path) - 8 - n


def save_st(path, tensors):
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path, metadata={"format": "pt"})


def dry_run():
    """numpy-only self-test of everything above (shapes, budget, batches, np forward, loss)."""
    ok = True
    for idx, spec in enumerate(MODELS):
        shapes = expected_shapes(spec)
        nbytes = 4 * sum(int(np.prod(s)) for s in shapes.values())
        rng = np.random.default_rng(idx)
        cfg = spec_config(spec)
        init = spec["kw"]["initializer_range"]
        W = {k: (rng.uniform(0.5, 1.5, s) if len(s) == 1 and "bias" not in k else rng.normal(0, init if len(s) == 2 else 0.2, s)).astype(np.float32)
             for k, s in shapes.items()}
        ids, labels, ids_b1, _ = token_batches(spec, idx)
        lg = np_llama.forward(cfg, W, ids)
        loss = np_llama.causal_lm_loss(lg, labels)
        n_used = int((labels[:, 1:] != -100).sum())
        ad = {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in lora_weight_names(spec).items()}
        lg2 = np_llama.forward(cfg, merge_lora(W, ad, 2.0), ids)
        inv = np_llama.rope_inv_freq(cfg)
        fits = nbytes <= MAX_MODEL_BYTES
        ok &= fits and np.isfinite(lg).all() and np.abs(lg2 - lg).max() > 1e-3
        print(f"{spec['name']:13s} params {nbytes // 4:6d} ({nbytes} B, {'ok' if fits else 'TOO BIG'}) "
              f"loss {loss:.4f} over {n_used} targets, logit std {lg.std():.3f}, "
              f"lora tensors {len(ad)}, |dlogit| lora {np.abs(lg2 - lg).max():.3f}, inv_freq {np.array2string(inv, precision=3)}")
    return ok


# ---------------------------------------------------------------- torch parts

def check_versions():
    import peft
    import torch
    import transformers
    vers = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    for k, v in vers.items():
        if ver_tuple(v)[:2] < MIN_VERSIONS[k]:
            raise FixtureError(f"{k} {v} is older than the minimum {MIN_VERSIONS[k]} this script supports")
        if not v.startswith(EXPECTED[k]):
            print(f"WARN: {k} {v} differs from the {EXPECTED[k]}.x the committed fixtures were made with")
    return vers


def accepted(fn, **kw):
    """Only the keyword arguments fn accepts (APIs shift between versions)."""
    params = inspect.signature(fn).parameters  # named parameters only, never via **kwargs
    return {k: v for k, v in kw.items() if k in params}


def load_model(cls, folder, dtype):
    import torch
    kw = dict(attn_implementation="eager")
    try:
        m = cls.from_pretrained(folder, dtype=dtype, **kw)
    except TypeError:
        m = cls.from_pretrained(folder, torch_dtype=dtype, **kw)
    m.eval()
    p = next(m.parameters())
    need(p.dtype == dtype and p.device == torch.device("cpu"), f"{folder}: loaded as {p.dtype} on {p.device}")
    return m


def run_hf(model, ids, labels=None):
    import torch
    kw = {"input_ids": torch.from_numpy(ids.astype(np.int64)), "use_cache": False}
    if labels is not None:
        kw["labels"] = torch.from_numpy(labels.astype(np.int64))
    out = model(**kw)
    loss = None if labels is None else float(out.loss.detach().float())
    return out.logits.detach().float().numpy().copy(), loss, out


def build_base(spec, idx, d, tf_major, notes):
    import torch
    import transformers
    kw = dict(spec["kw"], attn_implementation="eager")
    if tf_major >= 5:
        kw["rope_parameters"] = dict(spec["rope"])
    else:
        kw["rope_theta"] = spec["rope"]["rope_theta"]
        if spec["rope"]["rope_type"] != "default":
            kw["rope_scaling"] = {k: v for k, v in spec["rope"].items() if k != "rope_theta"}
    cfg = getattr(transformers, spec["cfg"])(**kw)
    torch.manual_seed(SEEDS["torch_init"] + idx)
    model = getattr(transformers, spec["cls"])(cfg).float().eval()
    init = spec["kw"]["initializer_range"]
    stds = [float(p.std()) for n, p in model.named_parameters() if n.endswith("proj.weight")]
    if not all(0.7 * init < s < 1.3 * init for s in stds):
        notes.append(f"WARN: projection weight stds {min(stds):.3f}..{max(stds):.3f}, expected ~{init}")
    rng = np.random.default_rng(SEEDS["perturb"] + idx)
    n_bias = 0
    with torch.no_grad():
        for n, p in sorted(model.named_parameters()):
            if n.endswith("norm.weight"):
                p.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, tuple(p.shape)).astype(np.float32)))
            elif n.endswith(".bias"):
                p.copy_(torch.from_numpy(rng.normal(0.0, 0.2, tuple(p.shape)).astype(np.float32)))
                n_bias += 1
    need(n_bias == (3 * spec["kw"]["num_hidden_layers"] if spec["cfg"] == "Qwen2Config" else 0),
         f"unexpected number of bias tensors: {n_bias}")
    if spec["kw"]["tie_word_embeddings"]:
        need(model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(),
             "tie_word_embeddings=True but lm_head is not the embedding")
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, **accepted(model.save_pretrained, safe_serialization=True))
    return model


def check_saved(spec, d, model_mem, ref_model, notes):
    """Hard checks on the written folder; returns the numpy weights and config.json."""
    import torch
    st = os.path.join(d, "model.safetensors")
    need(os.path.exists(st), f"{d}: save_pretrained wrote no model.safetensors ({os.listdir(d)})")
    hdr, nbytes = header_of(st)
    shapes = {k: tuple(v["shape"]) for k, v in hdr.items() if k != "__metadata__"}
    need(all(v["dtype"] == "F32" for k, v in hdr.items() if k != "__metadata__"), "non-F32 tensors saved")
    if spec["kw"]["tie_word_embeddings"] and "lm_head.weight" in shapes:
        notes.append("WARN: tied model saved an lm_head.weight (spec says HF omits it)")
        shapes.pop("lm_head.weight")
    need(shapes == expected_shapes(spec),
         f"saved tensors differ from the intended layout:\n got {sorted(shapes.items())}\n want {sorted(expected_shapes(spec).items())}")
    need(nbytes <= MAX_MODEL_BYTES, f"model.safetensors holds {nbytes} bytes > {MAX_MODEL_BYTES}")
    cfg = np_llama.load_config(d)
    got, want = np_llama.dims(cfg), np_llama.dims(spec_config(spec))
    eps_got, eps_want = got.pop("eps"), want.pop("eps")
    need(got == want, f"config.json read as {got}, intended {want}")
    if eps_got != eps_want:  # np_llama's default for an omitted key is not the class default
        notes.append(f"WARN: config.json rms_norm_eps {cfg.get('rms_norm_eps', 'absent')} reads as "
                     f"{eps_got}, intended {eps_want}")
    missing = [k for k in ("rms_norm_eps", "num_key_value_heads", "tie_word_embeddings", "head_dim",
                           "rope_parameters", "rope_theta") if k not in cfg]
    if missing:
        notes.append(f"note: config.json omits {missing} (loaders must apply defaults)")
    rtype, rp = np_llama.rope_params(cfg)
    need(rtype == spec["rope"]["rope_type"] and float(rp["rope_theta"]) == spec["rope"]["rope_theta"],
         f"config.json rope {rtype} {rp} differs from intended {spec['rope']}")
    sd_mem, sd_ref = model_mem.state_dict(), ref_model.state_dict()
    for k, v in sd_mem.items():
        need(k in sd_ref and torch.equal(v, sd_ref[k]), f"reloaded weight {k} differs from the saved model")
    return cfg, np_llama.load_weights(d)


def hf_inv_freq(model):
    rot = getattr(getattr(model, "model", None), "rotary_emb", None)
    inv = getattr(rot, "inv_freq", None)
    return None if inv is None else inv.detach().float().numpy()


def greedy(model, prompt, n):
    """argmax of the last position, full recompute each step, no EOS stop."""
    import torch
    seq, margins = prompt.astype(np.int64).copy(), []
    with torch.no_grad():
        for _ in range(n):
            last = model(input_ids=torch.from_numpy(seq), use_cache=False).logits[0, -1].double()
            top = torch.topk(last, 2).values
            margins.append(float(top[0] - top[1]))
            seq = np.concatenate([seq, [[int(torch.argmax(last))]]], axis=1)
    return seq[:, prompt.shape[1]:].astype(np.int32), np.array(margins, dtype=np.float32)


def hf_generate(model, prompt):
    import torch
    x = torch.from_numpy(prompt.astype(np.int64))
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    with torch.no_grad():
        g = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=N_NEW,
                           do_sample=False, num_beams=1, pad_token_id=pad)
    return g[0, prompt.shape[1]:].numpy().astype(np.int32)


def make_peft(base, use_rslora, base_name):
    import torch
    from peft import LoraConfig, get_peft_model
    cfg = LoraConfig(target_modules=list(TARGETS), use_rslora=use_rslora, **LORA)
    base = copy.deepcopy(base)  # get_peft_model injects the LoRA layers in place
    # PEFT copies the base's name_or_path into adapter_config.json: make it the repo-relative
    # fixture folder rather than this machine's absolute path.
    base.name_or_path = f"tests/fixtures/models/{base_name}"
    torch.manual_seed(SEEDS["lora_A_torch"])
    pm = get_peft_model(base, cfg)
    want = LORA["lora_alpha"] / (math.sqrt(LORA["r"]) if use_rslora else LORA["r"])
    found = 0
    for m in pm.modules():
        sc = getattr(m, "scaling", None)
        if isinstance(sc, dict) and "default" in sc:
            need(abs(sc["default"] - want) < 1e-12, f"PEFT scaling {sc['default']} != {want}")
            found += 1
    need(found == 7 * base.config.num_hidden_layers, f"found {found} LoRA layers")
    return pm, want


def peft_name(n):
    return n.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")


def lora_params(pm):
    ps = {peft_name(n): p for n, p in pm.named_parameters() if p.requires_grad}
    need(all((".lora_A." in k or ".lora_B." in k) for k in ps), f"non-LoRA trainable params: {list(ps)[:4]}")
    return dict(sorted(ps.items()))


def lora_values(ps, grad=False):
    out = {}
    for k, p in ps.items():
        t = p.grad if grad else p
        need(t is not None, f"{k}: no {'grad' if grad else 'value'}")
        out[k] = t.detach().float().numpy().copy()
    return out


def load_lora(pm, values):
    import torch
    ps = lora_params(pm)
    need(set(ps) == set(values), "adapter names differ between PEFT models")
    with torch.no_grad():
        for k, p in ps.items():
            p.copy_(torch.from_numpy(values[k]))
    return ps


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def do_lora(spec, d, ref, cfg, W, ids, labels, info, notes):
    import torch
    from peft import PeftModel, get_peft_model_state_dict
    pm, scaling = make_peft(ref, False, spec["name"])
    ps = lora_params(pm)
    need({k: tuple(p.shape) for k, p in ps.items()} == lora_weight_names(spec), "LoRA names/shapes unexpected")
    psd = get_peft_model_state_dict(pm, **accepted(get_peft_model_state_dict, save_embedding_layers=False))
    need(set(psd) == set(ps), f"PEFT state-dict names {sorted(psd)[:2]} differ from ours {sorted(ps)[:2]}")
    rng = np.random.default_rng(SEEDS["lora_B"] + MODELS.index(spec))
    with torch.no_grad():
        for k, p in ps.items():
            if ".lora_B." in k:
                p.copy_(torch.from_numpy(rng.normal(0.0, LORA_B_STD, tuple(p.shape)).astype(np.float32)))
    init = lora_values(ps)
    save_st(os.path.join(d, "lora_init.safetensors"), init)

    pm.train()
    lg_init, loss_init, out = run_hf(pm, ids, labels)
    out.loss.backward()
    grads = lora_values(ps, grad=True)
    need(all(np.abs(g).max() > 0 for g in grads.values()), "a LoRA gradient is all zero")
    save_st(os.path.join(d, "lora_grads.safetensors"), grads)
    info["lora_np_vs_hf"] = max_diff(np_llama.forward(cfg, merge_lora(W, init, scaling), ids), lg_init)
    if info["lora_np_vs_hf"] > NP_TOL:
        notes.append(f"WARN: numpy merged-LoRA forward differs from PEFT by {info['lora_np_vs_hf']:.2e}")

    pm2, _ = make_peft(ref, False, spec["name"])
    ps2 = load_lora(pm2, init)
    pm2.train()
    opt = torch.optim.AdamW(list(ps2.values()), foreach=False, **ADAMW)
    losses = []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        _, loss, out = run_hf(pm2, ids, labels)
        losses.append(loss)
        out.loss.backward()
        opt.step()
        if step == 0:
            after1 = lora_values(ps2)
            save_st(os.path.join(d, "lora_after1.safetensors"), after1)
            e = max(max_diff(adamw_step1(init[k], grads[k]), after1[k]) for k in init)
            need(e < 1e-6, f"first AdamW step differs from the documented formula by {e:.2e}")
            info["adamw_step1_formula_err"] = e
    need(abs(losses[0] - loss_init) < 1e-6, f"fresh copy loss {losses[0]} != {loss_init}")
    after5 = lora_values(ps2)
    save_st(os.path.join(d, "lora_after5.safetensors"), after5)
    pm2.eval()
    with torch.no_grad():
        lg5, loss5, _ = run_hf(pm2, ids, labels)
    ref_lora = {"input_ids": ids, "labels": labels, "loss_init": np.float32([loss_init]),
                "logits_init": lg_init, "losses": np.float32(losses), "loss_after5": np.float32([loss5]),
                "logits_after5": lg5, "scaling": np.float32([scaling])}

    ad = os.path.join(d, "peft_adapter")
    pm2.save_pretrained(ad, **accepted(pm2.save_pretrained, safe_serialization=True, save_embedding_layers=False))
    if os.path.exists(os.path.join(ad, "README.md")):
        os.remove(os.path.join(ad, "README.md"))  # PEFT's generic model card, not needed
    saved = load_file(os.path.join(ad, "adapter_model.safetensors"))
    need(set(saved) == set(after5), f"PEFT adapter names {sorted(saved)[:2]} differ from ours")
    need(all(np.array_equal(saved[k], after5[k]) for k in saved), "PEFT adapter values differ from lora_after5")
    reloaded = PeftModel.from_pretrained(copy.deepcopy(ref), ad).eval()
    with torch.no_grad():
        lgr, _, _ = run_hf(reloaded, ids)
    info["peft_reload_err"] = max_diff(lgr, lg5)
    need(info["peft_reload_err"] < 1e-5, f"PEFT-reloaded adapter logits differ by {info['peft_reload_err']:.2e}")
    info.update(loss_init=loss_init, losses=losses, loss_after5=loss5)

    if spec["rslora"]:
        pm3, s3 = make_peft(ref, True, spec["name"])
        ps3 = load_lora(pm3, init)
        pm3.train()
        opt = torch.optim.AdamW(list(ps3.values()), foreach=False, **ADAMW)
        opt.zero_grad(set_to_none=True)
        _, l0, out = run_hf(pm3, ids, labels)
        out.loss.backward()
        save_st(os.path.join(d, "lora_rslora_grads.safetensors"), lora_values(ps3, grad=True))
        opt.step()
        save_st(os.path.join(d, "lora_rslora_after1.safetensors"), lora_values(ps3))
        with torch.no_grad():
            _, l1, _ = run_hf(pm3, ids, labels)
        ref_lora["rslora_losses"] = np.float32([l0, l1])
        ref_lora["rslora_scaling"] = np.float32([s3])
        info.update(rslora_losses=[l0, l1])
    save_st(os.path.join(d, "reference_lora.safetensors"), ref_lora)
    need(not any("lora" in k for k in ref.state_dict()), "base model was modified by PEFT")


def do_model(spec, idx, out_dir, tf_major):
    import torch
    t0 = time.time()
    d = os.path.join(out_dir, spec["name"])
    notes, info = [], {"name": spec["name"], "class": spec["cls"]}
    model = build_base(spec, idx, d, tf_major, notes)
    ref = load_model(model.__class__, d, torch.float32)
    info["attn_implementation"] = getattr(ref.config, "_attn_implementation", None)
    cfg, W = check_saved(spec, d, model, ref, notes)
    info["params"] = sum(int(v.size) for v in W.values())
    ids, labels, ids_b1, labels_b1 = token_batches(spec, idx)
    with torch.no_grad():
        lg, loss, _ = run_hf(ref, ids, labels)
        lg1, loss1, _ = run_hf(ref, ids_b1, labels_b1)
        lg_mem, _, _ = run_hf(model, ids)
    need(max_diff(lg_mem, lg) < 1e-6, "in-memory and reloaded model disagree")
    for l_, lab, name in ((lg, labels, "B=2"), (lg1, labels_b1, "B=1")):
        mine = np_llama.causal_lm_loss(l_, lab)
        hf = loss if name == "B=2" else loss1
        need(abs(mine - hf) < 1e-5 * max(1.0, abs(hf)),
             f"{name}: HF loss {hf} is not the documented shifted mean CE {mine}")
    info["np_vs_hf"] = max(max_diff(np_llama.forward(cfg, W, ids), lg), max_diff(np_llama.forward(cfg, W, ids_b1), lg1))
    if info["np_vs_hf"] > NP_TOL:
        notes.append(f"WARN: numpy forward differs from transformers by {info['np_vs_hf']:.2e}")
    inv = hf_inv_freq(ref)
    if inv is None:
        notes.append("WARN: model.model.rotary_emb.inv_freq not found; RoPE formula not cross-checked")
    else:
        info["inv_freq_err"] = max_diff(inv, np_llama.rope_inv_freq(cfg)) / float(np.abs(inv).max())
        if info["inv_freq_err"] > 1e-6:
            notes.append(f"WARN: HF inv_freq differs from the documented formula (rel {info['inv_freq_err']:.2e})")

    gen, margins = greedy(ref, ids_b1, N_NEW)
    try:
        g2 = hf_generate(ref, ids_b1)
        info["generate_agrees"] = bool(len(g2) > 0 and np.array_equal(g2, gen[0, :len(g2)]))
        if not info["generate_agrees"] or len(g2) < N_NEW:
            notes.append(f"WARN: model.generate gave {g2.tolist()} vs manual greedy {gen[0].tolist()}")
    except Exception as e:  # generate() is only a cross-check of the manual loop
        notes.append(f"WARN: model.generate failed ({type(e).__name__}: {e})")
        info["generate_agrees"] = None

    try:
        m16 = load_model(model.__class__, d, torch.bfloat16)
        info["bf16_path"] = "from_pretrained(dtype=bfloat16)"
    except Exception as e:
        notes.append(f"WARN: bf16 from_pretrained failed ({e}); using .to(bfloat16)")
        m16 = copy.deepcopy(ref).to(torch.bfloat16)
        info["bf16_path"] = "model.to(bfloat16)"
    inv16 = getattr(getattr(m16.model, "rotary_emb", None), "inv_freq", None)
    info["bf16_inv_freq_dtype"] = None if inv16 is None else str(inv16.dtype)
    with torch.no_grad():
        lg16, loss16, _ = run_hf(m16, ids, labels)
        lg16_1, _, _ = run_hf(m16, ids_b1)
    info["bf16_max_abs_err"] = max_diff(lg16, lg)
    info["bf16_rel_err"] = info["bf16_max_abs_err"] / float(np.abs(lg).max())
    info.update(loss=loss, loss_b1=loss1, loss_bf16=loss16, logit_std=float(lg.std()),
                generate_greedy=gen[0].tolist(), generate_min_margin=float(margins.min()))
    save_st(os.path.join(d, "reference.safetensors"), {
        "input_ids": ids, "labels": labels, "logits": lg, "loss": np.float32([loss]),
        "input_ids_b1": ids_b1, "labels_b1": labels_b1, "logits_b1": lg1, "loss_b1": np.float32([loss1]),
        "generate_prompt": ids_b1, "generate_greedy": gen, "generate_margin": margins,
        "logits_bf16": lg16, "logits_bf16_b1": lg16_1, "loss_bf16": np.float32([loss16])})
    if spec["lora"]:
        do_lora(spec, d, ref, cfg, W, ids, labels, info, notes)
    info["notes"] = notes
    info["seconds"] = round(time.time() - t0, 2)
    return info


def file_list(out_dir, names):
    files = {}
    for n in names:
        for root, _, fs in os.walk(os.path.join(out_dir, n)):
            for f in sorted(fs):
                p = os.path.join(root, f)
                files[os.path.relpath(p, out_dir)] = {
                    "bytes": os.path.getsize(p), "sha256": hashlib.sha256(open(p, "rb").read()).hexdigest()}
    return dict(sorted(files.items()))


def main():
    ap = argparse.ArgumentParser(description="HF transformers + PEFT oracle fixtures (see module doc)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    ap.add_argument("--only", nargs="*", help="model names to (re)generate (default: all)")
    ap.add_argument("--dry-run", action="store_true", help="numpy-only self-test; needs no torch")
    a = ap.parse_args()
    if a.dry_run:
        sys.exit(0 if dry_run() else 1)
    try:
        vers = check_versions()
    except ImportError as e:
        sys.exit(f"gen_fixtures: needs torch, transformers and peft ({e}); try --dry-run")
    except FixtureError as e:
        sys.exit(f"gen_fixtures: {e}")
    import torch
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_default_dtype(torch.float32)
    names = [m["name"] for m in MODELS]
    if a.only:
        bad = set(a.only) - set(names)
        if bad:
            sys.exit(f"gen_fixtures: unknown model(s) {sorted(bad)}; choose from {names}")
    todo = [(i, m) for i, m in enumerate(MODELS) if not a.only or m["name"] in a.only]
    os.makedirs(a.out, exist_ok=True)
    t0, results, failed = time.time(), [], []
    for idx, spec in todo:
        try:
            results.append(do_model(spec, idx, a.out, ver_tuple(vers["transformers"])[0]))
        except Exception as e:
            traceback.print_exc()
            failed.append(spec["name"])
            results.append({"name": spec["name"], "FAILED": f"{type(e).__name__}: {e}"})
    manifest = {
        "generator": "tests/py/gen_fixtures.py", "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "versions": dict(vers, python=platform.python_version(), numpy=np.__version__,
                         safetensors=__import__("safetensors").__version__),
        "platform": platform.platform(), "torch_threads": torch.get_num_threads(), "device": "cpu",
        "seeds": SEEDS, "batch": {"B": B, "T": T, "T_short": T_SHORT, "new_tokens": N_NEW},
        "lora": dict(LORA, target_modules=TARGETS, lora_B_init_std=LORA_B_STD, adamw=ADAMW, steps=STEPS),
        "models": {m["name"]: dict(config_kwargs=m["kw"], rope=m["rope"]) for _, m in todo},
        "results": results, "files": file_list(a.out, [m["name"] for _, m in todo]),
        "seconds": round(time.time() - t0, 2)}
    with open(os.path.join(a.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, default=float)
        f.write("\n")
    print(f"\nversions: {manifest['versions']}")
    for r in results:
        if "FAILED" in r:
            print(f"{r['name']:13s} FAILED: {r['FAILED']}")
            continue
        extra = f" lora losses {[round(x, 4) for x in r['losses']]}" if "losses" in r else ""
        print(f"{r['name']:13s} params {r['params']:6d} loss {r['loss']:.4f} bf16 err {r['bf16_max_abs_err']:.2e} "
              f"np-vs-hf {r['np_vs_hf']:.1e} inv_freq {r.get('inv_freq_err', float('nan')):.1e} "
              f"greedy {r['generate_greedy']} (margin {r['generate_min_margin']:.3f}){extra} [{r['seconds']}s]")
        for n in r["notes"]:
            print(f"   {n}")
    print(f"wrote {len(manifest['files'])} files under {a.out} in {manifest['seconds']}s; "
          f"{'FAILED: ' + ', '.join(failed) if failed else 'all models OK'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
