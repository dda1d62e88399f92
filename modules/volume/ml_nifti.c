/* NIfTI-1 / NIfTI-2 reader and writer (see ml_nifti.h). Own header parser; libdeflate for gzip with a
 * zlib streaming fall-back; OpenMP for conversion and scaling. Lua-free. */
#include "volume/ml_nifti.h"

#include "tensor/ml_iter.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <libdeflate.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define N1_SIZE 348
#define N2_SIZE 540
#define HDR_READ 548 /* enough for either header plus the 4 extension bytes */
#define GZ_MAX_RATIO 1032 /* deflate expands at most ~1032:1 */
#define MAX_BYTES ((uint64_t)1 << 62)

/* ------------------------------------------------------------------ errors */
static ml_err nerr(ml_err code, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static ml_err nerr(ml_err code, const char *name, const char *fmt, ...) {
    char why[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    return ml_seterr(code, "nifti: %s: %s", name ? name : "(memory)", why);
}

/* --------------------------------------------------------------- datatypes */
typedef struct {
    int code;
    const char *name;
    int size;
    bool is_int, is_signed;
} dt_info;

static const dt_info g_dts[] = {
    {ML_NIFTI_DT_UINT8, "uint8", 1, true, false},    {ML_NIFTI_DT_INT8, "int8", 1, true, true},
    {ML_NIFTI_DT_INT16, "int16", 2, true, true},     {ML_NIFTI_DT_UINT16, "uint16", 2, true, false},
    {ML_NIFTI_DT_INT32, "int32", 4, true, true},     {ML_NIFTI_DT_UINT32, "uint32", 4, true, false},
    {ML_NIFTI_DT_INT64, "int64", 8, true, true},     {ML_NIFTI_DT_UINT64, "uint64", 8, true, false},
    {ML_NIFTI_DT_FLOAT32, "float32", 4, false, true}, {ML_NIFTI_DT_FLOAT64, "float64", 8, false, true},
    {0, NULL, 0, false, false}};

static const dt_info *dt_find(int code) {
    for (int i = 0; g_dts[i].name; i++)
        if (g_dts[i].code == code) return &g_dts[i];
    return NULL;
}

/* names of NIfTI types we know but refuse */
static const char *dt_refused_name(int code) {
    switch (code) {
    case 1: return "binary (1 bit)";
    case 32: return "complex64";
    case 128: return "RGB24";
    case 1536: return "float128";
    case 1792: return "complex128";
    case 2048: return "complex256";
    case 2304: return "RGBA32";
    default: return NULL;
    }
}

const char *ml_nifti_datatype_name(int code) {
    const dt_info *d = dt_find(code);
    if (d) return d->name;
    const char *r = dt_refused_name(code);
    return r ? r : "unknown";
}

int ml_nifti_datatype_from_name(const char *name) {
    if (!name) return 0;
    for (int i = 0; g_dts[i].name; i++)
        if (!strcasecmp(name, g_dts[i].name)) return g_dts[i].code;
    static const struct {
        const char *a;
        int code;
    } alias[] = {{"u8", 2},      {"i8", 256},      {"i16", 4},      {"short", 4},     {"u16", 512},
                 {"i32", 8},     {"int", 8},       {"u32", 768},    {"i64", 1024},    {"long", 1024},
                 {"u64", 1280},  {"f32", 16},      {"float", 16},   {"single", 16},   {"f64", 64},
                 {"double", 64}, {"uchar", 2},     {"byte", 2},     {NULL, 0}};
    for (int i = 0; alias[i].a; i++)
        if (!strcasecmp(name, alias[i].a)) return alias[i].code;
    return 0;
}

/* ------------------------------------------------------------ byte access */
static uint16_t rd16(const uint8_t *p, bool sw) {
    uint16_t v;
    memcpy(&v, p, 2);
    return sw ? __builtin_bswap16(v) : v;
}
static uint32_t rd32(const uint8_t *p, bool sw) {
    uint32_t v;
    memcpy(&v, p, 4);
    return sw ? __builtin_bswap32(v) : v;
}
static uint64_t rd64(const uint8_t *p, bool sw) {
    uint64_t v;
    memcpy(&v, p, 8);
    return sw ? __builtin_bswap64(v) : v;
}
static int16_t rdi16(const uint8_t *p, bool sw) { return (int16_t)rd16(p, sw); }
static int32_t rdi32(const uint8_t *p, bool sw) { return (int32_t)rd32(p, sw); }
static int64_t rdi64(const uint8_t *p, bool sw) { return (int64_t)rd64(p, sw); }
static double rdf32(const uint8_t *p, bool sw) {
    uint32_t u = rd32(p, sw);
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static double rdf64(const uint8_t *p, bool sw) {
    uint64_t u = rd64(p, sw);
    double f;
    memcpy(&f, &u, 8);
    return f;
}

/* ------------------------------------------------------------ header parse */
typedef struct {
    ml_nifti_info in; /* raw fields */
    int64_t hdr_size; /* 348 / 540 */
    const dt_info *dt;
    int nd;              /* output rank 3 or 4 */
    int64_t shape[4];
    int64_t numel;
    uint64_t nbytes;
    bool has_scale;
    double slope, inter; /* effective (1, 0 when none) */
    int qcode, scode;    /* after nibabel's fixes */
} nii_hdr;

static void cstr(char *dst, const uint8_t *src, size_t n) {
    size_t k = 0;
    while (k < n && src[k]) k++;
    memcpy(dst, src, k);
    dst[k] = 0;
}

static int fix_code(int c) { return (c >= 0 && c <= 5) ? c : 0; }

/* nibabel fillpositive (|w^2| below 3 eps of the header's float type -> w = 0; nibabel >= 5.1) then
 * quat2mat. eps: FLT_EPSILON for NIfTI-1 (float32 fields), DBL_EPSILON for NIfTI-2. */
static void quat_to_mat(double b, double c, double d, double eps, double R[9]) {
    long double w2 = 1.0L - ((long double)b * b + (long double)c * c + (long double)d * d);
    double w;
    if (fabsl(w2) < 3.0L * eps) w = 0;
    else if (w2 < 0) {
        /* nibabel raises here; libnifti normalizes (b, c, d) and uses w = 0: do that */
        double n = sqrt(b * b + c * c + d * d);
        b /= n;
        c /= n;
        d /= n;
        w = 0;
    } else w = (double)sqrtl(w2);
    double x = b, y = c, z = d;
    double Nq = w * w + x * x + y * y + z * z;
    if (!(Nq >= DBL_EPSILON)) {
        R[0] = R[4] = R[8] = 1;
        R[1] = R[2] = R[3] = R[5] = R[6] = R[7] = 0;
        return;
    }
    double s = 2.0 / Nq, X = x * s, Y = y * s, Z = z * s;
    double wX = w * X, wY = w * Y, wZ = w * Z, xX = x * X, xY = x * Y, xZ = x * Z, yY = y * Y, yZ = y * Z,
           zZ = z * Z;
    R[0] = 1.0 - (yY + zZ);
    R[1] = xY - wZ;
    R[2] = xZ + wY;
    R[3] = xY + wZ;
    R[4] = 1.0 - (xX + zZ);
    R[5] = yZ - wX;
    R[6] = xZ - wY;
    R[7] = yZ + wX;
    R[8] = 1.0 - (xX + yY);
}

static void qform_affine(const double pixdim4[4], const double q[3], const double off[3], double eps, double A[16]) {
    double R[9];
    quat_to_mat(q[0], q[1], q[2], eps, R);
    double vox[3] = {pixdim4[1], pixdim4[2], pixdim4[3] * pixdim4[0]};
    ml_affine_identity(A);
    for (int r = 0; r < 3; r++) {
        for (int c = 0; c < 3; c++) A[r * 4 + c] = R[r * 3 + c] * vox[c];
        A[r * 4 + 3] = off[r];
    }
}

void ml_nifti_qform_to_affine(const double pixdim4[4], const double q[3], const double off[3], double A[16]) {
    qform_affine(pixdim4, q, off, DBL_EPSILON, A);
}

/* Parse a header block b[0..n). pair: data lives in a separate .img (vox_offset may be 0). */
static ml_err parse_header(nii_hdr *h, const uint8_t *b, size_t n, const char *name, bool pair) {
    memset(h, 0, sizeof *h);
    ml_nifti_info *in = &h->in;
    if (n < 4) return nerr(ML_ERR_IO, name, "truncated header: file has %zu bytes, a NIfTI header needs 348", n);
    uint32_t sz = rd32(b, false);
    bool sw;
    if (sz == N1_SIZE || sz == N2_SIZE) sw = false;
    else if (__builtin_bswap32(sz) == N1_SIZE || __builtin_bswap32(sz) == N2_SIZE) {
        sw = true;
        sz = __builtin_bswap32(sz);
    } else
        return nerr(ML_ERR_IO, name, "not a NIfTI file: sizeof_hdr is %u (expected 348 for NIfTI-1 or 540 for NIfTI-2)",
                    sz);
    if (n < sz)
        return nerr(ML_ERR_IO, name, "truncated header: file has %zu bytes, the NIfTI-%d header needs %u", n,
                    sz == N1_SIZE ? 1 : 2, sz);
    in->big_endian = sw ? (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__) : (__BYTE_ORDER__ == __ORDER_BIG_ENDIAN__);
    h->hdr_size = sz;
    if (sz == N1_SIZE) {
        in->version = 1;
        const uint8_t *m = b + 344;
        if (!(m[0] == 'n' && (m[1] == '+' || m[1] == 'i') && m[2] == '1' && m[3] == 0)) {
            char ms[16];
            snprintf(ms, sizeof ms, "%c%c%c", m[0] >= 32 && m[0] < 127 ? m[0] : '?',
                     m[1] >= 32 && m[1] < 127 ? m[1] : '?', m[2] >= 32 && m[2] < 127 ? m[2] : '?');
            return nerr(ML_ERR_IO, name,
                        "wrong magic '%s' (expected 'n+1' or 'ni1'; a 348-byte header without it is Analyze 7.5, "
                        "which is not supported)",
                        ms);
        }
        in->single_file = m[1] == '+';
        for (int i = 0; i < 8; i++) in->dim[i] = rdi16(b + 40 + 2 * i, sw);
        in->intent_code = rdi16(b + 68, sw);
        in->datatype = rdi16(b + 70, sw);
        in->bitpix = rdi16(b + 72, sw);
        for (int i = 0; i < 8; i++) in->pixdim[i] = rdf32(b + 76 + 4 * i, sw);
        double vo = rdf32(b + 108, sw);
        if (!isfinite(vo) || vo < 0 || vo > 9.0e18)
            return nerr(ML_ERR_IO, name, "vox_offset %g is not a valid byte offset", vo);
        in->vox_offset = (int64_t)vo; /* nibabel: int(vox_offset) */
        in->scl_slope = rdf32(b + 112, sw);
        in->scl_inter = rdf32(b + 116, sw);
        in->xyzt_units = b[123];
        in->cal_max = rdf32(b + 124, sw);
        in->cal_min = rdf32(b + 128, sw);
        cstr(in->descrip, b + 148, 80);
        cstr(in->aux_file, b + 228, 24);
        in->qform_code = rdi16(b + 252, sw);
        in->sform_code = rdi16(b + 254, sw);
        for (int i = 0; i < 3; i++) in->quatern[i] = rdf32(b + 256 + 4 * i, sw);
        for (int i = 0; i < 3; i++) in->qoffset[i] = rdf32(b + 268 + 4 * i, sw);
        for (int i = 0; i < 12; i++) in->srow[i] = rdf32(b + 280 + 4 * i, sw);
        cstr(in->intent_name, b + 328, 16);
    } else {
        in->version = 2;
        const uint8_t *m = b + 4;
        static const uint8_t tail[4] = {'\r', '\n', 032, '\n'};
        if (!(m[0] == 'n' && (m[1] == '+' || m[1] == 'i') && m[2] == '2' && m[3] == 0 && !memcmp(m + 4, tail, 4)))
            return nerr(ML_ERR_IO, name, "wrong magic in a 540-byte header (expected 'n+2' or 'ni2' + \\r\\n\\032\\n)");
        in->single_file = m[1] == '+';
        in->datatype = rdi16(b + 12, sw);
        in->bitpix = rdi16(b + 14, sw);
        for (int i = 0; i < 8; i++) in->dim[i] = rdi64(b + 16 + 8 * i, sw);
        for (int i = 0; i < 8; i++) in->pixdim[i] = rdf64(b + 104 + 8 * i, sw);
        in->vox_offset = rdi64(b + 168, sw);
        if (in->vox_offset < 0)
            return nerr(ML_ERR_IO, name, "vox_offset %lld is not a valid byte offset", (long long)in->vox_offset);
        in->scl_slope = rdf64(b + 176, sw);
        in->scl_inter = rdf64(b + 184, sw);
        in->cal_max = rdf64(b + 192, sw);
        in->cal_min = rdf64(b + 200, sw);
        cstr(in->descrip, b + 240, 80);
        cstr(in->aux_file, b + 320, 24);
        in->qform_code = rdi32(b + 344, sw);
        in->sform_code = rdi32(b + 348, sw);
        for (int i = 0; i < 3; i++) in->quatern[i] = rdf64(b + 352 + 8 * i, sw);
        for (int i = 0; i < 3; i++) in->qoffset[i] = rdf64(b + 376 + 8 * i, sw);
        for (int i = 0; i < 12; i++) in->srow[i] = rdf64(b + 400 + 8 * i, sw);
        in->xyzt_units = rdi32(b + 500, sw);
        in->intent_code = rdi32(b + 504, sw);
        cstr(in->intent_name, b + 508, 16);
    }
    in->datatype_name = ml_nifti_datatype_name(in->datatype);

    /* matrices from the stored fields (nibabel's fixes applied, as nibabel's img.affine sees them) */
    double pd[8];
    memcpy(pd, in->pixdim, sizeof pd);
    for (int i = 1; i <= 3; i++) {
        if (pd[i] == 0) pd[i] = 1;
        else if (pd[i] < 0) pd[i] = -pd[i];
    }
    if (pd[0] != 1 && pd[0] != -1) pd[0] = 1;
    qform_affine(pd, in->quatern, in->qoffset, in->version == 1 ? FLT_EPSILON : DBL_EPSILON, in->qform);
    ml_affine_identity(in->sform);
    memcpy(in->sform, in->srow, sizeof in->srow);
    h->qcode = fix_code(in->qform_code);
    h->scode = fix_code(in->sform_code);

    /* dims */
    int64_t d0 = in->dim[0];
    if (d0 < 1 || d0 > 7)
        return nerr(ML_ERR_IO, name, "dim[0] = %lld: the number of dimensions must be 1..7", (long long)d0);
    for (int i = 1; i <= d0; i++)
        if (in->dim[i] < 1)
            return nerr(ML_ERR_IO, name, "dim[%d] = %lld: every dimension must be at least 1", i, (long long)in->dim[i]);
    for (int i = 5; i <= d0; i++)
        if (in->dim[i] != 1)
            return nerr(ML_ERR_UNSUPPORTED, name,
                        "%lld-D image (dim[%d] = %lld): only 3-D and 4-D images are supported (dims beyond the 4th "
                        "must be 1)",
                        (long long)d0, i, (long long)in->dim[i]);
    h->nd = d0 >= 4 ? 4 : 3;
    for (int i = 0; i < 4; i++) h->shape[i] = i < d0 ? in->dim[i + 1] : 1;
    uint64_t numel = 1;
    for (int i = 0; i < h->nd; i++)
        if (__builtin_mul_overflow(numel, (uint64_t)h->shape[i], &numel) || numel > MAX_BYTES)
            return nerr(ML_ERR_IO, name, "dims %s describe more than 2^62 voxels",
                        ml_shape_str(h->nd, h->shape));
    h->numel = (int64_t)numel;

    /* datatype */
    h->dt = dt_find(in->datatype);
    if (!h->dt) {
        const char *r = dt_refused_name(in->datatype);
        if (r) return nerr(ML_ERR_UNSUPPORTED, name, "datatype %d (%s) is not supported", in->datatype, r);
        return nerr(ML_ERR_IO, name, "unknown datatype %d", in->datatype);
    }
    if (__builtin_mul_overflow(numel, (uint64_t)h->dt->size, &h->nbytes) || h->nbytes > MAX_BYTES)
        return nerr(ML_ERR_IO, name, "dims %s of %s describe more than 2^62 bytes", ml_shape_str(h->nd, h->shape),
                    h->dt->name);

    /* data offset */
    if (!pair) {
        int64_t min_off = h->hdr_size + 4;
        if (in->vox_offset == 0) in->vox_offset = min_off; /* unset: right after the header (as libnifti) */
        else if (in->vox_offset < min_off)
            return nerr(ML_ERR_IO, name, "vox_offset %lld is inside the header (a single-file NIfTI-%d needs >= %lld)",
                        (long long)in->vox_offset, in->version, (long long)min_off);
    }

    /* scaling (nibabel get_slope_inter) */
    h->slope = 1;
    h->inter = 0;
    if (in->scl_slope != 0 && isfinite(in->scl_slope)) {
        if (!isfinite(in->scl_inter))
            return nerr(ML_ERR_IO, name, "valid scl_slope %g but invalid scl_inter %g", in->scl_slope, in->scl_inter);
        h->slope = in->scl_slope;
        h->inter = in->scl_inter;
        h->has_scale = !(h->slope == 1 && h->inter == 0);
    }

    /* affine (nibabel get_best_affine) */
    if (h->scode > 0) memcpy(in->affine, in->sform, sizeof in->affine);
    else if (h->qcode > 0) memcpy(in->affine, in->qform, sizeof in->affine);
    else {
        /* base affine: shape_zoom_affine(dim[1:ndim+1], pixdim[1:ndim+1], x_flip) */
        double sh[3], zm[3];
        for (int i = 0; i < 3; i++) {
            sh[i] = i < d0 ? (double)in->dim[i + 1] : 1;
            zm[i] = i < d0 ? pd[i + 1] : 1;
        }
        zm[0] = -zm[0];
        ml_affine_identity(in->affine);
        for (int i = 0; i < 3; i++) {
            in->affine[i * 4 + i] = zm[i];
            in->affine[i * 4 + 3] = -(sh[i] - 1) / 2.0 * zm[i];
        }
    }
    for (int i = 0; i < 16; i++)
        if (!isfinite(in->affine[i]))
            return nerr(ML_ERR_IO, name, "the %s has a non-finite entry",
                        h->scode > 0 ? "sform (srow_x/y/z)" : h->qcode > 0 ? "qform (quatern / qoffset / pixdim)"
                                                                           : "pixdim");
    return ML_OK;
}

/* ------------------------------------------------------------- conversion */
enum { DK_F32, DK_F32S, DK_F64, DK_F64S, DK_I32, DK_I64, DK_U8 };

#define NOSW(u) (u)
#define CONV_CASES(SRC_T, UNS_T, SWAPFN)                                                                 \
    switch (dk) {                                                                                        \
    case DK_F32: {                                                                                       \
        float *d = dst;                                                                                  \
        for (int64_t i = 0; i < cnt; i++) {                                                              \
            UNS_T u; SRC_T x; memcpy(&u, src + i * (int64_t)sizeof(UNS_T), sizeof u);                   \
            u = SWAPFN(u); memcpy(&x, &u, sizeof x); d[i] = (float)x;                                    \
        }                                                                                                \
    } break;                                                                                             \
    case DK_F32S: {                                                                                      \
        float *d = dst;                                                                                  \
        for (int64_t i = 0; i < cnt; i++) {                                                              \
            UNS_T u; SRC_T x; memcpy(&u, src + i * (int64_t)sizeof(UNS_T), sizeof u);                   \
            u = SWAPFN(u); memcpy(&x, &u, sizeof x); d[i] = (float)((double)x * sl + it);                \
        }                                                                                                \
    } break;                                                                                             \
    case DK_F64: {                                                                                       \
        double *d = dst;                                                                                 \
        for (int64_t i = 0; i < cnt; i++) {                                                              \
            UNS_T u; SRC_T x; memcpy(&u, src + i * (int64_t)sizeof(UNS_T), sizeof u);                   \
            u = SWAPFN(u); memcpy(&x, &u, sizeof x); d[i] = (double)x;                                   \
        }                                                                                                \
    } break;                                                                                             \
    case DK_F64S: {                                                                                      \
        double *d = dst;                                                                                 \
        for (int64_t i = 0; i < cnt; i++) {                                                              \
            UNS_T u; SRC_T x; memcpy(&u, src + i * (int64_t)sizeof(UNS_T), sizeof u);                   \
            u = SWAPFN(u); memcpy(&x, &u, sizeof x); d[i] = (double)x * sl + it;                         \
        }                                                                                                \
    } break;                                                                                             \
    case DK_I32: {                                                                                       \
        int32_t *d = dst;                                                                                \
        for (int64_t i = 0; i < cnt; i++) {                                                              \
            UNS_T u; SRC_T x; memcpy(&u, src + i * (int64_t)sizeof(UNS_T), sizeof u);                   \
            u = SWAPFN(u); memcpy(&x, &u, sizeof x); d[i] = (int32_t)x;                                  \
        }                                                                                                \
    } break;                                                                                             \
    case DK_I64: {                                                                                       \
        int64_t *d = dst;                                                                                \
        for (int64_t i = 0; i < cnt; i++) {                                                              \
            UNS_T u; SRC_T x; memcpy(&u, src + i * (int64_t)sizeof(UNS_T), sizeof u);                   \
            u = SWAPFN(u); memcpy(&x, &u, sizeof x); d[i] = (int64_t)x;                                  \
        }                                                                                                \
    } break;                                                                                             \
    case DK_U8: {                                                                                        \
        uint8_t *d = dst;                                                                                \
        for (int64_t i = 0; i < cnt; i++) {                                                              \
            UNS_T u; SRC_T x; memcpy(&u, src + i * (int64_t)sizeof(UNS_T), sizeof u);                   \
            u = SWAPFN(u); memcpy(&x, &u, sizeof x); d[i] = (uint8_t)x;                                  \
        }                                                                                                \
    } break;                                                                                             \
    }

typedef void (*conv_fn)(void *dst, int dk, const uint8_t *src, int64_t cnt, double sl, double it);

#define CONV_FN(NAME, SRC_T, UNS_T, SWAPFN)                                                                  \
    static void NAME(void *dst, int dk, const uint8_t *src, int64_t cnt, double sl, double it) {            \
        CONV_CASES(SRC_T, UNS_T, SWAPFN)                                                                     \
    }

CONV_FN(cv_u8, uint8_t, uint8_t, NOSW)
CONV_FN(cv_i8, int8_t, uint8_t, NOSW)
CONV_FN(cv_i16, int16_t, uint16_t, NOSW)
CONV_FN(cv_u16, uint16_t, uint16_t, NOSW)
CONV_FN(cv_i32, int32_t, uint32_t, NOSW)
CONV_FN(cv_u32, uint32_t, uint32_t, NOSW)
CONV_FN(cv_i64, int64_t, uint64_t, NOSW)
CONV_FN(cv_u64, uint64_t, uint64_t, NOSW)
CONV_FN(cv_f32, float, uint32_t, NOSW)
CONV_FN(cv_f64, double, uint64_t, NOSW)
CONV_FN(cv_i16s, int16_t, uint16_t, __builtin_bswap16)
CONV_FN(cv_u16s, uint16_t, uint16_t, __builtin_bswap16)
CONV_FN(cv_i32s, int32_t, uint32_t, __builtin_bswap32)
CONV_FN(cv_u32s, uint32_t, uint32_t, __builtin_bswap32)
CONV_FN(cv_i64s, int64_t, uint64_t, __builtin_bswap64)
CONV_FN(cv_u64s, uint64_t, uint64_t, __builtin_bswap64)
CONV_FN(cv_f32s, float, uint32_t, __builtin_bswap32)
CONV_FN(cv_f64s, double, uint64_t, __builtin_bswap64)

static conv_fn conv_for(int code, bool sw) {
    switch (code) {
    case ML_NIFTI_DT_UINT8: return cv_u8;
    case ML_NIFTI_DT_INT8: return cv_i8;
    case ML_NIFTI_DT_INT16: return sw ? cv_i16s : cv_i16;
    case ML_NIFTI_DT_UINT16: return sw ? cv_u16s : cv_u16;
    case ML_NIFTI_DT_INT32: return sw ? cv_i32s : cv_i32;
    case ML_NIFTI_DT_UINT32: return sw ? cv_u32s : cv_u32;
    case ML_NIFTI_DT_INT64: return sw ? cv_i64s : cv_i64;
    case ML_NIFTI_DT_UINT64: return sw ? cv_u64s : cv_u64;
    case ML_NIFTI_DT_FLOAT32: return sw ? cv_f32s : cv_f32;
    case ML_NIFTI_DT_FLOAT64: return sw ? cv_f64s : cv_f64;
    default: return NULL;
    }
}

#define CONV_BLOCK ((int64_t)1 << 16)
#define CONV_SUB 2048 /* in-place conversion goes through a stack buffer of this many elements */

static size_t dk_size(int dk) {
    switch (dk) {
    case DK_F32: case DK_F32S: case DK_I32: return 4;
    case DK_U8: return 1;
    default: return 8;
    }
}

/* dst[i] = convert(src[i]) for i < n. dst may be src (same element size): each piece is then converted
 * into a stack buffer and copied back, so the loops stay vectorized (no aliasing) */
static void convert_all(void *dst, int dk, const uint8_t *src, int code, bool sw, int64_t n, double sl, double it) {
    conv_fn f = conv_for(code, sw);
    size_t ss = (size_t)dt_find(code)->size, ds = dk_size(dk);
    bool inplace = (const uint8_t *)dst == src;
    int64_t nb = (n + CONV_BLOCK - 1) / CONV_BLOCK;
    int nt = ml_num_threads();
    if (nb < 2) nt = 1;
    if (nt > nb) nt = (int)nb;
    ML_PAR_FOR(int64_t, b, nb, {
        int64_t b0 = b * CONV_BLOCK, cnt = b0 + CONV_BLOCK < n ? CONV_BLOCK : n - b0;
        if (!inplace) f((uint8_t *)dst + (size_t)b0 * ds, dk, src + (size_t)b0 * ss, cnt, sl, it);
        else {
            _Alignas(64) uint8_t tmp[CONV_SUB * 8];
            for (int64_t c = 0; c < cnt; c += CONV_SUB) {
                int64_t m = cnt - c < CONV_SUB ? cnt - c : CONV_SUB;
                f(tmp, dk, src + (size_t)(b0 + c) * ss, m, sl, it);
                memcpy((uint8_t *)dst + (size_t)(b0 + c) * ds, tmp, (size_t)m * ds);
            }
        }
    });
}

/* any uint64 value with the top bit set (does not fit int64)? */
static bool u64_overflows(const uint8_t *src, bool sw, int64_t n) {
    int nt = ml_num_threads();
    if (n < CONV_BLOCK) nt = 1;
    uint64_t acc = 0;
    if (nt > 1) {
#pragma omp parallel for num_threads(nt) reduction(| : acc) schedule(static)
        for (int64_t i = 0; i < n; i++) acc |= rd64(src + 8 * i, sw);
    } else
        for (int64_t i = 0; i < n; i++) acc |= rd64(src + 8 * i, sw);
    return (acc >> 63) != 0;
}

/* Output dtype and conversion kind for a file type and the requested output. */
static void plan_output(const nii_hdr *h, ml_nifti_out want, ml_dtype *dt, int *dk) {
    int code = h->dt->code;
    if (want == ML_NIFTI_OUT_F64) {
        *dt = ML_F64;
        *dk = h->has_scale ? DK_F64S : DK_F64;
        return;
    }
    if (want == ML_NIFTI_OUT_NATIVE) {
        if (h->has_scale) {
            *dt = code == ML_NIFTI_DT_FLOAT64 ? ML_F64 : ML_F32;
            *dk = code == ML_NIFTI_DT_FLOAT64 ? DK_F64S : DK_F32S;
            return;
        }
        switch (code) {
        case ML_NIFTI_DT_UINT8: *dt = ML_U8; *dk = DK_U8; return;
        case ML_NIFTI_DT_INT8:
        case ML_NIFTI_DT_INT16:
        case ML_NIFTI_DT_UINT16:
        case ML_NIFTI_DT_INT32: *dt = ML_I32; *dk = DK_I32; return;
        case ML_NIFTI_DT_UINT32:
        case ML_NIFTI_DT_INT64:
        case ML_NIFTI_DT_UINT64: *dt = ML_I64; *dk = DK_I64; return;
        case ML_NIFTI_DT_FLOAT64: *dt = ML_F64; *dk = DK_F64; return;
        default: *dt = ML_F32; *dk = DK_F32; return;
        }
    }
    *dt = ML_F32;
    *dk = h->has_scale ? DK_F32S : DK_F32;
}

/* the output is the file's own type, bit for bit (no conversion needed unless swapped or scaled) */
static bool same_storage_type(int code, ml_dtype dt) {
    switch (code) {
    case ML_NIFTI_DT_UINT8: return dt == ML_U8;
    case ML_NIFTI_DT_INT32: return dt == ML_I32;
    case ML_NIFTI_DT_INT64: return dt == ML_I64;
    case ML_NIFTI_DT_FLOAT32: return dt == ML_F32;
    case ML_NIFTI_DT_FLOAT64: return dt == ML_F64;
    default: return false;
    }
}

/* the output can be produced in the bytes that hold the file's data (same element size, aligned) */
static bool in_place_ok(const nii_hdr *h, ml_nifti_out want, size_t lead) {
    ml_dtype dt;
    int dk;
    plan_output(h, want, &dt, &dk);
    size_t es = ml_dtype_size(dt);
    return es == (size_t)h->dt->size && lead % es == 0;
}

static void file_order_strides(int nd, const int64_t *shape, int64_t *stride) {
    int64_t s = 1;
    for (int i = 0; i < nd; i++) {
        stride[i] = s;
        s *= shape[i];
    }
}

/* Build the volume from header h and the file's data bytes. If `st` is non-NULL the data lie in that
 * storage at byte offset `lead` (st may then become the tensor's storage); else at `data`. */
static ml_err make_volume(ml_volume **out, const nii_hdr *h, ml_storage *st, size_t lead, const uint8_t *data,
                          const ml_nifti_read_opts *o, const char *name) {
    ml_dtype dt;
    int dk;
    plan_output(h, o->dtype, &dt, &dk);
    bool sw = h->in.big_endian != (__BYTE_ORDER__ == __ORDER_BIG_ENDIAN__);
    const uint8_t *src = st ? (const uint8_t *)st->data + lead : data;
    int code = h->dt->code;
    if (code == ML_NIFTI_DT_UINT64 && dk == DK_I64 && u64_overflows(src, sw, h->numel))
        return nerr(ML_ERR_UNSUPPORTED, name,
                    "uint64 values beyond the int64 range: read it with dtype = \"float64\" instead of \"native\"");
    int64_t stride[4];
    file_order_strides(h->nd, h->shape, stride);
    ml_tensor *t = NULL;
    size_t es = ml_dtype_size(dt);
    if (st && in_place_ok(h, o->dtype, lead)) {
        /* in place: convert / swap / scale where the bytes are (element i is read before it is written) */
        if (!same_storage_type(code, dt) || sw || dk == DK_F32S || dk == DK_F64S)
            convert_all((uint8_t *)st->data + lead, dk, src, code, sw, h->numel, h->slope, h->inter);
        t = ml_tensor_header(st, dt, h->nd, h->shape, stride, (int64_t)(lead / es));
        if (!t) return ML_ERR_OOM;
    } else {
        ml_err e = ml_tensor_empty(&t, dt, h->nd, h->shape);
        if (e) {
            char why[512];
            snprintf(why, sizeof why, "%s", ml_errmsg());
            return nerr(e, name, "%s", why);
        }
        memcpy(t->stride, stride, sizeof stride);
        convert_all(ml_tensor_data(t), dk, src, code, sw, h->numel, h->slope, h->inter);
    }
    ml_volume_meta m;
    ml_volume_meta_init(&m);
    snprintf(m.description, sizeof m.description, "%s", h->in.descrip);
    m.rescale_slope = h->slope;
    m.rescale_intercept = h->inter;
    m.is_label = h->dt->is_int && !h->has_scale;
    m.qform_code = h->qcode;
    m.sform_code = h->scode;
    if (isfinite(h->in.cal_min) && isfinite(h->in.cal_max) && h->in.cal_max > h->in.cal_min) {
        m.has_window = true;
        m.window_center = (h->in.cal_max + h->in.cal_min) / 2;
        m.window_width = h->in.cal_max - h->in.cal_min;
    }
    ml_err e = ml_volume_new(out, t, h->in.affine, &m);
    ml_tensor_release(t);
    if (e) {
        char why[512];
        snprintf(why, sizeof why, "%s", ml_errmsg());
        return nerr(e, name, "%s", why);
    }
    return ML_OK;
}

/* ------------------------------------------------------------------- gzip */
static bool is_gz(const uint8_t *b, size_t n) { return n >= 2 && b[0] == 0x1f && b[1] == 0x8b; }

/* zlib streaming: first `want` bytes of the (multi-member) gzip stream in[0..n) into out.
 * *got = bytes produced. Returns 0 ok (got == want), 1 stream ended early, -1 corrupt (msg). */
static int gz_prefix_zlib(const uint8_t *in, size_t n, uint8_t *out, size_t want, size_t *got, char *msg,
                          size_t msgn) {
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    *got = 0;
    if (inflateInit2(&zs, 15 + 16) != Z_OK) {
        snprintf(msg, msgn, "zlib inflateInit failed");
        return -1;
    }
    size_t ipos = 0, opos = 0;
    int rc = 0;
    while (opos < want) {
        uInt ain = (uInt)((n - ipos) > UINT_MAX ? UINT_MAX : (n - ipos));
        uInt aout = (uInt)((want - opos) > UINT_MAX ? UINT_MAX : (want - opos));
        zs.next_in = (Bytef *)(in + ipos);
        zs.avail_in = ain;
        zs.next_out = out + opos;
        zs.avail_out = aout;
        int r = inflate(&zs, Z_NO_FLUSH);
        ipos += ain - zs.avail_in;
        opos += aout - zs.avail_out;
        if (r == Z_STREAM_END) {
            /* another member? */
            if (ipos + 2 <= n && in[ipos] == 0x1f && in[ipos + 1] == 0x8b) {
                inflateReset(&zs);
                continue;
            }
            if (opos < want) rc = 1;
            break;
        }
        if (r == Z_OK) continue;
        if (r == Z_BUF_ERROR) {
            if (zs.avail_out == 0) continue;
            rc = 1; /* needs more input: the stream is cut short */
            break;
        }
        if (r == Z_DATA_ERROR && zs.msg && !strcmp(zs.msg, "incorrect length check")) {
            /* the member's data is complete and its CRC matched; only ISIZE is wrong: accept */
            if (opos < want) rc = 1;
            break;
        }
        snprintf(msg, msgn, "%s", zs.msg ? zs.msg : "inflate failed");
        rc = -1;
        break;
    }
    inflateEnd(&zs);
    *got = opos;
    return rc;
}

/* First `want` bytes of the gzip stream in[0..n) into out, libdeflate first (whole members), zlib
 * streaming when a member does not fit or libdeflate refuses it. Same returns as gz_prefix_zlib. */
static int gz_inflate(const uint8_t *in, size_t n, uint8_t *out, size_t want, size_t *got, char *msg, size_t msgn) {
    struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
    if (d) {
        size_t ipos = 0, opos = 0;
        bool ok = true;
        while (opos < want) {
            if (!is_gz(in + ipos, n - ipos)) break;
            size_t used = 0, prod = 0;
            enum libdeflate_result r =
                libdeflate_gzip_decompress_ex(d, in + ipos, n - ipos, out + opos, want - opos, &used, &prod);
            if (r != LIBDEFLATE_SUCCESS) {
                ok = false;
                break;
            }
            ipos += used;
            opos += prod;
        }
        libdeflate_free_decompressor(d);
        if (ok) {
            *got = opos;
            return opos < want ? 1 : 0;
        }
    }
    return gz_prefix_zlib(in, n, out, want, got, msg, msgn);
}

/* ---------------------------------------------------------------- file I/O */
static ml_err open_regular(const char *path, int *fd_out, uint64_t *size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return nerr(ML_ERR_IO, path, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int er = errno;
        close(fd);
        return nerr(ML_ERR_IO, path, "cannot stat: %s", strerror(er));
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return nerr(ML_ERR_IO, path, "is a directory, not a NIfTI file");
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return nerr(ML_ERR_IO, path, "not a regular file");
    }
    *fd_out = fd;
    *size = (uint64_t)st.st_size;
    return ML_OK;
}

static ml_err pread_all(int fd, const char *path, void *buf, size_t n, uint64_t off) {
    uint8_t *p = buf;
    while (n > 0) {
        size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
        ssize_t r = pread(fd, p, chunk, (off_t)off);
        if (r < 0) {
            if (errno == EINTR) continue;
            return nerr(ML_ERR_IO, path, "read failed: %s", strerror(errno));
        }
        if (r == 0) return nerr(ML_ERR_IO, path, "truncated: the file ended while reading (it changed?)");
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return ML_OK;
}

/* A source file: raw (read through fd) or gzip (whole compressed bytes in memory). */
typedef struct {
    const char *path;
    int fd;
    uint64_t size; /* file size (raw) or compressed size (gz) */
    bool gz;
    uint8_t *zbuf; /* gz: compressed bytes (malloc'd) or borrowed */
    bool zbuf_owned;
    const uint8_t *mem; /* raw memory source (read_mem) */
} nsrc;

static void src_close(nsrc *s) {
    if (s->fd >= 0) close(s->fd);
    s->fd = -1;
    if (s->zbuf_owned) free(s->zbuf);
    s->zbuf = NULL;
}

static ml_err src_open_file(nsrc *s, const char *path) {
    memset(s, 0, sizeof *s);
    s->fd = -1;
    s->path = path;
    ml_err e = open_regular(path, &s->fd, &s->size);
    if (e) return e;
    uint8_t magic[2] = {0, 0};
    if (s->size >= 2 && (e = pread_all(s->fd, path, magic, 2, 0))) {
        src_close(s);
        return e;
    }
    if (is_gz(magic, s->size >= 2 ? 2 : 0)) {
        s->gz = true;
        if (s->size > (uint64_t)SIZE_MAX / 2) {
            src_close(s);
            return nerr(ML_ERR_IO, path, "compressed file too large");
        }
        s->zbuf = malloc(s->size ? (size_t)s->size : 1);
        if (!s->zbuf) {
            src_close(s);
            return nerr(ML_ERR_OOM, path, "out of memory reading %llu compressed bytes", (unsigned long long)s->size);
        }
        s->zbuf_owned = true;
        if ((e = pread_all(s->fd, path, s->zbuf, (size_t)s->size, 0))) {
            src_close(s);
            return e;
        }
        close(s->fd);
        s->fd = -1;
    }
    return ML_OK;
}

/* The first min(HDR_READ, available) bytes. */
static ml_err src_header(nsrc *s, uint8_t *hb, size_t *hn) {
    if (s->gz) {
        char msg[256] = "";
        size_t got = 0;
        int r = gz_prefix_zlib(s->zbuf, (size_t)s->size, hb, HDR_READ, &got, msg, sizeof msg);
        if (r < 0) return nerr(ML_ERR_IO, s->path, "gzip data is corrupt: %s", msg);
        *hn = got;
        return ML_OK;
    }
    size_t n = s->size < HDR_READ ? (size_t)s->size : HDR_READ;
    *hn = n;
    if (s->mem) {
        memcpy(hb, s->mem, n);
        return ML_OK;
    }
    return pread_all(s->fd, s->path, hb, n, 0);
}

/* Read the data [off, off + nb) of source s and build the volume. */
static ml_err src_volume(ml_volume **out, nsrc *s, const nii_hdr *h, const ml_nifti_read_opts *o) {
    uint64_t off = (uint64_t)h->in.vox_offset, nb = h->nbytes;
    if (!s->gz) {
        if (off > s->size || nb > s->size - off)
            return nerr(ML_ERR_IO, s->path, "truncated: header says %llu data bytes at offset %llu, file has %llu bytes",
                        (unsigned long long)nb, (unsigned long long)off, (unsigned long long)s->size);
        if (s->mem) return make_volume(out, h, NULL, 0, s->mem + off, o, s->path);
        if (!in_place_ok(h, o->dtype, 0)) {
            /* converting to another element size: straight from the page cache through a read-only map */
            void *map = mmap(NULL, (size_t)(off + nb), PROT_READ, MAP_PRIVATE, s->fd, 0);
            if (map != MAP_FAILED) {
                madvise(map, (size_t)(off + nb), MADV_WILLNEED);
                ml_err e = make_volume(out, h, NULL, 0, (const uint8_t *)map + off, o, s->path);
                munmap(map, (size_t)(off + nb));
                return e;
            }
        }
        ml_storage *st = ml_storage_new((size_t)nb, ml_cpu());
        if (!st) {
            char why[512];
            snprintf(why, sizeof why, "%s", ml_errmsg());
            return nerr(ML_ERR_OOM, s->path, "%s", why);
        }
        ml_err e = pread_all(s->fd, s->path, st->data, (size_t)nb, off);
        if (!e) e = make_volume(out, h, st, 0, NULL, o, s->path);
        ml_storage_release(st);
        return e;
    }
    /* gzip: the whole prefix [0, off + nb) goes to one buffer; data sit at `off` */
    uint64_t want = off + nb;
    if (want / GZ_MAX_RATIO > s->size + 64)
        return nerr(ML_ERR_IO, s->path,
                    "truncated: header says %llu data bytes at offset %llu, but %llu gzip bytes can hold at most "
                    "about %llu",
                    (unsigned long long)nb, (unsigned long long)off, (unsigned long long)s->size,
                    (unsigned long long)(s->size * GZ_MAX_RATIO));
    ml_storage *st = ml_storage_new((size_t)want, ml_cpu());
    if (!st) {
        char why[512];
        snprintf(why, sizeof why, "%s", ml_errmsg());
        return nerr(ML_ERR_OOM, s->path, "%s", why);
    }
    char msg[256] = "";
    size_t got = 0;
    int r = gz_inflate(s->zbuf, (size_t)s->size, st->data, (size_t)want, &got, msg, sizeof msg);
    ml_err e = ML_OK;
    if (r < 0) e = nerr(ML_ERR_IO, s->path, "gzip data is corrupt: %s", msg);
    else if (r > 0)
        e = nerr(ML_ERR_IO, s->path, "truncated: header says %llu data bytes at offset %llu, file has %llu (uncompressed)",
                 (unsigned long long)nb, (unsigned long long)off, (unsigned long long)got);
    if (!e) e = make_volume(out, h, st, (size_t)off, NULL, o, s->path);
    ml_storage_release(st);
    return e;
}

void ml_nifti_read_opts_init(ml_nifti_read_opts *o) {
    memset(o, 0, sizeof *o);
    o->dtype = ML_NIFTI_OUT_F32;
}

ml_err ml_nifti_read_mem(ml_volume **out, const void *buf, size_t n, const char *name, const ml_nifti_read_opts *opts) {
    *out = NULL;
    ml_nifti_read_opts o;
    if (opts) o = *opts;
    else ml_nifti_read_opts_init(&o);
    if ((unsigned)o.dtype > ML_NIFTI_OUT_NATIVE) return nerr(ML_ERR_ARG, name, "bad output dtype option %d", o.dtype);
    if (!buf && n) return nerr(ML_ERR_ARG, name, "NULL buffer");
    nsrc s;
    memset(&s, 0, sizeof s);
    s.fd = -1;
    s.path = name ? name : "(memory)";
    s.size = n;
    if (is_gz(buf, n)) {
        s.gz = true;
        s.zbuf = (uint8_t *)buf;
    } else
        s.mem = buf;
    uint8_t hb[HDR_READ];
    size_t hn = 0;
    nii_hdr h;
    ml_err e = src_header(&s, hb, &hn);
    if (!e) e = parse_header(&h, hb, hn, s.path, false);
    if (!e) e = src_volume(out, &s, &h, &o);
    return e;
}

/* ------------------------------------------------------------- file names */
static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcasecmp(s + a - b, suf);
}

typedef enum { K_SINGLE, K_HDR, K_IMG } file_kind;

/* kind and base length (path without .hdr/.img(.gz)) */
static file_kind path_kind(const char *path, size_t *base, bool *gz) {
    size_t n = strlen(path);
    *gz = false;
    if (ends_with(path, ".hdr.gz") || ends_with(path, ".img.gz")) {
        *gz = true;
        *base = n - 7;
        return ends_with(path, ".hdr.gz") ? K_HDR : K_IMG;
    }
    if (ends_with(path, ".hdr") || ends_with(path, ".img")) {
        *base = n - 4;
        return ends_with(path, ".hdr") ? K_HDR : K_IMG;
    }
    *base = n;
    return K_SINGLE;
}

static bool file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* the partner of a .hdr / .img file (malloc'd), preferring the same compression; NULL if none exists
 * (then *tried holds the first name tried) */
static char *partner(const char *path, file_kind k, size_t base, bool gz, char *tried, size_t tn) {
    const char *ext = k == K_HDR ? ".img" : ".hdr";
    size_t n = base + 8;
    char *a = malloc(n), *b = malloc(n);
    if (!a || !b) {
        free(a);
        free(b);
        return NULL;
    }
    /* keep the case of the given extension ("X.HDR" -> "X.IMG") */
    const char *given = path + base + 1;
    bool upper = given[0] >= 'A' && given[0] <= 'Z';
    char e1[8], e2[8];
    snprintf(e1, sizeof e1, "%s%s", ext, gz ? ".gz" : "");
    snprintf(e2, sizeof e2, "%s%s", ext, gz ? "" : ".gz");
    if (upper)
        for (int i = 0; e1[i]; i++) {
            if (e1[i] >= 'a' && e1[i] <= 'z') e1[i] = (char)(e1[i] - 32);
        }
    if (upper)
        for (int i = 0; e2[i]; i++) {
            if (e2[i] >= 'a' && e2[i] <= 'z') e2[i] = (char)(e2[i] - 32);
        }
    snprintf(a, n, "%.*s%s", (int)base, path, e1);
    snprintf(b, n, "%.*s%s", (int)base, path, e2);
    snprintf(tried, tn, "%s", a);
    if (file_exists(a)) {
        free(b);
        return a;
    }
    if (file_exists(b)) {
        free(a);
        return b;
    }
    free(a);
    free(b);
    return NULL;
}

static ml_err read_header_file(nsrc *s, const char *path, nii_hdr *h, bool pair) {
    ml_err e = src_open_file(s, path);
    if (e) return e;
    uint8_t hb[HDR_READ];
    size_t hn = 0;
    if ((e = src_header(s, hb, &hn)) || (e = parse_header(h, hb, hn, path, pair))) {
        src_close(s);
        return e;
    }
    return ML_OK;
}

ml_err ml_nifti_read(ml_volume **out, const char *path, const ml_nifti_read_opts *opts) {
    *out = NULL;
    if (!path || !*path) return ml_seterr(ML_ERR_ARG, "nifti: empty path");
    ml_nifti_read_opts o;
    if (opts) o = *opts;
    else ml_nifti_read_opts_init(&o);
    if ((unsigned)o.dtype > ML_NIFTI_OUT_NATIVE) return nerr(ML_ERR_ARG, path, "bad output dtype option %d", o.dtype);
    size_t base;
    bool gz;
    file_kind k = path_kind(path, &base, &gz);
    nii_hdr h;
    nsrc s;
    ml_err e;
    if (k == K_SINGLE) {
        if ((e = read_header_file(&s, path, &h, false))) return e;
        e = src_volume(out, &s, &h, &o);
        src_close(&s);
        return e;
    }
    char tried[4096];
    char *other = partner(path, k, base, gz, tried, sizeof tried);
    if (!other) {
        if (!file_exists(path)) return nerr(ML_ERR_IO, path, "cannot open: %s", strerror(ENOENT));
        return nerr(ML_ERR_IO, path, "the %s file of this pair is missing (tried %s and its %s variant)",
                    k == K_HDR ? "image (.img)" : "header (.hdr)", tried, gz ? "uncompressed" : ".gz");
    }
    const char *hp = k == K_HDR ? path : other, *ip = k == K_HDR ? other : path;
    if ((e = read_header_file(&s, hp, &h, true))) {
        free(other);
        return e;
    }
    src_close(&s);
    nsrc d;
    if ((e = src_open_file(&d, ip))) {
        free(other);
        return e;
    }
    e = src_volume(out, &d, &h, &o);
    src_close(&d);
    free(other);
    return e;
}

ml_err ml_nifti_read_info(ml_nifti_info *info, const char *path) {
    memset(info, 0, sizeof *info);
    if (!path || !*path) return ml_seterr(ML_ERR_ARG, "nifti: empty path");
    size_t base;
    bool gz;
    file_kind k = path_kind(path, &base, &gz);
    const char *hp = path;
    char *other = NULL;
    if (k == K_IMG) {
        char tried[4096];
        other = partner(path, k, base, gz, tried, sizeof tried);
        if (!other) return nerr(ML_ERR_IO, path, "the header (.hdr) file of this pair is missing (tried %s)", tried);
        hp = other;
    }
    /* header only: a .gz file is inflated just far enough */
    int fd = -1;
    uint64_t size = 0;
    ml_err e = open_regular(hp, &fd, &size);
    if (e) {
        free(other);
        return e;
    }
    uint8_t hb[HDR_READ];
    size_t hn = 0;
    size_t first = size < 65536 ? (size_t)size : 65536;
    uint8_t *zb = malloc(first ? first : 1);
    if (!zb) e = nerr(ML_ERR_OOM, hp, "out of memory");
    if (!e) e = pread_all(fd, hp, zb, first, 0);
    if (!e) {
        if (is_gz(zb, first)) {
            char msg[256] = "";
            int r = gz_prefix_zlib(zb, first, hb, HDR_READ, &hn, msg, sizeof msg);
            if (r < 0) e = nerr(ML_ERR_IO, hp, "gzip data is corrupt: %s", msg);
        } else {
            hn = first < HDR_READ ? first : HDR_READ;
            memcpy(hb, zb, hn);
        }
    }
    free(zb);
    close(fd);
    nii_hdr h;
    if (!e) e = parse_header(&h, hb, hn, hp, k != K_SINGLE);
    if (!e) *info = h.in;
    free(other);
    return e;
}

/* ================================================================ writing */
void ml_nifti_write_opts_init(ml_nifti_write_opts *o) {
    memset(o, 0, sizeof *o);
    o->compression_level = 1;
}

/* closest orthogonal matrix (Newton polar iteration X <- (X + X^-T) / 2); false if singular */
static bool polar3(double x[9]) {
    for (int it = 0; it < 100; it++) {
        double det = x[0] * (x[4] * x[8] - x[5] * x[7]) - x[1] * (x[3] * x[8] - x[5] * x[6]) +
                     x[2] * (x[3] * x[7] - x[4] * x[6]);
        if (!(fabs(det) > 1e-12)) return false;
        double cof[9] = {
            (x[4] * x[8] - x[5] * x[7]),  -(x[3] * x[8] - x[5] * x[6]), (x[3] * x[7] - x[4] * x[6]),
            -(x[1] * x[8] - x[2] * x[7]), (x[0] * x[8] - x[2] * x[6]),  -(x[0] * x[7] - x[1] * x[6]),
            (x[1] * x[5] - x[2] * x[4]),  -(x[0] * x[5] - x[2] * x[3]), (x[0] * x[4] - x[1] * x[3]),
        };
        double diff = 0;
        for (int i = 0; i < 9; i++) {
            double nv = 0.5 * (x[i] + cof[i] / det);
            diff += fabs(nv - x[i]);
            x[i] = nv;
        }
        if (diff < 1e-15) break;
    }
    return true;
}

void ml_nifti_affine_to_qform(const double A[16], double pd[4], double quat[3], double off[3]) {
    double R[9], zooms[3];
    for (int c = 0; c < 3; c++) {
        zooms[c] = sqrt(A[c] * A[c] + A[4 + c] * A[4 + c] + A[8 + c] * A[8 + c]);
        for (int r = 0; r < 3; r++) R[r * 3 + c] = zooms[c] > 0 ? A[r * 4 + c] / zooms[c] : (r == c);
    }
    double det = R[0] * (R[4] * R[8] - R[5] * R[7]) - R[1] * (R[3] * R[8] - R[5] * R[6]) +
                 R[2] * (R[3] * R[7] - R[4] * R[6]);
    double qfac = 1;
    if (!(det > 0)) {
        qfac = -1;
        R[2] = -R[2];
        R[5] = -R[5];
        R[8] = -R[8];
    }
    if (!polar3(R)) {
        memset(R, 0, sizeof R);
        R[0] = R[4] = R[8] = 1;
    }
    /* rotation -> quaternion (w >= 0), Shepperd's method */
    double m00 = R[0], m01 = R[1], m02 = R[2], m10 = R[3], m11 = R[4], m12 = R[5], m20 = R[6], m21 = R[7], m22 = R[8];
    double w, x, y, z, tr = m00 + m11 + m22;
    if (tr > 0) {
        double s = sqrt(tr + 1.0) * 2;
        w = 0.25 * s;
        x = (m21 - m12) / s;
        y = (m02 - m20) / s;
        z = (m10 - m01) / s;
    } else if (m00 > m11 && m00 > m22) {
        double s = sqrt(1.0 + m00 - m11 - m22) * 2;
        w = (m21 - m12) / s;
        x = 0.25 * s;
        y = (m01 + m10) / s;
        z = (m02 + m20) / s;
    } else if (m11 > m22) {
        double s = sqrt(1.0 + m11 - m00 - m22) * 2;
        w = (m02 - m20) / s;
        x = (m01 + m10) / s;
        y = 0.25 * s;
        z = (m12 + m21) / s;
    } else {
        double s = sqrt(1.0 + m22 - m00 - m11) * 2;
        w = (m10 - m01) / s;
        x = (m02 + m20) / s;
        y = (m12 + m21) / s;
        z = 0.25 * s;
    }
    if (w < 0) {
        x = -x;
        y = -y;
        z = -z;
    }
    pd[0] = qfac;
    for (int i = 0; i < 3; i++) pd[i + 1] = zooms[i];
    quat[0] = x;
    quat[1] = y;
    quat[2] = z;
    for (int i = 0; i < 3; i++) off[i] = A[i * 4 + 3];
}

static void wr16(uint8_t *p, int v) {
    int16_t x = (int16_t)v;
    memcpy(p, &x, 2);
}
static void wr32(uint8_t *p, int32_t v) { memcpy(p, &v, 4); }
static void wr64(uint8_t *p, int64_t v) { memcpy(p, &v, 8); }
static void wrf32(uint8_t *p, double v) {
    float f = (float)v;
    memcpy(p, &f, 4);
}
static void wrf64(uint8_t *p, double v) { memcpy(p, &v, 8); }

/* header bytes (little-endian host assumed, as everywhere in medlua) */
static size_t build_header(uint8_t *b, const ml_volume *v, const dt_info *dt, bool n2, bool single) {
    const ml_tensor *t = v->data;
    int nd = t->ndim;
    double pd[4], q[3], off[3];
    ml_nifti_affine_to_qform(v->affine, pd, q, off);
    int qc = v->meta.qform_code > 0 && v->meta.qform_code <= 5 ? v->meta.qform_code : 1;
    int sc = v->meta.sform_code > 0 && v->meta.sform_code <= 5 ? v->meta.sform_code : 1;
    double cal_min = 0, cal_max = 0;
    if (v->meta.has_window && isfinite(v->meta.window_center) && isfinite(v->meta.window_width) &&
        v->meta.window_width > 0) {
        cal_min = v->meta.window_center - v->meta.window_width / 2;
        cal_max = v->meta.window_center + v->meta.window_width / 2;
    }
    int units = 2 | (nd == 4 ? 8 : 0); /* mm, s */
    double pixdim[8] = {pd[0], pd[1], pd[2], pd[3], 1, 1, 1, 1};
    char descrip[80];
    memset(descrip, 0, sizeof descrip);
    size_t dl = strnlen(v->meta.description, 79);
    memcpy(descrip, v->meta.description, dl);
    size_t hs;
    if (!n2) {
        hs = N1_SIZE;
        memset(b, 0, N1_SIZE + 4);
        wr32(b, N1_SIZE);
        b[38] = 'r'; /* regular */
        wr16(b + 40, nd);
        for (int i = 1; i < 8; i++) wr16(b + 40 + 2 * i, i <= nd ? (int)t->shape[i - 1] : 1);
        wr16(b + 70, dt->code);
        wr16(b + 72, dt->size * 8);
        for (int i = 0; i < 8; i++) wrf32(b + 76 + 4 * i, pixdim[i]);
        wrf32(b + 108, single ? N1_SIZE + 4 : 0);
        wrf32(b + 112, 1);
        wrf32(b + 116, 0);
        b[123] = (uint8_t)units;
        wrf32(b + 124, cal_max);
        wrf32(b + 128, cal_min);
        memcpy(b + 148, descrip, 80);
        wr16(b + 252, qc);
        wr16(b + 254, sc);
        for (int i = 0; i < 3; i++) wrf32(b + 256 + 4 * i, q[i]);
        for (int i = 0; i < 3; i++) wrf32(b + 268 + 4 * i, off[i]);
        for (int i = 0; i < 12; i++) wrf32(b + 280 + 4 * i, v->affine[i]);
        memcpy(b + 344, single ? "n+1\0" : "ni1\0", 4);
    } else {
        hs = N2_SIZE;
        memset(b, 0, N2_SIZE + 4);
        wr32(b, N2_SIZE);
        memcpy(b + 4, single ? "n+2\0\r\n\032\n" : "ni2\0\r\n\032\n", 8);
        wr16(b + 12, dt->code);
        wr16(b + 14, dt->size * 8);
        wr64(b + 16, nd);
        for (int i = 1; i < 8; i++) wr64(b + 16 + 8 * i, i <= nd ? t->shape[i - 1] : 1);
        for (int i = 0; i < 8; i++) wrf64(b + 104 + 8 * i, pixdim[i]);
        wr64(b + 168, single ? N2_SIZE + 4 : 0);
        wrf64(b + 176, 1);
        wrf64(b + 184, 0);
        wrf64(b + 192, cal_max);
        wrf64(b + 200, cal_min);
        memcpy(b + 240, descrip, 80);
        wr32(b + 344, qc);
        wr32(b + 348, sc);
        for (int i = 0; i < 3; i++) wrf64(b + 352 + 8 * i, q[i]);
        for (int i = 0; i < 3; i++) wrf64(b + 376 + 8 * i, off[i]);
        for (int i = 0; i < 12; i++) wrf64(b + 400 + 8 * i, v->affine[i]);
        wr32(b + 500, units);
    }
    return single ? hs + 4 : hs;
}

/* --- data: tensor (any strides, any dtype) -> file order bytes of the target type */
typedef struct {
    bool bad;
    double badval;
} fill_state;

static int default_datatype(ml_dtype dt) {
    switch (dt) {
    case ML_U8:
    case ML_BOOL: return ML_NIFTI_DT_UINT8;
    case ML_I32: return ML_NIFTI_DT_INT32;
    case ML_I64: return ML_NIFTI_DT_INT64;
    case ML_F64: return ML_NIFTI_DT_FLOAT64;
    default: return ML_NIFTI_DT_FLOAT32;
    }
}

/* one line of n elements: src (typed base, element stride st) -> dst. Returns false on a value that
 * does not fit (*bv = the value). */
#define LOAD_INT(T) ((int64_t)((const T *)s)[i * st])
static bool fill_line(uint8_t *dst, const dt_info *dd, const void *s, ml_dtype sdt, int64_t st, int64_t n,
                      double *bv) {
    bool src_float = sdt == ML_F32 || sdt == ML_F64 || sdt == ML_F16 || sdt == ML_BF16;
    if (!src_float) {
        for (int64_t i = 0; i < n; i++) {
            int64_t x;
            switch (sdt) {
            case ML_U8: x = LOAD_INT(uint8_t); break;
            case ML_BOOL: x = ((const uint8_t *)s)[i * st] != 0; break;
            case ML_I32: x = LOAD_INT(int32_t); break;
            default: x = LOAD_INT(int64_t); break;
            }
            uint8_t *p = dst + i * dd->size;
            switch (dd->code) {
            case ML_NIFTI_DT_UINT8:
                if (x < 0 || x > 255) goto bad_int;
                *p = (uint8_t)x;
                break;
            case ML_NIFTI_DT_INT8:
                if (x < -128 || x > 127) goto bad_int;
                *(int8_t *)p = (int8_t)x;
                break;
            case ML_NIFTI_DT_INT16: {
                if (x < INT16_MIN || x > INT16_MAX) goto bad_int;
                int16_t y = (int16_t)x;
                memcpy(p, &y, 2);
            } break;
            case ML_NIFTI_DT_UINT16: {
                if (x < 0 || x > UINT16_MAX) goto bad_int;
                uint16_t y = (uint16_t)x;
                memcpy(p, &y, 2);
            } break;
            case ML_NIFTI_DT_INT32: {
                if (x < INT32_MIN || x > INT32_MAX) goto bad_int;
                int32_t y = (int32_t)x;
                memcpy(p, &y, 4);
            } break;
            case ML_NIFTI_DT_UINT32: {
                if (x < 0 || x > (int64_t)UINT32_MAX) goto bad_int;
                uint32_t y = (uint32_t)x;
                memcpy(p, &y, 4);
            } break;
            case ML_NIFTI_DT_INT64: memcpy(p, &x, 8); break;
            case ML_NIFTI_DT_UINT64: {
                if (x < 0) goto bad_int;
                uint64_t y = (uint64_t)x;
                memcpy(p, &y, 8);
            } break;
            case ML_NIFTI_DT_FLOAT32: {
                float y = (float)x;
                memcpy(p, &y, 4);
            } break;
            default: {
                double y = (double)x;
                memcpy(p, &y, 8);
            } break;
            }
            continue;
        bad_int:
            *bv = (double)x;
            return false;
        }
        return true;
    }
    for (int64_t i = 0; i < n; i++) {
        double x;
        switch (sdt) {
        case ML_F32: x = ((const float *)s)[i * st]; break;
        case ML_F64: x = ((const double *)s)[i * st]; break;
        case ML_F16: x = ml_f16_to_f32(((const uint16_t *)s)[i * st]); break;
        default: x = ml_bf16_to_f32(((const uint16_t *)s)[i * st]); break;
        }
        uint8_t *p = dst + i * dd->size;
        if (dd->code == ML_NIFTI_DT_FLOAT64) {
            memcpy(p, &x, 8);
            continue;
        }
        if (dd->code == ML_NIFTI_DT_FLOAT32) {
            if (isfinite(x) && fabs(x) > FLT_MAX) goto bad_flt;
            float y = (float)x;
            memcpy(p, &y, 4);
            continue;
        }
        double r = nearbyint(x);
        if (isnan(r)) goto bad_flt;
        switch (dd->code) {
        case ML_NIFTI_DT_UINT8:
            if (!(r >= 0 && r <= 255)) goto bad_flt;
            *p = (uint8_t)r;
            break;
        case ML_NIFTI_DT_INT8:
            if (!(r >= -128 && r <= 127)) goto bad_flt;
            *(int8_t *)p = (int8_t)r;
            break;
        case ML_NIFTI_DT_INT16: {
            if (!(r >= INT16_MIN && r <= INT16_MAX)) goto bad_flt;
            int16_t y = (int16_t)r;
            memcpy(p, &y, 2);
        } break;
        case ML_NIFTI_DT_UINT16: {
            if (!(r >= 0 && r <= UINT16_MAX)) goto bad_flt;
            uint16_t y = (uint16_t)r;
            memcpy(p, &y, 2);
        } break;
        case ML_NIFTI_DT_INT32: {
            if (!(r >= INT32_MIN && r <= INT32_MAX)) goto bad_flt;
            int32_t y = (int32_t)r;
            memcpy(p, &y, 4);
        } break;
        case ML_NIFTI_DT_UINT32: {
            if (!(r >= 0 && r <= UINT32_MAX)) goto bad_flt;
            uint32_t y = (uint32_t)r;
            memcpy(p, &y, 4);
        } break;
        case ML_NIFTI_DT_INT64: {
            if (!(r >= -9223372036854775808.0 && r < 9223372036854775808.0)) goto bad_flt;
            int64_t y = (int64_t)r;
            memcpy(p, &y, 8);
        } break;
        default: {
            if (!(r >= 0 && r < 18446744073709551616.0)) goto bad_flt;
            uint64_t y = (uint64_t)r;
            memcpy(p, &y, 8);
        } break;
        }
        continue;
    bad_flt:
        *bv = x;
        return false;
    }
    return true;
}

/* dst <- t in file order (i fastest) as type dd; false + *bv on a value that does not fit */
static bool fill_data(uint8_t *dst, const ml_tensor *t, const dt_info *dd, double *bv) {
    int64_t X = t->shape[0], Y = t->shape[1], Z = t->shape[2], T = t->ndim == 4 ? t->shape[3] : 1;
    int64_t s0 = t->stride[0], s1 = t->stride[1], s2 = t->stride[2], s3 = t->ndim == 4 ? t->stride[3] : 0;
    size_t es = ml_dtype_size((ml_dtype)t->dtype);
    const uint8_t *base = ml_tensor_data(t);
    int64_t lines = Y * Z * T;
    int nt = ml_num_threads();
    if (X * lines < CONV_BLOCK) nt = 1;
    bool bad = false;
    double badv = 0;
    ML_PAR_FOR(int64_t, l, lines, {
        int64_t j = l % Y, k = (l / Y) % Z, tt = l / (Y * Z);
        const uint8_t *s = base + (j * s1 + k * s2 + tt * s3) * (int64_t)es;
        double b = 0;
        if (!fill_line(dst + l * X * dd->size, dd, s, (ml_dtype)t->dtype, s0, X, &b)) {
            _Pragma("omp critical(ml_nifti_bad)") {
                if (!bad) {
                    bad = true;
                    badv = b;
                }
            }
        }
    });
    *bv = badv;
    return !bad;
}

/* ---------------------------------------------------------- atomic files */
static atomic_uint g_tmp_seq;

typedef struct {
    char *tmp;
    const char *path;
    int fd;
} tmpfile_t;

static ml_err tmp_open(tmpfile_t *f, const char *path) {
    f->path = path;
    f->fd = -1;
    size_t tl = strlen(path) + 64;
    f->tmp = malloc(tl);
    if (!f->tmp) return nerr(ML_ERR_OOM, path, "out of memory");
    snprintf(f->tmp, tl, "%s.tmp.%ld.%u", path, (long)getpid(), atomic_fetch_add(&g_tmp_seq, 1));
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (f->fd < 0 && errno == EEXIST) {
        unlink(f->tmp);
        f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    }
    if (f->fd < 0) {
        int er = errno;
        ml_err e = nerr(ML_ERR_IO, path, "cannot create temporary file '%s': %s", f->tmp, strerror(er));
        free(f->tmp);
        f->tmp = NULL;
        return e;
    }
    return ML_OK;
}

static ml_err tmp_write(tmpfile_t *f, const void *buf, size_t n) {
    const uint8_t *p = buf;
    while (n > 0) {
        size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
        ssize_t w = write(f->fd, p, chunk);
        if (w < 0) {
            if (errno == EINTR) continue;
            return nerr(ML_ERR_IO, f->path, "write failed: %s", strerror(errno));
        }
        p += w;
        n -= (size_t)w;
    }
    return ML_OK;
}

static ml_err tmp_finish(tmpfile_t *f) {
    if (fsync(f->fd) != 0) return nerr(ML_ERR_IO, f->path, "fsync failed: %s", strerror(errno));
    int rc = close(f->fd);
    f->fd = -1;
    if (rc != 0) return nerr(ML_ERR_IO, f->path, "close failed: %s", strerror(errno));
    return ML_OK;
}

static ml_err tmp_commit(tmpfile_t *f) {
    if (rename(f->tmp, f->path) != 0)
        return nerr(ML_ERR_IO, f->path, "cannot rename '%s' into place: %s", f->tmp, strerror(errno));
    free(f->tmp);
    f->tmp = NULL;
    return ML_OK;
}

static void tmp_abort(tmpfile_t *f) {
    if (f->fd >= 0) close(f->fd);
    f->fd = -1;
    if (f->tmp) {
        unlink(f->tmp);
        free(f->tmp);
        f->tmp = NULL;
    }
}

/* ------------------------------------------------------------ compression */
#define GZ_MEMBER ((size_t)16 << 20)
#define GZ_PARALLEL_MIN ((size_t)32 << 20)

/* gzip of buf[0..n) (one member, or 16 MiB members compressed in parallel for big payloads) */
static ml_err gz_compress(const char *path, const uint8_t *buf, size_t n, int level, uint8_t **out, size_t *out_n) {
    *out = NULL;
    *out_n = 0;
    size_t nm = n > GZ_PARALLEL_MIN && ml_num_threads() > 1 ? (n + GZ_MEMBER - 1) / GZ_MEMBER : 1;
    size_t msz = nm == 1 ? n : GZ_MEMBER;
    struct libdeflate_compressor *c0 = libdeflate_alloc_compressor(level);
    if (!c0) return nerr(ML_ERR_OOM, path, "cannot allocate a level-%d compressor", level);
    size_t bound = libdeflate_gzip_compress_bound(c0, msz);
    libdeflate_free_compressor(c0);
    uint8_t *dst = NULL;
    size_t *sizes = calloc(nm, sizeof *sizes);
    if (!sizes || (bound && nm > SIZE_MAX / bound) || !(dst = malloc(nm * bound))) {
        free(sizes);
        free(dst);
        return nerr(ML_ERR_OOM, path, "out of memory for the compressed data");
    }
    int nt = ml_num_threads();
    if (nm < 2) nt = 1;
    if ((size_t)nt > nm) nt = (int)nm;
    bool fail = false;
    if (nt > 1) {
#pragma omp parallel num_threads(nt)
        {
            struct libdeflate_compressor *c = libdeflate_alloc_compressor(level);
#pragma omp for schedule(dynamic, 1)
            for (size_t m = 0; m < nm; m++) {
                size_t a = m * msz, len = n - a < msz ? n - a : msz;
                size_t r = c ? libdeflate_gzip_compress(c, buf + a, len, dst + m * bound, bound) : 0;
                if (!r) fail = true;
                sizes[m] = r;
            }
            if (c) libdeflate_free_compressor(c);
        }
    } else {
        struct libdeflate_compressor *c = libdeflate_alloc_compressor(level);
        size_t r = c ? libdeflate_gzip_compress(c, buf, n, dst, bound) : 0;
        if (c) libdeflate_free_compressor(c);
        if (!r) fail = true;
        sizes[0] = r;
    }
    if (fail) {
        free(sizes);
        free(dst);
        return nerr(ML_ERR_INTERNAL, path, "gzip compression failed");
    }
    size_t pos = sizes[0];
    for (size_t m = 1; m < nm; m++) {
        memmove(dst + pos, dst + m * bound, sizes[m]);
        pos += sizes[m];
    }
    free(sizes);
    *out = dst;
    *out_n = pos;
    return ML_OK;
}

/* ------------------------------------------------------------------ write */
ml_err ml_nifti_write(const ml_volume *v, const char *path, const ml_nifti_write_opts *opts) {
    if (!path || !*path) return ml_seterr(ML_ERR_ARG, "nifti: write: empty path");
    if (!v || !v->data) return nerr(ML_ERR_ARG, path, "write: no volume");
    ml_nifti_write_opts o;
    if (opts) o = *opts;
    else ml_nifti_write_opts_init(&o);
    ml_tensor *t = v->data;
    if (t->storage->device.type != ML_CPU)
        return nerr(ML_ERR_DEVICE, path, "the volume's data is on %s; move it to the CPU before saving",
                    ml_device_str(t->storage->device));
    if (t->ndim != 3 && t->ndim != 4)
        return nerr(ML_ERR_SHAPE, path, "data must be 3-D or 4-D, got %s", ml_shape_str(t->ndim, t->shape));
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] < 1)
            return nerr(ML_ERR_SHAPE, path, "cannot write an empty volume (shape %s)", ml_shape_str(t->ndim, t->shape));
    for (int i = 0; i < 16; i++)
        if (!isfinite(v->affine[i])) return nerr(ML_ERR_ARG, path, "the affine has a non-finite entry");
    int code = o.datatype ? o.datatype : default_datatype((ml_dtype)t->dtype);
    const dt_info *dd = dt_find(code);
    if (!dd) return nerr(ML_ERR_ARG, path, "cannot write datatype %d (%s)", code, ml_nifti_datatype_name(code));
    if (o.compression_level < 0 || o.compression_level > 12)
        return nerr(ML_ERR_ARG, path, "compression_level %d out of range 0..12", o.compression_level);
    bool n2 = o.nifti2;
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] > 32767) n2 = true;
    size_t base;
    bool gz_ext;
    file_kind k = path_kind(path, &base, &gz_ext);
    bool gz = k == K_SINGLE ? ends_with(path, ".gz") : gz_ext;
    if (k == K_SINGLE && !ends_with(path, ".nii") && !ends_with(path, ".nii.gz"))
        return nerr(ML_ERR_ARG, path, "unknown NIfTI extension (expected .nii, .nii.gz, .hdr or .img)");
    if (k != K_SINGLE && gz)
        return nerr(ML_ERR_ARG, path, "compressed .hdr/.img pairs are not written; use .nii.gz or a plain pair");
    ml_err e = ml_tensor_plain(t);
    if (e) {
        char why[512];
        snprintf(why, sizeof why, "%s", ml_errmsg());
        return nerr(e, path, "%s", why);
    }
    uint64_t numel = (uint64_t)ml_tensor_numel(t), nb;
    if (__builtin_mul_overflow(numel, (uint64_t)dd->size, &nb) || nb > MAX_BYTES)
        return nerr(ML_ERR_ARG, path, "volume too large");

    bool single = k == K_SINGLE;
    uint8_t hdr[N2_SIZE + 4];
    size_t hlen = build_header(hdr, v, dd, n2, single);

    /* data in file order: borrowed from the tensor when it already is, else converted */
    int64_t fs[4];
    file_order_strides(t->ndim, t->shape, fs);
    bool direct = default_datatype((ml_dtype)t->dtype) == code && t->dtype != ML_BOOL && t->dtype != ML_F16 &&
                  t->dtype != ML_BF16;
    for (int i = 0; i < t->ndim && direct; i++)
        if (t->shape[i] > 1 && t->stride[i] != fs[i]) direct = false;
    uint8_t *buf = NULL; /* hlen (single + gz) + nb bytes */
    size_t lead = (single && gz) ? hlen : 0;
    const uint8_t *data = direct ? (const uint8_t *)ml_tensor_data(t) : NULL;
    if (!direct || gz) {
        buf = malloc(lead + (size_t)nb);
        if (!buf) return nerr(ML_ERR_OOM, path, "out of memory (%llu bytes)", (unsigned long long)(lead + nb));
        memcpy(buf, hdr, lead);
        if (direct) memcpy(buf + lead, data, (size_t)nb);
        else {
            double bv = 0;
            if (!fill_data(buf + lead, t, dd, &bv)) {
                free(buf);
                if (isnan(bv)) return nerr(ML_ERR_ARG, path, "NaN cannot be stored as %s", dd->name);
                return nerr(ML_ERR_ARG, path, "value %.17g does not fit %s; write a wider dtype", bv, dd->name);
            }
        }
        data = buf + lead;
    }

    tmpfile_t fi = {0}, fh = {0};
    fi.fd = fh.fd = -1;
    char *img_path = NULL, *hdr_path = NULL;
    uint8_t *z = NULL;
    if (single) {
        if ((e = tmp_open(&fi, path))) goto done;
        if (gz) {
            size_t zn = 0;
            if ((e = gz_compress(path, buf, lead + (size_t)nb, o.compression_level, &z, &zn))) goto done;
            if ((e = tmp_write(&fi, z, zn))) goto done;
        } else if ((e = tmp_write(&fi, hdr, hlen)) || (e = tmp_write(&fi, data, (size_t)nb)))
            goto done;
        if ((e = tmp_finish(&fi)) || (e = tmp_commit(&fi))) goto done;
    } else {
        size_t pl = base + 8;
        img_path = malloc(pl);
        hdr_path = malloc(pl);
        if (!img_path || !hdr_path) {
            e = nerr(ML_ERR_OOM, path, "out of memory");
            goto done;
        }
        bool upper = path[base + 1] >= 'A' && path[base + 1] <= 'Z';
        snprintf(img_path, pl, "%.*s%s", (int)base, path, upper ? ".IMG" : ".img");
        snprintf(hdr_path, pl, "%.*s%s", (int)base, path, upper ? ".HDR" : ".hdr");
        if ((e = tmp_open(&fi, img_path)) || (e = tmp_open(&fh, hdr_path))) goto done;
        if ((e = tmp_write(&fi, data, (size_t)nb)) || (e = tmp_write(&fh, hdr, hlen))) goto done;
        if ((e = tmp_finish(&fi)) || (e = tmp_finish(&fh))) goto done;
        if ((e = tmp_commit(&fi)) || (e = tmp_commit(&fh))) goto done;
    }
    /* durable rename (best effort) */
    {
        const char *slash = strrchr(path, '/');
        size_t dl = slash ? (slash == path ? 1 : (size_t)(slash - path)) : 1;
        char *dir = malloc(dl + 1);
        if (dir) {
            memcpy(dir, slash ? path : ".", dl);
            dir[dl] = 0;
            int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (dfd >= 0) {
                (void)fsync(dfd);
                close(dfd);
            }
            free(dir);
        }
    }
done:
    tmp_abort(&fi);
    tmp_abort(&fh);
    free(z);
    free(buf);
    free(img_path);
    free(hdr_path);
    return e;
}
