#!/usr/bin/env python3
"""Chat-template parity of qtrain's renderer (through tests/tools/render_chat) with Hugging Face
transformers' apply_chat_template, the oracle, using the official Jinja chat_template strings of
Meta-Llama-3-8B-Instruct, Qwen2-7B-Instruct (ChatML) and Llama-2-7b-chat-hf.

For each template, on fixed conversations (system or not, multi-turn, whitespace that the
templates strip or keep, Unicode whitespace, empty content, non-ASCII) and random ones drawn
fresh each run (seed printed; QT_TEST_SEED=n replays):
  * the rendered string equals apply_chat_template(tokenize=False), with the style given
    explicitly and with `auto` reading a tokenizer_config.json that holds the official template
    (so Qwen2's default system message is found in the template);
  * the ids equal HF's tokenization of HF's rendered string (add_special_tokens=False) with the
    same tokenizer.json: byte-level fixtures with the chat special tokens added, and for llama2
    also the real Llama-2 sentencepiece tokenizer converted to tokenizer.json when it is present;
  * conversations the Llama-2 template rejects (roles not alternating) are rejected by us too.

Exit 0 when everything matches, 1 on a mismatch (the first is printed), 77 (skipped) when
transformers or jinja2 is missing.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

SKIP = 77

# The chat_template values of the official tokenizer_config.json files.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
QWEN2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
    "You are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}")
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
    "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
    "loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif "
    "message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

STYLES = {  # name: (template, bos_token, eos_token)
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
    "chatml": (QWEN2, None, "<|im_end|>"),
    "llama2": (LLAMA2, "<s>", "</s>"),
}
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|im_start|>", "<|im_end|>", "<s>", "</s>"]


def skip(msg):
    print(f"SKIP: {msg}")
    sys.exit(SKIP)


def M(role, content):
    return {"role": role, "content": content}


FIXED = [
    [M("system", "You are terse."), M("user", "Hi there!"), M("assistant", "Hello! How can I help?")],
    [M("user", "What is 2+2?"), M("assistant", "4"), M("user", "And 3+3?"), M("assistant", "6")],
    [M("user", "  padded question \n"), M("assistant", "\n  padded answer  \n\n")],
    [M("system", "  system with spaces "), M("user", "ünïcödé 中文 😀"), M("assistant", "naïve café — ok")],
    [M("user", "x"), M("assistant", "")],
    [M("user", "a\u3000"), M("assistant", "\xa0b\u2003\x1c")],
    [M("user", "line1\nline2\n\nline3"), M("assistant", "code:\n```\nprint(1)\n```\n")],
    [M("system", ""), M("user", "empty system"), M("assistant", "fine")],
    [M("user", "only a question")],
]
REJECTED_BY_LLAMA2 = [
    [M("assistant", "starts with assistant"), M("user", "then user")],
    [M("user", "one"), M("user", "two")],
]
WORDS = ["the", "model", "Hello", "world", "tokens", "It's", "42", "3.14", "Grüße", "中文", "😀", "QLoRA",
         "don't", "(x)", "a+b", "—", "über"]
GLUE = [" ", " ", "  ", "\n", "\n\n", "\t", ", ", ". ", "! ", ": "]
EDGE = ["", "", "", " ", "\n", " \n ", "\t", "\u3000"]


def random_text(rng):
    n = rng.randint(1, 10)
    s = "".join(rng.choice(WORDS) + (rng.choice(GLUE) if i + 1 < n else "") for i in range(n))
    return rng.choice(EDGE) + s + rng.choice(EDGE)


def random_conversation(rng):
    msgs = [M("system", random_text(rng))] if rng.random() < 0.5 else []
    for _ in range(rng.randint(1, 3)):
        msgs += [M("user", random_text(rng)), M("assistant", random_text(rng))]
    return msgs


def bytelevel_tokenizers(source_dir, tmp):
    """The byte-level fixtures with the chat tokens they lack added: the GPT-2 layout as it is
    (prefix space), without the prefix space, and the Llama-3 layout (Llama-3 regex)."""
    from tokenizers import AddedToken, Tokenizer, pre_tokenizers
    d = os.path.join(source_dir, "tests", "fixtures", "tokenizers")
    out = []
    for name, src, prefix in (("bytelevel-prefix", "bytelevel-gpt2.json", True),
                              ("bytelevel", "bytelevel-gpt2.json", False),
                              ("bytelevel-llama3", "bytelevel-llama3.json", None)):
        if not os.path.exists(os.path.join(d, src)):
            print(f"note: {src} is missing; not tested")
            continue
        tok = Tokenizer.from_file(os.path.join(d, src))
        have = set(tok.get_vocab(with_added_tokens=True))
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS if s not in have])
        if prefix is not None:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix, use_regex=True)
        path = os.path.join(tmp, name + ".json")
        tok.save(path)
        out.append((name, path))
    return out


def llama2_tokenizer(source_dir, shared_dir, tmp):
    """The real Llama-2 tokenizer (legacy layout), converted as tests/py/tokenizer_parity.py does."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        import tokenizer_parity
        fixtures = tokenizer_parity.llama2_fixtures(shared_dir, tmp)
    except SystemExit:  # it skips when the shared file or sentencepiece is missing
        print("note: the Llama-2 sentencepiece tokenizer is not available; llama2 ids checked on byte-level only")
        return []
    except Exception as ex:  # noqa: BLE001 (any failure of the helper: report and go on)
        print(f"note: could not convert the Llama-2 tokenizer ({ex}); llama2 ids checked on byte-level only")
        return []
    return [(n, p) for n, p in fixtures if n == "llama2-legacy"]


class Checker:
    def __init__(self, render_chat):
        self.render_chat, self.compared, self.first = render_chat, 0, None

    def ours(self, style, convs, model_dir=None, tokenizer=None):
        args = [self.render_chat, "--template", style]
        if model_dir:
            args += ["--model-dir", model_dir]
        if tokenizer:
            args += ["--tokenizer", tokenizer]
        inp = "".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in convs)
        r = subprocess.run(args, input=inp.encode(), capture_output=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {r.stderr.decode(errors='replace')}")
        out = [json.loads(line) for line in r.stdout.decode().splitlines()]
        assert len(out) == len(convs), (len(out), len(convs))
        return out

    def expect(self, what, ok, detail):
        self.compared += 1
        if not ok and self.first is None:
            self.first = (what, detail)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--render-chat", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--shared-dir", default="")
    args = ap.parse_args()
    try:
        import jinja2  # noqa: F401
        import transformers
        from transformers import PreTrainedTokenizerFast
    except ImportError as ex:
        skip(f"needs `pip install transformers jinja2` ({ex})")
    import logging
    logging.getLogger("transformers").setLevel(logging.ERROR)

    seed = int(os.environ.get("QT_TEST_SEED", int(time.time() * 1000) % 1_000_000_007))
    print(f"seed {seed} (QT_TEST_SEED={seed} to replay); transformers {transformers.__version__}")
    rng = random.Random(seed)
    convs = FIXED + [random_conversation(rng) for _ in range(60)]
    chk = Checker(args.render_chat)
    with tempfile.TemporaryDirectory() as tmp:
        toks = bytelevel_tokenizers(args.source_dir, tmp)
        l2toks = llama2_tokenizer(args.source_dir, args.shared_dir, tmp)
        for style, (template, bos, eos) in STYLES.items():
            model_dir = os.path.join(tmp, "model-" + style)
            os.makedirs(model_dir)
            with open(os.path.join(model_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
                json.dump({"chat_template": template, "bos_token": bos, "eos_token": eos}, f)
            cases = convs + (REJECTED_BY_LLAMA2 if style == "llama2" else [])
            for tname, tpath in toks + (l2toks if style == "llama2" else []):
                hf = PreTrainedTokenizerFast(tokenizer_file=tpath, bos_token=bos, eos_token=eos)
                want = []
                for c in cases:
                    try:
                        want.append(hf.apply_chat_template(c, chat_template=template, tokenize=False))
                    except Exception as ex:  # noqa: BLE001 (the template's raise_exception)
                        want.append(ex)
                # explicit chatml has no default system message: Qwen2's comes from its template (auto)
                for how in ("explicit", "auto") if style != "chatml" else ("auto",):
                    if how == "explicit":
                        got = chk.ours(style, cases, tokenizer=tpath)
                    else:
                        got = chk.ours("auto", cases, model_dir=model_dir, tokenizer=tpath)
                    for i, (c, w, g) in enumerate(zip(cases, want, got)):
                        what = f"{style} {how} {tname} conversation {i}"
                        if isinstance(w, Exception):
                            chk.expect(what + " (HF rejects it)", "error" in g, f"HF: {w}; ours: {g}")
                            continue
                        chk.expect(what + " text", g.get("text") == w, f"messages {c!r}\n  HF:   {w!r}\n  ours: {g!r}")
                        ids = hf(w, add_special_tokens=False)["input_ids"]
                        chk.expect(what + " ids", g.get("ids") == ids,
                                   f"text {w!r}\n  HF ids:   {ids}\n  our ids:  {g.get('ids')}")
    print(f"chat template parity: {chk.compared} comparisons "
          f"({len(convs)} conversations x 3 templates x {len(toks)} byte-level tokenizers"
          f"{' + Llama-2 sentencepiece' if l2toks else ''}, explicit and auto)")
    if chk.first:
        print(f"FIRST MISMATCH: {chk.first[0]}\n  {chk.first[1]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
