/* GPU check of the CUDA kernels on their own (no runtime/allocator needed: plain cudaMalloc), against
 * host references that tests/gpu/host_check.cu proves equal to the CPU code paths:
 *  - ml_cuda_ew: every iop, f32 and f64, on contiguous, transposed+broadcast and scalar operands,
 *    against the same table functor run on the host (exact for + - * / and comparisons; libm ops
 *    within a relative 1e-5 (f32) / 1e-12 (f64) - the GPU's math library is not glibc's);
 *  - ml_cuda_copy: every dtype pair over a transposed, broadcast source, bit for bit against
 *    mlk_store(mlk_load) on the host; ml_cuda_fill with awkward values;
 *  - ml_cuda_reduce: sum/max/min/prod over several dim sets, with ties and NaNs (values, first index);
 *  - ml_cuda_gemm: f32/f64/bf16/f16, all transposes, batched, beta, against double loops.
 * Build (repository root, after `make build/medlua`):
 *   nvcc -O2 -std=c++17 -gencode arch=compute_90,code=sm_90 -Imodules -Imodules/tensor -Imodules/cuda \
 *     -Xcompiler -fopenmp tests/gpu/kernel_check.cu -o build/kernel_check build/libmedlua.a <LDLIBS> -ldl
 * Ends with "N passed, N failed". */
#define ml_cuda_ew kc_cuda_ew
#define ml_cuda_copy kc_cuda_copy
#define ml_cuda_fill kc_cuda_fill
#define ml_cuda_reduce kc_cuda_reduce
#define ml_cuda_malloc kc_cuda_malloc
#define ml_cuda_free kc_cuda_free
#define ml_cuda_gemm kc_cuda_gemm
#define ml_cuda_set_tf32 kc_cuda_set_tf32
#define ml_cuda_tf32 kc_cuda_tf32
#include "../../modules/cuda/ml_cuda_ew.cu"
#include "../../modules/cuda/ml_cuda_reduce.cu"
#include "../../modules/cuda/ml_cuda_gemm.cu"

#include <stdio.h>
#include <stdlib.h>
#include <vector>

extern "C" {
void *kc_cuda_malloc(size_t n, int) {
    void *p = NULL;
    return cudaMalloc(&p, n ? n : 1) == cudaSuccess ? p : NULL;
}
void kc_cuda_free(void *p, int) {
    cudaDeviceSynchronize();
    cudaFree(p);
}
}

#define CHECK_SEED 0x9E3779B97F4A7C15ull
#include "check_common.h"
#define CK(call)                                                                                    \
    do {                                                                                            \
        ml_err e_ = (call);                                                                         \
        CHECK(!e_, "%s: %s", #call, ml_errmsg());                                                   \
    } while (0)


static void *dalloc(size_t n) {
    void *p = NULL;
    if (cudaMalloc(&p, n ? n : 1) != cudaSuccess) { printf("cudaMalloc failed\n"); exit(2); }
    return p;
}
static void up(void *d, const void *h, size_t n) { cudaMemcpy(d, h, n, cudaMemcpyHostToDevice); }
static void down(void *h, const void *d, size_t n) {
    cudaDeviceSynchronize();
    cudaMemcpy(h, d, n, cudaMemcpyDeviceToHost);
}

static ml_cuda_opnd opnd(void *base, int dt, int64_t off, int nd, const int64_t *st) {
    ml_cuda_opnd o;
    memset(&o, 0, sizeof o);
    o.base = (char *)base;
    o.dtype = dt;
    o.off = off;
    for (int d = 0; d < nd; d++) o.st[d] = st[d];
    return o;
}

/* ------------------------------------------------------------------ ew */
/* host_f32 / host_f64: check_common.h */

static void test_ew(void) {
    int fails_ = 0;
    /* shape [R, C]; layouts: 0 contiguous, 1 input 1 transposed + input 2 a broadcast row, 2 scalars */
    const int64_t R = 37, C = 53, N = R * C;
    const double params[2] = {0.3, 0.7};
    for (int kdi = 0; kdi < 2; kdi++) {
        int kd = kdi ? ML_F64 : ML_F32;
        size_t es = kd == ML_F64 ? 8 : 4;
        std::vector<double> in[3];
        for (int k = 0; k < 3; k++) {
            in[k].resize(N);
            for (int64_t i = 0; i < N; i++) {
                double v = (rndu() - 0.5) * 8;
                if (i % 97 == 0) v = 0;
                if (i % 101 == 1) v = NAN;
                if (i % 103 == 2) v = (i & 1) ? INFINITY : -INFINITY;
                if (kd == ML_F32) v = (float)v;
                in[k][i] = v;
            }
        }
        void *din[3], *dout = dalloc((size_t)N * 8);
        for (int k = 0; k < 3; k++) {
            din[k] = dalloc((size_t)N * es);
            std::vector<unsigned char> tmp((size_t)N * es);
            for (int64_t i = 0; i < N; i++) mlk_store((char *)tmp.data(), kd, i, in[k][i]);
            up(din[k], tmp.data(), tmp.size());
        }
        int64_t shape[2] = {R, C}, cst[2] = {C, 1}, tst[2] = {1, R}, rowst[2] = {0, 1};
        for (int iop = 0; iop < ML_NIOPS; iop++) {
            int ar = iop_arity[iop], od = iop_boolout[iop] ? ML_BOOL : kd;
            for (int lay = 0; lay < 3; lay++) {
                ml_cuda_opnd ops[4];
                ops[0] = opnd(dout, od, 0, 2, cst);
                const double sc[3] = {1.25, -0.5, 2.0};
                for (int k = 0; k < ar; k++) {
                    if (lay == 0) ops[k + 1] = opnd(din[k], kd, 0, 2, cst);
                    else if (lay == 1) ops[k + 1] = opnd(din[k], kd, 0, 2, k == 0 ? tst : k == 1 ? rowst : cst);
                    else if (k == ar - 1 && ar > 1) {
                        ops[k + 1] = opnd(NULL, kd, 0, 0, NULL);
                        ops[k + 1].is_scalar = true;
                        ops[k + 1].scalar = sc[k];
                    } else ops[k + 1] = opnd(din[k], kd, 0, 2, cst);
                }
                CK(ml_cuda_ew(iop, kd, 2, shape, ar + 1, ops, params));
                std::vector<unsigned char> got((size_t)N * 8);
                down(got.data(), dout, (size_t)N * (od == ML_BOOL ? 1 : es));
                int bad = 0;
                for (int64_t r = 0; r < R; r++)
                    for (int64_t c = 0; c < C; c++) {
                        double v[3] = {0, 0, 0};
                        for (int k = 0; k < ar; k++) {
                            if (ops[k + 1].is_scalar) v[k] = kd == ML_F32 ? (double)(float)sc[k] : sc[k];
                            else {
                                const int64_t *st = ops[k + 1].st;
                                v[k] = in[k][r * st[0] + c * st[1]];
                            }
                        }
                        double want = (kd == ML_F64 ? host_f64 : host_f32)[iop](v[0], v[1], v[2], params[0], params[1]);
                        double g = mlk_load((const char *)got.data(), od, r * C + c);
                        if (g == want || (g != g && want != want)) continue;
                        double tol = (kd == ML_F64 ? 1e-12 : 1e-5) * fmax(1.0, fabs(want));
                        if (fabs(g - want) <= tol) continue;
                        if (bad++ < 2)
                            CHECK(false, "%s %s layout %d at (%lld,%lld) x=%.9g y=%.9g z=%.9g: gpu %.17g, host %.17g",
                                  iop_names[iop], ml_dtype_name((ml_dtype)kd), lay, (long long)r, (long long)c, v[0],
                                  v[1], v[2], g, want);
                        else fails_++;
                    }
            }
        }
        for (int k = 0; k < 3; k++) cudaFree(din[k]);
        cudaFree(dout);
    }
    TEST_END("ew: every iop, f32/f64, contiguous/strided/scalar");
}

/* ------------------------------------------------------------------ copy / fill */
static void test_copy_fill(void) {
    int fails_ = 0;
    const int64_t R = 19, C = 23, N = R * C;
    const double special[] = {0.0, -0.0, 0.5, -1.5, 255.5, 256.0, 300.7, -300.7, 2147483648.0, -2147483649.0,
                              1e20, -1e20, INFINITY, -INFINITY, NAN, 65520.0, 6.1e-5, 3e-8, 3.4e38};
    for (int sd = ML_F32; sd <= ML_F16; sd++) {
        std::vector<double> src((size_t)N);
        for (int64_t i = 0; i < N; i++) {
            double v = i < (int64_t)(sizeof special / sizeof *special) ? special[i] : (rndu() - 0.5) * 600;
            src[i] = v;
        }
        size_t ses = (size_t)mlk_dtype_size(sd);
        std::vector<unsigned char> hs((size_t)N * ses);
        for (int64_t i = 0; i < N; i++) mlk_store((char *)hs.data(), sd, i, src[i]);
        void *ds = dalloc(hs.size());
        up(ds, hs.data(), hs.size());
        for (int dd = ML_F32; dd <= ML_F16; dd++) {
            size_t des = (size_t)mlk_dtype_size(dd);
            void *dd_ = dalloc((size_t)N * des);
            int64_t shape[2] = {R, C}, cst[2] = {C, 1}, tst[2] = {1, R}, bst[2] = {0, 1};
            for (int lay = 0; lay < 3; lay++) {
                const int64_t *sst = lay == 0 ? cst : lay == 1 ? tst : bst;
                ml_cuda_opnd o = opnd(dd_, dd, 0, 2, cst), i = opnd(ds, sd, 0, 2, sst);
                CK(ml_cuda_copy(2, shape, &o, &i));
                std::vector<unsigned char> got((size_t)N * des), want((size_t)N * des);
                down(got.data(), dd_, got.size());
                for (int64_t r = 0; r < R; r++)
                    for (int64_t c = 0; c < C; c++) {
                        int64_t si = r * sst[0] + c * sst[1];
                        if (dd == sd) memcpy(want.data() + (r * C + c) * des, hs.data() + si * ses, des);
                        else mlk_store((char *)want.data(), dd, r * C + c, mlk_load((const char *)hs.data(), sd, si));
                    }
                CHECK(memcmp(got.data(), want.data(), got.size()) == 0, "copy %s -> %s layout %d",
                      ml_dtype_name((ml_dtype)sd), ml_dtype_name((ml_dtype)dd), lay);
            }
            if (sd == ML_F32) {
                for (double v : special) {
                    ml_cuda_opnd o = opnd(dd_, dd, 1, 2, tst); /* transposed view at offset 1 of [C, R] */
                    int64_t shape2[2] = {R - 1, C};
                    CK(cudaMemset(dd_, 0, (size_t)N * des) == cudaSuccess ? ML_OK : ML_ERR_DEVICE);
                    CK(ml_cuda_fill(2, shape2, &o, v));
                    std::vector<unsigned char> got((size_t)N * des), want((size_t)N * des, 0);
                    down(got.data(), dd_, got.size());
                    for (int64_t r = 0; r < R - 1; r++)
                        for (int64_t c = 0; c < C; c++) mlk_store((char *)want.data(), dd, 1 + r + c * R, v);
                    CHECK(memcmp(got.data(), want.data(), got.size()) == 0, "fill %s with %g", ml_dtype_name((ml_dtype)dd), v);
                }
            }
            cudaFree(dd_);
        }
        cudaFree(ds);
    }
    TEST_END("copy: every dtype pair, strided/broadcast; fill");
}

/* ------------------------------------------------------------------ reduce */
static void test_reduce(void) {
    int fails_ = 0;
    const int64_t shapes[][3] = {{4, 5, 6}, {3, 1000, 7}, {2, 70000, 1}, {1, 300001, 2}, {513, 3, 17}};
    for (const auto &sh : shapes) {
        int64_t shape[3] = {sh[0], sh[1], sh[2]}, N = sh[0] * sh[1] * sh[2];
        int64_t st[3] = {sh[1] * sh[2], sh[2], 1};
        for (int kd : {ML_F32, ML_F64}) {
            size_t es = kd == ML_F64 ? 8 : 4;
            std::vector<double> x((size_t)N);
            for (int64_t i = 0; i < N; i++) {
                double v = (double)(rnd() % 7) - 3;                  /* ties */
                if (rnd() % 5000 == 0) v = NAN;
                if (N < 1000 || rnd() % 3) v += (kd == ML_F64 ? 1e-3 : 1e-2) * (double)(rnd() % 3);
                x[i] = kd == ML_F32 ? (double)(float)v : v;
            }
            std::vector<unsigned char> hx((size_t)N * es);
            for (int64_t i = 0; i < N; i++) mlk_store((char *)hx.data(), kd, i, x[i]);
            void *dx = dalloc(hx.size()), *dout = dalloc((size_t)N * 8), *didx = dalloc((size_t)N * 8);
            up(dx, hx.data(), hx.size());
            for (int mask = 1; mask < 8; mask++) {
                bool red[3] = {(mask & 1) != 0, (mask & 2) != 0, (mask & 4) != 0};
                int nred = red[0] + red[1] + red[2];
                int64_t oshape[3], ost[3], s = 1;
                for (int d = 2; d >= 0; d--) { oshape[d] = red[d] ? 1 : shape[d]; ost[d] = s; s *= oshape[d]; }
                int64_t nout = s;
                int64_t rcount = N / nout;
                for (int kind = 0; kind < 4; kind++) {
                    if (kind == 3 && rcount > 64) continue; /* long products overflow order-dependently */
                    ml_cuda_opnd o = opnd(dout, kd, 0, 3, ost), in = opnd(dx, kd, 0, 3, st), ix = opnd(didx, ML_I64, 0, 3, ost);
                    bool want_idx = (kind == 1 || kind == 2) && nred == 1;
                    CK(ml_cuda_reduce(kind, kd, 3, shape, red, &o, &in, want_idx ? &ix : NULL));
                    std::vector<unsigned char> got((size_t)nout * es);
                    std::vector<int64_t> gidx((size_t)nout);
                    down(got.data(), dout, got.size());
                    if (want_idx) down(gidx.data(), didx, (size_t)nout * 8);
                    int bad = 0;
                    for (int64_t oi = 0; oi < nout; oi++) {
                        int64_t oc[3], rem = oi;
                        for (int d = 2; d >= 0; d--) { oc[d] = rem % oshape[d]; rem /= oshape[d]; }
                        /* reference: sequential over the reduced sub-space in row-major order */
                        double acc = kind == 0 ? 0 : kind == 3 ? 1 : kind == 1 ? -INFINITY : INFINITY;
                        int64_t best = -1, ri = 0;
                        bool nan_seen = false;
                        for (int64_t a0 = 0; a0 < (red[0] ? shape[0] : 1); a0++)
                            for (int64_t a1 = 0; a1 < (red[1] ? shape[1] : 1); a1++)
                                for (int64_t a2 = 0; a2 < (red[2] ? shape[2] : 1); a2++, ri++) {
                                    int64_t i0 = red[0] ? a0 : oc[0], i1 = red[1] ? a1 : oc[1], i2 = red[2] ? a2 : oc[2];
                                    double v = x[i0 * st[0] + i1 * st[1] + i2 * st[2]];
                                    if (kind == 0) acc += v;
                                    else if (kind == 3) acc *= v;
                                    else if (!nan_seen) {
                                        if (v != v) { nan_seen = true; acc = v; best = ri; }
                                        else if (best < 0 || (kind == 1 ? v > acc : v < acc)) { acc = v; best = ri; }
                                    }
                                }
                        double g = mlk_load((const char *)got.data(), kd, oi);
                        double w = kd == ML_F32 ? (double)(float)acc : acc;
                        bool ok = g == w || (g != g && w != w);
                        if (!ok && (kind == 0 || kind == 3)) ok = fabs(g - w) <= 1e-9 * fmax(1.0, fabs(w)) + (kd == ML_F32 ? 1.2e-7 * fabs(w) : 0);
                        if (want_idx && gidx[oi] != best) ok = false;
                        if (!ok && bad++ < 2)
                            CHECK(false, "reduce kind %d %s shape [%lld,%lld,%lld] mask %d out %lld: gpu %.17g idx %lld, want %.17g idx %lld",
                                  kind, ml_dtype_name((ml_dtype)kd), (long long)shape[0], (long long)shape[1],
                                  (long long)shape[2], mask, (long long)oi, g, want_idx ? (long long)gidx[oi] : -1LL, w,
                                  (long long)best);
                        else if (!ok) fails_++;
                    }
                }
            }
            cudaFree(dx);
            cudaFree(dout);
            cudaFree(didx);
        }
    }
    TEST_END("reduce: sum/max/min/prod, every dim set, ties, NaN, first index");
}

/* ------------------------------------------------------------------ gemm */
static void test_gemm(void) {
    int fails_ = 0;
    const int64_t M = 33, Nn = 47, K = 29, B = 3;
    for (int kd : {ML_F32, ML_F64, ML_BF16, ML_F16}) {
        size_t es = (size_t)mlk_dtype_size(kd);
        for (int tr = 0; tr < 4; tr++) {
            bool ta = tr & 1, tb = tr & 2;
            int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : Nn) + 1, ldc = Nn + 2;
            int64_t sa = (ta ? K : M) * lda, sb = (tb ? Nn : K) * ldb, sc = M * ldc;
            std::vector<double> a((size_t)(sa * B)), b((size_t)(sb * B)), c((size_t)(sc * B));
            std::vector<unsigned char> ha(a.size() * es), hb(b.size() * es), hc(c.size() * es);
            for (size_t i = 0; i < a.size(); i++) { mlk_store((char *)ha.data(), kd, (int64_t)i, rndu() - 0.5); a[i] = mlk_load((const char *)ha.data(), kd, (int64_t)i); }
            for (size_t i = 0; i < b.size(); i++) { mlk_store((char *)hb.data(), kd, (int64_t)i, rndu() - 0.5); b[i] = mlk_load((const char *)hb.data(), kd, (int64_t)i); }
            for (size_t i = 0; i < c.size(); i++) { mlk_store((char *)hc.data(), kd, (int64_t)i, rndu() - 0.5); c[i] = mlk_load((const char *)hc.data(), kd, (int64_t)i); }
            void *da = dalloc(ha.size()), *db = dalloc(hb.size()), *dc = dalloc(hc.size());
            up(da, ha.data(), ha.size());
            up(db, hb.data(), hb.size());
            up(dc, hc.data(), hc.size());
            const double alpha = 1.5, beta = tr == 3 ? 0.5 : 0.0;
            CK(ml_cuda_gemm(kd, ta, tb, M, Nn, K, da, lda, sa, db, ldb, sb, dc, ldc, sc, B, alpha, beta, 0));
            down(hc.data(), dc, hc.size());
            double tol = kd == ML_F64 ? 1e-12 : kd == ML_F32 ? 1e-5 : kd == ML_BF16 ? 3e-2 : 4e-3;
            int bad = 0;
            for (int64_t bi = 0; bi < B; bi++)
                for (int64_t i = 0; i < M; i++)
                    for (int64_t j = 0; j < Nn; j++) {
                        double s = 0;
                        for (int64_t k = 0; k < K; k++) {
                            double av = ta ? a[bi * sa + k * lda + i] : a[bi * sa + i * lda + k];
                            double bv = tb ? b[bi * sb + j * ldb + k] : b[bi * sb + k * ldb + j];
                            s += av * bv;
                        }
                        double want = alpha * s + beta * c[bi * sc + i * ldc + j];
                        double g = mlk_load((const char *)hc.data(), kd, bi * sc + i * ldc + j);
                        if (fabs(g - want) > tol * fmax(1.0, fabs(want)) && bad++ < 2)
                            CHECK(false, "gemm %s ta %d tb %d [%lld,%lld,%lld]: %.9g vs %.9g", ml_dtype_name((ml_dtype)kd),
                                  ta, tb, (long long)bi, (long long)i, (long long)j, g, want);
                    }
            if (bad > 2) fails_ += bad - 2;
            cudaFree(da);
            cudaFree(db);
            cudaFree(dc);
        }
    }
    TEST_END("gemm: f32/f64/bf16/f16, transposes, batch, beta");
}

int main(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        printf("no CUDA device: %s\n", cudaGetErrorString(cudaGetLastError()));
        return 2;
    }
    test_ew();
    test_copy_fill();
    test_reduce();
    test_gemm();
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
