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
#include "ml_iter.h"
#include "ml_ew_internal.h"

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
#define RED_CB 1024

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
        case K_MAX: {                                                                               \
            T m = (T)acc;                                                                           \
            for (int64_t i = 0; i < n; i++) m = (x[i] > m || x[i] != x[i]) ? x[i] : m;              \
            acc = m;                                                                                \
        } break;                                                                                    \
        case K_MIN: {                                                                               \
            T m = (T)acc;                                                                           \
            for (int64_t i = 0; i < n; i++) m = (x[i] < m || x[i] != x[i]) ? x[i] : m;              \
            acc = m;                                                                                \
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
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
            for (int64_t o = 0; o < nko; o++) {
                int64_t ok = blk_off(nk, ks, kst, o);
                acc_t acc;
                k_init(k, &acc, 1);
                for (int64_t r = 0; r < nro; r++) k_row(k, x + (size_t)(ok + blk_off(nr, rs, rst, r)) * es, inner, &acc, o);
                res[o] = acc;
            }
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
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t task = 0; task < tasks; task++) {
            int64_t o2 = task / ncb, c0 = (task % ncb) * RED_CB, cn = inner - c0 < RED_CB ? inner - c0 : RED_CB;
            acc_t acc[RED_CB];
            k_init(k, acc, cn);
            int64_t ok = blk_off(nk, ks, kst, o2);
            for (int64_t r = 0; r < nro; r++)
                k_col(k, x + (size_t)(ok + blk_off(nr, rs, rst, r) + c0) * es, cn, acc, o2 * inner + c0);
            memcpy(res + o2 * inner + c0, acc, (size_t)cn * sizeof(acc_t));
        }
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
