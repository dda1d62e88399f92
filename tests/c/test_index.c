/* Indexing ops: index_select, masked_select, masked_fill, gather, scatter_add_, cat, stack, one_hot.
 * Values, errors (bad index -> ML_ERR_ARG naming op/value/size), in-place semantics and
 * finite-difference gradients (f64). Usage: test_index [seed] */
#include "ml_test.h"
#include "tensor/ml_iter.h"

static uint64_t g_seed;

static double at1(const ml_tensor *t, int64_t i) { return ml_tensor_get(t, (int64_t[]){i}); }
static double at2(const ml_tensor *t, int64_t i, int64_t j) { return ml_tensor_get(t, (int64_t[]){i, j}); }

static ml_tensor *idx64(int n, const int64_t *v) {
    ml_tensor *t = NULL;
    ml_tensor_from_data(&t, ML_I64, 1, (int64_t[]){n}, v);
    return t;
}

static ml_tensor *mat(ml_dtype dt, int64_t r, int64_t c) { /* arange(r*c) viewed as [r, c] */
    ml_tensor *a = NULL, *v = NULL;
    ml_arange(&a, dt, 0, (double)(r * c), 1);
    ml_view(&v, a, 2, (int64_t[]){r, c});
    ml_tensor_release(a);
    return v;
}

ML_TEST(index_select_values) {
    ml_tensor *m = mat(ML_F32, 4, 3), *r;
    ml_tensor *ix = idx64(3, (int64_t[]){3, 0, 3});
    ML_CHECK_OK(ml_index_select(&r, m, 0, ix));
    ML_CHECK(r->shape[0] == 3 && r->shape[1] == 3 && at2(r, 0, 2) == 11 && at2(r, 1, 1) == 1 && at2(r, 2, 0) == 9);
    ml_tensor_release(r);
    int32_t i32v[] = {2, 0};
    ml_tensor *i32;
    ML_CHECK_OK(ml_tensor_from_data(&i32, ML_I32, 1, (int64_t[]){2}, i32v));
    ML_CHECK_OK(ml_index_select(&r, m, -1, i32));
    ML_CHECK(r->shape[0] == 4 && r->shape[1] == 2 && at2(r, 3, 0) == 11 && at2(r, 3, 1) == 9);
    ml_tensor_release(r);
    /* strided input */
    ml_tensor *t;
    ML_CHECK_OK(ml_transpose(&t, m, 0, 1));
    ML_CHECK_OK(ml_index_select(&r, t, 1, i32));
    ML_CHECK(r->shape[0] == 3 && at2(r, 1, 0) == 7 && at2(r, 2, 1) == 2);
    ml_tensor_release(r);
    ml_tensor_release(t);
    /* errors */
    ml_tensor *bad = idx64(2, (int64_t[]){1, 4});
    ML_CHECK_ERR(ml_index_select(&r, m, 0, bad), ML_ERR_ARG);
    ML_CHECK(r == NULL && strstr(ml_errmsg(), "index_select") && strstr(ml_errmsg(), "4") && strstr(ml_errmsg(), "size 4"));
    ml_tensor_release(bad);
    bad = idx64(1, (int64_t[]){-1});
    ML_CHECK_ERR(ml_index_select(&r, m, 1, bad), ML_ERR_ARG);
    ML_CHECK(strstr(ml_errmsg(), "-1") != NULL);
    ML_CHECK_ERR(ml_index_select(&r, m, 2, ix), ML_ERR_DIM);
    ml_tensor *fi;
    ML_CHECK_OK(ml_zeros(&fi, ML_F32, 1, (int64_t[]){2}));
    ML_CHECK_ERR(ml_index_select(&r, m, 0, fi), ML_ERR_DTYPE);
    ml_tensor_release(fi);
    ml_tensor_release(bad); ml_tensor_release(i32); ml_tensor_release(ix); ml_tensor_release(m);
}

ML_TEST(masked_values) {
    ml_tensor *m = mat(ML_F64, 2, 3), *r, *mask, *row;
    ML_CHECK_OK(ml_arange(&row, ML_I32, 0, 3, 1));
    ML_CHECK_OK(ml_binary_scalar(&mask, ML_NE, row, 1, false)); /* [T, F, T] broadcast over rows */
    ML_CHECK_OK(ml_masked_select(&r, m, mask));
    ML_CHECK(r->ndim == 1 && r->shape[0] == 4 && at1(r, 0) == 0 && at1(r, 1) == 2 && at1(r, 2) == 3 && at1(r, 3) == 5);
    ml_tensor_release(r);
    ML_CHECK_OK(ml_masked_fill(&r, m, mask, -7));
    ML_CHECK(r->shape[0] == 2 && at2(r, 0, 0) == -7 && at2(r, 0, 1) == 1 && at2(r, 1, 2) == -7);
    ML_CHECK(at2(m, 0, 0) == 0); /* out of place */
    ml_tensor_release(r);
    /* mask larger than the input: result is the broadcast shape */
    ml_tensor *col;
    ML_CHECK_OK(ml_arange(&col, ML_F32, 10, 13, 1)); /* [3] */
    ml_tensor *m2;
    ML_CHECK_OK(ml_binary_scalar(&m2, ML_GT, m, 2, false)); /* [2, 3] */
    ML_CHECK_OK(ml_masked_select(&r, col, m2));
    ML_CHECK(r->shape[0] == 3 && at1(r, 0) == 10 && at1(r, 2) == 12);
    ml_tensor_release(r);
    ML_CHECK_OK(ml_masked_fill(&r, col, m2, 0));
    ML_CHECK(r->ndim == 2 && at2(r, 0, 2) == 12 && at2(r, 1, 0) == 0);
    ml_tensor_release(r);
    /* int tensor, big threaded select */
    int64_t n = 400000;
    ml_tensor *big, *bm;
    ML_CHECK_OK(ml_arange(&big, ML_I64, 0, (double)n, 1));
    ml_tensor *three;
    ML_CHECK_OK(ml_binary_scalar(&three, ML_FMOD, big, 3, false));
    ML_CHECK_OK(ml_binary_scalar(&bm, ML_EQ, three, 0, false));
    ML_CHECK_OK(ml_masked_select(&r, big, bm));
    ML_CHECK(r->shape[0] == (n + 2) / 3 && at1(r, 1000) == 3000 && at1(r, r->shape[0] - 1) == 399999);
    ml_tensor_release(r);
    ML_CHECK_OK(ml_masked_fill(&r, big, bm, -1));
    ML_CHECK(at1(r, 300) == -1 && at1(r, 301) == 301);
    ml_tensor_release(r);
    /* errors */
    ML_CHECK_ERR(ml_masked_select(&r, m, row), ML_ERR_DTYPE);
    ML_CHECK(strstr(ml_errmsg(), "masked_select") != NULL);
    ml_tensor *bad;
    ML_CHECK_OK(ml_ones(&bad, ML_BOOL, 1, (int64_t[]){4}));
    ML_CHECK_ERR(ml_masked_fill(&r, m, bad, 0), ML_ERR_SHAPE);
    ML_CHECK(strstr(ml_errmsg(), "masked_fill") && strstr(ml_errmsg(), "[2, 3]") && strstr(ml_errmsg(), "[4]"));
    ml_tensor_release(bad);
    ml_tensor_release(big); ml_tensor_release(bm); ml_tensor_release(three);
    ml_tensor_release(col); ml_tensor_release(m2);
    ml_tensor_release(m); ml_tensor_release(mask); ml_tensor_release(row);
}

ML_TEST(gather_scatter_values) {
    ml_tensor *m = mat(ML_F32, 3, 4), *r, *ix;
    int64_t iv[] = {3, 0, /**/ 1, 1, /**/ 2, 3};
    ML_CHECK_OK(ml_tensor_from_data(&ix, ML_I64, 2, (int64_t[]){3, 2}, iv));
    ML_CHECK_OK(ml_gather(&r, m, 1, ix));
    ML_CHECK(r->shape[0] == 3 && r->shape[1] == 2 && at2(r, 0, 0) == 3 && at2(r, 0, 1) == 0 && at2(r, 1, 1) == 5 &&
             at2(r, 2, 1) == 11);
    ml_tensor_release(r);
    int32_t jv[] = {2, 0, 1};
    ml_tensor *ix0;
    ML_CHECK_OK(ml_tensor_from_data(&ix0, ML_I32, 2, (int64_t[]){1, 3}, jv));
    ML_CHECK_OK(ml_gather(&r, m, 0, ix0));
    ML_CHECK(r->shape[0] == 1 && r->shape[1] == 3 && at2(r, 0, 0) == 8 && at2(r, 0, 1) == 1 && at2(r, 0, 2) == 6);
    ml_tensor_release(r);
    /* scatter_add_ with duplicate indices accumulates */
    ml_tensor *z, *src;
    ML_CHECK_OK(ml_zeros(&z, ML_F32, 2, (int64_t[]){3, 4}));
    ML_CHECK_OK(ml_ones(&src, ML_F32, 2, (int64_t[]){3, 2}));
    uint32_t v0 = z->storage->version;
    ML_CHECK_OK(ml_scatter_add_(z, 1, ix, src));
    ML_CHECK(z->storage->version == v0 + 1);
    ML_CHECK(at2(z, 1, 1) == 2 && at2(z, 0, 3) == 1 && at2(z, 0, 0) == 1 && at2(z, 2, 0) == 0);
    /* src may be larger than index; int64 target */
    ml_tensor *zi, *srci;
    ML_CHECK_OK(ml_zeros(&zi, ML_I64, 1, (int64_t[]){3}));
    ML_CHECK_OK(ml_arange(&srci, ML_I64, 1, 6, 1));
    ml_tensor *i1 = idx64(4, (int64_t[]){2, 2, 0, 2});
    ML_CHECK_OK(ml_scatter_add_(zi, 0, i1, srci));
    ML_CHECK(at1(zi, 2) == 1 + 2 + 4 && at1(zi, 0) == 3 && at1(zi, 1) == 0);
    /* big threaded scatter along dim 0 of [N, C] (split over C) and along dim 1 (split over N) */
    int64_t N = 50000, C = 4;
    ml_tensor *bz, *bs, *bi;
    ML_CHECK_OK(ml_zeros(&bz, ML_F64, 2, (int64_t[]){10, C}));
    ML_CHECK_OK(ml_ones(&bs, ML_F64, 2, (int64_t[]){N, C}));
    ML_CHECK_OK(ml_randint(&bi, ML_I64, 0, 10, 2, (int64_t[]){N, C}));
    ML_CHECK_OK(ml_scatter_add_(bz, 0, bi, bs));
    ml_tensor *tot;
    ML_CHECK_OK(ml_reduce(&tot, ML_RSUM, bz, 0, NULL, false));
    ML_CHECK(ml_tensor_item(tot) == (double)(N * C));
    ml_tensor_release(tot);
    ml_tensor *bz2, *bi2;
    ML_CHECK_OK(ml_zeros(&bz2, ML_F64, 2, (int64_t[]){N, 3}));
    ML_CHECK_OK(ml_randint(&bi2, ML_I32, 0, 3, 2, (int64_t[]){N, C}));
    ML_CHECK_OK(ml_scatter_add_(bz2, 1, bi2, bs));
    ML_CHECK_OK(ml_reduce(&tot, ML_RSUM, bz2, 1, (int[]){1}, false));
    ML_CHECK(at1(tot, 0) == C && at1(tot, N - 1) == C);
    ml_tensor_release(tot);
    /* errors */
    ml_tensor *bad;
    int64_t bv[] = {0, 4, 1, 1, 0, 0};
    ML_CHECK_OK(ml_tensor_from_data(&bad, ML_I64, 2, (int64_t[]){3, 2}, bv));
    ML_CHECK_ERR(ml_gather(&r, m, 1, bad), ML_ERR_ARG);
    ML_CHECK(strstr(ml_errmsg(), "gather") && strstr(ml_errmsg(), "index 4") && strstr(ml_errmsg(), "size 4"));
    ML_CHECK_ERR(ml_scatter_add_(z, 1, bad, src), ML_ERR_ARG);
    ML_CHECK(strstr(ml_errmsg(), "scatter_add_") != NULL);
    ML_CHECK(at2(z, 1, 1) == 2); /* untouched */
    ML_CHECK_ERR(ml_gather(&r, m, 1, i1), ML_ERR_SHAPE);
    ML_CHECK_ERR(ml_gather(&r, m, 2, ix), ML_ERR_DIM);
    ml_tensor *leaf = ml_t_randn(2, (int64_t[]){3, 4}, true), *src64;
    ML_CHECK_OK(ml_ones(&src64, ML_F64, 2, (int64_t[]){3, 2}));
    ML_CHECK_ERR(ml_scatter_add_(leaf, 1, ix, src64), ML_ERR_GRAD);
    ml_tensor_release(leaf); ml_tensor_release(src64);
    ml_tensor_release(bad);
    ml_tensor_release(bz); ml_tensor_release(bs); ml_tensor_release(bi); ml_tensor_release(bz2); ml_tensor_release(bi2);
    ml_tensor_release(zi); ml_tensor_release(srci); ml_tensor_release(i1);
    ml_tensor_release(z); ml_tensor_release(src); ml_tensor_release(ix0); ml_tensor_release(ix); ml_tensor_release(m);
}

ML_TEST(cat_stack_values) {
    ml_tensor *a = mat(ML_F32, 2, 3), *b = mat(ML_I32, 1, 3), *c = mat(ML_F64, 2, 2), *r;
    ml_tensor *ab[2] = {a, b};
    ML_CHECK_OK(ml_cat(&r, 2, ab, 0));
    ML_CHECK(r->dtype == ML_F32 && r->shape[0] == 3 && r->shape[1] == 3 && at2(r, 2, 1) == 1 && at2(r, 1, 2) == 5);
    ml_tensor_release(r);
    ml_tensor *ac[2] = {a, c};
    ML_CHECK_OK(ml_cat(&r, 2, ac, -1));
    ML_CHECK(r->dtype == ML_F64 && r->shape[1] == 5 && at2(r, 1, 3) == 2 && at2(r, 1, 2) == 5);
    ml_tensor_release(r);
    ML_CHECK_ERR(ml_cat(&r, 2, ac, 0), ML_ERR_SHAPE);
    ML_CHECK(strstr(ml_errmsg(), "cat") && strstr(ml_errmsg(), "[2, 3]") && strstr(ml_errmsg(), "[2, 2]"));
    ML_CHECK_ERR(ml_cat(&r, 2, ab, 2), ML_ERR_DIM);
    ML_CHECK_ERR(ml_cat(&r, 0, ab, 0), ML_ERR_ARG);
    /* legacy: 1-D empty tensors are skipped */
    ml_tensor *e;
    ML_CHECK_OK(ml_zeros(&e, ML_F32, 1, (int64_t[]){0}));
    ml_tensor *ea[3] = {e, a, e};
    ML_CHECK_OK(ml_cat(&r, 3, ea, 0));
    ML_CHECK(r->shape[0] == 2 && r->shape[1] == 3);
    ml_tensor_release(r);
    /* stack */
    ml_tensor *aa[3] = {a, a, a};
    ML_CHECK_OK(ml_stack(&r, 3, aa, 1));
    ML_CHECK(r->ndim == 3 && r->shape[0] == 2 && r->shape[1] == 3 && r->shape[2] == 3);
    ML_CHECK(ml_tensor_get(r, (int64_t[]){1, 2, 0}) == 3 && ml_tensor_get(r, (int64_t[]){0, 1, 2}) == 2);
    ml_tensor_release(r);
    ML_CHECK_OK(ml_stack(&r, 3, aa, -1));
    ML_CHECK(r->shape[2] == 3 && ml_tensor_get(r, (int64_t[]){1, 2, 0}) == 5);
    ml_tensor_release(r);
    ML_CHECK_ERR(ml_stack(&r, 2, ac, 0), ML_ERR_SHAPE);
    ML_CHECK(strstr(ml_errmsg(), "stack") != NULL);
    ML_CHECK_ERR(ml_stack(&r, 3, aa, 4), ML_ERR_DIM);
    ml_tensor_release(e);
    ml_tensor_release(a); ml_tensor_release(b); ml_tensor_release(c);
}

ML_TEST(one_hot_values) {
    int64_t lv[] = {2, 0, 1, 2, 0, 3};
    ml_tensor *l, *r;
    ML_CHECK_OK(ml_tensor_from_data(&l, ML_I64, 2, (int64_t[]){2, 3}, lv));
    ML_CHECK_OK(ml_one_hot(&r, l, 4, -1));
    ML_CHECK(r->dtype == ML_I64 && r->ndim == 3 && r->shape[2] == 4);
    ML_CHECK(ml_tensor_get(r, (int64_t[]){0, 0, 2}) == 1 && ml_tensor_get(r, (int64_t[]){0, 0, 1}) == 0 &&
             ml_tensor_get(r, (int64_t[]){1, 2, 3}) == 1);
    ml_tensor *s;
    ML_CHECK_OK(ml_reduce(&s, ML_RSUM, r, 0, NULL, false));
    ML_CHECK(ml_tensor_item(s) == 6);
    ml_tensor_release(s);
    ml_tensor_release(r);
    ML_CHECK_OK(ml_one_hot(&r, l, 5, 1)); /* class dim in the middle: [2, 5, 3] */
    ML_CHECK(r->shape[1] == 5 && ml_tensor_get(r, (int64_t[]){1, 3, 2}) == 1 && ml_tensor_get(r, (int64_t[]){0, 1, 2}) == 1);
    ml_tensor_release(r);
    ML_CHECK_OK(ml_one_hot(&r, l, -1, 0)); /* inferred: 4 classes */
    ML_CHECK(r->shape[0] == 4 && ml_tensor_get(r, (int64_t[]){3, 1, 2}) == 1);
    ml_tensor_release(r);
    ML_CHECK_ERR(ml_one_hot(&r, l, 3, -1), ML_ERR_ARG);
    ML_CHECK(strstr(ml_errmsg(), "one_hot") && strstr(ml_errmsg(), "3") != NULL);
    lv[1] = -2;
    ml_tensor *l2;
    ML_CHECK_OK(ml_tensor_from_data(&l2, ML_I64, 2, (int64_t[]){2, 3}, lv));
    ML_CHECK_ERR(ml_one_hot(&r, l2, 4, -1), ML_ERR_ARG);
    ML_CHECK(strstr(ml_errmsg(), "-2") != NULL);
    ml_tensor *f;
    ML_CHECK_OK(ml_zeros(&f, ML_F32, 1, (int64_t[]){2}));
    ML_CHECK_ERR(ml_one_hot(&r, f, 2, -1), ML_ERR_DTYPE);
    ML_CHECK_ERR(ml_one_hot(&r, l, 4, 3), ML_ERR_DIM);
    ml_tensor_release(f); ml_tensor_release(l2); ml_tensor_release(l);
}

/* ------------------------------------------------------------ gradients */
typedef struct {
    int kind;
    ml_tensor *idx, *mask;
    int dim, n;
} iud;

static ml_err f_idx(ml_tensor **out, ml_tensor **in, void *ud) {
    iud *u = ud;
    switch (u->kind) {
    case 0: return ml_index_select(out, in[0], u->dim, u->idx);
    case 1: return ml_masked_select(out, in[0], u->mask);
    case 2: return ml_masked_fill(out, in[0], u->mask, 3.5);
    case 3: return ml_gather(out, in[0], u->dim, u->idx);
    case 4: return ml_cat(out, u->n, in, u->dim);
    default: return ml_stack(out, u->n, in, u->dim);
    }
}

ML_TEST(index_gradients) {
    printf("  seed %llu\n", (unsigned long long)g_seed);
    ml_manual_seed(g_seed);
    ml_tensor *x = ml_t_randn(3, (int64_t[]){3, 4, 2}, true);
    ml_tensor *ix = idx64(5, (int64_t[]){3, 1, 3, 0, 3}); /* duplicates */
    iud u = {.kind = 0, .idx = ix, .dim = 1};
    ml_gradcheck("index_select dim 1", f_idx, 1, &x, &u, 1e-6, 1e-6, 1e-5);
    ml_tensor *ix0 = idx64(4, (int64_t[]){2, 2, 0, 1});
    u.idx = ix0;
    u.dim = 0;
    ml_gradcheck("index_select dim 0", f_idx, 1, &x, &u, 1e-6, 1e-6, 1e-5);
    /* masked ops with a broadcast mask [4, 1] */
    ml_tensor *mv = ml_t_randn(2, (int64_t[]){4, 1}, false), *mask;
    ML_CHECK_OK(ml_binary_scalar(&mask, ML_GT, mv, 0, false));
    ((uint8_t *)ml_tensor_data(mask))[0] = 1;
    ((uint8_t *)ml_tensor_data(mask))[1] = 0;
    iud um = {.kind = 1, .mask = mask};
    ml_gradcheck("masked_select", f_idx, 1, &x, &um, 1e-6, 1e-6, 1e-5);
    um.kind = 2;
    ml_gradcheck("masked_fill", f_idx, 1, &x, &um, 1e-6, 1e-6, 1e-5);
    /* masked_fill where the mask broadcasts the input up: [4] input, [3, 4] mask */
    ml_tensor *v4 = ml_t_randn(1, (int64_t[]){4}, true), *mv2 = ml_t_randn(2, (int64_t[]){3, 4}, false), *mask2;
    ML_CHECK_OK(ml_binary_scalar(&mask2, ML_GT, mv2, 0, false));
    iud um2 = {.kind = 2, .mask = mask2};
    ml_gradcheck("masked_fill (input broadcast)", f_idx, 1, &v4, &um2, 1e-6, 1e-6, 1e-5);
    um2.kind = 1;
    ml_gradcheck("masked_select (input broadcast)", f_idx, 1, &v4, &um2, 1e-6, 1e-6, 1e-5);
    /* gather with duplicates, along each dim */
    for (int d = 0; d < 3; d++) {
        ml_tensor *gi;
        int64_t gs[3] = {3, 4, 2};
        gs[d] = 5;
        ML_CHECK_OK(ml_randint(&gi, ML_I64, 0, d == 0 ? 3 : d == 1 ? 4 : 2, 3, gs));
        iud ug = {.kind = 3, .idx = gi, .dim = d};
        ml_gradcheck("gather", f_idx, 1, &x, &ug, 1e-6, 1e-6, 1e-5);
        ml_tensor_release(gi);
    }
    /* cat of three (dim 1), stack of two, cat of ten (more than one autograd node's inputs) */
    ml_tensor *c[10];
    for (int i = 0; i < 10; i++) c[i] = ml_t_randn(2, (int64_t[]){2, 1 + i % 3}, true);
    iud uc = {.kind = 4, .n = 3, .dim = 1};
    ml_gradcheck("cat", f_idx, 3, c, &uc, 1e-6, 1e-6, 1e-5);
    uc.n = 10;
    uc.dim = -1;
    ml_gradcheck("cat x10", f_idx, 10, c, &uc, 1e-6, 1e-6, 1e-5);
    ml_tensor *s2[2] = {c[0], c[3]};
    iud us = {.kind = 5, .n = 2, .dim = 2};
    ml_gradcheck("stack", f_idx, 2, s2, &us, 1e-6, 1e-6, 1e-5);
    /* mixed dtypes in cat: each input gets a gradient of its own dtype */
    ml_tensor *f32, *r, *g;
    ML_CHECK_OK(ml_ones(&f32, ML_F32, 2, (int64_t[]){2, 2}));
    ml_set_requires_grad(f32, true);
    ml_tensor *mixed[2] = {f32, c[0]};
    ML_CHECK_OK(ml_cat(&r, 2, mixed, 1));
    ML_CHECK(r->dtype == ML_F64);
    ML_CHECK_OK(ml_ones(&g, ML_F64, 2, (int64_t[]){2, 3}));
    ML_CHECK_OK(ml_backward(r, g, false));
    ML_CHECK(f32->grad && f32->grad->dtype == ML_F32 && c[0]->grad && c[0]->grad->dtype == ML_F64);
    ml_tensor_release(r); ml_tensor_release(g); ml_tensor_release(f32);
    for (int i = 0; i < 10; i++) ml_tensor_release(c[i]);
    ml_tensor_release(v4); ml_tensor_release(mv2); ml_tensor_release(mask2);
    ml_tensor_release(mv); ml_tensor_release(mask);
    ml_tensor_release(ix0); ml_tensor_release(ix); ml_tensor_release(x);
}

int main(int argc, char **argv) {
    g_seed = argc > 1 ? strtoull(argv[1], NULL, 10) : 20261126;
    ML_RUN(index_select_values);
    ML_RUN(masked_values);
    ML_RUN(gather_scatter_values);
    ML_RUN(cat_stack_values);
    ML_RUN(one_hot_values);
    ML_RUN(index_gradients);
    return ml_test_summary();
}
