/* Device-agnostic forms of nn ops, written with core tensor ops (elementwise, reductions, views) that
 * every backend has: the CUDA path of the ops that have no device kernel of their own yet. Their
 * gradients come from autograd through the composed ops. The CPU keeps its fused kernels; these run
 * only for tensors on a device (ml_act.c / ml_norm.c call them), and tests/gpu compares them with the
 * CPU kernels. */
#include "ml_nn_composite.h"
#include "../tensor/ml_iter.h" /* ml_store_elem */

#include <stdlib.h>
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

/* *y = *y op b (b NULL: nothing); the old *y released */
static ml_err step_bin(ml_tensor **y, ml_binop op, ml_tensor *b) {
    if (!b) return ML_OK;
    ml_tensor *t;
    ml_err e = ml_binary(&t, op, *y, b);
    if (e) return e;
    ml_tensor_release(*y);
    *y = t;
    return ML_OK;
}

/* *y = *y op v.view(channel shape) for a per-channel vector v (NULL: nothing) */
static ml_err step_chan(ml_tensor **y, ml_binop op, ml_tensor *v) {
    if (!v) return ML_OK;
    ml_tensor *vv;
    ml_err e = chan_view(&vv, v, (*y)->ndim);
    if (!e) e = step_bin(y, op, vv);
    ml_tensor_release(vv);
    return e;
}

/* y = (x - mean) * rsqrt(var + eps) with mean and biased var over dims (keepdim; returned when asked) */
static ml_err standardize(ml_tensor **y, ml_tensor *x, int ndims, const int *dims, double eps, ml_tensor **mean_out,
                          ml_tensor **var_out) {
    ml_tensor *mean = NULL, *sq = NULL, *var = NULL;
    ml_err e;
    *y = NULL;
    TRY(ml_reduce(&mean, ML_RMEAN, x, ndims, dims, true));
    TRY(ml_binary(y, ML_SUB, x, mean));
    TRY(ml_binary(&sq, ML_MUL, *y, *y));
    TRY(ml_reduce(&var, ML_RMEAN, sq, ndims, dims, true));
    drop(&sq);
    TRY(ml_binary_scalar(&sq, ML_ADD, var, eps, false));
    TRY(ml_unary_(ML_RSQRT, sq));
    TRY(step_bin(y, ML_MUL, sq));
    if (mean_out) { *mean_out = mean; mean = NULL; }
    if (var_out) { *var_out = var; var = NULL; }
done:
    if (e) drop(y);
    ml_tensor_release(mean);
    ml_tensor_release(sq);
    ml_tensor_release(var);
    return e;
}

/* running <- (1 - momentum) running + momentum * scale * stat (outside the graph) */
static ml_err update_running(ml_tensor *running, ml_tensor *stat, double momentum, double scale) {
    bool prev = ml_set_grad_enabled(false);
    int64_t c = ml_tensor_numel(running);
    ml_tensor *v = NULL, *t = NULL;
    ml_err e = ml_reshape(&v, stat, 1, &c);
    if (!e) e = ml_binary_scalar_(ML_MUL, running, 1 - momentum);
    if (!e) e = ml_binary_scalar(&t, ML_MUL, v, momentum * scale, false);
    if (!e) e = ml_binary_(ML_ADD, running, t);
    ml_tensor_release(v);
    ml_tensor_release(t);
    ml_set_grad_enabled(prev);
    return e;
}

ml_err ml_norm_composite(ml_tensor **out, int kind, ml_tensor *x, int64_t G, ml_tensor *rmean, ml_tensor *rvar,
                         ml_tensor *weight, ml_tensor *bias, bool training, double momentum, double eps,
                         ml_tensor *prelu_w) {
    *out = NULL;
    int nd = x->ndim;
    int64_t N = x->shape[0], C = x->shape[1], S = 1;
    for (int i = 2; i < nd; i++) S *= x->shape[i];
    ml_tensor *xv = NULL, *mean = NULL, *var = NULL, *y = NULL, *t = NULL, *rm = NULL, *rv = NULL;
    ml_err e = ML_OK;
    int dims[ML_MAX_DIMS], ndims = 0;
    if (kind == ML_NORM_GROUP) { /* [N, G, C/G * S]: statistics over the last dim */
        int64_t gs[3] = {N, G, C / G * S};
        TRY(ml_reshape(&xv, x, 3, gs));
        dims[ndims++] = 2;
    } else {
        ml_tensor_retain(x);
        xv = x;
        if (kind == ML_NORM_BATCH) dims[ndims++] = 0;
        for (int i = 2; i < nd; i++) dims[ndims++] = i;
    }
    if (kind != ML_NORM_BATCH || training) {
        TRY(standardize(&y, xv, ndims, dims, eps, &mean, &var));
        if (kind == ML_NORM_BATCH && rmean) { /* running statistics; the variance unbiased as PyTorch keeps it */
            double cnt = (double)(N * S);
            TRY(update_running(rmean, mean, momentum, 1));
            TRY(update_running(rvar, var, momentum, cnt > 1 ? cnt / (cnt - 1) : 1));
        }
    } else { /* evaluation: the running statistics */
        TRY(chan_view(&rm, rmean, nd));
        TRY(chan_view(&rv, rvar, nd));
        TRY(ml_binary(&y, ML_SUB, xv, rm));
        TRY(ml_binary_scalar(&t, ML_ADD, rv, eps, false));
        TRY(ml_unary_(ML_RSQRT, t));
        TRY(step_bin(&y, ML_MUL, t));
        drop(&t);
    }
    if (kind == ML_NORM_GROUP) { /* back to the input's shape */
        TRY(ml_reshape(&t, y, nd, x->shape));
        drop(&y);
        y = t;
        t = NULL;
    }
    TRY(step_chan(&y, ML_MUL, weight));
    TRY(step_chan(&y, ML_ADD, bias));
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
    ml_tensor_release(var);
    ml_tensor_release(y);
    ml_tensor_release(t);
    ml_tensor_release(rm);
    ml_tensor_release(rv);
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
    ml_tensor *y = NULL;
    ml_err e;
    TRY(standardize(&y, x, nnorm, dims, eps, NULL, NULL));
    /* weight/bias have the normalised shape: they broadcast over the leading dims */
    TRY(step_bin(&y, ML_MUL, weight));
    TRY(step_bin(&y, ML_ADD, bias));
    *out = y;
    y = NULL;
done:
    ml_tensor_release(y);
    return e;
}

/* [N, C, S...] one-hot (float, x's dtype, on x's device) of host class indices tc [N, S...] (int64,
 * contiguous, checked); positions with ignore get all zeros. valid (optional): 1/0 per position. */
static ml_err one_hot_dev(ml_tensor **oh, ml_tensor **valid, const ml_tensor *x, const ml_tensor *tc, int64_t C,
                          int64_t ignore) {
    *oh = NULL;
    if (valid) *valid = NULL;
    int nd = x->ndim;
    int64_t N = nd >= 2 ? x->shape[0] : 1, S = 1;
    for (int d = 2; d < nd; d++) S *= x->shape[d];
    ml_tensor *h = NULL, *v = NULL;
    ml_err e = ml_zeros(&h, (ml_dtype)x->dtype, nd, x->shape);
    if (!e && valid) e = ml_zeros(&v, (ml_dtype)x->dtype, nd >= 2 ? nd - 1 : 0, tc->shape);
    if (e) goto done;
    const int64_t *t = ml_tensor_data(tc);
    for (int64_t n = 0; n < N; n++)
        for (int64_t s = 0; s < S; s++) {
            int64_t k = t[n * S + s];
            if (k == ignore) continue;
            ml_store_elem(ml_tensor_data(h), (ml_dtype)x->dtype, (n * C + k) * S + s, 1.0);
            if (v) ml_store_elem(ml_tensor_data(v), (ml_dtype)x->dtype, n * S + s, 1.0);
        }
    if ((e = ml_to_device(oh, h, ml_tensor_device(x)))) goto done;
    if (v && (e = ml_to_device(valid, v, ml_tensor_device(x)))) {
        drop(oh);
        goto done;
    }
done:
    ml_tensor_release(h);
    ml_tensor_release(v);
    return e;
}

ml_err ml_cross_entropy_composite(ml_tensor **out, ml_tensor *x, const ml_tensor *tc, ml_tensor *prob,
                                  ml_tensor *weight, int64_t ignore, double ls, int reduction) {
    *out = NULL;
    int nd = x->ndim, cdim = nd == 1 ? 0 : 1;
    int64_t C = x->shape[cdim];
    ml_tensor *logp = NULL, *wv = NULL, *tw = NULL, *oh = NULL, *valid = NULL, *t1 = NULL, *t2 = NULL, *nll = NULL,
              *sm = NULL, *per = NULL, *den = NULL, *tgt = NULL;
    ml_err e;
    TRY(ml_log_softmax(&logp, x, cdim));
    if (weight) { /* weight [C] over the class dim */
        int64_t sh[ML_MAX_DIMS];
        for (int i = 0; i < nd; i++) sh[i] = 1;
        sh[cdim] = C;
        TRY(ml_reshape(&wv, weight, nd, sh));
        TRY(ml_binary(&tw, ML_MUL, logp, wv)); /* w_c * logp_c */
    } else {
        ml_tensor_retain(logp);
        tw = logp;
    }
    if (prob) { /* class probabilities: -(sum_c q_c w_c logp_c), q smoothed towards uniform */
        if (ls > 0) {
            TRY(ml_binary_scalar(&t1, ML_MUL, prob, 1 - ls, false));
            TRY(ml_binary_scalar(&tgt, ML_ADD, t1, ls / (double)C, false));
            drop(&t1);
        } else {
            ml_tensor_retain(prob);
            tgt = prob;
        }
        TRY(ml_binary(&t1, ML_MUL, tgt, tw));
        TRY(ml_reduce(&t2, ML_RSUM, t1, 1, &cdim, false));
        TRY(ml_unary(&per, ML_NEG, t2));
        if (reduction == 1) { /* mean over positions */
            TRY(ml_reduce(out, ML_RMEAN, per, 0, NULL, false));
        } else if (reduction == 2) {
            TRY(ml_reduce(out, ML_RSUM, per, 0, NULL, false));
        } else {
            ml_tensor_retain(per);
            *out = per;
        }
        goto done;
    }
    TRY(one_hot_dev(&oh, &valid, x, tc, C, ignore));
    TRY(ml_binary(&t1, ML_MUL, oh, tw));
    TRY(ml_reduce(&t2, ML_RSUM, t1, 1, &cdim, false));
    TRY(ml_unary(&nll, ML_NEG, t2)); /* -w_t logp_t, 0 where ignored */
    drop(&t1);
    drop(&t2);
    if (ls > 0) { /* (1 - ls) nll + ls/C * sum_c (-w_c logp_c), on the valid positions */
        TRY(ml_reduce(&t1, ML_RSUM, tw, 1, &cdim, false));
        TRY(ml_binary(&t2, ML_MUL, t1, valid));
        TRY(ml_binary_scalar(&sm, ML_MUL, t2, -ls / (double)C, false));
        drop(&t1);
        TRY(ml_binary_scalar(&t1, ML_MUL, nll, 1 - ls, false));
        TRY(ml_binary(&per, ML_ADD, t1, sm));
    } else {
        ml_tensor_retain(nll);
        per = nll;
    }
    if (reduction == 1) { /* mean: divided by the summed weights of the targets (their count unweighted) */
        drop(&t1);
        drop(&t2);
        if (weight) {
            TRY(ml_binary(&t1, ML_MUL, oh, wv));
            TRY(ml_reduce(&den, ML_RSUM, t1, 0, NULL, false));
        } else {
            TRY(ml_reduce(&den, ML_RSUM, valid, 0, NULL, false));
        }
        TRY(ml_reduce(&t2, ML_RSUM, per, 0, NULL, false));
        TRY(ml_binary(out, ML_DIV, t2, den));
    } else if (reduction == 2) {
        TRY(ml_reduce(out, ML_RSUM, per, 0, NULL, false));
    } else {
        ml_tensor_retain(per);
        *out = per;
    }
done:
    ml_tensor_release(logp);
    ml_tensor_release(wv);
    ml_tensor_release(tw);
    ml_tensor_release(oh);
    ml_tensor_release(valid);
    ml_tensor_release(t1);
    ml_tensor_release(t2);
    ml_tensor_release(nll);
    ml_tensor_release(sm);
    ml_tensor_release(per);
    ml_tensor_release(den);
    ml_tensor_release(tgt);
    return e;
}

/* ------------------------------------------------------------------ pad */
/* *t = cat(parts, d) with the parts released */
static ml_err cat_parts(ml_tensor **t, ml_tensor **parts, int n, int d) {
    ml_tensor *r = NULL;
    ml_err e = ml_cat(&r, n, parts, d);
    for (int i = 0; i < n; i++) ml_tensor_release(parts[i]);
    if (e) return e;
    ml_tensor_release(*t);
    *t = r;
    return ML_OK;
}

/* one side of dim d: `len` values (constant, the edge repeated, or the mirror image without the edge) */
static ml_err pad_side(ml_tensor **out, ml_tensor *t, int d, int64_t len, bool low, ml_pad_mode mode, double value) {
    int64_t n = t->shape[d];
    if (mode == ML_PAD_CONSTANT) {
        int64_t sh[ML_MAX_DIMS];
        memcpy(sh, t->shape, sizeof(int64_t) * (size_t)t->ndim);
        sh[d] = len;
        ml_err e = ml_tensor_empty_on(out, ml_tensor_device(t), (ml_dtype)t->dtype, t->ndim, sh);
        if (!e) e = ml_fill_(*out, value);
        return e;
    }
    if (mode == ML_PAD_REPLICATE) {
        ml_tensor *edge = NULL;
        int64_t sh[ML_MAX_DIMS];
        memcpy(sh, t->shape, sizeof(int64_t) * (size_t)t->ndim);
        sh[d] = len;
        ml_err e = ml_narrow(&edge, t, d, low ? 0 : n - 1, 1);
        if (!e) e = ml_expand(out, edge, t->ndim, sh);
        ml_tensor_release(edge);
        return e;
    }
    /* reflect: positions len..1 on the low side, n-2..n-1-len on the high side, one slice each */
    ml_tensor **sl = calloc((size_t)len, sizeof *sl);
    if (!sl) return ml_seterr(ML_ERR_OOM, "pad: out of memory");
    ml_err e = ML_OK;
    for (int64_t i = 0; i < len && !e; i++) e = ml_narrow(&sl[i], t, d, low ? len - i : n - 2 - i, 1);
    if (!e) e = ml_cat(out, (int)len, sl, d);
    for (int64_t i = 0; i < len; i++) ml_tensor_release(sl[i]);
    free(sl);
    return e;
}

ml_err ml_pad_composite(ml_tensor **out, ml_tensor *x, int P, const int64_t *lo, const int64_t *hi, ml_pad_mode mode,
                        double value) {
    *out = NULL;
    ml_tensor *t = x;
    ml_tensor_retain(t);
    ml_err e = ML_OK;
    int lead = x->ndim - P;
    for (int p = 0; p < P && !e; p++) {
        int d = lead + p;
        int64_t l = lo[p], h = hi[p];
        if (l < 0 || h < 0) { /* negative padding crops first */
            ml_tensor *c = NULL;
            int64_t a = l < 0 ? -l : 0, b = h < 0 ? -h : 0;
            e = ml_narrow(&c, t, d, a, t->shape[d] - a - b);
            if (e) break;
            ml_tensor_release(t);
            t = c;
        }
        ml_tensor *parts[3];
        int np = 0;
        if (l > 0 && (e = pad_side(&parts[np++], t, d, l, true, mode, value))) { np--; }
        if (!e) { ml_tensor_retain(t); parts[np++] = t; }
        if (!e && h > 0 && (e = pad_side(&parts[np++], t, d, h, false, mode, value))) { np--; }
        if (e) {
            for (int i = 0; i < np; i++) ml_tensor_release(parts[i]);
            break;
        }
        if (np > 1) e = cat_parts(&t, parts, np, d);
        else ml_tensor_release(parts[0]);
    }
    if (e) { ml_tensor_release(t); return e; }
    *out = t;
    return ML_OK;
}
