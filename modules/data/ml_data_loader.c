/* medlua data pipeline: datasets (with the CacheDataset cache) and the threaded loader.
 *
 * Loader protocol (one mutex, two condition variables):
 *  - the epoch is a list of dataset positions order[0 .. n_used); position p belongs to batch p / bs;
 *  - a worker claims the next position p when its batch is less than `nslots` batches ahead of the
 *    consumer (bounded prefetch), makes the samples without the lock, stores them in the batch's slot;
 *    the worker that completes a batch collates it (without the lock) and marks it ready;
 *  - the consumer (ml_loader_next) waits for its slot to be ready, takes it over and frees the slot;
 *  - ml_loader_stop bumps a generation counter (results of the old generation are dropped) and waits
 *    until no worker is busy. */
#include "data/ml_data.h"
#include "data/ml_data_priv.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* ================================================================== dataset */
struct ml_dataset {
    int refcount;
    int64_t n;
    ml_dsample **items;
    ml_pipeline *pipe;
    int native_end, cache_upto;
    int64_t cache_n, max_bytes;
    pthread_mutex_t mu;
    ml_dlist **cache;
    int8_t *cstate; /* 0 not yet, 1 cached, 2 over the budget */
    int64_t cached_items, cached_bytes, skipped, hits, misses;
};

ml_err ml_dataset_new(ml_dataset **out, ml_dsample **items, int64_t n, ml_pipeline *p, const ml_dataset_opts *o) {
    *out = NULL;
    ml_dataset *d = calloc(1, sizeof *d);
    if (!d) goto oom;
    d->refcount = 1;
    d->n = n;
    d->items = items;
    d->pipe = p;
    ml_pipeline_retain(p);
    d->native_end = o && o->native_end >= 0 && o->native_end <= p->n ? o->native_end : p->n;
    d->cache_upto = o ? o->cache_upto : 0;
    if (d->cache_upto > d->native_end) d->cache_upto = d->native_end;
    d->cache_n = o && d->cache_upto > 0 ? (o->cache_n < n ? o->cache_n : n) : 0;
    if (d->cache_n < 0) d->cache_n = 0;
    d->max_bytes = o ? o->max_bytes : 0;
    pthread_mutex_init(&d->mu, NULL);
    if (d->cache_n > 0) {
        d->cache = calloc((size_t)d->cache_n, sizeof *d->cache);
        d->cstate = calloc((size_t)d->cache_n, 1);
        if (!d->cache || !d->cstate) {
            ml_dataset_release(d);
            return ml_seterr(ML_ERR_OOM, "Dataset: out of memory (cache of %lld items)", (long long)n);
        }
    }
    *out = d;
    return ML_OK;
oom:
    for (int64_t i = 0; i < n; i++) ml_dsample_free(items[i]);
    free(items);
    return ml_seterr(ML_ERR_OOM, "Dataset: out of memory");
}

void ml_dataset_retain(ml_dataset *d) { __atomic_add_fetch(&d->refcount, 1, __ATOMIC_RELAXED); }

void ml_dataset_release(ml_dataset *d) {
    if (!d || __atomic_sub_fetch(&d->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
    for (int64_t i = 0; i < d->n; i++) ml_dsample_free(d->items[i]);
    free(d->items);
    if (d->cache)
        for (int64_t i = 0; i < d->cache_n; i++) ml_dlist_free(d->cache[i]);
    free(d->cache);
    free(d->cstate);
    ml_pipeline_release(d->pipe);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

int64_t ml_dataset_len(const ml_dataset *d) { return d->n; }
const ml_pipeline *ml_dataset_pipeline(const ml_dataset *d) { return d->pipe; }

static ml_err item_error(ml_err e, int64_t i) {
    char prev[1024];
    snprintf(prev, sizeof prev, "%s", ml_errmsg());
    return ml_seterr(e, "data[%lld]: %s", (long long)(i + 1), prev);
}

/* the item's samples after transforms [0, cache_upto) (from the cache when there), start = where to go on */
static ml_err prefix(ml_dataset *d, int64_t i, uint64_t seed, uint64_t epoch, ml_dlist **out, int *start) {
    ml_dlist *l = NULL;
    *start = 0;
    bool cacheable = i < d->cache_n;
    if (cacheable) {
        pthread_mutex_lock(&d->mu);
        if (d->cstate[i] == 1) {
            l = ml_dlist_copy(d->cache[i]);
            d->hits++;
        } else {
            d->misses++;
        }
        int st = d->cstate[i];
        pthread_mutex_unlock(&d->mu);
        if (st == 1) {
            if (!l) return ML_ERR_OOM;
            *out = l;
            *start = d->cache_upto;
            return ML_OK;
        }
    }
    l = ml_dlist_new();
    ml_dsample *s = l ? ml_dsample_copy(d->items[i]) : NULL;
    if (!s || ml_dlist_push(l, s)) {
        ml_dlist_free(l);
        return ML_ERR_OOM;
    }
    if (cacheable) {
        ml_err e = ml_pipeline_run(d->pipe, 0, d->cache_upto, &l, seed, epoch, (uint64_t)i);
        if (e) {
            ml_dlist_free(l);
            return e;
        }
        *start = d->cache_upto;
        int64_t bytes = ml_dlist_bytes(l);
        pthread_mutex_lock(&d->mu);
        if (d->cstate[i] == 0) {
            if (d->max_bytes <= 0 || d->cached_bytes + bytes <= d->max_bytes) {
                ml_dlist *c = ml_dlist_copy(l);
                if (c) {
                    d->cache[i] = c;
                    d->cstate[i] = 1;
                    d->cached_bytes += bytes;
                    d->cached_items++;
                }
            } else {
                d->cstate[i] = 2;
                d->skipped++;
            }
        }
        pthread_mutex_unlock(&d->mu);
    }
    *out = l;
    return ML_OK;
}

ml_err ml_dataset_get(ml_dataset *d, int64_t i, uint64_t seed, uint64_t epoch, ml_dlist **out) {
    *out = NULL;
    if (i < 0 || i >= d->n)
        return ml_seterr(ML_ERR_ARG, "Dataset: index %lld out of range [1, %lld]", (long long)(i + 1), (long long)d->n);
    ml_dlist *l = NULL;
    int start;
    ml_err e = prefix(d, i, seed, epoch, &l, &start);
    if (!e) e = ml_pipeline_run(d->pipe, start, d->native_end, &l, seed, epoch, (uint64_t)i);
    if (e) {
        ml_dlist_free(l);
        return item_error(e, i);
    }
    *out = l;
    return ML_OK;
}

static void worker_thread_setup(void) {
#ifdef _OPENMP
    /* each worker runs its kernels single-threaded: every OpenMP region it meets is inactive */
    omp_set_max_active_levels(0);
    omp_set_num_threads(1);
#endif
    ml_set_grad_enabled(false);
}

typedef struct {
    ml_dataset *d;
    int64_t next;
    ml_err err;
    char msg[1024];
    pthread_mutex_t mu;
} fill_job;

static void *fill_main(void *arg) {
    fill_job *j = arg;
    worker_thread_setup();
    for (;;) {
        pthread_mutex_lock(&j->mu);
        int64_t i = j->err ? j->d->cache_n : j->next++;
        pthread_mutex_unlock(&j->mu);
        if (i >= j->d->cache_n) break;
        ml_dlist *l = NULL;
        int start;
        ml_err e = prefix(j->d, i, 0, 0, &l, &start);
        ml_dlist_free(l);
        if (e) {
            e = item_error(e, i);
            pthread_mutex_lock(&j->mu);
            if (!j->err) {
                j->err = e;
                snprintf(j->msg, sizeof j->msg, "%s", ml_errmsg());
            }
            pthread_mutex_unlock(&j->mu);
        }
    }
    return NULL;
}

ml_err ml_dataset_fill_cache(ml_dataset *d, int nthreads) {
    if (d->cache_n == 0) return ML_OK;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 64) nthreads = 64;
    fill_job j = {.d = d};
    pthread_mutex_init(&j.mu, NULL);
    pthread_t th[64];
    int started = 0;
    for (int t = 0; t < nthreads; t++) {
        if (pthread_create(&th[t], NULL, fill_main, &j)) break;
        started++;
    }
    if (!started) fill_main(&j);
    for (int t = 0; t < started; t++) pthread_join(th[t], NULL);
    pthread_mutex_destroy(&j.mu);
    if (j.err) return ml_seterr(j.err, "CacheDataset: %s", j.msg);
    return ML_OK;
}

void ml_dataset_cache_info(ml_dataset *d, ml_cache_info *ci) {
    pthread_mutex_lock(&d->mu);
    ci->items = d->cached_items;
    ci->bytes = d->cached_bytes;
    ci->skipped = d->skipped;
    ci->hits = d->hits;
    ci->misses = d->misses;
    ci->cache_n = d->cache_n;
    ci->max_bytes = d->max_bytes;
    pthread_mutex_unlock(&d->mu);
}

/* =================================================================== loader */
typedef struct slot {
    int64_t batch; /* -1: free */
    int64_t count, done;
    ml_dlist **res;
    ml_err *ecode;
    char **emsg;
    bool ready;
    ml_batch *collated;
    ml_err cerr;
    char *cmsg;
} slot;

struct ml_loader {
    ml_dataset *ds;
    ml_loader_opts o;
    pthread_t *th;
    int nth;
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_main;
    bool quit, active;
    bool pending_end; /* the epoch's last batch was handed out and the next epoch already started */
    uint64_t epoch, gen;
    int64_t *order, n_used, nbatches, next_pos, consumed;
    slot *slots;
    int nslots, busy;
    /* stats */
    double wait_s, step_s, produce_s, collate_s, last_return;
    bool have_last;
    int64_t batches, samples;
};

void ml_loader_opts_init(ml_loader_opts *o) {
    memset(o, 0, sizeof *o);
    o->batch_size = 1;
    o->prefetch = 2;
    o->collate = ML_COLLATE_STACK;
}

static void slot_clear(slot *s) {
    for (int64_t j = 0; j < s->count; j++) {
        if (s->res) ml_dlist_free(s->res[j]);
        if (s->emsg) free(s->emsg[j]);
    }
    free(s->res);
    free(s->ecode);
    free(s->emsg);
    ml_batch_free(s->collated);
    free(s->cmsg);
    memset(s, 0, sizeof *s);
    s->batch = -1;
}

static int64_t batch_count(const ml_loader *l, int64_t b) {
    int64_t bs = l->o.batch_size, a = b * bs, e = a + bs < l->n_used ? a + bs : l->n_used;
    return e - a;
}

static bool slot_prepare(ml_loader *l, slot *s, int64_t b) {
    if (s->batch == b) return true;
    slot_clear(s);
    int64_t c = batch_count(l, b);
    s->res = calloc((size_t)c, sizeof *s->res);
    s->ecode = calloc((size_t)c, sizeof *s->ecode);
    s->emsg = calloc((size_t)c, sizeof *s->emsg);
    if (!s->res || !s->ecode || !s->emsg) {
        free(s->res);
        free(s->ecode);
        free(s->emsg);
        s->res = NULL;
        s->ecode = NULL;
        s->emsg = NULL;
        return false;
    }
    s->count = c;
    s->batch = b;
    return true;
}

/* flatten the samples of a batch (for collation) */
static ml_err flatten(const slot *s, ml_dsample ***out, int64_t *n) {
    int64_t tot = 0;
    for (int64_t j = 0; j < s->count; j++) tot += s->res[j] ? s->res[j]->n : 0;
    ml_dsample **v = malloc((size_t)(tot ? tot : 1) * sizeof *v);
    if (!v) return ml_seterr(ML_ERR_OOM, "DataLoader: out of memory");
    int64_t k = 0;
    for (int64_t j = 0; j < s->count; j++)
        for (int q = 0; s->res[j] && q < s->res[j]->n; q++) v[k++] = s->res[j]->s[q];
    *out = v;
    *n = tot;
    return ML_OK;
}

static ml_err collate_slot(ml_loader *l, const slot *s, ml_batch **out) {
    ml_dsample **v = NULL;
    int64_t n = 0;
    ml_err e = flatten(s, &v, &n);
    if (e) return e;
    e = n ? ml_collate(out, v, n, l->o.collate) : ml_seterr(ML_ERR_ARG, "DataLoader: the batch has no samples");
    free(v);
    return e;
}

static void *worker_main(void *arg) {
    ml_loader *l = arg;
    worker_thread_setup();
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->quit && !(l->active && l->next_pos < l->n_used &&
                             l->next_pos / l->o.batch_size < l->consumed + l->nslots))
            pthread_cond_wait(&l->cv_work, &l->mu);
        if (l->quit) break;
        int64_t p = l->next_pos++, b = p / l->o.batch_size, j = p % l->o.batch_size;
        slot *s = &l->slots[b % l->nslots];
        uint64_t gen = l->gen, epoch = l->epoch;
        int64_t idx = l->order[p];
        bool ok = slot_prepare(l, s, b);
        l->busy++;
        pthread_mutex_unlock(&l->mu);

        double t0 = ml_data_now();
        ml_dlist *res = NULL;
        ml_err e = ok ? ml_dataset_get(l->ds, idx, l->o.xform_seed, epoch, &res)
                      : ml_seterr(ML_ERR_OOM, "DataLoader: out of memory (batch slot)");
        char *msg = e ? strdup(ml_errmsg()) : NULL;
        double t1 = ml_data_now();

        pthread_mutex_lock(&l->mu);
        l->busy--;
        if (gen != l->gen || !ok) {
            ml_dlist_free(res);
            free(msg);
            if (!ok && gen == l->gen) { /* cannot store: fail loudly at this batch */
                l->active = false;
            }
            pthread_cond_broadcast(&l->cv_main);
            continue;
        }
        s->res[j] = res;
        s->ecode[j] = e;
        s->emsg[j] = msg;
        s->done++;
        l->produce_s += t1 - t0;
        if (s->done == s->count) {
            bool anyerr = false;
            for (int64_t q = 0; q < s->count; q++) anyerr = anyerr || s->ecode[q];
            if (l->o.collate >= 0 && !anyerr) {
                l->busy++;
                pthread_mutex_unlock(&l->mu);
                double c0 = ml_data_now();
                ml_batch *bt = NULL;
                ml_err ce = collate_slot(l, s, &bt);
                char *cm = ce ? strdup(ml_errmsg()) : NULL;
                double c1 = ml_data_now();
                pthread_mutex_lock(&l->mu);
                l->busy--;
                if (gen != l->gen) {
                    ml_batch_free(bt);
                    free(cm);
                    pthread_cond_broadcast(&l->cv_main);
                    continue;
                }
                l->collate_s += c1 - c0;
                s->collated = bt;
                s->cerr = ce;
                s->cmsg = cm;
                /* the stacked copies are all the consumer needs */
                for (int64_t q = 0; q < s->count; q++) {
                    ml_dlist_free(s->res[q]);
                    s->res[q] = NULL;
                }
            }
            s->ready = true;
        }
        pthread_cond_broadcast(&l->cv_main);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

ml_err ml_loader_new(ml_loader **out, ml_dataset *d, const ml_loader_opts *o) {
    *out = NULL;
    if (o->batch_size < 1) return ml_seterr(ML_ERR_ARG, "DataLoader: batch_size must be >= 1, got %lld", (long long)o->batch_size);
    if (o->num_workers < 0 || o->num_workers > 256)
        return ml_seterr(ML_ERR_ARG, "DataLoader: num_workers must be in [0, 256], got %d", o->num_workers);
    if (o->prefetch < 1) return ml_seterr(ML_ERR_ARG, "DataLoader: prefetch must be >= 1, got %d", o->prefetch);
    ml_loader *l = calloc(1, sizeof *l);
    if (!l) return ml_seterr(ML_ERR_OOM, "DataLoader: out of memory");
    l->ds = d;
    ml_dataset_retain(d);
    l->o = *o;
    l->nslots = o->prefetch;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv_work, NULL);
    pthread_cond_init(&l->cv_main, NULL);
    int64_t n = ml_dataset_len(d);
    l->nbatches = o->drop_last ? n / o->batch_size : (n + o->batch_size - 1) / o->batch_size;
    l->slots = calloc((size_t)l->nslots, sizeof *l->slots);
    l->order = malloc((size_t)(n ? n : 1) * sizeof *l->order);
    if (!l->slots || !l->order) {
        ml_loader_free(l);
        return ml_seterr(ML_ERR_OOM, "DataLoader: out of memory");
    }
    for (int i = 0; i < l->nslots; i++) l->slots[i].batch = -1;
    if (o->num_workers > 0) {
        l->th = calloc((size_t)o->num_workers, sizeof *l->th);
        if (!l->th) {
            ml_loader_free(l);
            return ml_seterr(ML_ERR_OOM, "DataLoader: out of memory");
        }
        for (int t = 0; t < o->num_workers; t++) {
            if (pthread_create(&l->th[t], NULL, worker_main, l)) {
                ml_loader_free(l);
                return ml_seterr(ML_ERR_INTERNAL, "DataLoader: cannot start worker thread %d", t);
            }
            l->nth++;
        }
    }
    *out = l;
    return ML_OK;
}

static void stop_locked(ml_loader *l) {
    l->gen++;
    l->active = false;
    pthread_cond_broadcast(&l->cv_work);
    while (l->busy > 0) pthread_cond_wait(&l->cv_main, &l->mu);
    for (int i = 0; i < l->nslots; i++) slot_clear(&l->slots[i]);
}

void ml_loader_stop(ml_loader *l) {
    pthread_mutex_lock(&l->mu);
    stop_locked(l);
    pthread_mutex_unlock(&l->mu);
}

void ml_loader_free(ml_loader *l) {
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    stop_locked(l);
    l->quit = true;
    pthread_cond_broadcast(&l->cv_work);
    pthread_mutex_unlock(&l->mu);
    for (int t = 0; t < l->nth; t++) pthread_join(l->th[t], NULL);
    free(l->th);
    if (l->slots)
        for (int i = 0; i < l->nslots; i++) slot_clear(&l->slots[i]);
    free(l->slots);
    free(l->order);
    pthread_cond_destroy(&l->cv_work);
    pthread_cond_destroy(&l->cv_main);
    pthread_mutex_destroy(&l->mu);
    ml_dataset_release(l->ds);
    free(l);
}

int64_t ml_loader_nbatches(const ml_loader *l) { return l->nbatches; }

/* (re)start epoch `epoch` (lock held) */
static void start_locked(ml_loader *l, uint64_t epoch) {
    stop_locked(l);
    int64_t n = ml_dataset_len(l->ds);
    for (int64_t i = 0; i < n; i++) l->order[i] = i;
    if (l->o.shuffle && n > 1) {
        ml_drng r;
        ml_drng_init(&r, l->o.seed, epoch, UINT64_MAX, UINT64_MAX, 0x5348554646ULL);
        for (int64_t i = n - 1; i > 0; i--) {
            int64_t j = ml_drng_randint(&r, i + 1), t = l->order[i];
            l->order[i] = l->order[j];
            l->order[j] = t;
        }
    }
    l->n_used = l->o.drop_last ? l->nbatches * l->o.batch_size : n;
    l->epoch = epoch;
    l->next_pos = 0;
    l->consumed = 0;
    l->active = true;
    l->pending_end = false;
    pthread_cond_broadcast(&l->cv_work);
}

ml_err ml_loader_start(ml_loader *l, uint64_t epoch) {
    pthread_mutex_lock(&l->mu);
    if (l->pending_end && l->active && l->epoch == epoch && l->consumed == 0) {
        /* already started in the background when the previous epoch ended: keep what is made */
        l->pending_end = false;
    } else {
        start_locked(l, epoch);
    }
    l->have_last = false;
    pthread_mutex_unlock(&l->mu);
    return ML_OK;
}

/* the error of the first failed sample of slot s (or its collation), as a new message */
static ml_err slot_error(ml_loader *l, slot *s) {
    for (int64_t j = 0; j < s->count; j++)
        if (s->ecode[j])
            return ml_seterr(s->ecode[j], "DataLoader: epoch %llu, batch %lld: %s", (unsigned long long)l->epoch,
                             (long long)(s->batch + 1), s->emsg[j] ? s->emsg[j] : "error");
    if (s->cerr)
        return ml_seterr(s->cerr, "DataLoader: epoch %llu, batch %lld: %s", (unsigned long long)l->epoch,
                         (long long)(s->batch + 1), s->cmsg ? s->cmsg : "collate error");
    return ML_OK;
}

ml_err ml_loader_next(ml_loader *l, ml_batch **batch, ml_dlist **samples, int64_t **index, int64_t *nindex) {
    if (batch) *batch = NULL;
    if (samples) *samples = NULL;
    if (index) *index = NULL;
    if (nindex) *nindex = 0;
    double t_in = ml_data_now();
    pthread_mutex_lock(&l->mu);
    if (l->have_last) l->step_s += t_in - l->last_return;
    if (l->pending_end || !l->active || l->consumed >= l->nbatches) {
        l->have_last = false;
        pthread_mutex_unlock(&l->mu);
        return ML_OK;
    }
    int64_t b = l->consumed;
    slot local;
    memset(&local, 0, sizeof local);
    local.batch = -1;
    slot *s;
    if (l->nth == 0) {
        /* no workers: make the batch here */
        s = &local;
        if (!slot_prepare(l, s, b)) {
            pthread_mutex_unlock(&l->mu);
            return ml_seterr(ML_ERR_OOM, "DataLoader: out of memory");
        }
        uint64_t epoch = l->epoch;
        pthread_mutex_unlock(&l->mu);
        double t0 = ml_data_now();
        for (int64_t j = 0; j < s->count; j++) {
            int64_t idx = l->order[b * l->o.batch_size + j];
            s->ecode[j] = ml_dataset_get(l->ds, idx, l->o.xform_seed, epoch, &s->res[j]);
            if (s->ecode[j]) {
                s->emsg[j] = strdup(ml_errmsg());
                break;
            }
            s->done++;
        }
        double t1 = ml_data_now();
        pthread_mutex_lock(&l->mu);
        l->produce_s += t1 - t0;
        if (!slot_error(l, s) && l->o.collate >= 0) {
            s->cerr = collate_slot(l, s, &s->collated);
            if (s->cerr) s->cmsg = strdup(ml_errmsg());
            l->collate_s += ml_data_now() - t1;
        }
        s->ready = true;
    } else {
        slot *q = &l->slots[b % l->nslots];
        double t0 = ml_data_now();
        while (l->active && !(q->batch == b && q->ready)) pthread_cond_wait(&l->cv_main, &l->mu);
        l->wait_s += ml_data_now() - t0;
        if (!l->active) {
            pthread_mutex_unlock(&l->mu);
            return ml_seterr(ML_ERR_OOM, "DataLoader: epoch %llu stopped (out of memory in a worker)",
                             (unsigned long long)l->epoch);
        }
        local = *q; /* take the slot over */
        memset(q, 0, sizeof *q);
        q->batch = -1;
        s = &local;
    }
    l->consumed++;
    l->batches++;
    pthread_cond_broadcast(&l->cv_work);
    bool last = l->consumed >= l->nbatches;
    /* dataset indices (1-based in messages, 0-based here) */
    int64_t cnt = s->count, *ix = NULL;
    if (l->o.collate < 0) { /* one index per sample */
        int64_t tot = 0;
        for (int64_t j = 0; j < s->count; j++) tot += s->res[j] ? s->res[j]->n : 0;
        if (index && tot > 0 && (ix = malloc((size_t)tot * sizeof *ix))) {
            int64_t k = 0;
            for (int64_t j = 0; j < s->count; j++)
                for (int q = 0; s->res[j] && q < s->res[j]->n; q++) ix[k++] = l->order[b * l->o.batch_size + j];
        }
        cnt = tot;
    } else if (index && cnt > 0 && (ix = malloc((size_t)cnt * sizeof *ix))) {
        for (int64_t j = 0; j < cnt; j++) ix[j] = l->order[b * l->o.batch_size + j];
    }
    ml_err e = slot_error(l, s);
    if (!e) {
        if (s->collated) l->samples += s->collated->B;
        else
            for (int64_t j = 0; j < s->count; j++) l->samples += s->res[j] ? s->res[j]->n : 0;
    }
    if (last && l->nth > 0 && l->nbatches > 0) {
        /* the workers go on with the next epoch (same order and samples as ml_loader_start(epoch + 1)
         * would make), so its first batches are ready when it starts; the caller first sees the end */
        start_locked(l, l->epoch + 1);
        l->pending_end = true;
    }
    l->last_return = ml_data_now();
    l->have_last = true;
    if (l->nth == 0) l->wait_s += l->last_return - t_in;
    pthread_mutex_unlock(&l->mu);
    if (e) {
        free(ix);
        slot_clear(s);
        return e;
    }
    if (l->o.collate >= 0) {
        *batch = s->collated;
        s->collated = NULL;
    } else {
        ml_dlist *all = ml_dlist_new();
        for (int64_t j = 0; all && j < s->count; j++) {
            ml_dlist *r = s->res[j];
            for (int q = 0; r && q < r->n; q++) {
                if (ml_dlist_push(all, r->s[q])) {
                    r->s[q] = NULL;
                    for (int w = q + 1; w < r->n; w++) ml_dsample_free(r->s[w]);
                    r->n = 0;
                    ml_dlist_free(all);
                    all = NULL;
                    break;
                }
                r->s[q] = NULL;
            }
            if (r) r->n = 0;
        }
        if (!all) {
            free(ix);
            slot_clear(s);
            return ml_seterr(ML_ERR_OOM, "DataLoader: out of memory");
        }
        *samples = all;
    }
    slot_clear(s);
    if (index) *index = ix;
    else free(ix);
    if (nindex) *nindex = cnt;
    return ML_OK;
}

void ml_loader_get_stats(ml_loader *l, ml_loader_stats *st) {
    pthread_mutex_lock(&l->mu);
    st->batches = l->batches;
    st->samples = l->samples;
    st->epoch = (int64_t)l->epoch;
    st->wait_s = l->wait_s;
    st->step_s = l->step_s;
    st->produce_s = l->produce_s;
    st->collate_s = l->collate_s;
    st->num_workers = l->nth;
    st->prefetch = l->nslots;
    pthread_mutex_unlock(&l->mu);
}

void ml_loader_reset_stats(ml_loader *l) {
    pthread_mutex_lock(&l->mu);
    l->batches = l->samples = 0;
    l->wait_s = l->step_s = l->produce_s = l->collate_s = 0;
    l->have_last = false;
    pthread_mutex_unlock(&l->mu);
}
