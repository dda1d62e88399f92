/* Core tests: creation, dtypes, half conversion, RNG determinism, strided copy, views and their
 * gradients, autograd bookkeeping (version counter, freed graph, leaf accumulation). */
#include "ml_test.h"
#include "tensor/ml_iter.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static uint64_t g_seed;

ML_TEST(creation) {
    ml_tensor *t;
    ML_CHECK_OK(ml_arange(&t, ML_F32, 0, 10, 1));
    ML_CHECK(t->ndim == 1 && t->shape[0] == 10);
    ML_CHECK_NEAR(ml_tensor_get(t, (int64_t[]){7}), 7, 0);
    ml_tensor_release(t);
    ML_CHECK_OK(ml_arange(&t, ML_F64, 0, 1, 0.3));
    ML_CHECK(t->shape[0] == 4);
    ml_tensor_release(t);
    ML_CHECK_OK(ml_linspace(&t, ML_F64, -1, 1, 5));
    ML_CHECK_NEAR(ml_tensor_get(t, (int64_t[]){1}), -0.5, 1e-15);
    ML_CHECK_NEAR(ml_tensor_get(t, (int64_t[]){4}), 1, 0);
    ml_tensor_release(t);
    ML_CHECK_OK(ml_eye(&t, ML_I64, 3, 4));
    ML_CHECK(ml_tensor_get(t, (int64_t[]){2, 2}) == 1 && ml_tensor_get(t, (int64_t[]){2, 3}) == 0);
    ml_tensor_release(t);
    ML_CHECK_OK(ml_full(&t, ML_U8, 2, (int64_t[]){2, 3}, 7));
    ML_CHECK(ml_tensor_get(t, (int64_t[]){1, 2}) == 7);
    ml_tensor_release(t);
    ML_CHECK_ERR(ml_zeros(&t, ML_F32, 2, (int64_t[]){2, -3}), ML_ERR_SHAPE);
    ML_CHECK(t == NULL && strstr(ml_errmsg(), "[2, -3]"));
    ML_CHECK_ERR(ml_zeros(&t, ML_F32, 3, (int64_t[]){1 << 30, 1 << 30, 1 << 30}), ML_ERR_SHAPE);
    ML_CHECK_ERR(ml_zeros(&t, ML_F32, 9, (int64_t[]){1, 1, 1, 1, 1, 1, 1, 1, 1}), ML_ERR_DIM);
    ML_CHECK_ERR(ml_arange(&t, ML_F32, 0, 1, 0), ML_ERR_ARG);
}

ML_TEST(dtypes_and_halves) {
    ML_CHECK(ml_dtype_promote(ML_I64, ML_F32) == ML_F32);
    ML_CHECK(ml_dtype_promote(ML_BOOL, ML_U8) == ML_U8);
    ML_CHECK(ml_dtype_promote(ML_F16, ML_BF16) == ML_F32);
    ML_CHECK(ml_dtype_from_name("double") == ML_F64 && ml_dtype_from_name("nope") == -1);
    float vals[] = {0.f, 1.f, -2.5f, 65504.f, 1e-7f, 3.14159f, -0.f};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        float h = ml_f16_to_f32(ml_f32_to_f16(vals[i]));
        ML_CHECK_NEAR(h, vals[i], fabs(vals[i]) * 1e-3 + 6e-8);
        float b = ml_bf16_to_f32(ml_f32_to_bf16(vals[i]));
        ML_CHECK_NEAR(b, vals[i], fabs(vals[i]) * 8e-3);
    }
    ML_CHECK(isinf(ml_f16_to_f32(ml_f32_to_f16(1e6f))));
    ML_CHECK(isnan(ml_bf16_to_f32(ml_f32_to_bf16(NAN))));
    /* cast round trip through a tensor */
    ml_tensor *a, *b, *c;
    ML_CHECK_OK(ml_arange(&a, ML_F32, -3, 3, 0.5));
    ML_CHECK_OK(ml_to_dtype(&b, a, ML_BF16));
    ML_CHECK_OK(ml_to_dtype(&c, b, ML_F64));
    ML_CHECK(ml_t_maxdiff(a, c) == 0);
    ml_tensor_release(a); ml_tensor_release(b); ml_tensor_release(c);
}

ML_TEST(rng_determinism_across_threads) {
    int64_t shape[1] = {300001};
    ml_tensor *a, *b;
    int nt = ml_num_threads();
    ml_manual_seed(1234);
    ml_set_num_threads(1);
    ML_CHECK_OK(ml_randn(&a, ML_F32, 1, shape));
    ml_manual_seed(1234);
    ml_set_num_threads(nt > 1 ? nt : 2);
    ML_CHECK_OK(ml_randn(&b, ML_F32, 1, shape));
    ml_set_num_threads(nt);
    ML_CHECK(ml_t_maxdiff(a, b) == 0);
    /* moments */
    double s = 0, s2 = 0;
    float *d = ml_tensor_data(a);
    for (int64_t i = 0; i < shape[0]; i++) { s += d[i]; s2 += (double)d[i] * d[i]; }
    ML_CHECK_NEAR(s / shape[0], 0, 0.01);
    ML_CHECK_NEAR(s2 / shape[0], 1, 0.01);
    ml_tensor_release(a); ml_tensor_release(b);
    ML_CHECK_OK(ml_randint(&a, ML_I64, 3, 7, 1, shape));
    int64_t *id = ml_tensor_data(a);
    int lo_ok = 1, seen3 = 0, seen6 = 0;
    for (int64_t i = 0; i < shape[0]; i++) { lo_ok &= id[i] >= 3 && id[i] < 7; seen3 |= id[i] == 3; seen6 |= id[i] == 6; }
    ML_CHECK(lo_ok && seen3 && seen6);
    ml_tensor_release(a);
    ML_CHECK_OK(ml_rand(&a, ML_F64, 1, shape));
    double *ud = ml_tensor_data(a), mn = 1, mx = 0;
    for (int64_t i = 0; i < shape[0]; i++) { if (ud[i] < mn) mn = ud[i]; if (ud[i] > mx) mx = ud[i]; }
    ML_CHECK(mn >= 0 && mx < 1 && mn < 0.001 && mx > 0.999);
    ml_tensor_release(a);
}

ML_TEST(views_share_storage) {
    ml_tensor *a, *v, *p, *s, *e;
    ML_CHECK_OK(ml_arange(&a, ML_F32, 0, 24, 1));
    ML_CHECK_OK(ml_view(&v, a, 3, (int64_t[]){2, 3, 4}));
    ML_CHECK_OK(ml_permute(&p, v, (int[]){2, 0, 1}));
    ML_CHECK(p->shape[0] == 4 && p->shape[1] == 2 && p->shape[2] == 3);
    ML_CHECK_NEAR(ml_tensor_get(p, (int64_t[]){3, 1, 2}), 1 * 12 + 2 * 4 + 3, 0);
    ML_CHECK(!ml_tensor_is_contiguous(p));
    ml_tensor *bad;
    ML_CHECK_ERR(ml_view(&bad, p, 1, (int64_t[]){24}), ML_ERR_SHAPE);
    ML_CHECK_OK(ml_reshape(&bad, p, 1, (int64_t[]){-1}));
    ML_CHECK(bad->storage != a->storage && ml_tensor_get(bad, (int64_t[]){1}) == 4);
    ml_tensor_release(bad);
    ML_CHECK_OK(ml_slice(&s, v, 2, 1, 4, 2));
    ML_CHECK(s->shape[2] == 2 && ml_tensor_get(s, (int64_t[]){1, 2, 1}) == 12 + 8 + 3);
    ML_CHECK_OK(ml_fill_(s, -1));
    ML_CHECK(ml_tensor_get(a, (int64_t[]){1}) == -1 && ml_tensor_get(a, (int64_t[]){2}) == 2);
    ML_CHECK_OK(ml_select(&e, v, -1, 0));
    ML_CHECK(e->ndim == 2 && ml_tensor_get(e, (int64_t[]){1, 1}) == 16);
    ml_tensor_release(e);
    ML_CHECK_OK(ml_unsqueeze(&e, v, 1));
    ML_CHECK(e->ndim == 4 && e->shape[1] == 1);
    ml_tensor *sq;
    ML_CHECK_OK(ml_squeeze(&sq, e, ML_ALL_DIMS));
    ML_CHECK(sq->ndim == 3);
    ml_tensor_release(sq); ml_tensor_release(e);
    ML_CHECK_OK(ml_expand(&e, s, 4, (int64_t[]){5, 2, 3, 2}));
    ML_CHECK(e->stride[0] == 0 && ml_tensor_get(e, (int64_t[]){4, 1, 2, 1}) == ml_tensor_get(s, (int64_t[]){1, 2, 1}));
    ml_tensor_release(e);
    ML_CHECK_ERR(ml_expand(&e, s, 3, (int64_t[]){3, 3, 2}), ML_ERR_SHAPE);
    ML_CHECK_ERR(ml_select(&e, v, 0, 2), ML_ERR_ARG);
    ML_CHECK_ERR(ml_select(&e, v, 3, 0), ML_ERR_DIM);
    ML_CHECK(strstr(ml_errmsg(), "select") != NULL);
    ML_CHECK_ERR(ml_narrow(&e, v, 1, 2, 2), ML_ERR_ARG);
    ML_CHECK_ERR(ml_permute(&e, v, (int[]){0, 0, 1}), ML_ERR_ARG);
    ML_CHECK_OK(ml_flatten(&e, v, 1, -1));
    ML_CHECK(e->ndim == 2 && e->shape[1] == 12);
    ml_tensor_release(e);
    ml_tensor_release(a); ml_tensor_release(v); ml_tensor_release(p); ml_tensor_release(s);
}

ML_TEST(copy_broadcast_and_convert) {
    ml_tensor *dst, *src;
    ML_CHECK_OK(ml_zeros(&dst, ML_F64, 2, (int64_t[]){3, 4}));
    ML_CHECK_OK(ml_arange(&src, ML_I32, 0, 4, 1));
    ML_CHECK_OK(ml_copy_(dst, src));
    ML_CHECK(ml_tensor_get(dst, (int64_t[]){2, 3}) == 3);
    ML_CHECK(dst->storage->version == 1);
    ml_tensor_release(src);
    ML_CHECK_OK(ml_arange(&src, ML_F32, 0, 3, 1));
    ML_CHECK_ERR(ml_copy_(dst, src), ML_ERR_SHAPE);
    ml_tensor_release(src); ml_tensor_release(dst);
}

/* ---- gradient checks of views */
static ml_err f_permute_slice(ml_tensor **out, ml_tensor **in, void *ud) {
    (void)ud;
    ml_tensor *p, *s, *v;
    ml_err e = ml_permute(&p, in[0], (int[]){1, 2, 0});
    if (e) return e;
    e = ml_slice(&s, p, 1, 1, 4, 2);
    ml_tensor_release(p);
    if (e) return e;
    e = ml_select(&v, s, 0, 1);
    ml_tensor_release(s);
    if (e) return e;
    e = ml_reshape(out, v, 1, (int64_t[]){-1});
    ml_tensor_release(v);
    return e;
}

static ml_err f_expand_unsqueeze(ml_tensor **out, ml_tensor **in, void *ud) {
    (void)ud;
    ml_tensor *u, *x;
    ml_err e = ml_unsqueeze(&u, in[0], 0);
    if (e) return e;
    e = ml_expand(&x, u, 3, (int64_t[]){3, -1, -1});
    ml_tensor_release(u);
    if (e) return e;
    e = ml_transpose(out, x, 0, 2);
    ml_tensor_release(x);
    return e;
}

static ml_err f_clone_cast(ml_tensor **out, ml_tensor **in, void *ud) {
    (void)ud;
    ml_tensor *c, *f;
    ml_err e = ml_clone(&c, in[0]);
    if (e) return e;
    e = ml_to_dtype(&f, c, ML_F32);
    ml_tensor_release(c);
    if (e) return e;
    e = ml_to_dtype(out, f, ML_F64);
    ml_tensor_release(f);
    return e;
}

ML_TEST(view_gradients) {
    printf("  seed %llu\n", (unsigned long long)g_seed);
    ml_manual_seed(g_seed);
    ml_tensor *x = ml_t_randn(3, (int64_t[]){2, 5, 4}, true);
    ml_gradcheck("permute+slice+select+reshape", f_permute_slice, 1, &x, NULL, 1e-6, 1e-8, 1e-6);
    ml_tensor_release(x);
    x = ml_t_randn(2, (int64_t[]){2, 3}, true);
    ml_gradcheck("unsqueeze+expand+transpose", f_expand_unsqueeze, 1, &x, NULL, 1e-6, 1e-8, 1e-6);
    ml_gradcheck("clone+cast (f32 round trip)", f_clone_cast, 1, &x, NULL, 1e-3, 1e-4, 1e-3);
    ml_tensor_release(x);
}

ML_TEST(autograd_bookkeeping) {
    ml_tensor *x = ml_t_randn(1, (int64_t[]){6}, true), *v, *w, *c;
    ML_CHECK(x->requires_grad && !x->grad_fn);
    ML_CHECK_OK(ml_view(&v, x, 2, (int64_t[]){2, 3}));
    ML_CHECK(v->requires_grad && v->grad_fn && strcmp(v->grad_fn->name, "view") == 0);
    /* backward from non-scalar needs a gradient */
    ML_CHECK_ERR(ml_backward(v, NULL, false), ML_ERR_GRAD);
    ML_CHECK(strstr(ml_errmsg(), "[2, 3]") != NULL);
    ml_tensor *g;
    ML_CHECK_OK(ml_ones(&g, ML_F64, 2, (int64_t[]){2, 3}));
    ML_CHECK_OK(ml_backward(v, g, true));
    ML_CHECK(x->grad && ml_tensor_get(x->grad, (int64_t[]){5}) == 1);
    ML_CHECK_OK(ml_backward(v, g, false)); /* accumulates */
    ML_CHECK(ml_tensor_get(x->grad, (int64_t[]){5}) == 2);
    ML_CHECK_ERR(ml_backward(v, g, false), ML_ERR_GRAD); /* graph freed */
    ML_CHECK(strstr(ml_errmsg(), "freed") != NULL);
    ml_tensor_release(v);
    /* grad mode off: nothing recorded */
    bool prev = ml_set_grad_enabled(false);
    ML_CHECK_OK(ml_view(&w, x, 2, (int64_t[]){3, 2}));
    ML_CHECK(!w->requires_grad && !w->grad_fn);
    ml_set_grad_enabled(prev);
    ml_tensor_release(w);
    /* version counter: a saved tensor modified in place */
    ML_CHECK_OK(ml_to_dtype(&c, x, ML_F32)); /* records 'to' with no saved tensors */
    ml_node *n = ml_node_new("test_op", NULL, 1, &x);
    ML_CHECK(n != NULL);
    int slot = ml_node_save(n, x);
    ML_CHECK(ml_node_saved(n, slot) == x);
    ML_CHECK_OK(ml_fill_(x, 0));
    ML_CHECK(ml_node_saved(n, slot) == NULL && strstr(ml_errmsg(), "modified in place"));
    ml_node_release(n);
    ml_tensor_release(c);
    /* requires_grad only for floats */
    ml_tensor *i;
    ML_CHECK_OK(ml_zeros(&i, ML_I64, 1, (int64_t[]){3}));
    ML_CHECK_ERR(ml_set_requires_grad(i, true), ML_ERR_DTYPE);
    ml_tensor_release(i);
    ml_tensor_release(g);
    ml_tensor_release(x);
}

/* Backward shares one gradient between node slots (a + b hands g to both); a later gradient for
 * one of them must be added out of place, and the user's seed gradient is never written. */
ML_TEST(shared_gradient_slots) {
    ml_tensor *p = ml_t_randn(1, (int64_t[]){5}, true), *q = ml_t_randn(1, (int64_t[]){5}, true);
    ml_tensor *a, *b, *s, *t, *u, *y, *g;
    ML_CHECK_OK(ml_binary_scalar(&a, ML_MUL, p, 1.0, false)); /* interior: a, b have nodes with slots */
    ML_CHECK_OK(ml_binary_scalar(&b, ML_MUL, q, 1.0, false));
    ML_CHECK_OK(ml_binary(&s, ML_ADD, a, b));                 /* a's and b's slots get the same g */
    ML_CHECK_OK(ml_binary_scalar(&t, ML_MUL, a, 3.0, false)); /* ... and a's slot one more */
    ML_CHECK_OK(ml_binary(&u, ML_ADD, s, t));
    ML_CHECK_OK(ml_binary(&y, ML_ADD, u, s));                 /* s's slot: two gradients */
    ML_CHECK_OK(ml_ones(&g, ML_F64, 1, (int64_t[]){5}));
    ML_CHECK_OK(ml_backward(y, g, false));
    for (int64_t i = 0; i < 5; i++) {
        ML_CHECK_NEAR(ml_tensor_get(p->grad, &i), 5.0, 1e-12); /* 2 (via s twice) + 3 */
        ML_CHECK_NEAR(ml_tensor_get(q->grad, &i), 2.0, 1e-12);
        ML_CHECK_NEAR(ml_tensor_get(g, &i), 1.0, 0.0);
    }
    ml_tensor *ts[] = {p, q, a, b, s, t, u, y, g};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) ml_tensor_release(ts[i]);
}

ML_TEST(deep_graph_release) {
    /* a long chain of views must free without recursion blowing the stack */
    ml_tensor *x = ml_t_randn(1, (int64_t[]){4}, true), *cur = x;
    ml_tensor_retain(cur);
    for (int i = 0; i < 200000; i++) {
        ml_tensor *nx;
        ML_CHECK_OK(ml_view(&nx, cur, 1, (int64_t[]){4}));
        ml_tensor_release(cur);
        cur = nx;
    }
    ml_tensor_release(cur);
    ml_tensor_release(x);
}

ML_TEST(memory_accounting) {
    int64_t before = ml_mem_live(ML_CPU);
    ml_tensor *t;
    ML_CHECK_OK(ml_zeros(&t, ML_F32, 2, (int64_t[]){1000, 1000}));
    ML_CHECK(ml_mem_live(ML_CPU) - before == 4000000);
    ML_CHECK(ml_mem_peak(ML_CPU) >= ml_mem_live(ML_CPU));
    ml_tensor_release(t);
    ML_CHECK(ml_mem_live(ML_CPU) == before);
}

int main(int argc, char **argv) {
    g_seed = argc > 1 ? strtoull(argv[1], NULL, 10) : 20261123;
    ML_RUN(creation);
    ML_RUN(dtypes_and_halves);
    ML_RUN(rng_determinism_across_threads);
    ML_RUN(views_share_storage);
    ML_RUN(copy_broadcast_and_convert);
    ML_RUN(view_gradients);
    ML_RUN(autograd_bookkeeping);
    ML_RUN(shared_gradient_slots);
    ML_RUN(deep_graph_release);
    ML_RUN(memory_accounting);
    return ml_test_summary();
}
