/* Elementwise ops: binary (tensor/tensor, tensor/scalar, in place), unary, clamp, where,
 * leaky_relu/elu/prelu, and the fused optimizer updates (lerp_, axpby_, adam_step_).
 *
 * Kernels: every float op is one entry of ML_IOP_LIST (ml_ew_internal.h), instantiated for float
 * and double over the strided iterator of ml_iter.h (a contiguous op becomes one flat loop the
 * compiler vectorizes; a broadcast scalar operand gets its own loop). Integer and bool tensors
 * go through an exact int64 path. bf16/f16 are computed in f32 and rounded back. */
#include "ml_tensor.h"
#include "ml_iter.h"
#include "ml_ew_internal.h"
#include "../cuda/ml_cuda.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ names */
static const char *binop_names[ML_NBINOPS] = {"add", "sub", "mul", "div", "pow", "maximum", "minimum", "fmod",
                                              "atan2", "eq", "ne", "lt", "le", "gt", "ge", "logical_and",
                                              "logical_or", "logical_xor"};
static const char *binop_inames[ML_NBINOPS] = {"add_", "sub_", "mul_", "div_", "pow_", "maximum_", "minimum_",
                                               "fmod_", "atan2_", "eq_", "ne_", "lt_", "le_", "gt_", "ge_",
                                               "logical_and_", "logical_or_", "logical_xor_"};
static const char *unop_names[ML_NUNOPS] = {"neg", "exp", "log", "sqrt", "rsqrt", "abs", "sign", "floor", "ceil",
                                            "round", "trunc", "sin", "cos", "tan", "tanh", "sigmoid", "relu",
                                            "gelu", "gelu_tanh", "silu", "softplus", "log1p", "expm1",
                                            "reciprocal", "square", "erf", "logical_not", "isnan", "isinf"};
static const char *unop_inames[ML_NUNOPS] = {"neg_", "exp_", "log_", "sqrt_", "rsqrt_", "abs_", "sign_", "floor_",
                                             "ceil_", "round_", "trunc_", "sin_", "cos_", "tan_", "tanh_",
                                             "sigmoid_", "relu_", "gelu_", "gelu_tanh_", "silu_", "softplus_",
                                             "log1p_", "expm1_", "reciprocal_", "square_", "erf_",
                                             "logical_not_", "isnan_", "isinf_"};

const char *ml_binop_name(ml_binop op) { return (unsigned)op < ML_NBINOPS ? binop_names[op] : "?"; }
const char *ml_unop_name(ml_unop op) { return (unsigned)op < ML_NUNOPS ? unop_names[op] : "?"; }

static const int binop_iop[ML_NBINOPS] = {IOP_ADD, IOP_SUB, IOP_MUL, IOP_DIV, IOP_POW, IOP_MAX,
                                          IOP_MIN, IOP_FMOD, IOP_ATAN2, IOP_EQ, IOP_NE, IOP_LT,
                                          IOP_LE, IOP_GT, IOP_GE, IOP_AND, IOP_OR, IOP_XOR};
static const int unop_iop[ML_NUNOPS] = {IOP_NEG, IOP_EXP, IOP_LOG, IOP_SQRT, IOP_RSQRT, IOP_ABS,
                                        IOP_SIGN, IOP_FLOOR, IOP_CEIL, IOP_ROUND, IOP_TRUNC, IOP_SIN,
                                        IOP_COS, IOP_TAN, IOP_TANH, IOP_SIGMOID, IOP_RELU, IOP_GELU,
                                        IOP_GELU_TANH, IOP_SILU, IOP_SOFTPLUS, IOP_LOG1P, IOP_EXPM1, IOP_RECIP,
                                        IOP_SQUARE, IOP_ERF, IOP_NOT, IOP_ISNAN, IOP_ISINF};

static const unsigned char iop_arity[ML_NIOPS] = {
#define X_(name, ar, ob, expr) ar,
    ML_IOP_LIST(X_)
#undef X_
};
static const unsigned char iop_boolout[ML_NIOPS] = {
#define X_(name, ar, ob, expr) ob,
    ML_IOP_LIST(X_)
#undef X_
};

/* ------------------------------------------------------------- float kernels */
/* One chunk [lo, hi) of the iteration space (see ml_iter.h). BODY runs once per inner run: cnt_
 * elements from the offsets off_[k] with inner strides st_[k]. */
#define EW_WALK(...)                                                                                \
    do {                                                                                            \
        if (lo >= hi) break;                                                                        \
        int64_t idx_[ML_MAX_DIMS], off_[ML_ITER_MAX_OPS], st_[ML_ITER_MAX_OPS];                     \
        ml_iter_seek(it, lo, idx_, off_);                                                           \
        int last_ = it->ndim - 1;                                                                   \
        int64_t inner_ = last_ >= 0 ? it->shape[last_] : 1;                                         \
        for (int k_ = 0; k_ < it->nops; k_++) st_[k_] = last_ >= 0 ? it->s[k_][last_] : 0;         \
        int64_t pos_ = lo;                                                                          \
        while (pos_ < hi) {                                                                         \
            int64_t cnt_ = inner_ - (last_ >= 0 ? idx_[last_] : 0);                                 \
            if (cnt_ > hi - pos_) cnt_ = hi - pos_;                                                 \
            __VA_ARGS__;                                                                            \
            pos_ += cnt_;                                                                           \
            ml_iter_advance(it, idx_, cnt_, off_);                                                  \
        }                                                                                           \
    } while (0)

/* Loops over operands bs[0] (output, TO) and bs[1..] (inputs, TI). */
#define EW_L1(TO, TI, EXPR)                                                                         \
    EW_WALK({                                                                                       \
        TO *o_ = (TO *)bs[0] + off_[0];                                                             \
        const TI *a_ = (const TI *)bs[1] + off_[1];                                                 \
        if (st_[0] == 1 && st_[1] == 1) {                                                           \
            for (int64_t j_ = 0; j_ < cnt_; j_++) { TI x = a_[j_]; o_[j_] = (TO)(EXPR); }           \
        } else {                                                                                    \
            for (int64_t j_ = 0; j_ < cnt_; j_++) {                                                 \
                TI x = a_[j_ * st_[1]];                                                             \
                o_[j_ * st_[0]] = (TO)(EXPR);                                                       \
            }                                                                                       \
        }                                                                                           \
    })

#define EW_L2(TO, TI, EXPR)                                                                         \
    EW_WALK({                                                                                       \
        TO *o_ = (TO *)bs[0] + off_[0];                                                             \
        const TI *a_ = (const TI *)bs[1] + off_[1];                                                 \
        const TI *b_ = (const TI *)bs[2] + off_[2];                                                 \
        if (st_[0] == 1 && st_[1] == 1 && st_[2] == 1) {                                            \
            for (int64_t j_ = 0; j_ < cnt_; j_++) { TI x = a_[j_], y = b_[j_]; o_[j_] = (TO)(EXPR); } \
        } else if (st_[0] == 1 && st_[1] == 1 && st_[2] == 0) {                                     \
            const TI y = *b_;                                                                       \
            for (int64_t j_ = 0; j_ < cnt_; j_++) { TI x = a_[j_]; o_[j_] = (TO)(EXPR); }           \
        } else if (st_[0] == 1 && st_[1] == 0 && st_[2] == 1) {                                     \
            const TI x = *a_;                                                                       \
            for (int64_t j_ = 0; j_ < cnt_; j_++) { TI y = b_[j_]; o_[j_] = (TO)(EXPR); }           \
        } else {                                                                                    \
            for (int64_t j_ = 0; j_ < cnt_; j_++) {                                                 \
                TI x = a_[j_ * st_[1]], y = b_[j_ * st_[2]];                                        \
                o_[j_ * st_[0]] = (TO)(EXPR);                                                       \
            }                                                                                       \
        }                                                                                           \
    })

#define EW_L3(TO, TI, EXPR)                                                                         \
    EW_WALK({                                                                                       \
        TO *o_ = (TO *)bs[0] + off_[0];                                                             \
        const TI *a_ = (const TI *)bs[1] + off_[1];                                                 \
        const TI *b_ = (const TI *)bs[2] + off_[2];                                                 \
        const TI *c_ = (const TI *)bs[3] + off_[3];                                                 \
        if (st_[0] == 1 && st_[1] == 1 && st_[2] == 1 && st_[3] == 1) {                             \
            for (int64_t j_ = 0; j_ < cnt_; j_++) {                                                 \
                TI x = a_[j_], y = b_[j_], z = c_[j_];                                              \
                o_[j_] = (TO)(EXPR);                                                                \
            }                                                                                       \
        } else {                                                                                    \
            for (int64_t j_ = 0; j_ < cnt_; j_++) {                                                 \
                TI x = a_[j_ * st_[1]], y = b_[j_ * st_[2]], z = c_[j_ * st_[3]];                   \
                o_[j_ * st_[0]] = (TO)(EXPR);                                                       \
            }                                                                                       \
        }                                                                                           \
    })

#define OT_0 T
#define OT_1 uint8_t

/* One small function per (op, type) runs a chunk [lo, hi) of the iteration space; ew_drive
 * splits the range over threads (or runs it inline when small). */
typedef void (*ew_chunk_fn)(const ml_iter *it, int64_t lo, int64_t hi, char *const *bs, const double *pr);

#define EW_CAT_(a, b) a##b
#define EW_CAT(a, b) EW_CAT_(a, b)
#define EW_FN_(name, ar, ob, expr)                                                                  \
    static void EW_CAT(name, EW_SUF)(const ml_iter *it, int64_t lo, int64_t hi, char *const *bs,     \
                                     const double *pr) {                                            \
        const T p0 = (T)pr[0], p1 = (T)pr[1];                                                       \
        (void)p0;                                                                                   \
        (void)p1;                                                                                   \
        EW_L##ar(OT_##ob, T, expr);                                                                 \
    }
#define EW_TAB_(name, ar, ob, expr) EW_CAT(name, EW_SUF),

#define T float
#define M(fn) fn##f
#define EW_SUF _f32
ML_IOP_LIST(EW_FN_)
static const ew_chunk_fn ew_tab_f32[ML_NIOPS] = {ML_IOP_LIST(EW_TAB_)};
#undef T
#undef M
#undef EW_SUF

#define T double
#define M(fn) fn
#define EW_SUF _f64
ML_IOP_LIST(EW_FN_)
static const ew_chunk_fn ew_tab_f64[ML_NIOPS] = {ML_IOP_LIST(EW_TAB_)};
#undef T
#undef M
#undef EW_SUF

/* 2-D tiling of the last two dims when an operand walks its inner dim with a large stride (a
 * transposed input): each EW_TILE x EW_TILE tile touches few enough cache lines to reuse them. */
#define EW_TILE 128

static bool ew_want_tiles(const ml_iter *it) {
    if (it->ndim < 2) return false;
    int d1 = it->ndim - 1, d0 = d1 - 1;
    if (it->shape[d1] < 16 || it->shape[d0] < 16) return false;
    for (int k = 0; k < it->nops; k++) {
        int64_t a1 = it->s[k][d1] < 0 ? -it->s[k][d1] : it->s[k][d1];
        int64_t a0 = it->s[k][d0] < 0 ? -it->s[k][d0] : it->s[k][d0];
        if (a1 >= 16 && a0 < a1) return true;
    }
    return false;
}

static void ew_tile(ew_chunk_fn fn, const ml_iter *it, int64_t q, int64_t t0, int64_t t1, char *const *bs,
                    const double *pr) {
    int d1 = it->ndim - 1, d0 = d1 - 1;
    int64_t per = t0 * t1, o = q / per, r = q - o * per;
    int64_t i0 = (r / t1) * EW_TILE, j0 = (r % t1) * EW_TILE;
    ml_iter tile;
    tile.ndim = 2;
    tile.nops = it->nops;
    tile.shape[0] = it->shape[d0] - i0 < EW_TILE ? it->shape[d0] - i0 : EW_TILE;
    tile.shape[1] = it->shape[d1] - j0 < EW_TILE ? it->shape[d1] - j0 : EW_TILE;
    for (int k = 0; k < it->nops; k++) {
        int64_t off = it->o[k] + i0 * it->s[k][d0] + j0 * it->s[k][d1], rem = o;
        for (int d = d0 - 1; d >= 0; d--) {
            off += (rem % it->shape[d]) * it->s[k][d];
            rem /= it->shape[d];
        }
        tile.o[k] = off;
        tile.s[k][0] = it->s[k][d0];
        tile.s[k][1] = it->s[k][d1];
    }
    fn(&tile, 0, tile.shape[0] * tile.shape[1], bs, pr);
}

static void ew_drive(ew_chunk_fn fn, const ml_iter *it, int64_t n, char *const *bs, const double *pr) {
    int nt = ml_iter_threads(n);
    if (ew_want_tiles(it)) {
        int d1 = it->ndim - 1, d0 = d1 - 1;
        int64_t t0 = (it->shape[d0] + EW_TILE - 1) / EW_TILE, t1 = (it->shape[d1] + EW_TILE - 1) / EW_TILE;
        int64_t ntiles = n / (it->shape[d0] * it->shape[d1]) * t0 * t1;
        if (nt <= 1) {
            for (int64_t q = 0; q < ntiles; q++) ew_tile(fn, it, q, t0, t1, bs, pr);
        } else {
#pragma omp parallel for num_threads(nt) schedule(static)
            for (int64_t q = 0; q < ntiles; q++) ew_tile(fn, it, q, t0, t1, bs, pr);
        }
        return;
    }
    if (nt <= 1) {
        fn(it, 0, n, bs, pr);
        return;
    }
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int t = 0; t < nt; t++) fn(it, n * t / nt, n * (t + 1) / nt, bs, pr);
}

/* ---------------------------------------------------------------- operands */
typedef struct {
    char *base;
    ml_dtype dt;
    int64_t off;
    int64_t st[ML_MAX_DIMS];
    int dev; /* ML_CUDA_HOST for host memory (tensors and scalars), else the CUDA device */
} ew_opnd;

static void opnd_tensor(ew_opnd *o, const ml_tensor *t, int ndim, const int64_t *shape) {
    o->base = (char *)t->storage->data;
    o->dt = (ml_dtype)t->dtype;
    o->off = t->offset;
    o->dev = ml_tensor_is_cuda(t) ? t->storage->device.index : ML_CUDA_HOST;
    ml_broadcast_strides(t, ndim, shape, o->st);
}

static void opnd_scalar(ew_opnd *o, void *p, ml_dtype dt) {
    o->base = (char *)p;
    o->dt = dt;
    o->off = 0;
    o->dev = ML_CUDA_HOST;
    memset(o->st, 0, sizeof o->st);
}

/* Elementwise operands share one device, except that a 0-d host tensor (a scalar, as backward rules
 * make them) goes with tensors on any device, as in PyTorch. *dev: the device of the result. */
static ml_err ew_devices(const char *op, int n, ml_tensor *const *ts, ml_device *dev) {
    ml_tensor *dense[4];
    int k = 0;
    for (int i = 0; i < n; i++)
        if (ts[i] && (ts[i]->ndim > 0 || ml_tensor_is_cuda(ts[i]))) dense[k++] = ts[i];
    *dev = k ? ml_tensor_device(dense[0]) : ml_cpu();
    return ml_check_same_device(op, k, dense);
}


/* ops[] -> the CUDA kernels' operands; a host operand with all-zero strides is passed as a scalar */
static void ops_to_cuda(int nops, const ew_opnd *ops, ml_cuda_opnd *co) {
    for (int k = 0; k < nops; k++) {
        memset(&co[k], 0, sizeof co[k]);
        co[k].base = ops[k].base;
        co[k].dtype = ops[k].dt;
        co[k].off = ops[k].off;
        memcpy(co[k].st, ops[k].st, sizeof co[k].st);
        if (ops[k].dev == ML_CUDA_HOST && k > 0) {
            co[k].is_scalar = true;
            co[k].scalar = ml_load_elem(ops[k].base, ops[k].dt, ops[k].off);
            co[k].base = NULL;
        }
    }
}

/* integer kernels run on the CPU only so far */
static ml_err int_ops_on_host(const char *op, int nops, const ew_opnd *ops) {
    for (int k = 0; k < nops; k++)
        if (ops[k].dev != ML_CUDA_HOST)
            return ml_seterr(ML_ERR_DEVICE, "%s: integer and bool elementwise ops are not implemented on cuda:%d yet; "
                                            "move the tensor with :cpu()", op, ops[k].dev);
    return ML_OK;
}

static int64_t shape_numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

/* Run a float iop over shape; ops[0] is the output; all operands have dtype kd (output: kd or bool).
 * On a CUDA output the same iop runs as ml_cuda_ew (the same expression table, compiled for the device). */
static ml_err float_exec(int iop, ml_dtype kd, int ndim, const int64_t *shape, int nops, const ew_opnd *ops,
                         const double *params) {
    if (ops[0].dev != ML_CUDA_HOST) { /* a kernel runs where its output is */
        ml_cuda_opnd co[ML_ITER_MAX_OPS];
        ops_to_cuda(nops, ops, co);
        return ml_cuda_ew(iop, kd, ndim, shape, nops, co, params);
    }
    const int64_t *ss[ML_ITER_MAX_OPS];
    int64_t oo[ML_ITER_MAX_OPS];
    char *bs[ML_ITER_MAX_OPS] = {0};
    for (int k = 0; k < nops; k++) { ss[k] = ops[k].st; oo[k] = ops[k].off; bs[k] = ops[k].base; }
    ml_iter it;
    ml_iter_init(&it, nops, ndim, shape, ss, oo);
    int64_t n = shape_numel(ndim, shape);
    if (n == 0) return ML_OK;
    double pr[2] = {0, 0};
    if (params) { pr[0] = params[0]; pr[1] = params[1]; }
    ew_drive(kd == ML_F64 ? ew_tab_f64[iop] : ew_tab_f32[iop], &it, n, bs, pr);
    return ML_OK;
}

/* ------------------------------------------------------------ integer path */
static inline int64_t ld_i(const char *b, ml_dtype dt, int64_t i) {
    switch (dt) {
    case ML_I32: return ((const int32_t *)b)[i];
    case ML_I64: return ((const int64_t *)b)[i];
    case ML_U8: return ((const uint8_t *)b)[i];
    case ML_BOOL: return ((const uint8_t *)b)[i] != 0;
    default: return (int64_t)ml_load_elem(b, dt, i);
    }
}

static inline void st_i(char *b, ml_dtype dt, int64_t i, int64_t v) {
    switch (dt) {
    case ML_I32: ((int32_t *)b)[i] = (int32_t)v; break;
    case ML_I64: ((int64_t *)b)[i] = v; break;
    case ML_U8: ((uint8_t *)b)[i] = (uint8_t)v; break;
    case ML_BOOL: ((uint8_t *)b)[i] = v != 0; break;
    default: ml_store_elem(b, dt, i, (double)v); break;
    }
}

static inline int64_t ipow(int64_t b, int64_t e) {
    uint64_t r = 1, x = (uint64_t)b;
    while (e > 0) {
        if (e & 1) r *= x;
        x *= x;
        e >>= 1;
    }
    return (int64_t)r;
}

/* err: 1 = integer division by zero, 2 = negative integer power */
static inline int64_t int_binop(ml_binop op, int64_t x, int64_t y, int *err) {
    switch (op) {
    case ML_ADD: return (int64_t)((uint64_t)x + (uint64_t)y);
    case ML_SUB: return (int64_t)((uint64_t)x - (uint64_t)y);
    case ML_MUL: return (int64_t)((uint64_t)x * (uint64_t)y);
    case ML_POW:
        if (y < 0) {
            if (x == 1) return 1;
            if (x == -1) return (y & 1) ? -1 : 1;
            *err = 2;
            return 0;
        }
        return ipow(x, y);
    case ML_MAXIMUM: return x > y ? x : y;
    case ML_MINIMUM: return x < y ? x : y;
    case ML_FMOD:
        if (y == 0) { *err = 1; return 0; }
        if (y == -1) return 0;
        return x % y;
    case ML_EQ: return x == y;
    case ML_NE: return x != y;
    case ML_LT: return x < y;
    case ML_LE: return x <= y;
    case ML_GT: return x > y;
    case ML_GE: return x >= y;
    case ML_LOGICAL_AND: return x != 0 && y != 0;
    case ML_LOGICAL_OR: return x != 0 || y != 0;
    case ML_LOGICAL_XOR: return (x != 0) != (y != 0);
    default: return 0; /* DIV/ATAN2 never reach the int path */
    }
}

static int int_exec_binary(ml_binop op, int ndim, const int64_t *shape, const ew_opnd *o, const ew_opnd *a,
                           const ew_opnd *b) {
    ml_iter it;
    ml_iter3_init(&it, ndim, shape, o->st, o->off, a->st, a->off, b->st, b->off);
    int64_t n = shape_numel(ndim, shape);
    if (n == 0) return 0;
    int err = 0;
    char *ob = o->base;
    const char *ab = a->base, *bb = b->base;
    ml_dtype od = o->dt, ad = a->dt, bd = b->dt;
    if (od == ML_I64 && ad == ML_I64 && bd == ML_I64 && (op == ML_ADD || op == ML_SUB || op == ML_MUL)) {
        if (op == ML_ADD)
            ML_ITER3_FOR(it, n, uint64_t, ob, const uint64_t, ab, const uint64_t, bb, *pa = *pb + *pc);
        else if (op == ML_SUB)
            ML_ITER3_FOR(it, n, uint64_t, ob, const uint64_t, ab, const uint64_t, bb, *pa = *pb - *pc);
        else
            ML_ITER3_FOR(it, n, uint64_t, ob, const uint64_t, ab, const uint64_t, bb, *pa = *pb * *pc);
        return 0;
    }
    ML_ITER3_FOR_IDX(it, n, io, ia, ib, {
        int e_ = 0;
        int64_t r_ = int_binop(op, ld_i(ab, ad, ia), ld_i(bb, bd, ib), &e_);
        if (e_) __atomic_store_n(&err, e_, __ATOMIC_RELAXED);
        st_i(ob, od, io, r_);
    });
    return err;
}

/* integer unary (and clamp with lo/hi) */
static void int_exec_unary(int uop /* ml_unop, or -1 = clamp */, int64_t lo, int64_t hi, int ndim,
                           const int64_t *shape, const ew_opnd *o, const ew_opnd *a) {
    ml_iter it;
    ml_iter2_init(&it, ndim, shape, o->st, o->off, a->st, a->off);
    int64_t n = shape_numel(ndim, shape);
    if (n == 0) return;
    char *ob = o->base;
    const char *ab = a->base;
    ml_dtype od = o->dt, ad = a->dt;
    ML_ITER2_FOR_IDX(it, n, io, ia, {
        int64_t x_ = ld_i(ab, ad, ia), r_;
        switch (uop) {
        case -1: r_ = x_ < lo ? lo : x_; r_ = r_ > hi ? hi : r_; break;
        case ML_NEG: r_ = (int64_t)(0 - (uint64_t)x_); break;
        case ML_ABS: r_ = x_ < 0 ? (int64_t)(0 - (uint64_t)x_) : x_; break;
        case ML_SIGN: r_ = (x_ > 0) - (x_ < 0); break;
        case ML_SQUARE: r_ = (int64_t)((uint64_t)x_ * (uint64_t)x_); break;
        case ML_RELU: r_ = x_ < 0 ? 0 : x_; break;
        case ML_LOGICAL_NOT: r_ = x_ == 0; break;
        case ML_ISNAN: case ML_ISINF: r_ = 0; break;
        default: r_ = x_; break; /* floor/ceil/round/trunc are the identity on integers */
        }
        st_i(ob, od, io, r_);
    });
}

static bool unop_int_ok(ml_unop op) {
    switch (op) {
    case ML_NEG: case ML_ABS: case ML_SIGN: case ML_SQUARE: case ML_RELU: case ML_LOGICAL_NOT:
    case ML_ISNAN: case ML_ISINF: case ML_FLOOR: case ML_CEIL: case ML_ROUND: case ML_TRUNC: return true;
    default: return false;
    }
}

/* ------------------------------------------------------------- small helpers */
static ml_err cast_nograd(ml_tensor **out, ml_tensor *t, ml_dtype dt) {
    bool prev = ml_set_grad_enabled(false);
    ml_err e = ml_to_dtype(out, t, dt);
    ml_set_grad_enabled(prev);
    return e;
}

ml_err ml_scalar_tensor(ml_tensor **out, ml_dtype dt, double v) { return ml_full(out, dt, 0, NULL, v); }

ml_err ml_check_inplace(const char *op, ml_tensor *t) {
    if (ml_grad_enabled() && t->requires_grad && !t->grad_fn)
        return ml_seterr(ML_ERR_GRAD, "%s: a leaf tensor that requires grad is used in an in-place op (shape %s)",
                         op, ml_shape_str(t->ndim, t->shape));
    return ML_OK;
}

static ml_err check_writable(const char *op, const ml_tensor *t) {
    for (int i = 0; i < t->ndim; i++)
        if (t->stride[i] == 0 && t->shape[i] > 1)
            return ml_seterr(ML_ERR_ARG,
                             "%s: the tensor being written (shape %s) is an expanded view where several elements "
                             "share one memory location; clone it first",
                             op, ml_shape_str(t->ndim, t->shape));
    return ML_OK;
}

static bool same_view(const ml_tensor *a, const ml_tensor *b) {
    if (a->storage != b->storage || a->offset != b->offset || a->ndim != b->ndim || a->dtype != b->dtype)
        return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i] || (a->shape[i] > 1 && a->stride[i] != b->stride[i])) return false;
    return true;
}

static bool shape_eq(int na, const int64_t *sa, int nb, const int64_t *sb) {
    if (na != nb) return false;
    for (int i = 0; i < na; i++) if (sa[i] != sb[i]) return false;
    return true;
}

static ml_dtype kernel_float(ml_dtype dt) { return dt == ML_F64 ? ML_F64 : ML_F32; }

ml_err ml_grad_finish(ml_tensor **out, ml_tensor *g, ml_node *n, int i) {
    *out = NULL;
    ml_tensor *s;
    ml_err e = ml_sum_to(&s, g, n->in_ndim[i], n->in_shape[i]);
    ml_tensor_release(g);
    if (e) return e;
    ml_dtype want = (ml_dtype)n->in_dtype[i];
    if (ml_dtype_is_float(want) && want != (ml_dtype)s->dtype) {
        ml_tensor *c;
        e = cast_nograd(&c, s, want);
        ml_tensor_release(s);
        if (e) return e;
        s = c;
    }
    *out = s;
    return ML_OK;
}

/* ------------------------------------------------------------ ml_ew_map */
ml_err ml_ew_map(ml_tensor **out, const char *opname, int iop, int nin, ml_tensor *const *ins, const double *params) {
    *out = NULL;
    if (iop < 0 || iop >= ML_NIOPS || nin != iop_arity[iop] || nin < 1 || nin > 3)
        return ml_seterr(ML_ERR_INTERNAL, "%s: bad internal elementwise op %d/%d", opname, iop, nin);
    ml_dtype kd = ML_F32;
    int nd = 0;
    int64_t shape[ML_MAX_DIMS];
    ml_err e;
    for (int i = 0; i < nin; i++) {
        if (ins[i]->layout && (e = ml_tensor_plain(ins[i]))) return e;
        if (ins[i]->dtype == ML_F64) kd = ML_F64;
        if (i == 0) {
            nd = ins[0]->ndim;
            memcpy(shape, ins[0]->shape, sizeof(int64_t) * (size_t)nd);
        } else if ((e = ml_broadcast_shapes(opname, nd, shape, ins[i]->ndim, ins[i]->shape, &nd, shape))) {
            return e;
        }
    }
    ml_device dev;
    if ((e = ew_devices(opname, nin, ins, &dev))) return e;
    ml_tensor *cv[3] = {0}, *res = NULL;
    for (int i = 0; i < nin; i++)
        if ((e = cast_nograd(&cv[i], ins[i], kd))) goto done;
    if ((e = ml_tensor_empty_on(&res, dev, iop_boolout[iop] ? ML_BOOL : kd, nd, shape))) goto done;
    {
        ew_opnd ops[4];
        opnd_tensor(&ops[0], res, nd, shape);
        for (int i = 0; i < nin; i++) opnd_tensor(&ops[i + 1], cv[i], nd, shape);
        if ((e = float_exec(iop, kd, nd, shape, nin + 1, ops, params))) goto done;
    }
    *out = res;
    res = NULL;
done:
    for (int i = 0; i < 3; i++) ml_tensor_release(cv[i]);
    ml_tensor_release(res);
    return e;
}

/* ================================================================== binary */
static bool binop_boolout(ml_binop op) { return op >= ML_EQ; }

static bool is_int_scalar(double s) { return isfinite(s) && s == floor(s) && fabs(s) < 9.2e18; }

/* Compute dtype (before kernel narrowing) and result dtype. db < 0: scalar s. */
static void binop_types(ml_binop op, ml_dtype da, int db, double s, ml_dtype *cd, ml_dtype *od) {
    ml_dtype b;
    if (db >= 0) b = (ml_dtype)db;
    else if (ml_dtype_is_float(da)) b = da;
    else if (!is_int_scalar(s)) b = ML_F32;
    else b = da == ML_BOOL ? ML_I64 : da;
    ml_dtype c = ml_dtype_promote(da, b);
    if ((op == ML_DIV || op == ML_ATAN2) && !ml_dtype_is_float(c)) c = ML_F32;
    *cd = c;
    *od = binop_boolout(op) ? ML_BOOL : c;
}

typedef struct {
    int op;
    int scalar;   /* 1: b is the scalar s */
    int reverse;  /* scalar op tensor */
    double s;
} bin_params;

/* Compute a op b (or a op s / s op a) into `dst` (shape = broadcast shape, dtype = result dtype or, for
 * the float kernel, the kernel output dtype). cd = compute dtype from binop_types. */
static ml_err binary_exec(ml_tensor *dst, ml_binop op, ml_dtype cd, ml_tensor *a, ml_tensor *b, double s,
                          bool reverse) {
    const char *name = binop_names[op];
    int nd = dst->ndim;
    const int64_t *shape = dst->shape;
    ew_opnd ops[3];
    ml_err e = ML_OK;
    opnd_tensor(&ops[0], dst, nd, shape);
    if (ml_dtype_is_float(cd)) {
        ml_dtype kd = kernel_float(cd);
        ml_tensor *ac = NULL, *bc = NULL;
        if ((e = cast_nograd(&ac, a, kd))) return e;
        if (b && (e = cast_nograd(&bc, b, kd))) { ml_tensor_release(ac); return e; }
        union { float f; double d; } sv;
        if (kd == ML_F32) sv.f = (float)s;
        else sv.d = s;
        int iop = binop_iop[op], nops = 3;
        double pr[2] = {0, 0};
        ew_opnd *ta = &ops[1], *tb = &ops[2];
        if (!b && reverse) { ta = &ops[2]; tb = &ops[1]; }
        opnd_tensor(ta, ac, nd, shape);
        if (bc) opnd_tensor(tb, bc, nd, shape);
        else opnd_scalar(tb, &sv, kd);
        if (!b && !reverse && op == ML_POW) { /* cheap exact forms of common powers */
            int u = s == 2 ? IOP_SQUARE : s == 0.5 ? IOP_SQRT : s == 1 ? IOP_COPY : s == -1 ? IOP_RECIP
                  : s == -0.5 ? IOP_RSQRT : -1;
            if (u >= 0) { iop = u; nops = 2; }
        }
        e = float_exec(iop, kd, nd, shape, nops, ops, pr);
        ml_tensor_release(ac);
        ml_tensor_release(bc);
        return e;
    }
    /* integer / bool */
    int64_t si = is_int_scalar(s) ? (int64_t)s : 0;
    ew_opnd *ta = &ops[1], *tb = &ops[2];
    if (!b && reverse) { ta = &ops[2]; tb = &ops[1]; }
    opnd_tensor(ta, a, nd, shape);
    if (b) opnd_tensor(tb, b, nd, shape);
    else opnd_scalar(tb, &si, ML_I64);
    if ((e = int_ops_on_host(name, 3, ops))) return e;
    int err = int_exec_binary(op, nd, shape, &ops[0], &ops[1], &ops[2]);
    if (err == 1) return ml_seterr(ML_ERR_ARG, "%s: integer division by zero", name);
    if (err == 2) return ml_seterr(ML_ERR_ARG, "%s: integers to negative integer powers are not allowed", name);
    return e;
}

/* a + b of two f32 tensors of one shape in the same backend layout: the sum of the raw buffers, in
 * that layout (the residual adds between convolutions that keep oneDNN's blocked layout) */
static bool blocked_add(const ml_tensor *a, const ml_tensor *b) {
    return b && a->layout && a->layout == b->layout && a->dtype == ML_F32 && b->dtype == ML_F32 &&
           shape_eq(a->ndim, a->shape, b->ndim, b->shape);
}

static ml_err blocked_add_compute(ml_tensor **out, ml_tensor *a, ml_tensor *b) {
    ml_tensor *r;
    ml_err e = ml_tensor_empty(&r, ML_F32, a->ndim, a->shape);
    if (e) return e;
    const float *x = ml_tensor_data(a), *y = ml_tensor_data(b);
    float *z = ml_tensor_data(r);
    int64_t n = ml_tensor_numel(a);
    int nt = ml_iter_threads(n);
#pragma omp parallel for simd schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t i = 0; i < n; i++) z[i] = x[i] + y[i];
    r->layout = a->layout;
    *out = r;
    return ML_OK;
}

/* out-of-place result (no autograd) */
static ml_err binary_compute(ml_tensor **out, ml_binop op, ml_tensor *a, ml_tensor *b, double s, bool reverse) {
    *out = NULL;
    const char *name = binop_names[op];
    ml_err e;
    if (op == ML_ADD && blocked_add(a, b)) return blocked_add_compute(out, a, b);
    if ((e = ml_tensor_plain(a)) || (b && (e = ml_tensor_plain(b)))) return e;
    ml_device dev;
    if ((e = ew_devices(name, 2, (ml_tensor *[]){a, b}, &dev))) return e;
    ml_dtype cd, od;
    binop_types(op, (ml_dtype)a->dtype, b ? b->dtype : -1, s, &cd, &od);
    int nd = a->ndim;
    int64_t shape[ML_MAX_DIMS];
    memcpy(shape, a->shape, sizeof(int64_t) * (size_t)nd);
    if (b && (e = ml_broadcast_shapes(name, a->ndim, a->shape, b->ndim, b->shape, &nd, shape))) return e;
    ml_dtype kout = od;
    if (ml_dtype_is_float(cd) && !binop_boolout(op)) kout = kernel_float(cd);
    ml_tensor *res;
    if ((e = ml_tensor_empty_on(&res, dev, kout, nd, shape))) return e;
    if ((e = binary_exec(res, op, cd, a, b, s, reverse))) { ml_tensor_release(res); return e; }
    if (kout != od) {
        ml_tensor *c;
        e = cast_nograd(&c, res, od);
        ml_tensor_release(res);
        if (e) return e;
        res = c;
    }
    *out = res;
    return ML_OK;
}

/* gradients of a op b w.r.t. a and b, in the broadcast shape (not yet un-broadcast) */
static ml_err binop_grads(ml_binop op, ml_tensor *g, ml_tensor *a, ml_tensor *b, ml_tensor **ga, ml_tensor **gb) {
    ml_err e = ML_OK;
    const char *nm = binop_names[op];
    ml_tensor *in3[3] = {g, a, b};
    switch (op) {
    case ML_ADD:
        if (ga) { ml_tensor_retain(g); *ga = g; }
        if (gb) { ml_tensor_retain(g); *gb = g; }
        break;
    case ML_SUB:
        if (ga) { ml_tensor_retain(g); *ga = g; }
        if (gb) e = ml_ew_map(gb, nm, IOP_NEG, 1, &g, NULL);
        break;
    case ML_MUL:
        if (ga) e = ml_ew_map(ga, nm, IOP_MUL, 2, (ml_tensor *[]){g, b}, NULL);
        if (!e && gb) e = ml_ew_map(gb, nm, IOP_MUL, 2, (ml_tensor *[]){g, a}, NULL);
        break;
    case ML_DIV:
        if (ga) e = ml_ew_map(ga, nm, IOP_DIV, 2, (ml_tensor *[]){g, b}, NULL);
        if (!e && gb) e = ml_ew_map(gb, nm, IOP_G_DIV_B, 3, in3, NULL);
        break;
    case ML_POW:
        if (ga) e = ml_ew_map(ga, nm, IOP_G_POW_A, 3, in3, NULL);
        if (!e && gb) e = ml_ew_map(gb, nm, IOP_G_POW_B, 3, in3, NULL);
        break;
    case ML_MAXIMUM:
        if (ga) e = ml_ew_map(ga, nm, IOP_G_MAX_A, 3, in3, NULL);
        if (!e && gb) e = ml_ew_map(gb, nm, IOP_G_MAX_B, 3, in3, NULL);
        break;
    case ML_MINIMUM:
        if (ga) e = ml_ew_map(ga, nm, IOP_G_MIN_A, 3, in3, NULL);
        if (!e && gb) e = ml_ew_map(gb, nm, IOP_G_MIN_B, 3, in3, NULL);
        break;
    case ML_ATAN2:
        if (ga) e = ml_ew_map(ga, nm, IOP_G_ATAN2_A, 3, in3, NULL);
        if (!e && gb) e = ml_ew_map(gb, nm, IOP_G_ATAN2_B, 3, in3, NULL);
        break;
    case ML_FMOD:
        if (ga) { ml_tensor_retain(g); *ga = g; }
        if (gb) e = ml_ew_map(gb, nm, IOP_G_FMOD_B, 3, in3, NULL);
        break;
    default:
        return ml_seterr(ML_ERR_GRAD, "%s: not differentiable", nm);
    }
    return e;
}

/* Whether backward needs the inputs' values: not for + and -, nor for a * s, s * a and a / s (their
 * gradient is g * s or g / s), so an in-place change of a after them is no error. */
static bool binop_saves(ml_binop op, bool scalar, bool reverse) {
    if (op == ML_ADD || op == ML_SUB) return false;
    if (scalar && (op == ML_MUL || (op == ML_DIV && !reverse))) return false;
    return true;
}

static ml_err bw_binary(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const bin_params *p = (const bin_params *)n->params;
    ml_binop op = (ml_binop)p->op;
    ml_tensor *g = gout[0], *a = NULL, *b = NULL, *sc = NULL, *ga = NULL, *gb = NULL;
    ml_err e;
    if (binop_saves(op, p->scalar, p->reverse)) {
        if (!(a = ml_node_saved(n, 0))) return ML_ERR_GRAD;
        if (!p->scalar && !(b = ml_node_saved(n, 1))) return ML_ERR_GRAD;
    }
    if (p->scalar) {
        if ((e = ml_scalar_tensor(&sc, g->dtype == ML_F64 ? ML_F64 : ML_F32, p->s)))
            return e;
        if (p->reverse) e = binop_grads(op, g, sc, a, NULL, &ga);
        else e = binop_grads(op, g, a, sc, &ga, NULL);
        ml_tensor_release(sc);
        if (e) { ml_tensor_release(ga); return e; }
        return ml_grad_finish(&gin[0], ga, n, 0);
    }
    e = binop_grads(op, g, a, b, n->needs[0] ? &ga : NULL, n->needs[1] ? &gb : NULL);
    if (e) { ml_tensor_release(ga); ml_tensor_release(gb); return e; }
    if (ga && (e = ml_grad_finish(&gin[0], ga, n, 0))) { ml_tensor_release(gb); return e; }
    if (gb && (e = ml_grad_finish(&gin[1], gb, n, 1))) return e;
    return ML_OK;
}

static ml_err binary_record(ml_tensor *out, ml_binop op, ml_tensor *a, ml_tensor *b, double s, bool reverse) {
    if (!ml_dtype_is_float((ml_dtype)out->dtype) || binop_boolout(op)) return ML_OK;
    ml_tensor *ins[2] = {a, b};
    int nin = b ? 2 : 1;
    if (!ml_needs_grad(nin, ins)) return ML_OK;
    ml_node *n;
    ml_err e = ml_record(binop_names[op], bw_binary, nin, ins, out, &n);
    if (e || !n) return e;
    bin_params p = {.op = op, .scalar = b == NULL, .reverse = reverse, .s = s};
    memcpy(n->params, &p, sizeof p);
    if (binop_saves(op, b == NULL, reverse)) {
        if (ml_node_save(n, a) < 0) return ML_ERR_INTERNAL;
        if (b && ml_node_save(n, b) < 0) return ML_ERR_INTERNAL;
    }
    return ML_OK;
}

static ml_err binary_any(ml_tensor **out, ml_binop op, ml_tensor *a, ml_tensor *b, double s, bool reverse) {
    *out = NULL;
    if ((unsigned)op >= ML_NBINOPS) return ml_seterr(ML_ERR_ARG, "binary: unknown op %d", (int)op);
    ml_tensor *r;
    ml_err e = binary_compute(&r, op, a, b, s, reverse);
    if (e) return e;
    if ((e = binary_record(r, op, a, b, s, reverse))) { ml_tensor_release(r); return e; }
    *out = r;
    return ML_OK;
}

ml_err ml_binary(ml_tensor **out, ml_binop op, ml_tensor *a, ml_tensor *b) { return binary_any(out, op, a, b, 0, false); }

ml_err ml_binary_scalar(ml_tensor **out, ml_binop op, ml_tensor *a, double s, bool reverse) {
    return binary_any(out, op, a, NULL, s, reverse);
}

/* the recorded out-of-place form of a tracked in-place binary op */
typedef struct { ml_binop op; ml_tensor *b; double s; } binary_ctx;
static ml_err binary_recorded(ml_tensor **out, ml_tensor *old, const void *ctx) {
    const binary_ctx *c = ctx;
    return binary_any(out, c->op, old, c->b, c->s, false);
}

/* in place: a = a op b (b NULL: scalar s) */
static ml_err binary_inplace(ml_binop op, ml_tensor *a, ml_tensor *b, double s) {
    if ((unsigned)op >= ML_NBINOPS) return ml_seterr(ML_ERR_ARG, "binary_: unknown op %d", (int)op);
    const char *name = binop_inames[op];
    ml_err e;
    if ((e = ml_check_inplace(name, a))) return e;
    if ((e = ml_tensor_plain(a)) || (b && (e = ml_tensor_plain(b)))) return e;
    if ((e = ml_check_same_device(name, 2, (ml_tensor *[]){a, b}))) return e;
    if ((e = check_writable(name, a))) return e;
    ml_dtype cd, od, ad = (ml_dtype)a->dtype;
    binop_types(op, ad, b ? b->dtype : -1, s, &cd, &od);
    if (b) {
        int nd;
        int64_t shape[ML_MAX_DIMS];
        if ((e = ml_broadcast_shapes(name, a->ndim, a->shape, b->ndim, b->shape, &nd, shape))) return e;
        if (!shape_eq(nd, shape, a->ndim, a->shape))
            return ml_seterr(ML_ERR_SHAPE, "%s: the result of shape %s does not fit the in-place target of shape %s "
                                           "(operand shape %s)",
                             name, ml_shape_str(nd, shape), ml_shape_str(a->ndim, a->shape),
                             ml_shape_str(b->ndim, b->shape));
    }
    if (ml_dtype_is_float(od) && !ml_dtype_is_float(ad))
        return ml_seterr(ML_ERR_DTYPE, "%s: result type %s can't be cast to the in-place target's dtype %s", name,
                         ml_dtype_name(od), ml_dtype_name(ad));
    if (ml_inplace_tracked(a, b)) {
        binary_ctx c = {op, b, s};
        return ml_inplace_apply(name, a, binary_recorded, &c);
    }
    bool direct = ml_dtype_is_float(cd) && !binop_boolout(op) && ad == kernel_float(cd) && ad == cd;
    if (direct) {
        ml_tensor *bb = b;
        if (b && b->storage == a->storage && !same_view(a, b)) { /* partial overlap: read from a copy */
            bool prev = ml_set_grad_enabled(false);
            e = ml_clone(&bb, b);
            ml_set_grad_enabled(prev);
            if (e) return e;
        } else if (b) {
            ml_tensor_retain(bb);
        }
        e = binary_exec(a, op, cd, a, bb, s, false);
        ml_tensor_release(bb);
        if (e) return e;
        a->storage->version++;
        return ML_OK;
    }
    ml_tensor *r;
    bool prev = ml_set_grad_enabled(false);
    e = binary_compute(&r, op, a, b, s, false);
    ml_set_grad_enabled(prev);
    if (e) {
        /* name the in-place op */
        char buf[900];
        snprintf(buf, sizeof buf, "%s", ml_errmsg());
        return ml_seterr(e, "%s (in place): %s", name, buf);
    }
    e = ml_copy_(a, r);
    ml_tensor_release(r);
    return e;
}

ml_err ml_binary_(ml_binop op, ml_tensor *a, ml_tensor *b) { return binary_inplace(op, a, b, 0); }
ml_err ml_binary_scalar_(ml_binop op, ml_tensor *a, double s) { return binary_inplace(op, a, NULL, s); }

/* =================================================================== unary */
/* what the backward rule needs: 0 nothing, 1 the input, 2 the output */
static const unsigned char unop_save[ML_NUNOPS] = {
    [ML_NEG] = 0, [ML_EXP] = 2, [ML_LOG] = 1, [ML_SQRT] = 2, [ML_RSQRT] = 2, [ML_ABS] = 1, [ML_SIGN] = 0,
    [ML_FLOOR] = 0, [ML_CEIL] = 0, [ML_ROUND] = 0, [ML_TRUNC] = 0, [ML_SIN] = 1, [ML_COS] = 1, [ML_TAN] = 2,
    [ML_TANH] = 2, [ML_SIGMOID] = 2, [ML_RELU] = 2, [ML_GELU] = 1, [ML_GELU_TANH] = 1, [ML_SILU] = 1,
    [ML_SOFTPLUS] = 1, [ML_LOG1P] = 1, [ML_EXPM1] = 2, [ML_RECIPROCAL] = 2, [ML_SQUARE] = 1, [ML_ERF] = 1};
/* gradient iop (x = g, y = saved); -1: special */
static const int unop_giop[ML_NUNOPS] = {
    [ML_NEG] = -1, [ML_EXP] = IOP_MUL, [ML_LOG] = IOP_DIV, [ML_SQRT] = IOP_G_SQRT, [ML_RSQRT] = IOP_G_RSQRT,
    [ML_ABS] = IOP_G_ABS, [ML_SIGN] = -1, [ML_FLOOR] = -1, [ML_CEIL] = -1, [ML_ROUND] = -1, [ML_TRUNC] = -1,
    [ML_SIN] = IOP_G_SIN, [ML_COS] = IOP_G_COS, [ML_TAN] = IOP_G_TAN, [ML_TANH] = IOP_G_TANH,
    [ML_SIGMOID] = IOP_G_SIGMOID, [ML_RELU] = IOP_G_RELU, [ML_GELU] = IOP_G_GELU,
    [ML_GELU_TANH] = IOP_G_GELU_TANH, [ML_SILU] = IOP_G_SILU, [ML_SOFTPLUS] = IOP_G_SOFTPLUS,
    [ML_LOG1P] = IOP_G_LOG1P, [ML_EXPM1] = IOP_G_EXPM1, [ML_RECIPROCAL] = IOP_G_RECIP,
    [ML_SQUARE] = IOP_G_SQUARE, [ML_ERF] = IOP_G_ERF, [ML_LOGICAL_NOT] = -1, [ML_ISNAN] = -1, [ML_ISINF] = -1};

static bool unop_boolout(ml_unop op) { return op == ML_LOGICAL_NOT || op == ML_ISNAN || op == ML_ISINF; }

typedef struct {
    int iop;      /* gradient iop, or -1 (neg), -2 (zero gradient) */
    double p[2];
    const char *name;
} un_params;

static ml_err bw_unary(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    const un_params *p = (const un_params *)n->params;
    ml_tensor *g = gout[0], *r = NULL;
    ml_err e;
    if (p->iop == -1) {
        e = ml_ew_map(&r, p->name, IOP_NEG, 1, &g, NULL);
    } else if (p->iop == -2) {
        e = ml_zeros_on(&r, ml_tensor_device(g), (ml_dtype)g->dtype, g->ndim, g->shape);
    } else {
        ml_tensor *s = ml_node_saved(n, 0);
        if (!s) return ML_ERR_GRAD;
        e = ml_ew_map(&r, p->name, p->iop, 2, (ml_tensor *[]){g, s}, p->p);
    }
    if (e) return e;
    return ml_grad_finish(&gin[0], r, n, 0);
}

/* record a unary-like op whose gradient is giop(g, saved) with params */
static ml_err unary_record(const char *name, ml_tensor *a, ml_tensor *out, int giop, int save, const double *pr) {
    if (!ml_dtype_is_float((ml_dtype)out->dtype)) return ML_OK;
    ml_node *n;
    ml_err e = ml_record(name, bw_unary, 1, &a, out, &n);
    if (e || !n) return e;
    un_params p = {.iop = giop, .name = name};
    if (pr) { p.p[0] = pr[0]; p.p[1] = pr[1]; }
    memcpy(n->params, &p, sizeof p);
    if (save == 1) {
        if (ml_node_save(n, a) < 0) return ML_ERR_INTERNAL;
    } else if (save == 2) {
        ml_tensor *d;
        if ((e = ml_detach(&d, out))) return e;
        int k = ml_node_save(n, d);
        ml_tensor_release(d);
        if (k < 0) return ML_ERR_INTERNAL;
    }
    return ML_OK;
}

/* out = iop(a) in float (a converted to f32/f64); result cast to od. No autograd. */
static ml_err float_unary_compute(ml_tensor **out, int iop, ml_tensor *a, ml_dtype od, const double *pr) {
    *out = NULL;
    ml_dtype kd = kernel_float((ml_dtype)a->dtype);
    ml_tensor *ac, *res;
    ml_err e;
    if ((e = cast_nograd(&ac, a, kd))) return e;
    ml_dtype kout = iop_boolout[iop] ? ML_BOOL : kd;
    if ((e = ml_tensor_empty_on(&res, ml_tensor_device(a), kout, a->ndim, a->shape))) { ml_tensor_release(ac); return e; }
    ew_opnd ops[2];
    opnd_tensor(&ops[0], res, a->ndim, a->shape);
    opnd_tensor(&ops[1], ac, a->ndim, a->shape);
    e = float_exec(iop, kd, a->ndim, a->shape, 2, ops, pr);
    ml_tensor_release(ac);
    if (e) { ml_tensor_release(res); return e; }
    if (kout != od) {
        ml_tensor *c;
        e = cast_nograd(&c, res, od);
        ml_tensor_release(res);
        if (e) return e;
        res = c;
    }
    *out = res;
    return ML_OK;
}

/* float unary directly into a (a is f32/f64) */
static ml_err float_unary_inplace(ml_tensor *a, int iop, const double *pr) {
    ew_opnd ops[2];
    opnd_tensor(&ops[0], a, a->ndim, a->shape);
    opnd_tensor(&ops[1], a, a->ndim, a->shape);
    ml_err e = float_exec(iop, (ml_dtype)a->dtype, a->ndim, a->shape, 2, ops, pr);
    a->storage->version++;
    return e;
}

static ml_err unary_compute(ml_tensor **out, ml_unop op, ml_tensor *a) {
    *out = NULL;
    ml_dtype ad = (ml_dtype)a->dtype;
    ml_err e;
    if ((e = ml_tensor_plain(a))) return e;
    if (!ml_dtype_is_float(ad) && unop_int_ok(op)) {
        if (op == ML_NEG && ad == ML_BOOL)
            return ml_seterr(ML_ERR_DTYPE, "neg: negation of a bool tensor (shape %s) is not supported; use logical_not",
                             ml_shape_str(a->ndim, a->shape));
        ml_tensor *res;
        if ((e = ml_check_cpu(unop_names[op], a))) return e;
        if ((e = ml_tensor_empty(&res, unop_boolout(op) ? ML_BOOL : ad, a->ndim, a->shape))) return e;
        ew_opnd ops[2];
        opnd_tensor(&ops[0], res, a->ndim, a->shape);
        opnd_tensor(&ops[1], a, a->ndim, a->shape);
        int_exec_unary(op, 0, 0, a->ndim, a->shape, &ops[0], &ops[1]);
        *out = res;
        return ML_OK;
    }
    ml_dtype od = unop_boolout(op) ? ML_BOOL : ml_dtype_is_float(ad) ? ad : ML_F32;
    return float_unary_compute(out, unop_iop[op], a, od, NULL);
}

ml_err ml_unary(ml_tensor **out, ml_unop op, ml_tensor *a) {
    *out = NULL;
    if ((unsigned)op >= ML_NUNOPS) return ml_seterr(ML_ERR_ARG, "unary: unknown op %d", (int)op);
    ml_tensor *r;
    ml_err e = unary_compute(&r, op, a);
    if (e) return e;
    if (!unop_boolout(op) && ml_needs_grad(1, &a)) {
        int giop = unop_giop[op];
        if (op == ML_NEG) giop = -1;
        else if (giop < 0) giop = -2;
        if ((e = unary_record(unop_names[op], a, r, giop, unop_save[op], NULL))) { ml_tensor_release(r); return e; }
    }
    *out = r;
    return ML_OK;
}

static ml_err unary_recorded(ml_tensor **out, ml_tensor *old, const void *ctx) {
    return ml_unary(out, *(const ml_unop *)ctx, old);
}

ml_err ml_unary_(ml_unop op, ml_tensor *a) {
    if ((unsigned)op >= ML_NUNOPS) return ml_seterr(ML_ERR_ARG, "unary_: unknown op %d", (int)op);
    const char *name = unop_inames[op];
    ml_err e;
    if ((e = ml_check_inplace(name, a)) || (e = ml_tensor_plain(a)) || (e = check_writable(name, a))) return e;
    ml_dtype ad = (ml_dtype)a->dtype;
    if (ml_inplace_tracked(a, NULL) && !unop_boolout(op)) return ml_inplace_apply(name, a, unary_recorded, &op);
    if ((ad == ML_F32 || ad == ML_F64) && !unop_boolout(op)) {
        return float_unary_inplace(a, unop_iop[op], NULL);
    }
    if (!ml_dtype_is_float(ad) && !unop_int_ok(op))
        return ml_seterr(ML_ERR_DTYPE, "%s: result type float32 can't be cast to the in-place target's dtype %s", name,
                         ml_dtype_name(ad));
    ml_tensor *r;
    bool prev = ml_set_grad_enabled(false);
    e = unary_compute(&r, op, a);
    ml_set_grad_enabled(prev);
    if (e) return e;
    e = ml_copy_(a, r);
    ml_tensor_release(r);
    return e;
}

/* ================================================================== clamp */
static bool clamp_int_ok(double lo, double hi) {
    return (isinf(lo) || is_int_scalar(lo)) && (isinf(hi) || is_int_scalar(hi)) && !isnan(lo) && !isnan(hi);
}

static ml_err clamp_compute(ml_tensor **out, ml_tensor *a, double lo, double hi) {
    *out = NULL;
    ml_err e;
    if ((e = ml_tensor_plain(a))) return e;
    ml_dtype ad = (ml_dtype)a->dtype;
    double pr[2] = {lo, hi};
    if (!ml_dtype_is_float(ad) && clamp_int_ok(lo, hi)) {
        ml_tensor *res;
        if ((e = ml_check_cpu("clamp", a))) return e;
        if ((e = ml_tensor_empty(&res, ad, a->ndim, a->shape))) return e;
        ew_opnd ops[2];
        opnd_tensor(&ops[0], res, a->ndim, a->shape);
        opnd_tensor(&ops[1], a, a->ndim, a->shape);
        int64_t l = isinf(lo) ? (lo < 0 ? INT64_MIN : INT64_MAX) : (int64_t)lo;
        int64_t h = isinf(hi) ? (hi < 0 ? INT64_MIN : INT64_MAX) : (int64_t)hi;
        int_exec_unary(-1, l, h, a->ndim, a->shape, &ops[0], &ops[1]);
        *out = res;
        return ML_OK;
    }
    return float_unary_compute(out, IOP_CLAMP, a, ml_dtype_is_float(ad) ? ad : ML_F32, pr);
}

ml_err ml_clamp(ml_tensor **out, ml_tensor *a, double lo, double hi) {
    ml_tensor *r;
    ml_err e = clamp_compute(&r, a, lo, hi);
    *out = NULL;
    if (e) return e;
    double pr[2] = {lo, hi};
    if (ml_needs_grad(1, &a) && (e = unary_record("clamp", a, r, IOP_G_CLAMP, 1, pr))) {
        ml_tensor_release(r);
        return e;
    }
    *out = r;
    return ML_OK;
}

static ml_err clamp_recorded(ml_tensor **out, ml_tensor *old, const void *ctx) {
    const double *lh = ctx;
    return ml_clamp(out, old, lh[0], lh[1]);
}

ml_err ml_clamp_(ml_tensor *a, double lo, double hi) {
    ml_err e;
    if ((e = ml_check_inplace("clamp_", a)) || (e = ml_tensor_plain(a)) || (e = check_writable("clamp_", a))) return e;
    ml_dtype ad = (ml_dtype)a->dtype;
    if (ml_inplace_tracked(a, NULL)) {
        double lh[2] = {lo, hi};
        return ml_inplace_apply("clamp_", a, clamp_recorded, lh);
    }
    if (ad == ML_F32 || ad == ML_F64) {
        double pr[2] = {lo, hi};
        return float_unary_inplace(a, IOP_CLAMP, pr);
    }
    if (!ml_dtype_is_float(ad) && !clamp_int_ok(lo, hi))
        return ml_seterr(ML_ERR_DTYPE, "clamp_: bounds %g, %g are not integers and the target is %s", lo, hi,
                         ml_dtype_name(ad));
    ml_tensor *r;
    if ((e = clamp_compute(&r, a, lo, hi))) return e;
    e = ml_copy_(a, r);
    ml_tensor_release(r);
    return e;
}

/* ============================================================ activations */
static ml_err param_act(ml_tensor **out, const char *name, int iop, int giop, ml_tensor *a, double p0) {
    *out = NULL;
    ml_err e;
    if ((e = ml_tensor_plain(a))) return e;
    if (!ml_dtype_is_float((ml_dtype)a->dtype))
        return ml_seterr(ML_ERR_DTYPE, "%s: expected a floating point tensor, got %s (shape %s)", name,
                         ml_dtype_name((ml_dtype)a->dtype), ml_shape_str(a->ndim, a->shape));
    double pr[2] = {p0, 0};
    ml_tensor *r;
    if ((e = float_unary_compute(&r, iop, a, (ml_dtype)a->dtype, pr))) return e;
    if (ml_needs_grad(1, &a) && (e = unary_record(name, a, r, giop, 1, pr))) {
        ml_tensor_release(r);
        return e;
    }
    *out = r;
    return ML_OK;
}

ml_err ml_leaky_relu(ml_tensor **out, ml_tensor *a, double slope) {
    return param_act(out, "leaky_relu", IOP_LEAKY, IOP_G_LEAKY, a, slope);
}

ml_err ml_elu(ml_tensor **out, ml_tensor *a, double alpha) { return param_act(out, "elu", IOP_ELU, IOP_G_ELU, a, alpha); }

/* weight viewed so that it broadcasts against a: [1, C, 1, ...] or its single element */
static ml_err prelu_weight_view(ml_tensor **wv, ml_tensor *a, ml_tensor *w) {
    *wv = NULL;
    int64_t nw = ml_tensor_numel(w);
    int64_t shape[ML_MAX_DIMS];
    int nd = a->ndim;
    for (int i = 0; i < nd; i++) shape[i] = 1;
    if (nw == 1) return ml_reshape(wv, w, nd, shape);
    if (w->ndim != 1 || a->ndim < 2 || a->shape[1] != nw)
        return ml_seterr(ML_ERR_SHAPE,
                         "prelu: weight of shape %s must have 1 element or one per channel (dim 1) of the input of "
                         "shape %s",
                         ml_shape_str(w->ndim, w->shape), ml_shape_str(a->ndim, a->shape));
    shape[1] = nw;
    return ml_reshape(wv, w, nd, shape);
}

/* One pass for the common case (MONAI's PReLU: one weight, f32, contiguous): input gradient and the
 * weight gradient's sum together, instead of a full-size temporary for the weight term and a
 * reduction over it (8 memory passes -> 3). Sums in double per thread chunk. */
static bool prelu_bw_fused(ml_node *n, ml_tensor *g, ml_tensor *a, ml_tensor *w, ml_tensor **gin, ml_err *err) {
    if (ml_tensor_is_cuda(a) || a->dtype != ML_F32 || g->dtype != ML_F32 || w->dtype != ML_F32 || ml_tensor_numel(w) != 1 ||
        !ml_tensor_is_contiguous(a) || !ml_tensor_is_contiguous(g) || !ml_tensor_is_contiguous(w) ||
        g->ndim != a->ndim || !n->needs[0] || !n->needs[1])
        return false;
    for (int i = 0; i < a->ndim; i++)
        if (g->shape[i] != a->shape[i]) return false;
    ml_tensor *gx = NULL, *gw = NULL;
    *err = ml_tensor_empty(&gx, ML_F32, a->ndim, a->shape);
    if (!*err) *err = ml_tensor_empty(&gw, ML_F32, n->in_ndim[1], n->in_shape[1]);
    if (*err) { ml_tensor_release(gx); return true; }
    const float *pa = ml_tensor_data(a), *pg = ml_tensor_data(g);
    float *px = ml_tensor_data(gx), wt = *(const float *)ml_tensor_data(w);
    int64_t cnt = ml_tensor_numel(a);
    double total = 0;
    int nt = ml_iter_threads(cnt);
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : total) if (nt > 1)
    for (int t = 0; t < nt; t++) {
        int64_t lo = cnt * t / nt, hi = cnt * (t + 1) / nt;
        double acc = 0;
        for (int64_t b = lo; b < hi; b += 4096) {
            int64_t e2 = b + 4096 < hi ? b + 4096 : hi;
            float part = 0;
            for (int64_t i = b; i < e2; i++) {
                float x = pa[i], gv = pg[i];
                px[i] = x > 0 ? gv : gv * wt;
                part += x > 0 ? 0.f : gv * x;
            }
            acc += part;
        }
        total += acc;
    }
    *(float *)ml_tensor_data(gw) = (float)total;
    gin[0] = gx;
    gin[1] = gw;
    *err = ML_OK;
    return true;
}

static ml_err bw_prelu(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    ml_tensor *g = gout[0], *a = ml_node_saved(n, 0), *w = ml_node_saved(n, 1), *wv = NULL, *r = NULL;
    if (!a || !w) return ML_ERR_GRAD;
    ml_err e;
    if (prelu_bw_fused(n, g, a, w, gin, &e)) return e;
    if ((e = prelu_weight_view(&wv, a, w))) return e;
    if (n->needs[0]) {
        e = ml_ew_map(&r, "prelu", IOP_G_PRELU_X, 3, (ml_tensor *[]){g, a, wv}, NULL);
        if (!e) e = ml_grad_finish(&gin[0], r, n, 0);
    }
    if (!e && n->needs[1]) {
        ml_tensor *t = NULL, *s = NULL;
        e = ml_ew_map(&t, "prelu", IOP_G_PRELU_W, 2, (ml_tensor *[]){g, a}, NULL);
        if (!e) e = ml_sum_to(&s, t, wv->ndim, wv->shape);
        ml_tensor_release(t);
        if (!e) {
            ml_tensor *rs;
            e = ml_reshape(&rs, s, n->in_ndim[1], n->in_shape[1]);
            if (!e) {
                ml_tensor *c;
                e = ml_contiguous(&c, rs);
                ml_tensor_release(rs);
                if (!e) e = ml_grad_finish(&gin[1], c, n, 1);
            }
        }
        ml_tensor_release(s);
    }
    ml_tensor_release(wv);
    return e;
}

ml_err ml_prelu(ml_tensor **out, ml_tensor *a, ml_tensor *w) {
    *out = NULL;
    ml_err e;
    if ((e = ml_tensor_plain(a)) || (e = ml_tensor_plain(w))) return e;
    if (!ml_dtype_is_float((ml_dtype)a->dtype) || !ml_dtype_is_float((ml_dtype)w->dtype))
        return ml_seterr(ML_ERR_DTYPE, "prelu: expected floating point input and weight, got %s and %s",
                         ml_dtype_name((ml_dtype)a->dtype), ml_dtype_name((ml_dtype)w->dtype));
    ml_tensor *wv, *r;
    bool prev = ml_set_grad_enabled(false);
    e = prelu_weight_view(&wv, a, w);
    ml_set_grad_enabled(prev);
    if (e) return e;
    e = ml_ew_map(&r, "prelu", IOP_PRELU, 2, (ml_tensor *[]){a, wv}, NULL);
    ml_tensor_release(wv);
    if (e) return e;
    ml_dtype od = ml_dtype_promote((ml_dtype)a->dtype, (ml_dtype)w->dtype);
    if ((ml_dtype)r->dtype != od) {
        ml_tensor *c;
        e = cast_nograd(&c, r, od);
        ml_tensor_release(r);
        if (e) return e;
        r = c;
    }
    ml_tensor *ins[2] = {a, w};
    if (ml_needs_grad(2, ins)) {
        ml_node *n;
        if ((e = ml_record("prelu", bw_prelu, 2, ins, r, &n))) { ml_tensor_release(r); return e; }
        if (ml_node_save(n, a) < 0 || ml_node_save(n, w) < 0) { ml_tensor_release(r); return ML_ERR_INTERNAL; }
    }
    *out = r;
    return ML_OK;
}

/* ================================================================== where */
#define WHERE_LOOP(T)                                                                               \
    ML_ITER_LOOP_(it, n, {                                                                          \
        T *o_ = (T *)ob + off_[0];                                                                  \
        const uint8_t *c_ = (const uint8_t *)cb + off_[1];                                          \
        const T *a_ = (const T *)ab + off_[2];                                                      \
        const T *b_ = (const T *)bb + off_[3];                                                      \
        if (st_[0] == 1 && st_[1] == 1 && st_[2] == 1 && st_[3] == 1) {                             \
            for (int64_t j_ = 0; j_ < cnt_; j_++) o_[j_] = c_[j_] ? a_[j_] : b_[j_];                \
        } else {                                                                                    \
            for (int64_t j_ = 0; j_ < cnt_; j_++)                                                   \
                o_[j_ * st_[0]] = c_[j_ * st_[1]] ? a_[j_ * st_[2]] : b_[j_ * st_[3]];              \
        }                                                                                           \
    })

static ml_err bw_where(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    ml_tensor *g = gout[0], *c = ml_node_saved(n, 0), *z = NULL, *r = NULL;
    if (!c) return ML_ERR_GRAD;
    ml_err e = ml_scalar_tensor(&z, (ml_dtype)g->dtype, 0);
    if (e) return e;
    if (n->needs[0]) {
        e = ml_where(&r, c, g, z);
        if (!e) e = ml_grad_finish(&gin[0], r, n, 0);
    }
    if (!e && n->needs[1]) {
        e = ml_where(&r, c, z, g);
        if (!e) e = ml_grad_finish(&gin[1], r, n, 1);
    }
    ml_tensor_release(z);
    return e;
}

ml_err ml_where(ml_tensor **out, ml_tensor *cond, ml_tensor *a, ml_tensor *b) {
    *out = NULL;
    ml_err e;
    if ((e = ml_tensor_plain(cond)) || (e = ml_tensor_plain(a)) || (e = ml_tensor_plain(b))) return e;
    if ((e = ml_check_cpu("where", cond)) || (e = ml_check_cpu("where", a)) || (e = ml_check_cpu("where", b))) return e;
    int nd;
    int64_t shape[ML_MAX_DIMS];
    if ((e = ml_broadcast_shapes("where", cond->ndim, cond->shape, a->ndim, a->shape, &nd, shape))) return e;
    if ((e = ml_broadcast_shapes("where", nd, shape, b->ndim, b->shape, &nd, shape))) return e;
    ml_dtype od = ml_dtype_promote((ml_dtype)a->dtype, (ml_dtype)b->dtype);
    ml_tensor *ac = NULL, *bc = NULL, *cc = NULL, *res = NULL;
    if ((e = cast_nograd(&ac, a, od)) || (e = cast_nograd(&bc, b, od))) goto done;
    if (cond->dtype == ML_BOOL || cond->dtype == ML_U8) {
        ml_tensor_retain(cond);
        cc = cond;
    } else {
        bool prev = ml_set_grad_enabled(false);
        e = binary_compute(&cc, ML_NE, cond, NULL, 0, false);
        ml_set_grad_enabled(prev);
        if (e) goto done;
    }
    if ((e = ml_tensor_empty(&res, od, nd, shape))) goto done;
    {
        ew_opnd o, c, x, y;
        opnd_tensor(&o, res, nd, shape);
        opnd_tensor(&c, cc, nd, shape);
        opnd_tensor(&x, ac, nd, shape);
        opnd_tensor(&y, bc, nd, shape);
        ml_iter it;
        const int64_t *ss[4] = {o.st, c.st, x.st, y.st};
        int64_t oo[4] = {o.off, c.off, x.off, y.off};
        ml_iter_init(&it, 4, nd, shape, ss, oo);
        int64_t n = shape_numel(nd, shape);
        size_t es = ml_dtype_size(od);
        char *ob = o.base, *cb = c.base, *ab = x.base, *bb = y.base;
        if (n > 0) {
            if (es == 1) WHERE_LOOP(uint8_t);
            else if (es == 2) WHERE_LOOP(uint16_t);
            else if (es == 4) WHERE_LOOP(uint32_t);
            else WHERE_LOOP(uint64_t);
        }
    }
    if (ml_dtype_is_float(od)) {
        ml_tensor *ins[2] = {a, b};
        if (ml_needs_grad(2, ins)) {
            ml_node *nd_;
            if ((e = ml_record("where", bw_where, 2, ins, res, &nd_))) goto done;
            if (ml_node_save(nd_, cc) < 0) { e = ML_ERR_INTERNAL; goto done; }
        }
    }
    *out = res;
    res = NULL;
done:
    ml_tensor_release(ac);
    ml_tensor_release(bc);
    ml_tensor_release(cc);
    ml_tensor_release(res);
    return e;
}

/* ======================================================= optimizer updates */
/* a = iop(a, b) in place, with params; b broadcast to a. Float a only. */
static ml_err fused_inplace(const char *name, int iop, ml_tensor *a, ml_tensor *b, const double *pr, bool check_leaf) {
    ml_err e;
    if (check_leaf && (e = ml_check_inplace(name, a))) return e;
    if (ml_inplace_tracked(a, b))
        return ml_seterr(ML_ERR_GRAD,
                         "%s: autograd does not record this in-place op and the target (shape %s) is part of a graph "
                         "or the operand (shape %s) requires grad; run it under no_grad or write it out of place",
                         name, ml_shape_str(a->ndim, a->shape), ml_shape_str(b->ndim, b->shape));
    if ((e = ml_tensor_plain(a)) || (e = ml_tensor_plain(b)) || (e = check_writable(name, a))) return e;
    if (!ml_dtype_is_float((ml_dtype)a->dtype))
        return ml_seterr(ML_ERR_DTYPE, "%s: expected a floating point target, got %s", name,
                         ml_dtype_name((ml_dtype)a->dtype));
    int nd;
    int64_t shape[ML_MAX_DIMS];
    if ((e = ml_broadcast_shapes(name, a->ndim, a->shape, b->ndim, b->shape, &nd, shape))) return e;
    if (!shape_eq(nd, shape, a->ndim, a->shape))
        return ml_seterr(ML_ERR_SHAPE, "%s: operand of shape %s does not broadcast to the target of shape %s", name,
                         ml_shape_str(b->ndim, b->shape), ml_shape_str(a->ndim, a->shape));
    ml_dtype ad = (ml_dtype)a->dtype;
    if (ad == ML_F32 || ad == ML_F64) {
        ml_tensor *bc;
        bool prev = ml_set_grad_enabled(false);
        if (b->storage == a->storage && !same_view(a, b)) e = ml_clone(&bc, b);
        else e = ml_to_dtype(&bc, b, ad);
        if (!e && (ml_dtype)bc->dtype != ad) {
            ml_tensor *c2;
            e = ml_to_dtype(&c2, bc, ad);
            ml_tensor_release(bc);
            bc = c2;
        }
        ml_set_grad_enabled(prev);
        if (e) return e;
        ew_opnd ops[3];
        opnd_tensor(&ops[0], a, nd, shape);
        opnd_tensor(&ops[1], a, nd, shape);
        opnd_tensor(&ops[2], bc, nd, shape);
        e = float_exec(iop, ad, nd, shape, 3, ops, pr);
        ml_tensor_release(bc);
        a->storage->version++;
        return e;
    }
    ml_tensor *r;
    bool prev = ml_set_grad_enabled(false);
    e = ml_ew_map(&r, name, iop, 2, (ml_tensor *[]){a, b}, pr);
    ml_set_grad_enabled(prev);
    if (e) return e;
    e = ml_copy_(a, r);
    ml_tensor_release(r);
    return e;
}

ml_err ml_lerp_(ml_tensor *a, ml_tensor *b, double w) {
    double pr[2] = {w, 0};
    return fused_inplace("lerp_", IOP_LERP, a, b, pr, true);
}

ml_err ml_axpby_(ml_tensor *a, double alpha, ml_tensor *b, double beta) {
    double pr[2] = {alpha, beta};
    return fused_inplace("axpby_", IOP_AXPBY, a, b, pr, false);
}

typedef struct {
    double l2, decay, omb1, b1, b2, omb2, step_size, bc2s, eps;
} adam_k;

#define ADAM_BODY(T, SQ, P, G, M1, M2)                                                                  \
    do {                                                                                            \
        T p_ = (P), g_ = (G) + (T)k.l2 * p_;                                                        \
        p_ *= (T)k.decay;                                                                           \
        T m_ = (M1) + (T)k.omb1 * (g_ - (M1));                                                      \
        T v_ = (T)k.b2 * (M2) + (T)k.omb2 * g_ * g_;                                                \
        T den_ = SQ(v_) / (T)k.bc2s + (T)k.eps;                                                   \
        (M1) = m_;                                                                                  \
        (M2) = v_;                                                                                  \
        (P) = p_ - (T)k.step_size * m_ / den_;                                                      \
    } while (0)

#define ADAM_LOOP(T, SQ)                                                                              \
    ML_ITER_LOOP_(it, n, {                                                                          \
        T *p0_ = (T *)pb + off_[0], *m0_ = (T *)mb + off_[2], *v0_ = (T *)vb + off_[3];             \
        const T *g0_ = (const T *)gb + off_[1];                                                     \
        if (st_[0] == 1 && st_[1] == 1 && st_[2] == 1 && st_[3] == 1) {                             \
            for (int64_t j_ = 0; j_ < cnt_; j_++) ADAM_BODY(T, SQ, p0_[j_], g0_[j_], m0_[j_], v0_[j_]); \
        } else {                                                                                    \
            for (int64_t j_ = 0; j_ < cnt_; j_++)                                                   \
                ADAM_BODY(T, SQ, p0_[j_ * st_[0]], g0_[j_ * st_[1]], m0_[j_ * st_[2]], v0_[j_ * st_[3]]); \
        }                                                                                           \
    })

/* The Adam/AdamW update of ADAM_BODY, in the same order, as in-place elementwise ops (for devices: each
 * op runs the device kernel of the shared expression table) */
static ml_err adam_device(ml_tensor *p, ml_tensor *grad, ml_tensor *m, ml_tensor *v, double l2, double decay,
                          double b1, double b2, double step_size, double bc2s, double eps) {
    ml_tensor *g = NULL, *t = NULL, *d = NULL, *g2 = NULL, *den = NULL;
    bool prev = ml_set_grad_enabled(false);
    ml_err e;
    if (l2 != 0) {
        if ((e = ml_binary_scalar(&t, ML_MUL, p, l2, false)) || (e = ml_binary(&g, ML_ADD, grad, t))) goto done;
    } else {
        ml_tensor_retain(grad);
        g = grad;
    }
    if (decay != 1 && (e = ml_binary_scalar_(ML_MUL, p, decay))) goto done;
    if ((e = ml_binary(&d, ML_SUB, g, m)) || (e = ml_binary_scalar_(ML_MUL, d, 1 - b1)) || (e = ml_binary_(ML_ADD, m, d)))
        goto done;
    if ((e = ml_binary(&g2, ML_MUL, g, g)) || (e = ml_axpby_(v, b2, g2, 1 - b2))) goto done;
    if ((e = ml_unary(&den, ML_SQRT, v)) || (e = ml_binary_scalar_(ML_DIV, den, bc2s)) ||
        (e = ml_binary_scalar_(ML_ADD, den, eps)))
        goto done;
    ml_tensor_release(d);
    d = NULL;
    if ((e = ml_binary(&d, ML_DIV, m, den)) || (e = ml_binary_scalar_(ML_MUL, d, step_size)) ||
        (e = ml_binary_(ML_SUB, p, d)))
        goto done;
done:
    ml_set_grad_enabled(prev);
    ml_tensor_release(g);
    ml_tensor_release(t);
    ml_tensor_release(d);
    ml_tensor_release(g2);
    ml_tensor_release(den);
    return e;
}

ml_err ml_adam_step_(ml_tensor *param, ml_tensor *grad, ml_tensor *exp_avg, ml_tensor *exp_avg_sq, double lr,
                     double beta1, double beta2, double eps, double weight_decay, bool decoupled, int64_t step) {
    ml_err e;
    if ((e = ml_tensor_plain(param)) || (e = ml_tensor_plain(grad)) || (e = ml_tensor_plain(exp_avg)) ||
        (e = ml_tensor_plain(exp_avg_sq)))
        return e;
    if (step < 1) return ml_seterr(ML_ERR_ARG, "adam_step_: step must be >= 1, got %lld", (long long)step);
    if (!(lr >= 0) || !(eps >= 0) || !(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1))
        return ml_seterr(ML_ERR_ARG, "adam_step_: invalid hyper-parameters lr=%g betas=(%g, %g) eps=%g", lr, beta1,
                         beta2, eps);
    ml_tensor *ts[4] = {param, grad, exp_avg, exp_avg_sq};
    static const char *what[4] = {"param", "grad", "exp_avg", "exp_avg_sq"};
    for (int i = 0; i < 4; i++) {
        if (!ml_dtype_is_float((ml_dtype)ts[i]->dtype))
            return ml_seterr(ML_ERR_DTYPE, "adam_step_: %s must be floating point, got %s", what[i],
                             ml_dtype_name((ml_dtype)ts[i]->dtype));
        if (!shape_eq(ts[i]->ndim, ts[i]->shape, param->ndim, param->shape))
            return ml_seterr(ML_ERR_SHAPE, "adam_step_: %s has shape %s but param has shape %s", what[i],
                             ml_shape_str(ts[i]->ndim, ts[i]->shape), ml_shape_str(param->ndim, param->shape));
        if (i != 1 && (e = check_writable("adam_step_", ts[i]))) return e;
    }
    if (ml_tensor_is_cuda(param)) {
        if ((e = ml_check_same_device("adam_step_", 4, ts))) return e;
        double bc1d = 1 - pow(beta1, (double)step), bc2d = 1 - pow(beta2, (double)step);
        return adam_device(param, grad, exp_avg, exp_avg_sq, decoupled ? 0 : weight_decay,
                           decoupled ? 1 - lr * weight_decay : 1, beta1, beta2, lr / bc1d, sqrt(bc2d), eps);
    }
    adam_k k;
    k.l2 = decoupled ? 0 : weight_decay;
    k.decay = decoupled ? 1 - lr * weight_decay : 1;
    k.b1 = beta1;
    k.omb1 = 1 - beta1;
    k.b2 = beta2;
    k.omb2 = 1 - beta2;
    double bc1 = 1 - pow(beta1, (double)step), bc2 = 1 - pow(beta2, (double)step);
    k.step_size = lr / bc1;
    k.bc2s = sqrt(bc2);
    k.eps = eps;
    int nd = param->ndim;
    const int64_t *shape = param->shape;
    ml_iter it;
    const int64_t *ss[4] = {param->stride, grad->stride, exp_avg->stride, exp_avg_sq->stride};
    int64_t oo[4] = {param->offset, grad->offset, exp_avg->offset, exp_avg_sq->offset};
    int64_t zs[4][ML_MAX_DIMS];
    for (int i = 0; i < 4; i++) { /* size-1 dims: stride irrelevant, make it 0 so dims merge */
        for (int d = 0; d < nd; d++) zs[i][d] = shape[d] == 1 ? 0 : ss[i][d];
        ss[i] = zs[i];
    }
    ml_iter_init(&it, 4, nd, shape, ss, oo);
    int64_t n = shape_numel(nd, shape);
    char *pb = (char *)param->storage->data, *gb = (char *)grad->storage->data, *mb = (char *)exp_avg->storage->data,
         *vb = (char *)exp_avg_sq->storage->data;
    ml_dtype pd = (ml_dtype)param->dtype, gd = (ml_dtype)grad->dtype, md = (ml_dtype)exp_avg->dtype,
             vd = (ml_dtype)exp_avg_sq->dtype;
    if (n > 0) {
        if (pd == ML_F32 && gd == ML_F32 && md == ML_F32 && vd == ML_F32) {
            ADAM_LOOP(float, sqrtf);
        } else if (pd == ML_F64 && gd == ML_F64 && md == ML_F64 && vd == ML_F64) {
            ADAM_LOOP(double, sqrt);
        } else {
            ML_ITER_LOOP_(it, n, {
                for (int64_t j_ = 0; j_ < cnt_; j_++) {
                    int64_t ip = off_[0] + j_ * st_[0], ig = off_[1] + j_ * st_[1], im = off_[2] + j_ * st_[2],
                            iv = off_[3] + j_ * st_[3];
                    double P = ml_load_elem(pb, pd, ip), G = ml_load_elem(gb, gd, ig), M1 = ml_load_elem(mb, md, im),
                           M2 = ml_load_elem(vb, vd, iv);
                    ADAM_BODY(double, sqrt, P, G, M1, M2);
                    ml_store_elem(pb, pd, ip, P);
                    ml_store_elem(mb, md, im, M1);
                    ml_store_elem(vb, vd, iv, M2);
                }
            });
        }
    }
    param->storage->version++;
    if (exp_avg->storage != param->storage) exp_avg->storage->version++;
    if (exp_avg_sq->storage != param->storage && exp_avg_sq->storage != exp_avg->storage) exp_avg_sq->storage->version++;
    return ML_OK;
}
