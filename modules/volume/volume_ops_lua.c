/* Volume binding: ops (ml_volume_ops.h). Every function takes the volume first, so each is also a
 * method: vol:resample{spacing = 1.5} calls medlua._volume.resample(vol, {spacing = 1.5}).
 *
 *   vol:reorient("LPS")  vol:to_ras()
 *   vol:resample{spacing = {sx, sy, sz} | s, mode = "nearest"|"linear"|"bspline", padding_value = 0,
 *                padding_mode = "constant"|"border"}
 *   vol:resample_like(ref, {mode =, padding_value =, padding_mode =})
 *   vol:resample_to{shape = {X, Y, Z}, affine = 4x4, mode =, padding_value =, padding_mode =}
 *   vol:transform(M, ref?, {mode =, padding_value =, padding_mode =, inverse = false})   (opts may
 *                come third when there is no ref)
 *   vol:crop(lo, hi)  vol:pad(before, after?, value?)  vol:crop_to_bbox(labels, padding_mm?, {label =})
 *   vol:flip(axis)  vol:mirror_lr()  vol:center()
 *   vol:window(center?, width?)  vol:minmax()  vol:normalize_percentile{lower =, upper =, mask =}
 *   vol:zscore{mask =}
 *   vol:largest_component(connectivity?, {labels = {...}})  vol:bbox(label?) -> lo, hi | nil
 *   vol:label_stats() -> {[label] = {voxels, volume_ml, centroid_mm, bbox_lo, bbox_hi}}
 * Errors name the method and the reason: "Volume:resample: spacing[1] must be a finite number > 0". */
#include "volume/volume_lua.h"
#include "volume/ml_volume_ops.h"

#include <stdlib.h>
#include <string.h>

/* raise the core's message as "Volume:<op>: reason" */
static int ops_error(lua_State *L, const char *op, ml_err e) {
    (void)e;
    const char *m = ml_errmsg();
    size_t n = strlen(op);
    if (strncmp(m, op, n) == 0 && m[n] == ':') return luaL_error(L, "Volume:%s", m);
    return luaL_error(L, "Volume:%s: %s", op, m);
}

/* an integer, or a table of 3 integers */
static void check_ivec3(lua_State *L, int idx, const char *fname, const char *what, int64_t out[3]) {
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) == LUA_TNUMBER) {
        int64_t x = ml_lua_check_int(L, idx, fname, what);
        out[0] = out[1] = out[2] = x;
        return;
    }
    if (!lua_istable(L, idx) || luaL_len(L, idx) != 3)
        luaL_error(L, "%s: %s must be an integer or a table of 3 integers, got %s", fname, what,
                   lua_istable(L, idx) ? "a table of another length" : luaL_typename(L, idx));
    for (int i = 0; i < 3; i++) {
        lua_geti(L, idx, i + 1);
        int ok = 0;
        lua_Integer v = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : 0;
        if (lua_isinteger(L, -1)) ok = 1;
        else if (lua_type(L, -1) == LUA_TNUMBER) {
            lua_Number d = lua_tonumber(L, -1);
            if (d == (lua_Number)(lua_Integer)d) {
                v = (lua_Integer)d;
                ok = 1;
            }
        }
        if (!ok) luaL_error(L, "%s: %s[%d] must be an integer", fname, what, i + 1);
        out[i] = (int64_t)v;
        lua_pop(L, 1);
    }
}

static int push_result(lua_State *L) {
    ml_lua_account(L);
    return 1;
}

/* ------------------------------------------------------------ reorientation */
static int l_reorient(lua_State *L) {
    ml_volume *v = ml_lua_check_volume(L, 1, "Volume:reorient");
    const char *codes = luaL_checkstring(L, 2);
    ml_lua_check_nargs(L, 2, "Volume:reorient");
    ml_volume **slot = ml_lua_newvolbox(L);
    ml_err e = ml_volume_reorient(slot, v, codes);
    if (e) return ops_error(L, "reorient", e);
    return push_result(L);
}

/* Volume:name() for ops that take only the volume. errname is what ops_error names. */
static int unary_op(lua_State *L, const char *fn, const char *errname, ml_err (*op)(ml_volume **, ml_volume *)) {
    ml_volume *v = ml_lua_check_volume(L, 1, fn);
    ml_lua_check_nargs(L, 1, fn);
    ml_volume **slot = ml_lua_newvolbox(L);
    ml_err e = op(slot, v);
    if (e) return ops_error(L, errname, e);
    return push_result(L);
}

static int l_to_ras(lua_State *L) { return unary_op(L, "Volume:to_ras", "reorient", ml_volume_to_ras); }

/* ---------------------------------------------------------------- resampling */
static void read_resample_opts(lua_State *L, int idx, const char *fname, ml_resample_opts *o) {
    ml_resample_opts_init(o);
    if (lua_isnoneornil(L, idx)) return;
    const char *mode = ml_lua_opt_str(L, idx, "mode", NULL, fname);
    if (mode) {
        if (!strcmp(mode, "nearest")) o->mode = ML_INTERP_NEAREST;
        else if (!strcmp(mode, "linear") || !strcmp(mode, "trilinear") || !strcmp(mode, "bilinear"))
            o->mode = ML_INTERP_LINEAR;
        else if (!strcmp(mode, "bspline") || !strcmp(mode, "cubic")) o->mode = ML_INTERP_BSPLINE;
        else
            luaL_error(L, "%s: unknown mode '%s' (expected \"nearest\", \"linear\" or \"bspline\")", fname, mode);
    }
    o->padding_value = ml_lua_opt_num(L, idx, "padding_value", 0, fname);
    const char *pm = ml_lua_opt_str(L, idx, "padding_mode", NULL, fname);
    if (pm) {
        if (!strcmp(pm, "constant") || !strcmp(pm, "zeros")) o->padding_mode = ML_PAD_CONSTANT;
        else if (!strcmp(pm, "border")) o->padding_mode = ML_PAD_BORDER;
        else luaL_error(L, "%s: unknown padding_mode '%s' (expected \"constant\" or \"border\")", fname, pm);
    }
}

static const char *const k_resample_keys[] = {"spacing", "mode", "padding_value", "padding_mode", NULL};
static const char *const k_resample_to_keys[] = {"shape", "affine", "mode", "padding_value", "padding_mode", NULL};
static const char *const k_interp_keys[] = {"mode", "padding_value", "padding_mode", NULL};
static const char *const k_transform_keys[] = {"mode", "padding_value", "padding_mode", "inverse", NULL};

static int l_resample(lua_State *L) {
    const char *fn = "Volume:resample";
    ml_volume *v = ml_lua_check_volume(L, 1, fn);
    if (!lua_istable(L, 2)) return luaL_error(L, "%s: expected an options table {spacing = ..., mode = ...}", fn);
    ml_lua_check_opts(L, 2, fn, k_resample_keys);
    lua_getfield(L, 2, "spacing");
    if (lua_isnil(L, -1)) return luaL_error(L, "%s: option 'spacing' is required (mm: a number or {sx, sy, sz})", fn);
    double sp[3];
    ml_lua_check_vec3(L, -1, fn, "spacing", sp);
    lua_pop(L, 1);
    ml_resample_opts o;
    read_resample_opts(L, 2, fn, &o);
    ml_volume **slot = ml_lua_newvolbox(L);
    ml_err e = ml_volume_resample_spacing(slot, v, sp, &o);
    if (e) return ops_error(L, "resample", e);
    return push_result(L);
}

static int l_resample_like(lua_State *L) {
    const char *fn = "Volume:resample_like";
    ml_volume *v = ml_lua_check_volume(L, 1, fn);
    ml_volume *ref = ml_lua_check_volume(L, 2, fn);
    ml_lua_check_opts(L, 3, fn, k_interp_keys);
    ml_resample_opts o;
    read_resample_opts(L, 3, fn, &o);
    ml_volume **slot = ml_lua_newvolbox(L);
    ml_err e = ml_volume_resample_like(slot, v, ref, &o);
    if (e) return ops_error(L, "resample_like", e);
    return push_result(L);
}

static int l_resample_to(lua_State *L) {
    const char *fn = "Volume:resample_to";
    ml_volume *v = ml_lua_check_volume(L, 1, fn);
    if (!lua_istable(L, 2)) return luaL_error(L, "%s: expected an options table {shape = ..., affine = ...}", fn);
    ml_lua_check_opts(L, 2, fn, k_resample_to_keys);
    int64_t shape[3];
    double A[16];
    lua_getfield(L, 2, "shape");
    if (lua_isnil(L, -1)) return luaL_error(L, "%s: option 'shape' is required ({X, Y, Z})", fn);
    check_ivec3(L, -1, fn, "shape", shape);
    lua_pop(L, 1);
    lua_getfield(L, 2, "affine");
    if (lua_isnil(L, -1)) return luaL_error(L, "%s: option 'affine' is required (a 4x4 tensor or table)", fn);
    ml_lua_check_affine(L, -1, fn, A);
    lua_pop(L, 1);
    ml_resample_opts o;
    read_resample_opts(L, 2, fn, &o);
    ml_volume **slot = ml_lua_newvolbox(L);
    ml_err e = ml_volume_resample_to(slot, v, shape, A, &o);
    if (e) return ops_error(L, "resample_to", e);
    return push_result(L);
}

static int l_transform(lua_State *L) {
    const char *fn = "Volume:transform";
    ml_volume *v = ml_lua_check_volume(L, 1, fn);
    double M[16];
    ml_lua_check_affine(L, 2, fn, M);
    ml_volume *ref = NULL;
    int oi = 4; /* vol:transform(M, opts) is vol:transform(M, nil, opts) */
    if (lua_istable(L, 3) && !ml_lua_tovolume(L, 3) && lua_isnoneornil(L, 4)) oi = 3;
    else if (!lua_isnoneornil(L, 3)) ref = ml_lua_check_volume(L, 3, fn);
    ml_lua_check_nargs(L, oi, fn);
    ml_lua_check_opts(L, oi, fn, k_transform_keys);
    ml_resample_opts o;
    read_resample_opts(L, oi, fn, &o);
    bool inverse = lua_istable(L, oi) ? ml_lua_opt_bool(L, oi, "inverse", false, fn) : false;
    ml_volume **slot = ml_lua_newvolbox(L);
    ml_err e = ml_volume_transform(slot, v, M, ref, inverse, &o);
    if (e) return ops_error(L, "transform", e);
    return push_result(L);
}

/* -------------------------------------------------- crop / pad / flip / centre */
static int l_crop(lua_State *L) {
    const char *fn = "Volume:crop";
    ml_volume *v = ml_lua_check_volume(L, 1, fn);
    int64_t lo[3], hi[3];
    check_ivec3(L, 2, fn, "lo", lo);
    check_ivec3(L, 3, fn, "hi", hi);
    ml_lua_check_nargs(L, 3, fn);
    ml_volume **slot = ml_lua_newvolbox(L);
    ml_err e = ml_volume_crop(slot, v, lo, hi);
    if (e) return ops_error(L, "crop", e);
    return push_result(L);
}

static int l_pad(lua_State *L) {
    const char *fn = "Volume:pad";
    ml_volume *v = ml_lua_check_volume(L, 1, fn);
    int64_t b[3], a[3];
    check_ivec3(L, 2, fn, "before", b);
    if (lua_isnoneornil(L, 3)) memcpy(a, b, sizeof a);
    else check_ivec3(L, 3, fn, "after", a);
    double value = lua_isnoneornil(L, 4) ? 0.0 : ml_lua_check_num(L, 4, fn, "value");
    ml_lua_check_nargs(L, 4, fn);
    ml_volume **slot = ml_lua_newvolbox(L);
    ml_err e = ml_volume_pad(slot, v, b, a, value);
    if (e) return ops_error(L, "pad", e);
    return push_result(L);
}

static const char *const k_bbox_keys[] = {"label", NULL};

static int l_crop_to_bbox(lua_State *L) {
    const char *fn = "Volume:crop_to_bbox";
    ml_volume *v = ml_lua_check_volume(L, 1, fn);
    ml_volume *labels = ml_lua_check_volume(L, 2, fn);
    double pad[3] = {0, 0, 0};
    int oi = 4; /* vol:crop_to_bbox(labels, {label = 2}): no padding */
    if (lua_istable(L, 3) && luaL_len(L, 3) == 0 && lua_isnoneornil(L, 4)) oi = 3;
    else if (!lua_isnoneornil(L, 3)) ml_lua_check_vec3(L, 3, fn, "padding_mm", pad);
    ml_lua_check_nargs(L, oi, fn);
    ml_lua_check_opts(L, oi, fn, k_bbox_keys);
    bool use_label = false;
    int64_t label = 0;
    if (lua_istable(L, oi)) {
        lua_getfield(L, oi, "label");
        if (!lua_isnil(L, -1)) {
            label = ml_lua_check_int(L, -1, fn, "option 'label'");
            use_label = true;
        }
        lua_pop(L, 1);
    }
    ml_volume **slot = ml_lua_newvolbox(L);
    ml_err e = ml_volume_crop_to_bbox(slot, v, labels, pad, use_label, label);
    if (e) return ops_error(L, "crop_to_bbox", e);
    return push_result(L);
}

static int l_flip(lua_State *L) {
    const char *fn = "Volume:flip";
    ml_volume *v = ml_lua_check_volume(L, 1, fn);
    int64_t axis = ml_lua_check_int(L, 2, fn, "axis");
    ml_lua_check_nargs(L, 2, fn);
    if (axis < -3 || axis > 2)
        return luaL_error(L, "%s: axis %d is out of range (0, 1, 2 or -3..-1 for a volume)", fn, (int)axis);
    ml_volume **slot = ml_lua_newvolbox(L);
    ml_err e = ml_volume_flip(slot, v, (int)axis);
    if (e) return ops_error(L, "flip", e);
    return push_result(L);
}

static int l_mirror_lr(lua_State *L) { return unary_op(L, "Volume:mirror_lr", "mirror_lr", ml_volume_mirror_lr); }

static int l_center(lua_State *L) { return unary_op(L, "Volume:center", "center", ml_volume_center); }

/* ----------------------------------------------------------------- intensity */
static int l_window(lua_State *L) {
    const char *fn = "Volume:window";
    ml_volume *v = ml_lua_check_volume(L, 1, fn);
    ml_lua_check_nargs(L, 3, fn);
    double c, w;
    if (lua_isnoneornil(L, 2) && lua_isnoneornil(L, 3)) {
        if (!v->meta.has_window)
            return luaL_error(L, "%s: give center and width (the volume has no window in its metadata)", fn);
        c = v->meta.window_center;
        w = v->meta.window_width;
    } else {
        c = ml_lua_check_num(L, 2, fn, "center");
        w = ml_lua_check_num(L, 3, fn, "width");
    }
    ml_volume **slot = ml_lua_newvolbox(L);
    ml_err e = ml_volume_window(slot, v, c, w);
    if (e) return ops_error(L, "window", e);
    return push_result(L);
}

static int l_minmax(lua_State *L) { return unary_op(L, "Volume:minmax", "minmax", ml_volume_minmax); }

/* opts.mask: a volume on v's grid or a tensor of v's spatial shape; NULL when absent */
static ml_tensor *opt_mask(lua_State *L, int idx, const char *fn, const char *op, ml_volume *v) {
    if (!lua_istable(L, idx)) return NULL;
    lua_getfield(L, idx, "mask");
    ml_tensor *m = NULL;
    if (!lua_isnil(L, -1)) {
        ml_volume *mv = ml_lua_tovolume(L, -1);
        if (mv) {
            if (ml_vol_check_same_grid(op, "the mask volume", v, mv)) ops_error(L, op, ML_ERR_ARG);
            m = mv->data;
        } else {
            m = ml_lua_totensor(L, -1);
            if (!m) luaL_error(L, "%s: option 'mask' must be a volume or a tensor, got %s", fn, luaL_typename(L, -1));
        }
    }
    lua_pop(L, 1); /* the options table keeps it alive */
    return m;
}

static const char *const k_pct_keys[] = {"lower", "upper", "mask", NULL};
static const char *const k_z_keys[] = {"mask", NULL};

static int l_normalize_percentile(lua_State *L) {
    const char *fn = "Volume:normalize_percentile";
    ml_volume *v = ml_lua_check_volume(L, 1, fn);
    ml_lua_check_opts(L, 2, fn, k_pct_keys);
    double lo = 0.5, hi = 99.5;
    if (lua_istable(L, 2)) {
        lo = ml_lua_opt_num(L, 2, "lower", 0.5, fn);
        hi = ml_lua_opt_num(L, 2, "upper", 99.5, fn);
    }
    ml_tensor *m = opt_mask(L, 2, fn, "normalize_percentile", v);
    ml_volume **slot = ml_lua_newvolbox(L);
    ml_err e = ml_volume_normalize_percentile(slot, v, lo, hi, m);
    if (e) return ops_error(L, "normalize_percentile", e);
    return push_result(L);
}

static int l_zscore(lua_State *L) {
    const char *fn = "Volume:zscore";
    ml_volume *v = ml_lua_check_volume(L, 1, fn);
    ml_lua_check_opts(L, 2, fn, k_z_keys);
    ml_tensor *m = opt_mask(L, 2, fn, "zscore", v);
    ml_volume **slot = ml_lua_newvolbox(L);
    ml_err e = ml_volume_zscore(slot, v, m);
    if (e) return ops_error(L, "zscore", e);
    return push_result(L);
}

/* -------------------------------------------------------------------- labels */
static const char *const k_lcc_keys[] = {"labels", NULL};

static int l_largest_component(lua_State *L) {
    const char *fn = "Volume:largest_component";
    ml_volume *v = ml_lua_check_volume(L, 1, fn);
    int64_t conn = lua_isnoneornil(L, 2) ? 26 : ml_lua_check_int(L, 2, fn, "connectivity");
    if (conn != 6 && conn != 18 && conn != 26)
        return luaL_error(L, "%s: connectivity must be 6, 18 or 26, got %I", fn, (lua_Integer)conn);
    ml_lua_check_opts(L, 3, fn, k_lcc_keys);
    int64_t *labels = NULL;
    int nl = 0;
    if (lua_istable(L, 3)) {
        lua_getfield(L, 3, "labels");
        if (!lua_isnil(L, -1)) {
            if (!lua_istable(L, -1)) return luaL_error(L, "%s: option 'labels' must be a list of label values", fn);
            nl = (int)luaL_len(L, -1);
            labels = lua_newuserdatauv(L, (size_t)(nl ? nl : 1) * sizeof(int64_t), 0); /* GC-owned scratch */
            lua_insert(L, -2);
            for (int i = 0; i < nl; i++) {
                lua_geti(L, -1, i + 1);
                labels[i] = ml_lua_check_int(L, -1, fn, "labels[i]");
                lua_pop(L, 1);
            }
            if (nl == 0) return luaL_error(L, "%s: option 'labels' is an empty list", fn);
        }
        lua_pop(L, 1);
    }
    ml_volume **slot = ml_lua_newvolbox(L);
    ml_err e = ml_volume_largest_component(slot, v, (int)conn, labels, nl);
    if (e) return ops_error(L, "largest_component", e);
    return push_result(L);
}

static void push_ivec3(lua_State *L, const int64_t x[3]) {
    lua_createtable(L, 3, 0);
    for (int i = 0; i < 3; i++) {
        lua_pushinteger(L, (lua_Integer)x[i]);
        lua_rawseti(L, -2, i + 1);
    }
}

static int l_bbox(lua_State *L) {
    const char *fn = "Volume:bbox";
    ml_volume *v = ml_lua_check_volume(L, 1, fn);
    ml_lua_check_nargs(L, 2, fn);
    bool use = !lua_isnoneornil(L, 2);
    int64_t label = use ? ml_lua_check_int(L, 2, fn, "label") : 0;
    int64_t lo[3], hi[3];
    bool found;
    ml_err e = ml_volume_bbox(v, use, label, lo, hi, &found);
    if (e) return ops_error(L, "bbox", e);
    if (!found) {
        lua_pushnil(L);
        return 1;
    }
    push_ivec3(L, lo);
    push_ivec3(L, hi);
    return 2;
}

static int l_label_stats(lua_State *L) {
    const char *fn = "Volume:label_stats";
    ml_volume *v = ml_lua_check_volume(L, 1, fn);
    ml_lua_check_nargs(L, 1, fn);
    ml_label_stat *st = NULL;
    int n = 0;
    ml_err e = ml_volume_label_stats(v, &st, &n);
    if (e) return ops_error(L, "label_stats", e);
    /* copy into a GC-owned block so a Lua memory error below cannot leak it */
    ml_label_stat *s = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *s, 0);
    if (n) memcpy(s, st, (size_t)n * sizeof *s);
    free(st);
    lua_createtable(L, 0, n);
    for (int i = 0; i < n; i++) {
        lua_createtable(L, 0, 5);
        lua_pushinteger(L, (lua_Integer)s[i].voxels);
        lua_setfield(L, -2, "voxels");
        lua_pushnumber(L, s[i].volume_ml);
        lua_setfield(L, -2, "volume_ml");
        lua_createtable(L, 3, 0);
        for (int k = 0; k < 3; k++) {
            lua_pushnumber(L, s[i].centroid_mm[k]);
            lua_rawseti(L, -2, k + 1);
        }
        lua_setfield(L, -2, "centroid_mm");
        push_ivec3(L, s[i].bbox_lo);
        lua_setfield(L, -2, "bbox_lo");
        push_ivec3(L, s[i].bbox_hi);
        lua_setfield(L, -2, "bbox_hi");
        lua_rawseti(L, -2, (lua_Integer)s[i].label);
    }
    return 1;
}

const luaL_Reg ml_lua_volume_ops_funcs[] = {
    {"reorient", l_reorient},
    {"to_ras", l_to_ras},
    {"resample", l_resample},
    {"resample_like", l_resample_like},
    {"resample_to", l_resample_to},
    {"transform", l_transform},
    {"crop", l_crop},
    {"pad", l_pad},
    {"crop_to_bbox", l_crop_to_bbox},
    {"flip", l_flip},
    {"mirror_lr", l_mirror_lr},
    {"center", l_center},
    {"window", l_window},
    {"minmax", l_minmax},
    {"normalize_percentile", l_normalize_percentile},
    {"zscore", l_zscore},
    {"largest_component", l_largest_component},
    {"bbox", l_bbox},
    {"label_stats", l_label_stats},
    {NULL, NULL},
};
