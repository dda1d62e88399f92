/* medlua tensor core: one tensor type, refcounted storage, views, autograd tape.
 * Lua-free: never include lua.h here or in any core .c file.
 *
 * Conventions
 *  - Every op returns ml_err. On ML_OK the out-pointer holds a NEW reference
 *    (caller owns it, releases with ml_tensor_release). On error *out is left NULL
 *    and ml_errmsg() holds a message naming the op and the shapes.
 *  - Inputs are borrowed; ops retain what they keep (views, autograd saves).
 *  - Shapes/strides are in elements; rank 0..ML_MAX_DIMS; offset in elements.
 *  - Autograd: an op records a node when ml_grad_enabled() and any input
 *    requires_grad. See "Autograd" below.
 */
#ifndef ML_TENSOR_H
#define ML_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ML_MAX_DIMS 8
#define ML_NODE_MAX_IN 8
#define ML_NODE_MAX_OUT 4
#define ML_NODE_MAX_SAVED 8
#define ML_NODE_PARAM_BYTES 256

/* ------------------------------------------------------------------ errors */
typedef enum {
    ML_OK = 0,
    ML_ERR_ARG,        /* bad argument value */
    ML_ERR_SHAPE,      /* shapes do not fit */
    ML_ERR_DTYPE,      /* dtype not supported by the op */
    ML_ERR_DEVICE,     /* device mismatch / not available */
    ML_ERR_DIM,        /* dimension out of range */
    ML_ERR_OOM,        /* allocation failed (after GC + retry) */
    ML_ERR_IO,         /* file / format problem */
    ML_ERR_GRAD,       /* autograd problem: no rule, freed graph, version mismatch */
    ML_ERR_UNSUPPORTED,/* valid request the backend cannot do */
    ML_ERR_INTERNAL    /* library (oneDNN, ...) failure */
} ml_err;

/* Thread-local last error message. ml_seterr formats it and returns code. */
ml_err ml_seterr(ml_err code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *ml_errmsg(void);
const char *ml_errname(ml_err code);
/* Format a shape as "[2, 3, 4]" into buf (thread-local ring buffer if buf==NULL). */
const char *ml_shape_str(int ndim, const int64_t *shape);

/* ------------------------------------------------------------------ dtypes */
typedef enum {
    ML_F32 = 0, ML_F64, ML_I32, ML_I64, ML_U8, ML_BOOL, ML_BF16, ML_F16,
    ML_NDTYPES
} ml_dtype;

size_t ml_dtype_size(ml_dtype dt);
const char *ml_dtype_name(ml_dtype dt);        /* "float32", "int64", "bool", ... */
int ml_dtype_from_name(const char *name);        /* accepts "f32","float32","float","double",...; -1 if unknown */
bool ml_dtype_is_float(ml_dtype dt);             /* f32 f64 bf16 f16 */
/* Result dtype of a binary op (PyTorch-like promotion: float > int64 > int32 > u8 > bool). */
ml_dtype ml_dtype_promote(ml_dtype a, ml_dtype b);

/* half <-> float helpers (storage types) */
float ml_bf16_to_f32(uint16_t h);
uint16_t ml_f32_to_bf16(float f);
float ml_f16_to_f32(uint16_t h);
uint16_t ml_f32_to_f16(float f);

/* ----------------------------------------------------------------- devices */
typedef enum { ML_CPU = 0, ML_CUDA = 1 } ml_device_type;
typedef struct { int8_t type; int8_t index; } ml_device;
static inline ml_device ml_cpu(void) { ml_device d = {ML_CPU, 0}; return d; }
static inline bool ml_device_eq(ml_device a, ml_device b) { return a.type == b.type && a.index == b.index; }
const char *ml_device_str(ml_device d); /* "cpu", "cuda:0" */

/* ----------------------------------------------------------------- storage */
typedef struct ml_storage {
    void *data;
    size_t nbytes;
    int refcount;        /* atomic */
    uint32_t version;    /* bumped by every in-place write (autograd check) */
    uint32_t hist_gen;   /* bumped when autograd records an in-place op on a tensor over this storage (the
                          * tensor's history moves to that op) or cuts one (fill_ of a tensor in a graph):
                          * other tensors over the storage then no longer match their history */
    ml_device device;
    void (*free_fn)(struct ml_storage *); /* NULL: default allocator */
    void *ctx;
} ml_storage;

/* --------------------------------------------------------------- the tensor */
struct ml_node;

typedef struct ml_tensor {
    int refcount;             /* atomic */
    int8_t dtype;             /* ml_dtype */
    int8_t ndim;
    bool requires_grad;
    bool closed;              /* set by the binding on <close>; core ops never see closed tensors */
    int64_t shape[ML_MAX_DIMS];
    int64_t stride[ML_MAX_DIMS];
    int64_t offset;
    ml_storage *storage;
    /* autograd */
    struct ml_tensor *grad;   /* accumulated gradient (leaves, and non-leaves with retain_grad) */
    struct ml_node *grad_fn;  /* node that produced this tensor (retained) or NULL for leaves */
    int8_t grad_fn_out;       /* which output of grad_fn */
    uint32_t hist_gen;        /* storage->hist_gen when this tensor's values and grad_fn last agreed */
    bool retain_grad;
    /* backend layout: 0 = plain strided. Non-zero = opaque blocked layout owned by a backend
     * (e.g. oneDNN); layout_desc describes it. Any op that needs plain strides calls
     * ml_tensor_plain(). */
    int32_t layout;
    void *layout_desc;
    void (*layout_free)(void *);
} ml_tensor;

/* ---------------------------------------------------------- memory + hooks */
/* Live bytes per device type; also total allocated since last ml_mem_take_pending(). */
int64_t ml_mem_live(ml_device_type dev);
int64_t ml_mem_peak(ml_device_type dev);
void ml_mem_reset_peak(void);
int64_t ml_mem_take_pending(void);   /* bytes allocated since the last call (for GC pressure) */
int64_t ml_tensor_live_count(void);  /* number of live ml_tensor structs (leak tests) */
/* Called (on the main thread only) when an allocation fails, before one retry: full GC. */
void ml_set_oom_handler(void (*fn)(void *ud), void *ud);
void ml_mark_main_thread(void);
/* For allocators outside the core (the CUDA caching allocator): the step ml_alloc_bytes takes before
 * its one retry. On the main thread with a handler set: runs the handler (full GC) and
 * ml_flush_caches(), returns true; otherwise does nothing and returns false. */
bool ml_oom_relieve(void);
/* Adds n (negative: frees) to the live bytes of a device type, as ml_alloc_bytes/ml_free_bytes do
 * for the CPU; updates the peak and the GC pressure count. */
void ml_mem_account(ml_device_type dev, int64_t n);

/* Backends register functions that drop their caches (primitive caches, scratch pools). They run on
 * ml_flush_caches() (medlua.empty_cache()) and before the retry of a failed allocation. */
void ml_register_cache_flush(void (*fn)(void));
void ml_flush_caches(void);

void *ml_alloc_bytes(size_t n);      /* 64-byte aligned, counted in live bytes; OOM -> NULL + error set */
void ml_free_bytes(void *p, size_t n);

ml_storage *ml_storage_new(size_t nbytes, ml_device dev); /* NULL + error on failure */
void ml_storage_retain(ml_storage *s);
void ml_storage_release(ml_storage *s);

/* ------------------------------------------------------------- lifecycle */
void ml_tensor_retain(ml_tensor *t);
void ml_tensor_release(ml_tensor *t);   /* NULL-safe */

/* New contiguous tensor, uninitialized. */
ml_err ml_tensor_empty(ml_tensor **out, ml_dtype dt, int ndim, const int64_t *shape);
/* uninitialised tensor on a device (CUDA: from the caching allocator) */
ml_err ml_tensor_empty_on(ml_tensor **out, ml_device dev, ml_dtype dt, int ndim, const int64_t *shape);
static inline ml_device ml_tensor_device(const ml_tensor *t) { return t->storage->device; }
static inline bool ml_tensor_is_cuda(const ml_tensor *t) { return t->storage->device.type == ML_CUDA; }
/* ML_ERR_DEVICE unless the n tensors (NULL entries skipped) are on one device */
ml_err ml_check_same_device(const char *op, int n, ml_tensor *const *ts);
/* ML_ERR_DEVICE when t is not a CPU tensor: for the ops that have no device kernel yet */
ml_err ml_check_cpu(const char *op, const ml_tensor *t);
/* t on device dev (t itself, retained, when it is there already); recorded by autograd */
ml_err ml_to_device(ml_tensor **out, ml_tensor *t, ml_device dev);
ml_err ml_tensor_empty_like(ml_tensor **out, const ml_tensor *t);
/* Wrap existing data (copies it). */
ml_err ml_tensor_from_data(ml_tensor **out, ml_dtype dt, int ndim, const int64_t *shape, const void *data);

/* --------------------------------------------------------------- queries */
int64_t ml_tensor_numel(const ml_tensor *t);
bool ml_tensor_is_contiguous(const ml_tensor *t);
static inline void *ml_tensor_data(const ml_tensor *t) {
    return (char *)t->storage->data + t->offset * (int64_t)ml_dtype_size((ml_dtype)t->dtype);
}
/* Wrap a negative dim; returns -1 (with error set, naming op) if out of range. */
int ml_wrap_dim(const char *op, int dim, int ndim);
/* Read one element as double by multi-index (slow; for tests and tostring). */
double ml_tensor_get(const ml_tensor *t, const int64_t *idx);
double ml_tensor_item(const ml_tensor *t); /* numel must be 1 */
/* Ensure plain strided layout (reorders a backend-blocked tensor in place). */
ml_err ml_tensor_plain(ml_tensor *t);

/* Backend layouts (ml_tensor.layout).
 * ML_LAYOUT_NC16: a float32 [N, C, spatial...] tensor (1-3 spatial dims, C a multiple of 16) stored as
 *   [N][C/16][spatial...][16] (oneDNN's nCdhw16c), from offset 0 of a storage no other header shares;
 *   shape is the logical shape, stride is unused. Convolutions, batch norm, a + b and cat along the
 *   channels pass it from one to the next without reordering (ARCHITECTURE.md, principle 4); every
 *   other op, and every tensor the Lua bindings hand to an op that does not know it, goes through
 *   ml_tensor_plain(), which converts in place (same values, so it is invisible to users). */
#define ML_LAYOUT_NC16 1
#define ML_NLAYOUTS 2
/* The backend that produces a layout registers its in-place conversion to plain strides. */
void ml_register_layout_plain(int layout, ml_err (*to_plain)(ml_tensor *t));

/* Broadcast two shapes (NumPy rules). */
ml_err ml_broadcast_shapes(const char *op, int na, const int64_t *sa, int nb, const int64_t *sb,
                           int *nout, int64_t *sout);

/* ----------------------------------------------------------- creation */
ml_err ml_zeros(ml_tensor **out, ml_dtype dt, int ndim, const int64_t *shape);
ml_err ml_zeros_on(ml_tensor **out, ml_device dev, ml_dtype dt, int ndim, const int64_t *shape);
ml_err ml_ones(ml_tensor **out, ml_dtype dt, int ndim, const int64_t *shape);
ml_err ml_full(ml_tensor **out, ml_dtype dt, int ndim, const int64_t *shape, double value);
ml_err ml_arange(ml_tensor **out, ml_dtype dt, double start, double end, double step);
ml_err ml_linspace(ml_tensor **out, ml_dtype dt, double start, double end, int64_t steps);
ml_err ml_eye(ml_tensor **out, ml_dtype dt, int64_t n, int64_t m);
ml_err ml_fill_(ml_tensor *t, double value);   /* in place, any layout */

/* Random: counter-based Philox4x32-10. Element i of a call draws from counter (offset+i), so
 * results do not depend on the thread count. Each call advances the global offset. */
void ml_manual_seed(uint64_t seed);
uint64_t ml_rng_seed(void);
uint64_t ml_rng_offset(void);
void ml_rng_set_state(uint64_t seed, uint64_t offset);
/* Reserve n counters; returns the first. Ops that need randomness (dropout) use this. */
uint64_t ml_rng_reserve(uint64_t n);
/* Philox4x32-10 of (counter, key=seed) -> 4 uint32 */
void ml_philox(uint64_t counter, uint64_t seed, uint32_t out[4]);
static inline float ml_u32_to_unit(uint32_t x) { return (x >> 8) * (1.0f / 16777216.0f); } /* [0,1) */
ml_err ml_rand(ml_tensor **out, ml_dtype dt, int ndim, const int64_t *shape);   /* U[0,1) */
ml_err ml_randn(ml_tensor **out, ml_dtype dt, int ndim, const int64_t *shape);  /* N(0,1) */
ml_err ml_randint(ml_tensor **out, ml_dtype dt, int64_t low, int64_t high, int ndim, const int64_t *shape);
ml_err ml_uniform_(ml_tensor *t, double lo, double hi);
ml_err ml_normal_(ml_tensor *t, double mean, double std);

/* ------------------------------------------------------- copy / convert */
/* dst[...] = broadcast(src), converting dtype. Bumps dst version. Not recorded by autograd. */
ml_err ml_copy_(ml_tensor *dst, const ml_tensor *src);
/* The user's copy_: like ml_copy_, and recorded by autograd when src requires grad (dst takes src's
 * history, broadcast and cast) or dst is part of a graph (its history is cut). */
ml_err ml_copy_recorded_(ml_tensor *dst, ml_tensor *src);
ml_err ml_contiguous(ml_tensor **out, ml_tensor *t);   /* retains t if already contiguous */
ml_err ml_clone(ml_tensor **out, ml_tensor *t);
ml_err ml_to_dtype(ml_tensor **out, ml_tensor *t, ml_dtype dt); /* retains t if same dtype */
ml_err ml_detach(ml_tensor **out, ml_tensor *t);       /* shares storage, no grad */

/* ---------------------------------------------------------------- views */
/* All views share storage and are differentiable. */
ml_err ml_view(ml_tensor **out, ml_tensor *t, int ndim, const int64_t *shape); /* one -1 allowed; needs compatible strides */
ml_err ml_reshape(ml_tensor **out, ml_tensor *t, int ndim, const int64_t *shape); /* view if possible, else copy */
ml_err ml_narrow(ml_tensor **out, ml_tensor *t, int dim, int64_t start, int64_t length);
ml_err ml_slice(ml_tensor **out, ml_tensor *t, int dim, int64_t start, int64_t end, int64_t step);
ml_err ml_select(ml_tensor **out, ml_tensor *t, int dim, int64_t index);
ml_err ml_permute(ml_tensor **out, ml_tensor *t, const int *perm);   /* perm has t->ndim entries */
ml_err ml_transpose(ml_tensor **out, ml_tensor *t, int d0, int d1);
ml_err ml_expand(ml_tensor **out, ml_tensor *t, int ndim, const int64_t *shape); /* -1 keeps */
ml_err ml_squeeze(ml_tensor **out, ml_tensor *t, int dim);   /* dim = ML_ALL_DIMS: all size-1 dims */
ml_err ml_unsqueeze(ml_tensor **out, ml_tensor *t, int dim);
ml_err ml_flatten(ml_tensor **out, ml_tensor *t, int start_dim, int end_dim);
#define ML_ALL_DIMS 127

/* ------------------------------------------------------------- indexing */
ml_err ml_index_select(ml_tensor **out, ml_tensor *t, int dim, ml_tensor *index /* i64/i32 1-D */);
ml_err ml_masked_select(ml_tensor **out, ml_tensor *t, ml_tensor *mask /* bool, broadcastable */);
ml_err ml_masked_fill(ml_tensor **out, ml_tensor *t, ml_tensor *mask, double value);
ml_err ml_gather(ml_tensor **out, ml_tensor *t, int dim, ml_tensor *index);
ml_err ml_scatter_add_(ml_tensor *t, int dim, ml_tensor *index, ml_tensor *src); /* not recorded */
ml_err ml_cat(ml_tensor **out, int n, ml_tensor **ts, int dim);
ml_err ml_stack(ml_tensor **out, int n, ml_tensor **ts, int dim);
ml_err ml_one_hot(ml_tensor **out, ml_tensor *labels /* int */, int64_t num_classes, int dim /* class dim in output */);

/* ---------------------------------------------------------- elementwise */
typedef enum {
    ML_ADD, ML_SUB, ML_MUL, ML_DIV, ML_POW, ML_MAXIMUM, ML_MINIMUM, ML_FMOD, ML_ATAN2,
    ML_EQ, ML_NE, ML_LT, ML_LE, ML_GT, ML_GE,          /* -> bool */
    ML_LOGICAL_AND, ML_LOGICAL_OR, ML_LOGICAL_XOR,       /* -> bool */
    ML_NBINOPS
} ml_binop;
typedef enum {
    ML_NEG, ML_EXP, ML_LOG, ML_SQRT, ML_RSQRT, ML_ABS, ML_SIGN, ML_FLOOR, ML_CEIL, ML_ROUND,
    ML_TRUNC, ML_SIN, ML_COS, ML_TAN, ML_TANH, ML_SIGMOID, ML_RELU, ML_GELU, ML_GELU_TANH, ML_SILU,
    ML_SOFTPLUS, ML_LOG1P, ML_EXPM1, ML_RECIPROCAL, ML_SQUARE, ML_ERF, ML_LOGICAL_NOT,
    ML_ISNAN, ML_ISINF,                                   /* -> bool */
    ML_NUNOPS
} ml_unop;
const char *ml_binop_name(ml_binop op);
const char *ml_unop_name(ml_unop op);

ml_err ml_binary(ml_tensor **out, ml_binop op, ml_tensor *a, ml_tensor *b);
/* a op s (reverse=false) or s op a (reverse=true). Scalar keeps a's dtype (float scalar on int tensor -> f32). */
ml_err ml_binary_scalar(ml_tensor **out, ml_binop op, ml_tensor *a, double s, bool reverse);
ml_err ml_binary_(ml_binop op, ml_tensor *a, ml_tensor *b);          /* a = a op b (in place) */
ml_err ml_binary_scalar_(ml_binop op, ml_tensor *a, double s);
ml_err ml_unary(ml_tensor **out, ml_unop op, ml_tensor *a);
ml_err ml_unary_(ml_unop op, ml_tensor *a);
ml_err ml_clamp(ml_tensor **out, ml_tensor *a, double lo, double hi);  /* use -INFINITY/INFINITY for none */
ml_err ml_clamp_(ml_tensor *a, double lo, double hi);
ml_err ml_where(ml_tensor **out, ml_tensor *cond, ml_tensor *a, ml_tensor *b);
ml_err ml_leaky_relu(ml_tensor **out, ml_tensor *a, double slope);
ml_err ml_elu(ml_tensor **out, ml_tensor *a, double alpha);
ml_err ml_prelu(ml_tensor **out, ml_tensor *a, ml_tensor *weight /* [1] or [C], C = dim 1 */);
ml_err ml_lerp_(ml_tensor *a, ml_tensor *b, double w);                /* a += w*(b-a), not recorded */
/* a = a*alpha + b*beta (in place, not recorded; the optimizer workhorse) */
ml_err ml_axpby_(ml_tensor *a, double alpha, ml_tensor *b, double beta);
/* Fused Adam/AdamW update over one parameter (not recorded). */
ml_err ml_adam_step_(ml_tensor *param, ml_tensor *grad, ml_tensor *exp_avg, ml_tensor *exp_avg_sq,
                     double lr, double beta1, double beta2, double eps, double weight_decay,
                     bool decoupled /* AdamW */, int64_t step);

/* ----------------------------------------------------------- reductions */
typedef enum { ML_RSUM, ML_RMEAN, ML_RPROD, ML_RAMAX, ML_RAMIN, ML_RLOGSUMEXP, ML_NREDOPS } ml_redop;
/* dims: list of dims to reduce; ndims==0 means all dims. */
ml_err ml_reduce(ml_tensor **out, ml_redop op, ml_tensor *a, int ndims, const int *dims, bool keepdim);
ml_err ml_var(ml_tensor **out, ml_tensor *a, int ndims, const int *dims, double correction, bool keepdim, bool take_sqrt);
ml_err ml_norm(ml_tensor **out, ml_tensor *a, double p, int ndims, const int *dims, bool keepdim);
/* values + int64 indices along one dim (values differentiable). */
ml_err ml_max_dim(ml_tensor **values, ml_tensor **indices, ml_tensor *a, int dim, bool keepdim);
ml_err ml_min_dim(ml_tensor **values, ml_tensor **indices, ml_tensor *a, int dim, bool keepdim);
ml_err ml_argmax(ml_tensor **out, ml_tensor *a, int dim /* ML_ALL_DIMS: flat */, bool keepdim);
ml_err ml_argmin(ml_tensor **out, ml_tensor *a, int dim, bool keepdim);
ml_err ml_cumsum(ml_tensor **out, ml_tensor *a, int dim);
/* Quantiles of all elements (flattened), linear interpolation between order statistics as
 * torch.quantile's default; q in [0, 1]. Result: 1-D float64 [nq]. Not recorded. */
ml_err ml_quantile(ml_tensor **out, ml_tensor *a, int nq, const double *q);
/* The q-quantile (q in [0, 1]) of a[0..n), n >= 1, same interpolation; reorders a (selection, O(n)). */
double ml_select_quantile_f32(float *a, int64_t n, double q);
/* Sum `grad` down to `shape` (un-broadcast). Returns retained grad if already that shape. */
ml_err ml_sum_to(ml_tensor **out, ml_tensor *grad, int ndim, const int64_t *shape);

/* ------------------------------------------------------------ nn ops */
/* Declared in modules/nn/ml_nn.h */

/* ------------------------------------------------------------- autograd */
typedef struct ml_node ml_node;
/* Compute input gradients. gout[k] is the gradient of output k (NULL if that output got none;
 * at least one is non-NULL). Fill gin[i] with a NEW reference for every i with n->needs[i];
 * leave others NULL. Runs with grad mode off. */
typedef ml_err (*ml_backward_fn)(ml_node *n, ml_tensor **gout, ml_tensor **gin);

struct ml_node {
    int refcount;
    const char *name;                  /* op name for error messages, e.g. "conv3d" */
    ml_backward_fn backward;
    uint64_t seq;                      /* creation order (topological) */
    int nin, nout, nsaved;
    ml_tensor *in[ML_NODE_MAX_IN];     /* retained inputs (only those that need grad are kept; others NULL) */
    struct ml_node *in_fn[ML_NODE_MAX_IN]; /* input i's grad_fn when this node was recorded (retained): the
                                            * edge backward follows, even if the input's history moved on
                                            * since (an in-place op recorded later) */
    int8_t in_out[ML_NODE_MAX_IN];     /* which output of in_fn[i] */
    bool needs[ML_NODE_MAX_IN];        /* input i needs a gradient */
    ml_tensor *saved[ML_NODE_MAX_SAVED];
    uint32_t saved_version[ML_NODE_MAX_SAVED];
    int64_t in_shape[ML_NODE_MAX_IN][ML_MAX_DIMS]; /* input shapes (always recorded) */
    int8_t in_ndim[ML_NODE_MAX_IN];
    int8_t in_dtype[ML_NODE_MAX_IN];
    int64_t out_shape[ML_NODE_MAX_OUT][ML_MAX_DIMS];
    int8_t out_ndim[ML_NODE_MAX_OUT];
    int8_t out_dtype[ML_NODE_MAX_OUT];
    bool freed;                        /* graph released after backward */
    /* backward scratch */
    ml_tensor *gout[ML_NODE_MAX_OUT];
    uint32_t visit_mark;
    /* op parameters: POD blob; ops memcpy their own param struct here */
    _Alignas(16) unsigned char params[ML_NODE_PARAM_BYTES];
    void *ctx;                         /* optional op context (e.g. cached primitive), freed by ctx_free */
    void (*ctx_free)(void *);
};

bool ml_grad_enabled(void);
bool ml_set_grad_enabled(bool on);     /* returns previous; thread-local */
/* true if grad mode is on and any of the n tensors requires grad */
bool ml_needs_grad(int n, ml_tensor *const *ts);
/* Create a node for inputs ts[0..nin) (NULL entries allowed). Records shapes, retains inputs that
 * require grad, sets needs[]. Returns NULL with ML_ERR_OOM set on failure. */
ml_node *ml_node_new(const char *name, ml_backward_fn fn, int nin, ml_tensor *const *ts);
/* Save a tensor for backward (retained; version recorded). Returns slot index or -1. */
int ml_node_save(ml_node *n, ml_tensor *t);
/* Get a saved tensor, checking its version. NULL + ML_ERR_GRAD if modified in place. */
ml_tensor *ml_node_saved(ml_node *n, int slot);
/* Attach output k: out->grad_fn = n (node refcount+1), out->requires_grad = true. */
void ml_node_set_output(ml_node *n, int k, ml_tensor *out);
void ml_node_release(ml_node *n);
/* Helper used by nearly every op after its forward:
 * if ml_needs_grad(nin, ts): node = new, set output 0 = out, *node_out = node (borrowed); else *node_out = NULL.
 * Returns ML_OK or an error. */
ml_err ml_record(const char *name, ml_backward_fn fn, int nin, ml_tensor *const *ts, ml_tensor *out, ml_node **node_out);

/* Run backward from root. grad may be NULL only if root has one element (implicit 1).
 * Accumulates into .grad of leaves (and non-leaves with retain_grad). Frees the graph
 * unless retain_graph. */
ml_err ml_backward(ml_tensor *root, ml_tensor *grad, bool retain_graph);
/* Mark a tensor as a leaf that requires grad (error if not floating point). */
ml_err ml_set_requires_grad(ml_tensor *t, bool on);
/* In-place ops under autograd, as PyTorch does them. An in-place op is tracked when grad mode is on
 * and its target is part of a graph (has a grad_fn) or an operand requires grad. A tracked op runs as
 * its recorded out-of-place form on a copy of the target (ml_inplace_old), and the target then takes
 * the result's values and history (ml_inplace_rebase). An op whose result does not depend on the old
 * values (fill_, zero_, random fills) cuts the target's history (ml_inplace_cut). Other tensors over
 * the same memory (views, the base of a view) keep their old history, which no longer matches their
 * values: using one of them in a recorded op is an error (ml_check_history), never a wrong gradient. */
bool ml_inplace_tracked(const ml_tensor *a, const ml_tensor *b);
ml_err ml_check_history(const char *op, const ml_tensor *t);
ml_err ml_inplace_old(const char *op, ml_tensor **old, ml_tensor *a);
ml_err ml_inplace_rebase(ml_tensor *a, ml_tensor *r);
void ml_inplace_cut(ml_tensor *a);
/* The tracked path in one call: fn(out, old, ctx) computes the op out of place (recorded) from old, a
 * copy of a that carries a's history; a then takes the result. */
typedef ml_err (*ml_inplace_fn)(ml_tensor **out, ml_tensor *old, const void *ctx);
ml_err ml_inplace_apply(const char *op, ml_tensor *a, ml_inplace_fn fn, const void *ctx);
/* Accumulate g into *slot (creating it). */
ml_err ml_accumulate(ml_tensor **slot, ml_tensor *g);

/* ------------------------------------------------------------- threads */
int ml_num_threads(void);
void ml_set_num_threads(int n);

/* ----------------------------------------------------------- version bump */
static inline void ml_tensor_bump_version(ml_tensor *t) { t->storage->version++; }

#endif
