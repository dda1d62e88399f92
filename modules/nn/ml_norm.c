/* Normalization: batch_norm, instance_norm, group_norm, layer_norm (forward + closed-form backward).
 *
 * Layout. x is viewed as [N, C, S] (S = product of the spatial dims): every (n, c) pair is one
 * contiguous "segment" of S elements. A statistics group is a set of segments:
 *   batch norm:    group c      = segments (*, c)                (M = N*S elements)
 *   instance norm: group (n, c) = segment (n, c)                 (M = S)
 *   group norm:    group (n, g) = segments (n, g*C/G .. )        (M = C/G*S)
 * Layer norm views x as [R, K] (K = product of the last nnorm dims); each row is one group.
 *
 * Statistics are accumulated in double over fixed chunks of NN_CHUNK elements (per-chunk mean and
 * sum of squared deviations, merged in a fixed order with Chan's formula), so results are
 * deterministic and independent of the thread count. Kernels are written once for T = float and
 * T = double (this file includes itself with ML_NORM_GEN defined).
 */
#ifndef ML_NORM_GEN
#include "ml_nn_util.h"
#include "ml_nn_composite.h"

#include <math.h>

static void chan_merge(double *n, double *mean, double *m2, double nb, double mb, double m2b) {
    if (nb == 0) return;
    if (*n == 0) { *n = nb; *mean = mb; *m2 = m2b; return; }
    double nn = *n + nb, d = mb - *mean;
    *mean += d * nb / nn;
    *m2 += m2b + d * d * *n * nb / nn;
    *n = nn;
}

static int64_t nchunks(int64_t L) { return L > 0 ? (L + NN_CHUNK - 1) / NN_CHUNK : 1; }

/* Gradient sums add NN_SUB elements in the tensor's own type (vectorized) before each addition to
 * the chunk's double total: f32 partials of 256 terms lose nothing that matters, and converting
 * every element to double made these loops compute-bound (the largest norm cost in a U-Net step). */
#define NN_SUB 256

#define ML_NORM_GEN
#define T float
#define S(name) name##_f32
#include "ml_norm.c"
#undef T
#undef S
#define T double
#define S(name) name##_f64
#include "ml_norm.c"
#undef T
#undef S
#undef ML_NORM_GEN


/* ------------------------------------------------------------------ NC16 (blocked) batch norm */
/* x in ML_LAYOUT_NC16: [N][C/16][L][16]. Work items are (n, channel block, chunk of NN_CHUNK
 * positions); each fills the same per-(segment, chunk) partials as the plain kernels, 16 channels
 * (one 16-float vector) at a time; sums go through f32 vectors over NC16_SUB positions, then double. */
typedef float nv16 __attribute__((vector_size(64)));
typedef int32_t nv16i __attribute__((vector_size(64)));
#define NC16_SUB 16

/* macros, not functions: vectors passed by value would change the ABI between ISAs (-Wpsabi) */
#define NV_LD(v, p) memcpy(&(v), (p), sizeof(v))
#define NV_ST(p, v) memcpy((p), &(v), sizeof(v))
#define NV_SEL(m, a, b) ((nv16)(((m) & (nv16i)(a)) | (~(m) & (nv16i)(b))))
/* v[l] = d ? d[l] : def */
#define NV_SET(v, d, def)                                                                                           \
    for (int l_ = 0; l_ < 16; l_++) (v)[l_] = (d) ? (float)(d)[l_] : (float)(def)

#define NC16_ITEM(t, nch, CB, nb, k, seg0)                                                                             \
    int64_t nb = (t) / (nch), k = (t) % (nch), seg0 = (nb / (CB)) * (CB) * 16 + (nb % (CB)) * 16

static void nc16_stats(const float *x, int64_t N, int64_t C, int64_t L, int64_t nch, double *st) {
    int64_t CB = C / 16, total = N * CB * nch;
    int nt = nn_threads(N * C * L, total);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t t = 0; t < total; t++) {
        NC16_ITEM(t, nch, CB, nb, k, seg0);
        int64_t lo = k * NN_CHUNK, hi = lo + NN_CHUNK < L ? lo + NN_CHUNK : L;
        const float *q = x + nb * L * 16;
        double s[16] = {0}, m2[16] = {0}, m[16];
        for (int64_t b0 = lo; b0 < hi; b0 += NC16_SUB) {
            int64_t b1 = b0 + NC16_SUB < hi ? b0 + NC16_SUB : hi;
            nv16 f = {0}, v;
            for (int64_t i = b0; i < b1; i++) {
                NV_LD(v, q + i * 16);
                f += v;
            }
            for (int l = 0; l < 16; l++) s[l] += (double)f[l];
        }
        double cnt = (double)(hi > lo ? hi - lo : 0);
        for (int l = 0; l < 16; l++) m[l] = cnt > 0 ? s[l] / cnt : 0;
        nv16 mf;
        for (int l = 0; l < 16; l++) mf[l] = (float)m[l];
        double corr[16] = {0}; /* sum (x - mf): the exact M2 about m from the one about the rounded mf */
        for (int64_t b0 = lo; b0 < hi; b0 += NC16_SUB) {
            int64_t b1 = b0 + NC16_SUB < hi ? b0 + NC16_SUB : hi;
            nv16 f = {0}, fd = {0}, d;
            for (int64_t i = b0; i < b1; i++) {
                NV_LD(d, q + i * 16);
                d -= mf;
                f += d * d;
                fd += d;
            }
            for (int l = 0; l < 16; l++) {
                m2[l] += (double)f[l];
                corr[l] += (double)fd[l];
            }
        }
        for (int l = 0; l < 16; l++) {
            /* sum (x - m)^2 = sum (x - mf)^2 - 2 (m - mf) sum (x - mf) + cnt (m - mf)^2 */
            double dm = m[l] - (double)mf[l];
            double *o = st + 3 * ((seg0 + l) * nch + k);
            o[0] = cnt;
            o[1] = m[l];
            o[2] = m2[l] - 2 * dm * corr[l] + cnt * dm * dm;
        }
    }
}

/* z = act(x*sa[seg] + sb[seg]), act = PReLU with slope[seg] (slope NULL: identity) */
static void nc16_affine_act(const float *x, float *z, int64_t N, int64_t C, int64_t L, int64_t nch, const double *sa,
                            const double *sb, const double *slope) {
    int64_t CB = C / 16, total = N * CB * nch;
    int nt = nn_threads(N * C * L, total);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t t = 0; t < total; t++) {
        NC16_ITEM(t, nch, CB, nb, k, seg0);
        int64_t lo = k * NN_CHUNK, hi = lo + NN_CHUNK < L ? lo + NN_CHUNK : L;
        const float *q = x + nb * L * 16;
        float *o = z + nb * L * 16;
        nv16 aa, bb, sl, y;
        const nv16 zero = {0};
        NV_SET(aa, sa + seg0, 1);
        NV_SET(bb, sb + seg0, 0);
        NV_SET(sl, slope ? slope + seg0 : NULL, 1);
        for (int64_t i = lo; i < hi; i++) {
            NV_LD(y, q + i * 16);
            y = y * aa + bb;
            y = NV_SEL(y > zero, y, y * sl);
            NV_ST(o + i * 16, y);
        }
    }
}

/* per (segment, chunk): sum gy, sum gy*(x - mu), sum over y <= 0 of g*y with y = x*sa + sb and
 * gy = y > 0 ? g : slope*g (sa NULL: no activation, gy = g); part has 3 entries per (seg, chunk) */
static void nc16_gsums_act(const float *g, const float *x, int64_t N, int64_t C, int64_t L, int64_t nch,
                           const double *mu, const double *sa, const double *sb, const double *slope, double *part) {
    int64_t CB = C / 16, total = N * CB * nch;
    int nt = nn_threads(N * C * L, total);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t t = 0; t < total; t++) {
        NC16_ITEM(t, nch, CB, nb, k, seg0);
        int64_t lo = k * NN_CHUNK, hi = lo + NN_CHUNK < L ? lo + NN_CHUNK : L;
        const float *gq = g + nb * L * 16, *xq = x + nb * L * 16;
        nv16 aa, bb, sl, mt, xv, gz;
        const nv16 zero = {0};
        NV_SET(aa, sa ? sa + seg0 : NULL, 1);
        NV_SET(bb, sb ? sb + seg0 : NULL, 0);
        NV_SET(sl, slope ? slope + seg0 : NULL, 1);
        NV_SET(mt, mu + seg0, 0);
        double sg[16] = {0}, sd[16] = {0}, ss[16] = {0};
        for (int64_t b0 = lo; b0 < hi; b0 += NC16_SUB) {
            int64_t b1 = b0 + NC16_SUB < hi ? b0 + NC16_SUB : hi;
            nv16 fg = {0}, fd = {0}, fs = {0};
            for (int64_t i = b0; i < b1; i++) {
                NV_LD(xv, xq + i * 16);
                NV_LD(gz, gq + i * 16);
                nv16 y = xv * aa + bb;
                nv16i pos = y > zero;
                nv16 gy = NV_SEL(pos, gz, gz * sl);
                fg += gy;
                fd += gy * (xv - mt);
                fs += NV_SEL(pos, zero, gz * y);
            }
            for (int l = 0; l < 16; l++) {
                sg[l] += (double)fg[l];
                sd[l] += (double)fd[l];
                ss[l] += (double)fs[l];
            }
        }
        for (int l = 0; l < 16; l++) {
            double *o = part + 3 * ((seg0 + l) * nch + k);
            o[0] = sg[l];
            o[1] = sd[l] + ((double)mt[l] - mu[seg0 + l]) * sg[l];
            o[2] = ss[l];
        }
    }
}

/* dx = gy*p[seg] + (x - mu[seg])*q[seg] + r[seg], gy as in nc16_gsums_act */
static void nc16_lin_act(const float *g, const float *x, float *dx, int64_t N, int64_t C, int64_t L, int64_t nch,
                         const double *mu, const double *sa, const double *sb, const double *slope, const double *p,
                         const double *q, const double *r) {
    int64_t CB = C / 16, total = N * CB * nch;
    int nt = nn_threads(N * C * L, total);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t t = 0; t < total; t++) {
        NC16_ITEM(t, nch, CB, nb, k, seg0);
        int64_t lo = k * NN_CHUNK, hi = lo + NN_CHUNK < L ? lo + NN_CHUNK : L;
        const float *gq = g + nb * L * 16, *xq = x + nb * L * 16;
        float *o = dx + nb * L * 16;
        nv16 aa, bb, sl, m, pp, qq, rr, xv, gz;
        const nv16 zero = {0};
        NV_SET(aa, sa ? sa + seg0 : NULL, 1);
        NV_SET(bb, sb ? sb + seg0 : NULL, 0);
        NV_SET(sl, slope ? slope + seg0 : NULL, 1);
        NV_SET(m, mu + seg0, 0);
        NV_SET(pp, p + seg0, 0);
        NV_SET(qq, q + seg0, 0);
        NV_SET(rr, r + seg0, 0);
        for (int64_t i = lo; i < hi; i++) {
            NV_LD(xv, xq + i * 16);
            NV_LD(gz, gq + i * 16);
            nv16 y = xv * aa + bb;
            nv16 gy = NV_SEL(y > zero, gz, gz * sl);
            nv16 d = gy * pp + (xv - m) * qq + rr;
            NV_ST(o + i * 16, d);
        }
    }
}

/* ------------------------------------------------------------------ segment norms (BN/IN/GN) */
enum { NK_BATCH, NK_INSTANCE, NK_GROUP };

typedef struct {
    int kind;
    int64_t N, C, S, G;   /* G: groups per sample (group norm) */
    bool const_stats;     /* batch norm in eval mode: statistics are constants */
    bool has_w;
    bool has_act;         /* fused PReLU after the affine (slot_act: [3*nseg] f64 = sa, sb, slope) */
    bool act_scalar;      /* the PReLU weight has one entry */
    int slot_x, slot_mean, slot_rstd, slot_w, slot_act;
} segnorm_params;
_Static_assert(sizeof(segnorm_params) <= ML_NODE_PARAM_BYTES, "params");

static const char *kind_name(int kind) {
    return kind == NK_BATCH ? "batch_norm" : kind == NK_INSTANCE ? "instance_norm" : "group_norm";
}

/* number of statistic groups, the group of segment (n, c), elements per group */
static int64_t seg_ngroups(const segnorm_params *p) {
    return p->kind == NK_BATCH ? p->C : p->kind == NK_INSTANCE ? p->N * p->C : p->N * p->G;
}
static int64_t seg_group(const segnorm_params *p, int64_t n, int64_t c) {
    return p->kind == NK_BATCH ? c : p->kind == NK_INSTANCE ? n * p->C + c : n * p->G + c / (p->C / p->G);
}
static double seg_count(const segnorm_params *p) {
    return p->kind == NK_BATCH ? (double)(p->N * p->S)
           : p->kind == NK_INSTANCE ? (double)p->S : (double)(p->C / p->G * p->S);
}

static ml_err bw_segnorm(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const segnorm_params *p = (const segnorm_params *)n->params;
    const char *op = kind_name(p->kind);
    ml_tensor *x = ml_node_saved(n, p->slot_x), *tm = ml_node_saved(n, p->slot_mean),
              *tr = ml_node_saved(n, p->slot_rstd), *tw = p->has_w ? ml_node_saved(n, p->slot_w) : NULL;
    if (!x || !tm || !tr || (p->has_w && !tw)) return ML_ERR_GRAD;
    ml_dtype dt = (ml_dtype)x->dtype;
    ml_tensor *g = NULL;
    ml_err e;
    /* both in ML_LAYOUT_NC16: the blocked kernels; otherwise both plain */
    bool blk = x->layout == ML_LAYOUT_NC16 && gout[0]->layout == ML_LAYOUT_NC16 && gout[0]->dtype == x->dtype;
    if (blk) {
        ml_tensor_retain(gout[0]);
        g = gout[0];
    } else if ((e = ml_tensor_plain(x)) || (e = nn_contig_as(&g, gout[0], dt))) {
        return e;
    }
    int64_t N = p->N, C = p->C, L = p->S, nseg = N * C, ng = seg_ngroups(p), nch = nchunks(L);
    const double *mean = ml_tensor_data(tm), *rstd = ml_tensor_data(tr), *w = tw ? ml_tensor_data(tw) : NULL;
    double *gs = malloc(sizeof(double) * (size_t)(3 * nseg * nch + 3 * nseg + 2 * ng + 3 * C + 8));
    if (!gs) { ml_tensor_release(g); return ml_seterr(ML_ERR_OOM, "%s backward: out of memory", op); }
    double *part = gs, *segg = part + 3 * nseg * nch, *segd = segg + nseg, *mu_seg = segd + nseg;
    double *ga = mu_seg + nseg, *gb = ga + ng, *dw = gb + ng, *db = dw + C, *dslope = db + C;
    const double *act = NULL;
    if (p->has_act) {
        ml_tensor *ta = ml_node_saved(n, p->slot_act);
        if (!ta) { free(gs); ml_tensor_release(g); return ML_ERR_GRAD; }
        act = ml_tensor_data(ta); /* sa[nseg], sb[nseg], slope[nseg] */
    }
    for (int64_t s = 0; s < nseg; s++) mu_seg[s] = mean[seg_group(p, s / C, s % C)];
    int np = act || blk ? 3 : 2;
    if (blk) {
        nc16_gsums_act(ml_tensor_data(g), ml_tensor_data(x), N, C, L, nch, mu_seg, act, act ? act + nseg : NULL,
                       act ? act + 2 * nseg : NULL, part);
    } else if (act) {
        if (dt == ML_F32) seg_gsums_act_f32(ml_tensor_data(g), ml_tensor_data(x), nseg, L, nch, mu_seg, act, part);
        else seg_gsums_act_f64(ml_tensor_data(g), ml_tensor_data(x), nseg, L, nch, mu_seg, act, part);
    } else {
        if (dt == ML_F32) seg_gsums_f32(ml_tensor_data(g), ml_tensor_data(x), nseg, L, nch, mu_seg, part);
        else seg_gsums_f64(ml_tensor_data(g), ml_tensor_data(x), nseg, L, nch, mu_seg, part);
    }
    for (int64_t c = 0; c < C; c++) dslope[c] = 0;
    for (int64_t s = 0; s < nseg; s++) {
        double a = 0, b = 0, d = 0;
        for (int64_t k = 0; k < nch; k++) {
            a += part[np * (s * nch + k)];
            b += part[np * (s * nch + k) + 1];
            if (act) d += part[np * (s * nch + k) + 2];
        }
        segg[s] = a; /* sum g (g: gradient w.r.t. the norm's output) */
        segd[s] = b; /* sum g*(x-mean) */
        dslope[s % C] += d; /* PReLU weight: sum over y <= 0 of gz*y */
    }
    /* weight / bias grads: dbeta[c] = sum g, dgamma[c] = sum g*xhat */
    for (int64_t c = 0; c < C; c++) { dw[c] = 0; db[c] = 0; }
    for (int64_t s = 0; s < nseg; s++) {
        int64_t c = s % C, gr = seg_group(p, s / C, c);
        db[c] += segg[s];
        dw[c] += rstd[gr] * segd[s];
    }
    ml_tensor *dx = NULL, *dwt = NULL, *dbt = NULL;
    if (n->needs[0]) {
        if (!(e = ml_tensor_empty(&dx, dt, x->ndim, x->shape))) {
            /* dx = g*pp + (x - mean)*qq + rr per segment */
            double *pp = malloc(sizeof(double) * (size_t)(3 * nseg + 1));
            if (!pp) e = ml_seterr(ML_ERR_OOM, "%s backward: out of memory", op);
            else {
                double *qq = pp + nseg, *rr = qq + nseg, M = seg_count(p);
                for (int64_t gr = 0; gr < ng; gr++) { ga[gr] = 0; gb[gr] = 0; }
                if (!p->const_stats) {
                    for (int64_t s = 0; s < nseg; s++) {
                        int64_t c = s % C, gr = seg_group(p, s / C, c);
                        double wc = w ? w[c] : 1.0;
                        ga[gr] += wc * segg[s];              /* sum dxhat */
                        gb[gr] += wc * rstd[gr] * segd[s];   /* sum dxhat*xhat */
                    }
                }
                for (int64_t s = 0; s < nseg; s++) {
                    int64_t c = s % C, gr = seg_group(p, s / C, c);
                    double wc = w ? w[c] : 1.0, r = rstd[gr], A = ga[gr] / M, B = gb[gr] / M;
                    pp[s] = r * wc;
                    if (p->const_stats) { qq[s] = 0; rr[s] = 0; }
                    else {
                        qq[s] = -r * r * B;
                        rr[s] = -r * A;
                    }
                }
                if (blk) {
                    nc16_lin_act(ml_tensor_data(g), ml_tensor_data(x), ml_tensor_data(dx), N, C, L, nch, mu_seg, act,
                                 act ? act + nseg : NULL, act ? act + 2 * nseg : NULL, pp, qq, rr);
                    dx->layout = ML_LAYOUT_NC16;
                } else if (act) {
                    if (dt == ML_F32) seg_lin_act_f32(ml_tensor_data(g), ml_tensor_data(x), ml_tensor_data(dx), nseg, L, nch, mu_seg, act, pp, qq, rr);
                    else seg_lin_act_f64(ml_tensor_data(g), ml_tensor_data(x), ml_tensor_data(dx), nseg, L, nch, mu_seg, act, pp, qq, rr);
                } else {
                    if (dt == ML_F32) seg_lin_f32(ml_tensor_data(g), ml_tensor_data(x), ml_tensor_data(dx), nseg, L, nch, mu_seg, pp, qq, rr);
                    else seg_lin_f64(ml_tensor_data(g), ml_tensor_data(x), ml_tensor_data(dx), nseg, L, nch, mu_seg, pp, qq, rr);
                }
                free(pp);
            }
        }
    }
    if (!e && n->nin > 1 && n->needs[1]) e = nn_from_doubles(&dwt, (ml_dtype)n->in_dtype[1], n->in_ndim[1], n->in_shape[1], dw);
    if (!e && n->nin > 2 && n->needs[2]) e = nn_from_doubles(&dbt, (ml_dtype)n->in_dtype[2], n->in_ndim[2], n->in_shape[2], db);
    ml_tensor *dst = NULL;
    if (!e && act && n->needs[3]) {
        if (p->act_scalar) {
            for (int64_t c = 1; c < C; c++) dslope[0] += dslope[c];
        }
        e = nn_from_doubles(&dst, (ml_dtype)n->in_dtype[3], n->in_ndim[3], n->in_shape[3], dslope);
    }
    free(gs);
    ml_tensor_release(g);
    if (e) { ml_tensor_release(dx); ml_tensor_release(dwt); ml_tensor_release(dbt); ml_tensor_release(dst); return e; }
    gin[0] = dx;
    if (n->nin > 1) gin[1] = dwt;
    if (n->nin > 2) gin[2] = dbt;
    if (n->nin > 3) gin[3] = dst;
    return ML_OK;
}

static ml_err check_param_vec(const char *op, const char *what, const ml_tensor *t, int64_t C, const ml_tensor *x) {
    if (!t) return ML_OK;
    ml_err e = nn_check_real(op, what, t);
    if (e) return e;
    if (t->ndim != 1 || t->shape[0] != C)
        return ml_seterr(ML_ERR_SHAPE, "%s: %s has shape %s, expected [%lld] for input of shape %s", op, what,
                         ml_shape_str(t->ndim, t->shape), (long long)C, ml_shape_str(x->ndim, x->shape));
    return ML_OK;
}

/* Shared driver for batch/instance/group norm. */
static ml_err segnorm(ml_tensor **out, int kind, ml_tensor *x, int64_t G, ml_tensor *rmean, ml_tensor *rvar,
                      ml_tensor *weight, ml_tensor *bias, bool training, double momentum, double eps,
                      ml_tensor *prelu_w) {
    *out = NULL;
    const char *op = kind_name(kind);
    ml_err e = nn_check_real(op, "input", x);
    if (e) return e;
    int minrank = kind == NK_INSTANCE ? 3 : 2;
    if (x->ndim < minrank)
        return ml_seterr(ML_ERR_SHAPE, "%s: expected input of rank >= %d ([N, C%s]), got shape %s", op, minrank,
                         kind == NK_INSTANCE ? ", spatial..." : ", ...", ml_shape_str(x->ndim, x->shape));
    segnorm_params p = {.kind = kind, .N = x->shape[0], .C = x->shape[1], .S = 1, .G = G};
    for (int d = 2; d < x->ndim; d++) p.S *= x->shape[d];
    if (kind == NK_GROUP && (G <= 0 || p.C % G != 0))
        return ml_seterr(ML_ERR_ARG, "group_norm: number of groups %lld must be positive and divide the %lld channels "
                         "(input shape %s)", (long long)G, (long long)p.C, ml_shape_str(x->ndim, x->shape));
    if ((e = check_param_vec(op, "weight", weight, p.C, x)) || (e = check_param_vec(op, "bias", bias, p.C, x)))
        return e;
    if (kind == NK_BATCH) {
        if ((e = check_param_vec(op, "running_mean", rmean, p.C, x)) ||
            (e = check_param_vec(op, "running_var", rvar, p.C, x)))
            return e;
        if ((rmean == NULL) != (rvar == NULL))
            return ml_seterr(ML_ERR_ARG, "batch_norm: running_mean and running_var must both be given or both be nil");
        if (!training && !rmean)
            return ml_seterr(ML_ERR_ARG, "batch_norm: running_mean and running_var are required in evaluation mode "
                             "(input shape %s)", ml_shape_str(x->ndim, x->shape));
        if (training && p.N * p.S == 1)
            return ml_seterr(ML_ERR_SHAPE, "batch_norm: expected more than 1 value per channel when training, got input "
                             "of shape %s", ml_shape_str(x->ndim, x->shape));
    }
    if (kind == NK_INSTANCE && p.S == 1)
        return ml_seterr(ML_ERR_SHAPE, "instance_norm: expected more than 1 spatial element, got input of shape %s",
                         ml_shape_str(x->ndim, x->shape));
    if (!(eps >= 0)) return ml_seterr(ML_ERR_ARG, "%s: eps must be >= 0, got %g", op, eps);
    p.const_stats = kind == NK_BATCH && !training;
    if (prelu_w) {
        if ((e = nn_check_real(op, "prelu weight", prelu_w))) return e;
        int64_t k = ml_tensor_numel(prelu_w);
        if (prelu_w->ndim > 1 || (k != 1 && k != p.C))
            return ml_seterr(ML_ERR_SHAPE, "%s: prelu weight has shape %s, expected [1] or [%lld] for input of shape %s",
                             op, ml_shape_str(prelu_w->ndim, prelu_w->shape), (long long)p.C,
                             ml_shape_str(x->ndim, x->shape));
        p.has_act = true;
        p.act_scalar = k == 1;
    }
    if (ml_tensor_is_cuda(x)) { /* no device kernel yet: the composition of core ops */
        ml_tensor *ts[6] = {x, rmean, rvar, weight, bias, prelu_w};
        if ((e = ml_check_same_device(op, 6, ts))) return e;
        return ml_norm_composite(out, kind == NK_BATCH ? ML_NORM_BATCH : kind == NK_INSTANCE ? ML_NORM_INSTANCE
                                                                                             : ML_NORM_GROUP,
                                 x, G, rmean, rvar, weight, bias, training, momentum, eps, prelu_w);
    }

    ml_tensor *xc = NULL, *y = NULL, *tm = NULL, *tr = NULL, *tw = NULL, *ta = NULL;
    ml_dtype dt = (ml_dtype)x->dtype;
    int64_t N = p.N, C = p.C, L = p.S, nseg = N * C, ng = seg_ngroups(&p), nch = nchunks(L);
    double *buf = NULL;
    /* batch norm reads and writes ML_LAYOUT_NC16 in place (the layout of the convolutions around it) */
    bool blk = kind == NK_BATCH && x->layout == ML_LAYOUT_NC16 && dt == ML_F32 && C % 16 == 0;
    if (blk) {
        ml_tensor_retain(x);
        xc = x;
    } else if ((e = nn_contig(&xc, x))) {
        return e;
    }
    if ((e = ml_tensor_empty(&y, dt, x->ndim, x->shape))) goto fail;
    if ((e = ml_tensor_empty(&tm, ML_F64, 1, &ng)) || (e = ml_tensor_empty(&tr, ML_F64, 1, &ng))) goto fail;
    buf = malloc(sizeof(double) * (size_t)(3 * nseg * nch + 2 * nseg + 2 * C + 8));
    if (!buf) { e = ml_seterr(ML_ERR_OOM, "%s: out of memory", op); goto fail; }
    double *part = buf, *sa = part + 3 * nseg * nch, *sb = sa + nseg, *w = sb + nseg, *b = w + C;
    double *mean = ml_tensor_data(tm), *rstd = ml_tensor_data(tr);
    for (int64_t c = 0; c < C; c++) { w[c] = 1; b[c] = 0; }
    if (weight) nn_load_vec(weight, w, C);
    if (bias) nn_load_vec(bias, b, C);

    if (p.const_stats) {
        nn_load_vec(rmean, mean, C);
        nn_load_vec(rvar, rstd, C);
        for (int64_t c = 0; c < C; c++) rstd[c] = 1.0 / sqrt(rstd[c] + eps);
    } else {
        if (blk) nc16_stats(ml_tensor_data(xc), N, C, L, nch, part);
        else if (dt == ML_F32) seg_stats_f32(ml_tensor_data(xc), nseg, L, nch, part);
        else seg_stats_f64(ml_tensor_data(xc), nseg, L, nch, part);
        double *gn = malloc(sizeof(double) * (size_t)(3 * ng + 1));
        if (!gn) { e = ml_seterr(ML_ERR_OOM, "%s: out of memory", op); goto fail; }
        double *gm = gn + ng, *gm2 = gm + ng;
        for (int64_t gr = 0; gr < ng; gr++) { gn[gr] = 0; gm[gr] = 0; gm2[gr] = 0; }
        /* merge in a fixed order: segments by (n, c), chunks in order */
        for (int64_t s = 0; s < nseg; s++) {
            int64_t gr = seg_group(&p, s / C, s % C);
            for (int64_t k = 0; k < nch; k++) {
                const double *q = part + 3 * (s * nch + k);
                chan_merge(&gn[gr], &gm[gr], &gm2[gr], q[0], q[1], q[2]);
            }
        }
        for (int64_t gr = 0; gr < ng; gr++) {
            double var = gn[gr] > 0 ? gm2[gr] / gn[gr] : NAN;
            mean[gr] = gn[gr] > 0 ? gm[gr] : NAN;
            rstd[gr] = 1.0 / sqrt(var + eps);
        }
        if (kind == NK_BATCH && rmean) {
            double M = (double)(N * L);
            for (int64_t c = 0; c < C; c++) {
                double unb = gm2[c] / (M - 1);
                int64_t om = rmean->offset + c * rmean->stride[0], ov = rvar->offset + c * rvar->stride[0];
                double rm = ml_load_elem(rmean->storage->data, (ml_dtype)rmean->dtype, om);
                double rv = ml_load_elem(rvar->storage->data, (ml_dtype)rvar->dtype, ov);
                ml_store_elem(rmean->storage->data, (ml_dtype)rmean->dtype, om, (1 - momentum) * rm + momentum * mean[c]);
                ml_store_elem(rvar->storage->data, (ml_dtype)rvar->dtype, ov, (1 - momentum) * rv + momentum * unb);
            }
            ml_tensor_bump_version(rmean);
            if (rvar->storage != rmean->storage) ml_tensor_bump_version(rvar);
        }
        free(gn);
    }
    /* y = x*sa + sb per segment, then (fused) PReLU with slope[seg] */
    if (p.has_act) {
        int64_t three = 3 * nseg;
        if ((e = ml_tensor_empty(&ta, ML_F64, 1, &three))) goto fail;
    }
    double *acts = ta ? ml_tensor_data(ta) : NULL;
    if (acts) { sa = acts; sb = acts + nseg; }
    for (int64_t s = 0; s < nseg; s++) {
        int64_t c = s % C, gr = seg_group(&p, s / C, c);
        sa[s] = rstd[gr] * w[c];
        sb[s] = b[c] - mean[gr] * sa[s];
    }
    if (acts) {
        double *slope = acts + 2 * nseg;
        for (int64_t s = 0; s < nseg; s++) {
            int64_t k = p.act_scalar ? 0 : s % C;
            slope[s] = ml_load_elem(prelu_w->storage->data, (ml_dtype)prelu_w->dtype,
                                    prelu_w->offset + k * (prelu_w->ndim ? prelu_w->stride[0] : 0));
        }
    }
    if (blk) {
        nc16_affine_act(ml_tensor_data(xc), ml_tensor_data(y), N, C, L, nch, sa, sb, acts ? acts + 2 * nseg : NULL);
        y->layout = ML_LAYOUT_NC16;
    } else if (acts) {
        if (dt == ML_F32) seg_affine_act_f32(ml_tensor_data(xc), ml_tensor_data(y), nseg, L, nch, acts);
        else seg_affine_act_f64(ml_tensor_data(xc), ml_tensor_data(y), nseg, L, nch, acts);
    } else {
        if (dt == ML_F32) seg_affine_f32(ml_tensor_data(xc), ml_tensor_data(y), nseg, L, nch, sa, sb);
        else seg_affine_f64(ml_tensor_data(xc), ml_tensor_data(y), nseg, L, nch, sa, sb);
    }

    ml_tensor *ins[4] = {x, weight, bias, prelu_w};
    int nin = p.has_act ? 4 : 3;
    if (ml_needs_grad(nin, ins)) {
        p.has_w = weight != NULL;
        if (weight && (e = nn_from_doubles(&tw, ML_F64, 1, &C, w))) goto fail;
        p.slot_x = 0; p.slot_mean = 1; p.slot_rstd = 2; p.slot_w = 3; p.slot_act = 4;
        ml_tensor *saves[5] = {xc, tm, tr, tw, ta};
        if ((e = nn_record(op, bw_segnorm, nin, ins, &y, &p, sizeof p, 5, saves))) goto fail;
    }
    free(buf);
    ml_tensor_release(xc); ml_tensor_release(tm); ml_tensor_release(tr); ml_tensor_release(tw); ml_tensor_release(ta);
    *out = y;
    return ML_OK;
fail:
    free(buf);
    ml_tensor_release(xc); ml_tensor_release(y); ml_tensor_release(tm); ml_tensor_release(tr); ml_tensor_release(tw);
    ml_tensor_release(ta);
    return e;
}

ml_err ml_batch_norm(ml_tensor **out, ml_tensor *x, ml_tensor *running_mean, ml_tensor *running_var,
                     ml_tensor *weight, ml_tensor *bias, bool training, double momentum, double eps) {
    return segnorm(out, NK_BATCH, x, 0, running_mean, running_var, weight, bias, training, momentum, eps, NULL);
}

ml_err ml_instance_norm(ml_tensor **out, ml_tensor *x, ml_tensor *weight, ml_tensor *bias, double eps) {
    return segnorm(out, NK_INSTANCE, x, 0, NULL, NULL, weight, bias, true, 0, eps, NULL);
}

ml_err ml_group_norm(ml_tensor **out, ml_tensor *x, int64_t groups, ml_tensor *weight, ml_tensor *bias, double eps) {
    return segnorm(out, NK_GROUP, x, groups, NULL, NULL, weight, bias, true, 0, eps, NULL);
}

ml_err ml_batch_norm_prelu(ml_tensor **out, ml_tensor *x, ml_tensor *running_mean, ml_tensor *running_var,
                           ml_tensor *weight, ml_tensor *bias, bool training, double momentum, double eps,
                           ml_tensor *prelu_weight) {
    return segnorm(out, NK_BATCH, x, 0, running_mean, running_var, weight, bias, training, momentum, eps, prelu_weight);
}

ml_err ml_instance_norm_prelu(ml_tensor **out, ml_tensor *x, ml_tensor *weight, ml_tensor *bias, double eps,
                              ml_tensor *prelu_weight) {
    return segnorm(out, NK_INSTANCE, x, 0, NULL, NULL, weight, bias, true, 0, eps, prelu_weight);
}

ml_err ml_group_norm_prelu(ml_tensor **out, ml_tensor *x, int64_t groups, ml_tensor *weight, ml_tensor *bias,
                           double eps, ml_tensor *prelu_weight) {
    return segnorm(out, NK_GROUP, x, groups, NULL, NULL, weight, bias, true, 0, eps, prelu_weight);
}

/* ------------------------------------------------------------------------------ layer norm */
typedef struct {
    int64_t R, K;
    bool has_w;
} ln_params;
_Static_assert(sizeof(ln_params) <= ML_NODE_PARAM_BYTES, "params");

/* saved: 0 x (contiguous), 1 mean [R] f64, 2 rstd [R] f64, 3 weight (contiguous, x dtype) or NULL */
static ml_err bw_layer_norm(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const ln_params *p = (const ln_params *)n->params;
    ml_tensor *x = ml_node_saved(n, 0), *tm = ml_node_saved(n, 1), *tr = ml_node_saved(n, 2);
    ml_tensor *tw = p->has_w ? ml_node_saved(n, 3) : NULL;
    if (!x || !tm || !tr || (p->has_w && !tw)) return ML_ERR_GRAD;
    ml_dtype dt = (ml_dtype)x->dtype;
    ml_tensor *g = NULL, *dx = NULL, *dw = NULL, *db = NULL;
    ml_err e = nn_contig_as(&g, gout[0], dt);
    if (e) return e;
    int64_t R = p->R, K = p->K, nch = nchunks(K);
    const double *mean = ml_tensor_data(tm), *rstd = ml_tensor_data(tr);
    double *buf = NULL;
    if (n->needs[0]) {
        buf = malloc(sizeof(double) * (size_t)(2 * R * nch + 3 * R + 1));
        if (!buf) { e = ml_seterr(ML_ERR_OOM, "layer_norm backward: out of memory"); goto done; }
        if ((e = ml_tensor_empty(&dx, dt, x->ndim, x->shape))) goto done;
        double *part = buf, *pp = part + 2 * R * nch, *qq = pp + R, *rr = qq + R;
        if (dt == ML_F32) ln_rowsums_f32(ml_tensor_data(g), ml_tensor_data(x), tw ? ml_tensor_data(tw) : NULL, R, K, nch, mean, part);
        else ln_rowsums_f64(ml_tensor_data(g), ml_tensor_data(x), tw ? ml_tensor_data(tw) : NULL, R, K, nch, mean, part);
        for (int64_t r = 0; r < R; r++) {
            double A = 0, D = 0;
            for (int64_t k = 0; k < nch; k++) { A += part[2 * (r * nch + k)]; D += part[2 * (r * nch + k) + 1]; }
            /* dx = rstd*(g*w - A/K) - rstd^3*D/K*(x-mean) */
            double s = rstd[r];
            pp[r] = s;
            qq[r] = -s * s * s * D / (double)K;
            rr[r] = -s * A / (double)K;
        }
        if (dt == ML_F32) ln_dx_f32(ml_tensor_data(g), ml_tensor_data(x), tw ? ml_tensor_data(tw) : NULL, ml_tensor_data(dx), R, K, nch, mean, pp, qq, rr);
        else ln_dx_f64(ml_tensor_data(g), ml_tensor_data(x), tw ? ml_tensor_data(tw) : NULL, ml_tensor_data(dx), R, K, nch, mean, pp, qq, rr);
    }
    bool need_w = n->needs[1], need_b = n->needs[2];
    if (need_w || need_b) {
        double *acc = malloc(sizeof(double) * (size_t)(2 * K + 1));
        if (!acc) { e = ml_seterr(ML_ERR_OOM, "layer_norm backward: out of memory"); goto done; }
        if (dt == ML_F32) ln_wgrad_f32(ml_tensor_data(g), ml_tensor_data(x), R, K, mean, rstd, acc, acc + K);
        else ln_wgrad_f64(ml_tensor_data(g), ml_tensor_data(x), R, K, mean, rstd, acc, acc + K);
        if (need_w) e = nn_from_doubles(&dw, (ml_dtype)n->in_dtype[1], n->in_ndim[1], n->in_shape[1], acc);
        if (!e && need_b) e = nn_from_doubles(&db, (ml_dtype)n->in_dtype[2], n->in_ndim[2], n->in_shape[2], acc + K);
        free(acc);
    }
done:
    free(buf);
    ml_tensor_release(g);
    if (e) { ml_tensor_release(dx); ml_tensor_release(dw); ml_tensor_release(db); return e; }
    gin[0] = dx; gin[1] = dw; gin[2] = db;
    return ML_OK;
}

ml_err ml_layer_norm(ml_tensor **out, ml_tensor *x, int nnorm, ml_tensor *weight, ml_tensor *bias, double eps) {
    *out = NULL;
    ml_err e = nn_check_real("layer_norm", "input", x);
    if (e) return e;
    if (nnorm < 1 || nnorm > x->ndim)
        return ml_seterr(ML_ERR_ARG, "layer_norm: cannot normalize over the last %d dims of input of shape %s", nnorm,
                         ml_shape_str(x->ndim, x->shape));
    const int64_t *ns = x->shape + (x->ndim - nnorm);
    ml_tensor *pw[2] = {weight, bias};
    const char *pn[2] = {"weight", "bias"};
    for (int i = 0; i < 2; i++) {
        ml_tensor *t = pw[i];
        if (!t) continue;
        if ((e = nn_check_real("layer_norm", pn[i], t))) return e;
        bool ok = t->ndim == nnorm;
        for (int d = 0; ok && d < nnorm; d++) ok = t->shape[d] == ns[d];
        if (!ok)
            return ml_seterr(ML_ERR_SHAPE, "layer_norm: %s has shape %s, expected %s (the last %d dims of input %s)", pn[i],
                             ml_shape_str(t->ndim, t->shape), ml_shape_str(nnorm, ns), nnorm,
                             ml_shape_str(x->ndim, x->shape));
    }
    if (!(eps >= 0)) return ml_seterr(ML_ERR_ARG, "layer_norm: eps must be >= 0, got %g", eps);
    if (ml_tensor_is_cuda(x)) {
        if ((e = ml_check_same_device("layer_norm", 3, (ml_tensor *[]){x, weight, bias}))) return e;
        return ml_layer_norm_composite(out, x, nnorm, weight, bias, eps);
    }
    ln_params p = {.R = 1, .K = 1, .has_w = weight != NULL};
    for (int d = 0; d < x->ndim - nnorm; d++) p.R *= x->shape[d];
    for (int d = 0; d < nnorm; d++) p.K *= ns[d];
    ml_dtype dt = (ml_dtype)x->dtype;
    ml_tensor *xc = NULL, *wc = NULL, *bc = NULL, *y = NULL, *tm = NULL, *tr = NULL;
    double *part = NULL;
    int64_t R = p.R, K = p.K, nch = nchunks(K);
    if ((e = nn_contig(&xc, x))) return e;
    if (weight && (e = nn_contig_as(&wc, weight, dt))) goto fail;
    if (bias && (e = nn_contig_as(&bc, bias, dt))) goto fail;
    if ((e = ml_tensor_empty(&y, dt, x->ndim, x->shape))) goto fail;
    if ((e = ml_tensor_empty(&tm, ML_F64, 1, &R)) || (e = ml_tensor_empty(&tr, ML_F64, 1, &R))) goto fail;
    part = malloc(sizeof(double) * (size_t)(3 * R * nch + 1));
    if (!part) { e = ml_seterr(ML_ERR_OOM, "layer_norm: out of memory"); goto fail; }
    double *mean = ml_tensor_data(tm), *rstd = ml_tensor_data(tr);
    if (dt == ML_F32) seg_stats_f32(ml_tensor_data(xc), R, K, nch, part);
    else seg_stats_f64(ml_tensor_data(xc), R, K, nch, part);
    for (int64_t r = 0; r < R; r++) {
        double cn = 0, m = 0, m2 = 0;
        for (int64_t k = 0; k < nch; k++) {
            const double *q = part + 3 * (r * nch + k);
            chan_merge(&cn, &m, &m2, q[0], q[1], q[2]);
        }
        mean[r] = cn > 0 ? m : NAN;
        rstd[r] = 1.0 / sqrt((cn > 0 ? m2 / cn : NAN) + eps);
    }
    if (dt == ML_F32)
        ln_fwd_f32(ml_tensor_data(xc), wc ? ml_tensor_data(wc) : NULL, bc ? ml_tensor_data(bc) : NULL, ml_tensor_data(y), R, K, nch, mean, rstd);
    else
        ln_fwd_f64(ml_tensor_data(xc), wc ? ml_tensor_data(wc) : NULL, bc ? ml_tensor_data(bc) : NULL, ml_tensor_data(y), R, K, nch, mean, rstd);
    ml_tensor *ins[3] = {x, weight, bias};
    ml_tensor *saves[4] = {xc, tm, tr, wc};
    if ((e = nn_record("layer_norm", bw_layer_norm, 3, ins, &y, &p, sizeof p, weight ? 4 : 3, saves))) goto fail;
    free(part);
    ml_tensor_release(xc); ml_tensor_release(wc); ml_tensor_release(bc); ml_tensor_release(tm); ml_tensor_release(tr);
    *out = y;
    return ML_OK;
fail:
    free(part);
    ml_tensor_release(xc); ml_tensor_release(wc); ml_tensor_release(bc); ml_tensor_release(y);
    ml_tensor_release(tm); ml_tensor_release(tr);
    return e;
}

#else /* ------------------------------------------------- type-generic kernels (T, S(name)) */

/* Per chunk: (count, mean, sum of squared deviations) in double. st has 3*nseg*nch entries. */
static void S(seg_stats)(const T *x, int64_t nseg, int64_t L, int64_t nch, double *st) {
    int64_t total = nseg * nch;
    int nt = nn_threads(nseg * L, total);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t k = 0; k < total; k++) {
        int64_t seg = k / nch, ci = k % nch;
        int64_t lo = ci * NN_CHUNK, hi = lo + NN_CHUNK < L ? lo + NN_CHUNK : L;
        const T *q = x + seg * L;
        double s = 0, m2 = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t i = lo; i < hi; i++) s += (double)q[i];
        double cnt = (double)(hi > lo ? hi - lo : 0), m = cnt > 0 ? s / cnt : 0;
#pragma omp simd reduction(+ : m2)
        for (int64_t i = lo; i < hi; i++) { double d = (double)q[i] - m; m2 += d * d; }
        st[3 * k] = cnt;
        st[3 * k + 1] = m;
        st[3 * k + 2] = m2;
    }
}

/* y = x*a[seg] + b[seg] */
static void S(seg_affine)(const T *x, T *y, int64_t nseg, int64_t L, int64_t nch, const double *a, const double *b) {
    int64_t total = nseg * nch;
    int nt = nn_threads(nseg * L, total);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t k = 0; k < total; k++) {
        int64_t seg = k / nch, ci = k % nch;
        int64_t lo = ci * NN_CHUNK, hi = lo + NN_CHUNK < L ? lo + NN_CHUNK : L;
        const T *q = x + seg * L;
        T *o = y + seg * L;
        T aa = (T)a[seg], bb = (T)b[seg];
#pragma omp simd
        for (int64_t i = lo; i < hi; i++) o[i] = q[i] * aa + bb;
    }
}

/* Per chunk: sum g and sum g*(x - mu[seg]). part has 2*nseg*nch entries. */
static void S(seg_gsums)(const T *g, const T *x, int64_t nseg, int64_t L, int64_t nch, const double *mu, double *part) {
    int64_t total = nseg * nch;
    int nt = nn_threads(nseg * L, total);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t k = 0; k < total; k++) {
        int64_t seg = k / nch, ci = k % nch;
        int64_t lo = ci * NN_CHUNK, hi = lo + NN_CHUNK < L ? lo + NN_CHUNK : L;
        const T *gq = g + seg * L, *xq = x + seg * L;
        const double m = mu[seg];
        const T mt = (T)m;
        double sg = 0, sd = 0;
        for (int64_t b0 = lo; b0 < hi; b0 += NN_SUB) {
            int64_t b1 = b0 + NN_SUB < hi ? b0 + NN_SUB : hi;
            T fg = 0, fd = 0;
#pragma omp simd reduction(+ : fg, fd)
            for (int64_t i = b0; i < b1; i++) {
                T gv = gq[i];
                fg += gv;
                fd += gv * (xq[i] - mt);
            }
            sg += (double)fg;
            sd += (double)fd;
        }
        part[2 * k] = sg;
        part[2 * k + 1] = sd + ((double)mt - m) * sg; /* sum g*(x - m) from the rounded mean mt */
    }
}

/* fused PReLU: act = sa[nseg], sb[nseg], slope[nseg]; z = y > 0 ? y : slope*y with y = x*sa + sb */
static void S(seg_affine_act)(const T *x, T *z, int64_t nseg, int64_t L, int64_t nch, const double *act) {
    int64_t total = nseg * nch;
    int nt = nn_threads(nseg * L, total);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t k = 0; k < total; k++) {
        int64_t seg = k / nch, ci = k % nch;
        int64_t lo = ci * NN_CHUNK, hi = lo + NN_CHUNK < L ? lo + NN_CHUNK : L;
        const T *q = x + seg * L;
        T *o = z + seg * L;
        T aa = (T)act[seg], bb = (T)act[nseg + seg], sl = (T)act[2 * nseg + seg];
#pragma omp simd
        for (int64_t i = lo; i < hi; i++) {
            T y = q[i] * aa + bb;
            o[i] = y > 0 ? y : y * sl;
        }
    }
}

/* Per chunk, with gy = (y > 0 ? gz : slope*gz) recomputed from x: sum gy, sum gy*(x - mu), and
 * sum over y <= 0 of gz*y (the PReLU weight gradient). part has 3*nseg*nch entries. */
static void S(seg_gsums_act)(const T *g, const T *x, int64_t nseg, int64_t L, int64_t nch, const double *mu,
                             const double *act, double *part) {
    int64_t total = nseg * nch;
    int nt = nn_threads(nseg * L, total);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t k = 0; k < total; k++) {
        int64_t seg = k / nch, ci = k % nch;
        int64_t lo = ci * NN_CHUNK, hi = lo + NN_CHUNK < L ? lo + NN_CHUNK : L;
        const T *gq = g + seg * L, *xq = x + seg * L;
        T aa = (T)act[seg], bb = (T)act[nseg + seg], sl = (T)act[2 * nseg + seg];
        const double m = mu[seg];
        const T mt = (T)m;
        double sg = 0, sd = 0, ss = 0;
        for (int64_t b0 = lo; b0 < hi; b0 += NN_SUB) {
            int64_t b1 = b0 + NN_SUB < hi ? b0 + NN_SUB : hi;
            T fg = 0, fd = 0, fs = 0;
#pragma omp simd reduction(+ : fg, fd, fs)
            for (int64_t i = b0; i < b1; i++) {
                T xv = xq[i], y = xv * aa + bb, gz = gq[i];
                T gy = y > 0 ? gz : gz * sl;
                fg += gy;
                fd += gy * (xv - mt);
                fs += y > 0 ? (T)0 : gz * y;
            }
            sg += (double)fg;
            sd += (double)fd;
            ss += (double)fs;
        }
        part[3 * k] = sg;
        part[3 * k + 1] = sd + ((double)mt - m) * sg; /* sum gy*(x - m) from the rounded mean mt */
        part[3 * k + 2] = ss;
    }
}

/* dx = gy*p[seg] + (x - mu[seg])*q[seg] + r[seg], gy recomputed as in seg_gsums_act */
static void S(seg_lin_act)(const T *g, const T *x, T *dx, int64_t nseg, int64_t L, int64_t nch, const double *mu,
                           const double *act, const double *p, const double *q, const double *r) {
    int64_t total = nseg * nch;
    int nt = nn_threads(nseg * L, total);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t k = 0; k < total; k++) {
        int64_t seg = k / nch, ci = k % nch;
        int64_t lo = ci * NN_CHUNK, hi = lo + NN_CHUNK < L ? lo + NN_CHUNK : L;
        const T *gq = g + seg * L, *xq = x + seg * L;
        T *o = dx + seg * L;
        T aa = (T)act[seg], bb = (T)act[nseg + seg], sl = (T)act[2 * nseg + seg];
        T m = (T)mu[seg], pp = (T)p[seg], qq = (T)q[seg], rr = (T)r[seg];
#pragma omp simd
        for (int64_t i = lo; i < hi; i++) {
            T y = xq[i] * aa + bb;
            T gy = y > 0 ? gq[i] : gq[i] * sl;
            o[i] = gy * pp + (xq[i] - m) * qq + rr;
        }
    }
}

/* dx = g*p[seg] + (x - mu[seg])*q[seg] + r[seg] */
static void S(seg_lin)(const T *g, const T *x, T *dx, int64_t nseg, int64_t L, int64_t nch, const double *mu,
                       const double *p, const double *q, const double *r) {
    int64_t total = nseg * nch;
    int nt = nn_threads(nseg * L, total);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t k = 0; k < total; k++) {
        int64_t seg = k / nch, ci = k % nch;
        int64_t lo = ci * NN_CHUNK, hi = lo + NN_CHUNK < L ? lo + NN_CHUNK : L;
        const T *gq = g + seg * L, *xq = x + seg * L;
        T *o = dx + seg * L;
        T m = (T)mu[seg], pp = (T)p[seg], qq = (T)q[seg], rr = (T)r[seg];
#pragma omp simd
        for (int64_t i = lo; i < hi; i++) o[i] = gq[i] * pp + (xq[i] - m) * qq + rr;
    }
}

/* layer norm forward: y = (x - mean)*rstd*w + b per row */
static void S(ln_fwd)(const T *x, const T *w, const T *b, T *y, int64_t R, int64_t K, int64_t nch, const double *mean,
                      const double *rstd) {
    int64_t total = R * nch;
    int nt = nn_threads(R * K, total);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t k = 0; k < total; k++) {
        int64_t r = k / nch, ci = k % nch;
        int64_t lo = ci * NN_CHUNK, hi = lo + NN_CHUNK < K ? lo + NN_CHUNK : K;
        const T *q = x + r * K;
        T *o = y + r * K;
        T s = (T)rstd[r], sb = (T)(-mean[r] * rstd[r]);
        if (w && b) {
#pragma omp simd
            for (int64_t i = lo; i < hi; i++) o[i] = (q[i] * s + sb) * w[i] + b[i];
        } else if (w) {
#pragma omp simd
            for (int64_t i = lo; i < hi; i++) o[i] = (q[i] * s + sb) * w[i];
        } else if (b) {
#pragma omp simd
            for (int64_t i = lo; i < hi; i++) o[i] = (q[i] * s + sb) + b[i];
        } else {
#pragma omp simd
            for (int64_t i = lo; i < hi; i++) o[i] = q[i] * s + sb;
        }
    }
}

/* per row chunk: sum g*w and sum g*w*(x - mean) */
static void S(ln_rowsums)(const T *g, const T *x, const T *w, int64_t R, int64_t K, int64_t nch, const double *mean,
                          double *part) {
    int64_t total = R * nch;
    int nt = nn_threads(R * K, total);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t k = 0; k < total; k++) {
        int64_t r = k / nch, ci = k % nch;
        int64_t lo = ci * NN_CHUNK, hi = lo + NN_CHUNK < K ? lo + NN_CHUNK : K;
        const T *gq = g + r * K, *xq = x + r * K;
        double m = mean[r], sa = 0, sd = 0;
        if (w) {
#pragma omp simd reduction(+ : sa, sd)
            for (int64_t i = lo; i < hi; i++) {
                double gw = (double)gq[i] * (double)w[i];
                sa += gw;
                sd += gw * ((double)xq[i] - m);
            }
        } else {
#pragma omp simd reduction(+ : sa, sd)
            for (int64_t i = lo; i < hi; i++) {
                double gw = (double)gq[i];
                sa += gw;
                sd += gw * ((double)xq[i] - m);
            }
        }
        part[2 * k] = sa;
        part[2 * k + 1] = sd;
    }
}

/* dx = g*w*p[r] + (x - mean[r])*q[r] + rr[r]; without w it is seg_lin */
static void S(ln_dx)(const T *g, const T *x, const T *w, T *dx, int64_t R, int64_t K, int64_t nch, const double *mean,
                     const double *p, const double *q, const double *rr) {
    if (!w) { /* no affine weight: the same update as the norm's shared linear rule */
        S(seg_lin)(g, x, dx, R, K, nch, mean, p, q, rr);
        return;
    }
    int64_t total = R * nch;
    int nt = nn_threads(R * K, total);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t k = 0; k < total; k++) {
        int64_t r = k / nch, ci = k % nch;
        int64_t lo = ci * NN_CHUNK, hi = lo + NN_CHUNK < K ? lo + NN_CHUNK : K;
        const T *gq = g + r * K, *xq = x + r * K;
        T *o = dx + r * K;
        T m = (T)mean[r], pp = (T)p[r], qq = (T)q[r], c0 = (T)rr[r];
#pragma omp simd
        for (int64_t i = lo; i < hi; i++) o[i] = gq[i] * w[i] * pp + (xq[i] - m) * qq + c0;
    }
}

/* column sums over rows: dw[j] = sum_r g*(x-mean)*rstd, db[j] = sum_r g (parallel over column blocks) */
static void S(ln_wgrad)(const T *g, const T *x, int64_t R, int64_t K, const double *mean, const double *rstd,
                        double *dw, double *db) {
    int64_t nblk = (K + 255) / 256;
    int nt = nn_threads(R * K, nblk);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t bk = 0; bk < nblk; bk++) {
        int64_t lo = bk * 256, hi = lo + 256 < K ? lo + 256 : K;
        for (int64_t j = lo; j < hi; j++) { dw[j] = 0; db[j] = 0; }
        for (int64_t r = 0; r < R; r++) {
            const T *gq = g + r * K, *xq = x + r * K;
            double m = mean[r], s = rstd[r];
#pragma omp simd
            for (int64_t j = lo; j < hi; j++) {
                double gv = (double)gq[j];
                dw[j] += gv * ((double)xq[j] - m) * s;
                db[j] += gv;
            }
        }
    }
}

#endif
