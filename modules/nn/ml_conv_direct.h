/* Direct f32 convolution kernels for few channels (see ml_conv_direct.c). Private to modules/nn. */
#ifndef ML_CONV_DIRECT_H
#define ML_CONV_DIRECT_H

#include "ml_nn.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* 3 spatial dims (lower-rank convolutions pad with size-1 dims, stride 1, padding 0). */
typedef struct {
    int64_t N, Ci, Co;
    int64_t I[3], O[3], K[3], s[3], p[3];
} mlc_geo;

/* out[n, co, o] = bias[co] + sum_{ci, k} in[n, ci, i] * w[ci*wci + co*wco + k] over o = i*s - p + k
 * (per dim); in [N, Ci, I], out [N, Co, O], contiguous; bias may be NULL; p may be negative. */
ml_err mlc_tconv_f32(const mlc_geo *g, const float *in, const float *w, int64_t wci, int64_t wco, const float *bias,
                     float *out);

/* gw[co, ci, k] = sum_{n, o} gy[n, co, o] * x[n, ci, o*s - p + k] and (if gb) gb[co] = sum gy[n, co, :];
 * x [N, Ci, I], gy [N, Co, O]; stride 1 in the last dim. */
ml_err mlc_conv_wgrad_f32(const mlc_geo *g, const float *x, const float *gy, float *gw, float *gb);

#endif
