/* DICOM for medlua Volumes: read a file or a directory (series selection, slice sorting, 4-D,
 * enhanced multi-frame, every transfer syntax DCMTK's free codecs decode plus JPEG 2000 through
 * OpenJPEG), list the series of a directory, write a volume as a series of 16-bit slices, edit tags
 * of an existing file. Lua-free C11; the DCMTK calls live in ml_dcmtk_shim.cpp.
 *
 * Geometry (see ml_volume.h): data [X = columns, Y = rows, Z = slices(, T)], the tensor in the
 * files' own order (strides [1, X, X*Y(, X*Y*Z)]); affine = voxel (i = column, j = row, k = slice)
 * -> RAS+ mm: the LPS geometry of ImageOrientationPatient / PixelSpacing / ImagePositionPatient with
 * rows 0 and 1 negated, once, here.
 *
 * Choices (documented for users in ml_dicom_read):
 *  - directories are scanned recursively up to 5 levels below the given one (as dcm2niix's
 *    default -d 5; hidden files and folders skipped); recursive=false scans only the directory.
 *  - a series is the set of images with one SeriesInstanceUID; without series_uid the one with the
 *    most images (frames) is read.
 *  - slices are sorted by ImagePositionPatient projected on the slice normal (row x column cosines),
 *    ascending, so k runs along the normal (as ITK / SimpleITK); positions that repeat make a 4-D
 *    volume [X, Y, Z, T] ordered by TemporalPositionIndex/Identifier, then InstanceNumber.
 *  - spacing between slices comes from the positions (never SliceThickness).
 *  - uneven spacing (a gap that differs from the median by more than min(0.2 mm, 10 %), dcm2niix
 *    uses 0.2 mm): "warn" keeps the slices as they are with the median gap in the affine (dcm2niix
 *    keeps them with the first gap and writes a second, equalized file); "resample" interpolates
 *    linearly onto an even grid at the smallest gap (dcm2niix's "_Eq" file); "error" refuses.
 *  - gantry tilt (the positions drift in-plane by more than 0.1 pixel over the stack): "warn" keeps
 *    the voxels and gives them a sheared affine whose slice column is the real step between
 *    positions, so every voxel centre keeps its true position (dcm2niix instead writes an
 *    un-sheared affine, which misplaces slices away from the first by z*tan(tilt), and a second,
 *    resampled "_Tilt" file); "resample" interpolates onto the orthogonal grid of the slice normal
 *    (outside the acquired field: the image minimum); "error" refuses.
 *  - Siemens mosaics (one frame tiling N slices, N from the CSA image header's
 *    NumberOfImagesInMosaic, else (0019,100A), else guessed from ImageType MOSAIC + AcquisitionMatrix
 *    with a warning) are cut into their N tiles of (Rows / ceil(sqrt N)) x (Columns / ceil(sqrt N));
 *    the geometry is dcm2niix's: ImagePositionPatient moved from the mosaic's corner to the first
 *    tile's, tiles stacked by SpacingBetweenSlices (else SliceThickness) along the CSA
 *    SliceNormalVector (else row x column). A series of mosaics (fMRI) becomes [X, Y, Z, T].
 */
#ifndef ML_DICOM_H
#define ML_DICOM_H

#include "volume/ml_volume.h"

enum { ML_DICOM_WARN = 0, ML_DICOM_RESAMPLE = 1, ML_DICOM_ERROR = 2 };

/* ------------------------------------------------------------------ reading */
typedef struct ml_dicom_read_opts {
    const char *series_uid; /* NULL or "": the series with the most images */
    int on_uneven, on_tilt; /* ML_DICOM_WARN (default), ML_DICOM_RESAMPLE, ML_DICOM_ERROR */
    bool native;            /* stored integer values as int32, no rescale (default: float32 HU) */
    bool recursive;         /* directories: also sub-directories (default true) */
} ml_dicom_read_opts;

void ml_dicom_read_opts_init(ml_dicom_read_opts *o);
/* path: a DICOM file (all its frames) or a directory. */
ml_err ml_dicom_read(ml_volume **out, const char *path, const ml_dicom_read_opts *o);

typedef struct ml_dicom_series_info {
    char series_uid[72], study_uid[72], modality[16], description[128], patient_id[72];
    char transfer_syntax[72], ts_name[72];
    int32_t series_number; /* -1 if absent */
    int32_t n_files, n_images, rows, cols;
    char *first_file; /* malloc'ed */
} ml_dicom_series_info;

/* The series of a directory, ordered by SeriesNumber then SeriesInstanceUID. */
ml_err ml_dicom_list_series(ml_dicom_series_info **out, int *n, const char *dir, bool recursive);
void ml_dicom_series_free(ml_dicom_series_info *s, int n);

/* ------------------------------------------------------------------ writing */
typedef struct ml_dicom_write_opts {
    /* NULL or "": from the volume's meta (UIDs) or a default / a new UID */
    const char *patient_id, *patient_name, *study_uid, *series_uid, *frame_of_reference_uid;
    const char *series_description, *study_description, *modality;
    int32_t series_number; /* <= 0: 1 */
    bool overwrite;        /* replace an existing non-empty dir */
} ml_dicom_write_opts;

void ml_dicom_write_opts_init(ml_dicom_write_opts *o);
/* One file per slice (and per time point of a 4-D volume), int16 with RescaleSlope/Intercept
 * chosen to fit the value range (slope 1 when the values are integers that fit), CT Image Storage
 * when the modality is CT, Secondary Capture otherwise. Written into a temporary directory next to
 * dir and renamed into place: on error nothing is left. The in-plane axes of the affine must be
 * orthogonal. A volume whose slice axis points against the row x column normal reads back with the
 * slice order reversed (same world coordinates). */
ml_err ml_dicom_write_series(const ml_volume *v, const char *dir, const ml_dicom_write_opts *o);

/* ------------------------------------------------------------------ editing */
/* Copy in_path to out_path (may be the same file) with tags set (values[i] != NULL) or deleted
 * (values[i] == NULL); keys are keywords or "(gggg,eeee)". Same transfer syntax, pixel data
 * untouched, written to a temporary file and renamed into place. */
ml_err ml_dicom_edit_tags(const char *in_path, const char *out_path, int n, const char *const *keys,
                          const char *const *values);

/* Values of tags of a file as DICOM strings (several values joined by backslashes); values[i]
 * malloc'ed (caller frees), NULL where the file lacks the tag. */
ml_err ml_dicom_read_tags(const char *path, int n, const char *const *keys, char **values);

/* --------------------------------------------------- the series assembler (no DCMTK; fuzzed) */
/* One image (a file, or one frame of a multi-frame file) with its parsed header values. */
typedef struct ml_dcm_slice {
    int32_t rows, cols;
    double ipp[3], iop[6], ps[2]; /* ps = PixelSpacing: [row spacing (between rows), column spacing] */
    double thickness, spacing_between; /* SliceThickness, SpacingBetweenSlices; 0 if unknown */
    int32_t instance, temporal, stack_pos;
    uint8_t has_ipp, has_iop, has_ps, has_instance;
    int32_t file, frame; /* where it comes from (tie-breakers, messages) */
    const char *name;    /* file name for messages (may be NULL) */
} ml_dcm_slice;

typedef struct ml_dcm_interp {
    int64_t k0, k1;           /* stack positions interpolated */
    double w;                 /* weight of k1 */
    double sx0, sy0, sx1, sy1; /* in-plane shift (pixels) of the sample in k0 / k1 */
} ml_dcm_interp;

typedef struct ml_dcm_plan {
    int64_t nx, ny;     /* columns, rows */
    int64_t nz_in, nt;  /* distinct slice positions, images per position */
    int64_t nz;         /* output slices (nz_in unless resampled) */
    int64_t *stack;     /* [nz_in * nt]: index into the slice array of position k, time t (k + nz_in * t) */
    double affine[16];  /* voxel -> RAS+ mm */
    bool resample;      /* output slice k is interp[k] of the stack */
    ml_dcm_interp *interp;
    bool by_position, uneven, tilted;
    double median_gap, min_gap, max_gap, tilt_deg;
} ml_dcm_plan;

/* Sort, group (4-D), check sizes/orientations/spacings and build the output geometry. what names
 * the file or directory in messages and warnings. on_uneven/on_tilt: ML_DICOM_*. */
ml_err ml_dicom_assemble(ml_dcm_plan *plan, const ml_dcm_slice *s, int64_t n, int on_uneven, int on_tilt,
                         const char *what);
void ml_dicom_plan_free(ml_dcm_plan *p);

/* ------------------------------------------------------------- Siemens CSA header */
/* Numbers of the tag `name` of a Siemens CSA header in SV10 format (the bytes of (0029,xx10)):
 * up to maxv values into v; returns how many were read (0 when the tag is absent or empty or the
 * buffer is not an SV10 header). Bounds-checked against len (fuzzed through the DICOM reader). */
int ml_dicom_csa_numbers(const uint8_t *buf, size_t len, const char *name, double *v, int maxv);

/* ------------------------------------------------------------- JPEG 2000 (ml_j2k.c) */
/* Decode one JPEG 2000 frame (raw codestream or JP2) of width x height samples into out (int32),
 * with the codestream's signedness made to agree with pixel_rep (as pydicom does: an unsigned
 * stream of a signed image is sign-extended from its precision, and the reverse). what names
 * the file and frame in messages. */
ml_err ml_j2k_decode(const uint8_t *data, size_t len, int32_t width, int32_t height, int pixel_rep, int32_t *out,
                     const char *what);
/* The same, with OpenJPEG's own threads: threads > 1 decodes the code blocks of this one frame on a
 * pool of that many threads that the codec starts and stops (worth it for frames that are fewer than
 * the cores); threads <= 1 decodes on the calling thread only, whatever OPJ_NUM_THREADS says.
 * Thread-safe: each call has its own codec and stream. */
ml_err ml_j2k_decode_mt(const uint8_t *data, size_t len, int32_t width, int32_t height, int pixel_rep, int32_t *out,
                        int threads, const char *what);

#endif
