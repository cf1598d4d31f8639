#!/usr/bin/env python3
"""Results of the qtrain vs HF+PEFT benchmark (bench/RESULTS.md). Standard library only.

  compare.py qtrain --metrics M.jsonl --log LOG --batch B --seq T [--skip 2] --merge qtrain.json
      steady-state numbers of one qtrain run (steps after the first --skip, from the
      per-step "step_s" of metrics.jsonl), merged into a JSON list keyed by batch
  compare.py table --qtrain qtrain.json [--peft peft.json] [--smi smi.txt]
      one table: system, batch, tok/s, step s, peak GiB, ratio vs PEFT (PEFT's own run when
      given, else the reference numbers measured for the issue)
"""
import argparse
import json
import os
import re
import sys

GIB = float(1 << 30)
# HF transformers 5.17 + PEFT 0.21 on the lent H100 (the measurement).
PEFT_REF = {1: {"tok_s": 5130.0, "peak_gib": 31.0}, 4: {"tok_s": 5960.0, "peak_gib": 31.0}}
GOAL_SPEED, GOAL_MEM = 2.5, 0.25


def load_json(path, default):
    if not path or not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def qtrain_result(a):
    r = {"system": "qtrain", "batch": a.batch, "seq": a.seq}
    rows = []
    if os.path.exists(a.metrics):
        with open(a.metrics) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        pass
    log = open(a.log, errors="replace").read() if a.log and os.path.exists(a.log) else ""
    m = re.search(r"synthetic \S+ built in ([0-9.]+) s", log)
    if m:
        r["build_s"] = float(m.group(1))
    m = re.search(r"peak GPU memory: arenas ([0-9.]+) GiB \(persist ([0-9.]+) \+ step ([0-9.]+) \+ work ([0-9.]+)\)", log)
    if m:
        r.update(arena_gib=float(m.group(1)), persist_gib=float(m.group(2)), step_gib=float(m.group(3)),
                 work_gib=float(m.group(4)))
    prof = re.search(r"(qtrain: op profile .*?\n(?:  .*\n)+)", log)
    if prof:
        r["profile"] = prof.group(1).rstrip("\n").split("\n")
    timed = [x for x in rows if x.get("step", 0) > a.skip and "step_s" in x]
    if not timed:
        r["error"] = (f"no steps past the first {a.skip} in {a.metrics}" if rows else f"no metrics in {a.metrics}") + \
                     (f" (exit status {a.rc})" if a.rc else "")
        return r
    st = [x["step_s"] for x in timed]
    r.update(steps_timed=len(st), step_s=sum(st) / len(st), step_times=st, loss_first=rows[0].get("loss"),
             loss_last=rows[-1].get("loss"))
    r["tok_s"] = a.batch * a.seq / r["step_s"]
    r["peak_gib"] = max(x.get("peak_bytes", 0) for x in rows) / GIB
    dev = max(x.get("dev_used_bytes", 0) for x in rows)
    if dev:
        r["device_gib"] = dev / GIB
    if a.rc:
        r["exit_status"] = a.rc
    return r


def cmd_qtrain(a):
    r = qtrain_result(a)
    res = [x for x in load_json(a.merge, []) if x.get("batch") != a.batch] if a.merge else []
    res.append(r)
    res.sort(key=lambda x: x.get("batch", 0))
    if a.merge:
        with open(a.merge, "w") as f:
            json.dump(res, f, indent=1)
    if "error" in r:
        print(f"qtrain batch {a.batch}: {r['error']}")
        return 1
    print(f"qtrain batch {a.batch}: {r['tok_s']:.0f} tok/s, {r['step_s']:.3f} s/step over {r['steps_timed']} steps, "
          f"peak {r['peak_gib']:.2f} GiB (arenas)" + (f", built in {r['build_s']:.1f} s" if "build_s" in r else ""))
    return 0


def fmt(v, spec, missing="–"):
    return missing if v is None else format(v, spec)


def ratio(v, tag):
    return "–" if v is None else f"{v:.2f}×{tag}"


def cmd_table(a):
    q = load_json(a.qtrain, [])
    p = load_json(a.peft, {})
    smi = {}
    if a.smi and os.path.exists(a.smi):
        for line in open(a.smi):  # "NAME MAX_MIB" lines from run_gpu.sh's nvidia-smi sampling
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit() and parts[0].startswith(("qtrain-", "peft")):
                smi[parts[0]] = int(parts[1]) / 1024.0
    peft = {x["batch"]: x for x in p.get("results", []) if "tok_s" in x}
    rows = []
    for x in p.get("results", []):
        rows.append(("HF+PEFT (bf16 base)", x, smi.get(f"peft-b{x.get('batch')}", smi.get("peft"))))
    for x in q:
        rows.append(("qtrain (NF4+DQ base)", x, smi.get(f"qtrain-b{x.get('batch')}")))
    print("| system | batch | tok/s | step s | peak GiB | nvidia-smi GiB | tok/s vs PEFT | memory vs PEFT |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    notes = []
    for name, x, smi_gib in rows:
        B = x.get("batch")
        if "error" in x:
            print(f"| {name} | {B} | {x['error']} | | | | | |")
            continue
        ref, tag = (peft[B], "") if B in peft else (PEFT_REF.get(B), " (ref)")
        sp = x["tok_s"] / ref["tok_s"] if ref and name.startswith("qtrain") else None
        mem = x.get("peak_gib") / ref["peak_gib"] if ref and name.startswith("qtrain") and ref.get("peak_gib") else None
        print(f"| {name} | {B} | {x['tok_s']:.0f} | {x['step_s']:.3f} | {fmt(x.get('peak_gib'), '.2f')} | "
              f"{fmt(smi_gib, '.1f')} | {ratio(sp, tag)} | {ratio(mem, tag)} |")
        if sp is not None:
            ok = sp >= GOAL_SPEED and mem is not None and mem <= GOAL_MEM
            notes.append(f"batch {B}: {sp:.2f}× the tokens/s at {ratio(mem, '')} the memory "
                         f"({'meets' if ok else 'misses'} the goal of ≥ {GOAL_SPEED}× at ≤ {GOAL_MEM}×)")
    print()
    if not peft:
        ref = ", ".join("%.0f tok/s at batch %d" % (v["tok_s"], b) for b, v in PEFT_REF.items())
        print(f"PEFT: no run given; ratios use the issue's reference ({ref}, peak 31 GiB).")
    for n in notes:
        print(f"- {n}")
    print("- peak GiB: torch.cuda.max_memory_allocated for PEFT; qtrain's arenas' high-water marks (persist + "
          "step + work), the same notion. nvidia-smi counts reservations and the CUDA context; qtrain "
          "reserves its whole memory.gpu_budget up front (64 GiB in the bench config), so its nvidia-smi "
          "figure is the budget, not the need.")
    for x in q:
        if x.get("profile"):
            print(f"\nqtrain batch {x['batch']} op profile:\n```\n" + "\n".join(x["profile"]) + "\n```")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("qtrain")
    s.add_argument("--metrics", required=True)
    s.add_argument("--log")
    s.add_argument("--batch", type=int, required=True)
    s.add_argument("--seq", type=int, required=True)
    s.add_argument("--skip", type=int, default=2)
    s.add_argument("--rc", type=int, default=0, help="qtrain's exit status, recorded")
    s.add_argument("--merge", help="JSON list to add this batch's result to")
    t = sub.add_parser("table")
    t.add_argument("--qtrain")
    t.add_argument("--peft")
    t.add_argument("--smi")
    a = ap.parse_args()
    return cmd_qtrain(a) if a.cmd == "qtrain" else cmd_table(a)


if __name__ == "__main__":
    sys.exit(main())
