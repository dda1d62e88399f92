/* Reductions: values against hand-computed and naive references (random shapes, dims, layouts,
 * threaded sizes), accuracy, dtypes, errors, var/std/norm, max/min along a dim with ties and NaN,
 * argmax/argmin, cumsum, sum_to, and finite-difference gradients (f64).
 * Usage: test_reduce [seed] */
#include "ml_test.h"
#include "tensor/ml_iter.h"

static uint64_t g_seed;

static double at1(const ml_tensor *t, int64_t i) { return ml_tensor_get(t, (int64_t[]){i}); }
static double at2(const ml_tensor *t, int64_t i, int64_t j) { return ml_tensor_get(t, (int64_t[]){i, j}); }

static ml_tensor *from_f64(int ndim, const int64_t *shape, const double *v) {
    ml_tensor *t = NULL;
    ml_tensor_from_data(&t, ML_F64, ndim, shape, v);
    return t;
}

/* ------------------------------------------------------- naive reference */
/* reduce t over red[] into a double array (row-major over kept dims) */
static void naive_reduce(const ml_tensor *t, const bool *red, ml_redop op, double *res, int64_t nout) {
    double *aux = calloc((size_t)(nout ? nout : 1), sizeof(double));
    int64_t *cnt = calloc((size_t)(nout ? nout : 1), sizeof(int64_t));
    for (int64_t o = 0; o < nout; o++)
        res[o] = op == ML_RPROD ? 1 : op == ML_RAMAX || op == ML_RLOGSUMEXP ? -INFINITY : op == ML_RAMIN ? INFINITY : 0;
    for (int pass = 0; pass < (op == ML_RLOGSUMEXP ? 2 : 1); pass++) {
        if (ml_tensor_numel(t) == 0) break;
        int64_t idx[ML_MAX_DIMS] = {0};
        do {
            int64_t o = 0;
            for (int d = 0; d < t->ndim; d++) if (!red[d]) o = o * t->shape[d] + idx[d];
            double v = ml_tensor_get(t, idx);
            cnt[o]++;
            switch (op) {
            case ML_RSUM: case ML_RMEAN: res[o] += v; break;
            case ML_RPROD: res[o] *= v; break;
            case ML_RAMAX: res[o] = fmax(res[o], v); break;
            case ML_RAMIN: res[o] = fmin(res[o], v); break;
            default:
                if (pass == 0) res[o] = fmax(res[o], v);
                else aux[o] += exp(v - res[o]);
            }
        } while (ml_t_next_index(t->ndim, t->shape, idx));
    }
    for (int64_t o = 0; o < nout; o++) {
        if (op == ML_RMEAN) res[o] /= (double)cnt[o];
        if (op == ML_RLOGSUMEXP) res[o] = res[o] + log(aux[o]);
    }
    free(aux);
    free(cnt);
}

/* --------------------------------------------------------------- values */
ML_TEST(sum_mean_prod_values) {
    ml_tensor *a, *r;
    ML_CHECK_OK(ml_arange(&a, ML_F32, 0, 1000, 1));
    ML_CHECK_OK(ml_reduce(&r, ML_RSUM, a, 0, NULL, false));
    ML_CHECK(r->ndim == 0 && r->dtype == ML_F32 && ml_tensor_item(r) == 499500);
    ml_tensor_release(r);
    ML_CHECK_OK(ml_reduce(&r, ML_RMEAN, a, 0, NULL, true));
    ML_CHECK(r->ndim == 1 && r->shape[0] == 1 && ml_tensor_item(r) == 499.5);
    ml_tensor_release(r);
    ml_tensor *m;
    ML_CHECK_OK(ml_view(&m, a, 3, (int64_t[]){10, 10, 10}));
    ML_CHECK_OK(ml_reduce(&r, ML_RSUM, m, 2, (int[]){0, -1}, false));
    ML_CHECK(r->ndim == 1 && r->shape[0] == 10);
    /* sum over i,k of (100 i + 10 j + k) = 100*45*10 + 10 j*100 + 45*10 */
    ML_CHECK(at1(r, 3) == 45000 + 3000 + 450);
    ml_tensor_release(r);
    ML_CHECK_OK(ml_reduce(&r, ML_RSUM, m, 1, (int[]){1}, true));
    ML_CHECK(r->ndim == 3 && r->shape[1] == 1 && ml_tensor_get(r, (int64_t[]){2, 0, 7}) == 10 * (200 + 7) + 450);
    ml_tensor_release(r);
    ML_CHECK_OK(ml_reduce(&r, ML_RAMAX, m, 1, (int[]){2}, false));
    ML_CHECK(at2(r, 9, 9) == 999 && at2(r, 0, 0) == 9);
    ml_tensor_release(r);
    ML_CHECK_OK(ml_reduce(&r, ML_RAMIN, m, 2, (int[]){1, 0}, false));
    ML_CHECK(at1(r, 4) == 4);
    ml_tensor_release(r);
    ml_tensor_release(m);
    ml_tensor_release(a);
    /* prod, logsumexp */
    double v[] = {1, 2, 3, 4, -1, 0.5};
    ml_tensor *x = from_f64(2, (int64_t[]){2, 3}, v);
    ML_CHECK_OK(ml_reduce(&r, ML_RPROD, x, 1, (int[]){1}, false));
    ML_CHECK(at1(r, 0) == 6 && at1(r, 1) == -2);
    ml_tensor_release(r);
    ML_CHECK_OK(ml_reduce(&r, ML_RLOGSUMEXP, x, 1, (int[]){0}, false));
    ML_CHECK_NEAR(at1(r, 0), log(exp(1.0) + exp(4.0)), 1e-14);
    ML_CHECK_NEAR(at1(r, 2), log(exp(3.0) + exp(0.5)), 1e-14);
    ml_tensor_release(r);
    /* logsumexp is stable and handles -inf rows */
    double big[] = {1000, 1000, -INFINITY, -INFINITY};
    ml_tensor *b = from_f64(2, (int64_t[]){2, 2}, big);
    ML_CHECK_OK(ml_reduce(&r, ML_RLOGSUMEXP, b, 1, (int[]){1}, false));
    ML_CHECK_NEAR(at1(r, 0), 1000 + log(2.0), 1e-12);
    ML_CHECK(isinf(at1(r, 1)) && at1(r, 1) < 0);
    ml_tensor_release(r);
    ml_tensor_release(b);
    ml_tensor_release(x);
    /* 0-d input */
    ml_tensor *s;
    ML_CHECK_OK(ml_full(&s, ML_F64, 0, NULL, 2.5));
    ML_CHECK_OK(ml_reduce(&r, ML_RSUM, s, 0, NULL, false));
    ML_CHECK(r->ndim == 0 && ml_tensor_item(r) == 2.5);
    ml_tensor_release(r);
    ML_CHECK_OK(ml_reduce(&r, ML_RMEAN, s, 1, (int[]){-1}, true));
    ML_CHECK(r->ndim == 0 && ml_tensor_item(r) == 2.5);
    ml_tensor_release(r);
    ml_tensor_release(s);
    /* empty reductions */
    ml_tensor *e;
    ML_CHECK_OK(ml_zeros(&e, ML_F32, 2, (int64_t[]){0, 3}));
    ML_CHECK_OK(ml_reduce(&r, ML_RSUM, e, 1, (int[]){0}, false));
    ML_CHECK(r->shape[0] == 3 && at1(r, 1) == 0);
    ml_tensor_release(r);
    ML_CHECK_OK(ml_reduce(&r, ML_RPROD, e, 1, (int[]){0}, false));
    ML_CHECK(at1(r, 1) == 1);
    ml_tensor_release(r);
    ML_CHECK_OK(ml_reduce(&r, ML_RMEAN, e, 1, (int[]){0}, false));
    ML_CHECK(isnan(at1(r, 1)));
    ml_tensor_release(r);
    ML_CHECK_ERR(ml_reduce(&r, ML_RAMAX, e, 1, (int[]){0}, false), ML_ERR_ARG);
    ML_CHECK(strstr(ml_errmsg(), "amax") && strstr(ml_errmsg(), "[0, 3]"));
    ML_CHECK_OK(ml_reduce(&r, ML_RAMAX, e, 1, (int[]){1}, false)); /* reduces size-3 dim; output is empty */
    ML_CHECK(r->ndim == 1 && r->shape[0] == 0);
    ml_tensor_release(r);
    ml_tensor_release(e);
}

ML_TEST(reduce_dtypes_and_errors) {
    ml_tensor *i32, *r, *bo, *h;
    ML_CHECK_OK(ml_arange(&i32, ML_I32, 0, 10, 1));
    ML_CHECK_OK(ml_reduce(&r, ML_RSUM, i32, 0, NULL, false));
    ML_CHECK(r->dtype == ML_I64 && ml_tensor_item(r) == 45);
    ml_tensor_release(r);
    ML_CHECK_OK(ml_reduce(&r, ML_RAMAX, i32, 0, NULL, false));
    ML_CHECK(r->dtype == ML_I32 && ml_tensor_item(r) == 9);
    ml_tensor_release(r);
    ML_CHECK_OK(ml_reduce(&r, ML_RMEAN, i32, 0, NULL, false));
    ML_CHECK(r->dtype == ML_F32 && ml_tensor_item(r) == 4.5);
    ml_tensor_release(r);
    ML_CHECK_OK(ml_binary_scalar(&bo, ML_GE, i32, 7, false));
    ML_CHECK_OK(ml_reduce(&r, ML_RSUM, bo, 0, NULL, false));
    ML_CHECK(r->dtype == ML_I64 && ml_tensor_item(r) == 3);
    ml_tensor_release(r);
    /* int64 sums are exact */
    int64_t big[] = {((int64_t)1 << 60) + 1, 1, -((int64_t)1 << 60)};
    ml_tensor *bi;
    ML_CHECK_OK(ml_tensor_from_data(&bi, ML_I64, 1, (int64_t[]){3}, big));
    ML_CHECK_OK(ml_reduce(&r, ML_RSUM, bi, 0, NULL, false));
    ML_CHECK(*(int64_t *)ml_tensor_data(r) == 2);
    ml_tensor_release(r);
    ml_tensor_release(bi);
    /* half types reduce in f32 and round back */
    ML_CHECK_OK(ml_to_dtype(&h, i32, ML_BF16));
    ML_CHECK_OK(ml_reduce(&r, ML_RSUM, h, 0, NULL, false));
    ML_CHECK(r->dtype == ML_BF16 && ml_tensor_item(r) == 45);
    ml_tensor_release(r);
    ml_tensor_release(h);
    /* errors */
    ml_tensor *m;
    ML_CHECK_OK(ml_zeros(&m, ML_F32, 3, (int64_t[]){2, 3, 4}));
    ML_CHECK_ERR(ml_reduce(&r, ML_RSUM, m, 2, (int[]){1, -2}, false), ML_ERR_ARG);
    ML_CHECK(r == NULL && strstr(ml_errmsg(), "sum") && strstr(ml_errmsg(), "multiple"));
    ML_CHECK_ERR(ml_reduce(&r, ML_RMEAN, m, 1, (int[]){3}, false), ML_ERR_DIM);
    ML_CHECK(strstr(ml_errmsg(), "mean") != NULL);
    ML_CHECK_ERR(ml_reduce(&r, ML_RSUM, m, 1, (int[]){-4}, false), ML_ERR_DIM);
    ML_CHECK_ERR(ml_var(&r, m, 1, (int[]){5}, 1, false, false), ML_ERR_DIM);
    ML_CHECK_ERR(ml_norm(&r, m, 2, 1, (int[]){7}, false), ML_ERR_DIM);
    ML_CHECK_ERR(ml_cumsum(&r, m, 3), ML_ERR_DIM);
    ML_CHECK(strstr(ml_errmsg(), "cumsum") != NULL);
    ml_tensor *v, *ix;
    ML_CHECK_ERR(ml_max_dim(&v, &ix, m, -4, false), ML_ERR_DIM);
    ML_CHECK(v == NULL && ix == NULL);
    ML_CHECK_ERR(ml_argmax(&ix, m, 3, false), ML_ERR_DIM);
    ML_CHECK_ERR(ml_reduce(&r, (ml_redop)42, m, 0, NULL, false), ML_ERR_ARG);
    ml_tensor_release(m);
    ml_tensor_release(bo);
    ml_tensor_release(i32);
}

ML_TEST(sum_accuracy_large) {
    int64_t n = 1 << 24; /* 16M f32 */
    ml_tensor *a, *r;
    ML_CHECK_OK(ml_full(&a, ML_F32, 1, &n, 0.1));
    ML_CHECK_OK(ml_reduce(&r, ML_RSUM, a, 0, NULL, false));
    double want = (double)n * (double)0.1f;
    ML_CHECK_NEAR(ml_tensor_item(r), want, want * 1e-7); /* f32 result of an accurate sum */
    ml_tensor_release(r);
    ML_CHECK_OK(ml_reduce(&r, ML_RMEAN, a, 0, NULL, false));
    ML_CHECK_NEAR(ml_tensor_item(r), (double)0.1f, 1e-8);
    ml_tensor_release(r);
    /* f64: 1 + many tiny values */
    ml_tensor *d;
    ML_CHECK_OK(ml_full(&d, ML_F64, 1, &n, 1e-10));
    ((double *)ml_tensor_data(d))[0] = 1;
    ML_CHECK_OK(ml_reduce(&r, ML_RSUM, d, 0, NULL, false));
    ML_CHECK_NEAR(ml_tensor_item(r), 1 + (double)(n - 1) * 1e-10, 1e-12);
    ml_tensor_release(r);
    ml_tensor_release(d);
    /* norm-2 of all ones over 16M */
    ML_CHECK_OK(ml_norm(&r, a, 2, 0, NULL, false));
    ML_CHECK_NEAR(ml_tensor_item(r), sqrt(want * 0.1), 1e-3);
    ml_tensor_release(r);
    ml_tensor_release(a);
}

/* all engine branches: inner/outer/middle/all reductions, threaded sizes, strided inputs */
ML_TEST(reduce_vs_naive_random) {
    uint64_t seed = g_seed;
    printf("  seed %llu\n", (unsigned long long)seed);
    ml_manual_seed(seed);
    struct { int nd; int64_t s[4]; } fixed[] = {
        {2, {3, 100000}}, {2, {100000, 3}}, {3, {2, 50000, 3}}, {3, {5, 2000, 20}}, {2, {1, 300000}},
        {4, {2, 3, 4, 5}}, {1, {7}}, {3, {400, 1, 300}}, {2, {70000, 2}}};
    uint32_t r[4];
    for (int trial = 0; trial < 60; trial++) {
        ml_philox((uint64_t)trial, seed, r);
        int nd;
        int64_t shape[4];
        if (trial < (int)(sizeof fixed / sizeof fixed[0])) {
            nd = fixed[trial].nd;
            memcpy(shape, fixed[trial].s, sizeof shape);
        } else {
            nd = 1 + (int)(r[0] % 4);
            for (int i = 0; i < nd; i++) shape[i] = 1 + (int64_t)((r[1] >> (5 * i)) % 7);
        }
        ml_tensor *x, *xin;
        ML_CHECK_OK(ml_randn(&x, ML_F64, nd, shape));
        bool transposed = (r[2] & 1) && nd >= 2;
        if (transposed) { /* same logical values, non-contiguous */
            ml_tensor *t1, *t2;
            ML_CHECK_OK(ml_transpose(&t1, x, 0, nd - 1));
            ML_CHECK_OK(ml_contiguous(&t2, t1));
            ML_CHECK_OK(ml_transpose(&xin, t2, 0, nd - 1));
            ml_tensor_release(t1); ml_tensor_release(t2);
        } else {
            xin = x;
            ml_tensor_retain(xin);
        }
        int dims[4], ndims = 0;
        bool red[ML_MAX_DIMS] = {0};
        unsigned mask = (r[3] % ((1u << nd) + 1));
        for (int i = 0; i < nd; i++) if ((mask >> i) & 1) { dims[ndims++] = i - ((r[2] >> (i + 4)) & 1 ? nd : 0); red[i] = true; }
        if (ndims == 0) for (int i = 0; i < nd; i++) red[i] = true; /* ndims = 0: all */
        bool keep = (r[2] >> 1) & 1;
        int64_t nout = 1;
        for (int i = 0; i < nd; i++) if (!red[i]) nout *= shape[i];
        double *want = malloc(sizeof(double) * (size_t)nout);
        for (int op = 0; op < ML_NREDOPS; op++) {
            ml_tensor *res;
            ML_CHECK_OK(ml_reduce(&res, (ml_redop)op, xin, ndims, dims, keep));
            if (!res) continue;
            naive_reduce(x, red, (ml_redop)op, want, nout);
            ML_CHECK(ml_tensor_numel(res) == nout && res->ndim == (keep ? nd : nd - (ndims ? ndims : nd)));
            double worst = 0;
            const double *rd = ml_tensor_data(res);
            for (int64_t o = 0; o < nout; o++) {
                double tol = 1e-12 * (1 + fabs(want[o])) * (op == ML_RPROD ? 1e3 : 1);
                double d = fabs(rd[o] - want[o]) / tol;
                if (!(d <= worst)) worst = d;
            }
            if (worst > 1)
                ML_FAIL_("trial %d %s over mask %u of %s (keepdim %d, transposed %d): error %.3g x tol", trial,
                         op == 0 ? "sum" : op == 1 ? "mean" : op == 2 ? "prod" : op == 3 ? "amax" : op == 4 ? "amin" : "logsumexp",
                         mask, ml_shape_str(nd, shape), keep, transposed, worst);
            ml_tensor_release(res);
        }
        free(want);
        ml_tensor_release(x);
        ml_tensor_release(xin);
    }
}

ML_TEST(var_std_norm_values) {
    double v[] = {1, 2, 3, 4, 2, 2, 2, 6};
    ml_tensor *x = from_f64(2, (int64_t[]){2, 4}, v), *r;
    ML_CHECK_OK(ml_var(&r, x, 1, (int[]){1}, 1, false, false));
    ML_CHECK_NEAR(at1(r, 0), 5.0 / 3.0, 1e-15);
    ML_CHECK_NEAR(at1(r, 1), 12.0 / 3.0, 1e-15);
    ml_tensor_release(r);
    ML_CHECK_OK(ml_var(&r, x, 1, (int[]){-1}, 0, true, false));
    ML_CHECK(r->ndim == 2 && r->shape[1] == 1);
    ML_CHECK_NEAR(at2(r, 0, 0), 1.25, 1e-15);
    ml_tensor_release(r);
    ML_CHECK_OK(ml_var(&r, x, 0, NULL, 1, false, true));
    double mean = 22.0 / 8, ss = 0;
    for (int i = 0; i < 8; i++) ss += (v[i] - mean) * (v[i] - mean);
    ML_CHECK_NEAR(ml_tensor_item(r), sqrt(ss / 7), 1e-14);
    ml_tensor_release(r);
    ML_CHECK_OK(ml_var(&r, x, 1, (int[]){0}, 2, false, false)); /* N - correction = 0 */
    ML_CHECK(isinf(at1(r, 0)) || isnan(at1(r, 0)));
    ml_tensor_release(r);
    /* f32 variance of values with a large offset stays accurate (two-pass) */
    ml_tensor *f;
    int64_t n = 100000;
    ML_CHECK_OK(ml_arange(&f, ML_F32, 0, (double)n, 1));
    float *fd = ml_tensor_data(f);
    for (int64_t i = 0; i < n; i++) fd[i] = 10000.0f + (float)(i % 2);
    ML_CHECK_OK(ml_var(&r, f, 0, NULL, 0, false, false));
    ML_CHECK_NEAR(ml_tensor_item(r), 0.25, 1e-6);
    ml_tensor_release(r);
    ml_tensor_release(f);
    /* norms */
    double nv[] = {3, -4, 0, 1, -1, 0};
    ml_tensor *y = from_f64(2, (int64_t[]){2, 3}, nv);
    struct { double p; double want0, want1; } cases[] = {
        {2, 5, sqrt(2.0)}, {1, 7, 2}, {INFINITY, 4, 1}, {-INFINITY, 0, 0}, {0, 2, 2}, {3, cbrt(27 + 64), cbrt(2.0)}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        ML_CHECK_OK(ml_norm(&r, y, cases[k].p, 1, (int[]){1}, false));
        if (!r) continue;
        if (fabs(at1(r, 0) - cases[k].want0) > 1e-14 || fabs(at1(r, 1) - cases[k].want1) > 1e-14)
            ML_FAIL_("norm p=%g: got %g %g, expected %g %g", cases[k].p, at1(r, 0), at1(r, 1), cases[k].want0,
                     cases[k].want1);
        ml_tensor_release(r);
    }
    ML_CHECK_OK(ml_norm(&r, y, 2, 0, NULL, true));
    ML_CHECK(r->ndim == 2 && r->shape[0] == 1);
    ML_CHECK_NEAR(ml_tensor_item(r), sqrt(27.0), 1e-14);
    ml_tensor_release(r);
    ML_CHECK_ERR(ml_norm(&r, y, NAN, 0, NULL, false), ML_ERR_ARG);
    ml_tensor_release(y);
    ml_tensor_release(x);
}

ML_TEST(max_min_argmax) {
    double v[] = {1, 5, 5, 2, /**/ 7, 0, 7, -1, /**/ NAN, 3, NAN, 9};
    ml_tensor *x = from_f64(2, (int64_t[]){3, 4}, v), *val, *idx;
    ML_CHECK_OK(ml_max_dim(&val, &idx, x, 1, false));
    ML_CHECK(idx->dtype == ML_I64 && val->ndim == 1 && val->shape[0] == 3);
    ML_CHECK(at1(val, 0) == 5 && at1(idx, 0) == 1);  /* first occurrence of the tie */
    ML_CHECK(at1(val, 1) == 7 && at1(idx, 1) == 0);
    ML_CHECK(isnan(at1(val, 2)) && at1(idx, 2) == 0); /* NaN propagates, first NaN */
    ml_tensor_release(val); ml_tensor_release(idx);
    ML_CHECK_OK(ml_min_dim(&val, &idx, x, 0, true));
    ML_CHECK(val->ndim == 2 && val->shape[0] == 1 && val->shape[1] == 4);
    ML_CHECK(isnan(at2(val, 0, 0)) && at2(idx, 0, 0) == 2 && at2(val, 0, 1) == 0 && at2(idx, 0, 1) == 1);
    ML_CHECK(at2(val, 0, 3) == -1 && at2(idx, 0, 3) == 1);
    ml_tensor_release(val); ml_tensor_release(idx);
    ML_CHECK_OK(ml_argmax(&idx, x, ML_ALL_DIMS, false));
    ML_CHECK(idx->ndim == 0 && ml_tensor_item(idx) == 8);
    ml_tensor_release(idx);
    ML_CHECK_OK(ml_argmax(&idx, x, ML_ALL_DIMS, true));
    ML_CHECK(idx->ndim == 2 && idx->shape[0] == 1 && idx->shape[1] == 1);
    ml_tensor_release(idx);
    ML_CHECK_OK(ml_argmin(&idx, x, -1, false));
    ML_CHECK(at1(idx, 0) == 0 && at1(idx, 1) == 3 && at1(idx, 2) == 0);
    ml_tensor_release(idx);
    /* ints, ties, 0-d */
    int32_t iv[] = {4, 9, 9, 1};
    ml_tensor *it;
    ML_CHECK_OK(ml_tensor_from_data(&it, ML_I32, 1, (int64_t[]){4}, iv));
    ML_CHECK_OK(ml_max_dim(&val, &idx, it, 0, false));
    ML_CHECK(val->dtype == ML_I32 && ml_tensor_item(val) == 9 && ml_tensor_item(idx) == 1);
    ml_tensor_release(val); ml_tensor_release(idx);
    ml_tensor_release(it);
    ml_tensor *s;
    ML_CHECK_OK(ml_full(&s, ML_F32, 0, NULL, 3));
    ML_CHECK_OK(ml_max_dim(&val, &idx, s, 0, false));
    ML_CHECK(val->ndim == 0 && ml_tensor_item(val) == 3 && ml_tensor_item(idx) == 0);
    ml_tensor_release(val); ml_tensor_release(idx);
    ml_tensor_release(s);
    ML_CHECK_ERR(ml_max_dim(&val, &idx, x, ML_ALL_DIMS, false), ML_ERR_DIM);
    ml_tensor *e;
    ML_CHECK_OK(ml_zeros(&e, ML_F32, 2, (int64_t[]){2, 0}));
    ML_CHECK_ERR(ml_argmax(&idx, e, 1, false), ML_ERR_ARG);
    ml_tensor_release(e);
    /* large flat argmax (threaded split) with a tie: first occurrence wins */
    int64_t n = 1000001;
    ml_tensor *big;
    ML_CHECK_OK(ml_zeros(&big, ML_F32, 1, &n));
    float *bd = ml_tensor_data(big);
    bd[700000] = 5;
    bd[900000] = 5;
    bd[12] = -1;
    ML_CHECK_OK(ml_argmax(&idx, big, ML_ALL_DIMS, false));
    ML_CHECK(ml_tensor_item(idx) == 700000);
    ml_tensor_release(idx);
    ML_CHECK_OK(ml_argmin(&idx, big, 0, false));
    ML_CHECK(ml_tensor_item(idx) == 12);
    ml_tensor_release(idx);
    /* inner > 1, large */
    ml_tensor *b2;
    ML_CHECK_OK(ml_view(&b2, big, 2, (int64_t[]){1, n}));
    ML_CHECK_OK(ml_max_dim(&val, &idx, b2, 0, false));
    ML_CHECK(at1(idx, 700000) == 0 && at1(val, 700000) == 5);
    ml_tensor_release(val); ml_tensor_release(idx);
    ml_tensor_release(b2);
    ml_tensor_release(big);
    ml_tensor_release(x);
}

ML_TEST(cumsum_values) {
    ml_tensor *a, *m, *r;
    ML_CHECK_OK(ml_arange(&a, ML_F32, 1, 7, 1));
    ML_CHECK_OK(ml_view(&m, a, 2, (int64_t[]){2, 3}));
    ML_CHECK_OK(ml_cumsum(&r, m, 1));
    ML_CHECK(at2(r, 0, 2) == 6 && at2(r, 1, 0) == 4 && at2(r, 1, 2) == 15 && r->dtype == ML_F32);
    ml_tensor_release(r);
    ML_CHECK_OK(ml_cumsum(&r, m, 0));
    ML_CHECK(at2(r, 1, 0) == 5 && at2(r, 1, 2) == 9 && at2(r, 0, 1) == 2);
    ml_tensor_release(r);
    ml_tensor *t;
    ML_CHECK_OK(ml_transpose(&t, m, 0, 1)); /* strided */
    ML_CHECK_OK(ml_cumsum(&r, t, -1));
    ML_CHECK(at2(r, 2, 1) == 9);
    ml_tensor_release(r);
    ml_tensor_release(t);
    ml_tensor *i;
    ML_CHECK_OK(ml_arange(&i, ML_I32, 0, 5, 1));
    ML_CHECK_OK(ml_cumsum(&r, i, 0));
    ML_CHECK(r->dtype == ML_I64 && at1(r, 4) == 10);
    ml_tensor_release(r);
    ml_tensor_release(i);
    /* long f32 cumsum accumulates in double */
    int64_t n = 1 << 22;
    ml_tensor *o;
    ML_CHECK_OK(ml_full(&o, ML_F32, 1, &n, 0.1));
    ML_CHECK_OK(ml_cumsum(&r, o, 0));
    ML_CHECK_NEAR(at1(r, n - 1), (double)n * (double)0.1f, 1e-7 * n * 0.1);
    ml_tensor_release(r);
    ml_tensor_release(o);
    ml_tensor_release(m);
    ml_tensor_release(a);
}

ML_TEST(sum_to_values) {
    ml_tensor *a, *r;
    ML_CHECK_OK(ml_ones(&a, ML_F64, 3, (int64_t[]){2, 3, 4}));
    ML_CHECK_OK(ml_sum_to(&r, a, 2, (int64_t[]){3, 1}));
    ML_CHECK(r->ndim == 2 && r->shape[0] == 3 && r->shape[1] == 1 && at2(r, 2, 0) == 8);
    ml_tensor_release(r);
    ML_CHECK_OK(ml_sum_to(&r, a, 0, NULL));
    ML_CHECK(r->ndim == 0 && ml_tensor_item(r) == 24);
    ml_tensor_release(r);
    ML_CHECK_OK(ml_sum_to(&r, a, 3, (int64_t[]){2, 3, 4}));
    ML_CHECK(r == a);
    ml_tensor_release(r);
    ML_CHECK_ERR(ml_sum_to(&r, a, 2, (int64_t[]){2, 4}), ML_ERR_SHAPE);
    ML_CHECK(strstr(ml_errmsg(), "sum_to") && strstr(ml_errmsg(), "[2, 3, 4]") && strstr(ml_errmsg(), "[2, 4]"));
    ML_CHECK_ERR(ml_sum_to(&r, a, 4, (int64_t[]){1, 2, 3, 4}), ML_ERR_SHAPE);
    ml_tensor_release(a);
}

/* ------------------------------------------------------------ gradients */
typedef struct {
    int kind; /* 0 reduce, 1 var, 2 norm, 3 max_dim, 4 min_dim, 5 cumsum */
    int op;
    int ndims;
    int dims[4];
    bool keep;
    double p;
} rud;

static ml_err f_red(ml_tensor **out, ml_tensor **in, void *ud) {
    rud *u = ud;
    switch (u->kind) {
    case 0: return ml_reduce(out, (ml_redop)u->op, in[0], u->ndims, u->dims, u->keep);
    case 1: return ml_var(out, in[0], u->ndims, u->dims, u->p, u->keep, u->op);
    case 2: return ml_norm(out, in[0], u->p, u->ndims, u->dims, u->keep);
    case 3:
    case 4: {
        ml_tensor *ix;
        ml_err e = u->kind == 3 ? ml_max_dim(out, &ix, in[0], u->dims[0], u->keep)
                                : ml_min_dim(out, &ix, in[0], u->dims[0], u->keep);
        ml_tensor_release(ix);
        return e;
    }
    default: return ml_cumsum(out, in[0], u->dims[0]);
    }
}

ML_TEST(reduce_gradients) {
    printf("  seed %llu\n", (unsigned long long)g_seed + 1);
    ml_manual_seed(g_seed + 1);
    int64_t sh[3] = {3, 4, 5};
    struct { int ndims; int dims[3]; bool keep; } ds[] = {{0, {0}, false}, {1, {1}, false}, {2, {0, 2}, true},
                                                            {1, {-1}, true}, {2, {2, 0}, false}};
    for (int op = 0; op < ML_NREDOPS; op++) {
        for (size_t k = 0; k < sizeof ds / sizeof ds[0]; k++) {
            ml_tensor *x = ml_t_randn(3, sh, true);
            if (op == ML_RPROD) { /* moderate magnitudes, no zeros */
                double *d = ml_tensor_data(x);
                for (int i = 0; i < 60; i++) d[i] = (d[i] > 0 ? 1 : -1) * (0.7 + 0.3 * fabs(d[i]));
            }
            rud u = {.kind = 0, .op = op, .ndims = ds[k].ndims, .keep = ds[k].keep};
            memcpy(u.dims, ds[k].dims, sizeof ds[k].dims);
            char what[64];
            snprintf(what, sizeof what, "reduce op %d dims case %zu", op, k);
            ml_gradcheck(what, f_red, 1, &x, &u, 1e-6, 1e-6, 1e-5);
            ml_tensor_release(x);
        }
    }
    for (size_t k = 0; k < sizeof ds / sizeof ds[0]; k++) {
        ml_tensor *x = ml_t_randn(3, sh, true);
        for (int sq = 0; sq < 2; sq++) {
            rud u = {.kind = 1, .op = sq, .ndims = ds[k].ndims, .keep = ds[k].keep, .p = k % 2 ? 0 : 1};
            memcpy(u.dims, ds[k].dims, sizeof ds[k].dims);
            ml_gradcheck(sq ? "std" : "var", f_red, 1, &x, &u, 1e-6, 1e-6, 1e-5);
        }
        double ps[] = {2, 1, 3, 1.5, INFINITY, -INFINITY, 0};
        for (size_t j = 0; j < sizeof ps / sizeof ps[0]; j++) {
            rud u = {.kind = 2, .ndims = ds[k].ndims, .keep = ds[k].keep, .p = ps[j]};
            memcpy(u.dims, ds[k].dims, sizeof ds[k].dims);
            char what[64];
            snprintf(what, sizeof what, "norm p=%g dims case %zu", ps[j], k);
            ml_gradcheck(what, f_red, 1, &x, &u, 1e-6, 1e-6, 1e-5);
        }
        ml_tensor_release(x);
    }
    for (int d = -1; d < 3; d++) {
        ml_tensor *x = ml_t_randn(3, sh, true);
        for (int kind = 3; kind <= 5; kind++) {
            rud u = {.kind = kind, .dims = {d}, .keep = d == 1};
            ml_gradcheck(kind == 3 ? "max_dim" : kind == 4 ? "min_dim" : "cumsum", f_red, 1, &x, &u, 1e-6, 1e-6, 1e-5);
        }
        ml_tensor_release(x);
    }
    /* f32 grads through mean stay f32 */
    ml_tensor *f, *r;
    ML_CHECK_OK(ml_ones(&f, ML_F32, 2, (int64_t[]){2, 2}));
    ml_set_requires_grad(f, true);
    ML_CHECK_OK(ml_reduce(&r, ML_RMEAN, f, 0, NULL, false));
    ML_CHECK_OK(ml_backward(r, NULL, false));
    ML_CHECK(f->grad && f->grad->dtype == ML_F32 && at2(f->grad, 1, 1) == 0.25);
    ml_tensor_release(r);
    ml_tensor_release(f);
}

/* random shapes and dim subsets through the gradient checker */
ML_TEST(random_reduce_gradients) {
    uint64_t seed = g_seed + 2;
    printf("  seed %llu\n", (unsigned long long)seed);
    ml_manual_seed(seed);
    uint32_t r[4];
    for (int trial = 0; trial < 16; trial++) {
        ml_philox((uint64_t)trial + 77, seed, r);
        int nd = 1 + (int)(r[0] % 3);
        int64_t sh[3];
        for (int i = 0; i < nd; i++) sh[i] = 1 + (int64_t)((r[1] >> (3 * i)) % 4);
        rud u = {.keep = r[2] & 1};
        for (int i = 0; i < nd; i++) if ((r[3] >> i) & 1) u.dims[u.ndims++] = ((r[3] >> (i + 8)) & 1) ? i - nd : i;
        int which = trial % 4;
        if (which < 2) { u.kind = 0; u.op = which == 0 ? ML_RMEAN : ML_RLOGSUMEXP; }
        else if (which == 2) { u.kind = 1; u.op = 1; u.p = 1; }
        else { u.kind = 2; u.p = 2; }
        ml_tensor *x = ml_t_randn(nd, sh, true);
        char what[96];
        snprintf(what, sizeof what, "kind %d op %d on %s (%d dims, keepdim %d)", u.kind, u.op, ml_shape_str(nd, sh),
                 u.ndims, u.keep);
        /* std over one element is NaN (correction 1): skip those */
        int64_t cnt = 1;
        for (int i = 0; i < nd; i++) {
            bool red = u.ndims == 0;
            for (int k = 0; k < u.ndims; k++) red |= (u.dims[k] + nd) % nd == i;
            if (red) cnt *= sh[i];
        }
        if (!(u.kind == 1 && cnt < 2)) ml_gradcheck(what, f_red, 1, &x, &u, 1e-6, 1e-6, 1e-5);
        ml_tensor_release(x);
    }
}

ML_TEST(special_gradients) {
    /* prod with one zero: the zero gets the product of the others; two zeros: all zero */
    double v[] = {2, 0, 3, /**/ 0, 5, 0};
    ml_tensor *x = from_f64(2, (int64_t[]){2, 3}, v), *r, *g;
    ml_set_requires_grad(x, true);
    ML_CHECK_OK(ml_reduce(&r, ML_RPROD, x, 1, (int[]){1}, false));
    ML_CHECK_OK(ml_ones(&g, ML_F64, 1, (int64_t[]){2}));
    ML_CHECK_OK(ml_backward(r, g, false));
    ML_CHECK(at2(x->grad, 0, 0) == 0 && at2(x->grad, 0, 1) == 6 && at2(x->grad, 0, 2) == 0);
    ML_CHECK(at2(x->grad, 1, 0) == 0 && at2(x->grad, 1, 1) == 0 && at2(x->grad, 1, 2) == 0);
    ml_tensor_release(r); ml_tensor_release(g); ml_tensor_release(x);
    /* amax ties share the gradient evenly; max_dim sends it to the first index */
    double w[] = {1, 4, 4, 4, 2, 0};
    x = from_f64(1, (int64_t[]){6}, w);
    ml_set_requires_grad(x, true);
    ML_CHECK_OK(ml_reduce(&r, ML_RAMAX, x, 0, NULL, false));
    ML_CHECK_OK(ml_backward(r, NULL, false));
    ML_CHECK_NEAR(at1(x->grad, 1), 1.0 / 3, 1e-15);
    ML_CHECK(at1(x->grad, 0) == 0 && at1(x->grad, 3) == at1(x->grad, 2));
    ml_tensor_release(r);
    ml_tensor_release(x->grad);
    x->grad = NULL;
    ml_tensor *ix;
    ML_CHECK_OK(ml_max_dim(&r, &ix, x, 0, false));
    ML_CHECK_OK(ml_backward(r, NULL, false));
    ML_CHECK(at1(x->grad, 1) == 1 && at1(x->grad, 2) == 0);
    ml_tensor_release(r); ml_tensor_release(ix);
    ml_tensor_release(x->grad);
    x->grad = NULL;
    /* norm-2 of zeros has a zero (not NaN) gradient */
    ml_tensor *z;
    ML_CHECK_OK(ml_zeros(&z, ML_F64, 1, (int64_t[]){3}));
    ml_set_requires_grad(z, true);
    ML_CHECK_OK(ml_norm(&r, z, 2, 0, NULL, false));
    ML_CHECK_OK(ml_backward(r, NULL, false));
    ML_CHECK(at1(z->grad, 0) == 0);
    ml_tensor_release(r); ml_tensor_release(z);
    ml_tensor_release(x);
    /* sum backward through broadcasting (expand + sum_to) */
    ml_tensor *a = ml_t_randn(2, (int64_t[]){3, 1}, true), *b = ml_t_randn(1, (int64_t[]){4}, true), *c;
    ML_CHECK_OK(ml_binary(&c, ML_ADD, a, b));
    ML_CHECK_OK(ml_reduce(&r, ML_RSUM, c, 0, NULL, false));
    ML_CHECK_OK(ml_backward(r, NULL, false));
    ML_CHECK(at2(a->grad, 2, 0) == 4 && at1(b->grad, 3) == 3);
    ml_tensor_release(r); ml_tensor_release(c); ml_tensor_release(a); ml_tensor_release(b);
}

int main(int argc, char **argv) {
    g_seed = argc > 1 ? strtoull(argv[1], NULL, 10) : 20261125;
    ML_RUN(sum_mean_prod_values);
    ML_RUN(reduce_dtypes_and_errors);
    ML_RUN(sum_accuracy_large);
    ML_RUN(reduce_vs_naive_random);
    ML_RUN(var_std_norm_values);
    ML_RUN(max_min_argmax);
    ML_RUN(cumsum_values);
    ML_RUN(sum_to_values);
    ML_RUN(reduce_gradients);
    ML_RUN(random_reduce_gradients);
    ML_RUN(special_gradients);
    return ml_test_summary();
}
