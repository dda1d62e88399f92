#!/usr/bin/env python3
"""Golden values for medlua's data pipeline (lua/medlua/transforms.lua, modules/data) from MONAI 1.6.1.

Run with the benchmark venv (MONAI, nibabel, torch):
    bench/venv/bin/python tests/ref/gen_transforms_ref.py

Writes
    tests/data/data_pipeline/ct_crop.nii.gz, seg_crop.nii.gz   a 28x24x16 crop of the TotalSegmentator
                                                               example CT (RAS, 3 mm, int16) and its labels
    tests/data/data_pipeline/mr_crop.nii.gz, mrseg_crop.nii.gz a 24x20x12 crop of the example MR (LPS)
    tests/ref/transforms_ref.safetensors                       "<case>.<key>" (float32 data [C, X, Y, Z] or a
                                                               batch) and "<case>.<key>_affine" (float64 4x4)
The inputs are made from /work/shared/data/ct_totalseg (see tests/data/data_pipeline/SOURCE.md); the
cases below are replayed one by one in tests/lua/test_data.lua (same names, same options).
"""
import json
import os
import sys

import nibabel as nib
import numpy as np
import torch

import monai
from monai.data import pad_list_data_collate
from monai.transforms import (CenterSpatialCropd, Compose, CropForegroundd, EnsureChannelFirstd, LoadImaged,
                              NormalizeIntensityd, Orientationd, RandAffined, RandFlipd, RandScaleIntensityd,
                              RandShiftIntensityd, RandSpatialCropd, Rotate90d, ScaleIntensityRanged, Spacingd,
                              SpatialPadd)

assert monai.__version__ == "1.6.1", monai.__version__
assert sys.byteorder == "little"
torch.set_num_threads(1)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DATA_OUT = os.path.join(ROOT, "tests", "data", "data_pipeline")
SHARED = os.path.join(ROOT, "..", "shared", "data", "ct_totalseg")
os.makedirs(DATA_OUT, exist_ok=True)

sys.path.insert(0, HERE)
from st_io import st_save  # noqa: E402


# ------------------------------------------------------------------ inputs: crops of real images
def crop_nifti(src, dst, lo, size, dtype):
    im = nib.load(src)
    d = np.asanyarray(im.dataobj)
    sl = tuple(slice(a, a + n) for a, n in zip(lo, size))
    c = np.ascontiguousarray(d[sl]).astype(dtype)
    aff = im.affine.copy()
    aff[:3, 3] = im.affine[:3, :3] @ np.array(lo, float) + im.affine[:3, 3]
    out = nib.Nifti1Image(c, aff)
    out.header.set_sform(aff, code=1)
    out.header.set_qform(aff, code=1)
    nib.save(out, dst)


CT = os.path.join(DATA_OUT, "ct_crop.nii.gz")
SEG = os.path.join(DATA_OUT, "seg_crop.nii.gz")
MR = os.path.join(DATA_OUT, "mr_crop.nii.gz")
MRSEG = os.path.join(DATA_OUT, "mrseg_crop.nii.gz")
crop_nifti(os.path.join(SHARED, "example_ct_sm.nii.gz"), CT, (50, 40, 8), (28, 24, 16), np.int16)
crop_nifti(os.path.join(SHARED, "example_seg.nii.gz"), SEG, (50, 40, 8), (28, 24, 16), np.uint8)
crop_nifti(os.path.join(SHARED, "example_mr_sm.nii.gz"), MR, (45, 35, 4), (24, 20, 12), np.int16)
crop_nifti(os.path.join(SHARED, "example_seg_mr.nii.gz"), MRSEG, (45, 35, 4), (24, 20, 12), np.uint8)

KEYS = ["image", "label"]
tensors = {}
cases = {}


def load(which="ct"):
    d = {"image": CT, "label": SEG} if which == "ct" else {"image": MR, "label": MRSEG}
    return Compose([LoadImaged(KEYS), EnsureChannelFirstd(KEYS)])(d)


def store(case, d, desc, keys=KEYS):
    for k in keys:
        v = d[k]
        a = np.asarray(v.detach().cpu().numpy(), dtype=np.float32)
        if np.all(a == np.round(a)) and a.min() >= 0 and a.max() <= 255:
            a = a.astype(np.uint8)  # integral (labels): stored as uint8 to keep the file small
        tensors[f"{case}.{k}"] = a
        tensors[f"{case}.{k}_affine"] = np.asarray(v.affine.detach().cpu().numpy(), dtype=np.float64)
    cases[case] = desc


def run(case, which, tfs, desc, keys=KEYS, seed=0):
    c = Compose(tfs)
    c.set_random_state(seed)
    store(case, c(load(which)), desc, keys)


# ------------------------------------------------------------------ deterministic transforms
run("load_ct", "ct", [], "LoadImaged + EnsureChannelFirstd")
run("load_mr", "mr", [], "LoadImaged + EnsureChannelFirstd (LPS)")
run("orient_lps", "ct", [Orientationd(KEYS, axcodes="LPS")], "Orientationd LPS")
run("orient_psr", "mr", [Orientationd(KEYS, axcodes="PSR")], "Orientationd PSR on LPS MR")
run("orient_ras_mr", "mr", [Orientationd(KEYS, axcodes="RAS")], "Orientationd RAS on LPS MR")
run("spacing_ct", "ct", [Spacingd(KEYS, pixdim=(1.7, 2.3, 2.9), mode=("bilinear", "nearest"))],
    "Spacingd (1.7, 2.3, 2.9) bilinear / nearest")
run("spacing_mr", "mr", [Spacingd(KEYS, pixdim=(2.1, 2.6, 4.0), mode=("bilinear", "nearest"))],
    "Spacingd (2.1, 2.6, 4.0) on LPS MR")
run("spacing_keep", "ct", [Spacingd(KEYS, pixdim=(2.0, -1, 0), mode="nearest")], "Spacingd pixdim <= 0 keeps the axis")
run("scale_clip", "ct", [ScaleIntensityRanged("image", a_min=-175, a_max=250, b_min=0.0, b_max=1.0, clip=True)],
    "ScaleIntensityRanged clip", keys=["image"])
run("scale_noclip", "ct", [ScaleIntensityRanged("image", a_min=-1000, a_max=1000)],
    "ScaleIntensityRanged without b", keys=["image"])
run("scale_b", "ct", [ScaleIntensityRanged("image", a_min=-1000, a_max=500, b_min=-1, b_max=1)],
    "ScaleIntensityRanged b without clip", keys=["image"])
run("norm", "ct", [NormalizeIntensityd("image")], "NormalizeIntensityd", keys=["image"])
run("norm_nonzero", "ct", [NormalizeIntensityd("label", nonzero=True)], "NormalizeIntensityd nonzero on the label",
    keys=["label"])
run("norm_subdiv", "ct", [NormalizeIntensityd("image", subtrahend=100.0, divisor=50.0)],
    "NormalizeIntensityd subtrahend/divisor", keys=["image"])
run("cropfg_label", "ct", [CropForegroundd(KEYS, source_key="label", margin=2)], "CropForegroundd source label margin 2")
run("cropfg_k", "ct", [CropForegroundd(KEYS, source_key="label", margin=1, k_divisible=16)],
    "CropForegroundd k_divisible 16 (pads beyond the image)")
run("cropfg_small", "ct", [CropForegroundd(KEYS, source_key="label", margin=(30, 1, 40), allow_smaller=True)],
    "CropForegroundd allow_smaller")
run("cropfg_thr", "ct", [CropForegroundd(KEYS, source_key="label", select_fn=lambda x: x > 60, margin=1)],
    "CropForegroundd select_fn x > 60 (threshold = 60)")
run("pad_sym", "ct", [SpatialPadd(KEYS, spatial_size=(40, 29, -1))], "SpatialPadd symmetric")
run("pad_end", "ct", [SpatialPadd(KEYS, spatial_size=(30, 31, 17), method="end")], "SpatialPadd end")
run("center_crop", "ct", [CenterSpatialCropd(KEYS, roi_size=(19, 14, -1))], "CenterSpatialCropd")
run("rsc_center", "ct", [RandSpatialCropd(KEYS, roi_size=(15, 30, 9), random_center=False)],
    "RandSpatialCropd random_center=False (roi larger than the image on z)")
run("flip_02", "ct", [RandFlipd(KEYS, prob=1.0, spatial_axis=[0, 2])], "RandFlipd prob 1 axes 0, 2")
run("flip_all", "mr", [RandFlipd(KEYS, prob=1.0)], "RandFlipd prob 1 all axes")
for k in (1, 2, 3):
    run(f"rot90_k{k}", "ct", [Rotate90d(KEYS, k=k, spatial_axes=(0, 1))], f"Rotate90d k={k} axes (0, 1)")
run("rot90_12", "mr", [Rotate90d(KEYS, k=1, spatial_axes=(1, 2))], "Rotate90d k=1 axes (1, 2)")
run("rot90_02_k3", "mr", [Rotate90d(KEYS, k=3, spatial_axes=(0, 2))], "Rotate90d k=3 axes (0, 2)")

AFF = dict(rotate_range=((0.3, 0.3), (-0.2, -0.2), (0.1, 0.1)),
           shear_range=((0.1, 0.1), (0.0, 0.0), (0.05, 0.05), (0.0, 0.0), (0.0, 0.0), (-0.1, -0.1)),
           translate_range=((3.0, 3.0), (-2.0, -2.0), (1.0, 1.0)),
           scale_range=((0.1, 0.1), (-0.1, -0.1), (0.0, 0.0)))
for pm in ("reflection", "zeros", "border"):
    run(f"affine_{pm}", "ct", [RandAffined(KEYS, prob=1.0, mode=("bilinear", "nearest"), padding_mode=pm, **AFF)],
        f"RandAffined fixed ranges, padding {pm}")
run("affine_size", "mr", [RandAffined(KEYS, prob=1.0, spatial_size=(20, 26, 10), mode=("bilinear", "nearest"),
                                      padding_mode="zeros", rotate_range=((0.0, 0.0), (0.0, 0.0), (0.4, 0.4)),
                                      translate_range=((1.5, 1.5), (0.0, 0.0), (-2.0, -2.0)))],
    "RandAffined spatial_size, rotation about z")
run("affine_rot_only", "ct", [RandAffined(KEYS, prob=1.0, mode="nearest", padding_mode="border",
                                          rotate_range=((0.25, 0.25),))],
    "RandAffined one rotation angle (about axis 0)")
run("scale_int", "ct", [RandScaleIntensityd("image", factors=(0.2, 0.2), prob=1.0)], "RandScaleIntensityd fixed",
    keys=["image"])
run("shift_int", "ct", [RandShiftIntensityd("image", offsets=(0.5, 0.5), prob=1.0)], "RandShiftIntensityd fixed",
    keys=["image"])

run("pipeline_ct", "ct", [Orientationd(KEYS, axcodes="RAS"),
                          Spacingd(KEYS, pixdim=(1.5, 1.5, 2.0), mode=("bilinear", "nearest")),
                          ScaleIntensityRanged("image", a_min=-175, a_max=250, b_min=0.0, b_max=1.0, clip=True),
                          CropForegroundd(KEYS, source_key="image")],
    "Orientation RAS, Spacing 1.5/1.5/2, ScaleIntensityRange, CropForeground(image)")
run("pipeline_mr", "mr", [Orientationd(KEYS, axcodes="RAS"),
                          Spacingd(KEYS, pixdim=(1.5, 1.5, 2.0), mode=("bilinear", "nearest")),
                          NormalizeIntensityd("image", nonzero=True)],
    "Orientation RAS, Spacing 1.5/1.5/2, NormalizeIntensity nonzero on the MR")

# pad collate: two centre crops of different sizes
d0 = CenterSpatialCropd(KEYS, roi_size=(20, 14, 12))(load("ct"))
d1 = CenterSpatialCropd(KEYS, roi_size=(15, 20, 16))(load("ct"))
b = pad_list_data_collate([d0, d1])
tensors["pad_collate.image"] = np.asarray(b["image"].numpy(), dtype=np.float32)
tensors["pad_collate.image_affine"] = np.asarray(b["image"].affine.numpy(), dtype=np.float64)
cases["pad_collate"] = "pad_list_data_collate of centre crops (20, 14, 12) and (15, 20, 16)"

out = os.path.join(HERE, "transforms_ref.safetensors")
st_save(out, tensors, {"monai": monai.__version__, "torch": torch.__version__, "cases": json.dumps(cases)})
print(f"wrote {out}: {len(cases)} cases, {os.path.getsize(out)} bytes")
for f in (CT, SEG, MR, MRSEG):
    print(f, os.path.getsize(f))
