/* The caching allocator of ml_cuda_alloc.h (the design is described there). */
#include "ml_cuda_alloc.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define NBINS ((int)(ML_CALLOC_SMALL_MAX / ML_CALLOC_SMALL_STEP)) /* 2048 bins of 512 B */

typedef struct blk {
    void *ptr;
    size_t size;
    int dev;
    struct blk *next; /* free list or hash chain: a block is in exactly one of them */
} blk;

typedef struct {
    blk *bins[NBINS]; /* small free blocks, LIFO per bin */
    blk *large;       /* large free blocks, ascending size */
    size_t live, peak, cached;
    uint64_t allocs, cache_hits, driver_allocs;
} devstate;

struct ml_calloc {
    ml_calloc_upstream up;
    int ndev;
    pthread_mutex_t mu;
    blk **table; /* live blocks by pointer */
    size_t nbuckets, nlive;
    devstate *dev;
};

size_t ml_calloc_round(size_t n) {
    if (n < ML_CALLOC_SMALL_MAX) {
        if (n == 0) return ML_CALLOC_SMALL_STEP;
        return (n + ML_CALLOC_SMALL_STEP - 1) / ML_CALLOC_SMALL_STEP * ML_CALLOC_SMALL_STEP;
    }
    if (n > SIZE_MAX - ML_CALLOC_LARGE_STEP) return 0; /* overflow: no such block */
    return (n + ML_CALLOC_LARGE_STEP - 1) / ML_CALLOC_LARGE_STEP * ML_CALLOC_LARGE_STEP;
}

static const char *devname(const ml_calloc *a) { return a->up.devname ? a->up.devname : "dev"; }

/* ------------------------------------------------------------ live table */
static size_t hash_ptr(const void *p, size_t nb) {
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 29;
    x *= 0x9E3779B97F4A7C15ull;
    return (size_t)(x >> 32) & (nb - 1);
}

static void table_grow(ml_calloc *a) {
    size_t nb = a->nbuckets * 2;
    blk **t = calloc(nb, sizeof *t);
    if (!t) return; /* keep the longer chains */
    for (size_t i = 0; i < a->nbuckets; i++)
        for (blk *b = a->table[i], *n; b; b = n) {
            n = b->next;
            size_t h = hash_ptr(b->ptr, nb);
            b->next = t[h];
            t[h] = b;
        }
    free(a->table);
    a->table = t;
    a->nbuckets = nb;
}

static void table_put(ml_calloc *a, blk *b) {
    if (a->nlive + 1 > a->nbuckets * 2) table_grow(a);
    size_t h = hash_ptr(b->ptr, a->nbuckets);
    b->next = a->table[h];
    a->table[h] = b;
    a->nlive++;
}

static blk *table_take(ml_calloc *a, const void *p) {
    for (blk **pp = &a->table[hash_ptr(p, a->nbuckets)]; *pp; pp = &(*pp)->next)
        if ((*pp)->ptr == p) {
            blk *b = *pp;
            *pp = b->next;
            b->next = NULL;
            a->nlive--;
            return b;
        }
    return NULL;
}

/* ------------------------------------------------------------ free lists */
static blk *cache_take(devstate *d, size_t size) {
    blk *b = NULL;
    if (size < ML_CALLOC_SMALL_MAX) {
        blk **bin = &d->bins[size / ML_CALLOC_SMALL_STEP - 1];
        if ((b = *bin)) *bin = b->next;
    } else {
        size_t limit = size + size / 8;
        for (blk **pp = &d->large; *pp; pp = &(*pp)->next) {
            if ((*pp)->size < size) continue;
            if ((*pp)->size <= limit) {
                b = *pp;
                *pp = b->next;
            }
            break; /* ascending: the first big enough is the best fit */
        }
    }
    if (b) {
        b->next = NULL;
        d->cached -= b->size;
    }
    return b;
}

static void cache_put(devstate *d, blk *b) {
    if (b->size < ML_CALLOC_SMALL_MAX) {
        blk **bin = &d->bins[b->size / ML_CALLOC_SMALL_STEP - 1];
        b->next = *bin;
        *bin = b;
    } else {
        blk **pp = &d->large;
        while (*pp && (*pp)->size < b->size) pp = &(*pp)->next;
        b->next = *pp;
        *pp = b;
    }
    d->cached += b->size;
}

/* Unlinks every cached block of device i into one chain (caller holds the lock). */
static blk *cache_detach(devstate *d) {
    blk *all = NULL;
    for (int k = 0; k < NBINS; k++)
        for (blk *b = d->bins[k], *n; b; b = n) {
            n = b->next;
            b->next = all;
            all = b;
        }
    memset(d->bins, 0, sizeof d->bins);
    for (blk *b = d->large, *n; b; b = n) {
        n = b->next;
        b->next = all;
        all = b;
    }
    d->large = NULL;
    d->cached = 0;
    return all;
}

static void release_chain(ml_calloc *a, blk *b) {
    for (blk *n; b; b = n) {
        n = b->next;
        a->up.free(b->ptr, b->size, b->dev, a->up.ud);
        free(b);
    }
}

/* Gives device i's cache back to the upstream; returns the bytes released. */
static size_t empty_dev(ml_calloc *a, int i) {
    pthread_mutex_lock(&a->mu);
    size_t bytes = a->dev[i].cached;
    blk *chain = cache_detach(&a->dev[i]);
    pthread_mutex_unlock(&a->mu);
    release_chain(a, chain);
    return bytes;
}

/* ------------------------------------------------------------------ API */
ml_calloc *ml_calloc_new(const ml_calloc_upstream *up, int ndev) {
    if (!up || !up->alloc || !up->free || ndev < 1) return NULL;
    ml_calloc *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->up = *up;
    a->ndev = ndev;
    a->nbuckets = 256;
    a->table = calloc(a->nbuckets, sizeof *a->table);
    a->dev = calloc((size_t)ndev, sizeof *a->dev);
    if (!a->table || !a->dev || pthread_mutex_init(&a->mu, NULL)) {
        free(a->table);
        free(a->dev);
        free(a);
        return NULL;
    }
    return a;
}

void ml_calloc_destroy(ml_calloc *a) {
    if (!a) return;
    for (int i = 0; i < a->ndev; i++) empty_dev(a, i);
    int64_t live = 0;
    for (size_t h = 0; h < a->nbuckets; h++) {
        for (blk *b = a->table[h]; b; b = b->next) live += (int64_t)b->size;
        release_chain(a, a->table[h]);
    }
    if (live && a->up.account) a->up.account(-live, a->up.ud);
    pthread_mutex_destroy(&a->mu);
    free(a->table);
    free(a->dev);
    free(a);
}

/* Records a block handed out (caller holds the lock). */
static void hand_out(ml_calloc *a, blk *b, bool hit) {
    devstate *d = &a->dev[b->dev];
    table_put(a, b);
    d->live += b->size;
    if (d->live > d->peak) d->peak = d->live;
    d->allocs++;
    if (hit) d->cache_hits++;
    else d->driver_allocs++;
}

ml_err ml_calloc_alloc(ml_calloc *a, void **out, size_t nbytes, int dev) {
    *out = NULL;
    if (!a) return ml_seterr(ML_ERR_DEVICE, "allocator not initialised");
    if (dev < 0 || dev >= a->ndev)
        return ml_seterr(ML_ERR_DEVICE, "%s:%d: no such device (%d device%s)", devname(a), dev, a->ndev,
                         a->ndev == 1 ? "" : "s");
    size_t size = ml_calloc_round(nbytes);
    if (!size)
        return ml_seterr(ML_ERR_OOM, "out of memory allocating %zu bytes on %s:%d (request too large)",
                         nbytes, devname(a), dev);
    devstate *d = &a->dev[dev];

    pthread_mutex_lock(&a->mu);
    blk *b = cache_take(d, size);
    if (b) hand_out(a, b, true);
    pthread_mutex_unlock(&a->mu);
    if (b) {
        if (a->up.account) a->up.account((int64_t)b->size, a->up.ud);
        *out = b->ptr;
        return ML_OK;
    }

    b = malloc(sizeof *b);
    if (!b) return ml_seterr(ML_ERR_OOM, "out of host memory (allocator block record)");
    void *p = NULL;
    ml_err e = a->up.alloc(&p, size, dev, a->up.ud);
    size_t released = 0;
    if (e == ML_ERR_OOM) {
        released = empty_dev(a, dev);
        if (a->up.oom) a->up.oom(a->up.ud); /* may free blocks into the cache: */
        released += empty_dev(a, dev);
        e = a->up.alloc(&p, size, dev, a->up.ud);
    }
    if (e != ML_OK || !p) {
        free(b);
        if (e != ML_OK && e != ML_ERR_OOM) return e; /* the upstream's message */
        pthread_mutex_lock(&a->mu);
        size_t live = d->live;
        pthread_mutex_unlock(&a->mu);
        return ml_seterr(ML_ERR_OOM,
                         "out of memory allocating %zu bytes on %s:%d (block of %zu bytes; live %zu bytes, "
                         "cached %zu bytes released before the retry)",
                         nbytes, devname(a), dev, size, live, released);
    }
    b->ptr = p;
    b->size = size;
    b->dev = dev;
    b->next = NULL;
    pthread_mutex_lock(&a->mu);
    hand_out(a, b, false);
    pthread_mutex_unlock(&a->mu);
    if (a->up.account) a->up.account((int64_t)size, a->up.ud);
    *out = p;
    return ML_OK;
}

void ml_calloc_free(ml_calloc *a, void *p, int dev) {
    (void)dev;
    if (!a || !p) return;
    pthread_mutex_lock(&a->mu);
    blk *b = table_take(a, p);
    size_t size = 0;
    if (b) {
        size = b->size;
        a->dev[b->dev].live -= size;
        cache_put(&a->dev[b->dev], b);
    }
    pthread_mutex_unlock(&a->mu);
    if (size && a->up.account) a->up.account(-(int64_t)size, a->up.ud);
}

size_t ml_calloc_block_size(ml_calloc *a, const void *p) {
    if (!a || !p) return 0;
    size_t size = 0;
    pthread_mutex_lock(&a->mu);
    for (blk *b = a->table[hash_ptr(p, a->nbuckets)]; b; b = b->next)
        if (b->ptr == p) {
            size = b->size;
            break;
        }
    pthread_mutex_unlock(&a->mu);
    return size;
}

void ml_calloc_empty(ml_calloc *a, int dev) {
    if (!a) return;
    for (int i = 0; i < a->ndev; i++)
        if (dev < 0 || dev == i) empty_dev(a, i);
}

void ml_calloc_stats(ml_calloc *a, int dev, ml_cuda_mem *out) {
    memset(out, 0, sizeof *out);
    if (!a) return;
    pthread_mutex_lock(&a->mu);
    for (int i = 0; i < a->ndev; i++) {
        if (dev >= 0 && dev != i) continue;
        const devstate *d = &a->dev[i];
        out->live += d->live;
        out->peak += d->peak;
        out->cached += d->cached;
        out->allocs += d->allocs;
        out->cache_hits += d->cache_hits;
        out->driver_allocs += d->driver_allocs;
    }
    pthread_mutex_unlock(&a->mu);
}

void ml_calloc_reset_peak(ml_calloc *a, int dev) {
    if (!a) return;
    pthread_mutex_lock(&a->mu);
    for (int i = 0; i < a->ndev; i++)
        if (dev < 0 || dev == i) a->dev[i].peak = a->dev[i].live;
    pthread_mutex_unlock(&a->mu);
}
