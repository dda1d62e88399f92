/* CUDA elementwise kernels: ml_cuda_ew (the ML_IOP_LIST table of ml_ew_internal.h, compiled for the
 * device from the same expressions as the CPU's float_exec), ml_cuda_copy (strided broadcast copy
 * with the CPU's dtype conversions) and ml_cuda_fill.
 *
 * Launch: 256 threads per block, min(ceil(n / 256), 65536) blocks, grid-stride loops over the n
 * elements of the broadcast shape. The host first drops size-1 dims and merges neighbouring dims
 * that every operand walks contiguously; when every operand is then linear (or a scalar, or one
 * broadcast element) a flat kernel runs without unravelling, else each thread unravels its linear
 * index over the (<= 8) merged dims. Everything runs on the legacy default stream, asynchronously;
 * only launch errors are reported here. */
#include "ml_cuda_kernels.h"

#include <stdio.h>

namespace {

/* ------------------------------------------------ the op table as functors */
/* One struct per (iop, kernel type): ap(x, y, z, p0, p1) is the table's expression with T and
 * M(fn) bound as in ml_ew.c (float: expf, ...; double: exp, ...). Bool ops return uint8_t 0/1. */
#define EWK_CAT_(a, b) a##b
#define EWK_CAT(a, b) EWK_CAT_(a, b)
#define EWK_OUT_0 T
#define EWK_OUT_1 uint8_t
#define EWK_FUNCTOR_(name, ar, ob, expr)                                                            \
    struct EWK_CAT(name, EWK_SUF) {                                                                 \
        typedef T in_t;                                                                             \
        typedef EWK_OUT_##ob out_t;                                                                 \
        static constexpr int arity = ar;                                                            \
        static __host__ __device__ __forceinline__ out_t ap(T x, T y, T z, T p0, T p1) {            \
            (void)x;                                                                                \
            (void)y;                                                                                \
            (void)z;                                                                                \
            (void)p0;                                                                               \
            (void)p1;                                                                               \
            return (out_t)(expr);                                                                   \
        }                                                                                           \
    };

#define T float
#define M(fn) fn##f
#define EWK_SUF _f32
ML_IOP_LIST(EWK_FUNCTOR_)
#undef T
#undef M
#undef EWK_SUF

#define T double
#define M(fn) fn
#define EWK_SUF _f64
ML_IOP_LIST(EWK_FUNCTOR_)
#undef T
#undef M
#undef EWK_SUF

const char *const iop_names[ML_NIOPS] = {
#define EWK_NAME_(name, ar, ob, expr) #name,
    ML_IOP_LIST(EWK_NAME_)
#undef EWK_NAME_
};
const unsigned char iop_arity[ML_NIOPS] = {
#define EWK_AR_(name, ar, ob, expr) ar,
    ML_IOP_LIST(EWK_AR_)
#undef EWK_AR_
};
const unsigned char iop_boolout[ML_NIOPS] = {
#define EWK_OB_(name, ar, ob, expr) ob,
    ML_IOP_LIST(EWK_OB_)
#undef EWK_OB_
};

/* ------------------------------------------------------------- ew kernels */
enum { IN_TENSOR = 0, IN_SCALAR = 1, IN_ONE = 2 /* one element broadcast everywhere */ };

template <typename TT>
struct ew_args {
    mlk_space sp;              /* operand 0 the output, 1..arity the inputs */
    char *base[MLK_MAXOPS];
    TT sc[MLK_MAXOPS];         /* scalar inputs, converted to the kernel type */
    int mode[MLK_MAXOPS];
    TT p0, p1;
};

template <class F>
__device__ __forceinline__ typename F::in_t ew_in_strided(const ew_args<typename F::in_t> &a, int k,
                                                          const int64_t *o) {
    typedef typename F::in_t TT;
    return a.mode[k] == IN_SCALAR ? a.sc[k] : ((const TT *)a.base[k])[o[k]];
}

/* general case: unravel i over the merged dims */
template <class F>
__global__ void ew_strided_k(const ew_args<typename F::in_t> a) {
    typedef typename F::in_t TT;
    typedef typename F::out_t TO;
    constexpr int NOPS = F::arity + 1;
    const int64_t n = a.sp.n, step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        int64_t o[NOPS];
        mlk_unravel<NOPS>(a.sp, i, o);
        TT x = ew_in_strided<F>(a, 1, o), y = (TT)0, z = (TT)0;
        if constexpr (NOPS > 2) y = ew_in_strided<F>(a, 2, o);
        if constexpr (NOPS > 3) z = ew_in_strided<F>(a, 3, o);
        ((TO *)a.base[0])[o[0]] = F::ap(x, y, z, a.p0, a.p1);
    }
}

template <class F>
__device__ __forceinline__ typename F::in_t ew_in_flat(const ew_args<typename F::in_t> &a, int k, int64_t i) {
    typedef typename F::in_t TT;
    const TT *p = (const TT *)a.base[k] + a.sp.off[k];
    return a.mode[k] == IN_SCALAR ? a.sc[k] : a.mode[k] == IN_ONE ? p[0] : p[i];
}

/* fast path: the output and every tensor input are linear in i (or one broadcast element) */
template <class F>
__global__ void ew_flat_k(const ew_args<typename F::in_t> a) {
    typedef typename F::in_t TT;
    typedef typename F::out_t TO;
    constexpr int NOPS = F::arity + 1;
    TO *out = (TO *)a.base[0] + a.sp.off[0];
    const int64_t n = a.sp.n, step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        TT x = ew_in_flat<F>(a, 1, i), y = (TT)0, z = (TT)0;
        if constexpr (NOPS > 2) y = ew_in_flat<F>(a, 2, i);
        if constexpr (NOPS > 3) z = ew_in_flat<F>(a, 3, i);
        out[i] = F::ap(x, y, z, a.p0, a.p1);
    }
}

template <class F>
void ew_launch(const ew_args<typename F::in_t> &a, bool flat) {
    unsigned nb = mlk_blocks(a.sp.n, MLK_THREADS);
    if (flat) ew_flat_k<F><<<nb, MLK_THREADS>>>(a);
    else ew_strided_k<F><<<nb, MLK_THREADS>>>(a);
}

void ew_dispatch(int iop, const ew_args<float> &a, bool flat) {
    switch (iop) {
#define EWK_CASE_(name, ar, ob, expr) case name: ew_launch<name##_f32>(a, flat); break;
        ML_IOP_LIST(EWK_CASE_)
#undef EWK_CASE_
    default: break;
    }
}

void ew_dispatch(int iop, const ew_args<double> &a, bool flat) {
    switch (iop) {
#define EWK_CASE_(name, ar, ob, expr) case name: ew_launch<name##_f64>(a, flat); break;
        ML_IOP_LIST(EWK_CASE_)
#undef EWK_CASE_
    default: break;
    }
}

template <typename TT>
ml_err ew_run(int iop, int nops, const mlk_space &sp, const ml_cuda_opnd *ops, const double *params) {
    ew_args<TT> a;
    memset(&a, 0, sizeof a);
    a.sp = sp;
    bool flat = mlk_space_linear(&sp, 0);
    for (int k = 0; k < nops; k++) {
        a.base[k] = ops[k].base;
        if (k > 0 && ops[k].is_scalar) {
            a.mode[k] = IN_SCALAR;
            a.sc[k] = (TT)ops[k].scalar;
            continue;
        }
        bool zero = true;
        for (int d = 0; d < sp.ndim; d++) if (sp.st[k][d] != 0) zero = false;
        a.mode[k] = (k > 0 && zero) ? IN_ONE : IN_TENSOR;
        if (k > 0 && !zero && !mlk_space_linear(&sp, k)) flat = false;
    }
    a.p0 = params ? (TT)params[0] : (TT)0;
    a.p1 = params ? (TT)params[1] : (TT)0;
    ew_dispatch(iop, a, flat);
    return ML_OK;
}

/* ------------------------------------------------------------ copy / fill */
struct cp_args {
    mlk_space sp; /* operand 0 dst, 1 src */
    char *dst;
    const char *src;
    int dd, sd;
};

template <typename E> /* same dtype: the element's bytes */
__global__ void copy_raw_k(const cp_args a) {
    const int64_t n = a.sp.n, step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        int64_t o[2];
        mlk_unravel<2>(a.sp, i, o);
        ((E *)a.dst)[o[0]] = ((const E *)a.src)[o[1]];
    }
}

template <typename E>
__global__ void copy_raw_flat_k(E *dst, const E *src, int64_t n) {
    const int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) dst[i] = src[i];
}

/* dtype conversion through double, as ml_store_elem(ml_load_elem(...)) */
__global__ void copy_conv_k(const cp_args a) {
    const int64_t n = a.sp.n, step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        int64_t o[2];
        mlk_unravel<2>(a.sp, i, o);
        mlk_store(a.dst, a.dd, o[0], mlk_load(a.src, a.sd, o[1]));
    }
}

/* the f32 <-> f64 conversions on their own (the common ones) */
template <typename TD, typename TS>
__global__ void copy_cast_k(const cp_args a) {
    const int64_t n = a.sp.n, step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        int64_t o[2];
        mlk_unravel<2>(a.sp, i, o);
        ((TD *)a.dst)[o[0]] = (TD)((const TS *)a.src)[o[1]];
    }
}

template <typename E>
__global__ void fill_k(const mlk_space sp, char *base, E v) {
    const int64_t n = sp.n, step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        int64_t o[1];
        mlk_unravel<1>(sp, i, o);
        ((E *)base)[o[0]] = v;
    }
}

template <typename E>
__global__ void fill_flat_k(E *p, int64_t n, E v) {
    const int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) p[i] = v;
}

template <typename E>
void fill_launch(const mlk_space &sp, char *base, const unsigned char *bytes) {
    E v;
    memcpy(&v, bytes, sizeof v);
    unsigned nb = mlk_blocks(sp.n, MLK_THREADS);
    if (mlk_space_linear(&sp, 0)) fill_flat_k<E><<<nb, MLK_THREADS>>>((E *)base + sp.off[0], sp.n, v);
    else fill_k<E><<<nb, MLK_THREADS>>>(sp, base, v);
}

ml_err check_shape(const char *op, int ndim, const int64_t *shape) {
    if (ndim < 0 || ndim > ML_MAX_DIMS || (ndim > 0 && !shape))
        return ml_seterr(ML_ERR_ARG, "%s: rank %d out of range (0..%d)", op, ndim, ML_MAX_DIMS);
    for (int d = 0; d < ndim; d++)
        if (shape[d] < 0) return ml_seterr(ML_ERR_SHAPE, "%s: negative size in shape %s", op, ml_shape_str(ndim, shape));
    return ML_OK;
}

} // namespace

/* ================================================================ the API */
extern "C" ml_err ml_cuda_ew(int iop, int kd, int ndim, const int64_t *shape, int nops, const ml_cuda_opnd *ops,
                             const double *params) {
    if (iop < 0 || iop >= ML_NIOPS) return ml_seterr(ML_ERR_ARG, "cuda ew: unknown iop %d", iop);
    const char *name = iop_names[iop] + 4; /* without "IOP_" */
    if (kd != ML_F32 && kd != ML_F64)
        return ml_seterr(ML_ERR_DTYPE, "cuda ew %s: kernel type must be float32 or float64, not %s", name,
                         ml_dtype_name((ml_dtype)kd));
    ml_err e = check_shape("cuda ew", ndim, shape);
    if (e) return e;
    int ar = iop_arity[iop];
    if (nops != ar + 1 || !ops)
        return ml_seterr(ML_ERR_ARG, "cuda ew %s: %d operands given, the op takes an output and %d inputs", name, nops,
                         ar);
    int od = iop_boolout[iop] ? ML_BOOL : kd;
    if (ops[0].is_scalar || !(ops[0].dtype == od || (iop_boolout[iop] && ops[0].dtype == ML_U8)))
        return ml_seterr(ML_ERR_DTYPE, "cuda ew %s: the output must be a %s tensor (got %s%s)", name,
                         ml_dtype_name((ml_dtype)od), ops[0].is_scalar ? "a scalar of " : "",
                         ml_dtype_name((ml_dtype)ops[0].dtype));
    for (int k = 1; k < nops; k++)
        if (!ops[k].is_scalar && ops[k].dtype != kd)
            return ml_seterr(ML_ERR_DTYPE, "cuda ew %s: input %d is %s, expected %s (convert first)", name, k,
                             ml_dtype_name((ml_dtype)ops[k].dtype), ml_dtype_name((ml_dtype)kd));
    const int64_t *st[MLK_MAXOPS];
    int64_t off[MLK_MAXOPS];
    for (int k = 0; k < nops; k++) {
        st[k] = ops[k].st;
        off[k] = ops[k].is_scalar ? 0 : ops[k].off;
    }
    static const int64_t zeros[ML_MAX_DIMS] = {0};
    for (int k = 1; k < nops; k++) if (ops[k].is_scalar) st[k] = zeros;
    mlk_space sp;
    mlk_space_init(&sp, ndim, shape, nops, st, off);
    if (sp.n == 0) return ML_OK;
    mlk_device_guard guard(ops[0].base);
    if (kd == ML_F64) e = ew_run<double>(iop, nops, sp, ops, params);
    else e = ew_run<float>(iop, nops, sp, ops, params);
    if (e) return e;
    MLK_CHECK_LAUNCH("cuda ew %s (%s) over %s", name, ml_dtype_name((ml_dtype)kd), ml_shape_str(ndim, shape));
    return ML_OK;
}

extern "C" ml_err ml_cuda_fill(int ndim, const int64_t *shape, const ml_cuda_opnd *dst, double v) {
    ml_err e = check_shape("cuda fill", ndim, shape);
    if (e) return e;
    if (!dst || dst->is_scalar || !mlk_dtype_ok(dst->dtype))
        return ml_seterr(ML_ERR_ARG, "cuda fill: the destination must be a tensor of a known dtype");
    const int64_t *st[1] = {dst->st};
    int64_t off[1] = {dst->off};
    mlk_space sp;
    mlk_space_init(&sp, ndim, shape, 1, st, off);
    if (sp.n == 0) return ML_OK;
    /* the value's bytes, converted on the host with the CPU's rules */
    unsigned char bytes[8] = {0};
    mlk_store((char *)bytes, dst->dtype, 0, v);
    mlk_device_guard guard(dst->base);
    switch (mlk_dtype_size(dst->dtype)) {
    case 8: fill_launch<uint64_t>(sp, dst->base, bytes); break;
    case 4: fill_launch<uint32_t>(sp, dst->base, bytes); break;
    case 2: fill_launch<uint16_t>(sp, dst->base, bytes); break;
    default: fill_launch<uint8_t>(sp, dst->base, bytes); break;
    }
    MLK_CHECK_LAUNCH("cuda fill (%s) over %s", ml_dtype_name((ml_dtype)dst->dtype), ml_shape_str(ndim, shape));
    return ML_OK;
}

extern "C" ml_err ml_cuda_copy(int ndim, const int64_t *shape, const ml_cuda_opnd *dst, const ml_cuda_opnd *src) {
    ml_err e = check_shape("cuda copy", ndim, shape);
    if (e) return e;
    if (!dst || !src || dst->is_scalar || !mlk_dtype_ok(dst->dtype) || (!src->is_scalar && !mlk_dtype_ok(src->dtype)))
        return ml_seterr(ML_ERR_ARG, "cuda copy: destination and source must be tensors of known dtypes");
    if (src->is_scalar) return ml_cuda_fill(ndim, shape, dst, src->scalar);
    const int64_t *st[2] = {dst->st, src->st};
    int64_t off[2] = {dst->off, src->off};
    mlk_space sp;
    mlk_space_init(&sp, ndim, shape, 2, st, off);
    if (sp.n == 0) return ML_OK;
    mlk_device_guard guard(dst->base);
    cp_args a;
    a.sp = sp;
    a.dst = dst->base;
    a.src = src->base;
    a.dd = dst->dtype;
    a.sd = src->dtype;
    unsigned nb = mlk_blocks(sp.n, MLK_THREADS);
    if (a.dd == a.sd) {
        /* Same dtype: the bytes. (The CPU's strided path goes through double, which only differs for
         * int64 beyond 2^53 and signalling NaNs; its contiguous path is a memcpy like this.) */
        int es = mlk_dtype_size(a.dd);
        if (mlk_space_linear(&sp, 0) && mlk_space_linear(&sp, 1)) {
            cudaError_t ce = cudaMemcpyAsync(a.dst + sp.off[0] * es, a.src + sp.off[1] * es, (size_t)(sp.n * es),
                                             cudaMemcpyDeviceToDevice, 0);
            if (ce != cudaSuccess) {
                (void)cudaGetLastError();
                return ml_seterr(mlk_err_code(ce), "cuda copy (%s) over %s: %s: %s", ml_dtype_name((ml_dtype)a.dd),
                                 ml_shape_str(ndim, shape), cudaGetErrorName(ce), cudaGetErrorString(ce));
            }
            return ML_OK;
        }
        switch (es) {
        case 8: copy_raw_k<uint64_t><<<nb, MLK_THREADS>>>(a); break;
        case 4: copy_raw_k<uint32_t><<<nb, MLK_THREADS>>>(a); break;
        case 2: copy_raw_k<uint16_t><<<nb, MLK_THREADS>>>(a); break;
        default: copy_raw_k<uint8_t><<<nb, MLK_THREADS>>>(a); break;
        }
    } else if (a.dd == ML_F32 && a.sd == ML_F64) {
        copy_cast_k<float, double><<<nb, MLK_THREADS>>>(a);
    } else if (a.dd == ML_F64 && a.sd == ML_F32) {
        copy_cast_k<double, float><<<nb, MLK_THREADS>>>(a);
    } else {
        copy_conv_k<<<nb, MLK_THREADS>>>(a);
    }
    MLK_CHECK_LAUNCH("cuda copy %s -> %s over %s", ml_dtype_name((ml_dtype)a.sd), ml_dtype_name((ml_dtype)a.dd),
                     ml_shape_str(ndim, shape));
    return ML_OK;
}
