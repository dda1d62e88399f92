/* ml_cuda_gemm: row-major (batched, strided) matrix products through cuBLAS's
 * cublasGemmStridedBatchedEx. cuBLAS is opened with dlopen on first use (libcublas.so.13, then
 * libcublas.so); cublas_api.h is used for its types and enums only, nothing links -lcublas.
 *
 * Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLAS is called with the
 * operands swapped (B first), m and n swapped, and each operand's transpose flag as given - the
 * column-major view of a row-major [r, c] matrix with row stride ld is its transpose [c, r] with
 * leading dimension ld.
 *
 * Types: f32 (CUBLAS_COMPUTE_32F, or CUBLAS_COMPUTE_32F_FAST_TF32 after ml_cuda_set_tf32(true)),
 * f64 (CUBLAS_COMPUTE_64F), bf16 / f16 (inputs and output 16-bit, CUBLAS_COMPUTE_32F). One handle
 * per device, created on first use with the device current, on the legacy default stream (the one
 * the other kernels of this backend use). */
#include "ml_cuda_kernels.h"

#include <cublas_api.h>
#include <dlfcn.h>
#include <library_types.h>
#include <limits.h>
#include <pthread.h>

namespace {

typedef cublasStatus_t (*create_fn)(cublasHandle_t *);
typedef cublasStatus_t (*destroy_fn)(cublasHandle_t);
typedef cublasStatus_t (*set_math_fn)(cublasHandle_t, cublasMath_t);
typedef const char *(*status_str_fn)(cublasStatus_t);
typedef cublasStatus_t (*gemm_sb_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                     const void *, const void *, cudaDataType, int, long long int, const void *,
                                     cudaDataType, int, long long int, const void *, void *, cudaDataType, int,
                                     long long int, int, cublasComputeType_t, cublasGemmAlgo_t);
typedef cublasStatus_t (*gemm_sb64_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int64_t, int64_t,
                                       int64_t, const void *, const void *, cudaDataType, int64_t, long long int,
                                       const void *, cudaDataType, int64_t, long long int, const void *, void *,
                                       cudaDataType, int64_t, long long int, int64_t, cublasComputeType_t,
                                       cublasGemmAlgo_t);

#define GEMM_MAX_DEV 64

struct cublas_lib {
    bool tried, ok;
    char why[512];
    void *so;
    create_fn create;
    destroy_fn destroy;
    set_math_fn set_math;
    status_str_fn status_str; /* may be NULL */
    gemm_sb_fn gemm;
    gemm_sb64_fn gemm64;      /* may be NULL (cuBLAS < 12) */
    cublasHandle_t handle[GEMM_MAX_DEV];
};

cublas_lib g_lib;
pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
bool g_tf32 = false;

/* under g_mu */
void lib_load(void) {
    if (g_lib.tried) return;
    g_lib.tried = true;
    const char *names[2] = {"libcublas.so.13", "libcublas.so"};
    char err0[256] = "";
    for (int i = 0; i < 2 && !g_lib.so; i++) {
        g_lib.so = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (!g_lib.so && i == 0) {
            const char *m = dlerror();
            snprintf(err0, sizeof err0, "%s", m ? m : "not found");
        } else if (!g_lib.so) {
            (void)dlerror();
        }
    }
    if (!g_lib.so) {
        snprintf(g_lib.why, sizeof g_lib.why, "cuBLAS not found: libcublas.so.13: %s", err0);
        return;
    }
    g_lib.create = (create_fn)dlsym(g_lib.so, "cublasCreate_v2");
    g_lib.destroy = (destroy_fn)dlsym(g_lib.so, "cublasDestroy_v2");
    g_lib.set_math = (set_math_fn)dlsym(g_lib.so, "cublasSetMathMode");
    g_lib.status_str = (status_str_fn)dlsym(g_lib.so, "cublasGetStatusString");
    g_lib.gemm = (gemm_sb_fn)dlsym(g_lib.so, "cublasGemmStridedBatchedEx");
    g_lib.gemm64 = (gemm_sb64_fn)dlsym(g_lib.so, "cublasGemmStridedBatchedEx_64");
    (void)dlerror();
    const char *missing = !g_lib.create ? "cublasCreate_v2" : !g_lib.destroy ? "cublasDestroy_v2"
                        : !g_lib.set_math ? "cublasSetMathMode" : !g_lib.gemm ? "cublasGemmStridedBatchedEx" : NULL;
    if (missing) {
        snprintf(g_lib.why, sizeof g_lib.why, "cuBLAS: the loaded library has no %s", missing);
        dlclose(g_lib.so);
        g_lib.so = NULL;
        return;
    }
    g_lib.ok = true;
}

const char *status_name(cublasStatus_t s) {
    if (g_lib.status_str) {
        const char *m = g_lib.status_str(s);
        if (m) return m;
    }
    switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
    }
}

ml_err status_err(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_ALLOC_FAILED: return ML_ERR_OOM;
    case CUBLAS_STATUS_INVALID_VALUE:
    case CUBLAS_STATUS_NOT_SUPPORTED:
    case CUBLAS_STATUS_ARCH_MISMATCH: return ML_ERR_UNSUPPORTED;
    case CUBLAS_STATUS_NOT_INITIALIZED: return ML_ERR_DEVICE;
    default: return ML_ERR_INTERNAL;
    }
}

/* the handle of device dev (current), created on first use; NULL + error set */
cublasHandle_t get_handle(int dev) {
    pthread_mutex_lock(&g_mu);
    lib_load();
    cublasHandle_t h = NULL;
    if (!g_lib.ok) {
        ml_seterr(ML_ERR_DEVICE, "%s", g_lib.why);
    } else if (dev < 0 || dev >= GEMM_MAX_DEV) {
        ml_seterr(ML_ERR_DEVICE, "cuda gemm: device %d out of range", dev);
    } else if (!(h = g_lib.handle[dev])) {
        cublasStatus_t s = g_lib.create(&h);
        if (s != CUBLAS_STATUS_SUCCESS) {
            h = NULL;
            ml_seterr(status_err(s) == ML_ERR_OOM ? ML_ERR_OOM : ML_ERR_DEVICE,
                      "cuBLAS: cublasCreate on device %d failed: %s", dev, status_name(s));
        } else {
            g_lib.handle[dev] = h;
        }
    }
    pthread_mutex_unlock(&g_mu);
    return h;
}

const char *op_str(bool t) { return t ? "T" : "N"; }

} // namespace

extern "C" void ml_cuda_set_tf32(bool on) { g_tf32 = on; }
extern "C" bool ml_cuda_tf32(void) { return g_tf32; }

extern "C" ml_err ml_cuda_gemm(int kd, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const void *a,
                               int64_t lda, int64_t stride_a, const void *b, int64_t ldb, int64_t stride_b, void *c,
                               int64_t ldc, int64_t stride_c, int64_t batch, double alpha, double beta, int dev) {
    cudaDataType dt;
    cublasComputeType_t ct;
    bool tf32 = false;
    switch (kd) {
    case ML_F32:
        dt = CUDA_R_32F;
        tf32 = g_tf32;
        ct = tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
        break;
    case ML_F64: dt = CUDA_R_64F; ct = CUBLAS_COMPUTE_64F; break;
    case ML_BF16: dt = CUDA_R_16BF; ct = CUBLAS_COMPUTE_32F; break;
    case ML_F16: dt = CUDA_R_16F; ct = CUBLAS_COMPUTE_32F; break;
    default:
        return ml_seterr(ML_ERR_DTYPE, "cuda gemm: %s is not supported (float32, float64, bfloat16, float16)",
                         ml_dtype_name((ml_dtype)kd));
    }
    if (m < 0 || n < 0 || k < 0 || batch < 0)
        return ml_seterr(ML_ERR_ARG, "cuda gemm: negative size (m %lld, n %lld, k %lld, batch %lld)", (long long)m,
                         (long long)n, (long long)k, (long long)batch);
    if (m == 0 || n == 0 || batch == 0) return ML_OK;
    /* the stored shapes (rows, cols) of A and B; a leading dimension only matters with > 1 row,
     * cuBLAS still wants it >= the column count */
    int64_t ar = trans_a ? k : m, ac = trans_a ? m : k, br = trans_b ? n : k, bc = trans_b ? k : n;
    if (ar <= 1 && lda < ac) lda = ac;
    if (br <= 1 && ldb < bc) ldb = bc;
    if (m <= 1 && ldc < n) ldc = n;
    if (lda < 1) lda = 1;
    if (ldb < 1) ldb = 1;
    if (ldc < 1) ldc = 1;
    if (lda < ac || ldb < bc || ldc < n)
        return ml_seterr(ML_ERR_ARG,
                         "cuda gemm: leading dimensions too small (lda %lld for %lld columns, ldb %lld for %lld, "
                         "ldc %lld for %lld)",
                         (long long)lda, (long long)ac, (long long)ldb, (long long)bc, (long long)ldc, (long long)n);
    if (k > 0 && (!a || !b)) return ml_seterr(ML_ERR_ARG, "cuda gemm: NULL operand");
    if (!c) return ml_seterr(ML_ERR_ARG, "cuda gemm: NULL output");

    int prev = -1;
    if (cudaGetDevice(&prev) != cudaSuccess) {
        cudaError_t ce = cudaGetLastError();
        return ml_seterr(ML_ERR_DEVICE, "cuda gemm: %s", cudaGetErrorString(ce));
    }
    if (prev != dev) {
        cudaError_t ce = cudaSetDevice(dev);
        if (ce != cudaSuccess) {
            (void)cudaGetLastError();
            return ml_seterr(ML_ERR_DEVICE, "cuda gemm: cannot use device %d: %s", dev, cudaGetErrorString(ce));
        }
    }
    ml_err e = ML_OK;
    cublasHandle_t h = get_handle(dev);
    if (!h) e = ML_ERR_DEVICE;
    if (!e) {
        /* 16-bit types: no reduced-precision (16-bit) reductions inside cuBLAS, f32 throughout */
        int mode = tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH;
        if (kd == ML_BF16 || kd == ML_F16) mode |= CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION;
        cublasStatus_t s = g_lib.set_math(h, (cublasMath_t)mode);
        /* column-major: C^T [n, m] = op(B)^T [n, k] op(A)^T [k, m] */
        cublasOperation_t opa = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, opb = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
        float af = (float)alpha, bf = (float)beta;
        const void *pa = kd == ML_F64 ? (const void *)&alpha : (const void *)&af;
        const void *pb = kd == ML_F64 ? (const void *)&beta : (const void *)&bf;
        bool fits = n <= INT_MAX && m <= INT_MAX && k <= INT_MAX && lda <= INT_MAX && ldb <= INT_MAX &&
                    ldc <= INT_MAX && batch <= INT_MAX;
        if (s == CUBLAS_STATUS_SUCCESS) {
            if (fits) {
                s = g_lib.gemm(h, opa, opb, (int)n, (int)m, (int)k, pa, b, dt, (int)ldb, stride_b, a, dt, (int)lda,
                               stride_a, pb, c, dt, (int)ldc, stride_c, (int)batch, ct, CUBLAS_GEMM_DEFAULT);
            } else if (g_lib.gemm64) {
                s = g_lib.gemm64(h, opa, opb, n, m, k, pa, b, dt, ldb, stride_b, a, dt, lda, stride_a, pb, c, dt, ldc,
                                 stride_c, batch, ct, CUBLAS_GEMM_DEFAULT);
            } else {
                e = ml_seterr(ML_ERR_UNSUPPORTED, "cuda gemm: sizes beyond 2^31 need cuBLAS 12 or later");
            }
        }
        if (!e && s != CUBLAS_STATUS_SUCCESS)
            e = ml_seterr(status_err(s),
                          "cuBLAS gemm (%s, A%s B%s, m %lld, n %lld, k %lld, batch %lld, lda %lld, ldb %lld, ldc %lld) "
                          "failed: %s",
                          ml_dtype_name((ml_dtype)kd), op_str(trans_a), op_str(trans_b), (long long)m, (long long)n,
                          (long long)k, (long long)batch, (long long)lda, (long long)ldb, (long long)ldc,
                          status_name(s));
    }
    if (prev != dev) (void)cudaSetDevice(prev);
    return e;
}
