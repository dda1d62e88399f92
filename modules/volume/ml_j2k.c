/* JPEG 2000 frames of DICOM (1.2.840.10008.1.2.4.90 / .91) through OpenJPEG, from memory. */
#include "volume/ml_dicom.h"

#include <openjpeg-2.5/openjpeg.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    const uint8_t *data;
    size_t len, pos;
} mem_stream;

static OPJ_SIZE_T mem_read(void *buf, OPJ_SIZE_T n, void *ud) {
    mem_stream *m = ud;
    if (m->pos >= m->len) return (OPJ_SIZE_T)-1;
    size_t k = m->len - m->pos < n ? m->len - m->pos : n;
    memcpy(buf, m->data + m->pos, k);
    m->pos += k;
    return k;
}

static OPJ_OFF_T mem_skip(OPJ_OFF_T n, void *ud) {
    mem_stream *m = ud;
    if (n < 0) {
        if ((size_t)(-n) > m->pos) n = -(OPJ_OFF_T)m->pos;
    } else if ((size_t)n > m->len - m->pos) {
        n = (OPJ_OFF_T)(m->len - m->pos);
    }
    m->pos += n;
    return n;
}

static OPJ_BOOL mem_seek(OPJ_OFF_T n, void *ud) {
    mem_stream *m = ud;
    if (n < 0 || (size_t)n > m->len) return OPJ_FALSE;
    m->pos = (size_t)n;
    return OPJ_TRUE;
}

typedef struct {
    char msg[256];
} j2k_log;

static void on_error(const char *msg, void *ud) {
    j2k_log *l = ud;
    if (l->msg[0]) return; /* keep the first (root-cause) message */
    snprintf(l->msg, sizeof l->msg, "%s", msg);
    size_t n = strlen(l->msg);
    while (n && (l->msg[n - 1] == '\n' || l->msg[n - 1] == ' ')) l->msg[--n] = '\0';
}

static void on_quiet(const char *msg, void *ud) {
    (void)msg;
    (void)ud;
}

ml_err ml_j2k_decode(const uint8_t *data, size_t len, int32_t width, int32_t height, int pixel_rep, int32_t *out,
                     const char *what) {
    return ml_j2k_decode_mt(data, len, width, height, pixel_rep, out, 1, what);
}

ml_err ml_j2k_decode_mt(const uint8_t *data, size_t len, int32_t width, int32_t height, int pixel_rep, int32_t *out,
                        int threads, const char *what) {
    if (!data || len < 4)
        return ml_seterr(ML_ERR_IO, "%s: JPEG 2000 stream corrupt: %zu bytes is too short for a codestream", what,
                         len);
    OPJ_CODEC_FORMAT fmt;
    if (data[0] == 0xFF && data[1] == 0x4F) fmt = OPJ_CODEC_J2K;
    else if (len >= 12 && !memcmp(data, "\0\0\0\x0cjP  ", 8)) fmt = OPJ_CODEC_JP2;
    else
        return ml_seterr(ML_ERR_IO,
                         "%s: JPEG 2000 stream corrupt: no codestream marker (starts %02x %02x %02x %02x, expected "
                         "ff 4f ff 51)",
                         what, data[0], data[1], data[2], data[3]);
    mem_stream ms = {data, len, 0};
    j2k_log log = {{0}};
    opj_codec_t *codec = opj_create_decompress(fmt);
    opj_stream_t *st = opj_stream_create(1 << 16, OPJ_TRUE);
    opj_image_t *img = NULL;
    ml_err e = ML_OK;
    if (!codec || !st) {
        e = ml_seterr(ML_ERR_OOM, "%s: JPEG 2000: cannot create the decoder", what);
        goto done;
    }
    opj_set_error_handler(codec, on_error, &log);
    opj_set_warning_handler(codec, on_quiet, NULL);
    opj_set_info_handler(codec, on_quiet, NULL);
    opj_stream_set_user_data(st, &ms, NULL);
    opj_stream_set_user_data_length(st, len);
    opj_stream_set_read_function(st, mem_read);
    opj_stream_set_skip_function(st, mem_skip);
    opj_stream_set_seek_function(st, mem_seek);
    opj_dparameters_t prm;
    opj_set_default_decoder_parameters(&prm);
    if (!opj_setup_decoder(codec, &prm)) {
        e = ml_seterr(ML_ERR_INTERNAL, "%s: JPEG 2000: decoder setup failed", what);
        goto done;
    }
    opj_decoder_set_strict_mode(codec, OPJ_TRUE); /* a truncated stream is an error, not a blurred image */
    /* Always set: 0 = no pool (the calling thread only), whatever OPJ_NUM_THREADS says, so that frames
     * decoded in parallel by the caller do not each start a pool of their own. */
    opj_codec_set_threads(codec, threads > 1 && opj_has_thread_support() ? threads : 0);
    if (!opj_read_header(st, codec, &img) || !img) {
        e = ml_seterr(ML_ERR_IO, "%s: JPEG 2000 stream corrupt: cannot read the main header (%s)", what,
                      log.msg[0] ? log.msg : "no detail");
        goto done;
    }
    if (img->numcomps < 1) {
        e = ml_seterr(ML_ERR_IO, "%s: JPEG 2000 stream corrupt: no components", what);
        goto done;
    }
    if (img->numcomps != 1) {
        e = ml_seterr(ML_ERR_UNSUPPORTED, "%s: JPEG 2000 stream has %u components; only grayscale (1) is supported",
                      what, img->numcomps);
        goto done;
    }
    {
        uint32_t w = img->x1 - img->x0, h = img->y1 - img->y0;
        if ((int64_t)w != width || (int64_t)h != height) {
            e = ml_seterr(ML_ERR_IO, "%s: JPEG 2000 stream is %ux%u but the header says Columns %d x Rows %d", what, w,
                          h, (int)width, (int)height);
            goto done;
        }
    }
    if (!opj_decode(codec, st, img) || !opj_end_decompress(codec, st)) {
        e = ml_seterr(ML_ERR_IO, "%s: JPEG 2000 stream corrupt: %s", what, log.msg[0] ? log.msg : "decoding failed");
        goto done;
    }
    {
        opj_image_comp_t *c = &img->comps[0];
        if (!c->data || c->w != (OPJ_UINT32)width || c->h != (OPJ_UINT32)height || c->factor != 0) {
            e = ml_seterr(ML_ERR_IO, "%s: JPEG 2000: decoded component is %ux%u, expected %dx%d", what, c->w, c->h,
                          (int)width, (int)height);
            goto done;
        }
        int prec = (int)c->prec;
        if (prec < 1 || prec > 31) {
            e = ml_seterr(ML_ERR_IO, "%s: JPEG 2000 stream corrupt: precision %d bits", what, prec);
            goto done;
        }
        int64_t n = (int64_t)width * height;
        const OPJ_INT32 *src = c->data;
        if (c->sgnd && !pixel_rep) {
            /* signed stream, unsigned image: the bit pattern as an unsigned prec-bit value */
            uint32_t mask = prec == 32 ? 0xFFFFFFFFu : ((1u << prec) - 1u);
            for (int64_t i = 0; i < n; i++) out[i] = (int32_t)((uint32_t)src[i] & mask);
        } else if (!c->sgnd && pixel_rep && prec < 32) {
            /* unsigned stream, signed image: sign-extend from prec bits */
            int64_t half = (int64_t)1 << (prec - 1);
            for (int64_t i = 0; i < n; i++) {
                int64_t v = src[i];
                out[i] = (int32_t)(v >= half ? v - 2 * half : v);
            }
        } else {
            memcpy(out, src, (size_t)n * sizeof(int32_t));
        }
    }
done:
    if (img) opj_image_destroy(img);
    if (st) opj_stream_destroy(st);
    if (codec) opj_destroy_codec(codec);
    return e;
}
