/* medlua Lua binding, part 2: Tensor methods, properties (__index/__newindex) and arithmetic
 * metamethods. Every function checks its arguments first, then pushes a closed box, runs the
 * core op into it and raises the core's message on failure (after releasing temporaries). */
#include "tensor_lua.h"
#include "../nn/ml_nn.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------------ helpers */
static inline ml_tensor *self_t(lua_State *L, const char *fname) { return ml_lua_check_tensor_fn(L, 1, fname); }

static inline int done(lua_State *L, const char *fname, ml_err e) {
    if (e) return ml_lua_error_fn(L, fname, e);
    ml_lua_account(L);
    return 1;
}

static bool opt_boolarg(lua_State *L, int idx, bool def, const char *fname, const char *what) {
    if (lua_isnoneornil(L, idx)) return def;
    if (lua_type(L, idx) != LUA_TBOOLEAN)
        luaL_error(L, "%s: %s must be a boolean, got %s", fname, what, luaL_typename(L, idx));
    return lua_toboolean(L, idx);
}

/* A dim for a tensor of rank `rank` (0-d tensors accept 0 and -1, as in PyTorch); returns it wrapped. */
static int wrap_dim(lua_State *L, int64_t d, int rank, const ml_tensor *t, const char *fname) {
    int n = rank > 0 ? rank : 1;
    if (d < -n || d >= n)
        luaL_error(L, "%s: dim %I out of range for a tensor of shape %s (expected %d..%d)", fname, (lua_Integer)d,
                   ml_shape_str(t->ndim, t->shape), -n, n - 1);
    return (int)(d < 0 ? d + n : d);
}

static int check_dim(lua_State *L, int idx, const ml_tensor *t, const char *fname) {
    return wrap_dim(L, ml_lua_check_int(L, idx, fname, "dim"), t->ndim, t, fname);
}

/* dims argument: nil (all, returns 0), a number, or a table of numbers; wrapped and checked. */
static int parse_dims(lua_State *L, int idx, const ml_tensor *t, const char *fname, int *dims) {
    int n = 0;
    if (lua_isnoneornil(L, idx)) return 0;
    if (lua_type(L, idx) == LUA_TNUMBER) {
        dims[0] = check_dim(L, idx, t, fname);
        return 1;
    }
    if (!lua_istable(L, idx))
        luaL_error(L, "%s: dims must be a number or a table of numbers, got %s", fname, luaL_typename(L, idx));
    lua_Unsigned len = lua_rawlen(L, idx);
    if (len > ML_MAX_DIMS) luaL_error(L, "%s: %d dims given, at most %d", fname, (int)len, ML_MAX_DIMS);
    for (lua_Unsigned i = 1; i <= len; i++) {
        lua_rawgeti(L, idx, (lua_Integer)i);
        int d = wrap_dim(L, ml_lua_check_int(L, -1, fname, "dim"), t->ndim, t, fname);
        lua_pop(L, 1);
        for (int j = 0; j < n; j++)
            if (dims[j] == d) luaL_error(L, "%s: dim %d appears more than once in dims", fname, d);
        dims[n++] = d;
    }
    return n;
}

static void check_plain(lua_State *L, ml_tensor *t, const char *fname) {
    ml_err e = ml_tensor_plain(t);
    if (e) ml_lua_error_fn(L, fname, e);
}

/* PyTorch forbids in-place changes of a leaf that requires grad while grad mode is on. */
static void check_inplace(lua_State *L, ml_tensor *t, const char *fname) {
    if (t->requires_grad && !t->grad_fn && ml_grad_enabled())
        luaL_error(L,
                   "%s: a leaf tensor that requires grad (shape %s) cannot be modified in place while grad mode is on; "
                   "wrap the update in medlua.no_grad()",
                   fname, ml_shape_str(t->ndim, t->shape));
}

static int return_self(lua_State *L) {
    lua_settop(L, 1);
    ml_lua_account(L);
    return 1;
}

static double check_scalar(lua_State *L, int idx, const char *fname, const char *what) {
    int tp = lua_type(L, idx);
    if (tp == LUA_TBOOLEAN) return lua_toboolean(L, idx);
    if (tp == LUA_TNUMBER) return (double)lua_tonumber(L, idx);
    ml_tensor *t = ml_lua_totensor(L, idx);
    if (t && ml_tensor_numel(t) == 1 && !t->layout) return ml_tensor_item(t);
    luaL_error(L, "%s: %s must be a number, got %s", fname, what,
               t ? "a tensor with more than one element" : luaL_typename(L, idx));
    return 0;
}

/* ------------------------------------------------------- binary operations */
static const char *const bin_names[ML_NBINOPS] = {"add", "sub", "mul", "div", "pow", "maximum", "minimum", "fmod",
                                                  "atan2", "eq", "ne", "lt", "le", "gt", "ge", "logical_and",
                                                  "logical_or", "logical_xor"};
static const char *const bin_inplace_names[ML_NBINOPS] = {"add_", "sub_", "mul_", "div_", "pow_", "maximum_",
                                                          "minimum_", "fmod_", "atan2_"};

/* a op b with a tensor on at least one side (metamethods: either; methods: self first). */
static int binop_impl(lua_State *L, ml_binop op) {
    const char *fname = bin_names[op];
    /* any layout: ml_binary adds two blocked tensors in their layout and makes anything else plain */
    ml_lua_box *ba = ml_lua_tobox_raw(L, 1), *bb = ml_lua_tobox_raw(L, 2);
    ml_err e;
    if (ba && bb) {
        if (!ba->t) return luaL_error(L, "%s: argument #1: tensor is closed", fname);
        if (!bb->t) return luaL_error(L, "%s: argument #2: tensor is closed", fname);
        ml_tensor **slot = ml_lua_newbox(L);
        e = ml_binary(slot, op, ba->t, bb->t);
    } else if (ba) {
        if (!ba->t) return luaL_error(L, "%s: argument #1: tensor is closed", fname);
        int tp = lua_type(L, 2);
        if (tp != LUA_TNUMBER && tp != LUA_TBOOLEAN)
            return luaL_error(L, "%s: argument #2: expected a tensor or a number, got %s", fname, luaL_typename(L, 2));
        double s = tp == LUA_TNUMBER ? (double)lua_tonumber(L, 2) : lua_toboolean(L, 2);
        ml_tensor **slot = ml_lua_newbox(L);
        e = ml_binary_scalar(slot, op, ba->t, s, false);
    } else if (bb) {
        if (!bb->t) return luaL_error(L, "%s: argument #2: tensor is closed", fname);
        int tp = lua_type(L, 1);
        if (tp != LUA_TNUMBER && tp != LUA_TBOOLEAN)
            return luaL_error(L, "%s: argument #1: expected a tensor or a number, got %s", fname, luaL_typename(L, 1));
        double s = tp == LUA_TNUMBER ? (double)lua_tonumber(L, 1) : lua_toboolean(L, 1);
        ml_tensor **slot = ml_lua_newbox(L);
        e = ml_binary_scalar(slot, op, bb->t, s, true);
    } else {
        return luaL_error(L, "%s: expected a tensor, got %s and %s", fname, luaL_typename(L, 1), luaL_typename(L, 2));
    }
    if (e) return ml_lua_error(L, e);
    ml_lua_account(L);
    return 1;
}

static int l_binop(lua_State *L) {
    ml_binop op = (ml_binop)lua_tointeger(L, lua_upvalueindex(1));
    return binop_impl(L, op);
}

/* method form: t:add(b) -- checks the argument count, self must be a tensor */
static int m_binop(lua_State *L) {
    ml_binop op = (ml_binop)lua_tointeger(L, lua_upvalueindex(1));
    ml_lua_check_nargs(L, 2, bin_names[op]);
    self_t(L, bin_names[op]);
    if (lua_isnone(L, 2)) return luaL_error(L, "%s: argument #2: expected a tensor or a number, got no value", bin_names[op]);
    return binop_impl(L, op);
}

static int m_binop_(lua_State *L) {
    ml_binop op = (ml_binop)lua_tointeger(L, lua_upvalueindex(1));
    const char *fname = bin_inplace_names[op];
    ml_lua_check_nargs(L, 2, fname);
    ml_tensor *a = self_t(L, fname);
    ml_err e;
    ml_lua_box *bb = ml_lua_tobox(L, 2);
    if (bb) {
        if (!bb->t) return luaL_error(L, "%s: argument #2: tensor is closed", fname);
        check_inplace(L, a, fname);
        e = ml_binary_(op, a, bb->t);
    } else {
        double s = check_scalar(L, 2, fname, "argument #2");
        check_inplace(L, a, fname);
        e = ml_binary_scalar_(op, a, s);
    }
    if (e) return ml_lua_error_fn(L, fname, e);
    return return_self(L);
}

static int mm_unm(lua_State *L) {
    ml_tensor *a = self_t(L, "neg");
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, "neg", ml_unary(slot, ML_NEG, a));
}

/* -------------------------------------------------------- unary operations */
static const char *const un_names[ML_NUNOPS] = {
    "neg", "exp", "log", "sqrt", "rsqrt", "abs", "sign", "floor", "ceil", "round", "trunc", "sin", "cos", "tan", "tanh",
    "sigmoid", "relu", "gelu", "gelu", "silu", "softplus", "log1p", "expm1", "reciprocal", "square", "erf",
    "logical_not", "isnan", "isinf"};
static const char *const un_inplace_names[ML_NUNOPS] = {
    "neg_", "exp_", "log_", "sqrt_", "rsqrt_", "abs_", "sign_", "floor_", "ceil_", "round_", "trunc_", "sin_", "cos_",
    "tan_", "tanh_", "sigmoid_", "relu_", "gelu_", "gelu_", "silu_", "softplus_", "log1p_", "expm1_", "reciprocal_",
    "square_", "erf_", "logical_not_", NULL, NULL};

static int m_unop(lua_State *L) {
    ml_unop op = (ml_unop)lua_tointeger(L, lua_upvalueindex(1));
    ml_lua_check_nargs(L, 1, un_names[op]);
    ml_tensor *a = self_t(L, un_names[op]);
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, un_names[op], ml_unary(slot, op, a));
}

static int m_unop_(lua_State *L) {
    ml_unop op = (ml_unop)lua_tointeger(L, lua_upvalueindex(1));
    const char *fname = un_inplace_names[op];
    ml_lua_check_nargs(L, 1, fname);
    ml_tensor *a = self_t(L, fname);
    check_inplace(L, a, fname);
    ml_err e = ml_unary_(op, a);
    if (e) return ml_lua_error_fn(L, fname, e);
    return return_self(L);
}

/* gelu(approximate?) where approximate is "none" | "tanh" or {approximate = ...} */
static ml_unop gelu_mode(lua_State *L, int idx, const char *fname) {
    const char *mode = "none";
    if (lua_type(L, idx) == LUA_TSTRING) mode = lua_tostring(L, idx);
    else if (lua_istable(L, idx)) {
        static const char *const keys[] = {"approximate", NULL};
        ml_lua_check_opts(L, idx, fname, keys);
        mode = ml_lua_opt_str(L, idx, "approximate", "none", fname);
    } else if (!lua_isnoneornil(L, idx))
        luaL_error(L, "%s: approximate must be \"none\" or \"tanh\", got %s", fname, luaL_typename(L, idx));
    if (strcmp(mode, "none") == 0) return ML_GELU;
    if (strcmp(mode, "tanh") == 0) return ML_GELU_TANH;
    luaL_error(L, "%s: approximate must be \"none\" or \"tanh\", got \"%s\"", fname, mode);
    return ML_GELU;
}

static int m_gelu(lua_State *L) {
    ml_lua_check_nargs(L, 2, "gelu");
    ml_tensor *a = self_t(L, "gelu");
    ml_unop op = gelu_mode(L, 2, "gelu");
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, "gelu", ml_unary(slot, op, a));
}

static int m_gelu_(lua_State *L) {
    ml_lua_check_nargs(L, 2, "gelu_");
    ml_tensor *a = self_t(L, "gelu_");
    ml_unop op = gelu_mode(L, 2, "gelu_");
    check_inplace(L, a, "gelu_");
    ml_err e = ml_unary_(op, a);
    if (e) return ml_lua_error_fn(L, "gelu_", e);
    return return_self(L);
}

static void clamp_bounds(lua_State *L, const char *fname, double *lo, double *hi) {
    *lo = lua_isnoneornil(L, 2) ? -INFINITY : check_scalar(L, 2, fname, "lower bound");
    *hi = lua_isnoneornil(L, 3) ? INFINITY : check_scalar(L, 3, fname, "upper bound");
    if (lua_isnoneornil(L, 2) && lua_isnoneornil(L, 3))
        luaL_error(L, "%s: at least one of the bounds must be given (nil means none)", fname);
}

static int m_clamp(lua_State *L) {
    ml_lua_check_nargs(L, 3, "clamp");
    ml_tensor *a = self_t(L, "clamp");
    double lo, hi;
    clamp_bounds(L, "clamp", &lo, &hi);
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, "clamp", ml_clamp(slot, a, lo, hi));
}

static int m_clamp_(lua_State *L) {
    ml_lua_check_nargs(L, 3, "clamp_");
    ml_tensor *a = self_t(L, "clamp_");
    double lo, hi;
    clamp_bounds(L, "clamp_", &lo, &hi);
    check_inplace(L, a, "clamp_");
    ml_err e = ml_clamp_(a, lo, hi);
    if (e) return ml_lua_error_fn(L, "clamp_", e);
    return return_self(L);
}

static int m_leaky_relu(lua_State *L) {
    ml_lua_check_nargs(L, 2, "leaky_relu");
    ml_tensor *a = self_t(L, "leaky_relu");
    double slope = lua_isnoneornil(L, 2) ? 0.01 : ml_lua_check_num(L, 2, "leaky_relu", "negative_slope");
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, "leaky_relu", ml_leaky_relu(slot, a, slope));
}

static int m_elu(lua_State *L) {
    ml_lua_check_nargs(L, 2, "elu");
    ml_tensor *a = self_t(L, "elu");
    double alpha = lua_isnoneornil(L, 2) ? 1.0 : ml_lua_check_num(L, 2, "elu", "alpha");
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, "elu", ml_elu(slot, a, alpha));
}

/* --------------------------------------------------------------- reductions */
static const char *const red_names[ML_NREDOPS] = {"sum", "mean", "prod", "amax", "amin", "logsumexp"};

static int m_reduce(lua_State *L) {
    ml_redop op = (ml_redop)lua_tointeger(L, lua_upvalueindex(1));
    const char *fname = red_names[op];
    ml_lua_check_nargs(L, 3, fname);
    ml_tensor *a = self_t(L, fname);
    int dims[ML_MAX_DIMS];
    int nd = parse_dims(L, 2, a, fname, dims);
    bool keep = opt_boolarg(L, 3, false, fname, "keepdim");
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, fname, ml_reduce(slot, op, a, nd, dims, keep));
}

static int var_std(lua_State *L, bool take_sqrt) {
    const char *fname = take_sqrt ? "std" : "var";
    static const char *const keys[] = {"correction", "unbiased", "keepdim", NULL};
    ml_lua_check_nargs(L, 3, fname);
    ml_tensor *a = self_t(L, fname);
    int dims[ML_MAX_DIMS];
    int nd = parse_dims(L, 2, a, fname, dims);
    double correction = 1;
    bool keep = false;
    if (lua_type(L, 3) == LUA_TBOOLEAN) keep = lua_toboolean(L, 3);
    else {
        ml_lua_check_opts(L, 3, fname, keys);
        bool unbiased = ml_lua_opt_bool(L, 3, "unbiased", true, fname);
        correction = ml_lua_opt_num(L, 3, "correction", unbiased ? 1 : 0, fname);
        keep = ml_lua_opt_bool(L, 3, "keepdim", false, fname);
    }
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, fname, ml_var(slot, a, nd, dims, correction, keep, take_sqrt));
}
static int m_var(lua_State *L) { return var_std(L, false); }
static int m_std(lua_State *L) { return var_std(L, true); }

static int m_norm(lua_State *L) {
    const char *fname = "norm";
    ml_lua_check_nargs(L, 4, fname);
    ml_tensor *a = self_t(L, fname);
    double p = 2;
    if (lua_type(L, 2) == LUA_TSTRING) {
        const char *s = lua_tostring(L, 2);
        if (strcmp(s, "fro") == 0) p = 2;
        else if (strcmp(s, "inf") == 0) p = INFINITY;
        else if (strcmp(s, "-inf") == 0) p = -INFINITY;
        else return luaL_error(L, "%s: p must be a number, \"fro\", \"inf\" or \"-inf\", got \"%s\"", fname, s);
    } else if (!lua_isnoneornil(L, 2)) p = ml_lua_check_num(L, 2, fname, "p");
    int dims[ML_MAX_DIMS];
    int nd = parse_dims(L, 3, a, fname, dims);
    bool keep = opt_boolarg(L, 4, false, fname, "keepdim");
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, fname, ml_norm(slot, a, p, nd, dims, keep));
}

static int max_min(lua_State *L, bool is_max) {
    const char *fname = is_max ? "max" : "min";
    ml_lua_check_nargs(L, 3, fname);
    ml_tensor *a = self_t(L, fname);
    if (ml_lua_tobox(L, 2)) { /* max(other): elementwise, like torch.max(a, b) */
        ml_lua_check_nargs(L, 2, fname);
        return binop_impl(L, is_max ? ML_MAXIMUM : ML_MINIMUM);
    }
    if (lua_isnoneornil(L, 2)) {
        ml_lua_check_nargs(L, 1, fname);
        ml_tensor **slot = ml_lua_newbox(L);
        return done(L, fname, ml_reduce(slot, is_max ? ML_RAMAX : ML_RAMIN, a, 0, NULL, false));
    }
    int dim = check_dim(L, 2, a, fname);
    bool keep = opt_boolarg(L, 3, false, fname, "keepdim");
    ml_tensor **vs = ml_lua_newbox(L);
    ml_tensor **is = ml_lua_newbox(L);
    ml_tensor *v = NULL, *i = NULL;
    ml_err e = is_max ? ml_max_dim(&v, &i, a, dim, keep) : ml_min_dim(&v, &i, a, dim, keep);
    if (e) {
        ml_tensor_release(v);
        ml_tensor_release(i);
        return ml_lua_error_fn(L, fname, e);
    }
    *vs = v;
    *is = i;
    ml_lua_account(L);
    return 2;
}
static int m_max(lua_State *L) { return max_min(L, true); }
static int m_min(lua_State *L) { return max_min(L, false); }

static int arg_max_min(lua_State *L, bool is_max) {
    const char *fname = is_max ? "argmax" : "argmin";
    ml_lua_check_nargs(L, 3, fname);
    ml_tensor *a = self_t(L, fname);
    int dim = lua_isnoneornil(L, 2) ? ML_ALL_DIMS : check_dim(L, 2, a, fname);
    bool keep = opt_boolarg(L, 3, false, fname, "keepdim");
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, fname, is_max ? ml_argmax(slot, a, dim, keep) : ml_argmin(slot, a, dim, keep));
}
static int m_argmax(lua_State *L) { return arg_max_min(L, true); }
static int m_argmin(lua_State *L) { return arg_max_min(L, false); }

static int m_cumsum(lua_State *L) {
    ml_lua_check_nargs(L, 2, "cumsum");
    ml_tensor *a = self_t(L, "cumsum");
    if (lua_isnoneornil(L, 2)) return luaL_error(L, "cumsum: dim is required");
    int dim = check_dim(L, 2, a, "cumsum");
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, "cumsum", ml_cumsum(slot, a, dim));
}

/* t:quantile(q): q a number (-> 0-d tensor) or a list / 1-D tensor of numbers (-> 1-D tensor), over all
 * elements, linear interpolation (torch.quantile's default). */
static int m_quantile(lua_State *L) {
    ml_lua_check_nargs(L, 2, "quantile");
    ml_tensor *a = self_t(L, "quantile");
    double qs[4096];
    int nq = 0;
    bool scalar = lua_type(L, 2) == LUA_TNUMBER;
    if (scalar) {
        qs[nq++] = lua_tonumber(L, 2);
    } else if (lua_istable(L, 2)) {
        lua_Integer n = luaL_len(L, 2);
        if (n < 1 || n > 4096) return luaL_error(L, "quantile: need 1 to 4096 quantiles, got %d", (int)n);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_geti(L, 2, i);
            int ok;
            qs[nq++] = lua_tonumberx(L, -1, &ok);
            if (!ok) return luaL_error(L, "quantile: q[%d] is not a number", (int)i);
            lua_pop(L, 1);
        }
    } else {
        ml_tensor *qt = ml_lua_totensor(L, 2);
        if (!qt || qt->ndim > 1 || ml_tensor_numel(qt) < 1 || ml_tensor_numel(qt) > 4096)
            return luaL_error(L, "quantile: q must be a number, a list of numbers or a 1-D tensor");
        for (int64_t i = 0; i < ml_tensor_numel(qt); i++) qs[nq++] = ml_tensor_get(qt, &i);
    }
    ml_tensor **slot = ml_lua_newbox(L);
    ml_err e = ml_quantile(slot, a, nq, qs);
    if (e == ML_OK && scalar) {
        ml_tensor *v = NULL;
        e = ml_view(&v, *slot, 0, NULL);
        ml_tensor_release(*slot);
        *slot = v;
    }
    return done(L, "quantile", e);
}

/* ------------------------------------------------------------- size / info */
static void push_int_list(lua_State *L, int n, const int64_t *v) {
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_pushinteger(L, (lua_Integer)v[i]);
        lua_rawseti(L, -2, i + 1);
    }
}

static int m_size(lua_State *L) {
    ml_lua_check_nargs(L, 2, "size");
    ml_tensor *t = self_t(L, "size");
    if (lua_isnoneornil(L, 2)) {
        push_int_list(L, t->ndim, t->shape);
        return 1;
    }
    if (t->ndim == 0) return luaL_error(L, "size: a 0-d tensor has no dimensions");
    int d = check_dim(L, 2, t, "size");
    lua_pushinteger(L, (lua_Integer)t->shape[d]);
    return 1;
}

static int m_stride(lua_State *L) {
    ml_lua_check_nargs(L, 2, "stride");
    ml_tensor *t = self_t(L, "stride");
    check_plain(L, t, "stride");
    if (lua_isnoneornil(L, 2)) {
        push_int_list(L, t->ndim, t->stride);
        return 1;
    }
    if (t->ndim == 0) return luaL_error(L, "stride: a 0-d tensor has no dimensions");
    int d = check_dim(L, 2, t, "stride");
    lua_pushinteger(L, (lua_Integer)t->stride[d]);
    return 1;
}

static int m_dim(lua_State *L) {
    lua_pushinteger(L, self_t(L, "dim")->ndim);
    return 1;
}

static int m_numel(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)ml_tensor_numel(self_t(L, "numel")));
    return 1;
}

static int m_element_size(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)ml_dtype_size((ml_dtype)self_t(L, "element_size")->dtype));
    return 1;
}

static int m_storage_offset(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)self_t(L, "storage_offset")->offset);
    return 1;
}

static int m_is_contiguous(lua_State *L) {
    lua_pushboolean(L, ml_tensor_is_contiguous(self_t(L, "is_contiguous")));
    return 1;
}

static int m_is_floating_point(lua_State *L) {
    lua_pushboolean(L, ml_dtype_is_float((ml_dtype)self_t(L, "is_floating_point")->dtype));
    return 1;
}

/* ------------------------------------------------------------------- views */
static int view_reshape(lua_State *L, bool view) {
    const char *fname = view ? "view" : "reshape";
    ml_tensor *t = self_t(L, fname);
    if (lua_isnone(L, 2)) return luaL_error(L, "%s: expected a shape (sizes as numbers or one table)", fname);
    int64_t shape[ML_MAX_DIMS];
    int next;
    int nd = ml_lua_parse_shape(L, 2, fname, shape, &next, true, false);
    ml_lua_check_nargs(L, next - 1, fname);
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, fname, view ? ml_view(slot, t, nd, shape) : ml_reshape(slot, t, nd, shape));
}
static int m_view(lua_State *L) { return view_reshape(L, true); }
static int m_reshape(lua_State *L) { return view_reshape(L, false); }

static int m_view_as(lua_State *L) {
    ml_lua_check_nargs(L, 2, "view_as");
    ml_tensor *t = self_t(L, "view_as");
    ml_tensor *o = ml_lua_check_tensor_fn(L, 2, "view_as");
    int64_t shape[ML_MAX_DIMS];
    memcpy(shape, o->shape, sizeof shape);
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, "view_as", ml_view(slot, t, o->ndim, shape));
}

static int m_flatten(lua_State *L) {
    ml_lua_check_nargs(L, 3, "flatten");
    ml_tensor *t = self_t(L, "flatten");
    int s = 0, e = -1;
    if (t->ndim > 0) {
        s = wrap_dim(L, ml_lua_opt_int(L, 2, 0, "flatten", "start_dim"), t->ndim, t, "flatten");
        e = wrap_dim(L, ml_lua_opt_int(L, 3, -1, "flatten", "end_dim"), t->ndim, t, "flatten");
        if (s > e) return luaL_error(L, "flatten: start_dim %d comes after end_dim %d (shape %s)", s, e, ml_shape_str(t->ndim, t->shape));
    }
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, "flatten", ml_flatten(slot, t, s, e));
}

static int m_narrow(lua_State *L) {
    const char *fname = "narrow";
    ml_lua_check_nargs(L, 4, fname);
    ml_tensor *t = self_t(L, fname);
    if (t->ndim == 0) return luaL_error(L, "%s: cannot narrow a 0-d tensor", fname);
    int d = check_dim(L, 2, t, fname);
    int64_t start0 = ml_lua_check_int(L, 3, fname, "start"), len = ml_lua_check_int(L, 4, fname, "length");
    int64_t size = t->shape[d], start = start0 < 0 ? start0 + size : start0;
    if (start < 0 || len < 0 || start > size || len > size - start)
        return luaL_error(L, "%s: start %I and length %I are out of range for dim %d of size %I (shape %s)", fname,
                          (lua_Integer)start0, (lua_Integer)len, d, (lua_Integer)size, ml_shape_str(t->ndim, t->shape));
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, fname, ml_narrow(slot, t, d, start, len));
}

static int m_slice(lua_State *L) {
    const char *fname = "slice";
    ml_lua_check_nargs(L, 5, fname);
    ml_tensor *t = self_t(L, fname);
    if (t->ndim == 0) return luaL_error(L, "%s: cannot slice a 0-d tensor", fname);
    int d = check_dim(L, 2, t, fname);
    int64_t start = ml_lua_opt_int(L, 3, 0, fname, "start");
    int64_t end = ml_lua_opt_int(L, 4, INT64_MAX, fname, "end");
    int64_t step = ml_lua_opt_int(L, 5, 1, fname, "step");
    if (step <= 0) return luaL_error(L, "%s: step must be positive, got %I", fname, (lua_Integer)step);
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, fname, ml_slice(slot, t, d, start, end, step));
}

static int m_select(lua_State *L) {
    const char *fname = "select";
    ml_lua_check_nargs(L, 3, fname);
    ml_tensor *t = self_t(L, fname);
    if (t->ndim == 0) return luaL_error(L, "%s: cannot select from a 0-d tensor", fname);
    int d = check_dim(L, 2, t, fname);
    int64_t i = ml_lua_check_int(L, 3, fname, "index");
    if (i < -t->shape[d] || i >= t->shape[d])
        return luaL_error(L, "%s: index %I out of range for dim %d of size %I (shape %s)", fname, (lua_Integer)i, d,
                          (lua_Integer)t->shape[d], ml_shape_str(t->ndim, t->shape));
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, fname, ml_select(slot, t, d, i));
}

static int m_permute(lua_State *L) {
    const char *fname = "permute";
    ml_tensor *t = self_t(L, fname);
    int perm[ML_MAX_DIMS], n = 0;
    bool seen[ML_MAX_DIMS] = {false};
    if (lua_istable(L, 2)) {
        ml_lua_check_nargs(L, 2, fname);
        lua_Unsigned len = lua_rawlen(L, 2);
        if ((int)len != t->ndim)
            return luaL_error(L, "%s: expected %d dims for a tensor of shape %s, got %d", fname, t->ndim,
                              ml_shape_str(t->ndim, t->shape), (int)len);
        for (int i = 0; i < (int)len; i++) {
            lua_rawgeti(L, 2, i + 1);
            perm[n++] = wrap_dim(L, ml_lua_check_int(L, -1, fname, "dim"), t->ndim, t, fname);
            lua_pop(L, 1);
        }
    } else {
        int top = lua_gettop(L);
        if (top - 1 != t->ndim)
            return luaL_error(L, "%s: expected %d dims for a tensor of shape %s, got %d", fname, t->ndim,
                              ml_shape_str(t->ndim, t->shape), top - 1);
        for (int i = 2; i <= top; i++) perm[n++] = check_dim(L, i, t, fname);
    }
    for (int i = 0; i < n; i++) {
        if (seen[perm[i]]) return luaL_error(L, "%s: dim %d appears more than once", fname, perm[i]);
        seen[perm[i]] = true;
    }
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, fname, ml_permute(slot, t, perm));
}

static int m_transpose(lua_State *L) {
    const char *fname = "transpose";
    ml_lua_check_nargs(L, 3, fname);
    ml_tensor *t = self_t(L, fname);
    int a = check_dim(L, 2, t, fname), b = check_dim(L, 3, t, fname);
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, fname, ml_transpose(slot, t, a, b));
}

static int m_t(lua_State *L) {
    ml_lua_check_nargs(L, 1, "t");
    ml_tensor *t = self_t(L, "t");
    if (t->ndim > 2) return luaL_error(L, "t: expected a tensor with <= 2 dims, got shape %s", ml_shape_str(t->ndim, t->shape));
    ml_tensor **slot = ml_lua_newbox(L);
    if (t->ndim < 2) {
        ml_tensor_retain(t);
        *slot = t;
        return 1;
    }
    return done(L, "t", ml_transpose(slot, t, 0, 1));
}

static int m_expand(lua_State *L) {
    const char *fname = "expand";
    ml_tensor *t = self_t(L, fname);
    int64_t shape[ML_MAX_DIMS];
    int next;
    int nd = ml_lua_parse_shape(L, 2, fname, shape, &next, true, false);
    ml_lua_check_nargs(L, next - 1, fname);
    for (int i = 0; i < nd; i++)
        if (shape[i] < -1) return luaL_error(L, "%s: invalid size %I", fname, (lua_Integer)shape[i]);
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, fname, ml_expand(slot, t, nd, shape));
}

static int m_expand_as(lua_State *L) {
    ml_lua_check_nargs(L, 2, "expand_as");
    ml_tensor *t = self_t(L, "expand_as");
    ml_tensor *o = ml_lua_check_tensor_fn(L, 2, "expand_as");
    int64_t shape[ML_MAX_DIMS];
    memcpy(shape, o->shape, sizeof shape);
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, "expand_as", ml_expand(slot, t, o->ndim, shape));
}

static int m_squeeze(lua_State *L) {
    ml_lua_check_nargs(L, 2, "squeeze");
    ml_tensor *t = self_t(L, "squeeze");
    int d = lua_isnoneornil(L, 2) ? ML_ALL_DIMS : check_dim(L, 2, t, "squeeze");
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, "squeeze", ml_squeeze(slot, t, d));
}

static int m_unsqueeze(lua_State *L) {
    ml_lua_check_nargs(L, 2, "unsqueeze");
    ml_tensor *t = self_t(L, "unsqueeze");
    if (t->ndim >= ML_MAX_DIMS)
        return luaL_error(L, "unsqueeze: tensor of shape %s already has %d dims", ml_shape_str(t->ndim, t->shape), ML_MAX_DIMS);
    int d = wrap_dim(L, ml_lua_check_int(L, 2, "unsqueeze", "dim"), t->ndim + 1, t, "unsqueeze");
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, "unsqueeze", ml_unsqueeze(slot, t, d));
}

static int m_contiguous(lua_State *L) {
    ml_lua_check_nargs(L, 1, "contiguous");
    ml_tensor *t = self_t(L, "contiguous");
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, "contiguous", ml_contiguous(slot, t));
}

static int m_clone(lua_State *L) {
    ml_lua_check_nargs(L, 1, "clone");
    ml_tensor *t = self_t(L, "clone");
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, "clone", ml_clone(slot, t));
}

/* -------------------------------------------------------------------- casts */
static int cast_to(lua_State *L, ml_tensor *t, ml_dtype dt, const char *fname) {
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, fname, ml_to_dtype(slot, t, dt));
}

/* t on device dev and dtype dt (each step recorded by autograd; t itself when nothing changes) */
static int to_device_dtype(lua_State *L, ml_tensor *t, ml_device dev, ml_dtype dt, const char *fname) {
    ml_tensor **slot = ml_lua_newbox(L);
    ml_tensor *d;
    ml_err e = ml_to_device(&d, t, dev);
    if (e) return ml_lua_error_fn(L, fname, e);
    e = ml_to_dtype(slot, d, dt);
    ml_tensor_release(d);
    return done(L, fname, e);
}

static int m_to(lua_State *L) {
    const char *fname = "to";
    ml_lua_check_nargs(L, 2, fname);
    ml_tensor *t = self_t(L, fname);
    ml_dtype dt = (ml_dtype)t->dtype;
    ml_device dev = ml_tensor_device(t);
    ml_tensor *o = ml_lua_totensor(L, 2);
    if (o) {
        dt = (ml_dtype)o->dtype;
        dev = ml_tensor_device(o);
    } else if (lua_type(L, 2) == LUA_TSTRING) {
        const char *s = lua_tostring(L, 2);
        if (strcmp(s, "cpu") == 0 || strncmp(s, "cuda", 4) == 0) dev = ml_lua_check_device(L, s, fname);
        else dt = ml_lua_check_dtype(L, 2, dt, fname);
    } else if (lua_istable(L, 2)) {
        static const char *const keys[] = {"dtype", "device", NULL};
        ml_lua_check_opts(L, 2, fname, keys);
        lua_getfield(L, 2, "dtype");
        dt = ml_lua_check_dtype(L, -1, dt, fname);
        lua_pop(L, 1);
        lua_getfield(L, 2, "device");
        if (!lua_isnil(L, -1)) dev = ml_lua_check_device(L, ml_lua_opt_str(L, 2, "device", "cpu", fname), fname);
        lua_pop(L, 1);
    } else if (ml_lua_tobox(L, 2)) {
        return luaL_error(L, "%s: argument #2: tensor is closed", fname);
    } else {
        return luaL_error(L, "%s: expected a dtype name, a device, a tensor or {dtype=, device=}, got %s", fname,
                          luaL_typename(L, 2));
    }
    return to_device_dtype(L, t, dev, dt, fname);
}

/* t:cuda() / t:cuda(n) / t:cuda("cuda:1"), t:cpu() */
static int m_cuda(lua_State *L) {
    const char *fname = "cuda";
    ml_lua_check_nargs(L, 2, fname);
    ml_tensor *t = self_t(L, fname);
    char name[32] = "cuda";
    if (lua_type(L, 2) == LUA_TNUMBER) snprintf(name, sizeof name, "cuda:%d", (int)lua_tointeger(L, 2));
    else if (lua_type(L, 2) == LUA_TSTRING) snprintf(name, sizeof name, "%s", lua_tostring(L, 2));
    else if (!lua_isnoneornil(L, 2))
        return luaL_error(L, "%s: expected a device index or name, got %s", fname, luaL_typename(L, 2));
    ml_device dev = ml_lua_check_device(L, name, fname);
    if (dev.type != ML_CUDA) return luaL_error(L, "%s: '%s' is not a CUDA device", fname, name);
    return to_device_dtype(L, t, dev, (ml_dtype)t->dtype, fname);
}

static int m_cpu(lua_State *L) {
    ml_lua_check_nargs(L, 1, "cpu");
    ml_tensor *t = self_t(L, "cpu");
    return to_device_dtype(L, t, ml_cpu(), (ml_dtype)t->dtype, "cpu");
}

static int m_cast(lua_State *L) {
    ml_dtype dt = (ml_dtype)lua_tointeger(L, lua_upvalueindex(1));
    const char *fname = lua_tostring(L, lua_upvalueindex(2));
    ml_lua_check_nargs(L, 1, fname);
    return cast_to(L, self_t(L, fname), dt, fname);
}

/* --------------------------------------------------------------------- data */
static int m_item(lua_State *L) {
    ml_lua_check_nargs(L, 1, "item");
    ml_tensor *t = self_t(L, "item");
    int64_t n = ml_tensor_numel(t);
    if (n != 1)
        return luaL_error(L, "item: a tensor with %I elements (shape %s) cannot be converted to a number", (lua_Integer)n,
                          ml_shape_str(t->ndim, t->shape));
    check_plain(L, t, "item");
    if (ml_tensor_is_cuda(t)) { /* the one element through a host copy */
        ml_tensor **h = ml_lua_newbox(L);
        bool prev = ml_set_grad_enabled(false);
        ml_err e = ml_to_device(h, t, ml_cpu());
        ml_set_grad_enabled(prev);
        if (e) return ml_lua_error_fn(L, "item", e);
        t = *h;
    }
    ml_lua_push_elem(L, t, t->offset);
    return 1;
}

static int m_tolist(lua_State *L) {
    ml_lua_check_nargs(L, 1, "tolist");
    ml_lua_push_list(L, self_t(L, "tolist"));
    return 1;
}

/* element offset from indices at [first, first + ndim) */
static int64_t index_offset(lua_State *L, ml_tensor *t, int first, const char *fname) {
    int given = lua_gettop(L) - first + 1;
    if (given < 0) given = 0;
    if (given != t->ndim)
        luaL_error(L, "%s: expected %d indices for a tensor of shape %s, got %d", fname, t->ndim,
                   ml_shape_str(t->ndim, t->shape), given);
    int64_t idx[ML_MAX_DIMS];
    for (int d = 0; d < t->ndim; d++) {
        int64_t i = ml_lua_check_int(L, first + d, fname, "index");
        if (i < -t->shape[d] || i >= t->shape[d])
            luaL_error(L, "%s: index %I out of range for dim %d of size %I (shape %s)", fname, (lua_Integer)i, d,
                       (lua_Integer)t->shape[d], ml_shape_str(t->ndim, t->shape));
        idx[d] = i < 0 ? i + t->shape[d] : i;
    }
    return ml_lua_elem_offset(t, idx);
}

static int m_get(lua_State *L) {
    ml_tensor *t = self_t(L, "get");
    check_plain(L, t, "get");
    int64_t off = index_offset(L, t, 2, "get");
    ml_lua_push_elem(L, t, off);
    return 1;
}

static int m_set(lua_State *L) {
    ml_tensor *t = self_t(L, "set");
    int tp = lua_type(L, 2);
    if (tp != LUA_TNUMBER && tp != LUA_TBOOLEAN)
        return luaL_error(L, "set: argument #2 (value) must be a number or a boolean, got %s", luaL_typename(L, 2));
    check_plain(L, t, "set");
    int64_t off = index_offset(L, t, 3, "set");
    check_inplace(L, t, "set");
    if (ml_inplace_tracked(t, NULL))
        return luaL_error(L, "set: the tensor (shape %s) is part of an autograd graph; writing one element is not "
                             "recorded: use masked_fill/where, or write under no_grad", ml_shape_str(t->ndim, t->shape));
    ml_lua_write_value(L, 2, t, off);
    ml_tensor_bump_version(t);
    lua_settop(L, 1);
    return 1;
}

static int m_fill_(lua_State *L) {
    ml_lua_check_nargs(L, 2, "fill_");
    ml_tensor *t = self_t(L, "fill_");
    double v = check_scalar(L, 2, "fill_", "fill value");
    check_inplace(L, t, "fill_");
    ml_err e = ml_fill_(t, v);
    if (e) return ml_lua_error_fn(L, "fill_", e);
    return return_self(L);
}

static int m_zero_(lua_State *L) {
    ml_lua_check_nargs(L, 1, "zero_");
    ml_tensor *t = self_t(L, "zero_");
    check_inplace(L, t, "zero_");
    ml_err e = ml_fill_(t, 0);
    if (e) return ml_lua_error_fn(L, "zero_", e);
    return return_self(L);
}

static int m_copy_(lua_State *L) {
    const char *fname = "copy_";
    ml_lua_check_nargs(L, 2, fname);
    ml_tensor *t = self_t(L, fname);
    ml_tensor *src = ml_lua_totensor(L, 2);
    ml_err e;
    if (src) {
        check_inplace(L, t, fname);
        e = ml_copy_recorded_(t, src);
    } else if (lua_istable(L, 2)) {
        lua_settop(L, 2);
        ml_tensor **tmp = ml_lua_newbox(L); /* holds the converted table until the end */
        *tmp = ml_lua_table_to_tensor(L, 2, t->dtype, fname);
        check_inplace(L, t, fname);
        e = ml_copy_recorded_(t, *tmp);
    } else if (lua_type(L, 2) == LUA_TNUMBER || lua_type(L, 2) == LUA_TBOOLEAN) {
        double v = check_scalar(L, 2, fname, "source");
        check_inplace(L, t, fname);
        e = ml_fill_(t, v);
    } else {
        if (ml_lua_tobox(L, 2)) return luaL_error(L, "%s: argument #2: tensor is closed", fname);
        return luaL_error(L, "%s: argument #2: expected a tensor, a (nested) table or a number, got %s", fname,
                          luaL_typename(L, 2));
    }
    if (e) return ml_lua_error_fn(L, fname, e);
    return return_self(L);
}

static int m_uniform_(lua_State *L) {
    ml_lua_check_nargs(L, 3, "uniform_");
    ml_tensor *t = self_t(L, "uniform_");
    double lo = lua_isnoneornil(L, 2) ? 0 : ml_lua_check_num(L, 2, "uniform_", "from");
    double hi = lua_isnoneornil(L, 3) ? 1 : ml_lua_check_num(L, 3, "uniform_", "to");
    if (!(lo <= hi)) return luaL_error(L, "uniform_: expects from <= to, got from=%f, to=%f", lo, hi);
    check_inplace(L, t, "uniform_");
    ml_err e = ml_uniform_(t, lo, hi);
    if (e) return ml_lua_error_fn(L, "uniform_", e);
    return return_self(L);
}

static int m_normal_(lua_State *L) {
    ml_lua_check_nargs(L, 3, "normal_");
    ml_tensor *t = self_t(L, "normal_");
    double mean = lua_isnoneornil(L, 2) ? 0 : ml_lua_check_num(L, 2, "normal_", "mean");
    double std = lua_isnoneornil(L, 3) ? 1 : ml_lua_check_num(L, 3, "normal_", "std");
    if (!(std >= 0)) return luaL_error(L, "normal_: std must be >= 0, got %f", std);
    check_inplace(L, t, "normal_");
    ml_err e = ml_normal_(t, mean, std);
    if (e) return ml_lua_error_fn(L, "normal_", e);
    return return_self(L);
}

/* Iterate two same-shaped tensors element by element. */
static bool same_shape(const ml_tensor *a, const ml_tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

static int compare_all(lua_State *L, bool close) {
    const char *fname = close ? "allclose" : "equal";
    ml_lua_check_nargs(L, close ? 4 : 2, fname);
    ml_tensor *a = self_t(L, fname);
    ml_tensor *b = ml_lua_check_tensor_fn(L, 2, fname);
    double rtol = close ? (lua_isnoneornil(L, 3) ? 1e-5 : ml_lua_check_num(L, 3, fname, "rtol")) : 0;
    double atol = close ? (lua_isnoneornil(L, 4) ? 1e-8 : ml_lua_check_num(L, 4, fname, "atol")) : 0;
    check_plain(L, a, fname);
    check_plain(L, b, fname);
    if (!same_shape(a, b)) {
        if (!close) { lua_pushboolean(L, 0); return 1; }
        return luaL_error(L, "%s: shapes %s and %s differ", fname, ml_shape_str(a->ndim, a->shape), ml_shape_str(b->ndim, b->shape));
    }
    int64_t n = ml_tensor_numel(a), idx[ML_MAX_DIMS] = {0};
    bool ok = true;
    bool ints = !ml_dtype_is_float((ml_dtype)a->dtype) && !ml_dtype_is_float((ml_dtype)b->dtype);
    for (int64_t k = 0; k < n && ok; k++) {
        int64_t oa = ml_lua_elem_offset(a, idx), ob = ml_lua_elem_offset(b, idx);
        if (ints) ok = ml_lua_read_i(a, oa) == ml_lua_read_i(b, ob);
        else {
            double x = ml_lua_read_d(a, oa), y = ml_lua_read_d(b, ob);
            if (close) ok = (x == y) || fabs(x - y) <= atol + rtol * fabs(y);
            else ok = x == y;
        }
        for (int d = a->ndim - 1; d >= 0; d--) {
            if (++idx[d] < a->shape[d]) break;
            idx[d] = 0;
        }
    }
    lua_pushboolean(L, ok);
    return 1;
}
static int m_equal(lua_State *L) { return compare_all(L, false); }
static int m_allclose(lua_State *L) { return compare_all(L, true); }

/* ----------------------------------------------------------------- indexing */
/* index argument: a tensor, or a Lua list of integers (converted to int64; *tmp holds it) */
static ml_tensor *index_arg(lua_State *L, int idx, const char *fname, ml_tensor ***tmpbox) {
    ml_tensor *t = ml_lua_totensor(L, idx);
    if (t) return t;
    if (lua_istable(L, idx)) {
        *tmpbox = ml_lua_newbox(L);
        **tmpbox = ml_lua_table_to_tensor(L, idx, ML_I64, fname);
        return **tmpbox;
    }
    if (ml_lua_tobox(L, idx)) luaL_error(L, "%s: argument #%d: tensor is closed", fname, idx);
    luaL_error(L, "%s: argument #%d: expected an index tensor or a table of integers, got %s", fname, idx,
               luaL_typename(L, idx));
    return NULL;
}

static int m_index_select(lua_State *L) {
    const char *fname = "index_select";
    ml_lua_check_nargs(L, 3, fname);
    ml_tensor *t = self_t(L, fname);
    int d = check_dim(L, 2, t, fname);
    lua_settop(L, 3);
    ml_tensor **tmp = NULL;
    ml_tensor *index = index_arg(L, 3, fname, &tmp);
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, fname, ml_index_select(slot, t, d, index));
}

static int m_masked_select(lua_State *L) {
    ml_lua_check_nargs(L, 2, "masked_select");
    ml_tensor *t = self_t(L, "masked_select");
    ml_tensor *m = ml_lua_check_tensor_fn(L, 2, "masked_select");
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, "masked_select", ml_masked_select(slot, t, m));
}

static int m_masked_fill(lua_State *L) {
    ml_lua_check_nargs(L, 3, "masked_fill");
    ml_tensor *t = self_t(L, "masked_fill");
    ml_tensor *m = ml_lua_check_tensor_fn(L, 2, "masked_fill");
    double v = check_scalar(L, 3, "masked_fill", "value");
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, "masked_fill", ml_masked_fill(slot, t, m, v));
}

typedef struct { ml_tensor *mask; double value; } masked_fill_ctx;
static ml_err masked_fill_recorded(ml_tensor **out, ml_tensor *old, const void *ctx) {
    const masked_fill_ctx *c = ctx;
    return ml_masked_fill(out, old, c->mask, c->value);
}

static int m_masked_fill_(lua_State *L) {
    const char *fname = "masked_fill_";
    ml_lua_check_nargs(L, 3, fname);
    ml_tensor *t = self_t(L, fname);
    ml_tensor *m = ml_lua_check_tensor_fn(L, 2, fname);
    double v = check_scalar(L, 3, fname, "value");
    check_inplace(L, t, fname);
    ml_err e;
    if (ml_inplace_tracked(t, NULL)) {
        masked_fill_ctx c = {m, v};
        e = ml_inplace_apply(fname, t, masked_fill_recorded, &c);
    } else {
        ml_tensor **tmp = ml_lua_newbox(L);
        bool prev = ml_set_grad_enabled(false);
        e = ml_masked_fill(tmp, t, m, v);
        if (!e) e = ml_copy_(t, *tmp);
        ml_set_grad_enabled(prev);
    }
    if (e) return ml_lua_error_fn(L, fname, e);
    return return_self(L);
}

static int m_gather(lua_State *L) {
    const char *fname = "gather";
    ml_lua_check_nargs(L, 3, fname);
    ml_tensor *t = self_t(L, fname);
    int d = check_dim(L, 2, t, fname);
    ml_tensor *index = ml_lua_check_tensor_fn(L, 3, fname);
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, fname, ml_gather(slot, t, d, index));
}

static int m_scatter_add_(lua_State *L) {
    const char *fname = "scatter_add_";
    ml_lua_check_nargs(L, 4, fname);
    ml_tensor *t = self_t(L, fname);
    int d = check_dim(L, 2, t, fname);
    ml_tensor *index = ml_lua_check_tensor_fn(L, 3, fname);
    ml_tensor *src = ml_lua_check_tensor_fn(L, 4, fname);
    check_inplace(L, t, fname);
    ml_err e = ml_scatter_add_(t, d, index, src);
    if (e) return ml_lua_error_fn(L, fname, e);
    return return_self(L);
}

static int m_one_hot(lua_State *L) {
    const char *fname = "one_hot";
    ml_lua_check_nargs(L, 2, fname);
    ml_tensor *t = self_t(L, fname);
    ml_dtype dt = (ml_dtype)t->dtype;
    if (ml_dtype_is_float(dt) || dt == ML_BOOL)
        return luaL_error(L, "%s: labels must be an integer tensor, got %s (shape %s)", fname, ml_dtype_name(dt),
                          ml_shape_str(t->ndim, t->shape));
    if (t->ndim >= ML_MAX_DIMS)
        return luaL_error(L, "%s: labels of shape %s already have %d dims", fname, ml_shape_str(t->ndim, t->shape), ML_MAX_DIMS);
    int64_t n = ml_lua_opt_int(L, 2, -1, fname, "num_classes");
    if (n < -1) return luaL_error(L, "%s: num_classes must be -1 (infer) or positive, got %I", fname, (lua_Integer)n);
    check_plain(L, t, fname);
    /* the class values are checked (and the count inferred) once, by ml_one_hot, on any device */
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, fname, ml_one_hot(slot, t, n, t->ndim));
}

/* ------------------------------------------------------------------ nn-ish */
static int m_matmul(lua_State *L) {
    ml_lua_check_nargs(L, 2, "matmul");
    ml_tensor *a = self_t(L, "matmul"), *b = ml_lua_check_tensor_fn(L, 2, "matmul");
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, "matmul", ml_matmul(slot, a, b));
}

static int m_mm(lua_State *L) {
    ml_lua_check_nargs(L, 2, "mm");
    ml_tensor *a = self_t(L, "mm"), *b = ml_lua_check_tensor_fn(L, 2, "mm");
    if (a->ndim != 2 || b->ndim != 2)
        return luaL_error(L, "mm: expected 2-D tensors, got %s and %s", ml_shape_str(a->ndim, a->shape),
                          ml_shape_str(b->ndim, b->shape));
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, "mm", ml_matmul(slot, a, b));
}

static int m_bmm(lua_State *L) {
    ml_lua_check_nargs(L, 2, "bmm");
    ml_tensor *a = self_t(L, "bmm"), *b = ml_lua_check_tensor_fn(L, 2, "bmm");
    if (a->ndim != 3 || b->ndim != 3)
        return luaL_error(L, "bmm: expected 3-D tensors, got %s and %s", ml_shape_str(a->ndim, a->shape),
                          ml_shape_str(b->ndim, b->shape));
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, "bmm", ml_bmm(slot, a, b));
}

static int softmax_impl(lua_State *L, bool log) {
    const char *fname = log ? "log_softmax" : "softmax";
    ml_lua_check_nargs(L, 2, fname);
    ml_tensor *a = self_t(L, fname);
    if (lua_isnoneornil(L, 2)) return luaL_error(L, "%s: dim is required", fname);
    int d = check_dim(L, 2, a, fname);
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, fname, log ? ml_log_softmax(slot, a, d) : ml_softmax(slot, a, d));
}
static int m_softmax(lua_State *L) { return softmax_impl(L, false); }
static int m_log_softmax(lua_State *L) { return softmax_impl(L, true); }

/* ----------------------------------------------------------------- autograd */
static int m_requires_grad_(lua_State *L) {
    ml_lua_check_nargs(L, 2, "requires_grad_");
    ml_tensor *t = self_t(L, "requires_grad_");
    bool on = opt_boolarg(L, 2, true, "requires_grad_", "requires_grad");
    ml_err e = ml_set_requires_grad(t, on);
    if (e) return ml_lua_error_fn(L, "requires_grad_", e);
    lua_settop(L, 1);
    return 1;
}

static int m_detach(lua_State *L) {
    ml_lua_check_nargs(L, 1, "detach");
    ml_tensor *t = self_t(L, "detach");
    ml_tensor **slot = ml_lua_newbox(L);
    return done(L, "detach", ml_detach(slot, t));
}

static int m_retain_grad(lua_State *L) {
    ml_lua_check_nargs(L, 1, "retain_grad");
    ml_tensor *t = self_t(L, "retain_grad");
    if (!t->requires_grad)
        return luaL_error(L, "retain_grad: tensor of shape %s does not require grad", ml_shape_str(t->ndim, t->shape));
    if (t->grad_fn) t->retain_grad = true;
    lua_settop(L, 1);
    return 1;
}

static int m_backward(lua_State *L) {
    const char *fname = "backward";
    static const char *const keys[] = {"retain_graph", NULL};
    ml_tensor *t = self_t(L, fname);
    ml_tensor *g = NULL;
    int oi = 3;
    if (ml_lua_tobox(L, 2)) g = ml_lua_check_tensor_fn(L, 2, fname);
    else if (lua_istable(L, 2)) oi = 2;
    else if (!lua_isnoneornil(L, 2))
        return luaL_error(L, "%s: argument #2: expected a gradient tensor or an options table, got %s", fname,
                          luaL_typename(L, 2));
    ml_lua_check_opts(L, oi, fname, keys);
    bool retain = ml_lua_opt_bool(L, oi, "retain_graph", false, fname);
    ml_lua_check_nargs(L, oi, fname);
    if (g && !same_shape(g, t))
        return luaL_error(L, "%s: gradient has shape %s but the tensor has shape %s", fname, ml_shape_str(g->ndim, g->shape),
                          ml_shape_str(t->ndim, t->shape));
    ml_err e = ml_backward(t, g, retain);
    if (e) return ml_lua_error_fn(L, fname, e);
    ml_lua_account(L);
    return 0;
}

/* ------------------------------------------------------- properties, __index */
enum { P_SHAPE, P_NDIM, P_DTYPE, P_DEVICE, P_GRAD, P_REQUIRES_GRAD, P_IS_LEAF, P_GRAD_FN, P_T, P_DATA, P_NPROPS };
static const char *const prop_names[P_NPROPS] = {"shape",   "ndim",    "dtype", "device", "grad",
                                                 "requires_grad", "is_leaf", "grad_fn", "T", "data"};

static int t_index(lua_State *L) {
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1; /* a method */
    lua_pop(L, 1);
    if (lua_type(L, 2) != LUA_TSTRING) {
        if (lua_type(L, 2) == LUA_TNUMBER)
            return luaL_error(L, "tensor indexing with [] is not supported; use t:select(dim, i), t:get(i, ...), "
                                 "t:narrow(dim, start, len) or t:slice(dim, start, end)");
        return 0;
    }
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(2)) == LUA_TNIL) return 1; /* unknown key: nil */
    int p = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    ml_lua_box *b = ml_lua_tobox(L, 1);
    if (!b) return luaL_typeerror(L, 1, ML_LUA_TENSOR_MT);
    if (!b->t) return luaL_error(L, "%s: tensor is closed", prop_names[p]);
    ml_tensor *t = b->t;
    switch (p) {
    case P_SHAPE: push_int_list(L, t->ndim, t->shape); return 1;
    case P_NDIM: lua_pushinteger(L, t->ndim); return 1;
    case P_DTYPE: lua_pushstring(L, ml_dtype_name((ml_dtype)t->dtype)); return 1;
    case P_DEVICE: lua_pushstring(L, t->storage ? ml_device_str(t->storage->device) : "cpu"); return 1;
    case P_GRAD: ml_lua_push_tensor_retain(L, t->grad); return 1;
    case P_REQUIRES_GRAD: lua_pushboolean(L, t->requires_grad); return 1;
    case P_IS_LEAF: lua_pushboolean(L, t->grad_fn == NULL); return 1;
    case P_GRAD_FN:
        if (t->grad_fn) lua_pushstring(L, t->grad_fn->name ? t->grad_fn->name : "?");
        else lua_pushnil(L);
        return 1;
    case P_T: {
        ml_tensor **slot = ml_lua_newbox(L);
        if (t->ndim < 2) {
            ml_tensor_retain(t);
            *slot = t;
            return 1;
        }
        int perm[ML_MAX_DIMS];
        for (int i = 0; i < t->ndim; i++) perm[i] = t->ndim - 1 - i;
        return done(L, "T", ml_permute(slot, t, perm));
    }
    case P_DATA: {
        ml_tensor **slot = ml_lua_newbox(L);
        return done(L, "data", ml_detach(slot, t));
    }
    default: return 0;
    }
}

static int t_newindex(lua_State *L) {
    ml_lua_box *b = ml_lua_tobox(L, 1);
    if (!b) return luaL_typeerror(L, 1, ML_LUA_TENSOR_MT);
    const char *k = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : NULL;
    if (k && strcmp(k, "requires_grad") == 0) {
        if (!b->t) return luaL_error(L, "requires_grad: tensor is closed");
        if (lua_type(L, 3) != LUA_TBOOLEAN)
            return luaL_error(L, "requires_grad: expected a boolean, got %s", luaL_typename(L, 3));
        ml_err e = ml_set_requires_grad(b->t, lua_toboolean(L, 3));
        if (e) return ml_lua_error_fn(L, "requires_grad", e);
        return 0;
    }
    if (k && strcmp(k, "grad") == 0) {
        if (!b->t) return luaL_error(L, "grad: tensor is closed");
        ml_tensor *t = b->t, *g = NULL;
        if (!lua_isnil(L, 3)) {
            g = ml_lua_totensor(L, 3);
            if (!g) {
                if (ml_lua_tobox(L, 3)) return luaL_error(L, "grad: the assigned tensor is closed");
                return luaL_error(L, "grad: expected a tensor or nil, got %s", luaL_typename(L, 3));
            }
            if (!same_shape(g, t))
                return luaL_error(L, "grad: assigned gradient has shape %s but the tensor has shape %s",
                                  ml_shape_str(g->ndim, g->shape), ml_shape_str(t->ndim, t->shape));
            if (g->dtype != t->dtype)
                return luaL_error(L, "grad: assigned gradient has dtype %s but the tensor has dtype %s",
                                  ml_dtype_name((ml_dtype)g->dtype), ml_dtype_name((ml_dtype)t->dtype));
            if (g == t) return luaL_error(L, "grad: a tensor cannot be its own gradient");
            ml_tensor_retain(g);
        }
        ml_tensor *old = t->grad;
        t->grad = g;
        ml_tensor_release(old);
        return 0;
    }
    if (k) return luaL_error(L, "cannot set field '%s' of a tensor (settable: requires_grad, grad)", k);
    return luaL_error(L, "cannot assign to a tensor with a %s key; use t:set(value, i, ...) or t:copy_(src)",
                      luaL_typename(L, 2));
}

static int t_len(lua_State *L) {
    ml_tensor *t = self_t(L, "len");
    if (t->ndim == 0) return luaL_error(L, "len: a 0-d tensor has no length");
    lua_pushinteger(L, (lua_Integer)t->shape[0]);
    return 1;
}

/* ---------------------------------------------------------------- registry */
static const luaL_Reg methods[] = {
    {"size", m_size},
    {"stride", m_stride},
    {"dim", m_dim},
    {"numel", m_numel},
    {"nelement", m_numel},
    {"element_size", m_element_size},
    {"storage_offset", m_storage_offset},
    {"is_contiguous", m_is_contiguous},
    {"is_floating_point", m_is_floating_point},
    {"view", m_view},
    {"view_as", m_view_as},
    {"reshape", m_reshape},
    {"flatten", m_flatten},
    {"narrow", m_narrow},
    {"slice", m_slice},
    {"select", m_select},
    {"permute", m_permute},
    {"transpose", m_transpose},
    {"t", m_t},
    {"expand", m_expand},
    {"expand_as", m_expand_as},
    {"squeeze", m_squeeze},
    {"unsqueeze", m_unsqueeze},
    {"contiguous", m_contiguous},
    {"clone", m_clone},
    {"to", m_to},
    {"cuda", m_cuda},
    {"cpu", m_cpu},
    {"item", m_item},
    {"tolist", m_tolist},
    {"get", m_get},
    {"set", m_set},
    {"fill_", m_fill_},
    {"zero_", m_zero_},
    {"copy_", m_copy_},
    {"uniform_", m_uniform_},
    {"normal_", m_normal_},
    {"equal", m_equal},
    {"allclose", m_allclose},
    {"index_select", m_index_select},
    {"masked_select", m_masked_select},
    {"masked_fill", m_masked_fill},
    {"masked_fill_", m_masked_fill_},
    {"gather", m_gather},
    {"scatter_add_", m_scatter_add_},
    {"one_hot", m_one_hot},
    {"gelu", m_gelu},
    {"gelu_", m_gelu_},
    {"clamp", m_clamp},
    {"clip", m_clamp},
    {"clamp_", m_clamp_},
    {"leaky_relu", m_leaky_relu},
    {"elu", m_elu},
    {"var", m_var},
    {"std", m_std},
    {"norm", m_norm},
    {"max", m_max},
    {"min", m_min},
    {"argmax", m_argmax},
    {"argmin", m_argmin},
    {"cumsum", m_cumsum},
    {"quantile", m_quantile},
    {"matmul", m_matmul},
    {"mm", m_mm},
    {"bmm", m_bmm},
    {"softmax", m_softmax},
    {"log_softmax", m_log_softmax},
    {"requires_grad_", m_requires_grad_},
    {"detach", m_detach},
    {"retain_grad", m_retain_grad},
    {"backward", m_backward},
    {NULL, NULL}};

static void set_closure(lua_State *L, int tbl, const char *name, lua_CFunction f, lua_Integer up) {
    lua_pushinteger(L, up);
    lua_pushcclosure(L, f, 1);
    lua_setfield(L, tbl, name);
}

void ml_lua_tensor_setup(lua_State *L, int mt) {
    mt = lua_absindex(L, mt);
    lua_newtable(L);
    int m = lua_gettop(L);
    luaL_setfuncs(L, methods, 0);
    for (int op = 0; op < ML_NBINOPS; op++) {
        set_closure(L, m, bin_names[op], m_binop, op);
        if (op <= ML_ATAN2) set_closure(L, m, bin_inplace_names[op], m_binop_, op);
    }
    for (int op = 0; op < ML_NUNOPS; op++) {
        if (op == ML_GELU || op == ML_GELU_TANH) continue;
        set_closure(L, m, un_names[op], m_unop, op);
        if (un_inplace_names[op]) set_closure(L, m, un_inplace_names[op], m_unop_, op);
    }
    for (int op = 0; op < ML_NREDOPS; op++) set_closure(L, m, red_names[op], m_reduce, op);
    static const struct { const char *name; ml_dtype dt; } casts[] = {
        {"float", ML_F32}, {"double", ML_F64}, {"long", ML_I64}, {"int", ML_I32},
        {"bool", ML_BOOL}, {"byte", ML_U8},    {"half", ML_F16}, {"bfloat16", ML_BF16}};
    for (size_t i = 0; i < sizeof casts / sizeof casts[0]; i++) {
        lua_pushinteger(L, casts[i].dt);
        lua_pushstring(L, casts[i].name);
        lua_pushcclosure(L, m_cast, 2);
        lua_setfield(L, m, casts[i].name);
    }
    /* property name -> id */
    lua_createtable(L, 0, P_NPROPS);
    int props = lua_gettop(L);
    for (int i = 0; i < P_NPROPS; i++) {
        lua_pushinteger(L, i);
        lua_setfield(L, props, prop_names[i]);
    }
    lua_pushvalue(L, m);
    lua_pushvalue(L, props);
    lua_pushcclosure(L, t_index, 2);
    lua_setfield(L, mt, "__index");
    /* for tab completion and introspection */
    lua_pushvalue(L, m);
    lua_setfield(L, mt, "__methods");
    lua_pushvalue(L, props);
    lua_setfield(L, mt, "__properties");
    lua_pop(L, 1); /* props */
    lua_pushcfunction(L, t_newindex);
    lua_setfield(L, mt, "__newindex");
    lua_pushcfunction(L, t_len);
    lua_setfield(L, mt, "__len");
    lua_pushcfunction(L, mm_unm);
    lua_setfield(L, mt, "__unm");
    static const struct { const char *mm; ml_binop op; } arith[] = {
        {"__add", ML_ADD}, {"__sub", ML_SUB}, {"__mul", ML_MUL}, {"__div", ML_DIV}, {"__pow", ML_POW}};
    for (size_t i = 0; i < sizeof arith / sizeof arith[0]; i++) set_closure(L, mt, arith[i].mm, l_binop, arith[i].op);
    /* method table stays on the stack */
}
