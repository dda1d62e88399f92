/* Tiny C test harness for medlua core tests: named checks, a summary line, and a
 * finite-difference gradient checker in f64.
 *
 *   ML_TEST(name) { ... ML_CHECK(cond); ML_CHECK_OK(call); ML_CHECK_NEAR(a, b, tol); }
 *   int main(void) { ML_RUN(name); ...; return ml_test_summary(); }
 *
 * Each test prints "ok <name>" or "FAIL <name>: <why>"; the summary prints "N passed, N failed".
 */
#ifndef ML_TEST_H
#define ML_TEST_H

#include "tensor/ml_tensor.h"
#include "tensor/ml_iter.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int ml_t_passed, ml_t_failed, ml_t_cur_failed;
static const char *ml_t_cur;

#define ML_TEST(name) static void test_##name(void)
#define ML_RUN(name)                                                    \
    do {                                                                \
        ml_t_cur = #name;                                               \
        ml_t_cur_failed = 0;                                            \
        int64_t live0_ = ml_tensor_live_count();                        \
        test_##name();                                                  \
        if (!ml_t_cur_failed && ml_tensor_live_count() != live0_) {     \
            printf("FAIL %s: leaked %lld tensors\n", #name,             \
                   (long long)(ml_tensor_live_count() - live0_));       \
            ml_t_cur_failed = 1;                                        \
        }                                                               \
        if (ml_t_cur_failed) ml_t_failed++;                             \
        else { ml_t_passed++; printf("ok %s\n", #name); }               \
        fflush(stdout);                                                 \
    } while (0)

#define ML_FAIL_(...)                                                   \
    do {                                                                \
        if (!ml_t_cur_failed) printf("FAIL %s: ", ml_t_cur);            \
        else printf("     %s: ", ml_t_cur);                             \
        printf(__VA_ARGS__);                                            \
        printf(" (%s:%d)\n", __FILE__, __LINE__);                       \
        ml_t_cur_failed = 1;                                            \
    } while (0)

#define ML_CHECK(cond) do { if (!(cond)) ML_FAIL_("check failed: %s", #cond); } while (0)
#define ML_CHECK_OK(call)                                                              \
    do {                                                                               \
        ml_err e_ = (call);                                                            \
        if (e_ != ML_OK) ML_FAIL_("%s returned %s: %s", #call, ml_errname(e_), ml_errmsg()); \
    } while (0)
#define ML_CHECK_ERR(call, code)                                                       \
    do {                                                                               \
        ml_err e_ = (call);                                                            \
        if (e_ != (code)) ML_FAIL_("%s returned %s, expected %s", #call, ml_errname(e_), ml_errname(code)); \
    } while (0)
#define ML_CHECK_NEAR(a, b, tol)                                                        \
    do {                                                                               \
        double a_ = (a), b_ = (b);                                                     \
        if (!(fabs(a_ - b_) <= (tol))) ML_FAIL_("%s = %.10g, expected %.10g (tol %g)", #a, a_, b_, (double)(tol)); \
    } while (0)

static inline int ml_test_summary(void) {
    printf("%d passed, %d failed\n", ml_t_passed, ml_t_failed);
    return ml_t_failed ? 1 : 0;
}

/* ---- element access over any strides */
static inline int64_t ml_t_next_index(int ndim, const int64_t *shape, int64_t *idx) {
    for (int d = ndim - 1; d >= 0; d--) {
        if (++idx[d] < shape[d]) return 1;
        idx[d] = 0;
    }
    return 0;
}

/* max |a-b| over all elements (shapes must match; returns INFINITY if they do not) */
static inline double ml_t_maxdiff(const ml_tensor *a, const ml_tensor *b) {
    if (a->ndim != b->ndim) return INFINITY;
    for (int i = 0; i < a->ndim; i++) if (a->shape[i] != b->shape[i]) return INFINITY;
    if (ml_tensor_numel(a) == 0) return 0;
    int64_t idx[ML_MAX_DIMS] = {0};
    double m = 0;
    do {
        double x = ml_tensor_get(a, idx), y = ml_tensor_get(b, idx);
        double d = fabs(x - y);
        if (isnan(x) != isnan(y)) return INFINITY;
        if (d > m) m = d;
    } while (ml_t_next_index(a->ndim, a->shape, idx));
    return m;
}

/* ---- comparison helpers shared by the kernel tests */
/* sum_i t[i] * sin(0.05 i) over the row-major flattening: a checksum sensitive to order */
static inline double ml_t_checksum(const ml_tensor *t) {
    if (!t || ml_tensor_numel(t) == 0) return 0;
    int64_t idx[ML_MAX_DIMS] = {0}, i = 0;
    double s = 0;
    do s += ml_tensor_get(t, idx) * sin(0.05 * (double)i++);
    while (ml_t_next_index(t->ndim, t->shape, idx));
    return s;
}

/* deterministic cotangent shaped like y: r[j] = cos(0.1 j) */
static inline ml_tensor *ml_t_cotangent(const ml_tensor *y) {
    ml_tensor *r = NULL;
    if (ml_tensor_empty(&r, (ml_dtype)y->dtype, y->ndim, y->shape)) return NULL;
    int64_t n = ml_tensor_numel(r);
    for (int64_t j = 0; j < n; j++) ml_store_elem(ml_tensor_data(r), (ml_dtype)y->dtype, j, cos(0.1 * (double)j));
    return r;
}

static inline double ml_t_maxabs(const ml_tensor *t) {
    if (ml_tensor_numel(t) == 0) return 0;
    int64_t idx[ML_MAX_DIMS] = {0};
    double m = 0;
    do { double v = fabs(ml_tensor_get(t, idx)); if (v > m) m = v; } while (ml_t_next_index(t->ndim, t->shape, idx));
    return m;
}

/* max |a-b| relative to max |b| */
static inline double ml_t_reldiff(const ml_tensor *a, const ml_tensor *b) {
    if (!a || !b) return INFINITY;
    double m = ml_t_maxabs(b);
    return ml_t_maxdiff(a, b) / (m > 1e-12 ? m : 1.0);
}

/* a copy of t as dtype dt (requires_grad as rg) */
static inline ml_tensor *ml_t_cast(ml_tensor *t, ml_dtype dt, bool rg) {
    if (!t) return NULL;
    ml_tensor *c = NULL;
    if (ml_tensor_empty(&c, dt, t->ndim, t->shape) || ml_copy_(c, t)) { ml_tensor_release(c); return NULL; }
    if (rg) ml_set_requires_grad(c, true);
    return c;
}

/* Generic f32-vs-f64 comparison: fn(out, in) on f64 inputs and on f32 copies, then backward with
 * the same cotangent; compares the output and every input gradient. */
typedef ml_err (*ml_t_fn)(ml_tensor **out, ml_tensor **in, void *ud);

static inline void ml_t_agree(const char *what, ml_t_fn fn, int nin, ml_tensor **in64, void *ud, double tol) {
    ml_tensor *in32[8] = {0}, *y64 = NULL, *y32 = NULL, *r64 = NULL, *r32 = NULL;
    for (int i = 0; i < nin; i++) {
        if (!in64[i]) continue;
        in32[i] = ml_t_cast(in64[i], ML_F32, in64[i]->requires_grad);
        ml_copy_(in64[i], in32[i]); /* identical (f32-representable) data */
    }
    ML_CHECK_OK(fn(&y64, in64, ud));
    ML_CHECK_OK(fn(&y32, in32, ud));
    if (y64 && y32) {
        ml_randn(&r64, ML_F64, y64->ndim, y64->shape);
        r32 = ml_t_cast(r64, ML_F32, false);
        ml_copy_(r64, r32);
        /* Error scales: fn on |inputs| and its gradients for the cotangent |r| (f64). A sum of
         * products that cancels (a dot product near 0) has a tiny |y| but an f32 rounding error of
         * order eps * sum |a||b|; measured against max |y| alone, such a case failed at random. */
        ml_tensor *ab[8] = {0}, *ys = NULL, *rs = NULL;
        double yscale = ml_t_maxabs(y64), gscale[8] = {0};
        for (int i = 0; i < nin; i++) {
            if (!in64[i]) continue;
            ml_tensor *t = NULL;
            ML_CHECK_OK(ml_unary(&t, ML_ABS, in64[i]));
            ab[i] = ml_t_cast(t, ML_F64, in64[i]->requires_grad);
            ml_tensor_release(t);
        }
        ML_CHECK_OK(ml_unary(&rs, ML_ABS, r64));
        if (fn(&ys, ab, ud) == ML_OK && ys) {
            double m = ml_t_maxabs(ys);
            if (m > yscale) yscale = m;
            if (ml_backward(ys, rs, false) == ML_OK)
                for (int i = 0; i < nin; i++)
                    if (ab[i] && ab[i]->grad) gscale[i] = ml_t_maxabs(ab[i]->grad);
        }
        for (int i = 0; i < nin; i++) ml_tensor_release(ab[i]); /* frees its .grad too */
        ml_tensor_release(ys);
        ml_tensor_release(rs);

        double e = ml_t_maxdiff(y32, y64) / (yscale > 1e-12 ? yscale : 1.0);
        if (!(e <= tol)) ML_FAIL_("%s: forward rel err %g", what, e);
        ML_CHECK_OK(ml_backward(y64, r64, false));
        ML_CHECK_OK(ml_backward(y32, r32, false));
        for (int i = 0; i < nin; i++) {
            if (!in64[i] || !in64[i]->requires_grad) continue;
            double gs = ml_t_maxabs(in64[i]->grad);
            if (gscale[i] > gs) gs = gscale[i];
            double eg = in32[i]->grad ? ml_t_maxdiff(in32[i]->grad, in64[i]->grad) / (gs > 1e-12 ? gs : 1.0) : INFINITY;
            if (!(eg <= tol)) ML_FAIL_("%s: input %d grad rel err %g", what, i, eg);
        }
    }
    for (int i = 0; i < nin; i++) {
        ml_tensor_release(in32[i]);
        if (in64[i]) { ml_tensor_release(in64[i]->grad); in64[i]->grad = NULL; }
    }
    ml_tensor_release(y64);
    ml_tensor_release(y32);
    ml_tensor_release(r64);
    ml_tensor_release(r32);
}

/* the call returned `want` and the message mentions need1 and need2 (either may be NULL) */
static inline void ml_t_expect_err(ml_err got, ml_err want, const char *need1, const char *need2, const char *what) {
    if (got != want) {
        ML_FAIL_("%s: returned %s, expected %s (%s)", what, ml_errname(got), ml_errname(want), ml_errmsg());
        return;
    }
    if ((need1 && !strstr(ml_errmsg(), need1)) || (need2 && !strstr(ml_errmsg(), need2)))
        ML_FAIL_("%s: message \"%s\" should mention \"%s\" and \"%s\"", what, ml_errmsg(), need1 ? need1 : "",
                 need2 ? need2 : "");
}

/* sum(out * r) computed with plain loops (no autograd, no ops) */
static inline double ml_t_dot(const ml_tensor *out, const ml_tensor *r) {
    if (ml_tensor_numel(out) == 0) return 0;
    int64_t idx[ML_MAX_DIMS] = {0};
    double s = 0;
    do s += ml_tensor_get(out, idx) * ml_tensor_get(r, idx);
    while (ml_t_next_index(out->ndim, out->shape, idx));
    return s;
}

static inline void ml_t_set(ml_tensor *t, int64_t lin, double v) {
    /* t must be contiguous f64 */
    ((double *)ml_tensor_data(t))[lin] = v;
}

/* Function under test: builds out from inputs (borrowed). */
typedef ml_err (*ml_t_fn)(ml_tensor **out, ml_tensor **in, void *ud);

/* Finite-difference gradient check in f64.
 * inputs: contiguous f64 tensors; those with requires_grad are checked.
 * Checks: analytic (backward with a random cotangent r) vs central differences; backward run
 * twice gives bit-identical gradients. Returns 1 if ok (and reports failures via ML_FAIL_). */
static inline int ml_gradcheck(const char *what, ml_t_fn f, int nin, ml_tensor **in, void *ud, double eps,
                               double atol, double rtol) {
    int ok = 1;
    ml_tensor *out = NULL, *r = NULL;
    ml_err e = f(&out, in, ud);
    if (e) { ML_FAIL_("%s: forward failed: %s", what, ml_errmsg()); return 0; }
    if (!out->requires_grad) {
        ML_FAIL_("%s: output does not require grad", what);
        ml_tensor_release(out);
        return 0;
    }
    e = ml_randn(&r, ML_F64, out->ndim, out->shape);
    if (e) { ml_tensor_release(out); return 0; }
    for (int i = 0; i < nin; i++) if (in[i]) { ml_tensor_release(in[i]->grad); in[i]->grad = NULL; }
    e = ml_backward(out, r, false);
    ml_tensor_release(out);
    if (e) { ML_FAIL_("%s: backward failed: %s", what, ml_errmsg()); ml_tensor_release(r); return 0; }
    /* second run for determinism */
    ml_tensor *g1[16] = {0};
    for (int i = 0; i < nin && i < 16; i++)
        if (in[i] && in[i]->requires_grad) { g1[i] = in[i]->grad; in[i]->grad = NULL; }
    if ((e = f(&out, in, ud)) || (e = ml_backward(out, r, false))) {
        ML_FAIL_("%s: second forward/backward failed: %s", what, ml_errmsg());
        ok = 0;
    }
    ml_tensor_release(out);
    for (int i = 0; i < nin && i < 16 && ok; i++) {
        if (!in[i] || !in[i]->requires_grad) continue;
        if (!g1[i] || !in[i]->grad) { ML_FAIL_("%s: input %d got no gradient", what, i); ok = 0; break; }
        if (ml_t_maxdiff(g1[i], in[i]->grad) != 0) {
            ML_FAIL_("%s: input %d: backward is not deterministic (max diff %g)", what, i,
                     ml_t_maxdiff(g1[i], in[i]->grad));
            ok = 0;
        }
    }
    for (int i = 0; i < nin && i < 16; i++) ml_tensor_release(g1[i]);
    /* numeric */
    bool prev = ml_set_grad_enabled(false);
    for (int i = 0; i < nin && ok; i++) {
        ml_tensor *x = in[i];
        if (!x || !x->requires_grad) continue;
        int64_t n = ml_tensor_numel(x);
        double *xd = (double *)ml_tensor_data(x);
        for (int64_t k = 0; k < n && ok; k++) {
            double orig = xd[k], fp, fm;
            xd[k] = orig + eps;
            if ((e = f(&out, in, ud))) { ok = 0; break; }
            fp = ml_t_dot(out, r);
            ml_tensor_release(out);
            xd[k] = orig - eps;
            if ((e = f(&out, in, ud))) { ok = 0; break; }
            fm = ml_t_dot(out, r);
            ml_tensor_release(out);
            xd[k] = orig;
            double num = (fp - fm) / (2 * eps);
            double ana = ((double *)ml_tensor_data(x->grad))[k];
            if (!(fabs(num - ana) <= atol + rtol * fabs(num))) {
                ML_FAIL_("%s: input %d element %lld: analytic %.8g vs numeric %.8g", what, i, (long long)k, ana, num);
                ok = 0;
            }
        }
        if (e) ML_FAIL_("%s: forward failed during finite differences: %s", what, ml_errmsg());
    }
    ml_set_grad_enabled(prev);
    for (int i = 0; i < nin; i++) if (in[i]) { ml_tensor_release(in[i]->grad); in[i]->grad = NULL; }
    ml_tensor_release(r);
    return ok;
}

/* Make a random contiguous f64 tensor (requires_grad as given); printed seed comes from caller. */
static inline ml_tensor *ml_t_randn(int ndim, const int64_t *shape, bool requires_grad) {
    ml_tensor *t = NULL;
    if (ml_randn(&t, ML_F64, ndim, shape) != ML_OK) return NULL;
    if (requires_grad) ml_set_requires_grad(t, true);
    return t;
}


/* ---- files (tests that write into temporary directories) */
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

static inline bool exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* rm -rf dir (a plain file is unlinked) */
static inline void rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) {
        unlink(dir);
        return;
    }
    struct dirent *e;
    char p[1024];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        int n = snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (n < 0 || n >= (int)sizeof p) continue;
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) rm_tree(p);
        else unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

#endif
