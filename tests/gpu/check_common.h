/* Shared by tests/gpu/host_check.cu and tests/gpu/kernel_check.cu (include after the kernel .cu files):
 * the pass/fail counters and macros, a seeded xorshift generator (CHECK_SEED before the include), and the
 * op table's device functors evaluated on the host. */
#ifndef ML_GPU_CHECK_COMMON_H
#define ML_GPU_CHECK_COMMON_H

#include <stdio.h>
#include <string.h>

static int g_pass, g_fail;
/* inside a test: `int fails_ = 0;` ... CHECK(...) ... TEST_END("name") */
#define CHECK(cond, ...)                                                                            \
    do {                                                                                            \
        if (!(cond)) {                                                                              \
            if (fails_ < 10) { printf("  FAIL: " __VA_ARGS__); printf("\n"); }                      \
            fails_++;                                                                               \
        }                                                                                           \
    } while (0)
#define TEST_END(name)                                                                              \
    do {                                                                                            \
        if (fails_) { printf("FAIL %s (%d)\n", name, fails_); g_fail++; }                           \
        else { printf("ok %s\n", name); g_pass++; }                                                 \
        fflush(stdout);                                                                             \
    } while (0)

#ifndef CHECK_SEED
#define CHECK_SEED 88172645463325252ull
#endif
static uint64_t g_rng = CHECK_SEED;
static uint64_t rnd(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}
static double rndu(void) { return (double)(rnd() >> 11) * (1.0 / 9007199254740992.0); }

/* every iop's device functor, run on the host: host_f32[iop](x, y, z, p0, p1) */
typedef double (*host_ap_fn)(double, double, double, double, double);
template <class F>
static double host_ap(double x, double y, double z, double p0, double p1) {
    typedef typename F::in_t TT;
    return (double)F::ap((TT)x, (TT)y, (TT)z, (TT)p0, (TT)p1);
}
static const host_ap_fn host_f32[ML_NIOPS] = {
#define CC_F32_(name, ar, ob, expr) host_ap<name##_f32>,
    ML_IOP_LIST(CC_F32_)
#undef CC_F32_
};
static const host_ap_fn host_f64[ML_NIOPS] = {
#define CC_F64_(name, ar, ob, expr) host_ap<name##_f64>,
    ML_IOP_LIST(CC_F64_)
#undef CC_F64_
};

#endif
