#!/usr/bin/env python3
"""Train the small byte-level BPE tokenizers committed under tests/fixtures/tokenizers/.

Regenerate (needs `pip install tokenizers`; the committed files came from tokenizers 0.23.3):

    python3 tests/py/make_bytelevel_tokenizer.py

Writes two tokenizers trained by Hugging Face `tokenizers` on the text below (vocab 3000):

  bytelevel-llama3.json  Llama-3 layout: Sequence[Split(Llama-3 regex, Isolated),
                         ByteLevel(use_regex=False)], merges in the [["a", "b"]] list form,
                         ignore_merges=true, post-processor Sequence[ByteLevel, Template
                         "<|begin_of_text|> $A"], Llama-3 chat special tokens.
  bytelevel-gpt2.json    GPT-2 layout: ByteLevel(add_prefix_space=True, use_regex=True) with
                         the built-in GPT-2 regex, merges in the legacy "a b" string form,
                         template "$A <|endoftext|>", and added tokens with lstrip / rstrip /
                         single_word / normalized flags.

The C tokenizer is compared against HF on these by tests/py/tokenizer_parity.py.
"""
import json
import os
import sys

from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")

TRAIN = """\
Tokenizers split text into pieces that a language model can read. A byte-level tokenizer
never meets an unknown character: every string is a sequence of bytes, and each byte has a token.
The merges learned from a corpus join frequent pairs into longer tokens, so common words become
single tokens while rare words are spelled out from smaller pieces. This is why the same word can
cost one token in English and five in another language, and why numbers are often split in groups.
It's simple: we're training, they've trained, I'm testing, you'll see, he'd agree, she's right.
The model reads ids, not characters. Training data matters; the tokenizer was trained on it first.
Large language models like Llama, Mistral and Qwen use BPE tokenizers with vocabularies of 32,000
to 152,000 tokens. Fine-tuning with QLoRA keeps the base weights frozen in 4-bit NF4 and trains
small low-rank adapters on top, which lets a 70 billion parameter model train on a single GPU.
Numbers: 1, 2, 3, 10, 20, 100, 256, 512, 1024, 2048, 4096, 8192, 65536, 3.14, 2.71828, 1e-5, 0.001.
In 2023 and 2024 many open models were released; version 3.1 added a 128k context window.
Deutsch: Der schnelle braune Fuchs springt über den faulen Hund. Grüße aus München und Köln!
Schöne Größe, müde Bären, fröhliche Kinder, Straßenbahn, Äquator, Öffentlichkeit, Übung macht den Meister.
Français : Le cœur a ses raisons que la raison ne connaît point. Où est la bibliothèque ? À bientôt !
Español: ¿Dónde está la estación? ¡Qué día tan bonito! El niño comió una manzana.
中文：自然语言处理是人工智能的一个重要领域。我们使用分词器把文本切分成词元。今天天气很好，我们去学校学习。
这个模型可以理解中文和英文。数据、训练、推理、评估都是机器学习的步骤。
日本語：吾輩は猫である。名前はまだ無い。東京タワーとスカイツリー。プログラムを書きます。ありがとうございます。
한국어: 자연어 처리는 재미있습니다. 감사합니다. 서울에서 만나요.
Русский: Быстрая коричневая лиса прыгает через ленивую собаку. Москва, Санкт-Петербург, спасибо.
العربية: اللغة العربية جميلة. شكرا لك. مرحبا بكم في المدينة. الكتاب على الطاولة.
हिन्दी: भारत एक विशाल देश है। धन्यवाद। मैं हिंदी बोलता हूँ।
Ελληνικά: Η γρήγορη καφέ αλεπού. Ευχαριστώ πολύ.
Emoji 😀😂🤣❤️👍🙏🎉🔥✨🚀 and people 👨‍💻 👩‍🔬 👍🏽 🇫🇷 — the zero-width joiner glues them.
def train(model, data, epochs=3, lr=1e-4):
    for epoch in range(epochs):
        for batch in data:
            loss = model(batch).loss
            loss.backward()
            optimizer.step()
    return model

int main(int argc, char **argv) {
\tfor (int i = 0; i < argc; i++) {
\t\tprintf("%s\\n", argv[i]);
\t}
\treturn 0;
}
{"name": "qtrain", "version": "0.1.0", "dependencies": ["cjson", "pcre2"], "ok": true}
<div class="container"><a href="https://example.com/page?id=42">link</a></div>
SELECT name, count(*) FROM tokens GROUP BY name HAVING count(*) > 10;
    indented line with four spaces
        eight spaces
\t\ttwo tabs
trailing whitespace   \n
"""


def corpus():
    lines = TRAIN.split("\n")
    # a little variety beyond the paragraphs: numbers and words in combinations
    words = [w for w in TRAIN.split() if w.isalpha()]
    for i in range(400):
        lines.append(f"{words[i % len(words)]} {i * 37 % 10007} {words[(i * 7) % len(words)]}, "
                     f"{words[(i * 13) % len(words)].upper()} {i}.{i % 10}")
    return lines


def train(pre, specials):
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre
    trainer = BpeTrainer(vocab_size=3000, special_tokens=specials, show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    tok.decoder = decoders.ByteLevel()
    return tok


def main():
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "tokenizers")
    os.makedirs(out_dir, exist_ok=True)

    # Llama-3 layout
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                "<|reserved_special_token_1|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok = train(pre, specials)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A:0 <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])])
    j = json.loads(tok.to_str())
    j["model"]["ignore_merges"] = True
    if j["model"]["merges"] and isinstance(j["model"]["merges"][0], str):
        j["model"]["merges"] = [m.split(" ", 1) for m in j["model"]["merges"]]
    write(out_dir, "bytelevel-llama3.json", j)

    # GPT-2 layout
    pre = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    tok = train(pre, ["<|endoftext|>"])
    tok.add_tokens([AddedToken("<mask>", lstrip=True, special=True, normalized=False),
                    AddedToken("<pad>", rstrip=True, special=True, normalized=False),
                    AddedToken("[TOOL]", special=False, normalized=True),
                    AddedToken("wordtok", single_word=True, special=False, normalized=False)])
    tok.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", pair="$A:0 <|endoftext|>:0 $B:1 <|endoftext|>:1",
        special_tokens=[("<|endoftext|>", tok.token_to_id("<|endoftext|>"))])
    j = json.loads(tok.to_str())
    if j["model"]["merges"] and not isinstance(j["model"]["merges"][0], str):
        j["model"]["merges"] = [" ".join(m) for m in j["model"]["merges"]]
    write(out_dir, "bytelevel-gpt2.json", j)


def write(out_dir, name, j):
    path = os.path.join(out_dir, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False, indent=1)
        f.write("\n")
    tok = Tokenizer.from_file(path)  # must load back in HF
    size = os.path.getsize(path)
    print(f"{path}: vocab {tok.get_vocab_size()}, merges {len(j['model']['merges'])}, {size} bytes")
    if size > 300_000:
        sys.exit(f"{name} is larger than 300 KB; lower vocab_size")


if __name__ == "__main__":
    main()
