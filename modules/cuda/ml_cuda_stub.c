/* ml_cuda.h for builds without CUDA (CUDA=0, or no nvcc): nothing is available, every call that
 * needs a device fails with ML_ERR_DEVICE "built without CUDA". Replaces ml_cuda_runtime.c and the
 * kernel files (ml_cuda_ew.cu, ml_cuda_reduce.cu, ml_cuda_gemm.c) in such builds. */
#include "ml_cuda.h"
#include "ml_cuda_alloc.h"

#include <stdatomic.h>
#include <string.h>

#define WHY "built without CUDA"

static ml_err no_cuda(const char *what) { return ml_seterr(ML_ERR_DEVICE, "%s: CUDA not available: " WHY, what); }

bool ml_cuda_compiled(void) { return false; }
bool ml_cuda_available(void) { return false; }
const char *ml_cuda_status(void) { return WHY; }
int ml_cuda_device_count(void) { return 0; }
const char *ml_cuda_device_name(int dev) { (void)dev; return ""; }

ml_err ml_cuda_device_memory(int dev, size_t *free_bytes, size_t *total_bytes) {
    (void)dev;
    if (free_bytes) *free_bytes = 0;
    if (total_bytes) *total_bytes = 0;
    return no_cuda("device_memory");
}

ml_err ml_cuda_synchronize(int dev) { (void)dev; return no_cuda("synchronize"); }

ml_err ml_cuda_malloc_err(void **out, size_t nbytes, int dev) {
    (void)nbytes;
    *out = NULL;
    return ml_seterr(ML_ERR_DEVICE, "cuda malloc on cuda:%d: CUDA not available: " WHY, dev);
}

void *ml_cuda_malloc(size_t nbytes, int dev) {
    void *p;
    ml_cuda_malloc_err(&p, nbytes, dev);
    return p;
}

void ml_cuda_free(void *p, int dev) { (void)p; (void)dev; }
void ml_cuda_empty_cache(int dev) { (void)dev; }
void ml_cuda_mem_stats(int dev, ml_cuda_mem *out) { (void)dev; memset(out, 0, sizeof *out); }
void ml_cuda_reset_peak(int dev) { (void)dev; }

ml_err ml_cuda_memcpy(void *dst, int dst_dev, const void *src, int src_dev, size_t nbytes) {
    if (nbytes == 0) return ML_OK;
    if (dst_dev < 0 && src_dev < 0 && dst && src) {
        memmove(dst, src, nbytes);
        return ML_OK;
    }
    return no_cuda("memcpy");
}

ml_err ml_cuda_ew(int iop, int kd, int ndim, const int64_t *shape, int nops, const ml_cuda_opnd *ops,
                  const double *params) {
    (void)iop; (void)kd; (void)ndim; (void)shape; (void)nops; (void)ops; (void)params;
    return no_cuda("elementwise kernel");
}

ml_err ml_cuda_copy(int ndim, const int64_t *shape, const ml_cuda_opnd *dst, const ml_cuda_opnd *src) {
    (void)ndim; (void)shape; (void)dst; (void)src;
    return no_cuda("copy kernel");
}

ml_err ml_cuda_fill(int ndim, const int64_t *shape, const ml_cuda_opnd *dst, double v) {
    (void)ndim; (void)shape; (void)dst; (void)v;
    return no_cuda("fill kernel");
}

ml_err ml_cuda_reduce(int kind, int kd, int ndim, const int64_t *shape, const bool *reduce,
                      const ml_cuda_opnd *out, const ml_cuda_opnd *in, const ml_cuda_opnd *idx) {
    (void)kind; (void)kd; (void)ndim; (void)shape; (void)reduce; (void)out; (void)in; (void)idx;
    return no_cuda("reduction kernel");
}

ml_err ml_cuda_gemm(int kd, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const void *a,
                    int64_t lda, int64_t stride_a, const void *b, int64_t ldb, int64_t stride_b, void *c,
                    int64_t ldc, int64_t stride_c, int64_t batch, double alpha, double beta, int dev) {
    (void)kd; (void)trans_a; (void)trans_b; (void)m; (void)n; (void)k; (void)a; (void)lda; (void)stride_a;
    (void)b; (void)ldb; (void)stride_b; (void)c; (void)ldc; (void)stride_c; (void)batch; (void)alpha;
    (void)beta; (void)dev;
    return no_cuda("gemm");
}

static atomic_bool g_tf32;
void ml_cuda_set_tf32(bool on) { atomic_store(&g_tf32, on); }
bool ml_cuda_tf32(void) { return atomic_load(&g_tf32); }

/* ------------------------------------------------------------- cuDNN */
ml_err ml_cuda_conv_fwd(int kd, const ml_cuda_conv_desc *d, const void *x, const void *w, void *y, int dev) {
    (void)kd; (void)d; (void)x; (void)w; (void)y; (void)dev;
    return no_cuda("conv forward");
}
ml_err ml_cuda_conv_bwd_data(int kd, const ml_cuda_conv_desc *d, const void *w, const void *dy, void *dx, int dev) {
    (void)kd; (void)d; (void)w; (void)dy; (void)dx; (void)dev;
    return no_cuda("conv backward data");
}
ml_err ml_cuda_conv_bwd_filter(int kd, const ml_cuda_conv_desc *d, const void *x, const void *dy, void *dw, int dev) {
    (void)kd; (void)d; (void)x; (void)dy; (void)dw; (void)dev;
    return no_cuda("conv backward filter");
}
static atomic_bool g_benchmark;
void ml_cuda_set_benchmark(bool on) { atomic_store(&g_benchmark, on); }
bool ml_cuda_benchmark(void) { return atomic_load(&g_benchmark); }
ml_err ml_cuda_pool_fwd(int kd, const ml_cuda_pool_desc *d, const void *x, void *y, int dev) {
    (void)kd; (void)d; (void)x; (void)y; (void)dev;
    return no_cuda("pooling forward");
}
ml_err ml_cuda_pool_bwd(int kd, const ml_cuda_pool_desc *d, const void *x, const void *y, const void *dy, void *dx,
                        int dev) {
    (void)kd; (void)d; (void)x; (void)y; (void)dy; (void)dx; (void)dev;
    return no_cuda("pooling backward");
}
