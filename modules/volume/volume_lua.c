/* Volume userdata: lifetime, properties, metadata, medlua._volume.new and the registration of the
 * other volume binding files (see volume_lua.h). */
#include "volume/volume_lua.h"

#include <math.h>
#include <string.h>

typedef struct {
    ml_volume *v;
} vol_box;

static int g_methods_key; /* registry: the Volume method table */

ml_volume *ml_lua_tovolume(lua_State *L, int idx) {
    vol_box *b = luaL_testudata(L, idx, ML_LUA_VOLUME_MT);
    return b ? b->v : NULL;
}

ml_volume *ml_lua_check_volume(lua_State *L, int idx, const char *fname) {
    vol_box *b = luaL_testudata(L, idx, ML_LUA_VOLUME_MT);
    if (!b) {
        luaL_error(L, "%s: argument #%d: expected a volume, got %s", fname, idx, luaL_typename(L, idx));
        return NULL;
    }
    if (!b->v) luaL_error(L, "%s: argument #%d: volume is closed", fname, idx);
    return b->v;
}

ml_volume **ml_lua_newvolbox(lua_State *L) {
    vol_box *b = lua_newuserdatauv(L, sizeof *b, 1);
    b->v = NULL;
    luaL_setmetatable(L, ML_LUA_VOLUME_MT);
    return &b->v;
}

void ml_lua_push_volume(lua_State *L, ml_volume *v) {
    if (!v) {
        lua_pushnil(L);
        return;
    }
    vol_box *b = lua_newuserdatauv(L, sizeof *b, 1);
    b->v = v;
    luaL_setmetatable(L, ML_LUA_VOLUME_MT);
    ml_lua_account(L);
}

void ml_lua_push_affine(lua_State *L, const double a[16]) {
    int64_t shape[2] = {4, 4};
    ml_tensor *t = NULL;
    if (ml_tensor_from_data(&t, ML_F64, 2, shape, a)) ml_lua_error(L, ML_ERR_OOM);
    ml_lua_push_tensor(L, t);
}

void ml_lua_check_affine(lua_State *L, int idx, const char *fname, double a[16]) {
    idx = lua_absindex(L, idx);
    ml_tensor *t = ml_lua_totensor(L, idx);
    if (t) {
        if (t->ndim != 2 || t->shape[0] != 4 || t->shape[1] != 4)
            luaL_error(L, "%s: affine must be 4x4, got a tensor of shape %s", fname, ml_shape_str(t->ndim, t->shape));
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < 4; c++) {
                int64_t ix[2] = {r, c};
                a[r * 4 + c] = ml_tensor_get(t, ix);
            }
    } else if (lua_istable(L, idx)) {
        if (luaL_len(L, idx) != 4) luaL_error(L, "%s: affine must be a 4x4 table (4 rows)", fname);
        for (int r = 0; r < 4; r++) {
            lua_geti(L, idx, r + 1);
            if (!lua_istable(L, -1) || luaL_len(L, -1) != 4)
                luaL_error(L, "%s: affine row %d must be a table of 4 numbers", fname, r + 1);
            for (int c = 0; c < 4; c++) {
                lua_geti(L, -1, c + 1);
                int ok;
                a[r * 4 + c] = lua_tonumberx(L, -1, &ok);
                if (!ok) luaL_error(L, "%s: affine[%d][%d] is not a number", fname, r + 1, c + 1);
                lua_pop(L, 1);
            }
            lua_pop(L, 1);
        }
    } else {
        luaL_error(L, "%s: affine must be a 4x4 tensor or table, got %s", fname, luaL_typename(L, idx));
    }
    for (int i = 0; i < 16; i++)
        if (!isfinite(a[i])) luaL_error(L, "%s: affine has a non-finite entry", fname);
    if (a[12] != 0 || a[13] != 0 || a[14] != 0 || a[15] != 1)
        luaL_error(L, "%s: affine's last row must be {0, 0, 0, 1}", fname);
}

void ml_lua_check_vec3(lua_State *L, int idx, const char *fname, const char *what, double out[3]) {
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) == LUA_TNUMBER) {
        out[0] = out[1] = out[2] = lua_tonumber(L, idx);
        return;
    }
    if (!lua_istable(L, idx) || luaL_len(L, idx) != 3)
        luaL_error(L, "%s: %s must be a number or a table of 3 numbers", fname, what);
    for (int i = 0; i < 3; i++) {
        lua_geti(L, idx, i + 1);
        int ok;
        out[i] = lua_tonumberx(L, -1, &ok);
        if (!ok || !isfinite(out[i])) luaL_error(L, "%s: %s[%d] is not a finite number", fname, what, i + 1);
        lua_pop(L, 1);
    }
}

/* ------------------------------------------------------------- metamethods */
static int v_gc(lua_State *L) {
    vol_box *b = luaL_checkudata(L, 1, ML_LUA_VOLUME_MT);
    ml_volume_release(b->v);
    b->v = NULL;
    return 0;
}

static void push_vec3(lua_State *L, const double v[3]) {
    lua_createtable(L, 3, 0);
    for (int i = 0; i < 3; i++) {
        lua_pushnumber(L, v[i]);
        lua_rawseti(L, -2, i + 1);
    }
}

static int v_tostring(lua_State *L) {
    ml_volume *v = ml_lua_tovolume(L, 1);
    if (!v) {
        lua_pushliteral(L, "Volume(closed)");
        return 1;
    }
    double sp[3], o[3];
    char ax[4];
    ml_volume_spacing(v, sp);
    ml_volume_origin(v, o);
    ml_affine_axcodes(v->affine, ax);
    char buf[512];
    snprintf(buf, sizeof buf,
             "Volume(shape=%s, dtype=%s, spacing=(%.4g, %.4g, %.4g) mm, origin=(%.4g, %.4g, %.4g), axcodes=%s%s%s)",
             ml_shape_str(v->data->ndim, v->data->shape), ml_dtype_name((ml_dtype)v->data->dtype), sp[0], sp[1],
             sp[2], o[0], o[1], o[2], ax, v->meta.modality[0] ? ", modality=" : "", v->meta.modality);
    lua_pushstring(L, buf);
    return 1;
}

#define META_STR(name) {#name, offsetof(ml_volume_meta, name), sizeof(((ml_volume_meta *)0)->name)}
static const struct {
    const char *key;
    size_t off, size;
} meta_strs[] = {META_STR(modality),   META_STR(series_uid),  META_STR(study_uid), META_STR(frame_of_reference_uid),
                 META_STR(patient_id), META_STR(description), {NULL, 0, 0}};

/* vol.key: properties first, then the method table */
static int v_index(lua_State *L) {
    ml_volume *v = ml_lua_tovolume(L, 1);
    const char *k = lua_tostring(L, 2);
    if (v && k) {
        if (!strcmp(k, "data")) {
            ml_lua_push_tensor_retain(L, v->data);
            return 1;
        }
        if (!strcmp(k, "affine")) {
            ml_lua_push_affine(L, v->affine);
            return 1;
        }
        if (!strcmp(k, "spacing") || !strcmp(k, "origin")) {
            double x[3];
            if (k[0] == 's') ml_volume_spacing(v, x);
            else ml_volume_origin(v, x);
            push_vec3(L, x);
            return 1;
        }
        if (!strcmp(k, "direction")) {
            double d[9];
            ml_volume_direction(v, d);
            lua_createtable(L, 3, 0);
            for (int r = 0; r < 3; r++) {
                push_vec3(L, d + 3 * r);
                lua_rawseti(L, -2, r + 1);
            }
            return 1;
        }
        if (!strcmp(k, "shape")) {
            lua_createtable(L, v->data->ndim, 0);
            for (int i = 0; i < v->data->ndim; i++) {
                lua_pushinteger(L, v->data->shape[i]);
                lua_rawseti(L, -2, i + 1);
            }
            return 1;
        }
        if (!strcmp(k, "ndim")) {
            lua_pushinteger(L, v->data->ndim);
            return 1;
        }
        if (!strcmp(k, "dtype")) {
            lua_pushstring(L, ml_dtype_name((ml_dtype)v->data->dtype));
            return 1;
        }
        if (!strcmp(k, "axcodes")) {
            char ax[4];
            ml_affine_axcodes(v->affine, ax);
            lua_pushstring(L, ax);
            return 1;
        }
        for (int i = 0; meta_strs[i].key; i++)
            if (!strcmp(k, meta_strs[i].key)) {
                lua_pushstring(L, (const char *)&v->meta + meta_strs[i].off);
                return 1;
            }
        if (!strcmp(k, "window_center") || !strcmp(k, "window_width")) {
            if (!v->meta.has_window) lua_pushnil(L);
            else lua_pushnumber(L, k[7] == 'c' ? v->meta.window_center : v->meta.window_width);
            return 1;
        }
        if (!strcmp(k, "rescale_slope")) {
            lua_pushnumber(L, v->meta.rescale_slope);
            return 1;
        }
        if (!strcmp(k, "rescale_intercept")) {
            lua_pushnumber(L, v->meta.rescale_intercept);
            return 1;
        }
        if (!strcmp(k, "is_label")) {
            lua_pushboolean(L, v->meta.is_label);
            return 1;
        }
        if (!strcmp(k, "qform_code") || !strcmp(k, "sform_code")) {
            lua_pushinteger(L, k[0] == 'q' ? v->meta.qform_code : v->meta.sform_code);
            return 1;
        }
    }
    lua_rawgetp(L, LUA_REGISTRYINDEX, &g_methods_key);
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    return 1;
}

/* vol.key = value: metadata only (geometry and voxels change through ops, which return new volumes) */
static int v_newindex(lua_State *L) {
    ml_volume *v = ml_lua_check_volume(L, 1, "Volume");
    const char *k = luaL_checkstring(L, 2);
    for (int i = 0; meta_strs[i].key; i++)
        if (!strcmp(k, meta_strs[i].key)) {
            size_t n;
            const char *s = luaL_checklstring(L, 3, &n);
            if (n >= meta_strs[i].size)
                return luaL_error(L, "Volume.%s: value too long (%d bytes, at most %d)", k, (int)n,
                                  (int)meta_strs[i].size - 1);
            memcpy((char *)&v->meta + meta_strs[i].off, s, n + 1);
            return 0;
        }
    if (!strcmp(k, "window_center") || !strcmp(k, "window_width")) {
        if (lua_isnil(L, 3)) {
            v->meta.has_window = false;
            return 0;
        }
        double x = luaL_checknumber(L, 3);
        if (k[7] == 'c') v->meta.window_center = x;
        else v->meta.window_width = x;
        v->meta.has_window = true;
        return 0;
    }
    if (!strcmp(k, "is_label")) {
        v->meta.is_label = lua_toboolean(L, 3);
        return 0;
    }
    return luaL_error(L, "Volume: cannot set '%s' (metadata fields: modality, series_uid, study_uid, "
                         "frame_of_reference_uid, patient_id, description, window_center, window_width, "
                         "is_label; geometry changes through ops such as resample, reorient, with_affine)",
                      k);
}

/* ---------------------------------------------------------------- functions */
/* _volume.new(tensor, affine?) */
static int l_new(lua_State *L) {
    ml_tensor *t = ml_lua_check_tensor_fn(L, 1, "volume.new");
    double a[16];
    if (!lua_isnoneornil(L, 2)) ml_lua_check_affine(L, 2, "volume.new", a);
    else ml_affine_identity(a);
    ml_volume **slot = ml_lua_newvolbox(L);
    ml_err e = ml_volume_new(slot, t, a, NULL);
    if (e) return ml_lua_error_fn(L, "volume.new", e);
    return 1;
}

/* _volume.with_data(vol, tensor, affine?): same metadata (and affine unless given), new voxels */
static int l_with_data(lua_State *L) {
    ml_volume *v = ml_lua_check_volume(L, 1, "Volume:with_data");
    ml_tensor *t = ml_lua_check_tensor_fn(L, 2, "Volume:with_data");
    double a[16];
    if (!lua_isnoneornil(L, 3)) ml_lua_check_affine(L, 3, "Volume:with_data", a);
    else memcpy(a, v->affine, sizeof a);
    ml_volume **slot = ml_lua_newvolbox(L);
    ml_err e = ml_volume_with_data(slot, v, t, a);
    if (e) return ml_lua_error_fn(L, "Volume:with_data", e);
    return 1;
}

/* _volume.axcodes(affine) */
static int l_axcodes(lua_State *L) {
    double a[16];
    ml_lua_check_affine(L, 1, "volume.axcodes", a);
    char ax[4];
    ml_affine_axcodes(a, ax);
    lua_pushstring(L, ax);
    return 1;
}

/* _volume.world(vol, i, j, k) -> x, y, z ; _volume.voxel(vol, x, y, z) -> i, j, k (fractional) */
static int l_world(lua_State *L) {
    ml_volume *v = ml_lua_check_volume(L, 1, "Volume:world");
    double p[3] = {luaL_checknumber(L, 2), luaL_checknumber(L, 3), luaL_checknumber(L, 4)}, q[3];
    ml_affine_apply(v->affine, p, q);
    for (int i = 0; i < 3; i++) lua_pushnumber(L, q[i]);
    return 3;
}

static int l_voxel(lua_State *L) {
    ml_volume *v = ml_lua_check_volume(L, 1, "Volume:voxel");
    double p[3] = {luaL_checknumber(L, 2), luaL_checknumber(L, 3), luaL_checknumber(L, 4)}, q[3], inv[16];
    if (ml_affine_inverse(inv, v->affine)) return luaL_error(L, "Volume:voxel: the affine is singular");
    ml_affine_apply(inv, p, q);
    for (int i = 0; i < 3; i++) lua_pushnumber(L, q[i]);
    return 3;
}

static int l_close(lua_State *L) { return v_gc(L); }

const luaL_Reg ml_lua_volume_core_funcs[] = {
    {"new", l_new},     {"with_data", l_with_data}, {"axcodes", l_axcodes}, {"world", l_world},
    {"voxel", l_voxel}, {"close", l_close},         {NULL, NULL}};

static const luaL_Reg *const all_lists[] = {ml_lua_volume_core_funcs, ml_lua_volume_nifti_funcs,
                                            ml_lua_volume_dicom_funcs, ml_lua_volume_ops_funcs,
                                            ml_lua_volume_png_funcs, ml_lua_volume_mesh_funcs, NULL};

int ml_lua_open_volume(lua_State *L) {
    int mod = lua_gettop(L);
    lua_newtable(L); /* medlua._volume */
    int vt = lua_gettop(L);
    for (int i = 0; all_lists[i]; i++) luaL_setfuncs(L, all_lists[i], 0);
    /* the method table starts as a copy of _volume; lua/medlua/volume.lua adds Lua methods */
    lua_newtable(L);
    int methods = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, vt)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, methods);
    }
    lua_pushvalue(L, methods);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &g_methods_key);
    lua_pushvalue(L, methods);
    lua_setfield(L, vt, "methods");
    if (luaL_newmetatable(L, ML_LUA_VOLUME_MT)) {
        lua_pushcfunction(L, v_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, v_gc);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, v_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushcfunction(L, v_index);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, v_newindex);
        lua_setfield(L, -2, "__newindex");
        lua_pushliteral(L, "Volume");
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 2);
    lua_setfield(L, mod, "_volume");
    return 0;
}
