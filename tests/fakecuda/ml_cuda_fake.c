/* A host-emulated CUDA device for the tests (linked into build/medlua-fakecuda instead of the real
 * backend): the ml_cuda.h interface implemented on the CPU, so that everything above the kernels
 * (device dispatch in the core, the binding gate, transfers, autograd on a device, the GPU test
 * suite itself) runs in CI, which has no GPU.
 *
 * "Device" pointers are host pointers moved by FAKE_BIAS into addresses no process can map: a CPU
 * kernel that reads device memory by mistake (an op that lacks its device path and its gate)
 * crashes the test instead of passing silently. Only the functions here subtract the bias.
 * The kernels are plain loops over the same expression table (ml_ew_internal.h) as the CPU. */
#include "../../modules/cuda/ml_cuda.h"
#include "../../modules/tensor/ml_ew_internal.h"
#include "../../modules/tensor/ml_iter.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define FAKE_BIAS ((uintptr_t)1 << 46)
#define FAKE_DEVICES 2

static size_t g_live[FAKE_DEVICES], g_peak[FAKE_DEVICES];
static uint64_t g_allocs[FAKE_DEVICES];
static bool g_tf32;

static void *host(const void *dev_ptr) { return dev_ptr ? (void *)((uintptr_t)dev_ptr - FAKE_BIAS) : NULL; }

bool ml_cuda_compiled(void) { return true; }
bool ml_cuda_available(void) { return true; }
const char *ml_cuda_status(void) { return "ok (host-emulated test device)"; }
int ml_cuda_device_count(void) { return FAKE_DEVICES; }
const char *ml_cuda_device_name(int dev) { return dev >= 0 && dev < FAKE_DEVICES ? "fake CUDA device (host memory)" : ""; }

ml_err ml_cuda_device_memory(int dev, size_t *free_bytes, size_t *total_bytes) {
    if (dev < 0 || dev >= FAKE_DEVICES) return ml_seterr(ML_ERR_DEVICE, "cuda:%d: no such device", dev);
    *total_bytes = (size_t)1 << 32;
    *free_bytes = *total_bytes - g_live[dev];
    return ML_OK;
}

ml_err ml_cuda_synchronize(int dev) { (void)dev; return ML_OK; }

/* Header before each block: its size (for the live-byte count) and links of a list of the live blocks.
 * The list keeps a real pointer to every block: the biased pointers the core holds are invisible to
 * LeakSanitizer, which would otherwise report every device tensor still alive at exit as a leak. */
typedef struct blk {
    size_t size;
    struct blk *prev, *next;
} blk;
static blk g_blocks = {0, &g_blocks, &g_blocks};

void *ml_cuda_malloc(size_t nbytes, int dev) {
    if (dev < 0 || dev >= FAKE_DEVICES) {
        ml_seterr(ML_ERR_DEVICE, "cuda:%d: no such device", dev);
        return NULL;
    }
    blk *p = malloc(nbytes + 64);
    if (!p) {
        ml_seterr(ML_ERR_OOM, "cuda:%d: out of memory allocating %zu bytes", dev, nbytes);
        return NULL;
    }
    p->size = nbytes;
    p->next = g_blocks.next;
    p->prev = &g_blocks;
    g_blocks.next->prev = p;
    g_blocks.next = p;
    ml_mem_account(ML_CUDA, (int64_t)nbytes);
    g_live[dev] += nbytes;
    if (g_live[dev] > g_peak[dev]) g_peak[dev] = g_live[dev];
    g_allocs[dev]++;
    return (void *)((uintptr_t)((char *)p + 64) + FAKE_BIAS);
}

void ml_cuda_free(void *p, int dev) {
    if (!p) return;
    blk *h = (blk *)((char *)host(p) - 64);
    if (dev >= 0 && dev < FAKE_DEVICES) g_live[dev] -= h->size;
    ml_mem_account(ML_CUDA, -(int64_t)h->size);
    h->prev->next = h->next;
    h->next->prev = h->prev;
    free(h);
}

void ml_cuda_empty_cache(int dev) { (void)dev; }

void ml_cuda_mem_stats(int dev, ml_cuda_mem *out) {
    memset(out, 0, sizeof *out);
    if (dev < 0 || dev >= FAKE_DEVICES) return;
    out->live = g_live[dev];
    out->peak = g_peak[dev];
    out->allocs = g_allocs[dev];
    out->driver_allocs = g_allocs[dev];
}

void ml_cuda_reset_peak(int dev) {
    if (dev >= 0 && dev < FAKE_DEVICES) g_peak[dev] = g_live[dev];
}

ml_err ml_cuda_memcpy(void *dst, int dst_dev, const void *src, int src_dev, size_t nbytes) {
    if (nbytes) memcpy(dst_dev >= 0 ? host(dst) : dst, src_dev >= 0 ? host(src) : src, nbytes);
    return ML_OK;
}

/* ------------------------------------------------------------------ kernels */
static int64_t numel_of(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

/* element offset of linear index i (row-major over shape) in an operand */
static int64_t elem_off(const ml_cuda_opnd *o, int ndim, const int64_t *shape, int64_t i) {
    int64_t off = o->off;
    for (int d = ndim - 1; d >= 0; d--) {
        int64_t q = shape[d] ? i % shape[d] : 0;
        i = shape[d] ? i / shape[d] : 0;
        off += q * o->st[d];
    }
    return off;
}

static double load(const ml_cuda_opnd *o, int ndim, const int64_t *shape, int64_t i) {
    if (o->is_scalar) return o->scalar;
    return ml_load_elem(host(o->base), (ml_dtype)o->dtype, elem_off(o, ndim, shape, i));
}

static void store(const ml_cuda_opnd *o, int ndim, const int64_t *shape, int64_t i, double v) {
    ml_store_elem(host(o->base), (ml_dtype)o->dtype, elem_off(o, ndim, shape, i), v);
}

#define M_F(fn) fn##f
#define M_D(fn) fn

/* ml_gelu_tanh_d(f) and ml_silu_d(f) come with the expression table (ml_ew_internal.h) */

static float eval_f(int iop, float x, float y, float z, float p0, float p1) {
    (void)y; (void)z; (void)p0; (void)p1;
    switch (iop) {
#define T float
#define M M_F
#define CASE_(name, ar, ob, expr) case name: return (float)(expr);
        ML_IOP_LIST(CASE_)
#undef CASE_
#undef M
#undef T
    default: return NAN;
    }
}

static double eval_d(int iop, double x, double y, double z, double p0, double p1) {
    (void)y; (void)z; (void)p0; (void)p1;
    switch (iop) {
#define T double
#define M M_D
#define CASE_(name, ar, ob, expr) case name: return (double)(expr);
        ML_IOP_LIST(CASE_)
#undef CASE_
#undef M
#undef T
    default: return NAN;
    }
}

ml_err ml_cuda_ew(int iop, int kd, int ndim, const int64_t *shape, int nops, const ml_cuda_opnd *ops,
                  const double *params) {
    if (iop < 0 || iop >= ML_NIOPS) return ml_seterr(ML_ERR_INTERNAL, "cuda ew: bad op %d", iop);
    double p0 = params ? params[0] : 0, p1 = params ? params[1] : 0;
    int64_t n = numel_of(ndim, shape);
    for (int64_t i = 0; i < n; i++) {
        double in[3] = {0, 0, 0};
        for (int k = 1; k < nops && k < 4; k++) in[k - 1] = load(&ops[k], ndim, shape, i);
        double v = kd == ML_F64 ? eval_d(iop, in[0], in[1], in[2], p0, p1)
                                : (double)eval_f(iop, (float)in[0], (float)in[1], (float)in[2], (float)p0, (float)p1);
        store(&ops[0], ndim, shape, i, v);
    }
    return ML_OK;
}

ml_err ml_cuda_copy(int ndim, const int64_t *shape, const ml_cuda_opnd *dst, const ml_cuda_opnd *src) {
    int64_t n = numel_of(ndim, shape);
    for (int64_t i = 0; i < n; i++) store(dst, ndim, shape, i, load(src, ndim, shape, i));
    return ML_OK;
}

ml_err ml_cuda_fill(int ndim, const int64_t *shape, const ml_cuda_opnd *dst, double v) {
    int64_t n = numel_of(ndim, shape);
    for (int64_t i = 0; i < n; i++) store(dst, ndim, shape, i, v);
    return ML_OK;
}

ml_err ml_cuda_reduce(int kind, int kd, int ndim, const int64_t *shape, const bool *reduce, const ml_cuda_opnd *out,
                      const ml_cuda_opnd *in, const ml_cuda_opnd *idx) {
    (void)kd;
    int64_t oshape[ML_MAX_DIMS], rshape[ML_MAX_DIMS];
    for (int d = 0; d < ndim; d++) {
        oshape[d] = reduce[d] ? 1 : shape[d];
        rshape[d] = reduce[d] ? shape[d] : 1;
    }
    int64_t no = numel_of(ndim, oshape), nred = numel_of(ndim, rshape);
    for (int64_t o = 0; o < no; o++) {
        int64_t base[ML_MAX_DIMS], rem = o;
        for (int d = ndim - 1; d >= 0; d--) { base[d] = rem % oshape[d]; rem /= oshape[d]; }
        double acc = kind == 0 ? 0 : kind == 3 ? 1 : NAN;
        int64_t best = 0;
        for (int64_t r = 0; r < nred; r++) {
            int64_t pos[ML_MAX_DIMS], rr = r;
            for (int d = ndim - 1; d >= 0; d--) { pos[d] = base[d] + rr % rshape[d]; rr /= rshape[d]; }
            int64_t off = in->off;
            for (int d = 0; d < ndim; d++) off += pos[d] * in->st[d];
            double v = ml_load_elem(host(in->base), (ml_dtype)in->dtype, off);
            if (kind == 0) acc += v;
            else if (kind == 3) acc *= v;
            else if (r == 0 || (!isnan(acc) && (isnan(v) || (kind == 1 ? v > acc : v < acc)))) {
                acc = v;
                best = r; /* row-major over the reduced dims: the index along the one reduced dim, or flat */
            }
        }
        int64_t ooff = out->off;
        for (int d = 0; d < ndim; d++) ooff += base[d] * out->st[d];
        ml_store_elem(host(out->base), (ml_dtype)out->dtype, ooff, acc);
        if (idx) {
            int64_t ioff = idx->off;
            for (int d = 0; d < ndim; d++) ioff += base[d] * idx->st[d];
            ml_store_elem(host(idx->base), ML_I64, ioff, (double)best);
        }
    }
    return ML_OK;
}

ml_err ml_cuda_gemm(int kd, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const void *a, int64_t lda,
                    int64_t stride_a, const void *b, int64_t ldb, int64_t stride_b, void *c, int64_t ldc,
                    int64_t stride_c, int64_t batch, double alpha, double beta, int dev) {
    (void)dev;
    const char *A = host(a), *B = host(b);
    char *C = host(c);
    for (int64_t q = 0; q < batch; q++)
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) {
                double s = 0;
                for (int64_t l = 0; l < k; l++) {
                    int64_t ia = q * stride_a + (trans_a ? l * lda + i : i * lda + l);
                    int64_t ib = q * stride_b + (trans_b ? j * ldb + l : l * ldb + j);
                    s += ml_load_elem(A, (ml_dtype)kd, ia) * ml_load_elem(B, (ml_dtype)kd, ib);
                }
                int64_t ic = q * stride_c + i * ldc + j;
                double old = beta != 0 ? ml_load_elem(C, (ml_dtype)kd, ic) : 0;
                ml_store_elem(C, (ml_dtype)kd, ic, alpha * s + beta * old);
            }
    return ML_OK;
}

void ml_cuda_set_tf32(bool on) { g_tf32 = on; }
bool ml_cuda_tf32(void) { return g_tf32; }

/* ------------------------------------------------------------- cuDNN (emulated with the CPU conv) */
#include "../../modules/nn/ml_nn.h"

static bool g_benchmark;
void ml_cuda_set_benchmark(bool on) { g_benchmark = on; }
bool ml_cuda_benchmark(void) { return g_benchmark; }

static int64_t dense_numel(int nd, const int64_t *s) {
    int64_t n = 1;
    for (int i = 0; i < nd; i++) n *= s[i];
    return n;
}

/* a host tensor holding a copy of dense device data */
static ml_err host_tensor(ml_tensor **out, int kd, int nd, const int64_t *shape, const void *dev_ptr) {
    return ml_tensor_from_data(out, (ml_dtype)kd, nd, shape, host(dev_ptr));
}

static void to_dev(void *dev_ptr, const ml_tensor *t) {
    memcpy(host(dev_ptr), ml_tensor_data(t), (size_t)ml_tensor_numel(t) * ml_dtype_size((ml_dtype)t->dtype));
}

static ml_conv_params conv_params(const ml_cuda_conv_desc *d) {
    ml_conv_params p;
    memset(&p, 0, sizeof p);
    p.k = d->nsp;
    for (int i = 0; i < d->nsp; i++) {
        p.stride[i] = d->stride[i];
        p.padding[i] = d->pad[i];
        p.dilation[i] = d->dil[i];
    }
    p.groups = d->groups;
    return p;
}

/* which = 0: y = conv(x, w); 1: dx of conv for dy; 2: dw of conv for dy (CPU autograd) */
static ml_err fake_conv(int which, int kd, const ml_cuda_conv_desc *d, const void *a, const void *b, void *out) {
    int nd = d->nsp + 2;
    ml_conv_params p = conv_params(d);
    ml_tensor *x = NULL, *w = NULL, *dy = NULL, *y = NULL;
    ml_err e;
    bool prev = ml_set_grad_enabled(which != 0);
    if (which == 0) {
        if ((e = host_tensor(&x, kd, nd, d->x, a)) || (e = host_tensor(&w, kd, nd, d->w, b))) goto done;
    } else if (which == 1) {
        if ((e = host_tensor(&w, kd, nd, d->w, a)) || (e = host_tensor(&dy, kd, nd, d->y, b))) goto done;
        if ((e = ml_zeros(&x, (ml_dtype)kd, nd, d->x)) || (e = ml_set_requires_grad(x, true))) goto done;
    } else {
        if ((e = host_tensor(&x, kd, nd, d->x, a)) || (e = host_tensor(&dy, kd, nd, d->y, b))) goto done;
        if ((e = ml_zeros(&w, (ml_dtype)kd, nd, d->w)) || (e = ml_set_requires_grad(w, true))) goto done;
    }
    if ((e = ml_conv(&y, x, w, NULL, &p))) goto done;
    if (dense_numel(nd, d->y) != ml_tensor_numel(y)) { e = ml_seterr(ML_ERR_SHAPE, "fake conv: output shape"); goto done; }
    if (which == 0) {
        ml_tensor *yc;
        if ((e = ml_contiguous(&yc, y))) goto done;
        to_dev(out, yc);
        ml_tensor_release(yc);
    } else {
        if ((e = ml_backward(y, dy, false))) goto done;
        to_dev(out, which == 1 ? x->grad : w->grad);
    }
done:
    ml_set_grad_enabled(prev);
    ml_tensor_release(x);
    ml_tensor_release(w);
    ml_tensor_release(dy);
    ml_tensor_release(y);
    return e;
}

ml_err ml_cuda_conv_fwd(int kd, const ml_cuda_conv_desc *d, const void *x, const void *w, void *y, int dev) {
    (void)dev;
    return fake_conv(0, kd, d, x, w, y);
}
ml_err ml_cuda_conv_bwd_data(int kd, const ml_cuda_conv_desc *d, const void *w, const void *dy, void *dx, int dev) {
    (void)dev;
    return fake_conv(1, kd, d, w, dy, dx);
}
ml_err ml_cuda_conv_bwd_filter(int kd, const ml_cuda_conv_desc *d, const void *x, const void *dy, void *dw, int dev) {
    (void)dev;
    return fake_conv(2, kd, d, x, dy, dw);
}

/* ------------------------------------------------------------- pooling (emulated with the CPU pooling) */
static ml_pool_params pool_params(const ml_cuda_pool_desc *d) {
    ml_pool_params p;
    memset(&p, 0, sizeof p);
    p.k = d->nsp;
    for (int i = 0; i < d->nsp; i++) {
        p.kernel[i] = d->kernel[i];
        p.stride[i] = d->stride[i];
        p.padding[i] = d->pad[i];
        p.dilation[i] = 1;
    }
    p.count_include_pad = d->count_include_pad;
    return p;
}

static ml_err fake_pool(bool bwd, int kd, const ml_cuda_pool_desc *d, const void *xp, const void *dyp, void *out) {
    int nd = d->nsp + 2;
    ml_pool_params p = pool_params(d);
    ml_tensor *x = NULL, *dy = NULL, *y = NULL;
    bool prev = ml_set_grad_enabled(bwd);
    ml_err e = host_tensor(&x, kd, nd, d->x, xp);
    if (!e && bwd) e = ml_set_requires_grad(x, true);
    if (!e) e = d->max ? ml_max_pool(&y, x, &p) : ml_avg_pool(&y, x, &p);
    if (!e && dense_numel(nd, d->y) != ml_tensor_numel(y)) e = ml_seterr(ML_ERR_SHAPE, "fake pool: output shape");
    if (!e && !bwd) to_dev(out, y);
    if (!e && bwd && !(e = host_tensor(&dy, kd, nd, d->y, dyp)) && !(e = ml_backward(y, dy, false))) to_dev(out, x->grad);
    ml_set_grad_enabled(prev);
    ml_tensor_release(x);
    ml_tensor_release(dy);
    ml_tensor_release(y);
    return e;
}

ml_err ml_cuda_pool_fwd(int kd, const ml_cuda_pool_desc *d, const void *x, void *y, int dev) {
    (void)dev;
    return fake_pool(false, kd, d, x, NULL, y);
}
ml_err ml_cuda_pool_bwd(int kd, const ml_cuda_pool_desc *d, const void *x, const void *y, const void *dy, void *dx,
                        int dev) {
    (void)dev;
    (void)y;
    return fake_pool(true, kd, d, x, dy, dx);
}
