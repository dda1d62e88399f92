#!/usr/bin/env python3
"""Check that a safetensors file written by medlua loads in PyTorch with the real safetensors
library and holds exactly the expected values (the other interop direction is covered by
tests/lua/test_safetensors.lua and tests/c/test_safetensors.c reading interop_torch.safetensors).

    tests/ref/venv/bin/python tests/ref/check_medlua_file.py            # runs build/medlua itself
    tests/ref/venv/bin/python tests/ref/check_medlua_file.py FILE       # checks an existing file

Without FILE it runs `build/medlua tests/lua/test_safetensors.lua` (or $MEDLUA instead of
build/medlua) with MEDLUA_INTEROP_OUT set, which
makes that suite also write its interop tensors (medlua_interop_tensors() there) to that path.
The expected values below restate that Lua function. Exit status 0 means every check passed.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import load_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def expected():
    return {
        "f64": (torch.arange(24, dtype=torch.float64) * 0.5 - 3).reshape(2, 3, 4),
        "f32_t": (torch.arange(12, dtype=torch.float32) * 0.25 - 1).reshape(4, 3).t(),
        "f16": (torch.arange(8, dtype=torch.float32) * 0.5 - 2).to(torch.float16),
        "bf16": (torch.arange(8, dtype=torch.float32) * 0.25 - 1).to(torch.bfloat16),
        "i64": torch.tensor([-(2 ** 40) - 7, 0, 1, 2 ** 40 + 7], dtype=torch.int64),
        "i32": torch.tensor([-2 ** 31, -1, 0, 2 ** 31 - 1], dtype=torch.int32),
        "u8": torch.tensor([0, 1, 127, 128, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True, True, False]),
        "scalar": torch.tensor(3.25, dtype=torch.float64),
        "empty": torch.zeros(0, 3, dtype=torch.float32),
        "expanded": torch.arange(3, dtype=torch.float64).reshape(3, 1).expand(3, 4),
        "grad_leaf": torch.linspace(-1, 1, 5, dtype=torch.float64),
    }


EXPECTED_META = {"format": "pt", "source": "medlua", "unicode": "h\u00e9llo \"q\" \\ end", "epoch": "7"}


def check_layout(path):
    """The raw layout rules PyTorch-side readers rely on."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    problems = []
    if n % 8:
        problems.append(f"header length {n} is not a multiple of 8")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    sizes = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        if b % sizes[info["dtype"]]:
            problems.append(f"{name}: offset {b} not aligned to {info['dtype']}")
        spans.append((b, e))
    spans.sort()
    pos = 0
    for b, e in spans:
        if b != pos:
            problems.append(f"offsets do not tile the buffer at {b} (expected {pos})")
        pos = e
    if pos != len(raw) - 8 - n:
        problems.append(f"data buffer {len(raw) - 8 - n} bytes, tensors cover {pos}")
    return problems


def check(path):
    ok = True
    got = load_file(path)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    want = expected()
    for k, v in want.items():
        if k not in got:
            print(f"FAIL {k}: missing")
            ok = False
            continue
        g = got[k]
        if g.dtype != v.dtype or tuple(g.shape) != tuple(v.shape) or not torch.equal(g, v.contiguous()):
            print(f"FAIL {k}: got {g.dtype} {tuple(g.shape)} {g.flatten()[:8].tolist()}, "
                  f"want {v.dtype} {tuple(v.shape)} {v.flatten()[:8].tolist()}")
            ok = False
        else:
            print(f"ok {k}: {v.dtype} {tuple(v.shape)}")
    extra = sorted(set(got) - set(want))
    if extra:
        print(f"FAIL unexpected tensors: {extra}")
        ok = False
    if meta != EXPECTED_META:
        print(f"FAIL metadata: got {meta}, want {EXPECTED_META}")
        ok = False
    else:
        print("ok metadata")
    for p in check_layout(path):
        print(f"FAIL layout: {p}")
        ok = False
    print("PyTorch reads the medlua file correctly" if ok else "MISMATCH")
    return ok


def main():
    if len(sys.argv) > 1:
        return 0 if check(sys.argv[1]) else 1
    medlua = os.environ.get("MEDLUA", os.path.join(REPO, "build", "medlua"))
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "medlua_written.safetensors")
        env = dict(os.environ, MEDLUA_INTEROP_OUT=out)
        r = subprocess.run([medlua, "tests/lua/test_safetensors.lua"], cwd=REPO, env=env, capture_output=True,
                           text=True)
        print(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr)
        if not os.path.exists(out):
            print(f"FAIL: {medlua} did not write {out} (exit {r.returncode})\n{r.stderr}")
            return 1
        return 0 if check(out) else 1


if __name__ == "__main__":
    sys.exit(main())
