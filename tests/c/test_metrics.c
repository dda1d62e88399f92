/* Segmentation metrics core (modules/nn/ml_metrics.c):
 *  - exact EDT against brute force on random masks, 1-D to 4-D, anisotropic spacing, sparse and dense
 *    sites, thread counts 1 and 2 give identical results; no site -> +inf
 *  - surface voxels (MONAI get_mask_edges: face neighbours, zero border)
 *  - torch.quantile semantics (float32 rank and lerp; +inf values give NaN)
 *  - confusion counts: label maps, one-hot, mixed, soft one-hot ground truth, values that are no class
 *  - Hausdorff / surface Dice / average surface distance on hand-made cases with known answers,
 *    including MONAI's empty-mask values, per-item spacing and 2-D inputs
 *  - bad input: every error names the op and the reason, nothing leaks
 * MONAI golden comparisons live in tests/lua/test_losses_metrics.lua. */
#include "ml_test.h"
#include "nn/ml_metrics.h"

static uint64_t g_rng = 88172645463325252ull;
static double urand(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (double)(g_rng >> 11) / 9007199254740992.0;
}

/* squared distance to the nearest site by brute force */
static void brute_edt_sq(double *out, const uint8_t *sites, int ndim, const int64_t *shape, const double *sp) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    for (int64_t i = 0; i < n; i++) {
        double best = INFINITY;
        for (int64_t j = 0; j < n; j++) {
            if (!sites[j]) continue;
            int64_t a = i, b = j;
            double s = 0;
            for (int d = ndim - 1; d >= 0; d--) {
                double dd = (double)(a % shape[d] - b % shape[d]) * sp[d];
                s += dd * dd;
                a /= shape[d];
                b /= shape[d];
            }
            if (s < best) best = s;
        }
        out[i] = best;
    }
}

ML_TEST(edt_matches_brute_force) {
    static const struct { int ndim; int64_t shape[4]; double sp[4]; } cases[] = {
        {1, {23}, {0.7}},
        {2, {11, 17}, {1.0, 1.0}},
        {2, {9, 14}, {2.5, 0.4}},
        {3, {7, 9, 11}, {0.8, 1.25, 2.5}},
        {3, {1, 12, 5}, {3.0, 1.0, 0.5}},
        {3, {16, 3, 1}, {1.0, 2.0, 1.0}},
        {4, {3, 4, 5, 6}, {1.0, 0.5, 2.0, 1.5}},
    };
    static const double density[] = {0.005, 0.05, 0.5, 0.97};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int64_t n = 1;
        for (int d = 0; d < cases[c].ndim; d++) n *= cases[c].shape[d];
        uint8_t *s = malloc((size_t)n);
        double *a = malloc(sizeof(double) * (size_t)n), *b = malloc(sizeof(double) * (size_t)n);
        double *a1 = malloc(sizeof(double) * (size_t)n);
        for (size_t k = 0; k < sizeof density / sizeof density[0]; k++) {
            int64_t nsites = 0;
            for (int64_t i = 0; i < n; i++) nsites += (s[i] = urand() < density[k]);
            if (!nsites) s[n / 2] = 1;
            ML_CHECK_OK(ml_edt_sq(a, s, cases[c].ndim, cases[c].shape, cases[c].sp));
            brute_edt_sq(b, s, cases[c].ndim, cases[c].shape, cases[c].sp);
            double md = 0;
            for (int64_t i = 0; i < n; i++) {
                double dd = fabs(a[i] - b[i]) / (b[i] > 1 ? b[i] : 1);
                if (dd > md) md = dd;
            }
            if (md > 1e-12) ML_FAIL_("case %zu density %g: max relative diff %g", c, density[k], md);
            /* one thread gives the same bits */
            int nt = ml_num_threads();
            ml_set_num_threads(1);
            ML_CHECK_OK(ml_edt_sq(a1, s, cases[c].ndim, cases[c].shape, cases[c].sp));
            ml_set_num_threads(nt);
            ML_CHECK(memcmp(a, a1, sizeof(double) * (size_t)n) == 0);
        }
        /* no site at all: +inf everywhere */
        memset(s, 0, (size_t)n);
        ML_CHECK_OK(ml_edt_sq(a, s, cases[c].ndim, cases[c].shape, cases[c].sp));
        for (int64_t i = 0; i < n; i++)
            if (!isinf(a[i])) { ML_FAIL_("case %zu: no site but distance %g at %lld", c, a[i], (long long)i); break; }
        free(s);
        free(a);
        free(b);
        free(a1);
    }
}

ML_TEST(edt_large_line_blocks) {
    /* a volume whose inner size is not a multiple of the 8-line block, with one site */
    int64_t shape[3] = {37, 29, 13}, n = 37 * 29 * 13;
    double sp[3] = {0.9, 1.1, 2.2};
    uint8_t *s = calloc((size_t)n, 1);
    double *a = malloc(sizeof(double) * (size_t)n);
    s[(5 * 29 + 7) * 13 + 3] = 1;
    ML_CHECK_OK(ml_edt_sq(a, s, 3, shape, sp));
    double md = 0;
    for (int64_t x = 0; x < 37; x++)
        for (int64_t y = 0; y < 29; y++)
            for (int64_t z = 0; z < 13; z++) {
                double dx = (double)(x - 5) * 0.9, dy = (double)(y - 7) * 1.1, dz = (double)(z - 3) * 2.2;
                double want = dx * dx + dy * dy + dz * dz, got = a[(x * 29 + y) * 13 + z];
                if (fabs(got - want) > md) md = fabs(got - want);
            }
    ML_CHECK(md < 1e-9);
    free(s);
    free(a);
}

ML_TEST(edt_errors) {
    int64_t shape[2] = {3, 4};
    uint8_t s[12] = {0};
    double a[12];
    double bad[2] = {1.0, 0.0};
    ml_t_expect_err(ml_edt_sq(a, s, 2, shape, bad), ML_ERR_ARG, "edt", "spacing[1]", "zero spacing");
    ml_t_expect_err(ml_edt_sq(a, s, 0, shape, NULL), ML_ERR_ARG, "edt", "ndim", "ndim 0");
    ml_t_expect_err(ml_edt_sq(a, s, 9, shape, NULL), ML_ERR_ARG, "edt", "ndim", "ndim 9");
    int64_t neg[2] = {3, -1};
    ml_t_expect_err(ml_edt_sq(a, s, 2, neg, NULL), ML_ERR_ARG, "edt", "negative", "negative size");
}

ML_TEST(surface_voxels) {
    /* 3x3x3 cube in 5^3: all but the centre */
    int64_t shape[3] = {5, 5, 5};
    uint8_t m[125] = {0}, e[125];
    for (int x = 1; x < 4; x++)
        for (int y = 1; y < 4; y++)
            for (int z = 1; z < 4; z++) m[(x * 5 + y) * 5 + z] = 7; /* any non-zero value */
    ML_CHECK(ml_mask_edges(e, m, 3, shape) == 26);
    ML_CHECK(e[(2 * 5 + 2) * 5 + 2] == 0 && e[(1 * 5 + 1) * 5 + 1] == 1 && e[0] == 0);
    /* full volume: the image border is background (scipy border_value=0) */
    memset(m, 1, sizeof m);
    ML_CHECK(ml_mask_edges(e, m, 3, shape) == 125 - 27);
    /* a plus shape in 2-D: face neighbours only (the centre has 4 foreground neighbours) */
    int64_t s2[2] = {3, 3};
    uint8_t p[9] = {0, 1, 0, 1, 1, 1, 0, 1, 0}, pe[9];
    ML_CHECK(ml_mask_edges(pe, p, 2, s2) == 4);
    ML_CHECK(pe[4] == 0);
    /* 1-D */
    int64_t s1[1] = {6};
    uint8_t l[6] = {0, 1, 1, 1, 1, 0}, le[6];
    ML_CHECK(ml_mask_edges(le, l, 1, s1) == 2);
    /* tensor wrapper, any dtype */
    ml_tensor *t = NULL, *out = NULL;
    int64_t ts[3] = {5, 5, 5};
    ML_CHECK_OK(ml_zeros(&t, ML_F32, 3, ts));
    float *td = ml_tensor_data(t);
    for (int x = 1; x < 4; x++)
        for (int y = 1; y < 4; y++)
            for (int z = 1; z < 4; z++) td[(x * 5 + y) * 5 + z] = 0.5f;
    ML_CHECK_OK(ml_surface_voxels(&out, t, "test"));
    ML_CHECK(out && out->dtype == ML_BOOL);
    int64_t cnt = 0;
    for (int i = 0; i < 125; i++) cnt += ((uint8_t *)ml_tensor_data(out))[i];
    ML_CHECK(cnt == 26);
    ml_tensor_release(out);
    ml_tensor_release(t);
}

/* torch.quantile reference: sort, float32 rank, lerp */
ML_TEST(quantile_semantics) {
    float v[5] = {5, 1, 4, 2, 3};
    ML_CHECK_NEAR(ml_quantile_f32(v, 5, 0.5), 3.0, 0);
    float w[4] = {10, 0, 30, 20};
    ML_CHECK_NEAR(ml_quantile_f32(w, 4, 0.95), 28.5, 1e-5); /* rank 2.85: 20 + 0.85 * 10 */
    float w2[4] = {10, 0, 30, 20};
    ML_CHECK_NEAR(ml_quantile_f32(w2, 4, 1.0), 30.0, 0);
    float w3[4] = {10, 0, 30, 20};
    ML_CHECK_NEAR(ml_quantile_f32(w3, 4, 0.0), 0.0, 0);
    float one[1] = {2.5f};
    ML_CHECK_NEAR(ml_quantile_f32(one, 1, 0.95), 2.5, 0);
    ML_CHECK(isnan(ml_quantile_f32(NULL, 0, 0.5)));
    float inf[3] = {1, 2, INFINITY};
    ML_CHECK(isnan(ml_quantile_f32(inf, 3, 0.95))); /* torch: lerp(2, inf, w) with w >= 0.5 -> nan */
    /* many duplicates and a large random set against a full sort */
    int n = 10001;
    float *x = malloc(sizeof(float) * (size_t)n), *y = malloc(sizeof(float) * (size_t)n);
    for (int i = 0; i < n; i++) x[i] = y[i] = (float)floor(urand() * 50);
    for (int i = 1; i < n; i++) /* insertion sort of y (reference) */
        for (int j = i; j > 0 && y[j - 1] > y[j]; j--) { float t = y[j]; y[j] = y[j - 1]; y[j - 1] = t; }
    float rank = 0.95f * (float)(n - 1);
    int lo = (int)rank, hi = (int)ceilf(rank);
    float wt = rank - (float)lo, want = wt < 0.5f ? y[lo] + wt * (y[hi] - y[lo]) : y[hi] - (y[hi] - y[lo]) * (1 - wt);
    ML_CHECK_NEAR(ml_quantile_f32(x, n, 0.95), want, 0);
    free(x);
    free(y);
}

/* tensor [N, 1, spatial] of labels from an int array */
static ml_tensor *labels(int nd, const int64_t *shape, const int *v) {
    ml_tensor *t = NULL;
    if (ml_tensor_empty(&t, ML_I64, nd, shape)) return NULL;
    int64_t n = ml_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) ((int64_t *)ml_tensor_data(t))[i] = v[i];
    return t;
}

/* one-hot [N, C, spatial] float32 of a label tensor [N, 1, spatial] */
static ml_tensor *onehot(const ml_tensor *lab, int64_t C) {
    int64_t shape[ML_MAX_DIMS];
    memcpy(shape, lab->shape, sizeof shape);
    shape[1] = C;
    ml_tensor *t = NULL;
    if (ml_zeros(&t, ML_F32, lab->ndim, shape)) return NULL;
    int64_t N = lab->shape[0], S = ml_tensor_numel(lab) / N;
    const int64_t *l = ml_tensor_data(lab);
    float *o = ml_tensor_data(t);
    for (int64_t b = 0; b < N; b++)
        for (int64_t i = 0; i < S; i++) {
            int64_t c = l[b * S + i];
            if (c >= 0 && c < C) o[(b * C + c) * S + i] = 1;
        }
    return t;
}

ML_TEST(confusion_counts) {
    /* 1 x 1 x 2 x 4: pred / gt */
    int64_t shape[4] = {1, 1, 2, 4};
    int pv[8] = {0, 1, 1, 2, 2, 2, 0, 9}; /* 9: no class */
    int gv[8] = {0, 1, 2, 2, 2, 0, 0, 1};
    ml_tensor *p = labels(4, shape, pv), *g = labels(4, shape, gv), *c = NULL;
    ML_CHECK_OK(ml_seg_counts(&c, p, g, 3, 0, "test"));
    /* class 0: I=2 (i0, i6) P=2 G=3; class 1: I=1 P=2 G=2; class 2: I=2 P=3 G=3 */
    double want[9] = {2, 2, 3, 1, 2, 2, 2, 3, 3};
    const double *cd = c ? ml_tensor_data(c) : NULL;
    for (int i = 0; cd && i < 9; i++) ML_CHECK_NEAR(cd[i], want[i], 0);
    ML_CHECK(c && c->ndim == 3 && c->shape[0] == 1 && c->shape[1] == 3 && c->shape[2] == 3);
    ml_tensor_release(c);
    /* first_class 1 drops class 0; one-hot and mixed inputs agree */
    ml_tensor *po = onehot(p, 3), *go = onehot(g, 3), *c1 = NULL, *c2 = NULL, *c3 = NULL;
    ML_CHECK_OK(ml_seg_counts(&c1, p, g, 3, 1, "test"));
    ML_CHECK_OK(ml_seg_counts(&c2, po, go, 3, 1, "test"));
    ML_CHECK_OK(ml_seg_counts(&c3, p, go, 3, 1, "test"));
    ML_CHECK(ml_t_maxdiff(c1, c2) == 0 && ml_t_maxdiff(c1, c3) == 0);
    ML_CHECK(c1 && c1->shape[1] == 2 && ((double *)ml_tensor_data(c1))[0] == 1);
    /* soft one-hot ground truth: values are summed (MONAI compute_dice) */
    ((float *)ml_tensor_data(go))[1 * 8 + 1] = 0.25f; /* class 1, voxel 1 (also predicted 1) */
    ml_tensor *c4 = NULL;
    ML_CHECK_OK(ml_seg_counts(&c4, po, go, 3, 1, "test"));
    if (c4) {
        ML_CHECK_NEAR(((double *)ml_tensor_data(c4))[0], 0.25, 1e-12);
        ML_CHECK_NEAR(((double *)ml_tensor_data(c4))[2], 1.25, 1e-12);
    }
    ml_tensor_release(c1);
    ml_tensor_release(c2);
    ml_tensor_release(c3);
    ml_tensor_release(c4);
    ml_tensor_release(po);
    ml_tensor_release(go);
    ml_tensor_release(p);
    ml_tensor_release(g);
}

/* a [1, 1, X, Y, Z] label map with the given voxels set to label 1 */
static ml_tensor *points(const int64_t *sp3, int n, const int (*pts)[3]) {
    int64_t shape[5] = {1, 1, sp3[0], sp3[1], sp3[2]};
    ml_tensor *t = NULL;
    if (ml_zeros(&t, ML_U8, 5, shape)) return NULL;
    uint8_t *d = ml_tensor_data(t);
    for (int i = 0; i < n; i++) d[(pts[i][0] * sp3[1] + pts[i][1]) * sp3[2] + pts[i][2]] = 1;
    return t;
}

static double surf(ml_tensor *p, ml_tensor *g, ml_surface_kind kind, double pct, bool directed, double tol,
                   const double *spacing) {
    ml_surface_opts o = {.kind = kind, .percentile = pct, .directed = directed, .tolerance = &tol, .spacing = spacing};
    ml_tensor *r = NULL;
    ml_err e = ml_seg_surface(&r, p, g, 2, 1, &o, "test");
    if (e) { ML_FAIL_("ml_seg_surface: %s", ml_errmsg()); return -1; }
    double v = ((double *)ml_tensor_data(r))[0];
    ml_tensor_release(r);
    return v;
}

ML_TEST(surface_metrics_known_values) {
    int64_t s3[3] = {6, 7, 8};
    const int a[1][3] = {{1, 2, 3}}, b[1][3] = {{4, 6, 3}};
    ml_tensor *p = points(s3, 1, a), *g = points(s3, 1, b);
    double sp[3] = {0.5, 2.0, 3.0};
    double d = sqrt(1.5 * 1.5 + 8.0 * 8.0);
    ML_CHECK_NEAR(surf(p, g, ML_SURF_HAUSDORFF, 0, false, 0, sp), (float)d, 0);
    ML_CHECK_NEAR(surf(p, g, ML_SURF_HAUSDORFF, 95, false, 0, sp), (float)d, 0);
    ML_CHECK_NEAR(surf(p, g, ML_SURF_MEAN, 0, false, 0, sp), (float)d, 1e-6);
    ML_CHECK_NEAR(surf(p, g, ML_SURF_DICE, 0, false, 8.1, sp), 0.0, 0);
    ML_CHECK_NEAR(surf(p, g, ML_SURF_DICE, 0, false, 8.2, sp), 1.0, 0);
    ML_CHECK_NEAR(surf(p, g, ML_SURF_HAUSDORFF, 0, false, 0, NULL), sqrt(9.0 + 16.0), 1e-6);
    /* two pred voxels, one gt: directed pred->gt differs from the symmetric value */
    const int a2[2][3] = {{1, 2, 3}, {1, 2, 7}};
    ml_tensor *p2 = points(s3, 2, a2);
    const int g2[1][3] = {{1, 2, 4}};
    ml_tensor *gg = points(s3, 1, g2);
    ML_CHECK_NEAR(surf(p2, gg, ML_SURF_HAUSDORFF, 0, true, 0, NULL), 3.0, 0);   /* max(1, 3) */
    ML_CHECK_NEAR(surf(p2, gg, ML_SURF_MEAN, 0, true, 0, NULL), 2.0, 1e-7);     /* (1 + 3) / 2 */
    ML_CHECK_NEAR(surf(p2, gg, ML_SURF_MEAN, 0, false, 0, NULL), 5.0 / 3, 1e-6); /* (1 + 3 + 1) / 3 */
    ML_CHECK_NEAR(surf(p2, gg, ML_SURF_DICE, 0, false, 1.0, NULL), 2.0 / 3, 1e-12);
    ML_CHECK_NEAR(surf(p2, gg, ML_SURF_HAUSDORFF, 50, true, 0, NULL), 2.0, 0);  /* quantile of {1, 3} */
    /* empty masks, as MONAI */
    ml_tensor *e = points(s3, 0, NULL);
    ML_CHECK(isnan(surf(e, e, ML_SURF_HAUSDORFF, 0, false, 0, NULL)));
    ML_CHECK(isinf(surf(e, g, ML_SURF_HAUSDORFF, 0, false, 0, NULL)));
    ML_CHECK(isinf(surf(p, e, ML_SURF_HAUSDORFF, 0, false, 0, NULL)));
    ML_CHECK(isnan(surf(p, e, ML_SURF_HAUSDORFF, 95, false, 0, NULL)));
    ML_CHECK(isnan(surf(e, e, ML_SURF_DICE, 0, false, 1, NULL)));
    ML_CHECK_NEAR(surf(e, g, ML_SURF_DICE, 0, false, 1, NULL), 0.0, 0);
    ML_CHECK(isnan(surf(e, e, ML_SURF_MEAN, 0, false, 0, NULL)));
    ML_CHECK(isinf(surf(e, g, ML_SURF_MEAN, 0, true, 0, NULL)));
    ml_tensor_release(p);
    ml_tensor_release(g);
    ml_tensor_release(p2);
    ml_tensor_release(gg);
    ml_tensor_release(e);
}

ML_TEST(surface_batch_spacing_and_2d) {
    /* batch of 2 in 2-D (N, 1, H, W) with per-item spacing */
    int64_t shape[4] = {2, 1, 5, 6};
    int pv[60] = {0}, gv[60] = {0};
    pv[0 * 30 + 1 * 6 + 1] = 1; /* item 0: pred at (1,1), gt at (3,4) */
    gv[0 * 30 + 3 * 6 + 4] = 1;
    pv[1 * 30 + 0 * 6 + 0] = 1; /* item 1: pred at (0,0), gt at (0,5) */
    gv[1 * 30 + 0 * 6 + 5] = 1;
    ml_tensor *p = labels(4, shape, pv), *g = labels(4, shape, gv), *r = NULL;
    double sp[4] = {2.0, 1.0, 1.0, 0.5};
    ml_surface_opts o = {.kind = ML_SURF_HAUSDORFF, .spacing = sp, .spacing_per_item = true};
    ML_CHECK_OK(ml_seg_surface(&r, p, g, 2, 1, &o, "test"));
    if (r) {
        ML_CHECK_NEAR(((double *)ml_tensor_data(r))[0], (float)sqrt(16.0 + 9.0), 0);
        ML_CHECK_NEAR(((double *)ml_tensor_data(r))[1], 2.5, 0);
    }
    ml_tensor_release(r);
    /* a 2-D mask is not eroded along a phantom third axis: a 3x3 square has 8 surface pixels, so a
     * prediction equal to the gt scores surface Dice 1 and a centre pixel is no surface pixel */
    int sq[60] = {0};
    for (int y = 1; y < 4; y++)
        for (int x = 1; x < 4; x++) sq[y * 6 + x] = sq[30 + y * 6 + x] = 1;
    ml_tensor *s = labels(4, shape, sq);
    double tol = 0;
    ml_surface_opts od = {.kind = ML_SURF_DICE, .tolerance = &tol};
    ML_CHECK_OK(ml_seg_surface(&r, s, s, 2, 1, &od, "test"));
    if (r) ML_CHECK_NEAR(((double *)ml_tensor_data(r))[0], 1.0, 0);
    ml_tensor_release(r);
    ml_tensor_release(s);
    ml_tensor_release(p);
    ml_tensor_release(g);
}

ML_TEST(distance_transform_tensor) {
    int64_t shape[2] = {3, 3};
    ml_tensor *m = NULL, *d = NULL;
    ML_CHECK_OK(ml_ones(&m, ML_I32, 2, shape));
    ((int32_t *)ml_tensor_data(m))[0] = 0;
    double sp[2] = {1.0, 2.0};
    ML_CHECK_OK(ml_distance_transform_edt(&d, m, sp, "test"));
    if (d) {
        const double *v = ml_tensor_data(d);
        ML_CHECK(d->dtype == ML_F64);
        ML_CHECK_NEAR(v[0], 0, 0);
        ML_CHECK_NEAR(v[1], 2, 1e-12);
        ML_CHECK_NEAR(v[8], sqrt(4.0 + 16.0), 1e-12);
    }
    ml_tensor_release(d);
    ml_tensor *z = NULL;
    ML_CHECK_OK(ml_tensor_empty(&z, ML_F32, 0, NULL));
    ml_t_expect_err(ml_distance_transform_edt(&d, z, NULL, "my.edt"), ML_ERR_SHAPE, "my.edt", "at least one dimension",
                    "0-d mask");
    double bad[2] = {1.0, -1.0};
    ml_t_expect_err(ml_distance_transform_edt(&d, m, bad, "my.edt"), ML_ERR_ARG, "my.edt", "spacing[2]", "bad spacing");
    ML_CHECK(d == NULL);
    ml_tensor_release(z);
    ml_tensor_release(m);
}

ML_TEST(bad_input) {
    int64_t s5[5] = {1, 1, 4, 4, 4}, s5b[5] = {1, 1, 4, 4, 3}, s5c[5] = {1, 3, 4, 4, 4}, s2[2] = {4, 4};
    ml_tensor *a = NULL, *b = NULL, *c = NULL, *d = NULL, *r = NULL;
    ML_CHECK_OK(ml_zeros(&a, ML_I64, 5, s5));
    ML_CHECK_OK(ml_zeros(&b, ML_I64, 5, s5b));
    ML_CHECK_OK(ml_zeros(&c, ML_F32, 5, s5c));
    ML_CHECK_OK(ml_zeros(&d, ML_F32, 2, s2));
    ml_t_expect_err(ml_seg_counts(&r, a, b, 2, 1, "metrics.dice"), ML_ERR_SHAPE, "metrics.dice", "do not match",
                    "shape mismatch");
    ml_t_expect_err(ml_seg_counts(&r, a, c, 2, 1, "metrics.dice"), ML_ERR_SHAPE, "metrics.dice",
                    "3 channels but num_classes is 2", "one-hot channels");
    ml_t_expect_err(ml_seg_counts(&r, d, d, 2, 1, "metrics.dice"), ML_ERR_SHAPE, "metrics.dice",
                    "[N, C, spatial...]", "2-d input");
    ml_t_expect_err(ml_seg_counts(&r, a, a, 0, 0, "metrics.dice"), ML_ERR_ARG, "metrics.dice", "num_classes",
                    "zero classes");
    ml_t_expect_err(ml_seg_counts(&r, a, a, 1000000, 0, "metrics.dice"), ML_ERR_ARG, "metrics.dice", "num_classes",
                    "absurd classes");
    ml_t_expect_err(ml_seg_counts(&r, a, a, 1, 1, "metrics.dice"), ML_ERR_ARG, "metrics.dice", "no class left",
                    "only background");
    ml_t_expect_err(ml_seg_counts(&r, a, a, 2, 2, "metrics.dice"), ML_ERR_ARG, "metrics.dice", "first_class",
                    "first_class 2");
    double tol = -1, sp[3] = {1, 0, 1}, spn[3] = {1, NAN, 1};
    ml_surface_opts o = {.kind = ML_SURF_DICE, .tolerance = &tol};
    ml_t_expect_err(ml_seg_surface(&r, a, a, 2, 1, &o, "metrics.surface_dice"), ML_ERR_ARG, "metrics.surface_dice",
                    "tolerance for class 1", "negative tolerance");
    o.tolerance = NULL;
    ml_t_expect_err(ml_seg_surface(&r, a, a, 2, 1, &o, "metrics.surface_dice"), ML_ERR_ARG, "metrics.surface_dice",
                    "required", "no tolerance");
    ml_surface_opts h = {.kind = ML_SURF_HAUSDORFF, .percentile = 101};
    ml_t_expect_err(ml_seg_surface(&r, a, a, 2, 1, &h, "metrics.hausdorff95"), ML_ERR_ARG, "metrics.hausdorff95",
                    "percentile", "percentile 101");
    h.percentile = 95;
    h.spacing = sp;
    ml_t_expect_err(ml_seg_surface(&r, a, a, 2, 1, &h, "metrics.hausdorff95"), ML_ERR_ARG, "metrics.hausdorff95",
                    "spacing must be positive", "zero spacing");
    h.spacing = spn;
    ml_t_expect_err(ml_seg_surface(&r, a, a, 2, 1, &h, "metrics.hausdorff95"), ML_ERR_ARG, "metrics.hausdorff95",
                    "spacing must be positive", "NaN spacing");
    h.spacing = NULL;
    ml_t_expect_err(ml_seg_surface(&r, a, b, 2, 1, &h, "metrics.hausdorff95"), ML_ERR_SHAPE, "metrics.hausdorff95",
                    "[1, 1, 4, 4, 3]", "surface shape mismatch");
    ml_t_expect_err(ml_seg_surface(&r, a, a, 2, 1, NULL, "metrics.hausdorff95"), ML_ERR_ARG, "metrics.hausdorff95",
                    "options", "no options");
    ML_CHECK(r == NULL);
    ml_tensor_release(a);
    ml_tensor_release(b);
    ml_tensor_release(c);
    ml_tensor_release(d);
}

int main(void) {
    ML_RUN(edt_matches_brute_force);
    ML_RUN(edt_large_line_blocks);
    ML_RUN(edt_errors);
    ML_RUN(surface_voxels);
    ML_RUN(quantile_semantics);
    ML_RUN(confusion_counts);
    ML_RUN(surface_metrics_known_values);
    ML_RUN(surface_batch_spacing_and_2d);
    ML_RUN(distance_transform_tensor);
    ML_RUN(bad_input);
    return ml_test_summary();
}
