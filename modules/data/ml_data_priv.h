/* Internal helpers shared by the modules/data C files (not a stable API). */
#ifndef ML_DATA_PRIV_H
#define ML_DATA_PRIV_H

#include "data/ml_data.h"

/* threads for a loop of `work` elements: 1 below 64k, else ml_num_threads() (inside a loader worker
 * every OpenMP region is inactive anyway, so kernels run single-threaded there) */
int ml_data_threads(int64_t work);
void ml_affine_identity16(double a[16]);
void ml_affine_mul16(double out[16], const double a[16], const double b[16]); /* out may alias */
/* a = a * translate(t) */
void ml_affine_translate_by(double a[16], const double t[3]);
/* contiguous float32 [C, X, Y, Z] copy of t (retains t when it already is one) */
ml_err ml_data_c4(ml_tensor **out, ml_tensor *t);
void ml_data_copy_c4(float *dst, const ml_tensor *t);
/* Copy the box [lo, lo + n) of every channel of a float32 [C, X, Y, Z] tensor (any strides) into the
 * contiguous [C, dsh[0], dsh[1], dsh[2]] buffer dst at offset off. */
void ml_data_copy_box(float *dst, const int64_t dsh[3], const int64_t off[3], const ml_tensor *t, const int64_t lo[3],
                      const int64_t n[3]);
/* t is contiguous float32 and nothing else holds it or its storage (safe to write in place) */
bool ml_data_exclusive(const ml_tensor *t);

#endif
