/* The CUDA runtime part of ml_cuda.h: availability and status, devices, synchronisation, copies and
 * the device caching allocator (ml_cuda_alloc.c over cudaMalloc/cudaFree). Built only with CUDA=1;
 * ml_cuda_stub.c takes its place otherwise.
 *
 * The CUDA runtime is linked statically (libcudart_static.a), so the program starts on machines
 * without libcudart.so or a driver; the runtime opens libcuda.so.1 itself on the first CUDA call.
 * Nothing happens before the first call of a function here; the first one probes once (pthread_once)
 * and every later call reads the cached answer. Nothing here prints or aborts. */
#include "ml_cuda.h"
#include "ml_cuda_alloc.h"

#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The oldest compute capability the kernels are built for (Makefile: sm_80, sm_90, compute_90). */
#define ML_CUDA_MIN_CC 80
#define ML_CUDA_MAX_DEVICES 64

static struct {
    bool available;
    int count; /* devices the runtime reports (0 when not available) */
    char status[320];
    char name[ML_CUDA_MAX_DEVICES][256];
    int cc[ML_CUDA_MAX_DEVICES];
} g_rt;
static pthread_once_t g_rt_once = PTHREAD_ONCE_INIT;

static void cuda_version_str(int v, char *buf, size_t n) {
    if (v <= 0) snprintf(buf, n, "none");
    else snprintf(buf, n, "%d.%d", v / 1000, (v % 1000) / 10);
}

static void rt_init(void) {
    /* The runtime reports a missing libcuda.so.1 as cudaErrorInsufficientDriver; look first so the
     * status can say what is actually missing. The handle stays open (the runtime opens it too). */
    if (!dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL)) {
        snprintf(g_rt.status, sizeof g_rt.status, "no CUDA driver (libcuda.so.1 not found)");
        return;
    }
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        int drv = 0, rtv = 0;
        char dv[16], rv[16];
        const char *vis = getenv("CUDA_VISIBLE_DEVICES");
        switch (e) {
        case cudaErrorInsufficientDriver:
            cudaDriverGetVersion(&drv);
            cudaRuntimeGetVersion(&rtv);
            cuda_version_str(drv, dv, sizeof dv);
            cuda_version_str(rtv, rv, sizeof rv);
            if (drv <= 0)
                snprintf(g_rt.status, sizeof g_rt.status,
                         "CUDA driver unusable (libcuda.so.1 loads but reports no CUDA version; this build needs %s)",
                         rv);
            else
                snprintf(g_rt.status, sizeof g_rt.status,
                         "CUDA driver too old (it supports CUDA %s, this build needs %s; update the NVIDIA driver)",
                         dv, rv);
            break;
        case cudaErrorNoDevice:
            if (vis)
                snprintf(g_rt.status, sizeof g_rt.status, "no CUDA device (CUDA_VISIBLE_DEVICES=\"%s\")", vis);
            else
                snprintf(g_rt.status, sizeof g_rt.status, "no CUDA device");
            break;
        case cudaErrorInitializationError:
            snprintf(g_rt.status, sizeof g_rt.status,
                     "CUDA driver failed to initialise (cudaErrorInitializationError: %s)", cudaGetErrorString(e));
            break;
        case cudaErrorSystemDriverMismatch:
            snprintf(g_rt.status, sizeof g_rt.status,
                     "CUDA driver library and kernel module versions differ (reload the driver or reboot)");
            break;
        case cudaErrorCompatNotSupportedOnDevice:
            snprintf(g_rt.status, sizeof g_rt.status,
                     "CUDA forward-compatibility driver does not support this GPU (cudaErrorCompatNotSupportedOnDevice)");
            break;
        case cudaErrorDevicesUnavailable:
            snprintf(g_rt.status, sizeof g_rt.status,
                     "CUDA devices unavailable (busy, or in exclusive-process mode and used by another process)");
            break;
        case cudaErrorNotPermitted:
        case cudaErrorOperatingSystem:
            snprintf(g_rt.status, sizeof g_rt.status, "CUDA initialisation refused by the system (%s: %s)",
                     cudaGetErrorName(e), cudaGetErrorString(e));
            break;
        default:
            snprintf(g_rt.status, sizeof g_rt.status, "CUDA initialisation failed (%s: %s)", cudaGetErrorName(e),
                     cudaGetErrorString(e));
        }
        return;
    }
    if (n <= 0) {
        snprintf(g_rt.status, sizeof g_rt.status, "no CUDA device");
        return;
    }
    if (n > ML_CUDA_MAX_DEVICES) n = ML_CUDA_MAX_DEVICES;
    for (int i = 0; i < n; i++) {
        struct cudaDeviceProp p;
        if (cudaGetDeviceProperties(&p, i) != cudaSuccess) {
            (void)cudaGetLastError();
            snprintf(g_rt.status, sizeof g_rt.status, "cuda:%d: cudaGetDeviceProperties failed", i);
            return;
        }
        snprintf(g_rt.name[i], sizeof g_rt.name[i], "%s", p.name);
        g_rt.cc[i] = p.major * 10 + p.minor;
    }
    if (g_rt.cc[0] < ML_CUDA_MIN_CC) {
        snprintf(g_rt.status, sizeof g_rt.status,
                 "cuda:0 (%.200s) is sm_%d; this build's kernels need sm_%d or newer", g_rt.name[0], g_rt.cc[0],
                 ML_CUDA_MIN_CC);
        return;
    }
    g_rt.count = n;
    g_rt.available = true;
    snprintf(g_rt.status, sizeof g_rt.status, "ok");
}

static void rt(void) { pthread_once(&g_rt_once, rt_init); }

bool ml_cuda_compiled(void) { return true; }
bool ml_cuda_available(void) { rt(); return g_rt.available; }
const char *ml_cuda_status(void) { rt(); return g_rt.status; }
int ml_cuda_device_count(void) { rt(); return g_rt.count; }
const char *ml_cuda_device_name(int dev) {
    rt();
    return dev >= 0 && dev < g_rt.count ? g_rt.name[dev] : "";
}

/* ML_OK when dev names a usable device; else the error (message set). */
static ml_err check_dev(int dev, const char *what) {
    rt();
    if (!g_rt.available) return ml_seterr(ML_ERR_DEVICE, "%s on cuda:%d: CUDA not available: %s", what, dev, g_rt.status);
    if (dev < 0 || dev >= g_rt.count)
        return ml_seterr(ML_ERR_DEVICE, "%s: no device cuda:%d (%d device%s)", what, dev, g_rt.count,
                         g_rt.count == 1 ? "" : "s");
    if (g_rt.cc[dev] < ML_CUDA_MIN_CC)
        return ml_seterr(ML_ERR_DEVICE, "%s: cuda:%d (%s) is sm_%d; this build's kernels need sm_%d or newer", what,
                         dev, g_rt.name[dev], g_rt.cc[dev], ML_CUDA_MIN_CC);
    return ML_OK;
}

static ml_err cuda_fail(cudaError_t e, const char *what, int dev) {
    (void)cudaGetLastError(); /* clear a non-sticky error */
    return ml_seterr(e == cudaErrorInvalidValue ? ML_ERR_ARG : ML_ERR_DEVICE, "%s on cuda:%d: %s (%s)", what, dev,
                     cudaGetErrorString(e), cudaGetErrorName(e));
}

/* Makes dev current for the calling thread; *old receives the previous device. */
static cudaError_t enter(int dev, int *old) {
    *old = -1;
    if (cudaGetDevice(old) != cudaSuccess) *old = -1;
    return *old == dev ? cudaSuccess : cudaSetDevice(dev);
}
static void leave(int dev, int old) {
    if (old >= 0 && old != dev) cudaSetDevice(old);
}

ml_err ml_cuda_device_memory(int dev, size_t *free_bytes, size_t *total_bytes) {
    if (free_bytes) *free_bytes = 0;
    if (total_bytes) *total_bytes = 0;
    ml_err r = check_dev(dev, "device_memory");
    if (r) return r;
    int old;
    size_t f = 0, t = 0;
    cudaError_t e = enter(dev, &old);
    if (e == cudaSuccess) e = cudaMemGetInfo(&f, &t);
    leave(dev, old);
    if (e != cudaSuccess) return cuda_fail(e, "cudaMemGetInfo", dev);
    if (free_bytes) *free_bytes = f;
    if (total_bytes) *total_bytes = t;
    return ML_OK;
}

ml_err ml_cuda_synchronize(int dev) {
    rt();
    if (!g_rt.available) return ml_seterr(ML_ERR_DEVICE, "synchronize: CUDA not available: %s", g_rt.status);
    for (int i = 0; i < g_rt.count; i++) {
        if (dev >= 0 && dev != i) continue;
        ml_err r = check_dev(i, "synchronize");
        if (r) return r;
        int old;
        cudaError_t e = enter(i, &old);
        if (e == cudaSuccess) e = cudaDeviceSynchronize();
        leave(i, old);
        if (e != cudaSuccess) return cuda_fail(e, "cudaDeviceSynchronize", i);
    }
    if (dev >= g_rt.count) return check_dev(dev, "synchronize");
    return ML_OK;
}

ml_err ml_cuda_memcpy(void *dst, int dst_dev, const void *src, int src_dev, size_t nbytes) {
    if (nbytes == 0) return ML_OK;
    if (!dst || !src) return ml_seterr(ML_ERR_ARG, "memcpy: NULL pointer");
    if (dst_dev < 0 && src_dev < 0) {
        memmove(dst, src, nbytes);
        return ML_OK;
    }
    ml_err r;
    if (dst_dev >= 0 && (r = check_dev(dst_dev, "memcpy"))) return r;
    if (src_dev >= 0 && (r = check_dev(src_dev, "memcpy"))) return r;
    cudaError_t e;
    int dev = dst_dev >= 0 ? dst_dev : src_dev, old;
    if (dst_dev >= 0 && src_dev >= 0 && dst_dev != src_dev) {
        e = cudaMemcpyPeer(dst, dst_dev, src, src_dev, nbytes);
    } else {
        enum cudaMemcpyKind kind = src_dev < 0   ? cudaMemcpyHostToDevice
                                   : dst_dev < 0 ? cudaMemcpyDeviceToHost
                                                 : cudaMemcpyDeviceToDevice;
        e = enter(dev, &old);
        if (e == cudaSuccess) e = cudaMemcpy(dst, src, nbytes, kind);
        leave(dev, old);
    }
    if (e != cudaSuccess) return cuda_fail(e, "cudaMemcpy", dev);
    return ML_OK;
}

/* ------------------------------------------------------------- allocator */
static ml_err up_alloc(void **p, size_t n, int dev, void *ud) {
    (void)ud;
    int old;
    cudaError_t e = enter(dev, &old);
    if (e == cudaSuccess) e = cudaMalloc(p, n);
    leave(dev, old);
    if (e == cudaSuccess) return ML_OK;
    *p = NULL;
    (void)cudaGetLastError();
    if (e == cudaErrorMemoryAllocation) return ML_ERR_OOM;
    return ml_seterr(ML_ERR_DEVICE, "cudaMalloc(%zu bytes) on cuda:%d: %s (%s)", n, dev, cudaGetErrorString(e),
                     cudaGetErrorName(e));
}

static void up_free(void *p, size_t n, int dev, void *ud) {
    (void)n;
    (void)ud;
    int old;
    if (enter(dev, &old) == cudaSuccess) cudaFree(p);
    leave(dev, old);
    (void)cudaGetLastError();
}

static bool up_oom(void *ud) { (void)ud; return ml_oom_relieve(); }
static void up_account(int64_t delta, void *ud) { (void)ud; ml_mem_account(ML_CUDA, delta); }

static ml_calloc *g_alloc;
static pthread_once_t g_alloc_once = PTHREAD_ONCE_INIT;

static void flush_cache(void) { ml_calloc_empty(g_alloc, -1); }

static void alloc_init(void) {
    if (!ml_cuda_available()) return;
    ml_calloc_upstream up = {up_alloc, up_free, up_oom, up_account, NULL, "cuda"};
    g_alloc = ml_calloc_new(&up, g_rt.count);
    if (g_alloc) ml_register_cache_flush(flush_cache); /* medlua.empty_cache() and the OOM path */
}

static ml_calloc *allocator(void) {
    pthread_once(&g_alloc_once, alloc_init);
    return g_alloc;
}

ml_err ml_cuda_malloc_err(void **out, size_t nbytes, int dev) {
    *out = NULL;
    ml_err r = check_dev(dev, "cuda malloc");
    if (r) return r;
    ml_calloc *a = allocator();
    if (!a) return ml_seterr(ML_ERR_OOM, "cuda malloc: out of host memory creating the allocator");
    return ml_calloc_alloc(a, out, nbytes, dev);
}

void *ml_cuda_malloc(size_t nbytes, int dev) {
    void *p = NULL;
    ml_cuda_malloc_err(&p, nbytes, dev);
    return p;
}

void ml_cuda_free(void *p, int dev) {
    if (p) ml_calloc_free(allocator(), p, dev);
}

void ml_cuda_empty_cache(int dev) {
    if (ml_cuda_available()) ml_calloc_empty(allocator(), dev);
}

void ml_cuda_mem_stats(int dev, ml_cuda_mem *out) {
    if (ml_cuda_available()) ml_calloc_stats(allocator(), dev, out);
    else memset(out, 0, sizeof *out);
}

void ml_cuda_reset_peak(int dev) {
    if (ml_cuda_available()) ml_calloc_reset_peak(allocator(), dev);
}
