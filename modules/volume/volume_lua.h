/* medlua Volume binding: shared helpers for the volume *_lua.c files.
 *
 * A Lua volume is a full userdata {ml_volume *v} with metatable "medlua.Volume" (owns one reference).
 * The C table medlua._volume holds the native functions; lua/medlua/volume.lua builds the user API
 * (medlua.volume.load/save/new..., Volume methods written in Lua) on top of it.
 *
 * Each volume binding file exports one NULL-terminated luaL_Reg list; volume_lua.c registers them:
 *   ml_lua_volume_core_funcs  (volume_lua.c)      new, properties, geometry helpers
 *   ml_lua_volume_nifti_funcs (volume_nifti_lua.c) read_nifti, write_nifti
 *   ml_lua_volume_dicom_funcs (volume_dicom_lua.c) read_dicom, list_dicom_series, write_dicom_series,
 *                                                   edit_dicom_tags
 *   ml_lua_volume_ops_funcs   (volume_ops_lua.c)   reorient, resample, ... (first argument a volume)
 *   ml_lua_volume_png_funcs   (volume_png_lua.c)   write_png
 * A function that takes a volume first is also reachable as a method: vol:resample{...} calls
 * medlua._volume.resample(vol, {...}) unless lua/medlua/volume.lua defines a Lua method of that name. */
#ifndef ML_VOLUME_LUA_H
#define ML_VOLUME_LUA_H

#include "tensor/tensor_lua.h"
#include "volume/ml_volume.h"

#define ML_LUA_VOLUME_MT "medlua.Volume"

/* The volume at idx; raises "<fname>: argument #idx: expected a volume, got ..." */
ml_volume *ml_lua_check_volume(lua_State *L, int idx, const char *fname);
ml_volume *ml_lua_tovolume(lua_State *L, int idx); /* NULL if not a volume; never raises */
/* Push a volume (steals the reference; NULL pushes nil) and account its tensor memory to the GC. */
void ml_lua_push_volume(lua_State *L, ml_volume *v);
/* Push a new empty volume box and return its slot, for core calls that write *out. */
ml_volume **ml_lua_newvolbox(lua_State *L);
/* A 4x4 affine from a Lua value: a 4x4 tensor, or a nested table {{...},{...},{...},{...}}. */
void ml_lua_check_affine(lua_State *L, int idx, const char *fname, double a[16]);
/* Push a 4x4 float64 tensor holding a. */
void ml_lua_push_affine(lua_State *L, const double a[16]);
/* Read three numbers from a table (or one number repeated) at idx. */
void ml_lua_check_vec3(lua_State *L, int idx, const char *fname, const char *what, double out[3]);

extern const luaL_Reg ml_lua_volume_core_funcs[];
extern const luaL_Reg ml_lua_volume_nifti_funcs[];
extern const luaL_Reg ml_lua_volume_dicom_funcs[];
extern const luaL_Reg ml_lua_volume_ops_funcs[];
extern const luaL_Reg ml_lua_volume_png_funcs[];
extern const luaL_Reg ml_lua_volume_mesh_funcs[]; /* volume_mesh_lua.c: mesh, _mesh_native */

/* adds medlua._volume to the medlua table on top of the stack */
int ml_lua_open_volume(lua_State *L);

#endif
