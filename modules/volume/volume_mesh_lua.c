/* Volume binding: surface meshes (ml_mesh.h).
 *
 *   vol:mesh{label = k (nil: every non-zero voxel), smooth_sigma = 0 | {sx, sy, sz} (voxels), iso = 0.5,
 *            step = 1, taubin_iters = 0, taubin_lambda = 0.5, taubin_mu = -0.53, allow_missing = false}
 *     -> Mesh {vertices = float32 [V, 3] (world mm, RAS+), faces = int32 [F, 3] (counter-clockwise seen
 *        from outside), normals = float32 [V, 3]}, with the Mesh metatable of lua/medlua/mesh.lua
 *
 *   _volume._mesh_native() -> the helpers lua/medlua/mesh.lua builds on (tensors in, tensors or
 *   little-endian byte strings out):
 *     stats(vertices, faces) -> {area_mm2, volume_mm3, watertight, euler, vertices_used, edges,
 *                                boundary_edges, nonmanifold_edges, misoriented_edges, degenerate_faces}
 *     normals(vertices, faces) -> float32 [V, 3]
 *     taubin(vertices, faces, iters, lambda?, mu?) -> float32 [V, 3] (a smoothed copy)
 *     decimate(vertices, faces, max_faces) -> vertices, faces, normals (vertex clustering, for display)
 *     bytes(tensor, kind) -> string; kind "f32", "i32", "u32", "u16", "u8" (values must fit), or "i8n"
 *                            (floats in [-1, 1] -> round(127 x), for normalized normals)
 *     ply_vertices(vertices, normals, colors, lps) -> string of 27-byte PLY records (3 f32 position,
 *                            3 f32 normal, 3 u8 colour); colors: a uint8 [V, 3] tensor or {r, g, b};
 *                            lps = true negates x and y (RAS -> LPS)
 *     ply_faces(faces) -> string of 13-byte PLY records (u8 3, 3 i32)
 *     base64(string) -> string (RFC 4648, padded) */
#include "volume/ml_mesh.h"
#include "volume/ml_volume_ops.h"
#include "volume/volume_lua.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ helpers */
static inline void put32(char *p, uint32_t u) {
    p[0] = (char)(u & 0xff);
    p[1] = (char)((u >> 8) & 0xff);
    p[2] = (char)((u >> 16) & 0xff);
    p[3] = (char)((u >> 24) & 0xff);
}

static inline void putf(char *p, float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    put32(p, u);
}

/* The tensor at idx as a contiguous CPU tensor of dtype dt; with cols > 0 it must be [N, cols] (any
 * N >= 0). The converted tensor is pushed on the stack (the GC owns it) and returned. */
static ml_tensor *check_mat(lua_State *L, int idx, ml_dtype dt, int64_t cols, const char *fname, const char *what) {
    ml_tensor *t = ml_lua_totensor(L, idx);
    if (!t) {
        luaL_error(L, "%s: %s must be a tensor, got %s", fname, what, luaL_typename(L, idx));
        return NULL;
    }
    if (cols > 0 && (t->ndim != 2 || t->shape[1] != cols))
        luaL_error(L, "%s: %s must have shape [N, %d], got %s", fname, what, (int)cols, ml_shape_str(t->ndim, t->shape));
    if (t->storage->device.type != ML_CPU) luaL_error(L, "%s: %s must be on the CPU", fname, what);
    ml_tensor **slot = ml_lua_newbox(L);
    ml_tensor *c = NULL;
    ml_err e = ml_to_dtype(&c, t, dt);
    if (!e) {
        e = ml_contiguous(slot, c);
        ml_tensor_release(c);
    }
    if (e) ml_lua_error_fn(L, fname, e);
    ml_lua_account(L);
    return *slot;
}

static int64_t rows(const ml_tensor *t) { return t->ndim ? t->shape[0] : 1; }

static void check_faces_fit(lua_State *L, const char *fname, const ml_tensor *faces, int64_t nv) {
    const int32_t *f = ml_tensor_data(faces);
    int64_t n = ml_tensor_numel(faces);
    for (int64_t i = 0; i < n; i++)
        if (f[i] < 0 || f[i] >= nv)
            luaL_error(L, "%s: face %d refers to vertex %d, outside [0, %d)", fname, (int)(i / 3), (int)f[i], (int)nv);
}

/* push a new float32/int32 [n, 3] tensor holding data (copied) into the box at slot */
static ml_err fill_box(ml_tensor **slot, ml_dtype dt, int64_t n, const void *data) {
    int64_t sh[2] = {n, 3};
    static const char zero[12] = {0};
    return ml_tensor_from_data(slot, dt, 2, sh, n ? data : zero);
}

/* ------------------------------------------------------------ vol:mesh */
static int l_mesh(lua_State *L) {
    const char *fn = "Volume:mesh";
    static const char *const opts[] = {"label",        "smooth_sigma",  "iso",       "step", "taubin_iters",
                                       "taubin_lambda", "taubin_mu", "allow_missing", NULL};
    ml_volume *v = ml_lua_check_volume(L, 1, fn);
    ml_lua_check_nargs(L, 2, fn);
    ml_lua_check_opts(L, 2, fn, opts);
    ml_mesh_opts o;
    ml_mesh_opts_init(&o);
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "label");
        if (!lua_isnil(L, -1)) {
            int ok;
            o.label = lua_tonumberx(L, -1, &ok);
            if (!ok || !isfinite(o.label))
                return luaL_error(L, "%s: option 'label' must be a number (nil: every non-zero voxel), got %s", fn,
                                  luaL_typename(L, -1));
            o.use_label = true;
        }
        lua_pop(L, 1);
        lua_getfield(L, 2, "smooth_sigma");
        if (!lua_isnil(L, -1)) ml_lua_check_vec3(L, -1, fn, "option 'smooth_sigma'", o.smooth_sigma);
        lua_pop(L, 1);
        o.iso = ml_lua_opt_num(L, 2, "iso", o.iso, fn);
        int64_t step = ml_lua_opt_intfield(L, 2, "step", 1, fn);
        int64_t it = ml_lua_opt_intfield(L, 2, "taubin_iters", 0, fn);
        if (step < 1 || step > 64) return luaL_error(L, "%s: option 'step' must be in [1, 64], got %d", fn, (int)step);
        if (it < 0 || it > 100000)
            return luaL_error(L, "%s: option 'taubin_iters' must be in [0, 100000], got %d", fn, (int)it);
        o.step = (int)step;
        o.taubin_iters = (int)it;
        o.taubin_lambda = ml_lua_opt_num(L, 2, "taubin_lambda", o.taubin_lambda, fn);
        o.taubin_mu = ml_lua_opt_num(L, 2, "taubin_mu", o.taubin_mu, fn);
        o.allow_missing = ml_lua_opt_bool(L, 2, "allow_missing", false, fn);
    }
    /* the result table and three empty boxes first: no Lua error can happen while the core's arrays
     * are held below */
    lua_createtable(L, 0, 3);
    int tab = lua_gettop(L);
    ml_tensor **bv = ml_lua_newbox(L);
    lua_setfield(L, tab, "vertices");
    ml_tensor **bf = ml_lua_newbox(L);
    lua_setfield(L, tab, "faces");
    ml_tensor **bn = ml_lua_newbox(L);
    lua_setfield(L, tab, "normals");
    ml_mesh m;
    ml_err e = ml_mesh_from_volume(&m, v, &o);
    if (!e) e = fill_box(bv, ML_F32, m.nverts, m.verts);
    if (!e) e = fill_box(bf, ML_I32, m.nfaces, m.faces);
    if (!e) e = fill_box(bn, ML_F32, m.nverts, m.normals);
    ml_mesh_free(&m);
    if (e) {
        const char *msg = ml_errmsg();
        if (!strncmp(msg, fn, strlen(fn))) return luaL_error(L, "%s", msg);
        return luaL_error(L, "%s: %s", fn, msg);
    }
    ml_lua_account(L);
    /* the Mesh metatable of lua/medlua/mesh.lua */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "medlua.mesh");
    lua_call(L, 1, 1);
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "Mesh");
        if (lua_istable(L, -1)) lua_setmetatable(L, tab);
        else lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return 1;
}

/* ------------------------------------------------------------ helpers for mesh.lua */
static int h_stats(lua_State *L) {
    const char *fn = "mesh.stats";
    ml_tensor *vt = check_mat(L, 1, ML_F32, 3, fn, "vertices");
    ml_tensor *ft = check_mat(L, 2, ML_I32, 3, fn, "faces");
    ml_mesh_stats st;
    ml_err e = ml_mesh_stats_compute(ml_tensor_data(vt), rows(vt), ml_tensor_data(ft), rows(ft), &st);
    if (e) return ml_lua_error_fn(L, fn, e);
    lua_createtable(L, 0, 10);
    lua_pushnumber(L, st.area);
    lua_setfield(L, -2, "area_mm2");
    lua_pushnumber(L, st.volume);
    lua_setfield(L, -2, "volume_mm3");
    lua_pushboolean(L, st.watertight);
    lua_setfield(L, -2, "watertight");
    lua_pushinteger(L, st.euler);
    lua_setfield(L, -2, "euler");
    lua_pushinteger(L, st.nverts_used);
    lua_setfield(L, -2, "vertices_used");
    lua_pushinteger(L, st.nedges);
    lua_setfield(L, -2, "edges");
    lua_pushinteger(L, st.boundary_edges);
    lua_setfield(L, -2, "boundary_edges");
    lua_pushinteger(L, st.nonmanifold_edges);
    lua_setfield(L, -2, "nonmanifold_edges");
    lua_pushinteger(L, st.misoriented_edges);
    lua_setfield(L, -2, "misoriented_edges");
    lua_pushinteger(L, st.degenerate_faces);
    lua_setfield(L, -2, "degenerate_faces");
    return 1;
}

static int h_normals(lua_State *L) {
    const char *fn = "mesh.normals";
    ml_tensor *vt = check_mat(L, 1, ML_F32, 3, fn, "vertices");
    ml_tensor *ft = check_mat(L, 2, ML_I32, 3, fn, "faces");
    check_faces_fit(L, fn, ft, rows(vt));
    ml_tensor **slot = ml_lua_newbox(L);
    int64_t sh[2] = {rows(vt), 3};
    ml_err e = ml_tensor_empty(slot, ML_F32, 2, sh);
    if (!e) e = ml_mesh_vertex_normals(ml_tensor_data(vt), rows(vt), ml_tensor_data(ft), rows(ft), ml_tensor_data(*slot));
    if (e) return ml_lua_error_fn(L, fn, e);
    ml_lua_account(L);
    return 1;
}

static int h_taubin(lua_State *L) {
    const char *fn = "mesh.taubin";
    ml_tensor *vt = check_mat(L, 1, ML_F32, 3, fn, "vertices");
    ml_tensor *ft = check_mat(L, 2, ML_I32, 3, fn, "faces");
    int64_t it = ml_lua_check_int(L, 3, fn, "iterations");
    double lambda = luaL_optnumber(L, 4, 0.5), mu = luaL_optnumber(L, 5, -0.53);
    if (it < 0 || it > 100000) return luaL_error(L, "%s: iterations must be in [0, 100000]", fn);
    if (!(fabs(lambda) <= 1) || !(fabs(mu) <= 1)) return luaL_error(L, "%s: lambda and mu must be in [-1, 1]", fn);
    check_faces_fit(L, fn, ft, rows(vt));
    ml_tensor **slot = ml_lua_newbox(L);
    ml_err e = ml_clone(slot, vt);
    if (!e) e = ml_mesh_taubin(ml_tensor_data(*slot), rows(vt), ml_tensor_data(ft), rows(ft), (int)it, lambda, mu);
    if (e) return ml_lua_error_fn(L, fn, e);
    ml_lua_account(L);
    return 1;
}

static int h_decimate(lua_State *L) {
    const char *fn = "mesh.decimate";
    ml_tensor *vt = check_mat(L, 1, ML_F32, 3, fn, "vertices");
    ml_tensor *ft = check_mat(L, 2, ML_I32, 3, fn, "faces");
    int64_t maxf = ml_lua_check_int(L, 3, fn, "max_faces");
    if (maxf < 1) return luaL_error(L, "%s: max_faces must be >= 1", fn);
    check_faces_fit(L, fn, ft, rows(vt));
    ml_tensor **bv = ml_lua_newbox(L), **bf = ml_lua_newbox(L), **bn = ml_lua_newbox(L);
    ml_mesh m;
    ml_err e = ml_mesh_decimate_cluster(&m, ml_tensor_data(vt), rows(vt), ml_tensor_data(ft), rows(ft), maxf);
    if (!e) e = fill_box(bv, ML_F32, m.nverts, m.verts);
    if (!e) e = fill_box(bf, ML_I32, m.nfaces, m.faces);
    if (!e) e = fill_box(bn, ML_F32, m.nverts, m.normals);
    ml_mesh_free(&m);
    if (e) return ml_lua_error_fn(L, fn, e);
    ml_lua_account(L);
    return 3;
}

static int h_bytes(lua_State *L) {
    const char *fn = "mesh.bytes";
    static const char *const kinds[] = {"f32", "i32", "u32", "u16", "u8", "i8n", NULL};
    int kind = luaL_checkoption(L, 2, NULL, kinds);
    ml_tensor *t = check_mat(L, 1, kind == 0 || kind == 5 ? ML_F32 : ML_I64, 0, fn, "argument #1");
    int64_t n = ml_tensor_numel(t);
    static const int size[] = {4, 4, 4, 2, 1, 1};
    size_t nb = (size_t)n * (size_t)size[kind];
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, nb ? nb : 1);
    if (kind == 0) {
        const float *f = ml_tensor_data(t);
        for (int64_t i = 0; i < n; i++) putf(p + 4 * i, f[i]);
    } else if (kind == 5) {
        const float *f = ml_tensor_data(t);
        for (int64_t i = 0; i < n; i++) {
            float x = f[i];
            if (!(x >= -1)) x = x != x ? 0 : -1;
            if (x > 1) x = 1;
            p[i] = (char)(int8_t)lrintf(127.0f * x);
        }
    } else {
        const int64_t *q = ml_tensor_data(t);
        static const int64_t lo[] = {0, INT32_MIN, 0, 0, 0}, hi[] = {0, INT32_MAX, UINT32_MAX, 65535, 255};
        for (int64_t i = 0; i < n; i++) {
            int64_t x = q[i];
            if (x < lo[kind] || x > hi[kind])
                return luaL_error(L, "%s: element %d = %d does not fit %s", fn, (int)i, (int)x, kinds[kind]);
            if (kind <= 2) put32(p + 4 * i, (uint32_t)x);
            else if (kind == 3) {
                p[2 * i] = (char)(x & 0xff);
                p[2 * i + 1] = (char)(x >> 8);
            } else p[i] = (char)x;
        }
    }
    luaL_pushresultsize(&b, nb);
    return 1;
}

static int h_ply_vertices(lua_State *L) {
    const char *fn = "mesh.ply_vertices";
    ml_tensor *vt = check_mat(L, 1, ML_F32, 3, fn, "vertices");
    ml_tensor *nt = check_mat(L, 2, ML_F32, 3, fn, "normals");
    int64_t n = rows(vt);
    if (rows(nt) != n) return luaL_error(L, "%s: %d normals for %d vertices", fn, (int)rows(nt), (int)n);
    const uint8_t *cols = NULL;
    uint8_t rgb[3] = {200, 200, 200};
    if (ml_lua_totensor(L, 3)) {
        ml_tensor *ct = check_mat(L, 3, ML_U8, 3, fn, "colors");
        if (rows(ct) != n) return luaL_error(L, "%s: %d colours for %d vertices", fn, (int)rows(ct), (int)n);
        cols = ml_tensor_data(ct);
    } else if (lua_istable(L, 3)) {
        for (int i = 0; i < 3; i++) {
            lua_geti(L, 3, i + 1);
            int ok;
            lua_Integer c = lua_tointegerx(L, -1, &ok);
            if (!ok || c < 0 || c > 255) return luaL_error(L, "%s: colour components must be integers in [0, 255]", fn);
            rgb[i] = (uint8_t)c;
            lua_pop(L, 1);
        }
    } else if (!lua_isnoneornil(L, 3)) {
        return luaL_error(L, "%s: colors must be a uint8 [V, 3] tensor or {r, g, b}", fn);
    }
    float sgn = lua_toboolean(L, 4) ? -1.0f : 1.0f;
    const float *p = ml_tensor_data(vt), *q = ml_tensor_data(nt);
    size_t nb = (size_t)n * 27;
    luaL_Buffer b;
    char *o = luaL_buffinitsize(L, &b, nb ? nb : 1);
    for (int64_t i = 0; i < n; i++) {
        char *r = o + 27 * i;
        for (int k = 0; k < 3; k++) {
            float s = k < 2 ? sgn : 1.0f;
            putf(r + 4 * k, s * p[3 * i + k]);
            putf(r + 12 + 4 * k, s * q[3 * i + k]);
        }
        const uint8_t *c = cols ? cols + 3 * i : rgb;
        r[24] = (char)c[0];
        r[25] = (char)c[1];
        r[26] = (char)c[2];
    }
    luaL_pushresultsize(&b, nb);
    return 1;
}

static int h_ply_faces(lua_State *L) {
    const char *fn = "mesh.ply_faces";
    ml_tensor *ft = check_mat(L, 1, ML_I32, 3, fn, "faces");
    int64_t n = rows(ft);
    const int32_t *f = ml_tensor_data(ft);
    size_t nb = (size_t)n * 13;
    luaL_Buffer b;
    char *o = luaL_buffinitsize(L, &b, nb ? nb : 1);
    for (int64_t i = 0; i < n; i++) {
        char *r = o + 13 * i;
        r[0] = 3;
        for (int k = 0; k < 3; k++) put32(r + 1 + 4 * k, (uint32_t)f[3 * i + k]);
    }
    luaL_pushresultsize(&b, nb);
    return 1;
}

static int h_base64(lua_State *L) {
    size_t n;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t nb = 4 * ((n + 2) / 3);
    luaL_Buffer b;
    char *o = luaL_buffinitsize(L, &b, nb ? nb : 1);
    size_t j = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16;
        if (i + 1 < n) v |= (uint32_t)s[i + 1] << 8;
        if (i + 2 < n) v |= s[i + 2];
        o[j++] = tab[(v >> 18) & 63];
        o[j++] = tab[(v >> 12) & 63];
        o[j++] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        o[j++] = i + 2 < n ? tab[v & 63] : '=';
    }
    luaL_pushresultsize(&b, nb);
    return 1;
}

static int l_mesh_native(lua_State *L) {
    static const luaL_Reg h[] = {{"stats", h_stats},
                                 {"normals", h_normals},
                                 {"taubin", h_taubin},
                                 {"decimate", h_decimate},
                                 {"bytes", h_bytes},
                                 {"ply_vertices", h_ply_vertices},
                                 {"ply_faces", h_ply_faces},
                                 {"base64", h_base64},
                                 {NULL, NULL}};
    luaL_newlib(L, h);
    return 1;
}

const luaL_Reg ml_lua_volume_mesh_funcs[] = {{"mesh", l_mesh}, {"_mesh_native", l_mesh_native}, {NULL, NULL}};
