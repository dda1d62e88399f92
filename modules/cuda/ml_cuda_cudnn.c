/* The cuDNN part of ml_cuda.h: convolution forward, backward data and backward filter over 1-3
 * spatial dims, dense NC+spatial tensors, PyTorch stride/padding/dilation/groups semantics; max and
 * average pooling forward and backward (the pooling section at the end of the file).
 * Built only with CUDA=1 (ml_cuda_stub.c takes its place otherwise).
 *
 * cuDNN is never linked: libcudnn.so.9 (then libcudnn.so) is opened with dlopen on the first call
 * and the functions below are resolved into a table whose pointer types come from the cudnn.h
 * prototypes (__typeof__), so a wrong signature is a compile error. When the library or a symbol
 * is missing, every entry point fails with ML_ERR_DEVICE naming the library and dlerror().
 *
 * All three operations share the same three tensor roles: an x-shaped tensor [N, C, S...], a
 * w-shaped filter [O, C/groups, K...] and a y-shaped tensor [N, O, S'...]. forward reads x and w
 * and writes y; backward data reads w and y (dy) and writes x (dx); backward filter reads x and
 * y (dy) and writes w (dw). A 1-D convolution runs as 2-D with H = 1.
 *
 * Handles: one cudnnHandle_t per device, created lazily under g_mu with the device current, on the
 * legacy default stream (the stream the other kernels of this backend use). A handle is used by
 * one thread at a time: each call holds its device's (recursive) mutex while it uses the handle.
 *
 * Algorithms: chosen once per (op, dtype, device, shapes, stride/pad/dilation, groups, TF32,
 * benchmark) and cached (a linear table with hashes, under g_mu). Heuristic mode (default):
 * cudnnGetConvolution*Algorithm_v7. Benchmark mode (ml_cuda_set_benchmark(true)):
 * cudnnFindConvolution*AlgorithmEx with a workspace from the caching allocator (as large as the
 * largest algorithm asks for, at most ML_CUDNN_WS_LIMIT). Either way the successful results whose
 * workspace fits the limit are kept in order as candidates; a call runs the first one and, like
 * PyTorch, moves on to the next when its workspace cannot be allocated or cuDNN refuses it.
 *
 * Precision: f32 runs with CUDNN_FMA_MATH unless ml_cuda_tf32() (CUDNN_DEFAULT_MATH would permit
 * TF32 on Ampere and newer); with TF32 on, CUDNN_DEFAULT_MATH (TF32 permitted, never a conversion
 * to fp16). f64: CUDNN_DEFAULT_MATH, f64 compute. bf16/f16: CUDNN_TENSOR_OP_MATH, f32 compute.
 *
 * Tensors over 2^31-1 elements (cuDNN's limit for these descriptors) are split along the batch;
 * backward filter accumulates the chunks (beta = 1 after the first). Empty tensors never reach
 * cuDNN: an output with elements whose reduction is empty is zero-filled. */
#include "ml_cuda.h"

#include <cuda_runtime_api.h>
#include <cudnn.h>
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ML_CUDNN_MAX_DEV 64
#define ML_CUDNN_WS_LIMIT ((size_t)1 << 30) /* largest workspace an algorithm may ask for: 1 GiB */
#define ML_CUDNN_MAX_CAND 8
#define ML_CUDNN_CACHE_MAX 4096 /* entries; the table is cleared when full */
#ifndef ML_CUDNN_MAX_ELEMS /* cuDNN's limit on a tensor's elements; a test build may lower it */
#define ML_CUDNN_MAX_ELEMS ((int64_t)INT_MAX)
#endif

/* ------------------------------------------------------------------ the library */
/* Required symbols. The pointer types are those of the cudnn.h prototypes. */
#define ML_CUDNN_SYMBOLS(X)                                                                                            \
    X(cudnnGetVersion)                                                                                                 \
    X(cudnnGetErrorString)                                                                                             \
    X(cudnnCreate)                                                                                                     \
    X(cudnnCreateTensorDescriptor)                                                                                     \
    X(cudnnSetTensorNdDescriptor)                                                                                      \
    X(cudnnDestroyTensorDescriptor)                                                                                    \
    X(cudnnCreateFilterDescriptor)                                                                                     \
    X(cudnnSetFilterNdDescriptor)                                                                                      \
    X(cudnnDestroyFilterDescriptor)                                                                                    \
    X(cudnnCreateConvolutionDescriptor)                                                                                \
    X(cudnnSetConvolutionNdDescriptor)                                                                                 \
    X(cudnnSetConvolutionGroupCount)                                                                                   \
    X(cudnnSetConvolutionMathType)                                                                                     \
    X(cudnnDestroyConvolutionDescriptor)                                                                               \
    X(cudnnGetConvolutionNdForwardOutputDim)                                                                           \
    X(cudnnGetConvolutionForwardAlgorithm_v7)                                                                          \
    X(cudnnFindConvolutionForwardAlgorithmEx)                                                                          \
    X(cudnnGetConvolutionForwardWorkspaceSize)                                                                         \
    X(cudnnConvolutionForward)                                                                                         \
    X(cudnnGetConvolutionBackwardDataAlgorithm_v7)                                                                     \
    X(cudnnFindConvolutionBackwardDataAlgorithmEx)                                                                     \
    X(cudnnGetConvolutionBackwardDataWorkspaceSize)                                                                    \
    X(cudnnConvolutionBackwardData)                                                                                    \
    X(cudnnGetConvolutionBackwardFilterAlgorithm_v7)                                                                   \
    X(cudnnFindConvolutionBackwardFilterAlgorithmEx)                                                                   \
    X(cudnnGetConvolutionBackwardFilterWorkspaceSize)                                                                  \
    X(cudnnConvolutionBackwardFilter)                                                                                  \
    X(cudnnCreatePoolingDescriptor)                                                                                    \
    X(cudnnSetPoolingNdDescriptor)                                                                                     \
    X(cudnnDestroyPoolingDescriptor)                                                                                   \
    X(cudnnGetPoolingNdForwardOutputDim)                                                                               \
    X(cudnnPoolingForward)                                                                                             \
    X(cudnnPoolingBackward)
/* Optional: the detailed message of the last failure (cuDNN 9). */
#define ML_CUDNN_OPTIONAL_SYMBOLS(X) X(cudnnGetLastErrorString)

static struct {
    bool tried, ok;
    char why[768];
    void *so;
    const char *soname;
    size_t version;
#define ML_CUDNN_MEMBER(name) __typeof__(&name) name;
    ML_CUDNN_SYMBOLS(ML_CUDNN_MEMBER)
    ML_CUDNN_OPTIONAL_SYMBOLS(ML_CUDNN_MEMBER)
#undef ML_CUDNN_MEMBER
    cudnnHandle_t handle[ML_CUDNN_MAX_DEV];
} L;

/* g_mu: library loading, handle creation, the algorithm cache. Never held across a cuDNN
 * computation or an allocation. Lock order: a device mutex, then g_mu. */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t g_dev_mu[ML_CUDNN_MAX_DEV];
static pthread_once_t g_dev_mu_once = PTHREAD_ONCE_INIT;
static atomic_bool g_bench = false;

static void dev_mu_init(void) {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    /* recursive: an allocation may run the OOM handler (a Lua GC) while the mutex is held */
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    for (int i = 0; i < ML_CUDNN_MAX_DEV; i++) pthread_mutex_init(&g_dev_mu[i], &a);
    pthread_mutexattr_destroy(&a);
}

/* under g_mu */
static void lib_load_locked(void) {
    if (L.tried) return;
    L.tried = true;
    static const char *const names[2] = {"libcudnn.so.9", "libcudnn.so"};
    char err[2][300] = {"", ""};
    for (int i = 0; i < 2 && !L.so; i++) {
        L.so = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (L.so) {
            L.soname = names[i];
        } else {
            const char *m = dlerror();
            snprintf(err[i], sizeof err[i], "%s", m ? m : "not found");
        }
    }
    if (!L.so) {
        snprintf(L.why, sizeof L.why, "cuDNN not available: %s: %s; %s: %s", names[0], err[0], names[1], err[1]);
        return;
    }
    (void)dlerror();
#define ML_CUDNN_RESOLVE(name)                                                                                         \
    L.name = (__typeof__(L.name))dlsym(L.so, #name);                                                                   \
    if (!L.name) {                                                                                                     \
        const char *m = dlerror();                                                                                     \
        snprintf(L.why, sizeof L.why, "cuDNN (%s): symbol %s not found: %s", L.soname, #name, m ? m : "NULL");         \
        goto fail;                                                                                                     \
    }
    ML_CUDNN_SYMBOLS(ML_CUDNN_RESOLVE)
#undef ML_CUDNN_RESOLVE
#define ML_CUDNN_RESOLVE_OPT(name) L.name = (__typeof__(L.name))dlsym(L.so, #name);
    ML_CUDNN_OPTIONAL_SYMBOLS(ML_CUDNN_RESOLVE_OPT)
#undef ML_CUDNN_RESOLVE_OPT
    (void)dlerror();
    L.version = L.cudnnGetVersion();
    {
        /* cuDNN 9 reports major*10000 + minor*100 + patch, cuDNN 8 major*1000 + minor*100 + patch.
         * The legacy convolution API used here is the same in 8 and 9. */
        size_t major = L.version >= 10000 ? L.version / 10000 : L.version / 1000;
        if (major < 8) {
            snprintf(L.why, sizeof L.why, "cuDNN (%s): version %zu is too old (8 or newer needed)", L.soname,
                     L.version);
            goto fail;
        }
    }
    L.ok = true;
    return;
fail:
    dlclose(L.so);
    L.so = NULL;
#define ML_CUDNN_CLEAR(name) L.name = NULL;
    ML_CUDNN_SYMBOLS(ML_CUDNN_CLEAR)
    ML_CUDNN_OPTIONAL_SYMBOLS(ML_CUDNN_CLEAR)
#undef ML_CUDNN_CLEAR
}

/* ------------------------------------------------------------------ errors */
static const char *status_str(cudnnStatus_t s) {
    const char *m = L.cudnnGetErrorString ? L.cudnnGetErrorString(s) : NULL;
    return m ? m : "unknown cuDNN status";
}

static ml_err status_code(cudnnStatus_t s) {
    int v = (int)s;
    if (v >= 3000 && v < 4000) return ML_ERR_UNSUPPORTED; /* CUDNN_STATUS_NOT_SUPPORTED and its sub-codes */
    if (s == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED) return ML_ERR_OOM;
    if (v >= 1000 && v < 2000) return ML_ERR_DEVICE; /* not initialised, sub-library missing, version mismatch */
    return ML_ERR_INTERNAL;
}

/* What an error message says about the call. */
typedef struct {
    char name[64]; /* "conv2d forward on cuda:0" */
    char shapes[480];
} callctx;

static const char *const op_names[3] = {"forward", "backward data", "backward filter"};
enum { OP_FWD = 0, OP_BWD_DATA = 1, OP_BWD_FILTER = 2 };

static void ctx_make(callctx *c, int op, int kd, const ml_cuda_conv_desc *d, int dev) {
    int nsp = d->nsp, nd = nsp + 2;
    int64_t st[3], pd[3], dl[3];
    for (int i = 0; i < nsp; i++) {
        st[i] = d->stride[i];
        pd[i] = d->pad[i];
        dl[i] = d->dil[i];
    }
    snprintf(c->name, sizeof c->name, "conv%dd %s on cuda:%d", nsp, op_names[op], dev);
    /* x: input (forward, backward filter) or the gradient written (backward data) */
    snprintf(c->shapes, sizeof c->shapes, "x %s, w %s, y %s, stride %s, padding %s, dilation %s, groups %d, %s",
             ml_shape_str(nd, d->x), ml_shape_str(nd, d->w), ml_shape_str(nd, d->y), ml_shape_str(nsp, st),
             ml_shape_str(nsp, pd), ml_shape_str(nsp, dl), d->groups, ml_dtype_name((ml_dtype)kd));
}

static ml_err cudnn_fail(const callctx *c, const char *fn, cudnnStatus_t s) {
    char detail[256] = "";
    if (L.cudnnGetLastErrorString) {
        L.cudnnGetLastErrorString(detail, sizeof detail);
        detail[sizeof detail - 1] = '\0';
    }
    return ml_seterr(status_code(s), "%s: %s failed: %s%s%s%s (%s)", c->name, fn, status_str(s), detail[0] ? " [" : "",
                     detail, detail[0] ? "]" : "", c->shapes);
}

static ml_err cuda_fail(const callctx *c, const char *what, cudaError_t e) {
    (void)cudaGetLastError(); /* clear a non-sticky error */
    return ml_seterr(ML_ERR_DEVICE, "%s: %s: %s", c->name, what, cudaGetErrorString(e));
}

/* ------------------------------------------------------------------ descriptors */
static int64_t numel(int nd, const int64_t *s) {
    int64_t n = 1;
    for (int i = 0; i < nd; i++) n *= s[i];
    return n;
}

typedef struct {
    int nb;        /* 4 (1-D and 2-D) or 5 (3-D) */
    int xd[5], wd[5], yd[5];
    int pad[3], stride[3], dil[3];
    int nconv;     /* spatial dims cuDNN sees: 2 or 3 */
    cudnnDataType_t dt, ct;
    cudnnMathType_t math; /* the math type asked for */
} geom;

typedef struct {
    cudnnTensorDescriptor_t tx, ty;
    cudnnFilterDescriptor_t fw;
    cudnnConvolutionDescriptor_t cv;
} descs;

/* d's shapes as cuDNN sees them (a unit H for 1-D). The caller checked that every value fits int. */
/* [N, C, spatial...] as cuDNN takes it: a 1-D op becomes 2-D with a unit H; returns the rank */
static int cudnn_dims(int nsp, const int64_t *src, int *dst) {
    if (nsp == 1) {
        dst[0] = (int)src[0], dst[1] = (int)src[1], dst[2] = 1, dst[3] = (int)src[2];
        return 4;
    }
    for (int i = 0; i < nsp + 2; i++) dst[i] = (int)src[i];
    return nsp + 2;
}

/* per-spatial-dim parameters; the unit H of a 1-D op gets the neutral value; returns the count */
static int cudnn_params(int nsp, const int *src, int neutral, int *dst) {
    if (nsp == 1) {
        dst[0] = neutral, dst[1] = src[0];
        return 2;
    }
    for (int i = 0; i < nsp; i++) dst[i] = src[i];
    return nsp;
}

static void geom_make(geom *g, int kd, const ml_cuda_conv_desc *d) {
    memset(g, 0, sizeof *g);
    g->nb = cudnn_dims(d->nsp, d->x, g->xd);
    cudnn_dims(d->nsp, d->w, g->wd);
    cudnn_dims(d->nsp, d->y, g->yd);
    g->nconv = cudnn_params(d->nsp, d->pad, 0, g->pad);
    cudnn_params(d->nsp, d->stride, 1, g->stride);
    cudnn_params(d->nsp, d->dil, 1, g->dil);
    switch (kd) {
    case ML_F64: g->dt = CUDNN_DATA_DOUBLE; g->ct = CUDNN_DATA_DOUBLE; g->math = CUDNN_DEFAULT_MATH; break;
    case ML_BF16: g->dt = CUDNN_DATA_BFLOAT16; g->ct = CUDNN_DATA_FLOAT; g->math = CUDNN_TENSOR_OP_MATH; break;
    case ML_F16: g->dt = CUDNN_DATA_HALF; g->ct = CUDNN_DATA_FLOAT; g->math = CUDNN_TENSOR_OP_MATH; break;
    default: /* ML_F32 */
        g->dt = CUDNN_DATA_FLOAT;
        g->ct = CUDNN_DATA_FLOAT;
        g->math = ml_cuda_tf32() ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH;
        break;
    }
}

static void dense_strides(int nb, const int *dims, int *st) {
    st[nb - 1] = 1;
    for (int i = nb - 2; i >= 0; i--) st[i] = st[i + 1] * dims[i + 1];
}

static void descs_destroy(descs *D) {
    if (D->tx) L.cudnnDestroyTensorDescriptor(D->tx);
    if (D->ty) L.cudnnDestroyTensorDescriptor(D->ty);
    if (D->fw) L.cudnnDestroyFilterDescriptor(D->fw);
    if (D->cv) L.cudnnDestroyConvolutionDescriptor(D->cv);
    memset(D, 0, sizeof *D);
}

/* dense x and y tensor descriptors of dtype dt (dims nb, xd / yd); *fn names the call that failed */
static cudnnStatus_t xy_descs(cudnnTensorDescriptor_t *tx, cudnnTensorDescriptor_t *ty, cudnnDataType_t dt, int nb,
                              const int *xd, const int *yd, const char **fn) {
    int sx[5], sy[5];
    dense_strides(nb, xd, sx);
    dense_strides(nb, yd, sy);
    cudnnStatus_t s;
    *fn = "cudnnCreateTensorDescriptor";
    if ((s = L.cudnnCreateTensorDescriptor(tx)) != CUDNN_STATUS_SUCCESS) return s;
    if ((s = L.cudnnCreateTensorDescriptor(ty)) != CUDNN_STATUS_SUCCESS) return s;
    *fn = "cudnnSetTensorNdDescriptor (x)";
    if ((s = L.cudnnSetTensorNdDescriptor(*tx, dt, nb, xd, sx)) != CUDNN_STATUS_SUCCESS) return s;
    *fn = "cudnnSetTensorNdDescriptor (y)";
    return L.cudnnSetTensorNdDescriptor(*ty, dt, nb, yd, sy);
}

/* On failure the descriptors made so far are destroyed and the error is set. */
static ml_err descs_make(descs *D, const geom *g, int groups, const callctx *c) {
    memset(D, 0, sizeof *D);
    const char *fn;
    cudnnStatus_t s = xy_descs(&D->tx, &D->ty, g->dt, g->nb, g->xd, g->yd, &fn);
    if (s != CUDNN_STATUS_SUCCESS) goto fail;
    fn = "cudnnCreateFilterDescriptor";
    if ((s = L.cudnnCreateFilterDescriptor(&D->fw)) != CUDNN_STATUS_SUCCESS) goto fail;
    fn = "cudnnCreateConvolutionDescriptor";
    if ((s = L.cudnnCreateConvolutionDescriptor(&D->cv)) != CUDNN_STATUS_SUCCESS) goto fail;
    fn = "cudnnSetFilterNdDescriptor";
    if ((s = L.cudnnSetFilterNdDescriptor(D->fw, g->dt, CUDNN_TENSOR_NCHW, g->nb, g->wd)) != CUDNN_STATUS_SUCCESS)
        goto fail;
    fn = "cudnnSetConvolutionNdDescriptor";
    if ((s = L.cudnnSetConvolutionNdDescriptor(D->cv, g->nconv, g->pad, g->stride, g->dil, CUDNN_CROSS_CORRELATION,
                                               g->ct)) != CUDNN_STATUS_SUCCESS)
        goto fail;
    fn = "cudnnSetConvolutionGroupCount";
    if ((s = L.cudnnSetConvolutionGroupCount(D->cv, groups)) != CUDNN_STATUS_SUCCESS) goto fail;
    fn = "cudnnSetConvolutionMathType";
    if ((s = L.cudnnSetConvolutionMathType(D->cv, g->math)) != CUDNN_STATUS_SUCCESS) goto fail;
    return ML_OK;
fail:;
    ml_err e = cudnn_fail(c, fn, s);
    descs_destroy(D);
    return e;
}

/* ------------------------------------------------------------------ algorithm cache */
typedef struct {
    int algo;
    cudnnMathType_t math;
    size_t ws;
} cand;

typedef struct {
    int32_t op, kd, dev, nsp, groups, tf32, bench;
    int32_t stride[3], pad[3], dil[3];
    int64_t x[5], w[5], y[5];
} algo_key;

typedef struct {
    algo_key key;
    uint64_t hash;
    int ncand;
    cand c[ML_CUDNN_MAX_CAND];
} algo_entry;

static algo_entry *g_cache;
static size_t g_ncache, g_capcache;

static void key_make(algo_key *k, int op, int kd, int dev, bool bench, const ml_cuda_conv_desc *d) {
    memset(k, 0, sizeof *k); /* padding bytes too: keys are compared with memcmp */
    k->op = op;
    k->kd = kd;
    k->dev = dev;
    k->nsp = d->nsp;
    k->groups = d->groups;
    k->tf32 = kd == ML_F32 && ml_cuda_tf32();
    k->bench = bench;
    for (int i = 0; i < d->nsp; i++) {
        k->stride[i] = d->stride[i];
        k->pad[i] = d->pad[i];
        k->dil[i] = d->dil[i];
    }
    for (int i = 0; i < d->nsp + 2; i++) {
        k->x[i] = d->x[i];
        k->w[i] = d->w[i];
        k->y[i] = d->y[i];
    }
}

static uint64_t key_hash(const algo_key *k) {
    const unsigned char *p = (const unsigned char *)k;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < sizeof *k; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

/* under g_mu */
static algo_entry *cache_find_locked(const algo_key *k, uint64_t h) {
    for (size_t i = 0; i < g_ncache; i++)
        if (g_cache[i].hash == h && memcmp(&g_cache[i].key, k, sizeof *k) == 0) return &g_cache[i];
    return NULL;
}

static bool cache_get(const algo_key *k, uint64_t h, algo_entry *out) {
    pthread_mutex_lock(&g_mu);
    algo_entry *e = cache_find_locked(k, h);
    if (e) *out = *e;
    pthread_mutex_unlock(&g_mu);
    return e != NULL;
}

/* Inserts or replaces. Failure to grow the table only loses the caching. */
static void cache_put(const algo_entry *ent) {
    pthread_mutex_lock(&g_mu);
    algo_entry *e = cache_find_locked(&ent->key, ent->hash);
    if (!e) {
        if (g_ncache >= ML_CUDNN_CACHE_MAX) g_ncache = 0;
        if (g_ncache == g_capcache) {
            size_t cap = g_capcache ? 2 * g_capcache : 32;
            algo_entry *p = realloc(g_cache, cap * sizeof *p);
            if (p) {
                g_cache = p;
                g_capcache = cap;
            }
        }
        if (g_ncache < g_capcache) e = &g_cache[g_ncache++];
    }
    if (e) *e = *ent;
    pthread_mutex_unlock(&g_mu);
}

/* ------------------------------------------------------------------ algorithm choice */
typedef struct {
    int algo;
    cudnnStatus_t status;
    size_t memory;
    cudnnMathType_t math;
} perf;

static int algo_count(int op) {
    return op == OP_FWD ? CUDNN_CONVOLUTION_FWD_ALGO_COUNT
         : op == OP_BWD_DATA ? CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT
                             : CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT;
}

static cudnnStatus_t ws_size(int op, cudnnHandle_t h, const descs *D, int algo, size_t *sz) {
    *sz = 0;
    switch (op) {
    case OP_FWD:
        return L.cudnnGetConvolutionForwardWorkspaceSize(h, D->tx, D->fw, D->cv, D->ty, (cudnnConvolutionFwdAlgo_t)algo,
                                                         sz);
    case OP_BWD_DATA:
        return L.cudnnGetConvolutionBackwardDataWorkspaceSize(h, D->fw, D->ty, D->cv, D->tx,
                                                              (cudnnConvolutionBwdDataAlgo_t)algo, sz);
    default:
        return L.cudnnGetConvolutionBackwardFilterWorkspaceSize(h, D->tx, D->ty, D->cv, D->fw,
                                                                (cudnnConvolutionBwdFilterAlgo_t)algo, sz);
    }
}

static const char *const heur_fn[3] = {"cudnnGetConvolutionForwardAlgorithm_v7",
                                       "cudnnGetConvolutionBackwardDataAlgorithm_v7",
                                       "cudnnGetConvolutionBackwardFilterAlgorithm_v7"};
static const char *const find_fn[3] = {"cudnnFindConvolutionForwardAlgorithmEx",
                                       "cudnnFindConvolutionBackwardDataAlgorithmEx",
                                       "cudnnFindConvolutionBackwardFilterAlgorithmEx"};
static const char *const run_fn[3] = {"cudnnConvolutionForward", "cudnnConvolutionBackwardData",
                                      "cudnnConvolutionBackwardFilter"};

#define ML_CUDNN_MAX_ALGOS 16

/* The ranked results of the heuristic (bench false) or of a timed search (bench true), in p[0..*n). */
static cudnnStatus_t query_algos(int op, cudnnHandle_t h, const descs *D, bool bench, void *x, void *w, void *y,
                                 void *ws, size_t wsz, perf *p, int *n) {
    int cnt = algo_count(op), got = 0;
    if (cnt > ML_CUDNN_MAX_ALGOS) cnt = ML_CUDNN_MAX_ALGOS;
    cudnnStatus_t s;
    *n = 0;
    switch (op) {
    case OP_FWD: {
        cudnnConvolutionFwdAlgoPerf_t r[ML_CUDNN_MAX_ALGOS];
        memset(r, 0, sizeof r);
        s = bench ? L.cudnnFindConvolutionForwardAlgorithmEx(h, D->tx, x, D->fw, w, D->cv, D->ty, y, cnt, &got, r, ws,
                                                             wsz)
                  : L.cudnnGetConvolutionForwardAlgorithm_v7(h, D->tx, D->fw, D->cv, D->ty, cnt, &got, r);
        for (int i = 0; s == CUDNN_STATUS_SUCCESS && i < got && i < cnt; i++)
            p[(*n)++] = (perf){(int)r[i].algo, r[i].status, r[i].memory, r[i].mathType};
        break;
    }
    case OP_BWD_DATA: {
        cudnnConvolutionBwdDataAlgoPerf_t r[ML_CUDNN_MAX_ALGOS];
        memset(r, 0, sizeof r);
        s = bench ? L.cudnnFindConvolutionBackwardDataAlgorithmEx(h, D->fw, w, D->ty, y, D->cv, D->tx, x, cnt, &got, r,
                                                                  ws, wsz)
                  : L.cudnnGetConvolutionBackwardDataAlgorithm_v7(h, D->fw, D->ty, D->cv, D->tx, cnt, &got, r);
        for (int i = 0; s == CUDNN_STATUS_SUCCESS && i < got && i < cnt; i++)
            p[(*n)++] = (perf){(int)r[i].algo, r[i].status, r[i].memory, r[i].mathType};
        break;
    }
    default: {
        cudnnConvolutionBwdFilterAlgoPerf_t r[ML_CUDNN_MAX_ALGOS];
        memset(r, 0, sizeof r);
        s = bench ? L.cudnnFindConvolutionBackwardFilterAlgorithmEx(h, D->tx, x, D->ty, y, D->cv, D->fw, w, cnt, &got,
                                                                    r, ws, wsz)
                  : L.cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, D->tx, D->ty, D->cv, D->fw, cnt, &got, r);
        for (int i = 0; s == CUDNN_STATUS_SUCCESS && i < got && i < cnt; i++)
            p[(*n)++] = (perf){(int)r[i].algo, r[i].status, r[i].memory, r[i].mathType};
        break;
    }
    }
    return s;
}

/* Fills ent->c / ent->ncand (>= 1) or sets the error. D's math type is left changed. For the timed
 * search the operation's output buffer is written (the call overwrites it afterwards); backward
 * filter searches on a scratch filter, since a batch-chunked call accumulates into dw. */
static ml_err choose_algos(int op, int kd, int dev, cudnnHandle_t h, descs *D, const geom *g, bool bench, void *x,
                           void *w, void *y, const callctx *c, algo_entry *ent) {
    perf p[ML_CUDNN_MAX_ALGOS];
    int n = 0;
    cudnnStatus_t s;
    size_t limit = ML_CUDNN_WS_LIMIT;
    if (bench) {
        /* a workspace as large as the largest algorithm wants, within the limit */
        size_t want = 0;
        for (int a = 0; a < algo_count(op); a++) {
            size_t sz = 0;
            if (ws_size(op, h, D, a, &sz) == CUDNN_STATUS_SUCCESS && sz <= ML_CUDNN_WS_LIMIT && sz > want) want = sz;
        }
        void *ws = want ? ml_cuda_malloc(want, dev) : NULL;
        if (!ws) want = 0; /* search among the algorithms that need none */
        void *wout = w;
        if (op == OP_BWD_FILTER) {
            size_t wbytes = ml_dtype_size((ml_dtype)kd);
            for (int i = 0; i < g->nb; i++) wbytes *= (size_t)g->wd[i];
            wout = ml_cuda_malloc(wbytes, dev);
            if (!wout) {
                ml_cuda_free(ws, dev);
                return ML_ERR_OOM; /* message set by the allocator */
            }
        }
        s = query_algos(op, h, D, true, x, wout, y, ws, want, p, &n);
        if (op == OP_BWD_FILTER) ml_cuda_free(wout, dev);
        ml_cuda_free(ws, dev);
        limit = want;
        if (s != CUDNN_STATUS_SUCCESS) return cudnn_fail(c, find_fn[op], s);
    } else {
        s = query_algos(op, h, D, false, x, w, y, NULL, 0, p, &n);
        if (s != CUDNN_STATUS_SUCCESS) return cudnn_fail(c, heur_fn[op], s);
    }
    ent->ncand = 0;
    bool strict_f32 = kd == ML_F32 && g->math == CUDNN_FMA_MATH;
    for (int i = 0; i < n && ent->ncand < ML_CUDNN_MAX_CAND; i++) {
        if (p[i].status != CUDNN_STATUS_SUCCESS) continue;
        cudnnMathType_t m = p[i].math;
        if (kd == ML_F32 && m == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION) continue; /* f32 -> fp16: never */
        if (strict_f32) m = CUDNN_FMA_MATH; /* no TF32 unless asked for */
        bool dup = false;
        for (int j = 0; j < ent->ncand; j++) dup = dup || (ent->c[j].algo == p[i].algo && ent->c[j].math == m);
        if (dup) continue;
        if (L.cudnnSetConvolutionMathType(D->cv, m) != CUDNN_STATUS_SUCCESS) continue;
        size_t sz = 0;
        if (ws_size(op, h, D, p[i].algo, &sz) != CUDNN_STATUS_SUCCESS) continue;
        if (bench && p[i].memory > sz) sz = p[i].memory;
        if (sz > limit) continue;
        ent->c[ent->ncand++] = (cand){p[i].algo, m, sz};
    }
    if (ent->ncand == 0)
        return ml_seterr(ML_ERR_UNSUPPORTED, "%s: cuDNN offers no algorithm (%d result%s from %s, workspace limit %zu bytes) (%s)",
                         c->name, n, n == 1 ? "" : "s", bench ? find_fn[op] : heur_fn[op], limit, c->shapes);
    return ML_OK;
}

/* ------------------------------------------------------------------ one call of cuDNN */
static cudnnStatus_t run_algo(int op, cudnnHandle_t h, const descs *D, const cand *cd, const void *alpha,
                              const void *beta, void *x, void *w, void *y, void *ws) {
    switch (op) {
    case OP_FWD:
        return L.cudnnConvolutionForward(h, alpha, D->tx, x, D->fw, w, D->cv, (cudnnConvolutionFwdAlgo_t)cd->algo, ws,
                                         cd->ws, beta, D->ty, y);
    case OP_BWD_DATA:
        return L.cudnnConvolutionBackwardData(h, alpha, D->fw, w, D->ty, y, D->cv,
                                              (cudnnConvolutionBwdDataAlgo_t)cd->algo, ws, cd->ws, beta, D->tx, x);
    default:
        return L.cudnnConvolutionBackwardFilter(h, alpha, D->tx, x, D->ty, y, D->cv,
                                                (cudnnConvolutionBwdFilterAlgo_t)cd->algo, ws, cd->ws, beta, D->fw, w);
    }
}

/* One convolution on d (N within cuDNN's limits), under the device mutex. beta: 0, or 1 to
 * accumulate (backward filter over batch chunks). */
static ml_err run_chunk(int op, int kd, int dev, cudnnHandle_t h, const ml_cuda_conv_desc *d, void *x, void *w,
                        void *y, double beta, const callctx *c) {
    geom g;
    geom_make(&g, kd, d);
    descs D;
    ml_err e = descs_make(&D, &g, d->groups, c);
    if (e) return e;

    /* the output shape cuDNN computes must be d->y */
    int od[5] = {0, 0, 0, 0, 0};
    cudnnStatus_t s = L.cudnnGetConvolutionNdForwardOutputDim(D.cv, D.tx, D.fw, g.nb, od);
    if (s != CUDNN_STATUS_SUCCESS) {
        e = cudnn_fail(c, "cudnnGetConvolutionNdForwardOutputDim", s);
        goto done;
    }
    for (int i = 0; i < g.nb; i++) {
        if (od[i] != g.yd[i]) {
            int64_t o64[5], x64[5], w64[5], y64[5];
            for (int j = 0; j < g.nb; j++) o64[j] = od[j], x64[j] = g.xd[j], w64[j] = g.wd[j], y64[j] = g.yd[j];
            e = ml_seterr(ML_ERR_SHAPE,
                          "%s: cuDNN computes the output shape %s from x %s and w %s (as cuDNN sees them), not y %s (%s)",
                          c->name, ml_shape_str(g.nb, o64), ml_shape_str(g.nb, x64), ml_shape_str(g.nb, w64),
                          ml_shape_str(g.nb, y64), c->shapes);
            goto done;
        }
    }

    bool bench = atomic_load(&g_bench);
    algo_entry ent;
    memset(&ent, 0, sizeof ent);
    key_make(&ent.key, op, kd, dev, bench, d);
    ent.hash = key_hash(&ent.key);
    if (!cache_get(&ent.key, ent.hash, &ent)) {
        e = choose_algos(op, kd, dev, h, &D, &g, bench, x, w, y, c, &ent);
        if (e) goto done;
        cache_put(&ent);
    }

    double a64 = 1.0, b64 = beta;
    float a32 = 1.0f, b32 = (float)beta;
    const void *pa = kd == ML_F64 ? (const void *)&a64 : (const void *)&a32;
    const void *pb = kd == ML_F64 ? (const void *)&b64 : (const void *)&b32;
    ml_err first = ML_OK;
    char first_msg[1024] = "";
    for (int i = 0; i < ent.ncand; i++) {
        const cand *cd = &ent.c[i];
        if ((s = L.cudnnSetConvolutionMathType(D.cv, cd->math)) != CUDNN_STATUS_SUCCESS) {
            e = cudnn_fail(c, "cudnnSetConvolutionMathType", s);
        } else {
            void *ws = NULL;
            if (cd->ws) {
                ws = ml_cuda_malloc(cd->ws, dev);
                if (!ws) e = ML_ERR_OOM; /* message set by the allocator */
            }
            if (!cd->ws || ws) {
                s = run_algo(op, h, &D, cd, pa, pb, x, w, y, ws);
                ml_cuda_free(ws, dev); /* stream-ordered reuse: the block is next handed out on this stream */
                if (s == CUDNN_STATUS_SUCCESS) {
                    if (i > 0) { /* remember the one that worked */
                        cand ok = *cd;
                        memmove(&ent.c[1], &ent.c[0], (size_t)i * sizeof ent.c[0]);
                        ent.c[0] = ok;
                        cache_put(&ent);
                    }
                    e = ML_OK;
                    goto done;
                }
                e = cudnn_fail(c, run_fn[op], s);
            }
        }
        if (!first) {
            first = e;
            snprintf(first_msg, sizeof first_msg, "%s", ml_errmsg());
        }
    }
    if (first) {
        if (ent.ncand > 1)
            e = ml_seterr(first, "%s (and %d other algorithm%s failed)", first_msg, ent.ncand - 1,
                          ent.ncand == 2 ? "" : "s");
        else
            e = ml_seterr(first, "%s", first_msg);
    }
done:
    descs_destroy(&D);
    return e;
}

/* ------------------------------------------------------------------ entry points */
static ml_err check_desc(int kd, const ml_cuda_conv_desc *d, const callctx *c) {
    int nsp = d->nsp, nd = nsp + 2;
    if (kd != ML_F32 && kd != ML_F64 && kd != ML_BF16 && kd != ML_F16)
        return ml_seterr(ML_ERR_DTYPE, "%s: %s is not supported (float32, float64, bfloat16, float16)", c->name,
                         ml_dtype_name((ml_dtype)kd));
    if (d->groups < 1) return ml_seterr(ML_ERR_ARG, "%s: groups must be >= 1 (%s)", c->name, c->shapes);
    for (int i = 0; i < nd; i++)
        if (d->x[i] < 0 || d->w[i] < 0 || d->y[i] < 0)
            return ml_seterr(ML_ERR_SHAPE, "%s: negative size (%s)", c->name, c->shapes);
    for (int i = 0; i < nsp; i++)
        if (d->stride[i] < 1 || d->pad[i] < 0 || d->dil[i] < 1)
            return ml_seterr(ML_ERR_ARG, "%s: invalid stride/padding/dilation in spatial dim %d (%s)", c->name, i,
                             c->shapes);
    if (d->y[0] != d->x[0] || d->y[1] != d->w[0] || d->w[0] % d->groups != 0 || d->x[1] != d->w[1] * d->groups)
        return ml_seterr(ML_ERR_SHAPE,
                         "%s: shapes do not fit (need y[0] = x[0], y[1] = w[0], w[0] divisible by groups, x[1] = "
                         "w[1] * groups) (%s)",
                         c->name, c->shapes);
    for (int i = 0; i < nsp; i++) {
        int64_t k = d->w[2 + i];
        if (k < 1) return ml_seterr(ML_ERR_SHAPE, "%s: kernel size 0 in spatial dim %d (%s)", c->name, i, c->shapes);
        int64_t span = (int64_t)d->dil[i] * (k - 1) + 1, in = d->x[2 + i] + 2 * (int64_t)d->pad[i];
        if (in < span || (in - span) / d->stride[i] + 1 != d->y[2 + i])
            return ml_seterr(ML_ERR_SHAPE,
                             "%s: y size %lld in spatial dim %d is not the convolution output size (input %lld + 2 * "
                             "padding %d, dilated kernel %lld, stride %d) (%s)",
                             c->name, (long long)d->y[2 + i], i, (long long)d->x[2 + i], d->pad[i], (long long)span,
                             d->stride[i], c->shapes);
    }
    /* cuDNN takes int sizes; the batch is split when a tensor passes INT_MAX elements */
    for (int i = 1; i < nd; i++)
        if (d->x[i] > INT_MAX || d->w[i] > INT_MAX || d->y[i] > INT_MAX)
            return ml_seterr(ML_ERR_UNSUPPORTED, "%s: a size passes 2^31-1 (%s)", c->name, c->shapes);
    if (numel(nd - 1, d->x + 1) > ML_CUDNN_MAX_ELEMS || numel(nd - 1, d->y + 1) > ML_CUDNN_MAX_ELEMS ||
        numel(nd, d->w) > ML_CUDNN_MAX_ELEMS)
        return ml_seterr(ML_ERR_UNSUPPORTED,
                         "%s: one sample or the filter has more than 2^31-1 elements, cuDNN's limit (%s)", c->name,
                         c->shapes);
    return ML_OK;
}

/* dev's handle, created on first use; dev must be current and its mutex held. Sets the error when
 * cudnnCreate fails (*h stays NULL). */
static ml_err handle_get(int dev, const callctx *c, cudnnHandle_t *h) {
    ml_err e = ML_OK;
    pthread_mutex_lock(&g_mu);
    if (!L.handle[dev]) {
        cudnnStatus_t s = L.cudnnCreate(&L.handle[dev]); /* binds to the current device: dev */
        if (s != CUDNN_STATUS_SUCCESS) {
            L.handle[dev] = NULL;
            e = status_code(s) == ML_ERR_OOM ? ML_ERR_OOM : ML_ERR_DEVICE;
            char detail[256] = "";
            if (L.cudnnGetLastErrorString) {
                L.cudnnGetLastErrorString(detail, sizeof detail);
                detail[sizeof detail - 1] = '\0';
            }
            e = ml_seterr(e, "%s: cudnnCreate failed: %s%s%s%s (cuDNN %zu, %s)", c->name, status_str(s),
                          detail[0] ? " [" : "", detail, detail[0] ? "]" : "", L.version, L.soname);
        }
    }
    *h = L.handle[dev];
    pthread_mutex_unlock(&g_mu);
    return e;
}

/* the device exists and cuDNN is loaded (ML_ERR_DEVICE naming the op and why not) */
static ml_err device_ready(const char *name, int dev) {
    if (!ml_cuda_available()) return ml_seterr(ML_ERR_DEVICE, "%s: CUDA not available: %s", name, ml_cuda_status());
    if (dev < 0 || dev >= ml_cuda_device_count() || dev >= ML_CUDNN_MAX_DEV)
        return ml_seterr(ML_ERR_DEVICE, "%s: no such device (%d CUDA device%s)", name, ml_cuda_device_count(),
                         ml_cuda_device_count() == 1 ? "" : "s");
    pthread_mutex_lock(&g_mu);
    lib_load_locked();
    bool ok = L.ok;
    char why[sizeof L.why];
    if (!ok) memcpy(why, L.why, sizeof why);
    pthread_mutex_unlock(&g_mu);
    if (!ok) return ml_seterr(ML_ERR_DEVICE, "%s: %s", name, why);
    return ML_OK;
}

/* x, w, y: the x-, w- and y-shaped buffers; which one is written depends on op. */
static ml_err conv_entry(int op, int kd, const ml_cuda_conv_desc *d, void *x, void *w, void *y, int dev) {
    if (!d) return ml_seterr(ML_ERR_ARG, "cuda conv %s: NULL descriptor", op_names[op]);
    if (d->nsp < 1 || d->nsp > 3)
        return ml_seterr(ML_ERR_ARG, "cuda conv %s on cuda:%d: %d spatial dims (1, 2 or 3)", op_names[op], dev, d->nsp);
    callctx c;
    ctx_make(&c, op, kd, d, dev);
    ml_err e = check_desc(kd, d, &c);
    if (e) return e;
    if ((e = device_ready(c.name, dev))) return e;

    int nd = d->nsp + 2;
    int64_t nx = numel(nd, d->x), nw = numel(nd, d->w), ny = numel(nd, d->y);
    void *out = op == OP_FWD ? y : op == OP_BWD_DATA ? x : w;
    int64_t nout = op == OP_FWD ? ny : op == OP_BWD_DATA ? nx : nw;
    /* the inputs: forward x and w, backward data w and dy, backward filter x and dy */
    int64_t nin1 = op == OP_BWD_DATA ? nw : nx, nin2 = op == OP_FWD ? nw : ny;
    if (nout == 0) return ML_OK;
    if (!out || (nin1 && nin2 && (op == OP_FWD ? (!x || !w) : op == OP_BWD_DATA ? (!w || !y) : (!x || !y))))
        return ml_seterr(ML_ERR_ARG, "%s: NULL device pointer (%s)", c.name, c.shapes);

    int prev = -1;
    cudaError_t ce = cudaGetDevice(&prev);
    if (ce != cudaSuccess) return cuda_fail(&c, "cudaGetDevice", ce);
    if (prev != dev && (ce = cudaSetDevice(dev)) != cudaSuccess) return cuda_fail(&c, "cudaSetDevice", ce);

    size_t esz = ml_dtype_size((ml_dtype)kd);
    if (nin1 == 0 || nin2 == 0) {
        /* an empty sum: the output is zero (e.g. no input channels, or an empty batch for dw) */
        ce = cudaMemsetAsync(out, 0, (size_t)nout * esz, (cudaStream_t)0);
        e = ce == cudaSuccess ? ML_OK : cuda_fail(&c, "cudaMemsetAsync", ce);
        goto restore;
    }

    pthread_once(&g_dev_mu_once, dev_mu_init);
    pthread_mutex_lock(&g_dev_mu[dev]);
    cudnnHandle_t h = NULL;
    e = handle_get(dev, &c, &h);

    if (h) {
        /* batch chunks of at most ML_CUDNN_MAX_ELEMS elements in x and y (one chunk almost always) */
        int64_t sx = numel(nd - 1, d->x + 1), sy = numel(nd - 1, d->y + 1), per = sx > sy ? sx : sy;
        int64_t chunk = per > 0 ? ML_CUDNN_MAX_ELEMS / per : d->x[0];
        if (chunk < 1) chunk = 1; /* not reached: check_desc bounds one sample */
        if (chunk > d->x[0]) chunk = d->x[0];
        for (int64_t n0 = 0; n0 < d->x[0] && !e; n0 += chunk) {
            ml_cuda_conv_desc dc = *d;
            int64_t cn = d->x[0] - n0 < chunk ? d->x[0] - n0 : chunk;
            dc.x[0] = dc.y[0] = cn;
            char *xc = (char *)x + (size_t)(n0 * sx) * esz, *yc = (char *)y + (size_t)(n0 * sy) * esz;
            double beta = op == OP_BWD_FILTER && n0 > 0 ? 1.0 : 0.0;
            e = run_chunk(op, kd, dev, h, &dc, xc, w, yc, beta, &c);
        }
    }
    pthread_mutex_unlock(&g_dev_mu[dev]);
restore:
    if (prev != dev) (void)cudaSetDevice(prev);
    return e;
}

ml_err ml_cuda_conv_fwd(int kd, const ml_cuda_conv_desc *d, const void *x, const void *w, void *y, int dev) {
    return conv_entry(OP_FWD, kd, d, (void *)x, (void *)w, y, dev);
}

ml_err ml_cuda_conv_bwd_data(int kd, const ml_cuda_conv_desc *d, const void *w, const void *dy, void *dx, int dev) {
    return conv_entry(OP_BWD_DATA, kd, d, dx, (void *)w, (void *)dy, dev);
}

ml_err ml_cuda_conv_bwd_filter(int kd, const ml_cuda_conv_desc *d, const void *x, const void *dy, void *dw, int dev) {
    return conv_entry(OP_BWD_FILTER, kd, d, (void *)x, dw, (void *)dy, dev);
}

void ml_cuda_set_benchmark(bool on) { atomic_store(&g_bench, on); }
bool ml_cuda_benchmark(void) { return atomic_load(&g_bench); }

/* ------------------------------------------------------------------ pooling */
/* Max / average pooling through the legacy cuDNN pooling API (cudnnPoolingForward/Backward; marked
 * deprecated in cuDNN 9 but present and unchanged there). Dense NC+spatial tensors, no workspace, no
 * algorithm choice; 1-D runs as 2-D with H = 1 (window 1, padding 0, stride 1 in H).
 *
 * Modes: max pooling is CUDNN_POOLING_MAX_DETERMINISTIC with CUDNN_PROPAGATE_NAN, because PyTorch's
 * max_pool propagates NaN (a window holding a NaN gives NaN; the CPU kernels do the same: "NaN wins").
 * Average pooling is CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING or _EXCLUDE_PADDING per
 * count_include_pad; in floor mode every window lies inside [-pad, in + pad) so the divisors are
 * PyTorch's (kernel volume, or the number of input elements in the window).
 *
 * Output size: cuDNN's is the floor-mode size 1 + (in + 2 * pad - kernel) / stride in every dim and
 * its padding is symmetric. The caller's y may be PyTorch's ceil_mode size, one larger in some dim:
 * that extra window would need more padding on the right than on the left, which the legacy API
 * cannot express (the cuDNN docs do not define results for a y larger than
 * cudnnGetPoolingNdForwardOutputDim's), so such a call fails with ML_ERR_UNSUPPORTED before any
 * device work, and the caller can run it elsewhere. Any other y that is not cuDNN's size is
 * ML_ERR_SHAPE. Scaling factors are double for f64 and float otherwise (cuDNN's rule); the 16-bit
 * types are pooled by cuDNN with float arithmetic. Tensors over 2^31-1 elements are split along
 * the batch (pooling is independent per sample). */

typedef struct {
    int nb;   /* 4 (1-D and 2-D) or 5 (3-D) */
    int npool; /* spatial dims cuDNN sees: 2 or 3 */
    int xd[5], yd[5];
    int win[3], pad[3], stride[3];
    cudnnDataType_t dt;
    cudnnPoolingMode_t mode;
    cudnnNanPropagation_t nan;
} pgeom;

static void pool_ctx_make(callctx *c, bool bwd, int kd, const ml_cuda_pool_desc *d, int dev) {
    int nsp = d->nsp, nd = nsp + 2;
    int64_t k[3], st[3], pd[3];
    for (int i = 0; i < nsp; i++) {
        k[i] = d->kernel[i];
        st[i] = d->stride[i];
        pd[i] = d->pad[i];
    }
    snprintf(c->name, sizeof c->name, "%s_pool%dd%s on cuda:%d", d->max ? "max" : "avg", nsp, bwd ? " backward" : "",
             dev);
    snprintf(c->shapes, sizeof c->shapes, "x %s, y %s, kernel %s, stride %s, padding %s%s, %s", ml_shape_str(nd, d->x),
             ml_shape_str(nd, d->y), ml_shape_str(nsp, k), ml_shape_str(nsp, st), ml_shape_str(nsp, pd),
             d->max ? "" : d->count_include_pad ? ", count_include_pad true" : ", count_include_pad false",
             ml_dtype_name((ml_dtype)kd));
}

/* PyTorch's pooling output size (no dilation) */
static int64_t pool_out_size(int64_t in, int64_t k, int64_t s, int64_t p, bool ceil_mode) {
    int64_t num = in + 2 * p - k;
    if (num < 0) return 0;
    int64_t o = (ceil_mode ? (num + s - 1) / s : num / s) + 1;
    if (ceil_mode && (o - 1) * s >= in + p) o--; /* the last window must start inside the input or left padding */
    return o;
}

static ml_err pool_check_desc(int kd, const ml_cuda_pool_desc *d, const callctx *c) {
    int nsp = d->nsp, nd = nsp + 2;
    if (kd != ML_F32 && kd != ML_F64 && kd != ML_BF16 && kd != ML_F16)
        return ml_seterr(ML_ERR_DTYPE, "%s: %s is not supported (float32, float64, bfloat16, float16)", c->name,
                         ml_dtype_name((ml_dtype)kd));
    for (int i = 0; i < nd; i++)
        if (d->x[i] < 0 || d->y[i] < 0) return ml_seterr(ML_ERR_SHAPE, "%s: negative size (%s)", c->name, c->shapes);
    if (d->y[0] != d->x[0] || d->y[1] != d->x[1])
        return ml_seterr(ML_ERR_SHAPE, "%s: y must have x's batch and channel sizes (%s)", c->name, c->shapes);
    for (int i = 0; i < nsp; i++) {
        if (d->kernel[i] < 1 || d->stride[i] < 1 || d->pad[i] < 0)
            return ml_seterr(ML_ERR_ARG, "%s: invalid kernel/stride/padding in spatial dim %d (%s)", c->name, i,
                             c->shapes);
        /* PyTorch's rule; it also keeps every window off the padding alone */
        if (d->pad[i] > d->kernel[i] / 2)
            return ml_seterr(ML_ERR_ARG, "%s: padding %d in spatial dim %d should be at most half of the kernel size %d (%s)",
                             c->name, d->pad[i], i, d->kernel[i], c->shapes);
        if (d->x[2 + i] < 1)
            return ml_seterr(ML_ERR_SHAPE, "%s: empty spatial dim %d in x (%s)", c->name, i, c->shapes);
    }
    for (int i = 0; i < nsp; i++) {
        int64_t in = d->x[2 + i], k = d->kernel[i], s = d->stride[i], p = d->pad[i], y = d->y[2 + i];
        int64_t fl = pool_out_size(in, k, s, p, false), ce = pool_out_size(in, k, s, p, true);
        if (y == fl && fl >= 1) continue;
        if (y == ce && ce > fl && fl >= 1)
            return ml_seterr(ML_ERR_UNSUPPORTED,
                             "%s: ceil_mode output size %lld in spatial dim %d (cuDNN's floor-mode size is %lld) needs "
                             "asymmetric padding, not supported by cuDNN pooling; use ceil_mode=false or pool on the "
                             "CPU (%s)",
                             c->name, (long long)y, i, (long long)fl, c->shapes);
        return ml_seterr(ML_ERR_SHAPE,
                         "%s: y size %lld in spatial dim %d is not the pooling output size %lld (input %lld + 2 * "
                         "padding %lld, kernel %lld, stride %lld) (%s)",
                         c->name, (long long)y, i, (long long)fl, (long long)in, (long long)p, (long long)k,
                         (long long)s, c->shapes);
    }
    for (int i = 1; i < nd; i++)
        if (d->x[i] > INT_MAX || d->y[i] > INT_MAX)
            return ml_seterr(ML_ERR_UNSUPPORTED, "%s: a size passes 2^31-1 (%s)", c->name, c->shapes);
    if (numel(nd - 1, d->x + 1) > ML_CUDNN_MAX_ELEMS || numel(nd - 1, d->y + 1) > ML_CUDNN_MAX_ELEMS)
        return ml_seterr(ML_ERR_UNSUPPORTED, "%s: one sample has more than 2^31-1 elements, cuDNN's limit (%s)",
                         c->name, c->shapes);
    return ML_OK;
}

/* d's shapes as cuDNN sees them (a unit H for 1-D). The caller checked that every value fits int. */
static void pgeom_make(pgeom *g, int kd, const ml_cuda_pool_desc *d) {
    memset(g, 0, sizeof *g);
    g->nb = cudnn_dims(d->nsp, d->x, g->xd);
    cudnn_dims(d->nsp, d->y, g->yd);
    g->npool = cudnn_params(d->nsp, d->kernel, 1, g->win);
    cudnn_params(d->nsp, d->pad, 0, g->pad);
    cudnn_params(d->nsp, d->stride, 1, g->stride);
    g->dt = kd == ML_F64 ? CUDNN_DATA_DOUBLE : kd == ML_BF16 ? CUDNN_DATA_BFLOAT16 : kd == ML_F16 ? CUDNN_DATA_HALF
                                                                                             : CUDNN_DATA_FLOAT;
    g->mode = d->max ? CUDNN_POOLING_MAX_DETERMINISTIC
            : d->count_include_pad ? CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING
                                   : CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING;
    g->nan = CUDNN_PROPAGATE_NAN; /* used by max pooling only; PyTorch's max_pool propagates NaN */
}

typedef struct {
    cudnnTensorDescriptor_t tx, ty;
    cudnnPoolingDescriptor_t pl;
} pdescs;

static void pdescs_destroy(pdescs *D) {
    if (D->tx) L.cudnnDestroyTensorDescriptor(D->tx);
    if (D->ty) L.cudnnDestroyTensorDescriptor(D->ty);
    if (D->pl) L.cudnnDestroyPoolingDescriptor(D->pl);
    memset(D, 0, sizeof *D);
}

/* On failure the descriptors made so far are destroyed and the error is set. */
static ml_err pdescs_make(pdescs *D, const pgeom *g, const callctx *c) {
    memset(D, 0, sizeof *D);
    const char *fn;
    cudnnStatus_t s = xy_descs(&D->tx, &D->ty, g->dt, g->nb, g->xd, g->yd, &fn);
    if (s != CUDNN_STATUS_SUCCESS) goto fail;
    fn = "cudnnCreatePoolingDescriptor";
    if ((s = L.cudnnCreatePoolingDescriptor(&D->pl)) != CUDNN_STATUS_SUCCESS) goto fail;
    fn = "cudnnSetPoolingNdDescriptor";
    if ((s = L.cudnnSetPoolingNdDescriptor(D->pl, g->mode, g->nan, g->npool, g->win, g->pad, g->stride)) !=
        CUDNN_STATUS_SUCCESS)
        goto fail;
    return ML_OK;
fail:;
    ml_err e = cudnn_fail(c, fn, s);
    pdescs_destroy(D);
    return e;
}

/* One pooling call on d (N within cuDNN's limits), under the device mutex. Forward reads x and
 * writes y; backward reads x, y and dy and writes dx (dy and dx use y's and x's descriptors). */
static ml_err pool_chunk(bool bwd, int kd, cudnnHandle_t h, const ml_cuda_pool_desc *d, const void *x, void *y,
                         const void *dy, void *dx, const callctx *c) {
    pgeom g;
    pgeom_make(&g, kd, d);
    pdescs D;
    ml_err e = pdescs_make(&D, &g, c);
    if (e) return e;

    /* the output shape cuDNN computes must be d->y (pool_check_desc checked the same formula) */
    int od[5] = {0, 0, 0, 0, 0};
    cudnnStatus_t s = L.cudnnGetPoolingNdForwardOutputDim(D.pl, D.tx, g.nb, od);
    if (s != CUDNN_STATUS_SUCCESS) {
        e = cudnn_fail(c, "cudnnGetPoolingNdForwardOutputDim", s);
        goto done;
    }
    for (int i = 0; i < g.nb; i++) {
        if (od[i] != g.yd[i]) {
            int64_t o64[5], x64[5], y64[5];
            for (int j = 0; j < g.nb; j++) o64[j] = od[j], x64[j] = g.xd[j], y64[j] = g.yd[j];
            e = ml_seterr(od[i] < g.yd[i] ? ML_ERR_UNSUPPORTED : ML_ERR_SHAPE,
                          "%s: cuDNN computes the output shape %s from x %s (as cuDNN sees them), not y %s (%s)",
                          c->name, ml_shape_str(g.nb, o64), ml_shape_str(g.nb, x64), ml_shape_str(g.nb, y64),
                          c->shapes);
            goto done;
        }
    }

    double a64 = 1.0, b64 = 0.0;
    float a32 = 1.0f, b32 = 0.0f;
    const void *pa = kd == ML_F64 ? (const void *)&a64 : (const void *)&a32;
    const void *pb = kd == ML_F64 ? (const void *)&b64 : (const void *)&b32;
    if (!bwd) {
        s = L.cudnnPoolingForward(h, D.pl, pa, D.tx, x, pb, D.ty, y);
        if (s != CUDNN_STATUS_SUCCESS) e = cudnn_fail(c, "cudnnPoolingForward", s);
    } else {
        s = L.cudnnPoolingBackward(h, D.pl, pa, D.ty, y, D.ty, dy, D.tx, x, pb, D.tx, dx);
        if (s != CUDNN_STATUS_SUCCESS) e = cudnn_fail(c, "cudnnPoolingBackward", s);
    }
done:
    pdescs_destroy(&D);
    return e;
}

static ml_err pool_entry(bool bwd, int kd, const ml_cuda_pool_desc *d, const void *x, void *y, const void *dy,
                         void *dx, int dev) {
    if (!d) return ml_seterr(ML_ERR_ARG, "cuda pool%s: NULL descriptor", bwd ? " backward" : "");
    if (d->nsp < 1 || d->nsp > 3)
        return ml_seterr(ML_ERR_ARG, "%s_pool%s on cuda:%d: %d spatial dims (1, 2 or 3)", d->max ? "max" : "avg",
                         bwd ? " backward" : "", dev, d->nsp);
    callctx c;
    pool_ctx_make(&c, bwd, kd, d, dev);
    ml_err e = pool_check_desc(kd, d, &c);
    if (e) return e;
    if ((e = device_ready(c.name, dev))) return e;

    int nd = d->nsp + 2;
    /* every spatial size is >= 1 here, so x and y are empty together (N = 0 or C = 0): nothing to do */
    if (numel(nd, d->x) == 0 || numel(nd, d->y) == 0) return ML_OK;
    if (!x || !y || (bwd && (!dy || !dx)))
        return ml_seterr(ML_ERR_ARG, "%s: NULL device pointer (%s)", c.name, c.shapes);

    int prev = -1;
    cudaError_t ce = cudaGetDevice(&prev);
    if (ce != cudaSuccess) return cuda_fail(&c, "cudaGetDevice", ce);
    if (prev != dev && (ce = cudaSetDevice(dev)) != cudaSuccess) return cuda_fail(&c, "cudaSetDevice", ce);

    pthread_once(&g_dev_mu_once, dev_mu_init);
    pthread_mutex_lock(&g_dev_mu[dev]);
    cudnnHandle_t h = NULL;
    e = handle_get(dev, &c, &h);
    if (h) {
        /* batch chunks of at most ML_CUDNN_MAX_ELEMS elements in x and y (one chunk almost always) */
        size_t esz = ml_dtype_size((ml_dtype)kd);
        int64_t sx = numel(nd - 1, d->x + 1), sy = numel(nd - 1, d->y + 1), per = sx > sy ? sx : sy;
        int64_t chunk = ML_CUDNN_MAX_ELEMS / per; /* per >= 1: the sizes are not 0 here */
        if (chunk < 1) chunk = 1; /* not reached: pool_check_desc bounds one sample */
        if (chunk > d->x[0]) chunk = d->x[0];
        for (int64_t n0 = 0; n0 < d->x[0] && !e; n0 += chunk) {
            ml_cuda_pool_desc dc = *d;
            int64_t cn = d->x[0] - n0 < chunk ? d->x[0] - n0 : chunk;
            dc.x[0] = dc.y[0] = cn;
            size_t ox = (size_t)(n0 * sx) * esz, oy = (size_t)(n0 * sy) * esz;
            e = pool_chunk(bwd, kd, h, &dc, (const char *)x + ox, (char *)y + oy, bwd ? (const char *)dy + oy : NULL,
                           bwd ? (char *)dx + ox : NULL, &c);
        }
    }
    pthread_mutex_unlock(&g_dev_mu[dev]);
    if (prev != dev) (void)cudaSetDevice(prev);
    return e;
}

ml_err ml_cuda_pool_fwd(int kd, const ml_cuda_pool_desc *d, const void *x, void *y, int dev) {
    return pool_entry(false, kd, d, x, y, NULL, NULL, dev);
}

ml_err ml_cuda_pool_bwd(int kd, const ml_cuda_pool_desc *d, const void *x, const void *y, const void *dy, void *dx,
                        int dev) {
    return pool_entry(true, kd, d, x, (void *)y, dy, dx, dev);
}
