#!/usr/bin/env python3
"""Peers for bench/bench_dicom.sh: load a DICOM series directory into a float32 volume.

  pydicom: read every file, sort by ImagePositionPatient projected on the slice normal, stack,
           apply RescaleSlope/Intercept, float32 (the usual hand-written loader).
  sitk:    SimpleITK ImageSeriesReader (GDCM) on GetGDCMSeriesFileNames, float32 output.

Prints one line per peer: "<peer> median_s=<s> min_s=<s> runs=<n> shape=<shape> sum=<sum>".
Usage: pydicom_sitk_load.py DIR [--runs N] [--peers pydicom,sitk]
"""
import argparse
import os
import statistics
import time

import numpy as np


def load_pydicom(d):
    import pydicom

    files = [os.path.join(d, f) for f in sorted(os.listdir(d)) if not f.startswith(".")]
    dss = [pydicom.dcmread(f) for f in files]
    dss = [ds for ds in dss if "PixelData" in ds]
    iop = np.array(dss[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    dss.sort(key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, dtype=float))))
    vol = np.stack([ds.pixel_array for ds in dss]).astype(np.float32)
    slope = np.array([float(getattr(ds, "RescaleSlope", 1)) for ds in dss], dtype=np.float32)
    icpt = np.array([float(getattr(ds, "RescaleIntercept", 0)) for ds in dss], dtype=np.float32)
    vol = vol * slope[:, None, None] + icpt[:, None, None]
    return vol


def load_sitk(d):
    import SimpleITK as sitk

    r = sitk.ImageSeriesReader()
    r.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(d))
    r.SetOutputPixelType(sitk.sitkFloat32)
    return r.Execute()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--peers", default="pydicom,sitk")
    a = ap.parse_args()
    for peer in a.peers.split(","):
        fn = {"pydicom": load_pydicom, "sitk": load_sitk}[peer]
        times = []
        vol = None
        for _ in range(a.runs):
            vol = None
            t0 = time.perf_counter()
            vol = fn(a.dir)
            times.append(time.perf_counter() - t0)
        if peer == "sitk":
            import SimpleITK as sitk

            vol = sitk.GetArrayFromImage(vol)  # outside the timing
        print(
            f"{peer} median_s={statistics.median(times):.4f} min_s={min(times):.4f} runs={a.runs} "
            f"shape={'x'.join(map(str, vol.shape))} sum={float(np.asarray(vol, dtype=np.float64).sum()):.6g}",
            flush=True,
        )


if __name__ == "__main__":
    main()
