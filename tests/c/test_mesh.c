/* Marching cubes core tests (modules/volume/ml_mesh.h), no Lua: a voxelized sphere under an
 * anisotropic, rotated and translated affine (watertight, outward, volume and area against 4/3 pi r^3
 * and 4 pi r^2, every vertex near the sphere in WORLD mm, outward normals), a torus (Euler 0), voxels
 * touching along an edge or at a corner, a 3-D checkerboard and random masks and random smooth fields
 * (the ambiguous faces: still watertight), a negative-determinant affine, objects touching the border
 * of the volume, label volumes in any memory order, decimation by step, Taubin smoothing, the same
 * output for any thread count, empty masks, and every error. */
#include "ml_test.h"
#include "volume/ml_mesh.h"

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

/* rotation about a unit axis by ang, times diag(spacing), then translation */
static void make_affine(double A[16], const double axis_in[3], double ang, const double sp[3], const double tr[3]) {
    double n = sqrt(axis_in[0] * axis_in[0] + axis_in[1] * axis_in[1] + axis_in[2] * axis_in[2]);
    double x = axis_in[0] / n, y = axis_in[1] / n, z = axis_in[2] / n, c = cos(ang), s = sin(ang), C = 1 - c;
    double R[9] = {c + x * x * C,     x * y * C - z * s, x * z * C + y * s, y * x * C + z * s, c + y * y * C,
                   y * z * C - x * s, z * x * C - y * s, z * y * C + x * s, c + z * z * C};
    memset(A, 0, 16 * sizeof *A);
    for (int r = 0; r < 3; r++) {
        for (int q = 0; q < 3; q++) A[4 * r + q] = R[3 * r + q] * sp[q];
        A[4 * r + 3] = tr[r];
    }
    A[15] = 1;
}

static void world_of(const double A[16], double i, double j, double k, double w[3]) {
    double p[3] = {i, j, k};
    ml_affine_apply(A, p, w);
}

/* a volume of shape X,Y,Z whose voxel (i,j,k) is `inside(world)` (1/0), dtype dt */
typedef int (*shape_fn)(const double w[3], const void *ud);

static ml_volume *voxelize(ml_dtype dt, int64_t X, int64_t Y, int64_t Z, const double A[16], shape_fn fn,
                           const void *ud, double value, int64_t *count) {
    ml_tensor *t = new_t(dt, X, Y, Z);
    if (!t) return NULL;
    int64_t n = 0;
    for (int64_t i = 0; i < X; i++)
        for (int64_t j = 0; j < Y; j++)
            for (int64_t k = 0; k < Z; k++) {
                double w[3];
                world_of(A, (double)i, (double)j, (double)k, w);
                if (fn(w, ud)) {
                    tset(t, i, j, k, value);
                    n++;
                }
            }
    ml_volume *v = NULL;
    ml_volume_new(&v, t, A, NULL);
    ml_tensor_release(t);
    if (count) *count = n;
    return v;
}

typedef struct {
    double c[3], r;
} sphere_t;
static int in_sphere(const double w[3], const void *ud) {
    const sphere_t *s = ud;
    double d2 = 0;
    for (int q = 0; q < 3; q++) d2 += (w[q] - s->c[q]) * (w[q] - s->c[q]);
    return d2 <= s->r * s->r;
}

typedef struct {
    double c[3], R, r; /* torus around the z axis (world) */
} torus_t;
static int in_torus(const double w[3], const void *ud) {
    const torus_t *t = ud;
    double x = w[0] - t->c[0], y = w[1] - t->c[1], z = w[2] - t->c[2];
    double q = sqrt(x * x + y * y) - t->R;
    return q * q + z * z <= t->r * t->r;
}

static ml_mesh_stats stats_of(const ml_mesh *m) {
    ml_mesh_stats st;
    memset(&st, 0, sizeof st);
    ml_err e = ml_mesh_stats_compute(m->verts, m->nverts, m->faces, m->nfaces, &st);
    if (e) ML_FAIL_("stats: %s", ml_errmsg());
    return st;
}

static void check_closed(const ml_mesh *m, const char *what) {
    ml_mesh_stats st = stats_of(m);
    if (!st.watertight)
        ML_FAIL_("%s: not watertight: %lld boundary, %lld non-manifold, %lld misoriented edges, %lld degenerate faces "
                 "(V %lld F %lld)",
                 what, (long long)st.boundary_edges, (long long)st.nonmanifold_edges, (long long)st.misoriented_edges,
                 (long long)st.degenerate_faces, (long long)m->nverts, (long long)m->nfaces);
    if (!(st.volume > 0)) ML_FAIL_("%s: signed volume %g should be > 0 (outward faces)", what, st.volume);
    if (st.nverts_used != m->nverts) ML_FAIL_("%s: %lld of %lld vertices unused", what,
                                              (long long)(m->nverts - st.nverts_used), (long long)m->nverts);
}

static const double SP[3] = {0.9, 1.3, 2.1};
static const double AXIS[3] = {1, 2, 3};
static const double TR[3] = {-50.5, 20.25, 100.0};

/* sphere of radius r at the grid's centre in a rotated anisotropic grid */
static ml_volume *sphere_volume(double r, sphere_t *s, int64_t *count, ml_dtype dt, double value) {
    double A[16];
    make_affine(A, AXIS, 0.5, SP, TR);
    int64_t X = 60, Y = 45, Z = 30;
    world_of(A, (X - 1) / 2.0 + 0.23, (Y - 1) / 2.0 - 0.17, (Z - 1) / 2.0 + 0.31, s->c);
    s->r = r;
    return voxelize(dt, X, Y, Z, A, in_sphere, s, value, count);
}

/* ------------------------------------------------------------------- tests */
ML_TEST(sphere_world_mm) {
    sphere_t s;
    int64_t count;
    double r = 20;
    ml_volume *v = sphere_volume(r, &s, &count, ML_U8, 1);
    ML_CHECK(v);
    if (!v) return;
    double diag = sqrt(SP[0] * SP[0] + SP[1] * SP[1] + SP[2] * SP[2]);
    double V0 = 4.0 / 3.0 * M_PI * r * r * r, A0 = 4 * M_PI * r * r, vox = SP[0] * SP[1] * SP[2];
    for (int smooth = 0; smooth < 2; smooth++) {
        ml_mesh_opts o;
        ml_mesh_opts_init(&o);
        if (smooth) {
            o.smooth_sigma[0] = o.smooth_sigma[1] = o.smooth_sigma[2] = 1.0;
            o.taubin_iters = 10;
        }
        ml_mesh m;
        ML_CHECK_OK(ml_mesh_from_volume(&m, v, &o));
        ML_CHECK(m.nfaces > 1000);
        check_closed(&m, smooth ? "smoothed sphere" : "sphere");
        ml_mesh_stats st = stats_of(&m);
        ML_CHECK(st.euler == 2);
        double maxd = 0, minndot = 1;
        for (int64_t i = 0; i < m.nverts; i++) {
            const float *p = m.verts + 3 * i, *n = m.normals + 3 * i;
            double d[3] = {p[0] - s.c[0], p[1] - s.c[1], p[2] - s.c[2]};
            double l = sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
            if (fabs(l - r) > maxd) maxd = fabs(l - r);
            double nd = (d[0] * n[0] + d[1] * n[1] + d[2] * n[2]) / l;
            if (nd < minndot) minndot = nd;
        }
        printf("  %s: V %lld F %lld volume %.1f (exact %.1f, voxels %.1f) area %.1f (exact %.1f) max |d - r| %.3f mm, "
               "min normal.radial %.3f\n",
               smooth ? "smoothed" : "binary", (long long)m.nverts, (long long)m.nfaces, st.volume, V0, count * vox,
               st.area, A0, maxd, minndot);
        ML_CHECK(maxd <= diag);
        ML_CHECK(fabs(st.volume / V0 - 1) < 0.03);
        if (smooth) {
            ML_CHECK(fabs(st.area / A0 - 1) < 0.05);
            ML_CHECK(maxd <= 0.5 * diag);
            ML_CHECK(minndot > 0.8);
        } else {
            ML_CHECK(fabs(st.volume / (count * vox) - 1) < 0.02); /* iso 0.5 ~ the voxel count */
            ML_CHECK(minndot > 0);
        }
        ml_mesh_free(&m);
    }
    ml_volume_release(v);
}

ML_TEST(sphere_label_and_memory_order) {
    /* label volume (int32, value 7 plus a distractor label 3), stored i-fastest: same mesh as the mask */
    sphere_t s;
    ml_volume *v = sphere_volume(12, &s, NULL, ML_I32, 7);
    ML_CHECK(v);
    if (!v) return;
    tset(v->data, 1, 1, 1, 3);
    ml_mesh_opts o;
    ml_mesh_opts_init(&o);
    o.use_label = true;
    o.label = 7;
    ml_mesh a, b, c;
    ML_CHECK_OK(ml_mesh_from_volume(&a, v, &o));
    /* i-fastest copy */
    ml_tensor *t = v->data, *base = NULL, *p = NULL;
    int64_t sh[3] = {t->shape[2], t->shape[1], t->shape[0]};
    int perm[3] = {2, 1, 0};
    ML_CHECK_OK(ml_tensor_empty(&base, ML_F32, 3, sh));
    ML_CHECK_OK(ml_permute(&p, base, perm));
    ML_CHECK_OK(ml_copy_(p, t));
    ML_CHECK(p->stride[0] == 1);
    ml_volume *vf = NULL;
    ML_CHECK_OK(ml_volume_new(&vf, p, v->affine, NULL));
    ML_CHECK_OK(ml_mesh_from_volume(&b, vf, &o));
    ML_CHECK(a.nverts == b.nverts && a.nfaces == b.nfaces);
    if (a.nverts == b.nverts && a.nfaces == b.nfaces) {
        ML_CHECK(!memcmp(a.verts, b.verts, (size_t)a.nverts * 12));
        ML_CHECK(!memcmp(a.faces, b.faces, (size_t)a.nfaces * 12));
    }
    /* the same mesh from every dtype (the label compares as a double) */
    ml_dtype dts[] = {ML_F64, ML_I64, ML_U8, ML_BF16, ML_F16};
    for (int q = 0; q < 5; q++) {
        ml_tensor *ct = NULL;
        ml_volume *vc = NULL;
        ml_mesh mc;
        ML_CHECK_OK(ml_to_dtype(&ct, t, dts[q]));
        ML_CHECK_OK(ml_volume_new(&vc, ct, v->affine, NULL));
        ML_CHECK_OK(ml_mesh_from_volume(&mc, vc, &o));
        if (mc.nfaces != a.nfaces || memcmp(mc.faces, a.faces, (size_t)a.nfaces * 12))
            ML_FAIL_("dtype %s gives another mesh", ml_dtype_name(dts[q]));
        ml_mesh_free(&mc);
        ml_volume_release(vc);
        ml_tensor_release(ct);
    }
    /* nonzero mask: also the distractor voxel -> one more component */
    ml_mesh_opts_init(&o);
    ML_CHECK_OK(ml_mesh_from_volume(&c, v, &o));
    ml_mesh_stats st = stats_of(&c);
    ML_CHECK(st.euler == 4);
    check_closed(&c, "two labels");
    ml_mesh_free(&a);
    ml_mesh_free(&b);
    ml_mesh_free(&c);
    ml_volume_release(v);
    ml_volume_release(vf);
    ml_tensor_release(base);
    ml_tensor_release(p);
}

ML_TEST(torus_genus_one) {
    double A[16];
    double sp[3] = {0.8, 1.1, 0.7}, tr[3] = {3, -7, 12};
    make_affine(A, (double[3]){0.3, -1, 0.5}, 1.1, sp, tr);
    torus_t T;
    world_of(A, 40, 35, 45, T.c);
    T.R = 18;
    T.r = 6;
    ml_volume *v = voxelize(ML_U8, 80, 70, 90, A, in_torus, &T, 1, NULL);
    ML_CHECK(v);
    if (!v) return;
    for (int smooth = 0; smooth < 2; smooth++) {
        ml_mesh_opts o;
        ml_mesh_opts_init(&o);
        if (smooth) {
            o.smooth_sigma[0] = o.smooth_sigma[1] = o.smooth_sigma[2] = 0.8;
            o.taubin_iters = 5;
        }
        ml_mesh m;
        ML_CHECK_OK(ml_mesh_from_volume(&m, v, &o));
        check_closed(&m, "torus");
        ml_mesh_stats st = stats_of(&m);
        ML_CHECK(st.euler == 0);
        double V0 = 2 * M_PI * M_PI * T.R * T.r * T.r;
        printf("  torus%s: V %lld F %lld euler %lld volume %.0f (exact %.0f)\n", smooth ? " smoothed" : "",
               (long long)m.nverts, (long long)m.nfaces, (long long)st.euler, st.volume, V0);
        ML_CHECK(fabs(st.volume / V0 - 1) < 0.04);
        ml_mesh_free(&m);
    }
    ml_volume_release(v);
}

/* a hand-made U8 mask */
static ml_volume *mask_volume(int64_t X, int64_t Y, int64_t Z, const double *A) {
    ml_tensor *t = new_t(ML_U8, X, Y, Z);
    ml_volume *v = NULL;
    if (t) ml_volume_new(&v, t, A, NULL);
    ml_tensor_release(t);
    return v;
}

static void box(ml_volume *v, int i0, int i1, int j0, int j1, int k0, int k1, double val) {
    for (int i = i0; i <= i1; i++)
        for (int j = j0; j <= j1; j++)
            for (int k = k0; k <= k1; k++) tset(v->data, i, j, k, val);
}

static ml_mesh_stats mesh_check(ml_volume *v, const ml_mesh_opts *o, const char *what, int64_t want_euler) {
    ml_mesh m;
    ml_mesh_stats st;
    memset(&st, 0, sizeof st);
    ml_err e = ml_mesh_from_volume(&m, v, o);
    if (e) {
        ML_FAIL_("%s: %s", what, ml_errmsg());
        return st;
    }
    check_closed(&m, what);
    st = stats_of(&m);
    if (want_euler != INT64_MIN && st.euler != want_euler)
        ML_FAIL_("%s: Euler characteristic %lld, expected %lld", what, (long long)st.euler, (long long)want_euler);
    ml_mesh_free(&m);
    return st;
}

ML_TEST(touching_cubes_and_checkerboard) {
    double A[16];
    make_affine(A, AXIS, 0.3, SP, TR);
    ml_mesh_opts o;
    ml_mesh_opts_init(&o);
    /* two cubes sharing one edge, two sharing one corner: separate surfaces (6-connectivity) */
    ml_volume *v = mask_volume(16, 16, 16, A);
    box(v, 2, 5, 2, 5, 2, 5, 1);
    box(v, 6, 9, 6, 9, 2, 5, 1);
    mesh_check(v, &o, "cubes sharing an edge", 4);
    box(v, 10, 13, 10, 13, 6, 9, 1);
    mesh_check(v, &o, "and a third sharing a corner", 6);
    ml_volume_release(v);
    /* 3-D checkerboard: every voxel its own component */
    v = mask_volume(10, 10, 10, A);
    int n = 0;
    for (int i = 2; i < 8; i++)
        for (int j = 2; j < 8; j++)
            for (int k = 2; k < 8; k++)
                if ((i + j + k) % 2 == 0) {
                    tset(v->data, i, j, k, 1);
                    n++;
                }
    mesh_check(v, &o, "checkerboard", 2 * n);
    /* smoothed checkerboard: real-valued ambiguous faces */
    o.smooth_sigma[0] = o.smooth_sigma[1] = o.smooth_sigma[2] = 0.45;
    o.iso = 0.3;
    mesh_check(v, &o, "smoothed checkerboard", INT64_MIN);
    ml_volume_release(v);
    /* a cube touching the volume's border gets a cap there */
    ml_mesh_opts_init(&o);
    v = mask_volume(6, 7, 8, A);
    box(v, 0, 5, 0, 3, 5, 7, 1);
    ml_mesh_stats st = mesh_check(v, &o, "border cube", 2);
    /* a binary box meshed at iso 0.5: its faces lie half a voxel outside the voxel centres (n voxels
     * wide) and its 12 edges are chamfered by a right triangle of legs 1/2 voxel (area 1/8):
     * 72 - (6 + 4 + 3) * 4 / 8 = 65.5 voxels, a little more where the chamfers meet at the corners */
    double det = SP[0] * SP[1] * SP[2];
    ML_CHECK(st.volume > 65.5 * det && st.volume < 67 * det);
    ml_volume_release(v);
}

ML_TEST(random_masks_and_fields) {
    ml_manual_seed(1234);
    double A[16];
    make_affine(A, (double[3]){-1, 0.2, 0.4}, 2.0, SP, TR);
    for (int trial = 0; trial < 6; trial++) {
        int64_t sh[3] = {14 + trial, 13, 12 - trial};
        ml_tensor *r = NULL;
        ML_CHECK_OK(ml_rand(&r, ML_F32, 3, sh));
        if (!r) return;
        float *d = ml_tensor_data(r);
        double dens = 0.3 + 0.08 * trial;
        int64_t nvox = sh[0] * sh[1] * sh[2];
        for (int64_t i = 0; i < nvox; i++) d[i] = d[i] < dens ? 1.0f : 0.0f;
        ml_volume *v = NULL;
        ML_CHECK_OK(ml_volume_new(&v, r, A, NULL));
        ml_mesh_opts o;
        ml_mesh_opts_init(&o);
        char what[64];
        snprintf(what, sizeof what, "random mask %d", trial);
        mesh_check(v, &o, what, INT64_MIN);
        o.smooth_sigma[0] = 0.5;
        o.smooth_sigma[1] = 0.7;
        o.smooth_sigma[2] = 0.4;
        o.iso = 0.2 + 0.1 * trial;
        snprintf(what, sizeof what, "smoothed random mask %d", trial);
        mesh_check(v, &o, what, INT64_MIN);
        ml_volume_release(v);
        /* a random real field straight into ml_mesh_from_field (asymptotic decider on real values) */
        ml_tensor *f = NULL;
        ML_CHECK_OK(ml_rand(&f, ML_F32, 3, sh));
        if (f) {
            int64_t dims[3] = {sh[2], sh[1], sh[0]}; /* x fastest = the last tensor axis */
            ml_mesh m;
            ml_mesh_opts_init(&o);
            o.iso = 0.5;
            ML_CHECK_OK(ml_mesh_from_field(&m, ml_tensor_data(f), dims, A, &o));
            snprintf(what, sizeof what, "random field %d", trial);
            check_closed(&m, what);
            ml_mesh_free(&m);
            ml_tensor_release(f);
        }
        ml_tensor_release(r);
    }
}

ML_TEST(negative_determinant_step_and_threads) {
    /* LAS-like affine (det < 0): faces still outward */
    double A[16];
    make_affine(A, AXIS, 0.5, SP, TR);
    for (int r = 0; r < 3; r++) A[4 * r] = -A[4 * r]; /* flip the first voxel axis */
    sphere_t s;
    world_of(A, 29.5, 22, 14.5, s.c);
    s.r = 15;
    int64_t count;
    ml_volume *v = voxelize(ML_U8, 60, 45, 30, A, in_sphere, &s, 1, &count);
    ML_CHECK(v);
    if (!v) return;
    ml_mesh_opts o;
    ml_mesh_opts_init(&o);
    ml_mesh_stats st = mesh_check(v, &o, "det < 0", 2);
    double V0 = 4.0 / 3.0 * M_PI * 15 * 15 * 15;
    ML_CHECK(fabs(st.volume / V0 - 1) < 0.03);
    /* decimation by step 2 and 3: fewer triangles, still closed, volume close */
    for (int k = 2; k <= 3; k++) {
        o.step = k;
        ml_mesh m;
        ML_CHECK_OK(ml_mesh_from_volume(&m, v, &o));
        check_closed(&m, "step");
        ml_mesh_stats sk = stats_of(&m);
        printf("  step %d: F %lld volume %.0f (exact %.0f)\n", k, (long long)m.nfaces, sk.volume, V0);
        ML_CHECK(fabs(sk.volume / V0 - 1) < 0.08);
        ML_CHECK(sk.euler == 2);
        ml_mesh_free(&m);
    }
    /* the same bytes for 1 and 2 threads */
    o.step = 1;
    o.smooth_sigma[0] = o.smooth_sigma[1] = o.smooth_sigma[2] = 1;
    o.taubin_iters = 3;
    int nt0 = ml_num_threads();
    ml_mesh a, b;
    ml_set_num_threads(1);
    ML_CHECK_OK(ml_mesh_from_volume(&a, v, &o));
    ml_set_num_threads(2);
    ML_CHECK_OK(ml_mesh_from_volume(&b, v, &o));
    ml_set_num_threads(nt0);
    ML_CHECK(a.nverts == b.nverts && a.nfaces == b.nfaces);
    if (a.nverts == b.nverts && a.nfaces == b.nfaces) {
        ML_CHECK(!memcmp(a.verts, b.verts, (size_t)a.nverts * 12));
        ML_CHECK(!memcmp(a.normals, b.normals, (size_t)a.nverts * 12));
        ML_CHECK(!memcmp(a.faces, b.faces, (size_t)a.nfaces * 12));
    }
    ml_mesh_free(&a);
    ml_mesh_free(&b);
    ml_volume_release(v);
}

ML_TEST(decimate_for_display) {
    sphere_t s;
    ml_volume *v = sphere_volume(20, &s, NULL, ML_U8, 1);
    ml_mesh_opts o;
    ml_mesh_opts_init(&o);
    ml_mesh m, d;
    ML_CHECK_OK(ml_mesh_from_volume(&m, v, &o));
    ML_CHECK_OK(ml_mesh_decimate_cluster(&d, m.verts, m.nverts, m.faces, m.nfaces, m.nfaces / 4));
    ML_CHECK(d.nfaces <= m.nfaces / 4 && d.nfaces > m.nfaces / 40);
    ml_mesh_stats a = stats_of(&m), b = stats_of(&d);
    ML_CHECK(fabs(b.volume / a.volume - 1) < 0.05);
    ml_mesh_free(&d);
    /* small enough: a copy */
    ML_CHECK_OK(ml_mesh_decimate_cluster(&d, m.verts, m.nverts, m.faces, m.nfaces, m.nfaces));
    ML_CHECK(d.nfaces == m.nfaces && !memcmp(d.faces, m.faces, (size_t)m.nfaces * 12));
    ml_mesh_free(&d);
    ml_mesh_free(&m);
    ml_volume_release(v);
}

ML_TEST(empty_and_errors) {
    double A[16];
    ml_affine_identity(A);
    ml_volume *v = mask_volume(5, 6, 7, A);
    ml_mesh m;
    ml_mesh_opts o;
    ml_mesh_opts_init(&o);
    ML_CHECK_OK(ml_mesh_from_volume(&m, v, &o));
    ML_CHECK(m.nverts == 0 && m.nfaces == 0);
    ml_mesh_free(&m);
    /* a label that is not there */
    box(v, 1, 2, 1, 2, 1, 2, 4);
    o.use_label = true;
    o.label = 9;
    ml_t_expect_err(ml_mesh_from_volume(&m, v, &o), ML_ERR_ARG, "label 9", "not present", "missing label");
    ML_CHECK(m.nverts == 0 && m.faces == NULL);
    o.allow_missing = true;
    ML_CHECK_OK(ml_mesh_from_volume(&m, v, &o));
    ML_CHECK(m.nfaces == 0);
    o.label = 4;
    ML_CHECK_OK(ml_mesh_from_volume(&m, v, &o));
    ML_CHECK(m.nfaces > 0);
    ml_mesh_free(&m);
    /* a structure the Gaussian would melt below iso everywhere falls back to the plain mask */
    o.smooth_sigma[0] = o.smooth_sigma[1] = o.smooth_sigma[2] = 3;
    ML_CHECK_OK(ml_mesh_from_volume(&m, v, &o));
    ML_CHECK(m.nfaces > 0);
    ml_mesh_free(&m);
    /* options */
    ml_mesh_opts_init(&o);
    o.step = 0;
    ml_t_expect_err(ml_mesh_from_volume(&m, v, &o), ML_ERR_ARG, "step", NULL, "step 0");
    ml_mesh_opts_init(&o);
    o.iso = 1.5;
    ml_t_expect_err(ml_mesh_from_volume(&m, v, &o), ML_ERR_ARG, "iso", NULL, "iso 1.5");
    ml_mesh_opts_init(&o);
    o.smooth_sigma[1] = -1;
    ml_t_expect_err(ml_mesh_from_volume(&m, v, &o), ML_ERR_ARG, "smooth_sigma", NULL, "negative sigma");
    ml_mesh_opts_init(&o);
    o.taubin_iters = -2;
    ml_t_expect_err(ml_mesh_from_volume(&m, v, &o), ML_ERR_ARG, "taubin_iters", NULL, "negative iters");
    ml_volume_release(v);
    /* singular affine */
    double S[16];
    ml_affine_identity(S);
    S[10] = 0;
    v = mask_volume(4, 4, 4, S);
    ml_mesh_opts_init(&o);
    ml_t_expect_err(ml_mesh_from_volume(&m, v, &o), ML_ERR_ARG, "singular", NULL, "singular affine");
    ml_volume_release(v);
    /* 4-D volume */
    ml_tensor *t = NULL;
    int64_t sh4[4] = {4, 4, 4, 2};
    ML_CHECK_OK(ml_zeros(&t, ML_F32, 4, sh4));
    v = NULL;
    ML_CHECK_OK(ml_volume_new(&v, t, A, NULL));
    ml_t_expect_err(ml_mesh_from_volume(&m, v, &o), ML_ERR_SHAPE, "3-D", "[4, 4, 4, 2]", "4-D volume");
    ml_volume_release(v);
    ml_tensor_release(t);
    /* stats: a face index out of range; an open mesh is not watertight */
    float vv[9] = {0, 0, 0, 1, 0, 0, 0, 1, 0};
    int32_t ff[3] = {0, 1, 3};
    ml_mesh_stats st;
    ml_t_expect_err(ml_mesh_stats_compute(vv, 3, ff, 1, &st), ML_ERR_ARG, "vertex 3", NULL, "bad face index");
    ff[2] = 2;
    ML_CHECK_OK(ml_mesh_stats_compute(vv, 3, ff, 1, &st));
    ML_CHECK(!st.watertight && st.boundary_edges == 3 && st.euler == 1);
    ML_CHECK_NEAR(st.area, 0.5, 1e-12);
    /* a tetrahedron: watertight; one face flipped: misoriented */
    float tv[12] = {0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1};
    int32_t tf[12] = {0, 2, 1, 0, 1, 3, 0, 3, 2, 1, 2, 3};
    ML_CHECK_OK(ml_mesh_stats_compute(tv, 4, tf, 4, &st));
    ML_CHECK(st.watertight && st.euler == 2);
    ML_CHECK_NEAR(st.volume, 1.0 / 6.0, 1e-9);
    tf[10] = 3;
    tf[11] = 2;
    ML_CHECK_OK(ml_mesh_stats_compute(tv, 4, tf, 4, &st));
    ML_CHECK(!st.watertight && st.misoriented_edges == 3);
}

int main(void) {
    ML_RUN(sphere_world_mm);
    ML_RUN(sphere_label_and_memory_order);
    ML_RUN(torus_genus_one);
    ML_RUN(touching_cubes_and_checkerboard);
    ML_RUN(random_masks_and_fields);
    ML_RUN(negative_determinant_step_and_threads);
    ML_RUN(decimate_for_display);
    ML_RUN(empty_and_errors);
    return ml_test_summary();
}
