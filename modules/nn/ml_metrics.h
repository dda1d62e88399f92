/* medlua segmentation metrics core (Lua-free): exact Euclidean distance transform, surface (edge)
 * voxels, per-class confusion counts, and the surface metrics of MONAI (Hausdorff distance and its
 * percentiles, normalized surface Dice, average surface distance).
 *
 * Definitions follow MONAI 1.6 (monai/metrics/utils.py, hausdorff_distance.py, surface_dice.py,
 * surface_distance.py, meandice.py, meaniou.py):
 *  - a surface voxel is a foreground voxel with at least one face neighbour (2*ndim of them) that is
 *    background or outside the image: mask XOR binary_erosion(mask) with scipy's default cross
 *    structuring element and zero border, as MONAI's get_mask_edges (its crop to the bounding box of
 *    pred|gt with a margin of one voxel does not change the result, and we crop the same way);
 *  - surface distances are exact Euclidean distances in millimetres between surface voxel centres
 *    (voxel index * spacing), from every surface voxel of one mask to the nearest surface voxel of the
 *    other, as MONAI's get_surface_distance (a KD-tree there, an exact EDT here: same numbers);
 *  - empty masks give what MONAI gives (see ml_seg_surface).
 *
 * Segmentation inputs of ml_seg_counts / ml_seg_surface are tensors [N, C, spatial...] with 1 to 3
 * spatial dims, as MONAI: C == 1 is a label map (class k = the voxels whose value equals k; values that
 * are not an integer in [0, num_classes) belong to no class), C > 1 is one-hot (class k = the non-zero
 * voxels of channel k; C must equal num_classes). pred and gt may use different formats but must have
 * the same N and spatial shape. Any dtype; any strides (non-contiguous inputs are copied).
 * Threads: OpenMP over lines/slabs inside each (batch item, class).
 */
#ifndef ML_METRICS_H
#define ML_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#include "tensor/ml_tensor.h"

/* Squared exact Euclidean distance transform (Felzenszwalb & Huttenlocher, "Distance transforms of
 * sampled functions", 2012): a two-sweep nearest-site pass along the last (contiguous) axis, then the
 * lower envelope of parabolas along every other axis; OpenMP over lines.
 * sites: row-major uint8 array of the given shape, non-zero = site. out: per voxel the squared distance
 * (in spacing units, i.e. mm^2) to the nearest site; INFINITY everywhere when there is no site.
 * spacing: ndim positive finite values (NULL = all 1). ndim 1..ML_MAX_DIMS. out and sites must not
 * overlap. Returns ML_ERR_ARG (bad ndim/shape/spacing) or ML_ERR_OOM. */
ml_err ml_edt_sq(double *out, const uint8_t *sites, int ndim, const int64_t *shape, const double *spacing);

/* Surface voxels of a binary mask (non-zero = foreground) as MONAI's get_mask_edges: edges[i] = 1 for a
 * foreground voxel with a background (or out-of-image) face neighbour, else 0. Returns the number of
 * surface voxels. ndim 1..ML_MAX_DIMS; edges and mask must not overlap. */
int64_t ml_mask_edges(uint8_t *edges, const uint8_t *mask, int ndim, const int64_t *shape);

/* scipy.ndimage.distance_transform_edt(mask, sampling=spacing) on a tensor of any shape/dtype: for every
 * non-zero voxel the distance to the nearest zero voxel, 0 on zero voxels; float64 result of the same
 * shape. When mask has no zero voxel at all the result is +inf on every voxel (scipy returns arbitrary
 * finite values there). spacing: mask->ndim entries or NULL (1). op names the caller in messages. */
ml_err ml_distance_transform_edt(ml_tensor **out, ml_tensor *mask, const double *spacing, const char *op);

/* Surface voxels of a mask tensor of any shape/dtype (non-zero = foreground) as a bool tensor. */
ml_err ml_surface_voxels(ml_tensor **out, ml_tensor *mask, const char *op);

/* Per batch item and class: float64 [N, K, 3] with K = num_classes - first_class and, for class
 * k = first_class + j: [b, j, 0] = sum of gt over the voxels where pred is in class k (the
 * intersection), [b, j, 1] = number of pred voxels in class k, [b, j, 2] = sum of gt over class k.
 * gt counts 1 per voxel for a label map and the channel value for one-hot (so soft one-hot ground
 * truth works as MONAI's compute_dice); pred is always binary (label == k, or channel k non-zero).
 * Dice = 2 I / (P + G), IoU = I / (P + G - I). first_class is 0 or 1. */
ml_err ml_seg_counts(ml_tensor **out, ml_tensor *pred, ml_tensor *gt, int64_t num_classes, int64_t first_class,
                     const char *op);

typedef enum {
    ML_SURF_HAUSDORFF = 0, /* MONAI compute_hausdorff_distance (euclidean) */
    ML_SURF_DICE = 1,      /* MONAI compute_surface_dice (use_subvoxels=False) */
    ML_SURF_MEAN = 2       /* MONAI compute_average_surface_distance */
} ml_surface_kind;

typedef struct {
    ml_surface_kind kind;
    /* HAUSDORFF: percentile in (0, 100] of each directed distance set, then the max of the two
     * directions; 0 (or NaN) = the maximum, as MONAI's percentile=None (and percentile=0). */
    double percentile;
    /* HAUSDORFF: directed (pred -> gt only; MONAI directed=True). MEAN: !symmetric. Ignored by DICE. */
    bool directed;
    /* DICE: K class thresholds in mm (finite, >= 0), one per class first_class..num_classes-1. */
    const double *tolerance;
    /* nsd entries (one spacing for the whole batch) or N*nsd (per batch item: spacing_per_item true);
     * NULL = 1 mm. Positive and finite. */
    const double *spacing;
    bool spacing_per_item;
} ml_surface_opts;

/* Surface metric per batch item and class: float64 [N, K] (K = num_classes - first_class).
 * Distances are float32 as MONAI's, the Hausdorff percentile is torch.quantile's linear interpolation
 * in float32 (same rank and lerp formula), so results match MONAI to float32 rounding.
 * Empty masks, exactly as MONAI:
 *   HAUSDORFF: both empty -> NaN; one empty -> +inf for the maximum, NaN for a percentile (torch.quantile
 *              of an all-inf set is NaN); directed with an empty pred and a non-empty gt: as MONAI
 *              (inf / NaN).
 *   DICE:      both empty -> NaN; one empty -> 0.
 *   MEAN:      both empty -> NaN; one empty -> +inf. */
ml_err ml_seg_surface(ml_tensor **out, ml_tensor *pred, ml_tensor *gt, int64_t num_classes, int64_t first_class,
                      const ml_surface_opts *o, const char *op);

/* Largest value of a tensor of any shape and dtype (a label map's highest class), NaN when a value is
 * NaN, -inf for an empty tensor. */
ml_err ml_label_max(double *out, ml_tensor *t, const char *op);

/* MONAI torch.quantile(x, q) with linear interpolation in float32 on n values (sorted in place).
 * n == 0 -> NaN. Exposed for the tests. */
float ml_quantile_f32(float *x, int64_t n, double q);

#endif
