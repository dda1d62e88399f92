/* Resampling tests: interpolate, pad, grid_sample, affine_grid.
 * Hand-computed values (PyTorch doc semantics), outputs and input/grid/theta gradients against
 * PyTorch 1.13 reference values (resample_ref.inc), f32 vs f64, f64 finite-difference gradient
 * checks over shapes / modes / align_corners / padding modes, thread-count independence, errors. */
#include "ml_test.h"
#include "nn/ml_nn.h"
#include "tensor/ml_iter.h"
#include <time.h>

#include "resample_ref.inc"

static uint64_t g_seed;

enum { OP_INTERP, OP_PAD, OP_GS, OP_AG };
typedef struct {
    int op;
    const int64_t *size;   /* interpolate: sizes or NULL */
    const double *scale;   /* interpolate: scales or NULL */
    int mode;              /* interp mode / pad mode */
    bool align;
    int npads;
    int64_t pads[6];
    double value;
    int gpad;              /* grid_sample padding */
    int ag_ndim;
    int64_t ag_size[5];
} rs_ud;

static ml_err f_rs(ml_tensor **out, ml_tensor **in, void *ud) {
    rs_ud *u = ud;
    switch (u->op) {
    case OP_INTERP: return ml_interpolate(out, in[0], u->size, u->scale, (ml_interp_mode)u->mode, u->align);
    case OP_PAD: return ml_pad(out, in[0], u->npads, u->pads, (ml_pad_mode)u->mode, u->value);
    case OP_GS: return ml_grid_sample(out, in[0], in[1], (ml_interp_mode)u->mode, (ml_gs_padding)u->gpad, u->align);
    default: return ml_affine_grid(out, in[0], u->ag_ndim, u->ag_size, u->align);
    }
}

/* deterministic input x[i] = s*sin(a*i + b) */
static ml_tensor *det(int ndim, const int64_t *shape, double a, double b, double s, ml_dtype dt) {
    ml_tensor *t = NULL;
    ml_tensor_empty(&t, dt, ndim, shape);
    int64_t n = ml_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) {
        double v = s * sin(a * (double)i + b);
        if (dt == ML_F32) ((float *)ml_tensor_data(t))[i] = (float)v;
        else ((double *)ml_tensor_data(t))[i] = v;
    }
    ml_set_requires_grad(t, true);
    return t;
}

static double maxdiff_ref(const ml_tensor *t, const double *ref, int64_t nref) {
    if (ml_tensor_numel(t) != nref) return INFINITY;
    int64_t idx[ML_MAX_DIMS] = {0};
    double m = 0;
    for (int64_t k = 0; k < nref; k++) {
        double d = fabs(ml_tensor_get(t, idx) - ref[k]);
        if (isnan(d)) return INFINITY;
        if (d > m) m = d;
        ml_t_next_index(t->ndim, t->shape, idx);
    }
    return m;
}

typedef struct { int ndim; int64_t shape[5]; double a, b, s; } in_spec;
#define X1 {3, {1, 2, 5}, 0.37, 0.1, 2.0}
#define X2 {4, {1, 2, 3, 4}, 0.37, 0.1, 2.0}
#define X3 {5, {1, 1, 2, 3, 4}, 0.37, 0.1, 2.0}
#define GX2 {4, {1, 2, 3, 4}, 0.37, 0.1, 2.0}
#define GG2 {4, {1, 3, 5, 2}, 0.61, 0.3, 1.15}
#define GX3 {5, {1, 2, 3, 4, 3}, 0.37, 0.1, 2.0}
#define GG3 {5, {1, 2, 3, 4, 3}, 0.61, 0.3, 1.15}
#define TH2 {3, {2, 2, 3}, 0.7, 0.1, 0.8}
#define TH3 {3, {1, 3, 4}, 0.7, 0.1, 0.8}

/* Run op on deterministic inputs (f64 and f32), compare output and gradients of sum(out*r). */
static void check_ref(const char *name, rs_ud *u, int nin, const in_spec *specs, const double *oref, int64_t nout,
                      const int64_t *oshape, int ondim, const double *const *grefs, const int64_t *ngref) {
    for (int pass = 0; pass < 2; pass++) {
        ml_dtype dt = pass ? ML_F32 : ML_F64;
        double tol_o = pass ? 2e-5 : 1e-9, tol_g = pass ? 1e-4 : 1e-9;
        ml_tensor *in[2] = {0}, *y = NULL, *r = NULL;
        for (int i = 0; i < nin; i++) in[i] = det(specs[i].ndim, specs[i].shape, specs[i].a, specs[i].b, specs[i].s, dt);
        ml_err e = f_rs(&y, in, u);
        if (e) {
            ML_FAIL_("%s (%s): %s", name, ml_dtype_name(dt), ml_errmsg());
        } else {
            bool shape_ok = y->ndim == ondim;
            for (int d = 0; shape_ok && d < ondim; d++) shape_ok = y->shape[d] == oshape[d];
            if (!shape_ok) ML_FAIL_("%s: output shape %s, expected %s", name, ml_shape_str(y->ndim, y->shape), ml_shape_str(ondim, oshape));
            double d = maxdiff_ref(y, oref, nout);
            if (!(d <= tol_o)) ML_FAIL_("%s (%s): output differs from PyTorch by %g", name, ml_dtype_name(dt), d);
            ML_CHECK_OK(ml_tensor_empty(&r, dt, y->ndim, y->shape));
            for (int64_t i = 0; i < nout; i++) ml_store_elem(ml_tensor_data(r), dt, i, cos(0.23 * (double)i));
            ML_CHECK_OK(ml_backward(y, r, false));
            for (int i = 0; i < nin; i++) {
                double dg = in[i]->grad ? maxdiff_ref(in[i]->grad, grefs[i], ngref[i]) : INFINITY;
                if (!(dg <= tol_g)) ML_FAIL_("%s (%s): gradient of input %d differs from PyTorch by %g", name, ml_dtype_name(dt), i, dg);
                if (in[i]->grad && (ml_dtype)in[i]->grad->dtype != dt) ML_FAIL_("%s: gradient dtype %s", name, ml_dtype_name((ml_dtype)in[i]->grad->dtype));
            }
        }
        ml_tensor_release(y);
        ml_tensor_release(r);
        for (int i = 0; i < nin; i++) ml_tensor_release(in[i]);
    }
}

#define N_(a) ((int64_t)(sizeof(a) / sizeof(a[0])))
#define REF1(name, u, s0)                                                                                     \
    do {                                                                                                      \
        in_spec sp_[1] = {s0};                                                                                \
        const double *g_[1] = {name##_g0};                                                                    \
        int64_t ng_[1] = {N_(name##_g0)};                                                                     \
        check_ref(#name, &(u), 1, sp_, name##_out, N_(name##_out), name##_oshape, (int)N_(name##_oshape), g_, ng_); \
    } while (0)
#define REF2(name, u, s0, s1)                                                                                 \
    do {                                                                                                      \
        in_spec sp_[2] = {s0, s1};                                                                            \
        const double *g_[2] = {name##_g0, name##_g1};                                                         \
        int64_t ng_[2] = {N_(name##_g0), N_(name##_g1)};                                                      \
        check_ref(#name, &(u), 2, sp_, name##_out, N_(name##_out), name##_oshape, (int)N_(name##_oshape), g_, ng_); \
    } while (0)

/* ------------------------------------------------------------------- interpolate */
ML_TEST(interpolate_hand_values) {
    /* PyTorch docs semantics: [1, 2] upsampled 2x */
    double v[] = {1, 2};
    ml_tensor *x = NULL, *y;
    ML_CHECK_OK(ml_tensor_from_data(&x, ML_F64, 3, (int64_t[]){1, 1, 2}, v));
    ML_CHECK_OK(ml_interpolate(&y, x, NULL, (double[]){2}, ML_INTERP_LINEAR, true));
    double ac[] = {1, 4.0 / 3, 5.0 / 3, 2};
    for (int i = 0; i < 4; i++) ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){0, 0, i}), ac[i], 1e-15);
    ml_tensor_release(y);
    ML_CHECK_OK(ml_interpolate(&y, x, NULL, (double[]){2}, ML_INTERP_LINEAR, false));
    double nac[] = {1, 1.25, 1.75, 2};
    for (int i = 0; i < 4; i++) ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){0, 0, i}), nac[i], 1e-15);
    ml_tensor_release(y);
    ML_CHECK_OK(ml_interpolate(&y, x, (int64_t[]){4}, NULL, ML_INTERP_NEAREST, false));
    double nn[] = {1, 1, 2, 2};
    for (int i = 0; i < 4; i++) ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){0, 0, i}), nn[i], 0);
    ml_tensor_release(y);
    /* out == in is a copy, even when the scale factor says otherwise (floor(2*1.2) = 2) */
    ML_CHECK_OK(ml_interpolate(&y, x, NULL, (double[]){1.2}, ML_INTERP_LINEAR, false));
    ML_CHECK(y->shape[2] == 2 && ml_tensor_get(y, (int64_t[]){0, 0, 1}) == 2);
    ml_tensor_release(y);
    /* 2-D bilinear align_corners of a 2x2 ramp to 3x3: centre is the mean */
    ml_tensor *x2;
    ML_CHECK_OK(ml_tensor_from_data(&x2, ML_F32, 4, (int64_t[]){1, 1, 2, 2}, (float[]){0, 1, 2, 3}));
    ML_CHECK_OK(ml_interpolate(&y, x2, (int64_t[]){3, 3}, NULL, ML_INTERP_LINEAR, true));
    ML_CHECK(y->dtype == ML_F32);
    ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){0, 0, 1, 1}), 1.5, 1e-7);
    ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){0, 0, 2, 1}), 2.5, 1e-7);
    ml_tensor_release(y);
    ml_tensor_release(x2);
    ml_tensor_release(x);
}

ML_TEST(interpolate_vs_pytorch) {
    rs_ud u = {.op = OP_INTERP, .mode = ML_INTERP_LINEAR};
    u.size = (int64_t[]){8}; u.align = true; REF1(i1_s8_ac, u, X1);
    u.align = false; REF1(i1_s8, u, X1);
    u.size = NULL; u.scale = (double[]){1.7}; REF1(i1_f17, u, X1);
    u.scale = (double[]){0.6}; REF1(i1_f06, u, X1);
    u.mode = ML_INTERP_NEAREST; u.scale = (double[]){1.7}; REF1(i1_n_f17, u, X1);
    u.scale = NULL; u.size = (int64_t[]){3}; REF1(i1_n_s3, u, X1);
    u.mode = ML_INTERP_LINEAR; u.size = (int64_t[]){5, 7}; u.align = true; REF1(i2_s57_ac, u, X2);
    u.align = false; REF1(i2_s57, u, X2);
    u.size = NULL; u.scale = (double[]){1.5, 2.3}; REF1(i2_f, u, X2);
    u.mode = ML_INTERP_NEAREST; REF1(i2_n, u, X2);
    u.scale = NULL; u.size = (int64_t[]){6, 3}; REF1(i2_n_s, u, X2);
    u.mode = ML_INTERP_LINEAR; u.size = (int64_t[]){3, 5, 6}; u.align = true; REF1(i3_ac, u, X3);
    u.align = false; REF1(i3, u, X3);
    u.size = NULL; u.scale = (double[]){1.5, 1.0, 0.75}; REF1(i3_f, u, X3);
    u.mode = ML_INTERP_NEAREST; u.scale = NULL; u.size = (int64_t[]){3, 5, 6}; REF1(i3_n, u, X3);
}

ML_TEST(interpolate_gradcheck) {
    printf("  seed %llu\n", (unsigned long long)g_seed);
    struct { int ndim; int64_t shape[5]; int64_t size[3]; double scale[3]; bool use_scale; } cs[] = {
        {3, {2, 3, 5}, {9}, {0}, false},
        {3, {1, 2, 6}, {4}, {0}, false},
        {3, {2, 1, 4}, {0}, {2.5}, true},
        {3, {2, 1, 7}, {0}, {0.45}, true},
        {4, {2, 2, 3, 4}, {5, 7}, {0}, false},
        {4, {1, 2, 5, 4}, {3, 6}, {0}, false},
        {4, {1, 2, 3, 3}, {0}, {1.7, 0.8}, true},
        {5, {1, 2, 2, 3, 3}, {3, 5, 4}, {0}, false},
        {5, {1, 1, 4, 3, 2}, {0}, {0.6, 1.5, 2.0}, true},
    };
    char what[160];
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        for (int mode = 0; mode < 2; mode++) {
            for (int align = 0; align < 2; align++) {
                if (mode == ML_INTERP_NEAREST && align) continue;
                ml_tensor *in[1] = {ml_t_randn(cs[c].ndim, cs[c].shape, true)};
                rs_ud u = {.op = OP_INTERP, .mode = mode, .align = align,
                           .size = cs[c].use_scale ? NULL : cs[c].size, .scale = cs[c].use_scale ? cs[c].scale : NULL};
                snprintf(what, sizeof what, "interpolate %s mode=%d align=%d case %zu", ml_shape_str(cs[c].ndim, cs[c].shape),
                         mode, align, c);
                ml_gradcheck(what, f_rs, 1, in, &u, 1e-6, 1e-7, 1e-6);
                ml_tensor_release(in[0]);
            }
        }
    }
}

/* ------------------------------------------------------------------------- pad */
ML_TEST(pad_values) {
    double v[] = {1, 2, 3, 4};
    ml_tensor *x = NULL, *y;
    ML_CHECK_OK(ml_tensor_from_data(&x, ML_F64, 3, (int64_t[]){1, 1, 4}, v));
    ML_CHECK_OK(ml_pad(&y, x, 2, (int64_t[]){2, 3}, ML_PAD_REFLECT, 0));
    double refl[] = {3, 2, 1, 2, 3, 4, 3, 2, 1};
    ML_CHECK(y->shape[2] == 9);
    for (int i = 0; i < 9; i++) ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){0, 0, i}), refl[i], 0);
    ml_tensor_release(y);
    ML_CHECK_OK(ml_pad(&y, x, 2, (int64_t[]){2, 1}, ML_PAD_REPLICATE, 0));
    double repl[] = {1, 1, 1, 2, 3, 4, 4};
    for (int i = 0; i < 7; i++) ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){0, 0, i}), repl[i], 0);
    ml_tensor_release(y);
    ML_CHECK_OK(ml_pad(&y, x, 2, (int64_t[]){-1, 2}, ML_PAD_CONSTANT, 9));
    double cst[] = {2, 3, 4, 9, 9};
    for (int i = 0; i < 5; i++) ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){0, 0, i}), cst[i], 0);
    ml_tensor_release(y);
    /* constant pad of all dims, including the batch dim */
    ML_CHECK_OK(ml_pad(&y, x, 6, (int64_t[]){0, 0, 1, 0, 0, 1}, ML_PAD_CONSTANT, -1));
    ML_CHECK(y->shape[0] == 2 && y->shape[1] == 2 && y->shape[2] == 4);
    ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){0, 1, 3}), 4, 0);
    ML_CHECK_NEAR(ml_tensor_get(y, (int64_t[]){1, 1, 3}), -1, 0);
    ml_tensor_release(y);
    ml_tensor_release(x);
}

ML_TEST(pad_vs_pytorch) {
    rs_ud u = {.op = OP_PAD, .mode = ML_PAD_CONSTANT, .npads = 4, .pads = {1, 2, 2, 1}, .value = 0.5};
    REF1(p_const, u, X2);
    u = (rs_ud){.op = OP_PAD, .mode = ML_PAD_CONSTANT, .npads = 4, .pads = {-1, 2, 1, -1}, .value = -1};
    REF1(p_crop, u, X2);
    u = (rs_ud){.op = OP_PAD, .mode = ML_PAD_REFLECT, .npads = 4, .pads = {3, 2, 2, 1}};
    REF1(p_refl, u, X2);
    u.mode = ML_PAD_REPLICATE;
    REF1(p_repl, u, X2);
    u = (rs_ud){.op = OP_PAD, .mode = ML_PAD_REFLECT, .npads = 2, .pads = {4, 2}};
    REF1(p_refl1, u, X1);
    u = (rs_ud){.op = OP_PAD, .mode = ML_PAD_REPLICATE, .npads = 6, .pads = {1, 2, 0, 1, 2, 1}};
    REF1(p_repl3, u, X3);
    u = (rs_ud){.op = OP_PAD, .mode = ML_PAD_REFLECT, .npads = 6, .pads = {1, 2, 2, 1, 1, 1}};
    REF1(p_refl3, u, X3);
}

ML_TEST(pad_gradcheck) {
    printf("  seed %llu\n", (unsigned long long)g_seed);
    struct { int ndim; int64_t shape[5]; int npads; int64_t pads[6]; } cs[] = {
        {3, {2, 2, 5}, 2, {2, 3}},
        {3, {1, 3, 4}, 2, {-1, 2}},
        {4, {2, 1, 3, 4}, 4, {1, 2, 2, 0}},
        {4, {1, 2, 4, 5}, 4, {3, -2, 0, 3}},
        {5, {1, 1, 3, 3, 4}, 6, {1, 2, 2, 1, 1, 2}},
        {5, {1, 2, 3, 4, 2}, 6, {0, 1, -1, 2, 2, 0}},
        {2, {3, 4}, 4, {1, 1, 2, 1}},
    };
    char what[160];
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        for (int mode = 0; mode < 3; mode++) {
            ml_tensor *in[1] = {ml_t_randn(cs[c].ndim, cs[c].shape, true)};
            rs_ud u = {.op = OP_PAD, .mode = mode, .npads = cs[c].npads, .value = 0.25};
            memcpy(u.pads, cs[c].pads, sizeof u.pads);
            snprintf(what, sizeof what, "pad %s mode=%d case %zu", ml_shape_str(cs[c].ndim, cs[c].shape), mode, c);
            /* reflect/replicate need <= 3 padded dims and (reflect) pads below the size */
            ml_tensor *y = NULL;
            bool prev = ml_set_grad_enabled(false);
            ml_err e = f_rs(&y, in, &u);
            ml_set_grad_enabled(prev);
            ml_tensor_release(y);
            if (e == ML_OK) ml_gradcheck(what, f_rs, 1, in, &u, 1e-6, 1e-8, 1e-6);
            else if (mode == ML_PAD_CONSTANT || cs[c].ndim != 2) ML_FAIL_("%s: %s", what, ml_errmsg());
            ml_tensor_release(in[0]);
        }
    }
}

/* ------------------------------------------------------------------ grid_sample */
ML_TEST(grid_sample_hand_values) {
    /* identity grid with align_corners=true reproduces the input */
    ml_tensor *x = NULL, *th = NULL, *grid, *y;
    float xv[12];
    for (int i = 0; i < 12; i++) xv[i] = (float)(i * i) * 0.5f;
    ML_CHECK_OK(ml_tensor_from_data(&x, ML_F32, 4, (int64_t[]){1, 1, 3, 4}, xv));
    ML_CHECK_OK(ml_tensor_from_data(&th, ML_F32, 3, (int64_t[]){1, 2, 3}, (float[]){1, 0, 0, 0, 1, 0}));
    for (int ac = 0; ac < 2; ac++) {
        ML_CHECK_OK(ml_affine_grid(&grid, th, 4, (int64_t[]){1, 1, 3, 4}, ac));
        ML_CHECK(grid->ndim == 4 && grid->shape[1] == 3 && grid->shape[2] == 4 && grid->shape[3] == 2);
        ML_CHECK_OK(ml_grid_sample(&y, x, grid, ML_INTERP_LINEAR, ML_GS_ZEROS, ac));
        ML_CHECK(ml_t_maxdiff(y, x) < 1e-5);
        ml_tensor_release(y);
        ML_CHECK_OK(ml_grid_sample(&y, x, grid, ML_INTERP_NEAREST, ML_GS_BORDER, ac));
        ML_CHECK(ml_t_maxdiff(y, x) < 1e-5);
        ml_tensor_release(y);
        ml_tensor_release(grid);
    }
    /* a point outside: zeros gives 0, border gives the edge value */
    ml_tensor *g1;
    ML_CHECK_OK(ml_tensor_from_data(&g1, ML_F32, 4, (int64_t[]){1, 1, 1, 2}, (float[]){3.0f, -1.0f}));
    ML_CHECK_OK(ml_grid_sample(&y, x, g1, ML_INTERP_LINEAR, ML_GS_ZEROS, true));
    ML_CHECK_NEAR(ml_tensor_item(y), 0, 0);
    ml_tensor_release(y);
    ML_CHECK_OK(ml_grid_sample(&y, x, g1, ML_INTERP_LINEAR, ML_GS_BORDER, true));
    ML_CHECK_NEAR(ml_tensor_item(y), xv[3], 1e-6);
    ml_tensor_release(y);
    ml_tensor_release(g1); ml_tensor_release(th); ml_tensor_release(x);
}

ML_TEST(grid_sample_vs_pytorch) {
    rs_ud u = {.op = OP_GS};
#define GS(nm, m, p, a)                                                     \
    u.mode = m; u.gpad = p; u.align = a;                                    \
    REF2(gs2_##nm, u, GX2, GG2);                                            \
    REF2(gs3_##nm, u, GX3, GG3);
    GS(b_z_0, ML_INTERP_LINEAR, ML_GS_ZEROS, false)
    GS(b_z_1, ML_INTERP_LINEAR, ML_GS_ZEROS, true)
    GS(b_b_0, ML_INTERP_LINEAR, ML_GS_BORDER, false)
    GS(b_b_1, ML_INTERP_LINEAR, ML_GS_BORDER, true)
    GS(n_z_0, ML_INTERP_NEAREST, ML_GS_ZEROS, false)
    GS(n_z_1, ML_INTERP_NEAREST, ML_GS_ZEROS, true)
    GS(n_b_0, ML_INTERP_NEAREST, ML_GS_BORDER, false)
    GS(n_b_1, ML_INTERP_NEAREST, ML_GS_BORDER, true)
#undef GS
}

ML_TEST(grid_sample_gradcheck) {
    printf("  seed %llu\n", (unsigned long long)g_seed);
    struct { int ndim; int64_t xs[5], gs[5]; } cs[] = {
        {4, {2, 3, 4, 5}, {2, 3, 2, 2}},
        {4, {1, 2, 3, 3}, {1, 4, 3, 2}},
        {5, {1, 2, 3, 3, 4}, {1, 2, 2, 3, 3}},
        {5, {2, 1, 2, 4, 3}, {2, 1, 3, 2, 3}},
    };
    char what[160];
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        for (int mode = 0; mode < 2; mode++)
            for (int pad = 0; pad < 2; pad++)
                for (int align = 0; align < 2; align++) {
                    ml_tensor *x = ml_t_randn(cs[c].ndim, cs[c].xs, true), *g = NULL;
                    ML_CHECK_OK(ml_uniform_(x, -1, 1));
                    ML_CHECK_OK(ml_rand(&g, ML_F64, cs[c].ndim, cs[c].gs));
                    double *gd = ml_tensor_data(g);
                    for (int64_t i = 0; i < ml_tensor_numel(g); i++) gd[i] = gd[i] * 2.4 - 1.2; /* some outside [-1, 1] */
                    ml_set_requires_grad(g, true);
                    ml_tensor *in[2] = {x, g};
                    rs_ud u = {.op = OP_GS, .mode = mode, .gpad = pad, .align = align};
                    snprintf(what, sizeof what, "grid_sample x%s grid%s mode=%d pad=%d align=%d",
                             ml_shape_str(cs[c].ndim, cs[c].xs), ml_shape_str(cs[c].ndim, cs[c].gs), mode, pad, align);
                    ml_gradcheck(what, f_rs, 2, in, &u, 1e-6, 1e-7, 1e-5);
                    ml_tensor_release(x); ml_tensor_release(g);
                }
    }
}

/* ------------------------------------------------------------------ affine_grid */
ML_TEST(affine_grid_vs_pytorch) {
    rs_ud u = {.op = OP_AG, .ag_ndim = 4, .ag_size = {2, 1, 3, 4}};
    u.align = false; REF1(ag2_0, u, TH2);
    u.align = true; REF1(ag2_1, u, TH2);
    u.ag_size[2] = 1; u.ag_size[3] = 3;
    u.align = false; REF1(ag2one_0, u, TH2);
    u.align = true; REF1(ag2one_1, u, TH2);
    u = (rs_ud){.op = OP_AG, .ag_ndim = 5, .ag_size = {1, 2, 2, 3, 4}};
    u.align = false; REF1(ag3_0, u, TH3);
    u.align = true; REF1(ag3_1, u, TH3);
}

ML_TEST(affine_grid_gradcheck) {
    printf("  seed %llu\n", (unsigned long long)g_seed);
    char what[96];
    for (int align = 0; align < 2; align++) {
        ml_tensor *in[1] = {ml_t_randn(3, (int64_t[]){2, 2, 3}, true)};
        rs_ud u = {.op = OP_AG, .ag_ndim = 4, .ag_size = {2, 3, 4, 5}, .align = align};
        snprintf(what, sizeof what, "affine_grid 2d align=%d", align);
        ml_gradcheck(what, f_rs, 1, in, &u, 1e-6, 1e-8, 1e-6);
        ml_tensor_release(in[0]);
        in[0] = ml_t_randn(3, (int64_t[]){2, 3, 4}, true);
        u = (rs_ud){.op = OP_AG, .ag_ndim = 5, .ag_size = {2, 1, 3, 2, 4}, .align = align};
        snprintf(what, sizeof what, "affine_grid 3d align=%d", align);
        ml_gradcheck(what, f_rs, 1, in, &u, 1e-6, 1e-8, 1e-6);
        ml_tensor_release(in[0]);
    }
    /* affine_grid -> grid_sample chain: gradient reaches theta and x */
    ml_tensor *in[2] = {ml_t_randn(3, (int64_t[]){1, 2, 3}, true), ml_t_randn(4, (int64_t[]){1, 2, 4, 5}, true)};
    ml_tensor *grid, *y;
    ML_CHECK_OK(ml_affine_grid(&grid, in[0], 4, (int64_t[]){1, 2, 3, 3}, false));
    ML_CHECK_OK(ml_grid_sample(&y, in[1], grid, ML_INTERP_LINEAR, ML_GS_BORDER, false));
    ML_CHECK_ERR(ml_backward(y, NULL, false), ML_ERR_GRAD); /* not a scalar: needs a gradient */
    ml_tensor *g;
    ML_CHECK_OK(ml_ones(&g, ML_F64, 4, y->shape));
    ML_CHECK_OK(ml_backward(y, g, false));
    ML_CHECK(in[0]->grad && in[1]->grad);
    ml_tensor_release(g); ml_tensor_release(y); ml_tensor_release(grid);
    ml_tensor_release(in[0]); ml_tensor_release(in[1]);
}

ML_TEST(resample_thread_independence) {
    int64_t xs[4] = {1, 3, 60, 70}, gs[4] = {1, 50, 80, 2};
    ml_tensor *x = ml_t_randn(4, xs, true), *grid, *y[2], *gx[2], *gg[2], *yi[2], *gi[2], *r, *ri;
    ML_CHECK_OK(ml_rand(&grid, ML_F64, 4, gs));
    ml_set_requires_grad(grid, true);
    ML_CHECK_OK(ml_randn(&r, ML_F64, 4, (int64_t[]){1, 3, 50, 80}));
    ML_CHECK_OK(ml_randn(&ri, ML_F64, 4, (int64_t[]){1, 3, 150, 97}));
    int nt = ml_num_threads();
    for (int k = 0; k < 2; k++) {
        ml_set_num_threads(k == 0 ? 1 : (nt > 1 ? nt : 2));
        ML_CHECK_OK(ml_grid_sample(&y[k], x, grid, ML_INTERP_LINEAR, ML_GS_ZEROS, false));
        ML_CHECK_OK(ml_backward(y[k], r, false));
        gx[k] = x->grad; gg[k] = grid->grad; x->grad = grid->grad = NULL;
        ML_CHECK_OK(ml_interpolate(&yi[k], x, (int64_t[]){150, 97}, NULL, ML_INTERP_LINEAR, false));
        ML_CHECK_OK(ml_backward(yi[k], ri, false));
        gi[k] = x->grad; x->grad = NULL;
    }
    ml_set_num_threads(nt);
    ML_CHECK(ml_t_maxdiff(y[0], y[1]) == 0 && ml_t_maxdiff(gx[0], gx[1]) == 0 && ml_t_maxdiff(gg[0], gg[1]) == 0);
    ML_CHECK(ml_t_maxdiff(yi[0], yi[1]) == 0 && ml_t_maxdiff(gi[0], gi[1]) == 0);
    for (int k = 0; k < 2; k++) {
        ml_tensor_release(y[k]); ml_tensor_release(gx[k]); ml_tensor_release(gg[k]);
        ml_tensor_release(yi[k]); ml_tensor_release(gi[k]);
    }
    ml_tensor_release(x); ml_tensor_release(grid); ml_tensor_release(r); ml_tensor_release(ri);
}

ML_TEST(resample_errors) {
    ml_tensor *x2 = ml_t_randn(2, (int64_t[]){3, 4}, false), *x4 = ml_t_randn(4, (int64_t[]){1, 2, 3, 4}, false), *y = NULL;
    ML_CHECK_ERR(ml_interpolate(&y, x2, (int64_t[]){5}, NULL, ML_INTERP_LINEAR, false), ML_ERR_SHAPE);
    ML_CHECK(y == NULL && strstr(ml_errmsg(), "interpolate") && strstr(ml_errmsg(), "[3, 4]"));
    ML_CHECK_ERR(ml_interpolate(&y, x4, NULL, NULL, ML_INTERP_LINEAR, false), ML_ERR_ARG);
    ML_CHECK_ERR(ml_interpolate(&y, x4, (int64_t[]){0, 3}, NULL, ML_INTERP_LINEAR, false), ML_ERR_SHAPE);
    ML_CHECK_ERR(ml_interpolate(&y, x4, NULL, (double[]){-1, 2}, ML_INTERP_NEAREST, false), ML_ERR_ARG);
    ML_CHECK(strstr(ml_errmsg(), "scale_factor"));
    ML_CHECK_ERR(ml_pad(&y, x4, 4, (int64_t[]){4, 0, 0, 0}, ML_PAD_REFLECT, 0), ML_ERR_ARG);
    ML_CHECK(strstr(ml_errmsg(), "pad") && strstr(ml_errmsg(), "[1, 2, 3, 4]"));
    ML_CHECK_ERR(ml_pad(&y, x4, 3, (int64_t[]){1, 1, 1}, ML_PAD_CONSTANT, 0), ML_ERR_ARG);
    ML_CHECK_ERR(ml_pad(&y, x4, 2, (int64_t[]){-3, -2}, ML_PAD_CONSTANT, 0), ML_ERR_ARG);
    ML_CHECK(strstr(ml_errmsg(), "negative size"));
    ML_CHECK_ERR(ml_pad(&y, x4, 8, (int64_t[]){1, 1, 1, 1, 1, 1, 1, 1}, ML_PAD_REPLICATE, 0), ML_ERR_ARG);
    ml_tensor *g = ml_t_randn(4, (int64_t[]){2, 3, 3, 2}, false), *g32 = NULL;
    ML_CHECK_ERR(ml_grid_sample(&y, x4, g, ML_INTERP_LINEAR, ML_GS_ZEROS, false), ML_ERR_SHAPE);
    ML_CHECK(strstr(ml_errmsg(), "grid_sample") && strstr(ml_errmsg(), "[2, 3, 3, 2]") && strstr(ml_errmsg(), "[1, 2, 3, 4]"));
    ML_CHECK_OK(ml_zeros(&g32, ML_F32, 4, (int64_t[]){1, 3, 3, 2}));
    ML_CHECK_ERR(ml_grid_sample(&y, x4, g32, ML_INTERP_LINEAR, ML_GS_ZEROS, false), ML_ERR_DTYPE);
    ML_CHECK(strstr(ml_errmsg(), "float32") && strstr(ml_errmsg(), "float64"));
    ML_CHECK_ERR(ml_grid_sample(&y, x2, g, ML_INTERP_LINEAR, ML_GS_ZEROS, false), ML_ERR_SHAPE);
    ml_tensor *th = ml_t_randn(3, (int64_t[]){2, 2, 3}, false);
    ML_CHECK_ERR(ml_affine_grid(&y, th, 5, (int64_t[]){2, 1, 3, 3, 3}, false), ML_ERR_SHAPE);
    ML_CHECK(strstr(ml_errmsg(), "affine_grid") && strstr(ml_errmsg(), "[2, 2, 3]") && strstr(ml_errmsg(), "[2, 1, 3, 3, 3]"));
    ML_CHECK_ERR(ml_affine_grid(&y, th, 4, (int64_t[]){3, 1, 3, 3}, false), ML_ERR_SHAPE);
    ML_CHECK_ERR(ml_affine_grid(&y, th, 3, (int64_t[]){2, 1, 3}, false), ML_ERR_ARG);
    ml_tensor *xi;
    ML_CHECK_OK(ml_zeros(&xi, ML_U8, 4, (int64_t[]){1, 1, 2, 2}));
    ML_CHECK_ERR(ml_interpolate(&y, xi, (int64_t[]){3, 3}, NULL, ML_INTERP_NEAREST, false), ML_ERR_DTYPE);
    ML_CHECK(strstr(ml_errmsg(), "uint8"));
    ml_tensor_release(x2); ml_tensor_release(x4); ml_tensor_release(g); ml_tensor_release(g32); ml_tensor_release(th);
    ml_tensor_release(xi);
}

int main(void) {
    g_seed = (uint64_t)time(NULL);
    const char *env = getenv("ML_TEST_SEED");
    if (env) g_seed = strtoull(env, NULL, 10);
    printf("test_resample seed %llu\n", (unsigned long long)g_seed);
    ml_manual_seed(g_seed);
    ML_RUN(interpolate_hand_values);
    ML_RUN(interpolate_vs_pytorch);
    ML_RUN(interpolate_gradcheck);
    ML_RUN(pad_values);
    ML_RUN(pad_vs_pytorch);
    ML_RUN(pad_gradcheck);
    ML_RUN(grid_sample_hand_values);
    ML_RUN(grid_sample_vs_pytorch);
    ML_RUN(grid_sample_gradcheck);
    ML_RUN(affine_grid_vs_pytorch);
    ML_RUN(affine_grid_gradcheck);
    ML_RUN(resample_thread_independence);
    ML_RUN(resample_errors);
    return ml_test_summary();
}
