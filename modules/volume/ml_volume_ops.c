/* Volume ops: shared helpers (memory order, strided gather copy), reorientation, crop / pad / flip /
 * mirror / centre, intensity normalisation. Resampling is in ml_volume_resample.c, the label tools
 * in ml_volume_label.c. See ml_volume_ops.h for the contract of each op. */
#include "volume/ml_volume_ops.h"
#include "tensor/ml_iter.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ==================================================================== helpers */
void ml_vol_mem_order(const ml_tensor *t, int ord[ML_MAX_DIMS]) {
    int n = t->ndim;
    for (int i = 0; i < n; i++) ord[i] = i;
    /* insertion sort: larger |stride| first; size-1 axes count as stride +inf?  No: they do not
     * matter for the layout, keep them in axis order by giving them the key of their neighbour. */
    int64_t key[ML_MAX_DIMS];
    for (int i = 0; i < n; i++) key[i] = t->shape[i] == 1 ? -1 : llabs(t->stride[i]);
    for (int i = 0; i < n; i++) { /* size-1 axes: just slower than the next real axis after them */
        if (key[i] >= 0) continue;
        int64_t k = 0;
        for (int j = i + 1; j < n; j++)
            if (key[j] >= 0) { k = key[j]; break; }
        key[i] = k;
    }
    for (int i = 1; i < n; i++) {
        int a = ord[i], j = i;
        while (j > 0 && key[ord[j - 1]] < key[a]) {
            ord[j] = ord[j - 1];
            j--;
        }
        ord[j] = a;
    }
}

ml_err ml_vol_empty_ordered(ml_tensor **out, ml_dtype dt, int ndim, const int64_t *shape, const int *ord) {
    *out = NULL;
    int64_t phys[ML_MAX_DIMS] = {0};
    int perm[ML_MAX_DIMS] = {0};
    for (int p = 0; p < ndim; p++) {
        phys[p] = shape[ord[p]];
        perm[ord[p]] = p;
    }
    ml_tensor *base = NULL;
    ml_err e = ml_tensor_empty(&base, dt, ndim, phys);
    if (e) return e;
    bool identity = true;
    for (int i = 0; i < ndim; i++) identity = identity && perm[i] == i;
    if (identity) {
        *out = base;
        return ML_OK;
    }
    bool prev = ml_set_grad_enabled(false);
    e = ml_permute(out, base, perm);
    ml_set_grad_enabled(prev);
    ml_tensor_release(base);
    return e;
}

/* a CPU tensor in plain layout; op names the caller */
ml_err ml_vol_check_data(const char *op, ml_tensor *t) {
    if (t->storage->device.type != ML_CPU)
        return ml_seterr(ML_ERR_DEVICE, "%s: the volume's data is on %s; volume ops run on the CPU", op,
                         ml_device_str(t->storage->device));
    return ml_tensor_plain(t);
}

int ml_vol_threads(int64_t work) {
    if (work < 65536) return 1;
    int nt = ml_num_threads();
    return nt < 1 ? 1 : nt;
}

/* dst[o] = src0[sum_a o[a] * sst[a]] for every index o of dst (any strides), es-byte elements */
void ml_vol_gather_copy(ml_tensor *dst, const char *src0, const int64_t *sst, size_t es) {
    int n = dst->ndim;
    int64_t total = ml_tensor_numel(dst);
    if (total == 0) return;
    int ord[ML_MAX_DIMS];
    ml_vol_mem_order(dst, ord);
    int in_ax = ord[n - 1];
    int64_t inner = dst->shape[in_ax], rows = total / inner;
    int64_t dsi = dst->stride[in_ax], ssi = sst[in_ax];
    char *d0 = (char *)ml_tensor_data(dst);
    int nt = ml_vol_threads(total);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t r = 0; r < rows; r++) {
        int64_t rem = r, doff = 0, soff = 0;
        for (int p = n - 2; p >= 0; p--) {
            int a = ord[p];
            int64_t ia = rem % dst->shape[a];
            rem /= dst->shape[a];
            doff += ia * dst->stride[a];
            soff += ia * sst[a];
        }
        char *d = d0 + doff * (int64_t)es;
        const char *s = src0 + soff * (int64_t)es;
        switch (es) {
        case 1:
            for (int64_t i = 0; i < inner; i++) ((uint8_t *)d)[i * dsi] = ((const uint8_t *)s)[i * ssi];
            break;
        case 2:
            for (int64_t i = 0; i < inner; i++) ((uint16_t *)d)[i * dsi] = ((const uint16_t *)s)[i * ssi];
            break;
        case 4:
            if (dsi == 1 && ssi == 1) memcpy(d, s, (size_t)inner * 4);
            else
                for (int64_t i = 0; i < inner; i++) ((uint32_t *)d)[i * dsi] = ((const uint32_t *)s)[i * ssi];
            break;
        default:
            for (int64_t i = 0; i < inner; i++) ((uint64_t *)d)[i * dsi] = ((const uint64_t *)s)[i * ssi];
            break;
        }
    }
}

/* dst[o] = src[o] converted to dst's dtype, same shape, looping in dst's memory order */
#define CONV_ROW(TD, TS)                                                                                             \
    for (int64_t i = 0; i < inner; i++) ((TD *)d)[i * dsi] = (TD)((const TS *)s)[i * ssi]
void ml_vol_convert_copy(ml_tensor *dst, const ml_tensor *src) {
    ml_dtype dd = (ml_dtype)dst->dtype, sd = (ml_dtype)src->dtype;
    size_t des = ml_dtype_size(dd), ses = ml_dtype_size(sd);
    if (dd == sd) {
        ml_vol_gather_copy(dst, (const char *)src->storage->data + src->offset * (int64_t)ses, src->stride, ses);
        return;
    }
    int n = dst->ndim;
    int64_t total = ml_tensor_numel(dst);
    if (total == 0) return;
    int ord[ML_MAX_DIMS];
    ml_vol_mem_order(dst, ord);
    int in_ax = ord[n - 1];
    int64_t inner = dst->shape[in_ax], rows = total / inner;
    int64_t dsi = dst->stride[in_ax], ssi = src->stride[in_ax];
    char *d0 = (char *)dst->storage->data;
    const char *s0 = (const char *)src->storage->data;
    int nt = ml_vol_threads(total);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t r = 0; r < rows; r++) {
        int64_t rem = r, doff = dst->offset, soff = src->offset;
        for (int p = n - 2; p >= 0; p--) {
            int a = ord[p];
            int64_t ia = rem % dst->shape[a];
            rem /= dst->shape[a];
            doff += ia * dst->stride[a];
            soff += ia * src->stride[a];
        }
        char *d = d0 + doff * (int64_t)des;
        const char *s = s0 + soff * (int64_t)ses;
        if (dd == ML_F32 && sd == ML_F64) CONV_ROW(float, double);
        else if (dd == ML_F32 && sd == ML_I32) CONV_ROW(float, int32_t);
        else if (dd == ML_F32 && sd == ML_I64) CONV_ROW(float, int64_t);
        else if (dd == ML_F32 && (sd == ML_U8 || sd == ML_BOOL)) CONV_ROW(float, uint8_t);
        else if (dd == ML_F64 && sd == ML_F32) CONV_ROW(double, float);
        else if (dd == ML_F64 && sd == ML_I32) CONV_ROW(double, int32_t);
        else if (dd == ML_F64 && sd == ML_I64) CONV_ROW(double, int64_t);
        else if (dd == ML_F64 && (sd == ML_U8 || sd == ML_BOOL)) CONV_ROW(double, uint8_t);
        else
            for (int64_t i = 0; i < inner; i++)
                ml_store_elem(d0, dd, doff + i * dsi, ml_load_elem(s0, sd, soff + i * ssi));
    }
}
#undef CONV_ROW

/* a new tensor with t's values in dtype dt and t's memory order (t itself, retained, when it
 * already has that dtype) */
ml_err ml_vol_convert(ml_tensor **out, ml_tensor *t, ml_dtype dt) {
    *out = NULL;
    if ((ml_dtype)t->dtype == dt) {
        ml_tensor_retain(t);
        *out = t;
        return ML_OK;
    }
    ml_tensor *o;
    ml_err e = ml_vol_empty_like_order(&o, t, dt, t->shape, NULL);
    if (e) return e;
    ml_vol_convert_copy(o, t);
    *out = o;
    return ML_OK;
}

/* New tensor with v->data's memory order (axes permuted by perm: output axis j comes from input axis
 * perm[j]) and logical shape oshape. */
ml_err ml_vol_empty_like_order(ml_tensor **out, const ml_tensor *src, ml_dtype dt, const int64_t *oshape,
                               const int *perm) {
    int n = src->ndim, ord_in[ML_MAX_DIMS], rank[ML_MAX_DIMS], ord_out[ML_MAX_DIMS];
    ml_vol_mem_order(src, ord_in);
    for (int p = 0; p < n; p++) rank[ord_in[p]] = p;
    /* output axis j has the rank of input axis perm[j] */
    for (int j = 0; j < n; j++) ord_out[rank[perm ? perm[j] : j]] = j;
    return ml_vol_empty_ordered(out, dt, n, oshape, ord_out);
}

static const int k_ident_perm[ML_MAX_DIMS] = {0, 1, 2, 3, 4, 5, 6, 7};

/* out = data gathered by a signed per-axis map: output axis j reads input axis perm[j], reversed when
 * flip[j]; output index o_j reads input index lo[perm[j]] + o_j (or the reverse). Output shape
 * oshape. Output keeps the input's memory order. */
static ml_err remap_copy(ml_tensor **out, ml_tensor *t, const int *perm, const bool *flip, const int64_t *lo,
                         const int64_t *oshape) {
    *out = NULL;
    int n = t->ndim;
    ml_tensor *o = NULL;
    ml_err e = ml_vol_empty_like_order(&o, t, (ml_dtype)t->dtype, oshape, perm);
    if (e) return e;
    size_t es = ml_dtype_size((ml_dtype)t->dtype);
    int64_t base = t->offset, sst[ML_MAX_DIMS];
    for (int j = 0; j < n; j++) {
        int i = perm[j];
        int64_t start = lo ? lo[i] : 0;
        if (flip && flip[j]) {
            base += (start + oshape[j] - 1) * t->stride[i];
            sst[j] = -t->stride[i];
        } else {
            base += start * t->stride[i];
            sst[j] = t->stride[i];
        }
    }
    ml_vol_gather_copy(o, (const char *)t->storage->data + base * (int64_t)es, sst, es);
    *out = o;
    return ML_OK;
}

/* result volume from v's metadata, new data (reference stolen) and affine */
static ml_err finish(ml_volume **out, ml_volume *v, ml_tensor *data, const double affine[16]) {
    ml_err e = ml_volume_with_data(out, v, data, affine);
    ml_tensor_release(data);
    return e;
}

#define NOGRAD(call)                                                                                                 \
    do {                                                                                                             \
        bool prev_ = ml_set_grad_enabled(false);                                                                     \
        ml_err e_ = (call);                                                                                          \
        ml_set_grad_enabled(prev_);                                                                                  \
        return e_;                                                                                                   \
    } while (0)

/* ============================================================== reorientation */
/* 'R' -> axis 0 sign +1 ... ; returns -1 for an unknown letter */
static int parse_code(char c, int *sign) {
    switch (toupper((unsigned char)c)) {
    case 'R': *sign = 1; return 0;
    case 'L': *sign = -1; return 0;
    case 'A': *sign = 1; return 1;
    case 'P': *sign = -1; return 1;
    case 'S': *sign = 1; return 2;
    case 'I': *sign = -1; return 2;
    default: return -1;
    }
}

int ml_vol_parse_axcodes(const char *op, const char *codes, int w[3], int s[3]) {
    static const char *names[3] = {"R-L", "A-P", "S-I"};
    if (!codes || strlen(codes) != 3) {
        ml_seterr(ML_ERR_ARG, "%s: axis codes must be 3 letters such as \"RAS\" or \"LPS\", got \"%s\"", op,
                  codes ? codes : "(null)");
        return -1;
    }
    for (int j = 0; j < 3; j++) {
        w[j] = parse_code(codes[j], &s[j]);
        if (w[j] < 0) {
            ml_seterr(ML_ERR_ARG,
                      "%s: unknown axis code '%c' in \"%s\" (expected one letter of R/L, A/P and S/I per axis)", op,
                      codes[j], codes);
            return -1;
        }
        for (int k = 0; k < j; k++)
            if (w[k] == w[j]) {
                ml_seterr(ML_ERR_ARG, "%s: axis codes \"%s\" name the %s axis twice (each of R/L, A/P, S/I once)", op,
                          codes, names[w[j]]);
                return -1;
            }
    }
    return 0;
}

static ml_err reorient_impl(ml_volume **out, ml_volume *v, const char *codes) {
    const char *op = "reorient";
    int tw[3], ts[3], cw[3], cs[3];
    if (ml_vol_parse_axcodes(op, codes, tw, ts)) return ML_ERR_ARG;
    char cur[4];
    ml_affine_axcodes(v->affine, cur);
    for (int i = 0; i < 3; i++)
        if ((cw[i] = parse_code(cur[i], &cs[i])) < 0)
            return ml_seterr(ML_ERR_ARG, "%s: the volume's affine is degenerate (axis codes \"%s\")", op, cur);
    ml_err e = ml_vol_check_data(op, v->data);
    if (e) return e;
    ml_tensor *t = v->data;
    int n = t->ndim, perm[ML_MAX_DIMS];
    bool flip[ML_MAX_DIMS] = {0}, identity = true;
    int64_t oshape[ML_MAX_DIMS];
    double P[16] = {0};
    P[15] = 1;
    for (int j = 0; j < 3; j++) {
        int i = 0;
        while (cw[i] != tw[j]) i++;
        perm[j] = i;
        flip[j] = cs[i] != ts[j];
        oshape[j] = t->shape[i];
        P[i * 4 + j] = flip[j] ? -1 : 1;
        if (flip[j]) P[i * 4 + 3] = (double)(t->shape[i] - 1);
        identity = identity && i == j && !flip[j];
    }
    for (int j = 3; j < n; j++) {
        perm[j] = j;
        oshape[j] = t->shape[j];
    }
    double A[16];
    ml_affine_mul(A, v->affine, P);
    if (identity) return ml_volume_with_data(out, v, t, A);
    ml_tensor *o;
    if ((e = remap_copy(&o, t, perm, flip, NULL, oshape))) return e;
    return finish(out, v, o, A);
}

ml_err ml_volume_reorient(ml_volume **out, ml_volume *v, const char *codes) {
    *out = NULL;
    NOGRAD(reorient_impl(out, v, codes));
}

ml_err ml_volume_to_ras(ml_volume **out, ml_volume *v) { return ml_volume_reorient(out, v, "RAS"); }

/* ================================================================ crop / pad */
static ml_err crop_impl(ml_volume **out, ml_volume *v, const int64_t lo[3], const int64_t hi[3], const char *op) {
    ml_tensor *t = v->data;
    for (int a = 0; a < 3; a++)
        if (lo[a] < 0 || hi[a] > t->shape[a] || lo[a] >= hi[a])
            return ml_seterr(ML_ERR_ARG,
                             "%s: axis %d: range [%lld, %lld) is out of range for size %lld (need 0 <= lo < hi <= "
                             "size; indices are 0-based, hi exclusive)",
                             op, a, (long long)lo[a], (long long)hi[a], (long long)t->shape[a]);
    ml_err e = ml_vol_check_data(op, t);
    if (e) return e;
    int64_t oshape[ML_MAX_DIMS], l4[ML_MAX_DIMS] = {0};
    for (int j = 0; j < t->ndim; j++) {
        oshape[j] = j < 3 ? hi[j] - lo[j] : t->shape[j];
        l4[j] = j < 3 ? lo[j] : 0;
    }
    ml_tensor *o;
    if ((e = remap_copy(&o, t, k_ident_perm, NULL, l4, oshape))) return e;
    double T[16], A[16];
    ml_affine_identity(T);
    for (int a = 0; a < 3; a++) T[a * 4 + 3] = (double)lo[a];
    ml_affine_mul(A, v->affine, T);
    return finish(out, v, o, A);
}

ml_err ml_volume_crop(ml_volume **out, ml_volume *v, const int64_t lo[3], const int64_t hi[3]) {
    *out = NULL;
    NOGRAD(crop_impl(out, v, lo, hi, "crop"));
}

static ml_err pad_impl(ml_volume **out, ml_volume *v, const int64_t before[3], const int64_t after[3], double value) {
    const char *op = "pad";
    ml_tensor *t = v->data;
    for (int a = 0; a < 3; a++) {
        if (before[a] < 0 || after[a] < 0)
            return ml_seterr(ML_ERR_ARG, "%s: axis %d: padding must be >= 0 voxels, got before %lld, after %lld", op, a,
                             (long long)before[a], (long long)after[a]);
        if (before[a] > (int64_t)1 << 24 || after[a] > (int64_t)1 << 24)
            return ml_seterr(ML_ERR_ARG, "%s: axis %d: padding of %lld voxels is absurd", op, a,
                             (long long)(before[a] > after[a] ? before[a] : after[a]));
    }
    if (!isfinite(value) && ml_dtype_is_float((ml_dtype)t->dtype) == false)
        return ml_seterr(ML_ERR_ARG, "%s: value %g cannot be stored in dtype %s", op, value,
                         ml_dtype_name((ml_dtype)t->dtype));
    ml_err e = ml_vol_check_data(op, t);
    if (e) return e;
    int64_t oshape[ML_MAX_DIMS];
    for (int j = 0; j < t->ndim; j++) oshape[j] = j < 3 ? t->shape[j] + before[j] + after[j] : t->shape[j];
    ml_tensor *o = NULL, *box = NULL;
    if ((e = ml_vol_empty_like_order(&o, t, (ml_dtype)t->dtype, oshape, NULL))) return e;
    if ((e = ml_fill_(o, value))) goto fail;
    /* the interior as a view of o */
    int64_t off = o->offset;
    for (int a = 0; a < 3; a++) off += before[a] * o->stride[a];
    box = ml_tensor_header(o->storage, (ml_dtype)o->dtype, t->ndim, t->shape, o->stride, off);
    if (!box) {
        e = ML_ERR_OOM;
        goto fail;
    }
    size_t es = ml_dtype_size((ml_dtype)t->dtype);
    ml_vol_gather_copy(box, (const char *)t->storage->data + t->offset * (int64_t)es, t->stride, es);
    ml_tensor_release(box);
    double T[16], A[16];
    ml_affine_identity(T);
    for (int a = 0; a < 3; a++) T[a * 4 + 3] = -(double)before[a];
    ml_affine_mul(A, v->affine, T);
    return finish(out, v, o, A);
fail:
    ml_tensor_release(o);
    return e;
}

ml_err ml_volume_pad(ml_volume **out, ml_volume *v, const int64_t before[3], const int64_t after[3], double value) {
    *out = NULL;
    NOGRAD(pad_impl(out, v, before, after, value));
}


static void affine_str(char *buf, size_t n, const double *A) {
    snprintf(buf, n, "[[%.4g %.4g %.4g %.4g] [%.4g %.4g %.4g %.4g] [%.4g %.4g %.4g %.4g]]", A[0], A[1], A[2], A[3],
             A[4], A[5], A[6], A[7], A[8], A[9], A[10], A[11]);
}

ml_err ml_vol_check_same_grid(const char *op, const char *what, const ml_volume *v, const ml_volume *other) {
    for (int i = 0; i < 3; i++)
        if (v->data->shape[i] != other->data->shape[i])
            return ml_seterr(ML_ERR_SHAPE, "%s: %s has shape %s, the volume %s (it must be on the same grid)", op,
                             what, ml_shape_str(3, other->data->shape), ml_shape_str(3, v->data->shape));
    for (int i = 0; i < 12; i++)
        if (fabs(v->affine[i] - other->affine[i]) > 1e-4) {
            char a[256], b[256];
            affine_str(a, sizeof a, other->affine);
            affine_str(b, sizeof b, v->affine);
            return ml_seterr(ML_ERR_ARG, "%s: %s has a different grid (affine %s vs the volume's %s; resample it first)",
                             op, what, a, b);
        }
    return ML_OK;
}

static ml_err crop_to_bbox_impl(ml_volume **out, ml_volume *v, ml_volume *labels, const double padding_mm[3],
                                bool use_label, int64_t label) {
    const char *op = "crop_to_bbox";
    if (labels->data->ndim != 3)
        return ml_seterr(ML_ERR_SHAPE, "%s: the labels volume must be 3-D, got shape %s", op,
                         ml_shape_str(labels->data->ndim, labels->data->shape));
    ml_err e = ml_vol_check_same_grid(op, "the labels volume", v, labels);
    if (e) return e;
    for (int a = 0; a < 3; a++)
        if (!(padding_mm[a] >= 0) || !isfinite(padding_mm[a]))
            return ml_seterr(ML_ERR_ARG, "%s: padding_mm[%d] must be a finite number >= 0, got %g", op, a,
                             padding_mm[a]);
    int64_t lo[3], hi[3];
    bool found;
    e = ml_volume_bbox(labels, use_label, label, lo, hi, &found);
    if (e) return e;
    if (!found) {
        if (use_label) return ml_seterr(ML_ERR_ARG, "%s: the labels volume has no voxel with label %lld", op, (long long)label);
        return ml_seterr(ML_ERR_ARG, "%s: the labels volume has no non-zero voxel", op);
    }
    double sp[3];
    ml_volume_spacing(v, sp);
    for (int a = 0; a < 3; a++) {
        int64_t p = sp[a] > 0 ? (int64_t)ceil(padding_mm[a] / sp[a] - 1e-9) : 0;
        if (p < 0) p = 0;
        lo[a] = lo[a] - p < 0 ? 0 : lo[a] - p;
        hi[a] = hi[a] + p > v->data->shape[a] ? v->data->shape[a] : hi[a] + p;
    }
    return crop_impl(out, v, lo, hi, op);
}

ml_err ml_volume_crop_to_bbox(ml_volume **out, ml_volume *v, ml_volume *labels, const double padding_mm[3],
                              bool use_label, int64_t label) {
    *out = NULL;
    NOGRAD(crop_to_bbox_impl(out, v, labels, padding_mm, use_label, label));
}

/* ================================================================ flip / centre */
static ml_err flip_data(ml_tensor **o, ml_tensor *t, int axis) {
    bool flip[ML_MAX_DIMS] = {0};
    flip[axis] = true;
    return remap_copy(o, t, k_ident_perm, flip, NULL, t->shape);
}

static ml_err flip_impl(ml_volume **out, ml_volume *v, int axis, bool keep_affine, const char *op) {
    ml_tensor *t = v->data;
    ml_err e = ml_vol_check_data(op, t);
    if (e) return e;
    ml_tensor *o;
    if ((e = flip_data(&o, t, axis))) return e;
    double A[16];
    memcpy(A, v->affine, sizeof A);
    if (!keep_affine) {
        double F[16];
        ml_affine_identity(F);
        F[axis * 4 + axis] = -1;
        F[axis * 4 + 3] = (double)(t->shape[axis] - 1);
        ml_affine_mul(A, v->affine, F);
    }
    return finish(out, v, o, A);
}

ml_err ml_volume_flip(ml_volume **out, ml_volume *v, int axis) {
    *out = NULL;
    if (axis < -3 || axis > 2)
        return ml_seterr(ML_ERR_DIM, "flip: axis %d is out of range (0, 1, 2 or -3..-1 for a volume)", axis);
    if (axis < 0) axis += 3;
    NOGRAD(flip_impl(out, v, axis, false, "flip"));
}

ml_err ml_volume_mirror_lr(ml_volume **out, ml_volume *v) {
    *out = NULL;
    char ax[4];
    ml_affine_axcodes(v->affine, ax);
    int axis = -1;
    for (int i = 0; i < 3; i++)
        if (ax[i] == 'R' || ax[i] == 'L') axis = i;
    if (axis < 0) return ml_seterr(ML_ERR_ARG, "mirror_lr: the volume's affine is degenerate (axis codes \"%s\")", ax);
    NOGRAD(flip_impl(out, v, axis, true, "mirror_lr"));
}

ml_err ml_volume_center(ml_volume **out, ml_volume *v) {
    *out = NULL;
    double c[3], w[3], A[16];
    for (int a = 0; a < 3; a++) c[a] = 0.5 * (double)(v->data->shape[a] - 1);
    ml_affine_apply(v->affine, c, w);
    memcpy(A, v->affine, sizeof A);
    for (int r = 0; r < 3; r++) A[r * 4 + 3] -= w[r];
    return ml_volume_with_data(out, v, v->data, A);
}

/* ================================================================= intensity */
/* The voxels of t as a dense float array in t's memory order (*buf: the tensor owning it, f32),
 * plus the mask in the same order (u8, NULL when no mask). */
static ml_err dense_f32(const char *op, ml_tensor *t, ml_tensor *mask, ml_tensor **buf, ml_tensor **mbuf, int ord[]) {
    *buf = *mbuf = NULL;
    ml_err e = ml_vol_check_data(op, t);
    if (e) return e;
    int n = t->ndim;
    ml_vol_mem_order(t, ord);
    if (mask) {
        if ((e = ml_vol_check_data(op, mask))) return e;
        if (mask->ndim != 3 || mask->shape[0] != t->shape[0] || mask->shape[1] != t->shape[1] ||
            mask->shape[2] != t->shape[2])
            return ml_seterr(ML_ERR_SHAPE, "%s: mask shape %s does not match the volume's spatial shape %s", op,
                             ml_shape_str(mask->ndim, mask->shape), ml_shape_str(3, t->shape));
    }
    /* f32 copy in memory order */
    ml_tensor *f = NULL, *d = NULL;
    if ((e = ml_vol_empty_ordered(&d, ML_F32, n, t->shape, ord))) return e;
    ml_vol_convert_copy(d, t);
    f = d;
    if (mask) {
        ml_tensor *m = NULL;
        if ((e = ml_vol_empty_ordered(&m, ML_U8, n, t->shape, ord))) goto fail;
        /* m[x,y,z,(t)] = mask[x,y,z] != 0 */
        ml_tensor *mb = NULL;
        if ((e = ml_to_dtype(&mb, mask, ML_BOOL))) {
            ml_tensor_release(m);
            goto fail;
        }
        int64_t st[ML_MAX_DIMS] = {0};
        for (int a = 0; a < 3; a++) st[a] = mb->stride[a];
        ml_vol_gather_copy(m, (const char *)ml_tensor_data(mb), st, 1);
        ml_tensor_release(mb);
        *mbuf = m;
    }
    *buf = f;
    return ML_OK;
fail:
    ml_tensor_release(f);
    return e;
}

/* float pointer to the dense memory of a tensor made by ml_vol_empty_ordered */
static float *dense_ptr(ml_tensor *t) {
    /* the base is contiguous in memory order: its lowest address is the data pointer itself */
    return (float *)ml_tensor_data(t);
}

typedef struct {
    double sum, sumsq, mn, mx;
    int64_t n;
} moments;

static moments masked_moments(const float *x, const uint8_t *m, int64_t n, double mean_for_sq) {
    moments r = {0, 0, INFINITY, -INFINITY, 0};
    double s = 0, ss = 0, mn = INFINITY, mx = -INFINITY;
    int64_t cnt = 0;
    int nt = ml_vol_threads(n);
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : s, ss, cnt) reduction(min : mn) \
    reduction(max : mx) if (nt > 1)
    for (int64_t i = 0; i < n; i++) {
        if (m && !m[i]) continue;
        double v = x[i], d = v - mean_for_sq;
        s += v;
        ss += d * d;
        cnt++;
        if (v < mn) mn = v;
        if (v > mx) mx = v;
    }
    r.sum = s;
    r.sumsq = ss;
    r.mn = mn;
    r.mx = mx;
    r.n = cnt;
    return r;
}

/* x[i] = clamp((x[i] - a) * s, lo, hi) in place */
static void affine_clamp(float *x, int64_t n, double a, double s, double lo, double hi) {
    int nt = ml_vol_threads(n);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t i = 0; i < n; i++) {
        double v = ((double)x[i] - a) * s;
        if (v < lo) v = lo;
        if (v > hi) v = hi;
        x[i] = (float)v;
    }
}

static ml_err result_f32(ml_volume **out, ml_volume *v, ml_tensor *f) {
    ml_volume *r;
    ml_err e = ml_volume_with_data(&r, v, f, NULL);
    ml_tensor_release(f);
    if (e) return e;
    r->meta.is_label = false;
    *out = r;
    return ML_OK;
}

static ml_err window_impl(ml_volume **out, ml_volume *v, double center, double width) {
    const char *op = "window";
    if (!isfinite(center) || !isfinite(width) || width <= 0)
        return ml_seterr(ML_ERR_ARG, "%s: width must be a finite number > 0 and center finite, got center %g, width %g",
                         op, center, width);
    ml_tensor *f, *m;
    int ord[ML_MAX_DIMS];
    ml_err e = dense_f32(op, v->data, NULL, &f, &m, ord);
    if (e) return e;
    double amin = center - width / 2, amax = center + width / 2;
    affine_clamp(dense_ptr(f), ml_tensor_numel(f), amin, 1.0 / (amax - amin), 0.0, 1.0);
    return result_f32(out, v, f);
}

ml_err ml_volume_window(ml_volume **out, ml_volume *v, double center, double width) {
    *out = NULL;
    NOGRAD(window_impl(out, v, center, width));
}

static ml_err minmax_impl(ml_volume **out, ml_volume *v) {
    ml_tensor *f, *m;
    int ord[ML_MAX_DIMS];
    ml_err e = dense_f32("minmax", v->data, NULL, &f, &m, ord);
    if (e) return e;
    int64_t n = ml_tensor_numel(f);
    float *x = dense_ptr(f);
    moments mo = masked_moments(x, NULL, n, 0);
    if (n == 0 || !(mo.mx > mo.mn)) affine_clamp(x, n, 0, 0, 0, 0); /* constant -> zeros */
    else affine_clamp(x, n, mo.mn, 1.0 / (mo.mx - mo.mn), -INFINITY, INFINITY);
    return result_f32(out, v, f);
}

ml_err ml_volume_minmax(ml_volume **out, ml_volume *v) {
    *out = NULL;
    NOGRAD(minmax_impl(out, v));
}

static ml_err normalize_impl(ml_volume **out, ml_volume *v, bool clip, double lower, double upper, ml_tensor *mask,
                             const char *op) {
    if (clip && (!(lower >= 0) || !(upper <= 100) || !(lower <= upper)))
        return ml_seterr(ML_ERR_ARG, "%s: percentiles must satisfy 0 <= lower <= upper <= 100, got lower %g, upper %g",
                         op, lower, upper);
    ml_tensor *f, *m;
    int ord[ML_MAX_DIMS];
    ml_err e = dense_f32(op, v->data, mask, &f, &m, ord);
    if (e) return e;
    int64_t n = ml_tensor_numel(f);
    float *x = dense_ptr(f);
    const uint8_t *mk = m ? (const uint8_t *)ml_tensor_data(m) : NULL;
    moments mo = masked_moments(x, mk, n, 0);
    if (mo.n == 0) {
        ml_tensor_release(f);
        ml_tensor_release(m);
        return ml_seterr(ML_ERR_ARG, "%s: %s", op, mask ? "the mask selects no voxel" : "the volume is empty");
    }
    if (clip) {
        float *sel = malloc((size_t)mo.n * sizeof(float));
        if (!sel) {
            ml_tensor_release(f);
            ml_tensor_release(m);
            return ml_seterr(ML_ERR_OOM, "%s: out of memory (%lld voxels)", op, (long long)mo.n);
        }
        if (mk) {
            int64_t j = 0;
            for (int64_t i = 0; i < n; i++)
                if (mk[i]) sel[j++] = x[i];
        } else
            memcpy(sel, x, (size_t)n * sizeof(float));
        double plo = ml_select_quantile_f32(sel, mo.n, (lower) / 100.0);
        double phi = ml_select_quantile_f32(sel, mo.n, (upper) / 100.0);
        free(sel);
        affine_clamp(x, n, 0, 1, plo, phi);
        mo = masked_moments(x, mk, n, 0);
    }
    double mean = mo.sum / (double)mo.n;
    moments m2 = masked_moments(x, mk, n, mean); /* two-pass variance */
    double sd = sqrt(m2.sumsq / (double)mo.n);
    if (sd < 1e-8) sd = 1e-8;
    affine_clamp(x, n, mean, 1.0 / sd, -INFINITY, INFINITY);
    ml_tensor_release(m);
    return result_f32(out, v, f);
}

ml_err ml_volume_normalize_percentile(ml_volume **out, ml_volume *v, double lower, double upper, ml_tensor *mask) {
    *out = NULL;
    NOGRAD(normalize_impl(out, v, true, lower, upper, mask, "normalize_percentile"));
}

ml_err ml_volume_zscore(ml_volume **out, ml_volume *v, ml_tensor *mask) {
    *out = NULL;
    NOGRAD(normalize_impl(out, v, false, 0, 100, mask, "zscore"));
}
