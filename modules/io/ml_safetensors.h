/* medlua safetensors I/O (Lua-free).
 *
 * File format (https://github.com/huggingface/safetensors):
 *   8 bytes   N, little-endian u64: length of the JSON header
 *   N bytes   JSON object {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *             "__metadata__": {"key": "value", ...}}, padded with spaces to a multiple of 8
 *   rest      the data buffer; each tensor's bytes lie at [begin, end) relative to its start,
 *             row-major, little-endian
 * dtypes: F64 F32 F16 BF16 I64 I32 U8 BOOL (the ones medlua has).
 *
 * Saving writes "<path>.tmp.<pid>.<seq>", fsyncs it and renames it over <path>; on any error the
 * temporary file is removed and <path> is left as it was. Loading validates every header field
 * (as strictly as the reference Rust implementation: offsets must tile the data buffer exactly)
 * and fails with ML_ERR_IO and a message that starts with the file name and names the reason. */
#ifndef ML_SAFETENSORS_H
#define ML_SAFETENSORS_H

#include "../tensor/ml_tensor.h"

/* Largest header accepted on load (same limit as the reference implementation). */
#define ML_ST_MAX_HEADER 100000000ULL

/* Save n tensors under the given names (unique, valid UTF-8, not "__metadata__") with nmeta
 * string metadata pairs (keys unique). Tensors must be on the CPU; non-contiguous tensors are
 * written contiguously; requires_grad and autograd history are ignored. The header lists tensors
 * sorted by element size (largest first) then name, so every tensor's data is aligned to its
 * element size in the file. Bad arguments: ML_ERR_ARG / ML_ERR_DEVICE; file errors: ML_ERR_IO. */
ml_err ml_safetensors_save(const char *path, int n, const char *const *names, ml_tensor *const *ts,
                           int nmeta, const char *const *mkeys, const char *const *mvals);

/* A loaded file: tensors sorted by name, metadata sorted by key. */
typedef struct ml_st_file ml_st_file;

ml_err ml_safetensors_load(const char *path, ml_st_file **out);
void ml_st_free(ml_st_file *f);                       /* NULL-safe; releases the tensors it holds */

int ml_st_count(const ml_st_file *f);
const char *ml_st_name(const ml_st_file *f, int i);
ml_tensor *ml_st_tensor(const ml_st_file *f, int i);   /* borrowed: retain to keep past ml_st_free */
int ml_st_find(const ml_st_file *f, const char *name); /* index or -1 */

int ml_st_meta_count(const ml_st_file *f);
const char *ml_st_meta_key(const ml_st_file *f, int i);
const char *ml_st_meta_value(const ml_st_file *f, int i);
const char *ml_st_meta_get(const ml_st_file *f, const char *key); /* NULL if absent */

/* safetensors dtype string ("F32", ...) for a medlua dtype, and back (-1 if not one medlua has). */
const char *ml_st_dtype_str(ml_dtype dt);
int ml_st_dtype_from_str(const char *s);

#endif
