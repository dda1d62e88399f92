/* Private to the CUDA kernel files (ml_cuda_ew.cu, ml_cuda_reduce.cu, ml_cuda_gemm.cu): how C++
 * includes the C headers, element loads/stores with the CPU's conversion rules (ml_load_elem /
 * ml_store_elem / the bf16 and f16 conversions of ml_core.c, written again for host and device),
 * operand unravelling, launch sizes and error reporting. Only for nvcc. */
#ifndef ML_CUDA_KERNELS_H
#define ML_CUDA_KERNELS_H

#ifndef __CUDACC__
#error "ml_cuda_kernels.h is for nvcc"
#endif

#include <cuda_runtime.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* ml_tensor.h is C11 (_Alignas, no extern "C"): give it C linkage and C++'s alignas here. */
#define _Alignas(n) alignas(n)
extern "C" {
#include "../tensor/ml_tensor.h"
#include "../tensor/ml_ew_internal.h"
}
#undef _Alignas
#include "ml_cuda.h"

#define MLK_HD __host__ __device__ __forceinline__

/* ------------------------------------------------------- conversions */
/* Bit-for-bit the functions of ml_core.c. */
MLK_HD float mlk_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

MLK_HD uint16_t mlk_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                             /* round to nearest even */
    return (uint16_t)(u >> 16);
}

MLK_HD float mlk_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu, u;
    if (exp == 0) {
        if (man == 0) u = sign;
        else { /* subnormal: man * 2^-24, exact in f32 */
            float f = (float)man * 5.9604644775390625e-8f;
            memcpy(&u, &f, 4);
            u |= sign;
        }
    } else if (exp == 31) u = sign | 0x7f800000u | (man << 13);
    else u = sign | ((exp + 112) << 23) | (man << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

MLK_HD uint16_t mlk_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) return sign | 0x7e00u;  /* NaN */
    if (absu >= 0x477ff000u) return sign | 0x7c00u; /* overflow -> inf */
    if (absu < 0x38800000u) {                        /* subnormal or zero */
        float af;
        memcpy(&af, &absu, 4);
        /* lrintf (round to nearest even) of a value < 2^10: exact product, then rintf */
        return sign | (uint16_t)(int)rintf(af * 16777216.0f); /* 2^24 */
    }
    uint32_t r = absu + 0xfffu + ((absu >> 13) & 1u) - (112u << 23);
    return sign | (uint16_t)(r >> 13);
}

/* The CPU's double -> int conversions are C casts compiled for x86-64 (cvttsd2si): truncation
 * toward zero, and NaN or a value outside the type's range gives the "integer indefinite" value
 * INT_MIN. The GPU's casts saturate instead, so the x86 result is spelled out. */
MLK_HD int32_t mlk_d2i32(double v) {
    return (v > -2147483649.0 && v < 2147483648.0) ? (int32_t)v : INT32_MIN;
}
MLK_HD int64_t mlk_d2i64(double v) {
    return (v >= -9223372036854775808.0 && v < 9223372036854775808.0) ? (int64_t)v : INT64_MIN;
}

/* ml_load_elem: element i of base as double */
MLK_HD double mlk_load(const char *base, int dt, int64_t i) {
    switch (dt) {
    case ML_F32: return ((const float *)base)[i];
    case ML_F64: return ((const double *)base)[i];
    case ML_I32: return ((const int32_t *)base)[i];
    case ML_I64: return (double)((const int64_t *)base)[i];
    case ML_U8: return ((const uint8_t *)base)[i];
    case ML_BOOL: return ((const uint8_t *)base)[i] != 0;
    case ML_BF16: return mlk_bf16_to_f32(((const uint16_t *)base)[i]);
    case ML_F16: return mlk_f16_to_f32(((const uint16_t *)base)[i]);
    default: return 0;
    }
}

/* ml_store_elem: v into element i of base */
MLK_HD void mlk_store(char *base, int dt, int64_t i, double v) {
    switch (dt) {
    case ML_F32: ((float *)base)[i] = (float)v; break;
    case ML_F64: ((double *)base)[i] = v; break;
    case ML_I32: ((int32_t *)base)[i] = mlk_d2i32(v); break;
    case ML_I64: ((int64_t *)base)[i] = mlk_d2i64(v); break;
    case ML_U8: ((uint8_t *)base)[i] = (uint8_t)mlk_d2i64(v); break;
    case ML_BOOL: ((uint8_t *)base)[i] = v != 0; break;
    case ML_BF16: ((uint16_t *)base)[i] = mlk_f32_to_bf16((float)v); break;
    case ML_F16: ((uint16_t *)base)[i] = mlk_f32_to_f16((float)v); break;
    default: break;
    }
}

static inline bool mlk_dtype_ok(int dt) { return dt >= ML_F32 && dt <= ML_F16; }

static inline int mlk_dtype_size(int dt) {
    switch (dt) {
    case ML_F64: case ML_I64: return 8;
    case ML_F32: case ML_I32: return 4;
    case ML_BF16: case ML_F16: return 2;
    default: return 1;
    }
}

/* ------------------------------------------------------------ shapes */
#define MLK_MAXOPS 4

/* A broadcast iteration space, size-1 dims dropped and neighbouring dims merged where every
 * operand allows it: element i has offset off[k] + sum_d idx_d(i) * st[k][d] for operand k. */
typedef struct {
    int ndim, nops;
    int64_t n;
    int64_t shape[ML_MAX_DIMS];
    int64_t off[MLK_MAXOPS];
    int64_t st[MLK_MAXOPS][ML_MAX_DIMS];
} mlk_space;

static inline void mlk_space_init(mlk_space *s, int ndim, const int64_t *shape, int nops,
                                  const int64_t *const *st, const int64_t *off) {
    s->nops = nops;
    s->n = 1;
    for (int d = 0; d < ndim; d++) s->n *= shape[d];
    for (int k = 0; k < nops; k++) s->off[k] = off[k];
    int nd = 0;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] == 1) continue;
        bool merge = nd > 0;
        /* dim d merges into the previous kept dim p when st[p] == st[d] * shape[d] for every operand */
        for (int k = 0; k < nops && merge; k++)
            if (s->st[k][nd - 1] != st[k][d] * shape[d]) merge = false;
        if (merge) {
            s->shape[nd - 1] *= shape[d];
            for (int k = 0; k < nops; k++) s->st[k][nd - 1] = st[k][d];
        } else {
            s->shape[nd] = shape[d];
            for (int k = 0; k < nops; k++) s->st[k][nd] = st[k][d];
            nd++;
        }
    }
    s->ndim = nd;
    for (int d = nd; d < ML_MAX_DIMS; d++) {
        s->shape[d] = 1;
        for (int k = 0; k < MLK_MAXOPS; k++) s->st[k][d] = 0;
    }
    for (int k = nops; k < MLK_MAXOPS; k++) {
        s->off[k] = 0;
        for (int d = 0; d < ML_MAX_DIMS; d++) s->st[k][d] = 0;
    }
}

/* operand k of the space walks its elements as off + i (contiguous in iteration order)? */
static inline bool mlk_space_linear(const mlk_space *s, int k) {
    return s->ndim == 0 || (s->ndim == 1 && s->st[k][0] == 1);
}

/* offsets of element i for NOPS operands; 32-bit index arithmetic when n < 2^32 */
template <int NOPS>
MLK_HD void mlk_unravel(const mlk_space &s, int64_t i, int64_t *o) {
    for (int k = 0; k < NOPS; k++) o[k] = s.off[k];
    if (s.n <= (int64_t)UINT32_MAX) {
        uint32_t r = (uint32_t)i;
        for (int d = s.ndim - 1; d >= 0; d--) {
            uint32_t sz = (uint32_t)s.shape[d], q = r / sz, j = r - q * sz;
            for (int k = 0; k < NOPS; k++) o[k] += (int64_t)j * s.st[k][d];
            r = q;
        }
    } else {
        int64_t r = i;
        for (int d = s.ndim - 1; d >= 0; d--) {
            int64_t q = r / s.shape[d], j = r - q * s.shape[d];
            for (int k = 0; k < NOPS; k++) o[k] += j * s.st[k][d];
            r = q;
        }
    }
}

/* ------------------------------------------------------------ launch */
#define MLK_THREADS 256

static inline unsigned mlk_blocks(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    if (b > 65536) b = 65536; /* grid-stride loops cover the rest */
    if (b < 1) b = 1;
    return (unsigned)b;
}

/* Kernels run on the device that holds the data: the current device is switched to the one of
 * pointer p for the launch and restored afterwards. */
struct mlk_device_guard {
    int prev = -1;
    explicit mlk_device_guard(const void *p) {
        cudaPointerAttributes a;
        if (!p || cudaPointerGetAttributes(&a, p) != cudaSuccess) {
            (void)cudaGetLastError();
            return;
        }
        if (a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged) return;
        int cur = -1;
        if (cudaGetDevice(&cur) != cudaSuccess || cur == a.device) return;
        if (cudaSetDevice(a.device) == cudaSuccess) prev = cur;
    }
    ~mlk_device_guard() {
        if (prev >= 0) (void)cudaSetDevice(prev);
    }
    mlk_device_guard(const mlk_device_guard &) = delete;
    mlk_device_guard &operator=(const mlk_device_guard &) = delete;
};

/* the error class of a CUDA runtime error */
static inline ml_err mlk_err_code(cudaError_t e) {
    switch (e) {
    case cudaErrorMemoryAllocation: return ML_ERR_OOM;
    case cudaErrorInvalidValue:
    case cudaErrorInvalidConfiguration:
    case cudaErrorLaunchOutOfResources:
    case cudaErrorInvalidDeviceFunction:
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorInvalidPitchValue:
        return ML_ERR_INTERNAL;
    default: return ML_ERR_DEVICE; /* no driver / device, a fault of an earlier kernel, ... */
    }
}

/* after a launch: ML_OK, or the error with "what: <CUDA's name>: <CUDA's text>" */
#define MLK_CHECK_LAUNCH(...)                                                                       \
    do {                                                                                            \
        cudaError_t ce_ = cudaGetLastError();                                                       \
        if (ce_ != cudaSuccess) {                                                                   \
            char what_[256];                                                                        \
            snprintf(what_, sizeof what_, __VA_ARGS__);                                             \
            return ml_seterr(mlk_err_code(ce_), "%s: %s: %s", what_, cudaGetErrorName(ce_),         \
                             cudaGetErrorString(ce_));                                              \
        }                                                                                           \
    } while (0)

#endif
