/* Device-agnostic forms of nn ops, written with core tensor ops (elementwise, reductions, views) that
 * every backend has: the CUDA path of the ops that have no device kernel of their own yet. Their
 * gradients come from autograd through the composed ops. The CPU keeps its fused kernels; these run
 * only for tensors on a device (ml_act.c / ml_norm.c call them), and tests/gpu compares them with the
 * CPU kernels. */
#include "ml_nn_composite.h"

#include <string.h>

#define TRY(x)                  \
    do {                        \
        if ((e = (x))) goto done; \
    } while (0)

static void drop(ml_tensor **t) {
    ml_tensor_release(*t);
    *t = NULL;
}

ml_err ml_softmax_composite(ml_tensor **out, ml_tensor *x, int d, bool log) {
    *out = NULL;
    ml_tensor *m = NULL, *md = NULL, *z = NULL, *ez = NULL, *s = NULL, *ls = NULL;
    ml_err e;
    /* softmax(x) = softmax(x - c) for any c: the max is a constant for autograd */
    TRY(ml_reduce(&m, ML_RAMAX, x, 1, &d, true));
    TRY(ml_detach(&md, m));
    TRY(ml_binary(&z, ML_SUB, x, md));
    TRY(ml_unary(&ez, ML_EXP, z));
    TRY(ml_reduce(&s, ML_RSUM, ez, 1, &d, true));
    if (log) {
        TRY(ml_unary(&ls, ML_LOG, s));
        TRY(ml_binary(out, ML_SUB, z, ls));
    } else {
        TRY(ml_binary(out, ML_DIV, ez, s));
    }
done:
    ml_tensor_release(m);
    ml_tensor_release(md);
    ml_tensor_release(z);
    ml_tensor_release(ez);
    ml_tensor_release(s);
    ml_tensor_release(ls);
    return e;
}

/* v [C] viewed as [1, C, 1, ...] for a rank-nd input */
static ml_err chan_view(ml_tensor **out, ml_tensor *v, int nd) {
    int64_t sh[ML_MAX_DIMS];
    for (int i = 0; i < nd; i++) sh[i] = 1;
    sh[1] = ml_tensor_numel(v);
    return ml_reshape(out, v, nd, sh);
}

ml_err ml_norm_composite(ml_tensor **out, int kind, ml_tensor *x, int64_t G, ml_tensor *rmean, ml_tensor *rvar,
                         ml_tensor *weight, ml_tensor *bias, bool training, double momentum, double eps,
                         ml_tensor *prelu_w) {
    *out = NULL;
    int nd = x->ndim;
    int64_t N = x->shape[0], C = x->shape[1], S = 1;
    for (int i = 2; i < nd; i++) S *= x->shape[i];
    ml_tensor *xv = NULL, *mean = NULL, *xc = NULL, *sq = NULL, *var = NULL, *ve = NULL, *rs = NULL, *y = NULL,
              *t = NULL, *wv = NULL, *rm = NULL, *rv = NULL, *stat = NULL;
    ml_err e = ML_OK;
    int dims[ML_MAX_DIMS], ndims = 0, vnd = nd;
    if (kind == ML_NORM_GROUP) { /* [N, G, C/G * S]: statistics over the last dim */
        int64_t gs[3] = {N, G, C / G * S};
        TRY(ml_reshape(&xv, x, 3, gs));
        vnd = 3;
        dims[ndims++] = 2;
    } else {
        ml_tensor_retain(x);
        xv = x;
        if (kind == ML_NORM_BATCH) dims[ndims++] = 0;
        for (int i = 2; i < nd; i++) dims[ndims++] = i;
    }
    bool batch_stats = kind != ML_NORM_BATCH || training;
    if (batch_stats) {
        TRY(ml_reduce(&mean, ML_RMEAN, xv, ndims, dims, true));
        TRY(ml_binary(&xc, ML_SUB, xv, mean));
        TRY(ml_binary(&sq, ML_MUL, xc, xc));
        TRY(ml_reduce(&var, ML_RMEAN, sq, ndims, dims, true)); /* biased, as the normalisation uses */
        if (kind == ML_NORM_BATCH && rmean) {                 /* running statistics, outside the graph */
            bool prev = ml_set_grad_enabled(false);
            double cnt = (double)(N * S);
            int64_t c1 = C;
            e = ml_reshape(&stat, mean, 1, &c1);
            if (!e) e = ml_binary_scalar_(ML_MUL, rmean, 1 - momentum);
            if (!e) e = ml_binary_scalar(&t, ML_MUL, stat, momentum, false);
            if (!e) e = ml_binary_(ML_ADD, rmean, t);
            drop(&t);
            drop(&stat);
            if (!e) e = ml_reshape(&stat, var, 1, &c1);
            if (!e) e = ml_binary_scalar_(ML_MUL, rvar, 1 - momentum);
            if (!e) e = ml_binary_scalar(&t, ML_MUL, stat, momentum * (cnt > 1 ? cnt / (cnt - 1) : 1), false);
            if (!e) e = ml_binary_(ML_ADD, rvar, t);
            ml_set_grad_enabled(prev);
            if (e) goto done;
        }
    } else {
        TRY(chan_view(&rm, rmean, nd));
        TRY(chan_view(&rv, rvar, nd));
        TRY(ml_binary(&xc, ML_SUB, xv, rm));
        ml_tensor_retain(rv);
        var = rv;
    }
    TRY(ml_binary_scalar(&ve, ML_ADD, var, eps, false));
    TRY(ml_unary(&rs, ML_RSQRT, ve));
    TRY(ml_binary(&y, ML_MUL, xc, rs));
    if (vnd != nd) { /* back to the input's shape */
        TRY(ml_reshape(&t, y, nd, x->shape));
        drop(&y);
        y = t;
        t = NULL;
    }
    if (weight) {
        TRY(chan_view(&wv, weight, nd));
        TRY(ml_binary(&t, ML_MUL, y, wv));
        drop(&y);
        drop(&wv);
        y = t;
        t = NULL;
    }
    if (bias) {
        TRY(chan_view(&wv, bias, nd));
        TRY(ml_binary(&t, ML_ADD, y, wv));
        drop(&y);
        y = t;
        t = NULL;
    }
    if (prelu_w) {
        TRY(ml_prelu(&t, y, prelu_w));
        drop(&y);
        y = t;
        t = NULL;
    }
    *out = y;
    y = NULL;
done:
    ml_tensor_release(xv);
    ml_tensor_release(mean);
    ml_tensor_release(xc);
    ml_tensor_release(sq);
    ml_tensor_release(var);
    ml_tensor_release(ve);
    ml_tensor_release(rs);
    ml_tensor_release(y);
    ml_tensor_release(t);
    ml_tensor_release(wv);
    ml_tensor_release(rm);
    ml_tensor_release(rv);
    ml_tensor_release(stat);
    return e;
}

ml_err ml_dropout_composite(ml_tensor **out, ml_tensor *x, double p) {
    *out = NULL;
    ml_tensor *r = NULL, *rd = NULL, *keep = NULL, *mask = NULL;
    ml_err e;
    /* the mask from the host generator (seeded, the same on any device), moved to x's device */
    TRY(ml_rand(&r, (ml_dtype)x->dtype, x->ndim, x->shape));
    TRY(ml_to_device(&rd, r, ml_tensor_device(x)));
    TRY(ml_binary_scalar(&keep, ML_GE, rd, p, false));
    TRY(ml_to_dtype(&mask, keep, (ml_dtype)x->dtype));
    TRY(ml_binary_scalar_(ML_MUL, mask, p < 1 ? 1 / (1 - p) : 0));
    TRY(ml_binary(out, ML_MUL, x, mask));
done:
    ml_tensor_release(r);
    ml_tensor_release(rd);
    ml_tensor_release(keep);
    ml_tensor_release(mask);
    return e;
}

ml_err ml_layer_norm_composite(ml_tensor **out, ml_tensor *x, int nnorm, ml_tensor *weight, ml_tensor *bias,
                               double eps) {
    *out = NULL;
    int dims[ML_MAX_DIMS];
    for (int i = 0; i < nnorm; i++) dims[i] = x->ndim - nnorm + i;
    ml_tensor *mean = NULL, *xc = NULL, *sq = NULL, *var = NULL, *ve = NULL, *rs = NULL, *y = NULL, *t = NULL;
    ml_err e;
    TRY(ml_reduce(&mean, ML_RMEAN, x, nnorm, dims, true));
    TRY(ml_binary(&xc, ML_SUB, x, mean));
    TRY(ml_binary(&sq, ML_MUL, xc, xc));
    TRY(ml_reduce(&var, ML_RMEAN, sq, nnorm, dims, true));
    TRY(ml_binary_scalar(&ve, ML_ADD, var, eps, false));
    TRY(ml_unary(&rs, ML_RSQRT, ve));
    TRY(ml_binary(&y, ML_MUL, xc, rs));
    if (weight) { /* weight/bias have the normalised shape: they broadcast over the leading dims */
        TRY(ml_binary(&t, ML_MUL, y, weight));
        drop(&y);
        y = t;
        t = NULL;
    }
    if (bias) {
        TRY(ml_binary(&t, ML_ADD, y, bias));
        drop(&y);
        y = t;
        t = NULL;
    }
    *out = y;
    y = NULL;
done:
    ml_tensor_release(mean);
    ml_tensor_release(xc);
    ml_tensor_release(sq);
    ml_tensor_release(var);
    ml_tensor_release(ve);
    ml_tensor_release(rs);
    ml_tensor_release(y);
    ml_tensor_release(t);
    return e;
}
