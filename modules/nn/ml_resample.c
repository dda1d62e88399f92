/* Resampling and padding: interpolate (nearest / linear / bilinear / trilinear), pad (constant,
 * reflect, replicate), grid_sample (2D/3D, bilinear/trilinear and nearest, zeros/border padding),
 * affine_grid (2D/3D). Forward and backward, following PyTorch's CPU definitions:
 *
 *  - interpolate: output size = size, or floor(in * scale). Source coordinates are computed in the
 *    element type (float for f32, as PyTorch's opmath). align_corners: src = dst*(in-1)/(out-1);
 *    otherwise src = max(r*(dst+0.5)-0.5, 0) with r = 1/scale when a scale was given, else in/out.
 *    out == in copies; nearest uses floorf(dst * (float)r) (and dst/2 when out == 2*in).
 *  - grid_sample: unnormalize x = ((g+1)/2)*(size-1) (align_corners) or ((g+1)*size-1)/2; border
 *    clips to [0, size-1] with zero gradient where clipped; nearest rounds half to even.
 *  - affine_grid: base coordinates linspace(-1, 1, n) (scaled by (n-1)/n without align_corners;
 *    0 when n == 1), grid = base @ theta^T.
 *
 * Backward passes that scatter (interpolate, reflect/replicate pad, grid_sample to the input) are
 * parallel over independent (n, c) planes only, so they are deterministic. Kernels are written once
 * for T = float and T = double (this file includes itself with ML_RESAMPLE_GEN defined). */
#ifndef ML_RESAMPLE_GEN
#include "ml_nn_util.h"
#include "ml_nn_composite.h"

#include <math.h>

/* nearest source index (PyTorch nearest_idx: float arithmetic) */
static void nearest_table(int64_t in, int64_t out, double scale, int64_t *idx) {
    float r = scale > 0 ? (float)(1.0 / scale) : (float)in / (float)out;
    for (int64_t o = 0; o < out; o++) {
        if (out == in) idx[o] = o;
        else if (out == 2 * in) idx[o] = o >> 1;
        else {
            int64_t s = (int64_t)floorf((float)o * r);
            idx[o] = s < in - 1 ? s : in - 1;
        }
    }
}

/* op parameters (stored in the autograd node) */
typedef struct {
    int k, mode;
    bool align;
    int64_t NC, isz[3], osz[3];
    double scale[3]; /* <= 0: not given */
} interp_params;
_Static_assert(sizeof(interp_params) <= ML_NODE_PARAM_BYTES, "params");

typedef struct {
    int mode, P;        /* P: number of padded (trailing) dims */
    int ndim;
    double value;
    int64_t lo[ML_MAX_DIMS], hi[ML_MAX_DIMS]; /* per padded dim, outermost first */
} pad_params;
_Static_assert(sizeof(pad_params) <= ML_NODE_PARAM_BYTES, "params");

typedef struct {
    int k, mode, padding;
    bool align;
    int64_t N, C, isz[3], osz[3]; /* isz/osz: (D,) H, W padded to 3 with leading 1 */
} gs_params;
_Static_assert(sizeof(gs_params) <= ML_NODE_PARAM_BYTES, "params");

typedef struct {
    int k;
    bool align;
    int64_t N, sz[3]; /* D, H, W (D = 1 for 2-D) */
} ag_params;
_Static_assert(sizeof(ag_params) <= ML_NODE_PARAM_BYTES, "params");

#define ML_RESAMPLE_GEN
#define T float
#define S(name) name##_f32
#define FLOORT floorf
#define RINTT nearbyintf
#include "ml_resample.c"
#undef T
#undef S
#undef FLOORT
#undef RINTT
#define T double
#define S(name) name##_f64
#define FLOORT floor
#define RINTT nearbyint
#include "ml_resample.c"
#undef T
#undef S
#undef FLOORT
#undef RINTT
#undef ML_RESAMPLE_GEN

/* ============================================================================ interpolate */

/* Build the per-dim tables and run forward (gy == NULL) or backward. */
static ml_err interp_run(const interp_params *p, ml_dtype dt, const void *x, void *y, bool backward) {
    int64_t tot = 0;
    for (int d = 0; d < 3; d++) tot += p->osz[d];
    size_t es = dt == ML_F32 ? sizeof(float) : sizeof(double);
    char *buf = malloc((size_t)tot * (2 * sizeof(int64_t) + 2 * es) + 64);
    if (!buf) return ml_seterr(ML_ERR_OOM, "interpolate: out of memory");
    int64_t *i0[3], *i1[3];
    void *l0[3], *l1[3];
    char *q = buf;
    for (int d = 0; d < 3; d++) {
        int64_t o = p->osz[d];
        i0[d] = (int64_t *)q; q += o * sizeof(int64_t);
        i1[d] = (int64_t *)q; q += o * sizeof(int64_t);
    }
    for (int d = 0; d < 3; d++) {
        int64_t o = p->osz[d];
        l0[d] = q; q += o * es;
        l1[d] = q; q += o * es;
    }
    for (int d = 0; d < 3; d++) {
        if (p->mode == ML_INTERP_NEAREST) nearest_table(p->isz[d], p->osz[d], p->scale[d], i0[d]);
        else if (dt == ML_F32) lin_table_f32(p->isz[d], p->osz[d], p->align, p->scale[d], i0[d], i1[d], l0[d], l1[d]);
        else lin_table_f64(p->isz[d], p->osz[d], p->align, p->scale[d], i0[d], i1[d], l0[d], l1[d]);
    }
    if (p->mode == ML_INTERP_NEAREST) {
        if (dt == ML_F32) (backward ? interp_nearest_bwd_f32 : interp_nearest_fwd_f32)(x, y, p->NC, p->isz, p->osz, i0);
        else (backward ? interp_nearest_bwd_f64 : interp_nearest_fwd_f64)(x, y, p->NC, p->isz, p->osz, i0);
    } else {
        if (dt == ML_F32)
            (backward ? interp_lin_bwd_f32 : interp_lin_fwd_f32)(x, y, p->NC, p->k, p->isz, p->osz, i0, i1, l0, l1);
        else
            (backward ? interp_lin_bwd_f64 : interp_lin_fwd_f64)(x, y, p->NC, p->k, p->isz, p->osz, i0, i1, l0, l1);
    }
    free(buf);
    return ML_OK;
}

static ml_err bw_interpolate(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const interp_params *p = (const interp_params *)n->params;
    ml_dtype dt = (ml_dtype)n->in_dtype[0];
    ml_tensor *g = NULL, *gx = NULL;
    ml_err e = nn_contig_as(&g, gout[0], dt);
    if (e) return e;
    if (!(e = ml_zeros(&gx, dt, n->in_ndim[0], n->in_shape[0]))) e = interp_run(p, dt, ml_tensor_data(g), ml_tensor_data(gx), true);
    ml_tensor_release(g);
    if (e) { ml_tensor_release(gx); return e; }
    gin[0] = gx;
    return ML_OK;
}

ml_err ml_interpolate(ml_tensor **out, ml_tensor *x, const int64_t *size, const double *scale, ml_interp_mode mode,
                      bool align_corners) {
    *out = NULL;
    ml_err e = nn_check_real("interpolate", "input", x);
    if (e) return e;
    int k = x->ndim - 2;
    if (k < 1 || k > 3)
        return ml_seterr(ML_ERR_SHAPE, "interpolate: expected input [N, C, spatial...] with 1 to 3 spatial dims, got "
                         "shape %s", ml_shape_str(x->ndim, x->shape));
    if (mode != ML_INTERP_NEAREST && mode != ML_INTERP_LINEAR)
        return ml_seterr(ML_ERR_ARG, "interpolate: unknown mode %d", (int)mode);
    if (!size && !scale)
        return ml_seterr(ML_ERR_ARG, "interpolate: either size or scale_factor must be given (input shape %s)",
                         ml_shape_str(x->ndim, x->shape));
    interp_params p = {.k = k, .mode = mode, .align = align_corners && mode == ML_INTERP_LINEAR,
                       .NC = x->shape[0] * x->shape[1]};
    int64_t oshape[5] = {x->shape[0], x->shape[1], 0, 0, 0};
    for (int d = 0; d < 3; d++) { p.isz[d] = 1; p.osz[d] = 1; p.scale[d] = 0; }
    for (int i = 0; i < k; i++) {
        int d = 3 - k + i;
        int64_t in = x->shape[2 + i], o;
        p.isz[d] = in;
        if (size) {
            o = size[i];
        } else {
            double s = scale[i];
            if (!(s > 0) || !isfinite(s))
                return ml_seterr(ML_ERR_ARG, "interpolate: scale_factor %g for spatial dim %d must be positive (input "
                                 "shape %s)", s, i, ml_shape_str(x->ndim, x->shape));
            double od = floor((double)in * s);
            if (od > (double)INT64_MAX / 16)
                return ml_seterr(ML_ERR_ARG, "interpolate: scale_factor %g is too large for input shape %s", s,
                                 ml_shape_str(x->ndim, x->shape));
            o = (int64_t)od;
            p.scale[d] = s;
        }
        if (o <= 0 || in <= 0)
            return ml_seterr(ML_ERR_SHAPE, "interpolate: input %s and output spatial size %lld (dim %d) must both be "
                             "non-empty", ml_shape_str(x->ndim, x->shape), (long long)o, i);
        p.osz[d] = o;
        oshape[2 + i] = o;
    }
    ml_tensor *xc = NULL, *y = NULL;
    if ((e = nn_contig(&xc, x))) return e;
    if ((e = ml_tensor_empty(&y, (ml_dtype)x->dtype, x->ndim, oshape))) { ml_tensor_release(xc); return e; }
    if (p.NC > 0) e = interp_run(&p, (ml_dtype)x->dtype, ml_tensor_data(xc), ml_tensor_data(y), false);
    ml_tensor_release(xc);
    if (e) { ml_tensor_release(y); return e; }
    ml_tensor *ins[1] = {x};
    if ((e = nn_record("interpolate", bw_interpolate, 1, ins, &y, &p, sizeof p, 0, NULL))) return e;
    *out = y;
    return ML_OK;
}

/* ================================================================================== pad */

/* index maps: map[p][o] = input index of output o along padded dim p, or -1 (constant fill) */
static int64_t *pad_maps(const pad_params *pp, const int64_t *isz, const int64_t *osz, int64_t **map) {
    int64_t tot = 0;
    for (int p = 0; p < pp->P; p++) tot += osz[p];
    int64_t *buf = malloc(sizeof(int64_t) * (size_t)(tot + 1));
    if (!buf) return NULL;
    int64_t *q = buf;
    for (int p = 0; p < pp->P; p++) {
        map[p] = q;
        q += osz[p];
        int64_t in = isz[p];
        for (int64_t o = 0; o < osz[p]; o++) {
            int64_t i = o - pp->lo[p];
            if (pp->mode == ML_PAD_CONSTANT) map[p][o] = (i >= 0 && i < in) ? i : -1;
            else if (pp->mode == ML_PAD_REPLICATE) map[p][o] = i < 0 ? 0 : i >= in ? in - 1 : i;
            else {
                if (i < 0) i = -i;
                if (i >= in) i = 2 * (in - 1) - i;
                map[p][o] = i;
            }
        }
    }
    return buf;
}

static ml_err pad_run(const pad_params *pp, ml_dtype dt, const int64_t *ishape, const void *x, void *y, bool backward) {
    int P = pp->P, lead = pp->ndim - P;
    int64_t B = 1, isz[ML_MAX_DIMS], osz[ML_MAX_DIMS], *map[ML_MAX_DIMS];
    for (int i = 0; i < lead; i++) B *= ishape[i];
    for (int p = 0; p < P; p++) {
        isz[p] = ishape[lead + p];
        osz[p] = isz[p] + pp->lo[p] + pp->hi[p];
    }
    int64_t *buf = pad_maps(pp, isz, osz, map);
    if (!buf) return ml_seterr(ML_ERR_OOM, "pad: out of memory");
    if (dt == ML_F32) (backward ? pad_bwd_f32 : pad_fwd_f32)(x, y, B, P, isz, osz, map, pp->lo[P - 1], pp->value);
    else (backward ? pad_bwd_f64 : pad_fwd_f64)(x, y, B, P, isz, osz, map, pp->lo[P - 1], pp->value);
    free(buf);
    return ML_OK;
}

static ml_err bw_pad(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const pad_params *pp = (const pad_params *)n->params;
    ml_dtype dt = (ml_dtype)n->in_dtype[0];
    if (pp->mode == ML_PAD_CONSTANT) {
        /* the gradient of a constant pad is the opposite crop/pad of the gradient (fill 0) */
        int64_t pads[2 * ML_MAX_DIMS];
        for (int p = 0; p < pp->P; p++) {
            int j = pp->P - 1 - p; /* PyTorch order: last dim first */
            pads[2 * j] = -pp->lo[p];
            pads[2 * j + 1] = -pp->hi[p];
        }
        ml_tensor *g = NULL;
        ml_err e = nn_contig_as(&g, gout[0], dt);
        if (e) return e;
        e = ml_pad(&gin[0], g, 2 * pp->P, pads, ML_PAD_CONSTANT, 0.0);
        ml_tensor_release(g);
        return e;
    }
    ml_tensor *g = NULL, *gx = NULL;
    ml_err e = nn_contig_as(&g, gout[0], dt);
    if (e) return e;
    if (!(e = ml_zeros(&gx, dt, n->in_ndim[0], n->in_shape[0])))
        e = pad_run(pp, dt, n->in_shape[0], ml_tensor_data(g), ml_tensor_data(gx), true);
    ml_tensor_release(g);
    if (e) { ml_tensor_release(gx); return e; }
    gin[0] = gx;
    return ML_OK;
}

ml_err ml_pad(ml_tensor **out, ml_tensor *x, int npads, const int64_t *pads, ml_pad_mode mode, double value) {
    *out = NULL;
    ml_err e = nn_check_real("pad", "input", x);
    if (e) return e;
    static const char *mname[] = {"constant", "reflect", "replicate"};
    if ((unsigned)mode > ML_PAD_REPLICATE) return ml_seterr(ML_ERR_ARG, "pad: unknown mode %d", (int)mode);
    if (npads <= 0 || npads % 2 || npads / 2 > x->ndim)
        return ml_seterr(ML_ERR_ARG, "pad: padding length %d must be even, positive and at most 2 x rank for input of "
                         "shape %s", npads, ml_shape_str(x->ndim, x->shape));
    if (mode != ML_PAD_CONSTANT && npads / 2 > 3)
        return ml_seterr(ML_ERR_ARG, "pad: %s mode pads at most the last 3 dims, got %d pads for input of shape %s",
                         mname[mode], npads, ml_shape_str(x->ndim, x->shape));
    pad_params pp = {.mode = mode, .P = npads / 2, .ndim = x->ndim, .value = value};
    int lead = x->ndim - pp.P;
    int64_t oshape[ML_MAX_DIMS];
    memcpy(oshape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
    for (int p = 0; p < pp.P; p++) {
        int j = pp.P - 1 - p; /* pads[2j], pads[2j+1] belong to dim lead + p */
        pp.lo[p] = pads[2 * j];
        pp.hi[p] = pads[2 * j + 1];
        int64_t in = x->shape[lead + p], o = in + pp.lo[p] + pp.hi[p];
        if (o < 0)
            return ml_seterr(ML_ERR_ARG, "pad: padding (%lld, %lld) gives a negative size %lld for dim %d of input %s",
                             (long long)pp.lo[p], (long long)pp.hi[p], (long long)o, lead + p,
                             ml_shape_str(x->ndim, x->shape));
        if (mode == ML_PAD_REFLECT && (pp.lo[p] >= in || pp.hi[p] >= in) && (pp.lo[p] > 0 || pp.hi[p] > 0))
            return ml_seterr(ML_ERR_ARG, "pad: reflect padding (%lld, %lld) must be less than the size %lld of dim %d "
                             "of input %s", (long long)pp.lo[p], (long long)pp.hi[p], (long long)in, lead + p,
                             ml_shape_str(x->ndim, x->shape));
        if (mode == ML_PAD_REPLICATE && in == 0 && o > 0)
            return ml_seterr(ML_ERR_ARG, "pad: replicate padding of the empty dim %d of input %s", lead + p,
                             ml_shape_str(x->ndim, x->shape));
        oshape[lead + p] = o;
    }
    if (ml_tensor_is_cuda(x)) return ml_pad_composite(out, x, pp.P, pp.lo, pp.hi, mode, value);
    ml_tensor *xc = NULL, *y = NULL;
    if ((e = nn_contig(&xc, x))) return e;
    if ((e = ml_tensor_empty(&y, (ml_dtype)x->dtype, x->ndim, oshape))) { ml_tensor_release(xc); return e; }
    e = pad_run(&pp, (ml_dtype)x->dtype, x->shape, ml_tensor_data(xc), ml_tensor_data(y), false);
    ml_tensor_release(xc);
    if (e) { ml_tensor_release(y); return e; }
    ml_tensor *ins[1] = {x};
    if ((e = nn_record("pad", bw_pad, 1, ins, &y, &pp, sizeof pp, 0, NULL))) return e;
    *out = y;
    return ML_OK;
}

/* ========================================================================== grid_sample */

/* saved: 0 x (contiguous), 1 grid (contiguous) */
static ml_err bw_grid_sample(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const gs_params *p = (const gs_params *)n->params;
    ml_tensor *x = ml_node_saved(n, 0), *grid = ml_node_saved(n, 1);
    if (!x || !grid) return ML_ERR_GRAD;
    ml_dtype dt = (ml_dtype)x->dtype;
    ml_tensor *g = NULL, *gx = NULL, *gg = NULL;
    ml_err e = nn_contig_as(&g, gout[0], dt);
    if (e) return e;
    if (n->needs[0] && !(e = ml_zeros(&gx, dt, x->ndim, x->shape))) {
        if (dt == ML_F32) gs_bwd_input_f32(p, ml_tensor_data(grid), ml_tensor_data(g), ml_tensor_data(gx));
        else gs_bwd_input_f64(p, ml_tensor_data(grid), ml_tensor_data(g), ml_tensor_data(gx));
    }
    if (!e && n->needs[1] && !(e = ml_zeros(&gg, dt, grid->ndim, grid->shape)) && p->mode != ML_INTERP_NEAREST) {
        if (dt == ML_F32) gs_bwd_grid_f32(p, ml_tensor_data(x), ml_tensor_data(grid), ml_tensor_data(g), ml_tensor_data(gg));
        else gs_bwd_grid_f64(p, ml_tensor_data(x), ml_tensor_data(grid), ml_tensor_data(g), ml_tensor_data(gg));
    }
    ml_tensor_release(g);
    if (e) { ml_tensor_release(gx); ml_tensor_release(gg); return e; }
    gin[0] = gx;
    gin[1] = gg;
    return ML_OK;
}

ml_err ml_grid_sample(ml_tensor **out, ml_tensor *x, ml_tensor *grid, ml_interp_mode mode, ml_gs_padding padding,
                      bool align_corners) {
    *out = NULL;
    ml_err e = nn_check_real("grid_sample", "input", x);
    if (!e) e = nn_check_real("grid_sample", "grid", grid);
    if (e) return e;
    int k = x->ndim - 2;
    if (k < 2 || k > 3)
        return ml_seterr(ML_ERR_SHAPE, "grid_sample: expected 4-D [N, C, H, W] or 5-D [N, C, D, H, W] input, got shape %s",
                         ml_shape_str(x->ndim, x->shape));
    bool ok = grid->ndim == x->ndim && grid->shape[0] == x->shape[0] && grid->shape[grid->ndim - 1] == k;
    if (!ok)
        return ml_seterr(ML_ERR_SHAPE, "grid_sample: grid of shape %s does not fit input of shape %s (expected [%lld, %s%d])",
                         ml_shape_str(grid->ndim, grid->shape), ml_shape_str(x->ndim, x->shape), (long long)x->shape[0],
                         k == 2 ? "Ho, Wo, " : "Do, Ho, Wo, ", k);
    if (grid->dtype != x->dtype)
        return ml_seterr(ML_ERR_DTYPE, "grid_sample: input (%s) and grid (%s) must have the same dtype",
                         ml_dtype_name((ml_dtype)x->dtype), ml_dtype_name((ml_dtype)grid->dtype));
    if (mode != ML_INTERP_NEAREST && mode != ML_INTERP_LINEAR)
        return ml_seterr(ML_ERR_ARG, "grid_sample: unknown mode %d", (int)mode);
    if (padding != ML_GS_ZEROS && padding != ML_GS_BORDER)
        return ml_seterr(ML_ERR_ARG, "grid_sample: unknown padding mode %d", (int)padding);
    gs_params p = {.k = k, .mode = mode, .padding = padding, .align = align_corners, .N = x->shape[0], .C = x->shape[1]};
    int64_t oshape[5] = {x->shape[0], x->shape[1], 1, 1, 1};
    for (int d = 0; d < 3; d++) { p.isz[d] = 1; p.osz[d] = 1; }
    for (int i = 0; i < k; i++) {
        p.isz[3 - k + i] = x->shape[2 + i];
        p.osz[3 - k + i] = grid->shape[1 + i];
        oshape[2 + i] = grid->shape[1 + i];
    }
    ml_tensor *xc = NULL, *gc = NULL, *y = NULL;
    if ((e = nn_contig(&xc, x)) || (e = nn_contig(&gc, grid))) goto fail;
    if ((e = ml_tensor_empty(&y, (ml_dtype)x->dtype, x->ndim, oshape))) goto fail;
    if (x->dtype == ML_F32) gs_fwd_f32(&p, ml_tensor_data(xc), ml_tensor_data(gc), ml_tensor_data(y));
    else gs_fwd_f64(&p, ml_tensor_data(xc), ml_tensor_data(gc), ml_tensor_data(y));
    ml_tensor *ins[2] = {x, grid}, *saves[2] = {xc, gc};
    if ((e = nn_record("grid_sample", bw_grid_sample, 2, ins, &y, &p, sizeof p, 2, saves))) goto fail;
    ml_tensor_release(xc); ml_tensor_release(gc);
    *out = y;
    return ML_OK;
fail:
    ml_tensor_release(xc); ml_tensor_release(gc); ml_tensor_release(y);
    return e;
}

/* ========================================================================== affine_grid */

static ml_err bw_affine_grid(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const ag_params *p = (const ag_params *)n->params;
    ml_dtype dt = (ml_dtype)n->in_dtype[0];
    ml_tensor *g = NULL, *gt = NULL;
    ml_err e = nn_contig_as(&g, gout[0], dt);
    if (e) return e;
    if (!(e = ml_tensor_empty(&gt, dt, 3, n->in_shape[0]))) {
        if (dt == ML_F32) e = ag_bwd_f32(p, ml_tensor_data(g), ml_tensor_data(gt));
        else e = ag_bwd_f64(p, ml_tensor_data(g), ml_tensor_data(gt));
    }
    ml_tensor_release(g);
    if (e) { ml_tensor_release(gt); return e; }
    gin[0] = gt;
    return ML_OK;
}

ml_err ml_affine_grid(ml_tensor **out, ml_tensor *theta, int ndim, const int64_t *size, bool align_corners) {
    *out = NULL;
    ml_err e = nn_check_real("affine_grid", "theta", theta);
    if (e) return e;
    if (ndim != 4 && ndim != 5)
        return ml_seterr(ML_ERR_ARG, "affine_grid: size must have 4 (N, C, H, W) or 5 (N, C, D, H, W) entries, got %d", ndim);
    int k = ndim - 2;
    bool ok = theta->ndim == 3 && theta->shape[1] == k && theta->shape[2] == k + 1 && theta->shape[0] == size[0];
    if (!ok)
        return ml_seterr(ML_ERR_SHAPE, "affine_grid: theta of shape %s does not fit size %s (expected [%lld, %d, %d])",
                         ml_shape_str(theta->ndim, theta->shape), ml_shape_str(ndim, size), (long long)size[0], k, k + 1);
    for (int i = 0; i < ndim; i++)
        if (size[i] < 0)
            return ml_seterr(ML_ERR_SHAPE, "affine_grid: negative entry in size %s", ml_shape_str(ndim, size));
    ag_params p = {.k = k, .align = align_corners, .N = size[0], .sz = {1, 1, 1}};
    int64_t oshape[5];
    oshape[0] = size[0];
    for (int i = 0; i < k; i++) {
        p.sz[3 - k + i] = size[2 + i];
        oshape[1 + i] = size[2 + i];
    }
    oshape[1 + k] = k;
    ml_tensor *tc = NULL, *y = NULL;
    if ((e = nn_contig(&tc, theta))) return e;
    if ((e = ml_tensor_empty(&y, (ml_dtype)theta->dtype, k + 2, oshape))) { ml_tensor_release(tc); return e; }
    if (theta->dtype == ML_F32) e = ag_fwd_f32(&p, ml_tensor_data(tc), ml_tensor_data(y));
    else e = ag_fwd_f64(&p, ml_tensor_data(tc), ml_tensor_data(y));
    ml_tensor_release(tc);
    if (e) { ml_tensor_release(y); return e; }
    ml_tensor *ins[1] = {theta};
    if ((e = nn_record("affine_grid", bw_affine_grid, 1, ins, &y, &p, sizeof p, 0, NULL))) return e;
    *out = y;
    return ML_OK;
}

#else /* ------------------------------------------------- type-generic kernels (T, S(name)) */

/* ---- interpolate */
static void S(lin_table)(int64_t in, int64_t out, bool align, double scale, int64_t *i0, int64_t *i1, void *vl0,
                         void *vl1) {
    T *l0 = vl0, *l1 = vl1;
    T r;
    if (align) r = out > 1 ? (T)(in - 1) / (T)(out - 1) : (T)0;
    else r = scale > 0 ? (T)(1.0 / scale) : (T)in / (T)out;
    for (int64_t o = 0; o < out; o++) {
        if (out == in) { i0[o] = i1[o] = o; l0[o] = 1; l1[o] = 0; continue; }
        T src;
        if (align) src = r * (T)o;
        else {
            src = r * ((T)o + (T)0.5) - (T)0.5;
            if (src < 0) src = 0;
        }
        int64_t a = (int64_t)src;
        if (a > in - 1) a = in - 1;
        i0[o] = a;
        i1[o] = a + (a < in - 1 ? 1 : 0);
        T lam = src - (T)a;
        lam = lam < 0 ? 0 : lam > 1 ? 1 : lam;
        l1[o] = lam;
        l0[o] = (T)1 - lam;
    }
}

static void S(interp_nearest_fwd)(const void *vx, void *vy, int64_t NC, const int64_t *isz, const int64_t *osz,
                                  int64_t *const *idx) {
    const T *x = vx;
    T *y = vy;
    int64_t rows = NC * osz[0] * osz[1], iplane = isz[0] * isz[1] * isz[2];
    int nt = nn_threads(rows * osz[2], rows);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t r = 0; r < rows; r++) {
        int64_t oh = r % osz[1], od = (r / osz[1]) % osz[0], nc = r / (osz[1] * osz[0]);
        const T *xr = x + nc * iplane + (idx[0][od] * isz[1] + idx[1][oh]) * isz[2];
        T *yr = y + r * osz[2];
        const int64_t *iw = idx[2];
        for (int64_t ow = 0; ow < osz[2]; ow++) yr[ow] = xr[iw[ow]];
    }
}

static void S(interp_nearest_bwd)(const void *vg, void *vgx, int64_t NC, const int64_t *isz, const int64_t *osz,
                                  int64_t *const *idx) {
    const T *g = vg;
    T *gx = vgx;
    int64_t iplane = isz[0] * isz[1] * isz[2], oplane = osz[0] * osz[1] * osz[2];
    int nt = nn_threads(NC * oplane, NC);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t nc = 0; nc < NC; nc++) {
        const T *gp = g + nc * oplane;
        T *xp = gx + nc * iplane;
        for (int64_t od = 0; od < osz[0]; od++)
            for (int64_t oh = 0; oh < osz[1]; oh++) {
                T *xr = xp + (idx[0][od] * isz[1] + idx[1][oh]) * isz[2];
                const T *gr = gp + (od * osz[1] + oh) * osz[2];
                for (int64_t ow = 0; ow < osz[2]; ow++) xr[idx[2][ow]] += gr[ow];
            }
    }
}

static void S(interp_lin_fwd)(const void *vx, void *vy, int64_t NC, int k, const int64_t *isz, const int64_t *osz,
                              int64_t *const *i0, int64_t *const *i1, void *const *vl0, void *const *vl1) {
    const T *x = vx;
    T *y = vy;
    const T *l0d = vl0[0], *l1d = vl1[0], *l0h = vl0[1], *l1h = vl1[1], *l0w = vl0[2], *l1w = vl1[2];
    const int64_t *w0 = i0[2], *w1 = i1[2];
    int64_t rows = NC * osz[0] * osz[1], iplane = isz[0] * isz[1] * isz[2], W = isz[2], H = isz[1];
    int nt = nn_threads(rows * osz[2] * (1 << k), rows);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t r = 0; r < rows; r++) {
        int64_t oh = r % osz[1], od = (r / osz[1]) % osz[0], nc = r / (osz[1] * osz[0]);
        const T *xp = x + nc * iplane;
        const T *p00 = xp + (i0[0][od] * H + i0[1][oh]) * W, *p01 = xp + (i0[0][od] * H + i1[1][oh]) * W;
        const T *p10 = xp + (i1[0][od] * H + i0[1][oh]) * W, *p11 = xp + (i1[0][od] * H + i1[1][oh]) * W;
        T *yr = y + r * osz[2];
        T ad = l0d[od], bd = l1d[od], ah = l0h[oh], bh = l1h[oh];
        if (k == 1) {
            for (int64_t ow = 0; ow < osz[2]; ow++) yr[ow] = l0w[ow] * p00[w0[ow]] + l1w[ow] * p00[w1[ow]];
        } else if (k == 2) {
            for (int64_t ow = 0; ow < osz[2]; ow++) {
                T a = l0w[ow], b = l1w[ow];
                yr[ow] = ah * (a * p00[w0[ow]] + b * p00[w1[ow]]) + bh * (a * p01[w0[ow]] + b * p01[w1[ow]]);
            }
        } else {
            for (int64_t ow = 0; ow < osz[2]; ow++) {
                T a = l0w[ow], b = l1w[ow];
                yr[ow] = ad * (ah * (a * p00[w0[ow]] + b * p00[w1[ow]]) + bh * (a * p01[w0[ow]] + b * p01[w1[ow]])) +
                         bd * (ah * (a * p10[w0[ow]] + b * p10[w1[ow]]) + bh * (a * p11[w0[ow]] + b * p11[w1[ow]]));
            }
        }
    }
}

static void S(interp_lin_bwd)(const void *vg, void *vgx, int64_t NC, int k, const int64_t *isz, const int64_t *osz,
                              int64_t *const *i0, int64_t *const *i1, void *const *vl0, void *const *vl1) {
    const T *g = vg;
    T *gx = vgx;
    const T *l0d = vl0[0], *l1d = vl1[0], *l0h = vl0[1], *l1h = vl1[1], *l0w = vl0[2], *l1w = vl1[2];
    const int64_t *w0 = i0[2], *w1 = i1[2];
    int64_t iplane = isz[0] * isz[1] * isz[2], oplane = osz[0] * osz[1] * osz[2], W = isz[2], H = isz[1];
    int nt = nn_threads(NC * oplane * (1 << k), NC);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t nc = 0; nc < NC; nc++) {
        T *xp = gx + nc * iplane;
        for (int64_t od = 0; od < osz[0]; od++)
            for (int64_t oh = 0; oh < osz[1]; oh++) {
                T *p00 = xp + (i0[0][od] * H + i0[1][oh]) * W, *p01 = xp + (i0[0][od] * H + i1[1][oh]) * W;
                T *p10 = xp + (i1[0][od] * H + i0[1][oh]) * W, *p11 = xp + (i1[0][od] * H + i1[1][oh]) * W;
                const T *gr = g + nc * oplane + (od * osz[1] + oh) * osz[2];
                T ad = l0d[od], bd = l1d[od], ah = l0h[oh], bh = l1h[oh];
                for (int64_t ow = 0; ow < osz[2]; ow++) {
                    T gv = gr[ow], a = l0w[ow] * gv, b = l1w[ow] * gv;
                    if (k == 1) {
                        p00[w0[ow]] += a;
                        p00[w1[ow]] += b;
                    } else if (k == 2) {
                        p00[w0[ow]] += ah * a; p00[w1[ow]] += ah * b;
                        p01[w0[ow]] += bh * a; p01[w1[ow]] += bh * b;
                    } else {
                        p00[w0[ow]] += ad * ah * a; p00[w1[ow]] += ad * ah * b;
                        p01[w0[ow]] += ad * bh * a; p01[w1[ow]] += ad * bh * b;
                        p10[w0[ow]] += bd * ah * a; p10[w1[ow]] += bd * ah * b;
                        p11[w0[ow]] += bd * bh * a; p11[w1[ow]] += bd * bh * b;
                    }
                }
            }
    }
}

/* ---- pad: B planes of P padded dims; map[p][o] = input index or -1 */
static void S(pad_fwd)(const void *vx, void *vy, int64_t B, int P, const int64_t *isz, const int64_t *osz,
                       int64_t *const *map, int64_t lo_last, double value) {
    const T *x = vx;
    T *y = vy;
    int64_t iplane = 1, oplane = 1, rows = 1, istr[ML_MAX_DIMS];
    for (int p = P - 1; p >= 0; p--) { istr[p] = iplane; iplane *= isz[p]; oplane *= osz[p]; }
    for (int p = 0; p < P - 1; p++) rows *= osz[p];
    int64_t inner = osz[P - 1], tasks = B * rows, in_last = isz[P - 1];
    const int64_t *mi = map[P - 1];
    T v = (T)value;
    int nt = nn_threads(B * oplane, tasks);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t b = t / rows, r = t % rows, off = b * iplane;
        bool fill = false;
        for (int p = P - 2; p >= 0; p--) {
            int64_t o = r % osz[p];
            r /= osz[p];
            int64_t m = map[p][o];
            if (m < 0) fill = true;
            else off += m * istr[p];
        }
        T *yr = y + t * inner;
        if (fill) {
            for (int64_t j = 0; j < inner; j++) yr[j] = v;
        } else {
            const T *xr = x + off;
            /* interior [j0, j1) maps to j - lo: a plain copy; the borders go through the map */
            int64_t j0 = lo_last > 0 ? lo_last : 0, j1 = lo_last + in_last < inner ? lo_last + in_last : inner;
            if (j1 < j0) j1 = j0;
            for (int64_t j = 0; j < j0; j++) yr[j] = mi[j] >= 0 ? xr[mi[j]] : v;
            if (j1 > j0) memcpy(yr + j0, xr + (j0 - lo_last), sizeof(T) * (size_t)(j1 - j0));
            for (int64_t j = j1; j < inner; j++) yr[j] = mi[j] >= 0 ? xr[mi[j]] : v;
        }
    }
}

static void S(pad_bwd)(const void *vg, void *vgx, int64_t B, int P, const int64_t *isz, const int64_t *osz,
                       int64_t *const *map, int64_t lo_last, double value) {
    (void)value;
    (void)lo_last;
    const T *g = vg;
    T *gx = vgx;
    int64_t iplane = 1, oplane = 1, rows = 1, istr[ML_MAX_DIMS];
    for (int p = P - 1; p >= 0; p--) { istr[p] = iplane; iplane *= isz[p]; oplane *= osz[p]; }
    for (int p = 0; p < P - 1; p++) rows *= osz[p];
    int64_t inner = osz[P - 1];
    const int64_t *mi = map[P - 1];
    int nt = nn_threads(B * oplane, B);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t b = 0; b < B; b++) {
        for (int64_t r0 = 0; r0 < rows; r0++) {
            int64_t r = r0, off = b * iplane;
            bool skip = false;
            for (int p = P - 2; p >= 0; p--) {
                int64_t o = r % osz[p];
                r /= osz[p];
                int64_t m = map[p][o];
                if (m < 0) skip = true;
                else off += m * istr[p];
            }
            if (skip) continue;
            const T *gr = g + (b * rows + r0) * inner;
            T *xr = gx + off;
            for (int64_t j = 0; j < inner; j++)
                if (mi[j] >= 0) xr[mi[j]] += gr[j];
        }
    }
}

/* ---- grid_sample: the taps of one sample point */
typedef struct {
    int n;
    int64_t off[8];
    T w[8], dw[3][8];  /* weight and its derivative wrt the unnormalized x, y, z coordinate */
    T gm[3];           /* d(unnormalized coord)/d(grid coord), 0 where border-clipped */
} S(gs_taps);

static inline T S(gs_coord)(T c, int64_t size, bool align, bool border, T *dmul) {
    T v, m;
    if (align) { m = (T)(size - 1) / 2; v = ((c + 1) / 2) * (T)(size - 1); }
    else { m = (T)size / 2; v = ((c + 1) * (T)size - 1) / 2; }
    if (border) {
        T mx = (T)(size - 1);
        if (v <= 0) { v = 0; m = 0; }
        else if (v >= mx) { v = mx; m = 0; }
    }
    *dmul = m;
    return v;
}

/* coordinates ordered (x, y, z) in grid, sizes isz = (D, H, W) */
static inline void S(gs_point)(const gs_params *p, const T *gp, S(gs_taps) *tp) {
    int k = p->k;
    const int64_t *isz = p->isz;
    T c[3] = {0, 0, 0};
    int64_t sz[3] = {isz[2], isz[1], isz[0]}, strd[3] = {1, isz[2], isz[1] * isz[2]};
    bool finite = true;
    for (int a = 0; a < k; a++) {
        c[a] = S(gs_coord)(gp[a], sz[a], p->align, p->padding == ML_GS_BORDER, &tp->gm[a]);
        /* far outside (or NaN): every tap is out of bounds */
        if (!(c[a] > (T)-2 && c[a] < (T)(sz[a] + 1))) finite = false;
    }
    if (k == 2) tp->gm[2] = 0;
    if (!finite) { tp->n = 0; return; }
    if (p->mode == ML_INTERP_NEAREST) {
        int64_t off = 0;
        bool in = true;
        for (int a = 0; a < k; a++) {
            int64_t i = (int64_t)RINTT(c[a]);
            if (i < 0 || i >= sz[a]) in = false;
            off += i * strd[a];
        }
        tp->n = in ? 1 : 0;
        if (in) { tp->off[0] = off; tp->w[0] = 1; }
        return;
    }
    int64_t i0[3];
    T t[3];
    for (int a = 0; a < k; a++) {
        T f = FLOORT(c[a]);
        i0[a] = (int64_t)f;
        t[a] = c[a] - f;
    }
    int nt = 1 << k, n = 0;
    for (int q = 0; q < nt; q++) {
        int64_t off = 0;
        bool in = true;
        T w = 1, d[3] = {1, 1, 1};
        for (int a = 0; a < k; a++) {
            int bit = (q >> a) & 1;
            int64_t i = i0[a] + bit;
            if (i < 0 || i >= sz[a]) in = false;
            off += i * strd[a];
            T f = bit ? t[a] : 1 - t[a];
            T df = bit ? (T)1 : (T)-1;
            w *= f;
            for (int b = 0; b < k; b++) d[b] *= (b == a) ? df : f;
        }
        if (!in) continue;
        tp->off[n] = off;
        tp->w[n] = w;
        for (int b = 0; b < 3; b++) tp->dw[b][n] = d[b];
        n++;
    }
    tp->n = n;
}

static void S(gs_fwd)(const gs_params *p, const T *x, const T *grid, T *y) {
    int64_t P = p->osz[0] * p->osz[1] * p->osz[2], iplane = p->isz[0] * p->isz[1] * p->isz[2], C = p->C;
    int64_t tot = p->N * P;
    int nt = nn_threads(tot * (C > 0 ? C : 1) * 4, tot);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t i = 0; i < tot; i++) {
        int64_t n = i / P, pt = i % P;
        S(gs_taps) tp;
        S(gs_point)(p, grid + i * p->k, &tp);
        const T *xn = x + n * C * iplane;
        T *yn = y + n * C * P + pt;
        for (int64_t c = 0; c < C; c++) {
            const T *xp = xn + c * iplane;
            T s = 0;
            for (int q = 0; q < tp.n; q++) s += tp.w[q] * xp[tp.off[q]];
            yn[c * P] = s;
        }
    }
}

static void S(gs_bwd_input)(const gs_params *p, const T *grid, const T *g, T *gx) {
    int64_t P = p->osz[0] * p->osz[1] * p->osz[2], iplane = p->isz[0] * p->isz[1] * p->isz[2], C = p->C;
    int64_t planes = p->N * C;
    int nt = nn_threads(planes * P * 4, planes);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t nc = 0; nc < planes; nc++) {
        int64_t n = nc / C;
        const T *gp = g + nc * P, *gr = grid + n * P * p->k;
        T *xp = gx + nc * iplane;
        for (int64_t pt = 0; pt < P; pt++) {
            S(gs_taps) tp;
            S(gs_point)(p, gr + pt * p->k, &tp);
            T gv = gp[pt];
            for (int q = 0; q < tp.n; q++) xp[tp.off[q]] += tp.w[q] * gv;
        }
    }
}

static void S(gs_bwd_grid)(const gs_params *p, const T *x, const T *grid, const T *g, T *gg) {
    int64_t P = p->osz[0] * p->osz[1] * p->osz[2], iplane = p->isz[0] * p->isz[1] * p->isz[2], C = p->C;
    int64_t tot = p->N * P;
    int k = p->k;
    int nt = nn_threads(tot * (C > 0 ? C : 1) * 4, tot);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t i = 0; i < tot; i++) {
        int64_t n = i / P, pt = i % P;
        S(gs_taps) tp;
        S(gs_point)(p, grid + i * k, &tp);
        double acc[3] = {0, 0, 0};
        const T *xn = x + n * C * iplane, *gn = g + n * C * P + pt;
        for (int64_t c = 0; c < C; c++) {
            const T *xp = xn + c * iplane;
            T gv = gn[c * P];
            for (int q = 0; q < tp.n; q++) {
                T v = xp[tp.off[q]] * gv;
                for (int a = 0; a < k; a++) acc[a] += (double)(v * tp.dw[a][q]);
            }
        }
        for (int a = 0; a < k; a++) gg[i * k + a] = (T)(acc[a] * (double)tp.gm[a]);
    }
}

/* ---- affine_grid */
static T *S(ag_base)(int64_t n, bool align) {
    T *b = malloc(sizeof(T) * (size_t)(n > 0 ? n : 1));
    if (!b) return NULL;
    if (n <= 1) { if (n == 1) b[0] = 0; return b; }
    T step = (T)2 / (T)(n - 1);
    int64_t half = n / 2;
    for (int64_t i = 0; i < n; i++) {
        T v = i < half ? (T)-1 + step * (T)i : (T)1 - step * (T)(n - i - 1);
        if (!align) v = v * (T)(n - 1) / (T)n;
        b[i] = v;
    }
    return b;
}

static ml_err S(ag_fwd)(const ag_params *p, const T *theta, T *y) {
    int k = p->k;
    T *bd = S(ag_base)(p->sz[0], p->align), *bh = S(ag_base)(p->sz[1], p->align), *bw = S(ag_base)(p->sz[2], p->align);
    if (!bd || !bh || !bw) { free(bd); free(bh); free(bw); return ml_seterr(ML_ERR_OOM, "affine_grid: out of memory"); }
    int64_t P = p->sz[0] * p->sz[1] * p->sz[2], tot = p->N * P;
    int nt = nn_threads(tot * k, tot);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t i = 0; i < tot; i++) {
        int64_t n = i / P, pt = i % P;
        int64_t w = pt % p->sz[2], h = (pt / p->sz[2]) % p->sz[1], d = pt / (p->sz[2] * p->sz[1]);
        const T *th = theta + n * k * (k + 1);
        T base[4] = {bw[w], bh[h], k == 3 ? bd[d] : (T)1, (T)1};
        for (int a = 0; a < k; a++) {
            T s = 0;
            for (int j = 0; j <= k; j++) s += base[j] * th[a * (k + 1) + j];
            y[i * k + a] = s;
        }
    }
    free(bd); free(bh); free(bw);
    return ML_OK;
}

static ml_err S(ag_bwd)(const ag_params *p, const T *g, T *gt) {
    int k = p->k;
    T *bd = S(ag_base)(p->sz[0], p->align), *bh = S(ag_base)(p->sz[1], p->align), *bw = S(ag_base)(p->sz[2], p->align);
    if (!bd || !bh || !bw) { free(bd); free(bh); free(bw); return ml_seterr(ML_ERR_OOM, "affine_grid backward: out of memory"); }
    int64_t P = p->sz[0] * p->sz[1] * p->sz[2], tasks = p->N * k;
    int nt = nn_threads(tasks * P, tasks);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t n = t / k;
        int a = (int)(t % k);
        double acc[4] = {0, 0, 0, 0};
        const T *gn = g + n * P * k;
        for (int64_t pt = 0; pt < P; pt++) {
            int64_t w = pt % p->sz[2], h = (pt / p->sz[2]) % p->sz[1], d = pt / (p->sz[2] * p->sz[1]);
            double gv = (double)gn[pt * k + a];
            acc[0] += gv * (double)bw[w];
            acc[1] += gv * (double)bh[h];
            if (k == 3) { acc[2] += gv * (double)bd[d]; acc[3] += gv; }
            else acc[2] += gv;
        }
        for (int j = 0; j <= k; j++) gt[(n * k + a) * (k + 1) + j] = (T)acc[j];
    }
    free(bd); free(bh); free(bw);
    return ML_OK;
}

#endif
