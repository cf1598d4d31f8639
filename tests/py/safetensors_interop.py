#!/usr/bin/env python3
"""Interop of qtrain's safetensors reader/writer with the independent `safetensors` package.

(a) files written by safetensors.numpy.save_file are read by our reader (tests/tools/st_dump),
    every value compared;
(b) files written by our writer are read by safetensors.safe_open: names, dtypes, shapes,
    bytes and metadata; and for one-key metadata our bytes equal the package's own output;
(c) a sharded folder (two shards + model.safetensors.index.json) and a pickle-only folder.

Usage: safetensors_interop.py PATH/TO/st_dump    (exit 77 = skipped: numpy/safetensors missing)
"""
import json
import os
import random
import subprocess
import sys
import tempfile

try:
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import save, save_file
except ImportError as exc:  # CI installs them; a bare machine skips
    print(f"SKIP: {exc} (pip install numpy safetensors)")
    sys.exit(77)
try:
    import ml_dtypes
except ImportError:
    ml_dtypes = None
    print("note: ml_dtypes not installed, BF16 and F8 cases skipped (pip install ml_dtypes)")

ST_DUMP = sys.argv[1]
SEED = int(os.environ.get("QT_TEST_SEED", random.SystemRandom().randrange(1 << 31)))
print(f"seed {SEED} (QT_TEST_SEED={SEED} to replay)")
rng = np.random.default_rng(SEED)
failures = 0


def fail(msg):
    global failures
    failures += 1
    print("FAILED:", msg)


ST_NAME = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32",
           "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "uint16": "U16", "uint32": "U32",
           "uint64": "U64", "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3"}


def random_tensors():
    """Awkward shapes, every dtype we read, values that exercise the conversions."""
    shapes = [(), (0, 3), (7,), (3, 5), (2, 3, 5), (1, 1, 13), (4, 1, 2, 3)]
    out = {}

    def shape():
        return shapes[rng.integers(len(shapes))]

    def floats(dt, s):
        a = np.array(rng.standard_normal(s) * 10.0 ** rng.integers(-3, 4)).astype(dt)  # 0-d stays an array
        if a.size >= 4:  # specials
            flat = a.reshape(-1)
            flat[0], flat[1], flat[2] = np.nan, np.inf, -np.inf
            flat[3] = np.finfo(dt).tiny / 4 if dt != np.float16 else np.float16(3e-7)
        return a

    for dt in (np.float32, np.float16, np.float64):
        out[f"float.{np.dtype(dt).name}"] = floats(dt, shape())
    out["float.big_f32"] = floats(np.float32, (37, 29))
    for dt, lo, hi in ((np.int64, -(1 << 50), 1 << 50), (np.int32, -(1 << 31), (1 << 31) - 1),
                       (np.int16, -(1 << 15), (1 << 15) - 1), (np.int8, -128, 127), (np.uint8, 0, 255),
                       (np.uint16, 0, 65535), (np.uint32, 0, (1 << 32) - 1), (np.uint64, 0, 1 << 52)):
        out[f"int.{np.dtype(dt).name}"] = np.array(rng.integers(lo, hi, size=shape(), endpoint=True)).astype(dt)
    out["bool.mask"] = rng.integers(0, 2, size=(3, 5)).astype(np.bool_)
    if ml_dtypes is not None:
        out["model.layers.10.bf16"] = floats(np.float32, (5, 3)).astype(ml_dtypes.bfloat16)
        out["model.layers.2.bf16"] = np.array(floats(np.float32, ())).astype(ml_dtypes.bfloat16)
        out["f8.e4m3"] = rng.standard_normal((2, 3)).astype(ml_dtypes.float8_e4m3fn)
    out['name "with" \\ escapes'] = np.arange(3, dtype=np.float32)
    out["utf8.\u00e9\u20ac"] = np.ones((2,), np.float16)
    out["ctl\t\n\x01\x1f\x7f"] = np.full((1, 2), -0.0, np.float64)
    return out


def st_dump(path):
    r = subprocess.run([ST_DUMP, path], capture_output=True, text=True)
    return r.returncode, (json.loads(r.stdout) if r.returncode == 0 else None), r.stderr.strip()


def compare(label, got, tensors):
    """got: st_dump's JSON; tensors: name -> numpy array."""
    if set(got["tensors"]) != set(tensors):
        fail(f"{label}: names differ: ours {sorted(got['tensors'])} vs {sorted(tensors)}")
        return
    for name, arr in tensors.items():
        g = got["tensors"][name]
        want_dt = ST_NAME[arr.dtype.name]
        if g["dtype"] != want_dt or tuple(g["shape"]) != arr.shape:
            fail(f"{label}: {name}: ours {g['dtype']}{g['shape']} vs {want_dt}{list(arr.shape)}")
            continue
        if want_dt == "F8_E4M3":
            if g["values"] is not None:
                fail(f"{label}: {name}: F8 should be reported as unreadable")
            continue
        ours = np.array(g["values"], dtype=np.float64).reshape(arr.shape)
        ref = arr.astype(np.float64)
        if not np.array_equal(ours, ref, equal_nan=True):
            bad = np.argwhere(~((ours == ref) | (np.isnan(ours) & np.isnan(ref))))[0]
            fail(f"{label}: {name}{list(bad)}: ours {ours[tuple(bad)]!r} vs {ref[tuple(bad)]!r}")


def case_package_writes(tmp):
    t = random_tensors()
    path = os.path.join(tmp, "pkg.safetensors")
    save_file(t, path, metadata={"format": "pt", "note": "from the safetensors package"})
    rc, got, err = st_dump(path)
    if rc:
        fail(f"(a) our reader rejected the package's file: {err}")
        return
    compare("(a) package -> qtrain", got, t)
    if got["metadata"] != {"format": "pt", "note": "from the safetensors package"}:
        fail(f"(a) metadata: {got['metadata']}")
    print(f"(a) package -> qtrain: {len(t)} tensors compared")


def write_with_qtrain(tmp, t, metadata, out):
    raw, spec, off = bytearray(), {"metadata": metadata, "tensors": []}, 0
    for name, arr in t.items():
        b = np.ascontiguousarray(arr).tobytes()
        spec["tensors"].append({"name": name, "dtype": ST_NAME[arr.dtype.name], "shape": list(arr.shape),
                                "offset": off})
        raw += b
        off += len(b)
    with open(os.path.join(tmp, "spec.json"), "w") as f:
        json.dump(spec, f)
    with open(os.path.join(tmp, "raw.bin"), "wb") as f:
        f.write(raw)
    r = subprocess.run([ST_DUMP, "--write", out, os.path.join(tmp, "spec.json"), os.path.join(tmp, "raw.bin")],
                       capture_output=True, text=True)
    return r.returncode, r.stderr.strip()


def case_qtrain_writes(tmp):
    t = random_tensors()
    out = os.path.join(tmp, "ours.safetensors")
    md = {"format": "pt", "created_by": "qtrain \"test\""}
    rc, err = write_with_qtrain(tmp, t, md, out)
    if rc:
        fail(f"(b) our writer failed: {err}")
        return
    with safe_open(out, framework="np") as f:
        if set(f.keys()) != set(t):
            fail(f"(b) names differ: {sorted(f.keys())} vs {sorted(t)}")
        if f.metadata() != md:
            fail(f"(b) metadata: {f.metadata()} vs {md}")
        for name, arr in t.items():
            s = f.get_slice(name)
            if s.get_dtype() != ST_NAME[arr.dtype.name] or tuple(s.get_shape()) != arr.shape:
                fail(f"(b) {name}: {s.get_dtype()}{s.get_shape()} vs {ST_NAME[arr.dtype.name]}{list(arr.shape)}")
                continue
            if arr.dtype.name.startswith("float8"):
                continue  # the package cannot hand F8 to numpy; the byte-identical check below covers it
            got = f.get_tensor(name)
            if got.tobytes() != arr.tobytes():
                fail(f"(b) {name}: bytes differ")
    # Byte-identical to the package for the same tensors and {"format": "pt"}.
    rc, err = write_with_qtrain(tmp, t, {"format": "pt"}, out)
    theirs = save(t, metadata={"format": "pt"})
    with open(out, "rb") as f:
        ours = f.read()
    if rc or ours != theirs:
        n = int.from_bytes(theirs[:8], "little")
        fail(f"(b) our file differs from the package's ({len(ours)} vs {len(theirs)} bytes); theirs header: "
             f"{theirs[8:8 + n][:300]!r}; ours: {ours[8:8 + n][:300]!r} {err}")
    print(f"(b) qtrain -> package: {len(t)} tensors compared; byte-identical: {ours == theirs}")


def case_sharded(tmp):
    d = os.path.join(tmp, "model")
    os.mkdir(d)
    t = random_tensors()
    names = sorted(t)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for shard, ns in shards.items():
        save_file({n: t[n] for n in ns}, os.path.join(d, shard), metadata={"format": "pt"})
        weight_map.update({n: shard for n in ns})
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": int(sum(a.nbytes for a in t.values()))}, "weight_map": weight_map}, f)
    rc, got, err = st_dump(d)
    if rc:
        fail(f"(c) sharded folder rejected: {err}")
        return
    if got["files"] != 2:
        fail(f"(c) {got['files']} files opened, expected 2")
    compare("(c) sharded", got, t)
    for n in names:
        if got["tensors"][n]["file"] != weight_map[n]:
            fail(f"(c) {n} came from {got['tensors'][n]['file']}, index says {weight_map[n]}")
    # pickle-only folder: a clear refusal naming the conversion.
    p = os.path.join(tmp, "pickle")
    os.mkdir(p)
    open(os.path.join(p, "pytorch_model.bin"), "wb").write(b"\x80\x02")
    rc, _, err = st_dump(p)
    if rc == 0 or "pickle" not in err or "save_pretrained" not in err:
        fail(f"(c) pickle-only folder: rc {rc}, message {err!r}")
    print(f"(c) sharded: {len(t)} tensors in 2 shards compared; pickle folder refused: {err[:80]}...")


def main():
    with tempfile.TemporaryDirectory(prefix="qt_interop_") as tmp:
        case_package_writes(tmp)
        case_qtrain_writes(tmp)
        case_sharded(tmp)
    print("PASS" if failures == 0 else f"FAIL ({failures} failures)")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
