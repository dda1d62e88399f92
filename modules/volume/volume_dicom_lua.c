/* Volume binding: dicom (placeholder until implemented; see volume_lua.h). */
#include "volume/volume_lua.h"

const luaL_Reg ml_lua_volume_dicom_funcs[] = {{NULL, NULL}};
