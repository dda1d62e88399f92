/* Kernel benchmarks (GFLOP/s, median of several timed runs after a warm-up):
 *   matmul 2048^3 f32 through ml_matmul vs dnnl_sgemm called directly
 *   conv3d 32->32, 3x3x3, padding 1 on [1, 32, 64, 64, 64] f32: forward, forward+backward (data+weights)
 * bench/torch_kernels.py prints the same lines for PyTorch CPU.
 *
 * Build: gcc -std=c11 -D_GNU_SOURCE -O3 -march=native -fopenmp -Imodules bench/bench_kernels.c \
 *            <core + modules/nn/ml_dnnl*.c objects> -ldnnl -lm -o bench_kernels
 * Usage: bench_kernels [--runs N] [--threads N]   (threads default: OMP_NUM_THREADS, else all cores) */
#include "tensor/ml_tensor.h"
#include "nn/ml_nn.h"

#include <dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void report(const char *what, const char *who, double flops, double *t, int n) {
    double m = median(t, n);
    printf("%-58s %-10s %8.1f GFLOP/s  (median %.2f ms of %d)\n", what, who, flops / m * 1e-9, m * 1e3, n);
    fflush(stdout);
}

#define CHECK(call)                                                                          \
    do {                                                                                     \
        ml_err e_ = (call);                                                                  \
        if (e_) { fprintf(stderr, "%s failed: %s\n", #call, ml_errmsg()); exit(1); }         \
    } while (0)

int main(int argc, char **argv) {
    int runs = 7;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc) runs = atoi(argv[++i]);
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) ml_set_num_threads(atoi(argv[++i]));
        else if (argv[i][0] != '-') runs = atoi(argv[i]);
        else {
            fprintf(stderr, "usage: %s [--runs N] [--threads N]\n", argv[0]);
            return 2;
        }
    }
    if (runs < 1) runs = 1;
    double *t = calloc((size_t)runs, sizeof *t);
    printf("medlua kernels: %d threads, %d timed runs each\n", ml_num_threads(), runs);

    /* ---- matmul 2048^3 */
    {
        const int64_t n = 2048;
        double flops = 2.0 * (double)n * (double)n * (double)n;
        int64_t sh[2] = {n, n};
        ml_tensor *a, *b, *c;
        CHECK(ml_randn(&a, ML_F32, 2, sh));
        CHECK(ml_randn(&b, ML_F32, 2, sh));
        const char *what = "matmul 2048x2048x2048 f32";
        /* interleaved so both see the same machine state */
        double *t2 = calloc((size_t)runs, sizeof *t2);
        float *C = malloc(sizeof(float) * (size_t)(n * n));
        const float *A = ml_tensor_data(a), *B = ml_tensor_data(b);
        for (int r = -1; r < runs; r++) {
            double t0 = now();
            CHECK(ml_matmul(&c, a, b));
            double t1 = now();
            ml_tensor_release(c);
            if (dnnl_sgemm('N', 'N', n, n, n, 1.0f, A, n, B, n, 0.0f, C, n) != dnnl_success) {
                fprintf(stderr, "dnnl_sgemm failed\n");
                return 1;
            }
            double t2b = now();
            if (r >= 0) { t[r] = t1 - t0; t2[r] = t2b - t1; }
        }
        report(what, "medlua", flops, t, runs);
        report(what, "dnnl_sgemm", flops, t2, runs);
        free(t2);
        free(C);
        ml_tensor_release(a);
        ml_tensor_release(b);
    }

    /* ---- conv3d 32->32 k3 p1 on 64^3 */
    {
        int64_t xs[5] = {1, 32, 64, 64, 64}, ws[5] = {32, 32, 3, 3, 3}, bs[1] = {32};
        double fl = 2.0 * 32 * 32 * 27 * 64.0 * 64 * 64; /* one pass */
        ml_conv_params p = {.k = 3, .stride = {1, 1, 1}, .padding = {1, 1, 1}, .dilation = {1, 1, 1}, .groups = 1};
        ml_tensor *x, *w, *b, *y, *g;
        CHECK(ml_randn(&x, ML_F32, 5, xs));
        CHECK(ml_randn(&w, ML_F32, 5, ws));
        CHECK(ml_randn(&b, ML_F32, 1, bs));
        CHECK(ml_randn(&g, ML_F32, 5, xs));
        const char *what = "conv3d 32->32 k3 p1 [1,32,64,64,64] f32 forward";
        for (int r = -1; r < runs; r++) {
            double t0 = now();
            CHECK(ml_conv(&y, x, w, b, &p));
            double t1 = now();
            ml_tensor_release(y);
            if (r >= 0) t[r] = t1 - t0;
        }
        report(what, "medlua", fl, t, runs);
        CHECK(ml_set_requires_grad(x, true));
        CHECK(ml_set_requires_grad(w, true));
        CHECK(ml_set_requires_grad(b, true));
        what = "conv3d 32->32 k3 p1 [1,32,64,64,64] f32 forward+backward";
        for (int r = -1; r < runs; r++) {
            double t0 = now();
            CHECK(ml_conv(&y, x, w, b, &p));
            CHECK(ml_backward(y, g, false));
            double t1 = now();
            ml_tensor_release(y);
            ml_tensor *ts[3] = {x, w, b};
            for (int i = 0; i < 3; i++) { ml_tensor_release(ts[i]->grad); ts[i]->grad = NULL; }
            if (r >= 0) t[r] = t1 - t0;
        }
        report(what, "medlua", 3 * fl, t, runs);
        ml_tensor_release(x);
        ml_tensor_release(w);
        ml_tensor_release(b);
        ml_tensor_release(g);
    }
    free(t);
    return 0;
}
