/* conv / conv_transpose for 1-3 spatial dims, PyTorch weight layouts and output-size rules.
 *
 * f32: oneDNN (de)convolution forward / backward_data / backward_weights primitives, cached.
 *      src/weights/dst use format_tag_any so oneDNN picks its blocked layouts; plain tensors are
 *      reordered in and out around each call (reorders are cached with the primitive, scratch
 *      buffers come from a reuse pool). The reordered output gradient is shared by backward-data
 *      and backward-weights. 3-D backward-weights with depth padding runs on a depth-prepadded
 *      copy (see prepad_geo): oneDNN's avx2 kernel rejects depth padding and its gemm fallback is
 *      ~10x slower.
 * f64: reference OpenMP loops (also the f32 fallback for the rare configs oneDNN rejects).
 *
 * The reference kernels are written for the "conv relation" between a small side X
 * [N, Cx, Ix..] and a big side Y [N, Cy, Oy..] with W [Cy, Cx/G, K..]:
 *   Y[n, cy, o] = sum_{cx in group(cy), k} X[n, cx, o*s - p + k*d] * W[cy, cx', k]
 * conv:           X = input,  Y = output
 * conv_transpose: X = output, Y = input  (PyTorch's [Cin, Cout/G, K] weight is exactly W)
 * so conv forward = conv_transpose backward-data and vice versa. */
#include "ml_dnnl_priv.h"
#include "../cuda/ml_cuda.h"
#include "ml_conv_direct.h"

#include <dnnl_debug.h>

#include <stdlib.h>
#include <string.h>

enum { CVK = 0x434f4e56 };
enum { P_FWD_TRAIN = 0, P_FWD_INFER = 1, P_BWD_DATA = 2, P_BWD_W = 3 };

typedef struct {
    int k;
    bool tr;
    int64_t N, Cin, Cout, G; /* x channels, y channels */
    int64_t I[3], O[3], K[3], s[3], p[3], d[3], op[3];
} cgeo;

static const char *cname(const cgeo *g) { return mld_opname(g->tr ? "conv_transpose" : "conv", g->k); }

/* ------------------------------------------------------------ reference (f64) */
typedef struct {
    int64_t N, Cx, Cy, G;
    int64_t Ix[3], Oy[3], K[3], s[3], p[3], d[3];
} relgeo;

static void rel_of(const cgeo *g, relgeo *r) {
    r->N = g->N;
    r->G = g->G;
    r->Cx = g->tr ? g->Cout : g->Cin;
    r->Cy = g->tr ? g->Cin : g->Cout;
    for (int i = 0; i < 3; i++) {
        r->Ix[i] = g->tr ? g->O[i] : g->I[i];
        r->Oy[i] = g->tr ? g->I[i] : g->O[i];
        r->K[i] = g->K[i];
        r->s[i] = g->s[i];
        r->p[i] = g->p[i];
        r->d[i] = g->d[i];
    }
}

static inline int64_t prod3(const int64_t *v) { return v[0] * v[1] * v[2]; }

/* Y = rel(X, W) (+ B per Y channel) */
static void ref_fwd(const relgeo *g, const double *X, const double *W, const double *B, double *Y) {
    int64_t Cxg = g->Cx / g->G, Cyg = g->Cy / g->G;
    int64_t Isz = prod3(g->Ix), Osz = prod3(g->Oy), Ksz = prod3(g->K);
    int64_t tasks = g->N * g->Cy;
#pragma omp parallel for schedule(dynamic, 1) if (tasks > 1 && tasks * Osz * Ksz * Cxg > 32768)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t n = t / g->Cy, cy = t % g->Cy, grp = cy / Cyg;
        double *y = Y + t * Osz;
        for (int64_t o0 = 0; o0 < g->Oy[0]; o0++)
            for (int64_t o1 = 0; o1 < g->Oy[1]; o1++)
                for (int64_t o2 = 0; o2 < g->Oy[2]; o2++) {
                    double acc = B ? B[cy] : 0.0;
                    for (int64_t cx = 0; cx < Cxg; cx++) {
                        const double *x = X + (n * g->Cx + grp * Cxg + cx) * Isz;
                        const double *w = W + (cy * Cxg + cx) * Ksz;
                        for (int64_t k0 = 0; k0 < g->K[0]; k0++) {
                            int64_t i0 = o0 * g->s[0] - g->p[0] + k0 * g->d[0];
                            if (i0 < 0 || i0 >= g->Ix[0]) continue;
                            for (int64_t k1 = 0; k1 < g->K[1]; k1++) {
                                int64_t i1 = o1 * g->s[1] - g->p[1] + k1 * g->d[1];
                                if (i1 < 0 || i1 >= g->Ix[1]) continue;
                                for (int64_t k2 = 0; k2 < g->K[2]; k2++) {
                                    int64_t i2 = o2 * g->s[2] - g->p[2] + k2 * g->d[2];
                                    if (i2 < 0 || i2 >= g->Ix[2]) continue;
                                    acc += x[(i0 * g->Ix[1] + i1) * g->Ix[2] + i2] * w[(k0 * g->K[1] + k1) * g->K[2] + k2];
                                }
                            }
                        }
                    }
                    y[(o0 * g->Oy[1] + o1) * g->Oy[2] + o2] = acc;
                }
    }
}

/* Xg = rel^T(Yg, W) (+ B per X channel) */
static void ref_bwd_data(const relgeo *g, const double *Yg, const double *W, const double *B, double *Xg) {
    int64_t Cxg = g->Cx / g->G, Cyg = g->Cy / g->G;
    int64_t Isz = prod3(g->Ix), Osz = prod3(g->Oy), Ksz = prod3(g->K);
    int64_t tasks = g->N * g->Cx;
#pragma omp parallel for schedule(dynamic, 1) if (tasks > 1 && tasks * Isz * Ksz * Cyg > 32768)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t n = t / g->Cx, cx = t % g->Cx, grp = cx / Cxg, cxl = cx % Cxg;
        double *xg = Xg + t * Isz;
        for (int64_t i0 = 0; i0 < g->Ix[0]; i0++)
            for (int64_t i1 = 0; i1 < g->Ix[1]; i1++)
                for (int64_t i2 = 0; i2 < g->Ix[2]; i2++) {
                    double acc = B ? B[cx] : 0.0;
                    for (int64_t cy = grp * Cyg; cy < (grp + 1) * Cyg; cy++) {
                        const double *yg = Yg + (n * g->Cy + cy) * Osz;
                        const double *w = W + (cy * Cxg + cxl) * Ksz;
                        for (int64_t k0 = 0; k0 < g->K[0]; k0++) {
                            int64_t t0 = i0 + g->p[0] - k0 * g->d[0];
                            if (t0 < 0 || t0 % g->s[0]) continue;
                            int64_t o0 = t0 / g->s[0];
                            if (o0 >= g->Oy[0]) continue;
                            for (int64_t k1 = 0; k1 < g->K[1]; k1++) {
                                int64_t t1 = i1 + g->p[1] - k1 * g->d[1];
                                if (t1 < 0 || t1 % g->s[1]) continue;
                                int64_t o1 = t1 / g->s[1];
                                if (o1 >= g->Oy[1]) continue;
                                for (int64_t k2 = 0; k2 < g->K[2]; k2++) {
                                    int64_t t2 = i2 + g->p[2] - k2 * g->d[2];
                                    if (t2 < 0 || t2 % g->s[2]) continue;
                                    int64_t o2 = t2 / g->s[2];
                                    if (o2 >= g->Oy[2]) continue;
                                    acc += yg[(o0 * g->Oy[1] + o1) * g->Oy[2] + o2] * w[(k0 * g->K[1] + k1) * g->K[2] + k2];
                                }
                            }
                        }
                    }
                    xg[(i0 * g->Ix[1] + i1) * g->Ix[2] + i2] = acc;
                }
    }
}

/* Wg[cy, cx', k] = sum_{n, o} Yg[n, cy, o] * X[n, cx, o*s - p + k*d] */
static void ref_bwd_w(const relgeo *g, const double *X, const double *Yg, double *Wg) {
    int64_t Cxg = g->Cx / g->G, Cyg = g->Cy / g->G;
    int64_t Isz = prod3(g->Ix), Osz = prod3(g->Oy), Ksz = prod3(g->K);
    int64_t tasks = g->Cy * Cxg;
#pragma omp parallel for schedule(dynamic, 1) if (tasks > 1 && tasks * Ksz * Osz * g->N > 32768)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t cy = t / Cxg, cxl = t % Cxg, cx = (cy / Cyg) * Cxg + cxl;
        double *wg = Wg + t * Ksz;
        for (int64_t k0 = 0; k0 < g->K[0]; k0++)
            for (int64_t k1 = 0; k1 < g->K[1]; k1++)
                for (int64_t k2 = 0; k2 < g->K[2]; k2++) {
                    double acc = 0.0;
                    for (int64_t n = 0; n < g->N; n++) {
                        const double *yg = Yg + (n * g->Cy + cy) * Osz;
                        const double *x = X + (n * g->Cx + cx) * Isz;
                        for (int64_t o0 = 0; o0 < g->Oy[0]; o0++) {
                            int64_t i0 = o0 * g->s[0] - g->p[0] + k0 * g->d[0];
                            if (i0 < 0 || i0 >= g->Ix[0]) continue;
                            for (int64_t o1 = 0; o1 < g->Oy[1]; o1++) {
                                int64_t i1 = o1 * g->s[1] - g->p[1] + k1 * g->d[1];
                                if (i1 < 0 || i1 >= g->Ix[1]) continue;
                                for (int64_t o2 = 0; o2 < g->Oy[2]; o2++) {
                                    int64_t i2 = o2 * g->s[2] - g->p[2] + k2 * g->d[2];
                                    if (i2 < 0 || i2 >= g->Ix[2]) continue;
                                    acc += yg[(o0 * g->Oy[1] + o1) * g->Oy[2] + o2] * x[(i0 * g->Ix[1] + i1) * g->Ix[2] + i2];
                                }
                            }
                        }
                    }
                    wg[(k0 * g->K[1] + k1) * g->K[2] + k2] = acc;
                }
    }
}

/* per-channel sums of a contiguous [N, C, S] (bias gradient), f32 or f64 -> NEW [C] */
static ml_err chan_sum(ml_tensor **out, ml_tensor *g) {
    int64_t N = g->shape[0], C = g->shape[1], S = 1;
    for (int i = 2; i < g->ndim; i++) S *= g->shape[i];
    ml_dtype dt = (ml_dtype)g->dtype;
    ml_tensor *r;
    ml_err e = ml_tensor_empty(&r, dt, 1, &C);
    if (e) return e;
    const char *src = (const char *)ml_tensor_data(g);
    char *dst = (char *)ml_tensor_data(r);
#pragma omp parallel for schedule(static) if (C > 1 && N * C * S > 65536)
    for (int64_t c = 0; c < C; c++) {
        double acc = 0;
        for (int64_t n = 0; n < N; n++) {
            int64_t base = (n * C + c) * S;
            if (dt == ML_F64) {
                const double *p = (const double *)src + base;
                for (int64_t i = 0; i < S; i++) acc += p[i];
            } else {
                const float *p = (const float *)src + base;
                double part = 0;
                for (int64_t i = 0; i < S; i++) part += p[i];
                acc += part;
            }
        }
        if (dt == ML_F64) ((double *)dst)[c] = acc;
        else ((float *)dst)[c] = (float)acc;
    }
    *out = r;
    return ML_OK;
}

/* ------------------------------------------------------------ shapes */
static void x_shape(const cgeo *g, int64_t *sh) {
    sh[0] = g->N; sh[1] = g->Cin;
    for (int i = 0; i < g->k; i++) sh[2 + i] = g->I[3 - g->k + i];
}
static void y_shape(const cgeo *g, int64_t *sh) {
    sh[0] = g->N; sh[1] = g->Cout;
    for (int i = 0; i < g->k; i++) sh[2 + i] = g->O[3 - g->k + i];
}
static void w_shape(const cgeo *g, int64_t *sh) {
    sh[0] = g->tr ? g->Cin : g->Cout;
    sh[1] = g->tr ? g->Cout / g->G : g->Cin / g->G;
    for (int i = 0; i < g->k; i++) sh[2 + i] = g->K[3 - g->k + i];
}

/* ------------------------------------------------------------ oneDNN (f32) */
typedef struct {
    const cgeo *g;
    int prop;
    bool bias;
    const cgeo *orig; /* backward-weights on a depth-prepadded geometry (see prepad_geo) */
} dbuild;

/* Spatial values (last k of the padded 3) into dnnl dims. */
static void sp(const cgeo *g, const int64_t *v, int64_t add, dnnl_dims_t out) {
    for (int i = 0; i < g->k; i++) out[i] = v[3 - g->k + i] + add;
}

static void dnnl_pads(const cgeo *g, dnnl_dims_t pl, dnnl_dims_t pr) {
    for (int i = 0; i < g->k; i++) {
        int j = 3 - g->k + i;
        pl[i] = g->p[j];
        if (g->tr) pr[i] = g->p[j] - g->op[j];
        else pr[i] = (g->O[j] - 1) * g->s[j] + (g->K[j] - 1) * g->d[j] + 1 - g->I[j] - g->p[j];
    }
}

/* oneDNN rejects right padding <= -stride (conv_transpose with output_padding >= stride + padding) */
static bool dnnl_geometry_ok(const cgeo *g) {
    dnnl_dims_t pl, pr;
    dnnl_pads(g, pl, pr);
    for (int i = 0; i < g->k; i++)
        if (pr[i] + g->s[3 - g->k + i] <= 0) return false;
    return true;
}

/* oneDNN's jit (avx2) backward-weights kernel does not take depth padding in 3-D and falls back
 * to a slow gemm/ref implementation. For those cases we run backward-weights on the big side
 * (conv: x, conv_transpose: the output gradient) copied into a zeroed buffer that already holds
 * the depth padding, with depth padding 0 in the descriptor. Returns false if not needed. */
static bool prepad_geo(const cgeo *g, cgeo *gp) {
    if (g->k != 3) return false;
    dnnl_dims_t pl, pr;
    dnnl_pads(g, pl, pr);
    if (pl[0] == 0 && pr[0] == 0) return false;
    *gp = *g;
    if (!g->tr) gp->I[0] = g->I[0] + pl[0] + pr[0];
    else gp->O[0] = g->O[0] + pl[0] + pr[0];
    gp->p[0] = 0;
    gp->op[0] = 0;
    return true;
}

/* conv_transpose whose right depth padding is negative (output_padding > padding): the prepadded
 * buffer drops the last output-gradient planes, which do not reach the weights but do count for
 * the bias, so the bias gradient is then summed separately. */
static bool prepad_drops_planes(const cgeo *g) {
    if (g->k != 3 || !g->tr) return false;
    dnnl_dims_t pl, pr;
    dnnl_pads(g, pl, pr);
    return pr[0] < 0;
}

static void fill_key(mld_key *key, const cgeo *g, int prop, bool bias) {
    mld_k(key, CVK);
    mld_k(key, g->tr);
    mld_k(key, prop);
    mld_k(key, bias);
    mld_k(key, g->k);
    mld_k(key, g->N);
    mld_k(key, g->Cin);
    mld_k(key, g->Cout);
    mld_k(key, g->G);
    mld_ka(key, 3, g->I);
    mld_ka(key, 3, g->O);
    mld_ka(key, 3, g->K);
    mld_ka(key, 3, g->s);
    mld_ka(key, 3, g->p);
    mld_ka(key, 3, g->d);
    mld_ka(key, 3, g->op);
}

static ml_err dconv_get(mld_entry **out, const cgeo *g, int prop, bool bias);

/* md slots: 0 src user, 1 weights user, 2 dst user, 3 bias, 4 src prim, 5 weights prim, 6 dst prim
 * (src/dst mean x/y; for backward the "diff" versions).
 * rd: 0 src-side user->prim (fwd, bwd_w) or diff_dst user->prim (bwd_data); 1 weights user<->prim;
 *     2 dst prim->user (fwd), diff_src prim->user (bwd_data), diff_dst user->prim (bwd_w). */
static ml_err dconv_build(mld_entry *e, void *ud) {
    const dbuild *b = ud;
    const cgeo *g = b->g;
    const char *op = cname(g);
    dnnl_engine_t eng = mld_engine(op);
    if (!eng) return ML_ERR_INTERNAL;
    int nd = g->k + 2;
    int64_t xs[5], ys[5], wd[6], wst[6];
    x_shape(g, xs);
    y_shape(g, ys);
    int64_t Cs = g->Cin, Cd = g->Cout, G = g->G, Ksz = prod3(g->K);
    int wnd = G > 1 ? nd + 1 : nd, o = G > 1 ? 1 : 0;
    if (G > 1) wd[0] = G;
    wd[o] = Cd / G;
    wd[o + 1] = Cs / G;
    for (int i = 0; i < g->k; i++) wd[o + 2 + i] = g->K[3 - g->k + i];
    /* user weight strides: conv [Cout, Cin/G, K] is dense goi..; conv_transpose [Cin, Cout/G, K] is g,i,o order */
    {
        int64_t ks = 1;
        for (int i = g->k - 1; i >= 0; i--) { wst[o + 2 + i] = ks; ks *= wd[o + 2 + i]; }
        if (!g->tr) {
            wst[o + 1] = Ksz;
            wst[o] = (Cs / G) * Ksz;
        } else {
            wst[o] = Ksz;
            wst[o + 1] = (Cd / G) * Ksz;
        }
        if (G > 1) wst[0] = (Cs / G) * (Cd / G) * Ksz;
    }
    ml_err err;
    dnnl_memory_desc_t sa, wa, da;
    int64_t bd[1] = {Cd};
    if ((err = mld_md_plain(&e->md[0], op, nd, xs)) || (err = mld_md_strided(&e->md[1], op, wnd, wd, wst)) ||
        (err = mld_md_plain(&e->md[2], op, nd, ys)) || (err = mld_md_plain(&e->md[3], op, 1, bd)) ||
        (err = mld_md_any(&sa, op, nd, xs)) || (err = mld_md_any(&wa, op, wnd, wd)) ||
        (err = mld_md_any(&da, op, nd, ys)))
        return err;
    dnnl_dims_t strides, dil, pl, pr;
    sp(g, g->s, 0, strides);
    sp(g, g->d, -1, dil);
    dnnl_pads(g, pl, pr);
    const dnnl_memory_desc_t *bmd = b->bias ? &e->md[3] : NULL;
    const_dnnl_primitive_desc_t hint = NULL;
    if (b->prop == P_BWD_DATA || b->prop == P_BWD_W) {
        if ((err = dconv_get(&e->hint, g, P_FWD_TRAIN, b->bias && b->prop == P_BWD_W))) return err;
        if (e->hint->unsupported) return ml_seterr(ML_ERR_UNSUPPORTED, "%s: no oneDNN forward implementation", op);
        hint = e->hint->pd;
    }
    dnnl_status_t st;
    if (!g->tr) {
        dnnl_convolution_desc_t cd;
        if (b->prop == P_FWD_TRAIN || b->prop == P_FWD_INFER)
            st = dnnl_dilated_convolution_forward_desc_init(
                &cd, b->prop == P_FWD_TRAIN ? dnnl_forward_training : dnnl_forward_inference, dnnl_convolution_direct,
                &sa, &wa, bmd, &da, strides, dil, pl, pr);
        else if (b->prop == P_BWD_DATA)
            st = dnnl_dilated_convolution_backward_data_desc_init(&cd, dnnl_convolution_direct, &sa, &wa, &da, strides,
                                                                  dil, pl, pr);
        else
            st = dnnl_dilated_convolution_backward_weights_desc_init(&cd, dnnl_convolution_direct, &sa, &wa, bmd, &da,
                                                                     strides, dil, pl, pr);
        /* arguments were validated by PyTorch's rules: a rejection is a oneDNN limitation */
        if (st != dnnl_success) return ml_seterr(ML_ERR_UNSUPPORTED, "%s: oneDNN rejects this geometry (%s)", op, dnnl_status2str(st));
        st = dnnl_primitive_desc_create(&e->pd, &cd, NULL, eng, hint);
    } else {
        dnnl_deconvolution_desc_t cd;
        if (b->prop == P_FWD_TRAIN || b->prop == P_FWD_INFER)
            st = dnnl_dilated_deconvolution_forward_desc_init(
                &cd, b->prop == P_FWD_TRAIN ? dnnl_forward_training : dnnl_forward_inference,
                dnnl_deconvolution_direct, &sa, &wa, bmd, &da, strides, dil, pl, pr);
        else if (b->prop == P_BWD_DATA)
            st = dnnl_dilated_deconvolution_backward_data_desc_init(&cd, dnnl_deconvolution_direct, &sa, &wa, &da,
                                                                    strides, dil, pl, pr);
        else
            st = dnnl_dilated_deconvolution_backward_weights_desc_init(&cd, dnnl_deconvolution_direct, &sa, &wa, bmd,
                                                                       &da, strides, dil, pl, pr);
        if (st != dnnl_success) return ml_seterr(ML_ERR_UNSUPPORTED, "%s: oneDNN rejects this geometry (%s)", op, dnnl_status2str(st));
        st = dnnl_primitive_desc_create(&e->pd, &cd, NULL, eng, hint);
    }
    if (st != dnnl_success) {
        e->pd = NULL;
        return mld_fail(st, op, "primitive descriptor");
    }
    MLD_TRY(dnnl_primitive_create(&e->prim, e->pd), op, "primitive creation");
    const dnnl_memory_desc_t *q;
    if (b->prop == P_FWD_TRAIN || b->prop == P_FWD_INFER) {
        e->md[4] = *dnnl_primitive_desc_query_md(e->pd, dnnl_query_src_md, 0);
        e->md[5] = *dnnl_primitive_desc_query_md(e->pd, dnnl_query_weights_md, 0);
        e->md[6] = *dnnl_primitive_desc_query_md(e->pd, dnnl_query_dst_md, 0);
        if ((err = mld_make_reorder(&e->rd[0], op, &e->md[0], &e->md[4])) ||
            (err = mld_make_reorder(&e->rd[1], op, &e->md[1], &e->md[5])) ||
            (err = mld_make_reorder(&e->rd[2], op, &e->md[6], &e->md[2])))
            return err;
    } else if (b->prop == P_BWD_DATA) {
        e->md[4] = *dnnl_primitive_desc_query_md(e->pd, dnnl_query_diff_src_md, 0);
        e->md[5] = *dnnl_primitive_desc_query_md(e->pd, dnnl_query_weights_md, 0);
        e->md[6] = *dnnl_primitive_desc_query_md(e->pd, dnnl_query_diff_dst_md, 0);
        if ((err = mld_make_reorder(&e->rd[0], op, &e->md[2], &e->md[6])) ||
            (err = mld_make_reorder(&e->rd[1], op, &e->md[1], &e->md[5])) ||
            (err = mld_make_reorder(&e->rd[2], op, &e->md[4], &e->md[0])))
            return err;
    } else {
        e->md[4] = *dnnl_primitive_desc_query_md(e->pd, dnnl_query_src_md, 0);
        e->md[5] = *dnnl_primitive_desc_query_md(e->pd, dnnl_query_diff_weights_md, 0);
        e->md[6] = *dnnl_primitive_desc_query_md(e->pd, dnnl_query_diff_dst_md, 0);
        if (b->bias && (q = dnnl_primitive_desc_query_md(e->pd, dnnl_query_diff_weights_md, 1)) &&
            !dnnl_memory_desc_equal(q, &e->md[3]))
            return ml_seterr(ML_ERR_UNSUPPORTED, "%s: unexpected bias layout", op);
        if ((err = mld_make_reorder(&e->rd[0], op, &e->md[0], &e->md[4])) ||
            (err = mld_make_reorder(&e->rd[1], op, &e->md[5], &e->md[1])) ||
            (err = mld_make_reorder(&e->rd[2], op, &e->md[2], &e->md[6])))
            return err;
        if (b->orig) {
            /* md[7]: the original big-side tensor's planes [0, Dc) (plain); md[8]: where they go in
             * the padded primitive buffer (depth offset = left padding); rd[3] copies them. */
            const cgeo *og = b->orig;
            int64_t full[5], dims[5], fst[5];
            if (!og->tr) x_shape(og, full);
            else y_shape(og, full);
            ml_contiguous_strides(5, full, fst);
            int64_t Dp = og->tr ? g->O[0] : g->I[0], lpad = og->p[0];
            int64_t Dc = full[2] < Dp - lpad ? full[2] : Dp - lpad;
            memcpy(dims, full, sizeof dims);
            dims[2] = Dc;
            if ((err = mld_md_strided(&e->md[7], op, 5, dims, fst))) return err;
            dnnl_dims_t sd = {dims[0], dims[1], dims[2], dims[3], dims[4]}, off = {0, 0, lpad, 0, 0};
            MLD_TRY(dnnl_memory_desc_init_submemory(&e->md[8], &e->md[og->tr ? 6 : 4], sd, off), op,
                    "padded sub-memory descriptor");
            dnnl_primitive_desc_t rpd;
            MLD_TRY(dnnl_reorder_primitive_desc_create(&rpd, &e->md[7], eng, &e->md[8], eng, NULL), op,
                    "padded reorder descriptor");
            dnnl_status_t rs = dnnl_primitive_create(&e->rd[3], rpd);
            dnnl_primitive_desc_destroy(rpd);
            if (rs != dnnl_success) { e->rd[3] = NULL; return mld_fail(rs, op, "padded reorder"); }
        }
    }
    return ML_OK;
}

static ml_err dconv_get(mld_entry **out, const cgeo *g, int prop, bool bias) {
    mld_key key = {.n = 0};
    fill_key(&key, g, prop, bias);
    dbuild b = {g, prop, bias, NULL};
    return mld_get(out, key.w, key.n, dconv_build, &b);
}

/* backward-weights entry for the prepadded geometry gp of g */
static ml_err dconv_get_prepad(mld_entry **out, const cgeo *g, const cgeo *gp, bool bias) {
    mld_key key = {.n = 0};
    fill_key(&key, gp, P_BWD_W, bias);
    mld_k(&key, 0x50524550); /* "PREP" */
    mld_k(&key, g->tr ? g->O[0] : g->I[0]);
    mld_k(&key, g->p[0]);
    dbuild b = {gp, P_BWD_W, bias, g};
    return mld_get(out, key.w, key.n, dconv_build, &b);
}

/* The layouts of x (or the input gradient) and y: NC16 when the primitive uses exactly that layout
 * for a tensor of these dims; such a tensor is read or written in place, anything else is
 * reordered from/to plain strides. */
static bool prim_nc16(const mld_entry *e, int slot, const cgeo *g, bool x_side) {
    int64_t d[5];
    if (x_side) x_shape(g, d);
    else y_shape(g, d);
    return mld_md_is_nc16(&e->md[slot], g->k + 2, d);
}

/* y = conv(x, w) + b, f32; x plain-contiguous or NC16 (made plain here if the primitive wants
 * another layout); y is written in NC16 when that is the primitive's layout, else plain. */
static ml_err dconv_fwd(const cgeo *g, bool training, ml_tensor *x, const float *w, const float *b, ml_tensor *y) {
    const char *op = cname(g);
    mld_entry *e;
    /* inference with an NC16 input or 16k output channels takes the training primitive too: oneDNN's
     * inference pick (channels-last brgconv) would reorder every activation in and out, the training one
     * keeps NC16 from conv to conv (U-Net eval forward, 2x96^3: 258-275 -> 233-240 CPU ms) */
    bool blocked = x->layout == ML_LAYOUT_NC16 || g->Cout % 16 == 0;
    ml_err err = dconv_get(&e, g, training || blocked ? P_FWD_TRAIN : P_FWD_INFER, b != NULL);
    if (err) return err;
    if (e->unsupported) { mld_put(e); return ml_seterr(ML_ERR_UNSUPPORTED, "%s: no oneDNN implementation", op); }
    mld_buf ts = {0}, tw = {0}, td = {0};
    void *sp_ = NULL, *wp = NULL, *dp = ml_tensor_data(y);
    mld_args A = {0};
    bool yblk = prim_nc16(e, 6, g, false);
    if (x->layout && !prim_nc16(e, 4, g, true) && (err = ml_tensor_plain(x))) goto done;
    if (x->layout) sp_ = ml_tensor_data(x);
    else if ((err = mld_to_prim(op, e->rd[0], &e->md[0], ml_tensor_data(x), &e->md[4], &ts, &sp_))) goto done;
    if ((err = mld_to_prim(op, e->rd[1], &e->md[1], w, &e->md[5], &tw, &wp))) goto done;
    if (e->rd[2] && !yblk) {
        if ((err = mld_buf_alloc(&td, dnnl_memory_desc_get_size(&e->md[6]), op))) goto done;
        dp = td.p;
    }
    if ((err = mld_arg(&A, op, DNNL_ARG_SRC, &e->md[4], sp_)) || (err = mld_arg(&A, op, DNNL_ARG_WEIGHTS, &e->md[5], wp)) ||
        (err = mld_arg(&A, op, DNNL_ARG_DST, &e->md[6], dp)) ||
        (b && (err = mld_arg(&A, op, DNNL_ARG_BIAS, &e->md[3], (void *)b)))) {
        mld_args_free(&A);
        goto done;
    }
    if ((err = mld_exec(op, e->prim, &A))) goto done;
    if (yblk) mld_mark_nc16(y);
    else if (e->rd[2]) err = mld_reorder(op, e->rd[2], &e->md[6], dp, &e->md[2], ml_tensor_data(y));
done:
    mld_buf_free(&ts);
    mld_buf_free(&tw);
    mld_buf_free(&td);
    mld_put(e);
    return err;
}

/* oneDNN's jit backward-weights kernels take depth padding themselves (avx512); the prepadded copy
 * (prepad_geo) is only for implementations that do not (avx2 jit rejects it, gemm/ref are slow). */
static bool impl_is_jit(const mld_entry *e) {
    const char *name = NULL;
    if (!e->pd || dnnl_primitive_desc_query(e->pd, dnnl_query_impl_info_str, 0, &name) != dnnl_success || !name)
        return false;
    return strncmp(name, "jit", 3) == 0 || strncmp(name, "brg", 3) == 0;
}

/* gx = conv backward-data (if gx), gw (+ gb) = backward-weights (if gw). x (for gw) and gy are
 * plain-contiguous or NC16; gx is written in NC16 when gx_nc16 allows it and the primitive uses it. */
static ml_err dconv_bwd(const cgeo *g, ml_tensor *x, const float *w, ml_tensor *gy, ml_tensor *gx, float *gw,
                        float *gb, bool gx_nc16) {
    const char *op = cname(g);
    mld_entry *ed = NULL, *ew = NULL;
    mld_buf tdd = {0}, tw = {0}, tds = {0}, tsrc = {0}, tdd2 = {0}, tdw = {0};
    mld_args A = {0};
    ml_err err = ML_OK;
    void *ddp = NULL;
    bool prep = false;
    cgeo gp;
    /* primitives first: they decide which blocked inputs can be read in place */
    if (gx) {
        if ((err = dconv_get(&ed, g, P_BWD_DATA, false))) goto done;
        if (ed->unsupported) { err = ml_seterr(ML_ERR_UNSUPPORTED, "%s: no oneDNN backward-data implementation", op); goto done; }
    }
    if (gw) {
        prep = prepad_geo(g, &gp);
        if ((err = dconv_get(&ew, g, P_BWD_W, gb != NULL))) goto done;
        if (prep && !ew->unsupported && impl_is_jit(ew)) prep = false;
        if (prep) {
            mld_put(ew);
            ew = NULL;
            if ((err = dconv_get_prepad(&ew, g, &gp, gb != NULL))) goto done;
        }
        if (ew->unsupported) { err = ml_seterr(ML_ERR_UNSUPPORTED, "%s: no oneDNN backward-weights implementation", op); goto done; }
    }
    if (gy->layout && ((ed && !prim_nc16(ed, 6, g, false)) || (ew && (!prim_nc16(ew, 6, g, false) || (prep && g->tr)))) &&
        (err = ml_tensor_plain(gy)))
        goto done;
    if (ew && x->layout && (!prim_nc16(ew, 4, g, true) || (prep && !g->tr)) && (err = ml_tensor_plain(x))) goto done;
    if (gx) {
        void *wp, *dsp = ml_tensor_data(gx);
        bool xblk = gx_nc16 && prim_nc16(ed, 4, g, true);
        if (gy->layout) ddp = ml_tensor_data(gy);
        else if ((err = mld_to_prim(op, ed->rd[0], &ed->md[2], ml_tensor_data(gy), &ed->md[6], &tdd, &ddp))) goto done;
        if ((err = mld_to_prim(op, ed->rd[1], &ed->md[1], w, &ed->md[5], &tw, &wp))) goto done;
        if (ed->rd[2] && !xblk) {
            if ((err = mld_buf_alloc(&tds, dnnl_memory_desc_get_size(&ed->md[4]), op))) goto done;
            dsp = tds.p;
        }
        if ((err = mld_arg(&A, op, DNNL_ARG_DIFF_DST, &ed->md[6], ddp)) ||
            (err = mld_arg(&A, op, DNNL_ARG_WEIGHTS, &ed->md[5], wp)) ||
            (err = mld_arg(&A, op, DNNL_ARG_DIFF_SRC, &ed->md[4], dsp))) {
            mld_args_free(&A);
            goto done;
        }
        if ((err = mld_exec(op, ed->prim, &A))) goto done;
        if (xblk) mld_mark_nc16(gx);
        else if (ed->rd[2] && (err = mld_reorder(op, ed->rd[2], &ed->md[4], dsp, &ed->md[0], ml_tensor_data(gx)))) goto done;
        mld_buf_free(&tw);
        mld_buf_free(&tds);
    }
    if (gw) {
        void *srcp = NULL, *dd2 = NULL, *dwp = gw;
        mld_buf *padbuf = g->tr ? &tdd2 : &tsrc;
        if (prep) { /* zeroed padded buffer with the big-side tensor copied into its interior */
            int slot = g->tr ? 6 : 4;
            if ((err = mld_buf_alloc(padbuf, dnnl_memory_desc_get_size(&ew->md[slot]), op))) goto done;
            memset(padbuf->p, 0, padbuf->n);
            if ((err = mld_reorder(op, ew->rd[3], &ew->md[7], ml_tensor_data(g->tr ? gy : x), &ew->md[8], padbuf->p)))
                goto done;
            if (g->tr) dd2 = padbuf->p;
            else srcp = padbuf->p;
        }
        if (!srcp) {
            if (x->layout) srcp = ml_tensor_data(x);
            else if ((err = mld_to_prim(op, ew->rd[0], &ew->md[0], ml_tensor_data(x), &ew->md[4], &tsrc, &srcp))) goto done;
        }
        if (!dd2) {
            if (gy->layout) dd2 = ml_tensor_data(gy);
            else if (ed && ddp && dnnl_memory_desc_equal(&ed->md[6], &ew->md[6])) dd2 = ddp; /* reuse the reordered gy */
            else if ((err = mld_to_prim(op, ew->rd[2], &ew->md[2], ml_tensor_data(gy), &ew->md[6], &tdd2, &dd2))) goto done;
        }
        if (ew->rd[1]) {
            if ((err = mld_buf_alloc(&tdw, dnnl_memory_desc_get_size(&ew->md[5]), op))) goto done;
            dwp = tdw.p;
        }
        if ((err = mld_arg(&A, op, DNNL_ARG_SRC, &ew->md[4], srcp)) ||
            (err = mld_arg(&A, op, DNNL_ARG_DIFF_DST, &ew->md[6], dd2)) ||
            (err = mld_arg(&A, op, DNNL_ARG_DIFF_WEIGHTS, &ew->md[5], dwp)) ||
            (gb && (err = mld_arg(&A, op, DNNL_ARG_DIFF_BIAS, &ew->md[3], gb)))) {
            mld_args_free(&A);
            goto done;
        }
        if ((err = mld_exec(op, ew->prim, &A))) goto done;
        if (ew->rd[1] && (err = mld_reorder(op, ew->rd[1], &ew->md[5], dwp, &ew->md[1], gw))) goto done;
    }
done:
    mld_buf_free(&tdd);
    mld_buf_free(&tw);
    mld_buf_free(&tds);
    mld_buf_free(&tsrc);
    mld_buf_free(&tdd2);
    mld_buf_free(&tdw);
    mld_put(ed);
    mld_put(ew);
    return err;
}

/* ------------------------------------------------------------ direct kernels (few channels, f32) */
/* oneDNN computes in 16-channel blocks: with 4 or fewer channels on the output side (the 3-class
 * head of a segmentation network) it does 4-16x the work and reorders full-size tensors around
 * it, so those ops run on ml_conv_direct.c's plain-layout loops instead. */
#define DIRECT_MAXC 4

static bool direct_base(const cgeo *g) {
    if (g->G != 1) return false;
    for (int i = 0; i < 3; i++)
        if (g->d[i] != 1 || g->K[i] > 16) return false;
    return true;
}

static bool direct_fwd_ok(const cgeo *g) {
    if (!direct_base(g) || g->Cout > DIRECT_MAXC) return false;
    if (!g->tr)
        for (int i = 0; i < 3; i++)
            if (g->s[i] != 1) return false;
    return true;
}

static bool direct_bwd_data_ok(const cgeo *g) { return direct_base(g) && !g->tr && g->Cin <= DIRECT_MAXC; }

static bool direct_wgrad_ok(const cgeo *g) {
    return direct_base(g) && !g->tr && g->Cin * g->Cout <= DIRECT_MAXC * DIRECT_MAXC && g->s[2] == 1;
}

static void mgeo(mlc_geo *m, const cgeo *g, int64_t Ci, int64_t Co, const int64_t *I, const int64_t *O) {
    m->N = g->N;
    m->Ci = Ci;
    m->Co = Co;
    for (int i = 0; i < 3; i++) {
        m->I[i] = I[i];
        m->O[i] = O[i];
        m->K[i] = g->K[i];
        m->s[i] = g->s[i];
        m->p[i] = g->p[i];
    }
}

/* y = conv(x, w) + b (stride 1) or conv_transpose(x, w) + b */
static ml_err direct_fwd(const cgeo *g, const float *x, const float *w, const float *b, float *y) {
    mlc_geo m;
    mgeo(&m, g, g->Cin, g->Cout, g->I, g->O);
    int64_t Ksz = prod3(g->K);
    if (g->tr) return mlc_tconv_f32(&m, x, w, g->Cout * Ksz, Ksz, b, y);
    /* stride-1 conv = transposed conv with the kernel flipped, channels swapped, padding K-1-p */
    float *wt = malloc(sizeof(float) * (size_t)(g->Cin * g->Cout * Ksz));
    if (!wt) return ml_seterr(ML_ERR_OOM, "%s: out of memory", cname(g));
    for (int64_t co = 0; co < g->Cout; co++)
        for (int64_t ci = 0; ci < g->Cin; ci++)
            for (int64_t k = 0; k < Ksz; k++) wt[(ci * g->Cout + co) * Ksz + k] = w[(co * g->Cin + ci) * Ksz + Ksz - 1 - k];
    for (int i = 0; i < 3; i++) m.p[i] = g->K[i] - 1 - g->p[i];
    ml_err e = mlc_tconv_f32(&m, x, wt, g->Cout * Ksz, Ksz, b, y);
    free(wt);
    return e;
}

/* gx = conv backward-data: the transposed conv of gy with the same weights */
static ml_err direct_bwd_data(const cgeo *g, const float *w, const float *gy, float *gx) {
    mlc_geo m;
    mgeo(&m, g, g->Cout, g->Cin, g->O, g->I);
    int64_t Ksz = prod3(g->K);
    return mlc_tconv_f32(&m, gy, w, g->Cin * Ksz, Ksz, NULL, gx);
}

static ml_err direct_wgrad(const cgeo *g, const float *x, const float *gy, float *gw, float *gb) {
    mlc_geo m;
    mgeo(&m, g, g->Cin, g->Cout, g->I, g->O);
    return mlc_conv_wgrad_f32(&m, x, gy, gw, gb);
}

/* ------------------------------------------------------------ dispatch */
/* untracked dtype-converting copy */
static ml_err cast_copy(ml_tensor **out, ml_tensor *t, ml_dtype dt) {
    *out = NULL;
    if (!t) return ML_OK;
    ml_err e = ml_tensor_empty(out, dt, t->ndim, t->shape);
    if (e) return e;
    if ((e = ml_copy_(*out, t))) { ml_tensor_release(*out); *out = NULL; }
    return e;
}

static bool any_empty(const cgeo *g) {
    return g->N == 0 || g->Cin == 0 || g->Cout == 0 || prod3(g->I) == 0 || prod3(g->O) == 0;
}

/* f64 reference forward: x, w, b contiguous f64, y preallocated */
static void ref_forward(const cgeo *g, ml_tensor *x, ml_tensor *w, ml_tensor *b, ml_tensor *y) {
    relgeo r;
    rel_of(g, &r);
    const double *bp = b ? (const double *)ml_tensor_data(b) : NULL;
    if (!g->tr) ref_fwd(&r, ml_tensor_data(x), ml_tensor_data(w), bp, ml_tensor_data(y));
    else ref_bwd_data(&r, ml_tensor_data(x), ml_tensor_data(w), bp, ml_tensor_data(y));
}

static ml_err ref_backward(const cgeo *g, ml_tensor *x, ml_tensor *w, ml_tensor *gy, ml_tensor *gx, ml_tensor *gw) {
    relgeo r;
    rel_of(g, &r);
    if (gx) {
        if (!g->tr) ref_bwd_data(&r, ml_tensor_data(gy), ml_tensor_data(w), NULL, ml_tensor_data(gx));
        else ref_fwd(&r, ml_tensor_data(gy), ml_tensor_data(w), NULL, ml_tensor_data(gx));
    }
    if (gw) {
        if (!g->tr) ref_bwd_w(&r, ml_tensor_data(x), ml_tensor_data(gy), ml_tensor_data(gw));
        else ref_bwd_w(&r, ml_tensor_data(gy), ml_tensor_data(x), ml_tensor_data(gw));
    }
    return ML_OK;
}

/* y = op(x, w, b); x/w/b contiguous of one float dtype. */
static ml_err conv_forward(const cgeo *g, bool training, ml_tensor *x, ml_tensor *w, ml_tensor *b, ml_tensor **out) {
    *out = NULL;
    ml_dtype dt = (ml_dtype)x->dtype;
    int64_t ys[5];
    y_shape(g, ys);
    ml_tensor *y;
    ml_err e = ml_tensor_empty(&y, dt, g->k + 2, ys);
    if (e) return e;
    if (dt == ML_F32 && !any_empty(g) && dnnl_geometry_ok(g) && !direct_fwd_ok(g)) {
        e = dconv_fwd(g, training, x, ml_tensor_data(w), b ? ml_tensor_data(b) : NULL, y);
        if (e != ML_ERR_UNSUPPORTED) {
            if (e) { ml_tensor_release(y); return e; }
            *out = y;
            return ML_OK;
        }
    }
    /* everything below reads plain strides */
    if ((e = ml_tensor_plain(x))) { ml_tensor_release(y); return e; }
    if (dt == ML_F32 && !any_empty(g) && direct_fwd_ok(g)) {
        e = direct_fwd(g, ml_tensor_data(x), ml_tensor_data(w), b ? ml_tensor_data(b) : NULL, ml_tensor_data(y));
        if (e != ML_ERR_UNSUPPORTED) {
            if (e) { ml_tensor_release(y); return e; }
            *out = y;
            return ML_OK;
        }
        if ((e = dnnl_geometry_ok(g) ? dconv_fwd(g, training, x, ml_tensor_data(w), b ? ml_tensor_data(b) : NULL, y)
                                     : ML_ERR_UNSUPPORTED) != ML_ERR_UNSUPPORTED) {
            if (e) { ml_tensor_release(y); return e; }
            *out = y;
            return ML_OK;
        }
    }
    if (dt == ML_F64) {
        ref_forward(g, x, w, b, y);
    } else { /* f32 fallback through the f64 reference */
        ml_tensor *xd = NULL, *wd = NULL, *bd = NULL, *yd = NULL;
        if (!(e = cast_copy(&xd, x, ML_F64)) && !(e = cast_copy(&wd, w, ML_F64)) && !(e = cast_copy(&bd, b, ML_F64)) &&
            !(e = ml_tensor_empty(&yd, ML_F64, g->k + 2, ys))) {
            ref_forward(g, xd, wd, bd, yd);
            e = ml_copy_(y, yd);
        }
        ml_tensor_release(xd);
        ml_tensor_release(wd);
        ml_tensor_release(bd);
        ml_tensor_release(yd);
        if (e) { ml_tensor_release(y); return e; }
    }
    *out = y;
    return ML_OK;
}

/* gradients; any of gx/gw/gb may be NULL (not wanted). x needed for gw, w for gx. */
/* x (when gw is wanted) and gy are plain-contiguous or NC16; gx may come back in NC16 if gx_nc16 */
static ml_err conv_backward(const cgeo *g, ml_tensor *x, ml_tensor *w, ml_tensor *gy, ml_tensor **gx, ml_tensor **gw,
                            ml_tensor **gb, bool gx_nc16) {
    ml_dtype dt = (ml_dtype)gy->dtype;
    int64_t xs[5], ws[5];
    x_shape(g, xs);
    w_shape(g, ws);
    ml_tensor *tx = NULL, *tw = NULL, *tb = NULL;
    ml_err e = ML_OK;
    if (gx && (e = ml_tensor_empty(&tx, dt, g->k + 2, xs))) goto fail;
    if (gw && (e = ml_tensor_empty(&tw, dt, g->k + 2, ws))) goto fail;
    bool bias_done = false;
    /* what the direct kernels do not compute goes to oneDNN (or the reference) below */
    ml_tensor *rx = tx, *rw = tw;
    if (dt == ML_F32 && !any_empty(g) && ((rx && direct_bwd_data_ok(g)) || (rw && direct_wgrad_ok(g)))) {
        /* the direct kernels read plain strides */
        if ((e = ml_tensor_plain(gy)) || (x && (e = ml_tensor_plain(x)))) goto fail;
        if (rx && direct_bwd_data_ok(g)) {
            e = direct_bwd_data(g, ml_tensor_data(w), ml_tensor_data(gy), ml_tensor_data(tx));
            if (e && e != ML_ERR_UNSUPPORTED) goto fail;
            if (!e) rx = NULL;
        }
        if (rw && direct_wgrad_ok(g)) {
            if (gb && (e = ml_tensor_empty(&tb, dt, 1, &g->Cout))) goto fail;
            e = direct_wgrad(g, ml_tensor_data(x), ml_tensor_data(gy), ml_tensor_data(tw), tb ? ml_tensor_data(tb) : NULL);
            if (e && e != ML_ERR_UNSUPPORTED) goto fail;
            if (!e) {
                rw = NULL;
                bias_done = tb != NULL;
            } else {
                ml_tensor_release(tb);
                tb = NULL;
            }
        }
        e = ML_OK;
        if (!rx && !rw) goto bias;
    }
    if (dt == ML_F32 && !any_empty(g) && dnnl_geometry_ok(g)) {
        ml_tensor *db = NULL; /* bias gradient from oneDNN's backward-weights */
        if (rw && gb && !prepad_drops_planes(g) && (e = ml_tensor_empty(&db, dt, 1, &g->Cout))) goto fail;
        e = dconv_bwd(g, x, w ? ml_tensor_data(w) : NULL, gy, rx, rw ? ml_tensor_data(rw) : NULL,
                      db ? ml_tensor_data(db) : NULL, gx_nc16);
        if (!e) {
            if (db) {
                tb = db;
                bias_done = true;
            }
            goto bias;
        }
        ml_tensor_release(db);
        if (e != ML_ERR_UNSUPPORTED) goto fail;
    }
    /* the reference reads plain strides */
    if ((e = ml_tensor_plain(gy)) || (x && (e = ml_tensor_plain(x)))) goto fail;
    if (dt == ML_F64) {
        ref_backward(g, x, w, gy, rx, rw);
    } else {
        ml_tensor *xd = NULL, *wd = NULL, *gyd = NULL, *gxd = NULL, *gwd = NULL;
        if (!(e = cast_copy(&xd, rw ? x : NULL, ML_F64)) && !(e = cast_copy(&wd, rx ? w : NULL, ML_F64)) &&
            !(e = cast_copy(&gyd, gy, ML_F64)) && !(e = rx ? ml_tensor_empty(&gxd, ML_F64, g->k + 2, xs) : ML_OK) &&
            !(e = rw ? ml_tensor_empty(&gwd, ML_F64, g->k + 2, ws) : ML_OK)) {
            ref_backward(g, xd, wd, gyd, gxd, gwd);
            if (rx) e = ml_copy_(rx, gxd);
            if (!e && rw) e = ml_copy_(rw, gwd);
        }
        ml_tensor_release(xd);
        ml_tensor_release(wd);
        ml_tensor_release(gyd);
        ml_tensor_release(gxd);
        ml_tensor_release(gwd);
        if (e) goto fail;
    }
bias:
    if (gb && !bias_done && ((e = ml_tensor_plain(gy)) || (e = chan_sum(&tb, gy)))) goto fail;
    if (gx) *gx = tx;
    if (gw) *gw = tw;
    if (gb) *gb = tb;
    return ML_OK;
fail:
    ml_tensor_release(tx);
    ml_tensor_release(tw);
    ml_tensor_release(tb);
    return e;
}

/* ------------------------------------------------------------ validation */
static ml_err geo_build(cgeo *g, const char *op, bool tr, const ml_tensor *x, const ml_tensor *w, const ml_tensor *b,
                        const ml_conv_params *p) {
    int k = p->k;
    memset(g, 0, sizeof *g);
    g->k = k;
    g->tr = tr;
    if (w->ndim != k + 2)
        return ml_seterr(ML_ERR_SHAPE, "%s: weight %s must have %d dimensions ([%s, %s/groups, kernel...])", op,
                         ml_shape_str(w->ndim, w->shape), k + 2, tr ? "in_channels" : "out_channels",
                         tr ? "out_channels" : "in_channels");
    if (p->groups < 1) return ml_seterr(ML_ERR_ARG, "%s: groups must be >= 1, got %lld", op, (long long)p->groups);
    for (int i = 0; i < k; i++) {
        if (p->stride[i] < 1 || p->padding[i] < 0 || p->dilation[i] < 1 || (tr && p->output_padding[i] < 0))
            return ml_seterr(ML_ERR_ARG,
                             "%s: invalid parameters in dim %d: stride %lld (>= 1), padding %lld (>= 0), dilation %lld "
                             "(>= 1)%s",
                             op, i, (long long)p->stride[i], (long long)p->padding[i], (long long)p->dilation[i],
                             tr ? ", output_padding >= 0" : "");
        if (tr && p->output_padding[i] >= p->stride[i] && p->output_padding[i] >= p->dilation[i])
            return ml_seterr(ML_ERR_ARG,
                             "%s: output_padding %lld in dim %d must be smaller than either stride %lld or dilation %lld",
                             op, (long long)p->output_padding[i], i, (long long)p->stride[i], (long long)p->dilation[i]);
        if (w->shape[2 + i] < 1)
            return ml_seterr(ML_ERR_SHAPE, "%s: weight %s has an empty kernel", op, ml_shape_str(w->ndim, w->shape));
    }
    g->N = x->shape[0];
    g->G = p->groups;
    g->Cin = x->shape[1];
    if (!tr) {
        if (w->shape[0] % g->G)
            return ml_seterr(ML_ERR_SHAPE, "%s: weight %s has %lld output channels, not divisible by groups %lld", op,
                             ml_shape_str(w->ndim, w->shape), (long long)w->shape[0], (long long)g->G);
        if (g->Cin != w->shape[1] * g->G)
            return ml_seterr(ML_ERR_SHAPE, "%s: input %s has %lld channels but weight %s expects %lld (groups %lld)", op,
                             ml_shape_str(x->ndim, x->shape), (long long)g->Cin, ml_shape_str(w->ndim, w->shape),
                             (long long)(w->shape[1] * g->G), (long long)g->G);
        g->Cout = w->shape[0];
    } else {
        if (g->Cin != w->shape[0])
            return ml_seterr(ML_ERR_SHAPE, "%s: input %s has %lld channels but weight %s expects %lld (groups %lld)", op,
                             ml_shape_str(x->ndim, x->shape), (long long)g->Cin, ml_shape_str(w->ndim, w->shape),
                             (long long)w->shape[0], (long long)g->G);
        if (g->Cin % g->G)
            return ml_seterr(ML_ERR_SHAPE, "%s: input channels %lld (input %s) not divisible by groups %lld", op,
                             (long long)g->Cin, ml_shape_str(x->ndim, x->shape), (long long)g->G);
        g->Cout = w->shape[1] * g->G;
    }
    if (b && !(b->ndim == 1 && b->shape[0] == g->Cout))
        return ml_seterr(ML_ERR_SHAPE, "%s: bias %s does not match %lld output channels (weight %s, groups %lld)", op,
                         ml_shape_str(b->ndim, b->shape), (long long)g->Cout, ml_shape_str(w->ndim, w->shape),
                         (long long)g->G);
    for (int j = 0; j < 3; j++) { g->I[j] = g->O[j] = g->K[j] = g->s[j] = g->d[j] = 1; }
    bool bad = false;
    for (int i = 0; i < k; i++) {
        int j = 3 - k + i;
        g->I[j] = x->shape[2 + i];
        g->K[j] = w->shape[2 + i];
        g->s[j] = p->stride[i];
        g->p[j] = p->padding[i];
        g->d[j] = p->dilation[i];
        g->op[j] = tr ? p->output_padding[i] : 0;
        if (!tr) g->O[j] = mld_pool_out_size(g->I[j], g->K[j], g->s[j], g->p[j], g->d[j], false);
        else g->O[j] = (g->I[j] - 1) * g->s[j] - 2 * g->p[j] + g->d[j] * (g->K[j] - 1) + g->op[j] + 1;
        bad |= g->O[j] <= 0;
    }
    if (bad) {
        int64_t os[5];
        y_shape(g, os);
        return ml_seterr(ML_ERR_SHAPE,
                         "%s: output size %s is too small for input %s and weight %s (stride %s, padding %s, dilation %s)",
                         op, ml_shape_str(k, os + 2), ml_shape_str(x->ndim, x->shape), ml_shape_str(w->ndim, w->shape),
                         ml_shape_str(k, p->stride), ml_shape_str(k, p->padding), ml_shape_str(k, p->dilation));
    }
    return ML_OK;
}

/* ------------------------------------------------------------ autograd */
typedef struct {
    ml_conv_params p;
    bool tr;
    bool x_nc16; /* x came in NC16: its producer takes the gradient in NC16 too */
    int x_slot, w_slot;
} conv_np;

static ml_err bw_conv(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    conv_np *cp = (conv_np *)n->params;
    ml_tensor *x = cp->x_slot >= 0 ? ml_node_saved(n, cp->x_slot) : NULL;
    ml_tensor *w = cp->w_slot >= 0 ? ml_node_saved(n, cp->w_slot) : NULL;
    if ((cp->x_slot >= 0 && !x) || (cp->w_slot >= 0 && !w)) return ML_ERR_GRAD;
    const char *op = mld_opname(cp->tr ? "conv_transpose" : "conv", cp->p.k);
    /* geometry from the recorded shapes */
    ml_tensor xs = {0}, ws = {0};
    xs.ndim = n->in_ndim[0];
    memcpy(xs.shape, n->in_shape[0], sizeof xs.shape);
    ws.ndim = n->in_ndim[1];
    memcpy(ws.shape, n->in_shape[1], sizeof ws.shape);
    cgeo g;
    ml_err e = geo_build(&g, op, cp->tr, &xs, &ws, NULL, &cp->p);
    if (e) return e;
    ml_tensor *gy;
    if (gout[0]->layout == ML_LAYOUT_NC16 && gout[0]->dtype == n->out_dtype[0]) { /* read in place */
        ml_tensor_retain(gout[0]);
        gy = gout[0];
    } else if ((e = mld_grad_in(&gy, gout[0], (ml_dtype)n->out_dtype[0]))) {
        return e;
    }
    bool nb = n->nin > 2 && n->needs[2];
    e = conv_backward(&g, x, w, gy, n->needs[0] ? &gin[0] : NULL, n->needs[1] ? &gin[1] : NULL, nb ? &gin[2] : NULL,
                      cp->x_nc16);
    ml_tensor_release(gy);
    return e;
}

/* ------------------------------------------------------------ CUDA (cuDNN) */
/* cuDNN sees every case as a plain convolution "cx -> cy" with filter w: for conv_transpose the roles of
 * input and output swap (its forward is the convolution's backward-data), the filter layout is the same. */
static void cuda_desc(ml_cuda_conv_desc *d, const cgeo *g) {
    memset(d, 0, sizeof *d);
    d->nsp = g->k;
    int64_t cin = g->tr ? g->Cout : g->Cin, cout = g->tr ? g->Cin : g->Cout;
    d->x[0] = d->y[0] = g->N;
    d->x[1] = cin;
    d->y[1] = cout;
    d->w[0] = cout;
    d->w[1] = cin / g->G;
    for (int i = 0; i < g->k; i++) { /* cgeo keeps spatial dims right-aligned in 3 slots */
        int j = 3 - g->k + i;
        d->x[2 + i] = g->tr ? g->O[j] : g->I[j];
        d->y[2 + i] = g->tr ? g->I[j] : g->O[j];
        d->w[2 + i] = g->K[j];
        d->stride[i] = (int)g->s[j];
        d->pad[i] = (int)g->p[j];
        d->dil[i] = (int)g->d[j];
    }
    d->groups = (int)g->G;
}

typedef struct {
    cgeo g;
    int x_slot, w_slot;
} cuda_conv_np;

/* bias [C] added over dim 1 of y (in place), or its gradient: the sum of g over every dim but 1 */
static ml_err bias_view(ml_tensor **out, ml_tensor *b, int nd) {
    int64_t sh[ML_MAX_DIMS];
    for (int i = 0; i < nd; i++) sh[i] = 1;
    sh[1] = b->shape[0];
    return ml_reshape(out, b, nd, sh);
}

static ml_err bias_grad(ml_tensor **out, ml_tensor *g) {
    int dims[ML_MAX_DIMS], n = 0;
    for (int i = 0; i < g->ndim; i++)
        if (i != 1) dims[n++] = i;
    return ml_reduce(out, ML_RSUM, g, n, dims, false);
}

static ml_err bw_conv_cuda(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const cuda_conv_np *cp = (const cuda_conv_np *)n->params;
    ml_tensor *x = cp->x_slot >= 0 ? ml_node_saved(n, cp->x_slot) : NULL;
    ml_tensor *w = cp->w_slot >= 0 ? ml_node_saved(n, cp->w_slot) : NULL;
    if ((cp->x_slot >= 0 && !x) || (cp->w_slot >= 0 && !w)) return ML_ERR_GRAD;
    ml_cuda_conv_desc d;
    cuda_desc(&d, &cp->g);
    ml_tensor *g;
    ml_err e = ml_contiguous(&g, gout[0]);
    if (e) return e;
    int dev = g->storage->device.index, kd = g->dtype;
    if (n->needs[0]) { /* conv: backward-data; conv_transpose: a forward convolution of g */
        if (!(e = ml_tensor_empty_on(&gin[0], ml_tensor_device(g), (ml_dtype)kd, n->in_ndim[0], n->in_shape[0])))
            e = cp->g.tr ? ml_cuda_conv_fwd(kd, &d, ml_tensor_data(g), ml_tensor_data(w), ml_tensor_data(gin[0]), dev)
                         : ml_cuda_conv_bwd_data(kd, &d, ml_tensor_data(w), ml_tensor_data(g), ml_tensor_data(gin[0]), dev);
    }
    if (!e && n->needs[1]) { /* the filter gradient: input of cuDNN's view, output gradient of its view */
        if (!(e = ml_tensor_empty_on(&gin[1], ml_tensor_device(g), (ml_dtype)kd, n->in_ndim[1], n->in_shape[1])))
            e = cp->g.tr ? ml_cuda_conv_bwd_filter(kd, &d, ml_tensor_data(g), ml_tensor_data(x), ml_tensor_data(gin[1]), dev)
                         : ml_cuda_conv_bwd_filter(kd, &d, ml_tensor_data(x), ml_tensor_data(g), ml_tensor_data(gin[1]), dev);
    }
    if (!e && n->nin > 2 && n->needs[2]) e = bias_grad(&gin[2], g);
    ml_tensor_release(g);
    return e;
}

static ml_err cuda_conv(ml_tensor **out, const char *op, const cgeo *g, ml_tensor *x, ml_tensor *w, ml_tensor *b) {
    *out = NULL;
    ml_tensor *ts[3] = {x, w, b};
    ml_tensor *xc = NULL, *wc = NULL, *y = NULL, *bv = NULL;
    ml_cuda_conv_desc d;
    cuda_desc(&d, g);
    int nd = g->k + 2, dev = x->storage->device.index, kd = x->dtype;
    int64_t ys[5] = {g->N, g->Cout, 1, 1, 1};
    for (int i = 0; i < g->k; i++) ys[2 + i] = g->O[3 - g->k + i];
    bool prev = ml_set_grad_enabled(false);
    ml_err e;
    if ((e = ml_contiguous(&xc, x)) || (e = ml_contiguous(&wc, w))) goto done;
    if ((e = ml_tensor_empty_on(&y, ml_tensor_device(x), (ml_dtype)kd, nd, ys))) goto done;
    e = g->tr ? ml_cuda_conv_bwd_data(kd, &d, ml_tensor_data(wc), ml_tensor_data(xc), ml_tensor_data(y), dev)
              : ml_cuda_conv_fwd(kd, &d, ml_tensor_data(xc), ml_tensor_data(wc), ml_tensor_data(y), dev);
    if (e) goto done;
    if (b && ((e = bias_view(&bv, b, nd)) || (e = ml_binary_(ML_ADD, y, bv)))) goto done;
    ml_set_grad_enabled(prev);
    {
        ml_node *node;
        if ((e = ml_record(op, bw_conv_cuda, b ? 3 : 2, ts, y, &node))) goto done;
        if (node) {
            cuda_conv_np np;
            memset(&np, 0, sizeof np);
            np.g = *g;
            np.x_slot = np.w_slot = -1;
            if (node->needs[1] && (np.x_slot = ml_node_save(node, xc)) < 0) { e = ML_ERR_INTERNAL; goto done; }
            if (node->needs[0] && (np.w_slot = ml_node_save(node, wc)) < 0) { e = ML_ERR_INTERNAL; goto done; }
            _Static_assert(sizeof(cuda_conv_np) <= ML_NODE_PARAM_BYTES, "conv params fit the node");
            memcpy(node->params, &np, sizeof np);
        }
    }
done:
    ml_set_grad_enabled(prev);
    ml_tensor_release(xc);
    ml_tensor_release(wc);
    ml_tensor_release(bv);
    if (e) { ml_tensor_release(y); return e; }
    *out = y;
    return ML_OK;
}

static ml_err conv_impl(ml_tensor **out, ml_tensor *x, ml_tensor *w, ml_tensor *b, const ml_conv_params *p, bool tr) {
    *out = NULL;
    const char *base = tr ? "conv_transpose" : "conv";
    if (!p) return ml_seterr(ML_ERR_ARG, "%s: parameters are NULL", base);
    if (p->k < 1 || p->k > 3) return ml_seterr(ML_ERR_ARG, "%s: spatial rank k must be 1, 2 or 3, got %d", base, p->k);
    const char *op = mld_opname(base, p->k);
    ml_tensor *ts[3] = {x, w, b};
    static const char *const names[3] = {"input", "weight", "bias"};
    ml_err e = mld_check_float_on(op, 3, ts, names, true);
    if (e) return e;
    if (x->ndim == p->k + 1) { /* unbatched: run as a batch of one */
        ml_tensor *xb, *yb;
        if ((e = ml_unsqueeze(&xb, x, 0))) return e;
        e = conv_impl(&yb, xb, w, b, p, tr);
        ml_tensor_release(xb);
        if (e) return e;
        e = ml_squeeze(out, yb, 0);
        ml_tensor_release(yb);
        return e;
    }
    if (x->ndim != p->k + 2)
        return ml_seterr(ML_ERR_SHAPE, "%s: input %s must have %d dimensions [N, C, %s] (or %d unbatched)", op,
                         ml_shape_str(x->ndim, x->shape), p->k + 2,
                         p->k == 1 ? "L" : p->k == 2 ? "H, W" : "D, H, W", p->k + 1);
    cgeo g;
    if ((e = geo_build(&g, op, tr, x, w, b, p))) return e;
    if (ml_tensor_is_cuda(x)) return cuda_conv(out, op, &g, x, w, b);
    ml_tensor *xc = NULL, *wc = NULL, *bc = NULL, *y = NULL;
    bool need = ml_needs_grad(b ? 3 : 2, ts);
    /* x's producer knows NC16: its gradient may come back in NC16 even if x is made plain here */
    bool x_nc16 = x->layout == ML_LAYOUT_NC16;
    if (x->layout == ML_LAYOUT_NC16 && x->dtype == ML_F32) { /* oneDNN reads it in place (conv_forward) */
        ml_tensor_retain(x);
        xc = x;
    } else if ((e = mld_contig(&xc, x))) {
        goto done;
    }
    if ((e = mld_contig(&wc, w)) || (e = mld_contig(&bc, b))) goto done;
    if ((e = conv_forward(&g, need, xc, wc, bc, &y))) goto done;
    {
        ml_node *node;
        if ((e = ml_record(op, bw_conv, b ? 3 : 2, ts, y, &node))) goto done;
        if (node) {
            conv_np np;
            memset(&np, 0, sizeof np);
            np.p = *p;
            np.tr = tr;
            np.x_nc16 = x_nc16;
            np.x_slot = np.w_slot = -1;
            if (node->needs[1] && (np.x_slot = ml_node_save(node, xc)) < 0) { e = ML_ERR_INTERNAL; goto done; }
            if (node->needs[0] && (np.w_slot = ml_node_save(node, wc)) < 0) { e = ML_ERR_INTERNAL; goto done; }
            _Static_assert(sizeof(conv_np) <= ML_NODE_PARAM_BYTES, "conv params fit the node");
            memcpy(node->params, &np, sizeof np);
        }
    }
done:
    ml_tensor_release(xc);
    ml_tensor_release(wc);
    ml_tensor_release(bc);
    if (e) { ml_tensor_release(y); return e; }
    *out = y;
    return ML_OK;
}

ml_err ml_conv(ml_tensor **out, ml_tensor *x, ml_tensor *w, ml_tensor *b, const ml_conv_params *p) {
    return conv_impl(out, x, w, b, p, false);
}

ml_err ml_conv_transpose(ml_tensor **out, ml_tensor *x, ml_tensor *w, ml_tensor *b, const ml_conv_params *p) {
    return conv_impl(out, x, w, b, p, true);
}
