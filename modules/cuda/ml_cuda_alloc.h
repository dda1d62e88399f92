/* A caching allocator over any "upstream" allocator (cudaMalloc/cudaFree in ml_cuda_runtime.c,
 * malloc/free in tests/c/test_cuda_alloc.c). No CUDA header here: the logic is plain C and is unit
 * tested on the CPU in every build.
 *
 * Blocks
 *   A request of n bytes is rounded up to a block size: 512 B multiples below 1 MiB (n = 0 gives a
 *   512 B block, so every successful call returns a distinct valid pointer), 2 MiB multiples from
 *   1 MiB up. Freed blocks stay in a per-device cache:
 *     small (< 1 MiB): one free list per 512 B bin; a request takes a block of exactly its bin.
 *     large (>= 1 MiB): a size-sorted list per device; a request of rounded size r takes the
 *       smallest cached block of size s with r <= s <= r + r/8 (best fit, at most 12.5% waste:
 *       below 16 MiB that means the exact size). Blocks are never split or merged.
 *   A miss asks the upstream for a new block of the rounded size.
 *
 * Out of memory
 *   When the upstream answers ML_ERR_OOM: the device's cache is given back to the upstream, the
 *   oom hook runs (ml_oom_relieve() for CUDA: a full Lua GC, which may free blocks through this
 *   allocator, and ml_flush_caches()), the device's cache is given back again, and the upstream is
 *   asked once more. If that fails too the call fails with ML_ERR_OOM and a message naming the
 *   request, the device, its live bytes and the cached bytes released. Any other upstream error
 *   fails at once with the upstream's message. No lock is held while the hook runs.
 *
 * Stream order
 *   Blocks are handed out again without any synchronisation. That is correct because every medlua
 *   kernel, copy and cuBLAS call runs on the (legacy) default stream of the device: work queued
 *   after the reuse runs after the work that used the block before it was freed. Code that uses
 *   other streams must synchronise (or record an event) before freeing a block it used there.
 *
 * Accounting
 *   "live" counts block sizes (the rounded bytes held by callers), so live + cached is what the
 *   allocator holds from the upstream. The account hook gets +size / -size on every alloc/free
 *   (ml_mem_account(ML_CUDA, ...) for CUDA, which is what ml_mem_live(ML_CUDA) reports).
 *
 * Thread safety: one mutex per allocator; upstream calls and hooks run outside it. */
#ifndef ML_CUDA_ALLOC_H
#define ML_CUDA_ALLOC_H

#include "ml_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ML_CALLOC_SMALL_STEP ((size_t)512)
#define ML_CALLOC_SMALL_MAX ((size_t)1 << 20) /* requests below this are "small" */
#define ML_CALLOC_LARGE_STEP ((size_t)2 << 20)

typedef struct {
    /* *p = a new block of exactly nbytes on device dev. ML_ERR_OOM: the device is out of memory
     * (the allocator relieves and retries once); any other code fails the request at once and the
     * upstream has set the message. */
    ml_err (*alloc)(void **p, size_t nbytes, int dev, void *ud);
    void (*free)(void *p, size_t nbytes, int dev, void *ud);
    bool (*oom)(void *ud);                /* may be NULL; true when it ran (it may free blocks) */
    void (*account)(int64_t delta, void *ud); /* may be NULL; +size on alloc, -size on free */
    void *ud;
    const char *devname;                  /* messages name devices "<devname>:<dev>"; NULL: "dev" */
} ml_calloc_upstream;

typedef struct ml_calloc ml_calloc;

ml_calloc *ml_calloc_new(const ml_calloc_upstream *up, int ndev); /* NULL when out of host memory */
/* Gives every block (cached and live) back to the upstream and frees the allocator. */
void ml_calloc_destroy(ml_calloc *a);

size_t ml_calloc_round(size_t nbytes); /* the block size a request of nbytes gets */
/* *out = a block of at least nbytes on dev (0 <= dev < ndev). On failure *out = NULL, the message
 * is set and ML_ERR_OOM / ML_ERR_DEVICE (bad dev) / the upstream's code is returned. */
ml_err ml_calloc_alloc(ml_calloc *a, void **out, size_t nbytes, int dev);
/* Returns p's block to the cache of the device it came from (dev is only a hint). NULL and pointers
 * this allocator did not hand out are ignored. */
void ml_calloc_free(ml_calloc *a, void *p, int dev);
size_t ml_calloc_block_size(ml_calloc *a, const void *p); /* 0 when p is not a live block */
void ml_calloc_empty(ml_calloc *a, int dev);               /* -1: every device */
void ml_calloc_stats(ml_calloc *a, int dev, ml_cuda_mem *out); /* -1: sums over devices */
void ml_calloc_reset_peak(ml_calloc *a, int dev);          /* -1: every device */

/* ml_cuda_malloc with the error code: ML_OK, ML_ERR_OOM or ML_ERR_DEVICE (not available, no such
 * device, built without CUDA). Implemented in ml_cuda_runtime.c and ml_cuda_stub.c. */
ml_err ml_cuda_malloc_err(void **out, size_t nbytes, int dev);

#ifdef __cplusplus
}
#endif

#endif
