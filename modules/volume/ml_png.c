/* PNG writer/reader. 8-bit goes through stb_image_write with libdeflate plugged in as its zlib
 * compressor (stb's own deflate is slow); stb_image_write has no 16-bit PNG, so 16-bit images are
 * written here: IHDR, one IDAT (zlib via libdeflate, filter 0 per row), IEND. */
#include "volume/ml_png.h"

#include <errno.h>
#include <libdeflate.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* stb declares static functions it never defines when parts are disabled */
#pragma GCC diagnostic ignored "-Wunused-function"

static unsigned char *ml_zlib_compress(unsigned char *data, int len, int *out_len, int quality) {
    (void)quality;
    struct libdeflate_compressor *c = libdeflate_alloc_compressor(6);
    if (!c) return NULL;
    size_t bound = libdeflate_zlib_compress_bound(c, (size_t)len);
    unsigned char *out = malloc(bound);
    size_t n = out ? libdeflate_zlib_compress(c, data, (size_t)len, out, bound) : 0;
    libdeflate_free_compressor(c);
    if (!n) {
        free(out);
        return NULL;
    }
    *out_len = (int)n;
    return out;
}

#define STBIW_ZLIB_COMPRESS ml_zlib_compress
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBI_WRITE_NO_STDIO
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_NO_STDIO
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#include <stb/stb_image_write.h>
#include <stb/stb_image.h>
#pragma GCC diagnostic pop

ml_err ml_write_file_atomic(const char *op, const char *path, const void *data, size_t n) {
    size_t len = strlen(path);
    char *tmp = malloc(len + 16);
    if (!tmp) return ml_seterr(ML_ERR_OOM, "%s: %s: out of memory", op, path);
    snprintf(tmp, len + 16, "%s.tmp-XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        ml_err e = ml_seterr(ML_ERR_IO, "%s: %s: cannot create file: %s", op, path, strerror(errno));
        free(tmp);
        return e;
    }
    const char *p = data;
    size_t left = n;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            ml_err e = ml_seterr(ML_ERR_IO, "%s: %s: write failed: %s", op, path, strerror(w < 0 ? errno : ENOSPC));
            close(fd);
            unlink(tmp);
            free(tmp);
            return e;
        }
        p += w;
        left -= (size_t)w;
    }
    /* mkstemp makes 0600; give the file the usual permissions */
    mode_t um = umask(0);
    umask(um);
    fchmod(fd, 0666 & ~um);
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        ml_err e = ml_seterr(ML_ERR_IO, "%s: %s: cannot write: %s", op, path, strerror(errno));
        unlink(tmp);
        free(tmp);
        return e;
    }
    free(tmp);
    return ML_OK;
}

/* image geometry + values as bytes (8-bit) or big-endian 16-bit, row-major, channels interleaved */
static ml_err pack(const ml_tensor *img, int bits, int *h, int *w, int *c, unsigned char **buf) {
    if (img->ndim != 2 && img->ndim != 3)
        return ml_seterr(ML_ERR_SHAPE, "png: image must be [H, W] or [H, W, C], got %s",
                         ml_shape_str(img->ndim, img->shape));
    int64_t H = img->shape[0], W = img->shape[1], C = img->ndim == 3 ? img->shape[2] : 1;
    if (C != 1 && C != 3 && C != 4)
        return ml_seterr(ML_ERR_SHAPE, "png: channels must be 1, 3 or 4, got %lld (shape %s)", (long long)C,
                         ml_shape_str(img->ndim, img->shape));
    if (H <= 0 || W <= 0 || H > 65535 || W > 65535)
        return ml_seterr(ML_ERR_SHAPE, "png: image size %s out of range (1..65535 per side)",
                         ml_shape_str(img->ndim, img->shape));
    if (bits != 8 && bits != 16) return ml_seterr(ML_ERR_ARG, "png: bits must be 8 or 16, got %d", bits);
    if (img->storage->device.type != ML_CPU) return ml_seterr(ML_ERR_DEVICE, "png: image must be on the CPU");
    int bpv = bits / 8;
    double vmax = bits == 8 ? 255.0 : 65535.0;
    unsigned char *b = malloc((size_t)(H * W * C * bpv));
    if (!b) return ml_seterr(ML_ERR_OOM, "png: out of memory");
    int bad = 0;
    double badv = 0;
#pragma omp parallel for schedule(static) if (H * W > 65536)
    for (int64_t y = 0; y < H; y++) {
        for (int64_t x = 0; x < W; x++)
            for (int64_t ch = 0; ch < C; ch++) {
                int64_t idx[3] = {y, x, ch};
                double v = ml_tensor_get(img, idx);
                double r = nearbyint(v);
                if (!(r >= 0 && r <= vmax)) {
#pragma omp critical
                    {
                        bad = 1;
                        badv = v;
                    }
                    r = 0;
                }
                size_t o = (size_t)((y * W + x) * C + ch);
                if (bpv == 1) b[o] = (unsigned char)r;
                else {
                    unsigned u = (unsigned)r;
                    b[2 * o] = (unsigned char)(u >> 8);
                    b[2 * o + 1] = (unsigned char)(u & 255);
                }
            }
    }
    if (bad) {
        free(b);
        return ml_seterr(ML_ERR_ARG, "png: value %g outside [0, %g] for a %d-bit image (scale or clamp first)", badv,
                         vmax, bits);
    }
    *h = (int)H;
    *w = (int)W;
    *c = (int)C;
    *buf = b;
    return ML_OK;
}

typedef struct {
    unsigned char *p;
    size_t n, cap;
    int oom;
} membuf;

static void mb_put(membuf *m, const void *d, size_t n) {
    if (m->oom) return;
    if (m->n + n > m->cap) {
        size_t nc = m->cap ? m->cap * 2 : 4096;
        while (nc < m->n + n) nc *= 2;
        unsigned char *q = realloc(m->p, nc);
        if (!q) {
            m->oom = 1;
            return;
        }
        m->p = q;
        m->cap = nc;
    }
    memcpy(m->p + m->n, d, n);
    m->n += n;
}

static void stb_sink(void *ctx, void *data, int size) { mb_put(ctx, data, (size_t)size); }

static void put_be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static void png_chunk(membuf *m, const char type[4], const unsigned char *d, size_t n) {
    unsigned char hdr[8];
    put_be32(hdr, (uint32_t)n);
    memcpy(hdr + 4, type, 4);
    mb_put(m, hdr, 8);
    if (n) mb_put(m, d, n);
    uint32_t crc = libdeflate_crc32(0, type, 4);
    if (n) crc = libdeflate_crc32(crc, d, n);
    unsigned char c[4];
    put_be32(c, crc);
    mb_put(m, c, 4);
}

static ml_err encode16(int h, int w, int c, const unsigned char *px, membuf *m) {
    size_t row = (size_t)w * (size_t)c * 2;
    size_t raw_n = (row + 1) * (size_t)h;
    unsigned char *raw = malloc(raw_n);
    if (!raw) return ml_seterr(ML_ERR_OOM, "png: out of memory");
    for (int y = 0; y < h; y++) {
        raw[y * (row + 1)] = 0; /* filter: none */
        memcpy(raw + y * (row + 1) + 1, px + (size_t)y * row, row);
    }
    struct libdeflate_compressor *cmp = libdeflate_alloc_compressor(6);
    size_t bound = cmp ? libdeflate_zlib_compress_bound(cmp, raw_n) : 0;
    unsigned char *z = cmp ? malloc(bound) : NULL;
    size_t zn = z ? libdeflate_zlib_compress(cmp, raw, raw_n, z, bound) : 0;
    if (cmp) libdeflate_free_compressor(cmp);
    free(raw);
    if (!zn) {
        free(z);
        return ml_seterr(ML_ERR_OOM, "png: compression failed (out of memory)");
    }
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    mb_put(m, sig, 8);
    unsigned char ihdr[13];
    put_be32(ihdr, (uint32_t)w);
    put_be32(ihdr + 4, (uint32_t)h);
    ihdr[8] = 16;
    ihdr[9] = c == 1 ? 0 : c == 3 ? 2 : 6; /* gray, RGB, RGBA */
    ihdr[10] = ihdr[11] = ihdr[12] = 0;
    png_chunk(m, "IHDR", ihdr, 13);
    png_chunk(m, "IDAT", z, zn);
    png_chunk(m, "IEND", NULL, 0);
    free(z);
    return ML_OK;
}

ml_err ml_png_encode(const ml_tensor *img, int bits, unsigned char **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    int h = 0, w = 0, c = 0;
    unsigned char *px = NULL;
    ml_err e = pack(img, bits, &h, &w, &c, &px);
    if (e) return e;
    membuf m = {0};
    if (bits == 8) {
        if (!stbi_write_png_to_func(stb_sink, &m, w, h, c, px, w * c) && !m.oom) {
            free(px);
            free(m.p);
            return ml_seterr(ML_ERR_INTERNAL, "png: encoding failed");
        }
    } else {
        e = encode16(h, w, c, px, &m);
    }
    free(px);
    if (!e && m.oom) e = ml_seterr(ML_ERR_OOM, "png: out of memory");
    if (e) {
        free(m.p);
        return e;
    }
    *out = m.p;
    *out_len = m.n;
    return ML_OK;
}

ml_err ml_png_write(const char *path, const ml_tensor *img, int bits) {
    unsigned char *buf;
    size_t n;
    ml_err e = ml_png_encode(img, bits, &buf, &n);
    if (e) { /* the message names the file; copied first: ml_seterr formats into ml_errmsg()'s buffer */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", ml_errmsg());
        return ml_seterr(e, "png: %s: %s", path, strncmp(msg, "png: ", 5) ? msg : msg + 5);
    }
    e = ml_write_file_atomic("png", path, buf, n);
    free(buf);
    return e;
}

ml_err ml_png_read(ml_tensor **out, const char *path) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return ml_seterr(ML_ERR_IO, "png: %s: cannot open: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return ml_seterr(ML_ERR_IO, "png: %s: not a regular file", path);
    }
    long n = ftell(f);
    rewind(f);
    if (n <= 0 || n > (1L << 30)) {
        fclose(f);
        return ml_seterr(ML_ERR_IO, "png: %s: %s", path, n <= 0 ? "empty or unreadable file" : "file over 1 GiB");
    }
    unsigned char *buf = malloc((size_t)n);
    if (!buf) {
        fclose(f);
        return ml_seterr(ML_ERR_OOM, "png: %s: out of memory", path);
    }
    size_t got = fread(buf, 1, (size_t)n, f);
    fclose(f);
    if (got != (size_t)n) {
        free(buf);
        return ml_seterr(ML_ERR_IO, "png: %s: read failed", path);
    }
    int w, h, c;
    if (!stbi_info_from_memory(buf, (int)n, &w, &h, &c)) {
        free(buf);
        return ml_seterr(ML_ERR_IO, "png: %s: not a PNG file or corrupt (%s)", path, stbi_failure_reason());
    }
    int is16 = stbi_is_16_bit_from_memory(buf, (int)n);
    void *px = is16 ? (void *)stbi_load_16_from_memory(buf, (int)n, &w, &h, &c, 0)
                    : (void *)stbi_load_from_memory(buf, (int)n, &w, &h, &c, 0);
    free(buf);
    if (!px) return ml_seterr(ML_ERR_IO, "png: %s: cannot decode (%s)", path, stbi_failure_reason());
    int64_t shape[3] = {h, w, c};
    ml_tensor *t = NULL;
    ml_err e = ml_tensor_empty(&t, is16 ? ML_I32 : ML_U8, c == 1 ? 2 : 3, shape);
    if (e) {
        stbi_image_free(px);
        return e;
    }
    size_t total = (size_t)h * (size_t)w * (size_t)c;
    if (is16) {
        const uint16_t *s = px;
        int32_t *d = ml_tensor_data(t);
        for (size_t i = 0; i < total; i++) d[i] = s[i];
    } else {
        memcpy(ml_tensor_data(t), px, total);
    }
    stbi_image_free(px);
    *out = t;
    return ML_OK;
}
