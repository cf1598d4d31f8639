#!/usr/bin/env python3
"""Token-id parity of qtrain's C tokenizer (through tests/tools/tok_dump) with Hugging Face
`tokenizers`, the oracle, on every line of tests/fixtures/tokenizer_corpus.txt, the whole corpus
as one string, a 1 MB text, and random strings drawn fresh each run (seed printed;
QT_TEST_SEED=n replays), with and without special tokens, and decoding (skip_special_tokens
true and false) of the same ids plus random id lists.

  --which bytelevel  the byte-level BPE fixtures in tests/fixtures/tokenizers/ (made by
                     tests/py/make_bytelevel_tokenizer.py), and two variants of the GPT-2 one that swap in the other normalizers,
                     pre-tokenizers, post-processors and decoders qtrain supports
  --which llama2     the 32k Llama-2 sentencepiece model from the shared folder, converted to
                     tokenizer.json here at test time by transformers' LlamaConverter, in both
                     the legacy (Prepend/Replace normalizer) and the Metaspace layout, and the
                     legacy one with extra added tokens and the Metaspace decoder.

Exit 0 when everything matches, 1 on any mismatch (the first one is printed with both id
lists), 77 (skipped) when a needed package or the shared file is missing.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import unicodedata

SKIP = 77
os.environ.setdefault("RUST_BACKTRACE", "0")  # HF panics on some Strip decodes (counted, see below)


def skip(msg):
    print(f"SKIP: {msg}")
    sys.exit(SKIP)


# ------------------------------------------------------------------ fixtures

def llama2_fixtures(shared_dir, tmp):
    model = os.path.join(shared_dir, "tokenizers", "llama2-sentencepiece", "tokenizer.model")
    if not os.path.exists(model):
        skip(f"{model} is not present (shared test data lives in ../shared; set QTRAIN_SHARED)")
    try:
        import sentencepiece as spm
        from tokenizers import AddedToken, Tokenizer, processors
        from tokenizers.models import BPE
        from transformers.convert_slow_tokenizer import LlamaConverter
        import google.protobuf  # noqa: F401  (LlamaConverter reads the model with it)
    except ImportError as ex:
        skip(f"converting the sentencepiece model needs `pip install transformers sentencepiece protobuf` ({ex})")

    class Slow:  # the attributes LlamaConverter reads from a slow LlamaTokenizer
        def __init__(self, legacy):
            self.vocab_file, self.legacy, self.add_prefix_space = model, legacy, True
            self.sp = spm.SentencePieceProcessor(model_file=model)

        def convert_ids_to_tokens(self, i):
            return self.sp.id_to_piece(i)

    class Patched(LlamaConverter):
        # transformers 5.x's SpmConverter.tokenizer passes the vocab where the extractor wants a
        # model class; build the BPE model as transformers 4.x did (merges ordered by piece score)
        def tokenizer(self, proto):
            from transformers.tokenization_utils_base import generate_merges
            vs = self.vocab(proto)
            vocab = {w: i for i, (w, _) in enumerate(vs)}
            tok = Tokenizer(BPE(vocab, generate_merges(vocab, vs), unk_token=proto.trainer_spec.unk_piece,
                                fuse_unk=True, byte_fallback=True, dropout=None))
            tok.add_special_tokens([AddedToken(p, normalized=False, special=True) for p in ("<unk>", "<s>", "</s>")])
            return tok

    def convert(legacy):
        import transformers
        try:
            tok = LlamaConverter(Slow(legacy)).converted()
            how = "LlamaConverter"
        except AttributeError:
            tok = Patched(Slow(legacy)).converted()
            how = "LlamaConverter with the 5.x merge-extraction fix"
        print(f"  converted {os.path.basename(model)} (legacy={legacy}) with transformers {transformers.__version__} {how}")
        return tok

    out = []
    for legacy in (True, False):
        tok = convert(legacy)
        # what LlamaTokenizerFast sets: BOS in front (Llama-2's tokenizer.json has this template)
        tok.post_processor = processors.TemplateProcessing(
            single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", tok.token_to_id("<s>"))])
        name = "llama2-legacy" if legacy else "llama2-metaspace"
        path = os.path.join(tmp, name + ".json")
        tok.save(path)
        out.append((name, path))
        if legacy:
            # the same with added tokens matched in normalized text, stripping flags and the
            # Metaspace decoder (Mistral / TinyLlama style)
            from tokenizers import decoders
            tok.add_tokens([AddedToken("<tool>", normalized=True, special=False),
                            AddedToken("hi there", normalized=True, special=False),
                            AddedToken("<|im_end|>", normalized=False, special=True, lstrip=True, rstrip=True)])
            tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
            path = os.path.join(tmp, "llama2-added.json")
            tok.save(path)
            out.append(("llama2-added", path))
    return out


def bytelevel_fixtures(source_dir, tmp):
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers as pt, processors
    d = os.path.join(source_dir, "tests", "fixtures", "tokenizers")
    out = [(n, os.path.join(d, n + ".json")) for n in ("bytelevel-llama3", "bytelevel-gpt2")]
    # Two variants of the GPT-2 fixture that run every other supported step through HF too:
    # Strip / Replace / Prepend normalizers, Digits, all five Split behaviours and invert,
    # Bert / Roberta processors, Replace / ByteFallback / Fuse / Strip decoders.
    tok = Tokenizer.from_file(out[1][1])
    pad, eot = tok.token_to_id("<pad>"), tok.token_to_id("<|endoftext|>")
    tok.normalizer = normalizers.Sequence([normalizers.Strip(), normalizers.Replace(Regex("[0-9]{4,}"), "####"),
                                           normalizers.Prepend("~")])
    tok.pre_tokenizer = pt.Sequence([pt.Digits(individual_digits=True),
                                     pt.Split(Regex("[.,;:]"), behavior="merged_with_previous"),
                                     pt.Split("-", behavior="merged_with_next"),
                                     pt.ByteLevel(add_prefix_space=True, use_regex=True)])
    tok.post_processor = processors.BertProcessing(("<|endoftext|>", eot), ("<pad>", pad))
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])
    out.append(("bytelevel-mixed1", os.path.join(tmp, "mixed1.json")))
    tok.save(out[-1][1])
    tok.normalizer = None
    tok.pre_tokenizer = pt.Sequence([pt.Split(Regex(r"\p{L}+"), behavior="contiguous", invert=True),
                                     pt.Split(Regex(r"\s+"), behavior="removed"),
                                     pt.Digits(individual_digits=False),
                                     pt.Split(Regex(r"[aeiou]"), behavior="isolated", invert=True),
                                     pt.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.post_processor = processors.RobertaProcessing(("<|endoftext|>", eot), ("<pad>", pad))
    tok.decoder = decoders.Sequence([decoders.Replace(Regex("[ĠĊ]"), "_"), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip("_", 2, 1)])
    out.append(("bytelevel-mixed2", os.path.join(tmp, "mixed2.json")))
    tok.save(out[-1][1])
    return out


# ------------------------------------------------------------------ inputs

def random_strings(rng, corpus_lines, specials, n, newlines):
    """Strings built from pieces that stress the pipeline: corpus fragments, special tokens and
    near-misses, whitespace of every kind, contractions, digits, byte-token look-alikes, rare
    code points, emoji sequences."""
    frags = [l for l in corpus_lines if l]
    ws = [" ", "  ", "   ", "\t", "\r", "\u00a0", "\u3000", "\u2028", "\x0b", "\x0c", "\x00", "\u0085", " \t "]
    if newlines:
        ws += ["\n", "\n\n", " \n", "\r\n"]
    bits = ["'s", "'S", "'ll", "'re", "n't", "▁", "▁▁", "Ġ", "<0x41>", "<0x0A>", "<s", "s>", "<|", "|>", "12",
            "1234567", "٣", "½", "e\u0301", "👍🏽", "👨‍👩‍👧", "🇩🇪", "\ufeff", "\u200d", "\U0010ffff", "ſ", "İ"]

    def rand_char():
        r = rng.random()
        if r < 0.4:
            return chr(rng.randint(0x20, 0x7e))
        if r < 0.6:
            return chr(rng.randint(0xa0, 0x24f))
        if r < 0.75:
            return chr(rng.randint(0x4e00, 0x4fff))
        if r < 0.85:
            return chr(rng.randint(0x1f300, 0x1f64f))
        # any assigned code point; characters newer than PCRE2's Unicode tables (those Python's
        # unicodedata does not know either) may be classed differently from HF's regex engine
        c = chr(rng.randint(0x80, 0x10ffff))
        return c if unicodedata.category(c) not in ("Cn", "Cs") else "x"

    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 12)):
            r = rng.random()
            if r < 0.25:
                f = rng.choice(frags)
                a = rng.randint(0, len(f))
                parts.append(f[a:a + rng.randint(1, 40)])
            elif r < 0.4 and specials:
                s = rng.choice(specials)
                parts.append(s if rng.random() < 0.7 else s[:rng.randint(1, len(s))])
            elif r < 0.6:
                parts.append(rng.choice(ws))
            elif r < 0.75:
                parts.append(rng.choice(bits))
            else:
                parts.append("".join(rand_char() for _ in range(rng.randint(1, 6))))
        s = "".join(parts)
        if not newlines:
            s = s.replace("\n", " ")
        out.append(s)
    return out


def big_text(rng, corpus, randoms, size=1 << 20):
    parts, n = [], 0
    while n < size:
        p = corpus if rng.random() < 0.5 else "\n".join(rng.sample(randoms, 20))
        parts.append(p)
        n += len(p.encode())
    return "".join(parts)


# ------------------------------------------------------------------ running

class Run:
    def __init__(self, tok_dump, tmp):
        self.tok_dump, self.tmp = tok_dump, tmp
        self.compared = self.mismatches = self.hf_panics = 0
        self.first = None

    def ours(self, tokenizer, text, *flags):
        path = os.path.join(self.tmp, "input.txt")
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        p = subprocess.run([self.tok_dump, tokenizer, path, *flags], capture_output=True)
        if p.returncode != 0:
            print(p.stderr.decode(errors="replace"), file=sys.stderr)
            raise SystemExit(f"FAIL: tok_dump {' '.join(flags)} exited with {p.returncode}")
        sys.stderr.write(p.stderr.decode(errors="replace"))
        return p.stdout.decode().split("\n")[:-1]

    def compare(self, what, inp, ours, theirs):
        self.compared += 1
        if ours != theirs:
            self.mismatches += 1
            if self.first is None:
                self.first = (what, inp, ours, theirs)


def check_tokenizer(run, name, path, lines, randoms, docs, big, rng):
    from tokenizers import Tokenizer
    hf = Tokenizer.from_file(path)
    c0, m0 = run.compared, run.mismatches
    inputs = lines + randoms

    # every line, four ways: add_special_tokens x encode_special_tokens
    for add_special in (True, False):
        for split_special in (False, True):
            hf.encode_special_tokens = split_special
            flags = ([] if add_special else ["--no-special"]) + (["--split-special"] if split_special else [])
            ours = run.ours(path, "\n".join(inputs), *flags)
            assert len(ours) == len(inputs), (len(ours), len(inputs))
            for s, o in zip(inputs, ours):
                theirs = hf.encode(s, add_special_tokens=add_special).ids
                run.compare(f"{name} line add_special={add_special} split_special={split_special}", s,
                            [int(x) for x in o.split()], theirs)
    hf.encode_special_tokens = False

    # whole texts as one string: the corpus, random multi-line documents, 1 MB
    for i, doc in enumerate(docs + [big]):
        for add_special in (True, False):
            flags = ["--whole"] + ([] if add_special else ["--no-special"])
            if doc is big:
                flags.append("--time")
            t0 = time.time()
            theirs = hf.encode(doc, add_special_tokens=add_special).ids
            t_hf = time.time() - t0
            ours = [int(x) for x in run.ours(path, doc, *flags)[0].split()]
            label = "corpus" if i == 0 else "1MB text" if doc is big else f"random document {i}"
            run.compare(f"{name} whole {label} add_special={add_special}", doc[:2000], ours, theirs)
            if doc is big and add_special:
                print(f"  {name}: HF encodes the {len(big.encode())}-byte text in {t_hf * 1e3:.0f} ms")

    # decoding: the ids of every line, and random id lists
    vocab = hf.get_vocab_size(with_added_tokens=True)
    id_lists = [hf.encode(s).ids for s in inputs]
    for _ in range(300):
        k = rng.randint(0, 20)
        id_lists.append([rng.randrange(0, vocab + 5) if rng.random() < 0.9 else rng.randrange(0, 300)
                         for _ in range(k)])
    ids_text = "".join(" ".join(map(str, l)) + "\n" for l in id_lists)
    for skip_special in (False, True):
        flags = ["--decode"] + (["--skip-special"] if skip_special else [])
        ours = run.ours(path, ids_text, *flags)
        assert len(ours) == len(id_lists)
        for ids, o in zip(id_lists, ours):
            try:
                theirs = hf.decode(ids, skip_special_tokens=skip_special)
            except BaseException:  # HF's Strip decoder panics when a string is shorter than what it strips
                run.hf_panics += 1
                continue
            run.compare(f"{name} decode skip_special={skip_special}", ids,
                        bytes.fromhex(o).decode("utf-8", errors="replace"), theirs)
    print(f"  {name}: {run.compared - c0} comparisons, {run.mismatches - m0} mismatches")
    if run.hf_panics:
        print(f"  ({run.hf_panics} decodes so far not compared: HF itself panicked on them)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tok-dump", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--shared-dir", default="")
    ap.add_argument("--which", choices=["bytelevel", "llama2"], required=True)
    args = ap.parse_args()
    try:
        import tokenizers
    except ImportError:
        skip("the Python package `tokenizers` (the oracle) is not installed: pip install tokenizers")
    shared = os.environ.get("QTRAIN_SHARED") or args.shared_dir
    seed = int(os.environ.get("QT_TEST_SEED", int(time.time() * 1000) % 1_000_000_007))
    print(f"seed {seed} (QT_TEST_SEED={seed} to replay); tokenizers {tokenizers.__version__}")
    rng = random.Random(seed)

    with tempfile.TemporaryDirectory() as tmp:
        fixtures = llama2_fixtures(shared, tmp) if args.which == "llama2" else bytelevel_fixtures(args.source_dir, tmp)
        with open(os.path.join(args.source_dir, "tests", "fixtures", "tokenizer_corpus.txt"), encoding="utf-8",
                  newline="") as f:
            corpus = f.read()
        lines = corpus.split("\n")
        run = Run(args.tok_dump, tmp)
        for name, path in fixtures:
            with open(path, encoding="utf-8") as f:
                specials = [t["content"] for t in json.load(f).get("added_tokens", [])]
            randoms = random_strings(rng, lines, specials + ["<s>", "</s>", "<|eot_id|>"], 400, newlines=False)
            docs = [corpus] + ["\n".join(random_strings(rng, lines, specials, 30, newlines=True)) for _ in range(5)]
            big = big_text(rng, corpus, randoms)
            check_tokenizer(run, name, path, lines, randoms, docs, big, rng)

    print(f"tokenizer parity ({args.which}): {run.compared} compared, {run.mismatches} mismatches "
          f"({len(lines)} corpus lines, 400 random strings, 6 documents and a 1 MB text per tokenizer)")
    if run.first:
        what, inp, ours, theirs = run.first
        print(f"FIRST MISMATCH: {what}\n  input:  {inp!r}\n  ours:   {ours!r}\n  theirs: {theirs!r}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
