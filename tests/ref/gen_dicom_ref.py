#!/usr/bin/env python3
"""Golden values for the DICOM reader (tests/c/test_dicom.c, tests/lua/test_dicom.lua).

Run from the repository root with a python that has pydicom 3 (+ pylibjpeg, pylibjpeg-openjpeg,
pylibjpeg-libjpeg for the compressed syntaxes) and nibabel, and with dcm2niix on the PATH:

    bench/venv/bin/python tests/ref/gen_dicom_ref.py              # writes tests/ref/dicom_ref.json
    bench/venv/bin/python tests/ref/gen_dicom_ref.py --make-data  # (re)makes tests/data/dicom/mosaic/tiny_mosaic.dcm

(bench/run.sh installs pydicom, pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-libjpeg and nibabel into bench/venv.
/usr/bin/python3 with Debian's python3-pydicom 2.3 + python3-nibabel runs too, but pydicom 2.3 has no
JPEG-LS / lossless JPEG / 12-bit JPEG decoder there and writes 14 fewer cases; the values of the cases both
write agree, except the lossy JPEG baseline file, decoded by a different library.)

For each case it builds the volume medlua must return with an independent Python implementation of
the same conventions (pydicom for pixels and headers):
  data [X = columns, Y = rows, Z = slices(, T)], slices sorted by ImagePositionPatient projected on the
  normal (row x column cosines), repeated positions -> T (ordered by TemporalPosition*, then
  InstanceNumber), value = stored * RescaleSlope + RescaleIntercept in float32 (per image), affine =
  LPS geometry with rows 0 and 1 negated (RAS). Siemens mosaics are cut into their tiles, placed as
  dcm2niix places them (first tile's corner, SpacingBetweenSlices along the CSA SliceNormalVector);
  RLE Lossless with 1 bit allocated, which pydicom cannot decode, is decoded here (PackBits).
and stores shape, affine, sum/min/max, the sum of every (k, t) slice, a few voxels and the sum of the
stored integers. For the series directories it also runs dcm2niix and checks that dcm2niix's NIfTI
puts every voxel of ours at the same world position with the same value (its affine may flip axes,
so the check maps our voxel grid through inv(A_dcm2niix) @ A_ours, which must be a signed
permutation with integer offsets); it stores dcm2niix's affine re-expressed in our voxel order
("affine_dcm2niix"), which the tests compare with ours to 5e-4. The mosaic files are checked the same way
against the dcm2niix NIfTI stored beside them (ref_dcm2niix.nii).
Data that is missing is skipped (the case is not written).
"""
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pydicom

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))
DEB = "/usr/lib/python3/dist-packages/pydicom/data/test_files"


# ------------------------------------------------------------------ reference implementation
def rle_1bit(ds):
    """RLE Lossless with BitsAllocated 1, which pydicom refuses: each frame is one PackBits segment
    holding the frame's bit-packed bytes (the native layout)."""
    import struct

    nf = int(getattr(ds, "NumberOfFrames", 1) or 1)
    try:
        from pydicom.encaps import generate_frames
        frames = list(generate_frames(ds.PixelData, number_of_frames=nf))
    except ImportError:  # pydicom 2
        from pydicom.encaps import generate_pixel_data_frame
        frames = list(generate_pixel_data_frame(ds.PixelData, nf))
    out = bytearray()
    for f in frames:
        nseg, off = struct.unpack("<2I", f[:8])
        assert nseg == 1, f"{nseg} RLE segments"
        seg, i = f[off:], 0
        dec = bytearray()
        while i < len(seg):
            n = seg[i] - 256 if seg[i] > 127 else seg[i]
            i += 1
            if n >= 0:
                dec += seg[i:i + n + 1]
                i += n + 1
            elif n != -128:
                dec += bytes([seg[i]]) * (1 - n)
                i += 1
        need = (int(ds.Rows) * int(ds.Columns) + 7) // 8
        assert len(dec) >= need, "short RLE segment"
        out += dec[:need]
    bits = np.unpackbits(np.frombuffer(bytes(out), dtype=np.uint8), bitorder="little")
    return bits[: nf * int(ds.Rows) * int(ds.Columns)].reshape(nf, int(ds.Rows), int(ds.Columns))


def frames_of(path):
    """(header values, stored pixel frames [F, rows, cols] int64) of one file."""
    ds = pydicom.dcmread(path, force=True)
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if ts == "1.2.840.10008.1.2.5" and int(getattr(ds, "BitsAllocated", 16)) == 1:
        arr = rle_1bit(ds)
    else:
        arr = ds.pixel_array
    nf = int(getattr(ds, "NumberOfFrames", 1) or 1)
    arr = np.asarray(arr).reshape(nf, int(ds.Rows), int(ds.Columns)).astype(np.int64)
    if int(getattr(ds, "BitsAllocated", 16)) == 1:
        arr = arr & 1
    return ds, arr


def fget(x, key, n=None):
    v = getattr(x, key, None)
    if v is None or v == "":
        return None
    try:
        if n is None:
            return float(v)
        v = [float(a) for a in v]
        return v if len(v) >= n else None
    except (TypeError, ValueError):
        return None


def valid_ps(ps):
    return ps if ps and ps[0] > 0 and ps[1] > 0 else None


def group_item(it, seq):
    s = getattr(it, seq, None)
    return s[0] if s else None


def private_value(ds, group, creator, elem):
    """Value of (group, xxEE) in the private block whose creator (group, 00xx) is `creator`."""
    for xx in range(0x10, 0x100):
        c = ds.get((group, xx))
        if c is not None and creator in str(c.value):
            v = ds.get((group, (xx << 8) | elem))
            return None if v is None else v.value
    return None


def csa_numbers(raw, name):
    """Numbers of tag `name` in a Siemens CSA (SV10) header (nibabel's reader)."""
    from nibabel.nicom import csareader
    try:
        tags = csareader.read(raw)["tags"]
    except Exception:  # noqa: BLE001
        return []
    t = tags.get(name)
    return [float(x) for x in t["items"]] if t else []


def mosaic_of(ds):
    """(number of tiles, tiles per row, CSA SliceNormalVector or None) of a Siemens mosaic, or None.
    As dcm2niix: CSA NumberOfImagesInMosaic, else (0019,xx0A), else ImageType MOSAIC with
    AcquisitionMatrix; ceil(sqrt(n)) tiles per row and column."""
    csa = private_value(ds, 0x29, "SIEMENS CSA HEADER", 0x10)
    n, snv = 0, None
    if csa is not None:
        v = csa_numbers(bytes(csa), "NumberOfImagesInMosaic")
        n = int(round(v[0])) if v else 0
        v = csa_numbers(bytes(csa), "SliceNormalVector")
        snv = np.array(v[:3]) if len(v) >= 3 else None
    if n < 2:
        v = private_value(ds, 0x19, "SIEMENS MR HEADER", 0x0A)
        if isinstance(v, bytes):
            v = int.from_bytes(v[:2], "little")
        n = int(v) if v is not None else 0
    if n < 2 and "MOSAIC" in [str(x) for x in (getattr(ds, "ImageType", None) or [])]:
        am = [int(x) for x in (getattr(ds, "AcquisitionMatrix", None) or [])]
        if len(am) == 4:
            fr, ph = am[0] or am[1], am[3] or am[2]
            R, C = int(ds.Rows), int(ds.Columns)
            if fr and ph and C % fr == 0 and R % ph == 0 and C // fr > 2 and R // ph > 2:
                n = (C // fr) * (R // ph)
    if n < 2:
        return None
    nrc = int(np.ceil(np.sqrt(n)))
    assert int(ds.Rows) % nrc == 0 and int(ds.Columns) % nrc == 0
    return n, nrc, snv


def mosaic_slices(ds, arr, base, fi):
    """The tiles of a mosaic as slices, placed as dcm2niix places them."""
    n, nrc, snv = mosaic_of(ds)
    R, C = int(ds.Rows), int(ds.Columns)
    tr, tc = R // nrc, C // nrc
    iop = np.array(base["iop"] or [1, 0, 0, 0, 1, 0], dtype=float)
    r, c = iop[:3], iop[3:]
    nrm = np.cross(r, c)
    nrm /= np.linalg.norm(nrm)
    if snv is not None and np.dot(snv, nrm) < 0:
        nrm = -nrm
    ps = base["ps"] or [1.0, 1.0]
    dz = base["between"] if base["between"] and base["between"] > 0 else (
        base["thick"] if base["thick"] and base["thick"] > 0 else 1.0)
    corner = np.array(base["ipp"]) + (C - tc) / 2 * ps[1] * r + (R - tr) / 2 * ps[0] * c
    out = []
    for q in range(n):
        y0, x0 = (q // nrc) * tr, (q % nrc) * tc
        d = dict(base, rows=tr, cols=tc, file=fi, frame=q, stack_pos=0, stored=arr[0][y0:y0 + tr, x0:x0 + tc],
                 ipp=list(corner + q * dz * nrm), between=dz)
        out.append(d)
    return out


def slices_of(paths):
    out = []
    for fi, p in enumerate(paths):
        ds, arr = frames_of(p)
        nf = arr.shape[0]
        base = dict(
            rows=int(ds.Rows), cols=int(ds.Columns),
            ipp=fget(ds, "ImagePositionPatient", 3), iop=fget(ds, "ImageOrientationPatient", 6),
            ps=valid_ps(fget(ds, "PixelSpacing", 2) or fget(ds, "ImagerPixelSpacing", 2)),
            slope=fget(ds, "RescaleSlope"), icpt=fget(ds, "RescaleIntercept"),
            thick=fget(ds, "SliceThickness"), between=fget(ds, "SpacingBetweenSlices"),
            instance=int(ds.InstanceNumber) if getattr(ds, "InstanceNumber", None) not in (None, "") else None,
            temporal=int(ds.TemporalPositionIdentifier) if getattr(ds, "TemporalPositionIdentifier", None) not in (None, "") else 0,
        )
        if nf == 1 and int(getattr(ds, "BitsAllocated", 16)) != 1 and mosaic_of(ds):
            out += mosaic_slices(ds, arr, base, fi)
            continue
        shared = group_item(ds, "SharedFunctionalGroupsSequence")
        perframe = getattr(ds, "PerFrameFunctionalGroupsSequence", None)

        def groups(g, d):
            if g is None:
                return
            pp = group_item(g, "PlanePositionSequence")
            if pp is not None and fget(pp, "ImagePositionPatient", 3):
                d["ipp"] = fget(pp, "ImagePositionPatient", 3)
            po = group_item(g, "PlaneOrientationSequence")
            if po is not None and fget(po, "ImageOrientationPatient", 6):
                d["iop"] = fget(po, "ImageOrientationPatient", 6)
            pm = group_item(g, "PixelMeasuresSequence")
            if pm is not None and valid_ps(fget(pm, "PixelSpacing", 2)):
                d["ps"] = fget(pm, "PixelSpacing", 2)
            pv = group_item(g, "PixelValueTransformationSequence")
            if pv is not None and (fget(pv, "RescaleSlope") is not None or fget(pv, "RescaleIntercept") is not None):
                d["slope"] = fget(pv, "RescaleSlope")
                d["icpt"] = fget(pv, "RescaleIntercept")
            fc = group_item(g, "FrameContentSequence")
            if fc is not None:
                if getattr(fc, "TemporalPositionIndex", None) is not None:
                    d["temporal"] = int(fc.TemporalPositionIndex)
                if getattr(fc, "InStackPositionNumber", None) is not None:
                    d["stack_pos"] = int(fc.InStackPositionNumber)

        if perframe is None:
            groups(shared, base)  # shared groups fold into the classic values
        for q in range(nf):
            d = dict(base, file=fi, frame=q, stored=arr[q], stack_pos=0)
            if perframe is not None:
                d["ipp"] = None
                groups(shared, d)
                groups(perframe[q], d)
            elif nf > 1 and base["ipp"] is not None:
                iop = np.array(base["iop"] or [1, 0, 0, 0, 1, 0], dtype=float)
                nrm = np.cross(iop[:3], iop[3:])
                nrm /= np.linalg.norm(nrm)
                dz = base["between"] if base["between"] and base["between"] > 0 else (
                    base["thick"] if base["thick"] and base["thick"] > 0 else 1.0)
                grid = fget(ds, "GridFrameOffsetVector", nf)
                off = (grid[q] - grid[0]) if grid else q * dz
                d["ipp"] = list(np.array(base["ipp"]) + off * nrm)
            elif nf > 1:
                d["ipp"] = None
            out.append(d)
    return out


def assemble(sl):
    s0 = sl[0]
    iop = np.array(s0["iop"] if s0["iop"] else [1, 0, 0, 0, 1, 0], dtype=float)
    r, c = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    c = c - np.dot(r, c) * r
    c /= np.linalg.norm(c)
    n = np.cross(r, c)
    ps = s0["ps"] or [1.0, 1.0]
    all_ipp = all(s["ipp"] is not None for s in sl)
    all_inst = all(s["instance"] is not None for s in sl)

    def tie(s):
        return (s["temporal"], s["instance"] if all_inst else 0, s["stack_pos"], s["file"], s["frame"])

    fdz = s0["between"] if s0["between"] and s0["between"] > 0 else (s0["thick"] if s0["thick"] and s0["thick"] > 0 else 1.0)
    if all_ipp and len(sl) > 1:
        d = [float(np.dot(s["ipp"], n)) for s in sl]
        order = sorted(range(len(sl)), key=lambda i: (d[i],) + tie(sl[i]))
        span = d[order[-1]] - d[order[0]]
        tol = 1e-3 + 1e-5 * span
        clusters, start = [], 0
        for i in range(1, len(order) + 1):
            if i == len(order) or d[order[i]] - d[order[start]] > tol:
                clusters.append(sorted(order[start:i], key=lambda j: tie(sl[j])))
                start = i
        nt = len(clusters[0])
        assert all(len(cl) == nt for cl in clusters), "incomplete 4-D"
        nz = len(clusters)
        stack = [[cl[t] for cl in clusters] for t in range(nt)]  # stack[t][k]
        p0 = np.array(sl[stack[0][0]]["ipp"])
        if nz >= 2:
            dd = np.array([d[stack[0][k]] for k in range(nz)])
            gaps = np.diff(dd)
            gm = float(np.median(gaps))
            uneven = (gaps.max() - gm > min(0.2, 0.1 * gm)) or (gm - gaps.min() > min(0.2, 0.1 * gm))
            pl = np.array(sl[stack[0][nz - 1]]["ipp"])
            v = pl - p0
            L = dd[-1] - dd[0]
            w = v - np.dot(v, n) * n
            tilted = np.linalg.norm(w) > 0.1 * min(ps)
            assert not tilted, "tilted series not covered by the reference"
            step = gm if uneven else L / (nz - 1)
            axis = n * step
        else:
            axis = n * fdz
    else:
        order = sorted(range(len(sl)), key=lambda i: tie(sl[i]))
        nt, nz = 1, len(sl)
        stack = [order]
        p0 = np.array(sl[order[0]]["ipp"]) if sl[order[0]]["ipp"] is not None else np.zeros(3)
        axis = n * fdz
    A = np.eye(4)
    A[:3, 0] = r * ps[1]
    A[:3, 1] = c * ps[0]
    A[:3, 2] = axis
    A[:3, 3] = p0
    A[0, :] *= -1
    A[1, :] *= -1
    X, Y = s0["cols"], s0["rows"]
    data = np.zeros((X, Y, nz, nt), dtype=np.float32)
    stored = np.zeros((X, Y, nz, nt), dtype=np.int64)
    for t in range(nt):
        for k in range(nz):
            s = sl[stack[t][k]]
            slope = s["slope"] if s["slope"] is not None else 1.0
            icpt = s["icpt"] if s["icpt"] is not None else 0.0
            st = s["stored"]  # [rows, cols]
            stored[:, :, k, t] = st.T
            data[:, :, k, t] = (st.T.astype(np.float64) * slope + icpt).astype(np.float32)
    if nt == 1:
        data, stored = data[..., 0], stored[..., 0]
    return A, data, stored


def series_files(d):
    """The files of the largest series in directory d (recursive)."""
    files = []
    for root, dirs, fs in os.walk(d):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        for f in fs:
            if not f.startswith("."):
                files.append(os.path.join(root, f))
    groups = {}
    for f in sorted(files):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:
            continue
        if "Rows" not in ds:
            continue
        nf = int(getattr(ds, "NumberOfFrames", 1) or 1)
        g = groups.setdefault(str(getattr(ds, "SeriesInstanceUID", "")), [0, []])
        g[0] += nf
        g[1].append(f)
    best = max(groups.values(), key=lambda g: g[0])
    return sorted(best[1])


# ------------------------------------------------------------------------------ statistics
def probe_points(shape, count=8):
    pts = []
    for a in range(count):
        p = [(a * 37 + 11) % shape[0], (a * 53 + 7) % shape[1], (a * 13 + 3) % shape[2]]
        if len(shape) == 4:
            p.append(a % shape[3])
        pts.append(p)
    return pts


def stats(A, data, stored):
    shp = list(data.shape)
    d4 = data if data.ndim == 4 else data[..., None]
    slice_sums = [[float(d4[:, :, k, t].astype(np.float64).sum()) for k in range(d4.shape[2])] for t in range(d4.shape[3])]
    pts = probe_points(shp)
    return dict(
        shape=shp,
        affine=[float(x) for x in A.reshape(-1)],
        sum=float(data.astype(np.float64).sum()),
        min=float(data.min()),
        max=float(data.max()),
        stored_sum=int(stored.sum()),
        slice_sums=slice_sums,
        voxels=[dict(index=p, value=float(data[tuple(p)])) for p in pts],
    )


# ------------------------------------------------------------------------------- dcm2niix check
def dcm2niix_check(d, A, data):
    import nibabel as nib

    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run(["dcm2niix", "-z", "n", "-b", "n", "-f", "%s", "-o", tmp, d],
                           capture_output=True, text=True)
        niis = sorted(glob.glob(os.path.join(tmp, "*.nii")))
        niis = [x for x in niis if not any(s in os.path.basename(x) for s in ("_Eq", "_Tilt", "_ROI"))]
        if r.returncode != 0 or not niis:
            print("  dcm2niix failed:", r.stdout[-300:], r.stderr[-300:])
            return None
        return nifti_check(nib.load(max(niis, key=os.path.getsize)), A, data)


def nifti_check(img, A, data):
    """dcm2niix's NIfTI img against our affine A and data (see the module docstring)."""
    B = img.affine
    M = np.linalg.inv(B) @ A  # our voxel -> dcm2niix voxel
    R = np.round(M[:3, :3])
    assert np.abs(M[:3, :3] - R).max() < 1e-3, f"not a permutation:\n{M}"
    off = np.round(M[:3, 3])
    assert np.abs(M[:3, 3] - off).max() < 1e-2, f"non-integer offset {M[:3, 3]}"
    theirs = np.asarray(img.dataobj, dtype=np.float64)
    ours = data if data.ndim == 4 else data[..., None]
    if theirs.ndim == 3:
        theirs = theirs[..., None]
    # map every voxel of ours into theirs
    idx = np.indices(ours.shape[:3]).reshape(3, -1)
    tj = (R @ idx + off[:, None]).astype(int)
    for ax in range(3):
        assert tj[ax].min() >= 0 and tj[ax].max() < theirs.shape[ax], "grids do not overlap"
    maxdiff = 0.0
    for t in range(ours.shape[3]):
        a = ours[..., t].reshape(-1).astype(np.float64)
        b = theirs[tj[0], tj[1], tj[2], t]
        maxdiff = max(maxdiff, float(np.abs(a - b).max()))
    assert maxdiff < 1e-3 * max(1.0, float(np.abs(ours).max())), f"values differ from dcm2niix: {maxdiff}"
    # dcm2niix's affine expressed in our voxel order: B @ M_exact
    P = np.eye(4)
    P[:3, :3] = R
    P[:3, 3] = off
    Bours = B @ P
    err = float(np.abs(Bours - A).max())
    print(f"  dcm2niix agrees: world positions (affine max diff {err:.2e} mm), values max diff {maxdiff:.3g}")
    return dict(affine_dcm2niix=[float(x) for x in Bours.reshape(-1)], dcm2niix_value_maxdiff=maxdiff)


# ------------------------------------------------------------------------------------ the cases
def case_dir(name, d, rel, check_dcm2niix=True):
    if not os.path.isdir(d):
        print(f"skip {name}: {d} missing")
        return None
    files = series_files(d)
    A, data, stored = assemble(slices_of(files))
    c = dict(name=name, path=rel, kind="dir", n_files=len(files))
    c.update(stats(A, data, stored))
    if check_dcm2niix:
        chk = dcm2niix_check(d, A, data)
        if chk:
            c.update(chk)
    print(f"{name}: shape {c['shape']} sum {c['sum']:.6g}")
    return c


def case_file(name, path, rel, lossy=False, nifti=None):
    """nifti: dcm2niix's NIfTI of this file, checked and recorded as affine_dcm2niix when present."""
    if not os.path.isfile(path):
        print(f"skip {name}: {path} missing")
        return None
    try:
        A, data, stored = assemble(slices_of([path]))
    except Exception as e:  # pydicom cannot decode it: no golden value
        print(f"skip {name}: pydicom: {e}")
        return None
    c = dict(name=name, path=rel, kind="file", lossy=lossy)
    c.update(stats(A, data, stored))
    if nifti and os.path.isfile(nifti):
        import nibabel as nib

        c.update(nifti_check(nib.load(nifti), A, data))
    print(f"{name}: shape {c['shape']} sum {c['sum']:.6g}")
    return c


def main():
    cases = []
    add = lambda c: c and cases.append(c)
    # always-present small copies (repo-relative paths)
    for sub in ("ct_j2k", "epi4d"):
        d = os.path.join(ROOT, "tests", "data", "dicom", sub)
        add(case_dir("data_" + sub, d, "tests/data/dicom/" + sub))
    for f in ("emri_small_jpeg_2k_lossless.dcm", "emri_small_RLE.dcm", "liver_rle.dcm"):
        add(case_file("data_" + f, os.path.join(ROOT, "tests/data/dicom/single", f), "tests/data/dicom/single/" + f))
    mos = os.path.join(ROOT, "tests/data/dicom/mosaic")
    add(case_file("data_mosaic_j2k.dcm", os.path.join(mos, "mosaic_j2k.dcm"), "tests/data/dicom/mosaic/mosaic_j2k.dcm",
                  nifti=os.path.join(mos, "ref_dcm2niix.nii.gz")))
    add(case_file("data_tiny_mosaic.dcm", os.path.join(mos, "tiny_mosaic.dcm"), "tests/data/dicom/mosaic/tiny_mosaic.dcm"))
    # shared data (paths relative to the shared data root)
    for name, sub in [("example_ct_dicom", "ct_totalseg/example_ct_dicom"), ("lidc_full", "ct_lidc0001/dicom_full"),
                      ("sag_t1_hfs", "mr_dicom_series/sag_t1_hfs"), ("ge_epi_4d", "mr_dicom_series/ge_epi_4d")]:
        add(case_dir(name, os.path.join(SHARED, sub), "@shared/" + sub))
    for i in range(1, 10):
        add(case_file(f"same_image_{i}", os.path.join(SHARED, f"dicom_transfer_syntax/same_image/{i}.dcm"),
                      f"@shared/dicom_transfer_syntax/same_image/{i}.dcm",
                      nifti=os.path.join(SHARED, "dicom_transfer_syntax/same_image/ref_dcm2niix.nii")))
    lossy = {"MR2_J2KI.dcm", "RG1_J2KI.dcm", "RG3_J2KI.dcm", "rsna_cr_chest_jpegbaseline.dcm", "JPEG-lossy.dcm",
             "JPGExtended.dcm", "SC_jpeg_no_color_transform.dcm", "JPEG2000.dcm", "693_J2KI.dcm"}
    for f in sorted(os.listdir(os.path.join(SHARED, "dicom_transfer_syntax/misc")) if os.path.isdir(
            os.path.join(SHARED, "dicom_transfer_syntax/misc")) else []):
        if f in ("bad_sequence.dcm",):
            continue
        add(case_file("misc_" + f, os.path.join(SHARED, "dicom_transfer_syntax/misc", f),
                      "@shared/dicom_transfer_syntax/misc/" + f, lossy=f in lossy))
    for f in sorted(os.listdir(os.path.join(SHARED, "xray")) if os.path.isdir(os.path.join(SHARED, "xray")) else []):
        if f.endswith(".dcm"):
            add(case_file("xray_" + f, os.path.join(SHARED, "xray", f), "@shared/xray/" + f, lossy=f in lossy))
    deb = ["CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_implicit.dcm",
           "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "MR_small_padded.dcm",
           "JPEG2000.dcm", "JPEG-lossy.dcm", "JPGExtended.dcm", "image_dfl.dcm", "ExplVR_BigEnd.dcm",
           "ExplVR_BigEndNoMeta.dcm", "ExplVR_LitEndNoMeta.dcm", "no_meta.dcm", "no_meta_group_length.dcm",
           "J2K_pixelrep_mismatch.dcm", "GDCMJ2K_TextGBR.dcm", "JPEG2000-embedded-sequence-delimiter.dcm",
           "liver_1frame.dcm", "liver_expb_1frame.dcm", "rtdose.dcm", "rtdose_1frame.dcm", "rtdose_rle.dcm",
           "rtdose_expb.dcm", "693_J2KI.dcm", "emri_small.dcm"]
    for f in deb:
        add(case_file("deb_" + f, os.path.join(DEB, f), "@debian_pydicom/" + f, lossy=f in lossy))
    out = os.path.join(ROOT, "tests", "ref", "dicom_ref.json")
    with open(out, "w") as fh:
        json.dump({"generator": "tests/ref/gen_dicom_ref.py", "pydicom": pydicom.__version__,
                   "shared_root": "../shared/data", "debian_pydicom_root": DEB, "cases": cases}, fh, indent=0)
    print(f"wrote {out}: {len(cases)} cases")


# ------------------------------------------------------------------------------ --make-data
def csa_bytes(tags):
    """A Siemens CSA header (SV10) with tags {name: (vr, [string values])}."""
    import struct

    b = bytearray(b"SV10" + bytes([4, 3, 2, 1]) + struct.pack("<2I", len(tags), 77))
    for name, (vr, vals) in tags.items():
        b += name.encode().ljust(64, b"\0") + struct.pack("<i", len(vals)) + vr.encode().ljust(4, b"\0")
        b += struct.pack("<3i", 3, len(vals), 77)
        for v in vals:
            data = v.encode() + b"\0"
            b += struct.pack("<4i", len(data), len(data), 77, len(data)) + data.ljust((len(data) + 3) // 4 * 4, b"\0")
    return bytes(b)


def make_data():
    """tests/data/dicom/mosaic/tiny_mosaic.dcm: pydicom's MR_small.dcm (64x64) made into a Siemens
    mosaic of 3 tiles of 32x32 (2x2 grid, the last tile empty), oblique, with a CSA SliceNormalVector
    pointing against row x column (the slices run the other way) and (0019,100A)."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
    ds.Manufacturer = "SIEMENS"
    c30, s30 = np.cos(np.radians(30)), np.sin(np.radians(30))
    r, c = np.array([1.0, 0, 0]), np.array([0, c30, -s30])
    ds.ImageOrientationPatient = [f"{x:.8f}" for x in list(r) + list(c)]
    ds.SpacingBetweenSlices = "4.5"
    ds.AcquisitionMatrix = [32, 0, 0, 32]
    n = -np.cross(r, c)
    ds.add_new((0x0019, 0x0010), "LO", "SIEMENS MR HEADER")
    ds.add_new((0x0019, 0x100A), "US", 3)
    ds.add_new((0x0029, 0x0010), "LO", "SIEMENS CSA HEADER")
    ds.add_new((0x0029, 0x1010), "OB", csa_bytes({
        "EchoLinePosition": ("IS", ["16"]),
        "NumberOfImagesInMosaic": ("US", ["3"]),
        "SliceNormalVector": ("FD", [f"{x:.8f}" for x in n]),
    }))
    px = ds.pixel_array.copy()
    px[32:, 32:] = 0  # the unused 4th tile
    ds.PixelData = px.tobytes()
    out = os.path.join(ROOT, "tests/data/dicom/mosaic/tiny_mosaic.dcm")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    ds.save_as(out, **({"enforce_file_format": True} if int(pydicom.__version__.split(".")[0]) >= 3 else {"write_like_original": False}))
    print("wrote", out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--make-data":
        sys.exit(make_data())
    sys.exit(main())
