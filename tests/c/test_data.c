/* Data pipeline core tests (modules/data, no Lua): the per-sample random streams (deterministic,
 * independent of threads, uniform), sample dictionaries, the spatial kernels (pad/crop, flip,
 * rot90: data and affine keep every voxel's world position), RandCropByPosNegLabel centres,
 * collation, the threaded loader (same batches for 0, 1 and 3 workers; errors reported at the batch
 * that needs the sample, naming it; stop/restart), the cache, and the directory lister. Every test
 * also checks that no tensor leaks. MONAI golden values are checked by tests/lua/test_data.lua. */
#include "ml_test.h"
#include "data/ml_data.h"

#include <unistd.h>

/* [C, X, Y, Z] float32 tensor with t[c, x, y, z] = f(c, x, y, z) */
static ml_tensor *mk(int64_t C, int64_t X, int64_t Y, int64_t Z, double (*f)(int64_t, int64_t, int64_t, int64_t)) {
    int64_t sh[4] = {C, X, Y, Z};
    ml_tensor *t = NULL;
    if (ml_tensor_empty(&t, ML_F32, 4, sh)) return NULL;
    float *p = ml_tensor_data(t);
    for (int64_t c = 0; c < C; c++)
        for (int64_t x = 0; x < X; x++)
            for (int64_t y = 0; y < Y; y++)
                for (int64_t z = 0; z < Z; z++) *p++ = (float)f(c, x, y, z);
    return t;
}

static double ramp(int64_t c, int64_t x, int64_t y, int64_t z) { return 1000.0 * (double)c + 100.0 * x + 10.0 * y + z; }
static double zero4(int64_t c, int64_t x, int64_t y, int64_t z) { (void)c, (void)x, (void)y, (void)z; return 0; }

static double at(const ml_tensor *t, int64_t c, int64_t x, int64_t y, int64_t z) {
    int64_t ix[4] = {c, x, y, z};
    return ml_tensor_get(t, ix);
}

static void world(const double A[16], const double v[3], double w[3]) {
    for (int r = 0; r < 3; r++) w[r] = A[r * 4] * v[0] + A[r * 4 + 1] * v[1] + A[r * 4 + 2] * v[2] + A[r * 4 + 3];
}

static ml_xform xf(int type, const char *name, const char *key) {
    ml_xform x;
    ml_xform_init(&x, type, name);
    x.nkeys = 1;
    snprintf(x.keys[0], sizeof x.keys[0], "%s", key);
    return x;
}

/* a list with one sample {image = t (stolen), affine} */
static ml_dlist *one(ml_tensor *t, const double aff[16]) {
    ml_dlist *l = ml_dlist_new();
    ml_dsample *s = ml_dsample_new();
    ml_dsample_set_tensor(s, "image", t, aff, "mem", false);
    ml_dlist_push(l, s);
    return l;
}

ML_TEST(rng_deterministic_uniform) {
    ml_drng a, b, c;
    ml_drng_init(&a, 7, 1, 2, 3, 0);
    ml_drng_init(&b, 7, 1, 2, 3, 0);
    ml_drng_init(&c, 7, 1, 2, 4, 0);
    int same = 1, diff = 0;
    for (int i = 0; i < 100; i++) {
        uint32_t x = ml_drng_u32(&a), y = ml_drng_u32(&b), z = ml_drng_u32(&c);
        same &= x == y;
        diff += x != z;
    }
    ML_CHECK(same);
    ML_CHECK(diff > 95);
    double s = 0, s2 = 0;
    int counts[7] = {0};
    ml_drng_init(&a, 1, 0, 0, 0, 0);
    for (int i = 0; i < 70000; i++) {
        double u = ml_drng_uniform(&a);
        ML_CHECK(u >= 0 && u < 1);
        s += u;
        int64_t k = ml_drng_randint(&a, 7);
        ML_CHECK(k >= 0 && k < 7);
        counts[k]++;
        double n = ml_drng_normal(&a);
        s2 += n * n;
    }
    ML_CHECK_NEAR(s / 70000, 0.5, 0.01);
    ML_CHECK_NEAR(s2 / 70000, 1.0, 0.03);
    for (int k = 0; k < 7; k++) ML_CHECK(counts[k] > 9400 && counts[k] < 10600);
    ML_CHECK(ml_drng_randint(&a, 1) == 0);
}

ML_TEST(rng_fill_normal_thread_independent) {
    int64_t n = 300001;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    ml_drng a, b;
    int nt = ml_num_threads();
    ml_set_num_threads(1);
    ml_drng_init(&a, 3, 0, 5, 1, 0);
    ml_drng_fill_normal(&a, x, n, 2.0, 0.5);
    ml_set_num_threads(2);
    ml_drng_init(&b, 3, 0, 5, 1, 0);
    ml_drng_fill_normal(&b, y, n, 2.0, 0.5);
    ml_set_num_threads(nt);
    ML_CHECK(memcmp(x, y, n * sizeof *x) == 0);
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++) {
        s += x[i];
        s2 += (x[i] - 2.0) * (x[i] - 2.0);
    }
    ML_CHECK_NEAR(s / n, 2.0, 0.005);
    ML_CHECK_NEAR(sqrt(s2 / n), 0.5, 0.005);
    ML_CHECK(ml_drng_u32(&a) == ml_drng_u32(&b)); /* streams advanced alike */
    free(x);
    free(y);
}

ML_TEST(sample_dict) {
    ml_dsample *s = ml_dsample_new();
    ML_CHECK_OK(ml_dsample_set_str(s, "image", "/x/ct.nii.gz"));
    ML_CHECK_OK(ml_dsample_set_int(s, "id", 4));
    ML_CHECK_OK(ml_dsample_set_num(s, "w", 0.5));
    ML_CHECK_OK(ml_dsample_set_str(s, "image", "/y/ct.nii.gz")); /* replaces */
    ML_CHECK(s->n == 3);
    ML_CHECK(!strcmp(ml_dsample_get(s, "image")->str, "/y/ct.nii.gz"));
    char longkey[100];
    memset(longkey, 'k', 99);
    longkey[99] = 0;
    ml_t_expect_err(ml_dsample_set_int(s, longkey, 1), ML_ERR_ARG, "must have 1 to 63 bytes", NULL, "long key");
    int64_t sh2[2] = {3, 4};
    ml_tensor *t2 = NULL;
    ML_CHECK_OK(ml_zeros(&t2, ML_F32, 2, sh2));
    ml_t_expect_err(ml_dsample_set_tensor(s, "bad", t2, NULL, NULL, false), ML_ERR_SHAPE, "key 'bad'", "[3, 4]",
                    "2-D image");
    int64_t sh3[3] = {4, 5, 6};
    ml_tensor *t3 = NULL;
    ML_CHECK_OK(ml_ones(&t3, ML_I32, 3, sh3));
    ML_CHECK_OK(ml_dsample_set_tensor(s, "label", t3, NULL, "seg.nii", true));
    ml_dval *v = ml_dsample_get(s, "label");
    ML_CHECK(v->kind == ML_DV_TENSOR && v->t->ndim == 4 && v->t->shape[0] == 1 && v->t->dtype == ML_F32 && v->no_channel);
    ml_dsample *c = ml_dsample_copy(s);
    ML_CHECK(c && c->n == 4 && ml_dsample_get(c, "label")->t == v->t && v->t->refcount == 2);
    ML_CHECK(strcmp(ml_dsample_get(c, "image")->str, "/y/ct.nii.gz") == 0 && ml_dsample_get(c, "image")->str != ml_dsample_get(s, "image")->str);
    ML_CHECK(ml_dsample_bytes(s) > 4 * 5 * 6 * 4);
    ml_dsample_free(c);
    ml_dsample_free(s);
}

/* apply x to the list; returns the error code */
static ml_err run1(const ml_xform *x, ml_dlist **l, uint64_t seed) {
    ml_xctx ctx = {seed, 0, 0, 0};
    return ml_xform_apply(x, l, &ctx);
}

ML_TEST(pad_crop_roundtrip_and_affine) {
    double aff[16] = {2, 0, 0, 10, 0, 3, 0, -5, 0, 0, 4, 1, 0, 0, 0, 1};
    ml_dlist *l = one(mk(2, 5, 4, 3, ramp), aff);
    ml_xform pad = xf(ML_XF_SPATIAL_PAD, "SpatialPadd", "image");
    int64_t want[3] = {7, 4, 5};
    memcpy(pad.size, want, sizeof want);
    ML_CHECK_OK(run1(&pad, &l, 0));
    ml_dval *v = ml_dsample_get(l->s[0], "image");
    ML_CHECK(v->t->shape[1] == 7 && v->t->shape[2] == 4 && v->t->shape[3] == 5);
    /* symmetric: before = 1 on x, 1 on z; value 0 outside */
    ML_CHECK(at(v->t, 1, 1, 2, 1) == ramp(1, 0, 2, 0));
    ML_CHECK(at(v->t, 0, 0, 0, 0) == 0 && at(v->t, 0, 6, 0, 0) == 0);
    ML_CHECK_NEAR(v->affine[3], 10 - 2, 1e-12);
    ML_CHECK_NEAR(v->affine[11], 1 - 4, 1e-12);
    ml_xform cc = xf(ML_XF_CENTER_CROP, "CenterSpatialCropd", "image");
    int64_t roi[3] = {5, 4, 3};
    memcpy(cc.size, roi, sizeof roi);
    ML_CHECK_OK(run1(&cc, &l, 0));
    v = ml_dsample_get(l->s[0], "image");
    ml_tensor *orig = mk(2, 5, 4, 3, ramp);
    ML_CHECK(ml_t_maxdiff(v->t, orig) == 0);
    for (int i = 0; i < 16; i++) ML_CHECK_NEAR(v->affine[i], aff[i], 1e-12);
    ml_tensor_release(orig);
    ml_dlist_free(l);
}

ML_TEST(flip_rot90_keep_world_positions) {
    double aff[16] = {0, 2, 0, 3, 1.5, 0, 0, -1, 0, 0, -3, 7, 0, 0, 0, 1};
    for (int type = 0; type < 2; type++) {
        ml_dlist *l = one(mk(1, 5, 4, 3, ramp), aff);
        ml_xform x = xf(type ? ML_XF_RAND_ROT90 : ML_XF_RAND_FLIP, type ? "RandRotate90d" : "RandFlipd", "image");
        x.prob = 1;
        x.max_k = 1;
        x.axes[0] = 0;
        x.axes[1] = 2;
        x.flip_mask = 5;
        ML_CHECK_OK(run1(&x, &l, 1));
        ml_dval *v = ml_dsample_get(l->s[0], "image");
        /* every output voxel holds the input voxel at the same world position */
        int bad = 0;
        for (int64_t i = 0; i < v->t->shape[1]; i++)
            for (int64_t j = 0; j < v->t->shape[2]; j++)
                for (int64_t k = 0; k < v->t->shape[3]; k++) {
                    double val = at(v->t, 0, i, j, k), p[3] = {(double)i, (double)j, (double)k}, w[3], w2[3];
                    world(v->affine, p, w);
                    /* ramp value -> input index */
                    double q[3] = {floor(val / 100), fmod(floor(val / 10), 10), fmod(val, 10)};
                    world(aff, q, w2);
                    for (int a = 0; a < 3; a++) bad += fabs(w[a] - w2[a]) > 1e-9;
                }
        ML_CHECK(bad == 0);
        if (type) ML_CHECK(v->t->shape[1] == 3 && v->t->shape[3] == 5);
        /* four quarter turns (or two flips) give the input back */
        for (int r = 0; r < (type ? 3 : 1); r++) ML_CHECK_OK(run1(&x, &l, 1));
        v = ml_dsample_get(l->s[0], "image");
        ml_tensor *orig = mk(1, 5, 4, 3, ramp);
        ML_CHECK(ml_t_maxdiff(v->t, orig) == 0);
        for (int i = 0; i < 16; i++) ML_CHECK_NEAR(v->affine[i], aff[i], 1e-12);
        ml_tensor_release(orig);
        ml_dlist_free(l);
    }
}

static double one_voxel(int64_t c, int64_t x, int64_t y, int64_t z) { return c == 0 && x == 9 && y == 3 && z == 12 ? 5 : 0; }

ML_TEST(posneg_centres_and_errors) {
    ml_dlist *l = ml_dlist_new();
    ml_dsample *s = ml_dsample_new();
    ml_dsample_set_tensor(s, "label", mk(1, 20, 20, 20, one_voxel), NULL, NULL, false);
    ml_dsample_set_tensor(s, "image", mk(1, 20, 20, 20, ramp), NULL, NULL, false);
    ml_dlist_push(l, s);
    ml_xform x = xf(ML_XF_RAND_POSNEG_CROP, "RandCropByPosNegLabeld", "image");
    x.nkeys = 2;
    strcpy(x.keys[1], "label");
    strcpy(x.label_key, "label");
    int64_t sz[3] = {6, 6, 6};
    memcpy(x.size, sz, sizeof sz);
    x.neg = 0;
    x.num_samples = 4;
    ML_CHECK_OK(run1(&x, &l, 5));
    ML_CHECK(l->n == 4);
    for (int i = 0; i < l->n; i++) {
        ml_dval *lab = ml_dsample_get(l->s[i], "label"), *img = ml_dsample_get(l->s[i], "image");
        ML_CHECK(lab->t->shape[1] == 6 && at(lab->t, 0, 3, 3, 3) == 5);
        ML_CHECK(at(img->t, 0, 3, 3, 3) == ramp(0, 9, 3, 12));
        ML_CHECK_NEAR(img->affine[3], 6, 1e-12); /* crop starts at x = 9 - 3 */
    }
    ml_dlist_free(l);
    /* ROI larger than the image */
    l = ml_dlist_new();
    s = ml_dsample_new();
    ml_dsample_set_tensor(s, "label", mk(1, 4, 20, 20, one_voxel), NULL, NULL, false);
    ml_dsample_set_tensor(s, "image", mk(1, 4, 20, 20, ramp), NULL, NULL, false);
    ml_dlist_push(l, s);
    ml_t_expect_err(run1(&x, &l, 5), ML_ERR_SHAPE, "RandCropByPosNegLabeld: spatial_size [6, 6, 6] is larger",
                    "key 'label' has spatial shape [4, 20, 20]", "roi > image");
    ml_dlist_free(l);
}

ML_TEST(collate_stack_and_errors) {
    ml_dsample *s[3];
    for (int i = 0; i < 3; i++) {
        s[i] = ml_dsample_new();
        ml_dsample_set_tensor(s[i], "image", mk(1, 3, 4, i == 2 ? 6 : 5, ramp), NULL, "f", false);
        ml_dsample_set_int(s[i], "id", i);
        ml_dsample_set_str(s[i], "name", "n");
    }
    ml_batch *b = NULL;
    ML_CHECK_OK(ml_collate(&b, s, 2, ML_COLLATE_STACK));
    ML_CHECK(b && b->B == 2 && b->nf == 3);
    for (int f = 0; b && f < b->nf; f++) {
        if (b->f[f].kind == ML_DV_TENSOR) {
            ML_CHECK(b->f[f].t->ndim == 5 && b->f[f].t->shape[0] == 2 && b->f[f].affine->shape[0] == 2);
            int64_t ix[5] = {1, 0, 2, 3, 4};
            ML_CHECK(ml_tensor_get(b->f[f].t, ix) == ramp(0, 2, 3, 4));
        }
        if (b->f[f].kind == ML_DV_INT) {
            int64_t ix[1] = {1};
            ML_CHECK(ml_tensor_get(b->f[f].t, ix) == 1);
        }
    }
    ml_batch_free(b);
    b = NULL;
    ml_t_expect_err(ml_collate(&b, s, 3, ML_COLLATE_STACK), ML_ERR_SHAPE, "cannot stack sample 2 of shape [1, 3, 4, 6]",
                    "sample 0 of shape [1, 3, 4, 5]", "mixed shapes");
    ML_CHECK(!b);
    ML_CHECK_OK(ml_collate(&b, s, 3, ML_COLLATE_PAD));
    ML_CHECK(b && b->f[0].t->shape[4] == 6);
    ml_batch_free(b);
    ml_dsample_set_num(s[1], "id", 2.5);
    ML_CHECK_OK(ml_collate(&b, s, 2, ML_COLLATE_STACK)); /* int + float -> float64 */
    ml_batch_free(b);
    ml_dsample_set_str(s[1], "id", "x");
    ml_t_expect_err(ml_collate(&b, s, 2, ML_COLLATE_STACK), ML_ERR_ARG, "key 'id' is a string in sample 1",
                    "an integer in sample 0", "mixed kinds");
    for (int i = 0; i < 3; i++) ml_dsample_free(s[i]);
}

/* dataset of n items {image = [1, 6, 6, 6] with value i, id = i}; item `bad` (if >= 0) is too small
 * for the 5^3 crop */
static ml_dataset *synth(int n, int bad, int cache_upto) {
    ml_dsample **items = calloc(n, sizeof *items);
    for (int i = 0; i < n; i++) {
        items[i] = ml_dsample_new();
        int64_t sh[4] = {1, i == bad ? 3 : 6, 6, 6};
        ml_tensor *t = NULL;
        ml_full(&t, ML_F32, 4, sh, (double)i);
        ml_dsample_set_tensor(items[i], "image", t, NULL, NULL, false);
        ml_dsample_set_int(items[i], "id", i);
    }
    ml_xform x[4];
    ml_xform_init(&x[0], ML_XF_SCALE_RANGE, "ScaleIntensityRanged");
    x[0].nkeys = 1;
    strcpy(x[0].keys[0], "image");
    x[0].a_min = 0;
    x[0].a_max = 2;
    ml_xform_init(&x[1], ML_XF_RAND_SPATIAL_CROP, "RandSpatialCropd");
    x[1].nkeys = 1;
    strcpy(x[1].keys[0], "image");
    for (int a = 0; a < 3; a++) x[1].size[a] = 5;
    ml_xform_init(&x[2], ML_XF_RAND_NOISE, "RandGaussianNoised");
    x[2].nkeys = 1;
    strcpy(x[2].keys[0], "image");
    x[2].prob = 0.7;
    ml_xform_init(&x[3], ML_XF_RAND_POSNEG_CROP, "RandCropByPosNegLabeld");
    x[3].nkeys = 1;
    strcpy(x[3].keys[0], "image");
    strcpy(x[3].label_key, "image");
    for (int a = 0; a < 3; a++) x[3].size[a] = 4;
    x[3].num_samples = 2;
    ml_pipeline *p = ml_pipeline_new(4, x);
    ml_dataset_opts o = {.native_end = 4, .cache_upto = cache_upto, .cache_n = cache_upto ? n : 0, .max_bytes = 0};
    ml_dataset *d = NULL;
    if (ml_dataset_new(&d, items, n, p, &o)) d = NULL;
    ml_pipeline_release(p);
    return d;
}

/* all batches of one epoch, concatenated into one checksum list */
static int epoch_sums(ml_dataset *d, int workers, uint64_t seed, uint64_t epoch, double *sums, int max) {
    ml_loader_opts o;
    ml_loader_opts_init(&o);
    o.batch_size = 3;
    o.shuffle = true;
    o.num_workers = workers;
    o.prefetch = 2;
    o.seed = o.xform_seed = seed;
    ml_loader *l = NULL;
    if (ml_loader_new(&l, d, &o) || ml_loader_start(l, epoch)) return -1;
    int n = 0;
    for (;;) {
        ml_batch *b = NULL;
        int64_t *ix = NULL, ni = 0;
        if (ml_loader_next(l, &b, NULL, &ix, &ni)) {
            n = -1;
            break;
        }
        if (!b) break;
        for (int f = 0; f < b->nf && n < max; f++)
            if (b->f[f].t) sums[n++] = ml_t_checksum(b->f[f].t);
        for (int64_t j = 0; j < ni && n < max; j++) sums[n++] = (double)ix[j];
        ml_batch_free(b);
        free(ix);
    }
    ml_loader_free(l);
    return n;
}

ML_TEST(loader_same_batches_for_any_worker_count) {
    ml_dataset *d = synth(10, -1, 0);
    ML_CHECK(d != NULL);
    if (!d) return;
    double a[256], b[256], c[256], e[256];
    int na = epoch_sums(d, 0, 9, 0, a, 256), nb = epoch_sums(d, 1, 9, 0, b, 256), nc = epoch_sums(d, 3, 9, 0, c, 256);
    int ne = epoch_sums(d, 3, 9, 1, e, 256);
    ML_CHECK(na > 0 && na == nb && na == nc && na == ne);
    ML_CHECK(memcmp(a, b, na * sizeof *a) == 0);
    ML_CHECK(memcmp(a, c, na * sizeof *a) == 0);
    ML_CHECK(memcmp(a, e, na * sizeof *a) != 0);
    ml_dataset_release(d);
}

ML_TEST(loader_error_at_the_batch_that_needs_it) {
    ml_dataset *d = synth(7, 4, 0); /* item 5 (1-based) is too small */
    ml_loader_opts o;
    ml_loader_opts_init(&o);
    o.batch_size = 2;
    for (int w = 0; w < 3; w += 2) {
        o.num_workers = w;
        ml_loader *l = NULL;
        ML_CHECK_OK(ml_loader_new(&l, d, &o));
        ML_CHECK(ml_loader_nbatches(l) == 4);
        ML_CHECK_OK(ml_loader_start(l, 0));
        int ok = 0;
        for (int bi = 0; bi < 4; bi++) {
            ml_batch *b = NULL;
            ml_err e = ml_loader_next(l, &b, NULL, NULL, NULL);
            if (bi == 2) {
                ml_t_expect_err(e, ML_ERR_SHAPE, "DataLoader: epoch 0, batch 3: data[5]: RandCropByPosNegLabeld",
                                "key 'image' has spatial shape [3, 5, 5]", "bad sample");
            } else {
                ok += e == ML_OK && b && b->B == (bi == 3 ? 2 : 4);
            }
            ml_batch_free(b);
        }
        ML_CHECK(ok == 3);
        ml_batch *b = NULL;
        ML_CHECK_OK(ml_loader_next(l, &b, NULL, NULL, NULL));
        ML_CHECK(b == NULL); /* end of the epoch */
        /* stop in the middle of an epoch, start again */
        ML_CHECK_OK(ml_loader_start(l, 1));
        ML_CHECK_OK(ml_loader_next(l, &b, NULL, NULL, NULL));
        ml_batch_free(b);
        ml_loader_stop(l);
        ML_CHECK_OK(ml_loader_next(l, &b, NULL, NULL, NULL));
        ML_CHECK(b == NULL);
        ML_CHECK_OK(ml_loader_start(l, 1));
        int n = 0;
        for (;;) {
            ml_err e = ml_loader_next(l, &b, NULL, NULL, NULL);
            if (!e && !b) break;
            n++;
            ml_batch_free(b);
            b = NULL;
        }
        ML_CHECK(n == 4);
        ml_loader_stats st;
        ml_loader_get_stats(l, &st);
        ML_CHECK(st.batches >= 9 && st.num_workers == w && st.produce_s > 0);
        ml_loader_free(l);
    }
    ml_dataset_release(d);
}

ML_TEST(loader_samples_mode_and_cache) {
    ml_dataset *d = synth(5, -1, 1); /* cache the ScaleIntensityRange output */
    ML_CHECK_OK(ml_dataset_fill_cache(d, 2));
    ml_cache_info ci;
    ml_dataset_cache_info(d, &ci);
    ML_CHECK(ci.items == 5 && ci.bytes > 5 * 216 * 4 && ci.skipped == 0);
    ml_loader_opts o;
    ml_loader_opts_init(&o);
    o.batch_size = 2;
    o.num_workers = 2;
    o.collate = -1;
    ml_loader *l = NULL;
    ML_CHECK_OK(ml_loader_new(&l, d, &o));
    ML_CHECK_OK(ml_loader_start(l, 0));
    ml_dlist *s = NULL;
    int64_t *ix = NULL, ni = 0;
    ML_CHECK_OK(ml_loader_next(l, NULL, &s, &ix, &ni));
    ML_CHECK(s && s->n == 4 && ni == 4 && ix[0] == 0 && ix[1] == 0 && ix[2] == 1);
    /* item 1 scaled by ScaleIntensityRange(0, 2): 0.5, plus noise or not */
    ml_dval *v = s ? ml_dsample_get(s->s[2], "image") : NULL;
    ML_CHECK(v && v->t->shape[1] == 4 && fabs(at(v->t, 0, 0, 0, 0) - 0.5) < 0.2);
    ml_dlist_free(s);
    free(ix);
    ml_loader_free(l);
    ml_dataset_cache_info(d, &ci);
    ML_CHECK(ci.hits >= 2);
    /* the cached tensors were not modified by the noise */
    ml_dlist *g = NULL;
    ML_CHECK_OK(ml_dataset_get(d, 3, 0, 0, &g));
    ml_dlist_free(g);
    ml_dataset_release(d);
}

ML_TEST(listdir_sorted) {
    char dir[] = "/tmp/ml_data_test_XXXXXX";
    ML_CHECK(mkdtemp(dir) != NULL);
    const char *names[] = {"b.nii.gz", "a.nii", ".hidden", "c"};
    char p[256];
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        FILE *f = fopen(p, "w");
        if (f) fclose(f);
    }
    char **v = NULL;
    int n = 0;
    ML_CHECK_OK(ml_data_listdir(dir, &v, &n));
    ML_CHECK(n == 3 && !strcmp(v[0], "a.nii") && !strcmp(v[1], "b.nii.gz") && !strcmp(v[2], "c"));
    ml_data_free_names(v, n);
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
    ml_t_expect_err(ml_data_listdir(dir, &v, &n), ML_ERR_IO, dir, "cannot open directory", "missing dir");
}

ML_TEST(load_missing_file_names_it) {
    ml_dlist *l = ml_dlist_new();
    ml_dsample *s = ml_dsample_new();
    ml_dsample_set_str(s, "image", "/nonexistent/ct.nii.gz");
    ml_dlist_push(l, s);
    ml_xform x = xf(ML_XF_LOAD, "LoadImaged", "image");
    ml_t_expect_err(run1(&x, &l, 0), ML_ERR_IO, "LoadImaged: key 'image': /nonexistent/ct.nii.gz",
                    "No such file or directory", "missing file");
    ml_dlist_free(l);
    (void)zero4;
}

int main(void) {
    ML_RUN(rng_deterministic_uniform);
    ML_RUN(rng_fill_normal_thread_independent);
    ML_RUN(sample_dict);
    ML_RUN(pad_crop_roundtrip_and_affine);
    ML_RUN(flip_rot90_keep_world_positions);
    ML_RUN(posneg_centres_and_errors);
    ML_RUN(collate_stack_and_errors);
    ML_RUN(loader_same_batches_for_any_worker_count);
    ML_RUN(loader_error_at_the_batch_that_needs_it);
    ML_RUN(loader_samples_mode_and_cache);
    ML_RUN(listdir_sorted);
    ML_RUN(load_missing_file_names_it);
    return ml_test_summary();
}
