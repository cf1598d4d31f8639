#!/usr/bin/env python3
"""The HF transformers + PEFT peer of the qtrain throughput benchmark (bench/RESULTS.md).

LoRA on a random-weight Llama-3-8B built directly on the GPU (no download): bf16 base, LoRA
r=16 / alpha 32 / dropout 0 on all 7 projections (adapters in fp32, PEFT's default), gradient
checkpointing (use_reentrant=False) with enable_input_require_grads, SDPA attention, AdamW lr
1e-4, random token ids as input and labels. Per batch size: 2 warm-up steps, then the timed
steps, each closed by torch.cuda.synchronize(); tok/s = batch * seq / mean step time; memory
is torch.cuda.max_memory_allocated over the warm-up and timed steps (weights included).

--qlora swaps the base projections for bitsandbytes NF4 + double quant (Linear4bit, bf16
compute) when bitsandbytes is importable; otherwise it says why and skips.

  python3 bench/peft_peer.py --batch 1 4 --json peft.json        # the benchmark
  python3 bench/peft_peer.py --layers 2 --seq 512 --batch 1      # a quick smaller run
  python3 bench/peft_peer.py --tiny --device cpu --seq 64        # smoke test, no GPU
"""
import argparse
import gc
import inspect
import json
import math
import sys
import time

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GIB = float(1 << 30)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="batch sizes, run in turn (default 1 4)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per batch size (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--seq", type=int, default=2048, help="tokens per row (default 2048)")
    p.add_argument("--layers", type=int, default=32, help="decoder layers (default 32, the 8B model)")
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--attn", default="sdpa", help="attn_implementation (default sdpa)")
    p.add_argument("--qlora", action="store_true", help="NF4 + double-quant base through bitsandbytes")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="a tiny model of the same structure (smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="OUT", help="write the results here")
    return p.parse_args()


def llama_config(args):
    from transformers import LlamaConfig

    if args.tiny:
        shape = dict(vocab_size=1024, hidden_size=128, intermediate_size=352, num_attention_heads=4, num_key_value_heads=2)
    else:  # Llama-3-8B
        shape = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                     num_key_value_heads=8)
    kw = dict(shape, num_hidden_layers=args.layers, max_position_embeddings=8192, rms_norm_eps=1e-5,
              tie_word_embeddings=False, attention_bias=False, mlp_bias=False, use_cache=False,
              bos_token_id=None if args.tiny else 128000, eos_token_id=None if args.tiny else 128001,
              attn_implementation=args.attn)
    # transformers 5 keeps RoPE settings in rope_parameters; 4.x takes rope_theta.
    if "rope_parameters" in inspect.signature(LlamaConfig.__init__).parameters:
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
    else:
        kw["rope_theta"] = 500000.0
    return LlamaConfig(**kw)


def build_model(args, torch):
    """Random bf16 weights allocated and initialised on the device itself."""
    from transformers import LlamaForCausalLM

    cfg = llama_config(args)
    t0 = time.perf_counter()
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(args.device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    if args.qlora:
        quantize_projections(model, torch)
    sync(torch, args.device)
    n = sum(p.numel() for p in model.parameters())
    w = model.model.layers[0].self_attn.q_proj.weight
    print(f"peer: model built in {time.perf_counter() - t0:.1f} s: {n / 1e9:.2f} B parameters, base "
          f"{'NF4 via bitsandbytes' if args.qlora else str(w.dtype).replace('torch.', '')} on {w.device}, "
          f"attention {model.config._attn_implementation}", flush=True)
    return model


def quantize_projections(model, torch):
    """Replace the 7 projections of every layer by bnb Linear4bit (NF4, double quant)."""
    import bitsandbytes as bnb

    for layer in model.model.layers:
        for parent, names in ((layer.self_attn, TARGETS[:4]), (layer.mlp, TARGETS[4:])):
            for name in names:
                lin = getattr(parent, name)
                q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False, compute_dtype=torch.bfloat16,
                                      compress_statistics=True, quant_type="nf4", device="meta")
                q.weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False, compress_statistics=True,
                                             quant_type="nf4")
                setattr(parent, name, q.to(lin.weight.device))  # quantizes on the way to the GPU
                del lin
    gc.collect()


def add_lora(model, args):
    from peft import LoraConfig, get_peft_model

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    lc = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=TARGETS, bias="none",
                    task_type="CAUSAL_LM")
    model = get_peft_model(model, lc)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in trainable})
    print(f"peer: LoRA r={args.r} alpha={args.alpha:g} on {len(TARGETS)} projections: "
          f"{sum(p.numel() for p in trainable) / 1e6:.1f} M trainable ({', '.join(dtypes)}), "
          f"gradient checkpointing {getattr(model, 'is_gradient_checkpointing', '?')}", flush=True)
    return model, trainable


def sync(torch, device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def run_batch(model, trainable, args, torch, B):
    dev = args.device
    cuda = str(dev).startswith("cuda")
    opt = torch.optim.AdamW(trainable, lr=args.lr)
    g = torch.Generator(device=dev)
    g.manual_seed(args.seed + B)
    V = model.config.vocab_size
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for step in range(args.warmup + args.steps):
        ids = torch.randint(0, V, (B, args.seq), device=dev, generator=g)
        sync(torch, dev)
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(torch, dev)
        dt = time.perf_counter() - t0
        losses.append(float(loss.detach()))
        if step >= args.warmup:
            times.append(dt)
        print(f"peer: batch {B} step {step + 1}/{args.warmup + args.steps} {dt:.3f} s loss {losses[-1]:.4f}"
              f"{'' if step >= args.warmup else ' (warm-up)'}", flush=True)
    step_s = sum(times) / len(times)
    r = {"system": "hf-peft" + ("-qlora" if args.qlora else ""), "batch": B, "seq": args.seq, "layers": args.layers,
         "steps_timed": len(times), "step_s": step_s, "tok_s": B * args.seq / step_s, "step_times": times,
         "loss_first": losses[0], "loss_last": losses[-1]}
    if cuda:
        free, total = torch.cuda.mem_get_info()
        r.update(peak_gib=torch.cuda.max_memory_allocated() / GIB, reserved_gib=torch.cuda.max_memory_reserved() / GIB,
                 device_gib=(total - free) / GIB)
    print(f"peer: batch {B}: {r['tok_s']:.0f} tok/s, {step_s:.3f} s/step"
          + (f", peak allocated {r['peak_gib']:.2f} GiB (reserved {r['reserved_gib']:.2f}, device in use "
             f"{r['device_gib']:.2f})" if cuda else ""), flush=True)
    del opt
    return r


def main():
    args = parse_args()
    info = {"system": "hf-peft" + ("-qlora" if args.qlora else ""), "argv": sys.argv[1:], "results": []}
    try:
        import torch
        import transformers
        import peft
    except ImportError as e:
        print(f"peer: cannot run: {e} (needs torch, transformers and peft)", file=sys.stderr)
        return 2
    info.update(torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__)
    if args.qlora:
        try:
            import bitsandbytes
            info["bitsandbytes"] = bitsandbytes.__version__
        except Exception as e:  # ImportError, or a CUDA-setup failure inside bitsandbytes
            info["skipped"] = f"bitsandbytes is not importable ({type(e).__name__}: {e})"
            print(f"peer: --qlora skipped: {info['skipped']}; install bitsandbytes to run the QLoRA peer", flush=True)
            write_json(args, info)
            return 0
    if str(args.device).startswith("cuda"):
        if not torch.cuda.is_available():
            print("peer: no CUDA device (use --device cpu --tiny for a smoke test)", file=sys.stderr)
            return 2
        info["gpu"] = torch.cuda.get_device_name()
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(args.seed)
    print(f"peer: torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
          f"{info.get('gpu', args.device)}", flush=True)
    model, trainable = add_lora(build_model(args, torch), args)
    for B in args.batch:
        try:
            info["results"].append(run_batch(model, trainable, args, torch, B))
        except torch.cuda.OutOfMemoryError as e:
            print(f"peer: batch {B}: out of memory ({str(e).splitlines()[0]})", flush=True)
            info["results"].append({"system": info["system"], "batch": B, "seq": args.seq, "error": "out of memory"})
            for p in trainable:
                p.grad = None
        write_json(args, info)  # what is done survives a later failure
    return 0


def write_json(args, info):
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
