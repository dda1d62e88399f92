/* Views (share storage, differentiable), contiguous/clone/cast/detach. */
#include "ml_tensor.h"
#include "ml_iter.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    int kind; /* view-ish param blob */
    int dim;
    int64_t start, step;
    int perm[ML_MAX_DIMS];
} view_params;

static ml_err make_view(ml_tensor **out, ml_tensor *t, int ndim, const int64_t *shape, const int64_t *stride,
                        int64_t offset, const char *op) {
    *out = NULL;
    if (t->layout) {
        ml_err e = ml_tensor_plain(t);
        if (e) return e;
    }
    (void)op;
    ml_tensor *v = ml_tensor_header(t->storage, (ml_dtype)t->dtype, ndim, shape, stride, offset);
    if (!v) return ML_ERR_OOM;
    *out = v;
    return ML_OK;
}

/* ---- backward rules */
static ml_err bw_reshape(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    return ml_reshape(&gin[0], gout[0], n->in_ndim[0], n->in_shape[0]);
}

static ml_err bw_permute(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    view_params *p = (view_params *)n->params;
    int inv[ML_MAX_DIMS];
    for (int i = 0; i < n->in_ndim[0]; i++) inv[p->perm[i]] = i;
    return ml_permute(&gin[0], gout[0], inv);
}

static ml_err bw_expand(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    return ml_sum_to(&gin[0], gout[0], n->in_ndim[0], n->in_shape[0]);
}

/* narrow/slice/select: scatter the gradient into zeros of the input shape */
static ml_err bw_slice(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    view_params *p = (view_params *)n->params;
    ml_tensor *z, *v = NULL;
    ml_err e = ml_zeros_on(&z, ml_tensor_device(gout[0]), (ml_dtype)gout[0]->dtype, n->in_ndim[0], n->in_shape[0]);
    if (e) return e;
    if (p->kind == 2) e = ml_select(&v, z, p->dim, p->start);
    else e = ml_slice(&v, z, p->dim, p->start, p->start + p->step * (gout[0]->shape[p->dim] - 1) + 1, p->step);
    if (!e) e = ml_copy_(v, gout[0]);
    ml_tensor_release(v);
    if (e) { ml_tensor_release(z); return e; }
    gin[0] = z;
    return ML_OK;
}

static ml_err bw_identity(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    (void)n;
    ml_tensor_retain(gout[0]);
    gin[0] = gout[0];
    return ML_OK;
}

static ml_err bw_cast(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    return ml_to_dtype(&gin[0], gout[0], (ml_dtype)n->in_dtype[0]);
}

static ml_err record_view(const char *name, ml_backward_fn fn, ml_tensor *in, ml_tensor *out, const view_params *p) {
    ml_node *n;
    ml_err e = ml_record(name, fn, 1, &in, out, &n);
    if (e) return e;
    if (n && p) memcpy(n->params, p, sizeof *p);
    return ML_OK;
}

/* ---- views */
static bool view_strides(const ml_tensor *t, int ndim, const int64_t *shape, int64_t *stride) {
    /* Compute strides for viewing t with a new shape without copying (PyTorch's algorithm:
     * chunks of t that are contiguous among themselves are re-split). */
    int64_t numel = ml_tensor_numel(t);
    if (numel == 0 || t->ndim == 0) { ml_contiguous_strides(ndim, shape, stride); return true; }
    int view_d = ndim - 1;
    int64_t chunk_base_stride = t->ndim ? t->stride[t->ndim - 1] : 1;
    int64_t tensor_numel = 1, view_numel = 1;
    for (int td = t->ndim - 1; td >= 0; td--) {
        tensor_numel *= t->shape[td];
        if (td == 0 || (t->shape[td - 1] != 1 && t->stride[td - 1] != tensor_numel * chunk_base_stride)) {
            while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
                stride[view_d] = view_numel * chunk_base_stride;
                view_numel *= shape[view_d];
                view_d--;
            }
            if (view_numel != tensor_numel) return false;
            if (td > 0) {
                chunk_base_stride = t->stride[td - 1];
                tensor_numel = 1;
                view_numel = 1;
            }
        }
    }
    return view_d == -1;
}

static ml_err infer_shape(const char *op, const ml_tensor *t, int ndim, const int64_t *shape_in, int64_t *shape) {
    if (ndim < 0 || ndim > ML_MAX_DIMS) return ml_seterr(ML_ERR_DIM, "%s: rank %d out of range", op, ndim);
    int64_t numel = ml_tensor_numel(t), prod = 1;
    int infer = -1;
    for (int i = 0; i < ndim; i++) {
        shape[i] = shape_in[i];
        if (shape_in[i] == -1) {
            if (infer >= 0) return ml_seterr(ML_ERR_SHAPE, "%s: only one dimension can be -1", op);
            infer = i;
        } else if (shape_in[i] < 0) {
            return ml_seterr(ML_ERR_SHAPE, "%s: invalid size %lld", op, (long long)shape_in[i]);
        } else prod *= shape_in[i];
    }
    if (infer >= 0) {
        if (prod == 0 || numel % prod)
            return ml_seterr(ML_ERR_SHAPE, "%s: shape %s is invalid for input of shape %s (%lld elements)", op,
                             ml_shape_str(ndim, shape_in), ml_shape_str(t->ndim, t->shape), (long long)numel);
        shape[infer] = numel / prod;
        prod *= shape[infer];
    }
    if (prod != numel)
        return ml_seterr(ML_ERR_SHAPE, "%s: shape %s is invalid for input of shape %s (%lld elements)", op,
                         ml_shape_str(ndim, shape_in), ml_shape_str(t->ndim, t->shape), (long long)numel);
    return ML_OK;
}

ml_err ml_view(ml_tensor **out, ml_tensor *t, int ndim, const int64_t *shape_in) {
    *out = NULL;
    int64_t shape[ML_MAX_DIMS], stride[ML_MAX_DIMS];
    ml_err e = infer_shape("view", t, ndim, shape_in, shape);
    if (e) return e;
    if (t->layout || !view_strides(t, ndim, shape, stride))
        return ml_seterr(ML_ERR_SHAPE,
                         "view: shape %s is not compatible with the input's shape %s and strides; use reshape",
                         ml_shape_str(ndim, shape), ml_shape_str(t->ndim, t->shape));
    if ((e = make_view(out, t, ndim, shape, stride, t->offset, "view"))) return e;
    if ((e = record_view("view", bw_reshape, t, *out, NULL))) { ml_tensor_release(*out); *out = NULL; }
    return e;
}

ml_err ml_reshape(ml_tensor **out, ml_tensor *t, int ndim, const int64_t *shape_in) {
    *out = NULL;
    int64_t shape[ML_MAX_DIMS], stride[ML_MAX_DIMS];
    ml_err e = infer_shape("reshape", t, ndim, shape_in, shape);
    if (e) return e;
    if (!t->layout && view_strides(t, ndim, shape, stride)) return ml_view(out, t, ndim, shape);
    ml_tensor *c;
    if ((e = ml_contiguous(&c, t))) return e;
    e = ml_view(out, c, ndim, shape);
    ml_tensor_release(c);
    return e;
}

ml_err ml_flatten(ml_tensor **out, ml_tensor *t, int start, int end) {
    *out = NULL;
    if (t->ndim == 0) return ml_reshape(out, t, 1, (int64_t[]){1});
    int s = ml_wrap_dim("flatten", start, t->ndim), en = ml_wrap_dim("flatten", end, t->ndim);
    if (s < 0 || en < 0) return ML_ERR_DIM;
    if (s > en) return ml_seterr(ML_ERR_DIM, "flatten: start_dim %d comes after end_dim %d", start, end);
    int64_t shape[ML_MAX_DIMS];
    int n = 0;
    for (int i = 0; i < s; i++) shape[n++] = t->shape[i];
    int64_t p = 1;
    for (int i = s; i <= en; i++) p *= t->shape[i];
    shape[n++] = p;
    for (int i = en + 1; i < t->ndim; i++) shape[n++] = t->shape[i];
    return ml_reshape(out, t, n, shape);
}

ml_err ml_slice(ml_tensor **out, ml_tensor *t, int dim, int64_t start, int64_t end, int64_t step) {
    *out = NULL;
    int d = ml_wrap_dim("slice", dim, t->ndim);
    if (d < 0) return ML_ERR_DIM;
    if (t->ndim == 0) return ml_seterr(ML_ERR_DIM, "slice: cannot slice a 0-d tensor");
    if (step <= 0) return ml_seterr(ML_ERR_ARG, "slice: step must be positive, got %lld", (long long)step);
    int64_t size = t->shape[d];
    if (start < 0) start += size;
    if (end < 0) end += size;
    if (start < 0) start = 0;
    if (end > size) end = size;
    if (start > size) start = size;
    if (end < start) end = start;
    int64_t len = (end - start + step - 1) / step;
    int64_t shape[ML_MAX_DIMS], stride[ML_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    memcpy(stride, t->stride, sizeof stride);
    shape[d] = len;
    stride[d] = t->stride[d] * step;
    ml_err e = make_view(out, t, t->ndim, shape, stride, t->offset + start * t->stride[d], "slice");
    if (e) return e;
    view_params p = {.kind = 1, .dim = d, .start = start, .step = step};
    if ((e = record_view("slice", bw_slice, t, *out, &p))) { ml_tensor_release(*out); *out = NULL; }
    return e;
}

ml_err ml_narrow(ml_tensor **out, ml_tensor *t, int dim, int64_t start, int64_t length) {
    *out = NULL;
    int d = ml_wrap_dim("narrow", dim, t->ndim);
    if (d < 0) return ML_ERR_DIM;
    if (t->ndim == 0) return ml_seterr(ML_ERR_DIM, "narrow: cannot narrow a 0-d tensor");
    if (start < 0) start += t->shape[d];
    if (start < 0 || length < 0 || start + length > t->shape[d])
        return ml_seterr(ML_ERR_ARG, "narrow: start %lld + length %lld exceeds dim %d of size %lld (shape %s)",
                         (long long)start, (long long)length, d, (long long)t->shape[d], ml_shape_str(t->ndim, t->shape));
    return ml_slice(out, t, d, start, start + length, 1);
}

ml_err ml_select(ml_tensor **out, ml_tensor *t, int dim, int64_t index) {
    *out = NULL;
    if (t->ndim == 0) return ml_seterr(ML_ERR_DIM, "select: cannot select from a 0-d tensor");
    int d = ml_wrap_dim("select", dim, t->ndim);
    if (d < 0) return ML_ERR_DIM;
    int64_t size = t->shape[d];
    if (index < -size || index >= size)
        return ml_seterr(ML_ERR_ARG, "select: index %lld out of range for dim %d of size %lld (shape %s)",
                         (long long)index, d, (long long)size, ml_shape_str(t->ndim, t->shape));
    if (index < 0) index += size;
    int64_t shape[ML_MAX_DIMS], stride[ML_MAX_DIMS];
    int n = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (i == d) continue;
        shape[n] = t->shape[i];
        stride[n++] = t->stride[i];
    }
    ml_err e = make_view(out, t, n, shape, stride, t->offset + index * t->stride[d], "select");
    if (e) return e;
    view_params p = {.kind = 2, .dim = d, .start = index, .step = 1};
    if ((e = record_view("select", bw_slice, t, *out, &p))) { ml_tensor_release(*out); *out = NULL; }
    return e;
}

ml_err ml_permute(ml_tensor **out, ml_tensor *t, const int *perm_in) {
    *out = NULL;
    int perm[ML_MAX_DIMS];
    bool seen[ML_MAX_DIMS] = {0};
    for (int i = 0; i < t->ndim; i++) {
        int d = ml_wrap_dim("permute", perm_in[i], t->ndim);
        if (d < 0) return ML_ERR_DIM;
        if (seen[d]) return ml_seterr(ML_ERR_ARG, "permute: dim %d repeated in the permutation", d);
        seen[d] = true;
        perm[i] = d;
    }
    int64_t shape[ML_MAX_DIMS], stride[ML_MAX_DIMS];
    for (int i = 0; i < t->ndim; i++) { shape[i] = t->shape[perm[i]]; stride[i] = t->stride[perm[i]]; }
    ml_err e = make_view(out, t, t->ndim, shape, stride, t->offset, "permute");
    if (e) return e;
    view_params p = {0};
    memcpy(p.perm, perm, sizeof perm);
    if ((e = record_view("permute", bw_permute, t, *out, &p))) { ml_tensor_release(*out); *out = NULL; }
    return e;
}

ml_err ml_transpose(ml_tensor **out, ml_tensor *t, int d0, int d1) {
    *out = NULL;
    int a = ml_wrap_dim("transpose", d0, t->ndim), b = ml_wrap_dim("transpose", d1, t->ndim);
    if (a < 0 || b < 0) return ML_ERR_DIM;
    int perm[ML_MAX_DIMS];
    for (int i = 0; i < t->ndim; i++) perm[i] = i;
    if (t->ndim) { perm[a] = b; perm[b] = a; }
    return ml_permute(out, t, perm);
}

ml_err ml_expand(ml_tensor **out, ml_tensor *t, int ndim, const int64_t *shape_in) {
    *out = NULL;
    if (ndim < t->ndim || ndim > ML_MAX_DIMS)
        return ml_seterr(ML_ERR_SHAPE, "expand: cannot expand shape %s to %s (fewer dims)",
                         ml_shape_str(t->ndim, t->shape), ml_shape_str(ndim, shape_in));
    int64_t shape[ML_MAX_DIMS], stride[ML_MAX_DIMS];
    int off = ndim - t->ndim;
    for (int i = 0; i < ndim; i++) {
        int j = i - off;
        int64_t ts = j >= 0 ? t->shape[j] : 1;
        int64_t want = shape_in[i] == -1 ? ts : shape_in[i];
        if (j < 0 && shape_in[i] == -1)
            return ml_seterr(ML_ERR_SHAPE, "expand: -1 not allowed for new leading dim %d", i);
        if (ts != want && ts != 1)
            return ml_seterr(ML_ERR_SHAPE, "expand: shape %s cannot be expanded to %s (dim %d: %lld vs %lld)",
                             ml_shape_str(t->ndim, t->shape), ml_shape_str(ndim, shape_in), i, (long long)ts,
                             (long long)want);
        shape[i] = want;
        stride[i] = (j < 0 || (ts == 1 && want != 1)) ? 0 : t->stride[j];
    }
    ml_err e = make_view(out, t, ndim, shape, stride, t->offset, "expand");
    if (e) return e;
    if ((e = record_view("expand", bw_expand, t, *out, NULL))) { ml_tensor_release(*out); *out = NULL; }
    return e;
}

ml_err ml_squeeze(ml_tensor **out, ml_tensor *t, int dim) {
    *out = NULL;
    int64_t shape[ML_MAX_DIMS], stride[ML_MAX_DIMS];
    int n = 0, d = -1;
    if (dim != ML_ALL_DIMS) {
        d = ml_wrap_dim("squeeze", dim, t->ndim);
        if (d < 0) return ML_ERR_DIM;
    }
    for (int i = 0; i < t->ndim; i++) {
        bool drop = t->shape[i] == 1 && (d < 0 || i == d);
        if (drop) continue;
        shape[n] = t->shape[i];
        stride[n++] = t->stride[i];
    }
    ml_err e = make_view(out, t, n, shape, stride, t->offset, "squeeze");
    if (e) return e;
    if ((e = record_view("squeeze", bw_reshape, t, *out, NULL))) { ml_tensor_release(*out); *out = NULL; }
    return e;
}

ml_err ml_unsqueeze(ml_tensor **out, ml_tensor *t, int dim) {
    *out = NULL;
    if (t->ndim >= ML_MAX_DIMS) return ml_seterr(ML_ERR_DIM, "unsqueeze: tensor already has %d dims", ML_MAX_DIMS);
    int d = ml_wrap_dim("unsqueeze", dim, t->ndim + 1);
    if (d < 0) return ML_ERR_DIM;
    int64_t shape[ML_MAX_DIMS], stride[ML_MAX_DIMS];
    int n = 0;
    for (int i = 0; i <= t->ndim; i++) {
        if (i == d) {
            shape[n] = 1;
            stride[n++] = i < t->ndim ? t->stride[i] * t->shape[i] : 1;
        }
        if (i < t->ndim) { shape[n] = t->shape[i]; stride[n++] = t->stride[i]; }
    }
    ml_err e = make_view(out, t, n, shape, stride, t->offset, "unsqueeze");
    if (e) return e;
    if ((e = record_view("unsqueeze", bw_reshape, t, *out, NULL))) { ml_tensor_release(*out); *out = NULL; }
    return e;
}

/* ---- copies */
ml_err ml_clone(ml_tensor **out, ml_tensor *t) {
    *out = NULL;
    ml_err e = ml_tensor_plain(t);
    if (e) return e;
    ml_tensor *c;
    if ((e = ml_tensor_empty_like(&c, t))) return e;
    if ((e = ml_copy_(c, t))) { ml_tensor_release(c); return e; }
    c->storage->version = 0;
    if ((e = record_view("clone", bw_identity, t, c, NULL))) { ml_tensor_release(c); return e; }
    *out = c;
    return ML_OK;
}

ml_err ml_contiguous(ml_tensor **out, ml_tensor *t) {
    if (ml_tensor_is_contiguous(t)) {
        ml_tensor_retain(t);
        *out = t;
        return ML_OK;
    }
    return ml_clone(out, t);
}

ml_err ml_to_dtype(ml_tensor **out, ml_tensor *t, ml_dtype dt) {
    *out = NULL;
    if ((unsigned)dt >= ML_NDTYPES) return ml_seterr(ML_ERR_DTYPE, "to: unknown dtype %d", (int)dt);
    if ((ml_dtype)t->dtype == dt) {
        ml_tensor_retain(t);
        *out = t;
        return ML_OK;
    }
    ml_err e = ml_tensor_plain(t);
    if (e) return e;
    ml_tensor *c;
    if ((e = ml_tensor_empty_on(&c, ml_tensor_device(t), dt, t->ndim, t->shape))) return e;
    if ((e = ml_copy_(c, t))) { ml_tensor_release(c); return e; }
    c->storage->version = 0;
    if (ml_dtype_is_float(dt)) {
        if ((e = record_view("to", bw_cast, t, c, NULL))) { ml_tensor_release(c); return e; }
    }
    *out = c;
    return ML_OK;
}

static ml_err bw_to_device(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    ml_device d;
    memcpy(&d, n->params, sizeof d);
    return ml_to_device(&gin[0], gout[0], d);
}

ml_err ml_to_device(ml_tensor **out, ml_tensor *t, ml_device dev) {
    *out = NULL;
    if (ml_device_eq(ml_tensor_device(t), dev)) {
        ml_tensor_retain(t);
        *out = t;
        return ML_OK;
    }
    ml_err e = ml_tensor_plain(t);
    if (e) return e;
    ml_tensor *c;
    if ((e = ml_tensor_empty_on(&c, dev, (ml_dtype)t->dtype, t->ndim, t->shape))) return e;
    if ((e = ml_copy_(c, t))) { ml_tensor_release(c); return e; }
    c->storage->version = 0;
    if (ml_dtype_is_float((ml_dtype)t->dtype)) {
        ml_node *n;
        if ((e = ml_record("to_device", bw_to_device, 1, &t, c, &n))) { ml_tensor_release(c); return e; }
        if (n) {
            ml_device from = ml_tensor_device(t);
            memcpy(n->params, &from, sizeof from);
        }
    }
    *out = c;
    return ML_OK;
}

ml_err ml_detach(ml_tensor **out, ml_tensor *t) {
    *out = NULL;
    ml_err e = ml_tensor_plain(t); /* a second header on the storage: plain strides only */
    if (e) return e;
    *out = ml_tensor_header(t->storage, (ml_dtype)t->dtype, t->ndim, t->shape, t->stride, t->offset);
    return *out ? ML_OK : ML_ERR_OOM;
}
