/* medlua Volume operations: reorientation, resampling, cropping/padding/flipping, intensity
 * normalisation and label-map tools. Lua-free core (never include lua.h here).
 *
 * Every op follows ml_volume.h: it never modifies its input, returns a NEW volume (refcount 1) in
 * *out with the input's metadata, and updates the affine so that the geometry is never lost. On
 * error *out is NULL and ml_errmsg() names the op and the reason ("resample: spacing[1] must be
 * positive, got -1").
 *
 * Memory order: outputs keep the memory order of the input's spatial axes (a volume read from a
 * NIfTI file with i fastest stays i fastest), so every kernel streams through both arrays. The
 * logical layout is always [X, Y, Z] or [X, Y, Z, T] (T is carried along: every 3-D op is applied
 * to each T frame; the label tools need 3-D volumes).
 *
 * Threads: voxel loops run on OpenMP threads (ml_num_threads()).
 */
#ifndef ML_VOLUME_OPS_H
#define ML_VOLUME_OPS_H

#include "volume/ml_volume.h"

/* ------------------------------------------------------------ reorientation */
/* Permute and flip voxel axes (no interpolation) so that the axis codes of the result are `codes`
 * ("RAS", "LPS", "PSR", ...: for each output voxel axis the world direction it points to, as
 * nibabel.aff2axcodes and MONAI's Orientation(axcodes) use them). The current codes come from
 * ml_affine_axcodes (nibabel's io_orientation), the affine is updated so that every voxel keeps
 * its world position: out.affine = v.affine * P, where P maps output to input voxel indices. With
 * codes "RAS" this is nibabel's as_closest_canonical. An oblique affine stays oblique (only the
 * closest axis permutation is applied). Errors: unknown letters ("XYZ"), an axis named twice
 * ("RRA"), a degenerate affine. */
ml_err ml_volume_reorient(ml_volume **out, ml_volume *v, const char *codes);
ml_err ml_volume_to_ras(ml_volume **out, ml_volume *v);

/* ------------------------------------------------------------- resampling */
typedef enum { ML_INTERP_DEFAULT = -1, ML_INTERP_NEAREST = 0, ML_INTERP_LINEAR = 1, ML_INTERP_BSPLINE = 2 } ml_interp;
typedef enum { ML_PAD_CONSTANT = 0, ML_PAD_BORDER = 1 } ml_pad_mode;

typedef struct ml_resample_opts {
    int mode;             /* ml_interp; DEFAULT: nearest when v->meta.is_label or the dtype is not
                           * floating point, else linear */
    double padding_value; /* value of samples outside the input (default 0, as SimpleITK's default
                           * pixel value) */
    int padding_mode;     /* ML_PAD_CONSTANT (default): a sample whose continuous input index c has
                           * c < -0.5 or c >= n - 0.5 on some axis is padding_value (ITK's
                           * IsInsideBuffer); inside, the half voxel at each border interpolates
                           * toward the edge value (as ITK).  ML_PAD_BORDER: c is clamped to
                           * [0, n-1] (torch grid_sample padding_mode="border", MONAI's default) */
} ml_resample_opts;
void ml_resample_opts_init(ml_resample_opts *o);

/* Interpolation: nearest (round half up, keeps the dtype), linear (trilinear), bspline (cubic
 * B-spline with the exact prefilter: Unser's recursive filter with mirror boundaries, as
 * scipy.ndimage.map_coordinates(order=3, mode="mirror") and SimpleITK's BSplineInterpolator).
 * linear and bspline compute in float64 for float64 input and in float32 otherwise (the result
 * has that dtype). When the output grid is axis-aligned with the input grid (a spacing change,
 * a crop, a shift) the kernel uses per-axis index/weight tables; otherwise (rotations, shears,
 * permutations) a general per-voxel path. */

/* Output grid of ml_volume_resample_spacing, as MONAI's Spacing(pixdim, diagonal=False,
 * scale_extent=False) computes it (monai.data.utils.zoom_affine + compute_shape_offset):
 *  - direction: the rotation part of the input affine (Q of its QR decomposition: the input
 *    direction when the affine has no shear), columns scaled to the new spacing;
 *  - shape: round(extent + 1) per axis (half to even), where extent is the span of the input's
 *    corner voxel CENTRES (indices 0 and n-1) measured in output voxels;
 *  - origin: the world position of the input corner voxel centre that is lowest on every output
 *    axis (voxel (0,0,0) when the direction is kept), i.e. the first voxel centres coincide;
 *    if no corner is lowest on every axis (oblique shear), the grid is centred on the input.
 * spacing entries must be finite and > 0. */
ml_err ml_volume_spacing_grid(const ml_volume *v, const double spacing[3], int64_t shape[3], double affine[16]);
ml_err ml_volume_resample_spacing(ml_volume **out, ml_volume *v, const double spacing[3], const ml_resample_opts *o);
/* Resample onto an explicit grid (shape[3] + voxel->world affine). */
ml_err ml_volume_resample_to(ml_volume **out, ml_volume *v, const int64_t shape[3], const double affine[16],
                             const ml_resample_opts *o);
/* Resample onto ref's grid (ref's shape and affine; ref's voxels are not read). */
ml_err ml_volume_resample_like(ml_volume **out, ml_volume *v, const ml_volume *ref, const ml_resample_opts *o);
/* Move the object by the world transform M (4x4, RAS mm, last row 0 0 0 1; rigid or affine):
 * anatomy at world point x ends up at M x, i.e. out(y) = v(M^-1 y). The result is sampled on ref's
 * grid (or on v's own grid when ref is NULL). M maps moved -> fixed ("forward"/push convention).
 * With inverse=true M is instead taken as the fixed -> moving (output point -> input point) map
 * that SimpleITK's Resample(image, ref, transform) expects: out(y) = v(M y). */
ml_err ml_volume_transform(ml_volume **out, ml_volume *v, const double M[16], const ml_volume *ref, bool inverse,
                           const ml_resample_opts *o);

/* -------------------------------------------------- crop / pad / flip / centre */
/* Voxels lo[a] <= i < hi[a] (0-based, hi exclusive, as Python slices and MONAI's SpatialCrop
 * roi_start/roi_end). 0 <= lo < hi <= size on every axis. affine = v.affine * translate(lo). */
ml_err ml_volume_crop(ml_volume **out, ml_volume *v, const int64_t lo[3], const int64_t hi[3]);
/* before[a] / after[a] >= 0 voxels added on each side, filled with value.
 * affine = v.affine * translate(-before). */
ml_err ml_volume_pad(ml_volume **out, ml_volume *v, const int64_t before[3], const int64_t after[3], double value);
/* Crop v to the bounding box of the voxels of `labels` that are non-zero (use_label false) or equal
 * to `label`, grown by padding_mm[a] converted to voxels on each axis (ceil(padding_mm / spacing))
 * and clipped to the volume. labels must be 3-D on the same grid as v (same spatial shape,
 * affine equal within 1e-4 mm). Error when no voxel is selected. */
ml_err ml_volume_crop_to_bbox(ml_volume **out, ml_volume *v, ml_volume *labels, const double padding_mm[3],
                              bool use_label, int64_t label);
/* Flip voxel axis `axis` (0, 1, 2; negative counts from the end) as MONAI's Flip with its affine
 * update: data and affine both change, every voxel keeps its world position, so the anatomy stays
 * where it is in world space (only the storage order changes). */
ml_err ml_volume_flip(ml_volume **out, ml_volume *v, int axis);
/* Mirror the anatomy left-right: the data is flipped along the voxel axis closest to world R-L and
 * the affine is NOT changed, so in world space the image is mirrored (left organs appear on the
 * right). For left/right augmentation or symmetry studies. */
ml_err ml_volume_mirror_lr(ml_volume **out, ml_volume *v);
/* Same voxels (the tensor is shared), origin moved so that the geometric centre of the volume
 * (voxel index (n-1)/2 on every axis, the centre of the voxel box) is at world (0, 0, 0). */
ml_err ml_volume_center(ml_volume **out, ml_volume *v);

/* ---------------------------------------------------------------- intensity */
/* Each returns a new float32 volume (same grid). */
/* MONAI ScaleIntensityRange(a_min=c-w/2, a_max=c+w/2, b_min=0, b_max=1, clip=True). width > 0. */
ml_err ml_volume_window(ml_volume **out, ml_volume *v, double center, double width);
/* (x - min) / (max - min); all zeros for a constant volume (as MONAI ScaleIntensity). */
ml_err ml_volume_minmax(ml_volume **out, ml_volume *v);
/* Mask: NULL, or a tensor with v's spatial shape [X, Y, Z] (non-zero = in the mask; any dtype,
 * any strides). For a 4-D volume the mask applies to every frame. */
/* nnU-Net CT normalisation: clip every voxel to the [lower, upper] percentiles (0..100, numpy's
 * default linear interpolation) of the masked voxels, then z-score with the mean and standard
 * deviation (population, ddof 0) of the clipped masked voxels: (x - mean) / max(std, 1e-8). */
ml_err ml_volume_normalize_percentile(ml_volume **out, ml_volume *v, double lower, double upper,
                                      ml_tensor *mask);
/* (x - mean) / max(std, 1e-8) with mean/std (ddof 0) over the masked voxels (MONAI NormalizeIntensity
 * with nonzero=False computes them over all voxels). */
ml_err ml_volume_zscore(ml_volume **out, ml_volume *v, ml_tensor *mask);

/* ------------------------------------------------------------------- labels */
/* Label maps: 3-D, any dtype whose values are integers in [-2^31+1, 2^31-1] (0 = background). */

/* For every label value (or only the nlabels values in labels[] when labels != NULL; others are
 * left as they are) keep the largest connected component of that value and set the rest of its
 * voxels to 0. connectivity 6 (faces), 18 (faces + edges) or 26 (faces + edges + corners).
 * Ties: the component whose first voxel in C order (i slowest, k fastest, as scipy.ndimage.label
 * numbers them) comes first. Same dtype as the input. Union-find over slabs on OpenMP threads. */
ml_err ml_volume_largest_component(ml_volume **out, ml_volume *v, int connectivity, const int64_t *labels,
                                   int nlabels);
/* Bounding box of the non-zero voxels (use_label false) or of the voxels equal to label:
 * lo[a] <= i < hi[a]. *found false (lo/hi untouched) when there is none. */
ml_err ml_volume_bbox(ml_volume *v, bool use_label, int64_t label, int64_t lo[3], int64_t hi[3], bool *found);

typedef struct ml_label_stat {
    int64_t label;
    int64_t voxels;
    double volume_ml;      /* voxels * |det(affine[0:3,0:3])| / 1000 */
    double centroid_mm[3]; /* world (RAS mm) position of the mean voxel index */
    int64_t bbox_lo[3], bbox_hi[3];
} ml_label_stat;
/* Statistics of every non-zero label, sorted by label value. *stats is malloc'd (free() it);
 * *n may be 0 (then *stats is NULL). */
ml_err ml_volume_label_stats(ml_volume *v, ml_label_stat **stats, int *n);

/* --------------------------------------------------------- shared helpers */
/* Memory order of the first `ndim` axes of t: ord[0] slowest ... ord[ndim-1] fastest (by |stride|;
 * size-1 axes and ties in axis order). */
void ml_vol_mem_order(const ml_tensor *t, int ord[ML_MAX_DIMS]);
/* New uninitialised tensor of logical shape `shape` whose memory order is ord (as above). */
ml_err ml_vol_empty_ordered(ml_tensor **out, ml_dtype dt, int ndim, const int64_t *shape, const int *ord);

/* ---- internal to modules/volume/ml_volume_*.c (not a stable API) */
/* ML_ERR_DEVICE unless t is a CPU tensor; makes its layout plain. */
ml_err ml_vol_check_data(const char *op, ml_tensor *t);
/* threads for a loop of `work` voxels (1 below 64k) */
int ml_vol_threads(int64_t work);
/* dst[o] = src0[sum_a o[a] * sst[a]] (element strides, signed) for every index o of dst; es-byte elements */
void ml_vol_gather_copy(ml_tensor *dst, const char *src0, const int64_t *sst, size_t es);
/* New tensor of logical shape oshape with src's memory order, output axis j ranked like src axis
 * perm[j] (perm NULL: identity). */
ml_err ml_vol_empty_like_order(ml_tensor **out, const ml_tensor *src, ml_dtype dt, const int64_t *oshape,
                               const int *perm);
/* dst[o] = src[o] converted to dst's dtype (same shape), looping in dst's memory order */
void ml_vol_convert_copy(ml_tensor *dst, const ml_tensor *src);
/* t's values in dtype dt with t's memory order (t retained when it already has dtype dt) */
ml_err ml_vol_convert(ml_tensor **out, ml_tensor *t, ml_dtype dt);
/* "RAS" -> world axis w[j] (0 R-L, 1 A-P, 2 S-I) and sign s[j] (+1 toward R/A/S); -1 + error set. */
int ml_vol_parse_axcodes(const char *op, const char *codes, int w[3], int s[3]);
/* ML_OK when other has v's spatial shape and affine (within 1e-4), else an error naming op and what. */
ml_err ml_vol_check_same_grid(const char *op, const char *what, const ml_volume *v, const ml_volume *other);

#endif
