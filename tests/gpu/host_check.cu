/* Host-only checks of the CUDA kernels' shared code; needs nvcc but no GPU. The kernel files are
 * included whole so their host+device helpers can be called on the host:
 *  - conversions: mlk_load / mlk_store against the CPU's ml_load_elem / ml_store_elem, bit for bit
 *    (every f16/bf16 pattern, special and out-of-range values for the integer types);
 *  - iteration: mlk_space_init (dim dropping/merging) + mlk_unravel against naive offsets;
 *  - the op table: every iop's device functor evaluated on the host against the CPU's ml_ew_map
 *    (exact where the expression has no libm call; libm/libmvec differences within a few ulp);
 *  - reductions: the max/min/sum/prod combination rules, replayed in the orders the thread, block
 *    and split kernels use, against ml_max_dim / ml_min_dim / ml_reduce (values and first index).
 *
 * Build and run from the repository root after `make build/medlua`:
 *   nvcc -O2 -std=c++17 -Imodules -Imodules/tensor -Imodules/cuda -Xcompiler -fopenmp \
 *     tests/gpu/host_check.cu -o build/host_check build/libmedlua.a <the Makefile's LDLIBS> && build/host_check
 * Ends with "N passed, N failed". */
#define ml_cuda_ew hc_cuda_ew
#define ml_cuda_copy hc_cuda_copy
#define ml_cuda_fill hc_cuda_fill
#define ml_cuda_reduce hc_cuda_reduce
#define ml_cuda_malloc hc_cuda_malloc
#define ml_cuda_free hc_cuda_free
#include "../../modules/cuda/ml_cuda_ew.cu"
#include "../../modules/cuda/ml_cuda_reduce.cu"

#include <stdio.h>
#include <stdlib.h>

extern "C" {
void *hc_cuda_malloc(size_t, int) { return NULL; }
void hc_cuda_free(void *, int) {}
void ml_store_elem(void *base, ml_dtype dt, int64_t i, double v);
double ml_load_elem(const void *base, ml_dtype dt, int64_t i);
}

#include "check_common.h"

static bool same_bits(double a, double b) { return memcmp(&a, &b, 8) == 0; }

/* ---------------------------------------------------------------- conversions */
static void test_conversions(void) {
    int fails_ = 0;
    /* loads: every 16-bit pattern of bf16/f16, bytes, a spread of wider values */
    for (uint32_t h = 0; h < 65536; h++) {
        uint16_t v[4] = {(uint16_t)h};
        for (int dt : {ML_BF16, ML_F16}) {
            double a = ml_load_elem(v, (ml_dtype)dt, 0), b = mlk_load((const char *)v, dt, 0);
            CHECK(same_bits(a, b) || (a != a && b != b), "load %s 0x%04x: %a vs %a", ml_dtype_name((ml_dtype)dt), h, a, b);
        }
    }
    for (int i = 0; i < 256; i++) {
        uint8_t v[8] = {(uint8_t)i};
        for (int dt : {ML_U8, ML_BOOL}) CHECK(ml_load_elem(v, (ml_dtype)dt, 0) == mlk_load((const char *)v, dt, 0), "load u8/bool");
    }
    /* stores: special values, integer boundaries, fractions, random doubles over many scales */
    double vals[4096];
    int nv = 0;
    const double special[] = {0.0, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, 255.0, 255.5, 256.0, 300.7, -1.0, -300.7,
                              127.9, 128.0, 2147483647.0, 2147483647.9, 2147483648.0, -2147483648.0,
                              -2147483648.9, -2147483649.0, 4294967296.5, 9.2233720368547758e18,
                              -9.2233720368547758e18, 1.8446744073709552e19, 1e300, -1e300, INFINITY, -INFINITY,
                              NAN, -NAN, 65504.0, 65519.0, 65520.0, 6.1e-5, 5.96e-8, 2.98e-8, 1e-10,
                              3.3895313892515355e38, 3.4e38, 1.17549435e-38, 1e-45, 9007199254740993.0};
    for (double v : special) vals[nv++] = v;
    while (nv < 4096) {
        double m = rndu() * 2 - 1, e = (double)((int)(rnd() % 160) - 80);
        vals[nv++] = ldexp(m, (int)e);
    }
    for (int dt = ML_F32; dt <= ML_F16; dt++) {
        for (int i = 0; i < nv; i++) {
            unsigned char a[8] = {0}, b[8] = {0};
            ml_store_elem(a, (ml_dtype)dt, 0, vals[i]);
            mlk_store((char *)b, dt, 0, vals[i]);
            CHECK(memcmp(a, b, 8) == 0, "store %s %.17g", ml_dtype_name((ml_dtype)dt), vals[i]);
        }
    }
    /* f16 stores of random f32 bit patterns (every exponent) */
    for (int i = 0; i < 1 << 20; i++) {
        uint32_t u = (uint32_t)rnd();
        float f;
        memcpy(&f, &u, 4);
        unsigned char a[2], b[2];
        ml_store_elem(a, ML_F16, 0, f);
        mlk_store((char *)b, ML_F16, 0, f);
        CHECK(memcmp(a, b, 2) == 0, "store f16 0x%08x", u);
        ml_store_elem(a, ML_BF16, 0, f);
        mlk_store((char *)b, ML_BF16, 0, f);
        CHECK(memcmp(a, b, 2) == 0, "store bf16 0x%08x", u);
    }
    TEST_END("conversions");
}

/* ---------------------------------------------------------------- iteration */
template <int NOPS>
static int check_space(int ndim, const int64_t *shape, int64_t st[][ML_MAX_DIMS], const int64_t *off) {
    int fails_ = 0;
    const int64_t *sp_[MLK_MAXOPS];
    for (int k = 0; k < NOPS; k++) sp_[k] = st[k];
    mlk_space sp;
    mlk_space_init(&sp, ndim, shape, NOPS, sp_, off);
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    CHECK(sp.n == n, "numel");
    int64_t idx[ML_MAX_DIMS] = {0};
    for (int64_t i = 0; i < n; i++) {
        int64_t o[NOPS];
        mlk_unravel<NOPS>(sp, i, o);
        for (int k = 0; k < NOPS; k++) {
            int64_t want = off[k];
            for (int d = 0; d < ndim; d++) want += idx[d] * st[k][d];
            CHECK(o[k] == want, "element %lld operand %d: %lld vs %lld", (long long)i, k, (long long)o[k], (long long)want);
        }
        for (int d = ndim - 1; d >= 0; d--) {
            if (++idx[d] < shape[d]) break;
            idx[d] = 0;
        }
    }
    return fails_;
}

static void test_iteration(void) {
    int fails_ = 0;
    for (int rep = 0; rep < 3000; rep++) {
        int ndim = (int)(rnd() % (ML_MAX_DIMS + 1)), nops = 1 + (int)(rnd() % MLK_MAXOPS);
        int64_t shape[ML_MAX_DIMS], st[MLK_MAXOPS][ML_MAX_DIMS] = {{0}}, off[MLK_MAXOPS];
        for (int d = 0; d < ndim; d++) shape[d] = 1 + (int64_t)(rnd() % 4);
        if (rep % 50 == 0 && ndim > 0) shape[rnd() % ndim] = 0;
        for (int k = 0; k < nops; k++) {
            int kind = (int)(rnd() % 4); /* contiguous, broadcast dims, permuted/negative, scalar */
            int64_t s = 1;
            for (int d = ndim - 1; d >= 0; d--) {
                if (kind == 3) st[k][d] = 0;
                else if (kind == 1 && rnd() % 3 == 0) st[k][d] = 0;
                else if (kind == 2) st[k][d] = (int64_t)(rnd() % 7) - 3;
                else st[k][d] = s;
                s *= shape[d] > 0 ? shape[d] : 1;
            }
            off[k] = (int64_t)(rnd() % 100);
        }
        switch (nops) {
        case 1: fails_ += check_space<1>(ndim, shape, st, off); break;
        case 2: fails_ += check_space<2>(ndim, shape, st, off); break;
        case 3: fails_ += check_space<3>(ndim, shape, st, off); break;
        default: fails_ += check_space<4>(ndim, shape, st, off); break;
        }
    }
    TEST_END("iteration");
}

/* ---------------------------------------------------------------- the op table */
/* host_f32 / host_f64: check_common.h */

static void test_table(void) {
    int fails_ = 0, inexact = 0;
    const int N = 301;
    static double in[3][N];
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < N; i++) {
            double v;
            switch ((i + k) % 11) {
            case 0: v = 0; break;
            case 1: v = (i & 1) ? 1 : -1; break;
            case 2: v = (i % 5 == 0) ? NAN : 2.0; break;
            case 3: v = (i % 7 == 0) ? INFINITY : -INFINITY; break;
            case 4: v = (rndu() - 0.5) * 1e-3; break;
            default: v = (rndu() - 0.5) * 8; break;
            }
            if (i > 150 && (i + k) % 11 <= 3) v = (rndu() - 0.5) * 6; /* mostly finite in the second half */
            in[k][i] = v;
        }
    const double params[2] = {0.3, 0.7};
    for (int kdi = 0; kdi < 2; kdi++) {
        ml_dtype kd = kdi ? ML_F64 : ML_F32;
        for (int iop = 0; iop < ML_NIOPS; iop++) {
            int ar = iop_arity[iop];
            ml_tensor *ts[3] = {NULL, NULL, NULL}, *out = NULL;
            int64_t shape[1] = {N};
            for (int k = 0; k < ar; k++) {
                if (kd == ML_F64) ml_tensor_from_data(&ts[k], kd, 1, shape, in[k]);
                else {
                    float tmp[N];
                    for (int i = 0; i < N; i++) tmp[i] = (float)in[k][i];
                    ml_tensor_from_data(&ts[k], kd, 1, shape, tmp);
                }
            }
            ml_err e = ml_ew_map(&out, "t", iop, ar, ts, params);
            CHECK(!e, "%s: ml_ew_map failed: %s", iop_names[iop], ml_errmsg());
            if (!e) {
                int od = iop_boolout[iop] ? ML_BOOL : kd;
                CHECK(out->dtype == od, "%s: output dtype %d, expected %d", iop_names[iop], out->dtype, od);
                const char *ob = (const char *)ml_tensor_data(out);
                for (int i = 0; i < N; i++) {
                    double cpu = mlk_load(ob, out->dtype, i);
                    double x = in[0][i], y = ar > 1 ? in[1][i] : 0, z = ar > 2 ? in[2][i] : 0;
                    if (kd == ML_F32) { x = (float)x; y = (float)y; z = (float)z; }
                    double dev = (kd == ML_F64 ? host_f64 : host_f32)[iop](x, y, z, params[0], params[1]);
                    if (same_bits(cpu, dev) || (cpu != cpu && dev != dev) || cpu == dev) continue;
                    double tol = (kd == ML_F64 ? 1e-13 : 2e-6) * fmax(1.0, fabs(cpu));
                    if (fabs(cpu - dev) <= tol) { inexact++; continue; }
                    CHECK(false, "%s %s x=%.9g y=%.9g z=%.9g: cpu %.17g, table %.17g", iop_names[iop],
                          ml_dtype_name(kd), x, y, z, cpu, dev);
                }
            }
            for (int k = 0; k < 3; k++) ml_tensor_release(ts[k]);
            ml_tensor_release(out);
        }
    }
    printf("  (%d values differ within a few ulp: vectorized vs scalar libm)\n", inexact);
    TEST_END("op table");
}

/* ---------------------------------------------------------------- reductions */
/* replay the kernels' combination orders over a row x[0..R) */
static acc replay_thread(int kind, const double *x, int64_t R) {
    acc s = acc_init(kind);
    for (int64_t r = 0; r < R; r++) update(kind, s, x[r], r);
    return s;
}
static acc replay_block(int kind, const double *x, int64_t lo, int64_t hi, int B) {
    acc p[RED_THREADS];
    for (int t = 0; t < B; t++) {
        p[t] = acc_init(kind);
        for (int64_t r = lo + t; r < hi; r += B) update(kind, p[t], x[r], r);
    }
    for (int h = B / 2; h > 0; h >>= 1)
        for (int t = 0; t < h; t++) combine(kind, p[t], p[t + h]);
    return p[0];
}
static acc replay_split(int kind, const double *x, int64_t R, int nsplit, int B) {
    acc s = acc_init(kind);
    for (int c = 0; c < nsplit; c++) {
        acc part = replay_block(kind, x, R * c / nsplit, R * (c + 1) / nsplit, B);
        combine(kind, s, part);
    }
    return s;
}

static void test_reduce(void) {
    int fails_ = 0;
    for (int rep = 0; rep < 400; rep++) {
        int64_t R = 1 + (int64_t)(rnd() % 700);
        bool f64 = rep & 1;
        double *x = (double *)malloc((size_t)R * sizeof(double));
        int flavour = rep % 4; /* ties, NaNs, mixed signs of zero, random */
        for (int64_t i = 0; i < R; i++) {
            double v;
            if (flavour == 0) v = (double)(rnd() % 4);
            else if (flavour == 1) v = rnd() % 9 == 0 ? NAN : (double)(rnd() % 5) - 2;
            else if (flavour == 2) v = rnd() % 2 ? 0.0 : -0.0;
            else v = (rndu() - 0.5) * 10;
            x[i] = f64 ? v : (double)(float)v;
        }
        int64_t shape[1] = {R};
        ml_tensor *t = NULL;
        if (f64) ml_tensor_from_data(&t, ML_F64, 1, shape, x);
        else {
            float *tmp = (float *)malloc((size_t)R * sizeof(float));
            for (int64_t i = 0; i < R; i++) tmp[i] = (float)x[i];
            ml_tensor_from_data(&t, ML_F32, 1, shape, tmp);
            free(tmp);
        }
        for (int kind = 0; kind < 4; kind++) {
            double want;
            int64_t want_i = -1;
            if (kind == R_MAX || kind == R_MIN) {
                ml_tensor *v = NULL, *ix = NULL;
                ml_err e = kind == R_MAX ? ml_max_dim(&v, &ix, t, 0, false) : ml_min_dim(&v, &ix, t, 0, false);
                CHECK(!e, "max_dim: %s", ml_errmsg());
                if (e) continue;
                want = ml_tensor_item(v);
                want_i = (int64_t)ml_tensor_item(ix);
                ml_tensor_release(v);
                ml_tensor_release(ix);
            } else {
                ml_tensor *r = NULL;
                int dims[1] = {0};
                ml_err e = ml_reduce(&r, kind == R_SUM ? ML_RSUM : ML_RPROD, t, 1, dims, false);
                CHECK(!e, "reduce: %s", ml_errmsg());
                if (e) continue;
                want = ml_tensor_item(r);
                ml_tensor_release(r);
            }
            acc got[4] = {replay_thread(kind, x, R), replay_block(kind, x, 0, R, 32), replay_block(kind, x, 0, R, 256),
                          replay_split(kind, x, R, 1 + (int)(rnd() % 9), 64)};
            for (int w = 0; w < 4; w++) {
                double g = f64 ? got[w].v : (double)(float)got[w].v;
                if (kind == R_MAX || kind == R_MIN) {
                    CHECK(g == want || (g != g && want != want), "kind %d order %d R %lld: value %g vs %g", kind, w,
                          (long long)R, g, want);
                    CHECK(got[w].i == want_i, "kind %d order %d R %lld flavour %d: index %lld vs %lld", kind, w,
                          (long long)R, flavour, (long long)got[w].i, (long long)want_i);
                } else {
                    double tol = 1e-12 * fmax(1.0, fabs(want));
                    if (!f64) tol = fmax(tol, 1.2e-7 * fabs(want));
                    CHECK(fabs(g - want) <= tol || (g != g && want != want) || g == want,
                          "kind %d order %d R %lld: %.17g vs %.17g", kind, w, (long long)R, g, want);
                }
            }
        }
        ml_tensor_release(t);
        free(x);
    }
    /* merge_dims keeps the linear index of a group */
    {
        int64_t shape[4] = {2, 1, 3, 4}, s0[4] = {12, 99, 4, 1}, s1[4] = {1, 0, 2, 6};
        int64_t *st[2] = {s0, s1};
        int m = merge_dims(4, shape, st, 2);
        CHECK(m == 3 && shape[0] == 2 && shape[1] == 3 && shape[2] == 4, "merge_dims: no merge across mixed strides");
        int64_t shape2[3] = {2, 3, 4}, t0[3] = {12, 4, 1};
        int64_t *st2[1] = {t0};
        m = merge_dims(3, shape2, st2, 1);
        CHECK(m == 1 && shape2[0] == 24 && t0[0] == 1, "merge_dims: contiguous dims merge");
    }
    TEST_END("reduce rules");
}

int main(void) {
    test_conversions();
    test_iteration();
    test_table();
    test_reduce();
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
