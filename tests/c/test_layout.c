/* ML_LAYOUT_NC16 (oneDNN's nCdhw16c kept between ops): convolutions with 16k channels write it,
 * batch norm (+ PReLU), a + b and cat along the channels read and write it, backward passes it on;
 * everything else converts to plain strides in place. The f32 chains below stay blocked end to end
 * and are compared with the same chains in f64 (always plain), forward and every input gradient;
 * mixed layouts (a blocked tensor meeting a plain one) and the conversion itself are checked too. */
#include "ml_test.h"
#include "nn/ml_nn.h"

static ml_conv_params conv3(int64_t s) {
    ml_conv_params p = {.k = 3, .groups = 1};
    for (int i = 0; i < 3; i++) {
        p.stride[i] = s;
        p.padding[i] = 1;
        p.dilation[i] = 1;
        p.output_padding[i] = s - 1;
    }
    return p;
}

/* conv -> batch norm + PReLU -> conv (+ residual conv) -> add -> cat with the first activation ->
 * conv_transpose (stride 2) -> batch norm: the shape of a MONAI U-Net level.
 * in: x [N,16,D,H,W], w1 [32,16,3,3,3], w2 [32,32,3,3,3], wr [32,16,1,1,1]... see make_inputs */
static int g_last_blocked; /* layouts seen inside the last f32 run (bit mask of checks that held) */

static ml_err f_chain(ml_tensor **out, ml_tensor **in, void *ud) {
    (void)ud;
    ml_tensor *x = in[0], *w1 = in[1], *b1 = in[2], *g1 = in[3], *be1 = in[4], *pw = in[5], *w2 = in[6], *wt = in[7];
    ml_conv_params p1 = conv3(1), pt = conv3(2);
    ml_tensor *a = NULL, *n1 = NULL, *c2 = NULL, *r = NULL, *s = NULL, *cat = NULL, *t = NULL, *y = NULL;
    ml_err e;
    bool f32 = x->dtype == ML_F32;
    int seen = 0;
    if ((e = ml_conv(&a, x, w1, b1, &p1))) goto done;
    seen |= (a->layout == ML_LAYOUT_NC16) << 0;
    if ((e = ml_batch_norm_prelu(&n1, a, NULL, NULL, g1, be1, true, 0.1, 1e-5, pw))) goto done;
    seen |= (n1->layout == ML_LAYOUT_NC16) << 1;
    if ((e = ml_conv(&c2, n1, w2, NULL, &p1))) goto done;
    if ((e = ml_binary(&s, ML_ADD, c2, a))) goto done; /* residual */
    seen |= (s->layout == ML_LAYOUT_NC16) << 2;
    ml_tensor *parts[2] = {s, n1};
    if ((e = ml_cat(&cat, 2, parts, 1))) goto done;
    seen |= (cat->layout == ML_LAYOUT_NC16) << 3;
    if ((e = ml_conv_transpose(&t, cat, wt, NULL, &pt))) goto done;
    seen |= (t->layout == ML_LAYOUT_NC16) << 4;
    if ((e = ml_batch_norm(&y, t, NULL, NULL, NULL, NULL, true, 0.1, 1e-5))) goto done;
    seen |= (y->layout == ML_LAYOUT_NC16) << 5;
    (void)r;
done:
    if (f32) g_last_blocked = seen;
    ml_tensor_release(a);
    ml_tensor_release(n1);
    ml_tensor_release(c2);
    ml_tensor_release(s);
    ml_tensor_release(cat);
    ml_tensor_release(t);
    if (e) { ml_tensor_release(y); return e; }
    *out = y;
    return ML_OK;
}

static void chain_inputs(ml_tensor **in, int64_t S) {
    int64_t xs[5] = {2, 16, S, S + 1, S + 2}, w1s[5] = {32, 16, 3, 3, 3}, w2s[5] = {32, 32, 3, 3, 3},
            wts[5] = {64, 16, 3, 3, 3}, c32 = 32, one = 1;
    in[0] = ml_t_randn(5, xs, true);
    in[1] = ml_t_randn(5, w1s, true);
    in[2] = ml_t_randn(1, &c32, true);
    in[3] = ml_t_randn(1, &c32, true);
    in[4] = ml_t_randn(1, &c32, true);
    in[5] = ml_t_randn(1, &one, true);
    in[6] = ml_t_randn(5, w2s, true);
    in[7] = ml_t_randn(5, wts, true);
}

ML_TEST(blocked_chain_f32_vs_f64) {
    ml_tensor *in[8];
    chain_inputs(in, 5);
    g_last_blocked = 0;
    ml_t_agree("conv-bn-prelu-conv-add-cat-convT-bn", f_chain, 8, in, NULL, 1e-4);
    /* every intermediate stayed in the blocked layout (f32) */
    ML_CHECK(g_last_blocked == 0x3f);
    for (int i = 0; i < 8; i++) ml_tensor_release(in[i]);
}

/* the cotangent arrives plain while the saved input is blocked; a blocked tensor meets plain ones */
static ml_err f_mixed(ml_tensor **out, ml_tensor **in, void *ud) {
    (void)ud;
    ml_conv_params p1 = conv3(1);
    ml_tensor *a = NULL, *n1 = NULL, *m = NULL, *s = NULL, *cat = NULL;
    ml_err e;
    if ((e = ml_conv(&a, in[0], in[1], NULL, &p1))) goto done;
    if ((e = ml_batch_norm_prelu(&n1, a, NULL, NULL, NULL, NULL, true, 0.1, 1e-5, in[2]))) goto done;
    if ((e = ml_binary(&m, ML_MUL, n1, in[3]))) goto done;   /* blocked * plain -> plain */
    if ((e = ml_binary(&s, ML_ADD, a, m))) goto done;        /* blocked + plain */
    ml_tensor *parts[2] = {s, a};
    if ((e = ml_cat(&cat, 2, parts, 1))) goto done;          /* plain with blocked */
    e = ml_binary(out, ML_ADD, cat, cat);
done:
    ml_tensor_release(a);
    ml_tensor_release(n1);
    ml_tensor_release(m);
    ml_tensor_release(s);
    ml_tensor_release(cat);
    return e;
}

ML_TEST(mixed_layouts_f32_vs_f64) {
    int64_t xs[5] = {1, 8, 4, 5, 6}, ws[5] = {16, 8, 3, 3, 3}, one = 1, ms[5] = {1, 16, 4, 5, 6};
    ml_tensor *in[4] = {ml_t_randn(5, xs, true), ml_t_randn(5, ws, true), ml_t_randn(1, &one, true),
                        ml_t_randn(5, ms, true)};
    ml_t_agree("conv-bn with plain partners", f_mixed, 4, in, NULL, 1e-4);
    for (int i = 0; i < 4; i++) ml_tensor_release(in[i]);
}

/* the in-place conversion keeps every value; views, detach and copies of a blocked tensor see plain data */
ML_TEST(conversion_to_plain) {
    int64_t xs[5] = {2, 16, 3, 4, 5}, ws[5] = {32, 16, 3, 3, 3};
    ml_tensor *x = ml_t_randn(5, xs, false), *w = ml_t_randn(5, ws, false), *x32, *w32, *y = NULL, *ref = NULL;
    x32 = ml_t_cast(x, ML_F32, false);
    w32 = ml_t_cast(w, ML_F32, true); /* recorded for backward: oneDNN's training primitive, NC16 output */
    ml_conv_params p = conv3(1);
    ML_CHECK_OK(ml_conv(&y, x32, w32, NULL, &p));
    ML_CHECK(y && y->layout == ML_LAYOUT_NC16);
    /* reference: the same conv on plain f64 */
    ML_CHECK_OK(ml_conv(&ref, x, w, NULL, &p));
    ML_CHECK(ml_t_reldiff(y, ref) < 1e-5); /* ml_tensor_get reads the blocked layout */
    ml_tensor *d = NULL;
    ML_CHECK_OK(ml_detach(&d, y)); /* a second header: y is made plain first */
    ML_CHECK(y->layout == 0 && d->layout == 0 && ml_tensor_is_contiguous(y));
    ML_CHECK(ml_t_reldiff(y, ref) < 1e-5 && ml_t_reldiff(d, ref) < 1e-5);
    ml_tensor *y2 = NULL, *v = NULL;
    ML_CHECK_OK(ml_conv(&y2, x32, w32, NULL, &p));
    ML_CHECK_OK(ml_narrow(&v, y2, 1, 16, 8)); /* a view converts its base */
    ML_CHECK(y2->layout == 0);
    int64_t idx[5] = {1, 3, 2, 1, 4}, ridx[5] = {1, 19, 2, 1, 4};
    ML_CHECK_NEAR(ml_tensor_get(v, idx), ml_tensor_get(ref, ridx), 1e-4);
    /* no grad (evaluation): 16k output channels still come out blocked */
    ml_tensor *y3 = NULL;
    bool prev = ml_set_grad_enabled(false);
    ML_CHECK_OK(ml_conv(&y3, x32, w32, NULL, &p));
    ml_set_grad_enabled(prev);
    ML_CHECK(y3 && y3->layout == ML_LAYOUT_NC16 && ml_t_reldiff(y3, ref) < 1e-5);
    ml_tensor *ts[] = {x, w, x32, w32, y, ref, d, y2, v, y3};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) ml_tensor_release(ts[i]);
}

/* batch norm in evaluation mode (running statistics) on a blocked input */
static ml_err f_bn_eval(ml_tensor **out, ml_tensor **in, void *ud) {
    (void)ud;
    ml_conv_params p1 = conv3(1);
    ml_tensor *a = NULL, *rm = NULL, *rv = NULL;
    int64_t c = 16;
    ml_err e;
    if ((e = ml_conv(&a, in[0], in[1], NULL, &p1))) return e;
    ml_dtype dt = (ml_dtype)in[0]->dtype;
    if (!(e = ml_full(&rm, dt, 1, &c, 0.25)) && !(e = ml_full(&rv, dt, 1, &c, 2.0)))
        e = ml_batch_norm_prelu(out, a, rm, rv, in[2], NULL, false, 0.1, 1e-5, in[3]);
    ml_tensor_release(a);
    ml_tensor_release(rm);
    ml_tensor_release(rv);
    return e;
}

ML_TEST(batch_norm_eval_blocked_f32_vs_f64) {
    int64_t xs[5] = {2, 4, 3, 4, 5}, ws[5] = {16, 4, 3, 3, 3}, c = 16;
    ml_tensor *in[4] = {ml_t_randn(5, xs, true), ml_t_randn(5, ws, true), ml_t_randn(1, &c, true),
                        ml_t_randn(1, &c, true)};
    ml_t_agree("conv-bn(eval)-prelu", f_bn_eval, 4, in, NULL, 1e-4);
    for (int i = 0; i < 4; i++) ml_tensor_release(in[i]);
}

int main(void) {
    ml_manual_seed(7);
    ML_RUN(blocked_chain_f32_vs_f64);
    ML_RUN(mixed_layouts_f32_vs_f64);
    ML_RUN(conversion_to_plain);
    ML_RUN(batch_norm_eval_blocked_f32_vs_f64);
    return ml_test_summary();
}
