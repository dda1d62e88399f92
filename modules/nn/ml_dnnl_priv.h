/* Private helpers shared by the oneDNN-backed ops (ml_dnnl*.c): engine/stream, status
 * translation, a primitive cache, memory-argument plumbing, scratch buffers, and the
 * argument checks common to conv/pool. Not part of the public API. */
#ifndef ML_DNNL_PRIV_H
#define ML_DNNL_PRIV_H

#include "ml_nn.h"
#include "../tensor/ml_iter.h"

#include <dnnl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------- engine */
/* Lazily created once (thread-safe). NULL + error set on failure. */
dnnl_engine_t mld_engine(const char *op);
/* One in-order stream per calling thread (destroyed at thread exit). */
dnnl_stream_t mld_stream(const char *op);

/* oneDNN status -> ml_err with a message naming op and step.
 * unimplemented -> ML_ERR_UNSUPPORTED (callers use it to pick a fallback),
 * out_of_memory -> ML_ERR_OOM, anything else -> ML_ERR_INTERNAL. */
ml_err mld_fail(dnnl_status_t st, const char *op, const char *what);
#define MLD_TRY(call, op, what)                                  \
    do {                                                         \
        dnnl_status_t st_ = (call);                              \
        if (st_ != dnnl_success) return mld_fail(st_, op, what); \
    } while (0)

/* ------------------------------------------------------------------ cache */
#define MLD_KEY_WORDS 64
#define MLD_NRD 4 /* reorder slots per entry */
#define MLD_NMD 10 /* memory descriptor slots per entry */

typedef struct mld_entry {
    int64_t key[MLD_KEY_WORDS];
    int keylen;
    uint64_t hash;
    int refs;            /* 1 for the cache + 1 per user holding it */
    uint64_t stamp;      /* LRU clock */
    bool unsupported;    /* oneDNN has no implementation: callers take their fallback */
    dnnl_primitive_desc_t pd;
    dnnl_primitive_t prim;
    dnnl_primitive_t rd[MLD_NRD];     /* op-defined reorders (NULL: not needed) */
    dnnl_memory_desc_t md[MLD_NMD];   /* op-defined descriptors */
    size_t ws_size;                   /* workspace bytes (pooling; 0 = none) */
    struct mld_entry *hint;           /* forward entry whose pd was the hint (kept alive) */
} mld_entry;

/* Build callback: fill e->pd/prim/rd/md (and e->hint: a reference the entry then owns).
 * Return ML_ERR_UNSUPPORTED for "no implementation" (cached as unsupported); other errors are
 * not cached. On error the callback may leave partially created objects in e; they are destroyed. */
typedef ml_err (*mld_build_fn)(mld_entry *e, void *ud);

/* Find or build the entry for key[0..n). On ML_OK *out holds a reference (mld_put it).
 * An entry with ->unsupported set is returned with ML_OK; the caller decides. */
ml_err mld_get(mld_entry **out, const int64_t *key, int n, mld_build_fn build, void *ud);
void mld_put(mld_entry *e);
/* Drop every cached primitive and pooled scratch buffer (tests, memory pressure). */
void mld_cache_clear(void);
int mld_cache_size(void);

/* Small key builder. */
typedef struct {
    int64_t w[MLD_KEY_WORDS];
    int n;
} mld_key;
static inline void mld_k(mld_key *k, int64_t v) {
    if (k->n < MLD_KEY_WORDS) k->w[k->n] = v;
    k->n++;
}
static inline void mld_ka(mld_key *k, int cnt, const int64_t *v) {
    for (int i = 0; i < cnt; i++) mld_k(k, v[i]);
}

/* ------------------------------------------------------------ executing */
#define MLD_MAX_ARGS 12
typedef struct {
    int n;
    dnnl_exec_arg_t a[MLD_MAX_ARGS];
} mld_args;

/* Wrap (md, ptr) as a oneDNN memory argument. */
ml_err mld_arg(mld_args *A, const char *op, int arg, const dnnl_memory_desc_t *md, void *ptr);
/* Execute p on this thread's stream, wait, and destroy the argument memories (always). */
ml_err mld_exec(const char *op, dnnl_primitive_t p, mld_args *A);
void mld_args_free(mld_args *A);
/* Run a reorder primitive src -> dst. */
ml_err mld_reorder(const char *op, dnnl_primitive_t r, const dnnl_memory_desc_t *smd, const void *src,
                   const dnnl_memory_desc_t *dmd, void *dst);
/* Create a reorder primitive from smd to dmd; *out = NULL if the descriptors are equal. */
ml_err mld_make_reorder(dnnl_primitive_t *out, const char *op, const dnnl_memory_desc_t *smd,
                        const dnnl_memory_desc_t *dmd);

/* Plain memory descriptors. */
ml_err mld_md_plain(dnnl_memory_desc_t *md, const char *op, int ndims, const int64_t *dims);
ml_err mld_md_strided(dnnl_memory_desc_t *md, const char *op, int ndims, const int64_t *dims,
                      const int64_t *strides);
ml_err mld_md_any(dnnl_memory_desc_t *md, const char *op, int ndims, const int64_t *dims);

/* ML_LAYOUT_NC16 (see ml_tensor.h): oneDNN's aBc16b/aBcd16b/aBcde16b for [N, C, spatial...]. */
ml_err mld_md_nc16(dnnl_memory_desc_t *md, const char *op, int ndims, const int64_t *dims);
/* 3-5 dims with C a positive multiple of 16 */
bool mld_nc16_shape_ok(int ndims, const int64_t *dims);
/* md is exactly that layout for these dims */
bool mld_md_is_nc16(const dnnl_memory_desc_t *md, int ndims, const int64_t *dims);
/* Mark a freshly written tensor (own storage, offset 0) as ML_LAYOUT_NC16; registers the conversion. */
void mld_mark_nc16(ml_tensor *t);
void mld_register_layouts(void);

/* Scratch buffers (64-byte aligned, counted in ml_mem_live). Freed buffers go to a small pool
 * (at most 6 buffers / 1 GiB) and are reused: fresh pages cost a page fault each, which on some
 * machines is more than the reorder itself. Large buffers are advised to use transparent huge
 * pages. mld_cache_clear() empties the pool. */
typedef struct {
    void *p;
    size_t n, cap;
} mld_buf;
ml_err mld_buf_alloc(mld_buf *b, size_t n, const char *op);
void mld_buf_free(mld_buf *b);

/* Pointer to md's data, reordering into a scratch buffer when the primitive wants another layout. */
ml_err mld_to_prim(const char *op, dnnl_primitive_t r, const dnnl_memory_desc_t *user_md, const void *user,
                   const dnnl_memory_desc_t *prim_md, mld_buf *tmp, void **out);

/* --------------------------------------------------------- common checks */
/* x must be f32 or f64 (and the other tensors in ts the same dtype, NULL allowed). */
ml_err mld_check_float(const char *op, int n, ml_tensor *const *ts, const char *const *names);
/* the same, allowing CUDA tensors (ops with a device path) when cuda_ok */
ml_err mld_check_float_on(const char *op, int n, ml_tensor *const *ts, const char *const *names, bool cuda_ok);
/* Make plain + contiguous (NEW reference, or NULL if t is NULL). */
ml_err mld_contig(ml_tensor **out, ml_tensor *t);
/* An incoming gradient as a contiguous tensor of the op output's dtype (NEW reference). */
ml_err mld_grad_in(ml_tensor **out, ml_tensor *g, ml_dtype dt);
/* Static name like "conv3d", "max_pool2d" for base "conv"/"max_pool"/... and k (base if unknown). */
const char *mld_opname(const char *base, int k);

/* PyTorch's pooling output size (floor or ceil mode); with ceil_mode = false also the conv rule. */
int64_t mld_pool_out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode);

#endif
