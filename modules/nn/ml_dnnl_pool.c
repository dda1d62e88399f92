/* max_pool / avg_pool / adaptive_avg_pool for 1-3 spatial dims with PyTorch's output-size rules.
 *
 * Forward (f32 and f64) and max-pool backward run on direct OpenMP kernels (ml_dnnl_pool_ref.h)
 * with precomputed, pre-clipped window tables. Measured on plain NC(D)HW tensors they are about 2x
 * faster than oneDNN 2.6's pooling (which only has its simple_nchw / ref implementations for plain
 * layouts); max pooling saves int64 argmax indices (PyTorch's tie rule: first maximum, NaN wins).
 * f32 avg / adaptive-avg backward uses the oneDNN pooling_v2 backward primitive (cached), which
 * measured faster there, whenever oneDNN's semantics match PyTorch's: not for count_include_pad
 * windows whose ceil-mode overhang passes the right padding, nor uneven adaptive windows; those
 * use the direct kernels. */
#include "ml_dnnl_priv.h"
#include "../cuda/ml_cuda.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { PLK = 0x504f4f4c };
enum { PA_MAX = 0, PA_AVG_INCL = 1, PA_AVG_EXCL = 2, PA_ADAPTIVE = 3 };
enum { PP_FWD_TRAIN = 0, PP_FWD_INFER = 1, PP_BWD = 2 };

typedef struct {
    int k, alg;
    int64_t N, C;
    int64_t I[3], O[3], K[3], s[3], p[3], d[3], pr[3]; /* padded to 3 dims (neutral values) */
} pgeo;

static const char *pname(int alg, int k) {
    return mld_opname(alg == PA_MAX ? "max_pool" : alg == PA_ADAPTIVE ? "adaptive_avg_pool" : "avg_pool", k);
}

static inline int64_t prod3(const int64_t *v) { return v[0] * v[1] * v[2]; }

/* ------------------------------------------------------------ direct kernels */
/* adaptive window [start, end) of output o over input I (PyTorch's formula) */
static inline void adapt_range(int64_t o, int64_t I, int64_t O, int64_t *a, int64_t *b) {
    *a = (o * I) / O;
    *b = ((o + 1) * I + O - 1) / O;
}

/* Per-dimension window tables: output o reads input positions st + t*d for taps t in [a, b)
 * (already clipped to the input); div is the averaging divisor factor of that dimension. */
typedef struct {
    int64_t *st[3], *a[3], *b[3], *div[3];
    int64_t d[3];
    bool disjoint0; /* windows of consecutive dim-0 outputs never share an input position */
    int64_t *mem;
} pwin;

static ml_err pwin_init(pwin *w, const pgeo *g) {
    int64_t tot = 4 * (g->O[0] + g->O[1] + g->O[2]);
    w->mem = malloc(sizeof(int64_t) * (size_t)tot);
    if (!w->mem) return ml_seterr(ML_ERR_OOM, "%s: out of memory", pname(g->alg, g->k));
    int64_t *m = w->mem;
    for (int j = 0; j < 3; j++) {
        int64_t O = g->O[j], I = g->I[j];
        w->st[j] = m; w->a[j] = m + O; w->b[j] = m + 2 * O; w->div[j] = m + 3 * O;
        m += 4 * O;
        w->d[j] = g->alg == PA_ADAPTIVE ? 1 : g->d[j];
        for (int64_t o = 0; o < O; o++) {
            if (g->alg == PA_ADAPTIVE) {
                int64_t lo, hi;
                adapt_range(o, I, O, &lo, &hi);
                w->st[j][o] = lo; w->a[j][o] = 0; w->b[j][o] = hi - lo; w->div[j][o] = hi - lo;
                continue;
            }
            int64_t d = g->d[j], K = g->K[j], start = o * g->s[j] - g->p[j];
            int64_t a = start < 0 ? (-start + d - 1) / d : 0;
            int64_t b = I - start > 0 ? (I - start + d - 1) / d : 0;
            if (b > K) b = K;
            if (b < a) b = a;
            w->st[j][o] = start; w->a[j][o] = a; w->b[j][o] = b;
            if (g->alg == PA_AVG_INCL) {
                int64_t c = (I + g->p[j] - start + d - 1) / d; /* taps left of I + p (all are >= -p) */
                w->div[j][o] = c < K ? c : K;
            } else {
                w->div[j][o] = b - a;
            }
        }
    }
    w->disjoint0 = true;
    int64_t prev_last = INT64_MIN;
    for (int64_t o = 0; o < g->O[0]; o++) {
        if (w->a[0][o] >= w->b[0][o]) continue;
        int64_t first = w->st[0][o] + w->a[0][o] * w->d[0], last = w->st[0][o] + (w->b[0][o] - 1) * w->d[0];
        if (first <= prev_last) w->disjoint0 = false;
        prev_last = last;
    }
    return ML_OK;
}

static void pwin_free(pwin *w) { free(w->mem); }

#define PT float
#define PSFX f32
#include "ml_dnnl_pool_ref.h"
#undef PT
#undef PSFX
#define PT double
#define PSFX f64
#include "ml_dnnl_pool_ref.h"
#undef PT
#undef PSFX

static ml_err direct_fwd(const pgeo *g, bool f64, const void *x, void *y, int64_t *ind) {
    pwin w;
    ml_err e = pwin_init(&w, g);
    if (e) return e;
    if (f64) pool_fwd_f64(g, &w, x, y, ind);
    else pool_fwd_f32(g, &w, x, y, ind);
    pwin_free(&w);
    return ML_OK;
}

static ml_err direct_bwd(const pgeo *g, bool f64, const void *gy, void *gx, const int64_t *ind) {
    pwin w;
    ml_err e = pwin_init(&w, g);
    if (e) return e;
    if (f64) pool_bwd_f64(g, &w, gy, gx, ind);
    else pool_bwd_f32(g, &w, gy, gx, ind);
    pwin_free(&w);
    return ML_OK;
}

/* ------------------------------------------------------------ oneDNN */
/* Geometry oneDNN can run with PyTorch semantics? (adaptive maps to a plain window when even) */
static bool dnnl_pool_ok(const pgeo *g) {
    if (g->N * g->C * prod3(g->I) * prod3(g->O) == 0) return false;
    if (g->alg == PA_ADAPTIVE) {
        for (int j = 0; j < 3; j++)
            if (g->I[j] % g->O[j]) return false;
        return true;
    }
    if (g->alg == PA_AVG_INCL)
        for (int j = 0; j < 3; j++)
            if (g->pr[j] > g->p[j]) return false; /* divisor would count the ceil-mode overhang */
    return true;
}

typedef struct {
    const pgeo *g;
    int prop;
} pbuild;

static ml_err dpool_get(mld_entry **out, const pgeo *g, int prop);

static void pool_dims(const pgeo *g, int64_t *xs, int64_t *ys, dnnl_dims_t K, dnnl_dims_t S, dnnl_dims_t D,
                      dnnl_dims_t PL, dnnl_dims_t PR) {
    xs[0] = ys[0] = g->N;
    xs[1] = ys[1] = g->C;
    for (int i = 0; i < g->k; i++) {
        int j = 3 - g->k + i;
        xs[2 + i] = g->I[j];
        ys[2 + i] = g->O[j];
        if (g->alg == PA_ADAPTIVE) {
            K[i] = S[i] = g->I[j] / g->O[j];
            D[i] = PL[i] = PR[i] = 0;
        } else {
            K[i] = g->K[j];
            S[i] = g->s[j];
            D[i] = g->d[j] - 1;
            PL[i] = g->p[j];
            PR[i] = g->pr[j];
        }
    }
}

/* md: 0 src (plain), 1 dst (plain), 2 workspace */
static ml_err dpool_build(mld_entry *e, void *ud) {
    const pbuild *b = ud;
    const pgeo *g = b->g;
    const char *op = pname(g->alg, g->k);
    dnnl_engine_t eng = mld_engine(op);
    if (!eng) return ML_ERR_INTERNAL;
    int nd = g->k + 2;
    int64_t xs[5], ys[5];
    dnnl_dims_t K, S, D, PL, PR;
    pool_dims(g, xs, ys, K, S, D, PL, PR);
    ml_err err;
    if ((err = mld_md_plain(&e->md[0], op, nd, xs)) || (err = mld_md_plain(&e->md[1], op, nd, ys))) return err;
    dnnl_alg_kind_t alg = g->alg == PA_MAX        ? dnnl_pooling_max
                          : g->alg == PA_AVG_INCL ? dnnl_pooling_avg_include_padding
                                                  : dnnl_pooling_avg_exclude_padding;
    dnnl_pooling_v2_desc_t pd;
    dnnl_status_t s;
    const_dnnl_primitive_desc_t hint = NULL;
    if (b->prop == PP_BWD) {
        if ((err = dpool_get(&e->hint, g, PP_FWD_TRAIN))) return err;
        if (e->hint->unsupported) return ml_seterr(ML_ERR_UNSUPPORTED, "%s: no oneDNN forward implementation", op);
        hint = e->hint->pd;
        s = dnnl_pooling_v2_backward_desc_init(&pd, alg, &e->md[0], &e->md[1], S, K, D, PL, PR);
    } else {
        s = dnnl_pooling_v2_forward_desc_init(&pd, b->prop == PP_FWD_TRAIN ? dnnl_forward_training : dnnl_forward_inference,
                                              alg, &e->md[0], &e->md[1], S, K, D, PL, PR);
    }
    /* oneDNN rejects some legal PyTorch geometries (e.g. large ceil-mode overhang): use the reference */
    if (s != dnnl_success) return ml_seterr(ML_ERR_UNSUPPORTED, "%s: oneDNN pooling descriptor rejected", op);
    s = dnnl_primitive_desc_create(&e->pd, &pd, NULL, eng, hint);
    if (s != dnnl_success) {
        e->pd = NULL;
        return mld_fail(s, op, "pooling primitive descriptor");
    }
    MLD_TRY(dnnl_primitive_create(&e->prim, e->pd), op, "pooling primitive");
    /* the primitive must use our plain layouts */
    const dnnl_memory_desc_t *q0 = dnnl_primitive_desc_query_md(e->pd, b->prop == PP_BWD ? dnnl_query_diff_src_md : dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *q1 = dnnl_primitive_desc_query_md(e->pd, b->prop == PP_BWD ? dnnl_query_diff_dst_md : dnnl_query_dst_md, 0);
    if (!q0 || !q1 || !dnnl_memory_desc_equal(q0, &e->md[0]) || !dnnl_memory_desc_equal(q1, &e->md[1]))
        return ml_seterr(ML_ERR_UNSUPPORTED, "%s: oneDNN chose another layout", op);
    const dnnl_memory_desc_t *w = dnnl_primitive_desc_query_md(e->pd, dnnl_query_workspace_md, 0);
    if (w && w->ndims > 0) {
        e->md[2] = *w;
        e->ws_size = dnnl_memory_desc_get_size(w);
    }
    return ML_OK;
}

static ml_err dpool_get(mld_entry **out, const pgeo *g, int prop) {
    mld_key key = {.n = 0};
    mld_k(&key, PLK);
    mld_k(&key, prop);
    mld_k(&key, g->alg);
    mld_k(&key, g->k);
    mld_k(&key, g->N);
    mld_k(&key, g->C);
    mld_ka(&key, 3, g->I);
    mld_ka(&key, 3, g->O);
    mld_ka(&key, 3, g->K);
    mld_ka(&key, 3, g->s);
    mld_ka(&key, 3, g->p);
    mld_ka(&key, 3, g->pr);
    mld_ka(&key, 3, g->d);
    pbuild b = {g, prop};
    return mld_get(out, key.w, key.n, dpool_build, &b);
}

/* avg / adaptive-avg backward on oneDNN (plain layouts) */
static ml_err dpool_bwd(const pgeo *g, const float *gy, float *gx) {
    const char *op = pname(g->alg, g->k);
    mld_entry *e;
    ml_err err = dpool_get(&e, g, PP_BWD);
    if (err) return err;
    if (e->unsupported || e->ws_size) { mld_put(e); return ML_ERR_UNSUPPORTED; }
    mld_args A = {0};
    if ((err = mld_arg(&A, op, DNNL_ARG_DIFF_DST, &e->md[1], (void *)gy)) ||
        (err = mld_arg(&A, op, DNNL_ARG_DIFF_SRC, &e->md[0], gx))) {
        mld_args_free(&A);
        mld_put(e);
        return err;
    }
    err = mld_exec(op, e->prim, &A);
    mld_put(e);
    return err;
}

/* ------------------------------------------------------------ autograd */
typedef struct {
    pgeo g;
    int ind_slot; /* max pooling: saved int64 argmax indices */
} pool_np;

static ml_err bw_pool(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    pool_np *np = (pool_np *)n->params;
    const pgeo *g = &np->g;
    ml_tensor *gy, *gx;
    ml_err e = mld_grad_in(&gy, gout[0], (ml_dtype)n->out_dtype[0]);
    if (e) return e;
    if ((e = ml_tensor_empty(&gx, (ml_dtype)gy->dtype, n->in_ndim[0], n->in_shape[0]))) {
        ml_tensor_release(gy);
        return e;
    }
    const int64_t *ind = NULL;
    bool done = false;
    if (g->alg == PA_MAX) {
        ml_tensor *it = np->ind_slot >= 0 ? ml_node_saved(n, np->ind_slot) : NULL;
        if (!it) {
            if (np->ind_slot < 0) e = ml_seterr(ML_ERR_INTERNAL, "%s backward: indices were not saved", pname(g->alg, g->k));
            else e = ML_ERR_GRAD;
            goto out;
        }
        ind = ml_tensor_data(it);
    } else if (gy->dtype == ML_F32 && dnnl_pool_ok(g)) {
        e = dpool_bwd(g, ml_tensor_data(gy), ml_tensor_data(gx));
        if (e && e != ML_ERR_UNSUPPORTED) goto out;
        done = e == ML_OK;
        e = ML_OK;
    }
    if (!done) e = direct_bwd(g, gy->dtype == ML_F64, ml_tensor_data(gy), ml_tensor_data(gx), ind);
out:
    ml_tensor_release(gy);
    if (e) { ml_tensor_release(gx); return e; }
    gin[0] = gx;
    return ML_OK;
}

static ml_err pool_run(ml_tensor **out, ml_tensor *x, pgeo *g) {
    *out = NULL;
    const char *op = pname(g->alg, g->k);
    ml_dtype dt = (ml_dtype)x->dtype;
    bool need = ml_needs_grad(1, &x);
    ml_tensor *xc = NULL, *y = NULL, *ind = NULL;
    int64_t ys[5];
    ys[0] = g->N;
    ys[1] = g->C;
    for (int i = 0; i < g->k; i++) ys[2 + i] = g->O[3 - g->k + i];
    ml_err e;
    if ((e = mld_contig(&xc, x)) || (e = ml_tensor_empty(&y, dt, g->k + 2, ys))) goto done;
    if (g->alg == PA_MAX && need && (e = ml_tensor_empty(&ind, ML_I64, g->k + 2, ys))) goto done;
    if ((e = direct_fwd(g, dt == ML_F64, ml_tensor_data(xc), ml_tensor_data(y), ind ? ml_tensor_data(ind) : NULL)))
        goto done;
    {
        ml_node *node;
        if ((e = ml_record(op, bw_pool, 1, &x, y, &node))) goto done;
        if (node) {
            pool_np np;
            memset(&np, 0, sizeof np);
            np.g = *g;
            np.ind_slot = -1;
            if (ind && (np.ind_slot = ml_node_save(node, ind)) < 0) { e = ML_ERR_INTERNAL; goto done; }
            _Static_assert(sizeof(pool_np) <= ML_NODE_PARAM_BYTES, "pool params fit the node");
            memcpy(node->params, &np, sizeof np);
        }
    }
done:
    ml_tensor_release(xc);
    ml_tensor_release(ind);
    if (e) { ml_tensor_release(y); return e; }
    *out = y;
    return ML_OK;
}

/* ------------------------------------------------------------ CUDA (cuDNN) */
static void cuda_pool_desc(ml_cuda_pool_desc *d, const pgeo *g) {
    memset(d, 0, sizeof *d);
    d->nsp = g->k;
    d->x[0] = d->y[0] = g->N;
    d->x[1] = d->y[1] = g->C;
    for (int i = 0; i < g->k; i++) {
        int j = 3 - g->k + i;
        d->x[2 + i] = g->I[j];
        d->y[2 + i] = g->O[j];
        d->kernel[i] = (int)g->K[j];
        d->stride[i] = (int)g->s[j];
        d->pad[i] = (int)g->p[j];
    }
    d->max = g->alg == PA_MAX;
    d->count_include_pad = g->alg == PA_AVG_INCL;
}

typedef struct {
    ml_cuda_pool_desc d;
} cuda_pool_np;

/* saved: 0 x (dense), 1 y (a second header: the output holds the node) */
static ml_err bw_pool_cuda(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const cuda_pool_np *np = (const cuda_pool_np *)n->params;
    ml_tensor *x = ml_node_saved(n, 0), *y = ml_node_saved(n, 1), *gy = NULL;
    if (!x || !y) return ML_ERR_GRAD;
    ml_err e = ml_contiguous(&gy, gout[0]);
    if (!e) e = ml_tensor_empty_like(&gin[0], x);
    if (!e)
        e = ml_cuda_pool_bwd(x->dtype, &np->d, ml_tensor_data(x), ml_tensor_data(y), ml_tensor_data(gy),
                             ml_tensor_data(gin[0]), x->storage->device.index);
    ml_tensor_release(gy);
    return e;
}

static ml_err cuda_pool(ml_tensor **out, ml_tensor *x, const pgeo *g, const char *op) {
    *out = NULL;
    for (int j = 0; j < 3; j++)
        if (g->d[j] != 1)
            return ml_seterr(ML_ERR_UNSUPPORTED, "%s: dilation on %s is not supported (cuDNN pooling has none)", op,
                             ml_device_str(x->storage->device));
    ml_cuda_pool_desc d;
    cuda_pool_desc(&d, g);
    ml_tensor *xc = NULL, *y = NULL, *ys = NULL;
    bool prev = ml_set_grad_enabled(false);
    ml_err e = ml_contiguous(&xc, x);
    ml_set_grad_enabled(prev);
    if (e) return e;
    if (!(e = ml_tensor_empty_on(&y, ml_tensor_device(x), (ml_dtype)x->dtype, g->k + 2, d.y)))
        e = ml_cuda_pool_fwd(x->dtype, &d, ml_tensor_data(xc), ml_tensor_data(y), x->storage->device.index);
    if (!e && ml_needs_grad(1, &x)) {
        ml_node *node;
        if (!(e = ml_detach(&ys, y)) && !(e = ml_record(op, bw_pool_cuda, 1, &x, y, &node)) && node) {
            cuda_pool_np np = {d};
            _Static_assert(sizeof(cuda_pool_np) <= ML_NODE_PARAM_BYTES, "pool params fit the node");
            memcpy(node->params, &np, sizeof np);
            if (ml_node_save(node, xc) < 0 || ml_node_save(node, ys) < 0) e = ML_ERR_INTERNAL;
        }
    }
    ml_tensor_release(xc);
    ml_tensor_release(ys);
    if (e) { ml_tensor_release(y); return e; }
    *out = y;
    return ML_OK;
}

/* ------------------------------------------------------------ entry points */
static ml_err pool_check_input(const char *op, ml_tensor *x, int k) {
    ml_tensor *ts[1] = {x};
    static const char *const names[1] = {"input"};
    ml_err e = mld_check_float_on(op, 1, ts, names, true);
    if (e) return e;
    if (x->ndim != k + 2 && x->ndim != k + 1)
        return ml_seterr(ML_ERR_SHAPE, "%s: input %s must have %d dimensions [N, C, %s] (or %d unbatched)", op,
                         ml_shape_str(x->ndim, x->shape), k + 2, k == 1 ? "L" : k == 2 ? "H, W" : "D, H, W", k + 1);
    for (int i = x->ndim - k; i < x->ndim; i++)
        if (x->shape[i] < 1)
            return ml_seterr(ML_ERR_SHAPE, "%s: input %s has an empty spatial dimension", op,
                             ml_shape_str(x->ndim, x->shape));
    return ML_OK;
}

/* unbatched input: run on x.unsqueeze(0), squeeze the result */
typedef ml_err (*pool_fn)(ml_tensor **out, ml_tensor *x, const void *arg);

static ml_err with_batch(ml_tensor **out, ml_tensor *x, pool_fn fn, const void *arg) {
    ml_tensor *xb, *yb;
    ml_err e = ml_unsqueeze(&xb, x, 0);
    if (e) return e;
    e = fn(&yb, xb, arg);
    ml_tensor_release(xb);
    if (e) return e;
    e = ml_squeeze(out, yb, 0);
    ml_tensor_release(yb);
    return e;
}

static ml_err pool_common(ml_tensor **out, ml_tensor *x, const ml_pool_params *p, int alg);

static ml_err max_fn(ml_tensor **out, ml_tensor *x, const void *arg) { return pool_common(out, x, arg, PA_MAX); }
static ml_err avg_fn(ml_tensor **out, ml_tensor *x, const void *arg) { return pool_common(out, x, arg, PA_AVG_EXCL); }

static ml_err pool_common(ml_tensor **out, ml_tensor *x, const ml_pool_params *p, int alg) {
    *out = NULL;
    const char *base = alg == PA_MAX ? "max_pool" : "avg_pool";
    if (!p) return ml_seterr(ML_ERR_ARG, "%s: parameters are NULL", base);
    if (p->k < 1 || p->k > 3) return ml_seterr(ML_ERR_ARG, "%s: spatial rank k must be 1, 2 or 3, got %d", base, p->k);
    const char *op = mld_opname(base, p->k);
    ml_err e = pool_check_input(op, x, p->k);
    if (e) return e;
    if (x->ndim == p->k + 1) return with_batch(out, x, alg == PA_MAX ? max_fn : avg_fn, p);
    pgeo g;
    memset(&g, 0, sizeof g);
    g.k = p->k;
    g.alg = alg == PA_MAX ? PA_MAX : p->count_include_pad ? PA_AVG_INCL : PA_AVG_EXCL;
    g.N = x->shape[0];
    g.C = x->shape[1];
    for (int j = 0; j < 3; j++) g.I[j] = g.O[j] = g.K[j] = g.s[j] = g.d[j] = 1;
    bool bad = false;
    for (int i = 0; i < p->k; i++) {
        int j = 3 - p->k + i;
        if (p->kernel[i] < 1 || p->stride[i] < 1 || p->padding[i] < 0 || p->dilation[i] < 1)
            return ml_seterr(ML_ERR_ARG,
                             "%s: invalid parameters in dim %d: kernel %lld (>= 1), stride %lld (>= 1), padding %lld "
                             "(>= 0), dilation %lld (>= 1)",
                             op, i, (long long)p->kernel[i], (long long)p->stride[i], (long long)p->padding[i],
                             (long long)p->dilation[i]);
        if (p->padding[i] > p->kernel[i] / 2)
            return ml_seterr(ML_ERR_ARG, "%s: padding %lld in dim %d should be at most half of the kernel size %lld",
                             op, (long long)p->padding[i], i, (long long)p->kernel[i]);
        g.I[j] = x->shape[2 + i];
        g.K[j] = p->kernel[i];
        g.s[j] = p->stride[i];
        g.p[j] = p->padding[i];
        g.d[j] = p->dilation[i];
        g.O[j] = mld_pool_out_size(g.I[j], g.K[j], g.s[j], g.p[j], g.d[j], p->ceil_mode);
        int64_t exact = (g.O[j] - 1) * g.s[j] + (g.K[j] - 1) * g.d[j] + 1 - g.I[j] - g.p[j];
        g.pr[j] = exact > g.p[j] ? exact : g.p[j];
        bad |= g.O[j] < 1;
    }
    if (bad) {
        int64_t os[3];
        for (int i = 0; i < p->k; i++) os[i] = g.O[3 - p->k + i];
        return ml_seterr(ML_ERR_SHAPE,
                         "%s: output size %s is too small for input %s (kernel %s, stride %s, padding %s, dilation %s)",
                         op, ml_shape_str(p->k, os), ml_shape_str(x->ndim, x->shape), ml_shape_str(p->k, p->kernel),
                         ml_shape_str(p->k, p->stride), ml_shape_str(p->k, p->padding), ml_shape_str(p->k, p->dilation));
    }
    if (ml_tensor_is_cuda(x)) return cuda_pool(out, x, &g, op);
    return pool_run(out, x, &g);
}

ml_err ml_max_pool(ml_tensor **out, ml_tensor *x, const ml_pool_params *p) { return pool_common(out, x, p, PA_MAX); }
ml_err ml_avg_pool(ml_tensor **out, ml_tensor *x, const ml_pool_params *p) { return pool_common(out, x, p, PA_AVG_EXCL); }

typedef struct {
    int k;
    const int64_t *size;
} adapt_arg;

static ml_err adapt_fn(ml_tensor **out, ml_tensor *x, const void *arg) {
    const adapt_arg *a = arg;
    return ml_adaptive_avg_pool(out, x, a->k, a->size);
}

ml_err ml_adaptive_avg_pool(ml_tensor **out, ml_tensor *x, int k, const int64_t *out_size) {
    *out = NULL;
    if (k < 1 || k > 3) return ml_seterr(ML_ERR_ARG, "adaptive_avg_pool: spatial rank k must be 1, 2 or 3, got %d", k);
    const char *op = mld_opname("adaptive_avg_pool", k);
    if (!out_size) return ml_seterr(ML_ERR_ARG, "%s: output size is NULL", op);
    ml_err e = pool_check_input(op, x, k);
    if (e) return e;
    for (int i = 0; i < k; i++)
        if (out_size[i] < 1)
            return ml_seterr(ML_ERR_ARG, "%s: output size %s must be positive (input %s)", op, ml_shape_str(k, out_size),
                             ml_shape_str(x->ndim, x->shape));
    if (x->ndim == k + 1) {
        adapt_arg a = {k, out_size};
        return with_batch(out, x, adapt_fn, &a);
    }
    pgeo g;
    memset(&g, 0, sizeof g);
    g.k = k;
    g.alg = PA_ADAPTIVE;
    g.N = x->shape[0];
    g.C = x->shape[1];
    for (int j = 0; j < 3; j++) g.I[j] = g.O[j] = g.K[j] = g.s[j] = g.d[j] = 1;
    for (int i = 0; i < k; i++) {
        int j = 3 - k + i;
        g.I[j] = x->shape[2 + i];
        g.O[j] = out_size[i];
        /* largest window (for work estimates) */
        g.K[j] = (g.I[j] + g.O[j] - 1) / g.O[j] + 1;
    }
    if (ml_tensor_is_cuda(x)) { /* on a device: the windows must tile the input (an average pooling) */
        for (int i = 0; i < k; i++) {
            int j = 3 - k + i;
            if (g.I[j] % g.O[j])
                return ml_seterr(ML_ERR_UNSUPPORTED, "%s: output size %s does not divide input %s; on %s only evenly "
                                 "tiling sizes are supported so far (move the tensor with :cpu())", op,
                                 ml_shape_str(k, out_size), ml_shape_str(x->ndim, x->shape),
                                 ml_device_str(x->storage->device));
            g.K[j] = g.s[j] = g.I[j] / g.O[j];
        }
        g.alg = PA_AVG_EXCL;
        return cuda_pool(out, x, &g, op);
    }
    return pool_run(out, x, &g);
}
