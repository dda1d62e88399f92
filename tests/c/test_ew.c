/* Elementwise ops: values, broadcasting, dtype promotion, integer paths, in-place semantics,
 * errors, finite-difference gradients (f64) for every differentiable op, fused optimizer updates.
 * Usage: test_ew [seed] */
#include "ml_test.h"
#include "tensor/ml_iter.h"

static uint64_t g_seed;

/* ---------------------------------------------------------------- helpers */
static ml_tensor *from_f64(int ndim, const int64_t *shape, const double *v) {
    ml_tensor *t = NULL;
    if (ml_tensor_from_data(&t, ML_F64, ndim, shape, v) != ML_OK) return NULL;
    return t;
}

static ml_tensor *cast(ml_tensor *t, ml_dtype dt) {
    ml_tensor *c = NULL;
    ml_to_dtype(&c, t, dt);
    return c;
}

static double at1(const ml_tensor *t, int64_t i) { return ml_tensor_get(t, (int64_t[]){i}); }

/* random f64 tensor with values in [lo, hi) (optionally kept away from `avoid` by `gap`) */
static ml_tensor *rand_range(int ndim, const int64_t *shape, double lo, double hi, bool req) {
    ml_tensor *t = NULL;
    ml_rand(&t, ML_F64, ndim, shape);
    double *d = ml_tensor_data(t);
    for (int64_t i = 0; i < ml_tensor_numel(t); i++) d[i] = lo + (hi - lo) * d[i];
    if (req) ml_set_requires_grad(t, true);
    return t;
}

static void push_away(ml_tensor *t, double from, double gap) {
    double *d = ml_tensor_data(t);
    for (int64_t i = 0; i < ml_tensor_numel(t); i++)
        if (fabs(d[i] - from) < gap) d[i] = d[i] < from ? from - gap - fabs(d[i] - from) : from + gap + fabs(d[i] - from);
}

/* ---------------------------------------------------------------- values */
ML_TEST(binary_values_and_broadcast) {
    ml_tensor *a, *b, *c;
    ML_CHECK_OK(ml_arange(&a, ML_F32, 0, 12, 1));
    ml_tensor *a3;
    ML_CHECK_OK(ml_view(&a3, a, 3, (int64_t[]){3, 1, 4}));
    ML_CHECK_OK(ml_arange(&b, ML_F32, 10, 12, 1));
    ml_tensor *b2;
    ML_CHECK_OK(ml_view(&b2, b, 2, (int64_t[]){2, 1}));
    ML_CHECK_OK(ml_binary(&c, ML_ADD, a3, b2));
    ML_CHECK(c->ndim == 3 && c->shape[0] == 3 && c->shape[1] == 2 && c->shape[2] == 4 && c->dtype == ML_F32);
    int ok = 1;
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 2; j++)
            for (int k = 0; k < 4; k++) ok &= ml_tensor_get(c, (int64_t[]){i, j, k}) == (i * 4 + k) + (10 + j);
    ML_CHECK(ok);
    ml_tensor_release(c);
    /* every arithmetic op against libm on a few values (f64) */
    double av[] = {-3.5, -1, 0.25, 2, 7.75}, bv[] = {2, -0.5, 3, 0.5, -2.25};
    ml_tensor *x = from_f64(1, (int64_t[]){5}, av), *y = from_f64(1, (int64_t[]){5}, bv);
    for (int op = ML_ADD; op <= ML_ATAN2; op++) {
        ML_CHECK_OK(ml_binary(&c, (ml_binop)op, x, y));
        for (int i = 0; i < 5; i++) {
            double p = av[i], q = bv[i], want;
            switch (op) {
            case ML_ADD: want = p + q; break;
            case ML_SUB: want = p - q; break;
            case ML_MUL: want = p * q; break;
            case ML_DIV: want = p / q; break;
            case ML_POW: want = pow(p, q); break;
            case ML_MAXIMUM: want = fmax(p, q); break;
            case ML_MINIMUM: want = fmin(p, q); break;
            case ML_FMOD: want = fmod(p, q); break;
            default: want = atan2(p, q); break;
            }
            double got = at1(c, i);
            double tol = (op == ML_POW || op == ML_ATAN2) ? 1e-15 * fabs(want) : 0; /* libm vs vector math */
            if (!(fabs(got - want) <= tol || (isnan(got) && isnan(want))))
                ML_FAIL_("%s(%g, %g) = %g, expected %g", ml_binop_name((ml_binop)op), p, q, got, want);
        }
        ml_tensor_release(c);
    }
    /* comparisons / logical give bool */
    ML_CHECK_OK(ml_binary(&c, ML_LT, x, y));
    ML_CHECK(c->dtype == ML_BOOL && at1(c, 0) == 1 && at1(c, 1) == 1 && at1(c, 3) == 0 && at1(c, 4) == 0);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_binary_scalar(&c, ML_GE, x, 2, false));
    ML_CHECK(c->dtype == ML_BOOL && at1(c, 3) == 1 && at1(c, 2) == 0);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_binary(&c, ML_LOGICAL_XOR, x, y));
    ML_CHECK(c->dtype == ML_BOOL && at1(c, 0) == 0);
    ml_tensor_release(c);
    /* scalar ops, both orders */
    ML_CHECK_OK(ml_binary_scalar(&c, ML_SUB, x, 1, true)); /* 1 - x */
    ML_CHECK(at1(c, 0) == 4.5 && at1(c, 4) == -6.75);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_binary_scalar(&c, ML_DIV, x, 2, false));
    ML_CHECK(at1(c, 0) == -1.75);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_binary_scalar(&c, ML_POW, x, 2, false));
    ML_CHECK(at1(c, 0) == 12.25 && at1(c, 2) == 0.0625);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_binary_scalar(&c, ML_POW, x, 2, true)); /* 2^x */
    ML_CHECK(at1(c, 3) == 4 && at1(c, 1) == 0.5);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_binary_scalar(&c, ML_POW, x, 0.5, false));
    ML_CHECK(isnan(at1(c, 0)) && at1(c, 3) == sqrt(2.0));
    ml_tensor_release(c);
    /* NaN propagation of maximum/minimum */
    double nv[] = {NAN, 1, 2};
    ml_tensor *nn = from_f64(1, (int64_t[]){3}, nv);
    ML_CHECK_OK(ml_binary_scalar(&c, ML_MAXIMUM, nn, 1.5, false));
    ML_CHECK(isnan(at1(c, 0)) && at1(c, 1) == 1.5 && at1(c, 2) == 2);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_binary(&c, ML_MINIMUM, y, y)); /* same tensor twice */
    ML_CHECK(ml_t_maxdiff(c, y) == 0);
    ml_tensor_release(c);
    ml_tensor_release(nn);
    ml_tensor_release(x); ml_tensor_release(y);
    ml_tensor_release(a); ml_tensor_release(a3); ml_tensor_release(b); ml_tensor_release(b2);
}

ML_TEST(dtype_promotion) {
    ml_tensor *i32, *i64, *f32, *f64, *bo, *c, *h, *bf;
    ML_CHECK_OK(ml_arange(&i32, ML_I32, 1, 5, 1));
    ML_CHECK_OK(ml_arange(&i64, ML_I64, 1, 5, 1));
    ML_CHECK_OK(ml_arange(&f32, ML_F32, 1, 5, 1));
    ML_CHECK_OK(ml_arange(&f64, ML_F64, 1, 5, 1));
    ML_CHECK_OK(ml_binary_scalar(&bo, ML_GT, i32, 2, false));
    ML_CHECK(bo->dtype == ML_BOOL);
    h = cast(f32, ML_F16);
    bf = cast(f32, ML_BF16);
    struct { ml_tensor *a, *b; ml_binop op; ml_dtype want; } cases[] = {
        {i32, i64, ML_ADD, ML_I64}, {i32, f32, ML_MUL, ML_F32}, {i64, f64, ML_SUB, ML_F64},
        {f32, f64, ML_ADD, ML_F64}, {i32, i32, ML_DIV, ML_F32}, {i64, i64, ML_ATAN2, ML_F32},
        {bo, bo, ML_ADD, ML_BOOL}, {bo, i32, ML_MUL, ML_I32}, {h, bf, ML_ADD, ML_F32},
        {bf, bf, ML_MUL, ML_BF16}, {h, f32, ML_ADD, ML_F32}, {h, h, ML_DIV, ML_F16},
        {i32, i32, ML_POW, ML_I32}, {f32, i64, ML_EQ, ML_BOOL}, {bo, bo, ML_LOGICAL_AND, ML_BOOL}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        ML_CHECK_OK(ml_binary(&c, cases[k].op, cases[k].a, cases[k].b));
        if (c && (ml_dtype)c->dtype != cases[k].want)
            ML_FAIL_("case %zu: %s(%s, %s) gave %s, expected %s", k, ml_binop_name(cases[k].op),
                     ml_dtype_name((ml_dtype)cases[k].a->dtype), ml_dtype_name((ml_dtype)cases[k].b->dtype),
                     ml_dtype_name((ml_dtype)c->dtype), ml_dtype_name(cases[k].want));
        ml_tensor_release(c);
    }
    /* true division of ints */
    ML_CHECK_OK(ml_binary_scalar(&c, ML_DIV, i32, 2, false));
    ML_CHECK(c->dtype == ML_F32 && at1(c, 2) == 1.5);
    ml_tensor_release(c);
    /* float scalar on an int tensor -> f32; int scalar keeps the int dtype; bool + int -> int64 */
    ML_CHECK_OK(ml_binary_scalar(&c, ML_MUL, i64, 2.5, false));
    ML_CHECK(c->dtype == ML_F32 && at1(c, 1) == 5);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_binary_scalar(&c, ML_ADD, i32, 3, false));
    ML_CHECK(c->dtype == ML_I32 && at1(c, 0) == 4);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_binary_scalar(&c, ML_ADD, bo, 1, false));
    ML_CHECK(c->dtype == ML_I64 && at1(c, 0) == 1 && at1(c, 3) == 2);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_binary_scalar(&c, ML_MUL, f32, 1e300, false)); /* scalar keeps f32 */
    ML_CHECK(c->dtype == ML_F32 && isinf(at1(c, 0)));
    ml_tensor_release(c);
    /* bf16 arithmetic rounds back to bf16 */
    ML_CHECK_OK(ml_binary_scalar(&c, ML_MUL, bf, 1.5, false));
    ML_CHECK(c->dtype == ML_BF16 && at1(c, 3) == 6);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_unary(&c, ML_EXP, h));
    ML_CHECK(c->dtype == ML_F16 && fabs(at1(c, 1) - exp(2.0)) < 1e-2);
    ml_tensor_release(c);
    /* unary float ops on ints give f32; neg/abs keep the int dtype */
    ML_CHECK_OK(ml_unary(&c, ML_SQRT, i64));
    ML_CHECK(c->dtype == ML_F32 && fabs(at1(c, 3) - 2) < 1e-7);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_unary(&c, ML_NEG, i64));
    ML_CHECK(c->dtype == ML_I64 && at1(c, 3) == -4);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_unary(&c, ML_ISNAN, i32));
    ML_CHECK(c->dtype == ML_BOOL && at1(c, 0) == 0);
    ml_tensor_release(c);
    ml_tensor_release(i32); ml_tensor_release(i64); ml_tensor_release(f32); ml_tensor_release(f64);
    ml_tensor_release(bo); ml_tensor_release(h); ml_tensor_release(bf);
}

ML_TEST(integer_paths) {
    /* int64 arithmetic is exact beyond 2^53 */
    int64_t big[] = {(int64_t)1 << 53, INT64_MAX - 1, -7, 7};
    int64_t two[] = {1, 1, 2, -2};
    ml_tensor *a, *b, *c;
    ML_CHECK_OK(ml_tensor_from_data(&a, ML_I64, 1, (int64_t[]){4}, big));
    ML_CHECK_OK(ml_tensor_from_data(&b, ML_I64, 1, (int64_t[]){4}, two));
    ML_CHECK_OK(ml_binary(&c, ML_ADD, a, b));
    int64_t *cd = ml_tensor_data(c);
    ML_CHECK(cd[0] == ((int64_t)1 << 53) + 1 && cd[1] == INT64_MAX);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_binary(&c, ML_FMOD, a, b)); /* C semantics: sign of the dividend */
    cd = ml_tensor_data(c);
    ML_CHECK(cd[2] == -1 && cd[3] == 1);
    ml_tensor_release(c);
    ML_CHECK_ERR(ml_binary(&c, ML_POW, a, b), ML_ERR_ARG); /* 7 ^ -2 */
    ML_CHECK(c == NULL && strstr(ml_errmsg(), "pow"));
    ML_CHECK_OK(ml_binary_scalar(&c, ML_POW, b, 3, false));
    cd = ml_tensor_data(c);
    ML_CHECK(cd[2] == 8 && cd[3] == -8);
    ml_tensor_release(c);
    ml_tensor *z;
    ML_CHECK_OK(ml_zeros(&z, ML_I64, 1, (int64_t[]){4}));
    ML_CHECK_ERR(ml_binary(&c, ML_FMOD, a, z), ML_ERR_ARG);
    ML_CHECK(strstr(ml_errmsg(), "division by zero") != NULL);
    ML_CHECK_OK(ml_binary(&c, ML_MAXIMUM, a, z));
    cd = ml_tensor_data(c);
    ML_CHECK(cd[2] == 0 && cd[1] == INT64_MAX - 1);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_unary(&c, ML_ABS, a));
    ML_CHECK(((int64_t *)ml_tensor_data(c))[2] == 7);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_clamp(&c, a, -3, 5));
    cd = ml_tensor_data(c);
    ML_CHECK(c->dtype == ML_I64 && cd[0] == 5 && cd[2] == -3 && cd[3] == 5);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_clamp(&c, a, -2.5, INFINITY)); /* non-integer bound: float result */
    ML_CHECK(c->dtype == ML_F32 && at1(c, 2) == -2.5);
    ml_tensor_release(c);
    ml_tensor *bo;
    ML_CHECK_OK(ml_binary_scalar(&bo, ML_GT, a, 0, false));
    ML_CHECK_ERR(ml_unary(&c, ML_NEG, bo), ML_ERR_DTYPE);
    ML_CHECK_OK(ml_unary(&c, ML_LOGICAL_NOT, bo));
    ML_CHECK(c->dtype == ML_BOOL && at1(c, 2) == 1 && at1(c, 0) == 0);
    ml_tensor_release(c);
    /* u8 wraps like PyTorch */
    ml_tensor *u;
    ML_CHECK_OK(ml_full(&u, ML_U8, 1, (int64_t[]){2}, 250));
    ML_CHECK_OK(ml_binary_scalar(&c, ML_ADD, u, 10, false));
    ML_CHECK(c->dtype == ML_U8 && at1(c, 0) == 4);
    ml_tensor_release(c);
    ml_tensor_release(u); ml_tensor_release(bo); ml_tensor_release(z);
    ml_tensor_release(a); ml_tensor_release(b);
}

ML_TEST(unary_values) {
    double xv[] = {-2.5, -0.5, 0.3, 1.5, 3.0};
    ml_tensor *x = from_f64(1, (int64_t[]){5}, xv), *xf = cast(x, ML_F32), *c, *cf;
    for (int op = 0; op < ML_NUNOPS; op++) {
        ML_CHECK_OK(ml_unary(&c, (ml_unop)op, x));
        ML_CHECK_OK(ml_unary(&cf, (ml_unop)op, xf));
        for (int i = 0; i < 5; i++) {
            double v = xv[i], want;
            switch (op) {
            case ML_NEG: want = -v; break;
            case ML_EXP: want = exp(v); break;
            case ML_LOG: want = log(v); break;
            case ML_SQRT: want = sqrt(v); break;
            case ML_RSQRT: want = 1 / sqrt(v); break;
            case ML_ABS: want = fabs(v); break;
            case ML_SIGN: want = (v > 0) - (v < 0); break;
            case ML_FLOOR: want = floor(v); break;
            case ML_CEIL: want = ceil(v); break;
            case ML_ROUND: want = nearbyint(v); break;
            case ML_TRUNC: want = trunc(v); break;
            case ML_SIN: want = sin(v); break;
            case ML_COS: want = cos(v); break;
            case ML_TAN: want = tan(v); break;
            case ML_TANH: want = tanh(v); break;
            case ML_SIGMOID: want = 1 / (1 + exp(-v)); break;
            case ML_RELU: want = v > 0 ? v : 0; break;
            case ML_GELU: want = 0.5 * v * (1 + erf(v / sqrt(2.0))); break;
            case ML_GELU_TANH: want = 0.5 * v * (1 + tanh(sqrt(2 / M_PI) * (v + 0.044715 * v * v * v))); break;
            case ML_SILU: want = v / (1 + exp(-v)); break;
            case ML_SOFTPLUS: want = log1p(exp(v)); break;
            case ML_LOG1P: want = log1p(v); break;
            case ML_EXPM1: want = expm1(v); break;
            case ML_RECIPROCAL: want = 1 / v; break;
            case ML_SQUARE: want = v * v; break;
            case ML_ERF: want = erf(v); break;
            case ML_LOGICAL_NOT: want = v == 0; break;
            case ML_ISNAN: want = 0; break;
            default: want = 0; break;
            }
            double got = at1(c, i), gotf = at1(cf, i);
            bool both_nan = isnan(want) && isnan(got);
            if (!both_nan && !(fabs(got - want) <= 1e-14 * (1 + fabs(want))))
                ML_FAIL_("%s(%g) = %.17g, expected %.17g", ml_unop_name((ml_unop)op), v, got, want);
            if (!(isnan(want) && isnan(gotf)) && !(fabs(gotf - want) <= 2e-6 * (1 + fabs(want))))
                ML_FAIL_("f32 %s(%g) = %.9g, expected %.9g", ml_unop_name((ml_unop)op), v, gotf, want);
        }
        ml_tensor_release(c);
        ml_tensor_release(cf);
    }
    /* softplus is stable at large |x|; isinf/isnan */
    double sv[] = {-1000, 1000, INFINITY, NAN};
    ml_tensor *s = from_f64(1, (int64_t[]){4}, sv);
    ML_CHECK_OK(ml_unary(&c, ML_SOFTPLUS, s));
    ML_CHECK(at1(c, 0) == 0 && at1(c, 1) == 1000 && isinf(at1(c, 2)) && isnan(at1(c, 3)));
    ml_tensor_release(c);
    ML_CHECK_OK(ml_unary(&c, ML_ISINF, s));
    ML_CHECK(c->dtype == ML_BOOL && at1(c, 2) == 1 && at1(c, 1) == 0 && at1(c, 3) == 0);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_unary(&c, ML_ISNAN, s));
    ML_CHECK(at1(c, 3) == 1 && at1(c, 2) == 0);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_unary(&c, ML_RELU, s));
    ML_CHECK(isnan(at1(c, 3)) && at1(c, 0) == 0);
    ml_tensor_release(c);
    /* round half to even */
    double rv[] = {0.5, 1.5, 2.5, -0.5};
    ml_tensor *r = from_f64(1, (int64_t[]){4}, rv);
    ML_CHECK_OK(ml_unary(&c, ML_ROUND, r));
    ML_CHECK(at1(c, 0) == 0 && at1(c, 1) == 2 && at1(c, 2) == 2 && at1(c, 3) == 0);
    ml_tensor_release(c);
    ml_tensor_release(r); ml_tensor_release(s);
    ml_tensor_release(x); ml_tensor_release(xf);
}

ML_TEST(clamp_where_activations_values) {
    double xv[] = {-2, -0.5, 0.5, 2};
    ml_tensor *x = from_f64(1, (int64_t[]){4}, xv), *c;
    ML_CHECK_OK(ml_clamp(&c, x, -1, 1));
    ML_CHECK(at1(c, 0) == -1 && at1(c, 1) == -0.5 && at1(c, 3) == 1);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_clamp(&c, x, 0, INFINITY));
    ML_CHECK(at1(c, 0) == 0 && at1(c, 3) == 2);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_clamp(&c, x, 1, -1)); /* lo > hi: everything is hi (PyTorch) */
    ML_CHECK(at1(c, 0) == -1 && at1(c, 3) == -1);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_leaky_relu(&c, x, 0.1));
    ML_CHECK(at1(c, 0) == -0.2 && at1(c, 3) == 2);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_elu(&c, x, 1.5));
    ML_CHECK_NEAR(at1(c, 0), 1.5 * expm1(-2.0), 1e-15);
    ML_CHECK(at1(c, 2) == 0.5);
    ml_tensor_release(c);
    /* where with broadcasting: cond [4], a [2,1], b scalar-shaped [1] */
    ml_tensor *cond, *a, *b;
    ML_CHECK_OK(ml_binary_scalar(&cond, ML_GT, x, 0, false));
    ML_CHECK_OK(ml_arange(&a, ML_F32, 1, 3, 1));
    ml_tensor *a2;
    ML_CHECK_OK(ml_view(&a2, a, 2, (int64_t[]){2, 1}));
    ML_CHECK_OK(ml_full(&b, ML_F64, 1, (int64_t[]){1}, -9));
    ML_CHECK_OK(ml_where(&c, cond, a2, b));
    ML_CHECK(c->dtype == ML_F64 && c->ndim == 2 && c->shape[0] == 2 && c->shape[1] == 4);
    ML_CHECK(ml_tensor_get(c, (int64_t[]){0, 0}) == -9 && ml_tensor_get(c, (int64_t[]){1, 2}) == 2 &&
             ml_tensor_get(c, (int64_t[]){0, 3}) == 1);
    ml_tensor_release(c);
    ml_tensor *bad;
    ML_CHECK_OK(ml_arange(&bad, ML_F32, 0, 3, 1));
    ML_CHECK_ERR(ml_where(&c, cond, a2, bad), ML_ERR_SHAPE);
    ML_CHECK(strstr(ml_errmsg(), "where") && strstr(ml_errmsg(), "[3]"));
    ml_tensor_release(bad);
    /* prelu with per-channel weights */
    ml_tensor *in, *w;
    ML_CHECK_OK(ml_arange(&in, ML_F32, -6, 6, 1));
    ml_tensor *in3;
    ML_CHECK_OK(ml_view(&in3, in, 3, (int64_t[]){2, 3, 2}));
    double wv[] = {0.1, 0.2, 0.3};
    ml_tensor *wd = from_f64(1, (int64_t[]){3}, wv);
    w = cast(wd, ML_F32);
    ML_CHECK_OK(ml_prelu(&c, in3, w));
    ML_CHECK(c->dtype == ML_F32);
    ML_CHECK_NEAR(ml_tensor_get(c, (int64_t[]){0, 1, 0}), -4 * 0.2, 1e-6);
    ML_CHECK_NEAR(ml_tensor_get(c, (int64_t[]){0, 2, 1}), -1 * 0.3, 1e-6);
    ML_CHECK(ml_tensor_get(c, (int64_t[]){1, 0, 0}) == 0 && ml_tensor_get(c, (int64_t[]){1, 2, 1}) == 5);
    ml_tensor_release(c);
    ml_tensor *w4;
    ML_CHECK_OK(ml_zeros(&w4, ML_F32, 1, (int64_t[]){4}));
    ML_CHECK_ERR(ml_prelu(&c, in3, w4), ML_ERR_SHAPE);
    ML_CHECK(strstr(ml_errmsg(), "prelu") && strstr(ml_errmsg(), "[2, 3, 2]"));
    ml_tensor_release(w4);
    ml_tensor *ic;
    ML_CHECK_OK(ml_arange(&ic, ML_I32, 0, 3, 1));
    ML_CHECK_ERR(ml_leaky_relu(&c, ic, 0.1), ML_ERR_DTYPE);
    ml_tensor_release(ic);
    ml_tensor_release(in); ml_tensor_release(in3); ml_tensor_release(w); ml_tensor_release(wd);
    ml_tensor_release(cond); ml_tensor_release(a); ml_tensor_release(a2); ml_tensor_release(b);
    ml_tensor_release(x);
}

/* ------------------------------------------------------------- in place */
ML_TEST(inplace_semantics) {
    ml_tensor *a, *b;
    ML_CHECK_OK(ml_arange(&a, ML_F32, 0, 6, 1));
    ML_CHECK_OK(ml_arange(&b, ML_F32, 0, 3, 1));
    ml_tensor *a2;
    ML_CHECK_OK(ml_view(&a2, a, 2, (int64_t[]){2, 3}));
    uint32_t v0 = a->storage->version;
    ML_CHECK_OK(ml_binary_(ML_ADD, a2, b));
    ML_CHECK(a->storage->version == v0 + 1);
    ML_CHECK(ml_tensor_get(a2, (int64_t[]){1, 2}) == 7);
    ML_CHECK_OK(ml_binary_scalar_(ML_MUL, a2, 2));
    ML_CHECK(a->storage->version == v0 + 2 && ml_tensor_get(a2, (int64_t[]){1, 2}) == 14);
    ML_CHECK_OK(ml_unary_(ML_NEG, a2));
    ML_CHECK(a->storage->version == v0 + 3 && at1(a, 5) == -14);
    ML_CHECK_OK(ml_clamp_(a2, -10, 0));
    ML_CHECK(a->storage->version == v0 + 4 && at1(a, 5) == -10);
    /* result does not fit the target */
    ml_tensor *col;
    ML_CHECK_OK(ml_zeros(&col, ML_F32, 2, (int64_t[]){2, 1}));
    ML_CHECK_ERR(ml_binary_(ML_ADD, col, a2), ML_ERR_SHAPE);
    ML_CHECK(strstr(ml_errmsg(), "add_") && strstr(ml_errmsg(), "[2, 1]") && strstr(ml_errmsg(), "[2, 3]"));
    /* float into int target */
    ml_tensor *iv;
    ML_CHECK_OK(ml_arange(&iv, ML_I64, 0, 3, 1));
    ML_CHECK_ERR(ml_binary_(ML_ADD, iv, b), ML_ERR_DTYPE);
    ML_CHECK_ERR(ml_binary_scalar_(ML_DIV, iv, 2), ML_ERR_DTYPE);
    ML_CHECK_OK(ml_binary_scalar_(ML_MUL, iv, 3));
    ML_CHECK(at1(iv, 2) == 6 && iv->dtype == ML_I64);
    ML_CHECK_ERR(ml_unary_(ML_EXP, iv), ML_ERR_DTYPE);
    /* f32 target, f64 operand: computed and stored */
    ml_tensor *d64;
    ML_CHECK_OK(ml_full(&d64, ML_F64, 1, (int64_t[]){3}, 0.5));
    ML_CHECK_OK(ml_binary_(ML_ADD, b, d64));
    ML_CHECK(b->dtype == ML_F32 && at1(b, 2) == 2.5);
    /* overlapping in-place: a = a + a^T on a square matrix */
    ml_tensor *sq, *sqt;
    ML_CHECK_OK(ml_arange(&sq, ML_F64, 0, 9, 1));
    ml_tensor *s2;
    ML_CHECK_OK(ml_view(&s2, sq, 2, (int64_t[]){3, 3}));
    ML_CHECK_OK(ml_transpose(&sqt, s2, 0, 1));
    ML_CHECK_OK(ml_binary_(ML_ADD, s2, sqt));
    ML_CHECK(ml_tensor_get(s2, (int64_t[]){0, 1}) == 1 + 3 && ml_tensor_get(s2, (int64_t[]){1, 0}) == 3 + 1 &&
             ml_tensor_get(s2, (int64_t[]){2, 1}) == 7 + 5);
    /* writing into an expanded view is refused */
    ml_tensor *ex;
    ML_CHECK_OK(ml_expand(&ex, col, 2, (int64_t[]){2, 4}));
    ML_CHECK_ERR(ml_binary_scalar_(ML_ADD, ex, 1), ML_ERR_ARG);
    ml_tensor_release(ex);
    /* leaf that requires grad */
    ml_tensor *leaf = ml_t_randn(1, (int64_t[]){3}, true);
    ML_CHECK_ERR(ml_binary_scalar_(ML_ADD, leaf, 1), ML_ERR_GRAD);
    ML_CHECK(strstr(ml_errmsg(), "leaf") && strstr(ml_errmsg(), "in-place"));
    ML_CHECK_ERR(ml_unary_(ML_RELU, leaf), ML_ERR_GRAD);
    ML_CHECK_ERR(ml_clamp_(leaf, 0, 1), ML_ERR_GRAD);
    ML_CHECK_ERR(ml_binary_(ML_MUL, leaf, leaf), ML_ERR_GRAD);
    ML_CHECK_ERR(ml_lerp_(leaf, leaf, 0.5), ML_ERR_GRAD);
    bool prev = ml_set_grad_enabled(false);
    ML_CHECK_OK(ml_binary_scalar_(ML_ADD, leaf, 1)); /* fine without grad mode */
    ml_set_grad_enabled(prev);
    /* a saved tensor modified in place makes backward fail */
    ml_tensor *x = ml_t_randn(1, (int64_t[]){3}, true), *y, *z;
    ML_CHECK_OK(ml_binary_scalar(&y, ML_MUL, x, 2, false));
    ML_CHECK_OK(ml_unary(&z, ML_EXP, y)); /* saves its output */
    ML_CHECK_OK(ml_binary_scalar_(ML_ADD, z, 1));
    ml_tensor *g;
    ML_CHECK_OK(ml_ones(&g, ML_F64, 1, (int64_t[]){3}));
    ML_CHECK_ERR(ml_backward(z, g, false), ML_ERR_GRAD);
    ML_CHECK(strstr(ml_errmsg(), "modified in place") != NULL);
    ml_tensor_release(g); ml_tensor_release(x); ml_tensor_release(y); ml_tensor_release(z);
    ml_tensor_release(leaf); ml_tensor_release(sq); ml_tensor_release(s2); ml_tensor_release(sqt);
    ml_tensor_release(d64); ml_tensor_release(iv); ml_tensor_release(col);
    ml_tensor_release(a); ml_tensor_release(a2); ml_tensor_release(b);
}

ML_TEST(errors_name_op_and_shapes) {
    ml_tensor *a, *b, *c = (ml_tensor *)1;
    ML_CHECK_OK(ml_zeros(&a, ML_F32, 2, (int64_t[]){2, 3}));
    ML_CHECK_OK(ml_zeros(&b, ML_F32, 2, (int64_t[]){4, 3}));
    ML_CHECK_ERR(ml_binary(&c, ML_MUL, a, b), ML_ERR_SHAPE);
    ML_CHECK(c == NULL);
    ML_CHECK(strstr(ml_errmsg(), "mul") && strstr(ml_errmsg(), "[2, 3]") && strstr(ml_errmsg(), "[4, 3]"));
    ML_CHECK_ERR(ml_binary_(ML_SUB, a, b), ML_ERR_SHAPE);
    ML_CHECK(strstr(ml_errmsg(), "sub_") && strstr(ml_errmsg(), "[4, 3]"));
    ML_CHECK_ERR(ml_axpby_(a, 1, b, 1), ML_ERR_SHAPE);
    ML_CHECK(strstr(ml_errmsg(), "axpby_") != NULL);
    ml_tensor *i;
    ML_CHECK_OK(ml_zeros(&i, ML_I32, 1, (int64_t[]){3}));
    ML_CHECK_ERR(ml_adam_step_(a, a, a, i, 1e-3, 0.9, 0.999, 1e-8, 0, false, 1), ML_ERR_DTYPE);
    ML_CHECK_ERR(ml_adam_step_(a, b, a, a, 1e-3, 0.9, 0.999, 1e-8, 0, false, 1), ML_ERR_SHAPE);
    ML_CHECK_ERR(ml_adam_step_(a, a, a, a, 1e-3, 0.9, 0.999, 1e-8, 0, false, 0), ML_ERR_ARG);
    ML_CHECK_ERR(ml_binary(&c, (ml_binop)99, a, b), ML_ERR_ARG);
    ML_CHECK_ERR(ml_unary(&c, (ml_unop)99, a), ML_ERR_ARG);
    ML_CHECK(strcmp(ml_binop_name(ML_ATAN2), "atan2") == 0 && strcmp(ml_unop_name(ML_GELU_TANH), "gelu_tanh") == 0);
    ml_tensor_release(i); ml_tensor_release(a); ml_tensor_release(b);
}

/* -------------------------------------------------------------- gradients */
typedef struct {
    int op;
    double s;
    bool reverse;
    int kind; /* 0 binary, 1 scalar, 2 unary, 3 clamp, 4 leaky, 5 elu, 6 prelu, 7 where */
    ml_tensor *cond;
} gud;

static ml_err f_generic(ml_tensor **out, ml_tensor **in, void *ud) {
    gud *u = ud;
    switch (u->kind) {
    case 0: return ml_binary(out, (ml_binop)u->op, in[0], in[1]);
    case 1: return ml_binary_scalar(out, (ml_binop)u->op, in[0], u->s, u->reverse);
    case 2: return ml_unary(out, (ml_unop)u->op, in[0]);
    case 3: return ml_clamp(out, in[0], -0.5, 0.7);
    case 4: return ml_leaky_relu(out, in[0], 0.2);
    case 5: return ml_elu(out, in[0], 1.3);
    case 6: return ml_prelu(out, in[0], in[1]);
    default: return ml_where(out, u->cond, in[0], in[1]);
    }
}

ML_TEST(binary_gradients) {
    printf("  seed %llu\n", (unsigned long long)g_seed);
    ml_manual_seed(g_seed);
    int64_t sa[3] = {3, 1, 4}, sb[2] = {2, 1};
    for (int op = ML_ADD; op <= ML_ATAN2; op++) {
        for (int bc = 0; bc < 2; bc++) {
            ml_tensor *a, *b;
            if (op == ML_POW) { /* positive base */
                a = rand_range(bc ? 3 : 2, bc ? sa : (int64_t[]){2, 4}, 0.5, 2.0, true);
                b = rand_range(bc ? 2 : 2, bc ? sb : (int64_t[]){2, 4}, -1.5, 1.5, true);
            } else if (op == ML_FMOD) { /* keep a/b away from integers */
                a = rand_range(bc ? 3 : 2, bc ? sa : (int64_t[]){2, 4}, 0.2, 0.8, true);
                b = rand_range(bc ? 2 : 2, bc ? sb : (int64_t[]){2, 4}, 1.0, 1.5, true);
            } else {
                a = ml_t_randn(bc ? 3 : 2, bc ? sa : (int64_t[]){2, 4}, true);
                b = ml_t_randn(2, bc ? sb : (int64_t[]){2, 4}, true);
                if (op == ML_DIV) push_away(b, 0, 0.3);
            }
            ml_tensor *in[2] = {a, b};
            gud u = {.op = op, .kind = 0};
            char what[64];
            snprintf(what, sizeof what, "%s%s", ml_binop_name((ml_binop)op), bc ? " [3,1,4] op [2,1]" : "");
            ml_gradcheck(what, f_generic, 2, in, &u, 1e-6, 1e-6, 1e-5);
            /* scalar forms, both orders */
            for (int rev = 0; rev < 2; rev++) {
                gud us = {.op = op, .kind = 1, .s = op == ML_POW ? (rev ? 1.7 : 2.5) : op == ML_FMOD ? 1.3 : 0.7,
                          .reverse = rev};
                if (op == ML_FMOD && rev) continue; /* fmod(s, a) has kinks near our a values */
                ml_tensor *one[1] = {op == ML_FMOD ? a : a};
                snprintf(what, sizeof what, "%s scalar%s", ml_binop_name((ml_binop)op), rev ? " reversed" : "");
                if (op == ML_DIV && rev) push_away(a, 0, 0.3);
                ml_gradcheck(what, f_generic, 1, one, &us, 1e-6, 1e-6, 1e-5);
            }
            ml_tensor_release(a);
            ml_tensor_release(b);
        }
    }
    /* maximum/minimum ties split the gradient in half */
    ml_tensor *a = ml_t_randn(1, (int64_t[]){4}, true), *b, *c, *g;
    ML_CHECK_OK(ml_detach(&b, a));
    ml_tensor *bc;
    ML_CHECK_OK(ml_clone(&bc, b));
    ml_set_requires_grad(bc, true);
    ML_CHECK_OK(ml_binary(&c, ML_MAXIMUM, a, bc));
    ML_CHECK_OK(ml_ones(&g, ML_F64, 1, (int64_t[]){4}));
    ML_CHECK_OK(ml_backward(c, g, false));
    ML_CHECK(at1(a->grad, 0) == 0.5 && at1(bc->grad, 3) == 0.5);
    ml_tensor_release(c); ml_tensor_release(g); ml_tensor_release(b); ml_tensor_release(bc); ml_tensor_release(a);
    /* mixed precision: f32 leaf times f64 tensor -> gradient arrives as f32 */
    ml_tensor *x, *y, *z;
    ML_CHECK_OK(ml_ones(&x, ML_F32, 1, (int64_t[]){3}));
    ml_set_requires_grad(x, true);
    ML_CHECK_OK(ml_full(&y, ML_F64, 1, (int64_t[]){1}, 3));
    ML_CHECK_OK(ml_binary(&z, ML_MUL, x, y));
    ML_CHECK(z->dtype == ML_F64);
    ML_CHECK_OK(ml_ones(&g, ML_F64, 1, (int64_t[]){3}));
    ML_CHECK_OK(ml_backward(z, g, false));
    ML_CHECK(x->grad && x->grad->dtype == ML_F32 && at1(x->grad, 1) == 3);
    ml_tensor_release(g); ml_tensor_release(x); ml_tensor_release(y); ml_tensor_release(z);
}

ML_TEST(unary_gradients) {
    printf("  seed %llu\n", (unsigned long long)g_seed + 1);
    ml_manual_seed(g_seed + 1);
    int64_t sh[2] = {3, 5};
    for (int op = 0; op < ML_NUNOPS; op++) {
        if (op == ML_LOGICAL_NOT || op == ML_ISNAN || op == ML_ISINF) continue;
        ml_tensor *x;
        if (op == ML_LOG || op == ML_SQRT || op == ML_RSQRT) x = rand_range(2, sh, 0.3, 3, true);
        else if (op == ML_LOG1P) x = rand_range(2, sh, -0.6, 3, true);
        else if (op == ML_TAN) x = rand_range(2, sh, -1.2, 1.2, true);
        else if (op == ML_FLOOR || op == ML_CEIL || op == ML_ROUND || op == ML_TRUNC || op == ML_SIGN) {
            x = rand_range(2, sh, -3, 3, true);
            double *d = ml_tensor_data(x);
            for (int i = 0; i < 15; i++) d[i] = floor(d[i]) + 0.25; /* away from jumps */
        } else {
            x = ml_t_randn(2, sh, true);
            if (op == ML_ABS || op == ML_RELU || op == ML_RECIPROCAL) push_away(x, 0, 0.1);
        }
        gud u = {.op = op, .kind = 2};
        ml_gradcheck(ml_unop_name((ml_unop)op), f_generic, 1, &x, &u, 1e-6, 1e-6, 1e-5);
        ml_tensor_release(x);
    }
    /* zero-gradient ops still give a gradient of zeros */
    ml_tensor *x = ml_t_randn(1, (int64_t[]){4}, true), *y, *g;
    ML_CHECK_OK(ml_unary(&y, ML_FLOOR, x));
    ML_CHECK_OK(ml_ones(&g, ML_F64, 1, (int64_t[]){4}));
    ML_CHECK_OK(ml_backward(y, g, false));
    ML_CHECK(x->grad && at1(x->grad, 0) == 0 && at1(x->grad, 3) == 0);
    ml_tensor_release(y); ml_tensor_release(g); ml_tensor_release(x);
    /* bool outputs are not recorded */
    x = ml_t_randn(1, (int64_t[]){4}, true);
    ML_CHECK_OK(ml_unary(&y, ML_ISNAN, x));
    ML_CHECK(!y->requires_grad && !y->grad_fn);
    ml_tensor_release(y);
    ML_CHECK_OK(ml_binary_scalar(&y, ML_GT, x, 0, false));
    ML_CHECK(!y->requires_grad);
    ml_tensor_release(y);
    ml_tensor_release(x);
    /* a f32 leaf gets an f32 gradient; f64 backward stays f64 */
    ML_CHECK_OK(ml_full(&x, ML_F32, 1, (int64_t[]){2}, 0.5));
    ml_set_requires_grad(x, true);
    ML_CHECK_OK(ml_unary(&y, ML_TANH, x));
    ML_CHECK_OK(ml_ones(&g, ML_F32, 1, (int64_t[]){2}));
    ML_CHECK_OK(ml_backward(y, g, false));
    ML_CHECK(x->grad->dtype == ML_F32);
    ML_CHECK_NEAR(at1(x->grad, 0), 1 - tanh(0.5) * tanh(0.5), 1e-6);
    ml_tensor_release(y); ml_tensor_release(g); ml_tensor_release(x);
}

ML_TEST(clamp_where_act_gradients) {
    printf("  seed %llu\n", (unsigned long long)g_seed + 2);
    ml_manual_seed(g_seed + 2);
    int64_t sh[2] = {4, 5};
    ml_tensor *x = ml_t_randn(2, sh, true);
    push_away(x, -0.5, 0.05);
    push_away(x, 0.7, 0.05);
    push_away(x, 0, 0.05);
    gud u = {.kind = 3};
    ml_gradcheck("clamp", f_generic, 1, &x, &u, 1e-6, 1e-6, 1e-5);
    u.kind = 4;
    ml_gradcheck("leaky_relu", f_generic, 1, &x, &u, 1e-6, 1e-6, 1e-5);
    u.kind = 5;
    ml_gradcheck("elu", f_generic, 1, &x, &u, 1e-6, 1e-6, 1e-5);
    /* prelu: per-channel and single weight, grads for both */
    ml_tensor *in4 = ml_t_randn(4, (int64_t[]){2, 3, 2, 2}, true);
    push_away(in4, 0, 0.05);
    ml_tensor *w = rand_range(1, (int64_t[]){3}, 0.05, 0.4, true), *w1 = rand_range(1, (int64_t[]){1}, 0.05, 0.4, true);
    ml_tensor *pin[2] = {in4, w};
    u.kind = 6;
    ml_gradcheck("prelu [C]", f_generic, 2, pin, &u, 1e-6, 1e-6, 1e-5);
    pin[1] = w1;
    ml_gradcheck("prelu [1]", f_generic, 2, pin, &u, 1e-6, 1e-6, 1e-5);
    /* where with broadcasting: cond [4,1], a [4,5], b [5] */
    ml_tensor *cv = ml_t_randn(2, (int64_t[]){4, 1}, false), *cond;
    ML_CHECK_OK(ml_binary_scalar(&cond, ML_GT, cv, 0, false));
    ml_tensor *b = ml_t_randn(1, (int64_t[]){5}, true);
    ml_tensor *win[2] = {x, b};
    gud uw = {.kind = 7, .cond = cond};
    ml_gradcheck("where (broadcast)", f_generic, 2, win, &uw, 1e-6, 1e-6, 1e-5);
    ml_tensor_release(cv); ml_tensor_release(cond); ml_tensor_release(b);
    ml_tensor_release(in4); ml_tensor_release(w); ml_tensor_release(w1);
    ml_tensor_release(x);
}

/* random shapes and broadcasting against a naive reference */
ML_TEST(random_broadcast_shapes) {
    uint64_t seed = g_seed + 3;
    printf("  seed %llu\n", (unsigned long long)seed);
    ml_manual_seed(seed);
    uint32_t r[4];
    for (int trial = 0; trial < 40; trial++) {
        ml_philox((uint64_t)trial, seed, r);
        int nd = 1 + (int)(r[0] % 4);
        int64_t sa[4], sb[4];
        for (int i = 0; i < nd; i++) {
            int64_t s = 1 + (int64_t)((r[1] >> (4 * i)) % 5);
            sa[i] = ((r[2] >> i) & 1) ? 1 : s;
            sb[i] = ((r[3] >> i) & 1) ? 1 : s;


        }
        int ndb = nd - (int)((r[0] >> 8) % 2); /* sometimes fewer dims for b */
        if (ndb < 1) ndb = 1;
        ml_tensor *a, *b, *c, *at;
        ML_CHECK_OK(ml_randn(&a, ML_F32, nd, sa));
        ML_CHECK_OK(ml_randn(&b, ML_F32, ndb, sb + (nd - ndb)));
        /* make a non-contiguous through a transpose round trip when possible */
        if (nd >= 2) {
            ml_tensor *t1, *t2;
            ML_CHECK_OK(ml_transpose(&t1, a, 0, nd - 1));
            ML_CHECK_OK(ml_contiguous(&t2, t1));
            ML_CHECK_OK(ml_transpose(&at, t2, 0, nd - 1));
            ml_tensor_release(t1); ml_tensor_release(t2);
        } else {
            at = a;
            ml_tensor_retain(at);
        }
        ml_binop op = (ml_binop)(trial % 4);
        ML_CHECK_OK(ml_binary(&c, op, at, b));
        if (!c) { ml_tensor_release(a); ml_tensor_release(b); ml_tensor_release(at); continue; }
        int64_t idx[4] = {0}, ia[4], ib[4];
        double worst = 0;
        do {
            for (int i = 0; i < nd; i++) ia[i] = sa[i] == 1 ? 0 : idx[i];
            for (int i = 0; i < ndb; i++) ib[i] = sb[nd - ndb + i] == 1 ? 0 : idx[nd - ndb + i];
            float x = (float)ml_tensor_get(at, ia), y = (float)ml_tensor_get(b, ib), want;
            want = op == ML_ADD ? x + y : op == ML_SUB ? x - y : op == ML_MUL ? x * y : x / y;
            double d = fabs(ml_tensor_get(c, idx) - want);
            if (d > worst && !(isnan(want))) worst = d;
        } while (ml_t_next_index(c->ndim, c->shape, idx));
        if (worst > 0) ML_FAIL_("trial %d op %s shape %s vs %s: max diff %g", trial, ml_binop_name(op),
                                ml_shape_str(nd, sa), ml_shape_str(ndb, sb + nd - ndb), worst);
        ml_tensor_release(a); ml_tensor_release(b); ml_tensor_release(c); ml_tensor_release(at);
    }
}

/* random broadcastable shapes through the gradient checker */
ML_TEST(random_shape_gradients) {
    uint64_t seed = g_seed + 5;
    printf("  seed %llu\n", (unsigned long long)seed);
    ml_manual_seed(seed);
    const ml_binop ops[] = {ML_ADD, ML_SUB, ML_MUL, ML_DIV, ML_MAXIMUM, ML_ATAN2, ML_MINIMUM};
    uint32_t r[4];
    for (int trial = 0; trial < 14; trial++) {
        ml_philox((uint64_t)trial + 1000, seed, r);
        int nd = 1 + (int)(r[0] % 3), ndb = nd - (int)((r[0] >> 4) % nd);
        int64_t sa[3], sb[3];
        for (int i = 0; i < nd; i++) {
            int64_t s = 1 + (int64_t)((r[1] >> (3 * i)) % 3);
            sa[i] = ((r[2] >> i) & 1) ? 1 : s;
            sb[i] = ((r[3] >> i) & 1) ? 1 : s;
        }
        ml_tensor *a = ml_t_randn(nd, sa, true), *b = ml_t_randn(ndb, sb + (nd - ndb), true);
        ml_binop op = ops[trial % 7];
        if (op == ML_DIV) push_away(b, 0, 0.3);
        if (op == ML_MAXIMUM || op == ML_MINIMUM) push_away(b, 0, 0.2), push_away(a, 0, 0.2);
        ml_tensor *in[2] = {a, b};
        gud u = {.op = op, .kind = 0};
        char what[96];
        snprintf(what, sizeof what, "%s %s op %s", ml_binop_name(op), ml_shape_str(nd, sa), ml_shape_str(ndb, sb + nd - ndb));
        ml_gradcheck(what, f_generic, 2, in, &u, 1e-6, 1e-6, 1e-5);
        ml_tensor_release(a);
        ml_tensor_release(b);
    }
}

/* transposed operands go through the 2-D tiled traversal: compare with a naive loop */
ML_TEST(tiled_transposed_operands) {
    printf("  seed %llu\n", (unsigned long long)g_seed + 6);
    ml_manual_seed(g_seed + 6);
    int64_t shapes[][3] = {{1, 300, 200}, {3, 70, 259}, {2, 130, 17}, {1, 16, 16}};
    for (int k = 0; k < 4; k++) {
        ml_tensor *a, *b, *at, *c, *u;
        ML_CHECK_OK(ml_randn(&a, ML_F32, 3, (int64_t[]){shapes[k][0], shapes[k][2], shapes[k][1]}));
        ML_CHECK_OK(ml_randn(&b, ML_F32, 3, shapes[k]));
        ML_CHECK_OK(ml_transpose(&at, a, 1, 2)); /* [n, r, c] view with inner stride r */
        ML_CHECK_OK(ml_binary(&c, ML_SUB, at, b));
        ML_CHECK_OK(ml_unary(&u, ML_NEG, at));
        int64_t idx[3] = {0};
        double worst = 0;
        do {
            double x = ml_tensor_get(at, idx), y = ml_tensor_get(b, idx);
            worst = fmax(worst, fabs(ml_tensor_get(c, idx) - (double)((float)x - (float)y)));
            worst = fmax(worst, fabs(ml_tensor_get(u, idx) + x));
        } while (ml_t_next_index(3, shapes[k], idx));
        if (worst != 0) ML_FAIL_("shape %s: max diff %g", ml_shape_str(3, shapes[k]), worst);
        /* in place into the transposed view */
        ML_CHECK_OK(ml_binary_(ML_ADD, at, b));
        ml_tensor *chk;
        ML_CHECK_OK(ml_binary(&chk, ML_SUB, at, b)); /* (a^T + b) - b == a^T up to rounding */
        memset(idx, 0, sizeof idx);
        worst = 0;
        do worst = fmax(worst, fabs(ml_tensor_get(chk, idx) - ml_tensor_get(u, idx) * -1));
        while (ml_t_next_index(3, shapes[k], idx));
        if (worst > 1e-5) ML_FAIL_("in place, shape %s: max diff %g", ml_shape_str(3, shapes[k]), worst);
        ml_tensor_release(chk);
        ml_tensor_release(a); ml_tensor_release(b); ml_tensor_release(at); ml_tensor_release(c); ml_tensor_release(u);
    }
}

ML_TEST(large_threaded_and_strided) {
    int64_t n = 3000009;
    ml_tensor *a, *b, *c;
    ML_CHECK_OK(ml_arange(&a, ML_F32, 0, (double)n, 1));
    ML_CHECK_OK(ml_full(&b, ML_F32, 1, &n, 0.5));
    ML_CHECK_OK(ml_binary(&c, ML_MUL, a, b));
    float *cd = ml_tensor_data(c), *ad = ml_tensor_data(a);
    int ok = 1;
    for (int64_t i = 0; i < n; i++) ok &= cd[i] == ad[i] * 0.5f;
    ML_CHECK(ok);
    ml_tensor_release(c);
    ML_CHECK_OK(ml_unary(&c, ML_SIGMOID, a));
    cd = ml_tensor_data(c);
    ML_CHECK(cd[0] == 0.5f && cd[n - 1] == 1.0f);
    ml_tensor_release(c);
    /* transposed big matrix + row vector */
    ml_tensor *m, *mt, *row;
    ML_CHECK_OK(ml_view(&m, a, 2, (int64_t[]){1000003, 3}));
    ML_CHECK_OK(ml_transpose(&mt, m, 0, 1)); /* [3, 1000003] strided */
    ML_CHECK_OK(ml_arange(&row, ML_F32, 0, 3, 1));
    ml_tensor *rowc;
    ML_CHECK_OK(ml_view(&rowc, row, 2, (int64_t[]){3, 1}));
    ML_CHECK_OK(ml_binary(&c, ML_SUB, mt, rowc));
    ML_CHECK(ml_tensor_get(c, (int64_t[]){2, 7}) == 7 * 3 + 2 - 2 && ml_tensor_get(c, (int64_t[]){1, 1000002}) == 3000006 + 1 - 1);
    ml_tensor_release(c);
    /* in place on the strided view */
    ML_CHECK_OK(ml_binary_(ML_SUB, mt, rowc));
    ML_CHECK(at1(a, 3 * 5 + 2) == 15 && at1(a, 3 * 5 + 1) == 15);
    ml_tensor_release(m); ml_tensor_release(mt); ml_tensor_release(row); ml_tensor_release(rowc);
    ml_tensor_release(a); ml_tensor_release(b);
}

/* ------------------------------------------------------------ optimizers */
ML_TEST(lerp_axpby) {
    ml_tensor *a, *b;
    ML_CHECK_OK(ml_arange(&a, ML_F32, 0, 4, 1));
    ML_CHECK_OK(ml_full(&b, ML_F32, 1, (int64_t[]){4}, 10));
    uint32_t v0 = a->storage->version;
    ML_CHECK_OK(ml_lerp_(a, b, 0.25));
    ML_CHECK(at1(a, 0) == 2.5 && at1(a, 2) == 2 + 0.25 * 8 && a->storage->version == v0 + 1);
    ML_CHECK_OK(ml_lerp_(a, b, 1.0));
    ML_CHECK(at1(a, 3) == 10);
    ML_CHECK_OK(ml_axpby_(a, 0.5, b, -2));
    ML_CHECK(at1(a, 1) == 5 - 20 && a->storage->version == v0 + 3);
    /* broadcast operand; bf16 target goes through the generic path */
    ml_tensor *s, *h;
    ML_CHECK_OK(ml_full(&s, ML_F64, 1, (int64_t[]){1}, 2));
    ML_CHECK_OK(ml_axpby_(a, 1, s, 1));
    ML_CHECK(at1(a, 1) == -13);
    h = cast(a, ML_BF16);
    ML_CHECK_OK(ml_axpby_(h, 2, s, 1));
    ML_CHECK(h->dtype == ML_BF16 && at1(h, 1) == -24);
    /* optimizer ops work on leaves that require grad (they are not recorded) */
    ml_tensor *p = ml_t_randn(1, (int64_t[]){3}, true);
    double p0 = at1(p, 0);
    ML_CHECK_OK(ml_axpby_(p, 1, s, -0.1));
    ML_CHECK_NEAR(at1(p, 0), p0 - 0.2, 1e-15);
    ML_CHECK(p->grad_fn == NULL);
    ml_tensor *iv;
    ML_CHECK_OK(ml_zeros(&iv, ML_I32, 1, (int64_t[]){4}));
    ML_CHECK_ERR(ml_axpby_(iv, 1, a, 1), ML_ERR_DTYPE);
    ml_tensor_release(iv); ml_tensor_release(p);
    ml_tensor_release(s); ml_tensor_release(h); ml_tensor_release(a); ml_tensor_release(b);
}

/* reference Adam / AdamW (PyTorch single-tensor algorithm) in double */
static void ref_adam(double *p, const double *g, double *m, double *v, int n, double lr, double b1, double b2,
                     double eps, double wd, bool decoupled, int step) {
    for (int i = 0; i < n; i++) {
        double gr = g[i];
        if (decoupled) p[i] *= 1 - lr * wd;
        else gr += wd * p[i];
        m[i] = m[i] + (1 - b1) * (gr - m[i]);
        v[i] = b2 * v[i] + (1 - b2) * gr * gr;
        double bc1 = 1 - pow(b1, step), bc2 = 1 - pow(b2, step);
        double denom = sqrt(v[i]) / sqrt(bc2) + eps;
        p[i] -= lr / bc1 * m[i] / denom;
    }
}

ML_TEST(adam_step) {
    printf("  seed %llu\n", (unsigned long long)g_seed + 4);
    ml_manual_seed(g_seed + 4);
    enum { N = 257 };
    for (int dec = 0; dec < 2; dec++) {
        for (int dt = 0; dt < 2; dt++) {
            ml_dtype D = dt ? ML_F32 : ML_F64;
            ml_tensor *p, *m, *v, *g;
            ML_CHECK_OK(ml_randn(&p, D, 1, (int64_t[]){N}));
            ML_CHECK_OK(ml_zeros(&m, D, 1, (int64_t[]){N}));
            ML_CHECK_OK(ml_zeros(&v, D, 1, (int64_t[]){N}));
            double rp[N], rm[N] = {0}, rv[N] = {0}, rg[N];
            for (int i = 0; i < N; i++) rp[i] = at1(p, i);
            ml_set_requires_grad(p, true); /* a parameter: a leaf that requires grad */
            for (int step = 1; step <= 5; step++) {
                ML_CHECK_OK(ml_randn(&g, D, 1, (int64_t[]){N}));
                for (int i = 0; i < N; i++) rg[i] = at1(g, i);
                ML_CHECK_OK(ml_adam_step_(p, g, m, v, 1e-2, 0.9, 0.99, 1e-8, 0.1, dec, step));
                ref_adam(rp, rg, rm, rv, N, 1e-2, 0.9, 0.99, 1e-8, 0.1, dec, step);
                ml_tensor_release(g);
            }
            double worst = 0;
            for (int i = 0; i < N; i++) worst = fmax(worst, fabs(at1(p, i) - rp[i]) + fabs(at1(v, i) - rv[i]));
            if (worst > (dt ? 2e-5 : 1e-13)) ML_FAIL_("adam%s %s: max diff %g", dec ? "w" : "", ml_dtype_name(D), worst);
            ml_tensor_release(p); ml_tensor_release(m); ml_tensor_release(v);
        }
    }
    /* mixed dtypes (bf16 param, f32 state) take the generic path */
    ml_tensor *p, *m, *v, *g, *pf;
    ML_CHECK_OK(ml_full(&pf, ML_F32, 1, (int64_t[]){4}, 1));
    p = cast(pf, ML_BF16);
    ML_CHECK_OK(ml_zeros(&m, ML_F32, 1, (int64_t[]){4}));
    ML_CHECK_OK(ml_zeros(&v, ML_F32, 1, (int64_t[]){4}));
    ML_CHECK_OK(ml_full(&g, ML_F32, 1, (int64_t[]){4}, 0.5));
    uint32_t pv = p->storage->version;
    ML_CHECK_OK(ml_adam_step_(p, g, m, v, 0.1, 0.9, 0.999, 1e-8, 0, false, 1));
    ML_CHECK_NEAR(at1(p, 0), 0.9, 4e-3); /* first step moves by lr */
    ML_CHECK(p->storage->version == pv + 1);
    ml_tensor_release(p); ml_tensor_release(pf); ml_tensor_release(m); ml_tensor_release(v); ml_tensor_release(g);
}

/* The fused f32 PReLU backward (one weight, contiguous) must agree with the generic f64 rule. */
static void prelu_grads(ml_dtype dt, ml_tensor *x64, ml_tensor *g64, ml_tensor **gx, ml_tensor **gw) {
    ml_tensor *x, *g, *w, *y;
    ML_CHECK_OK(ml_to_dtype(&x, x64, dt));
    ML_CHECK_OK(ml_to_dtype(&g, g64, dt));
    ML_CHECK_OK(ml_full(&w, dt, 1, (int64_t[]){1}, 0.25));
    ML_CHECK_OK(ml_set_requires_grad(x, true));
    ML_CHECK_OK(ml_set_requires_grad(w, true));
    ML_CHECK_OK(ml_prelu(&y, x, w));
    ML_CHECK_OK(ml_backward(y, g, false));
    *gx = x->grad; x->grad = NULL;
    *gw = w->grad; w->grad = NULL;
    ml_tensor_release(y); ml_tensor_release(x); ml_tensor_release(g); ml_tensor_release(w);
}

ML_TEST(prelu_fused_backward_matches_f64) {
    int64_t sizes[2][4] = {{2, 3, 5, 7}, {2, 4, 50, 500}}; /* single-threaded and threaded */
    for (int k = 0; k < 2; k++) {
        ml_tensor *x = ml_t_randn(4, sizes[k], false), *g = ml_t_randn(4, sizes[k], false);
        ml_tensor *gx32, *gw32, *gx64, *gw64;
        prelu_grads(ML_F32, x, g, &gx32, &gw32);
        prelu_grads(ML_F64, x, g, &gx64, &gw64);
        ML_CHECK(gx32 && gw32 && gx64 && gw64 && gw32->ndim == 1 && gw32->shape[0] == 1);
        if (gx32 && gx64) ML_CHECK(ml_t_maxdiff(gx32, gx64) < 1e-6);
        if (gw32 && gw64) ML_CHECK_NEAR(ml_tensor_item(gw32), ml_tensor_item(gw64), 1e-4 * (1 + fabs(ml_tensor_item(gw64))));
        ml_tensor_release(gx32); ml_tensor_release(gw32); ml_tensor_release(gx64); ml_tensor_release(gw64);
        ml_tensor_release(x); ml_tensor_release(g);
    }
}

int main(int argc, char **argv) {
    g_seed = argc > 1 ? strtoull(argv[1], NULL, 10) : 20261124;
    ML_RUN(binary_values_and_broadcast);
    ML_RUN(dtype_promotion);
    ML_RUN(integer_paths);
    ML_RUN(unary_values);
    ML_RUN(clamp_where_activations_values);
    ML_RUN(inplace_semantics);
    ML_RUN(errors_name_op_and_shapes);
    ML_RUN(binary_gradients);
    ML_RUN(unary_gradients);
    ML_RUN(clamp_where_act_gradients);
    ML_RUN(random_broadcast_shapes);
    ML_RUN(random_shape_gradients);
    ML_RUN(tiled_transposed_operands);
    ML_RUN(large_threaded_and_strided);
    ML_RUN(lerp_axpby);
    ML_RUN(adam_step);
    ML_RUN(prelu_fused_backward_matches_f64);
    return ml_test_summary();
}
