/* softmax, log_softmax (any dim, max-shifted, fused backward) and dropout (Philox counters:
 * reproducible for a seed and independent of the thread count; backward regenerates the mask).
 *
 * Softmax views x as [outer, D, inner] (D = the softmax dim). Rows (inner == 1) are processed one
 * per task; for inner > 1 a task handles a block of up to SM_BLK inner positions so the loops
 * over the block vectorize. Sums are accumulated in double. Kernels are written once for
 * T = float and T = double (this file includes itself with ML_ACT_GEN defined). */
#ifndef ML_ACT_GEN
#include "ml_nn_util.h"
#include "ml_nn_composite.h"

#include <math.h>

#define SM_BLK 64

#define DO_GRP 16

/* Philox4x32-10 (identical to ml_philox) for DO_GRP consecutive counters: r[lane][k] */
static inline void philox_group(uint64_t counter0, uint64_t seed, uint32_t r[4][DO_GRP]) {
    uint32_t k0i = (uint32_t)seed, k1i = (uint32_t)(seed >> 32);
#pragma omp simd
    for (int k = 0; k < DO_GRP; k++) {
        uint64_t counter = counter0 + (uint64_t)k;
        uint32_t c0 = (uint32_t)counter, c1 = (uint32_t)(counter >> 32), c2 = 0, c3 = 0, k0 = k0i, k1 = k1i;
        for (int rd = 0; rd < 10; rd++) {
            uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
            uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
            c1 = (uint32_t)p1;
            c3 = (uint32_t)p0;
            c0 = n0;
            c2 = n2;
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        r[0][k] = c0; r[1][k] = c1; r[2][k] = c2; r[3][k] = c3;
    }
}

#define ML_ACT_GEN
#define T float
#define S(name) name##_f32
#define VEXP nn_vexpf
#include "ml_act.c"
#undef T
#undef S
#undef VEXP
#define T double
#define S(name) name##_f64
#define VEXP nn_vexpd
#include "ml_act.c"
#undef T
#undef S
#undef VEXP
#undef ML_ACT_GEN

/* ------------------------------------------------------------------------------ softmax */
typedef struct {
    int64_t outer, D, inner;
    bool log;
} sm_params;
_Static_assert(sizeof(sm_params) <= ML_NODE_PARAM_BYTES, "params");

static void sm_geometry(const ml_tensor *x, int d, int64_t *outer, int64_t *D, int64_t *inner) {
    *outer = 1; *inner = 1; *D = 1;
    for (int i = 0; i < x->ndim; i++) {
        if (i < d) *outer *= x->shape[i];
        else if (i == d) *D = x->shape[i];
        else *inner *= x->shape[i];
    }
}

static ml_err bw_softmax(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const sm_params *p = (const sm_params *)n->params;
    ml_tensor *y = ml_node_saved(n, 0), *g = NULL, *dx = NULL;
    if (!y) return ML_ERR_GRAD;
    ml_dtype dt = (ml_dtype)y->dtype;
    ml_err e = nn_contig_as(&g, gout[0], dt);
    if (e) return e;
    if ((e = ml_tensor_empty(&dx, dt, y->ndim, y->shape))) { ml_tensor_release(g); return e; }
    if (dt == ML_F32) sm_bwd_f32(ml_tensor_data(y), ml_tensor_data(g), ml_tensor_data(dx), p->outer, p->D, p->inner, p->log);
    else sm_bwd_f64(ml_tensor_data(y), ml_tensor_data(g), ml_tensor_data(dx), p->outer, p->D, p->inner, p->log);
    ml_tensor_release(g);
    gin[0] = dx;
    return ML_OK;
}

static ml_err softmax_impl(ml_tensor **out, ml_tensor *x, int dim, bool log, const char *op) {
    *out = NULL;
    ml_err e = nn_check_real(op, "input", x);
    if (e) return e;
    int d = ml_wrap_dim(op, dim, x->ndim);
    if (d < 0) return ML_ERR_DIM;
    if (ml_tensor_is_cuda(x)) return ml_softmax_composite(out, x, d, log);
    sm_params p = {.log = log};
    sm_geometry(x, x->ndim ? d : -1, &p.outer, &p.D, &p.inner);
    ml_tensor *xc = NULL, *y = NULL;
    if ((e = nn_contig(&xc, x))) return e;
    if ((e = ml_tensor_empty(&y, (ml_dtype)x->dtype, x->ndim, x->shape))) { ml_tensor_release(xc); return e; }
    if (x->dtype == ML_F32) sm_fwd_f32(ml_tensor_data(xc), ml_tensor_data(y), p.outer, p.D, p.inner, log);
    else sm_fwd_f64(ml_tensor_data(xc), ml_tensor_data(y), p.outer, p.D, p.inner, log);
    ml_tensor_release(xc);
    ml_tensor *ins[1] = {x};
    if (ml_needs_grad(1, ins)) {
        /* save a separate header of y: the output itself holds the node (no reference cycle) */
        ml_tensor *ys = NULL;
        if ((e = ml_detach(&ys, y))) { ml_tensor_release(y); return e; }
        e = nn_record(op, bw_softmax, 1, ins, &y, &p, sizeof p, 1, &ys);
        ml_tensor_release(ys);
        if (e) return e;
    }
    *out = y;
    return ML_OK;
}

ml_err ml_softmax(ml_tensor **out, ml_tensor *x, int dim) { return softmax_impl(out, x, dim, false, "softmax"); }
ml_err ml_log_softmax(ml_tensor **out, ml_tensor *x, int dim) { return softmax_impl(out, x, dim, true, "log_softmax"); }

/* ------------------------------------------------------------------------------ dropout */
typedef struct {
    uint64_t seed, base;
    double p;
} do_params;
_Static_assert(sizeof(do_params) <= ML_NODE_PARAM_BYTES, "params");

static ml_err bw_dropout(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const do_params *p = (const do_params *)n->params;
    ml_dtype dt = (ml_dtype)n->in_dtype[0];
    ml_tensor *g = NULL, *dx = NULL;
    ml_err e = nn_contig_as(&g, gout[0], dt);
    if (e) return e;
    if ((e = ml_tensor_empty(&dx, dt, n->in_ndim[0], n->in_shape[0]))) { ml_tensor_release(g); return e; }
    int64_t cnt = ml_tensor_numel(g);
    if (dt == ML_F32) dropout_apply_f32(ml_tensor_data(g), ml_tensor_data(dx), cnt, p->p, p->seed, p->base);
    else dropout_apply_f64(ml_tensor_data(g), ml_tensor_data(dx), cnt, p->p, p->seed, p->base);
    ml_tensor_release(g);
    gin[0] = dx;
    return ML_OK;
}

ml_err ml_dropout(ml_tensor **out, ml_tensor *x, double p, bool training) {
    *out = NULL;
    if (!(p >= 0 && p <= 1))
        return ml_seterr(ML_ERR_ARG, "dropout: probability has to be between 0 and 1, got %g (input shape %s)", p,
                         ml_shape_str(x->ndim, x->shape));
    if (!training || p == 0) {
        ml_tensor_retain(x);
        *out = x;
        return ML_OK;
    }
    ml_err e = nn_check_real("dropout", "input", x);
    if (e) return e;
    if (ml_tensor_is_cuda(x)) return ml_dropout_composite(out, x, p);
    ml_tensor *xc = NULL, *y = NULL;
    if ((e = nn_contig(&xc, x))) return e;
    if ((e = ml_tensor_empty(&y, (ml_dtype)x->dtype, x->ndim, x->shape))) { ml_tensor_release(xc); return e; }
    int64_t cnt = ml_tensor_numel(x);
    do_params prm = {.seed = ml_rng_seed(), .base = ml_rng_reserve((uint64_t)(cnt + 3) / 4), .p = p};
    if (x->dtype == ML_F32) dropout_apply_f32(ml_tensor_data(xc), ml_tensor_data(y), cnt, p, prm.seed, prm.base);
    else dropout_apply_f64(ml_tensor_data(xc), ml_tensor_data(y), cnt, p, prm.seed, prm.base);
    ml_tensor_release(xc);
    ml_tensor *ins[1] = {x};
    if ((e = nn_record("dropout", bw_dropout, 1, ins, &y, &prm, sizeof prm, 0, NULL))) return e;
    *out = y;
    return ML_OK;
}

#else /* ------------------------------------------------- type-generic kernels (T, S(name)) */

static void S(sm_fwd)(const T *x, T *y, int64_t outer, int64_t D, int64_t inner, bool lg) {
    if (outer * D * inner == 0) return;
    if (inner == 1) {
        int nt = nn_threads(outer * D, outer);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
        for (int64_t o = 0; o < outer; o++) {
            const T *xr = x + o * D;
            T *yr = y + o * D;
            T m = -INFINITY;
            for (int64_t d = 0; d < D; d++) m = xr[d] > m ? xr[d] : m;
#pragma omp simd
            for (int64_t d = 0; d < D; d++) yr[d] = xr[d] - m;
            VEXP(yr, D);
            double s = 0;
#pragma omp simd reduction(+ : s)
            for (int64_t d = 0; d < D; d++) s += (double)yr[d];
            if (lg) {
                T ls = (T)log(s);
#pragma omp simd
                for (int64_t d = 0; d < D; d++) yr[d] = xr[d] - m - ls;
            } else {
                T inv = (T)(1.0 / s);
#pragma omp simd
                for (int64_t d = 0; d < D; d++) yr[d] *= inv;
            }
        }
        return;
    }
    int64_t nblk = (inner + SM_BLK - 1) / SM_BLK, tasks = outer * nblk;
    int nt = nn_threads(outer * D * inner, tasks);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t o = t / nblk, lo = (t % nblk) * SM_BLK, hi = lo + SM_BLK < inner ? lo + SM_BLK : inner, w = hi - lo;
        const T *xb = x + o * D * inner + lo;
        T *yb = y + o * D * inner + lo;
        T m[SM_BLK], e[SM_BLK];
        double s[SM_BLK];
        for (int64_t j = 0; j < w; j++) { m[j] = -INFINITY; s[j] = 0; }
        for (int64_t d = 0; d < D; d++) {
            const T *xr = xb + d * inner;
#pragma omp simd
            for (int64_t j = 0; j < w; j++) m[j] = xr[j] > m[j] ? xr[j] : m[j];
        }
        for (int64_t d = 0; d < D; d++) {
            const T *xr = xb + d * inner;
            T *ev = lg ? e : yb + d * inner;
#pragma omp simd
            for (int64_t j = 0; j < w; j++) ev[j] = xr[j] - m[j];
            VEXP(ev, w);
#pragma omp simd
            for (int64_t j = 0; j < w; j++) s[j] += (double)ev[j];
        }
        if (lg) {
            T ls[SM_BLK];
            for (int64_t j = 0; j < w; j++) ls[j] = (T)log(s[j]) + m[j];
            for (int64_t d = 0; d < D; d++) {
                const T *xr = xb + d * inner;
                T *yr = yb + d * inner;
#pragma omp simd
                for (int64_t j = 0; j < w; j++) yr[j] = xr[j] - ls[j];
            }
        } else {
            T inv[SM_BLK];
            for (int64_t j = 0; j < w; j++) inv[j] = (T)(1.0 / s[j]);
            for (int64_t d = 0; d < D; d++) {
                T *yr = yb + d * inner;
#pragma omp simd
                for (int64_t j = 0; j < w; j++) yr[j] *= inv[j];
            }
        }
    }
}

/* softmax: dx = y*(g - sum(g*y)); log_softmax: dx = g - exp(y)*sum(g) */
static void S(sm_bwd)(const T *y, const T *g, T *dx, int64_t outer, int64_t D, int64_t inner, bool lg) {
    if (outer * D * inner == 0) return;
    if (inner == 1) {
        int nt = nn_threads(outer * D, outer);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
        for (int64_t o = 0; o < outer; o++) {
            const T *yr = y + o * D, *gr = g + o * D;
            T *dr = dx + o * D;
            double s = 0;
            if (lg) {
#pragma omp simd reduction(+ : s)
                for (int64_t d = 0; d < D; d++) s += (double)gr[d];
                T ts = (T)s;
                memcpy(dr, yr, sizeof(T) * (size_t)D);
                VEXP(dr, D);
#pragma omp simd
                for (int64_t d = 0; d < D; d++) dr[d] = gr[d] - dr[d] * ts;
            } else {
#pragma omp simd reduction(+ : s)
                for (int64_t d = 0; d < D; d++) s += (double)gr[d] * (double)yr[d];
                T ts = (T)s;
#pragma omp simd
                for (int64_t d = 0; d < D; d++) dr[d] = yr[d] * (gr[d] - ts);
            }
        }
        return;
    }
    int64_t nblk = (inner + SM_BLK - 1) / SM_BLK, tasks = outer * nblk;
    int nt = nn_threads(outer * D * inner, tasks);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t o = t / nblk, lo = (t % nblk) * SM_BLK, hi = lo + SM_BLK < inner ? lo + SM_BLK : inner, w = hi - lo;
        int64_t base = o * D * inner + lo;
        double s[SM_BLK];
        T ts[SM_BLK];
        for (int64_t j = 0; j < w; j++) s[j] = 0;
        for (int64_t d = 0; d < D; d++) {
            const T *yr = y + base + d * inner, *gr = g + base + d * inner;
            if (lg) {
#pragma omp simd
                for (int64_t j = 0; j < w; j++) s[j] += (double)gr[j];
            } else {
#pragma omp simd
                for (int64_t j = 0; j < w; j++) s[j] += (double)gr[j] * (double)yr[j];
            }
        }
        for (int64_t j = 0; j < w; j++) ts[j] = (T)s[j];
        for (int64_t d = 0; d < D; d++) {
            const T *yr = y + base + d * inner, *gr = g + base + d * inner;
            T *dr = dx + base + d * inner;
            if (lg) {
                memcpy(dr, yr, sizeof(T) * (size_t)w);
                VEXP(dr, w);
#pragma omp simd
                for (int64_t j = 0; j < w; j++) dr[j] = gr[j] - dr[j] * ts[j];
            } else {
#pragma omp simd
                for (int64_t j = 0; j < w; j++) dr[j] = yr[j] * (gr[j] - ts[j]);
            }
        }
    }
}

/* out[i] = in[i] * scale if element i is kept, else 0. Element i uses Philox counter base + i/4,
 * lane i%4 (the same stream as ml_philox); kept when its uniform draw is >= p. Counters are
 * generated DO_GRP blocks at a time so the Philox rounds vectorize. */
static void S(dropout_apply)(const T *in, T *out, int64_t n, double p, uint64_t seed, uint64_t base) {
    int64_t nb = (n + 3) / 4, ng = (nb + DO_GRP - 1) / DO_GRP;
    T scale = p >= 1 ? (T)0 : (T)(1.0 / (1.0 - p));
    float pf = (float)p;
    int nt = nn_threads(n, ng);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t gi = 0; gi < ng; gi++) {
        uint32_t r[4][DO_GRP];
        philox_group(base + (uint64_t)(gi * DO_GRP), seed, r);
        int64_t i0 = gi * DO_GRP * 4;
        int64_t cnt = n - i0 < DO_GRP * 4 ? n - i0 : DO_GRP * 4;
        for (int64_t q = 0; q < cnt; q++) {
            int64_t i = i0 + q;
            out[i] = ml_u32_to_unit(r[q & 3][q >> 2]) >= pf ? in[i] * scale : (T)0;
        }
    }
}

#endif
