/* Metrics binding: medlua._metrics, the native half of lua/medlua/metrics.lua (which resolves input
 * layouts, classes and spacing, and names the public function in every message via the `op` argument).
 *
 *   _metrics.counts(pred, gt, num_classes, first_class, op)        -> float64 [N, K, 3] (I, P, G)
 *   _metrics.surface(pred, gt, num_classes, first_class, opts, op)  -> float64 [N, K]
 *       opts = {kind = "hausdorff" | "surface_dice" | "mean", percentile = 0..100 (0: max),
 *               directed = false, tolerance = {K numbers}, spacing = {flat numbers},
 *               spacing_per_item = false}
 *   _metrics.edt(mask, spacing?, op)    -> float64, scipy distance_transform_edt(mask, sampling=spacing)
 *   _metrics.edges(mask, op)            -> bool, surface voxels as MONAI's get_mask_edges (no crop)
 *   _metrics.max_label(t, op)           -> number, the largest value (NaN if any; -inf if empty)
 * pred/gt are [N, C, spatial...] (C == 1 label map, C > 1 one-hot); see modules/nn/ml_metrics.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn/ml_metrics.h"
#include "tensor/tensor_lua.h"

static const char *opt_op(lua_State *L, int idx, const char *def) {
    const char *s = lua_tostring(L, idx);
    return s ? s : def;
}

/* array of numbers at table field `key` of the table at idx (n entries; *n = count); pushes a scratch
 * userdata holding them (keeps it alive until the function returns). NULL when the field is nil. */
static double *num_list(lua_State *L, int idx, const char *key, int64_t *n, const char *op) {
    *n = 0;
    int t = lua_getfield(L, idx, key);
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return NULL;
    }
    if (t != LUA_TTABLE) luaL_error(L, "%s: %s must be a list of numbers, got %s", op, key, lua_typename(L, t));
    lua_Integer len = luaL_len(L, -1);
    if (len < 0 || len > (1 << 24)) luaL_error(L, "%s: %s has an absurd length %I", op, key, len);
    double *v = lua_newuserdatauv(L, sizeof(double) * (size_t)(len > 0 ? len : 1), 0);
    for (lua_Integer i = 1; i <= len; i++) {
        lua_geti(L, -2, i);
        int ok;
        double x = lua_tonumberx(L, -1, &ok);
        if (!ok) luaL_error(L, "%s: %s[%I] must be a number, got %s", op, key, i, luaL_typename(L, -1));
        v[i - 1] = x;
        lua_pop(L, 1);
    }
    lua_remove(L, -2); /* the list; the userdata stays on the stack */
    *n = len;
    return v;
}

static int l_counts(lua_State *L) {
    const char *op = opt_op(L, 5, "metrics");
    ml_tensor *p = ml_lua_check_tensor_fn(L, 1, op), *g = ml_lua_check_tensor_fn(L, 2, op);
    int64_t nc = ml_lua_check_int(L, 3, op, "num_classes"), first = ml_lua_check_int(L, 4, op, "first_class");
    ml_tensor **slot = ml_lua_newbox(L);
    ml_err e = ml_seg_counts(slot, p, g, nc, first, op);
    if (e) return ml_lua_error_fn(L, op, e);
    ml_lua_account(L);
    return 1;
}

static int l_surface(lua_State *L) {
    const char *op = opt_op(L, 6, "metrics");
    ml_tensor *p = ml_lua_check_tensor_fn(L, 1, op), *g = ml_lua_check_tensor_fn(L, 2, op);
    int64_t nc = ml_lua_check_int(L, 3, op, "num_classes"), first = ml_lua_check_int(L, 4, op, "first_class");
    static const char *const keys[] = {"kind", "percentile", "directed", "tolerance", "spacing", "spacing_per_item",
                                       NULL};
    luaL_checktype(L, 5, LUA_TTABLE);
    ml_lua_check_opts(L, 5, op, keys);
    ml_surface_opts o;
    memset(&o, 0, sizeof o);
    const char *kind = ml_lua_opt_str(L, 5, "kind", "hausdorff", op);
    if (!strcmp(kind, "hausdorff")) o.kind = ML_SURF_HAUSDORFF;
    else if (!strcmp(kind, "surface_dice")) o.kind = ML_SURF_DICE;
    else if (!strcmp(kind, "mean")) o.kind = ML_SURF_MEAN;
    else return luaL_error(L, "%s: unknown surface metric kind '%s' (hausdorff, surface_dice, mean)", op, kind);
    o.percentile = ml_lua_opt_num(L, 5, "percentile", 0.0, op);
    o.directed = ml_lua_opt_bool(L, 5, "directed", false, op);
    o.spacing_per_item = ml_lua_opt_bool(L, 5, "spacing_per_item", false, op);
    int64_t ntol = 0, nsp = 0;
    o.tolerance = num_list(L, 5, "tolerance", &ntol, op);
    o.spacing = num_list(L, 5, "spacing", &nsp, op);
    int64_t K = nc - first, nsd = p->ndim - 2, N = p->ndim > 0 ? p->shape[0] : 0;
    if (o.kind == ML_SURF_DICE && o.tolerance && ntol != K)
        return luaL_error(L, "%s: %I class thresholds given for %I classes", op, (lua_Integer)ntol, (lua_Integer)K);
    if (o.spacing && nsp != (o.spacing_per_item ? N * nsd : nsd))
        return luaL_error(L, "%s: spacing has %I values, expected %I", op, (lua_Integer)nsp,
                          (lua_Integer)(o.spacing_per_item ? N * nsd : nsd));
    ml_tensor **slot = ml_lua_newbox(L);
    ml_err e = ml_seg_surface(slot, p, g, nc, first, &o, op);
    if (e) return ml_lua_error_fn(L, op, e);
    ml_lua_account(L);
    return 1;
}

static int l_edt(lua_State *L) {
    const char *op = opt_op(L, 3, "distance_transform_edt");
    ml_tensor *m = ml_lua_check_tensor_fn(L, 1, op);
    double sp[ML_MAX_DIMS];
    const double *spp = NULL;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_Integer len = luaL_len(L, 2);
        if (len != m->ndim)
            return luaL_error(L, "%s: spacing has %I values for a %d-d mask (shape %s)", op, len, m->ndim,
                              ml_shape_str(m->ndim, m->shape));
        for (int i = 0; i < m->ndim; i++) {
            lua_geti(L, 2, i + 1);
            int ok;
            sp[i] = lua_tonumberx(L, -1, &ok);
            if (!ok) return luaL_error(L, "%s: spacing[%d] must be a number", op, i + 1);
            lua_pop(L, 1);
        }
        spp = sp;
    }
    ml_tensor **slot = ml_lua_newbox(L);
    ml_err e = ml_distance_transform_edt(slot, m, spp, op);
    if (e) return ml_lua_error_fn(L, op, e);
    ml_lua_account(L);
    return 1;
}

static int l_edges(lua_State *L) {
    const char *op = opt_op(L, 2, "surface_voxels");
    ml_tensor *m = ml_lua_check_tensor_fn(L, 1, op);
    ml_tensor **slot = ml_lua_newbox(L);
    ml_err e = ml_surface_voxels(slot, m, op);
    if (e) return ml_lua_error_fn(L, op, e);
    ml_lua_account(L);
    return 1;
}

static int l_max_label(lua_State *L) {
    const char *op = opt_op(L, 2, "max_label");
    ml_tensor *t = ml_lua_check_tensor_fn(L, 1, op);
    double m;
    ml_err e = ml_label_max(&m, t, op);
    if (e) return ml_lua_error_fn(L, op, e);
    lua_pushnumber(L, m);
    return 1;
}

static const luaL_Reg fns[] = {
    {"max_label", l_max_label},
    {"counts", l_counts},
    {"surface", l_surface},
    {"edt", l_edt},
    {"edges", l_edges},
    {NULL, NULL},
};

int ml_lua_open_metrics(lua_State *L) {
    luaL_newlib(L, fns);
    lua_setfield(L, -2, "_metrics");
    return 0;
}
