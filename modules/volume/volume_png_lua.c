/* Volume binding: png (placeholder until implemented; see volume_lua.h). */
#include "volume/volume_lua.h"

const luaL_Reg ml_lua_volume_png_funcs[] = {{NULL, NULL}};
