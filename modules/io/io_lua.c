/* Lua binding for safetensors I/O:
 *   medlua.save(path, {name = tensor, ...}, {key = "value", ...}?)
 *   local tensors, metadata = medlua.load(path)
 * Metadata values may be strings or numbers (numbers are stored as their Lua tostring). */
#include "io/ml_safetensors.h"
#include "tensor/tensor_lua.h"

#include <string.h>

#define ST_FILE_MT "medlua.safetensors_file"

/* medlua.save(path, tensors, metadata?) */
static int l_save(lua_State *L) {
    ml_lua_check_nargs(L, 3, "medlua.save");
    const char *path = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
    lua_settop(L, 3);

    /* count entries and check their types before allocating anything */
    int n = 0, nmeta = 0;
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            return luaL_error(L, "medlua.save: tensor names must be strings (got a %s key)", luaL_typename(L, -2));
        ml_lua_box *bx = ml_lua_tobox(L, -1);
        if (!bx)
            return luaL_error(L, "medlua.save: '%s' is not a tensor (got %s)", lua_tostring(L, -2), luaL_typename(L, -1));
        if (!bx->t) return luaL_error(L, "medlua.save: tensor '%s' is closed", lua_tostring(L, -2));
        if (ml_tensor_is_cuda(bx->t))
            return luaL_error(L, "medlua.save: tensor '%s' is on %s; move it with :cpu() first", lua_tostring(L, -2),
                              ml_device_str(bx->t->storage->device));
        if (n == 0x7fffffff) return luaL_error(L, "medlua.save: too many tensors");
        n++;
        lua_pop(L, 1);
    }
    if (!lua_isnil(L, 3)) {
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            if (lua_type(L, -2) != LUA_TSTRING)
                return luaL_error(L, "medlua.save: metadata keys must be strings (got a %s key)", luaL_typename(L, -2));
            int t = lua_type(L, -1);
            if (t != LUA_TSTRING && t != LUA_TNUMBER)
                return luaL_error(L, "medlua.save: metadata value for '%s' must be a string or a number (got %s)",
                                  lua_tostring(L, -2), luaL_typename(L, -1));
            if (nmeta == 0x7fffffff) return luaL_error(L, "medlua.save: too many metadata entries");
            nmeta++;
            lua_pop(L, 1);
        }
    }

    /* Lua-owned scratch arrays (freed by the GC even if something below raises) */
    const char **names = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n ? n : 1), 0);            /* 4 */
    ml_tensor **ts = lua_newuserdatauv(L, sizeof(ml_tensor *) * (size_t)(n ? n : 1), 0);           /* 5 */
    const char **mk = lua_newuserdatauv(L, sizeof(char *) * (size_t)(nmeta ? nmeta : 1), 0);      /* 6 */
    const char **mv = lua_newuserdatauv(L, sizeof(char *) * (size_t)(nmeta ? nmeta : 1), 0);      /* 7 */
    lua_createtable(L, nmeta, 0); /* 8: anchors metadata strings converted from numbers */
    /* no Lua code runs between the two traversals, so they visit the same entries */
    int k = 0;
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        names[k] = lua_tostring(L, -2); /* key strings stay alive: the table is on the stack */
        ts[k] = ml_lua_totensor(L, -1);
        k++;
        lua_pop(L, 1);
    }
    k = 0;
    if (!lua_isnil(L, 3)) {
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            mk[k] = lua_tostring(L, -2);
            if (lua_type(L, -1) == LUA_TNUMBER) {
                luaL_tolstring(L, -1, NULL);      /* pushes the converted string */
                mv[k] = lua_tostring(L, -1);
                lua_rawseti(L, 8, k + 1);         /* anchor it */
            } else {
                mv[k] = lua_tostring(L, -1);
            }
            k++;
            lua_pop(L, 1);
        }
    }

    ml_err e = ml_safetensors_save(path, n, names, ts, nmeta, mk, mv);
    if (e) return ml_lua_error(L, e);
    return 0;
}

/* Box for a loaded file so that a Lua error while building the result tables cannot leak it. */
typedef struct { ml_st_file *f; } st_box;

static int st_box_gc(lua_State *L) {
    st_box *b = luaL_checkudata(L, 1, ST_FILE_MT);
    ml_st_free(b->f);
    b->f = NULL;
    return 0;
}

/* local tensors, metadata = medlua.load(path) */
static int l_load(lua_State *L) {
    ml_lua_check_nargs(L, 1, "medlua.load");
    const char *path = luaL_checkstring(L, 1);
    st_box *b = lua_newuserdatauv(L, sizeof *b, 0);
    b->f = NULL;
    luaL_setmetatable(L, ST_FILE_MT);
    ml_err e = ml_safetensors_load(path, &b->f);
    if (e) return ml_lua_error(L, e);
    ml_st_file *f = b->f;
    int n = ml_st_count(f), nm = ml_st_meta_count(f);
    lua_createtable(L, 0, n);
    for (int i = 0; i < n; i++) {
        ml_lua_push_tensor_retain(L, ml_st_tensor(f, i));
        lua_setfield(L, -2, ml_st_name(f, i));
    }
    lua_createtable(L, 0, nm);
    for (int i = 0; i < nm; i++) {
        lua_pushstring(L, ml_st_meta_value(f, i));
        lua_setfield(L, -2, ml_st_meta_key(f, i));
    }
    /* drop the file's own references now rather than at the next GC cycle */
    ml_st_free(b->f);
    b->f = NULL;
    return 2;
}

int ml_lua_open_io(lua_State *L) {
    if (luaL_newmetatable(L, ST_FILE_MT)) {
        lua_pushcfunction(L, st_box_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_save);
    lua_setfield(L, -2, "save");
    lua_pushcfunction(L, l_load);
    lua_setfield(L, -2, "load");
    return 0;
}
