#!/usr/bin/env python3
"""recipes/train_unet.lua's default task done in MONAI 1.6.1, for bench/bench_train_unet.sh.

Same data, same preprocessing, same transforms (MONAI's own classes, which medlua's transforms are
named after), same model, loss, optimizer, number of steps and validation schedule; the per-class
validation Dice on the same grid (RAS, --spacing mm) is what the two sides are compared on.

    bench/venv/bin/python bench/monai_train_unet.py [--steps 700] [--val-every 100] [--threads 2] ...

Every option defaults to recipes/train_unet.lua's default (bench_train_unet.sh passes the recipe's
current defaults explicitly, read from its --help). What the recipe fixes in code is mirrored here:
  data           train on data/samples/example_ct.nii.gz + example_seg_full_fast.nii.gz, validate on the
                 DICOM series data/samples/example_ct_dicom (JPEG 2000 lossless), read by MONAI's
                 PydicomReader (pydicom + pylibjpeg-openjpeg), + example_seg_dicom.nii.gz
  labels         --labels "name=a-b+c,...": label values to classes 1..K-1, everything else background
  preprocessing  (segment.lua preprocess) Orientation RAS, Spacing --spacing (bilinear image, nearest
                 label), ScaleIntensityRange a_min..a_max -> 0..1 clipped; done once, as the recipe does
  augmentation   (train_unet.lua's Compose) SpatialPad roi, RandCropByPosNegLabel roi pos 1 neg 1
                 num_samples --batch-size image_threshold 0, RandAffine prob --affine-prob rotate_range
                 (0.1, 0.1, 0.26) scale_range 0.1 bilinear/nearest padding border, RandFlip axis 0 p 0.5,
                 RandScaleIntensity 0.1 p 0.5, RandShiftIntensity 0.1 p 0.5; set_random_state(seed)
  loader         50 items per epoch (the recipe's steps_per_epoch), batch_size 1 (one item -> its
                 num_samples crops), shuffle, --workers worker processes (persistent)
  model          UNet(3, 1, K, channels, strides, num_res_units, norm) with MONAI's defaults otherwise
                 (PReLU, dropout 0); torch.manual_seed(seed)
  loss / optim   DiceCELoss(to_onehot_y=True, softmax=True); Adam(lr, weight_decay); --sched per step:
                 poly = PolynomialLR(total_iters=steps, power=0.9) (the recipe's PolyLR, the same values),
                 cosine = CosineAnnealingLR(T_max=steps), none
  validation     every --val-every steps: eval mode, sliding_window_inference(roi, --sw-batch-size,
                 overlap, mode "gaussian", padding_mode "replicate") of softmax(net(x)) (the recipe
                 applies softmax to each window before blending), argmax, --postprocess (largest_foreground
                 = KeepLargestConnectedComponent(all foreground labels, independent=False, connectivity 3:
                 26 neighbours), largest_per_class = the same with independent=True, none), DiceMetric per
                 class without
                 background (NaN for a class absent from the ground truth) on the preprocessed grid;
                 val_dice = mean over classes, best = highest val_dice. Logged as diagnostics only:
                 raw_dice_<class> (the Dice before --postprocess) and fg_kept (the share of the predicted
                 foreground voxels that the postprocessing kept)
Prints one "monai val step=..." line per validation and a final "monai summary ..." line with the last
validation's per-class Dice, the best validation, seconds per training step (training loop time
without the validation passes, divided by the steps), the share of that time spent waiting for
batches, and peak RSS (main process; workers separately).
"""
import argparse
import csv
import gc
import os
import resource
import sys
import time

import numpy as np
import torch

import monai
from monai.data import DataLoader, Dataset
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import UNet
from monai.networks.utils import one_hot
from monai.transforms import (Compose, EnsureChannelFirstd, KeepLargestConnectedComponent, LoadImaged, Orientationd,
                              RandAffined, RandCropByPosNegLabeld, RandFlipd, RandScaleIntensityd, RandShiftIntensityd,
                              ScaleIntensityRanged, Spacingd, SpatialPadd)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ints(s):
    return [int(v) for v in str(s).split(",") if v.strip()]


def floats(s, n=None):
    v = [float(x) for x in str(s).split(",") if x.strip()]
    if n and len(v) == 1:
        v = v * n
    return v


def parse_labels(spec):
    """'vertebrae=26-50,spinal_cord=79' -> [(name, [(lo, hi), ...]), ...] (values only, no structure names)"""
    out = []
    for part in spec.split(","):
        name, _, vals = part.partition("=")
        ranges = []
        for v in vals.split("+"):
            lo, _, hi = v.strip().partition("-")
            ranges.append((int(lo), int(hi or lo)))
        out.append((name.strip(), ranges))
    return out


def find(p):
    return p if os.path.exists(p) or os.path.isabs(p) else os.path.join(ROOT, p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-image", default="data/samples/example_ct.nii.gz")
    ap.add_argument("--train-label", default="data/samples/example_seg_full_fast.nii.gz")
    ap.add_argument("--val-image", default="data/samples/example_ct_dicom")
    ap.add_argument("--val-label", default="data/samples/example_seg_dicom.nii.gz")
    ap.add_argument("--labels", default="vertebrae=26-50,spinal_cord=79")
    ap.add_argument("--spacing", default="2")
    ap.add_argument("--a-min", type=float, default=-1000)
    ap.add_argument("--a-max", type=float, default=1500)
    ap.add_argument("--roi", default="64")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-5)
    ap.add_argument("--sched", default="poly", choices=["poly", "cosine", "none"])
    ap.add_argument("--postprocess", default="largest_foreground", choices=["largest_foreground", "largest_per_class", "none"])
    ap.add_argument("--channels", default="16,32,64,128,256")
    ap.add_argument("--strides", default="2,2,2,2")
    ap.add_argument("--num-res-units", type=int, default=2)
    ap.add_argument("--norm", default="batch")
    ap.add_argument("--val-every", type=int, default=200)
    ap.add_argument("--sw-batch-size", type=int, default=2)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--affine-prob", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="", help="folder for metrics.csv (none when empty)")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    spacing, roi = floats(a.spacing, 3), ints(a.roi)
    roi = roi * 3 if len(roi) == 1 else roi
    classes = parse_labels(a.labels)
    names = [c[0] for c in classes]
    K = len(classes) + 1
    print(f"monai {monai.__version__} torch {torch.__version__} | threads {torch.get_num_threads()} | "
          f"classes: background, {', '.join(names)}", flush=True)

    def remap(lab):
        out = torch.zeros_like(lab)
        for k, (_, ranges) in enumerate(classes, 1):
            for lo, hi in ranges:
                out[(lab >= lo) & (lab <= hi)] = k
        return out

    def preprocess(image, label):
        reader = "PydicomReader" if os.path.isdir(image) else None
        load = Compose([LoadImaged("image", reader=reader), LoadImaged("label"), EnsureChannelFirstd(["image", "label"]),
                        Orientationd(["image", "label"], axcodes="RAS")])
        d = load({"image": image, "label": label})
        d["label"] = remap(d["label"])
        grid = Compose([Spacingd(["image", "label"], pixdim=spacing, mode=("bilinear", "nearest")),
                        ScaleIntensityRanged("image", a_min=a.a_min, a_max=a.a_max, b_min=0.0, b_max=1.0, clip=True)])
        return grid(d)

    t0 = time.perf_counter()
    tr = preprocess(find(a.train_image), find(a.train_label))
    va = preprocess(find(a.val_image), find(a.val_label))
    print(f"train {tuple(tr['image'].shape[1:])} val {tuple(va['image'].shape[1:])} at {spacing} mm "
          f"(preprocessing {time.perf_counter() - t0:.1f} s)", flush=True)

    aug = Compose([
        SpatialPadd(["image", "label"], spatial_size=roi),
        RandCropByPosNegLabeld(["image", "label"], label_key="label", spatial_size=roi, pos=1, neg=1,
                               num_samples=a.batch_size, image_key="image", image_threshold=0),
        RandAffined(["image", "label"], prob=a.affine_prob, rotate_range=(0.1, 0.1, 0.26), scale_range=(0.1, 0.1, 0.1),
                    mode=("bilinear", "nearest"), padding_mode="border"),
        RandFlipd(["image", "label"], prob=0.5, spatial_axis=0),
        RandScaleIntensityd("image", factors=0.1, prob=0.5),
        RandShiftIntensityd("image", offsets=0.1, prob=0.5),
    ])
    aug.set_random_state(a.seed)
    steps_per_epoch = 50
    item = {"image": tr["image"], "label": tr["label"]}
    ds = Dataset(data=[item] * steps_per_epoch, transform=aug)
    loader = DataLoader(ds, batch_size=1, shuffle=True, num_workers=a.workers, persistent_workers=a.workers > 0,
                        generator=torch.Generator().manual_seed(a.seed))

    torch.manual_seed(a.seed)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=K, channels=ints(a.channels), strides=ints(a.strides),
               num_res_units=a.num_res_units, norm=a.norm)
    print(f"UNet {a.channels} strides {a.strides} res units {a.num_res_units}, {a.norm} norm: "
          f"{sum(p.numel() for p in net.parameters())} parameters", flush=True)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    sched = None
    if a.sched == "poly":
        sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=a.steps, power=0.9)
    elif a.sched == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=a.steps)
    post = None
    if a.postprocess != "none":
        post = KeepLargestConnectedComponent(applied_labels=list(range(1, K)), is_onehot=False,
                                             independent=a.postprocess == "largest_per_class", connectivity=3)
    dice_metric = DiceMetric(include_background=False, reduction="none")
    vx = va["image"].as_tensor()[None]
    vy = va["label"].as_tensor()[None]

    def validate():
        net.eval()
        with torch.no_grad():
            probs = sliding_window_inference(vx, roi, a.sw_batch_size, lambda z: torch.softmax(net(z), 1),
                                             overlap=a.overlap, mode="gaussian", padding_mode="replicate")
            pred = raw = probs.argmax(1, keepdim=True)
            if post is not None:
                pred = post(raw[0].clone())[None]  # KeepLargestConnectedComponent edits its input in place
            d = dice_metric(one_hot(pred, K), one_hot(vy, K))[0]
            dice_metric.reset()
            # diagnostics, not compared: the Dice before --postprocess, and the share of the predicted
            # foreground voxels the postprocessing kept
            dr = dice_metric(one_hot(raw, K), one_hot(vy, K))[0]
            dice_metric.reset()
            nraw = int((raw > 0).sum())
            kept = float((pred > 0).sum()) / nraw if nraw else float("nan")
        net.train()
        per = {n: float(d[i]) for i, n in enumerate(names)}
        diag = {f"raw_dice_{n}": float(dr[i]) for i, n in enumerate(names)}
        diag["fg_kept"] = kept
        ok = [v for v in per.values() if v == v]
        return per, (sum(ok) / len(ok) if ok else 0.0), diag

    writer = None
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        fcsv = open(os.path.join(a.out, "metrics.csv"), "w", newline="")
        writer = csv.writer(fcsv, lineterminator="\n")
        writer.writerow(["step", "train_loss", "time", "val_dice"] + [f"val_dice_{n}" for n in names]
                        + [f"raw_dice_{n}" for n in names] + ["fg_kept"])

    net.train()
    step, epoch, val_s, wait_s, losses, last, best = 0, 0, 0.0, 0.0, [], None, None
    t_loop = time.perf_counter()
    while step < a.steps:
        epoch += 1
        it = iter(loader)
        while True:
            tw = time.perf_counter()
            batch = next(it, None)
            wait_s += time.perf_counter() - tw
            if batch is None:
                break
            x, y = batch["image"].as_tensor(), batch["label"].as_tensor()
            opt.zero_grad()
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            step += 1
            losses.append(loss.item())
            if a.val_every > 0 and step % a.val_every == 0:
                tv = time.perf_counter()
                per, mean, diag = validate()
                val_s += time.perf_counter() - tv
                last = (step, per, mean)
                if best is None or mean > best[2]:
                    best = (step, per, mean)
                tl = sum(losses[-a.val_every:]) / len(losses[-a.val_every:])
                print(f"monai val step={step} epoch={epoch} train_loss={tl:.4f} lr={opt.param_groups[0]['lr']:.3g} "
                      f"val_dice={mean:.4f} "
                      + " ".join(f"dice_{n}={v:.4f}" for n, v in per.items())
                      + " " + " ".join(f"{k}={v:.4f}" for k, v in diag.items())
                      + f" elapsed_s={time.perf_counter() - t_loop:.1f}", flush=True)
                if writer:
                    writer.writerow([step, tl, time.perf_counter() - t_loop, mean] + [per[n] for n in names]
                                    + [diag[f"raw_dice_{n}"] for n in names] + [diag["fg_kept"]])
                    fcsv.flush()
            if step >= a.steps:
                break
    loop_s = time.perf_counter() - t_loop
    del it, loader
    gc.collect()
    time.sleep(0.5)
    rss_main = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    train_s = loop_s - val_s
    if last is None:
        print("monai summary: no validation ran (--val-every larger than --steps)")
        return
    print(f"monai summary steps={step} last_step={last[0]} "
          + " ".join(f"dice_{n}={v:.4f}" for n, v in last[1].items())
          + f" val_dice={last[2]:.4f} best_val_dice={best[2]:.4f} best_step={best[0]} "
          + " ".join(f"best_dice_{n}={v:.4f}" for n, v in best[1].items())
          + f" s_per_step={train_s / step:.3f} loop_s={loop_s:.1f} val_s={val_s:.1f} n_val={step // a.val_every} "
          f"data_wait_frac={wait_s / max(train_s, 1e-9):.3f} train_loss_last50={sum(losses[-50:]) / len(losses[-50:]):.4f} "
          f"peak_rss_mb={rss_main:.0f} worker_peak_rss_mb={rss_child:.0f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
