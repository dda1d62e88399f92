/* medlua data pipeline: sample dictionaries, per-sample random streams, collation, helpers. */
#include "data/ml_data.h"
#include "data/ml_data_priv.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ================================================================== samples */
static void dval_clear(ml_dval *v) {
    free(v->str);
    ml_tensor_release(v->t);
    v->str = NULL;
    v->t = NULL;
    v->kind = ML_DV_NIL;
}

ml_dsample *ml_dsample_new(void) {
    ml_dsample *s = calloc(1, sizeof *s);
    if (!s) ml_seterr(ML_ERR_OOM, "data: out of memory (sample)");
    return s;
}

void ml_dsample_free(ml_dsample *s) {
    if (!s) return;
    for (int i = 0; i < s->n; i++) dval_clear(&s->v[i]);
    free(s->v);
    free(s);
}

ml_dsample *ml_dsample_copy(const ml_dsample *s) {
    ml_dsample *c = ml_dsample_new();
    if (!c) return NULL;
    if (s->n) {
        c->v = calloc((size_t)s->n, sizeof *c->v);
        if (!c->v) {
            free(c);
            ml_seterr(ML_ERR_OOM, "data: out of memory (sample)");
            return NULL;
        }
    }
    c->cap = s->n;
    for (int i = 0; i < s->n; i++) {
        c->v[i] = s->v[i];
        c->v[i].str = NULL;
        if (s->v[i].str && !(c->v[i].str = strdup(s->v[i].str))) {
            c->n = i;
            c->v[i].t = NULL;
            ml_dsample_free(c);
            ml_seterr(ML_ERR_OOM, "data: out of memory (sample)");
            return NULL;
        }
        if (c->v[i].t) ml_tensor_retain(c->v[i].t);
        c->n = i + 1;
    }
    return c;
}

ml_dval *ml_dsample_get(ml_dsample *s, const char *key) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->v[i].key, key)) return &s->v[i];
    return NULL;
}

const ml_dval *ml_dsample_cget(const ml_dsample *s, const char *key) {
    return ml_dsample_get((ml_dsample *)s, key);
}

/* the slot for key (cleared), creating it */
static ml_err slot_for(ml_dsample *s, const char *key, ml_dval **out) {
    size_t kl = strlen(key);
    if (kl == 0 || kl >= ML_DATA_KEY_MAX)
        return ml_seterr(ML_ERR_ARG, "data: key '%.80s' must have 1 to %d bytes", key, ML_DATA_KEY_MAX - 1);
    ml_dval *v = ml_dsample_get(s, key);
    if (v) {
        dval_clear(v);
    } else {
        if (s->n == s->cap) {
            int nc = s->cap ? 2 * s->cap : 8;
            ml_dval *nv = realloc(s->v, (size_t)nc * sizeof *nv);
            if (!nv) return ml_seterr(ML_ERR_OOM, "data: out of memory (sample)");
            s->v = nv;
            s->cap = nc;
        }
        v = &s->v[s->n++];
        memset(v, 0, sizeof *v);
        memcpy(v->key, key, kl + 1);
    }
    *out = v;
    return ML_OK;
}

ml_err ml_dsample_set_str(ml_dsample *s, const char *key, const char *str) {
    ml_dval *v = NULL;
    ml_err e = slot_for(s, key, &v);
    if (e) return e;
    v->str = strdup(str);
    if (!v->str) return ml_seterr(ML_ERR_OOM, "data: out of memory (string)");
    v->kind = ML_DV_STR;
    return ML_OK;
}

ml_err ml_dsample_set_num(ml_dsample *s, const char *key, double x) {
    ml_dval *v = NULL;
    ml_err e = slot_for(s, key, &v);
    if (e) return e;
    v->kind = ML_DV_NUM;
    v->num = x;
    return ML_OK;
}

ml_err ml_dsample_set_int(ml_dsample *s, const char *key, int64_t x) {
    ml_dval *v = NULL;
    ml_err e = slot_for(s, key, &v);
    if (e) return e;
    v->kind = ML_DV_INT;
    v->inum = x;
    return ML_OK;
}

ml_err ml_dsample_set_bool(ml_dsample *s, const char *key, bool x) {
    ml_dval *v = NULL;
    ml_err e = slot_for(s, key, &v);
    if (e) return e;
    v->kind = ML_DV_BOOL;
    v->b = x;
    return ML_OK;
}

ml_err ml_dsample_set_tensor(ml_dsample *s, const char *key, ml_tensor *t, const double affine[16],
                             const char *filename, bool no_channel) {
    ml_err e = ML_OK;
    ml_tensor *a = NULL, *b = NULL;
    if (t->storage->device.type != ML_CPU) {
        e = ml_seterr(ML_ERR_DEVICE, "data: key '%s': the tensor is on %s; the data pipeline runs on the CPU", key,
                      ml_device_str(t->storage->device));
        goto done;
    }
    if (no_channel ? t->ndim != 3 : t->ndim != 4) {
        e = ml_seterr(ML_ERR_SHAPE,
                      "data: key '%s': an image must be [X, Y, Z] or channel-first [C, X, Y, Z], got a tensor of "
                      "shape %s",
                      key, ml_shape_str(t->ndim, t->shape));
        goto done;
    }
    if ((e = ml_tensor_plain(t))) goto done;
    if ((e = ml_detach(&a, t))) goto done;
    if ((e = ml_to_dtype(&b, a, ML_F32))) goto done;
    ml_tensor_release(a);
    a = NULL;
    if (no_channel) {
        if ((e = ml_unsqueeze(&a, b, 0))) goto done;
        ml_tensor_release(b);
        b = a;
        a = NULL;
    }
    ml_dval *v = NULL;
    if ((e = slot_for(s, key, &v))) goto done;
    if (filename && !(v->str = strdup(filename))) {
        e = ml_seterr(ML_ERR_OOM, "data: out of memory (string)");
        goto done;
    }
    v->kind = ML_DV_TENSOR;
    v->t = b;
    b = NULL;
    if (affine) memcpy(v->affine, affine, sizeof v->affine);
    else ml_affine_identity16(v->affine);
    v->no_channel = no_channel;
done:
    ml_tensor_release(a);
    ml_tensor_release(b);
    ml_tensor_release(t);
    return e;
}

int64_t ml_dsample_bytes(const ml_dsample *s) {
    int64_t n = (int64_t)sizeof *s + (int64_t)s->cap * (int64_t)sizeof(ml_dval);
    for (int i = 0; i < s->n; i++) {
        if (s->v[i].t) n += (int64_t)s->v[i].t->storage->nbytes;
        if (s->v[i].str) n += (int64_t)strlen(s->v[i].str) + 1;
    }
    return n;
}

ml_dlist *ml_dlist_new(void) {
    ml_dlist *l = calloc(1, sizeof *l);
    if (!l) ml_seterr(ML_ERR_OOM, "data: out of memory (sample list)");
    return l;
}

void ml_dlist_free(ml_dlist *l) {
    if (!l) return;
    for (int i = 0; i < l->n; i++) ml_dsample_free(l->s[i]);
    free(l->s);
    free(l);
}

ml_err ml_dlist_push(ml_dlist *l, ml_dsample *s) {
    if (l->n == l->cap) {
        int nc = l->cap ? 2 * l->cap : 4;
        ml_dsample **ns = realloc(l->s, (size_t)nc * sizeof *ns);
        if (!ns) {
            ml_dsample_free(s);
            return ml_seterr(ML_ERR_OOM, "data: out of memory (sample list)");
        }
        l->s = ns;
        l->cap = nc;
    }
    l->s[l->n++] = s;
    return ML_OK;
}

ml_dlist *ml_dlist_copy(const ml_dlist *l) {
    ml_dlist *c = ml_dlist_new();
    if (!c) return NULL;
    for (int i = 0; i < l->n; i++) {
        ml_dsample *s = ml_dsample_copy(l->s[i]);
        if (!s || ml_dlist_push(c, s)) {
            ml_dlist_free(c);
            return NULL;
        }
    }
    return c;
}

int64_t ml_dlist_bytes(const ml_dlist *l) {
    int64_t n = (int64_t)sizeof *l;
    for (int i = 0; i < l->n; i++) n += ml_dsample_bytes(l->s[i]);
    return n;
}

/* ================================================================ randomness */
static inline uint64_t splitmix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

uint64_t ml_data_mix(uint64_t a, uint64_t b) { return splitmix(splitmix(a) ^ (b * 0xd1b54a32d192ed03ULL + 1)); }

void ml_drng_init(ml_drng *r, uint64_t seed, uint64_t epoch, uint64_t index, uint64_t tidx, uint64_t sub) {
    uint64_t k = ml_data_mix(seed, epoch);
    k = ml_data_mix(k, index);
    k = ml_data_mix(k, tidx);
    k = ml_data_mix(k, sub);
    r->key = k;
    r->ctr = 0;
    r->avail = 0;
}

uint32_t ml_drng_u32(ml_drng *r) {
    if (!r->avail) {
        ml_philox(r->ctr++, r->key, r->buf);
        r->avail = 4;
    }
    return r->buf[4 - r->avail--];
}

double ml_drng_uniform(ml_drng *r) {
    uint64_t a = ml_drng_u32(r) >> 5, b = ml_drng_u32(r) >> 6;
    return (double)(a * 67108864ULL + b) * (1.0 / 9007199254740992.0);
}

double ml_drng_range(ml_drng *r, double lo, double hi) { return lo + (hi - lo) * ml_drng_uniform(r); }

int64_t ml_drng_randint(ml_drng *r, int64_t n) {
    if (n <= 1) return 0;
    if (n <= (int64_t)UINT32_MAX) {
        /* Lemire: unbiased multiply-shift with rejection */
        uint32_t range = (uint32_t)n;
        uint64_t m = (uint64_t)ml_drng_u32(r) * range;
        uint32_t low = (uint32_t)m;
        if (low < range) {
            uint32_t t = (uint32_t)(-range) % range;
            while (low < t) {
                m = (uint64_t)ml_drng_u32(r) * range;
                low = (uint32_t)m;
            }
        }
        return (int64_t)(m >> 32);
    }
    int64_t v = (int64_t)(ml_drng_uniform(r) * (double)n);
    return v >= n ? n - 1 : v;
}

double ml_drng_normal(ml_drng *r) {
    double u1 = 1.0 - ml_drng_uniform(r), u2 = ml_drng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

void ml_drng_fill_normal(ml_drng *r, float *out, int64_t n, double mean, double std) {
    int64_t nb = (n + 3) / 4;
    uint64_t c0 = r->ctr, key = r->key;
    r->ctr += (uint64_t)nb;
    r->avail = 0;
    float fm = (float)mean, fs = (float)std;
    int nt = ml_data_threads(n);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t b = 0; b < nb; b++) {
        uint32_t u[4];
        ml_philox(c0 + (uint64_t)b, key, u);
        float z[4];
        for (int h = 0; h < 2; h++) {
            float u1 = ((float)(u[2 * h] >> 8) + 0.5f) * (1.0f / 16777216.0f);
            float u2 = (float)(u[2 * h + 1] >> 8) * (1.0f / 16777216.0f);
            float rad = sqrtf(-2.0f * logf(u1));
            float th = 6.28318530717958647692f * u2;
            z[2 * h] = rad * cosf(th);
            z[2 * h + 1] = rad * sinf(th);
        }
        int64_t i0 = 4 * b;
        for (int q = 0; q < 4 && i0 + q < n; q++) out[i0 + q] = fm + fs * z[q];
    }
}

/* ================================================================== helpers */
int ml_data_threads(int64_t work) {
    if (work < 65536) return 1;
    int nt = ml_num_threads();
    return nt < 1 ? 1 : nt;
}

void ml_affine_identity16(double a[16]) {
    memset(a, 0, 16 * sizeof *a);
    a[0] = a[5] = a[10] = a[15] = 1;
}

void ml_affine_mul16(double out[16], const double a[16], const double b[16]) {
    double r[16];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            double s = 0;
            for (int k = 0; k < 4; k++) s += a[i * 4 + k] * b[k * 4 + j];
            r[i * 4 + j] = s;
        }
    memcpy(out, r, sizeof r);
}

void ml_affine_translate_by(double a[16], const double t[3]) {
    double m[16];
    ml_affine_identity16(m);
    m[3] = t[0];
    m[7] = t[1];
    m[11] = t[2];
    ml_affine_mul16(a, a, m);
}

/* Copy the box [lo, lo + n) (every channel) of a float32 [C, X, Y, Z] tensor with any strides into the
 * contiguous destination [C, D0, D1, D2] at offset off. Tiles over the destination's fastest axis (Z)
 * and the source's fastest spatial axis, so a file-order (X fastest) volume is transposed through the
 * cache. */
void ml_data_copy_box(float *dst, const int64_t dsh[3], const int64_t off[3], const ml_tensor *t, const int64_t lo[3],
                      const int64_t n[3]) {
    const int64_t *st = t->stride;
    int64_t C = t->shape[0];
    if (C == 0 || n[0] <= 0 || n[1] <= 0 || n[2] <= 0) return;
    const float *src = (const float *)ml_tensor_data(t) + lo[0] * st[1] + lo[1] * st[2] + lo[2] * st[3];
    int64_t ds[3] = {dsh[1] * dsh[2], dsh[2], 1}, dc = dsh[0] * dsh[1] * dsh[2];
    float *d00 = dst + off[0] * ds[0] + off[1] * ds[1] + off[2];
    int64_t work = C * n[0] * n[1] * n[2];
    /* source-fast spatial axis */
    int fa = 2;
    int64_t best = llabs(st[3]);
    for (int a = 0; a < 2; a++)
        if (n[a] > 1 && llabs(st[a + 1]) < best) {
            best = llabs(st[a + 1]);
            fa = a;
        }
    int nt = ml_data_threads(work);
    if (fa == 2 || n[2] == 1) {
        int64_t rows = C * n[0] * n[1];
        bool dense = st[3] == 1;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t r = 0; r < rows; r++) {
            int64_t c = r / (n[0] * n[1]), x = (r / n[1]) % n[0], y = r % n[1];
            const float *s = src + c * st[0] + x * st[1] + y * st[2];
            float *d = d00 + c * dc + x * ds[0] + y * ds[1];
            if (dense) memcpy(d, s, (size_t)n[2] * sizeof(float));
            else
                for (int64_t z = 0; z < n[2]; z++) d[z] = s[z * st[3]];
        }
        return;
    }
    int oa = fa == 0 ? 1 : 0; /* the other spatial axis (outer) */
    const int64_t TB = 32;
    int64_t outer = C * n[oa];
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t r = 0; r < outer; r++) {
        int64_t c = r / n[oa], o = r % n[oa];
        const float *s0 = src + c * st[0] + o * st[oa + 1];
        float *d0 = d00 + c * dc + o * ds[oa];
        for (int64_t f0 = 0; f0 < n[fa]; f0 += TB)
            for (int64_t z0 = 0; z0 < n[2]; z0 += TB) {
                int64_t f1 = f0 + TB < n[fa] ? f0 + TB : n[fa], z1 = z0 + TB < n[2] ? z0 + TB : n[2];
                for (int64_t z = z0; z < z1; z++) {
                    const float *s = s0 + z * st[3];
                    float *d = d0 + z;
                    for (int64_t f = f0; f < f1; f++) d[f * ds[fa]] = s[f * st[fa + 1]];
                }
            }
    }
}

void ml_data_copy_c4(float *dst, const ml_tensor *t) {
    int64_t z[3] = {0, 0, 0};
    if (ml_tensor_is_contiguous(t)) {
        memcpy(dst, ml_tensor_data(t), (size_t)ml_tensor_numel(t) * sizeof(float));
        return;
    }
    ml_data_copy_box(dst, t->shape + 1, z, t, z, t->shape + 1);
}

ml_err ml_data_c4(ml_tensor **out, ml_tensor *t) {
    if (t->dtype == ML_F32 && ml_tensor_is_contiguous(t)) {
        ml_tensor_retain(t);
        *out = t;
        return ML_OK;
    }
    ml_tensor *f = NULL;
    ml_err e = ML_OK;
    if (t->dtype != ML_F32) {
        if ((e = ml_to_dtype(&f, t, ML_F32))) return e;
        t = f;
    }
    if (ml_tensor_is_contiguous(t)) {
        *out = t;
        return ML_OK;
    }
    ml_tensor *o = NULL;
    if ((e = ml_tensor_empty(&o, ML_F32, 4, t->shape))) {
        ml_tensor_release(f);
        return e;
    }
    ml_data_copy_c4((float *)ml_tensor_data(o), t);
    ml_tensor_release(f);
    *out = o;
    return ML_OK;
}

bool ml_data_exclusive(const ml_tensor *t) {
    return __atomic_load_n(&t->refcount, __ATOMIC_ACQUIRE) == 1 &&
           __atomic_load_n(&t->storage->refcount, __ATOMIC_ACQUIRE) == 1 && ml_tensor_is_contiguous(t) &&
           t->dtype == ML_F32 && !t->requires_grad;
}

double ml_data_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

ml_err ml_data_listdir(const char *dir, char ***names, int *n) {
    *names = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return ml_seterr(ML_ERR_IO, "data: %s: cannot open directory: %s", dir, strerror(errno));
    char **v = NULL;
    int cnt = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        if (cnt == cap) {
            int nc = cap ? 2 * cap : 64;
            char **nv = realloc(v, (size_t)nc * sizeof *nv);
            if (!nv) goto oom;
            v = nv;
            cap = nc;
        }
        if (!(v[cnt] = strdup(de->d_name))) goto oom;
        cnt++;
    }
    closedir(d);
    if (cnt) qsort(v, (size_t)cnt, sizeof *v, cmp_str);
    *names = v;
    *n = cnt;
    return ML_OK;
oom:
    closedir(d);
    ml_data_free_names(v, cnt);
    return ml_seterr(ML_ERR_OOM, "data: %s: out of memory listing the directory", dir);
}

void ml_data_free_names(char **names, int n) {
    if (!names) return;
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}

/* ================================================================== collate */
void ml_batch_free(ml_batch *b) {
    if (!b) return;
    for (int i = 0; i < b->nf; i++) {
        ml_cfield *f = &b->f[i];
        ml_tensor_release(f->t);
        ml_tensor_release(f->affine);
        if (f->strs) {
            for (int64_t j = 0; j < b->B; j++) free(f->strs[j]);
            free(f->strs);
        }
    }
    free(b->f);
    free(b);
}

static const char *kind_name(int k) {
    switch (k) {
    case ML_DV_STR: return "a string";
    case ML_DV_NUM: return "a number";
    case ML_DV_INT: return "an integer";
    case ML_DV_BOOL: return "a boolean";
    case ML_DV_TENSOR: return "an image";
    default: return "nothing";
    }
}

static ml_err collate_tensor(ml_cfield *f, ml_dsample *const *s, int64_t n, int mode) {
    const ml_dval *v0 = ml_dsample_cget(s[0], f->key);
    int64_t mx[4];
    for (int a = 0; a < 4; a++) mx[a] = v0->t->shape[a];
    for (int64_t i = 1; i < n; i++) {
        const ml_dval *v = ml_dsample_cget(s[i], f->key);
        if (v->t->shape[0] != v0->t->shape[0])
            return ml_seterr(ML_ERR_SHAPE, "collate: key '%s': sample %lld has %lld channels, sample 0 has %lld",
                             f->key, (long long)i, (long long)v->t->shape[0], (long long)v0->t->shape[0]);
        if (v->no_channel != v0->no_channel)
            return ml_seterr(ML_ERR_SHAPE,
                             "collate: key '%s': sample %lld %s a channel dim and sample 0 %s (EnsureChannelFirstd "
                             "missing for some samples?)",
                             f->key, (long long)i, v->no_channel ? "lacks" : "has", v0->no_channel ? "lacks" : "has");
        for (int a = 1; a < 4; a++) {
            if (mode == ML_COLLATE_STACK && v->t->shape[a] != v0->t->shape[a]) {
                const int64_t *sa = v->t->shape + (v->no_channel ? 1 : 0), *sb = v0->t->shape + (v0->no_channel ? 1 : 0);
                int nd = v->no_channel ? 3 : 4;
                return ml_seterr(ML_ERR_SHAPE,
                                 "collate: key '%s': cannot stack sample %lld of shape %s with sample 0 of shape %s "
                                 "(crop or pad to one size, e.g. RandSpatialCropd / SpatialPadd, or use "
                                 "collate=\"pad\")",
                                 f->key, (long long)i, ml_shape_str(nd, sa), ml_shape_str(nd, sb));
            }
            if (v->t->shape[a] > mx[a]) mx[a] = v->t->shape[a];
        }
    }
    int64_t shp[5] = {n, mx[0], mx[1], mx[2], mx[3]};
    ml_err e;
    if (v0->no_channel) {
        int64_t s4[4] = {n, mx[1], mx[2], mx[3]};
        e = ml_tensor_empty(&f->t, ML_F32, 4, s4);
    } else {
        e = ml_tensor_empty(&f->t, ML_F32, 5, shp);
    }
    if (e) return e;
    int64_t ash[3] = {n, 4, 4};
    if ((e = ml_tensor_empty(&f->affine, ML_F64, 3, ash))) return e;
    f->strs = calloc((size_t)n, sizeof *f->strs);
    if (!f->strs) return ml_seterr(ML_ERR_OOM, "collate: out of memory");
    f->no_channel = v0->no_channel;
    float *dst = (float *)ml_tensor_data(f->t);
    double *aff = (double *)ml_tensor_data(f->affine);
    int64_t per = mx[0] * mx[1] * mx[2] * mx[3];
    for (int64_t i = 0; i < n; i++) {
        const ml_dval *v = ml_dsample_cget(s[i], f->key);
        float *d = dst + i * per;
        double *A = aff + 16 * i;
        memcpy(A, v->affine, sizeof v->affine);
        if (v->str && !(f->strs[i] = strdup(v->str))) return ml_seterr(ML_ERR_OOM, "collate: out of memory");
        bool same = true;
        for (int a = 1; a < 4; a++) same = same && v->t->shape[a] == mx[a];
        if (same) {
            ml_data_copy_c4(d, v->t);
            continue;
        }
        /* pad symmetrically with zeros (MONAI pad_list_data_collate: SpatialPad method symmetric) */
        memset(d, 0, (size_t)per * sizeof(float));
        int64_t bef[3], zero[3] = {0, 0, 0};
        for (int a = 0; a < 3; a++) bef[a] = (mx[a + 1] - v->t->shape[a + 1]) / 2;
        ml_data_copy_box(d, mx + 1, bef, v->t, zero, v->t->shape + 1);
        double t[3] = {-(double)bef[0], -(double)bef[1], -(double)bef[2]};
        ml_affine_translate_by(A, t);
    }
    return ML_OK;
}

ml_err ml_collate(ml_batch **out, ml_dsample *const *s, int64_t n, int mode) {
    *out = NULL;
    if (n <= 0) return ml_seterr(ML_ERR_ARG, "collate: no samples");
    ml_batch *b = calloc(1, sizeof *b);
    if (!b) return ml_seterr(ML_ERR_OOM, "collate: out of memory");
    b->B = n;
    const ml_dsample *s0 = s[0];
    b->f = calloc((size_t)(s0->n ? s0->n : 1), sizeof *b->f);
    if (!b->f) {
        free(b);
        return ml_seterr(ML_ERR_OOM, "collate: out of memory");
    }
    ml_err e = ML_OK;
    for (int64_t i = 1; i < n; i++)
        if (s[i]->n != s0->n) {
            /* find a key that differs */
            for (int k = 0; k < s0->n; k++)
                if (!ml_dsample_cget(s[i], s0->v[k].key)) {
                    e = ml_seterr(ML_ERR_ARG, "collate: key '%s' is missing in sample %lld (present in sample 0)",
                                  s0->v[k].key, (long long)i);
                    goto fail;
                }
            for (int k = 0; k < s[i]->n; k++)
                if (!ml_dsample_cget(s0, s[i]->v[k].key)) {
                    e = ml_seterr(ML_ERR_ARG, "collate: key '%s' is in sample %lld but not in sample 0",
                                  s[i]->v[k].key, (long long)i);
                    goto fail;
                }
        }
    for (int k = 0; k < s0->n; k++) {
        ml_cfield *f = &b->f[b->nf++];
        const ml_dval *v0 = &s0->v[k];
        memcpy(f->key, v0->key, sizeof f->key);
        f->kind = v0->kind;
        for (int64_t i = 1; i < n; i++) {
            const ml_dval *v = ml_dsample_cget(s[i], f->key);
            if (!v) {
                e = ml_seterr(ML_ERR_ARG, "collate: key '%s' is missing in sample %lld (present in sample 0)", f->key,
                              (long long)i);
                goto fail;
            }
            bool numeric = (v->kind == ML_DV_NUM || v->kind == ML_DV_INT) && (f->kind == ML_DV_NUM || f->kind == ML_DV_INT);
            if (v->kind != f->kind && !numeric) {
                e = ml_seterr(ML_ERR_ARG, "collate: key '%s' is %s in sample %lld and %s in sample 0", f->key,
                              kind_name(v->kind), (long long)i, kind_name(v0->kind));
                goto fail;
            }
            if (numeric && v->kind == ML_DV_NUM) f->kind = ML_DV_NUM;
        }
        switch (f->kind) {
        case ML_DV_TENSOR:
            if ((e = collate_tensor(f, s, n, mode))) goto fail;
            break;
        case ML_DV_STR:
            f->strs = calloc((size_t)n, sizeof *f->strs);
            if (!f->strs) {
                e = ml_seterr(ML_ERR_OOM, "collate: out of memory");
                goto fail;
            }
            for (int64_t i = 0; i < n; i++)
                if (!(f->strs[i] = strdup(ml_dsample_cget(s[i], f->key)->str))) {
                    e = ml_seterr(ML_ERR_OOM, "collate: out of memory");
                    goto fail;
                }
            break;
        case ML_DV_NUM:
        case ML_DV_INT:
        case ML_DV_BOOL: {
            ml_dtype dt = f->kind == ML_DV_NUM ? ML_F64 : f->kind == ML_DV_INT ? ML_I64 : ML_BOOL;
            if ((e = ml_tensor_empty(&f->t, dt, 1, &n))) goto fail;
            void *d = ml_tensor_data(f->t);
            for (int64_t i = 0; i < n; i++) {
                const ml_dval *v = ml_dsample_cget(s[i], f->key);
                if (dt == ML_F64) ((double *)d)[i] = v->kind == ML_DV_INT ? (double)v->inum : v->num;
                else if (dt == ML_I64) ((int64_t *)d)[i] = v->inum;
                else ((bool *)d)[i] = v->b;
            }
            break;
        }
        default: break;
        }
    }
    *out = b;
    return ML_OK;
fail:
    ml_batch_free(b);
    return e;
}
