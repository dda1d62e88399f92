/* Private to ml_ew.c / ml_reduce.c / ml_index.c: the fused elementwise kernel table.
 * Not part of the public API.
 *
 * Each internal op: (name, arity, bool output?, expression). The expression is written once for
 * both kernel types: T is the kernel type (float or double), M(fn) names the libm function for T
 * (expf vs exp), x/y/z are the inputs, p0..p3 the op parameters (converted to T). */
#ifndef ML_EW_INTERNAL_H
#define ML_EW_INTERNAL_H

#include "ml_tensor.h"

#include <math.h>

/* Vector math. glibc's libmvec (pulled in by -lm through libm.so's linker script) has SIMD
 * versions of these functions (max error 4 ulp); declaring them "omp declare simd" lets GCC
 * vectorize the f32/f64 kernels without -ffast-math. Define ML_NO_LIBMVEC to opt out. */
#if defined(__x86_64__) && defined(__GLIBC__) && defined(_OPENMP) && !defined(__FAST_MATH__) && \
    !defined(ML_NO_LIBMVEC) && !defined(__CUDACC__)
#if __GLIBC_PREREQ(2, 35)
#define ML_SIMD_DECL_(T, fn) _Pragma("omp declare simd notinbranch") extern T fn(T);
#define ML_SIMD_DECL2_(T, fn) _Pragma("omp declare simd notinbranch") extern T fn(T, T);
ML_SIMD_DECL_(float, expf) ML_SIMD_DECL_(double, exp)
ML_SIMD_DECL_(float, logf) ML_SIMD_DECL_(double, log)
ML_SIMD_DECL_(float, sinf) ML_SIMD_DECL_(double, sin)
ML_SIMD_DECL_(float, cosf) ML_SIMD_DECL_(double, cos)
ML_SIMD_DECL_(float, tanf) ML_SIMD_DECL_(double, tan)
ML_SIMD_DECL_(float, tanhf) ML_SIMD_DECL_(double, tanh)
ML_SIMD_DECL_(float, erff) ML_SIMD_DECL_(double, erf)
ML_SIMD_DECL_(float, log1pf) ML_SIMD_DECL_(double, log1p)
ML_SIMD_DECL_(float, expm1f) ML_SIMD_DECL_(double, expm1)
ML_SIMD_DECL2_(float, powf) ML_SIMD_DECL2_(double, pow)
ML_SIMD_DECL2_(float, atan2f) ML_SIMD_DECL2_(double, atan2)
#undef ML_SIMD_DECL_
#undef ML_SIMD_DECL2_
#endif
#endif

/* ML_HD marks a function the table's expressions call: host code in the C build, host and device
 * code under nvcc (modules/cuda/ml_cuda_ew.cu compiles ML_IOP_LIST for the GPU). One definition. */
#ifdef __CUDACC__
#define ML_HD __host__ __device__
#else
#define ML_HD
#endif

/* Derivatives used by IOP_G_GELU_TANH / IOP_G_SILU through M(ml_gelu_tanh_d) / M(ml_silu_d): the
 * f suffix is the float version. */
static inline ML_HD float ml_gelu_tanh_df(float x) {
    const float k = 0.79788456080286535588f, c = 0.044715f;
    float t = tanhf(k * (x + c * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * c * x * x);
}
static inline ML_HD double ml_gelu_tanh_d(double x) {
    const double k = 0.79788456080286535588, c = 0.044715;
    double t = tanh(k * (x + c * x * x * x));
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * c * x * x);
}
static inline ML_HD float ml_silu_df(float x) {
    float s = 1.0f / (1.0f + expf(-x));
    return s * (1.0f + x * (1.0f - s));
}
static inline ML_HD double ml_silu_d(double x) {
    double s = 1.0 / (1.0 + exp(-x));
    return s * (1.0 + x * (1.0 - s));
}

#define ML_IOP_LIST(X)                                                                              \
    /* binary forward */                                                                            \
    X(IOP_ADD, 2, 0, x + y)                                                                         \
    X(IOP_SUB, 2, 0, x - y)                                                                         \
    X(IOP_MUL, 2, 0, x * y)                                                                         \
    X(IOP_DIV, 2, 0, x / y)                                                                         \
    X(IOP_POW, 2, 0, M(pow)(x, y))                                                                  \
    X(IOP_MAX, 2, 0, (x > y || x != x) ? x : y)                                                     \
    X(IOP_MIN, 2, 0, (x < y || x != x) ? x : y)                                                     \
    X(IOP_FMOD, 2, 0, M(fmod)(x, y))                                                                \
    X(IOP_ATAN2, 2, 0, M(atan2)(x, y))                                                              \
    X(IOP_EQ, 2, 1, x == y)                                                                         \
    X(IOP_NE, 2, 1, x != y)                                                                         \
    X(IOP_LT, 2, 1, x < y)                                                                          \
    X(IOP_LE, 2, 1, x <= y)                                                                         \
    X(IOP_GT, 2, 1, x > y)                                                                          \
    X(IOP_GE, 2, 1, x >= y)                                                                         \
    X(IOP_AND, 2, 1, (x != 0) & (y != 0))                                                           \
    X(IOP_OR, 2, 1, (x != 0) | (y != 0))                                                            \
    X(IOP_XOR, 2, 1, (x != 0) ^ (y != 0))                                                           \
    /* unary forward */                                                                             \
    X(IOP_NEG, 1, 0, -x)                                                                            \
    X(IOP_EXP, 1, 0, M(exp)(x))                                                                     \
    X(IOP_LOG, 1, 0, M(log)(x))                                                                     \
    X(IOP_SQRT, 1, 0, M(sqrt)(x))                                                                   \
    X(IOP_RSQRT, 1, 0, (T)1 / M(sqrt)(x))                                                           \
    X(IOP_ABS, 1, 0, M(fabs)(x))                                                                    \
    X(IOP_SIGN, 1, 0, x > 0 ? (T)1 : x < 0 ? (T)-1 : x)                                             \
    X(IOP_FLOOR, 1, 0, M(floor)(x))                                                                 \
    X(IOP_CEIL, 1, 0, M(ceil)(x))                                                                   \
    X(IOP_ROUND, 1, 0, M(nearbyint)(x))                                                             \
    X(IOP_TRUNC, 1, 0, M(trunc)(x))                                                                 \
    X(IOP_SIN, 1, 0, M(sin)(x))                                                                     \
    X(IOP_COS, 1, 0, M(cos)(x))                                                                     \
    X(IOP_TAN, 1, 0, M(tan)(x))                                                                     \
    X(IOP_TANH, 1, 0, M(tanh)(x))                                                                   \
    X(IOP_SIGMOID, 1, 0, (T)1 / ((T)1 + M(exp)(-x)))                                                \
    X(IOP_RELU, 1, 0, x < 0 ? (T)0 : x)                                                             \
    X(IOP_GELU, 1, 0, (T)0.5 * x * ((T)1 + M(erf)(x * (T)0.70710678118654752440)))                  \
    X(IOP_GELU_TANH, 1, 0,                                                                          \
      (T)0.5 * x * ((T)1 + M(tanh)((T)0.79788456080286535588 * (x + (T)0.044715 * x * x * x))))    \
    X(IOP_SILU, 1, 0, x / ((T)1 + M(exp)(-x)))                                                      \
    X(IOP_SOFTPLUS, 1, 0, (x > 0 ? x : (T)0) + M(log1p)(M(exp)(-M(fabs)(x))))                      \
    X(IOP_LOG1P, 1, 0, M(log1p)(x))                                                                 \
    X(IOP_EXPM1, 1, 0, M(expm1)(x))                                                                 \
    X(IOP_RECIP, 1, 0, (T)1 / x)                                                                    \
    X(IOP_SQUARE, 1, 0, x * x)                                                                      \
    X(IOP_ERF, 1, 0, M(erf)(x))                                                                     \
    X(IOP_NOT, 1, 1, x == 0)                                                                        \
    X(IOP_ISNAN, 1, 1, x != x)                                                                      \
    X(IOP_ISINF, 1, 1, x == (T)INFINITY || x == -(T)INFINITY)                                       \
    /* parameterized unary */                                                                       \
    X(IOP_LEAKY, 1, 0, x > 0 ? x : x * p0)                                                          \
    X(IOP_ELU, 1, 0, x > 0 ? x : p0 * M(expm1)(x))                                                  \
    X(IOP_CLAMP, 1, 0, (x < p0 ? p0 : x) > p1 ? p1 : (x < p0 ? p0 : x))                             \
    X(IOP_AFFINE, 1, 0, x * p0 + p1)                                                                \
    X(IOP_COPY, 1, 0, x)                                                                            \
    X(IOP_NONZERO, 1, 0, (T)(x != 0))                                                               \
    X(IOP_ISZERO, 1, 0, (T)(x == 0))                                                                \
    X(IOP_ZEROTO1, 1, 0, x == 0 ? (T)1 : x)                                                         \
    /* parameterized binary */                                                                      \
    X(IOP_PRELU, 2, 0, x > 0 ? x : x * y)                                                           \
    X(IOP_AXPBY, 2, 0, x * p0 + y * p1)                                                             \
    X(IOP_LERP, 2, 0, p0 < (T)0.5 ? x + p0 * (y - x) : y - (y - x) * ((T)1 - p0))                   \
    /* unary gradients: x = upstream grad, y = saved input or output */                           \
    X(IOP_G_SQRT, 2, 0, (T)0.5 * x / y)                                                             \
    X(IOP_G_RSQRT, 2, 0, (T)-0.5 * x * y * y * y)                                                   \
    X(IOP_G_ABS, 2, 0, y > 0 ? x : y < 0 ? -x : (T)0)                                               \
    X(IOP_G_SIN, 2, 0, x * M(cos)(y))                                                               \
    X(IOP_G_COS, 2, 0, -x * M(sin)(y))                                                              \
    X(IOP_G_TAN, 2, 0, x * ((T)1 + y * y))                                                          \
    X(IOP_G_TANH, 2, 0, x * ((T)1 - y * y))                                                         \
    X(IOP_G_SIGMOID, 2, 0, x * y * ((T)1 - y))                                                      \
    X(IOP_G_RELU, 2, 0, y > 0 ? x : (T)0)                                                           \
    X(IOP_G_GELU, 2, 0,                                                                             \
      x * ((T)0.5 * ((T)1 + M(erf)(y * (T)0.70710678118654752440)) +                                \
           y * (T)0.39894228040143267794 * M(exp)((T)-0.5 * y * y)))                                \
    X(IOP_G_GELU_TANH, 2, 0, x * M(ml_gelu_tanh_d)(y))                                              \
    X(IOP_G_SILU, 2, 0, x * M(ml_silu_d)(y))                                                        \
    X(IOP_G_SOFTPLUS, 2, 0, x / ((T)1 + M(exp)(-y)))                                                \
    X(IOP_G_LOG1P, 2, 0, x / ((T)1 + y))                                                            \
    X(IOP_G_EXPM1, 2, 0, x * (y + (T)1))                                                            \
    X(IOP_G_RECIP, 2, 0, -x * y * y)                                                                \
    X(IOP_G_SQUARE, 2, 0, (T)2 * x * y)                                                             \
    X(IOP_G_ERF, 2, 0, x * (T)1.12837916709551257390 * M(exp)(-y * y))                              \
    X(IOP_G_LEAKY, 2, 0, y > 0 ? x : x * p0)                                                        \
    X(IOP_G_ELU, 2, 0, y > 0 ? x : x * p0 * M(exp)(y))                                              \
    X(IOP_G_CLAMP, 2, 0, (y >= p0 && y <= p1) ? x : (T)0)                                           \
    X(IOP_G_PRELU_W, 2, 0, y > 0 ? (T)0 : x * y)                                                    \
    X(IOP_G_STDSCALE, 2, 0, y == 0 ? (T)0 : x / ((T)2 * y))                                         \
    /* ternary gradients: x = upstream grad, y = first input, z = second input / saved output */   \
    X(IOP_G_DIV_B, 3, 0, -x * y / (z * z))                                                          \
    X(IOP_G_POW_A, 3, 0, z == 0 ? (T)0 : x * z * M(pow)(y, z - (T)1))                               \
    X(IOP_G_POW_B, 3, 0, (y == 0 && z >= 0) ? (T)0 : x * M(pow)(y, z) * M(log)(y))                  \
    X(IOP_G_MAX_A, 3, 0, y < z ? (T)0 : y == z ? (T)0.5 * x : x)                                    \
    X(IOP_G_MAX_B, 3, 0, z < y ? (T)0 : y == z ? (T)0.5 * x : x)                                    \
    X(IOP_G_MIN_A, 3, 0, y > z ? (T)0 : y == z ? (T)0.5 * x : x)                                    \
    X(IOP_G_MIN_B, 3, 0, z > y ? (T)0 : y == z ? (T)0.5 * x : x)                                    \
    X(IOP_G_ATAN2_A, 3, 0, x * z / (y * y + z * z))                                                 \
    X(IOP_G_ATAN2_B, 3, 0, -x * y / (y * y + z * z))                                                \
    X(IOP_G_FMOD_B, 3, 0, -x * M(trunc)(y / z))                                                     \
    X(IOP_G_PRELU_X, 3, 0, y > 0 ? x : x * z)                                                       \
    /* x = product of the nonzeros, y = number of zeros, z = input */                              \
    X(IOP_G_PROD, 3, 0, y == 0 ? x / z : (y == 1 && z == 0) ? x : (T)0)                             \
    X(IOP_G_NORM2, 3, 0, z == 0 ? (T)0 : x * y / z)                                                 \
    /* p0 = p: x * y|y|^(p-2) / z^(p-1) */                                                          \
    X(IOP_G_NORMP, 3, 0,                                                                            \
      (z == 0 || y == 0) ? (T)0 : x * y * M(pow)(M(fabs)(y), p0 - (T)2) / M(pow)(z, p0 - (T)1))    \
    X(IOP_G_NORMINF, 3, 0, M(fabs)(y) == z ? (y > 0 ? x : y < 0 ? -x : (T)0) : (T)0)                \
    X(IOP_G_EQMASK, 3, 0, y == z ? x : (T)0)                                                        \
    X(IOP_G_VAR, 3, 0, x * p0 * (y - z))                                                            \
    X(IOP_G_LSE, 3, 0, x * M(exp)(y - z))

typedef enum {
#define ML_IOP_ENUM_(name, ar, ob, expr) name,
    ML_IOP_LIST(ML_IOP_ENUM_)
#undef ML_IOP_ENUM_
    ML_NIOPS
} ml_iop;

/* out = iop(ins[0..nin)) with NumPy broadcasting. Inputs must be floating point; they are computed
 * in f64 if any input is f64, else in f32 (bf16/f16 inputs are converted). Output: the kernel type
 * (or bool for comparison ops). Not recorded by autograd. params may be NULL. */
ml_err ml_ew_map(ml_tensor **out, const char *opname, int iop, int nin, ml_tensor *const *ins,
                 const double *params);

/* Gradient helper: un-broadcast g to the recorded shape of node input i and cast it to that
 * input's dtype. Consumes g (the reference passes to *out, or g is released). */
ml_err ml_grad_finish(ml_tensor **out, ml_tensor *g, ml_node *n, int i);

/* Fail with ML_ERR_GRAD when `t` is a leaf that requires grad and grad mode is on. */
ml_err ml_check_inplace(const char *op, ml_tensor *t);

/* a 0-d tensor of dtype dt holding v */
ml_err ml_scalar_tensor(ml_tensor **out, ml_dtype dt, double v);

#endif
