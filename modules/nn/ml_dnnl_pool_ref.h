/* Direct pooling kernels, included twice by ml_dnnl_pool.c with PT = float / double and
 * PSFX = f32 / f64. Window geometry comes precomputed per dimension (pwin), so the inner loops
 * carry no bounds checks. Layout: contiguous [planes, I0, I1, I2] -> [planes, O0, O1, O2]. */
#ifndef PT
#error "define PT and PSFX before including ml_dnnl_pool_ref.h"
#endif

#define PCAT_(a, b) a##_##b
#define PCAT(a, b) PCAT_(a, b)

/* forward: y = pool(x); ind (plane-relative flat input index per output) for max when non-NULL */
static void PCAT(pool_fwd, PSFX)(const pgeo *g, const pwin *w, const PT *x, PT *y, int64_t *ind) {
    int64_t planes = g->N * g->C, Isz = prod3(g->I), Osz = prod3(g->O);
    int64_t tasks = planes * g->O[0];
    const int64_t I1 = g->I[1], I2 = g->I[2], d1 = w->d[1], d2 = w->d[2], d0 = w->d[0];
    bool is_max = g->alg == PA_MAX;
#pragma omp parallel for schedule(static) if (tasks > 1 && planes * Osz * prod3(g->K) > 65536)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t pl = t / g->O[0], o0 = t % g->O[0];
        const PT *xp = x + pl * Isz;
        PT *yp = y + pl * Osz + o0 * g->O[1] * g->O[2];
        int64_t *ip = ind ? ind + pl * Osz + o0 * g->O[1] * g->O[2] : NULL;
        int64_t s0 = w->st[0][o0], a0 = w->a[0][o0], b0 = w->b[0][o0];
        for (int64_t o1 = 0; o1 < g->O[1]; o1++) {
            int64_t s1 = w->st[1][o1], a1 = w->a[1][o1], b1 = w->b[1][o1];
            for (int64_t o2 = 0; o2 < g->O[2]; o2++) {
                int64_t s2 = w->st[2][o2], a2 = w->a[2][o2], b2 = w->b[2][o2];
                int64_t oi = o1 * g->O[2] + o2;
                if (is_max) {
                    double best = -INFINITY;
                    int64_t bi = (a0 < b0 && a1 < b1 && a2 < b2)
                                     ? ((s0 + a0 * d0) * I1 + (s1 + a1 * d1)) * I2 + s2 + a2 * d2
                                     : -1;
                    for (int64_t t0 = a0; t0 < b0; t0++) {
                        int64_t i0 = s0 + t0 * d0;
                        for (int64_t t1 = a1; t1 < b1; t1++) {
                            int64_t rowi = (i0 * I1 + s1 + t1 * d1) * I2 + s2;
                            const PT *row = xp + rowi;
                            for (int64_t t2 = a2; t2 < b2; t2++) {
                                PT v = row[t2 * d2];
                                if (v > best || isnan(v)) { best = v; bi = rowi + t2 * d2; }
                            }
                        }
                    }
                    yp[oi] = (PT)best;
                    if (ip) ip[oi] = bi;
                } else {
                    double acc = 0.0;
                    for (int64_t t0 = a0; t0 < b0; t0++) {
                        int64_t i0 = s0 + t0 * d0;
                        for (int64_t t1 = a1; t1 < b1; t1++) {
                            const PT *row = xp + (i0 * I1 + s1 + t1 * d1) * I2 + s2;
                            PT part = 0;
                            for (int64_t t2 = a2; t2 < b2; t2++) part += row[t2 * d2];
                            acc += part;
                        }
                    }
                    int64_t div = w->div[0][o0] * w->div[1][o1] * w->div[2][o2];
                    yp[oi] = (PT)(div > 0 ? acc / (double)div : 0.0);
                }
            }
        }
    }
}

/* backward: gx (fully written here) from gy; max uses ind */
static void PCAT(pool_bwd, PSFX)(const pgeo *g, const pwin *w, const PT *gy, PT *gx, const int64_t *ind) {
    int64_t planes = g->N * g->C, Isz = prod3(g->I), Osz = prod3(g->O);
    const int64_t I1 = g->I[1], I2 = g->I[2], d0 = w->d[0], d1 = w->d[1], d2 = w->d[2];
    bool is_max = g->alg == PA_MAX;
    int nt = ml_num_threads();
    /* tasks over (plane, o0) are race-free when output rows along dim 0 read disjoint input rows;
     * otherwise one task per plane */
    bool split0 = planes < 2 * nt && w->disjoint0;
    int64_t per = split0 ? g->O[0] : 1, tasks = planes * per;
    bool big = planes * Isz > 65536;
#pragma omp parallel for schedule(static) if (big && planes > 1)
    for (int64_t pl = 0; pl < planes; pl++) memset(gx + pl * Isz, 0, sizeof(PT) * (size_t)Isz);
#pragma omp parallel for schedule(static) if (big && tasks > 1)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t pl = t / per, oa = split0 ? t % per : 0, ob = split0 ? oa + 1 : g->O[0];
        PT *gp = gx + pl * Isz;
        const PT *gyp = gy + pl * Osz;
        if (is_max) {
            const int64_t *ip = ind + pl * Osz;
            int64_t lo = oa * g->O[1] * g->O[2], hi = ob * g->O[1] * g->O[2];
            for (int64_t o = lo; o < hi; o++)
                if (ip[o] >= 0) gp[ip[o]] += gyp[o];
            continue;
        }
        for (int64_t o0 = oa; o0 < ob; o0++) {
            int64_t s0 = w->st[0][o0], a0 = w->a[0][o0], b0 = w->b[0][o0];
            for (int64_t o1 = 0; o1 < g->O[1]; o1++) {
                int64_t s1 = w->st[1][o1], a1 = w->a[1][o1], b1 = w->b[1][o1];
                for (int64_t o2 = 0; o2 < g->O[2]; o2++) {
                    int64_t s2 = w->st[2][o2], a2 = w->a[2][o2], b2 = w->b[2][o2];
                    int64_t div = w->div[0][o0] * w->div[1][o1] * w->div[2][o2];
                    if (div <= 0) continue;
                    PT v = (PT)((double)gyp[(o0 * g->O[1] + o1) * g->O[2] + o2] / (double)div);
                    for (int64_t t0 = a0; t0 < b0; t0++) {
                        int64_t i0 = s0 + t0 * d0;
                        for (int64_t t1 = a1; t1 < b1; t1++) {
                            PT *row = gp + (i0 * I1 + s1 + t1 * d1) * I2 + s2;
                            for (int64_t t2 = a2; t2 < b2; t2++) row[t2 * d2] += v;
                        }
                    }
                }
            }
        }
    }
}

#undef PCAT
#undef PCAT_
