#!/usr/bin/env python3
"""SimpleITK side of bench/bench_resample.sh: the same analytic CT-sized volume as bench/resample.lua
(x[i, j, k] = sin(0.02 i) + cos(0.03 j) + 0.01 k, float32, spacing 0.7 x 0.7 x 1.25 mm), resampled
to 1.5 mm with sitk.Resample (linear, B-spline, nearest on a label image, a 10-degree rotation), the
output grid sized as MONAI's Spacing and medlua do (round((n - 1) * old / new + 1)). Prints the
median time over --runs runs and the output mean (a checksum to compare with medlua's)."""
import argparse
import math
import statistics
import time

import numpy as np
import SimpleITK as sitk

p = argparse.ArgumentParser()
p.add_argument("--size", type=int, default=512)
p.add_argument("--slices", type=int, default=300)
p.add_argument("--runs", type=int, default=5)
p.add_argument("--threads", type=int, default=0)
p.add_argument("--cases", default="linear,bspline,nearest,rotate")
a = p.parse_args()
N, S = a.size, a.slices
threads = a.threads or len(__import__("os").sched_getaffinity(0))
sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)

i = np.sin(0.02 * np.arange(N, dtype=np.float32))
j = np.cos(0.03 * np.arange(N, dtype=np.float32))
k = 0.01 * np.arange(S, dtype=np.float32)
arr = (i[None, None, :] + j[None, :, None] + k[:, None, None]).astype(np.float32)  # [k][j][i]
img = sitk.GetImageFromArray(arr)
img.SetSpacing((0.7, 0.7, 1.25))
lab = sitk.GetImageFromArray(np.floor((arr + 2) * 2).astype(np.uint8))
lab.CopyInformation(img)

size = [int(round((n - 1) * sp / 1.5 + 1)) for n, sp in zip((N, N, S), (0.7, 0.7, 1.25))]
c = 0.5 * 0.7 * (N - 1)
rot = sitk.Euler3DTransform()
rot.SetCenter((c, c, 0.0))
rot.SetRotation(0, 0, -math.radians(10))  # ITK maps output -> input: the inverse of medlua's M


def resample(im, interp, tr=None, out=sitk.sitkFloat32):
    return sitk.Resample(im, size, tr or sitk.Transform(), interp, (0, 0, 0), (1.5, 1.5, 1.5),
                         (1, 0, 0, 0, 1, 0, 0, 0, 1), 0.0, out)


cases = {
    "linear": lambda: resample(img, sitk.sitkLinear),
    "bspline": lambda: resample(img, sitk.sitkBSpline),
    "nearest": lambda: resample(lab, sitk.sitkNearestNeighbor, out=sitk.sitkUInt8),
    "rotate": lambda: resample(img, sitk.sitkLinear, rot),
}
print(f"sitk volume {N}x{N}x{S} float32 threads={threads} SimpleITK {sitk.Version.VersionString()}")
for name in a.cases.split(","):
    fn = cases[name]
    fn()
    ts = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    o = sitk.GetArrayViewFromImage(out)
    print(f"sitk {name} ms={statistics.median(ts) * 1000:.1f} min_ms={min(ts) * 1000:.1f} "
          f"shape={'x'.join(map(str, out.GetSize()))} mean={float(o.astype(np.float64).mean()):.6f}")
