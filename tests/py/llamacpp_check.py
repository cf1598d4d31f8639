#!/usr/bin/env python3
"""llama.cpp itself (through llama-cpp-python) loads qtrain's merged GGUFs and GGUF LoRA
adapters and computes the same next-token logits as the Hugging Face model they came from.

Not part of ctest (llama-cpp-python is a compiled dependency); run it where it is installed:

    pip install llama-cpp-python gguf numpy safetensors ml_dtypes
    python3 tests/py/llamacpp_check.py --qtrain build/bin/qtrain [--types F16,Q8_0,Q4_K_M] [--keep DIR]

For the models of tests/py/gguf_interop.py (llama-gqa with PEFT's lora_after5 adapter,
qwen2-bias, and the K-quant-sized llama3 model "kq"), it merges each run into the requested
types and compares, over a batch of token ids, the logits of
  ref     np_llama.forward (float64 numpy, transformers' conventions) on W + s*B*A computed
          from the safetensors files; for llama-gqa also transformers+PEFT's own logits
          (fixtures/models/llama-gqa/reference_lora.safetensors: logits_after5);
  emu     a float64 numpy emulation of llama.cpp's llama / qwen2 graph on the GGUF tensors
          (gguf-py dequantize; adjacent-pair RoPE with rope_freqs for llama, NEOX for qwen2);
  cpp     llama.cpp (llama_cpp.Llama, CPU, logits_all) on the same GGUF;
and for the GGUF LoRA adapter: llama.cpp on an un-merged base GGUF (merge of an all-zero
adapter) + qtrain's <name>-LoRA.gguf, against ref.
Prints rel RMSE / max abs / top-1 agreement per pair and fails outside the tolerances below.
Without llama-cpp-python it says so and exits 77 after checking ref vs emu (--emulate-only
makes that a pass, which is what the development machine can run).
"""
import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import gguf
    import ml_dtypes  # noqa: F401
    from safetensors.numpy import load_file, save_file
except ImportError as ex:
    print(f"SKIP: {ex.name} is not installed")
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gguf_interop as gi  # noqa: E402
import np_llama  # noqa: E402
from gguf_emulate import compare, gguf_forward, hf_merged  # noqa: E402

# Tolerances on the rel RMSE of logits over the batch.
# emu/ref: the weight rounding alone. Exact layouts give ~1e-7 for F32 and ~1e-3 for F16 (bf16
#   bases are exact in F16); quantized files are only bounded loosely (these tiny random models
#   amplify weight error: ~2-3% for Q8_0, 10-35% for Q4_K_M), their llama.cpp check is cpp/emu.
# cpp/emu: llama.cpp against the emulation on the very same weights: what differs is llama.cpp's
#   own arithmetic (F16 activations for F16 weights, Q8_0 / Q8_K activations for quantized ones).
# cpp/ref: at most 1.5x the emulation's error plus that activation rounding.
TOL_EMU = {"F32": 1e-5, "F16": 3e-3, "BF16": 2e-2, "Q8_0": 0.1, "Q6_K": 0.3, "Q5_K_M": 0.5, "Q4_K_M": 0.6}
TOL_CPP_VS_EMU = {"F32": 1e-4, "F16": 5e-3, "BF16": 1.5e-2, "Q8_0": 3e-2, "Q6_K": 5e-2, "Q5_K_M": 5e-2,
                  "Q4_K_M": 5e-2}
FAILS = []


def check(cond, msg):
    if not cond:
        FAILS.append(msg)
        print("  FAILED:", msg)


def llamacpp_logits(path, ids, lora=None):
    from llama_cpp import Llama
    kw = dict(model_path=path, n_ctx=64, n_batch=64, logits_all=True, n_gpu_layers=0, verbose=False)
    if lora:
        kw.update(lora_path=lora, lora_scale=1.0)
    llm = Llama(**kw)
    out = []
    for row in np.asarray(ids):
        llm.reset()
        llm.eval([int(t) for t in row])
        out.append(np.array(llm.scores[:len(row)], dtype=np.float64))
    return np.stack(out)


def random_adapter(cfg, r, rng):
    """PEFT-named A [r, in], B [out, r] for every projection of a config"""
    H, I, nh = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"]
    nkv, hd = cfg.get("num_key_value_heads") or nh, gi.hd_of(cfg)
    dims = {"q_proj": (nh * hd, H), "k_proj": (nkv * hd, H), "v_proj": (nkv * hd, H), "o_proj": (H, nh * hd),
            "gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I)}
    ad = {}
    for l in range(cfg["num_hidden_layers"]):
        for parent, p in gi.PROJ:
            o, i = dims[p]
            pre = f"base_model.model.model.layers.{l}.{parent}.{p}"
            ad[pre + ".lora_A.weight"] = rng.uniform(-1, 1, (r, i)).astype(np.float32) / np.float32(math.sqrt(i))
            ad[pre + ".lora_B.weight"] = rng.normal(0, 0.05, (o, r)).astype(np.float32)
    return ad


# ---------------------------------------------------------------- driver

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qtrain", required=True)
    ap.add_argument("--types", default="F16,Q8_0,Q4_K_M,Q6_K")
    ap.add_argument("--keep")
    ap.add_argument("--emulate-only", action="store_true", help="check ref vs emu only (no llama-cpp-python)")
    args = ap.parse_args()
    have_cpp = True
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        have_cpp = False
        print("note: llama-cpp-python is not installed: checking the numpy emulation only")
    tmp = args.keep or tempfile.mkdtemp(prefix="qt_llamacpp_")
    os.makedirs(tmp, exist_ok=True)
    fx = os.path.join(gi.SRC, "tests", "fixtures", "models")
    rng = np.random.default_rng(11)
    types = args.types.split(",")

    def qtrain(*a):
        p = subprocess.run([args.qtrain, *a], capture_output=True, text=True)
        check(p.returncode == 0, f"qtrain {' '.join(a)}: {p.stderr.strip()[-400:]}")

    try:
        models = [
            gi.make_run(tmp, "llama-gqa", os.path.join(fx, "llama-gqa"),
                        peft_dir=os.path.join(fx, "llama-gqa", "peft_adapter")),
            gi.make_run(tmp, "qwen2-bias", os.path.join(fx, "qwen2-bias"),
                        adapter_tensors=load_file(os.path.join(fx, "qwen2-bias", "lora_after5.safetensors")),
                        adapter_cfg=gi.adapter_config(4, 8, False)),
            gi.make_run(tmp, "kq", None, kq=True, rng=rng),
            # head_dim 16 != 48/4 (key_length keys), llama3 RoPE with original_max_position 64, tied, rsLoRA
            gi.make_run(tmp, "llama31-tied", os.path.join(fx, "llama31-tied"),
                        adapter_tensors=random_adapter(gi.np_config(os.path.join(fx, "llama31-tied")), 4, rng),
                        adapter_cfg=gi.adapter_config(4, 8, True)),
        ]
        print(f"{'model':<13}{'file':<9}{'pair':<12}{'rel RMSE':>10}{'max abs':>10}{'top-1':>8}")

        def row(m, ft, pair, c, tol=None):
            print(f"{m['name']:<13}{ft:<9}{pair:<12}{c[0]:>10.2e}{c[1]:>10.2e}{c[2]:>8.3f}")
            if tol is not None:
                check(c[0] <= tol, f"{m['name']} {ft} {pair}: rel RMSE {c[0]:.3g} > {tol:g}")

        for m in models:
            V = m["cfg"]["vocab_size"]
            if m["name"] == "llama-gqa":
                refl = load_file(os.path.join(fx, "llama-gqa", "reference_lora.safetensors"))
                ids = refl["input_ids"].astype(np.int64)
            else:
                ids = rng.integers(0, V - 4, size=(2, 13))
            ref = np_llama.forward(m["cfg"], hf_merged(m), ids)
            if m["name"] == "llama-gqa":
                row(m, "-", "ref/hf", compare(ref, refl["logits_after5"]), 1e-4)
            for ft in types:
                path = os.path.join(tmp, f"{m['name']}-{ft}.gguf")
                qtrain("merge", m["run"], "--type", ft, "-o", path)
                emu = gguf_forward(path, ids)
                ce = compare(emu, ref)
                row(m, ft, "emu/ref", ce, TOL_EMU[ft])
                if have_cpp:
                    cpp = llamacpp_logits(path, ids)
                    row(m, ft, "cpp/emu", compare(cpp, emu), TOL_CPP_VS_EMU[ft])
                    row(m, ft, "cpp/ref", compare(cpp, ref), 1.5 * ce[0] + TOL_CPP_VS_EMU[ft])
            # the GGUF LoRA adapter on an un-merged base (a merge of an all-zero adapter)
            zero = os.path.join(tmp, m["name"] + "-zero")
            shutil.copytree(m["run"], zero)
            adp = os.path.join(zero, "adapter", "adapter_model.safetensors")
            z = {k: (np.zeros_like(v) if ".lora_B." in k else v) for k, v in load_file(adp).items()}
            save_file(z, adp, {"format": "pt"})
            base = os.path.join(tmp, m["name"] + "-base-F16.gguf")
            qtrain("merge", zero, "--type", "F16", "-o", base)
            out = os.path.join(tmp, m["name"] + "-lora")
            qtrain("export-adapter", m["run"], out, "--gguf", "--name", m["name"])
            lora = os.path.join(out, f"{m['name']}-LoRA.gguf")
            base_ref = np_llama.forward(m["cfg"], hf_merged(m, zero_adapter=True), ids)
            row(m, "F16", "base emu", compare(gguf_forward(base, ids), base_ref), TOL_EMU["F16"])
            row(m, "F16+LoRA", "emu/ref", compare(gguf_forward(base, ids, lora), ref), TOL_EMU["F16"])
            if have_cpp:
                row(m, "F16+LoRA", "cpp/ref", compare(llamacpp_logits(base, ids, lora), ref),
                    TOL_EMU["F16"] + TOL_CPP_VS_EMU["F16"])
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    if FAILS:
        print(f"FAIL: {len(FAILS)} checks failed")
        return 1
    if not have_cpp and not args.emulate_only:
        print("SKIP: llama.cpp itself was not run (pip install llama-cpp-python)")
        return 77
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
