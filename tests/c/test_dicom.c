/* DICOM tests: golden values made by tests/ref/gen_dicom_ref.py (pydicom + dcm2niix) for the small
 * series in tests/data/dicom (always) and for the shared data set and Debian's pydicom test files
 * (skipped when absent), every transfer syntax of one image decoding to the same pixels, the
 * series assembler on synthetic headers (sorting, 4-D, InstanceNumber fallback, uneven spacing and
 * gantry tilt under warn/resample/error, mixed sizes/orientations), writing a series and reading
 * it back (geometry 1e-4, values within the rescale step), tag editing, and bad input (each error
 * names the file and the reason; nothing is left behind). Run from the repository root. */
#include "ml_test.h"
#include "volume/ml_dcmtk_shim.h"
#include "volume/ml_dicom.h"
#include "volume/ml_nifti.h"

#include <cjson/cJSON.h>

/* the fuzz target's input decoder, for the regression test (its LLVMFuzzerTestOneInput is unused) */
#include "../../fuzz/fuzz_dicom_series.c"
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[64];
static const char *SHARED = "../shared/data";
static const char *DEBIAN = "/usr/lib/python3/dist-packages/pydicom/data/test_files";
static cJSON *g_ref;
static int g_warnings;
static char g_last_warning[1024];

static void on_warn(const char *msg, void *ud) {
    (void)ud;
    g_warnings++;
    snprintf(g_last_warning, sizeof g_last_warning, "%s", msg);
}

static const char *tpath(const char *name) {
    static char ring[8][512];
    static int k;
    char *p = ring[k++ & 7];
    snprintf(p, 512, "%s/%s", g_dir, name);
    return p;
}

/* entries of dir whose name contains part */
static int count_entries(const char *dir, const char *part) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && strstr(e->d_name, part)) n++;
    closedir(d);
    return n;
}

static unsigned char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)sz + 1);
    if (b && fread(b, 1, (size_t)sz, f) != (size_t)sz) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) b[sz] = 0, *n = (size_t)sz;
    return b;
}

static void write_all(const char *path, const void *b, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        ML_FAIL_("cannot write %s", path);
        return;
    }
    if (n) fwrite(b, 1, n, f);
    fclose(f);
}

static void copy_file(const char *from, const char *to) {
    size_t n;
    unsigned char *b = read_all(from, &n);
    if (!b) {
        ML_FAIL_("cannot read %s", from);
        return;
    }
    write_all(to, b, n);
    free(b);
}

/* copy the regular files of dir `from` into `to` (created) */
static void copy_dir(const char *from, const char *to) {
    mkdir(to, 0755);
    DIR *d = opendir(from);
    if (!d) {
        ML_FAIL_("cannot open %s", from);
        return;
    }
    struct dirent *e;
    char a[1024], b[1024];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(a, sizeof a, "%s/%s", from, e->d_name);
        snprintf(b, sizeof b, "%s/%s", to, e->d_name);
        copy_file(a, b);
    }
    closedir(d);
}

static const char *first_file_in(const char *dir) {
    static char p[1024];
    DIR *d = opendir(dir);
    if (!d) return NULL;
    struct dirent *e;
    char best[512] = "";
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' && (!best[0] || strcmp(e->d_name, best) < 0)) snprintf(best, sizeof best, "%s", e->d_name);
    closedir(d);
    snprintf(p, sizeof p, "%s/%s", dir, best);
    return p;
}

/* value of voxel (i, j, k, t) */
static double vox(const ml_volume *v, int64_t i, int64_t j, int64_t k, int64_t t) {
    int64_t ix[4] = {i, j, k, t};
    return ml_tensor_get(v->data, ix);
}

/* the read must fail with `code`, naming `name` and containing `why` */
#define CHECK_READ_FAILS(path, code, name, why)                                                              \
    do {                                                                                                     \
        ml_volume *v_ = (ml_volume *)1;                                                                      \
        ml_err e_ = ml_dicom_read(&v_, (path), NULL);                                                        \
        if (e_ != (code)) ML_FAIL_("read %s returned %s, expected %s (%s)", (path), ml_errname(e_),          \
                                   ml_errname(code), e_ ? ml_errmsg() : "");                                 \
        else if (v_ != NULL) ML_FAIL_("read %s failed but left out non-NULL", (path));                       \
        else if (!strstr(ml_errmsg(), (name))) ML_FAIL_("message does not name %s: %s", (name), ml_errmsg()); \
        else if (!strstr(ml_errmsg(), (why))) ML_FAIL_("message lacks \"%s\": %s", (why), ml_errmsg());    \
        if (e_ == ML_OK) ml_volume_release(v_);                                                              \
    } while (0)

/* ============================================================== golden comparisons */
static const char *case_path(const cJSON *c, char *buf, size_t n) {
    const char *p = cJSON_GetObjectItem(c, "path")->valuestring;
    if (!strncmp(p, "@shared/", 8)) snprintf(buf, n, "%s/%s", SHARED, p + 8);
    else if (!strncmp(p, "@debian_pydicom/", 16)) snprintf(buf, n, "%s/%s", DEBIAN, p + 16);
    else snprintf(buf, n, "%s", p);
    return buf;
}

static double num(const cJSON *c, const char *k) { return cJSON_GetObjectItem(c, k)->valuedouble; }

/* compares one case; returns 1 when checked, 0 when skipped */
static int check_case(const cJSON *c) {
    char path[1024];
    const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
    case_path(c, path, sizeof path);
    if (!exists(path)) {
        printf("  skipped: %s (%s not present)\n", name, path);
        return 0;
    }
    bool lossy = cJSON_IsTrue(cJSON_GetObjectItem(c, "lossy"));
    ml_volume *v = NULL;
    ml_err e = ml_dicom_read(&v, path, NULL);
    if (e) {
        ML_FAIL_("%s: %s", name, ml_errmsg());
        return 1;
    }
    const cJSON *shape = cJSON_GetObjectItem(c, "shape");
    int nd = cJSON_GetArraySize(shape);
    bool shape_ok = v->data->ndim == nd && v->data->dtype == ML_F32;
    for (int d = 0; d < nd && shape_ok; d++)
        if (v->data->shape[d] != (int64_t)cJSON_GetArrayItem(shape, d)->valuedouble) shape_ok = false;
    if (!shape_ok) {
        ML_FAIL_("%s: shape %s dtype %s, expected %d dims", name, ml_shape_str(v->data->ndim, v->data->shape),
                 ml_dtype_name((ml_dtype)v->data->dtype), nd);
        ml_volume_release(v);
        return 1;
    }
    const cJSON *aff = cJSON_GetObjectItem(c, "affine");
    for (int q = 0; q < 16; q++)
        if (fabs(v->affine[q] - cJSON_GetArrayItem(aff, q)->valuedouble) > 1e-4) {
            ML_FAIL_("%s: affine[%d] = %.6f, pydicom reference %.6f", name, q, v->affine[q],
                     cJSON_GetArrayItem(aff, q)->valuedouble);
            break;
        }
    const cJSON *ad = cJSON_GetObjectItem(c, "affine_dcm2niix");
    if (ad) /* dcm2niix keeps geometry in float32: 5e-4 mm */
        for (int q = 0; q < 16; q++)
            if (fabs(v->affine[q] - cJSON_GetArrayItem(ad, q)->valuedouble) > 5e-4) {
                ML_FAIL_("%s: affine[%d] = %.6f, dcm2niix %.6f", name, q, v->affine[q],
                         cJSON_GetArrayItem(ad, q)->valuedouble);
                break;
            }
    /* statistics */
    ml_tensor *ct = NULL;
    ML_CHECK_OK(ml_contiguous(&ct, v->data));
    const float *d = ml_tensor_data(ct);
    int64_t n = ml_tensor_numel(ct);
    double s = 0, mn = INFINITY, mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        s += d[i];
        if (d[i] < mn) mn = d[i];
        if (d[i] > mx) mx = d[i];
    }
    double range = fmax(1, num(c, "max") - num(c, "min"));
    double vtol = lossy ? 0.02 * range : 1e-3 + 1e-6 * range;
    double stol = lossy ? 2e-3 * fabs(num(c, "sum")) + 1e-3 * range * (double)n : 1e-9 * fabs(num(c, "sum")) + 1e-3;
    if (fabs(s - num(c, "sum")) > stol) ML_FAIL_("%s: sum %.10g, expected %.10g", name, s, num(c, "sum"));
    if (fabs(mn - num(c, "min")) > vtol || fabs(mx - num(c, "max")) > vtol)
        ML_FAIL_("%s: range [%g, %g], expected [%g, %g]", name, mn, mx, num(c, "min"), num(c, "max"));
    /* per-slice sums: slice order and 4-D grouping */
    const cJSON *ss = cJSON_GetObjectItem(c, "slice_sums");
    int64_t X = v->data->shape[0], Y = v->data->shape[1], Z = v->data->shape[2], T = nd == 4 ? v->data->shape[3] : 1;
    for (int64_t t = 0; t < T; t++)
        for (int64_t k = 0; k < Z; k++) {
            double want = cJSON_GetArrayItem(cJSON_GetArrayItem(ss, (int)t), (int)k)->valuedouble;
            /* the view [X, Y, Z, T] of the contiguous [T, Z, Y, X] copy: use ml_tensor_get-free sums */
            double got = 0;
            int64_t ix[4] = {0, 0, k, t};
            for (ix[1] = 0; ix[1] < Y; ix[1]++)
                for (ix[0] = 0; ix[0] < X; ix[0]++) got += ml_tensor_get(v->data, ix);
            double tol = lossy ? 2e-3 * fabs(want) + 1e-3 * range * (double)(X * Y) : 1e-9 * fabs(want) + 1e-3;
            if (fabs(got - want) > tol) {
                ML_FAIL_("%s: sum of slice k=%lld t=%lld is %.10g, expected %.10g", name, (long long)k, (long long)t,
                         got, want);
                t = T;
                break;
            }
        }
    const cJSON *vs = cJSON_GetObjectItem(c, "voxels");
    for (int q = 0; q < cJSON_GetArraySize(vs); q++) {
        const cJSON *vx = cJSON_GetArrayItem(vs, q);
        const cJSON *ixj = cJSON_GetObjectItem(vx, "index");
        int64_t ix[4] = {0, 0, 0, 0};
        for (int a = 0; a < cJSON_GetArraySize(ixj); a++) ix[a] = (int64_t)cJSON_GetArrayItem(ixj, a)->valuedouble;
        double got = ml_tensor_get(v->data, ix), want = num(vx, "value");
        if (fabs(got - want) > vtol)
            ML_FAIL_("%s: voxel (%lld, %lld, %lld, %lld) = %g, expected %g", name, (long long)ix[0], (long long)ix[1],
                     (long long)ix[2], (long long)ix[3], got, want);
    }
    ml_tensor_release(ct);
    ml_volume_release(v);
    /* stored integers (dtype native): exact for lossless data */
    if (!lossy) {
        ml_dicom_read_opts o;
        ml_dicom_read_opts_init(&o);
        o.native = true;
        if ((e = ml_dicom_read(&v, path, &o))) {
            ML_FAIL_("%s: native read: %s", name, ml_errmsg());
            return 1;
        }
        ML_CHECK(v->data->dtype == ML_I32);
        ml_tensor *c2 = NULL;
        ML_CHECK_OK(ml_contiguous(&c2, v->data));
        const int32_t *di = ml_tensor_data(c2);
        int64_t si = 0;
        for (int64_t i = 0; i < ml_tensor_numel(c2); i++) si += di[i];
        double want = num(c, "stored_sum");
        if ((double)si != want) ML_FAIL_("%s: sum of stored values %lld, expected %.0f", name, (long long)si, want);
        ml_tensor_release(c2);
        ml_volume_release(v);
    }
    return 1;
}

static void run_cases(bool (*want)(const char *path, const char *kind)) {
    const cJSON *cases = cJSON_GetObjectItem(g_ref, "cases");
    int checked = 0, skipped = 0;
    for (int i = 0; i < cJSON_GetArraySize(cases); i++) {
        const cJSON *c = cJSON_GetArrayItem(cases, i);
        if (!want(cJSON_GetObjectItem(c, "path")->valuestring, cJSON_GetObjectItem(c, "kind")->valuestring)) continue;
        if (check_case(c)) checked++;
        else skipped++;
    }
    printf("  %d cases compared, %d skipped\n", checked, skipped);
}

static bool want_small(const char *p, const char *k) { (void)k; return p[0] != '@'; }
static bool want_shared_dirs(const char *p, const char *k) { return !strncmp(p, "@shared/", 8) && !strcmp(k, "dir"); }
static bool want_shared_files(const char *p, const char *k) { return !strncmp(p, "@shared/", 8) && !strcmp(k, "file"); }
static bool want_debian(const char *p, const char *k) { (void)k; return !strncmp(p, "@debian_pydicom/", 16); }

ML_TEST(golden_small_series) {
    ML_CHECK(g_ref != NULL);
    if (g_ref) run_cases(want_small);
}
ML_TEST(golden_shared_series_and_dcm2niix) {
    if (g_ref) run_cases(want_shared_dirs);
}
ML_TEST(golden_shared_single_files_every_syntax) {
    if (g_ref) run_cases(want_shared_files);
}
ML_TEST(golden_debian_pydicom_test_files) {
    if (g_ref) run_cases(want_debian);
}

/* the 9 transfer syntaxes of the same image decode to identical pixels */
ML_TEST(same_image_every_syntax_identical) {
    char p[512];
    snprintf(p, sizeof p, "%s/dicom_transfer_syntax/same_image/1.dcm", SHARED);
    if (!exists(p)) {
        printf("  skipped: %s not present\n", p);
        return;
    }
    ml_volume *ref = NULL;
    ML_CHECK_OK(ml_dicom_read(&ref, p, NULL));
    if (!ref) return;
    for (int i = 2; i <= 9; i++) {
        snprintf(p, sizeof p, "%s/dicom_transfer_syntax/same_image/%d.dcm", SHARED, i);
        ml_volume *v = NULL;
        ml_err e = ml_dicom_read(&v, p, NULL);
        if (e) {
            ML_FAIL_("%s: %s", p, ml_errmsg());
            continue;
        }
        double md = ml_t_maxdiff(v->data, ref->data);
        if (md != 0) ML_FAIL_("%s differs from 1.dcm by %g", p, md);
        for (int q = 0; q < 16; q++) ML_CHECK_NEAR(v->affine[q], ref->affine[q], 1e-9);
        ml_volume_release(v);
    }
    ml_volume_release(ref);
}

/* ===================================================================== Siemens mosaic */
/* ours against dcm2niix's NIfTI of the same file: M = inv(B) * A must map our voxel grid onto theirs
 * by a signed permutation with integer offsets; then their affine in our voxel order equals ours
 * (1e-3 mm) and every voxel has their value */
static void check_vs_dcm2niix(const char *dcm, const char *nii) {
    ml_volume *v = NULL, *r = NULL;
    ML_CHECK_OK(ml_dicom_read(&v, dcm, NULL));
    ML_CHECK_OK(ml_nifti_read(&r, nii, NULL));
    if (!v || !r) {
        ml_volume_release(v), ml_volume_release(r);
        return;
    }
    if (v->data->ndim != 3 || r->data->ndim != 3 || v->data->shape[0] != 64 || v->data->shape[1] != 64 ||
        v->data->shape[2] != 35 || r->data->shape[2] != 35) {
        ML_FAIL_("%s: shape %s, dcm2niix %s", dcm, ml_shape_str(v->data->ndim, v->data->shape),
                 ml_shape_str(r->data->ndim, r->data->shape));
        ml_volume_release(v), ml_volume_release(r);
        return;
    }
    double bi[16], m[16], p[16], bp[16];
    ML_CHECK(ml_affine_inverse(bi, r->affine) == 0);
    ml_affine_mul(m, bi, v->affine);
    ml_affine_identity(p);
    bool perm = true;
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++) {
            double x = m[i * 4 + j], rx = round(x);
            if (fabs(x - rx) > 1e-3 || (j < 3 && fabs(rx) > 1)) perm = false;
            p[i * 4 + j] = rx;
        }
    if (!perm) {
        ML_FAIL_("%s: inv(dcm2niix affine) * ours is not a signed permutation with integer offsets", dcm);
        ml_volume_release(v), ml_volume_release(r);
        return;
    }
    ml_affine_mul(bp, r->affine, p);
    double ad = 0;
    for (int q = 0; q < 12; q++) ad = fmax(ad, fabs(bp[q] - v->affine[q]));
    if (!(ad <= 1e-3)) ML_FAIL_("%s: affine differs from dcm2niix's by %g mm", dcm, ad);
    double vd = 0;
    int64_t ix[4] = {0, 0, 0, 0}, jx[4] = {0, 0, 0, 0};
    for (ix[2] = 0; ix[2] < 35; ix[2]++)
        for (ix[1] = 0; ix[1] < 64; ix[1]++)
            for (ix[0] = 0; ix[0] < 64; ix[0]++) {
                for (int a = 0; a < 3; a++)
                    jx[a] = (int64_t)(p[a * 4] * (double)ix[0] + p[a * 4 + 1] * (double)ix[1] +
                                      p[a * 4 + 2] * (double)ix[2] + p[a * 4 + 3]);
                vd = fmax(vd, fabs(ml_tensor_get(v->data, ix) - ml_tensor_get(r->data, jx)));
            }
    if (vd != 0) ML_FAIL_("%s: voxels differ from dcm2niix's by up to %g", dcm, vd);
    ml_volume_release(v);
    ml_volume_release(r);
}

ML_TEST(mosaic_matches_dcm2niix) {
    check_vs_dcm2niix("tests/data/dicom/mosaic/mosaic_j2k.dcm", "tests/data/dicom/mosaic/ref_dcm2niix.nii.gz");
    char d[512], n[512];
    snprintf(n, sizeof n, "%s/dicom_transfer_syntax/same_image/ref_dcm2niix.nii", SHARED);
    if (!exists(n)) {
        printf("  skipped: %s not present\n", n);
        return;
    }
    for (int i = 1; i <= 9; i++) {
        snprintf(d, sizeof d, "%s/dicom_transfer_syntax/same_image/%d.dcm", SHARED, i);
        check_vs_dcm2niix(d, n);
    }
}

/* slice k of a equals slice map(k) of b */
static void check_slices(const ml_volume *a, const ml_volume *b, int nz, bool reversed, const char *what) {
    int64_t ix[4] = {0, 0, 0, 0}, jx[4] = {0, 0, 0, 0};
    for (ix[2] = 0; ix[2] < nz; ix[2]++) {
        jx[2] = reversed ? nz - 1 - ix[2] : ix[2];
        for (ix[1] = 0; ix[1] < a->data->shape[1]; ix[1]++)
            for (ix[0] = 0; ix[0] < a->data->shape[0]; ix[0]++) {
                jx[0] = ix[0], jx[1] = ix[1];
                if (ml_tensor_get(a->data, ix) != ml_tensor_get(b->data, jx)) {
                    ML_FAIL_("%s: voxel (%lld, %lld, %lld) differs", what, (long long)ix[0], (long long)ix[1],
                             (long long)ix[2]);
                    return;
                }
            }
    }
}

/* tiny_mosaic.dcm (tests/ref/gen_dicom_ref.py --make-data): 3 tiles of 32x32 in a 2x2 grid, oblique,
 * CSA SliceNormalVector against row x column, (0019,100A) = 3, ImageType MOSAIC, AcquisitionMatrix */
ML_TEST(mosaic_sources_of_the_tile_count) {
    const char *src = "tests/data/dicom/mosaic/tiny_mosaic.dcm";
    ml_volume *ref = NULL, *v = NULL;
    ML_CHECK_OK(ml_dicom_read(&ref, src, NULL));
    if (!ref) return;
    ML_CHECK(ref->data->ndim == 3 && ref->data->shape[0] == 32 && ref->data->shape[1] == 32 &&
             ref->data->shape[2] == 3);
    /* the slice axis: 4.5 mm along the normal; the CSA vector runs the tiles against it, so slice 0
     * is the last tile: 2 * 4.5 mm from the first tile's corner */
    double col2[3] = {ref->affine[2], ref->affine[6], ref->affine[10]};
    ML_CHECK_NEAR(sqrt(col2[0] * col2[0] + col2[1] * col2[1] + col2[2] * col2[2]), 4.5, 1e-9);

    /* without the CSA header: the count from (0019,100A), the slices along row x column (tile order) */
    const char *k1[] = {"(0029,1010)"};
    const char *v1[] = {NULL};
    const char *p1 = tpath("mosaic_nocsa.dcm");
    ML_CHECK_OK(ml_dicom_edit_tags(src, p1, 1, k1, v1));
    ML_CHECK_OK(ml_dicom_read(&v, p1, NULL));
    if (v) {
        ML_CHECK(v->data->shape[2] == 3);
        check_slices(v, ref, 3, true, "no CSA header");
        for (int q = 0; q < 12; q++)
            if (q % 4 != 3) ML_CHECK_NEAR(v->affine[q], ref->affine[q], 1e-9);
        for (int a = 0; a < 3; a++) /* origin: the first tile, where ref's last slice is */
            ML_CHECK_NEAR(v->affine[a * 4 + 3], ref->affine[a * 4 + 3] + 2 * ref->affine[a * 4 + 2], 1e-6);
        ml_volume_release(v), v = NULL;
    }
    /* nor (0019,100A): guessed from ImageType MOSAIC + AcquisitionMatrix, as dcm2niix does when the
     * frame holds more than 2 acquisition matrices per side (a 16 x 16 matrix: 4 x 4 tiles), warned */
    const char *k2[] = {"(0029,1010)", "(0019,100A)", "AcquisitionMatrix"};
    const char *v2[] = {NULL, NULL, "16\\0\\0\\16"};
    const char *p2 = tpath("mosaic_guess.dcm");
    ML_CHECK_OK(ml_dicom_edit_tags(src, p2, 3, k2, v2));
    int w0 = g_warnings;
    ML_CHECK_OK(ml_dicom_read(&v, p2, NULL));
    ML_CHECK(g_warnings > w0 && strstr(g_last_warning, "guessed 16 tiles") && strstr(g_last_warning, p2));
    if (v) {
        ML_CHECK(v->data->shape[0] == 16 && v->data->shape[1] == 16 && v->data->shape[2] == 16);
        ml_volume_release(v), v = NULL;
    }
    /* 2 x 2 matrices per side is not enough to guess (dcm2niix: interpolated images look like that) */
    const char *k2b[] = {"(0029,1010)", "(0019,100A)"};
    const char *v2b[] = {NULL, NULL};
    const char *p2b = tpath("mosaic_noguess.dcm");
    ML_CHECK_OK(ml_dicom_edit_tags(src, p2b, 2, k2b, v2b));
    w0 = g_warnings;
    ML_CHECK_OK(ml_dicom_read(&v, p2b, NULL));
    ML_CHECK(g_warnings > w0 && strstr(g_last_warning, "number of images in it is unknown"));
    if (v) {
        ML_CHECK(v->data->shape[0] == 64 && v->data->shape[2] == 1);
        ml_volume_release(v), v = NULL;
    }
    /* nothing to count the tiles with: one image, warned */
    const char *k3[] = {"(0029,1010)", "(0019,100A)", "AcquisitionMatrix"};
    const char *v3[] = {NULL, NULL, NULL};
    const char *p3 = tpath("mosaic_unknown.dcm");
    ML_CHECK_OK(ml_dicom_edit_tags(src, p3, 3, k3, v3));
    w0 = g_warnings;
    ML_CHECK_OK(ml_dicom_read(&v, p3, NULL));
    ML_CHECK(g_warnings > w0 && strstr(g_last_warning, "number of images in it is unknown"));
    if (v) {
        ML_CHECK(v->data->shape[0] == 64 && v->data->shape[1] == 64 && v->data->shape[2] == 1);
        ml_volume_release(v), v = NULL;
    }
    /* a count the frame cannot be cut into (5 -> 3 x 3 tiles of a 64 x 64 frame): one image, warned;
     * (0019,100A) patched in the bytes of the file without CSA header (DCMTK cannot set a private tag) */
    const char *p4 = tpath("mosaic_bad_count.dcm");
    {
        size_t n4 = 0;
        unsigned char *b4 = read_all(p1, &n4);
        static const unsigned char el[10] = {0x19, 0, 0x0A, 0x10, 'U', 'S', 2, 0, 3, 0};
        unsigned char *at = b4 ? memmem(b4, n4, el, sizeof el) : NULL;
        ML_CHECK(at != NULL);
        if (at) at[8] = 5, write_all(p4, b4, n4);
        free(b4);
    }
    w0 = g_warnings;
    ML_CHECK_OK(ml_dicom_read(&v, p4, NULL));
    ML_CHECK(g_warnings > w0 && strstr(g_last_warning, "3 x 3 tiles"));
    if (v) {
        ML_CHECK(v->data->shape[0] == 64 && v->data->shape[2] == 1);
        ml_volume_release(v), v = NULL;
    }
    /* a series of two mosaics at the same place (fMRI volumes): 4-D [32, 32, 3, 2] */
    char dir[600], a[700], b[700];
    snprintf(dir, sizeof dir, "%s", tpath("mosaic_series"));
    mkdir(dir, 0755);
    snprintf(a, sizeof a, "%s/a.dcm", dir);
    snprintf(b, sizeof b, "%s/b.dcm", dir);
    char uid[72];
    ml_dcm_new_uid(uid);
    const char *k5[] = {"InstanceNumber", "SOPInstanceUID"};
    const char *v5a[] = {"7"}, *v5b[] = {"8", uid};
    ML_CHECK_OK(ml_dicom_edit_tags(src, a, 1, k5, v5a));
    ML_CHECK_OK(ml_dicom_edit_tags(src, b, 2, k5, v5b));
    ml_volume_release(ref), ref = NULL;
    ML_CHECK_OK(ml_dicom_read(&v, dir, NULL));
    if (v) {
        ML_CHECK(v->data->ndim == 4 && v->data->shape[2] == 3 && v->data->shape[3] == 2);
        ml_volume_release(v), v = NULL;
    }
    ml_dicom_series_info *info = NULL;
    int ns = 0;
    ML_CHECK_OK(ml_dicom_list_series(&info, &ns, dir, false));
    ML_CHECK(ns == 1 && info && info[0].n_files == 2 && info[0].n_images == 6 && info[0].rows == 32 &&
             info[0].cols == 32);
    ml_dicom_series_free(info, ns);
}

/* the CSA (SV10) parser on hand-made and damaged buffers */
ML_TEST(csa_header_parser) {
    size_t n = 0;
    unsigned char *b = read_all("tests/data/dicom/mosaic/mosaic_j2k.dcm", &n);
    ML_CHECK(b != NULL);
    if (!b) return;
    const unsigned char *sv = memmem(b, n, "SV10", 4);
    ML_CHECK(sv != NULL);
    if (!sv) {
        free(b);
        return;
    }
    size_t len = n - (size_t)(sv - b);
    double v[4];
    ML_CHECK(ml_dicom_csa_numbers(sv, len, "NumberOfImagesInMosaic", v, 4) == 1 && v[0] == 35);
    ML_CHECK(ml_dicom_csa_numbers(sv, len, "SliceNormalVector", v, 4) == 3);
    ML_CHECK_NEAR(v[0], 0, 0);
    ML_CHECK_NEAR(v[1], 0.10799944, 1e-12);
    ML_CHECK_NEAR(v[2], 0.99415095, 1e-12);
    ML_CHECK(ml_dicom_csa_numbers(sv, len, "NoSuchTag", v, 4) == 0);
    /* every truncation of the header: no read past the end, never more values than it holds */
    int okcount = 0;
    for (size_t cut = 0; cut < 12000 && cut < len; cut += 7) {
        unsigned char *c = malloc(cut ? cut : 1);
        memcpy(c, sv, cut);
        int k = ml_dicom_csa_numbers(c, cut, "SliceNormalVector", v, 4);
        okcount += k == 3;
        ML_CHECK(k >= 0 && k <= 3);
        free(c);
    }
    ML_CHECK(okcount > 0);
    ML_CHECK(ml_dicom_csa_numbers((const uint8_t *)"SV10", 4, "SliceNormalVector", v, 4) == 0);
    ML_CHECK(ml_dicom_csa_numbers(NULL, 0, "SliceNormalVector", v, 4) == 0);
    free(b);
}

/* RLE Lossless with BitsAllocated 1 (DICOM SEG), which DCMTK's codec refuses: our own decoder */
ML_TEST(rle_one_bit_segmentation) {
    const char *src = "tests/data/dicom/single/liver_rle.dcm";
    ml_volume *v = NULL;
    ML_CHECK_OK(ml_dicom_read(&v, src, NULL));
    if (v) {
        ML_CHECK(v->data->shape[0] == 512 && v->data->shape[2] == 3 && !strcmp(v->meta.modality, "SEG"));
        ml_volume_release(v), v = NULL;
    }
    char p[512];
    snprintf(p, sizeof p, "%s/dicom_transfer_syntax/misc/liver.dcm", SHARED);
    if (exists(p)) { /* the same segmentation uncompressed */
        ml_volume *u = NULL;
        ML_CHECK_OK(ml_dicom_read(&v, src, NULL));
        ML_CHECK_OK(ml_dicom_read(&u, p, NULL));
        if (u && v) {
            ML_CHECK(ml_t_maxdiff(u->data, v->data) == 0);
            for (int q = 0; q < 16; q++) ML_CHECK_NEAR(u->affine[q], v->affine[q], 1e-9);
        }
        ml_volume_release(u), ml_volume_release(v), v = NULL;
    }
    /* damaged streams: the RLE header of the first frame (1 segment at offset 64) */
    size_t n = 0;
    unsigned char *b = read_all(src, &n);
    ML_CHECK(b != NULL);
    if (!b) return;
    static const unsigned char hdr[8] = {1, 0, 0, 0, 64, 0, 0, 0};
    unsigned char *h = memmem(b, n, hdr, 8);
    ML_CHECK(h != NULL);
    if (h) {
        const char *q;
        h[0] = 2;
        write_all(q = tpath("rle_2seg.dcm"), b, n);
        CHECK_READ_FAILS(q, ML_ERR_IO, q, "declares 2 segments");
        h[0] = 1, h[5] = 0x70;
        write_all(q = tpath("rle_offset.dcm"), b, n);
        CHECK_READ_FAILS(q, ML_ERR_IO, q, "outside the");
        h[5] = 0;
        /* the segment cut short: a run of zero bytes instead of the PackBits stream */
        memset(h + 64, 0x80, 40); /* -128: no-op codes */
        write_all(q = tpath("rle_short.dcm"), b, n);
        CHECK_READ_FAILS(q, ML_ERR_IO, q, "RLE Lossless stream corrupt");
    }
    free(b);
}

/* deflated datasets are inflated into a temporary file (DCMTK reads an inflating stream's values at
 * once, so a damaged length was a 3 GB allocation): same pixels as pydicom, damaged streams refused
 * with the reason, the temporary files gone once the read is over */
ML_TEST(deflated_files_are_inflated_safely) {
    const char *src = "fuzz/corpus_dicom_file/image_dfl.dcm";
    char tdir[600];
    snprintf(tdir, sizeof tdir, "%s", tpath("tmpdir"));
    mkdir(tdir, 0755);
    const char *old = getenv("TMPDIR");
    char *saved = old ? strdup(old) : NULL;
    setenv("TMPDIR", tdir, 1);
    ml_volume *v = NULL;
    ML_CHECK_OK(ml_dicom_read(&v, src, NULL));
    if (v) {
        ML_CHECK(v->data->shape[0] == 512 && v->data->shape[1] == 512 && v->data->shape[2] == 1);
        double s = 0;
        int64_t ix[4] = {0, 0, 0, 0};
        for (ix[1] = 0; ix[1] < 512; ix[1]++)
            for (ix[0] = 0; ix[0] < 512; ix[0]++) s += ml_tensor_get(v->data, ix);
        ML_CHECK_NEAR(s, 33322688, 0.5); /* pydicom: tests/ref/dicom_ref.json, deb_image_dfl.dcm */
        ml_volume_release(v), v = NULL;
    }
    ml_dicom_series_info *info = NULL;
    int ns = 0;
    ML_CHECK_OK(ml_dicom_list_series(&info, &ns, "fuzz/corpus_dicom_file", false));
    for (int i = 0; i < ns; i++)
        if (strstr(info[i].first_file, "image_dfl"))
            ML_CHECK(!strcmp(info[i].transfer_syntax, "1.2.840.10008.1.2.1.99") &&
                     strstr(info[i].ts_name, "Deflated") != NULL);
    ml_dicom_series_free(info, ns);
    size_t n = 0;
    unsigned char *b = read_all(src, &n);
    ML_CHECK(b != NULL);
    if (b) {
        const char *p;
        unsigned char *c = malloc(n);
        memcpy(c, b, n);
        for (size_t i = n / 3; i < n / 3 + 64; i++) c[i] ^= 0x5A; /* damage inside the deflate stream */
        write_all(p = tpath("dfl_damaged.dcm"), c, n);
        ml_err e = ml_dicom_read(&v, p, NULL);
        ML_CHECK(e != ML_OK && strstr(ml_errmsg(), p) != NULL);
        if (!e) ml_volume_release(v), v = NULL;
        write_all(p = tpath("dfl_cut.dcm"), b, n / 2); /* the stream cut in the middle */
        CHECK_READ_FAILS(p, ML_ERR_IO, p, "truncated");
        free(c);
        free(b);
    }
    ML_CHECK(count_entries(tdir, "medlua_inflated_") == 0);
    if (saved) setenv("TMPDIR", saved, 1), free(saved);
    else unsetenv("TMPDIR");
}

/* the always-present series: meta, native values, 4-D layout */
ML_TEST(small_series_meta_and_layout) {
    ml_volume *v = NULL;
    ML_CHECK_OK(ml_dicom_read(&v, "tests/data/dicom/ct_j2k", NULL));
    if (!v) return;
    ML_CHECK(!strcmp(v->meta.modality, "CT"));
    /* this anonymized series has empty Study/Series UIDs, but a frame of reference */
    ML_CHECK(!v->meta.series_uid[0] && !strcmp(v->meta.frame_of_reference_uid,
                                               "1.3.12.2.1107.5.1.4.60064.30000022120807274275100000041"));
    ML_CHECK(v->meta.has_window);
    ML_CHECK_NEAR(v->meta.window_center, 40, 0);
    ML_CHECK_NEAR(v->meta.window_width, 300, 0);
    ML_CHECK_NEAR(v->meta.rescale_slope, 1, 0);
    ML_CHECK_NEAR(v->meta.rescale_intercept, -1024, 0);
    /* the files' own order: strides [1, X, X*Y] */
    ML_CHECK(v->data->stride[0] == 1 && v->data->stride[1] == 512 && v->data->stride[2] == 512 * 512);
    char ax[4];
    ml_affine_axcodes(v->affine, ax);
    ML_CHECK(!strcmp(ax, "LPS"));
    double sp[3];
    ml_volume_spacing(v, sp);
    ML_CHECK_NEAR(sp[0], 0.9765625, 1e-9);
    ML_CHECK_NEAR(sp[2], 2.0, 1e-9);
    ml_volume_release(v);
    ML_CHECK_OK(ml_dicom_read(&v, "tests/data/dicom/epi4d", NULL));
    if (!v) return;
    ML_CHECK(v->data->ndim == 4 && v->data->shape[2] == 15 && v->data->shape[3] == 2);
    ML_CHECK(!strcmp(v->meta.modality, "MR"));
    ml_volume_release(v);
}

/* ============================================================== series selection, listing */
ML_TEST(series_selection_and_listing) {
    /* ct/: 3 CT slices (empty SeriesInstanceUID, anonymized); sub/mr/: 2 MR files of one series */
    char top[512], a[600], b[600], sub[600];
    snprintf(top, sizeof top, "%s", tpath("two_series"));
    mkdir(top, 0755);
    snprintf(a, sizeof a, "%s/ct", top);
    snprintf(sub, sizeof sub, "%s/sub", top);
    snprintf(b, sizeof b, "%s/sub/mr", top);
    copy_dir("tests/data/dicom/ct_j2k", a);
    mkdir(sub, 0755);
    mkdir(b, 0755);
    char from[700], to[700];
    for (int i = 1; i <= 2; i++) {
        snprintf(from, sizeof from, "tests/data/dicom/epi4d/axial_epi_fmri_interleaved_i_to_s-%05d.dcm", i);
        snprintf(to, sizeof to, "%s/%d.dcm", b, i);
        copy_file(from, to);
    }
    char txt[700];
    snprintf(txt, sizeof txt, "%s/README.txt", top);
    write_all(txt, "not dicom\n", 10);
    ml_dicom_series_info *info = NULL;
    int n = 0;
    ML_CHECK_OK(ml_dicom_list_series(&info, &n, top, true));
    ML_CHECK(n == 2);
    char mr_uid[72] = "";
    for (int i = 0; i < n; i++) {
        if (!strcmp(info[i].modality, "CT")) {
            ML_CHECK(info[i].n_files == 3 && info[i].rows == 512 && info[i].cols == 512 && !info[i].series_uid[0]);
            ML_CHECK(!strcmp(info[i].transfer_syntax, "1.2.840.10008.1.2.4.90"));
            ML_CHECK(strstr(info[i].first_file, "/ct/") != NULL);
        } else {
            ML_CHECK(!strcmp(info[i].modality, "MR") && info[i].n_files == 2 && info[i].n_images == 2);
            ML_CHECK(info[i].rows == 64 && info[i].series_number == 4);
            snprintf(mr_uid, sizeof mr_uid, "%s", info[i].series_uid);
        }
    }
    ml_dicom_series_free(info, n);
    ML_CHECK(mr_uid[0] != 0);
    /* not recursive: only README.txt at the top */
    ML_CHECK_OK(ml_dicom_list_series(&info, &n, top, false));
    ML_CHECK(n == 0);
    ml_dicom_series_free(info, n);
    /* the largest series by default, the MR by UID */
    ml_volume *v = NULL;
    ML_CHECK_OK(ml_dicom_read(&v, top, NULL));
    if (v) ML_CHECK(v->data->shape[2] == 3 && !strcmp(v->meta.modality, "CT"));
    ml_volume_release(v);
    ml_dicom_read_opts o;
    ml_dicom_read_opts_init(&o);
    o.series_uid = mr_uid;
    v = NULL;
    ML_CHECK_OK(ml_dicom_read(&v, top, &o));
    if (v) ML_CHECK(v->data->ndim == 3 && v->data->shape[2] == 2 && !strcmp(v->meta.series_uid, mr_uid));
    ml_volume_release(v);
    o.series_uid = "1.2.3.4.5";
    v = (ml_volume *)1;
    ml_t_expect_err(ml_dicom_read(&v, top, &o), ML_ERR_ARG, "no series with SeriesInstanceUID 1.2.3.4.5", mr_uid,
                    "unknown series_uid");
    ML_CHECK(v == NULL);
    o.series_uid = NULL;
    o.recursive = false;
    v = (ml_volume *)1;
    ml_t_expect_err(ml_dicom_read(&v, top, &o), ML_ERR_IO, top, "no DICOM images found", "recursive=false");
    /* a single file of a series reads that file only */
    ML_CHECK_OK(ml_dicom_read(&v, first_file_in(a), NULL));
    if (v) ML_CHECK(v->data->ndim == 3 && v->data->shape[2] == 1);
    ml_volume_release(v);
    rm_tree(top);
}

/* ============================================================== the assembler */
static ml_dcm_slice mk_slice(double z, int inst) {
    ml_dcm_slice s;
    memset(&s, 0, sizeof s);
    s.rows = 4;
    s.cols = 6;
    double iop[6] = {1, 0, 0, 0, 1, 0};
    memcpy(s.iop, iop, sizeof iop);
    s.ps[0] = 0.5;
    s.ps[1] = 0.25;
    s.ipp[0] = -10;
    s.ipp[1] = 20;
    s.ipp[2] = z;
    s.has_ipp = s.has_iop = s.has_ps = s.has_instance = 1;
    s.instance = inst;
    s.file = inst;
    s.name = "synthetic.dcm";
    return s;
}

ML_TEST(assembler_sorts_by_position) {
    ml_dcm_slice s[5];
    double zs[5] = {6, -2, 2, 10, 14}; /* spacing 4, shuffled, instance numbers unrelated */
    for (int i = 0; i < 5; i++) s[i] = mk_slice(zs[i], 5 - i);
    ml_dcm_plan p;
    g_warnings = 0;
    ML_CHECK_OK(ml_dicom_assemble(&p, s, 5, ML_DICOM_WARN, ML_DICOM_WARN, "synthetic"));
    ML_CHECK(g_warnings == 0);
    ML_CHECK(p.nx == 6 && p.ny == 4 && p.nz == 5 && p.nt == 1 && !p.resample && !p.uneven && !p.tilted);
    int64_t want[5] = {1, 2, 0, 3, 4};
    for (int k = 0; k < 5; k++) ML_CHECK(p.stack[k] == want[k]);
    /* LPS (-10, 20, -2) -> RAS (10, -20, -2); columns: 0.25 along -x, 0.5 along -y, 4 along z */
    double A[16] = {-0.25, 0, 0, 10, 0, -0.5, 0, -20, 0, 0, 4, -2, 0, 0, 0, 1};
    for (int q = 0; q < 16; q++) ML_CHECK_NEAR(p.affine[q], A[q], 1e-12);
    ml_dicom_plan_free(&p);
    /* oblique orientation: sorted along the normal, not along z */
    double c = cos(0.3), sn = sin(0.3);
    for (int i = 0; i < 5; i++) {
        double iop[6] = {1, 0, 0, 0, c, sn}; /* normal = (0, -sn, c) */
        memcpy(s[i].iop, iop, sizeof iop);
        double d = zs[i];
        s[i].ipp[0] = 0, s[i].ipp[1] = -sn * d, s[i].ipp[2] = c * d;
    }
    ML_CHECK_OK(ml_dicom_assemble(&p, s, 5, ML_DICOM_WARN, ML_DICOM_WARN, "synthetic"));
    for (int k = 0; k < 5; k++) ML_CHECK(p.stack[k] == want[k]);
    ML_CHECK_NEAR(p.affine[2], 0, 1e-12);        /* RAS x of the slice axis */
    ML_CHECK_NEAR(p.affine[6], 4 * sn, 1e-12);   /* -(LPS y) */
    ML_CHECK_NEAR(p.affine[10], 4 * c, 1e-12);
    ML_CHECK(!p.tilted);
    ml_dicom_plan_free(&p);
}

ML_TEST(assembler_4d_and_incomplete) {
    ml_dcm_slice s[12];
    for (int t = 0; t < 3; t++)
        for (int k = 0; k < 4; k++) s[t * 4 + k] = mk_slice(2.5 * k, 1 + t * 4 + k);
    /* shuffle */
    ml_dcm_slice tmp = s[0];
    s[0] = s[11], s[11] = tmp;
    tmp = s[3], s[3] = s[7], s[7] = tmp;
    ml_dcm_plan p;
    ML_CHECK_OK(ml_dicom_assemble(&p, s, 12, ML_DICOM_WARN, ML_DICOM_WARN, "synthetic"));
    ML_CHECK(p.nz == 4 && p.nt == 3);
    for (int t = 0; t < 3; t++)
        for (int k = 0; k < 4; k++) ML_CHECK(s[p.stack[k + 4 * t]].instance == 1 + t * 4 + k);
    ML_CHECK_NEAR(p.affine[10], 2.5, 1e-12);
    ml_dicom_plan_free(&p);
    /* one image missing: not a volume */
    ml_t_expect_err(ml_dicom_assemble(&p, s, 11, ML_DICOM_WARN, ML_DICOM_WARN, "synthetic"), ML_ERR_IO, "synthetic",
                    "incomplete 4-D", "incomplete 4-D");
    /* all at one position: [X, Y, 1, T] */
    for (int i = 0; i < 5; i++) s[i] = mk_slice(7, 10 - i);
    ML_CHECK_OK(ml_dicom_assemble(&p, s, 5, ML_DICOM_WARN, ML_DICOM_WARN, "synthetic"));
    ML_CHECK(p.nz == 1 && p.nt == 5 && s[p.stack[0]].instance == 6);
    ml_dicom_plan_free(&p);
}

ML_TEST(assembler_instance_number_fallback) {
    ml_dcm_slice s[4];
    for (int i = 0; i < 4; i++) {
        s[i] = mk_slice(0, 4 - i);
        s[i].has_ipp = 0;
        s[i].spacing_between = 3;
    }
    ml_dcm_plan p;
    g_warnings = 0;
    ML_CHECK_OK(ml_dicom_assemble(&p, s, 4, ML_DICOM_WARN, ML_DICOM_WARN, "nopos"));
    ML_CHECK(g_warnings == 1 && strstr(g_last_warning, "InstanceNumber") && strstr(g_last_warning, "nopos"));
    for (int k = 0; k < 4; k++) ML_CHECK(s[p.stack[k]].instance == k + 1);
    ML_CHECK_NEAR(p.affine[10], 3, 1e-12);
    ml_dicom_plan_free(&p);
    /* one image: no warning, spacing from SliceThickness */
    s[0].spacing_between = 0;
    s[0].thickness = 1.25;
    g_warnings = 0;
    ML_CHECK_OK(ml_dicom_assemble(&p, s, 1, ML_DICOM_WARN, ML_DICOM_WARN, "one"));
    ML_CHECK(g_warnings == 0 && p.nz == 1);
    ML_CHECK_NEAR(p.affine[10], 1.25, 1e-12);
    ml_dicom_plan_free(&p);
}

ML_TEST(assembler_uneven_spacing) {
    ml_dcm_slice s[5];
    double zs[5] = {0, 2, 4, 8, 10}; /* slice at 6 missing */
    for (int i = 0; i < 5; i++) s[i] = mk_slice(zs[i], i + 1);
    ml_dcm_plan p;
    g_warnings = 0;
    ML_CHECK_OK(ml_dicom_assemble(&p, s, 5, ML_DICOM_WARN, ML_DICOM_WARN, "gap"));
    ML_CHECK(p.uneven && !p.resample && p.nz == 5 && g_warnings == 1 && strstr(g_last_warning, "uneven"));
    ML_CHECK_NEAR(p.median_gap, 2, 1e-12);
    ML_CHECK_NEAR(p.affine[10], 2, 1e-12);
    ml_dicom_plan_free(&p);
    ML_CHECK_OK(ml_dicom_assemble(&p, s, 5, ML_DICOM_RESAMPLE, ML_DICOM_WARN, "gap"));
    ML_CHECK(p.resample && p.nz == 6);
    ML_CHECK_NEAR(p.affine[10], 2, 1e-12);
    if (p.interp) {
        /* output slice 3 (z = 6) is halfway between the inputs at 4 and 8 */
        ML_CHECK(p.interp[3].k0 == 2 && p.interp[3].k1 == 3);
        ML_CHECK_NEAR(p.interp[3].w, 0.5, 1e-12);
        ML_CHECK(p.interp[5].k1 == 4);
        ML_CHECK_NEAR(p.interp[5].w, 1, 1e-12);
        ML_CHECK_NEAR(p.interp[3].sx0, 0, 1e-12);
    }
    ml_dicom_plan_free(&p);
    ml_t_expect_err(ml_dicom_assemble(&p, s, 5, ML_DICOM_ERROR, ML_DICOM_WARN, "gapdir"), ML_ERR_IO, "gapdir",
                    "uneven slice spacing", "on_uneven=error");
    /* noise below the tolerance is not uneven */
    s[3].ipp[2] = 6.01, s[4].ipp[2] = 7.99;
    double z2[5] = {0, 2, 4, 6.01, 7.99};
    for (int i = 0; i < 5; i++) s[i].ipp[2] = z2[i];
    ML_CHECK_OK(ml_dicom_assemble(&p, s, 5, ML_DICOM_ERROR, ML_DICOM_ERROR, "noise"));
    ML_CHECK(!p.uneven);
    ML_CHECK_NEAR(p.affine[10], 7.99 / 4, 1e-12);
    ml_dicom_plan_free(&p);
}

ML_TEST(assembler_gantry_tilt) {
    ml_dcm_slice s[5];
    double tilt = 15 * M_PI / 180;
    for (int i = 0; i < 5; i++) {
        s[i] = mk_slice(3.0 * i, i + 1);
        s[i].ipp[1] = 20 + 3.0 * i * tan(tilt); /* positions drift along y (LPS) */
    }
    ml_dcm_plan p;
    g_warnings = 0;
    ML_CHECK_OK(ml_dicom_assemble(&p, s, 5, ML_DICOM_WARN, ML_DICOM_WARN, "tilt"));
    ML_CHECK(p.tilted && !p.resample && g_warnings == 1 && strstr(g_last_warning, "tilt"));
    ML_CHECK_NEAR(p.tilt_deg, 15, 1e-9);
    /* sheared affine: every voxel centre where the files put it */
    for (int k = 0; k < 5; k++) {
        double ijk[3] = {1, 2, k}, w[3];
        ml_affine_apply(p.affine, ijk, w);
        ML_CHECK_NEAR(w[0], -(-10 + 1 * 0.25), 1e-9);
        ML_CHECK_NEAR(w[1], -(s[k].ipp[1] + 2 * 0.5), 1e-9);
        ML_CHECK_NEAR(w[2], s[k].ipp[2], 1e-9);
    }
    ml_dicom_plan_free(&p);
    ML_CHECK_OK(ml_dicom_assemble(&p, s, 5, ML_DICOM_WARN, ML_DICOM_RESAMPLE, "tilt"));
    ML_CHECK(p.resample && p.nz == 5);
    ML_CHECK_NEAR(p.affine[6], 0, 1e-12); /* orthogonal grid: slice axis along the normal */
    ML_CHECK_NEAR(p.affine[10], 3, 1e-12);
    if (p.interp) {
        /* output slice 2 is input slice 2 shifted by its drift (in rows of 0.5 mm) */
        ML_CHECK(p.interp[2].k0 == 2 || p.interp[2].k1 == 2);
        const ml_dcm_interp *it = &p.interp[2];
        double sy = it->k0 == 2 ? it->sy0 : it->sy1;
        ML_CHECK_NEAR(sy, -6 * tan(tilt) / 0.5, 1e-9);
    }
    ml_dicom_plan_free(&p);
    ml_t_expect_err(ml_dicom_assemble(&p, s, 5, ML_DICOM_WARN, ML_DICOM_ERROR, "tiltdir"), ML_ERR_IO, "tiltdir",
                    "gantry tilt of 15 degrees", "on_tilt=error");
}

ML_TEST(assembler_rejects_mixed_series) {
    ml_dcm_slice s[3];
    for (int i = 0; i < 3; i++) s[i] = mk_slice(i, i + 1);
    ml_dcm_plan p;
    s[2].rows = 8;
    s[2].name = "/x/big.dcm";
    ml_t_expect_err(ml_dicom_assemble(&p, s, 3, 0, 0, "mixdir"), ML_ERR_IO, "mixed image sizes", "big.dcm", "sizes");
    s[2].rows = 4;
    s[2].iop[0] = 0, s[2].iop[2] = 1;
    ml_t_expect_err(ml_dicom_assemble(&p, s, 3, 0, 0, "mixdir"), ML_ERR_IO, "mixed orientations", "big.dcm",
                    "orientations");
    s[2].iop[0] = 1, s[2].iop[2] = 0;
    s[2].ps[0] = 0.7;
    ml_t_expect_err(ml_dicom_assemble(&p, s, 3, 0, 0, "mixdir"), ML_ERR_IO, "mixed pixel spacings", "big.dcm",
                    "spacings");
    s[2].ps[0] = 0.5;
    s[1].ipp[0] = NAN;
    ml_t_expect_err(ml_dicom_assemble(&p, s, 3, 0, 0, "mixdir"), ML_ERR_IO, "not finite", "mixdir", "nan");
    s[1].ipp[0] = -10;
    for (int i = 0; i < 3; i++) s[i].iop[3] = 1, s[i].iop[4] = 0; /* rows parallel to columns */
    ml_t_expect_err(ml_dicom_assemble(&p, s, 3, 0, 0, "mixdir"), ML_ERR_IO, "not orthogonal", "mixdir", "iop");
    ml_t_expect_err(ml_dicom_assemble(&p, s, 0, 0, 0, "empty"), ML_ERR_IO, "no images", "empty", "n=0");
}

/* ============================================================== writing */
static ml_volume *synthetic_volume(int64_t X, int64_t Y, int64_t Z, int64_t T, const double A[16], bool fractional) {
    int64_t shp[4] = {X, Y, Z, T};
    ml_tensor *t = NULL;
    if (ml_tensor_empty(&t, ML_F32, T > 1 ? 4 : 3, shp)) return NULL;
    float *d = ml_tensor_data(t); /* contiguous [X, Y, Z(, T)] */
    int64_t n = X * Y * Z * T;
    for (int64_t q = 0; q < n; q++) {
        int64_t tt = q % T, k = (q / T) % Z, j = (q / T / Z) % Y, i = q / T / Z / Y;
        double v = 10.0 * (double)i - 7.0 * (double)j + 100.0 * (double)k + 1000.0 * (double)tt - 500;
        d[q] = (float)(fractional ? v * 0.0137 + 0.5 * sin((double)q) : v);
    }
    ml_volume *v = NULL;
    ml_volume_new(&v, t, A, NULL);
    ml_tensor_release(t);
    return v;
}

static void expect_same_volume(const ml_volume *a, const ml_volume *b, double vtol, const char *what) {
    if (a->data->ndim != b->data->ndim) {
        ML_FAIL_("%s: ndim %d vs %d", what, a->data->ndim, b->data->ndim);
        return;
    }
    for (int d = 0; d < a->data->ndim; d++)
        if (a->data->shape[d] != b->data->shape[d]) {
            ML_FAIL_("%s: shape %s vs %s", what, ml_shape_str(a->data->ndim, a->data->shape),
                     ml_shape_str(b->data->ndim, b->data->shape));
            return;
        }
    for (int q = 0; q < 16; q++)
        if (fabs(a->affine[q] - b->affine[q]) > 1e-4) {
            ML_FAIL_("%s: affine[%d] %.6f vs %.6f", what, q, a->affine[q], b->affine[q]);
            break;
        }
    double md = ml_t_maxdiff(a->data, b->data);
    if (!(md <= vtol)) ML_FAIL_("%s: values differ by %g (tolerance %g)", what, md, vtol);
}

ML_TEST(write_read_roundtrip_real_series) {
    ml_volume *v = NULL, *w = NULL;
    ML_CHECK_OK(ml_dicom_read(&v, "tests/data/dicom/ct_j2k", NULL));
    if (!v) return;
    const char *dir = tpath("ct_out");
    ml_dicom_write_opts o;
    ml_dicom_write_opts_init(&o);
    o.patient_name = "Test^Patient";
    ML_CHECK_OK(ml_dicom_write_series(v, dir, &o));
    ML_CHECK(count_entries(dir, ".dcm") == 3);
    ML_CHECK(count_entries(g_dir, ".tmp-") == 0);
    ML_CHECK_OK(ml_dicom_read(&w, dir, NULL));
    if (w) {
        expect_same_volume(w, v, 0, "CT round trip (integers: exact)");
        ML_CHECK(!strcmp(w->meta.modality, "CT"));
        ML_CHECK(w->meta.study_uid[0] && w->meta.series_uid[0]); /* new UIDs where the input had none */
        ML_CHECK(!strcmp(w->meta.frame_of_reference_uid, v->meta.frame_of_reference_uid));
        ML_CHECK(strcmp(w->meta.series_uid, v->meta.series_uid) != 0); /* a new series */
        ML_CHECK(w->meta.has_window && w->meta.window_center == 40);
    }
    /* the files are CT Image Storage with the tags we promised */
    const char *keys[] = {"SOPClassUID", "PatientName", "RescaleType", "PixelSpacing", "(0002,0010)", "BitsStored"};
    char *vals[6] = {0};
    ML_CHECK_OK(ml_dicom_read_tags(first_file_in(dir), 6, keys, vals));
    ML_CHECK(vals[0] && !strcmp(vals[0], "1.2.840.10008.5.1.4.1.1.2"));
    ML_CHECK(vals[1] && !strcmp(vals[1], "Test^Patient"));
    ML_CHECK(vals[2] && !strcmp(vals[2], "HU"));
    ML_CHECK(vals[3] && !strcmp(vals[3], "0.9765625\\0.9765625"));
    ML_CHECK(vals[4] && !strcmp(vals[4], "1.2.840.10008.1.2.1"));
    ML_CHECK(vals[5] && !strcmp(vals[5], "16"));
    for (int i = 0; i < 6; i++) free(vals[i]);
    ml_volume_release(w);
    /* the 4-D series */
    ml_volume_release(v);
    ML_CHECK_OK(ml_dicom_read(&v, "tests/data/dicom/epi4d", NULL));
    dir = tpath("epi_out");
    ML_CHECK_OK(ml_dicom_write_series(v, dir, NULL));
    ML_CHECK(count_entries(dir, ".dcm") == 30);
    w = NULL;
    ML_CHECK_OK(ml_dicom_read(&w, dir, NULL));
    if (w && v) {
        expect_same_volume(w, v, 0, "4-D round trip");
        ML_CHECK(!strcmp(w->meta.modality, "MR"));
    }
    const char *k2[] = {"SOPClassUID", "TemporalPositionIdentifier"};
    char *v2[2] = {0};
    ML_CHECK_OK(ml_dicom_read_tags(first_file_in(dir), 2, k2, v2));
    ML_CHECK(v2[0] && !strcmp(v2[0], "1.2.840.10008.5.1.4.1.1.7")); /* Secondary Capture */
    ML_CHECK(v2[1] && !strcmp(v2[1], "1"));
    free(v2[0]), free(v2[1]);
    ml_volume_release(w);
    ml_volume_release(v);
}

ML_TEST(write_read_roundtrip_synthetic) {
    /* oblique, anisotropic, fractional values: geometry to 1e-4, values within half a rescale step */
    double c = cos(0.4), s = sin(0.4);
    double A[16] = {0.7 * c, -1.1 * s, 0, 12.5, 0.7 * s, 1.1 * c, 0, -30.25, 0, 0, 2.5, 80, 0, 0, 0, 1};
    ml_volume *v = synthetic_volume(17, 11, 6, 1, A, true), *w = NULL;
    ML_CHECK(v != NULL);
    if (!v) return;
    snprintf(v->meta.modality, sizeof v->meta.modality, "MR");
    const char *dir = tpath("synth_out");
    ML_CHECK_OK(ml_dicom_write_series(v, dir, NULL));
    ML_CHECK_OK(ml_dicom_read(&w, dir, NULL));
    double vmin = INFINITY, vmax = -INFINITY;
    for (int64_t i = 0; i < ml_tensor_numel(v->data); i++) {
        double x = ((float *)ml_tensor_data(v->data))[i];
        vmin = fmin(vmin, x), vmax = fmax(vmax, x);
    }
    double step = (vmax - vmin) / 65534;
    if (w) expect_same_volume(w, v, 0.5 * step * 1.01 + 1e-6 * fabs(vmax), "fractional round trip");
    ml_volume_release(w);
    /* left-handed (slice axis against rows x columns): same world positions, slices reversed */
    double B[16] = {-0.8, 0, 0, 5, 0, 0.9, 0, -7, 0, 0, 3, 40, 0, 0, 0, 1}; /* RAS diag(-.8, .9, 3) */
    ml_volume *u = synthetic_volume(5, 4, 3, 1, B, false);
    dir = tpath("left_out");
    ML_CHECK_OK(ml_dicom_write_series(u, dir, NULL));
    w = NULL;
    ML_CHECK_OK(ml_dicom_read(&w, dir, NULL));
    if (w && u) {
        for (int64_t k = 0; k < 3; k++) {
            double p[3] = {1, 2, (double)k}, q[3] = {1, 2, (double)(2 - k)}, wa[3], wb[3];
            ml_affine_apply(u->affine, p, wa);
            ml_affine_apply(w->affine, q, wb);
            for (int a = 0; a < 3; a++) ML_CHECK_NEAR(wa[a], wb[a], 1e-4);
            ML_CHECK_NEAR(vox(w, 1, 2, 2 - k, 0), vox(u, 1, 2, k, 0), 0);
        }
    }
    ml_volume_release(w);
    ml_volume_release(u);
    ml_volume_release(v);
}

ML_TEST(write_errors_leave_nothing) {
    double A[16] = {1, 0.3, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1}; /* in-plane shear */
    ml_volume *v = synthetic_volume(4, 4, 2, 1, A, false);
    const char *dir = tpath("bad_out");
    ml_t_expect_err(ml_dicom_write_series(v, dir, NULL), ML_ERR_ARG, dir, "not orthogonal", "sheared");
    ML_CHECK(!exists(dir) && count_entries(g_dir, ".tmp-") == 0);
    ml_volume_release(v);
    double I[16] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1};
    v = synthetic_volume(4, 4, 2, 1, I, false);
    ((float *)ml_tensor_data(v->data))[5] = NAN;
    ml_t_expect_err(ml_dicom_write_series(v, dir, NULL), ML_ERR_ARG, dir, "NaN", "nan voxel");
    ML_CHECK(!exists(dir) && count_entries(g_dir, ".tmp-") == 0);
    ((float *)ml_tensor_data(v->data))[5] = 1;
    /* an existing non-empty directory is kept unless overwrite */
    mkdir(dir, 0755);
    char keep[600];
    snprintf(keep, sizeof keep, "%s/keep.txt", dir);
    write_all(keep, "x", 1);
    ml_t_expect_err(ml_dicom_write_series(v, dir, NULL), ML_ERR_IO, dir, "not empty", "existing dir");
    ML_CHECK(exists(keep) && count_entries(g_dir, ".tmp-") == 0);
    ml_dicom_write_opts o;
    ml_dicom_write_opts_init(&o);
    o.overwrite = true;
    ML_CHECK_OK(ml_dicom_write_series(v, dir, &o));
    ML_CHECK(!exists(keep) && count_entries(dir, ".dcm") == 2 && count_entries(g_dir, ".old-") == 0);
    /* a directory that cannot be created */
    ml_t_expect_err(ml_dicom_write_series(v, "/proc/medlua_no_such/x", NULL), ML_ERR_IO, "/proc/medlua_no_such/x",
                    "temporary directory", "unwritable");
    ml_volume_release(v);
}

/* uneven spacing and tilt, end to end: files written by the writer, then edited */
ML_TEST(uneven_and_tilt_on_real_files) {
    double I[16] = {-1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 1};
    ml_volume *v = synthetic_volume(8, 6, 6, 1, I, false), *w = NULL;
    const char *dir = tpath("gap");
    ML_CHECK_OK(ml_dicom_write_series(v, dir, NULL));
    char f4[600];
    snprintf(f4, sizeof f4, "%s/IM000004.dcm", dir); /* k = 3 (z = 6 mm) */
    ML_CHECK(unlink(f4) == 0);
    g_warnings = 0;
    ML_CHECK_OK(ml_dicom_read(&w, dir, NULL));
    ML_CHECK(g_warnings == 1 && strstr(g_last_warning, "uneven") && strstr(g_last_warning, dir));
    if (w) ML_CHECK(w->data->shape[2] == 5);
    ml_volume_release(w);
    ml_dicom_read_opts o;
    ml_dicom_read_opts_init(&o);
    o.on_uneven = ML_DICOM_RESAMPLE;
    w = NULL;
    ML_CHECK_OK(ml_dicom_read(&w, dir, &o));
    /* values are linear in k: interpolation restores the missing slice */
    if (w) expect_same_volume(w, v, 1e-3, "uneven resampled");
    ml_volume_release(w);
    o.on_uneven = ML_DICOM_ERROR;
    w = (ml_volume *)1;
    ml_t_expect_err(ml_dicom_read(&w, dir, &o), ML_ERR_IO, dir, "uneven slice spacing", "on_uneven=error");
    ml_volume_release(v);
    /* tilt: the writer keeps a sheared affine; reading back with warn gives it back */
    double S[16] = {-1, 0, 0, 0, 0, -1, 0.5, 0, 0, 0, 2, 0, 0, 0, 0, 1}; /* 14 degrees */
    v = synthetic_volume(8, 6, 5, 1, S, false);
    dir = tpath("tilt");
    ML_CHECK_OK(ml_dicom_write_series(v, dir, NULL));
    g_warnings = 0;
    w = NULL;
    ML_CHECK_OK(ml_dicom_read(&w, dir, NULL));
    ML_CHECK(g_warnings == 1 && strstr(g_last_warning, "gantry tilt"));
    if (w) expect_same_volume(w, v, 0, "tilted, kept sheared");
    ml_volume_release(w);
    o.on_uneven = ML_DICOM_WARN;
    o.on_tilt = ML_DICOM_RESAMPLE;
    w = NULL;
    ML_CHECK_OK(ml_dicom_read(&w, dir, &o));
    if (w) {
        ML_CHECK_NEAR(w->affine[6], 0, 1e-9);
        ML_CHECK_NEAR(w->affine[10], 2, 1e-9);
        /* each voxel of the orthogonal grid, mapped into the sheared original: values are linear
         * in j there, so interpolation is exact where the point lies inside the original */
        double inv[16];
        ML_CHECK(ml_affine_inverse(inv, v->affine) == 0);
        int checked = 0;
        for (int64_t k = 0; k < 5; k++)
            for (int64_t j = 0; j < 6; j++) {
                double p[3] = {3, (double)j, (double)k}, wp[3], q[3];
                ml_affine_apply(w->affine, p, wp);
                ml_affine_apply(inv, wp, q);
                if (q[1] < 0 || q[1] > 5) continue;
                double want = 10.0 * q[0] - 7.0 * q[1] + 100.0 * q[2] - 500;
                ML_CHECK_NEAR(vox(w, 3, j, k, 0), want, 1e-3);
                checked++;
            }
        ML_CHECK(checked >= 15);
    }
    ml_volume_release(w);
    o.on_tilt = ML_DICOM_ERROR;
    w = (ml_volume *)1;
    ml_t_expect_err(ml_dicom_read(&w, dir, &o), ML_ERR_IO, dir, "gantry tilt", "on_tilt=error");
    ml_volume_release(v);
}

/* ============================================================== editing */
ML_TEST(edit_tags) {
    const char *src = "tests/data/dicom/ct_j2k/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016573";
    const char *out = tpath("edited.dcm");
    const char *keys[] = {"DistanceSourceToDetector", "(0010,0010)", "SeriesDescription", "0018,1111"};
    const char *vals[] = {"1000", "Doe^Jane", NULL, "541.5"};
    ML_CHECK_OK(ml_dicom_edit_tags(src, out, 4, keys, vals));
    const char *rk[] = {"DistanceSourceToDetector", "PatientName", "SeriesDescription", "DistanceSourceToPatient",
                        "(0002,0010)", "Modality"};
    char *rv[6] = {0};
    ML_CHECK_OK(ml_dicom_read_tags(out, 6, rk, rv));
    ML_CHECK(rv[0] && !strcmp(rv[0], "1000"));
    ML_CHECK(rv[1] && !strcmp(rv[1], "Doe^Jane"));
    ML_CHECK(rv[2] == NULL);
    ML_CHECK(rv[3] && !strcmp(rv[3], "541.5"));
    ML_CHECK(rv[4] && !strcmp(rv[4], "1.2.840.10008.1.2.4.90")); /* same transfer syntax */
    ML_CHECK(rv[5] && !strcmp(rv[5], "CT"));
    for (int i = 0; i < 6; i++) free(rv[i]);
    ml_volume *a = NULL, *b = NULL;
    ML_CHECK_OK(ml_dicom_read(&a, src, NULL));
    ML_CHECK_OK(ml_dicom_read(&b, out, NULL));
    if (a && b) expect_same_volume(a, b, 0, "pixels untouched");
    ml_volume_release(a);
    ml_volume_release(b);
    /* in place */
    const char *k1[] = {"PatientID"}, *v1[] = {"P-42"};
    ML_CHECK_OK(ml_dicom_edit_tags(out, out, 1, k1, v1));
    char *r1[1] = {0};
    ML_CHECK_OK(ml_dicom_read_tags(out, 1, k1, r1));
    ML_CHECK(r1[0] && !strcmp(r1[0], "P-42"));
    free(r1[0]);
    /* errors: nothing written, no temporary left */
    const char *out2 = tpath("edited2.dcm");
    const char *bk[] = {"NoSuchKeyword"}, *bv[] = {"1"};
    ml_t_expect_err(ml_dicom_edit_tags(src, out2, 1, bk, bv), ML_ERR_ARG, "unknown tag 'NoSuchKeyword'", src, "kw");
    const char *pk[] = {"PixelData"};
    ml_t_expect_err(ml_dicom_edit_tags(src, out2, 1, pk, bv), ML_ERR_ARG, "pixel data", src, "pixel");
    const char *mk[] = {"(0002,0010)"};
    ml_t_expect_err(ml_dicom_edit_tags(src, out2, 1, mk, bv), ML_ERR_ARG, "meta header", src, "meta");
    const char *dk[] = {"Rows"}, *dv[] = {"many"};
    ml_t_expect_err(ml_dicom_edit_tags(src, out2, 1, dk, dv), ML_ERR_ARG, "Rows", src, "bad value");
    const char *nd = tpath("not_dicom.txt");
    write_all(nd, "hello, this is not DICOM at all\n", 32);
    ml_t_expect_err(ml_dicom_edit_tags(nd, out2, 1, k1, v1), ML_ERR_IO, nd, "not a DICOM file", "text");
    ML_CHECK(!exists(out2) && count_entries(g_dir, ".tmp-") == 0);
}

/* ============================================================== bad input */
ML_TEST(bad_input) {
    const char *src = "tests/data/dicom/epi4d/axial_epi_fmri_interleaved_i_to_s-00001.dcm";
    const char *j2k = "tests/data/dicom/ct_j2k/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016573";
    size_t n = 0, nj = 0;
    unsigned char *b = read_all(src, &n), *bj = read_all(j2k, &nj);
    ML_CHECK(b && bj);
    if (!b || !bj) return;
    const char *p;
    /* truncated: in the pixel data, in the header, in a JPEG 2000 fragment */
    write_all(p = tpath("trunc_px.dcm"), b, n - 3000);
    CHECK_READ_FAILS(p, ML_ERR_IO, p, "truncated");
    write_all(p = tpath("trunc_hdr.dcm"), b, 700);
    CHECK_READ_FAILS(p, ML_ERR_IO, p, "truncated");
    write_all(p = tpath("trunc_j2k.dcm"), bj, nj / 2);
    CHECK_READ_FAILS(p, ML_ERR_IO, p, "truncated");
    /* not DICOM */
    write_all(p = tpath("text.dcm"), "just some text, not a DICOM file\n", 33);
    CHECK_READ_FAILS(p, ML_ERR_IO, p, "not a DICOM file");
    unsigned char junk[3000];
    for (int i = 0; i < 3000; i++) junk[i] = (unsigned char)(i * 7919 + 13);
    write_all(p = tpath("junk.bin"), junk, sizeof junk);
    CHECK_READ_FAILS(p, ML_ERR_IO, p, "not a DICOM file");
    CHECK_READ_FAILS(tpath("does_not_exist.dcm"), ML_ERR_IO, "does_not_exist.dcm", "No such file");
    /* a directory without DICOM images */
    char d[600];
    snprintf(d, sizeof d, "%s", tpath("nodicom"));
    mkdir(d, 0755);
    char f[700];
    snprintf(f, sizeof f, "%s/a.txt", d);
    write_all(f, "hello", 5);
    CHECK_READ_FAILS(d, ML_ERR_IO, d, "no DICOM images found");
    snprintf(f, sizeof f, "%s/empty", tpath("emptydir"));
    mkdir(tpath("emptydir"), 0755);
    CHECK_READ_FAILS(tpath("emptydir"), ML_ERR_IO, "emptydir", "no DICOM images found (0 files");
    /* a directory whose series mixes sizes / orientations */
    double I[16] = {-1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 1};
    ml_volume *v1 = synthetic_volume(8, 6, 2, 1, I, false), *v2 = synthetic_volume(8, 7, 2, 1, I, false);
    ml_dicom_write_opts o;
    ml_dicom_write_opts_init(&o);
    o.series_uid = "1.2.826.0.1.3680043.2.1125.999.1";
    snprintf(d, sizeof d, "%s", tpath("mixed"));
    mkdir(d, 0755);
    char s1[700], s2[700];
    snprintf(s1, sizeof s1, "%s/a", d);
    snprintf(s2, sizeof s2, "%s/b", d);
    ML_CHECK_OK(ml_dicom_write_series(v1, s1, &o));
    ML_CHECK_OK(ml_dicom_write_series(v2, s2, &o));
    CHECK_READ_FAILS(d, ML_ERR_IO, d, "mixed image sizes");
    ml_volume_release(v2);
    double R[16] = {0, 0, 2, 0, -1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 0, 1}; /* sagittal */
    v2 = synthetic_volume(8, 6, 2, 1, R, false);
    rm_tree(s2);
    ML_CHECK_OK(ml_dicom_write_series(v2, s2, &o));
    CHECK_READ_FAILS(d, ML_ERR_IO, d, "mixed orientations");
    ml_volume_release(v1);
    ml_volume_release(v2);
    /* missing pixel module: no Rows; no PixelData (file cut right before it) */
    const char *k[] = {"Rows"}, *vv[] = {NULL};
    ML_CHECK_OK(ml_dicom_edit_tags(src, p = tpath("norows.dcm"), 1, k, vv));
    CHECK_READ_FAILS(p, ML_ERR_IO, p, "lacks Rows");
    size_t at = 0;
    for (size_t i = n - 9000; i + 4 < n; i++)
        if (b[i] == 0xE0 && b[i + 1] == 0x7F && b[i + 2] == 0x10 && b[i + 3] == 0x00) at = i;
    ML_CHECK(at > 0);
    write_all(p = tpath("nopixels.dcm"), b, at);
    CHECK_READ_FAILS(p, ML_ERR_IO, p, "lacks PixelData");
    /* unsupported transfer syntax: the J2K file relabelled as JPEG 2000 Part 2 (no decoder) */
    unsigned char *m = malloc(nj);
    memcpy(m, bj, nj);
    for (size_t i = 0; i + 22 < nj; i++)
        if (!memcmp(m + i, "1.2.840.10008.1.2.4.90", 22)) {
            m[i + 21] = '2';
            break;
        }
    write_all(p = tpath("ts92.dcm"), m, nj);
    CHECK_READ_FAILS(p, ML_ERR_UNSUPPORTED, p, "unsupported transfer syntax 1.2.840.10008.1.2.4.92 (JPEG 2000 Part 2");
    /* absurd dims */
    const char *ak[] = {"Rows", "Columns", "NumberOfFrames"}, *av[] = {"65535", "65535", "2000000000"};
    ML_CHECK_OK(ml_dicom_edit_tags(src, p = tpath("absurd.dcm"), 3, ak, av));
    CHECK_READ_FAILS(p, ML_ERR_IO, p, "absurd dims");
    const char *fk[] = {"NumberOfFrames"}, *fv[] = {"3"};
    ML_CHECK_OK(ml_dicom_edit_tags(src, p = tpath("frames3.dcm"), 1, fk, fv));
    CHECK_READ_FAILS(p, ML_ERR_IO, p, "PixelData holds 8192 bytes");
    /* corrupt JPEG 2000 streams: the SIZ marker, the SOC marker */
    size_t soc = 0;
    for (size_t i = 0; i + 4 < nj; i++)
        if (bj[i] == 0xFF && bj[i + 1] == 0x4F && bj[i + 2] == 0xFF && bj[i + 3] == 0x51) {
            soc = i;
            break;
        }
    ML_CHECK(soc > 0);
    memcpy(m, bj, nj);
    m[soc + 4] = 0, m[soc + 5] = 2;
    write_all(p = tpath("j2k_siz.dcm"), m, nj);
    CHECK_READ_FAILS(p, ML_ERR_IO, p, "JPEG 2000 stream corrupt");
    memcpy(m, bj, nj);
    m[soc] = 0, m[soc + 1] = 0;
    write_all(p = tpath("j2k_soc.dcm"), m, nj);
    CHECK_READ_FAILS(p, ML_ERR_IO, p, "JPEG 2000 stream corrupt: no codestream marker");
    free(m);
    /* a color image */
    char col[512];
    snprintf(col, sizeof col, "%s/SC_rgb_small_odd.dcm", DEBIAN);
    if (exists(col)) CHECK_READ_FAILS(col, ML_ERR_UNSUPPORTED, col, "RGB");
    free(b);
    free(bj);
}

/* ====================================================== JPEG 2000 frames decoded in parallel */
static const char *base_name_of(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* offset of the n-th (0-based) JPEG 2000 codestream (SOC SIZ) in b, or 0 */
static size_t nth_codestream(const unsigned char *b, size_t n, int which) {
    for (size_t i = 0; i + 4 < n; i++)
        if (b[i] == 0xFF && b[i + 1] == 0x4F && b[i + 2] == 0xFF && b[i + 3] == 0x51 && which-- == 0) return i;
    return 0;
}

/* Psot of the first tile part after codestream offset soc set far beyond the stream: OpenJPEG fails
 * while decoding (not while reading the main header) */
static bool break_tile_part(unsigned char *b, size_t n, size_t soc) {
    for (size_t i = soc; i + 10 < n; i++)
        if (b[i] == 0xFF && b[i + 1] == 0x90) {
            b[i + 6] = 0x7F, b[i + 7] = 0xFF, b[i + 8] = 0xFF, b[i + 9] = 0xFF;
            return true;
        }
    return false;
}

ML_TEST(j2k_parallel_decode) {
    int saved = ml_num_threads();
    /* thread counts: 1 (one thread), 2 (files / frames in parallel), 8 and 32 (more threads than frames:
     * OpenJPEG's own threads inside each frame) */
    const int nts[] = {1, 2, 8, 32};
    const char *emri = "tests/data/dicom/single/emri_small_jpeg_2k_lossless.dcm";
    ml_volume *ref_ct = NULL, *ref_mf = NULL;
    ml_set_num_threads(1);
    ML_CHECK_OK(ml_dicom_read(&ref_ct, "tests/data/dicom/ct_j2k", NULL));
    ML_CHECK_OK(ml_dicom_read(&ref_mf, emri, NULL));
    const char *one = "tests/data/dicom/ct_j2k/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016574";
    ml_volume *ref_one = NULL;
    ML_CHECK_OK(ml_dicom_read(&ref_one, one, NULL));
    if (!ref_ct || !ref_mf || !ref_one) goto out;
    /* the same pixels for every thread count */
    for (size_t k = 0; k < sizeof nts / sizeof *nts; k++) {
        ml_set_num_threads(nts[k]);
        char what[64];
        ml_volume *v = NULL;
        snprintf(what, sizeof what, "ct_j2k series, %d threads", nts[k]);
        ML_CHECK_OK(ml_dicom_read(&v, "tests/data/dicom/ct_j2k", NULL));
        if (v) expect_same_volume(ref_ct, v, 0, what), ml_volume_release(v), v = NULL;
        snprintf(what, sizeof what, "10-frame file, %d threads", nts[k]);
        ML_CHECK_OK(ml_dicom_read(&v, emri, NULL));
        if (v) expect_same_volume(ref_mf, v, 0, what), ml_volume_release(v), v = NULL;
        snprintf(what, sizeof what, "one slice, %d threads", nts[k]);
        ML_CHECK_OK(ml_dicom_read(&v, one, NULL));
        if (v) expect_same_volume(ref_one, v, 0, what), ml_volume_release(v), v = NULL;
    }
    /* a corrupt frame in the middle: one error naming the file (and frame) and the reason, no output;
     * the leak checker of `make test SAN=1` sees that everything was freed */
    {
        size_t nb = 0, nm = 0;
        unsigned char *b = read_all(one, &nb), *m = read_all(emri, &nm);
        ML_CHECK(b && m);
        if (!b || !m) {
            free(b), free(m);
            goto out;
        }
        size_t soc = nth_codestream(b, nb, 0), soc5 = nth_codestream(m, nm, 5);
        ML_CHECK(soc > 0 && soc5 > 0 && nth_codestream(m, nm, 9) > 0);
        char dir[600], bad[700];
        /* a 3-slice series whose middle slice has a broken tile part (fails inside opj_decode) */
        snprintf(dir, sizeof dir, "%s", tpath("j2k_mid_tile"));
        copy_dir("tests/data/dicom/ct_j2k", dir);
        snprintf(bad, sizeof bad, "%s/%s", dir, base_name_of(one));
        unsigned char *c = malloc(nb);
        memcpy(c, b, nb);
        ML_CHECK(break_tile_part(c, nb, soc));
        write_all(bad, c, nb);
        /* the same series with the middle slice's codestream marker gone (fails on the main header) */
        char dir2[600], bad2[700];
        snprintf(dir2, sizeof dir2, "%s", tpath("j2k_mid_soc"));
        copy_dir("tests/data/dicom/ct_j2k", dir2);
        snprintf(bad2, sizeof bad2, "%s/%s", dir2, base_name_of(one));
        memcpy(c, b, nb);
        c[soc] = 0, c[soc + 1] = 0;
        write_all(bad2, c, nb);
        free(c);
        /* the 10-frame file with frame 5 broken, both ways */
        const char *mf_tile = tpath("emri_frame5_tile.dcm"), *mf_soc = tpath("emri_frame5_soc.dcm");
        c = malloc(nm);
        memcpy(c, m, nm);
        ML_CHECK(break_tile_part(c, nm, soc5));
        write_all(mf_tile, c, nm);
        memcpy(c, m, nm);
        c[soc5] = 0, c[soc5 + 1] = 0;
        write_all(mf_soc, c, nm);
        free(c);
        for (size_t k = 0; k < sizeof nts / sizeof *nts; k++) {
            ml_set_num_threads(nts[k]);
            CHECK_READ_FAILS(dir, ML_ERR_IO, bad, "JPEG 2000 stream corrupt: Tile part length");
            CHECK_READ_FAILS(dir2, ML_ERR_IO, bad2, "JPEG 2000 stream corrupt: no codestream marker");
            CHECK_READ_FAILS(mf_tile, ML_ERR_IO, "emri_frame5_tile.dcm: frame 5",
                             "JPEG 2000 stream corrupt: Tile part length");
            CHECK_READ_FAILS(mf_soc, ML_ERR_IO, "emri_frame5_soc.dcm: frame 5",
                             "JPEG 2000 stream corrupt: no codestream marker");
        }
        free(b);
        free(m);
    }
out:
    ml_set_num_threads(saved);
    ml_volume_release(ref_ct);
    ml_volume_release(ref_mf);
    ml_volume_release(ref_one);
}

ML_TEST(j2k_decoder_direct) {
    int32_t out[16];
    const uint8_t junk[] = {0xFF, 0x4F, 0xFF, 0x51, 0x00, 0x29, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF};
    ml_t_expect_err(ml_j2k_decode(junk, sizeof junk, 4, 4, 0, out, "unit"), ML_ERR_IO, "unit",
                    "JPEG 2000 stream corrupt", "junk codestream");
    ml_t_expect_err(ml_j2k_decode(junk, 2, 4, 4, 0, out, "unit"), ML_ERR_IO, "unit", "too short", "2 bytes");
    /* a real frame, with the wrong expected size */
    ml_dcm_file *f = NULL;
    char err[256];
    ML_CHECK(ml_dcm_open("tests/data/dicom/single/emri_small_jpeg_2k_lossless.dcm", &f, err, sizeof err) == 0);
    if (!f) return;
    uint8_t *bs = NULL;
    size_t bl = 0;
    ML_CHECK(ml_dcm_frame_bitstream(f, 3, 10, &bs, &bl, err, sizeof err) == 0);
    int32_t *buf = malloc(64 * 64 * sizeof *buf);
    ML_CHECK_OK(ml_j2k_decode(bs, bl, 64, 64, 0, buf, "emri frame 3"));
    ml_t_expect_err(ml_j2k_decode(bs, bl, 32, 64, 0, buf, "emri frame 3"), ML_ERR_IO, "emri frame 3",
                    "stream is 64x64 but the header says Columns 32", "wrong dims");
    free(buf);
    free(bs);
    ml_dcm_close(f);
}

/* every corpus file and crasher of fuzz/fuzz_dicom_series.c through the assembler, and of
 * fuzz/fuzz_dicom_file.c through the reader */
ML_TEST(fuzz_regression) {
    const char *dirs[] = {"fuzz/corpus_dicom_series", "fuzz/crashers_dicom_series"};
    int n = 0;
    for (int d = 0; d < 2; d++) {
        DIR *dd = opendir(dirs[d]);
        if (!dd) continue;
        struct dirent *e;
        char p[1024];
        while ((e = readdir(dd))) {
            if (e->d_name[0] == '.') continue;
            snprintf(p, sizeof p, "%s/%s", dirs[d], e->d_name);
            size_t len = 0;
            unsigned char *b = read_all(p, &len);
            if (!b) continue;
            ml_fuzz_dicom_series_one(b, len); /* aborts on a broken plan */
            free(b);
            n++;
        }
        closedir(dd);
    }
    /* inputs of fuzz/fuzz_dicom_file.c are files: read each (errors are fine, crashes are not) */
    const char *fdirs[] = {"fuzz/corpus_dicom_file", "fuzz/crashers_dicom_file"};
    for (int d = 0; d < 2; d++) {
        DIR *dd = opendir(fdirs[d]);
        if (!dd) continue;
        struct dirent *e;
        char p[1024];
        while ((e = readdir(dd))) {
            if (e->d_name[0] == '.') continue;
            snprintf(p, sizeof p, "%s/%s", fdirs[d], e->d_name);
            ml_volume *v = NULL;
            if (ml_dicom_read(&v, p, NULL) == ML_OK) ml_volume_release(v);
            n++;
        }
        closedir(dd);
    }
    ml_set_warn_handler(on_warn, NULL);
    printf("  %d fuzz inputs replayed\n", n);
    ML_CHECK(n >= 6);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/ml_dicom_test_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    ml_set_warn_handler(on_warn, NULL);
    size_t n = 0;
    char *js = (char *)read_all("tests/ref/dicom_ref.json", &n);
    g_ref = js ? cJSON_Parse(js) : NULL;
    free(js);
    if (!g_ref) printf("tests/ref/dicom_ref.json missing or unreadable (run from the repository root)\n");
    ML_RUN(golden_small_series);
    ML_RUN(golden_shared_series_and_dcm2niix);
    ML_RUN(golden_shared_single_files_every_syntax);
    ML_RUN(golden_debian_pydicom_test_files);
    ML_RUN(same_image_every_syntax_identical);
    ML_RUN(mosaic_matches_dcm2niix);
    ML_RUN(mosaic_sources_of_the_tile_count);
    ML_RUN(csa_header_parser);
    ML_RUN(rle_one_bit_segmentation);
    ML_RUN(deflated_files_are_inflated_safely);
    ML_RUN(small_series_meta_and_layout);
    ML_RUN(series_selection_and_listing);
    ML_RUN(assembler_sorts_by_position);
    ML_RUN(assembler_4d_and_incomplete);
    ML_RUN(assembler_instance_number_fallback);
    ML_RUN(assembler_uneven_spacing);
    ML_RUN(assembler_gantry_tilt);
    ML_RUN(assembler_rejects_mixed_series);
    ML_RUN(write_read_roundtrip_real_series);
    ML_RUN(write_read_roundtrip_synthetic);
    ML_RUN(write_errors_leave_nothing);
    ML_RUN(uneven_and_tilt_on_real_files);
    ML_RUN(edit_tags);
    ML_RUN(bad_input);
    ML_RUN(j2k_decoder_direct);
    ML_RUN(j2k_parallel_decode);
    ML_RUN(fuzz_regression);
    cJSON_Delete(g_ref);
    rm_tree(g_dir);
    return ml_test_summary();
}
