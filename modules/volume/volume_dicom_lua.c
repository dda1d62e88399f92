/* Volume binding: DICOM (see ml_dicom.h for the reader's choices).
 *   _volume.read_dicom(path, {series_uid=, on_uneven="warn"|"resample"|"error", on_tilt=...,
 *                             dtype="float32"|"native", recursive=true}) -> Volume
 *   _volume.list_dicom_series(dir, {recursive=true}) -> { {series_uid=, study_uid=, modality=,
 *       description=, patient_id=, series_number=, n_files=, n_images=, rows=, columns=,
 *       transfer_syntax=, transfer_syntax_name=, first_file=}, ... }
 *   _volume.write_dicom_series(vol, dir, {patient_id=, patient_name=, study_uid=, series_uid=,
 *       frame_of_reference_uid=, series_description=, study_description=, modality=,
 *       series_number=, overwrite=false})
 *   _volume.edit_dicom_tags(in, out, {Keyword = value, ["(gggg,eeee)"] = value, ...})
 *       value: string, number, a list of them (multi-valued), or false (delete the attribute)
 *   _volume.read_dicom_tags(path, {"Keyword", "(gggg,eeee)", ...}) -> {Keyword = "value", ...}
 *       (values as DICOM strings, several joined by backslashes; absent tags are missing) */
#include "volume/ml_dicom.h"
#include "volume/volume_lua.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_policy(lua_State *L, int idx, const char *key, const char *fname) {
    const char *s = ml_lua_opt_str(L, idx, key, "warn", fname);
    if (!strcmp(s, "warn")) return ML_DICOM_WARN;
    if (!strcmp(s, "resample")) return ML_DICOM_RESAMPLE;
    if (!strcmp(s, "error")) return ML_DICOM_ERROR;
    return luaL_error(L, "%s: option '%s' must be \"warn\", \"resample\" or \"error\", got \"%s\"", fname, key, s);
}

static int l_read_dicom(lua_State *L) {
    static const char *const keys[] = {"series_uid", "on_uneven", "on_tilt", "dtype", "recursive", NULL};
    const char *fname = "read_dicom";
    const char *path = luaL_checkstring(L, 1);
    ml_lua_check_opts(L, 2, fname, keys);
    ml_dicom_read_opts o;
    ml_dicom_read_opts_init(&o);
    o.series_uid = ml_lua_opt_str(L, 2, "series_uid", NULL, fname);
    o.on_uneven = check_policy(L, 2, "on_uneven", fname);
    o.on_tilt = check_policy(L, 2, "on_tilt", fname);
    o.recursive = ml_lua_opt_bool(L, 2, "recursive", true, fname);
    const char *dt = ml_lua_opt_str(L, 2, "dtype", "float32", fname);
    if (!strcmp(dt, "native")) o.native = true;
    else if (strcmp(dt, "float32") && strcmp(dt, "float") && strcmp(dt, "f32"))
        return luaL_error(L, "%s: option 'dtype' must be \"float32\" (rescaled values) or \"native\" (stored integers "
                             "as int32), got \"%s\"",
                          fname, dt);
    ml_volume **slot = ml_lua_newvolbox(L);
    ml_err e = ml_dicom_read(slot, path, &o);
    if (e) return ml_lua_error_fn(L, fname, e);
    ml_lua_account(L);
    return 1;
}

static void set_str(lua_State *L, const char *k, const char *v) {
    lua_pushstring(L, v ? v : "");
    lua_setfield(L, -2, k);
}

static void set_int(lua_State *L, const char *k, lua_Integer v) {
    lua_pushinteger(L, v);
    lua_setfield(L, -2, k);
}

static int l_list_dicom_series(lua_State *L) {
    static const char *const keys[] = {"recursive", NULL};
    const char *fname = "list_dicom_series";
    const char *dir = luaL_checkstring(L, 1);
    ml_lua_check_opts(L, 2, fname, keys);
    bool rec = ml_lua_opt_bool(L, 2, "recursive", true, fname);
    ml_dicom_series_info *info = NULL;
    int n = 0;
    ml_err e = ml_dicom_list_series(&info, &n, dir, rec);
    if (e) return ml_lua_error_fn(L, fname, e);
    /* (a Lua memory error while building the tables would leak info; nothing else can raise here) */
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        const ml_dicom_series_info *s = &info[i];
        lua_createtable(L, 0, 14);
        set_str(L, "series_uid", s->series_uid);
        set_str(L, "study_uid", s->study_uid);
        set_str(L, "modality", s->modality);
        set_str(L, "description", s->description);
        set_str(L, "patient_id", s->patient_id);
        if (s->series_number >= 0) set_int(L, "series_number", s->series_number);
        set_int(L, "n_files", s->n_files);
        set_int(L, "n_images", s->n_images);
        set_int(L, "rows", s->rows);
        set_int(L, "columns", s->cols);
        set_str(L, "transfer_syntax", s->transfer_syntax);
        set_str(L, "transfer_syntax_name", s->ts_name);
        set_str(L, "first_file", s->first_file);
        lua_rawseti(L, -2, i + 1);
    }
    ml_dicom_series_free(info, n);
    return 1;
}

static int l_write_dicom_series(lua_State *L) {
    static const char *const keys[] = {"patient_id",         "patient_name",      "study_uid", "series_uid",
                                       "frame_of_reference_uid", "series_description", "study_description",
                                       "modality",           "series_number",     "overwrite", NULL};
    const char *fname = "write_dicom_series";
    ml_volume *v = ml_lua_check_volume(L, 1, fname);
    const char *dir = luaL_checkstring(L, 2);
    ml_lua_check_opts(L, 3, fname, keys);
    ml_dicom_write_opts o;
    ml_dicom_write_opts_init(&o);
    o.patient_id = ml_lua_opt_str(L, 3, "patient_id", NULL, fname);
    o.patient_name = ml_lua_opt_str(L, 3, "patient_name", NULL, fname);
    o.study_uid = ml_lua_opt_str(L, 3, "study_uid", NULL, fname);
    o.series_uid = ml_lua_opt_str(L, 3, "series_uid", NULL, fname);
    o.frame_of_reference_uid = ml_lua_opt_str(L, 3, "frame_of_reference_uid", NULL, fname);
    o.series_description = ml_lua_opt_str(L, 3, "series_description", NULL, fname);
    o.study_description = ml_lua_opt_str(L, 3, "study_description", NULL, fname);
    o.modality = ml_lua_opt_str(L, 3, "modality", NULL, fname);
    int64_t sn = ml_lua_opt_intfield(L, 3, "series_number", 0, fname);
    if (sn < 0 || sn > 2147483647) return luaL_error(L, "%s: option 'series_number' out of range", fname);
    o.series_number = (int32_t)sn;
    o.overwrite = ml_lua_opt_bool(L, 3, "overwrite", false, fname);
    const char *uids[] = {o.study_uid, o.series_uid, o.frame_of_reference_uid};
    for (int i = 0; i < 3; i++)
        if (uids[i] && strlen(uids[i]) > 64) return luaL_error(L, "%s: a UID has at most 64 characters", fname);
    ml_err e = ml_dicom_write_series(v, dir, &o);
    if (e) return ml_lua_error_fn(L, fname, e);
    return 0;
}

/* a Lua number as a DICOM string: integers exactly, others in at most 16 characters (DS) */
static void push_number_str(lua_State *L, int idx) {
    char b[48];
    if (lua_isinteger(L, idx)) {
        snprintf(b, sizeof b, "%lld", (long long)lua_tointeger(L, idx));
    } else {
        double x = lua_tonumber(L, idx);
        if (!isfinite(x)) luaL_error(L, "edit_dicom_tags: values must be finite numbers");
        if (x == floor(x) && fabs(x) < 1e15) snprintf(b, sizeof b, "%.0f", x);
        else {
            int prec = 15;
            do snprintf(b, sizeof b, "%.*g", prec--, x);
            while (strlen(b) > 16 && prec > 0);
        }
    }
    lua_pushstring(L, b);
}

/* the value at idx as a DICOM string pushed on the stack, or nil for false (delete) */
static void push_tag_value(lua_State *L, int idx, const char *key) {
    idx = lua_absindex(L, idx);
    switch (lua_type(L, idx)) {
    case LUA_TSTRING: lua_pushvalue(L, idx); return;
    case LUA_TNUMBER: push_number_str(L, idx); return;
    case LUA_TBOOLEAN:
        if (!lua_toboolean(L, idx)) {
            lua_pushnil(L);
            return;
        }
        break;
    case LUA_TTABLE: {
        luaL_Buffer b;
        lua_Integer n = luaL_len(L, idx);
        if (n < 1) break;
        luaL_buffinit(L, &b);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_geti(L, idx, i);
            if (lua_type(L, -1) == LUA_TNUMBER) {
                push_number_str(L, -1);
                lua_remove(L, -2);
            } else if (lua_type(L, -1) != LUA_TSTRING) {
                luaL_error(L, "edit_dicom_tags: %s[%d] must be a string or a number", key, (int)i);
            }
            if (i > 1) luaL_addchar(&b, '\\');
            luaL_addvalue(&b);
        }
        luaL_pushresult(&b);
        return;
    }
    default: break;
    }
    luaL_error(L, "edit_dicom_tags: value of %s must be a string, a number, a list of them, or false (delete), got %s",
               key, luaL_typename(L, idx));
}

static int l_edit_dicom_tags(lua_State *L) {
    const char *fname = "edit_dicom_tags";
    const char *in = luaL_checkstring(L, 1);
    const char *out = luaL_checkstring(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    /* keys sorted for a deterministic order; strings kept alive in a table at the top */
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, 3)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            return luaL_error(L, "%s: tag names must be strings (keywords or \"(gggg,eeee)\"), got %s", fname,
                              luaL_typename(L, -2));
        n++;
        lua_pop(L, 1);
    }
    if (n == 0) return luaL_error(L, "%s: no tags given", fname);
    lua_createtable(L, 2 * n, 0); /* keep: keys 1..n, values n+1..2n (false for delete) */
    int keep = lua_gettop(L);
    int i = 0;
    lua_pushnil(L);
    while (lua_next(L, 3)) {
        lua_pushvalue(L, -2);
        lua_rawseti(L, keep, ++i);
        lua_pop(L, 1);
    }
    lua_getglobal(L, "table");
    lua_getfield(L, -1, "sort");
    lua_pushvalue(L, keep);
    lua_call(L, 1, 0); /* sorts keys 1..n (no values yet) */
    lua_pop(L, 1);
    for (i = 1; i <= n; i++) {
        lua_rawgeti(L, keep, i);
        const char *k = lua_tostring(L, -1);
        lua_gettable(L, 3);
        push_tag_value(L, -1, k);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushboolean(L, 0);
        }
        lua_rawseti(L, keep, n + i);
        lua_pop(L, 1);
    }
    const char **keys = lua_newuserdatauv(L, sizeof(char *) * (size_t)n * 2, 0);
    const char **vals = keys + n;
    for (i = 1; i <= n; i++) {
        lua_rawgeti(L, keep, i);
        keys[i - 1] = lua_tostring(L, -1);
        lua_pop(L, 1);
        lua_rawgeti(L, keep, n + i);
        vals[i - 1] = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        lua_pop(L, 1);
    }
    ml_err e = ml_dicom_edit_tags(in, out, n, keys, vals);
    if (e) return ml_lua_error_fn(L, fname, e);
    return 0;
}

static int l_read_dicom_tags(lua_State *L) {
    const char *fname = "read_dicom_tags";
    const char *path = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    int n = (int)luaL_len(L, 2);
    if (n < 1 || n > 100000) return luaL_error(L, "%s: expected a list of tag names", fname);
    const char **keys = lua_newuserdatauv(L, sizeof(char *) * (size_t)n, 0);
    for (int i = 0; i < n; i++) {
        lua_geti(L, 2, i + 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "%s: tag names must be strings, entry %d is %s", fname, i + 1, luaL_typename(L, -1));
        keys[i] = lua_tostring(L, -1); /* kept alive by the argument table */
        lua_pop(L, 1);
    }
    char **vals = lua_newuserdatauv(L, sizeof(char *) * (size_t)n, 0);
    ml_err e = ml_dicom_read_tags(path, n, keys, vals);
    if (e) return ml_lua_error_fn(L, fname, e);
    /* copy into Lua strings first, then free (a memory error in between would leak the values) */
    lua_createtable(L, 0, n);
    for (int i = 0; i < n; i++)
        if (vals[i]) {
            lua_pushstring(L, vals[i]);
            lua_setfield(L, -2, keys[i]);
        }
    for (int i = 0; i < n; i++) free(vals[i]);
    return 1;
}

const luaL_Reg ml_lua_volume_dicom_funcs[] = {{"read_dicom_tags", l_read_dicom_tags},{"read_dicom", l_read_dicom},
                                              {"list_dicom_series", l_list_dicom_series},
                                              {"write_dicom_series", l_write_dicom_series},
                                              {"edit_dicom_tags", l_edit_dicom_tags},
                                              {NULL, NULL}};
