/* Strided iteration over 1-4 operands of the same (broadcast) shape, for kernel authors.
 * Dims of size 1 are dropped and dims contiguous in every operand are merged, so a contiguous
 * op becomes one flat loop. The outer range is split over OpenMP threads when large.
 * Also: internal helpers shared by core files (not part of the public API). */
#ifndef ML_ITER_H
#define ML_ITER_H

#include "ml_tensor.h"

/* ---- internal helpers (implemented in ml_core.c) */
ml_tensor *ml_tensor_header(ml_storage *s, ml_dtype dt, int ndim, const int64_t *shape, const int64_t *stride,
                            int64_t offset);
void ml_contiguous_strides(int ndim, const int64_t *shape, int64_t *stride);
double ml_load_elem(const void *base, ml_dtype dt, int64_t i);
void ml_store_elem(void *base, ml_dtype dt, int64_t i, double v);
/* strides of t broadcast to (ndim, shape): 0 for broadcast dims */
void ml_broadcast_strides(const ml_tensor *t, int ndim, const int64_t *shape, int64_t *stride);

/* Loop over [0, n) on `nt` threads (a variable in scope). Single-threaded work runs inline: an
 * OpenMP region costs about a microsecond even when an if(0) clause skips the team. */
#define ML_PAR_FOR(T, i, n, ...)                                                                    \
    do {                                                                                            \
        if (nt > 1) {                                                                               \
            _Pragma("omp parallel for num_threads(nt) schedule(static)")                            \
            for (T i = 0; i < (n); i++) { __VA_ARGS__ }                                             \
        } else {                                                                                    \
            for (T i = 0; i < (n); i++) { __VA_ARGS__ }                                             \
        }                                                                                           \
    } while (0)

#define ML_ITER_MAX_OPS 4
#define ML_ITER_GRAIN 32768 /* elements per thread below which we stay single-threaded */

typedef struct {
    int ndim, nops;
    int64_t shape[ML_MAX_DIMS];
    int64_t s[ML_ITER_MAX_OPS][ML_MAX_DIMS];
    int64_t o[ML_ITER_MAX_OPS];
} ml_iter;

/* strides[k] = element strides of operand k over `shape` (0 where broadcast); offs[k] = offset */
static inline void ml_iter_init(ml_iter *it, int nops, int ndim, const int64_t *shape, const int64_t *const *strides,
                                const int64_t *offs) {
    it->nops = nops;
    int n = 0;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] == 1) continue;
        if (n > 0) {
            bool merge = true;
            for (int k = 0; k < nops; k++)
                if (it->s[k][n - 1] != strides[k][d] * shape[d]) { merge = false; break; }
            if (merge) {
                it->shape[n - 1] *= shape[d];
                for (int k = 0; k < nops; k++) it->s[k][n - 1] = strides[k][d];
                continue;
            }
        }
        it->shape[n] = shape[d];
        for (int k = 0; k < nops; k++) it->s[k][n] = strides[k][d];
        n++;
    }
    it->ndim = n;
    for (int k = 0; k < nops; k++) it->o[k] = offs[k];
}

static inline int ml_iter_threads(int64_t n) {
    if (n < 2 * ML_ITER_GRAIN) return 1;
    int nt = ml_num_threads();
    int64_t maxt = n / ML_ITER_GRAIN;
    return maxt < nt ? (int)maxt : nt;
}

/* Position at linear index lin: fill idx and per-operand offsets. */
static inline void ml_iter_seek(const ml_iter *it, int64_t lin, int64_t *idx, int64_t *off) {
    for (int k = 0; k < it->nops; k++) off[k] = it->o[k];
    for (int d = it->ndim - 1; d >= 0; d--) {
        idx[d] = lin % it->shape[d];
        lin /= it->shape[d];
        for (int k = 0; k < it->nops; k++) off[k] += idx[d] * it->s[k][d];
    }
}

/* Advance by cnt along the innermost dim (never past its end), then carry. */
static inline void ml_iter_advance(const ml_iter *it, int64_t *idx, int64_t cnt, int64_t *off) {
    int d = it->ndim - 1;
    if (d < 0) return;
    idx[d] += cnt;
    for (int k = 0; k < it->nops; k++) off[k] += cnt * it->s[k][d];
    while (d > 0 && idx[d] >= it->shape[d]) {
        for (int k = 0; k < it->nops; k++) off[k] -= it->shape[d] * it->s[k][d];
        idx[d] = 0;
        d--;
        idx[d]++;
        for (int k = 0; k < it->nops; k++) off[k] += it->s[k][d];
    }
}

/* Core loop. Inside BODY: j_ is the position in the inner run; off_[k] the run's start offsets;
 * st_[k] the inner strides. Use the typed wrappers below (bodies may contain commas). */
/* One chunk [lo, hi) of the linear range. */
#define ML_ITER_CHUNK_(it_, lo, hi, ...)                                                   \
    do {                                                                                   \
        int64_t lo_ = (lo), hi_ = (hi);                                                    \
        if (lo_ >= hi_) break;                                                             \
        int64_t idx_[ML_MAX_DIMS], off_[ML_ITER_MAX_OPS], st_[ML_ITER_MAX_OPS];            \
        ml_iter_seek(it_, lo_, idx_, off_);                                                \
        int last_ = it_->ndim - 1;                                                         \
        int64_t inner_ = last_ >= 0 ? it_->shape[last_] : 1;                               \
        for (int k_ = 0; k_ < it_->nops; k_++) st_[k_] = last_ >= 0 ? it_->s[k_][last_] : 0; \
        int64_t pos_ = lo_;                                                                \
        while (pos_ < hi_) {                                                               \
            int64_t cnt_ = inner_ - (last_ >= 0 ? idx_[last_] : 0);                        \
            if (cnt_ > hi_ - pos_) cnt_ = hi_ - pos_;                                      \
            __VA_ARGS__;                                                                   \
            pos_ += cnt_;                                                                  \
            ml_iter_advance(it_, idx_, cnt_, off_);                                        \
        }                                                                                  \
    } while (0)

/* Small ranges run inline (no OpenMP team: a tiny op from Lua must cost ~1 us). */
#define ML_ITER_LOOP_(it, n, ...)                                                          \
    do {                                                                                   \
        const ml_iter *it_ = &(it);                                                        \
        int64_t n_ = (n);                                                                  \
        int nt_ = ml_iter_threads(n_);                                                     \
        if (nt_ <= 1) {                                                                    \
            ML_ITER_CHUNK_(it_, 0, n_, __VA_ARGS__);                                       \
        } else {                                                                           \
            _Pragma("omp parallel for num_threads(nt_) schedule(static)")                  \
            for (int t_ = 0; t_ < nt_; t_++)                                               \
                ML_ITER_CHUNK_(it_, n_ * t_ / nt_, n_ * (t_ + 1) / nt_, __VA_ARGS__);      \
        }                                                                                  \
    } while (0)

/* One operand: pointer p of type T. */
#define ML_ITER1_FOR(it, n, T, BASE, ...)                                                  \
    ML_ITER_LOOP_(it, n, {                                                                 \
        T *p0_ = (T *)(BASE) + off_[0];                                                    \
        if (st_[0] == 1) { for (int64_t j_ = 0; j_ < cnt_; j_++) { T *p = p0_ + j_; __VA_ARGS__; } } \
        else { for (int64_t j_ = 0; j_ < cnt_; j_++) { T *p = p0_ + j_ * st_[0]; __VA_ARGS__; } } \
    })
/* One operand: element offset i (int64). */
#define ML_ITER1_FOR_IDX(it, n, i, ...)                                                    \
    ML_ITER_LOOP_(it, n, { for (int64_t j_ = 0; j_ < cnt_; j_++) { int64_t i = off_[0] + j_ * st_[0]; __VA_ARGS__; } })

/* Two operands: pa (TA*), pb (TB*). */
#define ML_ITER2_FOR(it, n, TA, A, TB, B, ...)                                             \
    ML_ITER_LOOP_(it, n, {                                                                 \
        TA *pa0_ = (TA *)(A) + off_[0];                                                    \
        TB *pb0_ = (TB *)(B) + off_[1];                                                    \
        if (st_[0] == 1 && st_[1] == 1) {                                                  \
            for (int64_t j_ = 0; j_ < cnt_; j_++) { TA *pa = pa0_ + j_; TB *pb = pb0_ + j_; __VA_ARGS__; } \
        } else {                                                                           \
            for (int64_t j_ = 0; j_ < cnt_; j_++) { TA *pa = pa0_ + j_ * st_[0]; TB *pb = pb0_ + j_ * st_[1]; __VA_ARGS__; } \
        }                                                                                  \
    })
#define ML_ITER2_FOR_IDX(it, n, ia, ib, ...)                                               \
    ML_ITER_LOOP_(it, n, { for (int64_t j_ = 0; j_ < cnt_; j_++) {                         \
        int64_t ia = off_[0] + j_ * st_[0], ib = off_[1] + j_ * st_[1]; __VA_ARGS__; } })

/* Three operands: pa, pb, pc. */
#define ML_ITER3_FOR(it, n, TA, A, TB, B, TC, C, ...)                                      \
    ML_ITER_LOOP_(it, n, {                                                                 \
        TA *pa0_ = (TA *)(A) + off_[0];                                                    \
        TB *pb0_ = (TB *)(B) + off_[1];                                                    \
        TC *pc0_ = (TC *)(C) + off_[2];                                                    \
        if (st_[0] == 1 && st_[1] == 1 && st_[2] == 1) {                                   \
            for (int64_t j_ = 0; j_ < cnt_; j_++) { TA *pa = pa0_ + j_; TB *pb = pb0_ + j_; TC *pc = pc0_ + j_; __VA_ARGS__; } \
        } else {                                                                           \
            for (int64_t j_ = 0; j_ < cnt_; j_++) {                                        \
                TA *pa = pa0_ + j_ * st_[0]; TB *pb = pb0_ + j_ * st_[1]; TC *pc = pc0_ + j_ * st_[2]; __VA_ARGS__; } \
        }                                                                                  \
    })
#define ML_ITER3_FOR_IDX(it, n, ia, ib, ic, ...)                                           \
    ML_ITER_LOOP_(it, n, { for (int64_t j_ = 0; j_ < cnt_; j_++) {                         \
        int64_t ia = off_[0] + j_ * st_[0], ib = off_[1] + j_ * st_[1], ic = off_[2] + j_ * st_[2]; __VA_ARGS__; } })

/* Convenience initializers */
typedef ml_iter ml_iter1;
typedef ml_iter ml_iter2;
static inline void ml_iter1_init(ml_iter *it, int ndim, const int64_t *shape, const int64_t *s, int64_t o) {
    const int64_t *ss[1] = {s};
    ml_iter_init(it, 1, ndim, shape, ss, &o);
}
static inline void ml_iter2_init(ml_iter *it, int ndim, const int64_t *shape, const int64_t *sa, int64_t oa,
                                 const int64_t *sb, int64_t ob) {
    const int64_t *ss[2] = {sa, sb};
    int64_t oo[2] = {oa, ob};
    ml_iter_init(it, 2, ndim, shape, ss, oo);
}
static inline void ml_iter3_init(ml_iter *it, int ndim, const int64_t *shape, const int64_t *sa, int64_t oa,
                                 const int64_t *sb, int64_t ob, const int64_t *sc, int64_t oc) {
    const int64_t *ss[3] = {sa, sb, sc};
    int64_t oo[3] = {oa, ob, oc};
    ml_iter_init(it, 3, ndim, shape, ss, oo);
}

#endif
