/* safetensors I/O tests: round trips of every dtype (bit-exact), non-contiguous and expanded
 * inputs, metadata, empty and 0-d tensors, the on-disk layout (length prefix, space padding,
 * aligned offsets), the file written by the real safetensors.torch.save_file
 * (tests/ref/interop_torch.safetensors; run from the repository root), every kind of bad file
 * (ML_ERR_IO naming the file and the reason), and atomic writes (a failed save leaves no file
 * and no temporary behind, and never damages the file it was replacing). */
#include "ml_test.h"
#include "io/ml_safetensors.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[64];

static const char *tpath(const char *name) {
    static char ring[4][512];
    static int k;
    char *p = ring[k++ & 3];
    snprintf(p, 512, "%s/%s", g_dir, name);
    return p;
}

/* number of directory entries under g_dir whose name contains `part` */
static int count_entries(const char *part) {
    DIR *d = opendir(g_dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, part)) n++;
    closedir(d);
    return n;
}

static long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static unsigned char *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)sz + 1);
    if (b && fread(b, 1, (size_t)sz, f) != (size_t)sz) { free(b); b = NULL; }
    fclose(f);
    if (b) { b[sz] = 0; *n = (size_t)sz; }
    return b;
}

static void write_bytes(const char *path, const void *b, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) { ML_FAIL_("cannot write %s", path); return; }
    if (n) fwrite(b, 1, n, f);
    fclose(f);
}

/* header length (as given, may lie), header text, then data_len bytes of 0xAB */
static void write_st(const char *path, uint64_t hlen_field, const char *hdr, size_t data_len) {
    size_t hl = strlen(hdr);
    size_t n = 8 + hl + data_len;
    unsigned char *b = malloc(n);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(hlen_field >> (8 * i));
    memcpy(b + 8, hdr, hl);
    memset(b + 8 + hl, 0xAB, data_len);
    write_bytes(path, b, n);
    free(b);
}
static void write_st_ok(const char *path, const char *hdr, size_t data_len) { write_st(path, strlen(hdr), hdr, data_len); }

/* the load must fail with ML_ERR_IO, a message naming the file and containing `why` */
#define CHECK_BAD(path, why)                                                                      \
    do {                                                                                          \
        ml_st_file *f_ = (ml_st_file *)1;                                                         \
        ml_err e_ = ml_safetensors_load((path), &f_);                                             \
        if (e_ != ML_ERR_IO) ML_FAIL_("load %s returned %s, expected I/O error", (path), ml_errname(e_)); \
        else if (f_ != NULL) ML_FAIL_("load %s failed but left out non-NULL", (path));            \
        else if (!strstr(ml_errmsg(), (path))) ML_FAIL_("message does not name the file: %s", ml_errmsg()); \
        else if (!strstr(ml_errmsg(), (why))) ML_FAIL_("message lacks \"%s\": %s", (why), ml_errmsg()); \
        if (e_ == ML_OK) ml_st_free(f_);                                                          \
    } while (0)

/* a tensor of dtype dt, shape, with bytes following a deterministic pattern */
static ml_tensor *patterned(ml_dtype dt, int ndim, const int64_t *shape, unsigned seed) {
    ml_tensor *t = NULL;
    if (ml_tensor_empty(&t, dt, ndim, shape) != ML_OK) return NULL;
    int64_t n = ml_tensor_numel(t);
    void *d = ml_tensor_data(t);
    for (int64_t i = 0; i < n; i++) {
        double v = ((double)((i * 37 + seed) % 101) - 50) * 0.375;
        switch (dt) {
        case ML_F64: ((double *)d)[i] = v * 1.0000001; break;
        case ML_F32: ((float *)d)[i] = (float)v * 1.001f; break;
        case ML_F16: ((uint16_t *)d)[i] = (uint16_t)(i * 7919u + seed); break;  /* any bits, NaNs included */
        case ML_BF16: ((uint16_t *)d)[i] = (uint16_t)(i * 104729u + seed); break;
        case ML_I64: ((int64_t *)d)[i] = (int64_t)(v * 1e12) - (int64_t)i; break;
        case ML_I32: ((int32_t *)d)[i] = (int32_t)(v * 1e6) + (int32_t)i; break;
        case ML_U8: ((uint8_t *)d)[i] = (uint8_t)(i * 13 + seed); break;
        case ML_BOOL: ((uint8_t *)d)[i] = (uint8_t)((i * 7 + seed) % 3 == 0); break;
        default: break;
        }
    }
    return t;
}

static bool same_bytes(const ml_tensor *a, const ml_tensor *b) {
    if (a->dtype != b->dtype || a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++) if (a->shape[i] != b->shape[i]) return false;
    size_t nb = (size_t)ml_tensor_numel(a) * ml_dtype_size((ml_dtype)a->dtype);
    return nb == 0 || memcmp(ml_tensor_data(a), ml_tensor_data(b), nb) == 0;
}

/* ------------------------------------------------------------------ round trips */
ML_TEST(roundtrip_every_dtype) {
    const ml_dtype dts[] = {ML_F64, ML_F32, ML_F16, ML_BF16, ML_I64, ML_I32, ML_U8, ML_BOOL};
    const char *names[] = {"w.f64", "w.f32", "w.f16", "w.bf16", "b.i64", "b.i32", "a.u8", "z.bool"};
    const int64_t shapes[8][3] = {{2, 3, 4}, {5, 1, 3}, {7, 2, 1}, {3, 3, 3}, {4, 1, 1}, {9, 2, 1}, {13, 1, 1}, {6, 5, 1}};
    ml_tensor *ts[8];
    for (int i = 0; i < 8; i++) ts[i] = patterned(dts[i], i % 3 + 1, shapes[i], (unsigned)i);
    const char *mk[] = {"format", "epoch", "note"};
    const char *mv[] = {"pt", "12", "unicode h\xc3\xa9llo, \"quotes\", back\\slash, tab\t, newline\n"};
    const char *p = tpath("all.safetensors");
    ML_CHECK_OK(ml_safetensors_save(p, 8, names, ts, 3, mk, mv));
    ml_st_file *f = NULL;
    ML_CHECK_OK(ml_safetensors_load(p, &f));
    if (f) {
        ML_CHECK(ml_st_count(f) == 8);
        for (int i = 1; i < ml_st_count(f); i++) ML_CHECK(strcmp(ml_st_name(f, i - 1), ml_st_name(f, i)) < 0);
        for (int i = 0; i < 8; i++) {
            int k = ml_st_find(f, names[i]);
            ML_CHECK(k >= 0);
            if (k < 0) continue;
            ml_tensor *t = ml_st_tensor(f, k);
            if (!same_bytes(t, ts[i])) ML_FAIL_("tensor %s (%s) differs after the round trip", names[i], ml_dtype_name(dts[i]));
            ML_CHECK(!t->requires_grad && ml_tensor_is_contiguous(t));
        }
        ML_CHECK(ml_st_find(f, "nope") == -1 && ml_st_tensor(f, 8) == NULL && ml_st_name(f, -1) == NULL);
        ML_CHECK(ml_st_meta_count(f) == 3);
        ML_CHECK(!strcmp(ml_st_meta_key(f, 0), "epoch") && !strcmp(ml_st_meta_value(f, 0), "12"));
        ML_CHECK(ml_st_meta_get(f, "format") && !strcmp(ml_st_meta_get(f, "format"), "pt"));
        ML_CHECK(ml_st_meta_get(f, "note") && !strcmp(ml_st_meta_get(f, "note"), mv[2]));
        ML_CHECK(ml_st_meta_get(f, "missing") == NULL);
        ml_st_free(f);
    }
    for (int i = 0; i < 8; i++) ml_tensor_release(ts[i]);
}

ML_TEST(on_disk_layout) {
    /* widest dtype first then name; 8-byte length prefix; header padded with spaces to 8; every
     * tensor aligned to its element size; offsets tile the data buffer */
    int64_t s1[1] = {3}, s2[2] = {2, 2};
    ml_tensor *ts[4] = {patterned(ML_U8, 1, s1, 1), patterned(ML_F64, 2, s2, 2), patterned(ML_F16, 1, s1, 3),
                        patterned(ML_F32, 1, s1, 4)};
    const char *names[] = {"a", "b", "c", "d"};
    const char *p = tpath("layout.safetensors");
    ML_CHECK_OK(ml_safetensors_save(p, 4, names, ts, 0, NULL, NULL));
    size_t n = 0;
    unsigned char *b = read_file(p, &n);
    ML_CHECK(b && n >= 8);
    if (b && n >= 8) {
        uint64_t hl = 0;
        for (int i = 7; i >= 0; i--) hl = (hl << 8) | b[i];
        ML_CHECK(hl % 8 == 0 && 8 + hl <= n);
        ML_CHECK(b[8] == '{');
        ML_CHECK(n == 8 + hl + 3 + 32 + 6 + 12);
        cJSON *root = cJSON_ParseWithLength((const char *)b + 8, (size_t)hl);
        ML_CHECK(root != NULL);
        if (root) {
            ML_CHECK(cJSON_GetObjectItem(root, "__metadata__") == NULL); /* none given, none written */
            const char *order[] = {"b", "d", "c", "a"};
            const size_t esz[] = {8, 4, 2, 1};
            uint64_t pos = 0;
            int k = 0;
            for (cJSON *it = root->child; it; it = it->next, k++) {
                if (k >= 4) { ML_FAIL_("extra header entry %s", it->string); break; }
                ML_CHECK(!strcmp(it->string, order[k]));
                cJSON *off = cJSON_GetObjectItem(it, "data_offsets");
                uint64_t bg = (uint64_t)cJSON_GetArrayItem(off, 0)->valuedouble;
                uint64_t en = (uint64_t)cJSON_GetArrayItem(off, 1)->valuedouble;
                ML_CHECK(bg == pos && bg % esz[k] == 0 && en >= bg);
                pos = en;
            }
            ML_CHECK(k == 4 && pos == n - 8 - hl);
            cJSON_Delete(root);
        }
        /* the padding is spaces after the closing brace */
        size_t close = 8 + hl;
        while (close > 8 && b[close - 1] == ' ') close--;
        ML_CHECK(b[close - 1] == '}');
        ML_CHECK(!memcmp(b + 8 + hl, ml_tensor_data(ts[1]), 32)); /* f64 data first, raw little-endian */
    }
    free(b);
    for (int i = 0; i < 4; i++) ml_tensor_release(ts[i]);
}

ML_TEST(noncontiguous_and_expanded) {
    int64_t sh[2] = {4, 6};
    ml_tensor *base = patterned(ML_F32, 2, sh, 9), *tr = NULL, *sl = NULL, *ex = NULL, *one = NULL;
    ML_CHECK_OK(ml_transpose(&tr, base, 0, 1));
    ML_CHECK_OK(ml_slice(&sl, base, 1, 1, 6, 2));          /* [4, 3] with stride 2 */
    int64_t s1[2] = {1, 5};
    one = patterned(ML_I64, 2, s1, 3);
    ML_CHECK_OK(ml_expand(&ex, one, 2, (int64_t[]){3, 5}));  /* stride 0 */
    ML_CHECK(tr && sl && ex && !ml_tensor_is_contiguous(tr) && !ml_tensor_is_contiguous(sl));
    if (tr && sl && ex) {
        const char *names[] = {"tr", "sl", "ex"};
        ml_tensor *ts[] = {tr, sl, ex};
        const char *p = tpath("views.safetensors");
        ML_CHECK_OK(ml_safetensors_save(p, 3, names, ts, 0, NULL, NULL));
        ml_st_file *f = NULL;
        ML_CHECK_OK(ml_safetensors_load(p, &f));
        for (int i = 0; f && i < 3; i++) {
            int k = ml_st_find(f, names[i]);
            ML_CHECK(k >= 0);
            if (k >= 0) {
                ml_tensor *t = ml_st_tensor(f, k);
                ML_CHECK(t->dtype == ts[i]->dtype && ml_tensor_is_contiguous(t));
                ML_CHECK(ml_t_maxdiff(t, ts[i]) == 0);
            }
        }
        ml_st_free(f);
    }
    ml_tensor_release(tr); ml_tensor_release(sl); ml_tensor_release(ex); ml_tensor_release(one);
    ml_tensor_release(base);
}

ML_TEST(grad_tensors_save_data_only) {
    int64_t sh[1] = {5};
    ml_tensor *x = patterned(ML_F64, 1, sh, 4), *v = NULL;
    ML_CHECK_OK(ml_set_requires_grad(x, true));
    ML_CHECK_OK(ml_slice(&v, x, 0, 1, 5, 2)); /* non-leaf view with grad_fn */
    ML_CHECK(v && v->grad_fn);
    const char *names[] = {"x", "v"};
    ml_tensor *ts[] = {x, v};
    const char *p = tpath("grad.safetensors");
    ML_CHECK_OK(ml_safetensors_save(p, 2, names, ts, 0, NULL, NULL));
    ml_st_file *f = NULL;
    ML_CHECK_OK(ml_safetensors_load(p, &f));
    if (f) {
        ML_CHECK(ml_t_maxdiff(ml_st_tensor(f, ml_st_find(f, "v")), v) == 0);
        ML_CHECK(!ml_st_tensor(f, 0)->requires_grad && !ml_st_tensor(f, 0)->grad_fn);
        ml_st_free(f);
    }
    ml_tensor_release(v);
    ml_tensor_release(x);
}

ML_TEST(empty_scalar_and_zero_tensors) {
    ml_tensor *e = NULL, *s = NULL, *e2 = NULL;
    ML_CHECK_OK(ml_zeros(&e, ML_F32, 2, (int64_t[]){0, 3}));
    ML_CHECK_OK(ml_full(&s, ML_F64, 0, NULL, 3.25));
    ML_CHECK_OK(ml_zeros(&e2, ML_BOOL, 1, (int64_t[]){0}));
    const char *names[] = {"empty", "scalar", "empty_bool"};
    ml_tensor *ts[] = {e, s, e2};
    const char *p = tpath("edge.safetensors");
    ML_CHECK_OK(ml_safetensors_save(p, 3, names, ts, 0, NULL, NULL));
    ml_st_file *f = NULL;
    ML_CHECK_OK(ml_safetensors_load(p, &f));
    if (f) {
        ml_tensor *le = ml_st_tensor(f, ml_st_find(f, "empty")), *ls = ml_st_tensor(f, ml_st_find(f, "scalar"));
        ml_tensor *lb = ml_st_tensor(f, ml_st_find(f, "empty_bool"));
        ML_CHECK(le && le->ndim == 2 && le->shape[0] == 0 && le->shape[1] == 3 && le->dtype == ML_F32);
        ML_CHECK(ls && ls->ndim == 0 && ls->dtype == ML_F64 && ml_tensor_item(ls) == 3.25);
        ML_CHECK(lb && lb->ndim == 1 && lb->shape[0] == 0 && lb->dtype == ML_BOOL);
        ML_CHECK(ml_st_meta_count(f) == 0);
        ml_st_free(f);
    }
    /* a file with no tensors at all, with and without metadata */
    const char *mk[] = {"only"}, *mv[] = {"metadata"};
    ML_CHECK_OK(ml_safetensors_save(tpath("none.safetensors"), 0, NULL, NULL, 0, NULL, NULL));
    ML_CHECK(file_size(tpath("none.safetensors")) == 16); /* "{}" padded to 8 */
    ML_CHECK_OK(ml_safetensors_load(tpath("none.safetensors"), &f));
    ML_CHECK(f && ml_st_count(f) == 0 && ml_st_meta_count(f) == 0);
    ml_st_free(f);
    ML_CHECK_OK(ml_safetensors_save(tpath("meta_only.safetensors"), 0, NULL, NULL, 1, mk, mv));
    ML_CHECK_OK(ml_safetensors_load(tpath("meta_only.safetensors"), &f));
    ML_CHECK(f && ml_st_count(f) == 0 && ml_st_meta_get(f, "only") && !strcmp(ml_st_meta_get(f, "only"), "metadata"));
    ml_st_free(f);
    ml_tensor_release(e); ml_tensor_release(s); ml_tensor_release(e2);
}

ML_TEST(large_tensor) {
    int64_t sh[2] = {1000, 1003};
    ml_tensor *t = patterned(ML_F32, 2, sh, 5);
    const char *names[] = {"big"};
    const char *p = tpath("big.safetensors");
    ML_CHECK_OK(ml_safetensors_save(p, 1, names, &t, 0, NULL, NULL));
    ml_st_file *f = NULL;
    ML_CHECK_OK(ml_safetensors_load(p, &f));
    ML_CHECK(f && same_bytes(ml_st_tensor(f, 0), t));
    ml_st_free(f);
    ml_tensor_release(t);
    unlink(p);
}

ML_TEST(overwrite_replaces_atomically) {
    int64_t sh[1] = {4};
    ml_tensor *a = patterned(ML_F32, 1, sh, 1), *b = patterned(ML_I32, 1, sh, 2);
    const char *p = tpath("over.safetensors");
    const char *na[] = {"a"}, *nb[] = {"b"};
    ML_CHECK_OK(ml_safetensors_save(p, 1, na, &a, 0, NULL, NULL));
    ML_CHECK_OK(ml_safetensors_save(p, 1, nb, &b, 0, NULL, NULL));
    ml_st_file *f = NULL;
    ML_CHECK_OK(ml_safetensors_load(p, &f));
    ML_CHECK(f && ml_st_count(f) == 1 && !strcmp(ml_st_name(f, 0), "b") && same_bytes(ml_st_tensor(f, 0), b));
    ml_st_free(f);
    ML_CHECK(count_entries(".tmp.") == 0);
    ml_tensor_release(a); ml_tensor_release(b);
}

/* ------------------------------------------------------------ interop with PyTorch */
/* tests/ref/interop_torch.safetensors is written by tests/ref/gen_ref.py with the real
 * safetensors.torch.save_file; the expected values are restated here. */
ML_TEST(reads_file_written_by_safetensors_torch) {
    const char *p = "tests/ref/interop_torch.safetensors";
    ml_st_file *f = NULL;
    ml_err e = ml_safetensors_load(p, &f);
    if (e) { ML_FAIL_("%s (run the tests from the repository root)", ml_errmsg()); return; }
    ML_CHECK(ml_st_count(f) == 10);
    ML_CHECK(ml_st_meta_get(f, "format") && !strcmp(ml_st_meta_get(f, "format"), "pt"));
    ML_CHECK(ml_st_meta_get(f, "unicode") && !strcmp(ml_st_meta_get(f, "unicode"), "h\xc3\xa9llo \"q\" \\ end"));
    ml_tensor *t;
#define GET(name, dt, nd)                                                                    \
    t = ml_st_tensor(f, ml_st_find(f, name));                                                \
    ML_CHECK(t && t->dtype == (dt) && t->ndim == (nd));                                      \
    if (t && t->dtype == (dt) && t->ndim == (nd))
    GET("f64", ML_F64, 3) {
        ML_CHECK(t->shape[0] == 2 && t->shape[1] == 3 && t->shape[2] == 4);
        for (int i = 0; i < 24; i++) ML_CHECK(((double *)ml_tensor_data(t))[i] == i * 0.5 - 3);
    }
    GET("f32", ML_F32, 2) {
        ML_CHECK(t->shape[0] == 3 && t->shape[1] == 4);
        for (int i = 0; i < 12; i++) ML_CHECK(((float *)ml_tensor_data(t))[i] == (float)(i * 0.25 - 1));
    }
    GET("f16", ML_F16, 1) for (int i = 0; i < 8; i++) ML_CHECK(ml_f16_to_f32(((uint16_t *)ml_tensor_data(t))[i]) == (float)(i * 0.5 - 2));
    GET("bf16", ML_BF16, 1) for (int i = 0; i < 8; i++) ML_CHECK(ml_bf16_to_f32(((uint16_t *)ml_tensor_data(t))[i]) == (float)(i * 0.25 - 1));
    GET("i64", ML_I64, 1) {
        const int64_t want[] = {-(1LL << 40) - 7, 0, 1, (1LL << 40) + 7, 9007199254740993LL};
        ML_CHECK(t->shape[0] == 5);
        for (int i = 0; i < 5 && t->shape[0] == 5; i++) ML_CHECK(((int64_t *)ml_tensor_data(t))[i] == want[i]);
    }
    GET("i32", ML_I32, 1) {
        const int32_t want[] = {INT32_MIN, -1, 0, INT32_MAX};
        for (int i = 0; i < 4 && t->shape[0] == 4; i++) ML_CHECK(((int32_t *)ml_tensor_data(t))[i] == want[i]);
    }
    GET("u8", ML_U8, 1) {
        const uint8_t want[] = {0, 1, 127, 128, 255};
        ML_CHECK(t->shape[0] == 5 && !memcmp(ml_tensor_data(t), want, 5));
    }
    GET("bool", ML_BOOL, 1) {
        const uint8_t want[] = {1, 0, 1, 1, 0};
        ML_CHECK(t->shape[0] == 5 && !memcmp(ml_tensor_data(t), want, 5));
    }
    GET("scalar", ML_F64, 0) ML_CHECK(ml_tensor_item(t) == 3.25);
    GET("empty", ML_F32, 2) ML_CHECK(t->shape[0] == 0 && t->shape[1] == 3);
#undef GET
    ml_st_free(f);
}

/* ------------------------------------------------------------------ bad files */
ML_TEST(bad_files) {
    const char *p = tpath("bad.safetensors");
    const char *tensor = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";

    CHECK_BAD(tpath("does_not_exist.safetensors"), "cannot open");
    CHECK_BAD(g_dir, "not a regular file");
    write_bytes(p, "", 0);
    CHECK_BAD(p, "too short");
    write_bytes(p, "\x10\0\0\0\0", 5);
    CHECK_BAD(p, "too short");
    write_st(p, 4096, tensor, 8);                         /* header length beyond the file */
    CHECK_BAD(p, "exceeds the file size");
    write_st(p, 1ULL << 40, tensor, 8);                   /* absurd header length */
    CHECK_BAD(p, "100 MB");
    write_st(p, 100000001ULL, tensor, 8);
    CHECK_BAD(p, "100 MB");
    write_st(p, 0, "", 8);
    CHECK_BAD(p, "header is empty");
    /* truncated: a valid file cut short inside the data and inside the header */
    {
        int64_t sh[1] = {16};
        ml_tensor *t = patterned(ML_F64, 1, sh, 1);
        const char *nm[] = {"t"};
        const char *good = tpath("good.safetensors");
        ML_CHECK_OK(ml_safetensors_save(good, 1, nm, &t, 0, NULL, NULL));
        size_t n = 0;
        unsigned char *b = read_file(good, &n);
        if (b) {
            write_bytes(p, b, n - 1);
            CHECK_BAD(p, "out of range");
            write_bytes(p, b, 20);
            CHECK_BAD(p, "exceeds the file size");
            write_bytes(p, b, 8);
            CHECK_BAD(p, "exceeds the file size");
            free(b);
        }
        ml_tensor_release(t);
    }
    write_st_ok(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8);
    CHECK_BAD(p, "not valid JSON");
    write_st_ok(p, "{\"a\" \"dtype\"}   ", 0);
    CHECK_BAD(p, "not valid JSON");
    write_st_ok(p, "[1, 2, 3]", 0);
    CHECK_BAD(p, "not a JSON object");
    write_st_ok(p, "{} x", 0);
    CHECK_BAD(p, "data after the JSON object");
    write_st_ok(p, "{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    CHECK_BAD(p, "not valid UTF-8");
    write_st_ok(p, "{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    CHECK_BAD(p, "\\u0000");
    write_st_ok(p, "{\"a\tb\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    CHECK_BAD(p, "control character");
    write_st_ok(p, "{\"a\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    CHECK_BAD(p, "unknown dtype 'F33'");
    write_st_ok(p, "{\"a\":{\"dtype\":\"I8\",\"shape\":[8],\"data_offsets\":[0,8]}}", 8);
    CHECK_BAD(p, "dtype I8, which medlua does not support");
    write_st_ok(p, "{\"a\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    CHECK_BAD(p, "\"dtype\" is not a string");
    write_st_ok(p, "{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    CHECK_BAD(p, "has no \"dtype\"");
    write_st_ok(p, "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8);
    CHECK_BAD(p, "has no \"shape\"");
    write_st_ok(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8);
    CHECK_BAD(p, "has no \"data_offsets\"");
    write_st_ok(p, "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    CHECK_BAD(p, "duplicate field");
    write_st_ok(p, "{\"a\":[1]}", 0);
    CHECK_BAD(p, "not a JSON object");
    write_st_ok(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8);
    CHECK_BAD(p, "shape entry 0 is not a non-negative integer");
    write_st_ok(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2, 1.5],\"data_offsets\":[0,8]}}", 8);
    CHECK_BAD(p, "shape entry 1 is not a non-negative integer");
    write_st_ok(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8);
    CHECK_BAD(p, "shape entry 0");
    write_st_ok(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1e300],\"data_offsets\":[0,8]}}", 8);
    CHECK_BAD(p, "shape entry 0");
    write_st_ok(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8);
    CHECK_BAD(p, "\"shape\" is not an array");
    write_st_ok(p, "{\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296, 4294967296, 4294967296],\"data_offsets\":[0,8]}}", 8);
    CHECK_BAD(p, "overflows");
    write_st_ok(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8);
    CHECK_BAD(p, "rank 9");
    write_st_ok(p, "{\"conv.weight\":{\"dtype\":\"F32\",\"shape\":[4,3,3],\"data_offsets\":[0,96]}}", 96);
    CHECK_BAD(p, "tensor 'conv.weight' data_offsets [0, 96] do not match shape [4, 3, 3] float32 (144 bytes)");
    write_st_ok(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8);
    CHECK_BAD(p, "not a pair of non-negative integers");
    write_st_ok(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,-8]}}", 8);
    CHECK_BAD(p, "not a pair");
    write_st_ok(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8);
    CHECK_BAD(p, "end before they begin");
    write_st_ok(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8);
    CHECK_BAD(p, "data_offsets [0, 16] are out of range: the data buffer is 8 bytes");
    write_st_ok(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                   "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12);
    CHECK_BAD(p, "tensor 'b' data_offsets [4, 12] overlap tensor 'a'");
    write_st_ok(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                   "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    CHECK_BAD(p, "overlap");
    write_st_ok(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                   "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}", 20);
    CHECK_BAD(p, "leave a gap");
    write_st_ok(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12);
    CHECK_BAD(p, "leave a gap");
    write_st_ok(p, tensor, 16);
    CHECK_BAD(p, "the data buffer is 16 bytes but the tensors cover 8");
    write_st_ok(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                   "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16);
    CHECK_BAD(p, "duplicate tensor name 'a'");
    write_st_ok(p, "{\"__metadata__\":{\"k\":1}}", 0);
    CHECK_BAD(p, "metadata value for key 'k' is not a string");
    write_st_ok(p, "{\"__metadata__\":[\"k\"]}", 0);
    CHECK_BAD(p, "\"__metadata__\" is not a JSON object");
    write_st_ok(p, "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0);
    CHECK_BAD(p, "duplicate metadata key 'k'");
    write_st_ok(p, "{\"__metadata__\":{},\"__metadata__\":{}}", 0);
    CHECK_BAD(p, "duplicate \"__metadata__\"");
}

ML_TEST(lenient_where_the_format_allows) {
    ml_st_file *f = NULL;
    const char *p = tpath("ok.safetensors");
    /* null metadata, unknown per-tensor fields, whitespace/newlines, unpadded header, any order */
    write_st_ok(p, "\n{ \"__metadata__\" : null,\n \"b\": {\"data_offsets\": [8, 9], \"shape\": [], \"dtype\": \"U8\", \"extra\": {}},"
                   " \"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]} }\t", 9);
    ML_CHECK_OK(ml_safetensors_load(p, &f));
    if (f) {
        ML_CHECK(ml_st_count(f) == 2 && !strcmp(ml_st_name(f, 0), "a") && ml_st_meta_count(f) == 0);
        ML_CHECK(ml_st_tensor(f, 1)->ndim == 0 && ml_tensor_item(ml_st_tensor(f, 1)) == 0xAB);
        ml_st_free(f);
        f = NULL;
    }
    /* BOOL bytes other than 0/1 load as canonical true */
    write_st_ok(p, "{\"m\":{\"dtype\":\"BOOL\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4);
    {   /* overwrite the data bytes with 0, 1, 2, 255 */
        size_t n = 0;
        unsigned char *b = read_file(p, &n);
        if (b) {
            memcpy(b + n - 4, "\0\1\2\377", 4);
            write_bytes(p, b, n);
            free(b);
        }
    }
    ML_CHECK_OK(ml_safetensors_load(p, &f));
    if (f) {
        const uint8_t want[] = {0, 1, 1, 1};
        ML_CHECK(!memcmp(ml_tensor_data(ml_st_tensor(f, 0)), want, 4));
        ml_st_free(f);
    }
}

/* --------------------------------------------------------------- save failures */
ML_TEST(save_errors_leave_nothing) {
    int64_t sh[1] = {3};
    ml_tensor *t = patterned(ML_F32, 1, sh, 1);
    ml_tensor *ts[2] = {t, t};
    const char *p = tpath("x.safetensors");
    const char *dup[] = {"w", "w"}, *res[] = {"__metadata__"}, *ok1[] = {"w"};
    ML_CHECK_ERR(ml_safetensors_save(p, 2, dup, ts, 0, NULL, NULL), ML_ERR_ARG);
    ML_CHECK(strstr(ml_errmsg(), "duplicate tensor name 'w'") && strstr(ml_errmsg(), p));
    ML_CHECK_ERR(ml_safetensors_save(p, 1, res, ts, 0, NULL, NULL), ML_ERR_ARG);
    const char *mk[] = {"k", "k"}, *mv[] = {"1", "2"};
    ML_CHECK_ERR(ml_safetensors_save(p, 1, ok1, ts, 2, mk, mv), ML_ERR_ARG);
    ML_CHECK(strstr(ml_errmsg(), "duplicate metadata key 'k'"));
    const char *badname[] = {"w\xc3"};
    ML_CHECK_ERR(ml_safetensors_save(p, 1, badname, ts, 0, NULL, NULL), ML_ERR_ARG);
    ml_tensor *nul[1] = {NULL};
    ML_CHECK_ERR(ml_safetensors_save(p, 1, ok1, nul, 0, NULL, NULL), ML_ERR_ARG);
    ML_CHECK(file_size(p) == -1);
    /* missing directory */
    const char *q = tpath("no/such/dir/x.safetensors");
    ML_CHECK_ERR(ml_safetensors_save(q, 1, ok1, ts, 0, NULL, NULL), ML_ERR_IO);
    ML_CHECK(strstr(ml_errmsg(), q) && strstr(ml_errmsg(), "No such file or directory"));
    ML_CHECK(file_size(q) == -1);
    /* rename onto a directory fails after the temporary was written: it must be removed */
    const char *d = tpath("adir");
    mkdir(d, 0755);
    char inner[600];
    snprintf(inner, sizeof inner, "%s/keep", d);
    write_bytes(inner, "x", 1);
    ML_CHECK_ERR(ml_safetensors_save(d, 1, ok1, ts, 0, NULL, NULL), ML_ERR_IO);
    ML_CHECK(strstr(ml_errmsg(), "rename"));
    ML_CHECK(count_entries(".tmp.") == 0);
    ML_CHECK(count_entries("x.safetensors") == 0);
    ml_tensor_release(t);
}

ML_TEST(failed_write_keeps_old_file) {
    /* A write that fails midway (file size limit -> EFBIG) must leave the previous file intact. */
    int64_t small[1] = {4}, big[1] = {100000};
    ml_tensor *a = patterned(ML_F64, 1, small, 1), *b = patterned(ML_F64, 1, big, 2);
    const char *p = tpath("ckpt.safetensors");
    const char *nm[] = {"w"};
    ML_CHECK_OK(ml_safetensors_save(p, 1, nm, &a, 0, NULL, NULL));
    long before = file_size(p);
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 64 * 1024;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    if (setrlimit(RLIMIT_FSIZE, &lim) == 0) {
        ml_err e = ml_safetensors_save(p, 1, nm, &b, 0, NULL, NULL);
        setrlimit(RLIMIT_FSIZE, &old);
        ML_CHECK(e == ML_ERR_IO);
        ML_CHECK(strstr(ml_errmsg(), p) && strstr(ml_errmsg(), "write failed"));
    } else {
        ML_FAIL_("setrlimit failed");
    }
    signal(SIGXFSZ, prev);
    ML_CHECK(file_size(p) == before);
    ML_CHECK(count_entries(".tmp.") == 0);
    ml_st_file *f = NULL;
    ML_CHECK_OK(ml_safetensors_load(p, &f));
    ML_CHECK(f && same_bytes(ml_st_tensor(f, 0), a));
    ml_st_free(f);
    ml_tensor_release(a);
    ml_tensor_release(b);
}

ML_TEST(dtype_strings) {
    for (int d = 0; d < ML_NDTYPES; d++) {
        const char *s = ml_st_dtype_str((ml_dtype)d);
        ML_CHECK(s && ml_st_dtype_from_str(s) == d);
    }
    ML_CHECK(ml_st_dtype_from_str("F8_E4M3") == -1 && ml_st_dtype_from_str("f32") == -1);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/ml_st_test_XXXXXX");
    if (!mkdtemp(g_dir)) { perror("mkdtemp"); return 1; }
    ML_RUN(roundtrip_every_dtype);
    ML_RUN(on_disk_layout);
    ML_RUN(noncontiguous_and_expanded);
    ML_RUN(grad_tensors_save_data_only);
    ML_RUN(empty_scalar_and_zero_tensors);
    ML_RUN(large_tensor);
    ML_RUN(overwrite_replaces_atomically);
    ML_RUN(reads_file_written_by_safetensors_torch);
    ML_RUN(bad_files);
    ML_RUN(lenient_where_the_format_allows);
    ML_RUN(save_errors_leave_nothing);
    ML_RUN(failed_write_keeps_old_file);
    ML_RUN(dtype_strings);
    rm_tree(g_dir);
    return ml_test_summary();
}
