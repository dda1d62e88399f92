/* libFuzzer target for the DICOM series assembler (ml_dicom_assemble): the input is read as a set
 * of parsed slice headers, so sorting, 4-D grouping, the size / orientation / spacing checks, the
 * uneven-spacing and gantry-tilt detection and the resampling plan are fuzzed without DCMTK.
 *
 * Input: byte 0 chooses on_uneven / on_tilt (warn, resample, error); then records of 24 bytes:
 *   0      flags: bit0 has_ipp, bit1 has_iop, bit2 has_ps, bit3 has_instance, bit4 odd size,
 *                 bit5 raw double for ipp[2] (bytes 16..23: NaN, Inf, huge values), bit6 oblique
 *   1      rows-1 (low 2 bits) | cols-1 (bits 2..3); odd size: 0 or 65536+
 *   2..7   ipp as three int16 / 16 mm
 *   8      orientation index (6 axis-aligned choices) + perturbation
 *   9      pixel spacing: (b + 1) / 32 mm
 *   10     instance number (int8)   11  temporal index (low 2 bits)
 *   12     thickness / 8 mm         13  spacing between slices / 8 mm
 *   14..15 oblique angle (int16 / 4096 rad)
 *   16..23 raw double (bit5)
 * Every plan the assembler accepts is checked: the stack is a permutation of the slices, the affine
 * is finite, interpolation indices and weights are in range.
 *
 * Build and run from the repository root: `make fuzz` (every target, FUZZ_TIME=600 s each), or this
 * target alone (the assembler lives in ml_dicom.c next to the DCMTK calls, so it links the fuzz
 * build of the whole core, C++ shim included; clang-14 works):
 *   make build-fuzz/fuzz_dicom_series
 *   mkdir -p build-fuzz/corpus_dicom_series
 *   OMP_NUM_THREADS=1 build-fuzz/fuzz_dicom_series -max_total_time=600 -max_len=4096 \
 *     -artifact_prefix=fuzz/crashers_dicom_series/ build-fuzz/corpus_dicom_series fuzz/corpus_dicom_series
 * Crashes land in fuzz/crashers_dicom_series/; tests/c/test_dicom.c replays every file there and in
 * fuzz/corpus_dicom_series/ (fuzz_regression). */
#include "volume/ml_dicom.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define REC 24
#define MAX_SLICES 512

static void quiet(const char *msg, void *ud) {
    (void)msg;
    (void)ud;
}

static int16_t rd16(const uint8_t *p) { return (int16_t)(p[0] | (p[1] << 8)); }

/* 1 if the plan broke an invariant */
static int plan_broken(const ml_dcm_plan *p, int64_t n) {
    if (p->nx < 1 || p->ny < 1 || p->nz_in < 1 || p->nt < 1 || p->nz < 1) return 1;
    if (p->nz_in * p->nt != n) return 1;
    char *seen = calloc((size_t)n, 1);
    if (!seen) return 0;
    int bad = 0;
    for (int64_t q = 0; q < n && !bad; q++) {
        int64_t s = p->stack[q];
        if (s < 0 || s >= n || seen[s]) bad = 1;
        else seen[s] = 1;
    }
    free(seen);
    for (int i = 0; i < 16 && !bad; i++)
        if (!isfinite(p->affine[i])) bad = 1;
    if (p->affine[12] != 0 || p->affine[13] != 0 || p->affine[14] != 0 || p->affine[15] != 1) bad = 1;
    if (p->resample) {
        if (!p->interp || p->nz > 4 * p->nz_in + 1) bad = 1;
        for (int64_t k = 0; k < p->nz && !bad; k++) {
            const ml_dcm_interp *it = &p->interp[k];
            if (it->k0 < 0 || it->k1 >= p->nz_in || it->k0 > it->k1 || !(it->w >= 0 && it->w <= 1)) bad = 1;
            if (!isfinite(it->sx0) || !isfinite(it->sy0) || !isfinite(it->sx1) || !isfinite(it->sy1)) bad = 1;
        }
    } else if (p->nz != p->nz_in) {
        bad = 1;
    }
    return bad;
}

/* decode the input and run the assembler; returns 0 (or aborts on a broken invariant) */
static int ml_fuzz_dicom_series_one(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    static const double orients[6][6] = {{1, 0, 0, 0, 1, 0}, {0, 1, 0, 0, 0, -1}, {1, 0, 0, 0, 0, -1},
                                         {-1, 0, 0, 0, 1, 0}, {0, 0, 1, 1, 0, 0}, {1, 0, 0, 0, -1, 0}};
    int on_uneven = data[0] % 3, on_tilt = (data[0] / 3) % 3;
    int64_t n = (int64_t)((size - 1) / REC);
    if (n > MAX_SLICES) n = MAX_SLICES;
    ml_dcm_slice *s = calloc((size_t)(n ? n : 1), sizeof *s);
    if (!s) return 0;
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *r = data + 1 + i * REC;
        ml_dcm_slice *x = &s[i];
        uint8_t f = r[0];
        x->has_ipp = f & 1;
        x->has_iop = (f >> 1) & 1;
        x->has_ps = (f >> 2) & 1;
        x->has_instance = (f >> 3) & 1;
        if (f & 16) {
            x->rows = (r[1] & 1) ? 0 : 65536 + r[1];
            x->cols = (r[1] & 2) ? -1 : 1 + (r[1] >> 2);
        } else {
            x->rows = 1 + (r[1] & 3);
            x->cols = 1 + ((r[1] >> 2) & 3);
        }
        for (int c = 0; c < 3; c++) x->ipp[c] = rd16(r + 2 + 2 * c) / 16.0;
        if (f & 32) memcpy(&x->ipp[2], r + 16, sizeof(double));
        const double *o = orients[r[8] % 6];
        memcpy(x->iop, o, sizeof x->iop);
        int pert = (int8_t)(r[8] & 0xF0) >> 4;
        x->iop[0] += pert * 1e-4;
        if (f & 64) { /* rotate the row and column directions about z by the angle */
            double a = rd16(r + 14) / 4096.0, ca = cos(a), sa = sin(a);
            for (int v = 0; v < 2; v++) {
                double px = x->iop[3 * v], py = x->iop[3 * v + 1];
                x->iop[3 * v] = ca * px - sa * py;
                x->iop[3 * v + 1] = sa * px + ca * py;
            }
        }
        x->ps[0] = (r[9] + 1) / 32.0;
        x->ps[1] = (r[9] % 7 + 1) / 8.0;
        x->instance = (int8_t)r[10];
        x->temporal = r[11] & 3;
        x->thickness = r[12] / 8.0;
        x->spacing_between = r[13] / 8.0;
        x->file = (int32_t)i;
        x->name = "fuzz.dcm";
    }
    ml_set_warn_handler(quiet, NULL);
    ml_dcm_plan p;
    if (ml_dicom_assemble(&p, s, n, on_uneven, on_tilt, "fuzz") == ML_OK) {
        if (plan_broken(&p, n)) abort();
        ml_dicom_plan_free(&p);
    }
    free(s);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return ml_fuzz_dicom_series_one(data, size); }
