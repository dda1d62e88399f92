/* The caching allocator of modules/cuda/ml_cuda_alloc.c on a malloc upstream (runs in every build,
 * with or without CUDA or a GPU). */
#include "ml_test.h"
#include "cuda/ml_cuda_alloc.h"

#include <pthread.h>
#include <stdatomic.h>

/* ---- a malloc upstream that can be told to fail, and counts what it does */
typedef struct {
    atomic_int allocs, frees, oom_calls;
    atomic_int fail_next;   /* the next n upstream allocations fail with ML_ERR_OOM */
    bool fail_always;
    ml_err fail_code;       /* what a failure returns (ML_ERR_OOM unless set) */
    atomic_llong held;      /* bytes the upstream has handed out and not got back */
    atomic_llong accounted; /* sum of the account hook's deltas */
    void *free_in_hook;     /* a block the oom hook frees (as a GC would) */
    ml_calloc *a;
} up_state;

static ml_err t_alloc(void **p, size_t n, int dev, void *ud) {
    up_state *s = ud;
    (void)dev;
    if (s->fail_always || atomic_load(&s->fail_next) > 0) {
        if (!s->fail_always) atomic_fetch_sub(&s->fail_next, 1);
        ml_err e = s->fail_code ? s->fail_code : ML_ERR_OOM;
        if (e != ML_ERR_OOM) ml_seterr(e, "test upstream: device lost");
        return e;
    }
    *p = malloc(n);
    if (!*p) return ML_ERR_OOM;
    memset(*p, 0xA5, n < 64 ? n : 64);
    atomic_fetch_add(&s->allocs, 1);
    atomic_fetch_add(&s->held, (long long)n);
    return ML_OK;
}

static void t_free(void *p, size_t n, int dev, void *ud) {
    up_state *s = ud;
    (void)dev;
    free(p);
    atomic_fetch_add(&s->frees, 1);
    atomic_fetch_sub(&s->held, (long long)n);
}

static bool t_oom(void *ud) {
    up_state *s = ud;
    atomic_fetch_add(&s->oom_calls, 1);
    if (s->free_in_hook) {
        ml_calloc_free(s->a, s->free_in_hook, 0); /* must not deadlock */
        s->free_in_hook = NULL;
    }
    return true;
}

static void t_account(int64_t d, void *ud) { atomic_fetch_add(&((up_state *)ud)->accounted, (long long)d); }

static ml_calloc *make(up_state *s, int ndev) {
    memset(s, 0, sizeof *s);
    ml_calloc_upstream up = {t_alloc, t_free, t_oom, t_account, s, "cuda"};
    s->a = ml_calloc_new(&up, ndev);
    return s->a;
}

static ml_cuda_mem stats(ml_calloc *a, int dev) {
    ml_cuda_mem m;
    ml_calloc_stats(a, dev, &m);
    return m;
}

/* ---------------------------------------------------------------- tests */
ML_TEST(rounding) {
    ML_CHECK(ml_calloc_round(0) == 512);
    ML_CHECK(ml_calloc_round(1) == 512);
    ML_CHECK(ml_calloc_round(512) == 512);
    ML_CHECK(ml_calloc_round(513) == 1024);
    ML_CHECK(ml_calloc_round((1 << 20) - 1) == (1 << 20));
    ML_CHECK(ml_calloc_round(1 << 20) == (2 << 20));
    ML_CHECK(ml_calloc_round((2 << 20) + 1) == (4 << 20));
    ML_CHECK(ml_calloc_round(SIZE_MAX - 5) == 0);
}

ML_TEST(reuse_same_bin) {
    up_state s;
    ml_calloc *a = make(&s, 1);
    void *p = NULL, *q = NULL, *r = NULL;
    ML_CHECK_OK(ml_calloc_alloc(a, &p, 1000, 0));
    ML_CHECK(p && ml_calloc_block_size(a, p) == 1024);
    ml_calloc_free(a, p, 0);
    ML_CHECK(ml_calloc_block_size(a, p) == 0);
    ML_CHECK_OK(ml_calloc_alloc(a, &q, 1024, 0)); /* same bin: the same block */
    ML_CHECK(q == p);
    ML_CHECK_OK(ml_calloc_alloc(a, &r, 1025, 0)); /* next bin: a new one */
    ML_CHECK(r && r != q);
    ml_cuda_mem m = stats(a, 0);
    ML_CHECK(m.allocs == 3 && m.cache_hits == 1 && m.driver_allocs == 2);
    ML_CHECK(m.live == 1024 + 1536 && m.cached == 0);
    ml_calloc_free(a, q, 0);
    ml_calloc_free(a, r, 0);
    /* zero bytes: a valid, distinct pointer */
    void *z1 = NULL, *z2 = NULL;
    ML_CHECK_OK(ml_calloc_alloc(a, &z1, 0, 0));
    ML_CHECK_OK(ml_calloc_alloc(a, &z2, 0, 0));
    ML_CHECK(z1 && z2 && z1 != z2);
    ml_calloc_free(a, z1, 0);
    ml_calloc_free(a, z2, 0);
    /* NULL and foreign pointers are ignored */
    int foreign;
    ml_calloc_free(a, NULL, 0);
    ml_calloc_free(a, &foreign, 0);
    ML_CHECK(stats(a, 0).live == 0);
    ml_calloc_destroy(a);
    ML_CHECK(s.held == 0 && s.accounted == 0);
}

ML_TEST(large_best_fit) {
    up_state s;
    ml_calloc *a = make(&s, 1);
    size_t MB = 1 << 20;
    void *p8 = NULL, *p20 = NULL, *p = NULL;
    ML_CHECK_OK(ml_calloc_alloc(a, &p8, 7 * MB, 0));  /* 8 MiB block */
    ML_CHECK_OK(ml_calloc_alloc(a, &p20, 19 * MB, 0)); /* 20 MiB block */
    ML_CHECK(ml_calloc_block_size(a, p8) == 8 * MB && ml_calloc_block_size(a, p20) == 20 * MB);
    ml_calloc_free(a, p8, 0);
    ml_calloc_free(a, p20, 0);
    ML_CHECK(stats(a, 0).cached == 28 * MB);
    /* 6 MiB: the 8 MiB block would waste 25% -> a new block */
    ML_CHECK_OK(ml_calloc_alloc(a, &p, 6 * MB, 0));
    ML_CHECK(p != p8 && p != p20);
    ml_calloc_free(a, p, 0);
    /* 18 MiB: the 20 MiB block wastes 11% -> reused */
    ML_CHECK_OK(ml_calloc_alloc(a, &p, 17 * MB + 1, 0));
    ML_CHECK(p == p20);
    ml_calloc_free(a, p, 0);
    /* 8 MiB exactly -> the 8 MiB block */
    ML_CHECK_OK(ml_calloc_alloc(a, &p, 8 * MB, 0));
    ML_CHECK(p == p8);
    ml_calloc_free(a, p, 0);
    ml_calloc_destroy(a);
    ML_CHECK(s.held == 0);
}

ML_TEST(stats_peak_empty_cache) {
    up_state s;
    ml_calloc *a = make(&s, 2);
    void *p[10];
    for (int i = 0; i < 10; i++) ML_CHECK_OK(ml_calloc_alloc(a, &p[i], 4096, i % 2));
    ML_CHECK(stats(a, 0).live == 5 * 4096 && stats(a, 1).live == 5 * 4096);
    ML_CHECK(stats(a, -1).live == 10 * 4096);
    ML_CHECK(s.accounted == 10 * 4096);
    for (int i = 0; i < 10; i++) ml_calloc_free(a, p[i], 0); /* dev is a hint: blocks go home */
    ml_cuda_mem m = stats(a, 0);
    ML_CHECK(m.live == 0 && m.peak == 5 * 4096 && m.cached == 5 * 4096);
    ML_CHECK(s.accounted == 0);
    ml_calloc_reset_peak(a, 0);
    ML_CHECK(stats(a, 0).peak == 0 && stats(a, 1).peak == 5 * 4096);
    ml_calloc_reset_peak(a, -1);
    ML_CHECK(stats(a, 1).peak == 0);
    void *q = NULL;
    ML_CHECK_OK(ml_calloc_alloc(a, &q, 3000, 1)); /* 3072 bin: a miss, dev 1 */
    ML_CHECK(stats(a, 1).peak == 3072);
    ml_calloc_free(a, q, 1);
    /* empty_cache of one device, then of all: the upstream gets everything back */
    ml_calloc_empty(a, 0);
    ML_CHECK(stats(a, 0).cached == 0 && stats(a, 1).cached == 5 * 4096 + 3072);
    ml_calloc_empty(a, -1);
    m = stats(a, -1);
    ML_CHECK(m.cached == 0 && m.live == 0);
    ML_CHECK(s.held == 0 && s.allocs == s.frees && s.allocs == 11);
    /* after empty_cache the next request goes to the upstream */
    ML_CHECK_OK(ml_calloc_alloc(a, &q, 4096, 0));
    ML_CHECK(s.allocs == 12);
    ml_calloc_free(a, q, 0);
    /* bad device */
    ml_t_expect_err(ml_calloc_alloc(a, &q, 16, 2), ML_ERR_DEVICE, "cuda:2", NULL, "dev 2 of 2");
    ML_CHECK(q == NULL);
    ml_t_expect_err(ml_calloc_alloc(a, &q, 16, -1), ML_ERR_DEVICE, "cuda:-1", NULL, "dev -1");
    ml_calloc_destroy(a);
    ML_CHECK(s.held == 0);
}

static uint64_t rng(uint64_t *x) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static size_t rand_size(uint64_t *x) {
    uint64_t r = rng(x);
    switch (r % 8) {
    case 0: return 0;
    case 1: return (size_t)(r >> 8) % (5u << 20); /* up to 5 MiB: some large */
    default: return (size_t)(r >> 8) % 70000;
    }
}

/* Churn: random sizes, random frees; the blocks never overlap (a byte pattern per block survives),
 * and in the end live == 0, the accounting is back to 0 and empty_cache returns everything. */
static int churn(ml_calloc *a, uint64_t seed, int iters, int dev) {
    enum { SLOTS = 64 };
    void *p[SLOTS] = {0};
    size_t n[SLOTS] = {0};
    unsigned char tag[SLOTS] = {0};
    int bad = 0;
    uint64_t x = seed;
    for (int it = 0; it < iters; it++) {
        int k = (int)(rng(&x) % SLOTS);
        if (p[k]) {
            if (n[k] && (((unsigned char *)p[k])[0] != tag[k] || ((unsigned char *)p[k])[n[k] - 1] != tag[k])) bad++;
            ml_calloc_free(a, p[k], dev);
            p[k] = NULL;
        } else {
            n[k] = rand_size(&x);
            if (ml_calloc_alloc(a, &p[k], n[k], dev) != ML_OK || !p[k]) { bad++; continue; }
            tag[k] = (unsigned char)(it & 0xff);
            if (n[k]) { ((unsigned char *)p[k])[0] = tag[k]; ((unsigned char *)p[k])[n[k] - 1] = tag[k]; }
        }
    }
    for (int k = 0; k < SLOTS; k++)
        if (p[k]) {
            if (n[k] && (((unsigned char *)p[k])[0] != tag[k] || ((unsigned char *)p[k])[n[k] - 1] != tag[k])) bad++;
            ml_calloc_free(a, p[k], dev);
        }
    return bad;
}

ML_TEST(churn) {
    up_state s;
    ml_calloc *a = make(&s, 1);
    ML_CHECK(churn(a, 0x9E3779B97F4A7C15ull, 20000, 0) == 0);
    ml_cuda_mem m = stats(a, 0);
    ML_CHECK(m.live == 0 && s.accounted == 0);
    ML_CHECK(m.allocs == m.cache_hits + m.driver_allocs);
    ML_CHECK(m.cache_hits > m.driver_allocs); /* the cache does its job */
    ML_CHECK((long long)m.cached == s.held);
    ml_calloc_empty(a, -1);
    ML_CHECK(s.held == 0 && stats(a, 0).cached == 0);
    ml_calloc_destroy(a);
}

ML_TEST(oom_hook_once_then_success) {
    up_state s;
    ml_calloc *a = make(&s, 1);
    /* something in the cache, and a live block that the "GC" frees */
    void *c = NULL, *g = NULL, *p = NULL;
    ML_CHECK_OK(ml_calloc_alloc(a, &c, 8192, 0));
    ml_calloc_free(a, c, 0);
    ML_CHECK_OK(ml_calloc_alloc(a, &g, 100000, 0));
    ML_CHECK(stats(a, 0).cached == 8192);
    s.free_in_hook = g;
    atomic_store(&s.fail_next, 1);
    ML_CHECK_OK(ml_calloc_alloc(a, &p, 50000, 0));
    ML_CHECK(p != NULL);
    ML_CHECK(s.oom_calls == 1);
    ML_CHECK(s.free_in_hook == NULL);
    ml_cuda_mem m = stats(a, 0);
    ML_CHECK(m.cached == 0);        /* the cache, and what the hook freed, went back before the retry */
    ML_CHECK(m.live == ml_calloc_round(50000));
    ML_CHECK(s.held == (long long)ml_calloc_round(50000));
    ml_calloc_free(a, p, 0);
    ml_calloc_destroy(a);
    ML_CHECK(s.held == 0 && s.accounted == 0);
}

ML_TEST(oom_permanent) {
    up_state s;
    ml_calloc *a = make(&s, 1);
    void *keep = NULL, *p = (void *)1;
    ML_CHECK_OK(ml_calloc_alloc(a, &keep, 4000, 0));
    s.fail_always = true;
    ml_t_expect_err(ml_calloc_alloc(a, &p, 123456789, 0), ML_ERR_OOM, "123456789 bytes", "cuda:0", "permanent OOM");
    ML_CHECK(p == NULL);
    ML_CHECK(strstr(ml_errmsg(), "live 4096 bytes") != NULL);
    ML_CHECK(strstr(ml_errmsg(), "cached") != NULL);
    ML_CHECK(s.oom_calls == 1);
    ml_cuda_mem m = stats(a, 0);
    ML_CHECK(m.live == 4096 && m.allocs == 1);
    /* a non-OOM upstream error fails at once with its message, no hook */
    s.fail_code = ML_ERR_DEVICE;
    ml_t_expect_err(ml_calloc_alloc(a, &p, 10, 0), ML_ERR_DEVICE, "device lost", NULL, "upstream error");
    ML_CHECK(s.oom_calls == 1);
    s.fail_always = false;
    ml_calloc_free(a, keep, 0);
    ml_calloc_destroy(a);
    ML_CHECK(s.held == 0 && s.accounted == 0);
}

typedef struct {
    ml_calloc *a;
    uint64_t seed;
    int dev, bad;
} thr_arg;

static void *thr_main(void *p) {
    thr_arg *t = p;
    t->bad = churn(t->a, t->seed, 20000, t->dev);
    return NULL;
}

ML_TEST(threads) {
    up_state s;
    ml_calloc *a = make(&s, 2);
    enum { NT = 4 };
    pthread_t th[NT];
    thr_arg args[NT];
    for (int i = 0; i < NT; i++) {
        args[i] = (thr_arg){a, 0x1234567ull * (uint64_t)(i + 1) + 99, i % 2, 0};
        ML_CHECK(pthread_create(&th[i], NULL, thr_main, &args[i]) == 0);
    }
    for (int i = 0; i < NT; i++) {
        pthread_join(th[i], NULL);
        ML_CHECK(args[i].bad == 0);
    }
    ml_cuda_mem m = stats(a, -1);
    ML_CHECK(m.live == 0 && s.accounted == 0);
    ML_CHECK(m.allocs == m.cache_hits + m.driver_allocs);
    ML_CHECK((long long)m.cached == s.held);
    ml_calloc_destroy(a);
    ML_CHECK(s.held == 0 && s.allocs == s.frees);
}

/* destroy with blocks still live gives them back too (and takes them off the accounting) */
ML_TEST(destroy_with_live) {
    up_state s;
    ml_calloc *a = make(&s, 1);
    void *p = NULL, *q = NULL;
    ML_CHECK_OK(ml_calloc_alloc(a, &p, 10, 0));
    ML_CHECK_OK(ml_calloc_alloc(a, &q, 3 << 20, 0));
    ml_calloc_destroy(a);
    ML_CHECK(s.held == 0 && s.accounted == 0);
}

int main(void) {
    ML_RUN(rounding);
    ML_RUN(reuse_same_bin);
    ML_RUN(large_best_fit);
    ML_RUN(stats_peak_empty_cache);
    ML_RUN(churn);
    ML_RUN(oom_hook_once_then_success);
    ML_RUN(oom_permanent);
    ML_RUN(threads);
    ML_RUN(destroy_with_live);
    return ml_test_summary();
}
