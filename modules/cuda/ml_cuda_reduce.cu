/* CUDA reductions: sum / max / min / prod of a strided float tensor over any set of dims, with the
 * index of the max/min (first occurrence; the first NaN wins) - the device twin of ml_reduce.c's
 * reduce_engine (K_SUM, K_MAX, K_MIN, K_PROD) and argext.
 *
 * Accumulation: in double for every input type, as the CPU does (its float kernels accumulate in
 * double and round once at the end); max/min compare the values themselves (exact in double).
 * NaN: a sum/prod propagates it arithmetically; max/min return NaN when any element is NaN, and the
 * index of the first NaN; otherwise the index of the first element equal to the result.
 *
 * Launch (after dropping size-1 dims and merging dims the input walks contiguously):
 *  - thread per output (256 threads per block, grid-stride) when the reduced sub-space is tiny
 *    (<= 16 elements) or the innermost kept dim is contiguous in the input (coalesced across
 *    threads); each thread walks its reduced elements in order;
 *  - otherwise block per output (256 threads, or fewer for short reductions): thread t takes the
 *    reduced elements t, t + B, ..., then a shared-memory tree combines the B partials;
 *  - few outputs over a long reduction: the reduced range is cut into nsplit contiguous chunks,
 *    one block per (output, chunk) writes a partial (value, index) to a scratch buffer from
 *    ml_cuda_malloc, and a second kernel (thread per output) combines the chunks in order. */
#include "ml_cuda_kernels.h"

namespace {

enum { R_SUM = 0, R_MAX = 1, R_MIN = 2, R_PROD = 3 };

#define RED_THREADS 256

struct red_args {
    int kind, nk, nr, out_dt;
    int64_t nout, nred;
    int64_t kshape[ML_MAX_DIMS], kst_in[ML_MAX_DIMS], kst_out[ML_MAX_DIMS], kst_idx[ML_MAX_DIMS];
    int64_t rshape[ML_MAX_DIMS], rst_in[ML_MAX_DIMS];
    const char *in;
    int64_t in_off;
    char *out;
    int64_t out_off;
    int64_t *idx; /* NULL: no index */
    int64_t idx_off;
    int nsplit;   /* > 1: block kernel writes partials (out / idx untouched) */
    double *part_v;
    int64_t *part_i;
};

struct acc {
    double v;
    int64_t i; /* index in the reduced sub-space of v (max/min), -1: nothing seen yet */
};

template <int DT>
MLK_HD double ld(const char *base, int64_t i) {
    if constexpr (DT == ML_F32) return (double)((const float *)base)[i];
    else if constexpr (DT == ML_F64) return ((const double *)base)[i];
    else if constexpr (DT == ML_BF16) return (double)mlk_bf16_to_f32(((const uint16_t *)base)[i]);
    else return (double)mlk_f16_to_f32(((const uint16_t *)base)[i]);
}

MLK_HD acc acc_init(int kind) {
    acc a;
    a.v = kind == R_PROD ? 1.0 : kind == R_MAX ? -INFINITY : kind == R_MIN ? INFINITY : 0.0;
    a.i = -1;
    return a;
}

/* is candidate c better than the current best b? (max/min; first occurrence, first NaN wins) */
MLK_HD bool better(bool mx, const acc &c, const acc &b) {
    if (c.i < 0) return false;
    if (b.i < 0) return true;
    bool bn = b.v != b.v, cn = c.v != c.v;
    if (bn) return cn && c.i < b.i;
    if (cn) return true;
    if (mx ? c.v > b.v : c.v < b.v) return true;
    return c.v == b.v && c.i < b.i;
}

/* a := a (+) b */
MLK_HD void combine(int kind, acc &a, const acc &b) {
    switch (kind) {
    case R_SUM: a.v += b.v; break;
    case R_PROD: a.v *= b.v; break;
    default:
        if (better(kind == R_MAX, b, a)) a = b;
        break;
    }
}

/* element x at reduced index r, r increasing within a thread */
MLK_HD void update(int kind, acc &a, double x, int64_t r) {
    switch (kind) {
    case R_SUM: a.v += x; break;
    case R_PROD: a.v *= x; break;
    default: {
        acc c;
        c.v = x;
        c.i = r;
        if (better(kind == R_MAX, c, a)) a = c;
    } break;
    }
}

MLK_HD void kept_offsets(const red_args &a, int64_t o, int64_t *oin, int64_t *oout, int64_t *oidx) {
    int64_t in = 0, out = 0, ix = 0;
    for (int d = a.nk - 1; d >= 0; d--) {
        int64_t q = o / a.kshape[d], j = o - q * a.kshape[d];
        in += j * a.kst_in[d];
        out += j * a.kst_out[d];
        ix += j * a.kst_idx[d];
        o = q;
    }
    *oin = in;
    *oout = out;
    *oidx = ix;
}

MLK_HD int64_t red_offset(const red_args &a, int64_t r) {
    int64_t off = 0;
    for (int d = a.nr - 1; d >= 0; d--) {
        int64_t q = r / a.rshape[d];
        off += (r - q * a.rshape[d]) * a.rst_in[d];
        r = q;
    }
    return off;
}

__device__ __forceinline__ void store_result(const red_args &a, const acc &r, int64_t oout, int64_t oidx) {
    mlk_store(a.out, a.out_dt, a.out_off + oout, r.v);
    if (a.idx) a.idx[a.idx_off + oidx] = r.i < 0 ? 0 : r.i;
}

/* one thread per output, the reduced elements in order (odometer over the reduced dims) */
template <int DT>
__global__ void red_thread_k(const red_args a) {
    const int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; o < a.nout; o += step) {
        int64_t oin, oout, oidx;
        kept_offsets(a, o, &oin, &oout, &oidx);
        const char *base = a.in;
        int64_t off = a.in_off + oin;
        acc s = acc_init(a.kind);
        int64_t ri[ML_MAX_DIMS];
        for (int d = 0; d < a.nr; d++) ri[d] = 0;
        for (int64_t r = 0; r < a.nred; r++) {
            update(a.kind, s, ld<DT>(base, off), r);
            for (int d = a.nr - 1; d >= 0; d--) { /* next reduced element */
                off += a.rst_in[d];
                if (++ri[d] < a.rshape[d]) break;
                off -= a.rst_in[d] * a.rshape[d];
                ri[d] = 0;
            }
        }
        store_result(a, s, oout, oidx);
    }
}

/* one block per (output, chunk); blockDim.x a power of two <= RED_THREADS */
template <int DT>
__global__ void red_block_k(const red_args a) {
    __shared__ double sv[RED_THREADS];
    __shared__ int64_t si[RED_THREADS];
    const int t = threadIdx.x, B = blockDim.x;
    const int64_t nblk = a.nout * a.nsplit;
    for (int64_t b = blockIdx.x; b < nblk; b += gridDim.x) {
        int64_t o = b / a.nsplit, c = b - o * a.nsplit;
        int64_t lo = a.nred * c / a.nsplit, hi = a.nred * (c + 1) / a.nsplit;
        int64_t oin, oout, oidx;
        kept_offsets(a, o, &oin, &oout, &oidx);
        acc s = acc_init(a.kind);
        for (int64_t r = lo + t; r < hi; r += B) update(a.kind, s, ld<DT>(a.in, a.in_off + oin + red_offset(a, r)), r);
        sv[t] = s.v;
        si[t] = s.i;
        __syncthreads();
        for (int h = B / 2; h > 0; h >>= 1) {
            if (t < h) {
                acc x, y;
                x.v = sv[t];
                x.i = si[t];
                y.v = sv[t + h];
                y.i = si[t + h];
                combine(a.kind, x, y);
                sv[t] = x.v;
                si[t] = x.i;
            }
            __syncthreads();
        }
        if (t == 0) {
            acc r;
            r.v = sv[0];
            r.i = si[0];
            if (a.nsplit > 1) {
                a.part_v[b] = r.v;
                a.part_i[b] = r.i;
            } else {
                store_result(a, r, oout, oidx);
            }
        }
        __syncthreads(); /* sv/si are reused by the next output */
    }
}

/* second pass of the split reduction: thread per output, chunks combined in order */
__global__ void red_final_k(const red_args a) {
    const int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; o < a.nout; o += step) {
        int64_t oin, oout, oidx;
        kept_offsets(a, o, &oin, &oout, &oidx);
        acc s = acc_init(a.kind);
        for (int c = 0; c < a.nsplit; c++) {
            acc x;
            x.v = a.part_v[o * a.nsplit + c];
            x.i = a.part_i[o * a.nsplit + c];
            combine(a.kind, s, x);
        }
        store_result(a, s, oout, oidx);
    }
}

/* drop size-1 dims of a group, merge neighbours the strides allow (row-major order kept, so the
 * linear index over the group is unchanged) */
int merge_dims(int n, int64_t *shape, int64_t *const *st, int nst) {
    int m = 0;
    for (int d = 0; d < n; d++) {
        if (shape[d] == 1) continue;
        bool merge = m > 0;
        for (int k = 0; k < nst && merge; k++)
            if (st[k][m - 1] != st[k][d] * shape[d]) merge = false;
        if (merge) {
            shape[m - 1] *= shape[d];
            for (int k = 0; k < nst; k++) st[k][m - 1] = st[k][d];
        } else {
            shape[m] = shape[d];
            for (int k = 0; k < nst; k++) st[k][m] = st[k][d];
            m++;
        }
    }
    return m;
}

template <int DT>
ml_err red_launch(red_args &a, int dev) {
    bool tiny = a.nred <= 16;
    bool coalesced = a.nk > 0 && a.kst_in[a.nk - 1] == 1 && a.nout >= 1024;
    if (tiny || coalesced) {
        a.nsplit = 1;
        red_thread_k<DT><<<mlk_blocks(a.nout, RED_THREADS), RED_THREADS>>>(a);
        return ML_OK;
    }
    int B = 32;
    while (B < RED_THREADS && B < a.nred) B *= 2;
    /* split long reductions over several blocks when there are few outputs */
    int64_t nsplit = 1;
    if (a.nout < 512 && a.nred >= 65536) {
        nsplit = 1024 / a.nout;
        int64_t most = a.nred / (RED_THREADS * 16); /* at least 16 elements per thread */
        if (nsplit > most) nsplit = most;
        if (nsplit < 1) nsplit = 1;
    }
    void *scratch = NULL;
    if (nsplit > 1) {
        scratch = ml_cuda_malloc((size_t)(a.nout * nsplit) * (sizeof(double) + sizeof(int64_t)), dev);
        if (!scratch) nsplit = 1; /* fall back to one block per output */
    }
    a.nsplit = (int)nsplit;
    a.part_v = (double *)scratch;
    a.part_i = scratch ? (int64_t *)((char *)scratch + (size_t)(a.nout * nsplit) * sizeof(double)) : NULL;
    int64_t nblk = a.nout * nsplit;
    red_block_k<DT><<<(unsigned)(nblk < 65536 ? nblk : 65536), B>>>(a);
    if (nsplit > 1) {
        red_final_k<<<mlk_blocks(a.nout, RED_THREADS), RED_THREADS>>>(a);
        ml_cuda_free(scratch, dev); /* stream-ordered reuse: the kernels above run first */
    }
    return ML_OK;
}

} // namespace

extern "C" ml_err ml_cuda_reduce(int kind, int kd, int ndim, const int64_t *shape, const bool *reduce,
                                 const ml_cuda_opnd *out, const ml_cuda_opnd *in, const ml_cuda_opnd *idx) {
    static const char *const kinds[4] = {"sum", "max", "min", "prod"};
    if (kind < 0 || kind > 3) return ml_seterr(ML_ERR_ARG, "cuda reduce: unknown kind %d", kind);
    const char *name = kinds[kind];
    if (kd != ML_F32 && kd != ML_F64)
        return ml_seterr(ML_ERR_DTYPE, "cuda reduce %s: kernel type must be float32 or float64, not %s", name,
                         ml_dtype_name((ml_dtype)kd));
    if (ndim < 0 || ndim > ML_MAX_DIMS || (ndim > 0 && (!shape || !reduce)))
        return ml_seterr(ML_ERR_ARG, "cuda reduce %s: rank %d out of range (0..%d)", name, ndim, ML_MAX_DIMS);
    for (int d = 0; d < ndim; d++)
        if (shape[d] < 0)
            return ml_seterr(ML_ERR_SHAPE, "cuda reduce %s: negative size in shape %s", name, ml_shape_str(ndim, shape));
    if (!out || !in || out->is_scalar || in->is_scalar)
        return ml_seterr(ML_ERR_ARG, "cuda reduce %s: input and output must be tensors", name);
    int dt = in->dtype;
    if (dt != ML_F32 && dt != ML_F64 && dt != ML_BF16 && dt != ML_F16)
        return ml_seterr(ML_ERR_DTYPE, "cuda reduce %s: input must be a float tensor, not %s", name,
                         ml_dtype_name((ml_dtype)dt));
    if (!mlk_dtype_ok(out->dtype))
        return ml_seterr(ML_ERR_DTYPE, "cuda reduce %s: unknown output dtype %d", name, out->dtype);
    if (idx && (idx->is_scalar || idx->dtype != ML_I64 || (kind != 1 && kind != 2)))
        return ml_seterr(ML_ERR_ARG, "cuda reduce %s: an index output must be an int64 tensor, for max/min only",
                         name);

    red_args a;
    memset(&a, 0, sizeof a);
    a.kind = kind;
    a.out_dt = out->dtype;
    a.in = in->base;
    a.in_off = in->off;
    a.out = out->base;
    a.out_off = out->off;
    a.idx = idx ? (int64_t *)idx->base : NULL;
    a.idx_off = idx ? idx->off : 0;
    int nk = 0, nr = 0;
    for (int d = 0; d < ndim; d++) {
        if (reduce[d]) {
            a.rshape[nr] = shape[d];
            a.rst_in[nr] = in->st[d];
            nr++;
        } else {
            a.kshape[nk] = shape[d];
            a.kst_in[nk] = in->st[d];
            a.kst_out[nk] = out->st[d];
            a.kst_idx[nk] = idx ? idx->st[d] : 0;
            nk++;
        }
    }
    a.nout = 1;
    for (int d = 0; d < nk; d++) a.nout *= a.kshape[d];
    a.nred = 1;
    for (int d = 0; d < nr; d++) a.nred *= a.rshape[d];
    if (a.nout == 0) return ML_OK;
    {
        int64_t *kst[3] = {a.kst_in, a.kst_out, a.kst_idx};
        int64_t *rst[1] = {a.rst_in};
        a.nk = merge_dims(nk, a.kshape, kst, 3);
        a.nr = a.nred == 0 ? 0 : merge_dims(nr, a.rshape, rst, 1);
    }
    mlk_device_guard guard(out->base);
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) {
        (void)cudaGetLastError();
        dev = 0;
    }
    ml_err e;
    switch (dt) {
    case ML_F64: e = red_launch<ML_F64>(a, dev); break;
    case ML_BF16: e = red_launch<ML_BF16>(a, dev); break;
    case ML_F16: e = red_launch<ML_F16>(a, dev); break;
    default: e = red_launch<ML_F32>(a, dev); break;
    }
    if (e) return e;
    MLK_CHECK_LAUNCH("cuda reduce %s (%s) over %s", name, ml_dtype_name((ml_dtype)dt), ml_shape_str(ndim, shape));
    return ML_OK;
}
