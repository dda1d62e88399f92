/* medlua Volume: a tensor plus a 4x4 voxel-to-world affine (RAS+ millimetres) and metadata.
 * Lua-free core (never include lua.h here).
 *
 * Conventions (the contract every reader, writer and op in modules/volume follows)
 *  - data is an ml_tensor of logical shape [X, Y, Z] or [X, Y, Z, T]: element (i, j, k) is the voxel
 *    nibabel calls img.dataobj[i, j, k]. Any strides: a reader may hand out the file's own order
 *    (i fastest, i.e. strides [1, X, X*Y]) without copying; ops that need a particular layout call
 *    ml_contiguous or index through the strides.
 *  - affine is row-major 4x4: [x y z 1]^T (RAS+ mm) = A * [i j k 1]^T. For DICOM the LPS affine is
 *    converted to RAS once, at read (negate rows 0 and 1), and back once, at write.
 *  - spacing/origin/direction are derived from the affine (spacing = column norms of A[0:3,0:3],
 *    direction = columns divided by spacing, origin = A[0:3,3]); nothing stores them twice.
 *  - Ops never modify their input: they return a new volume (which may share the tensor when
 *    nothing about the voxels changes, e.g. center()).
 *  - Errors: ml_err + ml_seterr message naming the op / file and the reason, as in ml_tensor.h.
 */
#ifndef ML_VOLUME_H
#define ML_VOLUME_H

#include "tensor/ml_tensor.h"

typedef struct ml_volume_meta {
    char modality[16];            /* "CT", "MR", "XA"...; "" unknown */
    char series_uid[72];
    char study_uid[72];
    char frame_of_reference_uid[72];
    char patient_id[72];
    char description[128];        /* SeriesDescription / NIfTI descrip */
    double window_center, window_width;
    bool has_window;
    double rescale_slope, rescale_intercept; /* as read (already applied to data unless raw read) */
    bool is_label;                /* integer label map (nearest interpolation by default) */
    int qform_code, sform_code;   /* NIfTI codes as read (0 if not NIfTI) */
} ml_volume_meta;

typedef struct ml_volume {
    int refcount;
    ml_tensor *data;       /* owned reference */
    double affine[16];     /* row-major voxel -> RAS+ mm */
    ml_volume_meta meta;
} ml_volume;

/* ---------------------------------------------------------------- lifetime */
/* New volume over data (retained; must be 3-D or 4-D) with the given affine (NULL: identity).
 * meta NULL: defaults (slope 1, intercept 0, everything else empty). */
ml_err ml_volume_new(ml_volume **out, ml_tensor *data, const double affine[16], const ml_volume_meta *meta);
void ml_volume_retain(ml_volume *v);
void ml_volume_release(ml_volume *v); /* NULL-safe */
void ml_volume_meta_init(ml_volume_meta *m);
/* Same geometry + meta as v, new data (shape may differ only where the caller fixes the affine). */
ml_err ml_volume_with_data(ml_volume **out, const ml_volume *v, ml_tensor *data, const double affine[16]);

/* ---------------------------------------------------------------- geometry */
void ml_volume_spacing(const ml_volume *v, double spacing[3]);
void ml_volume_origin(const ml_volume *v, double origin[3]);
void ml_volume_direction(const ml_volume *v, double dir[9]); /* row-major 3x3, columns unit */

/* 4x4 row-major helpers */
void ml_affine_identity(double a[16]);
void ml_affine_mul(double out[16], const double a[16], const double b[16]); /* out = a*b; out may alias */
int ml_affine_inverse(double out[16], const double a[16]);                  /* 0 ok, -1 singular */
void ml_affine_apply(const double a[16], const double p[3], double out[3]);
/* affine from spacing, origin, direction (row-major 3x3, columns are axis directions) */
void ml_affine_from_geometry(double a[16], const double spacing[3], const double origin[3], const double dir[9]);
/* Axis codes as nibabel.aff2axcodes: for each voxel axis the world direction it points to most,
 * e.g. "RAS", "LPS", "PSR". out must hold 4 chars. */
void ml_affine_axcodes(const double a[16], char out[4]);

/* ------------------------------------------------------------------ warnings */
/* Readers report recoverable problems (InstanceNumber fallback, uneven spacing...) here.
 * Default handler prints "medlua: warning: ..." to stderr; the binding may replace it. */
typedef void (*ml_warn_fn)(const char *msg, void *ud);
void ml_set_warn_handler(ml_warn_fn fn, void *ud);
void ml_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
