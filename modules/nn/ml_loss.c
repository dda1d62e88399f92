/* Losses (reduction none / mean / sum, forward + backward): mse, l1, smooth_l1, bce_with_logits,
 * cross_entropy (class indices with weights, ignore_index and label smoothing, or class
 * probabilities), nll_loss. Definitions follow PyTorch 1.13:
 *
 *  - smooth_l1: |d| < beta ? 0.5*d^2/beta : |d| - 0.5*beta (beta == 0: l1).
 *  - bce_with_logits: (1-y)*x + lw*(log1p(exp(-|x|)) + max(-x, 0)), lw = 1 + (pos_weight-1)*y,
 *    times weight; weight and pos_weight broadcast to the input.
 *  - cross_entropy, class indices: loss_i = (1-ls)*(-w[t_i]*logp[t_i]) + ls/C*(-sum_c w_c*logp_c),
 *    0 where t_i == ignore_index; mean divides by sum of w[t_i] over non-ignored targets (the count
 *    when there are no weights). Probabilities: y' = y*(1-ls) + ls/C, loss_i = -sum_c w_c*y'_c*logp_c,
 *    mean divides by the number of positions N*d1*...
 *  - nll_loss: loss_i = -w[t_i]*logp[t_i], same ignore/mean rules.
 * Sums are taken in double over fixed chunks (deterministic, thread-count independent). Kernels are
 * written once for T = float and T = double (this file includes itself with ML_LOSS_GEN defined). */
#ifndef ML_LOSS_GEN
#include "ml_nn_util.h"
#include "ml_nn_composite.h"

#include <math.h>

#define CE_BLK 64

enum { EW_MSE, EW_L1, EW_SL1 };

/* Deterministic sum of v[0..n) (fixed chunks, combined in order). */
static double det_sum(const double *v, int64_t n) {
    int64_t nch = (n + NN_CHUNK - 1) / NN_CHUNK;
    if (nch <= 1) {
        double s = 0;
        for (int64_t i = 0; i < n; i++) s += v[i];
        return s;
    }
    double *part = malloc(sizeof(double) * (size_t)nch);
    double s = 0;
    if (!part) { /* serial fallback, same chunk order */
        for (int64_t c = 0; c < nch; c++) {
            double t = 0;
            for (int64_t i = c * NN_CHUNK; i < n && i < (c + 1) * NN_CHUNK; i++) t += v[i];
            s += t;
        }
        return s;
    }
    int nt = nn_threads(n, nch);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t c = 0; c < nch; c++) {
        double t = 0;
        int64_t hi = (c + 1) * NN_CHUNK < n ? (c + 1) * NN_CHUNK : n;
        for (int64_t i = c * NN_CHUNK; i < hi; i++) t += v[i];
        part[c] = t;
    }
    for (int64_t c = 0; c < nch; c++) s += part[c];
    free(part);
    return s;
}

typedef struct {
    int red;
    bool prob, nll;
    int64_t N, C, S, ignore;
    double ls, wsum, denom; /* wsum: sum of class weights; denom: mean divisor */
    bool has_w;
} ce_params;
_Static_assert(sizeof(ce_params) <= ML_NODE_PARAM_BYTES, "params");

#define ML_LOSS_GEN
#define T float
#define S(name) name##_f32
#define VEXP nn_vexpf
#define VLOG1P01 nn_vlog1pf01
#define CE_FLOAT_LOG 1
#include "ml_loss.c"
#undef T
#undef S
#undef VEXP
#undef VLOG1P01
#undef CE_FLOAT_LOG
#define CE_FLOAT_LOG 0
#define T double
#define S(name) name##_f64
#define VEXP nn_vexpd
#define VLOG1P01 nn_vlog1pd
#include "ml_loss.c"
#undef T
#undef S
#undef VEXP
#undef VLOG1P01
#undef ML_LOSS_GEN

static ml_err check_reduction(const char *op, ml_reduction r) {
    if (r == ML_REDUCE_NONE || r == ML_REDUCE_MEAN || r == ML_REDUCE_SUM) return ML_OK;
    return ml_seterr(ML_ERR_ARG, "%s: unknown reduction %d (expected none, mean or sum)", op, (int)r);
}

/* Output of a reduced loss: 0-d tensor of dtype dt holding v. */
static ml_err scalar_out(ml_tensor **out, ml_dtype dt, double v) {
    ml_err e = ml_tensor_empty(out, dt, 0, NULL);
    if (!e) ml_store_elem((*out)->storage->data, dt, 0, v);
    return e;
}

/* Gradient of the loss output as per-element scale: for none, a contiguous copy (dtype dt) of g;
 * for mean/sum a single value g*factor. */
static ml_err grad_scale(ml_tensor *g, ml_reduction r, ml_dtype dt, double factor, ml_tensor **gc, double *gs) {
    *gc = NULL;
    if (r == ML_REDUCE_NONE) return nn_contig_as(gc, g, dt);
    *gs = ml_tensor_item(g) * factor;
    return ML_OK;
}

/* ================================================================= elementwise losses */
typedef struct {
    int kind, red;
    double beta;
    int64_t n;
} ew_params;
_Static_assert(sizeof(ew_params) <= ML_NODE_PARAM_BYTES, "params");

static const char *ew_name(int kind) { return kind == EW_MSE ? "mse_loss" : kind == EW_L1 ? "l1_loss" : "smooth_l1_loss"; }

/* saved: 0 input (contiguous), 1 target (contiguous) */
static ml_err bw_ew_loss(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const ew_params *p = (const ew_params *)n->params;
    ml_tensor *x = ml_node_saved(n, 0), *y = ml_node_saved(n, 1);
    if (!x || !y) return ML_ERR_GRAD;
    ml_dtype dt = (ml_dtype)x->dtype;
    ml_tensor *gc = NULL, *dx = NULL, *dy = NULL;
    double gs = 0;
    ml_err e = grad_scale(gout[0], (ml_reduction)p->red, dt, p->red == ML_REDUCE_MEAN ? 1.0 / (double)p->n : 1.0, &gc, &gs);
    if (e) return e;
    if (n->needs[0]) e = ml_tensor_empty(&dx, dt, x->ndim, x->shape);
    if (!e && n->needs[1]) e = ml_tensor_empty(&dy, dt, y->ndim, y->shape);
    if (!e) {
        if (dt == ML_F32)
            ew_bwd_f32(p->kind, p->beta, ml_tensor_data(x), ml_tensor_data(y), gc ? ml_tensor_data(gc) : NULL, gs, p->n,
                       dx ? ml_tensor_data(dx) : NULL, dy ? ml_tensor_data(dy) : NULL);
        else
            ew_bwd_f64(p->kind, p->beta, ml_tensor_data(x), ml_tensor_data(y), gc ? ml_tensor_data(gc) : NULL, gs, p->n,
                       dx ? ml_tensor_data(dx) : NULL, dy ? ml_tensor_data(dy) : NULL);
    }
    ml_tensor_release(gc);
    if (e) { ml_tensor_release(dx); ml_tensor_release(dy); return e; }
    gin[0] = dx;
    gin[1] = dy;
    return ML_OK;
}

/* Bring input and target to one shape (broadcast) and one float dtype through differentiable
 * expand / cast, so gradients flow back un-broadcast. New references in *a2, *b2. */
static ml_err align_pair(const char *op, ml_tensor *a, ml_tensor *b, ml_tensor **a2, ml_tensor **b2) {
    *a2 = *b2 = NULL;
    ml_err e = nn_check_real(op, "input", a);
    if (!e) e = nn_check_real(op, "target", b);
    if (e) return e;
    int nd;
    int64_t shape[ML_MAX_DIMS];
    if ((e = ml_broadcast_shapes(op, a->ndim, a->shape, b->ndim, b->shape, &nd, shape))) {
        return ml_seterr(ML_ERR_SHAPE, "%s: input of shape %s and target of shape %s cannot be broadcast together", op,
                         ml_shape_str(a->ndim, a->shape), ml_shape_str(b->ndim, b->shape));
    }
    ml_dtype dt = ml_dtype_promote((ml_dtype)a->dtype, (ml_dtype)b->dtype);
    ml_tensor *t[2] = {a, b}, *o[2] = {NULL, NULL};
    for (int i = 0; i < 2 && !e; i++) {
        ml_tensor *c = NULL;
        if ((e = ml_to_dtype(&c, t[i], dt))) break;
        bool same = c->ndim == nd;
        for (int d = 0; same && d < nd; d++) same = c->shape[d] == shape[d];
        if (same) o[i] = c;
        else {
            e = ml_expand(&o[i], c, nd, shape);
            ml_tensor_release(c);
        }
    }
    if (e) { ml_tensor_release(o[0]); ml_tensor_release(o[1]); return e; }
    *a2 = o[0];
    *b2 = o[1];
    return ML_OK;
}

static ml_err ew_loss(ml_tensor **out, int kind, ml_tensor *input, ml_tensor *target, double beta, ml_reduction r) {
    *out = NULL;
    const char *op = ew_name(kind);
    ml_err e = check_reduction(op, r);
    if (e) return e;
    if (kind == EW_SL1 && !(beta >= 0))
        return ml_seterr(ML_ERR_ARG, "smooth_l1_loss: beta must be >= 0, got %g", beta);
    if (kind == EW_SL1 && beta == 0) kind = EW_L1;
    ml_tensor *a = NULL, *b = NULL, *ac = NULL, *bc = NULL, *y = NULL;
    double *buf = NULL;
    if ((e = align_pair(op, input, target, &a, &b))) return e;
    if (ml_tensor_is_cuda(a) || ml_tensor_is_cuda(b)) { /* mse / l1 from recorded device ops */
        ml_tensor *d = NULL, *per = NULL;
        if (kind == EW_SL1) e = ml_check_cpu(op, a);
        if (!e) e = ml_binary(&d, ML_SUB, a, b);
        if (!e) e = kind == EW_MSE ? ml_binary(&per, ML_MUL, d, d) : ml_unary(&per, ML_ABS, d);
        if (!e) {
            if (r == ML_REDUCE_NONE) {
                ml_tensor_retain(per);
                y = per;
            } else {
                e = ml_reduce(&y, r == ML_REDUCE_MEAN ? ML_RMEAN : ML_RSUM, per, 0, NULL, false);
            }
        }
        ml_tensor_release(d);
        ml_tensor_release(per);
        goto done;
    }
    if ((e = nn_contig(&ac, a)) || (e = nn_contig(&bc, b))) goto done;
    ml_dtype dt = (ml_dtype)a->dtype;
    int64_t n = ml_tensor_numel(a);
    ew_params p = {.kind = kind, .red = r, .beta = beta, .n = n};
    if (r == ML_REDUCE_NONE) {
        if ((e = ml_tensor_empty(&y, dt, a->ndim, a->shape))) goto done;
        if (dt == ML_F32) ew_fwd_f32(kind, beta, ml_tensor_data(ac), ml_tensor_data(bc), n, ml_tensor_data(y), NULL);
        else ew_fwd_f64(kind, beta, ml_tensor_data(ac), ml_tensor_data(bc), n, ml_tensor_data(y), NULL);
    } else {
        int64_t nch = (n + NN_CHUNK - 1) / NN_CHUNK;
        buf = malloc(sizeof(double) * (size_t)(nch + 1));
        if (!buf) { e = ml_seterr(ML_ERR_OOM, "%s: out of memory", op); goto done; }
        if (dt == ML_F32) ew_fwd_f32(kind, beta, ml_tensor_data(ac), ml_tensor_data(bc), n, NULL, buf);
        else ew_fwd_f64(kind, beta, ml_tensor_data(ac), ml_tensor_data(bc), n, NULL, buf);
        double s = 0;
        for (int64_t c = 0; c < nch; c++) s += buf[c];
        if ((e = scalar_out(&y, dt, r == ML_REDUCE_MEAN ? s / (double)n : s))) goto done;
    }
    {
        ml_tensor *ins[2] = {a, b}, *saves[2] = {ac, bc};
        e = nn_record(op, bw_ew_loss, 2, ins, &y, &p, sizeof p, 2, saves);
    }
done:
    free(buf);
    ml_tensor_release(a); ml_tensor_release(b); ml_tensor_release(ac); ml_tensor_release(bc);
    if (e) { ml_tensor_release(y); return e; }
    *out = y;
    return ML_OK;
}

ml_err ml_mse_loss(ml_tensor **out, ml_tensor *input, ml_tensor *target, ml_reduction r) {
    return ew_loss(out, EW_MSE, input, target, 0, r);
}
ml_err ml_l1_loss(ml_tensor **out, ml_tensor *input, ml_tensor *target, ml_reduction r) {
    return ew_loss(out, EW_L1, input, target, 0, r);
}
ml_err ml_smooth_l1_loss(ml_tensor **out, ml_tensor *input, ml_tensor *target, double beta, ml_reduction r) {
    return ew_loss(out, EW_SL1, input, target, beta, r);
}

/* ===================================================================== bce_with_logits */
typedef struct {
    int red;
    int64_t n;
} bce_params;
_Static_assert(sizeof(bce_params) <= ML_NODE_PARAM_BYTES, "params");

/* saved: 0 x, 1 y, 2 weight (expanded, contiguous) or NULL, 3 pos_weight (expanded) or NULL */
static ml_err bw_bce(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const bce_params *p = (const bce_params *)n->params;
    ml_tensor *x = ml_node_saved(n, 0), *y = ml_node_saved(n, 1);
    ml_tensor *w = n->saved[2] ? ml_node_saved(n, 2) : NULL, *pw = n->saved[3] ? ml_node_saved(n, 3) : NULL;
    if (!x || !y || (n->saved[2] && !w) || (n->saved[3] && !pw)) return ML_ERR_GRAD;
    ml_dtype dt = (ml_dtype)x->dtype;
    ml_tensor *gc = NULL, *d[4] = {0}, *full[4] = {0};
    double gs = 0;
    ml_err e = grad_scale(gout[0], (ml_reduction)p->red, dt, p->red == ML_REDUCE_MEAN ? 1.0 / (double)p->n : 1.0, &gc, &gs);
    if (e) return e;
    for (int i = 0; i < 4 && !e; i++)
        if (n->needs[i]) e = ml_tensor_empty(&full[i], dt, x->ndim, x->shape);
    if (!e) {
        void *pd[4];
        for (int i = 0; i < 4; i++) pd[i] = full[i] ? ml_tensor_data(full[i]) : NULL;
        if (dt == ML_F32)
            bce_bwd_f32(ml_tensor_data(x), ml_tensor_data(y), w ? ml_tensor_data(w) : NULL, pw ? ml_tensor_data(pw) : NULL,
                        gc ? ml_tensor_data(gc) : NULL, gs, p->n, pd);
        else
            bce_bwd_f64(ml_tensor_data(x), ml_tensor_data(y), w ? ml_tensor_data(w) : NULL, pw ? ml_tensor_data(pw) : NULL,
                        gc ? ml_tensor_data(gc) : NULL, gs, p->n, pd);
    }
    /* weight / pos_weight were broadcast: sum their gradients back to the given shapes and dtypes */
    for (int i = 0; i < 4 && !e; i++) {
        if (!full[i]) continue;
        if (i < 2) { d[i] = full[i]; full[i] = NULL; continue; }
        ml_tensor *s = NULL;
        if ((e = ml_sum_to(&s, full[i], n->in_ndim[i], n->in_shape[i]))) break;
        e = ml_to_dtype(&d[i], s, (ml_dtype)n->in_dtype[i]);
        ml_tensor_release(s);
    }
    ml_tensor_release(gc);
    for (int i = 0; i < 4; i++) ml_tensor_release(full[i]);
    if (e) { for (int i = 0; i < 4; i++) ml_tensor_release(d[i]); return e; }
    for (int i = 0; i < 4; i++) gin[i] = d[i];
    return ML_OK;
}

/* t broadcast to (nd, shape) as a contiguous tensor of dtype dt (not recorded). */
static ml_err expand_contig(const char *op, const char *what, ml_tensor *t, int nd, const int64_t *shape, ml_dtype dt,
                            ml_tensor **out) {
    *out = NULL;
    ml_err e = nn_check_real(op, what, t);
    if (e) return e;
    int nb;
    int64_t bs[ML_MAX_DIMS];
    bool ok = ml_broadcast_shapes(op, t->ndim, t->shape, nd, shape, &nb, bs) == ML_OK && nb == nd;
    for (int i = 0; ok && i < nd; i++) ok = bs[i] == shape[i];
    if (!ok)
        return ml_seterr(ML_ERR_SHAPE, "%s: %s of shape %s does not broadcast to the input shape %s", op, what,
                         ml_shape_str(t->ndim, t->shape), ml_shape_str(nd, shape));
    if ((e = ml_tensor_empty(out, dt, nd, shape))) return e;
    if ((e = ml_tensor_plain(t)) || (e = ml_copy_(*out, t))) { ml_tensor_release(*out); *out = NULL; }
    return e;
}

ml_err ml_bce_with_logits(ml_tensor **out, ml_tensor *input, ml_tensor *target, ml_tensor *weight,
                          ml_tensor *pos_weight, ml_reduction r) {
    *out = NULL;
    const char *op = "bce_with_logits";
    ml_err e = check_reduction(op, r);
    if (!e) e = nn_check_real(op, "input", input);
    if (!e) e = nn_check_real(op, "target", target);
    if (e) return e;
    if (!nn_same_shape(input, target))
        return ml_seterr(ML_ERR_SHAPE, "%s: target size %s must be the same as input size %s", op,
                         ml_shape_str(target->ndim, target->shape), ml_shape_str(input->ndim, input->shape));
    ml_dtype dt = (ml_dtype)input->dtype;
    ml_tensor *xc = NULL, *yc = NULL, *wc = NULL, *pc = NULL, *y = NULL;
    double *buf = NULL;
    int64_t n = ml_tensor_numel(input);
    if ((e = nn_contig(&xc, input)) || (e = nn_contig_as(&yc, target, dt))) goto done;
    if (weight && (e = expand_contig(op, "weight", weight, input->ndim, input->shape, dt, &wc))) goto done;
    if (pos_weight && (e = expand_contig(op, "pos_weight", pos_weight, input->ndim, input->shape, dt, &pc))) goto done;
    bce_params p = {.red = r, .n = n};
    void *wd = wc ? ml_tensor_data(wc) : NULL, *pd = pc ? ml_tensor_data(pc) : NULL;
    if (r == ML_REDUCE_NONE) {
        if ((e = ml_tensor_empty(&y, dt, input->ndim, input->shape))) goto done;
        if (dt == ML_F32) bce_fwd_f32(ml_tensor_data(xc), ml_tensor_data(yc), wd, pd, n, ml_tensor_data(y), NULL);
        else bce_fwd_f64(ml_tensor_data(xc), ml_tensor_data(yc), wd, pd, n, ml_tensor_data(y), NULL);
    } else {
        int64_t nch = (n + NN_CHUNK - 1) / NN_CHUNK;
        buf = malloc(sizeof(double) * (size_t)(nch + 1));
        if (!buf) { e = ml_seterr(ML_ERR_OOM, "%s: out of memory", op); goto done; }
        if (dt == ML_F32) bce_fwd_f32(ml_tensor_data(xc), ml_tensor_data(yc), wd, pd, n, NULL, buf);
        else bce_fwd_f64(ml_tensor_data(xc), ml_tensor_data(yc), wd, pd, n, NULL, buf);
        double s = 0;
        for (int64_t c = 0; c < nch; c++) s += buf[c];
        if ((e = scalar_out(&y, dt, r == ML_REDUCE_MEAN ? s / (double)n : s))) goto done;
    }
    {
        ml_tensor *ins[4] = {input, target, weight, pos_weight}, *saves[4] = {xc, yc, wc, pc};
        e = nn_record(op, bw_bce, 4, ins, &y, &p, sizeof p, 4, saves);
    }
done:
    free(buf);
    ml_tensor_release(xc); ml_tensor_release(yc); ml_tensor_release(wc); ml_tensor_release(pc);
    if (e) { ml_tensor_release(y); return e; }
    *out = y;
    return ML_OK;
}

/* ========================================================== cross_entropy and nll_loss */

/* Validate class-index targets; return the target as a contiguous int64 tensor. */
static ml_err class_targets(const char *op, ml_tensor *input, ml_tensor *target, int64_t C, int64_t ignore,
                            ml_tensor **tc) {
    *tc = NULL;
    bool ok = input->ndim == 1 ? target->ndim == 0 : target->ndim == input->ndim - 1;
    if (ok && input->ndim >= 2) {
        ok = target->shape[0] == input->shape[0];
        for (int d = 2; ok && d < input->ndim; d++) ok = target->shape[d - 1] == input->shape[d];
    }
    if (!ok)
        return ml_seterr(ML_ERR_SHAPE, "%s: target of shape %s does not match input of shape %s (expected the input shape "
                         "without the class dim 1)", op, ml_shape_str(target->ndim, target->shape),
                         ml_shape_str(input->ndim, input->shape));
    ml_err e = nn_contig_as(tc, target, ML_I64);
    if (e) return e;
    const int64_t *t = ml_tensor_data(*tc);
    int64_t n = ml_tensor_numel(*tc);
    for (int64_t i = 0; i < n; i++) {
        if (t[i] == ignore) continue;
        if (t[i] < 0 || t[i] >= C) {
            ml_tensor_release(*tc);
            *tc = NULL;
            return ml_seterr(ML_ERR_ARG, "%s: target %lld is out of bounds for %lld classes (input shape %s)", op,
                             (long long)t[i], (long long)C, ml_shape_str(input->ndim, input->shape));
        }
    }
    return ML_OK;
}

/* saved: 0 input (contiguous), 1 class targets (int64) or probabilities (contiguous, input dtype),
 *        2 class weights [C] f64 or NULL, 3 per-position log-sum-exp [N*S] f64 (cross_entropy only) */
static ml_err bw_ce(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const ce_params *p = (const ce_params *)n->params;
    ml_tensor *x = ml_node_saved(n, 0), *t = ml_node_saved(n, 1);
    ml_tensor *tw = p->has_w ? ml_node_saved(n, 2) : NULL, *tl = p->nll ? NULL : ml_node_saved(n, 3);
    if (!x || !t || (p->has_w && !tw) || (!p->nll && !tl)) return ML_ERR_GRAD;
    ml_dtype dt = (ml_dtype)x->dtype;
    ml_tensor *gc = NULL, *dx = NULL, *dy = NULL;
    double gs = 0;
    ml_err e = grad_scale(gout[0], (ml_reduction)p->red, dt, p->red == ML_REDUCE_MEAN ? 1.0 / p->denom : 1.0, &gc, &gs);
    if (e) return e;
    const double *w = tw ? ml_tensor_data(tw) : NULL, *lse = tl ? ml_tensor_data(tl) : NULL;
    if (n->needs[0]) {
        if (p->nll) e = ml_zeros(&dx, dt, x->ndim, x->shape);
        else e = ml_tensor_empty(&dx, dt, x->ndim, x->shape);
    }
    if (!e && p->prob && n->needs[1]) e = ml_tensor_empty(&dy, dt, x->ndim, x->shape);
    if (!e) {
        const void *gd = gc ? ml_tensor_data(gc) : NULL;
        void *dxd = dx ? ml_tensor_data(dx) : NULL, *dyd = dy ? ml_tensor_data(dy) : NULL;
        if (p->nll) {
            if (dx) (dt == ML_F32 ? nll_bwd_f32 : nll_bwd_f64)(p, ml_tensor_data(t), w, gd, gs, dxd);
        } else if (dt == ML_F32) {
            ce_bwd_f32(p, ml_tensor_data(x), ml_tensor_data(t), w, lse, gd, gs, dxd, dyd);
        } else {
            ce_bwd_f64(p, ml_tensor_data(x), ml_tensor_data(t), w, lse, gd, gs, dxd, dyd);
        }
    }
    ml_tensor_release(gc);
    if (e) { ml_tensor_release(dx); ml_tensor_release(dy); return e; }
    gin[0] = dx;
    gin[1] = dy;
    return ML_OK;
}

static ml_err ce_impl(ml_tensor **out, bool nll, ml_tensor *input, ml_tensor *target, ml_tensor *weight,
                      int64_t ignore_index, double label_smoothing, ml_reduction r) {
    *out = NULL;
    const char *op = nll ? "nll_loss" : "cross_entropy";
    ml_err e = check_reduction(op, r);
    if (!e) e = nn_check_real(op, "input", input);
    if (e) return e;
    if (input->ndim < 1)
        return ml_seterr(ML_ERR_SHAPE, "%s: input must have a class dim ([C] or [N, C, ...]), got shape %s", op,
                         ml_shape_str(input->ndim, input->shape));
    if (!(label_smoothing >= 0 && label_smoothing <= 1))
        return ml_seterr(ML_ERR_ARG, "%s: label_smoothing must be in [0, 1], got %g", op, label_smoothing);
    ce_params p = {.red = r, .nll = nll, .ignore = ignore_index, .ls = label_smoothing, .N = 1, .S = 1};
    int cdim = input->ndim == 1 ? 0 : 1;
    p.C = input->shape[cdim];
    if (input->ndim >= 2) p.N = input->shape[0];
    for (int d = 2; d < input->ndim; d++) p.S *= input->shape[d];
    if (p.C <= 0)
        return ml_seterr(ML_ERR_SHAPE, "%s: input of shape %s has no classes", op, ml_shape_str(input->ndim, input->shape));
    bool tfloat = ml_dtype_is_float((ml_dtype)target->dtype);
    if (tfloat) {
        if (nll || !nn_same_shape(target, input))
            return ml_seterr(ML_ERR_DTYPE, "%s: float target of shape %s needs %s; class-index targets must be integer "
                             "(input shape %s)", op, ml_shape_str(target->ndim, target->shape),
                             nll ? "an integer dtype" : "the input's shape (class probabilities)",
                             ml_shape_str(input->ndim, input->shape));
        if ((e = nn_check_real(op, "target", target))) return e;
        p.prob = true;
    } else if (target->dtype == ML_BOOL) {
        return ml_seterr(ML_ERR_DTYPE, "%s: target must hold class indices (integer) or probabilities (float), got bool",
                         op);
    }
    if (weight) {
        if ((e = nn_check_real(op, "weight", weight))) return e;
        if (weight->ndim != 1 || weight->shape[0] != p.C)
            return ml_seterr(ML_ERR_SHAPE, "%s: weight of shape %s must be [%lld] (one per class, input %s)", op,
                             ml_shape_str(weight->ndim, weight->shape), (long long)p.C,
                             ml_shape_str(input->ndim, input->shape));
    }
    if (ml_tensor_is_cuda(input) && !nll) { /* cross entropy from recorded device ops */
        if ((e = ml_check_same_device(op, 2, (ml_tensor *[]){input, weight}))) return e;
        if (p.prob) {
            if ((e = ml_check_same_device(op, 2, (ml_tensor *[]){input, target}))) return e;
            return ml_cross_entropy_composite(out, input, NULL, target, weight, ignore_index, label_smoothing,
                                              r == ML_REDUCE_NONE ? 0 : r == ML_REDUCE_MEAN ? 1 : 2);
        }
        ml_tensor *th = NULL, *tch = NULL;
        bool prev = ml_set_grad_enabled(false);
        e = ml_to_device(&th, target, ml_cpu()); /* class indices are checked and expanded on the host */
        ml_set_grad_enabled(prev);
        if (!e) e = class_targets(op, input, th, p.C, ignore_index, &tch);
        if (!e)
            e = ml_cross_entropy_composite(out, input, tch, NULL, weight, ignore_index, label_smoothing,
                                           r == ML_REDUCE_NONE ? 0 : r == ML_REDUCE_MEAN ? 1 : 2);
        ml_tensor_release(th);
        ml_tensor_release(tch);
        return e;
    }
    ml_dtype dt = (ml_dtype)input->dtype;
    ml_tensor *xc = NULL, *tc = NULL, *tw = NULL, *tl = NULL, *y = NULL;
    double *loss = NULL, *wt = NULL;
    int64_t npos = p.N * p.S;
    if (p.prob) e = nn_contig_as(&tc, target, dt);
    else e = class_targets(op, input, target, p.C, ignore_index, &tc);
    if (e) return e;
    if ((e = nn_contig(&xc, input))) goto done;
    double *w = NULL;
    if (weight) {
        int64_t C = p.C;
        if ((e = ml_tensor_empty(&tw, ML_F64, 1, &C))) goto done;
        w = ml_tensor_data(tw);
        nn_load_vec(weight, w, C);
        p.has_w = true;
    }
    p.wsum = 0;
    for (int64_t c = 0; c < p.C; c++) p.wsum += w ? w[c] : 1.0;
    if (!nll && (e = ml_tensor_empty(&tl, ML_F64, 1, &npos))) goto done;
    /* cross_entropy reduced to a scalar sums per block inside the kernel: no per-position arrays */
    bool blocks = !nll && r != ML_REDUCE_NONE;
    int64_t nblocks = p.N * ((p.S + CE_BLK - 1) / CE_BLK);
    loss = malloc(sizeof(double) * (size_t)(blocks ? 2 * nblocks + 1 : 2 * npos + 1));
    if (!loss) { e = ml_seterr(ML_ERR_OOM, "%s: out of memory", op); goto done; }
    wt = blocks ? NULL : loss + npos;
    if (nll) {
        if (dt == ML_F32) nll_fwd_f32(&p, ml_tensor_data(xc), ml_tensor_data(tc), w, loss, wt);
        else nll_fwd_f64(&p, ml_tensor_data(xc), ml_tensor_data(tc), w, loss, wt);
    } else if (dt == ML_F32) {
        ce_fwd_f32(&p, ml_tensor_data(xc), ml_tensor_data(tc), w, ml_tensor_data(tl), blocks ? NULL : loss,
                   blocks ? NULL : wt, blocks ? loss : NULL);
    } else {
        ce_fwd_f64(&p, ml_tensor_data(xc), ml_tensor_data(tc), w, ml_tensor_data(tl), blocks ? NULL : loss,
                   blocks ? NULL : wt, blocks ? loss : NULL);
    }
    if (blocks) { /* block sums in block order: deterministic for any thread count */
        double ls = 0, ws = 0;
        for (int64_t b = 0; b < nblocks; b++) {
            ls += loss[2 * b];
            ws += loss[2 * b + 1];
        }
        p.denom = p.prob ? (double)npos : ws;
        if ((e = scalar_out(&y, dt, r == ML_REDUCE_MEAN ? ls / p.denom : ls))) goto done;
    } else if (r == ML_REDUCE_NONE) {
        p.denom = p.prob ? (double)npos : det_sum(wt, npos);
        int64_t oshape[ML_MAX_DIMS];
        int ond = 0;
        if (input->ndim >= 2) {
            oshape[ond++] = p.N;
            for (int d = 2; d < input->ndim; d++) oshape[ond++] = input->shape[d];
        }
        if ((e = nn_from_doubles(&y, dt, ond, oshape, loss))) goto done;
    } else {
        p.denom = p.prob ? (double)npos : det_sum(wt, npos);
        double s = det_sum(loss, npos);
        if ((e = scalar_out(&y, dt, r == ML_REDUCE_MEAN ? s / p.denom : s))) goto done;
    }
    {
        ml_tensor *ins[2] = {input, p.prob ? target : NULL}, *saves[4] = {xc, tc, tw, tl};
        e = nn_record(op, bw_ce, 2, ins, &y, &p, sizeof p, 4, saves);
    }
done:
    free(loss);
    ml_tensor_release(xc); ml_tensor_release(tc); ml_tensor_release(tw); ml_tensor_release(tl);
    if (e) { ml_tensor_release(y); return e; }
    *out = y;
    return ML_OK;
}

ml_err ml_cross_entropy(ml_tensor **out, ml_tensor *input, ml_tensor *target, ml_tensor *weight, int64_t ignore_index,
                        double label_smoothing, ml_reduction r) {
    return ce_impl(out, false, input, target, weight, ignore_index, label_smoothing, r);
}

ml_err ml_nll_loss(ml_tensor **out, ml_tensor *logp, ml_tensor *target, ml_tensor *weight, int64_t ignore_index,
                   ml_reduction r) {
    return ce_impl(out, true, logp, target, weight, ignore_index, 0.0, r);
}

#else /* ------------------------------------------------- type-generic kernels (T, S(name)) */

/* elementwise loss of d = x - y: writes out[i] when out != NULL; when part != NULL also the
 * per-chunk sums part[c] (chunks of NN_CHUNK elements) */
static void S(ew_fwd)(int kind, double beta, const T *x, const T *y, int64_t n, T *out, double *part) {
    int64_t nch = (n + NN_CHUNK - 1) / NN_CHUNK;
    int nt = nn_threads(n, nch);
    T b = (T)beta, hb = (T)(0.5 * beta), ib = beta > 0 ? (T)(0.5 / beta) : (T)0;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t c = 0; c < nch; c++) {
        int64_t lo = c * NN_CHUNK, hi = lo + NN_CHUNK < n ? lo + NN_CHUNK : n;
        double acc = 0;
        for (int64_t i = lo; i < hi; i++) {
            T d = x[i] - y[i], ad = d < 0 ? -d : d, l;
            if (kind == EW_MSE) l = d * d;
            else if (kind == EW_L1) l = ad;
            else l = ad < b ? d * d * ib : ad - hb;
            if (out) out[i] = l;
            acc += (double)l;
        }
        if (part) part[c] = acc;
    }
}

static void S(ew_bwd)(int kind, double beta, const T *x, const T *y, const T *g, double gs, int64_t n, T *dx, T *dy) {
    int nt = nn_threads(n, n);
    T b = (T)beta, ib = beta > 0 ? (T)(1.0 / beta) : (T)0, tgs = (T)gs;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t i = 0; i < n; i++) {
        T d = x[i] - y[i], ad = d < 0 ? -d : d, sg = (T)((d > 0) - (d < 0)), dl;
        if (kind == EW_MSE) dl = 2 * d;
        else if (kind == EW_L1) dl = sg;
        else dl = ad < b ? d * ib : sg;
        T gv = (g ? g[i] : tgs) * dl;
        if (dx) dx[i] = gv;
        if (dy) dy[i] = -gv;
    }
}

#define BCE_BLK 256

/* e[k] = exp(-|x|), sp[k] = softplus(-x) = log1p(exp(-|x|)) + max(-x, 0) for k < n <= BCE_BLK */
static inline void S(bce_sp)(const T *x, int64_t n, T *e, T *sp) {
#pragma omp simd
    for (int64_t k = 0; k < n; k++) e[k] = x[k] < 0 ? x[k] : -x[k];
    VEXP(e, n);
    memcpy(sp, e, sizeof(T) * (size_t)n);
    VLOG1P01(sp, n);
#pragma omp simd
    for (int64_t k = 0; k < n; k++) sp[k] += x[k] < 0 ? -x[k] : (T)0;
}

static void S(bce_fwd)(const T *x, const T *y, const T *w, const T *pw, int64_t n, T *out, double *part) {
    int64_t nch = (n + NN_CHUNK - 1) / NN_CHUNK;
    int nt = nn_threads(n * 8, nch);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t c = 0; c < nch; c++) {
        int64_t lo = c * NN_CHUNK, hi = lo + NN_CHUNK < n ? lo + NN_CHUNK : n;
        double acc = 0;
        T e[BCE_BLK], sp[BCE_BLK], l[BCE_BLK];
        for (int64_t b0 = lo; b0 < hi; b0 += BCE_BLK) {
            int64_t bn = hi - b0 < BCE_BLK ? hi - b0 : BCE_BLK;
            S(bce_sp)(x + b0, bn, e, sp);
            const T *xb = x + b0, *yb = y + b0;
            if (pw) {
                const T *pb = pw + b0;
#pragma omp simd
                for (int64_t k = 0; k < bn; k++) l[k] = ((T)1 - yb[k]) * xb[k] + ((T)1 + (pb[k] - (T)1) * yb[k]) * sp[k];
            } else {
#pragma omp simd
                for (int64_t k = 0; k < bn; k++) l[k] = ((T)1 - yb[k]) * xb[k] + sp[k];
            }
            if (w) {
#pragma omp simd
                for (int64_t k = 0; k < bn; k++) l[k] *= w[b0 + k];
            }
            if (out) memcpy(out + b0, l, sizeof(T) * (size_t)bn);
#pragma omp simd reduction(+ : acc)
            for (int64_t k = 0; k < bn; k++) acc += (double)l[k];
        }
        if (part) part[c] = acc;
    }
}

/* d[0]: input, d[1]: target, d[2]: weight, d[3]: pos_weight (full size; NULL when not needed) */
static void S(bce_bwd)(const T *x, const T *y, const T *w, const T *pw, const T *g, double gs, int64_t n, void *const *d) {
    T *dx = d[0], *dy = d[1], *dw = d[2], *dpw = d[3];
    T tgs = (T)gs;
    int64_t nb = (n + BCE_BLK - 1) / BCE_BLK;
    int nt = nn_threads(n * 8, nb);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t bi = 0; bi < nb; bi++) {
        int64_t b0 = bi * BCE_BLK, bn = n - b0 < BCE_BLK ? n - b0 : BCE_BLK;
        T e[BCE_BLK], sp[BCE_BLK];
        S(bce_sp)(x + b0, bn, e, sp);
#pragma omp simd
        for (int64_t k = 0; k < bn; k++) {
            int64_t i = b0 + k;
            T xv = x[i], yv = y[i], pwv = pw ? pw[i] : (T)1, lw = (T)1 + (pwv - (T)1) * yv;
            T wv = w ? w[i] : (T)1, gv = g ? g[i] : tgs;
            /* sigmoid(-x) from e = exp(-|x|) */
            T sn = (xv >= 0 ? e[k] : (T)1) / ((T)1 + e[k]);
            if (dx) dx[i] = gv * wv * (((T)1 - yv) - lw * sn);
            if (dy) dy[i] = gv * wv * (-xv + (pwv - (T)1) * sp[k]);
            if (dw) dw[i] = gv * (((T)1 - yv) * xv + lw * sp[k]);
            if (dpw) dpw[i] = gv * wv * yv * sp[k];
        }
    }
}

/* cross_entropy forward over positions (n, s), tasks of CE_BLK positions along s so the loops over
 * a block vectorize. Writes lse[pos], loss[pos] and the mean weight wt[pos]. */
/* per position: lse (log-sum-exp), and loss/wt when those arrays are given; acc (if given) gets each
 * block's loss and weight sums [2 per block, blocks in order], so a reduction needs no per-position arrays */
static void S(ce_fwd)(const ce_params *p, const T *x, const void *tgt, const double *w, double *lse, double *loss,
                      double *wt, double *acc) {
    int64_t C = p->C, Sz = p->S, nblk = (Sz + CE_BLK - 1) / CE_BLK, tasks = p->N * nblk;
    const int64_t *ti = p->prob ? NULL : tgt;
    const T *tp = p->prob ? tgt : NULL;
    double ls = p->ls, lsc = ls / (double)C;
    bool smooth = !p->prob && ls > 0;
    int nt = nn_threads(p->N * C * Sz * 4, tasks);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t n = t / nblk, lo = (t % nblk) * CE_BLK, hi = lo + CE_BLK < Sz ? lo + CE_BLK : Sz, bw = hi - lo;
        const T *xb = x + n * C * Sz + lo;
        const T *yb = tp ? tp + n * C * Sz + lo : NULL;
        T m[CE_BLK];
        double s[CE_BLK], a1[CE_BLK], a2[CE_BLK];
        for (int64_t j = 0; j < bw; j++) { m[j] = -INFINITY; s[j] = 0; a1[j] = 0; a2[j] = 0; }
        for (int64_t c = 0; c < C; c++) {
            const T *xr = xb + c * Sz;
#pragma omp simd
            for (int64_t j = 0; j < bw; j++) m[j] = xr[j] > m[j] ? xr[j] : m[j];
        }
        for (int64_t c = 0; c < C; c++) {
            const T *xr = xb + c * Sz;
            double wc = w ? w[c] : 1.0;
            T ev[CE_BLK];
#pragma omp simd
            for (int64_t j = 0; j < bw; j++) ev[j] = xr[j] - m[j];
            VEXP(ev, bw);
#pragma omp simd
            for (int64_t j = 0; j < bw; j++) s[j] += (double)ev[j];
            if (smooth) { /* a1 = sum_c w_c x_c */
#pragma omp simd
                for (int64_t j = 0; j < bw; j++) a1[j] += wc * (double)xr[j];
            } else if (yb) { /* a1 = sum_c w_c y'_c x_c, a2 = sum_c w_c y'_c */
                const T *yr = yb + c * Sz;
#pragma omp simd
                for (int64_t j = 0; j < bw; j++) {
                    double wy = wc * ((double)yr[j] * (1.0 - ls) + lsc);
                    a1[j] += wy * (double)xr[j];
                    a2[j] += wy;
                }
            }
        }
        double lsum = 0, wsum = 0;
#if CE_FLOAT_LOG /* f32: log of the sums in float, vectorized (s in [1, C] unless inputs are inf/nan) */
        float lg[CE_BLK];
        nn_vlogf_of(lg, s, bw);
#define CE_LOG(j) (s[j] >= 1 && s[j] < 1e30 ? (double)lg[j] : log(s[j]))
#else
#define CE_LOG(j) log(s[j])
#endif
        for (int64_t j = 0; j < bw; j++) {
            int64_t pos = n * Sz + lo + j;
            double l = (double)m[j] + CE_LOG(j), v, wtg;
#undef CE_LOG
            lse[pos] = l;
            if (yb) {
                v = -(a1[j] - l * a2[j]);
                wtg = 1;
            } else {
                int64_t tg = ti[pos];
                if (tg == p->ignore) {
                    v = 0;
                    wtg = 0;
                } else {
                    wtg = w ? w[tg] : 1.0;
                    v = (1.0 - ls) * (-wtg * ((double)xb[tg * Sz + j] - l));
                    if (smooth) v -= lsc * (a1[j] - l * p->wsum);
                }
            }
            if (loss) {
                loss[pos] = v;
                wt[pos] = wtg;
            }
            lsum += v;
            wsum += wtg;
        }
        if (acc) {
            acc[2 * t] = lsum;
            acc[2 * t + 1] = wsum;
        }
    }
}

static void S(ce_bwd)(const ce_params *p, const T *x, const void *tgt, const double *w, const double *lse, const void *vg,
                      double gs, void *vdx, void *vdy) {
    const T *g = vg;
    T *dx = vdx, *dy = vdy;
    int64_t C = p->C, Sz = p->S, nblk = (Sz + CE_BLK - 1) / CE_BLK, tasks = p->N * nblk;
    const int64_t *ti = p->prob ? NULL : tgt;
    const T *tp = p->prob ? tgt : NULL;
    double ls = p->ls, lsc = ls / (double)C;
    int nt = nn_threads(p->N * C * Sz * 4, tasks);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t n = t / nblk, lo = (t % nblk) * CE_BLK, hi = lo + CE_BLK < Sz ? lo + CE_BLK : Sz, bw = hi - lo;
        int64_t off = n * C * Sz + lo;
        const T *xb = x + off;
        T l[CE_BLK], a[CE_BLK], bt[CE_BLK], cw[CE_BLK];
        int64_t tg[CE_BLK];
        for (int64_t j = 0; j < bw; j++) {
            int64_t pos = n * Sz + lo + j;
            double gv = g ? (double)g[pos] : gs;
            l[j] = (T)lse[pos];
            if (tp) {
                /* dx_c = gv*(p_c*sum_k w_k y'_k - w_c y'_c): a = gv*sum, cw = gv */
                double swy = 0;
                for (int64_t c = 0; c < C; c++) swy += (w ? w[c] : 1.0) * ((double)tp[off + c * Sz + j] * (1.0 - ls) + lsc);
                a[j] = (T)(gv * swy);
                cw[j] = (T)gv;
                bt[j] = 0;
                tg[j] = -1;
                continue;
            }
            int64_t tt = ti[pos];
            if (tt == p->ignore) { a[j] = 0; bt[j] = 0; cw[j] = 0; tg[j] = -1; continue; }
            double wt = w ? w[tt] : 1.0;
            /* dx_c = gv*(p_c*((1-ls)*w_t + lsc*wsum) - lsc*w_c - [c == t]*(1-ls)*w_t) */
            a[j] = (T)(gv * ((1.0 - ls) * wt + lsc * p->wsum));
            bt[j] = (T)(gv * (1.0 - ls) * wt);
            cw[j] = (T)(gv * lsc);
            tg[j] = tt;
        }
        for (int64_t c = 0; c < C; c++) {
            const T *xr = xb + c * Sz;
            T wc = (T)(w ? w[c] : 1.0);
            if (dx) {
                T *dr = dx + off + c * Sz;
#pragma omp simd
                for (int64_t j = 0; j < bw; j++) dr[j] = xr[j] - l[j];
                VEXP(dr, bw);
                if (tp) {
                    const T *yr = tp + off + c * Sz;
                    T keep = (T)(1.0 - ls), add = (T)lsc;
#pragma omp simd
                    for (int64_t j = 0; j < bw; j++) dr[j] = a[j] * dr[j] - cw[j] * wc * (yr[j] * keep + add);
                } else {
                    T cwc[CE_BLK];
#pragma omp simd
                    for (int64_t j = 0; j < bw; j++) cwc[j] = tg[j] == c ? bt[j] : (T)0;
#pragma omp simd
                    for (int64_t j = 0; j < bw; j++) dr[j] = a[j] * dr[j] - cw[j] * wc - cwc[j];
                }
            }
            if (dy) {
                T *dr = dy + off + c * Sz;
                T f = (T)(-(1.0 - ls)) * wc;
#pragma omp simd
                for (int64_t j = 0; j < bw; j++) dr[j] = cw[j] * f * (xr[j] - l[j]);
            }
        }
    }
}

static void S(nll_fwd)(const ce_params *p, const T *x, const int64_t *ti, const double *w, double *loss, double *wt) {
    int64_t C = p->C, Sz = p->S, npos = p->N * Sz;
    int nt = nn_threads(npos, npos);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t pos = 0; pos < npos; pos++) {
        int64_t n = pos / Sz, s = pos % Sz, tg = ti[pos];
        if (tg == p->ignore) { loss[pos] = 0; wt[pos] = 0; continue; }
        double wv = w ? w[tg] : 1.0;
        loss[pos] = -wv * (double)x[(n * C + tg) * Sz + s];
        wt[pos] = wv;
    }
}

/* dx must be zero-filled */
static void S(nll_bwd)(const ce_params *p, const int64_t *ti, const double *w, const void *vg, double gs, void *vdx) {
    const T *g = vg;
    T *dx = vdx;
    int64_t C = p->C, Sz = p->S, npos = p->N * Sz;
    int nt = nn_threads(npos, npos);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t pos = 0; pos < npos; pos++) {
        int64_t n = pos / Sz, s = pos % Sz, tg = ti[pos];
        if (tg == p->ignore) continue;
        double gv = g ? (double)g[pos] : gs;
        dx[(n * C + tg) * Sz + s] = (T)(-gv * (w ? w[tg] : 1.0));
    }
}

#endif
