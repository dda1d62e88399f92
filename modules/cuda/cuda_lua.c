/* medlua.cuda: the CUDA backend from Lua (availability, devices, memory, synchronisation).
 *   medlua.cuda.available()        true when a device and a driver are usable
 *   medlua.cuda.status()           "ok", or why not ("built without CUDA", "no CUDA driver ...", ...)
 *   medlua.cuda.device_count(), medlua.cuda.device_name(i = 0), medlua.cuda.mem_info(i) -> free, total
 *   medlua.cuda.synchronize(i = all), medlua.cuda.empty_cache(), medlua.cuda.memory_stats(i = 0)
 *   medlua.cuda.tf32(on?)          TF32 tensor cores for float32 matmul/conv (off by default)
 *   medlua.cuda.benchmark(on?)     pick cuDNN algorithms by timing them per shape (cudnn.benchmark)
 * Tensors move with t:cuda(), t:cpu(), t:to("cuda:1"); creation functions take {device = "cuda"}. */
#include "../tensor/tensor_lua.h"
#include "ml_cuda.h"

#include <lauxlib.h>
#include <lua.h>

static int dev_arg(lua_State *L, int idx, int def) {
    if (lua_isnoneornil(L, idx)) return def;
    lua_Integer d = luaL_checkinteger(L, idx);
    if (d < -1 || d > 127) luaL_error(L, "medlua.cuda: device index %d out of range", (int)d);
    return (int)d;
}

static int l_available(lua_State *L) { lua_pushboolean(L, ml_cuda_available()); return 1; }
static int l_compiled(lua_State *L) { lua_pushboolean(L, ml_cuda_compiled()); return 1; }
static int l_status(lua_State *L) { lua_pushstring(L, ml_cuda_status()); return 1; }
static int l_device_count(lua_State *L) { lua_pushinteger(L, ml_cuda_device_count()); return 1; }
static int l_device_name(lua_State *L) { lua_pushstring(L, ml_cuda_device_name(dev_arg(L, 1, 0))); return 1; }

static int l_mem_info(lua_State *L) {
    size_t f = 0, t = 0;
    ml_err e = ml_cuda_device_memory(dev_arg(L, 1, 0), &f, &t);
    if (e) return ml_lua_error_fn(L, "cuda.mem_info", e);
    lua_pushinteger(L, (lua_Integer)f);
    lua_pushinteger(L, (lua_Integer)t);
    return 2;
}

static int l_synchronize(lua_State *L) {
    ml_err e = ml_cuda_synchronize(dev_arg(L, 1, -1));
    if (e) return ml_lua_error_fn(L, "cuda.synchronize", e);
    return 0;
}

static int l_empty_cache(lua_State *L) {
    ml_cuda_empty_cache(dev_arg(L, 1, -1));
    return 0;
}

static int l_memory_stats(lua_State *L) {
    ml_cuda_mem m;
    ml_cuda_mem_stats(dev_arg(L, 1, 0), &m);
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, (lua_Integer)m.live);
    lua_setfield(L, -2, "live");
    lua_pushinteger(L, (lua_Integer)m.peak);
    lua_setfield(L, -2, "peak");
    lua_pushinteger(L, (lua_Integer)m.cached);
    lua_setfield(L, -2, "cached");
    lua_pushinteger(L, (lua_Integer)m.allocs);
    lua_setfield(L, -2, "allocs");
    lua_pushinteger(L, (lua_Integer)m.cache_hits);
    lua_setfield(L, -2, "cache_hits");
    lua_pushinteger(L, (lua_Integer)m.driver_allocs);
    lua_setfield(L, -2, "driver_allocs");
    return 1;
}

static int l_reset_peak(lua_State *L) {
    ml_cuda_reset_peak(dev_arg(L, 1, 0));
    return 0;
}

static int l_tf32(lua_State *L) {
    bool prev = ml_cuda_tf32();
    if (!lua_isnoneornil(L, 1)) ml_cuda_set_tf32(lua_toboolean(L, 1));
    lua_pushboolean(L, prev);
    return 1;
}

/* medlua.cuda.benchmark(on?) -> previous: cuDNN algorithms by timing (cudnnFind) per shape, like cudnn.benchmark */
static int l_benchmark(lua_State *L) {
    bool prev = ml_cuda_benchmark();
    if (!lua_isnoneornil(L, 1)) ml_cuda_set_benchmark(lua_toboolean(L, 1));
    lua_pushboolean(L, prev);
    return 1;
}

static const luaL_Reg cuda_funcs[] = {
    {"available", l_available},
    {"compiled", l_compiled},
    {"status", l_status},
    {"device_count", l_device_count},
    {"device_name", l_device_name},
    {"mem_info", l_mem_info},
    {"synchronize", l_synchronize},
    {"empty_cache", l_empty_cache},
    {"memory_stats", l_memory_stats},
    {"reset_peak_memory_stats", l_reset_peak},
    {"tf32", l_tf32},
    {"benchmark", l_benchmark},
    {NULL, NULL}};

void ml_lua_open_cuda(lua_State *L) {
    luaL_newlib(L, cuda_funcs);
}
