#!/usr/bin/env python3
"""Fault tests of qtrain's training checkpoints (docs/checkpoints.md), on the CPU.

Each case trains a tiny synthetic model (a few seconds) in a fresh temporary folder and
compares against an uninterrupted run of the same config: the adapter bytes
(adapter_model.safetensors) and every metrics.jsonl line's loss, eval loss, lr, grad norm
and token count must be identical.

  exact    stopped (--stop-after K) and resumed, twice, with OMP_NUM_THREADS=1 and 2; the
           uninterrupted runs with 1 and 2 threads agree too
  kill     kill -9 at random moments, many landing inside checkpoint writes
           (QTRAIN_TEST_SLOW_SAVE widens them); every trial resumes and ends identical
  disk     the disk fills up (a tiny tmpfs, else RLIMIT_FSIZE): the save fails with a clear
           error, exit != 0, the previous checkpoint intact and resumable
  corrupt  damaged / truncated newest checkpoint: detected, the previous one used
  sigterm  SIGTERM mid-run: exit 0, "resume with: ...", and that command finishes the run
  refuse   resuming with another LoRA r / synthetic model / seed / data is refused with a
           message naming it; --no-resume starts over and keeps the old files aside

Standard library only. Exit 0 pass, 1 fail, 77 skip.
"""
import argparse
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

STEPS = 12

CONFIG = """\
model:
  synthetic: tiny
  dtype: f32
quant:
  type: nf4
lora:
  r: 4
  alpha: 8
  dropout: 0.1
  targets: all
data:
  seq_len: {seq_len}
train:
  device: cpu
  micro_batch: 2
  grad_accum: 2
  steps: {steps}
  lr: 1e-2
  lr_schedule: cosine
  warmup_steps: 2
  eval_every: 4
  log_every: 1
output:
  dir: {dir}
  checkpoint_every: {every}
  keep_checkpoints: {keep}
"""

QTRAIN = None
FAILS = []


def check(cond, msg):
    if not cond:
        FAILS.append(msg)
        print("FAILED: " + msg, flush=True)
    return cond


def write_config(root, name, every=1, keep=2, steps=STEPS, seq_len=16):
    run_dir = os.path.join(root, name)
    path = os.path.join(root, name + ".yaml")
    with open(path, "w") as f:
        f.write(CONFIG.format(steps=steps, dir=run_dir, every=every, keep=keep, seq_len=seq_len))
    return path, run_dir


def env_with(**kw):
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    env.pop("QTRAIN_TEST_SLOW_SAVE", None)
    env.update({k: str(v) for k, v in kw.items()})
    return env


def qtrain(*args, env=None, timeout=300, preexec_fn=None):
    p = subprocess.run([QTRAIN] + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=env or env_with(), timeout=timeout, preexec_fn=preexec_fn)
    err = p.stderr.decode(errors="replace")
    check("HDF5-DIAG" not in err, f"HDF5 printed its error stack: {err[-1500:]}")
    check(p.returncode >= 0, f"qtrain {' '.join(map(str, args))} died of signal {-p.returncode}: {err[-1500:]}")
    return p.returncode, err


def adapter(run_dir):
    with open(os.path.join(run_dir, "adapter", "adapter_model.safetensors"), "rb") as f:
        return f.read()


def metrics(run_dir):
    rows = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            rows.append((m["step"], m["loss"], m.get("eval_loss"), m["lr"], m["grad_norm"], m["tokens"]))
    return rows


def same_run(run_dir, ref_dir, what):
    """The run in run_dir ended exactly as the reference: adapter bytes and metrics."""
    ok = check(os.path.exists(os.path.join(run_dir, "adapter", "adapter_model.safetensors")),
               f"{what}: no adapter written")
    if not ok:
        return False
    ok = check(adapter(run_dir) == adapter(ref_dir), f"{what}: adapter bytes differ from the uninterrupted run")
    a, b = metrics(run_dir), metrics(ref_dir)
    ok &= check([r[0] for r in a] == list(range(1, STEPS + 1)), f"{what}: metrics steps {[r[0] for r in a]}")
    diff = [(x, y) for x, y in zip(a, b) if x != y]
    ok &= check(not diff, f"{what}: metrics differ, first: {diff[:1]}")
    return ok


def reference(root, threads=2, seq_len=16):
    cfg, run_dir = write_config(root, f"ref{threads}", seq_len=seq_len)
    rc, err = qtrain(cfg, env=env_with(OMP_NUM_THREADS=threads))
    if not check(rc == 0, f"reference run failed: {err[-2000:]}"):
        sys.exit(1)
    return run_dir


def ckpt_dir(run_dir):
    return os.path.join(run_dir, "checkpoints")


def latest(run_dir):
    try:
        with open(os.path.join(ckpt_dir(run_dir), "latest")) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def step_files(run_dir):
    try:
        return sorted(n for n in os.listdir(ckpt_dir(run_dir)) if re.fullmatch(r"step-\d+\.h5", n))
    except FileNotFoundError:
        return []


# ------------------------------------------------------------------ cases

def case_exact(root):
    # seq_len 64: the larger products (B*T = 128 rows) pass the CPU matmul's OpenMP threshold,
    # so the thread count really splits work
    T = 64
    refs = {t: reference(root, t, T) for t in (1, 2)}
    check(adapter(refs[1]) == adapter(refs[2]) and metrics(refs[1]) == metrics(refs[2]),
          "uninterrupted runs with OMP_NUM_THREADS=1 and 2 differ")
    for t in (1, 2):
        env = env_with(OMP_NUM_THREADS=t)
        k1 = random.randint(1, STEPS - 3)
        k2 = random.randint(k1 + 1, STEPS - 1)
        cfg, run_dir = write_config(root, f"exact{t}", every=random.choice([1, 2, 5]), seq_len=T)
        rc, err = qtrain(cfg, "--stop-after", k1, env=env)
        check(rc == 0 and f"after step {k1} of {STEPS}" in err, f"threads {t}: stop at {k1}: rc {rc}: {err[-800:]}")
        check(latest(run_dir) == f"step-{k1:06d}.h5", f"threads {t}: latest is {latest(run_dir)} after stop at {k1}")
        rc, err = qtrain(cfg, "--stop-after", k2, env=env)
        check(rc == 0 and f"resuming from" in err and f"(step {k1} of {STEPS})" in err,
              f"threads {t}: second leg did not resume from {k1}: {err[-800:]}")
        rc, err = qtrain("resume", run_dir, env=env)  # the config stored in the checkpoint
        check(rc == 0 and f"(step {k2} of {STEPS})" in err, f"threads {t}: qtrain resume: rc {rc}: {err[-800:]}")
        if same_run(run_dir, refs[t], f"threads {t}, stopped at {k1} and {k2}"):
            print(f"exact: OMP_NUM_THREADS={t}: stopped at steps {k1} and {k2}, resumed: identical adapter and "
                  f"{STEPS} metrics lines")
    # the threads change the result of nothing, so a run may resume with another count
    cfg, run_dir = write_config(root, "exact_mixed", seq_len=T)
    qtrain(cfg, "--stop-after", 5, env=env_with(OMP_NUM_THREADS=1))
    rc, err = qtrain(cfg, env=env_with(OMP_NUM_THREADS=2))
    if same_run(run_dir, refs[1], "1 thread then 2 threads"):
        print("exact: stopped with 1 thread, resumed with 2: identical")


def kill_when(p, run_dir, mode, k):
    """SIGKILL p at a moment chosen by mode; False when it finished first.
      startup  after a random delay of up to 0.3 s (model build, before any checkpoint)
      step     a random moment of step k (after metrics has k lines)
      tmp      while step-k.h5.tmp is being written or waits for its rename
      renamed  after step-k.h5 is renamed into place, before latest names it"""
    mpath, cd = os.path.join(run_dir, "metrics.jsonl"), ckpt_dir(run_dir)
    want = f"step-{k:06d}.h5"
    if mode == "startup":
        time.sleep(random.uniform(0.0, 0.3))
    deadline = time.monotonic() + 120
    while mode != "startup" and p.poll() is None and time.monotonic() < deadline:
        if mode == "step" and os.path.exists(mpath) and sum(1 for _ in open(mpath)) >= k:
            time.sleep(random.uniform(0.0, 0.05))
            break
        names = os.listdir(cd) if os.path.isdir(cd) else []
        if mode == "tmp" and want + ".tmp" in names:
            break
        if mode == "renamed" and want in names and latest(run_dir) != want:
            break
        time.sleep(0.0005)
    if p.poll() is not None:
        return False
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    return True


def case_kill(root, trials):
    ref = reference(root)
    slow = 0.03  # QTRAIN_TEST_SLOW_SAVE: the windows before and after the rename
    stats = dict(trials=0, kills=0, during_save=0, before_first_checkpoint=0, finished_before_kill=0, resumed=0,
                 identical=0)
    modes = {}
    for trial in range(trials):
        cfg, run_dir = write_config(root, f"kill{trial}", every=random.choice([1, 1, 2]), keep=random.choice([1, 2, 3]))
        for _ in range(random.choice([1, 2])):  # one or two kills, then a last leg that finishes
            cur = int(latest(run_dir)[5:11]) if latest(run_dir) else 0
            mode = random.choice(["startup", "step", "tmp", "tmp", "renamed", "renamed"])
            if mode in ("tmp", "renamed") and cur >= STEPS - 2:
                mode = "step"
            k = random.randint(cur + 1, STEPS - 1)
            if mode in ("tmp", "renamed") and "every: 2" in open(cfg).read():
                k += k % 2  # only even steps are saved
            p = subprocess.Popen([QTRAIN, cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env=env_with(QTRAIN_TEST_SLOW_SAVE=slow))
            if not kill_when(p, run_dir, mode, k):
                stats["finished_before_kill"] += 1
                continue
            stats["kills"] += 1
            modes[mode] = modes.get(mode, 0) + 1
            names = os.listdir(ckpt_dir(run_dir)) if os.path.isdir(ckpt_dir(run_dir)) else []
            files = step_files(run_dir)
            newest = files[-1] if files else None
            if any(n.endswith(".tmp") or n.startswith("latest.tmp.") for n in names) or latest(run_dir) != newest:
                stats["during_save"] += 1
            if not newest:
                stats["before_first_checkpoint"] += 1
        rc, err = qtrain(cfg)  # no slow saves: finish
        check(rc == 0, f"trial {trial}: final leg failed: {err[-800:]}")
        stats["trials"] += 1
        stats["resumed"] += "resuming from" in err or "the run is complete" in err
        if same_run(run_dir, ref, f"kill trial {trial}"):
            stats["identical"] += 1
        shutil.rmtree(run_dir, ignore_errors=True)
    print("kill -9 summary: " + ", ".join(f"{k} {v}" for k, v in stats.items()) + "; kills by moment: " +
          ", ".join(f"{k} {v}" for k, v in sorted(modes.items())))
    check(stats["identical"] == stats["trials"], "not every trial ended identical")
    check(stats["during_save"] > 0, "no kill landed inside a checkpoint write (timing?)")


def fill_disk(mount, leave):
    """Fill the file system at mount, leaving about `leave` bytes free."""
    path = os.path.join(mount, "filler")
    with open(path, "wb") as f:
        st = os.statvfs(mount)
        free = st.f_bavail * st.f_frsize
        if free > leave:
            f.write(b"\0" * (free - leave))
    return path


def case_disk(root, mode):
    ref = reference(root)
    k = 4
    mount = os.path.join(root, "small")
    os.makedirs(mount)
    mounted = False
    if mode in ("auto", "tmpfs"):
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mount], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
        mounted = r.returncode == 0
        if not mounted:
            print(f"disk: cannot mount a tmpfs ({r.stdout.decode().strip()}); using RLIMIT_FSIZE instead")
    try:
        cfg, run_dir = write_config(mount, "run", every=1, keep=2)
        rc, err = qtrain(cfg, "--stop-after", k)
        check(rc == 0, f"disk: first leg failed: {err[-800:]}")
        ck_size = os.path.getsize(os.path.join(ckpt_dir(run_dir), f"step-{k:06d}.h5"))
        preexec, filler = None, None
        if mounted:
            filler = fill_disk(mount, ck_size // 3)
            expect = "No space left on device"
            how = "tmpfs full"
        else:
            if mode == "tmpfs":
                print("SKIP: a tmpfs cannot be mounted here")
                sys.exit(77)
            limit = ck_size // 3

            def preexec():
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            try:  # does this system let us lower the limit at all?
                subprocess.run(["true"], preexec_fn=preexec, check=True)
            except Exception as ex:
                print(f"SKIP: neither a tmpfs nor RLIMIT_FSIZE is available ({ex})")
                sys.exit(77)
            expect = "File too large"
            how = f"RLIMIT_FSIZE {limit} bytes"
        before = sorted(os.listdir(ckpt_dir(run_dir)))
        with open(os.path.join(ckpt_dir(run_dir), f"step-{k:06d}.h5"), "rb") as f:
            intact = f.read()
        rc, err = qtrain(cfg, preexec_fn=preexec)
        failed_rc = rc
        last = [l for l in err.splitlines() if "error" in l]
        check(rc == 1, f"disk ({how}): qtrain exited {rc} on a full disk (want 1: an error, not a crash)")
        check(any("cannot write checkpoint" in l and expect in l and "previous checkpoint is intact" in l
                  for l in last), f"disk ({how}): unclear error: {last[-1:] or err[-600:]}")
        after = sorted(os.listdir(ckpt_dir(run_dir)))
        check(after == before, f"disk ({how}): checkpoint folder changed: {before} -> {after}")
        check(latest(run_dir) == f"step-{k:06d}.h5", f"disk ({how}): latest is {latest(run_dir)}")
        with open(os.path.join(ckpt_dir(run_dir), f"step-{k:06d}.h5"), "rb") as f:
            check(f.read() == intact, f"disk ({how}): the previous checkpoint changed")
        if filler:
            os.unlink(filler)
        rc, err = qtrain(cfg)
        check(rc == 0 and f"(step {k} of {STEPS})" in err, f"disk: resume after freeing space: {err[-800:]}")
        if same_run(run_dir, ref, "disk full then resumed"):
            print(f"disk ({how}): the save after step {k} failed with '{expect}', exit {failed_rc}; the previous "
                  f"checkpoint stayed intact and the resumed run ended identical")
    finally:
        if mounted:
            subprocess.run(["umount", mount])


def damage(path, how):
    size = os.path.getsize(path)
    if how == "truncate":
        os.truncate(path, size * 2 // 3)
        return
    with open(path, "r+b") as f:  # flip bytes spread over the file (mostly tensor data)
        for _ in range(8):
            off = random.randrange(size // 10, size)
            f.seek(off)
            b = f.read(1)
            f.seek(off)
            f.write(bytes([b[0] ^ 0x5A]))


def case_corrupt(root):
    ref = reference(root)
    for how in ("flip", "truncate", "delete"):
        k = random.randint(3, STEPS - 2)
        cfg, run_dir = write_config(root, f"corrupt_{how}", every=1, keep=3)
        rc, err = qtrain(cfg, "--stop-after", k)
        check(rc == 0, f"corrupt: first leg: {err[-600:]}")
        newest = os.path.join(ckpt_dir(run_dir), f"step-{k:06d}.h5")
        if how == "delete":
            os.unlink(newest)
        else:
            damage(newest, how)
        rc, err = qtrain(cfg)
        warned = "warning" in err and (how == "delete" or "corrupt checkpoint" in err or
                                       "not a readable HDF5 file" in err)
        check(rc == 0 and warned and f"step-{k - 1:06d}.h5 (step {k - 1} of {STEPS})" in err,
              f"corrupt ({how}): did not fall back to step {k - 1}: {err[-1200:]}")
        if same_run(run_dir, ref, f"corrupt ({how})"):
            print(f"corrupt ({how}): step-{k:06d}.h5 damaged -> detected, resumed from step {k - 1}, identical")


def case_sigterm(root):
    ref = reference(root)
    cfg, run_dir = write_config(root, "sigterm", every=0, keep=2)
    p = subprocess.Popen([QTRAIN, cfg], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env_with())
    mpath = os.path.join(run_dir, "metrics.jsonl")
    want = random.randint(2, STEPS - 5)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        if os.path.exists(mpath) and sum(1 for _ in open(mpath)) >= want:
            break
        time.sleep(0.002)
    p.send_signal(signal.SIGTERM)
    err = p.communicate()[1].decode(errors="replace")
    hint = [l.split("resume with: ", 1)[1] for l in err.splitlines() if "resume with: " in l]
    check(p.returncode == 0, f"sigterm: exit {p.returncode}: {err[-600:]}")
    check(hint and hint[0] == f"qtrain {cfg}", f"sigterm: no 'resume with' hint: {err[-600:]}")
    done = len(metrics(run_dir))
    check(done < STEPS and latest(run_dir) == f"step-{done:06d}.h5",
          f"sigterm: {done} steps in metrics, latest {latest(run_dir)}")
    rc, err = qtrain(*hint[0].split()[1:])
    check(rc == 0 and f"(step {done} of {STEPS})" in err, f"sigterm: resume: {err[-600:]}")
    if same_run(run_dir, ref, "sigterm"):
        print(f"sigterm: stopped after step {done} with exit 0 and a checkpoint; the hinted command finished the "
              "run identical")


def case_refuse(root):
    cfg, run_dir = write_config(root, "refuse", every=1)
    rc, err = qtrain(cfg, "--stop-after", 2)
    check(rc == 0, f"refuse: first leg: {err[-600:]}")
    for sets, what in ((["lora.r=8"], "LoRA shape"), (["lora.targets=q,v"], "LoRA shape"),
                       (["model.synthetic=llama-3.1-70b"], "base model"), (["train.seed=7"], "base model"),
                       (["data.seq_len=24"], "data")):
        args = [a for s in sets for a in ("--set", s)]
        t0 = time.monotonic()
        rc, err = qtrain(cfg, *args)
        line = next((l for l in err.splitlines() if "cannot resume" in l), err[-600:])
        check(rc != 0 and f"the {what} differs" in line and "--no-resume" in line and "output.dir" in line,
              f"refuse {sets}: rc {rc}: {line}")
        check(time.monotonic() - t0 < 20, f"refuse {sets}: took {time.monotonic() - t0:.1f} s (built the model?)")
        print(f"refuse: --set {' '.join(sets)} -> exit {rc}: {line.strip()[:160]}...")
    check(latest(run_dir) == "step-000002.h5", "refusals changed the checkpoints")
    # changing lr is allowed (a note lists it)
    rc, err = qtrain(cfg, "--set", "train.lr=0.005", "--stop-after", 3)
    check(rc == 0 and "train.lr: 0.01 -> 0.005" in err, f"refuse: an lr change should resume with a note: {err[-600:]}")
    # --no-resume starts over and moves the old files aside
    rc, err = qtrain(cfg, "--set", "lora.r=8", "--no-resume", "--stop-after", 1)
    aside = [n for n in os.listdir(run_dir) if n.startswith("checkpoints.replaced-")]
    check(rc == 0 and "resuming" not in err and aside and latest(run_dir) == "step-000001.h5",
          f"refuse: --no-resume: rc {rc}, aside {aside}: {err[-600:]}")
    check(len(metrics(run_dir)) == 1, "refuse: --no-resume kept old metrics lines")


def main():
    global QTRAIN
    ap = argparse.ArgumentParser()
    ap.add_argument("--qtrain", required=True)
    ap.add_argument("--case", required=True, choices=["exact", "kill", "disk", "corrupt", "sigterm", "refuse"])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--disk-mode", default="auto", choices=["auto", "tmpfs", "rlimit"])
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    a = ap.parse_args()
    QTRAIN = os.path.abspath(a.qtrain)
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    random.seed(seed)
    print(f"seed {seed} (--seed {seed} to replay)")
    root = tempfile.mkdtemp(prefix=f"qt_ckpt_{a.case}_")
    try:
        if a.case == "exact":
            case_exact(root)
        elif a.case == "kill":
            case_kill(root, a.trials)
        elif a.case == "disk":
            case_disk(root, a.disk_mode)
        elif a.case == "corrupt":
            case_corrupt(root)
        elif a.case == "sigterm":
            case_sigterm(root)
        else:
            case_refuse(root)
    finally:
        if a.keep or FAILS:
            print(f"files kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("FAIL" if FAILS else "PASS")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
