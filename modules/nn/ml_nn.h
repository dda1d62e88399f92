/* medlua neural-network ops (functional, THNN-style). Lua-free.
 * Same conventions as ml_tensor.h: NEW reference in *out, ml_err return, error message names the
 * op and the shapes, autograd node recorded when needed. Layout: batch first, channels second
 * (N, C, [D,] [H,] W). Spatial rank k = x->ndim - 2 in 1..3. Array params have k entries. */
#ifndef ML_NN_H
#define ML_NN_H

#include "../tensor/ml_tensor.h"

/* ------------------------------------------------------------- linear algebra */
ml_err ml_matmul(ml_tensor **out, ml_tensor *a, ml_tensor *b);   /* numpy matmul semantics, batch broadcast */
ml_err ml_bmm(ml_tensor **out, ml_tensor *a, ml_tensor *b);      /* [B,n,k] x [B,k,m] */
ml_err ml_linear(ml_tensor **out, ml_tensor *x, ml_tensor *w /* [out,in] */, ml_tensor *b /* [out] or NULL */);

/* --------------------------------------------------------------- convolution */
typedef struct {
    int k;                    /* spatial dims 1..3 */
    int64_t stride[3], padding[3], dilation[3], output_padding[3];
    int64_t groups;
} ml_conv_params;
/* w: [Cout, Cin/groups, k...]; b: [Cout] or NULL */
ml_err ml_conv(ml_tensor **out, ml_tensor *x, ml_tensor *w, ml_tensor *b, const ml_conv_params *p);
/* w: [Cin, Cout/groups, k...] (PyTorch layout); b: [Cout] or NULL */
ml_err ml_conv_transpose(ml_tensor **out, ml_tensor *x, ml_tensor *w, ml_tensor *b, const ml_conv_params *p);

/* ------------------------------------------------------------------- pooling */
typedef struct {
    int k;
    int64_t kernel[3], stride[3], padding[3], dilation[3];
    bool ceil_mode;
    bool count_include_pad;   /* avg only */
} ml_pool_params;
ml_err ml_max_pool(ml_tensor **out, ml_tensor *x, const ml_pool_params *p);
ml_err ml_avg_pool(ml_tensor **out, ml_tensor *x, const ml_pool_params *p);
ml_err ml_adaptive_avg_pool(ml_tensor **out, ml_tensor *x, int k, const int64_t *out_size);

/* ------------------------------------------------------------- normalization */
/* running_mean/var may be NULL; in training they are updated in place (momentum, unbiased var). */
ml_err ml_batch_norm(ml_tensor **out, ml_tensor *x, ml_tensor *running_mean, ml_tensor *running_var,
                     ml_tensor *weight, ml_tensor *bias, bool training, double momentum, double eps);
ml_err ml_instance_norm(ml_tensor **out, ml_tensor *x, ml_tensor *weight, ml_tensor *bias, double eps);
ml_err ml_group_norm(ml_tensor **out, ml_tensor *x, int64_t groups, ml_tensor *weight, ml_tensor *bias, double eps);
/* The same norms followed by PReLU(prelu_weight: [1] or [C]) in one op: one pass forward, two backward,
 * and the norm's output is never stored (what MONAI's ADN "NDA" with PReLU computes). */
ml_err ml_batch_norm_prelu(ml_tensor **out, ml_tensor *x, ml_tensor *running_mean, ml_tensor *running_var,
                           ml_tensor *weight, ml_tensor *bias, bool training, double momentum, double eps,
                           ml_tensor *prelu_weight);
ml_err ml_instance_norm_prelu(ml_tensor **out, ml_tensor *x, ml_tensor *weight, ml_tensor *bias, double eps,
                              ml_tensor *prelu_weight);
ml_err ml_group_norm_prelu(ml_tensor **out, ml_tensor *x, int64_t groups, ml_tensor *weight, ml_tensor *bias,
                           double eps, ml_tensor *prelu_weight);
/* normalizes over the last `nnorm` dims; weight/bias shaped like those dims or NULL */
ml_err ml_layer_norm(ml_tensor **out, ml_tensor *x, int nnorm, ml_tensor *weight, ml_tensor *bias, double eps);

/* ---------------------------------------------------------------- activations */
/* relu/gelu/silu/sigmoid/tanh are ml_unary ops; leaky_relu/elu/prelu in ml_tensor.h */
ml_err ml_softmax(ml_tensor **out, ml_tensor *x, int dim);
ml_err ml_log_softmax(ml_tensor **out, ml_tensor *x, int dim);
ml_err ml_dropout(ml_tensor **out, ml_tensor *x, double p, bool training);

/* ---------------------------------------------------------- resampling + pad */
typedef enum { ML_INTERP_NEAREST, ML_INTERP_LINEAR /* linear/bilinear/trilinear by rank */ } ml_interp_mode;
/* size: k output sizes (or NULL, then scale[k] used) */
ml_err ml_interpolate(ml_tensor **out, ml_tensor *x, const int64_t *size, const double *scale,
                      ml_interp_mode mode, bool align_corners);
typedef enum { ML_PAD_CONSTANT, ML_PAD_REFLECT, ML_PAD_REPLICATE } ml_pad_mode;
/* pads: PyTorch order, last dim first: (left, right, top, bottom, front, back); npads = 2*dims padded */
ml_err ml_pad(ml_tensor **out, ml_tensor *x, int npads, const int64_t *pads, ml_pad_mode mode, double value);
typedef enum { ML_GS_ZEROS, ML_GS_BORDER } ml_gs_padding;
/* x: [N,C,(D,)H,W]; grid: [N,(Do,)Ho,Wo,k] in [-1,1], last = (x, y[, z]) */
ml_err ml_grid_sample(ml_tensor **out, ml_tensor *x, ml_tensor *grid, ml_interp_mode mode,
                      ml_gs_padding padding, bool align_corners);
/* theta: [N,2,3] or [N,3,4]; size: N,C,(D,)H,W (ndim 4 or 5) */
ml_err ml_affine_grid(ml_tensor **out, ml_tensor *theta, int ndim, const int64_t *size, bool align_corners);

/* --------------------------------------------------------------------- losses */
typedef enum { ML_REDUCE_NONE, ML_REDUCE_MEAN, ML_REDUCE_SUM } ml_reduction;
ml_err ml_mse_loss(ml_tensor **out, ml_tensor *input, ml_tensor *target, ml_reduction r);
ml_err ml_l1_loss(ml_tensor **out, ml_tensor *input, ml_tensor *target, ml_reduction r);
ml_err ml_smooth_l1_loss(ml_tensor **out, ml_tensor *input, ml_tensor *target, double beta, ml_reduction r);
ml_err ml_bce_with_logits(ml_tensor **out, ml_tensor *input, ml_tensor *target, ml_tensor *weight,
                          ml_tensor *pos_weight, ml_reduction r);
/* input: [N,C,...] logits. target: int class indices [N,...] or float probabilities [N,C,...].
 * weight: [C] or NULL. */
ml_err ml_cross_entropy(ml_tensor **out, ml_tensor *input, ml_tensor *target, ml_tensor *weight,
                        int64_t ignore_index, double label_smoothing, ml_reduction r);
ml_err ml_nll_loss(ml_tensor **out, ml_tensor *logp, ml_tensor *target, ml_tensor *weight,
                   int64_t ignore_index, ml_reduction r);

#endif
