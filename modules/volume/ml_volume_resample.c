/* Volume resampling: nearest / trilinear / cubic B-spline onto any grid (ml_volume_ops.h).
 *
 * Every output voxel o is mapped to a continuous input index c = M o (M = inv(A_in) * [inverse
 * world transform] * A_out). When M's 3x3 part is diagonal (spacing changes, crops, shifts) the
 * mapping is separable: per-axis tables of input offsets and weights are built once and the voxel
 * loop only gathers. Otherwise each voxel computes its own taps. Loops run over the output in its
 * memory order (the input's), one OpenMP task per output row.
 *
 * Border rules follow ITK (SimpleITK's Resample): a sample is inside when -0.5 <= c < n - 0.5 on
 * every axis; linear then clamps its neighbours to the edge, the B-spline mirrors its coefficient
 * indices (Unser), nearest rounds half up. Outside samples get the padding value; with
 * ML_PAD_BORDER c is clamped to [0, n-1] instead.
 *
 * The typed kernels (float and double) are written once below RS_TEMPLATE and instantiated by
 * including this file into itself. */
#ifndef RS_TEMPLATE

#include "volume/ml_volume_ops.h"
#include "tensor/ml_iter.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define RS_MAXTAPS 4

typedef struct {
    int64_t off[RS_MAXTAPS]; /* element offsets along this axis (index * stride) */
    int64_t idx[RS_MAXTAPS]; /* the indices */
    double w[RS_MAXTAPS];
} rs_taps;

/* what the kernels need */
typedef struct {
    int mode, padmode, taps;
    int64_t n[3], is[3]; /* input (or coefficient) sizes and element strides */
    int64_t o[3], os[3]; /* output sizes and strides */
    int ord[3];          /* output memory order of the spatial axes (slowest .. fastest) */
    double M[12];        /* output index -> input continuous index (rows 0..2 of a 4x4) */
    /* axis-aligned tables (NULL in the general path) */
    rs_taps *tab[3];
    uint8_t *valid[3];
    int64_t ilo[3], ihi[3]; /* range of input indices the valid taps of each axis use */
} rs_plan;

static const double k_snap = 1e-7; /* continuous indices this close to an integer are that integer */

static inline double snap(double c) {
    double r = nearbyint(c);
    return fabs(c - r) < k_snap ? r : c;
}

static inline int64_t mirror_index(int64_t i, int64_t n) {
    if (n == 1) return 0;
    int64_t p = 2 * n - 2;
    i %= p;
    if (i < 0) i += p;
    return i < n ? i : p - i;
}

/* taps of one axis at continuous index c (already snapped and inside or clamped); returns false if
 * the sample is outside (constant padding) */
static inline bool axis_taps(int mode, int padmode, double c, int64_t n, int64_t stride, rs_taps *t) {
    if (padmode == ML_PAD_BORDER) {
        if (!(c >= 0)) c = 0; /* NaN too */
        if (c > (double)(n - 1)) c = (double)(n - 1);
    } else if (!(c >= -0.5 && c < (double)n - 0.5))
        return false;
    if (mode == ML_INTERP_NEAREST) {
        int64_t i = (int64_t)floor(c + 0.5);
        if (i < 0) i = 0;
        if (i > n - 1) i = n - 1;
        t->idx[0] = i;
        t->off[0] = i * stride;
        t->w[0] = 1;
    } else if (mode == ML_INTERP_LINEAR) {
        int64_t i = (int64_t)floor(c);
        if (i < 0) i = 0;
        if (i > n - 1) i = n - 1;
        double d = c - (double)i;
        if (d <= 0 || i + 1 > n - 1) {
            t->idx[0] = t->idx[1] = i;
            t->off[0] = t->off[1] = i * stride;
            t->w[0] = 1;
            t->w[1] = 0;
        } else {
            t->idx[0] = i;
            t->idx[1] = i + 1;
            t->off[0] = i * stride;
            t->off[1] = (i + 1) * stride;
            t->w[0] = 1 - d;
            t->w[1] = d;
        }
    } else {
        double f = floor(c), d = c - f;
        int64_t i = (int64_t)f - 1;
        double d2 = d * d, d3 = d2 * d, e = 1 - d;
        t->w[0] = e * e * e / 6;
        t->w[1] = (3 * d3 - 6 * d2 + 4) / 6;
        t->w[2] = (-3 * d3 + 3 * d2 + 3 * d + 1) / 6;
        t->w[3] = d3 / 6;
        for (int k = 0; k < 4; k++) {
            t->idx[k] = mirror_index(i + k, n);
            t->off[k] = t->idx[k] * stride;
        }
    }
    return true;
}

/* ---- B-spline prefilter (cubic, mirror boundary, exact initialisation as scipy's spline_filter) */
/* x holds L interleaved lines of length N: element (k, l) at x[k * L + l]. */
static void bspline_filter_lines(double *x, int64_t N, int64_t L) {
    if (N < 2) return;
    const double z = sqrt(3.0) - 2.0, lambda = 6.0;
    for (int64_t i = 0; i < N * L; i++) x[i] *= lambda;
    /* causal initialisation (mirror boundary, exact as scipy's _init_causal_mirror; terms below
     * z^i < 1e-18 of the first are dropped: they cannot change a double) */
    double zn1 = pow(z, (double)(N - 1)), denom = 1 - zn1 * zn1;
    const double *last = x + (N - 1) * L;
    {
        double zi = z;
        /* row 0 accumulates in place: x[0] += zn1 x[N-1] + sum_i z^i (x[i] + zn1 x[N-1-i]) */
        double *c0 = x;
        for (int64_t l = 0; l < L; l++) c0[l] += zn1 * last[l];
        for (int64_t i = 1; i < N - 1 && fabs(zi) > 1e-18; i++) {
            const double *xi = x + i * L, *xm = x + (N - 1 - i) * L;
            double a = zi, b = zi * zn1;
            for (int64_t l = 0; l < L; l++) c0[l] += a * xi[l] + b * xm[l];
            zi *= z;
        }
        for (int64_t l = 0; l < L; l++) c0[l] /= denom;
    }
    for (int64_t k = 1; k < N; k++) {
        double *r = x + k * L, *p = r - L;
        for (int64_t l = 0; l < L; l++) r[l] += z * p[l];
    }
    {
        double *r = x + (N - 1) * L, *p = r - L;
        for (int64_t l = 0; l < L; l++) r[l] = (z * p[l] + r[l]) * z / (z * z - 1);
    }
    for (int64_t k = N - 2; k >= 0; k--) {
        double *r = x + k * L, *nx = r + L;
        for (int64_t l = 0; l < L; l++) r[l] = z * (nx[l] - r[l]);
    }
}

#define RS_TEMPLATE
#define RS_T float
#define RS_SUF f32
#include "ml_volume_resample.c"
#undef RS_T
#undef RS_SUF
#define RS_T double
#define RS_SUF f64
#include "ml_volume_resample.c"
#undef RS_T
#undef RS_SUF
#undef RS_TEMPLATE

/* ---- nearest neighbour for any dtype (copies es-byte elements) */
static inline void copy_elem(char *d, const char *s, size_t es) {
    switch (es) {
    case 1: *(uint8_t *)d = *(const uint8_t *)s; break;
    case 2: memcpy(d, s, 2); break;
    case 4: memcpy(d, s, 4); break;
    default: memcpy(d, s, 8); break;
    }
}

static void nearest_frame(const rs_plan *p, const char *in, char *out, size_t es, const char *padv) {
    int a0 = p->ord[0], a1 = p->ord[1], a2 = p->ord[2];
    int64_t rows = p->o[a0] * p->o[a1], m2 = p->o[a2], os2 = p->os[a2] * (int64_t)es;
    int nt = ml_vol_threads(rows * m2);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t r = 0; r < rows; r++) {
        int64_t u = r / p->o[a1], v = r % p->o[a1];
        char *op = out + (u * p->os[a0] + v * p->os[a1]) * (int64_t)es;
        if (p->tab[0]) {
            if (!p->valid[a0][u] || !p->valid[a1][v]) {
                for (int64_t w = 0; w < m2; w++) copy_elem(op + w * os2, padv, es);
                continue;
            }
            const char *ib = in + (p->tab[a0][u].off[0] + p->tab[a1][v].off[0]) * (int64_t)es;
            const rs_taps *t2 = p->tab[a2];
            const uint8_t *v2 = p->valid[a2];
            for (int64_t w = 0; w < m2; w++) {
                if (v2[w]) copy_elem(op + w * os2, ib + t2[w].off[0] * (int64_t)es, es);
                else copy_elem(op + w * os2, padv, es);
            }
        } else {
            double ob[3] = {0, 0, 0}, c0[3], dc[3];
            ob[a0] = (double)u;
            ob[a1] = (double)v;
            for (int k = 0; k < 3; k++) {
                c0[k] = p->M[k * 4] * ob[0] + p->M[k * 4 + 1] * ob[1] + p->M[k * 4 + 2] * ob[2] + p->M[k * 4 + 3];
                dc[k] = p->M[k * 4 + a2];
            }
            for (int64_t w = 0; w < m2; w++) {
                int64_t off = 0;
                bool inside = true;
                for (int k = 0; k < 3 && inside; k++) {
                    rs_taps t = {0};
                    inside = axis_taps(ML_INTERP_NEAREST, p->padmode, c0[k] + (double)w * dc[k], p->n[k], p->is[k],
                                       &t);
                    off += t.off[0];
                }
                if (inside) copy_elem(op + w * os2, in + off * (int64_t)es, es);
                else copy_elem(op + w * os2, padv, es);
            }
        }
    }
}

/* ---- plan / driver */
void ml_resample_opts_init(ml_resample_opts *o) {
    o->mode = ML_INTERP_DEFAULT;
    o->padding_value = 0;
    o->padding_mode = ML_PAD_CONSTANT;
}

static bool is_axis_aligned(const double M[12]) {
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 3; c++)
            if (r != c && fabs(M[r * 4 + c]) > 1e-9) return false;
    for (int r = 0; r < 3; r++)
        if (M[r * 4 + r] == 0) return false;
    return true;
}

static void free_tables(rs_plan *p) {
    for (int a = 0; a < 3; a++) {
        free(p->tab[a]);
        free(p->valid[a]);
        p->tab[a] = NULL;
        p->valid[a] = NULL;
    }
}

static ml_err build_tables(rs_plan *p, const char *op) {
    for (int a = 0; a < 3; a++) {
        p->tab[a] = malloc((size_t)(p->o[a] ? p->o[a] : 1) * sizeof(rs_taps));
        p->valid[a] = malloc((size_t)(p->o[a] ? p->o[a] : 1));
        if (!p->tab[a] || !p->valid[a]) {
            free_tables(p);
            return ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
        }
        for (int64_t i = 0; i < p->o[a]; i++) {
            double c = snap(p->M[a * 4 + a] * (double)i + p->M[a * 4 + 3]);
            memset(&p->tab[a][i], 0, sizeof(rs_taps));
            p->valid[a][i] = axis_taps(p->mode, p->padmode, c, p->n[a], p->is[a], &p->tab[a][i]);
        }
        p->ilo[a] = INT64_MAX;
        p->ihi[a] = -1;
        for (int64_t i = 0; i < p->o[a]; i++)
            if (p->valid[a][i])
                for (int k = 0; k < p->taps; k++) {
                    if (p->tab[a][i].idx[k] < p->ilo[a]) p->ilo[a] = p->tab[a][i].idx[k];
                    if (p->tab[a][i].idx[k] > p->ihi[a]) p->ihi[a] = p->tab[a][i].idx[k];
                }
    }
    return ML_OK;
}

/* resample v->data onto (oshape, A_out) with c = M o (M: output index -> input continuous index) */
static ml_err resample_core(ml_volume **out, ml_volume *v, const int64_t oshape[3], const double A_out[16],
                            const double Mfull[16], const ml_resample_opts *opts, const char *op) {
    *out = NULL;
    ml_tensor *t = v->data;
    ml_err e = ml_vol_check_data(op, t);
    if (e) return e;
    ml_resample_opts o;
    if (opts) o = *opts;
    else ml_resample_opts_init(&o);
    if (o.mode == ML_INTERP_DEFAULT)
        o.mode = (v->meta.is_label || !ml_dtype_is_float((ml_dtype)t->dtype)) ? ML_INTERP_NEAREST : ML_INTERP_LINEAR;
    if (o.mode < ML_INTERP_NEAREST || o.mode > ML_INTERP_BSPLINE)
        return ml_seterr(ML_ERR_ARG, "%s: unknown interpolation mode %d", op, o.mode);
    if (o.padding_mode != ML_PAD_CONSTANT && o.padding_mode != ML_PAD_BORDER)
        return ml_seterr(ML_ERR_ARG, "%s: unknown padding mode %d", op, o.padding_mode);
    for (int a = 0; a < 3; a++) {
        if (oshape[a] < 1 || oshape[a] > (int64_t)1 << 20)
            return ml_seterr(ML_ERR_ARG, "%s: output shape [%lld, %lld, %lld] is empty or absurd", op,
                             (long long)oshape[0], (long long)oshape[1], (long long)oshape[2]);
        if (t->shape[a] < 1) return ml_seterr(ML_ERR_SHAPE, "%s: the volume is empty (shape %s)", op,
                                              ml_shape_str(t->ndim, t->shape));
    }
    for (int i = 0; i < 12; i++)
        if (!isfinite(Mfull[i])) return ml_seterr(ML_ERR_ARG, "%s: the grid mapping is not finite (singular affine?)", op);
    int64_t total = oshape[0] * oshape[1] * oshape[2];
    if (t->ndim == 4) total *= t->shape[3];
    if (total > (int64_t)1 << 34)
        return ml_seterr(ML_ERR_ARG, "%s: output of %lld voxels is absurd", op, (long long)total);

    int ndim = t->ndim;
    int64_t frames = ndim == 4 ? t->shape[3] : 1;
    ml_dtype odt = (ml_dtype)t->dtype;
    bool dbl = odt == ML_F64;
    if (o.mode != ML_INTERP_NEAREST && !dbl) odt = ML_F32;
    else if (o.mode != ML_INTERP_NEAREST) odt = ML_F64;

    int64_t oshape4[4] = {oshape[0], oshape[1], oshape[2], frames};
    ml_tensor *res = NULL, *src = NULL, *coef = NULL;
    if ((e = ml_vol_empty_like_order(&res, t, odt, oshape4, NULL))) return e;

    rs_plan p;
    memset(&p, 0, sizeof p);
    p.mode = o.mode;
    p.padmode = o.padding_mode;
    p.taps = o.mode == ML_INTERP_NEAREST ? 1 : o.mode == ML_INTERP_LINEAR ? 2 : 4;
    memcpy(p.M, Mfull, sizeof p.M);
    /* a mapping made of integers (axis permutations, flips, whole-voxel shifts) computed through
     * affine inverses carries rounding noise: snap it so that such resamplings copy voxels exactly.
     * (The general path samples at M o without further snapping; the table path snaps per index.) */
    {
        bool integral = true;
        for (int i = 0; i < 12; i++) integral = integral && fabs(p.M[i] - nearbyint(p.M[i])) < 1e-9;
        if (integral)
            for (int i = 0; i < 12; i++) p.M[i] = nearbyint(p.M[i]);
    }
    int ord4[ML_MAX_DIMS];
    ml_vol_mem_order(res, ord4);
    for (int k = 0, j = 0; k < ndim; k++)
        if (ord4[k] < 3) p.ord[j++] = ord4[k];
    for (int a = 0; a < 3; a++) {
        p.n[a] = t->shape[a];
        p.o[a] = oshape[a];
        p.os[a] = res->stride[a];
    }

    /* source of the samples: the data itself (nearest), the data as f32/f64 (linear), or a
     * coefficient buffer refilled per frame (bspline) */
    if (o.mode == ML_INTERP_NEAREST) {
        src = t;
        ml_tensor_retain(src);
    } else if (o.mode == ML_INTERP_LINEAR) {
        if ((e = ml_vol_convert(&src, t, odt))) goto done;
    } else {
        /* one 3-D frame's worth of coefficients, in the input's memory order */
        ml_tensor *f0 = ml_tensor_header(t->storage, (ml_dtype)t->dtype, 3, t->shape, t->stride, t->offset);
        if (!f0) {
            e = ML_ERR_OOM;
            goto done;
        }
        e = ml_vol_empty_like_order(&coef, f0, odt, t->shape, NULL);
        ml_tensor_release(f0);
        if (e) goto done;
    }
    ml_tensor *s0 = coef ? coef : src;
    for (int a = 0; a < 3; a++) p.is[a] = s0->stride[a];

    if (is_axis_aligned(p.M) && (e = build_tables(&p, op))) goto done;

    size_t es = ml_dtype_size(odt);
    char padv[8] = {0};
    ml_store_elem(padv, odt, 0, o.padding_value);
    for (int64_t f = 0; f < frames; f++) {
        char *obase = (char *)ml_tensor_data(res) + (ndim == 4 ? f * res->stride[3] : 0) * (int64_t)es;
        if (o.mode == ML_INTERP_NEAREST) {
            const char *ib = (const char *)ml_tensor_data(src) + (ndim == 4 ? f * src->stride[3] : 0) * (int64_t)es;
            nearest_frame(&p, ib, obase, es, padv);
            continue;
        }
        const char *ib;
        if (coef) {
            /* frame -> coefficient buffer (dtype conversion included), then prefilter */
            ml_tensor *fr = ml_tensor_header(t->storage, (ml_dtype)t->dtype, 3, t->shape, t->stride,
                                             t->offset + (ndim == 4 ? f * t->stride[3] : 0));
            if (!fr) {
                e = ML_ERR_OOM;
                goto done;
            }
            ml_vol_convert_copy(coef, fr);
            ml_tensor_release(fr);
            if (dbl) e = bspline_prefilter_f64(coef, op);
            else e = bspline_prefilter_f32(coef, op);
            if (e) goto done;
            ib = (const char *)ml_tensor_data(coef);
        } else {
            ib = (const char *)ml_tensor_data(src) + (ndim == 4 ? f * src->stride[3] : 0) * (int64_t)es;
        }
        if (dbl) interp_frame_f64(&p, (const double *)ib, (double *)obase, o.padding_value);
        else interp_frame_f32(&p, (const float *)ib, (float *)obase, o.padding_value);
    }
    e = ml_volume_with_data(out, v, res, A_out);
done:
    free_tables(&p);
    ml_tensor_release(res);
    ml_tensor_release(src);
    ml_tensor_release(coef);
    return e;
}

/* ---- public API */
static ml_err check_affine(const char *op, const char *what, const double A[16]) {
    for (int i = 0; i < 16; i++)
        if (!isfinite(A[i])) return ml_seterr(ML_ERR_ARG, "%s: %s has a non-finite entry", op, what);
    if (A[12] != 0 || A[13] != 0 || A[14] != 0 || A[15] != 1)
        return ml_seterr(ML_ERR_ARG, "%s: %s's last row must be [0, 0, 0, 1]", op, what);
    double inv[16];
    if (ml_affine_inverse(inv, A)) return ml_seterr(ML_ERR_ARG, "%s: %s is singular", op, what);
    return ML_OK;
}

/* M = inv(A_in) * W * A_out */
static ml_err grid_map(const char *op, const ml_volume *v, const double *W, const double A_out[16], double M[16]) {
    double inv[16];
    if (ml_affine_inverse(inv, v->affine)) return ml_seterr(ML_ERR_ARG, "%s: the volume's affine is singular", op);
    if (W) {
        ml_affine_mul(M, W, A_out);
        ml_affine_mul(M, inv, M);
    } else
        ml_affine_mul(M, inv, A_out);
    return ML_OK;
}

static ml_err resample_to_impl(ml_volume **out, ml_volume *v, const int64_t shape[3], const double affine[16],
                               const ml_resample_opts *o, const char *op) {
    ml_err e = check_affine(op, "the target affine", affine);
    if (e) return e;
    double M[16];
    if ((e = grid_map(op, v, NULL, affine, M))) return e;
    return resample_core(out, v, shape, affine, M, o, op);
}

#define NOGRAD(call)                                                                                                 \
    do {                                                                                                             \
        bool prev_ = ml_set_grad_enabled(false);                                                                     \
        ml_err e_ = (call);                                                                                          \
        ml_set_grad_enabled(prev_);                                                                                  \
        return e_;                                                                                                   \
    } while (0)

ml_err ml_volume_resample_to(ml_volume **out, ml_volume *v, const int64_t shape[3], const double affine[16],
                             const ml_resample_opts *o) {
    *out = NULL;
    NOGRAD(resample_to_impl(out, v, shape, affine, o, "resample_to"));
}

ml_err ml_volume_resample_like(ml_volume **out, ml_volume *v, const ml_volume *ref, const ml_resample_opts *o) {
    *out = NULL;
    NOGRAD(resample_to_impl(out, v, ref->data->shape, ref->affine, o, "resample_like"));
}

ml_err ml_volume_spacing_grid(const ml_volume *v, const double spacing[3], int64_t shape[3], double affine[16]) {
    const char *op = "resample";
    for (int a = 0; a < 3; a++)
        if (!isfinite(spacing[a]) || spacing[a] <= 0)
            return ml_seterr(ML_ERR_ARG, "%s: spacing[%d] must be a finite number > 0 (mm), got %g", op, a, spacing[a]);
    const double *A = v->affine;
    /* Q of the QR decomposition of A[0:3,0:3] (modified Gram-Schmidt on the columns) */
    double q[3][3]; /* q[c][r]: column c */
    for (int c = 0; c < 3; c++) {
        for (int r = 0; r < 3; r++) q[c][r] = A[r * 4 + c];
        for (int k = 0; k < c; k++) {
            double d = q[k][0] * q[c][0] + q[k][1] * q[c][1] + q[k][2] * q[c][2];
            for (int r = 0; r < 3; r++) q[c][r] -= d * q[k][r];
        }
        double nrm = sqrt(q[c][0] * q[c][0] + q[c][1] * q[c][1] + q[c][2] * q[c][2]);
        if (!(nrm > 1e-12)) return ml_seterr(ML_ERR_ARG, "%s: the volume's affine is singular", op);
        for (int r = 0; r < 3; r++) q[c][r] /= nrm;
    }
    double B[16];
    ml_affine_identity(B);
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 3; c++) B[r * 4 + c] = q[c][r] * spacing[c];
    /* input corner voxel centres in output voxel units (B without translation) */
    double Binv[16], T[16];
    if (ml_affine_inverse(Binv, B)) return ml_seterr(ML_ERR_ARG, "%s: the target grid is singular", op);
    ml_affine_mul(T, Binv, A);
    double cw[8][3], co[8][3], mn[3] = {INFINITY, INFINITY, INFINITY}, mx[3] = {-INFINITY, -INFINITY, -INFINITY};
    for (int i = 0; i < 8; i++) {
        double p[3] = {(i & 4) ? (double)(v->data->shape[0] - 1) : 0, (i & 2) ? (double)(v->data->shape[1] - 1) : 0,
                       (i & 1) ? (double)(v->data->shape[2] - 1) : 0};
        ml_affine_apply(T, p, co[i]);
        ml_affine_apply(A, p, cw[i]);
        for (int a = 0; a < 3; a++) {
            if (co[i][a] < mn[a]) mn[a] = co[i][a];
            if (co[i][a] > mx[a]) mx[a] = co[i][a];
        }
    }
    for (int a = 0; a < 3; a++) {
        double s = nearbyint(mx[a] - mn[a] + 1.0);
        if (!(s >= 1) || s > (double)((int64_t)1 << 20))
            return ml_seterr(ML_ERR_ARG, "%s: spacing %g mm on axis %d gives an absurd output size (%g voxels)", op,
                             spacing[a], a, s);
        shape[a] = (int64_t)s;
    }
    int corner = -1;
    for (int i = 0; i < 8 && corner < 0; i++) {
        bool lowest = true;
        for (int a = 0; a < 3; a++) {
            double m = INFINITY;
            for (int j = 0; j < 8; j++)
                if (co[j][a] - co[i][a] < m) m = co[j][a] - co[i][a];
            if (fabs(m) > 1e-8) lowest = false;
        }
        if (lowest) corner = i;
    }
    double off[3];
    if (corner >= 0) memcpy(off, cw[corner], sizeof off);
    else
        for (int r = 0; r < 3; r++) {
            off[r] = A[r * 4 + 3];
            for (int c = 0; c < 3; c++)
                off[r] += A[r * 4 + c] * (double)v->data->shape[c] / 2.0 - B[r * 4 + c] * (double)shape[c] / 2.0;
        }
    for (int r = 0; r < 3; r++) B[r * 4 + 3] = off[r];
    memcpy(affine, B, sizeof B);
    return ML_OK;
}

static ml_err resample_spacing_impl(ml_volume **out, ml_volume *v, const double spacing[3], const ml_resample_opts *o) {
    int64_t shape[3];
    double A[16];
    ml_err e = ml_volume_spacing_grid(v, spacing, shape, A);
    if (e) return e;
    return resample_to_impl(out, v, shape, A, o, "resample");
}

ml_err ml_volume_resample_spacing(ml_volume **out, ml_volume *v, const double spacing[3], const ml_resample_opts *o) {
    *out = NULL;
    NOGRAD(resample_spacing_impl(out, v, spacing, o));
}

static ml_err transform_impl(ml_volume **out, ml_volume *v, const double M[16], const ml_volume *ref, bool inverse,
                             const ml_resample_opts *o) {
    const char *op = "transform";
    ml_err e = check_affine(op, "the transform", M);
    if (e) return e;
    double W[16], G[16];
    if (inverse) memcpy(W, M, sizeof W);
    else ml_affine_inverse(W, M);
    const double *Aout = ref ? ref->affine : v->affine;
    const int64_t *shape = ref ? ref->data->shape : v->data->shape;
    if ((e = grid_map(op, v, W, Aout, G))) return e;
    return resample_core(out, v, shape, Aout, G, o, op);
}

ml_err ml_volume_transform(ml_volume **out, ml_volume *v, const double M[16], const ml_volume *ref, bool inverse,
                           const ml_resample_opts *o) {
    *out = NULL;
    NOGRAD(transform_impl(out, v, M, ref, inverse, o));
}

#else /* ================================================= RS_TEMPLATE: typed kernels */

#define RS_CAT_(a, b) a##_##b
#define RS_CAT(a, b) RS_CAT_(a, b)
#define RS_FN(name) RS_CAT(name, RS_SUF)

/* prefilter a coefficient buffer (3-D, made by ml_vol_empty_like_order: dense in its memory order) */
static ml_err RS_FN(bspline_prefilter)(ml_tensor *c, const char *op) {
    RS_T *x = (RS_T *)ml_tensor_data(c);
    int ord[ML_MAX_DIMS];
    ml_vol_mem_order(c, ord);
    int fast = ord[2];
    for (int a = 0; a < 3; a++) {
        int64_t N = c->shape[a];
        if (N < 2) continue;
        int64_t S = c->stride[a];
        if (a == fast) {
            /* contiguous lines */
            int64_t lines = ml_tensor_numel(c) / N;
            int nt = ml_vol_threads(lines * N);
            int err = 0;
#pragma omp parallel num_threads(nt) if (nt > 1)
            {
                double *buf = malloc((size_t)N * sizeof(double));
                if (!buf) {
#pragma omp atomic write
                    err = 1;
                }
#pragma omp for schedule(static)
                for (int64_t l = 0; l < lines; l++) {
                    if (!buf) continue;
                    RS_T *line = x + l * N;
                    for (int64_t i = 0; i < N; i++) buf[i] = line[i];
                    bspline_filter_lines(buf, N, 1);
                    for (int64_t i = 0; i < N; i++) line[i] = (RS_T)buf[i];
                }
                free(buf);
            }
            if (err) return ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
        } else {
            /* planes: axis a (stride S) x the fastest axis (contiguous, length L); one plane per
             * index of the remaining axis g */
            int g = 3 - a - fast;
            int64_t L = c->shape[fast], G = c->shape[g], Sg = c->stride[g];
            int nt = ml_vol_threads(G * N * L);
            int err = 0;
#pragma omp parallel num_threads(nt) if (nt > 1)
            {
                double *buf = malloc((size_t)(N * L) * sizeof(double));
                if (!buf) {
#pragma omp atomic write
                    err = 1;
                }
#pragma omp for schedule(static)
                for (int64_t gi = 0; gi < G; gi++) {
                    if (!buf) continue;
                    RS_T *base = x + gi * Sg;
                    for (int64_t k = 0; k < N; k++)
                        for (int64_t l = 0; l < L; l++) buf[k * L + l] = base[k * S + l];
                    bspline_filter_lines(buf, N, L);
                    for (int64_t k = 0; k < N; k++)
                        for (int64_t l = 0; l < L; l++) base[k * S + l] = (RS_T)buf[k * L + l];
                }
                free(buf);
            }
            if (err) return ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
        }
    }
    return ML_OK;
}

/* one 3-D frame: linear or bspline, axis-aligned tables or the general path */
/* general path (no tables): output w in [w0, w1) of the row at op, whose voxel w samples c0 + w dc */
static void RS_FN(general_seg)(const rs_plan *p, const RS_T *in, RS_T *op, const double c0[3], const double dc[3],
                               int64_t w0, int64_t w1, RS_T pad) {
    const int taps = p->taps;
    const int64_t os2 = p->os[p->ord[2]];
    if (taps == 2) { /* trilinear, written out */
        const bool border = p->padmode == ML_PAD_BORDER;
        const int64_t n0 = p->n[0], n1 = p->n[1], n2 = p->n[2];
        const int64_t s0 = p->is[0], s1 = p->is[1], s2 = p->is[2];
        const double h0 = (double)n0 - 0.5, h1 = (double)n1 - 0.5, h2 = (double)n2 - 0.5;
        for (int64_t w = w0; w < w1; w++) {
            double cx = c0[0] + (double)w * dc[0], cy = c0[1] + (double)w * dc[1],
                   cz = c0[2] + (double)w * dc[2];
            if (border) {
                cx = cx >= 0 ? (cx <= (double)(n0 - 1) ? cx : (double)(n0 - 1)) : 0;
                cy = cy >= 0 ? (cy <= (double)(n1 - 1) ? cy : (double)(n1 - 1)) : 0;
                cz = cz >= 0 ? (cz <= (double)(n2 - 1) ? cz : (double)(n2 - 1)) : 0;
            } else if (!(cx >= -0.5 && cx < h0 && cy >= -0.5 && cy < h1 && cz >= -0.5 && cz < h2)) {
                op[w * os2] = pad;
                continue;
            }
            /* floor for c > -1; the half voxel below 0 and the last index take the edge value */
            int64_t ix = (int64_t)(cx + 1.0) - 1, iy = (int64_t)(cy + 1.0) - 1, iz = (int64_t)(cz + 1.0) - 1;
            RS_T fx = (RS_T)(cx - (double)ix), fy = (RS_T)(cy - (double)iy), fz = (RS_T)(cz - (double)iz);
            int64_t dx = s0, dy = s1, dz = s2;
            if (ix < 0) { ix = 0; fx = 0; }
            if (iy < 0) { iy = 0; fy = 0; }
            if (iz < 0) { iz = 0; fz = 0; }
            if (ix >= n0 - 1) { ix = n0 - 1; dx = 0; fx = 0; }
            if (iy >= n1 - 1) { iy = n1 - 1; dy = 0; fy = 0; }
            if (iz >= n2 - 1) { iz = n2 - 1; dz = 0; fz = 0; }
            const RS_T *q = in + ix * s0 + iy * s1 + iz * s2;
            const RS_T gx = 1 - fx, gy = 1 - fy, gz = 1 - fz;
            RS_T c00 = gx * q[0] + fx * q[dx], c10 = gx * q[dy] + fx * q[dy + dx];
            RS_T c01 = gx * q[dz] + fx * q[dz + dx], c11 = gx * q[dz + dy] + fx * q[dz + dy + dx];
            op[w * os2] = gz * (gy * c00 + fy * c10) + fz * (gy * c01 + fy * c11);
        }
        return;
    }
    for (int64_t w = w0; w < w1; w++) {
        rs_taps t[3];
        bool inside = true;
        for (int k = 0; k < 3 && inside; k++)
            inside = axis_taps(p->mode, p->padmode, c0[k] + (double)w * dc[k], p->n[k], p->is[k], &t[k]);
        if (!inside) {
            op[w * os2] = pad;
            continue;
        }
        double acc = 0;
        for (int i = 0; i < taps; i++) {
            if (t[0].w[i] == 0) continue;
            double si = 0;
            for (int j = 0; j < taps; j++) {
                if (t[1].w[j] == 0) continue;
                const RS_T *q = in + t[0].off[i] + t[1].off[j];
                double sj = 0;
                for (int k = 0; k < taps; k++) sj += t[2].w[k] * (double)q[t[2].off[k]];
                si += t[1].w[j] * sj;
            }
            acc += t[0].w[i] * si;
        }
        op[w * os2] = (RS_T)acc;
    }
}

static void RS_FN(interp_frame)(const rs_plan *p, const RS_T *in, RS_T *out, double padding) {
    int a0 = p->ord[0], a1 = p->ord[1], a2 = p->ord[2];
    int64_t rows = p->o[a0] * p->o[a1], m2 = p->o[a2], os2 = p->os[a2];
    const int taps = p->taps;
    const RS_T pad = (RS_T)padding;
    int nt = ml_vol_threads(rows * m2 * taps);
    /* B-spline on tables: per output row, first combine the 16 input rows of the two outer axes into
     * one line along the inner axis (tmp), then 4 taps per voxel: 16 n + 4 m instead of 64 m */
    const bool use_tmp = p->tab[0] && taps == 4 && p->ihi[a2] >= p->ilo[a2];
    const int64_t ilo2 = use_tmp ? p->ilo[a2] : 0, nline = use_tmp ? p->ihi[a2] - p->ilo[a2] + 1 : 0;
    const int64_t is2 = p->is[a2];
    if (!p->tab[0]) {
        /* general path in tiles of 64 voxels along the inner axis: consecutive rows of a tile read
         * neighbouring input rows, which stay in cache (rotations of large volumes) */
        const int64_t WB = 64, nwb = (m2 + WB - 1) / WB, ntiles = p->o[a0] * nwb;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t t = 0; t < ntiles; t++) {
            int64_t u = t / nwb, w0 = (t % nwb) * WB, w1 = w0 + WB < m2 ? w0 + WB : m2;
            for (int64_t v = 0; v < p->o[a1]; v++) {
                double ob[3] = {0, 0, 0}, c0[3], dc[3];
                ob[a0] = (double)u;
                ob[a1] = (double)v;
                for (int k = 0; k < 3; k++) {
                    c0[k] = p->M[k * 4] * ob[0] + p->M[k * 4 + 1] * ob[1] + p->M[k * 4 + 2] * ob[2] + p->M[k * 4 + 3];
                    dc[k] = p->M[k * 4 + a2];
                }
                RS_FN(general_seg)(p, in, out + u * p->os[a0] + v * p->os[a1], c0, dc, w0, w1, pad);
            }
        }
        return;
    }
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
    RS_T *tmp = use_tmp ? malloc((size_t)nline * sizeof(RS_T)) : NULL;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        int64_t u = r / p->o[a1], v = r % p->o[a1];
        RS_T *op = out + u * p->os[a0] + v * p->os[a1];
        if (tmp) {
            if (!p->valid[a0][u] || !p->valid[a1][v]) {
                for (int64_t w = 0; w < m2; w++) op[w * os2] = pad;
                continue;
            }
            const rs_taps *t0 = &p->tab[a0][u], *t1 = &p->tab[a1][v];
            for (int64_t i = 0; i < nline; i++) tmp[i] = 0;
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) {
                    const RS_T wij = (RS_T)(t0->w[i] * t1->w[j]);
                    const RS_T *q = in + t0->off[i] + t1->off[j] + ilo2 * is2;
                    if (is2 == 1)
                        for (int64_t x = 0; x < nline; x++) tmp[x] += wij * q[x];
                    else
                        for (int64_t x = 0; x < nline; x++) tmp[x] += wij * q[x * is2];
                }
            const rs_taps *t2 = p->tab[a2];
            const uint8_t *v2 = p->valid[a2];
            for (int64_t w = 0; w < m2; w++) {
                if (!v2[w]) {
                    op[w * os2] = pad;
                    continue;
                }
                const rs_taps *tw = &t2[w];
                op[w * os2] = (RS_T)(tw->w[0] * tmp[tw->idx[0] - ilo2] + tw->w[1] * tmp[tw->idx[1] - ilo2] +
                                     tw->w[2] * tmp[tw->idx[2] - ilo2] + tw->w[3] * tmp[tw->idx[3] - ilo2]);
            }
        } else if (p->tab[0]) {
            if (!p->valid[a0][u] || !p->valid[a1][v]) {
                for (int64_t w = 0; w < m2; w++) op[w * os2] = pad;
                continue;
            }
            /* the taps^2 combinations of the two outer axes */
            int64_t boff[RS_MAXTAPS * RS_MAXTAPS];
            RS_T bw[RS_MAXTAPS * RS_MAXTAPS];
            int nb = 0;
            const rs_taps *t0 = &p->tab[a0][u], *t1 = &p->tab[a1][v];
            for (int i = 0; i < taps; i++)
                for (int j = 0; j < taps; j++) {
                    double wij = t0->w[i] * t1->w[j];
                    if (wij == 0) continue;
                    boff[nb] = t0->off[i] + t1->off[j];
                    bw[nb++] = (RS_T)wij;
                }
            const rs_taps *t2 = p->tab[a2];
            const uint8_t *v2 = p->valid[a2];
            if (taps == 2) {
                for (int64_t w = 0; w < m2; w++) {
                    if (!v2[w]) {
                        op[w * os2] = pad;
                        continue;
                    }
                    const int64_t o0 = t2[w].off[0], o1 = t2[w].off[1];
                    const RS_T w0 = (RS_T)t2[w].w[0], w1 = (RS_T)t2[w].w[1];
                    RS_T acc = 0;
                    for (int k = 0; k < nb; k++) {
                        const RS_T *q = in + boff[k];
                        acc += bw[k] * (w0 * q[o0] + w1 * q[o1]);
                    }
                    op[w * os2] = acc;
                }
            } else {
                for (int64_t w = 0; w < m2; w++) {
                    if (!v2[w]) {
                        op[w * os2] = pad;
                        continue;
                    }
                    const rs_taps *tw = &t2[w];
                    RS_T acc = 0;
                    for (int k = 0; k < nb; k++) {
                        const RS_T *q = in + boff[k];
                        RS_T s = 0;
                        for (int c = 0; c < taps; c++) s += (RS_T)tw->w[c] * q[tw->off[c]];
                        acc += bw[k] * s;
                    }
                    op[w * os2] = acc;
                }
            }
        }
    }
    free(tmp);
    }
}


#undef RS_FN
#undef RS_CAT
#undef RS_CAT_
#endif
