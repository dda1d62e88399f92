/* Private helpers shared by the nn kernels in ml_norm.c, ml_act.c, ml_resample.c, ml_loss.c.
 * Not part of the public API: every function here is static inline. */
#ifndef ML_NN_UTIL_H
#define ML_NN_UTIL_H

#include "ml_nn.h"
#include "../tensor/ml_iter.h"

#include <math.h>
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

/* ---- branch-free float exp / log1p (vectorize inside `omp simd` loops; libm's do not).
 * nn_expf: Cephes polynomial, about 1 ulp; returns 0 below -87.3 (no subnormals), finite clamp
 * above 88.37 (callers pass x <= 0), NaN for NaN. */
static inline float nn_expf(float x) {
    float xc = x == x ? x : 0.0f;
    xc = xc < -87.33654f ? -87.33654f : xc;
    xc = xc > 88.3762626f ? 88.3762626f : xc;
    /* floor via truncation (|v| < 128): libm floorf is not inlined under -ftrapping-math */
    float v = xc * 1.44269504088896341f + 0.5f;
    float n = (float)(int32_t)v;
    n = n > v ? n - 1.0f : n;
    float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &bits, sizeof s);
    float res = p * s;
    res = x < -87.33654f ? 0.0f : res;
    return x == x ? res : x;
}

/* natural log for x in [2^-126, 2^127] (Cephes logf polynomial) */
static inline float nn_logf_pos(float x) {
    int32_t i;
    memcpy(&i, &x, sizeof i);
    float e = (float)(((i >> 23) & 0xff) - 126);
    i = (i & 0x807fffff) | 0x3f000000; /* mantissa in [0.5, 1) */
    float m;
    memcpy(&m, &i, sizeof m);
    float c = m < 0.707106781186547524f ? 1.0f : 0.0f;
    e -= c;
    m = m + m * c - 1.0f;
    float z = m * m;
    float y = 7.0376836292E-2f;
    y = y * m - 1.1514610310E-1f;
    y = y * m + 1.1676998740E-1f;
    y = y * m - 1.2420140846E-1f;
    y = y * m + 1.4249322787E-1f;
    y = y * m - 1.6668057665E-1f;
    y = y * m + 2.0000714765E-1f;
    y = y * m - 2.4999993993E-1f;
    y = y * m + 3.3333331174E-1f;
    y = y * m * z;
    y += -2.12194440e-4f * e;
    y += -0.5f * z;
    return m + y + 0.693359375f * e;
}

/* log1p(x) for x in [0, 1] with full relative accuracy for small x */
static inline float nn_log1pf01(float x) {
    float u = 1.0f + x, d = u - 1.0f;
    float l = nn_logf_pos(u);
    return d == 0.0f ? x : l * (x / d);
}

/* ---- vector versions (GCC vector extensions: explicit selects, so they vectorize even under
 * -ftrapping-math, where the compiler refuses to if-convert the scalar versions). Same arithmetic
 * as the scalar functions above, lane by lane. 8 lanes with AVX, else 4 (SSE2 baseline). The
 * in-place array helpers below process NN_VW at a time with a scalar tail. */
#ifdef __AVX__
#define NN_VW 8
#else
#define NN_VW 4
#endif
typedef float nn_vf __attribute__((vector_size(NN_VW * 4)));
typedef int32_t nn_vi __attribute__((vector_size(NN_VW * 4)));

static inline nn_vf nn_vf_set1(float a) { nn_vf v = {0}; return v + a; }
static inline nn_vi nn_vi_set1(int32_t a) { nn_vi v = {0}; return v + a; }
static inline nn_vf nn_v_sel(nn_vi m, nn_vf a, nn_vf b) { return (nn_vf)((m & (nn_vi)a) | (~m & (nn_vi)b)); }

static inline nn_vf nn_expf_v(nn_vf x) {
    nn_vi ok = x == x;
    nn_vf xc = nn_v_sel(ok, x, nn_vf_set1(0.0f));
    xc = nn_v_sel(xc < nn_vf_set1(-87.33654f), nn_vf_set1(-87.33654f), xc);
    xc = nn_v_sel(xc > nn_vf_set1(88.3762626f), nn_vf_set1(88.3762626f), xc);
    nn_vf v = xc * 1.44269504088896341f + 0.5f;
    nn_vi ni = __builtin_convertvector(v, nn_vi);
    nn_vf n = __builtin_convertvector(ni, nn_vf);
    nn_vi gt = n > v;
    n = nn_v_sel(gt, n - 1.0f, n);
    ni = ni + gt; /* gt lanes are -1 */
    nn_vf r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    nn_vf p = nn_vf_set1(1.9875691500E-4f);
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r * r + r + 1.0f;
    nn_vf res = p * (nn_vf)((ni + 127) << 23);
    res = nn_v_sel(x < nn_vf_set1(-87.33654f), nn_vf_set1(0.0f), res);
    return nn_v_sel(ok, res, x);
}

static inline nn_vf nn_logf_v_pos(nn_vf x) {
    nn_vi i = (nn_vi)x;
    nn_vf e = __builtin_convertvector(((i >> 23) & 0xff) - 126, nn_vf);
    i = (i & nn_vi_set1(0x807fffff)) | nn_vi_set1(0x3f000000);
    nn_vf m = (nn_vf)i;
    nn_vi c = m < nn_vf_set1(0.707106781186547524f);
    nn_vf cf = nn_v_sel(c, nn_vf_set1(1.0f), nn_vf_set1(0.0f));
    e = e - cf;
    m = m + m * cf - 1.0f;
    nn_vf z = m * m;
    nn_vf y = nn_vf_set1(7.0376836292E-2f);
    y = y * m - 1.1514610310E-1f;
    y = y * m + 1.1676998740E-1f;
    y = y * m - 1.2420140846E-1f;
    y = y * m + 1.4249322787E-1f;
    y = y * m - 1.6668057665E-1f;
    y = y * m + 2.0000714765E-1f;
    y = y * m - 2.4999993993E-1f;
    y = y * m + 3.3333331174E-1f;
    y = y * m * z;
    y += -2.12194440e-4f * e;
    y += -0.5f * z;
    return m + y + 0.693359375f * e;
}

static inline nn_vf nn_log1pf_v01(nn_vf x) {
    nn_vf u = 1.0f + x, d = u - 1.0f;
    nn_vf l = nn_logf_v_pos(u);
    nn_vi z = d == nn_vf_set1(0.0f);
    nn_vf dd = nn_v_sel(z, nn_vf_set1(1.0f), d);
    return nn_v_sel(z, x, l * (x / dd));
}

/* v[i] = exp(v[i]) */
static inline void nn_vexpf(float *v, int64_t n) {
    int64_t i = 0;
    for (; i + NN_VW <= n; i += NN_VW) {
        nn_vf a;
        memcpy(&a, v + i, sizeof a);
        a = nn_expf_v(a);
        memcpy(v + i, &a, sizeof a);
    }
    for (; i < n; i++) v[i] = nn_expf(v[i]);
}
/* v[i] = log1p(v[i]) for v in [0, 1] */
static inline void nn_vlog1pf01(float *v, int64_t n) {
    int64_t i = 0;
    for (; i + NN_VW <= n; i += NN_VW) {
        nn_vf a;
        memcpy(&a, v + i, sizeof a);
        a = nn_log1pf_v01(a);
        memcpy(v + i, &a, sizeof a);
    }
    for (; i < n; i++) v[i] = nn_log1pf01(v[i]);
}
/* o[i] = log(v[i]) in float precision for positive normal v (other values: see the callers) */
static inline void nn_vlogf_of(float *o, const double *v, int64_t n) {
    int64_t i = 0;
    for (; i + NN_VW <= n; i += NN_VW) {
        nn_vf a;
        for (int k = 0; k < NN_VW; k++) a[k] = (float)v[i + k];
        a = nn_logf_v_pos(a);
        memcpy(o + i, &a, sizeof a);
    }
    for (; i < n; i++) o[i] = nn_logf_pos((float)v[i]);
}
static inline void nn_vexpd(double *v, int64_t n) {
    for (int64_t i = 0; i < n; i++) v[i] = exp(v[i]);
}
static inline void nn_vlog1pd(double *v, int64_t n) {
    for (int64_t i = 0; i < n; i++) v[i] = log1p(v[i]);
}

#endif
