#!/usr/bin/env python3
"""Golden values for medlua's sliding-window inference (lua/medlua/inferers.lua) from MONAI 1.6.1.

Run with the benchmark venv (torch + MONAI):
    bench/venv/bin/python tests/ref/gen_inferers_ref.py

Writes tests/ref/inferers_ref.safetensors:
    swi.<case>.x, .w, .b, .out   monai.inferers.sliding_window_inference on x (float64, one case float32)
                                 with a position-dependent predictor (below) whose 1x1 conv weights are
                                 w [2, C, 1...] and b [2]; .out is MONAI's result
    imap.<case>                  monai.data.utils.compute_importance_map (float32)
and the metadata
    "swi"    JSON {case: {roi, sw_batch_size, overlap, mode, sigma_scale, padding_mode, cval, predictor}}
    "imap"   JSON {case: {roi, mode, sigma_scale}}
    "starts" JSON list of {image, roi, overlap, scan_interval, starts}: MONAI's _get_scan_interval and
             dense_patch_slices (window start per spatial dim, in MONAI's "ij" order)
The cases are replayed one by one in tests/lua/test_inferers.lua.

The predictor (2-D or 3-D, per window):
    poolsq(x) = conv(avg_pool(x, 3, stride 1, padding 1, count_include_pad=True) + 0.5 * x * x, w, b)
The zero padding of the pool at a window's border makes each window's output depend on where the window
sits, so overlapping windows disagree and the blending weights (constant / gaussian) matter.
"softmax" and "sigmoid" wrap it (medlua replays those with its `activation` option).
"""
import json
import os
import sys
import zlib

import numpy as np
import torch
import torch.nn.functional as F

import monai
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import sliding_window_inference
from monai.inferers.utils import _get_scan_interval

assert monai.__version__ == "1.6.1", monai.__version__
assert sys.byteorder == "little"
torch.set_num_threads(1)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from st_io import st_save  # noqa: E402


def gen(name):
    """a generator seeded from the case name, so adding a case does not change the others"""
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


def poolsq(w, b):
    def f(x):
        nsp = x.dim() - 2
        pool = F.avg_pool3d if nsp == 3 else F.avg_pool2d
        conv = F.conv3d if nsp == 3 else F.conv2d
        h = pool(x, 3, stride=1, padding=1, count_include_pad=True) + 0.5 * x * x
        return conv(h, w.to(x.dtype), b.to(x.dtype))
    return f


tensors, swi_cases, imap_cases, starts_cases = {}, {}, {}, []


def swi(case, shape, roi, sw, overlap=0.25, mode="constant", sigma_scale=0.125, padding_mode="constant", cval=0.0,
        predictor="poolsq", dtype=torch.float64):
    g = gen(case)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    C, nsp = shape[1], len(shape) - 2
    w = torch.randn((2, C) + (1,) * nsp, generator=g, dtype=torch.float64)
    b = torch.randn(2, generator=g, dtype=torch.float64)
    base = poolsq(w, b)
    pred = {"poolsq": base,
            "softmax": lambda t: torch.softmax(base(t), 1),
            "sigmoid": lambda t: torch.sigmoid(base(t))}[predictor]
    with torch.no_grad():
        out = sliding_window_inference(x, roi, sw, pred, overlap=overlap, mode=mode, sigma_scale=sigma_scale,
                                       padding_mode=padding_mode, cval=cval)
    assert out.shape[2:] == x.shape[2:] and out.dtype == dtype, (out.shape, out.dtype)
    # the blending must matter: a plain (un-windowed) prediction differs from the windowed one
    with torch.no_grad():
        whole = pred(x)
    assert (out - whole).abs().max() > 1e-3, case
    p = f"swi.{case}."
    tensors[p + "x"] = x.numpy()
    tensors[p + "w"] = w.numpy()
    tensors[p + "b"] = b.numpy()
    tensors[p + "out"] = out.numpy()
    swi_cases[case] = {"roi": list(roi), "sw_batch_size": sw, "overlap": overlap, "mode": mode,
                       "sigma_scale": list(sigma_scale) if isinstance(sigma_scale, (tuple, list)) else sigma_scale,
                       "padding_mode": padding_mode, "cval": cval, "predictor": predictor,
                       "dtype": str(dtype).replace("torch.", "")}


# 3-D: roi inside the image, windows shifted back at the far border
swi("3d_const_o25", (1, 2, 13, 11, 9), (6, 5, 4), 1, overlap=0.25, mode="constant")
swi("3d_gauss_o50_b2_sw3", (2, 1, 12, 10, 9), (5, 6, 4), 3, overlap=0.5, mode="gaussian", sigma_scale=0.125)
swi("3d_gauss_o0", (1, 1, 10, 9, 8), (4, 4, 4), 1, overlap=0.0, mode="gaussian", sigma_scale=0.125)
swi("3d_const_o0_sw3", (1, 2, 10, 9, 8), (4, 4, 4), 3, overlap=0.0, mode="constant")
# roi larger than the image in some dims (padding path), smaller in others
swi("3d_pad_gauss_s03", (1, 1, 7, 12, 5), (9, 5, 8), 3, overlap=0.25, mode="gaussian", sigma_scale=0.3)
swi("3d_pad_const_b2", (2, 2, 6, 11, 10), (8, 4, 4), 1, overlap=0.5, mode="constant")
swi("3d_pad_replicate", (1, 1, 5, 9, 11), (7, 4, 5), 3, overlap=0.25, mode="gaussian", padding_mode="replicate")
swi("3d_pad_cval", (1, 1, 5, 9, 8), (6, 5, 8), 1, overlap=0.5, mode="gaussian", sigma_scale=0.25, cval=0.7)
# roi equal to the image in one dim (scan interval = roi there)
swi("3d_roi_eq", (1, 1, 8, 11, 6), (8, 5, 4), 3, overlap=0.25, mode="gaussian", sigma_scale=(0.1, 0.2, 0.15))
swi("3d_f32_gauss", (2, 1, 11, 10, 9), (5, 5, 5), 3, overlap=0.5, mode="gaussian", sigma_scale=0.125,
    dtype=torch.float32)
# activations (MONAI: inside the predictor; medlua: the `activation` option)
swi("3d_softmax", (1, 1, 10, 9, 8), (5, 4, 6), 3, overlap=0.25, mode="gaussian", predictor="softmax")
swi("3d_sigmoid_b2", (2, 1, 9, 10, 7), (4, 6, 5), 1, overlap=0.5, mode="constant", predictor="sigmoid")
# 2-D
swi("2d_gauss_o50_b2_sw3", (2, 3, 17, 14), (8, 6), 3, overlap=0.5, mode="gaussian", sigma_scale=0.25)
swi("2d_const_o25", (1, 1, 15, 16), (7, 5), 1, overlap=0.25, mode="constant")
swi("2d_pad_replicate", (1, 1, 5, 20), (8, 7), 1, overlap=0.25, mode="gaussian", padding_mode="replicate")
swi("2d_pad_const_o0_sw3", (2, 1, 6, 13), (9, 4), 3, overlap=0.0, mode="gaussian", sigma_scale=0.5)

# importance maps (float32, MONAI's default dtype)
for case, roi, mode, ss in [("g3_0125", (6, 5, 4), "gaussian", 0.125), ("g3_03", (9, 5, 8), "gaussian", 0.3),
                            ("g3_tuple", (8, 5, 4), "gaussian", (0.1, 0.2, 0.15)),
                            ("g3_small_sigma", (16, 7, 9), "gaussian", 0.05),
                            ("g2_025", (8, 6), "gaussian", 0.25), ("g2_even_odd", (10, 11), "gaussian", 0.125),
                            ("c3", (5, 6, 4), "constant", 0.125), ("g3_big", (24, 20, 32), "gaussian", 0.125)]:
    m = compute_importance_map(roi, mode=mode, sigma_scale=ss, device="cpu")
    assert m.dtype == torch.float32
    tensors[f"imap.{case}"] = m.numpy()
    imap_cases[case] = {"roi": list(roi), "mode": mode, "sigma_scale": list(ss) if isinstance(ss, tuple) else ss}

# window starts: MONAI's scan interval + dense_patch_slices on (padded) image sizes
for img, roi, ov in [((512, 512, 300), (96, 96, 96), 0.25), ((13, 11, 9), (6, 5, 4), 0.25),
                     ((12, 10, 9), (5, 6, 4), 0.5), ((10, 9, 8), (4, 4, 4), 0.0), ((8, 11, 6), (8, 5, 4), 0.25),
                     ((17, 14), (8, 6), 0.5), ((20, 7), (3, 7), 0.9), ((100,), (1,), 0.5), ((33, 5), (32, 2), 0.75),
                     ((64, 64, 64), (64, 32, 16), 0.6), ((7, 30), (7, 29), 0.25)]:
    si = _get_scan_interval(img, roi, len(img), (ov,) * len(img))
    sl = dense_patch_slices(img, roi, si)
    starts_cases.append({"image": list(img), "roi": list(roi), "overlap": ov, "scan_interval": [int(v) for v in si],
                         "starts": [[int(s.start) for s in w] for w in sl]})

out = os.path.join(HERE, "inferers_ref.safetensors")
st_save(out, tensors, {"monai": monai.__version__, "torch": torch.__version__, "swi": json.dumps(swi_cases),
                       "imap": json.dumps(imap_cases), "starts": json.dumps(starts_cases)})
print(f"wrote {out}: {len(swi_cases)} sliding-window cases, {len(imap_cases)} importance maps, "
      f"{len(starts_cases)} window-start cases, {os.path.getsize(out)} bytes")
