/* Volume ops core tests (modules/volume/ml_volume_ops.h), no Lua: reorientation to all 48
 * orientations keeps every voxel's world position; linear resampling reproduces a linear function of
 * world position exactly (axis-aligned table path and general path, rotations, any memory order);
 * identity resamplings are exact; B-spline reproduces it away from the borders; transform moves the
 * object by M; crop/pad/flip/mirror/centre geometry; percentile and z-score arithmetic; connected
 * components on hand-made cases (connectivity, ties, label subsets); results do not depend on the
 * thread count; every error code and message; no leaked tensors. */
#include "ml_test.h"
#include "volume/ml_png.h"
#include "volume/ml_volume_ops.h"

#include <unistd.h>
#include <zlib.h>

/* ------------------------------------------------------------------ helpers */
static ml_tensor *new_t(ml_dtype dt, int64_t X, int64_t Y, int64_t Z) {
    ml_tensor *t = NULL;
    int64_t sh[3] = {X, Y, Z};
    if (ml_zeros(&t, dt, 3, sh)) return NULL;
    return t;
}

static void tset(ml_tensor *t, int64_t i, int64_t j, int64_t k, double v) {
    int64_t off = t->offset + i * t->stride[0] + j * t->stride[1] + k * t->stride[2];
    ml_store_elem(t->storage->data, (ml_dtype)t->dtype, off, v);
}

static double tget(const ml_tensor *t, int64_t i, int64_t j, int64_t k) {
    int64_t ix[3] = {i, j, k};
    return ml_tensor_get(t, ix);
}

/* the same values stored i fastest (strides [1, X, X*Y]) */
static ml_tensor *fortran_copy(ml_tensor *t) {
    int64_t sh[3] = {t->shape[2], t->shape[1], t->shape[0]};
    ml_tensor *b = NULL, *p = NULL;
    if (ml_tensor_empty(&b, (ml_dtype)t->dtype, 3, sh)) return NULL;
    int perm[3] = {2, 1, 0};
    ml_permute(&p, b, perm);
    ml_tensor_release(b);
    ml_copy_(p, t);
    return p;
}

static ml_volume *new_vol(ml_tensor *t, const double A[16]) {
    ml_volume *v = NULL;
    ml_volume_new(&v, t, A, NULL);
    ml_tensor_release(t); /* the volume holds it */
    return v;
}

/* f(x) = 0.3 x - 0.2 y + 0.1 z + 5 at world point x */
static double lin_world(const double w[3]) { return 0.3 * w[0] - 0.2 * w[1] + 0.1 * w[2] + 5; }

static ml_tensor *linear_field(ml_dtype dt, int64_t X, int64_t Y, int64_t Z, const double A[16]) {
    ml_tensor *t = new_t(dt, X, Y, Z);
    for (int64_t i = 0; i < X; i++)
        for (int64_t j = 0; j < Y; j++)
            for (int64_t k = 0; k < Z; k++) {
                double p[3] = {(double)i, (double)j, (double)k}, w[3];
                ml_affine_apply(A, p, w);
                tset(t, i, j, k, lin_world(w));
            }
    return t;
}

static void rotz(double R[16], double deg, const double c[3]) { /* rotation about z through c */
    double a = deg * M_PI / 180, ca = cos(a), sa = sin(a);
    ml_affine_identity(R);
    R[0] = ca;
    R[1] = -sa;
    R[4] = sa;
    R[5] = ca;
    R[3] = c[0] - ca * c[0] + sa * c[1];
    R[7] = c[1] - sa * c[0] - ca * c[1];
}

static const double k_oblique[16] = {0.9, 0.15, 0, -10, -0.12, 0.8, 0.05, 4, 0, -0.04, 1.7, 20, 0, 0, 0, 1};

/* ============================================================ reorientation */
ML_TEST(reorient_all_48_orientations_keep_world_positions) {
    static const char *ax[3][2] = {{"R", "L"}, {"A", "P"}, {"S", "I"}};
    static const int perms[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
    ml_tensor *t = new_t(ML_I32, 4, 3, 5);
    for (int64_t i = 0; i < 4; i++)
        for (int64_t j = 0; j < 3; j++)
            for (int64_t k = 0; k < 5; k++) tset(t, i, j, k, (double)(i * 100 + j * 10 + k));
    ml_volume *v = new_vol(t, k_oblique);
    int n = 0;
    for (int p = 0; p < 6; p++)
        for (int s = 0; s < 8; s++) {
            char codes[4];
            for (int q = 0; q < 3; q++) codes[q] = ax[perms[p][q]][(s >> q) & 1][0];
            codes[3] = 0;
            ml_volume *o = NULL;
            ML_CHECK_OK(ml_volume_reorient(&o, v, codes));
            if (!o) continue;
            char got[4];
            ml_affine_axcodes(o->affine, got);
            if (strcmp(got, codes)) ML_FAIL_("reorient %s gave axis codes %s", codes, got);
            /* every output voxel holds the input voxel at the same world point */
            double inv[16];
            ml_affine_inverse(inv, v->affine);
            int bad = 0;
            for (int64_t i = 0; i < o->data->shape[0]; i++)
                for (int64_t j = 0; j < o->data->shape[1]; j++)
                    for (int64_t k = 0; k < o->data->shape[2]; k++) {
                        double pi[3] = {(double)i, (double)j, (double)k}, w[3], q[3];
                        ml_affine_apply(o->affine, pi, w);
                        ml_affine_apply(inv, w, q);
                        int64_t a = llround(q[0]), b = llround(q[1]), c = llround(q[2]);
                        if (fabs(q[0] - a) > 1e-9 || fabs(q[1] - b) > 1e-9 || fabs(q[2] - c) > 1e-9 ||
                            tget(o->data, i, j, k) != (double)(a * 100 + b * 10 + c))
                            bad++;
                    }
            if (bad) ML_FAIL_("reorient %s: %d voxels moved in world space", codes, bad);
            ml_volume_release(o);
            n++;
        }
    ML_CHECK(n == 48);
    ml_volume_release(v);
}

ML_TEST(reorient_errors) {
    ml_volume *v = new_vol(new_t(ML_F32, 2, 2, 2), NULL), *o = (ml_volume *)1;
    ml_t_expect_err(ml_volume_reorient(&o, v, "XYZ"), ML_ERR_ARG, "reorient: unknown axis code 'X'", "\"XYZ\"", "XYZ");
    ML_CHECK(o == NULL);
    ml_t_expect_err(ml_volume_reorient(&o, v, "RRA"), ML_ERR_ARG, "reorient", "name the R-L axis twice", "RRA");
    ml_t_expect_err(ml_volume_reorient(&o, v, "RASS"), ML_ERR_ARG, "reorient", "3 letters", "RASS");
    ml_t_expect_err(ml_volume_reorient(&o, v, "SPI"), ML_ERR_ARG, "reorient", "S-I axis twice", "SPI");
    double sing[16] = {1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1};
    ml_volume *s = new_vol(new_t(ML_F32, 2, 2, 2), sing);
    ml_t_expect_err(ml_volume_to_ras(&o, s), ML_ERR_ARG, "reorient", "degenerate", "singular affine");
    ml_volume_release(s);
    /* already RAS: the tensor is shared */
    ML_CHECK_OK(ml_volume_to_ras(&o, v));
    ML_CHECK(o && o->data == v->data);
    ml_volume_release(o);
    ml_volume_release(v);
}

/* ============================================================== resampling */
/* max |out - f(world)| over output voxels whose input position is at least `margin` voxels inside */
static double lin_err(const ml_volume *in, const ml_volume *out, double margin, int *counted) {
    double inv[16], m = 0;
    ml_affine_inverse(inv, in->affine);
    int cnt = 0;
    const ml_tensor *t = out->data;
    for (int64_t i = 0; i < t->shape[0]; i++)
        for (int64_t j = 0; j < t->shape[1]; j++)
            for (int64_t k = 0; k < t->shape[2]; k++) {
                double p[3] = {(double)i, (double)j, (double)k}, w[3], c[3];
                ml_affine_apply(out->affine, p, w);
                ml_affine_apply(inv, w, c);
                bool ok = true;
                for (int a = 0; a < 3; a++) ok = ok && c[a] >= margin && c[a] <= (double)(in->data->shape[a] - 1) - margin;
                if (!ok) continue;
                cnt++;
                double d = fabs(tget(t, i, j, k) - lin_world(w));
                if (d > m) m = d;
            }
    *counted = cnt;
    return m;
}

ML_TEST(linear_resampling_reproduces_linear_functions) {
    for (int layout = 0; layout < 2; layout++) {
        ml_tensor *t = linear_field(ML_F64, 23, 19, 14, k_oblique);
        if (layout) {
            ml_tensor *f = fortran_copy(t);
            ml_tensor_release(t);
            t = f;
        }
        ml_volume *v = new_vol(t, k_oblique);
        ml_resample_opts o;
        ml_resample_opts_init(&o);
        ML_CHECK(o.mode == ML_INTERP_DEFAULT && o.padding_value == 0 && o.padding_mode == ML_PAD_CONSTANT);
        double sp[3] = {0.55, 1.3, 0.9};
        ml_volume *r = NULL;
        int cnt;
        ML_CHECK_OK(ml_volume_resample_spacing(&r, v, sp, &o)); /* default mode: linear (float data) */
        if (r) {
            ML_CHECK_NEAR(lin_err(v, r, 0, &cnt), 0, 1e-9);
            ML_CHECK(cnt > 1000);
            ML_CHECK(r->data->dtype == ML_F64);
            if (layout) ML_CHECK(r->data->stride[0] == 1); /* memory order kept */
        }
        ml_volume_release(r);
        /* general path: a rotation about z through the volume's centre, on the input grid */
        double c[3], mid[3] = {11, 9, 6.5}, R[16];
        ml_affine_apply(v->affine, mid, c);
        rotz(R, 23, c);
        ML_CHECK_OK(ml_volume_transform(&r, v, R, NULL, false, &o));
        if (r) {
            /* out(y) = in(R^-1 y) = f(R^-1 y): compare with that */
            double Ri[16], maxd = 0, inv[16];
            ml_affine_inverse(Ri, R);
            ml_affine_inverse(inv, v->affine);
            int n = 0;
            for (int64_t i = 0; i < 23; i++)
                for (int64_t j = 0; j < 19; j++)
                    for (int64_t k = 0; k < 14; k++) {
                        double p[3] = {(double)i, (double)j, (double)k}, y[3], x[3], q[3];
                        ml_affine_apply(r->affine, p, y);
                        ml_affine_apply(Ri, y, x);
                        ml_affine_apply(inv, x, q);
                        if (q[0] < 0 || q[1] < 0 || q[2] < 0 || q[0] > 22 || q[1] > 18 || q[2] > 13) continue;
                        n++;
                        double d = fabs(tget(r->data, i, j, k) - lin_world(x));
                        if (d > maxd) maxd = d;
                    }
            ML_CHECK_NEAR(maxd, 0, 1e-9);
            ML_CHECK(n > 1000);
        }
        ml_volume_release(r);
        /* B-spline reproduces it too, away from the mirrored borders */
        o.mode = ML_INTERP_BSPLINE;
        ML_CHECK_OK(ml_volume_resample_spacing(&r, v, sp, &o));
        if (r) {
            ML_CHECK_NEAR(lin_err(v, r, 6, &cnt), 0, 1e-4);
            ML_CHECK(cnt > 50);
        }
        ml_volume_release(r);
        ml_volume_release(v);
    }
}

ML_TEST(identity_resampling_is_exact_for_every_mode_and_dtype) {
    ml_dtype dts[] = {ML_F32, ML_F64, ML_I32, ML_U8};
    for (int d = 0; d < 4; d++) {
        ml_tensor *t = NULL;
        int64_t sh[3] = {9, 8, 7};
        ML_CHECK_OK(ml_randint(&t, dts[d], 0, 200, 3, sh));
        ml_volume *v = new_vol(t, k_oblique);
        for (int m = 0; m < 3; m++) {
            ml_resample_opts o;
            ml_resample_opts_init(&o);
            o.mode = m;
            ml_volume *r = NULL, *r2 = NULL, *r3 = NULL;
            double I[16];
            ml_affine_identity(I);
            ML_CHECK_OK(ml_volume_resample_like(&r, v, v, &o));
            ML_CHECK_OK(ml_volume_transform(&r2, v, I, NULL, false, &o));
            /* a grid that is the input's reoriented (a permutation with flips: general path) */
            ml_volume *lps = NULL;
            ML_CHECK_OK(ml_volume_reorient(&lps, v, "SLP"));
            ML_CHECK_OK(ml_volume_resample_like(&r3, v, lps, &o));
            double tol = m == ML_INTERP_BSPLINE ? 1e-3 : 0;
            if (r) ML_CHECK(ml_t_maxdiff(r->data, v->data) <= tol);
            if (r2) ML_CHECK(ml_t_maxdiff(r2->data, v->data) <= tol);
            if (r3 && lps) ML_CHECK(ml_t_maxdiff(r3->data, lps->data) <= tol);
            if (r && m == ML_INTERP_NEAREST) ML_CHECK(r->data->dtype == v->data->dtype);
            ml_volume_release(r);
            ml_volume_release(r2);
            ml_volume_release(r3);
            ml_volume_release(lps);
        }
        ml_volume_release(v);
    }
}

ML_TEST(transform_moves_the_object_by_M) {
    ml_tensor *t = new_t(ML_F32, 11, 11, 11);
    tset(t, 5, 5, 5, 1);
    double A[16] = {2, 0, 0, -10, 0, 2, 0, -10, 0, 0, 2, -10, 0, 0, 0, 1};
    ml_volume *v = new_vol(t, A);
    double M[16] = {1, 0, 0, 4, 0, 1, 0, -2, 0, 0, 1, 6, 0, 0, 0, 1}; /* +4 mm x, -2 mm y, +6 mm z */
    ml_volume *r = NULL, *q = NULL;
    ML_CHECK_OK(ml_volume_transform(&r, v, M, NULL, false, NULL));
    if (r) ML_CHECK_NEAR(tget(r->data, 7, 4, 8), 1, 0);
    /* inverse=true takes the output->input map */
    double Mi[16];
    ml_affine_inverse(Mi, M);
    ML_CHECK_OK(ml_volume_transform(&q, v, Mi, NULL, true, NULL));
    if (r && q) ML_CHECK(ml_t_maxdiff(r->data, q->data) == 0);
    ml_volume_release(r);
    ml_volume_release(q);
    /* a 90-degree rotation about z through the centre maps voxel (7,5,5) to (5,7,5) */
    tset(v->data, 5, 5, 5, 0);
    tset(v->data, 7, 5, 5, 1);
    double c[3] = {0, 0, 0}, R[16];
    rotz(R, 90, c);
    ML_CHECK_OK(ml_volume_transform(&r, v, R, NULL, false, NULL));
    if (r) ML_CHECK_NEAR(tget(r->data, 5, 7, 5), 1, 1e-9);
    ml_volume_release(r);
    ml_volume_release(v);
}

ML_TEST(padding_value_and_border_mode) {
    ml_tensor *t = NULL;
    int64_t sh[3] = {4, 4, 4};
    ML_CHECK_OK(ml_full(&t, ML_F32, 3, sh, 3.0));
    ml_volume *v = new_vol(t, NULL);
    ml_resample_opts o;
    ml_resample_opts_init(&o);
    o.padding_value = -9;
    int64_t os[3] = {8, 4, 4};
    double B[16] = {1, 0, 0, -2, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1}; /* starts 2 voxels before the input */
    ml_volume *r = NULL;
    ML_CHECK_OK(ml_volume_resample_to(&r, v, os, B, &o));
    if (r) {
        ML_CHECK(tget(r->data, 0, 0, 0) == -9); /* c = -2 */
        ML_CHECK(tget(r->data, 1, 0, 0) == -9); /* c = -1 */
        ML_CHECK(tget(r->data, 2, 0, 0) == 3);
        ML_CHECK(tget(r->data, 5, 0, 0) == 3);  /* c = 3 */
        ML_CHECK(tget(r->data, 6, 0, 0) == -9); /* c = 4 >= n - 0.5 */
    }
    ml_volume_release(r);
    o.padding_mode = ML_PAD_BORDER;
    ML_CHECK_OK(ml_volume_resample_to(&r, v, os, B, &o));
    if (r) ML_CHECK(tget(r->data, 0, 0, 0) == 3 && tget(r->data, 7, 0, 0) == 3);
    ml_volume_release(r);
    /* half a voxel outside still interpolates toward the edge value (ITK rule) */
    double B2[16] = {1, 0, 0, -0.4, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1};
    o.padding_mode = ML_PAD_CONSTANT;
    int64_t os2[3] = {5, 4, 4};
    ML_CHECK_OK(ml_volume_resample_to(&r, v, os2, B2, &o));
    if (r) ML_CHECK(tget(r->data, 0, 0, 0) == 3 && tget(r->data, 4, 0, 0) == -9); /* -0.4 in, 3.6 out */
    ml_volume_release(r);
    ml_volume_release(v);
}

ML_TEST(spacing_grid_follows_monai) {
    /* axis-aligned: shape round((n-1) * old / new + 1), origin = first voxel centre, direction kept */
    double A[16] = {-0.7, 0, 0, 100, 0, 0.7, 0, -50, 0, 0, 1.25, 20, 0, 0, 0, 1};
    ml_volume *v = new_vol(new_t(ML_F32, 512, 512, 300), A);
    double sp[3] = {1.5, 1.5, 1.5}, B[16];
    int64_t shape[3];
    ML_CHECK_OK(ml_volume_spacing_grid(v, sp, shape, B));
    ML_CHECK(shape[0] == 239 && shape[1] == 239 && shape[2] == 250);
    ML_CHECK(B[0] == -1.5 && B[5] == 1.5 && B[10] == 1.5 && B[3] == 100 && B[7] == -50 && B[11] == 20);
    /* half-to-even rounding: extent 2.5 voxels + 1 = 3.5 -> 4 ; 4.5 + 1 = 5.5 -> 6 */
    ml_volume *w = new_vol(new_t(ML_F32, 6, 10, 2), NULL);
    double sp2[3] = {2, 2, 2};
    ML_CHECK_OK(ml_volume_spacing_grid(w, sp2, shape, B));
    ML_CHECK(shape[0] == 4 && shape[1] == 6 && shape[2] == 2);
    double bad[3] = {1, -1, 1}, zero[3] = {0, 1, 1}, nan3[3] = {1, 1, NAN};
    ml_t_expect_err(ml_volume_spacing_grid(v, bad, shape, B), ML_ERR_ARG, "resample: spacing[1]", "> 0", "negative");
    ml_t_expect_err(ml_volume_spacing_grid(v, zero, shape, B), ML_ERR_ARG, "resample: spacing[0]", "> 0", "zero");
    ml_t_expect_err(ml_volume_spacing_grid(v, nan3, shape, B), ML_ERR_ARG, "resample: spacing[2]", "finite", "nan");
    ml_volume_release(v);
    ml_volume_release(w);
}

ML_TEST(resampling_is_independent_of_the_thread_count) {
    ml_tensor *t = NULL;
    int64_t sh[3] = {60, 50, 40};
    ML_CHECK_OK(ml_randn(&t, ML_F32, 3, sh));
    ml_volume *v = new_vol(t, k_oblique);
    int nt0 = ml_num_threads();
    double c[3] = {0, 0, 0}, R[16];
    rotz(R, 7, c);
    for (int m = 0; m < 3; m++) {
        ml_resample_opts o;
        ml_resample_opts_init(&o);
        o.mode = m;
        double sp[3] = {0.7, 0.9, 1.1};
        ml_volume *a = NULL, *b = NULL, *ra = NULL, *rb = NULL;
        ml_set_num_threads(1);
        ML_CHECK_OK(ml_volume_resample_spacing(&a, v, sp, &o));
        ML_CHECK_OK(ml_volume_transform(&ra, v, R, NULL, false, &o));
        ml_set_num_threads(nt0 > 1 ? nt0 : 2);
        ML_CHECK_OK(ml_volume_resample_spacing(&b, v, sp, &o));
        ML_CHECK_OK(ml_volume_transform(&rb, v, R, NULL, false, &o));
        if (a && b) ML_CHECK(ml_t_maxdiff(a->data, b->data) == 0);
        if (ra && rb) ML_CHECK(ml_t_maxdiff(ra->data, rb->data) == 0);
        ml_volume_release(a);
        ml_volume_release(b);
        ml_volume_release(ra);
        ml_volume_release(rb);
    }
    ml_set_num_threads(nt0);
    ml_volume_release(v);
}

ML_TEST(resample_errors) {
    ml_volume *v = new_vol(new_t(ML_F32, 4, 4, 4), NULL), *o = NULL;
    int64_t sh[3] = {2, 2, 2}, zero[3] = {2, 0, 2};
    double I[16], S[16] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    ml_affine_identity(I);
    ml_t_expect_err(ml_volume_resample_to(&o, v, zero, I, NULL), ML_ERR_ARG, "resample_to", "empty or absurd", "empty");
    ml_t_expect_err(ml_volume_resample_to(&o, v, sh, S, NULL), ML_ERR_ARG, "resample_to", "singular", "singular");
    ml_t_expect_err(ml_volume_transform(&o, v, S, NULL, false, NULL), ML_ERR_ARG, "transform", "singular", "singular M");
    double nanA[16];
    ml_affine_identity(nanA);
    nanA[3] = NAN;
    ml_t_expect_err(ml_volume_transform(&o, v, nanA, NULL, false, NULL), ML_ERR_ARG, "transform", "non-finite", "nan M");
    ml_resample_opts opt;
    ml_resample_opts_init(&opt);
    opt.mode = 7;
    ml_t_expect_err(ml_volume_resample_to(&o, v, sh, I, &opt), ML_ERR_ARG, "resample_to", "unknown interpolation", "mode");
    ML_CHECK(o == NULL);
    ml_volume_release(v);
}

/* ====================================================== crop / pad / flip */
ML_TEST(crop_pad_flip_mirror_center_geometry) {
    ml_tensor *t = new_t(ML_I64, 5, 4, 3);
    for (int64_t i = 0; i < 5; i++)
        for (int64_t j = 0; j < 4; j++)
            for (int64_t k = 0; k < 3; k++) tset(t, i, j, k, (double)(i * 100 + j * 10 + k));
    ml_volume *v = new_vol(t, k_oblique), *c = NULL, *p = NULL, *f = NULL, *m = NULL, *z = NULL;
    int64_t lo[3] = {1, 2, 0}, hi[3] = {4, 4, 3};
    ML_CHECK_OK(ml_volume_crop(&c, v, lo, hi));
    if (c) {
        ML_CHECK(c->data->shape[0] == 3 && c->data->shape[1] == 2 && c->data->shape[2] == 3);
        ML_CHECK(tget(c->data, 0, 0, 0) == 120 && tget(c->data, 2, 1, 2) == 332);
        double a[3] = {0, 0, 0}, b[3] = {1, 2, 0}, wa[3], wb[3];
        ml_affine_apply(c->affine, a, wa);
        ml_affine_apply(v->affine, b, wb);
        for (int q = 0; q < 3; q++) ML_CHECK_NEAR(wa[q], wb[q], 1e-12);
    }
    int64_t bf[3] = {2, 0, 1}, af[3] = {0, 1, 1};
    ML_CHECK_OK(ml_volume_pad(&p, v, bf, af, -1));
    if (p) {
        ML_CHECK(p->data->shape[0] == 7 && p->data->shape[1] == 5 && p->data->shape[2] == 5);
        ML_CHECK(tget(p->data, 2, 0, 1) == 0 && tget(p->data, 6, 3, 3) == 432 && tget(p->data, 0, 0, 0) == -1);
        ML_CHECK(tget(p->data, 6, 4, 4) == -1);
        double a[3] = {2, 0, 1}, b[3] = {0, 0, 0}, wa[3], wb[3];
        ml_affine_apply(p->affine, a, wa);
        ml_affine_apply(v->affine, b, wb);
        for (int q = 0; q < 3; q++) ML_CHECK_NEAR(wa[q], wb[q], 1e-12);
    }
    ML_CHECK_OK(ml_volume_flip(&f, v, 0));
    if (f) {
        ML_CHECK(tget(f->data, 0, 1, 2) == 412);
        double a[3] = {0, 1, 2}, b[3] = {4, 1, 2}, wa[3], wb[3];
        ml_affine_apply(f->affine, a, wa);
        ml_affine_apply(v->affine, b, wb);
        for (int q = 0; q < 3; q++) ML_CHECK_NEAR(wa[q], wb[q], 1e-12);
    }
    ML_CHECK_OK(ml_volume_mirror_lr(&m, v)); /* k_oblique: voxel axis 0 is closest to R-L */
    if (m) {
        ML_CHECK(tget(m->data, 0, 1, 2) == 412);
        ML_CHECK(memcmp(m->affine, v->affine, sizeof m->affine) == 0);
    }
    ML_CHECK_OK(ml_volume_center(&z, v));
    if (z) {
        double ctr[3] = {2, 1.5, 1}, w[3];
        ml_affine_apply(z->affine, ctr, w);
        for (int q = 0; q < 3; q++) ML_CHECK_NEAR(w[q], 0, 1e-12);
        ML_CHECK(z->data == v->data);
    }
    ml_volume_release(c);
    ml_volume_release(p);
    ml_volume_release(f);
    ml_volume_release(m);
    ml_volume_release(z);
    /* errors */
    ml_volume *o = NULL;
    int64_t lo2[3] = {0, 0, 0}, hi2[3] = {6, 4, 3}, neg[3] = {0, -1, 0};
    ml_t_expect_err(ml_volume_crop(&o, v, lo2, hi2), ML_ERR_ARG, "crop: axis 0: range [0, 6)", "size 5", "crop");
    ml_t_expect_err(ml_volume_pad(&o, v, neg, lo2, 0), ML_ERR_ARG, "pad: axis 1", ">= 0", "pad");
    ml_t_expect_err(ml_volume_flip(&o, v, 3), ML_ERR_DIM, "flip: axis 3", "out of range", "flip");
    ml_volume_release(v);
}

/* ================================================================ intensity */
ML_TEST(percentile_and_zscore_arithmetic) {
    /* values 1..10 in a 10x1x1 volume: numpy percentile(25) = 3.25, percentile(90) = 9.1 */
    ml_tensor *t = new_t(ML_F64, 10, 1, 1);
    for (int i = 0; i < 10; i++) tset(t, 9 - i, 0, 0, (double)(i + 1));
    ml_volume *v = new_vol(t, NULL), *o = NULL;
    ML_CHECK_OK(ml_volume_normalize_percentile(&o, v, 25, 90, NULL));
    if (o) {
        double c[10], mean = 0, var = 0;
        for (int i = 0; i < 10; i++) {
            double x = (double)(i + 1);
            c[i] = x < 3.25 ? 3.25 : x > 9.1 ? 9.1 : x;
            mean += c[i] / 10;
        }
        for (int i = 0; i < 10; i++) var += (c[i] - mean) * (c[i] - mean) / 10;
        for (int i = 0; i < 10; i++) ML_CHECK_NEAR(tget(o->data, 9 - i, 0, 0), (c[i] - mean) / sqrt(var), 1e-6);
        ML_CHECK(o->data->dtype == ML_F32);
    }
    ml_volume_release(o);
    /* masked z-score: statistics from the mask only, applied everywhere */
    ml_tensor *mk = new_t(ML_U8, 10, 1, 1);
    tset(mk, 0, 0, 0, 1); /* value 10 */
    tset(mk, 9, 0, 0, 1); /* value 1 */
    ML_CHECK_OK(ml_volume_zscore(&o, v, mk));
    if (o) {
        ML_CHECK_NEAR(tget(o->data, 0, 0, 0), 1, 1e-6);
        ML_CHECK_NEAR(tget(o->data, 9, 0, 0), -1, 1e-6);
        ML_CHECK_NEAR(tget(o->data, 4, 0, 0), (6 - 5.5) / 4.5, 1e-6);
    }
    ml_volume_release(o);
    ml_tensor *bad = new_t(ML_U8, 10, 2, 1);
    ml_t_expect_err(ml_volume_zscore(&o, v, bad), ML_ERR_SHAPE, "zscore: mask shape [10, 2, 1]", "[10, 1, 1]", "mask");
    ml_t_expect_err(ml_volume_window(&o, v, 0, -1), ML_ERR_ARG, "window: width", "> 0", "window");
    ml_tensor_release(bad);
    ml_tensor_release(mk);
    ml_volume_release(v);
}

/* =================================================================== labels */
ML_TEST(largest_component_connectivity_ties_and_subsets) {
    /* label 1: a 2-voxel bar at (0,0,0)-(0,0,1), a 1-voxel piece touching it diagonally by an edge
     * (1,1,1), and one touching only by a corner (2,2,2)... */
    ml_tensor *t = new_t(ML_U8, 4, 4, 4);
    tset(t, 0, 0, 0, 1);
    tset(t, 0, 0, 1, 1);
    tset(t, 1, 1, 1, 1); /* shares an edge with (0,0,1)? (0,0,1)-(1,1,1): di=1 dj=1 dk=0 -> edge */
    tset(t, 2, 2, 2, 1); /* corner with (1,1,1) */
    tset(t, 3, 3, 3, 1); /* corner with (2,2,2) */
    /* label 2: two single voxels far apart (a tie: the first in C order wins) */
    tset(t, 0, 3, 0, 2);
    tset(t, 3, 0, 3, 2);
    ml_volume *v = new_vol(t, NULL), *o = NULL;
    ML_CHECK_OK(ml_volume_largest_component(&o, v, 6, NULL, 0));
    if (o) {
        ML_CHECK(tget(o->data, 0, 0, 0) == 1 && tget(o->data, 0, 0, 1) == 1);
        ML_CHECK(tget(o->data, 1, 1, 1) == 0 && tget(o->data, 2, 2, 2) == 0 && tget(o->data, 3, 3, 3) == 0);
        ML_CHECK(tget(o->data, 0, 3, 0) == 2 && tget(o->data, 3, 0, 3) == 0);
        ML_CHECK(o->data->dtype == ML_U8);
    }
    ml_volume_release(o);
    ML_CHECK_OK(ml_volume_largest_component(&o, v, 18, NULL, 0));
    if (o) ML_CHECK(tget(o->data, 1, 1, 1) == 1 && tget(o->data, 2, 2, 2) == 0);
    ml_volume_release(o);
    ML_CHECK_OK(ml_volume_largest_component(&o, v, 26, NULL, 0));
    if (o) ML_CHECK(tget(o->data, 1, 1, 1) == 1 && tget(o->data, 2, 2, 2) == 1 && tget(o->data, 3, 3, 3) == 1);
    ml_volume_release(o);
    int64_t only2[1] = {2};
    ML_CHECK_OK(ml_volume_largest_component(&o, v, 6, only2, 1));
    if (o) ML_CHECK(tget(o->data, 2, 2, 2) == 1 && tget(o->data, 3, 0, 3) == 0); /* label 1 untouched */
    ml_volume_release(o);
    ml_t_expect_err(ml_volume_largest_component(&o, v, 5, NULL, 0), ML_ERR_ARG, "largest_component: connectivity",
                    "got 5", "connectivity 5");
    int64_t zero[1] = {0};
    ml_t_expect_err(ml_volume_largest_component(&o, v, 6, zero, 1), ML_ERR_ARG, "largest_component: labels[1] = 0",
                    "non-zero", "label 0");
    ml_volume_release(v);
}

ML_TEST(largest_component_across_thread_slabs) {
    /* a long snake that crosses every slab boundary several times must stay one component */
    int64_t X = 128, Y = 32, Z = 20; /* >= 64k voxels: runs on slabs when threads > 1 */
    ml_tensor *t = new_t(ML_I32, X, Y, Z);
    for (int64_t i = 0; i < X; i++) {
        tset(t, i, (i / 8) % 2 ? Y - 1 : 0, 0, 3); /* a path along i that jumps between rows y=0 and y=Y-1 ... */
        if (i % 8 == 7)
            for (int64_t j = 0; j < Y; j++) tset(t, i, j, 0, 3); /* ... joined by a bar along j */
    }
    tset(t, 30, 3, 5, 3); /* a stray voxel */
    ml_volume *v = new_vol(t, NULL), *a = NULL, *b = NULL;
    int nt0 = ml_num_threads();
    ml_set_num_threads(1);
    ML_CHECK_OK(ml_volume_largest_component(&a, v, 6, NULL, 0));
    ml_set_num_threads(nt0 > 1 ? nt0 : 2);
    ML_CHECK_OK(ml_volume_largest_component(&b, v, 6, NULL, 0));
    ml_set_num_threads(nt0);
    if (a && b) {
        ML_CHECK(ml_t_maxdiff(a->data, b->data) == 0);
        ML_CHECK(tget(a->data, 30, 3, 5) == 0 && tget(a->data, 0, 0, 0) == 3 && tget(a->data, 127, Y - 1, 0) == 3);
    }
    ml_volume_release(a);
    ml_volume_release(b);
    ml_volume_release(v);
}

ML_TEST(bbox_and_label_stats) {
    ml_tensor *t = new_t(ML_F32, 6, 5, 4);
    tset(t, 1, 2, 3, 4);
    tset(t, 3, 2, 1, 4);
    tset(t, 5, 0, 0, 9);
    double A[16] = {2, 0, 0, 10, 0, 3, 0, 20, 0, 0, 4, 30, 0, 0, 0, 1};
    ml_volume *v = new_vol(t, A);
    int64_t lo[3], hi[3];
    bool found;
    ML_CHECK_OK(ml_volume_bbox(v, true, 4, lo, hi, &found));
    ML_CHECK(found && lo[0] == 1 && lo[1] == 2 && lo[2] == 1 && hi[0] == 4 && hi[1] == 3 && hi[2] == 4);
    ML_CHECK_OK(ml_volume_bbox(v, false, 0, lo, hi, &found));
    ML_CHECK(found && lo[0] == 1 && lo[1] == 0 && lo[2] == 0 && hi[0] == 6 && hi[1] == 3 && hi[2] == 4);
    ML_CHECK_OK(ml_volume_bbox(v, true, 5, lo, hi, &found));
    ML_CHECK(!found);
    ml_label_stat *st = NULL;
    int n = 0;
    ML_CHECK_OK(ml_volume_label_stats(v, &st, &n));
    ML_CHECK(n == 2);
    if (n == 2) {
        ML_CHECK(st[0].label == 4 && st[0].voxels == 2 && st[1].label == 9 && st[1].voxels == 1);
        ML_CHECK_NEAR(st[0].volume_ml, 2 * 24 / 1000.0, 1e-12);
        ML_CHECK_NEAR(st[0].centroid_mm[0], 10 + 2 * 2, 1e-12);
        ML_CHECK_NEAR(st[0].centroid_mm[1], 20 + 3 * 2, 1e-12);
        ML_CHECK_NEAR(st[0].centroid_mm[2], 30 + 4 * 2, 1e-12);
        ML_CHECK(st[1].bbox_lo[0] == 5 && st[1].bbox_hi[0] == 6);
    }
    free(st);
    /* non-integral labels and 4-D volumes are refused */
    tset(v->data, 0, 0, 0, 0.5);
    ml_t_expect_err(ml_volume_label_stats(v, &st, &n), ML_ERR_ARG, "label_stats", "(0, 0, 0) holds 0.5", "0.5");
    ml_volume *o = NULL;
    ml_t_expect_err(ml_volume_largest_component(&o, v, 6, NULL, 0), ML_ERR_ARG, "largest_component", "holds 0.5", "0.5");
    ml_volume_release(v);
    int64_t sh4[4] = {2, 2, 2, 2};
    ml_tensor *t4 = NULL;
    ML_CHECK_OK(ml_zeros(&t4, ML_I32, 4, sh4));
    ml_volume *v4 = new_vol(t4, NULL);
    ml_t_expect_err(ml_volume_bbox(v4, false, 0, lo, hi, &found), ML_ERR_SHAPE, "bbox", "3-D", "4-D");
    ml_volume_release(v4);
}

ML_TEST(crop_to_bbox_grid_checks) {
    ml_tensor *l = new_t(ML_I32, 10, 10, 10);
    tset(l, 4, 5, 6, 1);
    double A[16] = {0.5, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 1};
    ml_volume *lab = new_vol(l, A), *img = new_vol(new_t(ML_F32, 10, 10, 10), A), *o = NULL;
    double pad[3] = {1, 1, 1};
    ML_CHECK_OK(ml_volume_crop_to_bbox(&o, img, lab, pad, false, 0));
    if (o) ML_CHECK(o->data->shape[0] == 5 && o->data->shape[1] == 3 && o->data->shape[2] == 2 + 1);
    ml_volume_release(o);
    double B[16];
    memcpy(B, A, sizeof B);
    B[3] = 0.01;
    ml_volume *shifted = new_vol(new_t(ML_F32, 10, 10, 10), B);
    ml_t_expect_err(ml_volume_crop_to_bbox(&o, shifted, lab, pad, false, 0), ML_ERR_ARG, "crop_to_bbox",
                    "different grid", "grid");
    ml_volume *small = new_vol(new_t(ML_F32, 10, 9, 10), A);
    ml_t_expect_err(ml_volume_crop_to_bbox(&o, small, lab, pad, false, 0), ML_ERR_SHAPE, "crop_to_bbox",
                    "has shape [10, 10, 10]", "shape");
    ml_t_expect_err(ml_volume_crop_to_bbox(&o, img, lab, pad, true, 2), ML_ERR_ARG, "crop_to_bbox", "no voxel with label 2",
                    "absent label");
    ml_volume_release(shifted);
    ml_volume_release(small);
    ml_volume_release(lab);
    ml_volume_release(img);
}

/* ------------------------------------------------------------------ 16-bit PNG */
static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* the file decoded by hand (chunks, zlib, filter bytes), independently of the reader: samples
 * big-endian as PNG stores them; returns the IHDR bit depth / colour type and the samples (malloc'd) */
static uint16_t *png16_by_hand(const char *path, int *w, int *h, int *depth, int *ctype) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n), *z = malloc((size_t)n);
    size_t zn = 0;
    bool ok = b && z && fread(b, 1, (size_t)n, f) == (size_t)n && n > 33 && !memcmp(b, "\x89PNG\r\n\x1a\n", 8);
    fclose(f);
    for (long pos = 8; ok && pos + 12 <= n;) {
        uint32_t len = be32(b + pos);
        const unsigned char *type = b + pos + 4, *d = b + pos + 8;
        if (pos + 12 + (long)len > n) ok = false;
        else if (!memcmp(type, "IHDR", 4)) *w = (int)be32(d), *h = (int)be32(d + 4), *depth = d[8], *ctype = d[9];
        else if (!memcmp(type, "IDAT", 4)) memcpy(z + zn, d, len), zn += len;
        else if (!memcmp(type, "IEND", 4)) break;
        pos += 12 + (long)len;
    }
    uint16_t *out = NULL;
    if (ok) {
        int ch = *ctype == 0 ? 1 : *ctype == 4 ? 2 : *ctype == 2 ? 3 : 4;
        uLongf rn = (uLongf)(*h) * (uLongf)(1 + (size_t)(*w) * (size_t)ch * 2);
        unsigned char *raw = malloc(rn);
        out = malloc((size_t)(*w) * (size_t)(*h) * (size_t)ch * sizeof *out);
        if (raw && out && uncompress(raw, &rn, z, (uLong)zn) == Z_OK &&
            rn == (uLongf)(*h) * (uLongf)(1 + (size_t)(*w) * (size_t)ch * 2)) {
            for (int y = 0; y < *h && out; y++) {
                const unsigned char *row = raw + (size_t)y * (1 + (size_t)(*w) * (size_t)ch * 2);
                if (row[0] != 0) { /* the writer uses filter 0 (None) on every row */
                    free(out), out = NULL;
                    break;
                }
                for (int i = 0; i < *w * ch; i++)
                    out[(size_t)y * (size_t)(*w) * (size_t)ch + (size_t)i] = (uint16_t)(row[1 + 2 * i] << 8 | row[2 + 2 * i]);
            }
        } else {
            free(out), out = NULL;
        }
        free(raw);
    }
    free(b);
    free(z);
    return out;
}

ML_TEST(png_16bit_write_read_exact) {
    char dir[] = "/tmp/ml_png16_XXXXXX";
    if (!mkdtemp(dir)) {
        ML_FAIL_("mkdtemp failed");
        return;
    }
    char path[128];
    /* [H, W] gray, [H, W, 3] RGB, [H, W, 4] RGBA; odd sizes; 0, 1, 255, 256, 65534, 65535 and a
     * pseudo-random spread; int32, float32 and a transposed (non-contiguous) view as input */
    const int64_t H = 37, W = 53;
    for (int c = 1; c <= 4; c++) {
        if (c == 2) continue;
        int64_t sh[3] = {H, W, c};
        ml_tensor *img = NULL;
        ML_CHECK_OK(ml_tensor_empty(&img, c == 3 ? ML_F32 : ML_I32, c == 1 ? 2 : 3, sh));
        if (!img) return;
        int64_t nel = H * W * c;
        uint32_t seed = 12345u + (uint32_t)c;
        for (int64_t i = 0; i < nel; i++) {
            static const int fixed[6] = {0, 1, 255, 256, 65534, 65535};
            seed = seed * 1664525u + 1013904223u;
            double v = i < 6 ? fixed[i] : (double)(seed >> 16);
            ml_store_elem(img->storage->data, (ml_dtype)img->dtype, img->offset + i, v);
        }
        snprintf(path, sizeof path, "%s/img%d.png", dir, c);
        ML_CHECK_OK(ml_png_write(path, img, 16));
        int w = 0, h = 0, depth = 0, ctype = -1;
        uint16_t *hand = png16_by_hand(path, &w, &h, &depth, &ctype);
        ML_CHECK(hand != NULL && w == W && h == H && depth == 16 && ctype == (c == 1 ? 0 : c == 3 ? 2 : 6));
        ml_tensor *back = NULL;
        ML_CHECK_OK(ml_png_read(&back, path));
        if (back && hand) {
            ML_CHECK(back->dtype == ML_I32 && back->ndim == (c == 1 ? 2 : 3) && back->shape[0] == H &&
                     back->shape[1] == W && (c == 1 || back->shape[2] == c));
            ml_tensor *bc = NULL;
            ML_CHECK_OK(ml_contiguous(&bc, back));
            const int32_t *bd = bc ? ml_tensor_data(bc) : NULL;
            int64_t bad = 0;
            for (int64_t i = 0; bd && i < nel; i++) {
                double want = ml_load_elem(img->storage->data, (ml_dtype)img->dtype, img->offset + i);
                if (bd[i] != (int32_t)want || hand[i] != (uint16_t)want) bad++;
            }
            if (bad) ML_FAIL_("16-bit PNG with %d channel(s): %lld of %lld samples differ", c, (long long)bad, (long long)nel);
            ml_tensor_release(bc);
        }
        free(hand);
        ml_tensor_release(back);
        if (c == 1) { /* the transposed view [W, H] is written in its own (logical) order */
            int perm[2] = {1, 0};
            ml_tensor *tv = NULL, *b2 = NULL;
            ML_CHECK_OK(ml_permute(&tv, img, perm));
            snprintf(path, sizeof path, "%s/img_t.png", dir);
            ML_CHECK_OK(ml_png_write(path, tv, 16));
            ML_CHECK_OK(ml_png_read(&b2, path));
            if (b2 && tv) ML_CHECK(b2->shape[0] == W && b2->shape[1] == H && ml_t_maxdiff(b2, tv) == 0);
            ml_tensor_release(b2);
            ml_tensor_release(tv);
        }
        ml_tensor_release(img);
    }
    /* out of range: an error naming the file, nothing written */
    int64_t sh2[2] = {2, 2};
    float bad1[4] = {0, 1, 65536, 3}, bad2[4] = {0, -1, 2, 3};
    ml_tensor *t1 = NULL, *t2 = NULL;
    ML_CHECK_OK(ml_tensor_from_data(&t1, ML_F32, 2, sh2, bad1));
    ML_CHECK_OK(ml_tensor_from_data(&t2, ML_F32, 2, sh2, bad2));
    snprintf(path, sizeof path, "%s/bad.png", dir);
    ml_t_expect_err(ml_png_write(path, t1, 16), ML_ERR_ARG, path, "65535", "above the 16-bit range");
    ml_t_expect_err(ml_png_write(path, t2, 16), ML_ERR_ARG, path, "65535", "below the 16-bit range");
    ML_CHECK(access(path, F_OK) != 0);
    ml_tensor_release(t1);
    ml_tensor_release(t2);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ML_CHECK(system(cmd) == 0);
}

int main(void) {
    ml_manual_seed(1234);
    ML_RUN(reorient_all_48_orientations_keep_world_positions);
    ML_RUN(reorient_errors);
    ML_RUN(linear_resampling_reproduces_linear_functions);
    ML_RUN(identity_resampling_is_exact_for_every_mode_and_dtype);
    ML_RUN(transform_moves_the_object_by_M);
    ML_RUN(padding_value_and_border_mode);
    ML_RUN(spacing_grid_follows_monai);
    ML_RUN(resampling_is_independent_of_the_thread_count);
    ML_RUN(resample_errors);
    ML_RUN(crop_pad_flip_mirror_center_geometry);
    ML_RUN(percentile_and_zscore_arithmetic);
    ML_RUN(largest_component_connectivity_ties_and_subsets);
    ML_RUN(largest_component_across_thread_slabs);
    ML_RUN(bbox_and_label_stats);
    ML_RUN(crop_to_bbox_grid_checks);
    ML_RUN(png_16bit_write_read_exact);
    return ml_test_summary();
}
