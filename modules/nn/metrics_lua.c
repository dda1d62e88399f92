/* Metrics binding (placeholder until implemented): adds medlua._metrics. */
#include "tensor/tensor_lua.h"

int ml_lua_open_metrics(lua_State *L) {
    lua_newtable(L);
    lua_setfield(L, -2, "_metrics");
    return 0;
}
