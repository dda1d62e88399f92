"""Minimal safetensors writer and reader for the golden-file generators in tests/ref/ (json + struct,
independent of the safetensors package, so a generator needs only numpy, or torch for st_save_torch).

    st_save(path, {"name": ndarray}, metadata=None)     numpy arrays
    st_save_torch(path, {"name": tensor}, metadata)      torch tensors (also float16/bfloat16/bool)
    arrays = st_load(path);  arrays, meta = st_load(path, with_meta=True)

Layout: u64 LE header length, JSON header padded with spaces to 8 bytes, data buffer. Tensors are
laid out widest dtype first, then by name, so every tensor is aligned to its element size. The file
is written to a temporary name and renamed into place."""
import json
import os
import struct
import sys

import numpy as np

assert sys.byteorder == "little", "the raw tensor bytes are host order; safetensors is little-endian"

_NP = {np.dtype("float64"): "F64", np.dtype("float32"): "F32", np.dtype("float16"): "F16",
       np.dtype("int64"): "I64", np.dtype("int32"): "I32", np.dtype("int16"): "I16", np.dtype("uint8"): "U8",
       np.dtype("int8"): "I8", np.dtype("bool"): "BOOL"}


def _write(path, entries, metadata):
    """entries: (name, dtype string, shape, bytes, itemsize)"""
    entries = sorted(entries, key=lambda e: (-e[4], e[0]))
    header, off = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, dt, shape, b, _ in entries:
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
    h = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    h += b" " * (-len(h) % 8)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for e in entries:
            f.write(e[3])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def st_save(path, arrays, metadata=None):
    entries = []
    for name, a in arrays.items():
        a = np.asarray(a)
        a = a if a.flags.c_contiguous else a.copy(order="C")  # (ascontiguousarray would make a 0-d array 1-d)
        entries.append((name, _NP[a.dtype], a.shape, a.tobytes(), a.dtype.itemsize))
    _write(path, entries, metadata)


def st_save_torch(path, tensors, metadata=None):
    import torch
    names = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}
    entries = []
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if t.dtype in (torch.float16, torch.bfloat16):
            b = t.view(torch.int16).numpy().tobytes()
        elif t.dtype == torch.bool:
            b = t.to(torch.uint8).numpy().tobytes()
        else:
            b = t.numpy().tobytes()
        entries.append((name, names[t.dtype], tuple(t.shape), b, t.element_size()))
    _write(path, entries, metadata)


def st_load(path, with_meta=False):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    inv = {v: k for k, v in _NP.items()}
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        if info["dtype"] == "BF16":  # no numpy dtype: the raw 16-bit patterns
            dt = np.dtype("uint16")
        else:
            dt = inv[info["dtype"]]
        out[name] = np.frombuffer(raw[8 + n + b:8 + n + e], dtype=dt).reshape(tuple(info["shape"])).copy()
    return (out, meta) if with_meta else out


def st_load_torch(path):
    """(name -> torch tensor, metadata); float16/bfloat16/bool as written by st_save_torch"""
    import torch
    arrays, meta = st_load(path, with_meta=True)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
    out = {}
    for name, a in arrays.items():
        t = torch.from_numpy(a)
        if header[name]["dtype"] == "BF16":
            t = t.view(torch.int16).view(torch.bfloat16)
        out[name] = t.clone()
    return out, meta
