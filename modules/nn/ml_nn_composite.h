/* Device-agnostic compositions of nn ops from core tensor ops (see ml_nn_composite.c): the CUDA path
 * of ops without a device kernel yet. Arguments as the ops in ml_nn.h, already checked by them. */
#ifndef ML_NN_COMPOSITE_H
#define ML_NN_COMPOSITE_H

#include "../tensor/ml_tensor.h"
#include "ml_nn.h"

enum { ML_NORM_BATCH = 0, ML_NORM_INSTANCE = 1, ML_NORM_GROUP = 2 };

ml_err ml_softmax_composite(ml_tensor **out, ml_tensor *x, int dim, bool log);
ml_err ml_norm_composite(ml_tensor **out, int kind, ml_tensor *x, int64_t groups, ml_tensor *running_mean,
                         ml_tensor *running_var, ml_tensor *weight, ml_tensor *bias, bool training, double momentum,
                         double eps, ml_tensor *prelu_weight);
ml_err ml_layer_norm_composite(ml_tensor **out, ml_tensor *x, int nnorm, ml_tensor *weight, ml_tensor *bias,
                               double eps);
ml_err ml_dropout_composite(ml_tensor **out, ml_tensor *x, double p);
/* cross entropy of logits x [N, C, ...] (or [C]): class indices tc (host int64, contiguous, checked) or class
 * probabilities prob (x's shape, x's device); weight [C], ignore_index, label smoothing; reduction 0 none,
 * 1 mean, 2 sum (PyTorch's definitions) */
ml_err ml_cross_entropy_composite(ml_tensor **out, ml_tensor *x, const ml_tensor *tc, ml_tensor *prob,
                                  ml_tensor *weight, int64_t ignore_index, double label_smoothing, int reduction);

/* pad of the last P dims: lo/hi per dim (negative crops), as ml_pad checked them */
ml_err ml_pad_composite(ml_tensor **out, ml_tensor *x, int P, const int64_t *lo, const int64_t *hi, ml_pad_mode mode,
                        double value);

#endif
