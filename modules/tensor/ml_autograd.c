/* Autograd: nodes recorded by ops, backward in reverse creation order, graph freed after use.
 *
 * Each op that needs grad creates an ml_node holding its inputs (retained, so the graph stays
 * alive as long as its outputs do) and saved tensors with their storage versions. Outputs point
 * to their node. backward() collects the nodes reachable from the root, orders them by creation
 * sequence (a topological order, newest first), and calls each node's rule; gradients accumulate
 * per node output, and for leaves into .grad (un-broadcast by the op rules). */
#include "ml_tensor.h"
#include "ml_iter.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local int g_grad_disabled; /* 0 = enabled (default) */
static _Atomic uint64_t g_seq;

bool ml_grad_enabled(void) { return !g_grad_disabled; }
bool ml_set_grad_enabled(bool on) {
    bool prev = !g_grad_disabled;
    g_grad_disabled = !on;
    return prev;
}

bool ml_needs_grad(int n, ml_tensor *const *ts) {
    if (g_grad_disabled) return false;
    for (int i = 0; i < n; i++)
        if (ts[i] && ts[i]->requires_grad) return true;
    return false;
}

ml_node *ml_node_new(const char *name, ml_backward_fn fn, int nin, ml_tensor *const *ts) {
    if (nin > ML_NODE_MAX_IN) { ml_seterr(ML_ERR_INTERNAL, "%s: too many autograd inputs (%d)", name, nin); return NULL; }
    ml_node *n = calloc(1, sizeof *n);
    if (!n) { ml_seterr(ML_ERR_OOM, "%s: out of memory (autograd node)", name); return NULL; }
    n->refcount = 1;
    n->name = name;
    n->backward = fn;
    n->seq = atomic_fetch_add(&g_seq, 1) + 1;
    n->nin = nin;
    for (int i = 0; i < nin; i++) {
        ml_tensor *t = ts[i];
        if (!t) continue;
        n->in_ndim[i] = t->ndim;
        n->in_dtype[i] = t->dtype;
        memcpy(n->in_shape[i], t->shape, sizeof(int64_t) * (size_t)t->ndim);
        if (t->requires_grad) {
            n->needs[i] = true;
            n->in[i] = t;
            ml_tensor_retain(t);
            if (t->grad_fn) {
                n->in_fn[i] = t->grad_fn;
                n->in_out[i] = t->grad_fn_out;
                __atomic_add_fetch(&t->grad_fn->refcount, 1, __ATOMIC_RELAXED);
            }
        }
    }
    return n;
}

int ml_node_save(ml_node *n, ml_tensor *t) {
    if (n->nsaved >= ML_NODE_MAX_SAVED) { ml_seterr(ML_ERR_INTERNAL, "%s: too many saved tensors", n->name); return -1; }
    int k = n->nsaved++;
    n->saved[k] = t;
    if (t) {
        ml_tensor_retain(t);
        n->saved_version[k] = t->storage->version;
    }
    return k;
}

ml_tensor *ml_node_saved(ml_node *n, int k) {
    if (k < 0 || k >= n->nsaved) { ml_seterr(ML_ERR_INTERNAL, "%s: no saved tensor %d", n->name, k); return NULL; }
    ml_tensor *t = n->saved[k];
    if (t && t->storage->version != n->saved_version[k]) {
        ml_seterr(ML_ERR_GRAD,
                  "%s backward: a tensor of shape %s saved for backward was modified in place (version %u, saved "
                  "at %u); use a copy (clone) before changing it",
                  n->name, ml_shape_str(t->ndim, t->shape), t->storage->version, n->saved_version[k]);
        return NULL;
    }
    return t;
}

void ml_node_set_output(ml_node *n, int k, ml_tensor *out) {
    if (out->grad_fn) ml_node_release(out->grad_fn);
    out->grad_fn = n;
    out->grad_fn_out = (int8_t)k;
    out->requires_grad = true;
    __atomic_add_fetch(&n->refcount, 1, __ATOMIC_RELAXED);
    if (k + 1 > n->nout) n->nout = k + 1;
    n->out_ndim[k] = out->ndim;
    n->out_dtype[k] = out->dtype;
    memcpy(n->out_shape[k], out->shape, sizeof(int64_t) * (size_t)out->ndim);
}

/* Drop what the node holds (inputs, saved tensors, context); the node itself stays while outputs
 * point at it. */
static void node_free_graph(ml_node *n) {
    for (int i = 0; i < n->nin; i++) { ml_tensor_release(n->in[i]); n->in[i] = NULL; }
    for (int i = 0; i < n->nin; i++) { ml_node_release(n->in_fn[i]); n->in_fn[i] = NULL; }
    for (int i = 0; i < n->nsaved; i++) { ml_tensor_release(n->saved[i]); n->saved[i] = NULL; }
    for (int k = 0; k < ML_NODE_MAX_OUT; k++) { ml_tensor_release(n->gout[k]); n->gout[k] = NULL; }
    if (n->ctx && n->ctx_free) n->ctx_free(n->ctx);
    n->ctx = NULL;
    n->freed = true;
}

/* Drop one reference to g; a node that reaches zero goes on the stack to be freed (NULL: no room, the
 * caller frees it recursively). */
static bool drop_node(ml_node *g, ml_node ***stack, size_t *sp, size_t *cap) {
    if (!g || __atomic_sub_fetch(&g->refcount, 1, __ATOMIC_ACQ_REL) != 0) return true;
    if (*sp == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        ml_node **ns = realloc(*stack, c * sizeof *ns);
        if (!ns) { /* fall back to recursion for this one */
            g->refcount = 1;
            ml_node_release(g);
            return false;
        }
        *stack = ns;
        *cap = c;
    }
    (*stack)[(*sp)++] = g;
    return true;
}

void ml_node_release(ml_node *n) {
    if (!n || __atomic_sub_fetch(&n->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
    /* Releasing inputs may release their nodes: iterative to keep deep graphs off the C stack. */
    ml_node **stack = NULL;
    size_t sp = 0, cap = 0;
    ml_node *cur = n;
    for (;;) {
        for (int i = 0; i < cur->nin; i++) {
            ml_tensor *t = cur->in[i];
            cur->in[i] = NULL;
            ml_node *f = cur->in_fn[i];
            cur->in_fn[i] = NULL;
            if (t) {
                /* If this is the last reference to t, detach its node and defer its release. */
                if (__atomic_load_n(&t->refcount, __ATOMIC_ACQUIRE) == 1 && t->grad_fn) {
                    ml_node *g = t->grad_fn;
                    t->grad_fn = NULL;
                    drop_node(g, &stack, &sp, &cap);
                }
                ml_tensor_release(t);
            }
            drop_node(f, &stack, &sp, &cap);
        }
        node_free_graph(cur);
        free(cur);
        if (!sp) break;
        cur = stack[--sp];
    }
    free(stack);
}

ml_err ml_record(const char *name, ml_backward_fn fn, int nin, ml_tensor *const *ts, ml_tensor *out,
                 ml_node **node_out) {
    if (node_out) *node_out = NULL;
    if (!ml_needs_grad(nin, ts)) return ML_OK;
    ml_err e;
    for (int i = 0; i < nin; i++)
        if (ts[i] && (e = ml_check_history(name, ts[i]))) return e;
    ml_node *n = ml_node_new(name, fn, nin, ts);
    if (!n) return ML_ERR_OOM;
    ml_node_set_output(n, 0, out);
    ml_node_release(n); /* the output holds it now */
    if (node_out) *node_out = n;
    return ML_OK;
}

/* ------------------------------------------------------- in-place ops */
static bool shape_eq_t(const ml_tensor *x, const ml_tensor *y) {
    if (x->ndim != y->ndim) return false;
    for (int i = 0; i < x->ndim; i++)
        if (x->shape[i] != y->shape[i]) return false;
    return true;
}

bool ml_inplace_tracked(const ml_tensor *a, const ml_tensor *b) {
    return ml_grad_enabled() && (a->grad_fn || (b && b->requires_grad));
}

ml_err ml_check_history(const char *op, const ml_tensor *t) {
    if (t->hist_gen == t->storage->hist_gen) return ML_OK;
    return ml_seterr(ML_ERR_GRAD,
                     "%s: a tensor of shape %s was changed by an in-place op that autograd recorded on another "
                     "tensor sharing its memory (a view of it, or its base), so its gradient history no longer "
                     "matches its values; apply the op out of place, or in place to this tensor itself",
                     op, ml_shape_str(t->ndim, t->shape));
}

ml_err ml_inplace_old(const char *op, ml_tensor **old, ml_tensor *a) {
    *old = NULL;
    ml_err e = ml_check_history(op, a);
    if (e) return e;
    bool prev = ml_set_grad_enabled(false);
    e = ml_clone(old, a);
    ml_set_grad_enabled(prev);
    if (e) return e;
    if (a->grad_fn) {
        (*old)->grad_fn = a->grad_fn;
        (*old)->grad_fn_out = a->grad_fn_out;
        __atomic_add_fetch(&a->grad_fn->refcount, 1, __ATOMIC_RELAXED);
    }
    (*old)->requires_grad = a->requires_grad;
    return ML_OK;
}

ml_err ml_inplace_rebase(ml_tensor *a, ml_tensor *r) {
    ml_tensor *rc = r;
    ml_err e = ML_OK;
    if (r->dtype != a->dtype) { /* the in-place result takes the target's dtype; the cast is recorded */
        if ((e = ml_to_dtype(&rc, r, (ml_dtype)a->dtype))) return e;
    } else {
        ml_tensor_retain(rc);
    }
    bool prev = ml_set_grad_enabled(false);
    e = ml_copy_(a, rc);
    ml_set_grad_enabled(prev);
    if (!e) {
        ml_node *n = rc->grad_fn;
        if (n) __atomic_add_fetch(&n->refcount, 1, __ATOMIC_RELAXED);
        if (a->grad_fn) ml_node_release(a->grad_fn);
        a->grad_fn = n;
        a->grad_fn_out = rc->grad_fn_out;
        a->requires_grad = rc->requires_grad;
        a->hist_gen = ++a->storage->hist_gen;
    }
    ml_tensor_release(rc);
    return e;
}

ml_err ml_inplace_apply(const char *op, ml_tensor *a, ml_inplace_fn fn, const void *ctx) {
    ml_tensor *old, *r;
    ml_err e = ml_inplace_old(op, &old, a);
    if (e) return e;
    e = fn(&r, old, ctx);
    ml_tensor_release(old);
    if (e) return e;
    if (!shape_eq_t(r, a)) {
        e = ml_seterr(ML_ERR_SHAPE, "%s: the result of shape %s does not fit the in-place target of shape %s", op,
                      ml_shape_str(r->ndim, r->shape), ml_shape_str(a->ndim, a->shape));
    } else {
        e = ml_inplace_rebase(a, r);
    }
    ml_tensor_release(r);
    return e;
}

static ml_err copy_recorded(ml_tensor **out, ml_tensor *old, const void *ctx) {
    ml_tensor *src = (ml_tensor *)ctx;
    return ml_expand(out, src, old->ndim, old->shape);
}

ml_err ml_copy_recorded_(ml_tensor *dst, ml_tensor *src) {
    if (ml_grad_enabled() && src->requires_grad) {
        if (!ml_dtype_is_float((ml_dtype)dst->dtype))
            return ml_seterr(ML_ERR_DTYPE, "copy_: the source (shape %s) requires grad but the target is %s; gradients "
                                           "need a floating point target",
                             ml_shape_str(src->ndim, src->shape), ml_dtype_name((ml_dtype)dst->dtype));
        return ml_inplace_apply("copy_", dst, copy_recorded, src);
    }
    ml_err e = ml_copy_(dst, src);
    if (!e) ml_inplace_cut(dst);
    return e;
}

void ml_inplace_cut(ml_tensor *a) {
    if (!ml_grad_enabled() || !a->grad_fn) return;
    ml_node_release(a->grad_fn);
    a->grad_fn = NULL;
    a->requires_grad = false;
    a->hist_gen = ++a->storage->hist_gen;
}

ml_err ml_set_requires_grad(ml_tensor *t, bool on) {
    if (on && !ml_dtype_is_float((ml_dtype)t->dtype))
        return ml_seterr(ML_ERR_DTYPE, "requires_grad: only floating point tensors can require gradients, got %s",
                         ml_dtype_name((ml_dtype)t->dtype));
    if (!on && t->grad_fn)
        return ml_seterr(ML_ERR_GRAD, "requires_grad: cannot turn off requires_grad of a non-leaf tensor; use detach()");
    t->requires_grad = on;
    return ML_OK;
}

/* A gradient nobody else can see (one reference, its own storage, plain layout) can be kept as it is. */
static bool exclusively_owned(const ml_tensor *t) {
    return __atomic_load_n(&t->refcount, __ATOMIC_ACQUIRE) == 1 &&
           __atomic_load_n(&t->storage->refcount, __ATOMIC_ACQUIRE) == 1 && !t->grad_fn && !t->layout &&
           ml_tensor_is_contiguous(t);
}

ml_err ml_accumulate(ml_tensor **slot, ml_tensor *g) {
    bool prev = ml_set_grad_enabled(false);
    ml_err e = ML_OK;
    if (!*slot) {
        /* First gradient: take it over when the caller holds the only reference (no copy, no extra
         * memory); otherwise keep a private copy so later in-place accumulation never aliases. */
        if (exclusively_owned(g)) {
            ml_tensor_retain(g);
            g->requires_grad = false;
            *slot = g;
        } else {
            ml_tensor *c;
            if (!(e = ml_clone(&c, g))) {
                c->requires_grad = false;
                *slot = c;
            }
        }
    } else if (exclusively_owned(*slot)) {
        e = ml_binary_(ML_ADD, *slot, g);
    } else { /* shared with someone (e.g. a .grad the user holds): add out of place */
        ml_tensor *sum;
        if (!(e = ml_binary(&sum, ML_ADD, *slot, g))) {
            ml_tensor_release(*slot);
            *slot = sum;
        }
    }
    ml_set_grad_enabled(prev);
    return e;
}

/* Accumulate into a node's output-gradient slot (internal to backward, never seen by the user): the
 * first gradient is shared, not copied. Nothing writes a gradient in place unless it holds the only
 * reference (ml_accumulate's in-place branch checks that), so a second gradient for a shared slot
 * is added out of place: never more work than copying first. */
static ml_err accumulate_slot(ml_tensor **slot, ml_tensor *g) {
    if (*slot) return ml_accumulate(slot, g);
    ml_tensor_retain(g);
    *slot = g;
    return ML_OK;
}

static int cmp_seq_desc(const void *a, const void *b) {
    const ml_node *x = *(ml_node *const *)a, *y = *(ml_node *const *)b;
    return x->seq < y->seq ? 1 : x->seq > y->seq ? -1 : 0;
}

static ml_err grad_shape_check(const char *what, ml_tensor *g, int ndim, const int64_t *shape) {
    bool ok = g->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = g->shape[i] == shape[i];
    if (!ok)
        return ml_seterr(ML_ERR_GRAD, "%s: gradient has shape %s but the tensor has shape %s", what,
                         ml_shape_str(g->ndim, g->shape), ml_shape_str(ndim, shape));
    return ML_OK;
}

ml_err ml_backward(ml_tensor *root, ml_tensor *grad, bool retain_graph) {
    if (!root->requires_grad)
        return ml_seterr(ML_ERR_GRAD, "backward: tensor of shape %s does not require grad and has no grad_fn",
                         ml_shape_str(root->ndim, root->shape));
    ml_tensor *g0 = NULL;
    ml_err e = ml_check_history("backward", root);
    if (e) return e;
    if (grad) {
        if ((e = grad_shape_check("backward", grad, root->ndim, root->shape))) return e;
        if ((e = ml_check_same_device("backward", 2, (ml_tensor *[]){root, grad}))) return e;
        ml_tensor_retain(grad);
        g0 = grad;
    } else {
        if (ml_tensor_numel(root) != 1)
            return ml_seterr(ML_ERR_GRAD,
                             "backward: grad can be implicitly created only for a one-element tensor, this one has "
                             "shape %s; pass a gradient",
                             ml_shape_str(root->ndim, root->shape));
        if ((e = ml_ones(&g0, (ml_dtype)root->dtype, root->ndim, root->shape))) return e;
        if (ml_tensor_is_cuda(root)) { /* the seed on the root's device */
            ml_tensor *gd;
            bool pg = ml_set_grad_enabled(false);
            e = ml_to_device(&gd, g0, ml_tensor_device(root));
            ml_set_grad_enabled(pg);
            ml_tensor_release(g0);
            if (e) return e;
            g0 = gd;
        }
    }
    bool prev = ml_set_grad_enabled(false);

    if (!root->grad_fn) { /* a leaf */
        e = ml_accumulate(&root->grad, g0);
        ml_tensor_release(g0);
        ml_set_grad_enabled(prev);
        return e;
    }

    /* collect reachable nodes */
    size_t cap = 256, nn = 0, sp = 0;
    ml_node **nodes = malloc(cap * sizeof *nodes), **stack = malloc(cap * sizeof *stack);
    size_t scap = cap;
    static _Atomic uint32_t mark_gen;
    uint32_t mark = atomic_fetch_add(&mark_gen, 1) + 1;
    if (!nodes || !stack) { e = ml_seterr(ML_ERR_OOM, "backward: out of memory"); goto done; }
    if (root->grad_fn->freed) {
        e = ml_seterr(ML_ERR_GRAD, "backward: the graph behind this tensor (op %s) was already freed by an earlier "
                                   "backward; pass retain_graph=true the first time",
                      root->grad_fn->name);
        goto done;
    }
    stack[sp++] = root->grad_fn;
    root->grad_fn->visit_mark = mark;
    while (sp) {
        ml_node *n = stack[--sp];
        if (nn == cap) {
            cap *= 2;
            ml_node **t = realloc(nodes, cap * sizeof *t);
            if (!t) { e = ml_seterr(ML_ERR_OOM, "backward: out of memory"); goto done; }
            nodes = t;
        }
        nodes[nn++] = n;
        __atomic_add_fetch(&n->refcount, 1, __ATOMIC_RELAXED); /* held until the end: freeing the graph
                                                                   releases inputs that may own nodes */
        for (int i = 0; i < n->nin; i++) {
            ml_node *f = n->in_fn[i];
            if (!f || f->visit_mark == mark) continue;
            if (f->freed) {
                e = ml_seterr(ML_ERR_GRAD, "backward: part of the graph (op %s) was already freed by an earlier backward",
                              f->name);
                goto done;
            }
            f->visit_mark = mark;
            if (sp == scap) {
                scap *= 2;
                ml_node **s2 = realloc(stack, scap * sizeof *s2);
                if (!s2) { e = ml_seterr(ML_ERR_OOM, "backward: out of memory"); goto done; }
                stack = s2;
            }
            stack[sp++] = f;
        }
    }
    qsort(nodes, nn, sizeof *nodes, cmp_seq_desc);

    /* seed */
    {
        ml_node *rn = root->grad_fn;
        e = accumulate_slot(&rn->gout[root->grad_fn_out], g0);
        if (e) goto done;
        if (root->retain_grad && (e = ml_accumulate(&root->grad, g0))) goto done;
    }
    for (size_t k = 0; k < nn; k++) {
        ml_node *n = nodes[k];
        bool any = false;
        for (int o = 0; o < n->nout; o++) any |= n->gout[o] != NULL;
        if (!any) continue;
        if (!n->backward) {
            e = ml_seterr(ML_ERR_GRAD, "backward: op %s has no backward rule", n->name);
            goto done;
        }
        ml_tensor *gin[ML_NODE_MAX_IN] = {0};
        e = n->backward(n, n->gout, gin);
        if (e) {
            for (int i = 0; i < n->nin; i++) ml_tensor_release(gin[i]);
            /* prefix the op name if the rule did not */
            if (!strstr(ml_errmsg(), n->name)) {
                char buf[900];
                snprintf(buf, sizeof buf, "%s", ml_errmsg());
                ml_seterr(e, "%s backward: %s", n->name, buf);
            }
            goto done;
        }
        for (int o = 0; o < ML_NODE_MAX_OUT; o++) { ml_tensor_release(n->gout[o]); n->gout[o] = NULL; }
        for (int i = 0; i < n->nin && !e; i++) {
            ml_tensor *t = n->in[i];
            ml_tensor *g = gin[i];
            if (!g) continue;
            if (t && n->needs[i]) {
                e = grad_shape_check(n->name, g, t->ndim, t->shape);
                if (!e) {
                    ml_node *f = n->in_fn[i];
                    if (f) {
                        e = accumulate_slot(&f->gout[n->in_out[i]], g);
                        /* retain_grad: only while t still holds the values this edge saw */
                        if (!e && t->retain_grad && t->grad_fn == f) e = ml_accumulate(&t->grad, g);
                    } else {
                        e = ml_accumulate(&t->grad, g);
                    }
                }
            }
            /* the same gradient for a later input (a + b): drop this reference now, so that the last
             * input can take the tensor over instead of copying it */
            for (int j = i + 1; j < n->nin; j++)
                if (gin[j] == g) {
                    ml_tensor_release(gin[i]);
                    gin[i] = NULL;
                    break;
                }
        }
        for (int i = 0; i < n->nin; i++) ml_tensor_release(gin[i]);
        if (e) goto done;
    }

done:
    for (size_t k = 0; k < nn; k++) {
        ml_node *n = nodes[k];
        for (int o = 0; o < ML_NODE_MAX_OUT; o++) { ml_tensor_release(n->gout[o]); n->gout[o] = NULL; }
        if (!retain_graph && !e) node_free_graph(n);
    }
    for (size_t k = 0; k < nn; k++) ml_node_release(nodes[k]);
    free(nodes);
    free(stack);
    ml_tensor_release(g0);
    ml_set_grad_enabled(prev);
    return e;
}
