/* Data pipeline binding (placeholder until implemented): adds medlua._data. */
#include "tensor/tensor_lua.h"

int ml_lua_open_data(lua_State *L) {
    lua_newtable(L);
    lua_setfield(L, -2, "_data");
    return 0;
}
