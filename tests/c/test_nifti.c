/* NIfTI reader / writer tests (run from the repository root).
 *  - golden: every file in tests/ref/nifti_ref.json (made by tests/ref/gen_nifti_ref.py from nibabel):
 *    shape, affine (1e-4), codes, scaling, sum / min / max / order-weighted sum, 4 voxels; files that
 *    are missing on this machine (../shared/data, Debian's nibabel test data) are counted as skipped
 *  - round trips: every tensor dtype, every output format (.nii .nii.gz .hdr .img, NIfTI-2), strided
 *    tensors, 4-D, dtype conversion on write (rounding, range errors), header fields written (codes,
 *    qform fitted as nibabel's set_qform, qfac, shear kept by the sform only)
 *  - bad input: every kind of broken file gives ML_ERR_IO / ML_ERR_UNSUPPORTED naming the file and the
 *    reason, with no crash and no temporary file left behind
 *  - fuzz/crashers_nifti/ (and the seed corpus): regression inputs (must not crash; any error is fine) */
#include "ml_test.h"
#include "volume/ml_nifti.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <libdeflate.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[64];
static cJSON *g_ref;

static const char *tpath(const char *name) {
    static char ring[8][512];
    static int k;
    char *p = ring[k++ & 7];
    snprintf(p, 512, "%s/%s", g_dir, name);
    return p;
}

static int count_tmp(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

static unsigned char *read_bytes(const char *path, size_t *n) {
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
    if (b) *n = (size_t)sz;
    return b;
}

static void write_bytes(const char *path, const void *b, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        ML_FAIL_("cannot write %s", path);
        return;
    }
    if (n) fwrite(b, 1, n, f);
    fclose(f);
}

static unsigned char *gzip_bytes(const void *b, size_t n, size_t *zn) {
    struct libdeflate_compressor *c = libdeflate_alloc_compressor(6);
    size_t bound = libdeflate_gzip_compress_bound(c, n);
    unsigned char *z = malloc(bound);
    *zn = libdeflate_gzip_compress(c, b, n, z, bound);
    libdeflate_free_compressor(c);
    return z;
}

/* ---------------------------------------------------------------- helpers */
static const double A_OBL[16] = {-1.5, 0.1, 0.0, 30.0, 0.05, 1.2, -0.2, -20.0, 0.0, 0.25, 2.5, 10.0, 0, 0, 0, 1};

/* value at (i, j, k, t) for the test patterns */
static double pattern(int64_t i, int64_t j, int64_t k, int64_t t, ml_dtype dt) {
    int64_t v = (i * 7 + j * 13 + k * 29 + t * 31) % 200 - 50;
    if (dt == ML_U8) return (double)((v + 50) % 256);
    if (dt == ML_BOOL) return (double)((i + j + k + t) % 3 == 0);
    if (dt == ML_I64) return (double)v * 1000003.0;
    if (ml_dtype_is_float(dt)) return (double)v * 0.25;
    return (double)v;
}

/* a C-contiguous tensor [X, Y, Z(, T)] filled with pattern() */
static ml_tensor *pattern_tensor(ml_dtype dt, int nd, const int64_t *shape) {
    ml_tensor *t = NULL;
    if (ml_tensor_empty(&t, dt, nd, shape)) return NULL;
    int64_t idx[4] = {0, 0, 0, 0}, n = ml_tensor_numel(t);
    for (int64_t lin = 0; lin < n; lin++) {
        int64_t r = lin;
        for (int d = nd - 1; d >= 0; d--) {
            idx[d] = r % shape[d];
            r /= shape[d];
        }
        ml_store_elem(ml_tensor_data(t), dt, lin, pattern(idx[0], idx[1], idx[2], nd == 4 ? idx[3] : 0, dt));
    }
    return t;
}

static ml_volume *pattern_volume(ml_dtype dt, int nd, const int64_t *shape, const double *aff) {
    ml_tensor *t = pattern_tensor(dt, nd, shape);
    if (!t) return NULL;
    ml_volume *v = NULL;
    ml_volume_new(&v, t, aff, NULL);
    ml_tensor_release(t);
    return v;
}

/* max |a - b| over all voxels (shapes must match) */
static double vol_maxdiff(const ml_volume *a, const ml_volume *b) { return ml_t_maxdiff(a->data, b->data); }

static double aff_maxdiff(const double *a, const double *b) {
    double m = 0;
    for (int i = 0; i < 16; i++)
        if (fabs(a[i] - b[i]) > m) m = fabs(a[i] - b[i]);
    return m;
}

static bool file_order(const ml_tensor *t) {
    int64_t s = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] > 1 && t->stride[i] != s) return false;
        s *= t->shape[i];
    }
    return true;
}

/* ----------------------------------------------------------------- golden */
static const char *root_dir(const char *root) {
    if (!strcmp(root, "shared")) return "../shared/data";
    if (!strcmp(root, "nibabel")) return "/usr/lib/python3/dist-packages/nibabel/tests/data";
    if (!strcmp(root, "repo")) return "tests/data/nifti";
    return NULL;
}

static double jnum(const cJSON *o, const char *k) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(x) ? x->valuedouble : NAN;
}

static bool near_rel(double a, double b, double tol) { return fabs(a - b) <= tol * fmax(1.0, fabs(b)); }

static void check_golden_entry(const cJSON *f, const char *path, bool deep) {
    ml_volume *v = NULL;
    ml_nifti_read_opts o;
    ml_nifti_read_opts_init(&o);
    o.dtype = ML_NIFTI_OUT_F64;
    ml_err e = ml_nifti_read(&v, path, &o);
    if (e) {
        ML_FAIL_("%s: %s", path, ml_errmsg());
        return;
    }
    ml_tensor *t = v->data;
    /* shape: nibabel's, with < 3 dims padded by 1 and trailing 1s beyond the 4th dropped */
    const cJSON *jshape = cJSON_GetObjectItemCaseSensitive(f, "shape");
    int gn = cJSON_GetArraySize(jshape);
    int64_t gs[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    for (int i = 0; i < gn && i < 8; i++) gs[i] = (int64_t)cJSON_GetArrayItem(jshape, i)->valuedouble;
    int want_nd = gn <= 3 ? 3 : 4;
    bool shape_ok = t->ndim == want_nd;
    for (int i = 0; i < t->ndim && shape_ok; i++) shape_ok = t->shape[i] == gs[i];
    for (int i = 4; i < gn; i++) shape_ok = shape_ok && gs[i] == 1;
    if (!shape_ok) {
        ML_FAIL_("%s: shape %s, nibabel has %d dims starting %lld %lld %lld", path, ml_shape_str(t->ndim, t->shape),
                 gn, (long long)gs[0], (long long)gs[1], (long long)gs[2]);
        ml_volume_release(v);
        return;
    }
    if (!file_order(t)) ML_FAIL_("%s: data not in the file's order: strides %s", path, ml_shape_str(t->ndim, t->stride));
    /* affine */
    double ga[16];
    const cJSON *ja = cJSON_GetObjectItemCaseSensitive(f, "affine");
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++) ga[r * 4 + c] = cJSON_GetArrayItem(cJSON_GetArrayItem(ja, r), c)->valuedouble;
    double ad = aff_maxdiff(v->affine, ga);
    if (!(ad <= 1e-4)) ML_FAIL_("%s: affine differs from nibabel's by %g", path, ad);
    if (v->meta.qform_code != (int)jnum(f, "qform_code") || v->meta.sform_code != (int)jnum(f, "sform_code"))
        ML_FAIL_("%s: codes q%d s%d, nibabel q%d s%d", path, v->meta.qform_code, v->meta.sform_code,
                 (int)jnum(f, "qform_code"), (int)jnum(f, "sform_code"));
    if (!near_rel(v->meta.rescale_slope, jnum(f, "slope"), 1e-12) ||
        !near_rel(v->meta.rescale_intercept, jnum(f, "inter"), 1e-12))
        ML_FAIL_("%s: scaling %g %g, nibabel %g %g", path, v->meta.rescale_slope, v->meta.rescale_intercept,
                 jnum(f, "slope"), jnum(f, "inter"));
    /* stats in file order */
    const double *d = (const double *)ml_tensor_data(t);
    int64_t n = ml_tensor_numel(t);
    double sum = 0, wsum = 0, mn = INFINITY, mx = -INFINITY;
    int64_t nans = 0;
    for (int64_t i = 0; i < n; i++) {
        double x = d[i];
        if (isnan(x)) {
            nans++;
            continue;
        }
        sum += x;
        wsum += x * (double)(i % 13 - 6);
        if (x < mn) mn = x;
        if (x > mx) mx = x;
    }
    double scale = fmax(fabs(mn), fabs(mx));
    double tol = 1e-12 * (double)n * scale + 1e-9;
    if (!(fabs(sum - jnum(f, "sum")) <= tol + 1e-9 * fabs(jnum(f, "sum"))))
        ML_FAIL_("%s: sum %.17g, nibabel %.17g", path, sum, jnum(f, "sum"));
    if (!(fabs(wsum - jnum(f, "wsum")) <= 6 * tol + 1e-9 * fabs(jnum(f, "wsum"))))
        ML_FAIL_("%s: weighted sum %.17g, nibabel %.17g (voxel order?)", path, wsum, jnum(f, "wsum"));
    if (nans != (int64_t)jnum(f, "nan_count"))
        ML_FAIL_("%s: %lld NaN voxels, nibabel %g", path, (long long)nans, jnum(f, "nan_count"));
    if (nans < n && (mn != jnum(f, "min") || mx != jnum(f, "max")))
        ML_FAIL_("%s: min/max %.17g %.17g, nibabel %.17g %.17g", path, mn, mx, jnum(f, "min"), jnum(f, "max"));
    const cJSON *jv;
    cJSON_ArrayForEach(jv, cJSON_GetObjectItemCaseSensitive(f, "voxels")) {
        const cJSON *ji = cJSON_GetArrayItem(jv, 0);
        int64_t idx[4] = {0, 0, 0, 0};
        for (int i = 0; i < cJSON_GetArraySize(ji) && i < 4; i++) idx[i] = (int64_t)cJSON_GetArrayItem(ji, i)->valuedouble;
        const cJSON *jw = cJSON_GetArrayItem(jv, 1);
        double want = cJSON_IsNumber(jw) ? jw->valuedouble : NAN, got = ml_tensor_get(t, idx);
        if (!(near_rel(got, want, 1e-12) || (isnan(got) && isnan(want))))
            ML_FAIL_("%s: voxel (%lld, %lld, %lld, %lld) = %.17g, nibabel %.17g", path, (long long)idx[0],
                     (long long)idx[1], (long long)idx[2], (long long)idx[3], got, want);
    }
    if (deep) {
        /* float32 (default) agrees with float64 rounded; native keeps or widens the file's type */
        ml_volume *v32 = NULL, *vn = NULL;
        ML_CHECK_OK(ml_nifti_read(&v32, path, NULL));
        o.dtype = ML_NIFTI_OUT_NATIVE;
        ML_CHECK_OK(ml_nifti_read(&vn, path, &o));
        if (v32 && vn) {
            ML_CHECK(v32->data->dtype == ML_F32);
            double md = 0;
            const float *f32 = ml_tensor_data(v32->data);
            for (int64_t i = 0; i < n; i++) {
                double dd = fabs((double)f32[i] - (double)(float)d[i]);
                if (dd > md || (isnan(f32[i]) != isnan(d[i]))) md = fmax(md, isnan(dd) ? INFINITY : dd);
            }
            if (md != 0) ML_FAIL_("%s: float32 read differs from (float)float64 read by %g", path, md);
            const char *gdt = cJSON_GetObjectItemCaseSensitive(f, "dtype")->valuestring;
            bool scaled = v->meta.rescale_slope != 1 || v->meta.rescale_intercept != 0;
            ml_dtype want;
            if (scaled) want = !strcmp(gdt, "float64") ? ML_F64 : ML_F32;
            else if (!strcmp(gdt, "uint8")) want = ML_U8;
            else if (!strcmp(gdt, "uint32") || !strcmp(gdt, "int64") || !strcmp(gdt, "uint64")) want = ML_I64;
            else if (!strcmp(gdt, "float32")) want = ML_F32;
            else if (!strcmp(gdt, "float64")) want = ML_F64;
            else want = ML_I32;
            if (vn->data->dtype != (int8_t)want)
                ML_FAIL_("%s: native read gives %s for %s%s, expected %s", path, ml_dtype_name((ml_dtype)vn->data->dtype),
                         gdt, scaled ? " (scaled)" : "", ml_dtype_name(want));
            double nd = vol_maxdiff(vn, v);
            if (!(nd <= (want == ML_F32 ? 1e-6 * fmax(1, scale) : 0)))
                ML_FAIL_("%s: native read differs from float64 by %g", path, nd);
            bool is_int = strncmp(gdt, "float", 5) != 0;
            if (vn->meta.is_label != (is_int && !scaled)) ML_FAIL_("%s: is_label %d", path, vn->meta.is_label);
        }
        ml_volume_release(v32);
        ml_volume_release(vn);
    }
    ml_volume_release(v);
}

static void run_golden(const char *root, bool deep) {
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(g_ref, "files"), *f;
    int checked = 0, missing = 0;
    cJSON_ArrayForEach(f, files) {
        const char *r = cJSON_GetObjectItemCaseSensitive(f, "root")->valuestring;
        if (strcmp(r, root)) continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", root_dir(r), cJSON_GetObjectItemCaseSensitive(f, "path")->valuestring);
        if (!exists(path)) {
            missing++;
            continue;
        }
        checked++;
        check_golden_entry(f, path, deep);
    }
    printf("  golden %s: %d files compared with nibabel%s", root, checked, missing ? "" : "\n");
    if (missing) printf(", skipped: %d missing on this machine (%s)\n", missing, root_dir(root));
}

ML_TEST(golden_repo_files) { run_golden("repo", true); }
ML_TEST(golden_shared_data) { run_golden("shared", false); }
ML_TEST(golden_nibabel_test_data) { run_golden("nibabel", true); }

/* ------------------------------------------------------------- round trips */
static void roundtrip_one(ml_dtype dt, const char *name, bool nifti2, int nd) {
    int64_t shape[4] = {6, 5, 4, 3};
    ml_volume *v = pattern_volume(dt, nd, shape, A_OBL), *r = NULL;
    if (!v) {
        ML_FAIL_("volume");
        return;
    }
    ml_nifti_write_opts wo;
    ml_nifti_write_opts_init(&wo);
    wo.nifti2 = nifti2;
    const char *p = tpath(name);
    ML_CHECK_OK(ml_nifti_write(v, p, &wo));
    ml_nifti_read_opts ro;
    ml_nifti_read_opts_init(&ro);
    ro.dtype = ML_NIFTI_OUT_NATIVE;
    ML_CHECK_OK(ml_nifti_read(&r, p, &ro));
    if (r) {
        ml_dtype want = dt == ML_BOOL ? ML_U8 : (dt == ML_F16 || dt == ML_BF16) ? ML_F32 : dt;
        if (r->data->dtype != (int8_t)want)
            ML_FAIL_("%s: %s came back as %s", name, ml_dtype_name(dt), ml_dtype_name((ml_dtype)r->data->dtype));
        double md = vol_maxdiff(r, v);
        if (md != 0) ML_FAIL_("%s (%s): values differ by %g", name, ml_dtype_name(dt), md);
        double ad = aff_maxdiff(r->affine, A_OBL);
        if (!(ad <= (nifti2 ? 1e-12 : 1e-5))) ML_FAIL_("%s: affine differs by %g", name, ad);
        ML_CHECK(r->meta.qform_code == 1 && r->meta.sform_code == 1);
        ML_CHECK(r->meta.is_label == !ml_dtype_is_float(want));
        ML_CHECK(file_order(r->data));
    }
    ml_volume_release(r);
    ml_volume_release(v);
}

ML_TEST(roundtrip_dtypes_and_formats) {
    const ml_dtype dts[] = {ML_U8, ML_I32, ML_I64, ML_F32, ML_F64, ML_BOOL, ML_F16, ML_BF16};
    const char *names[] = {"rt.nii", "rt.nii.gz", "rt.hdr", "rt2.img", "rt_n2.nii", "rt_n2.nii.gz", "rt_n2.hdr"};
    for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++)
        for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
            for (int nd = 3; nd <= 4; nd++) roundtrip_one(dts[d], names[k], strstr(names[k], "n2") != NULL, nd);
    ML_CHECK(exists(tpath("rt.img")) && exists(tpath("rt2.hdr")));
    ml_nifti_info in;
    ML_CHECK_OK(ml_nifti_read_info(&in, tpath("rt_n2.nii.gz")));
    ML_CHECK(in.version == 2 && in.single_file && in.vox_offset == 544);
    ML_CHECK_OK(ml_nifti_read_info(&in, tpath("rt.hdr")));
    ML_CHECK(in.version == 1 && !in.single_file && in.vox_offset == 0);
    ML_CHECK_OK(ml_nifti_read_info(&in, tpath("rt.nii")));
    ML_CHECK(in.version == 1 && in.single_file && in.vox_offset == 352);
    ML_CHECK(count_tmp(g_dir) == 0);
}

ML_TEST(strided_tensors_are_written_in_voxel_order) {
    /* permuted, sliced and file-order tensors all give the same file contents */
    int64_t shape[3] = {5, 4, 6};
    ml_tensor *c = pattern_tensor(ML_F32, 3, shape), *perm = NULL, *cont = NULL, *back = NULL, *sl = NULL;
    int p[3] = {2, 1, 0};
    ML_CHECK_OK(ml_permute(&perm, c, p));          /* [6, 4, 5] view */
    ML_CHECK_OK(ml_contiguous(&cont, perm));       /* C-contiguous [6, 4, 5] */
    ML_CHECK_OK(ml_permute(&back, cont, p));       /* [5, 4, 6] with file-order strides */
    ML_CHECK_OK(ml_slice(&sl, c, 2, 1, 6, 2));     /* [5, 4, 3], strided */
    ml_volume *vc = NULL, *vb = NULL, *vs = NULL, *rc = NULL, *rb = NULL, *rs = NULL;
    ML_CHECK_OK(ml_volume_new(&vc, c, A_OBL, NULL));
    ML_CHECK_OK(ml_volume_new(&vb, back, A_OBL, NULL));
    ML_CHECK_OK(ml_volume_new(&vs, sl, A_OBL, NULL));
    ML_CHECK(file_order(back));
    ML_CHECK_OK(ml_nifti_write(vc, tpath("c.nii"), NULL));
    ML_CHECK_OK(ml_nifti_write(vb, tpath("b.nii"), NULL));
    ML_CHECK_OK(ml_nifti_write(vs, tpath("s.nii.gz"), NULL));
    ML_CHECK_OK(ml_nifti_read(&rc, tpath("c.nii"), NULL));
    ML_CHECK_OK(ml_nifti_read(&rb, tpath("b.nii"), NULL));
    ML_CHECK_OK(ml_nifti_read(&rs, tpath("s.nii.gz"), NULL));
    if (rc && rb && rs) {
        ML_CHECK(vol_maxdiff(rc, vc) == 0);
        ML_CHECK(vol_maxdiff(rb, vc) == 0);
        ML_CHECK(vol_maxdiff(rs, vs) == 0);
        size_t n1, n2;
        unsigned char *b1 = read_bytes(tpath("c.nii"), &n1), *b2 = read_bytes(tpath("b.nii"), &n2);
        ML_CHECK(b1 && b2 && n1 == n2 && memcmp(b1, b2, n1) == 0);
        ML_CHECK(n1 == 352 + 5 * 4 * 6 * 4);
        /* voxel (i, j, k) sits at byte 352 + 4 * (i + 5 * (j + 4 * k)) */
        if (b1 && n1 == 352 + 480) {
            float x;
            memcpy(&x, b1 + 352 + 4 * (3 + 5 * (2 + 4 * 1)), 4);
            ML_CHECK(x == (float)pattern(3, 2, 1, 0, ML_F32));
        }
        free(b1);
        free(b2);
    }
    ml_volume_release(vc);
    ml_volume_release(vb);
    ml_volume_release(vs);
    ml_volume_release(rc);
    ml_volume_release(rb);
    ml_volume_release(rs);
    ml_tensor_release(c);
    ml_tensor_release(perm);
    ml_tensor_release(cont);
    ml_tensor_release(back);
    ml_tensor_release(sl);
}

ML_TEST(write_dtype_option_converts_and_checks_range) {
    int64_t shape[3] = {4, 3, 2};
    ml_tensor *t = NULL;
    ML_CHECK_OK(ml_tensor_empty(&t, ML_F32, 3, shape));
    float *d = ml_tensor_data(t);
    for (int i = 0; i < 24; i++) d[i] = (float)(i * 10.4 - 100);
    ml_volume *v = NULL, *r = NULL;
    ML_CHECK_OK(ml_volume_new(&v, t, A_OBL, NULL));
    ml_nifti_write_opts o;
    ml_nifti_write_opts_init(&o);
    static const int codes[] = {ML_NIFTI_DT_INT16, ML_NIFTI_DT_INT32, ML_NIFTI_DT_INT64, ML_NIFTI_DT_FLOAT64};
    for (size_t c = 0; c < sizeof codes / sizeof codes[0]; c++) {
        o.datatype = codes[c];
        ML_CHECK_OK(ml_nifti_write(v, tpath("conv.nii.gz"), &o));
        ml_nifti_info in;
        ML_CHECK_OK(ml_nifti_read_info(&in, tpath("conv.nii.gz")));
        ML_CHECK(in.datatype == codes[c]);
        ML_CHECK_OK(ml_nifti_read(&r, tpath("conv.nii.gz"), NULL));
        if (r) {
            int64_t idx[3] = {0, 0, 0};
            for (int i = 0; i < 24; i++) {
                idx[0] = (i / 6);
                idx[1] = (i / 2) % 3;
                idx[2] = i % 2;
                double want = ml_tensor_get(t, idx);
                if (codes[c] != ML_NIFTI_DT_FLOAT64) want = nearbyint(want);
                if (ml_tensor_get(r->data, idx) != want)
                    ML_FAIL_("%s: voxel %d = %g, expected %g", ml_nifti_datatype_name(codes[c]), i,
                             ml_tensor_get(r->data, idx), want);
            }
        }
        ml_volume_release(r);
        r = NULL;
    }
    /* out of range, NaN: errors naming the file and the value; nothing written */
    o.datatype = ML_NIFTI_DT_UINT8;
    ml_t_expect_err(ml_nifti_write(v, tpath("u8.nii"), &o), ML_ERR_ARG, "u8.nii", "does not fit uint8", "u8 range");
    ML_CHECK(!exists(tpath("u8.nii")));
    d[5] = NAN;
    o.datatype = ML_NIFTI_DT_INT16;
    ml_t_expect_err(ml_nifti_write(v, tpath("nan.nii.gz"), &o), ML_ERR_ARG, "nan.nii.gz", "NaN", "nan to int16");
    ML_CHECK(!exists(tpath("nan.nii.gz")));
    d[5] = 1e30f;
    ml_t_expect_err(ml_nifti_write(v, tpath("big.nii"), &o), ML_ERR_ARG, "big.nii", "int16", "1e30 to int16");
    /* int64 source: exact to int64, range-checked to uint16 */
    ml_tensor *ti = NULL;
    ML_CHECK_OK(ml_tensor_empty(&ti, ML_I64, 3, shape));
    int64_t *di = ml_tensor_data(ti);
    for (int i = 0; i < 24; i++) di[i] = (int64_t)i * 2000;
    ml_volume *vi = NULL;
    ML_CHECK_OK(ml_volume_new(&vi, ti, NULL, NULL));
    o.datatype = ML_NIFTI_DT_UINT16;
    ML_CHECK_OK(ml_nifti_write(vi, tpath("u16.nii"), &o));
    di[23] = 70000;
    ml_t_expect_err(ml_nifti_write(vi, tpath("u16b.nii"), &o), ML_ERR_ARG, "70000", "uint16", "int64 to u16");
    di[23] = (int64_t)1 << 60;
    o.datatype = 0;
    ML_CHECK_OK(ml_nifti_write(vi, tpath("i64.nii"), &o));
    ML_CHECK_OK(ml_nifti_read(&r, tpath("i64.nii"), &(ml_nifti_read_opts){ML_NIFTI_OUT_NATIVE}));
    if (r) ML_CHECK(r->data->dtype == ML_I64);
    if (r) {
        int64_t idx[3] = {3, 2, 1};
        ML_CHECK(ml_tensor_get(r->data, idx) == (double)((int64_t)1 << 60));
    }
    ml_volume_release(r);
    ML_CHECK(count_tmp(g_dir) == 0);
    ml_volume_release(vi);
    ml_tensor_release(ti);
    ml_volume_release(v);
    ml_tensor_release(t);
}

ML_TEST(written_header_fields) {
    int64_t shape[3] = {4, 4, 4};
    /* left-handed oblique affine (qfac -1), custom codes, description, window */
    double L[16] = {0.0, 0.0, -2.0, 40.0, -1.5, 0.0, 0.0, 10.0, 0.0, -1.2, 0.0, -5.0, 0, 0, 0, 1};
    ml_volume *v = pattern_volume(ML_I32, 3, shape, L), *r = NULL;
    v->meta.qform_code = 2;
    v->meta.sform_code = 4;
    snprintf(v->meta.description, sizeof v->meta.description, "medlua test volume");
    v->meta.has_window = true;
    v->meta.window_center = 40;
    v->meta.window_width = 400;
    ML_CHECK_OK(ml_nifti_write(v, tpath("hdr.nii"), NULL));
    ml_nifti_info in;
    ML_CHECK_OK(ml_nifti_read_info(&in, tpath("hdr.nii")));
    ML_CHECK(in.qform_code == 2 && in.sform_code == 4);
    ML_CHECK(in.pixdim[0] == -1);
    ML_CHECK_NEAR(in.pixdim[1], 1.5, 1e-6);
    ML_CHECK_NEAR(in.pixdim[2], 1.2, 1e-6);
    ML_CHECK_NEAR(in.pixdim[3], 2.0, 1e-6);
    ML_CHECK(!strcmp(in.descrip, "medlua test volume"));
    ML_CHECK(in.cal_min == -160 && in.cal_max == 240);
    ML_CHECK(in.datatype == ML_NIFTI_DT_INT32 && in.bitpix == 32);
    ML_CHECK(in.xyzt_units == 2);
    ML_CHECK(aff_maxdiff(in.qform, L) < 1e-6);
    ML_CHECK(aff_maxdiff(in.sform, L) < 1e-6);
    ML_CHECK_OK(ml_nifti_read(&r, tpath("hdr.nii"), NULL));
    if (r) {
        ML_CHECK(!strcmp(r->meta.description, "medlua test volume"));
        ML_CHECK(r->meta.has_window && r->meta.window_center == 40 && r->meta.window_width == 400);
        ML_CHECK(r->meta.qform_code == 2 && r->meta.sform_code == 4);
    }
    ml_volume_release(r);
    ml_volume_release(v);

    /* shear: the sform keeps it exactly, the qform holds the closest rotation with the column norms */
    double S[16];
    memcpy(S, A_OBL, sizeof S);
    S[2] = 0.6;
    v = pattern_volume(ML_F32, 3, shape, S);
    ml_nifti_write_opts o;
    ml_nifti_write_opts_init(&o);
    o.nifti2 = true;
    ML_CHECK_OK(ml_nifti_write(v, tpath("shear.nii"), &o));
    ML_CHECK_OK(ml_nifti_read_info(&in, tpath("shear.nii")));
    ML_CHECK(aff_maxdiff(in.sform, S) == 0);
    double pd[4], q[3], off[3], Q[16];
    ml_nifti_affine_to_qform(S, pd, q, off);
    ml_nifti_qform_to_affine(pd, q, off, Q);
    ML_CHECK(aff_maxdiff(in.qform, Q) < 1e-12);
    for (int c = 0; c < 3; c++) { /* column norms kept, columns orthogonal */
        double n = 0, ns = 0;
        for (int r2 = 0; r2 < 3; r2++) {
            n += Q[r2 * 4 + c] * Q[r2 * 4 + c];
            ns += S[r2 * 4 + c] * S[r2 * 4 + c];
        }
        ML_CHECK_NEAR(sqrt(n), sqrt(ns), 1e-12);
        double dot = 0;
        for (int r2 = 0; r2 < 3; r2++) dot += Q[r2 * 4 + c] * Q[r2 * 4 + (c + 1) % 3];
        ML_CHECK_NEAR(dot, 0, 1e-12);
    }
    ml_volume_release(v);

    /* qform of an unsheared affine reproduces it (every one of the 48 axis permutations / flips) */
    int perms[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
    double worst = 0;
    for (int pi = 0; pi < 6; pi++)
        for (int s = 0; s < 8; s++) {
            double M[16] = {0};
            M[15] = 1;
            for (int c = 0; c < 3; c++) {
                int row = perms[pi][c];
                M[row * 4 + c] = ((s >> c) & 1 ? -1 : 1) * (1.0 + 0.5 * c);
                M[c * 4 + 3] = 10.0 * c - 7;
            }
            ml_nifti_affine_to_qform(M, pd, q, off);
            ml_nifti_qform_to_affine(pd, q, off, Q);
            double dd = aff_maxdiff(Q, M);
            if (dd > worst) worst = dd;
        }
    ML_CHECK(worst < 1e-12);
    /* a big dim switches to NIfTI-2 */
    int64_t wide[3] = {40000, 1, 1};
    v = pattern_volume(ML_U8, 3, wide, NULL);
    ML_CHECK_OK(ml_nifti_write(v, tpath("wide.nii.gz"), NULL));
    ML_CHECK_OK(ml_nifti_read_info(&in, tpath("wide.nii.gz")));
    ML_CHECK(in.version == 2 && in.dim[1] == 40000);
    ML_CHECK_OK(ml_nifti_read(&r, tpath("wide.nii.gz"), NULL));
    if (r) ML_CHECK(r->data->shape[0] == 40000 && vol_maxdiff(r, v) == 0);
    ml_volume_release(r);
    ml_volume_release(v);
}

ML_TEST(large_gzip_parallel_members_and_fast_paths) {
    /* > 32 MiB payload: written as several gzip members; read back through libdeflate */
    int64_t shape[3] = {256, 256, 80}; /* 5.2M voxels, f64 -> 42 MB */
    ml_volume *v = pattern_volume(ML_F64, 3, shape, A_OBL), *r = NULL, *r32 = NULL;
    ML_CHECK_OK(ml_nifti_write(v, tpath("big.nii.gz"), NULL));
    ML_CHECK_OK(ml_nifti_read(&r, tpath("big.nii.gz"), &(ml_nifti_read_opts){ML_NIFTI_OUT_NATIVE}));
    if (r) {
        ML_CHECK(vol_maxdiff(r, v) == 0);
        /* in place: the tensor sits in the decompression buffer right after the header */
        ML_CHECK(r->data->offset == 352 / 8);
    }
    ML_CHECK_OK(ml_nifti_read(&r32, tpath("big.nii.gz"), NULL));
    if (r32) ML_CHECK(r32->data->dtype == ML_F32 && ml_t_maxdiff(r32->data, v->data) == 0);
    size_t zn = 0;
    unsigned char *z = read_bytes(tpath("big.nii.gz"), &zn);
    int members = 0;
    for (size_t i = 0; z && i + 3 < zn; i++) /* gzip member headers written by libdeflate: 1f 8b 08 00 */
        if (z[i] == 0x1f && z[i + 1] == 0x8b && z[i + 2] == 8 && z[i + 3] == 0) members++;
    if (ml_num_threads() > 1) ML_CHECK(members >= 3);
    free(z);
    ml_volume_release(r);
    ml_volume_release(r32);
    ml_volume_release(v);
}

/* ------------------------------------------------------------- bad input */
/* a valid small single-file image as bytes */
static unsigned char *good_nii(size_t *n, bool nifti2) {
    int64_t shape[3] = {4, 3, 2};
    ml_volume *v = pattern_volume(ML_I32, 3, shape, A_OBL);
    ml_nifti_write_opts o;
    ml_nifti_write_opts_init(&o);
    o.nifti2 = nifti2;
    const char *p = tpath(nifti2 ? "good2.nii" : "good.nii");
    ml_nifti_write(v, p, &o);
    ml_volume_release(v);
    return read_bytes(p, n);
}

static void put16(unsigned char *b, size_t off, int v) {
    int16_t x = (int16_t)v;
    memcpy(b + off, &x, 2);
}
static void put32(unsigned char *b, size_t off, int32_t v) { memcpy(b + off, &v, 4); }
static void putf(unsigned char *b, size_t off, float v) { memcpy(b + off, &v, 4); }

/* write bytes as <name> (and gzipped as <name>.gz when gz), read, expect an error mentioning need */
static void expect_bad(const char *name, const unsigned char *b, size_t n, ml_err code, const char *need, bool gz) {
    const char *p = tpath(name);
    write_bytes(p, b, n);
    ml_volume *v = NULL;
    ml_t_expect_err(ml_nifti_read(&v, p, NULL), code, p, need, name);
    ML_CHECK(v == NULL);
    ml_volume_release(v);
    /* the in-memory reader agrees */
    ML_CHECK(ml_nifti_read_mem(&v, b, n, name, NULL) == code);
    ml_volume_release(v);
    v = NULL;
    if (gz) {
        char gname[256];
        snprintf(gname, sizeof gname, "%s.gz", name);
        size_t zn;
        unsigned char *z = gzip_bytes(b, n, &zn);
        const char *gp = tpath(gname);
        write_bytes(gp, z, zn);
        free(z);
        ml_t_expect_err(ml_nifti_read(&v, gp, NULL), code, gp, need, gname);
        ml_volume_release(v);
    }
}

ML_TEST(bad_files) {
    size_t n, n2;
    unsigned char *g = good_nii(&n, false), *g2 = good_nii(&n2, true);
    if (!g || !g2) {
        ML_FAIL_("no good file");
        return;
    }
    unsigned char *b = malloc((n > n2 ? n : n2) + 64);
    ml_volume *v = NULL;
    /* sanity: the good one reads, from a file and from memory */
    ML_CHECK_OK(ml_nifti_read_mem(&v, g, n, "good", NULL));
    ml_volume_release(v);
    v = NULL;

    expect_bad("trunc_hdr.nii", g, 200, ML_ERR_IO, "truncated header", true);
    expect_bad("trunc_hdr2.nii", g2, 300, ML_ERR_IO, "truncated header", true);
    expect_bad("empty.nii", g, 0, ML_ERR_IO, "truncated header", false);
    expect_bad("trunc_data.nii", g, n - 10, ML_ERR_IO, "truncated", true);
    memcpy(b, g, n);
    memcpy(b + 344, "abc", 4);
    expect_bad("magic.nii", b, n, ML_ERR_IO, "magic", true);
    memcpy(b, g, n);
    memset(b + 344, 0, 4);
    expect_bad("analyze.nii", b, n, ML_ERR_IO, "Analyze", false);
    memcpy(b, g, n);
    put32(b, 0, 349);
    expect_bad("sizeof.nii", b, n, ML_ERR_IO, "sizeof_hdr is 349", true);
    memcpy(b, g, n);
    put16(b, 42, -5);
    expect_bad("negdim.nii", b, n, ML_ERR_IO, "dim[1] = -5", true);
    memcpy(b, g, n);
    put16(b, 44, 0);
    expect_bad("zerodim.nii", b, n, ML_ERR_IO, "dim[2] = 0", false);
    memcpy(b, g, n);
    put16(b, 40, 0);
    expect_bad("dim0.nii", b, n, ML_ERR_IO, "dim[0] = 0", false);
    memcpy(b, g, n);
    put16(b, 40, 9);
    expect_bad("dim0_9.nii", b, n, ML_ERR_IO, "dim[0] = 9", false);
    /* 2^40 voxels: 32767^2 * 1024 in NIfTI-1 / explicit in NIfTI-2 */
    memcpy(b, g, n);
    put16(b, 40, 4);
    put16(b, 42, 32767);
    put16(b, 44, 32767);
    put16(b, 46, 1024);
    put16(b, 48, 1);
    expect_bad("huge.nii", b, n, ML_ERR_IO, "truncated", true);
    memcpy(b, g2, n2);
    int64_t big = (int64_t)1 << 40;
    memcpy(b + 16 + 8, &big, 8);
    expect_bad("huge2.nii", b, n2, ML_ERR_IO, "truncated", true);
    memcpy(b, g2, n2);
    big = (int64_t)1 << 50;
    memcpy(b + 16 + 8, &big, 8);
    memcpy(b + 16 + 16, &big, 8);
    expect_bad("overflow2.nii", b, n2, ML_ERR_IO, "2^62", false);
    /* datatypes */
    memcpy(b, g, n);
    put16(b, 70, 99);
    expect_bad("dtype.nii", b, n, ML_ERR_IO, "unknown datatype 99", true);
    memcpy(b, g, n);
    put16(b, 70, 32);
    expect_bad("complex.nii", b, n, ML_ERR_UNSUPPORTED, "complex64", false);
    memcpy(b, g, n);
    put16(b, 70, 128);
    expect_bad("rgb.nii", b, n, ML_ERR_UNSUPPORTED, "RGB24", false);
    /* 5-D with a real 5th dim */
    memcpy(b, g, n);
    put16(b, 40, 5);
    put16(b, 48, 1);
    put16(b, 50, 3);
    expect_bad("fived.nii", b, n, ML_ERR_UNSUPPORTED, "dim[5] = 3", false);
    /* vox_offset */
    memcpy(b, g, n);
    putf(b, 108, 100);
    expect_bad("voxoff.nii", b, n, ML_ERR_IO, "inside the header", false);
    memcpy(b, g, n);
    putf(b, 108, 1e9f);
    expect_bad("voxoff_far.nii", b, n, ML_ERR_IO, "truncated", false);
    memcpy(b, g, n);
    putf(b, 108, NAN);
    expect_bad("voxoff_nan.nii", b, n, ML_ERR_IO, "vox_offset", false);
    /* scaling with an invalid intercept (nibabel refuses too) */
    memcpy(b, g, n);
    putf(b, 112, 2);
    putf(b, 116, INFINITY);
    expect_bad("inter.nii", b, n, ML_ERR_IO, "scl_inter", false);
    /* non-finite sform */
    memcpy(b, g, n);
    putf(b, 280, NAN);
    expect_bad("sform_nan.nii", b, n, ML_ERR_IO, "sform", false);
    /* NIfTI-2 magic */
    memcpy(b, g2, n2);
    b[7] = 'x';
    expect_bad("magic2.nii", b, n2, ML_ERR_IO, "magic", false);
    /* gzip: corrupt stream, cut stream */
    size_t zn;
    unsigned char *z = gzip_bytes(g, n, &zn);
    unsigned char *zc = malloc(zn);
    memcpy(zc, z, zn);
    for (size_t i = 20; i < zn - 8; i += 3) zc[i] ^= 0x5a;
    const char *p = tpath("corrupt.nii.gz");
    write_bytes(p, zc, zn);
    ml_t_expect_err(ml_nifti_read(&v, p, NULL), ML_ERR_IO, p, "corrupt", "corrupt gzip");
    ML_CHECK(ml_nifti_read_mem(&v, zc, zn, "corrupt", NULL) == ML_ERR_IO);
    p = tpath("cut.nii.gz");
    write_bytes(p, z, zn / 2);
    ml_err e = ml_nifti_read(&v, p, NULL);
    ML_CHECK(e == ML_ERR_IO && strstr(ml_errmsg(), "cut.nii.gz") &&
             (strstr(ml_errmsg(), "truncated") || strstr(ml_errmsg(), "corrupt")));
    p = tpath("gzhead.nii.gz");
    write_bytes(p, z, 5);
    ml_t_expect_err(ml_nifti_read(&v, p, NULL), ML_ERR_IO, p, "truncated header", "gzip header only");
    /* lenient: a wrong ISIZE trailer, trailing garbage, two members */
    memcpy(zc, z, zn);
    zc[zn - 1] ^= 0xff;
    p = tpath("isize.nii.gz");
    write_bytes(p, zc, zn);
    ML_CHECK_OK(ml_nifti_read(&v, p, NULL));
    ml_volume_release(v);
    v = NULL;
    unsigned char *zz = malloc(2 * zn + 16);
    memcpy(zz, z, zn);
    memset(zz + zn, 0, 16);
    p = tpath("garbage.nii.gz");
    write_bytes(p, zz, zn + 16);
    ML_CHECK_OK(ml_nifti_read(&v, p, NULL));
    ml_volume_release(v);
    v = NULL;
    size_t za, zb2;
    unsigned char *m1 = gzip_bytes(g, 100, &za), *m2 = gzip_bytes(g + 100, n - 100, &zb2);
    memcpy(zz, m1, za);
    memcpy(zz + za, m2, zb2);
    p = tpath("two.nii.gz");
    write_bytes(p, zz, za + zb2);
    ml_volume *v1 = NULL;
    ML_CHECK_OK(ml_nifti_read(&v, p, NULL));
    ML_CHECK_OK(ml_nifti_read_mem(&v1, g, n, "good", NULL));
    if (v && v1) ML_CHECK(vol_maxdiff(v, v1) == 0);
    ml_volume_release(v);
    ml_volume_release(v1);
    v = NULL;
    free(m1);
    free(m2);
    free(zz);
    free(zc);
    free(z);
    /* files that are not there or not files */
    p = tpath("nope.nii.gz");
    ml_t_expect_err(ml_nifti_read(&v, p, NULL), ML_ERR_IO, p, "No such file", "missing");
    mkdir(tpath("adir.nii"), 0755);
    ml_t_expect_err(ml_nifti_read(&v, tpath("adir.nii"), NULL), ML_ERR_IO, "adir.nii", "directory", "directory");
    ml_nifti_info in;
    ml_t_expect_err(ml_nifti_read_info(&in, tpath("adir.nii")), ML_ERR_IO, "adir.nii", "directory", "info dir");
    /* a pair without its image */
    write_bytes(tpath("lonely.hdr"), g, 348);
    ml_t_expect_err(ml_nifti_read(&v, tpath("lonely.hdr"), NULL), ML_ERR_IO, "lonely.hdr", "missing", "no .img");
    /* uint64 beyond int64 in native mode */
    memcpy(b, g, n);
    put16(b, 70, 1280);
    put16(b, 72, 64);
    put16(b, 46, 1); /* 4x3x1 of 8 bytes = 96 bytes: fits in the 96 data bytes */
    memset(b + 352, 0xff, 8);
    p = tpath("u64.nii");
    write_bytes(p, b, n);
    ml_t_expect_err(ml_nifti_read(&v, p, &(ml_nifti_read_opts){ML_NIFTI_OUT_NATIVE}), ML_ERR_UNSUPPORTED, p,
                    "float64", "u64 overflow");
    ML_CHECK_OK(ml_nifti_read(&v, p, &(ml_nifti_read_opts){ML_NIFTI_OUT_F64}));
    if (v) {
        int64_t idx[3] = {0, 0, 0};
        ML_CHECK(ml_tensor_get(v->data, idx) == 18446744073709551615.0);
    }
    ml_volume_release(v);
    v = NULL;
    free(b);
    free(g);
    free(g2);
    ML_CHECK(count_tmp(g_dir) == 0);
}

ML_TEST(write_errors_leave_nothing) {
    int64_t shape[3] = {3, 3, 3};
    ml_volume *v = pattern_volume(ML_F32, 3, shape, NULL);
    /* unwritable places (as root too: a path below a regular file, a missing directory) */
    write_bytes(tpath("plainfile"), "x", 1);
    ml_t_expect_err(ml_nifti_write(v, tpath("plainfile/out.nii"), NULL), ML_ERR_IO, "plainfile/out.nii",
                    "cannot create temporary file", "below a file");
    ml_t_expect_err(ml_nifti_write(v, "/nonexistent_ml_dir/x.nii.gz", NULL), ML_ERR_IO, "/nonexistent_ml_dir/x.nii.gz",
                    "cannot create", "missing dir");
    ml_t_expect_err(ml_nifti_write(v, tpath("x.png"), NULL), ML_ERR_ARG, "x.png", "extension", "extension");
    ml_nifti_write_opts o;
    ml_nifti_write_opts_init(&o);
    o.compression_level = 13;
    ml_t_expect_err(ml_nifti_write(v, tpath("x.nii.gz"), &o), ML_ERR_ARG, "x.nii.gz", "compression_level", "level");
    ml_nifti_write_opts_init(&o);
    o.datatype = 1536;
    ml_t_expect_err(ml_nifti_write(v, tpath("x.nii"), &o), ML_ERR_ARG, "x.nii", "float128", "write float128");
    /* a failed write keeps the old file */
    ML_CHECK_OK(ml_nifti_write(v, tpath("keep.nii"), NULL));
    size_t n0, n1;
    unsigned char *before = read_bytes(tpath("keep.nii"), &n0);
    ml_tensor *t = v->data;
    ((float *)ml_tensor_data(t))[4] = 1000;
    o.datatype = ML_NIFTI_DT_UINT8;
    ML_CHECK(ml_nifti_write(v, tpath("keep.nii"), &o) == ML_ERR_ARG);
    unsigned char *after = read_bytes(tpath("keep.nii"), &n1);
    ML_CHECK(before && after && n0 == n1 && !memcmp(before, after, n0));
    free(before);
    free(after);
    ML_CHECK(count_tmp(g_dir) == 0);
    ml_volume_release(v);
}

ML_TEST(fuzz_crashers_regression) {
    const char *dirs[] = {"fuzz/crashers_nifti", "fuzz/corpus_nifti"};
    int n = 0;
    for (int k = 0; k < 2; k++) {
        DIR *d = opendir(dirs[k]);
        if (!d) continue;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            char p[1024];
            snprintf(p, sizeof p, "%s/%s", dirs[k], e->d_name);
            size_t len;
            unsigned char *b = read_bytes(p, &len);
            if (!b) continue;
            for (int o = 0; o < 3; o++) {
                ml_volume *v = NULL;
                ml_nifti_read_opts ro = {(ml_nifti_out)o};
                (void)ml_nifti_read_mem(&v, b, len, p, &ro); /* any result; no crash, no leak */
                ml_volume_release(v);
            }
            free(b);
            n++;
        }
        closedir(d);
    }
    printf("  %d fuzz inputs replayed\n", n);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/ml_nifti_test_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    size_t n;
    char *js = (char *)read_bytes("tests/ref/nifti_ref.json", &n);
    if (js) {
        js[n] = 0;
        g_ref = cJSON_Parse(js);
        free(js);
    }
    if (!g_ref) {
        printf("FAIL golden: cannot read tests/ref/nifti_ref.json (run from the repository root)\n");
        ml_t_failed++;
    } else {
        ML_RUN(golden_repo_files);
        ML_RUN(golden_shared_data);
        ML_RUN(golden_nibabel_test_data);
    }
    ML_RUN(roundtrip_dtypes_and_formats);
    ML_RUN(strided_tensors_are_written_in_voxel_order);
    ML_RUN(write_dtype_option_converts_and_checks_range);
    ML_RUN(written_header_fields);
    ML_RUN(large_gzip_parallel_members_and_fast_paths);
    ML_RUN(bad_files);
    ML_RUN(write_errors_leave_nothing);
    ML_RUN(fuzz_crashers_regression);
    cJSON_Delete(g_ref);
    rm_tree(g_dir);
    return ml_test_summary();
}
