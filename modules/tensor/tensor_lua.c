/* medlua Lua binding, part 1: the Tensor userdata (box, metatable, GC accounting), argument
 * helpers, nested tables <-> tensors, PyTorch-style printing, creation functions, module-level
 * functions (no_grad, mem, threads, manual_seed, ...) and luaopen_medlua.
 * Methods, properties and arithmetic metamethods are in tensor_ops_lua.c. */
#include "tensor_lua.h"
#include "../cuda/ml_cuda.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ the box */
static char g_mt_key;      /* registry[&g_mt_key] = the Tensor metatable */
static const void *g_mt;   /* its address, for the fast type check */

ml_tensor **ml_lua_newbox(lua_State *L) {
    ml_lua_box *b = (ml_lua_box *)lua_newuserdatauv(L, sizeof *b, 0);
    b->t = NULL;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &g_mt_key);
    lua_setmetatable(L, -2);
    return &b->t;
}

ml_lua_box *ml_lua_tobox_raw(lua_State *L, int idx) {
    if (lua_type(L, idx) != LUA_TUSERDATA || !lua_getmetatable(L, idx)) return NULL;
    const void *mt = lua_topointer(L, -1);
    lua_pop(L, 1);
    if (mt == g_mt) return (ml_lua_box *)lua_touserdata(L, idx);
    return (ml_lua_box *)luaL_testudata(L, idx, ML_LUA_TENSOR_MT); /* another lua_State */
}

ml_lua_box *ml_lua_tobox(lua_State *L, int idx) {
    ml_lua_box *b = ml_lua_tobox_raw(L, idx);
    if (b && b->t && b->t->layout) {
        ml_err e = ml_tensor_plain(b->t); /* in place: same values, plain strides */
        if (e) ml_lua_error(L, e);
    }
    return b;
}

/* ------------------------------------------------------------ the CUDA gate
 * Operations with a device path (ml_cuda_* kernels behind the core op) accept CUDA tensors; every
 * other binding refuses them with an error naming the op, before any CPU kernel could touch device
 * memory. The names are the bindings' op names (sorted for bsearch). A binding's secondary tensor
 * arguments fetched without a name (ml_lua_totensor) are checked against the op named last. */
static const char *const cuda_ops[] = {
    "abs", "abs_", "adam_step_", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "add", "add_",
    "amax", "amin", "argmax", "argmin", "atan2", "atan2_", "avg_pool1d", "avg_pool2d", "avg_pool3d", "backward",
    "batch_norm", "bfloat16", "bmm", "bool", "byte", "cat", "ceil", "ceil_", "clamp", "clamp_", "clip", "clone",
    "contiguous", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "copy_",
    "cos", "cos_", "cpu", "cross_entropy", "cuda", "detach", "dim", "div", "div_", "double", "dropout",
    "element_size", "elu", "empty_like", "eq", "erf", "erf_", "exp", "exp_", "expand", "expand_as", "expm1", "expm1_",
    "fill_", "flatten", "float", "floor", "floor_", "fmod", "fmod_", "full_like", "ge", "gelu", "gelu_", "grad",
    "group_norm", "gt", "half", "instance_norm", "int", "is_contiguous", "is_floating_point", "isinf", "isnan",
    "item", "l1_loss", "layer_norm", "le", "leaky_relu", "linear", "log", "log1p", "log1p_", "log_", "log_softmax",
    "logical_and", "logical_not", "logical_or", "logical_xor", "logsumexp", "long", "lt", "matmul", "max",
    "max_pool1d", "max_pool2d", "max_pool3d", "maximum", "maximum_", "mean", "min", "minimum", "minimum_", "mm",
    "mse_loss", "mul", "mul_", "narrow", "ne", "neg", "neg_", "nelement", "norm", "normal_", "numel", "one_hot",
    "ones_like", "pad", "permute", "pow", "pow_", "prelu", "prod", "rand_like", "randn_like", "reciprocal",
    "reciprocal_", "relu", "relu_", "requires_grad_", "reshape", "retain_grad", "round", "round_", "rsqrt", "rsqrt_",
    "select", "sigmoid", "sigmoid_", "sign", "sign_", "silu", "silu_", "sin", "sin_", "size", "slice", "softmax",
    "softplus", "softplus_", "sqrt", "sqrt_", "square", "square_", "squeeze", "stack", "std", "storage_offset",
    "stride", "sub", "sub_", "sum", "t", "tan", "tan_", "tanh", "tanh_", "to", "tostring", "transpose", "trunc",
    "trunc_", "uniform_", "unsqueeze", "var", "view", "view_as", "zero_", "zeros_like"};
static char g_gate_op[48]; /* the op named by the last checked argument (a copy: names may live on a stack) */

static int cmp_name(const void *k, const void *e) { return strcmp((const char *)k, *(const char *const *)e); }

/* true when the binding named fname has a CUDA path */
static bool cuda_op(const char *fname) {
    return fname && bsearch(fname, cuda_ops, sizeof cuda_ops / sizeof *cuda_ops, sizeof *cuda_ops, cmp_name);
}

static void cuda_gate(lua_State *L, const ml_tensor *t, const char *fname) {
    if (fname) snprintf(g_gate_op, sizeof g_gate_op, "%s", fname);
    if (t && ml_tensor_is_cuda(t) && !cuda_op(g_gate_op))
        luaL_error(L, "%s: not implemented for %s tensors yet (shape %s); move the tensor with :cpu()",
                   g_gate_op[0] ? g_gate_op : "this op", ml_device_str(t->storage->device),
                   ml_shape_str(t->ndim, t->shape));
}

/* argument idx of op fname: an open tensor that passes the CUDA gate, or a Lua error */
static ml_tensor *checked_arg(lua_State *L, ml_lua_box *b, int idx, const char *fname) {
    if (!b) {
        luaL_error(L, "%s: argument #%d: expected a tensor, got %s", fname, idx, luaL_typename(L, idx));
        return NULL;
    }
    if (!b->t) luaL_error(L, "%s: argument #%d: tensor is closed", fname, idx);
    cuda_gate(L, b->t, fname);
    return b->t;
}

ml_tensor *ml_lua_check_tensor_any_fn(lua_State *L, int idx, const char *fname) {
    return checked_arg(L, ml_lua_tobox_raw(L, idx), idx, fname);
}

ml_tensor *ml_lua_totensor(lua_State *L, int idx) {
    ml_lua_box *b = ml_lua_tobox(L, idx);
    if (b && b->t) cuda_gate(L, b->t, NULL);
    return b ? b->t : NULL;
}

ml_tensor *ml_lua_check_tensor_fn(lua_State *L, int idx, const char *fname) {
    return checked_arg(L, ml_lua_tobox(L, idx), idx, fname);
}

ml_tensor *ml_lua_opt_tensor_fn(lua_State *L, int idx, const char *fname) {
    if (lua_isnoneornil(L, idx)) return NULL;
    return ml_lua_check_tensor_fn(L, idx, fname);
}

ml_tensor *ml_lua_check_tensor(lua_State *L, int idx) {
    ml_lua_box *b = ml_lua_tobox(L, idx);
    if (!b) luaL_typeerror(L, idx, ML_LUA_TENSOR_MT);
    if (!b->t) luaL_argerror(L, idx, "tensor is closed");
    return b->t;
}

/* ------------------------------------------------------------ GC accounting */
/* Bytes Lua does not see per pushed tensor: the ml_tensor header (the data is counted by the core's
 * pending-bytes counter). */
#define ML_LUA_HEADER_BYTES ((int64_t)sizeof(ml_tensor) + 32)
static int64_t g_gc_acc;

void ml_lua_account(lua_State *L) {
    g_gc_acc += ml_mem_take_pending() + ML_LUA_HEADER_BYTES;
    if (g_gc_acc >= 1024) {
        int64_t kb = g_gc_acc >> 10;
        g_gc_acc &= 1023;
        if (kb > INT_MAX / 2) kb = INT_MAX / 2;
        if (lua_gc(L, LUA_GCISRUNNING)) lua_gc(L, LUA_GCSTEP, (int)kb);
    }
}

void ml_lua_push_tensor(lua_State *L, ml_tensor *t) {
    if (!t) { lua_pushnil(L); return; }
    ml_lua_box *b = (ml_lua_box *)lua_newuserdatauv(L, sizeof *b, 0);
    b->t = t;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &g_mt_key);
    lua_setmetatable(L, -2);
    ml_lua_account(L);
}

void ml_lua_push_tensor_retain(lua_State *L, ml_tensor *t) {
    if (!t) { lua_pushnil(L); return; }
    ml_tensor **slot = ml_lua_newbox(L);
    ml_tensor_retain(t);
    *slot = t;
}

static lua_State *g_main_L;
static void oom_handler(void *ud) {
    (void)ud;
    if (g_main_L) lua_gc(g_main_L, LUA_GCCOLLECT);
}

/* ------------------------------------------------------------------- errors */
int ml_lua_error(lua_State *L, ml_err e) {
    (void)e;
    return luaL_error(L, "%s", ml_errmsg());
}

int ml_lua_error_fn(lua_State *L, const char *fname, ml_err e) {
    (void)e;
    const char *m = ml_errmsg();
    if (strstr(m, fname)) return luaL_error(L, "%s", m);
    return luaL_error(L, "%s: %s", fname, m);
}

/* --------------------------------------------------------- argument helpers */
int64_t ml_lua_check_int(lua_State *L, int idx, const char *fname, const char *what) {
    if (lua_type(L, idx) == LUA_TNUMBER) {
        int ok;
        lua_Integer v = lua_tointegerx(L, idx, &ok);
        if (ok) return (int64_t)v;
        luaL_error(L, "%s: %s must be an integer, got %f", fname, what, lua_tonumber(L, idx));
    }
    luaL_error(L, "%s: %s must be an integer, got %s", fname, what, luaL_typename(L, idx));
    return 0;
}

int64_t ml_lua_opt_int(lua_State *L, int idx, int64_t def, const char *fname, const char *what) {
    if (lua_isnoneornil(L, idx)) return def;
    return ml_lua_check_int(L, idx, fname, what);
}

double ml_lua_check_num(lua_State *L, int idx, const char *fname, const char *what) {
    if (lua_type(L, idx) != LUA_TNUMBER)
        luaL_error(L, "%s: %s must be a number, got %s", fname, what, luaL_typename(L, idx));
    return (double)lua_tonumber(L, idx);
}

void ml_lua_check_nargs(lua_State *L, int max, const char *fname) {
    int n = lua_gettop(L);
    while (n > max && lua_isnil(L, n)) n--;
    if (n > max) luaL_error(L, "%s: too many arguments (%d given, at most %d expected)", fname, n, max);
}

void ml_lua_check_opts(lua_State *L, int idx, const char *fname, const char *const *allowed) {
    if (lua_isnoneornil(L, idx)) return;
    idx = lua_absindex(L, idx);
    if (!lua_istable(L, idx))
        luaL_error(L, "%s: options must be a table, got %s", fname, luaL_typename(L, idx));
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) {
            if (lua_type(L, -1) == LUA_TNUMBER)
                luaL_error(L, "%s: options must be a table of name = value pairs, found a list entry [%d]", fname,
                           (int)lua_tointeger(L, -1));
            luaL_error(L, "%s: option names must be strings, got %s", fname, luaL_typename(L, -1));
        }
        const char *k = lua_tostring(L, -1);
        bool ok = false;
        for (int i = 0; allowed[i]; i++)
            if (strcmp(k, allowed[i]) == 0) { ok = true; break; }
        if (!ok) {
            luaL_Buffer b;
            luaL_buffinit(L, &b);
            for (int i = 0; allowed[i]; i++) {
                if (i) luaL_addstring(&b, ", ");
                luaL_addstring(&b, allowed[i]);
            }
            luaL_pushresult(&b);
            luaL_error(L, "%s: unknown option '%s' (expected one of: %s)", fname, k, lua_tostring(L, -1));
        }
    }
}

static int getfield_opt(lua_State *L, int idx, const char *key) {
    if (!lua_istable(L, idx)) { lua_pushnil(L); return LUA_TNIL; }
    return lua_getfield(L, idx, key);
}

bool ml_lua_opt_bool(lua_State *L, int idx, const char *key, bool def, const char *fname) {
    int t = getfield_opt(L, idx, key);
    bool v = def;
    if (t == LUA_TBOOLEAN) v = lua_toboolean(L, -1);
    else if (t != LUA_TNIL) luaL_error(L, "%s: option '%s' must be a boolean, got %s", fname, key, lua_typename(L, t));
    lua_pop(L, 1);
    return v;
}

double ml_lua_opt_num(lua_State *L, int idx, const char *key, double def, const char *fname) {
    int t = getfield_opt(L, idx, key);
    double v = def;
    if (t == LUA_TNUMBER) v = lua_tonumber(L, -1);
    else if (t != LUA_TNIL) luaL_error(L, "%s: option '%s' must be a number, got %s", fname, key, lua_typename(L, t));
    lua_pop(L, 1);
    return v;
}

int64_t ml_lua_opt_intfield(lua_State *L, int idx, const char *key, int64_t def, const char *fname) {
    int t = getfield_opt(L, idx, key);
    int64_t v = def;
    if (t != LUA_TNIL) {
        char what[96];
        snprintf(what, sizeof what, "option '%s'", key);
        v = ml_lua_check_int(L, -1, fname, what);
    }
    lua_pop(L, 1);
    return v;
}

const char *ml_lua_opt_str(lua_State *L, int idx, const char *key, const char *def, const char *fname) {
    int t = getfield_opt(L, idx, key);
    const char *v = def;
    if (t == LUA_TSTRING) v = lua_tostring(L, -1); /* kept alive by the options table */
    else if (t != LUA_TNIL) luaL_error(L, "%s: option '%s' must be a string, got %s", fname, key, lua_typename(L, t));
    lua_pop(L, 1);
    return v;
}

ml_tensor *ml_lua_opt_tensorfield(lua_State *L, int idx, const char *key, const char *fname) {
    int t = getfield_opt(L, idx, key);
    ml_tensor *v = NULL;
    if (t != LUA_TNIL) {
        ml_lua_box *b = ml_lua_tobox(L, -1);
        if (!b) luaL_error(L, "%s: option '%s' must be a tensor, got %s", fname, key, lua_typename(L, t));
        if (!b->t) luaL_error(L, "%s: option '%s': tensor is closed", fname, key);
        cuda_gate(L, b->t, fname);
        v = b->t;
    }
    lua_pop(L, 1);
    return v;
}

static const char *const dtype_list = "float32, float64, int32, int64, uint8, bool, bfloat16, float16";

ml_dtype ml_lua_check_dtype(lua_State *L, int idx, ml_dtype def, const char *fname) {
    if (lua_isnoneornil(L, idx)) return def;
    if (lua_type(L, idx) != LUA_TSTRING)
        luaL_error(L, "%s: dtype must be a string (%s), got %s", fname, dtype_list, luaL_typename(L, idx));
    const char *s = lua_tostring(L, idx);
    int dt = ml_dtype_from_name(s);
    if (dt < 0) luaL_error(L, "%s: unknown dtype '%s' (expected one of %s)", fname, s, dtype_list);
    return (ml_dtype)dt;
}

/* ---------------------------------------------------------------- shapes */
static void check_numel(lua_State *L, const char *fname, int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            luaL_error(L, "%s: negative size %I in shape %s", fname, (lua_Integer)shape[i], ml_shape_str(ndim, shape));
        if (shape[i] && n > (INT64_C(1) << 58) / shape[i])
            luaL_error(L, "%s: shape %s is too large", fname, ml_shape_str(ndim, shape));
        n *= shape[i];
    }
}

int ml_lua_parse_shape(lua_State *L, int first, const char *fname, int64_t *shape, int *next, bool allow_neg1,
                       bool check_size) {
    int ndim = 0;
    if (lua_type(L, first) == LUA_TTABLE) {
        lua_Unsigned n = lua_rawlen(L, first);
        if (n > ML_MAX_DIMS)
            luaL_error(L, "%s: shape has %d dimensions, at most %d are supported", fname, (int)n, ML_MAX_DIMS);
        for (int i = 0; i < (int)n; i++) {
            lua_rawgeti(L, first, i + 1);
            shape[i] = ml_lua_check_int(L, -1, fname, "size");
            lua_pop(L, 1);
        }
        ndim = (int)n;
        if (next) *next = first + 1;
    } else {
        int i = first;
        while (lua_type(L, i) == LUA_TNUMBER) {
            if (ndim >= ML_MAX_DIMS)
                luaL_error(L, "%s: shape has more than %d dimensions", fname, ML_MAX_DIMS);
            shape[ndim++] = ml_lua_check_int(L, i, fname, "size");
            i++;
        }
        if (ndim == 0 && !lua_isnoneornil(L, first) && !lua_istable(L, first))
            luaL_error(L, "%s: size must be an integer or a table of integers, got %s", fname, luaL_typename(L, first));
        if (next) *next = i;
    }
    int ninf = 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == -1 && allow_neg1) {
            if (++ninf > 1) luaL_error(L, "%s: only one dimension can be -1, got %s", fname, ml_shape_str(ndim, shape));
            continue;
        }
        if (shape[i] < 0)
            luaL_error(L, "%s: negative size %I in shape %s", fname, (lua_Integer)shape[i], ml_shape_str(ndim, shape));
    }
    if (check_size) check_numel(L, fname, ndim, shape);
    return ndim;
}

/* -------------------------------------------------------- element access */
int64_t ml_lua_elem_offset(const ml_tensor *t, const int64_t *idx) {
    int64_t off = t->offset;
    for (int i = 0; i < t->ndim; i++) off += idx[i] * t->stride[i];
    return off;
}

double ml_lua_read_d(const ml_tensor *t, int64_t off) {
    const void *p = t->storage->data;
    switch ((ml_dtype)t->dtype) {
    case ML_F32: return ((const float *)p)[off];
    case ML_F64: return ((const double *)p)[off];
    case ML_I32: return ((const int32_t *)p)[off];
    case ML_I64: return (double)((const int64_t *)p)[off];
    case ML_U8: return ((const uint8_t *)p)[off];
    case ML_BOOL: return ((const uint8_t *)p)[off] != 0;
    case ML_BF16: return ml_bf16_to_f32(((const uint16_t *)p)[off]);
    case ML_F16: return ml_f16_to_f32(((const uint16_t *)p)[off]);
    default: return 0;
    }
}

int64_t ml_lua_read_i(const ml_tensor *t, int64_t off) {
    const void *p = t->storage->data;
    switch ((ml_dtype)t->dtype) {
    case ML_I32: return ((const int32_t *)p)[off];
    case ML_I64: return ((const int64_t *)p)[off];
    case ML_U8: return ((const uint8_t *)p)[off];
    case ML_BOOL: return ((const uint8_t *)p)[off] != 0;
    default: {
        double d = ml_lua_read_d(t, off);
        return isfinite(d) ? (int64_t)d : 0;
    }
    }
}

void ml_lua_push_elem(lua_State *L, const ml_tensor *t, int64_t off) {
    ml_dtype dt = (ml_dtype)t->dtype;
    if (dt == ML_BOOL) lua_pushboolean(L, ml_lua_read_i(t, off) != 0);
    else if (ml_dtype_is_float(dt)) lua_pushnumber(L, (lua_Number)ml_lua_read_d(t, off));
    else lua_pushinteger(L, (lua_Integer)ml_lua_read_i(t, off));
}

static inline int64_t dbl_to_i64(double v) {
    if (!(v == v)) return 0;
    if (v >= 9.2233720368547758e18) return INT64_MAX;
    if (v <= -9.2233720368547758e18) return INT64_MIN;
    return (int64_t)v;
}

/* Store either an exact integer (isint) or a double into element off, converting to the dtype. */
void ml_lua_write_elem(ml_tensor *t, int64_t off, bool isint, int64_t iv, double dv) {
    void *p = t->storage->data;
    if (isint) dv = (double)iv;
    else iv = dbl_to_i64(dv);
    switch ((ml_dtype)t->dtype) {
    case ML_F32: ((float *)p)[off] = (float)dv; break;
    case ML_F64: ((double *)p)[off] = dv; break;
    case ML_I32: ((int32_t *)p)[off] = (int32_t)iv; break;
    case ML_I64: ((int64_t *)p)[off] = iv; break;
    case ML_U8: ((uint8_t *)p)[off] = (uint8_t)iv; break;
    case ML_BOOL: ((uint8_t *)p)[off] = isint ? iv != 0 : dv != 0; break;
    case ML_BF16: ((uint16_t *)p)[off] = ml_f32_to_bf16((float)dv); break;
    case ML_F16: ((uint16_t *)p)[off] = ml_f32_to_f16((float)dv); break;
    default: break;
    }
}

/* Write the Lua value at idx (number or boolean) into element off. Returns false if it is neither. */
bool ml_lua_write_value(lua_State *L, int idx, ml_tensor *t, int64_t off) {
    switch (lua_type(L, idx)) {
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) ml_lua_write_elem(t, off, true, (int64_t)lua_tointeger(L, idx), 0);
        else ml_lua_write_elem(t, off, false, 0, (double)lua_tonumber(L, idx));
        return true;
    case LUA_TBOOLEAN:
        ml_lua_write_elem(t, off, true, lua_toboolean(L, idx), 0);
        return true;
    default: return false;
    }
}

/* ------------------------------------------------ nested tables -> tensor */
typedef struct {
    int ndim;
    int64_t shape[ML_MAX_DIMS];
    int64_t pos[ML_MAX_DIMS];
    bool all_bool, any_value;
    const char *fname;
} table_info;

static const char *pos_str(const table_info *ti, int depth) { return ml_shape_str(depth, ti->pos); }

/* Walk first elements to find the shape. Table at stack top. */
static void table_shape(lua_State *L, int idx, table_info *ti) {
    ti->ndim = 0;
    lua_pushvalue(L, idx);
    for (;;) {
        if (ti->ndim >= ML_MAX_DIMS)
            luaL_error(L, "%s: nested tables are deeper than %d levels", ti->fname, ML_MAX_DIMS);
        lua_Unsigned n = lua_rawlen(L, -1);
        ti->shape[ti->ndim++] = (int64_t)n;
        if (n == 0) break;
        lua_rawgeti(L, -1, 1);
        lua_remove(L, -2);
        if (!lua_istable(L, -1)) break;
    }
    lua_pop(L, 1);
}

static void table_validate(lua_State *L, int depth, table_info *ti) {
    /* table at stack top, at nesting depth `depth` */
    lua_Unsigned n = lua_rawlen(L, -1);
    if ((int64_t)n != ti->shape[depth])
        luaL_error(L, "%s: ragged nested table: the table at %s has %d elements, expected %d (shape %s)", ti->fname,
                   pos_str(ti, depth), (int)n, (int)ti->shape[depth], ml_shape_str(ti->ndim, ti->shape));
    luaL_checkstack(L, 4, "nested table");
    for (lua_Unsigned i = 1; i <= n; i++) {
        ti->pos[depth] = (int64_t)i - 1;
        int t = lua_rawgeti(L, -1, (lua_Integer)i);
        if (depth + 1 < ti->ndim) {
            if (t != LUA_TTABLE)
                luaL_error(L, "%s: ragged nested table: element %s is a %s, expected a table (shape %s)", ti->fname,
                           pos_str(ti, depth + 1), lua_typename(L, t), ml_shape_str(ti->ndim, ti->shape));
            table_validate(L, depth + 1, ti);
        } else if (t == LUA_TBOOLEAN) {
            ti->any_value = true;
        } else if (t == LUA_TNUMBER) {
            ti->all_bool = false;
            ti->any_value = true;
        } else if (t == LUA_TUSERDATA && ml_lua_totensor(L, -1) && ml_tensor_numel(ml_lua_totensor(L, -1)) == 1 &&
                   !ml_lua_totensor(L, -1)->layout) { /* a one-element tensor counts as its value */
            if (ml_lua_totensor(L, -1)->dtype != ML_BOOL) ti->all_bool = false;
            ti->any_value = true;
        } else {
            luaL_error(L, "%s: element %s is a %s, expected a number or a boolean%s", ti->fname, pos_str(ti, depth + 1),
                       lua_typename(L, t), t == LUA_TTABLE ? " (ragged nested table)" : "");
        }
        lua_pop(L, 1);
    }
}

static void table_fill(lua_State *L, int depth, const table_info *ti, ml_tensor *t, int64_t *off) {
    lua_Unsigned n = lua_rawlen(L, -1);
    for (lua_Unsigned i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        if (depth + 1 < ti->ndim) table_fill(L, depth + 1, ti, t, off);
        else if (!ml_lua_write_value(L, -1, t, *off)) { /* a one-element tensor (validated) */
            ml_tensor *v = ml_lua_totensor(L, -1);
            if (ml_dtype_is_float((ml_dtype)v->dtype)) ml_lua_write_elem(t, *off, false, 0, ml_lua_read_d(v, v->offset));
            else ml_lua_write_elem(t, *off, true, ml_lua_read_i(v, v->offset), 0);
        }
        if (depth + 1 >= ti->ndim) (*off)++;
        lua_pop(L, 1);
    }
}

/* Build a contiguous tensor from the nested table at idx. dtype < 0: float32 (bool if all leaves are
 * booleans). Raises on malformed tables before allocating anything. Returns a NEW reference. */
ml_tensor *ml_lua_table_to_tensor(lua_State *L, int idx, int dtype, const char *fname) {
    idx = lua_absindex(L, idx);
    table_info ti;
    memset(&ti, 0, sizeof ti);
    ti.fname = fname;
    ti.all_bool = true;
    table_shape(L, idx, &ti);
    lua_pushvalue(L, idx);
    if (ti.shape[0] > 0) table_validate(L, 0, &ti);
    lua_pop(L, 1);
    check_numel(L, fname, ti.ndim, ti.shape);
    ml_dtype dt = dtype >= 0 ? (ml_dtype)dtype : (ti.any_value && ti.all_bool ? ML_BOOL : ML_F32);
    ml_tensor *t;
    ml_err e = ml_tensor_empty(&t, dt, ti.ndim, ti.shape);
    if (e) ml_lua_error_fn(L, fname, e);
    int64_t off = 0;
    lua_pushvalue(L, idx);
    if (ml_tensor_numel(t) > 0) table_fill(L, 0, &ti, t, &off);
    lua_pop(L, 1);
    return t;
}

/* ------------------------------------------------ tensor -> nested tables */
static void push_list(lua_State *L, const ml_tensor *t, int d, int64_t off) {
    if (d == t->ndim) { ml_lua_push_elem(L, t, off); return; }
    int64_t n = t->shape[d];
    luaL_checkstack(L, 3, "tolist");
    lua_createtable(L, n > INT_MAX ? INT_MAX : (int)n, 0);
    for (int64_t i = 0; i < n; i++) {
        push_list(L, t, d + 1, off + i * t->stride[d]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
}

void ml_lua_push_list(lua_State *L, ml_tensor *t) {
    ml_err e = ml_tensor_plain(t);
    if (e) ml_lua_error_fn(L, "tolist", e);
    push_list(L, t, 0, t->offset);
}

/* ---------------------------------------------------- PyTorch-style printing */
#define PR_LINEWIDTH 80
#define PR_EDGE 3
#define PR_THRESHOLD 1000
#define PR_PRECISION 4

typedef struct {
    bool floating, is_bool, int_mode, sci_mode;
    int max_width;
    /* statistics pass */
    bool any;
    double min_abs, max_abs;
} fmt_state;

typedef void (*visit_fn)(fmt_state *f, const ml_tensor *t, int64_t off);

static void visit(const ml_tensor *t, int d, int64_t off, bool summarize, visit_fn fn, fmt_state *f) {
    if (d == t->ndim) { fn(f, t, off); return; }
    int64_t n = t->shape[d];
    for (int64_t i = 0; i < n; i++) {
        if (summarize && n > 2 * PR_EDGE && i == PR_EDGE) i = n - PR_EDGE;
        visit(t, d + 1, off + i * t->stride[d], summarize, fn, f);
    }
}

static void stat_fn(fmt_state *f, const ml_tensor *t, int64_t off) {
    double v = ml_lua_read_d(t, off);
    if (!isfinite(v) || v == 0) return;
    double a = fabs(v);
    if (!f->any) { f->min_abs = f->max_abs = a; f->any = true; }
    else {
        if (a < f->min_abs) f->min_abs = a;
        if (a > f->max_abs) f->max_abs = a;
    }
    if (v != ceil(v)) f->int_mode = false;
}

/* Raw (unpadded) text of one value. */
static int fmt_raw(const fmt_state *f, const ml_tensor *t, int64_t off, char *buf, size_t cap) {
    if (f->is_bool) return snprintf(buf, cap, "%s", ml_lua_read_i(t, off) ? "True" : "False");
    if (!f->floating) return snprintf(buf, cap, "%lld", (long long)ml_lua_read_i(t, off));
    double v = ml_lua_read_d(t, off);
    if (isnan(v)) return snprintf(buf, cap, "nan");
    if (isinf(v)) return snprintf(buf, cap, v > 0 ? "inf" : "-inf");
    if (f->sci_mode) return snprintf(buf, cap, "%.*e", PR_PRECISION, v);
    if (f->int_mode) return snprintf(buf, cap, "%.0f.", v);
    return snprintf(buf, cap, "%.*f", PR_PRECISION, v);
}

static void width_fn(fmt_state *f, const ml_tensor *t, int64_t off) {
    char buf[64];
    if (f->floating) { /* only nonzero finite values count, as in PyTorch */
        double v = ml_lua_read_d(t, off);
        if (!isfinite(v) || v == 0) return;
    }
    int n = fmt_raw(f, t, off, buf, sizeof buf);
    if (n > f->max_width) f->max_width = n;
}

static void add_spaces(luaL_Buffer *b, int n) {
    for (int i = 0; i < n; i++) luaL_addchar(b, ' ');
}

static int fmt_value(const fmt_state *f, const ml_tensor *t, int64_t off, char *buf, size_t cap) {
    char raw[64];
    int n = fmt_raw(f, t, off, raw, sizeof raw);
    int pad = f->max_width > n ? f->max_width - n : 0;
    return snprintf(buf, cap, "%*s%s", pad, "", raw);
}

static void fmt_vector(luaL_Buffer *b, const fmt_state *f, const ml_tensor *t, int64_t off, int indent,
                       bool summarize) {
    int d = t->ndim - 1;
    int64_t n = t->shape[d];
    int elem_len = f->max_width + 2;
    int per_line = (PR_LINEWIDTH - indent) / elem_len;
    if (PR_LINEWIDTH - indent < 0) per_line = 0;
    if (per_line < 1) per_line = 1;
    luaL_addchar(b, '[');
    int k = 0;
    for (int64_t i = 0; i < n; i++, k++) {
        if (k > 0) {
            if (k % per_line == 0) {
                luaL_addstring(b, ",\n");
                add_spaces(b, indent + 1);
            } else luaL_addstring(b, ", ");
        }
        if (summarize && n > 2 * PR_EDGE && i == PR_EDGE) {
            luaL_addstring(b, " ...");
            i = n - PR_EDGE - 1;
            continue;
        }
        char buf[96];
        fmt_value(f, t, off + i * t->stride[d], buf, sizeof buf);
        luaL_addstring(b, buf);
    }
    luaL_addchar(b, ']');
}

static void fmt_tensor(luaL_Buffer *b, const fmt_state *f, const ml_tensor *t, int d, int64_t off, int indent,
                       bool summarize) {
    int dims_left = t->ndim - d;
    if (dims_left == 1) { fmt_vector(b, f, t, off, indent, summarize); return; }
    int64_t n = t->shape[d];
    luaL_addchar(b, '[');
    for (int64_t i = 0; i < n; i++) {
        if (i > 0) {
            luaL_addchar(b, ',');
            for (int j = 0; j < dims_left - 1; j++) luaL_addchar(b, '\n');
            add_spaces(b, indent + 1);
        }
        if (summarize && n > 2 * PR_EDGE && i == PR_EDGE) {
            luaL_addstring(b, "...");
            i = n - PR_EDGE - 1;
            continue;
        }
        fmt_tensor(b, f, t, d + 1, off + i * t->stride[d], indent + 1, summarize);
    }
    luaL_addchar(b, ']');
}

/* Pushes the PyTorch-style repr of t. */
void ml_lua_push_repr(lua_State *L, ml_tensor *t) {
    if (ml_tensor_is_cuda(t)) { /* the values of a host copy, then the device as PyTorch shows it */
        ml_tensor **h = ml_lua_newbox(L);
        bool prev = ml_set_grad_enabled(false);
        ml_err e = ml_to_device(h, t, ml_cpu());
        ml_set_grad_enabled(prev);
        if (e) ml_lua_error_fn(L, "tostring", e);
        ml_lua_push_repr(L, *h);
        size_t n;
        const char *r = lua_tolstring(L, -1, &n);
        lua_pushlstring(L, r, n - 1); /* without the closing parenthesis */
        lua_pushfstring(L, "%s, device='%s'%s)", lua_tostring(L, -1), ml_device_str(t->storage->device),
                        t->requires_grad ? ", requires_grad=True" : "");
        lua_replace(L, -4);
        lua_pop(L, 2);
        return;
    }
    ml_err e = ml_tensor_plain(t);
    if (e) ml_lua_error_fn(L, "tostring", e);
    const char *prefix = "tensor(";
    const int indent = 7;
    ml_dtype dt = (ml_dtype)t->dtype;
    int64_t numel = ml_tensor_numel(t);
    char suffix[4][128];
    int ns = 0;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, prefix);
    if (numel == 0) {
        if (t->ndim != 1) {
            int n = snprintf(suffix[ns], sizeof suffix[ns], "size=(");
            for (int i = 0; i < t->ndim; i++)
                n += snprintf(suffix[ns] + n, sizeof suffix[ns] - (size_t)n, i ? ", %lld" : "%lld", (long long)t->shape[i]);
            snprintf(suffix[ns] + n, sizeof suffix[ns] - (size_t)n, ")");
            ns++;
        }
        if (dt != ML_F32) snprintf(suffix[ns++], sizeof suffix[0], "dtype=%s", ml_dtype_name(dt));
        luaL_addstring(&b, "[]");
    } else {
        if (dt != ML_F32 && dt != ML_I64 && dt != ML_BOOL)
            snprintf(suffix[ns++], sizeof suffix[0], "dtype=%s", ml_dtype_name(dt));
        bool summarize = numel > PR_THRESHOLD;
        fmt_state f;
        memset(&f, 0, sizeof f);
        f.floating = ml_dtype_is_float(dt);
        f.is_bool = dt == ML_BOOL;
        f.int_mode = true;
        f.max_width = 1;
        if (f.floating) {
            visit(t, 0, t->offset, summarize, stat_fn, &f);
            if (f.any) {
                if (f.int_mode) {
                    if (f.max_abs / f.min_abs > 1000.0 || f.max_abs > 1.0e8) f.sci_mode = true;
                } else if (f.max_abs / f.min_abs > 1000.0 || f.max_abs > 1.0e8 || f.min_abs < 1.0e-4) {
                    f.sci_mode = true;
                }
                visit(t, 0, t->offset, summarize, width_fn, &f);
            }
        } else {
            visit(t, 0, t->offset, summarize, width_fn, &f);
        }
        if (t->ndim == 0) {
            char buf[96];
            fmt_value(&f, t, t->offset, buf, sizeof buf);
            luaL_addstring(&b, buf);
        } else {
            fmt_tensor(&b, &f, t, 0, t->offset, indent, summarize);
        }
    }
    if (t->grad_fn) snprintf(suffix[ns++], sizeof suffix[0], "grad_fn=<%s>", t->grad_fn->name ? t->grad_fn->name : "?");
    else if (t->requires_grad) snprintf(suffix[ns++], sizeof suffix[0], "requires_grad=True");
    luaL_pushresult(&b);
    /* suffixes, wrapping at the line width like torch._tensor_str._add_suffixes */
    size_t len;
    const char *body = lua_tolstring(L, -1, &len);
    const char *nl = NULL;
    for (const char *p = body; *p; p++)
        if (*p == '\n') nl = p;
    int64_t last_line_len = nl ? (int64_t)len - (nl - body) + 1 : (int64_t)len + 2;
    luaL_buffinit(L, &b);
    lua_pushvalue(L, -2);
    luaL_addvalue(&b);
    for (int i = 0; i < ns; i++) {
        int64_t sl = (int64_t)strlen(suffix[i]);
        if (last_line_len + sl + 2 > PR_LINEWIDTH) {
            luaL_addstring(&b, ",\n");
            add_spaces(&b, indent);
            last_line_len = indent + sl;
        } else {
            luaL_addstring(&b, ", ");
            last_line_len += sl + 2;
        }
        luaL_addstring(&b, suffix[i]);
    }
    luaL_addchar(&b, ')');
    luaL_pushresult(&b);
    lua_remove(L, -2);
}

static int t_tostring(lua_State *L) {
    ml_lua_box *b = ml_lua_tobox(L, 1);
    if (!b) return luaL_typeerror(L, 1, ML_LUA_TENSOR_MT);
    if (!b->t) {
        lua_pushliteral(L, "tensor(<closed>)");
        return 1;
    }
    ml_lua_push_repr(L, b->t);
    return 1;
}

static int t_gc(lua_State *L) {
    ml_lua_box *b = ml_lua_tobox_raw(L, 1);
    if (b && b->t) {
        ml_tensor *t = b->t;
        b->t = NULL;
        ml_tensor_release(t);
    }
    return 0;
}

/* -------------------------------------------------------- creation helpers */
typedef struct {
    ml_dtype dtype;
    bool requires_grad;
    bool device_given;
    ml_device device;
} create_opts;

ml_device ml_lua_check_device(lua_State *L, const char *s, const char *fname) {
    ml_device d = ml_cpu();
    if (strcmp(s, "cpu") == 0) return d;
    char *end = NULL;
    long idx = 0;
    if (strcmp(s, "cuda") == 0) idx = 0;
    else if (strncmp(s, "cuda:", 5) == 0 && s[5] >= '0' && s[5] <= '9') {
        idx = strtol(s + 5, &end, 10);
        if (*end || idx > 127) luaL_error(L, "%s: bad device '%s' (expected \"cpu\", \"cuda\" or \"cuda:N\")", fname, s);
    } else {
        luaL_error(L, "%s: bad device '%s' (expected \"cpu\", \"cuda\" or \"cuda:N\")", fname, s);
    }
    if (!ml_cuda_available())
        luaL_error(L, "%s: device '%s' is not available: %s", fname, s, ml_cuda_status());
    if (idx >= ml_cuda_device_count())
        luaL_error(L, "%s: device '%s' does not exist (%d CUDA device%s)", fname, s, ml_cuda_device_count(),
                   ml_cuda_device_count() == 1 ? "" : "s");
    d.type = ML_CUDA;
    d.index = (int8_t)idx;
    return d;
}

static const char *const create_keys[] = {"dtype", "requires_grad", "device", NULL};

static void parse_create_opts(lua_State *L, int idx, const char *fname, ml_dtype def, create_opts *o) {
    ml_lua_check_opts(L, idx, fname, create_keys);
    o->dtype = def;
    o->requires_grad = false;
    o->device_given = false;
    o->device = ml_cpu();
    if (lua_istable(L, idx)) {
        lua_getfield(L, idx, "dtype");
        o->dtype = ml_lua_check_dtype(L, -1, def, fname);
        lua_pop(L, 1);
        o->requires_grad = ml_lua_opt_bool(L, idx, "requires_grad", false, fname);
        lua_getfield(L, idx, "device");
        o->device_given = !lua_isnil(L, -1);
        lua_pop(L, 1);
        const char *dev = ml_lua_opt_str(L, idx, "device", "cpu", fname);
        o->device = ml_lua_check_device(L, dev, fname);
    }
    if (o->requires_grad && !ml_dtype_is_float(o->dtype))
        luaL_error(L, "%s: only floating point tensors can require gradients, got dtype %s", fname,
                   ml_dtype_name(o->dtype));
}

static int finish_create(lua_State *L, const char *fname, ml_err e, ml_tensor **slot, const create_opts *o) {
    if (e) return ml_lua_error_fn(L, fname, e);
    if (o->device.type != ML_CPU) { /* made on the host (the same numbers as there), then moved */
        ml_tensor *d;
        bool prev = ml_set_grad_enabled(false);
        e = ml_to_device(&d, *slot, o->device);
        ml_set_grad_enabled(prev);
        if (e) return ml_lua_error_fn(L, fname, e);
        ml_tensor_release(*slot);
        *slot = d;
    }
    if (o->requires_grad) {
        e = ml_set_requires_grad(*slot, true);
        if (e) return ml_lua_error_fn(L, fname, e);
    }
    ml_lua_account(L);
    return 1;
}

typedef enum { CR_ZEROS, CR_ONES, CR_EMPTY, CR_RAND, CR_RANDN } create_kind;

static int create_shaped(lua_State *L, create_kind k, const char *fname) {
    int64_t shape[ML_MAX_DIMS];
    int next;
    if (lua_isnoneornil(L, 1))
        return luaL_error(L, "%s: expected a shape (sizes as numbers or one table)", fname);
    int ndim = ml_lua_parse_shape(L, 1, fname, shape, &next, false, true);
    create_opts o;
    parse_create_opts(L, next, fname, ML_F32, &o);
    ml_lua_check_nargs(L, next, fname);
    if ((k == CR_RAND || k == CR_RANDN) && !ml_dtype_is_float(o.dtype))
        return luaL_error(L, "%s: dtype %s is not floating point", fname, ml_dtype_name(o.dtype));
    ml_tensor **slot = ml_lua_newbox(L);
    ml_err e;
    switch (k) {
    case CR_ZEROS: e = ml_zeros(slot, o.dtype, ndim, shape); break;
    case CR_ONES: e = ml_ones(slot, o.dtype, ndim, shape); break;
    case CR_EMPTY: e = ml_tensor_empty(slot, o.dtype, ndim, shape); break;
    case CR_RAND: e = ml_rand(slot, o.dtype, ndim, shape); break;
    default: e = ml_randn(slot, o.dtype, ndim, shape); break;
    }
    return finish_create(L, fname, e, slot, &o);
}

static int l_zeros(lua_State *L) { return create_shaped(L, CR_ZEROS, "zeros"); }
static int l_ones(lua_State *L) { return create_shaped(L, CR_ONES, "ones"); }
static int l_empty(lua_State *L) { return create_shaped(L, CR_EMPTY, "empty"); }
static int l_rand(lua_State *L) { return create_shaped(L, CR_RAND, "rand"); }
static int l_randn(lua_State *L) { return create_shaped(L, CR_RANDN, "randn"); }

static double check_fill_value(lua_State *L, int idx, const char *fname) {
    if (lua_type(L, idx) == LUA_TBOOLEAN) return lua_toboolean(L, idx);
    return ml_lua_check_num(L, idx, fname, "fill value");
}

static int l_full(lua_State *L) {
    const char *fname = "full";
    int64_t shape[ML_MAX_DIMS];
    int ndim;
    if (lua_type(L, 1) == LUA_TTABLE) ndim = ml_lua_parse_shape(L, 1, fname, shape, NULL, false, true);
    else if (lua_type(L, 1) == LUA_TNUMBER) {
        shape[0] = ml_lua_check_int(L, 1, fname, "size");
        ndim = 1;
        if (shape[0] < 0) return luaL_error(L, "%s: negative size %I", fname, (lua_Integer)shape[0]);
    } else return luaL_error(L, "%s: argument #1: expected a shape table, got %s", fname, luaL_typename(L, 1));
    double v = check_fill_value(L, 2, fname);
    create_opts o;
    parse_create_opts(L, 3, fname, ML_F32, &o);
    ml_lua_check_nargs(L, 3, fname);
    ml_tensor **slot = ml_lua_newbox(L);
    return finish_create(L, fname, ml_full(slot, o.dtype, ndim, shape, v), slot, &o);
}

static int l_randint(lua_State *L) {
    const char *fname = "randint";
    int64_t lo = 0, hi;
    int si;
    if (lua_type(L, 2) == LUA_TTABLE) {
        hi = ml_lua_check_int(L, 1, fname, "high");
        si = 2;
    } else {
        lo = ml_lua_check_int(L, 1, fname, "low");
        hi = ml_lua_check_int(L, 2, fname, "high");
        si = 3;
    }
    if (hi <= lo)
        return luaL_error(L, "%s: high (%I) must be greater than low (%I)", fname, (lua_Integer)hi, (lua_Integer)lo);
    if (lua_isnoneornil(L, si)) return luaL_error(L, "%s: expected a shape table after low and high", fname);
    int64_t shape[ML_MAX_DIMS];
    int next;
    int ndim = ml_lua_parse_shape(L, si, fname, shape, &next, false, true);
    create_opts o;
    parse_create_opts(L, next, fname, ML_I64, &o);
    ml_lua_check_nargs(L, next, fname);
    ml_tensor **slot = ml_lua_newbox(L);
    return finish_create(L, fname, ml_randint(slot, o.dtype, lo, hi, ndim, shape), slot, &o);
}

static int l_arange(lua_State *L) {
    const char *fname = "arange";
    int n = 0;
    bool all_int = true;
    double a[3];
    while (n < 3 && lua_type(L, n + 1) == LUA_TNUMBER) {
        if (!lua_isinteger(L, n + 1)) all_int = false;
        a[n] = (double)lua_tonumber(L, n + 1);
        n++;
    }
    if (n == 0) return luaL_error(L, "%s: expected (end) or (start, end[, step]) numbers, got %s", fname, luaL_typename(L, 1));
    double start = 0, end, step = 1;
    if (n == 1) end = a[0];
    else { start = a[0]; end = a[1]; if (n == 3) step = a[2]; }
    create_opts o;
    parse_create_opts(L, n + 1, fname, all_int ? ML_I64 : ML_F32, &o);
    ml_lua_check_nargs(L, n + 1, fname);
    if (!isfinite(start) || !isfinite(end) || !isfinite(step))
        return luaL_error(L, "%s: start, end and step must be finite (got %f, %f, %f)", fname, start, end, step);
    if (step == 0) return luaL_error(L, "%s: step must be nonzero", fname);
    if ((end - start) / step < 0)
        return luaL_error(L, "%s: upper bound and lower bound are inconsistent with the step sign (start %f, end %f, step %f)",
                          fname, start, end, step);
    if (ceil((end - start) / step) > 1e15) return luaL_error(L, "%s: too many elements", fname);
    ml_tensor **slot = ml_lua_newbox(L);
    return finish_create(L, fname, ml_arange(slot, o.dtype, start, end, step), slot, &o);
}

static int l_linspace(lua_State *L) {
    const char *fname = "linspace";
    double start = ml_lua_check_num(L, 1, fname, "start"), end = ml_lua_check_num(L, 2, fname, "end");
    int64_t steps = ml_lua_check_int(L, 3, fname, "steps");
    if (steps < 0) return luaL_error(L, "%s: steps must be >= 0, got %I", fname, (lua_Integer)steps);
    if (steps > (INT64_C(1) << 48)) return luaL_error(L, "%s: steps %I is too large", fname, (lua_Integer)steps);
    create_opts o;
    parse_create_opts(L, 4, fname, ML_F32, &o);
    ml_lua_check_nargs(L, 4, fname);
    ml_tensor **slot = ml_lua_newbox(L);
    return finish_create(L, fname, ml_linspace(slot, o.dtype, start, end, steps), slot, &o);
}

static int l_eye(lua_State *L) {
    const char *fname = "eye";
    int64_t n = ml_lua_check_int(L, 1, fname, "n"), m = n;
    int oi = 2;
    if (lua_type(L, 2) == LUA_TNUMBER) { m = ml_lua_check_int(L, 2, fname, "m"); oi = 3; }
    if (n < 0 || m < 0) return luaL_error(L, "%s: sizes must be >= 0, got %I x %I", fname, (lua_Integer)n, (lua_Integer)m);
    int64_t sh[2] = {n, m};
    check_numel(L, fname, 2, sh);
    create_opts o;
    parse_create_opts(L, oi, fname, ML_F32, &o);
    ml_lua_check_nargs(L, oi, fname);
    ml_tensor **slot = ml_lua_newbox(L);
    return finish_create(L, fname, ml_eye(slot, o.dtype, n, m), slot, &o);
}

typedef enum { LK_ZEROS, LK_ONES, LK_EMPTY, LK_FULL, LK_RAND, LK_RANDN } like_kind;

static int create_like(lua_State *L, like_kind k, const char *fname) {
    ml_tensor *t = ml_lua_check_tensor_fn(L, 1, fname);
    double v = 0;
    int oi = 2;
    if (k == LK_FULL) { v = check_fill_value(L, 2, fname); oi = 3; }
    create_opts o;
    parse_create_opts(L, oi, fname, (ml_dtype)t->dtype, &o);
    if (!o.device_given) o.device = ml_tensor_device(t);
    ml_lua_check_nargs(L, oi, fname);
    if ((k == LK_RAND || k == LK_RANDN) && !ml_dtype_is_float(o.dtype))
        return luaL_error(L, "%s: dtype %s is not floating point", fname, ml_dtype_name(o.dtype));
    int64_t shape[ML_MAX_DIMS];
    int ndim = t->ndim;
    memcpy(shape, t->shape, sizeof shape);
    ml_tensor **slot = ml_lua_newbox(L);
    ml_err e;
    switch (k) {
    case LK_ZEROS: e = ml_zeros(slot, o.dtype, ndim, shape); break;
    case LK_ONES: e = ml_ones(slot, o.dtype, ndim, shape); break;
    case LK_EMPTY: e = ml_tensor_empty(slot, o.dtype, ndim, shape); break;
    case LK_FULL: e = ml_full(slot, o.dtype, ndim, shape, v); break;
    case LK_RAND: e = ml_rand(slot, o.dtype, ndim, shape); break;
    default: e = ml_randn(slot, o.dtype, ndim, shape); break;
    }
    return finish_create(L, fname, e, slot, &o);
}

static int l_zeros_like(lua_State *L) { return create_like(L, LK_ZEROS, "zeros_like"); }
static int l_ones_like(lua_State *L) { return create_like(L, LK_ONES, "ones_like"); }
static int l_empty_like(lua_State *L) { return create_like(L, LK_EMPTY, "empty_like"); }
static int l_full_like(lua_State *L) { return create_like(L, LK_FULL, "full_like"); }
static int l_rand_like(lua_State *L) { return create_like(L, LK_RAND, "rand_like"); }
static int l_randn_like(lua_State *L) { return create_like(L, LK_RANDN, "randn_like"); }

static int l_tensor(lua_State *L) {
    const char *fname = "tensor";
    create_opts o;
    int tp = lua_type(L, 1);
    ml_lua_box *src = ml_lua_tobox(L, 1);
    if (src && !src->t) return luaL_error(L, "%s: argument #1: tensor is closed", fname);
    ml_dtype def = src ? (ml_dtype)src->t->dtype : tp == LUA_TBOOLEAN ? ML_BOOL : ML_F32;
    parse_create_opts(L, 2, fname, def, &o);
    ml_lua_check_nargs(L, 2, fname);
    bool dtype_given = false;
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "dtype");
        dtype_given = !lua_isnil(L, -1);
        lua_pop(L, 1);
    }
    if (src) {
        ml_tensor *s = src->t;
        ml_err e = ml_tensor_plain(s);
        if (e) return ml_lua_error_fn(L, fname, e);
        ml_tensor **slot = ml_lua_newbox(L);
        e = ml_tensor_empty(slot, o.dtype, s->ndim, s->shape);
        if (!e) e = ml_copy_(*slot, s);
        if (!e) (*slot)->storage->version = 0;
        return finish_create(L, fname, e, slot, &o);
    }
    if (tp == LUA_TNUMBER || tp == LUA_TBOOLEAN) {
        ml_tensor **slot = ml_lua_newbox(L);
        ml_err e = ml_tensor_empty(slot, o.dtype, 0, NULL);
        if (!e) ml_lua_write_value(L, 1, *slot, 0);
        return finish_create(L, fname, e, slot, &o);
    }
    if (tp != LUA_TTABLE)
        return luaL_error(L, "%s: argument #1: expected a (nested) table, number, boolean or tensor, got %s", fname,
                          luaL_typename(L, 1));
    if (lua_rawlen(L, 1) == 0) {
        lua_pushnil(L);
        if (lua_next(L, 1)) return luaL_error(L, "%s: argument #1: expected a list of numbers, got a table with non-list keys", fname);
    }
    ml_tensor **slot = ml_lua_newbox(L);
    ml_tensor *t = *slot = ml_lua_table_to_tensor(L, 1, dtype_given ? (int)o.dtype : -1, fname);
    if (o.requires_grad && !ml_dtype_is_float((ml_dtype)t->dtype))
        return luaL_error(L, "%s: only floating point tensors can require gradients, got dtype %s", fname,
                          ml_dtype_name((ml_dtype)t->dtype));
    return finish_create(L, fname, ML_OK, slot, &o);
}

/* ------------------------------------------------------- cat / stack / where */
/* Collect the tensors of the list at idx into an array (a GC-managed userdata when large). */
ml_tensor **ml_lua_tensor_list(lua_State *L, int idx, const char *fname, int *n_out) {
    if (!lua_istable(L, idx))
        luaL_error(L, "%s: argument #%d: expected a list of tensors, got %s", fname, idx, luaL_typename(L, idx));
    lua_Unsigned n = lua_rawlen(L, idx);
    if (n == 0) luaL_error(L, "%s: expected a non-empty list of tensors", fname);
    if (n > (1u << 24)) luaL_error(L, "%s: list of %d tensors is too long", fname, (int)n);
    ml_tensor **ts = (ml_tensor **)lua_newuserdatauv(L, n * sizeof *ts, 0);
    for (lua_Unsigned i = 0; i < n; i++) {
        lua_rawgeti(L, idx, (lua_Integer)i + 1);
        ml_lua_box *b = ml_lua_tobox_raw(L, -1); /* cat/stack take any layout */
        if (!b) luaL_error(L, "%s: element %d of the list: expected a tensor, got %s", fname, (int)i + 1, luaL_typename(L, -1));
        if (!b->t) luaL_error(L, "%s: element %d of the list: tensor is closed", fname, (int)i + 1);
        cuda_gate(L, b->t, fname);
        ts[i] = b->t;
        lua_pop(L, 1);
    }
    *n_out = (int)n;
    return ts; /* the userdata stays on the stack */
}

static int cat_stack(lua_State *L, bool stack, const char *fname) {
    ml_lua_check_nargs(L, 2, fname);
    int dim = (int)ml_lua_opt_int(L, 2, 0, fname, "dim");
    lua_settop(L, 2);
    int n;
    ml_tensor **ts = ml_lua_tensor_list(L, 1, fname, &n); /* scratch array at index 3 */
    ml_tensor **slot = ml_lua_newbox(L);
    ml_err e = stack ? ml_stack(slot, n, ts, dim) : ml_cat(slot, n, ts, dim);
    if (e) return ml_lua_error_fn(L, fname, e);
    ml_lua_account(L);
    return 1;
}
static int l_cat(lua_State *L) { return cat_stack(L, false, "cat"); }
static int l_stack(lua_State *L) { return cat_stack(L, true, "stack"); }

/* Tensor at idx, or a number converted to a 0-d tensor of dtype dt (NEW reference in *tmp). */
ml_tensor *ml_lua_tensor_or_scalar(lua_State *L, int idx, ml_dtype dt, const char *fname, ml_tensor **tmp) {
    *tmp = NULL;
    ml_lua_box *b = ml_lua_tobox(L, idx);
    if (b) {
        if (!b->t) luaL_error(L, "%s: argument #%d: tensor is closed", fname, idx);
        cuda_gate(L, b->t, fname);
        return b->t;
    }
    int tp = lua_type(L, idx);
    if (tp != LUA_TNUMBER && tp != LUA_TBOOLEAN)
        luaL_error(L, "%s: argument #%d: expected a tensor or a number, got %s", fname, idx, luaL_typename(L, idx));
    ml_err e = ml_tensor_empty(tmp, dt, 0, NULL);
    if (e) ml_lua_error_fn(L, fname, e);
    ml_lua_write_value(L, idx, *tmp, 0);
    return *tmp;
}

static int l_where(lua_State *L) {
    const char *fname = "where";
    ml_lua_check_nargs(L, 3, fname);
    ml_tensor *cond = ml_lua_check_tensor_fn(L, 1, fname);
    ml_tensor *ta = ml_lua_totensor(L, 2), *tb = ml_lua_totensor(L, 3);
    ml_dtype dt = ta ? (ml_dtype)ta->dtype : tb ? (ml_dtype)tb->dtype : ML_F32;
    /* check both before allocating */
    for (int i = 2; i <= 3; i++) {
        ml_lua_box *bx = ml_lua_tobox(L, i);
        if (bx && !bx->t) return luaL_error(L, "%s: argument #%d: tensor is closed", fname, i);
        if (!bx && lua_type(L, i) != LUA_TNUMBER && lua_type(L, i) != LUA_TBOOLEAN)
            return luaL_error(L, "%s: argument #%d: expected a tensor or a number, got %s", fname, i, luaL_typename(L, i));
    }
    ml_tensor **slot = ml_lua_newbox(L);
    ml_tensor *tmpa, *tmpb = NULL;
    ml_tensor *a = ml_lua_tensor_or_scalar(L, 2, dt, fname, &tmpa);
    ml_err e = ML_OK;
    ml_tensor *bb = NULL;
    if (!tb) {
        e = ml_tensor_empty(&tmpb, dt, 0, NULL);
        if (!e) ml_lua_write_value(L, 3, tmpb, 0);
        bb = tmpb;
    } else bb = tb;
    if (!e) e = ml_where(slot, cond, a, bb);
    ml_tensor_release(tmpa);
    ml_tensor_release(tmpb);
    if (e) return ml_lua_error_fn(L, fname, e);
    ml_lua_account(L);
    return 1;
}

/* ----------------------------------------------------------- grad mode guard */
#define GUARD_MT "medlua.GradGuard"
typedef struct {
    bool prev;
    bool active;
} grad_guard;

static void push_guard(lua_State *L, bool enable) {
    grad_guard *g = (grad_guard *)lua_newuserdatauv(L, sizeof *g, 0);
    g->active = false;
    luaL_setmetatable(L, GUARD_MT);
    g->prev = ml_set_grad_enabled(enable);
    g->active = true;
}

static int guard_close(lua_State *L) {
    grad_guard *g = (grad_guard *)luaL_checkudata(L, 1, GUARD_MT);
    if (g->active) {
        ml_set_grad_enabled(g->prev);
        g->active = false;
    }
    return 0;
}

static int guard_tostring(lua_State *L) {
    grad_guard *g = (grad_guard *)luaL_checkudata(L, 1, GUARD_MT);
    lua_pushfstring(L, "grad mode guard (%s, restores %s)", g->active ? "active" : "closed",
                    g->prev ? "enabled" : "disabled");
    return 1;
}

/* f(...) with grad mode set to `enable`, restoring the previous mode on return or error. */
static int run_with_grad_mode(lua_State *L, bool enable, int fidx) {
    int nargs = lua_gettop(L) - fidx;
    bool prev = ml_set_grad_enabled(enable);
    int st = lua_pcall(L, nargs, LUA_MULTRET, 0);
    ml_set_grad_enabled(prev);
    if (st != LUA_OK) return lua_error(L);
    return lua_gettop(L) - fidx + 1;
}

static int l_no_grad(lua_State *L) {
    if (lua_isfunction(L, 1)) return run_with_grad_mode(L, false, 1);
    if (!lua_isnoneornil(L, 1))
        return luaL_error(L, "no_grad: expected nothing (guard form) or a function, got %s", luaL_typename(L, 1));
    push_guard(L, false);
    return 1;
}

static int l_enable_grad(lua_State *L) {
    if (lua_isfunction(L, 1)) return run_with_grad_mode(L, true, 1);
    if (!lua_isnoneornil(L, 1))
        return luaL_error(L, "enable_grad: expected nothing (guard form) or a function, got %s", luaL_typename(L, 1));
    push_guard(L, true);
    return 1;
}

static int l_set_grad_enabled(lua_State *L) {
    if (lua_type(L, 1) != LUA_TBOOLEAN)
        return luaL_error(L, "set_grad_enabled: argument #1: expected a boolean, got %s", luaL_typename(L, 1));
    bool on = lua_toboolean(L, 1);
    if (lua_isfunction(L, 2)) return run_with_grad_mode(L, on, 2);
    push_guard(L, on); /* usable as `local g <close> = medlua.set_grad_enabled(false)` */
    return 1;
}

static int l_is_grad_enabled(lua_State *L) {
    lua_pushboolean(L, ml_grad_enabled());
    return 1;
}

/* ---------------------------------------------------------------- globals */
static int l_mem(lua_State *L) {
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, (lua_Integer)ml_mem_live(ML_CPU));
    lua_setfield(L, -2, "cpu");
    lua_pushinteger(L, (lua_Integer)ml_mem_peak(ML_CPU));
    lua_setfield(L, -2, "cpu_peak");
    lua_pushinteger(L, (lua_Integer)ml_tensor_live_count());
    lua_setfield(L, -2, "tensors");
    if (ml_mem_peak(ML_CUDA) > 0) {
        lua_pushinteger(L, (lua_Integer)ml_mem_live(ML_CUDA));
        lua_setfield(L, -2, "cuda");
        lua_pushinteger(L, (lua_Integer)ml_mem_peak(ML_CUDA));
        lua_setfield(L, -2, "cuda_peak");
        ml_cuda_mem m;
        ml_cuda_mem_stats(0, &m);
        lua_pushinteger(L, (lua_Integer)m.cached);
        lua_setfield(L, -2, "cuda_cached");
    }
    return 1;
}

static int l_reset_peak_mem(lua_State *L) {
    (void)L;
    ml_mem_reset_peak();
    return 0;
}

static int l_threads(lua_State *L) {
    if (!lua_isnoneornil(L, 1)) {
        int64_t n = ml_lua_check_int(L, 1, "threads", "thread count");
        if (n < 1 || n > 4096) return luaL_error(L, "threads: thread count must be in 1..4096, got %I", (lua_Integer)n);
        ml_set_num_threads((int)n);
    }
    lua_pushinteger(L, ml_num_threads());
    return 1;
}

static int l_manual_seed(lua_State *L) {
    ml_lua_check_nargs(L, 1, "manual_seed");
    int64_t s = ml_lua_check_int(L, 1, "manual_seed", "seed");
    ml_manual_seed((uint64_t)s);
    return 0;
}

static int l_get_rng_state(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)ml_rng_seed());
    lua_pushinteger(L, (lua_Integer)ml_rng_offset());
    return 2;
}

static int l_set_rng_state(lua_State *L) {
    int64_t s = ml_lua_check_int(L, 1, "set_rng_state", "seed");
    int64_t off = ml_lua_check_int(L, 2, "set_rng_state", "offset");
    ml_rng_set_state((uint64_t)s, (uint64_t)off);
    return 0;
}

static int l_is_tensor(lua_State *L) {
    lua_pushboolean(L, ml_lua_tobox_raw(L, 1) != NULL);
    return 1;
}

static int l_dtypes(lua_State *L) {
    lua_createtable(L, ML_NDTYPES, 0);
    for (int i = 0; i < ML_NDTYPES; i++) {
        lua_pushstring(L, ml_dtype_name((ml_dtype)i));
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static const luaL_Reg module_funcs[] = {
    {"tensor", l_tensor},
    {"zeros", l_zeros},
    {"ones", l_ones},
    {"empty", l_empty},
    {"full", l_full},
    {"rand", l_rand},
    {"randn", l_randn},
    {"randint", l_randint},
    {"arange", l_arange},
    {"linspace", l_linspace},
    {"eye", l_eye},
    {"zeros_like", l_zeros_like},
    {"ones_like", l_ones_like},
    {"empty_like", l_empty_like},
    {"full_like", l_full_like},
    {"rand_like", l_rand_like},
    {"randn_like", l_randn_like},
    {"cat", l_cat},
    {"stack", l_stack},
    {"where", l_where},
    {"no_grad", l_no_grad},
    {"enable_grad", l_enable_grad},
    {"set_grad_enabled", l_set_grad_enabled},
    {"is_grad_enabled", l_is_grad_enabled},
    {"mem", l_mem},
    {"reset_peak_mem", l_reset_peak_mem},
    {"threads", l_threads},
    {"manual_seed", l_manual_seed},
    {"get_rng_state", l_get_rng_state},
    {"set_rng_state", l_set_rng_state},
    {"is_tensor", l_is_tensor},
    {"dtypes", l_dtypes},
    {NULL, NULL}};

/* Tensor methods that are also module functions, torch-style: medlua.exp(t), medlua.sum(t, 0), ... */
static const char *const method_aliases[] = {
    "add", "sub", "mul", "div", "pow", "maximum", "minimum", "fmod", "atan2", "eq", "ne", "lt", "le", "gt", "ge",
    "logical_and", "logical_or", "logical_xor", "logical_not", "neg", "exp", "log", "sqrt", "rsqrt", "abs", "sign",
    "floor", "ceil", "round", "trunc", "sin", "cos", "tan", "tanh", "sigmoid", "relu", "gelu", "silu", "softplus",
    "log1p", "expm1", "reciprocal", "square", "erf", "isnan", "isinf", "clamp", "sum", "mean", "prod", "amax", "amin",
    "logsumexp", "var", "std", "norm", "max", "min", "argmax", "argmin", "cumsum", "quantile", "matmul", "mm", "bmm", "softmax",
    "log_softmax", "index_select", "masked_select", "masked_fill", "gather", "one_hot", "reshape", "flatten",
    "permute", "transpose", "squeeze", "unsqueeze", "narrow", "select", "clone", "detach", "numel", NULL};

static int preload_functional(lua_State *L) {
    lua_pushvalue(L, lua_upvalueindex(1));
    return 1;
}

int luaopen_medlua(lua_State *L) {
    /* metatable */
    luaL_newmetatable(L, ML_LUA_TENSOR_MT);
    int mt = lua_gettop(L);
    g_mt = lua_topointer(L, mt);
    lua_pushvalue(L, mt);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &g_mt_key);
    lua_pushcfunction(L, t_gc);
    lua_setfield(L, mt, "__gc");
    lua_pushcfunction(L, t_gc);
    lua_setfield(L, mt, "__close");
    lua_pushcfunction(L, t_tostring);
    lua_setfield(L, mt, "__tostring");
    ml_lua_tensor_setup(L, mt); /* methods, __index, __newindex, arithmetic; pushes the method table */
    int methods = lua_gettop(L);

    /* grad guard metatable */
    luaL_newmetatable(L, GUARD_MT);
    lua_pushcfunction(L, guard_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, guard_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);

    /* module table */
    lua_newtable(L);
    int mod = lua_gettop(L);
    luaL_setfuncs(L, module_funcs, 0);
    for (int i = 0; method_aliases[i]; i++) {
        if (lua_getfield(L, mod, method_aliases[i]) != LUA_TNIL) { lua_pop(L, 1); continue; }
        lua_pop(L, 1);
        if (lua_getfield(L, methods, method_aliases[i]) == LUA_TNIL) { lua_pop(L, 1); continue; }
        lua_setfield(L, mod, method_aliases[i]);
    }
    lua_pushliteral(L, ML_LUA_VERSION);
    lua_setfield(L, mod, "version");
    lua_pushvalue(L, methods);
    lua_setfield(L, mod, "Tensor");
    ml_lua_open_cuda(L);
    lua_setfield(L, mod, "cuda");

    ml_lua_open_nn(L); /* pushes F */
    lua_pushvalue(L, -1);
    lua_setfield(L, mod, "F");
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, preload_functional, 1);
    lua_setfield(L, -2, "medlua.nn.functional");
    lua_pop(L, 2);

    /* other bindings add their functions to the module table */
    lua_settop(L, mod);
    ml_lua_open_util(L);
    lua_settop(L, mod);
    ml_lua_open_io(L);
    lua_settop(L, mod);
    ml_lua_open_volume(L);
    lua_settop(L, mod);
    ml_lua_open_metrics(L);
    lua_settop(L, mod);
    ml_lua_open_data(L);
    lua_settop(L, mod);

    /* memory: the main thread runs a full GC when an allocation fails */
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    g_main_L = lua_tothread(L, -1);
    lua_pop(L, 1);
    ml_mark_main_thread();
    ml_set_oom_handler(oom_handler, NULL);
    return 1;
}
