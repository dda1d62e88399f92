#!/usr/bin/env python3
"""Golden values for medlua's NIfTI reader, from nibabel.

    bench/venv/bin/python tests/ref/gen_nifti_ref.py              # writes tests/ref/nifti_ref.json
    bench/venv/bin/python tests/ref/gen_nifti_ref.py --make-data  # (re)makes tests/data/nifti/made/*
    bench/venv/bin/python tests/ref/gen_nifti_ref.py --check-written DIR
                                                   # nibabel reads the files medlua wrote into DIR
(/usr/bin/python3 with Debian's python3-nibabel works too; the JSON records the nibabel version. The
committed JSON is from nibabel 5.4 in bench/venv: Debian bookworm's nibabel 5.0 turns the near-180-degree
qform of made/n1_qform_near180.nii and made/bad_codes.nii into an affine 1e-3 off (its quaternion
completion in float32); every other entry, the Debian test files included, is the same from both.)

Files covered (each is loaded with nibabel; files nibabel cannot read, and images that are not
NIfTI-1/2 - Analyze, CIFTI - are skipped and listed):
  root "shared"  : every .nii / .nii.gz / .hdr under /work/shared/data (the tests read them from
                   ../shared/data relative to the repository root, skipped when absent)
  root "nibabel" : Debian python3-nibabel's test files /usr/lib/python3/dist-packages/nibabel/tests/data
  root "repo"    : tests/data/nifti (small copies + files made by --make-data: every datatype, both byte
                   orders, scaling, pairs, compressed pairs, multi-member gzip, NIfTI-2, shear, qfac -1,
                   no xform, 2-D, 5-D with trailing 1s, an extension before the data)

For each file: shape, nibabel dtype, img.affine, qform/sform codes (after nibabel's fixes), the
scaling nibabel applies (dataobj.slope / inter), and checksums of get_fdata() (float64): sum, min, max,
wsum = sum(v[i] * ((i % 13) - 6)) over the file (Fortran) order (NaN voxels left out of both and
counted in nan_count), and the values at 4 fixed voxels (null for NaN).

--check-written DIR reads DIR/manifest.json (written by tests/lua/test_nifti.lua when
MEDLUA_NIFTI_INTEROP_OUT=DIR is set): for each file medlua wrote, the affine, shape and sum medlua
expects; nibabel loads each file and the script reports any difference (affine to 1e-4).
"""
import glob
import gzip
import json
import os
import sys

import numpy as np
import nibabel as nib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ROOTS = {
    "shared": "/work/shared/data",
    "nibabel": "/usr/lib/python3/dist-packages/nibabel/tests/data",
    "repo": os.path.join(REPO, "tests", "data", "nifti"),
}
MADE = os.path.join(ROOTS["repo"], "made")


def voxels(shape):
    """4 fixed voxel indices (as lists of the image's rank)."""
    sh = list(shape)
    pts = [
        [0 for _ in sh],
        [s // 2 for s in sh],
        [s - 1 for s in sh],
        [(s // 3) if i % 2 == 0 else (2 * s // 3) for i, s in enumerate(sh)],
    ]
    return pts


def describe(img):
    data = img.get_fdata(dtype=np.float64)
    flat = data.ravel(order="F")
    nan = np.isnan(flat)
    fin = np.where(nan, 0.0, flat)  # NaN voxels count in nan_count only
    w = (np.arange(flat.size) % 13).astype(np.float64) - 6
    hdr = img.header
    return {
        "class": type(img).__name__,
        "shape": [int(s) for s in img.shape],
        "dtype": hdr.get_data_dtype().newbyteorder("=").name,
        "big_endian": hdr.endianness == ">",
        "affine": [[float(x) for x in row] for row in img.affine],
        "qform_code": int(hdr["qform_code"]),
        "sform_code": int(hdr["sform_code"]),
        "slope": float(img.dataobj.slope),
        "inter": float(img.dataobj.inter),
        "sum": float(fin.sum()),
        "min": float(np.nanmin(flat)) if not nan.all() else None,
        "max": float(np.nanmax(flat)) if not nan.all() else None,
        "nan_count": int(nan.sum()),
        "wsum": float(np.dot(fin, w)),
        "voxels": [[p, None if np.isnan(data[tuple(p)]) else float(data[tuple(p)])] for p in voxels(img.shape)],
    }


def candidates(root):
    out = []
    for pat in ("**/*.nii", "**/*.nii.gz", "**/*.hdr", "**/*.hdr.gz"):
        out += glob.glob(os.path.join(root, pat), recursive=True)
    return sorted(set(out))


def gen():
    entries, skipped = [], []
    for rname, root in ROOTS.items():
        if not os.path.isdir(root):
            print(f"root {rname}: {root} missing, skipped")
            continue
        for f in candidates(root):
            rel = os.path.relpath(f, root)
            try:
                img = nib.load(f)
            except Exception as e:  # noqa: BLE001 - report every reason
                skipped.append(f"{rname}/{rel}: nibabel cannot load it ({type(e).__name__}: {e})")
                continue
            if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image, nib.Nifti1Pair, nib.Nifti2Pair)):
                skipped.append(f"{rname}/{rel}: {type(img).__name__}, not NIfTI-1/2")
                continue
            try:
                d = describe(img)
            except Exception as e:  # noqa: BLE001
                skipped.append(f"{rname}/{rel}: nibabel cannot read the data ({type(e).__name__}: {e})")
                continue
            d = {"root": rname, "path": rel, **d}
            entries.append(d)
    out = {
        "generator": "tests/ref/gen_nifti_ref.py",
        "nibabel": nib.__version__,
        "numpy": np.__version__,
        "roots": ROOTS,
        "skipped": skipped,
        "files": entries,
    }
    dst = os.path.join(HERE, "nifti_ref.json")
    with open(dst, "w") as fh:
        json.dump(out, fh, indent=1)
        fh.write("\n")
    print(f"wrote {dst}: {len(entries)} files")
    for s in skipped:
        print("skipped:", s)


# ----------------------------------------------------------------------------- made data
def patch_header(path, **fields):
    """Set raw header fields of a .nii / .hdr (optionally gzipped) in place."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = bytearray(fh.read())
    n2 = raw[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c")
    klass = nib.Nifti2Header if n2 else nib.Nifti1Header
    size = 540 if n2 else 348
    hdr = klass(bytes(raw[:size]), check=False)
    for k, v in fields.items():
        hdr[k] = v
    raw[:size] = hdr.binaryblock
    if path.endswith(".gz"):
        with open(path, "wb") as fh:
            fh.write(gzip.compress(bytes(raw), mtime=0))
    else:
        with open(path, "wb") as fh:
            fh.write(bytes(raw))


def make_data():
    os.makedirs(MADE, exist_ok=True)
    rng = np.random.default_rng(20240607)
    A = np.array([[-1.5, 0.1, 0.0, 30.0], [0.05, 1.2, -0.2, -20.0], [0.0, 0.25, 2.5, 10.0], [0, 0, 0, 1.0]])
    sh = (9, 7, 5)

    def save(img, name):
        p = os.path.join(MADE, name)
        img.to_filename(p)
        return p

    def mk(arr, dtype, affine=A, endian=None, klass=nib.Nifti1Image, codes=(1, 2)):
        hdr = klass.header_class(endianness=endian) if endian else klass.header_class()
        hdr.set_data_dtype(dtype)
        img = klass(arr.astype(dtype), affine, hdr)
        img.set_qform(affine, code=codes[0])
        img.set_sform(affine, code=codes[1])
        img.header.set_slope_inter(1, 0)
        return img

    # every datatype (values spanning the type's range), both byte orders
    save(mk(rng.integers(0, 6, sh), np.uint8), "u8_label.nii.gz")
    save(mk(rng.integers(-128, 128, sh), np.int8), "i8.nii")
    save(mk(rng.integers(-32768, 32768, sh), np.int16, endian=">"), "i16_be.nii")
    save(mk(rng.integers(0, 65536, sh), np.uint16), "u16.nii.gz")
    save(mk(rng.integers(-2**31, 2**31, sh), np.int32, endian=">"), "i32_be.nii.gz")
    save(mk(rng.integers(0, 2**32, sh, dtype=np.uint64), np.uint32), "u32.nii")
    save(mk(rng.integers(-2**40, 2**40, sh), np.int64), "i64.nii.gz")
    save(mk(rng.integers(0, 2**62, sh, dtype=np.uint64), np.uint64, endian=">"), "u64_be.nii")
    save(mk(rng.standard_normal(sh) * 100, np.float32), "f32.nii")
    save(mk(rng.standard_normal(sh) * 1e6, np.float64, endian=">"), "f64_be.nii.gz")
    # scaling (patched after nibabel wrote the raw values)
    p = save(mk(rng.integers(0, 200, sh), np.uint8), "u8_scaled.nii")
    patch_header(p, scl_slope=0.5, scl_inter=-10)
    p = save(mk(rng.integers(-1000, 1000, sh + (3,)), np.int16), "i16_scaled_4d.nii.gz")
    patch_header(p, scl_slope=2.0, scl_inter=-1024)
    p = save(mk(rng.standard_normal(sh), np.float32, endian=">"), "f32_be_scaled.nii")
    patch_header(p, scl_slope=3.0, scl_inter=0.5)
    p = save(mk(rng.integers(0, 100, sh), np.int16), "i16_slope_nan.nii")
    patch_header(p, scl_slope=np.nan, scl_inter=7)  # nibabel: no scaling
    # pairs: plain, NIfTI-2, compressed
    save(mk(rng.integers(-500, 500, sh), np.int16, klass=nib.Nifti1Pair), "pair_i16.img")
    save(mk(rng.standard_normal(sh), np.float32, klass=nib.Nifti2Pair), "pair_n2_f32.hdr")
    save(mk(rng.integers(0, 9, sh), np.uint8, klass=nib.Nifti1Pair), "pair_gz_u8.img.gz")
    # NIfTI-2 single file, 4-D
    save(mk(rng.standard_normal(sh + (2,)), np.float32, klass=nib.Nifti2Image), "n2_f32_4d.nii.gz")
    # multi-member gzip
    src = mk(rng.integers(-3000, 3000, (16, 12, 10)), np.int16)
    p = os.path.join(MADE, "multimember.nii")
    src.to_filename(p)
    raw = open(p, "rb").read()
    os.remove(p)
    cuts = [0, 200, 1000, 2500, len(raw)]
    with open(os.path.join(MADE, "multimember.nii.gz"), "wb") as fh:
        for a, b in zip(cuts[:-1], cuts[1:]):
            fh.write(gzip.compress(raw[a:b], mtime=0))
    # shear: sform keeps it, qform is the closest rotation
    S = A.copy()
    S[0, 2] = 0.6
    img = mk(rng.integers(0, 50, sh), np.int16, affine=S)
    img.set_qform(S, code=1)
    img.set_sform(S, code=2)
    save(img, "shear_sform.nii.gz")
    # qform only, left-handed (qfac -1)
    Q = np.array([[0.0, 0.0, -2.0, 40.0], [-1.5, 0.0, 0.0, 10.0], [0.0, -1.2, 0.0, -5.0], [0, 0, 0, 1.0]])
    assert np.linalg.det(Q[:3, :3]) < 0
    img = mk(rng.integers(0, 50, sh), np.int16, affine=Q, codes=(1, 0))
    img.set_sform(None, code=0)
    save(img, "qform_only_qfac.nii")
    # qform only, a rotation near 180 degrees (w ~ 3e-5): nibabel >= 5.1 takes w = 0 below 3 eps of the
    # header's float type (float32 for NIfTI-1, float64 for NIfTI-2)
    for klass, name in ((nib.Nifti1Image, "n1_qform_near180.nii"), (nib.Nifti2Image, "n2_qform_near180.nii")):
        img = mk(rng.integers(0, 50, sh), np.int16, klass=klass, codes=(1, 0))
        img.set_sform(None, code=0)
        save(img, name)
    # no xform: base affine from pixdim (negative and zero pixdims, fixed by nibabel)
    img = mk(rng.integers(0, 50, sh), np.int16, codes=(0, 0))
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    p = save(img, "no_xform.nii")
    patch_header(p, pixdim=[1, -2.0, 0.0, 3.0, 1, 1, 1, 1], qform_code=0, sform_code=0)
    # odd codes (nibabel sets unknown codes to 0), qfac 0 (-> 1)
    p = save(mk(rng.integers(0, 50, sh), np.int16), "bad_codes.nii")
    patch_header(p, sform_code=9, qform_code=1)
    # 2-D and 5-D with a trailing 1
    save(mk(rng.standard_normal((8, 6)), np.float32), "two_d.nii")
    save(mk(rng.integers(0, 9, (5, 4, 3, 2, 1)), np.int16), "five_d_trailing1.nii")
    # an extension between header and data (vox_offset > 352), cal_min / cal_max
    img = mk(rng.integers(0, 400, sh), np.int16)
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"made for medlua tests " * 3))
    img.header["cal_min"] = 40
    img.header["cal_max"] = 440
    img.header["descrip"] = b"medlua ext + window"
    save(img, "extension_window.nii")
    print("made", len(os.listdir(MADE)), "files in", MADE)


# ----------------------------------------------------------------------------- check written
def check_written(d):
    man = json.load(open(os.path.join(d, "manifest.json")))
    bad = 0
    for e in man["files"]:
        p = os.path.join(d, e["file"])
        try:
            img = nib.load(p)
            data = np.asanyarray(img.dataobj)
            fdata = img.get_fdata(dtype=np.float64)
        except Exception as ex:  # noqa: BLE001
            print(f"FAIL {e['file']}: nibabel cannot read it: {type(ex).__name__}: {ex}")
            bad += 1
            continue
        why = []
        aff = np.array(e["affine"], dtype=np.float64)
        if not np.allclose(img.affine, aff, atol=1e-4, rtol=0):
            why.append(f"affine differs by {np.abs(img.affine - aff).max():.3g}")
        shape = [int(s) for s in img.shape]
        if shape != e["shape"]:
            why.append(f"shape {shape} vs {e['shape']}")
        if "dtype" in e and data.dtype.newbyteorder("=").name != e["dtype"]:
            why.append(f"dtype {data.dtype} vs {e['dtype']}")
        s = float(np.nansum(fdata))
        if abs(s - e["sum"]) > 1e-6 * max(1.0, abs(e["sum"])):
            why.append(f"sum {s!r} vs {e['sum']!r}")
        if "qform_affine" in e:
            q = img.header.get_qform()
            qa = np.array(e["qform_affine"], dtype=np.float64)
            if not np.allclose(q, qa, atol=1e-4, rtol=0):
                why.append(f"qform differs by {np.abs(q - qa).max():.3g}")
        for k in ("qform_code", "sform_code"):
            if k in e and int(img.header[k]) != e[k]:
                why.append(f"{k} {int(img.header[k])} vs {e[k]}")
        if why:
            bad += 1
            print(f"FAIL {e['file']}: " + "; ".join(why))
        else:
            print(f"ok   {e['file']}: {type(img).__name__} {shape} {data.dtype}")
    print(f"{len(man['files']) - bad} passed, {bad} failed (nibabel {nib.__version__} reading medlua's files)")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--make-data":
        make_data()
    elif len(sys.argv) > 2 and sys.argv[1] == "--check-written":
        sys.exit(check_written(sys.argv[2]))
    else:
        gen()
