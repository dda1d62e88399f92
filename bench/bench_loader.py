#!/usr/bin/env python3
"""MONAI side of bench/bench_loader.sh: the same pipeline as bench/bench_loader.lua through
monai.data.DataLoader (worker processes, list_data_collate). Prints
  monai epoch_s=<median epoch time> samples_per_s=<...> first_epoch_s=<...>
  monai step wait_frac=<...> wait_s=<...> step_s=<...>
"""
import argparse
import time

import torch
from monai.data import DataLoader, Dataset
from monai.transforms import (Compose, EnsureChannelFirstd, LoadImaged, RandCropByPosNegLabeld, RandFlipd,
                              RandRotate90d, ScaleIntensityRanged, Spacingd)

p = argparse.ArgumentParser()
p.add_argument("--items", type=int, default=8)
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--workers", type=int, default=2)
p.add_argument("--batch", type=int, default=2)
p.add_argument("--step", type=float, default=0.5)
p.add_argument("--image", default="data/samples/example_ct.nii.gz")
p.add_argument("--label", default="data/samples/example_seg_full_fast.nii.gz")
a = p.parse_args()
torch.set_num_threads(1)
K = ["image", "label"]
tf = Compose([
    LoadImaged(K),
    EnsureChannelFirstd(K),
    Spacingd(K, pixdim=(1.5, 1.5, 1.5), mode=("bilinear", "nearest")),
    ScaleIntensityRanged("image", a_min=-175, a_max=250, b_min=0.0, b_max=1.0, clip=True),
    RandCropByPosNegLabeld(K, label_key="label", spatial_size=(96, 96, 96), pos=1, neg=1, num_samples=2,
                           image_key="image", image_threshold=0),
    RandFlipd(K, prob=0.5, spatial_axis=0),
    RandRotate90d(K, prob=0.5, max_k=3),
])
tf.set_random_state(0)
ds = Dataset([{"image": a.image, "label": a.label} for _ in range(a.items)], transform=tf)
loader = DataLoader(ds, batch_size=a.batch, shuffle=True, num_workers=a.workers, persistent_workers=a.workers > 0)


def epoch(step):
    t0 = time.perf_counter()
    n, wait, stepped = 0, 0.0, 0.0
    it = iter(loader)
    while True:
        w0 = time.perf_counter()
        try:
            b = next(it)
        except StopIteration:
            break
        wait += time.perf_counter() - w0
        n += b["image"].shape[0]
        assert b["image"].shape[2] == 96
        if step > 0:
            s0 = time.perf_counter()
            time.sleep(step)
            stepped += time.perf_counter() - s0
    return time.perf_counter() - t0, n, wait, stepped


first = epoch(0)[0]
times = []
for _ in range(a.epochs):
    t, n, _, _ = epoch(0)
    times.append(t)
times.sort()
med = times[(len(times) - 1) // 2]
print(f"monai epoch_s={med:.3f} samples_per_s={n / med:.3f} first_epoch_s={first:.3f} samples={n} workers={a.workers}")
if a.step > 0:
    # two epochs with the step; the second is reported (steady state), as on the medlua side
    _, _, w1, s1 = epoch(a.step)
    _, _, wait, stepped = epoch(a.step)
    print(f"monai step wait_frac={wait / (wait + stepped):.4f} wait_s={wait:.3f} step_s={stepped:.3f} "
          f"first_wait_frac={w1 / (w1 + s1):.4f}")
