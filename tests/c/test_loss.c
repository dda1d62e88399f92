/* Loss tests: mse, l1, smooth_l1, bce_with_logits, cross_entropy (class indices with weights,
 * ignore_index, label smoothing; probabilities), nll_loss.
 * Hand-computed values, outputs and gradients against PyTorch 1.13 reference values (loss_ref.inc)
 * in f64 and f32, f64 finite-difference gradient checks for every differentiable argument and
 * reduction, thread-count independence, argument errors. */
#include "ml_test.h"
#include "nn/ml_nn.h"
#include "tensor/ml_iter.h"
#include <time.h>

#include "loss_ref.inc"

static uint64_t g_seed;

enum { L_MSE, L_L1, L_SL1, L_BCE, L_CE, L_NLL };
typedef struct {
    int op;
    ml_reduction red;
    double beta, ls;
    ml_tensor *target; /* class indices (ce with int targets, nll) */
    ml_tensor *cw;     /* class weights */
    int64_t ignore;
} loss_ud;

static ml_err f_loss(ml_tensor **out, ml_tensor **in, void *ud) {
    loss_ud *u = ud;
    switch (u->op) {
    case L_MSE: return ml_mse_loss(out, in[0], in[1], u->red);
    case L_L1: return ml_l1_loss(out, in[0], in[1], u->red);
    case L_SL1: return ml_smooth_l1_loss(out, in[0], in[1], u->beta, u->red);
    case L_BCE: return ml_bce_with_logits(out, in[0], in[1], in[2], in[3], u->red);
    case L_CE: return ml_cross_entropy(out, in[0], u->target ? u->target : in[1], u->cw, u->ignore, u->ls, u->red);
    default: return ml_nll_loss(out, in[0], u->target, u->cw, u->ignore, u->red);
    }
}

static ml_tensor *det(int ndim, const int64_t *shape, double a, double b, double s, double off, bool rg) {
    ml_tensor *t = NULL;
    ml_tensor_empty(&t, ML_F64, ndim, shape);
    int64_t n = ml_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) ((double *)ml_tensor_data(t))[i] = s * sin(a * (double)i + b) + off;
    if (rg) ml_set_requires_grad(t, true);
    return t;
}
/* class targets (7i+3) % C, every k-th (i % k == 2) set to -100 */
static ml_tensor *tin(int ndim, const int64_t *shape, int64_t C, int k) {
    ml_tensor *t = NULL;
    ml_tensor_empty(&t, ML_I64, ndim, shape);
    int64_t n = ml_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) ((int64_t *)ml_tensor_data(t))[i] = (k && i % k == 2) ? -100 : (7 * i + 3) % C;
    return t;
}
static ml_tensor *vec(int64_t n, const double *v) {
    ml_tensor *t = NULL;
    ml_tensor_from_data(&t, ML_F64, 1, &n, v);
    return t;
}
static ml_tensor *as32(ml_tensor *t, bool rg) {
    ml_tensor *o = NULL;
    bool prev = ml_set_grad_enabled(false);
    ml_to_dtype(&o, t, ML_F32);
    ml_set_grad_enabled(prev);
    if (rg) ml_set_requires_grad(o, true);
    return o;
}

static double maxdiff_ref(const ml_tensor *t, const double *ref, int64_t nref) {
    if (ml_tensor_numel(t) != nref) return INFINITY;
    int64_t idx[ML_MAX_DIMS] = {0};
    double m = 0;
    for (int64_t k = 0; k < nref; k++) {
        double d = fabs(ml_tensor_get(t, idx) - ref[k]) / fmax(1.0, fabs(ref[k]));
        if (isnan(d)) return INFINITY;
        if (d > m) m = d;
        ml_t_next_index(t->ndim, t->shape, idx);
    }
    return m;
}

/* inputs in64 (f64, borrowed); grefs[k] is the reference gradient of the k-th input that requires grad */
static void check_ref(const char *name, loss_ud *u, int nin, ml_tensor **in64, const double *oref, int64_t nout, int ondim,
                      const int64_t *oshape, const double *const *grefs, const int64_t *ngref) {
    for (int pass = 0; pass < 2; pass++) {
        double tol_o = pass ? 2e-6 : 1e-10, tol_g = pass ? 2e-6 : 1e-10;
        ml_tensor *in[4] = {0}, *y = NULL, *r = NULL;
        for (int i = 0; i < nin; i++) {
            if (!in64[i]) continue;
            if (pass) in[i] = as32(in64[i], in64[i]->requires_grad);
            else { in[i] = in64[i]; ml_tensor_retain(in[i]); }
        }
        ml_err e = f_loss(&y, in, u);
        if (e) {
            ML_FAIL_("%s (pass %d): %s", name, pass, ml_errmsg());
        } else {
            bool ok = y->ndim == ondim && y->dtype == (pass ? ML_F32 : ML_F64);
            for (int d = 0; ok && d < ondim; d++) ok = y->shape[d] == oshape[d];
            if (!ok) ML_FAIL_("%s: output shape %s dtype %s", name, ml_shape_str(y->ndim, y->shape), ml_dtype_name((ml_dtype)y->dtype));
            double d = maxdiff_ref(y, oref, nout);
            if (!(d <= tol_o)) ML_FAIL_("%s (%s): output differs from PyTorch by %g (rel)", name, pass ? "f32" : "f64", d);
            ml_dtype dt = (ml_dtype)y->dtype;
            ML_CHECK_OK(ml_tensor_empty(&r, dt, y->ndim, y->shape));
            for (int64_t i = 0; i < nout; i++) ml_store_elem(ml_tensor_data(r), dt, i, cos(0.23 * (double)i));
            ML_CHECK_OK(ml_backward(y, r, false));
            int k = 0;
            for (int i = 0; i < nin; i++) {
                if (!in[i] || !in[i]->requires_grad || !grefs[k]) { if (in[i] && in[i]->requires_grad) k++; continue; }
                double dg = in[i]->grad ? maxdiff_ref(in[i]->grad, grefs[k], ngref[k]) : INFINITY;
                if (!(dg <= tol_g)) ML_FAIL_("%s (%s): gradient of input %d differs from PyTorch by %g (rel)", name, pass ? "f32" : "f64", i, dg);
                k++;
            }
        }
        ml_tensor_release(y);
        ml_tensor_release(r);
        for (int i = 0; i < nin; i++) {
            if (in64[i]) { ml_tensor_release(in64[i]->grad); in64[i]->grad = NULL; }
            ml_tensor_release(in[i]);
        }
    }
}

#define N_(a) ((int64_t)(sizeof(a) / sizeof(a[0])))
#define REF(name, u, nin, in, ...)                                                                              \
    do {                                                                                                         \
        const double *g_[] = {__VA_ARGS__};                                                                      \
        int64_t ng_[] = {N_(name##_g0), N_(name##_g1)};                                                          \
        check_ref(#name, &(u), nin, in, name##_out, N_(name##_out), name##_ondim, name##_oshape, g_, ng_);       \
    } while (0)
/* the _g1 symbol is needed by the macro even with one gradient */
#define REF1(name, u, nin, in)                                                                                  \
    do {                                                                                                         \
        const double *g_[] = {name##_g0, NULL, NULL, NULL};                                                      \
        int64_t ng_[] = {N_(name##_g0)};                                                                         \
        check_ref(#name, &(u), nin, in, name##_out, N_(name##_out), name##_ondim, name##_oshape, g_, ng_);       \
    } while (0)

/* --------------------------------------------------------------------- hand values */
ML_TEST(loss_hand_values) {
    double xv[] = {1, -2, 3, 0.5}, yv[] = {0, 0, 1, 2};
    ml_tensor *x = vec(4, xv), *y = vec(4, yv), *o;
    ML_CHECK_OK(ml_mse_loss(&o, x, y, ML_REDUCE_MEAN));
    ML_CHECK(o->ndim == 0);
    ML_CHECK_NEAR(ml_tensor_item(o), (1 + 4 + 4 + 2.25) / 4, 1e-15);
    ml_tensor_release(o);
    ML_CHECK_OK(ml_l1_loss(&o, x, y, ML_REDUCE_SUM));
    ML_CHECK_NEAR(ml_tensor_item(o), 1 + 2 + 2 + 1.5, 1e-15);
    ml_tensor_release(o);
    ML_CHECK_OK(ml_smooth_l1_loss(&o, x, y, 1.0, ML_REDUCE_NONE));
    ML_CHECK_NEAR(ml_tensor_get(o, (int64_t[]){0}), 0.5, 1e-15);
    ML_CHECK_NEAR(ml_tensor_get(o, (int64_t[]){1}), 1.5, 1e-15);
    ML_CHECK_NEAR(ml_tensor_get(o, (int64_t[]){3}), 1.0, 1e-15);
    ml_tensor_release(o);
    /* beta = 0 is l1 */
    ML_CHECK_OK(ml_smooth_l1_loss(&o, x, y, 0.0, ML_REDUCE_SUM));
    ML_CHECK_NEAR(ml_tensor_item(o), 6.5, 1e-15);
    ml_tensor_release(o);
    /* bce_with_logits: large logits stay finite */
    double bx[] = {100, -100, 0, 2}, by[] = {0, 1, 0.5, 1};
    ml_tensor *bxt = vec(4, bx), *byt = vec(4, by);
    ML_CHECK_OK(ml_bce_with_logits(&o, bxt, byt, NULL, NULL, ML_REDUCE_NONE));
    ML_CHECK_NEAR(ml_tensor_get(o, (int64_t[]){0}), 100, 1e-12);
    ML_CHECK_NEAR(ml_tensor_get(o, (int64_t[]){1}), 100, 1e-12);
    ML_CHECK_NEAR(ml_tensor_get(o, (int64_t[]){2}), log(2), 1e-15);
    ML_CHECK_NEAR(ml_tensor_get(o, (int64_t[]){3}), log1p(exp(-2)), 1e-15);
    ml_tensor_release(o);
    /* cross_entropy with ignore_index and class weights:
     * logits [[0, 0], [ln 3, 0], [1, 2]], targets [0, 1, -100], weights [1, 3]
     * losses: ln 2 (w 1), 3*ln 4 (w 3), ignored; mean = (ln 2 + 3 ln 4) / 4 */
    double cx[] = {0, 0, log(3), 0, 1, 2};
    ml_tensor *ct = NULL, *cxt = NULL, *cw = vec(2, (double[]){1, 3});
    ML_CHECK_OK(ml_tensor_from_data(&cxt, ML_F64, 2, (int64_t[]){3, 2}, cx));
    ML_CHECK_OK(ml_tensor_from_data(&ct, ML_I64, 1, (int64_t[]){3}, (int64_t[]){0, 1, -100}));
    ML_CHECK_OK(ml_cross_entropy(&o, cxt, ct, cw, -100, 0, ML_REDUCE_MEAN));
    ML_CHECK_NEAR(ml_tensor_item(o), (log(2) + 3 * log(4)) / 4, 1e-14);
    ml_tensor_release(o);
    ML_CHECK_OK(ml_cross_entropy(&o, cxt, ct, cw, -100, 0, ML_REDUCE_NONE));
    ML_CHECK(o->ndim == 1 && o->shape[0] == 3);
    ML_CHECK_NEAR(ml_tensor_get(o, (int64_t[]){2}), 0, 0);
    ML_CHECK_NEAR(ml_tensor_get(o, (int64_t[]){1}), 3 * log(4), 1e-14);
    ml_tensor_release(o);
    /* label smoothing 0.2, no weight, sample 0: 0.8*ln2 + 0.1*(ln2 + ln2) */
    ML_CHECK_OK(ml_cross_entropy(&o, cxt, ct, NULL, -100, 0.2, ML_REDUCE_NONE));
    ML_CHECK_NEAR(ml_tensor_get(o, (int64_t[]){0}), log(2), 1e-14);
    ml_tensor_release(o);
    /* all targets ignored: mean is nan (0/0) like PyTorch */
    ml_tensor *ci = NULL;
    ML_CHECK_OK(ml_tensor_from_data(&ci, ML_I32, 1, (int64_t[]){3}, (int32_t[]){-1, -1, -1}));
    ML_CHECK_OK(ml_cross_entropy(&o, cxt, ci, NULL, -1, 0, ML_REDUCE_MEAN));
    ML_CHECK(isnan(ml_tensor_item(o)));
    ml_tensor_release(o);
    /* nll_loss picks -logp[t] */
    ML_CHECK_OK(ml_nll_loss(&o, cxt, ct, NULL, -100, ML_REDUCE_SUM));
    ML_CHECK_NEAR(ml_tensor_item(o), -(0 + 0), 0);
    ml_tensor_release(o);
    ml_tensor_release(ci); ml_tensor_release(cxt); ml_tensor_release(ct); ml_tensor_release(cw);
    ml_tensor_release(bxt); ml_tensor_release(byt);
    ml_tensor_release(x); ml_tensor_release(y);
}

/* --------------------------------------------------------------------- vs PyTorch */
ML_TEST(elementwise_losses_vs_pytorch) {
    ml_tensor *X = det(2, (int64_t[]){3, 4}, 0.37, 0.1, 2, 0, true), *Y = det(2, (int64_t[]){3, 4}, 0.53, 0.7, 1.5, 0, true);
    ml_tensor *Yb = det(2, (int64_t[]){3, 1}, 0.53, 0.7, 1.5, 0, true);
    ml_tensor *in[2] = {X, Y};
    loss_ud u = {0};
#define EW3(nm, op_, beta_)                                                             \
    u = (loss_ud){.op = op_, .beta = beta_, .red = ML_REDUCE_NONE}; REF(nm##_none, u, 2, in, nm##_none_g0, nm##_none_g1); \
    u.red = ML_REDUCE_MEAN; REF(nm##_mean, u, 2, in, nm##_mean_g0, nm##_mean_g1);         \
    u.red = ML_REDUCE_SUM; REF(nm##_sum, u, 2, in, nm##_sum_g0, nm##_sum_g1);
    EW3(mse, L_MSE, 0)
    EW3(l1, L_L1, 0)
    EW3(sl1, L_SL1, 1.0)
    EW3(sl1b, L_SL1, 0.5)
#undef EW3
    ml_tensor *inb[2] = {X, Yb};
    u = (loss_ud){.op = L_MSE, .red = ML_REDUCE_MEAN};
    REF(mse_bcast, u, 2, inb, mse_bcast_g0, mse_bcast_g1);
    ml_tensor_release(X); ml_tensor_release(Y); ml_tensor_release(Yb);
}

ML_TEST(bce_vs_pytorch) {
    ml_tensor *X = det(2, (int64_t[]){3, 4}, 0.37, 0.1, 6, 0, true), *Y = det(2, (int64_t[]){3, 4}, 0.91, 0.2, 0.5, 0.5, true);
    ml_tensor *W = det(1, (int64_t[]){4}, 0.3, 1.0, 0.5, 1.0, false), *PW = det(1, (int64_t[]){4}, 0.8, 0.4, 1.0, 1.5, false);
    ml_tensor *in[4] = {X, Y, NULL, NULL}, *inw[4] = {X, Y, W, PW}, *inp[4] = {X, Y, NULL, PW};
    loss_ud u = {.op = L_BCE};
    u.red = ML_REDUCE_NONE; REF(bce_none, u, 4, in, bce_none_g0, bce_none_g1); REF(bcew_none, u, 4, inw, bcew_none_g0, bcew_none_g1);
    u.red = ML_REDUCE_MEAN; REF(bce_mean, u, 4, in, bce_mean_g0, bce_mean_g1); REF(bcew_mean, u, 4, inw, bcew_mean_g0, bcew_mean_g1);
    u.red = ML_REDUCE_SUM; REF(bce_sum, u, 4, in, bce_sum_g0, bce_sum_g1); REF(bcew_sum, u, 4, inw, bcew_sum_g0, bcew_sum_g1);
    u.red = ML_REDUCE_MEAN; REF(bcepw, u, 4, inp, bcepw_g0, bcepw_g1);
    ml_tensor_release(X); ml_tensor_release(Y); ml_tensor_release(W); ml_tensor_release(PW);
}

ML_TEST(cross_entropy_vs_pytorch) {
    ml_tensor *X2 = det(2, (int64_t[]){5, 4}, 0.37, 0.1, 2, 0, true), *T2 = tin(1, (int64_t[]){5}, 4, 3),
              *T2n = tin(1, (int64_t[]){5}, 4, 0);
    ml_tensor *CW = vec(4, (double[]){0.5, 1.0, 2.0, 1.5}), *CW3 = vec(3, (double[]){0.7, 1.3, 2.0});
    ml_tensor *in[1] = {X2};
    loss_ud u = {.op = L_CE, .ignore = -100};
    ml_reduction reds[3] = {ML_REDUCE_NONE, ML_REDUCE_MEAN, ML_REDUCE_SUM};
    for (int ri = 0; ri < 3; ri++) {
        u.red = reds[ri];
        u.target = T2n; u.cw = NULL; u.ls = 0;
        if (ri == 0) REF1(ce_none, u, 1, in); else if (ri == 1) REF1(ce_mean, u, 1, in); else REF1(ce_sum, u, 1, in);
        u.target = T2; u.cw = CW;
        if (ri == 0) REF1(cewi_none, u, 1, in); else if (ri == 1) REF1(cewi_mean, u, 1, in); else REF1(cewi_sum, u, 1, in);
        u.ls = 0.2;
        if (ri == 0) REF1(cewils_none, u, 1, in); else if (ri == 1) REF1(cewils_mean, u, 1, in); else REF1(cewils_sum, u, 1, in);
        u.cw = NULL; u.ls = 0.1;
        if (ri == 0) REF1(cels_none, u, 1, in); else if (ri == 1) REF1(cels_mean, u, 1, in); else REF1(cels_sum, u, 1, in);
    }
    /* spatial [2, 3, 2, 3] with weights, ignore and label smoothing */
    ml_tensor *X4 = det(4, (int64_t[]){2, 3, 2, 3}, 0.37, 0.1, 2, 0, true), *T4 = tin(3, (int64_t[]){2, 2, 3}, 3, 4);
    in[0] = X4;
    u = (loss_ud){.op = L_CE, .ignore = -100, .target = T4, .cw = CW3, .ls = 0.15};
    u.red = ML_REDUCE_NONE; REF1(ce4_none, u, 1, in);
    u.red = ML_REDUCE_MEAN; REF1(ce4_mean, u, 1, in);
    u.red = ML_REDUCE_SUM; REF1(ce4_sum, u, 1, in);
    /* unbatched [C] with a 0-d target */
    ml_tensor *X1 = det(1, (int64_t[]){4}, 0.37, 0.1, 2, 0, true), *T0 = NULL;
    ML_CHECK_OK(ml_tensor_from_data(&T0, ML_I64, 0, NULL, (int64_t[]){2}));
    in[0] = X1;
    u = (loss_ud){.op = L_CE, .ignore = -100, .target = T0, .red = ML_REDUCE_MEAN};
    REF1(ce1d, u, 1, in);
    /* probability targets */
    ml_tensor *Z = det(4, (int64_t[]){2, 3, 2, 3}, 0.41, 0.9, 2, 0, false), *P4 = NULL;
    ML_CHECK_OK(ml_softmax(&P4, Z, 1));
    ml_set_requires_grad(P4, true);
    ml_tensor *inp[2] = {X4, P4};
    u = (loss_ud){.op = L_CE, .ignore = -100, .cw = CW3, .ls = 0.1};
    u.red = ML_REDUCE_NONE; REF(cep_none, u, 2, inp, cep_none_g0, cep_none_g1);
    u.red = ML_REDUCE_MEAN; REF(cep_mean, u, 2, inp, cep_mean_g0, cep_mean_g1);
    u.red = ML_REDUCE_SUM; REF(cep_sum, u, 2, inp, cep_sum_g0, cep_sum_g1);
    /* nll */
    in[0] = X4;
    u = (loss_ud){.op = L_NLL, .ignore = -100, .target = T4, .cw = CW3};
    u.red = ML_REDUCE_NONE; REF1(nll_none, u, 1, in);
    u.red = ML_REDUCE_MEAN; REF1(nll_mean, u, 1, in);
    u.red = ML_REDUCE_SUM; REF1(nll_sum, u, 1, in);
    ml_tensor *rel[] = {X2, T2, T2n, CW, CW3, X4, T4, X1, T0, Z, P4};
    for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) ml_tensor_release(rel[i]);
}

/* --------------------------------------------------------------------- gradchecks */
ML_TEST(loss_gradcheck) {
    printf("  seed %llu\n", (unsigned long long)g_seed);
    char what[128];
    ml_reduction reds[3] = {ML_REDUCE_NONE, ML_REDUCE_MEAN, ML_REDUCE_SUM};
    int64_t shapes[][4] = {{7, 1, 1, 1}, {3, 4, 1, 1}, {2, 3, 2, 2}};
    int ranks[] = {1, 2, 4};
    for (int si = 0; si < 3; si++) {
        for (int ri = 0; ri < 3; ri++) {
            ml_tensor *in[4] = {ml_t_randn(ranks[si], shapes[si], true), ml_t_randn(ranks[si], shapes[si], true)};
            /* keep |x - y| away from the kinks of l1 / smooth_l1 */
            double *a = ml_tensor_data(in[0]), *b = ml_tensor_data(in[1]);
            for (int64_t i = 0; i < ml_tensor_numel(in[0]); i++)
                if (fabs(fabs(a[i] - b[i]) - 0.7) < 1e-3 || fabs(a[i] - b[i]) < 1e-3) a[i] += 0.01;
            int ops[] = {L_MSE, L_L1, L_SL1};
            for (int oi = 0; oi < 3; oi++) {
                loss_ud u = {.op = ops[oi], .red = reds[ri], .beta = 0.7};
                snprintf(what, sizeof what, "loss op %d %s red %d", ops[oi], ml_shape_str(ranks[si], shapes[si]), ri);
                ml_gradcheck(what, f_loss, 2, in, &u, 1e-6, 1e-8, 1e-6);
            }
            /* bce: target probabilities in [0,1], weight and pos_weight broadcast along the last dim */
            ml_tensor *y = NULL;
            ML_CHECK_OK(ml_rand(&y, ML_F64, ranks[si], shapes[si]));
            ml_set_requires_grad(y, true);
            int64_t last = shapes[si][ranks[si] - 1];
            ml_tensor *w = ml_t_randn(1, &last, true), *pw = NULL;
            ML_CHECK_OK(ml_rand(&pw, ML_F64, 1, &last));
            double *pwd = ml_tensor_data(pw);
            for (int64_t i = 0; i < last; i++) pwd[i] = 0.5 + 2 * pwd[i];
            ml_set_requires_grad(pw, true);
            ml_tensor *bin[4] = {in[0], y, w, pw};
            loss_ud ub = {.op = L_BCE, .red = reds[ri]};
            snprintf(what, sizeof what, "bce_with_logits w+pw %s red %d", ml_shape_str(ranks[si], shapes[si]), ri);
            ml_gradcheck(what, f_loss, 4, bin, &ub, 1e-6, 1e-8, 1e-6);
            ml_tensor *bin2[4] = {in[0], y, NULL, NULL};
            snprintf(what, sizeof what, "bce_with_logits %s red %d", ml_shape_str(ranks[si], shapes[si]), ri);
            ml_gradcheck(what, f_loss, 4, bin2, &ub, 1e-6, 1e-8, 1e-6);
            ml_tensor_release(y); ml_tensor_release(w); ml_tensor_release(pw);
            ml_tensor_release(in[0]); ml_tensor_release(in[1]);
        }
    }
    /* weight with a leading broadcast dim: [1, 4] against [3, 4] */
    {
        ml_tensor *x = ml_t_randn(2, (int64_t[]){3, 4}, true), *y = NULL, *w = ml_t_randn(2, (int64_t[]){1, 4}, true);
        ML_CHECK_OK(ml_rand(&y, ML_F64, 2, (int64_t[]){3, 4}));
        ml_tensor *bin[4] = {x, y, w, NULL};
        loss_ud ub = {.op = L_BCE, .red = ML_REDUCE_MEAN};
        ml_gradcheck("bce_with_logits weight [1,4]", f_loss, 4, bin, &ub, 1e-6, 1e-8, 1e-6);
        ml_tensor_release(x); ml_tensor_release(y); ml_tensor_release(w);
    }
    /* broadcast target in mse (gradient summed back to [3, 1]) */
    {
        ml_tensor *in[2] = {ml_t_randn(2, (int64_t[]){3, 4}, true), ml_t_randn(2, (int64_t[]){3, 1}, true)};
        loss_ud u = {.op = L_MSE, .red = ML_REDUCE_SUM};
        ml_gradcheck("mse_loss broadcast target", f_loss, 2, in, &u, 1e-6, 1e-8, 1e-6);
        ml_tensor_release(in[0]); ml_tensor_release(in[1]);
    }
    /* cross entropy / nll over shapes, weights, ignore, smoothing */
    struct { int nd; int64_t shape[5]; } cs[] = {{1, {5}}, {2, {4, 3}}, {3, {2, 4, 3}}, {4, {2, 3, 2, 2}}, {5, {1, 2, 2, 2, 3}}};
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        int nd = cs[c].nd;
        int64_t C = nd == 1 ? cs[c].shape[0] : cs[c].shape[1], tshape[4];
        int tnd = 0;
        if (nd >= 2) { tshape[tnd++] = cs[c].shape[0]; for (int d = 2; d < nd; d++) tshape[tnd++] = cs[c].shape[d]; }
        ml_tensor *t = tin(tnd, tshape, C, nd == 1 ? 0 : 3), *cw = NULL;
        ML_CHECK_OK(ml_rand(&cw, ML_F64, 1, &C));
        for (int64_t i = 0; i < C; i++) ((double *)ml_tensor_data(cw))[i] += 0.5;
        for (int ri = 0; ri < 3; ri++)
            for (int wi = 0; wi < 2; wi++)
                for (int li = 0; li < 2; li++) {
                    ml_tensor *in[2] = {ml_t_randn(nd, cs[c].shape, true), NULL};
                    loss_ud u = {.op = L_CE, .red = reds[ri], .target = t, .cw = wi ? cw : NULL, .ignore = -100, .ls = li ? 0.3 : 0};
                    snprintf(what, sizeof what, "cross_entropy %s red %d weight %d ls %d", ml_shape_str(nd, cs[c].shape), ri, wi, li);
                    ml_gradcheck(what, f_loss, 1, in, &u, 1e-6, 1e-8, 1e-6);
                    /* probability targets (both args differentiable) */
                    ML_CHECK_OK(ml_rand(&in[1], ML_F64, nd, cs[c].shape));
                    ml_set_requires_grad(in[1], true);
                    u.target = NULL;
                    snprintf(what, sizeof what, "cross_entropy prob %s red %d weight %d ls %d", ml_shape_str(nd, cs[c].shape), ri, wi, li);
                    ml_gradcheck(what, f_loss, 2, in, &u, 1e-6, 1e-8, 1e-6);
                    if (!li) {
                        u = (loss_ud){.op = L_NLL, .red = reds[ri], .target = t, .cw = wi ? cw : NULL, .ignore = -100};
                        snprintf(what, sizeof what, "nll_loss %s red %d weight %d", ml_shape_str(nd, cs[c].shape), ri, wi);
                        ml_gradcheck(what, f_loss, 1, in, &u, 1e-6, 1e-8, 1e-6);
                    }
                    ml_tensor_release(in[0]); ml_tensor_release(in[1]);
                }
        ml_tensor_release(t); ml_tensor_release(cw);
    }
}

ML_TEST(loss_f32_and_threads) {
    /* a large segmentation-style cross entropy: f32 agrees with f64; 1 thread == all threads bitwise */
    int64_t shape[4] = {2, 4, 150, 130}, tshape[3] = {2, 150, 130};
    ml_tensor *x = ml_t_randn(4, shape, true), *t = tin(3, tshape, 4, 9), *cw = vec(4, (double[]){1, 2, 0.5, 1});
    ml_tensor *x32 = as32(x, true), *l[2], *l32, *gx[2];
    int nt = ml_num_threads();
    for (int k = 0; k < 2; k++) {
        ml_set_num_threads(k == 0 ? 1 : (nt > 1 ? nt : 2));
        ML_CHECK_OK(ml_cross_entropy(&l[k], x, t, cw, -100, 0.1, ML_REDUCE_MEAN));
        ML_CHECK_OK(ml_backward(l[k], NULL, false));
        gx[k] = x->grad; x->grad = NULL;
    }
    ml_set_num_threads(nt);
    ML_CHECK(ml_t_maxdiff(l[0], l[1]) == 0 && ml_t_maxdiff(gx[0], gx[1]) == 0);
    ML_CHECK_OK(ml_cross_entropy(&l32, x32, t, cw, -100, 0.1, ML_REDUCE_MEAN));
    ML_CHECK(l32->dtype == ML_F32);
    ML_CHECK_NEAR(ml_tensor_item(l32), ml_tensor_item(l[0]), 1e-5);
    ML_CHECK_OK(ml_backward(l32, NULL, false));
    ML_CHECK(ml_t_maxdiff(x32->grad, gx[0]) < 1e-8);
    ml_tensor_release(l32);
    /* mse over a big tensor: reduction is deterministic across thread counts */
    ml_tensor *y = ml_t_randn(4, shape, false), *m[2];
    for (int k = 0; k < 2; k++) {
        ml_set_num_threads(k == 0 ? 1 : (nt > 1 ? nt : 2));
        ML_CHECK_OK(ml_mse_loss(&m[k], x, y, ML_REDUCE_MEAN));
    }
    ml_set_num_threads(nt);
    ML_CHECK(ml_t_maxdiff(m[0], m[1]) == 0);
    for (int k = 0; k < 2; k++) { ml_tensor_release(l[k]); ml_tensor_release(gx[k]); ml_tensor_release(m[k]); }
    ml_tensor_release(y); ml_tensor_release(x); ml_tensor_release(x32); ml_tensor_release(t); ml_tensor_release(cw);
}

ML_TEST(loss_errors) {
    ml_tensor *x = ml_t_randn(2, (int64_t[]){3, 4}, false), *y = NULL, *o = NULL, *t = NULL;
    ML_CHECK_OK(ml_tensor_from_data(&t, ML_I64, 1, (int64_t[]){3}, (int64_t[]){0, 5, 1}));
    ML_CHECK_ERR(ml_cross_entropy(&o, x, t, NULL, -100, 0, ML_REDUCE_MEAN), ML_ERR_ARG);
    ML_CHECK(o == NULL && strstr(ml_errmsg(), "cross_entropy") && strstr(ml_errmsg(), "target 5") && strstr(ml_errmsg(), "4 classes"));
    ML_CHECK_ERR(ml_nll_loss(&o, x, t, NULL, -100, ML_REDUCE_SUM), ML_ERR_ARG);
    ML_CHECK(strstr(ml_errmsg(), "nll_loss") && strstr(ml_errmsg(), "target 5") && strstr(ml_errmsg(), "4 classes"));
    ml_tensor_release(t);
    ML_CHECK_OK(ml_tensor_from_data(&t, ML_I64, 1, (int64_t[]){3}, (int64_t[]){0, -3, 1}));
    ML_CHECK_ERR(ml_cross_entropy(&o, x, t, NULL, -100, 0, ML_REDUCE_MEAN), ML_ERR_ARG);
    ML_CHECK(strstr(ml_errmsg(), "target -3"));
    ML_CHECK_OK(ml_cross_entropy(&o, x, t, NULL, -3, 0, ML_REDUCE_MEAN)); /* -3 is the ignore index */
    ml_tensor_release(o);
    ml_tensor_release(t);
    ML_CHECK_OK(ml_zeros(&t, ML_I64, 1, (int64_t[]){4}));
    ML_CHECK_ERR(ml_cross_entropy(&o, x, t, NULL, -100, 0, ML_REDUCE_MEAN), ML_ERR_SHAPE);
    ML_CHECK(strstr(ml_errmsg(), "cross_entropy") && strstr(ml_errmsg(), "[4]") && strstr(ml_errmsg(), "[3, 4]"));
    ml_tensor_release(t);
    ML_CHECK_OK(ml_zeros(&t, ML_I64, 1, (int64_t[]){3}));
    ml_tensor *w = ml_t_randn(1, (int64_t[]){3}, false);
    ML_CHECK_ERR(ml_cross_entropy(&o, x, t, w, -100, 0, ML_REDUCE_MEAN), ML_ERR_SHAPE);
    ML_CHECK(strstr(ml_errmsg(), "weight") && strstr(ml_errmsg(), "[3]"));
    ML_CHECK_ERR(ml_cross_entropy(&o, x, t, NULL, -100, 1.5, ML_REDUCE_MEAN), ML_ERR_ARG);
    ML_CHECK_ERR(ml_cross_entropy(&o, x, t, NULL, -100, 0, (ml_reduction)7), ML_ERR_ARG);
    ml_tensor *tf = ml_t_randn(1, (int64_t[]){3}, false);
    ML_CHECK_ERR(ml_cross_entropy(&o, x, tf, NULL, -100, 0, ML_REDUCE_MEAN), ML_ERR_DTYPE);
    ML_CHECK_ERR(ml_nll_loss(&o, x, tf, NULL, -100, ML_REDUCE_MEAN), ML_ERR_DTYPE);
    y = ml_t_randn(2, (int64_t[]){3, 5}, false);
    ML_CHECK_ERR(ml_mse_loss(&o, x, y, ML_REDUCE_MEAN), ML_ERR_SHAPE);
    ML_CHECK(strstr(ml_errmsg(), "mse_loss") && strstr(ml_errmsg(), "[3, 4]") && strstr(ml_errmsg(), "[3, 5]"));
    ML_CHECK_ERR(ml_bce_with_logits(&o, x, y, NULL, NULL, ML_REDUCE_MEAN), ML_ERR_SHAPE);
    ML_CHECK(strstr(ml_errmsg(), "bce_with_logits") && strstr(ml_errmsg(), "[3, 5]"));
    ml_tensor *y4 = ml_t_randn(2, (int64_t[]){3, 4}, false), *pw = ml_t_randn(1, (int64_t[]){3}, false);
    ML_CHECK_ERR(ml_bce_with_logits(&o, x, y4, NULL, pw, ML_REDUCE_MEAN), ML_ERR_SHAPE);
    ML_CHECK(strstr(ml_errmsg(), "pos_weight") && strstr(ml_errmsg(), "[3]"));
    ML_CHECK_ERR(ml_smooth_l1_loss(&o, x, y4, -1, ML_REDUCE_MEAN), ML_ERR_ARG);
    ml_tensor *xi;
    ML_CHECK_OK(ml_zeros(&xi, ML_I64, 2, (int64_t[]){3, 4}));
    ML_CHECK_ERR(ml_l1_loss(&o, xi, y4, ML_REDUCE_MEAN), ML_ERR_DTYPE);
    ML_CHECK(strstr(ml_errmsg(), "l1_loss") && strstr(ml_errmsg(), "int64"));
    ml_tensor *rel[] = {x, t, w, tf, y, y4, pw, xi};
    for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) ml_tensor_release(rel[i]);
}

int main(void) {
    g_seed = (uint64_t)time(NULL);
    const char *env = getenv("ML_TEST_SEED");
    if (env) g_seed = strtoull(env, NULL, 10);
    printf("test_loss seed %llu\n", (unsigned long long)g_seed);
    ml_manual_seed(g_seed);
    ML_RUN(loss_hand_values);
    ML_RUN(elementwise_losses_vs_pytorch);
    ML_RUN(bce_vs_pytorch);
    ML_RUN(cross_entropy_vs_pytorch);
    ML_RUN(loss_gradcheck);
    ML_RUN(loss_f32_and_threads);
    ML_RUN(loss_errors);
    return ml_test_summary();
}
