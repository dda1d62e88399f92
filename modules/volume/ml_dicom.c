/* DICOM series reader / writer / tag editor for medlua Volumes (C11; DCMTK calls through
 * ml_dcmtk_shim.h, JPEG 2000 through ml_j2k.c). The choices are documented in ml_dicom.h. */
#include "volume/ml_dicom.h"
#include "volume/ml_dcmtk_shim.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define MAX_DEPTH 5          /* directory recursion below the given directory (dcm2niix -d 5) */
#define KEEP_OPEN_FILES 4096 /* above this many images, handles are closed after the header scan */
#define MAX_IMAGES (1 << 24)

/* =============================================================== small helpers */
static void cpy(char *dst, size_t n, const char *src) {
    if (!n) return;
    size_t k = src ? strlen(src) : 0;
    if (k >= n) k = n - 1;
    if (k) memcpy(dst, src, k);
    dst[k] = '\0';
}

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static double dot3(const double *a, const double *b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
static double norm3(const double *a) { return sqrt(dot3(a, a)); }
static void cross3(const double *a, const double *b, double *o) {
    double t[3] = {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]};
    memcpy(o, t, sizeof t);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static const char *sname(const ml_dcm_slice *s) { return s->name ? base_name(s->name) : "(image)"; }

/* ============================================================ the series assembler */
typedef struct {
    double d;
    int32_t temporal, instance, stack_pos, file, frame;
    int64_t idx;
} skey;

static int cmp_tie(const skey *a, const skey *b) {
    if (a->temporal != b->temporal) return a->temporal < b->temporal ? -1 : 1;
    if (a->instance != b->instance) return a->instance < b->instance ? -1 : 1;
    if (a->stack_pos != b->stack_pos) return a->stack_pos < b->stack_pos ? -1 : 1;
    if (a->file != b->file) return a->file < b->file ? -1 : 1;
    if (a->frame != b->frame) return a->frame < b->frame ? -1 : 1;
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

static int cmp_pos(const void *pa, const void *pb) {
    const skey *a = pa, *b = pb;
    if (a->d != b->d) return a->d < b->d ? -1 : 1;
    return cmp_tie(a, b);
}

static int cmp_tie_v(const void *pa, const void *pb) { return cmp_tie(pa, pb); }

void ml_dicom_plan_free(ml_dcm_plan *p) {
    if (!p) return;
    free(p->stack);
    free(p->interp);
    p->stack = NULL;
    p->interp = NULL;
}

static const char *policy_hint(void) {
    return "on_uneven/on_tilt = \"warn\" keeps the slices, \"resample\" interpolates onto an even orthogonal grid";
}

ml_err ml_dicom_assemble(ml_dcm_plan *plan, const ml_dcm_slice *s, int64_t n, int on_uneven, int on_tilt,
                         const char *what) {
    memset(plan, 0, sizeof *plan);
    if (!what) what = "dicom";
    if (n < 1) return ml_seterr(ML_ERR_IO, "dicom: %s: no images", what);
    if (n > MAX_IMAGES) return ml_seterr(ML_ERR_IO, "dicom: %s: %lld images is more than supported (%d)", what, (long long)n, MAX_IMAGES);
    const ml_dcm_slice *s0 = &s[0];
    /* ---- sizes, orientations, pixel spacings must agree */
    for (int64_t i = 0; i < n; i++) {
        if (s[i].rows < 1 || s[i].cols < 1 || s[i].rows > 65535 || s[i].cols > 65535)
            return ml_seterr(ML_ERR_IO, "dicom: %s: %s: absurd image size Rows %d x Columns %d", what, sname(&s[i]),
                             (int)s[i].rows, (int)s[i].cols);
        if (s[i].rows != s0->rows || s[i].cols != s0->cols)
            return ml_seterr(ML_ERR_IO,
                             "dicom: %s: mixed image sizes in the series: %s is %dx%d (Columns x Rows), %s is %dx%d; "
                             "pick one series with series_uid or separate the files",
                             what, sname(s0), (int)s0->cols, (int)s0->rows, sname(&s[i]), (int)s[i].cols,
                             (int)s[i].rows);
        for (int c = 0; c < 3; c++)
            if (s[i].has_ipp && !isfinite(s[i].ipp[c]))
                return ml_seterr(ML_ERR_IO, "dicom: %s: %s: ImagePositionPatient is not finite", what, sname(&s[i]));
        for (int c = 0; c < 6; c++)
            if (s[i].has_iop && !isfinite(s[i].iop[c]))
                return ml_seterr(ML_ERR_IO, "dicom: %s: %s: ImageOrientationPatient is not finite", what,
                                 sname(&s[i]));
        if (s[i].has_ps && !(s[i].ps[0] > 0 && s[i].ps[1] > 0 && s[i].ps[0] < 1e6 && s[i].ps[1] < 1e6))
            return ml_seterr(ML_ERR_IO, "dicom: %s: %s: invalid PixelSpacing %g\\%g", what, sname(&s[i]), s[i].ps[0],
                             s[i].ps[1]);
        if (s[i].has_iop != s0->has_iop)
            return ml_seterr(ML_ERR_IO, "dicom: %s: ImageOrientationPatient is present in %s but not in %s", what,
                             sname(s0->has_iop ? s0 : &s[i]), sname(s0->has_iop ? &s[i] : s0));
        if (s[i].has_iop)
            for (int c = 0; c < 6; c++)
                if (fabs(s[i].iop[c] - s0->iop[c]) > 1e-3)
                    return ml_seterr(ML_ERR_IO,
                                     "dicom: %s: mixed orientations in the series: %s has ImageOrientationPatient "
                                     "%.4g\\%.4g\\%.4g\\%.4g\\%.4g\\%.4g, %s has %.4g\\%.4g\\%.4g\\%.4g\\%.4g\\%.4g",
                                     what, sname(s0), s0->iop[0], s0->iop[1], s0->iop[2], s0->iop[3], s0->iop[4],
                                     s0->iop[5], sname(&s[i]), s[i].iop[0], s[i].iop[1], s[i].iop[2], s[i].iop[3],
                                     s[i].iop[4], s[i].iop[5]);
        if (s[i].has_ps != s0->has_ps ||
            (s[i].has_ps && (fabs(s[i].ps[0] - s0->ps[0]) > 1e-4 * fmax(1, s0->ps[0]) ||
                             fabs(s[i].ps[1] - s0->ps[1]) > 1e-4 * fmax(1, s0->ps[1]))))
            return ml_seterr(ML_ERR_IO, "dicom: %s: mixed pixel spacings in the series: %s has %g\\%g, %s has %g\\%g",
                             what, sname(s0), s0->has_ps ? s0->ps[0] : 0, s0->has_ps ? s0->ps[1] : 0, sname(&s[i]),
                             s[i].has_ps ? s[i].ps[0] : 0, s[i].has_ps ? s[i].ps[1] : 0);
    }
    plan->nx = s0->cols;
    plan->ny = s0->rows;
    /* ---- orientation */
    double r[3] = {1, 0, 0}, c[3] = {0, 1, 0}, nrm[3];
    if (s0->has_iop) {
        memcpy(r, s0->iop, sizeof r);
        memcpy(c, s0->iop + 3, sizeof c);
        double nr = norm3(r), nc = norm3(c);
        if (!(nr > 0.5 && nr < 2 && nc > 0.5 && nc < 2))
            return ml_seterr(ML_ERR_IO,
                             "dicom: %s: %s: ImageOrientationPatient %.4g\\%.4g\\%.4g\\%.4g\\%.4g\\%.4g is not two unit "
                             "vectors",
                             what, sname(s0), r[0], r[1], r[2], c[0], c[1], c[2]);
        for (int k = 0; k < 3; k++) r[k] /= nr, c[k] /= nc;
        double rc = dot3(r, c);
        if (fabs(rc) > 0.05)
            return ml_seterr(ML_ERR_IO,
                             "dicom: %s: %s: ImageOrientationPatient rows and columns are not orthogonal (cos %.3f)",
                             what, sname(s0), rc);
        for (int k = 0; k < 3; k++) c[k] -= rc * r[k];
        double n2 = norm3(c);
        for (int k = 0; k < 3; k++) c[k] /= n2;
    }
    cross3(r, c, nrm);
    double ps_row = s0->has_ps ? s0->ps[0] : 1, ps_col = s0->has_ps ? s0->ps[1] : 1;
    double minps = fmin(ps_row, ps_col);

    /* ---- order */
    bool all_ipp = true, all_inst = true, one_file = true;
    int64_t n_noipp = 0;
    for (int64_t i = 0; i < n; i++) {
        if (s[i].file != s0->file) one_file = false;
        if (!s[i].has_ipp) all_ipp = false, n_noipp++;
        if (!s[i].has_instance) all_inst = false;
    }
    skey *key = malloc((size_t)n * sizeof *key);
    if (!key) return ml_seterr(ML_ERR_OOM, "dicom: %s: out of memory", what);
    for (int64_t i = 0; i < n; i++) {
        key[i].d = all_ipp ? dot3(s[i].ipp, nrm) : 0;
        key[i].temporal = s[i].temporal;
        key[i].instance = all_inst ? s[i].instance : 0;
        key[i].stack_pos = s[i].stack_pos;
        key[i].file = s[i].file;
        key[i].frame = s[i].frame;
        key[i].idx = i;
    }
    ml_err e = ML_OK;
    double p0[3] = {0, 0, 0}, axis[3];
    double fallback_dz = s0->spacing_between > 0 ? s0->spacing_between : s0->thickness > 0 ? s0->thickness : 1.0;
    if (!(fallback_dz < 1e6)) fallback_dz = 1.0;
    plan->by_position = all_ipp && n > 1;
    if (plan->by_position) {
        qsort(key, (size_t)n, sizeof *key, cmp_pos);
        double span = key[n - 1].d - key[0].d;
        double tol = 1e-3 + 1e-5 * span;
        /* clusters of (nearly) equal positions */
        int64_t nclus = 0, nt = -1, start = 0;
        for (int64_t i = 1; i <= n; i++) {
            if (i == n || key[i].d - key[start].d > tol) {
                int64_t cnt = i - start;
                if (nt < 0) nt = cnt;
                else if (cnt != nt) {
                    e = ml_seterr(ML_ERR_IO,
                                  "dicom: %s: %lld images at %lld slice positions do not form a volume: the position "
                                  "of %s (%.4g mm along the normal) has %lld images, the first has %lld "
                                  "(duplicate files, or an incomplete 4-D series)",
                                  what, (long long)n, (long long)(nclus + 1), sname(&s[key[start].idx]),
                                  key[start].d, (long long)cnt, (long long)nt);
                    goto fail;
                }
                qsort(key + start, (size_t)cnt, sizeof *key, cmp_tie_v);
                nclus++;
                start = i;
            }
        }
        plan->nz_in = nclus;
        plan->nt = nt;
    } else {
        qsort(key, (size_t)n, sizeof *key, cmp_tie_v);
        plan->nz_in = n;
        plan->nt = 1;
        if (n > 1)
            ml_warn("dicom: %s: ImagePositionPatient missing in %lld of %lld images: slices stacked in %s order with "
                    "%g mm spacing (%s)",
                    what, (long long)n_noipp, (long long)n, one_file ? "frame" : all_inst ? "InstanceNumber" : "file/frame",
                    fallback_dz,
                    s0->spacing_between > 0 ? "SpacingBetweenSlices" : s0->thickness > 0 ? "SliceThickness"
                                                                                          : "no spacing in the header");
    }
    int64_t nz = plan->nz_in, nt = plan->nt;
    plan->stack = malloc((size_t)(nz * nt) * sizeof *plan->stack);
    if (!plan->stack) {
        e = ml_seterr(ML_ERR_OOM, "dicom: %s: out of memory", what);
        goto fail;
    }
    /* key is grouped by position (nt consecutive entries each) */
    for (int64_t k = 0; k < nz; k++)
        for (int64_t t = 0; t < nt; t++) plan->stack[k + nz * t] = key[k * nt + t].idx;
    const ml_dcm_slice *first = &s[plan->stack[0]];
    if (first->has_ipp) memcpy(p0, first->ipp, sizeof p0);
    for (int k = 0; k < 3; k++) axis[k] = nrm[k] * fallback_dz;
    plan->nz = nz;

    if (plan->by_position && nz >= 2) {
        double *d = malloc((size_t)nz * sizeof *d), *g = malloc((size_t)nz * sizeof *g);
        if (!d || !g) {
            free(d);
            free(g);
            e = ml_seterr(ML_ERR_OOM, "dicom: %s: out of memory", what);
            goto fail;
        }
        for (int64_t k = 0; k < nz; k++) d[k] = dot3(s[plan->stack[k]].ipp, nrm);
        for (int64_t k = 0; k + 1 < nz; k++) g[k] = d[k + 1] - d[k];
        qsort(g, (size_t)(nz - 1), sizeof *g, cmp_double);
        double gmin = g[0], gmax = g[nz - 2], gm = g[(nz - 1) / 2];
        if ((nz - 1) % 2 == 0) gm = 0.5 * (g[(nz - 1) / 2 - 1] + g[(nz - 1) / 2]);
        plan->median_gap = gm;
        plan->min_gap = gmin;
        plan->max_gap = gmax;
        double tol_u = fmin(0.2, 0.1 * gm);
        plan->uneven = (gmax - gm > tol_u) || (gm - gmin > tol_u);
        double L = d[nz - 1] - d[0];
        const double *pl = s[plan->stack[nz - 1]].ipp;
        double v[3] = {pl[0] - p0[0], pl[1] - p0[1], pl[2] - p0[2]}, w[3];
        double vn = dot3(v, nrm);
        for (int k = 0; k < 3; k++) w[k] = v[k] - vn * nrm[k];
        double drift = norm3(w);
        plan->tilted = drift > 0.1 * minps;
        plan->tilt_deg = atan2(drift, L) * 180.0 / M_PI;
        if (plan->uneven) {
            if (on_uneven == ML_DICOM_ERROR) {
                e = ml_seterr(ML_ERR_IO,
                              "dicom: %s: uneven slice spacing: gaps between slice positions from %.4g to %.4g mm "
                              "(median %.4g); %s",
                              what, gmin, gmax, gm, policy_hint());
                free(d), free(g);
                goto fail;
            }
            if (on_uneven == ML_DICOM_WARN)
                ml_warn("dicom: %s: uneven slice spacing: gaps from %.4g to %.4g mm; kept the %lld slices with the "
                        "median gap %.4g mm in the affine (on_uneven = \"resample\" interpolates onto an even grid)",
                        what, gmin, gmax, (long long)nz, gm);
        }
        if (plan->tilted) {
            if (on_tilt == ML_DICOM_ERROR) {
                e = ml_seterr(ML_ERR_IO,
                              "dicom: %s: gantry tilt of %.3g degrees (slice positions drift %.4g mm in-plane over "
                              "%.4g mm); %s",
                              what, plan->tilt_deg, drift, L, policy_hint());
                free(d), free(g);
                goto fail;
            }
            if (on_tilt == ML_DICOM_WARN)
                ml_warn("dicom: %s: gantry tilt of %.3g degrees: kept the slices with a sheared affine (every voxel "
                        "at its true position; on_tilt = \"resample\" gives an orthogonal grid)",
                        what, plan->tilt_deg);
        }
        bool rs_uneven = plan->uneven && on_uneven == ML_DICOM_RESAMPLE;
        bool rs_tilt = plan->tilted && on_tilt == ML_DICOM_RESAMPLE;
        /* direction of the slice axis per mm along the normal */
        double dir[3];
        for (int k = 0; k < 3; k++) dir[k] = (plan->tilted && !rs_tilt) ? v[k] / L : nrm[k];
        double step;
        int64_t nout = nz;
        if (rs_uneven) {
            nout = (int64_t)ceil(L / gmin - 1e-6) + 1;
            if (nout > 4 * nz) nout = 4 * nz;
            if (nout < 2) nout = 2;
            step = L / (double)(nout - 1);
        } else if (plan->uneven) {
            step = gm;
        } else {
            step = L / (double)(nz - 1);
        }
        for (int k = 0; k < 3; k++) axis[k] = dir[k] * step;
        if (rs_uneven || rs_tilt) {
            plan->resample = true;
            plan->nz = nout;
            plan->interp = calloc((size_t)nout, sizeof *plan->interp);
            if (!plan->interp) {
                free(d), free(g);
                e = ml_seterr(ML_ERR_OOM, "dicom: %s: out of memory", what);
                goto fail;
            }
            int64_t m = 0;
            for (int64_t k = 0; k < nout; k++) {
                double D = (k == nout - 1) ? L : step * (double)k; /* mm along the normal from slice 0 */
                while (m + 2 < nz && d[m + 1] - d[0] <= D) m++;
                double g0 = d[m + 1] - d[m];
                double wgt = g0 > 0 ? (D - (d[m] - d[0])) / g0 : 0;
                if (wgt < 0) wgt = 0;
                if (wgt > 1) wgt = 1;
                double P[3];
                for (int q = 0; q < 3; q++) P[q] = p0[q] + dir[q] * D;
                ml_dcm_interp *it = &plan->interp[k];
                it->k0 = m;
                it->k1 = m + 1;
                it->w = wgt;
                const double *a = s[plan->stack[m]].ipp, *b = s[plan->stack[m + 1]].ipp;
                double da[3] = {P[0] - a[0], P[1] - a[1], P[2] - a[2]}, db[3] = {P[0] - b[0], P[1] - b[1], P[2] - b[2]};
                it->sx0 = dot3(da, r) / ps_col;
                it->sy0 = dot3(da, c) / ps_row;
                it->sx1 = dot3(db, r) / ps_col;
                it->sy1 = dot3(db, c) / ps_row;
            }
        }
        free(d);
        free(g);
    }
    /* ---- affine: LPS from the geometry, then rows 0 and 1 negated (RAS) */
    {
        double *A = plan->affine;
        ml_affine_identity(A);
        for (int q = 0; q < 3; q++) {
            A[q * 4 + 0] = r[q] * ps_col;
            A[q * 4 + 1] = c[q] * ps_row;
            A[q * 4 + 2] = axis[q];
            A[q * 4 + 3] = p0[q];
        }
        for (int col = 0; col < 4; col++) A[col] = -A[col] + 0.0, A[4 + col] = -A[4 + col] + 0.0; /* no -0 */
        for (int q = 0; q < 12; q++)
            if (!isfinite(A[q])) {
                e = ml_seterr(ML_ERR_IO, "dicom: %s: the geometry gives a non-finite affine", what);
                goto fail;
            }
    }
    free(key);
    return ML_OK;
fail:
    free(key);
    ml_dicom_plan_free(plan);
    return e;
}

/* ================================================================ file discovery */
typedef struct {
    char **v;
    int64_t n, cap;
} strvec;

static int strvec_push(strvec *sv, const char *s) {
    if (sv->n == sv->cap) {
        int64_t nc = sv->cap ? sv->cap * 2 : 64;
        char **nv = realloc(sv->v, (size_t)nc * sizeof *nv);
        if (!nv) return -1;
        sv->v = nv;
        sv->cap = nc;
    }
    if (!(sv->v[sv->n] = strdup(s))) return -1;
    sv->n++;
    return 0;
}

static void strvec_free(strvec *sv) {
    for (int64_t i = 0; i < sv->n; i++) free(sv->v[i]);
    free(sv->v);
    sv->v = NULL;
    sv->n = sv->cap = 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static ml_err collect_files(strvec *out, const char *dir, int depth, int maxdepth) {
    DIR *d = opendir(dir);
    if (!d) return ml_seterr(ML_ERR_IO, "dicom: %s: cannot open directory: %s", dir, strerror(errno));
    struct dirent *de;
    ml_err e = ML_OK;
    size_t dl = strlen(dir);
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue; /* ., .., hidden files (dcm2niix skips them too) */
        size_t need = dl + strlen(de->d_name) + 2;
        char *p = malloc(need);
        if (!p) {
            e = ml_seterr(ML_ERR_OOM, "dicom: %s: out of memory listing files", dir);
            break;
        }
        snprintf(p, need, "%s%s%s", dir, (dl && dir[dl - 1] == '/') ? "" : "/", de->d_name);
        struct stat st;
        if (stat(p, &st) == 0) {
            if (S_ISDIR(st.st_mode)) {
                if (depth < maxdepth) e = collect_files(out, p, depth + 1, maxdepth);
            } else if (S_ISREG(st.st_mode)) {
                if (strvec_push(out, p)) e = ml_seterr(ML_ERR_OOM, "dicom: %s: out of memory listing files", dir);
            }
        }
        free(p);
        if (e) break;
    }
    closedir(d);
    return e;
}

/* Cheap test before handing a file of a directory to DCMTK: "DICM" at 128, or a dataset without
 * preamble that starts in group 0002 or 0008 (ACR-NEMA style files). */
static bool sniff_dicom(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    unsigned char b[132];
    size_t k = fread(b, 1, sizeof b, f);
    fclose(f);
    if (k == 132 && !memcmp(b + 128, "DICM", 4)) return true;
    if (k < 8) return false;
    unsigned g_le = b[0] | (b[1] << 8), g_be = (b[0] << 8) | b[1];
    return g_le == 0x0002 || g_le == 0x0008 || g_be == 0x0008;
}

static bool has_dicm(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    unsigned char b[132];
    size_t k = fread(b, 1, sizeof b, f);
    fclose(f);
    return k == 132 && !memcmp(b + 128, "DICM", 4);
}

/* ================================================================ header scan */
enum { F_IMAGE = 0, F_SKIPPED = 1, F_NOPIXELS = 2, F_ERROR = 3 };

typedef struct {
    const char *path;
    ml_dcm_file *f;
    ml_dcm_header h;
    int status;
    ml_err code;
    char err[320];
    int64_t slice0; /* first index in the slice array (selected files only) */
    /* Siemens mosaic (detect_mosaic): mosaic_n > 0 tiles of tile_rows x tile_cols, mosaic_nrc per row */
    int32_t mosaic_n, mosaic_nrc, tile_rows, tile_cols;
    double mosaic_snv[3];            /* CSA SliceNormalVector (LPS), when has_snv */
    uint8_t has_snv, mosaic_guessed; /* the tile count guessed from ImageType + AcquisitionMatrix */
    char mosaic_note[200];           /* why a file that looks like a mosaic was not unpacked */
} dfile;

/* images (slices) a file holds: its frames, or the tiles of a mosaic */
static int64_t images_of(const dfile *df) { return df->mosaic_n > 0 ? df->mosaic_n : df->h.frames; }

static int64_t frame_bytes(const ml_dcm_header *h) {
    int64_t px = (int64_t)h->rows * h->cols * (h->samples > 0 ? h->samples : 1);
    if (h->bits_alloc == 1) return (px + 7) / 8;
    return px * (h->bits_alloc / 8);
}

/* Checks of the image pixel module of one file; on failure fills df->err / df->code. */
static bool check_pixel_module(dfile *df) {
    ml_dcm_header *h = &df->h;
    const char *missing = !h->has_pixel_data ? "PixelData" : !h->has_rows ? "Rows" : !h->has_cols ? "Columns" : NULL;
    if (missing) {
        snprintf(df->err, sizeof df->err, "no image: the pixel module lacks %s (%s)", missing,
                 h->sop_class[0] ? h->sop_class : "no SOPClassUID");
        df->code = ML_ERR_IO;
        return false;
    }
    if (h->ts_class == ML_DCM_TS_UNSUPPORTED) {
        snprintf(df->err, sizeof df->err, "unsupported transfer syntax %s (%s)",
                 h->transfer_syntax[0] ? h->transfer_syntax : "?", h->ts_name);
        df->code = ML_ERR_UNSUPPORTED;
        return false;
    }
    if (h->rows < 1 || h->cols < 1 || h->frames < 1) {
        snprintf(df->err, sizeof df->err, "absurd dims: Rows %d, Columns %d, NumberOfFrames %d", (int)h->rows,
                 (int)h->cols, (int)h->frames);
        df->code = ML_ERR_IO;
        return false;
    }
    uint64_t px = (uint64_t)h->rows * (uint64_t)h->cols, tot;
    if (__builtin_mul_overflow(px, (uint64_t)h->frames, &tot) || tot > ((uint64_t)1 << 36)) {
        snprintf(df->err, sizeof df->err,
                 "absurd dims: Rows %d x Columns %d x NumberOfFrames %d = %llu voxels is more than supported",
                 (int)h->rows, (int)h->cols, (int)h->frames, (unsigned long long)px * (unsigned long long)h->frames);
        df->code = ML_ERR_IO;
        return false;
    }
    if (h->samples != 1 || (strcmp(h->photometric, "MONOCHROME1") && strcmp(h->photometric, "MONOCHROME2") &&
                            h->photometric[0])) {
        snprintf(df->err, sizeof df->err,
                 "%s images (SamplesPerPixel %d) are not supported; only grayscale (MONOCHROME1/2)",
                 h->photometric[0] ? h->photometric : "color", (int)h->samples);
        df->code = ML_ERR_UNSUPPORTED;
        return false;
    }
    if (h->bits_alloc != 1 && h->bits_alloc != 8 && h->bits_alloc != 16 && h->bits_alloc != 32) {
        snprintf(df->err, sizeof df->err, "BitsAllocated %d is not supported (1, 8, 16 or 32)", (int)h->bits_alloc);
        df->code = ML_ERR_UNSUPPORTED;
        return false;
    }
    if (h->bits_alloc == 1 && (px % 8) != 0) {
        snprintf(df->err, sizeof df->err, "1-bit images whose Rows x Columns is not a multiple of 8 are not supported");
        df->code = ML_ERR_UNSUPPORTED;
        return false;
    }
    if (h->bits_stored < 1 || h->bits_stored > h->bits_alloc) h->bits_stored = h->bits_alloc;
    if (h->ts_class == ML_DCM_TS_NATIVE) {
        uint64_t need = (uint64_t)frame_bytes(h) * (uint64_t)h->frames;
        if (h->pixel_length < need) {
            snprintf(df->err, sizeof df->err,
                     "truncated: PixelData holds %llu bytes but Rows %d x Columns %d x frames %d x %d bits needs %llu",
                     (unsigned long long)h->pixel_length, (int)h->rows, (int)h->cols, (int)h->frames,
                     (int)h->bits_alloc, (unsigned long long)need);
            df->code = ML_ERR_IO;
            return false;
        }
    }
    if (h->nframeinfo > 0 && h->nframeinfo < h->frames) {
        snprintf(df->err, sizeof df->err, "NumberOfFrames is %d but PerFrameFunctionalGroupsSequence has %d items",
                 (int)h->frames, (int)h->nframeinfo);
        df->code = ML_ERR_IO;
        return false;
    }
    return true;
}

/* ================================================================ Siemens mosaic */
static uint32_t rd_u32le(const uint8_t *b) {
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

int ml_dicom_csa_numbers(const uint8_t *buf, size_t len, const char *name, double *v, int maxv) {
    /* SV10: "SV10", 4 unused bytes, n_tags (u32), 77 (u32); per tag: name[64], vm, vr[4], syngodt,
     * n_items, xx (84 bytes); per item: 4 x i32 (the 2nd is the length) and the value padded to 4 */
    if (!buf || len < 16 || memcmp(buf, "SV10", 4) || !name || maxv < 1) return 0;
    uint32_t ntags = rd_u32le(buf + 8);
    if (ntags < 1 || ntags > 1000) return 0;
    size_t pos = 16;
    for (uint32_t t = 0; t < ntags; t++) {
        if (len - pos < 84) return 0;
        const uint8_t *tag = buf + pos;
        uint32_t vm = rd_u32le(tag + 64), nitems = rd_u32le(tag + 76);
        pos += 84;
        if (nitems > 1000) return 0;
        bool want = strnlen((const char *)tag, 64) < 64 && !strcmp((const char *)tag, name);
        uint32_t nvals = vm ? vm : nitems;
        int got = 0;
        bool stop = false;
        for (uint32_t i = 0; i < nitems; i++) {
            if (len - pos < 16) return 0;
            uint32_t il = rd_u32le(buf + pos + 4);
            pos += 16;
            if (il > len - pos) return 0;
            if (want && !stop && i < nvals && got < maxv) {
                char tmp[64];
                size_t k = il < sizeof tmp - 1 ? il : sizeof tmp - 1;
                memcpy(tmp, buf + pos, k);
                tmp[k] = '\0';
                char *end = NULL;
                double x = strtod(tmp, &end);
                if (il == 0 || end == tmp || !isfinite(x)) stop = true;
                else v[got++] = x;
            }
            size_t adv = ((size_t)il + 3) & ~(size_t)3;
            pos = adv > len - pos ? len : pos + adv;
        }
        if (want) return got;
    }
    return 0;
}

/* Is df a Siemens mosaic (one frame tiling N slices)? As dcm2niix: N from the CSA image header's
 * NumberOfImagesInMosaic, else (0019,xx0A), else (ImageType MOSAIC) guessed from AcquisitionMatrix;
 * the tiles are ceil(sqrt(N)) per row and column. Sets the dfile's mosaic_* fields. */
static void detect_mosaic(dfile *df) {
    const ml_dcm_header *h = &df->h;
    df->mosaic_n = 0;
    int64_t n = 0;
    double v[3];
    if (h->csa_image && ml_dicom_csa_numbers(h->csa_image, h->csa_image_len, "NumberOfImagesInMosaic", v, 1) == 1 &&
        v[0] >= 2 && v[0] <= 65536)
        n = (int64_t)llround(v[0]);
    if (n < 2 && h->siemens_mosaic_n >= 2) n = h->siemens_mosaic_n;
    bool tagged = strstr(h->image_type, "MOSAIC") != NULL;
    if (n < 2 && tagged && h->has_acq_matrix) {
        int32_t fr = h->acq_matrix[0] ? h->acq_matrix[0] : h->acq_matrix[1];
        int32_t ph = h->acq_matrix[3] ? h->acq_matrix[3] : h->acq_matrix[2];
        if (fr > 0 && ph > 0 && h->cols % fr == 0 && h->rows % ph == 0 && h->cols / fr > 2 && h->rows / ph > 2) {
            n = (int64_t)(h->cols / fr) * (h->rows / ph);
            df->mosaic_guessed = 1;
        }
    }
    if (n < 2) {
        if (tagged)
            snprintf(df->mosaic_note, sizeof df->mosaic_note,
                     "ImageType says MOSAIC but the number of images in it is unknown (no CSA "
                     "NumberOfImagesInMosaic, no (0019,100A), no usable AcquisitionMatrix): read as one image");
        return;
    }
    int32_t nrc = 1;
    while ((int64_t)nrc * nrc < n) nrc++;
    if (h->frames != 1 || h->bits_alloc == 1 || h->rows % nrc || h->cols % nrc) {
        snprintf(df->mosaic_note, sizeof df->mosaic_note,
                 "a Siemens mosaic of %lld images must be one frame of %d x %d tiles, but it has %d frame(s) of "
                 "Rows %d x Columns %d, %d bits: read as it is",
                 (long long)n, (int)nrc, (int)nrc, (int)h->frames, (int)h->rows, (int)h->cols, (int)h->bits_alloc);
        return;
    }
    df->mosaic_n = (int32_t)n;
    df->mosaic_nrc = nrc;
    df->tile_rows = h->rows / nrc;
    df->tile_cols = h->cols / nrc;
    df->has_snv = h->csa_image && ml_dicom_csa_numbers(h->csa_image, h->csa_image_len, "SliceNormalVector",
                                                      df->mosaic_snv, 3) == 3;
}

/* Parse one file. single: the path was given by the user (errors are the answer), else a file of a
 * directory scan (non-DICOM files are skipped quietly). */
static void scan_one(dfile *df, bool single) {
    char err[256];
    df->status = F_ERROR;
    df->code = ML_ERR_IO;
    if (!single && !sniff_dicom(df->path)) {
        df->status = F_SKIPPED;
        return;
    }
    struct stat st;
    if (stat(df->path, &st) != 0) {
        snprintf(df->err, sizeof df->err, "cannot open: %s", strerror(errno));
        return;
    }
    int rc = ml_dcm_open(df->path, &df->f, err, sizeof err);
    if (rc) {
        df->code = rc == ML_DCM_EOOM ? ML_ERR_OOM : ML_ERR_IO;
        if (!has_dicm(df->path))
            snprintf(df->err, sizeof df->err,
                     "not a DICOM file: no 'DICM' magic at byte 128 and no parseable dataset (%.200s)", err);
        else if (st.st_size < 132 + 12)
            snprintf(df->err, sizeof df->err, "truncated: %lld bytes (%.200s)", (long long)st.st_size, err);
        else if (strstr(err, "premature end"))
            snprintf(df->err, sizeof df->err,
                     "truncated: the file (%lld bytes) ends inside an element or before the pixel data is complete "
                     "(DCMTK: %.150s)",
                     (long long)st.st_size, err);
        else
            snprintf(df->err, sizeof df->err, "cannot parse (truncated or corrupt): %s", err);
        if (!single) df->status = has_dicm(df->path) ? F_ERROR : F_SKIPPED;
        return;
    }
    rc = ml_dcm_read_header(df->f, &df->h, err, sizeof err);
    if (rc) {
        df->code = rc == ML_DCM_EOOM ? ML_ERR_OOM : ML_ERR_IO;
        snprintf(df->err, sizeof df->err, "%s", err);
        return;
    }
    if (!df->h.has_pixel_data && !df->h.has_rows) {
        if (!has_dicm(df->path) && !df->h.sop_class[0] && !df->h.series_uid[0]) {
            snprintf(df->err, sizeof df->err,
                     "not a DICOM file: no 'DICM' magic at byte 128 and no DICOM image attributes");
            df->status = single ? F_ERROR : F_SKIPPED;
        } else {
            check_pixel_module(df);
            df->status = single ? F_ERROR : F_NOPIXELS;
        }
        ml_dcm_close(df->f);
        df->f = NULL;
        return;
    }
    if (!check_pixel_module(df)) {
        ml_dcm_close(df->f);
        df->f = NULL;
        return;
    }
    detect_mosaic(df);
    df->status = F_IMAGE;
}

/* Threads this read may use: medlua.threads(n) (ml_num_threads), fewer where the calling thread's
 * OpenMP setting says so (a data-loader worker runs its kernels single-threaded), 1 inside an active
 * parallel region. */
static int thread_budget(void) {
#ifdef _OPENMP
    if (omp_in_parallel() || omp_get_max_active_levels() < 1) return 1;
    int t = omp_get_max_threads(), g = ml_num_threads();
    if (g < t) t = g;
    return t > 1 ? t : 1;
#else
    return 1;
#endif
}

static int nthreads_for(int64_t n) {
    int t = thread_budget();
    return (int)(n < t ? (n > 0 ? n : 1) : t);
}

/* OpenJPEG threads for each JPEG 2000 frame when nframes frames are decoded in parallel: the
 * threads left over, when the frames are fewer than the budget (one large X-ray, a 3-slice series on
 * 16 cores); 1 otherwise (frames in parallel use every core with no pool to start). */
static int j2k_inner_threads(int64_t nframes) {
    int t = thread_budget();
    if (nframes < 1) nframes = 1;
    return nframes >= t ? 1 : (int)(t / nframes);
}

static void scan_all(dfile *fs, int64_t n, bool single) {
    int nt = nthreads_for(n);
    (void)nt;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int64_t i = 0; i < n; i++) scan_one(&fs[i], single);
}

static void free_files(dfile *fs, int64_t n) {
    if (!fs) return;
    for (int64_t i = 0; i < n; i++) {
        ml_dcm_close(fs[i].f);
        ml_dcm_header_free(&fs[i].h);
    }
    free(fs);
}

/* Scan path (file or directory) into an array of dfile. *is_dir tells which. */
static ml_err scan_path(const char *path, bool recursive, dfile **out, int64_t *nout, strvec *names, bool *is_dir) {
    *out = NULL;
    *nout = 0;
    struct stat st;
    if (!path || !*path) return ml_seterr(ML_ERR_ARG, "dicom: empty path");
    if (stat(path, &st) != 0) return ml_seterr(ML_ERR_IO, "dicom: %s: %s", path, strerror(errno));
    *is_dir = S_ISDIR(st.st_mode);
    ml_dcm_global_init();
    if (*is_dir) {
        ml_err e = collect_files(names, path, 0, recursive ? MAX_DEPTH : 0);
        if (e) return e;
        if (names->n > 1) qsort(names->v, (size_t)names->n, sizeof *names->v, cmp_str);
    } else {
        if (strvec_push(names, path)) return ml_seterr(ML_ERR_OOM, "dicom: out of memory");
    }
    dfile *fs = calloc((size_t)(names->n ? names->n : 1), sizeof *fs);
    if (!fs) return ml_seterr(ML_ERR_OOM, "dicom: %s: out of memory", path);
    for (int64_t i = 0; i < names->n; i++) fs[i].path = names->v[i];
    scan_all(fs, names->n, !*is_dir);
    *out = fs;
    *nout = names->n;
    return ML_OK;
}

/* ================================================================ series grouping */
typedef struct {
    const char *uid;
    int64_t first, n_files, n_images; /* first: index into the sorted image-file index list */
} series_t;

static _Thread_local dfile *t_sort_fs; /* the array qsort's comparator reads (calling thread only) */
static int cmp_file_series(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    int c = strcmp(t_sort_fs[x].h.series_uid, t_sort_fs[y].h.series_uid);
    if (c) return c;
    return x < y ? -1 : x > y;
}

/* image files grouped by SeriesInstanceUID: *idx (sorted file indices), *ser (groups) */
static ml_err group_series(dfile *fs, int64_t n, int64_t **idx_out, int64_t *nimg_out, series_t **ser_out,
                           int64_t *nser_out) {
    int64_t *idx = malloc((size_t)(n ? n : 1) * sizeof *idx);
    series_t *ser = malloc((size_t)(n ? n : 1) * sizeof *ser);
    if (!idx || !ser) {
        free(idx);
        free(ser);
        return ml_seterr(ML_ERR_OOM, "dicom: out of memory");
    }
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++)
        if (fs[i].status == F_IMAGE) idx[m++] = i;
    t_sort_fs = fs;
    qsort(idx, (size_t)m, sizeof *idx, cmp_file_series);
    int64_t ns = 0;
    for (int64_t i = 0; i < m; i++) {
        const char *u = fs[idx[i]].h.series_uid;
        if (i == 0 || strcmp(u, ser[ns - 1].uid)) {
            ser[ns].uid = u;
            ser[ns].first = i;
            ser[ns].n_files = 0;
            ser[ns].n_images = 0;
            ns++;
        }
        ser[ns - 1].n_files++;
        ser[ns - 1].n_images += images_of(&fs[idx[i]]);
    }
    *idx_out = idx;
    *nimg_out = m;
    *ser_out = ser;
    *nser_out = ns;
    return ML_OK;
}

/* An error for a directory without images: say what was found. */
static ml_err no_images_error(const char *path, dfile *fs, int64_t n) {
    int64_t skipped = 0, nopix = 0, bad = 0;
    const char *ex_bad = NULL, *ex_bad_msg = NULL, *ex_nopix = NULL;
    for (int64_t i = 0; i < n; i++) {
        if (fs[i].status == F_SKIPPED) skipped++;
        else if (fs[i].status == F_NOPIXELS) nopix++, ex_nopix = ex_nopix ? ex_nopix : fs[i].path;
        else if (fs[i].status == F_ERROR) {
            bad++;
            if (!ex_bad) ex_bad = fs[i].path, ex_bad_msg = fs[i].err;
        }
    }
    if (bad == 1 && n == 1) return ml_seterr(fs[0].code, "dicom: %s: %s", ex_bad, ex_bad_msg);
    if (bad)
        return ml_seterr(ML_ERR_IO,
                         "dicom: %s: no readable DICOM images (%lld files: %lld not DICOM, %lld DICOM without pixel "
                         "data, %lld unreadable, e.g. %s: %s)",
                         path, (long long)n, (long long)skipped, (long long)nopix, (long long)bad,
                         base_name(ex_bad), ex_bad_msg);
    return ml_seterr(ML_ERR_IO,
                     "dicom: %s: no DICOM images found (%lld files: %lld not DICOM, %lld DICOM without pixel data%s%s)",
                     path, (long long)n, (long long)skipped, (long long)nopix, ex_nopix ? ", e.g. " : "",
                     ex_nopix ? base_name(ex_nopix) : "");
}

static void warn_unreadable(const char *path, dfile *fs, int64_t n) {
    int64_t bad = 0;
    const char *ex = NULL, *msg = NULL;
    for (int64_t i = 0; i < n; i++)
        if (fs[i].status == F_ERROR) {
            bad++;
            if (!ex) ex = fs[i].path, msg = fs[i].err;
        }
    if (bad) ml_warn("dicom: %s: skipped %lld unreadable DICOM files (e.g. %s: %s)", path, (long long)bad,
                     base_name(ex), msg);
}

/* ================================================================ listing */
void ml_dicom_series_free(ml_dicom_series_info *s, int n) {
    if (!s) return;
    for (int i = 0; i < n; i++) free(s[i].first_file);
    free(s);
}

static int cmp_info(const void *pa, const void *pb) {
    const ml_dicom_series_info *a = pa, *b = pb;
    if (a->series_number != b->series_number) return a->series_number < b->series_number ? -1 : 1;
    return strcmp(a->series_uid, b->series_uid);
}

ml_err ml_dicom_list_series(ml_dicom_series_info **out, int *nout, const char *dir, bool recursive) {
    *out = NULL;
    *nout = 0;
    strvec names = {0};
    dfile *fs = NULL;
    int64_t n = 0, *idx = NULL, nimg = 0, nser = 0;
    series_t *ser = NULL;
    bool is_dir = false;
    ml_err e = scan_path(dir, recursive, &fs, &n, &names, &is_dir);
    if (e) goto done;
    if ((e = group_series(fs, n, &idx, &nimg, &ser, &nser))) goto done;
    ml_dicom_series_info *info = calloc((size_t)(nser ? nser : 1), sizeof *info);
    if (!info) {
        e = ml_seterr(ML_ERR_OOM, "dicom: out of memory");
        goto done;
    }
    for (int64_t k = 0; k < nser; k++) {
        const ml_dcm_header *h = &fs[idx[ser[k].first]].h;
        ml_dicom_series_info *s = &info[k];
        cpy(s->series_uid, sizeof s->series_uid, h->series_uid);
        cpy(s->study_uid, sizeof s->study_uid, h->study_uid);
        cpy(s->modality, sizeof s->modality, h->modality);
        cpy(s->description, sizeof s->description, h->description);
        cpy(s->patient_id, sizeof s->patient_id, h->patient_id);
        cpy(s->transfer_syntax, sizeof s->transfer_syntax, h->transfer_syntax);
        cpy(s->ts_name, sizeof s->ts_name, h->ts_name);
        s->series_number = h->has_series_number ? h->series_number : -1;
        s->n_files = (int32_t)ser[k].n_files;
        s->n_images = (int32_t)ser[k].n_images;
        const dfile *d0 = &fs[idx[ser[k].first]];
        s->rows = d0->mosaic_n > 0 ? d0->tile_rows : h->rows; /* a mosaic's slices */
        s->cols = d0->mosaic_n > 0 ? d0->tile_cols : h->cols;
        s->first_file = strdup(fs[idx[ser[k].first]].path);
        if (!s->first_file) {
            ml_dicom_series_free(info, (int)k);
            e = ml_seterr(ML_ERR_OOM, "dicom: out of memory");
            goto done;
        }
    }
    qsort(info, (size_t)nser, sizeof *info, cmp_info);
    *out = info;
    *nout = (int)nser;
done:
    free(idx);
    free(ser);
    free_files(fs, n);
    strvec_free(&names);
    return e;
}

/* ================================================================ pixel conversion */
/* raw stored values (host order) -> float32 (v * slope + intercept) or int32 (stored values);
 * unused high bits are dropped (sign-extended from BitsStored for signed data), as pydicom does. */
static void convert_frame(const void *raw, const ml_dcm_header *h, int64_t npx, bool native, double slope,
                          double icpt, void *dst) {
    int ba = h->bits_alloc, bs = h->bits_stored, pr = h->pixel_rep;
    float *df = native ? NULL : (float *)dst;
    int32_t *di = native ? (int32_t *)dst : NULL;
#define EMIT(i, val)                                                                                         \
    do {                                                                                                     \
        int64_t v_ = (val);                                                                                  \
        if (native) di[i] = (int32_t)(v_ > INT32_MAX ? INT32_MAX : v_ < INT32_MIN ? INT32_MIN : v_);         \
        else df[i] = (float)((double)v_ * slope + icpt);                                                     \
    } while (0)
    if (ba == 1) {
        const uint8_t *b = raw;
        for (int64_t i = 0; i < npx; i++) EMIT(i, (b[i >> 3] >> (i & 7)) & 1);
        return;
    }
    uint32_t mask = bs >= 32 ? 0xFFFFFFFFu : ((1u << bs) - 1u);
    uint32_t sign = bs >= 32 ? 0x80000000u : (1u << (bs - 1));
    if (ba == 8) {
        const uint8_t *b = raw;
        for (int64_t i = 0; i < npx; i++) {
            uint32_t u = b[i] & mask;
            EMIT(i, pr && (u & sign) ? (int64_t)u - ((int64_t)mask + 1) : (int64_t)u);
        }
    } else if (ba == 16) {
        const uint16_t *b = raw;
        if (bs == 16 && !native) {
            if (pr) {
                const int16_t *sb = raw;
                for (int64_t i = 0; i < npx; i++) df[i] = (float)((double)sb[i] * slope + icpt);
            } else {
                for (int64_t i = 0; i < npx; i++) df[i] = (float)((double)b[i] * slope + icpt);
            }
            return;
        }
        for (int64_t i = 0; i < npx; i++) {
            uint32_t u = b[i] & mask;
            EMIT(i, pr && (u & sign) ? (int64_t)u - ((int64_t)mask + 1) : (int64_t)u);
        }
    } else { /* 32 */
        const uint32_t *b = raw;
        for (int64_t i = 0; i < npx; i++) {
            uint32_t u = b[i] & mask;
            EMIT(i, pr && (u & sign) ? (int64_t)u - ((int64_t)mask + 1) : (int64_t)u);
        }
    }
#undef EMIT
}

static void convert_i32(const int32_t *src, int64_t npx, bool native, double slope, double icpt, void *dst) {
    if (native) {
        memcpy(dst, src, (size_t)npx * sizeof(int32_t));
        return;
    }
    float *df = dst;
    for (int64_t i = 0; i < npx; i++) df[i] = (float)((double)src[i] * slope + icpt);
}

/* ================================================================ RLE Lossless, 1 bit allocated
 * DCMTK's RLE codec (and pydicom's) refuses BitsAllocated 1 ("Pixel representation cannot be
 * changed"), but binary segmentations are written that way (highdicom, GDCM, dcmqi): one byte
 * segment holding the frame's bit-packed bytes, exactly the native layout. The frame is the
 * 64-byte RLE header (number of segments, 15 offsets, little endian) and PackBits segments
 * (PS3.5 Annex G). */
static bool rle_packbits(const uint8_t *src, size_t n, uint8_t *dst, size_t want, size_t *got) {
    size_t i = 0, o = 0;
    while (i < n && o < want) {
        int c = (int8_t)src[i++];
        if (c >= 0) {
            size_t k = (size_t)c + 1;
            if (k > n - i) k = n - i; /* truncated literal run: what is there */
            if (k > want - o) k = want - o;
            memcpy(dst + o, src + i, k);
            i += k, o += k;
        } else if (c != -128) {
            if (i >= n) break;
            size_t k = (size_t)(1 - c);
            if (k > want - o) k = want - o;
            memset(dst + o, src[i++], k);
            o += k;
        }
    }
    *got = o;
    return o == want;
}

/* Decode one RLE frame of a 1-bit image into dst (want bytes). err gets the reason. */
static bool rle_decode_1bit(const uint8_t *src, size_t n, uint8_t *dst, size_t want, char *err, size_t errlen) {
    if (n < 64) {
        snprintf(err, errlen, "RLE frame of %zu bytes is shorter than its 64-byte header", n);
        return false;
    }
    uint32_t hdr[16];
    for (int k = 0; k < 16; k++)
        hdr[k] = (uint32_t)src[4 * k] | (uint32_t)src[4 * k + 1] << 8 | (uint32_t)src[4 * k + 2] << 16 |
                 (uint32_t)src[4 * k + 3] << 24;
    if (hdr[0] != 1) {
        snprintf(err, errlen, "RLE header declares %u segments; a 1-bit grayscale frame has 1", (unsigned)hdr[0]);
        return false;
    }
    if (hdr[1] < 64 || hdr[1] >= n) {
        snprintf(err, errlen, "RLE segment offset %u lies outside the %zu-byte frame", (unsigned)hdr[1], n);
        return false;
    }
    size_t got = 0;
    if (!rle_packbits(src + hdr[1], n - hdr[1], dst, want, &got)) {
        snprintf(err, errlen, "RLE segment decodes to %zu bytes; the frame needs %zu", got, want);
        return false;
    }
    return true;
}

static bool is_rle(const ml_dcm_header *h) { return !strcmp(h->transfer_syntax, "1.2.840.10008.1.2.5"); }

/* ================================================================ reading */
void ml_dicom_read_opts_init(ml_dicom_read_opts *o) {
    memset(o, 0, sizeof *o);
    o->on_uneven = ML_DICOM_WARN;
    o->on_tilt = ML_DICOM_WARN;
    o->recursive = true;
}

typedef struct {
    const ml_dcm_slice *sl; /* slices */
    double *slope, *icpt;   /* per slice */
    int64_t *slot;          /* per slice: destination frame index in dst */
    char *dst;              /* frames of npx elements (float32 or int32) */
    int64_t npx;
    bool native;
    int j2k_threads; /* OpenJPEG threads per frame (j2k_inner_threads) */
} decode_ctx;

static void frame_what(char *buf, size_t n, const dfile *df, int32_t frame) {
    if (df->h.frames > 1) snprintf(buf, n, "dicom: %s: frame %d", df->path, (int)frame);
    else snprintf(buf, n, "dicom: %s", df->path);
}

/* copy tile q (tiles nrc per row) of a mosaic of cols columns, esz bytes per sample, into dst */
static void copy_tile(const void *mosaic, int64_t cols, int32_t tr, int32_t tc, int32_t nrc, int32_t q, size_t esz,
                      void *dst) {
    int64_t y0 = (int64_t)(q / nrc) * tr, x0 = (int64_t)(q % nrc) * tc;
    for (int64_t y = 0; y < tr; y++)
        memcpy((char *)dst + (size_t)(y * tc) * esz, (const char *)mosaic + (size_t)((y0 + y) * cols + x0) * esz,
               (size_t)tc * esz);
}

/* The one frame of a mosaic file, cut into its tiles (the slices s0 .. s0+cnt-1, frame = tile). */
static bool decode_mosaic(dfile *df, int64_t s0, int64_t cnt, const decode_ctx *cx) {
    char err[256];
    const ml_dcm_header *h = &df->h;
    int64_t npx = cx->npx, mpx = (int64_t)h->rows * h->cols;
    bool j2k = h->ts_class == ML_DCM_TS_J2K;
    size_t in_esz = j2k ? sizeof(int32_t) : (size_t)(h->bits_alloc / 8);
    size_t bsz = j2k ? (size_t)mpx * sizeof(int32_t) : (size_t)frame_bytes(h) + 8;
    void *full = malloc(bsz), *tile = malloc((size_t)npx * in_esz + 8);
    bool ok = full && tile;
    if (!ok) {
        df->code = ML_ERR_OOM;
        snprintf(df->err, sizeof df->err, "out of memory");
    }
    if (ok && j2k) {
        uint8_t *bs = NULL;
        size_t bl = 0;
        int rc = ml_dcm_frame_bitstream(df->f, 0, 1, &bs, &bl, err, sizeof err);
        if (rc) {
            df->code = rc == ML_DCM_EOOM ? ML_ERR_OOM : ML_ERR_IO;
            snprintf(df->err, sizeof df->err, "mosaic frame: %s", err);
            ok = false;
        } else {
            char what[300];
            frame_what(what, sizeof what, df, 0);
            ml_err e = ml_j2k_decode_mt(bs, bl, h->cols, h->rows, h->pixel_rep, full, cx->j2k_threads, what);
            if (e) {
                df->code = e;
                snprintf(df->err, sizeof df->err, "%s", ml_errmsg());
                ok = false;
            }
        }
        free(bs);
    } else if (ok) {
        uint32_t sf = 0;
        int rc = ml_dcm_frame_pixels(df->f, 0, full, bsz & ~(size_t)1, &sf, err, sizeof err);
        if (rc) {
            df->code = rc == ML_DCM_EOOM ? ML_ERR_OOM : ML_ERR_IO;
            if (h->ts_class == ML_DCM_TS_NATIVE)
                snprintf(df->err, sizeof df->err, "truncated or unreadable pixel data: %s", err);
            else
                snprintf(df->err, sizeof df->err, "%.60s stream corrupt: %.200s", h->ts_name, err);
            ok = false;
        }
    }
    for (int64_t q = 0; q < cnt && ok; q++) {
        const ml_dcm_slice *s = &cx->sl[s0 + q];
        copy_tile(full, h->cols, df->tile_rows, df->tile_cols, df->mosaic_nrc, s->frame, in_esz, tile);
        char *dst = cx->dst + (size_t)cx->slot[s0 + q] * (size_t)npx * sizeof(float);
        if (j2k) convert_i32(tile, npx, cx->native, cx->slope[s0 + q], cx->icpt[s0 + q], dst);
        else convert_frame(tile, h, npx, cx->native, cx->slope[s0 + q], cx->icpt[s0 + q], dst);
    }
    free(full);
    free(tile);
    return ok;
}

/* Decode all frames of file df whose slices are s0 .. s0+cnt-1. Errors in df->err / df->code. */
static bool decode_file(dfile *df, int64_t s0, int64_t cnt, const decode_ctx *cx) {
    char err[256];
    if (!df->f) {
        int rc = ml_dcm_open(df->path, &df->f, err, sizeof err);
        if (rc) {
            df->code = rc == ML_DCM_EOOM ? ML_ERR_OOM : ML_ERR_IO;
            snprintf(df->err, sizeof df->err, "cannot re-open: %s", err);
            return false;
        }
    }
    if (df->mosaic_n > 0) return decode_mosaic(df, s0, cnt, cx);
    const ml_dcm_header *h = &df->h;
    int64_t npx = cx->npx, fb = frame_bytes(h);
    size_t esz = sizeof(float);
    if (h->ts_class == ML_DCM_TS_J2K) {
        int32_t *tmp = malloc((size_t)npx * sizeof *tmp);
        if (!tmp) {
            df->code = ML_ERR_OOM;
            snprintf(df->err, sizeof df->err, "out of memory");
            return false;
        }
        bool ok = true;
        for (int64_t q = 0; q < cnt && ok; q++) {
            const ml_dcm_slice *s = &cx->sl[s0 + q];
            uint8_t *bs = NULL;
            size_t bl = 0;
            int rc = ml_dcm_frame_bitstream(df->f, (uint32_t)s->frame, (uint32_t)h->frames, &bs, &bl, err, sizeof err);
            if (rc) {
                df->code = rc == ML_DCM_EOOM ? ML_ERR_OOM : ML_ERR_IO;
                snprintf(df->err, sizeof df->err, "frame %d: %s", (int)s->frame, err);
                ok = false;
                break;
            }
            char what[300];
            frame_what(what, sizeof what, df, s->frame);
            ml_err e = ml_j2k_decode_mt(bs, bl, h->cols, h->rows, h->pixel_rep, tmp, cx->j2k_threads, what);
            free(bs);
            if (e) {
                df->code = e;
                snprintf(df->err, sizeof df->err, "%s", ml_errmsg());
                /* ml_j2k_decode's message already names the file: mark it */
                df->err[sizeof df->err - 1] = '\0';
                ok = false;
                break;
            }
            convert_i32(tmp, npx, cx->native, cx->slope[s0 + q], cx->icpt[s0 + q],
                        cx->dst + (size_t)cx->slot[s0 + q] * (size_t)npx * esz);
        }
        free(tmp);
        return ok;
    }
    size_t bsz = (size_t)fb + 8;
    void *raw = malloc(bsz);
    if (!raw) {
        df->code = ML_ERR_OOM;
        snprintf(df->err, sizeof df->err, "out of memory");
        return false;
    }
    uint32_t sf = 0;
    bool ok = true;
    bool own_rle = h->bits_alloc == 1 && h->ts_class == ML_DCM_TS_DCMTK && is_rle(h);
    for (int64_t q = 0; q < cnt; q++) {
        const ml_dcm_slice *s = &cx->sl[s0 + q];
        int rc;
        if (own_rle) {
            uint8_t *bs = NULL;
            size_t bl = 0;
            rc = ml_dcm_frame_bitstream(df->f, (uint32_t)s->frame, (uint32_t)h->frames, &bs, &bl, err, sizeof err);
            if (!rc && !rle_decode_1bit(bs, bl, raw, (size_t)fb, err, sizeof err)) rc = ML_DCM_EIO;
            free(bs);
            if (rc) {
                df->code = rc == ML_DCM_EOOM ? ML_ERR_OOM : ML_ERR_IO;
                snprintf(df->err, sizeof df->err, "%.60s stream corrupt: frame %d: %.200s", h->ts_name, (int)s->frame,
                         err);
                ok = false;
                break;
            }
            convert_frame(raw, h, npx, cx->native, cx->slope[s0 + q], cx->icpt[s0 + q],
                          cx->dst + (size_t)cx->slot[s0 + q] * (size_t)npx * esz);
            continue;
        }
        rc = ml_dcm_frame_pixels(df->f, (uint32_t)s->frame, raw, bsz & ~(size_t)1, &sf, err, sizeof err);
        if (rc) {
            df->code = rc == ML_DCM_EOOM ? ML_ERR_OOM : ML_ERR_IO;
            if (h->ts_class == ML_DCM_TS_NATIVE)
                snprintf(df->err, sizeof df->err, "truncated or unreadable pixel data: %s", err);
            else
                snprintf(df->err, sizeof df->err, "%.60s stream corrupt: %.200s", h->ts_name, err);
            ok = false;
            break;
        }
        convert_frame(raw, h, npx, cx->native, cx->slope[s0 + q], cx->icpt[s0 + q],
                      cx->dst + (size_t)cx->slot[s0 + q] * (size_t)npx * esz);
    }
    free(raw);
    return ok;
}

/* bilinear sample of src (nx x ny) shifted by (sx, sy), times wgt, added to (or stored in) dst */
static void shift_accum(const float *src, int64_t nx, int64_t ny, double sx, double sy, float fill, double wgt,
                        bool add, float *dst) {
    bool integral = fabs(sx - round(sx)) < 1e-6 && fabs(sy - round(sy)) < 1e-6;
    for (int64_t j = 0; j < ny; j++) {
        double y = (double)j + sy;
        for (int64_t i = 0; i < nx; i++) {
            double x = (double)i + sx, v;
            if (integral) {
                int64_t xi = (int64_t)llround(x), yi = (int64_t)llround(y);
                v = (xi >= 0 && xi < nx && yi >= 0 && yi < ny) ? src[yi * nx + xi] : fill;
            } else if (x < 0 || y < 0 || x > (double)(nx - 1) || y > (double)(ny - 1)) {
                v = fill;
            } else {
                int64_t x0 = (int64_t)floor(x), y0 = (int64_t)floor(y);
                double fx = x - (double)x0, fy = y - (double)y0;
                int64_t x1 = x0 + 1 < nx ? x0 + 1 : x0, y1 = y0 + 1 < ny ? y0 + 1 : y0;
                v = (1 - fy) * ((1 - fx) * src[y0 * nx + x0] + fx * src[y0 * nx + x1]) +
                    fy * ((1 - fx) * src[y1 * nx + x0] + fx * src[y1 * nx + x1]);
            }
            if (add) dst[j * nx + i] += (float)(wgt * v);
            else dst[j * nx + i] = (float)(wgt * v);
        }
    }
}

/* The tiles of a mosaic file as slices (frame = tile index). As dcm2niix: ImagePositionPatient is
 * the corner of the whole mosaic seen as one image centred on the tiles, so the first tile's corner
 * is it moved by half the difference of the mosaic and tile sizes along the row and column
 * directions; tile q lies q * spacing (SpacingBetweenSlices, else SliceThickness) further along the
 * slice direction: the CSA SliceNormalVector when present (it may point against row x column),
 * else row x column. */
static void mosaic_slices(const dfile *df, int32_t file, const double *nrm, double dz, ml_dcm_slice *x, double *sl,
                          double *ic) {
    const ml_dcm_header *h = &df->h;
    double r[3] = {1, 0, 0}, c[3] = {0, 1, 0};
    if (h->has_iop) memcpy(r, h->iop, sizeof r), memcpy(c, h->iop + 3, sizeof c);
    bool ps_ok = h->has_ps && h->ps[0] > 0 && h->ps[1] > 0;
    double ps_row = ps_ok ? h->ps[0] : 1, ps_col = ps_ok ? h->ps[1] : 1;
    double fx = (double)(h->cols - df->tile_cols) / 2.0, fy = (double)(h->rows - df->tile_rows) / 2.0;
    double corner[3], sdir[3];
    double sign = df->has_snv && dot3(df->mosaic_snv, nrm) < 0 ? -1.0 : 1.0;
    for (int a = 0; a < 3; a++) {
        corner[a] = h->ipp[a] + fx * ps_col * r[a] + fy * ps_row * c[a];
        sdir[a] = sign * nrm[a];
    }
    for (int32_t q = 0; q < df->mosaic_n; q++) {
        ml_dcm_slice *y = &x[q];
        y->rows = df->tile_rows;
        y->cols = df->tile_cols;
        y->file = file;
        y->frame = q;
        y->name = df->path;
        y->instance = h->instance;
        y->has_instance = h->has_instance;
        y->temporal = h->has_temporal ? h->temporal : 0;
        y->thickness = h->has_thickness ? h->thickness : 0;
        y->spacing_between = dz; /* the tiles' own spacing (what a single-mosaic stack falls back to) */
        y->has_iop = h->has_iop;
        memcpy(y->iop, h->iop, sizeof y->iop);
        y->has_ps = ps_ok;
        memcpy(y->ps, h->ps, sizeof y->ps);
        y->has_ipp = h->has_ipp;
        for (int a = 0; a < 3; a++) y->ipp[a] = corner[a] + (double)q * dz * sdir[a];
        sl[q] = h->has_rescale && isfinite(h->slope) && isfinite(h->intercept) ? h->slope : 1;
        ic[q] = h->has_rescale && isfinite(h->slope) && isfinite(h->intercept) ? h->intercept : 0;
    }
}

/* slices of the selected files, in file order (slice index s -> file fs[sel[?]] frame) */
static ml_err build_slices(dfile *fs, const int64_t *sel, int64_t nsel, ml_dcm_slice **out, double **slope,
                           double **icpt, int64_t *nout, const char *what) {
    int64_t n = 0;
    for (int64_t i = 0; i < nsel; i++) n += images_of(&fs[sel[i]]);
    if (n > MAX_IMAGES)
        return ml_seterr(ML_ERR_IO, "dicom: %s: %lld images is more than supported (%d)", what, (long long)n,
                         MAX_IMAGES);
    ml_dcm_slice *s = calloc((size_t)(n ? n : 1), sizeof *s);
    double *sl = malloc((size_t)(n ? n : 1) * sizeof *sl), *ic = malloc((size_t)(n ? n : 1) * sizeof *ic);
    if (!s || !sl || !ic) {
        free(s), free(sl), free(ic);
        return ml_seterr(ML_ERR_OOM, "dicom: %s: out of memory", what);
    }
    int64_t k = 0;
    for (int64_t i = 0; i < nsel; i++) {
        dfile *df = &fs[sel[i]];
        const ml_dcm_header *h = &df->h;
        df->slice0 = k;
        double nrm[3] = {0, 0, 1};
        if (h->has_iop) {
            cross3(h->iop, h->iop + 3, nrm);
            double nn = norm3(nrm);
            if (nn > 0)
                for (int q = 0; q < 3; q++) nrm[q] /= nn;
        }
        double fdz = h->has_spacing_between && h->spacing_between > 0 ? h->spacing_between
                     : h->has_thickness && h->thickness > 0           ? h->thickness
                                                                      : 1.0;
        if (h->has_ps && !(h->ps[0] > 0 && h->ps[1] > 0) && i == 0)
            ml_warn("dicom: %s: PixelSpacing %g\\%g is not valid: using 1 mm", df->path, h->ps[0], h->ps[1]);
        if (df->mosaic_note[0] && i == 0) ml_warn("dicom: %s: %s", df->path, df->mosaic_note);
        if (df->mosaic_n > 0) {
            if (df->mosaic_guessed && i == 0)
                ml_warn("dicom: %s: a Siemens mosaic without its number of images (no CSA header, no (0019,100A)): "
                        "guessed %d tiles from AcquisitionMatrix; check the slice count",
                        df->path, (int)df->mosaic_n);
            mosaic_slices(df, (int32_t)i, nrm, fdz, s + k, sl + k, ic + k);
            k += df->mosaic_n;
            continue;
        }
        for (int32_t q = 0; q < h->frames; q++, k++) {
            ml_dcm_slice *x = &s[k];
            x->rows = h->rows;
            x->cols = h->cols;
            x->file = (int32_t)i;
            x->frame = q;
            x->name = df->path;
            x->instance = h->instance;
            x->has_instance = h->has_instance;
            x->temporal = h->has_temporal ? h->temporal : 0;
            x->thickness = h->has_thickness ? h->thickness : 0;
            x->spacing_between = h->has_spacing_between ? h->spacing_between : 0;
            x->has_iop = h->has_iop;
            memcpy(x->iop, h->iop, sizeof x->iop);
            x->has_ps = h->has_ps && h->ps[0] > 0 && h->ps[1] > 0;
            memcpy(x->ps, h->ps, sizeof x->ps);
            x->has_ipp = h->has_ipp;
            memcpy(x->ipp, h->ipp, sizeof x->ipp);
            sl[k] = h->has_rescale ? h->slope : 1;
            ic[k] = h->has_rescale ? h->intercept : 0;
            if (h->nframeinfo > 0) {
                const ml_dcm_frameinfo *fi = &h->frameinfo[q];
                if (fi->has_ipp) memcpy(x->ipp, fi->ipp, sizeof x->ipp), x->has_ipp = 1;
                else x->has_ipp = 0;
                if (fi->has_iop) memcpy(x->iop, fi->iop, sizeof x->iop), x->has_iop = 1;
                if (fi->has_ps && fi->ps[0] > 0 && fi->ps[1] > 0) memcpy(x->ps, fi->ps, sizeof x->ps), x->has_ps = 1;
                if (fi->has_thickness) x->thickness = fi->thickness;
                if (fi->has_rescale) sl[k] = fi->slope, ic[k] = fi->intercept;
                if (fi->temporal) x->temporal = fi->temporal;
                x->stack_pos = fi->stack_pos;
            } else if (h->frames > 1 && h->has_ipp && h->ngrid_offsets >= h->frames) {
                /* RT Dose: GridFrameOffsetVector (relative, or absolute with the first at the IPP) */
                double off = h->grid_offsets[q] - h->grid_offsets[0];
                for (int c = 0; c < 3; c++) x->ipp[c] = h->ipp[c] + off * nrm[c];
            } else if (h->frames > 1 && h->has_ipp) {
                /* classic multi-frame: frames stacked along the normal from the first position */
                for (int c = 0; c < 3; c++) x->ipp[c] = h->ipp[c] + (double)q * fdz * nrm[c];
            } else if (h->frames > 1) {
                x->has_ipp = 0;
            }
            if (!isfinite(sl[k]) || !isfinite(ic[k])) sl[k] = 1, ic[k] = 0;
        }
    }
    *out = s;
    *slope = sl;
    *icpt = ic;
    *nout = n;
    return ML_OK;
}

static bool str_is(const char *a, const char *b) { return a && b && !strcmp(a, b); }

/* The first file (in series order) whose decoding failed, as the error to raise (ML_OK if none). */
static ml_err first_file_error(const dfile *fs, const int64_t *sel, int64_t nsel) {
    for (int64_t i = 0; i < nsel; i++) {
        const dfile *df = &fs[sel[i]];
        if (df->code) {
            if (!strncmp(df->err, "dicom: ", 7)) return ml_seterr(df->code, "%s", df->err);
            return ml_seterr(df->code, "dicom: %s: %s", df->path, df->err);
        }
    }
    return ML_OK;
}

/* Decode frame by frame rather than file by file: every selected file is JPEG 2000 (not a mosaic),
 * and the files are fewer than the threads while the frames are more. */
static bool j2k_frame_parallel(const dfile *fs, const int64_t *sel, int64_t nsel, int64_t nsl) {
    int t = thread_budget();
    if (t < 2 || nsel >= t || nsl <= nsel) return false;
    for (int64_t i = 0; i < nsel; i++)
        if (fs[sel[i]].h.ts_class != ML_DCM_TS_J2K || fs[sel[i]].mosaic_n > 0) return false;
    return true;
}

/* Every frame of the selected JPEG 2000 files, decoded in parallel: the compressed frames are taken
 * out of the files first (DCMTK, files in parallel, each on its own handle), then decoded on all
 * threads, each frame with its own OpenJPEG codec. An error of any frame stops the others from
 * starting; the first one in slice order is returned, naming the file and frame. */
static ml_err decode_j2k_frames(dfile *fs, const int64_t *sel, int64_t nsel, int64_t nsl, const decode_ctx *cx) {
    uint8_t **bsv = calloc((size_t)nsl, sizeof *bsv);
    size_t *blv = calloc((size_t)nsl, sizeof *blv);
    char(*ferr)[320] = calloc((size_t)nsl, sizeof *ferr);
    ml_err *fcode = calloc((size_t)nsl, sizeof *fcode);
    ml_err e = ML_OK;
    atomic_int failed = 0;
    if (!bsv || !blv || !ferr || !fcode) {
        e = ml_seterr(ML_ERR_OOM, "dicom: out of memory");
        goto done;
    }
    {
        int nth = nthreads_for(nsel);
        (void)nth;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nth)
        for (int64_t i = 0; i < nsel; i++) {
            dfile *df = &fs[sel[i]];
            char err[256];
            df->code = ML_OK;
            if (atomic_load(&failed)) continue;
            int rc = df->f ? 0 : ml_dcm_open(df->path, &df->f, err, sizeof err);
            if (rc) {
                df->code = rc == ML_DCM_EOOM ? ML_ERR_OOM : ML_ERR_IO;
                snprintf(df->err, sizeof df->err, "cannot re-open: %s", err);
                atomic_store(&failed, 1);
                continue;
            }
            for (int64_t q = 0; q < images_of(df); q++) {
                int64_t si = df->slice0 + q;
                rc = ml_dcm_frame_bitstream(df->f, (uint32_t)cx->sl[si].frame, (uint32_t)df->h.frames, &bsv[si],
                                            &blv[si], err, sizeof err);
                if (rc) {
                    df->code = rc == ML_DCM_EOOM ? ML_ERR_OOM : ML_ERR_IO;
                    snprintf(df->err, sizeof df->err, "frame %d: %s", (int)cx->sl[si].frame, err);
                    atomic_store(&failed, 1);
                    break;
                }
            }
            ml_dcm_close(df->f);
            df->f = NULL;
        }
    }
    if (atomic_load(&failed)) {
        e = first_file_error(fs, sel, nsel);
        if (!e) e = ml_seterr(ML_ERR_IO, "dicom: decoding failed");
        goto done;
    }
    {
        int nth = nthreads_for(nsl);
        (void)nth;
        int64_t npx = cx->npx;
#pragma omp parallel num_threads(nth)
        {
            int32_t *tmp = malloc((size_t)npx * sizeof *tmp);
#pragma omp for schedule(dynamic, 1)
            for (int64_t si = 0; si < nsl; si++) {
                if (atomic_load(&failed)) continue;
                const dfile *df = &fs[sel[cx->sl[si].file]];
                if (!tmp) {
                    fcode[si] = ML_ERR_OOM;
                    snprintf(ferr[si], sizeof ferr[si], "dicom: %s: out of memory", df->path);
                    atomic_store(&failed, 1);
                    continue;
                }
                char what[300];
                frame_what(what, sizeof what, df, cx->sl[si].frame);
                ml_err fe = ml_j2k_decode_mt(bsv[si], blv[si], df->h.cols, df->h.rows, df->h.pixel_rep, tmp,
                                             cx->j2k_threads, what);
                free(bsv[si]);
                bsv[si] = NULL;
                if (fe) {
                    fcode[si] = fe;
                    snprintf(ferr[si], sizeof ferr[si], "%s", ml_errmsg());
                    atomic_store(&failed, 1);
                    continue;
                }
                convert_i32(tmp, npx, cx->native, cx->slope[si], cx->icpt[si],
                            cx->dst + (size_t)cx->slot[si] * (size_t)npx * sizeof(float));
            }
            free(tmp);
        }
    }
    for (int64_t si = 0; si < nsl && !e; si++)
        if (fcode[si]) e = ml_seterr(fcode[si], "%s", ferr[si]);
    if (!e && atomic_load(&failed)) e = ml_seterr(ML_ERR_IO, "dicom: decoding failed");
done:
    if (bsv)
        for (int64_t si = 0; si < nsl; si++) free(bsv[si]);
    free(bsv), free(blv), free(ferr), free(fcode);
    return e;
}

ml_err ml_dicom_read(ml_volume **out, const char *path, const ml_dicom_read_opts *opts) {
    *out = NULL;
    ml_dicom_read_opts dflt;
    if (!opts) ml_dicom_read_opts_init(&dflt), opts = &dflt;
    strvec names = {0};
    dfile *fs = NULL;
    int64_t n = 0, *idx = NULL, nimg = 0, nser = 0, nsl = 0;
    series_t *ser = NULL;
    ml_dcm_slice *sl = NULL;
    double *slope = NULL, *icpt = NULL;
    int64_t *slot = NULL, *sel = NULL;
    float *stackbuf = NULL;
    ml_tensor *t = NULL, *tv = NULL;
    ml_dcm_plan plan;
    memset(&plan, 0, sizeof plan);
    bool is_dir = false;
    ml_err e = scan_path(path, opts->recursive, &fs, &n, &names, &is_dir);
    if (e) goto done;
    if (!is_dir && fs[0].status != F_IMAGE) {
        e = ml_seterr(fs[0].code ? fs[0].code : ML_ERR_IO, "dicom: %s: %s", path, fs[0].err);
        goto done;
    }
    if ((e = group_series(fs, n, &idx, &nimg, &ser, &nser))) goto done;
    if (nser == 0) {
        e = no_images_error(path, fs, n);
        goto done;
    }
    /* ---- choose the series */
    int64_t pick = -1;
    if (opts->series_uid && *opts->series_uid) {
        for (int64_t k = 0; k < nser; k++)
            if (!strcmp(ser[k].uid, opts->series_uid)) pick = k;
        if (pick < 0) {
            char list[600];
            size_t L = 0;
            list[0] = '\0';
            for (int64_t k = 0; k < nser && L + 80 < sizeof list; k++)
                L += (size_t)snprintf(list + L, sizeof list - L, "%s%s (%lld images)", k ? ", " : "",
                                      ser[k].uid[0] ? ser[k].uid : "(none)", (long long)ser[k].n_images);
            e = ml_seterr(ML_ERR_ARG, "dicom: %s: no series with SeriesInstanceUID %s (found: %s)", path,
                          opts->series_uid, list);
            goto done;
        }
    } else {
        for (int64_t k = 0; k < nser; k++)
            if (pick < 0 || ser[k].n_images > ser[pick].n_images) pick = k;
    }
    if (is_dir) warn_unreadable(path, fs, n);
    sel = malloc((size_t)ser[pick].n_files * sizeof *sel);
    if (!sel) {
        e = ml_seterr(ML_ERR_OOM, "dicom: out of memory");
        goto done;
    }
    int64_t nsel = ser[pick].n_files;
    for (int64_t i = 0; i < nsel; i++) sel[i] = idx[ser[pick].first + i];
    /* close the handles of the other series now; of this one too when there are very many */
    {
        bool *keep = calloc((size_t)n, sizeof *keep);
        if (!keep) {
            e = ml_seterr(ML_ERR_OOM, "dicom: out of memory");
            goto done;
        }
        for (int64_t i = 0; i < nsel; i++) keep[sel[i]] = nsel <= KEEP_OPEN_FILES;
        for (int64_t i = 0; i < n; i++)
            if (!keep[i] && fs[i].f) ml_dcm_close(fs[i].f), fs[i].f = NULL;
        free(keep);
    }
    if ((e = build_slices(fs, sel, nsel, &sl, &slope, &icpt, &nsl, path))) goto done;
    if ((e = ml_dicom_assemble(&plan, sl, nsl, opts->on_uneven, opts->on_tilt, path))) goto done;

    /* ---- output tensor: contiguous [T, Z, Y, X], handed out as the view [X, Y, Z(, T)] */
    int64_t nx = plan.nx, ny = plan.ny, npx = nx * ny;
    int64_t nz_in = plan.nz_in, nt = plan.nt, nz = plan.nz;
    ml_dtype dt = opts->native ? ML_I32 : ML_F32;
    {
        int64_t shp4[4] = {nt, nz, ny, nx};
        if (nt > 1) e = ml_tensor_empty(&t, dt, 4, shp4);
        else e = ml_tensor_empty(&t, dt, 3, shp4 + 1);
        if (e) {
            e = ml_seterr(e, "dicom: %s: cannot allocate %lldx%lldx%lldx%lld voxels: %s", path, (long long)nx,
                          (long long)ny, (long long)nz, (long long)nt, ml_errmsg());
            goto done;
        }
    }
    slot = malloc((size_t)nsl * sizeof *slot);
    if (!slot) {
        e = ml_seterr(ML_ERR_OOM, "dicom: out of memory");
        goto done;
    }
    for (int64_t q = 0; q < nz_in * nt; q++) slot[plan.stack[q]] = q;
    decode_ctx cx = {sl, slope, icpt, slot, NULL, npx, false, 1};
    if (plan.resample) {
        stackbuf = malloc((size_t)(nz_in * nt) * (size_t)npx * sizeof(float));
        if (!stackbuf) {
            e = ml_seterr(ML_ERR_OOM, "dicom: %s: out of memory for the resampling stack", path);
            goto done;
        }
        cx.dst = (char *)stackbuf;
        cx.native = false;
        if (opts->native)
            for (int64_t q = 0; q < nsl; q++) slope[q] = 1, icpt[q] = 0;
    } else {
        cx.dst = ml_tensor_data(t);
        cx.native = opts->native;
    }
    /* ---- decode: files in parallel; JPEG 2000 files fewer than the threads but with more frames (one
     * multi-frame file): frames in parallel; frames fewer than the threads: OpenJPEG's threads too */
    {
        int64_t nframes = 0; /* frames to decode (a mosaic is one frame) */
        for (int64_t i = 0; i < nsel; i++) nframes += fs[sel[i]].mosaic_n > 0 ? 1 : fs[sel[i]].h.frames;
        cx.j2k_threads = j2k_inner_threads(nframes);
    }
    if (j2k_frame_parallel(fs, sel, nsel, nsl)) {
        if ((e = decode_j2k_frames(fs, sel, nsel, nsl, &cx))) goto done;
    } else {
        atomic_int failed = 0;
        int nth = nthreads_for(nsel);
        (void)nth;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nth)
        for (int64_t i = 0; i < nsel; i++) {
            dfile *df = &fs[sel[i]];
            df->code = ML_OK;
            if (atomic_load(&failed)) continue;
            if (!decode_file(df, df->slice0, images_of(df), &cx)) atomic_store(&failed, 1);
            ml_dcm_close(df->f);
            df->f = NULL;
        }
        if (atomic_load(&failed)) {
            e = first_file_error(fs, sel, nsel);
            if (!e) e = ml_seterr(ML_ERR_IO, "dicom: %s: decoding failed", path);
            goto done;
        }
    }
    /* ---- resample onto the output grid */
    if (plan.resample) {
        float fill = INFINITY;
        int64_t tot = nz_in * nt * npx;
        for (int64_t i = 0; i < tot; i++)
            if (stackbuf[i] < fill) fill = stackbuf[i];
        if (!isfinite(fill)) fill = 0;
        float *ob = opts->native ? NULL : ml_tensor_data(t);
        int32_t *oi = opts->native ? ml_tensor_data(t) : NULL;
        int nth = nthreads_for(nz * nt);
        (void)nth;
#pragma omp parallel num_threads(nth)
        {
            float *tmp = opts->native ? malloc((size_t)npx * sizeof *tmp) : NULL;
#pragma omp for schedule(dynamic, 1)
            for (int64_t q = 0; q < nz * nt; q++) {
                int64_t k = q % nz, tt = q / nz;
                const ml_dcm_interp *it = &plan.interp[k];
                float *dst = opts->native ? tmp : ob + (size_t)q * (size_t)npx;
                if (!dst) continue;
                const float *a = stackbuf + (size_t)(it->k0 + nz_in * tt) * (size_t)npx;
                const float *b = stackbuf + (size_t)(it->k1 + nz_in * tt) * (size_t)npx;
                shift_accum(a, nx, ny, it->sx0, it->sy0, fill, 1 - it->w, false, dst);
                if (it->w > 1e-9) shift_accum(b, nx, ny, it->sx1, it->sy1, fill, it->w, true, dst);
                if (opts->native)
                    for (int64_t p = 0; p < npx; p++) oi[(size_t)q * (size_t)npx + p] = (int32_t)lrintf(dst[p]);
            }
            free(tmp);
        }
    }
    /* ---- the volume */
    {
        int perm4[4] = {3, 2, 1, 0}, perm3[3] = {2, 1, 0};
        if ((e = ml_permute(&tv, t, nt > 1 ? perm4 : perm3))) goto done;
        const ml_dcm_header *h0 = &fs[sel[sl[plan.stack[0]].file]].h;
        ml_volume_meta meta;
        ml_volume_meta_init(&meta);
        cpy(meta.modality, sizeof meta.modality, h0->modality);
        cpy(meta.series_uid, sizeof meta.series_uid, h0->series_uid);
        cpy(meta.study_uid, sizeof meta.study_uid, h0->study_uid);
        cpy(meta.frame_of_reference_uid, sizeof meta.frame_of_reference_uid, h0->for_uid);
        cpy(meta.patient_id, sizeof meta.patient_id, h0->patient_id);
        cpy(meta.description, sizeof meta.description, h0->description);
        meta.has_window = h0->has_window;
        meta.window_center = h0->window_center;
        meta.window_width = h0->window_width;
        meta.rescale_slope = slope[plan.stack[0]];
        meta.rescale_intercept = icpt[plan.stack[0]];
        if (opts->native && plan.resample) meta.rescale_slope = h0->slope, meta.rescale_intercept = h0->intercept;
        meta.is_label = str_is(h0->modality, "SEG");
        e = ml_volume_new(out, tv, plan.affine, &meta);
    }
done:
    ml_tensor_release(tv);
    ml_tensor_release(t);
    free(stackbuf);
    free(slot);
    free(sel);
    free(sl);
    free(slope);
    free(icpt);
    ml_dicom_plan_free(&plan);
    free(idx);
    free(ser);
    free_files(fs, n);
    strvec_free(&names);
    return e;
}

/* ================================================================ writing */
void ml_dicom_write_opts_init(ml_dicom_write_opts *o) { memset(o, 0, sizeof *o); }

static void rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
            size_t need = strlen(dir) + strlen(de->d_name) + 2;
            char *p = malloc(need);
            if (!p) continue;
            snprintf(p, need, "%s/%s", dir, de->d_name);
            struct stat st;
            if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) rm_tree(p);
            else unlink(p);
            free(p);
        }
        closedir(d);
    }
    rmdir(dir);
}

/* a DS string (at most 16 characters) and the value it denotes */
static double ds_round(double v) {
    char b[40];
    if (v == 0 || !isfinite(v)) return 0;
    for (int prec = 15; prec >= 1; prec--) {
        snprintf(b, sizeof b, "%.*g", prec, v);
        if (strlen(b) <= 16) return strtod(b, NULL);
    }
    snprintf(b, sizeof b, "%.6e", v);
    return strtod(b, NULL);
}

static const char *pick_str(const char *a, const char *b, const char *c) {
    if (a && *a) return a;
    if (b && *b) return b;
    return c;
}

ml_err ml_dicom_write_series(const ml_volume *v, const char *dir, const ml_dicom_write_opts *o) {
    ml_dicom_write_opts dflt;
    if (!o) ml_dicom_write_opts_init(&dflt), o = &dflt;
    if (!v || !v->data) return ml_seterr(ML_ERR_ARG, "write_dicom_series: no volume");
    if (!dir || !*dir) return ml_seterr(ML_ERR_ARG, "write_dicom_series: empty directory name");
    const ml_tensor *d = v->data;
    if (d->ndim != 3 && d->ndim != 4)
        return ml_seterr(ML_ERR_SHAPE, "write_dicom_series: %s: the volume must be 3-D or 4-D, got %s", dir,
                         ml_shape_str(d->ndim, d->shape));
    int64_t nx = d->shape[0], ny = d->shape[1], nz = d->shape[2], nt = d->ndim == 4 ? d->shape[3] : 1;
    if (nx < 1 || ny < 1 || nz < 1 || nt < 1 || nx > 65535 || ny > 65535)
        return ml_seterr(ML_ERR_SHAPE, "write_dicom_series: %s: image size %lldx%lld does not fit DICOM (1..65535)",
                         dir, (long long)nx, (long long)ny);
    if (nz * nt > 999999)
        return ml_seterr(ML_ERR_SHAPE, "write_dicom_series: %s: %lld slices is too many", dir, (long long)(nz * nt));
    /* ---- geometry: RAS -> LPS */
    double L[16];
    memcpy(L, v->affine, sizeof L);
    for (int c = 0; c < 4; c++) L[c] = -L[c], L[4 + c] = -L[4 + c];
    double c0[3] = {L[0], L[4], L[8]}, c1[3] = {L[1], L[5], L[9]}, c2[3] = {L[2], L[6], L[10]};
    double ps_col = norm3(c0), ps_row = norm3(c1);
    if (!(ps_col > 0) || !(ps_row > 0))
        return ml_seterr(ML_ERR_ARG, "write_dicom_series: %s: the affine has a zero-length in-plane axis", dir);
    double r[3], c[3], nrm[3];
    for (int k = 0; k < 3; k++) r[k] = c0[k] / ps_col, c[k] = c1[k] / ps_row;
    double rc = dot3(r, c);
    if (fabs(rc) > 1e-4)
        return ml_seterr(ML_ERR_ARG,
                         "write_dicom_series: %s: the affine's first two axes are not orthogonal (%.3f degrees); "
                         "DICOM rows and columns must be: resample the volume first",
                         dir, acos(fmax(-1, fmin(1, rc))) * 180 / M_PI);
    cross3(r, c, nrm);
    double dzn = dot3(c2, nrm);
    if (!(fabs(dzn) > 1e-9))
        return ml_seterr(ML_ERR_ARG, "write_dicom_series: %s: the affine's slice axis lies in the image plane", dir);
    /* ---- voxels as float32 in [T, Z, Y, X] order */
    ml_tensor *det = NULL, *pm = NULL, *ct = NULL, *f32 = NULL;
    int perm4[4] = {3, 2, 1, 0}, perm3[3] = {2, 1, 0};
    ml_err e = ml_detach(&det, (ml_tensor *)d);
    if (!e) e = ml_permute(&pm, det, d->ndim == 4 ? perm4 : perm3);
    if (!e) e = ml_to_dtype(&f32, pm, ML_F32);
    if (!e) e = ml_contiguous(&ct, f32);
    ml_tensor_release(det);
    ml_tensor_release(pm);
    ml_tensor_release(f32);
    if (e) return ml_seterr(e, "write_dicom_series: %s: %s", dir, ml_errmsg());
    const float *px = ml_tensor_data(ct);
    int64_t npx = nx * ny, tot = npx * nz * nt;
    double vmin = INFINITY, vmax = -INFINITY;
    bool integral = true;
    for (int64_t i = 0; i < tot; i++) {
        double x = px[i];
        if (!isfinite(x)) {
            ml_tensor_release(ct);
            return ml_seterr(ML_ERR_ARG,
                             "write_dicom_series: %s: voxel %lld is %g; DICOM stores integers (replace NaN/Inf first)",
                             dir, (long long)i, x);
        }
        if (x < vmin) vmin = x;
        if (x > vmax) vmax = x;
        if (integral && x != floor(x)) integral = false;
    }
    double slope = 1, icpt = 0;
    if (integral && vmin >= -32768 && vmax <= 32767) {
        slope = 1, icpt = 0;
    } else if (integral && vmax - vmin <= 65535) {
        icpt = vmin + 32768;
    } else if (vmax > vmin) {
        slope = ds_round((vmax - vmin) / 65534.0);
        icpt = ds_round(0.5 * (vmax + vmin));
        if (!(slope > 0)) slope = (vmax - vmin) / 65534.0;
        /* the rounded slope must still cover the range */
        while ((vmax - icpt) / slope > 32767.4 || (icpt - vmin) / slope > 32767.4) slope = ds_round(slope * 1.0001);
    } else {
        icpt = ds_round(vmin);
    }
    /* ---- UIDs and strings */
    char study_uid[72], series_uid[72], for_uid[72], date[16], tim[16];
    cpy(study_uid, sizeof study_uid, pick_str(o->study_uid, v->meta.study_uid, NULL));
    if (!study_uid[0]) ml_dcm_new_uid(study_uid);
    cpy(series_uid, sizeof series_uid, o->series_uid);
    if (!series_uid[0]) ml_dcm_new_uid(series_uid);
    cpy(for_uid, sizeof for_uid, pick_str(o->frame_of_reference_uid, v->meta.frame_of_reference_uid, NULL));
    if (!for_uid[0]) ml_dcm_new_uid(for_uid);
    {
        time_t now = time(NULL);
        struct tm tmv;
        localtime_r(&now, &tmv);
        strftime(date, sizeof date, "%Y%m%d", &tmv);
        strftime(tim, sizeof tim, "%H%M%S", &tmv);
    }
    const char *modality = pick_str(o->modality, v->meta.modality, "OT");
    bool is_ct = !strcmp(modality, "CT");
    int64_t nfiles = nz * nt;
    char (*uids)[72] = malloc((size_t)nfiles * sizeof *uids);
    if (!uids) {
        ml_tensor_release(ct);
        return ml_seterr(ML_ERR_OOM, "write_dicom_series: out of memory");
    }
    for (int64_t i = 0; i < nfiles; i++) ml_dcm_new_uid(uids[i]);
    /* ---- temporary directory next to dir */
    struct stat st;
    bool exists = stat(dir, &st) == 0;
    if (exists && !S_ISDIR(st.st_mode)) {
        free(uids);
        ml_tensor_release(ct);
        return ml_seterr(ML_ERR_IO, "write_dicom_series: %s exists and is not a directory", dir);
    }
    if (exists && !o->overwrite) {
        DIR *dd = opendir(dir);
        bool empty = true;
        if (dd) {
            struct dirent *de;
            while ((de = readdir(dd)))
                if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) empty = false;
            closedir(dd);
        }
        if (!empty) {
            free(uids);
            ml_tensor_release(ct);
            return ml_seterr(ML_ERR_IO,
                             "write_dicom_series: %s exists and is not empty (pass overwrite = true to replace it)",
                             dir);
        }
    }
    size_t dl = strlen(dir);
    while (dl > 1 && dir[dl - 1] == '/') dl--;
    char *tmpdir = malloc(dl + 32), *olddir = malloc(dl + 32);
    if (!tmpdir || !olddir) {
        free(tmpdir), free(olddir), free(uids);
        ml_tensor_release(ct);
        return ml_seterr(ML_ERR_OOM, "write_dicom_series: out of memory");
    }
    snprintf(tmpdir, dl + 32, "%.*s.tmp-XXXXXX", (int)dl, dir);
    if (!mkdtemp(tmpdir)) {
        e = ml_seterr(ML_ERR_IO, "write_dicom_series: %s: cannot create a temporary directory next to it: %s", dir,
                      strerror(errno));
        free(tmpdir), free(olddir), free(uids);
        ml_tensor_release(ct);
        return e;
    }
    atomic_int failed = 0;
    char ferr[400] = {0};
    int nth = nthreads_for(nfiles);
    (void)nth;
#pragma omp parallel num_threads(nth)
    {
        int16_t *buf = malloc((size_t)npx * sizeof *buf);
        char path[4096], err[256];
#pragma omp for schedule(dynamic, 4)
        for (int64_t q = 0; q < nfiles; q++) {
            if (atomic_load(&failed)) continue;
            if (!buf) {
                if (!atomic_exchange(&failed, 1)) snprintf(ferr, sizeof ferr, "out of memory");
                continue;
            }
            int64_t k = q % nz, tt = q / nz;
            const float *src = px + (size_t)q * (size_t)npx;
            for (int64_t p = 0; p < npx; p++) {
                double s = ((double)src[p] - icpt) / slope;
                double rr = nearbyint(s);
                buf[p] = (int16_t)(rr < -32768 ? -32768 : rr > 32767 ? 32767 : rr);
            }
            ml_dcm_wslice ws;
            memset(&ws, 0, sizeof ws);
            ws.sop_class = is_ct ? "1.2.840.10008.5.1.4.1.1.2" : "1.2.840.10008.5.1.4.1.1.7";
            ws.sop_instance = uids[q];
            ws.study_uid = study_uid;
            ws.series_uid = series_uid;
            ws.for_uid = for_uid;
            ws.modality = modality;
            ws.patient_id = pick_str(o->patient_id, v->meta.patient_id, "anonymous");
            ws.patient_name = pick_str(o->patient_name, NULL, "anonymous");
            ws.study_description = pick_str(o->study_description, NULL, "");
            ws.series_description = pick_str(o->series_description, v->meta.description, "medlua");
            ws.study_date = date;
            ws.study_time = tim;
            ws.study_id = "1";
            ws.image_type = "DERIVED\\SECONDARY";
            ws.series_number = o->series_number > 0 ? o->series_number : 1;
            ws.instance = (int32_t)(q + 1);
            ws.temporal = nt > 1 ? (int32_t)(tt + 1) : 0;
            ws.rows = (int32_t)ny;
            ws.cols = (int32_t)nx;
            double kk[3] = {0, 0, (double)k};
            ml_affine_apply(L, kk, ws.ipp);
            memcpy(ws.iop, r, sizeof r);
            memcpy(ws.iop + 3, c, sizeof c);
            ws.ps[0] = ps_row;
            ws.ps[1] = ps_col;
            ws.thickness = fabs(dzn);
            ws.spacing_between = fabs(dzn);
            ws.slice_location = dot3(ws.ipp, nrm);
            ws.slope = slope;
            ws.intercept = icpt;
            ws.has_window = v->meta.has_window;
            ws.window_center = v->meta.window_center;
            ws.window_width = v->meta.window_width;
            ws.is_ct = is_ct;
            snprintf(path, sizeof path, "%s/IM%06lld.dcm", tmpdir, (long long)(q + 1));
            int rc = ml_dcm_write_slice(path, &ws, buf, err, sizeof err);
            if (rc && !atomic_exchange(&failed, 1)) snprintf(ferr, sizeof ferr, "%.100s: %.250s", base_name(path), err);
        }
        free(buf);
    }
    free(uids);
    ml_tensor_release(ct);
    if (atomic_load(&failed)) {
        rm_tree(tmpdir);
        e = ml_seterr(ML_ERR_IO, "write_dicom_series: %s: %s", dir, ferr);
        free(tmpdir), free(olddir);
        return e;
    }
    /* ---- into place */
    olddir[0] = '\0';
    if (exists) {
        if (o->overwrite) {
            snprintf(olddir, dl + 32, "%.*s.old-XXXXXX", (int)dl, dir);
            if (!mkdtemp(olddir) || rmdir(olddir) != 0 || rename(dir, olddir) != 0) {
                e = ml_seterr(ML_ERR_IO, "write_dicom_series: %s: cannot move the existing directory aside: %s", dir,
                              strerror(errno));
                rm_tree(tmpdir);
                free(tmpdir), free(olddir);
                return e;
            }
        } else if (rmdir(dir) != 0) {
            e = ml_seterr(ML_ERR_IO, "write_dicom_series: %s: cannot replace the empty directory: %s", dir,
                          strerror(errno));
            rm_tree(tmpdir);
            free(tmpdir), free(olddir);
            return e;
        }
    }
    if (rename(tmpdir, dir) != 0) {
        e = ml_seterr(ML_ERR_IO, "write_dicom_series: %s: cannot rename the temporary directory into place: %s", dir,
                      strerror(errno));
        rm_tree(tmpdir);
        if (olddir[0]) rename(olddir, dir);
        free(tmpdir), free(olddir);
        return e;
    }
    if (olddir[0]) rm_tree(olddir);
    free(tmpdir), free(olddir);
    return ML_OK;
}

/* ================================================================ editing */
ml_err ml_dicom_edit_tags(const char *in_path, const char *out_path, int n, const char *const *keys,
                          const char *const *values) {
    if (!in_path || !*in_path || !out_path || !*out_path)
        return ml_seterr(ML_ERR_ARG, "edit_dicom_tags: empty path");
    struct stat st;
    if (stat(in_path, &st) != 0) return ml_seterr(ML_ERR_IO, "edit_dicom_tags: %s: %s", in_path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return ml_seterr(ML_ERR_IO, "edit_dicom_tags: %s: not a regular file", in_path);
    size_t ol = strlen(out_path);
    char *tmp = malloc(ol + 16);
    if (!tmp) return ml_seterr(ML_ERR_OOM, "edit_dicom_tags: out of memory");
    snprintf(tmp, ol + 16, "%s.tmp-XXXXXX", out_path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        ml_err e = ml_seterr(ML_ERR_IO, "edit_dicom_tags: %s: cannot create a temporary file next to it: %s", out_path,
                             strerror(errno));
        free(tmp);
        return e;
    }
    close(fd);
    char err[400];
    ml_dcm_global_init();
    int rc = ml_dcm_edit(in_path, tmp, n, keys, values, err, sizeof err);
    if (rc) {
        unlink(tmp);
        free(tmp);
        ml_err code = rc == ML_DCM_EARG ? ML_ERR_ARG : rc == ML_DCM_EOOM ? ML_ERR_OOM : ML_ERR_IO;
        if (rc == ML_DCM_EIO && !has_dicm(in_path) && strstr(err, "cannot read"))
            return ml_seterr(code, "edit_dicom_tags: %s: not a DICOM file: no 'DICM' magic at byte 128 and %s",
                             in_path, err);
        return ml_seterr(code, "edit_dicom_tags: %s: %s", in_path, err);
    }
    chmod(tmp, st.st_mode & 0777);
    if (rename(tmp, out_path) != 0) {
        ml_err e = ml_seterr(ML_ERR_IO, "edit_dicom_tags: %s: cannot rename into place: %s", out_path, strerror(errno));
        unlink(tmp);
        free(tmp);
        return e;
    }
    free(tmp);
    return ML_OK;
}

ml_err ml_dicom_read_tags(const char *path, int n, const char *const *keys, char **values) {
    if (!path || !*path) return ml_seterr(ML_ERR_ARG, "read_dicom_tags: empty path");
    struct stat st;
    if (stat(path, &st) != 0) return ml_seterr(ML_ERR_IO, "read_dicom_tags: %s: %s", path, strerror(errno));
    char err[400];
    int rc = ml_dcm_get_tags(path, n, keys, values, err, sizeof err);
    if (rc) {
        ml_err code = rc == ML_DCM_EARG ? ML_ERR_ARG : rc == ML_DCM_EOOM ? ML_ERR_OOM : ML_ERR_IO;
        if (rc == ML_DCM_EIO && !has_dicm(path))
            return ml_seterr(code, "read_dicom_tags: %s: not a DICOM file: no 'DICM' magic at byte 128 and %s", path,
                             err);
        return ml_seterr(code, "read_dicom_tags: %s: %s", path, err);
    }
    return ML_OK;
}
