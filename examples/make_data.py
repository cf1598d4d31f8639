#!/usr/bin/env python3
"""Write a small instruction dataset that the project generates itself (no download), in the
three JSONL formats qtrain reads, for example runs and smoke tests:

    python3 examples/make_data.py --format chat --out runs/data            # train.jsonl, eval.jsonl
    python3 examples/make_data.py --format alpaca --n 5000 --eval 500 --seed 1 --out runs/alpaca

Every example is a small task with one exact answer (add, subtract, reverse words, sort
numbers, count letters, uppercase), so a model fine-tuned on it can be checked by exact match.
The same arguments always give the same files (Python's random with --seed; stdlib only).
"""
import argparse
import json
import os
import random

WORDS = ("apple river stone cloud garden lamp forest window silver bread candle mountain ocean paper "
         "tiger violin winter yellow zebra harbor meadow rocket saddle turtle").split()


def task(rng):
    """(instruction, input, answer): the input part is empty for tasks that fit in one line."""
    kind = rng.randrange(6)
    if kind == 0:
        a, b = rng.randrange(1000), rng.randrange(1000)
        return "Add the two numbers.", f"{a} and {b}", f"{a} + {b} = {a + b}."
    if kind == 1:
        a, b = rng.randrange(1000), rng.randrange(1000)
        return f"What is {a} minus {b}?", "", f"{a} - {b} = {a - b}."
    if kind == 2:
        w = rng.sample(WORDS, rng.randint(3, 6))
        return "Reverse the order of the words.", " ".join(w), " ".join(reversed(w))
    if kind == 3:
        xs = [rng.randrange(100) for _ in range(rng.randint(3, 7))]
        return "Sort the numbers from smallest to largest.", ", ".join(map(str, xs)), ", ".join(map(str, sorted(xs)))
    if kind == 4:
        w, c = rng.choice(WORDS), rng.choice("aeiou")
        n = w.count(c)
        return f"How many times does the letter '{c}' appear in the word \"{w}\"?", "", \
            f"The letter '{c}' appears {n} time{'s' if n != 1 else ''} in \"{w}\"."
    w = rng.sample(WORDS, rng.randint(2, 4))
    return "Write the words in capital letters.", " ".join(w), " ".join(x.upper() for x in w)


def record(fmt, rng):
    ins, inp, out = task(rng)
    if fmt == "alpaca":
        return {"instruction": ins, "input": inp, "output": out}
    question = ins + (f"\n{inp}" if inp else "")
    if fmt == "text":
        return {"text": f"Question: {question}\nAnswer: {out}"}
    msgs = [{"role": "system", "content": "You answer with the result only."}] if rng.random() < 0.5 else []
    msgs += [{"role": "user", "content": question}, {"role": "assistant", "content": out}]
    if rng.random() < 0.3:  # a second turn
        ins2, inp2, out2 = task(rng)
        msgs += [{"role": "user", "content": ins2 + (f"\n{inp2}" if inp2 else "")}, {"role": "assistant", "content": out2}]
    return {"messages": msgs}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--format", choices=["chat", "alpaca", "text"], default="chat")
    ap.add_argument("--n", type=int, default=2000, help="train examples")
    ap.add_argument("--eval", type=int, default=200, help="eval examples (0: no eval.jsonl)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="folder for train.jsonl and eval.jsonl")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = random.Random(args.seed)
    for name, n in (("train", args.n), ("eval", args.eval)):
        if n <= 0:
            continue
        path = os.path.join(args.out, name + ".jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for _ in range(n):
                f.write(json.dumps(record(args.format, rng), ensure_ascii=False) + "\n")
        print(f"wrote {n} {args.format} examples to {path}")


if __name__ == "__main__":
    main()
