/* oneDNN plumbing shared by matmul/conv/pool: one engine, per-thread streams, a small LRU
 * primitive cache, memory arguments, reorders, scratch buffers and common argument checks. */
#include "ml_dnnl_priv.h"

#include <dnnl_debug.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* ---------------------------------------------------------------- engine */
static pthread_once_t g_eng_once = PTHREAD_ONCE_INIT;
static dnnl_engine_t g_engine;
static dnnl_status_t g_engine_status;
static pthread_key_t g_stream_key;
static _Thread_local dnnl_stream_t tls_stream;

static void stream_dtor(void *p) {
    if (p) dnnl_stream_destroy((dnnl_stream_t)p);
}

static void engine_init(void) {
    g_engine_status = dnnl_engine_create(&g_engine, dnnl_cpu, 0);
    ml_register_cache_flush(mld_cache_clear);
    if (g_engine_status != dnnl_success) g_engine = NULL;
    pthread_key_create(&g_stream_key, stream_dtor);
}

ml_err mld_fail(dnnl_status_t st, const char *op, const char *what) {
    if (st == dnnl_unimplemented)
        return ml_seterr(ML_ERR_UNSUPPORTED, "%s: oneDNN has no implementation for this %s", op, what);
    if (st == dnnl_out_of_memory) return ml_seterr(ML_ERR_OOM, "%s: oneDNN %s: out of memory", op, what);
    return ml_seterr(ML_ERR_INTERNAL, "%s: oneDNN %s failed: %s", op, what, dnnl_status2str(st));
}

dnnl_engine_t mld_engine(const char *op) {
    pthread_once(&g_eng_once, engine_init);
    if (!g_engine) mld_fail(g_engine_status, op, "engine creation");
    return g_engine;
}

dnnl_stream_t mld_stream(const char *op) {
    if (tls_stream) return tls_stream;
    dnnl_engine_t eng = mld_engine(op);
    if (!eng) return NULL;
    dnnl_status_t st = dnnl_stream_create(&tls_stream, eng, dnnl_stream_default_flags);
    if (st != dnnl_success) {
        tls_stream = NULL;
        mld_fail(st, op, "stream creation");
        return NULL;
    }
    pthread_setspecific(g_stream_key, tls_stream);
    return tls_stream;
}

static void pool_clear(void);

/* ------------------------------------------------------------------ cache */
#define MLD_CACHE_CAP 128
static pthread_mutex_t g_cache_mu = PTHREAD_MUTEX_INITIALIZER;
static mld_entry *g_cache[MLD_CACHE_CAP];
static uint64_t g_clock;

static uint64_t key_hash(const int64_t *k, int n) {
    uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i < n; i++) {
        h ^= (uint64_t)k[i];
        h *= 1099511628211ULL;
        h ^= h >> 29;
    }
    return h;
}

static void entry_destroy(mld_entry *e) {
    for (int i = 0; i < MLD_NRD; i++)
        if (e->rd[i]) dnnl_primitive_destroy(e->rd[i]);
    if (e->prim) dnnl_primitive_destroy(e->prim);
    if (e->pd) dnnl_primitive_desc_destroy(e->pd);
    if (e->hint) mld_put(e->hint);
    free(e);
}

static void entry_unref(mld_entry *e) {
    if (__atomic_sub_fetch(&e->refs, 1, __ATOMIC_ACQ_REL) == 0) entry_destroy(e);
}

void mld_put(mld_entry *e) {
    if (e) entry_unref(e);
}

ml_err mld_get(mld_entry **out, const int64_t *key, int n, mld_build_fn build, void *ud) {
    *out = NULL;
    if (n > MLD_KEY_WORDS) return ml_seterr(ML_ERR_INTERNAL, "primitive cache: key of %d words is too long", n);
    uint64_t h = key_hash(key, n);
    pthread_mutex_lock(&g_cache_mu);
    for (int i = 0; i < MLD_CACHE_CAP; i++) {
        mld_entry *e = g_cache[i];
        if (e && e->hash == h && e->keylen == n && memcmp(e->key, key, sizeof(int64_t) * (size_t)n) == 0) {
            e->stamp = ++g_clock;
            __atomic_add_fetch(&e->refs, 1, __ATOMIC_RELAXED);
            pthread_mutex_unlock(&g_cache_mu);
            *out = e;
            return ML_OK;
        }
    }
    pthread_mutex_unlock(&g_cache_mu);

    /* Build outside the lock (primitive creation can take milliseconds, and builds may look up
     * other entries, e.g. a forward hint). Two threads may build the same key; one wins. */
    mld_entry *e = calloc(1, sizeof *e);
    if (!e) return ml_seterr(ML_ERR_OOM, "primitive cache: out of memory");
    memcpy(e->key, key, sizeof(int64_t) * (size_t)n);
    e->keylen = n;
    e->hash = h;
    e->refs = 1;
    ml_err err = build(e, ud);
    if (err == ML_ERR_UNSUPPORTED) {
        for (int i = 0; i < MLD_NRD; i++)
            if (e->rd[i]) { dnnl_primitive_destroy(e->rd[i]); e->rd[i] = NULL; }
        if (e->prim) { dnnl_primitive_destroy(e->prim); e->prim = NULL; }
        if (e->pd) { dnnl_primitive_desc_destroy(e->pd); e->pd = NULL; }
        if (e->hint) { mld_put(e->hint); e->hint = NULL; }
        e->unsupported = true;
    } else if (err) {
        entry_destroy(e);
        return err;
    }

    pthread_mutex_lock(&g_cache_mu);
    int slot = -1;
    uint64_t oldest = UINT64_MAX;
    for (int i = 0; i < MLD_CACHE_CAP; i++) {
        mld_entry *c = g_cache[i];
        if (!c) { slot = i; oldest = 0; break; }
        if (c->hash == h && c->keylen == n && memcmp(c->key, key, sizeof(int64_t) * (size_t)n) == 0) {
            /* someone else built it meanwhile: use theirs */
            c->stamp = ++g_clock;
            __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
            pthread_mutex_unlock(&g_cache_mu);
            entry_destroy(e);
            *out = c;
            return ML_OK;
        }
        if (c->stamp < oldest) { oldest = c->stamp; slot = i; }
    }
    mld_entry *victim = g_cache[slot];
    e->stamp = ++g_clock;
    e->refs = 2; /* cache + caller */
    g_cache[slot] = e;
    pthread_mutex_unlock(&g_cache_mu);
    if (victim) entry_unref(victim);
    *out = e;
    return ML_OK;
}

void mld_cache_clear(void) {
    mld_entry *old[MLD_CACHE_CAP];
    pthread_mutex_lock(&g_cache_mu);
    memcpy(old, g_cache, sizeof old);
    memset(g_cache, 0, sizeof g_cache);
    pthread_mutex_unlock(&g_cache_mu);
    for (int i = 0; i < MLD_CACHE_CAP; i++)
        if (old[i]) entry_unref(old[i]);
    pool_clear();
}

int mld_cache_size(void) {
    int n = 0;
    pthread_mutex_lock(&g_cache_mu);
    for (int i = 0; i < MLD_CACHE_CAP; i++) n += g_cache[i] != NULL;
    pthread_mutex_unlock(&g_cache_mu);
    return n;
}

/* ------------------------------------------------------------ executing */
ml_err mld_arg(mld_args *A, const char *op, int arg, const dnnl_memory_desc_t *md, void *ptr) {
    if (A->n >= MLD_MAX_ARGS) return ml_seterr(ML_ERR_INTERNAL, "%s: too many oneDNN arguments", op);
    dnnl_engine_t eng = mld_engine(op);
    if (!eng) return ML_ERR_INTERNAL;
    dnnl_memory_t m;
    dnnl_status_t st = dnnl_memory_create(&m, md, eng, ptr);
    if (st != dnnl_success) return mld_fail(st, op, "memory creation");
    A->a[A->n].arg = arg;
    A->a[A->n].memory = m;
    A->n++;
    return ML_OK;
}

void mld_args_free(mld_args *A) {
    for (int i = 0; i < A->n; i++) dnnl_memory_destroy(A->a[i].memory);
    A->n = 0;
}

ml_err mld_exec(const char *op, dnnl_primitive_t p, mld_args *A) {
    dnnl_stream_t s = mld_stream(op);
    ml_err e = ML_OK;
    if (!s) e = ML_ERR_INTERNAL;
    else {
        dnnl_status_t st = dnnl_primitive_execute(p, s, A->n, A->a);
        if (st == dnnl_success) st = dnnl_stream_wait(s);
        if (st != dnnl_success) e = mld_fail(st, op, "execution");
    }
    mld_args_free(A);
    return e;
}

ml_err mld_reorder(const char *op, dnnl_primitive_t r, const dnnl_memory_desc_t *smd, const void *src,
                   const dnnl_memory_desc_t *dmd, void *dst) {
    mld_args A = {0};
    ml_err e;
    if ((e = mld_arg(&A, op, DNNL_ARG_FROM, smd, (void *)src)) || (e = mld_arg(&A, op, DNNL_ARG_TO, dmd, dst))) {
        mld_args_free(&A);
        return e;
    }
    return mld_exec(op, r, &A);
}

ml_err mld_make_reorder(dnnl_primitive_t *out, const char *op, const dnnl_memory_desc_t *smd,
                        const dnnl_memory_desc_t *dmd) {
    *out = NULL;
    if (dnnl_memory_desc_equal(smd, dmd)) return ML_OK;
    dnnl_engine_t eng = mld_engine(op);
    if (!eng) return ML_ERR_INTERNAL;
    dnnl_primitive_desc_t pd;
    MLD_TRY(dnnl_reorder_primitive_desc_create(&pd, smd, eng, dmd, eng, NULL), op, "reorder descriptor");
    dnnl_status_t st = dnnl_primitive_create(out, pd);
    dnnl_primitive_desc_destroy(pd);
    if (st != dnnl_success) {
        *out = NULL;
        return mld_fail(st, op, "reorder creation");
    }
    return ML_OK;
}

ml_err mld_md_plain(dnnl_memory_desc_t *md, const char *op, int ndims, const int64_t *dims) {
    int64_t strides[DNNL_MAX_NDIMS];
    ml_contiguous_strides(ndims, dims, strides);
    return mld_md_strided(md, op, ndims, dims, strides);
}

ml_err mld_md_strided(dnnl_memory_desc_t *md, const char *op, int ndims, const int64_t *dims,
                      const int64_t *strides) {
    dnnl_dims_t d, s;
    for (int i = 0; i < ndims; i++) { d[i] = dims[i]; s[i] = strides[i]; }
    MLD_TRY(dnnl_memory_desc_init_by_strides(md, ndims, d, dnnl_f32, s), op, "memory descriptor");
    return ML_OK;
}

ml_err mld_md_any(dnnl_memory_desc_t *md, const char *op, int ndims, const int64_t *dims) {
    dnnl_dims_t d;
    for (int i = 0; i < ndims; i++) d[i] = dims[i];
    MLD_TRY(dnnl_memory_desc_init_by_tag(md, ndims, d, dnnl_f32, dnnl_format_tag_any), op, "memory descriptor");
    return ML_OK;
}

/* ------------------------------------------------------- NC16 blocked tensors */
static dnnl_format_tag_t nc16_tag(int ndims) {
    return ndims == 3 ? dnnl_aBc16b : ndims == 4 ? dnnl_aBcd16b : ndims == 5 ? dnnl_aBcde16b : dnnl_format_tag_undef;
}

ml_err mld_md_nc16(dnnl_memory_desc_t *md, const char *op, int ndims, const int64_t *dims) {
    dnnl_dims_t d;
    for (int i = 0; i < ndims; i++) d[i] = dims[i];
    MLD_TRY(dnnl_memory_desc_init_by_tag(md, ndims, d, dnnl_f32, nc16_tag(ndims)), op, "memory descriptor");
    return ML_OK;
}

bool mld_nc16_shape_ok(int ndims, const int64_t *dims) {
    return ndims >= 3 && ndims <= 5 && dims[1] > 0 && dims[1] % 16 == 0;
}

bool mld_md_is_nc16(const dnnl_memory_desc_t *md, int ndims, const int64_t *dims) {
    if (!mld_nc16_shape_ok(ndims, dims)) return false;
    dnnl_memory_desc_t b;
    if (mld_md_nc16(&b, "layout", ndims, dims)) return false;
    return dnnl_memory_desc_equal(md, &b) != 0;
}

enum { NC16K = 0x4e433136 };

static ml_err nc16_build(mld_entry *e, void *ud) {
    const ml_tensor *t = ud;
    ml_err err;
    if ((err = mld_md_nc16(&e->md[0], "layout", t->ndim, t->shape)) ||
        (err = mld_md_plain(&e->md[1], "layout", t->ndim, t->shape)))
        return err;
    return mld_make_reorder(&e->rd[0], "layout", &e->md[0], &e->md[1]);
}

/* ML_LAYOUT_NC16 -> plain strides, in place: reorder into a new buffer that replaces the storage's */
static ml_err nc16_to_plain(ml_tensor *t) {
    if (t->layout != ML_LAYOUT_NC16) return ML_OK;
    mld_key key = {.n = 0};
    mld_k(&key, NC16K);
    mld_k(&key, t->ndim);
    mld_ka(&key, t->ndim, t->shape);
    mld_entry *e;
    ml_err err = mld_get(&e, key.w, key.n, nc16_build, t);
    if (err) return err;
    size_t nb = t->storage->nbytes;
    void *p = ml_alloc_bytes(nb);
    if (!p) { mld_put(e); return ML_ERR_OOM; }
    if (e->rd[0]) err = mld_reorder("layout", e->rd[0], &e->md[0], ml_tensor_data(t), &e->md[1], p);
    else memcpy(p, ml_tensor_data(t), nb);
    mld_put(e);
    if (err) { ml_free_bytes(p, nb); return err; }
    ml_free_bytes(t->storage->data, nb);
    t->storage->data = p;
    t->layout = 0;
    ml_contiguous_strides(t->ndim, t->shape, t->stride);
    return ML_OK;
}

void mld_mark_nc16(ml_tensor *t) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, mld_register_layouts);
    t->layout = ML_LAYOUT_NC16;
}

void mld_register_layouts(void) { ml_register_layout_plain(ML_LAYOUT_NC16, nc16_to_plain); }

/* ------------------------------------------------------------ scratch pool */
#define MLD_POOL_MAX 6
#define MLD_POOL_BYTES ((size_t)1 << 30)
#define MLD_HUGE ((size_t)2 << 20)
static pthread_mutex_t g_pool_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    void *p;
    size_t cap;
} g_pool[MLD_POOL_MAX];
static size_t g_pool_bytes;

ml_err mld_buf_alloc(mld_buf *b, size_t n, const char *op) {
    if (n == 0) n = 1;
    b->n = n;
    b->p = NULL;
    pthread_mutex_lock(&g_pool_mu);
    int best = -1;
    for (int i = 0; i < MLD_POOL_MAX; i++)
        if (g_pool[i].p && g_pool[i].cap >= n && g_pool[i].cap <= 2 * n + MLD_HUGE &&
            (best < 0 || g_pool[i].cap < g_pool[best].cap))
            best = i;
    if (best >= 0) {
        b->p = g_pool[best].p;
        b->cap = g_pool[best].cap;
        g_pool_bytes -= b->cap;
        g_pool[best].p = NULL;
        g_pool[best].cap = 0;
    }
    pthread_mutex_unlock(&g_pool_mu);
    if (b->p) return ML_OK;
    b->cap = n >= 2 * MLD_HUGE ? (n + MLD_HUGE - 1) / MLD_HUGE * MLD_HUGE : n;
    b->p = ml_alloc_bytes(b->cap);
    if (!b->p) {
        b->n = b->cap = 0;
        return ml_seterr(ML_ERR_OOM, "%s: out of memory allocating a %zu-byte scratch buffer", op, n);
    }
    if (b->cap >= 2 * MLD_HUGE) {
        /* transparent huge pages for the 2 MiB-aligned interior: far fewer page faults */
        uintptr_t lo = ((uintptr_t)b->p + MLD_HUGE - 1) & ~(uintptr_t)(MLD_HUGE - 1);
        uintptr_t hi = ((uintptr_t)b->p + b->cap) & ~(uintptr_t)(MLD_HUGE - 1);
        if (hi > lo) madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
    }
    return ML_OK;
}

void mld_buf_free(mld_buf *b) {
    if (!b->p) return;
    void *p = b->p;
    size_t cap = b->cap;
    b->p = NULL;
    b->n = b->cap = 0;
    pthread_mutex_lock(&g_pool_mu);
    int slot = -1;
    if (cap >= 65536 && g_pool_bytes + cap <= MLD_POOL_BYTES)
        for (int i = 0; i < MLD_POOL_MAX && slot < 0; i++)
            if (!g_pool[i].p) slot = i;
    if (slot >= 0) {
        g_pool[slot].p = p;
        g_pool[slot].cap = cap;
        g_pool_bytes += cap;
        p = NULL;
    }
    pthread_mutex_unlock(&g_pool_mu);
    if (p) ml_free_bytes(p, cap);
}

static void pool_clear(void) {
    pthread_mutex_lock(&g_pool_mu);
    for (int i = 0; i < MLD_POOL_MAX; i++) {
        if (g_pool[i].p) ml_free_bytes(g_pool[i].p, g_pool[i].cap);
        g_pool[i].p = NULL;
        g_pool[i].cap = 0;
    }
    g_pool_bytes = 0;
    pthread_mutex_unlock(&g_pool_mu);
}

ml_err mld_to_prim(const char *op, dnnl_primitive_t r, const dnnl_memory_desc_t *user_md, const void *user,
                   const dnnl_memory_desc_t *prim_md, mld_buf *tmp, void **out) {
    if (!r) {
        *out = (void *)user;
        return ML_OK;
    }
    ml_err e = mld_buf_alloc(tmp, dnnl_memory_desc_get_size(prim_md), op);
    if (e) return e;
    if ((e = mld_reorder(op, r, user_md, user, prim_md, tmp->p))) {
        mld_buf_free(tmp);
        return e;
    }
    *out = tmp->p;
    return ML_OK;
}

/* --------------------------------------------------------- common checks */
ml_err mld_check_float(const char *op, int n, ml_tensor *const *ts, const char *const *names) {
    return mld_check_float_on(op, n, ts, names, false);
}

ml_err mld_check_float_on(const char *op, int n, ml_tensor *const *ts, const char *const *names, bool cuda_ok) {
    ml_dtype dt = (ml_dtype)ts[0]->dtype;
    if (dt != ML_F32 && dt != ML_F64)
        return ml_seterr(ML_ERR_DTYPE, "%s: %s has dtype %s; only float32 and float64 are supported", op, names[0],
                         ml_dtype_name(dt));
    for (int i = 1; i < n; i++) {
        if (!ts[i]) continue;
        if ((ml_dtype)ts[i]->dtype != dt)
            return ml_seterr(ML_ERR_DTYPE, "%s: %s %s has dtype %s but %s %s has dtype %s", op, names[0],
                             ml_shape_str(ts[0]->ndim, ts[0]->shape), ml_dtype_name(dt), names[i],
                             ml_shape_str(ts[i]->ndim, ts[i]->shape), ml_dtype_name((ml_dtype)ts[i]->dtype));
        if (!ml_device_eq(ts[i]->storage->device, ts[0]->storage->device))
            return ml_seterr(ML_ERR_DEVICE, "%s: %s is on %s but %s is on %s", op, names[0],
                             ml_device_str(ts[0]->storage->device), names[i], ml_device_str(ts[i]->storage->device));
    }
    if (ts[0]->storage->device.type != ML_CPU && !cuda_ok)
        return ml_seterr(ML_ERR_DEVICE, "%s: %s is on %s; this op runs on cpu only so far (move it with :cpu())", op, names[0],
                         ml_device_str(ts[0]->storage->device));
    return ML_OK;
}

ml_err mld_contig(ml_tensor **out, ml_tensor *t) {
    *out = NULL;
    if (!t) return ML_OK;
    if (t->layout) {
        ml_err e = ml_tensor_plain(t);
        if (e) return e;
    }
    if (ml_tensor_is_contiguous(t)) {
        ml_tensor_retain(t);
        *out = t;
        return ML_OK;
    }
    /* an untracked copy: callers record autograd against the original tensor */
    ml_tensor *c;
    ml_err e = ml_tensor_empty(&c, (ml_dtype)t->dtype, t->ndim, t->shape);
    if (e) return e;
    if ((e = ml_copy_(c, t))) {
        ml_tensor_release(c);
        return e;
    }
    *out = c;
    return ML_OK;
}

ml_err mld_grad_in(ml_tensor **out, ml_tensor *g, ml_dtype dt) {
    *out = NULL;
    if ((ml_dtype)g->dtype == dt) return mld_contig(out, g);
    if (g->layout) {
        ml_err e = ml_tensor_plain(g);
        if (e) return e;
    }
    ml_tensor *c;
    ml_err e = ml_tensor_empty(&c, dt, g->ndim, g->shape);
    if (e) return e;
    if ((e = ml_copy_(c, g))) {
        ml_tensor_release(c);
        return e;
    }
    *out = c;
    return ML_OK;
}

const char *mld_opname(const char *base, int k) {
    /* static strings: autograd nodes keep the name pointer for later error messages */
    static const char *const tab[][4] = {
        {"conv", "conv1d", "conv2d", "conv3d"},
        {"conv_transpose", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"},
        {"max_pool", "max_pool1d", "max_pool2d", "max_pool3d"},
        {"avg_pool", "avg_pool1d", "avg_pool2d", "avg_pool3d"},
        {"adaptive_avg_pool", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d"},
    };
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (strcmp(tab[i][0], base) == 0) return k >= 1 && k <= 3 ? tab[i][k] : tab[i][0];
    return base;
}

static int64_t floordiv(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b) && ((a < 0) != (b < 0))) q--;
    return q;
}

/* PyTorch's pooling_output_shape (also the conv rule with ceil_mode = false). */
int64_t mld_pool_out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
    int64_t span = in + 2 * p - d * (k - 1) - 1;
    int64_t o = floordiv(span + (ceil_mode ? s - 1 : 0), s) + 1;
    /* the last window must start inside the input or the left padding */
    if (ceil_mode && (o - 1) * s >= in + p) o--;
    return o;
}
