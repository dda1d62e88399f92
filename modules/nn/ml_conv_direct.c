/* Direct f32 kernels for convolutions with very few channels on one side (e.g. the 3-class head
 * of a segmentation U-Net: conv_transpose 32->3 stride 2 and conv 3->3 on the full-resolution
 * volume). oneDNN pads channels to its 16-wide block there, so it computes and moves 5x what the
 * problem needs and reorders the big tensors in and out; these loops work in the plain layout.
 *
 * Both kernels run over output rows (the innermost spatial dim, vectorized) with accumulators in
 * a small per-thread buffer, sum each output in a fixed order and split the work over rows (or
 * planes, whose partial sums are combined in order), so results do not depend on the thread count.
 *
 * mlc_tconv_f32 ("transposed" form, covers three ops):
 *   out[n, co, o] = bias[co] + sum_{ci, k} in[n, ci, i] * w[ci*wci + co*wco + k],  o = i*s - p + k
 *   conv_transpose forward:  in = x,  w = weight [Cin, Cout, K]
 *   conv backward-data:      in = gy, w = weight [Cout, Cin, K] (any stride)
 *   conv forward, stride 1:  in = x,  w = weight transposed + flipped, padding K-1-p
 * mlc_conv_wgrad_f32:
 *   gw[co, ci, k] = sum_{n, o} gy[n, co, o] * x[n, ci, o*s - p + k]   (stride 1 in the last dim)
 */
#include "ml_conv_direct.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int mlc_threads(int64_t work, int64_t units) {
    int nt = ml_num_threads();
    if (work < 4 * 32768 || units < 2) return 1;
    if (nt > units) nt = (int)units;
    return nt < 1 ? 1 : nt;
}

/* taps k of one outer dim that reach output o: lists k and input index i */
static int taps(int64_t o, int64_t I, int64_t K, int64_t s, int64_t p, int64_t *ks, int64_t *is) {
    int n = 0;
    for (int64_t k = 0; k < K; k++) {
        int64_t t = o + p - k;
        if (t < 0 || t % s) continue;
        int64_t i = t / s;
        if (i >= I) continue;
        ks[n] = k;
        is[n] = i;
        n++;
    }
    return n;
}

static inline int64_t floordiv(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b) && ((a < 0) != (b < 0))) q--;
    return q;
}

#define MLC_MAXK 16
#define MLC_L 16 /* outputs per register block (and lanes per weight-gradient accumulator) */

/* acc[c][l] += sum over rows q and taps t of x[q][off[t] + l] * w[q][kw[t] + c*wco], c < CG */
#define MLC_BLOCK(CG)                                                                                              \
    static void mlc_block##CG(float *restrict acc, int64_t accs, const float *const *xr, const float *const *wr,   \
                              int nq, const int64_t *off, const int64_t *kw, int nt, int64_t wb, int64_t wco) {     \
        float a[CG][MLC_L];                                                                                        \
        for (int c = 0; c < CG; c++)                                                                               \
            for (int l = 0; l < MLC_L; l++) a[c][l] = 0.0f;                                                        \
        for (int q = 0; q < nq; q++)                                                                               \
            for (int t = 0; t < nt; t++) {                                                                         \
                const float *xs = xr[q] + off[t];                                                                  \
                const float *wk = wr[q] + wb + kw[t];                                                              \
                float wv[CG];                                                                                      \
                for (int c = 0; c < CG; c++) wv[c] = wk[c * wco];                                                  \
                for (int c = 0; c < CG; c++) {                                                                     \
                    _Pragma("omp simd") for (int l = 0; l < MLC_L; l++) a[c][l] = fmaf(xs[l], wv[c], a[c][l]);    \
                }                                                                                                  \
            }                                                                                                      \
        for (int c = 0; c < CG; c++)                                                                               \
            for (int l = 0; l < MLC_L; l++) acc[c * accs + l] = a[c][l];                                           \
    }
MLC_BLOCK(1)
MLC_BLOCK(2)
MLC_BLOCK(3)
MLC_BLOCK(4)

ml_err mlc_tconv_f32(const mlc_geo *g, const float *in, const float *w, int64_t wci, int64_t wco, const float *bias,
                     float *out) {
    const int64_t N = g->N, Ci = g->Ci, Co = g->Co;
    const int64_t I0 = g->I[0], I1 = g->I[1], I2 = g->I[2], O0 = g->O[0], O1 = g->O[1], O2 = g->O[2];
    const int64_t K0 = g->K[0], K1 = g->K[1], K2 = g->K[2], s2 = g->s[2], p2 = g->p[2];
    if (K0 > MLC_MAXK || K1 > MLC_MAXK || K2 > MLC_MAXK || s2 > MLC_MAXK)
        return ml_seterr(ML_ERR_UNSUPPORTED, "direct conv: kernel or stride too large");
    /* inner dim: output ow = s2*j + pw (phase pw); tap kw feeds phase pw(kw) from input iw = j - sh(kw) */
    const int64_t J = (O2 + s2 - 1) / s2, Jr = (J + MLC_L - 1) / MLC_L * MLC_L;
    int64_t tkw[MLC_MAXK][MLC_MAXK], tsh[MLC_MAXK][MLC_MAXK];
    int ntap[MLC_MAXK] = {0};
    int64_t shmax = 0, shmin = 0;
    for (int64_t kw = 0; kw < K2; kw++) {
        int64_t base = kw - p2, pw = ((base % s2) + s2) % s2, sh = floordiv(base - pw, s2);
        tkw[pw][ntap[pw]] = kw;
        tsh[pw][ntap[pw]] = sh;
        ntap[pw]++;
        if (kw == 0 || sh > shmax) shmax = sh;
        if (kw == 0 || sh < shmin) shmin = sh;
    }
    /* padded input rows: xp[t] = x[t - padl], zero outside; tap reads xp[j - sh + padl] for j < Jr */
    const int64_t padl = shmax > 0 ? shmax : 0, RL = Jr + padl - (shmin < 0 ? shmin : 0) + 1;
    const int64_t maxrows = Ci * K0 * K1;
    /* blocks j0 whose reads x[j0 - shmax .. j0 + L - 1 - shmin] leave [0, I2): their input ranges */
    int64_t elo[2 * MLC_MAXK + 2], ehi[2 * MLC_MAXK + 2];
    int nedge = 0;
    for (int64_t j0 = 0; j0 < Jr; j0 += MLC_L) {
        int64_t lo = j0 - shmax, hi = j0 + MLC_L - shmin;
        if (lo >= 0 && hi <= I2) continue;
        if (nedge > 0 && lo <= ehi[nedge - 1]) { ehi[nedge - 1] = hi; continue; }
        if (nedge == 2 * MLC_MAXK + 2) { nedge = -1; break; }
        elo[nedge] = lo;
        ehi[nedge] = hi;
        nedge++;
    }
    if (nedge < 0) { /* many edge blocks (rows shorter than a few blocks): pad whole rows */
        nedge = 1;
        elo[0] = -shmax;
        ehi[0] = Jr - shmin;
    }
    const int64_t accn = Co * s2 * Jr;
    const int64_t per = maxrows * RL + accn;
    const int64_t rows = N * O0 * O1;
    int nt = mlc_threads(rows * O2 * Co * Ci, rows);
    float *bufs = malloc(sizeof(float) * (size_t)(per * nt + 16));
    const float **ptrs = malloc(sizeof(float *) * (size_t)(3 * maxrows * nt + 3));
    if (!bufs || !ptrs) {
        free(bufs);
        free(ptrs);
        return ml_seterr(ML_ERR_OOM, "direct conv: out of memory");
    }
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
#ifdef _OPENMP
        int tid = omp_get_thread_num();
#else
        int tid = 0;
#endif
        float *xbuf = bufs + per * tid, *acc = xbuf + maxrows * RL;
        const float **xr = ptrs + 3 * maxrows * tid, **wr = xr + maxrows, **xd = wr + maxrows;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            int64_t n = r / (O0 * O1), od = (r / O1) % O0, oh = r % O1;
            int64_t kd[MLC_MAXK], id[MLC_MAXK], kh[MLC_MAXK], ih[MLC_MAXK];
            int nd = taps(od, I0, K0, g->s[0], g->p[0], kd, id);
            int nh = taps(oh, I1, K1, g->s[1], g->p[1], kh, ih);
            int nq = 0;
            for (int64_t ci = 0; ci < Ci; ci++)
                for (int a = 0; a < nd; a++)
                    for (int b = 0; b < nh; b++) {
                        const float *src = in + (((n * Ci + ci) * I0 + id[a]) * I1 + ih[b]) * I2;
                        /* the edge blocks read a zero-padded copy of what they touch */
                        float *dst = xbuf + (int64_t)nq * RL + padl;
                        for (int u = 0; u < nedge; u++)
                            for (int64_t iw = elo[u]; iw < ehi[u]; iw++) dst[iw] = iw >= 0 && iw < I2 ? src[iw] : 0.0f;
                        xd[nq] = src;
                        xr[nq] = dst;
                        wr[nq] = w + ci * wci + (kd[a] * K1 + kh[b]) * K2;
                        nq++;
                    }
            for (int64_t pw = 0; pw < s2; pw++) {
                int64_t off[MLC_MAXK];
                for (int t = 0; t < ntap[pw]; t++) off[t] = -tsh[pw][t];
                for (int64_t j0 = 0; j0 < Jr; j0 += MLC_L) {
                    int64_t o2[MLC_MAXK];
                    for (int t = 0; t < ntap[pw]; t++) o2[t] = off[t] + j0;
                    /* interior blocks read the input rows in place */
                    const float *const *xq = j0 - shmax >= 0 && j0 + MLC_L - 1 - shmin < I2 ? xd : xr;
                    for (int64_t c0 = 0; c0 < Co; c0 += 4) {
                        float *ac = acc + (c0 * s2 + pw) * Jr + j0;
                        const int64_t as = s2 * Jr, wb = c0 * wco;
                        switch (Co - c0 < 4 ? Co - c0 : 4) {
                        case 4: mlc_block4(ac, as, xq, wr, nq, o2, tkw[pw], ntap[pw], wb, wco); break;
                        case 3: mlc_block3(ac, as, xq, wr, nq, o2, tkw[pw], ntap[pw], wb, wco); break;
                        case 2: mlc_block2(ac, as, xq, wr, nq, o2, tkw[pw], ntap[pw], wb, wco); break;
                        default: mlc_block1(ac, as, xq, wr, nq, o2, tkw[pw], ntap[pw], wb, wco); break;
                        }
                    }
                }
            }
            for (int64_t co = 0; co < Co; co++) {
                float *orow = out + (((n * Co + co) * O0 + od) * O1 + oh) * O2;
                const float bv = bias ? bias[co] : 0.0f;
                const float *ac = acc + co * s2 * Jr;
                if (s2 == 1) {
#pragma omp simd
                    for (int64_t ow = 0; ow < O2; ow++) orow[ow] = ac[ow] + bv;
                } else if (s2 == 2) {
                    const float *e0 = ac, *e1 = ac + Jr;
                    int64_t h = O2 / 2;
#pragma omp simd
                    for (int64_t j = 0; j < h; j++) {
                        orow[2 * j] = e0[j] + bv;
                        orow[2 * j + 1] = e1[j] + bv;
                    }
                    if (O2 & 1) orow[O2 - 1] = e0[h] + bv;
                } else {
                    for (int64_t ow = 0; ow < O2; ow++) orow[ow] = ac[(ow % s2) * Jr + ow / s2] + bv;
                }
            }
        }
    }
    free(bufs);
    free(ptrs);
    return ML_OK;
}

ml_err mlc_conv_wgrad_f32(const mlc_geo *g, const float *x, const float *gy, float *gw, float *gb) {
    /* here Ci/I: input x; Co/O: output gradient gy; gw [Co, Ci, K] */
    const int64_t N = g->N, Ci = g->Ci, Co = g->Co;
    const int64_t I0 = g->I[0], I1 = g->I[1], I2 = g->I[2], O0 = g->O[0], O1 = g->O[1], O2 = g->O[2];
    const int64_t K0 = g->K[0], K1 = g->K[1], K2 = g->K[2], p2 = g->p[2];
    if (g->s[2] != 1) return ml_seterr(ML_ERR_UNSUPPORTED, "direct conv weight gradient: stride in the last dim");
    if (K0 > MLC_MAXK || K1 > MLC_MAXK || K2 > MLC_MAXK)
        return ml_seterr(ML_ERR_UNSUPPORTED, "direct conv: kernel too large");
    const int64_t Ksz = K0 * K1 * K2, nw = Co * Ci * Ksz, nacc = nw + Co; /* weights, then bias */
    const int64_t O2r = (O2 + MLC_L - 1) / MLC_L * MLC_L; /* gy row padded to whole lanes */
    const int64_t XL = O2r + K2;                          /* x row with padding, enough for every tap */
    const int64_t planes = N * O0;
    /* per thread: acc [nw][L] floats, gy rows [Co][O2r], x rows [Ci][XL] */
    const int64_t per = nacc * MLC_L + Co * O2r + Ci * XL;
    int nt = mlc_threads(planes * O1 * O2 * Co * Ci, planes);
    float *bufs = malloc(sizeof(float) * (size_t)(per * nt + 16));
    double *part = malloc(sizeof(double) * (size_t)(nacc * planes + 1));
    if (!bufs || !part) {
        free(bufs);
        free(part);
        return ml_seterr(ML_ERR_OOM, "direct conv weight gradient: out of memory");
    }
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
#ifdef _OPENMP
        float *acc = bufs + per * omp_get_thread_num();
#else
        float *acc = bufs;
#endif
        float *gyr = acc + nacc * MLC_L, *xr = gyr + Co * O2r;
        memset(gyr, 0, sizeof(float) * (size_t)(Co * O2r + Ci * XL));
#pragma omp for schedule(static)
        for (int64_t pl = 0; pl < planes; pl++) {
            int64_t n = pl / O0, od = pl % O0;
            memset(acc, 0, sizeof(float) * (size_t)(nacc * MLC_L));
            for (int64_t oh = 0; oh < O1; oh++) {
                for (int64_t co = 0; co < Co; co++) {
                    float *gr = gyr + co * O2r, *ab = acc + (nw + co) * MLC_L, t[MLC_L];
                    memcpy(gr, gy + (((n * Co + co) * O0 + od) * O1 + oh) * O2, sizeof(float) * (size_t)O2);
                    for (int l = 0; l < MLC_L; l++) t[l] = ab[l];
                    for (int64_t j0 = 0; j0 < O2r; j0 += MLC_L) {
#pragma omp simd
                        for (int l = 0; l < MLC_L; l++) t[l] += gr[j0 + l];
                    }
                    for (int l = 0; l < MLC_L; l++) ab[l] = t[l];
                }
                for (int64_t kd = 0; kd < K0; kd++) {
                    int64_t i0 = od * g->s[0] - g->p[0] + kd;
                    if (i0 < 0 || i0 >= I0) continue;
                    for (int64_t kh = 0; kh < K1; kh++) {
                        int64_t i1 = oh * g->s[1] - g->p[1] + kh;
                        if (i1 < 0 || i1 >= I1) continue;
                        /* xr[ci][t] = x[.., t - p2] (zero outside), so tap kw reads xr[j + kw] */
                        for (int64_t ci = 0; ci < Ci; ci++) {
                            const float *src = x + (((n * Ci + ci) * I0 + i0) * I1 + i1) * I2;
                            float *dst = xr + ci * XL;
                            int64_t t0 = p2 > 0 ? p2 : 0, t1 = I2 + p2 < XL ? I2 + p2 : XL;
                            if (t1 < t0) t1 = t0;
                            memset(dst, 0, sizeof(float) * (size_t)t0);
                            if (t1 > t0) memcpy(dst + t0, src + (t0 - p2), sizeof(float) * (size_t)(t1 - t0));
                            memset(dst + t1, 0, sizeof(float) * (size_t)(XL - t1));
                        }
                        for (int64_t co = 0; co < Co; co++) {
                            const float *gr = gyr + co * O2r;
                            for (int64_t ci = 0; ci < Ci; ci++) {
                                const float *xs = xr + ci * XL;
                                float *ak = acc + ((co * Ci + ci) * Ksz + (kd * K1 + kh) * K2) * MLC_L;
                                for (int64_t kw = 0; kw < K2; kw++) {
                                    float *a = ak + kw * MLC_L, t[MLC_L];
                                    const float *xk = xs + kw;
                                    for (int l = 0; l < MLC_L; l++) t[l] = a[l];
                                    for (int64_t j0 = 0; j0 < O2r; j0 += MLC_L) {
#pragma omp simd
                                        for (int l = 0; l < MLC_L; l++) t[l] = fmaf(gr[j0 + l], xk[j0 + l], t[l]);
                                    }
                                    for (int l = 0; l < MLC_L; l++) a[l] = t[l];
                                }
                            }
                        }
                    }
                }
            }
            double *pp = part + pl * nacc;
            for (int64_t q = 0; q < nacc; q++) {
                double s = 0;
                for (int l = 0; l < MLC_L; l++) s += acc[q * MLC_L + l];
                pp[q] = s;
            }
        }
    }
    for (int64_t q = 0; q < (gb ? nacc : nw); q++) {
        double s = 0;
        for (int64_t pl = 0; pl < planes; pl++) s += part[pl * nacc + q];
        if (q < nw) gw[q] = (float)s;
        else gb[q - nw] = (float)s;
    }
    free(bufs);
    free(part);
    return ML_OK;
}
