/* medlua CUDA backend: the C interface the core and the bindings call. No CUDA header is included
 * here, so plain C11 code (and C tests) can use it. Every function exists in every build: a build
 * without nvcc (or with CUDA=0) links ml_cuda_stub.c, where ml_cuda_available() is false and the rest
 * return ML_ERR_DEVICE "built without CUDA". A CUDA build runs on machines without a GPU or driver:
 * the CUDA runtime is linked statically and loads the driver (libcuda.so.1) on first use; cuBLAS
 * and cuDNN are opened with dlopen on first use. Nothing is initialised until the first call.
 *
 * Devices are numbered 0..n-1; "host" is -1 where a function takes a device for a copy.
 * The CPU stays the oracle: every kernel here has a CPU counterpart in modules/tensor or modules/nn
 * and tests/gpu compares the two. */
#ifndef ML_CUDA_H
#define ML_CUDA_H

#include "../tensor/ml_tensor.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ML_CUDA_HOST (-1)

/* ------------------------------------------------------------------ runtime */
bool ml_cuda_compiled(void);              /* built with nvcc */
bool ml_cuda_available(void);             /* compiled, a driver and at least one device; cached */
const char *ml_cuda_status(void);         /* why not available, e.g. "built without CUDA", "no CUDA driver
                                           * (libcuda.so.1 not found)", "no CUDA device"; "ok" otherwise */
int ml_cuda_device_count(void);           /* 0 when not available */
const char *ml_cuda_device_name(int dev); /* "" when there is no such device */
ml_err ml_cuda_device_memory(int dev, size_t *free_bytes, size_t *total_bytes);
ml_err ml_cuda_synchronize(int dev);      /* -1: every device */

/* --------------------------------------------- memory: caching allocator */
/* Size-binned caching allocator per device (blocks rounded up to bins, freed blocks kept for reuse
 * on the stream they were freed on). On cudaErrorMemoryAllocation it frees the cache, calls the
 * core's OOM handler (ml_set_oom_handler: a full Lua GC) and retries once before failing with
 * ML_ERR_OOM naming the size and the device's live/cached bytes. Live bytes are reported to the
 * core's per-device accounting (ml_mem_live(ML_CUDA)). */
void *ml_cuda_malloc(size_t nbytes, int dev); /* NULL + error set on failure; nbytes 0 gives a valid pointer */
void ml_cuda_free(void *p, int dev);          /* NULL is a no-op */
void ml_cuda_empty_cache(int dev);            /* give cached blocks back to the driver; -1: every device */
typedef struct {
    size_t live;   /* bytes handed out and not freed */
    size_t peak;   /* max of live since start or the last reset */
    size_t cached; /* bytes held in the cache (not live) */
    uint64_t allocs, cache_hits, driver_allocs;
} ml_cuda_mem;
void ml_cuda_mem_stats(int dev, ml_cuda_mem *out);
void ml_cuda_reset_peak(int dev);

/* dst/src devices: ML_CUDA_HOST or a device index. Synchronous for host transfers. */
ml_err ml_cuda_memcpy(void *dst, int dst_dev, const void *src, int src_dev, size_t nbytes);

/* ------------------------------------------------------------------ kernels */
/* An operand of an elementwise kernel: element (i0..in) of the broadcast shape is at
 * base + (off + sum_k i_k * st[k]) * dtype_size; a scalar operand (is_scalar) is the value given. */
typedef struct {
    char *base;
    int dtype;   /* ml_dtype */
    int64_t off;
    int64_t st[ML_MAX_DIMS];
    bool is_scalar;
    double scalar;
} ml_cuda_opnd;

/* o describes tensor t broadcast to shape (the core's helper, in every build) */
void ml_cuda_opnd_of(ml_cuda_opnd *o, const ml_tensor *t, int ndim, const int64_t *shape);

/* The device twin of ml_ew.c's float_exec: ops[0] is the output (dtype kd, or bool for comparison
 * iops), ops[1..nops) the inputs (dtype kd, or scalars); iop is an ml_iop of ml_ew_internal.h,
 * evaluated with the same expressions (the ML_IOP_LIST table is compiled for host and device).
 * params: p0, p1 (may be NULL). kd is ML_F32 or ML_F64. */
ml_err ml_cuda_ew(int iop, int kd, int ndim, const int64_t *shape, int nops, const ml_cuda_opnd *ops,
                  const double *params);

/* dst[...] = broadcast(src) with dtype conversion (any of f32, f64, i32, i64, u8, bool, bf16, f16),
 * both strided on the same device; the device twin of ml_copy_. */
ml_err ml_cuda_copy(int ndim, const int64_t *shape, const ml_cuda_opnd *dst, const ml_cuda_opnd *src);

/* dst[...] = v (strided, any dtype) */
ml_err ml_cuda_fill(int ndim, const int64_t *shape, const ml_cuda_opnd *dst, double v);

/* Reduction of a float tensor over the dims with reduce[d] true: out has the input's shape with
 * those dims of size 1 (strided as given). kind: 0 sum, 1 max, 2 min, 3 prod; accumulation in f64
 * for f64 input, f32 with pairwise/tree order otherwise. For max/min, idx (may be NULL) receives
 * the int64 index along the single reduced dim (only when exactly one dim is reduced). NaN
 * propagates as in the CPU kernels. */
ml_err ml_cuda_reduce(int kind, int kd, int ndim, const int64_t *shape, const bool *reduce,
                      const ml_cuda_opnd *out, const ml_cuda_opnd *in, const ml_cuda_opnd *idx);

/* C[b] = op(A[b]) @ op(B[b]) (+ beta * C[b]) through cuBLAS (cublasGemmStridedBatchedEx), row-major
 * semantics like the CPU matmul: A [m,k] (or [k,m] with trans_a), B [k,n] (or [n,k] with trans_b),
 * C [m,n], each with a leading dimension (row stride) and a batch stride in elements. kd ML_F32,
 * ML_F64, ML_BF16 or ML_F16 (f32 accumulation for the 16-bit types). TF32 when ml_cuda_set_tf32(true). */
ml_err ml_cuda_gemm(int kd, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const void *a,
                    int64_t lda, int64_t stride_a, const void *b, int64_t ldb, int64_t stride_b, void *c,
                    int64_t ldc, int64_t stride_c, int64_t batch, double alpha, double beta, int dev);
void ml_cuda_set_tf32(bool on);
bool ml_cuda_tf32(void);

/* ------------------------------------------------------------- cuDNN */
/* Convolution over nsp = 1, 2 or 3 spatial dims through cuDNN (loaded with dlopen on first use; 1-D runs
 * as 2-D with a unit dim). Tensors are dense (contiguous, NC + spatial) on device dev, dtype kd (ML_F32,
 * ML_F64, ML_BF16, ML_F16; f32 accumulation for the 16-bit types). x [N, C, S...], w [O, C/groups, K...],
 * y [N, O, S'...] with S' from stride/pad/dilation as in PyTorch. Algorithms are chosen per shape
 * (cudnnFind when ml_cuda_set_benchmark(true), else the heuristic) and cached; workspaces come from the
 * caching allocator. y/dx/dw are overwritten (beta = 0). A transposed convolution is bwd_data forward
 * and conv_fwd backward: the core composes them. */
typedef struct {
    int nsp;
    int64_t x[5], w[5], y[5]; /* shapes: [N, C, S...], [O, C/groups, K...], [N, O, S'...] */
    int stride[3], pad[3], dil[3];
    int groups;
} ml_cuda_conv_desc;
ml_err ml_cuda_conv_fwd(int kd, const ml_cuda_conv_desc *d, const void *x, const void *w, void *y, int dev);
ml_err ml_cuda_conv_bwd_data(int kd, const ml_cuda_conv_desc *d, const void *w, const void *dy, void *dx, int dev);
ml_err ml_cuda_conv_bwd_filter(int kd, const ml_cuda_conv_desc *d, const void *x, const void *dy, void *dw, int dev);
void ml_cuda_set_benchmark(bool on);
bool ml_cuda_benchmark(void);

/* Max / average pooling over nsp = 1, 2 or 3 spatial dims through cuDNN (1-D as 2-D with a unit dim).
 * x [N, C, S...] and y [N, C, S'...] dense on device dev, dtype kd; y's shape is given (the core computes
 * it with PyTorch's rules, ceil_mode included: cuDNN's own output size must not be smaller). No dilation.
 * Average: count_include_pad as in PyTorch (CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING or _EXCLUDE_).
 * bwd writes dx (overwritten) from x, y and dy. */
typedef struct {
    int nsp;
    int64_t x[5], y[5];
    int kernel[3], stride[3], pad[3];
    bool max, count_include_pad;
} ml_cuda_pool_desc;
ml_err ml_cuda_pool_fwd(int kd, const ml_cuda_pool_desc *d, const void *x, void *y, int dev);
ml_err ml_cuda_pool_bwd(int kd, const ml_cuda_pool_desc *d, const void *x, const void *y, const void *dy, void *dx,
                        int dev);

#ifdef __cplusplus
}
#endif

#endif
