/* Normalization and activation tests: batch/instance/group/layer norm, softmax, log_softmax, dropout.
 * Forward values against naive double loops and a few PyTorch 1.13 numbers, f64 finite-difference
 * gradient checks for every differentiable argument, f32 vs f64 agreement, running statistics,
 * thread-count independence and argument errors. */
#include "ml_test.h"
#include "nn/ml_nn.h"
#include "tensor/ml_iter.h"
#include <time.h>

static uint64_t g_seed;

/* ---------------------------------------------------------------- helpers */
static ml_tensor *mk(int ndim, const int64_t *shape, const double *v) {
    ml_tensor *t = NULL;
    ml_tensor_from_data(&t, ML_F64, ndim, shape, v);
    return t;
}
static ml_tensor *to32(ml_tensor *t) {
    ml_tensor *o = NULL;
    bool prev = ml_set_grad_enabled(false);
    ml_to_dtype(&o, t, ML_F32);
    ml_set_grad_enabled(prev);
    return o;
}
static double *dat(ml_tensor *t) { return (double *)ml_tensor_data(t); }

/* naive reference normalization over [N, C, S]; group g of (n,c) decided by mode */
enum { R_BN, R_IN, R_GN };
static void ref_segnorm(int mode, const ml_tensor *x, int64_t G, const double *w, const double *b, double eps,
                        double *y) {
    int64_t N = x->shape[0], C = x->shape[1], S = 1;
    for (int d = 2; d < x->ndim; d++) S *= x->shape[d];
    const double *xd = (const double *)ml_tensor_data(x);
    int64_t ng = mode == R_BN ? C : mode == R_IN ? N * C : N * G;
    for (int64_t g = 0; g < ng; g++) {
        double s = 0, cnt = 0;
        for (int64_t n = 0; n < N; n++)
            for (int64_t c = 0; c < C; c++) {
                int64_t gg = mode == R_BN ? c : mode == R_IN ? n * C + c : n * G + c / (C / G);
                if (gg != g) continue;
                for (int64_t k = 0; k < S; k++) { s += xd[(n * C + c) * S + k]; cnt++; }
            }
        double m = s / cnt, v = 0;
        for (int64_t n = 0; n < N; n++)
            for (int64_t c = 0; c < C; c++) {
                int64_t gg = mode == R_BN ? c : mode == R_IN ? n * C + c : n * G + c / (C / G);
                if (gg != g) continue;
                for (int64_t k = 0; k < S; k++) v += (xd[(n * C + c) * S + k] - m) * (xd[(n * C + c) * S + k] - m);
            }
        v /= cnt;
        for (int64_t n = 0; n < N; n++)
            for (int64_t c = 0; c < C; c++) {
                int64_t gg = mode == R_BN ? c : mode == R_IN ? n * C + c : n * G + c / (C / G);
                if (gg != g) continue;
                for (int64_t k = 0; k < S; k++) {
                    int64_t i = (n * C + c) * S + k;
                    y[i] = (xd[i] - m) / sqrt(v + eps) * (w ? w[c] : 1) + (b ? b[c] : 0);
                }
            }
    }
}

static double maxdiff_arr(const ml_tensor *t, const double *ref) {
    int64_t n = ml_tensor_numel(t), idx[ML_MAX_DIMS] = {0};
    double m = 0;
    for (int64_t k = 0; k < n; k++) {
        double d = fabs(ml_tensor_get(t, idx) - ref[k]);
        if (isnan(d)) return INFINITY;
        if (d > m) m = d;
        ml_t_next_index(t->ndim, t->shape, idx);
    }
    return m;
}

/* ---------------------------------------------------------------- batch norm */
typedef struct { bool training; double momentum, eps; ml_tensor *rm, *rv; int64_t groups; int nnorm; } norm_ud;

static ml_err f_bn(ml_tensor **out, ml_tensor **in, void *ud) {
    norm_ud *u = ud;
    return ml_batch_norm(out, in[0], u->rm, u->rv, in[1], in[2], u->training, u->momentum, u->eps);
}
static ml_err f_in(ml_tensor **out, ml_tensor **in, void *ud) {
    norm_ud *u = ud;
    return ml_instance_norm(out, in[0], in[1], in[2], u->eps);
}
static ml_err f_gn(ml_tensor **out, ml_tensor **in, void *ud) {
    norm_ud *u = ud;
    return ml_group_norm(out, in[0], u->groups, in[1], in[2], u->eps);
}
static ml_err f_ln(ml_tensor **out, ml_tensor **in, void *ud) {
    norm_ud *u = ud;
    return ml_layer_norm(out, in[0], u->nnorm, in[1], in[2], u->eps);
}

ML_TEST(batch_norm_values_and_running_stats) {
    /* x [2, 2, 2]: channel 0 = {1,2,3,4}, channel 1 = {0,0,2,6} */
    double xv[] = {1, 2, 0, 0, 3, 4, 2, 6};
    ml_tensor *x = mk(3, (int64_t[]){2, 2, 2}, xv), *rm, *rv, *y;
    ML_CHECK_OK(ml_zeros(&rm, ML_F32, 1, (int64_t[]){2}));
    ML_CHECK_OK(ml_ones(&rv, ML_F32, 1, (int64_t[]){2}));
    uint32_t v0 = rm->storage->version;
    ML_CHECK_OK(ml_batch_norm(&y, x, rm, rv, NULL, NULL, true, 0.1, 1e-5));
    /* channel 0: mean 2.5, biased var 1.25, unbiased 5/3; channel 1: mean 2, biased var 6, unbiased 8 */
    ML_CHECK_NEAR(ml_tensor_get(rm, (int64_t[]){0}), 0.25, 1e-7);
    ML_CHECK_NEAR(ml_tensor_get(rm, (int64_t[]){1}), 0.2, 1e-7);
    ML_CHECK_NEAR(ml_tensor_get(rv, (int64_t[]){0}), 0.9 + 0.1 * 5.0 / 3.0, 1e-6);
    ML_CHECK_NEAR(ml_tensor_get(rv, (int64_t[]){1}), 0.9 + 0.8, 1e-6);
    ML_CHECK(rm->storage->version != v0);
    ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){0, 0, 0}), (1 - 2.5) / sqrt(1.25 + 1e-5), 1e-12);
    ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){1, 1, 1}), (6 - 2.0) / sqrt(6 + 1e-5), 1e-12);
    ml_tensor_release(y);
    /* eval: uses the running stats */
    double w[] = {2, 3}, b[] = {0.5, -1};
    ml_tensor *tw = mk(1, (int64_t[]){2}, w), *tb = mk(1, (int64_t[]){2}, b);
    ML_CHECK_OK(ml_batch_norm(&y, x, rm, rv, tw, tb, false, 0.1, 1e-5));
    double rv0 = ml_tensor_get(rv, (int64_t[]){0}), rm0 = ml_tensor_get(rm, (int64_t[]){0});
    ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){1, 0, 1}), (4 - rm0) / sqrt(rv0 + 1e-5) * 2 + 0.5, 1e-12);
    ML_CHECK_NEAR(ml_tensor_get(rm, (int64_t[]){0}), 0.25, 1e-7); /* unchanged in eval */
    ml_tensor_release(y);
    /* PyTorch 1.13: torch.nn.functional.batch_norm(x, zeros, ones, w, b, True, 0.1, 1e-5)[1,1,1] = 1.4494856 */
    ML_CHECK_OK(ml_batch_norm(&y, x, NULL, NULL, tw, tb, true, 0.1, 1e-5));
    ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){1, 1, 1}), 3 * 4 / sqrt(6 + 1e-5) - 1, 1e-12);
    ml_tensor_release(y);
    ml_tensor_release(x); ml_tensor_release(rm); ml_tensor_release(rv); ml_tensor_release(tw); ml_tensor_release(tb);
}

ML_TEST(norm_forward_vs_reference) {
    int64_t shapes[][5] = {{3, 4, 5, 1, 1}, {2, 6, 3, 4, 1}, {2, 4, 2, 3, 2}, {1, 2, 9000, 1, 1}};
    int ranks[] = {3, 4, 5, 3};
    for (int si = 0; si < 4; si++) {
        ml_tensor *x = ml_t_randn(ranks[si], shapes[si], false), *y;
        int64_t C = shapes[si][1], n = ml_tensor_numel(x);
        /* shift to make the variance computation non-trivial */
        for (int64_t k = 0; k < n; k++) dat(x)[k] = dat(x)[k] * 3 + 100;
        ml_tensor *tw = ml_t_randn(1, &C, false), *tb = ml_t_randn(1, &C, false);
        double *ref = malloc(sizeof(double) * (size_t)n);
        ML_CHECK_OK(ml_batch_norm(&y, x, NULL, NULL, tw, tb, true, 0.1, 1e-5));
        ref_segnorm(R_BN, x, 0, dat(tw), dat(tb), 1e-5, ref);
        ML_CHECK(maxdiff_arr(y, ref) < 1e-9);
        ml_tensor_release(y);
        ML_CHECK_OK(ml_instance_norm(&y, x, NULL, NULL, 1e-5));
        ref_segnorm(R_IN, x, 0, NULL, NULL, 1e-5, ref);
        ML_CHECK(maxdiff_arr(y, ref) < 1e-9);
        ml_tensor_release(y);
        int64_t G = C / 2;
        ML_CHECK_OK(ml_group_norm(&y, x, G, tw, tb, 1e-5));
        ref_segnorm(R_GN, x, G, dat(tw), dat(tb), 1e-5, ref);
        ML_CHECK(maxdiff_arr(y, ref) < 1e-9);
        ml_tensor_release(y);
        /* f32 agrees with f64 */
        ml_tensor *x32 = to32(x), *y32;
        ML_CHECK_OK(ml_group_norm(&y32, x32, G, tw, tb, 1e-5));
        ML_CHECK(y32->dtype == ML_F32);
        ML_CHECK(maxdiff_arr(y32, ref) < 2e-4);
        ml_tensor_release(y32);
        ML_CHECK_OK(ml_batch_norm(&y32, x32, NULL, NULL, tw, tb, true, 0.1, 1e-5));
        ref_segnorm(R_BN, x, 0, dat(tw), dat(tb), 1e-5, ref);
        ML_CHECK(maxdiff_arr(y32, ref) < 2e-4);
        ml_tensor_release(y32);
        ml_tensor_release(x32);
        free(ref);
        ml_tensor_release(x); ml_tensor_release(tw); ml_tensor_release(tb);
    }
}

ML_TEST(layer_norm_forward) {
    /* x [2, 3]: rows {1,2,3}, {2,2,8}; PyTorch: F.layer_norm(x, (3,)) */
    double xv[] = {1, 2, 3, 2, 2, 8};
    ml_tensor *x = mk(2, (int64_t[]){2, 3}, xv), *y;
    ML_CHECK_OK(ml_layer_norm(&y, x, 1, NULL, NULL, 1e-5));
    double s0 = sqrt(2.0 / 3 + 1e-5), s1 = sqrt(8.0 + 1e-5);
    ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){0, 0}), -1 / s0, 1e-12);
    ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){1, 2}), 4 / s1, 1e-12);
    ml_tensor_release(y);
    double wv[] = {1, 2, 3, 4, 5, 6}, bv[] = {0, 0, 0, 1, 1, 1};
    ml_tensor *w = mk(2, (int64_t[]){2, 3}, wv), *b = mk(2, (int64_t[]){2, 3}, bv);
    ML_CHECK_OK(ml_layer_norm(&y, x, 2, w, b, 1e-5));
    /* mean 3, var (4+1+0+1+1+25)/6 = 32/6 */
    double s = sqrt(32.0 / 6 + 1e-5);
    ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){1, 2}), 5 / s * 6 + 1, 1e-12);
    ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){0, 1}), -1 / s * 2, 1e-12);
    ml_tensor_release(y);
    /* large row (several chunks) agrees with a one-pass reference, f32 too */
    ml_tensor *xl = ml_t_randn(2, (int64_t[]){3, 10000}, false), *yl, *x32, *y32;
    ML_CHECK_OK(ml_layer_norm(&yl, xl, 1, NULL, NULL, 1e-5));
    double mx = 0;
    for (int r = 0; r < 3; r++) {
        double m = 0, v = 0;
        for (int k = 0; k < 10000; k++) m += dat(xl)[r * 10000 + k];
        m /= 10000;
        for (int k = 0; k < 10000; k++) v += pow(dat(xl)[r * 10000 + k] - m, 2);
        v /= 10000;
        for (int k = 0; k < 10000; k++) {
            double d = fabs(dat(yl)[r * 10000 + k] - (dat(xl)[r * 10000 + k] - m) / sqrt(v + 1e-5));
            if (d > mx) mx = d;
        }
    }
    ML_CHECK(mx < 1e-10);
    x32 = to32(xl);
    ML_CHECK_OK(ml_layer_norm(&y32, x32, 1, NULL, NULL, 1e-5));
    ML_CHECK(ml_t_maxdiff(y32, yl) < 1e-5);
    ml_tensor_release(x32); ml_tensor_release(y32); ml_tensor_release(xl); ml_tensor_release(yl);
    ml_tensor_release(x); ml_tensor_release(w); ml_tensor_release(b);
}

ML_TEST(norm_gradcheck) {
    printf("  seed %llu\n", (unsigned long long)g_seed);
    int64_t shapes[][4] = {{3, 2, 4, 1}, {2, 3, 2, 3}, {4, 2, 1, 1}};
    int ranks[] = {3, 4, 2};
    char what[128];
    for (int si = 0; si < 3; si++) {
        int64_t C = shapes[si][1];
        for (int affine = 0; affine < 2; affine++) {
            ml_tensor *in[3] = {ml_t_randn(ranks[si], shapes[si], true), affine ? ml_t_randn(1, &C, true) : NULL,
                                affine ? ml_t_randn(1, &C, true) : NULL};
            ml_tensor *rm, *rv;
            ml_zeros(&rm, ML_F64, 1, &C);
            ml_ones(&rv, ML_F64, 1, &C);
            norm_ud u = {.training = true, .momentum = 0.1, .eps = 1e-5, .rm = rm, .rv = rv};
            snprintf(what, sizeof what, "batch_norm train %s affine=%d", ml_shape_str(ranks[si], shapes[si]), affine);
            ml_gradcheck(what, f_bn, 3, in, &u, 1e-6, 1e-6, 1e-5);
            u.training = false;
            snprintf(what, sizeof what, "batch_norm eval %s affine=%d", ml_shape_str(ranks[si], shapes[si]), affine);
            ml_gradcheck(what, f_bn, 3, in, &u, 1e-6, 1e-6, 1e-5);
            u.training = true; u.rm = u.rv = NULL;
            snprintf(what, sizeof what, "batch_norm no running %s affine=%d", ml_shape_str(ranks[si], shapes[si]), affine);
            ml_gradcheck(what, f_bn, 3, in, &u, 1e-6, 1e-6, 1e-5);
            if (ranks[si] >= 3 && shapes[si][2] * shapes[si][3] > 1) {
                snprintf(what, sizeof what, "instance_norm %s affine=%d", ml_shape_str(ranks[si], shapes[si]), affine);
                ml_gradcheck(what, f_in, 3, in, &u, 1e-6, 1e-6, 1e-5);
            }
            for (int64_t G = 1; G <= C; G++) {
                if (C % G) continue;
                u.groups = G;
                snprintf(what, sizeof what, "group_norm G=%lld %s affine=%d", (long long)G,
                         ml_shape_str(ranks[si], shapes[si]), affine);
                ml_gradcheck(what, f_gn, 3, in, &u, 1e-6, 1e-6, 1e-5);
            }
            for (int i = 0; i < 3; i++) ml_tensor_release(in[i]);
            ml_tensor_release(rm); ml_tensor_release(rv);
        }
    }
    /* only weight/bias need grad (x constant) */
    {
        ml_tensor *in[3] = {ml_t_randn(3, (int64_t[]){2, 3, 4}, false), ml_t_randn(1, (int64_t[]){3}, true),
                            ml_t_randn(1, (int64_t[]){3}, true)};
        norm_ud u = {.training = true, .momentum = 0.1, .eps = 1e-5, .groups = 3};
        ml_gradcheck("batch_norm weight only", f_bn, 3, in, &u, 1e-6, 1e-6, 1e-5);
        ml_gradcheck("group_norm weight only", f_gn, 3, in, &u, 1e-6, 1e-6, 1e-5);
        for (int i = 0; i < 3; i++) ml_tensor_release(in[i]);
    }
    /* layer norm */
    int64_t lshapes[][3] = {{3, 4, 1}, {2, 3, 4}, {5, 1, 1}};
    int lranks[] = {2, 3, 1};
    for (int si = 0; si < 3; si++) {
        for (int nnorm = 1; nnorm <= lranks[si]; nnorm++) {
            for (int affine = 0; affine < 2; affine++) {
                const int64_t *ws = lshapes[si] + lranks[si] - nnorm;
                ml_tensor *in[3] = {ml_t_randn(lranks[si], lshapes[si], true), affine ? ml_t_randn(nnorm, ws, true) : NULL,
                                    affine ? ml_t_randn(nnorm, ws, true) : NULL};
                norm_ud u = {.eps = 1e-5, .nnorm = nnorm};
                snprintf(what, sizeof what, "layer_norm %s nnorm=%d affine=%d", ml_shape_str(lranks[si], lshapes[si]),
                         nnorm, affine);
                ml_gradcheck(what, f_ln, 3, in, &u, 1e-6, 1e-6, 1e-5);
                for (int i = 0; i < 3; i++) ml_tensor_release(in[i]);
            }
        }
    }
    /* weight only / bias only */
    {
        ml_tensor *in[3] = {ml_t_randn(2, (int64_t[]){3, 4}, true), ml_t_randn(1, (int64_t[]){4}, true), NULL};
        norm_ud u = {.eps = 1e-5, .nnorm = 1};
        ml_gradcheck("layer_norm weight, no bias", f_ln, 3, in, &u, 1e-6, 1e-6, 1e-5);
        ml_tensor *in2[3] = {in[0], NULL, in[1]};
        ml_gradcheck("layer_norm bias, no weight", f_ln, 3, in2, &u, 1e-6, 1e-6, 1e-5);
        ml_tensor_release(in[0]); ml_tensor_release(in[1]);
    }
}

ML_TEST(norm_backward_f32_vs_f64) {
    /* same data in f32 and f64 through group norm and layer norm: gradients agree */
    int64_t shape[4] = {2, 4, 3, 5};
    ml_tensor *x = ml_t_randn(4, shape, true), *w = ml_t_randn(1, (int64_t[]){4}, true), *b = ml_t_randn(1, (int64_t[]){4}, true);
    ml_tensor *x32 = to32(x), *w32 = to32(w), *b32 = to32(b), *y, *y32, *g;
    ml_set_requires_grad(x32, true); ml_set_requires_grad(w32, true); ml_set_requires_grad(b32, true);
    ML_CHECK_OK(ml_randn(&g, ML_F64, 4, shape));
    ml_tensor *g32 = to32(g);
    ML_CHECK_OK(ml_group_norm(&y, x, 2, w, b, 1e-5));
    ML_CHECK_OK(ml_group_norm(&y32, x32, 2, w32, b32, 1e-5));
    ML_CHECK_OK(ml_backward(y, g, false));
    ML_CHECK_OK(ml_backward(y32, g32, false));
    ML_CHECK(x32->grad && x32->grad->dtype == ML_F32 && w32->grad->dtype == ML_F32);
    ML_CHECK(ml_t_maxdiff(x->grad, x32->grad) < 1e-4);
    ML_CHECK(ml_t_maxdiff(w->grad, w32->grad) < 1e-4);
    ML_CHECK(ml_t_maxdiff(b->grad, b32->grad) < 1e-4);
    ml_tensor_release(y); ml_tensor_release(y32);
    ml_tensor *xs[] = {x, w, b, x32, w32, b32};
    for (int i = 0; i < 6; i++) { ml_tensor_release(xs[i]->grad); xs[i]->grad = NULL; }
    ML_CHECK_OK(ml_batch_norm(&y, x, NULL, NULL, w, b, true, 0.1, 1e-5));
    ML_CHECK_OK(ml_batch_norm(&y32, x32, NULL, NULL, w32, b32, true, 0.1, 1e-5));
    ML_CHECK_OK(ml_backward(y, g, false));
    ML_CHECK_OK(ml_backward(y32, g32, false));
    ML_CHECK(ml_t_maxdiff(x->grad, x32->grad) < 1e-4);
    ML_CHECK(ml_t_maxdiff(w->grad, w32->grad) < 1e-4);
    ml_tensor_release(y); ml_tensor_release(y32);
    for (int i = 0; i < 6; i++) ml_tensor_release(xs[i]);
    ml_tensor_release(g); ml_tensor_release(g32);
}

ML_TEST(norm_thread_independence) {
    /* big enough to go parallel; 1 thread vs all threads give bit-identical results */
    int64_t shape[4] = {2, 3, 150, 160};
    ml_tensor *x = ml_t_randn(4, shape, true), *w = ml_t_randn(1, (int64_t[]){3}, true), *y1, *y2, *g;
    ML_CHECK_OK(ml_randn(&g, ML_F64, 4, shape));
    int nt = ml_num_threads();
    ml_tensor *gx[2] = {0}, *gw[2] = {0}, *ys[2] = {0};
    for (int r = 0; r < 2; r++) {
        ml_set_num_threads(r == 0 ? 1 : (nt > 1 ? nt : 2));
        ML_CHECK_OK(ml_batch_norm(&ys[r], x, NULL, NULL, w, NULL, true, 0.1, 1e-5));
        ML_CHECK_OK(ml_backward(ys[r], g, false));
        gx[r] = x->grad; gw[r] = w->grad;
        x->grad = w->grad = NULL;
    }
    ml_set_num_threads(nt);
    ML_CHECK(ml_t_maxdiff(ys[0], ys[1]) == 0);
    ML_CHECK(ml_t_maxdiff(gx[0], gx[1]) == 0);
    ML_CHECK(ml_t_maxdiff(gw[0], gw[1]) == 0);
    y1 = ys[0]; y2 = ys[1];
    ml_tensor_release(y1); ml_tensor_release(y2);
    for (int r = 0; r < 2; r++) { ml_tensor_release(gx[r]); ml_tensor_release(gw[r]); }
    ml_tensor_release(x); ml_tensor_release(w); ml_tensor_release(g);
}

ML_TEST(norm_noncontiguous_input) {
    /* a transposed input gives the same result as its contiguous copy */
    ml_tensor *x = ml_t_randn(3, (int64_t[]){4, 3, 5}, false), *xt, *xc, *y1, *y2;
    ML_CHECK_OK(ml_transpose(&xt, x, 0, 2)); /* [5, 3, 4] */
    ML_CHECK_OK(ml_contiguous(&xc, xt));
    ML_CHECK_OK(ml_instance_norm(&y1, xt, NULL, NULL, 1e-5));
    ML_CHECK_OK(ml_instance_norm(&y2, xc, NULL, NULL, 1e-5));
    ML_CHECK(ml_t_maxdiff(y1, y2) == 0);
    ml_tensor_release(y1); ml_tensor_release(y2);
    ML_CHECK_OK(ml_layer_norm(&y1, xt, 2, NULL, NULL, 1e-5));
    ML_CHECK_OK(ml_layer_norm(&y2, xc, 2, NULL, NULL, 1e-5));
    ML_CHECK(ml_t_maxdiff(y1, y2) == 0);
    ml_tensor_release(y1); ml_tensor_release(y2);
    ml_tensor_release(x); ml_tensor_release(xt); ml_tensor_release(xc);
}

ML_TEST(norm_errors) {
    ml_tensor *x = ml_t_randn(3, (int64_t[]){2, 6, 4}, false), *y = NULL, *w;
    ML_CHECK_ERR(ml_group_norm(&y, x, 4, NULL, NULL, 1e-5), ML_ERR_ARG);
    ML_CHECK(y == NULL && strstr(ml_errmsg(), "group_norm") && strstr(ml_errmsg(), "[2, 6, 4]"));
    ML_CHECK_OK(ml_ones(&w, ML_F64, 1, (int64_t[]){5}));
    ML_CHECK_ERR(ml_batch_norm(&y, x, NULL, NULL, w, NULL, true, 0.1, 1e-5), ML_ERR_SHAPE);
    ML_CHECK(strstr(ml_errmsg(), "batch_norm") && strstr(ml_errmsg(), "[5]") && strstr(ml_errmsg(), "[2, 6, 4]"));
    ML_CHECK_ERR(ml_batch_norm(&y, x, NULL, NULL, NULL, NULL, false, 0.1, 1e-5), ML_ERR_ARG);
    ML_CHECK(strstr(ml_errmsg(), "batch_norm") && strstr(ml_errmsg(), "running_mean"));
    ML_CHECK_ERR(ml_instance_norm(&y, x, w, NULL, 1e-5), ML_ERR_SHAPE);
    ML_CHECK(strstr(ml_errmsg(), "instance_norm"));
    ML_CHECK_ERR(ml_layer_norm(&y, x, 1, w, NULL, 1e-5), ML_ERR_SHAPE);
    ML_CHECK(strstr(ml_errmsg(), "layer_norm") && strstr(ml_errmsg(), "[5]") && strstr(ml_errmsg(), "[4]"));
    ML_CHECK_ERR(ml_layer_norm(&y, x, 4, NULL, NULL, 1e-5), ML_ERR_ARG);
    ml_tensor *one;
    ML_CHECK_OK(ml_ones(&one, ML_F64, 2, (int64_t[]){1, 6}));
    ML_CHECK_ERR(ml_batch_norm(&y, one, NULL, NULL, NULL, NULL, true, 0.1, 1e-5), ML_ERR_SHAPE);
    ML_CHECK(strstr(ml_errmsg(), "more than 1 value per channel") && strstr(ml_errmsg(), "[1, 6]"));
    ml_tensor *xi;
    ML_CHECK_OK(ml_zeros(&xi, ML_I64, 3, (int64_t[]){2, 6, 4}));
    ML_CHECK_ERR(ml_layer_norm(&y, xi, 1, NULL, NULL, 1e-5), ML_ERR_DTYPE);
    ML_CHECK(strstr(ml_errmsg(), "int64"));
    ML_CHECK_ERR(ml_instance_norm(&y, one, NULL, NULL, 1e-5), ML_ERR_SHAPE);
    ml_tensor_release(x); ml_tensor_release(w); ml_tensor_release(one); ml_tensor_release(xi);
}

/* ---------------------------------------------------------------- softmax / dropout */
typedef struct { int dim; double p; uint64_t seed, off; } act_ud;
static ml_err f_softmax(ml_tensor **out, ml_tensor **in, void *ud) { return ml_softmax(out, in[0], ((act_ud *)ud)->dim); }
static ml_err f_log_softmax(ml_tensor **out, ml_tensor **in, void *ud) {
    return ml_log_softmax(out, in[0], ((act_ud *)ud)->dim);
}
static ml_err f_dropout(ml_tensor **out, ml_tensor **in, void *ud) {
    act_ud *u = ud;
    ml_rng_set_state(u->seed, u->off); /* same mask every call */
    return ml_dropout(out, in[0], u->p, true);
}

ML_TEST(softmax_values) {
    double xv[] = {1, 2, 3, 1000, 1001, 1002};
    ml_tensor *x = mk(2, (int64_t[]){2, 3}, xv), *y, *ly;
    ML_CHECK_OK(ml_softmax(&y, x, 1));
    double e1 = exp(-2), e2 = exp(-1), s = e1 + e2 + 1;
    ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){0, 0}), e1 / s, 1e-15);
    ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){1, 2}), 1 / s, 1e-15); /* stable for large inputs */
    ML_CHECK_OK(ml_log_softmax(&ly, x, -1));
    ML_CHECK_NEAR(ml_tensor_get(ly, (int64_t[]){1, 0}), -2 - log(s), 1e-12);
    ml_tensor_release(y); ml_tensor_release(ly);
    ML_CHECK_OK(ml_softmax(&y, x, 0));
    ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){0, 1}), 0, 1e-300);
    ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){1, 1}), 1, 0);
    ml_tensor_release(y);
    /* -inf entries: softmax 0, log_softmax -inf; all -inf row -> nan like PyTorch */
    double xi[] = {-INFINITY, 0, 0, -INFINITY, -INFINITY, -INFINITY};
    ml_tensor *xn = mk(2, (int64_t[]){2, 3}, xi);
    ML_CHECK_OK(ml_softmax(&y, xn, 1));
    ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){0, 0}), 0, 0);
    ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){0, 1}), 0.5, 1e-15);
    ML_CHECK(isnan(ml_tensor_get(y, (int64_t[]){1, 0})));
    ml_tensor_release(y);
    ML_CHECK_OK(ml_log_softmax(&y, xn, 1));
    ML_CHECK(isinf(ml_tensor_get(y, (int64_t[]){0, 0})));
    ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){0, 2}), -log(2), 1e-15);
    ml_tensor_release(y);
    ml_tensor_release(xn);
    /* every dim of a 4-d tensor against a naive reference, f32 and f64 */
    int64_t shape[4] = {3, 4, 5, 6};
    ml_tensor *x4 = ml_t_randn(4, shape, false), *x32 = to32(x4);
    for (int d = 0; d < 4; d++) {
        ml_tensor *s4, *l4, *s32;
        ML_CHECK_OK(ml_softmax(&s4, x4, d));
        ML_CHECK_OK(ml_log_softmax(&l4, x4, d));
        ML_CHECK_OK(ml_softmax(&s32, x32, d));
        double mx = 0, mxl = 0;
        int64_t idx[4] = {0};
        do {
            int64_t j[4];
            memcpy(j, idx, sizeof j);
            double m = -INFINITY, z = 0;
            for (j[d] = 0; j[d] < shape[d]; j[d]++) m = fmax(m, ml_tensor_get(x4, j));
            for (j[d] = 0; j[d] < shape[d]; j[d]++) z += exp(ml_tensor_get(x4, j) - m);
            double ref = exp(ml_tensor_get(x4, idx) - m) / z;
            mx = fmax(mx, fabs(ml_tensor_get(s4, idx) - ref));
            mxl = fmax(mxl, fabs(ml_tensor_get(l4, idx) - (ml_tensor_get(x4, idx) - m - log(z))));
        } while (ml_t_next_index(4, shape, idx));
        ML_CHECK(mx < 1e-14);
        ML_CHECK(mxl < 1e-13);
        ML_CHECK(ml_t_maxdiff(s32, s4) < 1e-6);
        ml_tensor_release(s4); ml_tensor_release(l4); ml_tensor_release(s32);
    }
    ml_tensor_release(x4); ml_tensor_release(x32);
    ml_tensor_release(x);
}

ML_TEST(softmax_gradcheck) {
    printf("  seed %llu\n", (unsigned long long)g_seed);
    int64_t shapes[][3] = {{4, 1, 1}, {3, 5, 1}, {2, 3, 4}};
    int ranks[] = {1, 2, 3};
    char what[96];
    for (int si = 0; si < 3; si++) {
        for (int d = -1; d < ranks[si]; d++) {
            ml_tensor *in[1] = {ml_t_randn(ranks[si], shapes[si], true)};
            act_ud u = {.dim = d};
            snprintf(what, sizeof what, "softmax %s dim %d", ml_shape_str(ranks[si], shapes[si]), d);
            ml_gradcheck(what, f_softmax, 1, in, &u, 1e-6, 1e-7, 1e-5);
            snprintf(what, sizeof what, "log_softmax %s dim %d", ml_shape_str(ranks[si], shapes[si]), d);
            ml_gradcheck(what, f_log_softmax, 1, in, &u, 1e-6, 1e-7, 1e-5);
            ml_tensor_release(in[0]);
        }
    }
    /* 0-d input */
    ml_tensor *in0[1] = {ml_t_randn(0, NULL, true)};
    act_ud u0 = {.dim = 0};
    ml_gradcheck("log_softmax 0-d", f_log_softmax, 1, in0, &u0, 1e-6, 1e-7, 1e-5);
    ml_tensor_release(in0[0]);
}

ML_TEST(softmax_errors) {
    ml_tensor *x = ml_t_randn(2, (int64_t[]){2, 3}, false), *y = NULL, *xi;
    ML_CHECK_ERR(ml_softmax(&y, x, 2), ML_ERR_DIM);
    ML_CHECK(y == NULL && strstr(ml_errmsg(), "softmax"));
    ML_CHECK_OK(ml_zeros(&xi, ML_I32, 1, (int64_t[]){3}));
    ML_CHECK_ERR(ml_log_softmax(&y, xi, 0), ML_ERR_DTYPE);
    ML_CHECK(strstr(ml_errmsg(), "log_softmax") && strstr(ml_errmsg(), "int32"));
    ml_tensor_release(x); ml_tensor_release(xi);
}

ML_TEST(dropout) {
    int64_t n = 200003;
    ml_tensor *x, *y, *y2;
    ML_CHECK_OK(ml_ones(&x, ML_F32, 1, &n));
    /* identity cases return the input itself */
    ML_CHECK_OK(ml_dropout(&y, x, 0.5, false));
    ML_CHECK(y == x);
    ml_tensor_release(y);
    ML_CHECK_OK(ml_dropout(&y, x, 0.0, true));
    ML_CHECK(y == x);
    ml_tensor_release(y);
    /* statistics and values */
    ml_manual_seed(42);
    ML_CHECK_OK(ml_dropout(&y, x, 0.3, true));
    float *d = ml_tensor_data(y);
    int64_t kept = 0;
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        if (d[i] != 0) { kept++; if (fabsf(d[i] - 1 / 0.7f) > 1e-6f) bad = 1; }
    }
    ML_CHECK(!bad);
    ML_CHECK_NEAR((double)kept / n, 0.7, 0.005);
    /* reproducible for a seed and independent of the thread count */
    int nt = ml_num_threads();
    ml_manual_seed(42);
    ml_set_num_threads(1);
    ML_CHECK_OK(ml_dropout(&y2, x, 0.3, true));
    ml_set_num_threads(nt);
    ML_CHECK(ml_t_maxdiff(y, y2) == 0);
    ml_tensor_release(y2);
    /* the next call draws a different mask */
    ML_CHECK_OK(ml_dropout(&y2, x, 0.3, true));
    ML_CHECK(ml_t_maxdiff(y, y2) > 0);
    ml_tensor_release(y2);
    ml_tensor_release(y);
    /* p = 1: all zeros */
    ML_CHECK_OK(ml_dropout(&y, x, 1.0, true));
    ML_CHECK(((float *)ml_tensor_data(y))[17] == 0);
    ml_tensor_release(y);
    /* backward uses the forward mask: grad = mask*scale */
    ml_tensor *xg = ml_t_randn(2, (int64_t[]){30, 40}, true), *g;
    ML_CHECK_OK(ml_dropout(&y, xg, 0.4, true));
    ML_CHECK_OK(ml_ones(&g, ML_F64, 2, (int64_t[]){30, 40}));
    ML_CHECK_OK(ml_backward(y, g, false));
    int mism = 0;
    for (int64_t i = 0; i < 1200; i++) {
        double yv = dat(y)[i], gv = dat(xg->grad)[i], xv = dat(xg)[i];
        if (yv == 0 && gv != 0) mism = 1;
        if (yv != 0 && (fabs(gv - 1 / 0.6) > 1e-12 || fabs(yv - xv / 0.6) > 1e-12)) mism = 1;
    }
    ML_CHECK(!mism);
    ml_tensor_release(y); ml_tensor_release(g);
    /* gradcheck with a fixed rng state */
    ml_tensor *in[1] = {xg};
    act_ud u = {.p = 0.25, .seed = 7, .off = 1000};
    ml_gradcheck("dropout p=0.25", f_dropout, 1, in, &u, 1e-6, 1e-8, 1e-6);
    /* non-contiguous input: same as dropping out its contiguous copy with the same rng state */
    ml_tensor *xt, *xc, *yt, *yc;
    ML_CHECK_OK(ml_transpose(&xt, xg, 0, 1));
    ML_CHECK_OK(ml_contiguous(&xc, xt));
    ml_rng_set_state(5, 77);
    ML_CHECK_OK(ml_dropout(&yt, xt, 0.5, true));
    ml_rng_set_state(5, 77);
    ML_CHECK_OK(ml_dropout(&yc, xc, 0.5, true));
    ML_CHECK(yt->shape[0] == 40 && ml_t_maxdiff(yt, yc) == 0);
    ml_tensor_release(yt); ml_tensor_release(yc); ml_tensor_release(xt); ml_tensor_release(xc);
    ML_CHECK_ERR(ml_dropout(&y, x, 1.5, true), ML_ERR_ARG);
    ML_CHECK(strstr(ml_errmsg(), "dropout") && strstr(ml_errmsg(), "1.5"));
    ml_tensor_release(xg); ml_tensor_release(x);
}

int main(void) {
    g_seed = (uint64_t)time(NULL);
    const char *env = getenv("ML_TEST_SEED");
    if (env) g_seed = strtoull(env, NULL, 10);
    printf("test_norm seed %llu\n", (unsigned long long)g_seed);
    ml_manual_seed(g_seed);
    ML_RUN(batch_norm_values_and_running_stats);
    ML_RUN(norm_forward_vs_reference);
    ML_RUN(layer_norm_forward);
    ML_RUN(norm_gradcheck);
    ML_RUN(norm_backward_f32_vs_f64);
    ML_RUN(norm_thread_independence);
    ML_RUN(norm_noncontiguous_input);
    ML_RUN(norm_errors);
    ML_RUN(softmax_values);
    ML_RUN(softmax_gradcheck);
    ML_RUN(softmax_errors);
    ML_RUN(dropout);
    return ml_test_summary();
}
