/* Segmentation metrics core: exact EDT, surface voxels, confusion counts, Hausdorff / surface Dice /
 * average surface distance with MONAI's definitions. See ml_metrics.h. Lua-free. */
#include "nn/ml_metrics.h"
#include "nn/ml_nn_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EDT_BLOCK 64                /* lines gathered together along a strided axis (a 512-byte row segment) */
#define MAX_CLASSES 65536           /* above this a "number of classes" is a mistake, not a segmentation */

/* ============================================================================ exact EDT */

/* 1-D nearest site along a contiguous line: squared distance (index distance * s)^2, INFINITY if the
 * line holds no site. */
static void nearest_line(const uint8_t *site, double *d, int64_t n, double s) {
    int64_t last = -1;
    for (int64_t q = 0; q < n; q++) {
        if (site[q]) last = q;
        d[q] = last >= 0 ? (double)(q - last) : INFINITY;
    }
    if (last < 0) return; /* no site: all INFINITY */
    last = -1;
    for (int64_t q = n - 1; q >= 0; q--) {
        if (site[q]) last = q;
        if (last >= 0 && (double)(last - q) < d[q]) d[q] = (double)(last - q);
        double x = d[q] * s;
        d[q] = x * x;
    }
}

/* Lower envelope of the parabolas y = (x - q s)^2 + f[q] over the finite f[q] (Felzenszwalb-Huttenlocher):
 * d[x] = min_q ((x - q) s)^2 + f[q]. f has at least one finite value. Scratch: pv, fv, hv n entries
 * each (position, value and value + position^2 of the envelope's parabolas), z n + 1. */
static void fh_line(const double *f, double *d, int64_t n, double s, double *pv, double *fv, double *hv, double *z) {
    int64_t k = -1;
    for (int64_t q = 0; q < n; q++) {
        double fq = f[q];
        if (fq == INFINITY) continue;
        double pq = (double)q * s, hq = fq + pq * pq, sx = -INFINITY;
        while (k >= 0) {
            sx = (hq - hv[k]) / (2.0 * (pq - pv[k]));
            if (sx > z[k]) break;
            k--;
        }
        k++;
        pv[k] = pq;
        fv[k] = fq;
        hv[k] = hq;
        z[k] = k == 0 ? -INFINITY : sx;
        z[k + 1] = INFINITY;
    }
    int64_t j = 0;
    for (int64_t q = 0; q < n; q++) {
        double x = (double)q * s;
        while (z[j + 1] < x) j++;
        double dx = x - pv[j];
        d[q] = dx * dx + fv[j];
    }
}

ml_err ml_edt_sq(double *out, const uint8_t *sites, int ndim, const int64_t *shape, const double *spacing) {
    if (ndim < 1 || ndim > ML_MAX_DIMS) return ml_seterr(ML_ERR_ARG, "edt: ndim must be 1..%d, got %d", ML_MAX_DIMS, ndim);
    double sp[ML_MAX_DIMS];
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) return ml_seterr(ML_ERR_ARG, "edt: negative size in shape %s", ml_shape_str(ndim, shape));
        numel *= shape[d];
        sp[d] = spacing ? spacing[d] : 1.0;
        if (!(sp[d] > 0) || !isfinite(sp[d]))
            return ml_seterr(ML_ERR_ARG, "edt: spacing[%d] must be a positive finite number, got %g", d, sp[d]);
    }
    if (numel == 0) return ML_OK;
    /* pass 1: the last (contiguous) axis, nearest site by two sweeps */
    int64_t n = shape[ndim - 1], lines = numel / n;
    int nt = nn_threads(numel, lines);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t l = 0; l < lines; l++) nearest_line(sites + l * n, out + l * n, n, sp[ndim - 1]);
    /* the other axes: lower envelope along lines gathered up to EDT_BLOCK at a time; the gather reads
     * contiguous row segments (EDT_BLOCK doubles) so the strided walk stays cache and TLB friendly */
    for (int ax = ndim - 2; ax >= 0; ax--) {
        n = shape[ax];
        if (n == 1) continue;
        int64_t outer = 1, inner = 1;
        for (int d = 0; d < ax; d++) outer *= shape[d];
        for (int d = ax + 1; d < ndim; d++) inner *= shape[d];
        int64_t nblk = (inner + EDT_BLOCK - 1) / EDT_BLOCK, tasks = outer * nblk;
        double s = sp[ax];
        int fail = 0;
        nt = nn_threads(numel, tasks);
#pragma omp parallel num_threads(nt)
        {
            double *f = malloc(sizeof(double) * EDT_BLOCK * (size_t)n);
            double *dd = malloc(sizeof(double) * (size_t)n);
            double *z = malloc(sizeof(double) * ((size_t)n + 1));
            double *v = malloc(sizeof(double) * 3 * (size_t)n);
            bool ok = f && dd && z && v;
            if (!ok) {
#pragma omp atomic write
                fail = 1;
            }
#pragma omp for schedule(static)
            for (int64_t t = 0; t < tasks; t++) {
                if (!ok) continue;
                int64_t o = t / nblk, j0 = (t % nblk) * EDT_BLOCK;
                int w = (int)(inner - j0 < EDT_BLOCK ? inner - j0 : EDT_BLOCK);
                double *base = out + o * n * inner + j0;
                uint8_t fin[EDT_BLOCK] = {0};
                bool any = false;
                for (int64_t i = 0; i < n; i++) {
                    const double *row = base + i * inner;
                    for (int tt = 0; tt < w; tt++) f[tt * n + i] = row[tt];
                }
                for (int tt = 0; tt < w; tt++) {
                    const double *fl = f + tt * n;
                    for (int64_t i = 0; i < n; i++)
                        if (fl[i] != INFINITY) { fin[tt] = 1; any = true; break; }
                }
                if (!any) continue;
                for (int tt = 0; tt < w; tt++) {
                    if (!fin[tt]) continue;
                    fh_line(f + tt * n, dd, n, s, v, v + n, v + 2 * n, z);
                    memcpy(f + tt * n, dd, sizeof(double) * (size_t)n);
                }
                for (int64_t i = 0; i < n; i++) {
                    double *row = base + i * inner;
                    for (int tt = 0; tt < w; tt++) row[tt] = f[tt * n + i];
                }
            }
            free(f);
            free(dd);
            free(z);
            free(v);
        }
        if (fail) return ml_seterr(ML_ERR_OOM, "edt: out of memory for line buffers (%lld voxels per line)", (long long)n);
    }
    return ML_OK;
}

/* ============================================================================ surface voxels */

int64_t ml_mask_edges(uint8_t *edges, const uint8_t *mask, int ndim, const int64_t *shape) {
    if (ndim < 1 || ndim > ML_MAX_DIMS) return 0;
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) numel *= shape[d];
    if (numel <= 0) return 0;
    /* last axis: contiguous lines; also initializes edges */
    int64_t n = shape[ndim - 1], lines = numel / n;
    int nt = nn_threads(numel, lines);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t l = 0; l < lines; l++) {
        const uint8_t *m = mask + l * n;
        uint8_t *e = edges + l * n;
        for (int64_t i = 0; i < n; i++)
            e[i] = m[i] && (i == 0 || i == n - 1 || !m[i - 1] || !m[i + 1]);
    }
    /* other axes: rows of `inner` contiguous voxels compared with the rows before and after */
    for (int ax = ndim - 2; ax >= 0; ax--) {
        n = shape[ax];
        int64_t inner = 1;
        for (int d = ax + 1; d < ndim; d++) inner *= shape[d];
        int64_t rows = numel / inner;
        nt = nn_threads(numel, rows);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            int64_t i = r % n;
            const uint8_t *m = mask + r * inner;
            uint8_t *e = edges + r * inner;
            if (i == 0 || i == n - 1) {
                for (int64_t j = 0; j < inner; j++) e[j] |= m[j] != 0;
            } else {
                const uint8_t *mp = m - inner, *mn = m + inner;
                for (int64_t j = 0; j < inner; j++) e[j] |= m[j] && (!mp[j] || !mn[j]);
            }
        }
    }
    int64_t cnt = 0;
    nt = nn_threads(numel, numel);
#pragma omp parallel for num_threads(nt) reduction(+ : cnt) schedule(static)
    for (int64_t i = 0; i < numel; i++) cnt += edges[i];
    return cnt;
}

/* ============================================================================ quantile */

static void swapf(float *a, int64_t i, int64_t j) {
    float t = a[i];
    a[i] = a[j];
    a[j] = t;
}

/* Rearrange a so that a[k] is the k-th smallest, a[<k] <= a[k] <= a[>k] (Hoare quickselect). */
static void nth_element_f(float *a, int64_t n, int64_t k) {
    int64_t l = 0, r = n - 1;
    while (r > l) {
        int64_t m = l + (r - l) / 2;
        if (a[m] < a[l]) swapf(a, l, m);
        if (a[r] < a[l]) swapf(a, l, r);
        if (a[r] < a[m]) swapf(a, m, r);
        float piv = a[m];
        int64_t i = l, j = r;
        while (i <= j) {
            while (a[i] < piv) i++;
            while (a[j] > piv) j--;
            if (i <= j) {
                swapf(a, i, j);
                i++;
                j--;
            }
        }
        if (k <= j) r = j;
        else if (k >= i) l = i;
        else break;
    }
}

float ml_quantile_f32(float *x, int64_t n, double q) {
    if (n <= 0) return NAN;
    /* torch.quantile: ranks = q * (n - 1) in the input dtype, below = trunc, above = ceil, lerp */
    float qf = (float)q;
    float rank = qf * (float)(n - 1);
    int64_t lo = (int64_t)rank, hi = (int64_t)ceilf(rank);
    if (lo < 0) lo = 0;
    if (hi > n - 1) hi = n - 1;
    if (lo > hi) lo = hi;
    float w = rank - (float)lo;
    nth_element_f(x, n, lo);
    float a = x[lo], b = a;
    if (hi > lo) {
        b = x[lo + 1];
        for (int64_t i = lo + 2; i < n; i++)
            if (x[i] < b) b = x[i];
    }
    /* at::lerp: weight < 0.5 ? a + w (b - a) : b - (b - a)(1 - w) */
    float diff = b - a;
    return fabsf(w) < 0.5f ? a + w * diff : b - diff * (1.0f - w);
}

/* ============================================================================ segmentation inputs */

typedef struct {
    ml_tensor *t; /* contiguous, owned */
    ml_dtype dt;
    const void *data;
    int64_t C;
    bool onehot;
} seg_in;

typedef struct {
    int64_t N, ncls, first, K, S;
    int nsd;
    int64_t sh[3]; /* spatial shape padded in front with 1s */
} seg_geom;

static void seg_free(seg_in *s) {
    ml_tensor_release(s->t);
    s->t = NULL;
}

static ml_err seg_prepare(seg_in *s, ml_tensor *t, const char *op, const char *what) {
    memset(s, 0, sizeof *s);
    if (t->storage && t->storage->device.type != ML_CPU)
        return ml_seterr(ML_ERR_DEVICE, "%s: %s must be on the CPU, got %s", op, what, ml_device_str(t->storage->device));
    if (t->ndim < 3 || t->ndim > 5)
        return ml_seterr(ML_ERR_SHAPE, "%s: %s must be [N, C, spatial...] with 1 to 3 spatial dims, got shape %s", op,
                         what, ml_shape_str(t->ndim, t->shape));
    ml_dtype dt = (ml_dtype)t->dtype;
    if (dt == ML_BF16 || dt == ML_F16) dt = ML_F32;
    ml_err e = nn_contig_as(&s->t, t, dt);
    if (e) return e;
    s->dt = dt;
    s->data = ml_tensor_data(s->t);
    s->C = t->shape[1];
    s->onehot = s->C > 1;
    return ML_OK;
}

static ml_err seg_setup(seg_in *p, seg_in *g, seg_geom *G, ml_tensor *pred, ml_tensor *gt, int64_t num_classes,
                        int64_t first_class, const char *op) {
    memset(G, 0, sizeof *G);
    memset(p, 0, sizeof *p);
    memset(g, 0, sizeof *g);
    if (!pred || !gt) return ml_seterr(ML_ERR_ARG, "%s: pred and gt are required", op);
    if (num_classes < 1 || num_classes > MAX_CLASSES)
        return ml_seterr(ML_ERR_ARG, "%s: num_classes must be between 1 and %d, got %lld", op, MAX_CLASSES,
                         (long long)num_classes);
    if (first_class != 0 && first_class != 1)
        return ml_seterr(ML_ERR_ARG, "%s: first_class must be 0 or 1, got %lld", op, (long long)first_class);
    if (num_classes - first_class < 1)
        return ml_seterr(ML_ERR_ARG, "%s: no class left: num_classes %lld without the background", op,
                         (long long)num_classes);
    bool same = pred->ndim == gt->ndim && pred->ndim >= 3 && pred->shape[0] == gt->shape[0];
    for (int d = 2; same && d < pred->ndim; d++) same = pred->shape[d] == gt->shape[d];
    if (!same && pred->ndim >= 3 && pred->ndim <= 5 && gt->ndim >= 3 && gt->ndim <= 5)
        return ml_seterr(ML_ERR_SHAPE,
                         "%s: pred of shape %s and gt of shape %s do not match (same batch size and spatial shape "
                         "needed)", op, ml_shape_str(pred->ndim, pred->shape), ml_shape_str(gt->ndim, gt->shape));
    ml_err e = seg_prepare(p, pred, op, "pred");
    if (!e) e = seg_prepare(g, gt, op, "gt");
    if (e) { seg_free(p); seg_free(g); return e; }
    seg_in *ss[2] = {p, g};
    const char *names[2] = {"pred", "gt"};
    for (int i = 0; i < 2; i++) {
        if (ss[i]->onehot && ss[i]->C != num_classes) {
            e = ml_seterr(ML_ERR_SHAPE, "%s: %s of shape %s is one-hot with %lld channels but num_classes is %lld", op,
                          names[i], ml_shape_str(ss[i]->t->ndim, ss[i]->t->shape), (long long)ss[i]->C,
                          (long long)num_classes);
            seg_free(p);
            seg_free(g);
            return e;
        }
    }
    G->N = pred->shape[0];
    G->ncls = num_classes;
    G->first = first_class;
    G->K = num_classes - first_class;
    G->nsd = pred->ndim - 2;
    G->sh[0] = G->sh[1] = G->sh[2] = 1;
    for (int d = 0; d < G->nsd; d++) G->sh[3 - G->nsd + d] = pred->shape[2 + d];
    G->S = G->sh[0] * G->sh[1] * G->sh[2];
    return ML_OK;
}

/* class index of n consecutive label values starting at element off (-1: no class) */
static void row_cls(int32_t *dst, const seg_in *s, int64_t off, int64_t n, int64_t ncls) {
    switch (s->dt) {
    case ML_F32: {
        const float *x = (const float *)s->data + off;
        for (int64_t i = 0; i < n; i++) {
            double v = x[i];
            dst[i] = (v >= 0 && v < (double)ncls && v == floor(v)) ? (int32_t)v : -1;
        }
        break;
    }
    case ML_F64: {
        const double *x = (const double *)s->data + off;
        for (int64_t i = 0; i < n; i++) {
            double v = x[i];
            dst[i] = (v >= 0 && v < (double)ncls && v == floor(v)) ? (int32_t)v : -1;
        }
        break;
    }
    case ML_I32: {
        const int32_t *x = (const int32_t *)s->data + off;
        for (int64_t i = 0; i < n; i++) dst[i] = (x[i] >= 0 && x[i] < ncls) ? x[i] : -1;
        break;
    }
    case ML_I64: {
        const int64_t *x = (const int64_t *)s->data + off;
        for (int64_t i = 0; i < n; i++) dst[i] = (x[i] >= 0 && x[i] < ncls) ? (int32_t)x[i] : -1;
        break;
    }
    default: { /* U8, BOOL */
        const uint8_t *x = (const uint8_t *)s->data + off;
        for (int64_t i = 0; i < n; i++) dst[i] = x[i] < ncls ? x[i] : -1;
        break;
    }
    }
}

/* n consecutive one-hot values starting at element off: non-zero -> 1 */
static void row_nz(uint8_t *dst, const seg_in *s, int64_t off, int64_t n) {
    switch (s->dt) {
    case ML_F32: { const float *x = (const float *)s->data + off; for (int64_t i = 0; i < n; i++) dst[i] = x[i] != 0; break; }
    case ML_F64: { const double *x = (const double *)s->data + off; for (int64_t i = 0; i < n; i++) dst[i] = x[i] != 0; break; }
    case ML_I32: { const int32_t *x = (const int32_t *)s->data + off; for (int64_t i = 0; i < n; i++) dst[i] = x[i] != 0; break; }
    case ML_I64: { const int64_t *x = (const int64_t *)s->data + off; for (int64_t i = 0; i < n; i++) dst[i] = x[i] != 0; break; }
    default: { const uint8_t *x = (const uint8_t *)s->data + off; for (int64_t i = 0; i < n; i++) dst[i] = x[i] != 0; break; }
    }
}

/* n consecutive one-hot values starting at element off as doubles */
static void row_val(double *dst, const seg_in *s, int64_t off, int64_t n) {
    switch (s->dt) {
    case ML_F32: { const float *x = (const float *)s->data + off; for (int64_t i = 0; i < n; i++) dst[i] = x[i]; break; }
    case ML_F64: memcpy(dst, (const double *)s->data + off, sizeof(double) * (size_t)n); break;
    case ML_I32: { const int32_t *x = (const int32_t *)s->data + off; for (int64_t i = 0; i < n; i++) dst[i] = x[i]; break; }
    case ML_I64: { const int64_t *x = (const int64_t *)s->data + off; for (int64_t i = 0; i < n; i++) dst[i] = (double)x[i]; break; }
    default: { const uint8_t *x = (const uint8_t *)s->data + off; for (int64_t i = 0; i < n; i++) dst[i] = x[i]; break; }
    }
}

/* element offset of (b, channel c, spatial row r = x * sh1 + y, z) */
static inline int64_t seg_off(const seg_in *s, const seg_geom *G, int64_t b, int64_t c, int64_t r, int64_t z) {
    return (b * s->C + c) * G->S + r * G->sh[2] + z;
}

/* membership of class k for n voxels of row r from z0; tmp: n int32 scratch */
static void mask_row(uint8_t *dst, const seg_in *s, const seg_geom *G, int64_t b, int64_t k, int64_t r, int64_t z0,
                     int64_t n, int32_t *tmp) {
    if (s->onehot) {
        row_nz(dst, s, seg_off(s, G, b, k, r, z0), n);
    } else {
        row_cls(tmp, s, seg_off(s, G, b, 0, r, z0), n, G->ncls);
        for (int64_t i = 0; i < n; i++) dst[i] = tmp[i] == k;
    }
}

/* ============================================================================ counts */

ml_err ml_seg_counts(ml_tensor **out, ml_tensor *pred, ml_tensor *gt, int64_t num_classes, int64_t first_class,
                     const char *op) {
    *out = NULL;
    seg_in p, g;
    seg_geom G;
    ml_err e = seg_setup(&p, &g, &G, pred, gt, num_classes, first_class, op);
    if (e) return e;
    int64_t shape[3] = {G.N, G.K, 3};
    ml_tensor *res = NULL;
    if ((e = ml_zeros(&res, ML_F64, 3, shape))) goto done;
    double *R = ml_tensor_data(res);
    int64_t rows = G.sh[0] * G.sh[1], len = G.sh[2];
    int nt = nn_threads(G.S, rows);
    int fail = 0;
    if (!p.onehot && !g.onehot) {
        /* both label maps: one pass, integer histograms per thread */
        int64_t nc = G.ncls;
        for (int64_t b = 0; b < G.N && !fail; b++) {
            int64_t *tot = calloc((size_t)nc * 3, sizeof(int64_t));
            if (!tot) { fail = 1; break; }
#pragma omp parallel num_threads(nt)
            {
                int64_t *h = calloc((size_t)nc * 3, sizeof(int64_t));
                int32_t *cp = malloc(sizeof(int32_t) * (size_t)len), *cg = malloc(sizeof(int32_t) * (size_t)len);
                bool ok = h && cp && cg;
                if (!ok) {
#pragma omp atomic write
                    fail = 1;
                }
#pragma omp for schedule(static)
                for (int64_t r = 0; r < rows; r++) {
                    if (!ok) continue;
                    row_cls(cp, &p, seg_off(&p, &G, b, 0, r, 0), len, nc);
                    row_cls(cg, &g, seg_off(&g, &G, b, 0, r, 0), len, nc);
                    for (int64_t i = 0; i < len; i++) {
                        int32_t a = cp[i], c = cg[i];
                        if (a >= 0) {
                            h[a * 3 + 1]++;
                            if (a == c) h[a * 3]++;
                        }
                        if (c >= 0) h[c * 3 + 2]++;
                    }
                }
                if (ok) {
#pragma omp critical(ml_metrics_counts)
                    for (int64_t i = 0; i < nc * 3; i++) tot[i] += h[i];
                }
                free(h);
                free(cp);
                free(cg);
            }
            for (int64_t j = 0; j < G.K; j++)
                for (int q = 0; q < 3; q++) R[(b * G.K + j) * 3 + q] = (double)tot[(j + G.first) * 3 + q];
            free(tot);
        }
    } else {
        /* a one-hot input: one pass per class; partial sums per row, added in row order (deterministic) */
        double *part = malloc(sizeof(double) * 3 * (size_t)rows);
        if (!part) fail = 1;
        for (int64_t b = 0; b < G.N && !fail; b++) {
            for (int64_t j = 0; j < G.K && !fail; j++) {
                int64_t k = j + G.first;
#pragma omp parallel num_threads(nt)
                {
                    uint8_t *pm = malloc((size_t)len);
                    double *gv = malloc(sizeof(double) * (size_t)len);
                    int32_t *tmp = malloc(sizeof(int32_t) * (size_t)len);
                    bool ok = pm && gv && tmp;
                    if (!ok) {
#pragma omp atomic write
                        fail = 1;
                    }
#pragma omp for schedule(static)
                    for (int64_t r = 0; r < rows; r++) {
                        if (!ok) continue;
                        mask_row(pm, &p, &G, b, k, r, 0, len, tmp);
                        if (g.onehot) {
                            row_val(gv, &g, seg_off(&g, &G, b, k, r, 0), len);
                        } else {
                            row_cls(tmp, &g, seg_off(&g, &G, b, 0, r, 0), len, G.ncls);
                            for (int64_t i = 0; i < len; i++) gv[i] = tmp[i] == k;
                        }
                        double si = 0, sp = 0, sg = 0;
                        for (int64_t i = 0; i < len; i++) {
                            si += pm[i] ? gv[i] : 0.0;
                            sp += pm[i];
                            sg += gv[i];
                        }
                        part[3 * r] = si;
                        part[3 * r + 1] = sp;
                        part[3 * r + 2] = sg;
                    }
                    free(pm);
                    free(gv);
                    free(tmp);
                }
                if (fail) break;
                double s[3] = {0, 0, 0};
                for (int64_t r = 0; r < rows; r++)
                    for (int q = 0; q < 3; q++) s[q] += part[3 * r + q];
                for (int q = 0; q < 3; q++) R[(b * G.K + j) * 3 + q] = s[q];
            }
        }
        free(part);
    }
    if (fail) e = ml_seterr(ML_ERR_OOM, "%s: out of memory for row buffers", op);
done:
    seg_free(&p);
    seg_free(&g);
    if (e) { ml_tensor_release(res); return e; }
    *out = res;
    return ML_OK;
}

/* ============================================================================ surface metrics */

/* bounding boxes of every class of a label map in batch item b: lo/hi [ncls * 3] (lo > hi: empty).
 * Per row, the z range of each class seen is kept in a stamp table, and the x/y/z bounds are updated
 * once per (row, class) instead of once per voxel. */
static bool label_bboxes(const seg_in *s, const seg_geom *G, int64_t b, int64_t *lo, int64_t *hi) {
    int64_t nc = G->ncls, rows = G->sh[0] * G->sh[1], len = G->sh[2];
    for (int64_t i = 0; i < nc * 3; i++) { lo[i] = INT64_MAX; hi[i] = -1; }
    int fail = 0;
    int nt = nn_threads(G->S, rows);
#pragma omp parallel num_threads(nt)
    {
        int64_t *l = malloc(sizeof(int64_t) * 3 * (size_t)nc), *h = malloc(sizeof(int64_t) * 3 * (size_t)nc);
        int64_t *stamp = malloc(sizeof(int64_t) * (size_t)nc), *z0 = malloc(sizeof(int64_t) * (size_t)nc);
        int64_t *z1 = malloc(sizeof(int64_t) * (size_t)nc);
        int32_t *c = malloc(sizeof(int32_t) * (size_t)len), *seen = malloc(sizeof(int32_t) * (size_t)(len < nc ? len : nc));
        bool ok = l && h && stamp && z0 && z1 && c && seen;
        if (!ok) {
#pragma omp atomic write
            fail = 1;
        } else {
            for (int64_t i = 0; i < nc * 3; i++) { l[i] = INT64_MAX; h[i] = -1; }
            for (int64_t i = 0; i < nc; i++) stamp[i] = -1;
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            if (!ok) continue;
            row_cls(c, s, seg_off(s, G, b, 0, r, 0), len, nc);
            int64_t nseen = 0;
            for (int64_t z = 0; z < len; z++) {
                int32_t k = c[z];
                if (k < 0) continue;
                if (stamp[k] != r) {
                    stamp[k] = r;
                    z0[k] = z;
                    seen[nseen++] = k;
                }
                z1[k] = z;
            }
            int64_t x = r / G->sh[1], y = r % G->sh[1];
            for (int64_t i = 0; i < nseen; i++) {
                int32_t k = seen[i];
                int64_t *lk = l + 3 * k, *hk = h + 3 * k;
                if (x < lk[0]) lk[0] = x;
                if (x > hk[0]) hk[0] = x;
                if (y < lk[1]) lk[1] = y;
                if (y > hk[1]) hk[1] = y;
                if (z0[k] < lk[2]) lk[2] = z0[k];
                if (z1[k] > hk[2]) hk[2] = z1[k];
            }
        }
        if (ok) {
#pragma omp critical(ml_metrics_bbox)
            for (int64_t i = 0; i < nc * 3; i++) {
                if (l[i] < lo[i]) lo[i] = l[i];
                if (h[i] > hi[i]) hi[i] = h[i];
            }
        }
        free(l);
        free(h);
        free(stamp);
        free(z0);
        free(z1);
        free(c);
        free(seen);
    }
    return !fail;
}

/* bounding box of channel k of a one-hot input in batch item b */
static bool onehot_bbox(const seg_in *s, const seg_geom *G, int64_t b, int64_t k, int64_t lo[3], int64_t hi[3]) {
    int64_t rows = G->sh[0] * G->sh[1], len = G->sh[2];
    for (int d = 0; d < 3; d++) { lo[d] = INT64_MAX; hi[d] = -1; }
    int fail = 0;
    int nt = nn_threads(G->S, rows);
#pragma omp parallel num_threads(nt)
    {
        uint8_t *m = malloc((size_t)len);
        int64_t l[3] = {INT64_MAX, INT64_MAX, INT64_MAX}, h[3] = {-1, -1, -1};
        if (!m) {
#pragma omp atomic write
            fail = 1;
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            if (!m) continue;
            row_nz(m, s, seg_off(s, G, b, k, r, 0), len);
            int64_t z0 = -1, z1 = -1;
            for (int64_t z = 0; z < len; z++)
                if (m[z]) { if (z0 < 0) z0 = z; z1 = z; }
            if (z0 < 0) continue;
            int64_t x = r / G->sh[1], y = r % G->sh[1];
            if (x < l[0]) l[0] = x;
            if (x > h[0]) h[0] = x;
            if (y < l[1]) l[1] = y;
            if (y > h[1]) h[1] = y;
            if (z0 < l[2]) l[2] = z0;
            if (z1 > h[2]) h[2] = z1;
        }
#pragma omp critical(ml_metrics_bbox1)
        for (int d = 0; d < 3; d++) {
            if (l[d] < lo[d]) lo[d] = l[d];
            if (h[d] > hi[d]) hi[d] = h[d];
        }
        free(m);
    }
    return !fail;
}

/* distances (float, as MONAI) at the selected voxels, in voxel order; returns the count */
#define GATHER_CHUNK 65536
static int64_t gather_dist(float *dst, const uint8_t *sel, const double *D, int64_t M, int64_t *cnt /* nchunks+1 */) {
    int64_t nch = (M + GATHER_CHUNK - 1) / GATHER_CHUNK;
    int nt = nn_threads(M, nch);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t c = 0; c < nch; c++) {
        int64_t a = c * GATHER_CHUNK, e = a + GATHER_CHUNK < M ? a + GATHER_CHUNK : M, k = 0;
        for (int64_t i = a; i < e; i++) k += sel[i] != 0;
        cnt[c + 1] = k;
    }
    cnt[0] = 0;
    for (int64_t c = 0; c < nch; c++) cnt[c + 1] += cnt[c];
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t c = 0; c < nch; c++) {
        int64_t a = c * GATHER_CHUNK, e = a + GATHER_CHUNK < M ? a + GATHER_CHUNK : M, k = cnt[c];
        for (int64_t i = a; i < e; i++)
            if (sel[i]) dst[k++] = (float)sqrt(D[i]);
    }
    return cnt[nch];
}

/* a directed set of surface distances: n real values, or n copies of +inf (an empty side, as MONAI) */
typedef struct {
    float *d;
    int64_t n;
    bool inf;
} dset;

static double hd_direction(dset *s, double pct) {
    if (s->n == 0) return NAN;                       /* MONAI: empty distance set -> nan */
    if (s->inf) return pct > 0 ? NAN : INFINITY;     /* torch.quantile over +inf values is nan */
    if (pct > 0) return (double)ml_quantile_f32(s->d, s->n, pct / 100.0);
    float m = s->d[0];
    for (int64_t i = 1; i < s->n; i++)
        if (s->d[i] > m) m = s->d[i];
    return m;
}

static int64_t count_within(const dset *s, float tol) {
    if (s->inf) return 0;
    int64_t c = 0;
    for (int64_t i = 0; i < s->n; i++) c += s->d[i] <= tol;
    return c;
}

static double combine(const ml_surface_opts *o, dset *pg, dset *gp, double tol) {
    switch (o->kind) {
    case ML_SURF_HAUSDORFF: {
        double a = hd_direction(pg, o->percentile);
        if (o->directed) return a;
        double b = hd_direction(gp, o->percentile);
        if (isnan(a) || isnan(b)) return NAN;
        return a > b ? a : b;
    }
    case ML_SURF_DICE: {
        int64_t complete = pg->n + gp->n;
        if (complete == 0) return NAN;
        float t = (float)tol;
        return (double)(count_within(pg, t) + count_within(gp, t)) / (double)complete;
    }
    default: {
        dset *sets[2] = {pg, gp};
        int ns = o->directed ? 1 : 2;
        int64_t n = 0;
        bool inf = false;
        double sum = 0;
        for (int i = 0; i < ns; i++) {
            n += sets[i]->n;
            if (sets[i]->n && sets[i]->inf) inf = true;
            else for (int64_t j = 0; j < sets[i]->n; j++) sum += sets[i]->d[j];
        }
        if (n == 0) return NAN;
        if (inf) return INFINITY;
        return (double)(float)(sum / (double)n);
    }
    }
}

/* one (batch item, class): crop to the union bounding box, edges, EDTs, distances, metric */
static ml_err surface_one(const seg_in *p, const seg_in *g, const seg_geom *G, int64_t b, int64_t k,
                          const int64_t lo[3], const int64_t hi[3], const double sp[3], const ml_surface_opts *o,
                          double tol, double *res, const char *op) {
    int64_t cs[3], M = 1;
    int64_t nEP = 0, nEG = 0;
    uint8_t *P = NULL, *Q = NULL, *EP = NULL, *EG = NULL;
    double *D = NULL;
    float *dpg = NULL, *dgp = NULL;
    int64_t *cnt = NULL;
    ml_err e = ML_OK;
    bool empty = false;
    for (int d = 0; d < 3; d++) {
        if (hi[d] < lo[d]) empty = true;
        cs[d] = empty ? 0 : hi[d] - lo[d] + 1;
        M *= cs[d];
    }
    dset pg = {0}, gp = {0};
    if (!empty) {
        P = malloc((size_t)M);
        Q = malloc((size_t)M);
        EP = malloc((size_t)M);
        EG = malloc((size_t)M);
        if (!P || !Q || !EP || !EG) goto oom;
        int64_t rows = cs[0] * cs[1];
        int fail = 0;
        int nt = nn_threads(M, rows);
#pragma omp parallel num_threads(nt)
        {
            int32_t *tmp = malloc(sizeof(int32_t) * (size_t)cs[2]);
            if (!tmp) {
#pragma omp atomic write
                fail = 1;
            }
#pragma omp for schedule(static)
            for (int64_t r = 0; r < rows; r++) {
                if (!tmp) continue;
                int64_t x = lo[0] + r / cs[1], y = lo[1] + r % cs[1], rr = x * G->sh[1] + y;
                mask_row(P + r * cs[2], p, G, b, k, rr, lo[2], cs[2], tmp);
                mask_row(Q + r * cs[2], g, G, b, k, rr, lo[2], cs[2], tmp);
            }
            free(tmp);
        }
        if (fail) goto oom;
        /* edges in the image's own dimensionality: the padded leading axes of 1-D/2-D inputs are no faces */
        nEP = ml_mask_edges(EP, P, G->nsd, cs + 3 - G->nsd);
        nEG = ml_mask_edges(EG, Q, G->nsd, cs + 3 - G->nsd);
        free(P);
        free(Q);
        P = Q = NULL;
    }
    bool need_gp = o->kind == ML_SURF_DICE || !o->directed;
    if (nEP > 0 && nEG > 0) {
        D = malloc(sizeof(double) * (size_t)M);
        dpg = malloc(sizeof(float) * (size_t)nEP);
        dgp = need_gp ? malloc(sizeof(float) * (size_t)nEG) : NULL;
        cnt = malloc(sizeof(int64_t) * (size_t)((M + GATHER_CHUNK - 1) / GATHER_CHUNK + 1));
        if (!D || !dpg || (need_gp && !dgp) || !cnt) goto oom;
        if ((e = ml_edt_sq(D, EG, 3, cs, sp))) goto done;
        pg.d = dpg;
        pg.n = gather_dist(dpg, EP, D, M, cnt);
        if (need_gp) {
            if ((e = ml_edt_sq(D, EP, 3, cs, sp))) goto done;
            gp.d = dgp;
            gp.n = gather_dist(dgp, EG, D, M, cnt);
        }
    } else {
        /* MONAI get_surface_distance(X, Y): Y empty -> inf for every X voxel; X empty -> inf for every Y voxel.
         * With one side empty both directions hold as many infs as the other side has surface voxels. */
        int64_t n = nEP > 0 ? nEP : nEG;
        pg.n = gp.n = n;
        pg.inf = gp.inf = true;
    }
    *res = combine(o, &pg, &gp, tol);
    goto done;
oom:
    e = ml_seterr(ML_ERR_OOM, "%s: out of memory for a %lldx%lldx%lld crop (batch %lld, class %lld)", op,
                  (long long)cs[0], (long long)cs[1], (long long)cs[2], (long long)b, (long long)k);
done:
    free(P);
    free(Q);
    free(EP);
    free(EG);
    free(D);
    free(dpg);
    free(dgp);
    free(cnt);
    return e;
}

ml_err ml_seg_surface(ml_tensor **out, ml_tensor *pred, ml_tensor *gt, int64_t num_classes, int64_t first_class,
                      const ml_surface_opts *o, const char *op) {
    *out = NULL;
    if (!o) return ml_seterr(ML_ERR_ARG, "%s: options are required", op);
    if ((int)o->kind < 0 || o->kind > ML_SURF_MEAN) return ml_seterr(ML_ERR_ARG, "%s: unknown surface metric %d", op, (int)o->kind);
    if (o->kind == ML_SURF_HAUSDORFF && !(o->percentile >= 0 && o->percentile <= 100) && !isnan(o->percentile))
        return ml_seterr(ML_ERR_ARG, "%s: percentile must be between 0 and 100, got %g", op, o->percentile);
    seg_in p, g;
    seg_geom G;
    ml_err e = seg_setup(&p, &g, &G, pred, gt, num_classes, first_class, op);
    if (e) return e;
    ml_surface_opts oo = *o;
    if (isnan(oo.percentile)) oo.percentile = 0;
    ml_tensor *res = NULL;
    int64_t *plo = NULL, *phi = NULL, *glo = NULL, *ghi = NULL;
    if (o->kind == ML_SURF_DICE) {
        if (!o->tolerance) { e = ml_seterr(ML_ERR_ARG, "%s: class thresholds (tolerance) are required", op); goto done; }
        for (int64_t j = 0; j < G.K; j++)
            if (!(o->tolerance[j] >= 0) || !isfinite(o->tolerance[j])) {
                e = ml_seterr(ML_ERR_ARG, "%s: tolerance for class %lld must be a finite number >= 0, got %g", op,
                              (long long)(j + G.first), o->tolerance[j]);
                goto done;
            }
    }
    int64_t nsp = o->spacing_per_item ? G.N * G.nsd : G.nsd;
    if (o->spacing)
        for (int64_t i = 0; i < nsp; i++)
            if (!(o->spacing[i] > 0) || !isfinite(o->spacing[i])) {
                e = ml_seterr(ML_ERR_ARG, "%s: spacing must be positive and finite, got %g (entry %lld)", op,
                              o->spacing[i], (long long)i + 1);
                goto done;
            }
    int64_t shape[2] = {G.N, G.K};
    if ((e = ml_tensor_empty(&res, ML_F64, 2, shape))) goto done;
    double *R = ml_tensor_data(res);
    if (!p.onehot) { plo = malloc(sizeof(int64_t) * 3 * (size_t)G.ncls); phi = malloc(sizeof(int64_t) * 3 * (size_t)G.ncls); }
    if (!g.onehot) { glo = malloc(sizeof(int64_t) * 3 * (size_t)G.ncls); ghi = malloc(sizeof(int64_t) * 3 * (size_t)G.ncls); }
    if ((!p.onehot && (!plo || !phi)) || (!g.onehot && (!glo || !ghi))) {
        e = ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
        goto done;
    }
    for (int64_t b = 0; b < G.N && !e; b++) {
        double sp[3] = {1, 1, 1};
        if (o->spacing) {
            const double *s = o->spacing + (o->spacing_per_item ? b * G.nsd : 0);
            for (int d = 0; d < G.nsd; d++) sp[3 - G.nsd + d] = s[d];
        }
        if ((!p.onehot && !label_bboxes(&p, &G, b, plo, phi)) || (!g.onehot && !label_bboxes(&g, &G, b, glo, ghi))) {
            e = ml_seterr(ML_ERR_OOM, "%s: out of memory", op);
            break;
        }
        for (int64_t j = 0; j < G.K && !e; j++) {
            int64_t k = j + G.first, bl[2][3], bh[2][3], lo[3], hi[3];
            if (p.onehot) {
                if (!onehot_bbox(&p, &G, b, k, bl[0], bh[0])) { e = ml_seterr(ML_ERR_OOM, "%s: out of memory", op); break; }
            } else {
                memcpy(bl[0], plo + 3 * k, sizeof bl[0]);
                memcpy(bh[0], phi + 3 * k, sizeof bh[0]);
            }
            if (g.onehot) {
                if (!onehot_bbox(&g, &G, b, k, bl[1], bh[1])) { e = ml_seterr(ML_ERR_OOM, "%s: out of memory", op); break; }
            } else {
                memcpy(bl[1], glo + 3 * k, sizeof bl[1]);
                memcpy(bh[1], ghi + 3 * k, sizeof bh[1]);
            }
            for (int d = 0; d < 3; d++) {
                lo[d] = bl[0][d] < bl[1][d] ? bl[0][d] : bl[1][d];
                hi[d] = bh[0][d] > bh[1][d] ? bh[0][d] : bh[1][d];
            }
            e = surface_one(&p, &g, &G, b, k, lo, hi, sp, &oo, o->kind == ML_SURF_DICE ? o->tolerance[j] : 0,
                            R + b * G.K + j, op);
        }
    }
done:
    free(plo);
    free(phi);
    free(glo);
    free(ghi);
    seg_free(&p);
    seg_free(&g);
    if (e) { ml_tensor_release(res); return e; }
    *out = res;
    return ML_OK;
}

/* ============================================================================ tensor wrappers */

/* contiguous copy of t's zero/non-zero pattern (1 = non-zero) */
static ml_err nz_bytes(uint8_t **dst, ml_tensor *t, const char *op) {
    *dst = NULL;
    if (t->storage && t->storage->device.type != ML_CPU)
        return ml_seterr(ML_ERR_DEVICE, "%s: mask must be on the CPU, got %s", op, ml_device_str(t->storage->device));
    ml_dtype dt = (ml_dtype)t->dtype;
    if (dt == ML_BF16 || dt == ML_F16) dt = ML_F32;
    ml_tensor *c = NULL;
    ml_err e = nn_contig_as(&c, t, dt);
    if (e) return e;
    int64_t n = ml_tensor_numel(c);
    uint8_t *m = malloc(n > 0 ? (size_t)n : 1);
    if (!m) { ml_tensor_release(c); return ml_seterr(ML_ERR_OOM, "%s: out of memory (%lld voxels)", op, (long long)n); }
    seg_in s = {.t = c, .dt = dt, .data = ml_tensor_data(c)};
    int64_t nch = (n + GATHER_CHUNK - 1) / GATHER_CHUNK;
    int nt = nn_threads(n, nch);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t ch = 0; ch < nch; ch++) {
        int64_t a = ch * GATHER_CHUNK, len = a + GATHER_CHUNK < n ? GATHER_CHUNK : n - a;
        row_nz(m + a, &s, a, len);
    }
    ml_tensor_release(c);
    *dst = m;
    return ML_OK;
}

#define MAX_CASE(T)                                                                                     \
    {                                                                                                   \
        const T *x = (const T *)ml_tensor_data(c) + a;                                                  \
        for (int64_t i = 0; i < len; i++) {                                                             \
            double v = (double)x[i];                                                                    \
            if (v > m || v != v) m = v;                                                                 \
            if (m != m) break;                                                                          \
        }                                                                                               \
        break;                                                                                          \
    }

ml_err ml_label_max(double *out, ml_tensor *t, const char *op) {
    *out = -INFINITY;
    if (t->storage && t->storage->device.type != ML_CPU)
        return ml_seterr(ML_ERR_DEVICE, "%s: labels must be on the CPU, got %s", op, ml_device_str(t->storage->device));
    ml_dtype dt = (ml_dtype)t->dtype;
    if (dt == ML_BF16 || dt == ML_F16) dt = ML_F32;
    ml_tensor *c = NULL;
    ml_err e = nn_contig_as(&c, t, dt);
    if (e) return e;
    int64_t n = ml_tensor_numel(c), nch = (n + GATHER_CHUNK - 1) / GATHER_CHUNK;
    double *part = malloc(sizeof(double) * (size_t)(nch > 0 ? nch : 1));
    if (!part) { ml_tensor_release(c); return ml_seterr(ML_ERR_OOM, "%s: out of memory", op); }
    int nt = nn_threads(n, nch);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t ch = 0; ch < nch; ch++) {
        int64_t a = ch * GATHER_CHUNK, len = a + GATHER_CHUNK < n ? GATHER_CHUNK : n - a;
        double m = -INFINITY;
        switch (dt) {
        case ML_F32: MAX_CASE(float)
        case ML_F64: MAX_CASE(double)
        case ML_I32: MAX_CASE(int32_t)
        case ML_I64: MAX_CASE(int64_t)
        default: MAX_CASE(uint8_t)
        }
        part[ch] = m;
    }
    double m = -INFINITY;
    for (int64_t ch = 0; ch < nch; ch++)
        if (part[ch] > m || part[ch] != part[ch]) m = part[ch];
    free(part);
    ml_tensor_release(c);
    *out = m;
    return ML_OK;
}

static ml_err check_mask_shape(ml_tensor *mask, const char *op) {
    if (mask->ndim < 1)
        return ml_seterr(ML_ERR_SHAPE, "%s: mask must have at least one dimension, got a 0-d tensor", op);
    return ML_OK;
}

ml_err ml_distance_transform_edt(ml_tensor **out, ml_tensor *mask, const double *spacing, const char *op) {
    *out = NULL;
    ml_err e = check_mask_shape(mask, op);
    if (e) return e;
    for (int d = 0; spacing && d < mask->ndim; d++)
        if (!(spacing[d] > 0) || !isfinite(spacing[d]))
            return ml_seterr(ML_ERR_ARG, "%s: spacing[%d] must be a positive finite number, got %g", op, d + 1, spacing[d]);
    uint8_t *m = NULL;
    if ((e = nz_bytes(&m, mask, op))) return e;
    int64_t n = ml_tensor_numel(mask);
    for (int64_t i = 0; i < n; i++) m[i] = !m[i]; /* sites: the zero voxels */
    ml_tensor *res = NULL;
    if (!(e = ml_tensor_empty(&res, ML_F64, mask->ndim, mask->shape))) {
        double *D = ml_tensor_data(res);
        if (!(e = ml_edt_sq(D, m, mask->ndim, mask->shape, spacing))) {
            int nt = nn_threads(n, n);
#pragma omp parallel for num_threads(nt) schedule(static)
            for (int64_t i = 0; i < n; i++) D[i] = sqrt(D[i]);
        } else {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", ml_errmsg());
            e = ml_seterr(e, "%s: %s", op, msg);
        }
    }
    free(m);
    if (e) { ml_tensor_release(res); return e; }
    *out = res;
    return ML_OK;
}

ml_err ml_surface_voxels(ml_tensor **out, ml_tensor *mask, const char *op) {
    *out = NULL;
    ml_err e = check_mask_shape(mask, op);
    if (e) return e;
    uint8_t *m = NULL;
    if ((e = nz_bytes(&m, mask, op))) return e;
    ml_tensor *res = NULL;
    if (!(e = ml_tensor_empty(&res, ML_BOOL, mask->ndim, mask->shape)))
        ml_mask_edges(ml_tensor_data(res), m, mask->ndim, mask->shape);
    free(m);
    if (e) { ml_tensor_release(res); return e; }
    *out = res;
    return ML_OK;
}
