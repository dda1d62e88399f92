/* Volume binding: NIfTI (see ml_nifti.h for the semantics).
 *   _volume.read_nifti(path, {dtype = "float32" | "float64" | "native"}?)  -> Volume
 *   _volume.write_nifti(vol, path, {dtype = "int16" | "uint8" | "float32" | ..., nifti2 = false,
 *                                   compression_level = 1}?)                 -> nothing
 *   _volume.nifti_header(path) -> table of the stored header fields (no voxel data is read)
 * Errors name the file and the reason: "nifti: /x/ct.nii.gz: truncated: ...". */
#include "volume/ml_nifti.h"
#include "volume/volume_lua.h"

#include <string.h>

static const char *const read_keys[] = {"dtype", NULL};
static const char *const write_keys[] = {"dtype", "nifti2", "compression_level", NULL};

static int l_read_nifti(lua_State *L) {
    const char *fn = "volume.read_nifti";
    ml_lua_check_nargs(L, 2, fn);
    const char *path = luaL_checkstring(L, 1);
    ml_lua_check_opts(L, 2, fn, read_keys);
    ml_nifti_read_opts o;
    ml_nifti_read_opts_init(&o);
    const char *dt = ml_lua_opt_str(L, 2, "dtype", "float32", fn);
    if (!strcmp(dt, "float32") || !strcmp(dt, "f32") || !strcmp(dt, "float")) o.dtype = ML_NIFTI_OUT_F32;
    else if (!strcmp(dt, "float64") || !strcmp(dt, "f64") || !strcmp(dt, "double")) o.dtype = ML_NIFTI_OUT_F64;
    else if (!strcmp(dt, "native")) o.dtype = ML_NIFTI_OUT_NATIVE;
    else return luaL_error(L, "%s: dtype must be \"float32\", \"float64\" or \"native\", got \"%s\"", fn, dt);
    ml_volume **slot = ml_lua_newvolbox(L);
    ml_err e = ml_nifti_read(slot, path, &o);
    if (e) return ml_lua_error_fn(L, "nifti", e);
    ml_lua_account(L);
    return 1;
}

static int l_write_nifti(lua_State *L) {
    const char *fn = "volume.write_nifti";
    ml_lua_check_nargs(L, 3, fn);
    ml_volume *v = ml_lua_check_volume(L, 1, fn);
    const char *path = luaL_checkstring(L, 2);
    ml_lua_check_opts(L, 3, fn, write_keys);
    ml_nifti_write_opts o;
    ml_nifti_write_opts_init(&o);
    const char *dt = ml_lua_opt_str(L, 3, "dtype", NULL, fn);
    if (dt) {
        o.datatype = ml_nifti_datatype_from_name(dt);
        if (!o.datatype)
            return luaL_error(L,
                              "%s: unknown dtype \"%s\" (expected uint8, int8, int16, uint16, int32, uint32, int64, "
                              "uint64, float32 or float64)",
                              fn, dt);
    }
    o.nifti2 = ml_lua_opt_bool(L, 3, "nifti2", false, fn);
    int64_t lvl = ml_lua_opt_intfield(L, 3, "compression_level", 1, fn);
    if (lvl < 0 || lvl > 12) return luaL_error(L, "%s: compression_level must be 0..12, got %d", fn, (int)lvl);
    o.compression_level = (int)lvl;
    ml_err e = ml_nifti_write(v, path, &o);
    if (e) return ml_lua_error_fn(L, "nifti", e);
    return 0;
}

static void set_num(lua_State *L, const char *k, double x) {
    lua_pushnumber(L, x);
    lua_setfield(L, -2, k);
}
static void set_int(lua_State *L, const char *k, int64_t x) {
    lua_pushinteger(L, (lua_Integer)x);
    lua_setfield(L, -2, k);
}
static void set_str(lua_State *L, const char *k, const char *s) {
    lua_pushstring(L, s);
    lua_setfield(L, -2, k);
}
static void set_list(lua_State *L, const char *k, const double *x, int n, bool ints) {
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        if (ints) lua_pushinteger(L, (lua_Integer)x[i]);
        else lua_pushnumber(L, x[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, k);
}

static int l_nifti_header(lua_State *L) {
    ml_lua_check_nargs(L, 1, "volume.nifti_header");
    const char *path = luaL_checkstring(L, 1);
    ml_nifti_info in;
    ml_err e = ml_nifti_read_info(&in, path);
    if (e) return ml_lua_error_fn(L, "nifti", e);
    lua_createtable(L, 0, 32);
    set_int(L, "version", in.version);
    lua_pushboolean(L, in.big_endian);
    lua_setfield(L, -2, "big_endian");
    lua_pushboolean(L, in.single_file);
    lua_setfield(L, -2, "single_file");
    lua_createtable(L, 8, 0);
    for (int i = 0; i < 8; i++) {
        lua_pushinteger(L, (lua_Integer)in.dim[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "dim");
    set_list(L, "pixdim", in.pixdim, 8, false);
    set_int(L, "datatype", in.datatype);
    set_str(L, "datatype_name", in.datatype_name);
    set_int(L, "bitpix", in.bitpix);
    set_int(L, "vox_offset", in.vox_offset);
    set_num(L, "scl_slope", in.scl_slope);
    set_num(L, "scl_inter", in.scl_inter);
    set_num(L, "cal_min", in.cal_min);
    set_num(L, "cal_max", in.cal_max);
    set_int(L, "qform_code", in.qform_code);
    set_int(L, "sform_code", in.sform_code);
    set_list(L, "quatern", in.quatern, 3, false);
    set_list(L, "qoffset", in.qoffset, 3, false);
    ml_lua_push_affine(L, in.qform);
    lua_setfield(L, -2, "qform");
    ml_lua_push_affine(L, in.sform);
    lua_setfield(L, -2, "sform");
    ml_lua_push_affine(L, in.affine);
    lua_setfield(L, -2, "affine");
    set_int(L, "intent_code", in.intent_code);
    set_int(L, "xyzt_units", in.xyzt_units);
    set_str(L, "descrip", in.descrip);
    set_str(L, "intent_name", in.intent_name);
    set_str(L, "aux_file", in.aux_file);
    return 1;
}

const luaL_Reg ml_lua_volume_nifti_funcs[] = {
    {"read_nifti", l_read_nifti}, {"write_nifti", l_write_nifti}, {"nifti_header", l_nifti_header}, {NULL, NULL}};
