/* Volume binding: nifti (placeholder until implemented; see volume_lua.h). */
#include "volume/volume_lua.h"

const luaL_Reg ml_lua_volume_nifti_funcs[] = {{NULL, NULL}};
