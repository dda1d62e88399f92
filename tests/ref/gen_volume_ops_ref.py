#!/usr/bin/env python3
"""Golden values for the volume ops (tests/lua/test_volume_ops.lua), from the peer tools:
nibabel (reorientation), MONAI (Spacing grid and values, ScaleIntensityRange, ScaleIntensity,
NormalizeIntensity), SimpleITK (Resample: linear, B-spline, nearest, rigid transforms), scipy
(ndimage.map_coordinates order 1 / 3, ndimage.label) and numpy (percentiles, statistics).

    bench/venv/bin/python tests/ref/gen_volume_ops_ref.py      # needs nibabel, monai, SimpleITK, scipy

Writes
    tests/ref/volume_ops_ref.safetensors   tensors "<case>.<name>" (float64 unless noted)
    tests/data/volume_ops/*.safetensors    small crops of real images (inputs of the real-data cases)
When /work/shared/data (../shared/data from the repository root) is absent, the real-data inputs
already in tests/data/volume_ops are reused.

Conventions shared with the test:
  * a volume is an array [X, Y, Z] (nibabel's dataobj order) plus a 4x4 RAS+ affine;
  * SimpleITK works in LPS: its image is built from the LPS affine diag(-1,-1,1,1) @ A and from the
    array transposed to ITK's [z, y, x] order, so ITK index (i, j, k) is our voxel (i, j, k);
  * every peer that is compared against another one is checked here too (the script asserts they
    agree), so a golden value is never one tool's quirk.
Seeds are fixed; the output is reproducible with the same library versions.
"""
import json
import os
import sys

import numpy as np
import nibabel as nib
import SimpleITK as sitk
import scipy
import scipy.ndimage as ndi
import monai
import torch
from monai.transforms import NormalizeIntensity, ScaleIntensity, ScaleIntensityRange, Spacing
from monai.data import MetaTensor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DATA_OUT = os.path.join(ROOT, "tests", "data", "volume_ops")
SHARED = os.path.join(ROOT, "..", "shared", "data")
sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)

sys.path.insert(0, HERE)
from st_io import st_load, st_save  # noqa: E402


G = {}        # golden tensors
META = {}     # per-case notes (stored as metadata)


def put(case, name, a, dtype=np.float64):
    G[f"{case}.{name}"] = np.ascontiguousarray(np.asarray(a, dtype=dtype))


# ------------------------------------------------------------------ geometry helpers
def rot(ax, deg):
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    r = np.eye(3)
    i, j = [(1, 2), (0, 2), (0, 1)][ax]
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def affine_of(R, spacing, origin):
    A = np.eye(4)
    A[:3, :3] = R @ np.diag(spacing)
    A[:3, 3] = origin
    return A


FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def to_sitk(a, A):
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(a, (2, 1, 0))))
    L = FLIP @ A
    sp = np.linalg.norm(L[:3, :3], axis=0)
    img.SetSpacing(sp.tolist())
    img.SetDirection((L[:3, :3] / sp).flatten().tolist())
    img.SetOrigin(L[:3, 3].tolist())
    return img


def sitk_grid(shape, B):
    L = FLIP @ B
    sp = np.linalg.norm(L[:3, :3], axis=0)
    return [int(s) for s in shape], L[:3, 3].tolist(), sp.tolist(), (L[:3, :3] / sp).flatten().tolist()


def from_sitk(img):
    return np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))


def sitk_resample(a, A, shape, B, interp, W=None, pad=0.0, out_type=sitk.sitkFloat64):
    """SimpleITK Resample of (a, A) onto (shape, B); W: the output->input world map (RAS), as ITK."""
    img = to_sitk(a, A)
    size, origin, spacing, direction = sitk_grid(shape, B)
    tr = sitk.Transform()
    if W is not None:
        Wl = FLIP @ W @ FLIP
        tr = sitk.AffineTransform(3)
        tr.SetMatrix(Wl[:3, :3].flatten().tolist())
        tr.SetTranslation(Wl[:3, 3].tolist())
    res = sitk.Resample(img, size, tr, interp, origin, spacing, direction, pad, out_type)
    return from_sitk(res)


def grid_coords(shape, B, A, W=None):
    """continuous input indices of every output voxel: inv(A) @ W @ B @ o"""
    M = np.linalg.inv(A) @ (W if W is not None else np.eye(4)) @ B
    o = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), 0).reshape(3, -1)
    c = M[:3, :3] @ o + M[:3, 3:4]
    return c


def scipy_resample(a, A, shape, B, order, W=None, pad=0.0, border=False):
    c = grid_coords(shape, B, A, W)
    n = np.array(a.shape)[:, None]
    if border:
        c = np.clip(c, 0, n - 1)
    inside = np.all((c >= -0.5) & (c < n - 0.5), axis=0)
    mode = "nearest" if order == 1 else "mirror"
    v = ndi.map_coordinates(a.astype(np.float64), c, order=order, mode=mode, prefilter=True)
    v[~inside] = pad
    return v.reshape(shape), inside.reshape(shape)


def monai_spacing_grid(a, A, pixdim):
    """MONAI Spacing(diagonal=False): output shape, affine and values (bilinear, border padding)."""
    img = MetaTensor(torch.from_numpy(a[None].astype(np.float32)), affine=torch.from_numpy(A))
    sp = Spacing(pixdim=pixdim, mode="bilinear", padding_mode="border", dtype=torch.float64)
    out = sp(img)
    return np.asarray(out.array[0], dtype=np.float64), np.asarray(out.affine, dtype=np.float64)


# ================================================================== synthetic cases
rng = np.random.default_rng(20240611)

# ---- reorientation vs nibabel: a sheared, oblique affine whose axes point P, I, L
case = "reorient"
a = rng.standard_normal((5, 6, 7))
R = rot(2, 17) @ rot(0, -11)
P = np.array([[0, 0, -1], [-1, 0, 0], [0, -1, 0]], dtype=float)  # voxel axes -> P, I, L-ish
A = np.eye(4)
A[:3, :3] = R @ P @ np.diag([1.3, 0.7, 2.1]) + np.array([[0, 0.05, 0], [0, 0, 0.08], [0.04, 0, 0]])
A[:3, 3] = [12.5, -40.25, 7.75]
put(case, "in", a)
put(case, "affine", A)
META[case] = "".join(nib.aff2axcodes(A))
for codes in ["RAS", "LPS", "SAR", "IPL", "LAI"]:
    ornt = nib.orientations.io_orientation(A)
    tr = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(codes))
    d = nib.orientations.apply_orientation(a, tr)
    B = A @ nib.orientations.inv_ornt_aff(tr, a.shape)
    if codes == "RAS":
        img = nib.as_closest_canonical(nib.Nifti1Image(a, A))
        assert np.allclose(img.get_fdata(), d) and np.allclose(img.affine, B)
    assert "".join(nib.aff2axcodes(B)) == codes
    put(case, f"{codes}.data", d)
    put(case, f"{codes}.affine", B)

# ---- MONAI Spacing: output grid (shape + affine) and values (bilinear, border padding)
case = "spacing"
a = rng.standard_normal((9, 8, 7))
a = ndi.gaussian_filter(a, 1.0) * 10 + 3
A = np.eye(4)
A[:3, :3] = rot(1, 25) @ rot(2, -10) @ np.diag([1.1, 0.9, 2.2]) + np.array([[0, 0.1, 0], [0, 0, 0], [0, 0, 0]])
A[:3, 3] = [-20.0, 33.0, 5.5]
put(case, "in", a)
put(case, "affine", A)
for k, pix in enumerate([(0.7, 0.8, 1.0), (2.0, 1.5, 3.1), (1.1, 0.9, 2.2)]):
    v, B = monai_spacing_grid(a, A, pix)
    ref, _ = scipy_resample(a, A, v.shape, B, 1, border=True)
    assert np.abs(ref - v).max() < 2e-4, np.abs(ref - v).max()  # MONAI (float32 grid_sample) == scipy
    put(case, f"{k}.pixdim", pix)
    put(case, f"{k}.shape", v.shape, np.int64)
    put(case, f"{k}.affine", B)
    put(case, f"{k}.out", ref)  # border padding, linear (scipy in float64; MONAI agrees to 2e-4)

# ---- linear / B-spline / nearest onto an oblique grid vs SimpleITK (and scipy)
case = "interp"
a = ndi.gaussian_filter(rng.standard_normal((11, 10, 9)), 1.2) * 100
A = affine_of(rot(2, 12) @ rot(0, 7), [1.2, 0.9, 1.7], [5.0, -7.0, 11.0])
shape = (14, 13, 10)
B = affine_of(rot(1, -9) @ rot(2, 30), [0.95, 1.05, 1.3], [3.0, -9.5, 9.0])
put(case, "in", a)
put(case, "affine", A)
put(case, "out_shape", shape, np.int64)
put(case, "out_affine", B)
lin_sitk = sitk_resample(a, A, shape, B, sitk.sitkLinear, pad=-7.0)
lin_sp, inside = scipy_resample(a, A, shape, B, 1, pad=-7.0)
assert np.abs(lin_sitk - lin_sp).max() < 1e-9, np.abs(lin_sitk - lin_sp).max()
assert 0.2 < inside.mean() < 0.9, inside.mean()  # both inside and padded samples are exercised
put(case, "linear", lin_sitk)
bs_sitk = sitk_resample(a, A, shape, B, sitk.sitkBSpline, pad=-7.0)
bs_sp, _ = scipy_resample(a, A, shape, B, 3, pad=-7.0)
assert np.abs(bs_sitk - bs_sp).max() < 1e-6 * np.abs(a).max(), np.abs(bs_sitk - bs_sp).max()
put(case, "bspline", bs_sp)
lab = (ndi.gaussian_filter(rng.standard_normal((11, 10, 9)), 1.5) * 6).round().clip(-2, 5).astype(np.int32) + 2
put(case, "labels", lab, np.int32)
nn_sitk = sitk_resample(lab, A, shape, B, sitk.sitkNearestNeighbor, pad=0, out_type=sitk.sitkInt32)
put(case, "nearest", nn_sitk, np.int32)
META[case] = f"inside fraction {inside.mean():.3f}"

# ---- axis-aligned spacing change (the fast path) vs SimpleITK: linear, bspline (MONAI grid)
case = "aligned"
a = ndi.gaussian_filter(rng.standard_normal((16, 14, 12)), 1.0) * 50
A = affine_of(np.diag([-1.0, -1.0, 1.0]), [0.8, 0.75, 1.6], [30.0, 20.0, -10.0])  # LPS storage
put(case, "in", a)
put(case, "affine", A)
for k, pix in enumerate([(1.5, 1.5, 1.5), (0.5, 0.6, 0.7)]):
    v, B = monai_spacing_grid(a, A, pix)
    shp = v.shape
    lin = sitk_resample(a, A, shp, B, sitk.sitkLinear)
    ref, _ = scipy_resample(a, A, shp, B, 1)
    assert np.abs(lin - ref).max() < 1e-9
    bs = sitk_resample(a, A, shp, B, sitk.sitkBSpline)
    ref3, _ = scipy_resample(a, A, shp, B, 3)
    assert np.abs(bs - ref3).max() < 1e-6 * np.abs(a).max()
    put(case, f"{k}.pixdim", pix)
    put(case, f"{k}.shape", shp, np.int64)
    put(case, f"{k}.affine", B)
    put(case, f"{k}.linear", lin, np.float32)
    put(case, f"{k}.bspline", ref3, np.float32)

# ---- rigid transform in world coordinates vs SimpleITK (which takes the inverse map)
case = "transform"
a = ndi.gaussian_filter(rng.standard_normal((12, 11, 10)), 1.0) * 20
A = affine_of(rot(0, 8), [1.0, 1.1, 1.4], [-6.0, -5.0, -7.0])
ctr = A[:3, :3] @ (np.array(a.shape) - 1) / 2 + A[:3, 3]
Rm = rot(2, 15) @ rot(1, -6)
M = np.eye(4)
M[:3, :3] = Rm
M[:3, 3] = ctr - Rm @ ctr + np.array([1.5, -2.0, 0.75])  # rotate about the centre, then shift
put(case, "in", a)
put(case, "affine", A)
put(case, "M", M)
ref_shape = (10, 12, 9)
Bref = affine_of(rot(2, 5), [1.2, 1.0, 1.5], [-5.0, -6.0, -6.0])
put(case, "ref_shape", ref_shape, np.int64)
put(case, "ref_affine", Bref)
Minv = np.linalg.inv(M)
put(case, "linear_ref", sitk_resample(a, A, ref_shape, Bref, sitk.sitkLinear, W=Minv))
put(case, "linear_own", sitk_resample(a, A, a.shape, A, sitk.sitkLinear, W=Minv))
put(case, "bspline_own", sitk_resample(a, A, a.shape, A, sitk.sitkBSpline, W=Minv))
chk, _ = scipy_resample(a, A, ref_shape, Bref, 1, W=Minv)
assert np.abs(chk - G["transform.linear_ref"]).max() < 1e-9

# ---- largest connected component vs scipy.ndimage.label
case = "lcc"
f = ndi.gaussian_filter(rng.standard_normal((20, 18, 16)), 1.3)
lab = np.zeros(f.shape, np.int32)
lab[f > 0.12] = 1
lab[f < -0.15] = 2
lab[(f > 0.02) & (f < 0.06)] = 3
lab[lab == 0] = 0
put(case, "in", lab, np.int32)


def keep_largest(lab, conn, only=None):
    st = ndi.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[conn])
    out = lab.copy()
    for l in np.unique(lab):
        if l == 0 or (only is not None and l not in only):
            continue
        cc, n = ndi.label(lab == l, structure=st)
        if n <= 1:
            continue
        sizes = np.bincount(cc.ravel())[1:]
        keep = int(np.argmax(sizes)) + 1  # first of the largest (scan order) on ties
        out[(lab == l) & (cc != keep)] = 0
    return out


ncomp = {}
for conn in (6, 18, 26):
    put(case, f"c{conn}", keep_largest(lab, conn), np.int32)
    ncomp[conn] = [int(ndi.label(lab == l, ndi.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[conn]))[1])
                   for l in (1, 2, 3)]
put(case, "c6_only13", keep_largest(lab, 6, only={1, 3}), np.int32)
META[case] = json.dumps({"components_per_label": ncomp})
assert all(min(v) > 1 for v in ncomp.values()), ncomp  # every label really has several components

# ---- label statistics (numpy)
case = "stats"
A = affine_of(rot(2, 20), [0.8, 0.9, 2.5], [10.0, -20.0, 30.0])
put(case, "affine", A)
labs, rows = [], []
for l in np.unique(lab):
    if l == 0:
        continue
    idx = np.argwhere(lab == l)
    c = idx.mean(0)
    w = A[:3, :3] @ c + A[:3, 3]
    rows.append([l, len(idx), len(idx) * abs(np.linalg.det(A[:3, :3])) / 1000.0, *w, *idx.min(0), *(idx.max(0) + 1)])
put(case, "table", rows)  # label, voxels, volume_ml, centroid xyz, bbox lo xyz, bbox hi xyz

# ---- intensity: MONAI transforms and numpy
case = "intensity"
a = rng.standard_normal((10, 9, 8)) * 300 + 40
a[2, 3, 4] = 3000  # outliers for the percentiles
a[5, 5, 5] = -1024
mask = ndi.gaussian_filter(rng.standard_normal(a.shape), 1.0) > 0
put(case, "in", a)
put(case, "mask", mask, np.uint8)
x = torch.from_numpy(a.astype(np.float32))[None]
put(case, "window_40_400", ScaleIntensityRange(a_min=40 - 200, a_max=40 + 200, b_min=0, b_max=1, clip=True)(x)[0].numpy())
put(case, "minmax", ScaleIntensity(minv=0.0, maxv=1.0)(x)[0].numpy())
put(case, "zscore", NormalizeIntensity()(x)[0].numpy())


def pct_norm(a, lo, hi, m=None):
    sel = a[m] if m is not None else a.ravel()
    plo, phi = np.percentile(sel, lo), np.percentile(sel, hi)
    c = np.clip(a, plo, phi)
    s = c[m] if m is not None else c.ravel()
    return (c - s.mean()) / max(s.std(), 1e-8)


put(case, "pct_default", pct_norm(a, 0.5, 99.5))
put(case, "pct_5_95_mask", pct_norm(a, 5, 95, mask))
put(case, "zscore_mask", (a - a[mask].mean()) / a[mask].std())

# ================================================================== real data (small crops)
os.makedirs(DATA_OUT, exist_ok=True)
ct_path = os.path.join(DATA_OUT, "ct_seg_crop.safetensors")
mr_path = os.path.join(DATA_OUT, "mr_lps_crop.safetensors")
if os.path.isdir(SHARED):
    ct = nib.load(os.path.join(SHARED, "ct_totalseg", "example_ct_sm.nii.gz"))
    sg = nib.load(os.path.join(SHARED, "ct_totalseg", "example_seg.nii.gz"))
    lo, hi = np.array([40, 30, 0]), np.array([88, 78, 30])
    sl = tuple(slice(l, h) for l, h in zip(lo, hi))
    cta = np.asarray(ct.dataobj[sl], dtype=np.float32)
    sga = np.asarray(sg.dataobj[sl], dtype=np.uint8)
    Act = ct.affine.copy()
    Act[:3, 3] = Act[:3, :3] @ lo + Act[:3, 3]
    st_save(ct_path, {"ct": cta, "seg": sga, "affine": Act}, {"source": "TotalSegmentator example_ct_sm / example_seg "
            "voxels [40:88, 30:78, 0:30]"})
    mr = nib.load(os.path.join(SHARED, "ct_totalseg", "example_mr_sm.nii.gz"))
    lo2 = np.array([30, 20, 0])
    mra = np.asarray(mr.dataobj[30:94, 20:76, 0:20], dtype=np.float32)
    Amr = mr.affine.copy()
    Amr[:3, 3] = Amr[:3, :3] @ lo2 + Amr[:3, 3]
    st_save(mr_path, {"mr": mra, "affine": Amr}, {"source": "TotalSegmentator example_mr_sm voxels [30:94, 20:76, 0:20]"})
real = st_load(ct_path)
cta, sga, Act = real["ct"].astype(np.float64), real["seg"], real["affine"]
mrr = st_load(mr_path)
mra, Amr = mrr["mr"].astype(np.float64), mrr["affine"]

case = "real_ct"
v4, B4 = monai_spacing_grid(cta, Act, (4.0, 4.0, 4.0))
shp = v4.shape
put(case, "shape4", shp, np.int64)
put(case, "affine4", B4)
put(case, "linear4", sitk_resample(cta, Act, shp, B4, sitk.sitkLinear), np.float32)
put(case, "bspline4", sitk_resample(cta, Act, shp, B4, sitk.sitkBSpline), np.float32)
put(case, "seg_nearest4", sitk_resample(sga.astype(np.int32), Act, shp, B4, sitk.sitkNearestNeighbor, out_type=sitk.sitkInt32), np.uint8)
ctr = Act[:3, :3] @ (np.array(cta.shape) - 1) / 2 + Act[:3, 3]
Rm = rot(2, 10) @ rot(0, 5)
M = np.eye(4)
M[:3, :3] = Rm
M[:3, 3] = ctr - Rm @ ctr + np.array([4.0, -3.0, 2.0])
put(case, "M", M)
# full-size outputs are stored subsampled ([::2, ::2, ::2]) to keep this file small
SUB = (slice(None, None, 2),) * 3
put(case, "moved_sub2", sitk_resample(cta, Act, cta.shape, Act, sitk.sitkLinear, W=np.linalg.inv(M), pad=-1024.0)[SUB],
    np.float32)
put(case, "lcc26", keep_largest(sga.astype(np.int32), 26), np.uint8)
put(case, "pct_sub2", pct_norm(cta, 0.5, 99.5)[SUB], np.float32)
put(case, "pct_mask_sub2", pct_norm(cta, 0.5, 99.5, sga > 0)[SUB], np.float32)
put(case, "window_sub2", ScaleIntensityRange(a_min=50 - 200, a_max=50 + 200, b_min=0, b_max=1, clip=True)(
    torch.from_numpy(cta.astype(np.float32))).numpy()[SUB], np.float32)
rows = []
for l in np.unique(sga):
    if l == 0:
        continue
    idx = np.argwhere(sga == l)
    w = Act[:3, :3] @ idx.mean(0) + Act[:3, 3]
    rows.append([l, len(idx), len(idx) * abs(np.linalg.det(Act[:3, :3])) / 1000.0, *w, *idx.min(0), *(idx.max(0) + 1)])
put(case, "stats", rows)
META[case] = f"labels {len(rows)}"

case = "real_mr"
img = nib.as_closest_canonical(nib.Nifti1Image(mra, Amr))
put(case, "ras_sub", img.get_fdata()[::4, ::4, ::2], np.float32)  # subsampled [::4, ::4, ::2]
put(case, "ras_affine", img.affine)
META[case] = "".join(nib.aff2axcodes(Amr))

META["versions"] = json.dumps({"numpy": np.__version__, "nibabel": nib.__version__, "SimpleITK": sitk.Version.VersionString(),
                               "scipy": scipy.__version__, "monai": monai.__version__, "torch": torch.__version__})
out = os.path.join(HERE, "volume_ops_ref.safetensors")
st_save(out, G, META)
print(f"wrote {out}: {len(G)} tensors, {os.path.getsize(out)} bytes; "
      f"{ct_path}: {os.path.getsize(ct_path)} bytes; {mr_path}: {os.path.getsize(mr_path)} bytes")
for k, v in META.items():
    print(f"  {k}: {v}")
