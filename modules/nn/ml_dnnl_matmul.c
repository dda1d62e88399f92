/* matmul / bmm / linear. f32 through dnnl_matmul (cached primitives, strided operands so
 * transposed views need no copy); f64 through plain OpenMP loops (reference, gradient checks).
 * Backward rules are matmuls of the gradient with transposed operands plus a batch sum where
 * an operand was broadcast. */
#include "ml_dnnl_priv.h"
#include "../cuda/ml_cuda.h"

#include <stdlib.h>
#include <string.h>

enum { MMK_MATMUL = 0x4d4d };

/* ------------------------------------------------------------ operands */
/* A rank>=2 operand seen over the output batch shape: own batch dims (1 where broadcast) and
 * strides (0 where broadcast). */
typedef struct {
    const char *base; /* first element */
    int nb;
    int64_t bdim[ML_MAX_DIMS], bstr[ML_MAX_DIMS];
    int64_t rows, cols, rs, cs;
} mm_opnd;

static void mm_opnd_init(mm_opnd *o, const ml_tensor *t, int nb) {
    int tb = t->ndim - 2;
    o->base = (const char *)ml_tensor_data(t);
    o->nb = nb;
    for (int i = 0; i < nb; i++) {
        int j = i - (nb - tb);
        int64_t d = j >= 0 ? t->shape[j] : 1, s = j >= 0 ? t->stride[j] : 0;
        if (d == 1 || s == 0) { d = 1; s = 0; }
        o->bdim[i] = d;
        o->bstr[i] = s;
    }
    o->rows = t->shape[t->ndim - 2];
    o->cols = t->shape[t->ndim - 1];
    o->rs = t->stride[t->ndim - 2];
    o->cs = t->stride[t->ndim - 1];
}

/* dims/strides of the operand as a oneDNN descriptor of rank nb+2 (canonical strides for size-1 dims) */
static void mm_opnd_dims(const mm_opnd *o, int64_t *dims, int64_t *strides) {
    int nd = o->nb + 2;
    for (int i = 0; i < o->nb; i++) { dims[i] = o->bdim[i]; strides[i] = o->bstr[i]; }
    dims[nd - 2] = o->rows; strides[nd - 2] = o->rs;
    dims[nd - 1] = o->cols; strides[nd - 1] = o->cs;
    for (int i = nd - 1; i >= 0; i--) {
        if (dims[i] != 1) continue;
        int64_t m = 1;
        for (int j = i + 1; j < nd; j++)
            if (dims[j] != 1 && strides[j] * dims[j] > m) m = strides[j] * dims[j];
        strides[i] = m;
    }
}

/* Can dims [0, nd-1) of t be merged into one with a single stride? (*n, *stride) receive it. */
static bool collapse_leading(const ml_tensor *t, int64_t *n, int64_t *stride) {
    int last = t->ndim - 2;
    int64_t cnt = 1, st = 0;
    bool have = false;
    for (int i = last; i >= 0; i--) {
        if (t->shape[i] == 1) continue;
        if (!have) { st = t->stride[i]; cnt = t->shape[i]; have = true; continue; }
        if (t->stride[i] != st * cnt) return false;
        cnt *= t->shape[i];
    }
    *n = cnt;
    *stride = have ? st : 1;
    return true;
}

/* ------------------------------------------------------------ reference loops */
/* c[b, i, :] = bias + sum_k A[b, i, k] * B[b, k, :] over any operand strides (0 = broadcast).
 * f64: the reference for gradient checks; f32: last resort when oneDNN takes none of our layouts. */
#define MM_REF(T, NAME)                                                                              \
    static void NAME(T *c, const mm_opnd *A, const mm_opnd *B, const T *bias, int nb, const int64_t *bshape, \
                     int64_t M, int64_t K, int64_t N) {                                              \
        int64_t nbatch = 1;                                                                          \
        for (int i = 0; i < nb; i++) nbatch *= bshape[i];                                            \
        int64_t total = nbatch * M;                                                                  \
        const T *ab = (const T *)A->base, *bb = (const T *)B->base;                                  \
        _Pragma("omp parallel for schedule(static) if (total * K * N > 32768)")                      \
        for (int64_t r = 0; r < total; r++) {                                                        \
            int64_t bi = r / M, i = r % M, rem = bi, oa = 0, ob = 0;                                 \
            for (int d = nb - 1; d >= 0; d--) {                                                      \
                int64_t id = rem % bshape[d];                                                        \
                rem /= bshape[d];                                                                    \
                oa += id * A->bstr[d];                                                               \
                ob += id * B->bstr[d];                                                               \
            }                                                                                        \
            T *crow = c + r * N;                                                                     \
            for (int64_t j = 0; j < N; j++) crow[j] = bias ? bias[j] : (T)0;                         \
            const T *arow = ab + oa + i * A->rs;                                                     \
            for (int64_t k = 0; k < K; k++) {                                                        \
                T av = arow[k * A->cs];                                                              \
                const T *brow = bb + ob + k * B->rs;                                                 \
                if (B->cs == 1)                                                                      \
                    for (int64_t j = 0; j < N; j++) crow[j] += av * brow[j];                         \
                else                                                                                 \
                    for (int64_t j = 0; j < N; j++) crow[j] += av * brow[j * B->cs];                 \
            }                                                                                        \
        }                                                                                            \
    }
MM_REF(double, mm_ref_f64)
MM_REF(float, mm_ref_f32)

/* ------------------------------------------------------------ f32 oneDNN */
typedef struct {
    int nd;
    int64_t ad[ML_MAX_DIMS + 2], as[ML_MAX_DIMS + 2], bd[ML_MAX_DIMS + 2], bs[ML_MAX_DIMS + 2];
    int64_t cd[ML_MAX_DIMS + 2];
    bool bias;
} mm_desc;

static ml_err mm_build(mld_entry *e, void *ud) {
    const mm_desc *d = ud;
    const char *op = "matmul";
    dnnl_engine_t eng = mld_engine(op);
    if (!eng) return ML_ERR_INTERNAL;
    ml_err err;
    int64_t bdims[ML_MAX_DIMS + 2];
    for (int i = 0; i < d->nd; i++) bdims[i] = 1;
    bdims[d->nd - 1] = d->cd[d->nd - 1];
    if ((err = mld_md_strided(&e->md[0], op, d->nd, d->ad, d->as)) ||
        (err = mld_md_strided(&e->md[1], op, d->nd, d->bd, d->bs)) ||
        (err = mld_md_plain(&e->md[2], op, d->nd, d->cd)) || (err = mld_md_plain(&e->md[3], op, d->nd, bdims)))
        return err;
    dnnl_matmul_desc_t md;
    /* a rejected descriptor (e.g. strides it does not take) sends the caller to its fallbacks */
    if (dnnl_matmul_desc_init(&md, &e->md[0], &e->md[1], d->bias ? &e->md[3] : NULL, &e->md[2]) != dnnl_success)
        return ml_seterr(ML_ERR_UNSUPPORTED, "%s: oneDNN rejects these layouts", op);
    MLD_TRY(dnnl_primitive_desc_create(&e->pd, &md, NULL, eng, NULL), op, "matmul primitive descriptor");
    MLD_TRY(dnnl_primitive_create(&e->prim, e->pd), op, "matmul primitive");
    return ML_OK;
}

static ml_err mm_dnnl(float *c, const mm_opnd *A, const mm_opnd *B, const float *bias, int nb, const int64_t *bshape,
                      int64_t M, int64_t N) {
    const char *op = "matmul";
    mm_desc d;
    memset(&d, 0, sizeof d);
    d.nd = nb + 2;
    d.bias = bias != NULL;
    mm_opnd_dims(A, d.ad, d.as);
    mm_opnd_dims(B, d.bd, d.bs);
    for (int i = 0; i < nb; i++) d.cd[i] = bshape[i];
    d.cd[nb] = M;
    d.cd[nb + 1] = N;
    mld_key k = {.n = 0};
    mld_k(&k, MMK_MATMUL);
    mld_k(&k, d.nd);
    mld_ka(&k, d.nd, d.ad);
    mld_ka(&k, d.nd, d.as);
    mld_ka(&k, d.nd, d.bd);
    mld_ka(&k, d.nd, d.bs);
    mld_ka(&k, d.nd, d.cd);
    mld_k(&k, d.bias);
    mld_entry *e;
    ml_err err = mld_get(&e, k.w, k.n, mm_build, &d);
    if (err) return err;
    if (e->unsupported) {
        mld_put(e);
        return ml_seterr(ML_ERR_UNSUPPORTED, "matmul: no oneDNN implementation for these strides");
    }
    mld_args args = {0};
    if ((err = mld_arg(&args, op, DNNL_ARG_SRC, &e->md[0], (void *)A->base)) ||
        (err = mld_arg(&args, op, DNNL_ARG_WEIGHTS, &e->md[1], (void *)B->base)) ||
        (err = mld_arg(&args, op, DNNL_ARG_DST, &e->md[2], c)) ||
        (bias && (err = mld_arg(&args, op, DNNL_ARG_BIAS, &e->md[3], (void *)bias)))) {
        mld_args_free(&args);
        mld_put(e);
        return err;
    }
    err = mld_exec(op, e->prim, &args);
    mld_put(e);
    return err;
}

/* Dense copy of an operand's own data (broadcast batch dims kept at size 1). */
static ml_err mm_densify(ml_tensor **keep, mm_opnd *o, ml_dtype dt) {
    int nd = o->nb + 2;
    int64_t shape[ML_MAX_DIMS + 2], str[ML_MAX_DIMS + 2];
    for (int i = 0; i < o->nb; i++) { shape[i] = o->bdim[i]; str[i] = o->bstr[i]; }
    shape[nd - 2] = o->rows; str[nd - 2] = o->rs;
    shape[nd - 1] = o->cols; str[nd - 1] = o->cs;
    ml_tensor *c;
    ml_err e = ml_tensor_empty(&c, dt, nd, shape);
    if (e) return e;
    size_t es = ml_dtype_size(dt);
    int64_t total = ml_tensor_numel(c);
    char *dst = (char *)ml_tensor_data(c);
    int64_t idx[ML_MAX_DIMS + 2] = {0};
    for (int64_t lin = 0; lin < total; lin++) {
        int64_t off = 0;
        for (int d = 0; d < nd; d++) off += idx[d] * str[d];
        memcpy(dst + lin * (int64_t)es, o->base + off * (int64_t)es, es);
        for (int d = nd - 1; d >= 0; d--) {
            if (++idx[d] < shape[d]) break;
            idx[d] = 0;
        }
    }
    *keep = c;
    o->base = dst;
    int64_t cst[ML_MAX_DIMS + 2];
    ml_contiguous_strides(nd, shape, cst);
    for (int i = 0; i < o->nb; i++) o->bstr[i] = o->bdim[i] == 1 ? 0 : cst[i];
    o->rs = cst[nd - 2];
    o->cs = 1;
    return ML_OK;
}

/* mm_run on a CUDA device: both operands expanded to the full batch shape and made dense, one
 * strided-batched cuBLAS gemm, the bias added after */
static ml_err cuda_mm_run(ml_tensor **out, ml_tensor *a, ml_tensor *b, ml_tensor *bias) {
    *out = NULL;
    ml_dtype dt = (ml_dtype)a->dtype;
    int ba = a->ndim - 2, bb = b->ndim - 2, nb = ba > bb ? ba : bb;
    int64_t shape[ML_MAX_DIMS + 2], sa[ML_MAX_DIMS + 2], sb[ML_MAX_DIMS + 2], batch = 1;
    for (int i = 0; i < nb; i++) {
        int ia = i - (nb - ba), ib = i - (nb - bb);
        int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
        shape[i] = sa[i] = sb[i] = da == 1 ? db : da;
        batch *= shape[i];
    }
    int64_t M = a->shape[a->ndim - 2], K = a->shape[a->ndim - 1], N = b->shape[b->ndim - 1];
    shape[nb] = sa[nb] = M;
    shape[nb + 1] = sb[nb + 1] = N;
    sa[nb + 1] = sb[nb] = K;
    ml_tensor *ae = NULL, *be = NULL, *ad = NULL, *bd = NULL, *c = NULL;
    bool prev = ml_set_grad_enabled(false);
    ml_err e;
    if ((e = ml_expand(&ae, a, nb + 2, sa)) || (e = ml_contiguous(&ad, ae)) || (e = ml_expand(&be, b, nb + 2, sb)) ||
        (e = ml_contiguous(&bd, be)))
        goto done;
    if ((e = ml_tensor_empty_on(&c, ml_tensor_device(a), dt, nb + 2, shape))) goto done;
    if (ml_tensor_numel(c) > 0) {
        if (K == 0) e = ml_fill_(c, 0.0);
        else
            e = ml_cuda_gemm(dt, false, false, M, N, K, ml_tensor_data(ad), K, M * K, ml_tensor_data(bd), N, K * N,
                             ml_tensor_data(c), N, M * N, batch, 1.0, 0.0, a->storage->device.index);
        if (!e && bias) e = ml_binary_(ML_ADD, c, bias);
    }
done:
    ml_set_grad_enabled(prev);
    ml_tensor_release(ae);
    ml_tensor_release(be);
    ml_tensor_release(ad);
    ml_tensor_release(bd);
    if (e) ml_tensor_release(c);
    else *out = c;
    return e;
}

/* out = a @ b (+ bias), a: [.., M, K], b: [.., K, N] (both rank >= 2, batch dims broadcastable,
 * checked by the caller), bias NULL or contiguous [N]. out: NEW contiguous [bshape.., M, N]. */
static ml_err mm_run(ml_tensor **out, ml_tensor *a, ml_tensor *b, ml_tensor *bias) {
    *out = NULL;
    if (ml_tensor_is_cuda(a)) return cuda_mm_run(out, a, b, bias);
    ml_dtype dt = (ml_dtype)a->dtype;
    int ba = a->ndim - 2, bb = b->ndim - 2, nb = ba > bb ? ba : bb;
    int64_t shape[ML_MAX_DIMS + 2];
    for (int i = 0; i < nb; i++) {
        int ia = i - (nb - ba), ib = i - (nb - bb);
        int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
        shape[i] = da == 1 ? db : da;
    }
    int64_t M = a->shape[a->ndim - 2], K = a->shape[a->ndim - 1], N = b->shape[b->ndim - 1];
    shape[nb] = M;
    shape[nb + 1] = N;
    ml_tensor *c;
    ml_err e = ml_tensor_empty(&c, dt, nb + 2, shape);
    if (e) return e;
    int64_t total = ml_tensor_numel(c);
    if (total == 0) { *out = c; return ML_OK; }
    if (K == 0) {
        if (bias) {
            ml_tensor *bv = ml_tensor_header(bias->storage, dt, 1, &N, bias->stride, bias->offset);
            if (!bv) { ml_tensor_release(c); return ML_ERR_OOM; }
            e = ml_copy_(c, bv);
            ml_tensor_release(bv);
        } else {
            e = ml_fill_(c, 0.0);
        }
        if (e) { ml_tensor_release(c); return e; }
        *out = c;
        return ML_OK;
    }
    mm_opnd A, B;
    mm_opnd_init(&A, a, nb);
    mm_opnd_init(&B, b, nb);
    int nbe = nb;
    int64_t M2 = M, bshape2[ML_MAX_DIMS];
    memcpy(bshape2, shape, sizeof(int64_t) * (size_t)nb);
    /* b broadcast over every batch dim and a's batch+rows collapsible: one 2-D gemm */
    bool b_flat = true;
    for (int i = 0; i < nb; i++) b_flat &= B.bdim[i] == 1;
    if (nb > 0 && b_flat) {
        bool a_full = true;
        for (int i = 0; i < nb; i++) a_full &= A.bdim[i] == shape[i];
        int64_t rows, rstride;
        if (a_full && collapse_leading(a, &rows, &rstride) && ba == nb) {
            M2 = rows;
            A.rows = rows;
            A.rs = rstride;
            A.nb = B.nb = 0;
            nbe = 0;
        }
    }
    /* batch dims where both operands broadcast: compute once, then broadcast-copy */
    ml_tensor *cr = c;
    bool reduce = false;
    for (int i = 0; i < nbe; i++)
        if (A.bdim[i] == 1 && B.bdim[i] == 1 && bshape2[i] > 1) { bshape2[i] = 1; reduce = true; }
    if (reduce) {
        int64_t rs[ML_MAX_DIMS + 2];
        memcpy(rs, bshape2, sizeof(int64_t) * (size_t)nbe);
        rs[nbe] = M;
        rs[nbe + 1] = N;
        if ((e = ml_tensor_empty(&cr, dt, nbe + 2, rs))) { ml_tensor_release(c); return e; }
    }
    void *cp = ml_tensor_data(cr);
    const void *bias_p = bias ? ml_tensor_data(bias) : NULL;
    if (dt == ML_F64) {
        mm_ref_f64(cp, &A, &B, bias_p, nbe, bshape2, M2, K, N);
    } else {
        ml_tensor *ka = NULL, *kb = NULL;
        e = mm_dnnl(cp, &A, &B, bias_p, nbe, bshape2, M2, N);
        if (e == ML_ERR_UNSUPPORTED) {
            /* strides oneDNN does not take: dense copies, then plain layouts */
            if (!(A.cs == 1 && (A.rs == A.cols || A.rows == 1)) && (e = mm_densify(&ka, &A, dt))) goto fail;
            if (!(B.cs == 1 && (B.rs == B.cols || B.rows == 1)) && (e = mm_densify(&kb, &B, dt))) goto fail;
            e = mm_dnnl(cp, &A, &B, bias_p, nbe, bshape2, M2, N);
            if (e == ML_ERR_UNSUPPORTED) {
                mm_ref_f32(cp, &A, &B, bias_p, nbe, bshape2, M2, K, N);
                e = ML_OK;
            }
        }
    fail:
        ml_tensor_release(ka);
        ml_tensor_release(kb);
    }
    if (!e && reduce) e = ml_copy_(c, cr);
    if (reduce) ml_tensor_release(cr);
    if (e) { ml_tensor_release(c); return e; }
    *out = c;
    return ML_OK;
}

/* ------------------------------------------------------------ helpers */
/* Untracked header view with the last two dims swapped. */
static ml_tensor *mt_view(ml_tensor *t) {
    int64_t sh[ML_MAX_DIMS], st[ML_MAX_DIMS];
    memcpy(sh, t->shape, sizeof sh);
    memcpy(st, t->stride, sizeof st);
    int n = t->ndim;
    sh[n - 2] = t->shape[n - 1]; sh[n - 1] = t->shape[n - 2];
    st[n - 2] = t->stride[n - 1]; st[n - 1] = t->stride[n - 2];
    ml_tensor *v = ml_tensor_header(t->storage, (ml_dtype)t->dtype, n, sh, st, t->offset);
    if (!v) ml_seterr(ML_ERR_OOM, "matmul: out of memory");
    return v;
}

/* Untracked view with a new shape over a contiguous tensor. */
static ml_tensor *reshape_view(ml_tensor *t, int ndim, const int64_t *shape) {
    int64_t st[ML_MAX_DIMS];
    ml_contiguous_strides(ndim, shape, st);
    ml_tensor *v = ml_tensor_header(t->storage, (ml_dtype)t->dtype, ndim, shape, st, t->offset);
    if (!v) ml_seterr(ML_ERR_OOM, "matmul: out of memory");
    return v;
}

/* Promote 1-D operands: a [K] -> [1,K]; b [K] -> [K,1] (untracked views). */
static ml_tensor *promote(ml_tensor *t, bool is_a) {
    if (t->ndim >= 2) { ml_tensor_retain(t); return t; }
    int64_t K = t->shape[0], s = t->stride[0];
    int64_t sh[2], st[2];
    if (is_a) { sh[0] = 1; sh[1] = K; st[0] = K * s; st[1] = s; }
    else { sh[0] = K; sh[1] = 1; st[0] = s; st[1] = 1; }
    ml_tensor *v = ml_tensor_header(t->storage, (ml_dtype)t->dtype, 2, sh, st, t->offset);
    if (!v) ml_seterr(ML_ERR_OOM, "matmul: out of memory");
    return v;
}

/* Sum a contiguous full [bshape.., R, C] down to the target operand batch shape (right-aligned,
 * dims 1 or equal) -> NEW contiguous [tshape.., R, C]. */
static ml_err sum_batch(ml_tensor **out, ml_tensor *full, int tnd, const int64_t *tshape) {
    if (ml_tensor_is_cuda(full)) return ml_sum_to(out, full, tnd, tshape);
    int nb = full->ndim - 2, tb = tnd - 2;
    bool same = nb == tb;
    for (int i = 0; same && i < nb; i++) same = full->shape[i] == tshape[i];
    if (same) {
        ml_tensor_retain(full);
        *out = full;
        return ML_OK;
    }
    ml_dtype dt = (ml_dtype)full->dtype;
    ml_tensor *r;
    ml_err e = ml_zeros(&r, dt, tnd, tshape);
    if (e) return e;
    int64_t blk = full->shape[nb] * full->shape[nb + 1], nbatch = 1;
    for (int i = 0; i < nb; i++) nbatch *= full->shape[i];
    int64_t tstr[ML_MAX_DIMS];
    {   /* target batch strides in blocks, aligned to the full batch dims */
        int64_t s = 1;
        for (int i = nb - 1; i >= 0; i--) {
            int j = i - (nb - tb);
            int64_t d = j >= 0 ? tshape[j] : 1;
            tstr[i] = d == 1 ? 0 : s;
            s *= d;
        }
    }
    char *src = (char *)ml_tensor_data(full), *dst = (char *)ml_tensor_data(r);
#pragma omp parallel for schedule(static) if (blk * nbatch > 65536)
    for (int64_t j0 = 0; j0 < blk; j0 += 256) {
        int64_t j1 = j0 + 256 < blk ? j0 + 256 : blk;
        for (int64_t bi = 0; bi < nbatch; bi++) {
            int64_t rem = bi, to = 0;
            for (int d = nb - 1; d >= 0; d--) { to += (rem % full->shape[d]) * tstr[d]; rem /= full->shape[d]; }
            if (dt == ML_F64) {
                const double *s = (const double *)src + bi * blk;
                double *t = (double *)dst + to * blk;
                for (int64_t j = j0; j < j1; j++) t[j] += s[j];
            } else {
                const float *s = (const float *)src + bi * blk;
                float *t = (float *)dst + to * blk;
                for (int64_t j = j0; j < j1; j++) t[j] += s[j];
            }
        }
    }
    *out = r;
    return ML_OK;
}

/* Column sums of a contiguous [M, N] -> NEW [N] (bias gradient). */
static ml_err col_sum(ml_tensor **out, ml_tensor *g, int64_t M, int64_t N) {
    ml_dtype dt = (ml_dtype)g->dtype;
    ml_tensor *r;
    ml_err e = ml_tensor_empty(&r, dt, 1, &N);
    if (e) return e;
    const char *src = (const char *)ml_tensor_data(g);
    char *dst = (char *)ml_tensor_data(r);
#pragma omp parallel for schedule(static) if (M * N > 65536)
    for (int64_t j0 = 0; j0 < N; j0 += 64) {
        int64_t j1 = j0 + 64 < N ? j0 + 64 : N;
        double acc[64] = {0};
        for (int64_t i = 0; i < M; i++) {
            if (dt == ML_F64) {
                const double *row = (const double *)src + i * N;
                for (int64_t j = j0; j < j1; j++) acc[j - j0] += row[j];
            } else {
                const float *row = (const float *)src + i * N;
                for (int64_t j = j0; j < j1; j++) acc[j - j0] += row[j];
            }
        }
        for (int64_t j = j0; j < j1; j++) {
            if (dt == ML_F64) ((double *)dst)[j] = acc[j - j0];
            else ((float *)dst)[j] = (float)acc[j - j0];
        }
    }
    *out = r;
    return ML_OK;
}

static ml_err check_pair(const char *op, ml_tensor *a, ml_tensor *b) {
    ml_tensor *ts[2] = {a, b};
    static const char *const names[2] = {"input", "other"};
    ml_err e = mld_check_float_on(op, 2, ts, names, true);
    if (e) return e;
    if (a->layout && (e = ml_tensor_plain(a))) return e;
    if (b->layout && (e = ml_tensor_plain(b))) return e;
    return ML_OK;
}

/* ------------------------------------------------------------ matmul */
typedef struct {
    int a_slot, b_slot;
} mm_params;

static ml_err mm_forward(const char *op, ml_tensor **out, ml_tensor *a, ml_tensor *b) {
    *out = NULL;
    ml_tensor *a2 = promote(a, true), *b2 = promote(b, false), *c = NULL;
    ml_err e = ML_OK;
    if (!a2 || !b2) { e = ML_ERR_OOM; goto done; }
    if (a2->shape[a2->ndim - 1] != b2->shape[b2->ndim - 2]) {
        e = ml_seterr(ML_ERR_SHAPE, "%s: shapes %s and %s cannot be multiplied (%lld vs %lld)", op,
                      ml_shape_str(a->ndim, a->shape), ml_shape_str(b->ndim, b->shape),
                      (long long)a2->shape[a2->ndim - 1], (long long)b2->shape[b2->ndim - 2]);
        goto done;
    }
    {
        int nb, ba = a2->ndim - 2, bb = b2->ndim - 2;
        int64_t bs[ML_MAX_DIMS];
        nb = ba > bb ? ba : bb;
        for (int i = 0; i < nb; i++) {
            int ia = i - (nb - ba), ib = i - (nb - bb);
            int64_t da = ia >= 0 ? a2->shape[ia] : 1, db = ib >= 0 ? b2->shape[ib] : 1;
            if (da != db && da != 1 && db != 1) {
                e = ml_seterr(ML_ERR_SHAPE, "%s: batch dimensions of %s and %s cannot be broadcast (%lld vs %lld)", op,
                              ml_shape_str(a->ndim, a->shape), ml_shape_str(b->ndim, b->shape), (long long)da,
                              (long long)db);
                goto done;
            }
            bs[i] = da == 1 ? db : da;
        }
        (void)bs;
        if (nb + 2 > ML_MAX_DIMS) { e = ml_seterr(ML_ERR_DIM, "%s: result rank too large", op); goto done; }
    }
    if ((e = mm_run(&c, a2, b2, NULL))) goto done;
    /* drop the promoted dims */
    if (a->ndim == 1 || b->ndim == 1) {
        int n = c->ndim;
        int64_t sh[ML_MAX_DIMS], k = 0;
        for (int i = 0; i < n; i++) {
            if (a->ndim == 1 && i == n - 2) continue;
            if (b->ndim == 1 && i == n - 1) continue;
            sh[k++] = c->shape[i];
        }
        c->ndim = (int8_t)k;
        memcpy(c->shape, sh, sizeof(int64_t) * (size_t)k);
        ml_contiguous_strides((int)k, c->shape, c->stride);
    }
done:
    ml_tensor_release(a2);
    ml_tensor_release(b2);
    if (!e) *out = c;
    return e;
}

static ml_err bw_matmul(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    mm_params *p = (mm_params *)n->params;
    ml_tensor *a = p->a_slot >= 0 ? ml_node_saved(n, p->a_slot) : NULL;
    ml_tensor *b = p->b_slot >= 0 ? ml_node_saved(n, p->b_slot) : NULL;
    if ((p->a_slot >= 0 && !a) || (p->b_slot >= 0 && !b)) return ML_ERR_GRAD;
    ml_tensor *g = NULL, *g2 = NULL, *a2 = NULL, *b2 = NULL, *t = NULL, *full = NULL, *red = NULL;
    ml_err e = mld_grad_in(&g, gout[0], (ml_dtype)n->out_dtype[0]);
    if (e) return e;
    int nda = n->in_ndim[0], ndb = n->in_ndim[1];
    /* gradient as [bshape.., M, N] */
    {
        int64_t sh[ML_MAX_DIMS + 2];
        int k = 0;
        for (int i = 0; i < g->ndim; i++) {
            if (ndb == 1 && i == g->ndim - 1 && nda != 1) { sh[k++] = g->shape[i]; sh[k++] = 1; continue; }
            sh[k++] = g->shape[i];
        }
        if (nda == 1 && ndb == 1) { sh[0] = 1; sh[1] = 1; k = 2; }
        else if (nda == 1) {
            /* insert M = 1 before the last dim */
            int64_t last = sh[k - 1];
            sh[k - 1] = 1;
            sh[k++] = last;
        }
        g2 = reshape_view(g, k, sh);
        if (!g2) { e = ML_ERR_OOM; goto done; }
    }
    if (n->needs[0]) {
        b2 = promote(b, false);
        if (!b2 || !(t = mt_view(b2))) { e = ML_ERR_OOM; goto done; }
        if ((e = mm_run(&full, g2, t, NULL))) goto done;
        int64_t tsh[ML_MAX_DIMS];
        int tnd;
        if (nda == 1) { tnd = 2; tsh[0] = 1; tsh[1] = n->in_shape[0][0]; }
        else { tnd = nda; memcpy(tsh, n->in_shape[0], sizeof(int64_t) * (size_t)nda); }
        if ((e = sum_batch(&red, full, tnd, tsh))) goto done;
        if (!(gin[0] = reshape_view(red, nda, n->in_shape[0]))) { e = ML_ERR_OOM; goto done; }
        ml_tensor_release(t); ml_tensor_release(full); ml_tensor_release(red);
        t = full = red = NULL;
    }
    if (n->needs[1]) {
        a2 = promote(a, true);
        if (!a2 || !(t = mt_view(a2))) { e = ML_ERR_OOM; goto done; }
        /* a broadcast-free and b un-batched: gb = A'^T @ G' with A' = a as [B*M, K] */
        int64_t rows, rs;
        bool flat = ndb <= 2 && a2->ndim > 2 && collapse_leading(a2, &rows, &rs) && ml_tensor_is_contiguous(g2);
        if (flat) {
            int64_t M = a2->shape[a2->ndim - 2], K = a2->shape[a2->ndim - 1], N = g2->shape[g2->ndim - 1];
            (void)M;
            int64_t ash[2] = {K, rows}, ast[2] = {a2->stride[a2->ndim - 1], rs};
            int64_t gsh[2] = {rows, N};
            ml_tensor *at = ml_tensor_header(a2->storage, (ml_dtype)a2->dtype, 2, ash, ast, a2->offset);
            ml_tensor *gv = at ? reshape_view(g2, 2, gsh) : NULL;
            if (!at || !gv) { ml_tensor_release(at); e = ML_ERR_OOM; goto done; }
            e = mm_run(&red, at, gv, NULL);
            ml_tensor_release(at);
            ml_tensor_release(gv);
            if (e) goto done;
        } else {
            if ((e = mm_run(&full, t, g2, NULL))) goto done;
            int64_t tsh[ML_MAX_DIMS];
            int tnd;
            if (ndb == 1) { tnd = 2; tsh[0] = n->in_shape[1][0]; tsh[1] = 1; }
            else { tnd = ndb; memcpy(tsh, n->in_shape[1], sizeof(int64_t) * (size_t)ndb); }
            if ((e = sum_batch(&red, full, tnd, tsh))) goto done;
        }
        if (!(gin[1] = reshape_view(red, ndb, n->in_shape[1]))) { e = ML_ERR_OOM; goto done; }
    }
done:
    ml_tensor_release(g);
    ml_tensor_release(g2);
    ml_tensor_release(a2);
    ml_tensor_release(b2);
    ml_tensor_release(t);
    ml_tensor_release(full);
    ml_tensor_release(red);
    return e;
}

static ml_err record_mm(const char *name, ml_tensor *a, ml_tensor *b, ml_tensor *c) {
    ml_tensor *ins[2] = {a, b};
    ml_node *node;
    ml_err e = ml_record(name, bw_matmul, 2, ins, c, &node);
    if (e || !node) return e;
    mm_params p = {-1, -1};
    if (node->needs[1] && (p.a_slot = ml_node_save(node, a)) < 0) return ML_ERR_INTERNAL;
    if (node->needs[0] && (p.b_slot = ml_node_save(node, b)) < 0) return ML_ERR_INTERNAL;
    memcpy(node->params, &p, sizeof p);
    return ML_OK;
}

ml_err ml_matmul(ml_tensor **out, ml_tensor *a, ml_tensor *b) {
    *out = NULL;
    const char *op = "matmul";
    ml_err e = check_pair(op, a, b);
    if (e) return e;
    if (a->ndim < 1 || b->ndim < 1)
        return ml_seterr(ML_ERR_SHAPE, "%s: both arguments need at least 1 dimension, got %s and %s", op,
                         ml_shape_str(a->ndim, a->shape), ml_shape_str(b->ndim, b->shape));
    ml_tensor *c;
    if ((e = mm_forward(op, &c, a, b))) return e;
    if ((e = record_mm(op, a, b, c))) { ml_tensor_release(c); return e; }
    *out = c;
    return ML_OK;
}

ml_err ml_bmm(ml_tensor **out, ml_tensor *a, ml_tensor *b) {
    *out = NULL;
    const char *op = "bmm";
    ml_err e = check_pair(op, a, b);
    if (e) return e;
    if (a->ndim != 3 || b->ndim != 3)
        return ml_seterr(ML_ERR_SHAPE, "%s: expected 3-D tensors [B, n, k] and [B, k, m], got %s and %s", op,
                         ml_shape_str(a->ndim, a->shape), ml_shape_str(b->ndim, b->shape));
    if (a->shape[0] != b->shape[0] || a->shape[2] != b->shape[1])
        return ml_seterr(ML_ERR_SHAPE, "%s: shapes %s and %s do not fit [B, n, k] x [B, k, m]", op,
                         ml_shape_str(a->ndim, a->shape), ml_shape_str(b->ndim, b->shape));
    ml_tensor *c;
    if ((e = mm_forward(op, &c, a, b))) return e;
    if ((e = record_mm(op, a, b, c))) { ml_tensor_release(c); return e; }
    *out = c;
    return ML_OK;
}

/* ------------------------------------------------------------ linear */
typedef struct {
    int x_slot, w_slot;
} lin_params;

/* x as an untracked [M, in] view (or a dense copy when the leading dims do not merge). */
static ml_err linear_rows(ml_tensor **out, ml_tensor *x) {
    int64_t in = x->shape[x->ndim - 1], rows, rs;
    if (x->ndim == 1) {
        int64_t sh[2] = {1, in}, st[2] = {in * x->stride[0], x->stride[0]};
        *out = ml_tensor_header(x->storage, (ml_dtype)x->dtype, 2, sh, st, x->offset);
        return *out ? ML_OK : ML_ERR_OOM;
    }
    if (collapse_leading(x, &rows, &rs)) {
        int64_t sh[2] = {rows, in}, st[2] = {rs, x->stride[x->ndim - 1]};
        *out = ml_tensor_header(x->storage, (ml_dtype)x->dtype, 2, sh, st, x->offset);
        return *out ? ML_OK : ML_ERR_OOM;
    }
    ml_tensor *c;
    ml_err e = mld_contig(&c, x);
    if (e) return e;
    int64_t sh[2] = {ml_tensor_numel(c) / (in ? in : 1), in};
    if (in == 0) {
        sh[0] = 1;
        for (int i = 0; i < x->ndim - 1; i++) sh[0] *= x->shape[i];
    }
    *out = reshape_view(c, 2, sh);
    ml_tensor_release(c);
    return *out ? ML_OK : ML_ERR_OOM;
}

static ml_err bw_linear(ml_node *n, ml_tensor **gout, ml_tensor **gin) {
    lin_params *p = (lin_params *)n->params;
    ml_tensor *x = p->x_slot >= 0 ? ml_node_saved(n, p->x_slot) : NULL;
    ml_tensor *w = p->w_slot >= 0 ? ml_node_saved(n, p->w_slot) : NULL;
    if ((p->x_slot >= 0 && !x) || (p->w_slot >= 0 && !w)) return ML_ERR_GRAD;
    ml_tensor *g = NULL, *g2 = NULL, *x2 = NULL, *t = NULL, *r = NULL;
    ml_err e = mld_grad_in(&g, gout[0], (ml_dtype)n->out_dtype[0]);
    if (e) return e;
    int64_t outf = n->in_shape[1][0], inf = n->in_shape[1][1], M = outf ? ml_tensor_numel(g) / outf : 0;
    if (!outf) {
        M = 1;
        for (int i = 0; i < n->in_ndim[0] - 1; i++) M *= n->in_shape[0][i];
    }
    int64_t gsh[2] = {M, outf};
    if (!(g2 = reshape_view(g, 2, gsh))) { e = ML_ERR_OOM; goto done; }
    if (n->needs[0]) {
        if ((e = mm_run(&r, g2, w, NULL))) goto done; /* [M, in] */
        if (!(gin[0] = reshape_view(r, n->in_ndim[0], n->in_shape[0]))) { e = ML_ERR_OOM; goto done; }
        ml_tensor_release(r);
        r = NULL;
    }
    if (n->needs[1]) {
        if ((e = linear_rows(&x2, x))) goto done;
        if (!(t = mt_view(g2))) { e = ML_ERR_OOM; goto done; }
        if ((e = mm_run(&gin[1], t, x2, NULL))) goto done; /* [out, in] */
        (void)inf;
    }
    if (n->nin > 2 && n->needs[2]) {
        if ((e = col_sum(&gin[2], g2, M, outf))) goto done;
    }
done:
    ml_tensor_release(g);
    ml_tensor_release(g2);
    ml_tensor_release(x2);
    ml_tensor_release(t);
    ml_tensor_release(r);
    return e;
}

ml_err ml_linear(ml_tensor **out, ml_tensor *x, ml_tensor *w, ml_tensor *b) {
    *out = NULL;
    const char *op = "linear";
    ml_tensor *ts[3] = {x, w, b};
    static const char *const names[3] = {"input", "weight", "bias"};
    ml_err e = mld_check_float_on(op, 3, ts, names, true);
    if (e) return e;
    if (ml_tensor_is_cuda(x)) { /* x @ w^T (+ b) from recorded ops: cuBLAS underneath, autograd for the backward */
        if (x->ndim < 1 || w->ndim != 2 || x->shape[x->ndim - 1] != w->shape[1])
            return ml_seterr(ML_ERR_SHAPE, "%s: input %s does not fit weight %s", op, ml_shape_str(x->ndim, x->shape),
                             ml_shape_str(w->ndim, w->shape));
        ml_tensor *wt = NULL, *y = NULL;
        if ((e = ml_transpose(&wt, w, 0, 1)) || (e = ml_matmul(&y, x, wt))) {
            ml_tensor_release(wt);
            return e;
        }
        ml_tensor_release(wt);
        if (b) {
            e = ml_binary(out, ML_ADD, y, b);
            ml_tensor_release(y);
            return e;
        }
        *out = y;
        return ML_OK;
    }
    for (int i = 0; i < 3; i++)
        if (ts[i] && ts[i]->layout && (e = ml_tensor_plain(ts[i]))) return e;
    if (x->ndim < 1 || w->ndim != 2 || x->shape[x->ndim - 1] != w->shape[1])
        return ml_seterr(ML_ERR_SHAPE, "%s: input %s does not fit weight %s (expected input [..., %lld] and weight "
                                       "[out_features, in_features])",
                         op, ml_shape_str(x->ndim, x->shape), ml_shape_str(w->ndim, w->shape),
                         (long long)(w->ndim == 2 ? w->shape[1] : -1));
    if (b && !(b->ndim == 1 && b->shape[0] == w->shape[0]))
        return ml_seterr(ML_ERR_SHAPE, "%s: bias %s does not match weight %s (expected [%lld])", op,
                         ml_shape_str(b->ndim, b->shape), ml_shape_str(w->ndim, w->shape), (long long)w->shape[0]);
    if (x->ndim > ML_MAX_DIMS) return ml_seterr(ML_ERR_DIM, "%s: input rank too large", op);
    ml_tensor *x2 = NULL, *wt = NULL, *bc = NULL, *c = NULL;
    if ((e = linear_rows(&x2, x))) goto done;
    if (!(wt = mt_view(w))) { e = ML_ERR_OOM; goto done; }
    if (b && (e = mld_contig(&bc, b))) goto done;
    if ((e = mm_run(&c, x2, wt, bc))) goto done;
    {
        int64_t sh[ML_MAX_DIMS];
        memcpy(sh, x->shape, sizeof(int64_t) * (size_t)x->ndim);
        sh[x->ndim - 1] = w->shape[0];
        c->ndim = x->ndim;
        memcpy(c->shape, sh, sizeof(int64_t) * (size_t)x->ndim);
        ml_contiguous_strides(c->ndim, c->shape, c->stride);
    }
    {
        ml_node *node;
        int nin = b ? 3 : 2;
        if ((e = ml_record(op, bw_linear, nin, ts, c, &node))) goto done;
        if (node) {
            lin_params p = {-1, -1};
            if (node->needs[1] && (p.x_slot = ml_node_save(node, x)) < 0) { e = ML_ERR_INTERNAL; goto done; }
            if (node->needs[0] && (p.w_slot = ml_node_save(node, w)) < 0) { e = ML_ERR_INTERNAL; goto done; }
            memcpy(node->params, &p, sizeof p);
        }
    }
done:
    ml_tensor_release(x2);
    ml_tensor_release(wt);
    ml_tensor_release(bc);
    if (e) { ml_tensor_release(c); return e; }
    *out = c;
    return ML_OK;
}
