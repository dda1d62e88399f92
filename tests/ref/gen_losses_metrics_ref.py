#!/usr/bin/env python3
"""Golden values for tests/lua/test_losses_metrics.lua, computed by MONAI.

    bench/venv/bin/python tests/ref/gen_losses_metrics_ref.py      # MONAI 1.6.1, torch, nibabel

Writes tests/ref/losses_metrics_ref.json:
  "losses":  [{name, loss, opts, input (nested list, float64), target, target_dtype, out, grad}]
             out = MONAI's loss; grad = d sum(out * r)/d input with r = cos(0.1 j) over the flattened
             output (r = 1 for a scalar), so the suite checks the backward pass against torch too.
  "metrics": [{name, fn, opts, pred, gt (shape recipes, see below) | pred_list/gt_list, expect [N][K]}]
  "real":    the TotalSegmentator label maps in data/samples against a copy shifted by one voxel
             (dice, 95% Hausdorff, surface Dice at 3 mm / 2 mm, every class present), as MONAI scores them.
Non-finite numbers are stored as the strings "nan", "inf", "-inf" (JSON has no NaN).

Shape recipes (rebuilt identically by the Lua suite, integer arithmetic only):
  {"shape": [X, Y, Z], "objects": [{"label": k, "kind": "ellipsoid", "c": [cx, cy, cz], "w": [a, b, c], "r2": d}, ...]}
  ellipsoid: a (x-cx)^2 + b (y-cy)^2 + c (z-cz)^2 <= d;  box: {"kind": "box", "lo": [...], "hi": [...]} inclusive.
  Later objects overwrite earlier ones. 2-D recipes have 2-entry vectors. A batch is a list of recipes.
MONAI's inputs are the one-hot [N, C, ...] float tensors of these label maps (num_classes given).
"""
import json
import math
import os
import sys
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")
import monai  # noqa: E402
from monai.losses import DiceCELoss, DiceLoss, FocalLoss  # noqa: E402
from monai.metrics import (compute_average_surface_distance, compute_hausdorff_distance,  # noqa: E402
                           compute_iou, compute_surface_dice)
from monai.metrics.meandice import compute_dice  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
torch.set_default_dtype(torch.float64)


def fin(x):
    if isinstance(x, list):
        return [fin(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if x != x else ("inf" if x > 0 else "-inf")
    return x


def tolist(t):
    return fin(t.detach().double().tolist()) if t.dim() > 0 else fin(float(t.detach().double()))


# ----------------------------------------------------------------------------------------- losses
def seeded(name):
    return torch.Generator().manual_seed(sum(ord(c) * (i + 1) for i, c in enumerate(name)) % (2**31))


LOSSES = []


def loss_case(name, cls, opts, shape, target_kind, **kw):
    g = seeded(name)
    n, c = shape[0], shape[1]
    x = (torch.randn(*shape, generator=g) * 1.5).double()
    spatial = shape[2:]
    if target_kind == "index":
        t = torch.randint(0, c, (n, 1) + tuple(spatial), generator=g)
        target_dtype = "int64"
        tm = t
    elif target_kind == "onehot":
        idx = torch.randint(0, c, (n,) + tuple(spatial), generator=g)
        tm = torch.nn.functional.one_hot(idx, c).movedim(-1, 1).double()
        target_dtype = "float64"
    elif target_kind == "binary":
        tm = (torch.rand(*shape, generator=g) > 0.6).double()
        target_dtype = "float64"
    else:  # soft
        tm = torch.rand(*shape, generator=g).double()
        target_dtype = "float64"
    x.requires_grad_(True)
    mopts = dict(opts)
    for k in ("weight", "alpha", "pos_weight"):
        if isinstance(mopts.get(k), list):
            mopts[k] = torch.tensor(mopts[k], dtype=torch.float64)
    if cls == "BCEWithLogitsLoss":
        fn = torch.nn.BCEWithLogitsLoss(**mopts)
    else:
        fn = {"DiceLoss": DiceLoss, "DiceCELoss": DiceCELoss, "FocalLoss": FocalLoss}[cls](**mopts)
    out = fn(x, tm)
    flat = out.reshape(-1)
    r = torch.cos(0.1 * torch.arange(flat.numel(), dtype=torch.float64)) if flat.numel() > 1 else torch.ones(1)
    (flat.double() * r).sum().backward()
    LOSSES.append({"name": name, "loss": cls, "opts": fin(opts), "input": tolist(x), "target": tolist(tm),
                   "target_dtype": target_dtype, "out_shape": list(out.shape), "out": tolist(out),
                   "grad": tolist(x.grad), "float32": cls == "FocalLoss", **kw})


def gen_losses():
    # DiceLoss
    loss_case("dice softmax onehot_y 2d", "DiceLoss", {"softmax": True, "to_onehot_y": True}, [2, 3, 4, 5], "index")
    loss_case("dice softmax onehot_y 3d", "DiceLoss", {"softmax": True, "to_onehot_y": True}, [2, 3, 3, 4, 5], "index")
    loss_case("dice sigmoid onehot target", "DiceLoss", {"sigmoid": True}, [2, 3, 4, 5], "onehot")
    loss_case("dice no bg squared", "DiceLoss",
              {"softmax": True, "to_onehot_y": True, "include_background": False, "squared_pred": True},
              [2, 4, 3, 4, 3], "index")
    loss_case("dice jaccard batch none", "DiceLoss",
              {"softmax": True, "to_onehot_y": True, "jaccard": True, "batch": True, "reduction": "none"},
              [2, 3, 4, 5], "index")
    loss_case("dice none per item", "DiceLoss", {"sigmoid": True, "reduction": "none"}, [2, 2, 3, 4, 2], "binary")
    loss_case("dice weight sum", "DiceLoss",
              {"softmax": True, "to_onehot_y": True, "reduction": "sum", "weight": [1.0, 2.0, 0.5]},
              [2, 3, 4, 5], "index")
    loss_case("dice scalar weight smooth", "DiceLoss",
              {"sigmoid": True, "weight": 0.7, "smooth_nr": 0.0, "smooth_dr": 1e-6}, [2, 2, 5, 4], "binary")
    loss_case("dice soft label", "DiceLoss", {"sigmoid": True, "soft_label": True}, [2, 3, 4, 5], "soft")
    loss_case("dice no activation probs", "DiceLoss", {}, [1, 2, 4, 4], "binary")
    # DiceCELoss
    loss_case("dicece index 3d", "DiceCELoss", {"softmax": True, "to_onehot_y": True}, [2, 3, 3, 4, 5], "index")
    loss_case("dicece onehot target", "DiceCELoss", {"softmax": True}, [2, 3, 4, 5], "onehot")
    loss_case("dicece weight no bg", "DiceCELoss",
              {"softmax": True, "to_onehot_y": True, "include_background": False, "weight": [0.5, 1.0, 2.0],
               "lambda_dice": 0.7, "lambda_ce": 1.3}, [2, 3, 4, 5], "index")
    loss_case("dicece sum label smoothing", "DiceCELoss",
              {"softmax": True, "to_onehot_y": True, "reduction": "sum", "label_smoothing": 0.1,
               "squared_pred": True}, [2, 4, 3, 4], "index")
    loss_case("dicece single channel bce", "DiceCELoss", {"sigmoid": True}, [2, 1, 4, 5], "binary")
    loss_case("dicece single channel pos_weight", "DiceCELoss", {"sigmoid": True, "weight": [2.5]}, [2, 1, 3, 4, 2],
              "binary")
    # FocalLoss (MONAI computes in float32)
    loss_case("focal sigmoid default", "FocalLoss", {}, [2, 3, 4, 5], "binary")
    loss_case("focal softmax onehot_y", "FocalLoss", {"use_softmax": True, "to_onehot_y": True}, [2, 3, 3, 4, 5],
              "index")
    loss_case("focal sigmoid alpha", "FocalLoss", {"alpha": 0.25, "gamma": 1.5}, [2, 2, 4, 5], "binary")
    loss_case("focal softmax alpha list", "FocalLoss",
              {"use_softmax": True, "to_onehot_y": True, "alpha": [0.2, 0.3, 0.5]}, [2, 3, 4, 5], "index")
    loss_case("focal sigmoid alpha list weight", "FocalLoss",
              {"alpha": [0.25, 0.75, 0.5], "weight": [1.0, 2.0, 0.5]}, [2, 3, 4, 5], "binary")
    loss_case("focal no bg sum", "FocalLoss",
              {"to_onehot_y": True, "include_background": False, "reduction": "sum", "gamma": 2.0},
              [2, 3, 4, 3, 2], "index")
    loss_case("focal none gamma0", "FocalLoss", {"reduction": "none", "gamma": 0.0}, [1, 2, 3, 4], "binary")
    loss_case("focal softmax scalar weight", "FocalLoss", {"use_softmax": True, "to_onehot_y": True, "weight": 0.5},
              [2, 3, 4, 5], "index")
    # BCEWithLogitsLoss
    loss_case("bce pos_weight", "BCEWithLogitsLoss", {"pos_weight": [2.0, 0.5, 1.0]}, [2, 4, 3], "binary")
    loss_case("bce sum", "BCEWithLogitsLoss", {"reduction": "sum"}, [2, 2, 3, 4], "soft")


# ----------------------------------------------------------------------------------------- metrics
def render(rec):
    shape = rec["shape"]
    lab = np.zeros(shape, dtype=np.int64)
    grid = np.indices(shape)
    for o in rec.get("objects", []):
        if o["kind"] == "ellipsoid":
            q = np.zeros(shape, dtype=np.int64)
            for d in range(len(shape)):
                q += o["w"][d] * (grid[d] - o["c"][d]) ** 2
            m = q <= o["r2"]
        else:
            m = np.ones(shape, dtype=bool)
            for d in range(len(shape)):
                m &= (grid[d] >= o["lo"][d]) & (grid[d] <= o["hi"][d])
        lab[m] = o["label"]
    return lab


def onehot(labs, nc):
    t = torch.as_tensor(np.stack(labs))
    return torch.nn.functional.one_hot(t, nc).movedim(-1, 1).float()


METRICS = []


def metric_case(name, fn, opts, preds, gts, nc, **kw):
    p, g = onehot([render(r) for r in preds], nc), onehot([render(r) for r in gts], nc)
    ib = opts.get("include_background", False)
    if fn == "dice":
        v = compute_dice(p, g, include_background=ib, ignore_empty=opts.get("ignore_empty", True))
    elif fn == "iou":
        v = compute_iou(p, g, include_background=ib, ignore_empty=opts.get("ignore_empty", True))
    elif fn in ("hausdorff95", "hausdorff_distance"):
        pct = opts.get("percentile", 95 if fn == "hausdorff95" else None)
        v = compute_hausdorff_distance(p, g, include_background=ib, percentile=pct, spacing=opts.get("spacing"),
                                       directed=opts.get("directed", False))
    elif fn == "surface_dice":
        tol = opts["tolerance_mm"]
        k = nc - (0 if ib else 1)
        v = compute_surface_dice(p, g, [tol] * k if not isinstance(tol, list) else tol, include_background=ib,
                                 spacing=opts.get("spacing"))
    elif fn == "average_surface_distance":
        v = compute_average_surface_distance(p, g, include_background=ib, symmetric=opts.get("symmetric", False),
                                             spacing=opts.get("spacing"))
    else:
        raise ValueError(fn)
    METRICS.append({"name": name, "fn": fn, "opts": dict(opts, num_classes=nc), "pred": preds, "gt": gts,
                    "expect": tolist(v), **kw})


def E(label, c, w, r2):
    return {"label": label, "kind": "ellipsoid", "c": c, "w": w, "r2": r2}


def B(label, lo, hi):
    return {"label": label, "kind": "box", "lo": lo, "hi": hi}


def gen_metrics():
    S = [20, 22, 18]
    a1 = {"shape": S, "objects": [E(1, [9, 10, 8], [1, 1, 1], 36), B(2, [2, 2, 12], [6, 8, 16]),
                                  E(3, [15, 15, 5], [1, 2, 1], 9)]}
    b1 = {"shape": S, "objects": [E(1, [10, 11, 9], [1, 1, 1], 30), B(2, [3, 2, 11], [7, 9, 16]),
                                  E(3, [14, 16, 6], [2, 1, 1], 12)]}
    # item 2: class 3 missing in gt (NaN dice), class 2 missing in both
    a2 = {"shape": S, "objects": [E(1, [8, 9, 9], [1, 1, 2], 40), E(3, [4, 15, 4], [1, 1, 1], 4)]}
    b2 = {"shape": S, "objects": [E(1, [9, 9, 9], [1, 1, 2], 44)]}
    sp = [0.8, 1.25, 2.5]
    for fn in ("dice", "iou"):
        metric_case(f"{fn} label maps batch", fn, {}, [a1, a2], [b1, b2], 4)
        metric_case(f"{fn} include background", fn, {"include_background": True}, [a1, a2], [b1, b2], 4)
        metric_case(f"{fn} not ignore empty", fn, {"ignore_empty": False}, [a1, a2], [b2, a2], 4)
    metric_case("hd95 anisotropic batch", "hausdorff95", {"spacing": sp}, [a1, a2], [b1, b2], 4)
    metric_case("hd max anisotropic", "hausdorff_distance", {"spacing": sp}, [a1, a2], [b1, b2], 4)
    metric_case("hd percentile 50 directed", "hausdorff_distance", {"spacing": sp, "percentile": 50, "directed": True},
                [a1], [b1], 4)
    metric_case("hd95 unit spacing", "hausdorff95", {}, [a1], [b1], 4)
    metric_case("hd95 include background", "hausdorff95", {"spacing": sp, "include_background": True}, [a1], [b1], 4)
    metric_case("hd95 per item spacing", "hausdorff95", {"spacing": [[0.7, 0.7, 3.0], [1.5, 1.0, 1.0]]}, [a1, a2],
                [b1, b2], 4)
    metric_case("surface dice 1mm", "surface_dice", {"spacing": sp, "tolerance_mm": 1.0}, [a1, a2], [b1, b2], 4)
    metric_case("surface dice per class", "surface_dice", {"spacing": sp, "tolerance_mm": [0.5, 2.0, 3.2]}, [a1, a2],
                [b1, b2], 4)
    metric_case("surface dice tolerance 0", "surface_dice", {"tolerance_mm": 0.0}, [a1], [b1], 4)
    metric_case("asd directed", "average_surface_distance", {"spacing": sp}, [a1, a2], [b1, b2], 4)
    metric_case("asd symmetric", "average_surface_distance", {"spacing": sp, "symmetric": True}, [a1, a2], [b1, b2], 4)
    # empty cases: item 1 pred empty / gt full, item 2 both empty, item 3 gt empty
    e = {"shape": [10, 9, 8], "objects": []}
    f = {"shape": [10, 9, 8], "objects": [E(1, [5, 4, 4], [1, 1, 1], 6)]}
    for fn, o in (("dice", {}), ("iou", {}), ("hausdorff95", {}), ("hausdorff_distance", {}),
                  ("surface_dice", {"tolerance_mm": 1.0}), ("average_surface_distance", {}),
                  ("average_surface_distance", {"symmetric": True}), ("dice", {"ignore_empty": False}),
                  ("iou", {"ignore_empty": False}), ("hausdorff_distance", {"directed": True})):
        metric_case(f"empty {fn} {json.dumps(o)}", fn, o, [e, e, f], [f, e, e], 2)
    # touching the image border (edges at the border count), thin structures
    t1 = {"shape": [12, 10, 9], "objects": [B(1, [0, 0, 0], [4, 9, 3]), B(2, [6, 3, 5], [6, 6, 8])]}
    t2 = {"shape": [12, 10, 9], "objects": [B(1, [0, 1, 0], [5, 9, 2]), B(2, [7, 2, 5], [7, 6, 8])]}
    metric_case("hd95 border thin", "hausdorff95", {"spacing": [1.0, 0.6, 1.7]}, [t1], [t2], 3)
    metric_case("surface dice border thin", "surface_dice", {"spacing": [1.0, 0.6, 1.7], "tolerance_mm": 1.0}, [t1],
                [t2], 3)
    # 2-D
    p2 = {"shape": [30, 26], "objects": [E(1, [14, 12], [1, 1], 64), E(2, [5, 20], [1, 3], 12)]}
    g2 = {"shape": [30, 26], "objects": [E(1, [15, 13], [2, 1], 100), E(2, [6, 19], [1, 2], 14)]}
    for fn, o in (("dice", {}), ("iou", {}), ("hausdorff95", {"spacing": [0.5, 1.5]}),
                  ("hausdorff_distance", {"spacing": [0.5, 1.5]}),
                  ("surface_dice", {"spacing": [0.5, 1.5], "tolerance_mm": 1.0}),
                  ("average_surface_distance", {"spacing": [0.5, 1.5], "symmetric": True})):
        metric_case(f"2d {fn}", fn, dict(o, spatial_dims=2), [p2, p2], [g2, p2], 3)


# ----------------------------------------------------------------------------------------- real data
def gen_real():
    import nibabel as nib
    out = []
    for fname, axis, tols in (("example_seg_full_fast.nii.gz", 0, [3.0]), ("example_seg_dicom.nii.gz", 2, [2.0])):
        path = os.path.join(ROOT, "data", "samples", fname)
        img = nib.load(path)
        lab = np.asarray(img.dataobj).astype(np.int64)
        sp = [float(z) for z in img.header.get_zooms()[:3]]
        shifted = np.zeros_like(lab)
        sl_src = [slice(None)] * 3
        sl_dst = [slice(None)] * 3
        sl_src[axis] = slice(0, lab.shape[axis] - 1)
        sl_dst[axis] = slice(1, None)
        shifted[tuple(sl_dst)] = lab[tuple(sl_src)]
        nc = 118
        present = sorted(int(c) for c in np.unique(lab) if c > 0)
        p = torch.nn.functional.one_hot(torch.as_tensor(shifted)[None], nc).movedim(-1, 1).float()
        g = torch.nn.functional.one_hot(torch.as_tensor(lab)[None], nc).movedim(-1, 1).float()
        idx = [0] + present
        p, g = p[:, idx], g[:, idx]  # background + present classes keeps MONAI fast
        d = compute_dice(p, g, include_background=False)[0]
        hd = compute_hausdorff_distance(p, g, percentile=95, spacing=sp)[0]
        sd = compute_surface_dice(p, g, tols * len(present), spacing=sp)[0]
        out.append({"file": "data/samples/" + fname, "shift_axis": axis, "spacing": sp, "num_classes": nc,
                    "classes": present, "tolerance_mm": tols[0], "dice": tolist(d), "hausdorff95": tolist(hd),
                    "surface_dice": tolist(sd)})
    return out


def main():
    gen_losses()
    gen_metrics()
    real = gen_real()
    doc = {"generator": "tests/ref/gen_losses_metrics_ref.py", "monai": monai.__version__, "torch": torch.__version__,
           "losses": LOSSES, "metrics": METRICS, "real": real}
    path = os.path.join(HERE, "losses_metrics_ref.json")
    with open(path, "w") as fh:
        json.dump(doc, fh, separators=(",", ":"), allow_nan=False)
        fh.write("\n")
    print(f"wrote {path}: {len(LOSSES)} loss cases, {len(METRICS)} metric cases, {len(real)} real-data sets",
          file=sys.stderr)


if __name__ == "__main__":
    main()
