/* The runtime side of modules/cuda/ml_cuda.h in whatever build and machine this runs on:
 *   built without CUDA (CUDA=0): everything says "built without CUDA";
 *   built with CUDA, no usable GPU (no driver, no device): a reason, errors, no crash, no output;
 *   a usable GPU: devices, malloc/memcpy round trips, the caching allocator on the device.
 * `test_cuda_runtime --status` prints ml_cuda_status() and exits 0 when CUDA is available, 2 when
 * not (make test-gpu asks it when the program has no medlua.cuda bindings). */
#include "ml_test.h"
#include "cuda/ml_cuda.h"
#include "cuda/ml_cuda_alloc.h"

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

/* The kernels live in ml_cuda_stub.c (CUDA=0) or in the kernel files (CUDA=1, tested elsewhere); weak
 * references keep this test linkable in a CUDA build whatever kernel files it has. They are called
 * only when !ml_cuda_compiled(), where the stub defines them. */
#pragma weak ml_cuda_ew
#pragma weak ml_cuda_copy
#pragma weak ml_cuda_fill
#pragma weak ml_cuda_reduce
#pragma weak ml_cuda_gemm
#pragma weak ml_cuda_set_tf32
#pragma weak ml_cuda_tf32

/* The first calls must not print: stdout and stderr go to a pipe-less temp file meanwhile. */
ML_TEST(quiet_first_call) {
    char path[] = "/tmp/ml_cuda_quietXXXXXX";
    int fd = mkstemp(path);
    ML_CHECK(fd >= 0);
    if (fd < 0) return;
    fflush(stdout);
    fflush(stderr);
    int o1 = dup(1), o2 = dup(2);
    dup2(fd, 1);
    dup2(fd, 2);
    bool av = ml_cuda_available();
    const char *st = ml_cuda_status();
    int n = ml_cuda_device_count();
    void *p = ml_cuda_malloc(1000, 0);
    ml_cuda_free(p, 0);
    fflush(stdout);
    fflush(stderr);
    dup2(o1, 1);
    dup2(o2, 2);
    close(o1);
    close(o2);
    off_t len = lseek(fd, 0, SEEK_END);
    close(fd);
    unlink(path);
    ML_CHECK(len == 0);
    ML_CHECK(st && st[0]);
    ML_CHECK(av == (n > 0));
}

ML_TEST(status_consistent) {
    const char *st = ml_cuda_status();
    ML_CHECK(st != NULL && st[0] != 0);
    ML_CHECK(ml_cuda_status() == st); /* cached */
    if (!ml_cuda_compiled()) {
        ML_CHECK(!ml_cuda_available());
        ML_CHECK(strcmp(st, "built without CUDA") == 0);
    }
    if (ml_cuda_available()) ML_CHECK(strcmp(st, "ok") == 0);
    else ML_CHECK(strcmp(st, "ok") != 0);
    printf("# compiled %d, available %d, status \"%s\", %d device(s)\n", ml_cuda_compiled(), ml_cuda_available(),
           st, ml_cuda_device_count());
}

/* ------------------------------------------------- without a usable GPU */
ML_TEST(unavailable_fails_cleanly) {
    if (ml_cuda_available()) return;
    const char *st = ml_cuda_status();
    ML_CHECK(ml_cuda_device_count() == 0);
    ML_CHECK(strcmp(ml_cuda_device_name(0), "") == 0);
    ML_CHECK(strcmp(ml_cuda_device_name(-1), "") == 0);
    int64_t live0 = ml_mem_live(ML_CUDA);
    void *p = (void *)1;
    ml_t_expect_err(ml_cuda_malloc_err(&p, 1024, 0), ML_ERR_DEVICE, st, "cuda:0", "malloc without GPU");
    ML_CHECK(p == NULL);
    ML_CHECK(ml_cuda_malloc(1024, 0) == NULL);
    ML_CHECK(strstr(ml_errmsg(), st) != NULL);
    ML_CHECK(ml_cuda_malloc(0, 3) == NULL);
    ML_CHECK(ml_mem_live(ML_CUDA) == live0);
    ml_cuda_free(NULL, 0);
    int x;
    ml_cuda_free(&x, 0); /* not ours: ignored */
    ml_cuda_empty_cache(-1);
    ml_cuda_empty_cache(0);
    ml_cuda_reset_peak(-1);
    ml_cuda_mem m;
    memset(&m, 0xff, sizeof m);
    ml_cuda_mem_stats(0, &m);
    ML_CHECK(m.live == 0 && m.peak == 0 && m.cached == 0 && m.allocs == 0);
    size_t f = 1, t = 1;
    ml_t_expect_err(ml_cuda_device_memory(0, &f, &t), ML_ERR_DEVICE, st, NULL, "device_memory");
    ML_CHECK(f == 0 && t == 0);
    ml_t_expect_err(ml_cuda_synchronize(-1), ML_ERR_DEVICE, st, NULL, "synchronize");
    char a[8] = "abcdefg", b[8] = {0};
    ml_t_expect_err(ml_cuda_memcpy(b, 0, a, ML_CUDA_HOST, 8), ML_ERR_DEVICE, st, NULL, "memcpy to device");
    ML_CHECK_OK(ml_cuda_memcpy(b, ML_CUDA_HOST, a, ML_CUDA_HOST, 8)); /* host to host works anywhere */
    ML_CHECK(memcmp(a, b, 8) == 0);
    ML_CHECK_OK(ml_cuda_memcpy(NULL, 0, NULL, 0, 0)); /* nothing to copy */
}

ML_TEST(stub_kernels) {
    if (ml_cuda_compiled()) return; /* the kernels are another file's tests */
    ML_CHECK(ml_cuda_fill && ml_cuda_copy && ml_cuda_ew && ml_cuda_reduce && ml_cuda_gemm && ml_cuda_set_tf32 &&
             ml_cuda_tf32);
    if (!ml_cuda_gemm || !ml_cuda_tf32) return;
    int64_t shape[1] = {4};
    ml_cuda_opnd o;
    memset(&o, 0, sizeof o);
    ml_t_expect_err(ml_cuda_fill(1, shape, &o, 1.0), ML_ERR_DEVICE, "built without CUDA", NULL, "fill");
    ml_t_expect_err(ml_cuda_copy(1, shape, &o, &o), ML_ERR_DEVICE, "built without CUDA", NULL, "copy");
    ml_t_expect_err(ml_cuda_ew(0, ML_F32, 1, shape, 1, &o, NULL), ML_ERR_DEVICE, "built without CUDA", NULL, "ew");
    bool red[1] = {true};
    ml_t_expect_err(ml_cuda_reduce(0, ML_F32, 1, shape, red, &o, &o, NULL), ML_ERR_DEVICE, "built without CUDA", NULL,
                    "reduce");
    ml_t_expect_err(ml_cuda_gemm(ML_F32, false, false, 2, 2, 2, NULL, 2, 4, NULL, 2, 4, NULL, 2, 4, 1, 1.0, 0.0, 0),
                    ML_ERR_DEVICE, "built without CUDA", NULL, "gemm");
    ml_cuda_set_tf32(true);
    ML_CHECK(ml_cuda_tf32());
    ml_cuda_set_tf32(false);
    ML_CHECK(!ml_cuda_tf32());
}

/* The two core hooks the allocator uses (ml_core.c) */
static int g_oom_calls;
static void count_oom(void *ud) { (void)ud; g_oom_calls++; }
static void *other_thread(void *ud) { *(bool *)ud = ml_oom_relieve(); return NULL; }

ML_TEST(core_hooks) {
    int64_t live = ml_mem_live(ML_CUDA), peak = ml_mem_peak(ML_CUDA);
    ml_mem_account(ML_CUDA, 1 << 20);
    ML_CHECK(ml_mem_live(ML_CUDA) == live + (1 << 20));
    ML_CHECK(ml_mem_peak(ML_CUDA) >= live + (1 << 20) && ml_mem_peak(ML_CUDA) >= peak);
    ml_mem_account(ML_CUDA, -(1 << 20));
    ML_CHECK(ml_mem_live(ML_CUDA) == live);
    ML_CHECK(ml_mem_live(ML_CPU) >= 0);
    ML_CHECK(!ml_oom_relieve()); /* no handler yet */
    ml_mark_main_thread();
    ml_set_oom_handler(count_oom, NULL);
    ML_CHECK(ml_oom_relieve() && g_oom_calls == 1);
    bool ran = true;
    pthread_t th;
    ML_CHECK(pthread_create(&th, NULL, other_thread, &ran) == 0);
    pthread_join(th, NULL);
    ML_CHECK(!ran && g_oom_calls == 1); /* only on the main thread, as for CPU allocations */
    ml_set_oom_handler(NULL, NULL);
}

/* --------------------------------------------------------- with a GPU */
ML_TEST(gpu_devices) {
    if (!ml_cuda_available()) return;
    int n = ml_cuda_device_count();
    ML_CHECK(n >= 1);
    for (int i = 0; i < n; i++) {
        ML_CHECK(ml_cuda_device_name(i)[0] != 0);
        size_t f = 0, t = 0;
        ML_CHECK_OK(ml_cuda_device_memory(i, &f, &t));
        ML_CHECK(t > 0 && f <= t);
        printf("# cuda:%d %s, %.1f of %.1f GiB free\n", i, ml_cuda_device_name(i), f / 1073741824.0,
               t / 1073741824.0);
    }
    ML_CHECK(strcmp(ml_cuda_device_name(n), "") == 0);
    ML_CHECK(ml_cuda_malloc(16, n) == NULL);
    ML_CHECK_OK(ml_cuda_synchronize(-1));
}

ML_TEST(gpu_roundtrip) {
    if (!ml_cuda_available()) return;
    int64_t live0 = ml_mem_live(ML_CUDA);
    ml_cuda_empty_cache(-1);
    ml_cuda_reset_peak(-1);
    ml_cuda_mem m0;
    ml_cuda_mem_stats(0, &m0);
    size_t sizes[] = {0, 1, 1000, 4096, 1 << 20, (5 << 20) + 3};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        size_t n = sizes[k];
        unsigned char *h = malloc(n + 1), *back = malloc(n + 1);
        for (size_t i = 0; i < n; i++) h[i] = (unsigned char)(i * 131 + k);
        memset(back, 0, n + 1);
        void *d = ml_cuda_malloc(n, 0), *d2 = ml_cuda_malloc(n, 0);
        ML_CHECK(d != NULL && d2 != NULL && d != d2);
        ML_CHECK_OK(ml_cuda_memcpy(d, 0, h, ML_CUDA_HOST, n));
        ML_CHECK_OK(ml_cuda_memcpy(d2, 0, d, 0, n)); /* device to device */
        ML_CHECK_OK(ml_cuda_memcpy(back, ML_CUDA_HOST, d2, 0, n));
        ML_CHECK(n == 0 || memcmp(h, back, n) == 0);
        ML_CHECK(ml_mem_live(ML_CUDA) - live0 == (int64_t)(2 * ml_calloc_round(n)));
        ml_cuda_free(d, 0);
        ml_cuda_free(d2, 0);
        free(h);
        free(back);
    }
    ML_CHECK(ml_mem_live(ML_CUDA) == live0);
    /* the cache: freeing and asking again gives the same block without the driver */
    ml_cuda_mem m1, m2;
    ml_cuda_mem_stats(0, &m1);
    void *p = ml_cuda_malloc(4096, 0);
    ML_CHECK(p != NULL);
    ml_cuda_mem_stats(0, &m2);
    ML_CHECK(m2.cache_hits == m1.cache_hits + 1 && m2.driver_allocs == m1.driver_allocs);
    ml_cuda_free(p, 0);
    ML_CHECK(m2.peak >= (size_t)(2 * ml_calloc_round((5 << 20) + 3)));
    ml_cuda_empty_cache(-1);
    ml_cuda_mem_stats(0, &m2);
    ML_CHECK(m2.cached == 0 && m2.live == m0.live);
    /* an impossible request: ML_ERR_OOM naming the size, not a crash */
    void *q = (void *)1;
    ml_t_expect_err(ml_cuda_malloc_err(&q, (size_t)1 << 50, 0), ML_ERR_OOM, "1125899906842624 bytes", "cuda:0",
                    "1 PiB");
    ML_CHECK(q == NULL);
    /* an invalid pointer in a copy is an error, not a crash */
    char buf[16];
    ML_CHECK(ml_cuda_memcpy(buf, ML_CUDA_HOST, (void *)16, 0, 16) != ML_OK);
    ML_CHECK_OK(ml_cuda_synchronize(0));
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--status") == 0) {
        printf("%s\n", ml_cuda_status());
        return ml_cuda_available() ? 0 : 2;
    }
    ML_RUN(quiet_first_call);
    ML_RUN(status_consistent);
    ML_RUN(unavailable_fails_cleanly);
    ML_RUN(stub_kernels);
    ML_RUN(core_hooks);
    ML_RUN(gpu_devices);
    ML_RUN(gpu_roundtrip);
    return ml_test_summary();
}
