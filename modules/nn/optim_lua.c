/* Lua binding for optimizer kernels and small runtime utilities used by the Lua library:
 *   medlua.adam_step_(p, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, decoupled, step)
 *   medlua.clock()   monotonic seconds (for rates and ETAs)
 *   medlua.isatty(fd)
 *   medlua.empty_cache()  full GC, then drop backend caches (oneDNN primitives, scratch buffers) */
#include "tensor/tensor_lua.h"
#include "tensor/ml_tensor.h"

#include <lauxlib.h>
#include <lua.h>
#include <time.h>
#include <unistd.h>

static int l_adam_step(lua_State *L) {
    ml_tensor *p = ml_lua_check_tensor(L, 1), *g = ml_lua_check_tensor(L, 2);
    ml_tensor *m = ml_lua_check_tensor(L, 3), *v = ml_lua_check_tensor(L, 4);
    double lr = luaL_checknumber(L, 5), b1 = luaL_checknumber(L, 6), b2 = luaL_checknumber(L, 7);
    double eps = luaL_checknumber(L, 8), wd = luaL_checknumber(L, 9);
    int decoupled = lua_toboolean(L, 10);
    lua_Integer step = luaL_checkinteger(L, 11);
    if (step < 1) return luaL_error(L, "adam_step_: step must be >= 1, got %d", (int)step);
    ml_err e = ml_adam_step_(p, g, m, v, lr, b1, b2, eps, wd, decoupled, (int64_t)step);
    if (e) return ml_lua_error(L, e);
    return 0;
}

static int l_clock(lua_State *L) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec * 1e-9);
    return 1;
}

static int l_isatty(lua_State *L) {
    lua_pushboolean(L, isatty((int)luaL_optinteger(L, 1, 1)));
    return 1;
}

static int l_empty_cache(lua_State *L) {
    lua_gc(L, LUA_GCCOLLECT);
    ml_flush_caches();
    return 0;
}

static const luaL_Reg util_funcs[] = {
    {"empty_cache", l_empty_cache},
    {"adam_step_", l_adam_step}, {"clock", l_clock}, {"isatty", l_isatty}, {NULL, NULL}};

/* Adds the functions to the table on top of the stack. */
int ml_lua_open_util(lua_State *L) {
    luaL_setfuncs(L, util_funcs, 0);
    return 0;
}
