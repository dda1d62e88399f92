/* Label-map tools: largest connected component per label, bounding boxes, per-label statistics
 * (ml_volume_ops.h). Voxels are visited in C order of the logical index (i slowest, k fastest),
 * reading the data through its strides. */
#include "volume/ml_volume_ops.h"
#include "tensor/ml_iter.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* ------------------------------------------------------------------ helpers */
/* row of n elements (element stride st) starting at element offset off -> doubles */
static void load_row(double *dst, const ml_tensor *t, int64_t off, int64_t st, int64_t n) {
    const char *b = (const char *)t->storage->data;
    switch ((ml_dtype)t->dtype) {
    case ML_F32: for (int64_t i = 0; i < n; i++) dst[i] = ((const float *)b)[off + i * st]; break;
    case ML_F64: for (int64_t i = 0; i < n; i++) dst[i] = ((const double *)b)[off + i * st]; break;
    case ML_I32: for (int64_t i = 0; i < n; i++) dst[i] = ((const int32_t *)b)[off + i * st]; break;
    case ML_I64: for (int64_t i = 0; i < n; i++) dst[i] = (double)((const int64_t *)b)[off + i * st]; break;
    case ML_U8:
    case ML_BOOL: for (int64_t i = 0; i < n; i++) dst[i] = ((const uint8_t *)b)[off + i * st]; break;
    default: for (int64_t i = 0; i < n; i++) dst[i] = ml_load_elem(b, (ml_dtype)t->dtype, off + i * st); break;
    }
}

static ml_err check_label_volume(const char *op, ml_volume *v) {
    if (v->data->ndim != 3)
        return ml_seterr(ML_ERR_SHAPE, "%s: needs a 3-D label volume, got shape %s", op,
                         ml_shape_str(v->data->ndim, v->data->shape));
    return ml_vol_check_data(op, v->data);
}

/* ---- a small open-addressing map int64 -> slot index (for label values) */
typedef struct {
    int64_t *keys;
    int32_t *slot; /* -1 empty */
    int64_t cap, n;
} lmap;

static int lmap_init(lmap *m, int64_t cap) {
    m->cap = 16;
    while (m->cap < 2 * cap) m->cap *= 2;
    m->n = 0;
    m->keys = malloc((size_t)m->cap * sizeof(int64_t));
    m->slot = malloc((size_t)m->cap * sizeof(int32_t));
    if (!m->keys || !m->slot) {
        free(m->keys);
        free(m->slot);
        m->keys = NULL;
        m->slot = NULL;
        return -1;
    }
    for (int64_t i = 0; i < m->cap; i++) m->slot[i] = -1;
    return 0;
}

static void lmap_free(lmap *m) {
    free(m->keys);
    free(m->slot);
    m->keys = NULL;
    m->slot = NULL;
}

static inline uint64_t hash64(int64_t k) {
    uint64_t x = (uint64_t)k;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}

/* slot of key, or -1 */
static int32_t lmap_get(const lmap *m, int64_t k) {
    uint64_t i = hash64(k) & (uint64_t)(m->cap - 1);
    while (m->slot[i] >= 0) {
        if (m->keys[i] == k) return m->slot[i];
        i = (i + 1) & (uint64_t)(m->cap - 1);
    }
    return -1;
}

/* slot of key, inserting it with slot index m->n when new (*is_new set); -2 on OOM */
static int32_t lmap_put(lmap *m, int64_t k, bool *is_new) {
    *is_new = false;
    if (2 * (m->n + 1) > m->cap) {
        lmap g;
        if (lmap_init(&g, m->cap) != 0) return -2;
        for (int64_t i = 0; i < m->cap; i++)
            if (m->slot[i] >= 0) {
                uint64_t j = hash64(m->keys[i]) & (uint64_t)(g.cap - 1);
                while (g.slot[j] >= 0) j = (j + 1) & (uint64_t)(g.cap - 1);
                g.keys[j] = m->keys[i];
                g.slot[j] = m->slot[i];
            }
        g.n = m->n;
        lmap_free(m);
        *m = g;
    }
    uint64_t i = hash64(k) & (uint64_t)(m->cap - 1);
    while (m->slot[i] >= 0) {
        if (m->keys[i] == k) return m->slot[i];
        i = (i + 1) & (uint64_t)(m->cap - 1);
    }
    m->keys[i] = k;
    m->slot[i] = (int32_t)m->n;
    *is_new = true;
    return (int32_t)m->n++;
}

/* ================================================================ bounding box */
static ml_err bbox_impl(ml_volume *v, bool use_label, int64_t label, int64_t lo[3], int64_t hi[3], bool *found) {
    const char *op = "bbox";
    *found = false;
    ml_err e = check_label_volume(op, v);
    if (e) return e;
    ml_tensor *t = v->data;
    int64_t X = t->shape[0], Y = t->shape[1], Z = t->shape[2];
    int64_t mn[3] = {INT64_MAX, INT64_MAX, INT64_MAX}, mx[3] = {-1, -1, -1};
    int nt = ml_vol_threads(X * Y * Z);
    int oom = 0;
    double lab = (double)label;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int64_t tmn[3] = {INT64_MAX, INT64_MAX, INT64_MAX}, tmx[3] = {-1, -1, -1};
        double *row = malloc((size_t)(Z ? Z : 1) * sizeof(double));
        if (!row) {
#pragma omp atomic write
            oom = 1;
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < X * Y; r++) {
            if (!row) continue;
            int64_t i = r / Y, j = r % Y;
            load_row(row, t, t->offset + i * t->stride[0] + j * t->stride[1], t->stride[2], Z);
            int64_t k0 = -1, k1 = -1;
            for (int64_t k = 0; k < Z; k++)
                if (use_label ? row[k] == lab : row[k] != 0) {
                    if (k0 < 0) k0 = k;
                    k1 = k;
                }
            if (k0 < 0) continue;
            if (i < tmn[0]) tmn[0] = i;
            if (i > tmx[0]) tmx[0] = i;
            if (j < tmn[1]) tmn[1] = j;
            if (j > tmx[1]) tmx[1] = j;
            if (k0 < tmn[2]) tmn[2] = k0;
            if (k1 > tmx[2]) tmx[2] = k1;
        }
        free(row);
#pragma omp critical(ml_vol_bbox)
        for (int a = 0; a < 3; a++) {
            if (tmn[a] < mn[a]) mn[a] = tmn[a];
            if (tmx[a] > mx[a]) mx[a] = tmx[a];
        }
    }
    if (oom) return ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
    if (mx[0] < 0) return ML_OK;
    for (int a = 0; a < 3; a++) {
        lo[a] = mn[a];
        hi[a] = mx[a] + 1;
    }
    *found = true;
    return ML_OK;
}

ml_err ml_volume_bbox(ml_volume *v, bool use_label, int64_t label, int64_t lo[3], int64_t hi[3], bool *found) {
    bool prev = ml_set_grad_enabled(false);
    ml_err e = bbox_impl(v, use_label, label, lo, hi, found);
    ml_set_grad_enabled(prev);
    return e;
}

/* ========================================================= largest component */
/* labels of v as int32 in C order; values not selected (sel != NULL and not in it) become 0.
 * Error for non-integral or out-of-range values. */
static ml_err labels_i32(const char *op, ml_tensor *t, const lmap *sel, int32_t *out) {
    int64_t X = t->shape[0], Y = t->shape[1], Z = t->shape[2];
    int nt = ml_vol_threads(X * Y * Z);
    int64_t bad = -1;
    double badv = 0;
    int oom = 0;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        double *row = malloc((size_t)(Z ? Z : 1) * sizeof(double));
        if (!row) {
#pragma omp atomic write
            oom = 1;
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < X * Y; r++) {
            if (!row) continue;
            int64_t i = r / Y, j = r % Y;
            load_row(row, t, t->offset + i * t->stride[0] + j * t->stride[1], t->stride[2], Z);
            int32_t *o = out + r * Z;
            int64_t lastk = INT64_MIN;
            int32_t lastv = 0;
            for (int64_t k = 0; k < Z; k++) {
                double x = row[k];
                if (x == 0) {
                    o[k] = 0;
                    continue;
                }
                if (!(x == floor(x)) || x < -2147483647.0 || x > 2147483647.0) {
#pragma omp critical(ml_vol_badlabel)
                    if (bad < 0 || r * Z + k < bad) {
                        bad = r * Z + k;
                        badv = x;
                    }
                    o[k] = 0;
                    continue;
                }
                int32_t lv = (int32_t)x;
                if (sel) {
                    if (lv != lastk) {
                        lastk = lv;
                        lastv = lmap_get(sel, lv) >= 0 ? lv : 0;
                    }
                    lv = lastv;
                }
                o[k] = lv;
            }
        }
        free(row);
    }
    if (oom) return ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
    if (bad >= 0)
        return ml_seterr(ML_ERR_ARG,
                         "%s: label values must be integers in [-2147483647, 2147483647]; voxel (%lld, %lld, %lld) "
                         "holds %g",
                         op, (long long)(bad / (Y * Z)), (long long)(bad / Z % Y), (long long)(bad % Z), badv);
    return ML_OK;
}

static inline uint32_t uf_find(uint32_t *par, uint32_t x) {
    while (par[x] != x) {
        par[x] = par[par[x]];
        x = par[x];
    }
    return x;
}

static inline void uf_union(uint32_t *par, uint32_t a, uint32_t b) {
    a = uf_find(par, a);
    b = uf_find(par, b);
    if (a == b) return;
    if (a < b) par[b] = a;
    else par[a] = b;
}

typedef struct {
    int di, dj, dk;
} nb_off;

/* the backward half of the neighbourhood (earlier in C order) */
static int backward_neighbours(int connectivity, nb_off *nb) {
    int n = 0;
    for (int di = -1; di <= 0; di++)
        for (int dj = -1; dj <= 1; dj++)
            for (int dk = -1; dk <= 1; dk++) {
                bool back = di < 0 || (di == 0 && (dj < 0 || (dj == 0 && dk < 0)));
                if (!back) continue;
                int l1 = abs(di) + abs(dj) + abs(dk);
                if ((connectivity == 6 && l1 > 1) || (connectivity == 18 && l1 > 2)) continue;
                nb[n].di = di;
                nb[n].dj = dj;
                nb[n].dk = dk;
                n++;
            }
    return n;
}

/* union voxel (i,j,k) with its backward neighbours whose i >= imin */
static inline void link_voxel(uint32_t *par, const int32_t *lab, int64_t i, int64_t j, int64_t k, int64_t Y, int64_t Z,
                              int64_t imin, const nb_off *nb, int nnb) {
    int64_t idx = (i * Y + j) * Z + k;
    int32_t l = lab[idx];
    for (int q = 0; q < nnb; q++) {
        int64_t ii = i + nb[q].di, jj = j + nb[q].dj, kk = k + nb[q].dk;
        if (ii < imin || jj < 0 || jj >= Y || kk < 0 || kk >= Z) continue;
        int64_t n = (ii * Y + jj) * Z + kk;
        if (lab[n] == l) uf_union(par, (uint32_t)idx, (uint32_t)n);
    }
}

static ml_err largest_component_impl(ml_volume **out, ml_volume *v, int connectivity, const int64_t *labels,
                                     int nlabels) {
    const char *op = "largest_component";
    if (connectivity != 6 && connectivity != 18 && connectivity != 26)
        return ml_seterr(ML_ERR_ARG, "%s: connectivity must be 6, 18 or 26, got %d", op, connectivity);
    ml_err e = check_label_volume(op, v);
    if (e) return e;
    ml_tensor *t = v->data;
    int64_t X = t->shape[0], Y = t->shape[1], Z = t->shape[2], N = X * Y * Z;
    if (N >= (int64_t)UINT32_MAX)
        return ml_seterr(ML_ERR_ARG, "%s: volume of %lld voxels is too large (at most 2^32 - 1)", op, (long long)N);
    lmap sel = {0}, lm = {0};
    int32_t *lab = NULL, *clab = NULL;
    uint32_t *par = NULL, *cnt = NULL;
    uint8_t *keep = NULL;
    int64_t *best = NULL;
    ml_tensor *res = NULL;
    if (labels) {
        if (lmap_init(&sel, nlabels) != 0) goto oom;
        for (int i = 0; i < nlabels; i++) {
            bool nw;
            if (labels[i] == 0 || labels[i] < -2147483647LL || labels[i] > 2147483647LL) {
                e = ml_seterr(ML_ERR_ARG, "%s: labels[%d] = %lld is not a non-zero int32 label", op, i + 1,
                              (long long)labels[i]);
                goto done;
            }
            if (lmap_put(&sel, labels[i], &nw) < 0) goto oom;
        }
    }
    lab = malloc((size_t)(N ? N : 1) * sizeof(int32_t));
    par = malloc((size_t)(N ? N : 1) * sizeof(uint32_t));
    if (!lab || !par) goto oom;
    if ((e = labels_i32(op, t, labels ? &sel : NULL, lab))) goto done;

    nb_off nb[13];
    int nnb = backward_neighbours(connectivity, nb);
    /* slabs along i on threads; each slab links only inside itself */
    int nt = ml_vol_threads(N);
    if (nt > X) nt = (int)X;
    if (nt < 1) nt = 1;
#pragma omp parallel for num_threads(nt) schedule(static, 1) if (nt > 1)
    for (int s = 0; s < nt; s++) {
        int64_t i0 = X * s / nt, i1 = X * (s + 1) / nt;
        for (int64_t i = i0; i < i1; i++)
            for (int64_t j = 0; j < Y; j++)
                for (int64_t k = 0; k < Z; k++) {
                    int64_t idx = (i * Y + j) * Z + k;
                    par[idx] = (uint32_t)idx;
                    if (lab[idx] != 0) link_voxel(par, lab, i, j, k, Y, Z, i0, nb, nnb);
                }
    }
    /* slab boundaries: the first plane of each slab with the plane before it */
    for (int s = 1; s < nt; s++) {
        int64_t i = X * s / nt;
        for (int64_t j = 0; j < Y; j++)
            for (int64_t k = 0; k < Z; k++)
                if (lab[(i * Y + j) * Z + k] != 0) link_voxel(par, lab, i, j, k, Y, Z, i - 1, nb, nnb);
    }
    /* compact component ids in C order (roots come before their members: par[x] <= x) */
    int64_t ncomp = 0;
    for (int64_t x = 0; x < N; x++) {
        if (lab[x] == 0) continue;
        if (par[x] == (uint32_t)x) par[x] = (uint32_t)ncomp++;
        else par[x] = par[par[x]];
    }
    cnt = calloc((size_t)(ncomp ? ncomp : 1), sizeof(uint32_t));
    clab = malloc((size_t)(ncomp ? ncomp : 1) * sizeof(int32_t));
    keep = calloc((size_t)(ncomp ? ncomp : 1), 1);
    if (!cnt || !clab || !keep) goto oom;
    for (int64_t x = 0; x < N; x++)
        if (lab[x] != 0) {
            cnt[par[x]]++;
            clab[par[x]] = lab[x];
        }
    /* the largest component of each label (first in C order on ties) */
    if (lmap_init(&lm, 64) != 0) goto oom;
    int64_t bcap = 64;
    best = malloc((size_t)bcap * sizeof(int64_t));
    if (!best) goto oom;
    for (int64_t c = 0; c < ncomp; c++) {
        bool nw;
        int32_t s = lmap_put(&lm, clab[c], &nw);
        if (s < 0) goto oom;
        if (s >= bcap) {
            int64_t *nbst = realloc(best, (size_t)(2 * bcap) * sizeof(int64_t));
            if (!nbst) goto oom;
            best = nbst;
            bcap *= 2;
        }
        if (nw || cnt[c] > cnt[best[s]]) best[s] = c;
    }
    for (int64_t s = 0; s < lm.n; s++) keep[best[s]] = 1;
    /* output: a copy of the input without the other components */
    if ((e = ml_vol_empty_like_order(&res, t, (ml_dtype)t->dtype, t->shape, NULL))) goto done;
    {
        size_t es = ml_dtype_size((ml_dtype)t->dtype);
        ml_vol_gather_copy(res, (const char *)t->storage->data + t->offset * (int64_t)es, t->stride, es);
        char *rb = (char *)ml_tensor_data(res);
        char zero[8] = {0};
        ml_store_elem(zero, (ml_dtype)t->dtype, 0, 0.0);
        int nt2 = ml_vol_threads(N);
#pragma omp parallel for num_threads(nt2) schedule(static) if (nt2 > 1)
        for (int64_t r = 0; r < X * Y; r++) {
            int64_t i = r / Y, j = r % Y;
            for (int64_t k = 0; k < Z; k++) {
                int64_t x = r * Z + k;
                if (lab[x] != 0 && !keep[par[x]])
                    memcpy(rb + (i * res->stride[0] + j * res->stride[1] + k * res->stride[2]) * (int64_t)es, zero,
                           es);
            }
        }
    }
    e = ml_volume_with_data(out, v, res, NULL);
    goto done;
oom:
    e = ml_seterr(ML_ERR_OOM, "%s: out of memory (%lld voxels)", op, (long long)N);
done:
    lmap_free(&sel);
    lmap_free(&lm);
    free(lab);
    free(par);
    free(cnt);
    free(clab);
    free(keep);
    free(best);
    ml_tensor_release(res);
    return e;
}

ml_err ml_volume_largest_component(ml_volume **out, ml_volume *v, int connectivity, const int64_t *labels,
                                   int nlabels) {
    *out = NULL;
    bool prev = ml_set_grad_enabled(false);
    ml_err e = largest_component_impl(out, v, connectivity, labels, nlabels);
    ml_set_grad_enabled(prev);
    return e;
}

/* ================================================================ label stats */
typedef struct {
    int64_t label, n;
    double si, sj, sk;
    int64_t lo[3], hi[3];
} acc_t;

typedef struct {
    lmap map;
    acc_t *acc;
    int64_t cap;
    int oom;
} acc_set;

static acc_t *acc_get(acc_set *s, int64_t label) {
    bool nw;
    int32_t k = lmap_put(&s->map, label, &nw);
    if (k < 0) return NULL;
    if (k >= s->cap) {
        int64_t nc = s->cap ? 2 * s->cap : 64;
        acc_t *na = realloc(s->acc, (size_t)nc * sizeof(acc_t));
        if (!na) return NULL;
        s->acc = na;
        s->cap = nc;
    }
    acc_t *a = &s->acc[k];
    if (nw) {
        memset(a, 0, sizeof *a);
        a->label = label;
        for (int d = 0; d < 3; d++) {
            a->lo[d] = INT64_MAX;
            a->hi[d] = -1;
        }
    }
    return a;
}

static int cmp_stat(const void *a, const void *b) {
    int64_t x = ((const ml_label_stat *)a)->label, y = ((const ml_label_stat *)b)->label;
    return x < y ? -1 : x > y;
}

static ml_err label_stats_impl(ml_volume *v, ml_label_stat **stats, int *nout) {
    const char *op = "label_stats";
    *stats = NULL;
    *nout = 0;
    ml_err e = check_label_volume(op, v);
    if (e) return e;
    ml_tensor *t = v->data;
    int64_t X = t->shape[0], Y = t->shape[1], Z = t->shape[2];
    int nt = ml_vol_threads(X * Y * Z);
    acc_set *sets = calloc((size_t)nt, sizeof(acc_set));
    if (!sets) return ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
    int64_t bad = -1;
    double badv = 0;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        acc_set *s = &sets[tid];
        double *row = malloc((size_t)(Z ? Z : 1) * sizeof(double));
        if (!row || lmap_init(&s->map, 64) != 0) s->oom = 1;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < X * Y; r++) {
            if (s->oom) continue;
            int64_t i = r / Y, j = r % Y;
            load_row(row, t, t->offset + i * t->stride[0] + j * t->stride[1], t->stride[2], Z);
            acc_t *a = NULL;
            double alab = 0;
            for (int64_t k = 0; k < Z; k++) {
                double x = row[k];
                if (x == 0) continue;
                if (!(x == floor(x)) || fabs(x) > 9.0e15) {
#pragma omp critical(ml_vol_badstat)
                    if (bad < 0 || r * Z + k < bad) {
                        bad = r * Z + k;
                        badv = x;
                    }
                    continue;
                }
                if (!a || x != alab) {
                    a = acc_get(s, (int64_t)x);
                    alab = x;
                    if (!a) {
                        s->oom = 1;
                        break;
                    }
                }
                a->n++;
                a->si += (double)i;
                a->sj += (double)j;
                a->sk += (double)k;
                if (i < a->lo[0]) a->lo[0] = i;
                if (i > a->hi[0]) a->hi[0] = i;
                if (j < a->lo[1]) a->lo[1] = j;
                if (j > a->hi[1]) a->hi[1] = j;
                if (k < a->lo[2]) a->lo[2] = k;
                if (k > a->hi[2]) a->hi[2] = k;
            }
        }
        free(row);
    }
    acc_set all = {0};
    int oom = 0;
    for (int s = 0; s < nt; s++) oom |= sets[s].oom;
    if (!oom && lmap_init(&all.map, 64) != 0) oom = 1;
    for (int s = 0; s < nt && !oom; s++)
        for (int64_t k = 0; k < sets[s].map.n; k++) {
            acc_t *src = &sets[s].acc[k], *d = acc_get(&all, src->label);
            if (!d) {
                oom = 1;
                break;
            }
            d->n += src->n;
            d->si += src->si;
            d->sj += src->sj;
            d->sk += src->sk;
            for (int q = 0; q < 3; q++) {
                if (src->lo[q] < d->lo[q]) d->lo[q] = src->lo[q];
                if (src->hi[q] > d->hi[q]) d->hi[q] = src->hi[q];
            }
        }
    for (int s = 0; s < nt; s++) {
        lmap_free(&sets[s].map);
        free(sets[s].acc);
    }
    free(sets);
    if (oom) {
        lmap_free(&all.map);
        free(all.acc);
        return ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
    }
    if (bad >= 0) {
        lmap_free(&all.map);
        free(all.acc);
        return ml_seterr(ML_ERR_ARG, "%s: label values must be integers; voxel (%lld, %lld, %lld) holds %g", op,
                         (long long)(bad / (Y * Z)), (long long)(bad / Z % Y), (long long)(bad % Z), badv);
    }
    int n = (int)all.map.n;
    ml_label_stat *st = n ? malloc((size_t)n * sizeof(ml_label_stat)) : NULL;
    if (n && !st) {
        lmap_free(&all.map);
        free(all.acc);
        return ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
    }
    const double *A = v->affine;
    double det = A[0] * (A[5] * A[10] - A[6] * A[9]) - A[1] * (A[4] * A[10] - A[6] * A[8]) +
                 A[2] * (A[4] * A[9] - A[5] * A[8]);
    double vox_ml = fabs(det) / 1000.0;
    for (int k = 0; k < n; k++) {
        acc_t *a = &all.acc[k];
        ml_label_stat *s = &st[k];
        s->label = a->label;
        s->voxels = a->n;
        s->volume_ml = (double)a->n * vox_ml;
        double c[3] = {a->si / (double)a->n, a->sj / (double)a->n, a->sk / (double)a->n};
        ml_affine_apply(A, c, s->centroid_mm);
        for (int q = 0; q < 3; q++) {
            s->bbox_lo[q] = a->lo[q];
            s->bbox_hi[q] = a->hi[q] + 1;
        }
    }
    lmap_free(&all.map);
    free(all.acc);
    if (n > 1) qsort(st, (size_t)n, sizeof *st, cmp_stat);
    *stats = st;
    *nout = n;
    return ML_OK;
}

ml_err ml_volume_label_stats(ml_volume *v, ml_label_stat **stats, int *n) {
    bool prev = ml_set_grad_enabled(false);
    ml_err e = label_stats_impl(v, stats, n);
    ml_set_grad_enabled(prev);
    return e;
}
