/* medlua Lua bindings: shared helpers for every *_lua.c file (not part of the Lua-free core).
 *
 * A Lua tensor is a full userdata holding a box {ml_tensor *t} with metatable "medlua.Tensor".
 * The box owns one reference; __gc and __close release it and set the pointer to NULL, after
 * which any use raises "tensor is closed".
 *
 * Pattern for a binding (see tensor_ops_lua.c):
 *     check every argument (luaL_check*, ml_lua_check_tensor_fn, ...)      -- may longjmp
 *     ml_tensor **slot = ml_lua_newbox(L);  -- pushes a closed box (Lua memory error here is safe)
 *     ml_err e = ml_op(slot, ...);          -- core op writes its NEW reference into the box
 *     if (e) return ml_lua_error(L, e);     -- release temporaries BEFORE this (it longjmps)
 *     ml_lua_account(L);                    -- tell Lua's GC about the bytes the op allocated
 *     return 1;
 * or simply ml_lua_push_tensor(L, t) for a tensor already held in a C variable. */
#ifndef ML_TENSOR_LUA_H
#define ML_TENSOR_LUA_H

#include <lauxlib.h>
#include <lua.h>

#include "ml_tensor.h"

#define ML_LUA_TENSOR_MT "medlua.Tensor"
#define ML_LUA_VERSION "0.1.0"

typedef struct ml_lua_box {
    ml_tensor *t;
} ml_lua_box;

/* The tensor at idx; raises "bad argument" (not a tensor) or "tensor is closed". */
ml_tensor *ml_lua_check_tensor(lua_State *L, int idx);
/* Same, with the function name in the message: "<fname>: argument #2: expected a tensor, got nil". */
ml_tensor *ml_lua_check_tensor_fn(lua_State *L, int idx, const char *fname);
/* nil/none -> NULL, otherwise as ml_lua_check_tensor_fn. */
ml_tensor *ml_lua_opt_tensor_fn(lua_State *L, int idx, const char *fname);
/* The box at idx if it is a tensor userdata (open or closed), else NULL. A tensor in a backend
 * layout (ML_LAYOUT_NC16, ...) is converted to plain strides in place first, so every binding sees
 * plain tensors; this raises only if that conversion fails (out of memory). */
ml_lua_box *ml_lua_tobox(lua_State *L, int idx);
/* Same without the conversion; never raises. For __gc/__close and the few bindings whose core ops
 * take backend layouts (conv, batch_norm, binary arithmetic, cat). */
ml_lua_box *ml_lua_tobox_raw(lua_State *L, int idx);
/* ml_lua_check_tensor_fn without the conversion to plain strides. */
ml_tensor *ml_lua_check_tensor_any_fn(lua_State *L, int idx, const char *fname);
/* The tensor at idx if it is an open tensor, else NULL. Never raises. */
ml_tensor *ml_lua_totensor(lua_State *L, int idx);
/* "cpu", "cuda", "cuda:N" -> a device; a Lua error naming fname when unknown or not available */
ml_device ml_lua_check_device(lua_State *L, const char *s, const char *fname);
/* pushes the medlua.cuda table (modules/cuda/cuda_lua.c) */
void ml_lua_open_cuda(lua_State *L);

/* Push a tensor (steals the reference) and account its memory to the GC. t may be NULL: pushes nil. */
void ml_lua_push_tensor(lua_State *L, ml_tensor *t);
/* Push a tensor, taking a new reference (the caller keeps its own). */
void ml_lua_push_tensor_retain(lua_State *L, ml_tensor *t);
/* Push an empty (closed) tensor box and return its slot, for ops that write *out directly. */
ml_tensor **ml_lua_newbox(lua_State *L);
/* Tell Lua's GC about tensor bytes allocated since the last call (LUA_GCSTEP). */
void ml_lua_account(lua_State *L);

/* Raise the core's last error message (ml_errmsg()). Never returns. */
int ml_lua_error(lua_State *L, ml_err e);
/* Same, but prefixed with "<fname>: " unless the message already names fname. */
int ml_lua_error_fn(lua_State *L, const char *fname, ml_err e);

/* Argument helpers that name the function in their messages. */
int64_t ml_lua_check_int(lua_State *L, int idx, const char *fname, const char *what);
int64_t ml_lua_opt_int(lua_State *L, int idx, int64_t def, const char *fname, const char *what);
double ml_lua_check_num(lua_State *L, int idx, const char *fname, const char *what);
void ml_lua_check_nargs(lua_State *L, int max, const char *fname);
/* Options tables: idx may be none/nil (-> no options) or a table whose keys are all in `allowed`
 * (NULL-terminated); anything else raises "<fname>: unknown option 'x' (expected one of: ...)". */
void ml_lua_check_opts(lua_State *L, int idx, const char *fname, const char *const *allowed);
bool ml_lua_opt_bool(lua_State *L, int idx, const char *key, bool def, const char *fname);
double ml_lua_opt_num(lua_State *L, int idx, const char *key, double def, const char *fname);
int64_t ml_lua_opt_intfield(lua_State *L, int idx, const char *key, int64_t def, const char *fname);
const char *ml_lua_opt_str(lua_State *L, int idx, const char *key, const char *def, const char *fname);
/* opts.<key> as a tensor or NULL (borrowed; the table keeps it alive). */
ml_tensor *ml_lua_opt_tensorfield(lua_State *L, int idx, const char *key, const char *fname);
/* A dtype name at idx ("float32", "f64", ...) or def when nil/none. */
ml_dtype ml_lua_check_dtype(lua_State *L, int idx, ml_dtype def, const char *fname);

/* ---- internal to the tensor bindings (tensor_lua.c, tensor_ops_lua.c) */
/* Shape from varargs integers starting at `first`, or one table there. *next = index after it. */
int ml_lua_parse_shape(lua_State *L, int first, const char *fname, int64_t *shape, int *next, bool allow_neg1,
                       bool check_size);
int64_t ml_lua_elem_offset(const ml_tensor *t, const int64_t *idx);
double ml_lua_read_d(const ml_tensor *t, int64_t off);
int64_t ml_lua_read_i(const ml_tensor *t, int64_t off);
void ml_lua_push_elem(lua_State *L, const ml_tensor *t, int64_t off);
void ml_lua_write_elem(ml_tensor *t, int64_t off, bool isint, int64_t iv, double dv);
bool ml_lua_write_value(lua_State *L, int idx, ml_tensor *t, int64_t off);
/* Nested table -> new contiguous tensor (dtype < 0: float32, or bool if all leaves are booleans). */
ml_tensor *ml_lua_table_to_tensor(lua_State *L, int idx, int dtype, const char *fname);
void ml_lua_push_list(lua_State *L, ml_tensor *t);
void ml_lua_push_repr(lua_State *L, ml_tensor *t);
/* Tensors of the list at idx; pushes a scratch userdata holding the array. */
ml_tensor **ml_lua_tensor_list(lua_State *L, int idx, const char *fname, int *n); /* any layout */
/* Tensor at idx or a number/boolean as a new 0-d tensor of dtype dt (*tmp = that new reference). */
ml_tensor *ml_lua_tensor_or_scalar(lua_State *L, int idx, ml_dtype dt, const char *fname, ml_tensor **tmp);
/* Fills the Tensor metatable at mt (methods, __index, __newindex, arithmetic) and pushes the
 * method table. */
void ml_lua_tensor_setup(lua_State *L, int mt);

/* Openers. luaopen_medlua builds the medlua table (with medlua.F) and registers
 * package.preload["medlua.nn.functional"]. */
int luaopen_medlua(lua_State *L);
/* nn_lua.c: pushes the medlua.F table. */
int ml_lua_open_nn(lua_State *L);
/* Extensions from other bindings: each adds its functions to the medlua table on top of the
 * stack (util: modules/nn/optim_lua.c; io: modules/io/io_lua.c). A new binding adds its opener
 * here and a call in luaopen_medlua. */
int ml_lua_open_util(lua_State *L);
int ml_lua_open_io(lua_State *L);
int ml_lua_open_volume(lua_State *L); /* modules/volume/volume_lua.c: medlua._volume */
int ml_lua_open_metrics(lua_State *L); /* modules/nn/metrics_lua.c: medlua._metrics */
int ml_lua_open_data(lua_State *L); /* modules/data/data_lua.c: medlua._data */

#endif
