/* medlua.F (also require "medlua.nn.functional"): Lua binding of the functional nn ops in ml_nn.h.
 * Options are tables with PyTorch's names and defaults; array parameters (stride, padding, ...)
 * are a number or a table with one entry per spatial dim. The 1d/2d/3d variants check the input
 * rank before calling the kernel. */
#include "nn/ml_nn.h"
#include "tensor/tensor_lua.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------------ helpers */
static int finish(lua_State *L, const char *fname, ml_err e) {
    if (e) return ml_lua_error_fn(L, fname, e);
    ml_lua_account(L);
    return 1;
}

static const char *layout_str(int k) {
    static const char *const s[] = {"[N, C, L]", "[N, C, H, W]", "[N, C, D, H, W]"};
    return s[k - 1];
}

static void check_rank(lua_State *L, const ml_tensor *x, int k, const char *fname) {
    if (x->ndim != k + 2)
        luaL_error(L, "%s: expected a %d-D input %s, got %s", fname, k + 2, layout_str(k), ml_shape_str(x->ndim, x->shape));
}

/* Spatial rank of a [N, C, ...] input with 1..3 spatial dims. */
static int spatial_rank(lua_State *L, const ml_tensor *x, const char *fname) {
    if (x->ndim < 3 || x->ndim > 5)
        luaL_error(L, "%s: expected a 3-D, 4-D or 5-D input [N, C, spatial...], got %s", fname,
                   ml_shape_str(x->ndim, x->shape));
    return x->ndim - 2;
}

/* A number or a table of k integers at stack index idx (absolute). */
static void int_tuple_at(lua_State *L, int idx, int k, const char *fname, const char *what, int64_t *out) {
    if (lua_type(L, idx) == LUA_TNUMBER) {
        int64_t v = ml_lua_check_int(L, idx, fname, what);
        for (int i = 0; i < k; i++) out[i] = v;
        return;
    }
    if (lua_istable(L, idx)) {
        lua_Unsigned n = lua_rawlen(L, idx);
        if ((int)n == k) {
            for (int i = 0; i < k; i++) {
                lua_rawgeti(L, idx, i + 1);
                out[i] = ml_lua_check_int(L, -1, fname, what);
                lua_pop(L, 1);
            }
            return;
        }
        luaL_error(L, "%s: %s must be a number or a table of %d numbers, got a table of %d", fname, what, k, (int)n);
    }
    luaL_error(L, "%s: %s must be a number or a table of %d numbers, got %s", fname, what, k, luaL_typename(L, idx));
}

/* opts[key] as a k-tuple, def when absent. */
static bool opt_tuple(lua_State *L, int opts, const char *key, int k, int64_t def, const char *fname, int64_t *out) {
    for (int i = 0; i < k; i++) out[i] = def;
    if (!lua_istable(L, opts)) return false;
    if (lua_getfield(L, opts, key) == LUA_TNIL) {
        lua_pop(L, 1);
        return false;
    }
    char what[64];
    snprintf(what, sizeof what, "option '%s'", key);
    int_tuple_at(L, lua_gettop(L), k, fname, what, out);
    lua_pop(L, 1);
    return true;
}

static const char *tuple_str(int k, const int64_t *v) { return ml_shape_str(k, v); }

static void check_min(lua_State *L, int k, const int64_t *v, int64_t min, const char *fname, const char *what) {
    for (int i = 0; i < k; i++)
        if (v[i] < min)
            luaL_error(L, "%s: %s must be %s, got %s", fname, what, min > 0 ? "positive" : "non-negative", tuple_str(k, v));
}

static ml_reduction opt_reduction(lua_State *L, int opts, const char *fname) {
    const char *r = ml_lua_opt_str(L, opts, "reduction", "mean", fname);
    if (strcmp(r, "mean") == 0) return ML_REDUCE_MEAN;
    if (strcmp(r, "sum") == 0) return ML_REDUCE_SUM;
    if (strcmp(r, "none") == 0) return ML_REDUCE_NONE;
    luaL_error(L, "%s: reduction must be \"mean\", \"sum\" or \"none\", got \"%s\"", fname, r);
    return ML_REDUCE_MEAN;
}

/* ------------------------------------------------------------ linear algebra */
static int f_linear(lua_State *L) {
    ml_lua_check_nargs(L, 3, "linear");
    ml_tensor *x = ml_lua_check_tensor_fn(L, 1, "linear"), *w = ml_lua_check_tensor_fn(L, 2, "linear");
    ml_tensor *b = ml_lua_opt_tensor_fn(L, 3, "linear");
    ml_tensor **slot = ml_lua_newbox(L);
    return finish(L, "linear", ml_linear(slot, x, w, b));
}

static int f_matmul(lua_State *L) {
    ml_lua_check_nargs(L, 2, "matmul");
    ml_tensor *a = ml_lua_check_tensor_fn(L, 1, "matmul"), *b = ml_lua_check_tensor_fn(L, 2, "matmul");
    ml_tensor **slot = ml_lua_newbox(L);
    return finish(L, "matmul", ml_matmul(slot, a, b));
}

static int f_bmm(lua_State *L) {
    ml_lua_check_nargs(L, 2, "bmm");
    ml_tensor *a = ml_lua_check_tensor_fn(L, 1, "bmm"), *b = ml_lua_check_tensor_fn(L, 2, "bmm");
    if (a->ndim != 3 || b->ndim != 3)
        return luaL_error(L, "bmm: expected 3-D tensors [B, n, k] and [B, k, m], got %s and %s",
                          ml_shape_str(a->ndim, a->shape), ml_shape_str(b->ndim, b->shape));
    ml_tensor **slot = ml_lua_newbox(L);
    return finish(L, "bmm", ml_bmm(slot, a, b));
}

/* --------------------------------------------------------------- convolution */
static const char *const conv_keys[] = {"stride", "padding", "dilation", "groups", NULL};
static const char *const convt_keys[] = {"stride", "padding", "output_padding", "dilation", "groups", NULL};

static int conv_impl(lua_State *L, int k, bool transposed) {
    char fname[32];
    snprintf(fname, sizeof fname, "%s%dd", transposed ? "conv_transpose" : "conv", k);
    ml_lua_check_nargs(L, 4, fname);
    ml_tensor *w = ml_lua_check_tensor_fn(L, 2, fname), *b = ml_lua_opt_tensor_fn(L, 3, fname);
    ml_tensor *x = ml_lua_check_tensor_any_fn(L, 1, fname); /* may stay in oneDNN's blocked layout */
    ml_lua_check_opts(L, 4, fname, transposed ? convt_keys : conv_keys);
    check_rank(L, x, k, fname);
    if (w->ndim != k + 2)
        return luaL_error(L, "%s: expected a %d-D weight [%s, k...], got %s", fname, k + 2,
                          transposed ? "C_in, C_out/groups" : "C_out, C_in/groups", ml_shape_str(w->ndim, w->shape));
    ml_conv_params p;
    memset(&p, 0, sizeof p);
    p.k = k;
    opt_tuple(L, 4, "stride", k, 1, fname, p.stride);
    opt_tuple(L, 4, "dilation", k, 1, fname, p.dilation);
    opt_tuple(L, 4, "output_padding", k, 0, fname, p.output_padding);
    p.groups = ml_lua_opt_intfield(L, 4, "groups", 1, fname);
    check_min(L, k, p.stride, 1, fname, "stride");
    check_min(L, k, p.dilation, 1, fname, "dilation");
    check_min(L, k, p.output_padding, 0, fname, "output_padding");
    if (p.groups < 1) return luaL_error(L, "%s: groups must be positive, got %I", fname, (lua_Integer)p.groups);
    /* padding: number, table, or "valid"/"same" (non-transposed) */
    int64_t extra[3] = {0, 0, 0}; /* "same" with an odd total: one more on the high side */
    bool same_extra = false;
    int ptype = LUA_TNIL;
    if (lua_istable(L, 4)) {
        ptype = lua_getfield(L, 4, "padding");
        if (ptype != LUA_TSTRING) lua_pop(L, 1);
    }
    if (ptype == LUA_TSTRING) {
        const char *s = lua_tostring(L, -1);
        if (transposed) return luaL_error(L, "%s: padding must be a number or a table, got \"%s\"", fname, s);
        if (strcmp(s, "valid") == 0) {
            for (int i = 0; i < k; i++) p.padding[i] = 0;
        } else if (strcmp(s, "same") == 0) {
            for (int i = 0; i < k; i++) {
                if (p.stride[i] != 1)
                    return luaL_error(L, "%s: padding=\"same\" is not supported for strided convolutions (stride %s)",
                                      fname, tuple_str(k, p.stride));
                int64_t total = p.dilation[i] * (w->shape[2 + i] - 1);
                p.padding[i] = total / 2;
                extra[i] = total - 2 * (total / 2);
                if (extra[i]) same_extra = true;
            }
        } else {
            return luaL_error(L, "%s: padding must be a number, a table, \"valid\" or \"same\", got \"%s\"", fname, s);
        }
        lua_pop(L, 1);
    } else {
        opt_tuple(L, 4, "padding", k, 0, fname, p.padding);
        check_min(L, k, p.padding, 0, fname, "padding");
    }
    if (same_extra) {
        int64_t pads[6];
        for (int i = 0; i < k; i++) { /* PyTorch order: last dim first */
            pads[2 * i] = 0;
            pads[2 * i + 1] = extra[k - 1 - i];
        }
        ml_tensor **xp = ml_lua_newbox(L);
        ml_err e = ml_pad(xp, x, 2 * k, pads, ML_PAD_CONSTANT, 0.0);
        if (e) return ml_lua_error_fn(L, fname, e);
        x = *xp;
    }
    ml_tensor **slot = ml_lua_newbox(L);
    return finish(L, fname, transposed ? ml_conv_transpose(slot, x, w, b, &p) : ml_conv(slot, x, w, b, &p));
}

static int f_conv1d(lua_State *L) { return conv_impl(L, 1, false); }
static int f_conv2d(lua_State *L) { return conv_impl(L, 2, false); }
static int f_conv3d(lua_State *L) { return conv_impl(L, 3, false); }
static int f_conv_transpose1d(lua_State *L) { return conv_impl(L, 1, true); }
static int f_conv_transpose2d(lua_State *L) { return conv_impl(L, 2, true); }
static int f_conv_transpose3d(lua_State *L) { return conv_impl(L, 3, true); }

/* ------------------------------------------------------------------- pooling */
static const char *const maxpool_keys[] = {"kernel_size", "stride", "padding", "dilation", "ceil_mode", NULL};
static const char *const avgpool_keys[] = {"kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", NULL};

static int pool_impl(lua_State *L, int k, bool is_max) {
    char fname[32];
    snprintf(fname, sizeof fname, "%s_pool%dd", is_max ? "max" : "avg", k);
    ml_lua_check_nargs(L, 3, fname);
    ml_tensor *x = ml_lua_check_tensor_fn(L, 1, fname);
    ml_pool_params p;
    memset(&p, 0, sizeof p);
    p.k = k;
    /* forms: (x, kernel_size[, opts]) or (x, {kernel_size=, ...}) */
    int opts;
    bool have_kernel = false;
    if (lua_type(L, 2) == LUA_TNUMBER || (lua_istable(L, 2) && lua_rawlen(L, 2) > 0)) {
        int_tuple_at(L, 2, k, fname, "kernel_size", p.kernel);
        have_kernel = true;
        opts = 3;
    } else {
        opts = 2;
        ml_lua_check_nargs(L, 2, fname);
    }
    ml_lua_check_opts(L, opts, fname, is_max ? maxpool_keys : avgpool_keys);
    if (!have_kernel) {
        if (lua_isnoneornil(L, opts)) return luaL_error(L, "%s: kernel_size is required", fname);
        if (!opt_tuple(L, opts, "kernel_size", k, 0, fname, p.kernel))
            return luaL_error(L, "%s: kernel_size is required", fname);
    } else if (lua_istable(L, opts)) {
        lua_getfield(L, opts, "kernel_size");
        bool dup = !lua_isnil(L, -1);
        lua_pop(L, 1);
        if (dup) return luaL_error(L, "%s: kernel_size given twice (argument and option)", fname);
    }
    check_rank(L, x, k, fname);
    check_min(L, k, p.kernel, 1, fname, "kernel_size");
    if (!opt_tuple(L, opts, "stride", k, 1, fname, p.stride)) memcpy(p.stride, p.kernel, sizeof p.stride);
    opt_tuple(L, opts, "padding", k, 0, fname, p.padding);
    opt_tuple(L, opts, "dilation", k, 1, fname, p.dilation);
    check_min(L, k, p.stride, 1, fname, "stride");
    check_min(L, k, p.padding, 0, fname, "padding");
    check_min(L, k, p.dilation, 1, fname, "dilation");
    for (int i = 0; i < k; i++)
        if (2 * p.padding[i] > p.dilation[i] * (p.kernel[i] - 1) + 1)
            return luaL_error(L, "%s: padding %s should be at most half of the effective kernel size %s", fname,
                              tuple_str(k, p.padding), tuple_str(k, p.kernel));
    p.ceil_mode = ml_lua_opt_bool(L, opts, "ceil_mode", false, fname);
    p.count_include_pad = ml_lua_opt_bool(L, opts, "count_include_pad", true, fname);
    ml_tensor **slot = ml_lua_newbox(L);
    return finish(L, fname, is_max ? ml_max_pool(slot, x, &p) : ml_avg_pool(slot, x, &p));
}

static int f_max_pool1d(lua_State *L) { return pool_impl(L, 1, true); }
static int f_max_pool2d(lua_State *L) { return pool_impl(L, 2, true); }
static int f_max_pool3d(lua_State *L) { return pool_impl(L, 3, true); }
static int f_avg_pool1d(lua_State *L) { return pool_impl(L, 1, false); }
static int f_avg_pool2d(lua_State *L) { return pool_impl(L, 2, false); }
static int f_avg_pool3d(lua_State *L) { return pool_impl(L, 3, false); }

static int adaptive_impl(lua_State *L, int k) {
    char fname[32];
    snprintf(fname, sizeof fname, "adaptive_avg_pool%dd", k);
    ml_lua_check_nargs(L, 2, fname);
    ml_tensor *x = ml_lua_check_tensor_fn(L, 1, fname);
    if (lua_isnoneornil(L, 2)) return luaL_error(L, "%s: output_size is required", fname);
    int64_t size[3];
    int_tuple_at(L, 2, k, fname, "output_size", size);
    check_rank(L, x, k, fname);
    check_min(L, k, size, 1, fname, "output_size");
    ml_tensor **slot = ml_lua_newbox(L);
    return finish(L, fname, ml_adaptive_avg_pool(slot, x, k, size));
}
static int f_adaptive_avg_pool1d(lua_State *L) { return adaptive_impl(L, 1); }
static int f_adaptive_avg_pool2d(lua_State *L) { return adaptive_impl(L, 2); }
static int f_adaptive_avg_pool3d(lua_State *L) { return adaptive_impl(L, 3); }

/* ------------------------------------------------------------- normalization */
static int f_batch_norm(lua_State *L) {
    const char *fname = "batch_norm";
    static const char *const keys[] = {"weight", "bias", "training", "momentum", "eps", "prelu", NULL};
    ml_lua_check_nargs(L, 4, fname);
    ml_tensor *rm = ml_lua_opt_tensor_fn(L, 2, fname), *rv = ml_lua_opt_tensor_fn(L, 3, fname);
    ml_lua_check_opts(L, 4, fname, keys);
    ml_tensor *w = ml_lua_opt_tensorfield(L, 4, "weight", fname), *b = ml_lua_opt_tensorfield(L, 4, "bias", fname);
    ml_tensor *pw = ml_lua_opt_tensorfield(L, 4, "prelu", fname);
    ml_tensor *x = ml_lua_check_tensor_any_fn(L, 1, fname); /* may stay in oneDNN's blocked layout */
    bool training = ml_lua_opt_bool(L, 4, "training", false, fname);
    double momentum = ml_lua_opt_num(L, 4, "momentum", 0.1, fname), eps = ml_lua_opt_num(L, 4, "eps", 1e-5, fname);
    if (x->ndim < 2) return luaL_error(L, "%s: expected an input [N, C, ...] with at least 2 dims, got %s", fname, ml_shape_str(x->ndim, x->shape));
    if ((rm == NULL) != (rv == NULL))
        return luaL_error(L, "%s: running_mean and running_var must both be given or both be nil", fname);
    if (!training && !rm) return luaL_error(L, "%s: running_mean and running_var are required when training=false", fname);
    if (!(eps > 0)) return luaL_error(L, "%s: eps must be positive, got %f", fname, eps);
    ml_tensor **slot = ml_lua_newbox(L);
    return finish(L, fname, pw ? ml_batch_norm_prelu(slot, x, rm, rv, w, b, training, momentum, eps, pw)
                               : ml_batch_norm(slot, x, rm, rv, w, b, training, momentum, eps));
}

static int f_instance_norm(lua_State *L) {
    const char *fname = "instance_norm";
    static const char *const keys[] = {"weight", "bias", "eps", "prelu", NULL};
    ml_lua_check_nargs(L, 2, fname);
    ml_tensor *x = ml_lua_check_tensor_fn(L, 1, fname);
    ml_lua_check_opts(L, 2, fname, keys);
    ml_tensor *w = ml_lua_opt_tensorfield(L, 2, "weight", fname), *b = ml_lua_opt_tensorfield(L, 2, "bias", fname);
    double eps = ml_lua_opt_num(L, 2, "eps", 1e-5, fname);
    if (x->ndim < 3) return luaL_error(L, "%s: expected an input [N, C, spatial...] with at least 3 dims, got %s", fname, ml_shape_str(x->ndim, x->shape));
    if (!(eps > 0)) return luaL_error(L, "%s: eps must be positive, got %f", fname, eps);
    ml_tensor **slot = ml_lua_newbox(L);
    ml_tensor *pw = ml_lua_opt_tensorfield(L, 2, "prelu", fname);
    return finish(L, fname, pw ? ml_instance_norm_prelu(slot, x, w, b, eps, pw) : ml_instance_norm(slot, x, w, b, eps));
}

static int f_group_norm(lua_State *L) {
    const char *fname = "group_norm";
    static const char *const keys[] = {"weight", "bias", "eps", "prelu", NULL};
    ml_lua_check_nargs(L, 3, fname);
    ml_tensor *x = ml_lua_check_tensor_fn(L, 1, fname);
    int64_t groups = ml_lua_check_int(L, 2, fname, "num_groups");
    ml_lua_check_opts(L, 3, fname, keys);
    ml_tensor *w = ml_lua_opt_tensorfield(L, 3, "weight", fname), *b = ml_lua_opt_tensorfield(L, 3, "bias", fname);
    double eps = ml_lua_opt_num(L, 3, "eps", 1e-5, fname);
    if (x->ndim < 2) return luaL_error(L, "%s: expected an input [N, C, ...] with at least 2 dims, got %s", fname, ml_shape_str(x->ndim, x->shape));
    if (groups < 1 || x->shape[1] % groups != 0)
        return luaL_error(L, "%s: %I channels (input %s) are not divisible into %I groups", fname, (lua_Integer)x->shape[1],
                          ml_shape_str(x->ndim, x->shape), (lua_Integer)groups);
    if (!(eps > 0)) return luaL_error(L, "%s: eps must be positive, got %f", fname, eps);
    ml_tensor **slot = ml_lua_newbox(L);
    ml_tensor *pw = ml_lua_opt_tensorfield(L, 3, "prelu", fname);
    return finish(L, fname, pw ? ml_group_norm_prelu(slot, x, groups, w, b, eps, pw)
                               : ml_group_norm(slot, x, groups, w, b, eps));
}

static int f_layer_norm(lua_State *L) {
    const char *fname = "layer_norm";
    static const char *const keys[] = {"weight", "bias", "eps", NULL};
    ml_lua_check_nargs(L, 3, fname);
    ml_tensor *x = ml_lua_check_tensor_fn(L, 1, fname);
    int64_t ns[ML_MAX_DIMS];
    int nn;
    if (lua_type(L, 2) == LUA_TNUMBER) {
        ns[0] = ml_lua_check_int(L, 2, fname, "normalized_shape");
        nn = 1;
    } else if (lua_istable(L, 2)) {
        nn = ml_lua_parse_shape(L, 2, fname, ns, NULL, false, false);
    } else {
        return luaL_error(L, "%s: normalized_shape must be a number or a table, got %s", fname, luaL_typename(L, 2));
    }
    ml_lua_check_opts(L, 3, fname, keys);
    ml_tensor *w = ml_lua_opt_tensorfield(L, 3, "weight", fname), *b = ml_lua_opt_tensorfield(L, 3, "bias", fname);
    double eps = ml_lua_opt_num(L, 3, "eps", 1e-5, fname);
    bool ok = nn >= 1 && nn <= x->ndim;
    for (int i = 0; ok && i < nn; i++) ok = x->shape[x->ndim - nn + i] == ns[i];
    if (!ok)
        return luaL_error(L, "%s: input %s does not end with normalized_shape %s", fname, ml_shape_str(x->ndim, x->shape),
                          ml_shape_str(nn, ns));
    if (!(eps > 0)) return luaL_error(L, "%s: eps must be positive, got %f", fname, eps);
    ml_tensor **slot = ml_lua_newbox(L);
    return finish(L, fname, ml_layer_norm(slot, x, nn, w, b, eps));
}

/* --------------------------------------------------------------- activations */
static int unary(lua_State *L, ml_unop op, const char *fname) {
    ml_lua_check_nargs(L, 1, fname);
    ml_tensor *x = ml_lua_check_tensor_fn(L, 1, fname);
    ml_tensor **slot = ml_lua_newbox(L);
    return finish(L, fname, ml_unary(slot, op, x));
}
static int f_relu(lua_State *L) { return unary(L, ML_RELU, "relu"); }
static int f_silu(lua_State *L) { return unary(L, ML_SILU, "silu"); }
static int f_sigmoid(lua_State *L) { return unary(L, ML_SIGMOID, "sigmoid"); }
static int f_tanh(lua_State *L) { return unary(L, ML_TANH, "tanh"); }
static int f_softplus(lua_State *L) { return unary(L, ML_SOFTPLUS, "softplus"); }

/* a number at idx, or opts[key] when idx is a table, or def */
static double num_or_opt(lua_State *L, int idx, const char *key, double def, const char *fname) {
    if (lua_type(L, idx) == LUA_TNUMBER) return lua_tonumber(L, idx);
    if (lua_istable(L, idx)) {
        const char *const keys[] = {key, NULL};
        ml_lua_check_opts(L, idx, fname, keys);
        return ml_lua_opt_num(L, idx, key, def, fname);
    }
    if (!lua_isnoneornil(L, idx))
        luaL_error(L, "%s: %s must be a number, got %s", fname, key, luaL_typename(L, idx));
    return def;
}

static int f_leaky_relu(lua_State *L) {
    ml_lua_check_nargs(L, 2, "leaky_relu");
    ml_tensor *x = ml_lua_check_tensor_fn(L, 1, "leaky_relu");
    double slope = num_or_opt(L, 2, "negative_slope", 0.01, "leaky_relu");
    ml_tensor **slot = ml_lua_newbox(L);
    return finish(L, "leaky_relu", ml_leaky_relu(slot, x, slope));
}

static int f_elu(lua_State *L) {
    ml_lua_check_nargs(L, 2, "elu");
    ml_tensor *x = ml_lua_check_tensor_fn(L, 1, "elu");
    double alpha = num_or_opt(L, 2, "alpha", 1.0, "elu");
    ml_tensor **slot = ml_lua_newbox(L);
    return finish(L, "elu", ml_elu(slot, x, alpha));
}

static int f_prelu(lua_State *L) {
    ml_lua_check_nargs(L, 2, "prelu");
    ml_tensor *x = ml_lua_check_tensor_fn(L, 1, "prelu"), *w = ml_lua_check_tensor_fn(L, 2, "prelu");
    ml_tensor **slot = ml_lua_newbox(L);
    return finish(L, "prelu", ml_prelu(slot, x, w));
}

static int f_gelu(lua_State *L) {
    const char *fname = "gelu";
    ml_lua_check_nargs(L, 2, fname);
    ml_tensor *x = ml_lua_check_tensor_fn(L, 1, fname);
    const char *mode = "none";
    if (lua_type(L, 2) == LUA_TSTRING) mode = lua_tostring(L, 2);
    else if (!lua_isnoneornil(L, 2)) {
        static const char *const keys[] = {"approximate", NULL};
        ml_lua_check_opts(L, 2, fname, keys);
        mode = ml_lua_opt_str(L, 2, "approximate", "none", fname);
    }
    ml_unop op;
    if (strcmp(mode, "none") == 0) op = ML_GELU;
    else if (strcmp(mode, "tanh") == 0) op = ML_GELU_TANH;
    else return luaL_error(L, "%s: approximate must be \"none\" or \"tanh\", got \"%s\"", fname, mode);
    ml_tensor **slot = ml_lua_newbox(L);
    return finish(L, fname, ml_unary(slot, op, x));
}

static int softmax_impl(lua_State *L, bool log) {
    const char *fname = log ? "log_softmax" : "softmax";
    ml_lua_check_nargs(L, 2, fname);
    ml_tensor *x = ml_lua_check_tensor_fn(L, 1, fname);
    int64_t d;
    if (lua_istable(L, 2)) {
        static const char *const keys[] = {"dim", NULL};
        ml_lua_check_opts(L, 2, fname, keys);
        lua_getfield(L, 2, "dim");
        if (lua_isnil(L, -1)) return luaL_error(L, "%s: dim is required", fname);
        d = ml_lua_check_int(L, -1, fname, "dim");
        lua_pop(L, 1);
    } else {
        if (lua_isnoneornil(L, 2)) return luaL_error(L, "%s: dim is required", fname);
        d = ml_lua_check_int(L, 2, fname, "dim");
    }
    int n = x->ndim > 0 ? x->ndim : 1;
    if (d < -n || d >= n)
        return luaL_error(L, "%s: dim %I out of range for a tensor of shape %s (expected %d..%d)", fname, (lua_Integer)d,
                          ml_shape_str(x->ndim, x->shape), -n, n - 1);
    ml_tensor **slot = ml_lua_newbox(L);
    return finish(L, fname, log ? ml_log_softmax(slot, x, (int)d) : ml_softmax(slot, x, (int)d));
}
static int f_softmax(lua_State *L) { return softmax_impl(L, false); }
static int f_log_softmax(lua_State *L) { return softmax_impl(L, true); }

static int f_dropout(lua_State *L) {
    const char *fname = "dropout";
    static const char *const keys[] = {"p", "training", NULL};
    ml_lua_check_nargs(L, 3, fname);
    ml_tensor *x = ml_lua_check_tensor_fn(L, 1, fname);
    double p = 0.5;
    bool training = true;
    if (lua_type(L, 2) == LUA_TNUMBER) { /* dropout(x, p[, training]) */
        p = lua_tonumber(L, 2);
        if (!lua_isnoneornil(L, 3)) {
            if (lua_type(L, 3) != LUA_TBOOLEAN)
                return luaL_error(L, "%s: training must be a boolean, got %s", fname, luaL_typename(L, 3));
            training = lua_toboolean(L, 3);
        }
    } else {
        ml_lua_check_nargs(L, 2, fname);
        ml_lua_check_opts(L, 2, fname, keys);
        p = ml_lua_opt_num(L, 2, "p", 0.5, fname);
        training = ml_lua_opt_bool(L, 2, "training", true, fname);
    }
    if (!(p >= 0 && p <= 1)) return luaL_error(L, "%s: probability has to be between 0 and 1, got %f", fname, p);
    ml_tensor **slot = ml_lua_newbox(L);
    return finish(L, fname, ml_dropout(slot, x, p, training));
}

/* -------------------------------------------------------- resampling and pad */
static int f_interpolate(lua_State *L) {
    const char *fname = "interpolate";
    static const char *const keys[] = {"size", "scale_factor", "mode", "align_corners", NULL};
    ml_lua_check_nargs(L, 2, fname);
    ml_tensor *x = ml_lua_check_tensor_fn(L, 1, fname);
    if (!lua_istable(L, 2)) return luaL_error(L, "%s: expected an options table {size=, scale_factor=, mode=}, got %s", fname, luaL_typename(L, 2));
    ml_lua_check_opts(L, 2, fname, keys);
    int k = spatial_rank(L, x, fname);
    const char *mode = ml_lua_opt_str(L, 2, "mode", "nearest", fname);
    ml_interp_mode m;
    if (strcmp(mode, "nearest") == 0) m = ML_INTERP_NEAREST;
    else {
        static const char *const lin[] = {"linear", "bilinear", "trilinear"};
        int want = 0;
        for (int i = 0; i < 3; i++)
            if (strcmp(mode, lin[i]) == 0) want = i + 1;
        if (!want)
            return luaL_error(L, "%s: mode must be \"nearest\", \"linear\", \"bilinear\" or \"trilinear\", got \"%s\"", fname, mode);
        if (want != k)
            return luaL_error(L, "%s: mode \"%s\" expects a %d-D input %s, got %s", fname, mode, want + 2, layout_str(want),
                              ml_shape_str(x->ndim, x->shape));
        m = ML_INTERP_LINEAR;
    }
    lua_getfield(L, 2, "align_corners");
    bool ac_given = !lua_isnil(L, -1);
    lua_pop(L, 1);
    bool ac = ml_lua_opt_bool(L, 2, "align_corners", false, fname);
    if (ac_given && m == ML_INTERP_NEAREST)
        return luaL_error(L, "%s: align_corners can only be set with the interpolating modes (linear, bilinear, trilinear)", fname);
    int64_t size[3];
    double scale[3];
    bool has_size = opt_tuple(L, 2, "size", k, 0, fname, size);
    lua_getfield(L, 2, "scale_factor");
    bool has_scale = !lua_isnil(L, -1);
    if (has_scale) {
        if (lua_type(L, -1) == LUA_TNUMBER) {
            for (int i = 0; i < k; i++) scale[i] = lua_tonumber(L, -1);
        } else if (lua_istable(L, -1) && (int)lua_rawlen(L, -1) == k) {
            for (int i = 0; i < k; i++) {
                lua_rawgeti(L, -1, i + 1);
                scale[i] = ml_lua_check_num(L, -1, fname, "scale_factor");
                lua_pop(L, 1);
            }
        } else {
            return luaL_error(L, "%s: scale_factor must be a number or a table of %d numbers", fname, k);
        }
    }
    lua_pop(L, 1);
    if (has_size == has_scale)
        return luaL_error(L, "%s: exactly one of size and scale_factor must be given", fname);
    if (has_size) check_min(L, k, size, 1, fname, "size");
    if (has_scale)
        for (int i = 0; i < k; i++)
            if (!(scale[i] > 0) || !isfinite(scale[i]))
                return luaL_error(L, "%s: scale_factor must be positive, got %f", fname, scale[i]);
    ml_tensor **slot = ml_lua_newbox(L);
    return finish(L, fname, ml_interpolate(slot, x, has_size ? size : NULL, scale, m, ac));
}

static int f_pad(lua_State *L) {
    const char *fname = "pad";
    static const char *const keys[] = {"mode", "value", NULL};
    ml_lua_check_nargs(L, 4, fname);
    ml_tensor *x = ml_lua_check_tensor_fn(L, 1, fname);
    if (!lua_istable(L, 2)) return luaL_error(L, "%s: pads must be a table of integers, got %s", fname, luaL_typename(L, 2));
    int n = (int)lua_rawlen(L, 2);
    if (n == 0 || n % 2 || n / 2 > x->ndim || n > 2 * ML_MAX_DIMS)
        return luaL_error(L, "%s: pads must have an even length of at most 2 x %d (input %s), got %d entries", fname,
                          x->ndim, ml_shape_str(x->ndim, x->shape), n);
    int64_t pads[2 * ML_MAX_DIMS];
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 2, i + 1);
        pads[i] = ml_lua_check_int(L, -1, fname, "pad");
        lua_pop(L, 1);
    }
    const char *mode = "constant";
    double value = 0;
    if (lua_type(L, 3) == LUA_TSTRING) { /* pad(x, pads, mode[, value]) */
        mode = lua_tostring(L, 3);
        if (!lua_isnoneornil(L, 4)) value = ml_lua_check_num(L, 4, fname, "value");
    } else {
        ml_lua_check_nargs(L, 3, fname);
        ml_lua_check_opts(L, 3, fname, keys);
        mode = ml_lua_opt_str(L, 3, "mode", "constant", fname);
        value = ml_lua_opt_num(L, 3, "value", 0, fname);
    }
    ml_pad_mode m;
    if (strcmp(mode, "constant") == 0) m = ML_PAD_CONSTANT;
    else if (strcmp(mode, "reflect") == 0) m = ML_PAD_REFLECT;
    else if (strcmp(mode, "replicate") == 0) m = ML_PAD_REPLICATE;
    else return luaL_error(L, "%s: mode must be \"constant\", \"reflect\" or \"replicate\", got \"%s\"", fname, mode);
    ml_tensor **slot = ml_lua_newbox(L);
    return finish(L, fname, ml_pad(slot, x, n, pads, m, value));
}

static int f_grid_sample(lua_State *L) {
    const char *fname = "grid_sample";
    static const char *const keys[] = {"mode", "padding_mode", "align_corners", NULL};
    ml_lua_check_nargs(L, 3, fname);
    ml_tensor *x = ml_lua_check_tensor_fn(L, 1, fname), *grid = ml_lua_check_tensor_fn(L, 2, fname);
    ml_lua_check_opts(L, 3, fname, keys);
    if (x->ndim != 4 && x->ndim != 5)
        return luaL_error(L, "%s: expected a 4-D input [N, C, H, W] or a 5-D input [N, C, D, H, W], got %s", fname,
                          ml_shape_str(x->ndim, x->shape));
    if (grid->ndim != x->ndim || grid->shape[grid->ndim - 1] != x->ndim - 2)
        return luaL_error(L, "%s: grid must be [N, %sW_out, %d] for input %s, got %s", fname, x->ndim == 5 ? "D_out, H_out, " : "H_out, ",
                          x->ndim - 2, ml_shape_str(x->ndim, x->shape), ml_shape_str(grid->ndim, grid->shape));
    const char *mode = ml_lua_opt_str(L, 3, "mode", "bilinear", fname);
    const char *pm = ml_lua_opt_str(L, 3, "padding_mode", "zeros", fname);
    bool ac = ml_lua_opt_bool(L, 3, "align_corners", false, fname);
    ml_interp_mode m;
    if (strcmp(mode, "bilinear") == 0) m = ML_INTERP_LINEAR;
    else if (strcmp(mode, "nearest") == 0) m = ML_INTERP_NEAREST;
    else return luaL_error(L, "%s: mode must be \"bilinear\" or \"nearest\", got \"%s\"", fname, mode);
    ml_gs_padding p;
    if (strcmp(pm, "zeros") == 0) p = ML_GS_ZEROS;
    else if (strcmp(pm, "border") == 0) p = ML_GS_BORDER;
    else return luaL_error(L, "%s: padding_mode must be \"zeros\" or \"border\", got \"%s\"", fname, pm);
    ml_tensor **slot = ml_lua_newbox(L);
    return finish(L, fname, ml_grid_sample(slot, x, grid, m, p, ac));
}

static int f_affine_grid(lua_State *L) {
    const char *fname = "affine_grid";
    static const char *const keys[] = {"align_corners", NULL};
    ml_lua_check_nargs(L, 3, fname);
    ml_tensor *theta = ml_lua_check_tensor_fn(L, 1, fname);
    if (!lua_istable(L, 2)) return luaL_error(L, "%s: size must be a table {N, C, H, W} or {N, C, D, H, W}, got %s", fname, luaL_typename(L, 2));
    int64_t size[ML_MAX_DIMS];
    int n = ml_lua_parse_shape(L, 2, fname, size, NULL, false, true);
    if (n != 4 && n != 5) return luaL_error(L, "%s: size must have 4 or 5 entries, got %s", fname, ml_shape_str(n, size));
    ml_lua_check_opts(L, 3, fname, keys);
    bool ac = ml_lua_opt_bool(L, 3, "align_corners", false, fname);
    int r = n == 4 ? 2 : 3;
    if (theta->ndim != 3 || theta->shape[0] != size[0] || theta->shape[1] != r || theta->shape[2] != r + 1)
        return luaL_error(L, "%s: theta must be [%I, %d, %d] for size %s, got %s", fname, (lua_Integer)size[0], r, r + 1,
                          ml_shape_str(n, size), ml_shape_str(theta->ndim, theta->shape));
    ml_tensor **slot = ml_lua_newbox(L);
    return finish(L, fname, ml_affine_grid(slot, theta, n, size, ac));
}

/* ---------------------------------------------------------------------- losses */
static int simple_loss(lua_State *L, int kind) {
    static const char *const names[] = {"mse_loss", "l1_loss", "smooth_l1_loss"};
    static const char *const keys[] = {"reduction", NULL};
    static const char *const keys_beta[] = {"reduction", "beta", NULL};
    const char *fname = names[kind];
    ml_lua_check_nargs(L, 3, fname);
    ml_tensor *x = ml_lua_check_tensor_fn(L, 1, fname), *y = ml_lua_check_tensor_fn(L, 2, fname);
    ml_lua_check_opts(L, 3, fname, kind == 2 ? keys_beta : keys);
    ml_reduction r = opt_reduction(L, 3, fname);
    double beta = ml_lua_opt_num(L, 3, "beta", 1.0, fname);
    if (kind == 2 && !(beta >= 0)) return luaL_error(L, "%s: beta must be >= 0, got %f", fname, beta);
    ml_tensor **slot = ml_lua_newbox(L);
    ml_err e = kind == 0   ? ml_mse_loss(slot, x, y, r)
               : kind == 1 ? ml_l1_loss(slot, x, y, r)
                           : ml_smooth_l1_loss(slot, x, y, beta, r);
    return finish(L, fname, e);
}
static int f_mse_loss(lua_State *L) { return simple_loss(L, 0); }
static int f_l1_loss(lua_State *L) { return simple_loss(L, 1); }
static int f_smooth_l1_loss(lua_State *L) { return simple_loss(L, 2); }

static int f_bce_with_logits(lua_State *L) {
    const char *fname = "binary_cross_entropy_with_logits";
    static const char *const keys[] = {"weight", "pos_weight", "reduction", NULL};
    ml_lua_check_nargs(L, 3, fname);
    ml_tensor *x = ml_lua_check_tensor_fn(L, 1, fname), *y = ml_lua_check_tensor_fn(L, 2, fname);
    ml_lua_check_opts(L, 3, fname, keys);
    ml_tensor *w = ml_lua_opt_tensorfield(L, 3, "weight", fname), *pw = ml_lua_opt_tensorfield(L, 3, "pos_weight", fname);
    ml_reduction r = opt_reduction(L, 3, fname);
    ml_tensor **slot = ml_lua_newbox(L);
    return finish(L, fname, ml_bce_with_logits(slot, x, y, w, pw, r));
}

static int f_cross_entropy(lua_State *L) {
    const char *fname = "cross_entropy";
    static const char *const keys[] = {"weight", "ignore_index", "label_smoothing", "reduction", NULL};
    ml_lua_check_nargs(L, 3, fname);
    ml_tensor *x = ml_lua_check_tensor_fn(L, 1, fname), *y = ml_lua_check_tensor_fn(L, 2, fname);
    ml_lua_check_opts(L, 3, fname, keys);
    ml_tensor *w = ml_lua_opt_tensorfield(L, 3, "weight", fname);
    int64_t ignore = ml_lua_opt_intfield(L, 3, "ignore_index", -100, fname);
    double ls = ml_lua_opt_num(L, 3, "label_smoothing", 0.0, fname);
    ml_reduction r = opt_reduction(L, 3, fname);
    if (!(ls >= 0 && ls <= 1)) return luaL_error(L, "%s: label_smoothing must be between 0 and 1, got %f", fname, ls);
    ml_tensor **slot = ml_lua_newbox(L);
    return finish(L, fname, ml_cross_entropy(slot, x, y, w, ignore, ls, r));
}

static int f_nll_loss(lua_State *L) {
    const char *fname = "nll_loss";
    static const char *const keys[] = {"weight", "ignore_index", "reduction", NULL};
    ml_lua_check_nargs(L, 3, fname);
    ml_tensor *x = ml_lua_check_tensor_fn(L, 1, fname), *y = ml_lua_check_tensor_fn(L, 2, fname);
    ml_lua_check_opts(L, 3, fname, keys);
    ml_tensor *w = ml_lua_opt_tensorfield(L, 3, "weight", fname);
    int64_t ignore = ml_lua_opt_intfield(L, 3, "ignore_index", -100, fname);
    ml_reduction r = opt_reduction(L, 3, fname);
    ml_tensor **slot = ml_lua_newbox(L);
    return finish(L, fname, ml_nll_loss(slot, x, y, w, ignore, r));
}

static const luaL_Reg functional[] = {
    {"linear", f_linear},
    {"matmul", f_matmul},
    {"bmm", f_bmm},
    {"conv1d", f_conv1d},
    {"conv2d", f_conv2d},
    {"conv3d", f_conv3d},
    {"conv_transpose1d", f_conv_transpose1d},
    {"conv_transpose2d", f_conv_transpose2d},
    {"conv_transpose3d", f_conv_transpose3d},
    {"max_pool1d", f_max_pool1d},
    {"max_pool2d", f_max_pool2d},
    {"max_pool3d", f_max_pool3d},
    {"avg_pool1d", f_avg_pool1d},
    {"avg_pool2d", f_avg_pool2d},
    {"avg_pool3d", f_avg_pool3d},
    {"adaptive_avg_pool1d", f_adaptive_avg_pool1d},
    {"adaptive_avg_pool2d", f_adaptive_avg_pool2d},
    {"adaptive_avg_pool3d", f_adaptive_avg_pool3d},
    {"batch_norm", f_batch_norm},
    {"instance_norm", f_instance_norm},
    {"group_norm", f_group_norm},
    {"layer_norm", f_layer_norm},
    {"relu", f_relu},
    {"leaky_relu", f_leaky_relu},
    {"prelu", f_prelu},
    {"elu", f_elu},
    {"gelu", f_gelu},
    {"silu", f_silu},
    {"sigmoid", f_sigmoid},
    {"tanh", f_tanh},
    {"softplus", f_softplus},
    {"softmax", f_softmax},
    {"log_softmax", f_log_softmax},
    {"dropout", f_dropout},
    {"interpolate", f_interpolate},
    {"pad", f_pad},
    {"grid_sample", f_grid_sample},
    {"affine_grid", f_affine_grid},
    {"mse_loss", f_mse_loss},
    {"l1_loss", f_l1_loss},
    {"smooth_l1_loss", f_smooth_l1_loss},
    {"binary_cross_entropy_with_logits", f_bce_with_logits},
    {"cross_entropy", f_cross_entropy},
    {"nll_loss", f_nll_loss},
    {NULL, NULL}};

int ml_lua_open_nn(lua_State *L) {
    luaL_newlib(L, functional);
    return 1;
}
