/* Volume binding: PNG images.
 *   _volume.write_png(path, image, {bits = 8|16})   image [H, W] or [H, W, C] (C = 1, 3, 4)
 *   _volume.read_png(path) -> tensor (uint8, or int32 for 16-bit files) */
#include "volume/ml_png.h"
#include "volume/volume_lua.h"

static int l_write_png(lua_State *L) {
    static const char *const opts[] = {"bits", NULL};
    const char *path = luaL_checkstring(L, 1);
    ml_tensor *img = ml_lua_check_tensor_fn(L, 2, "write_png");
    ml_lua_check_opts(L, 3, "write_png", opts);
    int64_t bits = ml_lua_opt_intfield(L, 3, "bits", 8, "write_png");
    ml_err e = ml_png_write(path, img, (int)bits);
    if (e) return ml_lua_error_fn(L, "write_png", e);
    return 0;
}

static int l_read_png(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    ml_tensor **slot = ml_lua_newbox(L);
    ml_err e = ml_png_read(slot, path);
    if (e) return ml_lua_error_fn(L, "read_png", e);
    ml_lua_account(L);
    return 1;
}

const luaL_Reg ml_lua_volume_png_funcs[] = {{"write_png", l_write_png}, {"read_png", l_read_png}, {NULL, NULL}};
