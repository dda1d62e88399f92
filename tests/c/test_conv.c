/* conv / conv_transpose (1-3 spatial dims): f64 gradient checks, f32 (oneDNN) vs f64 (reference)
 * agreement for forward and every backward, PyTorch reference checksums, primitive-cache reuse,
 * non-contiguous and unbatched inputs, and argument errors.
 * Random shapes come from a seed printed at start (set ML_TEST_SEED to replay). */
#include "ml_test.h"
#include "nn/ml_nn.h"
#include "nn/ml_dnnl_priv.h"

#include <stdint.h>
#include <time.h>

static uint64_t g_seed, g_rng;

static int rnd(int n) { /* xorshift64*, uniform in [0, n) */
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return (int)(((g_rng * 2685821657736338717ULL) >> 33) % (uint64_t)n);
}

/* ------------------------------------------------------------ helpers */
static ml_tensor *mk_data(int nd, const int64_t *shape, double a, double b, double scale) {
    ml_tensor *t = NULL;
    if (ml_tensor_empty(&t, ML_F64, nd, shape)) return NULL;
    int64_t n = ml_tensor_numel(t);
    double *d = ml_tensor_data(t);
    for (int64_t i = 0; i < n; i++) d[i] = sin(a * (double)i + b) * scale;
    return t;
}

/* ------------------------------------------------------------ cases */
typedef struct {
    ml_conv_params p;
    bool tr, bias;
    int64_t xs[5], ws[5];
} conv_case;

static ml_err run_conv(ml_tensor **out, ml_tensor *x, ml_tensor *w, ml_tensor *b, const conv_case *c) {
    return c->tr ? ml_conv_transpose(out, x, w, b, &c->p) : ml_conv(out, x, w, b, &c->p);
}

static ml_err f_conv(ml_tensor **out, ml_tensor **in, void *ud) {
    conv_case *c = ud;
    return run_conv(out, in[0], in[1], c->bias ? in[2] : NULL, c);
}

/* variants: 0 plain+bias, 1 stride 2 pad 1, 2 dilation 2 pad 1 (+ output_padding 1 via dilation for tr),
 * 3 groups 2 stride 2, 4 groups 2 dilation 2 pad 2 */
static void make_case(conv_case *c, int k, bool tr, int variant, bool big) {
    memset(c, 0, sizeof *c);
    c->p.k = k;
    c->tr = tr;
    int64_t G = variant >= 3 ? 2 : 1;
    c->p.groups = G;
    c->bias = variant == 0 || variant == 2 || variant == 3;
    int64_t s = (variant == 1 || variant == 3) ? 2 : 1;
    int64_t d = (variant == 2 || variant == 4) ? 2 : 1;
    int64_t pd = variant == 4 ? 2 : (variant == 1 || variant == 2 || variant == 3) ? 1 : 0;
    int64_t N = big ? 2 : (k == 3 ? 1 : 1 + rnd(2));
    int64_t cmul = big ? (k == 3 ? 4 : 8) : 1 + rnd(2);
    int64_t Cin = G * (big ? cmul + rnd(2) * 4 : cmul), Cout = G * (big ? cmul : 1 + rnd(2));
    c->xs[0] = N;
    c->xs[1] = Cin;
    if (!tr) { c->ws[0] = Cout; c->ws[1] = Cin / G; }
    else { c->ws[0] = Cin; c->ws[1] = Cout / G; }
    for (int i = 0; i < k; i++) {
        c->p.stride[i] = s;
        c->p.dilation[i] = d;
        c->p.padding[i] = pd;
        int64_t K = big ? 3 : 1 + rnd(k == 3 ? 2 : 3);
        if (variant == 4 && K == 1) K = 2;
        c->ws[2 + i] = K;
        if (tr) c->p.output_padding[i] = (s > 1 || d > 1) ? 1 : 0;
        int64_t I;
        if (!tr) {
            int64_t minI = d * (K - 1) + 1 - 2 * pd;
            if (minI < 1) minI = 1;
            I = minI + (big ? (k == 3 ? 5 : 8) + rnd(3) : rnd(k == 3 ? 2 : 3));
        } else {
            I = 1 + (big ? (k == 3 ? 4 : 6) + rnd(3) : rnd(k == 3 ? 2 : 3));
            while ((I - 1) * s - 2 * pd + d * (K - 1) + c->p.output_padding[i] + 1 < 1) I++;
        }
        c->xs[2 + i] = I;
    }
}

static const char *case_str(const conv_case *c) {
    static char buf[256];
    int k = c->p.k;
    snprintf(buf, sizeof buf, "%s%dd x%s w%s stride %s pad %s dil %s opad %s groups %lld bias %d",
             c->tr ? "conv_transpose" : "conv", k, ml_shape_str(k + 2, c->xs), ml_shape_str(k + 2, c->ws),
             ml_shape_str(k, c->p.stride), ml_shape_str(k, c->p.padding), ml_shape_str(k, c->p.dilation),
             ml_shape_str(k, c->p.output_padding), (long long)c->p.groups, c->bias);
    return buf;
}

static int64_t bias_len(const conv_case *c) { return c->tr ? c->ws[1] * c->p.groups : c->ws[0]; }

/* ------------------------------------------------------------ gradient checks */
static void gradcheck_conv(int k, bool tr) {
    for (int v = 0; v < 5; v++) {
        conv_case c;
        make_case(&c, k, tr, v, false);
        int64_t nb = bias_len(&c);
        ml_tensor *in[3] = {ml_t_randn(k + 2, c.xs, true), ml_t_randn(k + 2, c.ws, true),
                            c.bias ? ml_t_randn(1, &nb, true) : NULL};
        if (!ml_gradcheck(case_str(&c), f_conv, 3, in, &c, 1e-6, 1e-6, 1e-5)) printf("     case: %s\n", case_str(&c));
        /* input-only and weight-only gradients */
        ml_set_requires_grad(in[1], false);
        if (in[2]) ml_set_requires_grad(in[2], false);
        ml_gradcheck(case_str(&c), f_conv, 3, in, &c, 1e-6, 1e-6, 1e-5);
        ml_set_requires_grad(in[0], false);
        ml_set_requires_grad(in[1], true);
        ml_gradcheck(case_str(&c), f_conv, 3, in, &c, 1e-6, 1e-6, 1e-5);
        for (int i = 0; i < 3; i++) ml_tensor_release(in[i]);
    }
}

ML_TEST(conv1d_gradcheck) { gradcheck_conv(1, false); }
ML_TEST(conv2d_gradcheck) { gradcheck_conv(2, false); }
ML_TEST(conv3d_gradcheck) { gradcheck_conv(3, false); }
ML_TEST(conv_transpose1d_gradcheck) { gradcheck_conv(1, true); }
ML_TEST(conv_transpose2d_gradcheck) { gradcheck_conv(2, true); }
ML_TEST(conv_transpose3d_gradcheck) { gradcheck_conv(3, true); }

/* ------------------------------------------------------------ f32 (oneDNN) vs f64 */
/* run forward + backward in both dtypes on the same data and compare everything */
static void agree_case(const conv_case *c, double tol) {
    int k = c->p.k;
    int64_t nb = bias_len(c);
    ml_tensor *in[3] = {ml_t_randn(k + 2, c->xs, true), ml_t_randn(k + 2, c->ws, true),
                        c->bias ? ml_t_randn(1, &nb, true) : NULL};
    ml_t_agree(case_str(c), f_conv, 3, in, (void *)c, tol);
    for (int i = 0; i < 3; i++) ml_tensor_release(in[i]);
}

static void agree_conv(int k, bool tr) {
    for (int v = 0; v < 5; v++) {
        conv_case c;
        make_case(&c, k, tr, v, true);
        agree_case(&c, 1e-4);
        make_case(&c, k, tr, v, false); /* small/odd channel counts too */
        agree_case(&c, 1e-4);
    }
}

ML_TEST(conv1d_f32_vs_f64) { agree_conv(1, false); }
ML_TEST(conv2d_f32_vs_f64) { agree_conv(2, false); }
ML_TEST(conv3d_f32_vs_f64) { agree_conv(3, false); }
ML_TEST(conv_transpose1d_f32_vs_f64) { agree_conv(1, true); }
ML_TEST(conv_transpose2d_f32_vs_f64) { agree_conv(2, true); }
ML_TEST(conv_transpose3d_f32_vs_f64) { agree_conv(3, true); }

/* 32 -> 32 channels 3x3x3 on a 16^3 volume: the blocked-layout path the benchmark uses */
ML_TEST(conv3d_blocked_f32_vs_f64) {
    conv_case c;
    memset(&c, 0, sizeof c);
    c.p.k = 3;
    c.p.groups = 1;
    c.bias = true;
    int64_t xs[5] = {1, 32, 12, 12, 12}, ws[5] = {32, 32, 3, 3, 3};
    memcpy(c.xs, xs, sizeof xs);
    memcpy(c.ws, ws, sizeof ws);
    for (int i = 0; i < 3; i++) { c.p.stride[i] = 1; c.p.padding[i] = 1; c.p.dilation[i] = 1; }
    agree_case(&c, 1e-4);
    c.tr = true;
    agree_case(&c, 1e-4);
}

/* few channels on the output side run on the direct kernels (ml_conv_direct.c): rows longer than
 * one 16-wide block (interior blocks read the input in place, edge blocks a padded copy), odd row
 * lengths, strides in every dim, a head like the U-Net's (conv_transpose 8->3 stride 2, conv 3->3) */
ML_TEST(conv3d_direct_few_channels_f32_vs_f64) {
    static const struct {
        bool tr;
        int64_t xs[5], ws[5], s[3], p[3], op[3];
    } cases[] = {
        {false, {2, 3, 4, 5, 40}, {3, 3, 3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}},
        {true, {1, 8, 3, 4, 21}, {8, 3, 3, 3, 3}, {2, 2, 2}, {1, 1, 1}, {1, 1, 1}},
        {false, {1, 2, 5, 4, 37}, {4, 2, 3, 2, 3}, {1, 1, 1}, {0, 1, 2}, {0, 0, 0}},
        {false, {1, 1, 6, 5, 37}, {8, 1, 3, 3, 3}, {2, 1, 2}, {1, 1, 1}, {0, 0, 0}}, /* backward-data, stride 2 */
        {true, {1, 5, 2, 3, 18}, {5, 2, 2, 3, 4}, {1, 2, 3}, {0, 1, 2}, {0, 1, 2}},
        {false, {1, 3, 3, 3, 33}, {2, 3, 1, 1, 5}, {1, 1, 1}, {0, 0, 4}, {0, 0, 0}},  /* padding > K - 1 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        conv_case c;
        memset(&c, 0, sizeof c);
        c.p.k = 3;
        c.p.groups = 1;
        c.tr = cases[i].tr;
        c.bias = i % 2 == 0;
        memcpy(c.xs, cases[i].xs, sizeof c.xs);
        memcpy(c.ws, cases[i].ws, sizeof c.ws);
        for (int d = 0; d < 3; d++) {
            c.p.stride[d] = cases[i].s[d];
            c.p.padding[d] = cases[i].p[d];
            c.p.dilation[d] = 1;
            c.p.output_padding[d] = cases[i].op[d];
        }
        agree_case(&c, 1e-4);
    }
}

/* random odd geometries: large padding, dilation 3, stride 3, groups 3, output_padding < dilation;
 * whatever oneDNN rejects must fall back and still agree */
#ifndef CONV_FUZZ_N
#define CONV_FUZZ_N 60
#endif
ML_TEST(conv_fuzz_f32_vs_f64) {
    for (int it = 0; it < CONV_FUZZ_N; it++) {
        conv_case c;
        memset(&c, 0, sizeof c);
        int k = 1 + rnd(3);
        c.p.k = k;
        c.tr = rnd(2);
        c.bias = rnd(2);
        int64_t G = 1 + rnd(3);
        c.p.groups = G;
        int64_t Cin = G * (1 + rnd(3)), Cout = G * (1 + rnd(3));
        c.xs[0] = 1 + rnd(2);
        c.xs[1] = Cin;
        if (!c.tr) { c.ws[0] = Cout; c.ws[1] = Cin / G; }
        else { c.ws[0] = Cin; c.ws[1] = Cout / G; }
        for (int i = 0; i < k; i++) {
            int64_t K = 1 + rnd(3), s = 1 + rnd(3), d = 1 + rnd(3), pd = rnd(4);
            c.ws[2 + i] = K;
            c.p.stride[i] = s;
            c.p.dilation[i] = d;
            c.p.padding[i] = pd;
            int64_t I = 1 + rnd(k == 3 ? 5 : 9);
            if (!c.tr) {
                while (I + 2 * pd - d * (K - 1) - 1 < 0) I++;
            } else {
                int64_t opmax = (s > d ? s : d) - 1;
                c.p.output_padding[i] = opmax > 0 ? rnd((int)opmax + 1) : 0;
                while ((I - 1) * s - 2 * pd + d * (K - 1) + c.p.output_padding[i] + 1 < 1) I++;
            }
            c.xs[2 + i] = I;
        }
        int failed = ml_t_cur_failed;
        ml_t_cur_failed = 0;
        agree_case(&c, 1e-4);
        if (ml_t_cur_failed) printf("     case: %s\n", case_str(&c));
        ml_t_cur_failed |= failed;
    }
}

ML_TEST(conv_empty_batch) {
    for (int dt = 0; dt < 2; dt++) {
        ml_dtype t = dt ? ML_F32 : ML_F64;
        ml_tensor *x = NULL, *w = NULL, *b = NULL, *y = NULL, *yt = NULL, *wt = NULL;
        ml_zeros(&x, t, 4, (int64_t[]){0, 3, 5, 5});
        ml_randn(&w, t, 4, (int64_t[]){4, 3, 3, 3});
        ml_randn(&wt, t, 4, (int64_t[]){3, 2, 3, 3});
        ml_randn(&b, t, 1, (int64_t[]){4});
        ml_conv_params p = {.k = 2, .stride = {1, 1}, .padding = {1, 1}, .dilation = {1, 1}, .groups = 1};
        ML_CHECK_OK(ml_conv(&y, x, w, b, &p));
        if (y) ML_CHECK(y->ndim == 4 && y->shape[0] == 0 && y->shape[1] == 4 && y->shape[2] == 5);
        ML_CHECK_OK(ml_conv_transpose(&yt, x, wt, NULL, &p));
        if (yt) ML_CHECK(yt->ndim == 4 && yt->shape[0] == 0 && yt->shape[1] == 2);
        ml_tensor *ts[] = {x, w, b, y, yt, wt};
        for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) ml_tensor_release(ts[i]);
    }
}

/* an f64 gradient fed to an f32 conv is converted, not misread */
ML_TEST(conv_grad_dtype_mismatch) {
    ml_tensor *x = NULL, *w = NULL, *y = NULL, *g = NULL, *g32 = NULL;
    ml_randn(&x, ML_F32, 3, (int64_t[]){1, 2, 9});
    ml_randn(&w, ML_F32, 3, (int64_t[]){3, 2, 3});
    ml_set_requires_grad(x, true);
    ml_conv_params p = {.k = 1, .stride = {1}, .padding = {0}, .dilation = {1}, .groups = 1};
    ML_CHECK_OK(ml_conv(&y, x, w, NULL, &p));
    if (y) {
        ml_randn(&g, ML_F64, 3, y->shape);
        g32 = ml_t_cast(g, ML_F32, false);
        ML_CHECK_OK(ml_backward(y, g, true));
        ml_tensor *g1 = x->grad;
        x->grad = NULL;
        ML_CHECK_OK(ml_backward(y, g32, false));
        if (g1 && x->grad) ML_CHECK(ml_t_maxdiff(g1, x->grad) == 0);
        ml_tensor_release(g1);
    }
    ml_tensor *ts[] = {x, w, y, g, g32};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) ml_tensor_release(ts[i]);
}

/* ------------------------------------------------------------ PyTorch references */
typedef struct {
    int tr, k, xnd;
    int64_t xs[5];
    int wnd;
    int64_t ws[5], s[3], p[3], d[3], op[3], ys[5];
    int groups, bias, unused;
    double ck[4]; /* y, x.grad, w.grad, b.grad checksums for cotangent cos(0.1 j) */
} conv_ref;

/* generated by PyTorch 1.13.0a0 (float64): x = sin(0.37 i + 0.11), w = 0.5 sin(0.23 i + 0.3), b = 0.1 i - 0.2 */
static const conv_ref conv_refs[] = {
    {0, 1, 3, {2, 4, 11, 0, 0}, 3, {6, 2, 3, 0, 0}, {2, 0, 0}, {1, 0, 0}, {2, 0, 0}, {0, 0, 0}, {2, 6, 5, 0, 0}, 2, 1, 0, {0.80045950293353041, -15.688142673596408, 6.6767192655563781, -0.39122347554317649}},
    {0, 2, 4, {1, 3, 9, 8, 0}, 4, {4, 3, 3, 2, 0}, {2, 1, 0}, {1, 0, 0}, {1, 2, 0}, {0, 0, 0}, {1, 4, 5, 6, 0}, 1, 1, 0, {2.4696774466309188, -5.8503934045841159, -2.0535314276906007, -1.023178857704637}},
    {0, 3, 5, {1, 2, 6, 5, 7}, 5, {4, 1, 2, 3, 2}, {1, 2, 2}, {1, 1, 0}, {1, 1, 1}, {0, 0, 0}, {1, 4, 7, 3, 3}, 2, 0, 0, {-20.212007586081768, 1.7896664677681642, 23.174096216054476, 0}},
    {1, 1, 3, {2, 4, 7, 0, 0}, 3, {4, 3, 3, 0, 0}, {2, 0, 0}, {1, 0, 0}, {1, 0, 0}, {1, 0, 0}, {2, 6, 14, 0, 0}, 2, 1, 0, {53.444069961825491, -9.8657379218856605, 9.3673092349346074, -0.18463403520534238}},
    {1, 2, 4, {1, 3, 5, 4, 0}, 4, {3, 2, 3, 3, 0}, {2, 3, 0}, {1, 0, 0}, {1, 1, 0}, {1, 2, 0}, {1, 2, 10, 14, 0}, 1, 1, 0, {60.478506195608176, 4.2126894088665763, -1.7429983618412366, -0.33192893686329522}},
    {1, 3, 5, {1, 2, 3, 4, 3}, 5, {2, 2, 2, 3, 2}, {1, 2, 1}, {0, 1, 0}, {2, 1, 1}, {0, 1, 0}, {1, 2, 5, 8, 4}, 1, 1, 0, {0.29332247632056996, -9.5310291230809003, -59.951518310853551, 0.37436211907580935}},
    {1, 2, 4, {1, 2, 4, 4, 0}, 4, {2, 2, 3, 3, 0}, {1, 1, 0}, {0, 0, 0}, {2, 2, 0}, {1, 1, 0}, {1, 2, 9, 9, 0}, 1, 0, 0, {-1.5531275150300772, 16.935066147908074, -24.19309114127692, 0}},
};

ML_TEST(conv_pytorch_reference) {
    for (size_t ci = 0; ci < sizeof conv_refs / sizeof conv_refs[0]; ci++) {
        const conv_ref *R = &conv_refs[ci];
        conv_case c;
        memset(&c, 0, sizeof c);
        c.tr = R->tr;
        c.bias = R->bias;
        c.p.k = R->k;
        c.p.groups = R->groups;
        memcpy(c.xs, R->xs, sizeof c.xs);
        memcpy(c.ws, R->ws, sizeof c.ws);
        for (int i = 0; i < R->k; i++) {
            c.p.stride[i] = R->s[i];
            c.p.padding[i] = R->p[i];
            c.p.dilation[i] = R->d[i];
            c.p.output_padding[i] = R->op[i];
        }
        int64_t nb = bias_len(&c);
        for (int dt = 0; dt < 2; dt++) {
            ml_dtype t = dt ? ML_F32 : ML_F64;
            double tol = dt ? 2e-4 : 1e-9;
            ml_tensor *x0 = mk_data(R->xnd, R->xs, 0.37, 0.11, 1.0), *w0 = mk_data(R->wnd, R->ws, 0.23, 0.3, 0.5);
            ml_tensor *b0 = NULL;
            if (R->bias) {
                ml_tensor_empty(&b0, ML_F64, 1, &nb);
                for (int64_t i = 0; i < nb; i++) ((double *)ml_tensor_data(b0))[i] = 0.1 * (double)i - 0.2;
            }
            ml_tensor *x = ml_t_cast(x0, t, true), *w = ml_t_cast(w0, t, true), *b = ml_t_cast(b0, t, true), *y = NULL, *r = NULL;
            ML_CHECK_OK(run_conv(&y, x, w, b, &c));
            if (y) {
                bool shape_ok = y->ndim == R->xnd;
                for (int i = 0; shape_ok && i < y->ndim; i++) shape_ok = y->shape[i] == R->ys[i];
                if (!shape_ok) ML_FAIL_("%s: output shape %s", case_str(&c), ml_shape_str(y->ndim, y->shape));
                r = ml_t_cotangent(y);
                if (shape_ok && !ml_backward(y, r, false)) {
                    double got[4] = {ml_t_checksum(y), ml_t_checksum(x->grad), ml_t_checksum(w->grad), b ? ml_t_checksum(b->grad) : 0};
                    const char *nm[4] = {"output", "input grad", "weight grad", "bias grad"};
                    for (int q = 0; q < 4; q++)
                        if (!(fabs(got[q] - R->ck[q]) <= tol * (1 + fabs(R->ck[q]))))
                            ML_FAIL_("%s %s: %s checksum %.10g vs PyTorch %.10g", ml_dtype_name(t), case_str(&c), nm[q],
                                     got[q], R->ck[q]);
                }
            }
            ml_tensor *ts[] = {x0, w0, b0, x, w, b, y, r};
            for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) ml_tensor_release(ts[i]);
        }
    }
}

/* ------------------------------------------------------------ layouts, batching, caching */
ML_TEST(conv_noncontiguous_and_unbatched) {
    /* x given as a transposed view; w as a permuted view; result equals the contiguous run */
    int64_t xs[4] = {2, 6, 7, 5}, ws[4] = {4, 6, 3, 3};
    ml_conv_params p = {.k = 2, .stride = {1, 2}, .padding = {1, 1}, .dilation = {1, 1}, .groups = 1};
    for (int dt = 0; dt < 2; dt++) {
        ml_dtype t = dt ? ML_F32 : ML_F64;
        ml_tensor *x0 = NULL, *w0 = NULL, *w1 = NULL, *xv = NULL, *xc = NULL, *wv = NULL, *y1 = NULL, *y2 = NULL;
        ml_randn(&x0, t, 4, (int64_t[]){2, 6, 5, 7});
        ml_randn(&w1, t, 4, (int64_t[]){6, 4, 3, 3});
        ML_CHECK_OK(ml_transpose(&xv, x0, 2, 3)); /* [2,6,7,5] non-contiguous */
        ML_CHECK_OK(ml_contiguous(&xc, xv));
        ML_CHECK(!ml_tensor_is_contiguous(xv) && xv->shape[2] == xs[2]);
        ML_CHECK_OK(ml_transpose(&wv, w1, 0, 1)); /* [4,6,3,3] non-contiguous */
        ML_CHECK_OK(ml_contiguous(&w0, wv));
        ML_CHECK(!ml_tensor_is_contiguous(wv) && wv->shape[0] == ws[0]);
        ML_CHECK_OK(ml_conv(&y1, xv, wv, NULL, &p));
        ML_CHECK_OK(ml_conv(&y2, xc, w0, NULL, &p));
        if (y1 && y2) ML_CHECK(ml_t_maxdiff(y1, y2) == 0);
        /* unbatched [C, H, W] */
        ml_tensor *x1 = NULL, *yu = NULL, *yb = NULL, *xb = NULL;
        ML_CHECK_OK(ml_select(&x1, xc, 0, 1));
        ML_CHECK_OK(ml_conv(&yu, x1, w0, NULL, &p));
        ML_CHECK_OK(ml_select(&yb, y2, 0, 1));
        if (yu && yb) ML_CHECK(yu->ndim == 3 && ml_t_maxdiff(yu, yb) == 0);
        ml_tensor *ts[] = {x0, w0, w1, xv, xc, wv, y1, y2, x1, yu, yb, xb};
        for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) ml_tensor_release(ts[i]);
    }
}

ML_TEST(conv_primitive_cache_reuse) {
    int64_t xs[5] = {1, 8, 6, 6, 6}, ws[5] = {8, 8, 3, 3, 3};
    ml_conv_params p = {.k = 3, .stride = {1, 1, 1}, .padding = {1, 1, 1}, .dilation = {1, 1, 1}, .groups = 1};
    int sizes[3];
    for (int it = 0; it < 3; it++) {
        ml_tensor *x = NULL, *w = NULL, *y = NULL, *r = NULL;
        ml_randn(&x, ML_F32, 5, xs);
        ml_randn(&w, ML_F32, 5, ws);
        ml_set_requires_grad(x, true);
        ml_set_requires_grad(w, true);
        ML_CHECK_OK(ml_conv(&y, x, w, NULL, &p));
        if (y) {
            ml_randn(&r, ML_F32, y->ndim, y->shape);
            ML_CHECK_OK(ml_backward(y, r, false));
        }
        sizes[it] = mld_cache_size();
        ml_tensor *ts[] = {x, w, y, r};
        for (size_t i = 0; i < 4; i++) ml_tensor_release(ts[i]);
    }
    ML_CHECK(sizes[0] > 0);
    ML_CHECK(sizes[1] == sizes[0] && sizes[2] == sizes[0]);
    mld_cache_clear();
    ML_CHECK(mld_cache_size() == 0);
}

ML_TEST(conv_no_grad_records_nothing) {
    int64_t xs[4] = {1, 3, 6, 6}, ws[4] = {4, 3, 3, 3};
    ml_conv_params p = {.k = 2, .stride = {1, 1}, .padding = {0, 0}, .dilation = {1, 1}, .groups = 1};
    ml_tensor *x = NULL, *w = NULL, *y = NULL;
    ml_randn(&x, ML_F32, 4, xs);
    ml_randn(&w, ML_F32, 4, ws);
    ml_set_requires_grad(w, true);
    bool prev = ml_set_grad_enabled(false);
    ML_CHECK_OK(ml_conv(&y, x, w, NULL, &p));
    ml_set_grad_enabled(prev);
    ML_CHECK(y && !y->requires_grad && !y->grad_fn);
    ml_tensor_release(x);
    ml_tensor_release(w);
    ml_tensor_release(y);
}

/* the autograd node keeps its op name (a static string) however many ops run afterwards */
ML_TEST(conv_node_name_stable) {
    ml_tensor *x = NULL, *w = NULL, *y = NULL;
    ml_randn(&x, ML_F32, 5, (int64_t[]){1, 2, 4, 4, 4});
    ml_randn(&w, ML_F32, 5, (int64_t[]){2, 2, 1, 1, 1});
    ml_set_requires_grad(w, true);
    ml_conv_params p = {.k = 3, .stride = {1, 1, 1}, .padding = {0, 0, 0}, .dilation = {1, 1, 1}, .groups = 1};
    ML_CHECK_OK(ml_conv(&y, x, w, NULL, &p));
    for (int i = 0; i < 20; i++) {
        ml_tensor *z = NULL;
        ml_conv_params q = p;
        q.k = 1 + i % 3;
        ml_tensor *xi = NULL, *wi = NULL;
        int64_t xs[5] = {1, 2, 4, 4, 4}, ws[5] = {2, 2, 1, 1, 1};
        ml_randn(&xi, ML_F32, q.k + 2, xs);
        ml_randn(&wi, ML_F32, q.k + 2, ws);
        ml_conv_transpose(&z, xi, wi, NULL, &q);
        ml_tensor_release(z);
        ml_tensor_release(xi);
        ml_tensor_release(wi);
    }
    ML_CHECK(y && y->grad_fn && strcmp(y->grad_fn->name, "conv3d") == 0);
    ml_tensor_release(x);
    ml_tensor_release(w);
    ml_tensor_release(y);
}


ML_TEST(conv_errors) {
    ml_tensor *x = NULL, *w = NULL, *w4 = NULL, *wg = NULL, *xi = NULL, *w64 = NULL, *b = NULL, *y = (ml_tensor *)1;
    ml_randn(&x, ML_F32, 5, (int64_t[]){2, 3, 8, 8, 8});
    ml_randn(&w, ML_F32, 5, (int64_t[]){16, 3, 3, 3, 3});
    ml_randn(&w4, ML_F32, 5, (int64_t[]){16, 4, 3, 3, 3});
    ml_randn(&wg, ML_F32, 5, (int64_t[]){16, 1, 3, 3, 3});
    ml_randn(&w64, ML_F64, 5, (int64_t[]){16, 3, 3, 3, 3});
    ml_randn(&b, ML_F32, 1, (int64_t[]){7});
    ml_zeros(&xi, ML_I32, 5, (int64_t[]){2, 3, 8, 8, 8});
    ml_conv_params p = {.k = 3, .stride = {1, 1, 1}, .padding = {0, 0, 0}, .dilation = {1, 1, 1}, .groups = 1};

    ml_t_expect_err(ml_conv(&y, x, w4, NULL, &p), ML_ERR_SHAPE, "conv3d", "[16, 4, 3, 3, 3]", "channel mismatch");
    ML_CHECK(y == NULL);
    ML_CHECK(strstr(ml_errmsg(), "[2, 3, 8, 8, 8]") && strstr(ml_errmsg(), "groups 1"));
    ml_conv_params pg = p;
    pg.groups = 3;
    ml_t_expect_err(ml_conv(&y, x, wg, NULL, &pg), ML_ERR_SHAPE, "conv3d", "groups 3", "groups do not divide out channels");
    pg.groups = 2;
    ml_t_expect_err(ml_conv(&y, x, w, NULL, &pg), ML_ERR_SHAPE, "conv3d", "groups 2", "groups do not divide in channels");
    pg.groups = 0;
    ml_t_expect_err(ml_conv(&y, x, w, NULL, &pg), ML_ERR_ARG, "conv3d", "groups", "groups 0");
    ml_conv_params p2 = p;
    p2.k = 2;
    ml_t_expect_err(ml_conv(&y, x, w, NULL, &p2), ML_ERR_SHAPE, "conv2d", "[2, 3, 8, 8, 8]", "wrong input rank");
    ml_conv_params pb = p;
    pb.stride[1] = 0;
    ml_t_expect_err(ml_conv(&y, x, w, NULL, &pb), ML_ERR_ARG, "conv3d", "stride", "zero stride");
    pb = p;
    pb.dilation[0] = 4;
    ml_t_expect_err(ml_conv(&y, x, w, NULL, &pb), ML_ERR_SHAPE, "conv3d", "output size", "output size <= 0");
    ml_t_expect_err(ml_conv(&y, x, w64, NULL, &p), ML_ERR_DTYPE, "conv3d", "float64", "f32 input with f64 weight");
    ml_t_expect_err(ml_conv(&y, xi, w, NULL, &p), ML_ERR_DTYPE, "conv3d", "int32", "integer input");
    ml_t_expect_err(ml_conv(&y, x, w, b, &p), ML_ERR_SHAPE, "conv3d", "[7]", "bias size");
    ml_conv_params pk = p;
    pk.k = 4;
    ml_t_expect_err(ml_conv(&y, x, w, NULL, &pk), ML_ERR_ARG, "conv", "k", "k = 4");
    ml_t_expect_err(ml_conv(&y, x, w, NULL, NULL), ML_ERR_ARG, "conv", NULL, "NULL params");
    /* conv_transpose */
    ml_conv_params pt = p;
    pt.stride[0] = 2;
    pt.output_padding[0] = 2;
    ml_tensor *wt = NULL;
    ml_randn(&wt, ML_F32, 5, (int64_t[]){3, 4, 3, 3, 3});
    ml_t_expect_err(ml_conv_transpose(&y, x, wt, NULL, &pt), ML_ERR_ARG, "conv_transpose3d", "output_padding",
               "output_padding >= stride and dilation");
    ml_t_expect_err(ml_conv_transpose(&y, x, w, NULL, &p), ML_ERR_SHAPE, "conv_transpose3d", "[16, 3, 3, 3, 3]",
               "conv_transpose channel mismatch");
    pt = p;
    pt.groups = 2;
    ml_t_expect_err(ml_conv_transpose(&y, x, wt, NULL, &pt), ML_ERR_SHAPE, "conv_transpose3d", "groups 2",
               "conv_transpose groups");
    pt = p;
    pt.padding[2] = 5;
    ml_t_expect_err(ml_conv_transpose(&y, x, wt, NULL, &pt), ML_ERR_SHAPE, "conv_transpose3d", "output size",
               "conv_transpose output size");
    ML_CHECK(y == NULL);
    ml_tensor *ts[] = {x, w, w4, wg, xi, w64, b, wt};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) ml_tensor_release(ts[i]);
}

int main(void) {
    const char *s = getenv("ML_TEST_SEED");
    g_seed = s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL);
    printf("seed %llu (set ML_TEST_SEED to replay)\n", (unsigned long long)g_seed);
    g_rng = g_seed * 0x9E3779B97F4A7C15ULL + 1;
    ml_manual_seed(g_seed);
    ML_RUN(conv1d_gradcheck);
    ML_RUN(conv2d_gradcheck);
    ML_RUN(conv3d_gradcheck);
    ML_RUN(conv_transpose1d_gradcheck);
    ML_RUN(conv_transpose2d_gradcheck);
    ML_RUN(conv_transpose3d_gradcheck);
    ML_RUN(conv1d_f32_vs_f64);
    ML_RUN(conv2d_f32_vs_f64);
    ML_RUN(conv3d_f32_vs_f64);
    ML_RUN(conv_transpose1d_f32_vs_f64);
    ML_RUN(conv_transpose2d_f32_vs_f64);
    ML_RUN(conv_transpose3d_f32_vs_f64);
    ML_RUN(conv3d_blocked_f32_vs_f64);
    ML_RUN(conv3d_direct_few_channels_f32_vs_f64);
    ML_RUN(conv_fuzz_f32_vs_f64);
    ML_RUN(conv_empty_batch);
    ML_RUN(conv_grad_dtype_mismatch);
    ML_RUN(conv_pytorch_reference);
    ML_RUN(conv_noncontiguous_and_unbatched);
    ML_RUN(conv_primitive_cache_reuse);
    ML_RUN(conv_no_grad_records_nothing);
    ML_RUN(conv_node_name_stable);
    ML_RUN(conv_errors);
    return ml_test_summary();
}
