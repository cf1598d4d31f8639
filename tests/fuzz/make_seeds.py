#!/usr/bin/env python3
"""Seed corpora for the libFuzzer targets in tests/fuzz/, collected from the project's own
files (tests/fixtures, configs, docs, the hand-written tests/fuzz/seeds/<target>/) and small
files generated here (safetensors and GGUF of every dtype, trimmed tokenizer.json variants),
so nothing bulky is committed. Standard library only.

    python3 tests/fuzz/make_seeds.py OUT_DIR     # OUT_DIR/<target>/<seed files>
"""
import glob
import hashlib
import json
import os
import re
import struct
import sys

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(SRC, "tests", "fixtures")
OUT = None


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def hand_written(target):
    for p in sorted(glob.glob(os.path.join(SRC, "tests", "fuzz", "seeds", target, "*"))):
        put(target, read(p))


# ------------------------------------------------------------------ config
def config():
    files = glob.glob(os.path.join(SRC, "configs", "*.yaml")) + glob.glob(os.path.join(SRC, "bench", "*.yaml"))
    texts = [read(p) for p in sorted(files)]
    for md in sorted(glob.glob(os.path.join(SRC, "docs", "*.md")) + [os.path.join(SRC, "README.md")]):
        for block in re.findall(r"```ya?ml\n(.*?)```", read(md).decode(errors="replace"), re.S):
            texts.append(block.encode())
    overrides = [b"lora.r=8", b"lora.targets=q,v", b"train.lr=2e-4", b"memory.gpu_budget=24GiB",
                 b"data.format=chat", b"output.dir=/tmp/x", b"train.epochs=1.5", b"model.synthetic=tiny"]
    for i, t in enumerate(texts):
        put("fuzz_config", t)
        put("fuzz_config", t + b"\0" + b"\0".join(overrides[i % 4:i % 4 + 3]))
    hand_written("fuzz_config")


# ------------------------------------------------------------------ HF config.json
def hfconfig():
    for p in sorted(glob.glob(os.path.join(FIX, "models", "*", "config.json"))):
        put("fuzz_hfconfig", read(p))
        put("fuzz_peft", b"\0" + read(p))  # a wrong file where the adapter config goes
    for p in sorted(glob.glob(os.path.join(FIX, "models", "*", "peft_adapter", "adapter_config.json"))):
        put("fuzz_peft", b"\0" + read(p))
    for p in sorted(glob.glob(os.path.join(FIX, "models", "*", "peft_adapter", "adapter_model.safetensors"))):
        put("fuzz_peft", b"\1" + read(p))
    hand_written("fuzz_hfconfig")
    hand_written("fuzz_peft")


# ------------------------------------------------------------------ safetensors
ST_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32,
           "F32": 32, "F64": 64, "I64": 64, "U64": 64, "C64": 64, "F8_E4M3": 8, "F8_E5M2": 8, "F4": 4}


def safetensors(tensors, meta=None, pad=True):
    """tensors: [(name, dtype, shape)]; data bytes are a counting pattern."""
    header, blobs, off = {}, [], 0
    if meta is not None:
        header["__metadata__"] = meta
    for name, dt, shape in tensors:
        n = 1
        for s in shape:
            n *= s
        nb = n * ST_BITS[dt] // 8
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + nb]}
        blobs.append(bytes((i * 37 + 11) & 0xFF for i in range(nb)))
        off += nb
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def st_seeds():
    put("fuzz_safetensors", safetensors([]))
    put("fuzz_safetensors", safetensors([], meta={"format": "pt"}))
    for dt in ST_BITS:
        shape = [2, 3] if ST_BITS[dt] != 4 else [2, 4]
        put("fuzz_safetensors", safetensors([("w." + dt.lower(), dt, shape)], meta={"format": "pt", "k": dt}))
    put("fuzz_safetensors", safetensors([("a", "BF16", [3]), ("b", "F32", [2, 2]), ("c", "F16", [0, 5]),
                                         ("d", "I64", []), ("e", "U8", [1, 1, 1, 1, 1, 1, 1, 1])], pad=False))
    put("fuzz_safetensors", safetensors([("model.layers.0.self_attn.q_proj.weight", "BF16", [4, 4]),
                                         ("model.embed_tokens.weight", "F32", [5, 4])], meta={}))
    for p in sorted(glob.glob(os.path.join(FIX, "models", "*", "*.safetensors"))):
        b = read(p)
        if len(b) <= 65536:
            put("fuzz_safetensors", b)
    # the two adapter-shaped files, as the peft target's second file
    put("fuzz_peft", b"\1" + safetensors([
        ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "F32", [4, 8]),
        ("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", "F32", [8, 4])]))
    hand_written("fuzz_safetensors")
    # the index of tests/fixtures/models/llama-gqa split into two shards (as fuzz_st_index lays it out)
    b = read(os.path.join(FIX, "models", "llama-gqa", "model.safetensors"))
    names = sorted(k for k in json.loads(b[8:8 + struct.unpack("<Q", b[:8])[0]]) if k != "__metadata__")
    half = len(names) // 2
    wm = {n: "model-%05d-of-00002.safetensors" % (1 + (i >= half)) for i, n in enumerate(names)}
    put("fuzz_st_index", json.dumps({"metadata": {"total_size": len(b)}, "weight_map": wm}, indent=2))
    put("fuzz_st_index", json.dumps({"weight_map": dict(list(wm.items())[:3])}))
    put("fuzz_st_index", json.dumps({"weight_map": {names[0]: "../model-00001-of-00002.safetensors"}}))
    hand_written("fuzz_st_index")


# ------------------------------------------------------------------ GGUF
def gguf_str(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf(kvs, tensors, align=32, version=3):
    """kvs: [(key, type, value)] with type 4 (u32), 6 (f32), 8 (str), 9 ((elem, [values])), 7 (bool);
    tensors: [(name, [ne...], ggml_type, nbytes)]."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    fmt = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q", 11: "<q", 12: "<d"}
    for k, t, v in kvs:
        out += gguf_str(k) + struct.pack("<I", t)
        if t == 8:
            out += gguf_str(v)
        elif t == 9:
            et, vals = v
            out += struct.pack("<IQ", et, len(vals))
            out += b"".join(gguf_str(x) if et == 8 else struct.pack(fmt[et], x) for x in vals)
        else:
            out += struct.pack(fmt[t], v)
    off = 0
    for name, ne, ty, nb in tensors:
        out += gguf_str(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", x) for x in ne)
        out += struct.pack("<IQ", ty, off)
        off += nb + (-nb % align)
    out += b"\0" * (-len(out) % align)
    for name, ne, ty, nb in tensors:
        out += bytes((i * 13 + 5) & 0xFF for i in range(nb)) + b"\0" * (-nb % align)
    return out


def gguf_seeds():
    meta = [("general.architecture", 8, "llama"), ("general.alignment", 4, 32), ("llama.block_count", 4, 2),
            ("llama.rope.freq_base", 6, 500000.0), ("tokenizer.ggml.tokens", 9, (8, ["a", "b", "<s>"])),
            ("tokenizer.ggml.scores", 9, (6, [0.0, -1.0, -2.0])), ("general.flag", 7, 1),
            ("tokenizer.ggml.token_type", 9, (5, [1, 1, 3]))]
    put("fuzz_gguf", gguf(meta, []))
    put("fuzz_gguf", gguf(meta[:1], [("token_embd.weight", [8, 3], 0, 96)]))  # F32
    put("fuzz_gguf", gguf(meta, [("blk.0.attn_q.weight", [32, 2], 8, 68),       # Q8_0: 34 bytes / 32
                                 ("output_norm.weight", [8], 1, 16),             # F16
                                 ("blk.0.ffn_down.weight", [256, 1], 12, 144)], align=64))  # Q4_K
    put("fuzz_gguf", gguf(meta, [("a", [4], 0, 16)], version=2))
    for p in sorted(glob.glob(os.path.join(FIX, "**", "*.gguf"), recursive=True)):
        if os.path.getsize(p) <= 65536:
            put("fuzz_gguf", read(p))
    hand_written("fuzz_gguf")
    # llama-imatrix files for tests/fixtures/models/llama-gqa (H 64, I 96, 2 layers, 4 x 16 query heads)
    H, I, L, Q = 64, 96, 2, 64
    rows = {"attn_q": H, "attn_k": H, "attn_v": H, "attn_output": Q, "ffn_gate": H, "ffn_up": H, "ffn_down": I}
    ents = [("blk.%d.%s.weight" % (l, k), n) for l in range(L) for k, n in rows.items()]
    dat = struct.pack("<i", len(ents))
    for name, n in ents:
        dat += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", 10, n)
        dat += struct.pack("<%df" % n, *[1.0 + (i % 7) for i in range(n)])
    put("fuzz_imatrix", dat)
    put("fuzz_imatrix", dat[:200])
    tens = []
    for name, n in ents[:4]:
        tens.append((name + ".in_sum2", [n, 1], 0, 4 * n))
        tens.append((name + ".counts", [1, 1], 0, 4))
    put("fuzz_imatrix", gguf([("general.type", 8, "imatrix")], tens))
    hand_written("fuzz_imatrix")


# ------------------------------------------------------------------ tokenizers
def trim_tokenizer(j, keep=260):
    """Keep the first `keep` vocab ids (plus what added tokens need) and the merges among them."""
    j = json.loads(json.dumps(j))
    m = j["model"]
    vocab = {k: v for k, v in m["vocab"].items() if v < keep}
    m["vocab"] = vocab
    merges = []
    for mg in m.get("merges", []):
        a, b = mg.split(" ", 1) if isinstance(mg, str) else mg
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(mg)
    m["merges"] = merges
    j["added_tokens"] = [a for a in j.get("added_tokens", []) if a["id"] < keep + 8]
    return j


def tok_seeds():
    fixtures = []
    for p in sorted(glob.glob(os.path.join(FIX, "tokenizers", "*.json"))):
        j = json.loads(read(p))
        fixtures.append(j)
        small = trim_tokenizer(j)
        put("fuzz_tokenizer_json", json.dumps(small))
        put("fuzz_tokenizer_json", json.dumps(trim_tokenizer(j, 40), separators=(",", ":")))
    base = trim_tokenizer(fixtures[0], 120)
    # sentencepiece-style BPE (Llama-2 / Mistral layout): Metaspace or Prepend+Replace, byte fallback
    sp = json.loads(json.dumps(base))
    sp["model"]["byte_fallback"] = True
    sp["model"]["unk_token"] = "<unk>"
    sp["model"]["fuse_unk"] = True
    sp["model"]["vocab"].update({"<unk>": 200, "<0x0A>": 201, "<0xE2>": 202, "\u2581": 203, "\u2581a": 204})
    sp["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    sp["pre_tokenizer"] = None
    sp["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
        {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    sp["post_processor"] = {"type": "TemplateProcessing",
                            "single": [{"SpecialToken": {"id": "<unk>", "type_id": 0}},
                                       {"Sequence": {"id": "A", "type_id": 0}}],
                            "pair": [], "special_tokens": {"<unk>": {"id": "<unk>", "ids": [200], "tokens": ["<unk>"]}}}
    put("fuzz_tokenizer_json", json.dumps(sp))
    ms = json.loads(json.dumps(sp))
    ms["normalizer"] = {"type": "NFC"}
    ms["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": True}
    ms["decoder"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}
    ms["post_processor"] = {"type": "BertProcessing", "sep": ["<unk>", 200], "cls": ["<unk>", 200]}
    put("fuzz_tokenizer_json", json.dumps(ms))
    sq = json.loads(json.dumps(base))
    sq["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}|\\s+(?!\\S)"}, "behavior": "Removed", "invert": True},
        {"type": "Split", "pattern": {"String": ","}, "behavior": "MergedWithPrevious", "invert": False},
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    sq["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]}
    sq["post_processor"] = {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0],
                            "trim_offsets": True, "add_prefix_space": True}
    put("fuzz_tokenizer_json", json.dumps(sq))
    hand_written("fuzz_tokenizer_json")
    # the same files for the GGUF vocabulary export (first byte: with a tokenizer_config.json or not)
    for p in sorted(glob.glob(os.path.join(OUT, "fuzz_tokenizer_json", "*"))):
        b = read(p)
        if len(b) < 60000:
            put("fuzz_gguf_vocab", b"\0" + b)
            put("fuzz_gguf_vocab", b"\1" + b)
    hand_written("fuzz_gguf_vocab")

    # text for the encoder
    corpus = read(os.path.join(FIX, "tokenizer_corpus.txt"))
    lines = corpus.split(b"\n")
    for i in range(0, len(lines), 3):
        put("fuzz_tokenizer_encode", b"\n".join(lines[i:i + 3]))
    for s in ["", " ", "  \n\n\t", "<|endoftext|>", "a<|eot_id|>b", " [TOOL] wordtok x<mask> <pad> y",
              "\u00e9\u4e2d\U0001F600\u200b\ufeff", "'s'S'LL 123456789", "\r\n\r\n  \n"]:
        put("fuzz_tokenizer_encode", s)
    hand_written("fuzz_tokenizer_encode")


# ------------------------------------------------------------------ data
def data_seeds():
    text = [{"text": "Hello world. It's 42."}, {"text": ""}, {"text": "<|eot_id|> plain \u00e9\n\n"}]
    alpaca = [{"instruction": "Add the numbers.", "input": "1 and 2", "output": "3"},
              {"instruction": "Say hi.", "input": "", "output": "hi"},
              {"instruction": "x", "output": "y"}]
    chat = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": " Hello! "}]},
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                          {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]},
            {"messages": [{"role": "assistant", "content": "only"}]}]
    tokens = [{"input_ids": [1, 2, 3, 4]}, {"input_ids": [7, 7]}, {"input_ids": [0, 2929, 5]}]
    for fmt, recs in ((0, text), (1, alpaca), (2, chat), (3, tokens)):
        for r in recs:  # fuzz_jsonl: byte 0 = text, alpaca, chat llama3 / chatml / llama2, tokens
            line = json.dumps(r).encode()
            for style in ((fmt,) if fmt < 2 else (2, 3, 4) if fmt == 2 else (5,)):
                put("fuzz_jsonl", bytes([style]) + line)
        body = b"\n".join(json.dumps(r).encode() for r in recs * 3) + b"\n"
        for opt in (fmt, fmt | 0x20, fmt | 0x40 | 0x80, fmt + 4 | 0x20):  # fuzz_dataset: format = byte % 4
            put("fuzz_dataset", bytes([opt, 9]) + body)
        put("fuzz_dataset", bytes([fmt | 0x40, 40]) + body.replace(b"\n", b"\r\n") + b"\n\n  \n{bad\n")
    hand_written("fuzz_jsonl")
    hand_written("fuzz_dataset")
    hand_written("fuzz_tokconfig")


def main():
    global OUT
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    OUT = sys.argv[1]
    os.makedirs(OUT, exist_ok=True)
    config()
    hfconfig()
    st_seeds()
    gguf_seeds()
    tok_seeds()
    data_seeds()
    for t in sorted(os.listdir(OUT)):
        print(f"{t}: {len(os.listdir(os.path.join(OUT, t)))} seeds")


if __name__ == "__main__":
    main()
