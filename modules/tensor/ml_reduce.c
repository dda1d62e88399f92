/* Reductions: sum/mean/prod/amax/amin/logsumexp over a dim list, var/std, norm, max/min along a
 * dim (values + indices), argmax/argmin, cumsum, sum_to (un-broadcast).
 *
 * Engine: the input is made contiguous, size-1 dims are dropped and neighbouring dims with the same
 * reduced/kept role are merged into blocks. If the innermost block is reduced, each output is a
 * reduction over contiguous runs (row kernel, vectorized, blocked double accumulation for floats);
 * if it is kept, rows are accumulated column-wise into a cache-sized block of accumulators
 * (column kernel). Work is split over threads across outputs, column blocks, or - when there are
 * few outputs - across the reduced range with per-thread partials combined in a fixed order.
 * Float inputs accumulate in double; integer inputs in int64 (sum/prod of ints give int64). */
#include "ml_tensor.h"
#include "../cuda/ml_cuda.h"
#include "ml_iter.h"
#include "ml_ew_internal.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static const char *redop_names[ML_NREDOPS] = {"sum", "mean", "prod", "amax", "amin", "logsumexp"};

/* ------------------------------------------------------------ kernel ops */
enum { K_SUM, K_PROD, K_MAX, K_MIN, K_SUMSQ, K_SUMABS, K_MAXABS, K_MINABS, K_SUMPOW, K_COUNTNZ, K_SUMSQDEV, K_SUMEXP };

typedef union {
    double d;
    int64_t i;
} acc_t;

typedef struct {
    int kop;
    double p;
    const double *shift; /* per output (K_SUMSQDEV, K_SUMEXP) */
    ml_dtype dt;         /* F32, F64 or I64 */
    size_t es;
} kspec;

#define RED_BLOCK 2048
#define RED_CB 4096

static inline double nanmax(double a, double b) { return (b > a || b != b) ? b : a; }
static inline double nanmin(double a, double b) { return (b < a || b != b) ? b : a; }

/* blocked sum of EXPR(i) over [0, n) into acc */
#define BSUM(EXPR)                                                                                  \
    do {                                                                                            \
        for (int64_t b_ = 0; b_ < n; b_ += RED_BLOCK) {                                             \
            int64_t e_ = n - b_ < RED_BLOCK ? n : b_ + RED_BLOCK;                                   \
            double t_ = 0;                                                                          \
            _Pragma("omp simd reduction(+ : t_)") for (int64_t i = b_; i < e_; i++) t_ += (EXPR);  \
            acc += t_;                                                                              \
        }                                                                                           \
    } while (0)

#define DEF_FLOAT_KERNELS(SUF, T)                                                                   \
    static void row_##SUF(int kop, const T *x, int64_t n, double p, double sh, double *accp) {      \
        double acc = *accp;                                                                         \
        switch (kop) {                                                                              \
        case K_SUM: BSUM((double)x[i]); break;                                                      \
        case K_SUMSQ: BSUM((double)x[i] * (double)x[i]); break;                                     \
        case K_SUMABS: BSUM(fabs((double)x[i])); break;                                             \
        case K_SUMPOW: BSUM(pow(fabs((double)x[i]), p)); break;                                     \
        case K_COUNTNZ: BSUM((double)(x[i] != 0)); break;                                           \
        case K_SUMSQDEV: BSUM(((double)x[i] - sh) * ((double)x[i] - sh)); break;                    \
        case K_SUMEXP: BSUM(exp((double)x[i] - sh)); break;                                         \
        case K_PROD: for (int64_t i = 0; i < n; i++) acc *= (double)x[i]; break;                    \
        case K_MAX: { /* vectorized max; NaN tracked separately and propagated */                    \
            if (acc != acc) break;                                                                  \
            T m = (T)acc;                                                                           \
            int nf = 0;                                                                             \
            _Pragma("omp simd reduction(max : m) reduction(| : nf)")                                \
            for (int64_t i = 0; i < n; i++) { T v = x[i]; m = v > m ? v : m; nf |= v != v; }         \
            acc = nf ? (double)NAN : (double)m;                                                     \
        } break;                                                                                    \
        case K_MIN: {                                                                               \
            if (acc != acc) break;                                                                  \
            T m = (T)acc;                                                                           \
            int nf = 0;                                                                             \
            _Pragma("omp simd reduction(min : m) reduction(| : nf)")                                \
            for (int64_t i = 0; i < n; i++) { T v = x[i]; m = v < m ? v : m; nf |= v != v; }         \
            acc = nf ? (double)NAN : (double)m;                                                     \
        } break;                                                                                    \
        case K_MAXABS: for (int64_t i = 0; i < n; i++) acc = nanmax(acc, fabs((double)x[i])); break; \
        case K_MINABS: for (int64_t i = 0; i < n; i++) acc = nanmin(acc, fabs((double)x[i])); break; \
        default: break;                                                                             \
        }                                                                                           \
        *accp = acc;                                                                                \
    }                                                                                               \
    static void col_##SUF(int kop, const T *x, int64_t n, double p, const double *sh, double *acc) { \
        switch (kop) {                                                                              \
        case K_SUM: for (int64_t j = 0; j < n; j++) acc[j] += (double)x[j]; break;                  \
        case K_SUMSQ: for (int64_t j = 0; j < n; j++) acc[j] += (double)x[j] * (double)x[j]; break; \
        case K_SUMABS: for (int64_t j = 0; j < n; j++) acc[j] += fabs((double)x[j]); break;         \
        case K_SUMPOW: for (int64_t j = 0; j < n; j++) acc[j] += pow(fabs((double)x[j]), p); break; \
        case K_COUNTNZ: for (int64_t j = 0; j < n; j++) acc[j] += (double)(x[j] != 0); break;       \
        case K_SUMSQDEV:                                                                            \
            for (int64_t j = 0; j < n; j++) acc[j] += ((double)x[j] - sh[j]) * ((double)x[j] - sh[j]); \
            break;                                                                                  \
        case K_SUMEXP: for (int64_t j = 0; j < n; j++) acc[j] += exp((double)x[j] - sh[j]); break;  \
        case K_PROD: for (int64_t j = 0; j < n; j++) acc[j] *= (double)x[j]; break;                 \
        case K_MAX: for (int64_t j = 0; j < n; j++) acc[j] = nanmax(acc[j], (double)x[j]); break;   \
        case K_MIN: for (int64_t j = 0; j < n; j++) acc[j] = nanmin(acc[j], (double)x[j]); break;   \
        case K_MAXABS: for (int64_t j = 0; j < n; j++) acc[j] = nanmax(acc[j], fabs((double)x[j])); break; \
        case K_MINABS: for (int64_t j = 0; j < n; j++) acc[j] = nanmin(acc[j], fabs((double)x[j])); break; \
        default: break;                                                                             \
        }                                                                                           \
    }

DEF_FLOAT_KERNELS(f32, float)
DEF_FLOAT_KERNELS(f64, double)

static void row_i64(int kop, const int64_t *x, int64_t n, int64_t *accp) {
    int64_t acc = *accp;
    switch (kop) {
    case K_SUM: {
        uint64_t s = (uint64_t)acc;
        for (int64_t i = 0; i < n; i++) s += (uint64_t)x[i];
        acc = (int64_t)s;
    } break;
    case K_PROD: {
        uint64_t s = (uint64_t)acc;
        for (int64_t i = 0; i < n; i++) s *= (uint64_t)x[i];
        acc = (int64_t)s;
    } break;
    case K_MAX: for (int64_t i = 0; i < n; i++) acc = x[i] > acc ? x[i] : acc; break;
    case K_MIN: for (int64_t i = 0; i < n; i++) acc = x[i] < acc ? x[i] : acc; break;
    default: break;
    }
    *accp = acc;
}

static void col_i64(int kop, const int64_t *x, int64_t n, int64_t *acc) {
    switch (kop) {
    case K_SUM: for (int64_t j = 0; j < n; j++) acc[j] = (int64_t)((uint64_t)acc[j] + (uint64_t)x[j]); break;
    case K_PROD: for (int64_t j = 0; j < n; j++) acc[j] = (int64_t)((uint64_t)acc[j] * (uint64_t)x[j]); break;
    case K_MAX: for (int64_t j = 0; j < n; j++) acc[j] = x[j] > acc[j] ? x[j] : acc[j]; break;
    case K_MIN: for (int64_t j = 0; j < n; j++) acc[j] = x[j] < acc[j] ? x[j] : acc[j]; break;
    default: break;
    }
}

static void k_init(const kspec *k, acc_t *acc, int64_t n) {
    if (k->dt == ML_I64) {
        int64_t v = k->kop == K_PROD ? 1 : k->kop == K_MAX ? INT64_MIN : k->kop == K_MIN ? INT64_MAX : 0;
        for (int64_t j = 0; j < n; j++) acc[j].i = v;
        return;
    }
    double v = 0;
    if (k->kop == K_PROD) v = 1;
    else if (k->kop == K_MAX) v = -INFINITY;
    else if (k->kop == K_MIN || k->kop == K_MINABS) v = INFINITY;
    for (int64_t j = 0; j < n; j++) acc[j].d = v;
}

static void k_comb(const kspec *k, acc_t *dst, const acc_t *src) {
    if (k->dt == ML_I64) {
        int64_t a = dst->i, b = src->i;
        switch (k->kop) {
        case K_PROD: dst->i = (int64_t)((uint64_t)a * (uint64_t)b); break;
        case K_MAX: dst->i = b > a ? b : a; break;
        case K_MIN: dst->i = b < a ? b : a; break;
        default: dst->i = (int64_t)((uint64_t)a + (uint64_t)b); break;
        }
        return;
    }
    switch (k->kop) {
    case K_PROD: dst->d *= src->d; break;
    case K_MAX: case K_MAXABS: dst->d = nanmax(dst->d, src->d); break;
    case K_MIN: case K_MINABS: dst->d = nanmin(dst->d, src->d); break;
    default: dst->d += src->d; break;
    }
}

static void k_row(const kspec *k, const char *x, int64_t n, acc_t *acc, int64_t o) {
    double sh = k->shift ? k->shift[o] : 0;
    switch (k->dt) {
    case ML_F32: row_f32(k->kop, (const float *)x, n, k->p, sh, &acc->d); break;
    case ML_F64: row_f64(k->kop, (const double *)x, n, k->p, sh, &acc->d); break;
    default: row_i64(k->kop, (const int64_t *)x, n, &acc->i); break;
    }
}

static void k_col(const kspec *k, const char *x, int64_t n, acc_t *acc, int64_t o0) {
    const double *sh = k->shift ? k->shift + o0 : NULL;
    switch (k->dt) {
    case ML_F32: col_f32(k->kop, (const float *)x, n, k->p, sh, (double *)acc); break;
    case ML_F64: col_f64(k->kop, (const double *)x, n, k->p, sh, (double *)acc); break;
    default: col_i64(k->kop, (const int64_t *)x, n, (int64_t *)acc); break;
    }
}

static inline int64_t blk_off(int n, const int64_t *sz, const int64_t *st, int64_t lin) {
    int64_t off = 0;
    for (int i = n - 1; i >= 0; i--) {
        int64_t q = lin / sz[i];
        off += (lin - q * sz[i]) * st[i];
        lin = q;
    }
    return off;
}

#define MAX_PART_THREADS 256

/* x: contiguous data of k->dt with (nd, shape); red: reduced dims. res: nout accumulators in
 * row-major order of the kept dims. */
static ml_err reduce_engine(const kspec *k, const char *x, int nd, const int64_t *shape, const bool *red, acc_t *res,
                            int64_t nout) {
    int64_t numel = 1;
    for (int d = 0; d < nd; d++) numel *= shape[d];
    if (numel == 0) {
        k_init(k, res, nout);
        return ML_OK;
    }
    int64_t bsz[ML_MAX_DIMS + 1], bst[ML_MAX_DIMS + 1];
    bool bred[ML_MAX_DIMS + 1];
    int nb = 0;
    for (int d = 0; d < nd; d++) {
        if (shape[d] == 1) continue;
        if (nb > 0 && bred[nb - 1] == red[d]) bsz[nb - 1] *= shape[d];
        else { bsz[nb] = shape[d]; bred[nb] = red[d]; nb++; }
    }
    if (nb == 0) { bsz[0] = 1; bred[0] = true; nb = 1; }
    for (int64_t i = nb - 1, s = 1; i >= 0; i--) { bst[i] = s; s *= bsz[i]; }
    int64_t inner = bsz[nb - 1];
    bool inner_red = bred[nb - 1];
    int nk = 0, nr = 0;
    int64_t ks[ML_MAX_DIMS], kst[ML_MAX_DIMS], rs[ML_MAX_DIMS], rst[ML_MAX_DIMS], nko = 1, nro = 1;
    for (int i = 0; i < nb - 1; i++) {
        if (bred[i]) { rs[nr] = bsz[i]; rst[nr] = bst[i]; nr++; nro *= bsz[i]; }
        else { ks[nk] = bsz[i]; kst[nk] = bst[i]; nk++; nko *= bsz[i]; }
    }
    int nt = numel < 2 * ML_ITER_GRAIN ? 1 : ml_num_threads();
    if (nt > MAX_PART_THREADS) nt = MAX_PART_THREADS;
    const size_t es = k->es;

    if (inner_red) {
        if (nko >= nt || nt == 1) {
            ML_PAR_FOR(int64_t, o, nko, {
                int64_t ok = blk_off(nk, ks, kst, o);
                acc_t acc;
                k_init(k, &acc, 1);
                for (int64_t r = 0; r < nro; r++) k_row(k, x + (size_t)(ok + blk_off(nr, rs, rst, r)) * es, inner, &acc, o);
                res[o] = acc;
            });
        } else {
            acc_t part[MAX_PART_THREADS];
            for (int64_t o = 0; o < nko; o++) {
                int64_t ok = blk_off(nk, ks, kst, o), tot = nro * inner;
#pragma omp parallel for num_threads(nt) schedule(static)
                for (int t = 0; t < nt; t++) {
                    int64_t lo = tot * t / nt, hi = tot * (t + 1) / nt, pos = lo;
                    acc_t acc;
                    k_init(k, &acc, 1);
                    while (pos < hi) {
                        int64_t r = pos / inner, j = pos - r * inner, cnt = inner - j;
                        if (cnt > hi - pos) cnt = hi - pos;
                        k_row(k, x + (size_t)(ok + blk_off(nr, rs, rst, r) + j) * es, cnt, &acc, o);
                        pos += cnt;
                    }
                    part[t] = acc;
                }
                acc_t acc = part[0];
                for (int t = 1; t < nt; t++) k_comb(k, &acc, &part[t]);
                res[o] = acc;
            }
        }
        return ML_OK;
    }

    int64_t ncb = (inner + RED_CB - 1) / RED_CB, tasks = nko * ncb;
    if (tasks >= nt || nt == 1 || nro < 4 * nt) {
        ML_PAR_FOR(int64_t, task, tasks, {
            int64_t o2 = task / ncb, c0 = (task % ncb) * RED_CB, cn = inner - c0 < RED_CB ? inner - c0 : RED_CB;
            acc_t acc[RED_CB];
            k_init(k, acc, cn);
            int64_t ok = blk_off(nk, ks, kst, o2);
            for (int64_t r = 0; r < nro; r++)
                k_col(k, x + (size_t)(ok + blk_off(nr, rs, rst, r) + c0) * es, cn, acc, o2 * inner + c0);
            memcpy(res + o2 * inner + c0, acc, (size_t)cn * sizeof(acc_t));
        });
        return ML_OK;
    }
    acc_t *part = malloc((size_t)nt * RED_CB * sizeof(acc_t));
    if (!part) return ml_seterr(ML_ERR_OOM, "reduce: out of memory for partial sums");
    for (int64_t task = 0; task < tasks; task++) {
        int64_t o2 = task / ncb, c0 = (task % ncb) * RED_CB, cn = inner - c0 < RED_CB ? inner - c0 : RED_CB;
        int64_t ok = blk_off(nk, ks, kst, o2);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int t = 0; t < nt; t++) {
            acc_t *acc = part + (size_t)t * RED_CB;
            k_init(k, acc, cn);
            for (int64_t r = nro * t / nt; r < nro * (t + 1) / nt; r++)
                k_col(k, x + (size_t)(ok + blk_off(nr, rs, rst, r) + c0) * es, cn, acc, o2 * inner + c0);
        }
        for (int64_t j = 0; j < cn; j++) {
            acc_t a = part[j];
            for (int t = 1; t < nt; t++) k_comb(k, &a, &part[(size_t)t * RED_CB + j]);
            res[o2 * inner + c0 + j] = a;
        }
    }
    free(part);
    return ML_OK;
}

/* ------------------------------------------------------------- helpers */
static ml_err parse_dims(const char *op, const ml_tensor *a, int ndims, const int *dims, bool *red) {
    memset(red, 0, sizeof(bool) * ML_MAX_DIMS);
    if (ndims == 0) {
        for (int d = 0; d < a->ndim; d++) red[d] = true;
        return ML_OK;
    }
    if (ndims < 0 || ndims > ML_MAX_DIMS || !dims)
        return ml_seterr(ML_ERR_ARG, "%s: invalid number of dims %d", op, ndims);
    bool seen[ML_MAX_DIMS + 1] = {0};
    for (int i = 0; i < ndims; i++) {
        int d = ml_wrap_dim(op, dims[i], a->ndim);
        if (d < 0) return ML_ERR_DIM;
        if (seen[d])
            return ml_seterr(ML_ERR_ARG, "%s: dim %d appears multiple times in the list of dims (input shape %s)", op, d,
                             ml_shape_str(a->ndim, a->shape));
        seen[d] = true;
        if (a->ndim > 0) red[d] = true;
    }
    return ML_OK;
}

static int red_out_shape(const ml_tensor *a, const bool *red, bool keepdim, int64_t *shape) {
    int n = 0;
    for (int d = 0; d < a->ndim; d++) {
        if (red[d]) { if (keepdim) shape[n++] = 1; }
        else shape[n++] = a->shape[d];
    }
    return n;
}

static void keep_shape(int nd, const int64_t *in_shape, const bool *red, int64_t *shape) {
    for (int d = 0; d < nd; d++) shape[d] = red[d] ? 1 : in_shape[d];
}

/* contiguous version of a in dtype kd, not recorded */
static ml_err prep_input(ml_tensor **out, ml_tensor *a, ml_dtype kd) {
    *out = NULL;
    bool prev = ml_set_grad_enabled(false);
    ml_tensor *c;
    ml_err e = ml_to_dtype(&c, a, kd);
    if (!e) {
        e = ml_contiguous(out, c);
        ml_tensor_release(c);
    }
    ml_set_grad_enabled(prev);
    return e;
}

static ml_err cast_to(ml_tensor **t, ml_dtype dt) {
    if ((ml_dtype)(*t)->dtype == dt) return ML_OK;
    bool prev = ml_set_grad_enabled(false);
    ml_tensor *c;
    ml_err e = ml_to_dtype(&c, *t, dt);
    ml_set_grad_enabled(prev);
    ml_tensor_release(*t);
    *t = e ? NULL : c;
    return e;
}

/* run kernel op over contiguous `ac` (dtype F32/F64/I64); returns malloc'd accumulators */
static ml_err run_reduce(acc_t **res, int64_t *nout, ml_tensor *ac, const bool *red, int kop, double p,
                         const double *shift) {
    int64_t no = 1;
    for (int d = 0; d < ac->ndim; d++) if (!red[d]) no *= ac->shape[d];
    acc_t *r = malloc((size_t)(no > 0 ? no : 1) * sizeof(acc_t));
    if (!r) return ml_seterr(ML_ERR_OOM, "reduce: out of memory");
    kspec k = {.kop = kop, .p = p, .shift = shift, .dt = (ml_dtype)ac->dtype, .es = ml_dtype_size((ml_dtype)ac->dtype)};
    ml_err e = reduce_engine(&k, (const char *)ml_tensor_data(ac), ac->ndim, ac->shape, red, r, no);
    if (e) { free(r); return e; }
    *res = r;
    *nout = no;
    return ML_OK;
}

static int64_t shape_numel_(int nd, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < nd; i++) n *= shape[i];
    return n;
}

static int64_t red_count(const ml_tensor *a, const bool *red) {
    int64_t c = 1;
    for (int d = 0; d < a->ndim; d++) if (red[d]) c *= a->shape[d];
    return c;
}

/* write double values into a new tensor of dtype kd (F32/F64) */
static ml_err out_from_doubles(ml_tensor **out, ml_dtype kd, int nd, const int64_t *shape, const double *v, int64_t n) {
    ml_err e = ml_tensor_empty(out, kd, nd, shape);
    if (e) return e;
    if (kd == ML_F64) memcpy(ml_tensor_data(*out), v, (size_t)n * sizeof(double));
    else if (kd == ML_F32) {
        float *o = ml_tensor_data(*out);
        for (int64_t i = 0; i < n; i++) o[i] = (float)v[i];
    } else {
        char *o = ml_tensor_data(*out);
        for (int64_t i = 0; i < n; i++) ml_store_elem(o, kd, i, v[i]);
    }
    return ML_OK;
}

/* g (shape of the output, keepdim or not) viewed with the reduced dims as size 1 */
static ml_err grad_keepdim(ml_tensor **out, ml_tensor *g, ml_node *n, const bool *red) {
    int64_t ks[ML_MAX_DIMS];
    keep_shape(n->in_ndim[0], n->in_shape[0], red, ks);
    return ml_reshape(out, g, n->in_ndim[0], ks);
}

/* ============================================================= ml_reduce */
typedef struct {
    int op;
    bool red[ML_MAX_DIMS];
    int64_t count;
    double p, corr;
    int kind;
} red_params;

static ml_err bw_reduce(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const red_params *p = (const red_params *)n->params;
    ml_tensor *gk = NULL, *r = NULL;
    ml_err e = grad_keepdim(&gk, gout[0], n, p->red);
    if (e) return e;
    switch ((ml_redop)p->op) {
    case ML_RSUM:
        e = ml_expand(&r, gk, n->in_ndim[0], n->in_shape[0]);
        break;
    case ML_RMEAN: {
        ml_tensor *s;
        e = ml_binary_scalar(&s, ML_MUL, gk, 1.0 / (double)p->count, false);
        if (!e) e = ml_expand(&r, s, n->in_ndim[0], n->in_shape[0]);
        ml_tensor_release(s);
    } break;
    case ML_RPROD: {
        ml_tensor *x = ml_node_saved(n, 0), *z1 = NULL, *iz = NULL, *pnz = NULL, *nz = NULL, *t = NULL;
        if (!x) { e = ML_ERR_GRAD; break; }
        int dims[ML_MAX_DIMS], nd = 0;
        for (int d = 0; d < x->ndim; d++) if (p->red[d]) dims[nd++] = d;
        if (x->ndim == 0) { dims[0] = 0; nd = 1; }
        e = ml_ew_map(&z1, "prod", IOP_ZEROTO1, 1, &x, NULL);
        if (!e) e = ml_reduce(&pnz, ML_RPROD, z1, nd, dims, true);
        if (!e) e = ml_ew_map(&iz, "prod", IOP_ISZERO, 1, &x, NULL);
        if (!e) e = ml_reduce(&nz, ML_RSUM, iz, nd, dims, true);
        if (!e) e = ml_ew_map(&t, "prod", IOP_G_PROD, 3, (ml_tensor *[]){pnz, nz, x}, NULL);
        if (!e) e = ml_ew_map(&r, "prod", IOP_MUL, 2, (ml_tensor *[]){t, gk}, NULL);
        ml_tensor_release(z1); ml_tensor_release(iz); ml_tensor_release(pnz); ml_tensor_release(nz);
        ml_tensor_release(t);
    } break;
    case ML_RAMAX:
    case ML_RAMIN: {
        ml_tensor *x = ml_node_saved(n, 0), *o = ml_node_saved(n, 1), *ok = NULL, *one = NULL, *m = NULL,
                  *cnt = NULL, *gs = NULL;
        if (!x || !o) { e = ML_ERR_GRAD; break; }
        int dims[ML_MAX_DIMS], nd = 0;
        for (int d = 0; d < x->ndim; d++) if (p->red[d]) dims[nd++] = d;
        if (x->ndim == 0) { dims[0] = 0; nd = 1; }
        e = grad_keepdim(&ok, o, n, p->red);
        if (!e) e = ml_scalar_tensor(&one, (ml_dtype)gk->dtype, 1);
        if (!e) e = ml_ew_map(&m, "amax", IOP_G_EQMASK, 3, (ml_tensor *[]){one, x, ok}, NULL);
        if (!e) e = ml_reduce(&cnt, ML_RSUM, m, nd, dims, true);
        if (!e) e = ml_ew_map(&gs, "amax", IOP_DIV, 2, (ml_tensor *[]){gk, cnt}, NULL);
        if (!e) e = ml_ew_map(&r, "amax", IOP_G_EQMASK, 3, (ml_tensor *[]){gs, x, ok}, NULL);
        ml_tensor_release(ok); ml_tensor_release(one); ml_tensor_release(m); ml_tensor_release(cnt);
        ml_tensor_release(gs);
    } break;
    case ML_RLOGSUMEXP: {
        ml_tensor *x = ml_node_saved(n, 0), *o = ml_node_saved(n, 1), *ok = NULL;
        if (!x || !o) { e = ML_ERR_GRAD; break; }
        e = grad_keepdim(&ok, o, n, p->red);
        if (!e) e = ml_ew_map(&r, "logsumexp", IOP_G_LSE, 3, (ml_tensor *[]){gk, x, ok}, NULL);
        ml_tensor_release(ok);
    } break;
    default: e = ml_seterr(ML_ERR_GRAD, "reduce: no backward for op %d", p->op);
    }
    ml_tensor_release(gk);
    if (e) { ml_tensor_release(r); return e; }
    return ml_grad_finish(&gin[0], r, n, 0);
}

static ml_err record_saving(const char *name, ml_backward_fn fn, ml_tensor *a, ml_tensor *out, const void *params,
                            size_t psize, ml_tensor *s0, ml_tensor *s1, bool detach_s1) {
    if (!ml_dtype_is_float((ml_dtype)out->dtype) || !ml_needs_grad(1, &a)) return ML_OK;
    ml_node *n;
    ml_err e = ml_record(name, fn, 1, &a, out, &n);
    if (e || !n) return e;
    memcpy(n->params, params, psize);
    if (s0 && ml_node_save(n, s0) < 0) return ML_ERR_INTERNAL;
    if (s1) {
        ml_tensor *d = s1;
        if (detach_s1) {
            if ((e = ml_detach(&d, s1))) return e;
        } else {
            ml_tensor_retain(d);
        }
        int k = ml_node_save(n, d);
        ml_tensor_release(d);
        if (k < 0) return ML_ERR_INTERNAL;
    }
    return ML_OK;
}

/* sum/mean/amax/amin/prod of a float CUDA tensor: ml_cuda_reduce into the keepdim shape, viewed as the
 * output shape; the mean divides the sum by count on the device */
static ml_err cuda_reduce(ml_tensor **out, ml_redop op, ml_tensor *a, const bool *red, ml_dtype kd, int ond,
                          const int64_t *oshape, int64_t count) {
    *out = NULL;
    ml_tensor *ac = NULL, *keep = NULL;
    ml_err e;
    bool prev = ml_set_grad_enabled(false);
    if ((e = ml_to_dtype(&ac, a, kd))) goto done;
    int64_t ks[ML_MAX_DIMS];
    keep_shape(a->ndim, a->shape, red, ks);
    if ((e = ml_tensor_empty_on(&keep, ml_tensor_device(a), kd, a->ndim, ks))) goto done;
    {
        ml_cuda_opnd o, in;
        ml_cuda_opnd_of(&o, keep, keep->ndim, keep->shape);
        ml_cuda_opnd_of(&in, ac, ac->ndim, ac->shape);
        int kind = op == ML_RAMAX ? 1 : op == ML_RAMIN ? 2 : op == ML_RPROD ? 3 : 0;
        if ((e = ml_cuda_reduce(kind, kd, a->ndim, a->shape, red, &o, &in, NULL))) goto done;
    }
    if (op == ML_RMEAN) {
        ml_tensor *m;
        if ((e = ml_binary_scalar(&m, ML_DIV, keep, count ? (double)count : NAN, false))) goto done;
        ml_tensor_release(keep);
        keep = m;
    }
    e = ml_reshape(out, keep, ond, oshape);
done:
    ml_set_grad_enabled(prev);
    ml_tensor_release(ac);
    ml_tensor_release(keep);
    return e;
}

/* ---- device forms of var/std, norm and logsumexp: compositions of recorded device ops (autograd gives
 * their gradients); the CPU keeps its own kernels */
static int red_dims(const ml_tensor *a, const bool *red, int *dims) {
    int n = 0;
    for (int d = 0; d < a->ndim; d++)
        if (red[d]) dims[n++] = d;
    return n;
}

/* *t = f(*t) with the old *t released */
static ml_err swap_in(ml_tensor **t, ml_tensor *nt, ml_err e) {
    if (e) return e;
    ml_tensor_release(*t);
    *t = nt;
    return ML_OK;
}

static ml_err device_var(ml_tensor **out, ml_tensor *a, const bool *red, bool keepdim, double correction,
                         bool take_sqrt, int64_t count) {
    int dims[ML_MAX_DIMS], nd = red_dims(a, red, dims);
    ml_tensor *mean = NULL, *t = NULL, *nt = NULL;
    ml_err e = ml_reduce(&mean, ML_RMEAN, a, nd, dims, true);
    if (!e) e = ml_binary(&t, ML_SUB, a, mean);
    if (!e) e = swap_in(&t, nt, ml_binary(&nt, ML_MUL, t, t));
    if (!e) e = swap_in(&t, nt, ml_reduce(&nt, ML_RSUM, t, nd, dims, keepdim));
    double den = (double)count - correction;
    if (!e) e = swap_in(&t, nt, ml_binary_scalar(&nt, ML_DIV, t, den > 0 ? den : 0, false));
    if (!e && take_sqrt) e = swap_in(&t, nt, ml_unary(&nt, ML_SQRT, t));
    ml_tensor_release(mean);
    if (e) { ml_tensor_release(t); return e; }
    *out = t;
    return ML_OK;
}

static ml_err device_norm(ml_tensor **out, ml_tensor *a, double p, const bool *red, bool keepdim) {
    if (p == 0)
        return ml_seterr(ML_ERR_UNSUPPORTED, "norm: p = 0 (count of nonzeros) is not implemented on %s yet",
                         ml_device_str(a->storage->device));
    int dims[ML_MAX_DIMS], nd = red_dims(a, red, dims);
    ml_tensor *t = NULL, *nt = NULL;
    ml_err e = p == 2 ? ml_binary(&t, ML_MUL, a, a) : ml_unary(&t, ML_ABS, a);
    if (!e && isinf(p)) e = swap_in(&t, nt, ml_reduce(&nt, p > 0 ? ML_RAMAX : ML_RAMIN, t, nd, dims, keepdim));
    else if (!e) {
        if (p != 1 && p != 2) e = swap_in(&t, nt, ml_binary_scalar(&nt, ML_POW, t, p, false));
        if (!e) e = swap_in(&t, nt, ml_reduce(&nt, ML_RSUM, t, nd, dims, keepdim));
        if (!e && p == 2) e = swap_in(&t, nt, ml_unary(&nt, ML_SQRT, t));
        else if (!e && p != 1) e = swap_in(&t, nt, ml_binary_scalar(&nt, ML_POW, t, 1 / p, false));
    }
    if (e) { ml_tensor_release(t); return e; }
    *out = t;
    return ML_OK;
}

/* log(sum(exp(a - m))) + m with m the (constant) max */
static ml_err device_logsumexp(ml_tensor **out, ml_tensor *a, const bool *red, bool keepdim, int ond,
                               const int64_t *oshape) {
    int dims[ML_MAX_DIMS], nd = red_dims(a, red, dims);
    ml_tensor *m = NULL, *md = NULL, *t = NULL, *nt = NULL;
    ml_err e = ml_reduce(&m, ML_RAMAX, a, nd, dims, true);
    if (!e) e = ml_detach(&md, m);
    if (!e) { /* an infinite max (all -inf, or +inf) becomes the largest finite value: the result is then
               * -inf / +inf as the CPU's (which shifts by 0 there), not inf - inf */
        double big = a->dtype == ML_F64 ? DBL_MAX : FLT_MAX;
        e = swap_in(&md, nt, ml_clamp(&nt, md, -big, big));
    }
    if (!e) e = ml_binary(&t, ML_SUB, a, md);
    if (!e) e = swap_in(&t, nt, ml_unary(&nt, ML_EXP, t));
    if (!e) e = swap_in(&t, nt, ml_reduce(&nt, ML_RSUM, t, nd, dims, true));
    if (!e) e = swap_in(&t, nt, ml_unary(&nt, ML_LOG, t));
    if (!e) e = swap_in(&t, nt, ml_binary(&nt, ML_ADD, t, md));
    if (!e && !keepdim) e = swap_in(&t, nt, ml_reshape(&nt, t, ond, oshape));
    ml_tensor_release(m);
    ml_tensor_release(md);
    if (e) { ml_tensor_release(t); return e; }
    *out = t;
    return ML_OK;
}

ml_err ml_reduce(ml_tensor **out, ml_redop op, ml_tensor *a, int ndims, const int *dims, bool keepdim) {
    *out = NULL;
    if ((unsigned)op >= ML_NREDOPS) return ml_seterr(ML_ERR_ARG, "reduce: unknown op %d", (int)op);
    const char *name = redop_names[op];
    ml_err e;
    if ((e = ml_tensor_plain(a))) return e;
    bool red[ML_MAX_DIMS];
    if ((e = parse_dims(name, a, ndims, dims, red))) return e;
    int64_t oshape[ML_MAX_DIMS];
    int ond = red_out_shape(a, red, keepdim, oshape);
    int64_t count = red_count(a, red);
    int64_t nout = shape_numel_(ond, oshape);
    ml_dtype ad = (ml_dtype)a->dtype;
    bool isf = ml_dtype_is_float(ad);
    if ((op == ML_RAMAX || op == ML_RAMIN) && count == 0 && nout > 0)
        return ml_seterr(ML_ERR_ARG, "%s: cannot reduce over a zero-size dimension (input shape %s)", name,
                         ml_shape_str(a->ndim, a->shape));
    /* kernel dtype and output dtype */
    ml_dtype kd, od;
    if (isf) { kd = ad == ML_F64 ? ML_F64 : ML_F32; od = ad; }
    else if (op == ML_RLOGSUMEXP) { kd = ML_F32; od = ML_F32; }
    else { kd = ML_I64; od = (op == ML_RSUM || op == ML_RPROD) ? ML_I64 : op == ML_RMEAN ? ML_F32 : ad; }
    ml_tensor *ac = NULL, *res = NULL;
    acc_t *acc = NULL, *acc2 = NULL;
    double *shift = NULL;
    int64_t no;
    if (ml_tensor_is_cuda(a)) {
        if (!isf) return ml_check_cpu(name, a);
        if (op == ML_RLOGSUMEXP) return device_logsumexp(out, a, red, keepdim, ond, oshape);
        if ((e = cuda_reduce(&res, op, a, red, kd, ond, oshape, count))) return e;
        goto finish;
    }
    if ((e = prep_input(&ac, a, kd))) return e;
    int kop = op == ML_RPROD ? K_PROD : op == ML_RAMAX ? K_MAX : op == ML_RAMIN ? K_MIN
            : op == ML_RLOGSUMEXP ? K_MAX : K_SUM;
    if ((e = run_reduce(&acc, &no, ac, red, kop, 0, NULL))) goto done;
    if (op == ML_RLOGSUMEXP) {
        shift = malloc((size_t)(no > 0 ? no : 1) * sizeof(double));
        if (!shift) { e = ml_seterr(ML_ERR_OOM, "logsumexp: out of memory"); goto done; }
        for (int64_t i = 0; i < no; i++) shift[i] = isinf(acc[i].d) ? 0 : acc[i].d;
        if ((e = run_reduce(&acc2, &no, ac, red, K_SUMEXP, 0, shift))) goto done;
        for (int64_t i = 0; i < no; i++) acc[i].d = log(acc2[i].d) + shift[i];
    }
    if (kd == ML_I64) {
        if ((e = ml_tensor_empty(&res, od == ML_F32 ? ML_F32 : ML_I64, ond, oshape))) goto done;
        if (od == ML_F32) {
            float *o = ml_tensor_data(res);
            for (int64_t i = 0; i < no; i++) o[i] = count ? (float)((double)acc[i].i / (double)count) : NAN;
        } else {
            memcpy(ml_tensor_data(res), acc, (size_t)no * sizeof(int64_t));
        }
    } else {
        if (op == ML_RMEAN)
            for (int64_t i = 0; i < no; i++) acc[i].d = count ? acc[i].d / (double)count : NAN;
        if ((e = out_from_doubles(&res, kd, ond, oshape, (const double *)acc, no))) goto done;
    }
finish:
    if ((e = cast_to(&res, od))) goto done;
    {
        red_params p = {.op = op, .count = count};
        memcpy(p.red, red, sizeof red);
        ml_tensor *s0 = NULL, *s1 = NULL;
        if (op == ML_RPROD) s0 = a;
        if (op == ML_RAMAX || op == ML_RAMIN || op == ML_RLOGSUMEXP) { s0 = a; s1 = res; }
        if ((e = record_saving(name, bw_reduce, a, res, &p, sizeof p, s0, s1, true))) goto done;
    }
    *out = res;
    res = NULL;
done:
    ml_tensor_release(ac);
    ml_tensor_release(res);
    free(acc);
    free(acc2);
    free(shift);
    return e;
}

/* ================================================================ var/std */
static ml_err bw_var(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const red_params *p = (const red_params *)n->params;
    ml_tensor *x = ml_node_saved(n, 0), *mean = ml_node_saved(n, 1), *gk = NULL, *g2 = NULL, *r = NULL;
    if (!x || !mean) return ML_ERR_GRAD;
    ml_err e = grad_keepdim(&gk, gout[0], n, p->red);
    if (e) return e;
    if (p->kind) { /* std: g / (2 std) */
        ml_tensor *o = ml_node_saved(n, 2), *ok = NULL;
        if (!o) { ml_tensor_release(gk); return ML_ERR_GRAD; }
        e = grad_keepdim(&ok, o, n, p->red);
        if (!e) e = ml_ew_map(&g2, "std", IOP_G_STDSCALE, 2, (ml_tensor *[]){gk, ok}, NULL);
        ml_tensor_release(ok);
    } else {
        ml_tensor_retain(gk);
        g2 = gk;
    }
    double pr[2] = {p->p, 0};
    if (!e) e = ml_ew_map(&r, p->kind ? "std" : "var", IOP_G_VAR, 3, (ml_tensor *[]){g2, x, mean}, pr);
    ml_tensor_release(gk);
    ml_tensor_release(g2);
    if (e) return e;
    return ml_grad_finish(&gin[0], r, n, 0);
}

ml_err ml_var(ml_tensor **out, ml_tensor *a, int ndims, const int *dims, double correction, bool keepdim,
              bool take_sqrt) {
    *out = NULL;
    const char *name = take_sqrt ? "std" : "var";
    ml_err e;
    if ((e = ml_tensor_plain(a))) return e;
    bool red[ML_MAX_DIMS];
    if ((e = parse_dims(name, a, ndims, dims, red))) return e;
    if (ml_tensor_is_cuda(a)) {
        if (!ml_dtype_is_float((ml_dtype)a->dtype)) return ml_check_cpu(name, a);
        return device_var(out, a, red, keepdim, correction, take_sqrt, red_count(a, red));
    }
    int64_t oshape[ML_MAX_DIMS], kshape[ML_MAX_DIMS];
    int ond = red_out_shape(a, red, keepdim, oshape);
    keep_shape(a->ndim, a->shape, red, kshape);
    int64_t count = red_count(a, red);
    ml_dtype ad = (ml_dtype)a->dtype, kd = ad == ML_F64 ? ML_F64 : ML_F32, od = ml_dtype_is_float(ad) ? ad : ML_F32;
    ml_tensor *ac = NULL, *res = NULL, *mt = NULL;
    acc_t *acc = NULL, *acc2 = NULL;
    double *mean = NULL;
    int64_t no;
    if ((e = prep_input(&ac, a, kd))) return e;
    if ((e = run_reduce(&acc, &no, ac, red, K_SUM, 0, NULL))) goto done;
    mean = malloc((size_t)(no > 0 ? no : 1) * sizeof(double));
    if (!mean) { e = ml_seterr(ML_ERR_OOM, "%s: out of memory", name); goto done; }
    for (int64_t i = 0; i < no; i++) mean[i] = count ? acc[i].d / (double)count : NAN;
    if ((e = run_reduce(&acc2, &no, ac, red, K_SUMSQDEV, 0, mean))) goto done;
    double den = (double)count - correction;
    if (den < 0) den = 0;
    for (int64_t i = 0; i < no; i++) {
        double v = acc2[i].d / den;
        acc2[i].d = take_sqrt ? sqrt(v) : v;
    }
    if ((e = out_from_doubles(&res, kd, ond, oshape, (const double *)acc2, no))) goto done;
    if ((e = cast_to(&res, od))) goto done;
    if (ml_dtype_is_float(ad) && ml_needs_grad(1, &a)) {
        if ((e = out_from_doubles(&mt, kd, a->ndim, kshape, mean, no))) goto done;
        red_params p = {.count = count, .p = 2.0 / den, .corr = correction, .kind = take_sqrt};
        memcpy(p.red, red, sizeof red);
        ml_node *n;
        if ((e = ml_record(name, bw_var, 1, &a, res, &n))) goto done;
        memcpy(n->params, &p, sizeof p);
        if (ml_node_save(n, a) < 0 || ml_node_save(n, mt) < 0) { e = ML_ERR_INTERNAL; goto done; }
        if (take_sqrt) {
            ml_tensor *d;
            if ((e = ml_detach(&d, res))) goto done;
            int k = ml_node_save(n, d);
            ml_tensor_release(d);
            if (k < 0) { e = ML_ERR_INTERNAL; goto done; }
        }
    }
    *out = res;
    res = NULL;
done:
    ml_tensor_release(ac);
    ml_tensor_release(res);
    ml_tensor_release(mt);
    free(acc);
    free(acc2);
    free(mean);
    return e;
}

/* =================================================================== norm */
static ml_err bw_norm(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const red_params *p = (const red_params *)n->params;
    ml_tensor *x = ml_node_saved(n, 0), *o = ml_node_saved(n, 1), *gk = NULL, *ok = NULL, *r = NULL;
    if (!x || !o) return ML_ERR_GRAD;
    ml_err e = grad_keepdim(&gk, gout[0], n, p->red);
    if (!e) e = grad_keepdim(&ok, o, n, p->red);
    if (e) goto done;
    double pv = p->p, pr[2] = {pv, 0};
    if (pv == 2) {
        e = ml_ew_map(&r, "norm", IOP_G_NORM2, 3, (ml_tensor *[]){gk, x, ok}, NULL);
    } else if (pv == 1) {
        ml_tensor *ge;
        e = ml_expand(&ge, gk, x->ndim, x->shape);
        if (!e) e = ml_ew_map(&r, "norm", IOP_G_ABS, 2, (ml_tensor *[]){ge, x}, NULL);
        ml_tensor_release(ge);
    } else if (pv == 0) {
        e = ml_zeros(&r, (ml_dtype)gk->dtype, x->ndim, x->shape);
    } else if (isinf(pv)) {
        ml_tensor *ax = NULL, *one = NULL, *m = NULL, *cnt = NULL, *gs = NULL;
        int dims[ML_MAX_DIMS], nd = 0;
        for (int d = 0; d < x->ndim; d++) if (p->red[d]) dims[nd++] = d;
        if (x->ndim == 0) { dims[0] = 0; nd = 1; }
        e = ml_ew_map(&ax, "norm", IOP_ABS, 1, &x, NULL);
        if (!e) e = ml_scalar_tensor(&one, (ml_dtype)gk->dtype, 1);
        if (!e) e = ml_ew_map(&m, "norm", IOP_G_EQMASK, 3, (ml_tensor *[]){one, ax, ok}, NULL);
        if (!e) e = ml_reduce(&cnt, ML_RSUM, m, nd, dims, true);
        if (!e) e = ml_ew_map(&gs, "norm", IOP_DIV, 2, (ml_tensor *[]){gk, cnt}, NULL);
        if (!e) e = ml_ew_map(&r, "norm", IOP_G_NORMINF, 3, (ml_tensor *[]){gs, x, ok}, NULL);
        ml_tensor_release(ax); ml_tensor_release(one); ml_tensor_release(m); ml_tensor_release(cnt);
        ml_tensor_release(gs);
    } else {
        e = ml_ew_map(&r, "norm", IOP_G_NORMP, 3, (ml_tensor *[]){gk, x, ok}, pr);
    }
done:
    ml_tensor_release(gk);
    ml_tensor_release(ok);
    if (e) { ml_tensor_release(r); return e; }
    return ml_grad_finish(&gin[0], r, n, 0);
}

ml_err ml_norm(ml_tensor **out, ml_tensor *a, double p, int ndims, const int *dims, bool keepdim) {
    *out = NULL;
    ml_err e;
    if ((e = ml_tensor_plain(a))) return e;
    if (isnan(p)) return ml_seterr(ML_ERR_ARG, "norm: p must not be NaN");
    bool red[ML_MAX_DIMS];
    if ((e = parse_dims("norm", a, ndims, dims, red))) return e;
    if (ml_tensor_is_cuda(a)) {
        if (!ml_dtype_is_float((ml_dtype)a->dtype)) return ml_check_cpu("norm", a);
        return device_norm(out, a, p, red, keepdim);
    }
    int64_t oshape[ML_MAX_DIMS];
    int ond = red_out_shape(a, red, keepdim, oshape);
    ml_dtype ad = (ml_dtype)a->dtype, kd = ad == ML_F64 ? ML_F64 : ML_F32, od = ml_dtype_is_float(ad) ? ad : ML_F32;
    int kop = p == 2 ? K_SUMSQ : p == 1 ? K_SUMABS : p == INFINITY ? K_MAXABS : p == -INFINITY ? K_MINABS
            : p == 0 ? K_COUNTNZ : K_SUMPOW;
    ml_tensor *ac = NULL, *res = NULL;
    acc_t *acc = NULL;
    int64_t no;
    if ((e = prep_input(&ac, a, kd))) return e;
    if ((e = run_reduce(&acc, &no, ac, red, kop, p, NULL))) goto done;
    for (int64_t i = 0; i < no; i++) {
        if (kop == K_SUMSQ) acc[i].d = sqrt(acc[i].d);
        else if (kop == K_SUMPOW) acc[i].d = pow(acc[i].d, 1.0 / p);
    }
    if ((e = out_from_doubles(&res, kd, ond, oshape, (const double *)acc, no))) goto done;
    if ((e = cast_to(&res, od))) goto done;
    {
        red_params pp = {.p = p, .count = red_count(a, red)};
        memcpy(pp.red, red, sizeof red);
        if (ml_dtype_is_float(ad) && (e = record_saving("norm", bw_norm, a, res, &pp, sizeof pp, a, res, true))) goto done;
    }
    *out = res;
    res = NULL;
done:
    ml_tensor_release(ac);
    ml_tensor_release(res);
    free(acc);
    return e;
}

/* ======================================================= max/min along a dim */
#define FNAN(v) ((v) != (v))
#define INAN(v) 0
#define DEF_ARGEXT(SUF, T, ISNAN)                                                                  \
    static inline bool better_##SUF(bool mx, T v, T b) {                                            \
        if (ISNAN(b)) return false;                                                                 \
        if (ISNAN(v)) return true;                                                                  \
        return mx ? v > b : v < b;                                                                  \
    }                                                                                               \
    /* best of x[lo, hi) (hi > lo): first occurrence, first NaN wins. A vectorized max/min pass,   \
     * then a blocked vectorized search for the first element equal to it. */                      \
    static void seg_##SUF(bool mx, const T *x, int64_t lo, int64_t hi, T *bv, int64_t *bi) {        \
        T m = x[lo];                                                                                \
        int nf = 0;                                                                                 \
        if (mx) {                                                                                   \
            _Pragma("omp simd reduction(max : m) reduction(| : nf)")                                \
            for (int64_t i = lo; i < hi; i++) { T v = x[i]; m = v > m ? v : m; nf |= ISNAN(v); }    \
        } else {                                                                                    \
            _Pragma("omp simd reduction(min : m) reduction(| : nf)")                                \
            for (int64_t i = lo; i < hi; i++) { T v = x[i]; m = v < m ? v : m; nf |= ISNAN(v); }    \
        }                                                                                           \
        for (int64_t b = lo; b < hi; b += 1024) {                                                   \
            int64_t e = hi - b < 1024 ? hi : b + 1024;                                              \
            int hit = 0;                                                                            \
            if (nf) {                                                                               \
                _Pragma("omp simd reduction(| : hit)")                                              \
                for (int64_t i = b; i < e; i++) hit |= ISNAN(x[i]);                                 \
            } else {                                                                                \
                _Pragma("omp simd reduction(| : hit)")                                              \
                for (int64_t i = b; i < e; i++) hit |= x[i] == m;                                   \
            }                                                                                       \
            if (!hit) continue;                                                                     \
            for (int64_t i = b; i < e; i++)                                                         \
                if (nf ? ISNAN(x[i]) : x[i] == m) { *bv = x[i]; *bi = i; return; }                  \
        }                                                                                           \
        *bv = x[lo]; /* not reached */                                                              \
        *bi = lo;                                                                                   \
    }                                                                                               \
    static void argext_##SUF(bool mx, const T *x, int64_t outer, int64_t R, int64_t inner, T *vals, int64_t *idx) { \
        int64_t total = outer * R * inner;                                                          \
        int nt = total < 2 * ML_ITER_GRAIN ? 1 : ml_num_threads();                                  \
        if (nt > MAX_PART_THREADS) nt = MAX_PART_THREADS;                                           \
        if (inner == 1 && outer < nt) {                                                             \
            T pb[MAX_PART_THREADS];                                                                 \
            int64_t pi[MAX_PART_THREADS];                                                           \
            for (int64_t o = 0; o < outer; o++) {                                                   \
                const T *row = x + o * R;                                                           \
                _Pragma("omp parallel for num_threads(nt) schedule(static)")                        \
                for (int t = 0; t < nt; t++) {                                                      \
                    int64_t lo = R * t / nt, hi = R * (t + 1) / nt;                                 \
                    if (lo >= hi) { pi[t] = -1; continue; }                                         \
                    seg_##SUF(mx, row, lo, hi, &pb[t], &pi[t]);                                     \
                }                                                                                   \
                T b = row[0];                                                                       \
                int64_t bi = 0;                                                                     \
                for (int t = 0; t < nt; t++)                                                        \
                    if (pi[t] >= 0 && better_##SUF(mx, pb[t], b)) { b = pb[t]; bi = pi[t]; }         \
                if (vals) vals[o] = b;                                                              \
                idx[o] = bi;                                                                        \
            }                                                                                       \
            return;                                                                                 \
        }                                                                                           \
        if (inner == 1) {                                                                           \
            ML_PAR_FOR(int64_t, o, outer, {                                                         \
                T b;                                                                                \
                int64_t bi;                                                                         \
                seg_##SUF(mx, x + o * R, 0, R, &b, &bi);                                            \
                if (vals) vals[o] = b;                                                              \
                idx[o] = bi;                                                                        \
            });                                                                                     \
            return;                                                                                 \
        }                                                                                           \
        int64_t ncb = (inner + RED_CB - 1) / RED_CB, tasks = outer * ncb;                           \
        ML_PAR_FOR(int64_t, task, tasks, {                                                          \
            int64_t o = task / ncb, c0 = (task % ncb) * RED_CB, cn = inner - c0 < RED_CB ? inner - c0 : RED_CB; \
            T b[RED_CB];                                                                            \
            int64_t bi[RED_CB];                                                                     \
            const T *r0 = x + o * R * inner + c0;                                                   \
            for (int64_t j = 0; j < cn; j++) { b[j] = r0[j]; bi[j] = 0; }                           \
            for (int64_t r = 1; r < R; r++) {                                                       \
                const T *row = r0 + r * inner;                                                      \
                for (int64_t j = 0; j < cn; j++) {                                                  \
                    T v = row[j];                                                                   \
                    bool t = !ISNAN(b[j]) && (ISNAN(v) || (mx ? v > b[j] : v < b[j]));              \
                    b[j] = t ? v : b[j];                                                            \
                    bi[j] = t ? r : bi[j];                                                          \
                }                                                                                   \
            }                                                                                       \
            for (int64_t j = 0; j < cn; j++) {                                                      \
                if (vals) vals[o * inner + c0 + j] = b[j];                                          \
                idx[o * inner + c0 + j] = bi[j];                                                    \
            }                                                                                       \
        });                                                                                         \
    }

DEF_ARGEXT(f32, float, FNAN)
DEF_ARGEXT(f64, double, FNAN)
DEF_ARGEXT(i64, int64_t, INAN)

typedef struct {
    int dim;
    bool keepdim;
} maxdim_params;

static ml_err bw_maxdim(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const maxdim_params *p = (const maxdim_params *)n->params;
    ml_tensor *idx = ml_node_saved(n, 0), *gk = NULL, *z = NULL;
    if (!idx) return ML_ERR_GRAD;
    ml_err e = ml_reshape(&gk, gout[0], idx->ndim, idx->shape);
    if (!e) e = ml_zeros(&z, (ml_dtype)gout[0]->dtype, n->in_ndim[0], n->in_shape[0]);
    if (!e) {
        if (n->in_ndim[0] == 0) e = ml_copy_(z, gk);
        else e = ml_scatter_add_(z, p->dim, idx, gk);
    }
    ml_tensor_release(gk);
    if (e) { ml_tensor_release(z); return e; }
    return ml_grad_finish(&gin[0], z, n, 0);
}

/* max/min with indices (argmax/argmin) on a device: ml_cuda_reduce with the index output (first index of the
 * extreme, NaN first, as the CPU); the values' gradient (routed to the index) is not on the device yet */
static ml_err device_argext(ml_tensor **values, ml_tensor **indices, ml_tensor *a, bool flat, int d, bool mx,
                            const char *name, ml_dtype kd, int ond, const int64_t *oshape) {
    if (kd == ML_I64) return ml_check_cpu(name, a);
    if (values && ml_needs_grad(1, &a))
        return ml_seterr(ML_ERR_UNSUPPORTED, "%s: values with indices of a tensor that requires grad are not "
                         "differentiable on %s yet (shape %s); use amax/amin, or :cpu()", name,
                         ml_device_str(a->storage->device), ml_shape_str(a->ndim, a->shape));
    bool red[ML_MAX_DIMS] = {0};
    int64_t ks[ML_MAX_DIMS];
    for (int i = 0; i < a->ndim; i++) {
        red[i] = flat || i == d;
        ks[i] = red[i] ? 1 : a->shape[i];
    }
    ml_tensor *ac = NULL, *vk = NULL, *ixk = NULL;
    bool prev = ml_set_grad_enabled(false);
    ml_err e = ml_to_dtype(&ac, a, kd);
    if (!e) e = ml_tensor_empty_on(&vk, ml_tensor_device(a), kd, a->ndim, ks);
    if (!e) e = ml_tensor_empty_on(&ixk, ml_tensor_device(a), ML_I64, a->ndim, ks);
    if (!e) {
        ml_cuda_opnd o, in, ix;
        ml_cuda_opnd_of(&o, vk, vk->ndim, vk->shape);
        ml_cuda_opnd_of(&ix, ixk, ixk->ndim, ixk->shape);
        ml_cuda_opnd_of(&in, ac, ac->ndim, ac->shape);
        e = ml_cuda_reduce(mx ? 1 : 2, kd, a->ndim, a->shape, red, &o, &in, &ix);
    }
    if (!e) e = ml_reshape(indices, ixk, ond, oshape);
    if (!e && values) {
        ml_tensor *v = NULL;
        if (!(e = ml_reshape(&v, vk, ond, oshape))) {
            e = ml_to_dtype(values, v, (ml_dtype)a->dtype);
            ml_tensor_release(v);
        }
    }
    ml_set_grad_enabled(prev);
    ml_tensor_release(ac);
    ml_tensor_release(vk);
    ml_tensor_release(ixk);
    if (e) {
        ml_tensor_release(*indices);
        *indices = NULL;
        if (values) {
            ml_tensor_release(*values);
            *values = NULL;
        }
    }
    return e;
}

static ml_err argext(ml_tensor **values, ml_tensor **indices, ml_tensor *a, int dim, bool keepdim, bool mx,
                     const char *name) {
    if (values) *values = NULL;
    *indices = NULL;
    ml_err e;
    if ((e = ml_tensor_plain(a))) return e;
    bool flat = dim == ML_ALL_DIMS;
    int d = 0;
    int64_t outer = 1, R = 1, inner = 1;
    if (flat) {
        R = ml_tensor_numel(a);
    } else {
        d = ml_wrap_dim(name, dim, a->ndim);
        if (d < 0) return ML_ERR_DIM;
        if (a->ndim > 0) {
            for (int i = 0; i < d; i++) outer *= a->shape[i];
            R = a->shape[d];
            for (int i = d + 1; i < a->ndim; i++) inner *= a->shape[i];
        }
    }
    int64_t oshape[ML_MAX_DIMS];
    int ond = 0;
    if (flat) {
        if (keepdim) for (int i = 0; i < a->ndim; i++) oshape[ond++] = 1;
    } else {
        for (int i = 0; i < a->ndim; i++) {
            if (i == d) { if (keepdim) oshape[ond++] = 1; }
            else oshape[ond++] = a->shape[i];
        }
    }
    if (R == 0 && outer * inner > 0)
        return ml_seterr(ML_ERR_ARG, "%s: cannot reduce over a zero-size dimension (input shape %s, dim %d)", name,
                         ml_shape_str(a->ndim, a->shape), d);
    ml_dtype ad = (ml_dtype)a->dtype;
    ml_dtype kd = ml_dtype_is_float(ad) ? (ad == ML_F64 ? ML_F64 : ML_F32) : ML_I64;
    if (ml_tensor_is_cuda(a)) return device_argext(values, indices, a, flat, d, mx, name, kd, ond, oshape);
    ml_tensor *ac = NULL, *vt = NULL, *it = NULL, *ik = NULL;
    if ((e = prep_input(&ac, a, kd))) return e;
    if ((e = ml_tensor_empty(&it, ML_I64, ond, oshape))) goto done;
    if (values && (e = ml_tensor_empty(&vt, kd, ond, oshape))) goto done;
    if (outer * R * inner > 0) {
        void *vd = vt ? ml_tensor_data(vt) : NULL;
        int64_t *id = ml_tensor_data(it);
        if (kd == ML_F32) argext_f32(mx, ml_tensor_data(ac), outer, R, inner, vd, id);
        else if (kd == ML_F64) argext_f64(mx, ml_tensor_data(ac), outer, R, inner, vd, id);
        else argext_i64(mx, ml_tensor_data(ac), outer, R, inner, vd, id);
    }
    if (vt) {
        if ((e = cast_to(&vt, ad))) goto done;
        if (ml_dtype_is_float(ad) && ml_needs_grad(1, &a)) {
            int64_t ks[ML_MAX_DIMS];
            for (int i = 0; i < a->ndim; i++) ks[i] = i == d ? 1 : a->shape[i];
            if ((e = ml_reshape(&ik, it, a->ndim, ks))) goto done;
            maxdim_params p = {.dim = d, .keepdim = keepdim};
            if ((e = record_saving(mx ? "max" : "min", bw_maxdim, a, vt, &p, sizeof p, ik, NULL, false))) goto done;
        }
        *values = vt;
        vt = NULL;
    }
    *indices = it;
    it = NULL;
done:
    ml_tensor_release(ac);
    ml_tensor_release(vt);
    ml_tensor_release(it);
    ml_tensor_release(ik);
    return e;
}

ml_err ml_max_dim(ml_tensor **values, ml_tensor **indices, ml_tensor *a, int dim, bool keepdim) {
    *values = NULL;
    *indices = NULL;
    if (dim == ML_ALL_DIMS) return ml_seterr(ML_ERR_DIM, "max: a dim is required (use amax to reduce all dims)");
    return argext(values, indices, a, dim, keepdim, true, "max");
}

ml_err ml_min_dim(ml_tensor **values, ml_tensor **indices, ml_tensor *a, int dim, bool keepdim) {
    *values = NULL;
    *indices = NULL;
    if (dim == ML_ALL_DIMS) return ml_seterr(ML_ERR_DIM, "min: a dim is required (use amin to reduce all dims)");
    return argext(values, indices, a, dim, keepdim, false, "min");
}

ml_err ml_argmax(ml_tensor **out, ml_tensor *a, int dim, bool keepdim) {
    return argext(NULL, out, a, dim, keepdim, true, "argmax");
}

ml_err ml_argmin(ml_tensor **out, ml_tensor *a, int dim, bool keepdim) {
    return argext(NULL, out, a, dim, keepdim, false, "argmin");
}

/* ================================================================= cumsum */
#define DEF_CUMSUM(SUF, T, ACC)                                                                     \
    static void cumsum_##SUF(const T *x, T *y, int64_t outer, int64_t R, int64_t inner, bool rev) { \
        int64_t total = outer * R * inner;                                                          \
        int nt = total < 2 * ML_ITER_GRAIN ? 1 : ml_num_threads();                                  \
        if (inner == 1) {                                                                           \
            ML_PAR_FOR(int64_t, o, outer, {                                                         \
                ACC acc = 0;                                                                        \
                for (int64_t k = 0; k < R; k++) {                                                   \
                    int64_t r = rev ? R - 1 - k : k;                                                \
                    acc += (ACC)x[o * R + r];                                                       \
                    y[o * R + r] = (T)acc;                                                          \
                }                                                                                   \
            });                                                                                     \
            return;                                                                                 \
        }                                                                                           \
        int64_t ncb = (inner + RED_CB - 1) / RED_CB, tasks = outer * ncb;                           \
        ML_PAR_FOR(int64_t, task, tasks, {                                                          \
            int64_t o = task / ncb, c0 = (task % ncb) * RED_CB, cn = inner - c0 < RED_CB ? inner - c0 : RED_CB; \
            ACC acc[RED_CB];                                                                        \
            for (int64_t j = 0; j < cn; j++) acc[j] = 0;                                            \
            for (int64_t k = 0; k < R; k++) {                                                       \
                int64_t r = rev ? R - 1 - k : k;                                                    \
                const T *xr = x + (o * R + r) * inner + c0;                                         \
                T *yr = y + (o * R + r) * inner + c0;                                               \
                for (int64_t j = 0; j < cn; j++) { acc[j] += (ACC)xr[j]; yr[j] = (T)acc[j]; }       \
            }                                                                                       \
        });                                                                                         \
    }

DEF_CUMSUM(f32, float, double)
DEF_CUMSUM(f64, double, double)
DEF_CUMSUM(i64, int64_t, uint64_t)

static ml_err cumsum_impl(ml_tensor **out, ml_tensor *a, int dim, bool rev) {
    *out = NULL;
    ml_err e;
    if ((e = ml_tensor_plain(a)) || (e = ml_check_cpu("cumsum", a))) return e;
    int d = ml_wrap_dim("cumsum", dim, a->ndim);
    if (d < 0) return ML_ERR_DIM;
    int64_t outer = 1, R = 1, inner = 1;
    if (a->ndim > 0) {
        for (int i = 0; i < d; i++) outer *= a->shape[i];
        R = a->shape[d];
        for (int i = d + 1; i < a->ndim; i++) inner *= a->shape[i];
    }
    ml_dtype ad = (ml_dtype)a->dtype;
    ml_dtype kd = ml_dtype_is_float(ad) ? (ad == ML_F64 ? ML_F64 : ML_F32) : ML_I64;
    ml_dtype od = ml_dtype_is_float(ad) ? ad : ML_I64;
    ml_tensor *ac = NULL, *res = NULL;
    if ((e = prep_input(&ac, a, kd))) return e;
    if ((e = ml_tensor_empty(&res, kd, a->ndim, a->shape))) { ml_tensor_release(ac); return e; }
    if (outer * R * inner > 0) {
        if (kd == ML_F32) cumsum_f32(ml_tensor_data(ac), ml_tensor_data(res), outer, R, inner, rev);
        else if (kd == ML_F64) cumsum_f64(ml_tensor_data(ac), ml_tensor_data(res), outer, R, inner, rev);
        else cumsum_i64(ml_tensor_data(ac), ml_tensor_data(res), outer, R, inner, rev);
    }
    ml_tensor_release(ac);
    if ((e = cast_to(&res, od))) return e;
    *out = res;
    return ML_OK;
}

static ml_err bw_cumsum(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const maxdim_params *p = (const maxdim_params *)n->params;
    ml_tensor *r;
    ml_err e = cumsum_impl(&r, gout[0], p->dim, true);
    if (e) return e;
    return ml_grad_finish(&gin[0], r, n, 0);
}

ml_err ml_cumsum(ml_tensor **out, ml_tensor *a, int dim) {
    ml_tensor *r;
    ml_err e = cumsum_impl(&r, a, dim, false);
    *out = NULL;
    if (e) return e;
    maxdim_params p = {.dim = dim};
    if ((e = record_saving("cumsum", bw_cumsum, a, r, &p, sizeof p, NULL, NULL, false))) {
        ml_tensor_release(r);
        return e;
    }
    *out = r;
    return ML_OK;
}

/* ================================================================= sum_to */
ml_err ml_sum_to(ml_tensor **out, ml_tensor *g, int ndim, const int64_t *shape) {
    *out = NULL;
    bool same = g->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = g->shape[i] == shape[i];
    if (same) {
        ml_tensor_retain(g);
        *out = g;
        return ML_OK;
    }
    int lead = g->ndim - ndim;
    int dims[ML_MAX_DIMS], nd = 0;
    bool ok = lead >= 0;
    for (int i = 0; ok && i < lead; i++) dims[nd++] = i;
    for (int i = 0; ok && i < ndim; i++) {
        int64_t gs = g->shape[lead + i];
        if (shape[i] == gs) continue;
        if (shape[i] == 1) dims[nd++] = lead + i;
        else ok = false;
    }
    if (!ok)
        return ml_seterr(ML_ERR_SHAPE, "sum_to: a tensor of shape %s cannot be summed to shape %s",
                         ml_shape_str(g->ndim, g->shape), ml_shape_str(ndim, shape));
    ml_tensor *r;
    ml_err e = ml_reduce(&r, ML_RSUM, g, nd, dims, true);
    if (e) return e;
    e = ml_reshape(out, r, ndim, shape);
    ml_tensor_release(r);
    return e;
}

/* ------------------------------------------------------------ quantile */
/* k-th smallest of v[lo..hi] (inclusive) moved to v[k], smaller left, larger right (Hoare
 * partition around a median of three; expected linear time). */
#define ML_DEF_SELECT(NAME, T)                                                                   \
    static void NAME(T *v, int64_t lo, int64_t hi, int64_t k) {                                 \
        while (hi > lo) {                                                                        \
            int64_t mid = lo + (hi - lo) / 2;                                                    \
            T a = v[lo], b = v[mid], c = v[hi];                                                  \
            T p = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));         \
            int64_t i = lo, j = hi;                                                              \
            while (i <= j) {                                                                     \
                while (v[i] < p) i++;                                                            \
                while (v[j] > p) j--;                                                            \
                if (i <= j) {                                                                    \
                    T t = v[i];                                                                  \
                    v[i] = v[j];                                                                 \
                    v[j] = t;                                                                    \
                    i++;                                                                         \
                    j--;                                                                         \
                }                                                                                \
            }                                                                                    \
            if (k <= j) hi = j;                                                                  \
            else if (k >= i) lo = i;                                                             \
            else return;                                                                         \
        }                                                                                        \
    }
ML_DEF_SELECT(select_f32, float)
ML_DEF_SELECT(select_f64, double)

/* Interpolation between order statistics lo (k-th) and hi ((k+1)-th) as numpy's/torch's lerp. */
static double quantile_lerp(double lo, double hi, double t) {
    double d = hi - lo;
    return t >= 0.5 ? hi - d * (1 - t) : lo + d * t;
}

double ml_select_quantile_f32(float *a, int64_t n, double q) {
    double pos = q * (double)(n - 1);
    int64_t k = (int64_t)floor(pos);
    if (k < 0) k = 0;
    if (k > n - 1) k = n - 1;
    double t = pos - (double)k;
    select_f32(a, 0, n - 1, k);
    double lo = a[k];
    if (k + 1 >= n || t == 0) return lo;
    float hi = a[k + 1]; /* the (k+1)-th smallest: the minimum right of k after the selection */
    for (int64_t i = k + 2; i < n; i++) hi = a[i] < hi ? a[i] : hi;
    return quantile_lerp(lo, hi, t);
}

static int cmp_dbl(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

ml_err ml_quantile(ml_tensor **out, ml_tensor *a, int nq, const double *q) {
    *out = NULL;
    if (nq <= 0 || nq > 4096) return ml_seterr(ML_ERR_ARG, "quantile: need 1 to 4096 quantiles, got %d", nq);
    ml_err ce = ml_check_cpu("quantile", a);
    if (ce) return ce;
    for (int i = 0; i < nq; i++)
        if (!(q[i] >= 0 && q[i] <= 1)) return ml_seterr(ML_ERR_ARG, "quantile: q = %g outside [0, 1]", q[i]);
    int64_t n = ml_tensor_numel(a);
    if (n == 0) return ml_seterr(ML_ERR_SHAPE, "quantile: input is empty (shape %s)", ml_shape_str(a->ndim, a->shape));
    bool wide = a->dtype == ML_F64 || a->dtype == ML_I64;
    ml_tensor *c = NULL, *flat = NULL;
    ml_err e = ml_to_dtype(&c, a, wide ? ML_F64 : ML_F32);
    if (!e) e = ml_clone(&flat, c); /* private copy: selection reorders it */
    ml_tensor_release(c);
    if (e) return e;
    int64_t one = nq;
    ml_tensor *res = NULL;
    e = ml_tensor_empty(&res, ML_F64, 1, &one);
    if (e) {
        ml_tensor_release(flat);
        return e;
    }
    double *r = ml_tensor_data(res);
    /* process quantiles in ascending order so each selection works on a shrinking range */
    double (*order)[2] = malloc(sizeof(double[2]) * (size_t)nq);
    if (!order) {
        ml_tensor_release(flat);
        ml_tensor_release(res);
        return ml_seterr(ML_ERR_OOM, "quantile: out of memory");
    }
    for (int i = 0; i < nq; i++) {
        order[i][0] = q[i];
        order[i][1] = i;
    }
    qsort(order, (size_t)nq, sizeof order[0], cmp_dbl);
    bool has_nan = false;
    int64_t lo = 0;
    if (wide) {
        double *v = ml_tensor_data(flat);
        for (int64_t i = 0; i < n && !has_nan; i++) has_nan = isnan(v[i]);
        for (int t = 0; t < nq && !has_nan; t++) {
            double pos = order[t][0] * (double)(n - 1);
            int64_t k = (int64_t)floor(pos);
            double fr = pos - (double)k;
            select_f64(v, lo, n - 1, k);
            double x0 = v[k], x1 = x0;
            if (fr > 0 && k + 1 < n) {
                x1 = v[k + 1];
                for (int64_t i = k + 2; i < n; i++) x1 = v[i] < x1 ? v[i] : x1;
            }
            r[(int)order[t][1]] = fr > 0 ? quantile_lerp(x0, x1, fr) : x0;
            lo = k;
        }
    } else {
        float *v = ml_tensor_data(flat);
        for (int64_t i = 0; i < n && !has_nan; i++) has_nan = isnan(v[i]);
        for (int t = 0; t < nq && !has_nan; t++) {
            double pos = order[t][0] * (double)(n - 1);
            int64_t k = (int64_t)floor(pos);
            double fr = pos - (double)k;
            select_f32(v, lo, n - 1, k);
            double x0 = v[k], x1 = x0;
            if (fr > 0 && k + 1 < n) {
                float m = v[k + 1];
                for (int64_t i = k + 2; i < n; i++) m = v[i] < m ? v[i] : m;
                x1 = m;
            }
            r[(int)order[t][1]] = fr > 0 ? quantile_lerp(x0, x1, fr) : x0;
            lo = k;
        }
    }
    if (has_nan)
        for (int i = 0; i < nq; i++) r[i] = NAN; /* as torch.quantile: NaN in, NaN out */
    free(order);
    ml_tensor_release(flat);
    /* No backward rule: the result joins the graph so that backward through it raises
     * "op quantile has no backward rule" instead of silently dropping the input's gradient. */
    e = ml_record("quantile", NULL, 1, &a, res, NULL);
    if (e) {
        ml_tensor_release(res);
        return e;
    }
    *out = res;
    return ML_OK;
}
