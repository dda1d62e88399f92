/* Data pipeline binding: medlua._data (lua/medlua/data.lua and lua/medlua/transforms.lua build the
 * user API on top of it).
 *
 *   _data.pipeline(specs)                 -> Pipeline   specs: list of {type = "RandFlipd", name = ..., keys = {...}, ...}
 *   _data.apply(pipe, dict|list, {seed, epoch, index, from, to}) -> list of dicts
 *   _data.dataset(items, pipe, {native_end, cache_upto, cache_n, max_bytes}) -> Dataset
 *   _data.dataset_get(ds, i, seed, epoch)  -> list of dicts (i 1-based)
 *   _data.fill_cache(ds, nthreads), _data.cache_info(ds) -> table
 *   _data.loader(ds, {batch_size, shuffle, drop_last, num_workers, prefetch, seed, xform_seed, collate})
 *   _data.loader_start(l, epoch), _data.loader_next(l) -> batch | list of dicts | nil, indices
 *   _data.loader_stop(l), _data.loader_stats(l), _data.loader_reset_stats(l), _data.loader_len(l),
 *   _data.loader_close(l)
 *   _data.collate(list of dicts, "stack" | "pad") -> batch
 *   _data.listdir(dir) -> sorted list of names
 *
 * Dictionaries on the Lua side: an image is a tensor ([C, X, Y, Z], or [X, Y, Z] before
 * EnsureChannelFirstd) with its metadata in d[key .. "_meta_dict"] = {affine = 4x4 float64 tensor,
 * filename_or_obj = path, spatial_shape = {X, Y, Z}} (MONAI's meta-dict convention). A Volume value is
 * taken as an image with its affine. A batch has the stacked tensors [B, C, X, Y, Z] and
 * key_meta_dict = {affine = [B, 4, 4], filename_or_obj = {...}}. */
#include "data/ml_data.h"
#include "tensor/tensor_lua.h"
#include "volume/volume_lua.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PIPE_MT "medlua.DataPipeline"
#define DS_MT "medlua.Dataset"
#define LOADER_MT "medlua.DataLoader"

typedef struct { ml_pipeline *p; } pipe_box;
typedef struct { ml_dataset *d; } ds_box;
typedef struct { ml_loader *l; } loader_box;

static const char *const META_SUFFIX = "_meta_dict";

/* ============================================================ spec parsing */
static const struct {
    const char *name;
    int type;
} xf_names[] = {{"LoadImaged", ML_XF_LOAD},
                {"EnsureChannelFirstd", ML_XF_CHANNEL_FIRST},
                {"Spacingd", ML_XF_SPACING},
                {"Orientationd", ML_XF_ORIENTATION},
                {"ScaleIntensityRanged", ML_XF_SCALE_RANGE},
                {"NormalizeIntensityd", ML_XF_NORMALIZE},
                {"CropForegroundd", ML_XF_CROP_FOREGROUND},
                {"SpatialPadd", ML_XF_SPATIAL_PAD},
                {"CenterSpatialCropd", ML_XF_CENTER_CROP},
                {"EnsureTyped", ML_XF_NOOP},
                {"ToTensord", ML_XF_NOOP},
                {"RandSpatialCropd", ML_XF_RAND_SPATIAL_CROP},
                {"RandCropByPosNegLabeld", ML_XF_RAND_POSNEG_CROP},
                {"RandRotate90d", ML_XF_RAND_ROT90},
                {"RandFlipd", ML_XF_RAND_FLIP},
                {"RandAffined", ML_XF_RAND_AFFINE},
                {"RandGaussianNoised", ML_XF_RAND_NOISE},
                {"RandScaleIntensityd", ML_XF_RAND_SCALE_INT},
                {"RandShiftIntensityd", ML_XF_RAND_SHIFT_INT},
                {NULL, 0}};

static int field(lua_State *L, int idx, const char *k) {
    lua_getfield(L, idx, k);
    return lua_type(L, -1);
}

static bool f_bool(lua_State *L, int idx, const char *k, bool def, const char *xn) {
    int t = field(L, idx, k);
    bool v = def;
    if (t == LUA_TBOOLEAN) v = lua_toboolean(L, -1);
    else if (t != LUA_TNIL) luaL_error(L, "%s: option '%s' must be a boolean, got %s", xn, k, lua_typename(L, t));
    lua_pop(L, 1);
    return v;
}

static double f_num(lua_State *L, int idx, const char *k, double def, bool *given, const char *xn) {
    int t = field(L, idx, k);
    double v = def;
    if (given) *given = false;
    if (t == LUA_TNUMBER) {
        v = lua_tonumber(L, -1);
        if (!isfinite(v)) luaL_error(L, "%s: option '%s' must be finite, got %f", xn, k, v);
        if (given) *given = true;
    } else if (t != LUA_TNIL) {
        luaL_error(L, "%s: option '%s' must be a number, got %s", xn, k, lua_typename(L, t));
    }
    lua_pop(L, 1);
    return v;
}

static const char *f_str(lua_State *L, int idx, const char *k, const char *def, const char *xn) {
    int t = field(L, idx, k);
    const char *v = def;
    if (t == LUA_TSTRING) v = lua_tostring(L, -1); /* kept alive by the spec table */
    else if (t != LUA_TNIL) luaL_error(L, "%s: option '%s' must be a string, got %s", xn, k, lua_typename(L, t));
    lua_pop(L, 1);
    return v;
}

static void copy_key(lua_State *L, char *dst, const char *src, const char *xn, const char *what) {
    size_t n = strlen(src);
    if (n == 0 || n >= ML_DATA_KEY_MAX) luaL_error(L, "%s: %s '%s' must have 1 to %d bytes", xn, what, src, ML_DATA_KEY_MAX - 1);
    memcpy(dst, src, n + 1);
}

/* number -> repeated; list of 3 numbers. Returns false when absent. */
static bool f_vec3(lua_State *L, int idx, const char *k, double out[3], const char *xn) {
    int t = field(L, idx, k);
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return false;
    }
    if (t == LUA_TNUMBER) {
        out[0] = out[1] = out[2] = lua_tonumber(L, -1);
    } else if (t == LUA_TTABLE && luaL_len(L, -1) == 3) {
        for (int i = 0; i < 3; i++) {
            lua_geti(L, -1, i + 1);
            int ok;
            out[i] = lua_tonumberx(L, -1, &ok);
            if (!ok) luaL_error(L, "%s: option '%s'[%d] must be a number", xn, k, i + 1);
            lua_pop(L, 1);
        }
    } else {
        luaL_error(L, "%s: option '%s' must be a number or a list of 3 numbers (3-D images), got %s", xn, k,
                   t == LUA_TTABLE ? "a list of another length" : lua_typename(L, t));
    }
    for (int i = 0; i < 3; i++)
        if (!isfinite(out[i])) luaL_error(L, "%s: option '%s' must be finite", xn, k);
    lua_pop(L, 1);
    return true;
}

static bool f_ivec3(lua_State *L, int idx, const char *k, int64_t out[3], const char *xn) {
    double d[3];
    if (!f_vec3(L, idx, k, d, xn)) return false;
    for (int i = 0; i < 3; i++) {
        if (d[i] != floor(d[i]) || fabs(d[i]) > 1e15) luaL_error(L, "%s: option '%s' must hold integers", xn, k);
        out[i] = (int64_t)d[i];
    }
    return true;
}

static int parse_mode(lua_State *L, int idx, const char *xn) {
    if (lua_type(L, idx) == LUA_TNUMBER) {
        lua_Integer m = lua_tointeger(L, idx);
        if (m == 0) return ML_XF_NEAREST;
        if (m == 1) return ML_XF_LINEAR;
        luaL_error(L, "%s: mode %d is not supported (0 nearest, 1 linear)", xn, (int)m);
    }
    const char *s = lua_tostring(L, idx);
    if (!s) luaL_error(L, "%s: mode must be \"bilinear\" or \"nearest\", got %s", xn, luaL_typename(L, idx));
    if (!strcmp(s, "bilinear") || !strcmp(s, "linear") || !strcmp(s, "trilinear")) return ML_XF_LINEAR;
    if (!strcmp(s, "nearest")) return ML_XF_NEAREST;
    return luaL_error(L, "%s: mode must be \"bilinear\" or \"nearest\", got \"%s\"", xn, s);
}

/* range list: number x -> one parameter in [-x, x]; list of numbers / {lo, hi} pairs */
static int f_ranges(lua_State *L, int idx, const char *k, double (*out)[2], int maxn, const char *xn) {
    int t = field(L, idx, k);
    int n = 0;
    if (t == LUA_TNUMBER) {
        double x = fabs(lua_tonumber(L, -1));
        out[0][0] = -x;
        out[0][1] = x;
        n = 1;
    } else if (t == LUA_TTABLE) {
        n = (int)luaL_len(L, -1);
        if (n > maxn) luaL_error(L, "%s: option '%s' has %d entries, at most %d", xn, k, n, maxn);
        for (int i = 0; i < n; i++) {
            int tt = lua_geti(L, -1, i + 1);
            if (tt == LUA_TNUMBER) {
                double x = fabs(lua_tonumber(L, -1));
                out[i][0] = -x;
                out[i][1] = x;
            } else if (tt == LUA_TTABLE && luaL_len(L, -1) == 2) {
                for (int j = 0; j < 2; j++) {
                    lua_geti(L, -1, j + 1);
                    int ok;
                    out[i][j] = lua_tonumberx(L, -1, &ok);
                    if (!ok) luaL_error(L, "%s: option '%s'[%d] must be a number or a pair of numbers", xn, k, i + 1);
                    lua_pop(L, 1);
                }
            } else {
                luaL_error(L, "%s: option '%s'[%d] must be a number or a pair {min, max}", xn, k, i + 1);
            }
            lua_pop(L, 1);
        }
    } else if (t != LUA_TNIL) {
        luaL_error(L, "%s: option '%s' must be a number or a list, got %s", xn, k, lua_typename(L, t));
    }
    lua_pop(L, 1);
    return n;
}

/* factors / offsets: number f -> (-|f|, |f|); pair -> (min, max) */
static void f_lohi(lua_State *L, int idx, const char *k, double *lo, double *hi, const char *xn) {
    int t = field(L, idx, k);
    if (t == LUA_TNUMBER) {
        double f = lua_tonumber(L, -1);
        *lo = -fabs(f);
        *hi = fabs(f);
    } else if (t == LUA_TTABLE && luaL_len(L, -1) == 2) {
        double v[2];
        for (int j = 0; j < 2; j++) {
            lua_geti(L, -1, j + 1);
            int ok;
            v[j] = lua_tonumberx(L, -1, &ok);
            if (!ok) luaL_error(L, "%s: option '%s'[%d] must be a number", xn, k, j + 1);
            lua_pop(L, 1);
        }
        *lo = v[0] < v[1] ? v[0] : v[1];
        *hi = v[0] < v[1] ? v[1] : v[0];
    } else {
        luaL_error(L, "%s: option '%s' is required: a number or a pair {min, max}", xn, k);
    }
    lua_pop(L, 1);
}

static void parse_spec(lua_State *L, int idx, ml_xform *x) {
    idx = lua_absindex(L, idx);
    if (!lua_istable(L, idx)) luaL_error(L, "data.pipeline: each transform spec must be a table");
    lua_getfield(L, idx, "type");
    const char *ty = lua_tostring(L, -1);
    if (!ty) luaL_error(L, "data.pipeline: transform spec without a type");
    int type = -1;
    for (int i = 0; xf_names[i].name; i++)
        if (!strcmp(xf_names[i].name, ty)) type = xf_names[i].type;
    if (type < 0) luaL_error(L, "data.pipeline: unknown transform type '%s'", ty);
    const char *nm = f_str(L, idx, "name", ty, ty);
    ml_xform_init(x, type, nm);
    lua_pop(L, 1);
    const char *xn = x->name;
    /* keys */
    int t = field(L, idx, "keys");
    if (t == LUA_TSTRING) {
        x->nkeys = 1;
        copy_key(L, x->keys[0], lua_tostring(L, -1), xn, "key");
    } else if (t == LUA_TTABLE) {
        int n = (int)luaL_len(L, -1);
        if (n < 1 || n > ML_DATA_MAX_KEYS) luaL_error(L, "%s: keys must list 1 to %d keys, got %d", xn, ML_DATA_MAX_KEYS, n);
        for (int i = 0; i < n; i++) {
            lua_geti(L, -1, i + 1);
            const char *k = lua_tostring(L, -1);
            if (!k || lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "%s: keys[%d] must be a string", xn, i + 1);
            copy_key(L, x->keys[i], k, xn, "key");
            lua_pop(L, 1);
        }
        x->nkeys = n;
    } else {
        luaL_error(L, "%s: option 'keys' is required (a key or a list of keys), got %s", xn, lua_typename(L, t));
    }
    lua_pop(L, 1);
    /* mode: one or per key */
    t = field(L, idx, "mode");
    if (t == LUA_TTABLE) {
        int n = (int)luaL_len(L, -1);
        if (n != x->nkeys) luaL_error(L, "%s: mode lists %d modes for %d keys", xn, n, x->nkeys);
        for (int i = 0; i < n; i++) {
            lua_geti(L, -1, i + 1);
            x->mode[i] = parse_mode(L, -1, xn);
            lua_pop(L, 1);
        }
    } else if (t != LUA_TNIL && x->type != ML_XF_SPATIAL_PAD) {
        int m = parse_mode(L, -1, xn);
        for (int i = 0; i < ML_DATA_MAX_KEYS; i++) x->mode[i] = m;
    } else if (t != LUA_TNIL) {
        const char *pm = lua_tostring(L, -1);
        if (!pm || strcmp(pm, "constant")) luaL_error(L, "%s: mode must be \"constant\" (the only padding mode here)", xn);
    }
    lua_pop(L, 1);
    x->allow_missing_keys = f_bool(L, idx, "allow_missing_keys", false, xn);
    if (ml_xform_is_random(x) && x->type != ML_XF_RAND_SPATIAL_CROP && x->type != ML_XF_RAND_POSNEG_CROP) {
        x->prob = f_num(L, idx, "prob", 0.1, NULL, xn);
        if (!(x->prob >= 0 && x->prob <= 1)) luaL_error(L, "%s: prob must be in [0, 1], got %f", xn, x->prob);
    }
    double v3[3];
    switch (x->type) {
    case ML_XF_LOAD:
        x->ensure_channel_first = f_bool(L, idx, "ensure_channel_first", false, xn);
        break;
    case ML_XF_SPACING:
        if (!f_vec3(L, idx, "pixdim", x->pixdim, xn)) luaL_error(L, "%s: option 'pixdim' is required", xn);
        break;
    case ML_XF_ORIENTATION: {
        const char *ax = f_str(L, idx, "axcodes", NULL, xn);
        if (!ax || strlen(ax) != 3) luaL_error(L, "%s: axcodes must be 3 letters such as \"RAS\"", xn);
        memcpy(x->axcodes, ax, 4);
        break;
    }
    case ML_XF_SCALE_RANGE: {
        bool ga, gb;
        x->a_min = f_num(L, idx, "a_min", 0, &ga, xn);
        x->a_max = f_num(L, idx, "a_max", 0, &gb, xn);
        if (!ga || !gb) luaL_error(L, "%s: options 'a_min' and 'a_max' are required", xn);
        x->b_min = f_num(L, idx, "b_min", 0, &x->has_b_min, xn);
        x->b_max = f_num(L, idx, "b_max", 0, &x->has_b_max, xn);
        x->clip = f_bool(L, idx, "clip", false, xn);
        break;
    }
    case ML_XF_NORMALIZE: {
        x->nonzero = f_bool(L, idx, "nonzero", false, xn);
        x->channel_wise = f_bool(L, idx, "channel_wise", false, xn);
        const char *names[2] = {"subtrahend", "divisor"};
        for (int w = 0; w < 2; w++) {
            double *dst = w ? x->div : x->sub;
            int *cnt = w ? &x->ndiv : &x->nsub;
            int tt = field(L, idx, names[w]);
            if (tt == LUA_TNUMBER) {
                dst[0] = lua_tonumber(L, -1);
                *cnt = 1;
            } else if (tt == LUA_TTABLE) {
                int n = (int)luaL_len(L, -1);
                if (n < 1 || n > ML_DATA_MAX_KEYS) luaL_error(L, "%s: %s must list 1 to %d values", xn, names[w], ML_DATA_MAX_KEYS);
                for (int i = 0; i < n; i++) {
                    lua_geti(L, -1, i + 1);
                    dst[i] = luaL_checknumber(L, -1);
                    lua_pop(L, 1);
                }
                *cnt = n;
                if (n > 1 && !x->channel_wise) luaL_error(L, "%s: a list of %s values needs channel_wise=true", xn, names[w]);
            } else if (tt != LUA_TNIL) {
                luaL_error(L, "%s: %s must be a number or a list of numbers", xn, names[w]);
            }
            lua_pop(L, 1);
        }
        break;
    }
    case ML_XF_CROP_FOREGROUND: {
        const char *sk = f_str(L, idx, "source_key", NULL, xn);
        if (!sk) luaL_error(L, "%s: option 'source_key' is required", xn);
        copy_key(L, x->source_key, sk, xn, "source_key");
        x->threshold = f_num(L, idx, "threshold", 0, NULL, xn);
        int64_t m[3] = {0, 0, 0};
        f_ivec3(L, idx, "margin", m, xn);
        for (int a = 0; a < 3; a++) {
            if (m[a] < 0) luaL_error(L, "%s: margin must not be negative", xn);
            x->margin[a] = m[a];
        }
        x->allow_smaller = f_bool(L, idx, "allow_smaller", false, xn);
        f_ivec3(L, idx, "k_divisible", x->k_divisible, xn);
        int tt = field(L, idx, "channel_indices");
        if (tt == LUA_TNUMBER) {
            x->nchan_idx = 1;
            x->channel_indices[0] = (int)lua_tointeger(L, -1);
        } else if (tt == LUA_TTABLE) {
            int n = (int)luaL_len(L, -1);
            if (n < 1 || n > ML_DATA_MAX_KEYS) luaL_error(L, "%s: channel_indices must list 1 to %d channels", xn, ML_DATA_MAX_KEYS);
            for (int i = 0; i < n; i++) {
                lua_geti(L, -1, i + 1);
                x->channel_indices[i] = (int)luaL_checkinteger(L, -1);
                lua_pop(L, 1);
            }
            x->nchan_idx = n;
        }
        lua_pop(L, 1);
        break;
    }
    case ML_XF_SPATIAL_PAD: {
        if (!f_ivec3(L, idx, "spatial_size", x->size, xn)) luaL_error(L, "%s: option 'spatial_size' is required", xn);
        const char *m = f_str(L, idx, "method", "symmetric", xn);
        if (!strcmp(m, "end")) x->pad_end = true;
        else if (strcmp(m, "symmetric")) luaL_error(L, "%s: method must be \"symmetric\" or \"end\", got \"%s\"", xn, m);
        x->pad_value = f_num(L, idx, "value", 0, NULL, xn);
        break;
    }
    case ML_XF_CENTER_CROP:
        if (!f_ivec3(L, idx, "roi_size", x->size, xn)) luaL_error(L, "%s: option 'roi_size' is required", xn);
        break;
    case ML_XF_RAND_SPATIAL_CROP:
        if (!f_ivec3(L, idx, "roi_size", x->size, xn)) luaL_error(L, "%s: option 'roi_size' is required", xn);
        f_ivec3(L, idx, "max_roi_size", x->max_size, xn);
        x->random_center = f_bool(L, idx, "random_center", true, xn);
        x->random_size = f_bool(L, idx, "random_size", false, xn);
        break;
    case ML_XF_RAND_POSNEG_CROP: {
        const char *lk = f_str(L, idx, "label_key", NULL, xn);
        if (!lk) luaL_error(L, "%s: option 'label_key' is required", xn);
        copy_key(L, x->label_key, lk, xn, "label_key");
        const char *ik = f_str(L, idx, "image_key", NULL, xn);
        if (ik) copy_key(L, x->image_key, ik, xn, "image_key");
        if (!f_ivec3(L, idx, "spatial_size", x->size, xn)) luaL_error(L, "%s: option 'spatial_size' is required", xn);
        x->pos = f_num(L, idx, "pos", 1, NULL, xn);
        x->neg = f_num(L, idx, "neg", 1, NULL, xn);
        if (x->pos < 0 || x->neg < 0 || x->pos + x->neg <= 0)
            luaL_error(L, "%s: pos and neg must be >= 0 and not both 0, got %f and %f", xn, x->pos, x->neg);
        double ns = f_num(L, idx, "num_samples", 1, NULL, xn);
        if (ns < 1 || ns > 1024 || ns != floor(ns)) luaL_error(L, "%s: num_samples must be an integer in [1, 1024]", xn);
        x->num_samples = (int)ns;
        x->image_threshold = f_num(L, idx, "image_threshold", 0, NULL, xn);
        x->allow_smaller = f_bool(L, idx, "allow_smaller", false, xn);
        break;
    }
    case ML_XF_RAND_ROT90: {
        double mk = f_num(L, idx, "max_k", 3, NULL, xn);
        if (mk < 1 || mk != floor(mk)) luaL_error(L, "%s: max_k must be an integer >= 1", xn);
        x->max_k = (int)mk;
        int tt = field(L, idx, "spatial_axes");
        if (tt == LUA_TTABLE) {
            if (luaL_len(L, -1) != 2) luaL_error(L, "%s: spatial_axes must be 2 axes", xn);
            for (int i = 0; i < 2; i++) {
                lua_geti(L, -1, i + 1);
                int a = (int)luaL_checkinteger(L, -1);
                if (a < 0) a += 3;
                if (a < 0 || a > 2) luaL_error(L, "%s: spatial_axes must be in 0..2 (spatial axes, 0-based)", xn);
                x->axes[i] = a;
                lua_pop(L, 1);
            }
            if (x->axes[0] == x->axes[1]) luaL_error(L, "%s: spatial_axes must be two different axes", xn);
        } else if (tt != LUA_TNIL) {
            luaL_error(L, "%s: spatial_axes must be a pair of axes", xn);
        }
        lua_pop(L, 1);
        break;
    }
    case ML_XF_RAND_FLIP: {
        int tt = field(L, idx, "spatial_axis");
        if (tt == LUA_TNUMBER || tt == LUA_TTABLE) {
            x->flip_mask = 0;
            int n = tt == LUA_TNUMBER ? 1 : (int)luaL_len(L, -1);
            for (int i = 0; i < n; i++) {
                if (tt == LUA_TTABLE) lua_geti(L, -1, i + 1);
                else lua_pushvalue(L, -1);
                int a = (int)luaL_checkinteger(L, -1);
                if (a < 0) a += 3;
                if (a < 0 || a > 2) luaL_error(L, "%s: spatial_axis must be in 0..2 (spatial axes, 0-based)", xn);
                x->flip_mask |= 1 << a;
                lua_pop(L, 1);
            }
        } else if (tt != LUA_TNIL) {
            luaL_error(L, "%s: spatial_axis must be an axis or a list of axes", xn);
        }
        lua_pop(L, 1);
        break;
    }
    case ML_XF_RAND_AFFINE: {
        x->nrot = f_ranges(L, idx, "rotate_range", x->rot, 3, xn);
        x->nshear = f_ranges(L, idx, "shear_range", x->shear, 6, xn);
        x->ntrans = f_ranges(L, idx, "translate_range", x->trans, 3, xn);
        x->nscale = f_ranges(L, idx, "scale_range", x->scale, 3, xn);
        x->has_size = f_ivec3(L, idx, "spatial_size", x->size, xn);
        const char *pm = f_str(L, idx, "padding_mode", "reflection", xn);
        if (!strcmp(pm, "zeros")) x->padding_mode = ML_XF_PAD_ZEROS;
        else if (!strcmp(pm, "border")) x->padding_mode = ML_XF_PAD_BORDER;
        else if (!strcmp(pm, "reflection")) x->padding_mode = ML_XF_PAD_REFLECTION;
        else luaL_error(L, "%s: padding_mode must be \"zeros\", \"border\" or \"reflection\", got \"%s\"", xn, pm);
        break;
    }
    case ML_XF_RAND_NOISE:
        x->mean = f_num(L, idx, "mean", 0, NULL, xn);
        x->std = f_num(L, idx, "std", 0.1, NULL, xn);
        if (x->std < 0) luaL_error(L, "%s: std must be >= 0", xn);
        x->sample_std = f_bool(L, idx, "sample_std", true, xn);
        break;
    case ML_XF_RAND_SCALE_INT:
        f_lohi(L, idx, "factors", &x->lo, &x->hi, xn);
        x->channel_wise = f_bool(L, idx, "channel_wise", false, xn);
        break;
    case ML_XF_RAND_SHIFT_INT:
        f_lohi(L, idx, "offsets", &x->lo, &x->hi, xn);
        x->channel_wise = f_bool(L, idx, "channel_wise", false, xn);
        break;
    default: break;
    }
    (void)v3;
}

static ml_pipeline *check_pipe(lua_State *L, int idx, const char *fn) {
    pipe_box *b = luaL_testudata(L, idx, PIPE_MT);
    if (!b || !b->p) luaL_error(L, "%s: argument #%d: expected a data pipeline", fn, idx);
    return b->p;
}

static int l_pipeline(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    int n = (int)luaL_len(L, 1);
    if (n > 1000) return luaL_error(L, "data.pipeline: too many transforms (%d)", n);
    ml_xform *x = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *x, 0); /* scratch, GC'd */
    for (int i = 0; i < n; i++) {
        lua_geti(L, 1, i + 1);
        parse_spec(L, -1, &x[i]);
        lua_pop(L, 1);
    }
    pipe_box *b = lua_newuserdatauv(L, sizeof *b, 0);
    b->p = NULL;
    luaL_setmetatable(L, PIPE_MT);
    b->p = ml_pipeline_new(n, x);
    if (!b->p) return ml_lua_error(L, ML_ERR_OOM);
    return 1;
}

static int pipe_gc(lua_State *L) {
    pipe_box *b = luaL_checkudata(L, 1, PIPE_MT);
    ml_pipeline_release(b->p);
    b->p = NULL;
    return 0;
}

/* _data.pipeline_info(pipe) -> n, first_random (0-based) */
static int l_pipeline_info(lua_State *L) {
    ml_pipeline *p = check_pipe(L, 1, "data.pipeline_info");
    lua_pushinteger(L, p->n);
    lua_pushinteger(L, ml_pipeline_first_random(p));
    return 2;
}

/* ============================================================ dict conversion */
static bool ends_with_meta(const char *k, size_t n) {
    size_t m = strlen(META_SUFFIX);
    return n > m && !strcmp(k + n - m, META_SUFFIX);
}

/* sample from the Lua dict at idx (raises; the sample is anchored in a userdata so an error frees it) */
typedef struct { ml_dsample *s; } sample_box;

static int sample_box_gc(lua_State *L) {
    sample_box *b = lua_touserdata(L, 1);
    ml_dsample_free(b->s);
    b->s = NULL;
    return 0;
}

static sample_box *new_sample_box(lua_State *L) {
    sample_box *b = lua_newuserdatauv(L, sizeof *b, 0);
    b->s = NULL;
    if (luaL_newmetatable(L, "medlua.DataSampleBox")) {
        lua_pushcfunction(L, sample_box_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    b->s = ml_dsample_new();
    if (!b->s) ml_lua_error(L, ML_ERR_OOM);
    return b;
}

static void meta_of(lua_State *L, int dict, const char *key, double aff[16], bool *has_aff, const char **fname) {
    *has_aff = false;
    *fname = NULL;
    lua_pushfstring(L, "%s%s", key, META_SUFFIX);
    lua_gettable(L, dict);
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "affine");
        if (!lua_isnil(L, -1)) {
            char fn[160];
            snprintf(fn, sizeof fn, "data: %s%s.affine", key, META_SUFFIX);
            ml_lua_check_affine(L, -1, fn, aff);
            *has_aff = true;
        }
        lua_pop(L, 1);
        lua_getfield(L, -1, "filename_or_obj");
        if (lua_type(L, -1) == LUA_TSTRING) *fname = lua_tostring(L, -1); /* anchored by the meta table */
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static ml_dsample *dict_to_sample(lua_State *L, int idx, const char *what) {
    idx = lua_absindex(L, idx);
    if (!lua_istable(L, idx)) luaL_error(L, "%s: expected a dictionary (table), got %s", what, luaL_typename(L, idx));
    sample_box *b = new_sample_box(L);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            luaL_error(L, "%s: dictionary keys must be strings, got %s", what, luaL_typename(L, -2));
        }
        size_t kl;
        const char *k = lua_tolstring(L, -2, &kl);
        if (ends_with_meta(k, kl)) {
            lua_pop(L, 1);
            continue;
        }
        if (kl == 0 || kl >= ML_DATA_KEY_MAX) luaL_error(L, "%s: key '%s' must have 1 to %d bytes", what, k, ML_DATA_KEY_MAX - 1);
        ml_err e = ML_OK;
        int t = lua_type(L, -1);
        ml_tensor *tt;
        ml_volume *vol;
        if (t == LUA_TSTRING) e = ml_dsample_set_str(b->s, k, lua_tostring(L, -1));
        else if (t == LUA_TBOOLEAN) e = ml_dsample_set_bool(b->s, k, lua_toboolean(L, -1));
        else if (t == LUA_TNUMBER && lua_isinteger(L, -1)) e = ml_dsample_set_int(b->s, k, lua_tointeger(L, -1));
        else if (t == LUA_TNUMBER) e = ml_dsample_set_num(b->s, k, lua_tonumber(L, -1));
        else if ((tt = ml_lua_totensor(L, -1))) {
            double aff[16];
            bool has;
            const char *fname;
            meta_of(L, idx, k, aff, &has, &fname);
            if (tt->ndim != 3 && tt->ndim != 4)
                luaL_error(L, "%s: key '%s': an image tensor must be [X, Y, Z] or [C, X, Y, Z], got shape %s", what, k,
                           ml_shape_str(tt->ndim, tt->shape));
            ml_tensor_retain(tt);
            e = ml_dsample_set_tensor(b->s, k, tt, has ? aff : NULL, fname, tt->ndim == 3);
        } else if ((vol = ml_lua_tovolume(L, -1))) {
            ml_tensor *d = vol->data, *p = NULL;
            if (d->ndim == 4) {
                int perm[4] = {3, 0, 1, 2};
                e = ml_permute(&p, d, perm);
            } else {
                ml_tensor_retain(d);
                p = d;
            }
            if (!e) e = ml_dsample_set_tensor(b->s, k, p, vol->affine, NULL, d->ndim == 3);
        } else if (t != LUA_TNIL) {
            luaL_error(L, "%s: key '%s': unsupported value of type %s (expected a string, number, boolean, tensor or volume)",
                       what, k, luaL_typename(L, -1));
        }
        if (e) ml_lua_error_fn(L, what, e);
        lua_pop(L, 1);
    }
    ml_dsample *s = b->s;
    b->s = NULL;
    lua_pop(L, 1); /* the box */
    return s;
}

static void push_affine(lua_State *L, const double a[16]) {
    int64_t sh[2] = {4, 4};
    ml_tensor *t = NULL;
    if (ml_tensor_from_data(&t, ML_F64, 2, sh, a)) ml_lua_error(L, ML_ERR_OOM);
    ml_lua_push_tensor(L, t);
}

static void push_sample(lua_State *L, const ml_dsample *s) {
    lua_createtable(L, 0, s->n * 2);
    for (int i = 0; i < s->n; i++) {
        const ml_dval *v = &s->v[i];
        switch (v->kind) {
        case ML_DV_STR: lua_pushstring(L, v->str); break;
        case ML_DV_NUM: lua_pushnumber(L, v->num); break;
        case ML_DV_INT: lua_pushinteger(L, (lua_Integer)v->inum); break;
        case ML_DV_BOOL: lua_pushboolean(L, v->b); break;
        case ML_DV_TENSOR: {
            if (v->no_channel) {
                ml_tensor *sel = NULL;
                ml_err e = ml_select(&sel, v->t, 0, 0);
                if (e) ml_lua_error(L, e);
                ml_lua_push_tensor(L, sel);
            } else {
                ml_lua_push_tensor_retain(L, v->t);
            }
            lua_setfield(L, -2, v->key);
            lua_createtable(L, 0, 3);
            push_affine(L, v->affine);
            lua_setfield(L, -2, "affine");
            if (v->str) {
                lua_pushstring(L, v->str);
                lua_setfield(L, -2, "filename_or_obj");
            }
            lua_createtable(L, 3, 0);
            for (int a = 0; a < 3; a++) {
                lua_pushinteger(L, v->t->shape[a + 1]);
                lua_rawseti(L, -2, a + 1);
            }
            lua_setfield(L, -2, "spatial_shape");
            lua_pushfstring(L, "%s%s", v->key, META_SUFFIX);
            lua_insert(L, -2);
            lua_settable(L, -3);
            continue;
        }
        default: lua_pushnil(L);
        }
        lua_setfield(L, -2, v->key);
    }
}

static void push_list(lua_State *L, const ml_dlist *l) {
    lua_createtable(L, l->n, 0);
    for (int i = 0; i < l->n; i++) {
        push_sample(L, l->s[i]);
        lua_rawseti(L, -2, i + 1);
    }
}

static void push_batch(lua_State *L, ml_batch *b) {
    lua_createtable(L, 0, b->nf * 2);
    for (int i = 0; i < b->nf; i++) {
        ml_cfield *f = &b->f[i];
        if (f->kind == ML_DV_STR) {
            lua_createtable(L, (int)b->B, 0);
            for (int64_t j = 0; j < b->B; j++) {
                lua_pushstring(L, f->strs[j]);
                lua_rawseti(L, -2, j + 1);
            }
            lua_setfield(L, -2, f->key);
            continue;
        }
        ml_lua_push_tensor(L, f->t);
        f->t = NULL;
        lua_setfield(L, -2, f->key);
        if (f->kind == ML_DV_TENSOR) {
            lua_createtable(L, 0, 2);
            ml_lua_push_tensor(L, f->affine);
            f->affine = NULL;
            lua_setfield(L, -2, "affine");
            lua_createtable(L, (int)b->B, 0);
            for (int64_t j = 0; j < b->B; j++) {
                if (f->strs && f->strs[j]) lua_pushstring(L, f->strs[j]);
                else lua_pushboolean(L, false);
                lua_rawseti(L, -2, j + 1);
            }
            lua_setfield(L, -2, "filename_or_obj");
            lua_pushfstring(L, "%s%s", f->key, META_SUFFIX);
            lua_insert(L, -2);
            lua_settable(L, -3);
        }
    }
}

/* list of dicts (or one dict) at idx -> dlist anchored in a box */
typedef struct { ml_dlist *l; } list_box;

static int list_box_gc(lua_State *L) {
    list_box *b = lua_touserdata(L, 1);
    ml_dlist_free(b->l);
    b->l = NULL;
    return 0;
}

static list_box *new_list_box(lua_State *L) {
    list_box *b = lua_newuserdatauv(L, sizeof *b, 0);
    b->l = NULL;
    if (luaL_newmetatable(L, "medlua.DataListBox")) {
        lua_pushcfunction(L, list_box_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    b->l = ml_dlist_new();
    if (!b->l) ml_lua_error(L, ML_ERR_OOM);
    return b;
}

static bool is_list_of_dicts(lua_State *L, int idx) {
    if (!lua_istable(L, idx)) return false;
    lua_geti(L, idx, 1);
    bool r = lua_istable(L, -1) && !ml_lua_totensor(L, -1);
    lua_pop(L, 1);
    return r;
}

/* pushes the box */
static list_box *to_list(lua_State *L, int idx, const char *what) {
    idx = lua_absindex(L, idx);
    list_box *b = new_list_box(L);
    if (is_list_of_dicts(L, idx)) {
        int n = (int)luaL_len(L, idx);
        for (int i = 0; i < n; i++) {
            lua_geti(L, idx, i + 1);
            ml_dsample *s = dict_to_sample(L, -1, what);
            lua_pop(L, 1);
            if (ml_dlist_push(b->l, s)) ml_lua_error(L, ML_ERR_OOM);
        }
    } else {
        ml_dsample *s = dict_to_sample(L, idx, what);
        if (ml_dlist_push(b->l, s)) ml_lua_error(L, ML_ERR_OOM);
    }
    return b;
}

static uint64_t opt_u64(lua_State *L, int idx, const char *k, uint64_t def) {
    if (!lua_istable(L, idx)) return def;
    lua_getfield(L, idx, k);
    uint64_t v = def;
    if (lua_isinteger(L, -1)) v = (uint64_t)lua_tointeger(L, -1);
    else if (lua_type(L, -1) == LUA_TNUMBER) v = (uint64_t)(int64_t)lua_tonumber(L, -1);
    lua_pop(L, 1);
    return v;
}

/* _data.apply(pipe, dict|list, {seed, epoch, index, from, to}) -> list of dicts */
static int l_apply(lua_State *L) {
    ml_pipeline *p = check_pipe(L, 1, "data.apply");
    list_box *b = to_list(L, 2, "transform");
    uint64_t seed = opt_u64(L, 3, "seed", 0), epoch = opt_u64(L, 3, "epoch", 0), index = opt_u64(L, 3, "index", 0);
    int from = (int)opt_u64(L, 3, "from", 0), to = (int)opt_u64(L, 3, "to", (uint64_t)p->n);
    if (from < 0) from = 0;
    ml_err e = ml_pipeline_run(p, from, to, &b->l, seed, epoch, index);
    if (e) return ml_lua_error(L, e);
    ml_lua_account(L);
    push_list(L, b->l);
    return 1;
}

/* ============================================================ datasets */
static ml_dataset *check_ds(lua_State *L, int idx, const char *fn) {
    ds_box *b = luaL_testudata(L, idx, DS_MT);
    if (!b || !b->d) luaL_error(L, "%s: argument #%d: expected a dataset", fn, idx);
    return b->d;
}

static int ds_gc(lua_State *L) {
    ds_box *b = luaL_checkudata(L, 1, DS_MT);
    ml_dataset_release(b->d);
    b->d = NULL;
    return 0;
}

typedef struct { ml_dsample **v; int64_t n; } items_box;

static int items_box_gc(lua_State *L) {
    items_box *b = lua_touserdata(L, 1);
    if (b->v)
        for (int64_t i = 0; i < b->n; i++) ml_dsample_free(b->v[i]);
    free(b->v);
    b->v = NULL;
    return 0;
}

/* _data.dataset(items, pipe, opts) */
static int l_dataset(lua_State *L) {
    const char *fn = "Dataset";
    luaL_checktype(L, 1, LUA_TTABLE);
    ml_pipeline *p = check_pipe(L, 2, fn);
    int64_t n = (int64_t)luaL_len(L, 1);
    items_box *ib = lua_newuserdatauv(L, sizeof *ib, 0);
    ib->v = NULL;
    ib->n = 0;
    if (luaL_newmetatable(L, "medlua.DataItemsBox")) {
        lua_pushcfunction(L, items_box_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    ib->v = calloc((size_t)(n ? n : 1), sizeof *ib->v);
    if (!ib->v) return ml_lua_error(L, ML_ERR_OOM);
    for (int64_t i = 0; i < n; i++) {
        lua_geti(L, 1, i + 1);
        char what[64];
        snprintf(what, sizeof what, "Dataset: data[%lld]", (long long)(i + 1));
        ib->v[i] = dict_to_sample(L, -1, what);
        ib->n = i + 1;
        lua_pop(L, 1);
    }
    ml_dataset_opts o = {.native_end = p->n, .cache_upto = 0, .cache_n = 0, .max_bytes = 0};
    if (lua_istable(L, 3)) {
        o.native_end = (int)opt_u64(L, 3, "native_end", (uint64_t)p->n);
        o.cache_upto = (int)opt_u64(L, 3, "cache_upto", 0);
        o.cache_n = (int64_t)opt_u64(L, 3, "cache_n", 0);
        lua_getfield(L, 3, "max_bytes");
        if (lua_type(L, -1) == LUA_TNUMBER) o.max_bytes = (int64_t)lua_tonumber(L, -1);
        lua_pop(L, 1);
    }
    ds_box *b = lua_newuserdatauv(L, sizeof *b, 0);
    b->d = NULL;
    luaL_setmetatable(L, DS_MT);
    ml_dsample **items = ib->v;
    ib->v = NULL; /* the dataset takes them (and frees them on error) */
    ml_err e = ml_dataset_new(&b->d, items, n, p, &o);
    if (e) return ml_lua_error_fn(L, fn, e);
    return 1;
}

static int l_dataset_len(lua_State *L) {
    lua_pushinteger(L, ml_dataset_len(check_ds(L, 1, "Dataset:len")));
    return 1;
}

/* _data.dataset_get(ds, i (1-based), seed, epoch) -> list of dicts */
static int l_dataset_get(lua_State *L) {
    ml_dataset *d = check_ds(L, 1, "Dataset:get");
    int64_t i = (int64_t)luaL_checkinteger(L, 2);
    uint64_t seed = (uint64_t)luaL_optinteger(L, 3, 0), epoch = (uint64_t)luaL_optinteger(L, 4, 0);
    list_box *b = new_list_box(L);
    ml_dlist_free(b->l);
    b->l = NULL;
    ml_err e = ml_dataset_get(d, i - 1, seed, epoch, &b->l);
    if (e) return ml_lua_error_fn(L, "Dataset", e);
    ml_lua_account(L);
    push_list(L, b->l);
    return 1;
}

static int l_fill_cache(lua_State *L) {
    ml_dataset *d = check_ds(L, 1, "CacheDataset");
    int nt = (int)luaL_optinteger(L, 2, ml_num_threads());
    ml_err e = ml_dataset_fill_cache(d, nt);
    if (e) return ml_lua_error(L, e);
    ml_lua_account(L);
    return 0;
}

static void set_int(lua_State *L, const char *k, int64_t v) {
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, k);
}
static void set_num(lua_State *L, const char *k, double v) {
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
}

static int l_cache_info(lua_State *L) {
    ml_dataset *d = check_ds(L, 1, "CacheDataset:cache_info");
    ml_cache_info ci;
    ml_dataset_cache_info(d, &ci);
    lua_createtable(L, 0, 7);
    set_int(L, "items", ci.items);
    set_int(L, "bytes", ci.bytes);
    set_int(L, "skipped", ci.skipped);
    set_int(L, "hits", ci.hits);
    set_int(L, "misses", ci.misses);
    set_int(L, "cache_num", ci.cache_n);
    set_int(L, "max_bytes", ci.max_bytes);
    return 1;
}

/* ============================================================ loaders */
static ml_loader *check_loader(lua_State *L, int idx, const char *fn) {
    loader_box *b = luaL_testudata(L, idx, LOADER_MT);
    if (!b) luaL_error(L, "%s: argument #%d: expected a data loader", fn, idx);
    if (!b->l) luaL_error(L, "%s: the data loader is closed", fn);
    return b->l;
}

static int loader_gc(lua_State *L) {
    loader_box *b = luaL_checkudata(L, 1, LOADER_MT);
    ml_loader_free(b->l);
    b->l = NULL;
    return 0;
}

static int l_loader(lua_State *L) {
    const char *fn = "DataLoader";
    ml_dataset *d = check_ds(L, 1, fn);
    ml_loader_opts o;
    ml_loader_opts_init(&o);
    if (lua_istable(L, 2)) {
        o.batch_size = (int64_t)opt_u64(L, 2, "batch_size", 1);
        o.num_workers = (int)opt_u64(L, 2, "num_workers", 0);
        o.prefetch = (int)opt_u64(L, 2, "prefetch", 2);
        o.seed = opt_u64(L, 2, "seed", 0);
        o.xform_seed = opt_u64(L, 2, "xform_seed", o.seed);
        lua_getfield(L, 2, "shuffle");
        o.shuffle = lua_toboolean(L, -1);
        lua_getfield(L, 2, "drop_last");
        o.drop_last = lua_toboolean(L, -1);
        lua_pop(L, 2);
        const char *c = ml_lua_opt_str(L, 2, "collate", "stack", fn);
        if (!strcmp(c, "stack")) o.collate = ML_COLLATE_STACK;
        else if (!strcmp(c, "pad")) o.collate = ML_COLLATE_PAD;
        else if (!strcmp(c, "none")) o.collate = -1;
        else return luaL_error(L, "%s: collate must be \"stack\", \"pad\" or \"none\", got \"%s\"", fn, c);
    }
    loader_box *b = lua_newuserdatauv(L, sizeof *b, 1);
    b->l = NULL;
    luaL_setmetatable(L, LOADER_MT);
    ml_err e = ml_loader_new(&b->l, d, &o);
    if (e) return ml_lua_error(L, e);
    return 1;
}

static int l_loader_start(lua_State *L) {
    ml_loader *l = check_loader(L, 1, "DataLoader");
    ml_err e = ml_loader_start(l, (uint64_t)luaL_checkinteger(L, 2));
    if (e) return ml_lua_error(L, e);
    return 0;
}

typedef struct {
    ml_batch *b;
    ml_dlist *s;
    int64_t *ix;
} next_box;

static int next_box_gc(lua_State *L) {
    next_box *b = lua_touserdata(L, 1);
    ml_batch_free(b->b);
    ml_dlist_free(b->s);
    free(b->ix);
    b->b = NULL;
    b->s = NULL;
    b->ix = NULL;
    return 0;
}

/* -> batch (or list of dicts), list of dataset indices (1-based); nil at the end of the epoch */
static int l_loader_next(lua_State *L) {
    ml_loader *l = check_loader(L, 1, "DataLoader");
    next_box *nb = lua_newuserdatauv(L, sizeof *nb, 0);
    memset(nb, 0, sizeof *nb);
    if (luaL_newmetatable(L, "medlua.DataNextBox")) {
        lua_pushcfunction(L, next_box_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    int64_t n = 0;
    ml_err e = ml_loader_next(l, &nb->b, &nb->s, &nb->ix, &n);
    if (e) return ml_lua_error(L, e);
    ml_lua_account(L);
    if (!nb->b && !nb->s) {
        lua_pushnil(L);
        return 1;
    }
    if (nb->b) push_batch(L, nb->b);
    else push_list(L, nb->s);
    lua_createtable(L, (int)n, 0);
    for (int64_t j = 0; j < n && nb->ix; j++) {
        lua_pushinteger(L, nb->ix[j] + 1);
        lua_rawseti(L, -2, j + 1);
    }
    return 2;
}

static int l_loader_stop(lua_State *L) {
    loader_box *b = luaL_checkudata(L, 1, LOADER_MT);
    if (b->l) ml_loader_stop(b->l);
    return 0;
}

static int l_loader_len(lua_State *L) {
    lua_pushinteger(L, ml_loader_nbatches(check_loader(L, 1, "DataLoader")));
    return 1;
}

static int l_loader_stats(lua_State *L) {
    ml_loader *l = check_loader(L, 1, "DataLoader:stats");
    ml_loader_stats s;
    ml_loader_get_stats(l, &s);
    lua_createtable(L, 0, 12);
    set_int(L, "batches", s.batches);
    set_int(L, "samples", s.samples);
    set_int(L, "epoch", s.epoch);
    set_num(L, "wait_s", s.wait_s);
    set_num(L, "step_s", s.step_s);
    set_num(L, "produce_s", s.produce_s);
    set_num(L, "collate_s", s.collate_s);
    double tot = s.wait_s + s.step_s;
    set_num(L, "wait_frac", tot > 0 ? s.wait_s / tot : 0);
    set_num(L, "samples_per_s", tot > 0 ? (double)s.samples / tot : 0);
    set_int(L, "num_workers", s.num_workers);
    set_int(L, "prefetch", s.prefetch);
    return 1;
}

static int l_loader_reset_stats(lua_State *L) {
    ml_loader_reset_stats(check_loader(L, 1, "DataLoader:reset_stats"));
    return 0;
}

/* ============================================================ collate / listdir */
static int l_collate(lua_State *L) {
    const char *fn = "data.collate";
    luaL_checktype(L, 1, LUA_TTABLE);
    const char *m = luaL_optstring(L, 2, "stack");
    int mode = !strcmp(m, "stack") ? ML_COLLATE_STACK : !strcmp(m, "pad") ? ML_COLLATE_PAD : -1;
    if (mode < 0) return luaL_error(L, "%s: mode must be \"stack\" or \"pad\", got \"%s\"", fn, m);
    if (luaL_len(L, 1) < 1) return luaL_error(L, "%s: no samples", fn);
    list_box *lb = to_list(L, 1, fn);
    next_box *nb = lua_newuserdatauv(L, sizeof *nb, 0);
    memset(nb, 0, sizeof *nb);
    luaL_setmetatable(L, "medlua.DataNextBox");
    ml_err e = ml_collate(&nb->b, lb->l->s, lb->l->n, mode);
    if (e) return ml_lua_error(L, e);
    ml_lua_account(L);
    push_batch(L, nb->b);
    return 1;
}

static int l_listdir(lua_State *L) {
    const char *dir = luaL_checkstring(L, 1);
    char **names = NULL;
    int n = 0;
    ml_err e = ml_data_listdir(dir, &names, &n);
    if (e) return ml_lua_error(L, e);
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_pushstring(L, names[i]);
        lua_rawseti(L, -2, i + 1);
    }
    ml_data_free_names(names, n);
    return 1;
}

static const luaL_Reg funcs[] = {{"pipeline", l_pipeline},
                                 {"pipeline_info", l_pipeline_info},
                                 {"apply", l_apply},
                                 {"dataset", l_dataset},
                                 {"dataset_len", l_dataset_len},
                                 {"dataset_get", l_dataset_get},
                                 {"fill_cache", l_fill_cache},
                                 {"cache_info", l_cache_info},
                                 {"loader", l_loader},
                                 {"loader_start", l_loader_start},
                                 {"loader_next", l_loader_next},
                                 {"loader_stop", l_loader_stop},
                                 {"loader_close", loader_gc},
                                 {"loader_len", l_loader_len},
                                 {"loader_stats", l_loader_stats},
                                 {"loader_reset_stats", l_loader_reset_stats},
                                 {"collate", l_collate},
                                 {"listdir", l_listdir},
                                 {NULL, NULL}};

int ml_lua_open_data(lua_State *L) {
    int mod = lua_gettop(L);
    const char *mts[3] = {PIPE_MT, DS_MT, LOADER_MT};
    lua_CFunction gcs[3] = {pipe_gc, ds_gc, loader_gc};
    const char *names[3] = {"DataPipeline", "Dataset", "DataLoader"};
    for (int i = 0; i < 3; i++) {
        if (luaL_newmetatable(L, mts[i])) {
            lua_pushcfunction(L, gcs[i]);
            lua_setfield(L, -2, "__gc");
            lua_pushstring(L, names[i]);
            lua_setfield(L, -2, "__name");
        }
        lua_pop(L, 1);
    }
    if (luaL_newmetatable(L, "medlua.DataNextBox")) {
        lua_pushcfunction(L, next_box_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    lua_newtable(L);
    luaL_setfuncs(L, funcs, 0);
    lua_setfield(L, mod, "_data");
    return 0;
}
