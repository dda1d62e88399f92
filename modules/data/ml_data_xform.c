/* medlua data pipeline: the transforms (MONAI dictionary transforms, MONAI 1.6 semantics).
 *
 * Every image is float32 [C, X, Y, Z] (see ml_data.h). A kernel replaces the values of its keys in
 * the sample; it writes in place only into tensors nobody else holds (ml_data_exclusive), otherwise
 * into new ones, so cached samples are never modified. Voxel loops use OpenMP; inside a loader worker
 * they run on one thread. */
#include "data/ml_data.h"
#include "data/ml_data_priv.h"
#include "volume/ml_dicom.h"
#include "volume/ml_nifti.h"
#include "volume/ml_volume.h"
#include "volume/ml_volume_ops.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

/* ------------------------------------------------------------ defaults */
void ml_xform_init(ml_xform *x, int type, const char *name) {
    memset(x, 0, sizeof *x);
    x->type = type;
    snprintf(x->name, sizeof x->name, "%s", name ? name : "transform");
    x->prob = 1.0;
    for (int i = 0; i < ML_DATA_MAX_KEYS; i++) x->mode[i] = ML_XF_LINEAR;
    for (int a = 0; a < 3; a++) {
        x->k_divisible[a] = 1;
        x->size[a] = -1;
        x->max_size[a] = -1;
        x->pixdim[a] = 1.0;
    }
    x->random_center = true;
    x->pos = x->neg = 1;
    x->num_samples = 1;
    x->max_k = 3;
    x->axes[0] = 0;
    x->axes[1] = 1;
    x->flip_mask = 7;
    x->padding_mode = ML_XF_PAD_REFLECTION;
    x->std = 0.1;
    x->sample_std = true;
    if (type >= ML_XF_RAND_ROT90) x->prob = 0.1;
}

bool ml_xform_is_random(const ml_xform *x) { return x->type >= ML_XF_RAND_SPATIAL_CROP; }

/* ------------------------------------------------------------ helpers */
/* re-raise the current error with a prefix */
static ml_err reprefix(ml_err e, const char *fmt, const char *a, const char *b) {
    char prev[1024];
    snprintf(prev, sizeof prev, "%s", ml_errmsg());
    char pre[256];
    snprintf(pre, sizeof pre, fmt, a, b);
    return ml_seterr(e, "%s%s", pre, prev);
}

static const char *kind_desc(int k) {
    switch (k) {
    case ML_DV_STR: return "a string";
    case ML_DV_NUM: return "a number";
    case ML_DV_INT: return "an integer";
    case ML_DV_BOOL: return "a boolean";
    default: return "nothing";
    }
}

static void list_keys(const ml_dsample *s, char *buf, size_t n) {
    buf[0] = 0;
    size_t used = 0;
    for (int i = 0; i < s->n && used + 4 < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%s%s", i ? ", " : "", s->v[i].key);
    if (!s->n) snprintf(buf, n, "no keys");
}

/* The image value of key k; *v NULL (and ML_OK) when missing and allowed. */
static ml_err get_img(const ml_xform *x, ml_dsample *s, const char *key, ml_dval **v, bool need_channel) {
    *v = ml_dsample_get(s, key);
    if (!*v) {
        if (x->allow_missing_keys) return ML_OK;
        char ks[512];
        list_keys(s, ks, sizeof ks);
        return ml_seterr(ML_ERR_ARG, "%s: key '%s' is missing (the sample has: %s)", x->name, key, ks);
    }
    if ((*v)->kind != ML_DV_TENSOR) {
        if ((*v)->kind == ML_DV_STR)
            return ml_seterr(ML_ERR_ARG, "%s: key '%s' is a string (\"%.200s\"), not an image: put LoadImaged before it",
                             x->name, key, (*v)->str);
        return ml_seterr(ML_ERR_ARG, "%s: key '%s' is %s, not an image", x->name, key, kind_desc((*v)->kind));
    }
    if (need_channel && (*v)->no_channel)
        return ml_seterr(ML_ERR_SHAPE,
                         "%s: key '%s' has no channel dim (shape %s): put EnsureChannelFirstd (or LoadImaged with "
                         "ensure_channel_first=true) before it",
                         x->name, key, ml_shape_str(3, (*v)->t->shape + 1));
    return ML_OK;
}

static void set_tensor(ml_dval *v, ml_tensor *t) {
    ml_tensor_release(v->t);
    v->t = t;
}

/* make v->t a contiguous float32 tensor that nothing else holds (copying when needed) */
static ml_err own(ml_dval *v) {
    if (ml_data_exclusive(v->t)) return ML_OK;
    ml_tensor *o = NULL;
    ml_err e = ml_tensor_empty(&o, ML_F32, 4, v->t->shape);
    if (e) return e;
    ml_data_copy_c4((float *)ml_tensor_data(o), v->t);
    set_tensor(v, o);
    return ML_OK;
}

static const char *shp3(const ml_tensor *t) { return ml_shape_str(3, t->shape + 1); }

static bool same_spatial(const ml_tensor *a, const ml_tensor *b) {
    return a->shape[1] == b->shape[1] && a->shape[2] == b->shape[2] && a->shape[3] == b->shape[3];
}

static ml_err mismatch(const ml_xform *x, const char *k1, const ml_tensor *a, const char *k2, const ml_tensor *b) {
    char s1[64];
    snprintf(s1, sizeof s1, "%s", shp3(a));
    return ml_seterr(ML_ERR_SHAPE,
                     "%s: geometry mismatch: key '%s' has spatial shape %s but key '%s' has %s (image and label must "
                     "be on the same voxel grid)",
                     x->name, k1, s1, k2, shp3(b));
}

/* New [C, hi - lo] tensor: the box [lo, hi) of t (lo may be negative, hi beyond the image: that part
 * is filled with value). */
static ml_err crop_pad(ml_tensor **out, const ml_tensor *t, const int64_t lo[3], const int64_t hi[3], float value) {
    int64_t sh[4] = {t->shape[0], hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]};
    for (int a = 1; a < 4; a++)
        if (sh[a] < 0) sh[a] = 0;
    ml_err e = ml_tensor_empty(out, ML_F32, 4, sh);
    if (e) return e;
    float *d = (float *)ml_tensor_data(*out);
    int64_t n = ml_tensor_numel(*out);
    int64_t slo[3], off[3], cnt[3];
    bool inside = true;
    for (int a = 0; a < 3; a++) {
        slo[a] = lo[a] < 0 ? 0 : lo[a];
        int64_t shi = hi[a] > t->shape[a + 1] ? t->shape[a + 1] : hi[a];
        cnt[a] = shi - slo[a];
        off[a] = slo[a] - lo[a];
        if (lo[a] < 0 || hi[a] > t->shape[a + 1]) inside = false;
    }
    if (!inside)
        for (int64_t i = 0; i < n; i++) d[i] = value;
    if (cnt[0] > 0 && cnt[1] > 0 && cnt[2] > 0) ml_data_copy_box(d, sh + 1, off, t, slo, cnt);
    return ML_OK;
}

/* crop/pad every key to [lo, hi) and update the affines */
static ml_err crop_keys(const ml_xform *x, ml_dsample *s, const int64_t lo[3], const int64_t hi[3], float value,
                        const ml_tensor *ref, const char *refkey) {
    for (int k = 0; k < x->nkeys; k++) {
        ml_dval *v;
        ml_err e = get_img(x, s, x->keys[k], &v, true);
        if (e) return e;
        if (!v) continue;
        if (ref && !same_spatial(v->t, ref)) return mismatch(x, x->keys[k], v->t, refkey, ref);
        ml_tensor *o = NULL;
        if ((e = crop_pad(&o, v->t, lo, hi, value))) return e;
        set_tensor(v, o);
        double t[3] = {(double)lo[0], (double)lo[1], (double)lo[2]};
        ml_affine_translate_by(v->affine, t);
    }
    return ML_OK;
}

/* ================================================================ LoadImaged */
static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcasecmp(s + a - b, suf);
}

static ml_err load_volume(ml_volume **vol, const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return ml_seterr(ML_ERR_IO, "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        ml_dicom_read_opts o;
        ml_dicom_read_opts_init(&o);
        return ml_dicom_read(vol, path, &o);
    }
    bool nifti = ends_with(path, ".nii") || ends_with(path, ".nii.gz") || ends_with(path, ".hdr") ||
                 ends_with(path, ".img") || ends_with(path, ".hdr.gz") || ends_with(path, ".img.gz");
    bool dicom = ends_with(path, ".dcm");
    if (!nifti && !dicom) {
        FILE *f = fopen(path, "rb");
        if (!f) return ml_seterr(ML_ERR_IO, "%s: %s", path, strerror(errno));
        unsigned char h[352];
        size_t n = fread(h, 1, sizeof h, f);
        fclose(f);
        if (n >= 132 && !memcmp(h + 128, "DICM", 4)) dicom = true;
        else if (n >= 2 && h[0] == 0x1f && h[1] == 0x8b) nifti = true;
        else if (n >= 4) {
            int32_t le = (int32_t)(h[0] | h[1] << 8 | h[2] << 16 | (uint32_t)h[3] << 24);
            int32_t be = (int32_t)(h[3] | h[2] << 8 | h[1] << 16 | (uint32_t)h[0] << 24);
            if (le == 348 || be == 348 || le == 540 || be == 540) nifti = true;
        }
        if (!nifti && !dicom)
            return ml_seterr(ML_ERR_IO,
                             "%s: unknown format (expected NIfTI .nii/.nii.gz/.hdr, a DICOM file or a DICOM directory)",
                             path);
    }
    if (nifti) {
        ml_nifti_read_opts o;
        ml_nifti_read_opts_init(&o);
        o.dtype = ML_NIFTI_OUT_F32;
        return ml_nifti_read(vol, path, &o);
    }
    ml_dicom_read_opts o;
    ml_dicom_read_opts_init(&o);
    return ml_dicom_read(vol, path, &o);
}

static ml_err x_load(const ml_xform *x, ml_dsample *s) {
    for (int k = 0; k < x->nkeys; k++) {
        const char *key = x->keys[k];
        ml_dval *v = ml_dsample_get(s, key);
        if (!v) {
            if (x->allow_missing_keys) continue;
            char ks[512];
            list_keys(s, ks, sizeof ks);
            return ml_seterr(ML_ERR_ARG, "%s: key '%s' is missing (the sample has: %s)", x->name, key, ks);
        }
        if (v->kind == ML_DV_TENSOR) { /* already an image (a tensor or volume given in the data list) */
            if (x->ensure_channel_first) v->no_channel = false;
            continue;
        }
        if (v->kind != ML_DV_STR)
            return ml_seterr(ML_ERR_ARG, "%s: key '%s' must be a file name, got %s", x->name, key, kind_desc(v->kind));
        ml_volume *vol = NULL;
        ml_err e = load_volume(&vol, v->str);
        if (e) return reprefix(e, "%s: key '%s': ", x->name, key);
        ml_tensor *t = vol->data, *a = NULL, *b = NULL;
        bool no_channel = false;
        if (t->ndim == 3) {
            e = ml_unsqueeze(&a, t, 0);
            no_channel = !x->ensure_channel_first;
        } else if (t->ndim == 4) {
            int perm[4] = {3, 0, 1, 2}; /* [X, Y, Z, T] -> channel first (MONAI: original_channel_dim -1) */
            e = ml_permute(&a, t, perm);
        } else {
            e = ml_seterr(ML_ERR_SHAPE, "%s: key '%s': %s: expected a 3-D or 4-D image, got shape %s", x->name, key,
                          v->str, ml_shape_str(t->ndim, t->shape));
        }
        if (!e && a->dtype != ML_F32) e = ml_to_dtype(&b, a, ML_F32);
        else if (!e) {
            b = a;
            a = NULL;
        }
        ml_tensor_release(a);
        if (e) {
            ml_volume_release(vol);
            return e;
        }
        set_tensor(v, b);
        memcpy(v->affine, vol->affine, sizeof v->affine);
        v->kind = ML_DV_TENSOR; /* v->str keeps the file name */
        v->no_channel = no_channel;
        ml_volume_release(vol);
    }
    return ML_OK;
}

static ml_err x_channel_first(const ml_xform *x, ml_dsample *s) {
    for (int k = 0; k < x->nkeys; k++) {
        ml_dval *v;
        ml_err e = get_img(x, s, x->keys[k], &v, false);
        if (e) return e;
        if (v) v->no_channel = false;
    }
    return ML_OK;
}

/* ============================================================ Spacingd / Orientationd */
/* run a volume op on every channel of v (3-D views) and put the channels back together */
static ml_err per_channel(const ml_xform *x, ml_dval *v, int op, int mode) {
    int64_t C = v->t->shape[0];
    ml_tensor **outs = calloc((size_t)C, sizeof *outs);
    if (!outs) return ml_seterr(ML_ERR_OOM, "%s: out of memory", x->name);
    double aff[16];
    ml_err e = ML_OK;
    for (int64_t c = 0; c < C && !e; c++) {
        ml_tensor *view = NULL;
        ml_volume *in = NULL, *out = NULL;
        if ((e = ml_select(&view, v->t, 0, c))) break;
        e = ml_volume_new(&in, view, v->affine, NULL);
        ml_tensor_release(view);
        if (e) break;
        if (op == ML_XF_SPACING) {
            double sp[3], cur[3];
            ml_volume_spacing(in, cur);
            for (int a = 0; a < 3; a++) sp[a] = x->pixdim[a] > 0 ? x->pixdim[a] : cur[a];
            ml_resample_opts o;
            ml_resample_opts_init(&o);
            o.mode = mode == ML_XF_NEAREST ? ML_INTERP_NEAREST : ML_INTERP_LINEAR;
            o.padding_mode = ML_PAD_BORDER; /* MONAI Spacing default padding_mode="border" */
            e = ml_volume_resample_spacing(&out, in, sp, &o);
        } else {
            e = ml_volume_reorient(&out, in, x->axcodes);
        }
        ml_volume_release(in);
        if (e) break;
        outs[c] = out->data;
        ml_tensor_retain(outs[c]);
        memcpy(aff, out->affine, sizeof aff);
        ml_volume_release(out);
    }
    ml_tensor *res = NULL;
    if (!e) {
        /* stack the channels into a contiguous [C, X, Y, Z] */
        int64_t sh[4] = {C, outs[0]->shape[0], outs[0]->shape[1], outs[0]->shape[2]};
        if (!(e = ml_tensor_empty(&res, ML_F32, 4, sh))) {
            int64_t per = sh[1] * sh[2] * sh[3];
            for (int64_t c = 0; c < C && !e; c++) {
                ml_tensor *u = NULL, *f = NULL;
                if ((e = ml_to_dtype(&f, outs[c], ML_F32))) break;
                if (!(e = ml_unsqueeze(&u, f, 0))) ml_data_copy_c4((float *)ml_tensor_data(res) + c * per, u);
                ml_tensor_release(u);
                ml_tensor_release(f);
            }
        }
    }
    for (int64_t c = 0; c < C; c++) ml_tensor_release(outs[c]);
    free(outs);
    if (e) {
        ml_tensor_release(res);
        return reprefix(e, "%s: key '%s': ", x->name, v->key);
    }
    set_tensor(v, res);
    memcpy(v->affine, aff, sizeof aff);
    return ML_OK;
}

/* Spacingd with mode "nearest": MONAI samples with torch grid_sample(mode="nearest"), which rounds
 * half to even (nearbyint) on coordinates computed in float64 and clamped to the image ("border").
 * The output grid is MONAI's (ml_volume_spacing_grid). */
static ml_err spacing_nearest(const ml_xform *x, ml_dval *v) {
    double cur[3], sp[3], oaff[16], inv[16], M[16];
    int64_t osz[3];
    ml_tensor *view = NULL;
    ml_volume *in = NULL;
    ml_err e = ml_select(&view, v->t, 0, 0);
    if (!e) e = ml_volume_new(&in, view, v->affine, NULL);
    ml_tensor_release(view);
    if (e) return e;
    ml_volume_spacing(in, cur);
    for (int a = 0; a < 3; a++) sp[a] = x->pixdim[a] > 0 ? x->pixdim[a] : cur[a];
    e = ml_volume_spacing_grid(in, sp, osz, oaff);
    ml_volume_release(in);
    if (e) return e;
    if (ml_affine_inverse(inv, v->affine))
        return ml_seterr(ML_ERR_ARG, "%s: key '%s': the affine is singular", x->name, v->key);
    ml_affine_mul16(M, inv, oaff);
    const ml_tensor *t = v->t;
    int64_t C = t->shape[0], n[3] = {t->shape[1], t->shape[2], t->shape[3]};
    int64_t sh[4] = {C, osz[0], osz[1], osz[2]};
    ml_tensor *o = NULL;
    if ((e = ml_tensor_empty(&o, ML_F32, 4, sh))) return e;
    const float *sp0 = (const float *)ml_tensor_data(t);
    float *dp = (float *)ml_tensor_data(o);
    int64_t rows = osz[0] * osz[1], ostr = osz[0] * osz[1] * osz[2];
    int nt = ml_data_threads(rows * osz[2] * C);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t r = 0; r < rows; r++) {
        int64_t i = r / osz[1], j = r % osz[1];
        for (int64_t k = 0; k < osz[2]; k++) {
            int64_t off = 0;
            for (int a = 0; a < 3; a++) {
                double p = M[a * 4] * (double)i + M[a * 4 + 1] * (double)j + M[a * 4 + 2] * (double)k + M[a * 4 + 3];
                p = p < 0 ? 0 : (p > (double)(n[a] - 1) ? (double)(n[a] - 1) : p);
                off += (int64_t)nearbyint(p) * t->stride[a + 1];
            }
            float *d = dp + r * osz[2] + k;
            for (int64_t c = 0; c < C; c++) d[c * ostr] = sp0[c * t->stride[0] + off];
        }
    }
    set_tensor(v, o);
    memcpy(v->affine, oaff, sizeof oaff);
    return ML_OK;
}

static ml_err x_spacing_orient(const ml_xform *x, ml_dsample *s) {
    for (int k = 0; k < x->nkeys; k++) {
        ml_dval *v;
        ml_err e = get_img(x, s, x->keys[k], &v, true);
        if (e) return e;
        if (!v) continue;
        if (x->type == ML_XF_SPACING && x->mode[k] == ML_XF_NEAREST) {
            if ((e = spacing_nearest(x, v))) return reprefix(e, "%s: key '%s': ", x->name, x->keys[k]);
        } else if ((e = per_channel(x, v, x->type, x->mode[k]))) {
            return e;
        }
    }
    return ML_OK;
}

/* ============================================================ intensity */
static ml_err x_scale_range(const ml_xform *x, ml_dsample *s) {
    float am = (float)x->a_min, bmin = (float)x->b_min, bmax = (float)x->b_max;
    double dd = x->a_max - x->a_min;
    float d = (float)dd, bs = (float)(x->b_max - x->b_min);
    bool both = x->has_b_min && x->has_b_max;
    float lo = x->clip && x->has_b_min ? bmin : -INFINITY, hi = x->clip && x->has_b_max ? bmax : INFINITY;
    for (int k = 0; k < x->nkeys; k++) {
        ml_dval *v;
        ml_err e = get_img(x, s, x->keys[k], &v, false);
        if (e) return e;
        if (!v) continue;
        if ((e = own(v))) return e;
        float *p = (float *)ml_tensor_data(v->t);
        int64_t n = ml_tensor_numel(v->t);
        int nt = ml_data_threads(n);
        if (dd == 0.0) { /* MONAI: warns, returns img - a_min (+ b_min) */
            float add = x->has_b_min ? bmin : 0.0f;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
            for (int64_t i = 0; i < n; i++) p[i] = p[i] - am + add;
            continue;
        }
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t i = 0; i < n; i++) {
            float y = (p[i] - am) / d;
            if (both) y = y * bs + bmin;
            if (x->clip) y = y < lo ? lo : (y > hi ? hi : y);
            p[i] = y;
        }
    }
    return ML_OK;
}

/* mean and population std of the n floats of p (masked to non-zero values when nonzero) */
static void mean_std(const float *p, int64_t n, bool nonzero, double *mean, double *std, int64_t *count) {
    double s = 0;
    int64_t c = 0;
    int nt = ml_data_threads(n);
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : s, c) if (nt > 1)
    for (int64_t i = 0; i < n; i++)
        if (!nonzero || p[i] != 0) {
            s += p[i];
            c++;
        }
    double m = c ? s / (double)c : 0, q = 0;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : q) if (nt > 1)
    for (int64_t i = 0; i < n; i++)
        if (!nonzero || p[i] != 0) q += ((double)p[i] - m) * ((double)p[i] - m);
    *mean = m;
    *std = c ? sqrt(q / (double)c) : 0;
    *count = c;
}

static void normalize_block(const ml_xform *x, float *p, int64_t n, int ci) {
    double m, sd;
    int64_t cnt;
    mean_std(p, n, x->nonzero, &m, &sd, &cnt);
    if (x->nonzero && cnt == 0) return;
    float sub = x->nsub ? (float)x->sub[x->nsub > 1 ? ci : 0] : (float)m;
    float div = x->ndiv ? (float)x->div[x->ndiv > 1 ? ci : 0] : (float)sd;
    if (div == 0.0f) div = 1.0f;
    int nt = ml_data_threads(n);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t i = 0; i < n; i++)
        if (!x->nonzero || p[i] != 0) p[i] = (p[i] - sub) / div;
}

static ml_err x_normalize(const ml_xform *x, ml_dsample *s) {
    for (int k = 0; k < x->nkeys; k++) {
        ml_dval *v;
        ml_err e = get_img(x, s, x->keys[k], &v, x->channel_wise);
        if (e) return e;
        if (!v) continue;
        int64_t C = v->t->shape[0];
        if (x->channel_wise && ((x->nsub > 1 && x->nsub != C) || (x->ndiv > 1 && x->ndiv != C)))
            return ml_seterr(ML_ERR_ARG, "%s: key '%s': the image has %lld channels but subtrahend/divisor have %d/%d",
                             x->name, x->keys[k], (long long)C, x->nsub, x->ndiv);
        if ((e = own(v))) return e;
        float *p = (float *)ml_tensor_data(v->t);
        int64_t n = ml_tensor_numel(v->t);
        if (x->channel_wise)
            for (int64_t c = 0; c < C; c++) normalize_block(x, p + c * (n / C), n / C, (int)c);
        else normalize_block(x, p, n, 0);
    }
    return ML_OK;
}

/* ============================================================ crops and pads */
static ml_err x_crop_foreground(const ml_xform *x, ml_dsample *s) {
    ml_dval *src;
    ml_xform xs = *x;
    xs.allow_missing_keys = false;
    ml_err e = get_img(&xs, s, x->source_key, &src, true);
    if (e) return e;
    const ml_tensor *t = src->t;
    int64_t C = t->shape[0], X = t->shape[1], Y = t->shape[2], Z = t->shape[3];
    int64_t mn[3] = {INT64_MAX, INT64_MAX, INT64_MAX}, mx[3] = {-1, -1, -1};
    const float *base = (const float *)ml_tensor_data(t);
    float thr = (float)x->threshold;
    for (int ci = 0; ci < (x->nchan_idx ? x->nchan_idx : (int)C); ci++) {
        int64_t c = x->nchan_idx ? x->channel_indices[ci] : ci;
        if (c < 0) c += C;
        if (c < 0 || c >= C)
            return ml_seterr(ML_ERR_ARG, "%s: channel index %d out of range for key '%s' with %lld channels", x->name,
                             x->channel_indices[ci], x->source_key, (long long)C);
        for (int64_t i = 0; i < X; i++)
            for (int64_t j = 0; j < Y; j++) {
                const float *row = base + c * t->stride[0] + i * t->stride[1] + j * t->stride[2];
                int64_t k0 = -1, k1 = -1;
                for (int64_t k = 0; k < Z; k++)
                    if (row[k * t->stride[3]] > thr) {
                        if (k0 < 0) k0 = k;
                        k1 = k;
                    }
                if (k0 < 0) continue;
                if (i < mn[0]) mn[0] = i;
                if (i > mx[0]) mx[0] = i;
                if (j < mn[1]) mn[1] = j;
                if (j > mx[1]) mx[1] = j;
                if (k0 < mn[2]) mn[2] = k0;
                if (k1 > mx[2]) mx[2] = k1;
            }
    }
    if (mx[0] < 0)
        return ml_seterr(ML_ERR_ARG,
                         "%s: no foreground in key '%s' (no voxel > %g): the bounding box is empty (MONAI would crop "
                         "to an empty image)",
                         x->name, x->source_key, x->threshold);
    int64_t lo[3], hi[3];
    for (int a = 0; a < 3; a++) {
        lo[a] = mn[a] - x->margin[a];
        hi[a] = mx[a] + x->margin[a] + 1;
        if (x->allow_smaller) {
            if (lo[a] < 0) lo[a] = 0;
            if (hi[a] > t->shape[a + 1]) hi[a] = t->shape[a + 1];
        }
        int64_t sz = hi[a] - lo[a], k = x->k_divisible[a];
        int64_t nsz = k > 0 ? (sz + k - 1) / k * k : sz;
        int64_t d = nsz - sz;
        lo[a] -= d >= 0 ? d / 2 : -((-d + 1) / 2); /* floor division */
        hi[a] = lo[a] + nsz;
    }
    /* crop the source last: the other keys are checked against its shape */
    ml_tensor *ref = src->t;
    ml_tensor_retain(ref);
    e = crop_keys(x, s, lo, hi, 0.0f, ref, x->source_key);
    ml_tensor_release(ref);
    return e;
}

/* fall back: entries <= 0 take the image size */
static void fall_back(int64_t out[3], const int64_t want[3], const ml_tensor *t) {
    for (int a = 0; a < 3; a++) out[a] = want[a] > 0 ? want[a] : t->shape[a + 1];
}

static ml_dval *first_img(const ml_xform *x, ml_dsample *s, ml_err *e) {
    for (int k = 0; k < x->nkeys; k++) {
        ml_dval *v;
        *e = get_img(x, s, x->keys[k], &v, true);
        if (*e) return NULL;
        if (v) return v;
    }
    *e = ML_OK;
    return NULL;
}

static ml_err x_spatial_pad(const ml_xform *x, ml_dsample *s) {
    for (int k = 0; k < x->nkeys; k++) {
        ml_dval *v;
        ml_err e = get_img(x, s, x->keys[k], &v, true);
        if (e) return e;
        if (!v) continue;
        int64_t want[3], lo[3], hi[3];
        fall_back(want, x->size, v->t);
        bool any = false;
        for (int a = 0; a < 3; a++) {
            int64_t n = v->t->shape[a + 1], w = want[a] > n ? want[a] - n : 0;
            lo[a] = x->pad_end ? 0 : -(w / 2);
            hi[a] = lo[a] + n + w;
            any = any || w;
        }
        if (!any) continue;
        ml_tensor *o = NULL;
        if ((e = crop_pad(&o, v->t, lo, hi, (float)x->pad_value))) return e;
        set_tensor(v, o);
        double tr[3] = {(double)lo[0], (double)lo[1], (double)lo[2]};
        ml_affine_translate_by(v->affine, tr);
    }
    return ML_OK;
}

static ml_err x_center_crop(const ml_xform *x, ml_dsample *s) {
    for (int k = 0; k < x->nkeys; k++) {
        ml_dval *v;
        ml_err e = get_img(x, s, x->keys[k], &v, true);
        if (e) return e;
        if (!v) continue;
        int64_t roi[3], lo[3], hi[3];
        fall_back(roi, x->size, v->t);
        for (int a = 0; a < 3; a++) {
            int64_t n = v->t->shape[a + 1], c = n / 2;
            lo[a] = c - roi[a] / 2 > 0 ? c - roi[a] / 2 : 0;
            hi[a] = lo[a] + roi[a] < n ? lo[a] + roi[a] : n;
        }
        ml_tensor *o = NULL;
        if ((e = crop_pad(&o, v->t, lo, hi, 0.0f))) return e;
        set_tensor(v, o);
        double tr[3] = {(double)lo[0], (double)lo[1], (double)lo[2]};
        ml_affine_translate_by(v->affine, tr);
    }
    return ML_OK;
}

static ml_err x_rand_spatial_crop(const ml_xform *x, ml_dsample *s, ml_drng *r) {
    ml_err e;
    ml_dval *v0 = first_img(x, s, &e);
    if (!v0) return e;
    ml_tensor *ref = v0->t;
    int64_t sz[3], lo[3], hi[3];
    fall_back(sz, x->size, ref);
    if (x->random_size) {
        int64_t mx[3];
        fall_back(mx, x->max_size, ref);
        for (int a = 0; a < 3; a++)
            if (sz[a] > mx[a])
                return ml_seterr(ML_ERR_ARG, "%s: roi_size %s is larger than max_roi_size %s", x->name,
                                 ml_shape_str(3, sz), ml_shape_str(3, mx));
        for (int a = 0; a < 3; a++) sz[a] = sz[a] + ml_drng_randint(r, mx[a] - sz[a] + 1);
    }
    for (int a = 0; a < 3; a++) {
        int64_t n = ref->shape[a + 1];
        if (x->random_center) {
            int64_t ps = sz[a] < n ? sz[a] : n;
            lo[a] = n > ps ? ml_drng_randint(r, n - ps + 1) : 0;
            hi[a] = lo[a] + ps;
        } else {
            int64_t c = n / 2;
            lo[a] = c - sz[a] / 2 > 0 ? c - sz[a] / 2 : 0;
            hi[a] = lo[a] + sz[a] < n ? lo[a] + sz[a] : n;
        }
    }
    ml_tensor_retain(ref);
    char rk[ML_DATA_KEY_MAX];
    memcpy(rk, v0->key, sizeof rk);
    e = crop_keys(x, s, lo, hi, 0.0f, ref, rk);
    ml_tensor_release(ref);
    return e;
}

/* RandCropByPosNegLabeld: num_samples crops centred on foreground (label != 0) or background
 * (label == 0 and, with image_key, image > image_threshold) voxels, as MONAI's
 * generate_pos_neg_label_crop_centers + correct_crop_centers. */
static ml_err x_posneg(const ml_xform *x, ml_dsample *s, ml_drng *r, ml_dlist *out) {
    ml_xform xs = *x;
    xs.allow_missing_keys = false;
    ml_dval *lv, *iv = NULL;
    ml_err e = get_img(&xs, s, x->label_key, &lv, true);
    if (e) return e;
    if (x->image_key[0] && (e = get_img(&xs, s, x->image_key, &iv, true))) return e;
    if (iv && !same_spatial(iv->t, lv->t)) return mismatch(x, x->image_key, iv->t, x->label_key, lv->t);
    const ml_tensor *L = lv->t;
    int64_t S[3] = {L->shape[1], L->shape[2], L->shape[3]};
    int64_t roi[3];
    fall_back(roi, x->size, L);
    for (int a = 0; a < 3; a++)
        if (roi[a] > S[a]) {
            if (!x->allow_smaller)
                return ml_seterr(ML_ERR_SHAPE,
                                 "%s: spatial_size %s is larger than the image: key '%s' has spatial shape %s (pad first "
                                 "with SpatialPadd, or set allow_smaller=true)",
                                 x->name, ml_shape_str(3, roi), x->label_key, ml_shape_str(3, S));
            break;
        }
    for (int a = 0; a < 3; a++)
        if (roi[a] > S[a]) roi[a] = S[a];
    for (int k = 0; k < x->nkeys; k++) {
        ml_dval *v;
        if ((e = get_img(x, s, x->keys[k], &v, true))) return e;
        if (v && !same_spatial(v->t, L)) return mismatch(x, x->keys[k], v->t, x->label_key, L);
    }
    /* foreground / background masks, C order over (X, Y, Z) as numpy's ravel */
    ml_tensor *lc = NULL, *ic = NULL;
    if ((e = ml_data_c4(&lc, lv->t))) return e;
    if (iv && (e = ml_data_c4(&ic, iv->t))) {
        ml_tensor_release(lc);
        return e;
    }
    int64_t N = S[0] * S[1] * S[2];
    uint8_t *fg = malloc((size_t)(N ? N : 1));
    if (!fg) {
        ml_tensor_release(lc);
        ml_tensor_release(ic);
        return ml_seterr(ML_ERR_OOM, "%s: out of memory", x->name);
    }
    const float *lp = (const float *)ml_tensor_data(lc);
    int64_t LC = lc->shape[0], c0 = LC > 1 ? 1 : 0; /* one-hot labels: skip the background channel */
    float thr = (float)x->image_threshold;
    int64_t nfg = 0, nbg = 0;
    for (int64_t i = 0; i < N; i++) {
        bool f = false;
        for (int64_t c = c0; c < LC && !f; c++) f = lp[c * N + i] != 0;
        bool b = !f;
        if (b && ic) {
            const float *ip = (const float *)ml_tensor_data(ic);
            bool any = false;
            for (int64_t c = 0; c < ic->shape[0] && !any; c++) any = ip[c * N + i] > thr;
            b = any;
        }
        fg[i] = f ? 1 : (b ? 2 : 0);
        nfg += f;
        nbg += b;
    }
    ml_tensor_release(lc);
    ml_tensor_release(ic);
    if (nfg == 0 && nbg == 0) {
        free(fg);
        return ml_seterr(ML_ERR_ARG,
                         "%s: no sampling location available: key '%s' has no foreground and no background voxel%s",
                         x->name, x->label_key, iv ? " above image_threshold" : "");
    }
    double ratio = x->pos / (x->pos + x->neg);
    if (nfg == 0) ratio = 0;
    if (nbg == 0) ratio = 1;
    int ns = x->num_samples;
    int64_t *want = malloc((size_t)ns * sizeof *want), *idx = malloc((size_t)ns * sizeof *idx);
    uint8_t *ispos = malloc((size_t)ns);
    if (!want || !idx || !ispos) {
        free(fg);
        free(want);
        free(idx);
        free(ispos);
        return ml_seterr(ML_ERR_OOM, "%s: out of memory", x->name);
    }
    for (int q = 0; q < ns; q++) {
        ispos[q] = ml_drng_uniform(r) < ratio;
        want[q] = ml_drng_randint(r, ispos[q] ? nfg : nbg);
        idx[q] = -1;
    }
    /* one pass: the want[q]-th foreground / background voxel */
    int64_t rf = 0, rb = 0;
    for (int64_t i = 0; i < N; i++) {
        if (!fg[i]) continue;
        bool f = fg[i] == 1;
        int64_t rank = f ? rf++ : rb++;
        for (int q = 0; q < ns; q++)
            if (idx[q] < 0 && ispos[q] == f && want[q] == rank) idx[q] = i;
    }
    free(fg);
    free(want);
    free(ispos);
    for (int q = 0; q < ns && !e; q++) {
        int64_t c[3] = {idx[q] / (S[1] * S[2]), (idx[q] / S[2]) % S[1], idx[q] % S[2]};
        int64_t lo[3], hi[3];
        for (int a = 0; a < 3; a++) {
            /* correct_crop_centers */
            int64_t vs = roi[a] / 2;
            int64_t ve = (int64_t)((double)(S[a] + 1) - (double)roi[a] / 2.0);
            ve &= 0xffff; /* MONAI casts to uint16 */
            if (vs == ve) ve++;
            int64_t cc = c[a] < vs ? vs : c[a];
            if (cc > ve - 1) cc = ve - 1;
            lo[a] = cc - roi[a] / 2 > 0 ? cc - roi[a] / 2 : 0;
            hi[a] = lo[a] + roi[a] < S[a] ? lo[a] + roi[a] : S[a];
        }
        ml_dsample *o = ml_dsample_copy(s);
        if (!o) {
            e = ML_ERR_OOM;
            break;
        }
        if ((e = crop_keys(x, o, lo, hi, 0.0f, NULL, NULL))) {
            ml_dsample_free(o);
            break;
        }
        e = ml_dlist_push(out, o);
    }
    free(idx);
    return e;
}

/* ============================================================ flips and rotations */
/* out[o] = in[i] with i[perm[j]] = flip[j] ? n - 1 - o[j] : o[j] (spatial axes); affine updated */
static ml_err permflip(ml_dval *v, const int perm[3], const int flip[3]) {
    const ml_tensor *t = v->t;
    int64_t C = t->shape[0], osh[4] = {C, t->shape[perm[0] + 1], t->shape[perm[1] + 1], t->shape[perm[2] + 1]};
    ml_tensor *o = NULL;
    ml_err e = ml_tensor_empty(&o, ML_F32, 4, osh);
    if (e) return e;
    int64_t sst[3], base = 0;
    for (int j = 0; j < 3; j++) {
        int64_t st = t->stride[perm[j] + 1];
        if (flip[j]) {
            base += (t->shape[perm[j] + 1] - 1) * st;
            st = -st;
        }
        sst[j] = st;
    }
    const float *src = (const float *)ml_tensor_data(t) + base;
    float *dst = (float *)ml_tensor_data(o);
    int64_t rows = C * osh[1] * osh[2], Z = osh[3];
    int nt = ml_data_threads(rows * Z);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t r = 0; r < rows; r++) {
        int64_t c = r / (osh[1] * osh[2]), i = (r / osh[2]) % osh[1], j = r % osh[2];
        const float *s = src + c * t->stride[0] + i * sst[0] + j * sst[1];
        float *d = dst + r * Z;
        int64_t sz = sst[2];
        for (int64_t k = 0; k < Z; k++) d[k] = s[k * sz];
    }
    /* input voxel = M * output voxel */
    double M[16] = {0};
    M[15] = 1;
    for (int j = 0; j < 3; j++) {
        int a = perm[j];
        M[a * 4 + j] = flip[j] ? -1 : 1;
        if (flip[j]) M[a * 4 + 3] = (double)(t->shape[a + 1] - 1);
    }
    ml_affine_mul16(v->affine, v->affine, M);
    set_tensor(v, o);
    return ML_OK;
}

static ml_err x_rand_flip(const ml_xform *x, ml_dsample *s, ml_drng *r) {
    if (!(ml_drng_uniform(r) < x->prob)) return ML_OK;
    int perm[3] = {0, 1, 2}, flip[3];
    for (int a = 0; a < 3; a++) flip[a] = (x->flip_mask >> a) & 1;
    for (int k = 0; k < x->nkeys; k++) {
        ml_dval *v;
        ml_err e = get_img(x, s, x->keys[k], &v, true);
        if (e) return e;
        if (v && (e = permflip(v, perm, flip))) return e;
    }
    return ML_OK;
}

static ml_err x_rand_rot90(const ml_xform *x, ml_dsample *s, ml_drng *r) {
    if (!(ml_drng_uniform(r) < x->prob)) return ML_OK;
    int k = (int)ml_drng_randint(r, x->max_k) + 1;
    int a = x->axes[0], b = x->axes[1];
    int perm[3] = {0, 1, 2}, flip[3] = {0, 0, 0};
    switch (k % 4) { /* torch.rot90(x, k, (a, b)) */
    case 1: perm[a] = b; flip[a] = 1; perm[b] = a; break;
    case 2: flip[a] = flip[b] = 1; break;
    case 3: perm[a] = b; perm[b] = a; flip[b] = 1; break;
    default: return ML_OK;
    }
    for (int q = 0; q < x->nkeys; q++) {
        ml_dval *v;
        ml_err e = get_img(x, s, x->keys[q], &v, true);
        if (e) return e;
        if (v && (e = permflip(v, perm, flip))) return e;
    }
    return ML_OK;
}

/* ============================================================ RandAffined */
/* 4x4 helpers in centred voxel coordinates, as monai.transforms.utils create_* */
static void mat_rot(double out[16], const double *rad, int n) {
    ml_affine_identity16(out);
    for (int i = 0; i < n; i++) { /* intrinsic "XYZ": post-multiply */
        double c = cos(rad[i]), s = sin(rad[i]), m[16];
        ml_affine_identity16(m);
        if (i == 0) {
            m[5] = c; m[6] = -s; m[9] = s; m[10] = c;
        } else if (i == 1) {
            m[0] = c; m[2] = s; m[8] = -s; m[10] = c;
        } else {
            m[0] = c; m[1] = -s; m[4] = s; m[5] = c;
        }
        ml_affine_mul16(out, out, m);
    }
}

static void mat_shear(double out[16], const double *c, int n) {
    static const int ij[6][2] = {{0, 1}, {0, 2}, {1, 0}, {1, 2}, {2, 0}, {2, 1}};
    ml_affine_identity16(out);
    for (int q = 0; q < n; q++) { /* pre-multiply: the first coefficient is applied first */
        double m[16];
        ml_affine_identity16(m);
        m[ij[q][0] * 4 + ij[q][1]] = c[q];
        ml_affine_mul16(out, m, out);
    }
}

static inline double reflect_coord(double p, int64_t n) {
    /* torch grid_sample padding_mode="reflection", align_corners=False: reflect about -0.5 and n - 0.5 */
    double lo = -0.5, span = (double)n;
    double x = fabs(p - lo);
    double flips = floor(x / span), extra = x - flips * span;
    p = fmod(flips, 2.0) == 0 ? lo + extra : lo + span - extra;
    return p < 0 ? 0 : (p > (double)(n - 1) ? (double)(n - 1) : p);
}

static ml_err affine_resample(ml_dval *v, const double A[16], const int64_t osz[3], int mode, int pad) {
    const ml_tensor *in = v->t;
    ml_tensor *src = NULL;
    ml_err e = ml_data_c4(&src, (ml_tensor *)in);
    if (e) return e;
    int64_t C = src->shape[0], n[3] = {src->shape[1], src->shape[2], src->shape[3]};
    int64_t osh[4] = {C, osz[0], osz[1], osz[2]};
    ml_tensor *o = NULL;
    if ((e = ml_tensor_empty(&o, ML_F32, 4, osh))) {
        ml_tensor_release(src);
        return e;
    }
    /* input voxel p = B * output voxel: B = T(+(n-1)/2) A T(-(o-1)/2); a size-1 input axis samples at
     * half the coordinate (MONAI normalises with max(2, n), torch unnormalises with n) */
    double B[16], T1[16], T2[16];
    ml_affine_identity16(T1);
    ml_affine_identity16(T2);
    for (int a = 0; a < 3; a++) {
        T1[a * 4 + 3] = (double)(n[a] - 1) / 2.0;
        T2[a * 4 + 3] = -(double)(osz[a] - 1) / 2.0;
    }
    ml_affine_mul16(B, T1, A);
    ml_affine_mul16(B, B, T2);
    double Bs[16];
    memcpy(Bs, B, sizeof Bs);
    for (int a = 0; a < 3; a++)
        if (n[a] == 1)
            for (int c = 0; c < 4; c++) Bs[a * 4 + c] *= 0.5;
    const float *sp = (const float *)ml_tensor_data(src);
    float *dp = (float *)ml_tensor_data(o);
    int64_t sy = n[2], sx = n[1] * n[2], sc = n[0] * n[1] * n[2];
    int64_t rows = osz[0] * osz[1];
    int nt = ml_data_threads(rows * osz[2] * C);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t r = 0; r < rows; r++) {
        int64_t i = r / osz[1], j = r % osz[1];
        for (int64_t k = 0; k < osz[2]; k++) {
            double p[3];
            for (int a = 0; a < 3; a++)
                p[a] = Bs[a * 4] * (double)i + Bs[a * 4 + 1] * (double)j + Bs[a * 4 + 2] * (double)k + Bs[a * 4 + 3];
            if (pad == ML_XF_PAD_BORDER) {
                for (int a = 0; a < 3; a++) p[a] = p[a] < 0 ? 0 : (p[a] > (double)(n[a] - 1) ? (double)(n[a] - 1) : p[a]);
            } else if (pad == ML_XF_PAD_REFLECTION) {
                for (int a = 0; a < 3; a++) p[a] = reflect_coord(p[a], n[a]);
            }
            float *d = dp + (i * osz[1] + j) * osz[2] + k;
            int64_t ostride = osz[0] * osz[1] * osz[2];
            if (mode == ML_XF_NEAREST) {
                int64_t q[3];
                bool ok = true;
                for (int a = 0; a < 3; a++) {
                    q[a] = (int64_t)nearbyint(p[a]);
                    if (q[a] < 0 || q[a] >= n[a]) ok = false;
                }
                for (int64_t c = 0; c < C; c++)
                    d[c * ostride] = ok ? sp[c * sc + q[0] * sx + q[1] * sy + q[2]] : 0.0f;
                continue;
            }
            int64_t q0[3];
            double w1[3];
            for (int a = 0; a < 3; a++) {
                double fl = floor(p[a]);
                q0[a] = (int64_t)fl;
                w1[a] = p[a] - fl;
            }
            double acc[16];
            int64_t cmax = C < 16 ? C : 16;
            for (int64_t c = 0; c < cmax; c++) acc[c] = 0;
            for (int corner = 0; corner < 8; corner++) {
                int64_t q[3];
                double w = 1;
                bool ok = true;
                for (int a = 0; a < 3; a++) {
                    int bit = (corner >> (2 - a)) & 1;
                    q[a] = q0[a] + bit;
                    w *= bit ? w1[a] : 1.0 - w1[a];
                    if (q[a] < 0 || q[a] >= n[a]) ok = false;
                }
                if (!ok || w == 0) continue;
                int64_t off = q[0] * sx + q[1] * sy + q[2];
                for (int64_t c = 0; c < cmax; c++) acc[c] += w * sp[c * sc + off];
            }
            for (int64_t c = 0; c < cmax; c++) d[c * ostride] = (float)acc[c];
            for (int64_t c = cmax; c < C; c++) { /* more than 16 channels: one at a time */
                double s = 0;
                for (int corner = 0; corner < 8; corner++) {
                    int64_t q[3];
                    double w = 1;
                    bool ok = true;
                    for (int a = 0; a < 3; a++) {
                        int bit = (corner >> (2 - a)) & 1;
                        q[a] = q0[a] + bit;
                        w *= bit ? w1[a] : 1.0 - w1[a];
                        if (q[a] < 0 || q[a] >= n[a]) ok = false;
                    }
                    if (ok) s += w * sp[c * sc + q[0] * sx + q[1] * sy + q[2]];
                }
                d[c * ostride] = (float)s;
            }
        }
    }
    ml_tensor_release(src);
    ml_affine_mul16(v->affine, v->affine, B);
    set_tensor(v, o);
    return ML_OK;
}

static ml_err x_rand_affine(const ml_xform *x, ml_dsample *s, ml_drng *r) {
    ml_err e;
    ml_dval *v0 = first_img(x, s, &e);
    if (!v0) return e;
    int64_t osz[3];
    fall_back(osz, x->size, v0->t);
    bool doit = ml_drng_uniform(r) < x->prob;
    double A[16];
    ml_affine_identity16(A);
    if (doit) {
        double rot[3], sh[6], tr[3] = {0, 0, 0}, sc[3] = {1, 1, 1}, m[16];
        for (int q = 0; q < x->nrot; q++) rot[q] = ml_drng_range(r, x->rot[q][0], x->rot[q][1]);
        for (int q = 0; q < x->nshear; q++) sh[q] = ml_drng_range(r, x->shear[q][0], x->shear[q][1]);
        for (int q = 0; q < x->ntrans; q++) tr[q] = ml_drng_range(r, x->trans[q][0], x->trans[q][1]);
        for (int q = 0; q < x->nscale; q++) sc[q] = ml_drng_range(r, x->scale[q][0], x->scale[q][1]) + 1.0;
        if (x->nrot) {
            mat_rot(m, rot, x->nrot);
            ml_affine_mul16(A, A, m);
        }
        if (x->nshear) {
            mat_shear(m, sh, x->nshear);
            ml_affine_mul16(A, A, m);
        }
        if (x->ntrans) ml_affine_translate_by(A, tr);
        if (x->nscale) {
            ml_affine_identity16(m);
            m[0] = sc[0];
            m[5] = sc[1];
            m[10] = sc[2];
            ml_affine_mul16(A, A, m);
        }
    }
    bool resample = doit || osz[0] != v0->t->shape[1] || osz[1] != v0->t->shape[2] || osz[2] != v0->t->shape[3];
    if (!resample) return ML_OK;
    for (int k = 0; k < x->nkeys; k++) {
        ml_dval *v;
        if ((e = get_img(x, s, x->keys[k], &v, true))) return e;
        if (v && (e = affine_resample(v, A, osz, x->mode[k], x->padding_mode))) return e;
    }
    return ML_OK;
}

/* ============================================================ random intensity */
static ml_err x_rand_noise(const ml_xform *x, ml_dsample *s, ml_drng *r) {
    if (!(ml_drng_uniform(r) < x->prob)) return ML_OK;
    ml_err e;
    ml_dval *v0 = first_img(x, s, &e);
    if (!v0) return e;
    double sd = x->sample_std ? ml_drng_range(r, 0, x->std) : x->std;
    int64_t n = ml_tensor_numel(v0->t);
    float *noise = malloc((size_t)(n ? n : 1) * sizeof(float));
    if (!noise) return ml_seterr(ML_ERR_OOM, "%s: out of memory (%lld noise values)", x->name, (long long)n);
    ml_drng_fill_normal(r, noise, n, x->mean, sd);
    int64_t shp[4];
    memcpy(shp, v0->t->shape, sizeof shp);
    char k0[ML_DATA_KEY_MAX];
    memcpy(k0, v0->key, sizeof k0);
    for (int k = 0; k < x->nkeys && !e; k++) {
        ml_dval *v;
        if ((e = get_img(x, s, x->keys[k], &v, false))) break;
        if (!v) continue;
        if (memcmp(v->t->shape, shp, sizeof shp)) {
            e = ml_seterr(ML_ERR_SHAPE, "%s: key '%s' has shape %s but key '%s' has %s (the same noise is added to every key)",
                          x->name, x->keys[k], ml_shape_str(4, v->t->shape), k0, ml_shape_str(4, shp));
            break;
        }
        if ((e = own(v))) break;
        float *p = (float *)ml_tensor_data(v->t);
        int nt = ml_data_threads(n);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t i = 0; i < n; i++) p[i] += noise[i];
    }
    free(noise);
    return e;
}

static ml_err x_rand_scale_shift(const ml_xform *x, ml_dsample *s, ml_drng *r) {
    if (!(ml_drng_uniform(r) < x->prob)) return ML_OK;
    ml_err e;
    ml_dval *v0 = first_img(x, s, &e);
    if (!v0) return e;
    int64_t C0 = x->channel_wise ? v0->t->shape[0] : 1;
    double *f = malloc((size_t)C0 * sizeof *f);
    if (!f) return ml_seterr(ML_ERR_OOM, "%s: out of memory", x->name);
    for (int64_t c = 0; c < C0; c++) f[c] = ml_drng_range(r, x->lo, x->hi);
    bool scale = x->type == ML_XF_RAND_SCALE_INT;
    for (int k = 0; k < x->nkeys && !e; k++) {
        ml_dval *v;
        if ((e = get_img(x, s, x->keys[k], &v, false))) break;
        if (!v) continue;
        int64_t C = v->t->shape[0];
        if (x->channel_wise && C != C0) {
            e = ml_seterr(ML_ERR_SHAPE, "%s: key '%s' has %lld channels, the first key %lld (channel_wise)", x->name,
                          x->keys[k], (long long)C, (long long)C0);
            break;
        }
        if ((e = own(v))) break;
        float *p = (float *)ml_tensor_data(v->t);
        int64_t per = ml_tensor_numel(v->t) / (C ? C : 1);
        for (int64_t c = 0; c < C; c++) {
            double fc = f[x->channel_wise ? c : 0];
            float m = (float)(1.0 + fc), a = (float)fc;
            float *q = p + c * per;
            int nt = ml_data_threads(per);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
            for (int64_t i = 0; i < per; i++) q[i] = scale ? q[i] * m : q[i] + a;
        }
    }
    free(f);
    return e;
}

/* ============================================================ dispatch */
static ml_err apply_one(const ml_xform *x, ml_dsample *s, ml_drng *r, ml_dlist *multi) {
    switch (x->type) {
    case ML_XF_LOAD: return x_load(x, s);
    case ML_XF_CHANNEL_FIRST: return x_channel_first(x, s);
    case ML_XF_SPACING:
    case ML_XF_ORIENTATION: return x_spacing_orient(x, s);
    case ML_XF_SCALE_RANGE: return x_scale_range(x, s);
    case ML_XF_NORMALIZE: return x_normalize(x, s);
    case ML_XF_CROP_FOREGROUND: return x_crop_foreground(x, s);
    case ML_XF_SPATIAL_PAD: return x_spatial_pad(x, s);
    case ML_XF_CENTER_CROP: return x_center_crop(x, s);
    case ML_XF_NOOP: return ML_OK;
    case ML_XF_RAND_SPATIAL_CROP: return x_rand_spatial_crop(x, s, r);
    case ML_XF_RAND_POSNEG_CROP: return x_posneg(x, s, r, multi);
    case ML_XF_RAND_ROT90: return x_rand_rot90(x, s, r);
    case ML_XF_RAND_FLIP: return x_rand_flip(x, s, r);
    case ML_XF_RAND_AFFINE: return x_rand_affine(x, s, r);
    case ML_XF_RAND_NOISE: return x_rand_noise(x, s, r);
    case ML_XF_RAND_SCALE_INT:
    case ML_XF_RAND_SHIFT_INT: return x_rand_scale_shift(x, s, r);
    default: return ml_seterr(ML_ERR_ARG, "data: unknown transform type %d", x->type);
    }
}

ml_err ml_xform_apply(const ml_xform *x, ml_dlist **plist, const ml_xctx *ctx) {
    ml_dlist *in = *plist;
    if (x->type == ML_XF_RAND_POSNEG_CROP) {
        ml_dlist *out = ml_dlist_new();
        if (!out) return ML_ERR_OOM;
        for (int j = 0; j < in->n; j++) {
            ml_drng r;
            ml_drng_init(&r, ctx->seed, ctx->epoch, ctx->index, (uint64_t)ctx->tidx, (uint64_t)j);
            ml_err e = apply_one(x, in->s[j], &r, out);
            if (e) {
                ml_dlist_free(out);
                return e;
            }
        }
        ml_dlist_free(in);
        *plist = out;
        return ML_OK;
    }
    for (int j = 0; j < in->n; j++) {
        ml_drng r;
        ml_drng_init(&r, ctx->seed, ctx->epoch, ctx->index, (uint64_t)ctx->tidx, (uint64_t)j);
        ml_err e = apply_one(x, in->s[j], &r, NULL);
        if (e) return e;
    }
    return ML_OK;
}

/* ============================================================ pipelines */
ml_pipeline *ml_pipeline_new(int n, const ml_xform *x) {
    ml_pipeline *p = calloc(1, sizeof *p);
    if (!p || (n > 0 && !(p->x = malloc((size_t)n * sizeof *p->x)))) {
        free(p);
        ml_seterr(ML_ERR_OOM, "data: out of memory (pipeline)");
        return NULL;
    }
    if (n > 0) memcpy(p->x, x, (size_t)n * sizeof *x);
    p->n = n;
    p->refcount = 1;
    return p;
}

void ml_pipeline_retain(ml_pipeline *p) { __atomic_add_fetch(&p->refcount, 1, __ATOMIC_RELAXED); }

void ml_pipeline_release(ml_pipeline *p) {
    if (!p || __atomic_sub_fetch(&p->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
    free(p->x);
    free(p);
}

int ml_pipeline_first_random(const ml_pipeline *p) {
    for (int i = 0; i < p->n; i++)
        if (ml_xform_is_random(&p->x[i])) return i;
    return p->n;
}

ml_err ml_pipeline_run(const ml_pipeline *p, int from, int to, ml_dlist **list, uint64_t seed, uint64_t epoch,
                       uint64_t index) {
    if (to > p->n) to = p->n;
    for (int i = from; i < to; i++) {
        ml_xctx ctx = {seed, epoch, index, i};
        ml_err e = ml_xform_apply(&p->x[i], list, &ctx);
        if (e) return e;
    }
    return ML_OK;
}
