/* Indexing: index_select, masked_select, masked_fill, gather, scatter_add_, cat, stack, one_hot.
 * Index tensors are int32 or int64; every index is range-checked before any write, and a bad one
 * is an ML_ERR_ARG naming the op, the value and the size. */
#include "ml_tensor.h"
#include "ml_iter.h"
#include "ml_ew_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


/* copy one element of es bytes */
static inline void copy_elem(char *dst, const char *src, size_t es) {
    switch (es) {
    case 1: *(uint8_t *)dst = *(const uint8_t *)src; break;
    case 2: memcpy(dst, src, 2); break;
    case 4: memcpy(dst, src, 4); break;
    default: memcpy(dst, src, 8); break;
    }
}

static inline int64_t load_index(const char *base, ml_dtype dt, int64_t i) {
    return dt == ML_I32 ? (int64_t)((const int32_t *)base)[i] : ((const int64_t *)base)[i];
}

static ml_err check_index_dtype(const char *op, const ml_tensor *idx) {
    if (idx->dtype != ML_I32 && idx->dtype != ML_I64)
        return ml_seterr(ML_ERR_DTYPE, "%s: index tensor must be int32 or int64, got %s (shape %s)", op,
                         ml_dtype_name((ml_dtype)idx->dtype), ml_shape_str(idx->ndim, idx->shape));
    return ML_OK;
}

/* every value of idx must lie in [0, size) */
static ml_err check_index_range(const char *op, ml_tensor *idx, int dim, int64_t size) {
    ml_err e;
    if ((e = ml_tensor_plain(idx)) || (e = check_index_dtype(op, idx))) return e;
    int64_t n = ml_tensor_numel(idx);
    if (n == 0) return ML_OK;
    ml_iter it;
    ml_iter1_init(&it, idx->ndim, idx->shape, idx->stride, idx->offset);
    const char *b = (const char *)idx->storage->data;
    ml_dtype dt = (ml_dtype)idx->dtype;
    int bad = 0;
    int64_t badv = 0;
    ML_ITER1_FOR_IDX(it, n, i, {
        int64_t v_ = load_index(b, dt, i);
        if (v_ < 0 || v_ >= size) {
            if (!__atomic_exchange_n(&bad, 1, __ATOMIC_RELAXED)) badv = v_;
        }
    });
    if (bad)
        return ml_seterr(ML_ERR_ARG, "%s: index %lld is out of range for dim %d of size %lld", op, (long long)badv, dim,
                         (long long)size);
    return ML_OK;
}

static bool shape_eq(int na, const int64_t *sa, int nb, const int64_t *sb) {
    if (na != nb) return false;
    for (int i = 0; i < na; i++) if (sa[i] != sb[i]) return false;
    return true;
}

/* ============================================================ scatter_add_ */
/* t[..., index[i], ...] += src[i] over the positions of index (shape of index). Caller has checked
 * shapes, dtypes (src has t's dtype) and the index range. Writes are split over an axis other than
 * `dim`: positions with different coordinates there never hit the same element of t. */
static void scatter_add_kernel(ml_tensor *t, int dim, const ml_tensor *idx, const ml_tensor *src) {
    int nd = idx->ndim;
    int64_t n = ml_tensor_numel(idx);
    if (n == 0) return;
    int split = -1;
    for (int d = 0; d < nd; d++)
        if (d != dim && idx->shape[d] > 1) { split = d; break; }
    int64_t nsplit = split >= 0 ? idx->shape[split] : 1;
    int nt = (n < 2 * ML_ITER_GRAIN || nsplit < 2) ? 1 : ml_num_threads();
    if (nt > nsplit) nt = (int)nsplit;
    char *tb = (char *)t->storage->data;
    const char *ib = (const char *)idx->storage->data, *sb = (const char *)src->storage->data;
    ml_dtype dt = (ml_dtype)t->dtype, idt = (ml_dtype)idx->dtype;
    ML_PAR_FOR(int, th, nt, {
        int64_t lo = nsplit * th / nt, hi = nsplit * (th + 1) / nt;
        int64_t pos[ML_MAX_DIMS] = {0};
        if (split >= 0) pos[split] = lo;
        if (lo >= hi) continue;
        for (;;) {
            int64_t io = idx->offset, so = src->offset, to = t->offset;
            for (int d = 0; d < nd; d++) {
                io += pos[d] * idx->stride[d];
                so += pos[d] * src->stride[d];
                if (d != dim) to += pos[d] * t->stride[d];
            }
            to += load_index(ib, idt, io) * t->stride[dim];
            if (dt == ML_F32) ((float *)tb)[to] += ((const float *)sb)[so];
            else if (dt == ML_F64) ((double *)tb)[to] += ((const double *)sb)[so];
            else if (dt == ML_I64) ((int64_t *)tb)[to] = (int64_t)((uint64_t)((int64_t *)tb)[to] + (uint64_t)((const int64_t *)sb)[so]);
            else ml_store_elem(tb, dt, to, ml_load_elem(tb, dt, to) + ml_load_elem(sb, dt, so));
            /* next position: the split axis is the outermost counter */
            int d = nd - 1;
            for (; d >= 0; d--) {
                if (d == split) continue;
                if (++pos[d] < idx->shape[d]) break;
                pos[d] = 0;
            }
            if (d < 0) {
                if (split < 0 || ++pos[split] >= hi) break;
            }
        }
    });
}

ml_err ml_scatter_add_(ml_tensor *t, int dim, ml_tensor *index, ml_tensor *src) {
    ml_err e;
    if ((e = ml_check_inplace("scatter_add_", t))) return e;
    if (ml_inplace_tracked(t, src))
        return ml_seterr(ML_ERR_GRAD,
                         "scatter_add_: autograd does not record this in-place op and the target (shape %s) is part of "
                         "a graph or src (shape %s) requires grad; run it under no_grad",
                         ml_shape_str(t->ndim, t->shape), ml_shape_str(src->ndim, src->shape));
    if ((e = ml_tensor_plain(t)) || (e = ml_tensor_plain(index)) || (e = ml_tensor_plain(src))) return e;
    if ((e = check_index_dtype("scatter_add_", index))) return e;
    int d = ml_wrap_dim("scatter_add_", dim, t->ndim);
    if (d < 0) return ML_ERR_DIM;
    if (t->ndim == 0) return ml_seterr(ML_ERR_DIM, "scatter_add_: cannot scatter into a 0-d tensor");
    if (index->ndim != t->ndim || src->ndim != t->ndim)
        return ml_seterr(ML_ERR_SHAPE, "scatter_add_: index %s, src %s and self %s must have the same number of dims",
                         ml_shape_str(index->ndim, index->shape), ml_shape_str(src->ndim, src->shape),
                         ml_shape_str(t->ndim, t->shape));
    for (int i = 0; i < t->ndim; i++)
        if (index->shape[i] > src->shape[i] || (i != d && index->shape[i] > t->shape[i]))
            return ml_seterr(ML_ERR_SHAPE,
                             "scatter_add_: index of shape %s is larger than src %s or self %s in dim %d", 
                             ml_shape_str(index->ndim, index->shape), ml_shape_str(src->ndim, src->shape),
                             ml_shape_str(t->ndim, t->shape), i);
    for (int i = 0; i < t->ndim; i++)
        if (t->stride[i] == 0 && t->shape[i] > 1)
            return ml_seterr(ML_ERR_ARG, "scatter_add_: the target (shape %s) is an expanded view; clone it first",
                             ml_shape_str(t->ndim, t->shape));
    if ((e = check_index_range("scatter_add_", index, d, t->shape[d]))) return e;
    ml_tensor *sc = src;
    bool prev = ml_set_grad_enabled(false);
    if (src->dtype != t->dtype) e = ml_to_dtype(&sc, src, (ml_dtype)t->dtype);
    else if (src->storage == t->storage) e = ml_clone(&sc, src);
    else ml_tensor_retain(sc);
    ml_set_grad_enabled(prev);
    if (e) return e;
    scatter_add_kernel(t, d, index, sc);
    ml_tensor_release(sc);
    t->storage->version++;
    return ML_OK;
}

/* =========================================================== index_select */
typedef struct {
    int dim;
} dim_params;

static ml_err bw_index_select(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const dim_params *p = (const dim_params *)n->params;
    ml_tensor *idx = ml_node_saved(n, 0), *g = gout[0], *iv = NULL, *ie = NULL, *z = NULL;
    if (!idx) return ML_ERR_GRAD;
    int nd = n->in_ndim[0];
    int64_t vs[ML_MAX_DIMS];
    for (int i = 0; i < nd; i++) vs[i] = i == p->dim ? ml_tensor_numel(idx) : 1;
    ml_err e = ml_reshape(&iv, idx, nd, vs);
    if (!e) e = ml_expand(&ie, iv, g->ndim, g->shape);
    if (!e) e = ml_zeros(&z, (ml_dtype)g->dtype, nd, n->in_shape[0]);
    if (!e) e = ml_scatter_add_(z, p->dim, ie, g);
    ml_tensor_release(iv);
    ml_tensor_release(ie);
    if (e) { ml_tensor_release(z); return e; }
    return ml_grad_finish(&gin[0], z, n, 0);
}

ml_err ml_index_select(ml_tensor **out, ml_tensor *t, int dim, ml_tensor *index) {
    *out = NULL;
    ml_err e;
    if ((e = ml_tensor_plain(t)) || (e = ml_tensor_plain(index))) return e;
    if ((e = check_index_dtype("index_select", index))) return e;
    if (t->ndim == 0) return ml_seterr(ML_ERR_DIM, "index_select: cannot index a 0-d tensor");
    int d = ml_wrap_dim("index_select", dim, t->ndim);
    if (d < 0) return ML_ERR_DIM;
    if (index->ndim > 1)
        return ml_seterr(ML_ERR_SHAPE, "index_select: index must be 1-D, got shape %s",
                         ml_shape_str(index->ndim, index->shape));
    if ((e = check_index_range("index_select", index, d, t->shape[d]))) return e;
    ml_tensor *tc = NULL, *ic = NULL, *res = NULL;
    bool prev = ml_set_grad_enabled(false);
    e = ml_contiguous(&tc, t);
    if (!e) e = ml_to_dtype(&ic, index, ML_I64);
    if (!e && !ml_tensor_is_contiguous(ic)) {
        ml_tensor *c;
        e = ml_contiguous(&c, ic);
        ml_tensor_release(ic);
        ic = c;
    }
    ml_set_grad_enabled(prev);
    if (e) goto done;
    int64_t nidx = ml_tensor_numel(index), shape[ML_MAX_DIMS], outer = 1, inner = 1, R = t->shape[d];
    for (int i = 0; i < t->ndim; i++) {
        shape[i] = i == d ? nidx : t->shape[i];
        if (i < d) outer *= t->shape[i];
        if (i > d) inner *= t->shape[i];
    }
    if ((e = ml_tensor_empty(&res, (ml_dtype)t->dtype, t->ndim, shape))) goto done;
    {
        size_t es = ml_dtype_size((ml_dtype)t->dtype), row = (size_t)inner * es;
        const char *src = ml_tensor_data(tc);
        char *dst = ml_tensor_data(res);
        const int64_t *ix = ml_tensor_data(ic);
        int64_t pairs = outer * nidx;
        int nt = pairs * inner < 2 * ML_ITER_GRAIN ? 1 : ml_num_threads();
        ML_PAR_FOR(int64_t, q, pairs, {
            int64_t o = q / nidx, k = q - o * nidx;
            memcpy(dst + (size_t)q * row, src + (size_t)(o * R + ix[k]) * row, row);
        });
    }
    if (ml_dtype_is_float((ml_dtype)t->dtype) && ml_needs_grad(1, &t)) {
        ml_node *n;
        if ((e = ml_record("index_select", bw_index_select, 1, &t, res, &n))) goto done;
        dim_params p = {.dim = d};
        memcpy(n->params, &p, sizeof p);
        if (ml_node_save(n, ic) < 0) { e = ML_ERR_INTERNAL; goto done; }
    }
    *out = res;
    res = NULL;
done:
    ml_tensor_release(tc);
    ml_tensor_release(ic);
    ml_tensor_release(res);
    return e;
}

/* ========================================================== masked_select */
/* Walk the broadcast shape in row-major order, split over threads by linear range.
 * mode 0: count true mask elements per chunk; 1: gather src -> dst (1-D) at chunk base;
 * 2: scatter src (1-D) -> dst (strided) at chunk base. */
typedef struct {
    ml_iter it;        /* operand 0: the strided tensor, operand 1: the mask */
    const char *mask;
    char *strided;     /* strided tensor data */
    char *flat;        /* 1-D tensor data */
    size_t es;
} mwalk;

static int64_t masked_chunk(const mwalk *w, int64_t lo, int64_t hi, int mode, int64_t base) {
    if (lo >= hi) return 0;
    const ml_iter *it = &w->it;
    int64_t idx[ML_MAX_DIMS], off[ML_ITER_MAX_OPS];
    ml_iter_seek(it, lo, idx, off);
    int last = it->ndim - 1;
    int64_t inner = last >= 0 ? it->shape[last] : 1;
    int64_t s0 = last >= 0 ? it->s[0][last] : 0, s1 = last >= 0 ? it->s[1][last] : 0;
    int64_t pos = lo, cnt = 0;
    size_t es = w->es;
    while (pos < hi) {
        int64_t run = inner - (last >= 0 ? idx[last] : 0);
        if (run > hi - pos) run = hi - pos;
        for (int64_t j = 0; j < run; j++) {
            if (!w->mask[off[1] + j * s1]) continue;
            if (mode == 1) copy_elem(w->flat + (size_t)(base + cnt) * es, w->strided + (size_t)(off[0] + j * s0) * es, es);
            else if (mode == 2) copy_elem(w->strided + (size_t)(off[0] + j * s0) * es, w->flat + (size_t)(base + cnt) * es, es);
            cnt++;
        }
        pos += run;
        ml_iter_advance(it, idx, run, off);
    }
    return cnt;
}

#define MW_MAX_THREADS 256

/* returns total count; mode 1/2 need the counts from a mode-0 pass (done internally) */
static int64_t masked_walk(const mwalk *w, int64_t n, int mode) {
    int nt = n < 2 * ML_ITER_GRAIN ? 1 : ml_num_threads();
    if (nt > MW_MAX_THREADS) nt = MW_MAX_THREADS;
    int64_t cnt[MW_MAX_THREADS + 1];
    ML_PAR_FOR(int, t, nt, cnt[t] = masked_chunk(w, n * t / nt, n * (t + 1) / nt, 0, 0););
    int64_t base[MW_MAX_THREADS + 1];
    base[0] = 0;
    for (int t = 0; t < nt; t++) base[t + 1] = base[t] + cnt[t];
    if (mode != 0) {
        ML_PAR_FOR(int, t, nt, masked_chunk(w, n * t / nt, n * (t + 1) / nt, mode, base[t]););
    }
    return base[nt];
}

typedef struct {
    int nd;
    int64_t shape[ML_MAX_DIMS];
} bshape_params;

static ml_err bw_masked_select(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const bshape_params *p = (const bshape_params *)n->params;
    ml_tensor *mask = ml_node_saved(n, 0), *g = gout[0], *z = NULL, *gc = NULL;
    if (!mask) return ML_ERR_GRAD;
    ml_err e = ml_zeros(&z, (ml_dtype)g->dtype, p->nd, p->shape);
    if (!e) e = ml_contiguous(&gc, g);
    if (e) { ml_tensor_release(z); return e; }
    mwalk w;
    int64_t ms[ML_MAX_DIMS];
    ml_broadcast_strides(mask, p->nd, p->shape, ms);
    ml_iter2_init(&w.it, p->nd, p->shape, z->stride, z->offset, ms, mask->offset);
    w.mask = (const char *)mask->storage->data;
    w.strided = (char *)z->storage->data;
    w.flat = ml_tensor_data(gc);
    w.es = ml_dtype_size((ml_dtype)g->dtype);
    masked_walk(&w, ml_tensor_numel(z), 2);
    ml_tensor_release(gc);
    return ml_grad_finish(&gin[0], z, n, 0);
}

static ml_err check_mask(const char *op, ml_tensor *mask) {
    if (mask->dtype != ML_BOOL && mask->dtype != ML_U8)
        return ml_seterr(ML_ERR_DTYPE, "%s: mask must be bool, got %s (shape %s)", op,
                         ml_dtype_name((ml_dtype)mask->dtype), ml_shape_str(mask->ndim, mask->shape));
    return ML_OK;
}

ml_err ml_masked_select(ml_tensor **out, ml_tensor *t, ml_tensor *mask) {
    *out = NULL;
    ml_err e;
    if ((e = ml_tensor_plain(t)) || (e = ml_tensor_plain(mask)) || (e = check_mask("masked_select", mask))) return e;
    int nd;
    int64_t shape[ML_MAX_DIMS];
    if ((e = ml_broadcast_shapes("masked_select", t->ndim, t->shape, mask->ndim, mask->shape, &nd, shape))) return e;
    mwalk w;
    int64_t ts[ML_MAX_DIMS], ms[ML_MAX_DIMS], n = 1;
    for (int i = 0; i < nd; i++) n *= shape[i];
    ml_broadcast_strides(t, nd, shape, ts);
    ml_broadcast_strides(mask, nd, shape, ms);
    ml_iter2_init(&w.it, nd, shape, ts, t->offset, ms, mask->offset);
    w.mask = (const char *)mask->storage->data;
    w.strided = (char *)t->storage->data;
    w.es = ml_dtype_size((ml_dtype)t->dtype);
    w.flat = NULL;
    int64_t cnt = masked_walk(&w, n, 0);
    ml_tensor *res;
    if ((e = ml_tensor_empty(&res, (ml_dtype)t->dtype, 1, &cnt))) return e;
    w.flat = ml_tensor_data(res);
    masked_walk(&w, n, 1);
    if (ml_dtype_is_float((ml_dtype)t->dtype) && ml_needs_grad(1, &t)) {
        ml_node *nd_;
        if ((e = ml_record("masked_select", bw_masked_select, 1, &t, res, &nd_))) { ml_tensor_release(res); return e; }
        bshape_params p = {.nd = nd};
        memcpy(p.shape, shape, sizeof shape);
        memcpy(nd_->params, &p, sizeof p);
        if (ml_node_save(nd_, mask) < 0) { ml_tensor_release(res); return ML_ERR_INTERNAL; }
    }
    *out = res;
    return ML_OK;
}

/* ============================================================ masked_fill */
#define MFILL_LOOP(T)                                                                               \
    do {                                                                                            \
        T v_;                                                                                       \
        memcpy(&v_, vbuf, sizeof v_);                                                               \
        ML_ITER_LOOP_(it, n, {                                                                      \
            T *o_ = (T *)ob + off_[0];                                                              \
            const uint8_t *m_ = (const uint8_t *)mb + off_[1];                                      \
            const T *s_ = (const T *)sb + off_[2];                                                  \
            if (st_[0] == 1 && st_[1] == 1 && st_[2] == 1) {                                        \
                for (int64_t j_ = 0; j_ < cnt_; j_++) o_[j_] = m_[j_] ? v_ : s_[j_];                \
            } else {                                                                                \
                for (int64_t j_ = 0; j_ < cnt_; j_++)                                               \
                    o_[j_ * st_[0]] = m_[j_ * st_[1]] ? v_ : s_[j_ * st_[2]];                       \
            }                                                                                       \
        });                                                                                         \
    } while (0)

static ml_err bw_masked_fill(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    ml_tensor *mask = ml_node_saved(n, 0), *r;
    if (!mask) return ML_ERR_GRAD;
    ml_err e = ml_masked_fill(&r, gout[0], mask, 0.0);
    if (e) return e;
    return ml_grad_finish(&gin[0], r, n, 0);
}

ml_err ml_masked_fill(ml_tensor **out, ml_tensor *t, ml_tensor *mask, double value) {
    *out = NULL;
    ml_err e;
    if ((e = ml_tensor_plain(t)) || (e = ml_tensor_plain(mask)) || (e = check_mask("masked_fill", mask))) return e;
    int nd;
    int64_t shape[ML_MAX_DIMS];
    if ((e = ml_broadcast_shapes("masked_fill", t->ndim, t->shape, mask->ndim, mask->shape, &nd, shape))) return e;
    ml_dtype dt = (ml_dtype)t->dtype;
    ml_tensor *res;
    if ((e = ml_tensor_empty(&res, dt, nd, shape))) return e;
    int64_t n = ml_tensor_numel(res);
    if (n > 0) {
        unsigned char vbuf[8] = {0};
        ml_store_elem(vbuf, dt, 0, value);
        int64_t ms[ML_MAX_DIMS], ts[ML_MAX_DIMS];
        ml_broadcast_strides(mask, nd, shape, ms);
        ml_broadcast_strides(t, nd, shape, ts);
        ml_iter it;
        ml_iter3_init(&it, nd, shape, res->stride, 0, ms, mask->offset, ts, t->offset);
        char *ob = (char *)res->storage->data;
        const char *mb = (const char *)mask->storage->data, *sb = (const char *)t->storage->data;
        switch (ml_dtype_size(dt)) {
        case 1: MFILL_LOOP(uint8_t); break;
        case 2: MFILL_LOOP(uint16_t); break;
        case 4: MFILL_LOOP(uint32_t); break;
        default: MFILL_LOOP(uint64_t); break;
        }
    }
    if (ml_dtype_is_float(dt) && ml_needs_grad(1, &t)) {
        ml_node *nd_;
        if ((e = ml_record("masked_fill", bw_masked_fill, 1, &t, res, &nd_))) { ml_tensor_release(res); return e; }
        if (ml_node_save(nd_, mask) < 0) { ml_tensor_release(res); return ML_ERR_INTERNAL; }
    }
    *out = res;
    return ML_OK;
}

/* ================================================================= gather */
static ml_err bw_gather(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const dim_params *p = (const dim_params *)n->params;
    ml_tensor *idx = ml_node_saved(n, 0), *z = NULL;
    if (!idx) return ML_ERR_GRAD;
    ml_err e = ml_zeros(&z, (ml_dtype)gout[0]->dtype, n->in_ndim[0], n->in_shape[0]);
    if (!e) e = ml_scatter_add_(z, p->dim, idx, gout[0]);
    if (e) { ml_tensor_release(z); return e; }
    return ml_grad_finish(&gin[0], z, n, 0);
}

#define GATHER_LOOP(T)                                                                              \
    ML_ITER3_FOR_IDX(it, n, io, ii, is, {                                                           \
        int64_t k_ = load_index(ib, idt, ii);                                                       \
        ((T *)ob)[io] = ((const T *)sb)[is + k_ * sdim];                                            \
    })

ml_err ml_gather(ml_tensor **out, ml_tensor *t, int dim, ml_tensor *index) {
    *out = NULL;
    ml_err e;
    if ((e = ml_tensor_plain(t)) || (e = ml_tensor_plain(index))) return e;
    if ((e = check_index_dtype("gather", index))) return e;
    if (t->ndim == 0) return ml_seterr(ML_ERR_DIM, "gather: cannot gather from a 0-d tensor");
    int d = ml_wrap_dim("gather", dim, t->ndim);
    if (d < 0) return ML_ERR_DIM;
    if (index->ndim != t->ndim)
        return ml_seterr(ML_ERR_SHAPE, "gather: index %s and input %s must have the same number of dims",
                         ml_shape_str(index->ndim, index->shape), ml_shape_str(t->ndim, t->shape));
    for (int i = 0; i < t->ndim; i++)
        if (i != d && index->shape[i] > t->shape[i])
            return ml_seterr(ML_ERR_SHAPE, "gather: index of shape %s is larger than the input of shape %s in dim %d",
                             ml_shape_str(index->ndim, index->shape), ml_shape_str(t->ndim, t->shape), i);
    if ((e = check_index_range("gather", index, d, t->shape[d]))) return e;
    ml_dtype dt = (ml_dtype)t->dtype;
    ml_tensor *res;
    if ((e = ml_tensor_empty(&res, dt, index->ndim, index->shape))) return e;
    int64_t n = ml_tensor_numel(res);
    if (n > 0) {
        int64_t ts[ML_MAX_DIMS];
        for (int i = 0; i < t->ndim; i++) ts[i] = i == d ? 0 : t->stride[i];
        ml_iter it;
        ml_iter3_init(&it, index->ndim, index->shape, res->stride, 0, index->stride, index->offset, ts, t->offset);
        char *ob = (char *)res->storage->data;
        const char *ib = (const char *)index->storage->data, *sb = (const char *)t->storage->data;
        ml_dtype idt = (ml_dtype)index->dtype;
        int64_t sdim = t->stride[d];
        switch (ml_dtype_size(dt)) {
        case 1: GATHER_LOOP(uint8_t); break;
        case 2: GATHER_LOOP(uint16_t); break;
        case 4: GATHER_LOOP(uint32_t); break;
        default: GATHER_LOOP(uint64_t); break;
        }
    }
    if (ml_dtype_is_float(dt) && ml_needs_grad(1, &t)) {
        ml_node *nd_;
        if ((e = ml_record("gather", bw_gather, 1, &t, res, &nd_))) { ml_tensor_release(res); return e; }
        dim_params p = {.dim = d};
        memcpy(nd_->params, &p, sizeof p);
        if (ml_node_save(nd_, index) < 0) { ml_tensor_release(res); return ML_ERR_INTERNAL; }
    }
    *out = res;
    return ML_OK;
}

/* ==================================================================== cat */
typedef struct {
    int dim;
    int n;
    int64_t len[ML_NODE_MAX_IN];
} cat_params;

/* ML_LAYOUT_NC16 tensors concatenated along the channels: per sample, the 16-channel blocks of each
 * input one after another ([N][C/16][S][16] keeps each sample's blocks contiguous). */
static bool nc16_cat_ok(int n, ml_tensor *const *ts, int dim) {
    if (dim != 1) return false;
    for (int i = 0; i < n; i++) {
        const ml_tensor *t = ts[i];
        if (t->layout != ML_LAYOUT_NC16 || t->dtype != ML_F32 || t->ndim != ts[0]->ndim || t->shape[1] % 16) return false;
        for (int k = 0; k < t->ndim; k++)
            if (k != 1 && t->shape[k] != ts[0]->shape[k]) return false;
    }
    return true;
}

/* copy channel blocks: dst channels [doff, doff+len) of a [N, Cd, S] NC16 buffer from src channels
 * [soff, soff+len) of a [N, Cs, S] one (offsets and len multiples of 16) */
static void nc16_copy_channels(float *dst, int64_t Cd, int64_t doff, const float *src, int64_t Cs, int64_t soff,
                               int64_t len, int64_t N, int64_t S) {
    int64_t blk = len * S; /* floats per sample */
#pragma omp parallel for schedule(static) if (N * blk > 65536 && N > 1)
    for (int64_t n = 0; n < N; n++)
        memcpy(dst + (n * Cd + doff) * S, src + (n * Cs + soff) * S, sizeof(float) * (size_t)blk);
}

static ml_err bw_cat(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const cat_params *p = (const cat_params *)n->params;
    int64_t off = 0;
    ml_tensor *g = gout[0];
    bool blk = g->layout == ML_LAYOUT_NC16 && p->dim == 1;
    for (int i = 0; blk && i < p->n; i++) blk = p->len[i] % 16 == 0 && n->in_dtype[i] == ML_F32;
    if (blk) { /* gradients in the same blocked layout */
        int64_t N = g->shape[0], C = g->shape[1], S = ml_tensor_numel(g) / (N * C > 0 ? N * C : 1);
        for (int i = 0; i < p->n; i++) {
            if (n->needs[i]) {
                ml_err e = ml_tensor_empty(&gin[i], ML_F32, n->in_ndim[i], n->in_shape[i]);
                if (e) return e;
                nc16_copy_channels(ml_tensor_data(gin[i]), p->len[i], 0, ml_tensor_data(g), C, off, p->len[i], N, S);
                gin[i]->layout = ML_LAYOUT_NC16;
            }
            off += p->len[i];
        }
        return ML_OK;
    }
    for (int i = 0; i < p->n; i++) {
        if (n->needs[i]) {
            ml_tensor *v;
            ml_err e = ml_narrow(&v, gout[0], p->dim, off, p->len[i]);
            if (e) return e;
            if ((e = ml_grad_finish(&gin[i], v, n, i))) return e;
        }
        off += p->len[i];
    }
    return ML_OK;
}

static bool cat_skippable(const ml_tensor *t, const ml_tensor *ref) {
    return t->ndim == 1 && t->shape[0] == 0 && ref->ndim != 1;
}

ml_err ml_cat(ml_tensor **out, int n, ml_tensor **ts, int dim) {
    *out = NULL;
    if (n < 1 || !ts) return ml_seterr(ML_ERR_ARG, "cat: expected a non-empty list of tensors");
    ml_err e;
    for (int i = 0; i < n; i++)
        if (!ts[i]) return ml_seterr(ML_ERR_ARG, "cat: tensor %d is NULL", i);
    if (n <= ML_NODE_MAX_IN && ts[0]->ndim >= 2 && nc16_cat_ok(n, ts, ml_wrap_dim("cat", dim, ts[0]->ndim))) {
        int64_t shape[ML_MAX_DIMS], C = 0;
        memcpy(shape, ts[0]->shape, sizeof(int64_t) * (size_t)ts[0]->ndim);
        for (int i = 0; i < n; i++) C += ts[i]->shape[1];
        shape[1] = C;
        ml_tensor *res;
        if ((e = ml_tensor_empty(&res, ML_F32, ts[0]->ndim, shape))) return e;
        int64_t N = shape[0], S = ml_tensor_numel(res) / (N * C > 0 ? N * C : 1), off = 0;
        for (int i = 0; i < n; i++) {
            nc16_copy_channels(ml_tensor_data(res), C, off, ml_tensor_data(ts[i]), ts[i]->shape[1], 0, ts[i]->shape[1], N, S);
            off += ts[i]->shape[1];
        }
        res->layout = ML_LAYOUT_NC16;
        if (ml_needs_grad(n, ts)) {
            ml_node *nd_;
            if ((e = ml_record("cat", bw_cat, n, ts, res, &nd_))) { ml_tensor_release(res); return e; }
            if (nd_) {
                cat_params p = {.dim = 1, .n = n};
                for (int i = 0; i < n; i++) p.len[i] = ts[i]->shape[1];
                memcpy(nd_->params, &p, sizeof p);
            }
        }
        *out = res;
        return ML_OK;
    }
    for (int i = 0; i < n; i++)
        if ((e = ml_tensor_plain(ts[i]))) return e;
    const ml_tensor *ref = ts[0];
    for (int i = 0; i < n; i++)
        if (!(ts[i]->ndim == 1 && ts[i]->shape[0] == 0)) { ref = ts[i]; break; }
    if (ref->ndim == 0) return ml_seterr(ML_ERR_DIM, "cat: zero-dimensional tensors cannot be concatenated");
    int d = ml_wrap_dim("cat", dim, ref->ndim);
    if (d < 0) return ML_ERR_DIM;
    ml_dtype dt = (ml_dtype)ref->dtype;
    int64_t shape[ML_MAX_DIMS], total = 0;
    memcpy(shape, ref->shape, sizeof(int64_t) * (size_t)ref->ndim);
    int used = 0;
    ml_tensor **u = malloc(sizeof(ml_tensor *) * (size_t)n);
    if (!u) return ml_seterr(ML_ERR_OOM, "cat: out of memory");
    for (int i = 0; i < n; i++) {
        ml_tensor *t = ts[i];
        if (cat_skippable(t, ref)) continue;
        bool ok = t->ndim == ref->ndim;
        for (int k = 0; ok && k < t->ndim; k++) ok = k == d || t->shape[k] == ref->shape[k];
        if (!ok) {
            free(u);
            return ml_seterr(ML_ERR_SHAPE, "cat: tensor %d has shape %s but tensor 0 has shape %s (sizes must match "
                                           "except in dim %d)",
                             i, ml_shape_str(t->ndim, t->shape), ml_shape_str(ref->ndim, ref->shape), d);
        }
        dt = ml_dtype_promote(dt, (ml_dtype)t->dtype);
        total += t->shape[d];
        u[used++] = t;
    }
    shape[d] = total;
    bool grad = ml_dtype_is_float(dt) && ml_needs_grad(used, u);
    if (grad && used > ML_NODE_MAX_IN) {
        /* one autograd node takes at most ML_NODE_MAX_IN inputs: concatenate groups, then the groups */
        int ng = (used + ML_NODE_MAX_IN - 1) / ML_NODE_MAX_IN;
        ml_tensor **gs = calloc((size_t)ng, sizeof *gs);
        if (!gs) { free(u); return ml_seterr(ML_ERR_OOM, "cat: out of memory"); }
        for (int gi = 0; gi < ng && !e; gi++) {
            int lo = gi * ML_NODE_MAX_IN, cnt = used - lo < ML_NODE_MAX_IN ? used - lo : ML_NODE_MAX_IN;
            e = ml_cat(&gs[gi], cnt, u + lo, d);
        }
        if (!e) e = ml_cat(out, ng, gs, d);
        for (int gi = 0; gi < ng; gi++) ml_tensor_release(gs[gi]);
        free(gs);
        free(u);
        return e;
    }
    if ((e = ml_check_same_device("cat", used, u))) { free(u); return e; }
    ml_tensor *res;
    if ((e = ml_tensor_empty_on(&res, ml_tensor_device(ref), dt, ref->ndim, shape))) { free(u); return e; }
    bool prev = ml_set_grad_enabled(false);
    int64_t off = 0;
    for (int i = 0; i < used && !e; i++) {
        int64_t len = u[i]->shape[d];
        if (len > 0) {
            ml_tensor *v;
            e = ml_narrow(&v, res, d, off, len);
            if (!e) e = ml_copy_(v, u[i]);
            ml_tensor_release(v);
        }
        off += len;
    }
    ml_set_grad_enabled(prev);
    res->storage->version = 0;
    if (!e && grad) {
        ml_node *nd_;
        e = ml_record("cat", bw_cat, used, u, res, &nd_);
        if (!e && nd_) {
            cat_params p = {.dim = d, .n = used};
            for (int i = 0; i < used; i++) p.len[i] = u[i]->shape[d];
            memcpy(nd_->params, &p, sizeof p);
        }
    }
    free(u);
    if (e) { ml_tensor_release(res); return e; }
    *out = res;
    return ML_OK;
}

ml_err ml_stack(ml_tensor **out, int n, ml_tensor **ts, int dim) {
    *out = NULL;
    if (n < 1 || !ts) return ml_seterr(ML_ERR_ARG, "stack: expected a non-empty list of tensors");
    for (int i = 0; i < n; i++) {
        if (!ts[i]) return ml_seterr(ML_ERR_ARG, "stack: tensor %d is NULL", i);
        if (!shape_eq(ts[i]->ndim, ts[i]->shape, ts[0]->ndim, ts[0]->shape))
            return ml_seterr(ML_ERR_SHAPE, "stack: tensor %d has shape %s but tensor 0 has shape %s (all must be equal)",
                             i, ml_shape_str(ts[i]->ndim, ts[i]->shape), ml_shape_str(ts[0]->ndim, ts[0]->shape));
    }
    if (ts[0]->ndim >= ML_MAX_DIMS) return ml_seterr(ML_ERR_DIM, "stack: inputs already have %d dims", ML_MAX_DIMS);
    int d = ml_wrap_dim("stack", dim, ts[0]->ndim + 1);
    if (d < 0) return ML_ERR_DIM;
    ml_tensor **us = calloc((size_t)n, sizeof *us);
    if (!us) return ml_seterr(ML_ERR_OOM, "stack: out of memory");
    ml_err e = ML_OK;
    for (int i = 0; i < n && !e; i++) e = ml_unsqueeze(&us[i], ts[i], d);
    if (!e) e = ml_cat(out, n, us, d);
    for (int i = 0; i < n; i++) ml_tensor_release(us[i]);
    free(us);
    return e;
}

/* ================================================================ one_hot */
/* the smallest negative label, else the largest one that does not fit */
static ml_err one_hot_range_error(int64_t bad, int64_t num_classes, const ml_tensor *labels) {
    if (bad < 0)
        return ml_seterr(ML_ERR_ARG, "one_hot: class values must be non-negative, found %lld (labels shape %s)",
                         (long long)bad, ml_shape_str(labels->ndim, labels->shape));
    return ml_seterr(ML_ERR_ARG, "one_hot: class value %lld is out of range for num_classes %lld (labels shape %s)",
                     (long long)bad, (long long)num_classes, ml_shape_str(labels->ndim, labels->shape));
}

/* one_hot on a device: the labels (exact in float64) compared with the class values, all on the device;
 * the range check reads only their min and max */
static ml_err device_one_hot(ml_tensor **out, ml_tensor *labels, int64_t num_classes, int d) {
    ml_tensor *lf = NULL, *mx = NULL, *mn = NULL, *lu = NULL, *cls = NULL, *clsd = NULL, *clsv = NULL, *eq = NULL;
    bool prev = ml_set_grad_enabled(false);
    ml_err e = ml_to_dtype(&lf, labels, ML_F64);
    int64_t n = e ? 0 : ml_tensor_numel(lf);
    if (!e && n == 0 && num_classes < 0)
        e = ml_seterr(ML_ERR_ARG, "one_hot: cannot infer the number of classes from an empty tensor");
    if (!e && n > 0 && !(e = ml_reduce(&mx, ML_RAMAX, lf, 0, NULL, false)) &&
        !(e = ml_reduce(&mn, ML_RAMIN, lf, 0, NULL, false))) {
        double hi = ml_tensor_item(mx), lo = ml_tensor_item(mn);
        if (lo < 0) e = one_hot_range_error((int64_t)lo, num_classes, labels);
        else if (num_classes < 0) num_classes = (int64_t)hi + 1;
        else if (hi >= (double)num_classes) e = one_hot_range_error((int64_t)hi, num_classes, labels);
    }
    if (!e) { /* classes [1, .., C at d, .., 1] against labels [.., 1 at d, ..] */
        int64_t cs[ML_MAX_DIMS];
        for (int i = 0; i <= labels->ndim; i++) cs[i] = i == d ? num_classes : 1;
        if (!(e = ml_arange(&cls, ML_F64, 0, (double)num_classes, 1)) &&
            !(e = ml_to_device(&clsd, cls, ml_tensor_device(labels))) &&
            !(e = ml_reshape(&clsv, clsd, labels->ndim + 1, cs)) && !(e = ml_unsqueeze(&lu, lf, d)) &&
            !(e = ml_binary(&eq, ML_EQ, lu, clsv)))
            e = ml_to_dtype(out, eq, ML_I64);
    }
    ml_set_grad_enabled(prev);
    ml_tensor_release(lf);
    ml_tensor_release(mx);
    ml_tensor_release(mn);
    ml_tensor_release(lu);
    ml_tensor_release(cls);
    ml_tensor_release(clsd);
    ml_tensor_release(clsv);
    ml_tensor_release(eq);
    return e;
}

ml_err ml_one_hot(ml_tensor **out, ml_tensor *labels, int64_t num_classes, int dim) {
    *out = NULL;
    ml_err e;
    if ((e = ml_tensor_plain(labels))) return e;
    ml_dtype ld = (ml_dtype)labels->dtype;
    if (ml_dtype_is_float(ld))
        return ml_seterr(ML_ERR_DTYPE, "one_hot: labels must be an integer tensor, got %s (shape %s)",
                         ml_dtype_name(ld), ml_shape_str(labels->ndim, labels->shape));
    if (labels->ndim >= ML_MAX_DIMS) return ml_seterr(ML_ERR_DIM, "one_hot: labels already have %d dims", ML_MAX_DIMS);
    int d = ml_wrap_dim("one_hot", dim, labels->ndim + 1);
    if (d < 0) return ML_ERR_DIM;
    if (ml_tensor_is_cuda(labels)) return device_one_hot(out, labels, num_classes, d);
    ml_tensor *lc;
    bool prev = ml_set_grad_enabled(false);
    e = ml_to_dtype(&lc, labels, ML_I64);
    if (!e && !ml_tensor_is_contiguous(lc)) {
        ml_tensor *c;
        e = ml_contiguous(&c, lc);
        ml_tensor_release(lc);
        lc = c;
    }
    ml_set_grad_enabled(prev);
    if (e) return e;
    int64_t n = ml_tensor_numel(lc);
    const int64_t *lab = ml_tensor_data(lc);
    if (num_classes < 0) {
        if (n == 0) {
            ml_tensor_release(lc);
            return ml_seterr(ML_ERR_ARG, "one_hot: cannot infer the number of classes from an empty tensor");
        }
        int64_t mx = lab[0];
        for (int64_t i = 1; i < n; i++) if (lab[i] > mx) mx = lab[i];
        num_classes = mx + 1;
    }
    int64_t lo = 0, hi = 0;
    for (int64_t i = 0; i < n; i++) {
        if (lab[i] < lo) lo = lab[i];
        if (lab[i] > hi) hi = lab[i];
    }
    if (lo < 0 || hi >= num_classes) {
        ml_tensor_release(lc);
        return one_hot_range_error(lo < 0 ? lo : hi, num_classes, labels);
    }
    int64_t shape[ML_MAX_DIMS], outer = 1, inner = 1;
    int on = 0;
    for (int i = 0; i <= labels->ndim; i++) {
        if (i == d) shape[on++] = num_classes;
        if (i < labels->ndim) {
            shape[on++] = labels->shape[i];
            if (i < d) outer *= labels->shape[i];
            else inner *= labels->shape[i];
        }
    }
    ml_tensor *res;
    if ((e = ml_zeros(&res, ML_I64, on, shape))) { ml_tensor_release(lc); return e; }
    int64_t *o = ml_tensor_data(res);
    for (int64_t q = 0; q < outer; q++)
        for (int64_t j = 0; j < inner; j++) {
            int64_t c = lab[q * inner + j];
            o[(q * num_classes + c) * inner + j] = 1;
        }
    ml_tensor_release(lc);
    *out = res;
    return ML_OK;
}
