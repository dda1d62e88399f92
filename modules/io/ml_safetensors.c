/* medlua safetensors reader/writer. Lua-free; the header is parsed and printed with cJSON.
 * See ml_safetensors.h for the format and the guarantees. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* pread, fsync, O_CLOEXEC */
#endif
#include "ml_safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

/* The data buffer is the in-memory byte image of each tensor; that equals the file's
 * little-endian layout only on a little-endian host. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "ml_safetensors assumes a little-endian host (safetensors data is little-endian)");

struct ml_st_file {
    int n;
    char **names;
    ml_tensor **tensors;
    int nmeta;
    char **mkeys;
    char **mvals;
};

/* ------------------------------------------------------------------ dtypes */
static const struct { const char *s; ml_dtype dt; } st_dtypes[] = {
    {"F64", ML_F64}, {"F32", ML_F32}, {"F16", ML_F16}, {"BF16", ML_BF16},
    {"I64", ML_I64}, {"I32", ML_I32}, {"U8", ML_U8},   {"BOOL", ML_BOOL},
};
#define ST_NDTYPES ((int)(sizeof st_dtypes / sizeof st_dtypes[0]))

/* Valid safetensors dtypes medlua has no tensor type for (reported as unsupported, not unknown). */
static const char *st_foreign_dtypes[] = {"I8", "I16", "U16", "U32", "U64", "F8_E5M2", "F8_E4M3",
                                          "F8_E4M3FN", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64"};

const char *ml_st_dtype_str(ml_dtype dt) {
    for (int i = 0; i < ST_NDTYPES; i++)
        if (st_dtypes[i].dt == dt) return st_dtypes[i].s;
    return NULL;
}

int ml_st_dtype_from_str(const char *s) {
    for (int i = 0; i < ST_NDTYPES; i++)
        if (strcmp(st_dtypes[i].s, s) == 0) return (int)st_dtypes[i].dt;
    return -1;
}

/* ----------------------------------------------------------------- helpers */
static ml_err st_err(ml_err code, const char *path, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static ml_err st_err(ml_err code, const char *path, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ml_seterr(code, "%s: %s", path, msg);
}

static char *st_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

static int cmp_cstr_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF). Returns the offset of the first bad
 * byte, or -1 if the whole buffer is valid. */
static ptrdiff_t utf8_invalid_at(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t len;
        unsigned cp, min;
        if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; min = 0x80; }
        else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; min = 0x800; }
        else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; min = 0x10000; }
        else return (ptrdiff_t)i;
        if (i + len > n) return (ptrdiff_t)i;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return (ptrdiff_t)i;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return (ptrdiff_t)i;
        i += len;
    }
    return -1;
}

static bool is_json_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* Lexical checks cJSON does not make: raw control characters inside strings (invalid JSON) and
 * \u0000 escapes (a NUL cannot be part of a C string name). Returns NULL if fine. */
static const char *json_lex_problem(const char *s, size_t n, size_t *at) {
    bool in_str = false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!in_str) {
            if (c == '"') in_str = true;
            continue;
        }
        if (c == '"') { in_str = false; continue; }
        if (c < 0x20) { *at = i; return "a raw control character inside a string"; }
        if (c == '\\' && i + 1 < n) {
            if (s[i + 1] == 'u' && i + 5 < n && s[i + 2] == '0' && s[i + 3] == '0' && s[i + 4] == '0' &&
                s[i + 5] == '0') {
                *at = i;
                return "a \\u0000 escape (NUL character) inside a string";
            }
            i++; /* skip the escaped character */
        }
    }
    return NULL;
}

/* A JSON number that is a non-negative integer exactly representable as a double. */
static bool json_uint(const cJSON *it, uint64_t *v) {
    if (!cJSON_IsNumber(it)) return false;
    double d = it->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || d != floor(d)) return false;
    *v = (uint64_t)d;
    return true;
}

/* ==================================================================== load */
typedef struct {
    const char *name;   /* points into the cJSON tree */
    ml_dtype dtype;
    int ndim;
    int64_t shape[ML_MAX_DIMS];
    uint64_t begin, end;
} st_entry;

static int cmp_entry_name(const void *a, const void *b) {
    return strcmp(((const st_entry *)a)->name, ((const st_entry *)b)->name);
}
static int cmp_entry_offset(const void *a, const void *b) {
    const st_entry *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static ml_err read_exact(int fd, const char *path, void *buf, size_t n, uint64_t off, const char *what) {
    char *p = buf;
    while (n > 0) {
        size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
        ssize_t r = pread(fd, p, chunk, (off_t)off);
        if (r < 0) {
            if (errno == EINTR) continue;
            return st_err(ML_ERR_IO, path, "read error in %s: %s", what, strerror(errno));
        }
        if (r == 0) return st_err(ML_ERR_IO, path, "unexpected end of file in %s (file changed while reading?)", what);
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return ML_OK;
}

/* Parse one tensor entry of the header into *e (validated except for offsets vs. the buffer). */
static ml_err parse_entry(const char *path, const cJSON *item, st_entry *e) {
    const char *nm = item->string;
    e->name = nm;
    if (!cJSON_IsObject(item))
        return st_err(ML_ERR_IO, path, "tensor '%s': header entry is not a JSON object", nm);
    const cJSON *dt = NULL, *shape = NULL, *offs = NULL;
    for (const cJSON *f = item->child; f; f = f->next) {
        const cJSON **slot = strcmp(f->string, "dtype") == 0          ? &dt
                             : strcmp(f->string, "shape") == 0        ? &shape
                             : strcmp(f->string, "data_offsets") == 0 ? &offs
                                                                      : NULL;
        if (!slot) continue; /* unknown fields are ignored, as the reference reader does */
        if (*slot) return st_err(ML_ERR_IO, path, "tensor '%s': duplicate field \"%s\"", nm, f->string);
        *slot = f;
    }
    if (!dt) return st_err(ML_ERR_IO, path, "tensor '%s' has no \"dtype\"", nm);
    if (!shape) return st_err(ML_ERR_IO, path, "tensor '%s' has no \"shape\"", nm);
    if (!offs) return st_err(ML_ERR_IO, path, "tensor '%s' has no \"data_offsets\"", nm);

    if (!cJSON_IsString(dt)) return st_err(ML_ERR_IO, path, "tensor '%s': \"dtype\" is not a string", nm);
    int d = ml_st_dtype_from_str(dt->valuestring);
    if (d < 0) {
        for (size_t i = 0; i < sizeof st_foreign_dtypes / sizeof st_foreign_dtypes[0]; i++)
            if (strcmp(st_foreign_dtypes[i], dt->valuestring) == 0)
                return st_err(ML_ERR_IO, path,
                              "tensor '%s' has dtype %s, which medlua does not support "
                              "(supported: F64 F32 F16 BF16 I64 I32 U8 BOOL)", nm, dt->valuestring);
        return st_err(ML_ERR_IO, path, "tensor '%s' has unknown dtype '%.40s'", nm, dt->valuestring);
    }
    e->dtype = (ml_dtype)d;

    if (!cJSON_IsArray(shape)) return st_err(ML_ERR_IO, path, "tensor '%s': \"shape\" is not an array", nm);
    int nd = cJSON_GetArraySize(shape);
    if (nd > ML_MAX_DIMS)
        return st_err(ML_ERR_IO, path, "tensor '%s' has rank %d; medlua supports at most %d dims", nm, nd, ML_MAX_DIMS);
    e->ndim = nd;
    uint64_t nbytes = ml_dtype_size(e->dtype);
    bool overflow = false;
    int k = 0;
    for (const cJSON *s = shape->child; s; s = s->next, k++) {
        uint64_t v;
        if (!json_uint(s, &v))
            return st_err(ML_ERR_IO, path, "tensor '%s': shape entry %d is not a non-negative integer", nm, k);
        e->shape[k] = (int64_t)v;
        if (!overflow && __builtin_mul_overflow(nbytes, v, &nbytes)) overflow = true;
    }
    /* a zero-size dim makes the product 0 even if an earlier partial product overflowed */
    for (int i = 0; i < nd; i++) if (e->shape[i] == 0) { overflow = false; nbytes = 0; }
    if (overflow || nbytes > (uint64_t)INT64_MAX)
        return st_err(ML_ERR_IO, path, "tensor '%s': shape %s overflows the addressable size", nm,
                      ml_shape_str(nd, e->shape));

    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 || !json_uint(offs->child, &e->begin) ||
        !json_uint(offs->child->next, &e->end))
        return st_err(ML_ERR_IO, path, "tensor '%s': \"data_offsets\" is not a pair of non-negative integers", nm);
    if (e->end < e->begin)
        return st_err(ML_ERR_IO, path, "tensor '%s' data_offsets [%llu, %llu] end before they begin", nm,
                      (unsigned long long)e->begin, (unsigned long long)e->end);
    if (e->end - e->begin != nbytes)
        return st_err(ML_ERR_IO, path, "tensor '%s' data_offsets [%llu, %llu] do not match shape %s %s (%llu bytes)",
                      nm, (unsigned long long)e->begin, (unsigned long long)e->end, ml_shape_str(nd, e->shape),
                      ml_dtype_name(e->dtype), (unsigned long long)nbytes);
    return ML_OK;
}

static ml_err parse_metadata(const char *path, const cJSON *md, ml_st_file *f) {
    if (cJSON_IsNull(md)) return ML_OK;
    if (!cJSON_IsObject(md)) return st_err(ML_ERR_IO, path, "\"__metadata__\" is not a JSON object");
    int n = cJSON_GetArraySize(md);
    if (n == 0) return ML_OK;
    f->mkeys = calloc((size_t)n, sizeof(char *));
    f->mvals = calloc((size_t)n, sizeof(char *));
    if (!f->mkeys || !f->mvals) return ml_seterr(ML_ERR_OOM, "%s: out of memory (metadata)", path);
    const cJSON **items = malloc((size_t)n * sizeof *items);
    if (!items) return ml_seterr(ML_ERR_OOM, "%s: out of memory (metadata)", path);
    int k = 0;
    for (const cJSON *it = md->child; it; it = it->next) items[k++] = it;
    /* sort by key (insertion sort on pointers: metadata is small) */
    for (int i = 1; i < n; i++) {
        const cJSON *x = items[i];
        int j = i - 1;
        while (j >= 0 && strcmp(items[j]->string, x->string) > 0) { items[j + 1] = items[j]; j--; }
        items[j + 1] = x;
    }
    ml_err e = ML_OK;
    for (int i = 0; i < n && !e; i++) {
        if (i > 0 && strcmp(items[i]->string, items[i - 1]->string) == 0)
            e = st_err(ML_ERR_IO, path, "duplicate metadata key '%s'", items[i]->string);
        else if (!cJSON_IsString(items[i]))
            e = st_err(ML_ERR_IO, path, "metadata value for key '%s' is not a string", items[i]->string);
        else {
            f->mkeys[i] = st_strdup(items[i]->string);
            f->mvals[i] = st_strdup(items[i]->valuestring);
            f->nmeta = i + 1;
            if (!f->mkeys[i] || !f->mvals[i]) e = ml_seterr(ML_ERR_OOM, "%s: out of memory (metadata)", path);
        }
    }
    free(items);
    return e;
}

static ml_err load_fd(const char *path, int fd, ml_st_file *f) {
    struct stat st;
    if (fstat(fd, &st) != 0) return st_err(ML_ERR_IO, path, "cannot stat: %s", strerror(errno));
    if (!S_ISREG(st.st_mode)) return st_err(ML_ERR_IO, path, "not a regular file");
    uint64_t fsize = (uint64_t)st.st_size;
    if (fsize < 8)
        return st_err(ML_ERR_IO, path, "file is %llu bytes, too short for a safetensors header (needs at least 8)",
                      (unsigned long long)fsize);
    unsigned char lenbuf[8];
    ml_err e = read_exact(fd, path, lenbuf, 8, 0, "the header length");
    if (e) return e;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | lenbuf[i];
    if (hlen > ML_ST_MAX_HEADER)
        return st_err(ML_ERR_IO, path, "header length %llu exceeds the 100 MB limit (not a safetensors file?)",
                      (unsigned long long)hlen);
    if (hlen > fsize - 8)
        return st_err(ML_ERR_IO, path, "header length %llu exceeds the file size (%llu bytes; truncated file?)",
                      (unsigned long long)hlen, (unsigned long long)fsize);
    if (hlen == 0) return st_err(ML_ERR_IO, path, "header is empty");
    uint64_t dsize = fsize - 8 - hlen;

    char *hdr = malloc((size_t)hlen + 1);
    if (!hdr) return ml_seterr(ML_ERR_OOM, "%s: out of memory reading a %llu-byte header", path, (unsigned long long)hlen);
    cJSON *root = NULL;
    st_entry *ents = NULL;
    if ((e = read_exact(fd, path, hdr, (size_t)hlen, 8, "the header"))) goto done;
    hdr[hlen] = 0;

    ptrdiff_t bad = utf8_invalid_at((const unsigned char *)hdr, (size_t)hlen);
    if (bad >= 0) { e = st_err(ML_ERR_IO, path, "header is not valid UTF-8 (byte %td)", bad); goto done; }
    size_t at = 0;
    const char *lex = json_lex_problem(hdr, (size_t)hlen, &at);
    if (lex) { e = st_err(ML_ERR_IO, path, "header is not valid JSON: %s at byte %zu", lex, at); goto done; }
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen, &end, 0);
    if (!root) {
        size_t pos = end && end >= hdr && end <= hdr + hlen ? (size_t)(end - hdr) : 0;
        e = st_err(ML_ERR_IO, path, "header is not valid JSON (error near byte %zu of %llu)", pos,
                   (unsigned long long)hlen);
        goto done;
    }
    for (const char *p = end; p < hdr + hlen; p++)
        if (!is_json_ws(*p)) {
            e = st_err(ML_ERR_IO, path, "header has data after the JSON object (byte %td)", p - hdr);
            goto done;
        }
    if (!cJSON_IsObject(root)) { e = st_err(ML_ERR_IO, path, "header is not a JSON object"); goto done; }

    int ntot = cJSON_GetArraySize(root), n = 0;
    const cJSON *md = NULL;
    ents = calloc((size_t)(ntot > 0 ? ntot : 1), sizeof *ents);
    if (!ents) { e = ml_seterr(ML_ERR_OOM, "%s: out of memory (header entries)", path); goto done; }
    for (const cJSON *it = root->child; it; it = it->next) {
        if (strcmp(it->string, "__metadata__") == 0) {
            if (md) { e = st_err(ML_ERR_IO, path, "duplicate \"__metadata__\""); goto done; }
            md = it;
            continue;
        }
        if ((e = parse_entry(path, it, &ents[n]))) goto done;
        if (ents[n].end > dsize) {
            e = st_err(ML_ERR_IO, path, "tensor '%s' data_offsets [%llu, %llu] are out of range: the data buffer is %llu bytes",
                       ents[n].name, (unsigned long long)ents[n].begin, (unsigned long long)ents[n].end,
                       (unsigned long long)dsize);
            goto done;
        }
        n++;
    }
    if (n > 1) {
        qsort(ents, (size_t)n, sizeof *ents, cmp_entry_name);
        for (int i = 1; i < n; i++)
            if (strcmp(ents[i].name, ents[i - 1].name) == 0) {
                e = st_err(ML_ERR_IO, path, "duplicate tensor name '%s'", ents[i].name);
                goto done;
            }
        /* offsets must tile [0, dsize) exactly: no overlap, no gap */
        qsort(ents, (size_t)n, sizeof *ents, cmp_entry_offset);
    }
    uint64_t pos = 0;
    const char *prev = NULL;
    for (int i = 0; i < n; i++) {
        if (ents[i].begin < pos) {
            e = st_err(ML_ERR_IO, path, "tensor '%s' data_offsets [%llu, %llu] overlap tensor '%s' (which ends at %llu)",
                       ents[i].name, (unsigned long long)ents[i].begin, (unsigned long long)ents[i].end, prev,
                       (unsigned long long)pos);
            goto done;
        }
        if (ents[i].begin > pos) {
            e = st_err(ML_ERR_IO, path, "tensor '%s' data_offsets [%llu, %llu] leave a gap: the previous tensor ends at %llu",
                       ents[i].name, (unsigned long long)ents[i].begin, (unsigned long long)ents[i].end,
                       (unsigned long long)pos);
            goto done;
        }
        pos = ents[i].end;
        prev = ents[i].name;
    }
    if (pos != dsize) {
        e = st_err(ML_ERR_IO, path, "the data buffer is %llu bytes but the tensors cover %llu (truncated or padded file?)",
                   (unsigned long long)dsize, (unsigned long long)pos);
        goto done;
    }
    if (md && (e = parse_metadata(path, md, f))) goto done;

    /* allocate and read, in name order */
    if (n > 1) qsort(ents, (size_t)n, sizeof *ents, cmp_entry_name);
    f->names = calloc((size_t)(n > 0 ? n : 1), sizeof(char *));
    f->tensors = calloc((size_t)(n > 0 ? n : 1), sizeof(ml_tensor *));
    if (!f->names || !f->tensors) { e = ml_seterr(ML_ERR_OOM, "%s: out of memory (tensor table)", path); goto done; }
    for (int i = 0; i < n; i++) {
        st_entry *en = &ents[i];
        ml_tensor *t = NULL;
        if ((e = ml_tensor_empty(&t, en->dtype, en->ndim, en->shape))) {
            char why[512];
            snprintf(why, sizeof why, "%s", ml_errmsg());
            e = ml_seterr(e == ML_ERR_OOM ? ML_ERR_OOM : ML_ERR_IO, "%s: tensor '%s' %s %s: %s", path, en->name, ml_shape_str(en->ndim, en->shape),
                          ml_dtype_name(en->dtype), why);
            goto done;
        }
        f->tensors[i] = t;
        f->names[i] = st_strdup(en->name);
        f->n = i + 1;
        if (!f->names[i]) { e = ml_seterr(ML_ERR_OOM, "%s: out of memory (names)", path); goto done; }
        size_t nb = (size_t)(en->end - en->begin);
        if (nb) {
            char what[300];
            snprintf(what, sizeof what, "tensor '%.200s'", en->name);
            if ((e = read_exact(fd, path, ml_tensor_data(t), nb, 8 + hlen + en->begin, what))) goto done;
        }
        if (en->dtype == ML_BOOL) { /* any non-zero byte is true; keep storage canonical 0/1 */
            uint8_t *b = ml_tensor_data(t);
            for (size_t j = 0; j < nb; j++) b[j] = b[j] != 0;
        }
    }
done:
    free(ents);
    cJSON_Delete(root);
    free(hdr);
    return e;
}

ml_err ml_safetensors_load(const char *path, ml_st_file **out) {
    if (!out) return ml_seterr(ML_ERR_ARG, "safetensors load: out is NULL");
    *out = NULL;
    if (!path || !*path) return ml_seterr(ML_ERR_ARG, "safetensors load: empty path");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return st_err(ML_ERR_IO, path, "cannot open: %s", strerror(errno));
    ml_st_file *f = calloc(1, sizeof *f);
    if (!f) { close(fd); return ml_seterr(ML_ERR_OOM, "%s: out of memory", path); }
    ml_err e = load_fd(path, fd, f);
    close(fd);
    if (e) { ml_st_free(f); return e; }
    *out = f;
    return ML_OK;
}

void ml_st_free(ml_st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n; i++) { ml_tensor_release(f->tensors[i]); free(f->names[i]); }
    for (int i = 0; i < f->nmeta; i++) { free(f->mkeys[i]); free(f->mvals[i]); }
    free(f->tensors);
    free(f->names);
    free(f->mkeys);
    free(f->mvals);
    free(f);
}

int ml_st_count(const ml_st_file *f) { return f ? f->n : 0; }
const char *ml_st_name(const ml_st_file *f, int i) { return f && i >= 0 && i < f->n ? f->names[i] : NULL; }
ml_tensor *ml_st_tensor(const ml_st_file *f, int i) { return f && i >= 0 && i < f->n ? f->tensors[i] : NULL; }
int ml_st_meta_count(const ml_st_file *f) { return f ? f->nmeta : 0; }
const char *ml_st_meta_key(const ml_st_file *f, int i) { return f && i >= 0 && i < f->nmeta ? f->mkeys[i] : NULL; }
const char *ml_st_meta_value(const ml_st_file *f, int i) { return f && i >= 0 && i < f->nmeta ? f->mvals[i] : NULL; }

/* both tables are sorted: binary search */
static int find_sorted(char *const *keys, int n, const char *key) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(keys[mid], key);
        if (c == 0) return mid;
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}
int ml_st_find(const ml_st_file *f, const char *name) { return f && name ? find_sorted(f->names, f->n, name) : -1; }
const char *ml_st_meta_get(const ml_st_file *f, const char *key) {
    int i = f && key ? find_sorted(f->mkeys, f->nmeta, key) : -1;
    return i >= 0 ? f->mvals[i] : NULL;
}

/* ==================================================================== save */
typedef struct {
    const char *name;
    ml_tensor *t;
    size_t esize;
    uint64_t nbytes;
} st_out;

static int cmp_out_layout(const void *a, const void *b) {
    const st_out *x = a, *y = b;
    if (x->esize != y->esize) return x->esize > y->esize ? -1 : 1; /* widest first: keeps alignment */
    return strcmp(x->name, y->name);
}

static ml_err write_all(int fd, const char *path, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
        ssize_t w = write(fd, p, chunk);
        if (w < 0) {
            if (errno == EINTR) continue;
            return st_err(ML_ERR_IO, path, "write failed: %s", strerror(errno));
        }
        p += w;
        n -= (size_t)w;
    }
    return ML_OK;
}

static cJSON *json_uint_raw(uint64_t v) {
    char buf[32];
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
    return cJSON_CreateRaw(buf); /* exact integer literal (cJSON numbers print as %g doubles) */
}

/* Build the padded header text. Returns malloc'd text (length *len, a multiple of 8). */
static ml_err build_header(const char *path, int n, const st_out *outs, int nmeta, const char *const *mkeys,
                           const char *const *mvals, char **text, size_t *len) {
    ml_err e = ml_seterr(ML_ERR_OOM, "%s: out of memory building the header", path);
    cJSON *root = cJSON_CreateObject();
    if (!root) return e;
    if (nmeta > 0) {
        cJSON *md = cJSON_AddObjectToObject(root, "__metadata__");
        if (!md) goto fail;
        for (int i = 0; i < nmeta; i++)
            if (!cJSON_AddStringToObject(md, mkeys[i], mvals[i])) goto fail;
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const ml_tensor *t = outs[i].t;
        cJSON *o = cJSON_CreateObject();
        if (!o) goto fail;
        if (!cJSON_AddItemToObject(root, outs[i].name, o)) { cJSON_Delete(o); goto fail; }
        if (!cJSON_AddStringToObject(o, "dtype", ml_st_dtype_str((ml_dtype)t->dtype))) goto fail;
        cJSON *sh = cJSON_AddArrayToObject(o, "shape");
        cJSON *of = cJSON_AddArrayToObject(o, "data_offsets");
        if (!sh || !of) goto fail;
        for (int d = 0; d < t->ndim; d++) {
            cJSON *v = json_uint_raw((uint64_t)t->shape[d]);
            if (!v) goto fail;
            cJSON_AddItemToArray(sh, v);
        }
        cJSON *b = json_uint_raw(off), *en = json_uint_raw(off + outs[i].nbytes);
        if (!b || !en) { cJSON_Delete(b); cJSON_Delete(en); goto fail; }
        cJSON_AddItemToArray(of, b);
        cJSON_AddItemToArray(of, en);
        off += outs[i].nbytes;
    }
    char *s = cJSON_PrintUnformatted(root);
    if (!s) goto fail;
    size_t sl = strlen(s), padded = (sl + 7) & ~(size_t)7;
    char *buf = malloc(padded);
    if (!buf) { cJSON_free(s); goto fail; }
    memcpy(buf, s, sl);
    memset(buf + sl, ' ', padded - sl);
    cJSON_free(s);
    cJSON_Delete(root);
    *text = buf;
    *len = padded;
    return ML_OK;
fail:
    cJSON_Delete(root);
    return e;
}

static ml_err write_tensor(int fd, const char *path, const st_out *o) {
    if (o->nbytes == 0) return ML_OK;
    ml_tensor *t = o->t;
    if (ml_tensor_is_contiguous(t)) return write_all(fd, path, ml_tensor_data(t), (size_t)o->nbytes);
    ml_tensor *c = NULL;
    ml_err e = ml_tensor_empty(&c, (ml_dtype)t->dtype, t->ndim, t->shape);
    if (!e) e = ml_copy_(c, t);
    if (e) {
        char why[512];
        snprintf(why, sizeof why, "%s", ml_errmsg());
        ml_tensor_release(c);
        return ml_seterr(e, "%s: tensor '%s': making it contiguous failed: %s", path, o->name, why);
    }
    e = write_all(fd, path, ml_tensor_data(c), (size_t)o->nbytes);
    ml_tensor_release(c);
    return e;
}

static ml_err check_save_args(const char *path, int n, const char *const *names, ml_tensor *const *ts, int nmeta,
                              const char *const *mkeys, const char *const *mvals) {
    if (!path || !*path) return ml_seterr(ML_ERR_ARG, "safetensors save: empty path");
    if (n < 0 || nmeta < 0) return st_err(ML_ERR_ARG, path, "negative tensor or metadata count");
    if (n > 0 && (!names || !ts)) return st_err(ML_ERR_ARG, path, "names or tensors array is NULL");
    if (nmeta > 0 && (!mkeys || !mvals)) return st_err(ML_ERR_ARG, path, "metadata arrays are NULL");
    for (int i = 0; i < n; i++) {
        if (!names[i]) return st_err(ML_ERR_ARG, path, "tensor %d has no name", i);
        if (strcmp(names[i], "__metadata__") == 0)
            return st_err(ML_ERR_ARG, path, "'__metadata__' is reserved and cannot name a tensor");
        if (utf8_invalid_at((const unsigned char *)names[i], strlen(names[i])) >= 0)
            return st_err(ML_ERR_ARG, path, "tensor name %d is not valid UTF-8", i);
        const ml_tensor *t = ts[i];
        if (!t) return st_err(ML_ERR_ARG, path, "tensor '%s' is NULL", names[i]);
        if (t->storage->device.type != ML_CPU)
            return st_err(ML_ERR_DEVICE, path, "tensor '%s' is on %s; move it to the CPU before saving", names[i],
                          ml_device_str(t->storage->device));
        if (!ml_st_dtype_str((ml_dtype)t->dtype))
            return st_err(ML_ERR_DTYPE, path, "tensor '%s' has dtype %s, which safetensors cannot store", names[i],
                          ml_dtype_name((ml_dtype)t->dtype));
    }
    for (int i = 0; i < nmeta; i++) {
        if (!mkeys[i] || !mvals[i]) return st_err(ML_ERR_ARG, path, "metadata entry %d is NULL", i);
        if (utf8_invalid_at((const unsigned char *)mkeys[i], strlen(mkeys[i])) >= 0 ||
            utf8_invalid_at((const unsigned char *)mvals[i], strlen(mvals[i])) >= 0)
            return st_err(ML_ERR_ARG, path, "metadata entry '%s' is not valid UTF-8", mkeys[i]);
    }
    /* duplicates */
    int m = n > nmeta ? n : nmeta;
    if (m < 2) return ML_OK;
    const char **tmp = malloc((size_t)m * sizeof *tmp);
    if (!tmp) return ml_seterr(ML_ERR_OOM, "%s: out of memory", path);
    ml_err e = ML_OK;
    for (int pass = 0; pass < 2 && !e; pass++) {
        int k = pass == 0 ? n : nmeta;
        const char *const *src = pass == 0 ? names : mkeys;
        if (k < 2) continue;
        memcpy(tmp, src, (size_t)k * sizeof *tmp);
        qsort(tmp, (size_t)k, sizeof *tmp, cmp_cstr_ptr);
        for (int i = 1; i < k; i++)
            if (strcmp(tmp[i], tmp[i - 1]) == 0) {
                e = st_err(ML_ERR_ARG, path, "duplicate %s '%s'", pass == 0 ? "tensor name" : "metadata key", tmp[i]);
                break;
            }
    }
    free(tmp);
    return e;
}

static atomic_uint g_tmp_seq;

ml_err ml_safetensors_save(const char *path, int n, const char *const *names, ml_tensor *const *ts, int nmeta,
                           const char *const *mkeys, const char *const *mvals) {
    ml_err e = check_save_args(path, n, names, ts, nmeta, mkeys, mvals);
    if (e) return e;
    st_out *outs = calloc((size_t)(n > 0 ? n : 1), sizeof *outs);
    if (!outs) return ml_seterr(ML_ERR_OOM, "%s: out of memory", path);
    char *hdr = NULL, *tmp = NULL;
    size_t hlen = 0;
    int fd = -1;
    for (int i = 0; i < n; i++) {
        if ((e = ml_tensor_plain(ts[i]))) {
            char why[512];
            snprintf(why, sizeof why, "%s", ml_errmsg());
            e = ml_seterr(e, "%s: tensor '%s': %s", path, names[i], why);
            goto fail;
        }
        outs[i].name = names[i];
        outs[i].t = ts[i];
        outs[i].esize = ml_dtype_size((ml_dtype)ts[i]->dtype);
        outs[i].nbytes = (uint64_t)ml_tensor_numel(ts[i]) * outs[i].esize;
    }
    if (n > 1) qsort(outs, (size_t)n, sizeof *outs, cmp_out_layout);
    if ((e = build_header(path, n, outs, nmeta, mkeys, mvals, &hdr, &hlen))) goto fail;

    size_t tl = strlen(path) + 64;
    tmp = malloc(tl);
    if (!tmp) { e = ml_seterr(ML_ERR_OOM, "%s: out of memory", path); goto fail; }
    snprintf(tmp, tl, "%s.tmp.%ld.%u", path, (long)getpid(), atomic_fetch_add(&g_tmp_seq, 1));
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno == EEXIST) { /* stale leftover of a killed process that had our pid */
        unlink(tmp);
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    }
    if (fd < 0) {
        e = st_err(ML_ERR_IO, path, "cannot create temporary file '%s': %s", tmp, strerror(errno));
        free(tmp);
        tmp = NULL; /* nothing to remove */
        goto fail;
    }
    unsigned char lenbuf[8];
    for (int i = 0; i < 8; i++) lenbuf[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    if ((e = write_all(fd, path, lenbuf, 8)) || (e = write_all(fd, path, hdr, hlen))) goto fail;
    for (int i = 0; i < n; i++)
        if ((e = write_tensor(fd, path, &outs[i]))) goto fail;
    if (fsync(fd) != 0) { e = st_err(ML_ERR_IO, path, "fsync failed: %s", strerror(errno)); goto fail; }
    int rc = close(fd);
    fd = -1;
    if (rc != 0) { e = st_err(ML_ERR_IO, path, "close failed: %s", strerror(errno)); goto fail; }
    if (rename(tmp, path) != 0) {
        e = st_err(ML_ERR_IO, path, "cannot rename '%s' into place: %s", tmp, strerror(errno));
        goto fail;
    }
    /* make the rename durable too (best effort: not every file system can fsync a directory) */
    {
        const char *slash = strrchr(path, '/');
        size_t dl = slash ? (slash == path ? 1 : (size_t)(slash - path)) : 1;
        char *dir = malloc(dl + 1);
        if (dir) {
            memcpy(dir, slash ? path : ".", dl);
            dir[dl] = 0;
            int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (dfd >= 0) { (void)fsync(dfd); close(dfd); }
            free(dir);
        }
    }
    free(tmp);
    free(hdr);
    free(outs);
    return ML_OK;
fail:
    if (fd >= 0) close(fd);
    if (tmp) { unlink(tmp); free(tmp); }
    free(hdr);
    free(outs);
    return e;
}
