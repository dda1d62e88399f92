/* PNG images: write 8-bit (stb_image_write, libdeflate as its compressor) and 16-bit (own chunk writer)
 * grayscale / RGB / RGBA; read 8- and 16-bit PNGs (stb_image). Lua-free. */
#ifndef ML_PNG_H
#define ML_PNG_H

#include "tensor/ml_tensor.h"

/* img: [H, W] (gray) or [H, W, C] with C in {1, 3, 4}, any dtype and strides. Values are rounded and
 * must lie in [0, 255] (bits 8) or [0, 65535] (bits 16); a value outside is an error naming the file
 * (no silent clipping), NaN likewise. Written atomically (temp file + rename). */
ml_err ml_png_write(const char *path, const ml_tensor *img, int bits);
/* Encoded PNG in memory (malloc'd; caller frees). */
ml_err ml_png_encode(const ml_tensor *img, int bits, unsigned char **out, size_t *out_len);
/* Read: [H, W] for gray, [H, W, C] otherwise; u8 for 8-bit files, i32 for 16-bit files. */
ml_err ml_png_read(ml_tensor **out, const char *path);

/* Atomic file write shared by writers: data to "<path>.tmp-XXXXXX" in the same directory, fsync-free
 * rename into place; the temp file is removed on any error. op names the caller in messages. */
ml_err ml_write_file_atomic(const char *op, const char *path, const void *data, size_t n);

#endif
