/* medlua tensor core: errors, dtypes, memory accounting, storage, tensor lifecycle, creation,
 * random numbers, strided copy. Views live in ml_view.c, autograd in ml_autograd.c. */
#include "ml_tensor.h"
#include "../cuda/ml_cuda.h"
#include "ml_iter.h"

#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/mman.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* ------------------------------------------------------------------ errors */
static _Thread_local char g_errmsg[1024];

ml_err ml_seterr(ml_err code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_errmsg, sizeof g_errmsg, fmt, ap);
    va_end(ap);
    return code;
}

const char *ml_errmsg(void) { return g_errmsg[0] ? g_errmsg : "unknown error"; }

const char *ml_errname(ml_err code) {
    static const char *names[] = {"ok", "bad argument", "shape mismatch", "dtype not supported",
                                  "device mismatch", "dimension out of range", "out of memory",
                                  "I/O error", "autograd error", "unsupported", "internal error"};
    if ((unsigned)code < sizeof names / sizeof names[0]) return names[code];
    return "error";
}

const char *ml_shape_str(int ndim, const int64_t *shape) {
    static _Thread_local char ring[8][160];
    static _Thread_local int slot;
    char *buf = ring[slot++ & 7];
    int n = 0;
    n += snprintf(buf + n, 160 - n, "[");
    for (int i = 0; i < ndim && n < 150; i++) n += snprintf(buf + n, 160 - n, i ? ", %lld" : "%lld", (long long)shape[i]);
    snprintf(buf + n, 160 - n, "]");
    return buf;
}

/* ------------------------------------------------------------------ dtypes */
static const size_t dtype_sizes[ML_NDTYPES] = {4, 8, 4, 8, 1, 1, 2, 2};
static const char *dtype_names[ML_NDTYPES] = {"float32", "float64", "int32", "int64",
                                              "uint8", "bool", "bfloat16", "float16"};

size_t ml_dtype_size(ml_dtype dt) { return (unsigned)dt < ML_NDTYPES ? dtype_sizes[dt] : 0; }
const char *ml_dtype_name(ml_dtype dt) { return (unsigned)dt < ML_NDTYPES ? dtype_names[dt] : "?"; }
bool ml_dtype_is_float(ml_dtype dt) { return dt == ML_F32 || dt == ML_F64 || dt == ML_BF16 || dt == ML_F16; }

int ml_dtype_from_name(const char *s) {
    static const struct { const char *n; int dt; } tab[] = {
        {"float32", ML_F32}, {"f32", ML_F32}, {"float", ML_F32},
        {"float64", ML_F64}, {"f64", ML_F64}, {"double", ML_F64},
        {"int32", ML_I32}, {"i32", ML_I32}, {"int", ML_I32},
        {"int64", ML_I64}, {"i64", ML_I64}, {"long", ML_I64},
        {"uint8", ML_U8}, {"u8", ML_U8}, {"byte", ML_U8},
        {"bool", ML_BOOL},
        {"bfloat16", ML_BF16}, {"bf16", ML_BF16},
        {"float16", ML_F16}, {"f16", ML_F16}, {"half", ML_F16}};
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (strcmp(s, tab[i].n) == 0) return tab[i].dt;
    return -1;
}

static int dtype_rank(ml_dtype d) {
    switch (d) {
    case ML_BOOL: return 0;
    case ML_U8: return 1;
    case ML_I32: return 2;
    case ML_I64: return 3;
    case ML_F16: return 4;
    case ML_BF16: return 5;
    case ML_F32: return 6;
    case ML_F64: return 7;
    default: return 0;
    }
}

ml_dtype ml_dtype_promote(ml_dtype a, ml_dtype b) {
    if (a == b) return a;
    if ((a == ML_F16 && b == ML_BF16) || (a == ML_BF16 && b == ML_F16)) return ML_F32;
    return dtype_rank(a) >= dtype_rank(b) ? a : b;
}

float ml_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t ml_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                             /* round to nearest even */
    return (uint16_t)(u >> 16);
}

float ml_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu, u;
    if (exp == 0) {
        if (man == 0) u = sign;
        else { /* subnormal */
            float f = ldexpf((float)man, -24);
            memcpy(&u, &f, 4);
            u |= sign;
        }
    } else if (exp == 31) u = sign | 0x7f800000u | (man << 13);
    else u = sign | ((exp + 112) << 23) | (man << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t ml_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) return sign | 0x7e00u;             /* NaN */
    if (absu >= 0x477ff000u) return sign | 0x7c00u;            /* overflow -> inf */
    if (absu < 0x38800000u) {                                   /* subnormal or zero */
        float af;
        memcpy(&af, &absu, 4);
        return sign | (uint16_t)lrintf(af * 16777216.0f);       /* 2^24 */
    }
    uint32_t r = absu + 0xfffu + ((absu >> 13) & 1u) - (112u << 23);
    return sign | (uint16_t)(r >> 13);
}

const char *ml_device_str(ml_device d) {
    static _Thread_local char buf[32];
    if (d.type == ML_CPU) return "cpu";
    snprintf(buf, sizeof buf, "cuda:%d", d.index);
    return buf;
}

/* ----------------------------------------------------------------- memory */
static _Atomic int64_t g_live[2], g_peak[2], g_pending, g_tensors;
static void (*g_oom_fn)(void *);
static void *g_oom_ud;
static pthread_t g_main_thread;
static bool g_main_set;

void ml_mark_main_thread(void) { g_main_thread = pthread_self(); g_main_set = true; }
void ml_set_oom_handler(void (*fn)(void *), void *ud) { g_oom_fn = fn; g_oom_ud = ud; }
int64_t ml_mem_live(ml_device_type d) { return (unsigned)d < 2 ? atomic_load(&g_live[d]) : 0; }
int64_t ml_mem_peak(ml_device_type d) { return (unsigned)d < 2 ? atomic_load(&g_peak[d]) : 0; }
void ml_mem_reset_peak(void) { for (int i = 0; i < 2; i++) atomic_store(&g_peak[i], atomic_load(&g_live[i])); }
int64_t ml_mem_take_pending(void) { return atomic_exchange(&g_pending, 0); }
int64_t ml_tensor_live_count(void) { return atomic_load(&g_tensors); }

static void mem_add(int dev, int64_t n) {
    int64_t now = atomic_fetch_add(&g_live[dev], n) + n;
    if (n > 0) {
        atomic_fetch_add(&g_pending, n);
        int64_t p = atomic_load(&g_peak[dev]);
        while (now > p && !atomic_compare_exchange_weak(&g_peak[dev], &p, now)) {}
    }
}

/* Large buffers (>= 1 MiB) come straight from mmap, 2 MiB aligned and advised as huge pages:
 * freeing one returns it to the system at once, so the process's peak RSS follows the live tensor
 * bytes instead of a malloc heap's high-water mark, and on VMs a fresh 32 MB activation costs 3-5x
 * less in page faults with huge pages. Small buffers use the C heap. */
#define ML_HUGE ((size_t)2 << 20)
#define ML_MMAP_MIN ((size_t)1 << 20)

static size_t mmap_len(size_t sz) { return (sz + ML_HUGE - 1) & ~(ML_HUGE - 1); }

/* Freed large blocks are kept (up to ML_BLOCK_CACHE bytes) and handed out again for the same mapped
 * length: a training step allocates the same sizes every time, and reusing them saves the page faults
 * and page clearing that otherwise cost ~15% of a U-Net step. ml_flush_caches() returns them. */
#define ML_BLOCK_CACHE ((size_t)1024 << 20)
#define ML_BLOCK_SLOTS 256
static struct { void *p; size_t len; } g_blocks[ML_BLOCK_SLOTS];
static size_t g_block_bytes;
static pthread_mutex_t g_block_mu = PTHREAD_MUTEX_INITIALIZER;

static void *block_take(size_t len) {
    void *p = NULL;
    pthread_mutex_lock(&g_block_mu);
    for (int i = 0; i < ML_BLOCK_SLOTS; i++)
        if (g_blocks[i].p && g_blocks[i].len == len) {
            p = g_blocks[i].p;
            g_blocks[i].p = NULL;
            g_block_bytes -= len;
            break;
        }
    pthread_mutex_unlock(&g_block_mu);
    return p;
}

static bool block_put(void *p, size_t len) {
    bool kept = false;
    pthread_mutex_lock(&g_block_mu);
    if (g_block_bytes + len <= ML_BLOCK_CACHE)
        for (int i = 0; i < ML_BLOCK_SLOTS; i++)
            if (!g_blocks[i].p) {
                g_blocks[i].p = p;
                g_blocks[i].len = len;
                g_block_bytes += len;
                kept = true;
                break;
            }
    pthread_mutex_unlock(&g_block_mu);
    return kept;
}

static void block_cache_flush(void) {
    pthread_mutex_lock(&g_block_mu);
    for (int i = 0; i < ML_BLOCK_SLOTS; i++)
        if (g_blocks[i].p) {
            munmap(g_blocks[i].p, g_blocks[i].len);
            g_blocks[i].p = NULL;
        }
    g_block_bytes = 0;
    pthread_mutex_unlock(&g_block_mu);
}

static void *raw_alloc(size_t sz) {
    if (sz < ML_MMAP_MIN) return aligned_alloc(64, sz);
    size_t len = mmap_len(sz), over = len + ML_HUGE;
    void *cached = block_take(len);
    if (cached) return cached;
    char *p = mmap(NULL, over, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        block_cache_flush();
        return NULL;
    }
    uintptr_t a = ((uintptr_t)p + ML_HUGE - 1) & ~(uintptr_t)(ML_HUGE - 1);
    size_t head = a - (uintptr_t)p, tail = over - head - len;
    if (head) munmap(p, head);
    if (tail) munmap((char *)a + len, tail);
    madvise((void *)a, len, MADV_HUGEPAGE);
    return (void *)a;
}

static void raw_free(void *p, size_t n) {
    size_t sz = (n + 63) & ~(size_t)63;
    if (sz == 0) sz = 64;
    if (sz < ML_MMAP_MIN) free(p);
    else if (!block_put(p, mmap_len(sz))) munmap(p, mmap_len(sz));
}

#define ML_MAX_FLUSH 8
static void (*g_flush[ML_MAX_FLUSH])(void);
static int g_nflush;
static pthread_mutex_t g_flush_mu = PTHREAD_MUTEX_INITIALIZER;

void ml_register_cache_flush(void (*fn)(void)) {
    pthread_mutex_lock(&g_flush_mu);
    bool have = false;
    for (int i = 0; i < g_nflush; i++) have |= g_flush[i] == fn;
    if (!have && g_nflush < ML_MAX_FLUSH) g_flush[g_nflush++] = fn;
    pthread_mutex_unlock(&g_flush_mu);
}

void ml_flush_caches(void) {
    for (int i = 0; i < g_nflush; i++) g_flush[i]();
    block_cache_flush();
}

bool ml_oom_relieve(void) {
    if (!g_oom_fn || !g_main_set || !pthread_equal(pthread_self(), g_main_thread)) return false;
    g_oom_fn(g_oom_ud);
    ml_flush_caches();
    return true;
}

void ml_mem_account(ml_device_type d, int64_t n) {
    if ((unsigned)d < 2 && n) mem_add((int)d, n);
}

void *ml_alloc_bytes(size_t n) {
    size_t sz = (n + 63) & ~(size_t)63;
    if (sz == 0) sz = 64;
    void *p = raw_alloc(sz);
    if (!p && ml_oom_relieve()) p = raw_alloc(sz); /* full GC, drop backend caches, then one retry */
    if (!p) {
        ml_seterr(ML_ERR_OOM, "out of memory allocating %zu bytes (live %lld bytes)", n,
                  (long long)atomic_load(&g_live[0]));
        return NULL;
    }
    mem_add(ML_CPU, (int64_t)n);
    return p;
}

void ml_free_bytes(void *p, size_t n) {
    if (!p) return;
    raw_free(p, n);
    mem_add(ML_CPU, -(int64_t)n);
}

ml_storage *ml_storage_new(size_t nbytes, ml_device dev) {
    if (dev.type != ML_CPU && dev.type != ML_CUDA) {
        ml_seterr(ML_ERR_DEVICE, "storage on %s: no such device type", ml_device_str(dev));
        return NULL;
    }
    ml_storage *s = calloc(1, sizeof *s);
    if (!s) { ml_seterr(ML_ERR_OOM, "out of memory (storage header)"); return NULL; }
    /* each allocator counts its live bytes (ml_mem_account) */
    s->data = dev.type == ML_CUDA ? ml_cuda_malloc(nbytes, dev.index) : ml_alloc_bytes(nbytes);
    if (!s->data) { free(s); return NULL; }
    s->nbytes = nbytes;
    s->refcount = 1;
    s->device = dev;
    return s;
}

void ml_storage_retain(ml_storage *s) { if (s) __atomic_add_fetch(&s->refcount, 1, __ATOMIC_RELAXED); }

void ml_storage_release(ml_storage *s) {
    if (!s || __atomic_sub_fetch(&s->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
    if (s->free_fn) s->free_fn(s);
    else if (s->device.type == ML_CUDA) ml_cuda_free(s->data, s->device.index);
    else ml_free_bytes(s->data, s->nbytes);
    free(s);
}

/* -------------------------------------------------------------- lifecycle */
void ml_tensor_retain(ml_tensor *t) { if (t) __atomic_add_fetch(&t->refcount, 1, __ATOMIC_RELAXED); }

void ml_tensor_release(ml_tensor *t) {
    if (!t || __atomic_sub_fetch(&t->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
    ml_tensor_release(t->grad);
    if (t->grad_fn) ml_node_release(t->grad_fn);
    if (t->layout_desc && t->layout_free) t->layout_free(t->layout_desc);
    ml_storage_release(t->storage);
    free(t);
    atomic_fetch_sub(&g_tensors, 1);
}

/* A bare tensor header over a storage (storage retained). */
ml_tensor *ml_tensor_header(ml_storage *s, ml_dtype dt, int ndim, const int64_t *shape,
                            const int64_t *stride, int64_t offset) {
    ml_tensor *t = calloc(1, sizeof *t);
    if (!t) { ml_seterr(ML_ERR_OOM, "out of memory (tensor header)"); return NULL; }
    atomic_fetch_add(&g_tensors, 1);
    t->refcount = 1;
    t->dtype = (int8_t)dt;
    t->ndim = (int8_t)ndim;
    for (int i = 0; i < ndim; i++) { t->shape[i] = shape[i]; t->stride[i] = stride[i]; }
    t->offset = offset;
    t->storage = s;
    t->hist_gen = s->hist_gen;
    ml_storage_retain(s);
    return t;
}

void ml_contiguous_strides(int ndim, const int64_t *shape, int64_t *stride) {
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) { stride[i] = s; s *= shape[i] > 0 ? shape[i] : 1; }
}

static ml_err check_shape(const char *op, int ndim, const int64_t *shape, int64_t *numel) {
    if (ndim < 0 || ndim > ML_MAX_DIMS)
        return ml_seterr(ML_ERR_DIM, "%s: rank %d out of range 0..%d", op, ndim, ML_MAX_DIMS);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return ml_seterr(ML_ERR_SHAPE, "%s: negative size in shape %s", op, ml_shape_str(ndim, shape));
        if (shape[i] && n > INT64_MAX / 16 / shape[i])
            return ml_seterr(ML_ERR_SHAPE, "%s: shape %s is too large", op, ml_shape_str(ndim, shape));
        n *= shape[i];
    }
    *numel = n;
    return ML_OK;
}

ml_err ml_tensor_empty_on(ml_tensor **out, ml_device dev, ml_dtype dt, int ndim, const int64_t *shape) {
    *out = NULL;
    if ((unsigned)dt >= ML_NDTYPES) return ml_seterr(ML_ERR_DTYPE, "empty: unknown dtype %d", (int)dt);
    int64_t n = 0;
    ml_err e = check_shape("empty", ndim, shape, &n);
    if (e) return e;
    ml_storage *s = ml_storage_new((size_t)n * ml_dtype_size(dt), dev);
    if (!s) return ML_ERR_OOM;
    int64_t stride[ML_MAX_DIMS];
    ml_contiguous_strides(ndim, shape, stride);
    ml_tensor *t = ml_tensor_header(s, dt, ndim, shape, stride, 0);
    ml_storage_release(s);
    if (!t) return ML_ERR_OOM;
    *out = t;
    return ML_OK;
}

ml_err ml_tensor_empty(ml_tensor **out, ml_dtype dt, int ndim, const int64_t *shape) {
    return ml_tensor_empty_on(out, ml_cpu(), dt, ndim, shape);
}

ml_err ml_tensor_empty_like(ml_tensor **out, const ml_tensor *t) {
    return ml_tensor_empty_on(out, ml_tensor_device(t), (ml_dtype)t->dtype, t->ndim, t->shape);
}

ml_err ml_tensor_from_data(ml_tensor **out, ml_dtype dt, int ndim, const int64_t *shape, const void *data) {
    ml_err e = ml_tensor_empty(out, dt, ndim, shape);
    if (e) return e;
    memcpy((*out)->storage->data, data, (size_t)ml_tensor_numel(*out) * ml_dtype_size(dt));
    return ML_OK;
}

/* ----------------------------------------------------------------- queries */
int64_t ml_tensor_numel(const ml_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

bool ml_tensor_is_contiguous(const ml_tensor *t) {
    if (t->layout) return false;
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != s) return false;
        s *= t->shape[i];
    }
    return true;
}

int ml_wrap_dim(const char *op, int dim, int ndim) {
    int n = ndim > 0 ? ndim : 1;
    if (dim < -n || dim >= n) {
        ml_seterr(ML_ERR_DIM, "%s: dim %d out of range for a tensor of rank %d (expected %d..%d)", op, dim,
                  ndim, -n, n - 1);
        return -1;
    }
    return dim < 0 ? dim + n : dim;
}

double ml_load_elem(const void *base, ml_dtype dt, int64_t i) {
    switch (dt) {
    case ML_F32: return ((const float *)base)[i];
    case ML_F64: return ((const double *)base)[i];
    case ML_I32: return ((const int32_t *)base)[i];
    case ML_I64: return (double)((const int64_t *)base)[i];
    case ML_U8: return ((const uint8_t *)base)[i];
    case ML_BOOL: return ((const uint8_t *)base)[i] != 0;
    case ML_BF16: return ml_bf16_to_f32(((const uint16_t *)base)[i]);
    case ML_F16: return ml_f16_to_f32(((const uint16_t *)base)[i]);
    default: return 0;
    }
}

void ml_store_elem(void *base, ml_dtype dt, int64_t i, double v) {
    switch (dt) {
    case ML_F32: ((float *)base)[i] = (float)v; break;
    case ML_F64: ((double *)base)[i] = v; break;
    case ML_I32: ((int32_t *)base)[i] = (int32_t)v; break;
    case ML_I64: ((int64_t *)base)[i] = (int64_t)v; break;
    case ML_U8: ((uint8_t *)base)[i] = (uint8_t)(int64_t)v; break;
    case ML_BOOL: ((uint8_t *)base)[i] = v != 0; break;
    case ML_BF16: ((uint16_t *)base)[i] = ml_f32_to_bf16((float)v); break;
    case ML_F16: ((uint16_t *)base)[i] = ml_f32_to_f16((float)v); break;
    default: break;
    }
}

double ml_tensor_get(const ml_tensor *t, const int64_t *idx) {
    int64_t off = t->offset;
    if (t->layout == ML_LAYOUT_NC16) { /* [N][C/16][spatial][16] */
        int64_t S = 1, s = 0;
        for (int i = 2; i < t->ndim; i++) {
            S *= t->shape[i];
            s = s * t->shape[i] + idx[i];
        }
        int64_t C = t->shape[1], c = idx[1];
        off = ((idx[0] * (C / 16) + c / 16) * S + s) * 16 + c % 16;
    } else {
        for (int i = 0; i < t->ndim; i++) off += idx[i] * t->stride[i];
    }
    if (ml_tensor_is_cuda(t)) { /* one element to the host */
        unsigned char buf[16];
        size_t es = ml_dtype_size((ml_dtype)t->dtype);
        if (ml_cuda_memcpy(buf, ML_CUDA_HOST, (char *)t->storage->data + off * (int64_t)es,
                           t->storage->device.index, es))
            return NAN;
        return ml_load_elem(buf, (ml_dtype)t->dtype, 0);
    }
    return ml_load_elem(t->storage->data, (ml_dtype)t->dtype, off);
}

double ml_tensor_item(const ml_tensor *t) {
    int64_t idx[ML_MAX_DIMS] = {0};
    return ml_tensor_get(t, idx);
}

static ml_err (*g_to_plain[ML_NLAYOUTS])(ml_tensor *t);

void ml_register_layout_plain(int layout, ml_err (*to_plain)(ml_tensor *t)) {
    if (layout > 0 && layout < ML_NLAYOUTS) g_to_plain[layout] = to_plain;
}

ml_err ml_tensor_plain(ml_tensor *t) {
    if (!t->layout) return ML_OK;
    if (t->layout > 0 && t->layout < ML_NLAYOUTS && g_to_plain[t->layout]) return g_to_plain[t->layout](t);
    return ml_seterr(ML_ERR_UNSUPPORTED, "tensor has backend layout %d and no reorder is registered", t->layout);
}

ml_err ml_broadcast_shapes(const char *op, int na, const int64_t *sa, int nb, const int64_t *sb, int *nout,
                           int64_t *sout) {
    int n = na > nb ? na : nb;
    for (int i = 0; i < n; i++) {
        int ia = i - (n - na), ib = i - (n - nb);
        int64_t a = ia >= 0 ? sa[ia] : 1, b = ib >= 0 ? sb[ib] : 1;
        if (a != b && a != 1 && b != 1)
            return ml_seterr(ML_ERR_SHAPE, "%s: shapes %s and %s cannot be broadcast (dim %d: %lld vs %lld)", op,
                             ml_shape_str(na, sa), ml_shape_str(nb, sb), i, (long long)a, (long long)b);
        sout[i] = a == 1 ? b : a;
    }
    *nout = n;
    return ML_OK;
}

/* ---------------------------------------------------------------- threads */
static int g_threads;
int ml_num_threads(void) {
    if (g_threads <= 0) {
#ifdef _OPENMP
        g_threads = omp_get_max_threads();
#else
        g_threads = 1;
#endif
    }
    return g_threads;
}
void ml_set_num_threads(int n) {
    if (n < 1) n = 1;
    g_threads = n;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
}

/* --------------------------------------------------------------- strided copy */
static ml_err copy_host(ml_tensor *dst, const ml_tensor *src);

ml_err ml_check_same_device(const char *op, int n, ml_tensor *const *ts) {
    const ml_tensor *first = NULL;
    for (int i = 0; i < n; i++) {
        if (!ts[i]) continue;
        if (!first) { first = ts[i]; continue; }
        if (!ml_device_eq(ts[i]->storage->device, first->storage->device)) {
            char a[32];
            snprintf(a, sizeof a, "%s", ml_device_str(first->storage->device));
            return ml_seterr(ML_ERR_DEVICE,
                             "%s: expected all tensors on one device, got %s (shape %s) and %s (shape %s); move one "
                             "with :to()",
                             op, a, ml_shape_str(first->ndim, first->shape), ml_device_str(ts[i]->storage->device),
                             ml_shape_str(ts[i]->ndim, ts[i]->shape));
        }
    }
    return ML_OK;
}

ml_err ml_check_cpu(const char *op, const ml_tensor *t) {
    if (!t || !ml_tensor_is_cuda(t)) return ML_OK;
    return ml_seterr(ML_ERR_DEVICE, "%s: not implemented for %s tensors yet (shape %s); move it with :cpu()", op,
                     ml_device_str(t->storage->device), ml_shape_str(t->ndim, t->shape));
}

void ml_cuda_opnd_of(ml_cuda_opnd *o, const ml_tensor *t, int ndim, const int64_t *shape) {
    memset(o, 0, sizeof *o);
    o->base = (char *)t->storage->data;
    o->dtype = t->dtype;
    o->off = t->offset;
    ml_broadcast_strides(t, ndim, shape, o->st);
}

/* a contiguous copy of t (same dtype) on t's device, or t itself (retained) when it is contiguous */
static ml_err dense_same_device(ml_tensor **out, const ml_tensor *t) {
    if (ml_tensor_is_contiguous(t)) {
        ml_tensor_retain((ml_tensor *)t);
        *out = (ml_tensor *)t;
        return ML_OK;
    }
    ml_err e = ml_tensor_empty_on(out, ml_tensor_device(t), (ml_dtype)t->dtype, t->ndim, t->shape);
    if (!e) e = ml_copy_(*out, t);
    if (e) { ml_tensor_release(*out); *out = NULL; }
    return e;
}

/* Copy between devices: the source made dense on its own device, one transfer into a dense buffer
 * on the target device, then the (broadcasting, converting) copy there. */
static ml_err copy_across(ml_tensor *dst, const ml_tensor *src) {
    ml_tensor *ds = NULL, *stage = NULL;
    ml_err e = dense_same_device(&ds, src);
    if (e) return e;
    if (!(e = ml_tensor_empty_on(&stage, ml_tensor_device(dst), (ml_dtype)ds->dtype, ds->ndim, ds->shape))) {
        size_t nb = (size_t)ml_tensor_numel(ds) * ml_dtype_size((ml_dtype)ds->dtype);
        int dd = ml_tensor_is_cuda(dst) ? dst->storage->device.index : ML_CUDA_HOST;
        int sd = ml_tensor_is_cuda(ds) ? ds->storage->device.index : ML_CUDA_HOST;
        e = ml_cuda_memcpy(stage->storage->data, dd,
                           (char *)ds->storage->data + ds->offset * (int64_t)ml_dtype_size((ml_dtype)ds->dtype), sd,
                           nb);
        if (!e) e = ml_copy_(dst, stage);
    }
    ml_tensor_release(ds);
    ml_tensor_release(stage);
    return e;
}

/* Generic copy with dtype conversion and broadcasting of src into dst (on any devices). */
ml_err ml_copy_(ml_tensor *dst, const ml_tensor *src) {
    if (!ml_tensor_is_cuda(dst) && !ml_tensor_is_cuda(src)) return copy_host(dst, src);
    if (!ml_device_eq(dst->storage->device, src->storage->device)) return copy_across(dst, src);
    int nb;
    int64_t bs[ML_MAX_DIMS];
    ml_err e = ml_broadcast_shapes("copy_", dst->ndim, dst->shape, src->ndim, src->shape, &nb, bs);
    if (e) return e;
    for (int i = 0; i < nb; i++)
        if (nb != dst->ndim || bs[i] != dst->shape[i])
            return ml_seterr(ML_ERR_SHAPE, "copy_: source %s does not broadcast to destination %s",
                             ml_shape_str(src->ndim, src->shape), ml_shape_str(dst->ndim, dst->shape));
    ml_cuda_opnd od, os;
    ml_cuda_opnd_of(&od, dst, dst->ndim, dst->shape);
    ml_cuda_opnd_of(&os, src, dst->ndim, dst->shape);
    if ((e = ml_cuda_copy(dst->ndim, dst->shape, &od, &os))) return e;
    dst->storage->version++;
    return ML_OK;
}

static ml_err copy_host(ml_tensor *dst, const ml_tensor *src) {
    if (dst->layout || src->layout)
        return ml_seterr(ML_ERR_UNSUPPORTED, "copy_: backend layout tensors must be made plain first");
    int nb;
    int64_t bs[ML_MAX_DIMS];
    ml_err e = ml_broadcast_shapes("copy_", dst->ndim, dst->shape, src->ndim, src->shape, &nb, bs);
    if (e) return e;
    if (nb != dst->ndim) goto bad;
    for (int i = 0; i < nb; i++) if (bs[i] != dst->shape[i]) goto bad;
    {
        int64_t sstr[ML_MAX_DIMS];
        ml_broadcast_strides(src, dst->ndim, dst->shape, sstr);
        ml_dtype dd = (ml_dtype)dst->dtype, sd = (ml_dtype)src->dtype;
        char *dbase = (char *)dst->storage->data, *sbase = (char *)src->storage->data;
        int64_t n = ml_tensor_numel(dst);
        ml_iter2 it;
        ml_iter2_init(&it, dst->ndim, dst->shape, dst->stride, dst->offset, sstr, src->offset);
        if (dd == sd && it.ndim <= 1 && (it.ndim == 0 || (it.s[0][0] == 1 && it.s[1][0] == 1))) {
            size_t es = ml_dtype_size(dd);
            memcpy(dbase + it.o[0] * es, sbase + it.o[1] * es, (size_t)n * es);
        } else if (dd == ML_F32 && sd == ML_F32) {
            ML_ITER2_FOR(it, n, float, dbase, float, sbase, *pa = *pb);
        } else if (dd == ML_F64 && sd == ML_F64) {
            ML_ITER2_FOR(it, n, double, dbase, double, sbase, *pa = *pb);
        } else if (dd == ML_F32 && sd == ML_F64) {
            ML_ITER2_FOR(it, n, float, dbase, double, sbase, *pa = (float)*pb);
        } else if (dd == ML_F64 && sd == ML_F32) {
            ML_ITER2_FOR(it, n, double, dbase, float, sbase, *pa = *pb);
        } else {
            ML_ITER2_FOR_IDX(it, n, ia, ib, ml_store_elem(dbase, dd, ia, ml_load_elem(sbase, sd, ib)));
        }
        dst->storage->version++;
        return ML_OK;
    }
bad:
    return ml_seterr(ML_ERR_SHAPE, "copy_: source %s does not broadcast to destination %s",
                     ml_shape_str(src->ndim, src->shape), ml_shape_str(dst->ndim, dst->shape));
}

void ml_broadcast_strides(const ml_tensor *t, int ndim, const int64_t *shape, int64_t *stride) {
    int off = ndim - t->ndim;
    for (int i = 0; i < ndim; i++) {
        int j = i - off;
        stride[i] = (j < 0 || t->shape[j] == 1) ? 0 : t->stride[j];
        (void)shape;
    }
}

/* ----------------------------------------------------------------- creation */
ml_err ml_fill_(ml_tensor *t, double v) {
    if (t->layout) return ml_seterr(ML_ERR_UNSUPPORTED, "fill_: backend layout");
    ml_inplace_cut(t); /* the values no longer depend on t's history */
    if (ml_tensor_is_cuda(t)) {
        ml_cuda_opnd o;
        ml_cuda_opnd_of(&o, t, t->ndim, t->shape);
        ml_err e = ml_cuda_fill(t->ndim, t->shape, &o, v);
        if (!e) t->storage->version++;
        return e;
    }
    int64_t n = ml_tensor_numel(t);
    char *base = (char *)t->storage->data;
    ml_dtype dt = (ml_dtype)t->dtype;
    ml_iter1 it;
    ml_iter1_init(&it, t->ndim, t->shape, t->stride, t->offset);
    if (dt == ML_F32) { float fv = (float)v; ML_ITER1_FOR(it, n, float, base, *p = fv); }
    else if (dt == ML_F64) { ML_ITER1_FOR(it, n, double, base, *p = v); }
    else { ML_ITER1_FOR_IDX(it, n, i, ml_store_elem(base, dt, i, v)); }
    t->storage->version++;
    return ML_OK;
}

ml_err ml_zeros_on(ml_tensor **out, ml_device dev, ml_dtype dt, int ndim, const int64_t *shape) {
    ml_err e = ml_tensor_empty_on(out, dev, dt, ndim, shape);
    if (!e && (e = ml_fill_(*out, 0))) {
        ml_tensor_release(*out);
        *out = NULL;
    }
    return e;
}

ml_err ml_full(ml_tensor **out, ml_dtype dt, int ndim, const int64_t *shape, double v) {
    ml_err e = ml_tensor_empty(out, dt, ndim, shape);
    if (e) return e;
    int64_t n = ml_tensor_numel(*out);
    void *d = (*out)->storage->data;
    if (v == 0.0 && !signbit(v)) memset(d, 0, (size_t)n * ml_dtype_size(dt));
    else ml_fill_(*out, v);
    return ML_OK;
}
ml_err ml_zeros(ml_tensor **out, ml_dtype dt, int ndim, const int64_t *shape) { return ml_full(out, dt, ndim, shape, 0.0); }
ml_err ml_ones(ml_tensor **out, ml_dtype dt, int ndim, const int64_t *shape) { return ml_full(out, dt, ndim, shape, 1.0); }

ml_err ml_arange(ml_tensor **out, ml_dtype dt, double start, double end, double step) {
    *out = NULL;
    if (step == 0 || !isfinite(start) || !isfinite(end) || !isfinite(step))
        return ml_seterr(ML_ERR_ARG, "arange: invalid range start=%g end=%g step=%g", start, end, step);
    double cnt = ceil((end - start) / step);
    if (cnt < 0) cnt = 0;
    int64_t n = (int64_t)cnt;
    ml_err e = ml_tensor_empty(out, dt, 1, &n);
    if (e) return e;
    for (int64_t i = 0; i < n; i++) ml_store_elem((*out)->storage->data, dt, i, start + (double)i * step);
    return ML_OK;
}

ml_err ml_linspace(ml_tensor **out, ml_dtype dt, double start, double end, int64_t steps) {
    *out = NULL;
    if (steps < 0) return ml_seterr(ML_ERR_ARG, "linspace: steps must be >= 0, got %lld", (long long)steps);
    ml_err e = ml_tensor_empty(out, dt, 1, &steps);
    if (e) return e;
    double d = steps > 1 ? (end - start) / (double)(steps - 1) : 0;
    for (int64_t i = 0; i < steps; i++) {
        /* symmetric formula like PyTorch: fill from both ends */
        double v = i < steps / 2 ? start + d * (double)i : end - d * (double)(steps - 1 - i);
        ml_store_elem((*out)->storage->data, dt, i, v);
    }
    return ML_OK;
}

ml_err ml_eye(ml_tensor **out, ml_dtype dt, int64_t n, int64_t m) {
    if (m < 0) m = n;
    int64_t sh[2] = {n, m};
    ml_err e = ml_zeros(out, dt, 2, sh);
    if (e) return e;
    for (int64_t i = 0; i < n && i < m; i++) ml_store_elem((*out)->storage->data, dt, i * m + i, 1.0);
    return ML_OK;
}

/* ------------------------------------------------------------------- random */
static uint64_t g_seed = 0x5eed5eedULL;
static _Atomic uint64_t g_rng_offset;

void ml_manual_seed(uint64_t seed) { g_seed = seed; atomic_store(&g_rng_offset, 0); }
uint64_t ml_rng_seed(void) { return g_seed; }
uint64_t ml_rng_offset(void) { return atomic_load(&g_rng_offset); }
void ml_rng_set_state(uint64_t seed, uint64_t offset) { g_seed = seed; atomic_store(&g_rng_offset, offset); }
uint64_t ml_rng_reserve(uint64_t n) { return atomic_fetch_add(&g_rng_offset, n); }

void ml_philox(uint64_t counter, uint64_t seed, uint32_t out[4]) {
    uint32_t c0 = (uint32_t)counter, c1 = (uint32_t)(counter >> 32), c2 = 0, c3 = 0;
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1; c3 = (uint32_t)p0; c0 = n0; c2 = n2;
        k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

typedef enum { DIST_UNIFORM, DIST_NORMAL, DIST_INT } dist_kind;

/* Fill a contiguous buffer: element i uses counter base+i/4 lane i%4 (uniform/int) or
 * base+i/2 pair (normal, Box-Muller on lanes). */
static void fill_random(void *data, ml_dtype dt, int64_t n, dist_kind kind, double a, double b) {
    uint64_t seed = g_seed;
    uint64_t base = ml_rng_reserve((uint64_t)(n + 3) / 4 + 1);
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t blk = 0; blk < (n + 3) / 4; blk++) {
        uint32_t r[4];
        ml_philox(base + (uint64_t)blk, seed, r);
        double v[4];
        if (kind == DIST_NORMAL) {
            for (int j = 0; j < 4; j += 2) {
                double u1 = ((double)r[j] + 1.0) / 4294967296.0, u2 = (double)r[j + 1] / 4294967296.0;
                double rad = sqrt(-2.0 * log(u1));
                v[j] = a + b * rad * cos(2 * M_PI * u2);
                v[j + 1] = a + b * rad * sin(2 * M_PI * u2);
            }
        } else if (kind == DIST_UNIFORM) {
            for (int j = 0; j < 4; j++) {
                double u = dt == ML_F64 ? (double)r[j] / 4294967296.0 : (double)ml_u32_to_unit(r[j]);
                v[j] = a + (b - a) * u;
            }
        } else {
            uint64_t range = (uint64_t)(b - a);
            for (int j = 0; j < 4; j++) v[j] = a + (double)(range ? r[j] % range : 0);
        }
        for (int j = 0; j < 4 && blk * 4 + j < n; j++) ml_store_elem(data, dt, blk * 4 + j, v[j]);
    }
}

static ml_err random_tensor(ml_tensor **out, ml_dtype dt, int ndim, const int64_t *shape, dist_kind k, double a,
                            double b, const char *op) {
    if (k != DIST_INT && !ml_dtype_is_float(dt)) {
        *out = NULL;
        return ml_seterr(ML_ERR_DTYPE, "%s: dtype %s is not floating point", op, ml_dtype_name(dt));
    }
    ml_err e = ml_tensor_empty(out, dt, ndim, shape);
    if (e) return e;
    fill_random((*out)->storage->data, dt, ml_tensor_numel(*out), k, a, b);
    return ML_OK;
}

ml_err ml_rand(ml_tensor **out, ml_dtype dt, int ndim, const int64_t *shape) {
    return random_tensor(out, dt, ndim, shape, DIST_UNIFORM, 0, 1, "rand");
}
ml_err ml_randn(ml_tensor **out, ml_dtype dt, int ndim, const int64_t *shape) {
    return random_tensor(out, dt, ndim, shape, DIST_NORMAL, 0, 1, "randn");
}
ml_err ml_randint(ml_tensor **out, ml_dtype dt, int64_t low, int64_t high, int ndim, const int64_t *shape) {
    if (high <= low) {
        *out = NULL;
        return ml_seterr(ML_ERR_ARG, "randint: high (%lld) must be greater than low (%lld)", (long long)high, (long long)low);
    }
    return random_tensor(out, dt, ndim, shape, DIST_INT, (double)low, (double)high, "randint");
}

static ml_err random_inplace(ml_tensor *t, dist_kind k, double a, double b, const char *op) {
    if (!ml_dtype_is_float((ml_dtype)t->dtype))
        return ml_seterr(ML_ERR_DTYPE, "%s: dtype %s is not floating point", op, ml_dtype_name((ml_dtype)t->dtype));
    ml_tensor *tmp;
    ml_err e = random_tensor(&tmp, (ml_dtype)t->dtype, t->ndim, t->shape, k, a, b, op);
    if (e) return e;
    e = ml_copy_(t, tmp);
    ml_tensor_release(tmp);
    if (!e) ml_inplace_cut(t); /* the values no longer depend on t's history */
    return e;
}
ml_err ml_uniform_(ml_tensor *t, double lo, double hi) { return random_inplace(t, DIST_UNIFORM, lo, hi, "uniform_"); }
ml_err ml_normal_(ml_tensor *t, double mean, double std) { return random_inplace(t, DIST_NORMAL, mean, std, "normal_"); }
