#!/usr/bin/env python3
"""NaN/inf steps (ctest nonfinite_steps): a step whose loss or gradients are not finite is
skipped and counted; after train.max_nonfinite_steps in a row the run stops with an error,
keeping the last good checkpoint, from which a rerun resumes. QTRAIN_TEST_NONFINITE=A-B
makes the loss of steps A..B NaN (a poisoned batch)."""
import json
import os
import subprocess
import sys
import tempfile


def run(qtrain, out, env_steps=None, extra=()):
    env = dict(os.environ)
    env.pop("QTRAIN_TEST_NONFINITE", None)
    if env_steps:
        env["QTRAIN_TEST_NONFINITE"] = env_steps
    cmd = [qtrain, os.path.join(SRC, "configs", "tiny-cpu.yaml"), "--set", f"output.dir={out}",
           "--set", "train.steps=12", "--set", "data.seq_len=32", "--set", "train.micro_batch=2",
           "--set", "train.grad_accum=1", "--set", "output.checkpoint_every=2", "--set", "train.max_nonfinite_steps=3",
           "--set", "train.log_every=100", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def steps_logged(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(l)["step"] for l in f if '"loss"' in l]


def main():
    global SRC
    qtrain, SRC = sys.argv[1], sys.argv[2]
    fails = 0
    tmp = tempfile.mkdtemp(prefix="qt-nonfinite-")
    # 1. two bad steps: skipped, counted, the run finishes
    a = os.path.join(tmp, "a")
    r = run(qtrain, a, "5-6")
    ok = r.returncode == 0 and "step 5: non-finite loss; step skipped (1 in a row)" in r.stderr \
        and "step 6: non-finite loss; step skipped (2 in a row)" in r.stderr and 5 not in steps_logged(a) \
        and 12 in steps_logged(a)
    print(f"2 NaN steps of 12: exit {r.returncode}, logged steps {steps_logged(a) if os.path.exists(a + '/metrics.jsonl') else '-'}: {'OK' if ok else 'FAIL'}")
    fails += not ok
    # 2. a run of bad steps beyond the limit: stops with an error, last good checkpoint kept
    b = os.path.join(tmp, "b")
    r = run(qtrain, b, "5-12")
    msg = [l for l in r.stderr.splitlines() if "non-finite steps in a row" in l]
    latest = open(os.path.join(b, "checkpoints", "latest")).read().strip() if os.path.exists(os.path.join(b, "checkpoints", "latest")) else ""
    ok = r.returncode != 0 and msg and "4 non-finite steps in a row" in msg[0] and latest == "step-000004.h5"
    print(f"NaN from step 5 on, limit 3: exit {r.returncode}, '{msg[0] if msg else ''}', latest {latest}: {'OK' if ok else 'FAIL'}")
    fails += not ok
    # 3. the kept checkpoint is good: a clean rerun resumes from it and finishes
    r = run(qtrain, b)
    ok = r.returncode == 0 and steps_logged(b)[-1] == 12
    print(f"rerun without the fault: exit {r.returncode}, last step {steps_logged(b)[-1]}: {'OK' if ok else 'FAIL'}")
    if not ok:
        print(r.stderr[-2000:])
    fails += not ok
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
