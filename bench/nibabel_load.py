#!/usr/bin/env python3
"""nibabel side of bench/bench_nifti.sh.

    nibabel_load.py load PATH [RUNS]          median seconds of nib.load(p).get_fdata(dtype=np.float32)
    nibabel_load.py save PATH OUT [RUNS]      median seconds of saving PATH's image (float32) as OUT
    nibabel_load.py make_ct OUT               writes a 512x512x300 int16 CT-like phantom .nii.gz
Prints one line "nibabel <what> median_s=<s> runs=<n> sum=<checksum>".
"""
import statistics
import sys
import time

import numpy as np
import nibabel as nib


def make_ct(out):
    """Body ellipse of soft tissue with noise, a bony ring, lungs, air outside: compresses like CT."""
    rng = np.random.default_rng(7)
    X, Y, Z = 512, 512, 300
    x = (np.arange(X) - X / 2)[:, None] / (X * 0.42)
    y = (np.arange(Y) - Y / 2)[None, :] / (Y * 0.30)
    r = np.sqrt(x * x + y * y)
    sl = np.full((X, Y), -1000.0)
    sl[r < 1.0] = 40.0
    sl[(r > 0.88) & (r < 0.95)] = 700.0
    lung = (((x - 0.35) ** 2 + y * y * 0.8) < 0.08) | (((x + 0.35) ** 2 + y * y * 0.8) < 0.08)
    sl[lung] = -850.0
    vol = np.empty((X, Y, Z), dtype=np.int16)
    body = r < 1.0
    for k in range(Z):
        s = sl + (np.sin(k / 17.0) * 15.0)
        noise = rng.normal(0, 12, (X, Y))
        vol[:, :, k] = np.where(body, s + noise, s).astype(np.int16)
    aff = np.diag([0.78, 0.78, 1.25, 1.0])
    aff[:3, 3] = [-200, -200, -180]
    img = nib.Nifti1Image(vol, aff)
    img.set_qform(aff, 1)
    img.set_sform(aff, 1)
    img.header.set_slope_inter(1, 0)
    img.to_filename(out)


def timed(fn, runs):
    times, res = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), res


def main():
    cmd = sys.argv[1]
    if cmd == "make_ct":
        make_ct(sys.argv[2])
        return
    if cmd == "load":
        p, runs = sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 5
        med, data = timed(lambda: nib.load(p).get_fdata(dtype=np.float32), runs)
        print(f"nibabel load median_s={med:.4f} runs={runs} sum={float(data.sum(dtype=np.float64)):.6g}")
    elif cmd == "save":
        p, out, runs = sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 3
        img = nib.load(p)
        data = img.get_fdata(dtype=np.float32)
        new = nib.Nifti1Image(data, img.affine)
        med, _ = timed(lambda: new.to_filename(out), runs)
        print(f"nibabel save median_s={med:.4f} runs={runs} sum={float(data.sum(dtype=np.float64)):.6g}")


if __name__ == "__main__":
    main()
