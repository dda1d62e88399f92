/* matmul / bmm / linear and max / avg / adaptive-avg pooling: f64 gradient checks, f32 (oneDNN)
 * vs f64 (reference) agreement for forward and backward, PyTorch reference checksums, and
 * argument errors. Random shapes come from a seed printed at start (ML_TEST_SEED replays). */
#include "ml_test.h"
#include "nn/ml_nn.h"
#include "nn/ml_dnnl_priv.h"

#include <stdint.h>
#include <time.h>

static uint64_t g_seed, g_rng;

static int rnd(int n) {
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return (int)(((g_rng * 2685821657736338717ULL) >> 33) % (uint64_t)n);
}

/* ------------------------------------------------------------ helpers */

static ml_tensor *mk_data(int nd, const int64_t *shape, double a, double b) {
    ml_tensor *t = NULL;
    if (ml_tensor_empty(&t, ML_F64, nd, shape)) return NULL;
    int64_t n = ml_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) ((double *)ml_tensor_data(t))[i] = sin(a * (double)i + b);
    return t;
}

/* distinct values (spacing 0.01) in random order: no ties for max pooling */
static ml_tensor *mk_distinct(int nd, const int64_t *shape, bool rg) {
    ml_tensor *t = NULL;
    if (ml_tensor_empty(&t, ML_F64, nd, shape)) return NULL;
    int64_t n = ml_tensor_numel(t);
    double *d = ml_tensor_data(t);
    for (int64_t i = 0; i < n; i++) d[i] = 0.01 * (double)(i - n / 2);
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)rnd((int)(i + 1));
        double tmp = d[i];
        d[i] = d[j];
        d[j] = tmp;
    }
    if (rg) ml_set_requires_grad(t, true);
    return t;
}

/* ------------------------------------------------------------ matmul */
typedef struct {
    int na, nb;
    int64_t a[5], b[5];
    int ta, tb; /* 1: the input is stored transposed (last two dims) and transposed back: a strided view */
    int ea;     /* 1: a's leading batch dim is an expand() of size 1 -> stride 0 */
    int64_t eb; /* expanded batch size */
} mm_case;

static ml_err f_matmul(ml_tensor **out, ml_tensor **in, void *ud) {
    mm_case *c = ud;
    ml_tensor *a = in[0], *b = in[1], *va = NULL, *vb = NULL;
    ml_err e = ML_OK;
    if (c->ta && (e = ml_transpose(&va, a, -1, -2))) return e;
    if (c->ea) {
        int64_t sh[5];
        memcpy(sh, a->shape, sizeof sh);
        sh[0] = c->eb;
        if ((e = ml_expand(&va, a, a->ndim, sh))) return e;
    }
    if (c->tb && (e = ml_transpose(&vb, b, -1, -2))) { ml_tensor_release(va); return e; }
    e = ml_matmul(out, va ? va : a, vb ? vb : b);
    ml_tensor_release(va);
    ml_tensor_release(vb);
    return e;
}

static ml_err f_bmm(ml_tensor **out, ml_tensor **in, void *ud) { return ml_bmm(out, in[0], in[1]); }

static void stored_shape(int n, const int64_t *s, int t, int64_t *o) {
    memcpy(o, s, sizeof(int64_t) * (size_t)n);
    if (t) { o[n - 1] = s[n - 2]; o[n - 2] = s[n - 1]; }
}

static mm_case mm_cases[] = {
    {1, 1, {5}, {5}, 0, 0, 0, 0},
    {2, 2, {3, 4}, {4, 5}, 0, 0, 0, 0},
    {1, 2, {4}, {4, 3}, 0, 0, 0, 0},
    {2, 1, {3, 4}, {4}, 0, 0, 0, 0},
    {3, 2, {2, 3, 4}, {4, 5}, 0, 0, 0, 0},
    {2, 3, {3, 4}, {2, 4, 5}, 0, 0, 0, 0},
    {4, 3, {2, 1, 3, 4}, {3, 4, 2}, 0, 0, 0, 0},
    {3, 1, {2, 3, 4}, {4}, 0, 0, 0, 0},
    {1, 3, {5}, {2, 5, 3}, 0, 0, 0, 0},
    {2, 3, {3, 4}, {2, 4, 5}, 1, 1, 0, 0},
    {3, 3, {2, 3, 4}, {2, 4, 5}, 1, 0, 0, 0},
    {3, 3, {1, 3, 4}, {3, 4, 2}, 0, 1, 1, 3},
    {3, 2, {1, 3, 4}, {4, 5}, 0, 0, 1, 2},
    {4, 2, {1, 2, 3, 4}, {4, 5}, 0, 1, 1, 3},
};

ML_TEST(matmul_gradcheck) {
    for (size_t i = 0; i < sizeof mm_cases / sizeof mm_cases[0]; i++) {
        mm_case *c = &mm_cases[i];
        int64_t sa[5], sb[5];
        stored_shape(c->na, c->a, c->ta, sa);
        stored_shape(c->nb, c->b, c->tb, sb);
        ml_tensor *in[2] = {ml_t_randn(c->na, sa, true), ml_t_randn(c->nb, sb, true)};
        char what[128];
        snprintf(what, sizeof what, "matmul %s x %s (t %d %d, e %d)", ml_shape_str(c->na, c->a),
                 ml_shape_str(c->nb, c->b), c->ta, c->tb, c->ea);
        ml_gradcheck(what, f_matmul, 2, in, c, 1e-6, 1e-7, 1e-6);
        ml_tensor_release(in[0]);
        ml_tensor_release(in[1]);
    }
    ml_tensor *in[2] = {ml_t_randn(3, (int64_t[]){3, 2, 4}, true), ml_t_randn(3, (int64_t[]){3, 4, 5}, true)};
    ml_gradcheck("bmm", f_bmm, 2, in, NULL, 1e-6, 1e-7, 1e-6);
    ml_tensor_release(in[0]);
    ml_tensor_release(in[1]);
}

ML_TEST(matmul_f32_vs_f64) {
    for (size_t i = 0; i < sizeof mm_cases / sizeof mm_cases[0]; i++) {
        mm_case c = mm_cases[i];
        /* scale the matrix dims up (keep batch dims) */
        for (int d = (c.na >= 2 ? c.na - 2 : 0); d < c.na; d++) c.a[d] = c.a[d] * 13 + rnd(5);
        for (int d = (c.nb >= 2 ? c.nb - 2 : 0); d < c.nb; d++) c.b[d] = c.b[d] * 13 + rnd(5);
        /* inner dims must agree */
        int64_t K = c.a[c.na - 1];
        if (c.nb == 1) c.b[0] = K;
        else c.b[c.nb - 2] = K;
        int64_t sa[5], sb[5];
        stored_shape(c.na, c.a, c.ta, sa);
        stored_shape(c.nb, c.b, c.tb, sb);
        ml_tensor *in[2] = {ml_t_randn(c.na, sa, true), ml_t_randn(c.nb, sb, true)};
        char what[128];
        snprintf(what, sizeof what, "matmul %s x %s (t %d %d e %d)", ml_shape_str(c.na, c.a), ml_shape_str(c.nb, c.b),
                 c.ta, c.tb, c.ea);
        ml_t_agree(what, f_matmul, 2, in, &c, 1e-5);
        ml_tensor_release(in[0]);
        ml_tensor_release(in[1]);
    }
    ml_tensor *in[2] = {ml_t_randn(3, (int64_t[]){4, 37, 50}, true), ml_t_randn(3, (int64_t[]){4, 50, 29}, true)};
    ml_t_agree("bmm", f_bmm, 2, in, NULL, 1e-5);
    ml_tensor_release(in[0]);
    ml_tensor_release(in[1]);
}

/* random ranks 1-4, broadcast batch dims and transposed operands */
static void rand_mm(mm_case *c, int maxdim) {
    memset(c, 0, sizeof *c);
    c->na = 1 + rnd(4);
    c->nb = 1 + rnd(4);
    int ba = c->na > 2 ? c->na - 2 : 0, bb = c->nb > 2 ? c->nb - 2 : 0, nb = ba > bb ? ba : bb;
    int64_t bs[2];
    for (int i = 0; i < nb; i++) bs[i] = 1 + rnd(3);
    for (int i = 0; i < ba; i++) c->a[i] = rnd(3) ? bs[i + nb - ba] : 1;
    for (int i = 0; i < bb; i++) c->b[i] = rnd(3) ? bs[i + nb - bb] : 1;
    int64_t M = 1 + rnd(maxdim), K = 1 + rnd(maxdim), N = 1 + rnd(maxdim);
    if (c->na == 1) c->a[0] = K;
    else { c->a[c->na - 2] = M; c->a[c->na - 1] = K; c->ta = rnd(2); }
    if (c->nb == 1) c->b[0] = K;
    else { c->b[c->nb - 2] = K; c->b[c->nb - 1] = N; c->tb = rnd(2); }
}

ML_TEST(matmul_fuzz) {
    for (int it = 0; it < 40; it++) {
        for (int big = 0; big < 2; big++) {
            mm_case c;
            rand_mm(&c, big ? 40 : 4);
            int64_t sa[5], sb[5];
            stored_shape(c.na, c.a, c.ta, sa);
            stored_shape(c.nb, c.b, c.tb, sb);
            ml_tensor *in[2] = {ml_t_randn(c.na, sa, true), ml_t_randn(c.nb, sb, true)};
            char what[160];
            snprintf(what, sizeof what, "matmul %s x %s (t %d %d)", ml_shape_str(c.na, c.a), ml_shape_str(c.nb, c.b), c.ta,
                     c.tb);
            if (!big) ml_gradcheck(what, f_matmul, 2, in, &c, 1e-6, 1e-7, 1e-6);
            ml_t_agree(what, f_matmul, 2, in, &c, 1e-5);
            ml_tensor_release(in[0]);
            ml_tensor_release(in[1]);
        }
    }
}

ML_TEST(matmul_values_and_edge_shapes) {
    /* [[1,2],[3,4]] @ [[5,6],[7,8]] = [[19,22],[43,50]]; dot; empty and K = 0 */
    for (int dt = 0; dt < 2; dt++) {
        ml_dtype t = dt ? ML_F32 : ML_F64;
        ml_tensor *a = NULL, *b = NULL, *c = NULL, *d = NULL, *z = NULL, *e1 = NULL, *e2 = NULL, *k0 = NULL;
        ml_arange(&a, t, 1, 5, 1);
        ml_arange(&b, t, 5, 9, 1);
        ml_tensor *a2 = NULL, *b2 = NULL;
        ml_reshape(&a2, a, 2, (int64_t[]){2, 2});
        ml_reshape(&b2, b, 2, (int64_t[]){2, 2});
        ML_CHECK_OK(ml_matmul(&c, a2, b2));
        if (c) {
            ML_CHECK(c->ndim == 2);
            ML_CHECK_NEAR(ml_tensor_get(c, (int64_t[]){0, 0}), 19, 0);
            ML_CHECK_NEAR(ml_tensor_get(c, (int64_t[]){0, 1}), 22, 0);
            ML_CHECK_NEAR(ml_tensor_get(c, (int64_t[]){1, 0}), 43, 0);
            ML_CHECK_NEAR(ml_tensor_get(c, (int64_t[]){1, 1}), 50, 0);
        }
        ML_CHECK_OK(ml_matmul(&d, a, b)); /* 1*5+2*6+3*7+4*8 = 70 */
        if (d) { ML_CHECK(d->ndim == 0); ML_CHECK_NEAR(ml_tensor_item(d), 70, 0); }
        ml_tensor *ea = NULL, *eb = NULL, *ka = NULL, *kb = NULL;
        ml_zeros(&ea, t, 2, (int64_t[]){0, 3});
        ml_ones(&eb, t, 2, (int64_t[]){3, 4});
        ML_CHECK_OK(ml_matmul(&e1, ea, eb));
        if (e1) ML_CHECK(e1->ndim == 2 && e1->shape[0] == 0 && e1->shape[1] == 4);
        ml_ones(&ka, t, 2, (int64_t[]){2, 0});
        ml_ones(&kb, t, 2, (int64_t[]){0, 3});
        ML_CHECK_OK(ml_matmul(&k0, ka, kb));
        if (k0) ML_CHECK(k0->shape[0] == 2 && k0->shape[1] == 3 && ml_t_maxabs(k0) == 0);
        ml_tensor *lb = NULL;
        ml_full(&lb, t, 1, (int64_t[]){3}, 2.5);
        ml_tensor *wl = NULL;
        ml_ones(&wl, t, 2, (int64_t[]){3, 0});
        ml_tensor *xl = NULL;
        ml_ones(&xl, t, 2, (int64_t[]){2, 0});
        ML_CHECK_OK(ml_linear(&z, xl, wl, lb)); /* in_features = 0: bias only */
        if (z) ML_CHECK(z->shape[0] == 2 && z->shape[1] == 3 && ml_tensor_get(z, (int64_t[]){1, 2}) == 2.5);
        ml_tensor *ts[] = {a, b, c, d, z, e1, e2, k0, a2, b2, ea, eb, ka, kb, lb, wl, xl};
        for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) ml_tensor_release(ts[i]);
    }
}

/* ------------------------------------------------------------ linear */
typedef struct {
    int nx;
    int64_t x[4];
    int64_t in, out;
    bool bias, tx;
} lin_case;

static ml_err f_linear(ml_tensor **out, ml_tensor **in, void *ud) {
    lin_case *c = ud;
    ml_tensor *xv = NULL;
    ml_err e;
    if (c->tx && (e = ml_transpose(&xv, in[0], -1, -2))) return e;
    e = ml_linear(out, xv ? xv : in[0], in[1], c->bias ? in[2] : NULL);
    ml_tensor_release(xv);
    return e;
}

static lin_case lin_cases[] = {
    {1, {5}, 5, 4, true, false},
    {2, {3, 5}, 5, 4, true, false},
    {3, {2, 3, 5}, 5, 4, false, false},
    {3, {2, 3, 5}, 5, 4, true, true},
    {4, {2, 1, 3, 5}, 5, 2, true, false},
};

ML_TEST(linear_gradcheck_and_f32) {
    for (size_t i = 0; i < sizeof lin_cases / sizeof lin_cases[0]; i++) {
        for (int big = 0; big < 2; big++) {
            lin_case c = lin_cases[i];
            if (big) {
                c.in = 64 + rnd(40);
                c.out = 32 + rnd(40);
                c.x[c.nx - 1] = c.in;
                if (c.nx >= 2) c.x[c.nx - 2] *= 11;
            }
            int64_t xs[4];
            stored_shape(c.nx, c.x, c.tx, xs);
            int64_t ws[2] = {c.out, c.in};
            ml_tensor *in[3] = {ml_t_randn(c.nx, xs, true), ml_t_randn(2, ws, true),
                                c.bias ? ml_t_randn(1, &c.out, true) : NULL};
            char what[128];
            snprintf(what, sizeof what, "linear x%s w%s bias %d t %d", ml_shape_str(c.nx, c.x), ml_shape_str(2, ws),
                     c.bias, c.tx);
            if (!big) ml_gradcheck(what, f_linear, 3, in, &c, 1e-6, 1e-7, 1e-6);
            else ml_t_agree(what, f_linear, 3, in, &c, 1e-5);
            for (int j = 0; j < 3; j++) ml_tensor_release(in[j]);
        }
    }
}

ML_TEST(matmul_errors) {
    ml_tensor *a = NULL, *b = NULL, *s = NULL, *i32 = NULL, *a64 = NULL, *b3 = NULL, *y = (ml_tensor *)1;
    ml_randn(&a, ML_F32, 2, (int64_t[]){3, 4});
    ml_randn(&b, ML_F32, 2, (int64_t[]){5, 6});
    ml_randn(&b3, ML_F32, 3, (int64_t[]){2, 4, 6});
    ml_full(&s, ML_F32, 0, NULL, 1.0);
    ml_zeros(&i32, ML_I32, 2, (int64_t[]){4, 3});
    ml_randn(&a64, ML_F64, 2, (int64_t[]){4, 3});
    ml_t_expect_err(ml_matmul(&y, a, b), ML_ERR_SHAPE, "matmul", "[5, 6]", "inner dims");
    ML_CHECK(strstr(ml_errmsg(), "[3, 4]") != NULL && y == NULL);
    ml_t_expect_err(ml_matmul(&y, s, a), ML_ERR_SHAPE, "matmul", "[]", "0-d");
    ml_t_expect_err(ml_matmul(&y, a, a64), ML_ERR_DTYPE, "matmul", "float64", "dtype mismatch");
    ml_t_expect_err(ml_matmul(&y, i32, a), ML_ERR_DTYPE, "matmul", "int32", "integer");
    ml_tensor *c3 = NULL, *d3 = NULL;
    ml_randn(&c3, ML_F32, 3, (int64_t[]){3, 3, 4});
    ml_randn(&d3, ML_F32, 3, (int64_t[]){2, 4, 5});
    ml_t_expect_err(ml_matmul(&y, c3, d3), ML_ERR_SHAPE, "matmul", "broadcast", "batch mismatch");
    ml_t_expect_err(ml_bmm(&y, a, b3), ML_ERR_SHAPE, "bmm", "[3, 4]", "bmm rank");
    ml_t_expect_err(ml_bmm(&y, c3, d3), ML_ERR_SHAPE, "bmm", "[2, 4, 5]", "bmm batch");
    ml_tensor *w = NULL, *bias = NULL;
    ml_randn(&w, ML_F32, 2, (int64_t[]){7, 5});
    ml_randn(&bias, ML_F32, 1, (int64_t[]){6});
    ml_t_expect_err(ml_linear(&y, a, w, NULL), ML_ERR_SHAPE, "linear", "[7, 5]", "linear in features");
    ml_tensor *w4 = NULL;
    ml_randn(&w4, ML_F32, 2, (int64_t[]){7, 4});
    ml_t_expect_err(ml_linear(&y, a, w4, bias), ML_ERR_SHAPE, "linear", "[6]", "linear bias");
    ml_t_expect_err(ml_linear(&y, a, a64, NULL), ML_ERR_DTYPE, "linear", "float64", "linear dtype");
    ML_CHECK(y == NULL);
    ml_tensor *ts[] = {a, b, s, i32, a64, b3, c3, d3, w, bias, w4};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) ml_tensor_release(ts[i]);
}

/* ------------------------------------------------------------ pooling */
typedef struct {
    int kind; /* 0 max, 1 avg, 2 adaptive */
    ml_pool_params p;
    int64_t osz[3];
} pool_case;

static ml_err run_pool(ml_tensor **out, ml_tensor *x, const pool_case *c) {
    if (c->kind == 0) return ml_max_pool(out, x, &c->p);
    if (c->kind == 1) return ml_avg_pool(out, x, &c->p);
    return ml_adaptive_avg_pool(out, x, c->p.k, c->osz);
}

static ml_err f_pool(ml_tensor **out, ml_tensor **in, void *ud) { return run_pool(out, in[0], ud); }

static const char *pool_str(const pool_case *c, const int64_t *xs) {
    static char buf[256];
    int k = c->p.k;
    if (c->kind == 2)
        snprintf(buf, sizeof buf, "adaptive_avg_pool%dd x%s -> %s", k, ml_shape_str(k + 2, xs), ml_shape_str(k, c->osz));
    else
        snprintf(buf, sizeof buf, "%s_pool%dd x%s kernel %s stride %s pad %s dil %s ceil %d incl %d",
                 c->kind ? "avg" : "max", k, ml_shape_str(k + 2, xs), ml_shape_str(k, c->p.kernel),
                 ml_shape_str(k, c->p.stride), ml_shape_str(k, c->p.padding), ml_shape_str(k, c->p.dilation),
                 c->p.ceil_mode, c->p.count_include_pad);
    return buf;
}

/* variant table: kind, kernel, stride, pad, dil, ceil, incl */
static const int pool_variants[][7] = {
    {0, 3, 2, 1, 1, 0, 0}, {0, 2, 1, 0, 2, 1, 0}, {0, 3, 3, 1, 1, 1, 0}, {0, 2, 2, 0, 1, 0, 0},
    {1, 3, 2, 1, 1, 1, 1}, {1, 3, 2, 1, 1, 1, 0}, {1, 2, 2, 0, 1, 0, 1}, {1, 3, 1, 1, 2, 0, 1},
    {1, 4, 3, 2, 1, 0, 0}, {2, 0, 0, 0, 0, 0, 0}, {2, 1, 0, 0, 0, 0, 0},
};

static void make_pool(pool_case *c, int k, int v, bool big, int64_t *xs) {
    memset(c, 0, sizeof *c);
    const int *V = pool_variants[v];
    c->kind = V[0];
    c->p.k = k;
    c->p.ceil_mode = V[5];
    c->p.count_include_pad = V[6];
    xs[0] = big ? 2 : 1 + rnd(2);
    xs[1] = big ? 3 + rnd(6) : 1 + rnd(2);
    for (int i = 0; i < k; i++) {
        int64_t I = (big ? (k == 3 ? 9 : 14) : (k == 3 ? 4 : 6)) + rnd(4);
        xs[2 + i] = I;
        if (c->kind == 2) {
            /* even windows (oneDNN path) for V[1] == 1, uneven otherwise */
            if (V[1] == 1) { c->osz[i] = I / 2 > 0 ? I / 2 : 1; xs[2 + i] = c->osz[i] * 2; }
            else c->osz[i] = 1 + rnd((int)I);
            continue;
        }
        c->p.kernel[i] = V[1];
        c->p.stride[i] = V[2];
        c->p.padding[i] = V[3];
        c->p.dilation[i] = V[4];
    }
}

static void gradcheck_pool(int k) {
    int nv = (int)(sizeof pool_variants / sizeof pool_variants[0]);
    for (int v = 0; v < nv; v++) {
        pool_case c;
        int64_t xs[5];
        make_pool(&c, k, v, false, xs);
        ml_tensor *in[1] = {mk_distinct(k + 2, xs, true)};
        ml_gradcheck(pool_str(&c, xs), f_pool, 1, in, &c, 1e-6, 1e-7, 1e-6);
        ml_tensor_release(in[0]);
    }
}

static void agree_pool(int k) {
    int nv = (int)(sizeof pool_variants / sizeof pool_variants[0]);
    for (int v = 0; v < nv; v++) {
        for (int big = 0; big < 2; big++) {
            pool_case c;
            int64_t xs[5];
            make_pool(&c, k, v, big, xs);
            ml_tensor *in[1] = {mk_distinct(k + 2, xs, true)};
            ml_t_agree(pool_str(&c, xs), f_pool, 1, in, &c, 1e-5);
            ml_tensor_release(in[0]);
        }
    }
}

ML_TEST(pool1d_gradcheck) { gradcheck_pool(1); }
ML_TEST(pool2d_gradcheck) { gradcheck_pool(2); }
ML_TEST(pool3d_gradcheck) { gradcheck_pool(3); }
ML_TEST(pool1d_f32_vs_f64) { agree_pool(1); }
ML_TEST(pool2d_f32_vs_f64) { agree_pool(2); }
ML_TEST(pool3d_f32_vs_f64) { agree_pool(3); }

/* random geometries (kernel 1-4, stride 1-4, padding <= kernel/2, dilation 1-3 for max, ceil
 * mode, count_include_pad): f64 gradient check and f32 vs f64 agreement */
static bool max_window_empty(const pool_case *c, const int64_t *xs) {
    for (int i = 0; i < c->p.k; i++) {
        int64_t I = xs[2 + i], K = c->p.kernel[i], s = c->p.stride[i], p = c->p.padding[i], d = c->p.dilation[i];
        int64_t O = (I + 2 * p - d * (K - 1) - 1 + (c->p.ceil_mode ? s - 1 : 0)) / s + 1;
        if (c->p.ceil_mode && (O - 1) * s >= I + p) O--;
        for (int64_t o = 0; o < O; o++) {
            bool any = false;
            for (int64_t t = 0; t < K; t++) {
                int64_t pos = o * s - p + t * d;
                any |= pos >= 0 && pos < I;
            }
            if (!any) return true;
        }
    }
    return false;
}

ML_TEST(pool_fuzz) {
    int done = 0;
    for (int it = 0; it < 400 && done < 45; it++) {
        pool_case c;
        memset(&c, 0, sizeof c);
        int k = 1 + rnd(3);
        c.kind = rnd(3);
        c.p.k = k;
        c.p.ceil_mode = rnd(2);
        c.p.count_include_pad = rnd(2);
        int64_t xs[5] = {1 + rnd(2), 1 + rnd(3)};
        bool ok = true;
        for (int i = 0; i < k; i++) {
            int64_t I = 1 + rnd(k == 3 ? 6 : 10);
            xs[2 + i] = I;
            c.p.kernel[i] = 1 + rnd(4);
            c.p.stride[i] = 1 + rnd(4);
            c.p.padding[i] = rnd((int)(c.p.kernel[i] / 2) + 1);
            c.p.dilation[i] = c.kind == 0 ? 1 + rnd(3) : 1;
            c.osz[i] = 1 + rnd((int)I + 1);
            int64_t span = I + 2 * c.p.padding[i] - c.p.dilation[i] * (c.p.kernel[i] - 1) - 1;
            if (c.kind != 2 && span < 0) ok = false;
        }
        if (!ok || (c.kind == 0 && max_window_empty(&c, xs))) continue;
        done++;
        ml_tensor *in[1] = {mk_distinct(k + 2, xs, true)};
        ml_gradcheck(pool_str(&c, xs), f_pool, 1, in, &c, 1e-6, 1e-7, 1e-6);
        ml_t_agree(pool_str(&c, xs), f_pool, 1, in, &c, 1e-5);
        ml_tensor_release(in[0]);
    }
    ML_CHECK(done >= 30);
}

typedef struct {
    const char *kind;
    int k, xnd;
    int64_t xs[5], ks[3], s[3], p[3], d[3];
    int ceil, incl;
    int64_t osz[3], ys[5];
    double ck[2];
} pool_ref;

/* generated by PyTorch 1.13.0a0 (float64): x = sin(0.37 i + 0.11), cotangent cos(0.1 j) */
static const pool_ref pool_refs[] = {
    {"max", 1, 3, {2, 3, 13, 0, 0}, {3, 0, 0}, {2, 0, 0}, {1, 0, 0}, {2, 0, 0}, 1, 0, {0, 0, 0}, {2, 3, 6, 0, 0}, {10.665671332612906, 4.1845125794655944}},
    {"max", 2, 4, {1, 2, 9, 10, 0}, {3, 2, 0}, {2, 2, 0}, {1, 1, 0}, {1, 1, 0}, 1, 0, {0, 0, 0}, {1, 2, 5, 6, 0}, {32.673453827230212, 21.712001823257985}},
    {"max", 3, 5, {1, 2, 7, 6, 5}, {2, 2, 2}, {2, 2, 2}, {0, 0, 0}, {1, 1, 1}, 1, 0, {0, 0, 0}, {1, 2, 4, 3, 3}, {30.845944396772047, 7.7658692287957329}},
    {"max", 2, 4, {2, 3, 8, 7, 0}, {3, 3, 0}, {1, 2, 0}, {1, 0, 0}, {2, 1, 0}, 0, 0, {0, 0, 0}, {2, 3, 6, 3, 0}, {5.5171439089111658, 6.2204039362487151}},
    {"avg", 2, 4, {1, 2, 9, 10, 0}, {3, 3, 0}, {2, 2, 0}, {1, 1, 0}, {1, 1, 0}, 1, 1, {0, 0, 0}, {1, 2, 5, 6, 0}, {2.1817694024820762, 15.508322945859161}},
    {"avg", 2, 4, {1, 2, 9, 10, 0}, {3, 3, 0}, {2, 2, 0}, {1, 1, 0}, {1, 1, 0}, 1, 0, {0, 0, 0}, {1, 2, 5, 6, 0}, {2.6459626995586798, 23.134533163549268}},
    {"avg", 3, 5, {1, 2, 7, 6, 5}, {3, 2, 3}, {2, 1, 2}, {1, 0, 1}, {1, 1, 1}, 0, 1, {0, 0, 0}, {1, 2, 4, 5, 3}, {0.40044687747993263, 5.4199941740403386}},
    {"avg", 1, 3, {2, 3, 13, 0, 0}, {4, 0, 0}, {3, 0, 0}, {2, 0, 0}, {1, 0, 0}, 1, 1, {0, 0, 0}, {2, 3, 5, 0, 0}, {0.84413057621326137, 5.7015632309620194}},
    {"avg", 1, 3, {2, 3, 13, 0, 0}, {4, 0, 0}, {3, 0, 0}, {2, 0, 0}, {1, 0, 0}, 1, 0, {0, 0, 0}, {2, 3, 5, 0, 0}, {0.72302403870161525, 6.6405608273354177}},
    {"adaptive", 2, 4, {1, 2, 9, 10, 0}, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}, 0, 0, {4, 3, 0}, {1, 2, 4, 3, 0}, {-0.31045375605475944, 1.4583245316934745}},
    {"adaptive", 3, 5, {1, 2, 7, 6, 5}, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}, 0, 0, {3, 6, 2}, {1, 2, 3, 6, 2}, {0.55811717469438238, -1.3684816010586383}},
    {"adaptive", 1, 3, {2, 3, 13, 0, 0}, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}, 0, 0, {5, 0, 0}, {2, 3, 5, 0, 0}, {0.96694906415595716, 6.9317835397732539}},
    {"adaptive", 2, 4, {1, 2, 8, 6, 0}, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}, 0, 0, {4, 3, 0}, {1, 2, 4, 3, 0}, {0.3849281721070581, 9.2568793781606651}},
};

ML_TEST(pool_pytorch_reference) {
    for (size_t i = 0; i < sizeof pool_refs / sizeof pool_refs[0]; i++) {
        const pool_ref *R = &pool_refs[i];
        pool_case c;
        memset(&c, 0, sizeof c);
        c.kind = R->kind[1] == 'a' ? 0 : R->kind[1] == 'v' ? 1 : 2;
        c.p.k = R->k;
        c.p.ceil_mode = R->ceil;
        c.p.count_include_pad = R->incl;
        for (int j = 0; j < R->k; j++) {
            c.p.kernel[j] = R->ks[j];
            c.p.stride[j] = R->s[j];
            c.p.padding[j] = R->p[j];
            c.p.dilation[j] = R->d[j];
            c.osz[j] = R->osz[j];
        }
        for (int dt = 0; dt < 2; dt++) {
            ml_dtype t = dt ? ML_F32 : ML_F64;
            double tol = dt ? 1e-4 : 1e-10;
            ml_tensor *x0 = mk_data(R->xnd, R->xs, 0.37, 0.11), *x = ml_t_cast(x0, t, true), *y = NULL, *r = NULL;
            ML_CHECK_OK(run_pool(&y, x, &c));
            if (y) {
                bool ok = y->ndim == R->xnd;
                for (int j = 0; ok && j < y->ndim; j++) ok = y->shape[j] == R->ys[j];
                if (!ok) ML_FAIL_("%s: output shape %s", pool_str(&c, R->xs), ml_shape_str(y->ndim, y->shape));
                r = ml_t_cotangent(y);
                if (ok && !ml_backward(y, r, false)) {
                    double g0 = ml_t_checksum(y), g1 = ml_t_checksum(x->grad);
                    if (!(fabs(g0 - R->ck[0]) <= tol * (1 + fabs(R->ck[0]))))
                        ML_FAIL_("%s %s: output checksum %.10g vs PyTorch %.10g", ml_dtype_name(t), pool_str(&c, R->xs),
                                 g0, R->ck[0]);
                    if (!(fabs(g1 - R->ck[1]) <= tol * (1 + fabs(R->ck[1]))))
                        ML_FAIL_("%s %s: input grad checksum %.10g vs PyTorch %.10g", ml_dtype_name(t),
                                 pool_str(&c, R->xs), g1, R->ck[1]);
                }
            }
            ml_tensor_release(x0);
            ml_tensor_release(x);
            ml_tensor_release(y);
            ml_tensor_release(r);
        }
    }
}

ML_TEST(pool_unbatched_noncontiguous_nograd) {
    ml_pool_params p = {.k = 2, .kernel = {3, 3}, .stride = {2, 2}, .padding = {1, 1}, .dilation = {1, 1}};
    for (int dt = 0; dt < 2; dt++) {
        ml_dtype t = dt ? ML_F32 : ML_F64;
        ml_tensor *x0 = NULL, *xv = NULL, *xc = NULL, *y1 = NULL, *y2 = NULL, *x1 = NULL, *yu = NULL, *yb = NULL;
        ml_randn(&x0, t, 4, (int64_t[]){2, 3, 9, 8});
        ML_CHECK_OK(ml_transpose(&xv, x0, 2, 3));
        ML_CHECK_OK(ml_contiguous(&xc, xv));
        ML_CHECK_OK(ml_max_pool(&y1, xv, &p));
        ML_CHECK_OK(ml_max_pool(&y2, xc, &p));
        if (y1 && y2) ML_CHECK(ml_t_maxdiff(y1, y2) == 0);
        ML_CHECK_OK(ml_select(&x1, xc, 0, 1));
        ML_CHECK_OK(ml_max_pool(&yu, x1, &p));
        ML_CHECK_OK(ml_select(&yb, y2, 0, 1));
        if (yu && yb) ML_CHECK(yu->ndim == 3 && ml_t_maxdiff(yu, yb) == 0);
        ml_tensor *ya = NULL, *yab = NULL, *yas = NULL;
        ML_CHECK_OK(ml_adaptive_avg_pool(&ya, x1, 2, (int64_t[]){3, 3}));
        ML_CHECK_OK(ml_adaptive_avg_pool(&yab, xc, 2, (int64_t[]){3, 3}));
        ML_CHECK_OK(ml_select(&yas, yab, 0, 1));
        if (ya && yas) ML_CHECK(ya->ndim == 3 && ml_t_maxdiff(ya, yas) == 0);
        /* grad disabled: nothing recorded (max pooling keeps no workspace) */
        ml_tensor *xg = NULL, *yn = NULL;
        ml_randn(&xg, t, 4, (int64_t[]){1, 2, 6, 6});
        ml_set_requires_grad(xg, true);
        bool prev = ml_set_grad_enabled(false);
        ML_CHECK_OK(ml_max_pool(&yn, xg, &p));
        ml_set_grad_enabled(prev);
        ML_CHECK(yn && !yn->requires_grad && !yn->grad_fn);
        ml_tensor *ts[] = {x0, xv, xc, y1, y2, x1, yu, yb, ya, yab, yas, xg, yn};
        for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) ml_tensor_release(ts[i]);
    }
}

ML_TEST(pool_errors) {
    ml_tensor *x = NULL, *xi = NULL, *y = (ml_tensor *)1;
    ml_randn(&x, ML_F32, 5, (int64_t[]){1, 2, 4, 4, 4});
    ml_zeros(&xi, ML_I64, 5, (int64_t[]){1, 2, 4, 4, 4});
    ml_pool_params p = {.k = 3, .kernel = {2, 2, 2}, .stride = {2, 2, 2}, .padding = {0, 0, 0}, .dilation = {1, 1, 1}};
    ml_pool_params q = p;
    q.padding[1] = 2;
    ml_t_expect_err(ml_max_pool(&y, x, &q), ML_ERR_ARG, "max_pool3d", "half", "padding > kernel/2");
    q = p;
    q.kernel[0] = 0;
    ml_t_expect_err(ml_avg_pool(&y, x, &q), ML_ERR_ARG, "avg_pool3d", "kernel", "kernel 0");
    q = p;
    q.kernel[2] = 6;
    q.stride[2] = 1;
    ml_t_expect_err(ml_max_pool(&y, x, &q), ML_ERR_SHAPE, "max_pool3d", "[1, 2, 4, 4, 4]", "output size <= 0");
    q = p;
    q.k = 2;
    ml_t_expect_err(ml_max_pool(&y, x, &q), ML_ERR_SHAPE, "max_pool2d", "[1, 2, 4, 4, 4]", "wrong rank");
    ml_t_expect_err(ml_max_pool(&y, xi, &p), ML_ERR_DTYPE, "max_pool3d", "int64", "integer input");
    ml_t_expect_err(ml_adaptive_avg_pool(&y, x, 3, (int64_t[]){2, 0, 2}), ML_ERR_ARG, "adaptive_avg_pool3d", "[2, 0, 2]",
               "adaptive size 0");
    ml_t_expect_err(ml_adaptive_avg_pool(&y, x, 1, (int64_t[]){2}), ML_ERR_SHAPE, "adaptive_avg_pool1d", "[1, 2, 4, 4, 4]",
               "adaptive rank");
    ml_t_expect_err(ml_max_pool(&y, x, NULL), ML_ERR_ARG, "max_pool", NULL, "NULL params");
    ML_CHECK(y == NULL);
    ml_tensor_release(x);
    ml_tensor_release(xi);
}

int main(void) {
    const char *s = getenv("ML_TEST_SEED");
    g_seed = s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL);
    printf("seed %llu (set ML_TEST_SEED to replay)\n", (unsigned long long)g_seed);
    g_rng = g_seed * 0x9E3779B97F4A7C15ULL + 7;
    ml_manual_seed(g_seed);
    ML_RUN(matmul_gradcheck);
    ML_RUN(matmul_f32_vs_f64);
    ML_RUN(matmul_fuzz);
    ML_RUN(matmul_values_and_edge_shapes);
    ML_RUN(linear_gradcheck_and_f32);
    ML_RUN(matmul_errors);
    ML_RUN(pool1d_gradcheck);
    ML_RUN(pool2d_gradcheck);
    ML_RUN(pool3d_gradcheck);
    ML_RUN(pool1d_f32_vs_f64);
    ML_RUN(pool2d_f32_vs_f64);
    ML_RUN(pool3d_f32_vs_f64);
    ML_RUN(pool_fuzz);
    ML_RUN(pool_pytorch_reference);
    ML_RUN(pool_unbatched_noncontiguous_nograd);
    ML_RUN(pool_errors);
    (void)mld_cache_size;
    return ml_test_summary();
}
