/* Volume core: lifetime, geometry derived from the affine, 4x4 helpers, warnings. */
#include "volume/ml_volume.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ml_volume_meta_init(ml_volume_meta *m) {
    memset(m, 0, sizeof *m);
    m->rescale_slope = 1.0;
}

ml_err ml_volume_new(ml_volume **out, ml_tensor *data, const double affine[16], const ml_volume_meta *meta) {
    *out = NULL;
    if (!data) return ml_seterr(ML_ERR_ARG, "volume: no data tensor");
    if (data->ndim != 3 && data->ndim != 4)
        return ml_seterr(ML_ERR_SHAPE, "volume: data must be 3-D [X, Y, Z] or 4-D [X, Y, Z, T], got %s",
                         ml_shape_str(data->ndim, data->shape));
    if (affine) {
        for (int i = 0; i < 16; i++)
            if (!isfinite(affine[i])) return ml_seterr(ML_ERR_ARG, "volume: affine has a non-finite entry");
        if (affine[12] != 0 || affine[13] != 0 || affine[14] != 0 || affine[15] != 1)
            return ml_seterr(ML_ERR_ARG, "volume: affine's last row must be [0, 0, 0, 1]");
    }
    ml_volume *v = calloc(1, sizeof *v);
    if (!v) return ml_seterr(ML_ERR_OOM, "volume: out of memory");
    v->refcount = 1;
    ml_tensor_retain(data);
    v->data = data;
    if (affine) memcpy(v->affine, affine, sizeof v->affine);
    else ml_affine_identity(v->affine);
    if (meta) v->meta = *meta;
    else ml_volume_meta_init(&v->meta);
    *out = v;
    return ML_OK;
}

ml_err ml_volume_with_data(ml_volume **out, const ml_volume *v, ml_tensor *data, const double affine[16]) {
    return ml_volume_new(out, data, affine ? affine : v->affine, &v->meta);
}

void ml_volume_retain(ml_volume *v) { __atomic_add_fetch(&v->refcount, 1, __ATOMIC_RELAXED); }

void ml_volume_release(ml_volume *v) {
    if (!v) return;
    if (__atomic_sub_fetch(&v->refcount, 1, __ATOMIC_ACQ_REL) == 0) {
        ml_tensor_release(v->data);
        free(v);
    }
}

/* ---------------------------------------------------------------- geometry */
void ml_volume_spacing(const ml_volume *v, double sp[3]) {
    const double *a = v->affine;
    for (int c = 0; c < 3; c++) sp[c] = sqrt(a[c] * a[c] + a[4 + c] * a[4 + c] + a[8 + c] * a[8 + c]);
}

void ml_volume_origin(const ml_volume *v, double o[3]) {
    o[0] = v->affine[3];
    o[1] = v->affine[7];
    o[2] = v->affine[11];
}

void ml_volume_direction(const ml_volume *v, double d[9]) {
    double sp[3];
    ml_volume_spacing(v, sp);
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 3; c++) d[r * 3 + c] = sp[c] > 0 ? v->affine[r * 4 + c] / sp[c] : (r == c);
}

void ml_affine_identity(double a[16]) {
    memset(a, 0, 16 * sizeof(double));
    a[0] = a[5] = a[10] = a[15] = 1;
}

void ml_affine_mul(double out[16], const double a[16], const double b[16]) {
    double t[16];
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++) {
            double s = 0;
            for (int k = 0; k < 4; k++) s += a[r * 4 + k] * b[k * 4 + c];
            t[r * 4 + c] = s;
        }
    memcpy(out, t, sizeof t);
}

int ml_affine_inverse(double out[16], const double a[16]) {
    /* Gauss-Jordan with partial pivoting on [a | I] */
    double m[4][8];
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 8; c++) m[r][c] = c < 4 ? a[r * 4 + c] : (c - 4 == r);
    for (int c = 0; c < 4; c++) {
        int p = c;
        for (int r = c + 1; r < 4; r++)
            if (fabs(m[r][c]) > fabs(m[p][c])) p = r;
        if (fabs(m[p][c]) < 1e-300) return -1;
        if (p != c)
            for (int k = 0; k < 8; k++) {
                double t = m[c][k];
                m[c][k] = m[p][k];
                m[p][k] = t;
            }
        double inv = 1.0 / m[c][c];
        for (int k = 0; k < 8; k++) m[c][k] *= inv;
        for (int r = 0; r < 4; r++) {
            if (r == c || m[r][c] == 0) continue;
            double f = m[r][c];
            for (int k = 0; k < 8; k++) m[r][k] -= f * m[c][k];
        }
    }
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++) out[r * 4 + c] = m[r][c + 4];
    return 0;
}

void ml_affine_apply(const double a[16], const double p[3], double out[3]) {
    double t[3];
    for (int r = 0; r < 3; r++) t[r] = a[r * 4] * p[0] + a[r * 4 + 1] * p[1] + a[r * 4 + 2] * p[2] + a[r * 4 + 3];
    memcpy(out, t, sizeof t);
}

void ml_affine_from_geometry(double a[16], const double sp[3], const double o[3], const double d[9]) {
    ml_affine_identity(a);
    for (int r = 0; r < 3; r++) {
        for (int c = 0; c < 3; c++) a[r * 4 + c] = d[r * 3 + c] * sp[c];
        a[r * 4 + 3] = o[r];
    }
}

/* Closest orthogonal matrix to m (3x3, row-major) by the Newton polar iteration X <- (X + X^-T)/2,
 * which converges to the orthogonal factor U V^T of the SVD - what nibabel's io_orientation uses. */
static void polar_orthogonal(double x[9]) {
    for (int it = 0; it < 100; it++) {
        double det = x[0] * (x[4] * x[8] - x[5] * x[7]) - x[1] * (x[3] * x[8] - x[5] * x[6]) +
                     x[2] * (x[3] * x[7] - x[4] * x[6]);
        if (fabs(det) < 1e-300) return;
        /* inverse transpose = cofactor matrix / det */
        double cof[9] = {
            (x[4] * x[8] - x[5] * x[7]), -(x[3] * x[8] - x[5] * x[6]), (x[3] * x[7] - x[4] * x[6]),
            -(x[1] * x[8] - x[2] * x[7]), (x[0] * x[8] - x[2] * x[6]), -(x[0] * x[7] - x[1] * x[6]),
            (x[1] * x[5] - x[2] * x[4]), -(x[0] * x[5] - x[2] * x[3]), (x[0] * x[4] - x[1] * x[3]),
        };
        double diff = 0;
        for (int i = 0; i < 9; i++) {
            double n = 0.5 * (x[i] + cof[i] / det);
            diff += fabs(n - x[i]);
            x[i] = n;
        }
        if (diff < 1e-14) return;
    }
}

void ml_affine_axcodes(const double a[16], char out[4]) {
    static const char pos[3] = {'R', 'A', 'S'}, neg[3] = {'L', 'P', 'I'};
    double r[9];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) r[i * 3 + j] = a[i * 4 + j];
    for (int c = 0; c < 3; c++) { /* divide columns by their norms (voxel sizes) */
        double n = sqrt(r[c] * r[c] + r[3 + c] * r[3 + c] + r[6 + c] * r[6 + c]);
        if (n > 0)
            for (int i = 0; i < 3; i++) r[i * 3 + c] /= n;
    }
    polar_orthogonal(r);
    for (int c = 0; c < 3; c++) {
        int best = -1;
        double bv = 1e-12;
        for (int i = 0; i < 3; i++)
            if (fabs(r[i * 3 + c]) > bv) {
                bv = fabs(r[i * 3 + c]);
                best = i;
            }
        if (best < 0) {
            out[c] = '?';
            continue;
        }
        out[c] = r[best * 3 + c] > 0 ? pos[best] : neg[best];
        for (int j = 0; j < 3; j++) r[best * 3 + j] = 0;
    }
    out[3] = '\0';
}

/* ---------------------------------------------------------------- warnings */
static void default_warn(const char *msg, void *ud) {
    (void)ud;
    fprintf(stderr, "medlua: warning: %s\n", msg);
}
static ml_warn_fn g_warn = default_warn;
static void *g_warn_ud;

void ml_set_warn_handler(ml_warn_fn fn, void *ud) {
    g_warn = fn ? fn : default_warn;
    g_warn_ud = fn ? ud : NULL;
}

void ml_warn(const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    g_warn(buf, g_warn_ud);
}
