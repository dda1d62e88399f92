/* NIfTI-1 / NIfTI-2 reading and writing for medlua Volumes. Lua-free core.
 *
 * Reading (own header parser; libdeflate for .gz with a zlib streaming fall-back)
 *  - .nii, .nii.gz, .hdr/.img pairs (.img.gz too), NIfTI-1 and NIfTI-2, either byte order (from
 *    sizeof_hdr), gzip detected by its magic bytes (not the extension), multi-member gzip.
 *  - datatypes u8 i8 i16 u16 i32 u32 i64 u64 f32 f64; complex, RGB, float128 and binary are refused.
 *  - data: a tensor of shape [X, Y, Z] or [X, Y, Z, T] with element (i, j, k, t) = nibabel's
 *    img.dataobj[i, j, k, t], held in the file's own order (strides [1, X, X*Y, X*Y*Z], no transpose).
 *    Fewer than 3 dims are padded with 1; dims beyond the 4th must be 1 (dropped), else an error.
 *  - scaling as nibabel: scl_slope 0 or non-finite means none; slope 1 / inter 0 is none too.
 *  - affine exactly as nibabel's img.affine (header.get_best_affine() after nibabel's load-time
 *    fixes: pixdim[1..3] 0 -> 1, negative -> abs, qfac not +-1 -> 1, unknown xform codes -> 0):
 *    sform if sform_code > 0, else qform if qform_code > 0, else the base affine from pixdim
 *    (x flipped, centred). Units (xyzt_units) are not applied, as nibabel.
 *  - meta: description (descrip), qform_code / sform_code (after the fixes above), rescale_slope /
 *    rescale_intercept = the scaling nibabel applies (1 / 0 when none), is_label = the file's type is
 *    an integer type and there is no scaling, window from cal_min / cal_max when cal_max > cal_min.
 *  - everything is validated before any allocation: sizes, dims, products, vox_offset, the data the
 *    file can hold (for .gz: at most 1032 bytes out per compressed byte).
 *
 * Writing
 *  - .nii, .nii.gz, .hdr (+ .img), .img (+ .hdr); NIfTI-1 unless a dim exceeds 32767 or nifti2 is
 *    asked for. The affine goes into the sform exactly (float32 in NIfTI-1, float64 in NIfTI-2) and
 *    into the qform as nibabel's set_qform (column norms -> pixdim, qfac from the determinant, the
 *    closest rotation by polar decomposition, quaternion with w >= 0). Codes: the volume's
 *    meta.qform_code / sform_code when > 0, else 1 (scanner).
 *  - data in the tensor's dtype (u8 i32 i64 f32 f64; bool -> u8; f16 / bf16 -> f32) or the dtype
 *    asked for; converting to an integer type rounds to nearest and fails, naming the value, when a
 *    value does not fit (or is NaN). scl_slope 1, scl_inter 0.
 *  - .gz: libdeflate, level 1 by default (nibabel writes zlib level 1); payloads over 32 MiB are cut
 *    into 16 MiB gzip members compressed in parallel (a multi-member gzip file, as pigz --independent / bgzip make; zlib, Python's gzip, nibabel,
 *    libnifti and ITK read it).
 *  - atomic: written to "<path>.tmp.<pid>.<n>" in the same directory, fsync'd, renamed into place;
 *    on any error the temporary file is removed and an existing file at path is left untouched.
 *
 * Errors: ML_ERR_IO (file / format), ML_ERR_UNSUPPORTED (valid NIfTI this reader refuses), ML_ERR_ARG,
 * ML_ERR_OOM; the message names the file and the reason, e.g.
 *   "nifti: /x/ct.nii.gz: truncated: header says 4194304 data bytes, file has 1000". */
#ifndef ML_NIFTI_H
#define ML_NIFTI_H

#include "volume/ml_volume.h"

/* --------------------------------------------------------------- reading */
typedef enum {
    ML_NIFTI_OUT_F32 = 0, /* float32, scaling applied (the default; what MONAI LoadImage gives) */
    ML_NIFTI_OUT_F64,     /* float64, scaling applied (as nibabel get_fdata()) */
    ML_NIFTI_OUT_NATIVE   /* u8 i32 i64 f32 f64 kept; i8 i16 u16 -> int32; u32 u64 -> int64 (u64 beyond
                           * int64 is an error); scaled data -> float32 (float64 for an f64 file) */
} ml_nifti_out;

typedef struct ml_nifti_read_opts {
    ml_nifti_out dtype;
} ml_nifti_read_opts;

void ml_nifti_read_opts_init(ml_nifti_read_opts *o);

/* Read a file (opts NULL: defaults). *out is a new volume. */
ml_err ml_nifti_read(ml_volume **out, const char *path, const ml_nifti_read_opts *opts);

/* Read a single-file NIfTI (.nii bytes, or .nii.gz bytes: gzip is recognized by its magic) from memory.
 * name is used in messages only. The fuzzer's entry point. */
ml_err ml_nifti_read_mem(ml_volume **out, const void *buf, size_t n, const char *name, const ml_nifti_read_opts *opts);

/* Header fields as stored (after byte swapping; before nibabel's fixes unless noted). */
typedef struct ml_nifti_info {
    int version;             /* 1 or 2 */
    bool big_endian;
    bool single_file;        /* magic n+1 / n+2 (vs ni1 / ni2) */
    int64_t dim[8];
    double pixdim[8];
    int datatype;            /* NIfTI code */
    const char *datatype_name; /* "int16", ... or "unknown" */
    int bitpix;
    int64_t vox_offset;
    double scl_slope, scl_inter, cal_min, cal_max;
    int qform_code, sform_code; /* as stored */
    double quatern[3], qoffset[3];
    double srow[12];
    double qform[16], sform[16]; /* matrices built from the stored fields (row-major 4x4) */
    double affine[16];           /* what the reader uses (nibabel's img.affine) */
    int intent_code;
    int xyzt_units;
    char descrip[81];
    char intent_name[17];
    char aux_file[25];
} ml_nifti_info;

/* Header only (a .gz file is inflated only as far as the header). */
ml_err ml_nifti_read_info(ml_nifti_info *info, const char *path);

/* --------------------------------------------------------------- writing */
/* NIfTI datatype codes the writer can produce */
enum {
    ML_NIFTI_DT_UINT8 = 2, ML_NIFTI_DT_INT16 = 4, ML_NIFTI_DT_INT32 = 8, ML_NIFTI_DT_FLOAT32 = 16,
    ML_NIFTI_DT_FLOAT64 = 64, ML_NIFTI_DT_INT8 = 256, ML_NIFTI_DT_UINT16 = 512, ML_NIFTI_DT_UINT32 = 768,
    ML_NIFTI_DT_INT64 = 1024, ML_NIFTI_DT_UINT64 = 1280
};

typedef struct ml_nifti_write_opts {
    int datatype;          /* 0: from the tensor's dtype; else an ML_NIFTI_DT_* code */
    bool nifti2;           /* force NIfTI-2 (also chosen automatically when a dim exceeds 32767) */
    int compression_level; /* .gz only: 0..12 (libdeflate levels); default 1: on CT-like float32 data
                            * level 6 is ~5x slower for files ~12% smaller (bench/bench_nifti.sh) */
} ml_nifti_write_opts;

void ml_nifti_write_opts_init(ml_nifti_write_opts *o);

/* NIfTI datatype code for a name ("int16", "uint8", "float32", "f32", "double", ...); 0 if unknown. */
int ml_nifti_datatype_from_name(const char *name);
/* "int16", ... ; "unknown" for codes the reader does not know. */
const char *ml_nifti_datatype_name(int code);

ml_err ml_nifti_write(const ml_volume *v, const char *path, const ml_nifti_write_opts *opts);

/* The qform nibabel's set_qform stores for affine: pixdim[0..3] (qfac, zooms), quatern b c d, offsets.
 * Exposed for tests. */
void ml_nifti_affine_to_qform(const double affine[16], double pixdim4[4], double quatern[3], double qoffset[3]);
/* nibabel's get_qform: affine from qfac / zooms / quaternion b c d / offsets (float64 quaternion
 * threshold, as for a NIfTI-2 header; a NIfTI-1 header's float32 fields use 3 * float32 eps). */
void ml_nifti_qform_to_affine(const double pixdim4[4], const double quatern[3], const double qoffset[3],
                              double affine[16]);

#endif
