/* max_pool / avg_pool / adaptive_avg_pool for 1-3 spatial dims with PyTorch's output-size rules.
 *
 * f32: oneDNN pooling_v2 primitives (plain layouts, cached; max pooling keeps its workspace in the
 *      autograd node for backward). Configurations where oneDNN's semantics differ from PyTorch's
 *      (avg with count_include_pad whose ceil-mode window passes the right padding, adaptive pooling
 *      with uneven windows) use the reference loops instead.
 * f64: reference OpenMP loops over (n, c) planes. */
#include "ml_dnnl_priv.h"

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

static inline double ld(const void *p, bool f64, int64_t i) {
    return f64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}
static inline void st(void *p, bool f64, int64_t i, double v) {
    if (f64) ((double *)p)[i] = v;
    else ((float *)p)[i] = (float)v;
}

/* ------------------------------------------------------------ reference */
/* adaptive window [start, end) of output o over input I */
static inline void adapt_range(int64_t o, int64_t I, int64_t O, int64_t *a, int64_t *b) {
    *a = (o * I) / O;
    *b = ((o + 1) * I + O - 1) / O;
}

/* avg divisor along one dim for the window starting at `start` */
static inline int64_t avg_count(const pgeo *g, int j, int64_t start, bool include_pad) {
    int64_t c = 0;
    for (int64_t t = 0; t < g->K[j]; t++) {
        int64_t pos = start + t * g->d[j];
        if (include_pad ? (pos < g->I[j] + g->p[j]) : (pos >= 0 && pos < g->I[j])) c++;
    }
    return c;
}

/* forward; ind (int64 per output, plane-relative input index) for max when non-NULL */
static void ref_pool_fwd(const pgeo *g, bool f64, const void *x, void *y, int64_t *ind) {
    int64_t planes = g->N * g->C, Isz = prod3(g->I), Osz = prod3(g->O);
#pragma omp parallel for schedule(static) if (planes > 1 && planes * Osz * prod3(g->K) > 32768)
    for (int64_t pl = 0; pl < planes; pl++) {
        int64_t xb = pl * Isz, yb = pl * Osz;
        for (int64_t o0 = 0; o0 < g->O[0]; o0++)
            for (int64_t o1 = 0; o1 < g->O[1]; o1++)
                for (int64_t o2 = 0; o2 < g->O[2]; o2++) {
                    int64_t oi = (o0 * g->O[1] + o1) * g->O[2] + o2;
                    int64_t lo[3], hi[3], st_[3], dl[3], oo[3] = {o0, o1, o2};
                    for (int j = 0; j < 3; j++) {
                        if (g->alg == PA_ADAPTIVE) {
                            adapt_range(oo[j], g->I[j], g->O[j], &lo[j], &hi[j]);
                            st_[j] = lo[j];
                            dl[j] = 1;
                        } else {
                            st_[j] = oo[j] * g->s[j] - g->p[j];
                            dl[j] = g->d[j];
                            lo[j] = 0;
                            hi[j] = g->K[j];
                        }
                    }
                    double acc = g->alg == PA_MAX ? -INFINITY : 0.0;
                    int64_t best = -1;
                    for (int64_t a = lo[0]; a < hi[0]; a++) {
                        int64_t i0 = g->alg == PA_ADAPTIVE ? a : st_[0] + a * dl[0];
                        if (i0 < 0 || i0 >= g->I[0]) continue;
                        for (int64_t b = lo[1]; b < hi[1]; b++) {
                            int64_t i1 = g->alg == PA_ADAPTIVE ? b : st_[1] + b * dl[1];
                            if (i1 < 0 || i1 >= g->I[1]) continue;
                            for (int64_t c = lo[2]; c < hi[2]; c++) {
                                int64_t i2 = g->alg == PA_ADAPTIVE ? c : st_[2] + c * dl[2];
                                if (i2 < 0 || i2 >= g->I[2]) continue;
                                int64_t ii = (i0 * g->I[1] + i1) * g->I[2] + i2;
                                double v = ld(x, f64, xb + ii);
                                if (g->alg == PA_MAX) {
                                    if (best < 0) best = ii;
                                    if (v > acc || isnan(v)) { acc = v; best = ii; }
                                } else {
                                    acc += v;
                                }
                            }
                        }
                    }
                    if (g->alg == PA_MAX) {
                        if (ind) ind[yb + oi] = best;
                    } else {
                        int64_t div = 1;
                        for (int j = 0; j < 3; j++) {
                            if (g->alg == PA_ADAPTIVE) div *= hi[j] - lo[j];
                            else div *= avg_count(g, j, st_[j], g->alg == PA_AVG_INCL);
                        }
                        acc = div > 0 ? acc / (double)div : 0.0;
                    }
                    st(y, f64, yb + oi, acc);
                }
    }
}

/* backward: gx (zeroed here) from gy; max uses ind */
static void ref_pool_bwd(const pgeo *g, bool f64, const void *gy, void *gx, const int64_t *ind) {
    int64_t planes = g->N * g->C, Isz = prod3(g->I), Osz = prod3(g->O);
#pragma omp parallel for schedule(static) if (planes > 1 && planes * Osz * prod3(g->K) > 32768)
    for (int64_t pl = 0; pl < planes; pl++) {
        int64_t xb = pl * Isz, yb = pl * Osz;
        double *acc = NULL;
        /* accumulate in double for f32 to keep summation order-independent of rounding */
        if (!f64) acc = calloc((size_t)(Isz ? Isz : 1), sizeof(double));
        double *gxd = f64 ? (double *)gx + xb : acc;
        if (f64) memset(gxd, 0, sizeof(double) * (size_t)Isz);
        if (!gxd) { /* allocation failed: accumulate in place in float */
            for (int64_t i = 0; i < Isz; i++) ((float *)gx)[xb + i] = 0.0f;
        }
        for (int64_t o0 = 0; o0 < g->O[0]; o0++)
            for (int64_t o1 = 0; o1 < g->O[1]; o1++)
                for (int64_t o2 = 0; o2 < g->O[2]; o2++) {
                    int64_t oi = (o0 * g->O[1] + o1) * g->O[2] + o2;
                    double gv = ld(gy, f64, yb + oi);
                    if (g->alg == PA_MAX) {
                        int64_t ii = ind[yb + oi];
                        if (ii < 0) continue;
                        if (gxd) gxd[ii] += gv;
                        else ((float *)gx)[xb + ii] += (float)gv;
                        continue;
                    }
                    int64_t lo[3], hi[3], st_[3], dl[3], oo[3] = {o0, o1, o2}, div = 1;
                    for (int j = 0; j < 3; j++) {
                        if (g->alg == PA_ADAPTIVE) {
                            adapt_range(oo[j], g->I[j], g->O[j], &lo[j], &hi[j]);
                            st_[j] = lo[j];
                            dl[j] = 1;
                            div *= hi[j] - lo[j];
                        } else {
                            st_[j] = oo[j] * g->s[j] - g->p[j];
                            dl[j] = g->d[j];
                            lo[j] = 0;
                            hi[j] = g->K[j];
                            div *= avg_count(g, j, st_[j], g->alg == PA_AVG_INCL);
                        }
                    }
                    if (div <= 0) continue;
                    double v = gv / (double)div;
                    for (int64_t a = lo[0]; a < hi[0]; a++) {
                        int64_t i0 = g->alg == PA_ADAPTIVE ? a : st_[0] + a * dl[0];
                        if (i0 < 0 || i0 >= g->I[0]) continue;
                        for (int64_t b = lo[1]; b < hi[1]; b++) {
                            int64_t i1 = g->alg == PA_ADAPTIVE ? b : st_[1] + b * dl[1];
                            if (i1 < 0 || i1 >= g->I[1]) continue;
                            for (int64_t c = lo[2]; c < hi[2]; c++) {
                                int64_t i2 = g->alg == PA_ADAPTIVE ? c : st_[2] + c * dl[2];
                                if (i2 < 0 || i2 >= g->I[2]) continue;
                                int64_t ii = (i0 * g->I[1] + i1) * g->I[2] + i2;
                                if (gxd) gxd[ii] += v;
                                else ((float *)gx)[xb + ii] += (float)v;
                            }
                        }
                    }
                }
        if (acc) {
            for (int64_t i = 0; i < Isz; i++) ((float *)gx)[xb + i] = (float)acc[i];
            free(acc);
        }
    }
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

/* forward; *ws receives the workspace (max pooling with training) */
static ml_err dpool_fwd(const pgeo *g, bool training, const float *x, float *y, mld_buf *ws) {
    const char *op = pname(g->alg, g->k);
    mld_entry *e;
    int prop = training && g->alg == PA_MAX ? PP_FWD_TRAIN : PP_FWD_INFER;
    ml_err err = dpool_get(&e, g, prop);
    if (err) return err;
    if (e->unsupported) { mld_put(e); return ML_ERR_UNSUPPORTED; }
    mld_args A = {0};
    if (e->ws_size && (err = mld_buf_alloc(ws, e->ws_size, op))) goto done;
    if ((err = mld_arg(&A, op, DNNL_ARG_SRC, &e->md[0], (void *)x)) || (err = mld_arg(&A, op, DNNL_ARG_DST, &e->md[1], y)) ||
        (e->ws_size && (err = mld_arg(&A, op, DNNL_ARG_WORKSPACE, &e->md[2], ws->p)))) {
        mld_args_free(&A);
        goto done;
    }
    err = mld_exec(op, e->prim, &A);
done:
    if (err) mld_buf_free(ws);
    mld_put(e);
    return err;
}

static ml_err dpool_bwd(const pgeo *g, const float *gy, float *gx, void *ws) {
    const char *op = pname(g->alg, g->k);
    mld_entry *e;
    ml_err err = dpool_get(&e, g, PP_BWD);
    if (err) return err;
    if (e->unsupported) { mld_put(e); return ML_ERR_UNSUPPORTED; }
    mld_args A = {0};
    if ((err = mld_arg(&A, op, DNNL_ARG_DIFF_DST, &e->md[1], (void *)gy)) ||
        (err = mld_arg(&A, op, DNNL_ARG_DIFF_SRC, &e->md[0], gx)) ||
        (e->ws_size && ws && (err = mld_arg(&A, op, DNNL_ARG_WORKSPACE, &e->md[2], ws)))) {
        mld_args_free(&A);
        mld_put(e);
        return err;
    }
    if (e->ws_size && !ws) {
        mld_args_free(&A);
        mld_put(e);
        return ml_seterr(ML_ERR_INTERNAL, "%s: backward needs the forward workspace", op);
    }
    err = mld_exec(op, e->prim, &A);
    mld_put(e);
    return err;
}

/* ------------------------------------------------------------ autograd */
typedef struct {
    pgeo g;
    bool dnnl;     /* forward ran on oneDNN (backward does too) */
    int ind_slot;  /* reference max pooling: saved int64 indices */
} pool_np;

static void ws_free(void *p) {
    mld_buf *b = p;
    mld_buf_free(b);
    free(b);
}

static ml_err bw_pool(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    pool_np *np = (pool_np *)n->params;
    const pgeo *g = &np->g;
    ml_tensor *gy, *gx;
    ml_err e = mld_contig(&gy, gout[0]);
    if (e) return e;
    if ((e = ml_tensor_empty(&gx, (ml_dtype)gy->dtype, n->in_ndim[0], n->in_shape[0]))) {
        ml_tensor_release(gy);
        return e;
    }
    const int64_t *ind = NULL;
    if (np->ind_slot >= 0) {
        ml_tensor *it = ml_node_saved(n, np->ind_slot);
        if (!it) { e = ML_ERR_GRAD; goto done; }
        ind = ml_tensor_data(it);
    }
    if (np->dnnl) {
        mld_buf *ws = n->ctx;
        e = dpool_bwd(g, ml_tensor_data(gy), ml_tensor_data(gx), ws ? ws->p : NULL);
    } else if (g->alg == PA_MAX && !ind) {
        e = ml_seterr(ML_ERR_INTERNAL, "%s backward: indices were not saved", pname(g->alg, g->k));
    } else {
        ref_pool_bwd(g, gy->dtype == ML_F64, ml_tensor_data(gy), ml_tensor_data(gx), ind);
    }
done:
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
    mld_buf *ws = NULL;
    bool used_dnnl = false;
    int64_t ys[5];
    ys[0] = g->N;
    ys[1] = g->C;
    for (int i = 0; i < g->k; i++) ys[2 + i] = g->O[3 - g->k + i];
    ml_err e;
    if ((e = mld_contig(&xc, x)) || (e = ml_tensor_empty(&y, dt, g->k + 2, ys))) goto done;
    if (dt == ML_F32 && dnnl_pool_ok(g)) {
        if (need && g->alg == PA_MAX && !(ws = calloc(1, sizeof *ws))) {
            e = ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
            goto done;
        }
        mld_buf tmp = {0};
        e = dpool_fwd(g, need, ml_tensor_data(xc), ml_tensor_data(y), ws ? ws : &tmp);
        mld_buf_free(&tmp);
        if (!e) used_dnnl = true;
        else if (e != ML_ERR_UNSUPPORTED) goto done;
        e = ML_OK;
    }
    if (!used_dnnl) {
        if (g->alg == PA_MAX && need) {
            if ((e = ml_tensor_empty(&ind, ML_I64, g->k + 2, ys))) goto done;
        }
        ref_pool_fwd(g, dt == ML_F64, ml_tensor_data(xc), ml_tensor_data(y), ind ? ml_tensor_data(ind) : NULL);
    }
    {
        ml_node *node;
        if ((e = ml_record(op, bw_pool, 1, &x, y, &node))) goto done;
        if (node) {
            pool_np np;
            memset(&np, 0, sizeof np);
            np.g = *g;
            np.dnnl = used_dnnl;
            np.ind_slot = -1;
            if (ind && (np.ind_slot = ml_node_save(node, ind)) < 0) { e = ML_ERR_INTERNAL; goto done; }
            if (used_dnnl && ws && ws->p) {
                node->ctx = ws;
                node->ctx_free = ws_free;
                ws = NULL;
            }
            _Static_assert(sizeof(pool_np) <= ML_NODE_PARAM_BYTES, "pool params fit the node");
            memcpy(node->params, &np, sizeof np);
        }
    }
done:
    if (ws) ws_free(ws);
    ml_tensor_release(xc);
    ml_tensor_release(ind);
    if (e) { ml_tensor_release(y); return e; }
    *out = y;
    return ML_OK;
}

/* ------------------------------------------------------------ entry points */
static ml_err pool_check_input(const char *op, ml_tensor *x, int k) {
    ml_tensor *ts[1] = {x};
    static const char *const names[1] = {"input"};
    ml_err e = mld_check_float(op, 1, ts, names);
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
    return pool_run(out, x, &g);
}
