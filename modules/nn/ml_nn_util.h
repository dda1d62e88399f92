/* Private helpers shared by the nn kernels in ml_norm.c, ml_act.c, ml_resample.c, ml_loss.c.
 * Not part of the public API: every function here is static inline. */
#ifndef ML_NN_UTIL_H
#define ML_NN_UTIL_H

#include "ml_nn.h"
#include "../tensor/ml_iter.h"

#include <stdlib.h>
#include <string.h>

/* Elements per work chunk for the deterministic chunked reductions: chunk boundaries depend only
 * on the shapes, never on the thread count, so partial sums combine in a fixed order. */
#define NN_CHUNK 4096

static inline bool nn_is_real(const ml_tensor *t) { return t->dtype == ML_F32 || t->dtype == ML_F64; }

/* Error unless t is float32/float64. */
static inline ml_err nn_check_real(const char *op, const char *what, const ml_tensor *t) {
    if (nn_is_real(t)) return ML_OK;
    return ml_seterr(ML_ERR_DTYPE, "%s: %s must be float32 or float64, got %s (shape %s)", op, what,
                     ml_dtype_name((ml_dtype)t->dtype), ml_shape_str(t->ndim, t->shape));
}

/* Contiguous plain version of t (retained t when it already is), not recorded by autograd. */
static inline ml_err nn_contig(ml_tensor **out, ml_tensor *t) {
    *out = NULL;
    ml_err e = ml_tensor_plain(t);
    if (e) return e;
    bool prev = ml_set_grad_enabled(false);
    e = ml_contiguous(out, t);
    ml_set_grad_enabled(prev);
    return e;
}

/* Contiguous plain tensor of dtype dt holding t's values, not recorded by autograd. */
static inline ml_err nn_contig_as(ml_tensor **out, ml_tensor *t, ml_dtype dt) {
    *out = NULL;
    ml_err e = ml_tensor_plain(t);
    if (e) return e;
    if ((ml_dtype)t->dtype == dt) return nn_contig(out, t);
    bool prev = ml_set_grad_enabled(false);
    e = ml_tensor_empty(out, dt, t->ndim, t->shape);
    if (!e && (e = ml_copy_(*out, t))) { ml_tensor_release(*out); *out = NULL; }
    ml_set_grad_enabled(prev);
    return e;
}

/* Threads for a loop over `units` independent items touching `work` elements in total. */
static inline int nn_threads(int64_t work, int64_t units) {
    if (work < 2 * ML_ITER_GRAIN || units < 2) return 1;
    int nt = ml_num_threads();
    int64_t maxt = work / ML_ITER_GRAIN;
    if (nt > maxt) nt = (int)maxt;
    if (nt > units) nt = (int)units;
    return nt < 1 ? 1 : nt;
}

/* Read a small float tensor (any strides, any float dtype) into a double array of n entries. */
static inline void nn_load_vec(const ml_tensor *t, double *dst, int64_t n) {
    int64_t idx[ML_MAX_DIMS] = {0};
    for (int64_t k = 0; k < n; k++) {
        int64_t off = t->offset;
        for (int d = 0; d < t->ndim; d++) off += idx[d] * t->stride[d];
        dst[k] = ml_load_elem(t->storage->data, (ml_dtype)t->dtype, off);
        for (int d = t->ndim - 1; d >= 0; d--) {
            if (++idx[d] < t->shape[d]) break;
            idx[d] = 0;
        }
    }
}

/* New contiguous tensor of dtype dt and the given shape holding src[0..numel) (doubles). */
static inline ml_err nn_from_doubles(ml_tensor **out, ml_dtype dt, int ndim, const int64_t *shape,
                                     const double *src) {
    ml_err e = ml_tensor_empty(out, dt, ndim, shape);
    if (e) return e;
    int64_t n = ml_tensor_numel(*out);
    void *d = (*out)->storage->data;
    if (dt == ML_F64) memcpy(d, src, (size_t)n * sizeof(double));
    else for (int64_t k = 0; k < n; k++) ml_store_elem(d, dt, k, src[k]);
    return ML_OK;
}

static inline bool nn_same_shape(const ml_tensor *a, const ml_tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++) if (a->shape[i] != b->shape[i]) return false;
    return true;
}

/* Record a node for `out` (when needed), copy params, and save tensors (NULL entries allowed).
 * On failure the output is released and *outp cleared. */
static inline ml_err nn_record(const char *name, ml_backward_fn fn, int nin, ml_tensor *const *ins, ml_tensor **outp,
                               const void *params, size_t psize, int nsave, ml_tensor *const *saves) {
    ml_node *n = NULL;
    ml_err e = ml_record(name, fn, nin, ins, *outp, &n);
    if (!e && n) {
        if (params) memcpy(n->params, params, psize);
        for (int i = 0; i < nsave; i++)
            if (ml_node_save(n, saves[i]) < 0) { e = ML_ERR_INTERNAL; break; }
    }
    if (e) { ml_tensor_release(*outp); *outp = NULL; }
    return e;
}

#endif
